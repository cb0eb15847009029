"""DESIGN section 14, phase B: params that are not trained (trainable = false), and the two modes (training and
evaluation) of dropout and batch_norm: values, gradients and running statistics against torch, checkpoints
resumed bit-exactly, the one-line errors."""

import numpy as np
import pytest
import torch

import graphc as gc
from gradcheck import check_gradients
from graphc.cli import main


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
