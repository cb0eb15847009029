"""Compile time by stage for MLPs of growing depth: it must grow about linearly with the graph.

Each layer is two ops (matmul, relu), then one mse loss. Prints seconds per stage and per node.
Run: .venv/bin/python bench/compile.py [--depths 10,100,1000] [--quick]  (--quick: depths 2 and 4, a second)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import graphc as gc  # noqa: E402
from graphc.autodiff import adjoint  # noqa: E402
from graphc.codegen import format_source, render  # noqa: E402
from graphc.compiler import forward_graph  # noqa: E402
from graphc.graph import check_dims  # noqa: E402
from graphc.passes import optimize  # noqa: E402
from graphc.schedule import schedule  # noqa: E402
from graphc.training import training  # noqa: E402

WIDTH = 8


def build(depth: int):
    g = gc.Graph(f"mlp{depth}")
    h = g.input("X", (4, WIDTH))
    for i in range(depth):
        h = gc.relu(h @ g.param(f"W{i}", (WIDTH, WIDTH), scale=WIDTH**-0.5), name=f"h{i}")
    return g, gc.mse(h, g.input("y", (4, WIDTH)), name="loss")


def stages(depth: int) -> dict:
    times = {}

    def timed(stage, fn, *args, **kw):
        t0 = time.perf_counter()
        result = fn(*args, **kw)
        times[stage] = time.perf_counter() - t0
        return result

    g, loss = timed("build", build, depth)
    G = forward_graph(g)  # the stages of graphc.compile, one by one
    G.graph["dims"] = check_dims(G, None)
    train = training(G, loss.name, "sgd", {"lr": 1e-3}, 1, None, None)
    A = timed("adjoint", lambda: optimize(adjoint(G, loss.name, reserved=G.graph["dims"])))
    sched = timed("schedule", schedule, G, A, loss.name, [loss.name])
    text = timed("render", render, sched, name=G.graph["name"], source="bench", command="bench/compile.py",
                 version=gc.__version__, train=train)
    timed("black", format_source, text)
    times["nodes"] = G.number_of_nodes() + A.number_of_nodes()
    times["lines"] = text.count("\n")
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="10,100,1000")
    parser.add_argument("--quick", action="store_true", help="depths 2 and 4: that the script runs (the tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.depths = "2,4"
    names = ["build", "adjoint", "schedule", "render", "black"]
    print(f"{'depth':>6} {'nodes':>6} {'lines':>7} " + " ".join(f"{n:>9}" for n in names)
          + f" {'total':>8} {'ms/node':>8}")
    for depth in (int(d) for d in args.depths.split(",")):
        t = stages(depth)
        total = sum(t[n] for n in names)
        print(f"{depth:6d} {t['nodes']:6d} {t['lines']:7d} " + " ".join(f"{t[n]:8.3f}s" for n in names)
              + f" {total:7.2f}s {1e3 * total / t['nodes']:8.3f}")


if __name__ == "__main__":
    main()
