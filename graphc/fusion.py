"""The CuPy backend's fusion: chains of elementwise statements of Trainer.step that the buffer plan already puts
in one buffer (bias + activation, an activation's gradient, ...) become one ``cupy.ElementwiseKernel`` each: one
launch and one pass over memory instead of one per statement. The C of each op is a macro of templates/kernels.j2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .graph import describe, operands
from .ops import OPS
from .schedule import value_of

# C++ (NVRTC compiles C++) and CUDA names a kernel parameter must not take, the functions the kernels call, and
# CuPy's own (i, _ind; the type T)
RESERVED = frozenset("""
alignas alignof asm auto bool break case catch char class const constexpr const_cast continue decltype default
delete do double dynamic_cast else enum explicit export extern false float for friend goto if inline int long
mutable namespace new noexcept nullptr NULL operator private protected public register reinterpret_cast restrict
return short signed sizeof static static_assert static_cast struct switch template this thread_local throw true
try typedef typeid typename union unsigned using virtual void volatile wchar_t while
exp log tanh sqrt max min abs T i
""".split())


@dataclass
class Kernel:
    name: str  # the module-level name: _kernel_<the last node>
    graph: str  # "forward" or "backward"
    nodes: list[str]  # the statements it computes, in order; the last one's value is its output
    args: list[str] = field(default_factory=list)  # the arrays it reads, as the step's variables
    params: list[str] = field(default_factory=list)  # their names inside the kernel
    output: str = ""
    body: str = ""  # the C expression of the output
    equations: list[str] = field(default_factory=list)


def c_name(v: str) -> str:
    """A graph name as a kernel parameter: itself, or with a leading _ (no user name has one) where C++ or CUDA
    reserves it."""
    return "_" + v if v in RESERVED else v


def kernels(sched, macros) -> dict[int, Kernel]:
    """Kernels of Trainer.step's body, keyed by the index of their first statement in ``sched.workspace.body``.

    A chain is a run of consecutive statements of ops with a kernel (``Op.kernel``: a macro in kernels.j2) written
    into one buffer, each value but the last read only by the next statement; a single statement becomes a
    kernel when its NumPy form needs several passes (``Op.multipass``: a relu mask, a stable sigmoid)."""
    graphs = {"forward": sched.G, "backward": sched.A}
    body = sched.workspace.body
    readers: dict[str, int] = {}
    for p in body:
        graph = graphs[p.graph]
        for u in operands(graph, p.node):
            v = value_of(graph, u)
            readers[v] = readers.get(v, 0) + 1
    kept = set(sched.A.graph["grads"].values()) | {sched.loss} | set(sched.outputs)

    def ok(p) -> bool:
        graph = graphs[p.graph]
        data = graph.nodes[p.node]
        return (OPS[data["op"]].kernel and p.out is not None and p.computed_with is None
                and all(graph.nodes[u]["op"] == "const" or value_of(graph, u) == u for u in operands(graph, p.node)))

    found, i = {}, 0
    while i < len(body):
        if not ok(body[i]):
            i += 1
            continue
        j = i
        while (j + 1 < len(body) and ok(body[j + 1]) and body[j + 1].out == body[i].out
               and body[j + 1].graph == body[i].graph and body[j].node not in kept
               and readers.get(body[j].node) == 1 and body[j].node in operands(graphs[body[j].graph], body[j + 1].node)):
            j += 1
        op = graphs[body[i].graph].nodes[body[i].node]["op"]
        if j > i or OPS[op].multipass:
            found[i] = build(graphs[body[i].graph], body[i].graph, [p.node for p in body[i:j + 1]], macros)
        i = j + 1
    return found


def build(graph, key: str, nodes: list[str], macros) -> Kernel:
    k = Kernel(f"_kernel_{nodes[-1]}", key, nodes, output=c_name(nodes[-1]))
    inner = {}  # a fused value -> its C expression
    for v in nodes:
        data = graph.nodes[v]
        args = []
        for u in operands(graph, v):
            if graph.nodes[u]["op"] == "const":
                args.append(f"(T){graph.nodes[u]['attrs']['value']!r}")
            elif u in inner:
                args.append(f"({inner[u]})")
            else:
                if u not in k.args:
                    k.args.append(u)
                    k.params.append(c_name(u))
                args.append(c_name(u))
        inner[v] = str(getattr(macros, data["op"])(*args, **data["attrs"]))
        k.equations.append(describe(graph, v))
    k.body = inner[nodes[-1]]
    return k
