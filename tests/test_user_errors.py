"""What a new user hit (issue 19, item 6): show -o graph.json, a missing param, a params file loaded as a checkpoint,
plain SGD's momentum buffers."""

import json

import networkx as nx
import numpy as np
import pytest

import graphc as gc
from graphc.cli import main

pytestmark = pytest.mark.unformatted


# ---- graphc show --format json -o FILE.json: refused only over a spec ---------------------------------------------

@pytest.fixture
def json_spec(root, tmp_path):
    """examples/two_layer.toml as a JSON spec in tmp_path."""
    import tomllib

    spec = tmp_path / "two_layer.json"
    spec.write_text(json.dumps(tomllib.loads((root / "examples" / "two_layer.toml").read_text())))
    return spec


def test_show_json_writes_a_json_file_and_replaces_its_own_output(root, tmp_path, capsys):
    out = tmp_path / "graph.json"
    for _ in range(2):  # the second run replaces the first one's file
        assert main(["show", "examples/two_layer.toml", "--format", "json", "-o", str(out)]) == 0
        assert capsys.readouterr() == (f"graphc: wrote {out}\n", "")
        G = nx.node_link_graph(json.loads(out.read_text()), edges="edges")
        assert {"X", "W1", "pred", "loss"} <= set(G) and G.edges["X", "h_matmul"]["arg"] == [0]


@pytest.mark.parametrize("target", ["itself", "another spec"])
def test_show_json_never_writes_over_a_spec(json_spec, tmp_path, capsys, target):
    out = json_spec if target == "itself" else tmp_path / "other.json"
    if target != "itself":
        out.write_bytes(json_spec.read_bytes())
    before = out.read_bytes()
    assert main(["show", str(json_spec), "--format", "json", "-o", str(out)]) == 2
    what = "the" if target == "itself" else "a"
    assert capsys.readouterr() == ("", f"graphc: error: -o {out}: that is {what} spec, which graphc never replaces: "
                                       "choose another name\n")
    assert out.read_bytes() == before


@pytest.mark.parametrize("command", [["show", "--format", "text"], ["show", "--format", "dot"], ["compile"]])
@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_other_outputs_named_like_a_spec_are_refused(root, tmp_path, capsys, command, suffix):
    # a module or a text in a .json/.toml file is a slip of the keyboard that could replace a spec
    out = tmp_path / f"out{suffix}"
    assert main([command[0], "examples/two_layer.toml", *command[1:], "-o", str(out)]) == 2
    assert capsys.readouterr().err == (f"graphc: error: {out}: cannot write to a {suffix} file, the kind a spec is: "
                                       "choose another name\n")
    assert not out.exists()


# ---- the generated module names a missing param ------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_layer():
    g = gc.Graph("two_layer")
    X, y = g.input("X", ("N", 4)), g.input("y", ("N", 2))
    W1, b1 = g.param("W1", (4, 3)), g.param("b1", (3,), init="zeros")
    W2 = g.param("W2", (3, 2))
    pred = gc.matmul(gc.relu(X @ W1 + b1, name="h"), W2, name="pred")
    return gc.compile(g, loss=gc.mse(pred, y, name="loss"), outputs=[pred], lr=0.1, dims={"N": 5}).load()


@pytest.mark.parametrize("function", ["predict", "loss", "value_and_grad"])
@pytest.mark.parametrize("missing", ["W1", "W2"])
def test_a_missing_param_is_a_value_error_naming_it(two_layer, function, missing):
    params = two_layer.init_params(0)
    del params[missing]
    X, y = np.ones((5, 4)), np.ones((5, 2))
    args = (X,) if function == "predict" else (X, y)
    with pytest.raises(ValueError, match=f"^param '{missing}' is missing$"):
        getattr(two_layer, function)(params, *args)


# ---- a params file is not a checkpoint ---------------------------------------------------------------------------

def test_loading_a_params_file_as_a_checkpoint_says_what_it_is(two_layer, tmp_path):
    params = two_layer.init_params(0)
    path = tmp_path / "params.npz"
    two_layer.save_params(params, path)
    trainer = two_layer.Trainer(two_layer.init_params(1))
    before = {k: v.copy() for k, v in trainer.params.items()}
    with pytest.raises(ValueError) as err:
        trainer.load(path)
    assert str(err.value) == ("this is a params file (save_params writes one; load_params reads it): Trainer.load "
                              "reads a checkpoint that Trainer.save wrote")
    for k in before:
        np.testing.assert_array_equal(trainer.params[k], before[k])
    trainer.save(path)  # and the other way round: a checkpoint is not a params file
    with pytest.raises(ValueError, match=r"^params '.*params.npz': this is a checkpoint \(Trainer.save writes one; "
                                         r"Trainer.load reads it\), not params$"):
        two_layer.load_params(path)


# ---- plain SGD keeps no momentum buffers -------------------------------------------------------------------------

def batches(count, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 4)), rng.standard_normal((n, 2))) for n in [5, 5, 3, 5, 5, 2][:count]]


def test_plain_sgd_keeps_no_momentum_buffer_and_steps_as_torch_documents(two_layer):
    params = two_layer.init_params(0)
    trainer = two_layer.Trainer({k: v.copy() for k, v in params.items()})
    assert sorted(trainer.state_dict()) == ["optimizer", "params.W1", "params.W2", "params.b1", "steps"]
    for X, y in batches(3):
        _, grads = two_layer.value_and_grad(params, X, y)
        for k in params:  # torch.optim.SGD without momentum or weight decay: p <- p - lr * grad
            params[k] = params[k] - 0.1 * grads[k]
        trainer.step(X, y)
    for k in params:
        np.testing.assert_allclose(trainer.params[k], params[k], rtol=1e-12, atol=1e-14)
    with_momentum = two_layer.Trainer(two_layer.init_params(0), momentum=0.9)
    assert sorted(k for k in with_momentum.state_dict() if k.startswith("momentum_buffer.")) == [
        "momentum_buffer.W1", "momentum_buffer.W2", "momentum_buffer.b1"]


def test_a_plain_sgd_checkpoint_resumes_bit_for_bit(two_layer, tmp_path):
    data = batches(6)
    whole = two_layer.Trainer(two_layer.init_params(0))
    for X, y in data:
        whole.step(X, y)
    first = two_layer.Trainer(two_layer.init_params(0))
    for X, y in data[:2]:
        first.step(X, y)
    first.save(tmp_path / "ckpt.npz")
    resumed = two_layer.Trainer(two_layer.init_params(7)).load(tmp_path / "ckpt.npz")
    for X, y in data[2:]:
        resumed.step(X, y)
    for k in whole.params:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])


@pytest.mark.parametrize("saved, loaded", [(0.0, 0.9), (0.9, 0.0)])
def test_a_checkpoint_across_momentum_settings_is_one_clear_error(two_layer, tmp_path, saved, loaded):
    source = two_layer.Trainer(two_layer.init_params(0), momentum=saved)
    X, y = batches(1)[0]
    source.step(X, y)
    target = two_layer.Trainer(two_layer.init_params(1), momentum=loaded)
    before = {k: v.copy() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as err:
        target.load_state_dict(source.state_dict())
    has = "has" if saved else "has no"
    assert str(err.value) == (f"the state {has} momentum_buffer arrays, but this Trainer's momentum is {loaded!r}: "
                              "make the Trainer with the momentum the state was saved with (momentum 0 keeps no "
                              "momentum_buffer)")
    for k, v in target.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_turning_momentum_on_after_construction_is_an_error(two_layer):
    trainer = two_layer.Trainer(two_layer.init_params(0))
    trainer.hyperparams["momentum"] = 0.9
    before = {k: v.copy() for k, v in trainer.params.items()}
    with pytest.raises(ValueError, match="^momentum was 0 when this Trainer was made, so it keeps no momentum "
                                         "buffers: make a Trainer with momentum$"):
        trainer.step(*batches(1)[0])
    for k in before:
        np.testing.assert_array_equal(trainer.params[k], before[k])
