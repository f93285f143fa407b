"""Measured rotation periods (desa_core.data.periods): the ACF and Lomb-Scargle periods a survey pipeline gets
from a light curve, the detection rule, and the simulator's PDCSAP-like long-period filter."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from desa_core.data.periods import acf_curve, measure_periods, periodogram
from desa_core.data.simulate.light_curves import (LightCurveConfig, kepler_time_grid, pdcsap_like_filter,
                                                  quarter_gap_mask, simulate_light_curves)


def _grid_with_gaps(days=180.0, cadence_min=58.85):
    cfg = LightCurveConfig(duration_days=days, cadence_minutes=cadence_min)
    t = kepler_time_grid(cfg)
    return t, quarter_gap_mask(t, cfg), cfg


def _sinusoids(t, gaps, periods, amp=3e-3, noise=2e-4, seed=0, two_spots=False):
    rng = np.random.default_rng(seed)
    out = []
    for p in periods:
        ph = rng.uniform(0, 2 * np.pi)
        f = 1 + amp * np.sin(2 * np.pi * t / p + ph)
        if two_spots:   # two spots on opposite faces: the strongest Fourier term is at P/2
            f = 1 + amp * (0.6 * np.sin(2 * np.pi * t / p + ph) + np.sin(4 * np.pi * t / p + ph))
        f = f + rng.normal(0, noise, t.size)
        f[gaps] = np.nan
        f[rng.uniform(size=t.size) < 0.01] = np.nan
        out.append(f)
    return np.array(out)


def test_acf_and_lomb_scargle_recover_injected_sinusoids_through_gaps():
    t, gaps, _ = _grid_with_gaps()
    periods = np.array([0.8, 3.3, 7.3, 15.0, 31.0, 52.0])
    r = measure_periods(t, _sinusoids(t, gaps, periods))
    np.testing.assert_allclose(r["prot_acf_days"], periods, rtol=0.05)
    np.testing.assert_allclose(r["prot_ls_days"], periods, rtol=0.05)
    assert r["rotation_detected"].all()
    assert (r["prot_acf_lph"] > 0.3).all() and (r["prot_ls_power"] > 0.5).all()


def test_acf_takes_the_true_period_of_a_two_spot_light_curve_not_its_half():
    t, gaps, _ = _grid_with_gaps()
    r = measure_periods(t, _sinusoids(t, gaps, [12.0, 20.0], two_spots=True))
    np.testing.assert_allclose(r["prot_acf_days"], [12.0, 20.0], rtol=0.05)
    # The periodogram's highest peak is the first harmonic; the detection rule accepts that pairing.
    np.testing.assert_allclose(r["prot_ls_days"], [6.0, 10.0], rtol=0.05)
    assert r["rotation_detected"].all()


def test_white_noise_is_not_a_detection_and_missing_light_curves_give_nan():
    t, gaps, _ = _grid_with_gaps()
    rng = np.random.default_rng(3)
    noise = 1 + rng.normal(0, 5e-4, (20, t.size))
    noise[:, gaps] = np.nan
    empty = np.full((2, t.size), np.nan)
    r = measure_periods(t, np.vstack([noise, empty]))
    assert r["rotation_detected"].sum() <= 1          # a chance peak at most
    assert np.isnan(r["prot_acf_days"][-2:]).all() and np.isnan(r["prot_ls_days"][-2:]).all()
    assert not r["rotation_detected"][-2:].any()


def test_fft_lomb_scargle_equals_astropy_on_a_gappy_uniform_grid():
    from astropy.timeseries import LombScargle
    t, gaps, _ = _grid_with_gaps()
    f = _sinusoids(t, gaps, [9.0], amp=1e-3, noise=5e-4, seed=5)[0]
    per, power = periodogram(t, f)
    ok = np.isfinite(f)
    ref = LombScargle(t[ok], f[ok] / np.nanmedian(f) - 1).power(1 / per)
    assert np.argmax(power) == np.argmax(ref)
    assert np.max(np.abs(power - ref)) < 0.01
    lag, acf = acf_curve(t, f)
    assert lag[0] == 0 and len(lag) == len(acf)
    near = np.abs(lag - 9.0) < 1.0
    assert acf[near].max() > 0.3 and acf[near].max() == np.nanmax(acf[lag > 4.5])


def test_spotted_simulated_light_curves_are_recovered():
    """The simulator's own spot model (evolving spots, differential rotation), strongly spotted, bright."""
    t, _, cfg = _grid_with_gaps()
    rng = np.random.default_rng(11)
    n = 40
    prot = np.exp(rng.uniform(np.log(1.5), np.log(30.0), n))
    stars = pd.DataFrame({"prot_days": prot, "spot_amplitude_ppm": np.full(n, 3000.0), "teff": 5200.0,
                          "logg": 4.5, "kepmag": 12.0})
    flux = simulate_light_curves(stars, t, rng, cfg)
    r = measure_periods(t, flux)
    within = np.abs(r["prot_acf_days"] / prot - 1) < 0.1
    assert within.mean() >= 0.8, (within.mean(), np.c_[prot, r["prot_acf_days"]][~within])
    assert within[r["rotation_detected"]].mean() >= 0.9


def test_pdcsap_like_filter_keeps_short_and_suppresses_long_periods():
    t, gaps, cfg = _grid_with_gaps(days=360.0)
    quarter = np.floor((t - cfg.start_day) / cfg.quarter_days).astype(int)
    periods = [5.0, 10.0, 20.0, 40.0, 80.0]
    f = _sinusoids(t, gaps, periods, amp=5e-3, noise=0.0)
    g = pdcsap_like_filter(t, f, quarter, half_power_days=20.0)
    inner = np.zeros(t.size, bool)
    for q in np.unique(quarter):     # amplitudes away from the quarter edges
        idx = np.flatnonzero(quarter == q)
        inner[idx[len(idx) // 5: -len(idx) // 5]] = True
    ok = inner & ~gaps
    amp = lambda x: np.sqrt(2) * np.nanstd(x[:, ok] - 1, axis=1)  # noqa: E731
    kept = amp(g) / amp(f)
    assert kept[0] > 0.95 and kept[1] > 0.85
    assert 0.35 < kept[2] < 0.65
    assert kept[3] < 0.3 and kept[4] < 0.15


def test_the_simulated_store_carries_measured_periods(trained_demo):
    from desa_core.data.periods import PERIOD_COLUMNS
    from desa_core.data.store import SurveyStore
    cat = SurveyStore.open(trained_demo.survey).catalog
    assert set(PERIOD_COLUMNS) <= set(cat.columns)
    lc = cat["has_light_curve"].to_numpy(bool)
    assert np.isnan(cat.loc[~lc, "prot_acf_days"]).all() and not cat.loc[~lc, "rotation_detected"].any()
    det = cat[cat["rotation_detected"]]
    assert len(det) >= 5
    # Measured, not copied: the measured periods differ from the true ones, and mostly agree with them.
    ratio = det["prot_acf_days"] / det["prot_days"]
    assert not np.allclose(ratio, 1.0) and (np.abs(ratio - 1) < 0.2).mean() >= 0.6
