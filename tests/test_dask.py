"""Data-parallel training on Dask (graphc.dask): the same params as one process, and failures that change nothing.

One LocalCluster of 2 worker processes (1 thread each) for the module. graphc is made unimportable on its workers,
so every test also checks that the workers need only the generated module (shipped with upload_file) and NumPy.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from dask.distributed import Client, LocalCluster

import graphc as gc
from graphc.dask import EXTRA_HINT, DataParallelError, DataParallelTrainer

pytestmark = pytest.mark.unformatted

WORKERS = 2


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture
def client(cluster):
    with Client(cluster) as client:
        client.wait_for_workers(WORKERS, timeout=60)  # a test that killed a worker: its nanny starts another
        client.run(exec, "import sys; sys.modules['graphc'] = None", {})  # workers cannot import graphc
        yield client


# ---- models, compiled by graphc ----

def mlp(tmp_path, reduction="mean", **train):
    """A small relu MLP with an mse loss over a named batch dimension N."""
    g = gc.Graph("dp_mlp")
    X = g.input("X", ("N", 6))
    y = g.input("y", ("N", 3))
    W1 = g.param("W1", (6, 16), init="randn", scale=0.4)
    b1 = g.param("b1", (16,), init="zeros")
    W2 = g.param("W2", (16, 3), init="randn", scale=0.4)
    b2 = g.param("b2", (3,), init="zeros")
    h = gc.relu(X @ W1 + b1, name="h")
    pred = gc.add(h @ W2, b2, name="pred")
    loss = gc.mse(pred, y, reduction=reduction, name="loss")
    module = gc.compile(g, loss=loss, outputs=[pred], dims={"N": 32}, **train)
    assert "dask" not in module.source.lower()  # the generated module knows nothing of Dask
    return module.save(tmp_path / f"dp_mlp_{reduction}.py")


def mlp_data(n=37, seed=1):
    """37 rows: two shards of 19 and 18, so a mean that weighted the shards equally would be wrong."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    y = np.tanh(X[:, :3] - 0.5 * X[:, 3:]) + 0.1 * rng.standard_normal((n, 3))
    return X, y


DIGITS_SPEC = """
name = "digits"

[dims]
N = 64

[inputs]
X = ["N", 64]
labels = { shape = ["N"], dtype = "int64" }

[params]
W1 = { shape = [64, 32], init = "randn", scale = 0.1 }
b1 = { shape = [32], init = "zeros" }
W2 = { shape = [32, 10], init = "randn", scale = 0.1 }
b2 = { shape = [10], init = "zeros" }

[nodes]
h = "relu(X @ W1 + b1)"
logits = "h @ W2 + b2"
loss = "cross_entropy(logits, labels)"

[train]
loss = "loss"
outputs = ["logits"]
optimizer = "adam"
lr = 0.01
"""


def digits(tmp_path):
    spec = tmp_path / "digits.toml"
    spec.write_text(DIGITS_SPEC)
    out = tmp_path / "digits.py"
    run = subprocess.run([sys.executable, "-m", "graphc", "compile", str(spec), "-o", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return out


def digits_data(n=301):
    from sklearn.datasets import load_digits

    X, labels = load_digits(return_X_y=True)
    return X[:n] / 16.0, labels[:n].astype(np.int64)


# ---- helpers ----

def reference(mod, inputs, steps, **hyperparams):
    """Single-process full-batch training: Trainer.step on the whole batch."""
    trainer = mod.Trainer(mod.init_params(0), **hyperparams)
    return trainer, [trainer.step(*inputs) for _ in range(steps)]


def assert_same_params(got, want, rtol=1e-9, atol=1e-12):
    """Equal to float rounding (also a state_dict: its non-float entries, the optimizer's name, step count, equal)."""
    assert list(got) == list(want)
    for name in want:
        if np.issubdtype(np.asarray(want[name]).dtype, np.floating):
            np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def snapshot(trainer):
    """Params, optimizer state and step count, copied."""
    return {k: np.array(v, copy=True) for k, v in trainer.state_dict().items()}


def assert_state_equal(trainer, snap):
    state = trainer.state_dict()
    assert list(state) == list(snap)
    for k in snap:
        np.testing.assert_array_equal(state[k], snap[k], err_msg=k)


def on_worker(client, worker, dp, code):
    """Run ``code`` in worker ``worker`` with ``m``, the generated module as the workers imported it."""
    client.run(exec, f"import sys\nm = sys.modules[{dp.module.__name__!r}]\n{code}", {}, workers=[worker])


def break_worker(client, worker, dp, body):
    """Replace the body of the generated value_and_grad on one worker (its code object: the same function)."""
    on_worker(client, worker, dp, f"m._saved_code = m.value_and_grad.__code__\n"
                                  f"m.value_and_grad.__code__ = (lambda *a, **k: {body}).__code__")


def mend_worker(client, worker, dp):
    on_worker(client, worker, dp, "m.value_and_grad.__code__ = m._saved_code")


# ---- the same params as one process ----

def test_sgd_momentum_matches_full_batch_training(client, tmp_path):
    path = mlp(tmp_path, "mean", optimizer="sgd", lr=0.05, momentum=0.9)
    X, y = mlp_data()
    dp = DataParallelTrainer(client, path).scatter(X, y)
    assert dp.shard_rows == [19, 18] and len(set(dp.workers)) == WORKERS and dp.module.LOSS_REDUCTION == "mean"
    losses = dp.fit(15)
    ref, ref_losses = reference(dp.module, (X, y), 15)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)
    assert losses[-1] < 0.5 * losses[0]  # it trained
    assert_same_params(dp.params, ref.params)
    assert dp.steps == 15


def test_adam_sum_loss_matches_full_batch_training(client, tmp_path):
    path = mlp(tmp_path, "sum", optimizer="adam", lr=0.01)
    X, y = mlp_data(n=41, seed=2)
    dp = DataParallelTrainer(client, path, weight_decay=0.01).scatter(X, y)  # a Trainer override
    assert dp.shard_rows == [21, 20] and dp.module.LOSS_REDUCTION == "sum"
    losses = dp.fit(12)
    ref, ref_losses = reference(dp.module, (X, y), 12, weight_decay=0.01)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)
    assert losses[-1] < losses[0]
    assert_same_params(dp.params, ref.params)
    assert_same_params(dp.trainer.state_dict(), ref.state_dict())  # Adam's moments and step count too


def test_digits_cross_entropy_int64_labels(client, tmp_path):
    path = digits(tmp_path)
    X, labels = digits_data()
    dp = DataParallelTrainer(client, path).scatter(X, labels)
    assert dp.shard_rows == [151, 150]
    losses = dp.fit(10)
    ref, ref_losses = reference(dp.module, (X, labels), 10)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)
    assert losses[-1] < 0.8 * losses[0]
    assert_same_params(dp.params, ref.params)


def test_whole_inputs_given_params_and_a_compiled_module(client, tmp_path):
    """An input without the batch dimension goes whole to every worker; params= is trained in place; a
    CompiledModule works as well as its saved file."""
    g = gc.Graph("scaled")
    X = g.input("X", ("N", 6))
    scale = g.input("scale", (3,))  # no batch dimension
    y = g.input("y", ("N", 3))
    W = g.param("W", (6, 3), init="randn", scale=0.3)
    loss = gc.mse((X @ W) * scale, y, reduction="sum", name="loss")
    module = gc.compile(g, loss=loss, optimizer="sgd", lr=0.005, momentum=0.5, dims={"N": 8})
    X, y = mlp_data()
    s = np.array([0.5, 1.0, 2.0])
    params = {"W": np.full((6, 3), 0.1)}
    dp = DataParallelTrainer(client, module, params=params).scatter(X, scale=s, y=y)
    assert dp.params is params and dp.shard_rows == [19, 18]
    losses = dp.fit(6)
    ref = dp.module.Trainer({"W": np.full((6, 3), 0.1)})
    np.testing.assert_allclose(losses, [ref.step(X, s, y) for _ in range(6)], rtol=1e-10)
    assert_same_params(params, ref.params)
    saved = DataParallelTrainer(client, module.save(tmp_path / "scaled.py"))
    assert saved.module is dp.module  # the same source: the same module, on the driver and the workers


# ---- failures: the driver raises, the params are as after the last completed step ----

def test_worker_dying_mid_step_changes_nothing(client, tmp_path):
    path = mlp(tmp_path, "mean", optimizer="sgd", lr=0.05, momentum=0.9)
    X, y = mlp_data()
    dp = DataParallelTrainer(client, path).scatter(X, y)
    dp.fit(4)
    before = snapshot(dp.trainer)
    victim = dp.workers[1]
    break_worker(client, victim, dp, "__import__('os')._exit(1)")  # the process dies inside its task
    with pytest.raises(DataParallelError, match=f"step 5 failed: .*{victim} left the cluster.*as after step 4"):
        dp.step()
    assert_state_equal(dp.trainer, before)  # the surviving shard's gradient was not applied
    assert dp.steps == 4
    with pytest.raises(DataParallelError, match=r"no data on the workers \(they were lost in step 5\)"):
        dp.step()
    # Going on: re-shard on the workers there are now; 6 more steps give the params of 10 uninterrupted steps.
    client.wait_for_workers(WORKERS, timeout=60)
    client.run(exec, "import sys; sys.modules['graphc'] = None", {})
    dp.scatter(X, y)
    assert victim not in dp.workers
    dp.fit(6)
    ref, _ = reference(dp.module, (X, y), 10)
    assert_same_params(dp.params, ref.params)


def test_a_failing_task_changes_nothing_and_training_goes_on(client, tmp_path):
    path = mlp(tmp_path, "mean", optimizer="adam", lr=0.01)
    X, y = mlp_data()
    dp = DataParallelTrainer(client, path).scatter(X, y)
    dp.fit(3)
    before = snapshot(dp.trainer)
    break_worker(client, dp.workers[0], dp, "1 / 0")
    with pytest.raises(DataParallelError, match="step 4 failed: ZeroDivisionError.*as after step 3, nothing of "
                                                "step 4 was applied") as err:
        dp.step()
    assert isinstance(err.value.__cause__, ZeroDivisionError)
    assert_state_equal(dp.trainer, before)  # params, Adam's moments and its step count
    mend_worker(client, dp.workers[0], dp)
    dp.fit(5)  # the shards are still there
    ref, _ = reference(dp.module, (X, y), 8)
    assert_same_params(dp.params, ref.params)
    assert_same_params(dp.trainer.state_dict(), ref.state_dict())


def test_a_step_past_its_timeout_changes_nothing(client, tmp_path):
    path = mlp(tmp_path, "mean", optimizer="sgd", lr=0.05, momentum=0.9)
    X, y = mlp_data()
    dp = DataParallelTrainer(client, path, timeout=0.5).scatter(X, y)
    dp.fit(2)
    before = snapshot(dp.trainer)
    break_worker(client, dp.workers[1], dp, "__import__('time').sleep(2)")
    with pytest.raises(DataParallelError, match="step 3 failed: TimeoutError"):
        dp.step()
    assert_state_equal(dp.trainer, before)
    mend_worker(client, dp.workers[1], dp)
    dp.timeout = None
    dp.fit(3)
    ref, _ = reference(dp.module, (X, y), 5)
    assert_same_params(dp.params, ref.params)


def test_a_frozen_worker_fails_the_step_within_its_timeout(client, tmp_path):
    """A worker that stops answering (SIGSTOP) while the params are scattered: the step's timeout bounds every wait
    of the step, the scatter too; DataParallelError, nothing applied; once it answers again, training goes on."""
    path = mlp(tmp_path, "mean", optimizer="sgd", lr=0.05, momentum=0.9)
    X, y = mlp_data()
    dp = DataParallelTrainer(client, path, timeout=1.5).scatter(X, y)
    dp.fit(2)
    before = snapshot(dp.trainer)
    pid = client.run(os.getpid, workers=[dp.workers[1]])[dp.workers[1]]
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(DataParallelError, match="step 3 failed: .*as after step 2, nothing of step 3 was applied"):
            dp.step()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert_state_equal(dp.trainer, before)
    assert dp.steps == 2
    dp.fit(3)
    ref, _ = reference(dp.module, (X, y), 5)
    assert_same_params(dp.params, ref.params)


def test_a_non_finite_gradient_is_a_data_parallel_error(client, tmp_path):
    path = mlp(tmp_path, "mean", optimizer="adam", lr=0.01)
    X, y = mlp_data()
    dp = DataParallelTrainer(client, path, check_finite=True).scatter(X, y)
    dp.fit(2)
    before = snapshot(dp.trainer)
    dp.scatter(X, np.where(np.arange(len(y))[:, None] == 5, np.inf, y))
    with pytest.raises(DataParallelError, match="step 3 failed: .* is not finite") as err:
        dp.step()
    assert isinstance(err.value.__cause__, FloatingPointError)
    assert_state_equal(dp.trainer, before)
    assert dp.steps == 2


def test_client_closed_between_steps(cluster, client, tmp_path):
    path = mlp(tmp_path, "mean", optimizer="adam", lr=0.01)
    X, y = mlp_data()
    with Client(cluster) as other:
        dp = DataParallelTrainer(other, path).scatter(X, y)
        dp.fit(3)
        before = snapshot(dp.trainer)
        other.close()
        with pytest.raises(DataParallelError, match="step 4 failed: the Dask client is closed.*as after step 3"):
            dp.step()
    assert_state_equal(dp.trainer, before)
    # Going on from its state on another client: the params and Adam's state of 7 uninterrupted steps.
    dp2 = DataParallelTrainer(client, path, trainer=dp.trainer).scatter(X, y)
    dp2.fit(4)
    ref, _ = reference(dp.module, (X, y), 7)
    assert_same_params(dp2.params, ref.params)
    assert_same_params(dp2.trainer.state_dict(), ref.state_dict())


# ---- bad input ----

def test_bad_modules_and_data(client, tmp_path):
    g = gc.Graph("fixed")
    X = g.input("X", (8, 3))
    W = g.param("W", (3, 1))
    gc.compile(g, loss=gc.mse(X @ W, g.input("y", (8, 1)), name="loss")).save(tmp_path / "fixed.py")
    with pytest.raises(ValueError, match=r"no batch dimension \(BATCH_DIM is None\)"):
        DataParallelTrainer(client, tmp_path / "fixed.py")
    with pytest.raises(ValueError, match="cannot read the generated module"):
        DataParallelTrainer(client, tmp_path / "missing.py")
    (tmp_path / "spec.toml").write_text(DIGITS_SPEC)
    with pytest.raises(ValueError, match=r"'.*spec.toml' is a spec: DataParallelTrainer takes a module graphc "
                                         r"generated from it \(graphc compile spec.toml"):
        DataParallelTrainer(client, tmp_path / "spec.toml")
    os.mkfifo(tmp_path / "fifo.py")  # read, it would block: refused
    with pytest.raises(ValueError, match="cannot read the generated module: it is a FIFO, not a regular file"):
        DataParallelTrainer(client, tmp_path / "fifo.py")
    dp = DataParallelTrainer(client, mlp(tmp_path))
    X, y = mlp_data()
    with pytest.raises(DataParallelError, match=r"call scatter\(\*inputs\) first"):
        dp.step()
    with pytest.raises(ValueError, match="dimension 'N': input 'X' has 37 rows, input 'y' has 36"):
        dp.scatter(X, y[:-1])
    with pytest.raises(TypeError, match="missing input"):
        dp.scatter(X)
    with pytest.raises(ValueError, match="input 'X'"):  # the module's own check, on the driver, before any step
        dp.scatter(X.astype(np.float32), y)
    dp.scatter(y=y, X=X)  # by keyword
    assert dp.rows == 37
    # A module whose LOSS_REDUCTION does not say how its loss combines: refused before any step.
    source = (tmp_path / "dp_mlp_mean.py").read_text()
    assert source.count('LOSS_REDUCTION = "mean"') == 1
    (tmp_path / "mislabelled.py").write_text(source.replace('LOSS_REDUCTION = "mean"', 'LOSS_REDUCTION = "sum"'))
    with pytest.raises(ValueError, match=r"the loss is not a sum over the batch rows.* combine to"):
        DataParallelTrainer(client, tmp_path / "mislabelled.py").scatter(X, y)


def test_without_the_extra_one_clear_import_error(tmp_path):
    code = textwrap.dedent("""
        import sys
        for name in ("dask", "distributed", "dask.distributed"):
            sys.modules[name] = None          # as if graphc[dask] were not installed
        import graphc, graphc.dask            # importing graphc needs no Dask
        try:
            graphc.dask.DataParallelTrainer(None, "model.py")
        except ImportError as err:
            print(err)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout == EXTRA_HINT + "\n"
    assert EXTRA_HINT == "graphc's Dask driver needs the dask extra: pip install 'graphc[dask]'"
