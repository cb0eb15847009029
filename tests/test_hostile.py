"""Hostile specs: a spec is untrusted input. Nothing in it may run; it ends in a clear error or a correct module.

tests/hostile/ holds the corpus, one attack per file (the comment at the top of each TOML file says what it
tries). CORPUS below maps each file to what must happen: the message the command prints (after
``graphc: error: <file>:``), or COMPILES. Every payload is a canary: if any of it were evaluated it would create
the file PWNED in the working directory or set GRAPHC_PWNED in the environment; every test checks both, at compile
time and, for the specs that compile, while the generated module is imported and run in a subprocess.
"""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc import cli
from graphc.graph import public_ops
from crafted import npz_with_headers
from gradcheck import check_gradients, random_inputs, random_params

pytestmark = pytest.mark.unformatted

HOSTILE = Path(__file__).resolve().parent / "hostile"
COMPILES = None
PRECIOUS = b"# an earlier, working module: a failed compile must leave it byte for byte\n"
KNOWN_OPS = ", ".join(sorted(public_ops()))  # add, binary_cross_entropy_with_logits, ..., transpose
ONLY_OPS = f"only ops can be called, by name ({KNOWN_OPS}); this calls"
NOT_ALLOWED = "expressions are not allowed: use names, numbers, + - * / @ and op calls"
NOT_IDENTIFIER = "the name is not a valid ASCII Python identifier"

CORPUS = {
    # expressions: parsed with ast and walked, never evaluated
    "expr_import_call.toml": f"node 'loss': {ONLY_OPS} Attribute expression",
    "expr_import_name.toml": "node 'loss': undefined name '__import__'",
    "expr_builtin_eval.toml": f"node 'loss': unknown op 'eval' (known: {KNOWN_OPS})",
    "expr_builtin_exec.toml": "node 'loss': unknown op 'exec'",
    "expr_attribute.toml": f"node 'loss': Attribute {NOT_ALLOWED}",
    "expr_dunder_chain.toml": f"node 'loss': Attribute {NOT_ALLOWED}",
    "expr_subscript.toml": f"node 'loss': Subscript {NOT_ALLOWED}",
    "expr_lambda_called.toml": f"node 'loss': {ONLY_OPS} Lambda expression",
    "expr_lambda_operand.toml": f"node 'loss': Lambda {NOT_ALLOWED}",
    "expr_fstring.toml": f"node 'loss': JoinedStr {NOT_ALLOWED}",
    "expr_walrus.toml": f"node 'loss': NamedExpr {NOT_ALLOWED}",
    "expr_listcomp.toml": f"node 'loss': ListComp {NOT_ALLOWED}",
    "expr_genexp.toml": f"node 'loss': GeneratorExp {NOT_ALLOWED}",
    "expr_ifexp.toml": f"node 'loss': IfExp {NOT_ALLOWED}",
    "expr_boolop.toml": f"node 'loss': BoolOp {NOT_ALLOWED}",
    "expr_compare.toml": f"node 'loss': Compare {NOT_ALLOWED}",
    "expr_modulo.toml": "node 'loss': operator Mod is not allowed (use + - * / @ **)",
    "expr_invert.toml": "node 'loss': operator Invert is not allowed (use + - * / @)",
    "expr_statement_semicolon.toml": "node 'loss': cannot parse \"mse(pred, y); __import__(",
    "expr_statement_newline.toml": "node 'loss': cannot parse \"mse(pred, y)\\n__import__(",
    "expr_comment_then_code.toml": "\": invalid syntax",
    "expr_string_constant.toml": "node 'loss': 'PWNED' is not allowed here: only numbers are constants",
    "expr_bytes_constant.toml": "node 'loss': b'PWNED' is not allowed here: only numbers are constants",
    "expr_none_constant.toml": "node 'loss': None is not allowed here: only numbers are constants",
    "expr_bool_constant.toml": "node 'loss': True is not allowed here: only numbers are constants",
    "expr_ellipsis.toml": "node 'loss': Ellipsis is not allowed here: only numbers are constants",
    "expr_complex.toml": "node 'loss': 2j is not allowed here: only numbers are constants",
    "expr_kw_call.toml": "node 'loss': attribute reduction= must be a literal: a number, a string, True, False, None or a tuple of ints and dimension names",
    "expr_kw_name.toml": "node 'loss': attribute reduction= must be a literal: a number, a string, True, False, None or a tuple of ints and dimension names",
    "expr_double_star.toml": "node 'loss': * and ** arguments are not allowed",
    "expr_star.toml": "node 'loss': * and ** arguments are not allowed",
    "expr_call_result.toml": f"node 'loss': {ONLY_OPS} Call expression",
    "expr_unicode_lookalike.toml": "node 'loss': character '\U0001d432' (U+1D432) is not allowed: expressions are",
    "expr_fullwidth.toml": "node 'loss': character '\uff50' (U+FF50) is not allowed: expressions are ASCII",
    "expr_deep_parentheses.toml": "too many nested parentheses",
    "expr_deep_unary.toml": "node 'loss': cannot parse 'mse(------",
    "expr_huge_int.toml": "node 'loss': the number 1000000000",
    "expr_huge_float.toml": "node 'loss': the number 1e999 is too large",
    "expr_nan_name.toml": "node 'loss': undefined name 'nan'",
    "expr_self_reference.toml": "node 'loss': 'loss' refers to itself",
    "expr_used_before_definition.toml": "node 'loss': 'pred' is used before its definition",
    "expr_null_byte.toml": "node 'loss': cannot parse 'mse(pred, y)\\x00': source code string cannot contain null",
    # names: ASCII identifiers, not keywords, no leading underscore; shown escaped, on one line
    "name_quote.toml": f"node 'X\"); __import__(\"os\").system(\"touch PWNED\"); (\"': {NOT_IDENTIFIER}",
    "name_single_quote.toml": NOT_IDENTIFIER,
    "name_newline.toml": f"node \"h\\n__import__('os').system('touch PWNED')\\nh\": {NOT_IDENTIFIER}",
    "name_hash.toml": f"node 'h # ': {NOT_IDENTIFIER}",
    "name_semicolon.toml": NOT_IDENTIFIER,
    "name_space.toml": f"node 'X 2': {NOT_IDENTIFIER}",
    "name_dot.toml": f"node 'os.system': {NOT_IDENTIFIER}",
    "name_cyrillic_lookalike.toml": f"node 'l\u043ess': {NOT_IDENTIFIER}",
    "name_ligature.toml": f"node '\ufb01': {NOT_IDENTIFIER}",
    "name_keyword.toml": "node 'lambda': the name is a Python keyword",
    "name_keyword_none.toml": "node 'None': the name is a Python keyword",
    "name_dunder.toml": "node '__builtins__': the name starts with '_', which graphc keeps for its own names",
    "name_underscore.toml": "node '_np': the name starts with '_'",
    "name_digit.toml": f"node '1h': {NOT_IDENTIFIER}",
    "name_empty.toml": f"node '': {NOT_IDENTIFIER}",
    "name_reserved_input.toml": "node 'iterations': input name 'iterations' is a keyword argument of Trainer.fit",
    "name_graph_injection.toml": "graph name 'm\"\"\"; __import__",
    "name_graph_keyword.toml": "graph name 'class' is a Python keyword",
    # op attributes and other strings: checked against the allowed values
    "attr_reduction_injection.toml": "node 'loss': mse attribute reduction=\"sum((pred - y) ** 2) + __import__(",
    "attr_reduction_number.toml": "node 'loss': mse attribute reduction=1 is not one of 'mean', 'sum'",
    "attr_unknown.toml": "node 'loss_relu': relu has no attribute 'inplace' (allowed: none)",
    "attr_duplicate.toml": "node 'loss': attribute reduction= is given twice",
    "attr_internal_op.toml": "node 'loss': unknown op 'sum_to'",
    "attr_axis_call.toml": "node 'loss': attribute axis= must be a literal: a number, a string, True, False, None",
    "attr_axis_nested_tuple.toml": "node 'loss': attribute axis= must be a literal: a number, a string, True, False",
    "attr_axis_huge.toml": "node 'loss': loss = sum(pred, axis=99999999999999999999999, keepdims=False): axis "
                           "99999999999999999999999 is out of range for shape (4, 2) (2-D)",
    "attr_axis_bool.toml": "node 'loss': sum attribute axis=True must be an int, a tuple of ints or None",
    "attr_keepdims_string.toml": "node 'loss': sum attribute keepdims='True; __import__(\"os\").system(\"touch "
                                 "PWNED\")' must be True or False",
    "attr_slope_inf.toml": "node 'loss_leaky_relu': leaky_relu attribute negative_slope=inf must be a finite number",
    "attr_slope_expression.toml": "node 'loss': attribute negative_slope= must be a literal: a number, a string",
    "expr_integer_target_injection.toml": "node 'loss_mul': y is an integer input (class indices): only the target "
                                          "of cross_entropy or the ids of embedding may be integer",
    "valid_new_ops.toml": COMPILES,
    "init_injection.toml": "node 'W': unknown init \"zeros((3, 2)); __import__(",
    "dtype_injection.toml": "unsupported dtype \"float64; __import__(",
    "optimizer_injection.toml": "unknown optimizer \"__import__(",
    "lr_string.toml": "[train] lr must be a positive finite number, got \"1e-3); __import__(",
    "dim_name_injection.toml": "node 'X': dimension name \"N); __import__('os')",
    "betas_injection.toml": "[train] betas must be a pair of numbers in [0, 1), got \"(0.9, 0.999)); __import__(",
    "params_file_passwd.toml": "params_file must name a .npz file, got '../../../../../../etc/passwd'",
    "params_file_parent.toml": "params_file '../weights.npz' is outside the spec's folder",
    "params_file_absolute.toml": "params_file '/tmp/weights.npz' is outside the spec's folder",
    "params_file_missing.toml": "cannot read the params_file 'missing.npz': No such file or directory",
    "dims_default_huge.toml": "node 'X': at the default sizes of its named dimensions ([dims]), input 'X' would have "
                              "shape [1099511627776, 3] and more than 2147483648 elements",
    "dims_injection.toml": "dimension 'N' must have a positive integer size, got \"32); __import__(",
    "loss_injection.toml": "[train] names \"__import__('os').system('touch PWNED')\", which is not defined",
    "outputs_injection.toml": "[train] names \"__import__('os').system('touch PWNED')\", which is not defined",
    "unknown_top_level_key.toml": "unknown top-level key 'exec'",
    "unknown_train_key.toml": "unknown key 'exec' in [train]",
    "unknown_param_key.toml": "node 'W': unknown key 'code' (a param has init, scale, shape, trainable)",
    # numbers
    "init_nan.toml": "node 'W': init must be finite, got nan",
    "init_inf.toml": "node 'W': init must be finite, got -inf",
    "init_overflow.toml": "node 'W': init 1e+300 times scale 1e+300 does not fit in float64",
    "init_float32_overflow.toml": "node 'W': init 1e+39 does not fit in float32",
    "scale_string.toml": "node 'W': scale must be a number, got '2'",
    "lr_nan.toml": "[train] lr must be a positive finite number, got nan",
    "lr_inf.toml": "[train] lr must be a positive finite number, got inf",
    "lr_zero.toml": "[train] lr must be a positive finite number, got 0",
    "lr_negative.toml": "[train] lr must be a positive finite number, got -0.1",
    "iterations_zero.toml": "[train] iterations must be an integer from 1 to 10**9, got 0",
    "iterations_huge.toml": "[train] iterations must be an integer from 1 to 10**9, got 9223372036854775807",
    "iterations_float.toml": "[train] iterations must be an integer from 1 to 10**9, got 3.5",
    "dim_zero.toml": "node 'X': shape [0, 3]: every dimension must be a positive integer",
    "dim_negative.toml": "node 'X': shape [-4, 3]: every dimension must be a positive integer",
    "dim_huge.toml": "node 'y': shape [4, 9223372036854775807] has more than 2147483648 elements",
    "dim_float.toml": "node 'X': shape [4.0, 3]: every dimension must be a positive integer",
    "dim_bool.toml": "node 'X': shape [True, 3]: every dimension must be a positive integer",
    "dim_nan.toml": "node 'X': shape [nan, 3]: every dimension must be a positive integer",
    "dim_string.toml": "node 'X': shape \"__import__('os').system('touch PWNED')\" is not a list of dimensions",
    "dim_many.toml": "node 'y': shape has 100 dimensions; NumPy allows at most 32",
    "deep_nesting.toml": "invalid TOML: nested too deeply",
    # JSON
    "json_expr_import.json": f"node 'loss': {ONLY_OPS} Attribute expression",
    "json_name_newline.json": "node \"h\\n__import__('os').environ.setdefault('GRAPHC_PWNED', '1')\": the name",
    "json_name_quote_key.json": f"node 'b\"]; import os; x = [\"': {NOT_IDENTIFIER}",
    "json_attr_injection.json": "node 'loss': mse attribute reduction=\"mean(); __import__(",
    "json_not_object.json": "invalid JSON: the spec must be an object",
    "json_nan.json": "invalid JSON: NaN is not a number a spec may use",
    "json_infinity.json": "invalid JSON: -Infinity is not a number a spec may use",
    "json_huge_exponent.json": "[train] lr must be a positive finite number, got inf",
    "json_huge_int_lr.json": "[train] lr must be a positive finite number, got 1000000000",
    "json_int_digits_limit.json": "invalid JSON: Exceeds the limit (4300 digits) for integer string conversion",
    "json_duplicate_key.json": "node 'y': duplicate key 'y'",
    "json_deep_nesting.json": "invalid JSON: nested too deeply",
    "json_shape_object.json": "node 'X': unknown key '__class__': an input is a shape, or a table",
    "json_node_not_string.json": "node 'loss': a node is an expression string, got {'op': 'mse'",
    # hostile but valid: must compile to a correct module
    "valid_shadowing_names.toml": COMPILES,
    "valid_comment_in_expression.toml": COMPILES,
    "valid_soft_keywords.toml": COMPILES,
    "valid_long_name.toml": COMPILES,
    "valid_long_graph_name.toml": COMPILES,
    "valid_extreme_numbers.toml": COMPILES,
    "json_valid_shadowing_names.json": COMPILES,
}
VALID = sorted(k for k, v in CORPUS.items() if v is COMPILES)


def test_the_table_covers_the_corpus():
    assert sorted(CORPUS) == sorted(p.name for p in HOSTILE.iterdir())


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """A scratch working directory; afterwards nothing smuggled in may have run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRAPHC_PWNED", raising=False)
    yield tmp_path
    assert not (tmp_path / "PWNED").exists(), "a payload ran"
    assert "GRAPHC_PWNED" not in os.environ, "a payload ran"


def test_the_canaries_are_live(tmp_path):
    """The payloads do what they say when Python evaluates them, so their absence above means something."""
    payloads = ["__import__('os').system('touch PWNED')",
                "__import__('os').environ.setdefault('GRAPHC_PWNED', '1')"]
    for payload in payloads:
        assert any(payload in p.read_text(encoding="utf-8") for p in HOSTILE.iterdir())
    script = f"{payloads[0]}; {payloads[1]}; import os; print(os.environ['GRAPHC_PWNED'])"
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert run.stdout == "1\n" and (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_spec(name, canary, capsys):
    """The command on each spec: one clear line and exit 2, the old output untouched; or a correct module."""
    shutil.copy(HOSTILE / name, canary / name)
    out = canary / "model.py"
    out.write_bytes(PRECIOUS)
    status = cli.main(["compile", name, "-o", "model.py"])
    printed = capsys.readouterr()
    if CORPUS[name] is COMPILES:
        assert status == 0, printed.err
        source = out.read_text(encoding="utf-8")
        assert "PWNED" not in source and "__import__" not in source
        compile(source, "model.py", "exec")
    else:
        assert status == 2
        assert printed.out == ""
        assert printed.err.count("\n") == 1 and printed.err.endswith("\n"), printed.err
        assert printed.err.startswith(f"graphc: error: {name}:"), printed.err
        assert CORPUS[name] in printed.err
        assert out.read_bytes() == PRECIOUS
    assert sorted(p.name for p in canary.iterdir()) == sorted([name, "model.py"])  # no temporary files


def compile_spec(path, dtype=None):
    spec = gc.load_spec(path, dtype=dtype)
    return gc.compile(spec.graph, **spec.options())


@pytest.mark.parametrize("name", VALID)
def test_valid_hostile_spec_trains_correctly(name, canary):
    """Each spec that compiles: gradients match finite differences, Trainer.step is value_and_grad plus SGD,
    and the module runs as a script in a fresh process without anything smuggled in running."""
    module = compile_spec(HOSTILE / name)
    mod = module.load()
    params = random_params(mod, seed=2, away_from_zero=True)
    inputs = random_inputs(mod, seed=3)
    check_gradients(mod, params, inputs)
    value, grads = mod.value_and_grad(params, *inputs)
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()}, lr=1e-3)
    assert trainer.step(*inputs) == pytest.approx(value, rel=1e-12)
    for k in mod.PARAMS:
        np.testing.assert_allclose(trainer.params[k], params[k] - 1e-3 * grads[k], rtol=1e-12, atol=1e-15)
    module.save(canary / "model.py")
    run = subprocess.run([sys.executable, "model.py"], cwd=canary, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "GRAPHC_PWNED"})
    assert run.returncode == 0, run.stderr
    assert "loss" in run.stdout and "GRAPHC_PWNED" not in run.stdout


def test_shadowing_names_compute_what_they_say(canary):
    """Inputs named np, params, self; params named grads, lr, Trainer, INPUTS; nodes named float, sum, step,
    loss: the module must use the user's values under those names, and its own where it means its own."""
    mod = compile_spec(HOSTILE / "valid_shadowing_names.toml").load()
    assert mod.INPUTS == ("np", "params", "self") and mod.PARAMS == ("grads", "lr", "Trainer", "INPUTS")
    p = random_params(mod, seed=5)
    x_np, x_params, x_self = random_inputs(mod, seed=6)
    float_ = x_np @ p["grads"] + p["lr"]
    sum_ = float_ * p["Trainer"]
    step = sum_ + p["INPUTS"]
    loss = np.sum((step - x_params) ** 2) + np.mean((float_ - x_self) ** 2)
    out_sum, out_loss = mod.predict(p, np=x_np, params=x_params, self=x_self)
    np.testing.assert_allclose(out_sum, sum_, rtol=1e-13)
    assert float(out_loss) == pytest.approx(loss, rel=1e-13)
    assert mod.loss(p, x_np, x_params, x_self) == pytest.approx(loss, rel=1e-13)
    losses = mod.Trainer(p, lr=0.01).fit(x_np, x_params, x_self, iterations=30)
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="input 'self'"):
        mod.loss(p, x_np, x_params, x_self[:, :1])


@pytest.mark.parametrize("spec_name, out_name", [
    ('evil"""\nimport os; os.system("touch PWNED")\n""".toml', "model.py"),
    ("plain.toml", 'out"""; __import__("os").system("touch PWNED"); """.py'),
    ("back\\slash \\N{x} \\u0041.toml", "model.py"),
])
def test_hostile_file_names_stay_inside_the_docstring(spec_name, out_name, canary):
    """The spec path and the command line go into the module's docstring: quotes, newlines, backslashes stay text."""
    shutil.copy(HOSTILE / "valid_soft_keywords.toml", canary / spec_name)
    result = subprocess.run([sys.executable, "-m", "graphc", "compile", spec_name, "-o", out_name],
                            cwd=canary, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    source = (canary / out_name).read_text(encoding="utf-8")
    docstring = compile(source, out_name, "exec").co_consts[0]
    assert isinstance(docstring, str) and "graphc compile" in docstring
    run = subprocess.run([sys.executable, out_name], cwd=canary, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("build, message", [
    (lambda g: g.input("x; import os", (2,)), NOT_IDENTIFIER),
    (lambda g: g.param("W", (2,), init="zeros); import os; ("), "unknown init"),
    (lambda g: g.param("W", (2,), init=float("nan")), "init must be finite"),
    (lambda g: g.param("W", (2,), scale=float("inf")), "scale must be finite"),
    (lambda g: g.const(10**400), "constant must be finite"),
    (lambda g: g.input("x", (2, 0)), "every dimension must be a positive integer"),
    (lambda g: g.input("x", "ab"), "is not a list of dimensions"),
    (lambda g: g.input("x", (2,), dtype="float64; import os"), "unsupported dtype"),
    (lambda g: gc.mse(g.input("x", (2,)), g.input("y", (2,)), reduction="sum); import os; ("), "is not one of"),
    (lambda g: g.apply("relu", g.input("x", (2,)), exec="1"), "relu has no attribute 'exec'"),
    (lambda g: g.apply("__import__", g.input("x", (2,))), "unknown op '__import__'"),
    (lambda g: g.apply("sum_to", g.input("x", (2,)), axis=(0,), shape=()), "unknown op 'sum_to'"),
])
def test_builder_applies_the_same_rules(build, message, canary):
    with pytest.raises(gc.GraphcError) as err:
        build(gc.Graph("m"))
    assert message in str(err.value)


def test_networkx_graphs_apply_the_same_rules(canary):
    import networkx as nx

    def graph(**changes):
        G = nx.DiGraph(name="m")
        G.add_node("x", op="input", shape=(2,))
        G.add_node("W", op="param", shape=(2,), init="randn")
        G.add_node("l", op="mse", attrs={"reduction": "sum"})
        G.add_edge("W", "l", arg=0)
        G.add_edge("x", "l", arg=1)
        for node, data in changes.items():
            G.nodes[node].update(data)
        return G

    gc.compile(graph(), "l")  # the unchanged graph compiles
    for changes, message in [
        ({"l": {"attrs": {"reduction": "sum(); import os"}}}, "is not one of"),
        ({"l": {"attrs": {"reduction": "sum", "code": "import os"}}}, "mse has no attribute 'code'"),
        ({"l": {"op": "__import__"}}, "unknown op '__import__'"),
        ({"W": {"init": "randn; import os"}}, "unknown init"),
        ({"x": {"shape": (2, -1)}}, "every dimension must be a positive integer"),
        ({"x": {"dtype": "object"}}, "unsupported dtype 'object'"),
    ]:
        with pytest.raises(gc.GraphcError) as err:
            gc.compile(graph(**changes), "l")
        assert message in str(err.value)
    G = nx.relabel_nodes(graph(), {"x": 'x"\nimport os'})
    with pytest.raises(gc.GraphcError, match="valid ASCII Python identifier"):
        gc.compile(G, "l")


# ---- special files, colliding outputs, names past the system's limit: one line, exit 2, nothing replaced ----

WITH_PARAMS_FILE = """
params_file = "w.npz"

[inputs]
X = [4, 3]
y = [4, 2]

[params]
W = { shape = [3, 2], init = "file" }

[nodes]
loss = "mse(X @ W, y)"

[train]
loss = "loss"
"""
FIFO_WRITE = "cannot write: it is a FIFO, not a regular file; graphc replaces only regular files"


def graphc_command(*args, cwd):
    """The real command in a subprocess, bounded: a read that blocked (on a FIFO) fails the test, never hangs it."""
    return subprocess.run([sys.executable, "-m", "graphc", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def with_params_file(folder):
    (folder / "m.toml").write_text(WITH_PARAMS_FILE)
    np.savez(folder / "w.npz", W=np.arange(6.0).reshape(3, 2))
    return (folder / "w.npz").read_bytes()


def one_error_line(status, err, expected):
    assert status == 2 and err == f"graphc: error: {expected}\n", err


@pytest.mark.parametrize("command, target", [
    (["compile", "m.toml", "-o", "out.py"], "out.py"),
    (["compile", "m.toml", "-o", "out.py"], "out.npz"),  # the params file written beside the module
    (["show", "m.toml", "-o", "out.txt"], "out.txt"),
    (["export", "m.toml", "-o", "out.onnx"], "out.onnx"),
])
def test_an_output_that_is_a_fifo_stays_a_fifo(command, target, canary, capsys):
    """Run as root, os.replace would turn a FIFO or a device (``-o /dev/null``) into a regular file."""
    with_params_file(canary)
    os.mkfifo(canary / target)
    status = cli.main(command)
    one_error_line(status, capsys.readouterr().err, f"{target}: {FIFO_WRITE}")
    assert stat.S_ISFIFO(os.lstat(canary / target).st_mode)
    assert sorted(p.name for p in canary.iterdir()) == sorted(["m.toml", "w.npz", target])  # nothing else written


def test_import_refuses_a_fifo_for_its_spec(canary, capsys):
    os.mkfifo(canary / "m.toml")
    status = cli.main(["import", str(Path(__file__).parent / "onnx" / "mlp.onnx"), "-o", "m.toml"])
    one_error_line(status, capsys.readouterr().err, f"m.toml: {FIFO_WRITE}")
    assert stat.S_ISFIFO(os.lstat(canary / "m.toml").st_mode)
    assert sorted(p.name for p in canary.iterdir()) == ["m.toml"]


@pytest.mark.parametrize("fifo, command, expected", [
    ("m.toml", ["compile", "m.toml"], "m.toml: cannot read the spec: it is a FIFO, not a regular file"),
    ("m.toml", ["check", "m.toml"], "m.toml: cannot read the spec: it is a FIFO, not a regular file"),
    ("w.npz", ["compile", "m.toml", "-o", "out.py"],
     "m.toml: cannot read the params_file 'w.npz': it is a FIFO, not a regular file"),
])
def test_a_fifo_is_not_read(fifo, command, expected, canary):
    """Reading a FIFO would block until someone writes to it: refused at once."""
    with_params_file(canary)
    (canary / fifo).unlink()
    os.mkfifo(canary / fifo)
    result = graphc_command(*command, cwd=canary)
    one_error_line(result.returncode, result.stderr, expected)
    assert not (canary / "out.py").exists()


def test_outputs_that_collide_with_the_params_file(canary, capsys):
    """``-o important.npz`` would write the module over the weights (it said "wrote important.npz and important.npz")."""
    weights = with_params_file(canary)
    status = cli.main(["compile", "m.toml", "-o", "w.npz"])
    one_error_line(status, capsys.readouterr().err,
                   "-o 'w.npz' is the spec's params_file: the module would replace it; give a name ending in .py")
    status = cli.main(["compile", "m.toml", "-o", "other.npz"])
    one_error_line(status, capsys.readouterr().err, "-o 'other.npz': the module and its params file would both be "
                                                    "that file; give a name ending in .py")
    assert (canary / "w.npz").read_bytes() == weights
    assert sorted(p.name for p in canary.iterdir()) == ["m.toml", "w.npz"]
    # -o m.py: the module's params file is m.npz; -o w.py: it is the spec's own w.npz, which holds the same arrays
    for out in ("m.py", "w.py"):
        assert cli.main(["compile", "m.toml", "-o", out]) == 0
    assert (canary / "w.npz").read_bytes() == weights
    np.testing.assert_array_equal(np.load(canary / "m.npz")["W"], np.arange(6.0).reshape(3, 2))


def test_a_params_file_through_a_symlink_out_of_the_folder(canary, capsys):
    """params_file stays inside the spec's folder, also when a link inside it points out."""
    (canary / "spec").mkdir()
    with_params_file(canary / "spec")
    (canary / "spec" / "w.npz").rename(canary / "outside.npz")
    (canary / "spec" / "w.npz").symlink_to(canary / "outside.npz")
    status = cli.main(["compile", "spec/m.toml", "-o", "spec/out.py"])
    one_error_line(status, capsys.readouterr().err, "spec/m.toml: params_file 'w.npz' is outside the spec's folder: "
                                                    "it names a file beside the spec (or below it)")


def test_a_params_file_that_claims_a_huge_array_is_refused_from_its_header(canary, capsys, monkeypatch):
    with_params_file(canary)
    npz_with_headers(canary / "w.npz", {"W": ((3, 2**30), "<f8"), "junk": ((2**40,), "<f8")})

    def no_data(*args, **kwargs):
        raise AssertionError("array data was read")

    monkeypatch.setattr(np.lib.format, "read_array", no_data)
    status = cli.main(["compile", "m.toml", "-o", "out.py"])
    one_error_line(status, capsys.readouterr().err, "m.toml: node 'W': params_file 'w.npz' has (3, 1073741824) "
                                                    "float64, but the param is (3, 2) float64")
    npz_with_headers(canary / "w.npz", {"junk": ((2**40,), "<f8")})  # an array that is not a param: never read
    status = cli.main(["compile", "m.toml", "-o", "out.py"])
    one_error_line(status, capsys.readouterr().err, "m.toml: node 'W': params_file 'w.npz' has no array 'W'")


def test_names_past_the_system_limit(canary, capsys):
    shutil.copy(HOSTILE / "valid_soft_keywords.toml", canary / "m.toml")
    long = "a" * 300 + ".py"
    status = cli.main(["compile", "m.toml", "-o", long])
    one_error_line(status, capsys.readouterr().err, f"{long}: cannot write: File name too long")
    shutil.copy(HOSTILE / "valid_long_graph_name.toml", canary / "long.toml")  # a 300-character graph name
    assert cli.main(["check", "long.toml"]) == 0
    assert "ok: all 1 gradients match" in capsys.readouterr().out


def test_check_refuses_default_sizes_beyond_memory_and_inference_only_specs(canary, capsys):
    shutil.copy(HOSTILE / "dims_default_huge.toml", canary / "huge.toml")
    status = cli.main(["check", "huge.toml"])
    one_error_line(status, capsys.readouterr().err, "huge.toml: " + CORPUS["dims_default_huge.toml"])
    (canary / "infer.toml").write_text('[inputs]\nX = [2, 3]\n[params]\nW = { shape = [3, 2] }\n'
                                       '[nodes]\ny = "X @ W"\n[train]\noutputs = ["y"]\n')
    status = cli.main(["check", "infer.toml"])
    one_error_line(status, capsys.readouterr().err,
                   "infer.toml: the spec has no [train] loss: there are no gradients to check")
