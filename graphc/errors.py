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
        self.file = self.file or file
        self.node = self.node or node
        return self

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        node = f"node '{self.node}': " if self.node else ""
        return f"{where}{node}{self.message}"


class SpecError(GraphcError):
    """The spec file cannot be read or does not follow the spec format."""


class GraphError(GraphcError):
    """The graph is malformed: unknown op, bad name, wrong arity, cycle, missing loss, ..."""


class ShapeError(GraphcError):
    """Operand shapes do not fit the op."""
