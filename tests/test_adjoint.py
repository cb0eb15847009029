"""Layer 2: the adjoint graph's structure, checked before any code is generated."""

import networkx as nx
import pytest

import graphc as gc
from graphc.autodiff import adjoint
from graphc.graph import operands
from graphc.passes import optimize


def two_layer():
    g = gc.Graph("two_layer")
    X, y = g.input("X", (32, 100)), g.input("y", (32, 10))
    W1, b1 = g.param("W1", (100, 200)), g.param("b1", (200,), init="zeros")
    W2, b2 = g.param("W2", (200, 10)), g.param("b2", (10,), init="zeros")
    h = gc.relu(X @ W1 + b1, name="h")
    pred = gc.add(gc.matmul(h, W2), b2, name="pred")
    return g, gc.mse(pred, y, reduction="sum", name="loss")


def adjoint_of(g, loss):
    return optimize(adjoint(g.nx, loss.name))


def test_two_layer_adjoint_structure():
    g, loss = two_layer()
    A = adjoint_of(g, loss)
    grads = A.graph["grads"]
    assert list(grads) == ["W1", "b1", "W2", "b2"]
    assert grads == {"W1": "dW1", "b1": "db1", "W2": "dW2", "b2": "db2"}
    # inputs get no gradient: no adjoint node is the gradient of X or y
    assert not [v for v, wrt in A.nodes(data="wrt") if wrt in ("X", "y")]
    # bias gradients are sums over the batch axis of the gradient they broadcast into
    h_add = operands(g.nx, "h")[0]  # X @ W1 + b1, named by the builder
    for bias, upstream in (("b1", f"d{h_add}"), ("b2", "dpred")):
        node = A.nodes[grads[bias]]
        assert node["op"] == "sum_to" and node["attrs"]["axis"] == (0,)
        assert operands(A, grads[bias]) == [upstream]
    # matmul gradients read the other operand through a transpose view
    assert A.nodes["dW1"]["op"] == "matmul"
    x_t, d = operands(A, "dW1")
    assert A.nodes[x_t]["op"] == "transpose" and operands(A, x_t) == ["X"] and d == f"d{h_add}"
    # relu's gradient masks with the relu output; every node records the forward node it differentiates
    dh_add = A.nodes[f"d{h_add}"]
    assert dh_add["op"] == "relu_grad" and operands(A, f"d{h_add}") == ["dh", "h"]
    assert dh_add["via"] == "h" and dh_add["wrt"] == h_add
    # forward values the backward reads are "forward" nodes; y is one (through the loss), the loss is not
    reads = {v for v, op in A.nodes(data="op") if op == "forward"}
    assert reads == {"X", "y", "h", "W2", "pred"}
    assert nx.is_directed_acyclic_graph(A)


def test_fan_out_is_accumulated():
    g = gc.Graph()
    x, y, z = g.param("x", ()), g.param("y", ()), g.param("z", ())
    f = gc.mul(x + y, x + z, name="f")
    A = adjoint_of(g, f)
    dx = A.graph["grads"]["x"]
    assert A.nodes[dx]["op"] == "accumulate" and len(operands(A, dx)) == 2


def test_repeated_operand_is_one_edge_with_two_positions():
    g = gc.Graph()
    x = g.param("x", (3,))
    sq = gc.mul(x, x, name="sq")
    assert g.nx.edges["x", "sq"]["arg"] == [0, 1]
    loss = gc.mse(sq, g.input("t", (3,)), name="loss")
    A = adjoint_of(g, loss)
    dx = A.graph["grads"]["x"]
    # both contributions are the same product, computed once (CSE) and added twice
    assert A.nodes[dx]["op"] == "accumulate"
    assert len(set(operands(A, dx))) == 1 and len(operands(A, dx)) == 2


def test_nodes_no_param_reaches_get_no_adjoint():
    g = gc.Graph()
    X = g.input("X", (4, 3))
    W = g.param("W", (3, 2))
    feature = gc.relu(X * 2.0, name="feature")  # depends on the input only
    loss = gc.mse(feature @ W, g.input("t", (4, 2)), name="loss")
    A = adjoint_of(g, loss)
    assert not [v for v, wrt in A.nodes(data="wrt") if wrt in ("feature", "X")]
    assert "dfeature" not in A


def test_param_that_does_not_reach_the_loss_is_an_error():
    g, loss = two_layer()
    g.param("unused", (3,))
    with pytest.raises(gc.GraphError, match="param 'unused' does not affect the loss 'loss'") as err:
        adjoint(g.nx, "loss")
    assert err.value.node == "unused"


def test_non_scalar_loss_is_an_error():
    g, _ = two_layer()
    with pytest.raises(gc.GraphError, match="the loss must be a scalar, but 'pred' has shape"):
        adjoint(g.nx, "pred")


def test_gradient_aliasing_a_param_gets_its_own_array():
    g = gc.Graph()
    x, y = g.param("x", ()), g.param("y", ())
    A = adjoint_of(g, gc.mul(x, y, name="f"))
    assert A.nodes[A.graph["grads"]["x"]]["op"] == "copy"  # d f / d x is y itself: never hand out y's array


def test_constant_gradients_become_arrays():
    g = gc.Graph()
    x = g.param("x", ())
    A = adjoint_of(g, gc.add(x, x, name="f"))  # d f / d x = 1 + 1, known at compile time
    dx = A.nodes[A.graph["grads"]["x"]]
    assert dx["op"] == "fill" and dx["attrs"]["value"] == 2.0


def test_params_never_share_a_gradient_array():
    g = gc.Graph()
    a, c = g.param("a", (3,)), g.param("c", (3,))
    A = adjoint_of(g, gc.mse(a + c, g.input("t", (3,)), name="loss"))
    da, dc = A.graph["grads"]["a"], A.graph["grads"]["c"]
    copied, original = (da, dc) if A.nodes[da]["op"] == "copy" else (dc, da)
    assert A.nodes[copied]["op"] == "copy" and operands(A, copied) == [original]


def test_cse_keeps_one_gradient_array_per_param():
    g = gc.Graph()
    X, y = g.input("X", (4, 3)), g.input("y", (4, 3))
    b1, b2 = g.param("b1", (3,)), g.param("b2", (3,))  # both gradients are sum(dpred, axis=0)
    A = adjoint_of(g, gc.mse(X + b1 + b2, y, name="loss"))
    assert A.graph["grads"]["b1"] != A.graph["grads"]["b2"]
