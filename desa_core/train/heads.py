"""The training pipeline's last stage: fine-tune DESA's heads and save them in ``RUN/checkpoints/heads.pt``.

    from desa_core.train.heads import train_heads, predict_heads
    train_heads("runs/small")                     # after the DualFormer stage
    heads = RunDir.open("runs/small").heads()
    p_binary, (age_lo, age_mid, age_hi) = predict_heads(heads, head_input)   # head_input = [p_s ; p_l]

Heads (``desa_core.models.heads``): binary detection (cross-entropy, positives = ``is_binary``) and age by
quantile regression at (0.14, 0.5, 0.86) with conformal calibration. They read ``[p_s ; p_l]`` of the run's
trained DualFormer, train on the run's ``train`` split, stop early / calibrate on ``val``; the test split is
never read. The file (written and read by :class:`~desa_core.rundir.RunDir`) holds state dicts, the head
configuration and the training histories (plain types and tensors only), loaded with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from desa_core.data.store import sha256_file
from desa_core.evaluate.tasks import fit_task_heads
from desa_core.models.heads import HeadConfig, predict_age, predict_binary
from desa_core.rundir import RunDir
from desa_core.train.alignment import embed_dualformer, head_input

log = logging.getLogger(__name__)


def desa_head_input(run_dir: str | os.PathLike):
    """(features, catalogue joined on star_id with the run's split, [p_s ; p_l] of every star)."""
    run = RunDir.open(run_dir)
    feats = run.desa_features()
    return feats, run.catalog(feats), head_input(embed_dualformer(run.dualformer(), feats))


def train_heads(run_dir: str | os.PathLike, cfg: HeadConfig | None = None, seed: int = 0,
                progress: bool = True) -> Path:
    """Fit DESA's binary and age heads on ``[p_s ; p_l]`` and write ``RUN/checkpoints/heads.pt``."""
    run = Path(run_dir)
    cfg = (cfg or HeadConfig()).validate()
    from threadpoolctl import threadpool_limits
    prev = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny MLPs: extra OpenMP threads only spin (see evaluate.run.evaluate)
    try:
        with threadpool_limits(limits=1):
            return _train_heads(run, cfg, seed, progress)
    finally:
        torch.set_num_threads(prev)


def _train_heads(run: Path, cfg: HeadConfig, seed: int, progress: bool) -> Path:
    feats, catalog, x = desa_head_input(run)
    log.info("heads: fitting on %d training stars ([p_s; p_l], %d dimensions)",
             int((catalog["split"] == "train").sum()), x.shape[1])
    heads = fit_task_heads(x, catalog, cfg, seed, progress)
    rd = RunDir(run)
    path = rd.save_heads(heads, x.shape[1], seed, cfg, sha256_file(rd.features_path))
    log.info("heads: wrote %s (binary %d epochs, age %d epochs, conformal offset %.2f Gyr)", path,
             heads["binary_history"]["epochs_run"], heads["age_history"]["epochs_run"],
             heads["age_history"]["conformal_offset_gyr"])
    return path


def predict_heads(heads: dict, head_input: np.ndarray):
    """(P(binary), (age_lower, age_median, age_upper) in Gyr, conformalized) per star."""
    return predict_binary(heads["binary"], head_input), predict_age(heads["age"], head_input)
