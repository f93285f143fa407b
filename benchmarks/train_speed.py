"""Wall time of the whole `desa train` (every stage) for a config; the `small` target is <= 600 s on 2 cores.

    .venv/bin/python benchmarks/train_speed.py --survey data/survey --config small \
        --out benchmarks/results/train_speed.json
    .venv/bin/python benchmarks/train_speed.py --stars 10000 --out benchmarks/results/train_speed_synthetic.json
    .venv/bin/python benchmarks/train_speed.py --from-run runs/small --out benchmarks/results/train_speed.json

With ``--survey`` it trains on that store; without, it first writes a synthetic store with the default
survey's array shapes (``--stars`` stars, 180 d at 1 h = 4320 cadences, the LAMOST log-lambda grid of ~3,900
pixels; sinusoid light curves and line-bearing spectra), so the timing reflects the real input sizes. The
JSON holds the wall time of preprocessing and of each stage, the total, torch's thread count and the load
average before and after (the default machine is shared with other work: a loaded machine is slower).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from desa_core.data.store import CATALOG_COLUMNS, SurveyWriter, assign_splits, atomic_write_json  # noqa: E402

BUDGET_S = 600.0


def synthetic_store(out: Path, n: int, seed: int = 0) -> Path:
    """A store with the default survey's shapes: sinusoid light curves, Teff-coloured spectra with lines."""
    rng = np.random.default_rng(seed)
    time_d = np.arange(0.0, 180.0, 1 / 24)
    wave = 10 ** np.arange(np.log10(3700.0), np.log10(9000.0), 1e-4)
    teff = rng.uniform(3800, 7000, n)
    prot = rng.uniform(0.5, 40, n)
    rv = rng.normal(0, 30, n)
    lines = np.array([4341.7, 4862.7, 5185.0, 5895.9, 6564.6, 8544.4, 8664.5])
    ids = [f"BENCH{i:06d}" for i in range(n)]
    with SurveyWriter(out, n_lc=n, n_spec=n, time=time_d, wavelength=wave) as w:
        for i0 in range(0, n, 500):
            i1 = min(n, i0 + 500)
            k = np.arange(i0, i1)
            amp = rng.uniform(1e-4, 1e-2, len(k))[:, None]
            f = 1 + amp * np.sin(2 * np.pi * time_d[None] / prot[k, None] + rng.uniform(0, 6.3, (len(k), 1)))
            f += rng.normal(0, 2e-4, f.shape)
            f[:, (time_d > 90) & (time_d < 91)] = np.nan
            w.light_curves[i0:i1] = f.astype(np.float32)
            x = 1.4388e8 / (wave[None] * teff[k, None])
            cont = (wave[None] / 5000.0) ** -5 / (np.exp(x) - 1)
            cont /= np.median(cont, axis=1, keepdims=True)
            obs = lines[None] * (1 + rv[k, None] / 299792.458)
            prof = 1 - 0.4 * np.exp(-0.5 * ((wave[None, :, None] - obs[:, None, :]) / 2.5) ** 2).sum(-1)
            flux = cont * prof + rng.normal(0, 0.02, cont.shape)
            w.spectra_flux[i0:i1] = flux.astype(np.float32)
            w.spectra_ivar[i0:i1] = np.float32(1 / 0.02**2)
        cat = pd.DataFrame({c: np.nan for c in CATALOG_COLUMNS}, index=range(n))
        cat["star_id"] = ids
        cat["teff"], cat["prot_days"] = teff, prot
        cat["logg"], cat["feh"] = rng.uniform(3.5, 4.7, n), rng.normal(0, 0.3, n)
        cat["abs_g"] = rng.uniform(0, 9, n)
        cls = np.array(["single", "wide", "close_sync", "eclipsing"])[rng.integers(0, 4, n)]
        cat["binary_class"], cat["is_binary"] = cls, cls != "single"
        cat["age_gyr"] = rng.uniform(0.5, 10, n)
        cat["has_light_curve"] = cat["has_spectrum"] = True
        cat["lc_row"] = cat["spec_row"] = np.arange(n)
        cat["split"] = assign_splits(ids, seed=seed)
        cat["rv_kms_obs"] = rv
        w.commit(cat, info={"source": "benchmark-synthetic"})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--survey", default=None, help="survey store (default: a synthetic one of --stars stars)")
    p.add_argument("--stars", type=int, default=10000)
    p.add_argument("--config", default="small")
    p.add_argument("--run", default=None, help="run folder (default: a temporary one, removed afterwards)")
    p.add_argument("--stages", default=None, help="subset of stages (default: all)")
    p.add_argument("--from-run", default=None,
                   help="do not train: report the stage times a finished run recorded in its run_manifest.json")
    p.add_argument("--out", required=True, help="results JSON path")
    a = p.parse_args(argv)
    if a.from_run:
        m = json.loads((Path(a.from_run) / "run_manifest.json").read_text())
        result = {
            "config": m["config_name"], "survey": m["survey"], "n_stars": m["survey_n_stars"], "device": m["device"],
            "from_run": str(a.from_run), "preprocess_s": m.get("preprocess_wall_s"),
            "preprocess_cpu_s": m.get("preprocess_cpu_s"),
            "stage_wall_s": {k: v.get("wall_s") for k, v in m["stages"].items()},
            "stage_cpu_s": {k: v.get("cpu_s") for k, v in m["stages"].items()},
            "total_wall_s": m.get("total_wall_s"), "total_cpu_s": m.get("total_cpu_s"), "budget_s": BUDGET_S,
            "within_budget": (m.get("total_wall_s") or 1e9) <= BUDGET_S,
            "torch_threads": m["config"]["train"].get("torch_threads"), "cpu_count": os.cpu_count(),
            "load_average_now": os.getloadavg(), "note": "times recorded by `desa train` itself during that run",
        }
        atomic_write_json(a.out, result)
        print(json.dumps(result, indent=2))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from desa_core.train.run import train

    tmp = Path(tempfile.mkdtemp(prefix="train-bench-"))
    try:
        survey = Path(a.survey) if a.survey else synthetic_store(tmp / "survey", a.stars)
        run_dir = Path(a.run) if a.run else tmp / "run"
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        train(survey, config=a.config, out=run_dir, stages=a.stages)
        wall = time.perf_counter() - t0
        m = json.loads((run_dir / "run_manifest.json").read_text())
        result = {
            "config": a.config, "survey": str(survey), "synthetic_survey": a.survey is None,
            "n_stars": m["survey_n_stars"], "device": m["device"],
            "preprocess_s": m.get("preprocess_wall_s"), "preprocess_cpu_s": m.get("preprocess_cpu_s"),
            "stage_wall_s": {k: v.get("wall_s") for k, v in m["stages"].items()},
            "stage_cpu_s": {k: v.get("cpu_s") for k, v in m["stages"].items()},
            "total_cpu_s": m.get("total_cpu_s"),
            "total_wall_s": round(wall, 1), "budget_s": BUDGET_S, "within_budget": wall <= BUDGET_S,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(a.out, result)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
