"""Section 15's attention ops: matmul at any rank, transpose with axes, embedding, where, softmax, log_softmax
and cross_entropy at any rank, attention. Values and gradients equal to PyTorch's (float64), gradients against
central differences, Trainer.step equal to value_and_grad and allocation-free."""

import numpy as np
import pytest
import torch

import graphc as gc
from gradcheck import check_gradients, random_params
from memcheck import peak_bytes
from test_memory import assert_trainer_matches_value_and_grad

F = torch.nn.functional  # torch: the 'test' extra


def against_torch(g, loss, out, params, inputs, torch_fn, predict_inputs=(), rtol=1e-13):
    """The module's output (predict on ``predict_inputs``), loss and gradients against ``torch_fn(params as
    tensors, inputs as tensors)`` -> (out, loss); then central differences, and Trainer.step against
    value_and_grad."""
    mod = gc.compile(g, loss=loss, outputs=[out]).load()
    ps = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    t_out, t_loss = torch_fn(ps, [torch.tensor(x) for x in inputs])
    t_loss.backward()
    np.testing.assert_allclose(mod.predict(params, *predict_inputs), t_out.detach().numpy(), rtol=rtol, atol=1e-14)
    value, grads = mod.value_and_grad(params, *inputs)
    assert value == pytest.approx(t_loss.item(), rel=rtol)
    for k in params:
        scale = max(1.0, float(torch.max(torch.abs(ps[k].grad))))
        np.testing.assert_allclose(grads[k], ps[k].grad.numpy(), rtol=rtol, atol=1e-14 * scale, err_msg=k)
    check_gradients(mod, params, inputs)
    assert_trainer_matches_value_and_grad(mod, params, inputs, steps=2)
    return mod


# ---- matmul at any rank, transpose with axes ---------------------------------------------------------------

@pytest.mark.parametrize("sa, sb", [((2, 3, 4, 5), (5, 3)), ((3, 4, 5), (2, 1, 5, 6)), ((4, 5), (3, 5, 2)),
                                    ((2, 3, 4), (2, 4, 3)), ((1, 3, 4), (2, 4, 2)), ((3, 4), (4, 2))])
def test_matmul_at_any_rank_equals_torch(sa, sb):
    g = gc.Graph("mm")
    a, b = g.param("a", sa), g.param("b", sb)
    out = gc.matmul(a, b, name="out")
    perm = tuple(reversed(range(len(out.shape))))
    loss = gc.mse(gc.transpose(out, axes=perm), g.input("y", tuple(reversed(out.shape))), reduction="sum",
                  name="loss")
    mod = gc.compile(g, loss=loss).load()
    params = random_params(mod)
    y = np.random.default_rng(3).standard_normal(tuple(reversed(out.shape)))

    def reference(ps, xs):
        o = ps["a"] @ ps["b"]
        return o, torch.sum((o.permute(*perm) - xs[0]) ** 2)
    against_torch(g, loss, out, params, (y,), reference)


@pytest.mark.parametrize("axes", [(0, 2, 1, 3), (3, 1, 0, 2), (-1, 0, 1, 2), (0, 1, 2, 3)])
def test_transpose_with_axes_is_a_view_equal_to_torch(axes):
    g = gc.Graph("tr")
    x = g.param("x", (2, 3, 4, 5))
    out = gc.transpose(x * 2.0, axes=axes, name="out")
    loss = gc.sum(out * g.input("w", out.shape), name="loss")
    assert f".transpose({tuple(axes)})" in gc.compile(g, loss=loss).source  # a view inside its consumer
    mod = gc.compile(g, loss=loss).load()
    params = random_params(mod)
    w = np.random.default_rng(1).standard_normal(out.shape)

    def reference(ps, xs):
        o = torch.permute(ps["x"] * 2.0, axes)
        return o, torch.sum(o * xs[0])
    against_torch(g, loss, out, params, (w,), reference)


@pytest.mark.parametrize("expr, message", [
    ("transpose(X, axes=(0, 0, 1))", "transpose axes (0, 0, 1) are not a permutation of the 3 axes of (2, 4, 3)"),
    ("transpose(X)", "transpose needs a 2-D operand, got (2, 4, 3) (or axes=(...))"),
    ("X @ X", "shapes (2, 4, 3) and (2, 4, 3) do not align (3 != 4)"),
    ("X @ V", "shapes (2,) and (5,) do not broadcast"),
])
def test_matmul_transpose_bad_input_is_one_line_naming_the_node(tmp_path, expr, message):
    spec = tmp_path / "bad.toml"
    spec.write_text(f'[inputs]\nX = [2, 4, 3]\n[params]\nV = {{ shape = [5, 3, 2] }}\n[nodes]\nbad = "{expr}"\n'
                    '[train]\nloss = "bad"\n')
    with pytest.raises(gc.GraphcError) as err:
        gc.load_spec(spec)
    text = str(err.value)
    assert message in text and "bad" in text and "\n" not in text


# ---- embedding ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ids_shape", [(5,), (2, 3), (2, 3, 4), ()])
def test_embedding_equals_torch(ids_shape):
    V, D = 6, 3
    g = gc.Graph("emb")
    ids = g.input("ids", ids_shape, dtype="int64")
    out = gc.embedding(ids, g.param("W", (V, D)), name="out")
    loss = gc.mse(gc.tanh(out), g.input("y", out.shape), reduction="sum", name="loss")
    mod = gc.compile(g, loss=loss).load()
    rng = np.random.default_rng(0)
    x = rng.integers(0, V, ids_shape)
    if x.size > 3:
        x.reshape(-1)[:3] = 2  # an id used several times: its rows add up
    y = rng.standard_normal(out.shape)

    def reference(ps, xs):
        o = F.embedding(xs[0], ps["W"])
        return o, torch.sum((torch.tanh(o) - xs[1]) ** 2)
    against_torch(g, loss, out, random_params(mod), (x, y), reference, predict_inputs=(x,))


def test_embedding_float32_and_named_dimension():
    g = gc.Graph("emb32", dtype="float32")
    ids = g.input("ids", ("B", 4), dtype="int64")
    out = gc.embedding(ids, g.param("W", (9, 5)), name="out")
    loss = gc.mean(out * out, name="loss")
    mod = gc.compile(g, loss=loss, dims={"B": 2}).load()
    params = mod.init_params()
    for n in (3, 1, 3):
        x = np.random.default_rng(n).integers(0, 9, (n, 4))
        w = torch.tensor(params["W"], requires_grad=True)
        torch.mean(F.embedding(torch.tensor(x), w) ** 2).backward()
        value, grads = mod.value_and_grad(params, x)
        assert grads["W"].dtype == np.float32
        np.testing.assert_allclose(grads["W"], w.grad.numpy(), rtol=1e-5, atol=1e-7)
        assert_trainer_matches_value_and_grad(mod, params, (x,), steps=1)


def test_embedding_id_out_of_range_is_a_value_error_naming_the_input():
    g = gc.Graph("emb")
    out = gc.embedding(g.input("tokens", (4,), dtype="int64"), g.param("W", (5, 2)), name="out")
    mod = gc.compile(g, loss=gc.sum(out, name="loss"), outputs=[out]).load()
    params = mod.init_params()
    for bad in (5, -1):
        with pytest.raises(ValueError, match=rf"input 'tokens': class index {bad} is outside \[0, 5\)"):
            mod.predict(params, np.array([0, 1, bad, 2]))
        with pytest.raises(ValueError, match="input 'tokens'"):
            mod.Trainer(params).step(np.array([0, bad, 1, 2]))


@pytest.mark.parametrize("expr, message", [
    ("embedding(ids, V)", "embedding weight (5, 3, 2) must be 2-D (V, D): one row per id"),
    ("embedding(X, W)", "embedding ids (4, 3) must be an integer input"),
    ("embedding(W, ids)", "ids is an integer input (class indices): only the target of cross_entropy or the ids "
     "of embedding may be integer"),
    ("mse(ids, X)", "ids is an integer input"),
])
def test_embedding_bad_input_is_one_line_naming_the_node(tmp_path, expr, message):
    spec = tmp_path / "bad.toml"
    spec.write_text('[inputs]\nX = [4, 3]\nids = { shape = [4, 3], dtype = "int64" }\n[params]\n'
                    f'V = {{ shape = [5, 3, 2] }}\nW = {{ shape = [5, 3] }}\n[nodes]\nbad = "{expr}"\n'
                    '[train]\nloss = "bad"\n')
    with pytest.raises(gc.GraphcError) as err:
        gc.load_spec(spec)
    text = str(err.value)
    assert message in text and "bad" in text and "\n" not in text


# ---- where -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shapes", [[(3, 4), (3, 4), (3, 4)], [(3, 4), (4,), (3, 1)], [(4,), (3, 4), ()],
                                    [(2, 1, 4), (3, 4), (2, 3, 1)]])
def test_where_equals_torch(shapes):
    g = gc.Graph("where")
    cond = g.input("cond", shapes[0], dtype="bool")
    out = gc.where(cond, g.param("a", shapes[1]), g.param("b", shapes[2]), name="out")
    loss = gc.mse(out, g.input("y", out.shape), reduction="sum", name="loss")
    mod = gc.compile(g, loss=loss).load()
    rng = np.random.default_rng(0)
    c, y = rng.random(shapes[0]) < 0.5, rng.standard_normal(out.shape)

    def reference(ps, xs):
        o = torch.where(xs[0], ps["a"], ps["b"])
        return o, torch.sum((o - xs[1]) ** 2)
    against_torch(g, loss, out, random_params(mod), (c, y), reference, predict_inputs=(c,))


def test_where_with_a_constant_branch_and_its_input_checks():
    g = gc.Graph("masked")
    x = g.param("x", (3, 3))
    out = gc.where(g.input("keep", (3, 3), dtype="bool"), x, -1e9, name="out")
    mod = gc.compile(g, loss=gc.sum(gc.softmax(out, axis=-1) * x, name="loss"), outputs=[out]).load()
    params, keep = random_params(mod), np.tril(np.ones((3, 3), dtype=bool))
    np.testing.assert_array_equal(mod.predict(params, keep), np.where(keep, params["x"], -1e9))
    check_gradients(mod, params, (keep,))
    assert_trainer_matches_value_and_grad(mod, params, (keep,))
    with pytest.raises(ValueError, match=r"input 'keep': expected shape \(3, 3\) bool, got \(3, 3\) float64"):
        mod.predict(params, keep.astype(float))


@pytest.mark.parametrize("expr, message", [
    ("where(X, X, X)", "where's condition (4, 3) must be a boolean input"),
    ("where(m, m, X)", "m is a boolean input: only the condition of where may be boolean"),
    ("mse(m, X)", "m is a boolean input: only the condition of where may be boolean"),
])
def test_where_bad_input_is_one_line_naming_the_node(tmp_path, expr, message):
    spec = tmp_path / "bad.toml"
    spec.write_text('[inputs]\nX = [4, 3]\nm = { shape = [4, 3], dtype = "bool" }\n[nodes]\n'
                    f'bad = "{expr}"\n[train]\nloss = "bad"\n')
    with pytest.raises(gc.GraphcError) as err:
        gc.load_spec(spec)
    text = str(err.value)
    assert message in text and "bad" in text and "\n" not in text
