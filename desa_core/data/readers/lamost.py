"""LAMOST low-resolution (LRS) spectra in both FITS layouts, and resampling onto the store's wavelength grid.

Two layouts exist:

* DR1-DR4 ("image"): the primary HDU is a 2-d image whose rows are [flux, inverse variance, wavelength,
  andmask, ormask]; COEFF0/COEFF1 give log10(wavelength) of the first pixel and the step.
* DR5 and later ("table"): an empty primary HDU plus a binary table (EXTNAME COADD in recent releases) with
  one row of array columns FLUX, IVAR, WAVELENGTH, ANDMASK, ORMASK.

Both carry OBSID, RA, DEC, Z (and sometimes HELIO_RV) in the primary header. LAMOST wavelengths are in
vacuum; spectra are kept in the observed frame. :func:`read_lamost_spectrum` returns a
:class:`LamostSpectrum` on its native pixels; :func:`resample_to_grid` puts it on the common log-lambda grid
(:func:`lamost_wavelength_grid`, 3700-9000 A at 1e-4 dex) with the inverse variance propagated.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from desa_core.data.store import (LAMOST_GRID_DLOG10, LAMOST_GRID_MAX_A, LAMOST_GRID_MIN_A,
                                  log_lambda_grid)
from desa_core.data.readers.common import FitsReadError, header_float, header_value, open_fits, table_column

C_KMS = 299792.458
def lamost_wavelength_grid(w_min: float = LAMOST_GRID_MIN_A, w_max: float = LAMOST_GRID_MAX_A,
                           dlog10: float = LAMOST_GRID_DLOG10) -> np.ndarray:
    """A LAMOST-like spectral grid (vacuum Angstrom, uniform in log10 lambda); the defaults give the store's."""
    return log_lambda_grid(w_min, w_max, dlog10)


def store_wavelength_grid() -> np.ndarray:
    """The grid every survey store's spectra share (``desa_core.data.store.log_lambda_grid``)."""
    return log_lambda_grid()


@dataclass
class LamostSpectrum:
    """One LAMOST LRS spectrum on its native pixels (vacuum wavelength, observed frame)."""

    path: Path
    obsid: str
    ra: float
    dec: float
    wavelength: np.ndarray   # Angstrom, vacuum, increasing
    flux: np.ndarray         # LAMOST relative flux units; 0 where masked
    ivar: np.ndarray         # 0 where masked (andmask set, non-finite, negative)
    z: float = float("nan")
    helio_rv: float = float("nan")
    snr_r: float = float("nan")
    designation: str = ""
    layout: str = ""         # "image" (DR1-4) or "table" (DR5+)
    meta: dict = field(default_factory=dict)

    @property
    def rv_kms(self) -> float:
        """Heliocentric radial velocity [km/s]: HELIO_RV when given, else Z * c; NaN when neither."""
        if np.isfinite(self.helio_rv):
            return float(self.helio_rv)
        return float(self.z * C_KMS) if np.isfinite(self.z) else float("nan")

    @property
    def snr(self) -> float:
        """S/N used to pick the best of several spectra of a star: SNRR header, else median sqrt(ivar)*flux."""
        if np.isfinite(self.snr_r):
            return float(self.snr_r)
        good = self.ivar > 0
        return float(np.median(np.abs(self.flux[good]) * np.sqrt(self.ivar[good]))) if good.any() else 0.0


def is_lamost_spectrum(hdul: fits.HDUList) -> bool:
    h0 = hdul[0].header
    if str(h0.get("TELESCOP", "")).strip().upper() == "LAMOST":
        return True
    if "OBSID" in h0 and ("COEFF0" in h0 or any(isinstance(h, fits.BinTableHDU) for h in hdul[1:])):
        return True
    return False


def read_lamost_spectrum(path: str | os.PathLike) -> LamostSpectrum:
    """Read either LAMOST LRS layout; raises :class:`FitsReadError` naming the file when it is unusable."""
    with open_fits(path) as hdul:
        return spectrum_from_hdul(path, hdul)


def spectrum_from_hdul(path, hdul: fits.HDUList) -> LamostSpectrum:
    path = Path(path)
    h0 = hdul[0].header
    table = next((h for h in hdul[1:] if isinstance(h, fits.BinTableHDU) and h.data is not None
                  and "FLUX" in [c.upper() for c in h.columns.names]), None)
    if table is not None:
        layout = "table"
        if len(table.data) < 1:
            raise FitsReadError(path, f"table HDU {table.name!r} has no rows")
        flux = np.ravel(table_column(path, table, ("FLUX",))[0])
        ivar = np.ravel(table_column(path, table, ("IVAR",))[0])
        wave = table_column(path, table, ("WAVELENGTH", "LOGLAM"), required=False)
        wave = np.ravel(wave[0]) if wave is not None else None
        if wave is not None and "LOGLAM" in [c.upper() for c in table.columns.names] \
                and "WAVELENGTH" not in [c.upper() for c in table.columns.names]:
            wave = 10.0 ** wave
        andmask = table_column(path, table, ("ANDMASK",), required=False)
        andmask = np.ravel(andmask[0]) if andmask is not None else np.zeros_like(flux)
    elif hdul[0].data is not None and np.ndim(hdul[0].data) == 2:
        layout = "image"
        data = np.asarray(hdul[0].data, dtype=np.float64)
        if data.shape[0] < 2:
            raise FitsReadError(path, f"primary image has shape {data.shape}; expected rows [flux, ivar, "
                                      f"wavelength, andmask, ormask]")
        flux, ivar = data[0], data[1]
        wave = data[2] if data.shape[0] >= 3 else None
        andmask = data[3] if data.shape[0] >= 4 else np.zeros_like(flux)
    else:
        raise FitsReadError(path, "neither a LAMOST image (rows flux/ivar/wavelength) nor a table with a "
                                  "FLUX column")
    n = len(flux)
    if n < 2 or len(ivar) != n or len(andmask) != n:
        raise FitsReadError(path, f"flux ({n}), ivar ({len(ivar)}) and andmask ({len(andmask)}) lengths differ")
    wave = _wavelength(path, wave, h0, n)

    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar < 0) | (np.nan_to_num(andmask) != 0)
    if not np.isfinite(flux).any():
        raise FitsReadError(path, "all-NaN flux")
    ivar = np.where(bad, 0.0, ivar)
    flux = np.where(np.isfinite(flux), flux, 0.0)
    if not (ivar > 0).any():
        raise FitsReadError(path, "no unmasked pixel (inverse variance is 0 everywhere)")

    obsid = header_value(h0, "OBSID", default=None)
    if obsid is None and table is not None:
        obsid = header_value(table.header, "OBSID", default=None)
    return LamostSpectrum(
        path=path, obsid=str(obsid).strip() if obsid is not None else "", ra=header_float(h0, "RA", "RA_OBS"),
        dec=header_float(h0, "DEC", "DEC_OBS"), wavelength=wave, flux=flux, ivar=ivar,
        z=header_float(h0, "Z"), helio_rv=header_float(h0, "HELIO_RV"), snr_r=header_float(h0, "SNRR"),
        designation=str(header_value(h0, "DESIG", "DESIGNATION", default="")).strip(), layout=layout,
    )


def _wavelength(path, wave, header, n) -> np.ndarray:
    """Wavelengths from the file's row/column, else from COEFF0/COEFF1; must be positive and increasing."""
    if wave is not None:
        wave = np.asarray(wave, dtype=np.float64)
        if len(wave) == n and np.all(np.isfinite(wave)) and np.all(np.diff(wave) > 0) and wave[0] > 0:
            return wave
    c0, c1 = header_float(header, "COEFF0", "CRVAL1"), header_float(header, "COEFF1", "CD1_1", "CDELT1")
    if np.isfinite(c0) and np.isfinite(c1) and c1 > 0 and 2.0 < c0 < 5.0:
        return 10.0 ** (c0 + c1 * np.arange(n))
    raise FitsReadError(path, "no usable wavelengths (no increasing WAVELENGTH row/column and no "
                              "COEFF0/COEFF1 header keywords)")


def grid_coverage(wavelength: np.ndarray, grid: np.ndarray) -> float:
    """Fraction of the grid's log-lambda span that the spectrum's wavelength range covers."""
    lo, hi = max(wavelength[0], grid[0]), min(wavelength[-1], grid[-1])
    if hi <= lo:
        return 0.0
    return float(np.log10(hi / lo) / np.log10(grid[-1] / grid[0]))


def resample_to_grid(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                     grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation in log10(lambda) onto ``grid``; returns (flux, ivar) as float64.

    The variance is propagated through the interpolation weights (var = (1-w)^2 var_a + w^2 var_b); a grid
    pixel that takes any weight from a masked native pixel is masked, and pixels outside the spectrum's
    coverage get flux 0 and ivar 0. The interpolation correlates neighbouring pixels, which this ivar ignores
    (as every pixel-wise resampler does).
    """
    x = np.log10(np.asarray(wavelength, dtype=np.float64))
    xg = np.log10(np.asarray(grid, dtype=np.float64))
    j = np.searchsorted(x, xg, side="right") - 1
    j = np.where(xg == x[-1], len(x) - 2, j)            # the last native pixel is inside, not beyond
    inside = (j >= 0) & (j <= len(x) - 2)
    jj = np.clip(j, 0, len(x) - 2)
    w = np.clip((xg - x[jj]) / (x[jj + 1] - x[jj]), 0.0, 1.0)
    fa, fb = flux[jj], flux[jj + 1]
    ia, ib = ivar[jj], ivar[jj + 1]
    out_f = (1 - w) * fa + w * fb
    eps = 1e-9
    masked = ((ia <= 0) & (1 - w > eps)) | ((ib <= 0) & (w > eps)) | ~inside
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(1 - w > eps, (1 - w) ** 2 / ia, 0.0) + np.where(w > eps, w ** 2 / ib, 0.0)
        out_i = np.where(masked | ~(var > 0), 0.0, 1.0 / var)
    out_f = np.where(inside, out_f, 0.0)
    return out_f, out_i


def spectrum_on_grid(spec: LamostSpectrum, grid: np.ndarray, min_coverage: float = 0.5,
                     normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A spectrum resampled on ``grid``, divided by its median unmasked flux (relative flux, median ~1).

    Raises :class:`FitsReadError` when the wavelength range covers less than ``min_coverage`` of the grid
    (a file in air/nm/another instrument) or no unmasked pixel lands on the grid.
    """
    cov = grid_coverage(spec.wavelength, grid)
    if cov < min_coverage:
        raise FitsReadError(spec.path, f"wavelength range {spec.wavelength[0]:.1f}-{spec.wavelength[-1]:.1f} A "
                                       f"covers {100 * cov:.0f}% of the {grid[0]:.0f}-{grid[-1]:.0f} A grid "
                                       f"(need {100 * min_coverage:.0f}%)")
    f, iv = resample_to_grid(spec.wavelength, spec.flux, spec.ivar, grid)
    good = iv > 0
    if not good.any():
        raise FitsReadError(spec.path, "no unmasked pixel inside the wavelength grid")
    if normalise:
        med = float(np.median(f[good]))
        if not (np.isfinite(med) and med > 0):
            raise FitsReadError(spec.path, f"median flux {med:.3g} is not positive; cannot make a relative flux")
        f = f / med
        iv = iv * med ** 2
    return f, iv
