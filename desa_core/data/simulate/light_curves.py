"""Kepler-like light curves for a table of simulated stars.

Each light curve is the product of a few physical signals, sampled on one Kepler long-cadence grid shared by
every star and vectorised across stars (Python loops run only over spot slots and chunks of stars):

* **Starspots**: ``n_spot_slots`` spot "slots" per star; each slot hosts a sequence of spots that emerge and
  decay (lifetimes of a few rotation periods, a smooth ``sin^2`` growth/decay envelope), at random latitudes
  and longitudes, rotating with solar-like differential rotation (``P(lat) = P_eq / (1 - alpha sin^2 lat)``)
  and seen at the star's inclination with foreshortening and linear limb darkening. The summed spot signal
  is scaled so that its standard deviation equals the star's ``spot_amplitude_ppm`` (S_ph, the quantity the
  Santos et al. catalogues publish), then diluted by an unresolved companion's light
  (``1 / (1 + flux_ratio_kp)``).
* **Granulation**: red noise with a Harvey (Lorentzian) spectrum, generated in Fourier space; its amplitude
  and timescale follow nu_max (``g / sqrt(Teff)``): ~40 ppm and ~2.5 h for the Sun, hundreds of ppm and days
  for red giants.
* **Binaries**: circular-orbit eclipses (primary and secondary, depths from the radii and the Kepler-band
  surface-brightness ratio implied by ``flux_ratio_kp``) for ``'eclipsing'`` stars, and ellipsoidal variation
  (amplitude ~ q (R/a)^3 sin^2 i) for every close binary (``'close_sync'`` and ``'eclipsing'``).
* **Instrument**: white noise from the Kepler magnitude (62 ppm per 29.4-min cadence at Kp 12, 227 ppm at
  Kp 15: Kepler's shot noise plus a floor, divided by sqrt of the number of binned cadences), ~1-day gaps
  (NaN) between ~93-day quarters, a few isolated flagged cadences (NaN), and the small per-quarter offsets and
  linear trends that PDCSAP leaves.

Every light curve is divided by its median, so it is relative flux with median ~1.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

KEPLER_LONG_CADENCE_MIN = 29.4244
RSUN_PER_AU = 215.032
# Kepler's third law in solar units: a [Rsun] = 4.2084 (P/day)^(2/3) ((M1+M2)/Msun)^(1/3).
KEPLER_A_COEFF = 4.2084


@dataclass
class LightCurveConfig:
    """Cadence grid, instrument and stellar-signal knobs of the simulated Kepler light curves."""

    duration_days: float = 180.0
    cadence_minutes: float = 2 * KEPLER_LONG_CADENCE_MIN   # two long cadences binned: 58.85 min
    start_day: float = 131.5             # Kepler BJD - 2454833 of the first cadence (start of Q2)
    quarter_days: float = 93.0
    quarter_gap_days: float = 1.0        # data-downlink gap at the end of every quarter (NaN)
    missing_fraction: float = 0.002      # isolated flagged cadences (NaN), as PDCSAP has

    # Instrument noise: sigma^2 = floor^2 + photon^2 * 10^(0.4 (Kp - 12)) per 29.4-min cadence. The photon
    # term is Kepler's shot noise (Jenkins et al. 2010: 57 ppm at Kp 12, 225 ppm at Kp 15, as
    # desa_core.data.reference.kepler_white_noise_ppm); the floor (read noise, background, jitter) puts bright
    # stars at ~3x shot noise like the real Kp 7-9 light curves: 62 ppm at Kp 12, 227 ppm at Kp 15.
    noise_floor_ppm: float = 25.0
    noise_photon_ppm_kp12: float = 56.6
    quarter_offset_ppm: float = 10.0     # residual per-quarter level offset (1 sigma): PDCSAP/KADACS leave little
    quarter_trend_ppm: float = 15.0      # residual linear trend across a quarter (1 sigma, end-to-end)
    # PDCSAP-like long-period suppression (off by default: the default light curves keep the full spot signal,
    # as KEPSEISMIC/KADACS light curves and the Santos et al. catalogues do). When > 0, each quarter is
    # high-pass filtered (minus a Gaussian-smoothed copy) so that a sinusoid of this period keeps half its
    # amplitude (~94 % at P/2, ~16 % at 2P). 30-40 d reproduces how much less often McQuillan et al. 2014 (PDC-MAP)
    # recovered Santos et al.'s long periods than their short ones (docs/validation.md).
    pdcsap_filter_days: float = 0.0

    # Starspots
    n_spot_slots: int = 12               # many overlapping spots: smooth, two-sided modulation like real stars
    spot_lifetime_prot: tuple[float, float] = (2.0, 6.0)   # spot lifetime in rotation periods (uniform)
    spot_lifetime_min_days: float = 1.0
    spot_latitude_deg: tuple[float, float] = (5.0, 45.0)
    diff_rot_shear: tuple[float, float] = (0.02, 0.2)      # alpha = dOmega/Omega_eq (uniform)
    limb_darkening_u: float = 0.6

    # Granulation (Harvey profile), scaled from the Sun by nu_max = nu_max_sun (g/g_sun) (Teff/Teff_sun)^-0.5
    granulation_ppm_sun: float = 40.0
    granulation_tau_hours_sun: float = 2.5
    granulation_ppm_max: float = 1500.0
    granulation_tau_days_max: float = 10.0

    # Close binaries
    ellipsoidal_alpha: float = 1.3       # 0.15 (15+u)(1+tau)/(3-u) for u~0.6, gravity darkening tau~0.4

    chunk_stars: int = 1000              # stars generated at once (memory ~ 10 x chunk x T x 4 bytes)

    @property
    def n_binned(self) -> float:
        return self.cadence_minutes / KEPLER_LONG_CADENCE_MIN


def kepler_time_grid(cfg: LightCurveConfig | None = None) -> np.ndarray:
    """The cadence grid shared by every star: (T,) float64 days (Kepler BJD - 2454833), uniform, gaps included.

    Gaps are part of the grid (their flux is NaN), so every light curve has the same length and cadence index
    ``k`` is the same time for every star.
    """
    cfg = cfg or LightCurveConfig()
    if cfg.duration_days <= 0 or cfg.cadence_minutes <= 0:
        raise ValueError(f"LightCurveConfig: duration_days ({cfg.duration_days}) and cadence_minutes "
                         f"({cfg.cadence_minutes}) must be positive")
    dt = cfg.cadence_minutes / 1440.0
    n = int(np.floor(cfg.duration_days / dt + 1e-9))
    return cfg.start_day + dt * np.arange(n, dtype=np.float64)


def quarter_gap_mask(time: np.ndarray, cfg: LightCurveConfig | None = None) -> np.ndarray:
    """True where a cadence falls in an inter-quarter downlink gap (no data)."""
    cfg = cfg or LightCurveConfig()
    into = np.mod(np.asarray(time) - cfg.start_day, cfg.quarter_days)
    return into >= cfg.quarter_days - cfg.quarter_gap_days


def _column(stars: pd.DataFrame, name: str, default: float) -> np.ndarray:
    if name not in stars.columns:
        return np.full(len(stars), default, dtype=np.float64)
    v = pd.to_numeric(stars[name], errors="coerce").to_numpy(np.float64)
    return np.where(np.isfinite(v), v, default)


def _require(stars: pd.DataFrame, names: list[str], what: str) -> None:
    missing = [c for c in names if c not in stars.columns]
    if missing:
        raise KeyError(f"{what}: the stars table lacks columns {missing}")


def white_noise_ppm(kepmag: np.ndarray, cfg: LightCurveConfig | None = None) -> np.ndarray:
    """Per-cadence white-noise sigma [ppm] on the configured (binned) cadence, from the Kepler magnitude."""
    cfg = cfg or LightCurveConfig()
    kp = np.asarray(kepmag, dtype=np.float64)
    var = cfg.noise_floor_ppm**2 + cfg.noise_photon_ppm_kp12**2 * 10.0 ** (0.4 * (kp - 12.0))
    return np.sqrt(var / cfg.n_binned)


def granulation_params(teff: np.ndarray, logg: np.ndarray, cfg: LightCurveConfig | None = None):
    """(sigma [ppm], timescale [days]) of granulation from nu_max scaling (Kallinger et al. 2014-like)."""
    cfg = cfg or LightCurveConfig()
    numax_rel = 10.0 ** (np.asarray(logg) - 4.438) * (np.asarray(teff) / 5772.0) ** -0.5
    numax_rel = np.clip(numax_rel, 1e-3, 10.0)
    sigma = np.minimum(cfg.granulation_ppm_sun * numax_rel ** -0.55, cfg.granulation_ppm_max)
    tau = np.minimum(cfg.granulation_tau_hours_sun / 24.0 * numax_rel ** -0.9, cfg.granulation_tau_days_max)
    return sigma, tau


def _granulation(n: int, T: int, dt: float, sigma_ppm: np.ndarray, tau_days: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """(n, T) red noise with a Lorentzian (Harvey) power spectrum, unit-scaled to sigma per star."""
    nf = T // 2 + 1
    freq = np.fft.rfftfreq(T, d=dt)                                     # cycles/day
    power = 1.0 / (1.0 + (2 * np.pi * freq[None, :] * tau_days[:, None]) ** 2)
    spec = (rng.standard_normal((n, nf)) + 1j * rng.standard_normal((n, nf))) * np.sqrt(power)
    spec[:, 0] = 0.0
    x = np.fft.irfft(spec, n=T, axis=1)
    sd = x.std(axis=1, keepdims=True)
    sd[sd == 0] = 1.0
    return (x / sd * (sigma_ppm[:, None] * 1e-6)).astype(np.float32)


def _spot_signal(time: np.ndarray, prot: np.ndarray, incl_rad: np.ndarray, rng: np.random.Generator,
                 cfg: LightCurveConfig) -> np.ndarray:
    """(n, T) fractional flux deficit from evolving, differentially rotating spots (arbitrary scale, >= 0)."""
    n, T = len(prot), len(time)
    t = (time - time[0]).astype(np.float32)
    span = float(t[-1]) if T > 1 else 1.0
    u = cfg.limb_darkening_u
    cos_i = np.cos(incl_rad).astype(np.float32)[:, None]
    sin_i = np.sin(incl_rad).astype(np.float32)[:, None]
    lo, hi = cfg.spot_lifetime_prot
    lat_lo, lat_hi = np.deg2rad(cfg.spot_latitude_deg)
    deficit = np.zeros((n, T), dtype=np.float32)
    rows = np.arange(n)[:, None]
    for _ in range(cfg.n_spot_slots):
        life = np.maximum(prot * rng.uniform(lo, hi, n), cfg.spot_lifetime_min_days)        # (n,)
        offset = rng.uniform(0.0, 1.0, n) * life
        n_inst = int(np.ceil(span / life.min())) + 2
        # One spot per (slot, instance): latitude, longitude, peak size, rotation rate at its latitude.
        lat = rng.uniform(lat_lo, lat_hi, (n, n_inst)) * rng.choice([-1.0, 1.0], (n, n_inst))
        lon = rng.uniform(0.0, 2 * np.pi, (n, n_inst))
        size = rng.lognormal(0.0, 0.5, (n, n_inst))
        shear = rng.uniform(*cfg.diff_rot_shear, n)[:, None]
        # P_eq chosen so that a spot at the mean latitude rotates at prot_days (the period one measures).
        sin2_mean = np.sin(0.5 * (lat_lo + lat_hi)) ** 2
        p_eq = prot[:, None] * (1.0 - shear * sin2_mean)
        omega = (2 * np.pi * (1.0 - shear * np.sin(lat) ** 2) / p_eq).astype(np.float32)
        a_term = (cos_i * np.sin(lat)).astype(np.float32)     # mu = a + b cos(phase)
        b_term = (sin_i * np.cos(lat)).astype(np.float32)

        # In-place float32 arithmetic: this loop is the light-curve simulator's hot spot.
        env = t[None, :] + offset[:, None].astype(np.float32)
        env /= life[:, None].astype(np.float32)
        k = env.astype(np.int32)
        np.minimum(k, n_inst - 1, out=k)
        env -= k                                           # fraction of the current spot's lifetime
        env *= np.float32(np.pi)
        np.sin(env, out=env)
        np.square(env, out=env)                            # sin^2 growth and decay
        k += rows.astype(np.int32) * np.int32(n_inst)      # one flat index for all per-spot gathers
        flat = k.ravel()

        def spot(a):
            return np.take(a.astype(np.float32).ravel(), flat).reshape(n, T)

        mu = spot(omega)
        mu *= t[None, :]
        mu += spot(lon)
        np.cos(mu, out=mu)
        mu *= spot(b_term)
        mu += spot(a_term)
        np.maximum(mu, 0.0, out=mu)
        # Projected area (mu) times linear limb darkening, relative to the disc-averaged intensity.
        env *= spot(size)
        env *= mu
        mu *= np.float32(u)
        mu += np.float32(1.0 - u)
        env *= mu
        deficit += env
    deficit *= np.float32(1.0 / (1.0 - u / 3.0))
    return deficit


def _overlap_area(r1: np.ndarray, r2: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Area of the intersection of two discs of radii r1, r2 at centre distance d (broadcasting)."""
    r1, r2, d = np.broadcast_arrays(r1, r2, d)
    area = np.zeros(d.shape, dtype=np.float64)
    rmin = np.minimum(r1, r2)
    inside = d <= np.abs(r1 - r2)
    area[inside] = np.pi * rmin[inside] ** 2
    part = (~inside) & (d < r1 + r2)
    if part.any():
        a, b, s = r1[part], r2[part], d[part]
        c1 = np.clip((s**2 + a**2 - b**2) / (2 * s * a), -1, 1)
        c2 = np.clip((s**2 + b**2 - a**2) / (2 * s * b), -1, 1)
        k = (-s + a + b) * (s + a - b) * (s - a + b) * (s + a + b)
        area[part] = a**2 * np.arccos(c1) + b**2 * np.arccos(c2) - 0.5 * np.sqrt(np.maximum(k, 0))
    return area


def _eclipse_fraction(r_back: np.ndarray, r_front: np.ndarray, d: np.ndarray, u: float) -> np.ndarray:
    """Fraction of the back star's light hidden by the front star (approximate linear limb darkening)."""
    hidden = _overlap_area(r_back, r_front, d) / (np.pi * r_back**2)
    # Limb darkening evaluated where the occulter's centre projects (clipped to the limb); it matters for
    # partial eclipses and fades to 1 when the whole disc is covered.
    mu_c = np.sqrt(np.clip(1.0 - (d / r_back) ** 2, 0.0, 1.0))
    ld = (1.0 - u + u * mu_c) / (1.0 - u / 3.0)
    return hidden * ((1.0 - hidden) * ld + hidden)


def binary_signal(stars: pd.DataFrame, time: np.ndarray, rng: np.random.Generator,
                  cfg: LightCurveConfig | None = None) -> np.ndarray:
    """(n, T) relative-flux multiplier (1 = no effect) from eclipses and ellipsoidal variation.

    Circular orbits. The orbital inclination is ``orbit_inclination_deg`` when the table has it, else the
    star's ``inclination_deg`` (spin-orbit alignment, as expected for tidally synchronised binaries); for an
    ``'eclipsing'`` star whose inclination would not produce eclipses, an impact parameter is drawn
    uniformly in [0, 0.9] of (R1 + R2).
    """
    cfg = cfg or LightCurveConfig()
    n, T = len(stars), len(time)
    out = np.ones((n, T), dtype=np.float32)
    cls = stars["binary_class"].astype(str).to_numpy() if "binary_class" in stars.columns else np.full(n, "single")
    close = np.isin(cls, ["close_sync", "eclipsing"])
    porb = _column(stars, "porb_days", np.nan)
    close &= np.isfinite(porb) & (porb > 0)
    if not close.any():
        return out
    idx = np.flatnonzero(close)
    s = stars.iloc[idx]
    P = porb[idx]
    m1 = _column(s, "mass", 1.0)
    q = _column(s, "mass_ratio", 0.5)
    m2 = np.where(np.isfinite(_column(s, "comp_mass", np.nan)), _column(s, "comp_mass", np.nan), q * m1)
    r1 = np.maximum(_column(s, "radius", 1.0), 0.05)
    r2 = _column(s, "comp_radius", np.nan)
    r2 = np.maximum(np.where(np.isfinite(r2), r2, np.clip(m2, 0.08, None) ** 0.8), 0.05)
    a = _column(s, "a_rsun", np.nan)
    a = np.where(np.isfinite(a) & (a > 0), a, KEPLER_A_COEFF * P ** (2 / 3) * (m1 + m2) ** (1 / 3))
    a = np.maximum(a, 1.05 * (r1 + r2))        # no contact systems in this model
    fr = np.maximum(_column(s, "flux_ratio_kp", 0.0), 0.0)
    l1, l2 = 1.0 / (1.0 + fr), fr / (1.0 + fr)
    # The orbit's own inclination when the catalogue has it, else the spin's (aligned in synchronised pairs).
    incl = np.deg2rad(np.where(np.isfinite(_column(s, "orbit_inclination_deg", np.nan)),
                               _column(s, "orbit_inclination_deg", np.nan), _column(s, "inclination_deg", np.nan)))
    bad = ~np.isfinite(incl)
    incl[bad] = np.arccos(rng.uniform(0, 1, bad.sum()))
    ecl = cls[idx] == "eclipsing"
    no_ecl = ecl & (a * np.abs(np.cos(incl)) >= 0.98 * (r1 + r2))
    if no_ecl.any():
        b = rng.uniform(0.0, 0.9, no_ecl.sum())
        incl[no_ecl] = np.arccos(b * (r1 + r2)[no_ecl] / a[no_ecl])
    t0 = _column(s, "orbit_t0_days", np.nan)
    t0 = np.where(np.isfinite(t0), t0, time[0] + rng.uniform(0, 1, len(idx)) * P)

    phi = 2 * np.pi * (time[None, :] - t0[:, None]) / P[:, None]       # 0 at primary conjunction
    sin_i2 = np.sin(incl)[:, None] ** 2
    tides = q * (r1 / a) ** 3 * l1 + (r2 / a) ** 3 / np.maximum(q, 1e-3) * l2   # each star distorted by the other
    amp_ell = cfg.ellipsoidal_alpha * sin_i2[:, 0] * tides
    amp_ell = np.minimum(amp_ell, 0.15)        # the (R/a)^3 expansion breaks down near contact
    flux = 1.0 - amp_ell[:, None] * np.cos(2 * phi)
    if ecl.any():
        e = np.flatnonzero(ecl)
        ph = phi[e]
        ci = np.cos(incl[e])[:, None]
        d = a[e, None] * np.sqrt(np.sin(ph) ** 2 + (ci * np.cos(ph)) ** 2)
        comp_in_front = np.cos(ph) > 0
        R1, R2 = r1[e, None], r2[e, None]
        loss_primary = l1[e, None] * _eclipse_fraction(R1, R2, d, cfg.limb_darkening_u)
        loss_secondary = l2[e, None] * _eclipse_fraction(R2, R1, d, cfg.limb_darkening_u)
        flux[e] -= np.where(comp_in_front, loss_primary, loss_secondary)
    out[idx] = flux.astype(np.float32)
    return out


def pdcsap_like_filter(time: np.ndarray, flux: np.ndarray, quarter: np.ndarray, half_power_days: float) -> np.ndarray:
    """Suppress slow signals quarter by quarter as Kepler's PDC-MAP does (it removes them with the co-trending
    basis vectors): flux minus its Gaussian-smoothed copy within each quarter (normalised convolution, so gaps
    and quarter edges do not bias the smooth). The Gaussian's sigma = 0.187 ``half_power_days`` makes the
    amplitude transfer 1 - exp(-2 pi^2 sigma^2 / P^2) equal 1/2 at P = ``half_power_days``."""
    from scipy.ndimage import gaussian_filter1d

    dt = float(np.median(np.diff(time)))
    sigma = np.sqrt(np.log(2.0) / 2.0) / np.pi * half_power_days / dt
    out = np.array(flux, dtype=np.float32, copy=True)
    for q in np.unique(quarter):
        cols = np.flatnonzero(quarter == q)
        seg = out[:, cols].astype(np.float64)
        good = np.isfinite(seg)
        x = np.where(good, seg - 1.0, 0.0)
        num = gaussian_filter1d(x, sigma, axis=1, mode="constant")
        den = gaussian_filter1d(good.astype(np.float64), sigma, axis=1, mode="constant")
        with np.errstate(invalid="ignore", divide="ignore"):
            trend = np.where(den > 1e-3, num / den, 0.0)
        out[:, cols] = np.where(good, seg - trend, np.nan).astype(np.float32)
    return out


def simulate_light_curves(stars: pd.DataFrame, time: np.ndarray, rng: np.random.Generator,
                          cfg: LightCurveConfig | None = None) -> np.ndarray:
    """Kepler-like light curves of ``stars`` on ``time``: (n, T) float32 relative flux, median ~1, NaN in gaps.

    Needs columns ``prot_days``, ``spot_amplitude_ppm``, ``teff``, ``logg``, ``kepmag``; uses
    ``inclination_deg``, ``flux_ratio_kp`` and the binary columns (``binary_class``, ``porb_days``,
    ``mass_ratio``, ``comp_mass``, ``radius``, ``comp_radius``, ``a_rsun``, ``orbit_t0_days``,
    ``orbit_inclination_deg``) when present; NaNs fall back to neutral values.
    Deterministic given the state of ``rng`` (and ``cfg.chunk_stars``).
    """
    cfg = cfg or LightCurveConfig()
    _require(stars, ["prot_days", "spot_amplitude_ppm", "teff", "logg", "kepmag"], "simulate_light_curves")
    time = np.asarray(time, dtype=np.float64)
    if time.ndim != 1 or len(time) < 2 or not np.all(np.diff(time) > 0):
        raise ValueError("simulate_light_curves: time must be a 1-d increasing array of at least 2 cadences")
    n, T = len(stars), len(time)
    out = np.empty((n, T), dtype=np.float32)
    gaps = quarter_gap_mask(time, cfg)
    quarter = np.floor((time - cfg.start_day) / cfg.quarter_days).astype(np.int64)
    quarter -= quarter.min()
    n_q = int(quarter.max()) + 1
    q_pos = (np.mod(time - cfg.start_day, cfg.quarter_days) / cfg.quarter_days - 0.5).astype(np.float32)
    dt = float(np.median(np.diff(time)))
    chunk = max(1, int(cfg.chunk_stars))
    for c0 in range(0, n, chunk):
        s = stars.iloc[c0:c0 + chunk]
        m = len(s)
        prot = _column(s, "prot_days", np.nan)
        amp = np.maximum(_column(s, "spot_amplitude_ppm", 0.0), 0.0)
        bad_prot = ~(np.isfinite(prot) & (prot > 0))
        prot = np.where(bad_prot, 30.0, prot)
        amp = np.where(bad_prot, 0.0, amp)
        incl = np.deg2rad(_column(s, "inclination_deg", np.nan))
        no_i = ~np.isfinite(incl)
        incl[no_i] = np.arccos(rng.uniform(0, 1, no_i.sum()))     # isotropic when not given
        dilution = 1.0 / (1.0 + np.maximum(_column(s, "flux_ratio_kp", 0.0), 0.0))

        flux = np.ones((m, T), dtype=np.float32)
        spotted = np.flatnonzero(amp > 0)          # quiet stars draw no spots (and cost nothing)
        if len(spotted):
            deficit = _spot_signal(time, prot[spotted], incl[spotted], rng, cfg)
            sd = deficit[:, ~gaps].std(axis=1)
            scale = np.where(sd > 0, amp[spotted] * 1e-6 * dilution[spotted] / np.where(sd > 0, sd, 1.0), 0.0)
            flux[spotted] -= deficit * scale.astype(np.float32)[:, None]

        g_sig, g_tau = granulation_params(_column(s, "teff", 5772.0), _column(s, "logg", 4.44), cfg)
        flux *= 1.0 + _granulation(m, T, dt, g_sig, g_tau, rng)
        flux *= binary_signal(s, time, rng, cfg)

        # Residual systematics that PDCSAP leaves: a level offset and a gentle slope per quarter.
        off = rng.normal(0.0, cfg.quarter_offset_ppm * 1e-6, (m, n_q)).astype(np.float32)
        slope = rng.normal(0.0, cfg.quarter_trend_ppm * 1e-6, (m, n_q)).astype(np.float32)
        flux *= 1.0 + off[:, quarter] + slope[:, quarter] * q_pos[None, :]

        sigma = white_noise_ppm(_column(s, "kepmag", 14.0), cfg).astype(np.float32) * 1e-6
        flux += rng.standard_normal((m, T), dtype=np.float32) * sigma[:, None]

        flux[:, gaps] = np.nan
        if cfg.missing_fraction > 0:
            flux[rng.uniform(size=(m, T)) < cfg.missing_fraction] = np.nan
        if cfg.pdcsap_filter_days > 0:
            flux = pdcsap_like_filter(time, flux, quarter, cfg.pdcsap_filter_days)
        med = np.nanmedian(flux, axis=1)
        out[c0:c0 + m] = flux / np.where(np.isfinite(med) & (med != 0), med, 1.0)[:, None]
        log.debug("light curves: %d/%d stars", c0 + m, n)
    return out
