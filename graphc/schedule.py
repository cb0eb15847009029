"""Lowering: forward graph + adjoint graph -> the ordered statement lists of each generated function."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from .graph import LEAVES, topo_order
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
        body=[Statement("forward", v) for v in order if v in needed and is_statement(G, v)],
    )


def schedule(G: nx.DiGraph, A: nx.DiGraph, loss: str, outputs: list[str]) -> Schedule:
    order = topo_order(G)
    loss_fn = forward_function(G, order, [loss])
    train = forward_function(G, order, [loss])
    train.body += [Statement("backward", v) for v in topo_order(A) if is_statement(A, v)]
    return Schedule(G, A, loss, outputs, forward_function(G, order, outputs), loss_fn, train)
