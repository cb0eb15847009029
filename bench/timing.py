"""What the bench scripts share: timing variants interleaved round by round, NumPy's BLAS threads, the table."""

from __future__ import annotations

import os
import statistics
import time


def time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict, rounds: int) -> tuple[dict, dict]:
    """Each function once per round, round after round (these machines are shared and noisy: only times taken
    side by side compare): the median and the best time of each."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_once(fn))
    return {n: statistics.median(t) for n, t in times.items()}, {n: min(t) for n, t in times.items()}


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def blas_threads(limit=None):
    """NumPy's BLAS threads (limited to ``limit`` first, with threadpoolctl when it is importable)."""
    try:
        import threadpoolctl
    except ImportError:
        names = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
        return limit or int(next((os.environ[k] for k in names if k in os.environ), os.cpu_count()))
    if limit:
        threadpoolctl.threadpool_limits(limit, user_api="blas")
    found = [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
    return max(found, default=limit or os.cpu_count())


def print_table(columns: list[str], rows: list[tuple]) -> None:
    """A Markdown table, as the README shows them."""
    print()
    print("| " + " | ".join(columns) + " |")
    print("| " + " | ".join("---" for _ in columns) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def jax_adam(loss_fn, params: dict, lr: float, betas, eps: float):
    """jax.jit of one whole training step, ``loss_fn(params, *data)``'s value and gradient then torch's Adam update
    of a dict of params: ``step(state, *data) -> (state, loss)``, and the start state from ``params``."""
    import jax
    import jax.numpy as jnp

    b1, b2 = betas
    tree_map = jax.tree_util.tree_map

    @jax.jit
    def step(state, *data):
        p, m, v, t = state
        loss, grads = jax.value_and_grad(loss_fn)(p, *data)
        t = t + 1
        m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        p = tree_map(lambda p, m, v: p - lr * (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps), p, m, v)
        return (p, m, v, t), loss

    p = {k: jnp.asarray(v) for k, v in params.items()}
    zeros = {k: jnp.zeros_like(v) for k, v in p.items()}
    return step, (p, zeros, zeros, jnp.asarray(0, dtype=jnp.int32))
