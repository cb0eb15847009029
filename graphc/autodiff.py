"""The adjoint pass: forward graph -> adjoint graph (reverse-mode gradients as a second networkx.DiGraph).

The adjoint graph uses the forward node schema. Its nodes are
- ``op="forward"``: a value of the forward pass that the backward reads (same name as the forward node);
- ``op="const"``: a scalar constant (``attrs["value"]``);
- ops of the table (``matmul``, ``sum_to``, ``relu_grad``, ...), each with ``via``: the forward node whose
  gradient rule built it, and, when it is the gradient of one of that node's operands, ``wrt``: that operand.
Graph attributes: ``loss`` (the forward loss node) and ``grads`` (param name -> adjoint node of its gradient).
"""

from __future__ import annotations

import math
from collections import defaultdict

import networkx as nx

from .errors import GraphError
from .graph import Namer, add_node, operands, topo_order, trainable
from .ops import OPS, broadcast_shape, own


class AdjointBuilder:
    """What gradient rules build with: every method adds (or folds away) one adjoint node and returns its name."""

    def __init__(self, G: nx.DiGraph, reserved):
        self.G = G
        self.A = nx.DiGraph(loss=None, grads={})
        self.names = Namer(reserved)
        self.via = None  # the forward node whose rule is running
        self.made = set()  # the nodes that rule has made so far

    # -- names ---------------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """``hint``, or a variant of it that no user name and no earlier adjoint name uses."""
        name = hint.removeprefix("_")
        return self.names("_" + name if name in self.names.taken else name)

    def rename(self, v, hint: str):
        """Give node ``v`` (made by the running rule, so it has few edges) the name ``hint`` asks for."""
        new = self.fresh(hint)
        A = self.A
        A.add_node(new, **A.nodes[v])
        A.add_edges_from((u, new, d) for u, _, d in A.in_edges(v, data=True))
        A.add_edges_from((new, w, d) for _, w, d in A.out_edges(v, data=True))
        A.remove_node(v)
        self.made.discard(v)
        self.made.add(new)
        return new

    # -- queries -------------------------------------------------------------------------------------------
    def shape(self, v):
        return (self.A.nodes[v] if v in self.A else self.G.nodes[v])["shape"]

    def attrs(self, v):
        return self.G.nodes[v]["attrs"]

    def const_value(self, v):
        data = self.A.nodes[v]
        return data["attrs"]["value"] if data["op"] == "const" else None

    # -- nodes ---------------------------------------------------------------------------------------------
    def fwd(self, x):
        """The forward value ``x``, as read by the backward pass (a forward constant is copied in)."""
        data = self.G.nodes[x]
        if data["op"] == "const":
            return self.const(data["attrs"]["value"])
        if data["op"] in OPS and OPS[data["op"]].inline:  # a view, never a variable: the backward makes its own
            return self.node(data["op"], *map(self.fwd, operands(self.G, x)), hint=x, **data["attrs"])
        if x not in self.A:
            self.A.add_node(x, op="forward", shape=data["shape"], dtype=data["dtype"], attrs={})
        return x

    def const(self, value: float):
        name = self.fresh("const")
        self.A.add_node(name, op="const", shape=(), dtype=self.dtype, attrs={"value": float(value)})
        return name

    def node(self, op: str, *args, hint: str | None = None, **attrs):
        shape = OPS[op].shape([self.shape(a) for a in args], attrs)
        name = self.fresh(hint or f"d{self.via}_{op}")
        add_node(self.A, name, op, args, shape=shape, dtype=OPS[op].dtype or self.dtype, attrs=attrs, via=self.via)
        self.made.add(name)
        return name

    def mul(self, a, b, hint=None):
        ca, cb = self.const_value(a), self.const_value(b)
        if ca is not None and cb is not None:
            return self.const(ca * cb)
        if ca == 1.0 or cb == 1.0:
            return b if ca == 1.0 else a
        if ca == -1.0 or cb == -1.0:
            return self.neg(b if ca == -1.0 else a)
        return self.node("mul", a, b, hint=hint)

    def neg(self, a):
        c = self.const_value(a)
        if c is not None:
            return self.const(-c)
        data = self.A.nodes[a]
        if data["op"] == "neg":
            return operands(self.A, a)[0]
        return self.node("neg", a)

    def div(self, a, b, hint=None):
        ca, cb = self.const_value(a), self.const_value(b)
        if ca is not None and cb is not None:
            return self.const(ca / cb)
        if cb == 1.0:
            return a
        return self.node("div", a, b, hint=hint)

    def size(self, dims):
        """The number of elements of a shape: a constant, or a ``size`` node when it has named dimensions."""
        if all(isinstance(d, int) for d in dims):
            return self.const(math.prod(dims))
        return self.node("size", dims=tuple(dims), hint="size")

    def sub(self, a, b, hint=None):
        return self.node("sub", a, b, hint=hint)

    def matmul(self, a, b):
        return self.node("matmul", a, b)

    def T(self, a):
        """``a`` with its last two axes swapped (``a.T`` in 2-D)."""
        rank = len(self.shape(a))
        swap = {} if rank == 2 else {"axes": (*range(rank - 2), rank - 1, rank - 2)}
        return self.node("transpose", a, hint=f"{a}_T", **swap)

    def expand(self, g, shape, axis, keepdims):
        """A reduction's gradient: ``g`` (reduced over ``axis``) broadcast back to ``shape``, as an array."""
        c = self.const_value(g)
        if c is not None:
            return self.node("fill", value=c, shape=tuple(shape))
        insert = () if keepdims or self.shape(g) == () else tuple(axis)
        return self.node("broadcast_to", g, axis=insert, shape=tuple(shape))

    def unbroadcast(self, g, x):
        """Sum ``g`` back to the shape of operand ``x`` over the axes that broadcasting added (known now)."""
        shape, target = self.shape(g), self.shape(x)
        if shape == target:
            return g
        if self.const_value(g) is not None:
            return g  # a scalar constant broadcasts to any shape
        lead = len(shape) - len(target)
        axis = tuple(range(lead)) + tuple(
            lead + i for i, d in enumerate(target) if d == 1 and shape[lead + i] != 1)
        # a bias's gradient from a (B, T, ...) g: its rows (several leading axes) summed as one (rows, size) view, g
        # an array of its own (NumPy reduces those axes row by row; one leading axis of a matrix, as fast)
        rows = lead > 1 and axis == tuple(range(lead)) and len(target) > 0 \
            and all(isinstance(d, int) for d in target) and own(self, g)
        return self.node("sum_to", g, axis=axis, shape=tuple(target), rows=rows)

    @property
    def dtype(self):
        return self.G.graph["dtype"]


def needs_gradient(G: nx.DiGraph, loss) -> set:
    """Nodes on a path from a trainable param to the loss: the only ones that get an adjoint."""
    upstream = nx.ancestors(G, loss) | {loss}
    reached = set()
    for v in topo_order(G):
        if v in upstream and (trainable(G, v) or any(u in reached for u in G.predecessors(v))):
            reached.add(v)
    return reached


def adjoint(G: nx.DiGraph, loss, reserved=()) -> nx.DiGraph:
    """The adjoint graph of scalar node ``loss``: one gradient per trainable param, nothing for inputs, constants
    or the other params."""
    check_loss(G, loss)
    needed = needs_gradient(G, loss)
    order = [v for v in topo_order(G) if v in needed]
    uses = defaultdict(int)
    for v in order:
        for x in operands(G, v):
            if x in needed:
                uses[x] += 1

    b = AdjointBuilder(G, set(G.nodes) | set(reserved))
    b.A.graph["loss"] = loss
    contributions = defaultdict(list)
    contributions[loss].append(b.const(1.0))
    for v in reversed(order):
        g = accumulate(b, v, contributions.pop(v))
        if G.nodes[v]["op"] == "param":
            b.A.graph["grads"][v] = materialize(b, v, g)
            continue
        b.via, b.made = v, set()
        xs = operands(G, v)
        renamed = {}
        for x, gx in zip(xs, OPS[G.nodes[v]["op"]].vjp(b, v, xs, g)):
            if x not in needed:
                continue
            gx = renamed.get(gx, gx)
            if gx in b.made and "wrt" not in b.A.nodes[gx]:
                hint = f"d{x}" if uses[x] == 1 else f"d{x}_{len(contributions[x]) + 1}"
                gx = renamed[gx] = b.rename(gx, hint)
                b.A.nodes[gx]["wrt"] = x
            contributions[x].append(gx)
        b.via = None
    grads = b.A.graph["grads"]
    b.A.graph["grads"] = {p: grads[p] for p in G.nodes if p in grads}  # declaration order
    return b.A


# Terms of one accumulate node. Its pure form is one sum, ``a + b + c ...``, and Python's compiler recurses once
# per ``+`` (a sum of about 3000 terms does not compile), so a wider fan-out is summed in steps.
MAX_TERMS = 64


def accumulate(b: AdjointBuilder, v, parts: list):
    """Fan-out: the adjoint of ``v`` is the sum of what each of its consumers sent back."""
    if len(parts) == 1:
        return parts[0]
    if all(b.const_value(p) is not None for p in parts):
        return b.const(sum(b.const_value(p) for p in parts))
    while len(parts) > MAX_TERMS:  # a wide fan-out: partial sums in a chain, each the first term of the next
        head, parts = parts[:MAX_TERMS], parts[MAX_TERMS:]
        partial = b.fresh(f"d{v}_sum")
        shape = broadcast_shape([b.shape(p) for p in head], {})
        add_node(b.A, partial, "accumulate", head, shape=shape, dtype=b.dtype, attrs={}, via=v, wrt=v)
        parts = [partial, *parts]
    name = b.fresh(f"d{v}")
    shape = broadcast_shape([b.shape(p) for p in parts], {})
    add_node(b.A, name, "accumulate", parts, shape=shape, dtype=b.dtype, attrs={}, via=v, wrt=v)
    return name


def materialize(b: AdjointBuilder, p, g):
    """A param's gradient must be its own array of the param's shape: never a constant, a leaf's array or
    another param's gradient (a caller may change one gradient in place)."""
    data = b.A.nodes[g]
    if data["op"] == "const":
        name = b.fresh(f"d{p}")
        b.A.add_node(name, op="fill", shape=b.shape(p), dtype=b.dtype, via=p, wrt=p,
                     attrs={"value": data["attrs"]["value"], "shape": b.shape(p)})
        return name
    shared = g in b.A.graph["grads"].values()  # already another param's gradient: one array each
    view = data["op"] in OPS and OPS[data["op"]].inline  # a transpose of another array
    if shared or view or data["op"] == "forward" and b.G.nodes[g]["op"] in ("param", "input"):
        name = b.fresh(f"d{p}")
        add_node(b.A, name, "copy", [g], shape=b.shape(p), dtype=b.dtype, attrs={}, via=p, wrt=p)
        return name
    return g


def check_loss(G: nx.DiGraph, loss) -> None:
    if loss is None:
        raise GraphError("no loss given: name the scalar node to minimise")
    if loss not in G:
        raise GraphError(f"the loss {loss!r} is not a node of the graph", node=loss)
    if G.nodes[loss]["op"] == "const":
        raise GraphError(f"the loss {loss!r} is a constant: no param can change it", node=loss)
    if G.nodes[loss]["shape"] != ():
        raise GraphError(f"the loss must be a scalar, but {loss!r} has shape {G.nodes[loss]['shape']}", node=loss)
    upstream = nx.ancestors(G, loss)
    for p in (n for n in G if trainable(G, n)):  # a frozen param may well not matter
        if p not in upstream and p != loss:
            raise GraphError(f"param {p!r} does not affect the loss {loss!r}", node=p)
