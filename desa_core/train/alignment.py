"""Alignment on frozen features: train a DualFormer, and embed stars with a trained one.

    feats = RunDir.open("runs/small").features()             # RUN/features.npz of the `features` stage
    model = train_dualformer(feats, cfg.dualformer, cfg.train)   # train split only, early stop on val
    emb = embed_dualformer(model, feats)["embedding"]         # (N, D) = (h_s + h_l) V, every star
    model = RunDir.open("runs/small").dualformer()           # the run's own trained DualFormer

The evaluation helper trains DESA ablations (attention type, projection type, loss switches, the named
label-conditioned variant) through :func:`train_dualformer` on the same frozen features.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from desa_core.models.config import DualFormerConfig, TrainConfig
from desa_core.models.dualformer import DualFormer, conditioning_labels, objective_loss
from desa_core.rundir import FrozenFeatures, RunDir
from desa_core.train import distributed as ddp
from desa_core.train.loop import CsvLog, autocast, fit_epochs, lr_at, optimizer_step, seed_for

log = logging.getLogger(__name__)


def _tensors(features: FrozenFeatures, idx, labels, device, model=None, penultimate=None):
    """The forward's keyword arguments for stars ``idx``. With ``penultimate`` (finetune_last_block), z_spec and
    z_lc come from ``model``'s encoder tails (with gradients when grad mode is on) instead of the frozen
    features."""
    t = {"z_spec": torch.from_numpy(features.z_spec[idx]).to(device),
         "z_lc": torch.from_numpy(features.z_lc[idx]).to(device),
         "has_spec": torch.from_numpy(features.has_spec[idx]).to(device),
         "has_lc": torch.from_numpy(features.has_lc[idx]).to(device)}
    if penultimate is not None:
        t["z_spec"], t["z_lc"] = ddp.unwrap(model).tails.features(penultimate.batch(idx, device))
    if labels is not None:
        t["labels"] = torch.from_numpy(np.asarray(labels[idx], np.float32)).to(device)
    return t


def _check_finetune(cfg: DualFormerConfig, features: FrozenFeatures, tails, penultimate) -> None:
    if cfg.finetune_last_block and (tails is None or penultimate is None):
        raise ValueError("finetune_last_block: training needs the encoder tails (EncoderTails.from_encoders of the "
                         "run's encoders) and their PenultimateInputs (desa_core.train.stages.penultimate_inputs)")
    if not cfg.finetune_last_block and (tails is not None or penultimate is not None):
        raise ValueError("encoder tails / penultimate inputs given without finetune_last_block")
    if penultimate is not None and len(penultimate) != len(features):
        raise ValueError(f"penultimate inputs have {len(penultimate)} stars, the features {len(features)}")


def _hide_modality(t: dict, p: float, gen: torch.Generator) -> dict:
    """Hide one modality of a random share ``p`` of stars that have both (trains the placeholder streams)."""
    if p <= 0:
        return t
    both = t["has_spec"] & t["has_lc"]
    u = torch.rand(len(both), generator=gen).to(both.device)
    side = torch.rand(len(both), generator=gen).to(both.device) < 0.5
    drop = both & (u < p)
    t = dict(t)
    t["has_spec"] = t["has_spec"] & ~(drop & side)
    t["has_lc"] = t["has_lc"] & ~(drop & ~side)
    return t


def train_dualformer(features: FrozenFeatures, cfg: DualFormerConfig, train_cfg: TrainConfig, seed: int = 0,
                     device="cpu", labels: np.ndarray | None = None, log_path=None, tails=None,
                     penultimate=None) -> DualFormer:
    """Train a DualFormer on split == 'train', early-stopping on the 'val' loss; returns it finalised
    (eigenbasis computed), in eval mode, on ``device``. ``labels`` (N, 6) only for ``label_conditioned``.
    ``tails`` (:class:`~desa_core.models.encoder_tails.EncoderTails`, copied here) and ``penultimate`` only for
    ``finetune_last_block``; embed such a model with :func:`finetuned_features` first."""
    return _train_dualformer(features, cfg, train_cfg, seed, device, labels,
                             csv_log=CsvLog(Path(log_path)) if log_path else None, tails=tails,
                             penultimate=penultimate)


def train_dualformer_stage(run: RunDir, catalog, cfg, info, csv_log, tails=None, penultimate=None) -> DualFormer:
    """The `dualformer` stage of `desa train`: the run's config, the run's features, resumable."""
    labels = conditioning_labels(catalog) if cfg.dualformer.label_conditioned else None
    if labels is not None:
        log.warning("training the LABEL-CONDITIONED ablation: catalogue labels enter the embedding")
    return _train_dualformer(run.features(), cfg.dualformer, cfg.train, seed=cfg.train.seed, device=info.device,
                             labels=labels, csv_log=csv_log, ckpt_path=run.partial("dualformer"), info=info,
                             tails=tails, penultimate=penultimate)


def _train_dualformer(features: FrozenFeatures, cfg, train_cfg, seed=0, device="cpu", labels=None, csv_log=None,
                      ckpt_path=None, info=None, tails=None, penultimate=None) -> DualFormer:
    info = info or ddp.current()
    device = torch.device(device)
    _check_finetune(cfg, features, tails, penultimate)
    if cfg.label_conditioned and labels is None:
        raise ValueError("label_conditioned DualFormer needs labels (N, 6) in CONDITIONING_LABELS order")
    if labels is not None and not cfg.label_conditioned:
        raise ValueError("labels given to a label-free DualFormer: set label_conditioned=True for that ablation")
    usable = features.has_lc | features.has_spec
    train_idx = np.flatnonzero((features.split == "train") & usable)
    val_idx = np.flatnonzero((features.split == "val") & usable)
    if len(train_idx) < 2:
        raise ValueError("fewer than 2 training stars with features")
    torch.manual_seed(seed)
    model = DualFormer(cfg, features.z_spec.shape[1], features.z_lc.shape[1],
                       tails=copy.deepcopy(tails) if tails is not None else None)
    both = train_idx[features.has_spec[train_idx] & features.has_lc[train_idx]]
    model.set_normalisation(features.z_spec[train_idx[features.has_spec[train_idx]]],
                            features.z_lc[train_idx[features.has_lc[train_idx]]],
                            None if labels is None else labels[train_idx])
    log.info("DualFormer: %d train stars (%d with both modalities), %d val stars, %d parameters",
             len(train_idx), len(both), len(val_idx), sum(p.numel() for p in model.parameters()))
    model.to(device)
    wrapped = ddp.wrap(model, info)
    # No weight decay on A: decay would pull A towards 0, the trivial minimum of the alignment loss. The encoder
    # tails (finetune_last_block) learn at finetune_lr_factor x the rate: they start trained.
    groups = []
    for is_tail in (False, True):
        named = [(n, p) for n, p in model.named_parameters() if n.startswith("tails.") == is_tail]
        factor = cfg.finetune_lr_factor if is_tail else 1.0
        groups += [{"params": [p for n, p in named if p.ndim >= 2 and n != "A_weight"],
                    "weight_decay": train_cfg.weight_decay, "lr_factor": factor},
                   {"params": [p for n, p in named if p.ndim < 2 or n == "A_weight"], "weight_decay": 0.0,
                    "lr_factor": factor}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=train_cfg.align_lr)
    bs = min(train_cfg.align_batch_size, len(train_idx))
    order = ddp.ShardedOrder(len(train_idx), info, seed=seed_for(seed, "align-order"))
    steps = len(order.epoch_batches(0, bs, None, min_batch=2))
    epochs = train_cfg.align_epochs

    def train_epoch(epoch):
        gen = torch.Generator().manual_seed(seed_for(seed, "align", epoch, info.rank))
        sums, n = {}, 0
        for i, b in enumerate(order.epoch_batches(epoch, bs, None, min_batch=2)):
            lr = lr_at(epoch * steps + i, steps * epochs, train_cfg.align_lr, train_cfg.warmup_fraction)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_factor", 1.0)
            t = _hide_modality(_tensors(features, train_idx[b], labels, device, model, penultimate),
                               cfg.modality_dropout, gen)
            with autocast(device, train_cfg.amp):
                terms = objective_loss(wrapped, t, cfg, gen)
            optimizer_step(terms, opt, model.parameters(), train_cfg.grad_clip, sums)
            n += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    def validate(epoch):
        if len(val_idx) < 2:
            return {}
        sums, n = {}, 0
        for i in range(0, len(val_idx), bs):
            b = val_idx[i:i + bs]
            if len(b) < 2:
                continue
            vgen = torch.Generator().manual_seed(seed_for(seed, "align-val", i))   # the same views every epoch
            terms = objective_loss(model, _tensors(features, b, labels, device, model, penultimate), cfg, vgen)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(b)
            n += len(b)
        return {k: v / n for k, v in sums.items()}

    patience = train_cfg.align_patience if len(val_idx) >= 2 else None
    fit_epochs("dualformer", wrapped, opt, epochs, train_epoch, validate, ckpt_path, patience, info, csv_log)
    model.finalize()
    model.eval()
    return model


@torch.no_grad()
def finetuned_features(model: DualFormer, features: FrozenFeatures, penultimate, batch_size: int = 512
                       ) -> FrozenFeatures:
    """``features`` with z_spec / z_lc recomputed by ``model``'s fine-tuned encoder tails from ``penultimate``
    (rows without the modality stay zero): what a ``finetune_last_block`` DualFormer reads."""
    net = ddp.unwrap(model)
    if net.tails is None:
        raise ValueError("this DualFormer has no fine-tuned encoder tails (finetune_last_block is off)")
    if len(penultimate) != len(features):
        raise ValueError(f"penultimate inputs have {len(penultimate)} stars, the features {len(features)}")
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    z_spec, z_lc = np.zeros_like(features.z_spec), np.zeros_like(features.z_lc)
    for i in range(0, len(features), batch_size):
        idx = np.arange(i, min(i + batch_size, len(features)))
        zs, zl = net.tails.features(penultimate.batch(idx, device))
        z_spec[idx], z_lc[idx] = zs.float().cpu().numpy(), zl.float().cpu().numpy()
    net.train(was_training)
    z_spec[~features.has_spec] = 0.0
    z_lc[~features.has_lc] = 0.0
    return FrozenFeatures(features.star_id, z_lc, z_spec, features.has_lc, features.has_spec, features.split)


@torch.no_grad()
def embed_dualformer(model: DualFormer, features: FrozenFeatures, labels: np.ndarray | None = None,
                     batch_size: int = 512) -> dict:
    """Embed every star of ``features``: 'embedding' (N, D) = (h_s + h_l) V, and 'h_s', 'h_l', 'p_s', 'p_l'.

    Stars missing a modality use the learned placeholder stream, so every star gets an embedding.
    """
    model = ddp.unwrap(model)
    if not bool(model.finalized):
        raise ValueError("DualFormer is not finalised (no eigenbasis): call model.finalize() after training")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    keys = ("embedding", "h_s", "h_l", "p_s", "p_l")
    parts = {k: [] for k in keys}
    for i in range(0, len(features), batch_size):
        idx = np.arange(i, min(i + batch_size, len(features)))
        out = model(**_tensors(features, idx, labels, device))
        for k in keys:
            parts[k].append(out[k].float().cpu().numpy())
    model.train(was_training)
    d = model.embedding_dim
    return {k: np.concatenate(v) if v else np.zeros((0, d), np.float32) for k, v in parts.items()}


def head_input(out: dict) -> np.ndarray:
    """What DESA's fine-tuning heads read: [p_s ; p_l] of :func:`embed_dualformer`'s output."""
    return np.concatenate([np.asarray(out["p_s"]), np.asarray(out["p_l"])], 1).astype(np.float32)
