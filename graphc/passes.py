"""Graph -> graph rewrites on the adjoint graph. Each pass returns a new graph and leaves its input alone."""

from __future__ import annotations

import networkx as nx

from .graph import operands, topo_order


def eliminate_common_subexpressions(A: nx.DiGraph) -> nx.DiGraph:
    """Merge nodes computing the same op of the same operands with the same attrs; the first one stays.
    Two params' gradients are never merged: each param keeps an array of its own."""
    A = A.copy()
    grads = dict(A.graph["grads"])
    param_of = {g: p for p, g in grads.items()}
    seen = {}
    for v in topo_order(A):
        data = A.nodes[v]
        if data["op"] == "forward":
            continue
        key = (data["op"], tuple(operands(A, v)), repr(sorted(data["attrs"].items())))
        first = seen.setdefault(key, v)
        if first == v or (v in param_of and first in param_of):
            continue
        for _, w, edge in list(A.out_edges(v, data=True)):
            if A.has_edge(first, w):
                A.edges[first, w]["arg"] = sorted(A.edges[first, w]["arg"] + edge["arg"])
            else:
                A.add_edge(first, w, arg=list(edge["arg"]))
        if v in param_of:
            grads[param_of[v]] = first
            param_of[first] = param_of.pop(v)
        A.remove_node(v)
    A.graph["grads"] = grads
    return A


def prune_dead(A: nx.DiGraph) -> nx.DiGraph:
    """Keep only the nodes some param gradient needs."""
    live = set(A.graph["grads"].values())
    for v in reversed(topo_order(A)):
        if v not in live and any(w in live for w in A.successors(v)):
            live.add(v)
    return A.subgraph([v for v in A if v in live]).copy()


def optimize(A: nx.DiGraph) -> nx.DiGraph:
    return prune_dead(eliminate_common_subexpressions(prune_dead(A)))
