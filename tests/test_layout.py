"""The layout's rules (DESIGN section 17) that a grep can check: what differs per backend lives in its record
(graphc/backends.py) and its template (templates/backends/<name>.j2), and nowhere else."""

import re
from pathlib import Path

from graphc.backends import BACKENDS
from graphc.codegen import environment, template_dir

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
