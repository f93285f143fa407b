"""The per-star preprocessing as it was before the batch version (desa_core/data/preprocess.py, Nov 2026).

A frozen copy kept ONLY as the baseline of benchmarks/precompute_bench.py: it times the old per-star path
against the batch functions on the same stars in the same run (the machine is shared, so only a same-run
ratio is meaningful) and reports how far the two sets of numbers differ. Nothing in the package uses it;
the method has one definition, in desa_core.data.preprocess.
"""
from __future__ import annotations

import numpy as np

from desa_core.data.preprocess import C_KMS
from desa_core.models.config import PreprocessConfig


# ----------------------------------------------------------------------------------------------- light curve
def _interpolate_nans(time: np.ndarray, flux: np.ndarray, what: str) -> np.ndarray:
    good = np.isfinite(flux)
    if good.sum() < 2:
        raise ValueError(f"{what}: fewer than 2 finite flux values")
    if good.all():
        return flux
    return np.interp(time, time[good], flux[good])


def clean_light_curve(time, flux, cfg: PreprocessConfig, what: str = "light curve") -> np.ndarray:
    """(time [d], flux) -> x = flux/median - 1 on a uniform ``cfg.lc_cadence_days`` grid (float32)."""
    time = np.asarray(time, dtype=np.float64).ravel()
    flux = np.asarray(flux, dtype=np.float64).ravel()
    if time.shape != flux.shape:
        raise ValueError(f"{what}: time has {time.size} values but flux has {flux.size}")
    ok_t = np.isfinite(time)
    time, flux = time[ok_t], flux[ok_t]
    if time.size < 2:
        raise ValueError(f"{what}: fewer than 2 cadences with a finite time")
    order = np.argsort(time, kind="stable")
    time, flux = time[order], flux[order]
    finite = np.isfinite(flux)
    if finite.sum() < 2:
        raise ValueError(f"{what}: fewer than 2 finite flux values")
    # Segments (quarters) from gaps in the *observed* cadences; each is divided by its own median.
    tf = time[finite]
    breaks = tf[1:][np.diff(tf) > cfg.lc_gap_days]
    seg = np.searchsorted(breaks, time, side="right")
    rel = np.full_like(flux, np.nan)
    for s in np.unique(seg):
        m = (seg == s) & finite
        if m.sum() == 0:
            continue
        med = np.median(flux[m])
        if not np.isfinite(med) or med == 0:
            raise ValueError(f"{what}: a segment has median flux {med}; expected a positive relative flux")
        rel[seg == s] = flux[seg == s] / med
    rel = _interpolate_nans(time, rel, what)
    dt = float(np.median(np.diff(time)))
    if dt <= 0:
        raise ValueError(f"{what}: time values are not increasing")
    w = max(1, int(round(cfg.lc_smooth_days / dt)))
    if w > 1:
        kernel = np.ones(w) / w
        pad = np.pad(rel, (w // 2, w - 1 - w // 2), mode="edge")
        rel = np.convolve(pad, kernel, mode="valid")
    # Bin onto the model grid; bins without any cadence (long gaps) are interpolated.
    idx = np.floor((time - time[0]) / cfg.lc_cadence_days).astype(np.int64)
    n = int(idx[-1]) + 1
    cnt = np.bincount(idx, minlength=n)
    tot = np.bincount(idx, weights=rel, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        binned = tot / cnt
    if (cnt == 0).any():
        grid = np.arange(n, dtype=np.float64)
        binned = np.interp(grid, grid[cnt > 0], binned[cnt > 0])
    return (binned - 1.0).astype(np.float32)


def crop_start(n: int, length: int, rng: np.random.Generator | None) -> int:
    """Start of a crop of ``length`` points from ``n``: centred without an rng, uniform random with one."""
    if n <= length:
        return 0
    return int(rng.integers(0, n - length + 1)) if rng is not None else (n - length) // 2


def _zscore(a: np.ndarray, axis=-1) -> np.ndarray:
    mu = a.mean(axis=axis, keepdims=True)
    sd = a.std(axis=axis, keepdims=True)
    return (a - mu) / np.where(sd > 1e-12, sd, 1.0)


def autocorrelation(x: np.ndarray) -> np.ndarray:
    """ACF of each row of ``x`` (..., T) for lags 0..T-1, via a zero-padded FFT; ACF(0) = 1."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=-1, keepdims=True)
    t = x.shape[-1]
    nfft = 1 << int(np.ceil(np.log2(2 * t)))
    f = np.fft.rfft(x, n=nfft, axis=-1)
    acf = np.fft.irfft(f * np.conj(f), n=nfft, axis=-1)[..., :t]
    return acf / np.where(acf[..., :1] > 1e-20, acf[..., :1], 1.0)


def light_curve_channels(x: np.ndarray, abs_mag, cfg: PreprocessConfig, rng: np.random.Generator | None = None
                         ) -> np.ndarray:
    """Cleaned light curves ``x`` (T,) or (B, T) -> channels (4, L) or (B, 4, L) float32, L = lc_length.

    ``abs_mag``: the star's absolute G magnitude (scalar or (B,)); NaN or None means unknown (log L = 0).
    With an ``rng`` every row gets its own random crop; without, the centre crop.
    """
    x = np.asarray(x, dtype=np.float32)
    single = x.ndim == 1
    x2 = x[None] if single else x
    b, n = x2.shape
    length = cfg.lc_length
    crop = np.zeros((b, length), dtype=np.float64)
    valid = min(n, length)
    for i in range(b):
        s = crop_start(n, length, rng)
        crop[i, :valid] = x2[i, s:s + valid]
    mag = np.full(b, np.nan) if abs_mag is None else np.broadcast_to(np.asarray(abs_mag, np.float64), (b,))
    if cfg.lc_abs_mag_channel:
        log_lum = np.where(np.isfinite(mag), -0.4 * (mag - cfg.abs_mag_ref), 0.0)
    else:
        log_lum = np.zeros(b)
    out = np.zeros((b, 4, length), dtype=np.float32)
    out[:, 0, :valid] = cfg.lc_flux_scale * crop[:, :valid] + log_lum[:, None]
    z = _zscore(crop[:, :valid])
    out[:, 1, :valid] = z
    out[:, 2, :valid] = _zscore(autocorrelation(z))
    spec = np.log1p(np.abs(np.fft.rfft(z, axis=-1)) / np.sqrt(valid))
    grid = np.linspace(0.0, spec.shape[-1] - 1, length)
    src = np.arange(spec.shape[-1])
    for i in range(b):
        out[i, 3] = np.interp(grid, src, spec[i])
    return out[0] if single else out


def preprocess_light_curve(time, flux, abs_mag, cfg: PreprocessConfig, rng: np.random.Generator | None = None
                           ) -> np.ndarray:
    """(time [d], relative flux, absolute G mag or None) -> (4, lc_length) float32 model input.

    ``rng=None``: deterministic centre crop (features, precompute, uploads); an rng gives a random crop (the
    two SSL views in pre-training).
    """
    return light_curve_channels(clean_light_curve(time, flux, cfg), abs_mag, cfg, rng)


# -------------------------------------------------------------------------------------------------- spectrum
def spectrum_grids(cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame log10-wavelength grids of the blue and red arms (Angstrom)."""
    def grid(lo, hi):
        n = int(round(np.log10(hi / lo) / cfg.spec_log_step))
        return 10 ** (np.log10(lo) + cfg.spec_log_step * np.arange(n))
    blue, red = grid(*cfg.spec_blue), grid(*cfg.spec_red)
    if blue.size + red.size > cfg.spec_length:
        raise ValueError(f"spectrum arms have {blue.size + red.size} pixels, more than spec_length "
                         f"{cfg.spec_length}")
    return blue, red


def _median3(a: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return a
    if width == 3:   # median of three without sorting: max(min(a, b), min(max(a, b), c))
        p = np.pad(a, 1, mode="edge")
        lo, hi = np.minimum(p[:-2], p[1:-1]), np.maximum(p[:-2], p[1:-1])
        return np.maximum(lo, np.minimum(hi, p[2:]))
    h = width // 2
    p = np.pad(a, (h, h), mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(p, width), axis=-1)


def _normalise_arm(wave_rest, flux, good, grid, cfg: PreprocessConfig) -> np.ndarray:
    out = np.zeros(grid.size, dtype=np.float64)
    if good.sum() < cfg.spec_continuum_degree + 2:
        return out
    w, f = wave_rest[good], flux[good]
    inside = (grid >= w[0]) & (grid <= w[-1])
    # Pixels whose nearest observed neighbour is far away (a masked stretch) are left out too.
    step = np.median(np.diff(w)) if w.size > 1 else 0.0
    j = np.clip(np.searchsorted(w, grid), 1, w.size - 1)
    near = np.minimum(np.abs(grid - w[j - 1]), np.abs(w[j] - grid)) <= 2.0 * step
    use = inside & near
    if use.sum() < cfg.spec_continuum_degree + 2:
        return out
    r = np.interp(grid, w, f)
    r = _median3(r, cfg.spec_median_width)
    # Least squares through the 6x6 normal equations on x in [-1, 1] (well conditioned at degree 5): ~100x
    # faster than an SVD-based lstsq per spectrum, which matters for 10^4-10^5 spectra.
    x = np.linspace(-1.0, 1.0, grid.size)
    vander = x[:, None] ** np.arange(cfg.spec_continuum_degree + 1)
    vu = vander[use]
    coef = np.linalg.solve(vu.T @ vu, vu.T @ r[use])
    cont = vander @ coef
    ok = use & (np.abs(cont) > 1e-12)
    if ok.sum() < 2:
        return out
    norm = r[ok] / cont[ok]
    mu, sd = norm.mean(), norm.std()
    k = cfg.spec_clip_sigma
    norm = np.clip(norm, mu - k * sd, mu + k * sd)
    out[ok] = (norm - norm.mean()) / (norm.std() if norm.std() > 1e-12 else 1.0)
    return out


def preprocess_spectrum(wavelength, flux, ivar, rv_kms, cfg: PreprocessConfig) -> np.ndarray:
    """(observed vacuum wavelength [A], flux, ivar, radial velocity [km/s]) -> (1, spec_length) float32."""
    wavelength = np.asarray(wavelength, dtype=np.float64).ravel()
    flux = np.asarray(flux, dtype=np.float64).ravel()
    ivar = np.ones_like(flux) if ivar is None else np.asarray(ivar, dtype=np.float64).ravel()
    if not (wavelength.shape == flux.shape == ivar.shape):
        raise ValueError(f"spectrum: wavelength ({wavelength.size}), flux ({flux.size}) and ivar ({ivar.size}) "
                         f"differ in length")
    rv = float(rv_kms) if rv_kms is not None and np.isfinite(rv_kms) else 0.0
    order = np.argsort(wavelength, kind="stable")
    wavelength, flux, ivar = wavelength[order], flux[order], ivar[order]
    good = np.isfinite(wavelength) & np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0) & (wavelength > 0)
    if good.sum() < 2 * (cfg.spec_continuum_degree + 2):
        raise ValueError(f"spectrum: only {int(good.sum())} usable pixels (finite flux, ivar > 0)")
    wave_rest = wavelength / (1.0 + rv / C_KMS)
    blue, red = spectrum_grids(cfg)
    out = np.zeros((1, cfg.spec_length), dtype=np.float32)
    out[0, :blue.size] = _normalise_arm(wave_rest, flux, good, blue, cfg)
    out[0, blue.size:blue.size + red.size] = _normalise_arm(wave_rest, flux, good, red, cfg)
    return out
