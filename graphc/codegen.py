"""Rendering: a Schedule through the Jinja2 templates (templates/), then black."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import black
import jinja2

from .graph import describe, operands, topo_order
from .ops import OPS
from .schedule import Schedule

# The names the generated functions use for their own purposes. If a user name takes one, ours is renamed.
COMPILER_NAMES = ("np", "params", "self")


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


def compiler_names(taken) -> dict[str, str]:
    names = {}
    for name in COMPILER_NAMES:
        chosen = name
        while chosen in taken:
            chosen = "_" + chosen
        names[name] = chosen
    return names


def docstring_safe(text: str) -> str:
    """Any text (a path, say) made safe to sit inside a triple-quoted docstring: printable ASCII, no quotes."""
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


def sum_to_attrs(in_shape, axis, shape) -> dict:
    """``np.sum(g, axis=...)`` drops the summed axes; reshape only where a kept size-1 axis must come back."""
    kept = tuple(d for i, d in enumerate(in_shape) if i not in axis)
    return {
        "axis": None if len(axis) == len(in_shape) else (axis[0] if len(axis) == 1 else axis),
        "reshape": None if kept == tuple(shape) else tuple(shape),
    }


class Renderer:
    """Writes nodes of the forward graph ``G`` and the adjoint graph ``A`` with the op macros of ops.j2."""

    def __init__(self, G, A, np_name: str):
        self.graphs = {"forward": G, "backward": A}
        self.ops = environment().get_template("ops.j2").make_module({"np": np_name})
        self.text = {}  # (graph, node) -> how an operand is written: a variable, a literal or an inline view
        for key, graph in self.graphs.items():
            for v in topo_order(graph):
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
        first = graph.nodes[args[0]]["shape"] if args else ()
        attrs = dict(data["attrs"])
        if data["op"] == "sum_to":
            attrs = sum_to_attrs(first, **attrs)
            if into:
                attrs["keepdims"] = tuple(1 if i in data["attrs"]["axis"] else d for i, d in enumerate(first))
        elif data["op"] == "fill":
            attrs["dtype"] = data["dtype"]
        elif data["op"] == "mse" and into:
            attrs["size"] = math.prod(first)
        return [self.text[key, a] for a in args], attrs

    def expr(self, key: str, v) -> str:
        """The value of ``v`` as one NumPy expression (the pure functions' form)."""
        args, attrs = self.macro_args(key, v)
        return str(getattr(self.ops, OPS[self.graphs[key].nodes[v]["op"]].macro)(*args, **attrs))

    def statement(self, s, out: str | None = None, scratch: str | None = None) -> dict:
        """A statement computing ``s.node``: fresh arrays, or into workspace buffer ``out`` when one is given."""
        graph = self.graphs[s.graph]
        data = graph.nodes[s.node]
        into = getattr(self.ops, OPS[data["op"]].macro + "_into", None)
        if into is not None and (out is not None or scratch is not None):
            args, attrs = self.macro_args(s.graph, s.node, into=True)
            code = str(into(s.node, out, scratch, *args, **attrs))
        else:
            code = f"{s.node} = {self.expr(s.graph, s.node)}"
        via = data.get("via")
        return {
            "graph": s.graph,
            "code": code,
            "op": data["op"],
            "equation": describe(self.graphs["forward"], s.node) if s.graph == "forward" else None,
            "args": [str(a) for a in operands(graph, s.node)],
            "shape": tuple(data["shape"]),
            "wrt": data.get("wrt"),
            "via": describe(self.graphs["forward"], via) if via is not None else None,
        }


def render(sched: Schedule, *, name: str, source: str, command: str, version: str, lr: float,
           iterations: int) -> str:
    """The generated module's source, before black."""
    G, A = sched.G, sched.A
    names = compiler_names(set(G) | set(A))
    r = Renderer(G, A, names["np"])

    def function(fn):
        return {"inputs": fn.inputs, "params": fn.params, "body": [r.statement(s) for s in fn.body]}

    ws = sched.workspace

    def buffer(index):
        return None if index is None else f"_buf{index}"

    trainer = {
        "buffers": [{"name": buffer(i), "shape": b.shape, "dtype": b.dtype, "holds": b.values}
                    for i, b in enumerate(ws.buffers)],
        "body": [r.statement(p, buffer(p.out), buffer(p.scratch)) for p in ws.body],
        "updates": [{"param": u.param, "grad": u.grad, "inplace": u.inplace} for u in ws.updates],
    }

    def leaf(v):
        data = G.nodes[v]
        return {"name": v, "shape": tuple(data["shape"])}

    dtype = G.graph["dtype"]
    params = []
    for p in (v for v in G if G.nodes[v]["op"] == "param"):
        data = G.nodes[p]
        params.append({**leaf(p), "init": render_init(data, names["np"], dtype)})
    return environment().get_template("module.py.j2").render(
        name=name,
        source=docstring_safe(source),
        command=docstring_safe(command),
        version=version,
        dtype=dtype,
        lr=repr(float(lr)),
        iterations=int(iterations),
        loss=sched.loss,
        outputs=sched.outputs,
        inputs=[leaf(v) for v in G if G.nodes[v]["op"] == "input"],
        params=params,
        grads={p: r.text["backward", g] for p, g in A.graph["grads"].items()},
        predict=function(sched.predict),
        loss_fn=function(sched.loss_fn),
        train=function(sched.train),
        trainer=trainer,
        names=names,
    )


def render_init(data: dict, np_name: str, dtype: str) -> str:
    macro = environment().get_template("init.j2").make_module({"np": np_name}).init
    init = data["init"]
    kind, value = (init, None) if isinstance(init, str) else ("constant", repr(float(init)))
    scale = data.get("scale")
    return str(macro(kind, tuple(data["shape"]), dtype, value, None if scale is None else repr(float(scale))))


def format_source(text: str) -> str:
    return black.format_str(text, mode=black.Mode())
