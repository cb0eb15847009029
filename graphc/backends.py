"""The backend table: the array libraries a generated module can run on. Adding a backend is adding a row here
and its template, templates/backends/<name>.j2 (every piece of text that differs per library: the imports, how
an input is checked, moving arrays to and from the host, the reductions of the workspace forms, the optimizer's
update). Nothing else in graphc asks which backend it is generating for.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    name: str  # --backend NAME, backend=NAME
    array_module: str  # the compiler name (codegen.COMPILER_NAMES) the generated functions call their arrays' module
    fuse: bool = False  # Trainer.step's elementwise chains become one kernel each (fusion.py, templates/kernels.j2)

    @property
    def template(self) -> str:
        return f"backends/{self.name}.j2"


BACKENDS = {
    b.name: b for b in [
        Backend("numpy", array_module="np"),
        Backend("cupy", array_module="cp", fuse=True),  # params, inputs, workspace and state on the GPU
    ]
}
DEFAULT_BACKEND = "numpy"
