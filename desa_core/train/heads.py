"""The training pipeline's last stage: fine-tune DESA's heads and save them in ``RUN/checkpoints/heads.pt``.

    from desa_core.train.heads import train_heads, load_heads, predict_heads
    train_heads("runs/small")                     # after the DualFormer stage
    heads = load_heads("runs/small/checkpoints/heads.pt")
    p_binary, (age_lo, age_mid, age_hi) = predict_heads(heads, head_input)   # head_input = [p_s ; p_l]

Heads (``desa_core.models.heads``): binary detection (cross-entropy, positives = ``is_binary``) and age by
quantile regression at (0.14, 0.5, 0.86) with conformal calibration. They read ``[p_s ; p_l]`` of the run's
trained DualFormer, train on the run's ``train`` split, stop early / calibrate on ``val``; the test split is
never read. The file holds state dicts, the head configuration and the training histories (plain types and
tensors only), loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from desa_core.data.store import atomic_write_bytes, sha256_file
from desa_core.models.heads import (AgeQuantileHead, BinaryHead, HeadConfig, predict_age, predict_binary)

log = logging.getLogger(__name__)

HEADS_FORMAT = "desa-heads"
HEADS_VERSION = 1


def desa_head_input(run_dir: str | os.PathLike):
    """(features, catalogue joined on star_id with the run's split, [p_s ; p_l] of every star)."""
    from desa_core.evaluate.run import _dualformer_outputs, load_desa_model, open_run
    inputs = open_run(run_dir)
    rep = _dualformer_outputs(load_desa_model(inputs.run), inputs.features)
    return inputs.features, inputs.catalog, rep.head_input


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
    from desa_core.evaluate.tasks import fit_task_heads
    feats, catalog, x = desa_head_input(run)
    log.info("heads: fitting on %d training stars ([p_s; p_l], %d dimensions)",
             int((catalog["split"] == "train").sum()), x.shape[1])
    heads = fit_task_heads(x, catalog, cfg, seed, progress)
    path = run / "checkpoints" / "heads.pt"
    payload = {
        "format": HEADS_FORMAT, "format_version": HEADS_VERSION, "d_in": int(x.shape[1]), "seed": int(seed),
        "config": json.dumps(asdict(cfg)),
        "features_sha256": sha256_file(run / "features.npz"),
        "binary": heads["binary"].state_dict(), "age": heads["age"].state_dict(),
        "binary_history": json.dumps(heads["binary_history"]), "age_history": json.dumps(heads["age_history"]),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    log.info("heads: wrote %s (binary %d epochs, age %d epochs, conformal offset %.2f Gyr)", path,
             heads["binary_history"]["epochs_run"], heads["age_history"]["epochs_run"],
             heads["age_history"]["conformal_offset_gyr"])
    return path


def load_heads(path: str | os.PathLike) -> dict:
    """{'binary': BinaryHead, 'age': AgeQuantileHead, 'config': HeadConfig, '*_history': dict} from heads.pt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no heads checkpoint; run `desa train ... --stages heads`")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many types for a corrupt file
        raise ValueError(f"{path}: unreadable heads checkpoint ({e})") from e
    if not isinstance(d, dict) or d.get("format") != HEADS_FORMAT:
        raise ValueError(f"{path}: not a DESA heads checkpoint")
    if d.get("format_version", 0) > HEADS_VERSION:
        raise ValueError(f"{path}: heads format {d['format_version']} is newer than this code")
    raw = json.loads(d["config"])
    known = {f.name for f in fields(HeadConfig)}
    cfg = HeadConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known})
    binary, age = BinaryHead(d["d_in"], cfg), AgeQuantileHead(d["d_in"], cfg)
    try:
        binary.load_state_dict(d["binary"])
        age.load_state_dict(d["age"])
    except RuntimeError as e:
        raise ValueError(f"{path}: heads do not match their configuration ({e})") from e
    return {"binary": binary.eval(), "age": age.eval(), "config": cfg,
            "binary_history": json.loads(d["binary_history"]), "age_history": json.loads(d["age_history"]),
            "features_sha256": d.get("features_sha256")}


def predict_heads(heads: dict, head_input: np.ndarray):
    """(P(binary), (age_lower, age_median, age_upper) in Gyr, conformalized) per star."""
    return predict_binary(heads["binary"], head_input), predict_age(heads["age"], head_input)
