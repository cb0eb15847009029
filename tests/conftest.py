import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/ from the current compiler")


@pytest.fixture
def update_golden(request):
    return request.config.getoption("--update-golden")


@pytest.fixture
def root(monkeypatch):
    """Run from the repo root, so spec paths (and the docstrings naming them) are the README's."""
    monkeypatch.chdir(ROOT)
    return ROOT
