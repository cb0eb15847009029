"""Folding at import: a node whose inputs are all constants is evaluated once, by ``onnx.reference``, and its
outputs become constants (DESIGN section 16). That covers the shape arithmetic PyTorch's exporters write around
Flatten and Reshape (Shape, Gather, Concat, Unsqueeze, Slice, Range, ConstantOfShape, Expand on shape tensors).

A shape may hold named dimensions (``Shape`` of an ``(N, 16, 5, 5)`` value): it is an object array, ``["N", 16,
5, 5]``. To evaluate a node on one, each name stands in as a large sentinel integer that no real size reaches;
the results are read back, a sentinel as its name again. A value computed from a name (``N * 16``) is no
dimension graphc can name: a one-line error. So are the ops that would size an array by a named dimension.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import GraphError
from .model import first_line

SENTINEL = (1 << 40) + 7  # the first name's stand-in; the k-th is SENTINEL + k * STEP
STEP = 1_000_003
MOST = 1 << 24  # the most elements a folded constant may have (16M)
DERIVED = 1 << 36  # a value this large that is no sentinel was computed from a named dimension
RANDOM = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")
SIZED_BY = {"ConstantOfShape": (0,), "Range": (0, 1, 2), "Expand": (1,), "Tile": (1,), "Reshape": (1,),
            "Resize": (1, 2, 3), "Pad": (1,), "Upsample": (1,)}  # the operands that size the result


def foldable(node) -> bool:
    """Whether ``node`` is evaluated at import when its inputs are constants: every op but the random ones (an
    import is deterministic)."""
    return node.op_type not in RANDOM


def is_symbolic(array) -> bool:
    return isinstance(array, np.ndarray) and array.dtype == object


def shape_array(dims) -> np.ndarray:
    """A shape as a constant: int64 when every dimension is a size, else an object array with the names."""
    dims = list(dims)
    if all(not isinstance(d, str) for d in dims):
        return np.array(dims, np.int64)
    array = np.empty(len(dims), object)
    array[:] = dims
    return array


def evaluate(node, arrays: dict, opset: int) -> list:
    """The outputs of ``node`` (one array per output name, None for an unnamed one) on ``arrays`` (ONNX input
    name -> array, object arrays for shapes with names)."""
    from onnx.reference import ReferenceEvaluator

    names = sorted({d for a in arrays.values() if is_symbolic(a) for d in a.flat if isinstance(d, str)})
    codes = {name: SENTINEL + k * STEP for k, name in enumerate(names)}
    for position in SIZED_BY.get(node.op_type, ()):
        name = node.input[position] if position < len(node.input) else ""
        if name and is_symbolic(arrays[name]):
            dim = next(d for d in arrays[name].flat if isinstance(d, str))
            raise GraphError(f"{node.op_type} sized by the named dimension {dim}: its size is known only at run "
                             "time, and graphc folds shape arithmetic at import")
    feeds = {k: encode(a, codes) for k, a in arrays.items()}
    size = made_size(node, feeds)
    if size > MOST:
        raise GraphError(f"{node.op_type} would make a constant of {size} elements: graphc folds at most {MOST}")
    try:
        outs = ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
    except Exception as err:  # onnx.reference raises whatever the op's NumPy code raises
        raise GraphError(f"cannot evaluate it on its constant inputs: {first_line(err)}") from None
    back = {code: name for name, code in codes.items()}
    return [decode(np.asarray(o), back, node) if o is not None else None for o in outs]


def made_size(node, feeds: dict) -> int:
    """How many elements the ops that make arrays from sizes would make (checked before they run: a hostile
    ConstantOfShape would fill the memory); 0 for the others, whose results are no larger than their inputs'."""
    def operand(k):
        return feeds[node.input[k]] if k < len(node.input) and node.input[k] else None
    try:
        if node.op_type in ("ConstantOfShape", "Expand"):
            shape = operand(0 if node.op_type == "ConstantOfShape" else 1)
            data = operand(0) if node.op_type == "Expand" else np.zeros(())
            return math.prod(np.broadcast_shapes(tuple(int(d) for d in shape.reshape(-1)), data.shape))
        if node.op_type == "Tile":
            return int(operand(0).size * np.prod(operand(1).astype(np.float64)))
        if node.op_type == "Range":
            start, limit, delta = (float(operand(k)) for k in range(3))
            return int(max(0.0, np.ceil((limit - start) / delta))) if delta else 0
    except (TypeError, ValueError, AttributeError):
        return 0  # a malformed node: the evaluator says why
    return 0


def encode(array, codes: dict) -> np.ndarray:
    if not is_symbolic(array):
        return array
    flat = [codes[d] if isinstance(d, str) else int(d) for d in array.flat]
    return np.array(flat, np.int64).reshape(array.shape)


def decode(array: np.ndarray, back: dict, node) -> np.ndarray:
    """An output with the sentinels as their names again; a value computed from one is an error."""
    if not back or array.dtype.kind not in "iuf" or not array.size:
        return array
    large = np.abs(array) >= DERIVED
    if not large.any():
        return array
    names = [back.get(int(v)) if big and array.dtype.kind != "f" else None
             for v, big in zip(array.flat, large.flat)]
    if any(big and name is None for name, big in zip(names, large.flat)):
        dims = ", ".join(sorted(back.values()))
        raise GraphError(f"{node.op_type} computes with the named dimension ({dims}): graphc folds shapes whose "
                         "named dimensions are passed through, not computed with")
    out = np.empty(array.shape, object)
    out.flat[:] = [name if name is not None else int(v) for name, v in zip(names, array.flat)]
    return out
