"""The pipeline, stage by stage: Graph -> adjoint graph -> passes -> schedule -> source text."""

from __future__ import annotations

import importlib.util
import io
import os
import stat
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np

from . import __version__, optim
from .autodiff import adjoint, check_loss
from .codegen import format_source, render
from .errors import GraphcError, GraphError
from .graph import DTYPES, Graph, Tensor, check_dtype, check_fits, dim_names, from_networkx, operands, topo_order
from .passes import optimize
from .schedule import Schedule, schedule

DEFAULT_ITERATIONS = 100


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
        if self.init_values:
            data, npz = npz_bytes(self.init_values), path.with_suffix(".npz")
            if not (npz.is_file() and npz.read_bytes() == data):  # the spec's own params file, say: leave it be
                write_atomic(npz, data)
        return write_atomic(path, self.source)

    def load(self):
        """Import the generated module (from a temporary file) and return it."""
        with tempfile.TemporaryDirectory(prefix="graphc-") as tmp:
            path = self.save(Path(tmp) / f"{self.name}.py")
            spec = importlib.util.spec_from_file_location(f"graphc_generated_{self.name}_{uuid.uuid4().hex}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            if self.init_values:
                module._stored_params()  # read the params file while it is there
        return module


def npz_bytes(arrays: dict) -> bytes:
    """``arrays`` as the bytes of one .npz file (np.savez, in the dict's order)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


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
    G.graph["dims"] = check_dims(G, dims)
    init_values = check_init_values(G, init_values)
    if backend not in BACKENDS:
        raise GraphError(f"unknown backend {backend!r} (graphc has {', '.join(map(repr, BACKENDS))})")
    train = None
    if loss is not None:
        if lr is not None:
            hyperparams["lr"] = lr
        train = training(G, loss, optimizer, hyperparams, iterations, epochs, batch_size)
    elif hyperparams or lr is not None:
        raise GraphError("optimizer settings without a loss: give the loss to train, or leave them out")
    A = optimize(adjoint(G, loss, reserved=G.graph["dims"])) if loss is not None else None
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


BACKENDS = ("numpy", "cupy")


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


def check_count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GraphError(f"{what} must be a positive integer, got {value!r}")
    return value


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
    for d in names:
        if d in G:
            raise GraphError(f"dimension name {d!r} is also a node name: rename one of them", node=d)
    return {d: dims.get(d) for d in names}


def batch_dim(G: nx.DiGraph, loss) -> str | None:
    """The batch dimension: the named dimension that is axis 0 of the inputs of the loss that carry it (and
    nowhere else)."""
    upstream = nx.ancestors(G, loss)
    shapes = [G.nodes[v]["shape"] for v in G if G.nodes[v]["op"] == "input" and v in upstream]
    first = next((s[0] for s in shapes if s and isinstance(s[0], str)), None)
    if first is None or any(first in s[1:] for s in shapes):
        return None
    return first


LOSS_OPS = ("mse", "cross_entropy", "binary_cross_entropy_with_logits")


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
        op, of = data["op"], [kind[u] for u in args]
        per_row = all(k in ("rows", "free") for k in of)
        if free[v]:
            kind[v] = "free"
        elif op in LOSS_OPS:
            kind[v] = data["attrs"]["reduction"] if per_row else None
        elif data["shape"][:1] == (batch,):  # per row, unless it mixes the rows (a softmax along them)
            mixes = "axis" in data["attrs"] and op not in ("sum", "mean") and \
                data["attrs"]["axis"] % len(data["shape"]) == 0
            kind[v] = "rows" if per_row and not mixes else None
        elif op in ("sum", "mean"):  # over the rows (the result has no batch axis), or over the other axes
            kind[v] = op if of[0] == "rows" else of[0] if of[0] in ("mean", "sum") else None
        elif op == "neg" or op == "mul" and "free" in of or op == "div" and of[1] == "free":
            kind[v] = of[0] if of[0] != "free" else of[-1]
            kind[v] = kind[v] if kind[v] in ("mean", "sum") else None
        elif op in ("add", "sub"):
            kinds = set(of)
            kind[v] = "mean" if kinds in ({"mean"}, {"mean", "free"}) else "sum" if kinds == {"sum"} else None
        else:
            kind[v] = None
    return kind[loss] if kind[loss] in ("mean", "sum") else None


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
