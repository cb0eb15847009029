# Two commands on a fresh clone: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup test-setup graphviz fuzz bench gpu-modules golden clean digits digits-cnn gpt

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

test-setup: $(VENV)/.installed-test graphviz

# `graphc show --format svg|png` and its test need Graphviz's `dot`; install it where we can (Debian, as root).
graphviz:
	@command -v dot >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq >/dev/null && apt-get install -y -qq graphviz >/dev/null; } \
		|| echo "note: Graphviz (dot) is not installed: the SVG/PNG rendering test will report that it did not run"

demo: setup
	$(BIN)/graphc compile examples/two_layer.toml -o examples/two_layer.py
	$(BIN)/python examples/two_layer.py

# A real model: compile examples/digits.toml, train it on scikit-learn's bundled digits (the `examples` extra),
# print the epochs and the test accuracy, save the trained params.
digits: setup
	$(BIN)/python -c "import sklearn" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[examples]"
	$(BIN)/graphc compile examples/digits.toml -o examples/digits_model.py
	$(BIN)/python examples/digits.py --module examples/digits_model.py --params examples/digits_params.npz

# The same digits as (N, 1, 8, 8) images through the small CNN of examples/digits_cnn.toml, on the same split.
digits-cnn: setup
	$(BIN)/python -c "import sklearn" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[examples]"
	$(BIN)/graphc compile examples/digits_cnn.toml -o examples/digits_cnn_model.py
	$(BIN)/python examples/digits.py --spec examples/digits_cnn.toml --module examples/digits_cnn_model.py \
		--params examples/digits_cnn_params.npz

# A character-level GPT (examples/char_gpt.toml: 2 blocks, 4 heads, width 64, context 32) trained with Adam on
# Shakespeare's sonnets (examples/sonnets.txt, public domain): prints the loss falling, then samples text.
# Options: make gpt GPT_ARGS="--steps 1000 --temperature 0.6 --sample-seed 3"
gpt: setup
	$(BIN)/python examples/char_gpt.py $(GPT_ARGS)

# Two workers (pytest-xdist): the suite is CPU-bound, and CI's machines have 2 cores.
test: test-setup
	$(BIN)/python -m pytest -q -n 2

# Thousands of random graphs through the gradient fuzzer (make test runs 50; this runs 5000, about half an hour).
fuzz: test-setup
	GRAPHC_FUZZ_EXAMPLES=5000 $(BIN)/python -m pytest -q tests/test_fuzz.py

# Step and compile-time benchmarks (not tests): ratios measured in one process, variants interleaved.
bench: setup
	$(BIN)/python bench/step.py
	$(BIN)/python bench/classifier.py
	$(BIN)/python bench/cnn.py
	$(BIN)/python bench/gpt.py
	$(BIN)/python bench/compile.py

# The CuPy modules bench/gpu.py checks and times, compiled here (the GPU machine has no black): take the folder
# and bench/gpu.py there and run `python bench/gpu.py --run bench/gpu_modules`.
gpu-modules: setup
	$(BIN)/python bench/gpu.py --prepare bench/gpu_modules

# Regenerate the golden files in tests/golden/ after a reviewed change to the generated code.
golden: test-setup
	$(BIN)/python -m pytest -q tests/test_golden.py tests/test_show.py --update-golden

clean:
	rm -rf $(VENV) .pytest_cache bench/gpu_modules examples/two_layer.py examples/chain_rule.py \
		examples/digits_model.py examples/digits_cnn_model.py examples/*.npz
