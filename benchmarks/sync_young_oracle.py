"""How separable are synchronized binaries and young fast rotators on catalogue labels, and how does the pool
of stars change what the 10-NN protocol can measure?

    .venv/bin/python benchmarks/sync_young_oracle.py --survey data/survey --out benchmarks/results/sync_young_oracle.json

For each pool of stars -- test + val, train, every split, and the one `desa evaluate` uses
(`sync_young_population`) -- and two label sets -- the TRUE Teff, logg, [Fe/H], Prot, log L (noiseless,
primary star only) and survey-like OBSERVED ones (spectroscopic Teff/logg/[Fe/H], Gaia colour and M_G, RUWE,
RV) -- it reports:

* ``knn10``: the evaluation's own protocol (10-NN balanced accuracy on standardised inputs, stratified 5-fold
  CV, 20 repeats);
* ``logreg``: a class-balanced logistic regression in the same CV (a supervised ceiling for a linear read-out).

Stars need both modalities, as in the evaluation. This is a reference for what the protocol can reach on the
survey, not a model.

With ``--run RUN`` (a run `desa evaluate` has scored) it also reports, on the evaluation's pool, the same two
read-outs of each model's embedding: DESA (the run's DualFormer), the raw features (lc_only, concat) and the
alignment baselines cached in ``RUN/eval_cache/`` (models not cached there are skipped, and named). The
logistic read-out is supervised: a ceiling for what a linear boundary in that embedding can separate.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LABEL_SETS = {
    "true": ("teff", "logg", "feh", "prot_days", "log_lum"),
    "observed": ("teff_obs", "logg_obs", "feh_obs", "bp_rp_obs", "abs_g0", "ruwe",
                 "rv_kms_obs"),
}
REPEATS = 20


def logreg_bacc(x, y, repeats: int) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    splits = int(min(5, np.unique(y, return_counts=True)[1].min()))
    accs = []
    for r in range(repeats):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, class_weight="balanced", max_iter=2000))
        pred = cross_val_predict(clf, x, y, cv=StratifiedKFold(splits, shuffle=True, random_state=r))
        accs.append(balanced_accuracy_score(y, pred))
    return float(np.mean(accs)), float(np.std(accs))


def embedding_readouts(run: Path) -> dict:
    """10-NN (the evaluation's protocol) and supervised logistic balanced accuracy of each model's embedding on
    the evaluation's sync/young pool of run ``run``."""
    from desa_core.evaluate.metrics import knn_balanced_accuracy
    from desa_core.evaluate.run import _raw_representation, open_run
    from desa_core.evaluate.tasks import sync_young_labels, sync_young_population
    from desa_core.rundir import RunDir
    from desa_core.train.alignment import embed_dualformer
    inp = open_run(run)
    f, cat = inp.features, inp.catalog
    used, info = sync_young_population(cat, f.has_lc & f.has_spec)
    y = sync_young_labels(cat)[used]
    train = cat["split"].to_numpy() == "train"
    embs = {"desa": embed_dualformer(RunDir.open(run).dualformer(), f)["embedding"]}
    embs.update({k: _raw_representation(k, f, train).embedding for k in ("lc_only", "concat")})
    skipped = []
    for k in ("clip", "moco", "vicreg", "simsiam"):
        p = run / "eval_cache" / f"{k}.npz"
        if not p.is_file():
            skipped.append(k)
            continue
        with np.load(p, allow_pickle=False) as z:
            embs[k] = z["embedding"]
    rec = {"run": str(run), "splits_used": info["splits_used"], "n_sync": info["n_sync"], "n_young": info["n_young"],
           "skipped_not_cached": skipped, "models": {}}
    for k, e in embs.items():
        kn = knn_balanced_accuracy(e[used], y, k=10, n_splits=5, seed=0, n_repeats=REPEATS)
        lr, lr_sd = logreg_bacc(e[used], y, REPEATS)
        rec["models"][k] = {"dim": int(e.shape[1]), "knn10": round(kn["balanced_accuracy"], 4),
                            "knn10_std": round(kn["std_over_repeats"], 4), "logreg": round(lr, 4),
                            "logreg_std": round(lr_sd, 4)}
        print(f"embedding {k:10s} dim {e.shape[1]:4d}  10-NN {kn['balanced_accuracy']:.3f}  logistic {lr:.3f} ± {lr_sd:.3f}",
              flush=True)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--survey", default="data/survey")
    ap.add_argument("--out", default="benchmarks/results/sync_young_oracle.json")
    ap.add_argument("--run", default=None, help="also read out this run's embeddings (after `desa evaluate`)")
    a = ap.parse_args()
    from desa_core.data.store import SurveyStore
    from desa_core.evaluate.metrics import knn_balanced_accuracy
    from desa_core.evaluate.tasks import sync_young_labels, sync_young_population
    cat = SurveyStore.open(a.survey).catalog
    both = (cat["lc_row"].to_numpy() >= 0) & (cat["spec_row"].to_numpy() >= 0)
    labels = sync_young_labels(cat)
    split = cat["split"].to_numpy()
    used, info = sync_young_population(cat, both)
    pools = {"test+val": np.isin(split, ("test", "val")), "train": split == "train", "all": np.ones(len(cat), bool),
             "evaluation (" + "+".join(info["splits_used"]) + ")": used}
    out = {"survey": a.survey, "label_sets": {k: list(v) for k, v in LABEL_SETS.items()},
           "evaluation_population": info, "cv_repeats": REPEATS, "pools": {}}
    for pname, pool in pools.items():
        rec = {}
        for lname, cols in LABEL_SETS.items():
            missing = [c for c in cols if c not in cat.columns]
            if missing:
                rec[lname] = {"available": False, "reason": f"the catalogue lacks {missing}"}
                continue
            x = np.stack([cat[c].to_numpy(np.float64) for c in cols], 1)
            ok = pool & both & (labels != "") & np.all(np.isfinite(x), 1)
            y = labels[ok]
            n = {c: int((y == c).sum()) for c in ("sync", "young")}
            if min(n.values()) < 2:
                rec[lname] = {"available": False, "reason": f"too few stars: {n}"}
                continue
            k = knn_balanced_accuracy(x[ok], y, k=10, n_splits=5, seed=0, n_repeats=REPEATS)
            lr, lr_sd = logreg_bacc(x[ok], y, REPEATS)
            rec[lname] = {"counts": n, "knn10": round(k["balanced_accuracy"], 4),
                          "knn10_std": round(k["std_over_repeats"], 4), "logreg": round(lr, 4),
                          "logreg_std": round(lr_sd, 4)}
            print(f"{pname:28s} {lname:9s} {n}  10-NN {k['balanced_accuracy']:.3f} ± {k['std_over_repeats']:.3f}"
                  f"  logistic {lr:.3f} ± {lr_sd:.3f}", flush=True)
        out["pools"][pname] = rec
    if a.run:
        out["embeddings"] = embedding_readouts(Path(a.run))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
