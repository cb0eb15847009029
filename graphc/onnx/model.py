"""Reading and checking an ONNX model: parse, external data (read from beside the model), ``onnx.checker``,
conversion to opset 17.

Every failure is a one-line ``SpecError``; ``onnx`` itself is imported on first use (``onnx_module``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import OnnxMissing, SpecError

OPSET = 17  # what the importer reads (older models are converted to it) and what the exporter writes
EXTRA = "pip install 'graphc[onnx]'"


def onnx_module():
    """``onnx``, imported on first use; without it, a one-line error naming the extra."""
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise OnnxMissing(f"ONNX import and export need the onnx package: install the extra: {EXTRA}") from None
    return onnx


def read_model(source):
    """``(model, opset)``: a checked ``onnx.ModelProto`` from a path, bytes or a ModelProto, external data loaded,
    converted to opset 17 when older; ``opset`` is the version it had."""
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
            if path.is_dir():
                raise SpecError("cannot read the model: it is a directory")
            try:
                data = path.read_bytes()
            except OSError as err:
                raise SpecError(f"cannot read the model: {err.strerror or err}") from None
            base = path.parent
        model = parse_model(data)
    if base is not None:
        load_external_data(model, base)
    elif any(uses_external_data(t) for t in model.graph.initializer):
        raise SpecError("the model keeps its weights in external data files: give its path, not the model object, "
                        "so that they can be read from beside it")
    check(model, "not a valid ONNX model")
    version = opset_version(model)
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


def uses_external_data(tensor) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == 1  # TensorProto.EXTERNAL


def load_external_data(model, base: Path) -> None:
    """Read the weights a model keeps in files beside it into the model (onnx refuses paths outside ``base``)."""
    if not any(uses_external_data(t) for t in model.graph.initializer):
        return
    from onnx.external_data_helper import load_external_data_for_model
    try:
        load_external_data_for_model(model, str(base))
    except Exception as err:
        raise SpecError(f"cannot read the model's external data: {first_line(err)}") from None


def external_files(model_path: Path) -> list[Path]:
    """The external data files a model at ``model_path`` names (PyTorch's ``model.onnx.data``)."""
    onnx = onnx_module()
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return []
    files = []
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                files.append(model_path.parent / entry.value)
    return files


def opset_version(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def first_line(err) -> str:
    text = str(err).strip() or type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
