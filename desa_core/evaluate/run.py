"""`desa evaluate`: DESA, its ablations and the baselines on the same frozen features and the same splits.

    desa evaluate --run runs/small --out runs/small/metrics.json              # 5 seeds, no ablations
    desa evaluate --run runs/small --out /tmp/m.json --models desa,lc_only,vicreg --seeds 2
    desa evaluate --run runs/small --out /tmp/m.json --ablations             # + the DualFormer ablations

Reads the run folder written by ``desa train`` (``run_manifest.json``, ``features.npz`` -- the frozen encoder
features of every star -- and the trained DualFormer), joins the survey's true catalogue on ``star_id``,
builds one representation per model key (see :data:`MODEL_DESCRIPTIONS`), fits the fine-tuning heads on the
train split (validation: early stopping and conformal calibration) and measures every metric of
:mod:`desa_core.evaluate.tasks` on the test split. Writes ``metrics.json`` (atomically), ``metrics.md`` and
PNG figures next to it.

Seeds. Everything that is trained here is trained once per seed (``seeds``, default 5: the run's own seed and
the next four): each alignment baseline, DESA's DualFormer (the run's own model at the run's seed, the same
config retrained at the others; the frozen encoders are the run's), ``desa_untrained`` (the DualFormer at its
initialisation, finalised), the heads of every model, the probes' fit/score split and the k-NN folds. Each
model's headline numbers in ``metrics.json`` are the **mean over seeds**; ``seeds`` holds the per-seed values
and their std, and ``vs_concat`` each metric's paired difference from ``concat`` (same seeds) with a 95 %
Student-t interval. A difference is a finding only when that interval excludes 0.

Baselines and ablations train only on frozen features (cheap); each trained representation is cached in
``RUN/eval_cache/`` under a key of the features file's checksum and the model's configuration, so a second
``desa evaluate`` reuses them. Everything is seeded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingRegressor

from desa_core.data.store import atomic_write_bytes, atomic_write_json, sha256_file
from desa_core.evaluate.metrics import conformal_offset, interval_coverage, regression_scores
from desa_core.evaluate.tasks import NOMINAL_AGE_COVERAGE, evaluate_representation
from desa_core.models.baselines import BaselineConfig, embed_alignment_baseline, fit_alignment_baseline
from desa_core.models.config import CONDITIONING_LABELS
from desa_core.models.heads import AGE_QUANTILES
from desa_core.rundir import RunDir, load_features

log = logging.getLogger(__name__)

CACHE_VERSION = 2
ORACLE_KEY = "oracle_gbr_true_labels"
ORACLE_FEATURES = ("teff", "logg", "feh", "prot_days", "log_lum")
# A realistic reference: the simulator's survey-like *observed* labels (LAMOST-pipeline Teff/logg/[Fe/H] errors,
# Gaia photometry and parallax errors) -- and the true Prot, as no measured period is catalogued.
OBSERVED_ORACLE_KEY = "oracle_gbr_observed_labels"
OBSERVED_ORACLE_FEATURES = ("teff_obs", "logg_obs", "feh_obs", "abs_g0", "bp_rp0", "prot_days")

# DESA ablations: DualFormerConfig overrides trained on the same frozen features.
ABLATIONS = {
    "desa_retrained": {},
    "desa_cross": {"attention_type": "cross"},
    "desa_self": {"attention_type": "self"},
    # With the default symmetric A, A^T = A: 'same' vs 'transpose' only differ for a general A, so the pair of
    # ablations frees A and compares the two projections on equal terms.
    "desa_general_A": {"symmetric_A": False},
    "desa_same_A": {"projection_type": "same", "symmetric_A": False},
    "desa_cross_cov": {"cross_cov": True},
    "desa_variance": {"variance_term": True},
    "desa_contrastive": {"contrastive_term": True},
    "desa_paper_readout": {"token_lifting": "shared", "pooling": "norm_then_pool"},
    "desa_label_conditioned": {"label_conditioned": True},
    "desa_comm": {"objective": "comm"},
    "desa_masked": {"objective": "masked"},
    "desa_shared_unique": {"objective": "shared_unique", "attention_type": "self"},
    "desa_finetune": {"finetune_last_block": True},
    "desa_comm_finetune": {"objective": "comm", "finetune_last_block": True},
}
NO_ABSMAG_KEY = "desa_no_absmag"
# Ablations retrain a DualFormer each (the costly part of `desa evaluate`): their epochs are capped.
ABLATION_MAX_EPOCHS = 12
NO_ABSMAG_FEATURES = "features_no_absmag.npz"

MODEL_DESCRIPTIONS = {
    "desa": ("DESA (DualFormer cross+self attention, A/A^T, label-free; the run's config, readout included); "
             "heads on [p_s; p_l]"),
    "lc_only": "frozen light-curve feature z_lc",
    "spec_only": "frozen spectra feature z_spec",
    "concat": "[z_lc; z_spec], each standardised",
    "clip": "CLIP symmetric InfoNCE (Radford et al. 2021) on two MLP projectors",
    "moco": "cross-modal MoCo, momentum encoders + queue (He et al. 2020)",
    "vicreg": "VICReg (Bardes, Ponce & LeCun 2022), cross-modal",
    "simsiam": "cross-modal SimSiam (Chen & He 2021)",
    "desa_retrained": "DESA's own config retrained here with the ablations' epoch budget and seed (their reference)",
    "desa_cross": "DESA ablation: cross-attention only",
    "desa_self": "DESA ablation: self-attention only",
    "desa_general_A": "DESA ablation: unconstrained (non-symmetric) A, p_l = A^T h_l (the public code's A)",
    "desa_same_A": "DESA ablation: unconstrained A, p_l = A h_l (A for both streams; compare with desa_general_A)",
    "desa_cross_cov": "DESA ablation: + cross-covariance term",
    "desa_variance": "DESA ablation: + variance (std hinge) term",
    "desa_contrastive": "DESA ablation: + cross-modal InfoNCE term between p_s and p_l",
    "desa_paper_readout": ("DESA ablation: the paper's readout (one shared scalar lifting, LayerNorm per token "
                           "before pooling)"),
    "desa_comm": ("DESA with the CoMM fusion objective (Dufumier et al. 2025) instead of the paper's: InfoNCE between "
                  "fused views and between each single-modality view and the fused ones"),
    "desa_masked": ("DESA with cross-modal masked-feature prediction as its objective (half of each modality's "
                    "feature tokens masked and predicted from the rest of both)"),
    "desa_shared_unique": ("DESA with a DeCUR-style common / unique split of h (self-attention streams): half the "
                           "dimensions correlated across modalities, half decorrelated, Barlow Twins within each"),
    "desa_finetune": ("DESA (the paper's objective) with the last block of each encoder fine-tuned during "
                      "alignment (finetune_last_block) instead of frozen"),
    "desa_comm_finetune": ("DESA with the CoMM objective and the last block of each encoder fine-tuned during "
                           "alignment (finetune_last_block), as CoMM trains its encoders"),
    "desa_label_conditioned": ("LEAKS LABELS: DESA with catalogue " + ", ".join(CONDITIONING_LABELS)
                               + " appended to h (the public code's configuration)"),
    NO_ABSMAG_KEY: "DESA ablation: light-curve encoder without the absolute-magnitude channel",
    ORACLE_KEY: "ORACLE: gradient-boosted quantile regression of age on the TRUE " + ", ".join(ORACLE_FEATURES),
    OBSERVED_ORACLE_KEY: ("ORACLE (realistic): the same on survey-like OBSERVED labels "
                          + ", ".join(OBSERVED_ORACLE_FEATURES) + " (Prot true: no measured period in the catalogue)"),
}
UNTRAINED_KEY = "desa_untrained"
MODEL_DESCRIPTIONS[UNTRAINED_KEY] = ("the run's DualFormer config at its initialisation (zero alignment epochs; "
                                     "normalisation and eigenbasis from the train split): what alignment adds")
BASELINE_KEYS = ("clip", "moco", "vicreg", "simsiam")
MODEL_KEYS = ("desa", UNTRAINED_KEY, "lc_only", "spec_only", "concat", *BASELINE_KEYS,
              *ABLATIONS, NO_ABSMAG_KEY, ORACLE_KEY, OBSERVED_ORACLE_KEY)
# What `desa evaluate` runs without --ablations: the ablations retrain a DualFormer per seed each (~2 min per
# training on 2 cores), ~100 min for all of them over 5 seeds.
DEFAULT_KEYS = tuple(k for k in MODEL_KEYS if k not in ABLATIONS)
ORACLE_KEYS = {ORACLE_KEY: ORACLE_FEATURES, OBSERVED_ORACLE_KEY: OBSERVED_ORACLE_FEATURES}
DEFAULT_SEEDS = 5
# The metrics averaged over seeds, with their std and the paired difference from concat.
HEADLINE_METRICS = ("binary_auc", "binary_ap", "age_rmse_gyr", "age_mae_gyr", "age_coverage", "cmd_r2", "hr_r2",
                    "cmd_ari", "sync_young_bacc", "neighbour_quality")


@dataclasses.dataclass
class Representation:
    """One model's view of every star (rows aligned with the catalogue)."""
    embedding: np.ndarray
    head_input: np.ndarray
    info: dict


# ------------------------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class RunInputs:
    """What evaluation reads from a run folder."""
    run: Path
    manifest: dict
    cfg: object          # DesaConfig
    features: object     # FrozenFeatures
    catalog: pd.DataFrame
    survey: Path


def open_run(run) -> RunInputs:
    """Read a run folder (through :class:`~desa_core.rundir.RunDir`): manifest, config, frozen features and
    the survey catalogue joined on star_id (rows in the features' order; ``split`` is the run's split)."""
    rd = RunDir.open(run)
    feats = rd.features()
    return RunInputs(rd.path, rd.manifest, rd.config, feats, rd.catalog(feats), rd.survey_path)


def _signature(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- models
def _cached(cache_dir: Path, key: str, sig: str, build) -> Representation:
    """``build()`` once; later calls with the same signature read ``cache_dir/key.npz``."""
    path = cache_dir / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                info = json.loads(str(z["info"]))
                if info.get("signature") == sig:
                    log.info("%s: reusing the cached representation %s", key, path)
                    return Representation(z["embedding"], z["head_input"], info)
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s: ignoring an unreadable cache file %s (%s)", key, path, e)
    t0 = time.time()
    rep = build()
    rep.info.update(signature=sig, train_seconds=round(time.time() - t0, 1))
    import io
    buf = io.BytesIO()
    np.savez(buf, embedding=rep.embedding.astype(np.float32), head_input=rep.head_input.astype(np.float32),
             info=np.array(json.dumps(rep.info, default=str)))
    atomic_write_bytes(path, buf.getvalue())
    return rep


def _raw_representation(key: str, feats, train: np.ndarray) -> Representation:
    z_lc = np.asarray(feats.z_lc, np.float64)
    z_spec = np.asarray(feats.z_spec, np.float64)
    has_lc, has_spec = np.asarray(feats.has_lc, bool), np.asarray(feats.has_spec, bool)

    def std(z, has):
        # Standardise with the training stars that have the modality; a missing modality becomes 0 (= mean).
        fit = train & has
        mu, sd = z[fit].mean(0), z[fit].std(0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        return np.where(has[:, None], (z - mu) / sd, 0.0)

    if key == "lc_only":
        x = std(z_lc, has_lc)
    elif key == "spec_only":
        x = std(z_spec, has_spec)
    else:
        x = np.concatenate([std(z_lc, has_lc), std(z_spec, has_spec)], 1)
    return Representation(x, x.astype(np.float32), {"embedding_dim": int(x.shape[1])})


def _baseline_representation(key: str, feats, train, val, cfg: BaselineConfig, seed: int,
                             progress: bool) -> Representation:
    both = np.asarray(feats.has_lc, bool) & np.asarray(feats.has_spec, bool)
    model, hist = fit_alignment_baseline(feats.z_lc, feats.z_spec, train & both, val & both, key, cfg, seed,
                                         progress)
    emb = embed_alignment_baseline(model, feats.z_lc, feats.z_spec, feats.has_lc, feats.has_spec)
    return Representation(emb, emb, {"embedding_dim": int(emb.shape[1]), "epochs_run": hist["epochs_run"],
                                     "best_val_loss": hist["best_val_loss"]})


def _dualformer_outputs(model, feats, labels=None) -> Representation:
    from desa_core.train.alignment import embed_dualformer, head_input
    out = embed_dualformer(model, feats, labels=labels)
    emb = np.asarray(out["embedding"], np.float64)
    head = head_input(out)
    return Representation(emb, head, {"embedding_dim": int(emb.shape[1]), "head_input_dim": int(head.shape[1])})


def ablation_train_config(cfg):
    """The run's TrainConfig with the DualFormer epochs capped at ABLATION_MAX_EPOCHS (early stopping on val
    as in training). ``desa_retrained`` gets the same budget, so ablation deltas are read against it."""
    return dataclasses.replace(cfg.train, align_epochs=min(int(cfg.train.align_epochs), ABLATION_MAX_EPOCHS))


_FINETUNE_INPUTS: dict = {}


def finetune_inputs(run: Path):
    """(pretrained EncoderTails, PenultimateInputs) of a run's survey, for ``finetune_last_block`` models
    (computed once per run into RUN/cache/penultimate/, kept for the process)."""
    key = str(Path(run).resolve())
    if key not in _FINETUNE_INPUTS:
        from desa_core.data.store import SurveyStore
        from desa_core.models.encoder_tails import EncoderTails
        from desa_core.train import distributed as ddp
        from desa_core.train import stages as st
        rd = RunDir.open(run)
        lc, sp = rd.encoders(fine_tuned=False)
        ctx = st.RunContext(rd.path, SurveyStore.open(rd.survey_path), rd.config, ddp.current())
        _FINETUNE_INPUTS[key] = (EncoderTails.from_encoders(lc, sp), st.penultimate_inputs(ctx, lc, sp))
    return _FINETUNE_INPUTS[key]


def _ablation_representation(key, overrides, feats, cfg, catalog, seed, device, tcfg=None, run=None
                             ) -> Representation:
    """A DualFormer with the run's config plus ``overrides``, trained here on the frozen features (``tcfg``:
    the training config, default the ablations' capped one; ``align_epochs=0`` gives the untrained model).
    A ``finetune_last_block`` model also trains the encoders' last blocks (``run``: where they come from) and
    is embedded from the features of its fine-tuned blocks."""
    from desa_core.models.dualformer import conditioning_labels
    from desa_core.train.alignment import finetuned_features, train_dualformer
    dcfg = dataclasses.replace(cfg.dualformer, **overrides)
    tcfg = ablation_train_config(cfg) if tcfg is None else tcfg
    labels = conditioning_labels(catalog) if dcfg.label_conditioned else None
    tails = penultimate = None
    if dcfg.finetune_last_block:
        if run is None:
            raise ValueError(f"{key}: finetune_last_block needs the run folder (its encoders and survey)")
        tails, penultimate = finetune_inputs(run)
    model = train_dualformer(feats, dcfg, tcfg, seed=seed, device=device, labels=labels, tails=tails,
                             penultimate=penultimate)
    if penultimate is not None:
        feats = finetuned_features(model, feats, penultimate)
    rep = _dualformer_outputs(model, feats, labels)
    rep.info.update(dualformer_overrides=overrides, max_epochs=tcfg.align_epochs)
    return rep


def load_desa_model(run: Path):
    """The run's trained, finalised DualFormer."""
    return RunDir.open(run).dualformer()


# ------------------------------------------------------------------------------------------- oracle
def oracle_age_metrics(catalog: pd.DataFrame, eval_mask: np.ndarray, seed: int = 0, key: str = ORACLE_KEY,
                       columns: tuple | None = None) -> dict:
    """Gradient-boosted quantile regression of age on catalogue labels: the TRUE Teff, logg, [Fe/H], Prot,
    log L (``ORACLE_KEY``) or survey-like observed ones (``OBSERVED_ORACLE_KEY``; NaN allowed).

    Same protocol as the heads: fit on train, early stopping inside train (sklearn's internal 10 %
    hold-out), CQR on half of the validation split, report on ``eval_mask`` (the test stars the models
    are scored on). An upper bound a label-free model can approach but should not be expected to beat.
    ``columns`` replaces the key's feature columns (benchmarks/age_oracles.py compares Prot sources)."""
    cols = tuple(columns) if columns is not None else ORACLE_KEYS[key]
    missing = [c for c in cols if c not in catalog.columns]
    if missing:
        return {"available": False, "oracle": True, "leaks_labels": True, "description": MODEL_DESCRIPTIONS[key],
                "reason": f"the survey catalogue lacks {missing}"}
    x = np.stack([catalog[c].to_numpy(np.float64) for c in cols], 1)
    y = catalog["age_gyr"].to_numpy(np.float64)
    split = catalog["split"].to_numpy()
    ok = np.isfinite(y)
    train, val = (split == "train") & ok, (split == "val") & ok
    rng = np.random.default_rng(seed + 7919)
    val_idx = rng.permutation(np.flatnonzero(val))
    cal = val_idx[: max(2, len(val_idx) // 2)]
    preds = {}
    for q in AGE_QUANTILES:
        m = HistGradientBoostingRegressor(loss="quantile", quantile=q, max_iter=400, learning_rate=0.05,
                                          early_stopping=True, random_state=seed)
        m.fit(x[train], y[train])
        preds[q] = m
    lo_c, hi_c = preds[AGE_QUANTILES[0]].predict(x[cal]), preds[AGE_QUANTILES[2]].predict(x[cal])
    off = conformal_offset(y[cal], lo_c, hi_c, NOMINAL_AGE_COVERAGE)
    te = eval_mask & ok
    lo, mid, hi = (preds[q].predict(x[te]) for q in AGE_QUANTILES)
    lo, hi = np.minimum(lo - off, mid), np.maximum(hi + off, mid)
    r = regression_scores(y[te], mid)
    return {"age_rmse_gyr": r["rmse"], "age_mae_gyr": r["mae"], "age_coverage": interval_coverage(y[te], lo, hi),
            "age_interval_width_gyr": float(np.median(hi - lo)), "n_test": int(te.sum()),
            "features": list(cols), "oracle": True, "leaks_labels": True, "available": True,
            "description": MODEL_DESCRIPTIONS[key]}


# ------------------------------------------------------------------------------------------- main
def evaluate(run, out, models=None, *, seeds: int | list = DEFAULT_SEEDS, ablations: bool = False,
             device: str = "cpu", progress: bool = True, figures: bool = True, threads: int | None = 1,
             seed: int | None = None) -> dict:
    """Evaluate DESA, the baselines (and with ``ablations`` the DualFormer ablations) of run folder ``run``
    over several seeds; write ``out`` (JSON), plus ``metrics.md`` and figures next to it.

    ``models``: a subset of :data:`MODEL_KEYS` (default :data:`DEFAULT_KEYS`, plus the ablations when
    ``ablations``). ``seeds``: how many (the run's seed and the following ones) or an explicit list; ``seed``
    is shorthand for ``seeds=[seed]``. ``threads``: torch intra-op threads while evaluating (None: leave as
    is). One is the default because the models here are tiny: on a busy machine, OpenMP threads spinning for
    each other made a small MLP step ~70x slower with two threads than with one (measured on the 2-core
    development box); the same holds for the BLAS pool behind scipy/sklearn, which is limited alike.
    Returns the metrics dict (the JSON's content)."""
    if seed is not None:
        seeds = [int(seed)]
    if not threads:
        return _evaluate(run, out, models, seeds, ablations, device, progress, figures)
    from threadpoolctl import threadpool_limits   # BLAS/OpenMP pools of numpy, scipy, sklearn
    prev = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        with threadpool_limits(limits=int(threads)):
            return _evaluate(run, out, models, seeds, ablations, device, progress, figures)
    finally:
        torch.set_num_threads(prev)


def _seed_list(seeds, run_seed: int) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return [int(run_seed) + i for i in range(int(seeds))]
    out = [int(x) for x in seeds]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def aggregate_seeds(per_seed: list):
    """One result from per-seed results: numbers averaged (kept as they are where all seeds agree), dicts
    merged key by key, anything else (lists, strings, None somewhere) taken from the first seed."""
    first = per_seed[0]
    if all(isinstance(v, dict) for v in per_seed):
        return {k: (aggregate_seeds([v[k] for v in per_seed]) if all(k in v for v in per_seed) else first[k])
                for k in first}
    if all(_is_number(v) for v in per_seed):
        if all(v == first for v in per_seed):
            return first
        return float(np.mean([float(v) for v in per_seed]))
    return first


def _seed_summary(per_seed: list[dict], seeds: list[int]) -> dict:
    values = {m: [r.get(m) for r in per_seed] for m in HEADLINE_METRICS if any(r.get(m) is not None for r in per_seed)}
    std = {m: (float(np.std([float(x) for x in v], ddof=1)) if len(v) > 1 and all(x is not None for x in v)
               else None) for m, v in values.items()}
    return {"values": list(seeds), "per_seed": values, "std": std}


def paired_vs(reference: dict, other: dict) -> dict:
    """Each headline metric's paired difference ``other - reference`` over the seeds both ran."""
    from desa_core.evaluate.metrics import paired_difference
    ra, rb = reference.get("seeds") or {}, other.get("seeds") or {}
    common = [sd for sd in rb.get("values", []) if sd in ra.get("values", [])]
    out = {}
    for m in HEADLINE_METRICS:
        va, vb = (ra.get("per_seed") or {}).get(m), (rb.get("per_seed") or {}).get(m)
        if va is None or vb is None:
            continue
        pa = dict(zip(ra["values"], va))
        pb = dict(zip(rb["values"], vb))
        a = [np.nan if pa[sd] is None else pa[sd] for sd in common]
        b = [np.nan if pb[sd] is None else pb[sd] for sd in common]
        d = paired_difference(b, a)
        if d is not None:
            out[m] = d
    return out


def _evaluate(run, out, models, seeds, ablations, device, progress, figures) -> dict:
    t_start = time.time()
    run, out = Path(run), Path(out)
    if models is None:
        keys = list(MODEL_KEYS if ablations else DEFAULT_KEYS)
    else:
        keys = [m.strip() for m in models if m.strip()]
        if ablations:
            keys += [k for k in ABLATIONS if k not in keys]
    unknown = [k for k in keys if k not in MODEL_KEYS]
    if unknown:
        raise ValueError(f"unknown model keys {unknown}; choose from {', '.join(MODEL_KEYS)}")
    inputs = open_run(run)
    cfg, feats, catalog, survey = inputs.cfg, inputs.features, inputs.catalog, inputs.survey
    run_seed = int(cfg.train.seed)
    seeds = _seed_list(seeds, run_seed)
    feats_path = RunDir(run).features_path
    split = catalog["split"].to_numpy()
    train, val = split == "train", split == "val"
    has_lc, has_spec = np.asarray(feats.has_lc, bool), np.asarray(feats.has_spec, bool)
    feat_sha = sha256_file(feats_path)
    cache_dir = RunDir(run).eval_cache_dir
    bcfg = BaselineConfig(out_dim=int(cfg.dualformer.dim), hidden_dim=max(64, 4 * int(cfg.dualformer.dim)))

    notes = [f"every headline number is the mean over seeds {seeds} (std and per-seed values under 'seeds'); "
             "per seed, every alignment model, DualFormer and head is trained afresh, and the probe splits and "
             "k-NN folds are drawn anew; the frozen encoders are the run's",
             "vs_concat: paired difference from concat over the same seeds, mean and 95% Student-t interval",
             "headline metrics: test stars with both modalities; missing_modality: test stars lacking one",
             "cmd_r2/hr_r2: ridge probe (alpha by LOO-CV on the fit part), 20% fit / 80% score inside the test "
             "split, standardised embedding",
             "cmd_ari: GMM (full covariance, 10 PCs of the standardised embedding), k = 4 CMD classes; "
             "photometric_binary = dwarf >= 0.3 mag above the single-star main sequence (delta_mag_ms)",
             "age_coverage: conformalized (CQR) 0.14-0.86 quantile interval, nominal 0.72",
             "neighbour_quality: 10-NN (cosine, centred) of each test star among all stars with both modalities; "
             "mean over Teff, logg, [Fe/H], log10 Prot (1 - median |d| of neighbours / of random pairs) and "
             "binary class (chance-corrected agreement), each clipped to [0, 1]",
             "baseline embedding = [proj_spec(z_spec); proj_lc(z_lc)]; DESA embedding = (h_s + h_l) V, DESA heads "
             "read [p_s; p_l]"]
    result: dict = {"run": str(run), "survey": str(survey), "config": cfg.name, "seeds": seeds, "seed": seeds[0],
                    "features_sha256": feat_sha,
                    "n_stars": {s: int((split == s).sum()) for s in ("train", "val", "test")},
                    "n_both_modalities": {s: int(((split == s) & has_lc & has_spec).sum())
                                          for s in ("train", "val", "test")},
                    "notes": notes, "models": {}}
    reps: dict[str, Representation] = {}
    per_key_seconds = {}
    for key in keys:
        if key in ORACLE_KEYS:
            continue
        t0 = time.time()
        per_seed, rep0 = [], None
        try:
            for sd in seeds:
                log.info("evaluate: %s, seed %d", key, sd)
                rep = _build(key, run, feats, cfg, catalog, train, val, bcfg, sd, device, progress, cache_dir,
                             feat_sha, run_seed)
                heads = _saved_desa_heads(run, rep) if key == "desa" and sd == run_seed else None
                m = evaluate_representation(rep.embedding, rep.head_input, catalog, has_lc, has_spec,
                                            heads=heads, seed=sd, progress=progress)
                m["representation"] = rep.info
                per_seed.append(m)
                rep0 = rep0 or rep
        except _Unavailable as e:
            log.warning("%s: %s", key, e)
            result["models"][key] = {"available": False, "reason": str(e), "description": MODEL_DESCRIPTIONS[key]}
            continue
        m = aggregate_seeds(per_seed)
        m.update(description=MODEL_DESCRIPTIONS[key], leaks_labels=key == "desa_label_conditioned",
                 available=True, seeds=_seed_summary(per_seed, seeds), seconds=round(time.time() - t0, 1))
        result["models"][key] = m
        reps[key] = rep0
        per_key_seconds[key] = m["seconds"]
        log.info("%s (mean of %d seeds): AUC %s, age RMSE %s Gyr, cmd_r2 %s, hr_r2 %s, sync/young %s, "
                 "neighbour quality %s (%.0f s)", key, len(seeds), _fmt(m["binary_auc"]), _fmt(m["age_rmse_gyr"]),
                 _fmt(m["cmd_r2"]), _fmt(m["hr_r2"]), _fmt(m["sync_young_bacc"]), _fmt(m.get("neighbour_quality")),
                 m["seconds"])
    for key in ORACLE_KEYS:
        if key in keys:
            per_seed = [oracle_age_metrics(catalog, (split == "test") & has_lc & has_spec, sd, key) for sd in seeds]
            m = aggregate_seeds(per_seed)
            if m.get("available"):
                m["seeds"] = _seed_summary(per_seed, seeds)
            result["models"][key] = m
    if "concat" in result["models"] and result["models"]["concat"].get("available"):
        ref = result["models"]["concat"]
        for key, m in result["models"].items():
            if key != "concat" and m.get("available") and m.get("seeds"):
                m["vs_concat"] = paired_vs(ref, m)
    result["seconds"] = round(time.time() - t_start, 1)
    result["seconds_per_model"] = per_key_seconds
    # Flatten: one top-level key per model, as the JSON layout promises; bookkeeping under "_meta".
    flat = dict(result.pop("models"))
    flat["_meta"] = result
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, flat)
    from desa_core.evaluate.report import write_report
    write_report(flat, out.parent, reps=reps if figures else None, catalog=catalog, has_lc=has_lc,
                 has_spec=has_spec, md_name=out.with_suffix(".md").name)
    log.info("evaluate: wrote %s in %.0f s", out, time.time() - t_start)
    return flat


class _Unavailable(Exception):
    pass


def _build(key, run, feats, cfg, catalog, train, val, bcfg, seed, device, progress, cache_dir, feat_sha,
           run_seed):
    """The representation of model ``key`` trained with ``seed`` (cached where it is trained)."""
    name = f"{key}-seed{seed}"
    if key == "desa" and seed == run_seed:
        try:
            model = load_desa_model(run)
        except FileNotFoundError as e:
            raise _Unavailable(f"no trained DualFormer in {run} ({e})") from e
        return _dualformer_outputs(model, RunDir(run).desa_features())
    if key == "desa":   # the run's config, retrained with another seed on the same frozen features
        sig = _signature(CACHE_VERSION, key, feat_sha, asdict(cfg.dualformer), asdict(cfg.train), seed)
        return _cached(cache_dir, name, sig, lambda: _ablation_representation(key, {}, feats, cfg, catalog, seed,
                                                                            device, tcfg=cfg.train, run=run))
    if key == UNTRAINED_KEY:
        tcfg = dataclasses.replace(cfg.train, align_epochs=0)
        return _ablation_representation(key, {}, feats, cfg, catalog, seed, device, tcfg=tcfg, run=run)
    if key in ("lc_only", "spec_only", "concat"):
        return _raw_representation(key, feats, train)
    if key in BASELINE_KEYS:
        sig = _signature(CACHE_VERSION, key, feat_sha, asdict(bcfg), seed)
        return _cached(cache_dir, name, sig, lambda: _baseline_representation(key, feats, train, val, bcfg, seed,
                                                                            progress))
    if key in ABLATIONS:
        if ABLATIONS[key].get("finetune_last_block"):
            missing = [c for c in ("light_curve_encoder", "spectra_encoder")
                       if not RunDir(run).checkpoint(c).is_file()]
            if missing:
                raise _Unavailable(f"fine-tunes the last block of each encoder, but {RunDir(run).checkpoints} has "
                                   f"no {' or '.join(m + '.pt' for m in missing)}")
        sig = _signature(CACHE_VERSION, key, feat_sha, asdict(cfg.dualformer), asdict(ablation_train_config(cfg)),
                         ABLATIONS[key], seed)
        return _cached(cache_dir, name, sig, lambda: _ablation_representation(key, ABLATIONS[key], feats, cfg,
                                                                            catalog, seed, device, run=run))
    if key == NO_ABSMAG_KEY:
        path = no_absmag_features_path(run)
        if path is None:
            raise _Unavailable(
                f"needs frozen features of a light-curve encoder trained without the absolute-magnitude channel "
                f"(PreprocessConfig.lc_abs_mag_channel: false): either {run / NO_ABSMAG_FEATURES} or a sibling run "
                f"{run.parent / (run.name + '_no_absmag')} trained on the same survey with such a config "
                f"(`desa train --survey SURVEY --config no_absmag.yaml --out {run.parent / (run.name + '_no_absmag')}`, "
                f"see docs/evaluation.md)")
        f2 = load_features(path)
        if not np.array_equal(np.asarray(f2.star_id).astype(str), np.asarray(feats.star_id).astype(str)) or \
                not np.array_equal(np.asarray(f2.split).astype(str), np.asarray(feats.split).astype(str)):
            raise _Unavailable(f"{path}: stars or splits differ from {RunDir(run).features_path}")
        sig = _signature(CACHE_VERSION, key, sha256_file(path), asdict(cfg.dualformer),
                         asdict(ablation_train_config(cfg)), seed)
        rep = _cached(cache_dir, name, sig, lambda: _ablation_representation(key, {}, f2, cfg, catalog, seed,
                                                                           device))
        rep.info["features"] = str(path)
        return rep
    raise ValueError(f"unknown model key {key!r}")


def no_absmag_features_path(run: Path) -> Path | None:
    """Features without the absolute-magnitude channel: RUN/features_no_absmag.npz, or the features of a
    sibling run ``RUN_no_absmag`` whose config switches the channel off."""
    p = run / NO_ABSMAG_FEATURES
    if p.is_file():
        return p
    sibling = run.parent / f"{run.name}_no_absmag"
    rd = RunDir(sibling)
    if rd.features_path.is_file() and rd.manifest_path.is_file():
        if rd.config.preprocess.lc_abs_mag_channel:
            log.warning("%s: its config keeps the absolute-magnitude channel; not a no_absmag run", sibling)
            return None
        return rd.features_path
    return None


def _saved_desa_heads(run: Path, rep: Representation):
    """DESA's heads from ``RUN/checkpoints/heads.pt`` (trained by the pipeline's last stage with the same
    protocol), or None to fit them here."""
    rd = RunDir(run)
    if not rd.heads_path.is_file():
        return None
    try:
        heads = rd.heads()
    except (ValueError, RuntimeError, KeyError) as e:
        log.warning("%s: not usable (%s); fitting DESA's heads here", rd.heads_path, e)
        return None
    if heads["binary"].mean.shape[0] != rep.head_input.shape[1]:
        log.warning("%s: input dimension differs from [p_s; p_l]; fitting DESA's heads here", rd.heads_path)
        return None
    log.info("desa: using the fine-tuned heads in %s", rd.heads_path)
    return heads


def _fmt(v):
    return "n/a" if v is None else f"{v:.3f}"
