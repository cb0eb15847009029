"""The layout's rules (DESIGN section 17) that a grep can check: what differs per backend lives in its record
(graphc/backends.py) and its template (templates/backends/<name>.j2), and nowhere else."""

import ast
import re
from pathlib import Path

from graphc.backends import BACKENDS
from graphc.codegen import environment, kernel_macros, template_dir
from graphc.ops import OPS

GRAPHC = Path(__file__).resolve().parent.parent / "graphc"


def exported(name: str) -> set[str]:
    module = environment().get_template(f"backends/{name}.j2").make_module()
    return {key for key in dir(module) if not key.startswith("_")}


def test_every_backend_template_says_what_the_numpy_one_says():
    wanted = exported("numpy")
    assert {"check_input", "to_device", "to_host_dict", "imports", "take_mode"} <= wanted
    for name, backend in BACKENDS.items():
        assert (template_dir() / backend.template).is_file(), backend.template
        assert exported(name) == wanted, name


def test_no_backend_is_tested_by_name_outside_its_record_and_template():
    names = "|".join(BACKENDS)
    literal = re.compile(rf"""[=!]=\s*["']({names})["']|["']({names})["']\s*[=!]=|\bin\s*\(["']({names})""")
    for path in GRAPHC.glob("*.py"):
        if path.name != "backends.py":
            assert not literal.search(path.read_text()), f"{path.name} tests the backend"
    for path in template_dir().glob("*.j2"):
        assert not re.search(r"backend\s*[=!]=|\bif\s+cupy\b", path.read_text()), f"{path.name} tests the backend"


def test_the_op_table_says_which_ops_have_a_kernel():
    """Op.kernel is true exactly for the ops with a C macro in templates/kernels.j2 (fusion.py fuses those)."""
    macros = {key for key in dir(kernel_macros()) if not key.startswith("_")} - {"declare"}
    assert macros == {name for name, op in OPS.items() if op.kernel}
    assert all(op.kernel for op in OPS.values() if op.multipass)


def test_no_list_of_op_names_outside_the_op_table():
    """A tuple, list, set or dict literal of two or more op names outside ops.py is a fact about ops kept
    elsewhere (the builder's __all__ aside)."""
    import ast

    for path in GRAPHC.glob("*.py"):
        if path.name in ("ops.py", "__init__.py", "onnx_io.py"):  # onnx_io: the ONNX room, moving to graphc/onnx/
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else \
                node.keys if isinstance(node, ast.Dict) else []
            names = [x.value for x in items if isinstance(x, ast.Constant) and x.value in OPS]
            assert len(names) < 2, f"{path.name}:{node.lineno} lists ops {names}"


def test_no_function_in_graphc_is_over_60_lines():
    """Issue 14's rule: a longer function reads better as named helpers."""
    long = []
    for path in sorted(GRAPHC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(GRAPHC)}:{node.lineno} {node.name} "
                            f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
