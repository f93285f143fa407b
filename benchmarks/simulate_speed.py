"""Speed and memory of `desa simulate` (default config): stars/s, bytes per star, peak memory.

    .venv/bin/python benchmarks/simulate_speed.py --stars 2000 --out results.json

Writes a JSON with the one-time setup (MIST grid, gyrochronology table), the wall time of the catalogue and
of the whole run, stars per second, the per-star cost of light curves vs spectra (one process), the store's
bytes per star, and peak memory: the parent's Python allocations (tracemalloc) and the peak resident set size of
the parent and of the worker processes (resource.getrusage), and the CPU seconds of the run (parent and
workers), which unlike wall time do not depend on the machine's other load. The machine's other load is reported too
(os.getloadavg), since the default setup shares two cores.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from desa_core.data.simulate import SimulationConfig, simulate_catalog, simulate_survey  # noqa: E402
from desa_core.data.simulate.light_curves import kepler_time_grid, simulate_light_curves  # noqa: E402
from desa_core.data.simulate.rotation import bouma2023_table  # noqa: E402
from desa_core.data.simulate.spectra import lamost_wavelength_grid, simulate_spectra  # noqa: E402
from desa_core.data.simulate.stellar import load_grid  # noqa: E402
from desa_core.data.store import SurveyStore, atomic_write_json  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stars", type=int, default=2000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: the config's)")
    p.add_argument("--out", required=True, help="results JSON path")
    p.add_argument("--keep", default=None, help="keep the generated store at this path")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cfg = SimulationConfig(n_stars=a.stars)
    if a.workers:
        cfg.workers = a.workers
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="simulate-bench-"))
    try:
        t0 = time.perf_counter()
        load_grid()
        bouma2023_table()
        t_setup = time.perf_counter() - t0  # one-time per process: MIST grid + gyrochronology table

        t0 = time.perf_counter()
        catalog = simulate_catalog(cfg, seed=a.seed, progress=False)
        t_catalog = time.perf_counter() - t0

        # Which half of the array work dominates: both simulators on the same 200 stars, in this process.
        sub = catalog[catalog["has_light_curve"] & catalog["has_spectrum"]].iloc[:200].reset_index(drop=True)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        simulate_light_curves(sub, kepler_time_grid(cfg.light_curve), rng, cfg.light_curve)
        t_lc = time.perf_counter() - t0
        t0 = time.perf_counter()
        simulate_spectra(sub, lamost_wavelength_grid(cfg.spectrum), rng, cfg.spectrum)
        t_sp = time.perf_counter() - t0

        ru0 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        tracemalloc.start()
        t0 = time.perf_counter()
        store = simulate_survey(seed=a.seed, out=Path(a.keep) if a.keep else tmp / "survey", config=cfg,
                                progress=False)
        t_total = time.perf_counter() - t0
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        ru1 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        cpu = [(b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime) for a, b in zip(ru0, ru1)]
        s = SurveyStore.open(store)
        n_bytes = sum(m["bytes"] for m in s.manifest["files"].values())
        result = {
            "benchmark": "simulate_speed",
            "n_stars": a.stars, "seed": a.seed, "workers": cfg.workers, "chunk_size": cfg.chunk_size,
            "n_light_curves": s.manifest["n_light_curves"], "n_cadences": s.manifest["n_cadences"],
            "n_spectra": s.manifest["n_spectra"], "n_wavelengths": s.manifest["n_wavelengths"],
            "setup_seconds": round(t_setup, 2),
            "catalog_seconds": round(t_catalog, 2),
            "total_seconds": round(t_total, 2),
            "arrays_and_write_seconds_est": round(t_total - t_catalog, 2),
            # CPU time does not depend on how many other jobs share the machine (wall time does):
            "cpu_seconds_parent": round(cpu[0], 2), "cpu_seconds_workers": round(cpu[1], 2),
            "cpu_ms_per_star": round(1000 * sum(cpu) / a.stars, 2),
            "light_curve_ms_per_star_1proc": round(1000 * t_lc / len(sub), 2),
            "spectrum_ms_per_star_1proc": round(1000 * t_sp / len(sub), 2),
            "stars_per_second": round(a.stars / t_total, 1),
            "store_bytes": n_bytes, "bytes_per_star": round(n_bytes / a.stars),
            "peak_python_alloc_mb_parent": round(py_peak / 2**20, 1),
            "peak_rss_mb_parent": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_rss_mb_workers": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(a.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
