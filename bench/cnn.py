"""One epoch of the digits CNN: the generated Trainer.fit against a hand-written NumPy im2col loop and the libraries.

Not a test: it prints medians and ratios. The workload is the model of `make digits-cnn` on its 1437 training rows of
scikit-learn's digits as (N, 1, 8, 8) images, the CNN of examples/digits_cnn.toml (read from that file: its
convolutions, pooling and dense layer), cross-entropy on integer labels, Adam (lr 1e-3, torch's betas and eps),
batches of 32 rows of a fresh permutation each epoch. Every variant runs in this one process, interleaved round by
round (these machines are shared and noisy, so only ratios measured side by side mean something); each variant's
time is the median of its rounds (the best round is printed too):

    graphc   the generated Trainer.fit(X, y, epochs=1, batch_size=32)
    numpy    a hand-written NumPy im2col loop, written for this benchmark: channels-last (N, H, W, C) activations,
             each convolution one matrix product of the windows (copied into a preallocated column buffer) by the
             kernel, its input gradient added back by kernel offset, every buffer allocated once per batch size,
             in-place Adam
    torch    PyTorch eager on the CPU (torch.nn.functional, autograd, torch.optim.Adam), when torch is importable
    jax      jax.jit of the whole step (forward, backward, Adam), when jax is importable

Before timing, a self-test: the hand-written loop's loss and gradients on one batch equal torch's (float64, to
rounding), and graphc's and the hand-written loop's params after one epoch from the same start and in the same
order are equal (to rounding in float64, float32 tolerance in float32).

Each dtype ends with a line of the two ratios that issue 15 set goals for: graphc / numpy at most 1.0 and graphc /
torch at most 1.0.

Run: .venv/bin/python bench/cnn.py [--dtypes float32,float64] [--rounds 11] [--quick]
(--quick: float64, 2 rounds, the first 320 rows: that the script runs and its self-test passes, in seconds;
tests/test_bench.py)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import tempfile
import uuid
from pathlib import Path

# PyTorch's OpenMP threads spin after each op by default, taking the cores from the variants that run next
# (NumPy's BLAS threads). Passive waiting keeps the comparison fair (see bench/step.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from graphc import cli  # noqa: E402
from timing import blas_threads, fmt, interleaved, jax_adam, print_table  # noqa: E402

SPEC = ROOT / "examples" / "digits_cnn.toml"
BATCH, C = 32, 10
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8


def digits_data(dtype):
    """The 1437 training rows of examples/digits.py as (N, 1, 8, 8), or random rows of that shape."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        print("note: scikit-learn is not importable: random data of the digits' shape")
        rng = np.random.default_rng(0)
        return rng.random((1437, 1, 8, 8)).astype(dtype), rng.integers(0, C, 1437)
    digits = load_digits()
    X_train, _, y_train, _ = train_test_split(digits.data / 16.0, digits.target, test_size=360, random_state=0,
                                              stratify=digits.target)
    return np.ascontiguousarray(X_train.reshape(-1, 1, 8, 8), dtype=dtype), y_train.astype(np.int64)


def compile_module(dtype, directory):
    """examples/digits_cnn.toml's model in `dtype`, trained for the benchmark with Adam (lr 1e-3, torch's betas and
    eps, whatever the example's [train] says) for one epoch in batches of 32, compiled by graphc and imported."""
    model, _ = re.split(r"(?m)^\[train\]", SPEC.read_text())
    text = model + f'[train]\nloss = "loss"\noutputs = ["logits"]\noptimizer = "adam"\nlr = {LR}\nepochs = 1\n' \
        f'batch_size = {BATCH}\ndtype = "{dtype}"\n'
    spec = Path(directory) / f"digits_cnn_bench_{dtype}.toml"
    spec.write_text(text)
    out = spec.with_suffix(".py")
    if cli.main(["compile", str(spec), "-o", str(out)]) != 0:
        raise SystemExit("graphc could not compile the benchmark's spec")
    loaded = importlib.util.spec_from_file_location(f"digits_cnn_bench_{uuid.uuid4().hex}", out)
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def architecture(params):
    """The spec's layers, read from its params: conv (3x3, padding 1) widths, then the dense layer after 2x2 pooling."""
    widths = [params[k].shape[0] for k in ("w1", "w2")]
    assert all(params[k].shape[2:] == (3, 3) for k in ("w1", "w2")) and params["W3"].shape == (widths[-1] * 16, C), \
        "bench/cnn.py follows examples/digits_cnn.toml: two 3x3 convolutions, 2x2 max pooling, a dense layer"
    return widths


# ---- hand-written NumPy im2col -----------------------------------------------------------------------------------

class NumpyCNN:
    """conv3x3-relu, conv3x3-relu, maxpool 2x2, dense, cross-entropy, Adam, by hand in NumPy. Channels last inside:
    a window's columns are (kH, kW, C) with C contiguous, and the kernels are kept in that order too (`w1`, `w2`
    as (kH * kW * C_in, C_out)); W3's rows in (H, W, C) order. params() gives them back in the spec's layout."""

    def __init__(self, params, lr):
        dtype = params["w1"].dtype
        self.lr = lr
        self.p = {
            "w1": self.kernel_in(params["w1"]), "b1": params["b1"].copy(),
            "w2": self.kernel_in(params["w2"]), "b2": params["b2"].copy(),
            "W3": np.ascontiguousarray(params["W3"].reshape(-1, 4, 4, C).transpose(1, 2, 0, 3).reshape(-1, C)),
            "b3": params["b3"].copy(),
        }
        self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.g = {k: np.empty_like(v) for k, v in self.p.items()}
        self.s = {k: np.empty_like(v) for k, v in self.p.items()}
        self.t, self.ws, self.dtype = 0, {}, dtype

    @staticmethod
    def kernel_in(w):  # (O, C, kH, kW) -> (kH * kW * C, O)
        return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))

    @staticmethod
    def kernel_out(w, c):  # (kH * kW * C, O) -> (O, C, kH, kW)
        return w.reshape(3, 3, c, -1).transpose(3, 2, 0, 1)

    def params(self):
        p, c1 = self.p, self.p["w1"].shape[1]
        return {"w1": self.kernel_out(p["w1"], 1), "b1": p["b1"], "w2": self.kernel_out(p["w2"], c1), "b2": p["b2"],
                "W3": p["W3"].reshape(4, 4, -1, C).transpose(2, 0, 1, 3).reshape(-1, C), "b3": p["b3"]}

    def workspace(self, n):
        if n not in self.ws:
            c1, c2 = self.p["w1"].shape[1], self.p["w2"].shape[1]
            e = lambda *shape, dt=self.dtype: np.empty(shape, dtype=dt)  # noqa: E731
            self.ws[n] = dict(
                xp=np.zeros((n, 10, 10, 1), self.dtype), cols1=e(n * 64, 9), h1=e(n, 8, 8, c1),
                h1p=np.zeros((n, 10, 10, c1), self.dtype), cols2=e(n * 64, 9 * c1), h2=e(n, 8, 8, c2),
                win=e(n, 4, 4, 4, c2), arg=e(n, 4, 4, c2, dt=np.intp), p2=e(n, 4, 4, c2), logits=e(n, C),
                rowmax=e(n, 1), total=e(n, 1), picked=e(n), y=e(n, dt=np.int64), flat=np.arange(n) * C,
                dp2=e(n, 16 * c2), dh2=e(n, 8, 8, c2), hit=e(n, 4, 4, c2, dt=bool), mask2=e(n, 8, 8, c2),
                dcols2=e(n * 64, 9 * c1), dh1p=e(n, 10, 10, c1), dh1=e(n, 8, 8, c1), mask1=e(n, 8, 8, c1))
        return self.ws[n]

    @staticmethod
    def im2col(xp, cols, c):
        """The 3x3 windows of padded (n, 10, 10, c) as rows of cols (n * 64, 9 * c), each row (kH, kW, c)."""
        windows = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))  # (n, 8, 8, c, 3, 3)
        np.copyto(cols.reshape(-1, 8, 8, 3, 3, c), windows.transpose(0, 1, 2, 4, 5, 3))

    @staticmethod
    def col2im(dcols, dxp, c):
        """Each column's gradient added back where its window read the padded input."""
        dxp.fill(0)
        terms = dcols.reshape(-1, 8, 8, 3, 3, c)
        for i in range(3):
            for j in range(3):
                target = dxp[:, i:i + 8, j:j + 8]
                np.add(target, terms[:, :, :, i, j], out=target)

    def forward_backward(self, X, y):
        """Loss of a batch (X: (n, 1, 8, 8) contiguous, y: int64 (n,)); the gradients in self.g."""
        p, g, n = self.p, self.g, len(y)
        w = self.workspace(n)
        c1, c2 = p["w1"].shape[1], p["w2"].shape[1]
        # conv1 (a single input channel: (n, 1, 8, 8) is (n, 8, 8, 1) already) + relu
        np.copyto(w["xp"][:, 1:9, 1:9], X.reshape(n, 8, 8, 1))
        self.im2col(w["xp"], w["cols1"], 1)
        h1 = w["h1"].reshape(-1, c1)
        np.matmul(w["cols1"], p["w1"], out=h1)
        h1 += p["b1"]
        np.maximum(h1, 0, out=h1)
        # conv2 + relu
        np.copyto(w["h1p"][:, 1:9, 1:9], w["h1"])
        self.im2col(w["h1p"], w["cols2"], c1)
        h2 = w["h2"].reshape(-1, c2)
        np.matmul(w["cols2"], p["w2"], out=h2)
        h2 += p["b2"]
        np.maximum(h2, 0, out=h2)
        # 2x2 max pooling: each window's first maximum (as torch), kept for the gradient
        np.copyto(w["win"].reshape(n, 4, 4, 2, 2, c2), w["h2"].reshape(n, 4, 2, 4, 2, c2).transpose(0, 1, 3, 2, 4, 5))
        np.argmax(w["win"], axis=3, out=w["arg"])
        np.max(w["win"], axis=3, out=w["p2"])
        # dense + cross-entropy (softmax kept in logits)
        p2 = w["p2"].reshape(n, -1)
        logits, rowmax, total, picked, yf = w["logits"], w["rowmax"], w["total"], w["picked"], w["y"]
        np.matmul(p2, p["W3"], out=logits)
        logits += p["b3"]
        np.max(logits, axis=1, keepdims=True, out=rowmax)
        logits -= rowmax
        np.add(y, w["flat"], out=yf)
        np.take(logits, yf, out=picked)
        np.exp(logits, out=logits)
        np.sum(logits, axis=1, keepdims=True, out=total)
        logits /= total
        np.log(total, out=total)
        loss = (np.sum(total) - np.sum(picked)) / n
        # backward
        logits.flat[yf] -= 1.0
        logits *= 1.0 / n
        np.sum(logits, axis=0, out=g["b3"])
        np.matmul(p2.T, logits, out=g["W3"])
        np.matmul(logits, p["W3"].T, out=w["dp2"])
        dp2, dh2 = w["dp2"].reshape(n, 4, 4, c2), w["dh2"].reshape(n, 4, 2, 4, 2, c2)
        for k in range(4):
            np.equal(w["arg"], k, out=w["hit"])
            np.multiply(dp2, w["hit"], out=dh2[:, :, k // 2, :, k % 2])
        np.greater(w["h2"], 0, out=w["mask2"])
        dh2 = w["dh2"].reshape(-1, c2)
        dh2 *= w["mask2"].reshape(-1, c2)
        np.sum(dh2, axis=0, out=g["b2"])
        np.matmul(w["cols2"].T, dh2, out=g["w2"])
        np.matmul(dh2, p["w2"].T, out=w["dcols2"])
        self.col2im(w["dcols2"], w["dh1p"], c1)
        dh1 = w["dh1"]
        np.copyto(dh1, w["dh1p"][:, 1:9, 1:9])
        np.greater(w["h1"], 0, out=w["mask1"])
        dh1 *= w["mask1"]
        dh1 = dh1.reshape(-1, c1)
        np.sum(dh1, axis=0, out=g["b1"])
        np.matmul(w["cols1"].T, dh1, out=g["w1"])
        return float(loss)

    def step(self, Xall, yall, idx):
        w = self.workspace(len(idx))
        if "X" not in w:
            w["X"], w["ybatch"] = np.empty((len(idx), 1, 8, 8), self.dtype), np.empty(len(idx), np.int64)
        np.take(Xall, idx, axis=0, out=w["X"], mode="clip")
        np.take(yall, idx, out=w["ybatch"], mode="clip")
        loss = self.forward_backward(w["X"], w["ybatch"])
        self.t += 1
        b1, b2 = BETAS
        step_size = self.lr / (1 - b1**self.t)
        root_c2 = (1 - b2**self.t) ** 0.5
        for k in self.p:
            m, v, grad, s = self.m[k], self.v[k], self.g[k], self.s[k]
            m *= b1
            np.multiply(grad, 1 - b1, out=s)
            m += s
            v *= b2
            np.multiply(grad, grad, out=s)
            s *= 1 - b2
            v += s
            np.sqrt(v, out=s)
            s *= 1 / root_c2
            s += EPS
            np.divide(m, s, out=s)
            s *= step_size
            self.p[k] -= s
        return loss

    def epoch(self, X, y, batch, rng):
        order = rng.permutation(len(X))
        return [self.step(X, y, order[i:i + batch]) for i in range(0, len(X), batch)]


# ---- the libraries -----------------------------------------------------------------------------------------------

def torch_forward(torch, p, X):
    F = torch.nn.functional
    h = F.relu(F.conv2d(X, p["w1"], p["b1"], padding=1))
    h = F.max_pool2d(F.relu(F.conv2d(h, p["w2"], p["b2"], padding=1)), 2)
    return h.flatten(1) @ p["W3"] + p["b3"]


def torch_epoch(params, lr, X, y, threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)  # as many as NumPy's BLAS
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    optimizer = torch.optim.Adam(tp.values(), lr=lr, betas=BETAS, eps=EPS)
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(0)

    def epoch():
        order = torch.randperm(len(X), generator=generator)
        for i in range(0, len(X), BATCH):
            idx = order[i:i + BATCH]
            loss = torch.nn.functional.cross_entropy(torch_forward(torch, tp, tX[idx]), ty[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def jax_epoch(params, lr, dtype, X, y):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    def conv(x, w, b):
        out = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)))
        return out + b.reshape(1, -1, 1, 1)

    def loss_fn(p, X, y):
        h = jax.nn.relu(conv(X, p["w1"], p["b1"]))
        h = jax.nn.relu(conv(h, p["w2"], p["b2"]))
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        log_probs = jax.nn.log_softmax(h.reshape(len(y), -1) @ p["W3"] + p["b3"], axis=1)
        return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))

    update, start = jax_adam(lambda p, X, y, idx: loss_fn(p, X[idx], y[idx]), params, lr, BETAS, EPS)
    state = [start]
    jX, jy = jnp.asarray(X), jnp.asarray(y)
    rng = np.random.default_rng(0)

    def epoch():
        order = rng.permutation(len(X))
        for i in range(0, len(X), BATCH):
            state[0], loss = update(state[0], jX, jy, order[i:i + BATCH])
        loss.block_until_ready()

    return epoch


# ---- the self-test -----------------------------------------------------------------------------------------------

def check_against_torch(params, lr, X, y):
    """The hand-written loop's loss and gradients on one batch equal torch's autograd (float64)."""
    try:
        import torch
    except ImportError:
        return "torch is not importable: the hand-written loop is checked against graphc only"
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    hand = NumpyCNN(p64, lr)
    Xb, yb = X[:BATCH].astype(np.float64), y[:BATCH]
    loss = hand.forward_backward(Xb, yb)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p64.items()}
    tloss = torch.nn.functional.cross_entropy(torch_forward(torch, tp, torch.from_numpy(Xb)), torch.from_numpy(yb))
    tloss.backward()
    np.testing.assert_allclose(loss, tloss.item(), rtol=1e-12, err_msg="numpy vs torch: loss")
    hand.p = hand.g  # params() reorders whatever is in p: here the gradients
    for k, grad in hand.params().items():
        np.testing.assert_allclose(grad, tp[k].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=f"numpy vs torch: d{k}")
    return None


def check_agreement(mod, params, lr, X, y, dtype):
    """One epoch from the same params in the same order: graphc and the hand-written loop end at the same params."""
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()})
    graphc_losses = trainer.fit(X, y, epochs=1, batch_size=BATCH, seed=0)
    hand = NumpyCNN(params, lr)
    hand_losses = hand.epoch(X, y, BATCH, np.random.default_rng(0))
    # float32: Adam divides by sqrt(v), so a gradient near 0 turns rounding into steps of up to lr; over an epoch's
    # 45 steps the params move by up to 45 * lr, and float32 agrees to a fraction of lr
    rtol, atol = (1e-8, 1e-10) if dtype == "float64" else (2e-3, lr)
    np.testing.assert_allclose(graphc_losses, hand_losses, rtol=rtol, err_msg="graphc vs numpy: losses")
    for k, value in hand.params().items():
        np.testing.assert_allclose(trainer.params[k], value, rtol=rtol, atol=atol, err_msg=f"graphc vs numpy: {k}")


# ---- the benchmark -----------------------------------------------------------------------------------------------

def variants(dtype, directory, rows, threads):
    X, y = (a[:rows] for a in digits_data(dtype))
    mod = compile_module(dtype, directory)
    params = mod.init_params(0)
    architecture(params)
    lr = LR
    notes = [note for note in [check_against_torch(params, lr, X, y)] if note]
    check_agreement(mod, params, lr, X, y, dtype)
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()})
    hand = NumpyCNN(params, lr)
    seeds = iter(range(1, 10**9))
    rng = np.random.default_rng(1)
    found = {
        "graphc": lambda: trainer.fit(X, y, epochs=1, batch_size=BATCH, seed=next(seeds)),
        "numpy": lambda: hand.epoch(X, y, BATCH, rng),
    }
    for name, make in (("torch", lambda: torch_epoch(params, lr, X, y, threads)),
                       ("jax", lambda: jax_epoch(params, lr, dtype, X, y))):
        epoch = make()
        if epoch is None:
            notes.append(f"{name} is not importable: skipped")
        else:
            found[name] = epoch
    return found, notes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--rounds", type=int, default=11, help="epochs per variant, interleaved (median taken)")
    parser.add_argument("--quick", action="store_true", help="float64, 2 rounds, 320 rows (the tests)")
    parser.add_argument("--threads", type=int, default=None,
                        help="NumPy's BLAS threads (threadpoolctl) and torch's; default: as NumPy found them")
    args = parser.parse_args(argv)
    n_rows = 1437
    if args.quick:
        args.dtypes, args.rounds, n_rows = "float64", 2, 320
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    threads = blas_threads(args.threads)
    print(f"numpy {np.__version__}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {threads} BLAS "
          "thread(s), as many for torch")
    print(f"one epoch of {n_rows} (N, 1, 8, 8) rows in batches of {BATCH}, {SPEC.relative_to(ROOT)}; median of "
          f"{args.rounds} interleaved rounds; 'x graphc' is the variant's time over graphc's (> 1: graphc is faster)\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="graphc-bench-") as directory:
        for dtype in args.dtypes.split(","):
            epochs, notes = variants(dtype, directory, n_rows, threads)
            print(f"{dtype}: self-test passed (numpy equals torch, graphc equals numpy after one epoch)")
            for note in notes:
                print(f"note ({dtype}): {note}")
            for fn in epochs.values():  # warm up: first calls allocate workspaces, jit compiles
                fn()
            median, best = interleaved(epochs, args.rounds)
            for name, t in median.items():
                rows.append((dtype, name, fmt(t), f"{t / median['graphc']:.2f}", fmt(best[name]),
                             f"{best[name] / best['graphc']:.2f}"))
            line = f"{dtype}: graphc / numpy = {median['graphc'] / median['numpy']:.2f}"
            if "torch" in median:
                line += f", graphc / torch = {median['graphc'] / median['torch']:.2f}"
            print(line + " (issue 15's goals: <= 1.0)")
    print_table(["dtype", "variant", "epoch (median)", "x graphc", "epoch (best)", "x graphc (best)"], rows)


if __name__ == "__main__":
    main()
