"""Preprocessing: the one place a light curve becomes model channels and a spectrum becomes 4096 pixels.

Used by training (through a per-run cache), by precompute and by the dashboard's live embedding of uploads,
so a star is seen identically everywhere (method section 2).

Light curve, in two steps so training can cache the slow part and still draw fresh random crops:

1. :func:`clean_light_curve` (:func:`clean_light_curves`): sort by time, interpolate NaN gaps, split at
   gaps > ``lc_gap_days`` into segments (Kepler quarters) and divide each by its median (stitching away
   per-quarter offsets), smooth with a moving average of ``lc_smooth_days``, bin onto a uniform
   ``lc_cadence_days`` grid. Returns ``x = flux/median - 1`` on that grid.
2. :func:`light_curve_channels`: crop ``lc_length`` points (centre crop, or random with an ``rng``) and build
   four channels: (0) ``lc_flux_scale * x + log10 L_G``, the median-normalised flux placed at the star's
   G-band luminosity from its absolute magnitude (the paper normalises by absolute magnitude; switched off by
   ``lc_abs_mag_channel=False`` for the ablation); (1) z-scored flux; (2) autocorrelation function
   (z-scored, ACF(0) = 1 before scaling); (3) log(1 + |rFFT|) interpolated to the crop length.

Spectrum (:func:`preprocess_spectrum`, :func:`preprocess_spectra`): shift to the rest frame by the radial
velocity, resample the blue and red arms on log10-wavelength grids, median filter, divide by a degree-5
polynomial continuum per arm, clip at 3 sigma and z-score per arm, concatenate, zero-pad. Masked pixels
(ivar = 0) and pixels outside the observed range are 0 (the mean) in the output.

Batches: the stars of a survey store share one time grid and one wavelength grid, so
:func:`clean_light_curves`, :func:`preprocess_light_curves` and :func:`preprocess_spectra` work on (B, T) and
(B, P) blocks: what depends only on the shared grid is computed once, then one compiled (numba) pass per star
cleans a light curve or normalises a spectrum, releasing the GIL (light curves 0.08 ms, spectra 0.17 ms per
star; `desa precompute` of new stars and training's preprocessing cache use them). They return ``(inputs, problems)``: ``problems[i]`` says why star i
is unusable (its inputs are 0), so one bad star does not fail the batch. The single-star functions run the
same code on a batch of one, so a star gets the same numbers alone or in any batch.
"""
from __future__ import annotations

import numba
import numpy as np

from desa_core.models.config import PreprocessConfig

C_KMS = 299_792.458
RV_COLUMN = "rv_kms_obs"   # catalogue column with the radial velocity that shifts a spectrum to its rest frame
# Catalogue column of the absolute magnitude the light-curve encoder's luminosity channel reads: the survey-like
# M_G (Gaia G, noisy parallax, extinction), never the simulator's true abs_g. A catalogue without it (an upload
# without a match) leaves the channel empty.
LUMINOSITY_COLUMN = "abs_g0"
LC_CHANNELS = ("flux_luminosity", "flux_zscored", "acf", "log_fft")


# ----------------------------------------------------------------------------------------- shared helpers
# The batch functions below work on blocks of stars that share one time or wavelength grid (a survey store);
# the single-star functions run the same code on a block of one, so there is one definition of the method.
def _gather(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a[..., idx]`` for a shared index (Q,). An index outside 0..N-1 gives some element of ``a`` (no error):
    callers mask those places."""
    return np.take(a, idx, axis=-1, mode="clip")


def _interp_between(xq, x_lo, x_hi, y_lo, y_hi, has_lo, has_hi):
    """np.interp's arithmetic at ``xq`` from the nearest good points below (x_lo < xq) and at or above
    (x_hi >= xq) it; ``has_lo``/``has_hi`` False where there is none (then the other point's value)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (y_hi - y_lo) / (x_hi - x_lo) * (xq - x_lo) + y_lo
    out = np.where(x_hi == xq, y_hi, out)
    if not np.all(has_hi):
        out = np.where(has_hi, out, y_lo)
    return out if np.all(has_lo) else np.where(has_lo, out, y_hi)


def _interp(xq: np.ndarray, xp: np.ndarray, fp: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``np.interp(xq, xp[good], fp[good])`` for every row of ``fp`` (B, N) at once, with np.interp's arithmetic.

    ``lo``/``hi`` (Q,): for each query the last good point with x < xq and the first with x >= xq (-1 / N where
    none), shared by the rows; good points need distinct x. ``xp`` (N,) shared.
    """
    n = fp.shape[-1]
    return _interp_between(xq, _gather(xp, lo), _gather(xp, hi), _gather(fp, lo), _gather(fp, hi), lo >= 0, hi < n)


# ----------------------------------------------------------------------------------------------- light curve
def clean_light_curves(time, flux, cfg: PreprocessConfig, what: str = "light curves"
                       ) -> tuple[np.ndarray, list[str | None]]:
    """Light curves sharing one time grid: (time (T,) [d], flux (B, T)) -> (x (B, n) float32, problems).

    ``x = flux/median - 1`` on a uniform ``cfg.lc_cadence_days`` grid, the same length for every row (it
    depends only on the time grid). ``problems[i]`` is None for a usable row, else why row i is unusable
    (fewer than 2 finite fluxes, a segment median of 0 or NaN); such a row of ``x`` is 0. A problem with the
    shared time grid raises ValueError naming ``what``.
    """
    time = np.asarray(time, dtype=np.float64).ravel()
    flux = np.asarray(flux, dtype=np.float64)
    flux = flux.reshape(1, -1) if flux.ndim == 1 else flux
    if flux.ndim != 2 or flux.shape[1] != time.size:
        raise ValueError(f"{what}: time has {time.size} values but flux has {flux.shape[-1]}")
    ok_t = np.isfinite(time)
    if not ok_t.all():
        time, flux = time[ok_t], flux[:, ok_t]
    if time.size < 2:
        raise ValueError(f"{what}: fewer than 2 cadences with a finite time")
    if np.any(np.diff(time) < 0):
        order = np.argsort(time, kind="stable")
        time, flux = time[order], flux[:, order]
    dt = float(np.median(np.diff(time)))
    if dt <= 0:
        raise ValueError(f"{what}: time values are not increasing")
    b, t = flux.shape
    # What depends only on the shared time grid: the grid's own gaps, cadences with equal times (they belong to
    # the last one's segment), the smoothing width and each cadence's bin on the model grid.
    grid_gap = np.zeros(t, dtype=bool)
    grid_gap[1:] = np.diff(time) > cfg.lc_gap_days
    same = (np.searchsorted(time, time, side="right") - 1 if np.any(np.diff(time) == 0)
            else np.arange(t)).astype(np.int64)
    w = max(1, int(round(cfg.lc_smooth_days / dt)))
    idx = np.floor((time - time[0]) / cfg.lc_cadence_days).astype(np.int64)
    n = int(idx[-1]) + 1
    x = np.zeros((b, n), dtype=np.float32)
    status, median = np.zeros(b, dtype=np.int64), np.zeros(b)
    _clean_kernel(time, flux, grid_gap, float(cfg.lc_gap_days), same, w, idx, n, x, status, median)
    problems: list[str | None] = [None if k == 0 else "fewer than 2 finite flux values" if k == 1 else
                                  f"a segment has median flux {m}; expected a positive relative flux"
                                  for k, m in zip(status, median)]
    return x, problems


@numba.njit(nogil=True, error_model="numpy")
def _clean_kernel(time, flux, grid_gap, gap_days, same, w, idx, n, out, status, median):
    """:func:`clean_light_curves` star by star (one compiled pass each, releasing the GIL): segments, their
    medians, NaN runs bridged, moving average, binning. ``status[i]``: 0 usable, 1 fewer than 2 finite fluxes,
    2 a segment's median (``median[i]``) is not a positive number; the row of ``out`` is then left 0."""
    b, t = flux.shape
    finite = np.empty(t, np.bool_)
    seg = np.empty(t, np.int64)
    rel = np.empty(t)
    vals = np.empty(t)
    pad = np.empty(t + w - 1)
    sm = np.empty(t)
    binned = np.zeros(n)
    cnt = np.zeros(n, np.int64)
    for i in range(b):
        n_fin = 0
        for c in range(t):
            finite[c] = np.isfinite(flux[i, c])
            n_fin += finite[c]
        if n_fin < 2:
            status[i] = 1
            continue
        # Segments (quarters) from gaps in the star's *observed* cadences: a finite cadence more than gap_days
        # after the previous finite one (across the grid's own gap, or across a run of NaN) starts a new one.
        s, last = 0, -1
        for c in range(t):
            if finite[c]:
                if c > 0 and ((grid_gap[c] and finite[c - 1])
                              or (last >= 0 and last < c - 1 and time[c] - time[last] > gap_days)):
                    s += 1
                last = c
            seg[c] = s
        for c in range(t):
            seg[c] = seg[same[c]]
        # Each segment divided by the median of its finite fluxes
        n_seg = seg[t - 1] + 1
        for k in range(n_seg):
            m = 0
            for c in range(t):
                if seg[c] == k and finite[c]:
                    vals[m] = flux[i, c]
                    m += 1
            med = np.median(vals[:m]) if m > 0 else np.nan
            if not np.isfinite(med) or med == 0:
                status[i], median[i] = 2, med
                break
            for c in range(t):
                if seg[c] == k:
                    rel[c] = flux[i, c] / med
        if status[i]:
            continue
        # NaN cadences: linear interpolation between the nearest finite neighbours (np.interp's arithmetic;
        # before the first / after the last finite cadence, its value)
        c = 0
        while c < t:
            if finite[c]:
                c += 1
                continue
            lo, hi = c - 1, c
            while hi < t and not finite[hi]:
                hi += 1
            has_lo, has_hi = lo >= 0, hi < t
            x_lo, y_lo = (time[lo], rel[lo]) if has_lo else (time[0], rel[0])
            x_hi, y_hi = (time[hi], rel[hi]) if has_hi else (time[t - 1], rel[t - 1])
            for q in range(c, hi):
                v = (y_hi - y_lo) / (x_hi - x_lo) * (time[q] - x_lo) + y_lo
                if x_hi == time[q]:
                    v = y_hi
                if not has_hi:
                    v = y_lo
                if not has_lo:
                    v = y_hi
                rel[q] = v
            c = hi
        # moving average of w cadences (edges repeated), summed in the order of the array version
        if w > 1:
            h = w // 2
            for c in range(t + w - 1):
                pad[c] = rel[min(max(c - h, 0), t - 1)]
            inv = 1.0 / w
            for c in range(t):
                acc = pad[c] * inv
                for k in range(1, w):
                    acc += pad[c + k] * inv
                sm[c] = acc
        else:
            sm[:] = rel
        # bin onto the model grid; bins without any cadence (long gaps) are interpolated
        binned[:] = 0.0
        cnt[:] = 0
        for c in range(t):
            binned[idx[c]] += sm[c]
            cnt[idx[c]] += 1
        prev = -1
        for j in range(n):
            if cnt[j] > 0:
                binned[j] /= cnt[j]
                if prev < j - 1:   # the empty bins since the last filled one
                    for q in range(prev + 1, j):
                        if prev < 0:
                            binned[q] = binned[j]
                        else:
                            binned[q] = (binned[j] - binned[prev]) / (j - prev) * (q - prev) + binned[prev]
                prev = j
        for q in range(prev + 1, n):
            binned[q] = binned[prev]
        for j in range(n):
            out[i, j] = binned[j] - 1.0


def clean_light_curve(time, flux, cfg: PreprocessConfig, what: str = "light curve") -> np.ndarray:
    """(time [d], flux) -> x = flux/median - 1 on a uniform ``cfg.lc_cadence_days`` grid (float32).

    One star through :func:`clean_light_curves`; an unusable light curve raises ValueError naming ``what``.
    """
    time = np.asarray(time, dtype=np.float64).ravel()
    flux = np.asarray(flux, dtype=np.float64).ravel()
    if time.shape != flux.shape:
        raise ValueError(f"{what}: time has {time.size} values but flux has {flux.size}")
    x, problems = clean_light_curves(time, flux[None], cfg, what)
    if problems[0]:
        raise ValueError(f"{what}: {problems[0]}")
    return x[0]


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
    if rng is None:
        s = crop_start(n, length, None)
        crop[:, :valid] = x2[:, s:s + valid]
    else:
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
    src = np.arange(spec.shape[-1], dtype=np.float64)
    j = np.searchsorted(src, grid, side="left")
    out[:, 3] = _interp(grid, src, spec, j - 1, j)
    return out[0] if single else out


def preprocess_light_curves(time, flux, abs_mag, cfg: PreprocessConfig, rng: np.random.Generator | None = None
                            ) -> tuple[np.ndarray, list[str | None]]:
    """Light curves on one time grid (a survey store): (time (T,), flux (B, T), abs G mag (B,) or None)
    -> ((B, 4, lc_length) float32, problems); ``problems[i]`` says why row i is unusable (its rows are 0)."""
    x, problems = clean_light_curves(time, flux, cfg)
    out = light_curve_channels(x, abs_mag, cfg, rng)
    out[[i for i, p in enumerate(problems) if p]] = 0.0
    return out, problems


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


@numba.njit(nogil=True)
def _nan_min(a, b):
    return np.nan if (a != a or b != b) else (a if a < b else b)   # np.minimum: NaN wins


@numba.njit(nogil=True)
def _nan_max(a, b):
    return np.nan if (a != a or b != b) else (a if a > b else b)


@numba.njit(nogil=True)
def _running_median(r, width, out):
    """Running median of ``width`` points (edges repeated) of ``r`` into ``out``."""
    g = r.shape[0]
    if width <= 1:
        out[:] = r
        return
    if width == 3:   # median of three without sorting: max(min(a, b), min(max(a, b), c))
        for q in range(g):
            a, b, c = r[max(q - 1, 0)], r[q], r[min(q + 1, g - 1)]
            out[q] = _nan_max(_nan_min(a, b), _nan_min(_nan_max(a, b), c))
        return
    h = width // 2
    win = np.empty(width)
    for q in range(g):
        for k in range(width):
            win[k] = r[min(max(q - h + k, 0), g - 1)]
        out[q] = np.median(win)


@numba.njit(nogil=True, error_model="numpy")
def _normalise_arm(wr, flux, good, n_good, after, step, grid, x, deg, width, clip_k, out):
    """One star's arm (the steps of :func:`preprocess_spectra`) into ``out`` (left 0 when unusable).

    ``wr``: rest-frame wavelengths (P,), ascending (NaN last); ``good``: usable pixels, ``n_good`` their count;
    ``after[j]``: the first good index >= j (P where none); ``step``: median spacing of good pixels; ``grid``:
    the arm's rest-frame wavelengths (G,); ``x``: ``np.linspace(-1, 1, G)``."""
    p, g = wr.shape[0], grid.shape[0]
    first = after[0] if after[0] < p else p - 1
    last = -1
    for j in range(p - 1, -1, -1):
        if good[j]:
            last = j
            break
    lower, upper = wr[first], wr[max(last, 0)]
    reach = 2.0 * step
    r = np.empty(g)
    use = np.zeros(g, np.bool_)
    n_use = 0
    ptr, lo = 0, -1                 # lo: the last good pixel before ptr (searchsorted, side="left")
    for q in range(g):
        xq = grid[q]
        while ptr < p and wr[ptr] < xq:
            if good[ptr]:
                lo = ptr
            ptr += 1
        hi = after[ptr]
        has_lo, has_hi = lo >= 0, hi < p
        x_lo, y_lo = (wr[lo], flux[lo]) if has_lo else (wr[0], flux[0])
        x_hi, y_hi = (wr[hi], flux[hi]) if has_hi else (wr[p - 1], flux[p - 1])
        # np.interp's arithmetic from the nearest good pixels below and at or above
        v = (y_hi - y_lo) / (x_hi - x_lo) * (xq - x_lo) + y_lo
        if x_hi == xq:
            v = y_hi
        if not has_hi:
            v = y_lo
        if not has_lo:
            v = y_hi
        r[q] = v
        # inside the observed range, and not across a masked stretch of more than two pixels
        if xq >= lower and xq <= upper and ((has_lo and xq - x_lo <= reach) or (has_hi and x_hi - xq <= reach)):
            use[q] = True
            n_use += 1
    if n_good < deg + 2 or n_use < deg + 2:
        return
    rm = np.empty(g)
    _running_median(r, width, rm)
    # Least squares through the (deg+1)^2 normal equations, x scaled so that the used pixels span [-1, 1]
    # (well conditioned at degree 5 even when a mask leaves only a corner of the arm).
    q0, q1 = 0, g - 1
    while not use[q0]:
        q0 += 1
    while not use[q1]:
        q1 -= 1
    x_first, x_last = x[q0], x[q1]
    centre, half = (x_first + x_last) / 2, (x_last - x_first) / 2
    # lhs[a, b] = sum of x^(a+b): 2 deg + 1 power sums per pixel instead of (deg + 1)^2 products
    m = deg + 1
    sums = np.zeros(2 * m - 1)
    rhs = np.zeros(m)
    for q in range(g):
        if not use[q]:
            continue
        xs = (x[q] - centre) / half
        pk = 1.0
        for k in range(2 * m - 1):
            sums[k] += pk
            if k < m:
                rhs[k] += pk * rm[q]
            pk *= xs
    lhs = np.empty((m, m))
    for a in range(m):
        for b in range(m):
            lhs[a, b] = sums[a + b]
    try:
        coef = np.linalg.solve(lhs, rhs)
    except Exception:   # a singular system: this arm stays 0
        return
    norm = np.zeros(g)
    ok = np.zeros(g, np.bool_)
    n_ok = 0
    for q in range(g):
        if not use[q]:
            continue
        xs = (x[q] - centre) / half
        c, pk = 0.0, 1.0
        for k in range(m):
            c += coef[k] * pk
            pk *= xs
        if abs(c) > 1e-12:
            ok[q] = True
            n_ok += 1
            norm[q] = rm[q] / c
    if n_ok < 2:
        return
    # clip at clip_k sigma and z-score, over the pixels with a continuum (mean and population sd)
    mu, sd = _masked_mean_std(norm, ok, n_ok)
    lo_c, hi_c = mu - clip_k * sd, mu + clip_k * sd
    for q in range(g):
        norm[q] = min(max(norm[q], lo_c), hi_c)
    mu, sd = _masked_mean_std(norm, ok, n_ok)
    scale = sd if sd > 1e-12 else 1.0
    for q in range(g):
        if ok[q]:
            out[q] = (norm[q] - mu) / scale


@numba.njit(nogil=True)
def _masked_mean_std(a, m, n):
    mu = 0.0
    for q in range(a.shape[0]):
        if m[q]:
            mu += a[q]
    mu /= max(n, 1)
    ss = 0.0
    for q in range(a.shape[0]):
        if m[q]:
            ss += (a[q] - mu) ** 2
    return mu, np.sqrt(ss / max(n, 1))


@numba.njit(nogil=True, error_model="numpy")
def _spectra_kernel(wavelength, flux, good, rv, rows, c_kms, blue, x_blue, red, x_red, deg, width, clip_k, out):
    """Every star of ``rows``: rest frame, median pixel spacing, then each arm (:func:`_normalise_arm`) into
    ``out[i, 0]`` (blue from 0, red after it)."""
    p = wavelength.shape[0]
    wr = np.empty(p)
    after = np.empty(p + 1, np.int64)
    spacing = np.empty(p)
    for i in rows:
        shift = 1.0 + rv[i] / c_kms
        for j in range(p):
            wr[j] = wavelength[j] / shift
        nxt = p
        after[p] = p
        for j in range(p - 1, -1, -1):
            if good[i, j]:
                nxt = j
            after[j] = nxt
        # the median spacing of the usable pixels: interpolating across more than two of them is a gap
        n_sp, prev, n_good = 0, -1, 0
        for j in range(p):
            if good[i, j]:
                n_good += 1
                if prev >= 0:
                    spacing[n_sp] = wr[j] - wr[prev]
                    n_sp += 1
                prev = j
        step = np.median(spacing[:n_sp]) if n_sp > 0 else np.nan
        arm = np.zeros(blue.shape[0])
        _normalise_arm(wr, flux[i], good[i], n_good, after, step, blue, x_blue, deg, width, clip_k, arm)
        for q in range(blue.shape[0]):
            out[i, 0, q] = arm[q]
        arm = np.zeros(red.shape[0])
        _normalise_arm(wr, flux[i], good[i], n_good, after, step, red, x_red, deg, width, clip_k, arm)
        for q in range(red.shape[0]):
            out[i, 0, blue.shape[0] + q] = arm[q]


def preprocess_spectra(wavelength, flux, ivar, rv_kms, cfg: PreprocessConfig
                       ) -> tuple[np.ndarray, list[str | None]]:
    """Spectra sharing one wavelength grid (a survey store): (observed vacuum wavelength (P,) [A], flux (B, P),
    ivar (B, P) or None, radial velocity (B,) [km/s] or None) -> ((B, 1, spec_length) float32, problems).

    ``problems[i]`` is None for a usable spectrum, else why it is unusable (too few pixels with finite flux
    and ivar > 0); its row is 0. Shapes that do not match raise ValueError.
    """
    wavelength = np.asarray(wavelength, dtype=np.float64).ravel()
    flux = np.asarray(flux, dtype=np.float64)
    flux = flux.reshape(1, -1) if flux.ndim == 1 else flux
    ivar = np.ones_like(flux) if ivar is None else np.asarray(ivar, dtype=np.float64).reshape(flux.shape[0], -1)
    if not (flux.ndim == 2 and wavelength.size == flux.shape[1] == ivar.shape[1]):
        raise ValueError(f"spectrum: wavelength ({wavelength.size}), flux ({flux.shape[-1]}) and ivar "
                         f"({ivar.shape[-1]}) differ in length")
    b = flux.shape[0]
    rv = np.zeros(b) if rv_kms is None else np.broadcast_to(np.asarray(rv_kms, dtype=np.float64), (b,))
    rv = np.where(np.isfinite(rv), rv, 0.0)
    if np.any(np.diff(wavelength) < 0) or not np.isfinite(wavelength).all():
        order = np.argsort(wavelength, kind="stable")
        wavelength, flux, ivar = wavelength[order], flux[:, order], ivar[:, order]
    with np.errstate(invalid="ignore"):
        good = np.isfinite(wavelength) & np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0) & (wavelength > 0)
    n_good = good.sum(axis=1)
    problems: list[str | None] = [None if n >= 2 * (cfg.spec_continuum_degree + 2)
                                  else f"only {int(n)} usable pixels (finite flux, ivar > 0)" for n in n_good]
    out = np.zeros((b, 1, cfg.spec_length), dtype=np.float32)
    rows = np.flatnonzero([p is None for p in problems])
    if rows.size == 0:
        return out, problems
    blue, red = spectrum_grids(cfg)
    # one compiled pass per star (numba, releases the GIL): ~6x faster than the same steps as (B, P) array
    # operations, with the same numbers (tests/test_preprocess_batch.py)
    _spectra_kernel(wavelength, flux, good, rv, rows.astype(np.int64), C_KMS, blue, np.linspace(-1.0, 1.0, blue.size),
                    red, np.linspace(-1.0, 1.0, red.size), int(cfg.spec_continuum_degree), int(cfg.spec_median_width),
                    float(cfg.spec_clip_sigma), out)
    return out, problems


def preprocess_spectrum(wavelength, flux, ivar, rv_kms, cfg: PreprocessConfig) -> np.ndarray:
    """(observed vacuum wavelength [A], flux, ivar, radial velocity [km/s]) -> (1, spec_length) float32.

    One star through :func:`preprocess_spectra`; an unusable spectrum raises ValueError."""
    wavelength = np.asarray(wavelength, dtype=np.float64).ravel()
    flux = np.asarray(flux, dtype=np.float64).ravel()
    ivar = np.ones_like(flux) if ivar is None else np.asarray(ivar, dtype=np.float64).ravel()
    if not (wavelength.shape == flux.shape == ivar.shape):
        raise ValueError(f"spectrum: wavelength ({wavelength.size}), flux ({flux.size}) and ivar ({ivar.size}) "
                         f"differ in length")
    rv = float(rv_kms) if rv_kms is not None and np.isfinite(rv_kms) else 0.0
    out, problems = preprocess_spectra(wavelength, flux[None], ivar[None], np.array([rv]), cfg)
    if problems[0]:
        raise ValueError(f"spectrum: {problems[0]}")
    return out[0]


def spectrum_snr(flux, ivar) -> float:
    """Median per-pixel S/N over unmasked pixels (0 when nothing is usable); weights pre-training samples."""
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
    if not good.any():
        return 0.0
    return float(np.median(np.abs(flux[good]) * np.sqrt(ivar[good])))
