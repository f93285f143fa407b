"""Unresolved companions: multiplicity, orbits, synchronisation, eclipses and radial velocities.

* Multiplicity (Raghavan et al. 2010): a fraction ``binary_fraction`` (~45%) of FGK primaries have a
  companion, falling linearly to ~30% at 0.4 Msun (M dwarfs; Winters et al. 2019).
* Periods: log10 P[d] ~ N(5.03, 2.28); orbits so tight that the primary would overfill its Roche lobe
  (a < 3 R1 or a < 2.5 (R1 + R2)) are redrawn: such systems would have merged or transferred mass.
* Mass ratio: flat in [max(0.1, 0.1 Msun / M1), 1] plus a twin excess (q in [0.95, 1]): ``twin_fraction``
  of wide binaries, ``twin_fraction_close`` of binaries with P < 10 d (Moe & Di Stefano 2017 find ~30%).
* Orbits are circular (P < ~10 d binaries are tidally circularised; eccentricity is ignored for the
  rest, which only affects their RV curves); inclinations are isotropic.
* Close binaries with P < ``sync_period_days`` are tidally synchronised (Lurie et al. 2017): their spin
  period equals the orbital period and their spin axis is the orbital axis.
* Eclipses occur when a |cos i| < R1 + R2 (probability ~ (R1 + R2)/a); a binary is ``'eclipsing'`` when it
  eclipses and at least two eclipses fit in the light curve (P < half its span).
* RVs (circular orbit): K1 = 29.78 km/s (M2 sin i)(P/yr)^(-1/3)(M1+M2)^(-2/3), K2 = K1/q; at time t,
  rv1 = gamma - K1 sin(phi), rv2 = gamma + K2 sin(phi), phi = 2 pi (t - t0)/P, where t0 is a primary
  conjunction (companion in front of the primary: the primary eclipse).
"""
from __future__ import annotations

import numpy as np

RSUN_PER_AU = 215.032
KEPLER_A_COEFF = 4.2084  # a [Rsun] = 4.2084 (P/d)^(2/3) ((M1+M2)/Msun)^(1/3)
DAYS_PER_YEAR = 365.25


def semi_major_axis_rsun(porb_days, m1, m2):
    return KEPLER_A_COEFF * np.asarray(porb_days, float) ** (2 / 3) * (np.asarray(m1) + np.asarray(m2)) ** (1 / 3)


def binary_fraction(mass, f_fgk: float):
    m = np.asarray(mass, float)
    return np.where(m >= 0.7, f_fgk, f_fgk - (f_fgk - 0.30) * np.clip((0.7 - m) / 0.3, 0.0, 1.0))


def twin_fraction(porb_days, wide: float, close: float):
    """Fraction of twins (q > 0.95): ``close`` below 10 d, falling to ``wide`` at 1000 d (Moe & Di Stefano 2017)."""
    lp = np.log10(np.asarray(porb_days, float))
    return close + (wide - close) * np.clip((lp - 1.0) / 2.0, 0.0, 1.0)


def draw_mass_ratios(rng, m1, twin_fraction):
    n = len(m1)
    q_lo = np.maximum(0.1, 0.1 / np.asarray(m1, float))
    q = q_lo + rng.uniform(0.0, 1.0, n) * (1.0 - q_lo)
    twin = rng.uniform(0.0, 1.0, n) < twin_fraction
    return np.where(twin, rng.uniform(0.95, 1.0, n), q)


def draw_periods(rng, m1, m2, r1, r2, mean: float, sigma: float, max_tries: int = 20):
    """Orbital periods [d]: log-normal, redrawn where the orbit would be too tight for detached stars."""
    n = len(m1)
    p = 10 ** rng.normal(mean, sigma, n)
    a_min = np.maximum(3.0 * r1, 2.5 * (r1 + r2))
    for _ in range(max_tries):
        bad = semi_major_axis_rsun(p, m1, m2) < a_min
        if not bad.any():
            break
        p[bad] = 10 ** rng.normal(mean, sigma, bad.sum())
    bad = semi_major_axis_rsun(p, m1, m2) < a_min
    # Still too tight after many draws (a giant primary): place it just wide enough.
    p[bad] = (a_min[bad] / (KEPLER_A_COEFF * (m1[bad] + m2[bad]) ** (1 / 3))) ** 1.5 * 1.1
    return p


def rv_semi_amplitudes(porb_days, m1, m2, inclination_deg):
    """(K1, K2) in km/s for a circular orbit."""
    p_yr = np.asarray(porb_days, float) / DAYS_PER_YEAR
    sin_i = np.sin(np.radians(inclination_deg))
    k1 = 29.78 * m2 * sin_i * p_yr ** (-1 / 3) * (m1 + m2) ** (-2 / 3)
    return k1, k1 * m1 / m2


def radial_velocities(t, t0, porb_days, k1, k2, gamma):
    """(rv1, rv2) at time t [d]; singles (NaN period) get rv1 = gamma, rv2 = NaN."""
    phi = 2 * np.pi * (np.asarray(t) - t0) / np.where(np.isfinite(porb_days), porb_days, 1.0)
    s = np.where(np.isfinite(porb_days), np.sin(phi), 0.0)
    rv1 = gamma - np.nan_to_num(k1) * s
    rv2 = np.where(np.isfinite(porb_days), gamma + np.nan_to_num(k2) * s, np.nan)
    return rv1, rv2


def classify(is_binary, porb_days, a_rsun, r1, r2, inclination_deg, sync_period_days: float,
             lc_span_days: float):
    """binary_class ('single', 'wide', 'close_sync', 'eclipsing') and is_synchronized."""
    p = np.asarray(porb_days, float)
    with np.errstate(invalid="ignore"):
        eclipses = is_binary & (np.asarray(a_rsun) * np.abs(np.cos(np.radians(inclination_deg)))
                                < np.asarray(r1) + np.nan_to_num(r2)) & (p < 0.5 * lc_span_days)
        sync = is_binary & (p < sync_period_days)
    cls = np.where(~is_binary, "single", np.where(eclipses, "eclipsing", np.where(sync, "close_sync", "wide")))
    return cls.astype(object), sync
