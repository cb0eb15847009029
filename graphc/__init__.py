"""graphc: compile a static computational graph into a standalone NumPy training module."""

__version__ = "0.1.0"

from .errors import GraphcError, GraphError, ShapeError, SpecError  # noqa: E402
from .graph import Graph, Tensor, add, from_networkx, matmul, mse, mul, relu, sub  # noqa: E402
from .compiler import CompiledModule, compile  # noqa: E402
from .spec import load_spec  # noqa: E402

__all__ = [
    "CompiledModule", "Graph", "GraphError", "GraphcError", "ShapeError", "SpecError", "Tensor",
    "add", "compile", "from_networkx", "load_spec", "matmul", "mse", "mul", "relu", "sub",
]
