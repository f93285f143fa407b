"""``njit``: numba's ``njit`` with its on-disk cache, so that a process loads the compiled kernels instead of
compiling them again.

Compiling the preprocessing kernels took ~10 s in every new process that embedded new stars (each Dask worker,
each `desa add`, a dashboard server's first upload); with the cache the first call takes ~0.4 s. Numba keeps
the machine code beside the source (``__pycache__``), in the user's cache folder, or under ``NUMBA_CACHE_DIR``,
and compiles again whenever the source file changes. Where none of them can be written (a read-only install
with a read-only home), numba refuses a cached function when it is defined; this falls back to compiling in
memory, as before, rather than failing the import.
"""
from __future__ import annotations

import logging

import numba

log = logging.getLogger(__name__)


def njit(**options):
    """``numba.njit(cache=True, **options)``, or without the cache where no cache folder can be written."""
    def decorate(fn):
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError as e:    # "cannot cache function ...: no locator available for file ..."
            log.debug("numba cache unavailable for %s (%s): compiling in memory", fn.__qualname__, e)
            return numba.njit(**options)(fn)
    return decorate
