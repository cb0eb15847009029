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
    arity: int | None  # None: any number of operands
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
    int_operands: tuple = ()  # positions where an integer input is allowed (class indices of operand 0's last axis)
    template_attrs: Callable | None = None  # (operand shapes, attrs, dtype, into) -> the attrs its macros take
    keeps: str | None = None  # the adjoint op its workspace form computes on the way, kept for the backward
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
    backends: tuple = ("numpy", "cupy")  # the array backends it has templates for

    @property
    def macro(self) -> str:
        return self.template or self.name


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
    a, b = shapes
    if len(a) != 2 or len(b) != 2:
        raise ShapeError(f"matmul needs 2-D operands, got {fmt(a)} and {fmt(b)}")
    if not same_dim(a[1], b[0]):
        why = f"{a[1]} != {b[0]}" if isinstance(a[1], int) and isinstance(b[0], int) else \
            f"dimension {fmt_dim(a[1])} and {fmt_dim(b[0])} cannot be proven equal"
        raise ShapeError(f"shapes {fmt(a)} and {fmt(b)} do not align ({why})")
    return (a[0], b[1])


def same_shape(shapes, attrs):
    return shapes[0]


def transpose_shape(shapes, attrs):
    if len(shapes[0]) != 2:
        raise ShapeError(f"transpose needs a 2-D operand, got {fmt(shapes[0])}")
    return tuple(reversed(shapes[0]))


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
    logits, target = shapes
    if len(logits) != 2:
        raise ShapeError(f"cross_entropy needs logits of shape (N, C), got {fmt(logits)}")
    if 1 in ints:  # class indices
        if len(target) != 1 or not same_dim(target[0], logits[0]):
            raise ShapeError(f"class indices {fmt(target)} must have shape ({logits[0]},) for logits {fmt(logits)}")
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


def cross_entropy_scratch(shapes, attrs):
    """The softmax (kept for the gradient), two rows and, for class indices, their flat indices; for
    probabilities, the terms of the loss."""
    logits, target = shapes
    n = logits[:1]
    last = [(n, "int64")] if len(target) == 1 else [(logits, None)]
    return [(logits, None), (n, None), (n, None)] + last


def cross_entropy_grad_scratch(shapes, attrs):  # a row, and the targets' flat indices
    scale, probs, target = shapes
    return [(probs[:1], None)] + ([(probs[:1], "int64")] if len(target) == 1 else [])


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
    return out


def fill_template(shapes, attrs, dtype, into):
    return {**attrs, "dtype": dtype, "shape": fmt(attrs["shape"])}


def mse_template(shapes, attrs, dtype, into):  # the workspace form divides by the run-time number of elements
    return {**attrs, "size": size_text(shapes[0])} if into else attrs


def cross_entropy_template(shapes, attrs, dtype, into):  # the target: class indices, or probabilities
    return {**attrs, "indices": len(shapes[1]) == 1}


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
    x, y = xs
    return [b.matmul(g, b.T(b.fwd(y))), b.matmul(b.T(b.fwd(x)), g)]


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
    return [b.T(g)]


def scaled(b, v, g, dims):
    """d loss / d (each term of the loss): ``g``, or ``g / size(dims)`` for reduction='mean' (run-time size)."""
    return b.div(g, b.size(dims)) if b.attrs(v)["reduction"] == "mean" else g


def cross_entropy_vjp(b, v, xs, g):
    logits, target = xs
    indices = len(b.shape(target)) == 1
    scale = scaled(b, v, g, b.shape(logits)[:1])  # 'mean' divides by N, the batch size
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
op("transpose", 1, transpose_shape, transpose_vjp, inline=True)  # a view, folded into its consumer: ``W2.T``
op("mse", 2, loss_shape, mse_vjp, attrs={"reduction": REDUCTION}, defaults={"reduction": "mean"},
   scratch=True, keeps="sub", loss=True,
   template_attrs=mse_template)  # the error pred - target, squared and summed without a temporary
op("cross_entropy", 2, cross_entropy_shape, cross_entropy_vjp, attrs={"reduction": REDUCTION},
   defaults={"reduction": "mean"}, int_operands=(1,), scratches=cross_entropy_scratch, keeps="softmax", loss=True,
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
         scratches=cross_entropy_grad_scratch)  # (softmax - target) * scale, from the softmax
internal("bce_grad", 3, lambda shapes, attrs: shapes[1], inplace=(1,))  # (sigmoid(x) - t) * scale: over x, not t
internal("broadcast_to", 1, attr_shape, attrs={"axis": tuple, "shape": tuple})  # a reduction's gradient
internal("sum_to", 1, attr_shape, attrs={"axis": tuple, "shape": tuple},
         template_attrs=sum_to_template)  # unbroadcast g back to ``shape``
internal("accumulate", None, same_shape, inplace=True,
         kernel=True)  # fan-out: the sum of every consumer's contribution
internal("copy", 1, same_shape, own_array=True)  # a gradient that would alias a param or input gets its own array
internal("size", 0, scalar_shape, attrs={"dims": tuple}, inline=True)  # the product of dims: ``(N * 10)``
internal("fill", 0, attr_shape, attrs={"value": float, "shape": tuple}, own_array=True,
         template_attrs=fill_template)  # a constant gradient, as an array


# ---- sequence models (DESIGN section 15): elementwise and normalisation ops ---------------------------------
# The erf family's workspace forms call the module's _erf (templates/ops.j2, helper_erf) on these temporaries:
# three arrays shaped like the operand and one boolean mask.
def erf_scratch(shapes, attrs):
    return [(shapes[-1], None)] * 3 + [(shapes[-1], "bool_")]


def gelu_scratch(shapes, attrs):  # erf's and x / sqrt(2); for the tanh form, three arrays
    if attrs["approximate"] == "tanh":
        return [(shapes[-1], None)] * 3
    return erf_scratch(shapes, attrs) + [(shapes[-1], None)]


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


def gelu_vjp(b, v, xs, g):
    return [b.node("gelu_grad", g, b.fwd(xs[0]), approximate=b.attrs(v)["approximate"])]


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
op("erf", 1, same_shape, erf_vjp, scratches=erf_scratch, helpers=("erf",), backends=NUMPY_ONLY)
op("sqrt", 1, same_shape, sqrt_vjp, inplace=True)
op("gelu", 1, same_shape, gelu_vjp, attrs={"approximate": ("none", "tanh")}, defaults={"approximate": "none"},
   scratches=gelu_scratch, helpers=("erf",), backends=NUMPY_ONLY)
op("silu", 1, same_shape, silu_vjp, inplace=True, scratch=True)
op("softplus", 1, same_shape, softplus_vjp, scratches=lambda shapes, attrs: [(shapes[0], "bool_")])
op("pow", 1, same_shape, pow_vjp, attrs={"exponent": NUMBER}, attr_operands=("exponent",), inplace=True)
op("clip", 1, clip_shape, clip_vjp, attrs={"min": BOUND, "max": BOUND}, defaults={"min": None, "max": None},
   attr_operands=("min", "max"), inplace=True, template="clamp")  # ops.j2's `clip` is np.take's mode
internal("erf_grad", 2, same_shape, inplace=True, scratch=True, scratch_from=1)
internal("sqrt_grad", 2, same_shape, inplace=True)
internal("gelu_grad", 2, same_shape, attrs={"approximate": str}, scratches=gelu_scratch, helpers=("erf",),
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


def norm_scratch(shapes, attrs, x=0):  # two arrays shaped like x, two of its rows (the last axis kept as size 1)
    x = shapes[x]
    return [(x, None), (x, None), (x[:-1] + (1,), None), (x[:-1] + (1,), None)]


def norm_grad_scratch(shapes, attrs):  # operands (g, x)
    return norm_scratch(shapes, attrs, x=1)


def norm_vjp(b, v, xs, g):
    """d x from the gradient rule of the normalisation (norm_grad, recomputing the row statistics from x);
    d weight = sum of g * x_hat over the leading axes, d bias = sum of g."""
    op, eps = b.G.nodes[v]["op"], b.attrs(v)["eps"]
    x, rest = xs[0], xs[1:]
    dxhat = b.mul(g, b.fwd(rest[0]), hint=f"d{v}_scaled") if rest else g
    grads = [b.node(f"{op}_grad", dxhat, b.fwd(x), eps=eps)]
    if rest:
        xhat = b.node(op, b.fwd(x), eps=eps, hint=f"{x}_normalized")
        grads.append(b.unbroadcast(b.mul(g, xhat, hint=f"d{rest[0]}_terms"), rest[0]))
    if len(rest) > 1:
        grads.append(b.unbroadcast(g, rest[1]))
    return grads


POSITIVE = Check(lambda v: NUMBER.test(v) and v > 0, "a positive finite number", float)
EPS = Check(lambda v: v is None or POSITIVE.test(v), "a positive finite number or None (the dtype's epsilon)",
            lambda v: v if v is None else float(v))
op("layer_norm", None, norm_shape, norm_vjp, attrs={"eps": POSITIVE}, defaults={"eps": 1e-5}, inplace=(0,),
   scratches=norm_scratch)
op("rms_norm", None, lambda shapes, attrs: norm_shape(shapes, attrs, "rms_norm", 2), norm_vjp, attrs={"eps": EPS},
   defaults={"eps": None}, inplace=(0,), scratches=norm_scratch)
internal("layer_norm_grad", 2, lambda shapes, attrs: shapes[1], attrs={"eps": float}, inplace=True,
         scratches=norm_grad_scratch)  # from d x_hat and x: the row statistics computed again
internal("rms_norm_grad", 2, lambda shapes, attrs: shapes[1], attrs={"eps": object}, inplace=True,
         scratches=norm_grad_scratch)


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
