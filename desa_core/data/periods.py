"""Measured rotation periods: what a survey pipeline gets from a light curve, for every star in ``desa simulate``
and ``desa ingest`` (a store's light curves all share one uniform cadence grid with NaN gaps).

    res = measure_periods(time, flux)      # flux (B, T): dict of (B,) arrays, keys PERIOD_COLUMNS
    one = measure_periods(time, flux[None])

Two estimators, both on the light curve divided by its median (minus 1), gaps filled with 0:

* **ACF** (McQuillan, Aigrain & Mazeh 2013; McQuillan, Mazeh & Aigrain 2014): the autocorrelation function,
  corrected for gaps (each lag divided by the number of valid pairs, so a gap does not pull the ACF down),
  smoothed by a Gaussian (sigma ``ACF_SMOOTH_CADENCES`` cadences). Its local maxima after lag 0 are found; of
  the first two, the second gives the period when it is higher by more than ``SECOND_PEAK_MARGIN`` (a spot
  pattern on two faces of the star makes the first peak P/2 and the second, higher one P), else the first; refined by a parabola through the peak. Quality: the **local peak
  height** (LPH), the peak's height above the mean of the troughs on either side; McQuillan et al. 2014
  counted a detection from LPH ~0.1 upwards (``ACF_LPH_DETECTED``). Periods up to a third of the time span
  (three cycles) are searched.
* **Lomb-Scargle** (standard normalisation, power in [0, 1]). On a uniform cadence grid the Lomb-Scargle
  periodogram equals the classical one up to gap effects, so it is evaluated by FFT for all stars at once
  (zero-padded to ``LS_OVERSAMPLE`` x the span): power = 2 |sum x e^{-i w t}|^2 / (N sum x^2) for the N valid
  cadences; ``tests/test_periods.py`` checks it against astropy's ``LombScargle`` on gappy light curves.
  Searched from ``MIN_PERIOD_DAYS`` to half the span.

``prot_acf_days`` / ``prot_ls_days`` are NaN where no peak exists (a flat ACF, a star without a light curve).
``rotation_detected``: LPH >= ``ACF_LPH_DETECTED`` and either the periodogram supports the ACF period (its
highest power within 20 % of the ACF period, or of half of it -- a two-spot light curve puts the LS peak at P/2 --
is at least ``LS_SUPPORT_MIN`` of its highest power anywhere: a real light curve's slow trends can top the
periodogram) or the ACF peak is strong (LPH >= ``ACF_LPH_STRONG``). On the default simulated survey (`benchmarks/periods_validation.py`) this keeps 93 % of
the detected periods within 10 % of the truth, where LPH >= 0.1 alone keeps 86 % (granulation and noise make
spurious short ACF peaks that the periodogram does not confirm).
"""
from __future__ import annotations

import numpy as np

PERIOD_COLUMNS = ("prot_acf_days", "prot_acf_lph", "prot_ls_days", "prot_ls_power", "rotation_detected")
MIN_PERIOD_DAYS = 0.2
ACF_SMOOTH_CADENCES = 3.0
ACF_LPH_DETECTED = 0.1
ACF_LPH_STRONG = 0.5
SECOND_PEAK_MARGIN = 0.05   # the second ACF peak wins only when clearly higher (a sinusoid's are equal, noise apart)
METHODS_AGREE = 0.2
LS_SUPPORT_MIN = 0.3
ACF_MAX_SPAN_FRACTION = 1.0 / 3.0
LS_OVERSAMPLE = 5
BATCH = 256          # stars per FFT block (memory: BATCH x 2^k complex)


def _prepare(flux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(flux, dtype=np.float64)
    good = np.isfinite(f)
    med = np.full(len(f), np.nan)
    some = good.any(axis=1)
    if some.any():
        med[some] = np.nanmedian(np.where(good[some], f[some], np.nan), axis=1)
    ok_row = np.isfinite(med) & (med != 0)
    x = np.where(good & ok_row[:, None], f / np.where(ok_row, med, 1.0)[:, None] - 1.0, 0.0)
    # Remove the mean of the valid cadences (the median leaves a small offset for skewed signals).
    n = np.maximum(good.sum(axis=1), 1)
    x = np.where(good, x - (x.sum(axis=1) / n)[:, None], 0.0)
    return x, good & ok_row[:, None]


def _smooth(acf: np.ndarray) -> np.ndarray:
    """Gaussian smoothing along the lags (mirrored at lag 0: the ACF is symmetric); NaN lags stay NaN."""
    from scipy.ndimage import gaussian_filter1d

    sm = gaussian_filter1d(np.nan_to_num(acf, nan=0.0), ACF_SMOOTH_CADENCES, axis=1, mode="mirror")
    return np.where(np.isfinite(acf), sm, np.nan)


def autocorrelation(x: np.ndarray, good: np.ndarray, max_lag: int) -> np.ndarray:
    """Gap-corrected ACF of each row (lags 0..max_lag-1), normalised to 1 at lag 0; NaN where no pairs."""
    t = x.shape[1]
    n = 1 << int(np.ceil(np.log2(2 * t)))
    fx = np.fft.rfft(x, n=n, axis=1)
    fm = np.fft.rfft(good.astype(np.float64), n=n, axis=1)
    num = np.fft.irfft(fx * np.conj(fx), n=n, axis=1)[:, :max_lag]
    pairs = np.fft.irfft(fm * np.conj(fm), n=n, axis=1)[:, :max_lag]
    with np.errstate(all="ignore"):
        acf = np.where(pairs > 0.5, num / np.maximum(pairs, 0.5), np.nan)
        acf = acf / acf[:, :1]
    return acf


def _acf_peak(acf: np.ndarray, dt: float, min_lag: int) -> tuple[float, float]:
    """(period [d], LPH) of one smoothed ACF; NaN, 0 when it has no usable peak."""
    a = acf
    if not np.isfinite(a[:3]).all():
        return np.nan, 0.0
    a = np.where(np.isfinite(a), a, -np.inf)
    d = np.diff(a)
    peaks = np.flatnonzero((d[:-1] > 0) & (d[1:] <= 0)) + 1
    troughs = np.flatnonzero((d[:-1] < 0) & (d[1:] >= 0)) + 1
    peaks = peaks[peaks >= min_lag]
    if len(peaks) == 0 or len(troughs) == 0:
        return np.nan, 0.0
    # Only peaks after the first trough (the ACF must have decorrelated before it can recur).
    peaks = peaks[peaks > troughs[0]]
    if len(peaks) == 0:
        return np.nan, 0.0

    def lph(p):
        left = troughs[troughs < p]
        right = troughs[troughs > p]
        lo = [a[left[-1]]] if len(left) else []
        hi = [a[right[0]]] if len(right) else []
        tr = lo + hi
        return float(a[p] - np.mean(tr)) if tr else 0.0

    best = peaks[0]
    if len(peaks) > 1 and a[peaks[1]] > a[peaks[0]] + SECOND_PEAK_MARGIN:
        best = peaks[1]
    h = lph(best)
    # Parabolic refinement of the peak position.
    y0, y1, y2 = a[best - 1], a[best], a[best + 1] if best + 1 < len(a) else a[best]
    den = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / den if np.isfinite(den) and den < 0 else 0.0
    return float((best + np.clip(shift, -0.5, 0.5)) * dt), h


def measure_periods(time, flux, min_period_days: float = MIN_PERIOD_DAYS, progress: bool = False) -> dict:
    """ACF and Lomb-Scargle rotation periods of light curves on one uniform cadence grid ``time`` (T,)
    with ``flux`` (B, T) (NaN = no data). Returns a dict of (B,) arrays under PERIOD_COLUMNS."""
    time = np.asarray(time, dtype=np.float64)
    flux = np.atleast_2d(np.asarray(flux))
    b, t = flux.shape
    out = {"prot_acf_days": np.full(b, np.nan), "prot_acf_lph": np.zeros(b), "prot_ls_days": np.full(b, np.nan),
           "prot_ls_power": np.zeros(b), "rotation_detected": np.zeros(b, dtype=bool)}
    if b == 0 or t < 8:
        return out
    if time.shape != (t,):
        raise ValueError(f"time has shape {time.shape}, the light curves have {t} cadences")
    dt = float(np.median(np.diff(time)))
    if not dt > 0:
        raise ValueError("the cadence grid must increase")
    span = dt * t
    max_lag = max(int(span * ACF_MAX_SPAN_FRACTION / dt), 4)
    min_lag = max(int(np.ceil(min_period_days / dt)), 2)
    n_fft = 1 << int(np.ceil(np.log2(LS_OVERSAMPLE * t)))
    freq = np.fft.rfftfreq(n_fft, d=dt)
    f_ok = (freq >= 2.0 / span) & (freq <= 1.0 / min_period_days)
    f_idx = np.flatnonzero(f_ok)
    support = np.zeros(b)
    rows = range(0, b, BATCH)
    if progress:
        from tqdm.auto import tqdm
        rows = tqdm(rows, desc="measuring rotation periods", unit="batch")
    for r0 in rows:
        x, good = _prepare(flux[r0:r0 + BATCH])
        n_good = good.sum(axis=1)
        # ACF
        acf = autocorrelation(x, good, max_lag)
        smooth = _smooth(acf)
        for i in range(len(x)):
            if n_good[i] < 8 or not np.any(x[i]):
                continue
            p, h = _acf_peak(smooth[i], dt, min_lag)
            out["prot_acf_days"][r0 + i], out["prot_acf_lph"][r0 + i] = p, h
        # Lomb-Scargle (standard normalisation) by FFT on the uniform grid
        if len(f_idx):
            spec = np.abs(np.fft.rfft(x, n=n_fft, axis=1)[:, f_idx]) ** 2
            with np.errstate(all="ignore"):
                power = 2.0 * spec / (np.maximum(n_good, 1) * np.maximum((x ** 2).sum(axis=1), 1e-300))[:, None]
            k = np.argmax(power, axis=1)
            has = (n_good >= 8) & np.any(x != 0, axis=1)
            out["prot_ls_days"][r0:r0 + len(x)] = np.where(has, 1.0 / freq[f_idx][k], np.nan)
            out["prot_ls_power"][r0:r0 + len(x)] = np.where(has, np.clip(power[np.arange(len(x)), k], 0, 1), 0.0)
            periods = 1.0 / freq[f_idx]
            for i in range(len(x)):
                support[r0 + i] = _ls_support(periods, power[i], out["prot_acf_days"][r0 + i])
    out["rotation_detected"] = detected(out["prot_acf_days"], out["prot_acf_lph"], support)
    return out


def _ls_support(periods: np.ndarray, power: np.ndarray, p_acf: float) -> float:
    """The periodogram's highest power within METHODS_AGREE of the ACF period or of half of it (a two-spot
    light curve's first harmonic), over its highest power anywhere (long-term trends can top a real star's
    periodogram, so agreement is not asked of the global peak)."""
    if not np.isfinite(p_acf) or not np.isfinite(power).any():
        return 0.0
    near = np.zeros(len(periods), bool)
    for p in (p_acf, p_acf / 2):
        near |= np.abs(periods / p - 1) < METHODS_AGREE
    top = float(np.nanmax(power))
    return float(np.nanmax(power[near]) / top) if near.any() and top > 0 else 0.0


def detected(prot_acf, lph, ls_support) -> np.ndarray:
    """The detection rule of the module doc, on arrays of ACF period, LPH and the periodogram's support."""
    prot_acf, lph, ls_support = (np.asarray(a, float) for a in (prot_acf, lph, ls_support))
    return np.isfinite(prot_acf) & (lph >= ACF_LPH_DETECTED) & ((ls_support >= LS_SUPPORT_MIN) |
                                                                (lph >= ACF_LPH_STRONG))


def acf_curve(time, flux, max_lag_days: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lag [d], smoothed ACF) of one light curve, for plotting next to the measured period."""
    time = np.asarray(time, float)
    x, good = _prepare(np.asarray(flux)[None])
    dt = float(np.median(np.diff(time)))
    max_lag = int((max_lag_days or dt * len(time) * ACF_MAX_SPAN_FRACTION) / dt)
    sm = _smooth(autocorrelation(x, good, max(max_lag, 4)))[0]
    return np.arange(len(sm)) * dt, sm


def periodogram(time, flux, min_period_days: float = MIN_PERIOD_DAYS) -> tuple[np.ndarray, np.ndarray]:
    """(period [d], Lomb-Scargle power) of one light curve on a uniform grid, for plotting."""
    time = np.asarray(time, float)
    x, good = _prepare(np.asarray(flux)[None])
    dt = float(np.median(np.diff(time)))
    t = len(time)
    n_fft = 1 << int(np.ceil(np.log2(LS_OVERSAMPLE * t)))
    freq = np.fft.rfftfreq(n_fft, d=dt)
    ok = (freq >= 2.0 / (dt * t)) & (freq <= 1.0 / min_period_days)
    spec = np.abs(np.fft.rfft(x[0], n=n_fft)[ok]) ** 2
    power = 2.0 * spec / (max(good.sum(), 1) * max(float((x ** 2).sum()), 1e-300))
    return 1.0 / freq[ok], np.clip(power, 0, 1)
