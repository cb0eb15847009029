"""Deterministic output: the same spec gives the same bytes, run after run and whatever PYTHONHASHSEED is
(string hashing, and so set and dict-of-set order, changes with it: nothing may depend on that order)."""

import os
import shutil
import subprocess
import sys
import textwrap

import graphc as gc
from gradcheck import check_gradients, random_inputs, random_params

HASH_SEEDS = ("0", "1", "random")

# Many names, fan-out, a value used twice by one op, broadcasting in both directions, constants, a shared
# sub-expression, two losses summed and two outputs: every place where an unordered walk could leak into the text.
WIDE = textwrap.dedent("""
    name = "wide"
    [inputs]
    X = [8, 5]
    y = [8, 3]
    z = [8, 1]
    [params]
    W1 = { shape = [5, 6], init = "randn", scale = 0.1 }
    b1 = { shape = [6], init = "zeros" }
    W2 = { shape = [6, 3], init = "randn" }
    b2 = { shape = [1, 3], init = 0.5 }
    a = { shape = [], init = "ones" }
    V = { shape = [5, 1] }
    [nodes]
    h = "relu(X @ W1 + b1)"
    g = "h * h - 0.5 * h"
    k = "relu(g @ W2 + b2) * a"
    m = "k + (X @ V) * z - z"
    q = "m * a + k * a"
    e1 = "mse(q, y, reduction='sum')"
    e2 = "mse(m, y)"
    loss = "e1 + 2 * e2 + mse(X @ V, z)"
    [train]
    loss = "loss"
    outputs = ["q", "m"]
    lr = 0.001
    iterations = 5
""")

# Matmul chains free two buffers at one statement: the buffer plan once handed them back in hash order.
CHAIN = textwrap.dedent("""
    [inputs]
    X = [4, 4]
    [params]
    W = { shape = [4, 4] }
    V = { shape = [4, 4] }
    [nodes]
    a = "X @ W"
    b = "X @ V"
    c = "a @ b"
    d = "c @ W"
    e = "d @ V"
    loss = "mse(e, X)"
    [train]
    loss = "loss"
""")


def compile_in_subprocess(directory, spec, out, hash_seed):
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run([sys.executable, "-m", "graphc", "compile", spec, "-o", out],
                            cwd=directory, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return (directory / out).read_bytes()


def test_same_bytes_across_hash_seeds(root, tmp_path):
    (tmp_path / "wide.toml").write_text(WIDE)
    (tmp_path / "chain.toml").write_text(CHAIN)
    shutil.copy(root / "examples" / "two_layer.toml", tmp_path)
    for spec in ("wide.toml", "chain.toml", "two_layer.toml"):
        outputs = {seed: compile_in_subprocess(tmp_path, spec, "out.py", seed) for seed in HASH_SEEDS}
        assert len(set(outputs.values())) == 1, f"{spec}: output differs across PYTHONHASHSEED {HASH_SEEDS}"


def test_same_bytes_run_after_run(tmp_path):
    path = tmp_path / "wide.toml"
    path.write_text(WIDE)

    def once():
        spec = gc.load_spec(path)
        return gc.compile(spec.graph, spec.loss, spec.outputs, spec.lr, spec.iterations, source="wide.toml").source

    first = once()
    assert all(once() == first for _ in range(3))


def test_builder_graph_same_bytes_across_hash_seeds(tmp_path):
    """The Python API too: a graph built in code, compiled in fresh processes with different hash seeds."""
    script = textwrap.dedent("""
        import hashlib, graphc as gc
        g = gc.Graph("built")
        x = g.input("x", (4, 3))
        t = g.input("t", (4, 2))
        ws = [g.param(f"w{i}", (3, 2)) for i in range(12)]
        hs = [gc.relu(x @ w) for w in ws]
        total = hs[0]
        for h in hs[1:]:
            total = total + h * hs[0]
        loss = gc.mse(total, t, name="loss")
        print(hashlib.sha256(gc.compile(g, loss, outputs=[total, hs[3]]).source.encode()).hexdigest())
    """)
    digests = set()
    for seed in HASH_SEEDS:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        digests.add(result.stdout.strip())
    assert len(digests) == 1


def test_wide_spec_is_correct(tmp_path):
    """The determinism spec is also a real model: its gradients match finite differences."""
    path = tmp_path / "wide.toml"
    path.write_text(WIDE)
    spec = gc.load_spec(path)
    mod = gc.compile(spec.graph, spec.loss, spec.outputs, spec.lr, spec.iterations).load()
    check_gradients(mod, random_params(mod, seed=7, away_from_zero=True), random_inputs(mod, seed=8))
