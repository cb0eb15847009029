"""The one shared gradient checker: central finite differences in float64 against a module's value_and_grad."""

import functools

import numpy as np

import graphc as gc


def finite_differences(loss, params: dict, inputs: tuple, eps: float = 1e-6, names=None) -> dict:
    """d loss / d param for every param (or those in ``names``), element by element, by central differences."""
    grads = {}
    for name, value in params.items():
        if names is not None and name not in names:
            continue
        grad = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            old = value[i]
            value[i] = old + eps
            up = loss(params, *inputs)
            value[i] = old - eps
            down = loss(params, *inputs)
            value[i] = old
            grad[i] = (up - down) / (2 * eps)
        grads[name] = grad
    return grads


def check_gradients(mod, params: dict, inputs: tuple, rtol: float = 1e-6, atol: float = 1e-7,
                    train: bool = True) -> dict:
    """Assert the generated value_and_grad matches central differences of the generated loss, both in training
    mode (``train=False``: evaluation mode); return grads.

    Each element must agree within ``atol + rtol * max|expected|`` (normwise per param): rounding in the
    differences grows with the loss, not with each element, so small elements beside large ones need this.
    """
    before = {k: v.copy() for k, v in params.items()}
    value, grads = mod.value_and_grad(params, *inputs, train=train)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k], err_msg="value_and_grad changed the params")
    # the loss in value_and_grad's mode: dropout draws the same masks from its default generator at every call
    loss = functools.partial(mod.loss, train=train)
    assert value == loss(params, *inputs)
    trained = mod.TRAINABLE  # frozen params (trainable = false) have no gradient
    assert set(grads) == set(trained)
    assert len({id(g) for g in grads.values()}) == len(grads), "two params share one gradient array"
    expected = finite_differences(loss, params, inputs, names=trained)
    for name in trained:
        assert np.shape(grads[name]) == params[name].shape, name
        scale = float(np.max(np.abs(expected[name]), initial=0.0))
        np.testing.assert_allclose(grads[name], expected[name], rtol=0, atol=atol + rtol * scale,
                                   err_msg=f"d loss / d {name}")
    return grads


def random_params(mod, seed: int = 0, away_from_zero: bool = False) -> dict:
    """init_params, plus noise so zeros-initialised params are generic too; optionally |x| >= 0.1 (relu kinks)."""
    rng = np.random.default_rng(seed)
    params = mod.init_params(seed)
    for name, value in params.items():
        value += rng.standard_normal(value.shape)
        if away_from_zero:
            value += np.where(value >= 0, 0.1, -0.1)
    return params


def random_inputs(mod, seed: int = 1, dims: dict | None = None) -> tuple:
    """Standard normal inputs of the module's shapes; a named dimension takes its size from ``dims``, else from
    the module's DIMS; an integer input (class indices) gets valid indices in [0, C)."""
    rng = np.random.default_rng(seed)
    sizes = {**getattr(mod, "DIMS", {}), **(dims or {})}
    classes = getattr(mod, "_CLASSES", {})
    inputs = []
    for name in mod.INPUTS:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in mod._SHAPES[name])
        if name in classes:
            c = classes[name]
            inputs.append(rng.integers(0, sizes[c] if isinstance(c, str) else c, shape))
        elif name in getattr(mod, "_BOOLS", ()):  # a boolean input: where's condition
            inputs.append(rng.random(shape) < 0.5)
        else:
            inputs.append(rng.standard_normal(shape))
    return tuple(inputs)


def compile_and_load(g: gc.Graph, loss, **kw):
    return gc.compile(g, loss=loss, **kw).load()
