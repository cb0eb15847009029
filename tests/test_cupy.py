"""The CuPy backend without a GPU: the module's source (kernels, imports, determinism), and its logic run against
tests/fake_cupy.py, a NumPy-backed test double of the CuPy API it uses, next to the NumPy module. On a GPU,
bench/gpu.py checks the real thing (values after 20 steps of SGD and of Adam) and times it."""

import ast
import re
import subprocess
import sys

import numpy as np
import pyflakes.api
import pyflakes.reporter
import pytest

import fake_cupy
import graphc as gc
from graphc.spec import load_spec


def classifier(optimizer="adam", **hyperparams):
    """Every elementwise op that fuses, a named batch dimension and integer labels."""
    g = gc.Graph("clf")
    X, y = g.input("X", ("N", 6)), g.input("y", ("N",), dtype="int64")
    W1, b1 = g.param("W1", (6, 8), scale=0.5), g.param("b1", (8,), init="zeros")
    W2, b2 = g.param("W2", (8, 8), scale=0.5), g.param("b2", (8,), init=0.1)
    W3 = g.param("W3", (8, 4), scale=0.5)
    h1 = gc.relu(X @ W1 + b1, name="h1")
    h2 = gc.tanh(h1 @ W2 + b2, name="h2")
    h3 = gc.sigmoid(h2, name="h3") * gc.leaky_relu(h2, negative_slope=0.1) - h1 / 4.0
    logits = gc.matmul(h3, W3, name="logits")
    loss = gc.cross_entropy(logits, y, name="loss")
    return g, loss, dict(outputs=[logits], optimizer=optimizer, dims={"N": 16}, **hyperparams)


def both(g, loss, monkeypatch, **kw):
    """The NumPy module and the CuPy module (on the test double) of one graph."""
    cp = fake_cupy.install(monkeypatch)
    return gc.compile(g, loss=loss, **kw).load(), gc.compile(g, loss=loss, backend="cupy", **kw).load(), cp


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)), rng.integers(0, 4, n)


@pytest.fixture(scope="module")
def two_layer_cupy():
    spec = load_spec("examples/two_layer.toml")
    return gc.compile(spec.graph, **spec.options(), backend="cupy")


def test_source_is_deterministic_black_and_imports_only_numpy_and_cupy(root, two_layer_cupy):
    spec = load_spec("examples/two_layer.toml")
    assert gc.compile(spec.graph, **spec.options(), backend="cupy").source == two_layer_cupy.source
    tree = ast.parse(two_layer_cupy.source)
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for a in node.names}
    assert imported - {"os", "stat", "tempfile", "time", "zipfile"} == {"numpy", "cupy"}
    warnings = []

    class Collect(pyflakes.reporter.Reporter):
        def __init__(self):
            pass

        def flake(self, message):
            warnings.append(str(message))

    pyflakes.api.check(two_layer_cupy.source, "two_layer_cupy.py", Collect())
    assert warnings == []


def test_fused_kernels_are_declared_once_and_named_after_their_nodes(two_layer_cupy):
    text = two_layer_cupy.source
    # bias + relu of the hidden layer: one kernel, written into the matmul's buffer
    assert "# _kernel_h: h_add = add(h_matmul, b1); h = relu(h_add)\n_kernel_h = cp.ElementwiseKernel(" in text
    assert '"T h_matmul, T b1", "T h", "h = max((h_matmul + b1), (T)0)"' in text
    assert "h = _kernel_h(h_matmul, b1, _buf0)" in text
    # the relu's gradient: the mask and its product in one pass
    assert "dh_add = _kernel_dh_add(dh, h, _buf" in text
    assert "np.greater" not in text and "cp.greater" not in text
    # the SGD update: one kernel per param, no temporaries
    assert text.count("_sgd_update = cp.ElementwiseKernel(") == 1
    assert re.search(r"_sgd_update\(\s+grad,\s+lr,\s+momentum,\s+dampening,\s+weight_decay,\s+nesterov,", text)
    assert "_scratch" not in text


def test_without_cupy_the_import_is_one_clear_line(tmp_path, two_layer_cupy):
    path = two_layer_cupy.save(tmp_path / "m.py")
    code = f"import sys, runpy; sys.modules['cupy'] = None; runpy.run_path({str(path)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("ImportError: this module runs on the GPU through CuPy, which is not installed: "
                    "pip install 'graphc[cupy]'")


def test_init_params_are_the_numpy_modules_on_the_device(monkeypatch):
    g, loss, kw = classifier()
    numpy_mod, cupy_mod, cp = both(g, loss, monkeypatch, **kw)
    host, device = numpy_mod.init_params(3), cupy_mod.init_params(3)
    for name in numpy_mod.PARAMS:
        assert isinstance(device[name], cp.ndarray) and not isinstance(host[name], cp.ndarray)
        np.testing.assert_array_equal(cp.asnumpy(device[name]), host[name])


def test_a_numpy_input_is_an_error_that_says_how_to_move_it(monkeypatch):
    g, loss, kw = classifier()
    _, cupy_mod, cp = both(g, loss, monkeypatch, **kw)
    X, y = batch(5)
    params = cupy_mod.init_params()
    with pytest.raises(ValueError, match=r"input 'X' is a numpy.ndarray, not a CuPy array: move it to the GPU "
                                         r"with cupy.asarray"):
        cupy_mod.predict(params, X)
    trainer = cupy_mod.Trainer(params)
    before = {k: cp.asnumpy(v) for k, v in params.items()}
    with pytest.raises(ValueError, match="cupy.asarray"):
        trainer.step(cp.asarray(X), y)
    for k in params:
        np.testing.assert_array_equal(cp.asnumpy(params[k]), before[k])


@pytest.mark.parametrize("optimizer, hyperparams", [
    ("sgd", {"lr": 0.05}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "dampening": 0.3}),
    ("adam", {"lr": 0.01, "weight_decay": 1e-2}),
    ("adamw", {"lr": 0.01}),
])
def test_twenty_steps_agree_with_the_numpy_module(monkeypatch, optimizer, hyperparams):
    g, loss, kw = classifier(optimizer, **hyperparams)
    numpy_mod, cupy_mod, cp = both(g, loss, monkeypatch, **kw)
    host = numpy_mod.Trainer(numpy_mod.init_params(1))
    device = cupy_mod.Trainer(cupy_mod.init_params(1))
    for step in range(20):
        X, y = batch(16 if step % 3 else 5, seed=step)  # two batch sizes: two workspaces each
        expected = host.step(X, y)
        assert device.step(cp.asarray(X), cp.asarray(y)) == pytest.approx(expected, rel=1e-12), step
    for name in numpy_mod.PARAMS:
        np.testing.assert_allclose(cp.asnumpy(device.params[name]), host.params[name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)


def test_fit_checkpoints_and_apply_gradients_agree_with_the_numpy_module(monkeypatch, tmp_path):
    g, loss, kw = classifier("adam", lr=0.01)
    numpy_mod, cupy_mod, cp = both(g, loss, monkeypatch, **kw)
    X, y = batch(37)
    host = numpy_mod.Trainer(numpy_mod.init_params(2))
    device = cupy_mod.Trainer(cupy_mod.init_params(2))
    np.testing.assert_allclose(device.fit(cp.asarray(X), cp.asarray(y), epochs=2, batch_size=8),
                               host.fit(X, y, epochs=2, batch_size=8), rtol=1e-12)
    device.save(tmp_path / "ckpt.npz")  # through the host
    resumed = cupy_mod.Trainer(cupy_mod.init_params(0)).load(tmp_path / "ckpt.npz")
    _, grads = numpy_mod.value_and_grad(host.params, X, y)
    host.apply_gradients(grads)
    resumed.apply_gradients({k: cp.asarray(v) for k, v in grads.items()})
    assert resumed.steps == host.steps
    for name in numpy_mod.PARAMS:
        np.testing.assert_allclose(cp.asnumpy(resumed.params[name]), host.params[name], rtol=1e-10, atol=1e-12)
    cupy_mod.save_params(resumed.params, tmp_path / "p.npz")
    loaded = numpy_mod.load_params(tmp_path / "p.npz")  # a host file the NumPy module reads
    for name in numpy_mod.PARAMS:
        np.testing.assert_allclose(loaded[name], host.params[name], rtol=1e-10, atol=1e-12)


def test_pure_functions_of_a_mean_loss_agree_with_the_numpy_module(monkeypatch):
    """A mean's gradient is a Python number (1 / (N * 4)) spread over an array: CuPy's broadcast_to takes device
    arrays only (found on a real GPU), so the pure value_and_grad fills a new array with it."""
    g = gc.Graph("mean_loss")
    X, W = g.input("X", ("N", 6)), g.param("W", (6, 4), scale=0.5)
    loss = gc.mean(gc.tanh(X @ W), name="loss")
    numpy_mod, cupy_mod, cp = both(g, loss, monkeypatch)
    X = batch(5)[0]
    value, grads = numpy_mod.value_and_grad(numpy_mod.init_params(1), X)
    device_value, device_grads = cupy_mod.value_and_grad(cupy_mod.init_params(1), cp.asarray(X))
    np.testing.assert_allclose(float(device_value), value, rtol=1e-12)
    assert isinstance(device_grads["W"], cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(device_grads["W"]), grads["W"], rtol=1e-12)


def test_the_cli_writes_a_cupy_module(root, tmp_path):
    out = tmp_path / "m.py"
    result = subprocess.run([sys.executable, "-m", "graphc", "compile", "examples/two_layer.toml", "--backend", "cupy",
                             "-o", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "import cupy as cp" in text and "--backend cupy" in text


def test_params_files_load_on_the_device(monkeypatch, tmp_path):
    """load_params and init = "file" read host arrays, checked on the host, then moved."""
    g = gc.Graph("pf")
    X, y = g.input("X", ("N", 4)), g.input("y", ("N", 3))
    W = g.param("W", (4, 3), init="file")
    values = {"W": np.arange(12.0).reshape(4, 3)}
    cp = fake_cupy.install(monkeypatch)
    module = gc.compile(g, loss=gc.mse(X @ W, y), init_values=values, dims={"N": 2}, backend="cupy")
    module.save(tmp_path / "m.py")
    mod = module.load()
    params = mod.init_params()
    assert isinstance(params["W"], cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(params["W"]), values["W"])
    mod.save_params(params, tmp_path / "p.npz")
    loaded = mod.load_params(tmp_path / "p.npz")
    assert isinstance(loaded["W"], cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(loaded["W"]), values["W"])


def test_kernel_parameters_never_take_a_name_cpp_reserves(monkeypatch):
    """Graph names that are C++ keywords or the kernels' functions become _name inside the kernels."""
    g = gc.Graph("cpp")
    X, y = g.input("X", (5, 4)), g.input("y", (5, 3))
    new = g.param("new", (4, 3))
    this = gc.matmul(X, new, name="this")
    exp_ = gc.relu(gc.add(this, g.param("exp", (3,)), name="exp_"), name="template")
    numpy_mod, cupy_mod, cp = both(g, gc.mse(exp_, y, name="loss"), monkeypatch)
    source = gc.compile(g, loss="loss", backend="cupy").source
    assert re.search(r'"T _this, T _exp",\s+"T _template"', source)
    host, device = numpy_mod.Trainer(numpy_mod.init_params()), cupy_mod.Trainer(cupy_mod.init_params())
    X_, y_ = np.random.default_rng(0).standard_normal((5, 4)), np.random.default_rng(1).standard_normal((5, 3))
    for _ in range(3):
        assert device.step(cp.asarray(X_), cp.asarray(y_)) == pytest.approx(host.step(X_, y_), rel=1e-12)
