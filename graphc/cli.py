"""The ``graphc`` command."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from . import __version__
from .compiler import compile
from .errors import GraphcError
from .graph import DTYPES
from .spec import load_spec


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors also exit 2 with one line
        self.exit(2, f"graphc: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="graphc", description="Compile a model spec into a standalone NumPy training module.")
    parser.add_argument("--version", action="version", version=f"graphc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    c = commands.add_parser("compile", help="compile SPEC (.toml or .json) into a Python module",
                            description="Compile SPEC (.toml or .json) into a Python module that needs only NumPy.")
    c.add_argument("spec", metavar="SPEC", help="the model spec, a .toml or .json file")
    c.add_argument("-o", "--output", metavar="OUT.py", help="where to write the module (default: SPEC with .py)")
    c.add_argument("--lr", type=float, help="learning rate (default: the spec's [train] lr)")
    c.add_argument("--dtype", choices=DTYPES, help="float type of every array (default: the spec's, else float64)")
    c.set_defaults(run=run_compile)
    return parser


def run_compile(args) -> int:
    spec = load_spec(args.spec, dtype=args.dtype)
    out = Path(args.output) if args.output else Path(args.spec).with_suffix(".py")
    command = ["graphc", "compile", args.spec, "-o", str(out)]
    if args.lr is not None:
        command += ["--lr", repr(args.lr)]
    if args.dtype:
        command += ["--dtype", args.dtype]
    module = compile(
        spec.graph,
        loss=spec.loss,
        outputs=spec.outputs,
        lr=spec.lr if args.lr is None else args.lr,
        iterations=spec.iterations,
        source=args.spec,
        command=shlex.join(command),
    )
    module.save(out)
    print(f"graphc: wrote {out}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except GraphcError as err:
        if not err.file and getattr(args, "spec", None):
            err.file = args.spec
        print(f"graphc: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
