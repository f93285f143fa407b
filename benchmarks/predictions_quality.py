"""How good are the predicted properties the page shows (Predictor: the run's heads and the encoders' quantile
heads)? Scored on the test split of the artifact set's survey against the simulator's true values.

    python benchmarks/predictions_quality.py --artifacts artifacts/default --out benchmarks/results/predictions_quality.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", default="artifacts/default")
    ap.add_argument("--out", default="benchmarks/results/predictions_quality.json")
    a = ap.parse_args(argv)
    from sklearn.metrics import roc_auc_score
    s = pd.read_parquet(Path(a.artifacts) / "stars.parquet")
    t = s[s["split"] == "test"]
    res = {"artifacts": a.artifacts, "n_test": int(len(t))}
    for pred, true in (("teff_pred", "teff"), ("logg_pred", "logg"), ("feh_pred", "feh"), ("age_pred_gyr", "age_gyr")):
        ok = np.isfinite(t[pred]) & np.isfinite(t[true])
        d = (t[pred] - t[true])[ok]
        res[pred] = {"n": int(ok.sum()), "rmse": round(float(np.sqrt(np.mean(d ** 2))), 4),
                     "median_abs": round(float(np.median(np.abs(d))), 4), "bias": round(float(d.mean()), 4)}
    ok = np.isfinite(t["prot_pred_days"]) & (t["prot_days"] < 100)
    r = np.log10(t.loc[ok, "prot_pred_days"] / t.loc[ok, "prot_days"])
    det = ok & t["rotation_detected"].astype(bool)
    rd = np.log10(t.loc[det, "prot_pred_days"] / t.loc[det, "prot_days"])
    res["prot_pred_days"] = {"n": int(ok.sum()), "rms_dex": round(float(np.sqrt(np.mean(r ** 2))), 4),
                             "within_10pct": round(float((np.abs(10 ** r - 1) < 0.1).mean()), 3),
                             "detected_rotators": {"n": int(det.sum()), "rms_dex": round(float(np.sqrt(np.mean(rd ** 2))), 4),
                                                   "within_10pct": round(float((np.abs(10 ** rd - 1) < 0.1).mean()), 3)}}
    m = ((t["prot_acf_days"] / t["prot_days"] - 1).abs() < 0.1)[det]
    res["prot_acf_days_detected_within_10pct"] = round(float(m.mean()), 3)
    inside = (t["age_gyr"] >= t["age_pred_lo_gyr"]) & (t["age_gyr"] <= t["age_pred_hi_gyr"])
    res["age_interval"] = {"coverage": round(float(inside.mean()), 3), "nominal": 0.72,
                           "median_width_gyr": round(float((t["age_pred_hi_gyr"] - t["age_pred_lo_gyr"]).median()), 3)}
    res["p_binary"] = {"roc_auc": round(float(roc_auc_score(t["is_binary"].astype(bool), t["p_binary"])), 4)}
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
