"""One SGD step of the two-layer network: the generated Trainer.step against hand-written NumPy.

Not a test: it prints medians and ratios. Every variant runs in this one process, interleaved round by round
(these machines are shared and noisy, so only ratios measured side by side mean something):

    naive      the tutorial's NumPy step, corrected: fresh arrays for every intermediate
    hand-tuned the same with preallocated buffers, out= and in-place ufuncs
    floor      only the five matrix products a step needs, into preallocated outputs (the GEMM floor)
    graphc     the generated Trainer.step
    torch      PyTorch eager on the CPU (autograd + in-place SGD), when torch is importable
    jax        jax.jit of the same step, when jax is importable

Run: .venv/bin/python bench/step.py [--sizes seed,mnist,big] [--dtypes float64,float32] [--rounds 3] [--quick]
(--quick: the seed size in float64, one short round: that the script runs, in seconds; tests/test_bench.py)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# PyTorch's OpenMP threads spin after each op by default, taking the cores from the variants that run next
# (NumPy's BLAS threads): measured here, it slowed them by up to 1.5x. Passive waiting keeps the comparison fair.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import graphc as gc  # noqa: E402

SIZES = {"seed": (32, 100, 200, 10), "mnist": (256, 784, 1024, 10), "big": (1024, 1024, 4096, 1024)}
LR = 1e-6


def compile_two_layer(N, D, H, O, dtype):
    g = gc.Graph("two_layer", dtype=dtype)
    X, y = g.input("X", (N, D)), g.input("y", (N, O))
    W1, b1 = g.param("W1", (D, H), init="randn", scale=D**-0.5), g.param("b1", (H,), init="zeros")
    W2, b2 = g.param("W2", (H, O), init="randn", scale=H**-0.5), g.param("b2", (O,), init="zeros")
    h = gc.relu(gc.add(gc.matmul(X, W1), b1, name="h_pre"), name="h")
    pred = gc.add(gc.matmul(h, W2), b2, name="pred")
    loss = gc.mse(pred, y, reduction="sum", name="loss")
    return gc.compile(g, loss=loss, outputs=[pred], lr=LR).load()


def naive(p, X, y):
    h_pre = X @ p["W1"] + p["b1"]
    h = np.maximum(h_pre, 0)
    pred = h @ p["W2"] + p["b2"]
    loss = np.square(pred - y).sum()
    dpred = 2.0 * (pred - y)
    dW2, db2 = h.T @ dpred, dpred.sum(axis=0)
    dh = dpred @ p["W2"].T
    dh[h_pre <= 0] = 0
    dW1, db1 = X.T @ dh, dh.sum(axis=0)
    p["W1"] -= LR * dW1
    p["b1"] -= LR * db1
    p["W2"] -= LR * dW2
    p["b2"] -= LR * db2
    return loss


def hand_tuned(p, X, y, ws):
    """What a careful engineer writes: every buffer allocated once, every op in place or with out=."""
    W1, b1, W2, b2 = p["W1"], p["b1"], p["W2"], p["b2"]
    h, mask, err, dh, dW1, db1, dW2, db2 = ws
    np.matmul(X, W1, out=h)
    h += b1
    np.maximum(h, 0, out=h)
    np.matmul(h, W2, out=err)
    err += b2
    err -= y
    loss = np.vdot(err, err)
    err *= 2.0
    np.sum(err, axis=0, out=db2)
    np.matmul(h.T, err, out=dW2)
    np.matmul(err, W2.T, out=dh)
    np.greater(h, 0, out=mask)
    dh *= mask
    np.sum(dh, axis=0, out=db1)
    np.matmul(X.T, dh, out=dW1)
    for param, grad in ((W1, dW1), (b1, db1), (W2, dW2), (b2, db2)):
        grad *= LR
        param -= grad
    return loss


def hand_tuned_workspace(N, D, H, O, dtype):
    e = lambda *shape, dt=dtype: np.empty(shape, dtype=dt)  # noqa: E731
    return (e(N, H), e(N, H, dt=np.bool_), e(N, O), e(N, H), e(D, H), e(H), e(H, O), e(O))


def floor(p, X, y, ws):
    """Only the five matrix products of a step, into preallocated outputs: no step can be faster."""
    h, pred, dh, dW1, dW2 = ws
    np.matmul(X, p["W1"], out=h)
    np.matmul(h, p["W2"], out=pred)
    np.matmul(pred, p["W2"].T, out=dh)
    np.matmul(h.T, pred, out=dW2)
    np.matmul(X.T, dh, out=dW1)


def torch_step(N, D, H, O, dtype, params, X, y):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    tX, ty = torch.tensor(X), torch.tensor(y)

    def step():
        h = torch.relu(tX @ tp["W1"] + tp["b1"])
        pred = h @ tp["W2"] + tp["b2"]
        loss = ((pred - ty) ** 2).sum()
        loss.backward()
        with torch.no_grad():
            for t in tp.values():
                t.sub_(LR * t.grad)
                t.grad = None
        return loss.item()

    return step


def jax_step(N, D, H, O, dtype, params, X, y):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    def loss_fn(p, X, y):
        h = jax.nn.relu(X @ p["W1"] + p["b1"])
        return jnp.sum((h @ p["W2"] + p["b2"] - y) ** 2)

    @jax.jit
    def update(p, X, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, X, y)
        return loss, jax.tree_util.tree_map(lambda a, g: a - LR * g, p, grads)

    state = {"p": {k: jnp.asarray(v) for k, v in params.items()}}
    jX, jy = jnp.asarray(X), jnp.asarray(y)

    def step():
        loss, state["p"] = update(state["p"], jX, jy)
        return float(loss)

    return step


def variants(size, dtype):
    N, D, H, O = SIZES[size]
    mod = compile_two_layer(N, D, H, O, dtype)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, D)).astype(dtype)
    y = rng.standard_normal((N, O)).astype(dtype)
    params = mod.init_params(0)
    copy = lambda: {k: v.copy() for k, v in params.items()}  # noqa: E731
    trainer = mod.Trainer(copy())
    p_naive, p_tuned, p_floor = copy(), copy(), copy()
    ws_tuned = hand_tuned_workspace(N, D, H, O, dtype)
    ws_floor = tuple(np.empty(s, dtype=dtype) for s in ((N, H), (N, O), (N, H), (D, H), (H, O)))
    found = {
        "naive": lambda: naive(p_naive, X, y),
        "hand-tuned": lambda: hand_tuned(p_tuned, X, y, ws_tuned),
        "floor": lambda: floor(p_floor, X, y, ws_floor),
        "graphc": lambda: trainer.step(X, y),
    }
    for name, make in (("torch", torch_step), ("jax", jax_step)):
        step = make(N, D, H, O, dtype, copy(), X, y)
        if step is not None:
            found[name] = step
    # the same first loss from every full step: they all compute the same thing
    return found


def time_round(fn, budget: float, min_steps: int) -> float:
    """Median seconds per call over at least min_steps calls and about `budget` seconds."""
    times = []
    start = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - start < budget:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="seed,mnist,big")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per variant per round")
    parser.add_argument("--quick", action="store_true", help="seed size, float64, one short round (the tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.dtypes, args.rounds, args.budget = "seed", "float64", 1, 0.01
    print(f"numpy {np.__version__}; best of {args.rounds} interleaved rounds of medians; ratios < 1 are faster")
    header = f"{'size':6} {'dtype':7} {'variant':11} {'median':>10} {'/hand-tuned':>12} {'/floor':>8}"
    print(header)
    print("-" * len(header))
    for size in args.sizes.split(","):
        for dtype in args.dtypes.split(","):
            steps = variants(size, dtype)
            for fn in steps.values():  # warm up: first calls allocate, jit compiles
                fn(), fn()
            best = {name: float("inf") for name in steps}
            for _ in range(args.rounds):
                for name, fn in steps.items():
                    best[name] = min(best[name], time_round(fn, args.budget, 3))
            for name, t in best.items():
                print(f"{size:6} {dtype:7} {name:11} {fmt(t):>10} {t / best['hand-tuned']:12.2f} "
                      f"{t / best['floor']:8.2f}")
            print()


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


if __name__ == "__main__":
    main()
