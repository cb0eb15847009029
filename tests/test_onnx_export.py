"""graphc export: the forward graph of a spec's outputs as an ONNX model that onnx.checker accepts (full check) and
that onnx.reference and onnxruntime evaluate to what the generated predict computes; import of the export
predicts the same (round trip). Bad input: one line, exit 2, nothing written."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx.reference import ReferenceEvaluator

import graphc as gc
from graphc.cli import main
from graphc.spec import load_spec

pytestmark = pytest.mark.unformatted

FIXTURES = Path(__file__).parent / "onnx"

OPS_SPEC = """
name = "every_op"

[dims]
N = 4

[inputs]
X = ["N", 5]
Y = ["N", 3]
unused = ["N", 2]

[params]
W = { shape = [5, 3], init = "randn", scale = 0.5 }
V = { shape = [3, 3], init = "randn" }
b = { shape = [3], init = "ones" }

[nodes]
h = "sigmoid(X @ W + b) / (1.5 + exp(-tanh(Y)))"
k = "leaky_relu(h @ transpose(V) - b, negative_slope=0.1) * 2.0"
probs = "softmax(k, axis=1)"
logp = "log_softmax(k)"
stats = "sum(log(probs + 1.0), axis=0, keepdims=True) + mean(k, axis=1, keepdims=True) - mean(k) + sum(k)"
err = "mse(probs, Y)"

[train]
loss = "err"
outputs = ["probs", "logp", "stats"]
dtype = "float32"
"""


def graphc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"onnx_export_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def compiled(spec: Path):
    out = spec.with_name(f"{spec.stem}_module.py")
    assert main(["compile", str(spec), "-o", str(out)]) == 0
    return load_module(out)


def evaluate(path: Path, feeds: dict) -> dict:
    """The model's outputs by onnx.reference and by onnxruntime: ``{"reference": [...], "onnxruntime": [...]}``."""
    model = onnx.load(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {"reference": ReferenceEvaluator(model).run(None, feeds), "onnxruntime": session.run(None, feeds)}


def assert_engines_predict(path: Path, feeds: dict, want: tuple, outputs: int) -> None:
    """Both engines (see evaluate) give the model's ``outputs`` outputs, of ``want``'s shapes and values (float32
    tolerance)."""
    for engine, got in evaluate(path, feeds).items():
        assert len(got) == outputs, engine
        for a, b in zip(got, want):
            assert a.shape == b.shape, engine
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=engine)


def check_model(path: Path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    return model


def dims_of(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_every_op_exports_and_evaluates_to_what_predict_computes(tmp_path):
    spec = tmp_path / "every_op.toml"
    spec.write_text(OPS_SPEC)
    result = graphc("export", "every_op.toml", "-o", "every_op.onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "graphc: wrote every_op.onnx\n"
    model = check_model(tmp_path / "every_op.onnx")
    # graph inputs are exactly those the outputs need, with the named dimension as a dim_param
    assert [(v.name, dims_of(v)) for v in model.graph.input] == [("X", ["N", 5]), ("Y", ["N", 3])]
    assert [o.name for o in model.graph.output] == ["probs", "logp", "stats"]
    assert {t.name for t in model.graph.initializer} >= {"W", "V", "b"}
    mod = compiled(spec)
    params = mod.init_params(0)  # without --params: the module's init_params(0)
    for n in (1, 4, 7):
        rng = np.random.default_rng(n)
        X, Y = (rng.standard_normal((n, w)).astype(np.float32) for w in (5, 3))
        want = as_tuple(mod.predict(params, X, Y))
        for engine, got in evaluate(tmp_path / "every_op.onnx", {"X": X, "Y": Y}).items():
            assert len(got) == 3
            for a, b in zip(got, want):
                assert a.shape == b.shape and a.dtype == np.float32, engine
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=engine)


CONV_SPEC = """
name = "conv_ops"

[dims]
N = 4
M = 3

[inputs]
X = ["N", 2, 8, 8]
Z = ["N", "M"]
S = ["N", 3, 10]
F = ["N", 6]

[params]
w1 = { shape = [4, 2, 3, 3], init = "randn", scale = 0.3 }
b1 = { shape = [4], init = "randn" }
wd = { shape = [4, 1, 3, 3], init = "randn", scale = 0.3 }
wt = { shape = [4, 2, 3, 3], init = "randn", scale = 0.3 }
w1d = { shape = [5, 3, 3], init = "randn", scale = 0.3 }
g = { shape = [6], init = "randn" }
beta = { shape = [6], init = "randn" }

[nodes]
c = "relu(conv2d(X, w1, b1, padding='same'))"
d = "conv2d(c, wd, stride=2, padding=1, groups=4, dilation=1)"
t = "conv_transpose2d(d, wt, stride=2, padding=1, output_padding=1)"
pooled = "avg_pool2d(c, 3, 2, 1, count_include_pad=False)"
pools = "concat(flatten(max_pool2d(c, 2)), flatten(pooled), flatten(adaptive_avg_pool2d(c, (2, 2))), axis=1)"
views = "reshape(flatten(t, 2), (N, 2, -1)) + reshape(reshape(t, (2, N, 64)), (N, 2, 64))"
swap = "reshape(Z, (M, N)) * 2.0"
top = "max(gelu(conv1d(S, w1d, padding='same', dilation=2)), axis=2)"
seq = "top + min(sqrt(pow(conv1d(S, w1d, stride=2), 2.0) + 1.0), axis=2, keepdims=False)"
norm = "clip(layer_norm(F, g, beta, eps=0.001), -1.0, 1.5) + layer_norm(gelu(F, approximate='tanh'))"
norm2 = "norm + clip(erf(F), min=0.0)"
cut = "slice(slice(F, axis=1, start=4, stop=0, step=-2), axis=1, start=1) + slice(F, start=-1, step=-3)"
rest = "rms_norm(silu(F), g) + rms_norm(softplus(F * 15.0), eps=0.01)"

[train]
outputs = ["pools", "views", "swap", "seq", "norm2", "cut", "rest"]
dtype = "float32"
"""


def test_conv_and_section_15_ops_export_and_evaluate_to_what_predict_computes(tmp_path):
    """conv2d ('same', groups, stride), conv_transpose2d, conv1d, the poolings, flatten and reshape with named
    dimensions (one moved: built from the input's Shape), gelu, pow, sqrt, erf, clip, layer_norm (with and without
    weight), rms_norm, silu, softplus (past its threshold too), max, min, concat, slice."""
    spec = tmp_path / "conv_ops.toml"
    spec.write_text(CONV_SPEC)
    assert main(["export", str(spec), "-o", str(tmp_path / "conv_ops.onnx")]) == 0
    model = check_model(tmp_path / "conv_ops.onnx")
    assert {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "Flatten", "Reshape", "Erf", "Pow", "Sqrt", "Clip",
            "LayerNormalization", "ReduceMax", "ReduceMin", "Concat", "Slice"} <= {n.op_type for n in model.graph.node}
    mod = compiled(spec)
    params = mod.init_params(0)
    for n in (1, 3):
        rng = np.random.default_rng(n)
        feeds = {"X": rng.standard_normal((n, 2, 8, 8)), "S": rng.standard_normal((n, 3, 10)),
                 "F": rng.standard_normal((n, 6)), "Z": rng.standard_normal((n, 3))}
        feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
        want = as_tuple(mod.predict(params, **feeds))
        assert_engines_predict(tmp_path / "conv_ops.onnx", feeds, want, 7)
    # and back in: the import of the export predicts the same (but for softplus's Where, which import lacks)
    (tmp_path / "again").mkdir()
    spec.write_text(CONV_SPEC.replace('"cut", "rest"]', '"cut"]'))
    assert main(["export", str(spec), "-o", str(tmp_path / "again" / "m.onnx")]) == 0
    assert main(["import", str(tmp_path / "again" / "m.onnx"), "-o", str(tmp_path / "again" / "m.toml")]) == 0
    again = compiled(tmp_path / "again" / "m.toml")
    for a, b in zip(as_tuple(again.predict(again.init_params(), **feeds)), want[:-1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_losses_export_too(tmp_path):
    """mse, cross_entropy (class indices and probabilities) and binary_cross_entropy_with_logits as outputs."""
    spec = tmp_path / "losses.toml"
    spec.write_text("""
[dims]
N = 6
[inputs]
X = ["N", 4]
labels = { shape = ["N"], dtype = "int64" }
P = ["N", 3]
[params]
W = { shape = [4, 3], init = "randn" }
[nodes]
z = "X @ W"
ce = "cross_entropy(z, labels)"
ce_sum = "cross_entropy(z, P, reduction='sum')"
bce = "binary_cross_entropy_with_logits(z * 10.0, P)"
sq = "mse(z, P, reduction='sum')"
total = "ce + ce_sum + bce + sq"
[train]
loss = "total"
outputs = ["ce", "ce_sum", "bce", "sq"]
dtype = "float64"
""")
    assert main(["export", str(spec), "-o", str(tmp_path / "losses.onnx")]) == 0
    check_model(tmp_path / "losses.onnx")
    mod = compiled(spec)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((6, 4))
    labels = rng.integers(0, 3, 6)
    P = rng.uniform(size=(6, 3))
    want = as_tuple(mod.predict(mod.init_params(0), X, labels, P))
    for engine, got in evaluate(tmp_path / "losses.onnx", {"X": X, "labels": labels, "P": P}).items():
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-10, err_msg=engine)


def test_trained_params_round_trip_through_onnx(tmp_path):
    """Import the PyTorch MLP, export it with trained params, import the export: the same predictions."""
    spec = tmp_path / "mlp.toml"
    assert main(["import", str(FIXTURES / "mlp.onnx"), "-o", str(spec), "--dim", "N=8"]) == 0
    mod = compiled(spec)
    rng = np.random.default_rng(0)
    trained = {k: v + rng.standard_normal(v.shape).astype(np.float32) * 0.1 for k, v in mod.init_params().items()}
    np.savez(tmp_path / "trained.npz", **trained)
    result = graphc("export", "mlp.toml", "--params", "trained.npz", "-o", "served.onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model = check_model(tmp_path / "served.onnx")
    assert dims_of(model.graph.input[0]) == ["N", 4]
    for t in model.graph.initializer:
        if t.name in trained:
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), trained[t.name])
    x = rng.standard_normal((5, 4)).astype(np.float32)
    want = mod.predict(trained, x)
    for engine, got in evaluate(tmp_path / "served.onnx", {"x": x}).items():
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6, err_msg=engine)
    # round trip: graphc import of the export, compiled, predicts the same from its own .npz
    (tmp_path / "again").mkdir()
    assert main(["import", str(tmp_path / "served.onnx"), "-o", str(tmp_path / "again" / "m.toml"),
                 "--dim", "N=5"]) == 0
    again = compiled(tmp_path / "again" / "m.toml")
    np.testing.assert_allclose(again.predict(again.init_params(), x), want, rtol=1e-6, atol=1e-7)
    g, values = gc.from_onnx(tmp_path / "served.onnx")
    assert sorted(values) == sorted(trained)


def test_export_of_an_import_keeps_the_spec_outputs_and_params(tmp_path):
    spec = tmp_path / "act.toml"
    assert main(["import", str(FIXTURES / "activations.onnx"), "-o", str(spec), "--dim", "N=2"]) == 0
    assert main(["export", str(spec), "-o", str(tmp_path / "act.onnx")]) == 0
    model = check_model(tmp_path / "act.onnx")
    assert [o.name for o in model.graph.output] == load_spec(spec).outputs == ["probs", "log_probs"]
    with np.load(FIXTURES / "activations.npz") as ref:
        for engine, got in evaluate(tmp_path / "act.onnx", {"x": ref["in0_8"]}).items():
            np.testing.assert_allclose(got[0], ref["out0_8"], rtol=1e-5, atol=1e-6, err_msg=engine)
            np.testing.assert_allclose(got[1], ref["out1_8"], rtol=1e-5, atol=1e-5, err_msg=engine)


@pytest.mark.parametrize("params, message", [
    ({"W": np.zeros((5, 3), np.float32), "V": np.zeros((3, 3), np.float32)}, "trained.npz: node 'b': no array for param 'b'"),
    ({"W": np.zeros((3, 5), np.float32), "V": np.zeros((3, 3), np.float32), "b": np.zeros(3, np.float32)},
     "trained.npz: node 'W': param 'W' has shape (3, 5), the spec says (5, 3)"),
])
def test_params_that_do_not_fit_are_one_line_and_nothing_is_written(params, message, tmp_path):
    (tmp_path / "every_op.toml").write_text(OPS_SPEC)
    np.savez(tmp_path / "trained.npz", **params)
    result = graphc("export", "every_op.toml", "--params", "trained.npz", "-o", "m.onnx", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"graphc: error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["every_op.toml", "trained.npz"]


def test_export_never_writes_over_a_spec_or_the_params(tmp_path):
    (tmp_path / "every_op.toml").write_text(OPS_SPEC)
    result = graphc("export", "every_op.toml", "-o", "every_op.toml", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert (tmp_path / "every_op.toml").read_text() == OPS_SPEC
    (tmp_path / "p.onnx").write_bytes(b"x")
    result = graphc("export", "every_op.toml", "--params", "p.onnx", "-o", "p.onnx", cwd=tmp_path)
    assert result.returncode == 2 and (tmp_path / "p.onnx").read_bytes() == b"x"
    result = graphc("export", "every_op.toml", "--params", "missing.npz", "-o", "m.onnx", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == "graphc: error: missing.npz: cannot read the params: no such file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["every_op.toml", "p.onnx"]


SECTION_16_SPEC = """
name = "section_16"

[dims]
N = 3

[inputs]
ids = { shape = ["N", 4], dtype = "int64" }
keep = { shape = ["N", 4, 6], dtype = "bool" }
X = ["N", 2, 5]

[params]
tok = { shape = [7, 6], init = "randn" }
Wq = { shape = [6, 6], init = "randn", scale = 0.4 }
W3 = { shape = [2, 5, 6], init = "randn", scale = 0.4 }
bn_w = { shape = [2], init = "randn" }
bn_b = { shape = [2], init = "randn" }
bn_mean = { shape = [2], init = "randn", trainable = false }
bn_var = { shape = [2], init = "ones", trainable = false }

[nodes]
e = "embedding(ids, tok)"
heads = "transpose(reshape(e @ Wq, (N, 4, 2, 3)), axes=(0, 2, 1, -1))"
att = "attention(heads, heads, heads, causal=True)"
mixed = "transpose(att, axes=(0, 2, 1, 3))"
picked = "where(keep, e, -e * 2.0)"
bn = "batch_norm(dropout(X, 0.25), bn_w, bn_b, bn_mean, bn_var, momentum=0.2, eps=0.001)"
batched = "transpose(bn, axes=(1, 0, 2)) @ W3"

[train]
outputs = ["mixed", "picked", "batched"]
dtype = "float32"
"""


def test_section_16_ops_export_and_evaluate_to_what_predict_computes(tmp_path):
    """transpose with axes (perm, negative axes normalised), matmul at rank 3 and 4, embedding (Gather), where of a
    bool input, causal attention (MatMul and Softmax), dropout (the identity), batch_norm in evaluation form; and
    the import of the export predicts the same (trainable = false params stay frozen)."""
    spec = tmp_path / "s16.toml"
    spec.write_text(SECTION_16_SPEC)
    assert main(["export", str(spec), "-o", str(tmp_path / "s16.onnx")]) == 0
    model = check_model(tmp_path / "s16.onnx")
    kinds = {n.op_type for n in model.graph.node}
    assert {"Gather", "Where", "BatchNormalization", "Softmax", "Identity", "Transpose", "MatMul"} <= kinds
    perms = [list(a.ints) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute]
    assert [0, 2, 1, 3] in perms and [1, 0, 2] in perms
    mod = compiled(spec)
    params = mod.init_params(0)
    rng = np.random.default_rng(5)
    for n in (1, 3):
        feeds = {"ids": rng.integers(0, 7, (n, 4)).astype(np.int64), "keep": rng.random((n, 4, 6)) < 0.5,
                 "X": rng.standard_normal((n, 2, 5)).astype(np.float32)}
        want = as_tuple(mod.predict(params, **feeds))
        assert_engines_predict(tmp_path / "s16.onnx", feeds, want, 3)
    (tmp_path / "again").mkdir()
    assert main(["import", str(tmp_path / "s16.onnx"), "-o", str(tmp_path / "again" / "m.toml")]) == 0
    text = (tmp_path / "again" / "m.toml").read_text()
    assert 'dtype = "int64"' in text and 'dtype = "bool"' in text and text.count("trainable = false") == 2
    assert "embedding(ids, tok)" in text and "where(keep, " in text and "axes=(0, 2, 1, 3)" in text
    again = compiled(tmp_path / "again" / "m.toml")
    for a, b in zip(as_tuple(again.predict(again.init_params(), **feeds)), want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
