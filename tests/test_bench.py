"""Every bench script's --quick mode runs and prints its table, so that a benchmark nothing else runs cannot rot
(issue 19: `make bench` crashed in bench/compile.py). No timing is asserted: the numbers are bench/'s business."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench(script, *args):
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          cwd=BENCH.parent, timeout=300)


def table(out, first):
    """The rows of a printed table, from the line that starts with ``first``: the first word of each row."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip("| ").startswith(first))
    return [line for line in lines[start + 1:] if line.strip() and not set(line) <= set("-|: ")]


def test_step_quick():
    result = bench("step.py", "--quick")
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout, "size")
    assert [row.split()[:3] for row in rows[:4]] == [["seed", "float64", v] for v in ("naive", "hand-tuned",
                                                                                      "floor", "graphc")]


def test_classifier_quick():
    result = bench("classifier.py", "--quick")
    assert result.returncode == 0, result.stderr
    variants = [row.split("|")[3].strip() for row in table(result.stdout, "model")]
    assert variants[:3] == ["graphc", "numpy", "numpy-inplace"]
    assert "small float64: graphc / numpy-inplace = " in result.stdout


def test_compile_quick():
    result = bench("compile.py", "--quick")
    assert result.returncode == 0, result.stderr
    rows = [row.split() for row in table(result.stdout, "depth")]
    assert [row[0] for row in rows] == ["2", "4"] and all(len(row) == 10 for row in rows)


def test_gpu_quick_compiles_every_module_without_cupy():
    result = bench("gpu.py", "--quick")
    assert result.returncode == 0, result.stderr
    assert "quick: 10 modules compiled; the NumPy ones train" in result.stdout


@pytest.mark.parametrize("args", [[], ["--quick", "--rounds", "0"], ["--quick", "--run", "x"]])
def test_gpu_arguments_are_checked(args):
    result = bench("gpu.py", *args)
    assert result.returncode == 2 and "error:" in result.stderr.splitlines()[-1]


def test_cnn_quick():
    result = bench("cnn.py", "--quick")
    assert result.returncode == 0, result.stderr
    assert "float64: self-test passed" in result.stdout
    variants = [row.split("|")[2].strip() for row in table(result.stdout, "dtype")]
    assert variants[:2] == ["graphc", "numpy"]
    assert "float64: graphc / numpy = " in result.stdout


def test_gpt_quick():
    result = bench("gpt.py", "--quick")
    assert result.returncode == 0, result.stderr
    assert "float64: self-test passed (graphc's losses equal torch's" in result.stdout  # the test extra has torch
    variants = [row.split("|")[2].strip() for row in table(result.stdout, "dtype")]
    assert variants[:2] == ["graphc", "torch"]
    assert "float64: graphc / torch = " in result.stdout
