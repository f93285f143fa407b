"""Observed physics columns of any catalogue: the CMD, HR diagram and photometric-binary offset a survey can
actually measure, from Gaia photometry, parallax and an extinction estimate. One module, used by ``desa
ingest`` (a real cross-match) and by the simulator (its survey-like ``*_obs`` values) alike, so the maps of a
simulated and of a real survey mean the same thing.

    cols = observed_columns(catalogue)          # DataFrame, same index: the columns of OBSERVED_COLUMNS

What is derived, star by star:

* **Parallax zero-point** (Lindegren et al. 2021, A&A 649, A4; the ``gaiadr3-zeropoint`` package). With the
  catalogue's ``nu_eff_used_in_astrometry`` / ``pseudocolour`` / ``ecl_lat`` / ``astrometric_params_solved``
  the full recipe; without them a five-parameter solution is assumed, nu_eff is computed from BP-RP as the DR3
  astrometric processing did (nu_eff = 1.76 - 1.61/pi atan(0.531 (BP-RP))) and the ecliptic latitude from
  RA/Dec. Outside the recipe's validity (G 6-21, nu_eff 1.1-1.9 um^-1) the nearest valid value is used.
  ``parallax_corr_mas = parallax - zero-point``.
* **Parallax quality**: ``parallax_over_error = parallax_corr / parallax_error``; below
  ``min_parallax_over_error`` (5: a 20 % distance error) the star gets no absolute magnitude (``abs_g0``,
  ``log_lum_obs``, ``delta_mag_ms_obs`` NaN) and ``parallax_ok`` False. A catalogue without parallax errors
  is not cut (``parallax_ok`` then only asks for a positive parallax), which the info dict says.
* **Extinction**, first available of: ``a_g`` (A_G), ``e_bp_rp`` (E(BP-RP)), ``a_v`` (A_V or Gaia's A_0),
  ``ebv`` (E(B-V), A_V = 3.1 E(B-V)); converted with the Wang & Chen (2019) ratios the simulator uses
  (A_G, A_BP, A_RP = 0.789, 1.002, 0.589 A_V). ``extinction_source`` names the column used per star; a star
  with none is not de-reddened (``dereddened`` False, A = 0) and the info dict counts them.
* ``bp_rp0 = BP - RP - E(BP-RP)``, ``abs_g0 = G + 5 log10(parallax_corr / 100 mas) - A_G``.
* ``teff_bc``: the Teff the bolometric correction uses: the spectroscopic ``teff_obs`` (LAMOST) where there
  is one, else the photometric Teff of the de-reddened colour (Mucciarelli, Bellazzini & Massari 2021 dwarf
  relation at the star's [Fe/H], solar without one).
* ``log_lum_obs = (4.74 - M_G,0 - BC_G(teff_bc)) / 2.5`` with the Andrae et al. (2018) BC_G the simulator's
  photometry uses.
* ``delta_mag_ms_obs``: how far the star sits above (brighter than) the single-star main sequence at its
  de-reddened colour (a MIST isochrone at 4 Gyr and the Kepler field's mean [Fe/H]); >= 0.3 mag marks a
  photometric binary (Simonian et al. 2019).
"""
from __future__ import annotations

import logging
import warnings
from functools import lru_cache

import numpy as np
import pandas as pd

from desa_core.data.simulate import photometry as ph

log = logging.getLogger(__name__)

OBSERVED_COLUMNS = ("parallax_zp_mas", "parallax_corr_mas", "parallax_over_error", "parallax_ok",
                    "extinction_source", "a_g_used", "e_bp_rp_used", "dereddened", "bp_rp0", "abs_g0", "teff_bc",
                    "log_lum_obs", "delta_mag_ms_obs")
# Catalogue columns an extinction estimate may come from, in order of preference.
EXTINCTION_COLUMNS = ("a_g", "e_bp_rp", "a_v", "ebv")
R_V = 3.1
E_BP_RP_PER_AV = ph.A_BP_AV - ph.A_RP_AV
MIN_PARALLAX_OVER_ERROR = 5.0
PHOTOBINARY_DELTA_MAG = 0.3       # Simonian et al. 2019
MS_REFERENCE_FEH, MS_REFERENCE_AGE_GYR = -0.05, 4.0


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[name], errors="coerce").to_numpy(np.float64, na_value=np.nan)


def nu_eff_from_colour(bp_rp) -> np.ndarray:
    """Effective wavenumber [um^-1] the DR3 astrometric solution assigns a star of this BP-RP (Lindegren et
    al. 2021, eq. 3 of the zero-point paper's inputs), clipped to the recipe's 1.24-1.72 range."""
    c = np.asarray(bp_rp, float)
    return np.clip(1.76 - (1.61 / np.pi) * np.arctan(0.531 * c), 1.24, 1.72)


def ecliptic_latitude(ra_deg, dec_deg) -> np.ndarray:
    from astropy import units as u
    from astropy.coordinates import BarycentricTrueEcliptic, SkyCoord

    ra, dec = np.asarray(ra_deg, float), np.asarray(dec_deg, float)
    out = np.full(len(ra), np.nan)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if ok.any():
        c = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg, frame="icrs")
        out[ok] = c.transform_to(BarycentricTrueEcliptic()).lat.deg
    return out


def parallax_zero_point(gmag, bp_rp=None, ra=None, dec=None, nu_eff=None, pseudocolour=None, ecl_lat=None,
                        params_solved=None) -> np.ndarray:
    """Lindegren et al. (2021) parallax zero-point [mas] (subtract it from the catalogue parallax). NaN where
    G or the colour information is missing."""
    from zero_point import zpt

    g = np.asarray(gmag, float)
    n = len(g)
    nu = np.full(n, np.nan) if nu_eff is None else np.asarray(nu_eff, float).copy()
    if bp_rp is not None:
        nu = np.where(np.isfinite(nu), nu, nu_eff_from_colour(bp_rp))
    psc = np.full(n, np.nan) if pseudocolour is None else np.asarray(pseudocolour, float)
    sol = np.full(n, 31.0) if params_solved is None else np.asarray(params_solved, float)
    six = (sol == 95) & np.isfinite(psc)
    sol = np.where(six, 95.0, 31.0)   # without a usable pseudocolour a 6p star is treated as 5p via nu_eff
    beta = np.asarray(ecl_lat, float) if ecl_lat is not None else (
        ecliptic_latitude(ra, dec) if ra is not None and dec is not None else np.full(n, np.nan))
    out = np.full(n, np.nan)
    ok = np.isfinite(g) & np.isfinite(beta) & (np.isfinite(nu) | six)
    if not ok.any():
        return out
    zpt.load_tables()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the recipe warns (once per call) about extrapolated stars
        out[ok] = zpt.get_zpt(np.clip(g[ok], 6.0, 21.0), np.clip(np.nan_to_num(nu[ok], nan=1.5), 1.1, 1.9),
                              np.clip(np.nan_to_num(psc[ok], nan=1.5), 1.24, 1.72), beta[ok], sol[ok].astype(int),
                              _warnings=False)
    return out


def photometric_teff(bp_rp0, feh=None) -> np.ndarray:
    """Teff [K] of a dwarf from its de-reddened Gaia colour (Mucciarelli, Bellazzini & Massari 2021),
    valid for (BP-RP)0 of ~0.4-2.5 (NaN outside)."""
    c = np.asarray(bp_rp0, float)
    f = np.zeros_like(c) if feh is None else np.clip(np.nan_to_num(np.asarray(feh, float), nan=0.0), -2.5, 0.5)
    b0, b1, b2, b3, b4, b5 = ph._MBM_DWARF
    theta = b0 + b1 * c + b2 * c**2 + b3 * f + b4 * f**2 + b5 * f * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t = 5040.0 / theta
    return np.where((c >= 0.3) & (c <= 2.8) & (theta > 0), t, np.nan)


def log_luminosity(abs_g0, teff) -> np.ndarray:
    """log10 L/Lsun from the de-reddened absolute G and the Andrae et al. (2018) BC_G(Teff)."""
    m_bol = np.asarray(abs_g0, float) + ph.bc_g(np.nan_to_num(np.asarray(teff, float), nan=5772.0))
    return np.where(np.isfinite(abs_g0) & np.isfinite(teff), (ph.M_BOL_SUN - m_bol) / 2.5, np.nan)


@lru_cache(maxsize=4)
def main_sequence_reference(feh: float = MS_REFERENCE_FEH, age_gyr: float = MS_REFERENCE_AGE_GYR):
    """(bp_rp, M_G) of the single-star main sequence used for ``delta_mag_ms``: a MIST isochrone at
    ``age_gyr`` (~ the field median, so it traces the single-star ridge as Simonian et al. 2019 fit it)
    and ``feh``, 0.1-1.6 Msun, in the simulator's photometric system."""
    from desa_core.data.simulate.stellar import interpolate_stars

    m = np.linspace(0.1, 1.6, 400)
    st = interpolate_stars(m, np.full_like(m, age_gyr), np.full_like(m, feh))
    ok = st["valid"] & (st["eep"] < 454)
    mags = ph.absolute_magnitudes(st["teff"][ok], st["log_lum"][ok], feh, st["logg"][ok])
    x = mags["BP"] - mags["RP"]
    order = np.argsort(x)
    return x[order], mags["G"][order]


def delta_mag_main_sequence(bp_rp, abs_g, reference=None) -> np.ndarray:
    """How far (mag) a star sits above (brighter than) the single-star main sequence at its BP-RP."""
    x, mg = main_sequence_reference() if reference is None else reference
    bp_rp = np.asarray(bp_rp, float)
    inside = (bp_rp >= x[0]) & (bp_rp <= x[-1])
    return np.where(inside, np.interp(bp_rp, x, mg) - np.asarray(abs_g, float), np.nan)


def extinction(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A_G, E(BP-RP), source name per star) from the first extinction column a star has a value in; 0 and
    '' where it has none."""
    n = len(df)
    a_g, e_br = np.full(n, np.nan), np.full(n, np.nan)
    src = np.full(n, "", dtype=object)
    for name in EXTINCTION_COLUMNS:
        v = _col(df, name)
        use = np.isfinite(v) & ~np.isfinite(a_g)
        if not use.any():
            continue
        if name == "a_g":
            a_g[use], e_br[use] = v[use], v[use] * E_BP_RP_PER_AV / ph.A_G_AV
        elif name == "e_bp_rp":
            e_br[use], a_g[use] = v[use], v[use] * ph.A_G_AV / E_BP_RP_PER_AV
        else:
            av = v * (R_V if name == "ebv" else 1.0)
            a_g[use], e_br[use] = av[use] * ph.A_G_AV, av[use] * E_BP_RP_PER_AV
        src[use] = name
    return a_g, e_br, src


def observed_columns(df: pd.DataFrame, min_parallax_over_error: float = MIN_PARALLAX_OVER_ERROR,
                     ms_reference=None) -> tuple[pd.DataFrame, dict]:
    """The observed physics columns (OBSERVED_COLUMNS) of a catalogue with store column names (``gaia_g``,
    ``gaia_bp``, ``gaia_rp``, ``parallax_mas``, optional ``parallax_error_mas``, extinction columns, ``ra``,
    ``dec``, ``teff_obs``, ``feh_obs`` and the Gaia zero-point inputs) -> (DataFrame on df's index, info dict
    with what was and was not available)."""
    g, bp, rp = _col(df, "gaia_g"), _col(df, "gaia_bp"), _col(df, "gaia_rp")
    bp_rp = bp - rp
    plx = _col(df, "parallax_mas")
    plx_err = _col(df, "parallax_error_mas")
    if "parallax_over_error" in df.columns and not np.isfinite(plx_err).any():
        with np.errstate(divide="ignore", invalid="ignore"):
            plx_err = plx / _col(df, "parallax_over_error")
    zp = parallax_zero_point(g, bp_rp, _col(df, "ra"), _col(df, "dec"), nu_eff=_col(df, "nu_eff_used_in_astrometry"),
                             pseudocolour=_col(df, "pseudocolour"),
                             ecl_lat=_col(df, "ecl_lat") if "ecl_lat" in df.columns else None,
                             params_solved=_col(df, "astrometric_params_solved")
                             if "astrometric_params_solved" in df.columns else None)
    plx_corr = plx - np.nan_to_num(zp, nan=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        poe = np.where(np.isfinite(plx_err) & (plx_err > 0), plx_corr / plx_err, np.nan)
    has_err = np.isfinite(poe)
    plx_ok = np.isfinite(plx_corr) & (plx_corr > 0) & np.where(has_err, poe >= min_parallax_over_error, True)

    a_g, e_br, src = extinction(df)
    dered = np.isfinite(a_g)
    a_g0, e_br0 = np.where(dered, a_g, 0.0), np.where(dered, e_br, 0.0)
    bp_rp0 = bp_rp - e_br0
    with np.errstate(divide="ignore", invalid="ignore"):
        abs_g0 = np.where(plx_ok, g + 5.0 * np.log10(np.where(plx_ok, plx_corr, 1.0) / 100.0) - a_g0, np.nan)
    teff_spec = _col(df, "teff_obs")
    teff_bc = np.where(np.isfinite(teff_spec), teff_spec, photometric_teff(bp_rp0, _col(df, "feh_obs")))
    out = pd.DataFrame({
        "parallax_zp_mas": zp, "parallax_corr_mas": plx_corr, "parallax_over_error": poe, "parallax_ok": plx_ok,
        "extinction_source": pd.Series(src, index=df.index).astype(str).to_numpy(), "a_g_used": a_g,
        "e_bp_rp_used": e_br, "dereddened": dered, "bp_rp0": bp_rp0, "abs_g0": abs_g0, "teff_bc": teff_bc,
        "log_lum_obs": log_luminosity(abs_g0, teff_bc),
        "delta_mag_ms_obs": delta_mag_main_sequence(bp_rp0, abs_g0, ms_reference),
    }, index=df.index)
    n = len(df)
    info = {
        "n": n,
        "parallax_zero_point": ("Lindegren et al. 2021 with the catalogue's nu_eff/pseudocolour"
                                if np.isfinite(_col(df, "nu_eff_used_in_astrometry")).any()
                                else "Lindegren et al. 2021, 5-parameter, nu_eff from BP-RP"),
        "parallax_errors": bool(has_err.any()),
        "min_parallax_over_error": float(min_parallax_over_error),
        "n_parallax_ok": int(plx_ok.sum()),
        "n_dereddened": int(dered.sum()),
        "extinction_columns": sorted({s for s in src if s}),
        "n_not_dereddened": int((~dered).sum()),
        "n_teff_spectroscopic": int(np.isfinite(teff_spec).sum()),
        "n_teff_photometric": int((~np.isfinite(teff_spec) & np.isfinite(teff_bc)).sum()),
        "n_photometric_binaries": int((out["delta_mag_ms_obs"] >= PHOTOBINARY_DELTA_MAG).sum()),
    }
    if not has_err.any() and np.isfinite(plx).any():
        log.warning("no parallax errors in the catalogue: the parallax-over-error cut (>= %g) is not applied",
                    min_parallax_over_error)
    if n and info["n_not_dereddened"]:
        log.info("%d of %d stars have no extinction estimate (%s): their CMD position is not de-reddened",
                 info["n_not_dereddened"], n, "/".join(EXTINCTION_COLUMNS))
    return out, info
