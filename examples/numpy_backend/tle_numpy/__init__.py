"""An example tle backend: small MLPs in plain NumPy, exported to ONNX.

It exists to show the whole backend contract (``tle.contract.hookspecs``) in code that
has no framework to hide behind; copy it to start a backend of your own.
"""

__version__ = "0.1.0"
