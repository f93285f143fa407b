"""DualFormer design check on the VALIDATION split (the test split is never read): readout and width variants
trained on a run's frozen encoder features, each scored with the evaluation's protocols.

    .venv/bin/python benchmarks/dualformer_readout.py --run runs/small --out benchmarks/results/dualformer_readout.json

Variants (DualFormerConfig overrides on top of the run's config): the paper's readout (one shared scalar
lifting, LayerNorm per token before pooling) at d = 32, the per-feature lifting with LayerNorm after pooling at
d = 32 and 64, the latter untrained (what the architecture alone keeps), and the frozen features concatenated
(no DualFormer). Metrics, on stars with both modalities:
- cmd_r2 / hr_r2: `desa evaluate`'s probe (ridge, 20% fit / 80% score), run inside the validation split;
- binary_auc / age_rmse_gyr: the evaluation's heads fitted on 80% of the train split, early-stopped on the
  other 20%, scored on validation;
- sync_young_bacc: 10-NN balanced accuracy, 5-fold CV x 5 repeats, on train + validation stars (labels never
  reach the embedding, so this is not tuning on labels the model saw; test stars are left out).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "paper_readout_d32": {"token_lifting": "shared", "pooling": "norm_then_pool", "dim": 32, "ffn_dim": 64},
    "per_feature_d32": {"token_lifting": "per_feature", "pooling": "pool_then_norm", "dim": 32, "ffn_dim": 64},
    "per_feature_d64": {"token_lifting": "per_feature", "pooling": "pool_then_norm", "dim": 64, "ffn_dim": 128},
}


def validation_metrics(emb, head_input, cat, has_lc, has_spec, seed: int = 0) -> dict:
    from threadpoolctl import threadpool_limits

    from desa_core.evaluate.metrics import binary_scores, knn_balanced_accuracy, regression_scores
    from desa_core.evaluate.tasks import _probe_metrics, sync_young_labels
    from desa_core.models.heads import fit_age_head, fit_binary_head, predict_age, predict_binary
    split = cat["split"].to_numpy()
    both = np.asarray(has_lc, bool) & np.asarray(has_spec, bool)
    u = np.random.default_rng(123).random(len(cat))
    fit, stop = (split == "train") & (u < 0.8), (split == "train") & (u >= 0.8)
    val = (split == "val") & both
    out = {}
    with threadpool_limits(1):
        probes = _probe_metrics(np.asarray(emb)[val], cat[val].reset_index(drop=True), seed)
        out.update(cmd_r2=probes["cmd_r2"], hr_r2=probes["hr_r2"])
        x = np.asarray(head_input, np.float32)
        y = cat["is_binary"].to_numpy(bool)
        bh, _ = fit_binary_head(x, y, fit, stop, None, seed, False)
        out["binary_auc"] = binary_scores(y[val], predict_binary(bh, x[val]))["auc"]
        age = cat["age_gyr"].to_numpy(float)
        ah, _ = fit_age_head(x, age, fit, stop, None, seed, False)
        out["age_rmse_gyr"] = regression_scores(age[val], predict_age(ah, x[val])[1])["rmse"]
        labels = sync_young_labels(cat)
        use = np.isin(split, ("train", "val")) & both & (labels != "")
        r = knn_balanced_accuracy(emb[use], labels[use], k=10, n_splits=5, seed=seed, n_repeats=5)
        out["sync_young_bacc"] = r["balanced_accuracy"]
        out["sync_young_counts"] = r["counts"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/small")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dualformer_readout.json"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import torch

    from desa_core.evaluate.run import _dualformer_outputs, _raw_representation, open_run
    from desa_core.models.dualformer import DualFormer
    from desa_core.train.alignment import train_dualformer
    torch.set_num_threads(1)
    inp = open_run(a.run)
    f, cat, cfg = inp.features, inp.catalog, inp.cfg
    train = (cat["split"] == "train").to_numpy()
    result = {"run": str(a.run), "epochs": a.epochs, "seed": a.seed, "split_scored": "val", "variants": {}}
    raw = _raw_representation("concat", f, train)
    result["variants"]["concat_features"] = validation_metrics(raw.embedding, raw.head_input, cat, f.has_lc,
                                                               f.has_spec, a.seed)
    print("concat_features", result["variants"]["concat_features"], flush=True)
    jobs = [(name, over, True) for name, over in VARIANTS.items()] + [("per_feature_d64_untrained",
                                                                       VARIANTS["per_feature_d64"], False)]
    for name, over, trained in jobs:
        dcfg = dataclasses.replace(cfg.dualformer, **over)
        t = time.perf_counter()
        if trained:
            tcfg = dataclasses.replace(cfg.train, align_epochs=a.epochs)
            model = train_dualformer(f, dcfg, tcfg, seed=a.seed)
        else:
            torch.manual_seed(a.seed)
            model = DualFormer(dcfg, f.z_spec.shape[1], f.z_lc.shape[1])
            model.set_normalisation(f.z_spec[train & f.has_spec], f.z_lc[train & f.has_lc])
            model.finalize()
            model.eval()
        rep = _dualformer_outputs(model, f)
        m = validation_metrics(rep.embedding, rep.head_input, cat, f.has_lc, f.has_spec, a.seed)
        m.update(overrides=over, trained=trained, train_s=time.perf_counter() - t)
        result["variants"][name] = m
        print(name, {k: v for k, v in m.items() if k != "sync_young_counts"}, flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
