"""`graphc show`: the equations (golden), JSON that networkx reads back, DOT with every node and edge, the saved
values and their bytes, pictures through Graphviz, and one-line errors."""

import functools
import json
import re
import shutil
import subprocess
import sys

import networkx as nx
import pytest

import graphc as gc
from graphc import explain
from graphc.cli import main
from graphc.graph import operands
from graphc.schedule import is_statement

EXAMPLES = ["two_layer", "chain_rule"]


@functools.cache
def compiled(example):  # read-only in these tests; paths are relative to the repo root (the `root` fixture)
    spec = gc.load_spec(f"examples/{example}.toml")
    return gc.compile(spec.graph, loss=spec.loss, outputs=spec.outputs)


def show(capsys, *args):
    assert main(["show", *args]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def graphc(*args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "graphc", *args], capture_output=True, text=True, cwd=cwd, **kw)


# ---- text --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("example", EXAMPLES)
def test_backward_text_matches_golden(example, root, update_golden, capsys):
    text = show(capsys, f"examples/{example}.toml", "--backward")
    golden = root / "tests" / "golden" / f"{example}_backward.txt"
    if update_golden:
        golden.write_text(text)
    assert text == golden.read_text(), f"show --backward for {example} differs from {golden} (--update-golden)"


def test_backward_text_gives_every_param_a_gradient_line(root, capsys):
    for example in EXAMPLES:
        module = compiled(example)
        text = show(capsys, f"examples/{example}.toml", "--backward")
        for p in module.adjoint.graph["grads"]:
            shape = explain.fmt_shape(module.graph.nodes[p]["shape"])
            assert re.search(rf"^d{p}{re.escape(shape)} = .*# d \w+ / d {p}\b", text, re.M), (example, p)


def test_forward_text_is_every_node_in_order(root, capsys):
    text = show(capsys, "examples/two_layer.toml")
    assert "# inputs: X[32,100], y[32,10]" in text
    assert "# params: W1[100,200] randn, b1[200] zeros, W2[200,10] randn, b2[10] zeros" in text
    equations = [line.split(" = ")[0] for line in text.splitlines() if not line.startswith("#")]
    assert equations == ["h_matmul[32,200]", "h_add[32,200]", "h[32,200]", "pred_matmul[32,10]", "pred[32,10]",
                         "loss[]"]
    assert "h[32,200] = np.maximum(h_add, 0.0)\n" in text


def test_output_file_is_written(root, tmp_path, capsys):
    out = tmp_path / "two_layer.txt"
    assert main(["show", "examples/two_layer.toml", "--backward", "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"graphc: wrote {out}\n"
    assert out.read_text() == (root / "tests" / "golden" / "two_layer_backward.txt").read_text()


# ---- JSON --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("example", EXAMPLES)
@pytest.mark.parametrize("backward", [False, True])
def test_json_round_trips_through_networkx(example, backward, root, capsys):
    module = compiled(example)
    G = module.adjoint if backward else module.graph
    text = show(capsys, f"examples/{example}.toml", *(["--backward"] if backward else []), "--format", "json")
    back = nx.node_link_graph(json.loads(text), edges="edges")
    assert isinstance(back, nx.DiGraph) and back.is_directed()
    assert list(back.nodes) == list(G.nodes)
    assert set(back.edges) == set(G.edges)
    for v in G:  # same attributes, up to tuples coming back as lists
        assert json.loads(json.dumps(G.nodes[v])) == back.nodes[v], v
    assert back.graph == json.loads(json.dumps(G.graph))


# ---- DOT ---------------------------------------------------------------------------------------------------

NODE = re.compile(r'^\s*"([^"]+)" \[label="([^"]*)", ([^\]]*)\];$', re.M)
EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)" \[label="([^"]*)"', re.M)


def parse_dot(text):
    assert text.startswith("digraph ") and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    nodes = {name: style for name, _, style in NODE.findall(text)}
    edges = {(u, v): label for u, v, label in EDGE.findall(text)}
    return nodes, edges


def through_views(A, v):
    """What adjoint node ``v`` reads: its operands, seen through inline views (h.T) and without constants."""
    out = []
    for u in operands(A, v):
        op = A.nodes[u]["op"]
        if op == "transpose":
            out += through_views(A, u)
        elif op != "const":
            out.append(u)
    return out


def shape_label(shape):
    return "[" + ",".join(map(str, shape)) + "]"


def test_forward_dot_has_every_node_and_edge_labelled_with_shapes(root, capsys):
    G = compiled("two_layer").graph
    nodes, edges = parse_dot(show(capsys, "examples/two_layer.toml", "--format", "dot"))
    assert set(nodes) == set(G.nodes)
    assert edges == {(u, v): shape_label(G.nodes[u]["shape"]) for u, v in G.edges}


def test_backward_dot_has_both_graphs_and_tells_them_apart(root, capsys):
    module = compiled("two_layer")
    G, A = module.graph, module.adjoint
    nodes, edges = parse_dot(show(capsys, "examples/two_layer.toml", "--backward", "--format", "dot"))
    statements = [v for v in A if is_statement(A, v)]
    assert set(nodes) == set(G) | set(statements)
    expected = {(u, v): shape_label(G.nodes[u]["shape"]) for u, v in G.edges}
    for v in statements:
        for u in through_views(A, v):
            expected[u, v] = shape_label((A if A.nodes[u]["op"] != "forward" else G).nodes[u]["shape"])
    assert edges == expected
    assert ("h", "dW2") in edges and ("X", "dW1") in edges  # the transposes are drawn as the values they view
    fill = {v: re.search(r'fillcolor="([^"]+)"', style).group(1) for v, style in nodes.items()}
    forward_colours = {fill[v] for v in G if G.nodes[v]["op"] not in ("input", "param")}
    backward_colours = {fill[v] for v in statements}
    assert forward_colours and backward_colours and not forward_colours & backward_colours
    assert all("peripheries=2" in nodes[g] for g in A.graph["grads"].values())  # each param's gradient stands out


def test_dot_is_accepted_by_graphviz(root, capsys):
    if shutil.which("dot") is None:  # the structural checks above still ran
        return
    for args in ([], ["--backward"]):
        text = show(capsys, "examples/chain_rule.toml", *args, "--format", "dot")
        done = subprocess.run(["dot", "-Tcanon"], input=text, capture_output=True, text=True)
        assert done.returncode == 0 and done.stderr == "", done.stderr


# ---- saved values ------------------------------------------------------------------------------------------

def test_saved_lists_exactly_what_the_backward_reads_with_bytes(root, capsys):
    text = show(capsys, "examples/two_layer.toml", "--saved")
    rows = [line.split() for line in text.splitlines()[3:-2]]
    assert rows == [
        ["X", "input", "[32,100]", "float64", str(32 * 100 * 8)],
        ["y", "input", "[32,10]", "float64", str(32 * 10 * 8)],
        ["W2", "param", "[200,10]", "float64", str(200 * 10 * 8)],
        ["h", "activation", "[32,200]", "float64", str(32 * 200 * 8)],
        ["pred", "activation", "[32,10]", "float64", str(32 * 10 * 8)],
    ]
    # exactly the forward values the adjoint graph reads
    A = compiled("two_layer").adjoint
    assert {r[0] for r in rows} == {v for v, op in A.nodes(data="op") if op == "forward"}
    total = 25600 + 2560 + 16000 + 51200 + 2560
    assert f"total: 5 values, {total} bytes (95.6 KiB)" in text
    assert "h, pred: 53760 bytes (52.5 KiB)" in text


def test_saved_json_and_float32(root, capsys):
    data = json.loads(show(capsys, "examples/two_layer.toml", "--saved", "--format", "json", "--dtype", "float32"))
    assert [(v["name"], v["bytes"], v["dtype"]) for v in data["values"]] == [
        ("X", 12800, "float32"), ("y", 1280, "float32"), ("W2", 8000, "float32"), ("h", 25600, "float32"),
        ("pred", 1280, "float32")]
    assert data["total_bytes"] == 48960 and data["activation_bytes"] == 26880


# ---- pictures ----------------------------------------------------------------------------------------------

def test_svg_is_rendered_by_graphviz(root, tmp_path, capsys):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed: SVG rendering was not tested")
    out = tmp_path / "two_layer.svg"
    assert main(["show", "examples/two_layer.toml", "--backward", "--format", "svg", "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"graphc: wrote {out}\n"
    svg = out.read_text()
    assert "<svg" in svg and "dW1 [100,200]" in svg and "h.T @ dpred" in svg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two_layer.svg"]  # no temporary file left behind


def test_missing_graphviz_is_one_line_and_leaves_the_file(root, tmp_path):
    shutil.copy(root / "examples" / "two_layer.toml", tmp_path)
    (tmp_path / "picture.svg").write_text("precious")
    env = {"PATH": str(tmp_path / "nowhere")}
    result = graphc("show", "two_layer.toml", "--format", "svg", "-o", "picture.svg", cwd=tmp_path, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"graphc: error: {explain.INSTALL_DOT}\n"
    assert "apt-get install graphviz" in result.stderr and "brew install graphviz" in result.stderr
    assert (tmp_path / "picture.svg").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picture.svg", "two_layer.toml"]


def test_readme_picture_is_committed_and_current(root):
    svg = (root / "docs" / "two_layer_backward.svg").read_text()
    assert "docs/two_layer_backward.svg" in (root / "README.md").read_text()
    module = compiled("two_layer")
    for v in [*module.graph, *(v for v in module.adjoint if is_statement(module.adjoint, v))]:
        assert f">{v} [" in svg, f"docs/two_layer_backward.svg lacks {v}: re-render it (see the README)"


# ---- errors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--saved", "--format", "dot"], "--saved has no --format dot (it has: text, json)"),
    (["--saved", "--format", "png", "-o", "x.png"], "--saved has no --format png (it has: text, json)"),
    (["--backward", "--format", "png"], "--format png writes an image file: give -o FILE.png"),
])
def test_bad_show_options_are_one_line_exit_2(args, message, root, capsys):
    assert main(["show", "examples/two_layer.toml", *args]) == 2
    assert capsys.readouterr() == ("", f"graphc: error: {message}\n")


def test_bad_spec_is_one_line_exit_2(root, capsys):
    assert main(["show", "tests/specs/unknown_op.toml", "--backward"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("graphc: error: tests/specs/unknown_op.toml: node 'h': unknown op 'mish'")
    assert err.count("\n") == 1


INFERENCE_ONLY = """
[inputs]
X = [4, 3]
[params]
W = { shape = [3, 2], init = "randn" }
[nodes]
pred = "tanh(X @ W)"
[train]
outputs = ["pred"]
"""


@pytest.mark.parametrize("flag", ["--backward", "--saved", "--memory"])
def test_a_graph_without_a_loss_shows_its_forward_graph_and_refuses_the_training_views(flag, tmp_path, capsys):
    spec = tmp_path / "infer.toml"
    spec.write_text(INFERENCE_ONLY)
    assert main(["show", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "# loss: none; outputs: pred;" in out and "pred[4,2] = np.tanh(pred_matmul)  # an output" in out
    assert main(["show", str(spec), flag]) == 2
    assert capsys.readouterr() == ("", f"graphc: error: {spec}: the graph has no [train] loss, so no training step "
                                       f"to show ({flag}): only the forward view\n")


def test_saved_and_backward_are_exclusive(root, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["show", "examples/two_layer.toml", "--saved", "--backward"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.startswith("graphc: error: argument --backward: not allowed with argument --saved")


# ---- memory: the buffer plan of Trainer.step -----------------------------------------------------------------

def test_memory_lists_every_buffer_and_every_value_once(root, capsys):
    text = show(capsys, "examples/two_layer.toml", "--memory")
    ws = compiled("two_layer").schedule.workspace
    rows = [line.split(None, 4) for line in text.splitlines() if line.startswith("_buf")]
    assert [r[0] for r in rows] == [f"_buf{i}" for i in range(len(ws.buffers))]
    assert [int(r[3]) for r in rows] == [b.nbytes for b in ws.buffers]
    held = [v for r in rows for v in r[4].split(", ") if not v.startswith("scratch")]
    body = compiled("two_layer").schedule.train.body
    assert sorted(held) == sorted(s.node for s in body if s.node != "loss")  # every array of the step, once
    assert f"workspace: {len(ws.buffers)} buffers, {ws.nbytes} bytes" in text
    assert f"every intermediate in an array of its own: {ws.intermediates} bytes" in text
    assert ws.nbytes < ws.intermediates


def test_memory_json(root, capsys):
    data = json.loads(show(capsys, "examples/two_layer.toml", "--memory", "--format", "json"))
    ws = compiled("two_layer").schedule.workspace
    assert data["workspace_bytes"] == ws.nbytes == sum(b["bytes"] for b in data["buffers"])
    assert [b["holds"] for b in data["buffers"]] == [b.values for b in ws.buffers]


def test_show_never_writes_over_a_spec(root, tmp_path):
    spec = tmp_path / "m.toml"
    shutil.copy(root / "examples" / "chain_rule.toml", spec)
    before = spec.read_bytes()
    for fmt in ("text", "svg"):
        result = graphc("show", "m.toml", "--format", fmt, "-o", "m.toml", cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr == "graphc: error: m.toml: cannot write to a .toml file, the kind a spec is: " \
                                "choose another name\n"
        assert spec.read_bytes() == before
