"""graphc's version: one place, read by the package, the generated modules' docstrings and ONNX exports."""

__version__ = "0.1.0"
