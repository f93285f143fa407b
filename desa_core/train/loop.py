"""The training loop shared by every stage: epochs with checkpoints and exact resume, the learning-rate schedule,
one optimiser step, seeded randomness, the per-epoch CSV log.

A stage calls :func:`fit_epochs` with its own ``train_epoch(epoch)`` (and ``validate(epoch)``); the loop writes
``<stage>.partial.pt`` after every epoch and resumes from it. Randomness is drawn from generators seeded by
:func:`seed_for` (seed, stage, epoch, rank) and the learning rate is a function of the step (:func:`lr_at`),
so a resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from desa_core.data.store import atomic_write_bytes
from desa_core.rundir import load_state, save_state
from desa_core.train import distributed as ddp

log = logging.getLogger(__name__)


def _after_epoch(stage: str, epoch: int) -> None:
    """Called after each epoch's checkpoint is on disk. Does nothing; tests replace it to simulate a kill."""


class CsvLog:
    """RUN/log.csv in long form: stage, epoch, split, metric, value (one row per number)."""

    FIELDS = ("stage", "epoch", "split", "metric", "value")

    def __init__(self, path: Path | None, enabled: bool = True):
        self.path, self.enabled = (Path(path) if path else None), enabled and path is not None

    def add(self, stage: str, epoch: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(self.FIELDS)
            for k, v in metrics.items():
                w.writerow((stage, epoch, split, k, f"{float(v):.6g}"))

    def truncate(self, stage: str, from_epoch: int) -> None:
        """Drop rows of ``stage`` with epoch >= from_epoch (they are about to be re-run after a resume)."""
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        keep = [r for r in rows[1:] if not (r[0] == stage and int(r[1]) >= from_epoch)]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.FIELDS)
        w.writerows(keep)
        atomic_write_bytes(self.path, buf.getvalue().encode())


def seed_for(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") % (2**63)


def lr_at(step: int, total: int, base: float, warmup_fraction: float) -> float:
    """Linear warm-up then cosine decay to 5% of ``base``; a pure function of the step (resume-safe)."""
    warm = max(1, int(total * warmup_fraction))
    if step < warm:
        return base * (step + 1) / warm
    p = min(1.0, (step - warm) / max(1, total - warm))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def fit_epochs(stage: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epochs: int, train_epoch,
               validate=None, ckpt_path: Path | None = None, patience: int | None = None,
               info: ddp.DistInfo | None = None, csv_log: CsvLog | None = None) -> dict:
    """Run ``train_epoch(epoch) -> metrics`` for ``epochs`` epochs with per-epoch checkpoints and resume.

    ``validate(epoch) -> metrics`` (with 'loss') enables best-weights tracking; with ``patience`` the loop
    stops after that many epochs without improvement and restores the best weights.
    """
    info = info or ddp.current()
    net = ddp.unwrap(model)
    state = {"epoch": 0, "best_val": float("inf"), "bad_epochs": 0, "best_epoch": -1}
    best = None
    if ckpt_path is not None and ckpt_path.exists():
        ck = load_state(ckpt_path)
        net.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        state.update(ck["state"])
        best = ck.get("best_model")
        log.info("%s: resuming after epoch %d from %s", stage, state["epoch"], ckpt_path)
        if csv_log is not None:
            csv_log.truncate(stage, state["epoch"])
    for epoch in range(int(state["epoch"]), epochs):
        if patience is not None and state["bad_epochs"] >= patience:
            break
        t0 = time.perf_counter()
        model.train()
        train_metrics = ddp.all_mean(train_epoch(epoch), info)
        val_metrics = {}
        if validate is not None:
            model.eval()
            with torch.no_grad():
                val_metrics = validate(epoch)
            if val_metrics.get("loss", float("inf")) < state["best_val"]:
                state.update(best_val=float(val_metrics["loss"]), bad_epochs=0, best_epoch=epoch)
                best = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            else:
                state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        if csv_log is not None:
            csv_log.add(stage, epoch, "train", {**train_metrics, "wall_s": time.perf_counter() - t0})
            if val_metrics:
                csv_log.add(stage, epoch, "val", val_metrics)
        log.info("%s epoch %d/%d: train %s%s", stage, epoch + 1, epochs,
                 {k: round(float(v), 4) for k, v in train_metrics.items()},
                 f", val {({k: round(float(v), 4) for k, v in val_metrics.items()})}" if val_metrics else "")
        if ckpt_path is not None:
            if info.is_main:
                save_state({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                                 **({"best_model": best} if best is not None else {})}, ckpt_path)
            ddp.barrier()
        _after_epoch(stage, epoch)
    if patience is not None and best is not None:
        net.load_state_dict(best)
    return state


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when the config asks for it; a no-op context on CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(enabled) and device.type == "cuda")


def make_optimizer(model, lr, weight_decay):
    return torch.optim.AdamW(ddp.unwrap(model).parameters(), lr=lr, weight_decay=weight_decay)


def optimizer_step(terms: dict, opt: torch.optim.Optimizer, params, grad_clip: float, sums: dict) -> None:
    """One gradient step on ``terms['loss']`` with gradient clipping; adds every term to ``sums`` (epoch means)."""
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    for k, v in terms.items():
        sums[k] = sums.get(k, 0.0) + float(v.detach())


def batch_means(forward, stars: np.ndarray, batch_size: int) -> dict:
    """Star-weighted mean of every term ``forward(batch)`` returns, over batches of >= 2 stars (validation)."""
    sums, n = {}, 0
    for i in range(0, len(stars), batch_size):
        b = stars[i:i + batch_size]
        if len(b) < 2:
            continue
        for k, v in forward(b).items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(b)
        n += len(b)
    return {k: v / max(n, 1) for k, v in sums.items()}


def set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr
