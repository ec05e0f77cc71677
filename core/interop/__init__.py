"""Serving exported models with ONNX Runtime (:mod:`tle.interop.serving`), for the run's parity check and for
``tle predict`` / ``tle serve``."""
