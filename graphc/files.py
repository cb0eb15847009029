"""Files, once for every room: atomic writes, several files written together, ``.npz`` bytes, and importing a
generated module from its file.

Nothing here knows about graphs; every failure is a one-line ``GraphcError`` naming the file.
"""

from __future__ import annotations

import importlib.util
import io
import os
import stat
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

from .errors import GraphcError

SPEC_SUFFIXES = (".toml", ".json")


def npz_bytes(arrays: dict) -> bytes:
    """``arrays`` as the bytes of one .npz file (np.savez, in the dict's order)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_atomic(path, data: str | bytes, *, spec_ok: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename it over ``path``:
    readers see the old file or the new one, never a part; on any failure the old file is left as it was and
    the temporary file is removed. The new file keeps the old one's permissions (0644 for a new file).
    Never over a spec: ``graphc compile m.toml -o m.toml`` would replace the model with its own module
    (``spec_ok``: the caller has checked that ``path`` is no spec, e.g. ``graphc show --format json -o g.json``)."""
    path = Path(path)
    if path.suffix.lower() in SPEC_SUFFIXES and not spec_ok:
        raise GraphcError(f"cannot write to a {path.suffix} file, the kind a spec is: choose another name",
                          file=str(path))
    directory = path.parent
    if not directory.is_dir():
        reason = f"{str(directory)!r} is not a directory" if directory.exists() else \
            f"directory {str(directory)!r} does not exist"
        raise GraphcError(f"cannot write: {reason}", file=str(path))
    if path.is_dir():
        raise GraphcError("cannot write: it is a directory", file=str(path))
    try:
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise GraphcError(f"cannot write: {err.strerror or err}", file=str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise GraphcError(f"cannot write: {err.strerror or err}", file=str(path)) from None
        raise
    return path


def write_together(files: dict) -> None:
    """Write every file or none: each goes to a temporary file beside it (through write_atomic), then all are
    renamed into place. A failure before the renames leaves every existing file as it was."""
    parts = {}
    try:
        for path, data in files.items():
            path = Path(path)
            if path.is_dir():
                raise GraphcError("cannot write: it is a directory", file=str(path))
            part = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
            write_atomic(part, data)
            if path.exists():
                os.chmod(part, path.stat().st_mode & 0o7777)
            parts[path] = part
        for path, part in parts.items():
            os.replace(part, path)
    except BaseException as err:
        for part in parts.values():
            try:
                os.unlink(part)
            except OSError:
                pass
        if isinstance(err, GraphcError):
            err.file = str(path)
            raise
        if isinstance(err, OSError):
            raise GraphcError(f"cannot write: {err.strerror or err}", file=str(path)) from None
        raise


def same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` are the same file (or would be: the same resolved path)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def load_module(path, name: str | None = None, register: bool = False):
    """Import the Python file at ``path`` as a module named ``name`` (default: a fresh unique name). With
    ``register`` it stays in ``sys.modules`` under that name, so that its functions pickle by reference (the Dask
    driver's workers import the same file under the same name)."""
    name = name or f"graphc_generated_{Path(path).stem}_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if register:
            del sys.modules[name]
        raise
    return module
