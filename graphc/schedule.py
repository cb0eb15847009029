"""Lowering: forward graph + adjoint graph -> the ordered statement lists of each generated function."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .graph import LEAVES, concrete, operands, topo_order, trainable_params
from .ops import OPS


@dataclass(frozen=True)
class Statement:
    """``node`` of ``graph`` ("forward" or "backward") computed into a variable of the same name."""

    graph: str
    node: str


@dataclass
class Function:
    inputs: list[str]  # the inputs it takes, in declaration order
    params: list[str]  # the params it reads, in declaration order
    body: list[Statement] = field(default_factory=list)


@dataclass
class Schedule:
    G: nx.DiGraph
    A: nx.DiGraph
    loss: str
    outputs: list[str]
    predict: Function
    loss_fn: Function
    train: Function  # forward, then backward: value_and_grad and Trainer.step
    workspace: "Workspace | None" = None  # Trainer.step's buffer plan


def is_statement(graph: nx.DiGraph, v) -> bool:
    op = graph.nodes[v]["op"]
    return op not in LEAVES and op != "forward" and not OPS[op].inline


def forward_function(G: nx.DiGraph, order: list, roots: list) -> Function:
    needed = set(roots)
    for r in roots:
        needed |= nx.ancestors(G, r)
    return Function(
        inputs=[v for v in G if v in needed and G.nodes[v]["op"] == "input"],
        params=[v for v in G if v in needed and G.nodes[v]["op"] == "param"],
        # an inline view that is itself an output (``transpose(W)``) needs a variable of its own
        body=[Statement("forward", v) for v in order if v in needed and (is_statement(G, v) or v in roots
                                                                         and G.nodes[v]["op"] not in LEAVES)],
    )


def schedule(G: nx.DiGraph, A: nx.DiGraph | None, loss: str | None, outputs: list[str]) -> Schedule:
    """The functions of the module; without a loss (A is None too), only predict: an inference-only module."""
    order = topo_order(G)
    predict = forward_function(G, order, outputs)
    if loss is None:
        return Schedule(G, A, loss, outputs, predict, None, None)
    loss_fn = forward_function(G, order, [loss])
    train = forward_function(G, order, [loss])
    train.body += [Statement("backward", v) for v in topo_order(A) if is_statement(A, v)]
    sched = Schedule(G, A, loss, outputs, predict, loss_fn, train)
    sched.workspace = plan_workspace(sched)
    return sched


# ---- Trainer's workspace: liveness and the buffer plan --------------------------------------------------

@dataclass
class Buffer:
    """One array of Trainer's workspace, allocated once; the values it holds, one after another."""

    shape: tuple
    dtype: str
    values: list[str] = field(default_factory=list)
    sizes: dict = field(default_factory=dict, repr=False)  # named dimensions -> default sizes, for nbytes
    grad: str | None = None  # this param's view of Trainer's flat gradients (not an array of the workspace)

    @property
    def nbytes(self) -> int:
        """Bytes at the default sizes of named dimensions (an error names a dimension without one)."""
        return math.prod(concrete(self.shape, self.sizes)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Placed:
    """A statement of Trainer.step: ``node`` computed into buffer ``out`` (None: a scalar, or no workspace form)."""

    graph: str
    node: str
    out: int | None
    scratch: int | tuple | None  # a temporary buffer (a tuple of them for ops with several: Op.scratches)
    computed_with: str | None = None  # already in ``out``: that earlier statement computed it on the way


@dataclass(frozen=True)
class Update:
    param: str
    grad: str  # the value holding d loss / d param
    direct: bool  # computed straight into the param's view of Trainer's flat gradients (else copied there)


@dataclass
class Workspace:
    buffers: list[Buffer]
    body: list[Placed]
    updates: list[Update]
    values: list[Buffer]  # every non-scalar value of the step, as if each had an array of its own

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    @property
    def intermediates(self) -> int:
        """Bytes, if every non-scalar value had an array of its own."""
        return sum(b.nbytes for b in self.values)


def value_of(graph: nx.DiGraph, v):
    """The variable an operand reads: inline views read their operand; constants read nothing."""
    while True:
        op = graph.nodes[v]["op"]
        if op in ("const", "size"):
            return None
        if op in LEAVES or op == "forward" or not OPS[op].inline:
            return v
        v = operands(graph, v)[0]


class Pool:
    """Buffers of the workspace, handed out by (shape, dtype) and given back when their value dies."""

    def __init__(self, sizes: dict):
        self.sizes = sizes
        self.buffers: list[Buffer] = []
        self.free: dict[tuple, list[int]] = defaultdict(list)

    def take(self, shape, dtype, value: str) -> int:
        free = self.free[shape, dtype]
        if free:
            index = free.pop()
        else:
            index = len(self.buffers)
            self.buffers.append(Buffer(tuple(shape), dtype, sizes=self.sizes))
        self.buffers[index].values.append(value)
        return index

    def give_back(self, index: int) -> None:
        b = self.buffers[index]
        self.free[b.shape, b.dtype].append(index)


def temporaries(pool: Pool, graph: nx.DiGraph, v, dtype: str, skip=()) -> tuple[int, ...]:
    """The buffers of ``v``'s temporaries (Op.scratches, but for the slots in ``skip``), each taken for this
    statement alone."""
    data = graph.nodes[v]
    shapes = [graph.nodes[a]["shape"] for a in operands(graph, v)]
    taken = tuple(pool.take(tuple(sh), dt or dtype, f"scratch for {v}")
                  for k, (sh, dt) in enumerate(OPS[data["op"]].scratches(shapes, data["attrs"])) if k not in skip)
    for index in taken:
        pool.give_back(index)
    return taken


def plan_workspace(sched: Schedule) -> Workspace:
    """Assign every non-scalar value of the training step to a buffer; values whose lifetimes do not overlap
    share one (same shape and dtype), and elementwise ops write over an operand that dies at that statement."""
    plan = Planner(sched)
    placed = [plan.place(i, s) for i, s in enumerate(plan.body)]
    return Workspace(plan.pool.buffers, placed, gradient_views(plan), plan.values)


def gradient_views(plan: "Planner") -> list[Update]:
    """Trainer keeps the gradients in one flat array (templates/module.py.j2): the buffer holding a trainable
    param's gradient at the end of the step becomes that param's view of it, so the statement computing the
    gradient writes straight into it. A gradient held elsewhere (an input, a view, a value two params share, a
    scalar) is copied into its view after the backward."""
    updates, claimed = [], set()
    dtype = plan.G.graph["dtype"]
    for p in trainable_params(plan.G):
        g = plan.grads[p]
        index = plan.where.get(g)
        b = plan.pool.buffers[index] if index is not None else None
        direct = (b is not None and index not in claimed and b.dtype == dtype
                  and b.shape == tuple(plan.G.nodes[p]["shape"]))
        if direct:
            claimed.add(index)
            b.grad = p
        updates.append(Update(p, g, direct))
    return updates


class Planner:
    """plan_workspace's state as it walks the training step: which buffer holds each live value, and when each
    value is read for the last time."""

    def __init__(self, sched: Schedule):
        self.G, self.A = sched.G, sched.A
        self.graphs = {"forward": sched.G, "backward": sched.A}
        self.body = sched.train.body
        self.grads = {p: value_of(sched.A, g) for p, g in sched.A.graph["grads"].items()}
        self.reads = []  # per statement, the values it reads; then each gradient, read by the update
        for s in self.body:
            graph = self.graphs[s.graph]
            self.reads.append([value_of(graph, u) for u in operands(graph, s.node)])
        self.reads += [[g] for g in self.grads.values()]
        self.last = {}  # value -> the index of its last reader
        for i, values in enumerate(self.reads):
            for u in values:
                self.last[u] = i
        self.keeps = kept_values(self.G, self.A)  # forward node -> the adjoint node its workspace form computes
        self.kept = {}  # the kept adjoint node -> the forward statement that computed it
        self.sizes = self.G.graph.get("dims", {})
        self.pool, self.where, self.values = Pool(self.sizes), {}, []

    def place(self, i: int, s) -> Placed:
        graph = self.graphs[s.graph]
        data = graph.nodes[s.node]
        shape, dtype = tuple(data["shape"]), data["dtype"]
        if shape != ():
            self.values.append(Buffer(shape, dtype, [s.node], self.sizes))
        if s.node in self.kept:  # already in its buffer: the forward statement computed it
            out = self.where[s.node]
            placed = Placed(s.graph, s.node, out, None, computed_with=self.kept[s.node])
        else:
            out = self.output(i, s.node, data) if shape != () else None
            placed = Placed(s.graph, s.node, out, self.scratch(i, graph, s.node, out))
        self.release(i, s.node, out)
        return placed

    def dies_here(self, u, i: int) -> bool:
        return u in self.where and self.last[u] == i

    def output(self, i: int, v, data) -> int:
        """The buffer ``v`` is written to: that of an operand that dies here, where the op may write over it."""
        op, reads = OPS[data["op"]], self.reads[i]
        shape, dtype = tuple(data["shape"]), data["dtype"]
        candidates = reads if op.inplace is True else [reads[k] for k in op.inplace or ()]
        if data["op"] == "accumulate":  # a sum is written term by term: only over its first term,
            candidates = [] if reads[0] in reads[1:] else reads[:1]  # and not if it comes again
        for u in candidates:
            buffer = self.pool.buffers[self.where[u]] if self.dies_here(u, i) else None
            if buffer is not None and buffer.shape == shape and buffer.dtype == dtype:
                out = self.where[u]
                buffer.values.append(v)
                break
        else:
            out = self.pool.take(shape, dtype, v)
        self.where[v] = out
        return out

    def scratch(self, i: int, graph, v, out):
        """The op's temporaries: the kept values' buffers first (Op.keeps), several (Op.scratches), or one shaped
        like its first operand (Op.scratch), which may be the buffer of an operand that dies here."""
        op, dtype = OPS[graph.nodes[v]["op"]], graph.nodes[v]["dtype"]
        args = operands(graph, v)
        first = tuple(graph.nodes[args[0]]["shape"]) if args else ()
        if v in self.keeps and first != ():  # its first temporaries are the kept values' buffers
            kept = [None if e is None else self.keep(e, v) for e in self.keeps[v]]
            if op.scratches is None:
                return kept[0]
            taken = {k for k, b in enumerate(kept) if b is not None}
            rest = iter(temporaries(self.pool, graph, v, dtype, skip=taken))
            return tuple(next(rest) if b is None else b for b in kept) + tuple(rest)
        scalar = first == () and tuple(graph.nodes[v]["shape"]) == ()  # of a scalar, to a scalar: no buffer
        if op.scratches is not None and not scalar:  # (a scalar's op takes its pure form)
            return temporaries(self.pool, graph, v, dtype)
        if not op.scratch or first == ():
            return None
        donor = self.reads[i][op.scratch_from] if op.scratch_from is not None else None
        if self.dies_here(donor, i) and self.where[donor] != out and self.pool.buffers[self.where[donor]].shape == first:
            self.pool.buffers[self.where[donor]].values.append(f"scratch for {v}")
            return self.where[donor]
        scratch = self.pool.take(first, dtype, f"scratch for {v}")
        self.pool.give_back(scratch)
        return scratch

    def keep(self, e, v) -> int:
        """A buffer for the adjoint node ``e``, which the forward statement ``v`` computes on the way (Op.keeps)."""
        self.where[e] = self.pool.take(tuple(self.A.nodes[e]["shape"]), self.A.nodes[e]["dtype"], e)
        self.kept[e] = v
        return self.where[e]

    def release(self, i: int, v, out) -> None:
        """The buffers of the values last read here, and of ``v`` if nothing reads it, go back to the pool."""
        for u in dict.fromkeys(self.reads[i]):  # in operand order, not hash order: the plan must be deterministic
            if self.dies_here(u, i):
                index = self.where.pop(u)
                if index != out:
                    self.pool.give_back(index)
        if v in self.where and v not in self.last:  # never read again
            self.pool.give_back(self.where.pop(v))


def kept_values(G: nx.DiGraph, A: nx.DiGraph) -> dict:
    """Some workspace forms compute on the way values their gradient needs again (Op.keeps): mse the error
    pred - target, cross_entropy the softmax of the logits, layer_norm x_hat and 1 / sqrt(var + eps). Such an
    adjoint node (made by the same forward node's rule, of its first operands) is kept in the buffer the forward
    statement wrote it to, not computed twice. Returns forward node -> its kept adjoint nodes, one per op of
    Op.keeps (None for one its rule did not make)."""
    keeps = {}
    for e in A:
        v = A.nodes[e].get("via")
        if v in G and G.nodes[v]["op"] in OPS and A.nodes[e]["op"] in OPS[G.nodes[v]["op"]].kept \
                and [value_of(A, u) for u in operands(A, e)] == [value_of(G, u) for u in operands(G, v)][
                    :len(operands(A, e))]:  # the same values, seen through the same views
            kept = OPS[G.nodes[v]["op"]].kept
            slots = keeps.setdefault(v, [None] * len(kept))
            slots[kept.index(A.nodes[e]["op"])] = e
    return {v: tuple(slots) for v, slots in keeps.items()}
