"""Rotation periods, Rossby numbers, spot-modulation amplitudes and projected rotation velocities.

* Slow sequence: Bouma, Palumbo & Hillenbrand (2023, ``gyrointerp``), the cluster-calibrated Prot(Teff, age)
  for 3800-6200 K and 0.08-4 Gyr (alpha Per ... M67), tabulated once per process; beyond 4 Gyr it continues
  with Skumanich braking (P ~ t^0.5), beyond the Teff range it holds the edge value. The Angus et al.
  (2019) polynomial (Sun -> 26 d at 4.56 Gyr) is kept as :func:`angus2019_period` for comparison: its
  Praesepe-only calibration makes old K dwarfs rotate ~40% slower than M67's.
* Weakened magnetic braking (van Saders et al. 2016): once Ro = P/tau_c passes ``rossby_critical`` (~2, the
  Sun's), the star barely spins down further (P grows as P_gyro^0.1 beyond that point).
* Convective turnover time tau_c(Teff): Cranmer & Saar (2011), 12.9 d for the Sun.
* Kraft break: above ~6400 K thin convective envelopes barely brake; P ~ 2-10 d (log-normal around 5 d,
  0.25 dex), blended in over +-250 K; their spot amplitudes are lower (-0.8 dex by 6500 K), as in Santos.
* Young fast rotators: stars that have not yet converged onto the slow sequence, with probability
  1 / (1 + (age / t_half)^3), t_half = 50 Myr (M/Msun)^-3 (half converged: G dwarfs by ~60 Myr, K5 by
  ~150 Myr as in the Pleiades, 0.5 Msun by ~400 Myr, 0.4 Msun by ~800 Myr as in Praesepe), get P
  log-uniform between 0.3 d and the slow-sequence value.
* Subgiants and giants conserve angular momentum as they expand: P = P_MS (R / R_TAMS)^2 (hundreds of days
  on the lower RGB, up to ~10^5 d near its tip, where no spot modulation would be measurable anyway).
* Tidally synchronised binaries: P = P_orb (set in the pipeline, which owns the binary model).
* Spot amplitude S_ph (the Santos et al. 2019/2021 photometric activity proxy): log10 S_ph[ppm] =
  2.95 - 1.09 log10 Ro (0.45 dex scatter) for 0.1 < Ro < 2, saturated at ~9000 ppm below Ro 0.1, dropping
  faster beyond Ro 2; a growing fraction of the slow rotators (from none at Ro 0.8 to ``quiet_fraction_max``
  at Ro 2) are magnetically quiet (~10 ppm, no detectable modulation), as the ~65% of Kepler dwarfs
  without a measured period are (Santos et al. 2019, 2021).
"""
from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

_ANGUS = (-38.957586198640314, 28.709418579540294, -4.919056437046026, 0.7161114835620975,
          -4.716819674578521)  # c4..c0 in log10(BP-RP)
_ANGUS_AGE = 0.6470950862322454
_ANGUS_RED = (-13.558898318835137, 0.9359250478865809)  # b1, b0 for log10(BP-RP) >= 0.43

RSUN_KM = 695700.0


def angus2019_period(bp_rp, age_gyr):
    """Slow-sequence rotation period [d] of a main-sequence star (Angus et al. 2019)."""
    x = np.log10(np.clip(np.asarray(bp_rp, float), 0.56, 3.5))
    la = np.log10(np.asarray(age_gyr, float) * 1e9)
    blue = np.polyval(_ANGUS, x) + _ANGUS_AGE * la
    red = np.polyval(_ANGUS_RED, x) + _ANGUS_AGE * la
    return 10 ** np.where(x >= 0.43, red, blue)


@lru_cache(maxsize=1)
def bouma2023_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(teff grid, log10 age [Myr] grid, P [d] table (age, teff)) of the Bouma et al. 2023 slow sequence."""
    try:
        from gyrointerp.models import slow_sequence
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the simulated survey's gyrochronology needs `gyrointerp` (Bouma et al. 2023): "
                          "pip install gyrointerp") from e
    teff = np.arange(3800.0, 6200.1, 25.0)
    log_age = np.linspace(np.log10(80.0), np.log10(4000.0), 28)
    level = logging.getLogger("gyrointerp").level
    logging.getLogger("gyrointerp").setLevel(logging.WARNING)
    try:
        table = np.array([slow_sequence(teff, 10**la, verbose=False) for la in log_age], float)
    finally:
        logging.getLogger("gyrointerp").setLevel(level)
    if not np.isfinite(table).all():
        raise ValueError("gyrointerp returned non-finite slow-sequence periods")
    return teff, log_age, table


def slow_sequence_period(teff, age_gyr):
    """Slow-sequence rotation period [d] (Bouma et al. 2023, Skumanich-extended past 4 Gyr)."""
    tg, lag, table = bouma2023_table()
    t = np.clip(np.asarray(teff, float), tg[0], tg[-1])
    age_myr = np.asarray(age_gyr, float) * 1000.0
    la = np.clip(np.log10(age_myr), lag[0], lag[-1])
    i = np.clip(np.searchsorted(lag, la, side="right") - 1, 0, len(lag) - 2)
    j = np.clip(np.searchsorted(tg, t, side="right") - 1, 0, len(tg) - 2)
    wa = (la - lag[i]) / (lag[i + 1] - lag[i])
    wt = (t - tg[j]) / (tg[j + 1] - tg[j])
    p = ((1 - wa) * (1 - wt) * table[i, j] + (1 - wa) * wt * table[i, j + 1]
         + wa * (1 - wt) * table[i + 1, j] + wa * wt * table[i + 1, j + 1])
    return p * np.sqrt(np.maximum(age_myr / 4000.0, 1.0))


def convective_turnover_days(teff):
    """tau_c(Teff) of Cranmer & Saar (2011); Teff is capped at 6400 K, where their fit collapses to zero
    while Kepler F stars still show spot modulation of a few hundred ppm."""
    t = np.minimum(np.asarray(teff, float), 6400.0)
    return 314.24 * np.exp(-(t / 1952.5) - (t / 6250.0) ** 18) + 0.002


def main_sequence_period(rng, teff, mass, age_gyr, cfg):
    """Rotation period [d] on the main sequence (slow sequence, weakened braking, Kraft break, young tail)."""
    n = len(np.atleast_1d(teff))
    p_gyro = slow_sequence_period(teff, age_gyr)
    # Hot stars are handled by the Kraft-break branch below; clip so their stalling period stays finite.
    p_crit = cfg.rossby_critical * convective_turnover_days(np.minimum(teff, 6000.0))
    p = np.where(p_gyro > p_crit, p_crit * (p_gyro / np.maximum(p_crit, 1e-3)) ** 0.1, p_gyro)
    log_p = np.log10(p) + rng.normal(0.0, cfg.gyro_scatter_dex, n)
    # Not yet converged onto the slow sequence.
    t_half = cfg.young_convergence_gyr * np.asarray(mass, float) ** -3.0
    fast = rng.uniform(0.0, 1.0, n) < 1.0 / (1.0 + (np.asarray(age_gyr, float) / t_half) ** 3)
    log_fast = np.log10(0.3) + rng.uniform(0.0, 1.0, n) * (log_p - np.log10(0.3))
    log_p = np.where(fast & (log_p > np.log10(0.3)), log_fast, log_p)
    # Above the Kraft break.
    log_hot = rng.normal(np.log10(5.0), 0.25, n)
    w_hot = 1.0 / (1.0 + np.exp(-(np.asarray(teff, float) - cfg.kraft_break_teff) / 120.0))
    log_p = (1 - w_hot) * log_p + w_hot * log_hot
    return 10**log_p


def rossby_number(prot_days, teff):
    return np.asarray(prot_days, float) / convective_turnover_days(teff)


def spot_amplitude_ppm(rng, rossby, teff, cfg):
    """Photometric activity S_ph [ppm] from the Rossby number (Santos-catalogue relation, see module doc)."""
    ro = np.asarray(rossby, float)
    n = len(ro)
    lr = np.log10(np.clip(ro, 1e-4, None))
    mid = 2.95 - 1.09 * lr
    sat = 3.95  # the Santos saturation level, ~9000 ppm
    at2 = 2.95 - 1.09 * np.log10(2.0)
    log_s = np.where(ro < 0.1, sat + rng.normal(0.0, 0.25, n),
                     np.where(ro <= 2.0, mid + rng.normal(0.0, 0.45, n),
                              at2 - 3.0 * (lr - np.log10(2.0)) + rng.normal(0.0, 0.45, n)))
    log_s -= 0.8 * np.clip((np.asarray(teff, float) - 5900.0) / 600.0, 0.0, 1.0)  # thin convective envelopes
    p_quiet = cfg.quiet_fraction_max * np.clip((ro - 0.8) / 1.2, 0.0, 1.0)
    quiet = rng.uniform(0.0, 1.0, n) < p_quiet
    log_s = np.where(quiet, rng.normal(1.0, 0.3, n), log_s)
    return np.clip(10**log_s, 1.0, 3e4)


def vsini_kms(radius_rsun, prot_days, inclination_deg):
    v = 2 * np.pi * np.asarray(radius_rsun, float) * RSUN_KM / (np.asarray(prot_days, float) * 86400.0)
    return v * np.sin(np.radians(np.asarray(inclination_deg, float)))
