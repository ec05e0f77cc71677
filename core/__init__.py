"""tle: transfer-learning experiments in any framework.

The core is framework-neutral: it never imports torch, tensorflow or keras.
Backends are pluggy plugins found through the ``tle.backends`` entry-point group.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tle")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

from tle.errors import UserError  # noqa: E402
from tle.contract.hookspecs import hookimpl, hookspec, implements  # noqa: E402

__all__ = ["UserError", "__version__", "hookimpl", "hookspec", "implements"]
