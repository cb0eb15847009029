"""The ONNX importer: an ONNX graph (read by model.py) -> a graphc Graph and its params' initial values.

No second set of gradient rules: each ONNX node becomes nodes of the op table (a Gemm is ``matmul``,
``transpose``, ``mul`` and ``add``). The converters are a table: one small function per ONNX op type, registered
by name. To import a new op type, write one function at the end of this file, for example::

    @converter("Abs")
    def abs_(imp, node):
        return imp.unary("abs")

It gets the ``Importer`` (its helpers read operands, attributes and constants, and add graph nodes) and the
ONNX node, and returns the node's value: a Tensor, a float (a scalar constant) or an int array (axes). An op of
the table whose row in graphc/ops.py names the ONNX op type (``onnx="Abs"``: one operand, no attributes) needs
no new function: add the type to the ``converter(...)(elementwise)`` line below.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import GraphcError, GraphError, ShapeError, SpecError
from ..graph import INPUT_RESERVED, Graph, Namer, Tensor
from ..ops import OPS
from .model import onnx_module, opset_version, read_model

FLOAT_TYPES = {1: "float32", 11: "float64"}  # ONNX TensorProto element types graphc computes in
CONVERTERS: dict[str, Callable] = {}  # ONNX op type -> converter(imp, node), in the order they are written here
ONE_TO_ONE = {op.onnx: op.name for op in OPS.values() if op.onnx}  # "Relu" -> "relu": the op table's onnx field


def converter(*op_types: str):
    """Register the decorated function as the converter of ONNX op types ``op_types``."""
    def register(fn):
        for op_type in op_types:
            CONVERTERS[op_type] = fn
        return fn
    return register


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

    def fixed_input(self) -> str | None:
        """The first input with an axis, when every axis of every input has a fixed size (a model exported
        without dynamic axes, whose module takes one batch size only); else None."""
        G = self.graph.nx
        shapes = {v: G.nodes[v]["shape"] for v in self.graph.inputs}
        if any(isinstance(d, str) for shape in shapes.values() for d in shape):
            return None
        return next((v for v, shape in shapes.items() if shape), None)


def from_onnx(source, dims=None):
    """``(Graph, {param name: initial array})`` from an ONNX model: a path, the file's bytes or a ModelProto
    (only a path may keep tensors in external data files: they are read from its folder).

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
        if node.op_type not in CONVERTERS:  # model.py has refused the nodes of other domains
            raise GraphError(f"unsupported op {node.op_type} (graphc imports {', '.join(CONVERTERS)})")
        outs = [o for o in node.output if o]
        if len(outs) != 1:
            raise GraphError(f"{node.op_type} with {len(outs)} outputs: graphc imports single-output nodes")
        self.out = outs[0]
        result = CONVERTERS[node.op_type](self, node)
        self.env[self.out] = result
        if isinstance(result, Tensor) and result.name == self.names.ident[self.out]:
            self.described[result.name] = f"ONNX: {self.out} ({node.op_type} node {node.name or self.out})"

    def inputs(self, node, count=None):
        names = list(node.input)
        return names if count is None else names + [""] * (count - len(names))

    def binary(self, node, fold):
        """The op of the table that ``node`` is (``ONE_TO_ONE``); two scalar constants are folded by ``fold``."""
        a, b = (self.value(x) for x in node.input)
        for x in (a, b):
            if isinstance(x, np.ndarray):
                raise GraphError(f"{node.op_type} of an integer tensor: graphc computes in {self.dtype}")
        if isinstance(a, float) and isinstance(b, float):
            return float(fold(np.asarray(a, self.dtype), np.asarray(b, self.dtype)))
        return self.apply(ONE_TO_ONE[node.op_type], a, b, last=True)

    def unary(self, op: str, **attrs):
        return self.apply(op, self.tensor(self.node.input[0]), last=True, **attrs)

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


# ---- the converters: one per ONNX op type, in the order the unsupported-op message lists them ---------------

@converter("Gemm")
def gemm(imp, node):
    a_name, b_name, c_name = imp.inputs(node, 3)[:3]
    a, b = imp.tensor(a_name), imp.tensor(b_name)
    alpha = float(np.float32(imp.attr("alpha", 1.0)))
    beta = float(np.float32(imp.attr("beta", 1.0)))
    if imp.rank(a) != 2 or imp.rank(b) != 2:
        raise GraphError(f"Gemm of {imp.rank(a)}-D and {imp.rank(b)}-D values: Gemm multiplies 2-D matrices")
    if imp.attr("transA", 0):
        a = imp.apply("transpose", a)
    if imp.attr("transB", 0):
        b = imp.apply("transpose", b)
    c = imp.value(c_name) if c_name else None
    if isinstance(c, np.ndarray):
        raise GraphError(f"Gemm's C {c_name!r} is an integer tensor: graphc computes in {imp.dtype}")
    if c is None or beta == 0.0:
        y = imp.apply("matmul", a, b, last=alpha == 1.0)
        return y if alpha == 1.0 else imp.apply("mul", alpha, y, last=True)
    y = imp.apply("matmul", a, b)
    if alpha != 1.0:
        y = imp.apply("mul", alpha, y)
    if beta != 1.0:
        c = beta * c if isinstance(c, float) else imp.apply("mul", beta, c)
    return imp.apply("add", y, c, last=True)


@converter("MatMul")
def matmul(imp, node):
    a, b = (imp.tensor(x) for x in node.input)
    if imp.rank(a) != 2 or imp.rank(b) != 2:
        raise GraphError(f"MatMul of {imp.rank(a)}-D and {imp.rank(b)}-D values: graphc multiplies 2-D matrices")
    return imp.apply("matmul", a, b, last=True)


@converter("Add")
def add(imp, node):
    return imp.binary(node, np.add)


@converter("Sub")
def sub(imp, node):
    return imp.binary(node, np.subtract)


@converter("Mul")
def mul(imp, node):
    return imp.binary(node, np.multiply)


@converter("Div")
def div(imp, node):
    return imp.binary(node, np.divide)


@converter("Neg")
def neg(imp, node):
    x = imp.value(node.input[0])
    if isinstance(x, float):
        return -x
    return imp.apply("neg", imp.tensor(node.input[0]), last=True)


@converter("Relu")
def elementwise(imp, node):
    """An op of the table that is this ONNX op type (its ``onnx`` field), of one operand and no attributes."""
    return imp.unary(ONE_TO_ONE[node.op_type])


@converter("LeakyRelu")
def leaky_relu(imp, node):
    # ONNX float attributes are float32: a slope of 0.2 is float32(0.2) = 0.20000000298023224
    return imp.unary("leaky_relu", negative_slope=float(np.float32(imp.attr("alpha", 0.01))))


converter("Sigmoid", "Tanh", "Exp", "Log")(elementwise)  # here, so that the supported list keeps its order


@converter("Softmax")
def softmax(imp, node):
    return imp.unary("softmax", axis=int(imp.attr("axis", -1)))


@converter("LogSoftmax")
def log_softmax(imp, node):
    return imp.unary("log_softmax", axis=int(imp.attr("axis", -1)))


@converter("ReduceSum")
def reduce_sum(imp, node):
    return imp.reduce(node, "sum")


@converter("ReduceMean")
def reduce_mean(imp, node):
    return imp.reduce(node, "mean")


@converter("Transpose")
def transpose(imp, node):
    x = imp.tensor(node.input[0])
    rank = imp.rank(x)
    perm = imp.attr("perm")
    perm = list(reversed(range(rank))) if perm is None else [int(p) for p in perm]
    if perm == list(range(rank)):
        return x
    if rank != 2:
        raise GraphError(f"Transpose of a {rank}-D value (perm={perm}): graphc transposes 2-D values")
    return imp.apply("transpose", x, last=True)


@converter("Identity")
def identity(imp, node):
    return imp.value(node.input[0])


@converter("Flatten")
def flatten(imp, node):
    x = imp.tensor(node.input[0])
    axis = int(imp.attr("axis", 1))
    if imp.rank(x) != 2 or axis not in (1, -1):
        raise GraphError(f"Flatten of a {imp.rank(x)}-D value with axis={axis}: graphc imports Flatten of a "
                         f"2-D value with axis=1, which leaves it as it is")
    return x


@converter("Constant")
def constant(imp, node):
    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None:
        raise GraphError("a Constant has exactly one value attribute")
    if attr.name == "value":
        return imp.constant(attr.t, imp.out)
    if attr.name == "value_float":
        return float(np.float32(attr.f))
    if attr.name == "value_floats":
        return imp.constant(imp.numpy_helper.from_array(np.array(attr.floats, np.float32)), imp.out)
    if attr.name == "value_int":
        return np.array(attr.i, np.int64)
    if attr.name == "value_ints":
        return np.array(attr.ints, np.int64)
    raise GraphError(f"a Constant with {attr.name}: graphc imports float tensors and integer axes")


SUPPORTED = tuple(CONVERTERS)  # the ONNX op types graphc imports (the measuring scripts in tools/ read it)
