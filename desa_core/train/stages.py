"""The training stages of `desa train`, each resumable and checkpointed under RUN/checkpoints/.

    light_curve_encoder  SimSiam (two random crops) + Prot quantile regression      -> light_curve_encoder.pt
    spectra_encoder      masked-pixel reconstruction + Teff/logg/[Fe/H] quantiles    -> spectra_encoder.pt
    features             frozen encoder features of every star -> RUN/features.npz   -> features.pt
    dualformer           alignment on the frozen features (train split, early stop)  -> dualformer.pt

A stage's final checkpoint (a state dict, written atomically) marks it complete. While it runs, a stage
writes RUN/checkpoints/<stage>.partial.pt after every epoch (model, optimiser, epoch counters, best
weights); an interrupted stage resumes from there. Randomness is drawn from generators seeded by
(seed, stage, epoch, rank) and the learning rate is a function of the step, so a resumed run repeats the
uninterrupted one exactly.

Preprocessed inputs of the whole store are cached once per run in RUN/cache/ (float32 .npy, memory-mapped):
cleaned light curves (random crops and their ACF/FFT channels are drawn per batch, cheaply) and finished
spectra, so epochs on a CPU cost only the model.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from desa_core.data.preprocess import (LUMINOSITY_COLUMN, RV_COLUMN, clean_light_curves, light_curve_channels,
                                       preprocess_spectra, spectrum_snr)
from desa_core.data.store import (SurveyStore, atomic_write_bytes, atomic_write_json, catalog_column,
                                  sha256_file)
from desa_core.models.config import TEFF_SCALE_K, DesaConfig, TrainConfig
from desa_core.models.encoder_tails import EncoderTails, PenultimateInputs
from desa_core.models.light_curve_encoder import LightCurvePretrainer
from desa_core.models.spectra_encoder import SpectraPretrainer
from desa_core.rundir import FrozenFeatures, RunDir, save_features
from desa_core.train import distributed as ddp
from desa_core.train.alignment import finetuned_features, train_dualformer_stage
from desa_core.train.loop import (CsvLog, autocast, batch_means, fit_epochs, lr_at, make_optimizer, optimizer_step,
                                  seed_for, set_lr)

log = logging.getLogger(__name__)

STAGES = ("light_curve_encoder", "spectra_encoder", "features", "dualformer")


@dataclass
class RunContext:
    run_dir: Path
    store: SurveyStore
    cfg: DesaConfig
    info: ddp.DistInfo

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def checkpoints(self) -> Path:
        return self.run.checkpoints

    @property
    def log(self) -> "CsvLog":
        return CsvLog(self.run.log_path, enabled=self.info.is_main)


# ----------------------------------------------------------------------------------------------- the cache
@dataclass
class Cache:
    light_curves: np.ndarray   # (n_lc, T) cleaned x = flux/median - 1 on the model cadence, LC-row order
    lc_ok: np.ndarray          # (n_lc,) bool: preprocessing succeeded
    spectra: np.ndarray        # (n_spec, 1, spec_length) finished model input, spectrum-row order
    spec_ok: np.ndarray
    snr: np.ndarray            # (n_spec,) median per-pixel S/N


def _cache_key(ctx: RunContext) -> str:
    man = ctx.store.path / "manifest.json"
    blob = json.dumps({"preprocess": asdict(ctx.cfg.preprocess), "survey": sha256_file(man),
                       "rv_column": RV_COLUMN}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def ensure_cache(ctx: RunContext) -> Cache:
    """Preprocess every light curve and spectrum of the store once (rank 0); later calls load it."""
    d = ctx.run.cache_dir
    key = _cache_key(ctx)
    meta_path = d / "meta.json"

    def valid() -> bool:
        try:
            return json.loads(meta_path.read_text()).get("key") == key
        except (OSError, json.JSONDecodeError):
            return False

    if ctx.info.is_main and not valid():
        _build_cache(ctx, d, key)
    ddp.barrier()
    if not valid():
        raise ValueError(f"{d}: preprocessing cache is missing or stale after building it")
    return Cache(light_curves=np.load(d / "light_curves.npy", mmap_mode="r"), lc_ok=np.load(d / "lc_ok.npy"),
                 spectra=np.load(d / "spectra.npy", mmap_mode="r"), spec_ok=np.load(d / "spec_ok.npy"),
                 snr=np.load(d / "snr.npy"))


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


def _build_cache(ctx: RunContext, d: Path, key: str) -> None:
    store, pcfg = ctx.store, ctx.cfg.preprocess
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n_lc, n_spec = store.light_curves.shape[0], store.spectra_flux.shape[0]
    log.info("preprocessing %d light curves and %d spectra into %s", n_lc, n_spec, d)
    # A block of stars at a time through the batch functions (the store's stars share one time grid and one
    # wavelength grid); a star that cannot be used is skipped with a warning.
    chunk = 512
    lc_ok = np.zeros(n_lc, bool)
    lcs = np.zeros((n_lc, 0), np.float32)
    for i in tqdm(range(0, n_lc, chunk), desc="light curves", disable=n_lc < 500, mininterval=2.0):
        try:
            x, problems = clean_light_curves(store.time, np.asarray(store.light_curves[i:i + chunk]), pcfg,
                                             what=f"{store.path}: light curves")
        except ValueError as e:          # the shared time grid itself: no light curve is usable
            log.warning("skipping %s", e)
            continue
        if lcs.shape[1] == 0:
            lcs = np.zeros((n_lc, x.shape[1]), np.float32)
        lcs[i:i + len(x)] = x
        for j, problem in enumerate(problems):
            if problem:
                log.warning("skipping %s: light-curve row %d: %s", store.path, i + j, problem)
            else:
                lc_ok[i + j] = True
    t_len = lcs.shape[1]
    rv_by_row = np.zeros(n_spec)
    cat = store.catalog
    if RV_COLUMN in cat.columns:
        rows = cat["spec_row"].to_numpy(np.int64)
        has = rows >= 0
        rv_by_row[rows[has]] = np.nan_to_num(cat[RV_COLUMN].to_numpy(np.float64)[has])
    else:
        log.warning("%s: catalogue has no %s column; spectra are taken as rest frame", store.path, RV_COLUMN)
    specs = np.lib.format.open_memmap(d / ".spectra.npy.tmp", mode="w+", dtype=np.float32,
                                      shape=(n_spec, 1, pcfg.spec_length))
    spec_ok, snr = np.zeros(n_spec, bool), np.zeros(n_spec, np.float32)
    for i in tqdm(range(0, n_spec, chunk), desc="spectra", disable=n_spec < 500, mininterval=2.0):
        flux, ivar = np.asarray(store.spectra_flux[i:i + chunk]), np.asarray(store.spectra_ivar[i:i + chunk])
        specs[i:i + len(flux)], problems = preprocess_spectra(store.wavelength, flux, ivar,
                                                              rv_by_row[i:i + chunk], pcfg)
        for j, problem in enumerate(problems):
            if problem:
                log.warning("skipping %s: spectrum row %d: %s", store.path, i + j, problem)
            else:
                spec_ok[i + j] = True
                snr[i + j] = spectrum_snr(flux[j], ivar[j])
    specs.flush()
    del specs
    os.replace(d / ".spectra.npy.tmp", d / "spectra.npy")
    _save_npy(d / "light_curves.npy", lcs)
    for name, a in (("lc_ok", lc_ok), ("spec_ok", spec_ok), ("snr", snr)):
        _save_npy(d / f"{name}.npy", a)
    atomic_write_json(d / "meta.json", {"key": key, "n_light_curves": n_lc, "n_spectra": n_spec,
                                        "lc_points": t_len, "seconds": round(time.perf_counter() - t0, 2)})
    log.info("preprocessing cache written in %.1f s (%d/%d light curves, %d/%d spectra usable)",
             time.perf_counter() - t0, lc_ok.sum(), n_lc, spec_ok.sum(), n_spec)


# ------------------------------------------------------------------------------------------- star tables


def _encoder_rows(ctx: RunContext, cache: Cache, modality: str, split: str) -> np.ndarray:
    """Catalogue positions of stars in ``split`` that have a usable ``modality`` ('lc' | 'spec')."""
    cat = ctx.store.catalog
    rows = cat["lc_row" if modality == "lc" else "spec_row"].to_numpy(np.int64)
    ok = cache.lc_ok if modality == "lc" else cache.spec_ok
    has = rows >= 0
    has[has] = ok[rows[has]]
    return np.flatnonzero(has & (cat["split"].to_numpy() == split))


# ----------------------------------------------------------------------------------- stage 1: light curve
def light_curve_inputs(ctx: RunContext, cache: Cache, stars: np.ndarray, rng) -> torch.Tensor:
    cat = ctx.store.catalog
    lc_rows = cat["lc_row"].to_numpy(np.int64)[stars]
    x = np.asarray(cache.light_curves[np.sort(lc_rows)])[np.argsort(np.argsort(lc_rows))]
    return torch.from_numpy(light_curve_channels(x, catalog_column(cat, LUMINOSITY_COLUMN)[stars], ctx.cfg.preprocess, rng))


def stage_light_curve_encoder(ctx: RunContext) -> torch.nn.Module:
    cfg, tc, info = ctx.cfg, ctx.cfg.train, ctx.info
    cache = ensure_cache(ctx)
    train_stars = _encoder_rows(ctx, cache, "lc", "train")
    val_stars = _encoder_rows(ctx, cache, "lc", "val")[: tc.val_max_stars]
    if len(train_stars) < 2:
        raise ValueError(f"{ctx.store.path}: fewer than 2 training stars with a light curve")
    prot = tc.prot_targets(catalog_column(ctx.store.catalog, "prot_days"))
    torch.manual_seed(tc.seed)
    net = LightCurvePretrainer(cfg.light_curve, tc.quantiles, tc.ssl_weight, tc.regression_weight).to(info.device)
    model = ddp.wrap(net, info)
    opt = make_optimizer(model, tc.lc_lr, tc.weight_decay)
    order = ddp.ShardedOrder(len(train_stars), info, seed=seed_for(tc.seed, "lc-order"))
    steps = len(order.epoch_batches(0, tc.lc_batch_size, tc.lc_steps_per_epoch, min_batch=2))
    dev = info.device

    def train_epoch(epoch):
        rng = np.random.default_rng(seed_for(tc.seed, "lc", epoch, info.rank))
        sums, n = {}, 0
        batches = order.epoch_batches(epoch, tc.lc_batch_size, tc.lc_steps_per_epoch, min_batch=2)
        for i, b in enumerate(tqdm(batches, desc=f"light-curve encoder epoch {epoch + 1}", leave=False,
                                   disable=not info.is_main, mininterval=2.0)):
            set_lr(opt, lr_at(epoch * steps + i, steps * tc.lc_epochs, tc.lc_lr, tc.warmup_fraction))
            with autocast(dev, tc.amp):
                out = model(*_views(ctx, cache, train_stars[b], rng, prot, dev))
            optimizer_step(out, opt, net.parameters(), tc.grad_clip, sums)
            n += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    def validate(epoch):
        if len(val_stars) < 2:
            return {}
        rng = np.random.default_rng(seed_for(tc.seed, "lc-val"))   # the same views every epoch
        # the bare module: no DDP sync in validation
        return batch_means(lambda b: net(*_views(ctx, cache, b, rng, prot, dev)), val_stars, tc.lc_batch_size)

    fit_epochs("light_curve_encoder", model, opt, tc.lc_epochs, train_epoch, validate,
               ctx.checkpoints / "light_curve_encoder.partial.pt", None, info, ctx.log)
    return net


def _views(ctx, cache, stars, rng, prot, dev):
    v1 = light_curve_inputs(ctx, cache, stars, rng).to(dev)
    v2 = light_curve_inputs(ctx, cache, stars, rng).to(dev)
    return v1, v2, torch.as_tensor(prot[stars], dtype=torch.float32, device=dev)


# -------------------------------------------------------------------------------------- stage 2: spectra
def spectra_targets(cat, stars) -> np.ndarray:
    return np.stack([catalog_column(cat, "teff")[stars] / TEFF_SCALE_K, catalog_column(cat, "logg")[stars],
                     catalog_column(cat, "feh")[stars]], axis=1)


def stage_spectra_encoder(ctx: RunContext) -> torch.nn.Module:
    cfg, tc, info = ctx.cfg, ctx.cfg.train, ctx.info
    cache = ensure_cache(ctx)
    cat = ctx.store.catalog
    spec_rows = cat["spec_row"].to_numpy(np.int64)
    train_stars = _encoder_rows(ctx, cache, "spec", "train")
    val_stars = _encoder_rows(ctx, cache, "spec", "val")[: tc.val_max_stars]
    if len(train_stars) < 2:
        raise ValueError(f"{ctx.store.path}: fewer than 2 training stars with a spectrum")
    targets = spectra_targets(cat, np.arange(len(cat)))
    torch.manual_seed(tc.seed + 1)
    net = SpectraPretrainer(cfg.spectra, tc.quantiles, tc.ssl_weight, tc.regression_weight, tc.mask_fraction,
                            tc.snr_cap).to(info.device)
    model = ddp.wrap(net, info)
    opt = make_optimizer(model, tc.spec_lr, tc.weight_decay)
    order = ddp.ShardedOrder(len(train_stars), info, seed=seed_for(tc.seed, "spec-order"))
    steps = len(order.epoch_batches(0, tc.spec_batch_size, tc.spec_steps_per_epoch, min_batch=2))
    dev = info.device

    def batch(stars):
        r = spec_rows[stars]
        o = np.argsort(r)
        x = np.empty((len(r), 1, cache.spectra.shape[-1]), np.float32)
        x[o] = cache.spectra[r[o]]
        return (torch.from_numpy(x).to(dev), torch.as_tensor(targets[stars], dtype=torch.float32, device=dev),
                torch.as_tensor(cache.snr[r], dtype=torch.float32, device=dev))

    def train_epoch(epoch):
        gen = torch.Generator().manual_seed(seed_for(tc.seed, "spec", epoch, info.rank))
        sums, n = {}, 0
        batches = order.epoch_batches(epoch, tc.spec_batch_size, tc.spec_steps_per_epoch, min_batch=2)
        for i, b in enumerate(tqdm(batches, desc=f"spectra encoder epoch {epoch + 1}", leave=False,
                                   disable=not info.is_main, mininterval=2.0)):
            set_lr(opt, lr_at(epoch * steps + i, steps * tc.spec_epochs, tc.spec_lr, tc.warmup_fraction))
            with autocast(dev, tc.amp):
                out = model(*batch(train_stars[b]), generator=gen)
            optimizer_step(out, opt, net.parameters(), tc.grad_clip, sums)
            n += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    def validate(epoch):
        if len(val_stars) < 2:
            return {}
        gen = torch.Generator().manual_seed(seed_for(tc.seed, "spec-val"))
        # the bare module: no DDP sync outside training steps
        return batch_means(lambda b: net(*batch(b), generator=gen), val_stars, tc.spec_batch_size)

    fit_epochs("spectra_encoder", model, opt, tc.spec_epochs, train_epoch, validate,
               ctx.checkpoints / "spectra_encoder.partial.pt", None, info, ctx.log)
    return net


# ------------------------------------------------------------------------------------- stage 3: features
def _usable(ctx: RunContext, cache: Cache) -> tuple[np.ndarray, np.ndarray]:
    """(has_lc, has_spec) per catalogue row: the star has the modality and its preprocessing succeeded."""
    cat = ctx.store.catalog
    lc_rows, spec_rows = cat["lc_row"].to_numpy(np.int64), cat["spec_row"].to_numpy(np.int64)
    has_lc = lc_rows >= 0
    has_lc[has_lc] = cache.lc_ok[lc_rows[has_lc]]
    has_spec = spec_rows >= 0
    has_spec[has_spec] = cache.spec_ok[spec_rows[has_spec]]
    return has_lc, has_spec


@torch.no_grad()
def _encode_store(ctx: RunContext, cache: Cache, lc_fn, spec_fn, lc_out: list, spec_out: list, what: str) -> None:
    """Run ``lc_fn`` / ``spec_fn`` (input batch -> tensor or tuple of tensors) over every usable star (centre
    crops) and write row by row into the arrays ``lc_out`` / ``spec_out`` (one per output, catalogue order)."""
    has_lc, has_spec = _usable(ctx, cache)
    bs, dev = ctx.cfg.train.feature_batch_size, ctx.info.device
    spec_rows = ctx.store.catalog["spec_row"].to_numpy(np.int64)

    def put(outs, b, y):
        for arr, part in zip(outs, y if isinstance(y, tuple) else (y,)):
            arr[b] = part.float().cpu().numpy()

    idx = np.flatnonzero(has_lc)
    for i in tqdm(range(0, len(idx), bs), desc=f"light-curve {what}", mininterval=2.0, disable=len(idx) < 10 * bs):
        b = idx[i:i + bs]
        put(lc_out, b, lc_fn(light_curve_inputs(ctx, cache, b, None).to(dev)))
    idx = np.flatnonzero(has_spec)
    for i in tqdm(range(0, len(idx), bs), desc=f"spectra {what}", mininterval=2.0, disable=len(idx) < 10 * bs):
        b = idx[i:i + bs]
        r = spec_rows[b]
        o = np.argsort(r)
        x = np.empty((len(r), 1, cache.spectra.shape[-1]), np.float32)
        x[o] = cache.spectra[r[o]]
        put(spec_out, b, spec_fn(torch.from_numpy(x).to(dev)))


def stage_features(ctx: RunContext, lc_encoder, spec_encoder) -> Path:
    """Frozen features of every star (centre crops); zeros where a modality is missing or unusable."""
    info = ctx.info
    cache = ensure_cache(ctx)
    out_path = ctx.run.features_path
    if info.is_main:
        cat = ctx.store.catalog
        n = len(cat)
        lc_encoder.eval().to(info.device)
        spec_encoder.eval().to(info.device)
        has_lc, has_spec = _usable(ctx, cache)
        z_lc = np.zeros((n, lc_encoder.out_dim), np.float32)
        z_spec = np.zeros((n, spec_encoder.out_dim), np.float32)
        _encode_store(ctx, cache, lc_encoder, spec_encoder, [z_lc], [z_spec], "features")
        save_features(out_path, FrozenFeatures(cat["star_id"].astype(str).to_numpy(), z_lc, z_spec, has_lc, has_spec,
                                               cat["split"].astype(str).to_numpy()))
        log.info("features of %d stars written to %s (%d with a light curve, %d with a spectrum)", n, out_path,
                 has_lc.sum(), has_spec.sum())
    ddp.barrier()
    return out_path


@torch.no_grad()
def penultimate_inputs(ctx: RunContext, lc_encoder, spec_encoder) -> PenultimateInputs:
    """What the encoder tails read (``finetune_last_block``), for every star, computed once with the frozen
    encoders into RUN/cache/penultimate/ (float32 .npy, memory-mapped; keyed on the preprocessing cache and the
    encoders' weights). Costs ~ (tokens x width) floats per star and modality: 12 kB in the `small` config."""
    cache = ensure_cache(ctx)
    d = ctx.run.cache_dir / "penultimate"
    h = hashlib.sha256(_cache_key(ctx).encode())
    for net in (lc_encoder, spec_encoder):
        for k, v in sorted(net.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    key = h.hexdigest()
    names = ("lc_summary", "lc_tokens", "spec_tokens")
    meta = d / "meta.json"
    try:
        fresh = json.loads(meta.read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        fresh = False
    if ctx.info.is_main and not fresh:
        t0 = time.perf_counter()
        d.mkdir(parents=True, exist_ok=True)
        n = len(ctx.store.catalog)
        lc_encoder.eval().to(ctx.info.device)
        spec_encoder.eval().to(ctx.info.device)
        probe_lc = lc_encoder.penultimate(torch.zeros(1, ctx.cfg.light_curve.in_channels,
                                                      ctx.cfg.preprocess.lc_length, device=ctx.info.device))
        probe_spec = spec_encoder.penultimate(torch.zeros(1, 1, cache.spectra.shape[-1], device=ctx.info.device))
        shapes = {"lc_summary": probe_lc[0].shape[1:], "lc_tokens": probe_lc[1].shape[1:],
                  "spec_tokens": probe_spec.shape[1:]}
        arrs = {k: np.lib.format.open_memmap(d / f".{k}.npy.tmp", mode="w+", dtype=np.float32,
                                             shape=(n, *shapes[k])) for k in names}
        for a in arrs.values():
            a[:] = 0.0
        _encode_store(ctx, cache, lc_encoder.penultimate, spec_encoder.penultimate,
                      [arrs["lc_summary"], arrs["lc_tokens"]], [arrs["spec_tokens"]], "penultimate tokens")
        for k, a in arrs.items():
            a.flush()
            del a
            os.replace(d / f".{k}.npy.tmp", d / f"{k}.npy")
        arrs.clear()
        atomic_write_json(meta, {"key": key, "n_stars": n, "shapes": {k: list(v) for k, v in shapes.items()},
                                 "seconds": round(time.perf_counter() - t0, 2)})
        log.info("penultimate encoder tokens of %d stars written to %s in %.1f s", n, d, time.perf_counter() - t0)
    ddp.barrier()
    return PenultimateInputs(*(np.load(d / f"{k}.npy", mmap_mode="r") for k in names))


# ----------------------------------------------------------------------------------- stage 4: DualFormer
def stage_dualformer(ctx: RunContext, lc_encoder=None, spec_encoder=None):
    """Alignment on the run's features; with ``finetune_last_block`` also on the encoders' last blocks (pass
    the run's pretrained encoders)."""
    tails = penultimate = None
    if ctx.cfg.dualformer.finetune_last_block:
        if lc_encoder is None or spec_encoder is None:
            raise ValueError("finetune_last_block: the dualformer stage needs the run's encoders")
        penultimate = penultimate_inputs(ctx, lc_encoder, spec_encoder)
        tails = EncoderTails.from_encoders(lc_encoder, spec_encoder)
    model = train_dualformer_stage(ctx.run, ctx.store.catalog, ctx.cfg, ctx.info, ctx.log, tails, penultimate)
    if penultimate is not None and ctx.info.is_main:
        save_features(ctx.run.finetuned_features_path, finetuned_features(model, ctx.run.features(), penultimate))
    ddp.barrier()
    return model
