"""Layer 4: the generated module of each example is stored; any change to generated code is a reviewed diff.

After an intended change run `make golden` (pytest tests/test_golden.py --update-golden) and review the diff.
"""

import io
import shutil

import pytest

from graphc.cli import main

EXAMPLES = ["two_layer", "chain_rule"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_generated_module_matches_golden(example, root, update_golden, tmp_path, monkeypatch, capsys):
    # `make demo`'s command, run in a copy so the paths in the docstring are the same and examples/ is untouched
    (tmp_path / "examples").mkdir()
    shutil.copy(root / "examples" / f"{example}.toml", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    assert main(["compile", f"examples/{example}.toml", "-o", f"examples/{example}.py"]) == 0
    golden = root / "tests" / "golden" / f"{example}.py"
    text = (tmp_path / "examples" / f"{example}.py").read_text()
    if update_golden:
        golden.write_text(text)
    assert text == golden.read_text(), f"generated {example}.py differs from tests/golden/ (make golden to update)"


@pytest.mark.parametrize("example", EXAMPLES)
def test_generated_module_has_no_dead_names(example, root):
    """pyflakes finds no unused local, import or undefined name in the generated code."""
    from pyflakes.api import check
    from pyflakes.reporter import Reporter

    out, err = io.StringIO(), io.StringIO()
    text = (root / "tests" / "golden" / f"{example}.py").read_text()
    assert check(text, f"{example}.py", Reporter(out, err)) == 0, out.getvalue() + err.getvalue()
