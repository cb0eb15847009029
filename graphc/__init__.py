"""graphc: compile a static computational graph into a standalone NumPy training module."""

from ._version import __version__
from .errors import GraphcError, GraphError, ShapeError, SpecError
from .graph import (
    Graph, Tensor, adaptive_avg_pool2d, add, avg_pool2d, binary_cross_entropy_with_logits, clip, concat, conv1d,
    conv2d, conv_transpose2d, cross_entropy, div, erf, exp, flatten, from_networkx, gelu, layer_norm, leaky_relu,
    log, log_softmax, matmul, max, max_pool2d, mean, min, mse, mul, neg, pow, relu, reshape, rms_norm, sigmoid,
    silu, slice, softmax, softplus, sqrt, sub, sum, tanh, transpose, attention, embedding, where,
    batch_norm, dropout,
)
from .compiler import CompiledModule, compile
from .spec import load_spec


def from_onnx(model, dims=None):
    """``(Graph, {param: initial array})`` from an ONNX model (a path, its bytes or an ``onnx.ModelProto``).

    Needs the ``onnx`` extra (``pip install 'graphc[onnx]'``); ``import graphc`` itself never imports onnx.
    """
    from .onnx import from_onnx as _from_onnx

    return _from_onnx(model, dims=dims)


__all__ = [
    "__version__", "CompiledModule", "Graph", "GraphError", "GraphcError", "ShapeError", "SpecError", "Tensor",
    "add", "binary_cross_entropy_with_logits", "compile", "cross_entropy", "div", "exp", "from_networkx",
    "from_onnx", "leaky_relu", "load_spec", "log", "log_softmax", "matmul", "mean", "mse", "mul", "neg", "relu",
    "sigmoid", "softmax", "sub", "sum", "tanh", "transpose",
    "adaptive_avg_pool2d", "avg_pool2d", "clip", "concat", "conv1d", "conv2d", "conv_transpose2d", "erf", "flatten",
    "gelu", "layer_norm", "max", "max_pool2d", "min", "pow", "reshape", "rms_norm", "silu", "slice", "softplus",
    "sqrt", "attention", "embedding", "where",
    "batch_norm", "dropout",
]
