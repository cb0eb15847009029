"""The CuPy backend on a GPU: the generated module checked against the NumPy module, and timed.

Not a test: it prints a table. The GPU machine has CuPy, PyTorch and NumPy but no black, so the modules are
compiled here first, then the folder travels:

    .venv/bin/python bench/gpu.py --prepare bench/gpu_modules        # here: compile the modules (needs graphc)
    python bench/gpu.py --run bench/gpu_modules                      # there: check and time (no graphc needed)
    .venv/bin/python bench/gpu.py --quick                            # here, without CuPy: see quick()

The check: the two-layer network (relu, sum of squares; N=512, D=256, H=512, O=128), 20 steps of SGD and of
Adam from the same params on the same batches, CuPy module against NumPy module, float64 and float32; the
largest difference relative to the largest param value is printed (float64 should agree to about 1e-12).

The timing, at the size of the issue (float32, N=4096, D=1024, H=4096, O=1024), variants interleaved round by
round, median of each (ratios measured side by side are what mean something on a shared machine):

    graphc       the generated Trainer.step (CuPy, fused kernels)
    torch eager  the same network as torch.nn.functional ops, autograd, torch.optim (SGD or Adam, foreach)
    torch.compile  the same, with the loss function compiled
    floor        only the five matrix products a step needs, into preallocated outputs (CuPy's cuBLAS)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

CHECK = dict(N=512, D=256, H=512, O=128)
BIG = dict(N=4096, D=1024, H=4096, O=1024)
LR = {"sgd": 1e-6, "adam": 1e-4}


def module_name(size, backend, optimizer, dtype):
    return f"two_layer_{size}_{backend}_{optimizer}_{dtype}"


def prepare(folder: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import graphc as gc

    folder.mkdir(parents=True, exist_ok=True)
    jobs = [name.split("_")[2:] for name in needed()]  # two_layer_SIZE_BACKEND_OPTIMIZER_DTYPE
    for size, backend, optimizer, dtype in jobs:
        s = CHECK if size == "check" else BIG
        g = gc.Graph("two_layer", dtype=dtype)
        X, y = g.input("X", ("N", s["D"])), g.input("y", ("N", s["O"]))
        W1 = g.param("W1", (s["D"], s["H"]), scale=s["D"] ** -0.5)
        b1 = g.param("b1", (s["H"],), init="zeros")
        W2 = g.param("W2", (s["H"], s["O"]), scale=s["H"] ** -0.5)
        b2 = g.param("b2", (s["O"],), init="zeros")
        h = gc.relu(gc.add(gc.matmul(X, W1, name="X_W1"), b1, name="h_pre"), name="h")
        pred = gc.add(gc.matmul(h, W2, name="h_W2"), b2, name="pred")
        loss = gc.mse(pred, y, reduction="sum", name="loss")
        module = gc.compile(g, loss=loss, outputs=[pred], optimizer=optimizer, lr=LR[optimizer],
                            dims={"N": s["N"]}, backend=backend,
                            command=f"python bench/gpu.py --prepare {folder}")
        module.save(folder / f"{module_name(size, backend, optimizer, dtype)}.py")
    print(f"wrote {len(jobs)} modules to {folder}")


def needed() -> list[str]:
    """The modules --run loads: the check's NumPy and CuPy pairs and the timed CuPy modules."""
    names = [module_name("check", b, o, d) for b in ("numpy", "cupy") for o in LR for d in ("float64", "float32")]
    return names + [module_name("big", "cupy", o, "float32") for o in LR]


def quick() -> None:
    """What can be checked without a GPU, in seconds (tests/test_bench.py): --prepare writes every module --run
    loads, each one Python compiles, and the NumPy modules of the check train 2 steps to finite params."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="graphc-gpu-") as tmp:
        folder = Path(tmp)
        prepare(folder)
        for name in needed():
            compile((folder / f"{name}.py").read_text(), name, "exec")
        rng = np.random.default_rng(1)
        for name in (n for n in needed() if "_numpy_" in n):
            mod, dtype = load(folder, name), name.rsplit("_", 1)[1]
            trainer = mod.Trainer(mod.init_params(0))
            X = rng.standard_normal((CHECK["N"], CHECK["D"])).astype(dtype)
            y = rng.standard_normal((CHECK["N"], CHECK["O"])).astype(dtype)
            for _ in range(2):
                trainer.step(X, y)
            if not all(np.all(np.isfinite(p)) for p in trainer.params.values()):
                raise SystemExit(f"{name}: the params are not finite after 2 steps")
        print(f"quick: {len(needed())} modules compiled; the NumPy ones train; run --run DIR on a GPU for the rest")


def load(folder: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check(folder: Path) -> list[str]:
    import cupy as cp

    rows = []
    for optimizer in LR:
        for dtype in ("float64", "float32"):
            host = load(folder, module_name("check", "numpy", optimizer, dtype))
            device = load(folder, module_name("check", "cupy", optimizer, dtype))
            a, b = host.Trainer(host.init_params(0)), device.Trainer(device.init_params(0))
            rng = np.random.default_rng(1)
            for _ in range(20):
                X = rng.standard_normal((CHECK["N"], CHECK["D"])).astype(dtype)
                y = rng.standard_normal((CHECK["N"], CHECK["O"])).astype(dtype)
                a.step(X, y)
                b.step(cp.asarray(X), cp.asarray(y))
            diff = max(float(np.max(np.abs(cp.asnumpy(b.params[k]) - a.params[k])) / np.max(np.abs(a.params[k])))
                       for k in host.PARAMS)
            limit = 1e-9 if dtype == "float64" else 1e-3
            rows.append(f"| {optimizer} | {dtype} | {diff:.2e} | {'ok' if diff <= limit else 'FAIL'} |")
    return rows


def timings(folder: Path, rounds: int, steps: int) -> list[str]:
    import cupy as cp
    import torch

    rows = []
    N, D, H, O = BIG["N"], BIG["D"], BIG["H"], BIG["O"]
    for optimizer in LR:
        mod = load(folder, module_name("big", "cupy", optimizer, "float32"))
        trainer = mod.Trainer(mod.init_params(0))
        X = cp.random.standard_normal((N, D), dtype=cp.float32)
        y = cp.random.standard_normal((N, O), dtype=cp.float32)

        tparams = [torch.as_tensor(cp.asnumpy(trainer.params[k]), device="cuda").requires_grad_()
                   for k in mod.PARAMS]
        tX, ty = torch.as_tensor(X, device="cuda"), torch.as_tensor(y, device="cuda")
        make = (lambda p: torch.optim.SGD(p, lr=LR["sgd"])) if optimizer == "sgd" else \
            (lambda p: torch.optim.Adam(p, lr=LR["adam"]))

        def loss_fn(W1, b1, W2, b2):
            pred = torch.relu(tX @ W1 + b1) @ W2 + b2
            return ((pred - ty) ** 2).sum()

        compiled_params = [p.detach().clone().requires_grad_() for p in tparams]
        compiled = torch.compile(loss_fn)
        eager_opt, compiled_opt = make(tparams), make(compiled_params)

        def torch_step(fn, params, opt):
            def step():
                opt.zero_grad(set_to_none=True)
                fn(*params).backward()
                opt.step()
            return step

        outs = [cp.empty(s, dtype=cp.float32) for s in ((N, H), (N, O), (N, H), (H, O), (D, H))]
        W1, W2 = trainer.params["W1"], trainer.params["W2"]
        h, pred, dh, dW2, dW1 = outs

        def floor():
            cp.matmul(X, W1, out=h)
            cp.matmul(h, W2, out=pred)
            cp.matmul(pred, W2.T, out=dh)
            cp.matmul(h.T, pred, out=dW2)
            cp.matmul(X.T, dh, out=dW1)

        variants = {
            "graphc": lambda: trainer.step(X, y),
            "torch eager": torch_step(loss_fn, tparams, eager_opt),
            "torch.compile": torch_step(compiled, compiled_params, compiled_opt),
            "floor": floor,
        }
        for fn in variants.values():  # warm up: kernels compiled, workspaces allocated, torch.compile traced
            for _ in range(3):
                fn()
        cp.cuda.Device().synchronize()
        times = {name: [] for name in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                cp.cuda.Device().synchronize()
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(steps):
                    fn()
                cp.cuda.Device().synchronize()
                torch.cuda.synchronize()
                times[name].append((time.perf_counter() - start) / steps)
        best = {name: statistics.median(t) for name, t in times.items()}
        for name, t in best.items():
            rows.append(f"| {optimizer} | {name} | {t * 1e3:.2f} ms | {t / best['torch eager']:.2f} | "
                        f"{t / best['floor']:.2f} |")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--prepare", metavar="DIR", type=Path, help="compile the modules into DIR (needs graphc)")
    group.add_argument("--run", metavar="DIR", type=Path, help="check and time the modules of DIR (needs a GPU)")
    group.add_argument("--quick", action="store_true",
                       help="without a GPU: compile the modules to a temporary folder, train the NumPy ones 2 steps")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    if args.quick:
        quick()
        return
    if args.prepare:
        prepare(args.prepare)
        return
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(0)
    print(f"GPU: {props['name'].decode()}; CuPy {cp.__version__}; NumPy {np.__version__}")
    print("\n| optimizer | dtype | max |CuPy - NumPy| / max |param| after 20 steps | |\n|---|---|---|---|")
    print("\n".join(check(args.run)))
    print(f"\nTrainer.step, float32, N={BIG['N']} D={BIG['D']} H={BIG['H']} O={BIG['O']}: median of "
          f"{args.rounds} interleaved rounds of {args.steps} steps")
    print("| optimizer | variant | step | / torch eager | / floor |\n|---|---|---|---|---|")
    print("\n".join(timings(args.run, args.rounds, args.steps)))


if __name__ == "__main__":
    main()
