"""Training steps of the character-level GPT: the generated Trainer.step against PyTorch eager and jax.jit.

Not a test: it prints medians and ratios. The workload is the model of `make gpt` (examples/char_gpt.toml: 2
pre-norm blocks, 4 heads, width 64, context 32, GELU MLPs, cross-entropy at every position, Adam at the spec's lr)
on batches of random windows of examples/sonnets.txt at the spec's batch size. One round is STEPS training steps
on the same batches for every variant; the variants run in this one process, interleaved round by round (these
machines are shared and noisy, so only ratios measured side by side mean something); each variant's time is the
median of its rounds (the best round is printed too):

    graphc   the generated Trainer.step(ids, targets)
    torch    the same model in PyTorch eager (torch.nn.functional, autograd, torch.optim.Adam), as many threads as
             NumPy's BLAS; when torch is importable
    jax      jax.jit of the whole step (forward, backward, Adam), when jax is importable (not in the test extra:
             said when missing)

Before timing, a self-test: graphc's losses equal torch's (and jax's) over the first steps from the same init
(float64 to rounding, float32 to float32 tolerance). Each dtype ends with the ratio that issue 16 set a goal for: graphc /
torch at most 1.0.

Run: .venv/bin/python bench/gpt.py [--dtypes float32,float64] [--rounds 11] [--steps 10] [--threads N] [--quick]
(--quick: float64, 2 rounds of 2 steps: that the script runs and its self-test passes, in seconds;
tests/test_bench.py)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's idle threads must not spin (see bench/cnn.py)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "examples"), str(Path(__file__).resolve().parent)]
import char_gpt  # noqa: E402
from timing import blas_threads, fmt, interleaved, jax_adam, print_table  # noqa: E402
from graphc import cli  # noqa: E402

WIDTH, HEADS = 64, 4


def torch_loss(p, ids, targets):
    """examples/char_gpt.toml in PyTorch: pre-norm blocks, causal attention over 4 heads, a GELU MLP."""
    import torch

    F = torch.nn.functional
    B, T = ids.shape
    x = F.embedding(ids, p["tok"]) + p["pos"]
    for n in (1, 2):
        a = F.layer_norm(x, (WIDTH,), p[f"ln{n}a_w"], p[f"ln{n}a_b"], 1e-5)
        q, k, v = ((a @ p[f"{w}{n}"]).reshape(B, T, HEADS, WIDTH // HEADS).permute(0, 2, 1, 3) for w in "qkv")
        x = x + (F.scaled_dot_product_attention(q, k, v, is_causal=True) @ p[f"o{n}"]).sum(1)
        m = F.layer_norm(x, (WIDTH,), p[f"ln{n}b_w"], p[f"ln{n}b_b"], 1e-5)
        x = x + (F.gelu(m @ p[f"fc{n}"] + p[f"fc{n}_b"]) @ p[f"proj{n}"] + p[f"proj{n}_b"])
    logits = F.layer_norm(x, (WIDTH,), p["lnf_w"], p["lnf_b"], 1e-5) @ p["head"]
    return F.cross_entropy(logits.permute(0, 2, 1), targets)


def load(dtype: str):
    spec = cli.load_spec(char_gpt.SPEC, dtype=dtype)
    return cli.compile_spec(spec, str(char_gpt.SPEC.relative_to(ROOT))).load()


def torch_steps(model, params, batches, threads):
    """A function running the batches through torch eager from ``params`` (its own copies), or None."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    ps = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = torch.optim.Adam(ps.values(), lr=model.HYPERPARAMS["lr"], betas=model.HYPERPARAMS["betas"],
                           eps=model.HYPERPARAMS["eps"])
    batches = [(torch.tensor(ids), torch.tensor(targets)) for ids, targets in batches]

    def run():
        losses = []
        for ids, targets in batches:
            opt.zero_grad()
            loss = torch_loss(ps, ids, targets)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses
    return run


def jax_steps(model, params, batches, dtype):
    """A function running the batches through jax.jit of the whole step (forward, backward, Adam), or None."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    hp = model.HYPERPARAMS

    def layer_norm(x, w, b):
        mean = x.mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * w + b

    def loss_fn(p, ids, targets):
        B, T = ids.shape
        x = p["tok"][ids] + p["pos"]
        hidden = jnp.triu(jnp.ones((T, T), dtype=bool), 1)
        for n in (1, 2):
            a = layer_norm(x, p[f"ln{n}a_w"], p[f"ln{n}a_b"])
            q, k, v = ((a @ p[f"{w}{n}"]).reshape(B, T, HEADS, WIDTH // HEADS).transpose(0, 2, 1, 3) for w in "qkv")
            scores = jnp.where(hidden, -jnp.inf, q @ k.transpose(0, 1, 3, 2) / np.sqrt(WIDTH // HEADS))
            x = x + (jax.nn.softmax(scores, axis=-1) @ v @ p[f"o{n}"]).sum(1)
            m = layer_norm(x, p[f"ln{n}b_w"], p[f"ln{n}b_b"])
            x = x + jax.nn.gelu(m @ p[f"fc{n}"] + p[f"fc{n}_b"], approximate=False) @ p[f"proj{n}"] + p[f"proj{n}_b"]
        log_probs = jax.nn.log_softmax(layer_norm(x, p["lnf_w"], p["lnf_b"]) @ p["head"], axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1))

    update, start = jax_adam(loss_fn, params, hp["lr"], hp["betas"], hp["eps"])
    state = [start]
    batches = [(jnp.asarray(ids), jnp.asarray(targets)) for ids, targets in batches]

    def run():
        losses = []
        for ids, targets in batches:
            state[0], loss = update(state[0], ids, targets)
            losses.append(loss)
        return [float(loss) for loss in losses]
    return run


def variants(dtype: str, steps: int, threads: int):
    model = load(dtype)
    _, data = char_gpt.encode(char_gpt.TEXT.read_text(), model)
    rng = np.random.default_rng(0)
    context = model._SHAPES["ids"][1]
    batches = [char_gpt.batch(data, rng, model.BATCH_SIZE, context) for _ in range(steps)]
    params = model.init_params(0)
    trainer = model.Trainer({k: v.copy() for k, v in params.items()})
    runs = {"graphc": lambda: [trainer.step(ids, targets) for ids, targets in batches]}
    others = {"torch": torch_steps(model, params, batches, threads), "jax": jax_steps(model, params, batches, dtype)}
    ours = runs["graphc"]()  # the self-test: the same losses from the same init
    for name, run in others.items():
        if run is not None:
            np.testing.assert_allclose(run(), ours, rtol=1e-10 if dtype == "float64" else 1e-4, err_msg=name)
            runs[name] = run
    return runs, [f"{name} is not installed: no {name} variant" for name, run in others.items() if run is None]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--rounds", type=int, default=11, help="rounds per variant, interleaved (median taken)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--quick", action="store_true", help="float64, 2 rounds of 2 steps (the tests)")
    parser.add_argument("--threads", type=int, default=None,
                        help="NumPy's BLAS threads (threadpoolctl) and torch's; default: as NumPy found them")
    args = parser.parse_args(argv)
    if args.quick:
        args.dtypes, args.rounds, args.steps = "float64", 2, 2
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    threads = blas_threads(args.threads)
    print(f"numpy {np.__version__}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {threads} BLAS "
          "thread(s), as many for torch")
    print(f"{args.steps} training steps of examples/char_gpt.toml per round; median of {args.rounds} interleaved "
          "rounds; 'x graphc' is the variant's time over graphc's (> 1: graphc is faster)\n")
    rows = []
    for dtype in args.dtypes.split(","):
        runs, notes = variants(dtype, args.steps, threads)
        checked = " and ".join(f"{name}'s" for name in runs if name != "graphc")
        print(f"{dtype}: self-test passed (graphc's losses equal {checked})" if checked else f"{dtype}:")
        for note in notes:
            print(f"note ({dtype}): {note}")
        median, best = interleaved(runs, args.rounds)
        for name, t in median.items():
            rows.append((dtype, name, fmt(t / args.steps), f"{t / median['graphc']:.2f}", fmt(best[name] / args.steps),
                         f"{best[name] / best['graphc']:.2f}"))
        if "torch" in median:
            print(f"{dtype}: graphc / torch = {median['graphc'] / median['torch']:.2f} (issue 16's goal: <= 1.0)")
    print_table(["dtype", "variant", "step (median)", "x graphc", "step (best)", "x graphc (best)"], rows)


if __name__ == "__main__":
    main()
