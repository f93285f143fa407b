"""Time the light-curve and spectrum simulators on a random star table; writes JSON.

    .venv/bin/python benchmarks/bench_simulate_observables.py --stars 2000
    (writes benchmarks/results/simulate_observables.json)

Reports seconds per 1000 stars for ``simulate_light_curves`` (default 180-day, 58.85-min grid) and
``simulate_spectra`` (3861-pixel LAMOST grid), single process, wall and CPU time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from desa_core.data.simulate.light_curves import LightCurveConfig, kepler_time_grid, simulate_light_curves
from desa_core.data.simulate.spectra import SpectrumConfig, lamost_wavelength_grid, simulate_spectra


def random_stars(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """A plausible mix of dwarfs, subgiants and binaries with every column the simulators read."""
    teff = rng.uniform(3600, 6800, n)
    logg = np.where(rng.uniform(size=n) < 0.15, rng.uniform(2.3, 3.9, n), rng.uniform(4.0, 4.7, n))
    cls = rng.choice(["single", "wide", "close_sync", "eclipsing"], n, p=[0.55, 0.38, 0.05, 0.02])
    binary = cls != "single"
    porb = np.where(np.isin(cls, ["close_sync", "eclipsing"]), rng.uniform(0.8, 10, n),
                    np.where(binary, 10 ** rng.uniform(2, 6, n), np.nan))
    prot = np.where(np.isin(cls, ["close_sync", "eclipsing"]), porb, rng.uniform(1, 45, n))
    comp_teff = np.where(binary, teff * rng.uniform(0.6, 1.0, n), np.nan)
    fr = np.where(binary, (comp_teff / teff) ** 6, 0.0)
    rv1 = rng.normal(-20, 30, n) + np.where(np.isin(cls, ["close_sync", "eclipsing"]), rng.normal(0, 60, n), 0)
    return pd.DataFrame({
        "teff": teff, "logg": logg, "feh": rng.normal(-0.05, 0.2, n), "mass": rng.uniform(0.5, 1.5, n),
        "radius": 10 ** rng.uniform(-0.3, 0.6, n), "prot_days": prot, "rossby": prot / 20.0,
        "spot_amplitude_ppm": 10 ** rng.uniform(1.5, 4, n),
        "inclination_deg": np.degrees(np.arccos(rng.uniform(size=n))),
        "vsini_kms": rng.uniform(1, 30, n), "kepmag": rng.uniform(10, 16, n), "gaia_g": rng.uniform(10, 17.5, n),
        "a_v": rng.uniform(0, 0.5, n), "binary_class": cls, "is_binary": binary, "porb_days": porb,
        "mass_ratio": np.where(binary, rng.uniform(0.2, 1, n), np.nan),
        "comp_mass": np.where(binary, rng.uniform(0.2, 1, n), np.nan), "comp_teff": comp_teff,
        "comp_logg": np.where(binary, 4.6, np.nan), "comp_radius": np.where(binary, rng.uniform(0.3, 1, n), np.nan),
        "flux_ratio_kp": fr, "flux_ratio_g": fr, "a_rsun": np.where(binary, 4.2 * porb ** (2 / 3) * 1.3, np.nan),
        "orbit_t0_days": 131.5 + rng.uniform(0, 1, n) * np.nan_to_num(porb), "rv_sys_kms": rv1, "rv1_kms": rv1,
        "rv2_kms": np.where(binary, -rv1, np.nan),
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stars", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/simulate_observables.json")
    a = p.parse_args()
    stars = random_stars(a.stars, np.random.default_rng(a.seed))
    t = kepler_time_grid(LightCurveConfig())
    w = lamost_wavelength_grid(SpectrumConfig())
    t0, c0 = time.perf_counter(), time.process_time()
    simulate_light_curves(stars, t, np.random.default_rng(1))
    t_lc, c_lc = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    simulate_spectra(stars, w, np.random.default_rng(2))
    t_sp, c_sp = time.perf_counter() - t0, time.process_time() - c0
    result = {
        "benchmark": "simulate_observables", "n_stars": a.stars, "n_cadences": len(t), "n_pixels": len(w),
        "light_curves_s_per_1000": round(t_lc / a.stars * 1000, 3),
        "spectra_s_per_1000": round(t_sp / a.stars * 1000, 3),
        # CPU seconds: less sensitive than wall time to other processes sharing the machine
        "light_curves_cpu_s_per_1000": round(c_lc / a.stars * 1000, 3),
        "spectra_cpu_s_per_1000": round(c_sp / a.stars * 1000, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "numpy": np.__version__,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
