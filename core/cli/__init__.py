"""The ``tle`` command line (typer + rich).

Heavy imports (MLflow, onnxruntime, frameworks) happen inside commands, so
``tle --help`` and ``tle backends`` stay fast. Every user error ends with exit
code 2 and one line; ``--debug`` shows tracebacks. One module per concern;
importing one registers its commands on :data:`app`.
"""

from __future__ import annotations

import os
import signal
import sys

import typer

from tle.cli import run, sweep, rank, inspect, serve, convert, compare, study, fuse  # noqa: F401, I001  (registers the commands, in help order)
from tle.cli.app import STATE, app, err
from tle.errors import UserError

__all__ = ["app", "main"]


def _on_sigterm(signum, frame):
    # A terminated run must end KILLED in MLflow, exactly like Ctrl-C.
    raise KeyboardInterrupt


def _click_exceptions():
    try:  # typer >= 0.20 vendors its own click
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


GLOBAL_FLAGS = {"--quiet": "quiet", "-q": "quiet", "--debug": "debug"}


def _global_flags(argv: list[str]) -> list[str]:
    """``--quiet``/``-q`` and ``--debug`` anywhere before a ``--``, before or after the command (``tle --quiet sweep
    G`` and ``tle sweep G --quiet`` alike): set here and taken out, so every command accepts them."""
    end = argv.index("--") if "--" in argv else len(argv)
    rest = []
    for i, arg in enumerate(argv):
        if i < end and arg in GLOBAL_FLAGS:
            STATE[GLOBAL_FLAGS[arg]] = True
        else:
            rest.append(arg)
    return rest


def main(argv: list[str] | None = None) -> None:
    click = _click_exceptions()

    import logging

    argv = list(sys.argv[1:] if argv is None else argv)
    # MLflow's INFO lines (store migrations, experiment creation) drown the progress display;
    # MLflow resets its logger's level on import, so the environment is the reliable switch.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    argv = _global_flags(argv)
    STATE["debug"] = STATE["debug"] or os.environ.get("TLE_DEBUG") == "1"
    signal.signal(signal.SIGTERM, _on_sigterm)
    code = 0
    try:
        result = app(args=argv, prog_name="tle", standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if code == 130:  # typer >= 0.20 answers Ctrl-C/SIGTERM (KeyboardInterrupt) with 130 itself, silently
            err.print("interrupted", highlight=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except click.NoArgsIsHelpError as exc:
        exc.show()
        code = 2
    except click.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else "tle"
        err.print(f"error: {exc.format_message()} (see '{cmd} --help')", highlight=False, soft_wrap=True)
        code = 2
    except UserError as exc:
        if STATE["debug"]:
            raise
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        code = 2
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted", highlight=False)
        code = 130
    except Exception as exc:
        if STATE["debug"]:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
                  highlight=False, markup=False, soft_wrap=True)
        code = 1
    sys.exit(code)
