"""Alignment baselines on frozen encoder features: CLIP, cross-modal MoCo, VICReg, SimSiam.

Every baseline sees exactly what DESA's DualFormer sees -- the frozen light-curve feature ``z_lc`` and the
frozen spectra feature ``z_spec`` of each star -- and the same star-grouped train/val split. Each one
maps the two features through its own small MLP projector (one per modality) and aligns the two
projected streams with its own objective:

========  =====================================================================================
clip      symmetric InfoNCE (Radford et al. 2021, "Learning Transferable Visual Models From Natural
          Language Supervision", arXiv:2103.00020)
moco      cross-modal momentum contrast: momentum key encoders + a queue of negatives per modality
          (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning",
          arXiv:1911.05722)
vicreg    variance-invariance-covariance regularisation (Bardes, Ponce & LeCun 2022, arXiv:2105.04906)
simsiam   cross-modal SimSiam: predictor + stop-gradient (Chen & He 2021, "Exploring Simple Siamese
          Representation Learning", arXiv:2011.10566)
========  =====================================================================================

**A baseline's embedding** is the concatenation ``[proj_spec(z_spec) ; proj_lc(z_lc)]`` of the two
projector outputs (before any L2 normalisation), the same choice for every baseline and the analogue of
DESA's ``[p_s ; p_l]``. A star without one modality gets the feature mean (zeros after standardisation)
for it -- as DESA's frozen features carry zeros there.

Usage::

    model, history = fit_alignment_baseline(z_lc, z_spec, train, val, "vicreg", BaselineConfig())
    emb = embed_alignment_baseline(model, z_lc, z_spec)        # (N, 2 * out_dim)

The losses are plain functions (:func:`info_nce_loss`, :func:`moco_loss`, :func:`vicreg_loss`,
:func:`simsiam_loss`) validated against reference implementations in ``tests/test_baselines.py``.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

ALIGNMENT_METHODS = ("clip", "moco", "vicreg", "simsiam")


# ----------------------------------------------------------------------------------------------- losses
def _check_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{name}: expected two (batch, dim) tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{name}: the two views differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.shape[0] < 2:
        raise ValueError(f"{name}: needs a batch of at least 2, got {a.shape[0]}")


def info_nce_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021): star i's two views are the positive pair, every
    other star in the batch a negative, in both directions.

    ``logits = normalize(z_a) normalize(z_b)^T / temperature``;
    ``loss = (CE(logits, diag) + CE(logits^T, diag)) / 2``.

    >>> z = torch.randn(8, 4); float(info_nce_loss(z, z, 0.05)) < float(info_nce_loss(z, torch.randn(8, 4), 0.05))
    True
    """
    _check_pair(z_a, z_b, "info_nce_loss")
    if not temperature > 0:
        raise ValueError(f"info_nce_loss: temperature must be > 0, got {temperature}")
    logits = F.normalize(z_a, dim=1) @ F.normalize(z_b, dim=1).T / temperature
    target = torch.arange(len(z_a), device=z_a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """MoCo InfoNCE (He et al. 2020): query ``q`` against its positive key ``k`` (no gradient) and the
    ``queue`` of negative keys (K, dim) from earlier batches.

    ``logits = [q.k , q.queue^T] / temperature`` (all L2-normalised); ``loss = CE(logits, 0)``.
    """
    _check_pair(q, k, "moco_loss")
    if queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"moco_loss: queue must be (K, {q.shape[1]}), got {tuple(queue.shape)}")
    if not temperature > 0:
        raise ValueError(f"moco_loss: temperature must be > 0, got {temperature}")
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1).detach()
    neg = F.normalize(queue, dim=1).detach()
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ neg.T
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def vicreg_loss(z_a: torch.Tensor, z_b: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg (Bardes, Ponce & LeCun 2022), the paper's equation with its default weights 25/25/1.

    invariance = mean squared distance between the views; variance = mean over dimensions of
    relu(gamma - sqrt(var + eps)) per view; covariance = sum of squared off-diagonal covariance entries
    divided by the dimension, per view.
    """
    _check_pair(z_a, z_b, "vicreg_loss")
    if min(sim_weight, var_weight, cov_weight) < 0:
        raise ValueError("vicreg_loss: weights must be non-negative")
    n, d = z_a.shape
    invariance = F.mse_loss(z_a, z_b)

    def var_cov(z):
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.var(dim=0) + eps)
        var = F.relu(gamma - std).mean()
        cov = (z.T @ z) / (n - 1)
        off = cov - torch.diag(torch.diag(cov))
        return var, off.pow(2).sum() / d

    va, ca = var_cov(z_a)
    vb, cb = var_cov(z_b)
    return sim_weight * invariance + var_weight * (va + vb) + cov_weight * (ca + cb)


def simsiam_loss(p_a: torch.Tensor, z_a: torch.Tensor, p_b: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Symmetric SimSiam loss (Chen & He 2021): ``-(cos(p_a, sg(z_b)) + cos(p_b, sg(z_a))) / 2``, where
    ``p`` are predictor outputs, ``z`` projector outputs and ``sg`` stops the gradient."""
    _check_pair(p_a, z_b, "simsiam_loss")
    _check_pair(p_b, z_a, "simsiam_loss")
    return -0.5 * (F.cosine_similarity(p_a, z_b.detach(), dim=1).mean()
                   + F.cosine_similarity(p_b, z_a.detach(), dim=1).mean())


# ----------------------------------------------------------------------------------------------- model
@dataclass
class BaselineConfig:
    """Hyper-parameters shared by the four alignment baselines (CPU-sized defaults)."""

    hidden_dim: int = 256
    out_dim: int = 128
    epochs: int = 60
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 8                 # epochs without validation improvement before stopping
    temperature: float = 0.1          # clip, moco
    moco_momentum: float = 0.99
    moco_queue: int = 2048
    predictor_hidden: int = 64        # simsiam bottleneck predictor

    def validate(self) -> "BaselineConfig":
        for k in ("hidden_dim", "out_dim", "epochs", "batch_size", "patience", "moco_queue", "predictor_hidden"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"BaselineConfig.{k} must be >= 1, got {getattr(self, k)}")
        if self.batch_size < 4:
            raise ValueError("BaselineConfig.batch_size must be >= 4 (batch statistics)")
        if not (self.lr > 0 and self.temperature > 0 and 0 <= self.moco_momentum < 1):
            raise ValueError("BaselineConfig: lr, temperature must be > 0 and moco_momentum in [0, 1)")
        return self


def projector(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """Two-layer MLP projector (Linear-BatchNorm-ReLU-Linear), as in SimCLR/VICReg heads."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class AlignmentBaseline(nn.Module):
    """Two projectors (spectrum, light curve) trained by one of :data:`ALIGNMENT_METHODS`.

    The inputs are *standardised* frozen features; ``mean_*``/``std_*`` buffers hold the statistics so a
    saved model embeds raw features by itself.
    """

    def __init__(self, d_lc: int, d_spec: int, method: str, cfg: BaselineConfig | None = None):
        super().__init__()
        if method not in ALIGNMENT_METHODS:
            raise ValueError(f"unknown alignment method {method!r}; choose one of {ALIGNMENT_METHODS}")
        if d_lc < 1 or d_spec < 1:
            raise ValueError(f"feature dimensions must be >= 1, got d_lc={d_lc}, d_spec={d_spec}")
        self.cfg = (cfg or BaselineConfig()).validate()
        self.method = method
        c = self.cfg
        self.proj_spec = projector(d_spec, c.hidden_dim, c.out_dim)
        self.proj_lc = projector(d_lc, c.hidden_dim, c.out_dim)
        for name, d in (("lc", d_lc), ("spec", d_spec)):
            self.register_buffer(f"mean_{name}", torch.zeros(d))
            self.register_buffer(f"std_{name}", torch.ones(d))
        if method == "simsiam":
            self.pred_spec = nn.Sequential(nn.Linear(c.out_dim, c.predictor_hidden), nn.BatchNorm1d(c.predictor_hidden),
                                           nn.ReLU(), nn.Linear(c.predictor_hidden, c.out_dim))
            self.pred_lc = nn.Sequential(nn.Linear(c.out_dim, c.predictor_hidden), nn.BatchNorm1d(c.predictor_hidden),
                                         nn.ReLU(), nn.Linear(c.predictor_hidden, c.out_dim))
        if method == "moco":
            # Momentum (key) encoders: exponential moving averages of the query projectors, never trained
            # by gradient; one queue of past keys per modality supplies the negatives.
            self.key_spec = copy.deepcopy(self.proj_spec).requires_grad_(False)
            self.key_lc = copy.deepcopy(self.proj_lc).requires_grad_(False)
            self.register_buffer("queue_spec", F.normalize(torch.randn(c.moco_queue, c.out_dim), dim=1))
            self.register_buffer("queue_lc", F.normalize(torch.randn(c.moco_queue, c.out_dim), dim=1))
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def set_normalisation(self, z_lc: np.ndarray, z_spec: np.ndarray) -> None:
        for name, z in (("lc", z_lc), ("spec", z_spec)):
            z = torch.as_tensor(np.asarray(z), dtype=torch.float32)
            sd = z.std(dim=0)
            getattr(self, f"mean_{name}").copy_(z.mean(dim=0))
            getattr(self, f"std_{name}").copy_(torch.where(sd > 1e-8, sd, torch.ones_like(sd)))

    def normalise(self, z_lc: torch.Tensor, z_spec: torch.Tensor, has_lc=None, has_spec=None):
        x_lc = (z_lc - self.mean_lc) / self.std_lc
        x_spec = (z_spec - self.mean_spec) / self.std_spec
        if has_lc is not None:
            x_lc = x_lc * has_lc[:, None].to(x_lc.dtype)
        if has_spec is not None:
            x_spec = x_spec * has_spec[:, None].to(x_spec.dtype)
        return x_lc, x_spec

    def forward(self, x_lc: torch.Tensor, x_spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected (spectrum, light curve) streams of standardised features."""
        return self.proj_spec(x_spec), self.proj_lc(x_lc)

    @torch.no_grad()
    def _momentum_update(self) -> None:
        m = self.cfg.moco_momentum
        for online, key in ((self.proj_spec, self.key_spec), (self.proj_lc, self.key_lc)):
            for po, pk in zip(online.parameters(), key.parameters()):
                pk.mul_(m).add_(po.detach(), alpha=1 - m)
            for bo, bk in zip(online.buffers(), key.buffers()):
                bk.copy_(bo)

    @torch.no_grad()
    def _enqueue(self, k_spec: torch.Tensor, k_lc: torch.Tensor) -> None:
        n = len(k_spec)
        size = self.queue_spec.shape[0]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n) + ptr) % size
        self.queue_spec[idx] = F.normalize(k_spec, dim=1)
        self.queue_lc[idx] = F.normalize(k_lc, dim=1)
        self.queue_ptr[0] = (ptr + n) % size

    def loss(self, x_lc: torch.Tensor, x_spec: torch.Tensor, update: bool = True) -> torch.Tensor:
        """The method's training loss on a batch of standardised features (``update``: MoCo momentum and
        queue updates; off for validation)."""
        p_spec, p_lc = self(x_lc, x_spec)
        c = self.cfg
        if self.method == "clip":
            return info_nce_loss(p_spec, p_lc, c.temperature)
        if self.method == "vicreg":
            return vicreg_loss(p_spec, p_lc)
        if self.method == "simsiam":
            return simsiam_loss(self.pred_spec(p_spec), p_spec, self.pred_lc(p_lc), p_lc)
        # moco: each modality's query is matched with the other modality's momentum key.
        with torch.no_grad():
            if update:
                self._momentum_update()
            k_spec, k_lc = self.key_spec(x_spec), self.key_lc(x_lc)
        loss = 0.5 * (moco_loss(p_spec, k_lc, self.queue_lc, c.temperature)
                      + moco_loss(p_lc, k_spec, self.queue_spec, c.temperature))
        if update:
            self._enqueue(k_spec, k_lc)
        return loss


# ----------------------------------------------------------------------------------------------- training
def fit_alignment_baseline(z_lc: np.ndarray, z_spec: np.ndarray, train: np.ndarray, val: np.ndarray,
                           method: str, cfg: BaselineConfig | None = None, seed: int = 0,
                           progress: bool = True) -> tuple[AlignmentBaseline, dict]:
    """Train one alignment baseline on frozen features.

    ``train`` / ``val`` are boolean masks of stars that have *both* modalities (alignment needs pairs);
    the projectors' input statistics come from the training stars. Stops early when the validation loss
    has not improved for ``cfg.patience`` epochs and restores the best epoch's weights.
    Returns ``(model in eval mode, history)``.
    """
    cfg = (cfg or BaselineConfig()).validate()
    z_lc = np.asarray(z_lc, dtype=np.float32)
    z_spec = np.asarray(z_spec, dtype=np.float32)
    train = np.asarray(train, bool)
    val = np.asarray(val, bool)
    if z_lc.ndim != 2 or z_spec.ndim != 2 or len(z_lc) != len(z_spec):
        raise ValueError(f"z_lc and z_spec must be (N, d) arrays of the same N, got {z_lc.shape}, {z_spec.shape}")
    if train.shape != (len(z_lc),) or val.shape != (len(z_lc),):
        raise ValueError("train and val must be boolean masks over the stars")
    if train.sum() < 4 or val.sum() < 2:
        raise ValueError(f"{method}: too few paired stars (train {int(train.sum())}, val {int(val.sum())})")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = AlignmentBaseline(z_lc.shape[1], z_spec.shape[1], method, cfg)
    model.set_normalisation(z_lc[train], z_spec[train])
    x_lc_all, x_spec_all = model.normalise(torch.from_numpy(z_lc), torch.from_numpy(z_spec))
    tr_idx, va_idx = np.flatnonzero(train), np.flatnonzero(val)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    bs = min(cfg.batch_size, len(tr_idx))
    best, best_state, bad, history = np.inf, None, 0, {"train_loss": [], "val_loss": []}
    bar = tqdm(range(cfg.epochs), desc=f"baseline {method}", disable=not progress, leave=False, mininterval=2.0)
    for epoch in bar:
        model.train()
        perm = rng.permutation(tr_idx)
        losses = []
        for i in range(0, len(perm) - bs + 1, bs):  # drop the ragged last batch: batch statistics
            b = torch.from_numpy(perm[i:i + bs])
            loss = model.loss(x_lc_all[b], x_spec_all[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        val_loss = validation_loss(model, x_lc_all[va_idx], x_spec_all[va_idx], bs)
        history["train_loss"].append(float(np.mean(losses)))
        history["val_loss"].append(val_loss)
        bar.set_postfix(train=f"{history['train_loss'][-1]:.4f}", val=f"{val_loss:.4f}", refresh=False)
        if val_loss < best - 1e-5:
            best, bad = val_loss, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    history.update(best_val_loss=float(best), epochs_run=len(history["val_loss"]), method=method,
                   config=asdict(cfg), seed=seed)
    log.info("baseline %s: %d epochs, best validation loss %.4f", method, history["epochs_run"], best)
    return model.eval(), history


@torch.no_grad()
def validation_loss(model: AlignmentBaseline, x_lc: torch.Tensor, x_spec: torch.Tensor, batch_size: int) -> float:
    """Mean loss over validation batches in eval mode (no MoCo queue or momentum update)."""
    model.eval()
    n = len(x_lc)
    bs = max(2, min(batch_size, n))
    out, weights = [], []
    for i in range(0, n, bs):
        if n - i < 2:
            break
        out.append(float(model.loss(x_lc[i:i + bs], x_spec[i:i + bs], update=False)))
        weights.append(min(bs, n - i))
    return float(np.average(out, weights=weights))


@torch.no_grad()
def embed_alignment_baseline(model: AlignmentBaseline, z_lc: np.ndarray, z_spec: np.ndarray,
                             has_lc: np.ndarray | None = None, has_spec: np.ndarray | None = None,
                             batch_size: int = 4096) -> np.ndarray:
    """Embedding ``[proj_spec ; proj_lc]`` (N, 2 * out_dim) of raw frozen features; a missing modality
    (``has_* == False``) enters as the training mean."""
    model.eval()
    z_lc = torch.as_tensor(np.asarray(z_lc), dtype=torch.float32)
    z_spec = torch.as_tensor(np.asarray(z_spec), dtype=torch.float32)
    h_lc = None if has_lc is None else torch.as_tensor(np.asarray(has_lc, bool))
    h_spec = None if has_spec is None else torch.as_tensor(np.asarray(has_spec, bool))
    out = []
    for i in range(0, len(z_lc), batch_size):
        sl = slice(i, i + batch_size)
        x_lc, x_spec = model.normalise(z_lc[sl], z_spec[sl], None if h_lc is None else h_lc[sl],
                                       None if h_spec is None else h_spec[sl])
        p_spec, p_lc = model(x_lc, x_spec)
        out.append(torch.cat([p_spec, p_lc], dim=1))
    return torch.cat(out).numpy()
