"""Compatibility: the public names of ONNX import and export, which now live in the package graphc/onnx/.

Kept because the read-only measuring scripts (tools/onnx_coverage.py, tools/onnx_node_coverage.py) do
``from graphc import onnx_io`` and read ``onnx_io.SUPPORTED`` and ``onnx_io.import_model(path)``. New code
imports from ``graphc.onnx``.
"""

from .onnx import SUPPORTED, export_file, from_onnx, import_files, import_model, to_onnx

__all__ = ["SUPPORTED", "export_file", "from_onnx", "import_files", "import_model", "to_onnx"]
