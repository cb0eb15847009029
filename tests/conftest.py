import sys
from pathlib import Path

import pytest

from graphc import codegen

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config):
    config.addinivalue_line("markers", "unformatted: the module's tests compile without black (see unformatted)")


@pytest.fixture(scope="module", autouse=True)
def unformatted(request):
    """In a test module marked ``pytestmark = pytest.mark.unformatted``, graphc writes its modules as the templates
    give them, without black: the tests there check values, gradients and errors, and black, which changes
    layout only, is most of a compile's time (about 60% of the suite's). The formatted text has tests of its
    own: the golden files, black on long modules (tests/test_big.py), determinism, the command's output."""
    if request.node.get_closest_marker("unformatted") is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codegen, "_black", lambda text: text)
        yield


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
