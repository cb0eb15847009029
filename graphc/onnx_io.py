"""ONNX in and out (DESIGN section 12): ``graphc import``, ``graphc export`` and ``graphc.from_onnx``.

Import reads an ONNX model (any opset that ``onnx.version_converter`` brings to 17), maps each node onto the op
table (no second set of gradient rules: a Gemm is ``matmul``, ``transpose``, ``mul`` and ``add`` nodes) and
gives a Graph plus the initial values of its params; ``graphc import`` writes that graph as a readable spec and
the values as ``SPEC.npz``. Export walks the forward graph of a spec's outputs and writes one ONNX node (or a
few) per graph node. ``onnx`` is an optional extra: it is imported only when one of these runs.
"""

from __future__ import annotations

import importlib.util
import json
import keyword
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import GraphcError, GraphError, OnnxMissing, ShapeError, SpecError
from .files import npz_bytes, same_file, write_atomic, write_together
from .graph import INPUT_RESERVED, Graph, Namer, Tensor, operands, topo_order

OPSET = 17
EXTRA = "pip install 'graphc[onnx]'"
SUPPORTED = (
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Log",
    "Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "Transpose", "Identity", "Flatten", "Constant",
)
FLOAT_TYPES = {1: "float32", 11: "float64"}  # ONNX TensorProto element types graphc computes in
# Ops that end a layer: the spec gives their result a line of its own instead of writing it inside its consumer.
ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "softmax", "log_softmax")
INLINE_CHARS = 72
DEFAULT_DIM = 32  # a named dimension's [dims] default when --dim NAME=SIZE gives none  # a single-use value is written inside its consumer when its text is at most this long


def onnx_module():
    """``onnx``, imported on first use; without it, a one-line error naming the extra."""
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise OnnxMissing(f"ONNX import and export need the onnx package: install the extra: {EXTRA}") from None
    return onnx


# ---- reading a model -------------------------------------------------------------------------------------

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


# ---- names -----------------------------------------------------------------------------------------------

def identifier(name: str) -> str:
    """An ONNX name as a graphc name: ``fc1.weight`` -> ``fc1_weight``, ``/fc1/Gemm_output_0`` -> ``fc1_Gemm``,
    ``0.weight`` -> ``v0_weight``, ``lambda`` -> ``lambda_``, ``_x`` -> ``x``. Not yet unique (see Names)."""
    text = re.sub(r"_output_0$", "", name)  # PyTorch's exporter names every node's value "<node>_output_0"
    text = re.sub(r"\W+", "_", text, flags=re.ASCII).strip("_")
    text = re.sub(r"__+", "_", text)
    if not text:
        text = "v"
    if text[0].isdigit():
        text = "v" + text
    if keyword.iskeyword(text):
        text += "_"
    return text


class Names:
    """ONNX names -> unique identifiers, assigned in model order, and the ONNX name behind each identifier."""

    def __init__(self):
        self.namer = Namer(set())
        self.ident = {}  # ONNX name -> identifier
        self.onnx = {}  # identifier -> ONNX name

    def add(self, onnx_name: str, reserved=()) -> str:
        if onnx_name not in self.ident:
            hint = identifier(onnx_name)
            if hint in reserved:
                hint += "_"
            name = self.namer(hint)
            self.ident[onnx_name] = name
            self.onnx[name] = onnx_name
        return self.ident[onnx_name]

    def fresh(self, hint: str) -> str:
        return self.namer(hint)


# ---- import: ONNX graph -> Graph ------------------------------------------------------------------------

@dataclass
class Imported:
    """What an import produces: the graph, its params' initial values and what the spec text needs."""

    graph: Graph
    values: dict  # param name -> ndarray
    outputs: list
    names: Names
    dims: dict = field(default_factory=dict)  # named dimension -> default size (from --dim NAME=SIZE)
    dim_names: dict = field(default_factory=dict)  # named dimension -> its ONNX dim_param
    described: dict = field(default_factory=dict)  # graph node -> "ONNX: <value> (<op> node <name>)"
    opset: tuple = (0, 0)  # (the model's opset, the one it was converted to)
    producer: str = ""


def from_onnx(source, dims=None):
    """``(Graph, {param name: initial array})`` from an ONNX model: a path, the file's bytes or a ModelProto.

    ``dims`` maps a named dimension to its default size (``{"N": 32}``) or an input's axis
    (``"X.0"``) to a size or a name, for axes the model leaves without either.
    """
    imported = import_model(source, dims)
    return imported.graph, imported.values


def import_model(source, dims=None) -> Imported:
    model, opset = read_model(source)
    return Importer(model, dims or {}, opset).run()


class Importer:
    def __init__(self, model, dims: dict, opset: int):
        self.model = model
        self.source_opset = opset
        self.onnx = onnx_module()
        self.numpy_helper = self.onnx.numpy_helper
        self.dim_args = dict(dims)
        self.names = Names()
        self.env = {}  # ONNX value name -> Tensor, a float (a scalar constant) or an int ndarray (axes)
        self.values = {}
        self.described = {}

    # -- the whole graph --
    def run(self) -> Imported:
        graph = self.model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        inputs = [v for v in graph.input if v.name not in self.initializers]  # IR-3: an input with a value is a param
        live = self.live_nodes()
        self.dtype = self.model_dtype(inputs)
        for v in inputs:
            self.names.add(v.name, reserved=INPUT_RESERVED)  # Trainer.fit's keywords: "epochs" -> "epochs_"
        for t in graph.initializer:
            if t.name in self.used:
                self.names.add(t.name)
        for node in live:
            for out in node.output:
                if out:
                    self.names.add(out)
        self.g = Graph(identifier(graph.name or "model"), self.dtype)
        self.named_dims = {}
        for v in inputs:
            name = self.names.ident[v.name]
            self.env[v.name] = self.g.input(name, self.input_shape(v, name))
        self.dims = self.dim_defaults()
        for node in live:
            self.node = node
            try:
                self.translate(node)
            except GraphcError as err:  # located at the ONNX node, not at graphc's name for its value
                err.message, err.node = f"{self.where()}: {err.message}", None
                raise
        outputs = self.outputs()
        for v in self.g.nx:
            if v in self.names.onnx and self.g.nx.nodes[v]["op"] not in ("input", "param", "const"):
                self.described.setdefault(v, f"ONNX: {self.names.onnx[v]}")
        producer = " ".join(x for x in (self.model.producer_name, self.model.producer_version) if x)
        return Imported(self.g, self.values, outputs, self.names, self.dims, dict(self.named_dims), self.described,
                        (self.source_opset, opset_version(self.model)), producer)

    def where(self) -> str:
        node = self.node
        return f"ONNX node {node.name or node.output[0]!r} ({node.op_type})"

    def model_dtype(self, inputs) -> str:
        types = []
        for v in inputs:
            elem = v.type.tensor_type.elem_type if v.type.HasField("tensor_type") else None
            if elem not in FLOAT_TYPES:
                raise SpecError(f"input {v.name!r} has element type {self.type_name(elem)}: graphc imports models "
                                f"whose inputs are float32 or float64 tensors (axes and shapes must be constants)")
            types.append(FLOAT_TYPES[elem])
        for t in self.model.graph.initializer:
            if t.data_type in FLOAT_TYPES and t.name in self.used:
                types.append(FLOAT_TYPES[t.data_type])
        if len(set(types)) > 1:
            raise SpecError(f"the model mixes element types {sorted(set(types))}: graphc computes in one")
        return types[0] if types else "float32"

    def type_name(self, elem) -> str:
        if elem is None:
            return "(not a tensor)"
        try:
            return self.onnx.TensorProto.DataType.Name(elem)
        except ValueError:
            return str(elem)

    def live_nodes(self) -> list:
        """The nodes the graph's outputs depend on, in model order; ``self.used``: every value they read."""
        graph = self.model.graph
        if not graph.output:
            raise SpecError("the model has no outputs")
        producer = {}
        for i, node in enumerate(graph.node):
            for out in node.output:
                producer[out] = i
        needed, stack, self.used = set(), [o.name for o in graph.output], set()
        while stack:
            value = stack.pop()
            if value in self.used:
                continue
            self.used.add(value)
            if value in producer and producer[value] not in needed:
                needed.add(producer[value])
                stack.extend(x for x in graph.node[producer[value]].input if x)
        return [node for i, node in enumerate(graph.node) if i in needed]

    # -- inputs and their dimensions --
    def input_shape(self, v, name: str) -> tuple:
        tensor = v.type.tensor_type
        if not tensor.HasField("shape"):
            raise ShapeError(f"input {v.name!r} has no shape: graphc needs each input's rank")
        shape = []
        for axis, d in enumerate(tensor.shape.dim):
            given = self.dim_args.pop(f"{v.name}.{axis}", None)
            given = self.dim_args.pop(f"{name}.{axis}", given)
            if given is not None:
                shape.append(self.dim(given, v.name, axis))
            elif d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                shape.append(self.dim(d.dim_param, v.name, axis))
            else:
                size = f"size {d.dim_value}" if d.HasField("dim_value") else "neither a size nor a name"
                raise ShapeError(f"input {v.name!r} axis {axis} has {size}: name it with --dim {name}.{axis}=N "
                                 f"(a named dimension) or fix it with --dim {name}.{axis}=64")
        return tuple(shape)

    def dim(self, value, input_name, axis):
        if isinstance(value, int) or re.fullmatch(r"[+-]?\d+", str(value).strip()):
            size = int(value)
            if size < 1:
                raise ShapeError(f"input {input_name!r} axis {axis}: size {size} is not positive")
            return size
        value = str(value)
        for name, onnx_name in self.named_dims.items():
            if onnx_name == value:
                return name
        name = self.names.fresh(identifier(value))  # never a value's name: the spec keeps one namespace
        self.named_dims[name] = value
        return name

    def dim_defaults(self) -> dict:
        """What is left of --dim: NAME=SIZE, a named dimension's default size."""
        dims = {}
        for key, value in self.dim_args.items():
            head, _, axis = key.rpartition(".")
            if head and axis.isdigit():
                raise SpecError(f"--dim {key}={value}: the model has no input {head!r} with an axis {axis}")
            name = next((n for n, onnx_name in self.named_dims.items() if key in (n, onnx_name)), None)
            if name is None:
                known = ", ".join(sorted(self.named_dims)) or "none"
                raise SpecError(f"--dim {key}={value}: no input has a dimension named {key!r} "
                                f"(named dimensions: {known})")
            if not str(value).isdigit() or int(value) < 1:
                raise SpecError(f"--dim {key}={value}: a named dimension's default size is a positive integer")
            dims[name] = int(value)
        return dims

    # -- values --
    def value(self, name: str):
        """The graph value of ONNX value ``name``: a Tensor, a float (scalar constant) or an int array."""
        if name in self.env:
            return self.env[name]
        if name in self.initializers:
            self.env[name] = self.constant(self.initializers[name], name)
            return self.env[name]
        raise GraphError(f"value {name!r} is not defined before it is used")

    def constant(self, tensor, name: str):
        """An initializer or a Constant's tensor: a param (float, rank >= 1), a scalar constant or ints."""
        array = self.numpy_helper.to_array(tensor)
        if array.dtype.kind in "iu":
            return array.astype(np.int64)
        if array.dtype.kind != "f" or tensor.data_type not in FLOAT_TYPES:
            raise GraphError(f"tensor {name!r} has element type {self.type_name(tensor.data_type)}: graphc computes "
                             f"in {self.dtype}")
        if array.ndim == 0:
            return float(array)
        ident = self.names.add(name)
        self.values[ident] = np.ascontiguousarray(array, dtype=self.dtype)
        return self.g.param(ident, array.shape, init="file")

    def tensor(self, name: str) -> Tensor:
        x = self.value(name)
        if isinstance(x, np.ndarray):
            raise GraphError(f"{name!r} is an integer tensor used as a value: graphc computes in {self.dtype}")
        if isinstance(x, float):
            return self.const(x)
        return x

    def const(self, value: float) -> Tensor:
        return self.g.const(value, name=self.names.fresh(f"{self.names.ident[self.out]}_const"))

    def ints(self, name: str) -> list[int]:
        x = self.value(name)
        if not isinstance(x, np.ndarray):
            raise GraphError(f"{name!r} must be a constant integer tensor (axes), not a computed value")
        return [int(i) for i in x.reshape(-1)]

    def attr(self, key: str, default=None):
        for a in self.node.attribute:
            if a.name == key:
                return self.onnx.helper.get_attribute_value(a)
        return default

    def apply(self, op: str, *args, last=False, **attrs) -> Tensor:
        """``op(*args)`` as a graph node: named after the ONNX value when ``last``, else a fresh internal name."""
        args = [self.const(a) if isinstance(a, float) else a for a in args]
        name = self.names.ident[self.out] if last else self.names.fresh(f"{self.names.ident[self.out]}_{op}")
        return self.g.apply(op, *args, name=name, **attrs)

    def rank(self, x) -> int:
        return 0 if isinstance(x, float) else len(x.shape)

    # -- nodes --
    def translate(self, node) -> None:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            raise GraphError(f"unsupported op {op} (graphc imports {', '.join(SUPPORTED)})")
        outs = [o for o in node.output if o]
        if len(outs) != 1:
            raise GraphError(f"{node.op_type} with {len(outs)} outputs: graphc imports single-output nodes")
        self.out = outs[0]
        result = getattr(self, f"op_{node.op_type}")(node)
        self.env[self.out] = result
        if isinstance(result, Tensor) and result.name == self.names.ident[self.out]:
            self.described[result.name] = f"ONNX: {self.out} ({node.op_type} node {node.name or self.out})"

    def inputs(self, node, count=None):
        names = list(node.input)
        return names if count is None else names + [""] * (count - len(names))

    def binary(self, node, op: str, fold):
        a, b = (self.value(x) for x in node.input)
        for x in (a, b):
            if isinstance(x, np.ndarray):
                raise GraphError(f"{node.op_type} of an integer tensor: graphc computes in {self.dtype}")
        if isinstance(a, float) and isinstance(b, float):
            return float(fold(np.asarray(a, self.dtype), np.asarray(b, self.dtype)))
        return self.apply(op, a, b, last=True)

    def op_Add(self, node):
        return self.binary(node, "add", np.add)

    def op_Sub(self, node):
        return self.binary(node, "sub", np.subtract)

    def op_Mul(self, node):
        return self.binary(node, "mul", np.multiply)

    def op_Div(self, node):
        return self.binary(node, "div", np.divide)

    def op_Neg(self, node):
        x = self.value(node.input[0])
        if isinstance(x, float):
            return -x
        return self.apply("neg", self.tensor(node.input[0]), last=True)

    def unary(self, op: str, **attrs):
        return self.apply(op, self.tensor(self.node.input[0]), last=True, **attrs)

    def op_Relu(self, node):
        return self.unary("relu")

    def op_Sigmoid(self, node):
        return self.unary("sigmoid")

    def op_Tanh(self, node):
        return self.unary("tanh")

    def op_Exp(self, node):
        return self.unary("exp")

    def op_Log(self, node):
        return self.unary("log")

    def op_LeakyRelu(self, node):
        # ONNX float attributes are float32: a slope of 0.2 is float32(0.2) = 0.20000000298023224
        return self.unary("leaky_relu", negative_slope=float(np.float32(self.attr("alpha", 0.01))))

    def op_Softmax(self, node):
        return self.unary("softmax", axis=int(self.attr("axis", -1)))

    def op_LogSoftmax(self, node):
        return self.unary("log_softmax", axis=int(self.attr("axis", -1)))

    def op_Identity(self, node):
        return self.value(node.input[0])

    def op_Flatten(self, node):
        x = self.tensor(node.input[0])
        axis = int(self.attr("axis", 1))
        if self.rank(x) != 2 or axis not in (1, -1):
            raise GraphError(f"Flatten of a {self.rank(x)}-D value with axis={axis}: graphc imports Flatten of a "
                             f"2-D value with axis=1, which leaves it as it is")
        return x

    def op_Transpose(self, node):
        x = self.tensor(node.input[0])
        rank = self.rank(x)
        perm = self.attr("perm")
        perm = list(reversed(range(rank))) if perm is None else [int(p) for p in perm]
        if perm == list(range(rank)):
            return x
        if rank != 2:
            raise GraphError(f"Transpose of a {rank}-D value (perm={perm}): graphc transposes 2-D values")
        return self.apply("transpose", x, last=True)

    def op_MatMul(self, node):
        a, b = (self.tensor(x) for x in node.input)
        if self.rank(a) != 2 or self.rank(b) != 2:
            raise GraphError(f"MatMul of {self.rank(a)}-D and {self.rank(b)}-D values: graphc multiplies 2-D "
                             f"matrices")
        return self.apply("matmul", a, b, last=True)

    def op_Gemm(self, node):
        a_name, b_name, c_name = self.inputs(node, 3)[:3]
        a, b = self.tensor(a_name), self.tensor(b_name)
        alpha = float(np.float32(self.attr("alpha", 1.0)))
        beta = float(np.float32(self.attr("beta", 1.0)))
        if self.rank(a) != 2 or self.rank(b) != 2:
            raise GraphError(f"Gemm of {self.rank(a)}-D and {self.rank(b)}-D values: Gemm multiplies 2-D matrices")
        if self.attr("transA", 0):
            a = self.apply("transpose", a)
        if self.attr("transB", 0):
            b = self.apply("transpose", b)
        c = self.value(c_name) if c_name else None
        if isinstance(c, np.ndarray):
            raise GraphError(f"Gemm's C {c_name!r} is an integer tensor: graphc computes in {self.dtype}")
        if c is None or beta == 0.0:
            y = self.apply("matmul", a, b, last=alpha == 1.0)
            return y if alpha == 1.0 else self.apply("mul", alpha, y, last=True)
        y = self.apply("matmul", a, b)
        if alpha != 1.0:
            y = self.apply("mul", alpha, y)
        if beta != 1.0:
            c = beta * c if isinstance(c, float) else self.apply("mul", beta, c)
        return self.apply("add", y, c, last=True)

    def reduce(self, node, op: str):
        x = self.tensor(node.input[0])
        axes = self.attr("axes")
        if len(node.input) > 1 and node.input[1]:
            axes = self.ints(node.input[1])
        keepdims = bool(self.attr("keepdims", 1))
        if not axes:
            if self.attr("noop_with_empty_axes", 0):
                return x
            axis = None
        else:
            rank = self.rank(x)
            if any(not -rank <= int(a) < rank for a in axes):
                raise GraphError(f"axes {list(axes)} out of range for a {rank}-D value")
            axis = tuple(int(a) for a in axes)
            axis = axis[0] if len(axis) == 1 else axis
        attrs = {"keepdims": True} if keepdims else {}
        if axis is not None:
            attrs["axis"] = axis
        return self.apply(op, x, last=True, **attrs)

    def op_ReduceSum(self, node):
        return self.reduce(node, "sum")

    def op_ReduceMean(self, node):
        return self.reduce(node, "mean")

    def op_Constant(self, node):
        onnx = self.onnx
        attr = node.attribute[0] if len(node.attribute) == 1 else None
        if attr is None:
            raise GraphError("a Constant has exactly one value attribute")
        if attr.name == "value":
            return self.constant(attr.t, self.out)
        if attr.name == "value_float":
            return float(np.float32(attr.f))
        if attr.name == "value_floats":
            return self.constant(onnx.numpy_helper.from_array(np.array(attr.floats, np.float32)), self.out)
        if attr.name == "value_int":
            return np.array(attr.i, np.int64)
        if attr.name == "value_ints":
            return np.array(attr.ints, np.int64)
        raise GraphError(f"a Constant with {attr.name}: graphc imports float tensors and integer axes")

    # -- outputs --
    def outputs(self) -> list[str]:
        names = []
        for o in self.model.graph.output:
            self.out, self.node = o.name, None
            x = self.value(o.name)
            ident = self.names.add(o.name)
            if not isinstance(x, Tensor):
                raise GraphError(f"output {o.name!r} is a constant: there is nothing to compute")
            if x.name != ident or self.g.nx.nodes[x.name]["op"] in ("input", "param") or x.name in names:
                # An output that is another value (Identity, a 2-D Flatten, an input): a node of its own, x * 1.0
                name = ident if ident not in self.g else self.names.fresh(f"{ident}_out")
                one = self.g.const(1.0, name=self.names.fresh(f"{name}_const"))
                self.described[name] = f"ONNX: {o.name} (the values of {self.names.onnx.get(x.name, x.name)})"
                x = self.g.apply("mul", x, one, name=name)
            names.append(x.name)
        return names


# ---- the spec text ---------------------------------------------------------------------------------------

INFIX = {"add": ("+", 1), "sub": ("-", 1), "mul": ("*", 2), "div": ("/", 2), "matmul": ("@", 2)}


def toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)  # a JSON string with ASCII escapes is a TOML basic string


def comment(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)[1:-1]  # printable ASCII: nothing in a name can end the comment


class SpecWriter:
    """The imported graph as spec text: one line per layer, single-use values written inside their consumer."""

    def __init__(self, imported: Imported):
        self.imp = imported
        self.G = imported.graph.nx
        self.outputs = set(imported.outputs)
        self.inline = {v for v in self.G if self.inlined(v)}
        self.texts = {}

    def uses(self, v) -> int:
        return sum(len(d["arg"]) for _, _, d in self.G.out_edges(v, data=True))

    def inlined(self, v) -> bool:
        data = self.G.nodes[v]
        if data["op"] in ("input", "param") or v in self.outputs or self.uses(v) != 1:
            return False
        return data["op"] == "const" or data["op"] not in ACTIVATIONS

    def operand(self, u, need: int) -> str:
        """How operand ``u`` is written inside an expression whose operator binds at ``need``."""
        data = self.G.nodes[u]
        if data["op"] == "const":
            return repr(float(data["attrs"]["value"]))  # -0.5 binds tighter than any operator: x * -0.5
        if u not in self.inline:
            return u
        text, prec = self.texts[u]
        return text if prec >= need else f"({text})"

    def expression(self, v) -> tuple[str, int]:
        """How node ``v`` is written, and its precedence (1: + -, 2: * / @, 3: unary -, 4: a call or a name)."""
        data = self.G.nodes[v]
        args = operands(self.G, v)
        op = data["op"]
        if op in INFIX:
            symbol, prec = INFIX[op]
            return f"{self.operand(args[0], prec)} {symbol} {self.operand(args[1], prec + 1)}", prec
        if op == "neg":
            return "-" + self.operand(args[0], 3), 3
        from .ops import OPS
        defaults = OPS[op].defaults if op in OPS else {}
        attrs = [f"{k}={literal(val)}" for k, val in data.get("attrs", {}).items()
                 if k not in defaults or defaults[k] != val]
        return f"{op}({', '.join([self.operand(a, 0) for a in args] + attrs)})", 4

    def lines(self) -> list[str]:
        """One ``name = "expression"`` row per value that is not written inside its consumer."""
        rows = []
        for v in topo_order(self.G):  # operands first: whether each is inlined is settled before its consumer
            if self.G.nodes[v]["op"] in ("input", "param", "const"):
                continue
            self.texts[v] = self.expression(v)
            if v in self.inline and len(self.texts[v][0]) > INLINE_CHARS:
                self.inline.discard(v)  # too long to read inside another expression: a line of its own
            if v not in self.inline:
                rows.append((f"{v} = {toml_string(self.texts[v][0])}", self.imp.described.get(v)))
        return align(rows)

    def text(self, spec_name: str, npz_name: str, command: str) -> str:
        """The spec, through templates/spec.toml.j2."""
        from .codegen import environment

        imp, G = self.imp, self.G
        g = imp.graph
        dims = []
        for d in sorted({d for v in g.inputs for d in G.nodes[v]["shape"] if isinstance(d, str)}):
            onnx_name = self.imp.dim_names.get(d, d)
            dims.append((f"{d} = {imp.dims.get(d, DEFAULT_DIM)}", f"ONNX: {onnx_name}" if onnx_name != d else None))
        inputs = []
        for v in g.inputs:
            shape = "[" + ", ".join(toml_string(d) if isinstance(d, str) else str(d) for d in G.nodes[v]["shape"]) + "]"
            inputs.append((f"{v} = {shape}", self.renamed(v)))
        loss = self.loss_hint()
        if loss:
            inputs.append((f"# {loss[0]}", "to train: a target (see [train])"))
        params = []
        for v in g.params:
            shape = "[" + ", ".join(str(d) for d in G.nodes[v]["shape"]) + "]"
            params.append((f"{v} = {{ shape = {shape}, init = \"file\" }}", self.renamed(v)))
        return environment().get_template("spec.toml.j2").render(
            version=__version__, producer=comment(imp.producer) if imp.producer else None, opset=imp.opset,
            command=comment(command), npz_name=toml_string(npz_name), dims=align(dims), inputs=align(inputs),
            params=align(params), nodes=self.lines(), loss=loss[1] if loss else None,
            outputs=[toml_string(o) for o in imp.outputs], dtype=toml_string(g.dtype),
        )

    def renamed(self, v) -> str | None:
        onnx_name = self.imp.names.onnx.get(v)
        return f"ONNX: {onnx_name}" if onnx_name is not None and onnx_name != v else None

    def loss_hint(self):
        """A commented target input and loss for the first output: cross-entropy for (N, C), else mse."""
        if not self.imp.outputs:
            return None
        taken = set(self.G)
        out = self.imp.outputs[0]
        shape = self.G.nodes[out]["shape"]
        if self.G.nodes[out]["op"] == "softmax":  # cross_entropy takes the logits, before the softmax
            (logits,) = operands(self.G, out)
            if logits not in self.inline and self.G.nodes[logits]["op"] not in ("param", "const"):
                out = logits
        classes = len(shape) == 2 and shape[1] != 1
        target = Namer(taken)("labels" if classes else "target")
        loss = Namer(taken | {target})("loss")
        dim = lambda d: toml_string(d) if isinstance(d, str) else str(d)  # noqa: E731
        if classes:
            return (f"{target} = {{ shape = [{dim(shape[0])}], dtype = \"int64\" }}",
                    f"{loss} = \"cross_entropy({out}, {target})\"")
        return (f"{target} = [{', '.join(dim(d) for d in shape)}]", f"{loss} = \"mse({out}, {target})\"")


def literal(value) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(str(int(v)) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def align(rows, widest: int = 64) -> list[str]:
    """``text  # note`` rows with the notes in one column (past the rows longer than ``widest``)."""
    width = max((len(text) for text, note in rows if note and len(text) <= widest), default=0)
    return [f"{text.ljust(width)}  # {comment(note)}" if note else text for text, note in rows]


def spec_text(imported: Imported, spec_name: str, npz_name: str, command: str) -> str:
    return SpecWriter(imported).text(spec_name, npz_name, command)


# ---- graphc import ---------------------------------------------------------------------------------------

def parse_dims(items) -> dict:
    dims = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise SpecError(f"--dim {item}: write NAME=SIZE (a named dimension's default) or INPUT.AXIS=SIZE|NAME")
        if key in dims:
            raise SpecError(f"--dim {key} is given twice")
        dims[key] = value
    return dims


def import_files(model_path, output=None, dims=None, command: str = "") -> tuple[Path, Path]:
    """``graphc import``: write SPEC.toml and SPEC.npz for the model at ``model_path``; return their paths."""
    model_path = Path(model_path)
    spec_path = Path(output) if output else model_path.with_suffix(".toml")
    if spec_path.suffix != ".toml":
        raise SpecError(f"the spec is written as TOML: -o {spec_path} must end in .toml")
    npz_path = spec_path.with_suffix(".npz")
    imported = import_model(model_path, dims)
    protected = [model_path, *external_files(model_path)]
    for path in (spec_path, npz_path):
        for p in protected:
            if same_file(path, p):
                raise SpecError(f"writing {path} would replace the model's own file {p}: choose another -o")
    text = spec_text(imported, spec_path.name, npz_path.name,
                     command or f"graphc import {model_path} -o {spec_path}")
    write_together({npz_path: npz_bytes(imported.values), spec_path: text.encode("utf-8")})
    return spec_path, npz_path


# ---- export: Graph -> ONNX ------------------------------------------------------------------------------

ELEM_TYPES = {"float32": 1, "float64": 11}


class Exporter:
    """The forward graph of ``outputs`` as an ONNX graph: one node (or a few) per graph node."""

    def __init__(self, G, outputs, params: dict, name: str):
        self.onnx = onnx_module()
        self.G, self.outputs, self.params, self.name = G, list(outputs), params, name
        self.dtype = G.graph.get("dtype", "float64")
        self.nodes, self.initializers, self.inputs = [], [], []
        self.namer = Namer(set(G))

    def fresh(self, hint: str) -> str:
        return self.namer(hint)

    def node(self, op_type: str, inputs, output: str, **attrs) -> str:
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [output], name=output, **attrs))
        return output

    def ints(self, values, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def scalar(self, value: float, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, self.dtype), name))
        return name

    def value_info(self, v):
        shape = [d if isinstance(d, str) else int(d) for d in self.G.nodes[v]["shape"]]
        elem = ELEM_TYPES.get(self.G.nodes[v].get("dtype", self.dtype), 7)  # 7: INT64, class indices
        return self.onnx.helper.make_tensor_value_info(v, elem, shape)

    def run(self):
        helper = self.onnx.helper
        import networkx as nx
        needed = set(self.outputs)
        for o in self.outputs:
            needed |= nx.ancestors(self.G, o)
        for v in topo_order(self.G):
            if v not in needed:
                continue
            data = self.G.nodes[v]
            op = data["op"]
            if op == "input":
                self.inputs.append(self.value_info(v))
            elif op == "param":
                if v not in self.params:
                    raise GraphError(f"no value for param {v!r}", node=v)
                array = np.asarray(self.params[v])
                if array.shape != tuple(data["shape"]):
                    raise GraphError(f"param {v!r} has shape {array.shape}, the spec says {tuple(data['shape'])}",
                                     node=v)
                self.initializers.append(self.onnx.numpy_helper.from_array(
                    np.ascontiguousarray(array, dtype=data.get("dtype", self.dtype)), v))
            elif op == "const":
                self.initializers.append(self.onnx.numpy_helper.from_array(
                    np.asarray(data["attrs"]["value"], data.get("dtype", self.dtype)), v))
            else:
                rule = self.rule(op)
                if rule is None:
                    raise GraphError(f"graphc cannot export op {op!r} to ONNX", node=v)
                rule(v, operands(self.G, v), data.get("attrs", {}))
        graph = helper.make_graph(self.nodes, self.name, self.inputs, [self.value_info(o) for o in self.outputs],
                                  initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="graphc",
                                  producer_version=__version__)
        model.ir_version = 8  # the IR of opset 17: what onnxruntime and older tools read
        try:
            self.onnx.checker.check_model(model, full_check=True)
        except Exception as err:
            raise GraphError(f"the exported model fails onnx.checker: {first_line(err)}") from None
        return model

    # one method per op of the table; the ops that are one ONNX node of the same operands:
    SAME = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "matmul": "MatMul", "neg": "Neg", "relu": "Relu",
            "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "log": "Log"}

    def rule(self, op: str):
        if op in self.SAME:
            return lambda v, args, attrs: self.node(self.SAME[op], args, v)
        return getattr(self, f"op_{op}", None)

    def op_transpose(self, v, args, attrs):
        self.node("Transpose", args, v, perm=[1, 0])

    def op_leaky_relu(self, v, args, attrs):
        self.node("LeakyRelu", args, v, alpha=float(attrs.get("negative_slope", 0.01)))

    def op_softmax(self, v, args, attrs):
        self.node("Softmax", args, v, axis=int(attrs.get("axis", -1)))

    def op_log_softmax(self, v, args, attrs):
        self.node("LogSoftmax", args, v, axis=int(attrs.get("axis", -1)))

    def axes(self, attrs):
        axis = attrs.get("axis")
        return None if axis is None else [int(axis)] if isinstance(axis, int) else [int(a) for a in axis]

    def op_sum(self, v, args, attrs):
        axes = self.axes(attrs)
        inputs = list(args) + ([self.ints(axes, f"{v}_axes")] if axes is not None else [])
        self.node("ReduceSum", inputs, v, keepdims=int(bool(attrs.get("keepdims", False))))

    def op_mean(self, v, args, attrs):
        axes = self.axes(attrs)
        extra = {} if axes is None else {"axes": axes}
        self.node("ReduceMean", args, v, keepdims=int(bool(attrs.get("keepdims", False))), **extra)

    def reduce_all(self, x, v, reduction):
        self.node("ReduceMean" if reduction == "mean" else "ReduceSum", [x], v, keepdims=0)

    def op_mse(self, v, args, attrs):
        err = self.node("Sub", args, self.fresh(f"{v}_err"))
        sq = self.node("Mul", [err, err], self.fresh(f"{v}_sq"))
        self.reduce_all(sq, v, attrs.get("reduction", "mean"))

    def op_cross_entropy(self, v, args, attrs):
        logits, target = args
        reduction = attrs.get("reduction", "mean")
        if self.G.nodes[target].get("dtype") == "int64":
            self.node("SoftmaxCrossEntropyLoss", [logits, target], v, reduction=reduction)
            return
        logp = self.node("LogSoftmax", [logits], self.fresh(f"{v}_logp"), axis=-1)
        prod = self.node("Mul", [target, logp], self.fresh(f"{v}_prod"))
        rows = self.node("ReduceSum", [prod, self.ints([-1], f"{v}_axes")], self.fresh(f"{v}_rows"), keepdims=0)
        neg = self.node("Neg", [rows], self.fresh(f"{v}_neg"))
        self.reduce_all(neg, v, reduction)

    def op_binary_cross_entropy_with_logits(self, v, args, attrs):
        x, t = args
        # max(x, 0) - x * t + log(1 + exp(-|x|)): stable for large |x|, as PyTorch computes it
        pos = self.node("Relu", [x], self.fresh(f"{v}_pos"))
        xt = self.node("Mul", [x, t], self.fresh(f"{v}_xt"))
        absx = self.node("Abs", [x], self.fresh(f"{v}_abs"))
        nabs = self.node("Neg", [absx], self.fresh(f"{v}_nabs"))
        e = self.node("Exp", [nabs], self.fresh(f"{v}_exp"))
        one = self.scalar(1.0, f"{v}_one")
        lg = self.node("Log", [self.node("Add", [e, one], self.fresh(f"{v}_1p"))], self.fresh(f"{v}_log"))
        each = self.node("Add", [self.node("Sub", [pos, xt], self.fresh(f"{v}_d")), lg], self.fresh(f"{v}_each"))
        self.reduce_all(each, v, attrs.get("reduction", "mean"))


def to_onnx(g, outputs, params: dict, name: str | None = None):
    """The forward graph of ``outputs`` (node names) of Graph or DiGraph ``g`` as a checked ``onnx.ModelProto``."""
    G = g.nx if isinstance(g, Graph) else g
    return Exporter(G, outputs, params, name or G.graph.get("name", "model")).run()


def module_params(spec, spec_path: str) -> dict:
    """``init_params(0)`` of the module the spec compiles to (saved, so that its params_file comes along)."""
    from .cli import compile_spec
    module = compile_spec(spec, spec_path)
    with tempfile.TemporaryDirectory(prefix="graphc-export-") as tmp:
        path = Path(tmp) / f"{module.name}.py"
        module.save(path)
        loaded = importlib.util.spec_from_file_location(f"graphc_export_{uuid.uuid4().hex}", path)
        mod = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(mod)
        return {k: np.array(v) for k, v in mod.init_params(0).items()}


def read_params(path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise SpecError("cannot read the params: no such file", file=str(path)) from None
    except Exception as err:
        raise SpecError(f"cannot read the params: not a .npz of arrays ({first_line(err)})", file=str(path)) from None


def export_file(spec_path, output=None, params_path=None) -> Path:
    """``graphc export``: the spec's outputs as an ONNX model at ``output`` (default: SPEC with .onnx)."""
    from .spec import load_spec
    onnx_module()  # before any work: a missing extra is the first thing to say
    spec = load_spec(spec_path)
    out = Path(output) if output else Path(spec_path).with_suffix(".onnx")
    if params_path is not None and same_file(out, Path(params_path)):
        raise GraphcError("writing the model would replace the --params file: choose another -o", file=str(out))
    outputs = spec.outputs or [spec.loss]
    G = spec.graph.nx
    if params_path is not None:
        params = read_params(params_path)
        for v in spec.graph.params:
            if v not in params:
                raise SpecError(f"no array for param {v!r}", file=str(params_path), node=v)
            if params[v].shape != tuple(G.nodes[v]["shape"]):
                raise SpecError(f"param {v!r} has shape {params[v].shape}, the spec says "
                                f"{tuple(G.nodes[v]['shape'])}", file=str(params_path), node=v)
    else:
        params = module_params(spec, str(spec_path))
    model = to_onnx(spec.graph, outputs, params)
    write_atomic(out, model.SerializeToString())
    return out


# ---- the commands --------------------------------------------------------------------------------------

def add_commands(commands) -> None:
    """``graphc import`` and ``graphc export``, added to cli.py's subcommands."""
    i = commands.add_parser(
        "import", help="import an ONNX model as a spec (SPEC.toml) and its weights (SPEC.npz)",
        description="Translate MODEL.onnx into a readable spec and, beside it, SPEC.npz with the model's "
                    "initializers (params with init = \"file\"). ONNX dim_params become named dimensions.")
    i.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    i.add_argument("-o", "--output", metavar="SPEC.toml", help="where to write the spec (default: MODEL with .toml)")
    i.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="INPUT.AXIS=N names an axis the model leaves unnamed (INPUT.AXIS=64 fixes its size); "
                        "NAME=32 gives a named dimension its default size; repeatable")
    i.set_defaults(run=run_import)

    e = commands.add_parser(
        "export", help="export SPEC's forward graph (its outputs) as an ONNX model",
        description="Write the forward graph of SPEC's outputs as an ONNX model (opset 17): named dimensions as "
                    "dim_params, params as initializers (from --params, a save_params file, else the module's "
                    "init_params(0): the spec's params_file or random draws).")
    e.add_argument("spec", metavar="SPEC", help="the model spec, a .toml or .json file")
    e.add_argument("--params", metavar="TRAINED.npz", help="the params to export (save_params' .npz)")
    e.add_argument("-o", "--output", metavar="MODEL.onnx", help="where to write the model (default: SPEC with .onnx)")
    e.set_defaults(run=run_export)


def run_import(args) -> int:
    import shlex
    command = ["graphc", "import", args.model]
    if args.output:
        command += ["-o", args.output]
    for d in args.dim:
        command += ["--dim", d]
    try:
        spec, npz = import_files(args.model, args.output, parse_dims(args.dim), shlex.join(command))
    except OnnxMissing:
        raise
    except GraphcError as err:
        raise err.located(file=args.model)
    print(f"graphc: wrote {spec} and {npz}")
    return 0


def run_export(args) -> int:
    out = export_file(args.spec, args.output, args.params)
    print(f"graphc: wrote {out}")
    return 0


__all__ = ["from_onnx", "import_model", "to_onnx", "import_files", "export_file", "SUPPORTED"]
