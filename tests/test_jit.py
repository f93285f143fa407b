"""Compiled kernels are cached on disk: a new process (a Dask worker, `desa add`, a dashboard server) loads the
preprocessing kernels instead of compiling them for ~10 s; where no cache folder can be written, they still
compile."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Both preprocessing kernels warmed in a fresh interpreter (what a server does); prints how they were obtained.
PROBE = textwrap.dedent("""
    import json
    from desa_core.data import preprocess as P
    P.warm_kernels()
    print(json.dumps({k: {"hits": sum(f.stats.cache_hits.values()), "misses": sum(f.stats.cache_misses.values())}
                      for k, f in (("spectra", P._spectra_kernel), ("light_curves", P._clean_kernel))}))
""")


def _probe(env_extra: dict) -> dict:
    import os
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_a_second_process_loads_the_preprocessing_kernels_from_the_cache(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}   # an empty cache: the first process compiles
    first = _probe(env)
    assert all(k["misses"] >= 1 and k["hits"] == 0 for k in first.values()), first
    assert any((tmp_path / "numba-cache").rglob("*.nbi")), "nothing was written to the cache"
    second = _probe(env)
    assert all(k["hits"] >= 1 and k["misses"] == 0 for k in second.values()), second


def test_without_a_writable_cache_folder_kernels_compile_in_memory(monkeypatch):
    from numba.core import caching

    from desa_core.jit import njit
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])   # as with a read-only install and home

    @njit(nogil=True)
    def add_one(a):
        return a + 1

    assert type(add_one._cache).__name__ == "NullCache"   # compiled in memory, not refused
    assert np.array_equal(add_one(np.arange(3)), np.arange(1, 4))
