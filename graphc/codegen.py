"""Rendering: a Schedule through the Jinja2 templates (templates/), then black."""

from __future__ import annotations

import keyword
import re
from functools import cached_property, lru_cache
from pathlib import Path

import black
import jinja2
import networkx as nx

from . import fusion, optim
from .backends import BACKENDS
from .graph import BOOL_DTYPES, DTYPES, describe, dim_names, operands, topo_order, trainable, trainable_params
from .ops import OPS, fmt as shape_text
from .schedule import Schedule, kept_values

# The names the generated functions use for their own purposes (NumPy's, every backend's array module, ...). If a
# user name takes one, ours is renamed.
COMPILER_NAMES = tuple(dict.fromkeys(["np", *(b.array_module for b in BACKENDS.values()), "params", "self", "dims",
                                      "train", "rng"]))


def template_dir() -> Path:
    """templates/ inside an installed wheel (graphc/templates), or at the root of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "module.py.j2").is_file():
            return candidate
    raise FileNotFoundError(f"graphc's templates are missing from {here / 'templates'} and {here.parent / 'templates'}")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def compiler_name(name: str, taken) -> str:
    """``name``, or ``_name``, ``__name``, ...: the first that no user or adjoint name takes."""
    while name in taken:
        name = "_" + name
    return name


def compiler_names(taken) -> dict[str, str]:
    return {name: compiler_name(name, taken) for name in COMPILER_NAMES}


def docstring_safe(text: str) -> str:
    """Any text (a path, say) made safe to sit inside a triple-quoted docstring: printable ASCII, no quotes."""
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


class Renderer:
    """Writes nodes of the forward graph ``G`` and the adjoint graph ``A`` with the op macros of ops.j2."""

    def __init__(self, G, A, np_name: str, backend: str = "numpy", self_name: str = "self"):
        self.graphs = {"forward": G, "backward": A}
        context = {"np": np_name, "backend": backend, "dtype": G.graph["dtype"], "trainer": self_name}
        self.ops = environment().get_template("ops.j2").make_module(context)
        self.mode = {"train": "False", "rng": None}  # the function being written: its mode (Op.modes)
        self.keep = {}  # forward node -> the variable its forward writes its random kept value to (Op.draws)
        self.text = {}  # (graph, node) -> how an operand is written: a variable, a literal or an inline view
        for key, graph in self.graphs.items():
            for v in topo_order(graph) if graph is not None else ():
                op = graph.nodes[v]["op"]
                if op == "const":
                    self.text[key, v] = repr(graph.nodes[v]["attrs"]["value"])
                elif op in OPS and OPS[op].inline:
                    self.text[key, v] = self.expr(key, v)
                else:
                    self.text[key, v] = v

    def macro_args(self, key: str, v, into=False) -> tuple[list, dict]:
        """Operand text and the attrs a macro takes (``into``: the workspace form's)."""
        graph = self.graphs[key]
        data = graph.nodes[v]
        args = operands(graph, v)
        rule = OPS[data["op"]].template_attrs  # what the op's macros take besides its attrs
        attrs = dict(data["attrs"]) if rule is None else \
            rule([graph.nodes[a]["shape"] for a in args], data["attrs"], data["dtype"], into)
        if OPS[data["op"]].modes:
            attrs.update(self.mode, keep=self.keep.get(v) if key == "forward" else None)
        return [self.text[key, a] for a in args], attrs

    def expr(self, key: str, v) -> str:
        """The value of ``v`` as one NumPy expression (the pure functions' form)."""
        args, attrs = self.macro_args(key, v)
        macro = getattr(self.ops, OPS[self.graphs[key].nodes[v]["op"]].macro, None)
        if macro is None:  # its pure form is several statements (a _block macro): the equation says what it is
            return describe(self.graphs[key], v).split(" = ", 1)[1]
        return str(macro(*args, **attrs))

    def pure_body(self, fn, train: str, rng: str) -> list[dict]:
        """A pure function's statements in mode ``train`` (True, False or the name of its variable); with a
        backward pass, a random kept value (Op.draws) is its forward statement's, not computed again."""
        G, A = self.graphs["forward"], self.graphs["backward"]
        self.mode = {"train": train, "rng": rng}
        self.keep = drawn(G, A) if any(s.graph == "backward" for s in fn.body) else {}
        return [self.statement(s) for s in fn.body if not (s.graph == "backward" and s.node in self.keep.values())]

    def statement(self, s, out: str | None = None, scratch: str | None = None, computed_with=None) -> dict:
        """A statement computing ``s.node``: fresh arrays, or into workspace buffer ``out`` when one is given."""
        graph = self.graphs[s.graph]
        data = graph.nodes[s.node]
        op = OPS[data["op"]]
        into = getattr(self.ops, op.macro + "_into", None)
        block = getattr(self.ops, op.macro + "_block", None)
        if computed_with is not None:  # the comment says what: the NumPy expression, or the equation if long
            expr = self.expr(s.graph, s.node)
            expr = expr if len(expr) <= 40 else describe(graph, s.node).split(" = ", 1)[1]
            code = str(self.ops.computed(s.node, out, expr, computed_with))
        elif block is not None and out is None and scratch is None:  # a pure form of several statements
            args, attrs = self.macro_args(s.graph, s.node)
            code = str(block(s.node, *args, **attrs)).rstrip()
        elif into is not None and (out is not None or scratch is not None or not hasattr(self.ops, op.macro)):
            # (an op whose pure form is statements, too, may have only the workspace form: called with out None)
            args, attrs = self.macro_args(s.graph, s.node, into=True)
            code = str(into(s.node, out, scratch, *args, **attrs))
        else:
            code = f"{s.node} = {self.expr(s.graph, s.node)}"
        return {
            "graph": s.graph,
            "code": code,
            "op": data["op"],
            "equation": describe(self.graphs["forward"], s.node) if s.graph == "forward" else None,
            "note": self.note(s.node) if s.graph == "backward" else None,
            "shape": shape_text(data["shape"]),
        }

    @cached_property
    def uses(self) -> tuple[dict, set]:
        """The forward graph's topological order (node -> index) and the nodes the loss depends on."""
        G, loss = self.graphs["forward"], self.graphs["backward"].graph["loss"]
        return {v: i for i, v in enumerate(topo_order(G))}, nx.ancestors(G, loss) | {loss}

    def note(self, v) -> str:
        """What statement ``v`` of the adjoint graph is: its comment in the generated code and in graphc show."""
        G, A = self.graphs["forward"], self.graphs["backward"]
        loss, data = A.graph["loss"], A.nodes[v]
        wrt, via = data.get("wrt"), data.get("via")
        if data["op"] == "accumulate":  # one term per use of wrt, in the order the backward visits them
            order, upstream = self.uses
            uses = sorted((w for w in G.successors(wrt) if w in upstream), key=order.get, reverse=True)
            named = " and ".join(describe(G, w) for w in uses[:USES_NAMED])
            more = f" and {len(uses) - USES_NAMED} more" if len(uses) > USES_NAMED else ""
            return f"d {loss} / d {wrt}: the sum over its {len(operands(A, v))} uses, via {named}{more}"
        where = f"via {describe(G, via)}" if via is not None else ""
        if OPS[data["op"]].own_array:  # a gradient copied out of a view; an intermediate one says where it is from
            return f"d {loss} / d {wrt}, as an array of its own" if wrt else f"{where}, as an array of its own"
        return f"d {loss} / d {wrt} {where}".rstrip() if wrt else where


def render(sched: Schedule, *, name: str, source: str, command: str, version: str, train=None,
           backend: str = "numpy") -> str:
    """The generated module's source, before black. ``train`` (compiler.Training) is None for an inference-only
    module; ``backend`` is a row of backends.BACKENDS."""
    G, A = sched.G, sched.A
    dims = G.graph.get("dims", {})
    names = compiler_names(set(G) | set(A or ()) | set(dims))
    array_module = BACKENDS[backend].array_module
    r = Renderer(G, A, names[array_module], backend, names["self"])  # the array module of the generated functions

    def function(fn, train="False", extra=()):
        body = r.pure_body(fn, train, names["rng"])
        return {"inputs": fn.inputs, "params": fn.params, "body": body, "dims": used_dims(dims, body, extra)}

    def leaf(v):
        return {"name": v, "shape": tuple(G.nodes[v]["shape"])}

    dtype = G.graph["dtype"]
    params = []
    for p in (v for v in G if G.nodes[v]["op"] == "param"):
        data = G.nodes[p]
        params.append({**leaf(p), "init": render_init(data, names["np"], dtype), "random": data["init"] == "randn",
                       "stored": data["init"] == "file", "trainable": trainable(G, p)})
    inputs = [{**leaf(v), "classes": classes_of(G, v), "boolean": G.nodes[v]["dtype"] in BOOL_DTYPES}
              for v in G if G.nodes[v]["op"] == "input"]
    context = dict(
        name=name, source=docstring_safe(source), command=docstring_safe(command), version=version, dtype=dtype,
        outputs=sched.outputs, inputs=inputs, params=params, predict=function(sched.predict), names=names,
        dims=dims, train=None, backend=backend, array_module=array_module, helpers=helpers(r, G, A),
        trainable=trainable_params(G), row_offsets=False, full=False,
        bools=[x["name"] for x in inputs if x["boolean"]], modes=modes(G),
    )
    if train is not None:
        ws = sched.workspace
        kernels = fused(sched) if BACKENDS[backend].fuse else {}  # a chain's first statement's index -> its kernel
        buffers = [{"name": f"_buf{i}", "shape": shape_text(b.shape), "dtype": b.dtype, "holds": b.values,
                    "grad": b.grad} for i, b in enumerate(ws.buffers)]
        workspace_dims = dim_names(b.shape for b in ws.buffers)
        opt = optim.OPTIMIZERS[train.optimizer]
        context.update(
            train=train,
            optimizer=opt,
            hyperparams={k: repr(v) for k, v in train.hyperparams.items()},
            loss=sched.loss,
            grads={p: r.text["backward", g] for p, g in A.graph["grads"].items()},
            loss_fn=function(sched.loss_fn, names["train"]),
            value_and_grad=function(sched.train, names["train"]),
            trainer={
                "buffers": buffers,
                "dims": workspace_dims,
                "body": trainer_body(sched, r, kernels, f'{names["self"]}.rng'),
                "copies": gradient_copies(sched, r),
            },
        )
        context["kernels"] = list(kernels.values())
        step = context["trainer"]
        context.update({h: any(f"_{h}(" in s["code"] for s in step["body"]) for h in ("row_offsets", "full")})  # helpers
        step["bound"] = used_dims(dims, step["body"], workspace_dims)
        step["dim_args"] = [f'{names["dims"]}["{d}"]' for d in step["bound"]]
    return environment().get_template("module.py.j2").render(**context)


def gradient_copies(sched, r: "Renderer") -> dict:
    """The gradients Trainer.step copies into their views of the flat gradients (param -> the value's text):
    those not computed straight into their view (schedule.gradient_views), and those whose op has no workspace
    form (its statement makes a fresh array, whatever its buffer)."""
    A, ws = sched.A, sched.workspace
    placed = {(p.graph, p.node): p for p in ws.body}
    graph_of = {"forward": sched.G, "backward": A}
    copies = {}
    for u in ws.updates:
        p = placed.get(("backward", u.grad)) or placed.get(("forward", u.grad))
        op = graph_of[p.graph].nodes[p.node]["op"] if p is not None else None
        into = p is not None and (p.computed_with is not None or hasattr(r.ops, OPS[op].macro + "_into"))
        if not (u.direct and into):
            copies[u.param] = r.text["backward", A.graph["grads"][u.param]]
    return copies


def modes(G) -> dict:
    """What the module says about modes: whether any op's two modes differ (MODES_DIFFER), whether one draws random
    numbers (its functions take a Generator), and the nodes whose running statistics Trainer.step updates."""
    ops = [OPS[op] for _, op in G.nodes(data="op") if op in OPS]
    return {"differ": any(o.modes for o in ops), "draws": any(o.draws for o in ops),
            "running": {v: op for v, op in G.nodes(data="op") if op in OPS and OPS[op].running}}


def drawn(G, A) -> dict:
    """Forward node -> its random kept value (Op.draws: dropout's mask), which the forward statement writes."""
    return {v: es[0] for v, es in kept_values(G, A).items() if OPS[G.nodes[v]["op"]].draws}


def helpers(r: "Renderer", G, A) -> list[str]:
    """The module's functions that the ops' macros call (Op.helpers), each once, in name order."""
    names = {h for graph in (G, A) if graph is not None for _, op in graph.nodes(data="op") if op in OPS
             for h in OPS[op].helpers}
    return [str(getattr(r.ops, f"helper_{h}")()) for h in sorted(names)]


def buffer(index):
    if isinstance(index, tuple):  # several temporaries (ops.Op.scratches): a list of names
        return [buffer(i) for i in index]
    return None if index is None else f"_buf{index}"


def kernel_macros():
    return environment().get_template("kernels.j2").make_module()


def fused(sched):
    """The fused kernels of Trainer.step (a backend that fuses), keyed by the index of their first statement."""
    return fusion.kernels(sched, kernel_macros())


def trainer_body(sched, r: "Renderer", kernels: dict, rng: str) -> list[dict]:
    """Trainer.step's statements into the workspace, in training mode (drawing from ``rng``, the Trainer's
    Generator); each fused chain (``kernels``) is one kernel call."""
    r.mode, r.keep = {"train": "True", "rng": rng}, {}
    ws = sched.workspace
    body, skip = [], 0
    for i, p in enumerate(ws.body):
        if skip:
            skip -= 1
            continue
        k = kernels.get(i)
        if k is None:
            body.append(r.statement(p, buffer(p.out), buffer(p.scratch), p.computed_with))
            continue
        skip = len(k.nodes) - 1
        last = k.nodes[-1]
        body.append({"graph": k.graph, "op": "fused", "equations": k.equations,
                     "shape": shape_text(r.graphs[k.graph].nodes[last]["shape"]),
                     "note": r.note(last) if k.graph == "backward" else None,
                     "code": f"{last} = {k.name}({', '.join(k.args + [buffer(p.out)])})"})
    return body


def used_dims(dims: dict, body: list, extra=()) -> list[str]:
    """The named dimensions a function's code reads (comments aside), in declaration order: the ones it binds."""
    words = set(extra)
    for s in body:
        for line in s["code"].splitlines():
            words.update(_IDENTIFIER.findall(line.split("#", 1)[0]))
    return [d for d in dims if d in words]


def classes_of(G, v):
    """An integer input's number of classes (where Op.classes of an op that takes it as class indices says: the
    logits' class axis for cross_entropy, the weight's rows for embedding), else None."""
    if G.nodes[v]["dtype"] in DTYPES:
        return None
    for w in G.successors(v):
        args = operands(G, w)
        op = OPS[G.nodes[w]["op"]]
        if any(args[i] == v for i in op.int_operands):
            operand, axis = op.classes
            return G.nodes[args[operand]]["shape"][axis]
    return None


def render_init(data: dict, np_name: str, dtype: str) -> str:
    macro = environment().get_template("init.j2").make_module({"np": np_name}).init
    init = data["init"]
    kind, value = (init, None) if isinstance(init, str) else ("constant", repr(float(init)))
    scale = data.get("scale")
    return str(macro(kind, tuple(data["shape"]), dtype, value, None if scale is None else repr(float(scale))))


USES_NAMED = 4  # the uses a sum's note names; the rest are counted

# Modules longer than this go through black one line shape at a time (see format_source): black costs about
# 0.5 ms per line, and a 10,000-node chain makes a module of 200,000 lines.
FAST_FORMAT_LINES = 5000


def format_source(text: str, *, by_shape: bool | None = None) -> str:
    """``text`` through black, then through Python's own compiler: what graphc writes always imports.

    Nothing here recurses over the graph: every statement is one op, and a sum of gradients has at most
    autodiff.MAX_TERMS terms. Black is linear but slow (about 0.5 ms per line), so a long module (more than
    FAST_FORMAT_LINES lines, or ``by_shape=True``) is formatted by shape: see _format_by_shape. The result is the
    same text black gives for the whole module (tests/test_big.py compares the two).
    """
    from .errors import GraphcError

    if by_shape is None:
        by_shape = text.count("\n") > FAST_FORMAT_LINES
    try:
        formatted = (_format_by_shape(text) if by_shape else None) or _black(text)
        compile(formatted, "<generated module>", "exec", dont_inherit=True)
    except (RecursionError, MemoryError):
        raise GraphcError("the generated module nests expressions too deeply for black or for Python's compiler "
                          f"({len(text.splitlines())} lines); please report the graph that produced it") from None
    return formatted


def _black(text: str) -> str:
    return black.format_str(text, mode=black.Mode())


_IDENTIFIER = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_PLACEHOLDER = re.compile(r"\ba\b")
_STRING = re.compile(r"\"[^\"\\]*\"|'[^'\\]*'")
_NOT_SIMPLE = re.compile(r"\\|\w[\"']|;")  # line continuations, prefixed strings (f"..."), two statements
_STATEMENT_KEYWORDS = frozenset(keyword.kwlist) - {"None", "True", "False", "not", "lambda", "await"}


def _format_by_shape(text: str) -> str | None:
    """Black's output for ``text``, computed from far fewer lines than ``text`` has; None where that fails.

    Inside a function, black formats a one-line simple statement or comment independently of the lines around
    it, and identifiers matter to it only through the line's length. So each such line is reduced to its
    *shape* (every identifier replaced by ``a``), the distinct shapes go through black together, once, and the
    identifiers are put back in order. A line is taken this way only if its shape stays one line and the line,
    names back in, still fits black's line length. The rest of the module (signatures, docstrings, multi-line
    statements, blank lines) goes through black as usual, each run of shaped lines standing in as a marker line
    of the same kind (comment or statement), so black's blank-line rules see the same neighbours. Every
    assumption is checked on the way back; if one fails, the caller formats the whole module with black.
    """
    lines = text.split("\n")
    if "\t" in text:
        return None
    marker = "graphc_shape"
    while marker in text:
        marker += "_"
    candidates = _candidates(lines)
    one_line = _one_line_shapes({shape for shape, _ in candidates.values()}, marker)
    taken = {}  # the lines taken by shape: names back in, in order, and still within the line length
    for i, (shape, names) in candidates.items():
        out = one_line.get(shape)
        if out is not None and len(_PLACEHOLDER.findall(out)) == len(names):
            it = iter(names)
            line = _PLACEHOLDER.sub(lambda m: next(it), out)
            if len(line) <= black.Mode().line_length:
                taken[i] = line
    skeleton, runs = _skeleton(lines, taken, marker)
    return _put_back(_black("\n".join(skeleton)), runs, marker)


def _candidates(lines: list[str]) -> dict[int, tuple[str, list[str]]]:
    """The lines that are a complete one-line simple statement or comment, indented by 4k spaces (k >= 1):
    line index -> (its shape, its names in order)."""
    candidates, depth, in_string = {}, 0, False
    for i, line in enumerate(lines):
        quotes = line.count('"""') + line.count("\'\'\'")
        if in_string or quotes:
            in_string ^= quotes % 2 == 1
            continue
        code = _STRING.sub('""', line).split("#", 1)[0]
        opened = sum(map(code.count, "([{")) - sum(map(code.count, ")]}"))
        indent = len(line) - len(line.lstrip(" "))
        first = _IDENTIFIER.match(line.lstrip())
        if (depth == 0 and opened == 0 and line.strip() and indent >= 4 and indent % 4 == 0
                and not _NOT_SIMPLE.search(line) and not code.rstrip().endswith(":")
                and not line.lstrip().startswith("@") and not (first and first.group() in _STATEMENT_KEYWORDS)):
            names = [n for n in _IDENTIFIER.findall(line) if not keyword.iskeyword(n)]
            shape = _IDENTIFIER.sub(lambda m: m.group() if keyword.iskeyword(m.group()) else "a", line)
            candidates[i] = (shape, names)
        depth += opened
    return candidates


def _one_line_shapes(shapes: set, marker: str) -> dict[str, str]:
    """Each distinct shape through black once, nested to its own depth after a marker comment of its own:
    shape -> black's line, for the shapes black keeps on one line."""
    shapes = sorted(shapes, key=lambda s: (len(s) - len(s.lstrip()), s))
    synthetic, level = ["def f():"], 1
    for k, shape in enumerate(shapes):
        indent = (len(shape) - len(shape.lstrip())) // 4
        while level < indent:
            synthetic += ["    " * level + "pass", "    " * level + "if a:"]
            level += 1
        synthetic += ["    " * indent + f"# {marker} {k}", shape]
    synthetic.append("    " * level + "pass")
    formatted, current = {}, None
    for line in _black("\n".join(synthetic) + "\n").split("\n"):
        if line.lstrip().startswith(f"# {marker} "):
            current = int(line.split()[-1])
            formatted[current] = []
        elif line.strip() in ("pass", "if a:", "def f():", ""):
            current = None
        elif current is not None:
            formatted[current].append(line)
    return {shapes[k]: out[0] for k, out in formatted.items() if len(out) == 1}


def _skeleton(lines: list[str], taken: dict, marker: str) -> tuple[list[str], list]:
    """The module with each run of taken lines (one indent, nothing between) as marker lines of the same kind
    (comment or statement), so that black's blank-line rules see the same neighbours; and the runs."""
    skeleton, runs, i = [], [], 0
    while i < len(lines):
        if i not in taken:
            skeleton.append(lines[i])
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip(" "))
        j = i
        while j + 1 in taken and len(lines[j + 1]) - len(lines[j + 1].lstrip(" ")) == indent:
            j += 1
        run = len(runs)
        runs.append((indent, [taken[k] for k in range(i, j + 1)]))
        for k, end in ((i, "first"), (j, "last")) if j > i else ((i, "first"),):
            comment = lines[k].lstrip().startswith("#")
            skeleton.append(" " * indent + (f"# {marker} {run} {end}" if comment else f"{marker}_{run}_{end} = 0"))
        i = j + 1
    return skeleton, runs


def _put_back(formatted: str, runs: list, marker: str) -> str | None:
    """The runs back in place of their markers in black's output, checking that black kept the markers as they
    were; None where it did not."""
    placeholder = re.compile(rf"^( *)(?:# {marker} (\d+) (first|last)|{marker}_(\d+)_(first|last) = 0)$")
    out, expected, opened = [], 0, None
    for line in formatted.split("\n"):
        m = placeholder.match(line)
        if m is None:
            if opened is not None:
                return None  # black put something between the two markers of a run
            out.append(line)
            continue
        run, end = int(m.group(2) or m.group(4)), m.group(3) or m.group(5)
        indent, block = runs[run] if run < len(runs) else (None, None)
        if len(m.group(1)) != indent:
            return None
        if end == "first":
            if run != expected or opened is not None:
                return None
            out += block
            expected += 1
            opened = run if len(block) > 1 else None
        elif opened != run:
            return None
        else:
            opened = None
    return "\n".join(out) if expected == len(runs) and opened is None else None
