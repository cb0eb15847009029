"""Training (DESIGN §9, §11): optimizers against torch.optim's documented algorithms, fit's batching rule, named
dimensions, integer labels, allocation-free steps, bad hyperparameters, and the digits example.

The reference optimizers below are written from torch.optim's documented pseudo-code (SGD, Adam, AdamW), not from
graphc's code, and are driven by the generated value_and_grad's gradients: the Trainer's fused, in-place update
must give the same params to float rounding.
"""

import importlib.util
import re
import subprocess
import sys
import textwrap
import uuid
from functools import partial

import numpy as np
import pytest

import graphc as gc
from graphc import cli
from gradcheck import random_params
from memcheck import peak_bytes

pytestmark = pytest.mark.unformatted

RTOL = 1e-10  # two float64 code paths (fused in place vs the reference's fresh arrays): rounding only


# ---- reference optimizers, from torch.optim's documentation ------------------------------------------------------

class SGD:
    """torch.optim.SGD: weight decay added to the gradient; momentum buffer b_1 = g_1, then
    b_t = momentum * b_{t-1} + (1 - dampening) * g_t; nesterov uses g_t + momentum * b_t; p -= lr * g."""

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov
        self.buf = {}

    def update(self, params, grads):
        for k in params:
            g = grads[k]
            if self.weight_decay != 0:
                g = g + self.weight_decay * params[k]
            if self.momentum != 0:
                if k in self.buf:
                    b = self.momentum * self.buf[k] + (1 - self.dampening) * g
                else:
                    b = g.copy()  # the first step: buf = g, no dampening
                self.buf[k] = b
                g = g + self.momentum * b if self.nesterov else b
            params[k] = params[k] - self.lr * g


class Adam:
    """torch.optim.Adam (L2 weight decay added to the gradient) and, with decoupled=True, torch.optim.AdamW
    (p *= 1 - lr * weight_decay before the step): bias-corrected moments, p -= lr * m_hat / (sqrt(v_hat) + eps)."""

    decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m, self.v, self.t = {}, {}, 0

    def update(self, params, grads):
        self.t += 1
        b1, b2 = self.betas
        for k in params:
            g, p = grads[k], params[k]
            if self.decoupled:
                p = p * (1 - self.lr * self.weight_decay)
            elif self.weight_decay != 0:
                g = g + self.weight_decay * p
            self.m[k] = b1 * self.m.get(k, 0.0) + (1 - b1) * g
            self.v[k] = b2 * self.v.get(k, 0.0) + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1**self.t)
            v_hat = self.v[k] / (1 - b2**self.t)
            params[k] = p - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class AdamW(Adam):
    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(lr, betas, eps, weight_decay)


REFERENCE = {"sgd": SGD, "adam": Adam, "adamw": AdamW}

DEFAULTS = {
    "sgd": {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
}


# ---- helpers -----------------------------------------------------------------------------------------------------

def import_file(path):
    spec = importlib.util.spec_from_file_location(f"graphc_test_{path.stem}_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_toml(directory, text, name="model"):
    """Compile a spec through the graphc command (in process) and import the module it wrote."""
    spec = directory / f"{name}.toml"
    spec.write_text(textwrap.dedent(text))
    out = directory / f"{name}_module.py"
    assert cli.main(["compile", str(spec), "-o", str(out)]) == 0
    return import_file(out)


def copy(params):
    return {k: v.copy() for k, v in params.items()}


def assert_params_close(got, expected, rtol=RTOL, atol=1e-13, what=""):
    assert set(got) == set(expected)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=rtol, atol=atol, err_msg=f"{what} param {k}")


def mlp_graph(N=16, D=5, H=8, O=3):
    """A small fixed-shape regression MLP (ops that exist since the seed): relu, matmul, add, mse."""
    g = gc.Graph("mlp")
    X, y = g.input("X", (N, D)), g.input("y", (N, O))
    W1, b1 = g.param("W1", (D, H), scale=0.5), g.param("b1", (H,), init="zeros")
    W2, b2 = g.param("W2", (H, O), scale=0.5), g.param("b2", (O,), init="zeros")
    pred = gc.add(gc.matmul(gc.relu(X @ W1 + b1, name="h"), W2), b2, name="pred")
    return g, gc.mse(pred, y, name="loss")


def compile_mlp(**kw):
    g, loss = mlp_graph()
    return gc.compile(g, loss=loss, outputs=["pred"], **kw).load()


def batches(mod, count, seed=5):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(mod._SHAPES["X"]), rng.standard_normal(mod._SHAPES["y"])) for _ in range(count)]


def run_against_reference(mod, reference, overrides, steps=6):
    """Trainer.step (fused, in place) against the reference optimizer on value_and_grad's gradients."""
    params = random_params(mod, seed=2)
    expected = copy(params)
    trainer = mod.Trainer(copy(params), **overrides)
    for i, (X, y) in enumerate(batches(mod, steps)):
        value, grads = mod.value_and_grad(expected, X, y)
        reference.update(expected, grads)
        assert trainer.step(X, y) == pytest.approx(value, rel=1e-12), f"step {i + 1}: loss"
        assert_params_close(trainer.params, expected, what=f"step {i + 1}:")
    assert trainer.steps == steps
    # and the params really moved: a trainer that did nothing would fail above, but make the scale visible
    assert max(float(np.max(np.abs(trainer.params[k] - params[k]))) for k in params) > 1e-5


# ---- optimizers: torch.optim's algorithms and defaults -----------------------------------------------------------

OPTIMIZER_CASES = [
    # (compile keywords, Trainer keyword overrides, reference optimizer: a fresh one per test)
    ({"optimizer": "sgd", "lr": 0.05}, {}, partial(SGD, lr=0.05)),
    ({"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}, {}, partial(SGD, lr=0.05, momentum=0.9)),
    ({"optimizer": "sgd", "lr": 0.05, "momentum": 0.8, "dampening": 0.5, "weight_decay": 0.01}, {},
     partial(SGD, lr=0.05, momentum=0.8, dampening=0.5, weight_decay=0.01)),
    ({"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.02}, {},
     partial(SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.02)),
    ({"optimizer": "adam"}, {}, partial(Adam)),
    ({"optimizer": "adam", "lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-4, "weight_decay": 0.1}, {},
     partial(Adam, lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1)),
    ({"optimizer": "adamw"}, {}, partial(AdamW)),
    ({"optimizer": "adamw", "lr": 0.01, "betas": (0.85, 0.95), "weight_decay": 0.5}, {},
     partial(AdamW, lr=0.01, betas=(0.85, 0.95), weight_decay=0.5)),
    # run-time overrides: Trainer(params, **hyperparams)
    ({"optimizer": "sgd", "lr": 0.05}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
     partial(SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ({"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}, {"momentum": 0.0, "lr": 0.1}, partial(SGD, lr=0.1)),
    ({"optimizer": "sgd", "lr": 0.05}, {"momentum": 0.7, "dampening": 0.3},
     partial(SGD, lr=0.05, momentum=0.7, dampening=0.3)),
    ({"optimizer": "adam"}, {"lr": 0.02, "betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.05},
     partial(Adam, lr=0.02, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.05)),
    ({"optimizer": "adamw", "lr": 0.01}, {"weight_decay": 0.0}, partial(AdamW, lr=0.01, weight_decay=0.0)),
    ({"optimizer": "adamw", "lr": 0.01}, {"weight_decay": 0.3, "betas": [0.7, 0.9]},
     partial(AdamW, lr=0.01, weight_decay=0.3, betas=(0.7, 0.9))),
]


@pytest.mark.parametrize("kw, overrides, reference", OPTIMIZER_CASES,
                         ids=[f"{kw}-{ov}" for kw, ov, _ in OPTIMIZER_CASES])
def test_optimizer_matches_torch_algorithm(kw, overrides, reference):
    run_against_reference(compile_mlp(**kw), reference(), overrides)


def test_a_wrong_algorithm_is_caught():
    """The comparison is sharp: Adam without bias correction, or a dampened first momentum step, fails it."""

    class NoBiasCorrection(Adam):
        def update(self, params, grads):
            b1, b2 = self.betas
            for k in params:
                self.m[k] = b1 * self.m.get(k, 0.0) + (1 - b1) * grads[k]
                self.v[k] = b2 * self.v.get(k, 0.0) + (1 - b2) * grads[k] ** 2
                params[k] = params[k] - self.lr * self.m[k] / (np.sqrt(self.v[k]) + self.eps)

    class DampenedFirstStep(SGD):
        def update(self, params, grads):
            for k in params:
                self.buf.setdefault(k, np.zeros_like(params[k]))  # torch starts with buf = g instead
            super().update(params, grads)

    with pytest.raises(AssertionError):
        run_against_reference(compile_mlp(optimizer="adam"), NoBiasCorrection(), {})
    with pytest.raises(AssertionError):
        run_against_reference(compile_mlp(optimizer="sgd", lr=0.05, momentum=0.9, dampening=0.5),
                              DampenedFirstStep(lr=0.05, momentum=0.9, dampening=0.5), {})


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_hyperparams_have_torch_defaults(optimizer):
    mod = compile_mlp(optimizer=optimizer)
    assert mod.OPTIMIZER == optimizer
    assert mod.HYPERPARAMS == DEFAULTS[optimizer]
    for k, v in mod.HYPERPARAMS.items():
        assert type(v) is type(DEFAULTS[optimizer][k]), k  # betas a tuple, nesterov a bool, the rest floats
    assert mod.LR == mod.HYPERPARAMS["lr"]


def test_hyperparams_as_given():
    mod = compile_mlp(optimizer="adam", lr=0.02, betas=[0.8, 0.9], weight_decay=0.1)
    assert mod.HYPERPARAMS == {"lr": 0.02, "betas": (0.8, 0.9), "eps": 1e-8, "weight_decay": 0.1}
    assert isinstance(mod.HYPERPARAMS["betas"], tuple)
    mod = compile_mlp(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True)
    assert mod.HYPERPARAMS == {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": True}
    mod = compile_mlp()  # sgd is the default optimizer
    assert mod.OPTIMIZER == "sgd" and mod.HYPERPARAMS == DEFAULTS["sgd"]


def test_spec_train_section_sets_the_optimizer(tmp_path):
    mod = compile_toml(tmp_path, """
        [inputs]
        X = [4, 3]
        y = [4, 1]
        [params]
        W = { shape = [3, 1], init = "randn" }
        [nodes]
        loss = "mse(X @ W, y)"
        [train]
        loss = "loss"
        optimizer = "adamw"
        lr = 0.01
        betas = [0.8, 0.95]
        eps = 1e-6
        weight_decay = 0.2
    """)
    assert mod.OPTIMIZER == "adamw"
    assert mod.HYPERPARAMS == {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.2}


@pytest.mark.parametrize("kw, reference", [
    ({"optimizer": "adam", "lr": 0.01, "weight_decay": 0.01}, Adam(lr=0.01, weight_decay=0.01)),
    ({"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True}, SGD(lr=0.05, momentum=0.9, nesterov=True)),
], ids=["adam", "sgd"])
def test_float32_optimizer_state_stays_float32(kw, reference):
    mod = compile_mlp(dtype="float32", **kw)
    params = random_params(mod, seed=2)
    expected = {k: v.astype(np.float64) for k, v in params.items()}
    trainer = mod.Trainer(copy(params))
    for X, y in batches(mod, 4):
        X, y = X.astype(np.float32), y.astype(np.float32)
        reference.update(expected, {k: g.astype(np.float64) for k, g in mod.value_and_grad(
            {k: v.astype(np.float32) for k, v in expected.items()}, X, y)[1].items()})
        trainer.step(X, y)
    assert all(v.dtype == np.float32 for v in trainer.params.values())
    assert all(v.dtype in (np.float32, np.int64) or v.ndim == 0 for v in trainer.state_dict().values())
    assert_params_close(trainer.params, expected, rtol=1e-4, atol=1e-5)


def test_check_finite_leaves_the_optimizer_state_as_it_was():
    """A refused step changes nothing: not the params, not Adam's moments, not the step count."""
    mod = compile_mlp(optimizer="adam", lr=0.01)
    params = random_params(mod, seed=2)
    (X, y), (X2, y2) = batches(mod, 2)
    trainer = mod.Trainer(copy(params), check_finite=True)
    trainer.step(X, y)
    before = {k: v.copy() for k, v in trainer.state_dict().items()}
    bad = X2.copy()
    bad[0, 0] = np.inf
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="step 2"):
        trainer.step(bad, y2)
    assert trainer.steps == 1
    after = trainer.state_dict()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    reference = mod.Trainer(copy(params))
    reference.step(X, y)
    reference.step(X2, y2)
    trainer.step(X2, y2)
    assert_params_close(trainer.params, reference.params, rtol=1e-14)


# ---- apply_gradients: step's update on gradients computed elsewhere ----------------------------------------------

@pytest.mark.parametrize("kw", [
    {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.1},
    {"optimizer": "adamw", "lr": 0.01},
], ids=["sgd", "adam", "adamw"])
def test_apply_gradients_equals_step(kw):
    mod = compile_mlp(**kw)
    params = random_params(mod, seed=4)
    stepped, applied, mixed = (mod.Trainer(copy(params)) for _ in range(3))
    for i, (X, y) in enumerate(batches(mod, 5)):
        stepped.step(X, y)
        _, grads = mod.value_and_grad(applied.params, X, y)
        applied.apply_gradients(grads)
        if i % 2:  # the two share one optimizer state: alternating them is the same training
            mixed.step(X, y)
        else:
            mixed.apply_gradients(mod.value_and_grad(mixed.params, X, y)[1])
        assert_params_close(applied.params, stepped.params, rtol=1e-12, what=f"apply_gradients, step {i + 1}:")
        assert_params_close(mixed.params, stepped.params, rtol=1e-12, what=f"mixed, step {i + 1}:")
    assert stepped.steps == applied.steps == mixed.steps == 5
    assert any(not np.allclose(stepped.params[k], params[k]) for k in params)


# ---- fit: the batching rule of §11 -------------------------------------------------------------------------------

FIT_SPEC = """
    [dims]
    N = 16
    [inputs]
    X = ["N", 4]
    y = ["N", 2]
    s = [2]                 # no batch dimension: passed whole to every step
    [params]
    W = { shape = [4, 2], init = "randn", scale = 0.5 }
    b = { shape = [2], init = "zeros" }
    [nodes]
    pred = "X @ W + b"
    loss = "mse(pred * s, y)"
    [train]
    loss = "loss"
    outputs = ["pred"]
    optimizer = "adam"
    lr = 0.01
    epochs = 3
    batch_size = 16
"""


@pytest.fixture(scope="module")
def fit_mod(tmp_path_factory):
    return compile_toml(tmp_path_factory.mktemp("fit"), FIT_SPEC, "fitmodel")


def fit_data(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.standard_normal((n, 2)), np.array([1.5, -0.5])


def replay(mod, params, X, y, s, epochs, batch_size, shuffle=True, seed=0):
    """§11's rule, step by step: one default_rng(seed) per call, a permutation per epoch, consecutive slices."""
    trainer = mod.Trainer(copy(params))
    rng = np.random.default_rng(seed)
    n = len(X)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(n) if shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            losses.append(trainer.step(X[idx], y[idx], s))
    return trainer, losses


@pytest.mark.parametrize("shuffle, seed", [(True, 0), (True, 7), (False, 0)])
def test_fit_follows_the_batching_rule(fit_mod, shuffle, seed):
    mod = fit_mod
    X, y, s = fit_data()
    params = mod.init_params(1)
    trainer = mod.Trainer(copy(params))
    losses = trainer.fit(X, y, s, epochs=4, batch_size=16, shuffle=shuffle, seed=seed)
    expected, expected_losses = replay(mod, params, X, y, s, 4, 16, shuffle, seed)
    assert len(losses) == 4 * 4  # 16 + 16 + 16 + 2 rows per epoch: the last batch is partial
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-12)
    assert_params_close(trainer.params, expected.params, rtol=1e-12)
    assert trainer.steps == 16


def test_fit_seed_and_shuffle_change_the_order(fit_mod):
    mod = fit_mod
    X, y, s = fit_data()
    params = mod.init_params(1)
    run = lambda **kw: mod.Trainer(copy(params)).fit(X, y, s, epochs=1, batch_size=16, **kw)  # noqa: E731
    assert run(seed=0) == pytest.approx(run(), rel=1e-12)  # seed=0, shuffle=True by default
    assert not np.allclose(run(seed=0), run(seed=1))
    assert not np.allclose(run(seed=0), run(shuffle=False))


def test_fit_makes_a_new_rng_per_call(fit_mod):
    mod = fit_mod
    X, y, s = fit_data()
    params = mod.init_params(2)
    trainer = mod.Trainer(copy(params))
    first = trainer.fit(X, y, s, epochs=2, batch_size=8, seed=3)
    second = trainer.fit(X, y, s, epochs=1, batch_size=8, seed=3)
    # the same batches as three epochs of which the third restarts the rng: replay both calls on one trainer
    reference = mod.Trainer(copy(params))
    expected = []
    for epochs in (2, 1):
        rng = np.random.default_rng(3)
        for _ in range(epochs):
            order = rng.permutation(len(X))
            expected += [reference.step(X[order[i:i + 8]], y[order[i:i + 8]], s) for i in range(0, len(X), 8)]
    np.testing.assert_allclose(first + second, expected, rtol=1e-12)
    assert_params_close(trainer.params, reference.params, rtol=1e-12)


def test_fit_defaults_come_from_the_spec(fit_mod):
    mod = fit_mod
    assert mod.EPOCHS == 3 and mod.BATCH_SIZE == 16 and mod.DIMS == {"N": 16}
    X, y, s = fit_data(40)
    params = mod.init_params(0)
    trainer = mod.Trainer(copy(params))
    losses = trainer.fit(X, y, s)
    expected, expected_losses = replay(mod, params, X, y, s, 3, 16)
    assert len(losses) == 3 * 3
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-12)
    assert_params_close(trainer.params, expected.params, rtol=1e-12)


def test_fit_trains(fit_mod):
    mod = fit_mod
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 4))
    s = np.array([1.5, -0.5])
    y = (X @ rng.standard_normal((4, 2)) + 0.3) * s
    losses = mod.Trainer(mod.init_params(0)).fit(X, y, s, epochs=40, batch_size=20)
    assert len(losses) == 400 and np.mean(losses[-10:]) < 0.01 * np.mean(losses[:10])


def parse_log(line):
    """(epoch, loss, rows/s) from a progress line, whatever its exact words: structure, not format."""
    epoch = re.search(r"epoch\D*?(\d+)", line, re.IGNORECASE)
    loss = re.search(r"loss\D*?(\d[\d.]*(?:e[-+]?\d+)?)", line, re.IGNORECASE)
    rate = re.search(r"(\d[\d.,]*(?:e[-+]?\d+)?)\s*[kM]?\s*rows?\s*(?:/\s*s|per\s+s)", line, re.IGNORECASE)
    assert epoch and loss and rate, f"a progress line needs the epoch, the mean loss and rows/s: {line!r}"
    return int(epoch.group(1)), float(loss.group(1)), float(rate.group(1).replace(",", ""))


def test_fit_log_every_prints_one_line_per_logged_epoch(fit_mod, capsys):
    mod = fit_mod
    X, y, s = fit_data()
    losses = mod.Trainer(mod.init_params(0)).fit(X, y, s, epochs=6, batch_size=16, log_every=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    logged = [parse_log(line) for line in lines]
    assert [e for e, _, _ in logged] == [2, 4, 6]
    for epoch, mean, rate in logged:
        epoch_losses = losses[(epoch - 1) * 4:epoch * 4]
        assert mean == pytest.approx(np.mean(epoch_losses), rel=1e-2)  # the epoch's mean, as printed
        assert rate > 0
    mod.Trainer(mod.init_params(0)).fit(X, y, s, epochs=2, batch_size=16)  # log_every=0: silent
    assert capsys.readouterr().out == ""


def test_fit_iterations_keeps_full_batch_steps(capsys):
    mod = compile_mlp(optimizer="sgd", lr=0.05, iterations=30)  # fixed shapes: no batch dimension
    (X, y), = batches(mod, 1)
    trainer = mod.Trainer(mod.init_params(0))
    losses = trainer.fit(X, y, iterations=12, log_every=4)
    assert len(capsys.readouterr().out.splitlines()) == 3
    reference = mod.Trainer(mod.init_params(0))
    np.testing.assert_allclose(losses, [reference.step(X, y) for _ in range(12)], rtol=1e-12)
    assert_params_close(trainer.params, reference.params, rtol=1e-12)
    assert len(trainer.fit(X, y)) == 30  # ITERATIONS, as compiled
    assert losses[-1] < losses[0]


# ---- named dimensions end to end (§9) ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def named_mod():
    g = gc.Graph("named")
    X, y = g.input("X", ("N", 8)), g.input("y", ("N", 3))
    W1, b1 = g.param("W1", (8, 6), scale=0.5), g.param("b1", (6,), init="zeros")
    W2, b2 = g.param("W2", (6, 3), scale=0.5), g.param("b2", (3,), init="zeros")
    pred = gc.add(gc.matmul(gc.relu(X @ W1 + b1, name="h"), W2), b2, name="pred")
    return gc.compile(g, loss=gc.mse(pred, y, name="loss"), outputs=[pred], optimizer="adam", lr=0.01,
                      dims={"N": 32}).load()


def numpy_predict(p, X):
    return np.maximum(X @ p["W1"] + p["b1"], 0) @ p["W2"] + p["b2"]


def test_named_dims_are_kept(named_mod):
    assert named_mod.DIMS == {"N": 32}
    assert tuple(named_mod._SHAPES["X"]) == ("N", 8) and tuple(named_mod._SHAPES["y"]) == ("N", 3)


@pytest.mark.parametrize("n", [1, 7, 100])
def test_any_batch_size(named_mod, n):
    mod = named_mod
    params = random_params(mod)
    rng = np.random.default_rng(n)
    X, y = rng.standard_normal((n, 8)), rng.standard_normal((n, 3))
    pred = numpy_predict(params, X)
    np.testing.assert_allclose(mod.predict(params, X), pred, rtol=1e-12)
    # mse's mean divides by the run-time size
    assert mod.loss(params, X, y) == pytest.approx(np.mean((pred - y) ** 2), rel=1e-12)
    value, grads = mod.value_and_grad(params, X, y)
    assert value == pytest.approx(np.mean((pred - y) ** 2), rel=1e-12)
    db2 = 2 * np.sum(pred - y, axis=0) / (n * 3)
    np.testing.assert_allclose(grads["b2"], db2, rtol=1e-10, atol=1e-14)


def test_mismatched_dimension_names_both_inputs(named_mod):
    mod = named_mod
    params = random_params(mod)
    X, y = np.ones((10, 8)), np.ones((9, 3))
    for fn in (mod.loss, mod.value_and_grad):
        with pytest.raises(ValueError) as err:
            fn(params, X, y)
        message = str(err.value)
        for part in ("'N'", "'X'", "'y'", "10", "9"):
            assert part in message, (part, message)
    trainer = mod.Trainer(copy(params))
    with pytest.raises(ValueError, match="'N'"):
        trainer.step(X, y)
    assert_params_close(trainer.params, params, rtol=0, atol=0)
    assert trainer.steps == 0
    with pytest.raises(ValueError, match="'X'"):  # a fixed dimension is still checked
        mod.predict(params, np.ones((10, 7)))


def test_trainer_on_several_batch_sizes_and_back(named_mod):
    """One workspace per size, one optimizer state: sizes 32, 7, 32, 1, 7 give Adam on value_and_grad."""
    mod = named_mod
    params = random_params(mod, seed=3)
    expected = copy(params)
    reference = Adam(lr=0.01)
    trainer = mod.Trainer(copy(params))
    rng = np.random.default_rng(0)
    for i, n in enumerate([32, 7, 32, 1, 7, 32]):
        X, y = rng.standard_normal((n, 8)), rng.standard_normal((n, 3))
        value, grads = mod.value_and_grad(expected, X, y)
        reference.update(expected, grads)
        assert trainer.step(X, y) == pytest.approx(value, rel=1e-12), f"step {i + 1}, N={n}"
        assert_params_close(trainer.params, expected, what=f"step {i + 1}, N={n}:")


# ---- integer labels (§9) -----------------------------------------------------------------------------------------

CLASSIFIER_SPEC = """
    [dims]
    N = 8
    [inputs]
    X = ["N", 6]
    y = { shape = ["N"], dtype = "int64" }
    [params]
    W = { shape = [6, 4], init = "randn", scale = 0.5 }
    b = { shape = [4], init = "zeros" }
    [nodes]
    logits = "X @ W + b"
    loss = "cross_entropy(logits, y)"
    [train]
    loss = "loss"
    outputs = ["logits"]
    optimizer = "adam"
    lr = 0.01
"""


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return compile_toml(tmp_path_factory.mktemp("classifier"), CLASSIFIER_SPEC, "classifier")


def numpy_cross_entropy(logits, y):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -np.mean(log_probs[np.arange(len(y)), y])


def classifier_data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)), rng.integers(0, 4, n)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint8, np.uint64])
def test_any_integer_labels(classifier, dtype):
    mod = classifier
    params = random_params(mod)
    X, y = classifier_data()
    expected = numpy_cross_entropy(X @ params["W"] + params["b"], y)
    assert mod.loss(params, X, y.astype(dtype)) == pytest.approx(expected, rel=1e-12)
    _, grads64 = mod.value_and_grad(params, X, y)
    value, grads = mod.value_and_grad(params, X, y.astype(dtype))
    assert value == pytest.approx(expected, rel=1e-12)
    assert_params_close(grads, grads64, rtol=1e-14)
    a, b = mod.Trainer(copy(params)), mod.Trainer(copy(params))
    a.step(X, y)
    b.step(X, y.astype(dtype))
    assert_params_close(b.params, a.params, rtol=1e-14)


@pytest.mark.parametrize("bad", [4, -1, 1000])
def test_out_of_range_class_index_names_the_input(classifier, bad):
    mod = classifier
    params = random_params(mod)
    X, y = classifier_data()
    y_bad = y.copy()
    y_bad[5] = bad
    for fn in (mod.loss, mod.value_and_grad):
        with pytest.raises(ValueError, match="'y'"):
            fn(params, X, y_bad)
    trainer = mod.Trainer(copy(params))
    trainer.step(X, y)
    before = copy(trainer.params)
    with pytest.raises(ValueError, match="'y'"):
        trainer.step(X, y_bad)
    assert_params_close(trainer.params, before, rtol=0, atol=0)
    assert trainer.steps == 1
    # the bad step left no trace in the optimizer state: the next step is the one a trainer that never saw it makes
    fresh = mod.Trainer(copy(params))
    fresh.step(X, y)
    trainer.step(X, y)
    fresh.step(X, y)
    assert_params_close(trainer.params, fresh.params, rtol=1e-14)


def test_a_uint64_label_past_int64_is_reported_as_it_is(classifier):
    """2**64 - 1 does not fit int64: the check happens before the conversion, which would make it -1."""
    X, y = classifier_data()
    y = y.astype(np.uint64)
    y[2] = 2**64 - 1
    with pytest.raises(ValueError, match=r"input 'y': class index 18446744073709551615 is outside \[0, 4\)"):
        classifier.loss(classifier.init_params(), X, y)


def test_an_empty_batch_is_a_value_error(classifier):
    """No rows: the mean over them is 0 / 0. The functions of the loss and step say so; predict returns no rows
    and fit takes no step (tests/test_names.py)."""
    mod = classifier
    params = mod.init_params()
    X, y = np.zeros((0, 6)), np.zeros(0, np.int64)
    trainer = mod.Trainer(copy(params))
    for call in (partial(mod.loss, params), partial(mod.value_and_grad, params), trainer.step,
                 partial(trainer.fit, iterations=1)):
        with pytest.raises(ValueError, match="the batch is empty: dimension 'N' is 0"):
            call(X, y)
    assert trainer.steps == 0
    assert mod.predict(params, X).shape == (0, 4)


def test_fit_iterations_are_validated_like_epochs(classifier):
    trainer = classifier.Trainer(classifier.init_params())
    X, y = classifier_data()
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match=f"iterations must be a positive integer, got {re.escape(repr(bad))}"):
            trainer.fit(X, y, iterations=bad)
    assert trainer.steps == 0
    assert len(trainer.fit(X, y, iterations=2)) == 2


@pytest.mark.parametrize("spoil", [
    lambda a: a.setflags(write=False) or a,
    np.asfortranarray,
    lambda a: np.repeat(a, 2, axis=1)[:, ::2],
])
def test_trainer_copies_params_into_its_flat_storage(spoil):
    """Trainer keeps the params in one flat array: it copies them in, so a read-only or strided param is fine,
    and the dict it was given holds the views it updates (read and write them there)."""
    mod = compile_mlp(optimizer="adam", lr=0.01)
    params = random_params(mod, seed=2)
    params["W2"] = spoil(params["W2"].copy())
    given = params["W2"]
    trainer = mod.Trainer(params)
    assert trainer.params is params and params["W2"] is not given
    np.testing.assert_array_equal(params["W2"], given)
    flat = trainer._flat_params
    assert all(np.shares_memory(params[name], flat) for name in mod.PARAMS)
    trainer.step(*batches(mod, 1)[0])
    assert not np.array_equal(params["W2"], given)  # the views were updated


def test_float_labels_for_an_integer_input_are_rejected(classifier):
    mod = classifier
    X, y = classifier_data()
    with pytest.raises(ValueError, match="'y'"):
        mod.loss(mod.init_params(), X, y.astype(np.float64))


def test_classifier_predicts_one_row(classifier):
    mod = classifier
    params = random_params(mod)
    X, _ = classifier_data(1)
    np.testing.assert_allclose(mod.predict(params, X), X @ params["W"] + params["b"], rtol=1e-12)


# ---- allocation-free steps ---------------------------------------------------------------------------------------

# Big enough that every array a step could make is seen: rows of the batch (int64: 8 bytes * N), hidden bias and
# above. NumPy's ufunc iteration buffer (bufsize elements, 64 KiB by default, e.g. for a broadcast add) is no array
# of the step: it is shrunk to 16 elements here so that the threshold can be a few KiB.
ALLOC_SPEC = """
    [dims]
    N = 1024
    [inputs]
    X = ["N", 32]
    y = {{ shape = ["N"], dtype = "int64" }}
    [params]
    W1 = {{ shape = [32, 1024], init = "randn", scale = 0.1 }}
    b1 = {{ shape = [1024], init = "zeros" }}
    W2 = {{ shape = [1024, 10], init = "randn", scale = 0.03 }}
    b2 = {{ shape = [10], init = "zeros" }}
    [nodes]
    h = "relu(X @ W1 + b1)"
    logits = "h @ W2 + b2"
    loss = "cross_entropy(logits, y)"
    [train]
    loss = "loss"
    outputs = ["logits"]
    {optimizer}
"""
ALLOC_THRESHOLD = 4096  # bytes: the smallest array of concern (1024 int64 rows, the hidden bias) is 8 KiB


def traced_peak(fn):
    return peak_bytes(fn, bufsize=16)


@pytest.mark.parametrize("optimizer", [
    'optimizer = "sgd"\n    lr = 0.01\n    momentum = 0.9\n    nesterov = true\n    weight_decay = 1e-4',
    'optimizer = "adam"\n    weight_decay = 1e-4',
    'optimizer = "adamw"',
], ids=["sgd-momentum-nesterov", "adam", "adamw"])
def test_step_allocates_no_arrays(tmp_path, optimizer):
    mod = compile_toml(tmp_path, ALLOC_SPEC.format(optimizer=optimizer), "alloc")
    rng = np.random.default_rng(0)
    full = rng.standard_normal((1024, 32)), rng.integers(0, 10, 1024)
    partial = rng.standard_normal((600, 32)), rng.integers(0, 10, 600)  # the last batch of an epoch
    trainer = mod.Trainer(mod.init_params())
    trainer.step(*full)
    trainer.step(*partial)  # first use of each size: its workspace is allocated here
    trainer.step(*full)
    assert traced_peak(lambda: trainer.step(*partial)) < ALLOC_THRESHOLD  # after the other size
    assert traced_peak(lambda: trainer.step(*full)) < ALLOC_THRESHOLD
    assert traced_peak(lambda: trainer.step(*full)) < ALLOC_THRESHOLD
    # the measure sees arrays: value_and_grad makes fresh ones
    assert traced_peak(lambda: mod.value_and_grad(trainer.params, *partial)) > 600 * 1024 * 8


# ---- bad hyperparameters -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, word", [
    ({"optimizer": "adam", "momentum": 0.9}, "momentum"),
    ({"optimizer": "adamw", "nesterov": True}, "nesterov"),
    ({"optimizer": "sgd", "betas": (0.9, 0.999)}, "betas"),
    ({"optimizer": "sgd", "eps": 1e-8}, "eps"),
    ({"optimizer": "sgd", "nesterov": True}, "nesterov"),  # without momentum
    ({"optimizer": "sgd", "momentum": 0.9, "dampening": 0.1, "nesterov": True}, "nesterov"),  # torch: needs dampening 0
    ({"optimizer": "sgd", "lr": -0.1}, "lr"),
    ({"optimizer": "adam", "lr": -1e-3}, "lr"),
    ({"optimizer": "adam", "eps": -1e-8}, "eps"),
    ({"optimizer": "adam", "betas": (0.9, 1.0)}, "betas"),
    ({"optimizer": "adamw", "betas": (-0.1, 0.999)}, "betas"),
    ({"optimizer": "adam", "betas": (1.5, 0.999)}, "betas"),
    ({"optimizer": "sgd", "momentum": -0.5}, "momentum"),
    ({"optimizer": "adam", "weight_decay": -0.01}, "weight_decay"),
    ({"optimizer": "rmsprop"}, "rmsprop"),
])
def test_bad_hyperparameter_is_a_one_line_compile_error(kw, word):
    g, loss = mlp_graph()
    with pytest.raises(gc.GraphcError) as err:
        gc.compile(g, loss=loss, **kw)
    message = str(err.value)
    assert word in message and "\n" not in message, message


def test_batch_size_needs_a_batch_dimension():
    g, loss = mlp_graph()  # fixed shapes: nothing to split into batches
    with pytest.raises(gc.GraphcError, match="batch_size"):
        gc.compile(g, loss=loss, batch_size=8)


@pytest.mark.parametrize("train, word", [
    ('optimizer = "sgd"\nbetas = [0.9, 0.999]', "betas"),
    ('optimizer = "adam"\nmomentum = 0.9', "momentum"),
    ('optimizer = "sgd"\nnesterov = true', "nesterov"),
    ('optimizer = "adam"\nbetas = [0.9, 1.0]', "betas"),
    ('optimizer = "adam"\neps = -1.0', "eps"),
    ('optimizer = "adamw"\nlr = -0.001', "lr"),
])
def test_bad_hyperparameter_in_a_spec_is_one_line_exit_2(tmp_path, capsys, train, word):
    spec = tmp_path / "bad.toml"
    spec.write_text('[inputs]\nX = [4, 3]\ny = [4, 1]\n[params]\nW = { shape = [3, 1], init = \"randn\" }\n'
                    '[nodes]\nloss = "mse(X @ W, y)"\n[train]\nloss = "loss"\n' + train + "\n")
    out = tmp_path / "bad.py"
    out.write_text("# precious\n")
    assert cli.main(["compile", str(spec), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("graphc: error: ") and captured.err.count("\n") == 1, captured.err
    assert str(spec) in captured.err and word in captured.err, captured.err
    assert out.read_text() == "# precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.py", "bad.toml"]


@pytest.mark.parametrize("optimizer, overrides, error, word", [
    ("adam", {"momentum": 0.9}, TypeError, "momentum"),  # not a hyperparameter of adam: an unexpected keyword
    ("sgd", {"betas": (0.9, 0.99)}, TypeError, "betas"),
    ("sgd", {"lr": -0.1}, ValueError, "lr"),
    ("adam", {"eps": -1.0}, ValueError, "eps"),
    ("adam", {"betas": (0.9, 1.0)}, ValueError, "betas"),
    ("adamw", {"betas": (-0.5, 0.9)}, ValueError, "betas"),
    ("sgd", {"nesterov": True}, ValueError, "nesterov"),  # compiled without momentum
    ("sgd", {"momentum": -1.0}, ValueError, "momentum"),
    ("adamw", {"weight_decay": -0.1}, ValueError, "weight_decay"),
])
def test_bad_hyperparameter_at_run_time(optimizer, overrides, error, word):
    mod = compile_mlp(optimizer=optimizer)
    params = mod.init_params()
    before = copy(params)
    with pytest.raises(error, match=word):
        mod.Trainer(params, **overrides)
    assert_params_close(params, before, rtol=0, atol=0)


# ---- the digits example ------------------------------------------------------------------------------------------

def test_digits_example_trains_a_classifier(root, tmp_path):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    module, saved = tmp_path / "digits_model.py", tmp_path / "digits_params.npz"
    run = subprocess.run(
        [sys.executable, "examples/digits.py", "--epochs", "4", "--module", str(module), "--params", str(saved)],
        capture_output=True, text=True, cwd=root, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    logged = [line for line in lines if re.search(r"\bepoch\b", line, re.IGNORECASE)]
    assert [parse_log(line)[0] for line in logged] == [1, 2, 3, 4], run.stdout
    accuracy = float(re.search(r"test accuracy:?\s*([\d.]+)\s*%", run.stdout).group(1)) / 100
    assert accuracy > 0.9, run.stdout
    # the saved params are the trained model: the shipped module predicts the split's test rows with them
    mod = import_file(module)
    params = mod.load_params(saved)
    digits = load_digits()
    _, X_test, _, y_test = train_test_split(digits.data / 16, digits.target, test_size=360, random_state=0,
                                            stratify=digits.target)
    assert np.mean(np.argmax(mod.predict(params, X_test), axis=1) == y_test) == pytest.approx(accuracy, abs=1e-3)
    assert np.argmax(mod.predict(params, X_test[:1]), axis=1).shape == (1,)  # one row
