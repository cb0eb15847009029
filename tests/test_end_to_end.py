"""Layer 3: compile, import the generated module, compare with hand-written NumPy."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphc as gc
from gradcheck import check_gradients, random_inputs, random_params
from test_adjoint import two_layer

pytestmark = pytest.mark.unformatted


@pytest.fixture(scope="module")
def two_layer_mod():
    g, loss = two_layer()
    return gc.compile(g, loss=loss, outputs=["pred"], lr=1e-5, iterations=200).load()


def compile_spec(path, **kw):
    spec = gc.load_spec(path, **kw)
    return gc.compile(spec.graph, spec.loss, spec.outputs, spec.lr, spec.iterations)


def test_chain_rule(root):
    mod = compile_spec("examples/chain_rule.toml").load()
    params = mod.init_params()
    value, grads = mod.value_and_grad(params)
    assert value == -2.0
    assert {k: float(v) for k, v in grads.items()} == {"x": 1.0, "y": 2.0, "z": -1.0}
    check_gradients(mod, random_params(mod), ())


def test_two_layer_gradients(root):
    mod = compile_spec("examples/two_layer.toml").load()
    params = {k: 0.1 * v for k, v in random_params(mod, seed=3).items()}  # a loss of order 1: precise differences
    check_gradients(mod, params, random_inputs(mod, seed=4))


def hand_written_step(p, X, y, lr):
    """The classic two-layer NumPy backprop, corrected (biases, relu mask on the pre-activation)."""
    h_pre = X @ p["W1"] + p["b1"]
    h = np.maximum(h_pre, 0)
    pred = h @ p["W2"] + p["b2"]
    loss = np.square(pred - y).sum()
    dpred = 2.0 * (pred - y)
    dW2, db2 = h.T @ dpred, dpred.sum(axis=0)
    dh_pre = (dpred @ p["W2"].T) * (h_pre > 0)
    dW1, db1 = X.T @ dh_pre, dh_pre.sum(axis=0)
    for name, grad in (("W1", dW1), ("b1", db1), ("W2", dW2), ("b2", db2)):
        p[name] = p[name] - lr * grad
    return loss


def test_two_layer_trajectory_matches_hand_written_numpy(root):
    mod = compile_spec("examples/two_layer.toml").load()
    assert mod.LR == 1e-5 and mod.ITERATIONS == 200
    params = mod.init_params(0)
    reference = {k: v.copy() for k, v in params.items()}
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 100)), rng.standard_normal((32, 10))
    trainer = mod.Trainer(params)
    for step in range(200):
        expected = hand_written_step(reference, X, y, mod.LR)
        got = trainer.step(X, y)
        assert got == pytest.approx(expected, rel=1e-9), f"step {step}"
    for name in mod.PARAMS:
        np.testing.assert_allclose(trainer.params[name], reference[name], rtol=1e-9, atol=1e-12)
    assert trainer.params is params  # updated in place
    assert got < 1e-3 * hand_written_step({k: v.copy() for k, v in mod.init_params(0).items()}, X, y, 0.0)


def test_trainer_step_matches_value_and_grad(two_layer_mod):
    mod = two_layer_mod
    params = random_params(mod)
    X, y = random_inputs(mod)
    value, grads = mod.value_and_grad(params, X, y)
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()}, lr=0.5)
    assert trainer.step(X, y) == pytest.approx(value, rel=1e-12)  # np.vdot against np.sum: not bit-equal on every CPU
    for name in mod.PARAMS:
        np.testing.assert_allclose(trainer.params[name], params[name] - 0.5 * grads[name], rtol=1e-12)


def test_fit_returns_the_losses(two_layer_mod):
    mod = two_layer_mod
    losses = mod.Trainer(mod.init_params(1)).fit(*random_inputs(mod), iterations=50)
    assert len(losses) == 50 and losses[-1] < losses[0] / 1000


def test_inputs_by_keyword_and_checked(two_layer_mod):
    mod = two_layer_mod
    params = mod.init_params()
    X, y = random_inputs(mod)
    assert mod.loss(params, y=y, X=X) == mod.loss(params, X, y)
    with pytest.raises(ValueError, match=r"input 'X': expected shape \(32, 100\) float64, got \(32, 99\) float64"):
        mod.loss(params, X[:, :99], y)
    with pytest.raises(ValueError, match=r"input 'y': expected shape \(32, 10\) float64, got \(32, 10\) float32"):
        mod.value_and_grad(params, X, y.astype(np.float32))
    with pytest.raises(ValueError, match="param 'W1'"):
        mod.Trainer({**params, "W1": params["W1"].astype(np.float32)})


def test_predict_takes_only_the_inputs_it_needs(two_layer_mod):
    mod = two_layer_mod
    params = mod.init_params()
    X, _ = random_inputs(mod)
    np.testing.assert_allclose(mod.predict(params, X), np.maximum(X @ params["W1"], 0) @ params["W2"])


def test_float32_compile_is_float32_throughout(root):
    mod = compile_spec("examples/two_layer.toml", dtype="float32").load()
    params = mod.init_params()
    assert mod.DTYPE is np.float32 and all(v.dtype == np.float32 for v in params.values())
    X, y = (x.astype(np.float32) for x in random_inputs(mod))
    assert mod.predict(params, X).dtype == np.float32
    value, grads = mod.value_and_grad(params, X, y)
    assert all(g.dtype == np.float32 for g in grads.values())
    trainer = mod.Trainer(params)
    losses = trainer.fit(X, y, iterations=20)
    assert all(v.dtype == np.float32 for v in trainer.params.values())
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="float32"):
        mod.loss(params, X.astype(np.float64), y)


def test_generated_module_runs_without_graphc(root, tmp_path):
    path = tmp_path / "two_layer.py"
    compile_spec("examples/two_layer.toml").save(path)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["graphc"] = None  # any import of graphc now fails
        try:
            import graphc
        except ImportError:
            pass
        else:
            raise SystemExit("graphc is importable")
        sys.path.insert(0, {str(tmp_path)!r})
        import two_layer
        trainer = two_layer.Trainer(two_layer.init_params(0))
        import numpy as np
        rng = np.random.default_rng(0)
        losses = trainer.fit(rng.standard_normal((32, 100)), rng.standard_normal((32, 10)), iterations=50)
        assert losses[-1] < losses[0] / 100, losses
        print("standalone ok")
    """)
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "standalone ok" in result.stdout
    run = subprocess.run([sys.executable, "-I", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "loss" in run.stdout.splitlines()[-1]


def test_builder_and_spec_compile_to_the_same_gradients(root):
    spec_mod = compile_spec("examples/two_layer.toml").load()
    g, loss = two_layer()
    builder_mod = gc.compile(g, loss=loss, outputs=["pred"]).load()
    params = random_params(spec_mod)
    inputs = random_inputs(spec_mod)
    v1, g1 = spec_mod.value_and_grad(params, *inputs)
    v2, g2 = builder_mod.value_and_grad(params, *inputs)
    assert v1 == pytest.approx(v2, rel=1e-12)
    for name in spec_mod.PARAMS:
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-12)


def test_from_networkx_and_operators_with_numbers():
    g = gc.Graph("scaled")
    x = g.param("x", (3,))
    t = g.input("t", (3,))
    gc.mse(0.5 * x - 1 + x * x, t, name="loss")
    G = g.nx
    g2 = gc.from_networkx(G)
    assert list(g2.nx.nodes) == list(G.nodes)
    mod = gc.compile(g2, loss="loss").load()
    check_gradients(mod, random_params(mod), random_inputs(mod))


def test_a_failed_builder_call_leaves_the_graph_as_it_was():
    g = gc.Graph()
    X = g.input("X", (2, 3))
    for bad in (lambda: X @ 2.0, lambda: gc.add(X, 1.0, name="X"), lambda: g.apply("relu")):
        with pytest.raises(gc.GraphcError):
            bad()
    assert list(g.nx.nodes) == ["X"]  # no stray constant, no half-added node
