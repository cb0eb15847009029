"""A CPU test double of the part of CuPy's API that graphc's CuPy modules use, so their logic runs where there is
no GPU (CI, these machines): arrays are a NumPy subclass (so a plain NumPy array is still "not a CuPy array"),
functions are NumPy's, and ``ElementwiseKernel`` interprets the small C subset graphc writes (declarations,
assignments, ``if`` blocks, arithmetic, comparisons, ``?:``, ``max``/``exp``/``log``/``tanh``/``sqrt``, ``(T)``
casts). It checks the generated module's structure and arithmetic, not CuPy itself: bench/gpu.py runs the real
thing on a GPU.
"""

import re
import sys
import types

import numpy as np


class ndarray(np.ndarray):
    """A device array: NumPy's, under another class."""


def _device(x):
    return x.view(ndarray) if isinstance(x, np.ndarray) and not isinstance(x, ndarray) else x


def asarray(x, dtype=None):
    if isinstance(x, np.ndarray) and not isinstance(x, ndarray):
        x = x.copy()  # host -> device is a copy
    return _device(np.asarray(x, dtype=dtype))


def asnumpy(x):
    return np.array(x).view(np.ndarray)


def _wrap(fn):
    def call(*args, **kw):
        return _device(fn(*args, **kw))
    return call


def _device_only(fn):
    """CuPy's functions that are array methods underneath (``cupy.sum(a)`` is ``a.sum()``) take a CuPy array, not
    a Python number, and give one, a 0-d one for a full reduction (NumPy gives a scalar)."""
    def call(a, *args, **kw):
        if not isinstance(a, ndarray):
            raise TypeError(f"cupy.{fn.__name__}: {type(a).__name__} is not a cupy.ndarray")
        result = fn(a, *args, **kw)
        return result if kw.get("out") is not None else np.asarray(result).view(ndarray)
    return call


# ---- the C subset of graphc's kernels, translated to NumPy ------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(\d+\.\d*(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?|\.\d+)|([A-Za-z_]\w*)|(>=|<=|==|!=|[-+*/()?:<>,]))")
_CALLS = {"max": "np.maximum", "exp": "np.exp", "log": "np.log", "tanh": "np.tanh", "sqrt": "np.sqrt"}


class _Expr:
    """Recursive descent over one C expression -> the same value as a NumPy expression (text)."""

    def __init__(self, text):
        self.tokens, pos = [], 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise ValueError(f"cannot read C at {text[pos:]!r}")
            self.tokens.append(m.group(1) or m.group(2) or m.group(3))
            pos = m.end()
        self.i = 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected=None):
        tok = self.peek()
        if expected is not None and tok != expected:
            raise ValueError(f"expected {expected!r}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self):
        out = self.ternary()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek()!r}")
        return out

    def ternary(self):
        cond = self.comparison()
        if self.peek() == "?":
            self.take()
            a = self.ternary()
            self.take(":")
            b = self.ternary()
            return f"np.where({cond}, {a}, {b})"
        return cond

    def comparison(self):
        left = self.additive()
        if self.peek() in (">", "<", ">=", "<=", "==", "!="):
            op = self.take()
            return f"({left} {op} {self.additive()})"
        return left

    def additive(self):
        out = self.term()
        while self.peek() in ("+", "-"):
            out = f"({out} {self.take()} {self.term()})"
        return out

    def term(self):
        out = self.unary()
        while self.peek() in ("*", "/"):
            out = f"({out} {self.take()} {self.unary()})"
        return out

    def unary(self):
        if self.peek() == "-":
            self.take()
            return f"(-{self.unary()})"
        return self.primary()

    def primary(self):
        tok = self.take()
        if tok == "(":
            if self.peek() == "T" and self.tokens[self.i + 1] == ")":  # a cast to the kernel's type
                self.i += 2
                return self.unary()
            out = self.ternary()
            self.take(")")
            return out
        if tok in _CALLS:
            self.take("(")
            args = [self.ternary()]
            while self.peek() == ",":
                self.take()
                args.append(self.ternary())
            self.take(")")
            return f"{_CALLS[tok]}({', '.join(args)})"
        if tok[0].isdigit() or tok[0] == ".":
            return tok
        return tok


def _python(operation: str) -> list[str]:
    """Statements of the C subset -> Python lines."""
    lines, text, depth = [], operation.strip(), 0
    while text:
        m = re.match(r"if\s*\((.*?)\)\s*\{", text, re.S)
        if m:
            lines.append("    " * depth + f"if np.all({_Expr(m.group(1)).parse()}):")
            depth += 1
            text = text[m.end():].strip()
            continue
        if text.startswith("}"):
            depth -= 1
            text = text[1:].strip()
            continue
        statement, _, text = text.partition(";")
        text = text.strip()
        target, _, value = statement.partition("=")
        target = target.split()[-1]  # "T g" declares g
        lines.append("    " * depth + f"{target} = {_Expr(value).parse()}")
    return lines


class ElementwiseKernel:
    def __init__(self, in_params, out_params, operation, name):
        self.ins = [p.split()[-1] for p in in_params.split(",")]
        self.outs = [p.split()[-1] for p in out_params.split(",")]
        self.name = name
        self.code = compile("\n".join(_python(operation)) or "pass", f"<kernel {name}>", "exec")

    def __call__(self, *args):
        if len(args) != len(self.ins) + len(self.outs):
            raise TypeError(f"{self.name}: {len(args)} arguments, expected {len(self.ins) + len(self.outs)}")
        outs = args[len(self.ins):]
        if not all(isinstance(o, ndarray) for o in outs):
            raise TypeError(f"{self.name}: outputs must be device arrays")
        env = {"np": np, **dict(zip(self.ins, args)), **{n: np.array(o) for n, o in zip(self.outs, outs)}}
        exec(self.code, env)
        for n, o in zip(self.outs, outs):
            o[...] = np.broadcast_to(env[n], o.shape)
        return outs[0] if len(outs) == 1 else outs


def module() -> types.ModuleType:
    """A fresh ``cupy`` module object."""
    cp = types.ModuleType("cupy", __doc__)
    for name in ("matmul", "add", "subtract", "multiply", "divide", "negative", "maximum", "minimum", "greater",
                 "exp", "log", "tanh", "sqrt", "logaddexp", "abs", "log1p", "isfinite", "vdot", "put", "where",
                 "copyto", "shape"):
        setattr(cp, name, getattr(np, name))
    for name in ("power", "clip", "equal", "greater_equal", "less_equal", "concatenate", "finfo",
                 "bool_"):  # section 15's ops (tests/test_seq_ops.py); each is CuPy's too
        setattr(cp, name, getattr(np, name))
    for name in ("sum", "max", "min", "mean", "var", "cumsum", "take", "take_along_axis", "expand_dims",
                 "broadcast_to", "bincount", "triu"):
        setattr(cp, name, _device_only(getattr(np, name)))
    for name in ("inf",):  # attention
        setattr(cp, name, getattr(np, name))
    for name in ("full", "zeros_like", "empty", "empty_like", "arange", "zeros", "ones"):
        setattr(cp, name, _wrap(getattr(np, name)))
    cp.ndarray, cp.asarray, cp.asnumpy, cp.ElementwiseKernel = ndarray, asarray, asnumpy, ElementwiseKernel
    cp.float32, cp.float64, cp.int64 = np.float32, np.float64, np.int64
    return cp


def install(monkeypatch) -> types.ModuleType:
    cp = module()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    return cp
