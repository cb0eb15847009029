"""Typed user errors. Each carries a location: file, node name and, for syntax errors, a line."""

from __future__ import annotations


class GraphcError(Exception):
    """A mistake in the user's graph or spec, reported as one line without a traceback."""

    def __init__(self, message: str, *, file: str | None = None, node: str | None = None,
                 line: int | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.node = node
        self.line = line

    def located(self, *, file: str | None = None, node: str | None = None) -> "GraphcError":
        """Fill in a location the raiser did not know; returns self for `raise err.located(...)`."""
        self.file = self.file if self.file is not None else file
        self.node = self.node if self.node is not None else node
        return self

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        node = f"node {str(self.node)!r}: " if self.node is not None else ""
        return one_line(f"{where}{node}{self.message}")


def one_line(text: str) -> str:
    """``text`` with every unprintable character escaped: a user's name, path or value (a newline, a
    terminal escape sequence) can never break the one-line message or reach the terminal raw."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class SpecError(GraphcError):
    """The spec file cannot be read or does not follow the spec format."""


class GraphError(GraphcError):
    """The graph is malformed: unknown op, bad name, wrong arity, cycle, missing loss, ..."""


class ShapeError(GraphcError):
    """Operand shapes do not fit the op."""


class CommandError(GraphcError):
    """A problem with the command line or this machine (no Graphviz), not with the spec: reported without the
    spec's name."""


class OnnxMissing(CommandError):
    """``onnx`` is not installed: a problem with this machine, not with a file (reported without a file name)."""


class DataParallelError(RuntimeError):
    """A data-parallel step failed on the cluster (a worker died, the client closed, a task raised). The
    driver-side params and optimizer state are exactly as after the last completed step."""
