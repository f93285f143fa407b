"""Inference: embed stars with a trained run (used by precompute and by the dashboard's live uploads).

    emb = Embedder.from_run("runs/small")
    out = emb.embed_store(SurveyStore.open("data/survey"))     # {'desa': (N, D), 'light_curve': ..., 'spectrum': ...}
    one = emb.embed_single(light_curve=(time, flux), spectrum=(wavelength, flux, ivar), rv_kms=12.0, abs_g=4.8)

Inputs go through :mod:`desa_core.data.preprocess` exactly as in training (centre crop), so a star embedded
here matches its row of RUN/features.npz. Stream outputs ('light_curve', 'spectrum') are NaN for a star that
lacks that modality; 'desa' is defined for every star (the DualFormer's placeholder stream stands in).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from desa_core.data.preprocess import RV_COLUMN, preprocess_light_curve, preprocess_spectrum
from desa_core.models.config import DesaConfig, config_from_dict
from desa_core.models.dualformer import DualFormer, conditioning_labels
from desa_core.models.light_curve_encoder import LightCurveEncoder
from desa_core.models.spectra_encoder import SpectraEncoder

log = logging.getLogger(__name__)

WEIGHT_FILES = ("light_curve_encoder.pt", "spectra_encoder.pt", "dualformer.pt")


def _load_state(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; finish `desa train` for this run first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- an unreadable file is a user error naming the file
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e


def _sub_state(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class Embedder:
    """Frozen encoders + DualFormer of one run. Attributes: ``fingerprint`` (sha256 of the final weight
    files), ``config_name``, ``dims`` ({'desa', 'light_curve', 'spectrum'}), ``config``, ``device``."""

    def __init__(self, config: DesaConfig, lc_encoder: LightCurveEncoder, spec_encoder: SpectraEncoder,
                 dualformer: DualFormer, fingerprint: str, device="cpu"):
        self.config, self.device = config, torch.device(device)
        self.lc_encoder = lc_encoder.eval().to(self.device)
        self.spec_encoder = spec_encoder.eval().to(self.device)
        self.dualformer = dualformer.eval().to(self.device)
        self.fingerprint = fingerprint
        self.config_name = config.name
        self.dims = {"desa": dualformer.embedding_dim, "light_curve": lc_encoder.out_dim,
                     "spectrum": spec_encoder.out_dim}
        self.run_dir: Path | None = None
        self.survey_sha256: str | None = None     # the survey the run was trained on

    @classmethod
    def from_run(cls, run_dir, device=None) -> "Embedder":
        run_dir = Path(run_dir)
        mpath = run_dir / "run_manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"{mpath}: not a DESA run folder (train one with `desa train`)")
        try:
            cfg = config_from_dict(json.loads(mpath.read_text())["config"], where=str(mpath))
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{mpath}: unreadable run manifest ({e})") from e
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        paths = [run_dir / "checkpoints" / f for f in WEIGHT_FILES]
        states = [_load_state(p) for p in paths]
        lc = LightCurveEncoder(cfg.light_curve)
        lc.load_state_dict(_sub_state(states[0], "encoder."))
        sp = SpectraEncoder(cfg.spectra)
        sp.load_state_dict(_sub_state(states[1], "encoder."))
        df = DualFormer(cfg.dualformer, sp.out_dim, lc.out_dim)
        df.load_state_dict(states[2])
        if not bool(df.finalized):
            raise ValueError(f"{paths[2]}: DualFormer has no eigenbasis (training did not finish)")
        h = hashlib.sha256()
        for p in paths:
            h.update(p.read_bytes())
        emb = cls(cfg, lc, sp, df, h.hexdigest(), device)
        emb.run_dir = run_dir
        emb.survey_sha256 = json.loads(mpath.read_text()).get("survey_manifest_sha256")
        return emb

    # ------------------------------------------------------------------------------------------- internals
    @torch.no_grad()
    def _embed_batch(self, lc_inputs, spec_inputs, labels=None) -> dict:
        """Lists (None where missing) of preprocessed inputs -> dict of (n, d) float32 arrays."""
        n = len(lc_inputs)
        d_lc, d_sp = self.dims["light_curve"], self.dims["spectrum"]
        z_lc = torch.zeros(n, d_lc)
        z_sp = torch.zeros(n, d_sp)
        has_lc = torch.tensor([x is not None for x in lc_inputs], dtype=torch.bool)
        has_sp = torch.tensor([x is not None for x in spec_inputs], dtype=torch.bool)
        if has_lc.any():
            x = torch.from_numpy(np.stack([a for a in lc_inputs if a is not None])).to(self.device)
            z_lc[has_lc] = self.lc_encoder(x).float().cpu()
        if has_sp.any():
            x = torch.from_numpy(np.stack([a for a in spec_inputs if a is not None])).to(self.device)
            z_sp[has_sp] = self.spec_encoder(x).float().cpu()
        lab = None if labels is None else torch.as_tensor(labels, dtype=torch.float32).to(self.device)
        out = self.dualformer(z_sp.to(self.device), z_lc.to(self.device), has_sp.to(self.device),
                              has_lc.to(self.device), labels=lab)
        lc_np, sp_np = z_lc.numpy(), z_sp.numpy()
        lc_np[~has_lc.numpy()] = np.nan
        sp_np[~has_sp.numpy()] = np.nan
        return {"desa": out["embedding"].float().cpu().numpy(), "light_curve": lc_np, "spectrum": sp_np}

    def _labels_for(self, catalog, rows):
        return conditioning_labels(catalog, rows) if self.dualformer.n_labels else None

    # ----------------------------------------------------------------------------------------------- API
    def _training_features(self, store):
        """The run's features.npz when ``store`` is the survey it was trained on (same manifest), else None."""
        if self.run_dir is None or not self.survey_sha256:
            return None
        fpath = self.run_dir / "features.npz"
        mpath = Path(store.path) / "manifest.json"
        if not fpath.is_file() or not mpath.is_file():
            return None
        if hashlib.sha256(mpath.read_bytes()).hexdigest() != self.survey_sha256:
            return None
        with np.load(fpath, allow_pickle=False) as z:
            feats = {k: z[k] for k in ("star_id", "z_lc", "z_spec", "has_lc", "has_spec")}
        if not np.array_equal(feats["star_id"].astype(str), store.catalog["star_id"].astype(str).to_numpy()):
            return None
        return feats

    @torch.no_grad()
    def _embed_features(self, feats, rows, labels, batch_size) -> dict:
        parts = {"desa": [], "light_curve": [], "spectrum": []}
        for i in range(0, len(rows), batch_size):
            b = rows[i:i + batch_size]
            has_l, has_s = feats["has_lc"][b].astype(bool), feats["has_spec"][b].astype(bool)
            t = lambda a: torch.as_tensor(np.asarray(a)).to(self.device)  # noqa: E731
            lab = None if labels is None else t(labels[i:i + batch_size].astype(np.float32))
            out = self.dualformer(t(feats["z_spec"][b]), t(feats["z_lc"][b]), t(has_s), t(has_l), labels=lab)
            z_l, z_s = feats["z_lc"][b].astype(np.float32), feats["z_spec"][b].astype(np.float32)
            z_l[~has_l] = np.nan
            z_s[~has_s] = np.nan
            parts["desa"].append(out["embedding"].float().cpu().numpy())
            parts["light_curve"].append(z_l)
            parts["spectrum"].append(z_s)
        return {k: (np.concatenate(v) if v else np.zeros((0, self.dims[k]), np.float32)).astype(np.float32)
                for k, v in parts.items()}

    def embed_store(self, store, rows=None, batch_size: int = 256, progress: bool = True,
                    reuse_features: bool = True) -> dict:
        """Embed stars of a SurveyStore (catalogue positions ``rows``, default all) -> dict of float32 arrays.

        For the survey the run was trained on (same store manifest), the encoder features saved by training
        (RUN/features.npz, computed from the same preprocessing) are reused and only the DualFormer runs;
        ``reuse_features=False`` recomputes everything from the raw arrays.
        """
        cat = store.catalog
        rows = np.arange(len(cat)) if rows is None else np.asarray(rows, dtype=np.int64)
        feats = self._training_features(store) if reuse_features else None
        if feats is not None:
            log.info("embedding %d stars from the run's saved encoder features", len(rows))
            return self._embed_features(feats, rows, self._labels_for(cat, rows), batch_size)
        pcfg = self.config.preprocess
        lc_row = cat["lc_row"].to_numpy(np.int64)
        sp_row = cat["spec_row"].to_numpy(np.int64)
        abs_g = cat["abs_g"].to_numpy(np.float64) if "abs_g" in cat.columns else np.full(len(cat), np.nan)
        rv = cat[RV_COLUMN].to_numpy(np.float64) if RV_COLUMN in cat.columns else np.zeros(len(cat))
        parts = {"desa": [], "light_curve": [], "spectrum": []}
        chunks = range(0, len(rows), batch_size)
        for i in tqdm(chunks, desc="embedding stars", disable=not progress or len(chunks) < 2, mininterval=2.0):
            b = rows[i:i + batch_size]
            lcs, sps = [], []
            for r in b:
                x = None
                if lc_row[r] >= 0:
                    try:
                        x = preprocess_light_curve(store.time, np.asarray(store.light_curves[lc_row[r]]), abs_g[r],
                                                   pcfg)
                    except ValueError as e:
                        log.warning("star %s: light curve unusable (%s)", cat["star_id"].iat[r], e)
                lcs.append(x)
                y = None
                if sp_row[r] >= 0:
                    try:
                        y = preprocess_spectrum(store.wavelength, np.asarray(store.spectra_flux[sp_row[r]]),
                                                np.asarray(store.spectra_ivar[sp_row[r]]),
                                                rv[r] if np.isfinite(rv[r]) else 0.0, pcfg)
                    except ValueError as e:
                        log.warning("star %s: spectrum unusable (%s)", cat["star_id"].iat[r], e)
                sps.append(y)
            out = self._embed_batch(lcs, sps, self._labels_for(cat, b))
            for k in parts:
                parts[k].append(out[k])
        return {k: (np.concatenate(v) if v else np.zeros((0, self.dims[k]), np.float32)).astype(np.float32)
                for k, v in parts.items()}

    def embed_single(self, light_curve=None, spectrum=None, rv_kms: float = 0.0, abs_g=None, labels=None) -> dict:
        """Embed one star from raw arrays: ``light_curve=(time [d], flux)``, ``spectrum=(wavelength [A], flux,
        ivar)``; at least one is needed. Returns 1-D float32 arrays under 'desa', 'light_curve', 'spectrum'."""
        if light_curve is None and spectrum is None:
            raise ValueError("embed_single needs a light curve, a spectrum, or both")
        pcfg = self.config.preprocess
        x = y = None
        if light_curve is not None:
            t, f = light_curve
            x = preprocess_light_curve(t, f, np.nan if abs_g is None else abs_g, pcfg)
        if spectrum is not None:
            if len(spectrum) == 2:
                w, fl = spectrum
                iv = None
            else:
                w, fl, iv = spectrum
            y = preprocess_spectrum(w, fl, iv, rv_kms, pcfg)
        lab = None
        if self.dualformer.n_labels:
            lab = np.full((1, self.dualformer.n_labels), np.nan) if labels is None else np.asarray(labels)[None]
        out = self._embed_batch([x], [y], lab)
        return {k: v[0] for k, v in out.items()}
