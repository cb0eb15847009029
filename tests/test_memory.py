"""Trainer's workspace: one allocation up front, in-place steps, and the same numbers as the pure functions."""

import numpy as np
import pytest

import graphc as gc
from gradcheck import random_inputs, random_params
from memcheck import peak_bytes
from graphc.schedule import plan_workspace
from test_adjoint import two_layer

pytestmark = pytest.mark.unformatted


def assert_trainer_matches_value_and_grad(mod, params, inputs, steps=3, lr=1e-3):
    """Trainer.step (workspace, in place) against value_and_grad (fresh arrays) + SGD, step after step; both
    draw from a Generator of seed 0 (dropout), the trainable params compared."""
    reference = {k: v.copy() for k, v in params.items()}
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()}, lr=lr)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        value, grads = mod.value_and_grad(reference, *inputs, rng=rng)
        assert trainer.step(*inputs) == pytest.approx(value, rel=1e-12, abs=1e-300)
        reference = {k: reference[k] - lr * grads[k] if k in grads else reference[k] for k in reference}
        for k in mod.TRAINABLE:
            np.testing.assert_allclose(trainer.params[k], reference[k], rtol=1e-12, atol=1e-15, err_msg=k)


@pytest.fixture(scope="module")
def two_layer_module():
    g, loss = two_layer()
    return gc.compile(g, loss=loss, outputs=["pred"], lr=1e-5)


def test_step_allocates_no_arrays():
    # At the mnist size: NumPy's ufuncs may take an iteration buffer of their own (at most 8192 elements,
    # 64 KiB, e.g. for a broadcast add), which is no array of the step and does not grow with the model.
    N, D, H, O = 256, 784, 1024, 10
    g = gc.Graph("mnist")
    X, y = g.input("X", (N, D)), g.input("y", (N, O))
    h = gc.relu(X @ g.param("W1", (D, H), scale=0.03) + g.param("b1", (H,), init="zeros"), name="h")
    pred = h @ g.param("W2", (H, O), scale=0.03) + g.param("b2", (O,), init="zeros")
    mod = gc.compile(g, loss=gc.mse(pred, y, name="loss")).load()
    X, y = random_inputs(mod)
    trainer = mod.Trainer(mod.init_params())
    activation = N * H * 8  # bytes of the hidden activation

    trainer.step(X, y)  # the first step allocates the workspace
    step = peak_bytes(lambda: trainer.step(X, y))
    pure = peak_bytes(lambda: mod.value_and_grad(trainer.params, X, y))
    assert pure > 2 * activation  # the measure sees array allocations...
    assert step < activation / 20, step  # ...and a step makes none


def test_workspace_plan_shares_buffers(two_layer_module):
    ws = plan_workspace(two_layer_module.schedule)
    held = [v for b in ws.buffers for v in b.values if not v.startswith("scratch")]
    assert len(held) == len(set(held))  # every value has exactly one buffer
    assert {"h", "dh", "dW1", "dW2", "db1", "db2", "pred", "dpred"} <= set(held)
    assert ws.nbytes < ws.intermediates  # sharing saves memory
    # X @ W1, + b1 and relu run in one buffer, in place; the relu mask is then made in it, once h is dead
    (h_buffer,) = [b for b in ws.buffers if "h" in b.values]
    matmul, add, h, mask = h_buffer.values
    assert h == "h" and mask == f"scratch for d{add}"
    # the relu backward masks dh in place
    (dh_buffer,) = [b for b in ws.buffers if "dh" in b.values]
    assert dh_buffer.values == ["dh", f"d{add}"]
    assert all(u.direct for u in ws.updates)  # every gradient is computed straight into the flat gradients


def test_trainer_matches_pure_functions_two_layer(two_layer_module):
    trainer = two_layer_module.source.split("class Trainer")[1]
    assert trainer.count("np.subtract(pred, y") == 1  # the loss's error is kept for the gradient, not redone
    mod = two_layer_module.load()
    assert_trainer_matches_value_and_grad(mod, random_params(mod), random_inputs(mod), steps=5, lr=1e-4)


def test_trainer_matches_pure_functions_with_broadcasting_and_fan_out():
    g = gc.Graph("mixed")
    x = g.input("x", (2, 3, 4))
    t = g.input("t", (2, 3, 4))
    b = g.param("b", (1, 4))  # broadcast over leading and size-1 axes: sum then reshape
    c = g.param("c", ())
    w = g.param("w", (3, 1))
    u = gc.relu(x * b - c, name="u")
    v = gc.mul(u, u, name="v") + u * w  # u is used four times
    loss = gc.mse(v - 0.5 * b, t, name="loss")
    mod = gc.compile(g, loss=loss).load()
    assert_trainer_matches_value_and_grad(mod, random_params(mod, away_from_zero=True), random_inputs(mod))


def test_trainer_matches_pure_functions_float32(root):
    spec = gc.load_spec("examples/two_layer.toml", dtype="float32")
    mod = gc.compile(spec.graph, spec.loss, spec.outputs, spec.lr).load()
    params = mod.init_params()
    X, y = (a.astype(np.float32) for a in random_inputs(mod))
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()})
    value, grads = mod.value_and_grad(params, X, y)
    assert trainer.step(X, y) == pytest.approx(value, rel=1e-5)
    for k in params:
        assert trainer.params[k].dtype == np.float32
        np.testing.assert_allclose(trainer.params[k], params[k] - mod.LR * grads[k], rtol=1e-5, atol=1e-6)


def test_check_finite_names_the_step_and_keeps_the_params(two_layer_module):
    mod = two_layer_module.load()
    X, y = random_inputs(mod)
    trainer = mod.Trainer(mod.init_params(), check_finite=True)
    trainer.step(X, y)
    trainer.step(X, y)
    before = {k: v.copy() for k, v in trainer.params.items()}
    bad = X.copy()
    bad[3, 7] = np.inf
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match=r"^step 3: loss is not finite"):
        trainer.step(bad, y)
    for k in before:
        np.testing.assert_array_equal(trainer.params[k], before[k])
    assert trainer.steps == 2
    trainer.step(X, y)  # and it carries on with good data
    assert trainer.steps == 3


def test_check_finite_names_a_gradient():
    g = gc.Graph()
    x = g.param("x", (2,), init="zeros")
    s = g.input("s", ())
    loss = gc.mse(x * s, g.input("t", (2,)), name="loss")
    mod = gc.compile(g, loss=loss).load()
    trainer = mod.Trainer(mod.init_params(), check_finite=True)
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match=r"step 1: d loss / d x is not finite"):
        trainer.step(np.float64(1e160), np.full(2, 1e150))  # the loss is 1e300, its gradient overflows


def test_check_finite_is_off_by_default(two_layer_module):
    mod = two_layer_module.load()
    X, y = random_inputs(mod)
    X[0, 0] = np.nan
    trainer = mod.Trainer(mod.init_params())
    assert np.isnan(trainer.step(X, y))


def test_trainer_matches_pure_functions_when_two_params_get_the_same_gradient():
    g = gc.Graph("shared")
    a, c = g.param("a", (3, 2)), g.param("c", (3, 2))
    mod = gc.compile(g, loss=gc.mse(a + c, g.input("t", (3, 2)), name="loss"))
    assert "np.copyto(" in mod.source  # d loss / d c is a copy of d loss / d a, made in the workspace
    mod = mod.load()
    assert_trainer_matches_value_and_grad(mod, random_params(mod), random_inputs(mod))


def test_a_sum_whose_first_term_comes_again_is_not_written_over_that_term():
    # found by the fuzzer: mse(x, x - x) sums d loss / d x as dx_1 + dlr + dx_1 (neg(neg(g)) folds back to g)
    g = gc.Graph("again")
    x = g.param("x", (2,))
    mod = gc.compile(g, gc.mse(x, x - x, name="loss")).load()
    assert_trainer_matches_value_and_grad(mod, random_params(mod), ())


def test_gradients_are_written_into_their_views_of_the_flat_gradients():
    """Trainer keeps the gradients in one flat array: a gradient held in a buffer of the step is computed straight
    into its view (the buffer is the view), a scalar one (no buffer) is copied there after the backward."""
    g = gc.Graph("views")
    x, t = g.input("x", (5, 3)), g.input("t", (5, 3))
    w, c = g.param("w", (3,)), g.param("c", ())
    loss = gc.mse(x * w + c, t, name="loss")
    compiled = gc.compile(g, loss=loss)
    ws = compiled.schedule.workspace
    assert {u.param: u.direct for u in ws.updates} == {"w": True, "c": False}
    trainer_code = compiled.source.split("class Trainer")[1]
    assert 'self._grads["w"],  # the view of the flat gradients: d loss / d w' in trainer_code
    assert trainer_code.count("np.copyto(self._grads[") == 2  # c's gradient, and apply_gradients' loop
    mod = compiled.load()
    params = random_params(mod, away_from_zero=True)
    assert_trainer_matches_value_and_grad(mod, params, random_inputs(mod))
    trainer = mod.Trainer(params)
    flat = trainer._flat_params
    assert all(np.shares_memory(params[name], flat) for name in mod.TRAINABLE)


def test_the_steps_constant_arrays_belong_to_its_trainer():
    """Trainer.step's constants (ones for row sums, zeros for relu: Trainer._full) are kept per shape by the Trainer,
    as its buffers are: one set per batch size, freed with it, not by the module."""
    import gc as garbage
    import weakref

    g = gc.Graph("constants")
    h = gc.relu(g.input("x", ("N", 4)) @ g.param("w", (4, 8)), name="h")
    loss = gc.cross_entropy(h, g.input("t", ("N",), dtype="int64"), name="loss")
    mod = gc.compile(g, loss=loss).load()
    trainer = mod.Trainer(mod.init_params(0))
    rng = np.random.default_rng(0)
    for n in (3, 5, 3, 7):
        trainer.step(rng.standard_normal((n, 4)), rng.integers(0, 8, n))
    assert sorted(trainer._constants) == [((3, 8), 0.0), ((5, 8), 0.0), ((7, 8), 0.0), ((8, 1), 1.0)]
    kept = weakref.ref(trainer._constants[(3, 8), 0.0])
    del trainer
    garbage.collect()
    assert kept() is None
