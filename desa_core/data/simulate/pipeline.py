"""`desa simulate`: build the simulated Kepler x LAMOST survey store (catalogue, light curves, spectra).

Two steps:

1. :func:`simulate_catalog` draws a magnitude-limited sample of the Kepler-field population (population.py),
   gives each star MIST parameters (stellar.py), maybe a companion (binaries.py), Gaia/Kepler photometry and
   astrometry (photometry.py) and a rotation period and activity (rotation.py). Stars are drawn in batches
   of candidates until each modality group (light curve + spectrum, light curve only, spectrum only) is full.
   Batches are independent (one random stream each) and computed by ``workers`` processes.
   A candidate's distance is drawn from the sightline density truncated to the range where it can pass the
   magnitude limits, and the candidate is kept with probability equal to that range's share of the
   sightline population: exactly a magnitude-limited sample (Malmquist bias included) at a fraction of
   the cost of rejecting faint draws.
2. :func:`simulate_survey` writes the catalogue and, chunk by chunk, the light curves and spectra (the other
   helper modules light_curves.py and spectra.py) into a :class:`~desa_core.data.store.SurveyWriter`.

Determinism: every random stream is ``np.random.default_rng([seed, stream, index])``: catalogue batch b uses
(seed, 0, b), stellar properties (seed, 1, 0), chunk c's light curves (seed, 2, c) and spectra (seed, 3, c),
the row order (seed, 4, 0).
The same seed and config give identical bytes whatever the number of worker processes.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from desa_core.data import observed as obs
from desa_core.data.simulate import binaries as bn
from desa_core.data.simulate import photometry as ph
from desa_core.data.simulate import population as pop
from desa_core.data.simulate import rotation as rot
from desa_core.data.simulate.config import SimulationConfig, load_config
from desa_core.data.simulate.stellar import evolutionary_phase, interpolate_stars, load_grid
from desa_core.data.store import CATALOG_COLUMNS, SurveyWriter, assign_splits

log = logging.getLogger(__name__)

GENERATOR = "desa_core.data.simulate"
GENERATOR_VERSION = "1.0"
STREAM_CATALOG, STREAM_PROPERTIES, STREAM_LIGHT_CURVES, STREAM_SPECTRA, STREAM_ORDER = 0, 1, 2, 3, 4
BATCH_CANDIDATES = 20000  # fixed (not a config knob) so that the catalogue depends only on the seed and config
GROUPS = ("both", "light_curve_only", "spectrum_only")


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, index])


def _group_targets(cfg: SimulationConfig) -> dict[str, int]:
    n_lc = int(round(cfg.frac_light_curve_only * cfg.n_stars))
    n_sp = int(round(cfg.frac_spectrum_only * cfg.n_stars))
    return {"both": cfg.n_stars - n_lc - n_sp, "light_curve_only": n_lc, "spectrum_only": n_sp}


# --------------------------------------------------------------------------------------------- catalogue --

def _draw_candidates(rng: np.random.Generator, n: int, cfg: SimulationConfig, group_p: np.ndarray) -> pd.DataFrame:
    """One batch of candidates, returned already passed through the survey selection."""
    grid = load_grid()
    group = rng.choice(len(GROUPS), size=n, p=group_p)
    mass0 = pop.sample_kroupa(rng, n, *cfg.mass_range)
    age = pop.sample_ages(rng, n, *cfg.age_range_gyr, cfg.sfh_timescale_gyr)
    feh = np.clip(rng.normal(cfg.feh_mean, cfg.feh_sigma, n), -1.0, 0.5)
    ra, dec, glon, glat = pop.sample_sky(rng, n, cfg.field_center_radec, cfg.field_radius_deg)
    u_cone, u_keep, u_bin, u_acc, u_dist, cos_i, u_kp = (rng.uniform(0.0, 1.0, n) for _ in range(7))
    h = pop.scale_height_pc(age, cfg.scale_height_young_pc, cfg.scale_height_old_pc)
    table = pop.distance_table(float(np.round(np.median(glon), 0)), cfg.max_distance_pc,
                               cfg.disk_scale_length_pc, (cfg.scale_height_young_pc, cfg.scale_height_old_pc))
    sin_b = np.sin(np.radians(glat))
    rows = pop.table_rows(table, sin_b, h)
    # Each (age, b) population's share of the stars in the cone; thinning here, before the costly steps,
    # is the first factor of the acceptance probability.
    sel = np.flatnonzero(u_cone < table.weight.reshape(-1)[rows])
    group, mass0, age, feh, ra, dec, glon, glat, u_keep, u_bin, u_acc, u_dist, cos_i, u_kp, h, sin_b, rows = (
        a[sel] for a in (group, mass0, age, feh, ra, dec, glon, glat, u_keep, u_bin, u_acc, u_dist, cos_i, u_kp,
                         h, sin_b, rows))
    n = len(sel)
    st = interpolate_stars(mass0, age, feh, grid)
    phase = evolutionary_phase(st["eep"], st["logg"])
    # Kepler's target selection favoured dwarfs (and small stars): thin out giants and large light-curve stars.
    p_keep = np.where(phase == "giant", cfg.giant_keep_fraction, 1.0)
    if cfg.kepler_small_star_priority:
        small = np.clip(1.0 / np.nan_to_num(st["radius"], nan=1.0), 0.35, 1.0)
        p_keep = np.where(group != GROUPS.index("spectrum_only"), np.minimum(p_keep, small), p_keep)
    keep = st["valid"] & (u_keep < p_keep)

    is_bin = keep & (u_bin < bn.binary_fraction(mass0, cfg.binary_fraction))
    m1, r1 = np.nan_to_num(st["mass"], nan=1.0), np.nan_to_num(st["radius"], nan=1.0)
    # The period comes first (with the companion bounded by the primary: m2 <= m1, R2 <= R1), because the
    # twin excess depends on it (Moe & Di Stefano 2017).
    porb = bn.draw_periods(rng, m1, 0.7 * m1, r1, r1, cfg.log_period_mean, cfg.log_period_sigma)
    q0 = bn.draw_mass_ratios(rng, mass0, bn.twin_fraction(porb, cfg.twin_fraction, cfg.twin_fraction_close))
    comp = interpolate_stars(np.where(is_bin, q0 * mass0, 0.5), age, feh, grid)
    is_bin &= comp["valid"]
    nan = np.full(n, np.nan)
    c = {k: np.where(is_bin, v, nan) for k, v in comp.items() if k != "valid"}
    m1, r1 = st["mass"], st["radius"]
    porb = np.where(is_bin, porb, np.nan)
    a_rsun = bn.semi_major_axis_rsun(porb, m1, c["mass"])

    mag1 = ph.absolute_magnitudes(st["teff"], st["log_lum"], feh, st["logg"])
    mag2 = ph.absolute_magnitudes(c["teff"], c["log_lum"], feh, c["logg"])
    blend = {b: ph.combine_magnitudes(mag1[b], mag2[b]) for b in mag1}

    # Distance window where the star can pass its group's limits: faint limits with the blended (brightest)
    # magnitudes and no extinction, bright limits with the primary alone and maximal extinction.
    needs_lc = group != GROUPS.index("spectrum_only")
    needs_sp = group != GROUPS.index("light_curve_only")
    d_hi = 10 ** ((cfg.gaia_g_limit - blend["G"]) / 5 + 1)
    d_hi = np.where(needs_lc, np.minimum(d_hi, 10 ** ((cfg.kepmag_limit - blend["Kp"]) / 5 + 1)), d_hi)
    a_max = ph.extinction_av(np.inf, sin_b, cfg.av_per_kpc, cfg.dust_scale_height_pc)  # the whole dust column
    d_lo = np.where(needs_sp, 10 ** ((cfg.gaia_g_bright - ph.A_G_AV * a_max - mag1["G"]) / 5 + 1), 0.0)
    d_lo = np.where(needs_lc, np.maximum(d_lo, 10 ** ((cfg.kepmag_bright - ph.A_KP_AV * a_max - mag1["Kp"]) / 5 + 1)),
                    d_lo)
    ok = keep & np.isfinite(d_hi) & (d_hi > d_lo)
    f_lo = np.zeros(n)
    f_hi = np.zeros(n)
    f_lo[ok] = pop.distance_cdf(table, rows[ok], d_lo[ok])
    f_hi[ok] = pop.distance_cdf(table, rows[ok], d_hi[ok])
    ok &= u_acc < (f_hi - f_lo)
    dist = np.full(n, np.nan)
    dist[ok] = np.maximum(pop.distance_quantile(table, rows[ok], f_lo[ok] + u_dist[ok] * (f_hi[ok] - f_lo[ok])), 1.0)

    idx = np.flatnonzero(ok)
    d = dist[idx]
    av = ph.extinction_av(d, sin_b[idx], cfg.av_per_kpc, cfg.dust_scale_height_pc)
    sep = a_rsun[idx] / bn.RSUN_PER_AU / d  # projected separation ~ a/d [arcsec]
    gaia_blend = is_bin[idx] & (sep < cfg.gaia_resolve_arcsec)
    kep_blend = is_bin[idx] & (sep < cfg.kepler_resolve_arcsec)
    mu = ph.distance_modulus(d)
    absm = {b: np.where(gaia_blend, blend[b][idx], mag1[b][idx]) for b in ("G", "BP", "RP")}
    absm["Kp"] = np.where(kep_blend, blend["Kp"][idx], mag1["Kp"][idx])
    ext = {"G": ph.A_G_AV, "BP": ph.A_BP_AV, "RP": ph.A_RP_AV, "Kp": ph.A_KP_AV}
    app = {b: absm[b] + mu + ext[b] * av for b in absm}
    g = group[idx]
    lc = g != GROUPS.index("spectrum_only")
    sp = g != GROUPS.index("light_curve_only")
    passed = (app["G"] < cfg.gaia_g_limit) & (~lc | ((app["Kp"] < cfg.kepmag_limit) & (app["Kp"] > cfg.kepmag_bright))) \
        & (~sp | (app["G"] > cfg.gaia_g_bright))
    # Kepler's target list was nearly complete for bright dwarfs and ever sparser towards Kp 16.
    passed &= ~lc | (u_kp[idx] < kepler_target_keep_probability(app["Kp"], cfg))

    def f2(flux_ratio_mask, band):
        return np.where(flux_ratio_mask, 10 ** (-0.4 * (mag2[band][idx] - mag1[band][idx])), 0.0)

    out = pd.DataFrame({
        "group": np.asarray(GROUPS, dtype=object)[g],
        "ra": ra[idx], "dec": dec[idx], "glon": glon[idx], "glat": glat[idx], "distance_pc": d, "a_v": av,
        "initial_mass": mass0[idx], "age_gyr": age[idx], "feh": feh[idx],
        "teff": st["teff"][idx], "logg": st["logg"][idx], "mass": m1[idx], "radius": r1[idx],
        "log_lum": st["log_lum"][idx], "eep": st["eep"][idx], "phase": phase[idx].astype(object),
        "is_binary": is_bin[idx], "porb_days": porb[idx], "a_rsun": a_rsun[idx],
        "orbit_inclination_deg": np.degrees(np.arccos(cos_i[idx])),
        "comp_mass": c["mass"][idx], "comp_teff": c["teff"][idx], "comp_logg": c["logg"][idx],
        "comp_radius": c["radius"][idx], "comp_log_lum": c["log_lum"][idx],
        "separation_arcsec": np.where(is_bin[idx], sep, np.nan),
        "flux_ratio_g": f2(gaia_blend, "G"), "flux_ratio_kp": f2(kep_blend, "Kp"),
        "gaia_g": app["G"], "gaia_bp": app["BP"], "gaia_rp": app["RP"], "kepmag": app["Kp"],
        "abs_g": absm["G"], "bp_rp": absm["BP"] - absm["RP"],
        "bp_rp_primary": mag1["BP"][idx] - mag1["RP"][idx],
    })
    return out[passed].reset_index(drop=True)


def kepler_target_keep_probability(kepmag, cfg: SimulationConfig) -> np.ndarray:
    """Share of the stars at Kepler magnitude Kp that made Kepler's target list: 1 up to
    ``kepler_complete_kepmag``, then falling as 10^(-slope (Kp - that)). Fitted on the Kp distribution of the
    Santos et al. rotation sample (34% of it brighter than Kp 14, half of a pure magnitude-limited draw's)."""
    kp = np.asarray(kepmag, float)
    return np.minimum(1.0, 10 ** (-cfg.kepler_faint_slope * (kp - cfg.kepler_complete_kepmag)))


def _stellar_properties(cat: pd.DataFrame, rng: np.random.Generator, cfg: SimulationConfig,
                        lc_start: float, lc_span: float) -> pd.DataFrame:
    """Rotation, activity, orbits/RVs, Gaia-like errors and observed values of the selected stars."""
    n = len(cat)
    c = cat
    is_bin = c["is_binary"].to_numpy(bool)
    teff, mass, age = c["teff"].to_numpy(), c["mass"].to_numpy(), c["age_gyr"].to_numpy()
    radius = c["radius"].to_numpy()
    porb = c["porb_days"].to_numpy()

    # Rotation: main sequence, then evolved stars spun down by expansion from their late-MS state.
    prot = rot.main_sequence_period(rng, teff, mass, age, cfg)
    evolved = c["phase"].to_numpy() != "MS"
    if evolved.any():
        young = interpolate_stars(c["initial_mass"].to_numpy()[evolved], np.full(evolved.sum(), 0.3),
                                  c["feh"].to_numpy()[evolved])
        p_ms = rot.main_sequence_period(rng, young["teff"], young["mass"], age[evolved], cfg)
        r_tams = 1.35 * young["radius"]
        prot[evolved] = p_ms * np.maximum(radius[evolved] / r_tams, 1.0) ** 2
    binary_class, sync = bn.classify(is_bin, porb, c["a_rsun"].to_numpy(), radius, c["comp_radius"].to_numpy(),
                                     c["orbit_inclination_deg"].to_numpy(), cfg.sync_period_days, lc_span)
    prot = np.where(sync, porb, prot)
    incl = np.where(sync, c["orbit_inclination_deg"].to_numpy(), np.degrees(np.arccos(rng.uniform(0.0, 1.0, n))))
    ro = rot.rossby_number(prot, teff)
    out = {
        "binary_class": binary_class, "is_synchronized": sync, "prot_days": prot, "rossby": ro,
        "spot_amplitude_ppm": rot.spot_amplitude_ppm(rng, ro, teff, cfg), "inclination_deg": incl,
        "vsini_kms": rot.vsini_kms(radius, prot, incl),
    }

    # Orbits and radial velocities.
    m2 = c["comp_mass"].to_numpy()
    k1, k2 = bn.rv_semi_amplitudes(porb, mass, m2, c["orbit_inclination_deg"].to_numpy())
    t0 = lc_start + rng.uniform(0.0, 1.0, n) * np.nan_to_num(porb, nan=0.0)
    gamma = rng.normal(-20.0, 25.0, n) * (1 + 0.5 * age / 12.0)  # older stars: hotter kinematics
    epoch = rng.uniform(*cfg.lamost_epoch_range_days, n)
    rv1, rv2 = bn.radial_velocities(epoch, t0, porb, k1, k2, gamma)
    has_spec = c["has_spectrum"].to_numpy(bool)
    out.update({
        "mass_ratio": np.where(is_bin, m2 / mass, np.nan), "orbit_t0_days": np.where(is_bin, t0, np.nan),
        "k1_kms": np.where(is_bin, k1, np.nan), "k2_kms": np.where(is_bin, k2, np.nan), "rv_sys_kms": gamma,
        "spec_epoch_days": np.where(has_spec, epoch, np.nan), "rv1_kms": rv1, "rv2_kms": rv2,
        "rv_kms_obs": np.where(has_spec, rv1 + rng.normal(0.0, cfg.rv_error_kms, n), np.nan),
    })

    # Gaia-like astrometry and photometry. The observed parallax carries the Gaia DR3 zero-point (Lindegren et al.
    # 2021) that the observed-columns module removes again, as it does for a real catalogue.
    d = c["distance_pc"].to_numpy()
    g = c["gaia_g"].to_numpy()
    plx = 1000.0 / d
    plx_err = ph.parallax_error_mas(g)
    a_au = c["a_rsun"].to_numpy() / bn.RSUN_PER_AU
    zp = obs.parallax_zero_point(g, c["gaia_bp"].to_numpy() - c["gaia_rp"].to_numpy(), c["ra"].to_numpy(),
                                 c["dec"].to_numpy())
    out.update({"parallax_mas": plx, "parallax_error_mas": plx_err,
                "parallax_mas_obs": plx + zp + rng.normal(0.0, 1.0, n) * plx_err,
                "ruwe": ph.ruwe(plx, a_au, porb, out["mass_ratio"], c["flux_ratio_g"].to_numpy(), g, rng)})
    for band, col in (("G", "gaia_g"), ("BP", "gaia_bp"), ("RP", "gaia_rp")):
        err = ph.photometric_error(g, band)
        out[f"{col}_error"] = err
        out[f"{col}_obs"] = c[col].to_numpy() + rng.normal(0.0, 1.0, n) * err
    out["bp_rp_obs"] = out["gaia_bp_obs"] - out["gaia_rp_obs"]
    ref = obs.main_sequence_reference(cfg.feh_mean)
    out["delta_mag_ms"] = obs.delta_mag_main_sequence(c["bp_rp"].to_numpy(), c["abs_g"].to_numpy(), ref)

    # LAMOST-pipeline-like labels for stars with a spectrum (typical LASP errors).
    for col, sig in (("teff", 100.0), ("logg", 0.15), ("feh", 0.10)):
        out[f"{col}_obs"] = np.where(has_spec, c[col].to_numpy() + rng.normal(0.0, sig, n), np.nan)
    # A dust-map extinction estimate (what a real cross-match would carry): the true A_V with a 0.03 mag + 10 %
    # error. Drawn last, so the draws above are those of earlier versions of this stream.
    a_v = c["a_v"].to_numpy()
    out["a_v_obs"] = np.maximum(a_v + rng.normal(0.0, 1.0, n) * (0.03 + 0.1 * a_v), 0.0)
    for k, v in out.items():
        cat[k] = v
    # The observed CMD / HR columns, derived exactly as for a real catalogue (desa_core.data.observed).
    seen = pd.DataFrame({"gaia_g": cat["gaia_g_obs"], "gaia_bp": cat["gaia_bp_obs"], "gaia_rp": cat["gaia_rp_obs"],
                         "parallax_mas": cat["parallax_mas_obs"], "parallax_error_mas": cat["parallax_error_mas"],
                         "a_v": cat["a_v_obs"], "ra": cat["ra"], "dec": cat["dec"], "teff_obs": cat["teff_obs"],
                         "feh_obs": cat["feh_obs"]})
    derived, _ = obs.observed_columns(seen, ms_reference=ref)
    for k in derived.columns:
        cat[k] = derived[k].to_numpy()
    return cat


def _candidate_job(seed: int, batch: int, cfg: SimulationConfig, group_p: np.ndarray) -> pd.DataFrame:
    return _draw_candidates(_rng(seed, STREAM_CATALOG, batch), BATCH_CANDIDATES, cfg, group_p)


def _candidate_batches(seed: int, cfg: SimulationConfig, group_p: np.ndarray):
    """Candidate batches 0, 1, 2, ... in order; computed ahead by ``cfg.workers`` processes when > 1.

    Batch b always comes from stream (seed, 0, b) and batches are consumed in order, so the catalogue does not
    depend on the number of workers; batches computed ahead and not needed are discarded.
    """
    if cfg.workers <= 1:
        for b in itertools.count():
            yield _candidate_job(seed, b, cfg, group_p)
        return
    load_grid()  # read once here; forked workers inherit it
    ex = ProcessPoolExecutor(max_workers=cfg.workers, mp_context=_mp_context())
    try:
        pending: deque = deque()
        submitted = itertools.count()
        while True:
            while len(pending) < 2 * cfg.workers:
                pending.append(ex.submit(_candidate_job, seed, next(submitted), cfg, group_p))
            yield pending.popleft().result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def simulate_catalog(cfg: SimulationConfig, seed: int = 42, progress: bool = True) -> pd.DataFrame:
    """The survey catalogue (one row per star, true and observed values); no arrays."""
    from desa_core.data.simulate.light_curves import kepler_time_grid

    cfg.validate()
    time_grid = kepler_time_grid(cfg.light_curve)
    lc_start, lc_span = float(time_grid[0]), float(time_grid[-1] - time_grid[0])
    targets = _group_targets(cfg)
    p = np.array([targets[g] for g in GROUPS], float)
    p = p / p.sum()
    got: dict[str, list[pd.DataFrame]] = {g: [] for g in GROUPS}
    counts = dict.fromkeys(GROUPS, 0)
    t_start = time.time()
    n_cand = 0
    bar = _progress(total=cfg.n_stars, desc="catalogue", disable=not progress)
    batches = _candidate_batches(seed, cfg, p)
    try:
        for batch, cand in enumerate(batches):
            if all(counts[g] >= targets[g] for g in GROUPS):
                break
            n_cand += BATCH_CANDIDATES
            before = sum(counts.values())
            for g in GROUPS:
                take = cand[cand["group"] == g].iloc[:targets[g] - counts[g]]
                got[g].append(take)
                counts[g] += len(take)
            bar.update(sum(counts.values()) - before)
            if batch >= 50 and sum(counts.values()) < 1e-4 * n_cand:
                raise ValueError(f"simulation selection keeps {sum(counts.values())} of {n_cand} candidates: "
                                 f"check the magnitude limits and population ranges in the config")
    finally:
        batches.close()
        bar.close()
    cat = pd.concat([df for g in GROUPS for df in got[g]], ignore_index=True)
    log.info("catalogue: %d stars selected from %d candidates (%.2f%%) in %.1f s", len(cat), n_cand,
             100 * len(cat) / n_cand, time.time() - t_start)
    # Row order must not reveal the modality group.
    cat = cat.iloc[_rng(seed, STREAM_ORDER).permutation(len(cat))].reset_index(drop=True)
    cat["has_light_curve"] = cat["group"].to_numpy() != "spectrum_only"
    cat["has_spectrum"] = cat["group"].to_numpy() != "light_curve_only"
    cat = cat.drop(columns="group")
    cat = _stellar_properties(cat, _rng(seed, STREAM_PROPERTIES), cfg, lc_start, lc_span)
    cat.insert(0, "star_id", [f"sim-{i + 1:06d}" for i in range(len(cat))])
    cat["split"] = assign_splits(cat["star_id"], seed)
    cat["lc_row"] = np.where(cat["has_light_curve"], np.cumsum(cat["has_light_curve"]) - 1, -1).astype(np.int64)
    cat["spec_row"] = np.where(cat["has_spectrum"], np.cumsum(cat["has_spectrum"]) - 1, -1).astype(np.int64)
    for col in ("binary_class", "phase"):
        cat[col] = cat[col].astype(str)
    # The store's required columns first, then the simulation's extras.
    return cat[CATALOG_COLUMNS + [c for c in cat.columns if c not in CATALOG_COLUMNS]]


# ------------------------------------------------------------------------------------------------ arrays --

def _progress(total: int, desc: str, disable: bool = False):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="star", disable=disable, leave=False)


def _mp_context():
    """'fork' where the platform has it: workers inherit the loaded modules (fast start) and a user's script
    needs no ``if __name__ == "__main__"`` guard; 'spawn' elsewhere."""
    import multiprocessing

    return get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def _chunk_job(args) -> int:
    """Light curves and spectra of one chunk of stars, written straight into the store's memory maps."""
    (chunk, seed, cfg, stars_lc, lc0, stars_sp, sp0, paths) = args
    from desa_core.data.periods import measure_periods
    from desa_core.data.simulate.light_curves import kepler_time_grid, simulate_light_curves
    from desa_core.data.simulate.spectra import lamost_wavelength_grid, simulate_spectra

    periods = None
    if len(stars_lc):
        grid = kepler_time_grid(cfg.light_curve)
        flux = simulate_light_curves(stars_lc, grid, _rng(seed, STREAM_LIGHT_CURVES, chunk), cfg.light_curve)
        mm = np.load(paths["lc"], mmap_mode="r+")
        mm[lc0:lc0 + len(stars_lc)] = flux
        mm.flush()
        del mm
        # What a survey pipeline measures from these light curves (desa_core.data.periods).
        periods = (lc0, measure_periods(grid, flux))
    if len(stars_sp):
        sflux, sivar = simulate_spectra(stars_sp, lamost_wavelength_grid(cfg.spectrum),
                                        _rng(seed, STREAM_SPECTRA, chunk), cfg.spectrum)
        for key, arr in (("spec_flux", sflux), ("spec_ivar", sivar)):
            mm = np.load(paths[key], mmap_mode="r+")
            mm[sp0:sp0 + len(stars_sp)] = arr
            mm.flush()
            del mm
    return len(stars_lc) + len(stars_sp), periods


def _with_measured_periods(catalog: pd.DataFrame, measured, n_lc: int) -> pd.DataFrame:
    """The catalogue with the periods measured from each chunk's light curves (PERIOD_COLUMNS; NaN / False for
    stars without a light curve)."""
    from desa_core.data.periods import PERIOD_COLUMNS

    by_row = {}
    for lc0, res in measured:
        for k, v in res.items():
            by_row.setdefault(k, np.zeros(n_lc, dtype=v.dtype))[lc0:lc0 + len(v)] = v
    lc_row = catalog["lc_row"].to_numpy(np.int64)
    has = lc_row >= 0
    catalog = catalog.copy()
    for k in PERIOD_COLUMNS:
        if k == "rotation_detected":
            vals = np.zeros(len(catalog), dtype=bool)
        else:
            vals = np.full(len(catalog), np.nan if k.endswith("_days") else 0.0)
        if k in by_row and n_lc:
            vals[has] = by_row[k][lc_row[has]]
        catalog[k] = vals
    return catalog


def simulate_survey(n_stars: int | None = None, seed: int = 42, out: str | os.PathLike = "data/survey",
                    config: SimulationConfig | str | os.PathLike | dict | None = None,
                    progress: bool = True) -> Path:
    """Generate the simulated Kepler x LAMOST survey store at ``out`` and return its path.

    ``config``: None (defaults), a :class:`SimulationConfig`, a dict or a YAML file overriding its fields;
    ``n_stars`` (when given) overrides the config's.
    """
    from desa_core.data.simulate.light_curves import kepler_time_grid
    from desa_core.data.simulate.spectra import lamost_wavelength_grid

    cfg = load_config(config)
    if n_stars is not None:
        cfg = dataclasses.replace(cfg, n_stars=int(n_stars)).validate()
    t0 = time.time()
    log.info("simulating %d stars (seed %d) into %s", cfg.n_stars, seed, out)
    catalog = simulate_catalog(cfg, seed, progress=progress)
    time_grid = kepler_time_grid(cfg.light_curve)
    wavelength = lamost_wavelength_grid(cfg.spectrum)
    n_lc, n_sp = int(catalog["has_light_curve"].sum()), int(catalog["has_spectrum"].sum())
    log.info("catalogue done in %.1f s: %d light curves x %d cadences, %d spectra x %d pixels",
             time.time() - t0, n_lc, len(time_grid), n_sp, len(wavelength))
    with SurveyWriter(out, n_lc=n_lc, n_spec=n_sp, time=time_grid, wavelength=wavelength) as w:
        paths = {"lc": w.tmp / "light_curves" / "flux.npy", "spec_flux": w.tmp / "spectra" / "flux.npy",
                 "spec_ivar": w.tmp / "spectra" / "ivar.npy"}
        jobs = []
        for chunk, r0 in enumerate(range(0, len(catalog), cfg.chunk_size)):
            part = catalog.iloc[r0:r0 + cfg.chunk_size]
            lc = part[part["has_light_curve"]]
            sp = part[part["has_spectrum"]]
            lc0 = int(lc["lc_row"].iloc[0]) if len(lc) else 0
            sp0 = int(sp["spec_row"].iloc[0]) if len(sp) else 0
            jobs.append((chunk, seed, cfg, lc.reset_index(drop=True), lc0, sp.reset_index(drop=True), sp0, paths))
        bar = _progress(total=n_lc + n_sp, desc="light curves + spectra", disable=not progress)
        measured = []
        t1 = time.time()
        if cfg.workers > 1 and len(jobs) > 1:
            # Memory maps are flushed by the parent before workers write the same files; the parent's own
            # maps stay clean (never written), so its later flush cannot overwrite the workers' rows.
            for a in (w.light_curves, w.spectra_flux, w.spectra_ivar):
                a.flush()
            with ProcessPoolExecutor(max_workers=min(cfg.workers, len(jobs)), mp_context=_mp_context()) as ex:
                futures = [ex.submit(_chunk_job, j) for j in jobs]
                for f in as_completed(futures):
                    done, periods = f.result()
                    bar.update(done)
                    measured.append(periods)
        else:
            for j in jobs:
                done, periods = _chunk_job(j)
                bar.update(done)
                measured.append(periods)
        bar.close()
        catalog = _with_measured_periods(catalog, [m for m in measured if m is not None], n_lc)
        log.info("light curves and spectra done in %.1f s (%d chunks, %d workers)", time.time() - t1, len(jobs),
                 cfg.workers)
        info = {"source": "simulated", "generator": GENERATOR, "generator_version": GENERATOR_VERSION,
                "seed": int(seed), "config": dataclasses.asdict(cfg)}
        path = w.commit(catalog, info=info)
    log.info("survey store written to %s in %.1f s", path, time.time() - t0)
    return path
