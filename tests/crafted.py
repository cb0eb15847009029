"""Crafted files for the hostile-input tests."""

import io
import zipfile

import numpy as np


def npz_with_headers(path, headers: dict, mode="w"):
    """A .npz whose members' .npy headers claim {name: (shape, dtype)}: a member of a plausible size (up to a
    million elements) holds zeros, a bigger one 16 bytes. The directory of a decompression bomb, without its
    gigabytes: a reader that trusted the headers would try to read them. mode="a" adds them to a .npz."""
    with zipfile.ZipFile(path, mode) as archive:
        for name, (shape, dtype) in headers.items():
            dtype = np.dtype(dtype)
            member = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                member, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
            size = int(np.prod(shape, dtype=object))
            archive.writestr(f"{name}.npy", member.getvalue() + bytes(size * dtype.itemsize if size <= 10**6 else 16))
