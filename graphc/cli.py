"""The ``graphc`` command."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from pathlib import Path

from . import explain
from ._version import __version__
from .backends import BACKENDS, DEFAULT_BACKEND
from .compiler import compile
from .errors import CommandError, GraphcError, OnnxMissing, SpecError, one_line
from .files import holds, npz_bytes, same_file, write_atomic
from .graph import DTYPES
from .onnx import export_file, import_files
from .spec import load_spec


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors also exit 2 with one line
        self.exit(2, f"graphc: error: {message}\n")


SPEC = dict(metavar="SPEC", help="the model spec, a .toml or .json file")
DTYPE = dict(choices=DTYPES, help="float type of every array (default: the spec's, else float64)")
DIM = dict(metavar="NAME=SIZE", action="append", default=[],
           help="the default size of a named dimension (overrides the spec's [dims]); may be repeated")


def dim_option(text: str) -> tuple[str, int]:
    name, sep, size = text.partition("=")
    if not sep or not name.strip() or not size.strip().isdigit() or int(size) < 1:
        raise CommandError(f"--dim {text!r}: expected NAME=SIZE with a positive integer size, e.g. --dim N=32")
    return name.strip(), int(size)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="graphc", description="Compile a model spec into a standalone NumPy (or CuPy) training "
                                                 "module; inspect it, check its gradients, import and export ONNX.")
    parser.add_argument("--version", action="version", version=f"graphc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    c = commands.add_parser("compile", help="compile SPEC (.toml or .json) into a Python module",
                            description="Compile SPEC (.toml or .json) into a Python module that needs only NumPy "
                                        "(or NumPy and CuPy, with --backend cupy).")
    c.add_argument("spec", **SPEC)
    c.add_argument("-o", "--output", metavar="OUT.py", help="where to write the module (default: SPEC with .py)")
    c.add_argument("--lr", type=float, help="learning rate (default: the spec's [train] lr)")
    c.add_argument("--dtype", **DTYPE)
    c.add_argument("--dim", **DIM)
    c.add_argument("--backend", choices=list(BACKENDS), default=DEFAULT_BACKEND,
                   help="numpy (default), or cupy: the module's arrays live on the GPU, with fused kernels")
    c.set_defaults(run=run_compile)

    s = commands.add_parser(
        "show", help="print the forward graph, the backward pass, the saved values or the buffer plan of SPEC",
        description="Print SPEC's forward graph (the default) or, with --backward, one training step: the "
                    "forward statements, then the backward pass (the adjoint graph), one equation per line, "
                    "with shapes, in the NumPy of the generated code. --saved lists the forward values the "
                    "backward pass reads and their bytes; --memory, Trainer.step's buffer plan. --format json|dot "
                    "give the graph for other tools; "
                    "svg|png draw it with Graphviz's dot.")
    s.add_argument("spec", **SPEC)
    views = s.add_mutually_exclusive_group()
    for name, view in explain.VIEWS.items():
        if view.flag:
            views.add_argument(view.flag, dest="view", action="store_const", const=name, help=view.help)
    s.set_defaults(view="forward")
    s.add_argument("--format", choices=explain.FORMATS, default="text",
                   help="text (default): equations; json: networkx node-link data; dot: Graphviz; "
                        "svg, png: a picture drawn by Graphviz's dot (needs -o)")
    s.add_argument("-o", "--output", metavar="FILE", help="write to FILE (atomically) instead of printing")
    s.add_argument("--dtype", **DTYPE)
    s.add_argument("--dim", **DIM)
    s.set_defaults(run=run_show)

    k = commands.add_parser(
        "check", help="check SPEC's generated gradients against finite differences",
        description="Compile SPEC in memory (in float64), run the generated value_and_grad at "
                    "init_params(SEED) on random inputs and compare each param's gradient with central finite "
                    "differences of the generated loss: every entry of a small param; of a larger one, "
                    f"{explain.SAMPLES} random entries and the derivative along {explain.DIRECTIONS} random "
                    "directions (a few dozen loss evaluations, whatever its size). Prints one row per param; "
                    "exits 1 if any fails.")
    k.add_argument("spec", **SPEC)
    k.add_argument("--seed", type=int, default=0,
                   help="seed of init_params, of the inputs and of the entries and directions compared (default: 0)")
    k.add_argument("--eps", type=float, default=explain.DEFAULT_EPS,
                   help=f"finite-difference step (default: {explain.DEFAULT_EPS:g})")
    k.add_argument("--rtol", type=float, default=explain.DEFAULT_RTOL,
                   help=f"tolerance, relative to the largest difference quotient (default: {explain.DEFAULT_RTOL:g})")
    k.add_argument("--exhaustive", action="store_true",
                   help="compare every entry of every param (two loss evaluations per entry: slow on big models)")
    k.add_argument("--dim", **DIM)
    k.set_defaults(run=run_check)
    onnx_commands(commands)
    return parser


def onnx_commands(commands) -> None:
    """``graphc import`` and ``graphc export`` (graphc/onnx/)."""
    i = commands.add_parser(
        "import", help="import an ONNX model as a spec (SPEC.toml) and its weights (SPEC.npz)",
        description="Translate MODEL.onnx into a readable spec and, beside it, SPEC.npz with the model's "
                    "initializers (params with init = \"file\"). ONNX dim_params become named dimensions.")
    i.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    i.add_argument("-o", "--output", metavar="SPEC.toml", help="where to write the spec (default: MODEL with .toml)")
    i.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="INPUT.AXIS=N names an axis the model leaves unnamed (INPUT.AXIS=64 fixes its size); "
                        "NAME=32 gives a named dimension its default size; repeatable")
    i.set_defaults(run=run_import)

    e = commands.add_parser(
        "export", help="export SPEC's forward graph (its outputs) as an ONNX model",
        description="Write the forward graph of SPEC's outputs as an ONNX model (opset 17): named dimensions as "
                    "dim_params, params as initializers (from --params, a save_params file, else the module's "
                    "init_params(0): the spec's params_file or random draws).")
    e.add_argument("spec", **SPEC)
    e.add_argument("--params", metavar="TRAINED.npz", help="the params to export (save_params' .npz)")
    e.add_argument("-o", "--output", metavar="MODEL.onnx", help="where to write the model (default: SPEC with .onnx)")
    e.add_argument("--force", action="store_true",
                   help="replace the output file even if graphc did not write it (say, the model SPEC was imported "
                        "from); without it, export replaces only the models graphc wrote")
    e.set_defaults(run=run_export)


def compile_spec(spec, source: str, command: str | None = None, lr: float | None = None, dims=(),
                 backend: str = "numpy"):
    options = spec.options(dims={**spec.dims, **dict(dim_option(d) for d in dims)}, backend=backend)
    if lr is not None:
        options["lr"] = lr
    return compile(spec.graph, **options, source=source, command=command)


def run_compile(args) -> int:
    spec = load_spec(args.spec, dtype=args.dtype)
    out = Path(args.output) if args.output else Path(args.spec).with_suffix(".py")
    command = ["graphc", "compile", args.spec, "-o", str(out)]
    if args.lr is not None:
        command += ["--lr", repr(args.lr)]
    if args.dtype:
        command += ["--dtype", args.dtype]
    for d in args.dim:
        command += ["--dim", d]
    if args.backend != DEFAULT_BACKEND:
        command += ["--backend", args.backend]
    module = compile_spec(spec, args.spec, shlex.join(command), lr=args.lr, dims=args.dim, backend=args.backend)
    check_collisions(spec, out, module)
    module.save(out)
    print(f"graphc: wrote {out}" + (f" and {out.with_suffix('.npz')}" if module.init_values else ""))
    return 0


def check_collisions(spec, out: Path, module) -> None:
    """The files compile writes (the module, its params file) are neither each other nor the files it reads (the
    spec, its params_file): ``-o important.npz`` must not write the module over the weights. (No file is ever
    written over a .toml or .json: see files.write_atomic.)"""
    npz = out.with_suffix(".npz")
    if spec.params_path and same_file(out, spec.params_path):
        raise CommandError(f"-o {str(out)!r} is the spec's params_file: the module would replace it; give a name "
                           "ending in .py")
    if not module.init_values:
        return
    if same_file(out, npz):
        raise CommandError(f"-o {str(out)!r}: the module and its params file would both be that file; give a name "
                           "ending in .py")
    if spec.params_path and same_file(npz, spec.params_path) and not holds(npz, npz_bytes(module.init_values)):
        raise CommandError(f"the module's params file {str(npz)!r} would replace the spec's params_file, whose "
                           "contents differ (its dtype, or arrays that are not params): write the module elsewhere "
                           "with -o")


def run_show(args) -> int:
    explain.check_format(args.view, args.format)
    if args.format in explain.IMAGES and not args.output:
        raise CommandError(f"--format {args.format} writes an image file: give -o FILE.{args.format}")
    module = compile_spec(load_spec(args.spec, dtype=args.dtype), args.spec, dims=args.dim)
    text = explain.show(module, args.view, args.format)
    if args.format in explain.IMAGES:
        explain.render_image(text, args.format, args.output)
    elif args.output:
        write_atomic(args.output, text, spec_ok=json_output(args))
    else:
        return emit(text, 0)
    print(f"graphc: wrote {args.output}")
    return 0


def json_output(args) -> bool:
    """``show --format json`` may write a .json file, but never over the spec it reads or over another spec."""
    out = Path(args.output)
    if args.format != "json" or out.suffix.lower() != ".json":
        return False
    if same_file(out, Path(args.spec)) or json_spec(out):
        raise CommandError(f"-o {args.output}: that is {'the' if same_file(out, Path(args.spec)) else 'a'} spec, "
                           "which graphc never replaces: choose another name")
    return True


def json_spec(path: Path) -> bool:
    """``path`` holds a JSON spec: an object with a spec's tables (inputs, params, nodes, train)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and any(isinstance(data.get(k), dict) for k in ("inputs", "params", "nodes", "train"))


def run_check(args) -> int:
    if not all(math.isfinite(x) and x > 0 for x in (args.eps, args.rtol)):
        raise CommandError("--eps and --rtol must be positive numbers")
    if not 0 <= args.seed < 2**63:
        raise CommandError(f"--seed must be a whole number from 0 to 2**63 - 1, got {args.seed}")
    module = compile_spec(load_spec(args.spec, dtype="float64"), args.spec, dims=args.dim)
    if module.training is None:
        raise GraphcError("the spec has no [train] loss: there are no gradients to check")
    mod = module.load()
    try:
        report = explain.check_gradients(mod, mod.init_params(args.seed), explain.check_inputs(module, mod, args.seed),
                                         eps=args.eps, rtol=args.rtol, exhaustive=args.exhaustive, seed=args.seed)
    except MemoryError:
        raise CommandError("not enough memory to run the model at its [dims] sizes: give smaller ones with "
                           "--dim NAME=SIZE") from None
    title = (f"graphc check {args.spec}: value_and_grad vs central differences "
             f"(float64, init_params({args.seed}), random inputs)")
    return emit(explain.check_text(report, title), 0 if report.ok else 1)


def import_dims(items) -> dict:
    """``graphc import``'s --dim options: NAME=SIZE, or INPUT.AXIS=SIZE|NAME."""
    dims = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise SpecError(f"--dim {item}: write NAME=SIZE (a named dimension's default) or INPUT.AXIS=SIZE|NAME")
        if key in dims:
            raise SpecError(f"--dim {key} is given twice")
        dims[key] = value
    return dims


def run_import(args) -> int:
    command = ["graphc", "import", args.model]
    if args.output:
        command += ["-o", args.output]
    for d in args.dim:
        command += ["--dim", d]
    try:
        dims = import_dims(args.dim)
        spec, npz, imported = import_files(args.model, args.output, dims, shlex.join(command))
    except OnnxMissing:
        raise
    except GraphcError as err:
        raise err.located(file=args.model)
    print(f"graphc: wrote {spec} and {npz}")
    fixed = imported.fixed_input()
    if fixed and not any("." in key for key in dims):  # an INPUT.AXIS option fixed a size on purpose
        shape = tuple(imported.graph.nx.nodes[fixed]["shape"])
        print(one_line(f"graphc: note: every input dimension of {args.model} is fixed ({fixed} is {shape}), so the "
                       f"module takes that batch size only: to take any, import again with --dim {fixed}.0=N (or "
                       f"export the model with dynamic_axes= or dynamic_shapes=)"), file=sys.stderr)
    return 0


def run_export(args) -> int:
    out = export_file(args.spec, args.output, args.params, force=args.force)
    print(f"graphc: wrote {out}")
    return 0


def emit(text: str, status: int) -> int:
    """Print ``text``; a reader that stops early (``graphc show ... | head``) is not an error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail too
    return status


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except GraphcError as err:
        if not err.file and getattr(args, "spec", None) and not isinstance(err, CommandError):
            err.file = args.spec
        print(f"graphc: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
