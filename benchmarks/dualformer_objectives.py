"""Does an extra alignment objective make DESA better than the baselines? Scored on an INDEPENDENT dev survey.

    .venv/bin/python benchmarks/dualformer_objectives.py --run runs/small --out benchmarks/results/dualformer_objectives.json

Protocol. Every model is trained exactly as `desa evaluate` trains it: on the frozen encoder features of the
run's own survey (train split; early stopping and head calibration on its val split). It is then scored on a
second survey simulated with another seed (``--dev-seed``, default 7; written to ``--dev-survey`` unless it is
already there), whose frozen features come from the same run's encoders. The run's test split is never read,
and the dev survey holds ~54 synchronized binaries and ~140 young stars of its own -- enough for the 10-NN
sync/young task without borrowing any split.

Models: the run's DESA, the frozen features concatenated, the four alignment baselines (the evaluation's
settings), DESA retrained with its own config, and DESA with one change each:
- ``contrastive_w*``: the library's cross-modal InfoNCE term (``contrastive_term``) at a few weights;
- ``prediction_w*``: a SimSiam-style cross-modal prediction term (a predictor MLP maps p_s to sg(p_l) and p_l to
  sg(p_s), negative cosine). A prototype defined in this file only; it is not in the library.
- ``untrained``: the DualFormer at its initialisation (zero alignment epochs), finalised: what training adds;
- ``dim128``: a DualFormer twice as wide (embedding 128-d instead of 64);
- ``crossview``, ``crossview_contrastive``: a prototype (this file only) in which each stream sees only its own
  modality, so the two cannot agree by both reading both inputs; without and with the InfoNCE term;
- ``self_contrastive``: the library's self-attention-only ablation with the InfoNCE term.

Every DESA model also gets ``degeneracy`` (see :func:`degeneracy`): how it meets its loss, on the run's
validation stars -- A's eigenvalue range, the spread of the quadratic forms h^T A h over stars, and how far the
two streams carry the same thing.

Metrics on dev stars with both modalities: cmd_r2 / hr_r2 (the evaluation's ridge probe, 20 % fit / 80 % score,
on 4,000 stars), binary_auc and age_rmse_gyr (the evaluation's heads, fitted on the run's survey, applied to
the dev survey), sync_young_bacc (10-NN, 5-fold CV x 10 repeats, mean and spread).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "desa_retrained": {},
    "contrastive_w0.1": {"contrastive_term": True, "contrastive_weight": 0.1},
    "contrastive_w0.3_t0.3": {"contrastive_term": True, "contrastive_weight": 0.3, "contrastive_temperature": 0.3},
    "prediction_w0.3": {"prediction_weight": 0.3},
    "prediction_w1": {"prediction_weight": 1.0},
    # diagnostics: what the alignment training adds at all, and the width of the embedding
    "untrained": {"train": {"align_epochs": 0}},
    "dim128": {"dim": 128, "ffn_dim": 256},
    # prototype: during training each stream sees only its own modality (the other hidden behind its
    # placeholder), so the two streams cannot agree by both reading both inputs
    "crossview": {"crossview": True},
    "crossview_contrastive": {"crossview": True, "contrastive_term": True},
    # the library's self-attention ablation (streams independent) with the InfoNCE term
    "self_contrastive": {"attention_type": "self", "contrastive_term": True},
    # the library's fusion objectives (DualFormerConfig.objective), as `desa evaluate` trains desa_comm etc.
    "comm": {"objective": "comm"},
    "masked": {"objective": "masked"},
    "shared_unique": {"objective": "shared_unique", "attention_type": "self"},
    # the encoders' last blocks trained with the objective (finetune_last_block), as `desa evaluate` trains
    # desa_finetune and desa_comm_finetune
    "finetune": {"finetune_last_block": True},
    "comm_finetune": {"objective": "comm", "finetune_last_block": True},
}
BASELINES = ("simsiam", "clip", "vicreg", "moco")
log = logging.getLogger("dualformer_objectives")


def dev_features(run: Path, dev_survey: Path, seed: int, dev_run: Path):
    """Simulate the dev survey if needed and encode it with the run's frozen encoders -> FrozenFeatures."""
    from desa_core.data.simulate import simulate_survey
    from desa_core.data.store import SurveyStore
    from desa_core.models.config import config_from_dict
    from desa_core.train import distributed as ddp
    from desa_core.train import run as tr
    from desa_core.train import stages as st
    from desa_core.rundir import load_features
    if not (dev_survey / "manifest.json").is_file():
        log.info("simulating the dev survey (seed %d) into %s", seed, dev_survey)
        simulate_survey(out=dev_survey, seed=seed)
    if not (dev_run / "features.npz").is_file():
        cfg = config_from_dict(json.loads((run / "run_manifest.json").read_text())["config"], where=str(run))
        dev_run.mkdir(parents=True, exist_ok=True)
        ctx = st.RunContext(dev_run, SurveyStore.open(dev_survey), cfg, ddp.current())
        st.ensure_cache(ctx)
        ck = run / "checkpoints"
        lc = tr._load_pretrainer(tr.LightCurvePretrainer, cfg.light_curve, ck / "light_curve_encoder.pt", cfg.train)
        sp = tr._load_pretrainer(tr.SpectraPretrainer, cfg.spectra, ck / "spectra_encoder.pt", cfg.train)
        st.stage_features(ctx, lc.encoder, sp.encoder)   # runs under no_grad
    return load_features(dev_run), SurveyStore.open(dev_survey).catalog


class Scorer:
    def __init__(self, feats, cat, dev_feats, dev_cat, seed: int = 0):
        self.f, self.c, self.df, self.dc, self.seed = feats, cat, dev_feats, dev_cat, seed
        split = cat["split"].to_numpy()
        self.train, self.val = split == "train", split == "val"
        self.dboth = dev_feats.has_lc & dev_feats.has_spec
        self.probe = np.random.default_rng(0).choice(np.flatnonzero(self.dboth), min(4000, self.dboth.sum()),
                                                     replace=False)

    def __call__(self, emb_dev, head_run, head_dev) -> dict:
        from threadpoolctl import threadpool_limits

        from desa_core.evaluate.metrics import few_shot_r2, knn_balanced_accuracy
        from desa_core.evaluate.tasks import _head_metrics, fit_task_heads, sync_young_labels
        out, dc, b, s = {}, self.dc, self.dboth, self.seed
        with threadpool_limits(1):
            for key, cols in (("cmd_r2", ("bp_rp", "abs_g")), ("hr_r2", ("teff", "log_lum"))):
                r = few_shot_r2(emb_dev[self.probe], {c: dc[c].to_numpy(float)[self.probe] for c in cols}, 0.2, s)
                out[key] = round(r["mean"], 4)
            lab = sync_young_labels(dc)
            use = b & (lab != "")
            r = knn_balanced_accuracy(emb_dev[use], lab[use], k=10, n_splits=5, seed=s, n_repeats=10)
            out.update(sync_young_bacc=round(r["balanced_accuracy"], 4), sync_young_std=round(r["std_over_repeats"], 4))
            # the evaluation's heads: fitted on the run's train split (val: early stopping), applied to the dev stars
            heads = fit_task_heads(np.asarray(head_run, np.float32), self.c, None, s, False)
            m = _head_metrics(heads, np.asarray(head_dev, np.float32)[b], dc[b].reset_index(drop=True))
            out.update(binary_auc=round(m["binary_auc"], 4), age_rmse_gyr=round(m["age_rmse_gyr"], 3))
        return out


def prediction_prototype(weight: float):
    """(model class, loss) for DESA + a SimSiam-style cross-modal prediction term (prototype, see docstring)."""
    import torch.nn as nn

    import desa_core.models.dualformer as dfm
    from desa_core.models.baselines import simsiam_loss

    class PredictionDualFormer(dfm.DualFormer):
        def __init__(self, cfg, d_spec, d_lc):
            super().__init__(cfg, d_spec, d_lc)
            n = self.embedding_dim
            self.predictor = nn.Sequential(nn.Linear(n, n // 2), nn.BatchNorm1d(n // 2), nn.ReLU(), nn.Linear(n // 2, n))

        def forward(self, *a, **k):
            out = super().forward(*a, **k)
            out["q_s"], out["q_l"] = self.predictor(out["p_s"]), self.predictor(out["p_l"])
            return out

    def loss(out, cfg):
        t = dfm.alignment_loss(out, cfg)
        t["prediction"] = simsiam_loss(out["q_s"], out["p_s"], out["q_l"], out["p_l"])
        t["loss"] = t["loss"] + weight * t["prediction"]
        return t
    return PredictionDualFormer, loss


def crossview_prototype():
    """DualFormer whose outputs come from single-modality passes: h_s, p_s from the spectrum alone (light curve
    hidden behind its placeholder), h_l, p_l from the light curve alone; the embedding is (h_s + h_l) V of those."""
    import torch

    import desa_core.models.dualformer as dfm

    class CrossViewDualFormer(dfm.DualFormer):
        def forward(self, z_spec, z_lc, has_spec, has_lc, labels=None):
            none = torch.zeros_like(has_spec)
            o_s = super().forward(z_spec, z_lc, has_spec, none, labels)
            o_l = super().forward(z_spec, z_lc, none, has_lc, labels)
            out = {"h_s": o_s["h_s"], "p_s": o_s["p_s"], "h_l": o_l["h_l"], "p_l": o_l["p_l"]}
            if bool(self.finalized):
                out["embedding"] = (out["h_s"] + out["h_l"]) @ self.eigenvectors
            return out
    return CrossViewDualFormer


FINETUNE = {}   # 'tails', 'run', 'dev': the pretrained encoder tails and the two surveys' PenultimateInputs


def finetune_setup(run: Path, dev_run: Path, dev_survey: Path) -> None:
    from desa_core.data.store import SurveyStore
    from desa_core.evaluate.run import finetune_inputs
    from desa_core.rundir import RunDir
    from desa_core.train import distributed as ddp
    from desa_core.train import stages as st
    FINETUNE["tails"], FINETUNE["run"] = finetune_inputs(run)
    rd = RunDir.open(run)
    lc, sp = rd.encoders(fine_tuned=False)
    ctx = st.RunContext(dev_run, SurveyStore.open(dev_survey), rd.config, ddp.current())
    FINETUNE["dev"] = st.penultimate_inputs(ctx, lc, sp)


def train_variant(feats, cfg, over: dict, seed: int):
    import desa_core.train.alignment as al
    over = dict(over)
    ft = {"tails": FINETUNE["tails"], "penultimate": FINETUNE["run"]} if over.get("finetune_last_block") else {}
    pw = over.pop("prediction_weight", None)
    cv = over.pop("crossview", False)
    tcfg = dataclasses.replace(cfg.train, **over.pop("train", {}))
    objective = al.objective_loss
    if pw is None:
        cls = al.DualFormer
    else:
        cls, loss = prediction_prototype(pw)

        def objective(model, batch, dcfg, gen):   # the prototype's loss on one forward, as objective_loss does
            return loss({k: v.float() for k, v in model(**batch).items()}, dcfg)
    if cv:
        cls = crossview_prototype()
    saved = al.DualFormer, al.objective_loss
    al.DualFormer, al.objective_loss = cls, objective
    try:
        return al.train_dualformer(feats, dataclasses.replace(cfg.dualformer, **over), tcfg, seed=seed, **ft)
    finally:
        al.DualFormer, al.objective_loss = saved


def degeneracy(model, init, out: dict, mask) -> dict:
    """How the trained DESA meets its loss, on the run's validation stars with both modalities:
    A's eigenvalue range (A ~ c I meets the duality term for any LayerNormed h, whose norm is fixed); how far
    training moved A from its initialisation (``init``: the same model before training), and how far from the
    identity A ends, both in units of the initial |A - I|; the spread of the quadratic forms q = h^T A h over
    stars relative to their mean; the per-star duality residual relative to that spread; and the mean
    correlation over stars of h_s and h_l, dimension by dimension (1: the streams carry the same thing)."""
    import torch
    ev = model.eigenvalues.detach().cpu().numpy()
    a, a0 = model.A.detach().cpu(), init.A.detach().cpu()
    eye = torch.eye(a.shape[0])
    off0 = float((a0 - eye).norm())
    h_s, h_l, p_s, p_l = (np.asarray(out[k], np.float64)[mask] for k in ("h_s", "h_l", "p_s", "p_l"))
    q_s, q_l = (h_s * p_s).sum(1), (h_l * p_l).sum(1)
    corr = [np.corrcoef(h_s[:, j], h_l[:, j])[0, 1] for j in range(h_s.shape[1])
            if h_s[:, j].std() > 0 and h_l[:, j].std() > 0]
    return {"A_eig_min": round(float(ev.min()), 4), "A_eig_max": round(float(ev.max()), 4),
            "A_moved_over_init_offset": round(float((a - a0).norm()) / off0, 4),
            "A_offset_over_init_offset": round(float((a - eye).norm()) / off0, 4),
            "q_rel_spread": round(float(q_s.std() / abs(q_s.mean())), 5),
            "duality_rms_over_q_spread": round(float(np.sqrt(np.mean((q_s - q_l) ** 2)) / q_s.std()), 4),
            "h_stream_corr": round(float(np.mean(corr)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/small")
    ap.add_argument("--dev-survey", default="data/dev_survey_seed7")
    ap.add_argument("--dev-seed", type=int, default=7)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-baselines", action="store_true",
                    help="skip the four alignment baselines; keep the other results already in --out")
    ap.add_argument("--out", default="benchmarks/results/dualformer_objectives.json")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from desa_core.evaluate.run import _raw_representation, open_run
    from desa_core.models.baselines import BaselineConfig, embed_alignment_baseline, fit_alignment_baseline
    from desa_core.rundir import FrozenFeatures, RunDir
    from desa_core.train.alignment import embed_dualformer, finetuned_features
    torch.set_num_threads(a.threads)
    run = Path(a.run)
    inp = open_run(run)
    feats, cat, cfg = inp.features, inp.catalog, inp.cfg
    dev_feats, dev_cat = dev_features(run, Path(a.dev_survey), a.dev_seed, run / f"dev_features_seed{a.dev_seed}")
    score = Scorer(feats, cat, dev_feats, dev_cat)
    both = feats.has_lc & feats.has_spec
    results = {}
    if a.no_baselines and Path(a.out).is_file():
        results = json.loads(Path(a.out).read_text()).get("results", {})
    if any(VARIANTS[v].get("finetune_last_block") for v in a.variants.split(",") if v):
        finetune_setup(run, run / f"dev_features_seed{a.dev_seed}", Path(a.dev_survey))

    def record(name, emb_dev, head_run, head_dev, **extra):
        results[name] = {**score(emb_dev, head_run, head_dev), **extra}
        log.info("%s: %s", name, results[name])
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"run": str(run), "dev_survey": a.dev_survey, "dev_seed": a.dev_seed,
                                           "variants": VARIANTS, "results": results}, indent=2))

    def desa(name, model, over, seed=0, **extra):
        f_run, f_dev = feats, dev_feats
        if model.tails is not None:   # finetune_last_block: the fine-tuned blocks' features of both surveys
            f_run = finetuned_features(model, feats, FINETUNE["run"])
            f_dev = finetuned_features(model, dev_feats, FINETUNE["dev"])
        o_run, o_dev = embed_dualformer(model, f_run), embed_dualformer(model, f_dev)
        head = lambda o: np.concatenate([o["p_s"], o["p_l"]], 1)   # noqa: E731
        init = train_variant(feats, cfg, {**over, "train": {"align_epochs": 0}}, seed=seed)
        record(name, np.asarray(o_dev["embedding"]), head(o_run), head(o_dev), **extra,
               degeneracy=degeneracy(model, init, o_run, score.val & both))

    desa("desa (the run's)", RunDir.open(run).dualformer(), {}, seed=int(cfg.train.seed))   # the seed the run trained with
    # concat: standardised with the run's training stars, dev stars appended so one function does both
    both_f = FrozenFeatures(*(np.concatenate([getattr(feats, k), getattr(dev_feats, k)]) for k in
                              ("star_id", "z_lc", "z_spec", "has_lc", "has_spec", "split")))
    x = _raw_representation("concat", both_f, np.r_[score.train, np.zeros(len(dev_feats), bool)]).embedding
    record("concat", x[len(feats):], x[:len(feats)], x[len(feats):])
    bcfg = BaselineConfig(out_dim=int(cfg.dualformer.dim), hidden_dim=max(64, 4 * int(cfg.dualformer.dim)))
    for k in () if a.no_baselines else BASELINES:
        t = time.time()
        m, _ = fit_alignment_baseline(feats.z_lc, feats.z_spec, score.train & both, score.val & both, k, bcfg, 0, False)
        e = embed_alignment_baseline(m, feats.z_lc, feats.z_spec, feats.has_lc, feats.has_spec)
        d = embed_alignment_baseline(m, dev_feats.z_lc, dev_feats.z_spec, dev_feats.has_lc, dev_feats.has_spec)
        record(k, d, e, d, train_s=round(time.time() - t, 1))
    for name in [v for v in a.variants.split(",") if v]:
        t = time.time()
        model = train_variant(feats, cfg, VARIANTS[name], seed=0)
        desa(name, model, VARIANTS[name], train_s=round(time.time() - t, 1))


if __name__ == "__main__":
    main()
