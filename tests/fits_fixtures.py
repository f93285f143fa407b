"""Small FITS files for the reader and ingest tests, built with astropy: valid ones in the layouts MAST and
LAMOST distribute, and deliberately broken ones (truncated, not FITS, missing pieces, all-NaN, wrong range).

Sizes are tiny (a few hundred cadences per quarter, one LAMOST spectrum of ~3900 pixels) so tests run fast.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.votable import from_table
from astropy.table import Table

LC_DAYS = 29.4244 / 1440.0
# LAMOST DR-era native grid: log10(lambda) from 3.5682 in 1e-4 dex steps (3909 pixels, ~3699.98-9099 A).
LAMOST_COEFF0, LAMOST_COEFF1, LAMOST_NPIX = 3.5682, 1e-4, 3909


def lamost_native_wavelength() -> np.ndarray:
    return 10.0 ** (LAMOST_COEFF0 + LAMOST_COEFF1 * np.arange(LAMOST_NPIX))


def quarter_times(t_start: float, days: float) -> np.ndarray:
    return t_start + LC_DAYS * np.arange(int(days / LC_DAYS))


def true_signal(t: np.ndarray, period: float = 6.0, amp: float = 0.01) -> np.ndarray:
    """The star's relative brightness: a sinusoidal spot modulation."""
    return 1.0 + amp * np.sin(2 * np.pi * t / period)


def write_kepler_quarter(path, kic: int, quarter: int, time, flux, flux_err=None, quality=None, *,
                         ra=290.0, dec=44.0, kepmag=12.5, quality_column="SAP_QUALITY",
                         flux_column="PDCSAP_FLUX", extname="LIGHTCURVE", keplerid_keyword=True) -> Path:
    """One quarter in the MAST llc layout (primary header + LIGHTCURVE binary table)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    time = np.asarray(time, float)
    flux = np.asarray(flux, float)
    flux_err = np.full_like(flux, 5.0) if flux_err is None else np.asarray(flux_err, float)
    quality = np.zeros(len(time), np.int32) if quality is None else np.asarray(quality, np.int32)
    h0 = fits.Header()
    h0["TELESCOP"] = "Kepler"
    h0["INSTRUME"] = "Kepler Photometer"
    h0["OBJECT"] = f"KIC {kic}"
    if keplerid_keyword:
        h0["KEPLERID"] = kic
    h0["QUARTER"] = quarter
    h0["RA_OBJ"] = ra
    h0["DEC_OBJ"] = dec
    h0["KEPMAG"] = kepmag
    h0["OBSMODE"] = "long cadence"
    cols = [fits.Column(name="TIME", format="D", unit="BJD - 2454833", array=time),
            fits.Column(name="SAP_FLUX", format="E", array=flux),
            fits.Column(name=flux_column, format="E", unit="e-/s", array=flux),
            fits.Column(name=flux_column + "_ERR", format="E", unit="e-/s", array=flux_err),
            fits.Column(name=quality_column, format="J", array=quality)]
    table = fits.BinTableHDU.from_columns(cols, name=extname)
    fits.HDUList([fits.PrimaryHDU(header=h0), table]).writeto(path, overwrite=True)
    return path


def write_star_quarters(folder, kic: int, n_quarters: int = 3, *, t_start=131.5, days=12.0, gap=1.0,
                        levels=(12000.0, 15500.0, 9800.0, 13000.0), flag_every=37, ra=290.0, dec=44.0,
                        period=6.0, rng=None) -> dict:
    """Several quarters of one star with different levels (as on different CCDs), a few flagged cadences set
    to absurd values and a few NaNs. Returns the truth (times and relative signal of the good cadences)."""
    rng = np.random.default_rng(kic) if rng is None else rng
    paths, t_all, s_all = [], [], []
    t0 = t_start
    for q in range(n_quarters):
        t = quarter_times(t0, days)
        s = true_signal(t, period=period)
        flux = levels[q % len(levels)] * s * (1 + 1e-5 * rng.standard_normal(len(t)))
        quality = np.zeros(len(t), np.int32)
        quality[::flag_every] = 32            # reaction-wheel desaturation: in the default bitmask
        flux[quality != 0] *= 0.5             # so a kept flagged cadence would show up loudly
        flux[5::53] = np.nan
        paths.append(write_kepler_quarter(Path(folder) / f"kplr{kic:09d}-q{q + 1:02d}_llc.fits", kic, q + 1,
                                          t, flux, quality=quality, ra=ra, dec=dec))
        good = (quality == 0) & np.isfinite(flux)
        t_all.append(t[good])
        s_all.append(s[good])
        t0 = t[-1] + gap
    return {"paths": paths, "time": np.concatenate(t_all), "signal": np.concatenate(s_all)}


def lamost_spectrum_truth(obsid: int = 101, seed: int = 0):
    """A smooth continuum with a few absorption lines and a masked stretch, on the LAMOST native grid."""
    rng = np.random.default_rng(seed)
    w = lamost_native_wavelength()
    flux = 800 * (w / 6000.0) ** -1.5
    for line in (4862.7, 5895.9, 6564.6, 8544.4):
        flux *= 1 - 0.4 * np.exp(-0.5 * ((w - line) / 3.0) ** 2)
    ivar = np.full_like(w, 1 / 25.0) * (1 + 0.1 * rng.random(len(w)))
    andmask = np.zeros(len(w))
    andmask[2000:2010] = 1  # a bad column
    return w, flux, ivar, andmask


def _lamost_header(obsid, ra, dec, z=None, helio_rv=None, snr_r=50.0) -> fits.Header:
    h = fits.Header()
    h["TELESCOP"] = "LAMOST"
    h["OBSID"] = obsid
    h["DESIG"] = f"LAMOST J{ra:08.4f}{dec:+08.4f}"
    h["RA"] = ra
    h["DEC"] = dec
    if z is not None:
        h["Z"] = z
    if helio_rv is not None:
        h["HELIO_RV"] = helio_rv
    h["SNRR"] = snr_r
    h["VACUUM"] = True
    return h


def write_lamost_image(path, wave, flux, ivar, andmask, *, obsid=101, ra=290.0, dec=44.0, z=None,
                       helio_rv=None, snr_r=50.0, wavelength_row=True) -> Path:
    """DR1-DR4 layout: primary image rows [flux, ivar, wavelength, andmask, ormask] + COEFF0/COEFF1."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h = _lamost_header(obsid, ra, dec, z, helio_rv, snr_r)
    h["COEFF0"] = LAMOST_COEFF0
    h["COEFF1"] = LAMOST_COEFF1
    w_row = wave if wavelength_row else np.zeros_like(wave)
    data = np.vstack([flux, ivar, w_row, andmask, andmask]).astype(np.float32)
    fits.PrimaryHDU(data=data, header=h).writeto(path, overwrite=True)
    return path


def write_lamost_table(path, wave, flux, ivar, andmask, *, obsid=101, ra=290.0, dec=44.0, z=None,
                       helio_rv=None, snr_r=50.0) -> Path:
    """DR5+ layout: empty primary + binary table COADD with one row of array columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(wave)
    cols = [fits.Column(name="FLUX", format=f"{n}E", array=np.asarray(flux, np.float32)[None]),
            fits.Column(name="IVAR", format=f"{n}E", array=np.asarray(ivar, np.float32)[None]),
            fits.Column(name="WAVELENGTH", format=f"{n}E", array=np.asarray(wave, np.float32)[None]),
            fits.Column(name="ANDMASK", format=f"{n}E", array=np.asarray(andmask, np.float32)[None]),
            fits.Column(name="ORMASK", format=f"{n}E", array=np.asarray(andmask, np.float32)[None]),
            fits.Column(name="NORMALIZATION", format=f"{n}E", array=np.ones((1, n), np.float32))]
    hdus = [fits.PrimaryHDU(header=_lamost_header(obsid, ra, dec, z, helio_rv, snr_r)),
            fits.BinTableHDU.from_columns(cols, name="COADD")]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def write_truncated(src, dst, keep_fraction=0.6) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep_fraction)])
    return Path(dst)


def write_not_fits(path) -> Path:
    Path(path).write_text("this is an HTML error page, not a FITS file\n" * 100)
    return Path(path)


def write_catalogue(path, rows: dict, fmt: str) -> Path:
    """A catalogue (dict of columns) as csv, fits or votable."""
    path = Path(path)
    tab = Table(rows)
    if fmt == "csv":
        tab.write(path, format="ascii.csv", overwrite=True)
    elif fmt == "fits":
        tab.write(path, format="fits", overwrite=True)
    elif fmt == "votable":
        from_table(tab).to_xml(str(path))
    else:
        raise ValueError(fmt)
    return path
