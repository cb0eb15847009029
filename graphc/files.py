"""Files, once for every room: atomic writes, several files written together, reads that refuse special files,
``.npz`` bytes and ``.npz`` arrays checked from their headers, and importing a generated module from its file.

Only regular files are read or replaced: a FIFO would block a read, a device never end one, and replacing
``/dev/null`` (as root) would turn it into a file. Nothing here knows about graphs; every failure is a one-line
``GraphcError`` naming the file.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import os
import stat
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np

from .errors import GraphcError

SPEC_SUFFIXES = (".toml", ".json")


def npz_bytes(arrays: dict) -> bytes:
    """``arrays`` as the bytes of one .npz file (np.savez, in the dict's order)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFSOCK: "a socket"}


def not_regular(mode: int) -> str | None:
    """Why a file of ``mode`` (st_mode) is not a regular file, or None when it is one."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return os.strerror(errno.EISDIR)
    return f"it is {KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a regular file"


def target_mode(path: Path) -> int | None:
    """The permissions of the file that a write to ``path`` replaces (None: there is none); anything but a
    regular file is refused."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as err:
        raise GraphcError(f"cannot write: {err.strerror or err}", file=str(path)) from None
    if stat.S_ISDIR(mode):
        raise GraphcError("cannot write: it is a directory", file=str(path))
    if not stat.S_ISREG(mode):
        raise GraphcError(f"cannot write: {not_regular(mode)}; graphc replaces only regular files", file=str(path))
    return stat.S_IMODE(mode)


def open_regular(path, what: str, error=GraphcError):
    """``path`` opened for reading (binary), after checking that it is a regular file: never blocks on a FIFO or
    reads a device. Failures raise ``error`` ("cannot read the <what>: <why>")."""
    path = str(path)
    try:
        reason = not_regular(os.stat(path).st_mode)
        if reason is None:  # O_NONBLOCK: a FIFO put there since the stat does not block the open
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            reason = not_regular(os.fstat(fd).st_mode)
            if reason is None:
                return os.fdopen(fd, "rb")
            os.close(fd)
    except OSError as err:
        reason = err.strerror or str(err)
    raise error(f"cannot read the {what}: {reason}", file=path)


def read_regular(path, what: str, error=GraphcError) -> bytes:
    """The bytes of the regular file at ``path`` (see open_regular)."""
    with open_regular(path, what, error) as f:
        try:
            return f.read()
        except OSError as err:
            raise error(f"cannot read the {what}: {err.strerror or err}", file=str(path)) from None


def npz_headers(archive: zipfile.ZipFile) -> dict:
    """{name: (shape, dtype, zip member)} of the arrays in a .npz, from the zip directory and each member's .npy
    header: no array data is read. Raises ValueError (the reason) when it is not a .npz of plain arrays."""
    headers = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise ValueError(f"its member {info.filename!r} is not a .npy array")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"its member {info.filename!r} is a .npy of version {version}")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(member)
        headers[info.filename[:-4]] = (shape, dtype, info)
    return headers


def read_npz(path, what: str, check, error=GraphcError) -> dict:
    """The arrays of the .npz file at ``path`` that ``check(name, shape, dtype)`` wants: it returns True to read
    the member, False to skip it, or what is wrong with it (the message of the error, which names the array). Every member is checked from its
    header before any data is read, so a small file cannot make this read a huge array (a decompression bomb)."""
    with open_regular(path, what, error) as f:
        try:
            with zipfile.ZipFile(f) as archive:
                wanted = []
                for name, (shape, dtype, info) in npz_headers(archive).items():
                    verdict = check(name, shape, dtype)
                    if isinstance(verdict, str):
                        raise error(verdict, file=str(path), node=name)
                    if verdict:
                        wanted.append((name, info))
                arrays = {}
                for name, info in wanted:
                    with archive.open(info) as member:
                        arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
                return arrays
        except (ValueError, zipfile.BadZipFile, EOFError, OSError) as err:
            reason = "not a .npz file" if isinstance(err, zipfile.BadZipFile) else str(err)
            raise error(f"cannot read the {what}: {reason}", file=str(path)) from None


def check_spec_suffix(path: Path) -> Path:
    if path.suffix.lower() in SPEC_SUFFIXES:
        raise GraphcError(f"cannot write to a {path.suffix} file, the kind a spec is: choose another name",
                          file=str(path))
    return path


def holds(path: Path, data: bytes) -> bool:
    """The regular file at ``path`` holds exactly ``data`` (nothing to write)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode) and os.path.getsize(path) == len(data) and \
            path.read_bytes() == data
    except OSError:
        return False


def write_atomic(path, data: str | bytes, *, spec_ok: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename it over ``path``:
    readers see the old file or the new one, never a part; on any failure the old file is left as it was and
    the temporary file is removed. The new file keeps the old one's permissions (0644 for a new file). Only a
    regular file is replaced (see target_mode). Never over a spec: ``graphc compile m.toml -o m.toml`` would
    replace the model with its own module (``spec_ok``: the caller has checked that ``path`` is no spec, e.g.
    ``graphc show --format json -o g.json``)."""
    path = Path(path) if spec_ok else check_spec_suffix(Path(path))
    directory = path.parent
    try:
        if not directory.is_dir():
            reason = f"{str(directory)!r} is not a directory" if directory.exists() else \
                f"directory {str(directory)!r} does not exist"
            raise GraphcError(f"cannot write: {reason}", file=str(path))
    except OSError as err:  # a name longer than the system allows
        raise GraphcError(f"cannot write: {err.strerror or err}", file=str(path)) from None
    mode = target_mode(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise GraphcError(f"cannot write: {err.strerror or err}", file=str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.chmod(tmp, 0o644 if mode is None else mode)
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
    renamed into place. A failure before the renames leaves every existing file as it was; only regular files
    are replaced."""
    modes = {Path(path): target_mode(Path(path)) for path in files}  # every target checked before any write
    parts = {}
    try:
        for (path, mode), data in zip(modes.items(), files.values()):
            part = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
            write_atomic(part, data)
            if mode is not None:
                os.chmod(part, mode)
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
