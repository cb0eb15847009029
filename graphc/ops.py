"""The op table. Find an op here and you find its shape rule, its gradient rule and its template side by side.

A shape rule maps the operand shapes (and the attrs) to the result shape, raising ShapeError. A dimension is an int
or a name ("N", sized at run time): equal names are equal, and a name is never provably equal to an int or to
another name. An op with integer operands (``int_operands``) also gets the positions that are integer.
A gradient (VJP) rule builds adjoint-graph nodes through the builder ``b`` (see autodiff.py): given the forward
node ``v``, its operands ``xs`` (forward node names) and ``g``, the adjoint of ``v``, it returns one gradient per
operand, already summed back to that operand's shape. Nothing here touches arrays.
A template is the macro of the same name in templates/ops.j2, unless ``template`` says otherwise.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable

from .errors import GraphError, ShapeError


@dataclass(frozen=True)
class Op:
    name: str
    arity: int | tuple | None  # None: any number of operands; a tuple: any of those numbers
    shape: Callable
    vjp: Callable | None = None
    attrs: dict = field(default_factory=dict)  # attr name -> allowed strings (tuple), a Check, or a type (internal)
    defaults: dict = field(default_factory=dict)
    public: bool = True  # usable in specs and the builder; the others only appear in adjoint graphs
    inline: bool = False  # rendered inside its consumers' expressions, never as a statement of its own
    template: str = ""
    # Trainer's workspace form (the macro ``<template>_into`` in ops.j2, if there is one):
    inplace: bool | tuple = False  # elementwise: may write into the buffer of an operand (or of those positions)
    scratch: bool = False  # it needs a temporary shaped like its first operand...
    scratch_from: int | None = None  # ...which may be the buffer of this operand, if it dies there
    scratches: Callable | None = None  # or several temporaries: (shapes, attrs) -> [(shape, dtype or None)]
    int_operands: tuple = ()  # positions where an integer input is allowed (class indices)...
    classes: tuple = (0, -1)  # ...whose count is the size of this (operand, axis): the logits' last axis
    bool_operands: tuple = ()  # positions where a boolean input is allowed (where's condition)
    template_attrs: Callable | None = None  # (operand shapes, attrs, dtype, into) -> the attrs its macros take
    keeps: str | tuple = ()  # the adjoint op(s) its workspace form computes on the way, kept for the backward
    own_array: bool = False  # it gives a gradient an array of its own (its statement's note says so)
    loss: bool = False  # a loss: a sum or a mean over its rows (reduction=), which training.loss_reduction reads
    onnx: str = ""  # the ONNX op type it is, one node of the same operands and no attributes (graphc/onnx reads it)
    # How training.loss_reduction follows a sum or a mean of the batch's rows through it:
    reduces: str | None = None  # "sum" or "mean": it reduces over axes (the rows, or others)
    linear: tuple = ()  # the operands it is linear in when the others are free of the batch (a constant factor)
    terms: bool = False  # it adds or subtracts its operands
    # A backend that fuses (backends.Backend.fuse) puts chains of these into one kernel each (fusion.py):
    kernel: bool = False  # elementwise, with a C macro of its name in templates/kernels.j2
    multipass: bool = False  # its NumPy workspace form takes several passes over memory: worth a kernel alone
    attr_operands: tuple = ()  # attrs that may also come as trailing number operands: pow(x, 2.0), clip(x, 0, 6)
    helpers: tuple = ()  # functions of the generated module its macros call (ops.j2's helper_<name>)
    positional: tuple = ()  # attrs a call may also give by position, after the operands: max_pool2d(x, 2)
    dtype: str | None = None  # the result's dtype when it is not the operands' (an argmax: "int64")
    backends: tuple = ("numpy", "cupy")  # the array backends it has templates for
    # Training and evaluation modes (DESIGN section 14): its macros take ``train`` (True, False, or the variable of
    # loss/value_and_grad) and ``rng`` (the numpy.random.Generator it draws from); ``keep``: see ``draws``
    modes: bool = False  # its two modes differ (the module's MODES_DIFFER)
    draws: bool = False  # its kept value (``keeps``) is random: every function's forward writes it, none recomputes it
    running: bool = False  # Trainer.step updates running statistics (trainable = false params) in place

    @property
    def macro(self) -> str:
        return self.template or self.name

    @property
    def kept(self) -> tuple:
        """The adjoint ops of ``keeps``, in the order of the scratch slots the workspace form writes them to."""
        return (self.keeps,) if isinstance(self.keeps, str) else self.keeps


OPS: dict[str, Op] = {}


def op(name, arity, shape, vjp=None, **kw) -> None:
    OPS[name] = Op(name, arity, shape, vjp, **kw)


def fmt(shape) -> str:
    """``(N, 64)``: a shape as Python source (in messages, and in the generated code, where a named dimension is
    the function's variable of that name)."""
    dims = [str(d) for d in shape]
    return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"


def size_text(dims) -> str:
    """The number of elements of a shape, as a Python operand: ``N``, ``(N * 10)``; ints folded."""
    fixed = math.prod(d for d in dims if not isinstance(d, str))
    factors = [d for d in dims if isinstance(d, str)] + ([str(fixed)] if fixed != 1 or not any(
        isinstance(d, str) for d in dims) else [])
    return factors[0] if len(factors) == 1 else f"({' * '.join(factors)})"


def fmt_dim(d) -> str:
    return repr(d) if isinstance(d, str) else str(d)


def same_dim(a, b) -> bool:
    """Two dimensions are provably equal: the same int or the same name."""
    return a == b and isinstance(a, str) == isinstance(b, str)


@dataclass(frozen=True)
class Check:
    """An attribute validator: ``test(value)`` says whether ``value`` is allowed; ``what`` says what is."""

    test: Callable
    what: str
    convert: Callable = lambda value: value


def as_float(x) -> float:
    """``float(x)``, with an int too large for a float (TOML and JSON have no limit) as inf, not an exception."""
    try:
        return float(x)
    except OverflowError:
        return math.inf


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


AXIS = Check(lambda v: v is None or is_int(v) or isinstance(v, tuple) and all(is_int(a) for a in v),
             "an int, a tuple of ints or None", lambda v: v if v is None else tuple(map(int, v)) if isinstance(v, tuple)
             else int(v))
ONE_AXIS = Check(is_int, "an int", int)
BOOL = Check(lambda v: isinstance(v, bool), "True or False")
NUMBER = Check(lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v),
               "a finite number", float)
REDUCTION = ("mean", "sum")


def check_attrs(op: Op, attrs: dict, node=None) -> dict:
    """Validate ``attrs`` against the op's allowed values and fill in defaults."""
    if not isinstance(attrs, dict):
        raise GraphError(f"attrs of {op.name} must be a mapping, got {attrs!r}", node=node)
    for key, value in attrs.items():
        allowed = op.attrs.get(key)
        if allowed is None:
            known = ", ".join(op.attrs) or "none"
            raise GraphError(f"{op.name} has no attribute {key!r} (allowed: {known})", node=node)
        if isinstance(allowed, tuple) and (not isinstance(value, str) or value not in allowed):
            choices = ", ".join(repr(a) for a in allowed)
            raise GraphError(f"{op.name} attribute {key}={value!r} is not one of {choices}", node=node)
        if isinstance(allowed, Check):
            if not allowed.test(value):
                raise GraphError(f"{op.name} attribute {key}={value!r} must be {allowed.what}", node=node)
            attrs = {**attrs, key: allowed.convert(value)}
    return {**op.defaults, **attrs}


# ---- shape rules -----------------------------------------------------------------------------------------

def broadcast_shape(shapes, attrs):
    """NumPy broadcasting, with named dimensions: a name matches itself and 1, never another int or name."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(-rank, 0):
        dims = list(dict.fromkeys(s[axis] for s in shapes if len(s) >= -axis and s[axis] != 1))
        if len(dims) > 1:
            why = "" if all(isinstance(d, int) for d in dims) else \
                f" (dimension {fmt_dim(dims[0])} and {fmt_dim(dims[1])} cannot be proven equal)"
            raise ShapeError(f"shapes {' and '.join(fmt(s) for s in shapes)} do not broadcast{why}")
        out.append(dims[0] if dims else 1)
    return tuple(out)


def matmul_shape(shapes, attrs):
    """NumPy's matmul: the leading (batch) dimensions broadcast; a 1-D operand is a row (a) or a column (b) whose
    axis the result drops."""
    a, b = shapes
    if not a or not b:
        raise ShapeError(f"matmul needs operands of at least 1 dimension, got {fmt(a)} and {fmt(b)}")
    a2, b2 = (1, *a) if len(a) == 1 else a, (*b, 1) if len(b) == 1 else b
    if not same_dim(a2[-1], b2[-2]):
        why = f"{a2[-1]} != {b2[-2]}" if isinstance(a2[-1], int) and isinstance(b2[-2], int) else \
            f"dimension {fmt_dim(a2[-1])} and {fmt_dim(b2[-2])} cannot be proven equal"
        raise ShapeError(f"shapes {fmt(a)} and {fmt(b)} do not align ({why})")
    return broadcast_shape([a2[:-2], b2[:-2]], attrs) + a2[-2:-1] * (len(a) > 1) + b2[-1:] * (len(b) > 1)


def same_shape(shapes, attrs):
    return shapes[0]


def transpose_shape(shapes, attrs):
    """np.transpose: ``axes`` a permutation of the operand's axes, or None (all reversed: ``a.T``)."""
    (shape,), perm = shapes, attrs.get("axes")
    if perm is None:
        if len(shape) != 2:
            raise ShapeError(f"transpose needs a 2-D operand, got {fmt(shape)} (or axes=(...))")
        return tuple(reversed(shape))
    if sorted(a % len(shape) if -len(shape) <= a < len(shape) else a for a in perm) != list(range(len(shape))):
        raise ShapeError(f"transpose axes {fmt(perm)} are not a permutation of the {len(shape)} axes of {fmt(shape)}")
    return tuple(shape[a] for a in perm)


def axes(axis, shape) -> tuple:
    """``axis`` (None, an int or a tuple, negative allowed) as sorted non-negative axes of ``shape``."""
    rank = len(shape)
    given = tuple(range(rank)) if axis is None else axis if isinstance(axis, tuple) else (axis,)
    for a in given:
        if not -rank <= a < rank:
            raise ShapeError(f"axis {a} is out of range for shape {fmt(shape)} ({rank}-D)")
    out = sorted(a % rank for a in given)
    if len(set(out)) != len(out):
        raise ShapeError(f"axis {axis} names an axis twice")
    return tuple(out)


def reduce_shape(shapes, attrs):
    (shape,), drop = shapes, axes(attrs["axis"], shapes[0])
    if attrs["keepdims"]:
        return tuple(1 if i in drop else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in drop)


def along_axis_shape(shapes, attrs):  # softmax, log_softmax
    axes(attrs["axis"], shapes[0])
    return shapes[0]


def cross_entropy_shape(shapes, attrs, ints=()):
    """logits (N, C) or (N, C, d1, ...), as torch: the classes along axis 1; target class indices (N, d1, ...) or
    probabilities shaped like the logits."""
    logits, target = shapes
    if len(logits) < 2:
        raise ShapeError(f"cross_entropy needs logits of shape (N, C) or (N, C, d1, ...), got {fmt(logits)}")
    if len(logits) > 2 and any(isinstance(d, str) for d in logits[1:]):
        raise ShapeError(f"cross_entropy of logits {fmt(logits)}: only the batch dimension may be named")
    if 1 in ints:  # class indices
        rows = logits[:1] + logits[2:]
        if len(target) != len(rows) or not all(same_dim(a, b) for a, b in zip(target, rows)):
            raise ShapeError(f"class indices {fmt(target)} must have shape {fmt(rows)} for logits {fmt(logits)}")
    elif target != logits:
        raise ShapeError(f"target probabilities {fmt(target)} must have the shape of the logits {fmt(logits)} "
                         "(class indices are an int64 input)")
    return ()


# ---- workspace temporaries (Op.scratches): [(shape, dtype or None: the op's)] -----------------------------

def reduced_row(shapes, attrs):  # the max or the sum along the axis, kept as a size-1 axis
    axis = axes(attrs["axis"], shapes[-1])[0]
    return tuple(1 if i == axis else d for i, d in enumerate(shapes[-1]))


def softmax_scratch(shapes, attrs):
    return [(reduced_row(shapes, attrs), None)]


def log_softmax_scratch(shapes, attrs):  # the max, then the log of the sum
    return [(reduced_row(shapes, attrs), None)] * 2


def ce_rows(logits) -> tuple:
    """cross_entropy's rows: the logits' shape without the class axis (1)."""
    return tuple(logits[:1]) + tuple(logits[2:])


def cross_entropy_scratch(shapes, attrs):
    """The softmax (kept for the gradient), two rows and, for class indices, their flat indices (two arrays for
    logits of more than 2 dimensions); for probabilities, the terms of the loss."""
    logits, target = shapes
    n = ce_rows(logits)
    last = [(n, "int64")] * (1 if len(logits) == 2 else 2) if len(target) < len(logits) else [(logits, None)]
    return [(logits, None), (n, None), (n, None)] + last


def cross_entropy_grad_scratch(shapes, attrs):  # a row, and the targets' flat indices
    scale, probs, target = shapes
    n = ce_rows(probs)
    return [(n, None)] + ([(n, "int64")] * (1 if len(probs) == 2 else 2) if len(target) < len(probs) else [])


def loss_shape(shapes, attrs):
    if shapes[0] != shapes[1]:
        raise ShapeError(f"prediction {fmt(shapes[0])} and target {fmt(shapes[1])} differ")
    return ()


def bce_shape(shapes, attrs):
    if shapes[0] != shapes[1]:
        raise ShapeError(f"logits {fmt(shapes[0])} and target {fmt(shapes[1])} differ")
    return ()


def attr_shape(shapes, attrs):
    return attrs["shape"]


def scalar_shape(shapes, attrs):
    return ()


# ---- template arguments (Op.template_attrs): what the macros take besides the operands' text ---------------
# ``into``: for the workspace form (``<macro>_into``).

def sum_to_template(shapes, attrs, dtype, into):
    """``np.sum(g, axis=...)`` drops the summed axes; reshape only where a kept size-1 axis must come back."""
    (in_shape,), axis, shape = shapes, attrs["axis"], attrs["shape"]
    kept = tuple(d for i, d in enumerate(in_shape) if i not in axis)
    out = {
        "axis": None if len(axis) == len(in_shape) else (axis[0] if len(axis) == 1 else axis),
        "reshape": None if kept == tuple(shape) else fmt(shape),
    }
    if into:
        out["keepdims"] = fmt(1 if i in axis else d for i, d in enumerate(in_shape))
        out["size"] = math.prod(shape) if attrs["rows"] else None  # the sum of g's rows, (rows, size)
    return out


def fill_template(shapes, attrs, dtype, into):
    return {**attrs, "dtype": dtype, "shape": fmt(attrs["shape"])}


def broadcast_template(shapes, attrs, dtype, into):  # a scalar g (1 / N: a Python number) fills a new array
    return {**attrs, "scalar": len(shapes[0]) == 0, "dtype": dtype}


def mse_template(shapes, attrs, dtype, into):  # the workspace form divides by the run-time number of elements
    return {**attrs, "size": size_text(shapes[0])} if into else attrs


def cross_entropy_template(shapes, attrs, dtype, into):  # the target: class indices, or probabilities
    logits = shapes[0]
    return {**attrs, "indices": len(shapes[1]) < len(logits), **ce_spatial(logits)}


def ce_spatial(logits) -> dict:
    """For logits (N, C, d1, ...): C and S = d1 * ... (the flat index of [n, c, s] is n * C * S + c * S + s)."""
    if len(logits) == 2:
        return {"spatial": None}
    return {"spatial": {"C": logits[1], "S": math.prod(logits[2:]), "rank": len(logits)}}


# ---- gradient rules --------------------------------------------------------------------------------------

def add_vjp(b, v, xs, g):
    return [b.unbroadcast(g, x) for x in xs]


def sub_vjp(b, v, xs, g):
    x, y = xs
    return [b.unbroadcast(g, x), b.unbroadcast(b.neg(g), y)]


def mul_vjp(b, v, xs, g):
    x, y = xs
    return [b.unbroadcast(b.mul(g, b.fwd(y)), x), b.unbroadcast(b.mul(g, b.fwd(x)), y)]


def div_vjp(b, v, xs, g):
    x, y = xs
    q = b.div(g, b.fwd(y))  # d(x / y) = dx / y - (x / y) * dy / y
    return [b.unbroadcast(q, x), b.unbroadcast(b.neg(b.mul(q, b.fwd(v))), y)]


def matmul_vjp(b, v, xs, g):
    """dx = g @ y^T, dy = x^T @ g (^T: the last two axes swapped), each summed over the batch dimensions that
    broadcasting gave it. A 1-D operand is seen as a row (x) or a column (y), and g with that axis put back."""
    x, y = xs
    one_x, one_y = len(b.shape(x)) == 1, len(b.shape(y)) == 1
    if one_x and one_y:  # a dot product: g is a scalar
        return [b.mul(g, b.fwd(y)), b.mul(g, b.fwd(x))]
    X, Y = b.fwd(x), b.fwd(y)
    if one_x or one_y:
        X = b.node("reshape", X, shape=(1, *b.shape(x)), hint=f"{x}_row") if one_x else X
        Y = b.node("reshape", Y, shape=(*b.shape(y), 1), hint=f"{y}_column") if one_y else Y
        lifted = b.shape(g)[:-1] + (1,) + b.shape(g)[-1:] if one_x else b.shape(g) + (1,)
        g = b.node("reshape", g, shape=lifted, hint=f"d{v}_lifted")
    layer = not (one_x or one_y) and len(b.shape(x)) > 2 and fixed_matrix(b, Y) and own(b, g)  # (..., K) @ (K, N)
    if not (layer or one_x or one_y):
        g = batch_broadcast(b, g, X, Y)
    if layer:  # NumPy's (..., N) @ W.T is twice as slow as the product of its rows
        dx = b.node("matmul_fold", g, b.T(Y))
    else:
        dx = b.matmul(g, b.T(Y))
    if layer and own(b, X):  # every row in one (K, N) product
        dy = b.node("matmul_rows", X, g)
    else:
        dy = b.matmul(b.T(X), g)
    if one_x:  # (..., 1, k): the row's axis dropped again
        dx = b.node("reshape", dx, shape=b.shape(dx)[:-2] + b.shape(dx)[-1:], hint=f"d{x}_rows")
    if one_y:  # (..., k, 1)
        dy = b.node("reshape", dy, shape=b.shape(dy)[:-1], hint=f"d{y}_columns")
    return [b.unbroadcast(dx, x), b.unbroadcast(dy, y)]


def batch_broadcast(b, g, X, Y):
    """A reduction's gradient that broadcasts only along batch axes (x1 = sum(att @ o, axis=1): g (B, T, E) to each of
    H heads) as the view of its operand with size-1 axes there, which matmul broadcasts itself (no copy per head),
    where X and Y both have those axes in full: g @ Y^T and X^T @ g are then whole."""
    data = b.A.nodes[g]
    if data["op"] != "broadcast_to":
        return g
    (src,) = b.A.predecessors(g)
    shape, inserted = data["attrs"]["shape"], data["attrs"]["axis"]
    view = tuple(1 if i in inserted else d for i, d in enumerate(shape)) if inserted else b.shape(src)
    if len(view) != len(shape) or view[-2:] != shape[-2:]:
        return g  # a matrix axis is broadcast too
    for z in (b.shape(X), b.shape(Y)):  # aligned from the right, as matmul broadcasts
        lead = len(shape) - len(z)
        if any(v != d and (i < lead or z[i - lead] != d) for i, (v, d) in enumerate(zip(view, shape))):
            return g
    return src if view == b.shape(src) else b.node("reshape", src, shape=view, hint=f"{src}_heads")


def own(b, v) -> bool:
    """Whether the backward reads ``v`` as an array of its own (not a view, not an input), which NumPy reshapes
    to (rows, last axis) without a copy (a reshape of one is one too): what matmul_rows and matmul_fold need."""
    data = b.A.nodes[v]
    while data["op"] == "reshape":
        (v,) = b.A.predecessors(v)
        data = b.A.nodes[v]
    if data["op"] == "forward":
        return b.G.nodes[v]["op"] != "input"
    return not (data["op"] in OPS and OPS[data["op"]].inline)


def fixed_matrix(b, Y) -> bool:
    """Whether ``Y`` is a matrix of sizes known at compile time (a layer's weight)."""
    shape = b.shape(Y)
    return len(shape) == 2 and all(isinstance(d, int) for d in shape)


def matmul_rows_attrs(shapes, attrs, dtype=None, into=False):
    return {"K": shapes[0][-1], "N": shapes[1][-1]}


def relu_vjp(b, v, xs, g):
    return [b.node("relu_grad", g, b.fwd(v))]  # the output's sign is the input's: keep only the output alive


def mse_vjp(b, v, xs, g):
    pred, target = xs
    two = b.const(2.0)
    if b.attrs(v)["reduction"] == "mean":
        two = b.div(two, b.size(b.shape(pred)))  # the run-time number of elements
    err = b.sub(b.fwd(pred), b.fwd(target), hint=f"{pred}_err")
    dpred = b.mul(g, b.mul(two, err))
    return [dpred, b.neg(dpred)]


def neg_vjp(b, v, xs, g):
    return [b.neg(g)]


def exp_vjp(b, v, xs, g):
    return [b.mul(g, b.fwd(v))]


def log_vjp(b, v, xs, g):
    return [b.div(g, b.fwd(xs[0]))]


def tanh_vjp(b, v, xs, g):
    return [b.node("tanh_grad", g, b.fwd(v))]  # g * (1 - y**2)


def sigmoid_vjp(b, v, xs, g):
    return [b.node("sigmoid_grad", g, b.fwd(v))]  # g * y * (1 - y)


def leaky_relu_vjp(b, v, xs, g):
    return [b.node("leaky_relu_grad", g, b.fwd(xs[0]), negative_slope=b.attrs(v)["negative_slope"])]


def softmax_vjp(b, v, xs, g):
    return [b.node("softmax_grad", g, b.fwd(v), axis=b.attrs(v)["axis"])]  # y * (g - sum(g * y))


def log_softmax_vjp(b, v, xs, g):
    return [b.node("log_softmax_grad", g, b.fwd(v), axis=b.attrs(v)["axis"])]  # g - exp(y) * sum(g)


def sum_vjp(b, v, xs, g):
    attrs = b.attrs(v)
    return [b.expand(g, b.shape(xs[0]), axes(attrs["axis"], b.shape(xs[0])), attrs["keepdims"])]


def mean_vjp(b, v, xs, g):
    attrs, shape = b.attrs(v), b.shape(xs[0])
    drop = axes(attrs["axis"], shape)
    g = b.div(g, b.size([shape[i] for i in drop]))  # the run-time size of the reduced axes
    return [b.expand(g, shape, drop, attrs["keepdims"])]


def transpose_vjp(b, v, xs, g):
    perm = b.attrs(v).get("axes")
    if perm is None:
        return [b.T(g)]
    inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i] % len(perm)))
    return [b.node("transpose", g, axes=inverse, hint=f"d{v}_T")]


def scaled(b, v, g, dims):
    """d loss / d (each term of the loss): ``g``, or ``g / size(dims)`` for reduction='mean' (run-time size)."""
    return b.div(g, b.size(dims)) if b.attrs(v)["reduction"] == "mean" else g


def cross_entropy_vjp(b, v, xs, g):
    logits, target = xs
    indices = len(b.shape(target)) < len(b.shape(logits))
    scale = scaled(b, v, g, ce_rows(b.shape(logits)))  # 'mean' divides by N (times d1 ...), the rows
    probs = b.node("softmax", b.fwd(logits), axis=1, hint=f"{logits}_softmax")  # the forward computed it
    dlogits = b.node("cross_entropy_grad", scale, probs, b.fwd(target), indices=indices)
    if indices:
        return [dlogits, None]
    # d / d target = -log_softmax(logits) * scale
    return [dlogits, b.mul(b.neg(scale), b.node("log_softmax", b.fwd(logits), axis=1))]


def bce_vjp(b, v, xs, g):
    x, t = xs
    scale = scaled(b, v, g, b.shape(x))
    # d / dx = (sigmoid(x) - t) * scale; d / dt = -x * scale
    return [b.node("bce_grad", scale, b.fwd(x), b.fwd(t)), b.mul(b.neg(scale), b.fwd(x))]


# ---- the table -------------------------------------------------------------------------------------------
# Public ops: what specs and the builder may use.
op("matmul", 2, matmul_shape, matmul_vjp, onnx="MatMul")
op("add", 2, broadcast_shape, add_vjp, inplace=True, kernel=True, terms=True, onnx="Add")
op("sub", 2, broadcast_shape, sub_vjp, inplace=True, kernel=True, terms=True, onnx="Sub")
op("mul", 2, broadcast_shape, mul_vjp, inplace=True, kernel=True, linear=(0, 1), onnx="Mul")
op("div", 2, broadcast_shape, div_vjp, inplace=True, kernel=True, linear=(0,), onnx="Div")
op("neg", 1, same_shape, neg_vjp, inplace=True, kernel=True, linear=(0,), onnx="Neg")
op("relu", 1, same_shape, relu_vjp, inplace=True, kernel=True, onnx="Relu")
op("exp", 1, same_shape, exp_vjp, inplace=True, kernel=True, onnx="Exp")
op("log", 1, same_shape, log_vjp, inplace=True, kernel=True, onnx="Log")
op("tanh", 1, same_shape, tanh_vjp, inplace=True, kernel=True, onnx="Tanh")
op("sigmoid", 1, same_shape, sigmoid_vjp, inplace=True, kernel=True, multipass=True,
   onnx="Sigmoid")  # exp(-logaddexp(0, -x)): no overflow at -1000
op("leaky_relu", 1, same_shape, leaky_relu_vjp, attrs={"negative_slope": NUMBER},
   defaults={"negative_slope": 0.01}, inplace=True, scratch=True, kernel=True, multipass=True)
op("softmax", 1, along_axis_shape, softmax_vjp, attrs={"axis": ONE_AXIS}, defaults={"axis": -1},
   inplace=True, scratches=softmax_scratch)  # max subtracted; the row max and sum in a small temporary
op("log_softmax", 1, along_axis_shape, log_softmax_vjp, attrs={"axis": ONE_AXIS}, defaults={"axis": -1},
   scratches=log_softmax_scratch)
op("sum", 1, reduce_shape, sum_vjp, attrs={"axis": AXIS, "keepdims": BOOL}, defaults={"axis": None, "keepdims": False},
   reduces="sum")
op("mean", 1, reduce_shape, mean_vjp, attrs={"axis": AXIS, "keepdims": BOOL}, defaults={"axis": None, "keepdims": False},
   reduces="mean")
PERMUTATION = Check(lambda v: v is None or isinstance(v, tuple) and all(is_int(a) for a in v),
                    "a tuple of ints or None", lambda v: v if v is None else tuple(int(a) for a in v))
op("transpose", 1, transpose_shape, transpose_vjp, attrs={"axes": PERMUTATION},
   inline=True)  # a view, folded into its consumer: ``W2.T``, ``q.transpose((0, 2, 1, 3))``
op("mse", 2, loss_shape, mse_vjp, attrs={"reduction": REDUCTION}, defaults={"reduction": "mean"},
   scratch=True, keeps="sub", loss=True,
   template_attrs=mse_template)  # the error pred - target, squared and summed without a temporary
op("cross_entropy", 2, cross_entropy_shape, cross_entropy_vjp, attrs={"reduction": REDUCTION},
   defaults={"reduction": "mean"}, int_operands=(1,), classes=(0, 1), scratches=cross_entropy_scratch, keeps="softmax",
   loss=True,
   template_attrs=cross_entropy_template)
op("binary_cross_entropy_with_logits", 2, bce_shape, bce_vjp, attrs={"reduction": REDUCTION},
   defaults={"reduction": "mean"}, template="bce", scratches=lambda shapes, attrs: [(shapes[0], None)] * 2,
   loss=True)

# Adjoint-only ops: what gradient rules build.
def internal(name, arity, shape, **kw) -> None:
    op(name, arity, shape, public=False, **kw)


internal("relu_grad", 2, same_shape, inplace=True, scratch=True, scratch_from=1, kernel=True,
         multipass=True)  # g where y > 0, else 0
internal("tanh_grad", 2, same_shape, inplace=True, scratch=True, scratch_from=1, kernel=True,
         multipass=True)  # g * (1 - y**2)
internal("sigmoid_grad", 2, same_shape, inplace=True, scratch=True, kernel=True,
         multipass=True)  # g * y * (1 - y): y is read twice
internal("leaky_relu_grad", 2, same_shape, attrs={"negative_slope": float}, inplace=True, scratch=True,
         scratch_from=1, kernel=True, multipass=True)  # g where x > 0, else slope * g
internal("softmax_grad", 2, same_shape, attrs={"axis": int}, scratches=softmax_scratch)  # y * (g - sum(g * y))
internal("log_softmax_grad", 2, same_shape, attrs={"axis": int}, inplace=(1,),
         scratches=softmax_scratch)  # g - exp(y) * sum(g): may write over y, not over g
internal("cross_entropy_grad", 3, lambda shapes, attrs: shapes[1], attrs={"indices": bool}, inplace=(1,),
         scratches=cross_entropy_grad_scratch, template_attrs=lambda shapes, attrs, dtype, into: {
             **attrs, **ce_spatial(shapes[1])})  # (softmax - target) * scale, from the softmax
internal("bce_grad", 3, lambda shapes, attrs: shapes[1], inplace=(1,))  # (sigmoid(x) - t) * scale: over x, not t
internal("broadcast_to", 1, attr_shape, attrs={"axis": tuple, "shape": tuple},
         template_attrs=broadcast_template)  # a reduction's gradient
internal("matmul_rows", 2, lambda shapes, attrs: (shapes[0][-1], shapes[1][-1]),
         template_attrs=matmul_rows_attrs)  # x (..., K), g (..., N) -> x^T g over every row: (K, N)
internal("matmul_fold", 2, matmul_shape, template_attrs=matmul_rows_attrs)  # g (..., K) @ W (K, N) as (rows, K) @ W
internal("sum_to", 1, attr_shape, attrs={"axis": tuple, "shape": tuple, "rows": bool},
         template_attrs=sum_to_template)  # unbroadcast g back to ``shape``
internal("accumulate", None, same_shape, inplace=True,
         kernel=True)  # fan-out: the sum of every consumer's contribution
internal("copy", 1, same_shape, own_array=True)  # a gradient that would alias a param or input gets its own array
internal("size", 0, scalar_shape, attrs={"dims": tuple}, inline=True)  # the product of dims: ``(N * 10)``
internal("fill", 0, attr_shape, attrs={"value": float, "shape": tuple}, own_array=True,
         template_attrs=fill_template)  # a constant gradient, as an array


# ---- sequence models (DESIGN section 15): elementwise and normalisation ops ---------------------------------
# The erf family's workspace forms call the module's _erf or _normal_cdf (templates/ops.j2, helper_erf,
# helper_normal_cdf, both through _erf_pieces) on these temporaries: two arrays shaped like the operand and one of
# table rows (intp).
def erf_scratch(shapes, attrs):
    return [(shapes[-1], None)] * 2 + [(shapes[-1], "intp")]


def gelu_scratch(shapes, attrs):
    """The tanh form's three arrays; the erf form's normal cdf (the kept value: Op.keeps) and _normal_cdf's."""
    if attrs["approximate"] == "tanh":
        return [(shapes[-1], None)] * 3
    return [(shapes[-1], None)] + erf_scratch(shapes, attrs)


def clip_check(attrs) -> None:
    if attrs["min"] is None and attrs["max"] is None:
        raise ShapeError("clip needs a min or a max (both are None)")


def clip_shape(shapes, attrs):
    clip_check(attrs)
    return shapes[0]


def erf_vjp(b, v, xs, g):  # 2 / sqrt(pi) * exp(-x**2)
    return [b.node("erf_grad", g, b.fwd(xs[0]))]


def sqrt_vjp(b, v, xs, g):  # g / (2 * y)
    return [b.node("sqrt_grad", g, b.fwd(v))]


def gelu_vjp(b, v, xs, g):  # torch's: g * (cdf + x * pdf), the normal's cdf the one the forward computed
    x = b.fwd(xs[0])
    if b.attrs(v)["approximate"] == "tanh":
        return [b.node("gelu_tanh_grad", g, x)]
    return [b.node("gelu_grad", g, x, b.node("normal_cdf", x, hint=f"{xs[0]}_cdf"))]


def silu_vjp(b, v, xs, g):  # g * s * (1 + x * (1 - s)), s = sigmoid(x)
    return [b.node("silu_grad", g, b.fwd(xs[0]))]


def softplus_vjp(b, v, xs, g):  # g * sigmoid(x), or g where x > 20
    return [b.node("softplus_grad", g, b.fwd(xs[0]))]


def pow_vjp(b, v, xs, g):  # g * p * x ** (p - 1)
    return [b.node("pow_grad", g, b.fwd(xs[0]), exponent=b.attrs(v)["exponent"])]


def clip_vjp(b, v, xs, g):  # g where min <= x <= max, else 0 (torch.clamp's)
    attrs = b.attrs(v)
    return [b.node("clip_grad", g, b.fwd(xs[0]), min=attrs["min"], max=attrs["max"])]


NUMPY_ONLY = ("numpy",)
BOUND = Check(lambda v: v is None or NUMBER.test(v), "a finite number or None", lambda v: v if v is None else float(v))
op("erf", 1, same_shape, erf_vjp, scratches=erf_scratch, helpers=("erf", "erf_tables"), backends=NUMPY_ONLY,
   onnx="Erf")
op("sqrt", 1, same_shape, sqrt_vjp, inplace=True, onnx="Sqrt")
op("gelu", 1, same_shape, gelu_vjp, attrs={"approximate": ("none", "tanh")}, defaults={"approximate": "none"},
   scratches=gelu_scratch, helpers=("normal_cdf", "erf_tables"), keeps="normal_cdf", backends=NUMPY_ONLY)
op("silu", 1, same_shape, silu_vjp, inplace=True, scratch=True)
op("softplus", 1, same_shape, softplus_vjp, scratches=lambda shapes, attrs: [(shapes[0], "bool_")])
op("pow", 1, same_shape, pow_vjp, attrs={"exponent": NUMBER}, attr_operands=("exponent",), inplace=True)
op("clip", 1, clip_shape, clip_vjp, attrs={"min": BOUND, "max": BOUND}, defaults={"min": None, "max": None},
   attr_operands=("min", "max"), inplace=True, template="clamp")  # ops.j2's `clip` is np.take's mode
internal("erf_grad", 2, same_shape, inplace=True, scratch=True, scratch_from=1)
internal("sqrt_grad", 2, same_shape, inplace=True)
internal("normal_cdf", 1, same_shape, scratches=erf_scratch, helpers=("normal_cdf", "erf_tables"),
         backends=NUMPY_ONLY)  # 0.5 * (1 + erf(x / sqrt(2)))
internal("gelu_grad", 3, same_shape, backends=NUMPY_ONLY)  # g * (cdf + x * pdf(x))
internal("gelu_tanh_grad", 2, same_shape, scratches=lambda shapes, attrs: [(shapes[-1], None)] * 3,
         backends=NUMPY_ONLY)
internal("silu_grad", 2, same_shape, scratch=True)
internal("softplus_grad", 2, same_shape, inplace=(0,), scratches=lambda shapes, attrs: [(shapes[1], None),
                                                                                      (shapes[1], "bool_")])
internal("pow_grad", 2, same_shape, attrs={"exponent": float}, inplace=(1,))
internal("clip_grad", 2, same_shape, attrs={"min": object, "max": object}, inplace=(0,), scratch=True)


def max_vjp(b, v, xs, g):  # the gradient split evenly among equal maxima (or minima), as torch.amax's
    attrs, shape = b.attrs(v), b.shape(xs[0])
    return [b.node("max_grad", g, b.fwd(xs[0]), b.fwd(v), axis=axes(attrs["axis"], shape),
                   keepdims=attrs["keepdims"])]


def max_grad_attrs(shapes, attrs, dtype=None, into=False):
    """The axes to put back into g and y (none when kept, or when y is a scalar) and the axes to count over."""
    g, x, y = shapes
    axis = attrs["axis"]
    return {**attrs, "expand": () if attrs["keepdims"] or y == () else axis,
            "count_axis": None if len(axis) == len(x) else axis}


def kept_shape(shapes, attrs):  # the operand's shape with each reduced axis kept as size 1
    return [(tuple(1 if i in attrs["axis"] else d for i, d in enumerate(shapes[1])), None)]


op("max", 1, reduce_shape, max_vjp, attrs={"axis": AXIS, "keepdims": BOOL}, defaults={"axis": None, "keepdims": False})
op("min", 1, reduce_shape, max_vjp, attrs={"axis": AXIS, "keepdims": BOOL}, defaults={"axis": None, "keepdims": False})
internal("max_grad", 3, lambda shapes, attrs: shapes[1], attrs={"axis": tuple, "keepdims": bool}, inplace=(1,),
         scratches=kept_shape, template_attrs=max_grad_attrs)  # mask * (g / count): max's and min's


# ---- normalisation over the last dimension: layer_norm(x, weight, bias), rms_norm(x, weight) ---------------
def norm_shape(shapes, attrs, op="layer_norm", most=3):
    x, rest = shapes[0], shapes[1:]
    if not 1 <= len(shapes) <= most:
        raise ShapeError(f"{op} takes x and at most {most - 1} more operands ({'weight, bias' if most == 3 else 'weight'})"
                         f", got {len(shapes)}")
    if len(x) == 0:
        raise ShapeError(f"{op} needs an operand of at least one dimension, got a scalar")
    for what, shape in zip(("weight", "bias"), rest):
        if len(shape) != 1 or not same_dim(shape[0], x[-1]):
            raise ShapeError(f"{op} {what} {fmt(shape)} must have shape ({x[-1]},), the last dimension of x {fmt(x)}")
    return x


def norm_row(shapes, attrs):  # a row statistic, the last axis kept as size 1
    return shapes[0][:-1] + (1,)


def norm_scratch(shapes, attrs):  # x_hat and 1 / sqrt(var + eps) (kept for the backward), the squares, the mean
    return [(shapes[0], None), (norm_row(shapes, attrs), None), (shapes[0], None), (norm_row(shapes, attrs), None)]


def norm_grad_shape(shapes, attrs):  # operands (d x_hat, x_hat, r)
    return shapes[1]


def norm_grad_scratch(shapes, attrs):  # an array shaped like x, a row
    return [(shapes[1], None), (shapes[2], None)]


def norm_vjp(b, v, xs, g):
    """d x = (g' - mean(g') - x_hat * mean(g' * x_hat)) * r with g' = g * weight (rms_norm's without mean(g')),
    from x_hat and r = 1 / sqrt(var + eps) as the forward computed them (Op.keeps: they are not computed again);
    d weight = sum of g * x_hat over the leading axes, d bias = sum of g."""
    op, eps = b.G.nodes[v]["op"], b.attrs(v)["eps"]
    x, rest = xs[0], xs[1:]
    xhat = b.node(op, b.fwd(x), eps=eps, hint=f"{x}_normalized") if rest else b.fwd(v)
    rstd = b.node(f"{op}_rstd", b.fwd(x), eps=eps, hint=f"{x}_rstd")
    dxhat = b.mul(g, b.fwd(rest[0]), hint=f"d{v}_scaled") if rest else g
    grads = [b.node(f"{op}_grad", dxhat, xhat, rstd)]
    if rest:
        grads.append(b.unbroadcast(b.mul(g, xhat, hint=f"d{rest[0]}_terms"), rest[0]))
    if len(rest) > 1:
        grads.append(b.unbroadcast(g, rest[1]))
    return grads


POSITIVE = Check(lambda v: NUMBER.test(v) and v > 0, "a positive finite number", float)
EPS = Check(lambda v: v is None or POSITIVE.test(v), "a positive finite number or None (the dtype's epsilon)",
            lambda v: v if v is None else float(v))
op("layer_norm", None, norm_shape, norm_vjp, attrs={"eps": POSITIVE}, defaults={"eps": 1e-5}, inplace=(0,),
   scratches=norm_scratch, keeps=("layer_norm", "layer_norm_rstd"))
op("rms_norm", None, lambda shapes, attrs: norm_shape(shapes, attrs, "rms_norm", 2), norm_vjp, attrs={"eps": EPS},
   defaults={"eps": None}, inplace=(0,), scratches=norm_scratch, keeps=("rms_norm", "rms_norm_rstd"))
internal("layer_norm_rstd", 1, norm_row, attrs={"eps": float})  # 1 / sqrt(var + eps)
internal("rms_norm_rstd", 1, norm_row, attrs={"eps": object})  # 1 / sqrt(mean(x**2) + eps)
internal("layer_norm_grad", 3, norm_grad_shape, inplace=(0, 1), scratches=norm_grad_scratch)  # of (d x_hat, x_hat, r)
internal("rms_norm_grad", 3, norm_grad_shape, inplace=(0, 1), scratches=norm_grad_scratch)


# ---- concat and slice along one axis (slice: a view, like transpose) ----------------------------------------
def concat_shape(shapes, attrs):
    if not shapes:
        raise ShapeError("concat needs at least one operand")
    first = shapes[0]
    if not first:
        raise ShapeError("concat needs operands of at least one dimension, got a scalar")
    (axis,) = axes(attrs["axis"], first)
    for shape in shapes:
        if len(shape) != len(first) or not all(same_dim(a, b) for i, (a, b) in enumerate(zip(shape, first))
                                              if i != axis):
            raise ShapeError(f"concat along axis {attrs['axis']}: shapes {' and '.join(fmt(s) for s in shapes)} "
                             "differ in another dimension")
        if isinstance(shape[axis], str):
            raise ShapeError(f"concat along axis {attrs['axis']}: it is the named dimension {shape[axis]!r}")
    return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1:]


def concat_vjp(b, v, xs, g):  # each operand's part of g: a view
    axis, start, grads = axes(b.attrs(v)["axis"], b.shape(v))[0], 0, []
    for x in xs:
        size = b.shape(x)[axis]
        grads.append(b.node("slice", g, axis=axis, start=start, stop=start + size, step=1, hint=f"d{v}_{x}"))
        start += size
    return grads


def slice_shape(shapes, attrs):
    (shape,) = shapes
    if not shape:
        raise ShapeError("slice needs an operand of at least one dimension, got a scalar")
    (axis,) = axes(attrs["axis"], shape)
    if attrs["step"] == 0:
        raise ShapeError("slice step must not be 0")
    if isinstance(shape[axis], str):
        raise ShapeError(f"slice along axis {attrs['axis']}: it is the named dimension {shape[axis]!r}")
    size = len(range(*slice(attrs["start"], attrs["stop"], attrs["step"]).indices(shape[axis])))
    if size == 0:
        raise ShapeError(f"slice {attrs['start']}:{attrs['stop']}:{attrs['step']} of axis {attrs['axis']} "
                         f"(size {shape[axis]}) is empty")
    return shape[:axis] + (size,) + shape[axis + 1:]


def slice_index(shapes, attrs, dtype=None, into=False):
    """The subscript: ``[:, 1:5]``, ``[::2]``."""
    axis = axes(attrs["axis"], shapes[0])[0]
    start, stop, step = attrs["start"], attrs["stop"], attrs["step"]
    part = f"{start or ''}:{'' if stop is None else stop}" + ("" if step == 1 else f":{step}")
    return {**attrs, "index": ", ".join([":"] * axis + [part])}


def slice_vjp(b, v, xs, g):  # g in place of the slice, zeros elsewhere
    attrs = b.attrs(v)
    return [b.node("slice_grad", g, shape=tuple(b.shape(xs[0])), axis=axes(attrs["axis"], b.shape(xs[0]))[0],
                   start=attrs["start"], stop=attrs["stop"], step=attrs["step"])]


INT = Check(is_int, "an int", int)
STOP = Check(lambda v: v is None or is_int(v), "an int or None", lambda v: v if v is None else int(v))
op("concat", None, concat_shape, concat_vjp, attrs={"axis": ONE_AXIS}, defaults={"axis": -1})
op("slice", 1, slice_shape, slice_vjp, attrs={"axis": ONE_AXIS, "start": INT, "stop": STOP, "step": INT},
   defaults={"axis": -1, "start": 0, "stop": None, "step": 1}, inline=True, template_attrs=slice_index)
internal("slice_grad", 1, attr_shape, attrs={"shape": tuple, "axis": int, "start": int, "stop": object, "step": int},
         template_attrs=lambda shapes, attrs, dtype, into: slice_index([attrs["shape"]], attrs))


# ---- attention (DESIGN section 15): embedding, where, attention ---------------------------------------------
def embedding_shape(shapes, attrs, ints=()):
    """ids (any shape, integer) and weight (V, D) -> ids.shape + (D,)."""
    ids, weight = shapes
    if 0 not in ints:
        raise ShapeError(f"embedding ids {fmt(ids)} must be an integer input (dtype = \"int64\")")
    if len(weight) != 2:
        raise ShapeError(f"embedding weight {fmt(weight)} must be 2-D (V, D): one row per id")
    if any(isinstance(d, str) for d in weight):
        raise ShapeError(f"embedding weight {fmt(weight)} must have fixed sizes")
    return tuple(ids) + (weight[1],)


def embedding_vjp(b, v, xs, g):  # the rows of g added into each id's row of d weight
    ids, weight = xs
    return [None, b.node("embedding_grad", g, b.fwd(ids), shape=tuple(b.shape(weight)))]


ONE_HOT = 4  # a vocabulary of at most ONE_HOT * D ids: Trainer.step's d weight as one-hot(ids)^T @ g


def one_hot(attrs) -> bool:
    """Whether Trainer.step writes d weight as a matrix product of a one-hot array (kept in the workspace, no larger
    than ONE_HOT times g; the pure form and a larger vocabulary use np.bincount, which allocates its result)."""
    V, D = attrs["shape"]
    return V <= ONE_HOT * D


def embedding_grad_attrs(shapes, attrs, dtype=None, into=False):
    V, D = attrs["shape"]  # np.bincount sums in float64: cast back for another dtype
    pure = {**attrs, "V": V, "D": D, "size": V * D, "cast": None if dtype == "float64" else dtype}
    return {**pure, "one_hot": one_hot(attrs)} if into else pure


def embedding_grad_scratch(shapes, attrs):
    """The one-hot (V, *ids) array and each id's flat index in it; or each element's flat index in d weight, and
    the columns 0..D-1 (np.bincount)."""
    if one_hot(attrs):
        return [((attrs["shape"][0], *shapes[1]), None), (shapes[1], "int64")]
    return [(shapes[0], "int64"), ((attrs["shape"][1],), "int64")]


op("embedding", 2, embedding_shape, embedding_vjp, int_operands=(0,), classes=(1, 0))  # weight.take(ids, axis=0)
internal("embedding_grad", 2, attr_shape, attrs={"shape": tuple}, template_attrs=embedding_grad_attrs,
         scratches=embedding_grad_scratch)  # np.bincount over flat indices, or a one-hot product: no np.add.at


def where_shape(shapes, attrs, ints=()):
    if 0 not in ints:
        raise ShapeError(f"where's condition {fmt(shapes[0])} must be a boolean input (dtype = \"bool\")")
    return broadcast_shape(shapes, attrs)


def where_vjp(b, v, xs, g):  # g where cond, to a; g where not cond, to b
    cond, x, y = xs
    return [None, b.unbroadcast(b.node("where_grad", g, b.fwd(cond), side="a", hint=f"d{v}_a"), x),
            b.unbroadcast(b.node("where_grad", g, b.fwd(cond), side="b", hint=f"d{v}_b"), y)]


op("where", 3, where_shape, where_vjp, bool_operands=(0,))
internal("where_grad", 2, same_shape, attrs={"side": str})


def attention_batch(shapes) -> tuple:
    """The leading (batch, head) dimensions of q, k and v, broadcast."""
    q, k, v = shapes
    for what, shape in zip("qkv", shapes):
        if len(shape) < 2:
            raise ShapeError(f"attention {what} {fmt(shape)} must be (..., T, d): at least 2-D")
    try:
        return broadcast_shape([q[:-2], k[:-2], v[:-2]], {})
    except ShapeError:
        raise ShapeError(f"attention q {fmt(q)}, k {fmt(k)} and v {fmt(v)}: their batch and head dimensions "
                         f"{fmt(q[:-2])}, {fmt(k[:-2])} and {fmt(v[:-2])} do not broadcast") from None


def attention_shape(shapes, attrs):
    """q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) -> (..., Tq, dv)."""
    q, k, v = shapes
    batch = attention_batch(shapes)
    if not same_dim(q[-1], k[-1]):
        raise ShapeError(f"attention q {fmt(q)} and k {fmt(k)} have different head sizes ({q[-1]} and {k[-1]})")
    if not same_dim(k[-2], v[-2]):
        raise ShapeError(f"attention k {fmt(k)} and v {fmt(v)} have different numbers of keys ({k[-2]} and {v[-2]})")
    if isinstance(q[-1], str):
        raise ShapeError(f"attention q {fmt(q)}: the head size must be fixed")
    return batch + (q[-2], v[-1])


def attention_scale(shapes, attrs) -> float:
    """The scores' factor: ``scale``, or 1 / sqrt(d) as torch."""
    return attrs["scale"] if attrs["scale"] is not None else 1.0 / math.sqrt(shapes[0][-1])


def attention_probs_shape(shapes, attrs):  # softmax(q @ k^T * scale): (..., Tq, Tk)
    q, k = shapes
    return broadcast_shape([q[:-2], k[:-2]], {}) + (q[-2], k[-2])


def attention_attrs(shapes, attrs, dtype=None, into=False):
    return {"causal": attrs["causal"], "scale": attention_scale(shapes, attrs)}


def attention_scratch(shapes, attrs):  # the attention weights (kept for the backward), the rows' max and sum
    probs = attention_probs_shape(shapes[:2], attrs)
    return [(probs, None), (probs[:-1] + (1,), None)]


def attention_vjp(b, v, xs, g):
    """With P the attention weights (kept from the forward) and S the scores: dV = P^T @ g, dP = g @ V^T,
    dS = P * (dP - sum(dP * P)) * scale (softmax's gradient), dQ = dS @ K, dK = dS^T @ Q."""
    q, k, val = xs
    attrs = {"causal": b.attrs(v)["causal"], "scale": attention_scale([b.shape(q)], b.attrs(v))}
    probs = b.node("attention_probs", b.fwd(q), b.fwd(k), hint=f"{v}_weights", **attrs)  # the forward computed it
    dv = b.node("matmul", b.T(probs), g, hint=f"d{val}_heads")
    dprobs = b.node("matmul", g, b.T(b.fwd(val)), hint=f"d{v}_weights")
    dscores = b.mul(b.node("softmax_grad", dprobs, probs, axis=-1, hint=f"d{v}_softmax"), b.const(attrs["scale"]),
                    hint=f"d{v}_scores")
    dq = b.node("matmul", dscores, b.fwd(k), hint=f"d{q}_heads")
    dk = b.node("matmul", b.T(dscores), b.fwd(q), hint=f"d{k}_heads")
    return [b.unbroadcast(dq, q), b.unbroadcast(dk, k), b.unbroadcast(dv, val)]


SCALE = Check(lambda v: v is None or POSITIVE.test(v), "a positive finite number or None (1 / sqrt(d))",
              lambda v: v if v is None else float(v))
op("attention", 3, attention_shape, attention_vjp, attrs={"causal": BOOL, "scale": SCALE},
   defaults={"causal": False, "scale": None}, scratches=attention_scratch, keeps="attention_probs",
   template_attrs=attention_attrs, helpers=("causal",))
internal("attention_probs", 2, attention_probs_shape, attrs={"causal": bool, "scale": float},
         scratches=lambda shapes, attrs: [(attention_probs_shape(shapes, attrs)[:-1] + (1,), None)],
         helpers=("causal",))  # softmax(q @ k^T * scale), future keys hidden if causal


# ---- convolutional networks (DESIGN section 14): NCHW, as torch.nn.functional ------------------------------
# A window op reads windows of x (N, C, H, W): C, H and W are fixed at compile time, N may be named. Everything
# that depends only on shapes (padding, output sizes, the slices of each kernel offset) is computed here, once, as
# a ``Window``; the templates only write it out. The convolution is one matrix product over the windows of x
# (im2col, kept for the weight's gradient); its input gradient is the windows' gradients added back by kernel
# offset (col2im). Pooling keeps, for max, the index of each window's first maximum.

def is_pos_int(v) -> bool:
    return is_int(v) and v >= 1


def pair_of(test):
    """An int or a pair of ints (a tuple or a list), each passing ``test``."""
    return lambda v: test(v) or isinstance(v, (tuple, list)) and len(v) == 2 and all(test(d) for d in v)


def as_pair(v):
    return (int(v), int(v)) if is_int(v) else tuple(int(d) for d in v)


PAIR = Check(pair_of(is_pos_int), "a positive int or a pair of them", as_pair)
PAIR_OR_NONE = Check(lambda v: v is None or pair_of(is_pos_int)(v), "a positive int, a pair of them or None",
                     lambda v: v if v is None else as_pair(v))
PADDING = Check(pair_of(lambda d: is_int(d) and d >= 0), "a non-negative int or a pair of them",
                as_pair)
CONV_PADDING = Check(lambda v: v in ("same", "valid") or PADDING.test(v),
                     "'same', 'valid', a non-negative int or a pair of them",
                     lambda v: v if isinstance(v, str) else as_pair(v))
POSITIVE_INT = Check(is_pos_int, "a positive int", int)
TARGET_SHAPE = Check(lambda v: isinstance(v, (tuple, list)) and len(v) >= 1 and all(
    is_pos_int(d) or d == -1 and is_int(d) or isinstance(d, str) and d.isidentifier() for d in v),
    "a tuple of positive ints, dimension names and at most one -1",
    lambda v: tuple(d if isinstance(d, str) else int(d) for d in v))


@dataclass(frozen=True)
class Window:
    """Where the windows of an (N, C, H, W) input lie: x padded by ``pads`` (top, bottom, left, right) to
    (Hp, Wp); window (h, w) starts at (h * stride, w * stride) and reads every ``dilation``-th element."""

    C: int
    H: int
    W: int
    kernel: tuple
    stride: tuple
    pads: tuple
    dilation: tuple = (1, 1)

    @property
    def Hp(self):
        return self.H + self.pads[0] + self.pads[1]

    @property
    def Wp(self):
        return self.W + self.pads[2] + self.pads[3]

    @property
    def span(self):  # the extent of one window, dilation included
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def Ho(self):
        return (self.Hp - self.span[0]) // self.stride[0] + 1

    @property
    def Wo(self):
        return (self.Wp - self.span[1]) // self.stride[1] + 1

    @property
    def padded(self) -> bool:
        return any(self.pads)

    @property
    def tiles(self) -> bool:
        """Windows that tile x exactly (stride = kernel, no padding or dilation): a reshape of x, no sliding."""
        return (self.stride == self.kernel and self.dilation == (1, 1) and not self.padded
                and self.H % self.kernel[0] == 0 and self.W % self.kernel[1] == 0)

    def in_shape(self, n):
        return (n, self.C, self.H, self.W)

    def padded_shape(self, n):
        return (n, self.C, self.Hp, self.Wp)

    def out_shape(self, n, channels=None):
        return (n, self.C if channels is None else channels, self.Ho, self.Wo)

    def counts(self):
        """Per output row and column, how many of its window's elements are inside x (not padding)."""
        def along(n, k, s, before, outputs):
            return tuple(min(o * s - before + k, n) - max(o * s - before, 0) for o in range(outputs))
        return (along(self.H, self.kernel[0], self.stride[0], self.pads[0], self.Ho),
                along(self.W, self.kernel[1], self.stride[1], self.pads[2], self.Wo))


def image(op: str, x) -> None:
    """x must be (N, C, H, W) with C, H and W fixed."""
    if len(x) != 4:
        raise ShapeError(f"{op} needs x of shape (N, C, H, W), got {fmt(x)}")
    if any(isinstance(d, str) for d in x[1:]):
        raise ShapeError(f"{op} needs the channels and the spatial sizes of x fixed, got {fmt(x)} "
                         "(only the batch dimension may be named)")


def window(op: str, x, kernel, stride, pads, dilation=(1, 1)) -> Window:
    win = Window(*x[1:], tuple(kernel), tuple(stride), tuple(pads), tuple(dilation))
    if win.span[0] > win.Hp or win.span[1] > win.Wp:
        dilated = f" (dilation {fmt(dilation)}: {win.span[0]}x{win.span[1]})" if dilation != (1, 1) else ""
        raise ShapeError(f"{op} kernel {kernel[0]}x{kernel[1]}{dilated} is larger than the padded input "
                         f"{win.Hp}x{win.Wp}")
    return win


def conv_pads(padding, kernel, dilation, stride) -> tuple:
    """``padding`` as (top, bottom, left, right); 'same' puts the odd element at the bottom and right, as torch."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ShapeError(f"padding='same' needs stride 1, got stride={fmt(stride)} (as torch)")
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    return (padding[0], padding[0], padding[1], padding[1])


def conv_window(shapes, attrs, op="conv2d") -> Window:
    """conv2d's checks (channels, groups, bias, kernel against the padded input) and its windows of x."""
    x, w = shapes[:2]
    image(op, x)
    if len(w) != 4:
        raise ShapeError(f"{op} needs a weight of shape (C_out, C_in / groups, kH, kW), got {fmt(w)}")
    groups, (C, O, Cg) = attrs["groups"], (x[1], w[0], w[1])
    for what, n in (("input channels of x", C), ("output channels of w", O)):
        if n % groups:
            raise ShapeError(f"groups={groups} does not divide the {n} {what}")
    if Cg * groups != C:
        per = f" ({Cg} per group, {groups} groups)" if groups > 1 else ""
        raise ShapeError(f"channel mismatch: x has {C} channels but w {fmt(w)} takes {Cg * groups}{per}")
    if len(shapes) == 3 and tuple(shapes[2]) != (O,):
        raise ShapeError(f"bias {fmt(shapes[2])} must have shape ({O},): one per output channel of w")
    pads = conv_pads(attrs["padding"], w[2:], attrs["dilation"], attrs["stride"])
    return window(op, x, w[2:], attrs["stride"], pads, attrs["dilation"])


def conv2d_shape(shapes, attrs):
    return conv_window(shapes, attrs).out_shape(shapes[0][0], shapes[1][0])


def conv_attrs(shapes, attrs) -> dict:
    """What conv2d's macros need: the windows, the groups' sizes and whether there is a bias."""
    win, w = conv_window(shapes, attrs), shapes[1]
    return {"win": win, "O": w[0], "G": attrs["groups"], "K": w[1] * w[2] * w[3], "bias": len(shapes) == 3}


def conv2d_scratch(shapes, attrs):  # the windows of x as columns (kept for dw), then padded x
    win, a = conv_window(shapes, attrs), conv_attrs(shapes, attrs)
    n = shapes[0][0]
    return [((n, a["G"], a["K"], win.Ho * win.Wo), None)] + ([(win.padded_shape(n), None)] if win.padded else [])


def internal_window(attrs, x) -> Window:
    """The Window of an adjoint node, from its attrs (the forward node's, resolved) and the input shape ``x``."""
    return Window(*x, attrs["kernel"], attrs["stride"], attrs["padding"], attrs.get("dilation", (1, 1)))


def as_2d(shapes, attrs):
    """conv1d as conv2d: x (N, C, L) seen as (N, C, 1, L), w (C_out, C_in / groups, k) as (C_out, ..., 1, k)."""
    x, w = shapes[:2]
    if len(x) != 3 or any(isinstance(d, str) for d in x[1:]):
        raise ShapeError(f"conv1d needs x of shape (N, C, L), C and L fixed, got {fmt(x)}")
    if len(w) != 3:
        raise ShapeError(f"conv1d needs a weight of shape (C_out, C_in / groups, k), got {fmt(w)}")
    pad = attrs["padding"]
    attrs2 = {"stride": (1, attrs["stride"]), "dilation": (1, attrs["dilation"]), "groups": attrs["groups"],
              "padding": pad if isinstance(pad, str) else (0, pad)}
    return [(x[0], x[1], 1, x[2]), (*w[:2], 1, w[2]), *shapes[2:]], attrs2


def conv1d_shape(shapes, attrs):
    shapes2, attrs2 = as_2d(shapes, attrs)
    win = conv_window(shapes2, attrs2, "conv1d")
    return (shapes[0][0], shapes[1][0], win.Wo)


def conv1d_vjp(b, v, xs, g):
    """conv2d's gradient, through views of x, w and g with a height of 1."""
    x, w = xs[:2]
    (n, c, length), (o, cg, k), wo = b.shape(x), b.shape(w), b.shape(v)[2]
    win = conv_window(*as_2d([b.shape(a) for a in xs], b.attrs(v)), "conv1d")
    geometry = dict(kernel=win.kernel, stride=win.stride, padding=win.pads, dilation=win.dilation,
                    groups=b.attrs(v)["groups"])
    x4 = b.node("reshape", b.fwd(x), shape=(n, c, 1, length), hint=f"{x}_2d")
    g4 = b.node("reshape", g, shape=(n, o, 1, wo), hint=f"d{v}_2d")
    cols = b.node("im2col", x4, hint=f"{x}_cols", **geometry)  # the forward computed it
    dw = b.node("conv2d_grad_w", g4, cols, shape=(o, cg, k))
    w4 = b.node("reshape", b.fwd(w), shape=(o, cg, 1, k), hint=f"{w}_2d")
    dcols = b.node("conv2d_grad_cols", g4, w4, groups=geometry["groups"], hint=f"d{x}_cols")
    dx = b.node("col2im", dcols, x=(c, 1, length), **geometry)
    db = [b.node("sum", g, axis=(0, 2), keepdims=False)] if len(xs) == 3 else []
    return [b.node("reshape", dx, shape=(n, c, length)), dw, *db]


def conv1d_attrs(shapes, attrs) -> dict:
    return {**conv_attrs(*as_2d(shapes, attrs)), "flat": True}


def transpose_window(shapes, attrs) -> Window:
    """conv_transpose2d's checks, and the windows of the conv2d whose input gradient it is: that conv2d's input
    is this op's output (N, C_out, H_out, W_out), its weight is w (C_in, C_out / groups, kH, kW)."""
    x, w = shapes[:2]
    image("conv_transpose2d", x)
    if len(w) != 4:
        raise ShapeError(f"conv_transpose2d needs a weight of shape (C_in, C_out / groups, kH, kW), got {fmt(w)}")
    groups, C = attrs["groups"], x[1]
    if w[0] != C:
        raise ShapeError(f"channel mismatch: x has {C} channels but w {fmt(w)} takes {w[0]}")
    if C % groups:
        raise ShapeError(f"groups={groups} does not divide the {C} input channels of x")
    cout = w[1] * groups
    if len(shapes) == 3 and tuple(shapes[2]) != (cout,):
        raise ShapeError(f"bias {fmt(shapes[2])} must have shape ({cout},): one per output channel")
    (s0, s1), (p0, p1), (d0, d1), out_pad = attrs["stride"], attrs["padding"], attrs["dilation"], \
        attrs["output_padding"]
    if out_pad[0] >= s0 or out_pad[1] >= s1:
        raise ShapeError(f"output_padding {fmt(out_pad)} must be smaller than the stride {fmt(attrs['stride'])}")
    size = [(n - 1) * s - 2 * p + d * (k - 1) + o + 1
            for n, s, p, d, k, o in zip(x[2:], (s0, s1), (p0, p1), (d0, d1), w[2:], out_pad)]
    if min(size) < 1:
        raise ShapeError(f"conv_transpose2d of {fmt(x)} gives an empty output {size[0]}x{size[1]}")
    return Window(cout, *size, tuple(w[2:]), (s0, s1), (p0, p0, p1, p1), (d0, d1))


def conv_transpose2d_attrs(shapes, attrs) -> dict:
    win, (x, w) = transpose_window(shapes, attrs), shapes[:2]
    groups = attrs["groups"]
    return {"win": win, "G": groups, "Cig": x[1] // groups, "K": w[1] * w[2] * w[3], "L": x[2] * x[3],
            "bias": len(shapes) == 3}


def conv_transpose2d_scratch(shapes, attrs):  # w.T @ x as columns, then the padded output
    win, a = transpose_window(shapes, attrs), conv_transpose2d_attrs(shapes, attrs)
    n = shapes[0][0]
    return [((n, a["G"], a["K"], a["L"]), None)] + padded_scratch(win, n)


def conv_transpose2d_vjp(b, v, xs, g):
    """The converse of conv2d's: dx is the conv2d of dy by w, dw the weight gradient of that conv2d."""
    x, w = xs[:2]
    attrs = b.attrs(v)
    win = transpose_window([b.shape(a) for a in xs], attrs)
    dx = b.node("conv2d", g, b.fwd(w), stride=win.stride, padding=attrs["padding"], dilation=win.dilation,
                groups=attrs["groups"])
    cols = b.node("im2col", g, kernel=win.kernel, stride=win.stride, padding=win.pads, dilation=win.dilation,
                  groups=attrs["groups"], hint=f"d{v}_cols")
    dw = b.node("conv2d_grad_w", b.fwd(x), cols, shape=tuple(b.shape(w)))
    db = [b.node("sum", g, axis=(0, 2, 3), keepdims=False)] if len(xs) == 3 else []
    return [dx, dw, *db]


def im2col_shape(shapes, attrs):  # (N, groups, C / groups * kH * kW, Ho * Wo)
    (x,), win = shapes, internal_window(attrs, shapes[0][1:])
    return (x[0], attrs["groups"], x[1] // attrs["groups"] * attrs["kernel"][0] * attrs["kernel"][1],
            win.Ho * win.Wo)


def col2im_shape(shapes, attrs):  # columns (N, G, K, L) back to x (N, C, H, W)
    return (shapes[0][0], *attrs["x"])


def col2im_scratch(shapes, attrs):
    """Padded x; with stride 1 along the height and kH > 1, each kernel column's terms summed over the kernel rows
    first (kW, N, C, Hp, Wo)."""
    win, n = window_attrs(shapes, attrs)["win"], shapes[0][0]
    two_pass = win.stride[0] == 1 and win.kernel[0] > 1
    return padded_scratch(win, n) + ([((win.kernel[1], n, win.C, win.Hp, win.Wo), None)] if two_pass else [])


def conv2d_vjp(b, v, xs, g):
    x, w = xs[:2]
    attrs, wshape = b.attrs(v), b.shape(w)
    win = conv_window([b.shape(a) for a in xs], attrs)
    geometry = dict(kernel=win.kernel, stride=win.stride, padding=win.pads, dilation=win.dilation,
                    groups=attrs["groups"])
    cols = b.node("im2col", b.fwd(x), hint=f"{x}_cols", **geometry)  # the forward computed it
    dw = b.node("conv2d_grad_w", g, cols, shape=wshape)  # dy @ cols.T, summed over the batch
    dcols = b.node("conv2d_grad_cols", g, b.fwd(w), groups=attrs["groups"], hint=f"d{x}_cols")  # w.T @ dy
    dx = b.node("col2im", dcols, x=tuple(b.shape(x)[1:]), **geometry)  # the columns added back into x's shape
    db = [b.node("sum", g, axis=(0, 2, 3), keepdims=False)] if len(xs) == 3 else []
    return [dx, dw, *db]


def conv_grad_attrs(shapes, attrs) -> dict:
    """The groups' sizes of conv2d_grad_w (dy, cols) and conv2d_grad_cols (dy, w)."""
    g, other = shapes
    groups = other[1] if "shape" in attrs else attrs["groups"]
    return {"G": groups, "Og": g[1] // groups, "L": math.prod(g[2:]),
            "K": other[2] if "shape" in attrs else math.prod(other[1:])}


def conv_grad_w_scratch(shapes, attrs):  # dy.T of each example, its term of dw.T, and their sum
    a, n = conv_grad_attrs(shapes, attrs), shapes[0][0]
    return [((n, a["G"], a["L"], a["Og"]), None), ((n, a["G"], a["K"], a["Og"]), None),
            ((a["G"], a["K"], a["Og"]), None)]


def pool_window(op, shapes, attrs) -> Window:
    (x,) = shapes
    image(op, x)
    kernel = attrs["kernel_size"]
    stride = attrs["stride"] or kernel
    pad = attrs["padding"]
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ShapeError(f"{op} padding {fmt(pad)} must be at most half the kernel {fmt(kernel)} (as torch)")
    return window(op, x, kernel, stride, (pad[0], pad[0], pad[1], pad[1]))


def pool_shape(op):
    return lambda shapes, attrs: pool_window(op, shapes, attrs).out_shape(shapes[0][0])


def pool_geometry(op):
    def geometry(shapes, attrs):
        win = pool_window(op, shapes, attrs)
        return dict(x=(win.C, win.H, win.W), kernel=win.kernel, stride=win.stride, padding=win.pads)
    return geometry


def max_pool2d_vjp(b, v, xs, g):
    (x,) = xs
    geometry = pool_geometry("max_pool2d")([b.shape(x)], b.attrs(v))
    argmax = b.node("max_pool2d_argmax", b.fwd(x), hint=f"{x}_argmax", **geometry)  # the forward computed it
    return [b.node("max_pool2d_grad", g, argmax, **geometry)]


def avg_pool2d_vjp(b, v, xs, g):
    attrs = b.attrs(v)
    geometry = pool_geometry("avg_pool2d")([b.shape(xs[0])], attrs)
    return [b.node("avg_pool2d_grad", g, count_include_pad=attrs["count_include_pad"], **geometry)]


def adaptive_window(shapes, attrs) -> Window:
    (x,) = shapes
    image("adaptive_avg_pool2d", x)
    out = attrs["output_size"]
    if x[2] % out[0] or x[3] % out[1]:
        raise ShapeError(f"adaptive_avg_pool2d to {fmt(out)} needs input sizes that are multiples of it, "
                         f"got {x[2]}x{x[3]}")
    kernel = (x[2] // out[0], x[3] // out[1])
    return Window(*x[1:], kernel, kernel, (0, 0, 0, 0))


def adaptive_avg_pool2d_vjp(b, v, xs, g):
    win = adaptive_window([b.shape(xs[0])], b.attrs(v))
    return [b.node("avg_pool2d_grad", g, count_include_pad=True, x=(win.C, win.H, win.W), kernel=win.kernel,
                   stride=win.stride, padding=win.pads)]


def window_attrs(shapes, attrs) -> dict:
    """An adjoint window op's Window: from its x attr, or from its first operand (N, C, H, W)."""
    return {"win": internal_window(attrs, attrs.get("x") or shapes[0][1:])}


def pooled(win: Window, attrs) -> dict:
    """A pooling macro's attrs: the windows and, for count_include_pad=False, the counts of their elements in x."""
    return {"win": win, "counts": None if attrs.get("count_include_pad", True) or not win.padded else win.counts()}


def pool_attrs(op):
    return lambda shapes, attrs: pooled(pool_window(op, shapes, attrs), attrs)


def pooled_grad_attrs(shapes, attrs) -> dict:
    return pooled(internal_window(attrs, attrs["x"]), attrs)


def max_pool2d_scratch(shapes, attrs):
    """Each window's first maximum (kept), the windows (kernel offset first), two masks of the output's shape,
    padded x."""
    win, n = pool_window("max_pool2d", shapes, attrs), shapes[0][0]
    k = win.kernel[0] * win.kernel[1]
    return ([(win.out_shape(n), "int64"), ((k, n, win.C, win.Ho, win.Wo), None)] + [(win.out_shape(n), "bool_")] * 2
            + padded_scratch(win, n))


def max_pool2d_grad_scratch(shapes, attrs):
    """A mask per kernel offset; unless the windows tile x (each element of dx written once), dy under the mask and
    padded dx."""
    win = internal_window(attrs, attrs["x"])
    if win.tiles:
        return [(shapes[0], "bool_")]
    return [(shapes[0], "bool_"), (shapes[0], None)] + padded_scratch(win, shapes[0][0])


def padded_scratch(win: Window, n) -> list:
    return [(win.padded_shape(n), None)] if win.padded else []


# ---- reshape and flatten: views -----------------------------------------------------------------------------

def reshaped(shape, target) -> tuple:
    """torch.reshape's rule with named dimensions: one -1 at most, sizes that divide, and every named dimension
    of the result one of the input's."""
    if list(target).count(-1) > 1:
        raise ShapeError(f"reshape to {fmt(target)}: one -1 at most")
    names_in = [d for d in shape if isinstance(d, str)]
    left = list(names_in)
    for d in (d for d in target if isinstance(d, str)):
        if d not in left:
            raise ShapeError(f"reshape of {fmt(shape)} to {fmt(target)}: dimension {d} does not follow from the "
                             "input's dimensions")
        left.remove(d)
    size_in = math.prod(d for d in shape if not isinstance(d, str))
    size_out = math.prod(d for d in target if not isinstance(d, str) and d != -1)
    if -1 not in target:
        if left or size_in != size_out:
            raise ShapeError(f"reshape of {fmt(shape)} to {fmt(target)}: the sizes differ")
        return tuple(target)
    if size_in % size_out:
        raise ShapeError(f"reshape of {fmt(shape)} to {fmt(target)}: the sizes do not divide "
                         f"({size_in} by {size_out})")
    rest = size_in // size_out
    if left and (len(left) > 1 or rest != 1):
        product = " * ".join(left + ([str(rest)] if rest != 1 else []))
        raise ShapeError(f"reshape of {fmt(shape)} to {fmt(target)}: the -1 would be {product}, which is no "
                         f"dimension the result can have (name the dimensions {', '.join(left)} in the target)")
    fill = left[0] if left else rest
    return tuple(fill if d == -1 else d for d in target)


def reshape_shape(shapes, attrs):
    return reshaped(shapes[0], attrs["shape"])


def flatten_shape(shapes, attrs):
    (x,), start = shapes, attrs["start_dim"]
    if not -len(x) <= start < len(x):
        raise ShapeError(f"flatten start_dim={start} is out of range for {fmt(x)} ({len(x)}-D)")
    start %= len(x)
    return reshaped(x, tuple(x[:start]) + (-1,))


def view_vjp(b, v, xs, g):  # reshape and flatten: the gradient is g seen in x's shape
    if b.A.nodes[g]["op"] in ("transpose", "slice"):  # a strided view: NumPy's reshape would copy it on each call,
        g = b.node("copy", g, hint=f"{g}_contiguous")  # so it is copied once, into a buffer of the workspace
    return [b.node("reshape", g, shape=tuple(b.shape(xs[0])), hint=f"d{xs[0]}_view")]


def plus(rule):
    """A template_attrs rule from one that gives only the attrs a macro takes besides the node's."""
    return lambda shapes, attrs, dtype, into: {**attrs, **rule(shapes, attrs)}


def view_attrs(shape_rule):
    return lambda shapes, attrs: {"to": shape_rule(shapes, attrs)}


# Public ops.
op("conv2d", (2, 3), conv2d_shape, conv2d_vjp, attrs={"stride": PAIR, "padding": CONV_PADDING, "dilation": PAIR,
   "groups": POSITIVE_INT}, defaults={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1},
   scratches=conv2d_scratch, keeps="im2col", template_attrs=plus(conv_attrs), backends=NUMPY_ONLY)
op("conv1d", (2, 3), conv1d_shape, conv1d_vjp, attrs={"stride": POSITIVE_INT, "padding": Check(
   lambda v: v in ("same", "valid") or is_int(v) and v >= 0, "'same', 'valid' or a non-negative int"),
   "dilation": POSITIVE_INT, "groups": POSITIVE_INT}, defaults={"stride": 1, "padding": 0, "dilation": 1, "groups": 1},
   scratches=lambda shapes, attrs: conv2d_scratch(*as_2d(shapes, attrs)), keeps="im2col",
   template_attrs=plus(conv1d_attrs), template="conv2d", backends=NUMPY_ONLY)  # as conv2d, on views of height 1
op("conv_transpose2d", (2, 3), lambda shapes, attrs: transpose_window(shapes, attrs).in_shape(shapes[0][0]),
   conv_transpose2d_vjp, attrs={"stride": PAIR, "padding": PADDING, "output_padding": PADDING, "groups": POSITIVE_INT,
   "dilation": PAIR}, defaults={"stride": (1, 1), "padding": (0, 0), "output_padding": (0, 0), "groups": 1,
   "dilation": (1, 1)}, scratches=conv_transpose2d_scratch, template_attrs=plus(conv_transpose2d_attrs),
   backends=NUMPY_ONLY)  # w.T @ x, added back by kernel offset: conv2d's input gradient
op("max_pool2d", 1, pool_shape("max_pool2d"), max_pool2d_vjp,
   attrs={"kernel_size": PAIR, "stride": PAIR_OR_NONE, "padding": PADDING},
   defaults={"stride": None, "padding": (0, 0)}, positional=("kernel_size", "stride", "padding"),
   scratches=max_pool2d_scratch, keeps="max_pool2d_argmax", template_attrs=plus(pool_attrs("max_pool2d")),
   backends=NUMPY_ONLY)
op("avg_pool2d", 1, pool_shape("avg_pool2d"), avg_pool2d_vjp,
   attrs={"kernel_size": PAIR, "stride": PAIR_OR_NONE, "padding": PADDING, "count_include_pad": BOOL},
   defaults={"stride": None, "padding": (0, 0), "count_include_pad": True},
   positional=("kernel_size", "stride", "padding"), template_attrs=plus(pool_attrs("avg_pool2d")),
   scratches=lambda shapes, attrs: padded_scratch(pool_window("avg_pool2d", shapes, attrs), shapes[0][0]),
   backends=NUMPY_ONLY)
op("adaptive_avg_pool2d", 1, lambda shapes, attrs: adaptive_window(shapes, attrs).out_shape(shapes[0][0]),
   adaptive_avg_pool2d_vjp, attrs={"output_size": PAIR}, positional=("output_size",),
   template_attrs=plus(lambda shapes, attrs: pooled(adaptive_window(shapes, attrs), attrs)),
   backends=NUMPY_ONLY)
op("reshape", 1, reshape_shape, view_vjp, attrs={"shape": TARGET_SHAPE}, positional=("shape",), inline=True,
   template_attrs=plus(view_attrs(reshape_shape)))  # a view: x.reshape((N, 64))
op("flatten", 1, flatten_shape, view_vjp, attrs={"start_dim": ONE_AXIS}, defaults={"start_dim": 1},
   positional=("start_dim",), inline=True, template_attrs=plus(view_attrs(flatten_shape)))

# Adjoint-only ops.
GEOMETRY = {"kernel": tuple, "stride": tuple, "padding": tuple, "dilation": tuple}  # padding: Window.pads
internal("im2col", 1, im2col_shape, attrs={**GEOMETRY, "groups": int}, template_attrs=plus(window_attrs),
         scratches=lambda shapes, attrs: padded_scratch(window_attrs(shapes, attrs)["win"], shapes[0][0]),
         backends=NUMPY_ONLY)  # conv2d's windows of x as columns (N, groups, C / groups * kH * kW, Ho * Wo)
internal("conv2d_grad_w", 2, attr_shape, attrs={"shape": tuple}, template_attrs=plus(conv_grad_attrs),
         scratches=conv_grad_w_scratch, backends=NUMPY_ONLY)  # the batch's terms of dw, then their sum
internal("conv2d_grad_cols", 2, lambda shapes, attrs: (shapes[0][0], attrs["groups"], math.prod(shapes[1][1:]),
         math.prod(shapes[0][2:])), attrs={"groups": int}, template_attrs=plus(conv_grad_attrs), backends=NUMPY_ONLY)
internal("col2im", 1, col2im_shape, attrs={**GEOMETRY, "groups": int, "x": tuple}, template_attrs=plus(window_attrs),
         scratches=col2im_scratch, backends=NUMPY_ONLY)
internal("max_pool2d_argmax", 1, lambda shapes, attrs: internal_window(attrs, attrs["x"]).out_shape(shapes[0][0]),
         attrs={**GEOMETRY, "x": tuple}, dtype="int64", template_attrs=plus(window_attrs), backends=NUMPY_ONLY)
internal("max_pool2d_grad", 2, lambda shapes, attrs: (shapes[0][0], *attrs["x"]), attrs={**GEOMETRY, "x": tuple},
         template_attrs=plus(window_attrs), backends=NUMPY_ONLY,
         scratches=max_pool2d_grad_scratch)
internal("avg_pool2d_grad", 1, lambda shapes, attrs: (shapes[0][0], *attrs["x"]),
         attrs={**GEOMETRY, "x": tuple, "count_include_pad": bool}, template_attrs=plus(pooled_grad_attrs),
         backends=NUMPY_ONLY, scratches=lambda shapes, attrs: [(shapes[0], None)] + padded_scratch(
             internal_window(attrs, attrs["x"]), shapes[0][0]))  # dy over each window's count, padded dx



# ---- modes (DESIGN section 14): dropout and batch_norm ---------------------------------------------------------
# Their macros take ``train`` and ``rng`` (Op.modes): predict and loss run in evaluation mode, value_and_grad and
# Trainer.step in training mode (loss(train=True) and value_and_grad(train=False) the other).
def dropout_shape(shapes, attrs):
    if len(shapes[0]) == 0:
        raise ShapeError("dropout needs an operand of at least one dimension, got a scalar")
    return shapes[0]


def dropout_vjp(b, v, xs, g):
    """g times the forward's mask (1 / (1 - p) where kept, else 0); in evaluation mode the mask is 1.0."""
    mask = b.node("dropout_mask", b.fwd(xs[0]), p=b.attrs(v)["p"], of=v, hint=f"{v}_mask")  # the forward drew it
    return [b.mul(g, mask)]


def dropout_attrs(shapes, attrs):
    return {"scale": 1.0 / (1.0 - attrs["p"])}


PROBABILITY = Check(lambda v: NUMBER.test(v) and 0 <= v < 1, "a number in [0, 1)", float)
op("dropout", 1, dropout_shape, dropout_vjp, attrs={"p": PROBABILITY}, defaults={"p": 0.5}, positional=("p",),
   scratches=lambda shapes, attrs: [(shapes[0], None)], keeps="dropout_mask", template_attrs=plus(dropout_attrs),
   helpers=("dropout",), modes=True, draws=True, backends=NUMPY_ONLY)  # the mask, kept for the backward
internal("dropout_mask", 1, same_shape, attrs={"p": float, "of": str},
         backends=NUMPY_ONLY)  # written by the forward dropout ``of`` (``of`` keeps two dropouts' masks apart)


def batch_norm_shape(shapes, attrs):
    x, rest = shapes[0], shapes[1:]
    if not 2 <= len(x) <= 4:
        raise ShapeError(f"batch_norm needs a 2-D, 3-D or 4-D x (N, C, ...), got {fmt(x)}")
    if isinstance(x[1], str):
        raise ShapeError(f"batch_norm's channels (axis 1 of {fmt(x)}) must be a fixed size, not {x[1]!r}")
    for what, shape in zip(("weight", "bias", "running_mean", "running_var"), rest):
        if tuple(shape) != (x[1],):
            raise ShapeError(f"batch_norm {what} {fmt(shape)} must have shape ({x[1]},), the channels of x {fmt(x)}")
    return x


def batch_norm_rows(shapes, attrs):  # an array shaped like x (x_hat), three channel rows (mean, 1 / std, a temporary)
    x = shapes[0] if len(shapes) == 5 else shapes[1]
    return [(x, None)] + [((x[1],), None)] * 3


def batch_norm_vjp(b, v, xs, g):
    """d x and d weight from x's statistics computed again (the batch's in training mode, the running ones in
    evaluation mode); d bias = the sum of g over all but axis 1; none for the running statistics (frozen)."""
    x, weight, bias, mean, var = xs
    eps, rank = b.attrs(v)["eps"], len(b.shape(x))
    dx = b.node("batch_norm_grad", g, *map(b.fwd, (x, weight, mean, var)), eps=eps)
    dweight = b.node("batch_norm_grad_w", g, *map(b.fwd, (x, mean, var)), eps=eps, hint=f"d{weight}_terms")
    dbias = b.node("sum", g, axis=(0, *range(2, rank)), keepdims=False)
    return [dx, dweight, dbias, None, None]


MOMENTUM = Check(lambda v: NUMBER.test(v) and 0 <= v <= 1, "a number in [0, 1]", float)
op("batch_norm", 5, batch_norm_shape, batch_norm_vjp, attrs={"momentum": MOMENTUM, "eps": POSITIVE},
   defaults={"momentum": 0.1, "eps": 1e-5}, scratches=batch_norm_rows, helpers=("batch_norm",), modes=True,
   running=True, backends=NUMPY_ONLY)  # training mode: the batch's statistics; Trainer.step updates the running ones
internal("batch_norm_grad", 5, lambda shapes, attrs: shapes[1], attrs={"eps": float}, scratches=batch_norm_rows,
         helpers=("batch_norm",), modes=True, backends=NUMPY_ONLY)  # (g, x, weight, running_mean, running_var)
internal("batch_norm_grad_w", 4, lambda shapes, attrs: (shapes[1][1],), attrs={"eps": float},
         scratches=batch_norm_rows, helpers=("batch_norm",), modes=True,
         backends=NUMPY_ONLY)  # (g, x, running_mean, running_var): the sum of g * x_hat over all but axis 1

