"""Fuzzed gradients: random DAGs over the op set, compiled, checked against finite differences and NumPy.

hypothesis draws a *recipe* (a list of nodes: leaves with shapes, ops with operands given by position) with
random broadcast-compatible shapes (dims 1..4, ranks 0..3), fan-out, repeated operands (``mul(x, x)``), scalar
constants (including 1.0 and -1.0, which the adjoint pass folds), deep chains, and names that collide with the
generated module's own (``np``, ``params``, ``self``, ``lr``, ``loss``, ``dW``, ...). Every sink is reduced
into the loss (an ``mse`` against a target, or the scalar itself), so every param and input reaches it.

Each example checks, in float64:
- ``loss`` and ``predict`` against a NumPy interpreter of the recipe (independent of graphc);
- ``value_and_grad`` against central finite differences (tests/gradcheck.py, the one shared helper);
- formatting by line shape (what long modules get) against black on the whole module;
- ``Trainer.step`` against ``value_and_grad`` over three steps (the loss it returns and the SGD update),
  with the inputs left untouched (Trainer reuses a preallocated workspace: stale or aliased buffers show here).

``make test`` runs ``GRAPHC_FUZZ_EXAMPLES`` examples (default 50); ``make fuzz`` runs 5000. A failure prints the
recipe as builder code; ``pytest tests/test_fuzz.py --hypothesis-seed=N`` replays a run.
"""

import inspect
import os
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

import graphc as gc
from graphc import compiler
from graphc.codegen import _format_by_shape, format_source
from graphc.graph import INPUT_RESERVED
from gradcheck import check_gradients

EXAMPLES = int(os.environ.get("GRAPHC_FUZZ_EXAMPLES", "50"))
OPS = ("add", "sub", "mul", "matmul", "relu")
CONSTANTS = (0.5, -2.0, 3.0, 1.0, -1.0, 0.0)
# Valid names that a careless code generator would trip over: its own variables, builtins, module globals,
# the adjoint's naming scheme. Trainer.fit's keywords (INPUT_RESERVED) are rejected for inputs.
NAMES = (
    "np", "params", "self", "lr", "grads", "loss", "step", "fit", "Trainer", "INPUTS", "PARAMS", "DTYPE", "LR",
    "ITERATIONS", "init_params", "predict", "value_and_grad", "float", "sum", "input", "print", "range", "len",
    "max", "isinstance", "ValueError", "rng", "seed", "value", "name", "inputs", "losses", "trainer", "out",
    "dW", "dx", "d", "const", "x_err", "T", "match", "case", "type", "buf", "ws", "workspace", "scratch",
    "mask", "tmp", "item", "copy", "where", "maximum",
)
MARGIN = 1e-3  # no relu pre-activation this close to its kink (finite differences step 1e-6 over it)
BOUND = 1e4  # |every intermediate value| (deep chains of mul(x, x) grow fast); about 3% of graphs exceed it
LR = 0.01

dims = st.integers(1, 4)
shapes = st.lists(dims, min_size=0, max_size=3).map(tuple)


def broadcast(*shapes):
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


@st.composite
def recipes(draw):
    """A random graph as a list of nodes: dict(kind, name, shape, args, attrs); args are earlier positions."""
    nodes = []
    taken = set()

    def name_for(kind):
        if draw(st.integers(0, 3)) == 0:
            free = [n for n in NAMES if n not in taken and not (kind == "input" and n in INPUT_RESERVED)]
            if free:
                name = draw(st.sampled_from(free))
                taken.add(name)
                return name
        if kind in ("input", "param"):  # leaves need names; the builder names the rest
            k = len(nodes)
            while f"{kind}{k}" in taken:
                k += 1
            taken.add(f"{kind}{k}")
            return f"{kind}{k}"
        return None

    def add(kind, shape, args=(), **attrs):
        nodes.append(dict(kind=kind, name=name_for(kind), shape=tuple(shape), args=list(args), attrs=attrs))
        return len(nodes) - 1

    def leaf(shape):
        if shape == () and draw(st.integers(0, 3)) == 0:
            return add("const", (), value=draw(st.sampled_from(CONSTANTS)))
        kind = draw(st.sampled_from(("param", "param", "input")))
        if kind == "param":
            return add("param", shape, init=draw(st.sampled_from(("randn", "zeros", "ones", 0.5))))
        return add("input", shape)

    def partner_shape(s):
        """A shape that broadcasts with ``s`` (either may be the larger); ranks stay <= 3."""
        rank = draw(st.integers(0, 3))
        t = []
        for i in range(rank):
            j = len(s) - rank + i
            if j < 0 or s[j] == 1:
                t.append(draw(dims))
            else:
                t.append(draw(st.sampled_from((s[j], 1))))
        return tuple(t)

    def compatible(pred):
        return [i for i, n in enumerate(nodes) if pred(n["shape"])]

    for _ in range(draw(st.integers(1, 3))):
        leaf(draw(shapes))
    for _ in range(draw(st.integers(1, 10))):
        # deep chains: half the time the newest node is the first operand
        a = len(nodes) - 1 if draw(st.booleans()) else draw(st.integers(0, len(nodes) - 1))
        s = nodes[a]["shape"]
        op = draw(st.sampled_from(OPS))
        if op == "relu":
            add("relu", s, [a])
            continue
        if op == "matmul" and len(s) != 2:
            op = "mul"
        if op == "matmul":
            left = draw(st.booleans())  # a @ b, or b @ a
            need = (lambda t: len(t) == 2 and t[0] == s[1]) if left else (lambda t: len(t) == 2 and t[1] == s[0])
            existing = compatible(need)
            if existing and draw(st.booleans()):
                b = draw(st.sampled_from(existing))
            else:
                b = leaf((s[1], draw(dims)) if left else (draw(dims), s[0]))
            x, y = (a, b) if left else (b, a)
            add("matmul", (nodes[x]["shape"][0], nodes[y]["shape"][1]), [x, y])
            continue
        how = draw(st.sampled_from(("same", "existing", "leaf", "leaf", "number")))
        existing = compatible(lambda t: broadcast(s, t) is not None)
        if how == "same":
            b = a  # a repeated operand: mul(x, x)
        elif how == "existing" and existing:
            b = draw(st.sampled_from(existing))
        elif how == "number":
            b = draw(st.sampled_from(CONSTANTS))  # a Python number: the builder makes it a constant
        else:
            b = leaf(partner_shape(s))
        args = [a, b] if draw(st.booleans()) else [b, a]
        add(op, broadcast(*[nodes[i]["shape"] if isinstance(i, int) else () for i in args]), args)

    # every sink (param and input leaves included) goes into the loss: nothing is unused
    used = {i for n in nodes for i in n["args"] if isinstance(i, int)}
    sinks = [i for i, n in enumerate(nodes) if i not in used and n["kind"] != "const"]
    terms = []
    for i in sinks:
        s = nodes[i]["shape"]
        if s == () and draw(st.booleans()):
            terms.append(i)
            continue
        same = [j for j in compatible(lambda t: t == s) if j != i and nodes[j]["kind"] != "const"]
        target = draw(st.sampled_from(same)) if same and draw(st.booleans()) else add("input", s)
        pair = [i, target] if draw(st.booleans()) else [target, i]
        terms.append(add("mse", (), pair, reduction=draw(st.sampled_from(("mean", "sum")))))
    loss = terms[0]
    for t in terms[1:]:
        loss = add(draw(st.sampled_from(("add", "add", "sub", "mul"))), (), [loss, t])
    assume(any(n["kind"] == "param" for n in nodes))
    ops = [i for i, n in enumerate(nodes) if n["kind"] not in ("param", "input", "const") and i != loss]
    outputs = draw(st.lists(st.sampled_from(ops), max_size=2, unique=True)) if ops else []
    return nodes, loss, outputs


def build(recipe):
    """The recipe through the builder API; returns the graph and one Tensor per recipe node."""
    nodes, loss, outputs = recipe
    g = gc.Graph("fuzz")
    handles = []
    for n in nodes:
        if n["kind"] == "input":
            t = g.input(n["name"], n["shape"])
        elif n["kind"] == "param":
            t = g.param(n["name"], n["shape"], init=n["attrs"]["init"])
        elif n["kind"] == "const":
            t = g.const(n["attrs"]["value"], name=n["name"])
        else:
            args = [handles[i] if isinstance(i, int) else i for i in n["args"]]
            t = g.apply(n["kind"], *args, name=n["name"], **n["attrs"])
        assert t.shape == n["shape"], (n, t.shape)
        handles.append(t)
    return g, handles


def as_code(recipe) -> str:
    """The recipe as builder code, for the failure report."""
    nodes, loss, outputs = recipe
    lines = ['g = gc.Graph("fuzz")']
    for i, n in enumerate(nodes):
        name = f", name={n['name']!r}" if n["name"] else ""
        if n["kind"] in ("input", "param"):
            extra = f", init={n['attrs']['init']!r}" if n["kind"] == "param" else ""
            lines.append(f"t{i} = g.{n['kind']}({n['name']!r}, {n['shape']}{extra})")
        elif n["kind"] == "const":
            lines.append(f"t{i} = g.const({n['attrs']['value']!r}{name})")
        else:
            args = ", ".join(f"t{a}" if isinstance(a, int) else repr(a) for a in n["args"])
            attrs = "".join(f", {k}={v!r}" for k, v in n["attrs"].items())
            lines.append(f"t{i} = g.apply({n['kind']!r}, {args}{name}{attrs})  # {n['shape']}")
    lines.append(f"mod = gc.compile(g, loss=t{loss}, outputs=[{', '.join(f't{o}' for o in outputs)}]).load()")
    return "\n".join(lines)


def evaluate(recipe, handles, params, inputs):
    """Every node's value by plain NumPy over the recipe; also the relu pre-activations."""
    nodes = recipe[0]
    values, pre = [], []
    for n, t in zip(nodes, handles):
        kind = n["kind"]
        args = [values[i] if isinstance(i, int) else np.float64(i) for i in n["args"]]
        if kind == "input":
            v = inputs[t.name]
        elif kind == "param":
            v = params[t.name]
        elif kind == "const":
            v = np.float64(n["attrs"]["value"])
        elif kind == "add":
            v = args[0] + args[1]
        elif kind == "sub":
            v = args[0] - args[1]
        elif kind == "mul":
            v = args[0] * args[1]
        elif kind == "matmul":
            v = args[0] @ args[1]
        elif kind == "relu":
            pre.append(args[0])
            v = np.maximum(args[0], 0.0)
        elif kind == "mse":
            err = (args[0] - args[1]) ** 2
            v = np.sum(err) if n["attrs"]["reduction"] == "sum" else np.mean(err)
        values.append(np.asarray(v, dtype=np.float64))
    return values, pre


def well_conditioned(values, pre) -> bool:
    """Finite, bounded, and no relu pre-activation near its kink (exact zeros are stable: relu of a relu)."""
    if not all(np.all(np.isfinite(v)) and np.all(np.abs(v) <= BOUND) for v in values):
        return False
    return all(np.all((p == 0) | (np.abs(p) >= MARGIN)) for p in pre)


def draw_values(recipe, handles, seed):
    """Params (|x| >= 0.1, away from relu kinks) and inputs, standard normal, by name."""
    rng = np.random.default_rng(seed)
    params, inputs = {}, {}
    for n, t in zip(recipe[0], handles):
        if n["kind"] == "param":
            value = rng.standard_normal(n["shape"])
            params[t.name] = np.array(value + np.where(value >= 0, 0.1, -0.1))  # 0-d: an array, not a scalar
        elif n["kind"] == "input":
            inputs[t.name] = np.array(rng.standard_normal(n["shape"]))
    return params, inputs


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(recipe=recipes(), seed=st.integers(0, 2**16))
def test_random_graphs(recipe, seed):
    note(as_code(recipe))
    note(f"seed={seed}")
    g, handles = build(recipe)
    params, by_name = draw_values(recipe, handles, seed)
    values, pre = evaluate(recipe, handles, params, by_name)
    assume(well_conditioned(values, pre))  # before compiling: rejected examples cost little
    nodes, loss_at, outputs_at = recipe
    outputs = [handles[i] for i in outputs_at] or None
    before_black = []
    with mock.patch.object(compiler, "format_source", lambda text: before_black.append(text) or format_source(text)):
        module = gc.compile(g, loss=handles[loss_at], outputs=outputs, lr=LR)
    # long modules are formatted by line shape: the same bytes as black's, checked on every random module here
    assert _format_by_shape(before_black[0]) == module.source
    mod = module.load()
    assert mod.PARAMS == tuple(params) and set(mod.INPUTS) == set(by_name)
    inputs = tuple(by_name[k] for k in mod.INPUTS)
    # rounding in a value (and so in the differences) grows with the largest value it passes through
    scale = 1.0 + max(float(np.max(np.abs(v), initial=0.0)) for v in values)

    # forward: loss and predict against the interpreter
    expected_loss = float(values[loss_at])
    assert abs(mod.loss(params, *inputs) - expected_loss) <= 1e-12 * scale
    if outputs_at:
        wanted = list(inspect.signature(mod.predict).parameters)[1:]
        got = mod.predict(params, **{k: by_name[k] for k in wanted})
        got = got if len(outputs_at) > 1 else (got,)
        for i, value in zip(outputs_at, got):
            np.testing.assert_allclose(value, values[i], rtol=0, atol=1e-12 * scale, err_msg=handles[i].name)

    # backward: value_and_grad against central differences
    kept = {k: v.copy() for k, v in by_name.items()}
    check_gradients(mod, params, inputs, rtol=1e-5, atol=1e-8 * scale)
    for k, v in by_name.items():
        np.testing.assert_array_equal(v, kept[k], err_msg=f"value_and_grad changed input {k!r}")

    # Trainer.step == value_and_grad + SGD, step after step (workspace reuse), inputs untouched. Trainer may
    # compute in another order (in place, into buffers): agreement to rounding, never exact equality.
    lr = LR / scale
    trainer = mod.Trainer({k: v.copy() for k, v in params.items()}, lr=lr)
    state = trainer.params
    for step in range(3):
        with np.errstate(all="ignore"):
            value, grads = mod.value_and_grad({k: v.copy() for k, v in state.items()}, *inputs)
        if not (np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads.values())):
            break  # a steep polynomial (mul(x, x) again and again) can leave the bounded region after a step
        before = {k: v.copy() for k, v in state.items()}
        got = trainer.step(*inputs)
        assert abs(got - value) <= 1e-12 * (scale + abs(value)), \
            f"step {step}: Trainer.step gives {got}, value_and_grad {value}"
        assert trainer.params is state
        for k in mod.PARAMS:
            size = scale + float(np.max(np.abs(grads[k]), initial=0.0))
            np.testing.assert_allclose(state[k], before[k] - lr * grads[k], rtol=1e-12, atol=1e-12 * lr * size,
                                       err_msg=f"step {step}: the update of {k!r}")
        for k, v in by_name.items():
            np.testing.assert_array_equal(v, kept[k], err_msg=f"Trainer.step changed input {k!r}")
