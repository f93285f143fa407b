"""Measured rotation periods (desa_core.data.periods) against real and simulated truth; the simulator's PDCSAP-like
filter against the real PDC-MAP vs KEPSEISMIC recovery (McQuillan 2014 vs Santos 2019/2021).

    python benchmarks/periods_validation.py --survey data/survey --out benchmarks/results/periods_validation.json

1. The three real 4-year Kepler light curves star-privateer ships, against their Santos et al. periods: the ACF
   and Lomb-Scargle periods on the whole light curve and on its first 180 days (the default survey's span).
2. The simulated survey against its true periods: the share of stars whose ACF period is within 10 % of the
   truth, by spot amplitude and by true period; the detection rule's share and precision.
3. The PDCSAP-like filter: two surveys of ``--pdc-stars`` stars simulated with the same seed, without and with
   the filter (half power at each of ``--pdc-days``); per bin of the true period, the share of the analysed stars
   (logg >= 3.5, Kp <= 16) detected within 10 % with the filter over that share without it, normalised at 10-15 d,
   next to the real ratio (periods McQuillan et al. 2014 found from PDC-MAP light curves within 10 % of Santos's
   from KEPSEISMIC ones, per Santos period bin, normalised the same way).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

AMP_BINS = [(0, 30), (30, 100), (100, 300), (300, 1000), (1000, np.inf)]


def real_stars() -> list[dict]:
    from desa_core.data.periods import measure_periods
    from desa_core.data.reference import kepler_light_curves, santos_rotation
    santos = santos_rotation().table.set_index("kic")
    out = []
    for lc in kepler_light_curves():
        f = np.where(lc.observed, 1 + lc.flux_ppm * 1e-6, np.nan)
        row = {"kic": lc.kic, "prot_santos_days": float(santos.loc[lc.kic, "prot_days"])}
        for tag, m in (("4yr", np.ones(len(lc.time), bool)), ("180d", lc.time < 180.0)):
            r = measure_periods(lc.time[m], f[m][None])
            row[tag] = {k: (bool(v[0]) if v.dtype == bool else round(float(v[0]), 4)) for k, v in r.items()}
            for k in ("prot_acf_days", "prot_ls_days"):
                row[tag][k.replace("_days", "_within_10pct")] = bool(abs(r[k][0] / row["prot_santos_days"] - 1) < 0.1)
        out.append(row)
    return out


def analysed(cat: pd.DataFrame) -> pd.DataFrame:
    return cat[(cat["lc_row"] >= 0) & (cat["logg"] >= 3.5) & (cat["kepmag"] <= 16)]


def recovery(cat: pd.DataFrame) -> dict:
    a = analysed(cat)
    within = (np.abs(a["prot_acf_days"] / a["prot_days"] - 1) < 0.1).to_numpy()
    det = a["rotation_detected"].to_numpy(bool)
    amp = a["spot_amplitude_ppm"].to_numpy()
    by_amp = {}
    for lo, hi in AMP_BINS:
        m = (amp >= lo) & (amp < hi)
        by_amp[f"{lo:g}-{hi:g} ppm"] = {"n": int(m.sum()), "acf_within_10pct": round(float(within[m].mean()), 3),
                                        "detected": round(float(det[m].mean()), 3),
                                        "detected_and_within_10pct": round(float((det & within)[m].mean()), 3)}
    return {"n_analysed": int(len(a)), "detected": round(float(det.mean()), 3),
            "precision_detected_within_10pct": round(float(within[det].mean()), 3),
            "by_spot_amplitude": by_amp, "by_true_period": by_period(a)}


def by_period(a: pd.DataFrame, bins=None) -> list[dict]:
    from desa_core.data.reference import pdc_recovery
    bins = bins or [(r.prot_lo_days, r.prot_hi_days) for r in pdc_recovery().table.itertuples()]
    ok = (a["rotation_detected"].to_numpy(bool)
          & (np.abs(a["prot_acf_days"] / a["prot_days"] - 1) < 0.1).to_numpy())
    out = []
    for lo, hi in bins:
        m = ((a["prot_days"] >= lo) & (a["prot_days"] < hi)).to_numpy()
        out.append({"prot_lo_days": lo, "prot_hi_days": hi, "n": int(m.sum()),
                    "recovered": round(float(ok[m].mean()), 3) if m.any() else None})
    return out


def pdc_filter(n_stars: int, seed: int, half_power_days: list[float]) -> dict:
    from desa_core.data.reference import pdc_recovery
    from desa_core.data.simulate import SimulationConfig, simulate_survey
    from desa_core.data.store import SurveyStore
    real = pdc_recovery().table
    real_frac = (real["n_agree_10pct"] / real["n_santos"]).to_numpy()
    ref_bin = int(np.flatnonzero(real["prot_lo_days"].to_numpy() == 10)[0])
    real_rel = real_frac / real_frac[ref_bin]
    curves, tmp = {}, Path(tempfile.mkdtemp(prefix="desa-pdc-"))
    try:
        for days in [0.0] + list(half_power_days):
            cfg = SimulationConfig(n_stars=n_stars)
            cfg = dataclasses.replace(cfg, light_curve=dataclasses.replace(cfg.light_curve, pdcsap_filter_days=days))
            t0 = time.perf_counter()
            out = simulate_survey(seed=seed, out=tmp / f"pdc{days:g}", config=cfg, progress=False)
            curves[days] = by_period(analysed(SurveyStore.open(out).catalog))
            logging.info("PDCSAP filter %g d: simulated in %.0f s", days, time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = np.array([b["recovered"] or np.nan for b in curves[0.0]])
    result = {"real_relative_recovery": [round(float(x), 3) for x in real_rel],
              "real_recovered_fraction": [round(float(x), 3) for x in real_frac],
              "bins_days": [[b["prot_lo_days"], b["prot_hi_days"]] for b in curves[0.0]],
              "n_per_bin_unfiltered": [b["n"] for b in curves[0.0]],
              "unfiltered_recovered": [b["recovered"] for b in curves[0.0]], "filters": {}}
    for days in half_power_days:
        filt = np.array([b["recovered"] or np.nan for b in curves[days]])
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = filt / base
        rel = ratio / ratio[ref_bin]
        ok = np.isfinite(rel) & (np.array(result["n_per_bin_unfiltered"]) >= 20)
        result["filters"][f"{days:g}"] = {
            "recovered": [b["recovered"] for b in curves[days]],
            "relative_recovery": [None if not np.isfinite(x) else round(float(x), 3) for x in rel],
            "rms_difference_to_real": round(float(np.sqrt(np.mean((rel[ok] - real_rel[ok]) ** 2))), 3),
            "bins_compared": int(ok.sum())}
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--survey", default="data/survey")
    ap.add_argument("--out", default="benchmarks/results/periods_validation.json")
    ap.add_argument("--pdc-stars", type=int, default=4000)
    ap.add_argument("--pdc-seed", type=int, default=7)
    ap.add_argument("--pdc-days", default="20,30")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from desa_core.data.store import SurveyStore
    t0 = time.perf_counter()
    res = {"real_kepler_stars": real_stars()}
    res["simulated_survey"] = {"survey": a.survey, **recovery(SurveyStore.open(a.survey).catalog)}
    res["pdcsap_filter"] = {"n_stars": a.pdc_stars, "seed": a.pdc_seed,
                            **pdc_filter(a.pdc_stars, a.pdc_seed, [float(x) for x in a.pdc_days.split(",")])}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "pdcsap_filter"}, indent=1)[:3000])
    print(json.dumps(res["pdcsap_filter"], indent=1))


if __name__ == "__main__":
    main()
