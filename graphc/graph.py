"""The graph: a networkx.DiGraph with graphc's node schema, the builder API and its name rules.

Node attributes: ``op``, ``shape`` (tuple), ``dtype``, ``attrs`` (dict), and for params ``init`` and ``scale``.
Edge ``u -> v`` carries ``arg``: the list of positions at which ``u`` is an operand of ``v`` (``mul(x, x)`` is
one edge with ``arg == [0, 1]``).
"""

from __future__ import annotations

import keyword
import math
import numbers
from dataclasses import dataclass

import networkx as nx
import numpy as np

from .errors import GraphError, ShapeError
from .ops import OPS, as_float, check_attrs

DTYPES = ("float64", "float32")
INT_DTYPES = ("int64",)  # inputs only: class indices
BOOL_DTYPES = ("bool",)  # inputs only: where's conditions
INITS = ("zeros", "ones", "randn", "file")  # "file": from the params file (params_file, init_values)
LEAVES = ("input", "param", "const")
# Keyword arguments of the generated functions that sit beside the inputs (Trainer.fit(*inputs, epochs=, ...)):
# an input of that name could not be passed by keyword.
INPUT_RESERVED = ("iterations", "log_every", "epochs", "batch_size", "shuffle", "seed")
MAX_ELEMENTS = 2**31  # one tensor; larger is almost surely a typo and would not fit in memory anyway
MAX_RANK = 32  # NumPy's limit on dimensions (32 before NumPy 2, 64 since)


def check_name(name, what="node") -> str:
    """A user name becomes a Python identifier in the generated code: ASCII, not a keyword, no leading _."""
    # A node's error is located at the node; the graph's name says what it is in the message.
    node, subject = (None, f"graph name {name!r}") if what == "graph" else (name, "the name")
    if not isinstance(name, str) or not name.isascii() or not name.isidentifier():
        raise GraphError(f"{subject} is not a valid ASCII Python identifier", node=node)
    if keyword.iskeyword(name):
        raise GraphError(f"{subject} is a Python keyword", node=node)
    if name.startswith("_"):
        raise GraphError(f"{subject} starts with '_', which graphc keeps for its own names", node=node)
    return name


class Namer:
    """Fresh names from hints: ``hint``, else ``hint_2``, ``hint_3``, ...: never one of ``taken`` or an earlier one."""

    def __init__(self, taken: set):
        self.taken = set(taken)

    def __call__(self, hint: str) -> str:
        name, k = hint, 1
        while name in self.taken:
            k += 1
            name = f"{hint}_{k}"
        self.taken.add(name)
        return name


def check_dim_name(d, node: str | None = None) -> str:
    """A named dimension ("N") becomes a local variable of the generated functions: an identifier of our rules."""
    if not d.isascii() or not d.isidentifier() or keyword.iskeyword(d) or d.startswith("_"):
        raise ShapeError(f"dimension name {d!r} is not a valid ASCII Python identifier (no keyword, no leading _)",
                         node=node)
    return d


def check_shape(shape, node: str, named: bool = False) -> tuple:
    """A tuple of dimensions: positive ints and, where ``named`` (inputs), dimension names such as "N"."""
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise ShapeError(f"shape {shape!r} is not a list of dimensions", node=node)
    dims = tuple(shape)
    if len(dims) > MAX_RANK:
        raise ShapeError(f"shape has {len(dims)} dimensions; NumPy allows at most {MAX_RANK}", node=node)
    for d in dims:
        if isinstance(d, str) and named:
            check_dim_name(d, node)
        elif isinstance(d, str):
            raise ShapeError(f"shape {list(dims)!r}: a param's shape is concrete, but {d!r} is a named dimension "
                             "(only inputs may have named dimensions)", node=node)
        elif isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
            what = "a positive integer or a name" if named else "a positive integer"
            raise ShapeError(f"shape {list(dims)!r}: every dimension must be {what}", node=node)
    if math.prod(d for d in dims if not isinstance(d, str)) > MAX_ELEMENTS:
        raise ShapeError(f"shape {list(dims)!r} has more than {MAX_ELEMENTS} elements", node=node)
    return tuple(d if isinstance(d, str) else int(d) for d in dims)


def dim_names(shapes) -> list[str]:
    """The named dimensions of ``shapes``, in order of first appearance."""
    return list(dict.fromkeys(d for shape in shapes for d in shape if isinstance(d, str)))


def check_dims(G: nx.DiGraph, dims: dict | None) -> dict:
    """Every named dimension of the inputs, with its default size (None where none is given)."""
    names = dim_names(G.nodes[v]["shape"] for v in G if G.nodes[v]["op"] == "input")
    dims = dict(dims or {})
    for d, size in dims.items():
        if size is None:  # no default: fine until a size is needed (the script, check, show)
            continue
        if d not in names:
            known = ", ".join(names) or "none"
            raise GraphError(f"dims gives {d!r} a size, but no input has that dimension (named dimensions: {known})")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise GraphError(f"dimension {d!r} must have a positive integer size, got {size!r}")
    for v in G:  # at the default sizes too, an input fits the limit of one tensor
        shape = G.nodes[v]["shape"] if G.nodes[v]["op"] == "input" else ()
        if math.prod(dims.get(d) or 1 if isinstance(d, str) else d for d in shape) > MAX_ELEMENTS:
            sizes = [dims.get(d) or d if isinstance(d, str) else d for d in shape]
            raise GraphError(f"at the default sizes of its named dimensions ([dims]), input {v!r} would have shape "
                             f"{sizes} and more than {MAX_ELEMENTS} elements", node=v)
    for d in names:
        if d in G:
            raise GraphError(f"dimension name {d!r} is also a node name: rename one of them", node=d)
    return {d: dims.get(d) for d in names}


def concrete(shape, sizes: dict, what: str = "") -> tuple[int, ...]:
    """``shape`` with each named dimension replaced by its size in ``sizes``."""
    missing = [d for d in shape if isinstance(d, str) and sizes.get(d) is None]
    if missing:
        raise GraphError(f"dimension {missing[0]!r}{what} has no size: give it one in [dims] "
                         f"({missing[0]} = 32) or with --dim {missing[0]}=32")
    return tuple(sizes[d] if isinstance(d, str) else d for d in shape)


def check_dtype(dtype, node: str | None = None, integer: bool = False) -> str:
    if dtype not in DTYPES:
        allowed = DTYPES + INT_DTYPES + BOOL_DTYPES if integer else DTYPES
        raise GraphError(f"unsupported dtype {dtype!r} (use one of {', '.join(allowed)})", node=node)
    return dtype


def check_number(value, what: str, node: str | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise GraphError(f"{what} must be a number, got {value!r}", node=node)
    value = as_float(value)
    if not math.isfinite(value):
        raise GraphError(f"{what} must be finite, got {value!r}", node=node)
    return value


def trainable(G: nx.DiGraph, v) -> bool:
    """Whether node ``v`` is a param that training changes: the one place that says so (a param with
    ``trainable=False`` gets no gradient and no optimizer state; the others do)."""
    data = G.nodes[v]
    return data["op"] == "param" and data.get("trainable", True)


def trainable_params(G: nx.DiGraph) -> list:
    """The trainable params, in declaration order."""
    return [v for v in G if trainable(G, v)]


def check_fits(data: dict, node) -> None:
    """A param's init (times its scale) and a constant must be finite in the node's dtype (float32 ends at 3.4e38)."""
    top = float(np.finfo(data["dtype"]).max)
    if data["op"] == "const":
        value, what = data["attrs"]["value"], f"constant {data['attrs']['value']!r}"
    elif data["op"] == "param":
        init, scale = data["init"], data.get("scale", 1.0)
        if init == "file":
            return  # checked with the values, when they are given
        value = {"zeros": 0.0, "ones": 1.0, "randn": 10.0}.get(init, init) * scale  # randn: 10 sigma
        what = f"init {init!r}" + (f" times scale {scale!r}" if "scale" in data else "")
    else:
        return
    if not abs(value) <= top:
        raise GraphError(f"{what} does not fit in {data['dtype']} (largest: {top:.4g})", node=node)


def operands(G: nx.DiGraph, v) -> list:
    """The operands of ``v`` in argument order (a node used twice appears twice)."""
    slots = {}
    for u, _, data in G.in_edges(v, data=True):
        for pos in data["arg"]:
            slots[pos] = u
    return [slots[i] for i in range(len(slots))]


def add_node(G: nx.DiGraph, name, op: str, args=(), **data) -> None:
    """Add node ``name`` computing ``op(*args)``; the edges record argument positions."""
    G.add_node(name, op=op, **data)
    for pos, u in enumerate(args):
        if G.has_edge(u, name):
            G.edges[u, name]["arg"].append(pos)
        else:
            G.add_edge(u, name, arg=[pos])


def topo_order(G: nx.DiGraph) -> list:
    """Topological order, ties broken by insertion order: deterministic, and declaration order where possible."""
    index = {n: i for i, n in enumerate(G.nodes)}
    return list(nx.lexicographical_topological_sort(G, key=index.__getitem__))


def describe(G: nx.DiGraph, v) -> str:
    """``h = relu(h_add)``: a node as an equation, for comments and messages."""
    data = G.nodes[v]
    args = [str(a) for a in operands(G, v)]
    args += [f"{k}={val!r}" for k, val in sorted(data.get("attrs", {}).items()) if k != "value"]
    return f"{v} = {data['op']}({', '.join(args)})"


def infer(G: nx.DiGraph, v) -> tuple[int, ...]:
    """Check node ``v`` (an op node whose operands are already checked) and return its shape."""
    data = G.nodes[v]
    op = OPS.get(data["op"])
    if op is None or not op.public:
        raise GraphError(f"unknown op {data['op']!r} (known: {', '.join(sorted(public_ops()))})", node=v)
    args = operands(G, v)
    arities = op.arity if isinstance(op.arity, tuple) else (op.arity,)
    if op.arity is not None and len(args) not in arities:  # None: the shape rule counts them
        count = " or ".join(map(str, arities))
        raise GraphError(f"{op.name} takes {count} operand{'s' * (arities != (1,))}, got {len(args)}", node=v)
    data["attrs"] = check_attrs(op, data.get("attrs") or {}, node=v)
    ints = [i for i, a in enumerate(args) if G.nodes[a]["dtype"] not in DTYPES]
    for i in ints:
        if G.nodes[args[i]]["dtype"] in BOOL_DTYPES and i not in op.bool_operands:
            raise GraphError(f"{args[i]} is a boolean input: only the condition of where may be boolean", node=v)
        if G.nodes[args[i]]["dtype"] in INT_DTYPES and i not in op.int_operands:
            raise GraphError(f"{args[i]} is an integer input (class indices): only the target of cross_entropy "
                             "or the ids of embedding may be integer", node=v)
    dtypes = {G.nodes[a]["dtype"] for i, a in enumerate(args) if i not in ints}
    if len(dtypes) > 1:
        raise GraphError(f"operands mix dtypes {sorted(dtypes)}", node=v)
    data.setdefault("dtype", dtypes.pop())
    try:
        shapes = [G.nodes[a]["shape"] for a in args]
        if op.int_operands or op.bool_operands:
            return op.shape(shapes, data["attrs"], ints)
        return op.shape(shapes, data["attrs"])
    except ShapeError as err:
        err.message = f"{describe(G, v)}: {err.message}"
        raise err.located(node=v)


def public_ops() -> list[str]:
    return [name for name, op in OPS.items() if op.public]


@dataclass(frozen=True)
class Tensor:
    """A handle on one node of a Graph, returned by every builder call. Supports ``+ - * @``."""

    graph: "Graph"
    name: str

    @property
    def shape(self) -> tuple[int, ...]:
        return self.graph.nx.nodes[self.name]["shape"]

    @property
    def dtype(self) -> str:
        return self.graph.nx.nodes[self.name]["dtype"]

    @property
    def op(self) -> str:
        return self.graph.nx.nodes[self.name]["op"]

    def __add__(self, other):
        return apply("add", self, other)

    def __radd__(self, other):
        return apply("add", other, self)

    def __sub__(self, other):
        return apply("sub", self, other)

    def __rsub__(self, other):
        return apply("sub", other, self)

    def __mul__(self, other):
        return apply("mul", self, other)

    def __rmul__(self, other):
        return apply("mul", other, self)

    def __truediv__(self, other):
        return apply("div", self, other)

    def __rtruediv__(self, other):
        return apply("div", other, self)

    def __neg__(self):
        return apply("neg", self)

    def __pow__(self, other):
        return apply("pow", self, other)

    def __rpow__(self, other):
        return apply("pow", other, self)

    def __matmul__(self, other):
        return apply("matmul", self, other)

    def __rmatmul__(self, other):
        return apply("matmul", other, self)

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, shape={self.shape}, op={self.op!r})"


class Graph:
    """A static graph under construction. Every call validates and infers shapes at once."""

    def __init__(self, name: str = "model", dtype: str = "float64"):
        self.nx = nx.DiGraph(name=check_name(name, "graph"), dtype=check_dtype(dtype))
        self._counter = 0

    @property
    def dtype(self) -> str:
        return self.nx.graph["dtype"]

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.nx:
            raise GraphError(f"undefined name {name!r}", node=name)
        return Tensor(self, name)

    def __contains__(self, name) -> bool:
        return name in self.nx

    def _new_name(self, name, op: str) -> str:
        if name is None:
            self._counter += 1
            while f"{op}_{self._counter}" in self.nx:
                self._counter += 1
            return f"{op}_{self._counter}"
        check_name(name)
        if name in self.nx:
            raise GraphError(f"duplicate name {name!r}", node=name)
        return name

    def input(self, name: str, shape, dtype: str | None = None) -> Tensor:
        """An input fed at every step. Dimensions may be names ("N"): sizes bound at run time.
        ``dtype="int64"`` makes it an integer input (class indices, the target of cross_entropy)."""
        name = self._new_name(name, "input")
        if name in INPUT_RESERVED:
            raise GraphError(f"input name {name!r} is a keyword argument of Trainer.fit; rename the input", node=name)
        shape = check_shape(shape, name, named=True)
        if dtype not in INT_DTYPES + BOOL_DTYPES:
            dtype = check_dtype(dtype or self.dtype, name, integer=True)
        self.nx.add_node(name, op="input", shape=shape, dtype=dtype, attrs={})
        return Tensor(self, name)

    def param(self, name: str, shape, init="randn", scale=None, dtype: str | None = None,
              trainable: bool = True) -> Tensor:
        """A parameter. ``init`` is "zeros", "ones", "randn" or a number; ``scale`` multiplies it. A param with
        ``trainable=False`` gets no gradient and no optimizer update (batch_norm's running statistics, a frozen
        layer)."""
        name = self._new_name(name, "param")
        shape = check_shape(shape, name)
        if isinstance(init, str):
            if init not in INITS:
                raise GraphError(f"unknown init {init!r} (use one of {', '.join(INITS)} or a number)", node=name)
        else:
            init = check_number(init, "init", name)
        data = dict(op="param", shape=shape, dtype=check_dtype(dtype or self.dtype, name), init=init, attrs={})
        if scale is not None:
            data["scale"] = check_number(scale, "scale", name)
        if not isinstance(trainable, bool):
            raise GraphError(f"trainable must be True or False, got {trainable!r}", node=name)
        if not trainable:
            data["trainable"] = False
        check_fits(data, name)
        self.nx.add_node(name, **data)
        return Tensor(self, name)

    def const(self, value, name: str | None = None) -> Tensor:
        """A scalar constant."""
        value = check_number(value, "constant", name)
        name = self._new_name(name, "const")
        data = dict(op="const", shape=(), dtype=self.dtype, attrs={"value": value})
        check_fits(data, name)
        self.nx.add_node(name, **data)
        return Tensor(self, name)

    def apply(self, op: str, *args, name: str | None = None, **attrs) -> Tensor:
        """Add ``name = op(*args, **attrs)``; numbers become constants, strings name existing nodes."""
        before = self.nx.number_of_nodes()
        args, attrs = attr_operands(op, args, attrs, name)
        try:
            handles = [self._operand(a) for a in args]
            name = self._new_name(name, op)
            add_node(self.nx, name, op, [h.name for h in handles], attrs=attrs)
            self.nx.nodes[name]["shape"] = infer(self.nx, name)
        except Exception:  # leave the graph as it was: no half-added node, no stray constant
            self.nx.remove_nodes_from(list(self.nx.nodes)[before:])
            raise
        return Tensor(self, name)

    def _operand(self, a) -> Tensor:
        if isinstance(a, Tensor):
            if a.graph is not self:
                raise GraphError(f"{a.name!r} belongs to another graph", node=a.name)
            return a
        if isinstance(a, str):
            return self[a]
        return self.const(a)

    @property
    def inputs(self) -> list[str]:
        return [n for n, op in self.nx.nodes(data="op") if op == "input"]

    @property
    def params(self) -> list[str]:
        return [n for n, op in self.nx.nodes(data="op") if op == "param"]


def attr_operands(op: str, args: tuple, attrs: dict, name) -> tuple[tuple, dict]:
    """Trailing operands that are attrs of the op (Op.attr_operands: ``pow(x, 2.0)``, ``clip(x, 0.0, 6.0)``):
    numbers (or None), never tensors."""
    known = OPS.get(op)
    if known is None or not known.attr_operands or len(args) <= known.arity:
        return args, attrs
    extra = args[known.arity:]
    if len(extra) > len(known.attr_operands):
        raise GraphError(f"{op} takes {known.arity} operand{'s' * (known.arity != 1)} and "
                         f"{', '.join(known.attr_operands)}, got {len(args)} arguments", node=name)
    attrs = dict(attrs)
    for key, value in zip(known.attr_operands, extra):
        if isinstance(value, (Tensor, str)):
            what = value.name if isinstance(value, Tensor) else value
            raise GraphError(f"{op}'s {key} must be a number, not the tensor {what!r}", node=name)
        if key in attrs:
            raise GraphError(f"{op}'s {key} is given twice", node=name)
        attrs[key] = value
    return args[:known.arity], attrs


def apply(op: str, *args, name: str | None = None, **attrs) -> Tensor:
    """``op(*args)`` in the graph of its Tensor operands."""
    graphs = {a.graph for a in args if isinstance(a, Tensor)}
    if len(graphs) != 1:
        raise GraphError(f"{op} needs Tensor operands from exactly one graph")
    return graphs.pop().apply(op, *args, name=name, **attrs)


def matmul(a, b, name=None) -> Tensor:
    return apply("matmul", a, b, name=name)


def add(a, b, name=None) -> Tensor:
    return apply("add", a, b, name=name)


def sub(a, b, name=None) -> Tensor:
    return apply("sub", a, b, name=name)


def mul(a, b, name=None) -> Tensor:
    return apply("mul", a, b, name=name)


def relu(x, name=None) -> Tensor:
    return apply("relu", x, name=name)


def mse(pred, target, reduction="mean", name=None) -> Tensor:
    return apply("mse", pred, target, name=name, reduction=reduction)


def div(a, b, name=None) -> Tensor:
    return apply("div", a, b, name=name)


def neg(x, name=None) -> Tensor:
    return apply("neg", x, name=name)


def exp(x, name=None) -> Tensor:
    return apply("exp", x, name=name)


def log(x, name=None) -> Tensor:
    return apply("log", x, name=name)


def tanh(x, name=None) -> Tensor:
    return apply("tanh", x, name=name)


def sigmoid(x, name=None) -> Tensor:
    return apply("sigmoid", x, name=name)


def leaky_relu(x, negative_slope=0.01, name=None) -> Tensor:
    return apply("leaky_relu", x, name=name, negative_slope=negative_slope)


def softmax(x, axis=-1, name=None) -> Tensor:
    return apply("softmax", x, name=name, axis=axis)


def log_softmax(x, axis=-1, name=None) -> Tensor:
    return apply("log_softmax", x, name=name, axis=axis)


def sum(x, axis=None, keepdims=False, name=None) -> Tensor:  # noqa: A001 (graphc.sum, like np.sum)
    return apply("sum", x, name=name, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False, name=None) -> Tensor:
    return apply("mean", x, name=name, axis=axis, keepdims=keepdims)


def transpose(x, axes=None, name=None) -> Tensor:
    """np.transpose: a view; ``axes`` a permutation (None: the 2-D transpose)."""
    return apply("transpose", x, name=name) if axes is None else apply("transpose", x, name=name, axes=tuple(axes))


def cross_entropy(logits, target, reduction="mean", name=None) -> Tensor:
    """= torch.nn.functional.cross_entropy: target int64 class indices (N,) or probabilities (N, C)."""
    return apply("cross_entropy", logits, target, name=name, reduction=reduction)


def binary_cross_entropy_with_logits(logits, target, reduction="mean", name=None) -> Tensor:
    return apply("binary_cross_entropy_with_logits", logits, target, name=name, reduction=reduction)


def from_networkx(G: nx.DiGraph, name: str | None = None, dtype: str | None = None) -> Graph:
    """A Graph from a DiGraph following the node schema; every node is checked and op shapes inferred."""
    if not isinstance(G, nx.DiGraph) or G.is_multigraph():
        raise GraphError("from_networkx needs a networkx.DiGraph")
    if G.number_of_nodes() == 0:
        raise GraphError("the graph is empty")
    if not nx.is_directed_acyclic_graph(G):
        edges = nx.find_cycle(G)
        cycle = " -> ".join([str(u) for u, _ in edges] + [str(edges[0][0])])
        raise GraphError(f"the graph has a cycle: {cycle}")
    g = Graph(name or G.graph.get("name") or "model", dtype or G.graph.get("dtype") or "float64")
    for v in topo_order(G):
        data = dict(G.nodes[v])
        op = data.get("op")
        args = _edge_operands(G, v)
        if op in LEAVES and args:
            raise GraphError(f"{op} node has incoming edges", node=v)
        if op == "input":
            g.input(v, data.get("shape"), dtype=data.get("dtype"))
        elif op == "param":
            g.param(v, data.get("shape"), init=data.get("init", "randn"), scale=data.get("scale"),
                    dtype=data.get("dtype"), trainable=data.get("trainable", True))
        elif op == "const":
            g.const((data.get("attrs") or {}).get("value"), name=v)
        else:
            if not isinstance(op, str):
                raise GraphError(f"missing or invalid op {op!r}", node=v)
            t = g.apply(op, *args, name=v, **(data.get("attrs") or {}))
            given = data.get("shape")
            if given is not None and tuple(given) != t.shape:
                raise ShapeError(f"declared shape {tuple(given)} but {describe(g.nx, v)} gives {t.shape}", node=v)
    return g


def _edge_operands(G: nx.DiGraph, v) -> list:
    slots = {}
    for u, _, data in G.in_edges(v, data=True):
        arg = data.get("arg")
        positions = [arg] if isinstance(arg, int) and not isinstance(arg, bool) else arg
        if not isinstance(positions, (list, tuple)) or not all(
                isinstance(p, int) and not isinstance(p, bool) for p in positions):
            raise GraphError(f"edge {u!r} -> {v!r} needs an integer 'arg' (or a list of them)", node=v)
        for pos in positions:
            if pos in slots:
                raise GraphError(f"operand position {pos} is given twice", node=v)
            slots[pos] = u
    if sorted(slots) != list(range(len(slots))):
        raise GraphError(f"operand positions {sorted(slots)} are not 0..{len(slots) - 1}", node=v)
    return [slots[i] for i in range(len(slots))]


# ---- sequence models (DESIGN section 15) -------------------------------------------------------------------

def erf(x, name=None) -> Tensor:
    return apply("erf", x, name=name)


def sqrt(x, name=None) -> Tensor:
    return apply("sqrt", x, name=name)


def gelu(x, approximate="none", name=None) -> Tensor:
    """= torch.nn.functional.gelu: ``approximate`` "none" (erf, to float64 rounding) or "tanh"."""
    return apply("gelu", x, name=name, approximate=approximate)


def silu(x, name=None) -> Tensor:
    return apply("silu", x, name=name)


def softplus(x, name=None) -> Tensor:
    """= torch.nn.functional.softplus with beta=1, threshold=20: x itself above 20."""
    return apply("softplus", x, name=name)


def pow(x, exponent, name=None) -> Tensor:  # noqa: A001 (graphc.pow, like np.pow)
    """``x ** exponent`` for a constant (number) exponent."""
    return apply("pow", x, exponent, name=name)


def clip(x, min=None, max=None, name=None) -> Tensor:  # noqa: A002 (torch.clamp's names)
    """= torch.clamp: either bound may be None; the gradient passes where min <= x <= max."""
    return apply("clip", x, name=name, min=min, max=max)


def max(x, axis=None, keepdims=False, name=None) -> Tensor:  # noqa: A001 (= torch.amax)
    """The largest element over ``axis``; its gradient split evenly among equal maxima, as torch.amax's."""
    return apply("max", x, name=name, axis=axis, keepdims=keepdims)


def min(x, axis=None, keepdims=False, name=None) -> Tensor:  # noqa: A001 (= torch.amin)
    return apply("min", x, name=name, axis=axis, keepdims=keepdims)


def layer_norm(x, weight=None, bias=None, eps=1e-5, name=None) -> Tensor:
    """= torch.nn.functional.layer_norm over the last dimension; ``weight`` and ``bias`` may be omitted."""
    if weight is None and bias is not None:
        raise GraphError("layer_norm with a bias needs a weight (give ones)", node=name)
    return apply("layer_norm", *[a for a in (x, weight, bias) if a is not None], name=name, eps=eps)


def rms_norm(x, weight=None, eps=None, name=None) -> Tensor:
    """= torch.nn.functional.rms_norm over the last dimension; ``eps=None`` is the dtype's machine epsilon."""
    return apply("rms_norm", *[a for a in (x, weight) if a is not None], name=name, eps=eps)


def concat(*tensors, axis=-1, name=None) -> Tensor:
    """= np.concatenate / torch.cat along ``axis``: the other dimensions must be equal."""
    return apply("concat", *tensors, name=name, axis=axis)


def slice(x, axis=-1, start=0, stop=None, step=1, name=None) -> Tensor:  # noqa: A001
    """``x[..., start:stop:step]`` along ``axis``: a view."""
    return apply("slice", x, name=name, axis=axis, start=start, stop=stop, step=step)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, name=None) -> Tensor:
    """= torch.nn.functional.conv2d: x (N, C, H, W), w (C_out, C / groups, kH, kW), b (C_out,) or None;
    padding an int, a pair, 'same' or 'valid'."""
    args = (x, w) if b is None else (x, w, b)
    return apply("conv2d", *args, name=name, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, name=None) -> Tensor:
    """= torch.nn.functional.conv1d: x (N, C, L), w (C_out, C / groups, k), b (C_out,) or None."""
    args = (x, w) if b is None else (x, w, b)
    return apply("conv1d", *args, name=name, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     name=None) -> Tensor:
    """= torch.nn.functional.conv_transpose2d: w is (C_in, C_out / groups, kH, kW)."""
    args = (x, w) if b is None else (x, w, b)
    return apply("conv_transpose2d", *args, name=name, stride=stride, padding=padding,
                 output_padding=output_padding, groups=groups, dilation=dilation)


def max_pool2d(x, kernel_size, stride=None, padding=0, name=None) -> Tensor:
    """= torch.nn.functional.max_pool2d (stride defaults to the kernel; padding pads with -inf)."""
    return apply("max_pool2d", x, name=name, kernel_size=kernel_size, stride=stride, padding=padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True, name=None) -> Tensor:
    """= torch.nn.functional.avg_pool2d (stride defaults to the kernel)."""
    return apply("avg_pool2d", x, name=name, kernel_size=kernel_size, stride=stride, padding=padding,
                 count_include_pad=count_include_pad)


def adaptive_avg_pool2d(x, output_size, name=None) -> Tensor:
    """= torch.nn.functional.adaptive_avg_pool2d, for input sizes that are multiples of ``output_size``."""
    return apply("adaptive_avg_pool2d", x, name=name, output_size=output_size)


def flatten(x, start_dim=1, name=None) -> Tensor:
    """= torch.flatten(x, start_dim): a view."""
    return apply("flatten", x, name=name, start_dim=start_dim)


def reshape(x, shape, name=None) -> Tensor:
    """= torch.reshape: one -1 at most; an entry may be a dimension name ("N"), which x must have."""
    return apply("reshape", x, name=name, shape=shape)


def embedding(ids, weight, name=None) -> Tensor:
    """= torch.nn.functional.embedding: ``ids`` an integer input of any shape, ``weight`` (V, D)."""
    return apply("embedding", ids, weight, name=name)


def where(cond, a, b, name=None) -> Tensor:
    """= torch.where: ``cond`` a boolean input (dtype "bool"); gradients to ``a`` and ``b``."""
    return apply("where", cond, a, b, name=name)


def attention(q, k, v, causal=False, scale=None, name=None) -> Tensor:
    """= torch.nn.functional.scaled_dot_product_attention on (..., T, d), without mask or dropout."""
    return apply("attention", q, k, v, name=name, causal=causal, scale=scale)


def dropout(x, p=0.5, name=None) -> Tensor:
    """= torch.nn.functional.dropout: in training mode (value_and_grad, Trainer.step) each element is zeroed with
    probability ``p`` and the rest scaled by 1 / (1 - p); in evaluation mode (predict, loss) the identity."""
    return apply("dropout", x, name=name, p=p)


def batch_norm(x, weight, bias, running_mean, running_var, momentum=0.1, eps=1e-5, name=None) -> Tensor:
    """= torch.nn.BatchNorm1d/2d over axis 1 of a 2-D, 3-D or 4-D ``x``: batch statistics in training mode (and
    Trainer.step updates ``running_mean``/``running_var``, trainable=False params), running ones in evaluation."""
    return apply("batch_norm", x, weight, bias, running_mean, running_var, name=name, momentum=momentum, eps=eps)
