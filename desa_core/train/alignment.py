"""Alignment on frozen features: train a DualFormer, and embed stars with a trained one.

    feats = load_features("runs/small")                      # RUN/features.npz of the `features` stage
    model = train_dualformer(feats, cfg.dualformer, cfg.train)   # train split only, early stop on val
    emb = embed_dualformer(model, feats)["embedding"]         # (N, D) = (h_s + h_l) V, every star
    model = load_dualformer("runs/small")                    # the run's own trained DualFormer

The evaluation helper trains DESA ablations (attention type, projection type, loss switches, the named
label-conditioned variant) through :func:`train_dualformer` on the same frozen features.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from desa_core.models.config import DualFormerConfig, TrainConfig
from desa_core.models.dualformer import DualFormer, alignment_loss
from desa_core.train import distributed as ddp
from desa_core.train.stages import CsvLog, autocast, fit_epochs, lr_at, optimizer_step, seed_for

log = logging.getLogger(__name__)


@dataclass
class FrozenFeatures:
    """Frozen encoder features of every star, catalogue order; zeros where a modality is missing."""
    star_id: np.ndarray
    z_lc: np.ndarray        # (N, d_lc) float32
    z_spec: np.ndarray      # (N, d_spec) float32
    has_lc: np.ndarray      # (N,) bool
    has_spec: np.ndarray    # (N,) bool
    split: np.ndarray       # (N,) str: train / val / test

    def __len__(self) -> int:
        return len(self.star_id)

    def subset(self, mask) -> "FrozenFeatures":
        return FrozenFeatures(*(getattr(self, f)[mask] for f in
                                ("star_id", "z_lc", "z_spec", "has_lc", "has_spec", "split")))


def load_features(run_dir) -> FrozenFeatures:
    """Read RUN/features.npz (written by the `features` stage of `desa train`); a path to the .npz works too."""
    path = Path(run_dir)
    if path.suffix != ".npz":
        path = path / "features.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no frozen features; run `desa train --stages features` first")
    try:
        with np.load(path, allow_pickle=False) as z:
            f = FrozenFeatures(star_id=z["star_id"].astype(str), z_lc=z["z_lc"].astype(np.float32),
                               z_spec=z["z_spec"].astype(np.float32), has_lc=z["has_lc"].astype(bool),
                               has_spec=z["has_spec"].astype(bool), split=z["split"].astype(str))
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a valid features file ({e})") from e
    n = len(f.star_id)
    if not all(len(a) == n for a in (f.z_lc, f.z_spec, f.has_lc, f.has_spec, f.split)):
        raise ValueError(f"{path}: arrays have different numbers of stars")
    return f


def load_dualformer(run_dir, device="cpu") -> DualFormer:
    """The finalised DualFormer of a run (RUN/checkpoints/dualformer.pt, config from run_manifest.json)."""
    import json

    from desa_core.models.config import config_from_dict
    run_dir = Path(run_dir)
    mpath, ckpt = run_dir / "run_manifest.json", run_dir / "checkpoints" / "dualformer.pt"
    if not mpath.is_file() or not ckpt.is_file():
        raise FileNotFoundError(f"{run_dir}: no trained DualFormer (needs run_manifest.json and {ckpt.name})")
    cfg = config_from_dict(json.loads(mpath.read_text())["config"], where=str(mpath))
    model = DualFormer(cfg.dualformer, cfg.spectra.out_dim, cfg.light_curve.out_dim)
    try:
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 -- an unreadable checkpoint is a user error naming the file
        raise ValueError(f"{ckpt}: unreadable DualFormer checkpoint ({type(e).__name__}: {e})") from e
    return model.to(device).eval()


def _tensors(features: FrozenFeatures, idx, labels, device):
    t = {"z_spec": torch.from_numpy(features.z_spec[idx]).to(device),
         "z_lc": torch.from_numpy(features.z_lc[idx]).to(device),
         "has_spec": torch.from_numpy(features.has_spec[idx]).to(device),
         "has_lc": torch.from_numpy(features.has_lc[idx]).to(device)}
    if labels is not None:
        t["labels"] = torch.from_numpy(np.asarray(labels[idx], np.float32)).to(device)
    return t


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
                     device="cpu", labels: np.ndarray | None = None, log_path=None) -> DualFormer:
    """Train a DualFormer on split == 'train', early-stopping on the 'val' loss; returns it finalised
    (eigenbasis computed), in eval mode, on ``device``. ``labels`` (N, 6) only for ``label_conditioned``."""
    return _train_dualformer(features, cfg, train_cfg, seed, device, labels,
                             csv_log=CsvLog(Path(log_path)) if log_path else None)


def _train_dualformer(features, cfg, train_cfg, seed=0, device="cpu", labels=None, csv_log=None, ckpt_path=None,
                      info=None) -> DualFormer:
    info = info or ddp.current()
    device = torch.device(device)
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
    model = DualFormer(cfg, features.z_spec.shape[1], features.z_lc.shape[1])
    both = train_idx[features.has_spec[train_idx] & features.has_lc[train_idx]]
    model.set_normalisation(features.z_spec[train_idx[features.has_spec[train_idx]]],
                            features.z_lc[train_idx[features.has_lc[train_idx]]],
                            None if labels is None else labels[train_idx])
    log.info("DualFormer: %d train stars (%d with both modalities), %d val stars, %d parameters",
             len(train_idx), len(both), len(val_idx), sum(p.numel() for p in model.parameters()))
    model.to(device)
    wrapped = ddp.wrap(model, info)
    # No weight decay on A: decay would pull A towards 0, the trivial minimum of the alignment loss.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n != "A_weight"]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n == "A_weight"]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train_cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=train_cfg.align_lr)
    bs = min(train_cfg.align_batch_size, len(train_idx))
    order = ddp.ShardedOrder(len(train_idx), info, seed=seed_for(seed, "align-order"))
    steps = len(order.epoch_batches(0, bs, None, min_batch=2))
    epochs = train_cfg.align_epochs

    def train_epoch(epoch):
        gen = torch.Generator().manual_seed(seed_for(seed, "align", epoch, info.rank))
        sums, n = {}, 0
        for i, b in enumerate(order.epoch_batches(epoch, bs, None, min_batch=2)):
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * steps + i, steps * epochs, train_cfg.align_lr, train_cfg.warmup_fraction)
            t = _hide_modality(_tensors(features, train_idx[b], labels, device), cfg.modality_dropout, gen)
            with autocast(device, train_cfg.amp):
                out = wrapped(**t)
            terms = alignment_loss({k: v.float() for k, v in out.items()}, cfg)
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
            terms = alignment_loss(model(**_tensors(features, b, labels, device)), cfg)
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
