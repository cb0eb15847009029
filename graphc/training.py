"""How a graph trains: the batch dimension, how the loss combines the batch's rows, and the checked settings of
the optimizer and of ``Trainer.fit`` that codegen needs besides the schedule."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from . import optim
from .errors import GraphError
from .graph import operands, topo_order
from .ops import OPS, REDUCTION, Op

DEFAULT_ITERATIONS = 100


@dataclass(frozen=True)
class Training:
    """How the module trains: what codegen needs besides the schedule."""

    optimizer: str
    hyperparams: dict  # every one, lr included
    batch_dim: str | None
    loss_reduction: str | None  # "mean": the loss is a mean over the batch rows; "sum": a sum; None: neither
    iterations: int
    epochs: int | None
    batch_size: int | None


def training(G: nx.DiGraph, loss, optimizer="sgd", hyperparams=None, iterations=DEFAULT_ITERATIONS, epochs=None,
             batch_size=None) -> Training:
    """How ``G`` trains to minimise ``loss``, every setting checked."""
    batch = batch_dim(G, loss)
    train = Training(optimizer, optim.hyperparams(optimizer, hyperparams or {}), batch,
                     loss_reduction(G, loss, batch), check_count(iterations, "iterations"),
                     None if epochs is None else check_count(epochs, "epochs"),
                     None if batch_size is None else check_count(batch_size, "batch_size"))
    if train.batch_dim is None and (epochs is not None or batch_size is not None):
        what = "batch_size" if batch_size is not None else "epochs"
        raise GraphError(f"{what} needs a batch dimension: a named dimension (e.g. \"N\") as axis 0 of the "
                         "inputs, such as X = [\"N\", 64]")
    return train


def check_count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GraphError(f"{what} must be a positive integer, got {value!r}")
    return value


def batch_dim(G: nx.DiGraph, loss) -> str | None:
    """The batch dimension: the named dimension that is axis 0 of the inputs of the loss that carry it (and
    nowhere else)."""
    upstream = nx.ancestors(G, loss)
    shapes = [G.nodes[v]["shape"] for v in G if G.nodes[v]["op"] == "input" and v in upstream]
    first = next((s[0] for s in shapes if s and isinstance(s[0], str)), None)
    if first is None or any(first in s[1:] for s in shapes):
        return None
    return first


LEAF = Op("input", 0, None)  # what loss_reduction knows of an input, a param or a constant: nothing


def loss_reduction(G: nx.DiGraph, loss, batch: str | None) -> str | None:
    """How the loss combines the batch's rows: "mean" (the batch's loss is the row-weighted mean of its shards'
    losses), "sum" (their sum), or None (neither: shards cannot be combined, e.g. log(mse(...))).

    A loss op or a sum/mean over the batch axis is a sum or a mean; a constant factor, a negation and a sum of
    terms of one kind keep that kind; a term without the batch (a penalty on params) may be added to a mean (the
    shards' weights add up to one) but not to a sum."""
    if batch is None:
        return None
    free = {}  # node -> True when no batched value reaches it
    for v in topo_order(G):
        data = G.nodes[v]
        free[v] = batch not in data["shape"] if data["op"] == "input" else all(free[u] for u in G.predecessors(v))
    kind = {}  # node -> "free", "rows" (one value per row, from that row alone), "mean", "sum" or None
    for v in topo_order(G):
        data, args = G.nodes[v], operands(G, v)
        op, of = OPS.get(data["op"], LEAF), [kind[u] for u in args]
        per_row = all(k in ("rows", "free") for k in of)
        scaled = [i for i in op.linear if all(k == "free" for j, k in enumerate(of) if j != i)]
        if free[v]:
            kind[v] = "free"
        elif op.loss:
            kind[v] = data["attrs"]["reduction"] if per_row else None
        elif data["shape"][:1] == (batch,):  # per row, unless it mixes the rows (a softmax along them)
            mixes = "axis" in data["attrs"] and not op.reduces and data["attrs"]["axis"] % len(data["shape"]) == 0
            kind[v] = "rows" if per_row and not mixes else None
        elif op.reduces:  # over the rows (the result has no batch axis), or over the other axes
            kind[v] = op.reduces if of[0] == "rows" else of[0] if of[0] in REDUCTION else None
        elif scaled:  # a constant factor (a negation, a product or a quotient by values free of the batch)
            kind[v] = of[scaled[0]] if of[scaled[0]] in REDUCTION else None
        elif op.terms:
            kinds = set(of)
            kind[v] = "mean" if kinds in ({"mean"}, {"mean", "free"}) else "sum" if kinds == {"sum"} else None
        else:
            kind[v] = None
    return kind[loss] if kind[loss] in REDUCTION else None
