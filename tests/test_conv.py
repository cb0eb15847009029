"""Convolutional ops (DESIGN section 14, phase A): values and gradients against torch.nn.functional and against
finite differences, the workspace form against the pure functions, and the one-line errors. One table of cases,
one helper."""

import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import graphc as gc
from gradcheck import check_gradients, random_inputs, random_params
from test_memory import assert_trainer_matches_value_and_grad

F = torch.nn.functional  # the reference (the test extra pins torch)
# torch's own note that its 'same' padding of an even kernel copies the input: about torch, not about graphc
pytestmark = [pytest.mark.unformatted,
              pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")]

# op -> the torch reference, called with the operands (torch tensors) and the case's attrs
REFERENCE = {
    "conv2d": lambda x, w, b=None, **a: F.conv2d(x, w, b, **a),
    "conv1d": lambda x, w, b=None, **a: F.conv1d(x, w, b, **a),
    "conv_transpose2d": lambda x, w, b=None, **a: F.conv_transpose2d(x, w, b, **a),
    "max_pool2d": lambda x, **a: F.max_pool2d(x, **a),
    "avg_pool2d": lambda x, **a: F.avg_pool2d(x, **a),
    "adaptive_avg_pool2d": lambda x, **a: F.adaptive_avg_pool2d(x, **a),
    "flatten": lambda x, start_dim=1: torch.flatten(x, start_dim),
    "reshape": lambda x, shape: torch.reshape(x, shape),
}

# (op, operand shapes, attrs): strides, paddings ('same' with an even kernel too), dilations, groups
CASES = [
    ("conv2d", [(2, 3, 6, 5), (4, 3, 3, 3), (4,)], {}),
    ("conv2d", [(2, 3, 7, 6), (4, 3, 3, 3), (4,)], {"stride": 2, "padding": 1}),
    ("conv2d", [(2, 2, 9, 8), (3, 2, 3, 2)], {"stride": (2, 1), "padding": (1, 2), "dilation": 2}),
    ("conv2d", [(1, 2, 6, 7), (3, 2, 2, 3), (3,)], {"padding": "same"}),
    ("conv2d", [(1, 2, 7, 7), (3, 2, 3, 3), (3,)], {"padding": "same", "dilation": (2, 1)}),
    ("conv2d", [(2, 2, 5, 6), (3, 2, 3, 3)], {"padding": "valid"}),
    ("conv2d", [(2, 4, 5, 5), (6, 2, 3, 3), (6,)], {"groups": 2, "padding": 1}),
    ("conv2d", [(2, 3, 5, 5), (3, 1, 3, 3)], {"groups": 3, "stride": 2}),  # depthwise
    ("conv2d", [(2, 3, 4, 4), (5, 3, 1, 1), (5,)], {}),  # 1x1
    ("conv2d", [(2, 2, 3, 3), (2, 2, 3, 3), (2,)], {}),  # the kernel covers the input: 1x1 output
    ("conv1d", [(2, 3, 9), (4, 3, 3), (4,)], {}),
    ("conv1d", [(2, 4, 10), (6, 2, 3), (6,)], {"stride": 2, "padding": 2, "dilation": 2, "groups": 2}),
    ("conv1d", [(1, 2, 7), (3, 2, 4)], {"padding": "same"}),
    ("conv_transpose2d", [(2, 3, 4, 5), (3, 2, 3, 3), (2,)], {}),
    ("conv_transpose2d", [(2, 4, 3, 4), (4, 3, 3, 2), (6,)], {"stride": 2, "padding": 1, "output_padding": 1,
                                                               "groups": 2}),
    ("conv_transpose2d", [(1, 2, 4, 3), (2, 2, 2, 3)], {"stride": (1, 2), "padding": (1, 0), "dilation": 2}),
    ("max_pool2d", [(2, 3, 6, 6)], {"kernel_size": 2}),  # windows that tile x: a reshape
    ("max_pool2d", [(2, 2, 7, 6)], {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("max_pool2d", [(1, 2, 5, 7)], {"kernel_size": (2, 3), "stride": (1, 2)}),
    ("max_pool2d", [(2, 1, 7, 5)], {"kernel_size": 2}),  # the last row and column are in no window
    ("avg_pool2d", [(2, 3, 6, 6)], {"kernel_size": 2}),
    ("avg_pool2d", [(2, 2, 7, 6)], {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("avg_pool2d", [(2, 2, 7, 6)], {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
    ("avg_pool2d", [(1, 2, 5, 7)], {"kernel_size": (2, 3), "stride": 1}),
    ("adaptive_avg_pool2d", [(2, 3, 6, 4)], {"output_size": 1}),  # global average
    ("adaptive_avg_pool2d", [(2, 3, 6, 4)], {"output_size": (3, 2)}),
    ("flatten", [(2, 3, 4, 5)], {}),
    ("flatten", [(2, 3, 4, 5)], {"start_dim": 2}),
    ("reshape", [(2, 3, 4)], {"shape": (6, -1)}),
    ("reshape", [(2, 3, 4)], {"shape": (4, 3, 2)}),
]


def case_id(case):
    op, shapes, attrs = case
    return f"{op}-{'-'.join(str(s) for s in shapes)}{''.join(f'-{k}={v}' for k, v in attrs.items())}"


def build(op, shapes, attrs, dtype="float64"):
    """op(p0, p1, ...) over params, and a loss through mse against a random target."""
    g = gc.Graph("case", dtype=dtype)
    args = [g.param(f"p{i}", shape) for i, shape in enumerate(shapes)]
    out = g.apply(op, *args, name="out", **attrs)
    return g, out, gc.mse(out, g.input("target", out.shape), reduction="sum", name="loss")


def torch_value_and_grads(op, attrs, params, target, dtype=torch.float64):
    """The torch reference: the op's value, and the gradients of the same mse loss."""
    tensors = [torch.tensor(params[f"p{i}"], dtype=dtype, requires_grad=True) for i in range(len(params))]
    out = REFERENCE[op](*tensors, **attrs)
    ((out - torch.tensor(target, dtype=dtype)) ** 2).sum().backward()
    return out.detach().numpy(), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_op(case):
    op, shapes, attrs = case
    g, out, loss = build(op, shapes, attrs)
    mod = gc.compile(g, loss=loss, outputs=[out]).load()
    params, inputs = random_params(mod), random_inputs(mod)
    expected, grads = torch_value_and_grads(op, attrs, params, inputs[0])
    assert out.shape == expected.shape  # the shape rule agrees with torch
    np.testing.assert_allclose(mod.predict(params), expected, rtol=1e-12, atol=1e-13)
    _, ours = mod.value_and_grad(params, *inputs)
    for i, grad in enumerate(grads):
        np.testing.assert_allclose(ours[f"p{i}"], grad, rtol=1e-11, atol=1e-12, err_msg=f"d loss / d p{i}")
    check_gradients(mod, params, inputs)
    assert_trainer_matches_value_and_grad(mod, params, inputs, steps=2)  # the workspace forms agree


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "reshape" and c[0] != "flatten"][::3], ids=case_id)
def test_op_in_float32(case):
    op, shapes, attrs = case
    g, out, loss = build(op, shapes, attrs, dtype="float32")
    mod = gc.compile(g, loss=loss, outputs=[out]).load()
    params = {k: v.astype(np.float32) for k, v in random_params(mod).items()}
    target = random_inputs(mod)[0].astype(np.float32)
    expected, grads = torch_value_and_grads(op, attrs, params, target, dtype=torch.float32)
    value = mod.predict(params)
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()}, lr=1.0)
    trainer.step(target)  # the workspace form: params - grads
    for i, grad in enumerate(grads):
        np.testing.assert_allclose(params[f"p{i}"] - trainer.params[f"p{i}"], grad, rtol=1e-4, atol=1e-4)


def test_max_pool_gradient_goes_to_the_first_maximum_as_torch():
    g = gc.Graph("ties")
    x = g.param("x", (1, 1, 4, 4))
    loss = gc.sum(gc.max_pool2d(x, 2, stride=1), name="loss")  # overlapping windows, many ties
    mod = gc.compile(g, loss=loss).load()
    params = {"x": np.array([[[[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 2.0, 2.0], [0.0, 3.0, 3.0, 0.0],
                                [3.0, 3.0, 3.0, 3.0]]]])}
    tx = torch.tensor(params["x"], requires_grad=True)
    F.max_pool2d(tx, 2, stride=1).sum().backward()
    _, grads = mod.value_and_grad(params)
    np.testing.assert_array_equal(grads["x"], tx.grad.numpy())
    trainer = mod.Trainer({"x": params["x"].copy()}, lr=1.0)
    trainer.step()
    np.testing.assert_array_equal(params["x"] - trainer.params["x"], tx.grad.numpy())


# ---- a small CNN with a named batch dimension: any batch size, the spec's forms ------------------------------

CNN_SPEC = """
[inputs]
X = ["N", 1, 8, 8]
y = { shape = ["N"], dtype = "int64" }

[params]
w1 = { shape = [4, 1, 3, 3], scale = 0.5 }
b1 = { shape = [4], init = "zeros" }
w2 = { shape = [6, 2, 3, 3], scale = 0.3 }
W = { shape = [24, 10], scale = 0.2 }

[nodes]
h1 = "relu(conv2d(X, w1, b1, padding='same'))"
p1 = "max_pool2d(h1, 2)"
h2 = "conv2d(p1, w2, stride=(1, 1), padding=1, groups=2)"
p2 = "avg_pool2d(h2, (2, 2), 2, 0, count_include_pad=False)"
f = "reshape(p2, (N, -1))"
logits = "flatten(f) @ W"
loss = "cross_entropy(logits, y)"

[train]
loss = "loss"
outputs = ["logits"]
optimizer = "adam"
lr = 0.01

[dims]
N = 4
"""


def torch_cnn(params, X):
    t = {k: torch.tensor(v) for k, v in params.items()}
    h1 = F.relu(F.conv2d(torch.tensor(X), t["w1"], t["b1"], padding="same"))
    h2 = F.conv2d(F.max_pool2d(h1, 2), t["w2"], padding=1, groups=2)
    return (F.avg_pool2d(h2, 2).reshape(len(X), -1) @ t["W"]).numpy()


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    path = tmp_path_factory.mktemp("cnn") / "cnn.toml"
    path.write_text(CNN_SPEC)
    spec = gc.load_spec(path)
    return gc.compile(spec.graph, **spec.options())


def test_spec_cnn_runs_at_any_batch_size(cnn):
    assert cnn.graph.nodes["f"]["shape"] == ("N", 24)
    mod = cnn.load()
    params = random_params(mod)
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()})
    for n in (1, 3, 4, 3):
        inputs = random_inputs(mod, seed=n, dims={"N": n})
        np.testing.assert_allclose(mod.predict(params, inputs[0]), torch_cnn(params, inputs[0]), rtol=1e-12,
                                   atol=1e-13)
        trainer.step(*inputs)
    inputs = random_inputs(mod, dims={"N": 3})
    check_gradients(mod, params, inputs)


def test_backward_is_readable(cnn):
    step = cnn.source.split("def _step")[1].split("def _workspace")[0]
    assert "# via h1_conv2d = conv2d(X, w1, b1" in step  # every statement says which node it comes from
    assert "X_cols = _buf" in step and "already computed for h1_conv2d" in step  # im2col kept, not redone
    # col2im (stride 1): a loop over the kernel rows, then one over its columns, and no other
    assert "for _i in range(3):" in step and "for _j in range(3):" in step
    assert {line.strip() for line in step.splitlines() if line.strip().startswith("for ")} <= {
        "for _i in range(3):", "for _j in range(3):", "for _i, _j in np.ndindex(2, 2):", "for _k in range(1, 3):"}
    assert "add.at" not in cnn.source


# ---- bad input: one line, naming the node -----------------------------------------------------------------

@pytest.mark.parametrize("op, shapes, attrs, message", [
    ("conv2d", [(2, 3, 5, 5), (4, 2, 3, 3)], {}, "channel mismatch: x has 3 channels but w (4, 2, 3, 3) takes 2"),
    ("conv2d", [(2, 4, 5, 5), (4, 1, 3, 3)], {"groups": 2},
     "channel mismatch: x has 4 channels but w (4, 1, 3, 3) takes 2 (1 per group, 2 groups)"),
    ("conv2d", [(1, 1, 3, 3), (1, 1, 5, 5)], {}, "conv2d kernel 5x5 is larger than the padded input 3x3"),
    ("conv2d", [(1, 1, 3, 3), (1, 1, 3, 3)], {"dilation": 2},
     "conv2d kernel 3x3 (dilation (2, 2): 5x5) is larger than the padded input 3x3"),
    ("conv2d", [(1, 3, 5, 5), (4, 1, 3, 3)], {"groups": 2}, "groups=2 does not divide the 3 input channels of x"),
    ("conv2d", [(1, 4, 5, 5), (3, 2, 3, 3)], {"groups": 2}, "groups=2 does not divide the 3 output channels of w"),
    ("conv2d", [(1, 2, 5, 5), (3, 2, 3, 3), (2,)], {}, "bias (2,) must have shape (3,): one per output channel"),
    ("conv2d", [(1, 2, 5, 5), (3, 2, 3, 3)], {"padding": "same", "stride": 2}, "padding='same' needs stride 1"),
    ("conv2d", [(2, 5, 5), (3, 2, 3, 3)], {}, "conv2d needs x of shape (N, C, H, W), got (2, 5, 5)"),
    ("conv1d", [(2, 3, 5), (4, 2, 3)], {}, "channel mismatch: x has 3 channels but w (4, 2, 1, 3) takes 2"),
    ("conv1d", [(2, 3, 5, 5), (4, 3, 3)], {}, "conv1d needs x of shape (N, C, L), C and L fixed, got (2, 3, 5, 5)"),
    ("conv_transpose2d", [(1, 3, 4, 4), (2, 2, 3, 3)], {},
     "channel mismatch: x has 3 channels but w (2, 2, 3, 3) takes 2"),
    ("conv_transpose2d", [(1, 2, 4, 4), (2, 2, 3, 3)], {"stride": 2, "output_padding": 2},
     "output_padding (2, 2) must be smaller than the stride (2, 2)"),
    ("max_pool2d", [(1, 1, 2, 2)], {"kernel_size": 3}, "max_pool2d kernel 3x3 is larger than the padded input 2x2"),
    ("max_pool2d", [(1, 1, 6, 6)], {"kernel_size": 2, "padding": 2}, "padding (2, 2) must be at most half the kernel"),
    ("adaptive_avg_pool2d", [(1, 1, 6, 5)], {"output_size": 2}, "needs input sizes that are multiples of it, got 6x5"),
    ("reshape", [(2, 3, 4)], {"shape": (5, -1)}, "reshape of (2, 3, 4) to (5, -1): the sizes do not divide (24 by 5)"),
    ("reshape", [(2, 3, 4)], {"shape": (5, 5)}, "reshape of (2, 3, 4) to (5, 5): the sizes differ"),
    ("reshape", [(2, 3, 4)], {"shape": (-1, -1)}, "reshape to (-1, -1): one -1 at most"),
    ("reshape", [("N", 3, 4)], {"shape": ("M", -1)}, "dimension M does not follow from the input's dimensions"),
    ("reshape", [("N", 3, 4)], {"shape": (-1, 4)}, "the -1 would be N * 3, which is no dimension the result can have"),
    ("flatten", [("N", 3, 4)], {"start_dim": 0}, "the -1 would be N * 12"),
])
def test_shape_errors_are_one_line_naming_the_node(op, shapes, attrs, message):
    g = gc.Graph()
    args = [g.input(f"x{i}", s) for i, s in enumerate(shapes)]
    with pytest.raises(gc.ShapeError) as err:
        g.apply(op, *args, name="bad", **attrs)
    assert err.value.node == "bad" and message in str(err.value) and "\n" not in str(err.value)
    assert "bad" not in g


@pytest.mark.parametrize("op, attrs, message", [
    ("max_pool2d", {"kernel_size": 0}, "max_pool2d attribute kernel_size=0 must be a positive int or a pair of them"),
    ("avg_pool2d", {"kernel_size": (2, 0)}, "kernel_size=(2, 0) must be a positive int or a pair of them"),
    ("conv2d", {"padding": "full"}, "padding='full' must be 'same', 'valid', a non-negative int or a pair of them"),
    ("conv2d", {"groups": 0}, "groups=0 must be a positive int"),
    ("reshape", {"shape": (0, -1)}, "a tuple of positive ints, dimension names and at most one -1"),
])
def test_bad_attributes_are_one_line_naming_the_node(op, attrs, message):
    g = gc.Graph()
    args = [g.input("x", (1, 2, 4, 4))] + ([g.param("w", (2, 2, 3, 3))] if op == "conv2d" else [])
    with pytest.raises(gc.GraphError) as err:
        g.apply(op, *args, name="bad", **attrs)
    assert err.value.node == "bad" and message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_spec_is_one_line_and_exit_status_2(tmp_path):
    (tmp_path / "bad.toml").write_text(CNN_SPEC.replace("padding=1, groups=2", "padding=1, groups=3"))
    result = subprocess.run([sys.executable, "-m", "graphc", "compile", "bad.toml", "-o", "bad.py"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2 and not (tmp_path / "bad.py").exists()
    assert result.stderr.count("\n") == 1 and "node 'h2'" in result.stderr
    assert "groups=3 does not divide the 4 input channels of x" in result.stderr


def test_positional_attributes_in_a_spec_are_checked(tmp_path):
    (tmp_path / "bad.toml").write_text(CNN_SPEC.replace("max_pool2d(h1, 2)", "max_pool2d(h1, 2, 2, 0, 1)"))
    with pytest.raises(gc.SpecError, match="max_pool2d takes 1 operand and then at most kernel_size, stride, "
                                           "padding by position, got 5 arguments"):
        gc.load_spec(tmp_path / "bad.toml")
    (tmp_path / "bad.toml").write_text(CNN_SPEC.replace("max_pool2d(h1, 2)", "max_pool2d(h1, 2, kernel_size=2)"))
    with pytest.raises(gc.SpecError, match="attribute kernel_size= is given twice"):
        gc.load_spec(tmp_path / "bad.toml")


def test_the_cupy_backend_refuses_the_window_ops_with_one_line(cnn):
    with pytest.raises(gc.GraphError) as err:
        gc.compile(cnn.graph, loss="loss", backend="cupy")
    assert str(err.value) == ("node 'h1_conv2d': conv2d has no cupy template yet: compile this graph for the numpy "
                              "backend")


def test_the_digits_cnn_example_trains(root, tmp_path, capsys):
    """examples/digits_cnn.toml through examples/digits.py (a few epochs: the README reports the full run)."""
    loader = importlib.util.spec_from_file_location("digits_example", root / "examples" / "digits.py")
    example = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(example)
    example.main(["--spec", str(root / "examples" / "digits_cnn.toml"), "--module", str(tmp_path / "cnn.py"),
                  "--params", str(tmp_path / "cnn.npz"), "--epochs", "3"])
    accuracy = float(re.search(r"test accuracy: ([\d.]+)%", capsys.readouterr().out).group(1))
    assert accuracy > 90


def test_flatten_and_reshape_compile_for_cupy_and_agree_on_the_test_double(monkeypatch):
    """The views need nothing of the array module but .reshape: the CuPy module (on tests/fake_cupy.py) takes the
    same steps as the NumPy one."""
    import fake_cupy

    g = gc.Graph("views")
    X, y = g.input("X", ("N", 2, 3, 2)), g.input("y", ("N",), dtype="int64")
    h = gc.relu(gc.flatten(X) @ g.param("W", (12, 6), scale=0.3), name="h")
    logits = gc.reshape(gc.reshape(h, ("N", 2, 3)), (-1, 6)) @ g.param("V", (6, 4), scale=0.3)
    loss = gc.cross_entropy(logits, y, name="loss")
    cp = fake_cupy.install(monkeypatch)
    host = gc.compile(g, loss=loss, dims={"N": 5}).load()
    device = gc.compile(g, loss=loss, dims={"N": 5}, backend="cupy").load()
    trainers = host.Trainer(host.init_params(1)), device.Trainer(device.init_params(1))
    rng = np.random.default_rng(0)
    for n in (5, 3, 5):
        X, y = rng.standard_normal((n, 2, 3, 2)), rng.integers(0, 4, n)
        expected = trainers[0].step(X, y)
        assert trainers[1].step(cp.asarray(X), cp.asarray(y)) == pytest.approx(expected, rel=1e-12)
    for name in host.PARAMS:
        np.testing.assert_allclose(cp.asnumpy(trainers[1].params[name]), trainers[0].params[name], rtol=1e-10)
