"""Gaia G/BP/RP and Kepler Kp magnitudes, extinction, and Gaia-like errors (parallax, photometry, RUWE).

Choice of photometric calibration (no MIST bolometric-correction table is available offline without heavy
dependencies, so we use published empirical relations, each valid over the FGK range of the survey):

* M_bol = 4.74 - 2.5 log10(L/Lsun) (IAU 2015 B2 zero point).
* BC_G(Teff): Andrae et al. 2018 (Gaia DR2 Apsis) polynomial in (Teff - 5772 K), 3300-8000 K; M_G(Sun) = 4.68.
* (BP-RP)_0(Teff, [Fe/H], logg): the Mucciarelli, Bellazzini & Massari 2021 colour-Teff relation
  theta = 5040/Teff = b0 + b1 C + b2 C^2 + b3 [Fe/H] + b4 [Fe/H]^2 + b5 [Fe/H] C, inverted for C, with their
  dwarf coefficients for logg >= 3.8 and giant coefficients below 3.4 (blended between); Sun -> 0.79.
* G - RP as a quadratic in BP-RP through 0 at Vega, 0.49 at the Sun (Casagrande & VandenBerg 2018) and
  1.25 at BP-RP = 3 (M dwarfs): G - RP = 0.6656 x - 0.0830 x^2.
* Kp: SDSS g and r from G and BP-RP (Riello et al. 2021 transformations) and the KIC definition of the
  Kepler magnitude (Brown et al. 2011): Kp = 0.1 g + 0.9 r for g - r <= 0.8, 0.2 g + 0.8 r otherwise.
  Kp - G is ~0 for the Sun and ~+0.45 for an M0 dwarf.
* Extinction: A_G, A_BP, A_RP = 0.789, 1.002, 0.589 A_V (Wang & Chen 2019), A_Kp = 0.85 A_V.
* Parallax error sigma(G) = sqrt(40 + 800 z + 30 z^2) microarcsec, z = 10^(0.4 (max(G, 13) - 15)) (Gaia DR3-like:
  ~0.03 mas at G = 15, ~0.08 mas at G = 17).
* RUWE from the photocentre wobble of an unresolved binary (Belokurov et al. 2020; Penoyre et al. 2022):
  alpha = a[AU] * parallax[mas] * |q/(1+q) - f/(1+f)|, with orbits longer than the ~34-month DR3 baseline
  mostly absorbed into proper motion (factor (T/P)^2); RUWE = sqrt(1 + (alpha / sigma_AL(G))^2) times the
  ~5% scatter of single stars.
"""
from __future__ import annotations

import numpy as np

M_BOL_SUN = 4.74
A_G_AV, A_BP_AV, A_RP_AV, A_KP_AV = 0.789, 1.002, 0.589, 0.85
GAIA_BASELINE_DAYS = 34 * 30.44  # Gaia DR3 astrometric baseline

_ANDRAE_HOT = (6.000e-02, 6.731e-05, -6.647e-08, 2.859e-11, -7.197e-15)   # 4000-8000 K
_ANDRAE_COOL = (1.749e+00, 1.977e-03, 3.737e-07, -8.966e-11, -4.183e-14)  # 3300-4000 K
_MBM_DWARF = (0.4929, 0.5092, -0.0353, 0.0192, -0.0020, -0.0395)
_MBM_GIANT = (0.5323, 0.4775, -0.0344, -0.0110, -0.0020, -0.0009)


def bc_g(teff):
    """Bolometric correction in Gaia G (Andrae et al. 2018)."""
    dt = np.clip(np.asarray(teff, float), 3000.0, 8000.0) - 5772.0
    hot = sum(c * dt**i for i, c in enumerate(_ANDRAE_HOT))
    cool = sum(c * dt**i for i, c in enumerate(_ANDRAE_COOL))
    return np.where(dt + 5772.0 >= 4000.0, hot, cool)


def _invert_mbm(theta, feh, b):
    b0, b1, b2, b3, b4, b5 = b
    # b2 C^2 + (b1 + b5 feh) C + (b0 + b3 feh + b4 feh^2 - theta) = 0, the root on the rising branch
    B = b1 + b5 * feh
    C0 = b0 + b3 * feh + b4 * feh**2 - theta
    disc = np.maximum(B**2 - 4 * b2 * C0, 0.0)  # beyond the turning point (< ~2300 K) the colour saturates
    return (-B + np.sqrt(disc)) / (2 * b2)


def bp_rp_from_teff(teff, feh, logg):
    """Intrinsic Gaia BP-RP of a star (Mucciarelli, Bellazzini & Massari 2021, inverted)."""
    theta = 5040.0 / np.asarray(teff, float)
    feh = np.clip(np.asarray(feh, float), -2.5, 0.5)
    dwarf = _invert_mbm(theta, feh, _MBM_DWARF)
    giant = _invert_mbm(theta, feh, _MBM_GIANT)
    w = np.clip((np.asarray(logg, float) - 3.4) / 0.4, 0.0, 1.0)
    return w * dwarf + (1 - w) * giant


def g_minus_rp(bp_rp):
    x = np.asarray(bp_rp, float)
    return 0.6656 * x - 0.0830 * x**2


def kp_minus_g(bp_rp):
    """Kepler magnitude minus Gaia G as a function of BP-RP (Riello 2021 -> SDSS g, r -> Brown 2011 Kp)."""
    x = np.clip(np.asarray(bp_rp, float), 0.25, 3.0)
    g_mag = -(0.13518 - 0.46245 * x - 0.25171 * x**2 + 0.021349 * x**3)  # g - G
    r_mag = -(-0.12879 + 0.24662 * x - 0.027464 * x**2 - 0.049465 * x**3)  # r - G
    gr = g_mag - r_mag
    return np.where(gr <= 0.8, 0.1 * g_mag + 0.9 * r_mag, 0.2 * g_mag + 0.8 * r_mag)


def absolute_magnitudes(teff, log_lum, feh, logg) -> dict[str, np.ndarray]:
    """Absolute (extinction-free) G, BP, RP, Kp of one star."""
    m_bol = M_BOL_SUN - 2.5 * np.asarray(log_lum, float)
    g = m_bol - bc_g(teff)
    x = bp_rp_from_teff(teff, feh, logg)
    rp = g - g_minus_rp(x)
    return {"G": g, "BP": rp + x, "RP": rp, "Kp": g + kp_minus_g(x)}


def combine_magnitudes(m1, m2):
    """Magnitude of the unresolved sum of two stars (NaN m2 = no companion light)."""
    m1 = np.asarray(m1, float)
    f2 = np.where(np.isfinite(m2), 10 ** (-0.4 * np.nan_to_num(m2, nan=99.0)), 0.0)
    return -2.5 * np.log10(10 ** (-0.4 * m1) + f2)


def extinction_av(distance_pc, sin_b, av_per_kpc: float, dust_scale_height_pc: float):
    """A_V along a sightline through an exponential dust layer: ~av_per_kpc nearby, saturating at
    av_per_kpc * h / sin(b) (about 0.5 mag towards the Kepler field)."""
    d = np.asarray(distance_pc, float)
    sin_b = np.maximum(np.asarray(sin_b, float), 1e-3)
    h = dust_scale_height_pc
    return av_per_kpc * (h / 1000.0) / sin_b * (1.0 - np.exp(-d * sin_b / h))


def distance_modulus(distance_pc):
    return 5.0 * np.log10(np.asarray(distance_pc, float) / 10.0)


def parallax_error_mas(gmag):
    z = 10 ** (0.4 * (np.maximum(np.asarray(gmag, float), 13.0) - 15.0))
    return np.sqrt(40.0 + 800.0 * z + 30.0 * z**2) / 1000.0


def photometric_error(gmag, band: str):
    """Gaia DR3-like mean-magnitude errors (mag): ~0.3 mmag in G at G<13, a few mmag in BP/RP, rising faint."""
    gmag = np.asarray(gmag, float)
    floor, scale = {"G": (0.0003, 0.0007), "BP": (0.002, 0.012), "RP": (0.0015, 0.008)}[band]
    return np.sqrt(floor**2 + (scale * 10 ** (0.4 * (gmag - 17.0))) ** 2)


def along_scan_error_mas(gmag):
    """Per-transit along-scan astrometric error that RUWE normalises by (~0.1 mas bright, ~0.3 mas at G 17)."""
    return 0.06 + 0.09 * 10 ** (0.2 * (np.maximum(np.asarray(gmag, float), 13.0) - 15.0))


def ruwe(parallax_mas, a_au, porb_days, mass_ratio, flux_ratio_g, gmag, rng: np.random.Generator):
    """Renormalised unit weight error: ~1.0 +- 0.05 for single stars, > 1.4 for binaries whose
    photocentre wobble is comparable to Gaia's per-transit error (periods ~0.1-10 yr)."""
    n = len(np.atleast_1d(parallax_mas))
    base = np.exp(rng.normal(0.0, 0.05, n)) * 1.0
    q = np.nan_to_num(np.asarray(mass_ratio, float))
    f = np.nan_to_num(np.asarray(flux_ratio_g, float))
    wobble = np.nan_to_num(np.asarray(a_au, float)) * np.asarray(parallax_mas, float) * np.abs(q / (1 + q) - f / (1 + f))
    p = np.nan_to_num(np.asarray(porb_days, float), nan=np.inf)
    absorbed = np.where(p > GAIA_BASELINE_DAYS, (GAIA_BASELINE_DAYS / p) ** 2, 1.0)
    excess = wobble * absorbed / along_scan_error_mas(gmag)
    return base * np.sqrt(1.0 + excess**2)
