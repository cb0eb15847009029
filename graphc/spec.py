"""Spec files (TOML or JSON) -> Graph. Expressions are parsed with ``ast`` and walked, never evaluated."""

from __future__ import annotations

import ast
import json
import math
import re
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


from .errors import GraphcError, GraphError, SpecError
from .files import read_npz, read_regular
from .optim import OPTIMIZERS
from .optim import hyperparams as check_hyperparams
from .graph import DTYPES, Graph, Namer, Tensor, check_dims, check_name, public_ops
from .ops import OPS, as_float
from .training import DEFAULT_ITERATIONS

SECTIONS = {"name", "inputs", "params", "nodes", "train", "dims", "params_file"}
HYPERPARAMS = {k for o in OPTIMIZERS.values() for k in o.hyperparams}  # lr among them
TRAIN_KEYS = {"loss", "outputs", "optimizer", "iterations", "epochs", "batch_size", "dtype"} | HYPERPARAMS
PARAM_KEYS = {"shape", "init", "scale", "trainable"}
INPUT_KEYS = {"shape", "dtype"}
OPERATORS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.MatMult: "matmul", ast.Pow: "pow"}


@dataclass
class Spec:
    """A parsed spec: the graph and how to train it."""

    graph: Graph
    loss: str | None  # None: an inference-only model
    outputs: list[str] | None
    lr: float | None = None
    iterations: int = DEFAULT_ITERATIONS
    path: str = ""
    optimizer: str = "sgd"
    hyperparams: dict = field(default_factory=dict)  # as given, lr aside
    dims: dict = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None
    init_values: dict = field(default_factory=dict)  # the params file's arrays
    params_path: Path | None = None  # the params file

    def options(self, **overrides) -> dict:
        """The keyword arguments of graphc.compile that this spec gives (``overrides`` win)."""
        return {"loss": self.loss, "outputs": self.outputs, "lr": self.lr, "iterations": self.iterations,
                "optimizer": self.optimizer, "dims": self.dims, "epochs": self.epochs,
                "batch_size": self.batch_size, "init_values": self.init_values, **self.hyperparams, **overrides}


def read(path: Path) -> dict:
    if path.suffix not in (".toml", ".json"):
        raise SpecError(f"unknown file type {path.suffix or '(none)'!r}: a spec is a .toml or .json file")
    try:
        text = read_regular(path, "spec", SpecError).decode("utf-8")  # a FIFO or a device: refused, not read
    except UnicodeDecodeError:
        raise SpecError("cannot read the spec: not UTF-8 text") from None
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        if kind == "TOML":
            data = tomllib.loads(text)
        else:
            data = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=reject_constant)
    except tomllib.TOMLDecodeError as err:
        line = re.search(r"line (\d+)", str(err))
        raise SpecError(f"invalid TOML: {str(err).split(' (at')[0]}",
                        line=int(line.group(1)) if line else None) from None
    except json.JSONDecodeError as err:
        raise SpecError(f"invalid JSON: {err.msg}", line=err.lineno) from None
    except RecursionError:
        raise SpecError(f"invalid {kind}: nested too deeply") from None
    except ValueError as err:  # an integer literal of more digits than Python converts (sys.int_info)
        raise SpecError(f"invalid {kind}: {str(err).split(';')[0]}") from None
    if not isinstance(data, dict):
        raise SpecError("invalid JSON: the spec must be an object")
    return data


def no_duplicate_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise SpecError(f"duplicate key {key!r}", node=key)
        seen[key] = value
    return seen


def reject_constant(name):
    raise SpecError(f"invalid JSON: {name} is not a number a spec may use")


def load_spec(path, dtype: str | None = None) -> Spec:
    """Read and check a spec file; errors carry the file name."""
    path = Path(path)
    try:
        return parse(read(path), name=default_name(path.stem), dtype=dtype, path=str(path))
    except GraphcError as err:
        raise err.located(file=str(path))


def section(data: dict, key: str, required=False) -> dict:
    value = data.get(key, {} if not required else None)
    if value is None:
        raise SpecError(f"missing [{key}] section")
    if not isinstance(value, dict):
        raise SpecError(f"[{key}] must be a table of name = value")
    return value


def default_name(stem: str) -> str:
    name = re.sub(r"\W", "_", stem, flags=re.ASCII).lstrip("_")
    return name if name and not name[0].isdigit() else f"model_{name}".rstrip("_")


def parse(data: dict, name: str = "model", dtype: str | None = None, path: str = "") -> Spec:
    """Check a spec's data (the parsed TOML or JSON) and build its graph; ``name`` is the default name.

    Linear in the number of names: tests/test_big.py counts the work per node at two sizes."""
    train = check_keys(data)
    dtype = dtype or train.get("dtype") or "float64"
    if dtype not in DTYPES:
        raise SpecError(f"unsupported dtype {dtype!r} (use one of {', '.join(DTYPES)})")
    g = Graph(data.get("name", name), dtype)
    inputs, params, nodes = section(data, "inputs"), section(data, "params"), section(data, "nodes")
    every = check_names([*inputs, *params, *nodes])
    add_inputs(g, inputs)
    add_params(g, params)
    namer = Namer(set(every))
    for key, text in nodes.items():  # `nodes` itself says which names come later (not a set of them per node)
        Expression(g, key, nodes, namer).build(text)
    loss, outputs = targets(train, g)
    iterations = train.get("iterations", DEFAULT_ITERATIONS)
    for key in ("iterations", "epochs", "batch_size"):
        value = iterations if key == "iterations" else train.get(key)
        if (value is not None or key == "iterations") and (isinstance(value, bool) or not isinstance(value, int)
                                                            or not 1 <= value <= 10**9):
            raise SpecError(f"[train] {key} must be an integer from 1 to 10**9, got {value!r}")
    optimizer = train.get("optimizer", "sgd")
    given = {k: tuple(v) if k == "betas" and isinstance(v, list) else v for k, v in train.items() if k in HYPERPARAMS}
    try:
        check_hyperparams(optimizer, given, where="[train] ")
        dims = check_dims(g.nx, section(data, "dims"))
    except GraphError as err:
        raise SpecError(err.message, node=err.node) from None
    lr = given.pop("lr", None)
    values, params_path = params_file(data, path, g)
    return Spec(g, loss, outputs, lr, iterations, path, optimizer, given, dims, train.get("epochs"),
                train.get("batch_size"), values, params_path)


def check_keys(data: dict) -> dict:
    """The top-level keys and [train]'s are known ones; returns [train]."""
    unknown = sorted(set(data) - SECTIONS)
    if unknown:
        raise SpecError(f"unknown top-level key {unknown[0]!r} (expected: {', '.join(sorted(SECTIONS))})")
    train = section(data, "train", required=True)
    unknown = sorted(set(train) - TRAIN_KEYS)
    if unknown:
        raise SpecError(f"unknown key {unknown[0]!r} in [train] (expected: {', '.join(sorted(TRAIN_KEYS))})")
    return train


def check_names(every: list) -> list:
    """Each name defined once across the sections, and valid, before any node is built: a bad name is reported
    as the user wrote it."""
    for key, count in Counter(every).items():
        if count > 1:
            raise SpecError(f"duplicate name {key!r} (each name is defined once across sections)", node=key)
    for key in every:
        check_name(key)
    return every


def add_inputs(g: Graph, inputs: dict) -> None:
    for key, x in inputs.items():
        if isinstance(x, dict):
            extra = sorted(set(x) - INPUT_KEYS)
            if extra or "shape" not in x:
                what = f"unknown key {extra[0]!r}" if extra else "no shape"
                raise SpecError(f"{what}: an input is a shape, or a table {{ shape = [...], dtype = \"int64\" }}",
                                node=key)
            g.input(key, x["shape"], dtype=x.get("dtype"))
        else:
            g.input(key, x)


def add_params(g: Graph, params: dict) -> None:
    for key, p in params.items():
        if not isinstance(p, dict):
            raise SpecError(f"param {key!r} must be a table {{ shape = [...], init = ... }}", node=key)
        extra = sorted(set(p) - PARAM_KEYS)
        if extra:
            raise SpecError(f"unknown key {extra[0]!r} (a param has {', '.join(sorted(PARAM_KEYS))})", node=key)
        if "shape" not in p:
            raise SpecError("param has no shape", node=key)
        g.param(key, p["shape"], init=p.get("init", "randn"), scale=p.get("scale"), trainable=p.get("trainable", True))


def targets(train: dict, g: Graph) -> tuple:
    """[train]'s loss and outputs: names of the graph."""
    loss = train.get("loss")
    if loss is not None and not isinstance(loss, str):
        raise SpecError("[train] loss must be the name of the scalar node to minimise")
    outputs = train.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs)):
        raise SpecError("[train] outputs must be a list of node names")
    if loss is None and outputs is None:
        raise SpecError("[train] needs loss = \"<name of the scalar node to minimise>\" (or, for an "
                        "inference-only module, outputs = [...])")
    for ref in [*([loss] if loss else []), *(outputs or [])]:
        if ref not in g:
            raise SpecError(f"[train] names {ref!r}, which is not defined", node=ref)
    return loss, outputs


def params_file(data: dict, path: str, g: Graph) -> tuple[dict, Path | None]:
    """The arrays of the spec's params_file (relative to the spec) for the params whose init is "file", and
    its path."""
    wanted = [p for p in g.params if g.nx.nodes[p]["init"] == "file"]
    name = data.get("params_file")
    if name is None:
        if wanted:
            raise SpecError("init = \"file\" needs a params_file = \"<file>.npz\" at the top of the spec",
                            node=wanted[0])
        return {}, None
    if not isinstance(name, str) or not name.endswith(".npz"):
        raise SpecError(f"params_file must name a .npz file, got {name!r}")
    folder = Path(path).parent
    file = folder / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not inside(file, folder):
        raise SpecError(f"params_file {name!r} is outside the spec's folder: it names a file beside the spec "
                        "(or below it)")
    shapes = {p: g.nx.nodes[p]["shape"] for p in wanted}

    def check(key, shape, dtype):  # from the array's header: nothing but the wanted arrays is read
        if key not in shapes:
            return False
        if shape != shapes[key] or dtype.kind != "f":
            return f"params_file {name!r} has {shape} {dtype}, but the param is {shapes[key]} {g.nx.nodes[key]['dtype']}"
        return True

    try:
        values = read_npz(file, f"params_file {name!r}", check, SpecError)
    except SpecError as err:
        err.file = None  # an error of the spec: it names the params_file, the command names the spec
        raise
    for p in wanted:
        if p not in values:
            raise SpecError(f"params_file {name!r} has no array {p!r}", node=p)
    return {p: values[p] for p in wanted}, file


def inside(file: Path, folder: Path) -> bool:
    """``file`` resolves (symlinks followed) to a path inside ``folder``."""
    try:
        return file.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + "..."


class Expression:
    """One ``name = "expression"`` of [nodes], turned into graph nodes by an explicit-stack walk of its AST."""

    def __init__(self, g: Graph, target: str, later, namer: Namer):  # later: the names defined below (a container)
        self.g, self.target, self.later, self.namer = g, target, later, namer

    def fail(self, message: str):
        raise SpecError(message, node=self.target)

    def build(self, text) -> Tensor:
        if not isinstance(text, str):
            self.fail(f"a node is an expression string, got {text!r}")
        if not text.isascii():  # Python folds look-alikes (NFKC): 'ℓ' would silently mean 'l'
            c = next(c for c in text if not c.isascii())
            self.fail(f"character {c!r} (U+{ord(c):04X}) is not allowed: expressions are ASCII")
        self.text = text.strip()
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as err:
            self.fail(f"cannot parse {clip(text, 80)!r}: {err.msg}")
        except (RecursionError, MemoryError):
            self.fail(f"cannot parse {clip(text)!r}: nested too deeply")
        except ValueError as err:  # null bytes; an int literal of more digits than Python converts
            self.fail(f"cannot parse {clip(text)!r}: {str(err).split(';')[0]}")
        root = tree.body
        if isinstance(root, ast.Name):
            self.lookup(root.id)  # an undefined name is that error first
            self.fail(f"{text!r} only renames {root.id!r}; use that name directly")
        values = {}  # id(ast node) -> Tensor or number
        stack = [(root, False)]
        while stack:
            node, ready = stack.pop()
            children = self.children(node)
            if not ready:
                stack.append((node, True))
                stack.extend((c, False) for c in reversed(children))
                continue
            args = [values.pop(id(c)) for c in children]
            values[id(node)] = self.value(node, args, name=self.target if node is root else None)
        result = values[id(root)]
        if not isinstance(result, Tensor):
            self.number(result)
            result = self.g.const(result, name=self.target)
        return result

    def children(self, node) -> list:
        if isinstance(node, ast.BinOp):
            if type(node.op) not in OPERATORS:
                self.fail(f"operator {type(node.op).__name__} is not allowed (use + - * / @ **)")
            return [node.left, node.right]
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                self.fail(f"operator {type(node.op).__name__} is not allowed (use + - * / @)")
            return [node.operand]
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in public_ops():
                if isinstance(node.func, ast.Name):
                    self.fail(f"unknown op {node.func.id!r} (known: {', '.join(sorted(public_ops()))})")
                self.fail(f"only ops can be called, by name ({', '.join(sorted(public_ops()))}); "
                          f"this calls {type(node.func).__name__} expression")
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                self.fail("* and ** arguments are not allowed")
            given = [k.arg for k in node.keywords] + [key for key, _ in self.positional(node)]
            for key in given:
                if given.count(key) > 1:
                    self.fail(f"attribute {key}= is given twice")
            op = OPS[node.func.id]
            return list(node.args[:op.arity] if op.positional else node.args)
        if isinstance(node, (ast.Name, ast.Constant)):
            return []
        self.fail(f"{type(node).__name__} expressions are not allowed: use names, numbers, + - * / @ and op calls")

    def value(self, node, args, name):
        if isinstance(node, ast.Constant):
            if node.value is None:  # an absent bound, clip(x, None, 6.0); anywhere else an error (self.number)
                return None
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                self.fail(f"{node.value!r} is not allowed here: only numbers are constants")
            value = as_float(node.value)
            if not math.isfinite(value):  # 1e999, or an int beyond float range
                written = ast.get_source_segment(self.text, node) or repr(node.value)
                self.fail(f"the number {clip(written)} is too large")
            return value
        if isinstance(node, ast.Name):
            return self.lookup(node.id)
        if isinstance(node, ast.UnaryOp):
            (x,) = args
            self.number(x)
            if isinstance(node.op, ast.UAdd):
                return x
            if not isinstance(x, Tensor):
                return -x
            return self.apply("neg", [x], {}, name)
        if isinstance(node, ast.BinOp):
            return self.apply(OPERATORS[type(node.op)], args, {}, name)
        attrs = {kw.arg: self.literal(kw.value, kw.arg) for kw in node.keywords}
        attrs.update((key, self.literal(value, key)) for key, value in self.positional(node))
        return self.apply(node.func.id, args, attrs, name)

    def positional(self, call) -> list:
        """(attr, value node) of the attributes an op takes by position after its operands: max_pool2d(x, 2)."""
        op = OPS[call.func.id]
        if not op.positional:
            return []
        extra = call.args[op.arity:]
        if len(extra) > len(op.positional):
            self.fail(f"{op.name} takes {op.arity} operand{'s' * (op.arity != 1)} and then at most "
                      f"{', '.join(op.positional)} by position, got {len(call.args)} arguments")
        return list(zip(op.positional, extra))

    def literal(self, value, key):
        """An attribute's value: a number (``-1`` too), a string, True/False, None or a tuple of ints and dimension
        names (``(N, -1)``: a bare name in a tuple is a dimension's name)."""
        def scalar(node):
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                    and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
                return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
            if isinstance(node, ast.Constant) and (node.value is None or type(node.value) in (str, int, float, bool)):
                return node.value
            raise ValueError

        try:
            if isinstance(value, ast.Tuple):
                items = tuple(e.id if isinstance(e, ast.Name) else scalar(e) for e in value.elts)
                if all(type(i) in (int, str) for i in items) and not any(
                        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts):
                    return items
                raise ValueError
            return scalar(value)
        except ValueError:
            self.fail(f"attribute {key}= must be a literal: a number, a string, True, False, None "
                      "or a tuple of ints and dimension names")

    def number(self, value):
        if value is None:
            self.fail("None is not allowed here: only numbers are constants")
        return value

    def lookup(self, ref: str) -> Tensor:
        if ref in self.g:
            return self.g[ref]
        if ref == self.target:
            self.fail(f"{ref!r} refers to itself")
        if ref in self.later:
            self.fail(f"{ref!r} is used before its definition (names are defined top to bottom)")
        self.fail(f"undefined name {ref!r}")

    def apply(self, op: str, args: list, attrs: dict, name) -> Tensor:
        if args and all(not isinstance(a, Tensor) for a in args):
            self.fail(f"{op} of constants only: write the number")
        arity = OPS[op].arity if OPS[op].attr_operands else None
        operands = [a if isinstance(a, Tensor) or arity is not None and i >= arity  # attrs: pow(x, 2.0)
                    else self.g.const(self.number(a), name=self.namer(f"{self.target}_const"))
                    for i, a in enumerate(args)]
        return self.g.apply(op, *operands, name=name or self.namer(f"{self.target}_{op}"), **attrs)
