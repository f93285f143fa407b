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
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from desa_core.data.preprocess import (LUMINOSITY_COLUMN, RV_COLUMN, preprocess_light_curve, preprocess_light_curves,
                                       preprocess_spectra, preprocess_spectrum)
from desa_core.data.store import catalog_column
from desa_core.models.config import DesaConfig
from desa_core.models.dualformer import DualFormer, conditioning_labels
from desa_core.models.light_curve_encoder import LightCurveEncoder
from desa_core.models.spectra_encoder import SpectraEncoder
from desa_core.rundir import RunDir

log = logging.getLogger(__name__)

# Stars per model call (Embedder.default_batch_size). On the CPU, per torch thread: new stars through two
# one-thread Dask workers on two cores ran 1.08x faster at 128 stars per call than at 256 (mean of 7 paired
# rounds, 0.97-1.18; 64 per call 0.91-1.20); one process with torch on both cores, at 256 against 128 per call
# (this rule's 2 x 128), was level (0.96-1.23). benchmarks/results/embedding_batch_sizes*.json, docs/precompute.md.
CPU_STARS_PER_THREAD = 128
ACCELERATOR_BATCH = 256

# What :class:`Predictor` writes per star (stars.parquet, the upload panel): the run's trained read-outs.
PREDICTION_COLUMNS = ("p_binary", "age_pred_gyr", "age_pred_lo_gyr", "age_pred_hi_gyr", "teff_pred", "logg_pred",
                      "feh_pred", "prot_pred_days")
PREDICTION_LABELS = {
    "p_binary": "P(binary) (binary head)", "age_pred_gyr": "age, median (age head) [Gyr]",
    "age_pred_lo_gyr": "age, conformal lower bound (0.14) [Gyr]", "age_pred_hi_gyr": "age, conformal upper bound (0.86) [Gyr]",
    "teff_pred": "Teff from the spectrum encoder's head [K]", "logg_pred": "logg from the spectrum encoder's head",
    "feh_pred": "[Fe/H] from the spectrum encoder's head", "prot_pred_days": "Prot from the light-curve encoder's head [d]",
}


class Predictor:
    """The run's trained read-outs of a star: P(binary) and the conformalized age (the fine-tuned heads on the
    DualFormer's [p_s ; p_l]), Teff / logg / [Fe/H] (the spectra encoder's pretraining quantile head on its
    feature) and Prot (the light-curve encoder's quantile head on its feature); medians of the quantiles.

        pred = Predictor.from_run("runs/small").predict(z_lc, z_spec)    # dict of (N,) arrays, PREDICTION_COLUMNS

    ``z_lc`` / ``z_spec`` are the encoder features (the 'light_curve' / 'spectrum' outputs of
    :class:`Embedder`), NaN rows for a missing modality: the spectrum's columns are then NaN, and so on; the
    heads read the DualFormer, which stands in a placeholder for a missing stream, so every star gets them.
    For a ``finetune_last_block`` run the encoders' heads read the fine-tuned features they were not trained
    on (a small mismatch); the default run freezes the encoders."""

    def __init__(self, dualformer, heads: dict | None, lc_head, spec_head, quantiles, train_cfg):
        self.dualformer, self.heads = dualformer.eval(), heads
        self.lc_head, self.spec_head = lc_head, spec_head
        self.median = int(np.argmin(np.abs(np.asarray(quantiles) - 0.5)))
        self.n_quantiles = len(quantiles)
        self.train_cfg = train_cfg

    @classmethod
    def from_run(cls, run_dir) -> "Predictor":
        run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
        cfg = run.config
        q = cfg.train.quantiles

        def linear(stage: str) -> torch.nn.Linear:
            st = run.load_state(stage)
            w, b = st["regressor.weight"], st["regressor.bias"]
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            lin.load_state_dict({"weight": w, "bias": b})
            return lin.eval()

        heads = run.heads() if run.heads_path.is_file() else None
        return cls(run.dualformer(), heads, linear("light_curve_encoder"), linear("spectra_encoder"), q, cfg.train)

    @torch.no_grad()
    def predict(self, z_lc, z_spec, batch_size: int = 4096) -> dict:
        from desa_core.models.config import TEFF_SCALE_K
        from desa_core.models.heads import predict_age, predict_binary
        z_lc, z_spec = np.asarray(z_lc, np.float32), np.asarray(z_spec, np.float32)
        n = len(z_lc)
        has_l, has_s = np.isfinite(z_lc).all(axis=1), np.isfinite(z_spec).all(axis=1)
        out = {k: np.full(n, np.nan) for k in PREDICTION_COLUMNS}
        for i in range(0, n, batch_size):
            sl = slice(i, min(n, i + batch_size))
            zl = torch.from_numpy(np.where(has_l[sl, None], z_lc[sl], 0.0).astype(np.float32))
            zs = torch.from_numpy(np.where(has_s[sl, None], z_spec[sl], 0.0).astype(np.float32))
            hl, hs = torch.from_numpy(has_l[sl]), torch.from_numpy(has_s[sl])
            if self.heads is not None:
                # a label-conditioned ablation run gets NaN labels, as an upload does (embed_single)
                lab = (torch.full((len(zs), self.dualformer.n_labels), float("nan"))
                       if self.dualformer.n_labels else None)
                o = self.dualformer(zs, zl, hs, hl, labels=lab)
                x = torch.cat([o["p_s"], o["p_l"]], 1).float().numpy()
                out["p_binary"][sl] = predict_binary(self.heads["binary"], x)
                lo, mid, hi = predict_age(self.heads["age"], x)
                out["age_pred_lo_gyr"][sl], out["age_pred_gyr"][sl], out["age_pred_hi_gyr"][sl] = lo, mid, hi
            ql = self.lc_head(zl).numpy()[:, self.median]
            out["prot_pred_days"][sl] = np.where(has_l[sl], self.train_cfg.prot_from_targets(ql), np.nan)
            qs = self.spec_head(zs).numpy().reshape(len(zs), 3, self.n_quantiles)[:, :, self.median]
            for j, (col, scale) in enumerate((("teff_pred", TEFF_SCALE_K), ("logg_pred", 1.0), ("feh_pred", 1.0))):
                out[col][sl] = np.where(has_s[sl], qs[:, j] * scale, np.nan)
        return out


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
        self.predictor: Predictor | None = None
        self._features_cache: tuple | None = None   # (store key, saved features) of the last store read
        self._columns_cache: tuple | None = None    # (catalogue, its columns as arrays) of the last catalogue

    @classmethod
    def from_run(cls, run_dir, device=None) -> "Embedder":
        """The frozen encoders and DualFormer of a finished run (read through :class:`RunDir`)."""
        run = RunDir.open(run_dir)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        lc, sp = run.encoders()
        emb = cls(run.config, lc, sp, run.dualformer(), run.fingerprint, device)
        emb.run_dir = run.path
        emb.survey_sha256 = run.survey_manifest_sha256
        emb.predictor = Predictor.from_run(run)
        return emb

    def predict(self, out: dict) -> dict:
        """The run's predicted properties (PREDICTION_COLUMNS) of embedded stars (an :meth:`embed_store` /
        :meth:`embed_single` result); empty when the embedder was not loaded from a run."""
        if self.predictor is None:
            return {}
        z_lc, z_sp = np.atleast_2d(out["light_curve"]), np.atleast_2d(out["spectrum"])
        res = self.predictor.predict(z_lc, z_sp)
        return res if np.ndim(out["light_curve"]) == 2 else {k: float(v[0]) for k, v in res.items()}

    # ------------------------------------------------------------------------------------------- internals
    @torch.no_grad()
    def _embed_arrays(self, x_lc, has_lc, x_sp, has_sp, labels=None) -> dict:
        """Preprocessed inputs of the stars that have each modality (``x_lc`` (n_lc, 4, L) for the True rows
        of ``has_lc`` (n,), likewise spectra) -> dict of (n, d) float32 arrays, NaN rows where missing."""
        n = len(has_lc)
        has_lc = torch.as_tensor(np.asarray(has_lc, dtype=bool))
        has_sp = torch.as_tensor(np.asarray(has_sp, dtype=bool))
        z_lc = torch.zeros(n, self.dims["light_curve"])
        z_sp = torch.zeros(n, self.dims["spectrum"])
        if has_lc.any():
            z_lc[has_lc] = self.lc_encoder(torch.from_numpy(x_lc).to(self.device)).float().cpu()
        if has_sp.any():
            z_sp[has_sp] = self.spec_encoder(torch.from_numpy(x_sp).to(self.device)).float().cpu()
        lab = None if labels is None else torch.as_tensor(labels, dtype=torch.float32).to(self.device)
        out = self.dualformer(z_sp.to(self.device), z_lc.to(self.device), has_sp.to(self.device),
                              has_lc.to(self.device), labels=lab)
        lc_np, sp_np = z_lc.numpy(), z_sp.numpy()
        lc_np[~has_lc.numpy()] = np.nan
        sp_np[~has_sp.numpy()] = np.nan
        return {"desa": out["embedding"].float().cpu().numpy(), "light_curve": lc_np, "spectrum": sp_np}

    def _embed_batch(self, lc_inputs, spec_inputs, labels=None) -> dict:
        """Lists (None where missing) of preprocessed inputs -> dict of (n, d) float32 arrays."""
        def stack(xs):
            have = [x is not None for x in xs]
            return (np.stack([x for x in xs if x is not None]) if any(have) else None), have
        (x_lc, has_lc), (x_sp, has_sp) = stack(lc_inputs), stack(spec_inputs)
        return self._embed_arrays(x_lc, has_lc, x_sp, has_sp, labels)

    def _labels_for(self, catalog, rows):
        return conditioning_labels(catalog, rows) if self.dualformer.n_labels else None

    # ----------------------------------------------------------------------------------------------- API
    def _training_features(self, store):
        """The run's features (RunDir.desa_features_path) when ``store`` is the survey it was trained on (same
        manifest), else None. Read and checked once per store and kept: precompute calls this once per chunk,
        and a Dask worker embeds many chunks with one Embedder (reading the whole file for every chunk made the
        Dask path slower than the in-process one)."""
        if self.run_dir is None or not self.survey_sha256:
            return None
        fpath = RunDir(self.run_dir).desa_features_path
        mpath = Path(store.path) / "manifest.json"
        if not fpath.is_file() or not mpath.is_file():
            return None
        key = (str(Path(store.path).resolve()), mpath.stat().st_mtime_ns, fpath.stat().st_mtime_ns)
        cached = self._features_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        feats = None
        if hashlib.sha256(mpath.read_bytes()).hexdigest() == self.survey_sha256:
            with np.load(fpath, allow_pickle=False) as z:
                feats = {k: z[k] for k in ("star_id", "z_lc", "z_spec", "has_lc", "has_spec")}
            if not np.array_equal(feats["star_id"].astype(str), store.catalog["star_id"].astype(str).to_numpy()):
                feats = None
        self._features_cache = (key, feats)
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

    def _prepare_store_batch(self, store, stars, columns) -> tuple:
        """Preprocess the stars at catalogue positions ``stars`` of a store as one batch per modality ->
        the arguments of :meth:`_embed_arrays`. A star whose light curve or spectrum is unusable gets a
        warning naming it and is embedded without that modality."""
        pcfg = self.config.preprocess
        x_lc = x_sp = None
        has_lc = columns["lc_row"][stars] >= 0
        has_sp = columns["spec_row"][stars] >= 0
        if has_lc.any():
            s = stars[has_lc]
            flux = np.asarray(store.light_curves[columns["lc_row"][s]])
            x_lc, problems = preprocess_light_curves(store.time, flux, columns["abs_g"][s], pcfg)
            x_lc = self._drop_unusable(x_lc, problems, has_lc, columns["star_id"][s], "light curve")
        if has_sp.any():
            s = stars[has_sp]
            rows = columns["spec_row"][s]
            x_sp, problems = preprocess_spectra(store.wavelength, np.asarray(store.spectra_flux[rows]),
                                                np.asarray(store.spectra_ivar[rows]), columns["rv"][s], pcfg)
            x_sp = self._drop_unusable(x_sp, problems, has_sp, columns["star_id"][s], "spectrum")
        return x_lc, has_lc, x_sp, has_sp, self._labels_for(store.catalog, stars)

    def _catalog_columns(self, cat) -> dict:
        """The catalogue columns embedding reads, as arrays, kept for the last catalogue: a Dask worker embeds
        chunk after chunk of one store (at 10^6 stars converting them took ~0.1 s, 5% of a 2,048-star chunk)."""
        cached = self._columns_cache
        if cached is not None and cached[0] is cat:
            return cached[1]
        columns = {"lc_row": cat["lc_row"].to_numpy(np.int64), "spec_row": cat["spec_row"].to_numpy(np.int64),
                   "star_id": cat["star_id"].to_numpy(),
                   "abs_g": catalog_column(cat, LUMINOSITY_COLUMN), "rv": catalog_column(cat, RV_COLUMN, 0.0)}
        self._columns_cache = (cat, columns)
        return columns

    @staticmethod
    def _drop_unusable(x, problems, has, star_ids, what):
        bad = np.array([p is not None for p in problems])
        for i in np.flatnonzero(bad):
            log.warning("star %s: %s unusable (%s)", star_ids[i], what, problems[i])
        has[np.flatnonzero(has)[bad]] = False
        return x[~bad]

    def _prefetch_default(self) -> bool:
        return self.device.type == "cpu" and _usable_cores() > torch.get_num_threads()

    def default_batch_size(self) -> int:
        """Stars per model call when the caller names none: :data:`ACCELERATOR_BATCH` on a GPU; on the CPU
        :data:`CPU_STARS_PER_THREAD` per torch thread, so that a batch's largest activations stay in the
        cache a thread has (the spectra stem's first layer alone holds 64 KiB per star: 16 MiB at 256 stars,
        where two one-thread worker processes on two cores share 32 MiB of L3)."""
        if self.device.type != "cpu":
            return ACCELERATOR_BATCH
        return CPU_STARS_PER_THREAD * max(1, torch.get_num_threads())

    def embed_store(self, store, rows=None, batch_size: int | None = None, progress: bool = True,
                    reuse_features: bool = True, prefetch: bool | None = None) -> dict:
        """Embed stars of a SurveyStore (catalogue positions ``rows``, default all) -> dict of float32 arrays.

        For the survey the run was trained on (same store manifest), the encoder features saved by training
        (RUN/features.npz, computed from the same preprocessing) are reused and only the DualFormer runs;
        ``reuse_features=False`` recomputes everything from the raw arrays, a batch of stars at a time
        (:func:`~desa_core.data.preprocess.preprocess_light_curves`, ``preprocess_spectra``).
        ``prefetch``: preprocess the next batch in a background thread while the model runs on this one.
        None chooses: on when the model runs on the CPU and torch leaves a core free
        (``torch.get_num_threads()`` < usable cores), else off. Measured (docs/precompute.md): it pays on an
        idle machine with torch at 1 thread of 2 cores; with torch on every core, on a machine whose other
        core is busy, and with a GPU (whose kernel launches then wait for the interpreter lock) it costs.
        ``batch_size``: stars per model call, None for :meth:`default_batch_size`.
        """
        batch_size = int(batch_size or self.default_batch_size())
        cat = store.catalog
        rows = np.arange(len(cat)) if rows is None else np.asarray(rows, dtype=np.int64)
        feats = self._training_features(store) if reuse_features else None
        if feats is not None:
            log.info("embedding %d stars from the run's saved encoder features", len(rows))
            return self._embed_features(feats, rows, self._labels_for(cat, rows), batch_size)
        columns = self._catalog_columns(cat)
        if prefetch is None:
            prefetch = self._prefetch_default()
        parts = {"desa": [], "light_curve": [], "spectrum": []}
        batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        # With prefetch, numpy preprocesses the next batch in a background thread while torch runs the model
        # on this one (both release the GIL in their heavy loops). BLAS at one thread: the preprocessing's
        # small matrix products gain nothing from more, and an idle BLAS thread team spins, slowing the rest.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="desa-preprocess") as pool, \
                threadpool_limits(limits=1, user_api="blas"):
            def start(b):
                if prefetch:
                    return pool.submit(self._prepare_store_batch, store, b, columns)
                done = Future()
                done.set_result(self._prepare_store_batch(store, b, columns))
                return done
            ahead = start(batches[0]) if batches else None
            for k in tqdm(range(len(batches)), desc="embedding stars", disable=not progress or len(batches) < 2,
                          mininterval=2.0):
                inputs = ahead.result()
                if k + 1 < len(batches):
                    ahead = start(batches[k + 1])
                out = self._embed_arrays(*inputs)
                for key in parts:
                    parts[key].append(out[key])
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
