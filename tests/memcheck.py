"""The one allocation probe of the tests: the peak of memory allocated while a call runs (NumPy reports its array
data to tracemalloc), above what was held before it."""

import tracemalloc

import numpy as np


def peak_bytes(fn, bufsize=None) -> int:
    """Peak bytes allocated during ``fn()``. ``bufsize`` sets NumPy's ufunc buffer size meanwhile (np.setbufsize):
    a broadcasting or casting ufunc may take a buffer of its own, which is no array of the step."""
    old = np.setbufsize(bufsize) if bufsize is not None else None
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        if old is not None:
            np.setbufsize(old)
