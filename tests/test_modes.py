"""DESIGN section 14, phase B: params that are not trained (trainable = false), and the two modes (training and
evaluation) of dropout and batch_norm: values, gradients and running statistics against torch, checkpoints
resumed bit-exactly, the one-line errors."""

import numpy as np
import pytest
import torch

import graphc as gc
from gradcheck import check_gradients
from graphc.cli import main

pytestmark = pytest.mark.unformatted


# ---- frozen params -------------------------------------------------------------------------------------------

def frozen_graph(extra_unused=True):
    g = gc.Graph("frozen")
    x, y = g.input("x", ("N", 3)), g.input("y", ("N", 2))
    W = g.param("W", (3, 2))
    b = g.param("b", (2,), trainable=False)
    if extra_unused:
        g.param("unused", (4,), init="ones", trainable=False)  # no error: the loss need not depend on it
    return g, gc.mse(x @ W + b, y, name="loss")


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_frozen_param_gets_no_gradient_and_no_update(optimizer):
    g, loss = frozen_graph()
    mod = gc.compile(g, loss, optimizer=optimizer, dims={"N": 4}, lr=0.1).load()
    assert mod.PARAMS == ("W", "b", "unused") and mod.TRAINABLE == ("W",)
    params = mod.init_params(0)
    params["b"][...] = [0.5, -1.0]
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    grads = check_gradients(mod, params, (x, y))
    assert set(grads) == {"W"}
    frozen = {k: params[k].copy() for k in ("b", "unused")}
    trainer = mod.Trainer(params)
    for _ in range(3):
        trainer.step(x, y)
    for k, v in frozen.items():
        np.testing.assert_array_equal(params[k], v)
    assert not np.array_equal(params["W"], mod.init_params(0)["W"])
    state = trainer.state_dict()
    assert {k for k in state if not k.startswith(("params.", "optimizer", "steps"))} == {
        f"{s}.W" for s in {"sgd": (), "adam": ("exp_avg", "exp_avg_sq"), "adamw": ("exp_avg", "exp_avg_sq")}[optimizer]}
    assert {"params.b", "params.unused"} <= set(state)
    with pytest.raises(ValueError, match="gradient of 'W'"):
        trainer.apply_gradients({"b": np.zeros(2)})
    trainer.apply_gradients({"W": np.zeros((3, 2))})  # the frozen ones need none


def test_frozen_params_match_torch_with_requires_grad_false():
    g, loss = frozen_graph(extra_unused=False)
    mod = gc.compile(g, loss, optimizer="adam", dims={"N": 5}, lr=0.01).load()
    params = mod.init_params(3)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    W = torch.tensor(params["W"], requires_grad=True)
    b = torch.tensor(params["b"])  # requires_grad=False: torch.optim is never given it
    opt = torch.optim.Adam([W], lr=0.01)
    trainer = mod.Trainer(params)
    for _ in range(4):
        opt.zero_grad()
        value = torch.nn.functional.mse_loss(torch.tensor(x) @ W + b, torch.tensor(y))
        value.backward()
        opt.step()
        assert trainer.step(x, y) == pytest.approx(value.item(), rel=1e-12)
    np.testing.assert_allclose(params["W"], W.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(params["b"], b.numpy())


def test_frozen_params_in_spec_save_load_and_show(tmp_path, capsys):
    spec = tmp_path / "frozen.toml"
    spec.write_text("""
[inputs]
x = ["N", 3]
y = ["N", 2]
[params]
W = { shape = [3, 2] }
b = { shape = [2], init = "zeros", trainable = false }
[nodes]
loss = "mse(x @ W + b, y)"
[train]
loss = "loss"
[dims]
N = 4
""")
    loaded = gc.load_spec(spec)
    assert loaded.graph.nx.nodes["b"]["trainable"] is False
    mod = gc.compile(loaded.graph, loss=loaded.loss).load()
    assert mod.TRAINABLE == ("W",)
    params = mod.init_params(0)
    mod.save_params(params, tmp_path / "p.npz")
    assert set(mod.load_params(tmp_path / "p.npz")) == {"W", "b"}
    trainer = mod.Trainer(params)
    trainer.step(np.ones((4, 3)), np.ones((4, 2)))
    trainer.save(tmp_path / "ckpt.npz")
    again = mod.Trainer(mod.init_params(1)).load(tmp_path / "ckpt.npz")
    np.testing.assert_array_equal(again.params["b"], params["b"])
    assert main(["show", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "# params: W[3,2] randn, b[2] zeros, frozen (trainable = false)" in out


def test_frozen_param_errors(tmp_path):
    g = gc.Graph("m")
    with pytest.raises(gc.GraphError, match="trainable must be True or False"):
        g.param("W", (2,), trainable="no")
    g, loss = gc.Graph("m"), None
    x = g.input("x", (3,))
    loss = gc.sum(x * g.param("w", (3,), trainable=False))
    with pytest.raises(gc.GraphError, match="every param is trainable = false"):
        gc.compile(g, loss)


# ---- dropout ---------------------------------------------------------------------------------------------------

F = torch.nn.functional


def dropout_graph(p=0.3, dtype="float64"):
    g = gc.Graph("drop", dtype=dtype)
    x, y = g.input("x", ("N", 5)), g.input("y", ("N", 2))
    h = gc.dropout(gc.tanh(x @ g.param("W", (5, 6))), p, name="h")  # tanh: no exact zeros before the mask
    return g, gc.mse(h @ g.param("V", (6, 2)), y, name="loss")


def dropout_data(n=7, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)), rng.standard_normal((n, 2))


def test_modes_differ_only_with_modes_ops():
    g, loss = dropout_graph()
    assert gc.compile(g, loss, dims={"N": 4}).load().MODES_DIFFER is True
    g, loss = frozen_graph()
    assert gc.compile(g, loss, dims={"N": 4}).load().MODES_DIFFER is False


def torch_dropout_loss(params, x, y, mask, p):
    W, V = (torch.tensor(params[k], requires_grad=True) for k in ("W", "V"))
    scaled = torch.tensor(mask, dtype=torch.float64) / (1 - p)  # F.dropout's: x * mask / (1 - p)
    h = torch.tanh(torch.tensor(x) @ W) * scaled
    value = F.mse_loss(h @ V, torch.tensor(y))
    value.backward()
    return value.item(), {"W": W.grad.numpy(), "V": V.grad.numpy()}


@pytest.mark.parametrize("p", [0.3, 0.0, 0.9])
def test_dropout_training_mode_matches_torch(p):
    g, loss = dropout_graph(p)
    mod = gc.compile(g, loss, dims={"N": 7}, outputs=["h", "loss"]).load()
    params = mod.init_params(0)
    x, y = dropout_data()
    value, grads = mod.value_and_grad(params, x, y, rng=np.random.default_rng(5))
    # the mask: a uniform draw per element (Generator.random, in the module's dtype), kept where >= p
    mask = np.random.default_rng(5).random((7, 6)) >= p
    ref_value, ref_grads = torch_dropout_loss(params, x, y, mask, p)
    assert value == pytest.approx(ref_value, rel=1e-12)
    for k in ("W", "V"):
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-10, atol=1e-12, err_msg=k)
    # loss(train=True) draws the same mask from the same generator; value_and_grad's default is default_rng(0)
    assert mod.loss(params, x, y, train=True, rng=np.random.default_rng(5)) == value
    assert mod.value_and_grad(params, x, y)[0] == mod.loss(params, x, y, train=True)
    if 0 < p:
        assert 0 < (~mask).sum() < mask.size


def test_dropout_evaluation_mode_is_the_identity():
    g, loss = dropout_graph()
    mod = gc.compile(g, loss, dims={"N": 7}, outputs=["h", "loss"]).load()
    params = mod.init_params(0)
    x, y = dropout_data()
    h, value = mod.predict(params, x, y)
    np.testing.assert_array_equal(h, np.tanh(x @ params["W"]))
    assert mod.loss(params, x, y) == value
    ref_value, ref_grads = torch_dropout_loss(params, x, y, np.ones((7, 6), bool), 0.0)
    eval_value, grads = mod.value_and_grad(params, x, y, train=False)
    assert eval_value == pytest.approx(ref_value, rel=1e-12)
    for k in ("W", "V"):
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("train", [True, False])
def test_dropout_gradients_against_finite_differences(train):
    g, loss = dropout_graph()
    mod = gc.compile(g, loss, dims={"N": 4}).load()
    check_gradients(mod, mod.init_params(2), dropout_data(4), train=train)


def test_dropout_trainer_step_matches_value_and_grad_and_resumes_bit_exactly(tmp_path):
    from test_memory import assert_trainer_matches_value_and_grad

    g, loss = dropout_graph()
    x, y = dropout_data()
    sgd = gc.compile(g, loss, dims={"N": 7}).load()  # the helper's reference is SGD
    assert_trainer_matches_value_and_grad(sgd, sgd.init_params(0), (x, y), steps=3)
    mod = gc.compile(g, loss, optimizer="adam", dims={"N": 7}, lr=0.01).load()
    a = mod.Trainer(mod.init_params(0), lr=0.01, seed=3)
    for _ in range(3):
        a.step(x, y)
    assert "rng" in a.state_dict()
    a.save(tmp_path / "ckpt.npz")
    later = [a.step(x, y) for _ in range(3)]
    b = mod.Trainer(mod.init_params(1), lr=0.01, seed=99).load(tmp_path / "ckpt.npz")
    assert [b.step(x, y) for _ in range(3)] == later
    for k in mod.PARAMS:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    seeds = [mod.Trainer(mod.init_params(0), lr=0.01, seed=s).step(x, y) for s in (3, 3, 4)]
    assert seeds[0] == seeds[1] != seeds[2]  # the seed picks the masks
    state = a.state_dict()
    state["rng"] = np.zeros(3, np.uint64)
    with pytest.raises(ValueError, match="'rng' must be 6 uint64 words"):
        b.load_state_dict(state)


def test_dropout_float32():
    g, loss = dropout_graph(dtype="float32")
    mod = gc.compile(g, loss, dims={"N": 7}).load()
    params = mod.init_params(0)
    x, y = (a.astype(np.float32) for a in dropout_data())
    value, grads = mod.value_and_grad(params, x, y)
    assert grads["W"].dtype == np.float32
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()})
    assert trainer.step(x, y) == value


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, "half", True])
def test_dropout_p_outside_the_interval_is_a_one_line_error(p):
    g = gc.Graph("m")
    x = g.input("x", (3, 4))
    with pytest.raises(gc.GraphError) as err:
        gc.dropout(x, p, name="drop1")
    assert "drop1" in str(err.value) and "[0, 1)" in str(err.value) and "\n" not in str(err.value)


def test_dropout_p_error_in_a_spec(tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text('[inputs]\nx = ["N", 3]\n[params]\nW = { shape = [3, 1] }\n[nodes]\n'
                    'h = "dropout(x @ W, p=1.0)"\nloss = "sum(h)"\n[train]\nloss = "loss"\n[dims]\nN = 2\n')
    assert main(["compile", str(spec), "-o", str(tmp_path / "m.py")]) == 2
    err = capsys.readouterr().err.strip()
    assert "h" in err and "[0, 1)" in err and len(err.splitlines()) == 1, err


def test_modes_ops_refuse_cupy():
    g, loss = dropout_graph()
    with pytest.raises(gc.GraphError, match="dropout has no cupy template yet"):
        gc.compile(g, loss, dims={"N": 4}, backend="cupy")


# ---- batch_norm ------------------------------------------------------------------------------------------------

def bn_graph(x_shape, momentum=0.1, eps=1e-5, frozen_weight=False):
    """x -> batch_norm -> flatten -> @ W -> mse: the running statistics are trainable = false params."""
    g = gc.Graph("bn")
    C = x_shape[1]
    x = g.input("x", ("N", *x_shape[1:]))
    y = g.input("y", ("N", 3))
    w = g.param("w", (C,), init="ones", trainable=not frozen_weight)
    b = g.param("b", (C,), init="zeros")
    rm = g.param("rm", (C,), init="zeros", trainable=False)
    rv = g.param("rv", (C,), init="ones", trainable=False)
    h = gc.batch_norm(x, w, b, rm, rv, momentum=momentum, eps=eps, name="bn")
    flat = gc.flatten(h) if len(x_shape) > 2 else h
    W = g.param("W", (int(np.prod(x_shape[1:])), 3), scale=0.5)
    return g, gc.mse(flat @ W, y, name="loss")


def bn_params(mod, seed=0):
    rng = np.random.default_rng(seed)
    params = mod.init_params(seed)
    params["w"] += 0.3 * rng.standard_normal(params["w"].shape)
    params["b"] += 0.3 * rng.standard_normal(params["b"].shape)
    params["rm"][...] = 0.5 * rng.standard_normal(params["rm"].shape)
    params["rv"][...] = 0.5 + rng.random(params["rv"].shape)
    return params


def bn_data(x_shape, seed=1):
    rng = np.random.default_rng(seed)
    return 2.0 * rng.standard_normal(x_shape) + 1.0, rng.standard_normal((x_shape[0], 3))


def torch_bn_loss(params, x, y, training, momentum=0.1, eps=1e-5):
    t = {k: torch.tensor(v, requires_grad=k in ("w", "b", "W")) for k, v in params.items()}
    rm, rv = t["rm"].clone(), t["rv"].clone()
    h = F.batch_norm(torch.tensor(x), rm, rv, t["w"], t["b"], training=training, momentum=momentum, eps=eps)
    value = F.mse_loss(h.flatten(1) @ t["W"], torch.tensor(y))
    value.backward()
    return value.item(), {k: t[k].grad.numpy() for k in ("w", "b", "W")}, (rm.numpy(), rv.numpy()), h.detach().numpy()


BN_SHAPES = [(6, 4), (5, 3, 4), (4, 2, 3, 3)]  # BatchNorm1d on (N, C) and (N, C, L); BatchNorm2d


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_matches_torch(shape, train):
    g, loss = bn_graph(shape)
    mod = gc.compile(g, loss, dims={"N": shape[0]}, outputs=["bn", "loss"]).load()
    params = bn_params(mod)
    x, y = bn_data(shape)
    value, grads = mod.value_and_grad(params, x, y, train=train)
    ref_value, ref_grads, _, ref_h = torch_bn_loss(params, x, y, train)
    assert value == pytest.approx(ref_value, rel=1e-12)
    assert mod.loss(params, x, y, train=train) == value
    for k in ("w", "b", "W"):
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-9, atol=1e-12, err_msg=k)
    if not train:  # predict runs in evaluation mode
        h, _ = mod.predict(params, x, y)
        np.testing.assert_allclose(h, ref_h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_gradients_against_finite_differences(shape, train):
    g, loss = bn_graph(shape)
    mod = gc.compile(g, loss, dims={"N": shape[0]}).load()
    params = bn_params(mod)
    before = {k: params[k].copy() for k in ("rm", "rv")}
    check_gradients(mod, params, bn_data(shape), train=train)
    for k, v in before.items():  # value_and_grad and loss are pure: the running statistics stay
        np.testing.assert_array_equal(params[k], v)


def torch_reference_run(params, x, y, optimizer, steps, momentum):
    """A torch loop from torch.optim's semantics: F.batch_norm in training mode updates rm and rv in place."""
    t = {k: torch.tensor(v.copy(), requires_grad=k in ("w", "b", "W")) for k, v in params.items()}
    trained = [t["w"], t["b"], t["W"]]
    opt = torch.optim.Adam(trained, lr=0.01) if optimizer == "adam" else \
        torch.optim.SGD(trained, lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        h = F.batch_norm(torch.tensor(x), t["rm"], t["rv"], t["w"], t["b"], training=True, momentum=momentum)
        value = F.mse_loss(h.flatten(1) @ t["W"], torch.tensor(y))
        value.backward()
        opt.step()
        losses.append(value.item())
    return losses, {k: v.detach().numpy() for k, v in t.items()}


@pytest.mark.parametrize("shape", [(6, 4), (4, 2, 3, 3)])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_batch_norm_trainer_steps_match_a_torch_loop(shape, optimizer):
    momentum = 0.3
    g, loss = bn_graph(shape, momentum=momentum)
    settings = {"lr": 0.01} if optimizer == "adam" else {"lr": 0.05, "momentum": 0.9}
    mod = gc.compile(g, loss, optimizer=optimizer, dims={"N": shape[0]}, **settings).load()
    params = bn_params(mod)
    x, y = bn_data(shape)
    ref_losses, ref = torch_reference_run(params, x, y, optimizer, 4, momentum)
    trainer = mod.Trainer(params)
    losses = [trainer.step(x, y) for _ in range(4)]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)
    for k in mod.PARAMS:  # the running statistics too: momentum weighting, unbiased variance
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)
    # evaluation mode then uses the updated running statistics
    ref_value, *_ = torch_bn_loss(params, x, y, training=False)
    assert mod.loss(params, x, y) == pytest.approx(ref_value, rel=1e-12)


def test_batch_norm_with_a_frozen_weight_and_the_allocation_free_step():
    from test_memory import assert_trainer_matches_value_and_grad

    g, loss = bn_graph((5, 3, 4), frozen_weight=True)
    mod = gc.compile(g, loss, dims={"N": 5}).load()
    assert mod.TRAINABLE == ("b", "W") and mod.RUNNING == {"bn": "batch_norm"}
    assert_trainer_matches_value_and_grad(mod, bn_params(mod), bn_data((5, 3, 4)), steps=3)


def test_batch_norm_errors():
    g = gc.Graph("m")
    x = g.input("x", ("N", 3, 4))
    w, b = g.param("w", (3,)), g.param("b", (3,))
    rm, rv = g.param("rm", (3,), trainable=False), g.param("rv", (3,), trainable=False)
    trained = g.param("trained", (3,))
    h = gc.batch_norm(x, w, b, trained, rv, name="bn_bad")
    with pytest.raises(gc.GraphError) as err:
        gc.compile(g, gc.sum(h))
    assert "bn_bad" in str(err.value) and "running_mean 'trained'" in str(err.value)
    assert "trainable = false" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(gc.ShapeError, match=r"running_var \(4,\) must have shape \(3,\)"):
        gc.batch_norm(x, w, b, rm, g.param("rv4", (4,), trainable=False), name="bn2")
    with pytest.raises(gc.ShapeError, match="2-D, 3-D or 4-D"):
        gc.batch_norm(g.input("x5", (2, 3, 1, 1, 1)), w, b, rm, rv)
    with pytest.raises(gc.GraphError, match=r"momentum=1.5 must be a number in \[0, 1\]"):
        gc.batch_norm(x, w, b, rm, rv, momentum=1.5, name="bn3")
    g = gc.Graph("ok")
    x = g.input("x", ("N", 3, 1))
    stats = [g.param(k, (3,), trainable=False) for k in ("rm", "rv")]
    h = gc.batch_norm(x, g.param("w", (3,)), g.param("b", (3,)), *stats, name="bn_ok")
    ok = gc.compile(g, gc.sum(h), dims={"N": 1}).load()
    params = ok.init_params(0)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ok.value_and_grad(params, np.ones((1, 3, 1)))


def test_batch_norm_refuses_cupy_and_dask(tmp_path):
    g, loss = bn_graph((4, 3))
    with pytest.raises(gc.GraphError, match="batch_norm has no cupy template yet"):
        gc.compile(g, loss, dims={"N": 4}, backend="cupy")
    from graphc.dask import _check_module

    mod = gc.compile(g, loss, dims={"N": 4}).load()
    with pytest.raises(ValueError, match="batch_norm 'bn' updates its running statistics in training") as err:
        _check_module(mod, "the module")
    assert "\n" not in str(err.value)


def test_batch_norm_and_dropout_in_a_spec(tmp_path):
    spec = tmp_path / "cnn.toml"
    spec.write_text("""
[inputs]
x = ["N", 2, 4, 4]
y = { shape = ["N"], dtype = "int64" }
[params]
k = { shape = [3, 2, 3, 3], scale = 0.3 }
w = { shape = [3], init = "ones" }
b = { shape = [3], init = "zeros" }
rm = { shape = [3], init = "zeros", trainable = false }
rv = { shape = [3], init = "ones", trainable = false }
W = { shape = [12, 5], scale = 0.3 }
[nodes]
h = "dropout(flatten(max_pool2d(relu(batch_norm(conv2d(x, k, padding=1), w, b, rm, rv, momentum=0.2)), 2)), p=0.25)"
loss = "cross_entropy(h @ W, y)"
[train]
loss = "loss"
optimizer = "adam"
[dims]
N = 4
""")
    s = gc.load_spec(spec)
    mod = gc.compile(s.graph, loss=s.loss, dims={"N": 4}).load()
    assert mod.MODES_DIFFER and mod.TRAINABLE == ("k", "w", "b", "W")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 2, 4, 4)), rng.integers(0, 5, 4)
    check_gradients(mod, mod.init_params(1), (x, y))


def test_show_backward_is_the_training_step(tmp_path, capsys):
    spec = tmp_path / "bn.toml"
    spec.write_text('[inputs]\nx = ["N", 3]\n[params]\nw = { shape = [3], init = "ones" }\n'
                    'b = { shape = [3], init = "zeros" }\nrm = { shape = [3], init = "zeros", trainable = false }\n'
                    'rv = { shape = [3], init = "ones", trainable = false }\n[nodes]\n'
                    'h = "dropout(batch_norm(x, w, b, rm, rv), p=0.1)"\nloss = "sum(h * h)"\n[train]\nloss = "loss"\n[dims]\nN = 4\n')
    assert main(["show", "--backward", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "h_batch_norm[N,3] = _batch_norm(x, w, b, rm, rv, 1e-05, True)" in out
    assert "dropout(h_batch_norm, p=0.1)" in out
