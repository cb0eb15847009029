"""The pipeline, stage by stage: Graph -> adjoint graph -> passes -> schedule -> source text."""

from __future__ import annotations

import importlib.util
import os
import stat
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from . import __version__
from .autodiff import adjoint, check_loss
from .codegen import format_source, render
from .errors import GraphcError, GraphError
from .graph import Graph, Tensor, check_dtype, check_fits, check_number, from_networkx
from .passes import optimize
from .schedule import Schedule, schedule

DEFAULT_LR = 1e-3
DEFAULT_ITERATIONS = 100


@dataclass
class CompiledModule:
    """The result of ``graphc.compile``: the generated source and the graphs it came from."""

    name: str
    source: str
    graph: nx.DiGraph  # forward graph
    adjoint: nx.DiGraph  # adjoint graph, after the passes
    schedule: Schedule

    def save(self, path) -> Path:
        """Write the source to ``path`` atomically: a failure leaves an existing file as it was."""
        return write_atomic(path, self.source)

    def load(self):
        """Import the generated module (from a temporary file) and return it."""
        with tempfile.TemporaryDirectory(prefix="graphc-") as tmp:
            path = Path(tmp) / f"{self.name}.py"
            path.write_text(self.source, encoding="utf-8")
            spec = importlib.util.spec_from_file_location(f"graphc_generated_{self.name}_{uuid.uuid4().hex}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        return module


def write_atomic(path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename it over ``path``:
    readers see the old file or the new one, never a part; on any failure the old file is left as it was and
    the temporary file is removed. The new file keeps the old one's permissions (0644 for a new file).
    Never over a spec: ``graphc compile m.toml -o m.toml`` would replace the model with its own module."""
    path = Path(path)
    if path.suffix.lower() in (".toml", ".json"):
        raise GraphcError(f"cannot write to a {path.suffix} file, the kind a spec is: choose another name",
                          file=str(path))
    directory = path.parent
    if not directory.is_dir():
        reason = f"{str(directory)!r} is not a directory" if directory.exists() else \
            f"directory {str(directory)!r} does not exist"
        raise GraphcError(f"cannot write: {reason}", file=str(path))
    if path.is_dir():
        raise GraphcError("cannot write: it is a directory", file=str(path))
    try:
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise GraphcError(f"cannot write: {err.strerror or err}", file=str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise GraphcError(f"cannot write: {err.strerror or err}", file=str(path)) from None
        raise
    return path


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
            G.nodes[v]["dtype"] = dtype
            check_fits(G.nodes[v], v)
    return G


def compile(g, loss, outputs=None, lr=DEFAULT_LR, iterations=DEFAULT_ITERATIONS, dtype=None, *,
            source: str | None = None, command: str | None = None) -> CompiledModule:
    """Compile graph ``g`` into a standalone NumPy module minimising scalar node ``loss`` with SGD.

    ``outputs`` (Tensors or names; default: the loss) are what ``predict`` returns. ``source`` and ``command``
    only go into the module's docstring (the spec file, and the command that regenerates it).
    """
    G = forward_graph(g, dtype)
    loss = None if loss is None else node_name(loss, "the loss", g)
    check_loss(G, loss)
    if outputs is None:
        outputs = [loss]
    elif isinstance(outputs, (Tensor, str)):
        outputs = [outputs]
    outputs = [node_name(o, "an output", g) for o in outputs]
    if not outputs:
        raise GraphError("outputs is empty: name what predict() returns (the default is the loss)")
    for o in outputs:
        if o not in G:
            raise GraphError(f"output {o!r} is not a node of the graph", node=o)
        if G.nodes[o]["op"] == "const":
            raise GraphError(f"output {o!r} is a constant: predict() computes nothing for it", node=o)
    if len(set(outputs)) != len(outputs):
        raise GraphError(f"outputs {outputs} name a node twice")
    if not any(op == "param" for _, op in G.nodes(data="op")):
        raise GraphError("the graph has no params: there is nothing to train")
    lr = check_number(lr, "lr")
    if lr <= 0:
        raise GraphError(f"lr must be positive, got {lr!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise GraphError(f"iterations must be a positive integer, got {iterations!r}")
    A = optimize(adjoint(G, loss))
    sched = schedule(G, A, loss, outputs)
    name = G.graph["name"]
    text = format_source(render(
        sched,
        name=name,
        source=source or f"the graph {name!r} built in Python",
        command=command or "graphc.compile(...) on that graph",
        version=__version__,
        lr=lr,
        iterations=iterations,
    ))
    return CompiledModule(name, text, G, A, sched)
