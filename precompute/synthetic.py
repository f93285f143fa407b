"""Synthetic BENCHMARK artifact sets: catalogue-like stars and embeddings for 10^5-10^7 stars, no model.

These sets exist to measure the index, map and dashboard at survey scale; they are not science. Each one is
labelled ``"kind": "synthetic-benchmark"`` in its manifest and the dashboard says so.

Catalogue: the survey simulator (``desa_core.data.simulate.pipeline.simulate_catalog``) draws a template
population of up to TEMPLATE_MAX stars (it runs at ~1-2k stars/s, too slow for 10^7); a set larger than the
template resamples its rows with small jitter in every continuous parameter (0.4 % in Teff, 0.02 dex in
L, logg, [Fe/H], Prot, 0.03 mag in magnitudes...). Only when the simulator cannot run does this module draw
its own vectorised approximation of the simulated survey's population (docs: simulated-survey.md):

- mass from a Salpeter-like IMF (slope 2.3) over 0.4-1.6 Msun; age uniform in 0.1 Gyr .. min(12 Gyr, 1.15 t_MS)
  with t_MS = 10 Gyr M^-2.5; [Fe/H] ~ N(-0.05, 0.2);
- luminosity and radius from main-sequence scalings with brightening along the main sequence (x = age/t_MS),
  then expansion to subgiants (x 1.0-1.08) and red giants (x > 1.08); Teff from L and R; logg = 4.438 +
  log M - 2 log R;
- BP-RP from theta = 5040/Teff (a fit to Mamajek's dwarf table within ~0.1 mag), M_G from M_bol and a
  simple bolometric correction;
- binaries (Raghavan 2010): 45 %, log-normal periods (mean log P[d] 5.03, sigma 2.28), flat mass ratio
  with a twin excess; unresolved companion light brightens M_G; P_orb < 10 d -> tidally synchronised
  (Prot = P_orb), a fraction of those eclipsing; RUWE raised for 0.1-10 yr orbits;
- rotation: Angus-like gyrochronology Prot = 26 d (age / 4.56 Gyr)^0.52 (BP-RP / 0.82)^1.3 with 0.08 dex
  scatter, a 4 % young fast-rotator tail, fast rotation above the Kraft break (6200 K), giants slow;
- sky positions in the Kepler field, distances uniform in volume out to 3 kpc or the distance where G reaches
  ~16.5 (a Kepler-like magnitude limit), extinction 0.6 mag/kpc capped at 0.5, Gaia-like parallax errors.

Embeddings: a fixed (seeded, never trained) nonlinear random projection of the standardised physical
parameters plus Gaussian noise, one projection per stream, each stream seeing the parameters its modality
would show (light curve: rotation, binarity, luminosity; spectrum: Teff, logg, [Fe/H], binarity). Stars
without a light curve or spectrum get NaN rows in that stream, like the real pipeline.

Every function works on one chunk of rows, deterministic in (seed, chunk start), so a 10^7-star set is
generated chunk by chunk in bounded memory; the same (n, seed, chunk_rows) reproduces a set exactly.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from desa_core.data.store import CATALOG_COLUMNS, assign_splits

log = logging.getLogger(__name__)

# Used only if the model configs cannot be read: the paper model's DESA and light-curve widths.
DEFAULT_DIMS = {"desa": 256, "light_curve": 256, "spectrum": 256}
PROJECTION_SEED = 20250214  # fixed: the same physical star always maps to the same synthetic embedding
KEPLER_FIELD = (290.67, 44.5)
OVERSAMPLE = 4
TEMPLATE_MAX = 20_000  # simulator stars drawn for a synthetic set (~15 s); larger sets resample them
SYNTHETIC_COLUMNS = [c for c in CATALOG_COLUMNS if c not in ("lc_row", "spec_row")] + ["delta_mag_ms", "phase"]  # RA, Dec of the field centre (deg)

# Which standardised features each synthetic stream sees (indices into _FEATURES).
_FEATURES = ["log_teff", "logg", "feh", "log_lum", "log_age", "log_prot", "log_porb", "mass_ratio",
             "is_binary", "log_ruwe", "bp_rp", "abs_g", "is_sync", "is_eclipsing"]
_STREAM_FEATURES = {
    "desa": _FEATURES,
    "light_curve": ["log_prot", "log_lum", "logg", "is_sync", "is_eclipsing", "log_porb", "log_teff"],
    "spectrum": ["log_teff", "logg", "feh", "mass_ratio", "is_binary", "log_lum", "log_prot"],
}


def model_dims(config: str = "small") -> dict[str, int]:
    """Embedding widths of a named model config ('small': 32/32/48, 'paper': 256/256/2048), so a synthetic
    set has the dimensions the real model would give it."""
    try:
        from desa_core.models.config import get_config
        cfg = get_config(config)
        return {"desa": int(cfg.dualformer.dim), "light_curve": int(cfg.light_curve.out_dim),
                "spectrum": int(cfg.spectra.out_dim)}
    except Exception as e:  # noqa: BLE001 -- an unreadable config must not stop a benchmark set
        log.warning("cannot read model config %r (%s); synthetic dims %s", config, e, DEFAULT_DIMS)
        return dict(DEFAULT_DIMS)


def simulator_template(n: int, seed: int) -> pd.DataFrame | None:
    """Catalogue of ``n`` stars from the survey simulator (``desa_core.data.simulate``), or None when it
    cannot run here. Only the columns a synthetic set keeps (:data:`SYNTHETIC_COLUMNS`)."""
    try:
        from desa_core.data.simulate.config import SimulationConfig
        from desa_core.data.simulate.pipeline import simulate_catalog
    except ImportError as e:
        log.warning("survey simulator unavailable (%s); using the vectorised approximation", e)
        return None
    log.info("synthetic: drawing a %d-star template population with the survey simulator", n)
    cat = simulate_catalog(SimulationConfig(n_stars=int(n)), seed=seed, progress=False)
    return cat[[c for c in SYNTHETIC_COLUMNS if c in cat.columns]].reset_index(drop=True)


def population(n: int, seed: int, start: int = 0, template: pd.DataFrame | None = None,
               n_total: int | None = None) -> pd.DataFrame:
    """Catalogue rows ``start .. start+n`` of a synthetic set of ``n_total`` stars.

    With a simulator ``template`` at least as large as the set, its rows are used as they are; a larger set
    resamples template rows with small jitter in every continuous parameter (so no two stars coincide);
    without a template, :func:`approximate_population` draws the rows.
    """
    if template is None:
        cat = approximate_population(n, seed, start)
    else:
        n_total = n_total or n
        if len(template) >= n_total:
            cat = template.iloc[start:start + n].copy()
        else:
            rng = np.random.default_rng([seed, start, 3])
            cat = _jitter(template.iloc[rng.integers(0, len(template), n)].copy(), rng)
    cat = cat.reset_index(drop=True)
    idx = np.arange(start, start + len(cat))
    cat["star_id"] = np.char.add("SYN", np.char.zfill(idx.astype(str), 9))
    cat["split"] = assign_splits(cat["star_id"], seed)
    return cat


def _jitter(cat: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    n = len(cat)

    def scale(col, sigma_dex):
        if col in cat:
            cat[col] = cat[col].to_numpy(np.float64) * 10 ** rng.normal(0, sigma_dex, n)

    def shift(col, sigma, common=None):
        if col in cat:
            cat[col] = cat[col].to_numpy(np.float64) + (rng.normal(0, sigma, n) if common is None else common)

    scale("teff", 0.004)
    scale("mass", 0.005)
    scale("radius", 0.005)
    scale("age_gyr", 0.02)
    p_factor = 10 ** rng.normal(0, 0.02, n)   # synchronised binaries keep Prot = P_orb
    for col in ("prot_days", "porb_days"):
        if col in cat:
            cat[col] = cat[col].to_numpy(np.float64) * p_factor
    for col, sig in (("logg", 0.02), ("feh", 0.02), ("log_lum", 0.02), ("bp_rp", 0.01), ("ra", 0.05),
                     ("dec", 0.05)):
        shift(col, sig)
    dm = rng.normal(0, 0.03, n)
    for col in ("abs_g", "gaia_g", "gaia_bp", "gaia_rp", "kepmag"):
        shift(col, 0, common=dm)
    return cat


def approximate_population(n: int, seed: int, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng([seed, start, 1])
    # Draw OVERSAMPLE x more stars than asked for, then keep n of them with probability proportional to the
    # volume in which each would pass the magnitude limit (Malmquist bias: a magnitude-limited survey like
    # Kepler sees mostly FGK stars and some giants, not the IMF's M dwarfs).
    n_out, n = n, OVERSAMPLE * n
    # Mass (IMF slope 2.3 over 0.4-1.6 Msun, inverse CDF)
    a, b, alpha = 0.4, 1.6, 2.3
    u = rng.random(n)
    mass = (a ** (1 - alpha) + u * (b ** (1 - alpha) - a ** (1 - alpha))) ** (1 / (1 - alpha))
    t_ms = 10.0 * mass ** -2.5
    age = rng.uniform(0.1, np.minimum(12.0, 1.15 * t_ms))
    feh = rng.normal(-0.05, 0.2, n)
    x = age / t_ms
    # Main sequence: L ~ M^4.5 (metal-poor stars a little brighter), brightening ~ x^2 over the MS life
    log_l = 4.5 * np.log10(mass) - 0.12 * feh + np.log10(1 + 0.8 * np.minimum(x, 1) ** 2) - 0.05
    log_r = 0.85 * np.log10(mass) + np.log10(1 + 0.35 * np.minimum(x, 1) ** 2) - 0.02
    sub = (x > 1.0) & (x <= 1.08)
    giant = x > 1.08
    f_sub = np.clip((x - 1.0) / 0.08, 0, 1)
    log_r = np.where(sub, log_r + 0.4 * f_sub, log_r)
    log_l = np.where(sub, log_l + 0.15 * f_sub, log_l)
    f_g = np.clip((x - 1.08) / 0.07, 0, 1)
    log_r = np.where(giant, log_r + 0.4 + 0.8 * f_g, log_r)
    log_teff_g = np.log10(5000 - 500 * f_g)
    log_l = np.where(giant, 2 * log_r + 4 * (log_teff_g - np.log10(5772)), log_l)
    teff = 5772 * 10 ** ((log_l - 2 * log_r) / 4)
    logg = 4.438 + np.log10(mass) - 2 * log_r
    theta = 5040 / teff
    bp_rp0 = -1.14 + 2.25 * theta + 2.0 * np.maximum(theta - 1.1, 0) ** 2
    bc_g = 0.08 - 1.6 * np.maximum(theta - 0.95, 0) ** 1.5 - 0.3 * np.maximum(0.8 - theta, 0)
    mg_single = 4.74 - 2.5 * log_l - bc_g

    # Binaries
    is_binary = rng.random(n) < 0.45
    log_p = rng.normal(5.03, 2.28, n)
    porb = np.where(is_binary, 10 ** np.clip(log_p, -0.5, 8), np.nan)
    q = np.where(rng.random(n) < 0.1, rng.uniform(0.95, 1.0, n), rng.uniform(0.1, 1.0, n))
    q = np.where(is_binary, q, np.nan)
    flux_ratio = np.where(is_binary, np.nan_to_num(q) ** 4.5, 0.0)
    delta_mag = 2.5 * np.log10(1 + flux_ratio)  # companion brightens the system
    abs_g = mg_single - delta_mag
    bp_rp = bp_rp0 + 0.05 * flux_ratio * np.clip(1 - np.nan_to_num(q), 0, 1)
    sync = is_binary & (porb < 10)
    radius_sum_over_a = 0.0046 * (10 ** log_r * 1.3) * (np.nan_to_num(porb, nan=1e9) / 365.25) ** (-2 / 3) / \
        np.maximum(mass * (1 + np.nan_to_num(q)), 0.1) ** (1 / 3)
    eclipsing = sync & (rng.random(n) < np.clip(radius_sum_over_a, 0, 1))
    binary_class = np.where(~is_binary, "single", np.where(eclipsing, "eclipsing",
                                                            np.where(sync, "close_sync", "wide")))

    # Rotation
    prot = 26.0 * (age / 4.56) ** 0.52 * (np.clip(bp_rp0, 0.45, 2.2) / 0.82) ** 1.3 * \
        10 ** rng.normal(0, 0.08, n)
    young = rng.random(n) < 0.04
    prot = np.where(young, prot * rng.uniform(0.1, 0.4, n), prot)
    prot = np.where(teff > 6200, rng.uniform(1.0, 8.0, n), prot)
    prot = np.where(giant | sub, prot * 10 ** log_r, prot)  # expanded stars spin down (angular momentum)
    prot = np.where(sync, porb, prot)

    # RUWE: astrometric wobble for 0.1-10 yr orbits
    ruwe = 1.0 + np.abs(rng.normal(0, 0.06, n))
    astrom = is_binary & (porb > 36) & (porb < 3650)
    ruwe = np.where(astrom, ruwe + rng.lognormal(np.log(0.6), 0.6, n) * np.nan_to_num(q), ruwe)

    # Sky, distance, photometry
    # Uniform in volume out to 3 kpc or to where the star would fall below a Kepler-like limit (G ~ 16.5)
    d_lim = np.clip(10 ** ((16.5 - 0.4 - abs_g) / 5 - 2), 0.02, 3.0)
    # Weighted sampling without replacement (Efraimidis-Spirakis keys); weights saturate at 1.2 kpc, beyond
    # which the Kepler sightline leaves the thin disc and star counts stop growing with volume.
    keys = np.log(rng.random(n)) / np.minimum(d_lim, 1.2) ** 3
    keep = np.sort(np.argpartition(-keys, n_out - 1)[:n_out]) if n_out < n else np.arange(n)
    (teff, logg, feh, mass, log_r, log_l, age, prot, binary_class, is_binary, porb, q, ruwe, delta_mag, abs_g,
     bp_rp, d_lim) = (a[keep] for a in (teff, logg, feh, mass, log_r, log_l, age, prot, binary_class, is_binary,
                                         porb, q, ruwe, delta_mag, abs_g, bp_rp, d_lim))
    n = n_out
    d_kpc = rng.uniform(0.01 ** 3, d_lim ** 3) ** (1 / 3)
    a_g = np.minimum(0.6 * d_kpc, 0.5) * 0.8
    gaia_g = abs_g + 5 * np.log10(d_kpc * 100) + a_g
    ebr = a_g * 0.42
    gaia_bp = gaia_g + 0.45 * (bp_rp + ebr) - 0.05
    gaia_rp = gaia_bp - (bp_rp + ebr)
    plx_err = 0.02 + 0.05 * np.clip((gaia_g - 15) / 2, 0, 2)
    parallax = 1.0 / d_kpc + rng.normal(0, 1, n) * plx_err
    ra = KEPLER_FIELD[0] + rng.uniform(-7, 7, n) / np.cos(np.radians(KEPLER_FIELD[1]))
    dec = KEPLER_FIELD[1] + rng.uniform(-7, 7, n)
    kepmag = gaia_g + 0.1 + 0.1 * (bp_rp - 0.8)
    has_lc = rng.random(n) < 0.85
    has_spec = (rng.random(n) < 0.7) | ~has_lc
    u_split = rng.random(n)
    split = np.where(u_split < 0.7, "train", np.where(u_split < 0.85, "val", "test"))
    idx = np.arange(start, start + n)
    return pd.DataFrame({
        "star_id": np.char.add("SYN", np.char.zfill(idx.astype(str), 9)),
        "ra": ra, "dec": dec, "teff": teff, "logg": logg, "feh": feh, "mass": mass, "radius": 10 ** log_r,
        "log_lum": log_l, "age_gyr": age, "prot_days": prot, "binary_class": binary_class,
        "is_binary": is_binary, "porb_days": porb, "mass_ratio": q, "gaia_g": gaia_g, "gaia_bp": gaia_bp,
        "gaia_rp": gaia_rp, "bp_rp": bp_rp, "abs_g": abs_g, "parallax_mas": parallax, "ruwe": ruwe,
        "kepmag": kepmag, "delta_mag_ms": delta_mag, "has_light_curve": has_lc, "has_spectrum": has_spec,
        "split": split,
    })


def _features(cat: pd.DataFrame) -> dict[str, np.ndarray]:
    """Standardised physical features (fixed centring/scaling, not fitted: chunks must agree)."""
    porb = cat["porb_days"].to_numpy(np.float64)
    bc = cat["binary_class"].to_numpy()
    return {
        "log_teff": (np.log10(cat["teff"].to_numpy()) - 3.75) / 0.06,
        "logg": (cat["logg"].to_numpy() - 4.2) / 0.4,
        "feh": (cat["feh"].to_numpy() + 0.05) / 0.2,
        "log_lum": (cat["log_lum"].to_numpy() - 0.1) / 0.4,
        "log_age": (np.log10(cat["age_gyr"].to_numpy()) - 0.5) / 0.4,
        "log_prot": (np.log10(cat["prot_days"].to_numpy()) - 1.1) / 0.4,
        "log_porb": np.where(np.isfinite(porb), (np.log10(np.where(np.isfinite(porb), porb, 1.0)) - 5) / 2.3, -3.0),
        "mass_ratio": np.nan_to_num(cat["mass_ratio"].to_numpy(np.float64), nan=0.0) * 2 - 1,
        "is_binary": cat["is_binary"].to_numpy(np.float64) * 2 - 1,
        "log_ruwe": np.log10(cat["ruwe"].to_numpy()) / 0.1,
        "bp_rp": (cat["bp_rp"].to_numpy() - 0.9) / 0.3,
        "abs_g": (cat["abs_g"].to_numpy() - 4.0) / 1.2,
        "is_sync": np.isin(bc, ["close_sync", "eclipsing"]).astype(np.float64) * 3,
        "is_eclipsing": (bc == "eclipsing").astype(np.float64) * 3,
    }


def _projection(name: str, n_in: int, dim: int, hidden: int = 64):
    rng = np.random.default_rng([PROJECTION_SEED, sum(map(ord, name)), n_in, dim])
    w1 = rng.normal(0, 1 / np.sqrt(n_in), (n_in, hidden))
    b1 = rng.normal(0, 0.5, hidden)
    w2 = rng.normal(0, 1 / np.sqrt(hidden + n_in), (hidden + n_in, dim))
    return w1, b1, w2


def synthetic_embeddings(cat: pd.DataFrame, dims: dict[str, int] | None = None, seed: int = 0,
                         start: int = 0, noise: float = 0.3) -> dict[str, np.ndarray]:
    """(n, d) float32 per stream for these catalogue rows; NaN rows where the modality is missing."""
    dims = dict(model_dims() if dims is None else dims)
    feats = _features(cat)
    rng = np.random.default_rng([seed, start, 2])
    out = {}
    n = len(cat)
    for name, dim in dims.items():
        cols = _STREAM_FEATURES.get(name, _FEATURES)
        f = np.stack([feats[c] for c in cols], axis=1)
        f = np.clip(np.nan_to_num(f, nan=0.0), -6, 6)
        w1, b1, w2 = _projection(name, f.shape[1], int(dim))
        h = np.concatenate([np.tanh(f @ w1 + b1), f], axis=1)
        e = (h @ w2).astype(np.float32)
        e += rng.normal(0, noise, e.shape).astype(np.float32)
        if name == "light_curve":
            e[~cat["has_light_curve"].to_numpy(bool)] = np.nan
        elif name == "spectrum":
            e[~cat["has_spectrum"].to_numpy(bool)] = np.nan
        out[name] = e
    return out
