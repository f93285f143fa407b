"""Fine-tuning heads on a frozen embedding: binary detection and age by calibrated quantile regression.

DESA's heads read ``[p_s ; p_l]`` (the two projected DualFormer streams); the baselines' heads read their
own embeddings. Both heads are small MLPs with the input standardisation stored as buffers:

- :class:`BinaryHead` -- one logit, trained with binary cross-entropy; positives are ``is_binary``.
- :class:`AgeQuantileHead` -- ages at the quantiles (0.14, 0.5, 0.86) (a 1-sigma-like interval), trained
  with the pinball loss, outputs monotone by construction; the interval is then *conformalized* (CQR,
  Romano, Patterson & Candes 2019, arXiv:1905.03222) on held-out validation stars so that it covers the
  nominal 72 % on new stars.

Protocol (``fit_binary_head`` / ``fit_age_head``): train on the ``train`` mask, stop early on the
validation stars, and (age only) split the validation stars once, by a seeded draw, into an early-stopping
half and a calibration half, so the conformal offset is computed on stars the head never used for any
choice. The test split is never seen here.
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

from desa_core.evaluate.metrics import conformal_offset

log = logging.getLogger(__name__)

AGE_QUANTILES = (0.14, 0.5, 0.86)


@dataclass
class HeadConfig:
    """Hyper-parameters of the fine-tuning heads (small: they read a frozen embedding)."""

    hidden_dim: int = 128
    dropout: float = 0.1
    epochs: int = 150
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 12
    quantiles: tuple = AGE_QUANTILES
    age_scale_gyr: float = 11.0       # ages are learned in units of 11 Gyr, as in the paper
    calibration_fraction: float = 0.5  # share of the validation stars kept for conformal calibration

    def validate(self) -> "HeadConfig":
        if self.hidden_dim < 1 or self.epochs < 1 or self.batch_size < 2 or self.patience < 1:
            raise ValueError("HeadConfig: hidden_dim, epochs, patience must be >= 1 and batch_size >= 2")
        if not 0 <= self.dropout < 1 or not self.lr > 0 or not self.age_scale_gyr > 0:
            raise ValueError("HeadConfig: dropout in [0, 1), lr and age_scale_gyr > 0")
        q = tuple(float(v) for v in self.quantiles)
        if len(q) != 3 or not (0 < q[0] < q[1] < q[2] < 1):
            raise ValueError(f"HeadConfig.quantiles must be three increasing values in (0, 1), got {self.quantiles}")
        if not 0 < self.calibration_fraction < 1:
            raise ValueError("HeadConfig.calibration_fraction must be in (0, 1)")
        return self


class MLPHead(nn.Module):
    """Standardise -> Linear -> GELU -> Dropout -> Linear."""

    def __init__(self, d_in: int, d_out: int, cfg: HeadConfig):
        super().__init__()
        if d_in < 1:
            raise ValueError(f"head input dimension must be >= 1, got {d_in}")
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("std", torch.ones(d_in))
        self.net = nn.Sequential(nn.Linear(d_in, cfg.hidden_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.hidden_dim, d_out))

    def set_normalisation(self, x: np.ndarray) -> None:
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        sd = x.std(dim=0)
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(torch.where(sd > 1e-8, sd, torch.ones_like(sd)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class BinaryHead(MLPHead):
    """Logit of P(binary)."""

    def __init__(self, d_in: int, cfg: HeadConfig):
        super().__init__(d_in, 1, cfg)

    def forward(self, x):
        return super().forward(x)[:, 0]


class AgeQuantileHead(MLPHead):
    """Three age quantiles (in units of ``age_scale_gyr``), ordered by construction: the median plus and
    minus softplus widths. ``conformal_offset`` (in Gyr) widens (or narrows) the interval after CQR."""

    def __init__(self, d_in: int, cfg: HeadConfig):
        super().__init__(d_in, 3, cfg)
        self.register_buffer("conformal_offset", torch.zeros(()))
        self.register_buffer("age_scale_gyr", torch.tensor(float(cfg.age_scale_gyr)))
        # Start with narrow half-widths (softplus(-2.25) ~ 0.1, i.e. ~1 Gyr): from softplus(0) ~ 0.7 (7.6 Gyr)
        # the pinball loss needs many epochs just to shrink the interval.
        with torch.no_grad():
            self.net[-1].bias[0] = -2.25
            self.net[-1].bias[2] = -2.25

    def forward(self, x):
        o = super().forward(x)
        mid = o[:, 1]
        return torch.stack([mid - F.softplus(o[:, 0]), mid, mid + F.softplus(o[:, 2])], dim=1)


def pinball_loss(pred: torch.Tensor, y: torch.Tensor, quantiles) -> torch.Tensor:
    """Mean quantile (pinball) loss: for quantile tau, ``max(tau (y - q), (tau - 1)(y - q))``."""
    q = torch.as_tensor(tuple(quantiles), dtype=pred.dtype, device=pred.device)
    if pred.ndim != 2 or pred.shape[1] != len(q) or y.shape != pred.shape[:1]:
        raise ValueError(f"pinball_loss: pred must be (N, {len(q)}) and y (N,), got {tuple(pred.shape)}, "
                         f"{tuple(y.shape)}")
    diff = y[:, None] - pred
    return torch.maximum(q * diff, (q - 1) * diff).mean()


def _check_inputs(x, y, train, val, name):
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64)
    train, val = np.asarray(train, bool), np.asarray(val, bool)
    if x.ndim != 2 or len(x) != len(y) or train.shape != (len(x),) or val.shape != (len(x),):
        raise ValueError(f"{name}: x must be (N, d); y, train, val length N (got {x.shape}, {y.shape}, "
                         f"{train.shape}, {val.shape})")
    if (train & val).any():
        raise ValueError(f"{name}: a star is in both the training and the validation mask")
    if not np.all(np.isfinite(x[train | val])):
        raise ValueError(f"{name}: embedding contains NaN or infinite values")
    ok = np.isfinite(y)
    return x, y, train & ok, val & ok


def _fit(head: MLPHead, x: np.ndarray, loss_fn, train: np.ndarray, stop: np.ndarray, cfg: HeadConfig,
         seed: int, desc: str, progress: bool) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head.set_normalisation(x[train])
    xt = torch.from_numpy(x)
    tr, st = np.flatnonzero(train), torch.from_numpy(np.flatnonzero(stop))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, bad = np.inf, None, 0
    history = {"train_loss": [], "val_loss": []}
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False, mininterval=2.0)
    for _ in bar:
        head.train()
        perm = rng.permutation(tr)
        losses = []
        for i in range(0, len(perm), cfg.batch_size):
            b = torch.from_numpy(perm[i:i + cfg.batch_size])
            if len(b) < 2:
                continue
            loss = loss_fn(head(xt[b]), b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        head.eval()
        with torch.no_grad():
            val = float(loss_fn(head(xt[st]), st))
        history["train_loss"].append(float(np.mean(losses)))
        history["val_loss"].append(val)
        bar.set_postfix(train=f"{history['train_loss'][-1]:.4f}", val=f"{val:.4f}", refresh=False)
        if val < best - 1e-6:
            best, bad, best_state = val, 0, copy.deepcopy(head.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    history.update(best_val_loss=float(best), epochs_run=len(history["val_loss"]), seed=seed)
    return history


def fit_binary_head(x, is_binary, train, val, cfg: HeadConfig | None = None, seed: int = 0,
                    progress: bool = True) -> tuple[BinaryHead, dict]:
    """Binary-detection head: cross-entropy on ``train``, early stopping on the ``val`` loss."""
    cfg = (cfg or HeadConfig()).validate()
    x, y, train, val = _check_inputs(x, is_binary, train, val, "fit_binary_head")
    if train.sum() < 4 or val.sum() < 2:
        raise ValueError(f"fit_binary_head: too few stars (train {int(train.sum())}, val {int(val.sum())})")
    if len(np.unique(y[train])) < 2:
        raise ValueError("fit_binary_head: the training stars hold only one class")
    yt = torch.from_numpy(y.astype(np.float32))
    torch.manual_seed(seed)   # the initial weights too: same seed, same head
    head = BinaryHead(x.shape[1], cfg)

    def loss_fn(logit, idx):
        return F.binary_cross_entropy_with_logits(logit, yt[idx])

    history = _fit(head, x, loss_fn, train, val, cfg, seed, "binary head", progress)
    history["config"] = asdict(cfg)
    return head, history


def fit_age_head(x, age_gyr, train, val, cfg: HeadConfig | None = None, seed: int = 0,
                 progress: bool = True) -> tuple[AgeQuantileHead, dict]:
    """Age head: pinball loss at ``cfg.quantiles`` on ``train``; the validation stars are split once into
    an early-stopping part and a calibration part; CQR on the calibration part sets
    ``head.conformal_offset`` so the (lower, upper) interval has the nominal coverage q_hi - q_lo."""
    cfg = (cfg or HeadConfig()).validate()
    x, y, train, val = _check_inputs(x, age_gyr, train, val, "fit_age_head")
    val_idx = np.flatnonzero(val)
    if train.sum() < 4 or len(val_idx) < 4:
        raise ValueError(f"fit_age_head: too few stars with ages (train {int(train.sum())}, val {len(val_idx)})")
    rng = np.random.default_rng(seed + 7919)
    perm = rng.permutation(val_idx)
    n_cal = int(round(cfg.calibration_fraction * len(perm)))
    n_cal = min(max(n_cal, 2), len(perm) - 2)
    cal = np.zeros(len(x), bool)
    cal[perm[:n_cal]] = True
    stop = val & ~cal
    yt = torch.from_numpy((y / cfg.age_scale_gyr).astype(np.float32))
    torch.manual_seed(seed)
    head = AgeQuantileHead(x.shape[1], cfg)
    with torch.no_grad():
        head.net[-1].bias[1] = float(np.median(y[train])) / cfg.age_scale_gyr

    def loss_fn(pred, idx):
        return pinball_loss(pred, yt[idx], cfg.quantiles)

    history = _fit(head, x, loss_fn, train, stop, cfg, seed, "age head", progress)
    lo, _, hi = predict_age_raw(head, x[cal])
    coverage = cfg.quantiles[2] - cfg.quantiles[0]
    q = conformal_offset(y[cal], lo, hi, coverage)
    head.conformal_offset.fill_(q)
    history.update(config=asdict(cfg), conformal_offset_gyr=q, nominal_coverage=coverage,
                   n_calibration=int(cal.sum()), n_early_stop=int(stop.sum()))
    return head, history


@torch.no_grad()
def predict_binary(head: BinaryHead, x: np.ndarray) -> np.ndarray:
    """P(binary) per star."""
    head.eval()
    return torch.sigmoid(head(torch.as_tensor(np.asarray(x), dtype=torch.float32))).numpy().astype(np.float64)


@torch.no_grad()
def predict_age_raw(head: AgeQuantileHead, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uncalibrated (lower, median, upper) age quantiles in Gyr."""
    head.eval()
    q = head(torch.as_tensor(np.asarray(x), dtype=torch.float32)).numpy().astype(np.float64)
    q = q * float(head.age_scale_gyr)
    return q[:, 0], q[:, 1], q[:, 2]


def predict_age(head: AgeQuantileHead, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conformalized (lower, median, upper) age in Gyr."""
    lo, mid, hi = predict_age_raw(head, x)
    off = float(head.conformal_offset)
    # A negative offset (raw intervals too wide) narrows the interval, but never past the median.
    return np.minimum(lo - off, mid), mid, np.maximum(hi + off, mid)
