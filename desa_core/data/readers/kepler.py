"""Kepler light curves as distributed by MAST (``kplrNNNNNNNNN-YYYYDDDHHMMSS_llc.fits``), and quarter stitching.

One file holds one quarter of one star: a primary HDU whose header names the target (KEPLERID, OBJECT,
RA_OBJ, DEC_OBJ, QUARTER, KEPMAG) and a ``LIGHTCURVE`` binary table with TIME (BJD - 2454833), PDCSAP_FLUX,
PDCSAP_FLUX_ERR and SAP_QUALITY (QUALITY in some products). :func:`read_kepler_light_curve` keeps the good
cadences of one file; :func:`stitch_quarters` joins a star's quarters and :func:`bin_to_grid` puts the result
on the survey store's common cadence grid (:func:`cadence_grid`).

    >>> q = [read_kepler_light_curve(p) for p in sorted(Path("kic10000001").glob("*_llc.fits"))]
    >>> t, f = stitch_quarters(q)              # each quarter divided by its median
    >>> flux_on_grid = bin_to_grid(t, f, cadence_grid(t.min(), t.max()))
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from desa_core.data.readers.common import FitsReadError, header_float, header_value, open_fits, table_column

KEPLER_LONG_CADENCE_MIN = 29.4244
KEPLER_LONG_CADENCE_DAYS = KEPLER_LONG_CADENCE_MIN / 1440.0
# TIME is BJD - 2454833; the mission ran from ~120 (Q0) to ~1591 (Q17). A file outside this window is in
# another time system (full BJD, MJD) and would blow up the common grid, so it is rejected, not shifted.
KEPLER_TIME_RANGE = (0.0, 2000.0)

# Kepler SAP_QUALITY bits (Kepler Archive Manual, table 2-3). "default" drops cadences that are certainly
# bad and is the same set as lightkurve's default; "hardest" drops any flagged cadence.
QUALITY_FLAGS = {
    "AttitudeTweak": 1, "SafeMode": 2, "CoarsePoint": 4, "EarthPoint": 8, "ZeroCrossing": 16, "Desat": 32,
    "Argabrightening": 64, "ApertureCosmic": 128, "ManualExclude": 256, "SensitivityDropout": 1024,
    "ImpulsiveOutlier": 2048, "ArgabrighteningOnCCD": 4096, "CollateralCosmic": 8192,
    "DetectorAnomaly": 16384, "NoFinePoint": 32768, "NoData": 65536, "RollingBandInAperture": 131072,
    "RollingBandInMask": 262144, "PossibleThrusterFiring": 524288, "ThrusterFiring": 1048576,
}
_Q = QUALITY_FLAGS
QUALITY_BITMASKS = {
    "none": 0,
    "default": (_Q["AttitudeTweak"] | _Q["SafeMode"] | _Q["CoarsePoint"] | _Q["EarthPoint"] | _Q["Desat"]
                | _Q["ManualExclude"] | _Q["DetectorAnomaly"] | _Q["NoData"] | _Q["ThrusterFiring"]),
    "hardest": (1 << 31) - 1,
}


def quality_bitmask(mask: str | int) -> int:
    if isinstance(mask, (int, np.integer)):
        return int(mask)
    try:
        return QUALITY_BITMASKS[mask]
    except KeyError:
        raise ValueError(f"unknown quality bitmask {mask!r}; use an int or one of {sorted(QUALITY_BITMASKS)}")


@dataclass
class KeplerLightCurve:
    """The good cadences of one Kepler quarter (one file) of one star."""

    path: Path
    kepler_id: int
    quarter: int | None
    time: np.ndarray        # BJD - 2454833, days, increasing
    flux: np.ndarray        # PDCSAP flux, e-/s
    flux_err: np.ndarray
    ra: float = float("nan")
    dec: float = float("nan")
    kepmag: float = float("nan")
    object_name: str = ""
    n_cadences: int = 0     # in the file, before dropping
    n_flagged: int = 0      # dropped for their quality flag
    n_nan: int = 0          # dropped for a NaN/inf time or flux
    meta: dict = field(default_factory=dict)

    @property
    def star_id(self) -> str:
        return f"KIC {self.kepler_id}"


def is_kepler_light_curve(hdul: fits.HDUList) -> bool:
    """True when the file looks like a MAST Kepler light curve (KEPLERID header or a LIGHTCURVE table)."""
    h0 = hdul[0].header
    if "LIGHTCURVE" in hdul:
        return True
    return "KEPLERID" in h0 and str(h0.get("TELESCOP", "Kepler")).strip().lower() == "kepler"


def read_kepler_light_curve(path: str | os.PathLike, bitmask: str | int = "default",
                            flux_column: str = "PDCSAP_FLUX") -> KeplerLightCurve:
    """Read one quarter; cadences with a flagged quality bit or a non-finite time/flux are dropped.

    Raises :class:`FitsReadError` (naming the file) if the file is not a complete Kepler light curve.
    """
    with open_fits(path) as hdul:
        return light_curve_from_hdul(path, hdul, bitmask=bitmask, flux_column=flux_column)


def light_curve_from_hdul(path, hdul: fits.HDUList, bitmask: str | int = "default",
                          flux_column: str = "PDCSAP_FLUX") -> KeplerLightCurve:
    path = Path(path)
    h0 = hdul[0].header
    if "LIGHTCURVE" not in hdul:
        raise FitsReadError(path, "no LIGHTCURVE extension (not a Kepler light-curve file)")
    hdu = hdul["LIGHTCURVE"]
    if not isinstance(hdu, fits.BinTableHDU) or hdu.data is None:
        raise FitsReadError(path, "the LIGHTCURVE extension is not a binary table with data")
    kic = header_value(h0, "KEPLERID", "KEPID")
    if kic is None:
        kic = header_value(hdu.header, "KEPLERID", "KEPID")
    if kic is None:
        obj = str(header_value(h0, "OBJECT", default=""))
        digits = "".join(ch for ch in obj if ch.isdigit())
        kic = digits or None
    try:
        kic = int(kic)
    except (TypeError, ValueError):
        raise FitsReadError(path, f"no usable KEPLERID in the primary header (got {kic!r})")

    time = table_column(path, hdu, ("TIME",))
    flux = table_column(path, hdu, (flux_column,))
    err = table_column(path, hdu, (flux_column + "_ERR",), required=False)
    if err is None:
        err = np.full_like(flux, np.nan)
    quality = table_column(path, hdu, ("SAP_QUALITY", "QUALITY"), required=False)
    if time.ndim != 1 or flux.shape != time.shape or err.shape != time.shape:
        raise FitsReadError(path, f"TIME {time.shape} and {flux_column} {flux.shape} are not matching 1-d columns")
    if quality is None:
        quality = np.zeros(len(time))
    quality = np.nan_to_num(quality, nan=0).astype(np.int64)

    n = len(time)
    flagged = (quality & quality_bitmask(bitmask)) != 0
    finite = np.isfinite(time) & np.isfinite(flux)
    keep = ~flagged & finite
    if not keep.any():
        why = "all-NaN" if not finite.any() else "no unflagged finite"
        raise FitsReadError(path, f"{why} {flux_column} ({n} cadences, {int(flagged.sum())} flagged)")
    t = time[keep]
    lo, hi = KEPLER_TIME_RANGE
    if t.min() < lo or t.max() > hi:
        raise FitsReadError(path, f"TIME {t.min():.1f}..{t.max():.1f} is outside the Kepler range "
                                  f"(BJD-2454833 in [{lo:.0f}, {hi:.0f}]); is it in another time system?")
    order = np.argsort(t, kind="stable")
    quarter = header_value(h0, "QUARTER")
    return KeplerLightCurve(
        path=path, kepler_id=kic, quarter=int(quarter) if quarter is not None else None,
        time=t[order], flux=flux[keep][order], flux_err=err[keep][order],
        ra=header_float(h0, "RA_OBJ", "RA"), dec=header_float(h0, "DEC_OBJ", "DEC"),
        kepmag=header_float(h0, "KEPMAG"), object_name=str(header_value(h0, "OBJECT", default=f"KIC {kic}")),
        n_cadences=n, n_flagged=int((flagged & finite).sum()), n_nan=int((~finite).sum()),
    )


STITCH_METHODS = ("median", "match_edges")


def stitch_quarters(quarters: list[KeplerLightCurve], method: str = "median", edge_days: float = 1.0,
                    max_gap_days: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Join a star's quarters into one relative light curve (time, flux with median 1).

    Each quarter is first divided by its median: Kepler quarters fall on different CCDs with different
    apertures, so their levels differ by a factor, and the median puts every quarter on the running level
    of the stitched curve (1). This is lightkurve's ``stitch()`` and is what PDCSAP flux (which already
    suppresses trends longer than ~20 days) is meant for; on the test fixture (P_rot = 6 d, 12-day
    quarters) it recovers the signal to 2e-4.

    ``method="match_edges"`` then rescales each quarter so that a straight line fitted to its first
    ``edge_days`` and one fitted to the last ``edge_days`` before it meet in the middle of the gap. That
    keeps variability slower than a quarter (SAP flux, long periods) but turns any curvature across the gap
    into a level error (5e-3 on the same fixture), so it is not the default; gaps longer than
    ``max_gap_days`` are left at the median level.
    """
    if not quarters:
        raise ValueError("stitch_quarters needs at least one quarter")
    if method not in STITCH_METHODS:
        raise ValueError(f"unknown stitch method {method!r}; use one of {STITCH_METHODS}")
    qs = sorted(quarters, key=lambda q: float(q.time[0]))
    times, fluxes = [], []
    for q in qs:
        med = np.median(q.flux)
        if not np.isfinite(med) or med <= 0:
            raise FitsReadError(q.path, f"median flux {med} is not positive; cannot normalise the quarter")
        f = q.flux / med
        if fluxes and method == "match_edges":
            t_prev, f_prev = times[-1], fluxes[-1]
            gap = q.time[0] - t_prev[-1]
            if 0 <= gap <= max_gap_days:
                mid = t_prev[-1] + gap / 2
                tail = t_prev >= t_prev[-1] - edge_days
                head = q.time <= q.time[0] + edge_days
                level_prev = _line_at(t_prev[tail], f_prev[tail], mid)
                level_new = _line_at(q.time[head], f[head], mid)
                if np.isfinite(level_prev) and np.isfinite(level_new) and level_new > 0 and level_prev > 0:
                    f = f * (level_prev / level_new)
        times.append(q.time)
        fluxes.append(f)
    t = np.concatenate(times)
    f = np.concatenate(fluxes)
    order = np.argsort(t, kind="stable")
    t, f = t[order], f[order]
    return t, f / np.median(f)


def _line_at(t: np.ndarray, f: np.ndarray, at: float) -> float:
    """Value at ``at`` of a least-squares line through (t, f); the median when there are too few points."""
    if len(t) < 5:
        return float(np.median(f)) if len(f) else float("nan")
    slope, intercept = np.polyfit(t - at, f, 1)
    return float(intercept)


def cadence_grid(t_min: float, t_max: float, cadence_days: float = KEPLER_LONG_CADENCE_DAYS) -> np.ndarray:
    """Regular time grid from ``t_min`` covering ``t_max`` (inclusive) at ``cadence_days``."""
    if not (np.isfinite(t_min) and np.isfinite(t_max) and t_max >= t_min):
        raise ValueError(f"bad time range {t_min}..{t_max}")
    if cadence_days <= 0:
        raise ValueError(f"cadence must be positive, got {cadence_days}")
    n = int(np.floor((t_max - t_min) / cadence_days + 0.5)) + 1
    return t_min + cadence_days * np.arange(n, dtype=np.float64)


def bin_to_grid(time: np.ndarray, flux: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Mean flux of the cadences nearest to each grid point (bin width = grid step); NaN where none.

    At the native Kepler cadence the barycentric correction makes real time stamps drift by minutes against
    a fixed grid, so a grid point occasionally collects two cadences (averaged) and its neighbour none (NaN).
    """
    grid = np.asarray(grid, dtype=np.float64)
    out = np.full(len(grid), np.nan, dtype=np.float64)
    if len(grid) == 0 or len(time) == 0:
        return out
    step = grid[1] - grid[0] if len(grid) > 1 else 1.0
    idx = np.floor((np.asarray(time) - grid[0]) / step + 0.5).astype(np.int64)
    ok = (idx >= 0) & (idx < len(grid)) & np.isfinite(flux)
    counts = np.bincount(idx[ok], minlength=len(grid))
    sums = np.bincount(idx[ok], weights=np.asarray(flux)[ok], minlength=len(grid))
    has = counts > 0
    out[has] = sums[has] / counts[has]
    return out
