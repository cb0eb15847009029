"""ONNX in and out (DESIGN sections 12 and 16): ``graphc import``, ``graphc export`` and ``graphc.from_onnx``.

Four rooms: ``model.py`` reads and checks a model (parse, external data, opset conversion), ``importer.py`` turns
its graph into a Graph (one converter per ONNX op type), ``spec_writer.py`` writes that Graph as a spec and its
weights as ``.npz``, ``exporter.py`` goes the other way (one exporter per op). ``onnx`` is an optional extra: it
is imported only when one of these runs, never by importing this package. Nothing here imports the CLI.
"""

from .exporter import export_file, to_onnx
from .importer import SUPPORTED, Imported, from_onnx, import_model
from .spec_writer import import_files, spec_text

__all__ = ["SUPPORTED", "Imported", "export_file", "from_onnx", "import_files", "import_model", "spec_text",
           "to_onnx"]
