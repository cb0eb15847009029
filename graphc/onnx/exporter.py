"""The ONNX exporter: the forward graph of a spec's outputs -> a checked ONNX model (opset 17).

Built like the importer, the other way: an op of the table whose ``onnx`` field names an ONNX op type is that
one node; every other op has one small function here, registered by name with ``@exporter("op")``, that writes
its ONNX node (or a few). To export a new op, either give its row in graphc/ops.py ``onnx="OpType"`` (the same
operands, no attributes) or write, for example::

    @exporter("leaky_relu")
    def leaky_relu(ex, v, args, attrs):
        ex.node("LeakyRelu", args, v, alpha=float(attrs.get("negative_slope", 0.01)))

``ex`` is the ``Exporter`` (``node``, ``ints``, ``scalar`` and ``fresh`` add ONNX nodes, constants and names),
``v`` the graph node, ``args`` its operands (ONNX value names), ``attrs`` its attributes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import networkx as nx
import numpy as np

from .._version import __version__
from ..compiler import compile
from ..errors import GraphcError, GraphError, SpecError
from ..files import read_npz, same_file, write_atomic
from ..graph import Graph, Namer, operands, topo_order
from ..ops import OPS, conv_pads
from ..spec import load_spec
from .model import OPSET, first_line, onnx_module

ELEM_TYPES = {"float32": 1, "float64": 11, "int64": 7, "bool": 9}
PRODUCER = "graphc"  # the producer name of the models graphc writes: the ones export may replace
EXPORTERS: dict[str, Callable] = {}  # graphc op -> exporter(ex, v, args, attrs), for the ops that are not one node


def exporter(*ops: str):
    """Register the decorated function as the exporter of graphc ops ``ops``."""
    def register(fn):
        for op in ops:
            EXPORTERS[op] = fn
        return fn
    return register


class Exporter:
    """The forward graph of ``outputs`` as an ONNX graph: one node (or a few) per graph node."""

    def __init__(self, G, outputs, params: dict, name: str):
        self.onnx = onnx_module()
        self.G, self.outputs, self.params, self.name = G, list(outputs), params, name
        self.dtype = G.graph.get("dtype", "float64")
        self.nodes, self.initializers, self.inputs = [], [], []
        self.namer = Namer(set(G))

    def fresh(self, hint: str) -> str:
        return self.namer(hint)

    def node(self, op_type: str, inputs, output: str, **attrs) -> str:
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [output], name=output, **attrs))
        return output

    def ints(self, values, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def scalar(self, value: float, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, self.dtype), name))
        return name

    def value_info(self, v):
        shape = [d if isinstance(d, str) else int(d) for d in self.G.nodes[v]["shape"]]
        elem = ELEM_TYPES[self.G.nodes[v].get("dtype", self.dtype)]
        return self.onnx.helper.make_tensor_value_info(v, elem, shape)

    def run(self):
        helper = self.onnx.helper
        needed = set(self.outputs)
        for o in self.outputs:
            needed |= nx.ancestors(self.G, o)
        for v in topo_order(self.G):
            if v not in needed:
                continue
            data = self.G.nodes[v]
            op = data["op"]
            if op == "input":
                self.inputs.append(self.value_info(v))
            elif op == "param":
                if v not in self.params:
                    raise GraphError(f"no value for param {v!r}", node=v)
                array = np.asarray(self.params[v])
                if array.shape != tuple(data["shape"]):
                    raise GraphError(f"param {v!r} has shape {array.shape}, the spec says {tuple(data['shape'])}",
                                     node=v)
                self.initializers.append(self.onnx.numpy_helper.from_array(
                    np.ascontiguousarray(array, dtype=data.get("dtype", self.dtype)), v))
            elif op == "const":
                self.initializers.append(self.onnx.numpy_helper.from_array(
                    np.asarray(data["attrs"]["value"], data.get("dtype", self.dtype)), v))
            else:
                self.op(v, op, operands(self.G, v), data.get("attrs", {}))
        graph = helper.make_graph(self.nodes, self.name, self.inputs, [self.value_info(o) for o in self.outputs],
                                  initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER,
                                  producer_version=__version__)
        model.ir_version = 8  # the IR of opset 17: what onnxruntime and older tools read
        try:
            self.onnx.checker.check_model(model, full_check=True)
        except Exception as err:
            raise GraphError(f"the exported model fails onnx.checker: {first_line(err)}") from None
        return model

    def op(self, v, op: str, args, attrs) -> None:
        if op in OPS and OPS[op].onnx:
            self.node(OPS[op].onnx, args, v)
        elif op in EXPORTERS:
            EXPORTERS[op](self, v, args, attrs)
        else:
            raise GraphError(f"graphc cannot export op {op!r} to ONNX", node=v)

    def axes(self, attrs):
        axis = attrs.get("axis")
        return None if axis is None else [int(axis)] if isinstance(axis, int) else [int(a) for a in axis]

    def reduce_all(self, x, v, reduction):
        self.node("ReduceMean" if reduction == "mean" else "ReduceSum", [x], v, keepdims=0)


# ---- the exporters: one per op of the table that is not one ONNX node of the same operands ----------------

@exporter("transpose")
def transpose(ex, v, args, attrs):
    rank = len(shape_of(ex, args[0]))
    axes = attrs.get("axes")
    perm = list(reversed(range(rank))) if axes is None else [int(a) % rank for a in axes]
    ex.node("Transpose", args, v, perm=perm)


@exporter("leaky_relu")
def leaky_relu(ex, v, args, attrs):
    ex.node("LeakyRelu", args, v, alpha=float(attrs.get("negative_slope", 0.01)))


@exporter("softmax")
def softmax(ex, v, args, attrs):
    ex.node("Softmax", args, v, axis=int(attrs.get("axis", -1)))


@exporter("log_softmax")
def log_softmax(ex, v, args, attrs):
    ex.node("LogSoftmax", args, v, axis=int(attrs.get("axis", -1)))


@exporter("sum")
def reduce_sum(ex, v, args, attrs):
    axes = ex.axes(attrs)
    inputs = list(args) + ([ex.ints(axes, f"{v}_axes")] if axes is not None else [])
    ex.node("ReduceSum", inputs, v, keepdims=int(bool(attrs.get("keepdims", False))))


@exporter("mean")
def reduce_mean(ex, v, args, attrs):
    axes = ex.axes(attrs)
    extra = {} if axes is None else {"axes": axes}
    ex.node("ReduceMean", args, v, keepdims=int(bool(attrs.get("keepdims", False))), **extra)


@exporter("mse")
def mse(ex, v, args, attrs):
    err = ex.node("Sub", args, ex.fresh(f"{v}_err"))
    sq = ex.node("Mul", [err, err], ex.fresh(f"{v}_sq"))
    ex.reduce_all(sq, v, attrs.get("reduction", "mean"))


@exporter("cross_entropy")
def cross_entropy(ex, v, args, attrs):
    logits, target = args
    reduction = attrs.get("reduction", "mean")
    if ex.G.nodes[target].get("dtype") == "int64":
        ex.node("SoftmaxCrossEntropyLoss", [logits, target], v, reduction=reduction)
        return
    logp = ex.node("LogSoftmax", [logits], ex.fresh(f"{v}_logp"), axis=-1)
    prod = ex.node("Mul", [target, logp], ex.fresh(f"{v}_prod"))
    rows = ex.node("ReduceSum", [prod, ex.ints([-1], f"{v}_axes")], ex.fresh(f"{v}_rows"), keepdims=0)
    neg = ex.node("Neg", [rows], ex.fresh(f"{v}_neg"))
    ex.reduce_all(neg, v, reduction)


@exporter("binary_cross_entropy_with_logits")
def binary_cross_entropy_with_logits(ex, v, args, attrs):
    x, t = args
    # max(x, 0) - x * t + log(1 + exp(-|x|)): stable for large |x|, as PyTorch computes it
    pos = ex.node("Relu", [x], ex.fresh(f"{v}_pos"))
    xt = ex.node("Mul", [x, t], ex.fresh(f"{v}_xt"))
    absx = ex.node("Abs", [x], ex.fresh(f"{v}_abs"))
    nabs = ex.node("Neg", [absx], ex.fresh(f"{v}_nabs"))
    e = ex.node("Exp", [nabs], ex.fresh(f"{v}_exp"))
    one = ex.scalar(1.0, f"{v}_one")
    lg = ex.node("Log", [ex.node("Add", [e, one], ex.fresh(f"{v}_1p"))], ex.fresh(f"{v}_log"))
    each = ex.node("Add", [ex.node("Sub", [pos, xt], ex.fresh(f"{v}_d")), lg], ex.fresh(f"{v}_each"))
    ex.reduce_all(each, v, attrs.get("reduction", "mean"))


# ---- the section 14 ops: convolution, pooling and views (NCHW, as ONNX) --------------------------------------

INT64_MAX, INT64_MIN = (1 << 63) - 1, -(1 << 63)


def shape_of(ex, v) -> tuple:
    return tuple(ex.G.nodes[v]["shape"])


def onnx_pads(pads) -> list[int]:
    """graphc's (top, bottom, left, right) as ONNX's (begins, then ends)."""
    return [pads[0], pads[2], pads[1], pads[3]]


@exporter("conv2d")
def conv2d(ex, v, args, attrs):
    kernel = shape_of(ex, args[1])[2:]
    pads = conv_pads(attrs["padding"], kernel, attrs["dilation"], attrs["stride"])
    ex.node("Conv", args, v, kernel_shape=list(kernel), strides=list(attrs["stride"]), pads=onnx_pads(pads),
            dilations=list(attrs["dilation"]), group=int(attrs["groups"]))


@exporter("conv1d")
def conv1d(ex, v, args, attrs):
    (k,) = shape_of(ex, args[1])[2:]
    padding = attrs["padding"]
    if isinstance(padding, str):
        _, _, before, after = conv_pads(padding, (1, k), (1, attrs["dilation"]), (1, attrs["stride"]))
    else:
        before = after = padding
    ex.node("Conv", args, v, kernel_shape=[k], strides=[attrs["stride"]], pads=[before, after],
            dilations=[attrs["dilation"]], group=int(attrs["groups"]))


@exporter("conv_transpose2d")
def conv_transpose2d(ex, v, args, attrs):
    (p0, p1) = attrs["padding"]
    ex.node("ConvTranspose", args, v, kernel_shape=list(shape_of(ex, args[1])[2:]), strides=list(attrs["stride"]),
            pads=[p0, p1, p0, p1], output_padding=list(attrs["output_padding"]), dilations=list(attrs["dilation"]),
            group=int(attrs["groups"]))


def pool(ex, op_type, v, args, attrs, **extra):
    (p0, p1), kernel = attrs["padding"], attrs["kernel_size"]
    ex.node(op_type, args, v, kernel_shape=list(kernel), strides=list(attrs["stride"] or kernel),
            pads=[p0, p1, p0, p1], **extra)


@exporter("max_pool2d")
def max_pool2d(ex, v, args, attrs):
    pool(ex, "MaxPool", v, args, attrs)


@exporter("avg_pool2d")
def avg_pool2d(ex, v, args, attrs):
    pool(ex, "AveragePool", v, args, attrs, count_include_pad=int(attrs["count_include_pad"]))


@exporter("adaptive_avg_pool2d")
def adaptive_avg_pool2d(ex, v, args, attrs):
    if tuple(attrs["output_size"]) == (1, 1):
        ex.node("GlobalAveragePool", args, v)
        return
    _, _, h, w = shape_of(ex, args[0])
    kernel = [h // attrs["output_size"][0], w // attrs["output_size"][1]]
    ex.node("AveragePool", args, v, kernel_shape=kernel, strides=kernel)


@exporter("flatten")
def flatten(ex, v, args, attrs):
    rank = len(shape_of(ex, args[0]))
    start = attrs["start_dim"] % rank
    if start == 1:
        ex.node("Flatten", args, v, axis=1)
    else:  # 0 keeps a dimension of the input: (d0, ..., d(start-1), -1)
        ex.node("Reshape", [args[0], ex.ints([0] * start + [-1], f"{v}_shape")], v)


@exporter("reshape")
def reshape(ex, v, args, attrs):
    """A target with named dimensions: each one where the input has it at the same place is 0 (kept); one left
    over is the -1; else the target is built from the input's Shape at run time."""
    x_shape, target = shape_of(ex, args[0]), list(shape_of(ex, v))
    out = [0 if isinstance(d, str) and i < len(x_shape) and x_shape[i] == d else d for i, d in enumerate(target)]
    named = [i for i, d in enumerate(out) if isinstance(d, str)]
    if len(named) == 1:
        out[named[0]] = -1
    if all(not isinstance(d, str) for d in out):
        ex.node("Reshape", [args[0], ex.ints(out, f"{v}_shape")], v)
        return
    shape = ex.node("Shape", [args[0]], ex.fresh(f"{v}_input_shape"))
    parts = [ex.node("Gather", [shape, ex.ints([x_shape.index(d)], f"{v}_axis")], ex.fresh(f"{v}_{d}"), axis=0)
             if isinstance(d, str) else ex.ints([d], f"{v}_dim") for d in target]
    ex.node("Reshape", [args[0], ex.node("Concat", parts, ex.fresh(f"{v}_shape"), axis=0)], v)


# ---- the section 15 ops ------------------------------------------------------------------------------------------

@exporter("gelu")
def gelu(ex, v, args, attrs):
    """Opset 17 has no Gelu: torch's formulas, x * 0.5 * (1 + erf(x / sqrt 2)) or its tanh approximation."""
    (x,) = args
    if attrs["approximate"] == "tanh":
        cube = ex.node("Mul", [x, ex.node("Mul", [x, x], ex.fresh(f"{v}_sq"))], ex.fresh(f"{v}_cube"))
        inner = ex.node("Add", [x, ex.node("Mul", [cube, ex.scalar(0.044715, f"{v}_c")], ex.fresh(f"{v}_t"))],
                        ex.fresh(f"{v}_inner"))
        scaled = ex.node("Mul", [inner, ex.scalar(math.sqrt(2.0 / math.pi), f"{v}_k")], ex.fresh(f"{v}_scaled"))
        curve = ex.node("Tanh", [scaled], ex.fresh(f"{v}_tanh"))
    else:
        scaled = ex.node("Div", [x, ex.scalar(math.sqrt(2.0), f"{v}_sqrt2")], ex.fresh(f"{v}_scaled"))
        curve = ex.node("Erf", [scaled], ex.fresh(f"{v}_erf"))
    one_plus = ex.node("Add", [curve, ex.scalar(1.0, f"{v}_one")], ex.fresh(f"{v}_1p"))
    half = ex.node("Mul", [x, ex.scalar(0.5, f"{v}_half")], ex.fresh(f"{v}_halfx"))
    ex.node("Mul", [half, one_plus], v)


@exporter("pow")
def pow_(ex, v, args, attrs):
    ex.node("Pow", [*args, ex.scalar(attrs["exponent"], f"{v}_exponent")], v)


@exporter("clip")
def clip(ex, v, args, attrs):
    bounds = [ex.scalar(attrs[key], f"{v}_{key}") if attrs[key] is not None else "" for key in ("min", "max")]
    ex.node("Clip", [*args, *bounds], v)


@exporter("layer_norm")
def layer_norm(ex, v, args, attrs):
    x, rest = args[0], list(args[1:])
    if not rest:  # ONNX's Scale is not optional: ones
        name = ex.fresh(f"{v}_scale")
        ones = np.ones(shape_of(ex, x)[-1:], ex.dtype)
        ex.initializers.append(ex.onnx.numpy_helper.from_array(ones, name))
        rest = [name]
    ex.node("LayerNormalization", [x, *rest], v, axis=-1, epsilon=float(attrs["eps"]))


@exporter("rms_norm")
def rms_norm(ex, v, args, attrs):
    """x / sqrt(mean(x * x over the last axis) + eps) (* weight): opset 17 has no RMSNormalization."""
    x, rest = args[0], list(args[1:])
    eps = attrs["eps"] if attrs["eps"] is not None else float(np.finfo(ex.dtype).eps)
    square = ex.node("Mul", [x, x], ex.fresh(f"{v}_sq"))
    mean = ex.node("ReduceMean", [square], ex.fresh(f"{v}_ms"), axes=[-1], keepdims=1)
    root = ex.node("Sqrt", [ex.node("Add", [mean, ex.scalar(eps, f"{v}_eps")], ex.fresh(f"{v}_var"))],
                   ex.fresh(f"{v}_rms"))
    if not rest:
        ex.node("Div", [x, root], v)
        return
    ex.node("Mul", [ex.node("Div", [x, root], ex.fresh(f"{v}_normalized")), rest[0]], v)


@exporter("silu")
def silu(ex, v, args, attrs):
    ex.node("Mul", [args[0], ex.node("Sigmoid", args, ex.fresh(f"{v}_sigmoid"))], v)


@exporter("softplus")
def softplus(ex, v, args, attrs):
    """torch's softplus (beta 1, threshold 20): x itself past 20, where log(1 + exp(x)) is x in floating point."""
    soft = ex.node("Softplus", args, ex.fresh(f"{v}_soft"))
    above = ex.node("Greater", [args[0], ex.scalar(20.0, f"{v}_threshold")], ex.fresh(f"{v}_above"))
    ex.node("Where", [above, args[0], soft], v)


def extreme(ex, op_type, v, args, attrs):
    axes = ex.axes(attrs)
    extra = {} if axes is None else {"axes": axes}
    ex.node(op_type, args, v, keepdims=int(bool(attrs.get("keepdims", False))), **extra)


@exporter("max")
def reduce_max(ex, v, args, attrs):
    extreme(ex, "ReduceMax", v, args, attrs)


@exporter("min")
def reduce_min(ex, v, args, attrs):
    extreme(ex, "ReduceMin", v, args, attrs)


@exporter("concat")
def concat(ex, v, args, attrs):
    ex.node("Concat", args, v, axis=int(attrs["axis"]))


@exporter("slice")
def slice_(ex, v, args, attrs):
    step, stop = attrs["step"], attrs["stop"]
    stop = (INT64_MAX if step > 0 else INT64_MIN) if stop is None else stop
    ex.node("Slice", [args[0], ex.ints([attrs["start"]], f"{v}_starts"), ex.ints([stop], f"{v}_ends"),
                      ex.ints([attrs["axis"]], f"{v}_axes"), ex.ints([step], f"{v}_steps")], v)


# ---- the section 15 and 16 ops: embedding, where, attention, dropout, batch_norm ---------------------------------

@exporter("embedding")
def embedding(ex, v, args, attrs):
    ids, weight = args
    ex.node("Gather", [weight, ids], v, axis=0)


@exporter("where")
def where(ex, v, args, attrs):
    ex.node("Where", args, v)


@exporter("dropout")
def dropout(ex, v, args, attrs):
    """The model is for inference, where dropout is the identity."""
    ex.node("Identity", args, v)


@exporter("batch_norm")
def batch_norm(ex, v, args, attrs):
    """Evaluation form: the running statistics; ONNX's momentum weights the running value, torch's the batch's."""
    ex.node("BatchNormalization", args, v, epsilon=float(attrs["eps"]), momentum=1.0 - float(attrs["momentum"]))


@exporter("attention")
def attention(ex, v, args, attrs):
    """softmax(q @ k^T * scale (+ a causal mask: a huge negative number above the diagonal)) @ v, as MatMul and
    Softmax."""
    q, k, val = args
    q_shape, k_shape = shape_of(ex, q), shape_of(ex, k)
    rank = len(k_shape)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    kt = ex.node("Transpose", [k], ex.fresh(f"{v}_kt"), perm=perm)
    scale = attrs["scale"] if attrs["scale"] is not None else 1.0 / math.sqrt(q_shape[-1])
    scores = ex.node("Mul", [ex.node("MatMul", [q, kt], ex.fresh(f"{v}_qk")), ex.scalar(scale, f"{v}_scale")],
                     ex.fresh(f"{v}_scores"))
    if attrs["causal"]:
        tq, tk = q_shape[-2], k_shape[-2]
        if isinstance(tq, str) or isinstance(tk, str):
            raise GraphError(f"causal attention of {q_shape} and {k_shape}: graphc exports fixed sequence lengths",
                             node=v)
        hidden = -float(np.finfo(ex.dtype).max) / 2  # finite (a param when imported again); exp of it is 0 as well
        mask = np.where(np.tril(np.ones((tq, tk), bool)), 0.0, hidden).astype(ex.dtype)
        name = ex.fresh(f"{v}_mask")
        ex.initializers.append(ex.onnx.numpy_helper.from_array(mask, name))
        scores = ex.node("Add", [scores, name], ex.fresh(f"{v}_masked"))
    probs = ex.node("Softmax", [scores], ex.fresh(f"{v}_weights"), axis=-1)
    ex.node("MatMul", [probs, val], v)


# ---- graphc export --------------------------------------------------------------------------------------

def to_onnx(g, outputs, params: dict, name: str | None = None):
    """The forward graph of ``outputs`` (node names) of Graph or DiGraph ``g`` as a checked ``onnx.ModelProto``."""
    G = g.nx if isinstance(g, Graph) else g
    return Exporter(G, outputs, params, name or G.graph.get("name", "model")).run()


def module_params(spec) -> dict:
    """``init_params(0)`` of the module the spec compiles to (its params_file's values, or random draws)."""
    module = compile(spec.graph, **spec.options()).load()
    return {k: np.array(v) for k, v in module.init_params(0).items()}


def read_params(path, G, names) -> dict:
    """The arrays of params ``names`` from a ``save_params`` file: each there, of its shape, finite floats. Shapes
    and dtypes are checked from the arrays' headers before any data is read (files.read_npz)."""
    def check(v, shape, dtype):
        if v not in names:
            return False
        if shape != tuple(G.nodes[v]["shape"]):
            return f"param {v!r} has shape {shape}, the spec says {tuple(G.nodes[v]['shape'])}"
        if dtype.kind != "f":
            return f"param {v!r} is an array of {dtype}: graphc exports float params"
        return True

    if not Path(path).exists():
        raise SpecError("cannot read the params: no such file", file=str(path))
    params = read_npz(path, "params", check, SpecError)
    for v in names:
        if v not in params:
            raise SpecError(f"no array for param {v!r}", file=str(path), node=v)
        if not np.isfinite(params[v]).all():
            raise SpecError(f"param {v!r} holds NaN or infinite values: graphc exports finite params",
                            file=str(path), node=v)
    return params


def export_file(spec_path, output=None, params_path=None, force: bool = False) -> Path:
    """``graphc export``: the spec's outputs as an ONNX model at ``output`` (default: SPEC with .onnx). An existing
    file there is replaced only if graphc wrote it (its producer name), or with ``force``."""
    onnx_module()  # before any work: a missing extra is the first thing to say
    spec = load_spec(spec_path)
    out = Path(output) if output else Path(spec_path).with_suffix(".onnx")
    if params_path is not None and same_file(out, Path(params_path)):
        raise GraphcError("writing the model would replace the --params file: choose another -o", file=str(out))
    if not force:
        check_replaceable(out)
    outputs = spec.outputs or [spec.loss]
    G = spec.graph.nx
    params = module_params(spec) if params_path is None else read_params(params_path, G, spec.graph.params)
    model = to_onnx(spec.graph, outputs, params)
    write_atomic(out, model.SerializeToString())
    return out


def check_replaceable(out: Path) -> None:
    """An existing regular file at ``out`` is an ONNX model that graphc wrote (say, the PyTorch model a spec was
    imported from is not)."""
    if not out.is_file():
        return
    model = onnx_module().ModelProto()
    try:
        model.ParseFromString(out.read_bytes())
        producer = model.producer_name
    except Exception:  # not an ONNX model at all
        producer = None
    if producer != PRODUCER:
        made = f"was made by {producer!r}" if producer else "is not a model graphc wrote"
        raise GraphcError(f"the existing file {made}: export replaces only its own models; choose another -o, or "
                          "give --force to replace it", file=str(out))
