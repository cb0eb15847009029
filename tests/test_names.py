"""The generated module's own names never meet the user's: inputs, nodes and dimensions named like the locals of
the generated functions, and the input checks that run before any of them."""

import subprocess
import sys

import numpy as np
import pytest

import graphc as gc

pytestmark = pytest.mark.unformatted


@pytest.mark.parametrize("dim", ["dims", "buffers", "inputs", "batched", "step", "n", "hp", "name", "grad"])
def test_a_dimension_named_like_a_local_of_the_module(dim):
    g = gc.Graph("t")
    X, y = g.input("X", (dim, 4)), g.input("y", (dim, 3))
    W = g.param("W", (4, 3))
    mod = gc.compile(g, loss=gc.mse(X @ W, y), optimizer="adam", dims={dim: 6}).load()
    rng = np.random.default_rng(0)
    X_, y_ = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    params = mod.init_params()
    value, grads = mod.value_and_grad(params, X_, y_)
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()})
    assert trainer.step(X_, y_) == pytest.approx(value, rel=1e-12)
    assert len(trainer.fit(X_, y_, epochs=1, batch_size=4)) == 2


def test_an_input_named_dims():
    g = gc.Graph("t")
    X, dims = g.input("X", ("N", 4)), g.input("dims", ("N", 3))
    mod = gc.compile(g, loss=gc.mse(X @ g.param("W", (4, 3)), dims), dims={"N": 4}).load()
    rng = np.random.default_rng(0)
    X_, y_ = rng.standard_normal((4, 4)), rng.standard_normal((4, 3))
    params = mod.init_params()
    expected = np.mean((X_ @ params["W"] - y_) ** 2)
    assert mod.value_and_grad(params, X_, y_)[0] == pytest.approx(expected, rel=1e-12)
    assert mod.Trainer(params).step(X_, dims=y_) == pytest.approx(expected, rel=1e-12)


def class_module():
    g = gc.Graph("t")
    X, labels = g.input("X", (8, 4)), g.input("y", (8,), dtype="int64")
    return gc.compile(g, loss=gc.cross_entropy(X @ g.param("W", (4, 3)), labels)).load()


def test_class_indices_of_fixed_size_given_as_floats_are_refused():
    mod = class_module()
    X = np.zeros((8, 4))
    with pytest.raises(ValueError, match=r"input 'y': expected shape \(8,\) integer, got \(8,\) float64"):
        mod.loss(mod.init_params(), X, np.zeros(8))
    with pytest.raises(ValueError, match=r"input 'y': class index 7 is outside \[0, 3\)"):
        mod.Trainer(mod.init_params()).step(X, np.array([0, 1, 2, 0, 1, 2, 7, 1]))


def test_the_batch_dimension_is_that_of_the_loss_inputs():
    g = gc.Graph("t")
    X, Z = g.input("X", (5, 4)), g.input("Z", ("N", 4))
    W = g.param("W", (4, 2))
    out = gc.matmul(Z, W, name="out")
    mod = gc.compile(g, loss=gc.sum(gc.matmul(X, W) * 1.0), outputs=[out], dims={"N": 3}).load()
    assert mod.BATCH_DIM is None and mod.LOSS_REDUCTION is None
    assert len(mod.Trainer(mod.init_params()).fit(np.ones((5, 4)), iterations=2)) == 2


def test_an_inference_module_runs_as_a_script_when_an_input_is_not_used(tmp_path):
    g = gc.Graph("t")
    X = g.input("X", ("N", 4))
    g.input("y", ("N", 3))  # not read by the outputs
    pred = gc.matmul(X, g.param("W", (4, 3)), name="pred")
    path = gc.compile(g, outputs=[pred], dims={"N": 2}).save(tmp_path / "m.py")
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pred: shape (2, 3)")


@pytest.mark.parametrize("steps", [np.array([1, 2]), np.array(-3), np.array(1.7)])
def test_a_bad_step_count_in_a_state_changes_nothing(steps):
    mod = class_module()
    trainer = mod.Trainer(mod.init_params())
    state = trainer.state_dict()
    state["params.W"] = state["params.W"] + 1.0
    state["steps"] = steps
    before = trainer.params["W"].copy()
    with pytest.raises(ValueError, match="'steps' must be a count"):
        trainer.load_state_dict(state)
    np.testing.assert_array_equal(trainer.params["W"], before)


def test_fit_on_no_rows_logs_nothing():
    g = gc.Graph("t")
    X, y = g.input("X", ("N", 4)), g.input("y", ("N", 3))
    mod = gc.compile(g, loss=gc.mse(X @ g.param("W", (4, 3)), y), dims={"N": 2}).load()
    assert mod.Trainer(mod.init_params()).fit(np.ones((0, 4)), np.ones((0, 3)), epochs=2, log_every=1) == []


def test_hyperparameters_may_be_numpy_numbers():
    mod = class_module()
    trainer = mod.Trainer(mod.init_params(), lr=np.float32(0.5), momentum=np.float64(0.9))
    assert trainer.hyperparams["momentum"] == 0.9


def test_an_optimizer_that_is_not_a_name_is_a_clear_error():
    g = gc.Graph("t")
    X = g.input("X", (2, 4))
    with pytest.raises(gc.GraphError, match=r"unknown optimizer \['sgd'\]"):
        gc.compile(g, loss=gc.sum(X @ g.param("W", (4, 3))), optimizer=["sgd"])
