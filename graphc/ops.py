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
    return str(tuple(shape))


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
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(f"shapes {' and '.join(fmt(s) for s in shapes)} do not broadcast") from None


def matmul_shape(shapes, attrs):
    a, b = shapes
    if len(a) != 2 or len(b) != 2:
        raise ShapeError(f"matmul needs 2-D operands, got {fmt(a)} and {fmt(b)}")
    if a[1] != b[0]:
        raise ShapeError(f"shapes {fmt(a)} and {fmt(b)} do not align ({a[1]} != {b[0]})")
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


# ---- gradient rules --------------------------------------------------------------------------------------

def add_vjp(b, v, xs, g):
    return [b.unbroadcast(g, x) for x in xs]


def sub_vjp(b, v, xs, g):
    x, y = xs
    return [b.unbroadcast(g, x), b.unbroadcast(b.neg(g), y)]


def mul_vjp(b, v, xs, g):
    x, y = xs
    return [b.unbroadcast(b.mul(g, b.fwd(y)), x), b.unbroadcast(b.mul(g, b.fwd(x)), y)]


def matmul_vjp(b, v, xs, g):
    x, y = xs
    return [b.matmul(g, b.T(b.fwd(y))), b.matmul(b.T(b.fwd(x)), g)]


def relu_vjp(b, v, xs, g):
    return [b.node("relu_grad", g, b.fwd(v))]  # the output's sign is the input's: keep only the output alive


def mse_vjp(b, v, xs, g):
    pred, target = xs
    n = math.prod(b.shape(pred)) if b.attrs(v)["reduction"] == "mean" else 1
    err = b.sub(b.fwd(pred), b.fwd(target), hint=f"{pred}_err")
    dpred = b.mul(g, b.mul(b.const(2.0 / n), err))
    return [dpred, b.neg(dpred)]


# ---- the table -------------------------------------------------------------------------------------------
# Public ops: what specs and the builder may use.
op("matmul", 2, matmul_shape, matmul_vjp)
op("add", 2, broadcast_shape, add_vjp, inplace=True)
op("sub", 2, broadcast_shape, sub_vjp, inplace=True)
op("mul", 2, broadcast_shape, mul_vjp, inplace=True)
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
internal("fill", 0, attr_shape, attrs={"value": float, "shape": tuple})  # a constant gradient, as an array
