"""The op table. Find an op here and you find its shape rule, its gradient rule and its template side by side.

A shape rule maps the operand shapes (and the attrs) to the result shape, raising ShapeError.
A gradient (VJP) rule builds adjoint-graph nodes through the builder ``b`` (see autodiff.py): given the forward
node ``v``, its operands ``xs`` (forward node names) and ``g``, the adjoint of ``v``, it returns one gradient per
operand, already summed back to that operand's shape. Nothing here touches arrays.
A template is the macro of the same name in templates/ops.j2, unless ``template`` says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import GraphError, ShapeError


@dataclass(frozen=True)
class Op:
    name: str
    arity: int | None  # None: any number of operands
    shape: Callable
    vjp: Callable | None = None
    attrs: dict = field(default_factory=dict)  # attr name -> allowed values (tuple) or a type
    defaults: dict = field(default_factory=dict)
    public: bool = True  # usable in specs and the builder; the others only appear in adjoint graphs
    inline: bool = False  # rendered inside its consumers' expressions, never as a statement of its own
    template: str = ""
    # Trainer's workspace form (the macro ``<template>_into`` in ops.j2, if there is one):
    inplace: bool = False  # elementwise: may write into the buffer of an operand that dies here
    scratch: bool = False  # it needs a temporary shaped like its first operand...
    scratch_from: int | None = None  # ...which may be the buffer of this operand, if it dies there

    @property
    def macro(self) -> str:
        return self.template or self.name


OPS: dict[str, Op] = {}


def op(name, arity, shape, vjp=None, **kw) -> None:
    OPS[name] = Op(name, arity, shape, vjp, **kw)


def fmt(shape) -> str:
    """``(N, 64)``: named dimensions without quotes."""
    dims = [str(d) for d in shape]
    return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"


def fmt_dim(d) -> str:
    return repr(d) if isinstance(d, str) else str(d)


def same_dim(a, b) -> bool:
    """Two dimensions are provably equal: the same int or the same name."""
    return a == b and isinstance(a, str) == isinstance(b, str)


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
    return tuple(reversed(shapes[0]))


def loss_shape(shapes, attrs):
    if shapes[0] != shapes[1]:
        raise ShapeError(f"prediction {fmt(shapes[0])} and target {fmt(shapes[1])} differ")
    return ()


def attr_shape(shapes, attrs):
    return attrs["shape"]


def scalar_shape(shapes, attrs):
    return ()


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


# ---- the table -------------------------------------------------------------------------------------------
# Public ops: what specs and the builder may use.
op("matmul", 2, matmul_shape, matmul_vjp)
op("add", 2, broadcast_shape, add_vjp, inplace=True)
op("sub", 2, broadcast_shape, sub_vjp, inplace=True)
op("mul", 2, broadcast_shape, mul_vjp, inplace=True)
op("div", 2, broadcast_shape, div_vjp, inplace=True)
op("relu", 1, same_shape, relu_vjp, inplace=True)
op("mse", 2, loss_shape, mse_vjp, attrs={"reduction": ("mean", "sum")}, defaults={"reduction": "mean"},
   scratch=True)  # the error pred - target, squared and summed without a temporary

# Adjoint-only ops: what gradient rules build.
def internal(name, arity, shape, **kw) -> None:
    op(name, arity, shape, public=False, **kw)


internal("neg", 1, same_shape, inplace=True)
internal("transpose", 1, transpose_shape, inline=True)  # a view, folded into its consumer: ``dpred @ W2.T``
internal("relu_grad", 2, same_shape, inplace=True, scratch=True, scratch_from=1)  # g where y > 0, else 0
internal("sum_to", 1, attr_shape, attrs={"axis": tuple, "shape": tuple})  # unbroadcast g back to ``shape``
internal("accumulate", None, same_shape, inplace=True)  # fan-out: the sum of every consumer's contribution
internal("copy", 1, same_shape)  # a gradient that would alias a param or input gets its own array
internal("size", 0, scalar_shape, attrs={"dims": tuple}, inline=True)  # the product of dims: ``(N * 10)``
internal("fill", 0, attr_shape, attrs={"value": float, "shape": tuple})  # a constant gradient, as an array
