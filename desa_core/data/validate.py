"""`desa validate-survey`: compare a (simulated) survey with real published Kepler and open-cluster data, offline.

Each comparison puts the real distribution next to the simulated one in a PNG figure and reduces the difference to
a few numbers in ``distances.json``:

=========================  ===================================================================================
comparison                 real reference (see :mod:`desa_core.data.reference` for citations)
=========================  ===================================================================================
``prot_teff``              Santos et al. 2019+2021 Kepler rotation periods: 2-D Prot-Teff density, KS of Prot
                           per 500-K Teff bin, detection fraction (stars with a period / stars analysed)
``stellar_parameters``     Teff, logg, Kp distributions of the same Santos rotation sample (KS)
``clusters``               Pleiades, Praesepe, NGC 6811, Ruprecht 147, M67 periods (gyrointerp) and the Bouma
                           et al. 2023 slow-sequence model vs simulated single stars of similar age
``spot_amplitude_rossby``  Santos S_ph vs Rossby number (Cranmer & Saar 2011 tau_c on both sides): power-law
                           fit for 0.1 < Ro < 2, saturation level, KS of log S_ph per Ro bin
``cmd_binaries``           Mamajek dwarf sequence in (BP-RP, M_G): offsets of simulated singles and binaries
``fast_rotators``          Simonian et al. 2019: 59% of 1.5 < P < 7 d rotators sit >= 0.3 mag above the MS
                           (28% of all rotators); they are 1.7% of the stars analysed
``light_curves``           white noise vs Kp (Kepler shot noise; three real KADACS light curves) and example
                           simulated light curves beside the three real ones
``period_recovery``        measured (ACF) periods within 10 % of the truth per Prot bin, next to the real share
                           of Santos (KEPSEISMIC) periods McQuillan et al. 2014 recovered from PDC-MAP
=========================  ===================================================================================

A comparison whose reference package is not installed, or whose catalogue columns the survey lacks, is recorded as
``{"status": "skipped", "reason": ...}``; the others still run.

Comparable selection on the simulated side (what Kepler would have measured): stars with a light curve (when the
store has any), logg >= 3.5 (Santos removed red giants), Kp <= 16, and a *detectable* spot signal,
``spot_amplitude_ppm >= max(40 ppm, 0.75 sigma_cad(Kp))``. That threshold is the 5th percentile of S_ph in 1-mag Kp
bins of the real Santos catalogue expressed in units of the per-cadence white noise (0.7-0.85 sigma at Kp 12-16,
never below ~40 ppm), so it reproduces the catalogue's lower envelope rather than an ideal detector.
A catalogue column ``rotation_detected`` (bool), when the simulator provides one, replaces this rule.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

from desa_core.data import reference as ref
from desa_core.data.store import SurveyStore, atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

TEFF_BINS = np.arange(3500.0, 7000.0, 500.0)            # 3500-4000, ..., 6000-6500 K
RO_BINS = np.array([0.03, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5, 2.5])
FAST_PROT = (1.5, 7.0)                                   # Simonian et al. 2019 rapid-rotator period range
COOL_DWARF_TEFF = (3500.0, 5250.0)                       # unevolved lower main sequence for the binarity test
PHOTOMETRIC_BINARY_DMAG = 0.3
KP_MAX = 16.0
LOGG_MIN = 3.5
DETECTION_FLOOR_PPM = 40.0
DETECTION_SIGMA = 0.75
KEPLER_LC_DAYS = 29.4244 / 1440.0
CLUSTER_AGE_WINDOW_DEX = 0.1


class MissingColumns(Exception):
    pass


# ---------------------------------------------------------------------------------------------- small helpers

def _need(cat: pd.DataFrame, cols) -> None:
    missing = [c for c in cols if c not in cat.columns]
    if missing:
        raise MissingColumns(f"survey catalogue lacks columns {missing}")


def ks(a, b) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic (0 = same distribution, 1 = disjoint); None if a side is empty."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return None
    return float(stats.ks_2samp(a, b).statistic)


def hellinger_2d(x1, y1, x2, y2, bins) -> float | None:
    """Hellinger distance between two 2-D histograms on the same grid (0 = identical, 1 = no overlap)."""
    h1, _, _ = np.histogram2d(x1, y1, bins=bins)
    h2, _, _ = np.histogram2d(x2, y2, bins=bins)
    if h1.sum() == 0 or h2.sum() == 0:
        return None
    p, q = h1 / h1.sum(), h2 / h2.sum()
    return float(np.sqrt(max(0.0, 1.0 - np.sum(np.sqrt(p * q)))))


def _med(x) -> float | None:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None


def _pct(x, q) -> float | None:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if len(x) else None


def _r(v, nd=4):
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def _savefig(fig, path: Path) -> str:
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _subplots(nrows=1, ncols=1, **kw):
    """A figure not registered with pyplot: no GUI backend, nothing to close, the user's backend untouched."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=kw.pop("figsize", (6, 4)))
    return fig, fig.subplots(nrows, ncols, **kw)


def detection_threshold_ppm(kepmag) -> np.ndarray:
    """Smallest spot amplitude S_ph [ppm] counted as a detected rotation period at Kepler magnitude Kp."""
    return np.maximum(DETECTION_FLOOR_PPM, DETECTION_SIGMA * _sim_noise_29min(kepmag))


def _sim_noise_29min(kepmag) -> np.ndarray:
    # The project's per-cadence calibration (55 ppm at Kp 12, 180 ppm at Kp 15), log-linear between.
    kp = np.asarray(kepmag, dtype=float)
    return 55.0 * 10 ** (np.log10(180.0 / 55.0) / 3.0 * (kp - 12.0))


def simulated_rotation_sample(cat: pd.DataFrame) -> pd.DataFrame:
    """Simulated stars whose rotation period a Kepler rotation pipeline would have reported (see module doc)."""
    _need(cat, ["prot_days", "teff", "logg"])
    m = np.isfinite(cat["prot_days"].to_numpy(float)) & (cat["prot_days"].to_numpy(float) > 0)
    if "has_light_curve" in cat and cat["has_light_curve"].any():
        m &= cat["has_light_curve"].to_numpy(bool)
    m &= cat["logg"].to_numpy(float) >= LOGG_MIN
    if "kepmag" in cat:
        m &= cat["kepmag"].to_numpy(float) <= KP_MAX
    if "rotation_detected" in cat:
        m &= cat["rotation_detected"].to_numpy(bool)
    elif "spot_amplitude_ppm" in cat and "kepmag" in cat:
        m &= cat["spot_amplitude_ppm"].to_numpy(float) >= detection_threshold_ppm(cat["kepmag"].to_numpy(float))
    out = cat[m]
    if "prot_acf_days" in cat and "rotation_detected" in cat:
        # Santos et al. publish measured periods: compare like with like (the true period stays as prot_true_days).
        out = out.assign(prot_true_days=out["prot_days"], prot_days=out["prot_acf_days"])
    return out


def _analysed_sample(cat: pd.DataFrame) -> pd.DataFrame:
    """Simulated stars a rotation search would have analysed (light curve, not a giant, Kp <= 16)."""
    m = cat["logg"].to_numpy(float) >= LOGG_MIN
    if "has_light_curve" in cat and cat["has_light_curve"].any():
        m &= cat["has_light_curve"].to_numpy(bool)
    if "kepmag" in cat:
        m &= cat["kepmag"].to_numpy(float) <= KP_MAX
    return cat[m]


def real_rotation_sample() -> pd.DataFrame:
    t = ref.santos_rotation().table
    return t[(t["logg"] >= LOGG_MIN) & (t["kepmag"] <= KP_MAX)]


# -------------------------------------------------------------------------------------------- the comparisons

def compare_prot_teff(cat: pd.DataFrame, store, out: Path) -> dict:
    """Prot vs Teff: Santos rotation sample vs simulated detected rotators."""
    real = real_rotation_sample()
    sim = simulated_rotation_sample(cat)
    analysed = _analysed_sample(cat)
    bins = []
    for lo, hi in zip(TEFF_BINS[:-1], TEFF_BINS[1:]):
        in_r, in_s = real["teff"].between(lo, hi, "left"), sim["teff"].between(lo, hi, "left")
        r, s = real["prot_days"][in_r].to_numpy(), sim["prot_days"][in_s].to_numpy()
        n_analysed = int(analysed["teff"].between(lo, hi, "left").sum())
        bins.append({"teff_lo": float(lo), "teff_hi": float(hi), "n_real": int(len(r)), "n_sim": int(len(s)),
                     "ks": _r(ks(r, s)), "median_prot_real": _r(_med(r), 2), "median_prot_sim": _r(_med(s), 2),
                     "p16_real": _r(_pct(r, 16), 2), "p84_real": _r(_pct(r, 84), 2),
                     "p16_sim": _r(_pct(s, 16), 2), "p84_sim": _r(_pct(s, 84), 2),
                     "median_sph_real": _r(_med(real["sph_ppm"][in_r]), 1),
                     "median_sph_sim": _r(_med(sim["spot_amplitude_ppm"][in_s]), 1)
                     if "spot_amplitude_ppm" in sim else None,
                     "detection_fraction_sim": _r(len(s) / n_analysed, 3) if n_analysed else None})
    in_range = lambda d: d[(d["teff"] >= TEFF_BINS[0]) & (d["teff"] < TEFF_BINS[-1])]  # noqa: E731
    rr, ss = in_range(real), in_range(sim)
    grid = (np.linspace(TEFF_BINS[0], TEFF_BINS[-1], 13), np.linspace(-0.6, 2.2, 29))
    h = hellinger_2d(rr["teff"], np.log10(rr["prot_days"]), ss["teff"], np.log10(ss["prot_days"]), grid)
    ks_vals = [b["ks"] for b in bins if b["ks"] is not None and b["n_sim"] >= 20]
    det_sim = len(sim) / len(analysed) if len(analysed) else None

    fig, ax = _subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1, 1, 1.1], "wspace": 0.3})
    from matplotlib.colors import LogNorm
    norm = LogNorm(vmin=3e-3, vmax=1.0)  # fraction of stars per cell relative to the peak, same scale both sides
    for a, d, title in ((ax[0], rr, f"Santos et al. 2019+2021 (N={len(rr)})"),
                        (ax[1], ss, f"simulated, detected rotation (N={len(ss)})")):
        if len(d):
            h2, xe, ye = np.histogram2d(d["teff"], np.log10(d["prot_days"]), bins=grid)
            h2 = np.where(h2 > 0, h2 / h2.max(), np.nan)
            a.pcolormesh(xe, ye, h2.T, cmap="viridis", norm=norm)
        a.set_xlim(TEFF_BINS[-1], TEFF_BINS[0])
        a.set_xlabel("Teff [K]")
        a.set_ylabel("log10 Prot [d]")
        a.set_title(title, fontsize=10)
    centres = 0.5 * (TEFF_BINS[:-1] + TEFF_BINS[1:])
    for key, c, lab in (("real", "k", "Santos"), ("sim", "C1", "simulated")):
        med = [b[f"median_prot_{key}"] or np.nan for b in bins]
        lo = [b[f"p16_{key}"] or np.nan for b in bins]
        hi = [b[f"p84_{key}"] or np.nan for b in bins]
        ax[2].plot(centres, med, "o-", color=c, label=f"{lab} median")
        ax[2].fill_between(centres, lo, hi, color=c, alpha=0.2, label=f"{lab} 16-84%")
    for x, b in zip(centres, bins):
        if b["ks"] is not None:
            ax[2].annotate(f"KS {b['ks']:.2f}", (x, 0.03), xycoords=("data", "axes fraction"), ha="center",
                           fontsize=8)
    ax[2].set_yscale("log")
    ax[2].set_xlim(TEFF_BINS[-1], TEFF_BINS[0])
    ax[2].set_xlabel("Teff [K]")
    ax[2].set_ylabel("Prot [d]")
    ax[2].legend(fontsize=8)
    ax[2].set_title("Prot per 500-K bin", fontsize=10)
    fig_name = _savefig(fig, out / "prot_teff.png")
    return {
        "figures": [fig_name], "citation": ref.santos_rotation().citation,
        "selection": f"logg >= {LOGG_MIN}, Kp <= {KP_MAX}; simulated: light curve and detectable spot amplitude "
                     f"(>= max({DETECTION_FLOOR_PPM} ppm, {DETECTION_SIGMA} x per-cadence noise))",
        "n_real": int(len(rr)), "n_sim": int(len(ss)),
        "hellinger_2d": _r(h), "ks_by_teff_bin": bins,
        "ks_max": _r(max(ks_vals)) if ks_vals else None, "ks_mean": _r(float(np.mean(ks_vals))) if ks_vals else None,
        "detection_fraction_real": _r(ref.santos_detection_fraction()), "detection_fraction_sim": _r(det_sim),
        # Kepler pipelines rarely recover periods beyond ~45 d: the long-period tail of cool dwarfs
        "frac_prot_gt_45d_cool_real": _r(_frac(rr, lambda d: d["prot_days"] > 45.0)),
        "frac_prot_gt_45d_cool_sim": _r(_frac(ss, lambda d: d["prot_days"] > 45.0)),
        "frac_prot_lt_7d_real": _r(float(np.mean(rr["prot_days"] < 7.0)) if len(rr) else None),
        "frac_prot_lt_7d_sim": _r(float(np.mean(ss["prot_days"] < 7.0)) if len(ss) else None),
    }


def _frac(d: pd.DataFrame, cond) -> float | None:
    cool = d[d["teff"] < 5000.0]
    return float(np.mean(cond(cool))) if len(cool) else None


def compare_stellar_parameters(cat: pd.DataFrame, store, out: Path) -> dict:
    _need(cat, ["teff", "logg", "kepmag"])
    real = real_rotation_sample()
    sim = simulated_rotation_sample(cat)
    fig, ax = _subplots(1, 3, figsize=(15, 4))
    res = {}
    for a, col, rng, lab in ((ax[0], "teff", (3000, 7500), "Teff [K]"), (ax[1], "logg", (3.5, 5.0), "logg"),
                             (ax[2], "kepmag", (7, 16.5), "Kp [mag]")):
        r, s = real[col].to_numpy(float), sim[col].to_numpy(float)
        res[col] = {"ks": _r(ks(r, s)), "median_real": _r(_med(r), 3), "median_sim": _r(_med(s), 3)}
        b = np.linspace(*rng, 40)
        a.hist(r, bins=b, density=True, histtype="step", color="k", lw=1.5, label="Santos rotation sample")
        if len(s):
            a.hist(s, bins=b, density=True, histtype="step", color="C1", lw=1.5, label="simulated, detected")
        a.set_xlabel(lab)
        a.set_title(f"KS = {res[col]['ks']}", fontsize=10)
    ax[0].legend(fontsize=8)
    return {"figures": [_savefig(fig, out / "stellar_parameters.png")], "citation": ref.santos_rotation().citation,
            "n_real": int(len(real)), "n_sim": int(len(sim)), **res}


def compare_clusters(cat: pd.DataFrame, store, out: Path) -> dict:
    """Open-cluster rotation sequences vs simulated single dwarfs of similar age."""
    _need(cat, ["prot_days", "teff", "logg", "age_gyr"])
    singles = cat
    if "binary_class" in cat:  # synchronized binaries are removed from the cluster benchmarks too
        singles = cat[cat["binary_class"].isin(["single", "wide"])]
    singles = singles[(singles["logg"] >= 4.0) & np.isfinite(singles["prot_days"])]
    teff_edges = np.arange(3800.0, 6201.0, 300.0)
    names = list(ref.CLUSTERS)
    fig, axes = _subplots(1, len(names), figsize=(4.2 * len(names), 4.2), sharey=True)
    res, model_grid = {}, np.linspace(3800, 6200, 100)
    for a, name in zip(axes, names):
        c = ref.cluster_rotation(name)
        age = c.notes["age_myr"]
        real = c.table[c.table["benchmark"]]
        real = real[(real["teff"] >= 3800) & (real["teff"] <= 6200)]
        # The Bouma et al. model stops at 4 Gyr, so simulated stars older than that (M67's window) are left out
        # rather than compared with an extrapolation.
        lo, hi = age / 1e3 * 10 ** -CLUSTER_AGE_WINDOW_DEX, min(age / 1e3 * 10 ** CLUSTER_AGE_WINDOW_DEX, 4.0)
        sim = singles[(singles["age_gyr"] >= lo) & (singles["age_gyr"] <= hi)
                      & (singles["teff"] >= 3800) & (singles["teff"] <= 6200)]
        model_age = min(age, 4000.0)
        resid_real = np.log10(real["prot_days"].to_numpy() / ref.bouma_slow_sequence(real["teff"], age))
        members = c.table[(c.table["teff"] >= 3800) & (c.table["teff"] <= 6200)]
        resid_members = np.log10(members["prot_days"].to_numpy() / ref.bouma_slow_sequence(members["teff"], age))
        # simulated stars are compared with the model at their own age, so the window width does not smear them
        resid_sim = np.log10(sim["prot_days"].to_numpy(float) / ref.bouma_slow_sequence_at_ages(
            sim["teff"], np.minimum(sim["age_gyr"].to_numpy(float) * 1e3, 4000.0)))
        offsets = []
        for t0, t1 in zip(teff_edges[:-1], teff_edges[1:]):
            r = real["prot_days"][(real["teff"] >= t0) & (real["teff"] < t1)]
            s = sim["prot_days"][(sim["teff"] >= t0) & (sim["teff"] < t1)]
            mr, ms = _med(r), _med(s)
            offsets.append({"teff_lo": float(t0), "teff_hi": float(t1), "n_real": int(len(r)), "n_sim": int(len(s)),
                            "median_prot_real": _r(mr, 2), "median_prot_sim": _r(ms, 2),
                            "offset_days": _r(ms - mr, 2) if mr is not None and ms is not None else None})
        valid = [o for o in offsets if o["offset_days"] is not None]
        res[name] = {
            "age_myr": age, "citation": c.citation, "sim_age_window_gyr": [_r(lo, 3), _r(hi, 3)],
            "n_real": int(len(real)), "n_sim": int(len(sim)),
            "median_log10_prot_over_model_real": _r(_med(resid_real)),
            "median_log10_prot_over_model_sim": _r(_med(resid_sim)),
            "scatter_dex_real": _r(_mad_sigma(resid_real)), "scatter_dex_sim": _r(_mad_sigma(resid_sim)),
            "scatter_dex_real_all_members": _r(_mad_sigma(resid_members)),  # robust (MAD) sigma
            "ks_residual_to_model": _r(ks(resid_real, resid_sim)),
            "median_sequence_offsets": offsets,
            "mean_abs_offset_days": _r(float(np.mean([abs(o["offset_days"]) for o in valid])), 2) if valid else None,
        }
        allm = c.table
        a.scatter(allm["teff"], allm["prot_days"], s=6, c="0.75", label="members (all periods)", zorder=1)
        if len(sim):
            a.scatter(sim["teff"], sim["prot_days"], s=12, c="C1", marker="^", alpha=0.6, zorder=2,
                      label=f"simulated {lo:.2g}-{hi:.2g} Gyr")
        a.scatter(real["teff"], real["prot_days"], s=9, c="k", label="benchmark (single, slow seq.)", zorder=3)
        a.plot(model_grid, ref.bouma_slow_sequence(model_grid, model_age), "C0-", label="Bouma+2023 model", zorder=4)
        a.set_xlim(6500, 3500)
        a.set_yscale("log")
        a.set_ylim(0.3, 80)
        a.set_xlabel("Teff [K]")
        a.set_title(f"{name} ({age:g} Myr): N_sim={len(sim)}", fontsize=10)
    axes[0].set_ylabel("Prot [d]")
    axes[0].legend(fontsize=7, loc="lower left")
    return {"figures": [_savefig(fig, out / "clusters.png")], "model_citation": ref.CITATIONS["bouma2023"],
            "selection": "real: BPH23 benchmark members 3800-6200 K; simulated: single/wide, logg >= 4, age within "
                         f"+-{CLUSTER_AGE_WINDOW_DEX} dex of the cluster age and <= 4 Gyr (the model's range)", "by_cluster": res}


def _mad_sigma(x) -> float | None:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if len(x) < 3:
        return None
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def _fit_activity(ro, sph) -> dict:
    m = np.isfinite(ro) & np.isfinite(sph) & (sph > 0) & (ro > 0.1) & (ro < 2.0)
    if m.sum() < 10:
        return {"n_fit": int(m.sum())}
    x, y = np.log10(ro[m]), np.log10(sph[m])
    slope, intercept = np.polyfit(x, y, 1)
    sat = sph[np.isfinite(ro) & (ro < 0.1) & (sph > 0)]
    return {"n_fit": int(m.sum()), "slope": _r(slope, 3), "intercept": _r(intercept, 3),
            "scatter_dex": _r(float(np.std(y - (slope * x + intercept))), 3),
            "median_sph_ppm_ro_lt_0p1": _r(_med(sat), 1), "n_ro_lt_0p1": int(len(sat))}


def compare_spot_amplitude(cat: pd.DataFrame, store, out: Path) -> dict:
    _need(cat, ["spot_amplitude_ppm", "prot_days", "teff"])
    real = real_rotation_sample()
    real = real[(real["teff"] >= 3500) & (real["teff"] <= 6500) & (real["sph_ppm"] > 0)]
    sim = simulated_rotation_sample(cat)
    sim = sim[(sim["teff"] >= 3500) & (sim["teff"] <= 6500)]
    ro_r = ref.rossby_number(real["prot_days"], real["teff"])
    ro_s = ref.rossby_number(sim["prot_days"], sim["teff"])
    s_r, s_s = real["sph_ppm"].to_numpy(float), sim["spot_amplitude_ppm"].to_numpy(float)
    by_bin = []
    for lo, hi in zip(RO_BINS[:-1], RO_BINS[1:]):
        a, b = s_r[(ro_r >= lo) & (ro_r < hi)], s_s[(ro_s >= lo) & (ro_s < hi)]
        by_bin.append({"ro_lo": float(lo), "ro_hi": float(hi), "n_real": int(len(a)), "n_sim": int(len(b)),
                       "ks_log_sph": _r(ks(np.log10(a), np.log10(b[b > 0]))),
                       "median_sph_real": _r(_med(a), 1), "median_sph_sim": _r(_med(b), 1)})
    own = None
    if "rossby" in sim:
        own = _r(_med(sim["rossby"].to_numpy(float) / ro_s), 3)
    res = {"citation": f"{ref.santos_rotation().citation}; tau_c: {ref.CITATIONS['cranmer_saar2011']}",
           "n_real": int(len(real)), "n_sim": int(len(sim)),
           "fit_real": _fit_activity(ro_r, s_r), "fit_sim": _fit_activity(ro_s, s_s), "by_rossby_bin": by_bin,
           "ks_log_sph_overall": _r(ks(np.log10(s_r), np.log10(s_s[s_s > 0]))),
           "median_rossby_real": _r(_med(ro_r), 3), "median_rossby_sim": _r(_med(ro_s), 3),
           "ks_log_rossby": _r(ks(np.log10(ro_r), np.log10(ro_s))),
           "sim_rossby_column_over_cs11_median": own}
    # S_ph measured from the simulated light curves the way Santos et al. define it, to check the column's meaning
    meas = _measured_sph(store, sim, n_max=150)
    if meas is not None:
        res["measured_over_catalogue_sph_median"] = meas

    fig, ax = _subplots(1, 2, figsize=(11, 4.5), sharey=True)
    grid = (np.linspace(-1.7, 0.8, 40), np.linspace(0.5, 5.0, 40))
    x = np.linspace(-1.5, 0.6, 50)
    for a, ro, s, fit, title in ((ax[0], ro_r, s_r, res["fit_real"], f"Santos (N={len(s_r)})"),
                                 (ax[1], ro_s, s_s, res["fit_sim"], f"simulated, detected (N={len(s_s)})")):
        ok = (ro > 0) & (s > 0) & np.isfinite(ro)
        if ok.any():
            a.hist2d(np.log10(ro[ok]), np.log10(s[ok]), bins=grid, cmap="magma_r", cmin=1)
        if "slope" in fit:
            a.plot(x, fit["intercept"] + fit["slope"] * x, "C0-",
                   label=f"fit 0.1<Ro<2: {fit['intercept']:.2f} {fit['slope']:+.2f} log Ro")
        a.plot(x, 2.95 - 1.09 * x, "k--", lw=1, label="project target 2.95 - 1.09 log Ro")
        a.set_xlabel("log10 Ro (Prot / tau_c, Cranmer & Saar 2011)")
        a.set_title(title, fontsize=10)
        a.legend(fontsize=8, loc="lower left")
    ax[0].set_ylabel("log10 S_ph [ppm]")
    res["figures"] = [_savefig(fig, out / "spot_amplitude_rossby.png")]
    return res


def _measured_sph(store, sim: pd.DataFrame, n_max: int) -> float | None:
    """Median over stars of S_ph(measured from the light curve) / spot_amplitude_ppm (catalogue)."""
    if store is None or "lc_row" not in sim or not (sim["lc_row"] >= 0).any():
        return None
    rows = sim[(sim["lc_row"] >= 0) & (sim["spot_amplitude_ppm"] > 0)]
    rows = rows.sample(min(n_max, len(rows)), random_state=0)
    ratios = []
    for _, s in rows.iterrows():
        flux = np.asarray(store.light_curves[int(s["lc_row"])], dtype=float)
        t = store.time
        ok = np.isfinite(flux)
        if ok.sum() < 100:
            continue
        f = (flux / np.nanmedian(flux) - 1.0) * 1e6
        sph = santos_sph(t[ok], f[ok], float(s["prot_days"]))
        if sph is not None:
            ratios.append(sph / float(s["spot_amplitude_ppm"]))
    return _r(_med(ratios), 3) if ratios else None


def santos_sph(time: np.ndarray, flux_ppm: np.ndarray, prot_days: float) -> float | None:
    """S_ph as Santos et al. define it: mean standard deviation in segments of 5 Prot, minus the white noise."""
    span = time[-1] - time[0]
    seg = 5.0 * prot_days
    if seg > span:
        seg = span  # shorter light curves than 5 Prot: one segment
    edges = np.arange(time[0], time[-1] + seg, seg)
    idx = np.digitize(time, edges)
    sds = [np.std(flux_ppm[idx == i]) for i in np.unique(idx) if (idx == i).sum() > 20]
    if not sds:
        return None
    noise = white_noise_ppm(flux_ppm)
    return float(np.sqrt(max(np.mean(sds) ** 2 - noise ** 2, 0.0)))


def white_noise_ppm(flux_ppm: np.ndarray) -> float:
    """Point-to-point white noise of a light curve: robust sigma of first differences / sqrt(2)."""
    f = np.asarray(flux_ppm, float)
    d = np.diff(f[np.isfinite(f)])
    if len(d) < 3:
        return float("nan")
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def _delta_mag(cat: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Magnitudes above the single-star main sequence: the simulator's own column, else from Mamajek's sequence."""
    if "delta_mag_ms" in cat:
        return cat["delta_mag_ms"].to_numpy(float), "delta_mag_ms column (simulator's single-star MS)"
    _need(cat, ["bp_rp", "abs_g"])
    return (ref.main_sequence_abs_g(cat["bp_rp"]) - cat["abs_g"].to_numpy(float),
            "Mamajek dwarf sequence at the star's BP-RP")


def compare_cmd(cat: pd.DataFrame, store, out: Path) -> dict:
    _need(cat, ["bp_rp", "abs_g", "is_binary"])
    ms = ref.mamajek_dwarf_sequence()
    bp_rp, abs_g = cat["bp_rp"].to_numpy(float), cat["abs_g"].to_numpy(float)
    resid = ref.main_sequence_abs_g(bp_rp) - abs_g  # > 0: brighter than the Mamajek dwarf at that colour
    binary = cat["is_binary"].to_numpy(bool)
    dwarf = (cat["logg"].to_numpy(float) >= 4.2) if "logg" in cat else np.ones(len(cat), bool)
    colour_ok = (bp_rp > 0.75) & (bp_rp < 2.5)  # K/M dwarfs barely evolve: a clean single-star sequence
    sel_s, sel_b = dwarf & colour_ok & ~binary, dwarf & colour_ok & binary
    by_class = {}
    if "binary_class" in cat:
        dm, how = _delta_mag(cat)
        for c in ("single", "wide", "close_sync", "eclipsing"):
            m = (cat["binary_class"] == c).to_numpy() & dwarf
            by_class[c] = {"n": int(m.sum()), "median_delta_mag_ms": _r(_med(dm[m]), 3),
                           "frac_above_0p3": _r(float(np.mean(dm[m] >= PHOTOMETRIC_BINARY_DMAG)) if m.any() else None)}
    # Photometric scale check independent of binarity: colour and M_G of single dwarfs at their Teff.
    by_teff = []
    if "teff" in cat:
        tt = ms.table.sort_values("teff")
        teff = cat["teff"].to_numpy(float)
        single_dwarf = dwarf & ~binary
        for lo in TEFF_BINS[:-1]:
            m = single_dwarf & (teff >= lo) & (teff < lo + 500)
            dc = bp_rp[m] - np.interp(teff[m], tt["teff"], tt["bp_rp"])
            dg = abs_g[m] - np.interp(teff[m], tt["teff"], tt["abs_g"])
            by_teff.append({"teff_lo": float(lo), "teff_hi": float(lo + 500), "n": int(m.sum()),
                            "bp_rp_minus_mamajek": _r(_med(dc), 3), "abs_g_minus_mamajek": _r(_med(dg), 3)})
    res = {"citation": ms.citation, "n_single": int(sel_s.sum()), "n_binary": int(sel_b.sum()),
           "single_dwarfs_vs_mamajek_at_teff": by_teff,
           "single_offset_from_mamajek_mag": _r(_med(resid[sel_s]), 3),
           "single_scatter_mag": _r(_mad_sigma(resid[sel_s]), 3),
           "binary_offset_from_mamajek_mag": _r(_med(resid[sel_b]), 3),
           "frac_binaries_above_0p3": _r(float(np.mean(resid[sel_b] - (_med(resid[sel_s]) or 0) >= 0.3))
                                         if sel_b.any() else None),
           "by_binary_class": by_class,
           "selection": "logg >= 4.2, 0.75 < BP-RP < 2.5 (unevolved K/M dwarfs)"}
    fig, ax = _subplots(1, 2, figsize=(12, 5))
    t = ms.table.sort_values("bp_rp")
    a = ax[0]
    a.scatter(bp_rp[~binary], abs_g[~binary], s=2, c="0.5", alpha=0.5, label="simulated singles")
    a.scatter(bp_rp[binary], abs_g[binary], s=3, c="C3", alpha=0.6, label="simulated unresolved binaries")
    a.plot(t["bp_rp"], t["abs_g"], "C0-", lw=2, label="Mamajek dwarf sequence")
    a.plot(t["bp_rp"], t["abs_g"] - 0.753, "C0--", lw=1.5, label="equal-mass twin (-0.753 mag)")
    a.set_xlim(0.3, 3.0)
    a.set_ylim(12, -1)
    a.set_xlabel("BP - RP")
    a.set_ylabel("M_G")
    a.legend(fontsize=8, markerscale=3)
    b = ax[1]
    bins = np.linspace(-1.0, 1.6, 53)
    b.hist(resid[sel_s], bins=bins, histtype="step", color="0.3", lw=1.5, label="singles")
    b.hist(resid[sel_b], bins=bins, histtype="step", color="C3", lw=1.5, label="binaries")
    b.axvline(0, color="C0")
    b.axvline(0.753, color="C0", ls="--")
    b.axvline(PHOTOMETRIC_BINARY_DMAG, color="k", ls=":", label="0.3 mag (photometric binary)")
    b.set_xlabel("M_G(Mamajek at BP-RP) - M_G  [mag above the dwarf sequence]")
    b.set_title("K/M dwarfs, 0.75 < BP-RP < 2.5", fontsize=10)
    b.legend(fontsize=8)
    res["figures"] = [_savefig(fig, out / "cmd_binaries.png")]
    return res


def _binomial_err(p: float | None, n: int) -> float | None:
    return None if p is None or n == 0 else float(np.sqrt(max(p * (1 - p), 1.0 / n) / n))


def compare_fast_rotators(cat: pd.DataFrame, store, out: Path) -> dict:
    _need(cat, ["prot_days", "teff", "logg"])
    dm, how = _delta_mag(cat)
    cat = cat.assign(_dm=dm)
    analysed = _analysed_sample(cat)
    rot = simulated_rotation_sample(cat)

    def cool(d):
        return d[(d["teff"] >= COOL_DWARF_TEFF[0]) & (d["teff"] < COOL_DWARF_TEFF[1]) & (d["logg"] >= 4.2)]

    rot_c, ana_c = cool(rot), cool(analysed)
    fast = rot_c[(rot_c["prot_days"] > FAST_PROT[0]) & (rot_c["prot_days"] < FAST_PROT[1])]

    def above(d):
        return float(np.mean(d["_dm"] >= PHOTOMETRIC_BINARY_DMAG)) if len(d) else None

    real = ref.santos_rotation().table
    n_all = len(real) + len(ref.santos_no_rotation().table)
    real_fast_all = float(np.sum((real["prot_days"] > FAST_PROT[0]) & (real["prot_days"] < FAST_PROT[1])) / n_all)
    fast_all_sim = rot[(rot["prot_days"] > FAST_PROT[0]) & (rot["prot_days"] < FAST_PROT[1])]
    res = {
        "citation": f"{ref.CITATIONS['simonian2019']}; {ref.santos_rotation().citation}",
        "delta_mag_source": how,
        "selection": f"{COOL_DWARF_TEFF[0]:g} <= Teff < {COOL_DWARF_TEFF[1]:g} K, logg >= 4.2, detected rotation",
        "n_fast_sim": int(len(fast)), "n_rotators_sim": int(len(rot_c)),
        "frac_fast_above_ms_real_simonian": 0.59, "frac_fast_above_ms_sim": _r(above(fast)),
        "frac_fast_above_ms_sim_err": _r(_binomial_err(above(fast), len(fast))),
        "frac_all_rotators_above_ms_real_simonian": 0.28, "frac_all_rotators_above_ms_sim": _r(above(rot_c)),
        "rapid_fraction_of_analysed_real_simonian": 0.017,
        "rapid_fraction_of_analysed_sim": _r(len(fast) / len(ana_c) if len(ana_c) else None),
        "rapid_fraction_all_teff_real_santos": _r(real_fast_all),
        "rapid_fraction_all_teff_sim": _r(len(fast_all_sim) / len(analysed) if len(analysed) else None),
    }
    if "binary_class" in fast:
        res["fast_binary_class_counts_sim"] = {k: int(v) for k, v in fast["binary_class"].value_counts().items()}
    fig, ax = _subplots(1, 2, figsize=(11, 4.2))
    labels = ["1.5<P<7 d\n>=0.3 mag above MS", "all rotators\n>=0.3 mag above MS", "rapid fraction\nof analysed x10"]
    realv = [0.59, 0.28, 0.17]
    simv = [res["frac_fast_above_ms_sim"] or 0, res["frac_all_rotators_above_ms_sim"] or 0,
            10 * (res["rapid_fraction_of_analysed_sim"] or 0)]
    xx = np.arange(3)
    ax[0].bar(xx - 0.2, realv, 0.4, color="k", label="Simonian et al. 2019 (Kepler)")
    ax[0].bar(xx + 0.2, simv, 0.4, color="C1", label="simulated")
    ax[0].set_xticks(xx, labels, fontsize=8)
    ax[0].legend(fontsize=8)
    ax[0].set_title("cool dwarfs: fast rotation and binarity", fontsize=10)
    b = ax[1]
    b.scatter(rot_c["prot_days"], rot_c["_dm"], s=4, c="0.5", label="simulated rotators")
    if "binary_class" in rot_c:
        cs = rot_c[rot_c["binary_class"].isin(["close_sync", "eclipsing"])]
        b.scatter(cs["prot_days"], cs["_dm"], s=8, c="C3", label="close (synchronized) binaries")
    b.axhline(PHOTOMETRIC_BINARY_DMAG, color="k", ls=":")
    b.axvspan(*FAST_PROT, color="C0", alpha=0.1)
    b.set_xscale("log")
    b.set_xlabel("Prot [d]")
    b.set_ylabel("mag above single-star MS")
    b.legend(fontsize=8)
    res["figures"] = [_savefig(fig, out / "fast_rotators.png")]
    return res


def compare_light_curves(cat: pd.DataFrame, store, out: Path) -> dict:
    if store is None or store.light_curves.shape[0] == 0:
        raise MissingColumns("the survey has no light curves")
    _need(cat, ["kepmag", "lc_row"])
    real = ref.kepler_light_curves()
    dt = float(np.nanmedian(np.diff(store.time)))
    to_lc = np.sqrt(dt / KEPLER_LC_DAYS)  # noise per store cadence -> per 29.4-min long cadence
    with_lc = cat[cat["lc_row"] >= 0]
    pick = with_lc.sample(min(400, len(with_lc)), random_state=0)
    kp, noise = pick["kepmag"].to_numpy(float), []
    for r in pick["lc_row"]:
        f = np.asarray(store.light_curves[int(r)], dtype=float)
        noise.append(white_noise_ppm((f / np.nanmedian(f) - 1.0) * 1e6) * to_lc)
    noise = np.asarray(noise)
    ratio = noise / ref.kepler_white_noise_ppm(kp)
    by_kp = []
    for lo in np.arange(8.0, 17.0, 1.0):
        m = (kp >= lo) & (kp < lo + 1)
        by_kp.append({"kp_lo": float(lo), "n": int(m.sum()), "median_noise_ppm": _r(_med(noise[m]), 1),
                      "shot_noise_ppm": _r(float(ref.kepler_white_noise_ppm(lo + 0.5)), 1)})
    real_pts = [{"kic": lc.kic, "kepmag": lc.kepmag, "teff": lc.teff,
                 "noise_ppm": _r(white_noise_ppm(lc.flux_ppm[lc.observed]), 1),
                 "shot_noise_ppm": _r(float(ref.kepler_white_noise_ppm(lc.kepmag)), 1),
                 "std_ppm": _r(float(np.std(lc.flux_ppm[lc.observed])), 1)} for lc in real]
    res = {"citation": f"{ref.CITATIONS['kadacs']}; {ref.CITATIONS['kepler_noise']}",
           "store_cadence_minutes": _r(dt * 1440, 2), "n_sim": int(len(pick)),
           "median_noise_over_shot_sim": _r(_med(ratio), 3), "by_kp": by_kp, "real_light_curves": real_pts,
           "median_noise_over_shot_real": _r(_med([p["noise_ppm"] / p["shot_noise_ppm"] for p in real_pts]), 3)}

    fig, ax = _subplots(figsize=(7, 4.5))
    ax.scatter(kp, noise, s=5, c="C1", label="simulated (per 29.4-min cadence)")
    g = np.linspace(7, 17, 50)
    ax.plot(g, ref.kepler_white_noise_ppm(g), "k-", label="Kepler shot noise (Jenkins+2010)")
    ax.plot(g, _sim_noise_29min(g), "k:", label="project calibration (55 @ Kp12, 180 @ Kp15)")
    ax.scatter([p["kepmag"] for p in real_pts], [p["noise_ppm"] for p in real_pts], s=60, c="C0", marker="*",
               label="real KADACS light curves", zorder=5)
    ax.set_yscale("log")
    ax.set_xlabel("Kp [mag]")
    ax.set_ylabel("white noise [ppm]")
    ax.legend(fontsize=8)
    figs = [_savefig(fig, out / "noise_vs_kp.png")]

    # Example light curves: the three real stars (all in the Santos catalogue) next to the simulated detected
    # rotator closest in Teff and log Prot, so like is shown with like (the real ones are bright and active).
    santos = ref.santos_rotation().table.set_index("kic")
    candidates = simulated_rotation_sample(with_lc) if len(simulated_rotation_sample(with_lc)) else with_lc
    fig, axes = _subplots(len(real), 2, figsize=(14, 2.6 * len(real)))
    axes = np.atleast_2d(axes)
    span = float(np.nanmax(store.time) - np.nanmin(store.time))
    examples = []
    for i, lc in enumerate(real):
        a = axes[i, 0]
        sel = lc.time <= span
        a.plot(lc.time[sel], lc.flux_ppm[sel], ",", color="k")
        p_real = float(santos.at[lc.kic, "prot_days"]) if lc.kic in santos.index else np.nan
        s_real = float(santos.at[lc.kic, "sph_ppm"]) if lc.kic in santos.index else np.nan
        a.set_title(f"real KIC {lc.kic}: Teff {lc.teff:.0f} K, Kp {lc.kepmag:.1f}, Prot {p_real:.1f} d, "
                    f"S_ph {s_real:.0f} ppm (first {span:.0f} d)", fontsize=9)
        a.set_ylabel("ppm")
        d = ((candidates["teff"] - lc.teff) / 100.0) ** 2
        if np.isfinite(p_real):
            d = d + (np.log10(candidates["prot_days"] / p_real) / 0.05) ** 2
        s = candidates.loc[d.idxmin()]
        f = np.asarray(store.light_curves[int(s["lc_row"])], dtype=float)
        b = axes[i, 1]
        b.plot(store.time, (f / np.nanmedian(f) - 1.0) * 1e6, ",", color="C1")
        sph = s.get("spot_amplitude_ppm", np.nan)
        b.set_title(f"simulated {s['star_id']}: Teff {s['teff']:.0f} K, Kp {s['kepmag']:.1f}, "
                    f"Prot {s['prot_days']:.1f} d, S_ph {sph:.0f} ppm, {s.get('binary_class', '')}", fontsize=9)
        examples.append(str(s["star_id"]))
    axes[-1, 0].set_xlabel("days")
    axes[-1, 1].set_xlabel("days (Kepler BJD - 2454833)")
    fig.tight_layout()
    figs.append(_savefig(fig, out / "light_curves.png"))
    res["example_star_ids"] = examples
    res["figures"] = figs
    return res


def compare_period_recovery(cat: pd.DataFrame, store, out: Path) -> dict:
    """How often the measured period (desa_core.data.periods: detected, within 10 % of the truth) recovers the
    true one, per bin of true Prot, normalised at 10-15 d; next to the real ratio of periods found from PDC-MAP
    light curves (McQuillan et al. 2014) among those found from KEPSEISMIC ones (Santos et al.), normalised the
    same way. A survey simulated with the PDCSAP-like filter (LightCurveConfig.pdcsap_filter_days) should fall
    with Prot like the real ratio; an unfiltered one (the default, KEPSEISMIC-like) should stay flatter."""
    _need(cat, ["prot_days", "prot_acf_days", "rotation_detected", "logg"])
    a = _analysed_sample(cat)
    real = ref.pdc_recovery()
    t = real.table
    ok = a["rotation_detected"].to_numpy(bool) & (np.abs(a["prot_acf_days"] / a["prot_days"] - 1) < 0.1).to_numpy()
    bins, ref_i = [], None
    for i, r in enumerate(t.itertuples()):
        m = ((a["prot_days"] >= r.prot_lo_days) & (a["prot_days"] < r.prot_hi_days)).to_numpy()
        bins.append({"prot_lo_days": float(r.prot_lo_days), "prot_hi_days": float(r.prot_hi_days), "n_sim": int(m.sum()),
                     "recovered_sim": _r(float(ok[m].mean()), 3) if m.any() else None,
                     "recovered_real": _r(r.n_agree_10pct / r.n_santos, 3)})
        if r.prot_lo_days == 10:
            ref_i = i
    for b in bins:
        base_s, base_r = bins[ref_i]["recovered_sim"], bins[ref_i]["recovered_real"]
        b["relative_sim"] = _r(b["recovered_sim"] / base_s, 3) if b["recovered_sim"] is not None and base_s else None
        b["relative_real"] = _r(b["recovered_real"] / base_r, 3)
    cfg = ((getattr(store, "manifest", None) or {}).get("config") or {}).get("light_curve", {}) if store else {}
    fig, ax = _subplots(figsize=(7, 4.2))
    x = [0.5 * (b["prot_lo_days"] + b["prot_hi_days"]) for b in bins]
    ax.plot(x, [b["relative_real"] for b in bins], "ko-", label="real: McQuillan (PDC-MAP) / Santos (KEPSEISMIC)")
    ax.plot(x, [np.nan if b["relative_sim"] is None else b["relative_sim"] for b in bins], "o-", color="C1",
            label=f"simulated (PDCSAP-like filter {cfg.get('pdcsap_filter_days', 0) or 'off'})")
    ax.set_xlabel("true / Santos Prot [d]")
    ax.set_ylabel("recovered within 10 %, relative to 10-15 d")
    ax.legend(fontsize=8)
    return {"figures": [_savefig(fig, out / "period_recovery.png")], "citation": real.citation,
            "pdcsap_filter_days": cfg.get("pdcsap_filter_days", None), "n_analysed": int(len(a)),
            "detected_fraction": _r(float(a["rotation_detected"].mean()), 3) if len(a) else None,
            "precision_within_10pct": _r(float(ok.sum() / max(int(a["rotation_detected"].sum()), 1)), 3),
            "by_period": bins}


COMPARISONS: dict[str, Callable] = {
    "prot_teff": compare_prot_teff,
    "stellar_parameters": compare_stellar_parameters,
    "clusters": compare_clusters,
    "spot_amplitude_rossby": compare_spot_amplitude,
    "cmd_binaries": compare_cmd,
    "fast_rotators": compare_fast_rotators,
    "light_curves": compare_light_curves,
    "period_recovery": compare_period_recovery,
}


def validate_catalog(cat: pd.DataFrame, out, store=None, source: str = "") -> dict:
    """Run every comparison on a catalogue (and its store's light curves, if given); write figures + JSON."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"survey": source, "n_stars": int(len(cat)), "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime()),
              "comparisons": {}}
    for name, fn in COMPARISONS.items():
        t0 = time.time()
        try:
            r = fn(cat, store, out)
            r = {"status": "ok", **r}
        except ref.ReferenceUnavailable as e:
            r = {"status": "skipped", "reason": str(e)}
        except MissingColumns as e:
            r = {"status": "skipped", "reason": str(e)}
        r["seconds"] = round(time.time() - t0, 2)
        report["comparisons"][name] = r
        if r["status"] == "ok":
            log.info("%s: done in %.1f s (%s)", name, r["seconds"], ", ".join(r.get("figures", [])))
        else:
            log.warning("%s: skipped: %s", name, r["reason"])
    report["summary"] = summarize(report)
    atomic_write_json(out / "distances.json", report)
    atomic_write_bytes(out / "README.md", markdown_summary(report).encode())
    return report


def validate_survey(survey, out) -> dict:
    """Compare the survey store at ``survey`` with real reference data; write PNGs + distances.json into ``out``.

    Returns the report dict (also written as ``out/distances.json``).
    """
    store = SurveyStore.open(survey)
    log.info("validating %s (%d stars, %d light curves) against real reference data", survey, len(store),
             store.light_curves.shape[0])
    return validate_catalog(store.catalog, out, store=store, source=str(survey))


def summarize(report: dict) -> dict:
    """The handful of headline distances, for a quick look and for tracking the simulator over time."""
    c = report["comparisons"]
    s = {}
    g = lambda k: c.get(k, {}) if c.get(k, {}).get("status") == "ok" else {}  # noqa: E731
    if g("prot_teff"):
        s["prot_teff_ks_mean"] = g("prot_teff")["ks_mean"]
        s["prot_teff_ks_max"] = g("prot_teff")["ks_max"]
        s["prot_teff_hellinger_2d"] = g("prot_teff")["hellinger_2d"]
        s["detection_fraction_real_sim"] = [g("prot_teff")["detection_fraction_real"],
                                            g("prot_teff")["detection_fraction_sim"]]
    if g("stellar_parameters"):
        for k in ("teff", "logg", "kepmag"):
            s[f"{k}_ks"] = g("stellar_parameters")[k]["ks"]
    if g("clusters"):
        s["cluster_mean_abs_offset_days"] = {k: v["mean_abs_offset_days"]
                                             for k, v in g("clusters")["by_cluster"].items()}
    if g("spot_amplitude_rossby"):
        r = g("spot_amplitude_rossby")
        s["sph_rossby_slope_real_sim"] = [r["fit_real"].get("slope"), r["fit_sim"].get("slope")]
        s["sph_ks_overall"] = r["ks_log_sph_overall"]
    if g("fast_rotators"):
        r = g("fast_rotators")
        s["fast_above_ms_real_sim"] = [r["frac_fast_above_ms_real_simonian"], r["frac_fast_above_ms_sim"]]
        s["rapid_fraction_real_sim"] = [r["rapid_fraction_of_analysed_real_simonian"],
                                        r["rapid_fraction_of_analysed_sim"]]
    if g("cmd_binaries"):
        s["single_offset_from_mamajek_mag"] = g("cmd_binaries")["single_offset_from_mamajek_mag"]
    if g("light_curves"):
        s["noise_over_shot_real_sim"] = [g("light_curves")["median_noise_over_shot_real"],
                                         g("light_curves")["median_noise_over_shot_sim"]]
    s["skipped"] = {k: v["reason"] for k, v in c.items() if v.get("status") == "skipped"}
    return s


def markdown_summary(report: dict) -> str:
    """A short human-readable digest of distances.json (written as README.md next to the figures)."""
    c = report["comparisons"]
    lines = [f"# Survey validation: {report.get('survey', '')}", "",
             f"{report['n_stars']} stars; generated {report['created_utc']}. Numbers: `distances.json`.", ""]

    def ok(k):
        return c.get(k, {}).get("status") == "ok"

    for k, v in c.items():
        if v.get("status") != "ok":
            lines.append(f"- **{k}**: skipped ({v.get('reason')})")
    if ok("prot_teff"):
        p = c["prot_teff"]
        lines += ["", "## Prot vs Teff (Santos et al. 2019, 2021)", "",
                  f"Hellinger 2-D = {p['hellinger_2d']}, detection fraction real {p['detection_fraction_real']} / "
                  f"sim {p['detection_fraction_sim']}; P > 45 d among Teff < 5000 K: real "
                  f"{p['frac_prot_gt_45d_cool_real']} / sim {p['frac_prot_gt_45d_cool_sim']}", "",
                  "| Teff bin [K] | n real | n sim | KS | median Prot real / sim [d] | 16-84% real | 16-84% sim "
                  "| median S_ph real / sim [ppm] |", "|---|---|---|---|---|---|---|---|"]
        for b in p["ks_by_teff_bin"]:
            lines.append(f"| {b['teff_lo']:.0f}-{b['teff_hi']:.0f} | {b['n_real']} | {b['n_sim']} | {b['ks']} | "
                         f"{b['median_prot_real']} / {b['median_prot_sim']} | {b['p16_real']}-{b['p84_real']} | "
                         f"{b['p16_sim']}-{b['p84_sim']} | {b['median_sph_real']} / {b['median_sph_sim']} |")
    if ok("stellar_parameters"):
        sp = c["stellar_parameters"]
        lines += ["", "## Teff, logg, Kp of the rotation samples", "",
                  "| | KS | median real | median sim |", "|---|---|---|---|"]
        for k in ("teff", "logg", "kepmag"):
            lines.append(f"| {k} | {sp[k]['ks']} | {sp[k]['median_real']} | {sp[k]['median_sim']} |")
    if ok("clusters"):
        lines += ["", "## Open clusters (benchmark members vs simulated single dwarfs of similar age)", "",
                  "| cluster | age [Myr] | n real | n sim | median log10(P/model) real / sim "
                  "| scatter [dex] real / sim "
                  "| KS | mean abs offset [d] |", "|---|---|---|---|---|---|---|---|"]
        for k, v in c["clusters"]["by_cluster"].items():
            lines.append(f"| {k} | {v['age_myr']:g} | {v['n_real']} | {v['n_sim']} | "
                         f"{v['median_log10_prot_over_model_real']} / {v['median_log10_prot_over_model_sim']} | "
                         f"{v['scatter_dex_real']} / {v['scatter_dex_sim']} | {v['ks_residual_to_model']} | "
                         f"{v['mean_abs_offset_days']} |")
    if ok("spot_amplitude_rossby"):
        r = c["spot_amplitude_rossby"]
        fr, fs = r["fit_real"], r["fit_sim"]
        lines += ["", "## S_ph vs Rossby number", "",
                  f"fit 0.1 < Ro < 2: real log S_ph = {fr.get('intercept')} {fr.get('slope')} log Ro "
                  f"(scatter {fr.get('scatter_dex')} dex), sim {fs.get('intercept')} {fs.get('slope')} log Ro "
                  f"(scatter {fs.get('scatter_dex')}); saturated (Ro < 0.1) median real "
                  f"{fr.get('median_sph_ppm_ro_lt_0p1')} / sim {fs.get('median_sph_ppm_ro_lt_0p1')} ppm; "
                  f"KS overall {r['ks_log_sph_overall']}; median Ro real {r['median_rossby_real']} / sim "
                  f"{r['median_rossby_sim']} (KS {r['ks_log_rossby']})"]
    if ok("cmd_binaries"):
        m = c["cmd_binaries"]
        lines += ["", "## CMD", "", f"single K/M dwarfs vs Mamajek: {m['single_offset_from_mamajek_mag']} mag "
                  f"(scatter {m['single_scatter_mag']}); binaries {m['binary_offset_from_mamajek_mag']} mag"]
    if ok("fast_rotators"):
        f = c["fast_rotators"]
        lines += ["", "## Fast rotators (Simonian et al. 2019)", "",
                  f"1.5 < P < 7 d >= 0.3 mag above MS: real 0.59 / sim {f['frac_fast_above_ms_sim']} +- "
                  f"{f['frac_fast_above_ms_sim_err']}; all rotators: "
                  f"real 0.28 / sim {f['frac_all_rotators_above_ms_sim']}; rapid fraction of analysed: real 0.017 / "
                  f"sim {f['rapid_fraction_of_analysed_sim']} (n_fast = {f['n_fast_sim']})"]
    if ok("period_recovery"):
        pr = c["period_recovery"]
        lines += ["", "## Measured periods: recovery vs Prot (PDCSAP suppression)", "",
                  f"PDCSAP-like filter: {pr['pdcsap_filter_days'] or 'off'}; detected {pr['detected_fraction']} of "
                  f"{pr['n_analysed']} analysed, {pr['precision_within_10pct']} of them within 10 % of the truth", "",
                  "| Prot [d] | n sim | recovered sim | relative sim | recovered real (McQuillan / Santos) "
                  "| relative real |", "|---|---|---|---|---|---|"]
        for b in pr["by_period"]:
            lines.append(f"| {b['prot_lo_days']:g}-{b['prot_hi_days']:g} | {b['n_sim']} | {b['recovered_sim']} | "
                         f"{b['relative_sim']} | {b['recovered_real']} | {b['relative_real']} |")
    if ok("light_curves"):
        lc = c["light_curves"]
        lines += ["", "## Light curves", "",
                  f"white noise / Kepler shot noise: real {lc['median_noise_over_shot_real']}"
                  f" (3 bright stars) / sim {lc['median_noise_over_shot_sim']}"]
    return "\n".join(lines) + "\n"
