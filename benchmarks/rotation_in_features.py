"""How much of the rotation period do the frozen features keep, and what age floor does detectable rotation set?

    .venv/bin/python benchmarks/rotation_in_features.py --run runs/small [--run OTHER_RUN ...] \
        --out benchmarks/results/rotation_in_features.json

Gyrochronology needs Prot, so the age heads can only be as good as the Prot the light-curve features carry.
For each run (VALIDATION split only; stars with both modalities):

* ``prot_from_features``: a gradient-boosted regression of log10 Prot on the frozen features [z_lc ; z_spec]
  (fit on train), scored on validation stars by spot amplitude (the modulation a light curve shows):
  the share within 10 % and the median |d log10 P|;
* ``acf_reference``: a classical estimate from the very same model input (the centre crop's autocorrelation
  channel, highest peak) on the strongly spotted validation stars: what the input allows without learning;
* ``age_head_val_rmse_gyr``: the evaluation's age head on the standardised features concatenated (fit on
  80 % of train, early-stopped and calibrated on the other 20 %), RMSE on validation.

Once per survey, on the TEST stars the evaluation scores: the observed-label age oracle
(``oracle_gbr_observed_labels``) with Prot hidden (NaN) for stars whose spot amplitude is below a threshold --
the age floor when only detectable rotation can be used (the issue's true-label oracle uses every star's Prot).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

AMP_BINS_PPM = (0, 30, 100, 300, 1000, np.inf)
STRONG_PPM = 300.0
HIDE_BELOW_PPM = (0, 30, 100, 300)
WITHIN = np.log10(1.1)


def acf_period_days(channels: np.ndarray, cadence_days: float) -> np.ndarray:
    """Lag of the highest autocorrelation peak (prominence >= 0.1) of the model's ACF channel; NaN if none."""
    from scipy.signal import find_peaks
    out = np.full(len(channels), np.nan)
    for i, a in enumerate(channels[:, 2]):
        pk, _ = find_peaks(a, prominence=0.1)
        if len(pk):
            out[i] = pk[np.argmax(a[pk])] * cadence_days
    return out


def score(err: np.ndarray) -> dict:
    err = err[np.isfinite(err)]
    return {"n": int(len(err)), "within_10pct": round(float((err < WITHIN).mean()), 3) if len(err) else None,
            "median_abs_dlog10p": round(float(np.median(err)), 4) if len(err) else None}


def run_report(run: Path):
    """-> (this run's report, its catalogue, its both-modalities mask)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from desa_core.data.preprocess import light_curve_channels
    from desa_core.evaluate.run import _raw_representation, open_run
    from desa_core.models.heads import fit_age_head, predict_age
    inp = open_run(run)
    f, cat, cfg = inp.features, inp.catalog, inp.cfg
    split = cat["split"].to_numpy()
    both = f.has_lc & f.has_spec
    train, val = (split == "train") & both, (split == "val") & both
    logp = np.log10(cat["prot_days"].to_numpy(np.float64))
    amp = cat["spot_amplitude_ppm"].to_numpy(np.float64)
    x = np.concatenate([f.z_lc, f.z_spec], 1)
    fit = train & np.isfinite(logp)
    pred = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=0).fit(x[fit], logp[fit]).predict(x)
    bins = {}
    for lo, hi in zip(AMP_BINS_PPM[:-1], AMP_BINS_PPM[1:]):
        s = val & (amp >= lo) & (amp < hi)
        bins[f"{lo:g}-{hi:g} ppm"] = score(np.abs(pred[s] - logp[s]))
    strong = val & (amp >= STRONG_PPM)
    rows = cat["lc_row"].to_numpy()[strong]
    cache = np.load(run / "cache" / "light_curves.npy", mmap_mode="r")
    ch = light_curve_channels(np.asarray(cache[rows]), None, cfg.preprocess)
    acf = np.log10(acf_period_days(ch, cfg.preprocess.lc_cadence_days))
    rng = np.random.default_rng(0)
    u = rng.random(len(cat))
    tra, trb = (split == "train") & (u < 0.8), (split == "train") & (u >= 0.8)
    rep = _raw_representation("concat", f, split == "train").embedding.astype(np.float32)
    age = cat["age_gyr"].to_numpy(np.float64)
    head, _ = fit_age_head(rep, age, tra, trb, None, 0, False)
    rmse = float(np.sqrt(np.mean((predict_age(head, rep[val])[1] - age[val]) ** 2)))
    tc = cfg.train
    return {"config": cfg.name, "lc_epochs": tc.lc_epochs, "prot_target": tc.prot_target,
            "prot_from_features": {"by_spot_amplitude": bins,
                                   f">= {STRONG_PPM:g} ppm": score(np.abs(pred[strong] - logp[strong]))},
            "acf_reference": {f">= {STRONG_PPM:g} ppm": score(np.abs(acf - logp[strong]))},
            "age_head_val_rmse_gyr": round(rmse, 3)}, cat, both


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="a run folder (repeat to compare runs)")
    ap.add_argument("--out", default="benchmarks/results/rotation_in_features.json")
    a = ap.parse_args()
    from desa_core.evaluate.run import OBSERVED_ORACLE_KEY, oracle_age_metrics
    out = {"runs": {}}
    for r in a.run:
        rep, cat, both = run_report(Path(r))
        out["runs"][r] = rep
        print(r, json.dumps(rep), flush=True)
    test = (cat["split"].to_numpy() == "test") & both
    amp = cat["spot_amplitude_ppm"].to_numpy(np.float64)
    floor = {}
    for thr in HIDE_BELOW_PPM:
        c = cat.copy()
        c.loc[amp < thr, "prot_days"] = np.nan
        m = oracle_age_metrics(c, test, key=OBSERVED_ORACLE_KEY)
        floor[f"prot hidden below {thr:g} ppm"] = {"age_rmse_gyr": round(m["age_rmse_gyr"], 3),
                                                   "share_hidden": round(float((amp[test] < thr).mean()), 3)}
    out["observed_label_oracle_test"] = floor
    print(json.dumps(floor), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
