"""Benchmark `desa ingest` on synthetic MAST/LAMOST-format files of real size; writes JSON.

    .venv/bin/python benchmarks/bench_ingest.py --stars 50 --quarters 4 [--out benchmarks/results/ingest.json]

Each quarter is ~90 days of Kepler long cadence (4,400 cadences), each spectrum LAMOST's 3,909 pixels
(half the stars in the DR1-4 image layout, half in the DR5+ table layout). Reports wall time, files per
second and peak resident memory of the ingest itself (file generation is not timed).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the FITS writers shared with the tests

import numpy as np  # noqa: E402

from desa_core.data.ingest import IngestConfig, ingest  # noqa: E402
from desa_core.data.store import atomic_write_json  # noqa: E402
from fits_fixtures import (lamost_spectrum_truth, write_catalogue, write_lamost_image,  # noqa: E402
                           write_lamost_table, write_star_quarters)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stars", type=int, default=50)
    ap.add_argument("--quarters", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ingest.json"))
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rng = np.random.default_rng(0)
        kic = 10_000_001 + np.arange(a.stars)
        ra = 280 + 10 * rng.random(a.stars)
        dec = 40 + 8 * rng.random(a.stars)
        w, f, iv, am = lamost_spectrum_truth()
        for i in range(a.stars):
            write_star_quarters(d / "lc", int(kic[i]), n_quarters=a.quarters, days=90.0, ra=ra[i], dec=dec[i],
                                rng=rng)
            writer = write_lamost_image if i % 2 else write_lamost_table
            writer(d / "sp" / f"spec-{i}.fits", w, f * (1 + 0.01 * i), iv, am, obsid=1000 + i, ra=ra[i],
                   dec=dec[i] + rng.normal(0, 0.3) / 3600)
        write_catalogue(d / "cat.csv", {"kic": kic, "ra": ra, "dec": dec, "teff": 5000 + 10 * np.arange(a.stars)},
                        "csv")
        t0 = time.perf_counter()
        rep = ingest(d / "lc", d / "sp", d / "cat.csv", d / "store", config=IngestConfig(progress=False))
        wall = time.perf_counter() - t0
        store_bytes = sum(p.stat().st_size for p in (d / "store").rglob("*") if p.is_file())
    n_files = rep.n_light_curve_files + rep.n_spectrum_files
    result = {
        "benchmark": "ingest", "stars": a.stars, "quarters_per_star": a.quarters, "files": n_files,
        "n_cadences": rep.n_cadences, "wall_s": round(wall, 3), "files_per_s": round(n_files / wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "store_mb": round(store_bytes / 2**20, 2), "n_stars": rep.n_stars, "n_skipped": rep.n_skipped,
    }
    atomic_write_json(a.out, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
