"""The spec ``graphc import`` writes: the imported graph as readable spec text (one line per layer, single-use
values written inside their consumer, the ONNX names in comments), through templates/spec.toml.j2, and the
initializers as ``SPEC.npz`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .._version import __version__
from ..codegen import environment
from ..errors import SpecError
from ..files import npz_bytes, same_file, write_together
from ..graph import Namer, operands, topo_order
from ..ops import OPS
from .importer import Imported, import_model
from .model import external_files

# Ops that end a layer: the spec gives their result a line of its own instead of writing it inside its consumer.
ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "softmax", "log_softmax")
INLINE_CHARS = 72  # a single-use value is written inside its consumer when its text is at most this long
DEFAULT_DIM = 32  # a named dimension's [dims] default when --dim NAME=SIZE gives none
INFIX = {"add": ("+", 1), "sub": ("-", 1), "mul": ("*", 2), "div": ("/", 2), "matmul": ("@", 2)}


def toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)  # a JSON string with ASCII escapes is a TOML basic string


def comment(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)[1:-1]  # printable ASCII: nothing in a name can end the comment


class SpecWriter:
    """The imported graph as spec text: one line per layer, single-use values written inside their consumer."""

    def __init__(self, imported: Imported):
        self.imp = imported
        self.G = imported.graph.nx
        self.outputs = set(imported.outputs)
        self.inline = {v for v in self.G if self.inlined(v)}
        self.texts = {}

    def uses(self, v) -> int:
        return sum(len(d["arg"]) for _, _, d in self.G.out_edges(v, data=True))

    def inlined(self, v) -> bool:
        data = self.G.nodes[v]
        if data["op"] in ("input", "param") or v in self.outputs or self.uses(v) != 1:
            return False
        return data["op"] == "const" or data["op"] not in ACTIVATIONS

    def operand(self, u, need: int) -> str:
        """How operand ``u`` is written inside an expression whose operator binds at ``need``."""
        data = self.G.nodes[u]
        if data["op"] == "const":
            return repr(float(data["attrs"]["value"]))  # -0.5 binds tighter than any operator: x * -0.5
        if u not in self.inline:
            return u
        text, prec = self.texts[u]
        return text if prec >= need else f"({text})"

    def expression(self, v) -> tuple[str, int]:
        """How node ``v`` is written, and its precedence (1: + -, 2: * / @, 3: unary -, 4: a call or a name)."""
        data = self.G.nodes[v]
        args = operands(self.G, v)
        op = data["op"]
        if op in INFIX:
            symbol, prec = INFIX[op]
            return f"{self.operand(args[0], prec)} {symbol} {self.operand(args[1], prec + 1)}", prec
        if op == "neg":
            return "-" + self.operand(args[0], 3), 3
        defaults = OPS[op].defaults if op in OPS else {}
        attrs = [f"{k}={literal(val)}" for k, val in data.get("attrs", {}).items()
                 if k not in defaults or defaults[k] != val]
        return f"{op}({', '.join([self.operand(a, 0) for a in args] + attrs)})", 4

    def lines(self) -> list[str]:
        """One ``name = "expression"`` row per value that is not written inside its consumer."""
        rows = []
        for v in topo_order(self.G):  # operands first: whether each is inlined is settled before its consumer
            if self.G.nodes[v]["op"] in ("input", "param", "const"):
                continue
            self.texts[v] = self.expression(v)
            if v in self.inline and len(self.texts[v][0]) > INLINE_CHARS:
                self.inline.discard(v)  # too long to read inside another expression: a line of its own
            if v not in self.inline:
                rows.append((f"{v} = {toml_string(self.texts[v][0])}", self.imp.described.get(v)))
        return align(rows)

    def text(self, spec_name: str, npz_name: str, command: str) -> str:
        """The spec, through templates/spec.toml.j2."""
        imp, G = self.imp, self.G
        g = imp.graph
        dims = []
        for d in sorted({d for v in g.inputs for d in G.nodes[v]["shape"] if isinstance(d, str)}):
            onnx_name = self.imp.dim_names.get(d, d)
            dims.append((f"{d} = {imp.dims.get(d, DEFAULT_DIM)}", f"ONNX: {onnx_name}" if onnx_name != d else None))
        inputs = []
        for v in g.inputs:
            shape = "[" + ", ".join(toml_string(d) if isinstance(d, str) else str(d) for d in G.nodes[v]["shape"]) + "]"
            dtype = G.nodes[v]["dtype"]
            typed = shape if dtype == g.dtype else f"{{ shape = {shape}, dtype = {toml_string(dtype)} }}"
            inputs.append((f"{v} = {typed}", self.renamed(v)))
        loss = self.loss_hint()
        if loss:
            inputs.append((f"# {loss[0]}", "to train: a target (see [train])"))
        params = []
        for v in g.params:
            shape = "[" + ", ".join(str(d) for d in G.nodes[v]["shape"]) + "]"
            frozen = ", trainable = false" if not G.nodes[v].get("trainable", True) else ""
            params.append((f"{v} = {{ shape = {shape}, init = \"file\"{frozen} }}", self.renamed(v)))
        return environment().get_template("spec.toml.j2").render(
            version=__version__, producer=comment(imp.producer) if imp.producer else None, opset=imp.opset,
            command=comment(command), npz_name=toml_string(npz_name), dims=align(dims), inputs=align(inputs),
            params=align(params), nodes=self.lines(), loss=loss[1] if loss else None,
            outputs=[toml_string(o) for o in imp.outputs], dtype=toml_string(g.dtype),
        )

    def renamed(self, v) -> str | None:
        onnx_name = self.imp.names.onnx.get(v)
        return f"ONNX: {onnx_name}" if onnx_name is not None and onnx_name != v else None

    def loss_hint(self):
        """A commented target input and loss for the first output: cross-entropy for (N, C), else mse."""
        if not self.imp.outputs:
            return None
        taken = set(self.G)
        out = self.imp.outputs[0]
        shape = self.G.nodes[out]["shape"]
        if self.G.nodes[out]["op"] == "softmax":  # cross_entropy takes the logits, before the softmax
            (logits,) = operands(self.G, out)
            if logits not in self.inline and self.G.nodes[logits]["op"] not in ("param", "const"):
                out = logits
        classes = len(shape) == 2 and shape[1] != 1
        target = Namer(taken)("labels" if classes else "target")
        loss = Namer(taken | {target})("loss")
        dim = lambda d: toml_string(d) if isinstance(d, str) else str(d)  # noqa: E731
        if classes:
            return (f"{target} = {{ shape = [{dim(shape[0])}], dtype = \"int64\" }}",
                    f"{loss} = \"cross_entropy({out}, {target})\"")
        return (f"{target} = [{', '.join(dim(d) for d in shape)}]", f"{loss} = \"mse({out}, {target})\"")


def literal(value) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        items = [v if isinstance(v, str) else str(int(v)) for v in value]  # a name: a named dimension, bare
        return "(" + ", ".join(items) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def align(rows, widest: int = 64) -> list[str]:
    """``text  # note`` rows with the notes in one column (past the rows longer than ``widest``)."""
    width = max((len(text) for text, note in rows if note and len(text) <= widest), default=0)
    return [f"{text.ljust(width)}  # {comment(note)}" if note else text for text, note in rows]


def spec_text(imported: Imported, spec_name: str, npz_name: str, command: str) -> str:
    return SpecWriter(imported).text(spec_name, npz_name, command)


def import_files(model_path, output=None, dims=None, command: str = "") -> tuple[Path, Path, Imported]:
    """``graphc import``: write SPEC.toml and SPEC.npz for the model at ``model_path``; return their paths and
    what was imported."""
    model_path = Path(model_path)
    spec_path = Path(output) if output else model_path.with_suffix(".toml")
    if spec_path.suffix != ".toml":
        raise SpecError(f"the spec is written as TOML: -o {spec_path} must end in .toml")
    npz_path = spec_path.with_suffix(".npz")
    imported = import_model(model_path, dims)
    protected = [model_path, *external_files(model_path)]
    for path in (spec_path, npz_path):
        for p in protected:
            if same_file(path, p):
                raise SpecError(f"writing {path} would replace the model's own file {p}: choose another -o")
    text = spec_text(imported, spec_path.name, npz_path.name,
                     command or f"graphc import {model_path} -o {spec_path}")
    write_together({npz_path: npz_bytes(imported.values), spec_path: text.encode("utf-8")})
    return spec_path, npz_path, imported


