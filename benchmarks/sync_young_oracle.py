"""How separable are synchronized binaries and young fast rotators on the TRUE physical parameters?

    .venv/bin/python benchmarks/sync_young_oracle.py --survey data/survey --out benchmarks/results/sync_young_oracle.json

Same stars and protocol as `desa evaluate`'s sync_young_bacc (test + val pooled when the test split has too
few; 10-NN balanced accuracy, stratified 5-fold CV, standardised inputs), but on the catalogue's noiseless Teff,
logg, [Fe/H], Prot and log L instead of an embedding: a reference for what the protocol can reach on the
survey. 20 CV repeats.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FEATURES = ("teff", "logg", "feh", "prot_days", "log_lum")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--survey", default="data/survey")
    ap.add_argument("--out", default="benchmarks/results/sync_young_oracle.json")
    a = ap.parse_args()
    from desa_core.data.store import SurveyStore
    from desa_core.evaluate.metrics import knn_balanced_accuracy
    from desa_core.evaluate.tasks import sync_young_labels, sync_young_population
    cat = SurveyStore.open(a.survey).catalog
    both = (cat["lc_row"].to_numpy() >= 0) & (cat["spec_row"].to_numpy() >= 0)
    use, info = sync_young_population(cat, both)
    x = np.stack([cat[c].to_numpy(np.float64) for c in FEATURES], 1)
    ok = use & np.all(np.isfinite(x), 1)
    r = knn_balanced_accuracy(x[ok], sync_young_labels(cat)[ok], k=10, n_splits=5, seed=0, n_repeats=20)
    out = {"survey": a.survey, "features": list(FEATURES), "population": info, "n_used": int(ok.sum()),
           "balanced_accuracy": r["balanced_accuracy"], "std_over_repeats": r["std_over_repeats"]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
