"""Rotation periods, Rossby numbers, spot-modulation amplitudes and projected rotation velocities.

* Slow sequence: Bouma, Palumbo & Hillenbrand (2023, ``gyrointerp``), the cluster-calibrated Prot(Teff, age)
  for 3800-6200 K and 0.08-4 Gyr (alpha Per ... M67), tabulated once per process; beyond the Teff range it
  holds the edge value. Beyond 4 Gyr P ~ t^n: Skumanich n = 0.5 for stars hotter than 5900 K (whose weakened
  braking is the Rossby threshold below), n = 0.25 below 5300 K: with Cranmer & Saar's long tau_c the K/M
  dwarfs never reach Ro ~ 2, yet Kepler's detected old K dwarfs barely rotate slower than M67's (Santos et
  al.: median ~24 d at 4000-5000 K, 3% above 45 d). Two things make that so here: slower braking (n = 0.25)
  and a K-dwarf activity knee at a lower Ro (below), so the oldest, slowest K dwarfs turn too quiet to be
  detected. Fitted on the *measured* periods (desa_core.data.periods) of the simulated light curves against
  Santos per 500-K bin: KS <= 0.22 in every bin from 3500 to 6500 K on the surveys of seeds 42 and 7.
  The Angus et al. (2019) polynomial (Sun -> 26 d at 4.56 Gyr) is kept as :func:`angus2019_period` for
  comparison: its Praesepe-only calibration makes old K dwarfs rotate ~40% slower than M67's.
* Weakened magnetic braking (van Saders et al. 2016): once Ro = P/tau_c passes ``rossby_critical`` (~2, the
  Sun's), the star barely spins down further (P grows as P_gyro^0.1 beyond that point).
* Scatter about the slow sequence: ``gyro_scatter_dex`` (0.03 dex, as cluster benchmark members scatter about
  the Bouma model at 0.67-4 Gyr).
* Convective turnover time tau_c(Teff): Cranmer & Saar (2011), 12.9 d for the Sun.
* Kraft break: a gradual one, blended in around ``kraft_break_teff`` (6350 K, logistic width 150 K): hot
  stars get P log-normal (0.2 dex) around a median falling with Teff (9 d at 6200 K, 5.5 d at 6500 K, 3.9 d
  at 6800 K, 3 d at 7100 K), as Santos et al. 2021 measured (6.7, 4.4, 3.4 d at 6250-6500, 6500-6750,
  6750-7000 K).
* Young fast rotators: stars that have not yet converged onto the slow sequence, with probability
  1 / (1 + (age / t_half)^3), t_half = 50 Myr (M/Msun)^-3 (half converged: G dwarfs by ~60 Myr, K5 by
  ~150 Myr as in the Pleiades, 0.5 Msun by ~400 Myr, 0.4 Msun by ~800 Myr as in Praesepe), get P
  log-uniform between 0.3 d and the slow-sequence value.
* Subgiants and giants conserve angular momentum as they expand: P = P_MS (R / R_TAMS)^2 (hundreds of days
  on the lower RGB, up to ~10^5 d near its tip, where no spot modulation would be measurable anyway).
* Tidally synchronised binaries: P = P_orb (set in the pipeline, which owns the binary model).
* Spot amplitude S_ph (the Santos et al. 2019/2021 photometric activity proxy), tuned so that the stars a
  Kepler pipeline would detect match Santos's detected ones: log10 S_ph[ppm] = 3.1 - 0.9 log10 Ro (0.45 dex
  scatter) for 0.1 < Ro < Ro_knee, saturated at ~9000 ppm below Ro 0.1, falling as Ro^-3 beyond the knee
  (Ro_knee 1.2 for G dwarfs, 0.85 at 5000 K, 0.6 at 3600 K: K/M dwarfs turn quiet sooner); plus a Teff
  offset at fixed Ro (+0.15 dex for K dwarfs, -0.25 dex at 5900 K, -1 dex at 6200 K: thin convective
  envelopes). A growing fraction of the slow rotators (from none at Ro_knee - 0.2 to ``quiet_fraction_max``
  1.2 beyond that) and up to half of the F stars are magnetically quiet (~10 ppm, no detectable modulation), as the ~65% of
  Kepler dwarfs without a measured period are (Santos et al. 2019, 2021). For F stars the Ro of the knee and
  of the quiet fraction uses tau_c held at its 5950-K value.
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
# Median period [log10 d] of stars above the Kraft break against Teff.
HOT_TEFF = (6200.0, 6500.0, 6800.0, 7100.0)
HOT_LOG_PERIOD = tuple(np.log10((9.0, 5.5, 3.9, 3.0)))
# Offset [dex] of the spot amplitude at fixed Rossby number against Teff: at fixed Ro, Kepler's K dwarfs are
# more spotted than G dwarfs and F stars much less (Santos et al.: saturated ~10,700 ppm at 4500-5500 K vs
# ~700 ppm at 6000-6500 K; Ro 0.6-1: ~2,300 vs ~750 ppm): thin convective envelopes.
SPOT_TEFF = (3750.0, 4250.0, 4750.0, 5200.0, 5600.0, 5900.0, 6200.0, 6500.0)
HOT_QUIET_MAX = 0.5
SPOT_OFFSET_DEX = (-0.3, -0.15, 0.0, 0.05, 0.0, -0.25, -1.0, -1.2)
# Rossby number of the activity knee (beyond it S_ph falls as Ro^-3 and a growing share of stars is quiet)
# against Teff: K and M dwarfs turn quiet at a lower Ro (Cranmer & Saar tau_c) than G dwarfs. Fitted so that the
# measured periods of the simulated K dwarfs match Santos et al. per 500-K bin (KS <= 0.25; their slow K dwarfs
# have 0.2 dex lower S_ph at 30-45 d than a G-dwarf knee gives, so fewer old K dwarfs are detected).
SPOT_KNEE_TEFF = (3600.0, 4200.0, 5000.0, 5600.0)
SPOT_KNEE_ROSSBY = (0.45, 0.7, 0.85, 1.2)


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
    from desa_core.data.reference import ReferenceUnavailable, gyrointerp_models

    try:
        # Not a plain import: gyrointerp writes a cache folder in the home directory when imported, which
        # fails where the home folder is missing or read-only; this wrapper redirects it.
        slow_sequence = gyrointerp_models().slow_sequence
    except ReferenceUnavailable as e:  # pragma: no cover - a declared dependency
        raise ImportError("the simulated survey's gyrochronology needs `gyrointerp` (Bouma et al. 2023): "
                          f"pip install gyrointerp ({e})") from e
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


def old_braking_index(teff):
    """Exponent n of P ~ t^n beyond 4 Gyr: Skumanich (0.5) for G/F stars, whose weakened braking sets in at
    Ro ~ 2 (see :func:`main_sequence_period`), 0.25 for K/M dwarfs, whose long convective turnover keeps them
    below that threshold although Kepler's detected old K dwarfs barely rotate slower than M67's (Santos et
    al.: median ~24 d at 4000-5000 K, 3% above 45 d; see the module doc)."""
    return np.interp(np.asarray(teff, float), [5300.0, 5900.0], [0.25, 0.5])


def slow_sequence_period(teff, age_gyr):
    """Slow-sequence rotation period [d] (Bouma et al. 2023; beyond 4 Gyr P ~ t^n, n from
    :func:`old_braking_index`)."""
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
    return p * np.maximum(age_myr / 4000.0, 1.0) ** old_braking_index(teff)


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
    # Above the Kraft break: the hotter, the faster (Santos et al. 2021 medians: 6.7, 4.4, 3.4 d at 6250-6500,
    # 6500-6750, 6750-7000 K), blended in gradually over a few hundred K.
    t = np.asarray(teff, float)
    log_hot = np.interp(t, HOT_TEFF, HOT_LOG_PERIOD) + rng.normal(0.0, 0.2, n)
    w_hot = 1.0 / (1.0 + np.exp(-(t - cfg.kraft_break_teff) / 150.0))
    log_p = (1 - w_hot) * log_p + w_hot * log_hot
    return 10**log_p


def rossby_number(prot_days, teff):
    return np.asarray(prot_days, float) / convective_turnover_days(teff)


def spot_amplitude_ppm(rng, rossby, teff, cfg):
    """Photometric activity S_ph [ppm] from the Rossby number (Santos-catalogue relation, see module doc)."""
    # The activity knee and the quiet fraction follow Ro with tau_c held at its 5950-K value for hotter stars:
    # Kepler F stars stay spotted (a few hundred ppm) at periods where CS11's collapsing tau_c gives Ro ~ 2-3
    # (real median Prot 11.8 d at 6000-6250 K); their lower amplitude is the Teff offset below.
    t = np.asarray(teff, float)
    ro = np.asarray(rossby, float) * convective_turnover_days(t) / convective_turnover_days(np.minimum(t, 5950.0))
    n = len(ro)
    lr = np.log10(np.clip(ro, 1e-4, None))
    # Santos-like power law up to Ro ~ 1.2, then a steep drop: real detected amplitudes fall from ~1,800 ppm at
    # Ro 0.7-1 to ~300 ppm at Ro 1.5-2.5.
    mid = 3.1 - 0.9 * lr
    sat = 3.95  # the Santos saturation level, ~9000 ppm
    ro_k = np.interp(t, SPOT_KNEE_TEFF, SPOT_KNEE_ROSSBY)
    at_k = 3.1 - 0.9 * np.log10(ro_k)
    log_s = np.where(ro < 0.1, sat + rng.normal(0.0, 0.25, n),
                     np.where(ro <= ro_k, mid + rng.normal(0.0, 0.45, n),
                              at_k - 3.0 * (lr - np.log10(ro_k)) + rng.normal(0.0, 0.45, n)))
    log_s += np.interp(t, SPOT_TEFF, SPOT_OFFSET_DEX)
    p_quiet = cfg.quiet_fraction_max * np.clip((ro - (ro_k - 0.2)) / 1.2, 0.0, 1.0)
    # Many F stars show no spot modulation at all: Santos et al. (2021) find periods in a smaller share of
    # them than of G/K dwarfs (F stars are 19% of their rotation sample, more of the magnitude-limited one).
    p_quiet = np.maximum(p_quiet, HOT_QUIET_MAX * np.clip((t - 5900.0) / 500.0, 0.0, 1.0))
    quiet = rng.uniform(0.0, 1.0, n) < p_quiet
    log_s = np.where(quiet, rng.normal(1.0, 0.3, n), log_s)
    return np.clip(10**log_s, 1.0, 3e4)


def vsini_kms(radius_rsun, prot_days, inclination_deg):
    v = 2 * np.pi * np.asarray(radius_rsun, float) * RSUN_KM / (np.asarray(prot_days, float) * 86400.0)
    return v * np.sin(np.radians(np.asarray(inclination_deg, float)))
