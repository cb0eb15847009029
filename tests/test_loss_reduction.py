"""LOSS_REDUCTION: how a loss combines the batch's rows, which data-parallel training relies on (a 'mean' loss
over shards is their row-weighted mean, a 'sum' their sum, None cannot be split). Each case is also checked
numerically: the loss of the whole batch against the losses of two shards."""

import numpy as np
import pytest

import graphc as gc

pytestmark = pytest.mark.unformatted

CASES = {
    "mse": (lambda p, y, W: gc.mse(p, y), "mean"),
    "mse sum": (lambda p, y, W: gc.mse(p, y, reduction="sum"), "sum"),
    "0.5 * mse": (lambda p, y, W: 0.5 * gc.mse(p, y), "mean"),
    "mse / 2": (lambda p, y, W: gc.mse(p, y) / 2.0, "mean"),
    "-mse": (lambda p, y, W: -gc.mse(p, y), "mean"),
    "mse + a penalty": (lambda p, y, W: gc.mse(p, y) + gc.sum(W * W), "mean"),
    "mse sum + a penalty": (lambda p, y, W: gc.mse(p, y, reduction="sum") + gc.sum(W * W), None),
    "mean of squares": (lambda p, y, W: gc.mean((p - y) * (p - y)), "mean"),
    "sum of squares": (lambda p, y, W: gc.sum((p - y) * (p - y)), "sum"),
    "mean over rows of row sums": (lambda p, y, W: gc.mean(gc.sum((p - y) * (p - y), axis=1)), "mean"),
    "sum over columns of column means": (lambda p, y, W: gc.sum(gc.mean((p - y) * (p - y), axis=0)), "mean"),
    "log(mse)": (lambda p, y, W: gc.log(gc.mse(p, y)), None),
    "mse * mse": (lambda p, y, W: gc.mse(p, y) * gc.mse(p, y), None),
    "mse + mse sum": (lambda p, y, W: gc.mse(p, y) + gc.mse(p, y, reduction="sum"), None),
    "centred by the batch mean": (lambda p, y, W: gc.mse(p - gc.mean(p, axis=0), y), None),
    "a softmax along the rows": (lambda p, y, W: gc.mean(gc.log_softmax(p, axis=0) * y), None),
    "a softmax along each row": (lambda p, y, W: gc.mean(gc.log_softmax(p, axis=1) * y), "mean"),
}


def module(loss_fn):
    g = gc.Graph("t")
    X, y = g.input("X", ("N", 4)), g.input("y", ("N", 2))
    W = g.param("W", (4, 2))
    return gc.compile(g, loss=loss_fn(gc.matmul(X, W, name="pred"), y, W), dims={"N": 8}).load()


@pytest.mark.parametrize("name", CASES)
def test_loss_reduction(name):
    loss_fn, expected = CASES[name]
    mod = module(loss_fn)
    assert mod.LOSS_REDUCTION == expected
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((7, 4)), rng.standard_normal((7, 2))
    params = mod.init_params()
    whole, a, b = mod.loss(params, X, y), mod.loss(params, X[:3], y[:3]), mod.loss(params, X[3:], y[3:])
    combined = {"mean": (3 * a + 4 * b) / 7, "sum": a + b}
    if expected is None:
        assert all(abs(c - whole) > 1e-6 * abs(whole) for c in combined.values())
    else:
        assert combined[expected] == pytest.approx(whole, rel=1e-12)


def test_no_batch_dimension_no_reduction():
    g = gc.Graph("t")
    X, y = g.input("X", (8, 4)), g.input("y", (8, 2))
    mod = gc.compile(g, loss=gc.mse(X @ g.param("W", (4, 2)), y)).load()
    assert mod.BATCH_DIM is None and mod.LOSS_REDUCTION is None
