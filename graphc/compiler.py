"""The pipeline, stage by stage: Graph -> adjoint graph -> passes -> schedule -> source text."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np

from ._version import __version__
from .autodiff import adjoint, check_loss
from .backends import BACKENDS
from .codegen import format_source, render
from .errors import GraphcError, GraphError
from .files import check_spec_suffix, holds, load_module, npz_bytes, same_file, write_atomic, write_together
from .graph import (
    DTYPES, Graph, Tensor, check_dims, check_dtype, check_fits, from_networkx, operands, trainable, trainable_params,
)
from .ops import OPS
from .passes import optimize
from .schedule import Schedule, schedule
from .training import DEFAULT_ITERATIONS, Training, training

@dataclass
class CompiledModule:
    """The result of ``graphc.compile``: the generated source and the graphs it came from."""

    name: str
    source: str
    graph: nx.DiGraph  # forward graph
    adjoint: nx.DiGraph  # adjoint graph, after the passes
    schedule: Schedule
    init_values: dict = field(default_factory=dict)  # the params whose init is "file": the module's .npz
    training: "Training | None" = None  # None: an inference-only module

    def save(self, path) -> Path:
        """Write the source to ``path`` atomically, and the params file beside it (``path`` with .npz) when some
        param's init is "file": a failure leaves existing files as they were."""
        path = Path(path)
        if not self.init_values:
            return write_atomic(path, self.source)
        data, npz = npz_bytes(self.init_values), path.with_suffix(".npz")
        if same_file(npz, path):
            raise GraphcError(f"the module and its params file would both be {str(path)!r}: give the module a name "
                              "ending in .py", file=str(path))
        check_spec_suffix(path)
        write_together({path: self.source} if holds(npz, data) else {npz: data, path: self.source})
        return path

    def load(self):
        """Import the generated module (from a temporary file) and return it."""
        with tempfile.TemporaryDirectory(prefix="graphc-") as tmp:  # (a name the file system takes)
            module = load_module(self.save(Path(tmp) / f"{self.name[:64]}.py"))
            if self.init_values:
                module._stored_params()  # read the params file while it is there
        return module


def node_name(x, what: str, g=None) -> str:
    if isinstance(x, Tensor):
        if isinstance(g, Graph) and x.graph is not g:
            raise GraphError(f"{what} {x.name!r} is a node of another graph", node=x.name)
        return x.name
    if isinstance(x, str):
        return x
    raise GraphError(f"{what} must be a Tensor or a node name, got {x!r}")


def forward_graph(g, dtype=None) -> nx.DiGraph:
    """The validated forward graph, converted to ``dtype`` if given (a copy: the user's graph is untouched)."""
    if isinstance(g, nx.DiGraph):
        g = from_networkx(g)
    if not isinstance(g, Graph):
        raise GraphError(f"compile needs a graphc.Graph or a networkx.DiGraph, got {type(g).__name__}")
    if g.nx.number_of_nodes() == 0:
        raise GraphError("the graph is empty")
    G = g.nx.copy()
    G.graph["dtype"] = check_dtype(dtype or g.dtype)
    if dtype is not None:
        for v in G:
            if G.nodes[v]["dtype"] in DTYPES:  # integer inputs stay integer
                G.nodes[v]["dtype"] = dtype
                check_fits(G.nodes[v], v)
    return G


def compile(g, loss=None, outputs=None, lr=None, iterations=DEFAULT_ITERATIONS, dtype=None, *,
            optimizer: str = "sgd", dims: dict | None = None, epochs: int | None = None,
            batch_size: int | None = None, init_values: dict | None = None, backend: str = "numpy",
            source: str | None = None, command: str | None = None, **hyperparams) -> CompiledModule:
    """Compile graph ``g`` into a standalone NumPy module that minimises scalar node ``loss``.

    ``outputs`` (Tensors or names; default: the loss) are what ``predict`` returns; without a ``loss`` the module
    is inference-only (``predict``, ``init_params``, params I/O). ``optimizer`` is a row of graphc.optim.OPTIMIZERS
    and ``lr`` and ``hyperparams`` its hyperparameters (torch.optim's defaults for the rest). ``dims`` gives named
    dimensions their default sizes; ``epochs`` and ``batch_size`` are ``Trainer.fit``'s defaults (minibatches
    along the batch dimension). ``init_values`` holds the arrays of the params whose init is "file".
    ``source`` and ``command`` only go into the module's docstring.
    """
    G = forward_graph(g, dtype)
    loss = None if loss is None else node_name(loss, "the loss", g)
    if loss is not None:
        check_loss(G, loss)
    outputs = check_outputs(G, g, loss, outputs)
    if loss is not None and not any(op == "param" for _, op in G.nodes(data="op")):
        raise GraphError("the graph has no params: there is nothing to train")
    if loss is not None and not trainable_params(G):
        raise GraphError("every param is trainable = false: there is nothing to train")
    G.graph["dims"] = check_dims(G, dims)
    check_running_stats(G)
    init_values = check_init_values(G, init_values)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise GraphError(f"unknown backend {backend!r} (graphc has {', '.join(map(repr, BACKENDS))})")
    train = None
    if loss is not None:
        if lr is not None:
            hyperparams["lr"] = lr
        train = training(G, loss, optimizer, hyperparams, iterations, epochs, batch_size)
    elif hyperparams or lr is not None:
        raise GraphError("optimizer settings without a loss: give the loss to train, or leave them out")
    A = optimize(adjoint(G, loss, reserved=G.graph["dims"])) if loss is not None else None
    check_backend(G, A, backend)
    sched = schedule(G, A, loss, outputs)
    name = G.graph["name"]
    text = format_source(render(
        sched,
        name=name,
        source=source or f"the graph {name!r} built in Python",
        command=command or "graphc.compile(...) on that graph",
        version=__version__,
        train=train,
        backend=backend,
    ))
    return CompiledModule(name, text, G, A, sched, init_values, train)


def check_backend(G: nx.DiGraph, A: nx.DiGraph | None, backend: str) -> None:
    """Every op of the forward and the adjoint graph has templates for ``backend`` (Op.backends); one that has
    none is one line naming it and its forward node."""
    for graph in (G, A):
        for v, op in (graph.nodes(data="op") if graph is not None else ()):
            if op in OPS and backend not in OPS[op].backends:
                node = graph.nodes[v].get("via", v)  # a gradient's: the forward node whose rule built it
                raise GraphError(f"{G.nodes[node]['op']} has no {backend} template yet: compile this graph for the "
                                 "numpy backend", node=node)


def check_running_stats(G: nx.DiGraph) -> None:
    """An op that updates running statistics (Op.running: batch_norm's running_mean and running_var, its last two
    operands) needs them to be params with trainable = false: one line naming the node if not."""
    for v, op in G.nodes(data="op"):
        if op in OPS and OPS[op].running:
            for what, u in zip(("running_mean", "running_var"), operands(G, v)[-2:]):
                if G.nodes[u]["op"] != "param" or trainable(G, u):
                    raise GraphError(f"{op}'s {what} {u!r} must be a param with trainable = false (Trainer.step "
                                     "updates it in place, the optimizer must not)", node=v)


def check_outputs(G: nx.DiGraph, g, loss, outputs) -> list[str]:
    if outputs is None:
        if loss is None:
            raise GraphError("no loss and no outputs: give the loss to train, or the outputs predict() returns")
        outputs = [loss]
    elif isinstance(outputs, (Tensor, str)):
        outputs = [outputs]
    outputs = [node_name(o, "an output", g) for o in outputs]
    if not outputs:
        raise GraphError("outputs is empty: name what predict() returns (the default is the loss)")
    for o in outputs:
        if o not in G:
            raise GraphError(f"output {o!r} is not a node of the graph", node=o)
        if G.nodes[o]["op"] in ("const", "input"):
            raise GraphError(f"output {o!r} is {'a constant' if G.nodes[o]['op'] == 'const' else 'an input'}: "
                             "predict() computes nothing for it", node=o)
    if len(set(outputs)) != len(outputs):
        raise GraphError(f"outputs {outputs} name a node twice")
    return outputs


def check_init_values(G: nx.DiGraph, values: dict | None) -> dict:
    """The arrays of the params whose init is "file", checked against their shapes and cast to their dtype."""
    values = dict(values or {})
    wanted = [v for v in G if G.nodes[v]["op"] == "param" and G.nodes[v]["init"] == "file"]
    out = {}
    for p in wanted:
        if p not in values:
            raise GraphError(f"param {p!r} has init = \"file\" but the params file has no array {p!r}", node=p)
        value = np.asarray(values[p])
        shape, dtype = G.nodes[p]["shape"], G.nodes[p]["dtype"]
        if value.shape != shape or not np.issubdtype(value.dtype, np.floating):
            raise GraphError(f"the params file's {p!r} has shape {value.shape} {value.dtype}, but the param is "
                             f"{shape} {dtype}", node=p)
        if not np.all(np.isfinite(value)):
            raise GraphError(f"the params file's {p!r} is not finite everywhere", node=p)
        out[p] = value.astype(dtype)
    return out
