# Two commands on a fresh clone: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup test-setup fuzz bench golden clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installed (editable) graphc with its runtime deps; re-run when pyproject.toml changes.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

test-setup: $(VENV)/.installed-test

demo: setup
	$(BIN)/graphc compile examples/two_layer.toml -o examples/two_layer.py
	$(BIN)/python examples/two_layer.py

test: test-setup
	$(BIN)/python -m pytest -q

# Regenerate the golden files in tests/golden/ after a reviewed change to the generated code.
golden: test-setup
	$(BIN)/python -m pytest -q tests/test_golden.py --update-golden

clean:
	rm -rf $(VENV) examples/*.py .pytest_cache
