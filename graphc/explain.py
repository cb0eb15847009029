"""Looking at a compiled graph: ``graphc show`` (equations, JSON, DOT, pictures, saved values) and ``graphc check``.

Everything here reads a ``CompiledModule`` (the forward graph, the adjoint graph after the passes and the
schedule) and writes text; nothing changes what graphc generates. The equations use the same NumPy expressions
as the generated code (``codegen.Renderer``), so what ``show`` prints is what the module runs.

A *view* is one way to look at a compiled spec (the forward graph, the training step, the saved values, ...);
each view maps the output formats it supports to a function ``CompiledModule -> str``. Adding a view (a flag of
``graphc show``) means adding one entry to ``VIEWS``.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import networkx as nx
import numpy as np

from . import optim
from .codegen import Renderer, compiler_name, compiler_names
from .errors import CommandError, GraphcError
from .files import write_atomic
from .graph import concrete, operands, topo_order, trainable_params
from .schedule import is_statement, value_of


INSTALL_DOT = ("Graphviz's dot is not installed (Debian/Ubuntu: apt-get install graphviz; "
               "macOS: brew install graphviz; pip cannot install it)")


def fmt_shape(shape) -> str:
    """``[32,200]``; a scalar is ``[]``."""
    return "[" + ",".join(str(d) for d in shape) + "]"


# ---- the lines of a view: one per computed value, as the generated code computes it --------------------------

@dataclass
class Line:
    """``name[shape] = expr  # note``: one statement of the forward or the backward pass."""

    graph: str  # "forward" or "backward"
    name: str
    shape: tuple
    expr: str
    reads: list = field(default_factory=list)  # the variables the expression reads (no constants, no views)
    note: str = ""
    grad_of: str | None = None  # the param whose gradient this is, when value_and_grad returns it


class Lines:
    """Turns nodes of the forward graph and the adjoint graph of ``module`` into ``Line``s."""

    def __init__(self, module):
        self.G, self.A = module.graph, module.adjoint  # no adjoint graph without a loss: the forward lines only
        self.loss = self.A.graph["loss"] if self.A is not None else None
        self.graphs = {"forward": self.G, "backward": self.A}
        names = compiler_names(set(self.G) | set(self.A or ()))
        self.render = Renderer(self.G, self.A, names["np"])
        self.render.mode = {"train": "True", "rng": names["rng"]}  # a training step's equations (Op.modes)

    def reads(self, key: str, v) -> list:
        """The variables node ``v`` reads: its operands, looking through inline views (``h.T``) and constants."""
        graph = self.graphs[key]
        return [u for u in dict.fromkeys(value_of(graph, w) for w in operands(graph, v)) if u is not None]

    def line(self, key: str, v) -> Line:
        data = self.graphs[key].nodes[v]
        wrt = data.get("wrt") if key == "backward" else None
        grad_of = wrt if wrt is not None and self.A.graph["grads"].get(wrt) == v else None
        return Line(key, v, tuple(data["shape"]), self.render.expr(key, v), self.reads(key, v), self.note(key, v),
                    grad_of)

    def note(self, key: str, v) -> str:
        """What a statement is: the loss, or the comment a backward statement carries in the generated code."""
        if key == "forward":
            return "the loss" if v == self.loss else ""
        return self.render.note(v)

    def forward(self, nodes) -> list[Line]:
        return [self.line("forward", v) for v in nodes if is_statement(self.G, v)]

    def backward(self) -> list[Line]:
        """The adjoint graph's statements in execution order, then one line per param whose gradient is an
        existing value (``dy[] = f_add_2``), so that every param's gradient has a line of its own."""
        lines = [self.line("backward", v) for v in topo_order(self.A) if is_statement(self.A, v)]
        taken, has_line = set(self.G) | set(self.A), {ln.grad_of for ln in lines}
        for p, g in self.A.graph["grads"].items():
            if p in has_line:
                continue
            name = compiler_name(f"d{p}", taken)
            taken.add(name)
            what = "the forward value" if self.A.nodes[g]["op"] == "forward" else "the gradient"
            lines.append(Line("backward", name, tuple(self.G.nodes[p]["shape"]), g, [g],
                              f"d {self.loss} / d {p} is {what} {g} itself (no new array)", p))
        return lines

    def leaves(self, nodes, op: str) -> list:
        return [v for v in nodes if self.G.nodes[v]["op"] == op]


def aligned(lines: list[Line], limit: int = 44) -> list[str]:
    """``name[shape] = expr`` with the notes lined up in one column (lines longer than ``limit`` push theirs)."""
    left = [f"{ln.name}{fmt_shape(ln.shape)} = {ln.expr}" for ln in lines]
    column = min(max((len(t) for t, ln in zip(left, lines) if ln.note), default=0), limit)
    return [f"{t.ljust(column)}  # {ln.note}" if ln.note else t for t, ln in zip(left, lines)]


def leaf_list(G, names) -> str:
    return ", ".join(f"{v}{fmt_shape(G.nodes[v]['shape'])}" for v in names) or "none"


def columns(rows: list[tuple], right=()) -> list[str]:
    """Rows of cells as aligned text; the columns in ``right`` (numbers) are right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


# ---- text ----------------------------------------------------------------------------------------------------

def forward_text(module) -> str:
    """The forward graph as equations in execution order, every node of it."""
    ls = Lines(module)
    G, order = ls.G, topo_order(ls.G)
    outputs = module.schedule.outputs
    lines = ls.forward(order)
    for ln in lines:
        if ln.name in outputs and ln.name != ls.loss:
            ln.note = "an output (predict returns it)"
    params = [f"{p}{fmt_shape(G.nodes[p]['shape'])} {init_text(G.nodes[p])}" for p in ls.leaves(order, "param")]
    return "\n".join([
        f"# {module.name}: the forward graph, in execution order ({G.graph['dtype']})",
        f"# loss: {ls.loss or 'none'}; outputs: {', '.join(outputs) or 'none'}; shapes in [ ] ([] is a scalar)",
        f"# inputs: {leaf_list(G, ls.leaves(order, 'input'))}",
        f"# params: {', '.join(params) or 'none'}",
        *aligned(lines),
    ]) + "\n"


def init_text(data) -> str:
    init = data["init"]
    text = init if isinstance(init, str) else f"fill {init!r}"
    text = f"{text} * {data['scale']!r}" if data.get("scale") is not None else text
    return text if data.get("trainable", True) else f"{text}, frozen (trainable = false)"


def backward_text(module) -> str:
    """One training step as ``value_and_grad`` runs it: the forward statements, then the adjoint graph's."""
    ls = Lines(module)
    G, A, train = ls.G, ls.A, module.schedule.train
    forward = ls.forward(s.node for s in train.body if s.graph == "forward")
    backward = ls.backward()
    saved = saved_values(module)
    grads = ", ".join(f"{p!r}: {next(ln.name for ln in backward if ln.grad_of == p)}" for p in A.graph["grads"])
    return "\n".join([
        f"# {module.name}: one training step (value_and_grad), forward then backward, in execution order",
        f"# loss: {ls.loss}; inputs: {leaf_list(G, train.inputs)}; params: {leaf_list(G, train.params)}",
        f"# shapes in [ ] ([] is a scalar); dV is the gradient d {ls.loss} / d V; "
        f"each line is NumPy, as in the generated code",
        "",
        "# forward",
        *aligned(forward),
        "",
        f"# backward: the adjoint graph; it reads {', '.join(s.name for s in saved)} from the forward pass"
        if saved else "# backward: the adjoint graph",
        *aligned(backward),
        "",
        f"# value_and_grad returns ({ls.loss}, {{{grads}}})",
    ]) + "\n"


# ---- saved values: what the backward reads from the forward --------------------------------------------------

@dataclass
class Saved:
    name: str
    kind: str  # "input", "param" or "activation" (computed by the forward pass)
    shape: tuple
    dtype: str
    bytes: int


def saved_values(module) -> list[Saved]:
    """Every forward value the backward pass reads, in forward execution order."""
    G, A = module.graph, module.adjoint
    out = []
    for v in topo_order(G):
        if v in A and A.nodes[v]["op"] == "forward":
            data = G.nodes[v]
            kind = data["op"] if data["op"] in ("input", "param") else "activation"
            size = math.prod(concrete(data["shape"], G.graph.get("dims", {}), f" of {v!r}"))
            nbytes = size * np.dtype(data["dtype"]).itemsize
            out.append(Saved(v, kind, tuple(data["shape"]), data["dtype"], nbytes))
    return out


def nbytes(n: int) -> str:
    """``97920 bytes (95.6 KiB)``."""
    size, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n} bytes" + (f" ({size:.1f} {unit})" if unit != "bytes" else "")


def saved_text(module) -> str:
    saved = saved_values(module)
    rows = [("name", "kind", "shape", "dtype", "bytes")]
    rows += [(s.name, s.kind, fmt_shape(s.shape), s.dtype, str(s.bytes)) for s in saved]
    acts = [s for s in saved if s.kind == "activation"]
    total, act_total = sum(s.bytes for s in saved), sum(s.bytes for s in acts)
    return "\n".join([
        f"# {module.name}: the forward values the backward pass reads (value_and_grad and Trainer.step keep",
        "# them alive from the forward pass to the backward pass)",
        *columns(rows, right={4}),
        f"total: {len(saved)} values, {nbytes(total)}",
        f"activations (computed by the forward pass, kept only for the backward): "
        f"{', '.join(s.name for s in acts) or 'none'}: {nbytes(act_total)}",
    ]) + "\n"


def saved_json(module) -> str:
    saved = saved_values(module)
    return dumps({
        "values": [{**s.__dict__, "shape": list(s.shape)} for s in saved],
        "total_bytes": sum(s.bytes for s in saved),
        "activation_bytes": sum(s.bytes for s in saved if s.kind == "activation"),
    })


# ---- memory: Trainer.step's buffer plan ---------------------------------------------------------------------

def memory_text(module) -> str:
    ws = module.schedule.workspace
    rows = [("buffer", "shape", "dtype", "bytes", "holds, one after another")]
    rows += [(f"_buf{i}", fmt_shape(b.shape), b.dtype, str(b.nbytes), ", ".join(b.values))
             for i, b in enumerate(ws.buffers)]
    saved = 1 - ws.nbytes / ws.intermediates if ws.intermediates else 0.0
    sizes = ", ".join(f"{d}={n}" for d, n in module.graph.graph.get("dims", {}).items())
    opt = optim.OPTIMIZERS[module.training.optimizer]
    G = module.graph
    flat = sum(math.prod(G.nodes[p]["shape"]) * np.dtype(G.nodes[p]["dtype"]).itemsize for p in trainable_params(G))
    state, scratch = len(opt.state) * flat, opt.scratch * flat
    return "\n".join([
        f"# {module.name}: Trainer.step's workspace{f' at {sizes}' if sizes else ''}, allocated by the first step "
        "at these sizes; values whose",
        "# lifetimes do not overlap share a buffer, elementwise ops write over an operand that dies there",
        *columns(rows, right={3}),
        f"workspace: {len(ws.buffers)} buffers, {nbytes(ws.nbytes)}",
        f"every intermediate in an array of its own: {nbytes(ws.intermediates)} (the plan saves {saved:.0%})",
        f"update: {opt.title}, in place, with its state ({', '.join(opt.state)}) of every param, "
        f"{nbytes(state)}, and {opt.scratch} flat temporaries, {nbytes(scratch)}",
        "flat storage: the trainable params, their gradients (the buffers holding a d ... / d param are their "
        "views) and each state array are one array per kind",
    ]) + "\n"


def memory_json(module) -> str:
    ws = module.schedule.workspace
    return dumps({
        "buffers": [{"name": f"_buf{i}", "shape": list(b.shape), "dtype": b.dtype, "bytes": b.nbytes,
                     "holds": b.values} for i, b in enumerate(ws.buffers)],
        "workspace_bytes": ws.nbytes,
        "intermediate_bytes": ws.intermediates,
    })


# ---- JSON: networkx node-link data ---------------------------------------------------------------------------

def dumps(data) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def node_link_json(G: nx.DiGraph) -> str:
    """``networkx.node_link_data(G, edges="edges")`` as JSON: ``networkx.node_link_graph(data, edges="edges")``
    reads it back (tuples come back as lists)."""
    return dumps(nx.node_link_data(G, edges="edges"))


# ---- DOT -----------------------------------------------------------------------------------------------------

STYLE = {  # Graphviz node attributes per kind of node
    "input": 'shape=box, style="filled", fillcolor="#e5e7eb", color="#4b5563"',
    "param": 'shape=box, style="filled", fillcolor="#dcfce7", color="#15803d"',
    "forward": 'shape=box, style="rounded,filled", fillcolor="#dbeafe", color="#1d4ed8"',
    "loss": 'shape=box, style="rounded,filled,bold", fillcolor="#bfdbfe", color="#1d4ed8", peripheries=2',
    "backward": 'shape=box, style="rounded,filled", fillcolor="#ffedd5", color="#c2410c"',
    "grad": 'shape=box, style="rounded,filled,bold", fillcolor="#fed7aa", color="#c2410c", peripheries=2',
}
EDGE = {"forward": 'color="#1d4ed8"', "backward": 'color="#c2410c"', "saved": 'color="#6b7280", style=dashed'}


def quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot(module, backward: bool) -> str:
    """Graphviz DOT: leaves, then one node per statement, in a forward and (if ``backward``) a backward cluster;
    every edge is labelled with the shape of the value it carries."""
    ls = Lines(module)
    G = ls.G
    if backward:
        nodes = [s.node for s in module.schedule.train.body if s.graph == "forward"]
        leaves = [*module.schedule.train.inputs, *module.schedule.train.params]
        backward_lines = ls.backward()
    else:
        nodes = topo_order(G)
        leaves = [v for v in nodes if G.nodes[v]["op"] in ("input", "param")]
        backward_lines = []
    forward_lines = ls.forward(nodes)
    shapes = {v: G.nodes[v]["shape"] for v in G}
    shapes.update({ln.name: ln.shape for ln in backward_lines})

    out = [f"digraph {quote(module.name + ('_backward' if backward else '_forward'))} {{",
           '  graph [fontname="Helvetica", fontsize=11, labelloc=b, nodesep=0.3, ranksep=0.35, '
           f"label={quote(legend(backward))}];",
           '  node [fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=8, fontcolor="#374151"];',
           '  subgraph cluster_forward {',
           '    label="forward"; color="#93c5fd"; fontcolor="#1d4ed8";']
    for v in leaves:
        data = G.nodes[v]
        label = f"{v} {fmt_shape(data['shape'])}\n{data['op']}{'' if data.get('trainable', True) else ' (frozen)'}"
        out.append(f"    {quote(v)} [label={quote(label)}, {STYLE[data['op']]}];")
    for ln in forward_lines:
        kind = "loss" if ln.name == ls.loss else "forward"
        out.append(f"    {quote(ln.name)} [label={quote(node_label(ln))}, {STYLE[kind]}];")
    out.append("  }")
    if backward_lines:
        out += ['  subgraph cluster_backward {', '    label="backward"; color="#fdba74"; fontcolor="#c2410c";']
        for ln in backward_lines:
            kind = "grad" if ln.grad_of else "backward"
            out.append(f"    {quote(ln.name)} [label={quote(node_label(ln))}, {STYLE[kind]}];")
        out.append("  }")
    for ln in forward_lines + backward_lines:
        for u in ln.reads:
            kind = "forward" if ln.graph == "forward" else ("saved" if u in G else "backward")
            out.append(f"  {quote(u)} -> {quote(ln.name)} [label={quote(fmt_shape(shapes[u]))}, {EDGE[kind]}];")
    out.append("}")
    return "\n".join(out) + "\n"


def node_label(ln: Line) -> str:
    return f"{ln.name} {fmt_shape(ln.shape)}\n{ln.expr}"


def legend(backward: bool) -> str:
    if not backward:
        return "forward graph; double border: the loss; edges carry values of the shape on them"
    return ("forward pass (blue), backward pass (orange); double border: the loss and each param's gradient\n"
            "dashed: forward values the backward reads; edges carry values of the shape on them")


# ---- the views of `graphc show` ------------------------------------------------------------------------------

@dataclass(frozen=True)
class View:
    flag: str | None  # the option of `graphc show` that picks the view (None: the default)
    help: str
    formats: dict[str, Callable]  # format -> function(CompiledModule) -> str


VIEWS = {
    "forward": View(None, "the forward graph (the default)", {
        "text": forward_text,
        "json": lambda module: node_link_json(module.graph),
        "dot": lambda module: dot(module, backward=False),
    }),
    "backward": View("--backward", "one training step: the forward statements, then the backward pass (the "
                                   "adjoint graph); in JSON, the adjoint graph alone", {
        "text": backward_text,
        "json": lambda module: node_link_json(module.adjoint),
        "dot": lambda module: dot(module, backward=True),
    }),
    "saved": View("--saved", "the forward values the backward pass reads, their bytes and the total", {
        "text": saved_text,
        "json": saved_json,
    }),
    "memory": View("--memory", "Trainer.step's buffer plan: each buffer, its size, the values sharing it, and "
                               "the workspace total against the sum of all intermediates", {
        "text": memory_text,
        "json": memory_json,
    }),
}
IMAGES = ("svg", "png")  # rendered from the view's DOT by Graphviz
FORMATS = ("text", "json", "dot", *IMAGES)


def view_flag(view: str) -> str:
    return VIEWS[view].flag or "the forward view"


def check_format(view: str, fmt: str) -> None:
    """Does ``view`` come in format ``fmt``? (Checked before compiling.)"""
    formats = VIEWS[view].formats
    if (fmt in IMAGES and "dot" not in formats) or (fmt not in IMAGES and fmt not in formats):
        have = [*formats, *(IMAGES if "dot" in formats else ())]
        raise CommandError(f"{view_flag(view)} has no --format {fmt} (it has: {', '.join(have)})")


def show(module, view: str = "forward", fmt: str = "text") -> str:
    """``view`` of a compiled module as text, JSON or DOT; for an image format, the DOT to give ``render_image``."""
    check_format(view, fmt)
    if module.adjoint is None and view != "forward":
        raise GraphcError(f"the graph has no [train] loss, so no training step to show ({view_flag(view)}): "
                          "only the forward view")
    return VIEWS[view].formats["dot" if fmt in IMAGES else fmt](module)


def render_image(dot_text: str, fmt: str, path) -> Path:
    """Render DOT to ``path`` with Graphviz's dot, atomically: a failure leaves an existing file as it was."""
    exe = shutil.which("dot")
    if exe is None:
        raise CommandError(INSTALL_DOT)
    done = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True)
    if done.returncode != 0:
        reason = (done.stderr.decode("utf-8", "replace").strip().splitlines() or
                  [f"exit status {done.returncode}"])[0]
        raise CommandError(f"Graphviz's dot could not render {fmt}: {reason}")
    return write_atomic(path, done.stdout)


# ---- graphc check: value_and_grad against central finite differences ------------------------------------------

DEFAULT_EPS = 1e-6
DEFAULT_RTOL = 1e-5
ROUNDING = 16 * np.finfo(np.float64).eps  # rounding of one loss evaluation, relative to the loss, with room
SAMPLES = 32  # a param with more entries has this many, drawn at random, compared one by one ...
DIRECTIONS = 3  # ... and its gradient compared along this many random unit directions


@dataclass
class ParamCheck:
    """One row of ``graphc check``: how far a param's gradient is from central differences."""

    param: str
    shape: tuple
    abs_err: float = math.nan  # max |grad - fd| over the differences compared
    rel_err: float = math.nan  # abs_err / max(max |fd|, the rounding floor of the differences)
    probes: int = 0  # the differences taken: one per entry compared, one per random direction
    directions: int = 0  # of which along random directions
    kinks: int = 0  # of which sit on a kink (relu at 0): not differentiable there, so not compared
    problem: str = ""  # why the gradient could not be compared at all (missing, wrong shape, not finite)
    ok: bool = False


@dataclass
class CheckReport:
    loss: float
    rows: list[ParamCheck]
    problems: list[str]  # failures that concern value_and_grad as a whole
    eps: float
    rtol: float
    exhaustive: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.ok for r in self.rows)


def check_inputs(module, mod, seed: int) -> dict:
    """Inputs of the spec's shapes (named dimensions at their [dims] sizes) for ``value_and_grad``, keyed by name:
    the generated module's own random inputs (``mod._random_inputs``: standard normal values, valid class indices
    for integer inputs), drawn from ``np.random.default_rng(seed + 1)``, so not the numbers of
    ``init_params(seed)``."""
    G, sizes = module.graph, module.graph.graph.get("dims", {})
    names = module.schedule.train.inputs
    for x in names:  # a dimension without a size: this one-line error names the input
        concrete(G.nodes[x]["shape"], sizes, f" of input {x!r}")
    return dict(zip(names, mod._random_inputs(names, seed + 1)))


def check_gradients(mod, params: dict, inputs: dict, eps: float = DEFAULT_EPS, rtol: float = DEFAULT_RTOL, *,
                    exhaustive: bool = False, seed: int = 0) -> CheckReport:
    """Compare ``mod.value_and_grad`` (a loaded generated module) with central differences of ``mod.loss`` at
    ``params`` (float64 arrays, restored after use) on ``inputs`` (name -> array, passed by keyword).

    What is compared, per param (as PyTensor's ``verify_grad`` and JAX's ``check_grads`` do): every entry of a
    param of at most SAMPLES entries; of a larger one, SAMPLES entries drawn at random and the directional
    derivative along DIRECTIONS random unit directions (``grad . d`` against the central difference of the loss
    along ``d``), a few dozen loss evaluations whatever the param's size. ``exhaustive`` compares every entry of
    every param. The draws come from ``np.random.default_rng(seed)``.

    A param passes when ``max |grad - fd| <= rtol * max(max |fd|, floor)``, where ``floor`` is what rounding
    in the loss can do to a difference quotient (``16 ulp * max |loss| / eps``). A difference whose one-sided
    slopes differ by more than that tolerance, at ``eps`` and again at ``eps / 16``, sits on a kink (relu at
    exactly 0): the loss has no derivative there, so it is counted and left out.
    """
    before = {k: np.array(v, copy=True) for k, v in params.items()}
    problems = []
    value, grads = mod.value_and_grad(params, **inputs)
    grads = dict(grads)
    if any(not np.array_equal(params[k], before[k]) for k in params):
        problems.append("value_and_grad changed the params it was given")
        for k in params:
            params[k][...] = before[k]
    # value_and_grad runs in training mode: so does the loss it is compared with (dropout draws the same masks from
    # its default generator at every call)
    loss = functools.partial(mod.loss, train=True) if getattr(mod, "MODES_DIFFER", False) else mod.loss
    trained = getattr(mod, "TRAINABLE", mod.PARAMS)
    f0 = loss(params, **inputs)
    if not math.isfinite(f0):
        return CheckReport(f0, [ParamCheck(p, params[p].shape, problem="the loss is not finite")
                                for p in trained], [f"the loss is {f0} at these params"], eps, rtol, exhaustive)
    if not math.isclose(value, f0, rel_tol=1e-12, abs_tol=1e-300):
        problems.append(f"value_and_grad returns the loss {value!r} but loss() returns {f0!r}")
    extra = sorted(set(grads) - set(trained))
    if extra:
        problems.append(f"value_and_grad returns gradients for unknown names: {', '.join(extra)}")
    rng = None if exhaustive else np.random.default_rng(seed)
    rows = [compare(loss, params, inputs, p, grads.get(p), f0, eps, rtol, rng) for p in trained]
    return CheckReport(f0, rows, problems, eps, rtol, exhaustive)


def gradient_problem(grad, shape) -> str:
    if grad is None:
        return "no gradient returned"
    grad = np.asarray(grad)
    if grad.shape != shape:
        return f"gradient of shape {fmt_shape(grad.shape)}"
    return "" if np.all(np.isfinite(grad)) else "gradient not finite"


def probes(shape: tuple, rng) -> list:
    """What to difference along: entries (index tuples) and, for a large param, random unit directions (arrays).
    Every entry when ``rng`` is None (exhaustive) or the param is small."""
    size = math.prod(shape)
    if rng is None or size <= SAMPLES:
        return list(np.ndindex(shape))
    entries = np.sort(rng.choice(size, SAMPLES, replace=False))
    directions = [rng.standard_normal(shape) for _ in range(DIRECTIONS)]
    return [np.unravel_index(i, shape) for i in entries] + [d / np.linalg.norm(d) for d in directions]


def compare(loss, params, inputs, name, grad, f0, eps, rtol, rng=None) -> ParamCheck:
    """One param's row: ``grad`` against central differences along probes(...) (every entry when rng is None)."""
    value = params[name]
    row = ParamCheck(name, value.shape, problem=gradient_problem(grad, value.shape))
    if row.problem:
        return row
    grad = np.array(grad, dtype=np.float64, copy=True)

    def at(d, step):
        """The loss with the param moved by ``+step`` and by ``-step`` along ``d`` (an entry or a direction)."""
        index, delta = (..., step * d) if isinstance(d, np.ndarray) else (d, step)
        old = np.array(value[index], copy=True)
        try:
            value[index] = old + delta
            up = loss(params, **inputs)
            value[index] = old - delta
            down = loss(params, **inputs)
        finally:
            value[index] = old
        return up, down

    along = probes(value.shape, rng)
    exact = np.array([np.vdot(grad, d) if isinstance(d, np.ndarray) else grad[d] for d in along])
    fd, jump = np.zeros(len(along)), np.zeros(len(along))
    largest = abs(f0)  # the largest loss evaluated: what rounding is relative to
    for k, d in enumerate(along):
        up, down = at(d, eps)
        fd[k] = (up - down) / (2 * eps)
        jump[k] = abs((up - f0) - (f0 - down)) / eps  # right slope minus left slope
        largest = max(largest, abs(up), abs(down))
    scale = max(float(np.max(np.abs(fd), initial=0.0)), ROUNDING * largest / eps)
    tol = rtol * scale
    compared = np.ones(len(along), dtype=bool)
    for k in np.flatnonzero((np.abs(exact - fd) > tol) & (jump > tol)):
        up, down = at(along[k], eps / 16)
        if abs((up - f0) - (f0 - down)) * 16 / eps > jump[k] / 2:  # the jump does not shrink with the step
            compared[k] = False
    row.probes, row.kinks = len(along), int(np.count_nonzero(~compared))
    row.directions = sum(isinstance(d, np.ndarray) for d in along)
    err = np.abs(exact - fd)[compared]
    row.abs_err = float(np.max(err, initial=0.0))
    row.rel_err = row.abs_err / scale if scale > 0 else (0.0 if row.abs_err == 0 else math.inf)
    row.ok = row.abs_err <= tol
    return row


def check_text(report: CheckReport, title: str) -> str:
    rows = [("param", "shape", "max abs err", "max rel err", "result")]
    for r in report.rows:
        if r.problem:
            rows.append((r.param, fmt_shape(r.shape), "-", "-", f"FAIL: {r.problem}"))
            continue
        result, taken = "pass" if r.ok else "FAIL", "differences" if r.directions else "elements"
        if r.kinks == r.probes:
            rows.append((r.param, fmt_shape(r.shape), "-", "-",
                         f"not checked: every {taken[:-1]} sits on a kink (relu at 0), where there is no derivative"))
            continue
        if r.kinks:
            result += f" ({r.kinks} of {r.probes} {taken} sit on a kink: not compared)"
        rows.append((r.param, fmt_shape(r.shape), f"{r.abs_err:.3g}", f"{r.rel_err:.3g}", result))
    failed = [r.param for r in report.rows if not r.ok]
    unchecked = [r.param for r in report.rows if r.ok and r.kinks == r.probes]
    if report.ok and unchecked:
        verdict = (f"ok: {len(report.rows) - len(unchecked)} of {len(report.rows)} gradients match central "
                   f"differences; {', '.join(unchecked)} could not be compared at these params")
    elif report.ok:
        verdict = f"ok: all {len(report.rows)} gradients match central differences"
    else:
        verdict = "FAIL: " + "; ".join(report.problems + ([f"wrong gradient for {', '.join(failed)}"]
                                                           if failed else []))
    what = ("every entry of every param (--exhaustive)" if report.exhaustive else
            f"{SAMPLES} random entries and {DIRECTIONS} random directions per param (all entries of a smaller "
            "one; --exhaustive: all of every param)")
    return "\n".join([
        title,
        f"compared: {what}",
        f"loss {report.loss:.6g}; eps {report.eps:g}; rel err = max |grad - fd| / max |fd|; "
        f"a param passes when rel err <= rtol ({report.rtol:g})",
        *columns(rows, right={2, 3}),
        verdict,
    ]) + "\n"
