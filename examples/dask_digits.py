"""Train the digits classifier (examples/digits.toml) data-parallel on a Dask cluster.

    python examples/dask_digits.py                         # a LocalCluster of 2 worker processes on this machine
    python examples/dask_digits.py tcp://scheduler:8786    # a running cluster (dask scheduler + dask worker ...)

The workers need NumPy and dask.distributed only: graphc compiles the module here and the driver ships it to them
(client.upload_file). The training rows are split into one shard per worker, sent once; every step each worker
computes the gradient of its shard with the generated value_and_grad, and the driver combines them and takes one
Adam step (Trainer.apply_gradients). The same steps in one process give the same params, to float rounding: the
script checks that at the end. Needs graphc[dask,examples] (dask.distributed, scikit-learn).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from graphc.cli import main as graphc_command
from graphc.dask import DataParallelTrainer

SPEC = Path(__file__).resolve().parent / "digits.toml"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scheduler", nargs="?", help="scheduler address, e.g. tcp://scheduler:8786 "
                                                     "(default: start a LocalCluster of 2 worker processes)")
    parser.add_argument("--steps", type=int, default=200, help="full-batch steps (default: 200)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate (default: 0.01)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default: 2)")
    return parser.parse_args()


def connect(args):
    from dask.distributed import Client

    if args.scheduler:
        return Client(args.scheduler)
    # No address: a cluster of worker processes on this machine, closed with the client.
    return Client(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None)


def main():
    args = parse_args()
    X, labels = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, labels.astype(np.int64), test_size=360,
                                                        random_state=0, stratify=labels)
    with tempfile.TemporaryDirectory() as tmp:
        module = Path(tmp) / "digits.py"
        if graphc_command(["compile", str(SPEC), "-o", str(module)]) != 0:
            raise SystemExit(2)
        with connect(args) as client:
            print(f"cluster: {client.scheduler.address}, workers: {len(client.nthreads())}")
            dp = DataParallelTrainer(client, module, lr=args.lr).scatter(X_train, y_train)
            print(f"{dp.rows} training rows in shards of {dp.shard_rows}")
            start = time.perf_counter()
            losses = dp.fit(args.steps, log_every=max(1, args.steps // 5))
            elapsed = time.perf_counter() - start
    mod = dp.module
    accuracy = np.mean(np.argmax(mod.predict(dp.params, X_test), axis=1) == y_test)
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; test accuracy {accuracy:.1%} ({len(y_test)} rows)")

    # The same steps in one process: Trainer.step on the whole training set.
    one = mod.Trainer(mod.init_params(0), lr=args.lr)
    start = time.perf_counter()
    for _ in range(args.steps):
        one.step(X_train, y_train)
    alone = time.perf_counter() - start
    diff = max(float(np.max(np.abs(dp.params[k] - one.params[k]))) for k in mod.PARAMS)
    print(f"max |params - single-process params| = {diff:.3g}")
    print(f"per step: {1e3 * elapsed / args.steps:.2f} ms on the cluster, "
          f"{1e3 * alone / args.steps:.2f} ms in one process")


if __name__ == "__main__":
    main()
