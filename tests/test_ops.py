"""Layer 1: every op's shape rule, forward value and gradient, driven by one table of cases."""

import numpy as np
import pytest

import graphc as gc
from graphc import ops
from graphc.autodiff import adjoint
from graphc.codegen import environment
from gradcheck import check_gradients, random_params

REFERENCE = {
    "matmul": lambda a, b: a @ b,
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "relu": lambda x: np.maximum(x, 0),
    "mse": lambda p, t, reduction="mean": getattr(np, reduction)((p - t) ** 2),
}

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
]


def case_id(case):
    op, shapes, attrs = case
    return f"{op}-{'-'.join(str(s) for s in shapes)}{'-' + attrs['reduction'] if attrs else ''}"


def build(op, shapes, attrs):
    """op(a, b, ...) over params; a scalar loss through mse against a random target when op is not a loss."""
    g = gc.Graph("case")
    args = [g.param(f"p{i}", shape) for i, shape in enumerate(shapes)]
    out = g.apply(op, *args, name="out", **attrs)
    if out.shape == ():
        return g, out, out
    target = g.input("target", out.shape)
    return g, out, gc.mse(out, target, reduction="sum", name="loss")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_op(case):
    op, shapes, attrs = case
    g, out, loss = build(op, shapes, attrs)
    mod = gc.compile(g, loss=loss, outputs=[out]).load()
    params = random_params(mod, away_from_zero=(op == "relu"))
    inputs = tuple(np.random.default_rng(2).standard_normal(out.shape) for _ in mod.INPUTS)

    expected = REFERENCE[op](*(params[f"p{i}"] for i in range(len(shapes))), **attrs)
    assert out.shape == np.shape(expected)  # the shape rule agrees with NumPy
    np.testing.assert_allclose(mod.predict(params), expected, rtol=1e-12)  # predict needs no input here
    check_gradients(mod, params, inputs)


@pytest.mark.parametrize(
    "op, shapes, message",
    [
        ("matmul", [(32, 100), (50, 10)], "shapes (32, 100) and (50, 10) do not align (100 != 50)"),
        ("matmul", [(3,), (3, 2)], "matmul needs 2-D operands, got (3,) and (3, 2)"),
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
    macros = environment().get_template("ops.j2").make_module({"np": "np"})
    assert str(macros.size(("N",))) == "N"
    assert str(macros.size(("N", 10))) == "(N * 10)"
    assert str(macros.size((2, "N", "M", 5))) == "(N * M * 10)"
