"""The run folder written by ``desa train``: one module owns its layout and every read of it.

    run = RunDir.open("runs/small")          # validates run_manifest.json and the config once
    run.config, run.manifest, run.is_done, run.fingerprint
    feats = run.features()                   # FrozenFeatures of every star (RUN/features.npz)
    feats = run.desa_features()              # ... what the DualFormer reads (fine-tuned encoders if so configured)
    lc, sp = run.encoders()                  # frozen LightCurveEncoder, SpectraEncoder
    model = run.dualformer()                 # the finalised DualFormer
    heads = run.heads()                      # binary + age heads (RUN/checkpoints/heads.pt)
    cat = run.catalog(feats)                 # the survey catalogue joined on star_id, the run's split

Layout::

    run_manifest.json            config, survey path + manifest sha256, seed, stage records, code version
    log.csv                      per-epoch losses (stage, epoch, split, metric, value)
    cache/                       preprocessed inputs of the whole store
    checkpoints/<stage>.pt       final state dict of each stage (its presence marks the stage complete)
    checkpoints/<stage>.partial.pt   last epoch of an interrupted stage
    checkpoints/heads.pt         fine-tuned heads (a self-describing dict)
    features.npz                 frozen encoder features of every star
    features_finetuned.npz       finetune_last_block runs: the features of the fine-tuned encoders (what the
                                 DualFormer reads; RunDir.desa_features)
    eval_cache/                  representations `desa evaluate` trained (reused by the next evaluation)
    DONE                         written last, when every stage is complete

Training (:mod:`desa_core.train`), evaluation, inference, precompute and the app read the folder only through
this class; checkpoints are loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from desa_core.data.store import atomic_write_bytes, atomic_write_json, sha256_file
from desa_core.models.config import DesaConfig, config_from_dict

MANIFEST = "run_manifest.json"
FEATURES = "features.npz"
FINETUNED_FEATURES = "features_finetuned.npz"
DONE = "DONE"
CHECKPOINTS = "checkpoints"
# The final weights that make the embedding; their sha256 is the model's fingerprint.
WEIGHT_STAGES = ("light_curve_encoder", "spectra_encoder", "dualformer")
HEADS = "heads"
HEADS_FORMAT = "desa-heads"
HEADS_VERSION = 1


class RunDirError(ValueError):
    """A run folder that is missing, unfinished or unreadable; the message names the file."""


@dataclass
class FrozenFeatures:
    """Frozen encoder features of every star, catalogue order; zeros where a modality is missing."""
    star_id: np.ndarray
    z_lc: np.ndarray        # (N, d_lc) float32
    z_spec: np.ndarray      # (N, d_spec) float32
    has_lc: np.ndarray      # (N,) bool
    has_spec: np.ndarray    # (N,) bool
    split: np.ndarray       # (N,) str: train / val / test

    FIELDS = ("star_id", "z_lc", "z_spec", "has_lc", "has_spec", "split")

    def __len__(self) -> int:
        return len(self.star_id)

    def subset(self, mask) -> "FrozenFeatures":
        return FrozenFeatures(*(getattr(self, f)[mask] for f in self.FIELDS))


def load_features(path) -> FrozenFeatures:
    """Read a features file (RUN/features.npz, or a run folder) with its shape checks."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path / FEATURES
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


def save_features(path, features: FrozenFeatures) -> Path:
    """Write a features file atomically (the `features` stage; evaluation caches)."""
    buf = io.BytesIO()
    np.savez(buf, star_id=np.asarray(features.star_id).astype(str), z_lc=features.z_lc, z_spec=features.z_spec,
             has_lc=features.has_lc, has_spec=features.has_spec, split=np.asarray(features.split).astype(str))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_state(path: Path):
    """A checkpoint written by the project, loaded safely; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; finish `desa train` for this run first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint is a user error naming the file
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e


def save_state(obj, path: Path) -> None:
    """torch.save through a temporary file and a rename: a kill never leaves a truncated checkpoint."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _sub_state(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class RunDir:
    """One run folder. ``RunDir(path)`` only names it (training creates it); :meth:`open` also checks that a
    manifest with a valid config is there."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._manifest: dict | None = None
        self._config: DesaConfig | None = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunDir":
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirError(f"{run.path}: no run folder here; train one with `desa train --out {run.path}`")
        if not run.manifest_path.is_file():
            raise RunDirError(f"{run.manifest_path}: missing; not a DESA run folder (train one with `desa train`)")
        run.config  # validates
        return run

    # -------------------------------------------------------------------------------------- layout
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, stage: str) -> Path:
        return self.checkpoints / f"{stage}.pt"

    def partial(self, stage: str) -> Path:
        return self.checkpoints / f"{stage}.partial.pt"

    @property
    def features_path(self) -> Path:
        return self.path / FEATURES

    @property
    def finetuned_features_path(self) -> Path:
        return self.path / FINETUNED_FEATURES

    @property
    def done_path(self) -> Path:
        return self.path / DONE

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    @property
    def eval_cache_dir(self) -> Path:
        return self.path / "eval_cache"

    @property
    def log_path(self) -> Path:
        return self.path / "log.csv"

    @property
    def is_done(self) -> bool:
        return self.done_path.is_file()

    # -------------------------------------------------------------------------------------- manifest
    def read_manifest(self) -> dict:
        """The manifest as on disk now ({} when there is none yet)."""
        if not self.manifest_path.is_file():
            return {}
        try:
            m = json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{self.manifest_path}: unreadable run manifest ({e})") from e
        if not isinstance(m, dict):
            raise RunDirError(f"{self.manifest_path}: not a run manifest")
        return m

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)
        self._manifest, self._config = None, None

    @property
    def manifest(self) -> dict:
        if self._manifest is None:
            self._manifest = self.read_manifest()
        return self._manifest

    @property
    def config(self) -> DesaConfig:
        if self._config is None:
            m = self.manifest
            if isinstance(m.get("config"), dict):
                self._config = config_from_dict(m["config"], where=str(self.manifest_path))
            else:
                from desa_core.models.config import get_config
                self._config = get_config(str(m.get("config_name", "small")))
        return self._config

    @property
    def survey_path(self) -> Path:
        for key in ("survey", "survey_path"):
            if key in self.manifest:
                p = Path(self.manifest[key])
                if not p.is_absolute() and not p.exists():
                    p = self.path / p
                return p
        raise RunDirError(f"{self.manifest_path}: names no survey (expected a 'survey' field)")

    @property
    def survey_manifest_sha256(self) -> str | None:
        return self.manifest.get("survey_manifest_sha256")

    # -------------------------------------------------------------------------------------- contents
    def load_state(self, stage: str):
        return load_state(self.checkpoint(stage))

    def save_state(self, obj, stage: str) -> None:
        save_state(obj, self.checkpoint(stage))

    def features(self) -> FrozenFeatures:
        """The pretrained encoders' frozen features (what the baselines and concatenation read)."""
        return load_features(self.features_path)

    @property
    def desa_features_path(self) -> Path:
        """features.npz, or for a ``finetune_last_block`` run features_finetuned.npz."""
        return self.finetuned_features_path if self.config.dualformer.finetune_last_block else self.features_path

    def desa_features(self) -> FrozenFeatures:
        """What the run's DualFormer reads: :meth:`features`, or for a ``finetune_last_block`` run the features
        of its fine-tuned encoders (written by the dualformer stage)."""
        return load_features(self.desa_features_path)

    @property
    def fingerprint(self) -> str:
        """sha256 over the final weight files (what the embedding is a function of)."""
        h = hashlib.sha256()
        for stage in WEIGHT_STAGES:
            p = self.checkpoint(stage)
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing; finish `desa train` for this run first")
            h.update(p.read_bytes())
        return h.hexdigest()

    def encoders(self, fine_tuned: bool = True):
        """(LightCurveEncoder, SpectraEncoder) with the run's trained weights, in eval mode. For a
        ``finetune_last_block`` run their last blocks are the DualFormer's fine-tuned ones (what the embedding
        was trained on) unless ``fine_tuned=False`` (the pretrained encoders)."""
        from desa_core.models.light_curve_encoder import LightCurveEncoder
        from desa_core.models.spectra_encoder import SpectraEncoder
        cfg = self.config
        lc, sp = LightCurveEncoder(cfg.light_curve), SpectraEncoder(cfg.spectra)
        for net, stage in ((lc, "light_curve_encoder"), (sp, "spectra_encoder")):
            try:
                net.load_state_dict(_sub_state(self.load_state(stage), "encoder."))
            except RuntimeError as e:
                raise RunDirError(f"{self.checkpoint(stage)}: does not match the run's config ({e})") from e
        if fine_tuned and cfg.dualformer.finetune_last_block:
            self.dualformer().tails.load_into(lc, sp)
        return lc.eval(), sp.eval()

    def dualformer(self, device="cpu"):
        """The run's trained, finalised DualFormer (eval mode)."""
        from desa_core.models.dualformer import DualFormer
        from desa_core.models.encoder_tails import EncoderTails
        cfg = self.config
        tails = EncoderTails.skeleton(cfg.light_curve, cfg.spectra) if cfg.dualformer.finetune_last_block else None
        model = DualFormer(cfg.dualformer, cfg.spectra.out_dim, cfg.light_curve.out_dim, tails=tails)
        path = self.checkpoint("dualformer")
        try:
            model.load_state_dict(self.load_state("dualformer"))
        except RuntimeError as e:
            raise RunDirError(f"{path}: does not match the run's config ({e})") from e
        if not bool(model.finalized):
            raise RunDirError(f"{path}: DualFormer has no eigenbasis (training did not finish)")
        return model.to(device).eval()

    @property
    def heads_path(self) -> Path:
        return self.checkpoint(HEADS)

    def save_heads(self, heads: dict, d_in: int, seed: int, cfg, features_sha256: str) -> Path:
        """Write the fine-tuned heads as one self-describing dict (plain types and tensors only)."""
        from dataclasses import asdict
        payload = {
            "format": HEADS_FORMAT, "format_version": HEADS_VERSION, "d_in": int(d_in), "seed": int(seed),
            "config": json.dumps(asdict(cfg)), "features_sha256": features_sha256,
            "binary": heads["binary"].state_dict(), "age": heads["age"].state_dict(),
            "binary_history": json.dumps(heads["binary_history"]), "age_history": json.dumps(heads["age_history"]),
        }
        save_state(payload, self.heads_path)
        return self.heads_path

    def heads(self) -> dict:
        """{'binary': BinaryHead, 'age': AgeQuantileHead, 'config', '*_history', 'features_sha256'}."""
        return load_heads(self.heads_path)

    def catalog(self, features: FrozenFeatures | None = None) -> pd.DataFrame:
        """The survey catalogue joined on star_id, in the features' row order, with the run's split."""
        import logging

        from desa_core.data.store import SurveyStore, SurveyStoreError
        feats = features if features is not None else self.features()
        survey = self.survey_path
        try:
            catalog = SurveyStore.open(survey).catalog
        except SurveyStoreError as e:
            raise RunDirError(f"{self.manifest_path}: its survey is unusable ({e})") from e
        cat = catalog.set_index(catalog["star_id"].astype(str))
        ids = pd.Index(np.asarray(feats.star_id).astype(str))
        missing = ids.difference(cat.index)
        if len(missing):
            raise RunDirError(f"{survey}: {len(missing)} stars of the features are not in the survey catalogue "
                              f"(first: {missing[0]!r}); was the run trained on another survey?")
        out = cat.loc[ids].reset_index(drop=True)
        split = np.asarray(feats.split).astype(str)
        n_mismatch = int((out["split"].astype(str).to_numpy() != split).sum())
        if n_mismatch:
            logging.getLogger(__name__).warning("%d stars have another split in the features than in the "
                                                "catalogue: using the run's", n_mismatch)
        out["split"] = split
        return out


def load_heads(path) -> dict:
    """Heads from a heads checkpoint file (see :meth:`RunDir.heads`)."""
    from dataclasses import fields

    from desa_core.models.heads import AgeQuantileHead, BinaryHead, HeadConfig
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no heads checkpoint; run `desa train ... --stages heads`")
    d = load_state(path)
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


def file_sha(path: Path) -> str | None:
    return sha256_file(path) if Path(path).is_file() else None
