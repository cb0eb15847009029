"""Big graphs: nothing in the pipeline recurses over graph depth or width.

A 3,000-node chain (three times Python's default recursion limit) goes through the whole pipeline (spec file,
adjoint, passes, schedule, templates, black line shape by line shape, Python's compiler) at the default
recursion limit, and the module it gives is checked. Most of its time is black's; see codegen.format_source.

A wide fan-out is summed in steps (autodiff.MAX_TERMS): Python's compiler recurses once per ``+`` of a sum and
cannot compile one of about 3000 terms.
"""

import sys
import time

import numpy as np

import graphc as gc
from graphc.autodiff import MAX_TERMS, adjoint
from graphc import compiler
from graphc.codegen import _format_by_shape, format_source, render
from graphc.training import training
from graphc.passes import optimize
from graphc.schedule import schedule
from gradcheck import check_gradients

NODES = 3_000


def chain_spec(nodes: int) -> str:
    """x -> mul/add/relu ... -> mse: every node but the first few and the loss is one link of the chain."""
    lines = ["[inputs]", "x = [4, 3]", "y = [4, 3]", "[params]", 'w = { shape = [3], init = "ones" }',
             'c = { shape = [], init = 0.999 }', "[nodes]"]
    body = nodes - 5  # x, y, w, c, loss
    prev = "x"
    for i in range(body):
        op = ("h{} = \"relu({})\"" if i % 10 == 9 else "h{} = \"{} + w\"" if i % 2 else "h{} = \"{} * c\"")
        lines.append(op.format(i, prev))
        prev = f"h{i}"
    lines += [f'loss = "mse({prev}, y)"', "[train]", 'loss = "loss"', "iterations = 2"]
    return "\n".join(lines) + "\n"


def unformatted(monkeypatch, g, loss, **kw) -> str:
    """The generated module as the templates write it, before black."""
    monkeypatch.setattr(compiler, "format_source", lambda text: text)
    return gc.compile(g, loss, **kw).source


def test_formatting_by_shape_is_black(root, tmp_path, monkeypatch):
    """A long module is formatted line shape by line shape (codegen._format_by_shape): the bytes must be black's."""
    texts = []
    (tmp_path / "chain.toml").write_text(chain_spec(200))
    paths = [root / "examples" / "two_layer.toml", root / "examples" / "chain_rule.toml", tmp_path / "chain.toml",
             *sorted((root / "tests" / "hostile").glob("*valid*"))]
    for path in paths:
        spec = gc.load_spec(path)
        texts.append(unformatted(monkeypatch, spec.graph, spec.loss, outputs=spec.outputs, lr=spec.lr))
    g, loss = fan_out(2 * MAX_TERMS + 1)
    texts.append(unformatted(monkeypatch, g, loss, dtype="float32"))
    for text in texts:
        by_shape = _format_by_shape(text)
        assert by_shape is not None  # not the fallback to black on everything
        assert by_shape == format_source(text, by_shape=False)


def test_a_3000_node_chain_compiles_and_trains(tmp_path):
    path = tmp_path / "chain.toml"
    path.write_text(chain_spec(NODES))
    limit = sys.getrecursionlimit()
    started = time.perf_counter()
    spec = gc.load_spec(path)
    assert spec.graph.nx.number_of_nodes() == NODES
    module = gc.compile(spec.graph, spec.loss, spec.outputs, spec.lr, spec.iterations)
    print(f"\n{NODES}-node chain: compiled in {time.perf_counter() - started:.1f} s, "
          f"{module.source.count(chr(10))} lines")
    assert sys.getrecursionlimit() == limit  # nothing raised the limit to get through
    mod = module.load()

    rng = np.random.default_rng(0)
    x, y = rng.uniform(0.5, 1.5, (4, 3)), rng.uniform(0.5, 1.5, (4, 3))
    params = {"w": np.array([0.9, 1.0, 1.1]), "c": np.array(0.998)}
    # the chain keeps every value positive, so no relu sits at its kink
    check_gradients(mod, params, (x, y), rtol=1e-5, atol=1e-6)
    value, grads = mod.value_and_grad(params, x, y)
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()}, lr=1e-9)
    assert abs(trainer.step(x, y) - value) <= 1e-12 * abs(value)
    for k in params:
        np.testing.assert_allclose(trainer.params[k], params[k] - 1e-9 * grads[k], rtol=1e-12)


def fan_out(width: int):
    """``h = w * x`` used ``width`` times: d loss / d h is the sum of ``width`` contributions."""
    g = gc.Graph("fan")
    x = g.input("x", (2, 3))
    w = g.param("w", (3,))
    h = gc.mul(w, x, name="h")
    total = None
    for i in range(width):
        term = gc.mul(h, g.const(1.0 + i / width))
        total = term if total is None else total + term
    return g, gc.mse(total, x, name="loss")


def test_a_wide_fan_out_is_summed_in_steps():
    g, loss = fan_out(3000)
    A = optimize(adjoint(g.nx, loss.name))
    sums = [v for v in A if A.nodes[v]["op"] == "accumulate"]
    assert sums and max(len(list(A.predecessors(v))) for v in sums) <= MAX_TERMS
    # the module text before black: Python's compiler must take it (one sum of 3000 terms would not)
    text = render(schedule(g.nx, A, loss.name, [loss.name]), name="fan", source="test", command="test",
                  version=gc.__version__, train=training(g.nx, loss.name, hyperparams={"lr": 0.1}))
    compile(text, "fan.py", "exec", dont_inherit=True)


def test_a_fan_out_wider_than_one_sum_has_the_right_gradient():
    g, loss = fan_out(3 * MAX_TERMS + 5)
    mod = gc.compile(g, loss).load()
    rng = np.random.default_rng(1)
    params = {"w": rng.standard_normal(3)}
    x = rng.standard_normal((2, 3))
    check_gradients(mod, params, (x,))
    value, grads = mod.value_and_grad(params, x)
    trainer = mod.Trainer({"w": params["w"].copy()}, lr=1e-4)
    assert abs(trainer.step(x) - value) <= 1e-12 * abs(value)
    np.testing.assert_allclose(trainer.params["w"], params["w"] - 1e-4 * grads["w"], rtol=1e-12)


class CountedName(str):
    """A name that counts how often it is hashed: every set or dict operation on it, but a copy of a dict's keys
    (which reuses the stored hashes: see CountedSection)."""

    hashes = 0

    def __hash__(self):
        CountedName.hashes += 1
        return str.__hash__(self)


class CountedSection(dict):
    """A section of the spec that counts the names it gives when iterated (set(section), list(section), ...)."""

    def __iter__(self):
        for name in super().__iter__():
            CountedName.hashes += 1
            yield name


def test_parsing_a_spec_is_linear_in_its_nodes():
    """spec.parse touches each name a bounded number of times, whatever the size (it built a set of every name
    per node once: quadratic, 8 s for 20,000 nodes). Counted, not timed: the names count their hashes, the
    sections their iterations."""
    import tomllib

    from graphc import spec

    per_node = []
    for n in (400, 800):
        data = tomllib.loads(chain_spec(n))
        for key in ("inputs", "params", "nodes"):
            data[key] = CountedSection((CountedName(name), value) for name, value in data[key].items())
        CountedName.hashes = 0
        spec.parse(data)
        per_node.append(CountedName.hashes / n)
    assert per_node[1] < 1.1 * per_node[0] and per_node[1] < 40, per_node
