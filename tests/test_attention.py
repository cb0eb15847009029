"""Section 15's attention ops: matmul at any rank, transpose with axes, embedding, where, softmax, log_softmax
and cross_entropy at any rank, attention. Values and gradients equal to PyTorch's (float64), gradients against
central differences, Trainer.step equal to value_and_grad and allocation-free."""

import numpy as np
import pytest
import torch

import graphc as gc
from graphc import ops
from gradcheck import check_gradients, random_params
from test_memory import assert_trainer_matches_value_and_grad

pytestmark = pytest.mark.unformatted

F = torch.nn.functional  # torch: the 'test' extra


def assert_spec_error(tmp_path, text: str, message: str) -> None:
    """A spec whose node ``bad`` is wrong: load_spec says ``message`` in one line naming the node."""
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    with pytest.raises(gc.GraphcError) as err:
        gc.load_spec(spec)
    text = str(err.value)
    assert message in text and "bad" in text and "\n" not in text


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
                                    ((2, 3, 4), (2, 4, 3)), ((1, 3, 4), (2, 4, 2)), ((3, 4), (4, 2)),
                                    ((4,), (4, 3)), ((3, 4), (4,)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,)),
                                    ((5,), (5,))])
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
        return o, torch.sum((torch.permute(o, perm) - xs[0]) ** 2)
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


@pytest.mark.parametrize("lead", [(2, 3), (2, 3, 2)])
def test_a_layer_over_leading_axes_gets_its_gradients_in_one_product_each(lead):
    """(..., K) @ (K, N) where x and the output's gradient are arrays of their own: d W is one (K, N) product over
    every row (ops.matmul_rows), not a product per leading index and their sum; d x is one (rows, N) @ W.T
    (ops.matmul_fold: NumPy's stacked (..., N) @ W.T is twice as slow)."""
    g = gc.Graph("layer")
    h = gc.tanh(gc.matmul(g.input("x", (*lead, 4)), g.param("U", (4, 4))), name="h")
    out = gc.matmul(h, g.param("W", (4, 3)), name="out")
    loss = gc.mse(out, g.input("y", out.shape), reduction="sum", name="loss")
    ops_used = {op for _, op in gc.compile(g, loss=loss).adjoint.nodes(data="op")}
    assert {"matmul_rows", "matmul_fold"} <= ops_used
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((*lead, 4)), rng.standard_normal(out.shape)

    def reference(ps, xs):
        o = torch.tanh(xs[0] @ ps["U"]) @ ps["W"]
        return o, torch.sum((o - xs[1]) ** 2)
    against_torch(g, loss, out, random_params(gc.compile(g, loss=loss).load()), (x, y), reference, predict_inputs=(x,))


@pytest.mark.parametrize("expr, message", [
    ("transpose(X, axes=(0, 0, 1))", "transpose axes (0, 0, 1) are not a permutation of the 3 axes of (2, 4, 3)"),
    ("transpose(X)", "transpose needs a 2-D operand, got (2, 4, 3) (or axes=(...))"),
    ("X @ X", "shapes (2, 4, 3) and (2, 4, 3) do not align (3 != 4)"),
    ("X @ V", "shapes (2,) and (5,) do not broadcast"),
])
def test_matmul_transpose_bad_input_is_one_line_naming_the_node(tmp_path, expr, message):
    assert_spec_error(tmp_path, '[inputs]\nX = [2, 4, 3]\n[params]\nV = { shape = [5, 3, 2] }\n[nodes]\n'
                      f'bad = "{expr}"\n[train]\nloss = "bad"\n', message)


# ---- embedding ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ids_shape", [(5,), (2, 3), (2, 3, 4), ()])
@pytest.mark.parametrize("V, D", [(6, 3), (20, 3)])  # Trainer.step's one-hot product (ops.one_hot), np.bincount
def test_embedding_equals_torch(ids_shape, V, D):
    assert ops.one_hot({"shape": (V, D)}) == (V == 6)
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
    assert_spec_error(tmp_path, '[inputs]\nX = [4, 3]\nids = { shape = [4, 3], dtype = "int64" }\n[params]\n'
                      f'V = {{ shape = [5, 3, 2] }}\nW = {{ shape = [5, 3] }}\n[nodes]\nbad = "{expr}"\n'
                      '[train]\nloss = "bad"\n', message)


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
    assert_spec_error(tmp_path, '[inputs]\nX = [4, 3]\nm = { shape = [4, 3], dtype = "bool" }\n[nodes]\n'
                      f'bad = "{expr}"\n[train]\nloss = "bad"\n', message)


# ---- softmax, log_softmax and cross_entropy at any rank ------------------------------------------------------

@pytest.mark.parametrize("op, axis", [("softmax", -1), ("softmax", 1), ("log_softmax", 0), ("log_softmax", -2)])
def test_softmax_at_any_rank_equals_torch(op, axis):
    g = gc.Graph("sm")
    x = g.param("x", (2, 3, 4, 5))
    out = g.apply(op, x * 3.0, name="out", axis=axis)
    loss = gc.sum(out * g.input("w", out.shape), name="loss")
    mod = gc.compile(g, loss=loss).load()
    w = np.random.default_rng(1).standard_normal(out.shape)

    def reference(ps, xs):
        o = getattr(F, op)(ps["x"] * 3.0, dim=axis)
        return o, torch.sum(o * xs[0])
    against_torch(g, loss, out, random_params(mod), (w,), reference)


@pytest.mark.parametrize("logits, indices, reduction", [((4, 5, 3), True, "mean"), ((2, 4, 3, 2), True, "sum"),
                                                        ((3, 4, 5), False, "mean"), ((2, 3, 2, 2), False, "sum"),
                                                        ((6, 4), True, "mean")])
def test_cross_entropy_of_n_c_d_logits_equals_torch(logits, indices, reduction):
    """(N, C, d1, ...) logits, as torch: a language model's (B, C, T), here a transposed view of (B, T, C)."""
    g = gc.Graph("ce")
    perm = (0, len(logits) - 1) + tuple(range(1, len(logits) - 1))
    h = g.param("h", tuple(logits[i] for i in (0, *range(2, len(logits)), 1)))  # (N, d1, ..., C)
    z = gc.transpose(h * 1.5, axes=perm, name="z") if len(logits) > 2 else h * 1.5
    rows = logits[:1] + logits[2:]
    target = g.input("t", rows, dtype="int64") if indices else g.input("t", logits)
    loss = gc.cross_entropy(z, target, reduction=reduction, name="loss")
    mod = gc.compile(g, loss=loss).load()
    rng = np.random.default_rng(0)
    t = rng.integers(0, logits[1], rows) if indices else rng.dirichlet(np.ones(logits[1]), rows).transpose(
        perm if len(logits) > 2 else (0, 1)).copy()

    def reference(ps, xs):
        zt = torch.permute(ps["h"] * 1.5, perm)
        return zt, F.cross_entropy(zt, xs[0], reduction=reduction)
    g.nx.graph["outputs"] = None
    params = random_params(mod)
    ps = {"h": torch.tensor(params["h"], requires_grad=True)}
    _, t_loss = reference(ps, [torch.tensor(t)])
    t_loss.backward()
    value, grads = mod.value_and_grad(params, t)
    assert value == pytest.approx(t_loss.item(), rel=1e-13)
    np.testing.assert_allclose(grads["h"], ps["h"].grad.numpy(), rtol=1e-12, atol=1e-15)
    check_gradients(mod, params, (t,))
    assert_trainer_matches_value_and_grad(mod, params, (t,), steps=2)


def test_cross_entropy_class_index_out_of_range_along_axis_1():
    g = gc.Graph("ce")
    loss = gc.cross_entropy(g.param("z", (2, 3, 4)), g.input("t", (2, 4), dtype="int64"), name="loss")
    mod = gc.compile(g, loss=loss).load()
    with pytest.raises(ValueError, match=r"input 't': class index 3 is outside \[0, 3\)"):
        mod.loss(mod.init_params(), np.array([[0, 1, 2, 3], [0, 0, 0, 0]]))


# ---- attention ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shapes, attrs", [
    ([(2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 5, 6)], {}),
    ([(2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 5, 4)], {"causal": True}),
    ([(4, 3), (6, 3), (6, 2)], {"scale": 0.3}),
    ([(2, 4, 3), (2, 6, 3), (2, 6, 2)], {"causal": True}),  # Tq < Tk: torch's top-left causal mask
    ([(2, 3, 4, 4), (2, 1, 4, 4), (1, 1, 4, 5)], {"causal": True, "scale": 2.0}),  # k, v shared by the heads
    ([(1, 5, 8), (1, 5, 8), (1, 5, 8)], {"causal": True}),
])
def test_attention_equals_torch(shapes, attrs):
    g = gc.Graph("att")
    q, k, v = (g.param(name, shape) for name, shape in zip("qkv", shapes))
    out = gc.attention(q, k, v, name="out", **attrs)
    loss = gc.mse(out, g.input("y", out.shape), reduction="sum", name="loss")
    mod = gc.compile(g, loss=loss).load()
    params = {name: value * 2.0 for name, value in random_params(mod).items()}  # peaked weights too
    y = np.random.default_rng(1).standard_normal(out.shape)

    def reference(ps, xs):
        qt, kt, vt = (ps[n].expand(*[max(d) for d in zip(*[ps[m].shape for m in "qkv"])][:-2], *ps[n].shape[-2:])
                      for n in "qkv")
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=attrs.get("causal", False),
                                           scale=attrs.get("scale"))
        return o, torch.sum((o - xs[0]) ** 2)
    against_torch(g, loss, out, params, (y,), reference, rtol=1e-12)


def test_attention_is_stable_for_large_scores_and_its_backward_is_readable():
    g = gc.Graph("att")
    x = g.param("x", (2, 3, 4))
    out = gc.attention(x, x, x, causal=True, name="att")
    loss = gc.sum(out, name="loss")
    src = gc.compile(g, loss=loss).source
    backward = src.split("def value_and_grad")[1].split("# ---- backward")[1].split("return")[0]
    for name in ("att_weights", "datt_weights", "datt_softmax", "datt_scores"):
        assert f"{name} = " in backward  # a handful of named statements, not one opaque call
    mod = gc.compile(g, loss=loss).load()
    params = {"x": np.random.default_rng(0).standard_normal((2, 3, 4)) * 1000.0}
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value, grads = mod.value_and_grad(params)
    xt = torch.tensor(params["x"], requires_grad=True)
    F.scaled_dot_product_attention(xt, xt, xt, is_causal=True).sum().backward()
    assert np.isfinite(value) and np.all(np.isfinite(grads["x"]))
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-9, atol=1e-9)


def test_attention_with_a_named_batch_runs_at_any_size():
    g = gc.Graph("att")
    X = g.input("X", ("B", 4, 6))
    Wq, Wk, Wv = (g.param(n, (6, 6), scale=0.5) for n in ("Wq", "Wk", "Wv"))
    heads = [gc.transpose(gc.reshape(X @ W, ("B", 4, 2, 3)), axes=(0, 2, 1, 3)) for W in (Wq, Wk, Wv)]
    out = gc.attention(*heads, causal=True, name="out")  # (B, 2, 4, 3)
    loss = gc.mean(out * out, name="loss")
    module = gc.compile(g, loss=loss, dims={"B": 2})
    copies = [line for line in module.source.splitlines() if "as an array of its own" in line]
    assert copies and not any("d None" in line for line in copies)  # each heads' gradient copy says its node
    mod = module.load()
    params = random_params(mod)
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()}, lr=1e-2)
    for n in (3, 1, 3):
        X = np.random.default_rng(n).standard_normal((n, 4, 6))
        ps = {k: torch.tensor(v, requires_grad=True) for k, v in trainer.params.items()}
        hs = [(torch.tensor(X) @ ps[w]).reshape(n, 4, 2, 3).permute(0, 2, 1, 3) for w in ("Wq", "Wk", "Wv")]
        t_loss = torch.mean(F.scaled_dot_product_attention(*hs, is_causal=True) ** 2)
        t_loss.backward()
        assert trainer.step(X) == pytest.approx(t_loss.item(), rel=1e-12)
        for k, p in ps.items():
            np.testing.assert_allclose(trainer.params[k], p.detach().numpy() - 1e-2 * p.grad.numpy(), rtol=1e-12)
    check_gradients(mod, params, (np.random.default_rng(5).standard_normal((2, 4, 6)),))


@pytest.mark.parametrize("expr, message", [
    ("attention(Q, K8, V)", "attention q (2, 4, 5, 16) and k (2, 4, 5, 8) have different head sizes (16 and 8)"),
    ("attention(Q, Q, V3)", "attention q (2, 4, 5, 16), k (2, 4, 5, 16) and v (2, 3, 5, 16): their batch and head "
     "dimensions (2, 4), (2, 4) and (2, 3) do not broadcast"),
    ("attention(Q, Q, V6)", "attention k (2, 4, 5, 16) and v (2, 4, 6, 16) have different numbers of keys (5 and 6)"),
    ("attention(Q, Q, Q, causal=1)", "attention attribute causal=1 must be True or False"),
    ("attention(Q, Q, Q, scale=0.0)", "attention attribute scale=0.0 must be a positive finite number"),
    ("attention(S, S, S)", "attention q (5,) must be (..., T, d): at least 2-D"),
])
def test_attention_bad_input_is_one_line_naming_the_node(tmp_path, expr, message):
    assert_spec_error(tmp_path, '[inputs]\nQ = [2, 4, 5, 16]\nK8 = [2, 4, 5, 8]\nV = [2, 4, 5, 16]\n'
                      f'V3 = [2, 3, 5, 16]\nV6 = [2, 4, 6, 16]\nS = [5]\n[nodes]\nbad = "sum({expr})"\n'
                      '[train]\nloss = "bad"\n', message)


def test_cupy_module_of_the_attention_ops_agrees_with_numpys(monkeypatch):
    """embedding, where, attention and (N, C, T) cross_entropy compile for CuPy; on the test double (numpy behind
    cupy's names) the steps agree with the NumPy module's."""
    import fake_cupy

    g = gc.Graph("att_cupy")
    ids, keep, y = g.input("ids", ("B", 4), dtype="int64"), g.input("keep", ("B", 4, 6), dtype="bool"), \
        g.input("y", ("B", 4), dtype="int64")
    x = gc.where(keep, gc.embedding(ids, g.param("E", (5, 6))), 0.0)
    q, k, v = (gc.transpose(gc.reshape(x @ g.param(w, (6, 6), scale=0.5), ("B", 4, 2, 3)), axes=(0, 2, 1, 3))
               for w in ("Wq", "Wk", "Wv"))
    heads = gc.sum(gc.attention(q, k, v, causal=True), axis=1)  # (B, 4, 3)
    logits = gc.transpose(heads @ g.param("Wo", (3, 5)), axes=(0, 2, 1))
    loss = gc.cross_entropy(logits, y, name="loss")
    cp = fake_cupy.install(monkeypatch)
    host = gc.compile(g, loss=loss, dims={"B": 2}).load()
    device = gc.compile(g, loss=loss, dims={"B": 2}, backend="cupy").load()
    trainer, reference = device.Trainer(device.init_params()), host.Trainer(host.init_params())
    for step in range(3):
        rng = np.random.default_rng(step)
        inputs = (rng.integers(0, 5, (3, 4)), rng.random((3, 4, 6)) < 0.7, rng.integers(0, 5, (3, 4)))
        assert trainer.step(*map(cp.asarray, inputs)) == pytest.approx(reference.step(*inputs), rel=1e-12)
    for name in host.PARAMS:
        np.testing.assert_allclose(cp.asnumpy(trainer.params[name]), reference.params[name], rtol=1e-12)


def test_the_targets_fixed_offsets_are_made_once_per_shape():
    """Issue 17's hoisting: of the flat index n * C * S + t * S + s of each target of (N, C, S) logits, the part
    that depends only on the shape is _row_offsets' (kept per shape): Trainer.step makes it with no call of its own,
    and adds t * S in two (forward and backward, each from the targets)."""
    g = gc.Graph("ce_rows")
    z = gc.transpose(g.param("h", (4, 3, 5)), axes=(0, 2, 1), name="z")  # (N, C, T) as (N, T, C) transposed
    loss = gc.cross_entropy(z, g.input("t", (4, 3), dtype="int64"), name="loss")
    step = gc.compile(g, loss=loss).source.split("    def _step(", 1)[1].split("\n    def ", 1)[0]
    assert step.count("_row_offsets(t.shape[0], 5, 3)") == 2, step
    assert "floor_divide" not in step and ".fill(" not in step and "accumulate" not in step, step


def test_row_and_bias_sums_are_matrix_vector_products():
    """NumPy reduces a short last axis, or several leading ones, row by row: Trainer.step sums them as one product
    with a column of ones (_full): each row of the layer norm, of the softmax and of the loss, the biases' gradients
    over (B, T). A matrix's one leading axis keeps add.reduce (as fast). The step equals value_and_grad."""
    g = gc.Graph("rows")
    x = g.input("x", ("B", 6, 8))
    h = gc.layer_norm(x @ g.param("w", (8, 8)) + g.param("b", (8,), init="zeros"), g.param("ln_w", (8,), init="ones"),
                      g.param("ln_b", (8,), init="zeros"), name="h")
    logits = gc.softmax(h, name="p") @ g.param("head", (8, 5)) + g.param("head_b", (5,), init="zeros")
    z = gc.add(gc.mean(logits, axis=1, name="pooled") @ g.param("out", (5, 3)), g.param("out_b", (3,), init="zeros"),
               name="z")
    loss = gc.cross_entropy(z, g.input("t", ("B",), dtype="int64"), name="loss")
    mod = gc.compile(g, loss=loss, dims={"B": 4})
    step = mod.source.split("    def _step(", 1)[1].split("\n    def ", 1)[0]
    reduces = [line for line in step.splitlines() if ".add.reduce(" in line]
    assert not [line for line in reduces if "axis=-1" in line or "axis=(0, 1)" in line], reduces
    assert step.count("_full(") == 11, step  # 2 + 2 norm rows, softmax, its gradient, loss; b, head_b, ln_w, ln_b
    assert "np.add.reduce(dz, axis=0" in step, step  # out_b: the (B * 6, 3) matrix's rows
    mod = mod.load()
    params = random_params(mod, seed=0)
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((4, 6, 8)), rng.integers(0, 3, 4))
    assert_trainer_matches_value_and_grad(mod, params, inputs)


@pytest.mark.parametrize("x_shape", [("B", 3, 5, 4), (5, 4), ("B", 1, 5, 4)], ids=["heads", "shared", "one head"])
def test_a_sum_over_heads_sends_its_gradient_to_matmul_as_a_view(x_shape):
    """x1 = sum(att @ o, axis=1) (att (B, H, T, K), o (H, K, N)): the gradient of att @ o is g (B, T, N) for every
    head, which matmul takes as the view g.reshape((B, 1, T, N)) where both operands have the heads in full; where
    one does not (x (T, K) shared by the heads, or one head broadcast), g is copied to each head as before. The
    gradients against central differences, Trainer.step against value_and_grad."""
    g = gc.Graph("heads")
    x = g.param("x", x_shape) if "B" not in x_shape else g.input("x", x_shape)
    w = g.param("w", (3, 4, 6))
    target = g.input("t", ("B", 5, 6))
    loss = gc.sum((gc.sum(x @ w, axis=-3) - target) ** 2, name="loss")  # the heads' axis
    mod = gc.compile(g, loss=loss, dims={"B": 2})
    step = mod.source.split("    def _step(", 1)[1].split("\n    def ", 1)[0]
    view = "reshape((B, 1, 5, 6))" in step
    assert view == (x_shape[1:2] == (3,)), step
    assert view != ("expand_dims" in step), step
    mod = mod.load()
    params = random_params(mod, seed=1)
    rng = np.random.default_rng(1)
    inputs = tuple(rng.standard_normal(tuple(2 if d == "B" else d for d in mod._SHAPES[k])) for k in mod.INPUTS)
    check_gradients(mod, params, inputs)
    assert_trainer_matches_value_and_grad(mod, params, inputs)
