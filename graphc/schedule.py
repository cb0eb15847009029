"""Lowering: forward graph + adjoint graph -> the ordered statement lists of each generated function."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .graph import LEAVES, concrete, operands, topo_order
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
    inplace: bool  # its buffer dies here, so it can be scaled by lr in place: no temporary


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


def temporaries(pool: Pool, graph: nx.DiGraph, v, dtype: str, start: int = 0) -> tuple[int, ...]:
    """The buffers of ``v``'s temporaries (Op.scratches, from ``start`` on), each taken for this statement alone."""
    data = graph.nodes[v]
    shapes = [graph.nodes[a]["shape"] for a in operands(graph, v)]
    taken = tuple(pool.take(tuple(sh), dt or dtype, f"scratch for {v}")
                  for sh, dt in OPS[data["op"]].scratches(shapes, data["attrs"])[start:])
    for index in taken:
        pool.give_back(index)
    return taken


def plan_workspace(sched: Schedule) -> Workspace:
    """Assign every non-scalar value of the training step to a buffer; values whose lifetimes do not overlap
    share one (same shape and dtype), and elementwise ops write over an operand that dies at that statement."""
    G, A = sched.G, sched.A
    graphs = {"forward": G, "backward": A}
    body = sched.train.body
    grads = {p: value_of(sched.A, g) for p, g in sched.A.graph["grads"].items()}
    reads = []
    for s in body:
        graph = graphs[s.graph]
        reads.append([value_of(graph, u) for u in operands(graph, s.node)])
    reads += [[g] for g in grads.values()]
    last = {}
    for i, values in enumerate(reads):
        for u in values:
            last[u] = i

    # Some workspace forms compute on the way a value their gradient needs again (Op.keeps): mse the error
    # pred - target, cross_entropy the softmax of the logits. That adjoint node (made by the same forward node's
    # rule, of its first operands) is kept in the buffer the forward statement wrote it to, not computed twice.
    keeps = {}  # forward node -> the adjoint node its workspace form computes
    for e in A:
        v = A.nodes[e].get("via")
        if v in G and G.nodes[v]["op"] in OPS and OPS[G.nodes[v]["op"]].keeps == A.nodes[e]["op"] \
                and operands(A, e) == operands(G, v)[:len(operands(A, e))]:
            keeps[v] = e
    kept = {}  # the kept adjoint node -> the forward statement that computed it

    sizes = G.graph.get("dims", {})
    pool, where, placed, values = Pool(sizes), {}, [], []
    for i, s in enumerate(body):
        graph = graphs[s.graph]
        data = graph.nodes[s.node]
        op = OPS[data["op"]]
        shape, dtype = tuple(data["shape"]), data["dtype"]
        if shape != ():
            values.append(Buffer(shape, dtype, [s.node], sizes))
        if s.node in kept:  # already in its buffer: the forward statement computed it
            out = where[s.node]
            placed.append(Placed(s.graph, s.node, out, None, computed_with=kept[s.node]))
        else:
            out = scratch = None
            if shape != ():
                candidates = reads[i] if op.inplace is True else [reads[i][k] for k in op.inplace or ()]
                if data["op"] == "accumulate":  # a sum is written term by term: only over its first term,
                    candidates = [] if reads[i][0] in reads[i][1:] else reads[i][:1]  # and not if it comes again
                for u in candidates:
                    if u in where and last[u] == i and pool.buffers[where[u]].shape == shape \
                            and pool.buffers[where[u]].dtype == dtype:
                        out = where[u]
                        pool.buffers[out].values.append(s.node)
                        break
                else:
                    out = pool.take(shape, dtype, s.node)
                where[s.node] = out
            args = operands(graph, s.node)
            first = tuple(graph.nodes[args[0]]["shape"]) if args else ()
            if s.node in keeps and first != ():  # its first temporary is the kept value's buffer
                e = keeps[s.node]
                scratch = where[e] = pool.take(tuple(A.nodes[e]["shape"]), dtype, e)
                kept[e] = s.node
                if op.scratches is not None:
                    scratch = (scratch, *temporaries(pool, graph, s.node, dtype, start=1))
            elif op.scratches is not None:
                scratch = temporaries(pool, graph, s.node, dtype)
            elif op.scratch and first != ():
                donor = reads[i][op.scratch_from] if op.scratch_from is not None else None
                if donor in where and last[donor] == i and where[donor] != out \
                        and pool.buffers[where[donor]].shape == first:
                    scratch = where[donor]
                    pool.buffers[scratch].values.append(f"scratch for {s.node}")
                else:
                    scratch = pool.take(first, dtype, f"scratch for {s.node}")
                    pool.give_back(scratch)
            placed.append(Placed(s.graph, s.node, out, scratch))
        for u in dict.fromkeys(reads[i]):  # in operand order, not hash order: the plan must be deterministic
            if u in where and last[u] == i:
                index = where.pop(u)
                if index != out:
                    pool.give_back(index)
        if s.node in where and s.node not in last:  # never read again
            pool.give_back(where.pop(s.node))

    updates = []
    for k, (p, g) in enumerate(grads.items()):
        updates.append(Update(p, g, inplace=g in where and last[g] == len(body) + k))
    return Workspace(pool.buffers, placed, updates, values)
