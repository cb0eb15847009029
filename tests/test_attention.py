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
