"""Layer 1: every op's shape rule, forward value and gradient, driven by one table of cases."""


import numpy as np
import pytest

import graphc as gc
from graphc import ops
from graphc.autodiff import adjoint
from graphc.codegen import environment
from gradcheck import check_gradients, random_inputs, random_params
from memcheck import peak_bytes
from test_memory import assert_trainer_matches_value_and_grad

pytestmark = pytest.mark.unformatted

def log_softmax_ref(x, axis=-1):  # torch.nn.functional.log_softmax: x - log(sum(exp(x)))
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def cross_entropy_ref(x, t, reduction="mean"):
    """torch.nn.functional.cross_entropy: -log_softmax at the target class (indices) or -sum(t * log_softmax)
    (probabilities); 'mean' divides by the batch size N in both cases."""
    logp = log_softmax_ref(x, axis=1)
    rows = -logp[np.arange(len(x)), t] if t.ndim == 1 else -np.sum(t * logp, axis=1)
    return getattr(np, reduction)(rows)


def bce_ref(x, t, reduction="mean"):  # the textbook form: -(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x)))
    p = 1 / (1 + np.exp(-x))
    return getattr(np, reduction)(-(t * np.log(p) + (1 - t) * np.log(1 - p)))


REFERENCE = {
    "matmul": lambda a, b: a @ b,
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "neg": lambda x: -x,
    "relu": lambda x: np.maximum(x, 0),
    "exp": np.exp,
    "log": np.log,
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "leaky_relu": lambda x, negative_slope=0.01: np.where(x >= 0, x, negative_slope * x),
    "softmax": lambda x, axis=-1: np.exp(log_softmax_ref(x, axis)),
    "log_softmax": log_softmax_ref,
    "sum": np.sum,
    "mean": np.mean,
    "transpose": np.transpose,
    "mse": lambda p, t, reduction="mean": getattr(np, reduction)((p - t) ** 2),
    "cross_entropy": cross_entropy_ref,
    "binary_cross_entropy_with_logits": bce_ref,
}
INDICES = "indices"  # an operand that is an int64 input of class indices (N,), for logits (N, C) before it

# (op, operand shapes, attrs): scalars, vectors, matrices and broadcasting in both directions.
CASES = [
    ("matmul", [(3, 4), (4, 2)], {}),
    ("matmul", [(1, 5), (5, 1)], {}),
    ("add", [(), ()], {}),
    ("add", [(3,), (3,)], {}),
    ("add", [(3, 4), (4,)], {}),
    ("add", [(4,), (3, 4)], {}),
    ("add", [(3, 1), (1, 4)], {}),
    ("add", [(2, 3, 4), ()], {}),
    ("sub", [(3, 4), (3, 4)], {}),
    ("sub", [(), (3, 4)], {}),
    ("sub", [(3, 4), (3, 1)], {}),
    ("mul", [(), ()], {}),
    ("mul", [(3, 4), (3, 4)], {}),
    ("mul", [(3, 4), ()], {}),
    ("mul", [(1, 4), (3, 1)], {}),
    ("mul", [(2, 1, 4), (3, 1)], {}),
    ("relu", [(5,)], {}),
    ("relu", [(3, 4)], {}),
    ("relu", [()], {}),
    ("mse", [(3, 4), (3, 4)], {}),
    ("mse", [(3, 4), (3, 4)], {"reduction": "sum"}),
    ("mse", [(), ()], {"reduction": "mean"}),
    ("div", [(3, 4), (3, 4)], {}),
    ("div", [(3, 4), (4,)], {}),
    ("div", [(), (3, 1)], {}),
    ("div", [(2, 1, 4), ()], {}),
    ("neg", [(3, 4)], {}),
    ("neg", [()], {}),
    ("exp", [(3, 4)], {}),
    ("exp", [()], {}),
    ("log", [(3, 4)], {}),
    ("tanh", [(3, 4)], {}),
    ("tanh", [()], {}),
    ("sigmoid", [(3, 4)], {}),
    ("sigmoid", [(5,)], {}),
    ("leaky_relu", [(3, 4)], {}),
    ("leaky_relu", [(3, 4)], {"negative_slope": 0.2}),
    ("leaky_relu", [(6,)], {"negative_slope": 3.0}),  # a slope above 1
    ("leaky_relu", [(6,)], {"negative_slope": -0.5}),
    ("softmax", [(3, 4)], {}),
    ("softmax", [(3, 4)], {"axis": 0}),
    ("softmax", [(2, 3, 4)], {"axis": -2}),
    ("softmax", [(5,)], {}),
    ("log_softmax", [(3, 4)], {}),
    ("log_softmax", [(3, 4)], {"axis": 0}),
    ("log_softmax", [(2, 3, 4)], {"axis": 1}),
    ("sum", [(3, 4)], {}),
    ("sum", [(3, 4)], {"axis": 0}),
    ("sum", [(3, 4)], {"axis": -1}),
    ("sum", [(2, 3, 4)], {"axis": (0, 2)}),
    ("sum", [(2, 3, 4)], {"axis": (-1, 0), "keepdims": True}),
    ("sum", [(3, 4)], {"axis": None, "keepdims": True}),
    ("sum", [()], {}),
    ("mean", [(3, 4)], {}),
    ("mean", [(3, 4)], {"axis": 1}),
    ("mean", [(2, 3, 4)], {"axis": (0, -1)}),
    ("mean", [(2, 3, 4)], {"axis": -2, "keepdims": True}),
    ("transpose", [(3, 4)], {}),
    ("transpose", [(1, 5)], {}),
    ("cross_entropy", [(5, 4), INDICES], {}),
    ("cross_entropy", [(5, 4), INDICES], {"reduction": "sum"}),
    ("cross_entropy", [(1, 3), INDICES], {}),
    ("cross_entropy", [(5, 4), (5, 4)], {}),  # probabilities: a gradient for the target too
    ("cross_entropy", [(5, 4), (5, 4)], {"reduction": "sum"}),
    ("binary_cross_entropy_with_logits", [(5, 3), (5, 3)], {}),
    ("binary_cross_entropy_with_logits", [(6,), (6,)], {"reduction": "sum"}),
    ("binary_cross_entropy_with_logits", [(), ()], {}),
]


def case_id(case):
    op, shapes, attrs = case
    return f"{op}-{'-'.join(str(s) for s in shapes)}{''.join(f'-{k}={v}' for k, v in attrs.items())}"


def build(op, shapes, attrs):
    """op(a, b, ...) over params (class indices: an int64 input); a scalar loss through mse against a random
    target when op is not a loss."""
    g = gc.Graph("case")
    args = [g.input(f"p{i}", shapes[0][:1], dtype="int64") if shape == INDICES else g.param(f"p{i}", shape)
            for i, shape in enumerate(shapes)]
    out = g.apply(op, *args, name="out", **attrs)
    if out.shape == ():
        return g, out, out
    target = g.input("target", out.shape)
    return g, out, gc.mse(out, target, reduction="sum", name="loss")


def case_values(op, shapes, params):
    """The operands' values: the params (positive for log, probabilities for a cross_entropy target) and, for
    class indices, valid indices drawn at random."""
    rng = np.random.default_rng(3)
    values = {}
    for i, shape in enumerate(shapes):
        name = f"p{i}"
        if shape == INDICES:
            values[name] = rng.integers(0, shapes[0][1], size=shapes[0][0])
            continue
        if op == "log" or op in ("cross_entropy", "binary_cross_entropy_with_logits") and i == 1:
            params[name][...] = np.abs(params[name]) + 0.5  # log of a positive number; target weights
        if op == "cross_entropy" and i == 1:
            params[name] /= params[name].sum(axis=1, keepdims=True)  # probabilities, rows summing to 1
        if op == "binary_cross_entropy_with_logits" and i == 1:
            params[name][...] = params[name] / (1 + params[name])  # probabilities in (0, 1)
        values[name] = params[name]
    return values


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_op(case):
    op, shapes, attrs = case
    g, out, loss = build(op, shapes, attrs)
    mod = gc.compile(g, loss=loss, outputs=[out]).load()
    params = random_params(mod, away_from_zero=(op in ("relu", "leaky_relu")))
    values = case_values(op, shapes, params)
    indices = tuple(values[x] for x in mod.INPUTS if x != "target")
    inputs = indices + tuple(np.random.default_rng(2).standard_normal(out.shape) for x in mod.INPUTS if x == "target")

    expected = REFERENCE[op](*values.values(), **attrs)
    assert out.shape == np.shape(expected)  # the shape rule agrees with NumPy
    np.testing.assert_allclose(mod.predict(params, *indices), expected, rtol=1e-12, atol=1e-15)
    check_gradients(mod, params, inputs)
    assert_trainer_matches_value_and_grad(mod, params, inputs, steps=2)  # the workspace forms agree


@pytest.mark.parametrize(
    "op, shapes, message",
    [
        ("matmul", [(32, 100), (50, 10)], "shapes (32, 100) and (50, 10) do not align (100 != 50)"),
        ("matmul", [(), (3, 2)], "matmul needs operands of at least 1 dimension, got () and (3, 2)"),
        ("add", [(3, 4), (5,)], "shapes (3, 4) and (5,) do not broadcast"),
        ("mul", [(2, 3), (3, 2)], "shapes (2, 3) and (3, 2) do not broadcast"),
        ("mse", [(3, 4), (4, 3)], "prediction (3, 4) and target (4, 3) differ"),
    ],
)
def test_shape_errors_name_node_and_shapes(op, shapes, message):
    g = gc.Graph()
    args = [g.input(f"x{i}", s) for i, s in enumerate(shapes)]
    with pytest.raises(gc.ShapeError) as err:
        g.apply(op, *args, name="bad")
    assert err.value.node == "bad"
    assert message in str(err.value)
    assert "bad" not in g  # a failed node leaves nothing behind


def test_mse_mean_is_the_default():
    g = gc.Graph()
    p, t = g.param("p", (4,)), g.input("t", (4,))
    assert g.nx.nodes[gc.mse(p, t).name]["attrs"] == {"reduction": "mean"}


# ---- named dimensions in shape rules ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "shapes, expected",
    [
        ([("N", 4), ("N", 4)], ("N", 4)),  # a name equals itself
        ([("N", 4), (4,)], ("N", 4)),
        ([("N", 1), (1, 3)], ("N", 3)),  # a name against 1 gives the name
        ([(1, 3), ("N", 1)], ("N", 3)),
        ([(), ("N", "M")], ("N", "M")),
    ],
)
def test_broadcast_with_named_dims(shapes, expected):
    assert ops.broadcast_shape(shapes, {}) == expected


@pytest.mark.parametrize(
    "shapes, message",
    [
        ([("N", 4), (32, 4)], "shapes (N, 4) and (32, 4) do not broadcast (dimension 'N' and 32 cannot be proven equal)"),
        ([(8,), ("N",)], "shapes (8,) and (N,) do not broadcast (dimension 8 and 'N' cannot be proven equal)"),
        ([("N",), ("M",)], "shapes (N,) and (M,) do not broadcast (dimension 'N' and 'M' cannot be proven equal)"),
    ],
)
def test_broadcast_name_against_another_dim_is_an_error(shapes, message):
    with pytest.raises(gc.ShapeError) as err:
        ops.broadcast_shape(shapes, {})
    assert str(err.value) == message


def test_matmul_inner_dims_must_be_the_same_int_or_name():
    assert ops.matmul_shape([("N", "K"), ("K", 3)], {}) == ("N", 3)
    assert ops.matmul_shape([("N", 5), (5, "M")], {}) == ("N", "M")
    with pytest.raises(gc.ShapeError, match=r"shapes \(N, K\) and \(5, 3\) do not align "
                                            r"\(dimension 'K' and 5 cannot be proven equal\)"):
        ops.matmul_shape([("N", "K"), (5, 3)], {})
    with pytest.raises(gc.ShapeError, match=r"\(dimension 'N' and 'M' cannot be proven equal\)"):
        ops.matmul_shape([(3, "N"), ("M", 3)], {})


def test_fmt_prints_names_bare():
    assert ops.fmt(("N", 64)) == "(N, 64)"
    assert ops.fmt(("N",)) == "(N,)"
    assert ops.fmt(()) == "()"


def test_unbroadcast_and_size_with_named_dims():
    g = gc.Graph()
    x = g.input("x", ("N", 3))
    b = g.param("b", (3,))
    gc.mse(x + b, g.input("t", ("N", 3)), name="loss")
    A = adjoint(g.nx, "loss")
    db = A.graph["grads"]["b"]
    assert A.nodes[db]["op"] == "sum_to" and A.nodes[db]["attrs"]["axis"] == (0,)  # known at compile time
    sizes = [v for v in A if A.nodes[v]["op"] == "size"]
    assert [A.nodes[v]["attrs"]["dims"] for v in sizes] == [("N", 3)]  # mse's mean divides by N * 3


def test_size_macro_renders_names_bare_and_folds_ints():
    macros = environment().get_template("ops.j2").make_module({"np": "np", "backend": "numpy"})
    assert str(macros.size(("N",))) == "N"
    assert str(macros.size(("N", 10))) == "(N * 10)"
    assert str(macros.size((2, "N", "M", 5))) == "(N * M * 10)"


# ---- hostile magnitudes: logits of +-1000 give finite values and gradients, without a floating-point warning --

def stable_graph(op):
    g = gc.Graph("stable")
    x = g.input("x", (4, 3))
    w = g.param("w", (3,), init="ones")  # x * w: a param on the way, so there is a gradient to compute
    logits = gc.mul(x, w, name="logits")
    if op == "cross_entropy":
        return g, gc.cross_entropy(logits, g.input("t", (4,), dtype="int64"), name="loss")
    if op == "cross_entropy_probabilities":
        return g, gc.cross_entropy(logits, g.input("t", (4, 3)), name="loss")
    if op == "binary_cross_entropy_with_logits":
        return g, gc.binary_cross_entropy_with_logits(logits, g.input("t", (4, 3)), name="loss")
    return g, gc.sum(g.apply(op, logits, name="out"), name="loss")


@pytest.mark.parametrize("op", ["sigmoid", "softmax", "log_softmax", "cross_entropy", "cross_entropy_probabilities",
                                "binary_cross_entropy_with_logits"])
def test_large_logits_are_finite_and_warning_free(op):
    g, loss = stable_graph(op)
    mod = gc.compile(g, loss=loss).load()
    x = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -1000.0], [1000.0, 1000.0, -1000.0], [3.0, -2.0, 1.0]])
    if op == "cross_entropy":
        t = (np.array([1, 0, 2, 0]),)  # the target's logit is -1000 where the max is 1000: a loss of 2000
    elif op == "binary_cross_entropy_with_logits":
        t = (np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),)
    else:
        t = () if op in ("sigmoid", "softmax", "log_softmax") else (np.full((4, 3), 1 / 3),)
    params = mod.init_params()
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is the right answer
        value, grads = mod.value_and_grad(params, x, *t)
        trainer = mod.Trainer({k: v.copy() for k, v in params.items()}, lr=1e-6)
        stepped = trainer.step(x, *t)
    assert np.isfinite(value) and np.all(np.isfinite(grads["w"]))
    assert stepped == pytest.approx(value, rel=1e-12)
    assert np.all(np.isfinite(trainer.params["w"]))
    if op == "cross_entropy":  # rows: 2000, 0 + log 3, 1000 + log 1 ... exact values at the extremes
        assert value == pytest.approx(cross_entropy_ref(x, t[0]), rel=1e-12)
    if op == "binary_cross_entropy_with_logits":
        logits = x
        expected = np.mean(np.maximum(logits, 0) - logits * t[0] + np.log1p(np.exp(-np.abs(logits))))
        assert value == pytest.approx(expected, rel=1e-12)
    if op == "sigmoid":  # sigmoid(-1000) is 0, sigmoid(1000) is 1: the sum is the count of the large ones
        assert value == pytest.approx(np.sum(1 / (1 + np.exp(-np.clip(x, -700, 700)))), rel=1e-12)


# ---- Trainer.step allocates no arrays, for graphs using every new op ------------------------------------

def every_op_graphs(N=20000, D=16, C=4):
    """Two graphs that use every op of section 10 between them, with class indices and probabilities."""
    g = gc.Graph("classifier")
    X, y = g.input("X", (N, D)), g.input("y", (N,), dtype="int64")
    W1, b1 = g.param("W1", (D, 24), scale=0.1), g.param("b1", (24,), init="zeros")
    W2 = g.param("W2", (C, 24), scale=0.1)
    h = gc.leaky_relu(X @ W1 + b1, negative_slope=0.1, name="h")
    h2 = gc.tanh(h, name="h2") * gc.sigmoid(h, name="gate") - gc.exp(-gc.mean(h * h, axis=1, keepdims=True)) / 2.0
    logits = gc.matmul(h2, gc.transpose(W2), name="logits")
    ce = gc.cross_entropy(logits, y, name="ce")
    soft = gc.softmax(logits, axis=-1, name="soft")
    logp = gc.log_softmax(logits, axis=1, name="logp")
    reg = gc.sum(gc.log(soft + 1.0) * logp, axis=(0, 1), name="reg") / float(N * C)
    loss1 = gc.add(ce, reg, name="loss")

    g2 = gc.Graph("multilabel")
    X2, T2, P2 = g2.input("X", (N, D)), g2.input("T", (N, C)), g2.input("P", (N, C))
    W = g2.param("W", (D, C), scale=0.1)
    z = X2 @ W
    loss2 = gc.add(gc.binary_cross_entropy_with_logits(z, T2, reduction="sum", name="bce"),
                   gc.cross_entropy(z, P2, name="ce") + gc.sum(gc.mean(z, axis=0)), name="loss")
    g3 = gc.Graph("cnn")  # the window ops of section 14, each with the padding that needs a scratch buffer
    X3, y3 = g3.input("X", (N, 2, 6, 6)), g3.input("y", (N,), dtype="int64")
    c1 = gc.conv2d(X3, g3.param("k1", (4, 2, 3, 3), scale=0.3), g3.param("c1", (4,), init="zeros"), padding=1)
    p1 = gc.max_pool2d(gc.relu(c1), 3, stride=2, padding=1)  # (N, 4, 3, 3)
    c2 = gc.conv2d(p1, g3.param("k2", (4, 2, 2, 2), scale=0.3), groups=2)  # (N, 4, 2, 2)
    a = gc.adaptive_avg_pool2d(gc.avg_pool2d(c2, 2, stride=1, padding=1, count_include_pad=False), 1)
    r3 = gc.reshape(gc.flatten(a), (-1, 2, 2))  # (N, 4) as (N, 2, 2)
    c3 = gc.conv1d(r3, g3.param("k3", (3, 2, 2), scale=0.3), g3.param("c3", (3,)), padding=1)  # (N, 3, 3)
    t3 = gc.conv_transpose2d(gc.reshape(c3, (N, 1, 3, 3)), g3.param("k4", (1, 1, 2, 2), scale=0.3), stride=2,
                             padding=1, output_padding=1)  # (N, 1, 5, 5)
    loss3 = gc.cross_entropy(gc.reshape(t3, (N, 25)) @ g3.param("W", (25, C), scale=0.3), y3, name="loss")
    g4 = gc.Graph("attention")  # section 15's: token ids, a masked input, causal self-attention, (N, C, T) logits
    ids, keep, y4 = g4.input("ids", (N, 2), dtype="int64"), g4.input("keep", (N, 2, 4), dtype="bool"), \
        g4.input("y", (N, 2), dtype="int64")
    x4 = gc.where(keep, gc.embedding(ids, g4.param("E", (C, 4))), 0.0)  # (N, T, 4)
    q, k, v = (gc.transpose(gc.reshape(x4 @ g4.param(w, (4, 4), scale=0.3), (N, 2, 2, 2)), axes=(0, 2, 1, 3))
               for w in ("Wq", "Wk", "Wv"))  # (N, heads, T, 2)
    heads = gc.sum(gc.attention(q, k, v, causal=True), axis=1)  # (N, T, 2)
    logits4 = gc.transpose(heads @ g4.param("Wo", (2, C), scale=0.3), axes=(0, 2, 1))  # (N, C, T)
    loss4 = gc.cross_entropy(logits4, y4, name="loss")
    g5 = gc.Graph("modes")  # section 14's modes: dropout and batch_norm (2-D and 4-D), in training mode
    X5, y5 = g5.input("X", (N, 2, 2, 2)), g5.input("y", (N,), dtype="int64")

    def bn(g, x, c, name):
        stats = (g.param(f"{name}_mean", (c,), init="zeros", trainable=False),
                 g.param(f"{name}_var", (c,), init="ones", trainable=False))
        return gc.batch_norm(x, g.param(f"{name}_w", (c,), init="ones"), g.param(f"{name}_b", (c,), init="zeros"),
                             *stats, name=name)

    h5 = gc.dropout(gc.flatten(bn(g5, X5, 2, "bn1")), 0.25, name="drop")  # (N, 8)
    z5 = bn(g5, h5 @ g5.param("W", (8, C), scale=0.3), C, "bn2")
    return (g, loss1), (g2, loss2), (g3, loss3), (g4, loss4), (g5, gc.cross_entropy(z5, y5, name="loss"))


def test_step_allocates_no_arrays_with_every_new_op():
    # Many rows and few classes: the smallest array of the step, a row vector (N,), is 160 kB, more than NumPy's
    # own iteration buffer for a broadcast or a cast (at most 8192 elements, 64 KiB), which is no array of the
    # step and does not grow with it (see tests/test_memory.py).
    N = 20000
    rng = np.random.default_rng(0)
    for g, loss in every_op_graphs():
        mod = gc.compile(g, loss=loss).load()
        ops_used = {op for _, op in g.nx.nodes(data="op")}
        inputs = []
        for name in mod.INPUTS:
            data = g.nx.nodes[name]
            if data["dtype"] == "int64":
                inputs.append(rng.integers(0, 4, size=data["shape"]))
            elif data["dtype"] == "bool":
                inputs.append(rng.random(data["shape"]) < 0.5)
            else:
                inputs.append(rng.random(data["shape"]))
        trainer = mod.Trainer(mod.init_params())
        trainer.step(*inputs)  # the first step on a size allocates its workspace
        # NumPy's iteration buffers (a strided view added into another, in the window ops' backward, buffers all
        # three operands) are bounded by bufsize, not by the step: a small one keeps them apart from its arrays
        peak = peak_bytes(lambda: trainer.step(*inputs), bufsize=1024)
        assert peak < 100_000 < N * 8, (g.nx.graph["name"], sorted(ops_used), peak)
        assert_trainer_matches_value_and_grad(mod, mod.init_params(), tuple(inputs), steps=2)


def test_every_new_op_is_covered_by_the_allocation_test():
    new = {"div", "neg", "exp", "log", "tanh", "sigmoid", "leaky_relu", "softmax", "log_softmax", "sum", "mean",
           "transpose", "cross_entropy", "binary_cross_entropy_with_logits",
           "conv2d", "conv1d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "flatten",
           "reshape", "matmul", "embedding", "where", "attention", "dropout", "batch_norm"}
    used = set()
    for g, _ in every_op_graphs():
        used |= {op for _, op in g.nx.nodes(data="op")}
    assert new <= used, new - used


# ---- named dimensions end to end: one module, any batch size ---------------------------------------------

def named_dim_graph():
    """Every reduction over the named batch dimension N: mse's and cross_entropy's means, mean(axis=0), the
    bias gradient summed over N, and bce's mean over N * C."""
    g = gc.Graph("named")
    X, y, T = g.input("X", ("N", 4)), g.input("y", ("N",), dtype="int64"), g.input("T", ("N", 3))
    W, b = g.param("W", (4, 3)), g.param("b", (3,))
    logits = gc.add(X @ W, b, name="logits")
    loss = (gc.cross_entropy(logits, y) + gc.mse(gc.sigmoid(logits), T)
            + gc.binary_cross_entropy_with_logits(logits, T)
            + gc.sum(gc.mean(logits * logits, axis=0)) + gc.mean(gc.log_softmax(logits)) / 3.0)
    return g, gc.add(loss, 0.0, name="loss")


def named_reference(X, y, T, W, b):
    logits = X @ W + b
    return (cross_entropy_ref(logits, y) + np.mean((1 / (1 + np.exp(-logits)) - T) ** 2)
            + bce_ref(logits, T) + np.sum(np.mean(logits * logits, axis=0)) + np.mean(log_softmax_ref(logits)) / 3)


def test_named_batch_dimension_runs_at_any_size():
    g, loss = named_dim_graph()
    assert g["logits"].shape == ("N", 3)
    mod = gc.compile(g, loss=loss, outputs=["logits"], dims={"N": 8}).load()
    params = random_params(mod)
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()}, lr=1e-3)
    for n in (5, 2, 5, 1):  # a size seen before reuses its workspace
        inputs = random_inputs(mod, seed=n, dims={"N": n})
        value = mod.loss(params, *inputs)
        assert value == pytest.approx(named_reference(*inputs, params["W"], params["b"]), rel=1e-12)
        check_gradients(mod, params, inputs)  # the mean's gradients divide by the run-time n
        assert mod.predict(params, inputs[0]).shape == (n, 3)
        _, grads = mod.value_and_grad(trainer.params, *inputs)
        expected = {k: trainer.params[k] - 1e-3 * grads[k] for k in params}
        trainer.step(*inputs)
        for k in params:
            np.testing.assert_allclose(trainer.params[k], expected[k], rtol=1e-12, atol=1e-15)


def test_named_dim_gradient_sizes_are_read_at_run_time():
    g, loss = named_dim_graph()
    backward = gc.compile(g, loss=loss, dims={"N": 8}).source.split("def value_and_grad")[1].split("# ---- backward")[1]
    assert "/ N\n" in backward and "/ (N * 3)\n" in backward  # the means' gradients divide by the bound sizes

def test_transpose_output_and_gradient_through_a_forward_view():
    g = gc.Graph("views")
    W = g.param("W", (3, 2))
    X = g.input("X", (3, 4))
    Wt = gc.transpose(W, name="Wt")
    prod = gc.mul(gc.sum(Wt, axis=1, keepdims=True), Wt, name="prod")  # the backward reads Wt, a view
    loss = gc.sum(gc.matmul(prod, X), name="loss")
    mod = gc.compile(g, loss=loss, outputs=[Wt, "prod"]).load()
    params, inputs = random_params(mod), random_inputs(mod)
    wt, p = mod.predict(params)  # the outputs need no input
    np.testing.assert_array_equal(wt, params["W"].T)
    np.testing.assert_allclose(p, params["W"].T.sum(axis=1, keepdims=True) * params["W"].T, rtol=1e-14)
    check_gradients(mod, params, inputs)
    assert_trainer_matches_value_and_grad(mod, params, inputs)


def test_a_param_whose_gradient_is_a_transpose_gets_its_own_array():
    g = gc.Graph("tgrad")
    W = g.param("W", (3, 2))
    loss = gc.mse(gc.transpose(W), g.input("t", (2, 3)), name="loss")
    mod = gc.compile(g, loss=loss).load()
    params, inputs = random_params(mod), random_inputs(mod)
    grads = check_gradients(mod, params, inputs)
    assert grads["W"].shape == (3, 2) and grads["W"].flags.owndata
    assert_trainer_matches_value_and_grad(mod, params, inputs)
