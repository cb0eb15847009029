"""The error catalogue: every user error is a GraphcError subclass with a location, and the command prints it as
one line, ``graphc: error: <file>[:<line>]: [node '<name>': ]<message>``, exits 2, and loses nothing.

SPEC_ERRORS are spec files (each run in process, for the exception's type and location, and through the real
command, for the line, the exit status, the untouched output and the absence of temporary files); API_ERRORS are
what only the Python API can get wrong (cycles, empty graphs, a loss of another graph, ...); the write errors
are at the end.
"""

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import graphc as gc
from graphc import cli
from graphc.errors import GraphError, ShapeError, SpecError
from graphc.graph import public_ops

pytestmark = pytest.mark.unformatted

KNOWN_OPS = ", ".join(sorted(public_ops()))  # add, binary_cross_entropy_with_logits, ..., transpose
PRECIOUS = b"# an earlier, working module\n"
INPUTS = '[inputs]\nX = [4, 3]\ny = [4, 2]\n'
PARAMS = '[params]\nW = { shape = [3, 2] }\n'
TRAIN = '[train]\nloss = "loss"\n'


def spec(nodes='pred = "X @ W"\nloss = "mse(pred, y)"', inputs=INPUTS, params=PARAMS, train=TRAIN):
    return f"{inputs}{params}[nodes]\n{nodes}\n{train}"


@dataclass
class Case:
    kind: type  # the GraphcError subclass raised
    message: str  # str(error) without the file: "[node 'x': ]what is wrong"
    text: "str | bytes | None" = None  # the spec file's content (None: no file at all)
    file: str = "spec.toml"
    node: "str | None" = None
    line: "int | None" = None


SPEC_ERRORS = {
    "unreadable file (a directory)": Case(SpecError, "cannot read the spec: Is a directory", text="<dir>"),
    "unreadable file (missing)": Case(SpecError, "cannot read the spec: No such file or directory"),
    "unreadable file (not UTF-8)": Case(SpecError, "cannot read the spec: not UTF-8 text", text=b"\xff\xfe[inputs]\n"),
    "unknown file type": Case(SpecError, "unknown file type '.yaml': a spec is a .toml or .json file",
                              text=spec(), file="spec.yaml"),
    "invalid TOML": Case(SpecError, "invalid TOML: Expected newline or end of document after a statement", line=3,
                         text='[inputs]\nX = [4, 3]\ny = 4 2\n'),
    "duplicate TOML key": Case(SpecError, "invalid TOML: Cannot overwrite a value", line=3,
                               text='[inputs]\nX = [4, 3]\nX = [4, 2]\n'),
    "invalid JSON": Case(SpecError, "invalid JSON: Expecting property name enclosed in double quotes", line=4,
                         text='{\n  "inputs": {\n    "X": [4, 3],\n  }\n}\n', file="spec.json"),
    "duplicate JSON key": Case(SpecError, "node 'X': duplicate key 'X'", node="X", file="spec.json",
                               text='{"inputs": {"X": [4, 3], "X": [4, 2]}}'),
    "unknown op": Case(SpecError, f"node 'pred': unknown op 'mish' (known: {KNOWN_OPS})",
                       node="pred", text=spec('pred = "mish(X @ W)"\nloss = "mse(pred, y)"')),
    "wrong arity (too many)": Case(GraphError, "node 'pred': relu takes 1 operand, got 2", node="pred",
                                   text=spec('pred = "relu(X @ W, X)"\nloss = "mse(pred, y)"')),
    "wrong arity (too few)": Case(GraphError, "node 'loss': mse takes 2 operands, got 1", node="loss",
                                  text=spec('pred = "X @ W"\nloss = "mse(pred)"')),
    "unknown attribute": Case(GraphError, "node 'pred': relu has no attribute 'alpha' (allowed: none)", node="pred",
                              text=spec('pred = "relu(X @ W, alpha=0.1)"\nloss = "mse(pred, y)"')),
    "invalid attribute": Case(GraphError, "node 'loss': mse attribute reduction='max' is not one of 'mean', 'sum'",
                              node="loss", text=spec('pred = "X @ W"\nloss = "mse(pred, y, reduction=\'max\')"')),
    "undefined name": Case(SpecError, "node 'pred': undefined name 'V'", node="pred",
                           text=spec('pred = "X @ V"\nloss = "mse(pred, y)"')),
    "duplicate name": Case(SpecError, "node 'W': duplicate name 'W' (each name is defined once across sections)",
                           node="W", text=spec('W = "X * 2.0"\npred = "X @ W"\nloss = "mse(pred, y)"')),
    "use before definition": Case(
        SpecError, "node 'loss': 'pred' is used before its definition (names are defined top to bottom)",
        node="loss", text=spec('loss = "mse(pred, y)"\npred = "X @ W"')),
    "invalid name": Case(GraphError, "node 'W-1': the name is not a valid ASCII Python identifier", node="W-1",
                         text=spec(params='[params]\n"W-1" = { shape = [3, 2] }\n')),
    "shape mismatch (matmul)": Case(
        ShapeError, "node 'pred': pred = matmul(X, W): shapes (4, 3) and (2, 2) do not align (3 != 2)",
        node="pred", text=spec(params='[params]\nW = { shape = [2, 2] }\n')),
    "shape mismatch (broadcast)": Case(
        ShapeError, "node 'pred': pred = add(pred_matmul, b): shapes (4, 2) and (3,) do not broadcast",
        node="pred", text=spec('pred = "X @ W + b"\nloss = "mse(pred, y)"',
                               params='[params]\nW = { shape = [3, 2] }\nb = { shape = [3] }\n')),
    "shape mismatch (loss target)": Case(
        ShapeError, "node 'loss': loss = mse(pred, y, reduction='mean'): prediction (4, 2) and target (4, 3) differ",
        node="loss", text=spec(inputs='[inputs]\nX = [4, 3]\ny = [4, 3]\n')),
    "non-scalar loss": Case(GraphError, "node 'pred': the loss must be a scalar, but 'pred' has shape (4, 2)",
                            node="pred", text=spec(train='[train]\nloss = "pred"\n')),
    "missing loss": Case(SpecError, '[train] needs loss = "<name of the scalar node to minimise>" (or, for an '
                                    'inference-only module, outputs = [...])', text=spec(train='[train]\nlr = 0.1\n')),
    "missing [train]": Case(SpecError, "missing [train] section", text=spec(train="")),
    "loss not defined": Case(SpecError, "node 'los': [train] names 'los', which is not defined", node="los",
                             text=spec(train='[train]\nloss = "los"\n')),
    "param not reaching the loss": Case(
        GraphError, "node 'V': param 'V' does not affect the loss 'loss'", node="V",
        text=spec(params='[params]\nW = { shape = [3, 2] }\nV = { shape = [3, 2] }\n')),
    "no params": Case(GraphError, "the graph has no params: there is nothing to train",
                      text=spec('loss = "mse(X @ V, y)"', params="",
                                inputs='[inputs]\nX = [4, 3]\ny = [4, 2]\nV = [3, 2]\n')),
    "unsupported dtype": Case(SpecError, "unsupported dtype 'float16' (use one of float64, float32)",
                              text=spec(train='[train]\nloss = "loss"\ndtype = "float16"\n')),
    # ---- the ops of section 10: attributes, integer inputs, shapes ----
    "axis out of range": Case(
        ShapeError, "node 'loss': loss = sum(pred, axis=2, keepdims=False): axis 2 is out of range for shape (4, 2) "
        "(2-D)", node="loss", text=spec('pred = "X @ W"\nloss = "sum(pred, axis=2)"')),
    "axis named twice": Case(
        ShapeError, "node 'loss': loss = mean(pred, axis=(0, -2), keepdims=False): axis (0, -2) names an axis twice",
        node="loss", text=spec('pred = "X @ W"\nloss = "mean(pred, axis=(0, -2))"')),
    "axis of the wrong type": Case(
        GraphError, "node 'loss': sum attribute axis=1.5 must be an int, a tuple of ints or None", node="loss",
        text=spec('pred = "X @ W"\nloss = "sum(pred, axis=1.5)"')),
    "softmax axis None": Case(
        GraphError, "node 'pred': softmax attribute axis=None must be an int", node="pred",
        text=spec('pred = "softmax(X @ W, axis=None)"\nloss = "mse(pred, y)"')),
    "keepdims not a bool": Case(
        GraphError, "node 'loss': sum attribute keepdims=1 must be True or False", node="loss",
        text=spec('pred = "X @ W"\nloss = "sum(pred, keepdims=1)"')),
    "negative_slope not a number": Case(
        GraphError, "node 'pred': leaky_relu attribute negative_slope='steep' must be a finite number", node="pred",
        text=spec('pred = "leaky_relu(X @ W, negative_slope=\'steep\')"\nloss = "mse(pred, y)"')),
    "attribute a list": Case(
        SpecError, "node 'loss': attribute axis= must be a literal: a number, a string, True, False, None or a tuple "
        "of ints and dimension names", node="loss", text=spec('pred = "X @ W"\nloss = "sum(pred, axis=[0, 1])"')),
    "attribute a tuple of floats": Case(
        SpecError, "node 'loss': attribute axis= must be a literal: a number, a string, True, False, None or a "
        "tuple of ints and dimension names", node="loss", text=spec('pred = "X @ W"\nloss = "sum(pred, axis=(0, 1.0))"')),
    "cross_entropy reduction": Case(
        GraphError, "node 'loss': cross_entropy attribute reduction='none' is not one of 'mean', 'sum'", node="loss",
        text=spec('pred = "X @ W"\nloss = "cross_entropy(pred, y, reduction=\'none\')"')),
    "integer input outside cross_entropy": Case(
        GraphError, "node 'loss': labels is an integer input (class indices): only the target of cross_entropy or "
        "the ids of embedding may be integer", node="loss",
        text=spec('pred = "X @ W"\nloss = "mse(pred, labels)"',
                  inputs='[inputs]\nX = [4, 3]\nlabels = { shape = [4, 2], dtype = "int64" }\n')),
    "integer logits": Case(
        GraphError, "node 'loss': labels is an integer input (class indices): only the target of cross_entropy or "
        "the ids of embedding may be integer", node="loss",
        text=spec('pred = "X @ W"\nloss = "cross_entropy(labels, pred)"',
                  inputs='[inputs]\nX = [4, 3]\nlabels = { shape = [4, 2], dtype = "int64" }\n')),
    "class indices of the wrong shape": Case(
        ShapeError, "node 'loss': loss = cross_entropy(pred, labels, reduction='mean'): class indices (4, 2) must "
        "have shape (4,) for logits (4, 2)", node="loss",
        text=spec('pred = "X @ W"\nloss = "cross_entropy(pred, labels)"',
                  inputs='[inputs]\nX = [4, 3]\nlabels = { shape = [4, 2], dtype = "int64" }\n')),
    "float class indices": Case(
        ShapeError, "node 'loss': loss = cross_entropy(pred, y, reduction='mean'): target probabilities (4,) must "
        "have the shape of the logits (4, 2) (class indices are an int64 input)", node="loss",
        text=spec('pred = "X @ W"\nloss = "cross_entropy(pred, y)"', inputs='[inputs]\nX = [4, 3]\ny = [4]\n')),
    "cross_entropy of 1-D logits": Case(
        ShapeError, "node 'loss': loss = cross_entropy(loss_sum, y, reduction='mean'): cross_entropy needs logits "
        "of shape (N, C) or (N, C, d1, ...), got (4,)", node="loss",
        text=spec('pred = "X @ W"\nloss = "cross_entropy(sum(pred, axis=1), y)"')),
    "bce shapes": Case(
        ShapeError, "node 'loss': loss = binary_cross_entropy_with_logits(pred, y, reduction='mean'): logits (4, 2) "
        "and target (4, 3) differ", node="loss",
        text=spec('pred = "X @ W"\nloss = "binary_cross_entropy_with_logits(pred, y)"',
                  inputs='[inputs]\nX = [4, 3]\ny = [4, 3]\n')),
    "transpose of 1-D": Case(
        ShapeError, "node 'loss_transpose': loss_transpose = transpose(b): transpose needs a 2-D operand, got (2,) (or axes=(...))",
        node="loss_transpose",
        text=spec('pred = "X @ W"\nloss = "mse(pred, transpose(b))"',
                  params='[params]\nW = { shape = [3, 2] }\nb = { shape = [2] }\n')),
    "named dimensions that cannot be proven equal": Case(
        ShapeError, "node 'loss': loss = mse(pred, y, reduction='mean'): prediction (N, 2) and target (M, 2) differ",
        node="loss", text=spec(inputs='[inputs]\nX = ["N", 3]\ny = ["M", 2]\n')),
    "named dimension against a number": Case(
        ShapeError, "node 'pred': pred = add(pred_matmul, y): shapes (N, 2) and (4, 2) do not broadcast (dimension "
        "'N' and 4 cannot be proven equal)", node="pred",
        text=spec('pred = "X @ W + y"\nloss = "sum(pred)"', inputs='[inputs]\nX = ["N", 3]\ny = [4, 2]\n')),
    # ---- named dimensions, integer inputs and training settings (sections 9 and 11) ----
    "named dimension in a param": Case(
        ShapeError, "node 'W': shape ['N', 2]: a param's shape is concrete, but 'N' is a named dimension (only "
        "inputs may have named dimensions)", node="W", text=spec(params='[params]\nW = { shape = ["N", 2] }\n')),
    "dimension name not an identifier": Case(
        ShapeError, "node 'X': dimension name 'batch size' is not a valid ASCII Python identifier (no keyword, no "
        "leading _)", node="X", text=spec(inputs='[inputs]\nX = ["batch size", 3]\ny = [4, 2]\n')),
    "dimension named like a node": Case(
        SpecError, "node 'W': dimension name 'W' is also a node name: rename one of them", node="W",
        text=spec('pred = "X @ W"\nloss = "mse(pred, y)"', inputs='[inputs]\nX = ["W", 3]\ny = ["W", 2]\n')),
    "size of an unknown dimension": Case(
        SpecError, "dims gives 'M' a size, but no input has that dimension (named dimensions: N)",
        text="[dims]\nM = 4\n" + spec(inputs='[inputs]\nX = ["N", 3]\ny = ["N", 2]\n')),
    "integer input of an unknown dtype": Case(
        GraphError, "node 'y': unsupported dtype 'int8' (use one of float64, float32, int64, bool)", node="y",
        text=spec(inputs='[inputs]\nX = [4, 3]\ny = { shape = [4], dtype = "int8" }\n')),
    "unknown optimizer": Case(SpecError, "unknown optimizer 'rmsprop' (graphc has 'sgd', 'adam', 'adamw')",
                              text=spec(train='[train]\nloss = "loss"\noptimizer = "rmsprop"\n')),
    "hyperparameter the optimizer lacks": Case(
        SpecError, "adam has no hyperparameter 'momentum' (it has lr, betas, eps, weight_decay)",
        text=spec(train='[train]\nloss = "loss"\noptimizer = "adam"\nmomentum = 0.9\n')),
    "nesterov without momentum": Case(
        SpecError, "[train] nesterov (True) needs momentum > 0 and dampening = 0 (got momentum=0.0, dampening=0.0)",
        text=spec(train='[train]\nloss = "loss"\nnesterov = true\n')),
    "betas outside [0, 1)": Case(
        SpecError, "[train] betas must be a pair of numbers in [0, 1), got (0.9, 1.0)",
        text=spec(train='[train]\nloss = "loss"\noptimizer = "adam"\nbetas = [0.9, 1.0]\n')),
    "negative eps": Case(SpecError, "[train] eps must be a finite number >= 0, got -1e-08",
                         text=spec(train='[train]\nloss = "loss"\noptimizer = "adamw"\neps = -1e-8\n')),
    "batch_size without a batch dimension": Case(
        GraphError, 'batch_size needs a batch dimension: a named dimension (e.g. "N") as axis 0 of the inputs, '
        'such as X = ["N", 64]', text=spec(train='[train]\nloss = "loss"\nbatch_size = 2\n')),
    "constant output": Case(GraphError, "node 'two': output 'two' is a constant: predict() computes nothing for it",
                            node="two", text=spec('two = "2"\npred = "X @ W * two"\nloss = "mse(pred, y)"',
                                                  train='[train]\nloss = "loss"\noutputs = ["two"]\n')),
}


def write_case(case: Case, directory: Path) -> Path:
    path = directory / case.file
    if case.text == "<dir>":
        path.mkdir()
    elif isinstance(case.text, bytes):
        path.write_bytes(case.text)
    elif case.text is not None:
        path.write_text(case.text, encoding="utf-8")
    return path


@pytest.mark.parametrize("what", list(SPEC_ERRORS))
def test_spec_error_in_process(what, tmp_path, monkeypatch):
    case = SPEC_ERRORS[what]
    monkeypatch.chdir(tmp_path)
    write_case(case, tmp_path)
    with pytest.raises(gc.GraphcError) as raised:
        spec_ = gc.load_spec(case.file)
        gc.compile(spec_.graph, **spec_.options())
    err = raised.value
    assert type(err) is case.kind
    assert (err.node, err.line) == (case.node, case.line)
    assert err.file in (case.file, None)  # compile() errors get the file from the command
    assert str(err.located(file=case.file)) == f"{case.file}{f':{case.line}' if case.line else ''}: {case.message}"


@pytest.mark.parametrize("what", list(SPEC_ERRORS))
def test_spec_error_through_the_command(what, tmp_path):
    """One line on stderr, nothing on stdout, exit status 2, an existing output byte-identical, no temp files."""
    case = SPEC_ERRORS[what]
    write_case(case, tmp_path)
    out = tmp_path / "model.py"
    out.write_bytes(PRECIOUS)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = subprocess.run([sys.executable, "-m", "graphc", "compile", case.file, "-o", "model.py"],
                            cwd=tmp_path, capture_output=True, text=True)
    where = f"{case.file}:{case.line}" if case.line else case.file
    assert result.returncode == 2
    assert result.stderr == f"graphc: error: {where}: {case.message}\n"
    assert result.stdout == ""
    assert out.read_bytes() == PRECIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def two_node_graph():
    g = gc.Graph("m")
    x = g.input("x", (4, 3))
    W = g.param("W", (3, 2))
    return g, x, W


def cycle():
    G = nx.DiGraph()
    G.add_node("x", op="input", shape=(2,))
    G.add_node("a", op="add")
    G.add_node("b", op="relu")
    G.add_edges_from([("x", "a", {"arg": 0}), ("b", "a", {"arg": 1}), ("a", "b", {"arg": 0})])
    return gc.from_networkx(G)


def leaf_with_operand():
    G = nx.DiGraph()
    G.add_node("W", op="param", shape=(2,))
    G.add_node("x", op="input", shape=(2,))
    G.add_edge("W", "x", arg=0)
    return gc.from_networkx(G)


def node_without_op():
    G = nx.DiGraph()
    G.add_node("x", op="input", shape=(2,))
    G.add_node("h")
    G.add_edge("x", "h", arg=0)
    return gc.from_networkx(G)


def loss_of_another_graph():
    g, x, W = two_node_graph()
    other, x2, W2 = two_node_graph()
    gc.compile(g, loss=gc.mse(x2 @ W2, x2 @ W2, name="l"))


API_ERRORS = {
    "cycle (from_networkx)": (cycle, GraphError, "the graph has a cycle: a -> b -> a"),
    "empty graph (compile)": (lambda: gc.compile(gc.Graph("m"), "l"), GraphError, "the graph is empty"),
    "empty graph (from_networkx)": (lambda: gc.from_networkx(nx.DiGraph()), GraphError, "the graph is empty"),
    "duplicate name (builder)": (lambda: two_node_graph()[0].input("x", (2,)), GraphError,
                                 "node 'x': duplicate name 'x'"),
    "operands of two graphs": (lambda: two_node_graph()[1] @ two_node_graph()[2], GraphError,
                               "matmul needs Tensor operands from exactly one graph"),
    "shape mismatch (operator)": (lambda: (lambda g, x, W: W @ x)(*two_node_graph()), ShapeError,
                                  "node 'matmul_1': matmul_1 = matmul(W, x): shapes (3, 2) and (4, 3) do not "
                                  "align (2 != 4)"),
    "wrong arity (builder)": (lambda: (lambda g, x, W: g.apply("relu", x, x))(*two_node_graph()), GraphError,
                              "node 'relu_1': relu takes 1 operand, got 2"),
    "unknown op (builder)": (lambda: (lambda g, x, W: g.apply("mish", x))(*two_node_graph()), GraphError,
                             f"node 'mish_1': unknown op 'mish' (known: {KNOWN_OPS})"),
    "missing loss (compile)": (lambda: gc.compile(two_node_graph()[0], None), GraphError,
                               "no loss and no outputs: give the loss to train, or the outputs predict() returns"),
    "loss not a node": (lambda: gc.compile(two_node_graph()[0], "l"), GraphError,
                        "node 'l': the loss 'l' is not a node of the graph"),
    "loss of another graph": (loss_of_another_graph, GraphError,
                              "node 'l': the loss 'l' is a node of another graph"),
    "non-scalar loss (compile)": (lambda: (lambda g, x, W: gc.compile(g, x @ W))(*two_node_graph()), GraphError,
                                  "node 'matmul_1': the loss must be a scalar, but 'matmul_1' has shape (4, 2)"),
    "unsupported dtype (graph)": (lambda: gc.Graph("m", dtype="int8"), GraphError,
                                  "unsupported dtype 'int8' (use one of float64, float32)"),
    "unsupported dtype (compile)": (
        lambda: (lambda g, x, W: gc.compile(g, gc.mse(x @ W, x @ W), dtype="float16"))(*two_node_graph()),
        GraphError, "unsupported dtype 'float16' (use one of float64, float32)"),
    "bad lr (compile)": (
        lambda: (lambda g, x, W: gc.compile(g, gc.mse(x @ W, x @ W), lr=-1.0))(*two_node_graph()),
        GraphError, "sgd hyperparameter lr must be a positive finite number, got -1.0"),
    "empty outputs": (
        lambda: (lambda g, x, W: gc.compile(g, gc.mse(x @ W, x @ W), outputs=[]))(*two_node_graph()),
        GraphError, "outputs is empty: name what predict() returns (the default is the loss)"),
    "incoming edge on a leaf (from_networkx)": (leaf_with_operand, GraphError,
                                                "node 'x': input node has incoming edges"),
    "node without op (from_networkx)": (node_without_op, GraphError, "node 'h': missing or invalid op None"),
}


@pytest.mark.parametrize("what", list(API_ERRORS))
def test_api_error(what):
    make, kind, message = API_ERRORS[what]
    with pytest.raises(gc.GraphcError) as raised:
        make()
    assert type(raised.value) is kind
    assert str(raised.value) == message


# ---- nothing lost: writing ---------------------------------------------------------------------------------

def compile_chain_rule(tmp_path, out: str):
    (tmp_path / "spec.toml").write_text('[params]\nx = { shape = [] }\n[nodes]\nf = "x * x"\n[train]\nloss = "f"\n')
    return subprocess.run([sys.executable, "-m", "graphc", "compile", "spec.toml", "-o", out],
                          cwd=tmp_path, capture_output=True, text=True)


def test_missing_output_directory_is_a_clear_error(tmp_path):
    result = compile_chain_rule(tmp_path, "nowhere/model.py")
    assert result.returncode == 2
    assert result.stderr == "graphc: error: nowhere/model.py: cannot write: directory 'nowhere' does not exist\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.toml"]


def test_output_that_is_a_directory_is_a_clear_error(tmp_path):
    (tmp_path / "model.py").mkdir()
    result = compile_chain_rule(tmp_path, "model.py")
    assert result.returncode == 2 and result.stderr == "graphc: error: model.py: cannot write: it is a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py", "spec.toml"]


def test_the_module_never_replaces_the_spec(tmp_path):
    spec = b'[params]\nx = { shape = [] }\n[nodes]\nf = "x * x"\n[train]\nloss = "f"\n'
    (tmp_path / "spec.toml").write_bytes(spec)
    result = subprocess.run([sys.executable, "-m", "graphc", "compile", "spec.toml", "-o", "spec.toml"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == ("graphc: error: spec.toml: cannot write to a .toml file, the kind a spec is: "
                             "choose another name\n")
    assert (tmp_path / "spec.toml").read_bytes() == spec


def unwritable_directory(tmp_path) -> Path:
    """A directory this process cannot create files in: a read-only one, or, for root, /sys (Linux)."""
    directory = tmp_path / "read_only"
    directory.mkdir()
    directory.chmod(0o555)
    if os.access(directory, os.W_OK):  # root writes anywhere on a normal file system
        directory = Path("/sys")
    with pytest.raises(OSError):  # a precondition of the test, not a skip
        tempfile.mkstemp(dir=directory)
    return directory


def test_unwritable_output_directory_is_a_clear_error(tmp_path):
    target = unwritable_directory(tmp_path) / "model.py"
    result = compile_chain_rule(tmp_path, str(target))
    assert result.returncode == 2
    assert result.stderr == f"graphc: error: {target}: cannot write: Permission denied\n"
    assert not target.exists()


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    out = tmp_path / "model.py"
    out.write_bytes(PRECIOUS)
    module = gc.compile(*chain_rule_graph())

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(gc.GraphcError, match="cannot write: No space left on device"):
        module.save(out)
    assert out.read_bytes() == PRECIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py"]

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        module.save(out)
    assert out.read_bytes() == PRECIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py"]


def chain_rule_graph():
    g = gc.Graph("m")
    x = g.param("x", ())
    return g, gc.mul(x, x, name="f")


def test_a_successful_write_replaces_the_file_atomically(tmp_path):
    """A new file is renamed over the old: a reader holding the old file still reads all of the old bytes,
    the path now holds all of the new ones, and the file keeps its permissions."""
    out = tmp_path / "model.py"
    out.write_bytes(PRECIOUS * 1000)
    out.chmod(0o600)
    inode = out.stat().st_ino
    module = gc.compile(*chain_rule_graph())
    with open(out, "rb") as old:
        module.save(out)
        assert old.read() == PRECIOUS * 1000
    assert out.read_text(encoding="utf-8") == module.source
    assert out.stat().st_ino != inode
    assert out.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py"]


def test_the_command_catches_errors_in_process_too(tmp_path, monkeypatch, capsys):
    """cli.main returns 2 (no SystemExit, no traceback) for a GraphcError raised anywhere in the pipeline."""
    monkeypatch.chdir(tmp_path)
    write_case(SPEC_ERRORS["non-scalar loss"], tmp_path)
    assert cli.main(["compile", "spec.toml"]) == 2
    printed = capsys.readouterr()
    assert printed.err == f"graphc: error: spec.toml: {SPEC_ERRORS['non-scalar loss'].message}\n"
    assert not (tmp_path / "spec.py").exists()


# ---- the generated module: a wrong input is a ValueError naming it, in every function -------------------------

def test_every_generated_function_names_a_wrong_input(root):
    spec = gc.load_spec(root / "examples" / "two_layer.toml")
    mod = gc.compile(spec.graph, **spec.options()).load()
    params = mod.init_params()
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 100)), rng.standard_normal((32, 10))
    trainer = mod.Trainer(mod.init_params())
    calls = {
        "predict": lambda X, y: mod.predict(params, X),
        "loss": lambda X, y: mod.loss(params, X, y),
        "value_and_grad": lambda X, y: mod.value_and_grad(params, X, y),
        "Trainer.step": lambda X, y: trainer.step(X, y),
        "Trainer.fit": lambda X, y: trainer.fit(X, y, iterations=1),
        "by keyword": lambda X, y: mod.loss(params, y=y, X=X),
    }
    wrong = {
        "shape": (X[:, :99], "input 'X': expected shape (32, 100) float64, got (32, 99) float64"),
        "dtype": (X.astype(np.float32), "input 'X': expected shape (32, 100) float64, got (32, 100) float32"),
        "rank": (X[0], "input 'X': expected shape (32, 100) float64, got (100,) float64"),
        "integers": (np.ones((32, 100), dtype=np.int64), "got (32, 100) int64"),
    }
    before = {k: v.copy() for k, v in trainer.params.items()}
    for call_name, call in calls.items():
        for what, (bad, message) in wrong.items():
            with pytest.raises(ValueError) as raised:
                call(bad, y)
            assert message in str(raised.value), (call_name, what)
        if call_name != "predict":
            with pytest.raises(ValueError, match=r"input 'y': expected shape \(32, 10\) float64, got \(10,\)"):
                call(X, y[0])
    for k in before:  # a rejected step changes nothing
        np.testing.assert_array_equal(trainer.params[k], before[k])
