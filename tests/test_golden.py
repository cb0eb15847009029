"""Layer 4: the generated module of each example is stored; any change to generated code is a reviewed diff.

After an intended change run `make golden` (pytest tests/test_golden.py --update-golden) and review the diff.
"""

import pytest

from graphc.cli import main

EXAMPLES = ["two_layer", "chain_rule"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_generated_module_matches_golden(example, root, update_golden, capsys):
    out = root / "examples" / f"{example}.py"
    assert main(["compile", f"examples/{example}.toml", "-o", f"examples/{example}.py"]) == 0
    golden = root / "tests" / "golden" / f"{example}.py"
    text = out.read_text()
    if update_golden:
        golden.write_text(text)
    assert text == golden.read_text(), f"generated {example}.py differs from tests/golden/ (make golden to update)"
