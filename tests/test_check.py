"""`graphc check`: the generated value_and_grad against central differences, on the examples and on modules whose
gradient a test corrupts on purpose."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc import explain
from graphc.cli import main
from graphc.compiler import CompiledModule

pytestmark = pytest.mark.unformatted


def graphc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "graphc", *args], capture_output=True, text=True, cwd=cwd)


def rows(text):
    """param -> result column of the table."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("param "))
    return {line.split()[0]: line.split(None, 4)[4] for line in lines[start + 1:-1]}


@pytest.mark.parametrize("example, params", [("two_layer", ["W1", "b1", "W2", "b2"]), ("chain_rule", ["x", "y", "z"])])
def test_examples_pass(example, params, root):
    result = graphc("check", f"examples/{example}.toml", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert rows(result.stdout) == {p: "pass" for p in params}
    assert result.stdout.splitlines()[-1] == f"ok: all {len(params)} gradients match central differences"


def small_net(init="randn", dtype="float64"):
    g = gc.Graph("small", dtype)
    X, y = g.input("X", (6, 5)), g.input("y", (6, 3))
    W1, b1 = g.param("W1", (5, 4), init=init), g.param("b1", (4,), init="zeros")
    W2 = g.param("W2", (4, 3))
    h = gc.relu(X @ W1 + b1, name="h")
    loss = gc.mse(h @ W2, y, name="loss")
    return gc.compile(g, loss=loss)


def check(module, corrupt=None, seed=0):
    mod = module.load()
    if corrupt:
        value_and_grad = mod.value_and_grad

        def corrupted(params, *args, **kw):
            value, grads = value_and_grad(params, *args, **kw)
            return value, corrupt(dict(grads))

        mod.value_and_grad = corrupted
    return explain.check_gradients(mod, mod.init_params(seed), explain.check_inputs(module, mod, seed))


def test_small_net_passes_and_reports_its_errors():
    report = check(small_net())
    assert report.ok and not report.problems
    for row in report.rows:
        assert row.ok and row.kinks == 0 and 0 <= row.rel_err < 1e-7 and row.abs_err <= row.rel_err * 1e6


def scaled(name, factor, index=...):
    def corrupt(grads):
        grads[name] = np.array(grads[name], copy=True)
        grads[name][index] *= factor
        return grads
    return corrupt


@pytest.mark.parametrize("name, index", [("W1", (2, 1)), ("b1", ...), ("W2", ...)])
def test_a_corrupted_gradient_fails_and_is_named(name, index):
    report = check(small_net(), scaled(name, 1.01, index))
    assert not report.ok
    assert [r.param for r in report.rows if not r.ok] == [name]
    bad = next(r for r in report.rows if r.param == name)
    assert bad.rel_err > 1e-4 and bad.kinks == 0
    text = explain.check_text(report, "title")
    assert rows(text)[name] == "FAIL" and text.splitlines()[-1] == f"FAIL: wrong gradient for {name}"


def test_cli_exits_1_naming_the_bad_param(root, monkeypatch, capsys):
    load = CompiledModule.load

    def load_corrupted(self):
        mod = load(self)
        value_and_grad = mod.value_and_grad
        mod.value_and_grad = lambda params: (lambda v, g: (v, {**g, "y": g["y"] + 0.5}))(*value_and_grad(params))
        return mod

    monkeypatch.setattr(CompiledModule, "load", load_corrupted)
    assert main(["check", "examples/chain_rule.toml"]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    assert rows(out) == {"x": "pass", "y": "FAIL", "z": "pass"}
    assert out.splitlines()[-1] == "FAIL: wrong gradient for y"


@pytest.mark.parametrize("corrupt, problem", [
    (lambda g: {k: v for k, v in g.items() if k != "W2"}, "no gradient returned"),
    (lambda g: {**g, "b1": g["b1"][:2]}, "gradient of shape [2]"),
    (lambda g: {**g, "W1": g["W1"] * np.nan}, "gradient not finite"),
])
def test_malformed_gradients_fail(corrupt, problem):
    report = check(small_net(), corrupt)
    assert not report.ok
    assert [r.problem for r in report.rows if r.problem] == [problem]
    assert f"FAIL: {problem}" in explain.check_text(report, "title")


def test_a_value_and_grad_that_changes_the_params_fails():
    module = small_net()
    mod = module.load()
    value_and_grad = mod.value_and_grad

    def meddling(params, **inputs):
        result = value_and_grad(params, **inputs)
        params["W2"] += 1.0
        return result

    mod.value_and_grad = meddling
    params = mod.init_params(0)
    before = params["W2"].copy()
    report = explain.check_gradients(mod, params, explain.check_inputs(module, mod, 0))
    assert report.problems == ["value_and_grad changed the params it was given"] and not report.ok
    np.testing.assert_array_equal(params["W2"], before)  # restored, so the differences are taken at init


def test_relu_kinks_are_left_out_not_failed():
    # W1 = 0 puts every hidden unit exactly at relu's kink: W1 and b1 have no derivative there
    report = check(small_net(init="zeros"))
    assert report.ok
    by_name = {r.param: r for r in report.rows}
    assert by_name["W1"].kinks == 20 and by_name["b1"].kinks == 4 and by_name["W2"].kinks == 0
    text = explain.check_text(report, "title")
    assert rows(text)["W1"].startswith("not checked: every element sits on a kink")
    assert text.splitlines()[-1] == "ok: 1 of 3 gradients match central differences; W1, b1 could not be compared " \
                                    "at these params"
    # a wrong gradient where the loss is smooth is still caught (dW2 is 0 here: h is)
    report = check(small_net(init="zeros"), lambda g: {**g, "W2": g["W2"] + 1e-3})
    assert [r.param for r in report.rows if not r.ok] == ["W2"]


def test_float32_spec_is_checked_in_float64(root, tmp_path, capsys):
    spec = tmp_path / "f32.toml"
    spec.write_text((root / "examples" / "chain_rule.toml").read_text() + 'dtype = "float32"\n')
    assert main(["check", str(spec), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "(float64, init_params(3), random inputs)" in out.splitlines()[0]


@pytest.mark.parametrize("args", [["--eps", "0"], ["--rtol", "-1"], ["--eps", "nan"]])
def test_bad_tolerances_are_one_line_exit_2(args, root, capsys):
    assert main(["check", "examples/chain_rule.toml", *args]) == 2
    assert capsys.readouterr() == ("", "graphc: error: --eps and --rtol must be positive numbers\n")


def test_a_negative_seed_is_a_one_line_error(root):
    result = subprocess.run([sys.executable, "-m", "graphc", "check", "examples/chain_rule.toml", "--seed", "-1"],
                            capture_output=True, text=True, cwd=root)
    assert result.returncode == 2
    assert result.stderr == "graphc: error: --seed must be a whole number from 0 to 2**63 - 1, got -1\n"


# ---- the default check samples a large param; --exhaustive compares every entry -----------------------------------

@pytest.fixture(scope="module")
def digits():
    from graphc.cli import compile_spec
    from graphc.spec import load_spec

    path = Path(__file__).resolve().parent.parent / "examples" / "digits.toml"
    return compile_spec(load_spec(path, dtype="float64"), str(path))


def largest_entry_times(name, factor):
    """Corrupt the entry of ``name``'s gradient of largest magnitude (one entry of 32,768 for digits' W1)."""
    def corrupt(grads):
        grad = np.array(grads[name], copy=True)
        grad[np.unravel_index(np.argmax(np.abs(grad)), grad.shape)] *= factor
        return {**grads, name: grad}
    return corrupt


def test_the_default_check_of_a_large_model_takes_a_few_dozen_losses_per_param(digits):
    mod = digits.load()
    loss, calls = mod.loss, []
    mod.loss = lambda *a, **kw: calls.append(1) or loss(*a, **kw)
    report = explain.check_gradients(mod, mod.init_params(0), explain.check_inputs(digits, mod, 0))
    assert report.ok and not report.exhaustive
    by_name = {r.param: r for r in report.rows}
    probes = explain.SAMPLES + explain.DIRECTIONS
    assert [(r.probes, r.directions) for r in report.rows] == [(probes, 3), (probes, 3), (probes, 3), (10, 0)]
    assert by_name["W1"].shape == (64, 512) and all(r.rel_err < 1e-6 for r in report.rows)
    assert len(calls) <= 1 + 2 * (3 * probes + 10)  # f0, then two per difference: none retried at eps / 16


@pytest.mark.parametrize("name, corrupt", [
    ("W1", largest_entry_times("W1", 1.01)),  # one entry of 32,768, 1% off
    ("W2", largest_entry_times("W2", 1.01)),
    ("b1", scaled("b1", 1.001)),  # the whole gradient 0.1% off
    ("W1", scaled("W1", 1.001)),
])
def test_the_default_check_finds_a_planted_wrong_gradient_in_a_large_param(digits, name, corrupt):
    for seed in (0, 1):
        report = check(digits, corrupt, seed=seed)
        assert [r.param for r in report.rows if not r.ok] == [name], seed
        bad = next(r for r in report.rows if r.param == name)
        assert bad.rel_err > 1e-4 and bad.kinks == 0


def middle_spec(tmp_path):
    spec = tmp_path / "middle.toml"
    spec.write_text('[inputs]\nX = [6, 8]\ny = [6, 3]\n[params]\nW1 = { shape = [8, 40], init = "randn" }\n'
                    'W2 = { shape = [40, 3], init = "randn" }\n'
                    '[nodes]\nloss = "mse(tanh(X @ W1) @ W2, y)"\n[train]\nloss = "loss"\n')
    return spec


def test_exhaustive_compares_every_entry_and_finds_one_wrong_entry(tmp_path, monkeypatch, capsys):
    load = CompiledModule.load

    def load_corrupted(self):  # entry (5, 17) of W1's gradient, 1% off
        mod = load(self)
        mod.value_and_grad = (lambda vg: lambda params, **kw: (lambda v, g: (v, scaled("W1", 1.01, (5, 17))(
            dict(g))))(*vg(params, **kw)))(mod.value_and_grad)
        return mod

    spec = middle_spec(tmp_path)
    assert main(["check", str(spec), "--exhaustive"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1] == "compared: every entry of every param (--exhaustive)"
    monkeypatch.setattr(CompiledModule, "load", load_corrupted)
    for args in (["--exhaustive"], []):
        assert main(["check", str(spec), *args]) == 1
        out, err = capsys.readouterr()
        assert err == "" and rows(out) == {"W1": "FAIL", "W2": "pass"}
        assert out.splitlines()[-1] == "FAIL: wrong gradient for W1"
        assert ("every entry of every param" in out.splitlines()[1]) == bool(args)


def test_exhaustive_report_counts_every_entry(tmp_path):
    from graphc.spec import load_spec
    from graphc.cli import compile_spec

    module = compile_spec(load_spec(middle_spec(tmp_path)), "middle.toml")
    mod = module.load()
    report = explain.check_gradients(mod, mod.init_params(0), explain.check_inputs(module, mod, 0), exhaustive=True)
    assert report.ok and report.exhaustive
    assert [(r.probes, r.directions) for r in report.rows] == [(320, 0), (120, 0)]
    sampled = explain.check_gradients(mod, mod.init_params(0), explain.check_inputs(module, mod, 0))
    assert [(r.probes, r.directions) for r in sampled.rows] == [(35, 3), (35, 3)]
