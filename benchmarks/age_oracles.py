"""How well can age be known from what a survey measures? The evaluation's age oracle (gradient-boosted quantile
regression, CQR, the test stars with both modalities, 5 seeds) on the survey's observed labels with the rotation
period taken three ways: the simulator's true Prot for every star (what `desa evaluate`'s
oracle_gbr_observed_labels reads), the period measured from the light curve (ACF, only where the rotation is
detected: desa_core.data.periods), or none. The second is the realistic floor for a model that reads only
survey data, and the bar the age target of issue 11 is measured against.

    python benchmarks/age_oracles.py --run runs/small --out benchmarks/results/age_oracles.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OBSERVED = ("teff_obs", "logg_obs", "feh_obs", "abs_g0", "bp_rp0")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/small")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/age_oracles.json")
    a = ap.parse_args(argv)
    from desa_core.evaluate.run import OBSERVED_ORACLE_KEY, oracle_age_metrics
    from desa_core.rundir import RunDir
    run = RunDir.open(a.run)
    cat = run.catalog()
    det = cat["rotation_detected"].to_numpy(bool)
    cat = cat.assign(prot_measured=np.where(det, cat["prot_acf_days"].to_numpy(float), np.nan))
    both = (cat["has_light_curve"] & cat["has_spectrum"]).to_numpy(bool)
    test = (cat["split"] == "test").to_numpy() & both
    variants = {"true_prot": OBSERVED + ("prot_days",), "measured_prot": OBSERVED + ("prot_measured",),
                "no_prot": OBSERVED}
    res = {"run": a.run, "n_test": int(test.sum()), "measured_prot_share_of_test": round(float(det[test].mean()), 3),
           "oracles": {}}
    for name, cols in variants.items():
        per = [oracle_age_metrics(cat, test, seed=s, key=OBSERVED_ORACLE_KEY, columns=cols) for s in range(a.seeds)]
        vals = np.array([p["age_rmse_gyr"] for p in per])
        res["oracles"][name] = {"features": list(cols), "age_rmse_gyr": round(float(vals.mean()), 4),
                                "std": round(float(vals.std(ddof=1)), 4),
                                "age_coverage": round(float(np.mean([p["age_coverage"] for p in per])), 3),
                                "target_1p2x": round(float(1.2 * vals.mean()), 3)}
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
