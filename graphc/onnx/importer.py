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
from .folding import evaluate, foldable, is_symbolic, shape_array
from .model import onnx_module, opset_version, read_model

FLOAT_TYPES = {1: "float32", 11: "float64"}  # ONNX TensorProto element types graphc computes in
OTHER_INPUT_TYPES = {7: "int64", 9: "bool"}  # token ids (Gather's indices) and conditions (Where's)
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
        self.consts = {}  # ONNX value name -> ndarray, what folding computed (object arrays: shapes with names)
        self.opset = opset_version(model)
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
            elem = v.type.tensor_type.elem_type
            self.env[v.name] = self.g.input(name, self.input_shape(v, name), dtype=OTHER_INPUT_TYPES.get(elem))
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
            if elem in OTHER_INPUT_TYPES:
                continue
            if elem not in FLOAT_TYPES:
                raise SpecError(f"input {v.name!r} has element type {self.type_name(elem)}: graphc imports models "
                                f"whose inputs are float32 or float64 tensors, int64 token ids or bool conditions "
                                f"(axes and shapes must be constants)")
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
        """The graph value of ONNX value ``name``: a Tensor, a float (scalar constant) or an int array (an object
        array: a shape with named dimensions)."""
        if name not in self.env:
            array = self.known(name)
            if array is None:
                raise GraphError(f"value {name!r} is not defined before it is used")
            self.env[name] = self.constant(array, name)
        return self.env[name]

    def known(self, name: str):
        """The constant array of ONNX value ``name`` (an initializer, a folded value, a shape), or None."""
        if name in self.consts:
            return self.consts[name]
        if name in self.initializers:
            self.consts[name] = self.numpy_helper.to_array(self.initializers[name])
            return self.consts[name]
        x = self.env.get(name)
        if isinstance(x, float):
            return np.asarray(x, self.dtype)
        return x if isinstance(x, np.ndarray) else None

    def is_weight(self, name: str) -> bool:
        """A float initializer that is not a scalar: a param, which training changes, so never folded away."""
        tensor = self.initializers.get(name)
        return tensor is not None and tensor.data_type in FLOAT_TYPES and len(tensor.dims) > 0

    def constant(self, array, name: str):
        """A constant array as a graph value: a param (float, rank >= 1), a scalar constant or ints (axes)."""
        if is_symbolic(array) or array.dtype.kind == "b":
            return array
        if array.dtype.kind in "iu":
            return array.astype(np.int64)
        if array.dtype not in (np.float32, np.float64):
            raise GraphError(f"tensor {name!r} has element type {array.dtype}: graphc computes in {self.dtype}")
        if array.ndim == 0:
            return float(array)
        if name in self.initializers:
            return self.param(name, array)
        half = np.finfo(self.dtype).max / 2  # a folded mask's -inf as a finite number (params are finite): a
        return self.param(name, np.clip(array, -half, half), trainable=False)  # softmax makes 0 of either

    def param(self, name: str, array, trainable: bool = True) -> Tensor:
        """A param of the values of ``array``: a weight of the model, or (``trainable=False``) a running statistic
        or a constant that folding made (a mask), which training leaves alone."""
        ident = self.names.add(name)
        self.values[ident] = np.ascontiguousarray(array, dtype=self.dtype)
        return self.g.param(ident, array.shape, init="file", trainable=trainable)

    def frozen(self, name: str) -> Tensor:
        """ONNX value ``name`` (a constant 1-D float tensor) as a ``trainable = false`` param."""
        if name not in self.env:
            array = self.known(name)
            if array is None or array.dtype.kind != "f" or array.ndim != 1:
                raise GraphError(f"{name!r} must be a constant 1-D float tensor (running statistics)")
            self.env[name] = self.param(name, array, trainable=False)
        x = self.tensor(name)
        if self.g.nx.nodes[x.name].get("trainable", True):
            raise GraphError(f"{name!r} must be a constant 1-D float tensor (running statistics), not a computed "
                             "value or an input")
        return x

    def tensor(self, name: str) -> Tensor:
        x = self.value(name)
        if is_symbolic(x):
            raise GraphError(f"{name!r} is a shape with named dimensions used as a value: graphc computes in "
                             f"{self.dtype}")
        if isinstance(x, np.ndarray):
            raise GraphError(f"{name!r} is an integer tensor used as a value: graphc computes in {self.dtype}")
        if isinstance(x, float):
            return self.const(x)
        return x

    def same(self, name: str):
        """Value ``name`` passed on as it is: a scalar constant stays a number, which folding reads on."""
        x = self.value(name)
        return x if isinstance(x, float) else self.tensor(name)

    def const(self, value: float) -> Tensor:
        return self.g.const(value, name=self.names.fresh(f"{self.names.ident[self.out]}_const"))

    def ints(self, name: str) -> list[int]:
        x = self.known(name)
        if x is None or x.dtype.kind not in "iub":
            raise GraphError(f"{name!r} must be a constant integer tensor (axes), not a computed value")
        return [int(i) for i in x.reshape(-1)]

    def shape_value(self, name: str) -> list:
        """A constant shape: ints and named dimensions (``["N", -1]``)."""
        x = self.known(name)
        if x is None or not (is_symbolic(x) or x.dtype.kind in "iu"):
            raise GraphError(f"{name!r} must be a constant shape (folded at import), not a computed value")
        return [d if isinstance(d, str) else int(d) for d in x.reshape(-1)]

    def number(self, name: str, what: str) -> float:
        """A constant scalar operand (an exponent, a bound) as a float."""
        x = self.known(name)
        if x is None or is_symbolic(x) or x.size != 1 or x.dtype.kind not in "biuf":
            raise GraphError(f"{what} {name!r} must be a constant scalar, not a computed value")
        return float(x.reshape(-1)[0])

    def attr(self, key: str, default=None):
        for a in self.node.attribute:
            if a.name == key:
                value = self.onnx.helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
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
        arrays = {x: self.known(x) for x in node.input if x}
        if all(a is not None for a in arrays.values()) and not any(map(self.is_weight, arrays)) and foldable(node):
            self.fold(node, arrays)  # constants in, constants out: evaluated once, now
            return
        if node.op_type not in CONVERTERS:  # model.py has refused the nodes of other domains
            raise GraphError(f"unsupported op {node.op_type} (graphc imports {', '.join(CONVERTERS)})")
        outs = [o for o in node.output if o]
        extra = [o for o in node.output[1:] if o and o in self.used]
        if not node.output or not node.output[0] or extra:
            raise GraphError(f"{node.op_type} with {len(outs)} outputs used: graphc imports its first output only")
        self.out = node.output[0]
        result = CONVERTERS[node.op_type](self, node)
        self.env[self.out] = result
        if isinstance(result, Tensor) and result.name == self.names.ident[self.out]:
            self.described[result.name] = f"ONNX: {self.out} ({node.op_type} node {node.name or self.out})"

    def fold(self, node, arrays: dict) -> None:
        """Evaluate ``node`` on its constant inputs (onnx.reference); its outputs become constants."""
        for out, array in zip(node.output, evaluate(node, arrays, self.opset)):
            if out and array is not None:
                self.consts[out] = array

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
    a, b = (imp.tensor(x) for x in node.input)  # any rank: NumPy's matmul is ONNX's
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


# here, so that the supported list keeps its order
converter("Sigmoid", "Tanh", "Exp", "Log", "Erf", "Sqrt")(elementwise)


@converter("Softmax")
def softmax(imp, node):
    return imp.unary("softmax", axis=int(imp.attr("axis", -1)))


@converter("LogSoftmax")
def log_softmax(imp, node):
    return imp.unary("log_softmax", axis=int(imp.attr("axis", -1)))


@converter("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin")
def reduce(imp, node):
    return imp.reduce(node, node.op_type[len("Reduce"):].lower())  # graphc's sum, mean, max, min


@converter("Transpose")
def transpose(imp, node):
    x = imp.tensor(node.input[0])
    rank = imp.rank(x)
    perm = imp.attr("perm")
    perm = list(reversed(range(rank))) if perm is None else [int(p) for p in perm]
    if perm == list(range(rank)):
        return x
    if sorted(p % rank if -rank <= p < rank else p for p in perm) != list(range(rank)):
        raise GraphError(f"Transpose of a {rank}-D value with perm={perm}: not a permutation of its axes")
    perm = [p % rank for p in perm]
    if rank == 2:
        return imp.apply("transpose", x, last=True)
    return imp.apply("transpose", x, last=True, axes=tuple(perm))


@converter("Identity")
def identity(imp, node):
    return imp.value(node.input[0])


@converter("Flatten")
def flatten(imp, node):
    x = imp.tensor(node.input[0])
    rank, axis = imp.rank(x), int(imp.attr("axis", 1))
    if not -rank <= axis <= rank:
        raise GraphError(f"Flatten axis={axis} is out of range for a {rank}-D value")
    axis += rank if axis < 0 else 0
    if rank == 2 and axis == 1:
        return x  # already (N, C)
    if axis == 1 and rank > 1:
        return imp.apply("flatten", x, last=True, start_dim=1)
    lead = x.shape[:axis]
    if len(lead) > 1 and any(isinstance(d, str) for d in lead):
        raise GraphError(f"Flatten of a {rank}-D value {tuple(x.shape)} with axis={axis}: the first dimension "
                         f"would be a product of the named dimension, which graphc cannot name")
    first = lead[0] if len(lead) == 1 else int(np.prod(lead, dtype=np.int64))
    return imp.apply("reshape", x, last=True, shape=(first, -1 if axis < rank else 1))


@converter("Constant")
def constant(imp, node):
    """Never called: a Constant, like every node whose inputs are all constants, is folded before its converter is
    looked up (Importer.translate); registered so that SUPPORTED names it."""
    raise AssertionError(f"{imp.where()} should have been folded")


# ---- the shape of a value, and views: Reshape, Squeeze, Unsqueeze (the shape arithmetic between them folds) ----

@converter("Shape")
def shape(imp, node):
    x = imp.tensor(node.input[0])
    dims = list(x.shape)[slice(imp.attr("start", 0), imp.attr("end"))]
    return shape_array(dims)  # ints, with the named dimensions as names ("N"): folded onwards


def view(imp, x, target):
    """``x`` seen in shape ``target`` (ints and named dimensions): x itself when nothing changes."""
    if tuple(target) == tuple(x.shape):
        return x
    return imp.apply("reshape", x, last=True, shape=tuple(target))


@converter("Reshape")
def reshape(imp, node):
    x = imp.tensor(node.input[0])
    target = imp.shape_value(node.input[1])
    if 0 in target and imp.attr("allowzero", 0):
        raise GraphError(f"Reshape to {target} with allowzero=1: graphc has no empty dimensions")
    if len(target) > len(x.shape) and any(d == 0 for d in target[len(x.shape):]):
        raise GraphError(f"Reshape of {tuple(x.shape)} to {target}: a 0 past the input's rank")
    target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]  # 0: the input's dimension
    return view(imp, x, target)


def axes_of(imp, node, rank: int, added: bool = False) -> list[int] | None:
    """Squeeze's and Unsqueeze's axes (an input since opset 13, an attribute before), non-negative, of a result
    of ``rank`` dimensions, or of ``rank`` plus their number when they are ``added``."""
    axes = imp.ints(node.input[1]) if len(node.input) > 1 and node.input[1] else imp.attr("axes")
    if axes is None:
        return None
    rank += len(axes) if added else 0
    if any(not -rank <= int(a) < rank for a in axes):
        raise GraphError(f"axes {list(axes)} out of range for a {rank}-D value")
    return sorted(int(a) % rank for a in axes)


@converter("Unsqueeze")
def unsqueeze(imp, node):
    x = imp.tensor(node.input[0])
    shape = list(x.shape)
    for a in axes_of(imp, node, len(shape), added=True) or []:
        shape.insert(a, 1)
    return view(imp, x, shape)


@converter("Squeeze")
def squeeze(imp, node):
    x = imp.tensor(node.input[0])
    axes = axes_of(imp, node, imp.rank(x))
    axes = [i for i, d in enumerate(x.shape) if d == 1] if axes is None else axes
    if any(x.shape[a] != 1 for a in axes):
        raise GraphError(f"Squeeze of axes {axes} of {tuple(x.shape)}: they must have size 1")
    return view(imp, x, [d for i, d in enumerate(x.shape) if i not in axes])


# ---- identities at inference: Dropout, and casts to the type graphc computes in ---------------------------------

@converter("Dropout")
def dropout(imp, node):
    """Training mode (a model exported for training): graphc's dropout, the identity in predict; else the
    identity."""
    names = imp.inputs(node, 3)
    if names[2] and bool(imp.number(names[2], "Dropout's training_mode")):
        p = imp.number(names[1], "Dropout's ratio") if names[1] else 0.5
        return imp.apply("dropout", imp.tensor(names[0]), last=True, p=p) if p else imp.value(names[0])
    return imp.value(names[0])


@converter("Cast")
def cast(imp, node):
    to = imp.attr("to")
    if FLOAT_TYPES.get(to) != imp.dtype:
        raise GraphError(f"Cast to {imp.type_name(to)}: graphc computes in {imp.dtype}, and casts only to it")
    return imp.same(node.input[0])


@converter("CastLike")
def cast_like(imp, node):
    like = imp.known(node.input[1])  # a constant: its element type; a computed value is of the graph's type
    if like is not None and (is_symbolic(like) or like.dtype != imp.dtype):
        raise GraphError(f"CastLike to {'int64' if is_symbolic(like) else like.dtype}: graphc computes in "
                         f"{imp.dtype}")
    return imp.same(node.input[0])


# ---- the section 15 elementwise ops and normalisation ---------------------------------------------------------

@converter("Gelu")
def gelu(imp, node):
    return imp.unary("gelu", approximate=imp.attr("approximate", "none"))


@converter("Pow")
def pow_(imp, node):
    x = imp.tensor(node.input[0])
    return imp.apply("pow", x, last=True, exponent=imp.number(node.input[1], "Pow's exponent"))


@converter("Clip")
def clip(imp, node):
    names = imp.inputs(node, 3)
    x = imp.tensor(names[0])
    bounds = {key: imp.number(name, f"Clip's {key}") for key, name in zip(("min", "max"), names[1:]) if name}
    return imp.apply("clip", x, last=True, **bounds) if bounds else x


@converter("LayerNormalization")
def layer_norm(imp, node):
    names = imp.inputs(node, 3)
    x = imp.tensor(names[0])
    rank, axis = imp.rank(x), int(imp.attr("axis", -1))
    if rank == 0 or axis % rank != rank - 1:
        raise GraphError(f"LayerNormalization over axis {axis} of a {rank}-D value: graphc normalizes over the "
                         "last axis")
    operands = [imp.tensor(n) for n in names[1:] if n]
    for w in operands:
        if imp.rank(w) != 1:
            w_shape = tuple(w.shape)
            raise GraphError(f"LayerNormalization's scale or bias of shape {w_shape}: graphc takes them 1-D")
    eps = float(np.float32(imp.attr("epsilon", 1e-5)))
    return imp.apply("layer_norm", x, *operands, last=True, eps=eps)


# ---- concat and slice ----------------------------------------------------------------------------------------

@converter("Concat")
def concat(imp, node):
    xs = [imp.tensor(x) for x in node.input]
    return xs[0] if len(xs) == 1 else imp.apply("concat", *xs, last=True, axis=int(imp.attr("axis")))


@converter("Slice")
def slice_(imp, node):
    names = imp.inputs(node, 5)
    x = imp.tensor(names[0])
    starts, ends = imp.ints(names[1]), imp.ints(names[2])
    rank = imp.rank(x)
    axes = imp.ints(names[3]) if names[3] else list(range(len(starts)))
    steps = imp.ints(names[4]) if names[4] else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise GraphError("Slice's starts, ends, axes and steps differ in length")
    cuts = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if not -rank <= axis < rank or step == 0:
            raise GraphError(f"Slice of axis {axis} step {step} of a {rank}-D value")
        cut = one_slice(x.shape[axis % rank], start, end, step)
        if cut is not None:
            cuts.append({"axis": axis % rank, **cut})
    for k, cut in enumerate(cuts):
        x = imp.apply("slice", x, last=k == len(cuts) - 1, **cut)
    return x


def one_slice(size, start, end, step):
    """ONNX's clamped start and end as a Python slice of an axis of ``size`` (None: the whole axis)."""
    if isinstance(size, str):  # a named axis: only the whole of it
        whole = start in (0, -(1 << 63)) and end >= (1 << 31) and step == 1
        return None if whole else {"start": start, "stop": end, "step": step}  # the shape rule says why not
    start, stop, step = slice(start, end, step).indices(size)
    if step > 0 and stop >= size:
        stop = None
    elif step < 0 and stop < 0:
        stop = None
    if (start, stop, step) == (0, None, 1):
        return None
    return {"start": start, "stop": stop, "step": step}


# ---- convolution and pooling: NCHW (and NCL, seen as height 1) --------------------------------------------------

def spatial(imp, x, kernel, what: str) -> dict:
    """Strides, dilations and the pads before and after each spatial axis (auto_pad worked out)."""
    n = len(kernel)
    if imp.rank(x) != n + 2 or n not in (1, 2):
        raise GraphError(f"{what} of a {imp.rank(x)}-D value with a {n}-D kernel: graphc imports 1-D and 2-D "
                         "windows over (N, C, L) and (N, C, H, W)")
    sizes = x.shape[2:]
    if any(isinstance(d, str) for d in sizes):
        raise GraphError(f"{what} of {tuple(x.shape)}: graphc needs the spatial sizes fixed")
    strides = [int(v) for v in imp.attr("strides", [1] * n)]
    dilations = [int(v) for v in imp.attr("dilations", [1] * n)]
    pads = [int(v) for v in imp.attr("pads", [0] * 2 * n)]
    auto = imp.attr("auto_pad", "NOTSET")
    if auto == "VALID":
        pads = [0] * 2 * n
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * 2 * n
        for i, (size, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations)):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            pads[i], pads[n + i] = (small, big) if auto == "SAME_UPPER" else (big, small)
    return {"strides": strides, "dilations": dilations, "before": pads[:n], "after": pads[n:], "sizes": sizes}


def conv_padding(geo, kernel, what: str):
    """graphc's padding: each side alike, or torch's 'same' (the odd element after, stride 1)."""
    if geo["before"] == geo["after"]:
        return tuple(geo["before"])
    totals = [d * (k - 1) for k, d in zip(kernel, geo["dilations"])]
    same = ([t // 2 for t in totals], [t - t // 2 for t in totals])
    if (geo["before"], geo["after"]) == same and all(s == 1 for s in geo["strides"]):
        return "same"
    raise GraphError(f"{what} with pads {geo['before'] + geo['after']}: graphc pads both sides of an axis alike "
                     "(or as padding='same')")


def conv_operands(imp, node):
    """A Conv's or ConvTranspose's x, weight, bias (a list of none or one), kernel and window geometry."""
    names = imp.inputs(node, 3)
    x, w = imp.tensor(names[0]), imp.tensor(names[1])
    kernel = tuple(w.shape[2:])
    return x, w, [imp.tensor(names[2])] if names[2] else [], kernel, spatial(imp, x, kernel, node.op_type)


@converter("Conv")
def conv(imp, node):
    x, w, bias, kernel, geo = conv_operands(imp, node)
    padding, groups = conv_padding(geo, kernel, "Conv"), int(imp.attr("group", 1))
    if len(kernel) == 2:
        return imp.apply("conv2d", x, w, *bias, last=True, stride=tuple(geo["strides"]), padding=padding,
                         dilation=tuple(geo["dilations"]), groups=groups)
    return imp.apply("conv1d", x, w, *bias, last=True, stride=geo["strides"][0], dilation=geo["dilations"][0],
                     padding=padding if isinstance(padding, str) else padding[0], groups=groups)


def as_image(imp, x):
    """(N, C, L) as (N, C, 1, L): a 1-D window op through its 2-D form."""
    return imp.apply("reshape", x, shape=(x.shape[0], x.shape[1], 1, x.shape[2]))


def transpose_padding(imp, geo, kernel):
    """ConvTranspose's pads (from output_shape or auto_pad when given) as graphc's padding and output_padding."""
    n = len(kernel)
    extra = [int(v) for v in imp.attr("output_padding", [0] * n)]
    shape, auto = imp.attr("output_shape"), imp.attr("auto_pad", "NOTSET")
    if shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        out = [int(v) for v in shape][-n:] if shape is not None else [i * s for i, s in zip(geo["sizes"],
                                                                                              geo["strides"])]
        totals = [s * (i - 1) + e + (k - 1) * d + 1 - o for s, i, e, k, d, o in
                  zip(geo["strides"], geo["sizes"], extra, kernel, geo["dilations"], out)]
        upper = auto == "SAME_UPPER"  # the odd element of padding after; else before (ONNX)
        geo["before"] = [t // 2 if upper else t - t // 2 for t in totals]
        geo["after"] = [t - b for t, b in zip(totals, geo["before"])]
    # fewer pads after than before is more output: output_padding, which must stay below the stride
    padding = geo["before"]
    extra = [e + b - a for e, b, a in zip(extra, geo["before"], geo["after"])]
    if any(e < 0 or e >= max(s, d) for e, s, d in zip(extra, geo["strides"], geo["dilations"])):
        raise GraphError(f"ConvTranspose with pads {geo['before'] + geo['after']} and output_padding "
                         f"{imp.attr('output_padding', [0] * n)}: graphc pads both sides alike, the extra output "
                         "below the stride")
    return padding, extra


@converter("ConvTranspose")
def conv_transpose(imp, node):
    x, w, bias, kernel, geo = conv_operands(imp, node)
    padding, extra = transpose_padding(imp, geo, kernel)
    groups = int(imp.attr("group", 1))
    if len(kernel) == 2:
        return imp.apply("conv_transpose2d", x, w, *bias, last=True, stride=tuple(geo["strides"]),
                         padding=tuple(padding), output_padding=tuple(extra), dilation=tuple(geo["dilations"]),
                         groups=groups)
    w2 = imp.apply("reshape", w, shape=(w.shape[0], w.shape[1], 1, w.shape[2]))
    y = imp.apply("conv_transpose2d", as_image(imp, x), w2, *bias, stride=(1, geo["strides"][0]),
                  padding=(0, padding[0]), output_padding=(0, extra[0]), dilation=(1, geo["dilations"][0]),
                  groups=groups)
    return imp.apply("reshape", y, last=True, shape=(y.shape[0], y.shape[1], y.shape[3]))


def pool(imp, node, op: str, **extra):
    """MaxPool and AveragePool: graphc's max_pool2d and avg_pool2d (1-D through a height of 1)."""
    x = imp.tensor(node.input[0])
    kernel = [int(k) for k in imp.attr("kernel_shape")]
    geo = spatial(imp, x, kernel, node.op_type)
    if any(d != 1 for d in geo["dilations"]):
        raise GraphError(f"{node.op_type} with dilations {geo['dilations']}: graphc pools without dilation")
    if geo["before"] != geo["after"]:
        raise GraphError(f"{node.op_type} with pads {geo['before'] + geo['after']}: graphc pads both sides alike")
    if imp.attr("ceil_mode", 0):
        for size, k, s, p in zip(geo["sizes"], kernel, geo["strides"], geo["before"]):
            if (size + 2 * p - k) % s and -(-(size + 2 * p - k) // s) * s - p < size:
                raise GraphError(f"{node.op_type} with ceil_mode=1 takes a last, partial window: graphc pools "
                                 "whole windows (ceil_mode=0)")
    if len(kernel) == 2:
        return imp.apply(op, x, last=True, kernel_size=tuple(kernel), stride=tuple(geo["strides"]),
                         padding=tuple(geo["before"]), **extra)
    y = imp.apply(op, as_image(imp, x), kernel_size=(1, kernel[0]), stride=(1, geo["strides"][0]),
                  padding=(0, geo["before"][0]), **extra)
    return imp.apply("reshape", y, last=True, shape=(y.shape[0], y.shape[1], y.shape[3]))


@converter("MaxPool")
def max_pool(imp, node):
    return pool(imp, node, "max_pool2d")


@converter("AveragePool")
def average_pool(imp, node):
    return pool(imp, node, "avg_pool2d", count_include_pad=bool(imp.attr("count_include_pad", 0)))


@converter("GlobalAveragePool")
def global_average_pool(imp, node):
    x = imp.tensor(node.input[0])
    if imp.rank(x) == 4:
        return imp.apply("adaptive_avg_pool2d", x, last=True, output_size=(1, 1))
    if imp.rank(x) < 3:
        raise GraphError(f"GlobalAveragePool of a {imp.rank(x)}-D value: it needs (N, C, ...)")
    return imp.apply("mean", x, last=True, axis=tuple(range(2, imp.rank(x))), keepdims=True)


@converter("GlobalMaxPool")
def global_max_pool(imp, node):
    x = imp.tensor(node.input[0])
    if imp.rank(x) < 3:
        raise GraphError(f"GlobalMaxPool of a {imp.rank(x)}-D value: it needs (N, C, ...)")
    return imp.apply("max", x, last=True, axis=tuple(range(2, imp.rank(x))), keepdims=True)


# ---- section 16: token ids (Gather), BatchNormalization, Where ----------------------------------------------

@converter("Gather")
def gather(imp, node):
    """Rows of a weight picked by int64 ids (a graph input): embedding. Constant indices that are a run (torch's
    positions, ``x[:, -1]``): a slice, the axis dropped for a scalar index."""
    data, axis = imp.tensor(node.input[0]), int(imp.attr("axis", 0))
    ids = imp.value(node.input[1])
    if isinstance(ids, Tensor):
        if axis != 0 or imp.rank(data) != 2:
            raise GraphError(f"Gather of {tuple(data.shape)} along axis {axis} by computed indices: graphc gathers "
                             "the rows of a 2-D weight (embedding)")
        return imp.apply("embedding", ids, data, last=True)
    rank = imp.rank(data)
    index = np.asarray(ids).astype(np.int64)
    if not -rank <= axis < rank or index.ndim > 1 or isinstance(data.shape[axis % rank], str):
        raise GraphError(f"Gather of {tuple(data.shape)} along axis {axis} by constant indices of shape "
                         f"{index.shape}: graphc takes a run of indices along a fixed axis")
    axis, size = axis % rank, data.shape[axis % rank]
    flat = index.reshape(-1) % size
    if flat.size == 0 or np.any(np.diff(flat) != 1):
        raise GraphError(f"Gather of indices {flat.tolist()}: graphc takes a run of consecutive indices")
    stop = int(flat[-1]) + 1
    whole = flat[0] == 0 and stop == size
    x = data if whole else imp.apply("slice", data, last=index.ndim == 1, axis=axis, start=int(flat[0]),
                                     stop=None if stop == size else stop, step=1)
    return x if index.ndim == 1 else view(imp, x, [d for i, d in enumerate(x.shape) if i != axis])


@converter("BatchNormalization")
def batch_norm(imp, node):
    """graphc's batch_norm, the running statistics ``trainable = false`` params; training_mode=1 (a model
    exported for training) and 0 alike: predict normalizes with the running statistics, training with the
    batch's. ONNX's momentum weights the running value, torch's the batch's."""
    names = imp.inputs(node, 5)
    x, weight, bias = (imp.tensor(n) for n in names[:3])
    mean, var = imp.frozen(names[3]), imp.frozen(names[4])
    eps = float(np.float32(imp.attr("epsilon", 1e-5)))
    momentum = 1.0 - float(np.float32(imp.attr("momentum", 0.9)))
    return imp.apply("batch_norm", x, weight, bias, mean, var, last=True, momentum=round(momentum, 6), eps=eps)


def float_mask(imp, cond, name: str, on: float = 1.0, off: float = 0.0) -> Tensor:
    """A constant boolean condition as a ``trainable = false`` param: ``on`` where it holds, else ``off``."""
    half = float(np.finfo(imp.dtype).max) / 2  # an infinite fill as a finite one: params are finite; softmax's
    on, off = (float(np.clip(f, -half, half)) for f in (on, off))  # exp of it is 0 all the same
    array = np.where(np.asarray(cond, bool), on, off)
    if array.ndim == 0:
        return imp.const(float(array))
    return imp.param(f"{name}_mask", array, trainable=False)


@converter("Where")
def where(imp, node):
    """A boolean graph input as the condition: graphc's where. A constant one (a causal mask, folded): a mask
    param, ``a * m + b * (1 - m)``, or ``a + m`` with m 0 or the infinite scalar b (a masked fill: half the
    largest float in its place, which a softmax after it turns into 0 as it does -inf)."""
    cond = imp.value(node.input[0])
    a, b = (imp.value(n) for n in node.input[1:])
    if isinstance(cond, Tensor):
        return imp.apply("where", cond, imp.tensor(node.input[1]), imp.tensor(node.input[2]), last=True)
    if isinstance(cond, float) or cond.dtype.kind != "b":
        raise GraphError(f"Where's condition {node.input[0]!r} must be boolean")
    here = imp.out
    for keep, fill, on in ((a, b, False), (b, a, True)):
        if isinstance(fill, float) and not np.isfinite(fill):
            return imp.apply("add", imp.tensor(node.input[1] if keep is a else node.input[2]),
                             float_mask(imp, cond, here, on=fill if on else 0.0, off=0.0 if on else fill),
                             last=True)
    mask = float_mask(imp, cond, here)
    kept = imp.apply("mul", imp.tensor(node.input[1]), mask)
    dropped = imp.apply("mul", imp.tensor(node.input[2]), imp.apply("sub", 1.0, mask))
    return imp.apply("add", kept, dropped, last=True)


@converter("Softplus")
def softplus(imp, node):
    """log(1 + exp(x)); graphc's (torch's) is x itself past 20, where the two agree to rounding."""
    return imp.unary("softplus")


@converter("Equal", "Trilu")
def folded_only(imp, node):
    """Folded when its inputs are constants (a causal mask); on a computed value there is no op for it."""
    raise GraphError(f"{node.op_type} of a computed value: graphc imports it only on constants (folded at import)")


# ---- opset 23's Attention and RMSNormalization, SoftmaxCrossEntropyLoss, Sum -----------------------------------

ATTENTION_TAKEN = ("is_causal", "scale", "q_num_heads", "kv_num_heads")  # the attributes graphc computes
ATTENTION_OFF = {"softcap": 0.0, "qk_matmul_output_mode": 0, "left_window_size": -1, "right_window_size": -1}


@converter("Attention")
def attention(imp, node):
    """graphc's attention (torch's scaled_dot_product_attention): q, k, v of (B, H, S, D), or (B, S, H * D) with
    q_num_heads and kv_num_heads, split into heads and joined back. No mask, cache, softcap or grouped heads."""
    names = imp.inputs(node)
    extra = [n for n in names[3:] if n]
    if extra:
        raise GraphError(f"Attention with {len(extra)} inputs past q, k, v (attn_mask, past_key, past_value, "
                         "nonpad_kv_seqlen): graphc's attention takes q, k and v only")
    for a in node.attribute:  # the others only at the values that turn them off
        value = imp.attr(a.name)
        if a.name not in ATTENTION_TAKEN and (a.name not in ATTENTION_OFF or ATTENTION_OFF[a.name] != value):
            raise GraphError(f"Attention with {a.name}={value}: graphc's attention does not compute it")
    scale = imp.attr("scale")
    if scale is not None and not np.float32(scale) > 0:
        raise GraphError(f"Attention with scale={scale}: graphc's attention takes a positive scale")
    q, k, v = (imp.tensor(n) for n in names[:3])
    heads = [imp.attr("q_num_heads"), imp.attr("kv_num_heads")]
    ranks = {imp.rank(x) for x in (q, k, v)}
    if ranks == {3} and None not in heads:
        q, k, v = (split_heads(imp, x, h) for x, h in zip((q, k, v), heads + heads[1:]))
    elif ranks != {4}:
        raise GraphError(f"Attention of q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: graphc takes "
                         "4-D (B, H, S, D) or 3-D (B, S, H * D) with q_num_heads and kv_num_heads")
    if q.shape[1] != k.shape[1] or k.shape[1] != v.shape[1]:
        raise GraphError(f"Attention of {q.shape[1]} query heads and {k.shape[1]} key, {v.shape[1]} value heads "
                         "(grouped-query attention): graphc's attention takes as many of each")
    causal = bool(imp.attr("is_causal", 0))
    scale = None if scale is None else float(np.float32(scale))
    if ranks == {4}:
        return imp.apply("attention", q, k, v, last=True, causal=causal, scale=scale)
    y = imp.apply("transpose", imp.apply("attention", q, k, v, causal=causal, scale=scale), axes=(0, 2, 1, 3))
    return imp.apply("reshape", y, last=True, shape=(*y.shape[:2], y.shape[2] * y.shape[3]))


def split_heads(imp, x, heads: int) -> Tensor:
    """(B, S, H * D) -> (B, H, S, D)."""
    if isinstance(x.shape[2], str) or x.shape[2] % heads:
        raise GraphError(f"Attention input {tuple(x.shape)} with {heads} heads: its last dimension must be a "
                         "multiple of the number of heads")
    x = imp.apply("reshape", x, shape=(x.shape[0], x.shape[1], heads, x.shape[2] // heads))
    return imp.apply("transpose", x, axes=(0, 2, 1, 3))


@converter("RMSNormalization")
def rms_norm(imp, node):
    """graphc's rms_norm over the last axis, its scale the weight; over the axes from ``axis`` on, x seen with
    those axes as one, normalized, seen back and multiplied by the scale (broadcast as ONNX does)."""
    x, scale = imp.tensor(node.input[0]), imp.tensor(node.input[1])
    rank, axis, stash = imp.rank(x), int(imp.attr("axis", -1)), imp.attr("stash_type", 1)
    if FLOAT_TYPES.get(stash) != imp.dtype:
        raise GraphError(f"RMSNormalization with stash_type={stash} ({imp.type_name(stash)}): graphc computes in "
                         f"{imp.dtype}")
    if rank == 0 or not -rank <= axis < rank:
        raise GraphError(f"RMSNormalization over axis {axis} of a {rank}-D value: out of range")
    axis, eps = axis % rank, float(np.float32(imp.attr("epsilon", 1e-5)))
    if axis == rank - 1 and tuple(scale.shape) == (x.shape[-1],):
        return imp.apply("rms_norm", x, scale, last=True, eps=eps)
    inner = x.shape[axis:]
    if any(isinstance(d, str) for d in inner):
        raise GraphError(f"RMSNormalization of {tuple(x.shape)} over axes {axis} on: graphc normalizes over fixed "
                         "dimensions")
    flat = view_as(imp, x, (*x.shape[:axis], int(np.prod(inner, dtype=np.int64))))
    y = view_as(imp, imp.apply("rms_norm", flat, eps=eps), x.shape)
    return imp.apply("mul", y, scale, last=True)


def view_as(imp, x, shape) -> Tensor:
    """``x`` seen in ``shape`` (an internal node, or x itself when nothing changes)."""
    return x if tuple(shape) == tuple(x.shape) else imp.apply("reshape", x, shape=tuple(shape))


@converter("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy(imp, node):
    """graphc's cross_entropy (torch's): scores (N, C, d1, ...) and int64 class indices (N, d1, ...), a graph
    input, the mean or the sum; no weights, no ignore_index."""
    reduction = imp.attr("reduction", "mean")
    if len(node.input) > 2 and node.input[2]:
        raise GraphError("SoftmaxCrossEntropyLoss with weights: graphc's cross_entropy weighs classes alike")
    if imp.attr("ignore_index") is not None:
        raise GraphError(f"SoftmaxCrossEntropyLoss with ignore_index={imp.attr('ignore_index')}: graphc's "
                         "cross_entropy counts every target")
    if reduction not in ("mean", "sum"):
        raise GraphError(f"SoftmaxCrossEntropyLoss with reduction={reduction!r}: graphc's cross_entropy takes "
                         "'mean' or 'sum'")
    labels = imp.value(node.input[1])
    if not isinstance(labels, Tensor):
        raise GraphError(f"SoftmaxCrossEntropyLoss's labels {node.input[1]!r} must be an int64 graph input, not a "
                         "constant")
    return imp.apply("cross_entropy", imp.tensor(node.input[0]), labels, last=True, reduction=reduction)


@converter("Sum", "Mean")
def sum_(imp, node):
    """A chain of add, broadcasting as ONNX's Sum does (one operand: itself); Mean divides it by their number."""
    terms = [imp.tensor(n) for n in node.input]
    mean = node.op_type == "Mean" and len(terms) > 1
    total = terms[0]
    for i, x in enumerate(terms[1:], start=2):
        total = imp.apply("add", total, x, last=i == len(terms) and not mean)
    return imp.apply("div", total, float(len(terms)), last=True) if mean else total


SUPPORTED = tuple(CONVERTERS)  # the ONNX op types graphc imports (the measuring scripts in tools/ read it)
