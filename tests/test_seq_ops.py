"""Section 15's elementwise and normalisation ops: values and gradients equal to PyTorch's (float64 to rounding,
float32 to float32 tolerance), gradients against central differences, Trainer.step equal to value_and_grad and
allocation-free. One table of cases through one helper."""

import math
import warnings

import numpy as np
import pytest
import torch

import graphc as gc
from gradcheck import check_gradients, random_params
from memcheck import peak_bytes
from test_attention import assert_spec_error
from test_memory import assert_trainer_matches_value_and_grad

pytestmark = pytest.mark.unformatted

F = torch.nn.functional  # torch: the 'test' extra

# op -> the same function in torch, given torch tensors and the op's attrs
TORCH = {
    "erf": lambda x: torch.erf(x),
    "sqrt": lambda x: torch.sqrt(x),
    "gelu": lambda x, approximate="none": F.gelu(x, approximate=approximate),
    "silu": lambda x: F.silu(x),
    "softplus": lambda x: F.softplus(x, beta=1.0, threshold=20.0),
    "pow": lambda x, exponent: torch.pow(x, exponent),
    "clip": lambda x, min=None, max=None: torch.clamp(x, min=min, max=max),
    "layer_norm": lambda x, w=None, b=None, eps=1e-5: F.layer_norm(x, x.shape[-1:], w, b, eps),
    "rms_norm": lambda x, w=None, eps=None: F.rms_norm(x, x.shape[-1:], w, eps),
    "concat": lambda *xs, axis=-1: torch.cat(xs, dim=axis),
    "slice": lambda x, axis=-1, start=0, stop=None, step=1: x[(slice(None),) * (axis % x.dim()) + (
        slice(start, stop, step),)],
    "max": lambda x, axis=None, keepdims=False: torch.amax(x, dim=() if axis is None else axis, keepdim=keepdims),
    "min": lambda x, axis=None, keepdims=False: torch.amin(x, dim=() if axis is None else axis, keepdim=keepdims),
}
POSITIVE = {"sqrt", ("pow", 1.5), ("pow", -0.5)}  # ops whose operand is kept positive

# (op, operand shapes, attrs, spread: the operand values' standard deviation)
CASES = [
    ("erf", [(3, 4)], {}, 1.0),
    ("erf", [(40,)], {}, 3.0),  # every range of the approximation, tails included
    ("erf", [()], {}, 1.0),
    ("sqrt", [(3, 4)], {}, 1.0),
    ("gelu", [(3, 4)], {}, 1.0),
    ("gelu", [(2, 3, 5)], {}, 4.0),
    ("gelu", [(3, 4)], {"approximate": "tanh"}, 1.0),
    ("gelu", [(30,)], {"approximate": "tanh"}, 4.0),
    ("silu", [(3, 4)], {}, 1.0),
    ("silu", [(30,)], {}, 10.0),
    ("softplus", [(3, 4)], {}, 1.0),
    ("softplus", [(40,)], {}, 15.0),  # both sides of the threshold 20
    ("pow", [(3, 4)], {"exponent": 2.0}, 1.0),
    ("pow", [(3, 4)], {"exponent": 3.0}, 1.0),
    ("pow", [(3, 4)], {"exponent": 1.5}, 1.0),
    ("pow", [(5,)], {"exponent": -0.5}, 1.0),
    ("clip", [(4, 5)], {"min": -0.5, "max": 0.7}, 1.0),
    ("clip", [(4, 5)], {"min": 0.0}, 1.0),
    ("clip", [(4, 5)], {"max": 0.2}, 1.0),
    ("clip", [(4, 5)], {"min": 0.0, "max": 6.0}, 4.0),  # ReLU6
    ("layer_norm", [(3, 4), (4,), (4,)], {}, 1.0),
    ("layer_norm", [(2, 3, 5)], {}, 3.0),
    ("layer_norm", [(3, 4), (4,)], {"eps": 1e-3}, 1.0),
    ("layer_norm", [(1, 6), (6,), (6,)], {"eps": 0.5}, 1.0),
    ("rms_norm", [(3, 4), (4,)], {}, 1.0),
    ("rms_norm", [(2, 3, 5)], {}, 2.0),
    ("rms_norm", [(3, 4), (4,)], {"eps": 1e-2}, 1.0),
    ("concat", [(3, 4), (3, 2)], {}, 1.0),
    ("concat", [(3, 4), (2, 4), (1, 4)], {"axis": 0}, 1.0),
    ("concat", [(2, 3, 4), (2, 1, 4)], {"axis": -2}, 1.0),
    ("concat", [(5,)], {}, 1.0),
    ("slice", [(3, 8)], {"start": 2, "stop": 6}, 1.0),
    ("slice", [(3, 8)], {"axis": 0, "start": 1}, 1.0),
    ("slice", [(2, 7, 3)], {"axis": 1, "start": 1, "step": 3}, 1.0),
    ("slice", [(9,)], {"start": -4, "stop": 100, "step": 2}, 1.0),
    ("max", [(3, 4)], {}, 1.0),
    ("max", [(3, 4)], {"axis": -1}, 1.0),
    ("max", [(2, 3, 4)], {"axis": (0, 2), "keepdims": True}, 1.0),
    ("max", [(2, 3, 4)], {"axis": 1}, 1.0),
    ("min", [(3, 4)], {"axis": 0}, 1.0),
    ("min", [(2, 3, 4)], {"axis": (-1, 0)}, 1.0),
    ("min", [(5,)], {"keepdims": True}, 1.0),
]


def case_id(case):
    op, shapes, attrs, spread = case
    return f"{op}-{'-'.join(str(s) for s in shapes)}{''.join(f'-{k}={v}' for k, v in attrs.items())}-{spread}"


def build(op, shapes, attrs, dtype="float64"):
    """op(p0, ...) over params, and a scalar loss: sum((out - target)**2), target an input."""
    g = gc.Graph("case", dtype=dtype)
    out = g.apply(op, *[g.param(f"p{i}", s) for i, s in enumerate(shapes)], name="out", **attrs)
    return g, out, gc.mse(out, g.input("target", out.shape), reduction="sum", name="loss")


def case_values(op, shapes, attrs, spread, mod, dtype):
    params = random_params(mod)
    for name, value in params.items():
        value *= spread
        if op in POSITIVE or (op, attrs.get("exponent")) in POSITIVE:
            value[...] = np.abs(value) + 0.3
        if op == "clip":  # away from the bounds: the gradient has a step there (tested on its own below)
            value[...] = np.where(np.abs(value - attrs.get("min", 1e9)) < 0.05, value + 0.1, value)
            value[...] = np.where(np.abs(value - attrs.get("max", 1e9)) < 0.05, value - 0.1, value)
    params = {k: v.astype(dtype) for k, v in params.items()}
    target = np.random.default_rng(2).standard_normal(mod._SHAPES["target"]).astype(dtype)
    return params, (target,)


def torch_value_and_grad(op, attrs, params, target):
    ps = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    out = TORCH[op](*ps.values(), **attrs)
    loss = torch.sum((out - torch.tensor(target)) ** 2)
    loss.backward()
    return out.detach().numpy(), loss.item(), {k: p.grad.numpy() for k, p in ps.items()}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_op_equals_torch(case):
    op, shapes, attrs, spread = case
    g, out, loss = build(op, shapes, attrs)
    mod = gc.compile(g, loss=loss, outputs=[out]).load()
    params, inputs = case_values(op, shapes, attrs, spread, mod, "float64")
    expected, value, grads = torch_value_and_grad(op, attrs, params, *inputs)
    # atol: gelu, as torch computes it, is x / 2 * (1 + erf(x / sqrt(2))): for x << 0 the sum cancels, and one
    # ulp of erf (near -1) is 1.1e-16 of absolute error in each
    np.testing.assert_allclose(mod.predict(params), expected, rtol=1e-14, atol=1e-15)
    got_value, got_grads = mod.value_and_grad(params, *inputs)
    assert got_value == pytest.approx(value, rel=1e-13)
    for k in params:  # normwise, as tests/gradcheck.py: the cancellations above scale with the largest element
        scale = max(1.0, float(np.max(np.abs(grads[k]))))
        np.testing.assert_allclose(got_grads[k], grads[k], rtol=1e-13, atol=1e-14 * scale, err_msg=k)
    check_gradients(mod, params, inputs)
    assert_trainer_matches_value_and_grad(mod, params, inputs, steps=2)  # the workspace forms agree


@pytest.mark.parametrize("case", CASES[::2], ids=case_id)
def test_op_equals_torch_float32(case):
    op, shapes, attrs, spread = case
    g, out, loss = build(op, shapes, attrs, dtype="float32")
    mod = gc.compile(g, loss=loss, outputs=[out]).load()
    params, inputs = case_values(op, shapes, attrs, spread, mod, "float32")
    expected, value, grads = torch_value_and_grad(op, attrs, params, *inputs)
    got = mod.predict(params)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6)
    got_value, got_grads = mod.value_and_grad(params, *inputs)
    assert got_value == pytest.approx(value, rel=1e-5)
    for k in params:
        assert got_grads[k].dtype == np.float32
        np.testing.assert_allclose(got_grads[k], grads[k], rtol=1e-5, atol=1e-5, err_msg=k)
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()}, lr=1e-3)
    assert trainer.step(*inputs) == pytest.approx(got_value, rel=1e-5)


# ---- erf to rounding, against the standard library, every range and the tails ------------------------------

@pytest.mark.parametrize("dtype, tiny", [("float64", -300), ("float32", -37)])
def test_erf_is_exact_to_two_ulps_everywhere(dtype, tiny):
    g = gc.Graph("erf", dtype=dtype)
    gc.erf(g.input("x", ("N",)), name="y")
    mod = gc.compile(g, outputs=["y"], dims={"N": 4}).load()
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(5000) * 3, rng.uniform(-7, 7, 5000), np.linspace(-30, 30, 6001),
        rng.standard_normal(70_000) * 2,  # with the rest, x is more than one of _erf's pieces in both dtypes
        10.0 ** rng.uniform(tiny, 1.5, 2000) * rng.choice([-1, 1], 2000),  # tiny to large, both signs
        np.arange(-1537, 1538) / 256,  # every point of the table, and half-way between two
        np.arange(-3073, 3074, 2) / 512,
        [0.0, -0.0, 0.46875, -0.46875, 3.92, 4.0, -4.0, 5.9, 6.0, 1e-310, 3e38, -3e38, np.inf, -np.inf],
    ]).astype(dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # exp(-x**2) underflows to 0: right
        got = mod.predict({}, x)
    assert got.dtype == dtype
    expected = np.array([math.erf(v) for v in x.astype(np.float64)]).astype(dtype)
    ulps = np.abs(got.astype(np.float64) - expected) / np.spacing(np.abs(expected))
    assert ulps.max() <= 2, (ulps.max(), x[ulps.argmax()])
    assert np.all(np.signbit(got) == np.signbit(expected))  # erf(-0.0) is -0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(mod.predict({}, np.array([np.nan, 0.5, -np.nan, 1.0], dtype))[[0, 2]]).all()


def test_float32_erf_is_exact_to_two_ulps_on_a_sweep_of_every_exponent():
    """float32's _erf takes two table rows and makes its other Taylor terms from t: every 499th float32 from +0 to
    4.5 (a million, all exponents, subnormals too), both signs, against math.erf."""
    g = gc.Graph("erf", dtype="float32")
    gc.erf(g.input("x", ("N",)), name="y")
    mod = gc.compile(g, outputs=["y"], dims={"N": 4}).load()
    bits = np.arange(0, np.float32(4.5).view(np.int32), 499, dtype=np.int32)
    x = np.concatenate([bits.view(np.float32), -bits.view(np.float32)])
    got = mod.predict({}, x)
    expected = np.frompyfunc(math.erf, 1, 1)(x.astype(np.float64)).astype(np.float32)
    ulps = np.abs(got.astype(np.float64) - expected) / np.spacing(np.abs(expected))
    assert ulps.max() <= 2, (ulps.max(), x[ulps.argmax()])
    np.testing.assert_array_equal(np.signbit(got), np.signbit(x))


# ---- clip's gradient at the bounds passes, as torch.clamp's ---------------------------------------------

def test_clip_gradient_at_the_bounds_is_torchs():
    g = gc.Graph("clip")
    x = g.param("x", (6,))
    loss = gc.sum(gc.clip(x, -1.0, 2.0) * g.input("w", (6,)), name="loss")
    mod = gc.compile(g, loss=loss).load()
    params = {"x": np.array([-3.0, -1.0, 0.5, 2.0, 2.5, -1.0 + 1e-17])}
    w = np.arange(1.0, 7.0)
    xt = torch.tensor(params["x"], requires_grad=True)
    torch.sum(torch.clamp(xt, -1.0, 2.0) * torch.tensor(w)).backward()
    _, grads = mod.value_and_grad(params, w)
    np.testing.assert_array_equal(grads["x"], xt.grad.numpy())
    np.testing.assert_array_equal(grads["x"], [0, 2, 3, 4, 0, 6])
    assert_trainer_matches_value_and_grad(mod, params, (w,))


# ---- max and min split the gradient evenly among equal extremes, as torch.amax and torch.amin ----------

@pytest.mark.parametrize("op, attrs", [("max", {"axis": 1}), ("min", {"axis": 0, "keepdims": True}), ("max", {}),
                                       ("min", {"axis": (0, 1)})])
def test_max_min_gradient_with_ties_is_torchs(op, attrs):
    g = gc.Graph("ties")
    x = g.param("x", (4, 5))
    out = g.apply(op, x, name="out", **attrs)
    w = g.input("w", out.shape)
    mod = gc.compile(g, loss=gc.sum(out * w, name="loss")).load()
    params = {"x": np.clip(np.round(np.random.default_rng(0).standard_normal((4, 5))), -1, 1)}  # many ties
    w = np.random.default_rng(1).standard_normal(out.shape)
    xt = torch.tensor(params["x"], requires_grad=True)
    torch.sum(TORCH[op](xt, **attrs) * torch.tensor(w)).backward()
    _, grads = mod.value_and_grad(params, w)
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-15, atol=0)
    assert np.count_nonzero(grads["x"]) > np.size(w)  # some extremes are shared: the split is tested
    assert_trainer_matches_value_and_grad(mod, params, (w,))


# ---- specs: x ** 2, pow(x, 2.0), clip(x, None, 6.0) ------------------------------------------------------

def test_spec_power_and_positional_attrs(tmp_path):
    spec = tmp_path / "m.toml"
    spec.write_text("""
[inputs]
X = [4, 3]
[params]
W = { shape = [3, 3], init = "randn" }
[nodes]
h = "X @ W"
a = "h ** 2 + pow(h, 3.0) + clip(h, None, 0.5) + clip(h, -0.25, 0.75) + gelu(h, approximate='tanh')"
loss = "sum(softplus(a) + silu(h) + sqrt(erf(h) + 2.0))"
[train]
loss = "loss"
""")
    s = gc.load_spec(spec)
    nodes = s.graph.nx.nodes
    assert nodes["a_pow"]["attrs"] == {"exponent": 2.0}  # the exponent is an attr, not a constant operand
    assert {nodes[v]["attrs"]["min"] for v in nodes if nodes[v]["op"] == "clip"} == {None, -0.25}
    mod = gc.compile(s.graph, loss=s.loss).load()
    params = random_params(mod)
    X = np.random.default_rng(1).standard_normal((4, 3))
    h = X @ params["W"]
    ht = torch.tensor(h)
    a = ht ** 2 + ht ** 3 + torch.clamp(ht, max=0.5) + torch.clamp(ht, -0.25, 0.75) + F.gelu(ht, approximate="tanh")
    expected = torch.sum(F.softplus(a) + F.silu(ht) + torch.sqrt(torch.erf(ht) + 2.0)).item()
    assert mod.loss(params, X) == pytest.approx(expected, rel=1e-13)
    check_gradients(mod, params, (X,))
    assert_trainer_matches_value_and_grad(mod, params, (X,))


@pytest.mark.parametrize("expr, message", [
    ("X ** W", "pow's exponent must be a number, not the tensor 'W'"),
    ("pow(X, W)", "pow's exponent must be a number, not the tensor 'W'"),
    ("clip(X)", "clip needs a min or a max (both are None)"),
    ("clip(X, 0.0, 1.0, 2.0)", "clip takes 1 operand and min, max, got 4 arguments"),
    ("layer_norm(X, W)", "layer_norm weight (4, 3) must have shape (3,), the last dimension of x (4, 3)"),
    ("rms_norm(X, W)", "rms_norm weight (4, 3) must have shape (3,), the last dimension of x (4, 3)"),
    ("layer_norm(X, eps=0.0)", "layer_norm attribute eps=0.0 must be a positive finite number"),
    ("concat(X, transpose(W), axis=0)", "shapes (4, 3) and (3, 4) differ in another dimension"),
    ("slice(X, step=0)", "slice step must not be 0"),
    ("slice(X, start=5)", "is empty"),
    ("gelu(X, approximate='erf')", "gelu attribute approximate='erf' is not one of 'none', 'tanh'"),
])
def test_bad_input_is_one_line_naming_the_node(tmp_path, expr, message):
    assert_spec_error(tmp_path, f'[inputs]\nX = [4, 3]\n[params]\nW = {{ shape = [4, 3] }}\n[nodes]\nbad = "{expr}"\n'
                      '[train]\nloss = "bad"\n', message)


def test_tensor_pow_operator():
    g = gc.Graph()
    x = g.param("x", (3,))
    assert g.nx.nodes[(x ** 2).name]["attrs"] == {"exponent": 2.0}
    with pytest.raises(gc.GraphError, match="pow's exponent must be a number, not the tensor 'x'"):
        2.0 ** x


def test_cupy_compile_of_an_erf_op_is_one_line_naming_it():
    g = gc.Graph("g")
    x = g.param("x", (3,))
    loss = gc.sum(gc.gelu(x, name="act"), name="loss")
    with pytest.raises(gc.GraphError, match=r"gelu has no cupy template yet: compile this graph for the numpy backend") as err:
        gc.compile(g, loss=loss, backend="cupy")
    assert err.value.node == "act"


# ---- Trainer.step allocates no arrays with every op of this file ----------------------------------------

def test_step_allocates_no_arrays_with_every_seq_op():
    N, D = 20000, 4  # the smallest array of the step is (N,) float64: 160 kB
    g = gc.Graph("seq")
    X = g.input("X", (N, D))
    W = g.param("W", (D, D), scale=0.5)
    h = X @ W
    a = gc.gelu(h, name="a") + gc.gelu(h, approximate="tanh", name="at") + gc.silu(h, name="s")
    a = gc.layer_norm(a, g.param("w", (D,)), g.param("b", (D,)), name="ln") + gc.rms_norm(a, g.param("rw", (D,)))
    b = gc.softplus(a * 12.0, name="sp") + gc.clip(h, -0.5, 0.5, name="c") + gc.clip(h, min=0.0) + h ** 2
    c = gc.sqrt(gc.pow(h, 2.0) + 1.0, name="r") * gc.erf(h, name="e") + gc.pow(b + 1.0, 1.5)
    c = c + gc.transpose(gc.erf(gc.transpose(h * 0.5, axes=(1, 0)), name="et"), axes=(1, 0))  # erf of a view
    h = gc.concat(gc.slice(h, start=1), gc.slice(h, stop=1), axis=1, name="rolled")
    c = c + gc.max(h, axis=1, keepdims=True) - gc.min(h, axis=-1, keepdims=True) + gc.max(h, axis=0)
    loss = gc.add(gc.mean(c), gc.min(h), name="loss")
    assert {"gelu", "silu", "softplus", "clip", "pow", "sqrt", "erf", "max", "min", "layer_norm", "rms_norm", "concat",
            "slice"} <= {
        op for _, op in g.nx.nodes(data="op")}
    mod = gc.compile(g, loss=loss).load()
    X = np.random.default_rng(0).standard_normal((N, D))
    trainer = mod.Trainer(mod.init_params())
    trainer.step(X)  # the first step allocates the workspace
    peak = peak_bytes(lambda: trainer.step(X))
    assert peak < 100_000 < N * 8, peak
    assert_trainer_matches_value_and_grad(mod, mod.init_params(), (X,), steps=2)


def test_step_takes_each_norms_statistics_from_its_forward():
    """layer_norm's and rms_norm's backward read x_hat and 1 / sqrt(var + eps) as the forward computed them
    (Op.keeps): Trainer.step takes one square root per norm (not three), and agrees with value_and_grad, with a
    weight and bias, a weight alone, or neither (then x_hat is the norm's value)."""
    g = gc.Graph("norms")
    h = g.input("X", ("N", 6)) @ g.param("W", (6, 6), scale=0.5)
    h = gc.layer_norm(h, g.param("w", (6,)), g.param("b", (6,))) * 2.0 + h
    h = gc.rms_norm(h, g.param("rw", (6,)), name="r") + gc.layer_norm(h, eps=1e-3, name="bare")
    loss = gc.mean(gc.layer_norm(h * h, g.param("v", (6,)), name="last") * h, name="loss")
    compiled = gc.compile(g, loss=loss)
    step = compiled.source.split("    def _step(", 1)[1].split("\n    def ", 1)[0]
    assert step.count("np.sqrt(") == 4, step
    mod = compiled.load()
    X = np.random.default_rng(0).standard_normal((5, 6))
    params = {k: v + np.random.default_rng(1).standard_normal(v.shape) * 0.1 for k, v in mod.init_params().items()}
    check_gradients(mod, params, (X,))
    assert_trainer_matches_value_and_grad(mod, params, (X,), steps=2)


def test_cupy_module_of_the_other_ops_agrees_with_numpys(monkeypatch):
    """Every op of this file but the erf family compiles for CuPy; on the test double its steps agree."""
    import fake_cupy

    g = gc.Graph("seq_cupy")
    X = g.input("X", ("N", 4))
    h = X @ g.param("W", (4, 4), scale=0.5)
    a = gc.layer_norm(gc.silu(h), g.param("w", (4,)), g.param("b", (4,))) + gc.rms_norm(gc.softplus(h * 12.0))
    a = gc.concat(gc.slice(a, start=1), gc.slice(a, stop=1), axis=-1) + gc.clip(h, -0.5, 0.5) + h ** 2
    loss = gc.add(gc.mean(gc.sqrt(a * a + 1.0)), gc.mean(gc.max(a, axis=1)) - gc.mean(gc.min(a, axis=0)), name="loss")
    cp = fake_cupy.install(monkeypatch)
    host = gc.compile(g, loss=loss).load()
    device = gc.compile(g, loss=loss, backend="cupy").load()
    trainer, reference = device.Trainer(device.init_params()), host.Trainer(host.init_params())
    for step in range(3):
        X = np.random.default_rng(step).standard_normal((6, 4))
        assert trainer.step(cp.asarray(X)) == pytest.approx(reference.step(X), rel=1e-12)
    for name in host.PARAMS:
        np.testing.assert_allclose(cp.asnumpy(trainer.params[name]), reference.params[name], rtol=1e-12)


def test_a_nan_reaches_its_softmax_row_in_step_as_in_value_and_grad():
    """Trainer.step shifts each softmax row by a NaN-blind max (np.fmax.reduce, the faster reduce); the NaN of a
    row still reaches the whole row through the row's sum, as np.max's shift does in value_and_grad: softmax,
    log_softmax, cross_entropy and causal attention, each read out through a param of its own. (With attention's
    -inf mask the step also warns "invalid value", inf - inf: hence the errstate.)"""
    g = gc.Graph("nan_rows")
    x = g.input("x", (4, 5))
    w = {name: g.param(name, (4, 5)) for name in ("w_soft", "w_log", "w_ce", "w_att", "v")}
    loss = gc.sum(gc.softmax(x) * w["w_soft"]) + gc.sum(gc.log_softmax(x) * w["w_log"])
    loss = loss + gc.cross_entropy(x * w["w_ce"], g.input("t", (4,), dtype="int64"))
    loss = gc.sum(gc.attention(x, x, w["v"], causal=True) * w["w_att"], name="loss") + loss
    mod = gc.compile(g, loss=loss).load()
    params = random_params(mod)
    X = np.random.default_rng(1).standard_normal((4, 5))
    X[1, 2] = np.nan
    inputs = (X, np.array([0, 1, 2, 3]))
    with np.errstate(invalid="ignore"):
        _, grads = mod.value_and_grad(params, *inputs)
        trainer = mod.Trainer({k: v.copy() for k, v in params.items()})
        trainer.step(*inputs)
    for name in w:
        np.testing.assert_array_equal(np.isnan(trainer.params[name]), np.isnan(grads[name]), err_msg=name)
    for name in ("w_soft", "w_log", "w_ce"):  # the row of the NaN, and no other
        np.testing.assert_array_equal(np.isnan(grads[name]).all(axis=1), [False, True, False, False])
    np.testing.assert_array_equal(np.isnan(grads["w_att"]).all(axis=1), [False, True, True, True])  # key 1 seen


@pytest.mark.parametrize("op", ["softplus", "erf", "gelu"])
def test_an_elementwise_op_of_a_scalar_in_the_step(op):
    """An op with workspace temporaries (Op.scratches) on a scalar, such as softplus of a constant: Trainer.step
    writes it in its pure form (a scalar has no buffer to be written into) and equals value_and_grad."""
    g = gc.Graph("scalar_op")
    w = g.param("w", (3,))
    loss = gc.sum(w * w * g.apply(op, g.const(-0.75)), name="loss")
    mod = gc.compile(g, loss=loss).load()
    params = random_params(mod, seed=0)
    assert_trainer_matches_value_and_grad(mod, params, ())
    check_gradients(mod, params, ())
