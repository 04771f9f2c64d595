"""Moved to :mod:`segexpr.inference.onnx`; this path still works (``from segexpr.export import to_onnx``)."""
from segexpr.inference.onnx import *  # noqa: F401,F403
from segexpr.inference.onnx import to_onnx  # noqa: F401
