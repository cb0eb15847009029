"""Reading and checking an ONNX model: parse, the domains and opset it uses, external data (read from beside the
model, never from elsewhere), the size of every tensor's bytes, ``onnx.checker``, conversion to opset 17.

Every failure is a one-line ``SpecError``; ``onnx`` itself is imported on first use (``onnx_module``).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import OnnxMissing, SpecError
from ..files import read_regular

OPSET = 17  # what the importer reads (older models are converted to it) and what the exporter writes
EXTRA = "pip install 'graphc[onnx]'"
DEFAULT_DOMAINS = ("", "ai.onnx")


def onnx_module():
    """``onnx``, imported on first use; without it, a one-line error naming the extra."""
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise OnnxMissing(f"ONNX import and export need the onnx package: install the extra: {EXTRA}") from None
    return onnx


def read_model(source):
    """``(model, opset)``: a checked ``onnx.ModelProto`` from a path, bytes or a ModelProto, external data loaded
    (from the model's folder: only a path has one), converted to opset 17 when older; ``opset`` is the version it
    had."""
    onnx = onnx_module()
    base = None
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
    else:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            path = Path(source)
            data = read_regular(path, "model", SpecError)  # never a FIFO or a device: they would hang or flood
            base = path.parent
        model = parse_model(data)
    version = opset_version(model)
    check_domains(model)
    load_external_data(model, base)
    check_tensor_sizes(model)
    check(model, "not a valid ONNX model")
    if version < OPSET:
        try:
            model = onnx.version_converter.convert_version(model, OPSET)
        except Exception as err:  # the converter raises bare RuntimeErrors and others
            raise SpecError(f"cannot convert the model from opset {version} to {OPSET}: {first_line(err)}") from None
    return model, version


def parse_model(data: bytes):
    onnx = onnx_module()
    if not data:
        raise SpecError("not an ONNX model: the file is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as err:  # google.protobuf's DecodeError, and RuntimeWarnings turned into errors
        raise SpecError(f"not an ONNX model: cannot parse it as an ONNX protobuf ({first_line(err)})") from None
    if model.ir_version < 1 or not model.HasField("graph") or not model.opset_import:
        raise SpecError("not an ONNX model: it has no version, opset or graph (a truncated or different file?)")
    return model


def check(model, what: str) -> None:
    onnx = onnx_module()
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # onnx.checker.ValidationError, or a protobuf error on nonsense
        raise SpecError(f"{what}: {first_line(err)}") from None


def opset_version(model) -> int:
    """The model's opset of the default domain (1 when it names none), refused past what the installed onnx knows."""
    version = next((e.version for e in model.opset_import if e.domain in DEFAULT_DOMAINS), 1)
    latest = onnx_module().defs.onnx_opset_version()
    if version > latest:
        raise SpecError(f"the model is of opset {version}: graphc imports opsets 1 to {latest} (those the installed "
                        f"onnx knows; opsets before {OPSET} are converted to {OPSET})")
    return version


def check_domains(model) -> None:
    """Every node of the graph is of the default ONNX domain (``ai.onnx.ml`` and custom ops are not graphc's)."""
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            name = node.name or next(iter(node.output), "")
            raise SpecError(f"ONNX node {name!r} ({node.op_type}) is of domain {node.domain!r}: graphc imports the "
                            f"ops of the default ONNX domain")


# ---- tensors: external data and sizes --------------------------------------------------------------------

def tensors(model):
    """Every tensor of the model: initializers, node attributes (a Constant's ``value``), and those of nested
    graphs (an If's branches), walked with a stack, never recursion."""
    graphs = [model.graph, *model.functions]
    while graphs:
        graph = graphs.pop()
        yield from getattr(graph, "initializer", ())
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def uses_external_data(tensor) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == 1  # TensorProto.EXTERNAL


def load_external_data(model, base: Path | None) -> None:
    """Read the data of every external tensor (initializers, a Constant's value, nested graphs) into the model,
    from files inside ``base``, the model's folder: a location that is absolute, has a ``..`` or leads out of the
    folder through a symlink is refused (onnx checks the same again). Without a folder (bytes, a ModelProto)
    external data is refused: it would be read from the current directory."""
    external = [t for t in tensors(model) if uses_external_data(t)]
    if not external:
        return
    if base is None:
        raise SpecError("the model keeps tensors in external data files: give its path, not the model object or "
                        "its bytes, so that they can be read from beside it")
    from onnx.external_data_helper import load_external_data_for_tensor
    for tensor in external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        path = Path(location)
        if not location or path.is_absolute() or ".." in path.parts or \
                not (base / path).resolve().is_relative_to(base.resolve()):
            raise SpecError(f"tensor {tensor.name!r}: its external data {location!r} is not a file in the "
                            f"model's folder")
        if not (base / path).is_file():  # a FIFO or a device would hang the read or flood memory
            raise SpecError(f"tensor {tensor.name!r}: its external data {location!r} is not a regular file")
        try:
            load_external_data_for_tensor(tensor, str(base))
        except Exception as err:
            raise SpecError(f"cannot read the model's external data: {first_line(err)}") from None


def external_files(model_path: Path) -> list[Path]:
    """The external data files a model at ``model_path`` names (PyTorch's ``model.onnx.data``)."""
    onnx = onnx_module()
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return []
    return [model_path.parent / entry.value for t in tensors(model) for entry in t.external_data
            if entry.key == "location"]


def check_tensor_sizes(model) -> None:
    """A tensor's ``raw_data`` holds exactly the bytes its dims and element type need."""
    helper = onnx_module().helper
    for tensor in tensors(model):
        if not tensor.HasField("raw_data"):
            continue
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except Exception:  # an unknown or variable-size element type: the checker and the importer say so
            continue
        need = math.prod(tensor.dims) * itemsize
        if len(tensor.raw_data) != need:
            dims = "x".join(str(d) for d in tensor.dims) or "a scalar"
            raise SpecError(f"tensor {tensor.name!r} has {len(tensor.raw_data)} bytes of raw_data: its dims "
                            f"({dims}) of {itemsize}-byte elements need {need}")


def first_line(err) -> str:
    text = str(err).strip() or type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
