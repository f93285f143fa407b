"""Simulated Kepler light curves: sampling, gaps, rotation signal, noise model, eclipses, determinism."""
import numpy as np
import pandas as pd
import pytest
import sim_stars

from desa_core.data.simulate.light_curves import (
    LightCurveConfig, kepler_time_grid, quarter_gap_mask, simulate_light_curves, white_noise_ppm,
)


def make_stars(n=1, **columns) -> pd.DataFrame:
    """Active Sun-like stars (10-d rotation, strong spots); keyword arguments override a column."""
    return sim_stars.make_stars(n, **{**dict(prot_days=10.0, rossby=0.5, spot_amplitude_ppm=2000.0, vsini_kms=5.0), **columns})


def acf_period(time, flux, max_lag_days=60.0):
    """Rotation period from the autocorrelation function (McQuillan et al. 2013 style): highest ACF peak."""
    y = np.where(np.isfinite(flux), flux - np.nanmean(flux), 0.0)
    n = len(y)
    f = np.fft.rfft(y, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n]
    acf /= acf[0]
    dt = time[1] - time[0]
    k = np.convolve(acf, np.ones(5) / 5, mode="same")
    lags = np.arange(n) * dt
    peaks = np.flatnonzero((k[1:-1] > k[:-2]) & (k[1:-1] > k[2:])) + 1
    peaks = peaks[(lags[peaks] > 0.3) & (lags[peaks] < max_lag_days)]
    return lags[peaks[np.argmax(k[peaks])]]


def test_time_grid_and_shapes():
    cfg = LightCurveConfig()
    t = kepler_time_grid(cfg)
    assert t.dtype == np.float64 and t[0] == pytest.approx(131.5)
    assert np.allclose(np.diff(t), 2 * 29.4244 / 1440.0)
    assert 180.0 - 2 * cfg.cadence_minutes / 1440 <= t[-1] - t[0] <= 180.0
    assert 4300 < len(t) < 4500
    flux = simulate_light_curves(make_stars(3), t, np.random.default_rng(0), cfg)
    assert flux.shape == (3, len(t)) and flux.dtype == np.float32
    gaps = quarter_gap_mask(t, cfg)
    # one ~1-day gap at the end of the first quarter (day 93-94 of the light curve)
    gap_days = t[gaps] - t[0]
    assert gaps.sum() * cfg.cadence_minutes / 1440 == pytest.approx(1.0, abs=0.1)
    assert gap_days.min() == pytest.approx(92.0, abs=0.1) and gap_days.max() < 93.0
    assert np.isnan(flux[:, gaps]).all()
    assert np.isfinite(flux[:, ~gaps]).mean() > 0.99
    assert np.allclose(np.nanmedian(flux, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("prot", [2.3, 8.0, 17.0])
def test_spotted_star_acf_recovers_rotation_period(prot):
    stars = make_stars(3, prot_days=prot, spot_amplitude_ppm=3000.0, kepmag=12.0, inclination_deg=[60.0, 75.0, 90.0])
    t = kepler_time_grid()
    flux = simulate_light_curves(stars, t, np.random.default_rng(int(prot * 10)))
    recovered = [acf_period(t, f) for f in flux]
    # Evolving spots and differential rotation blur the peak; a 10% match is what ACF pipelines achieve.
    assert np.median(np.abs(np.array(recovered) / prot - 1)) < 0.1, recovered


def test_spot_amplitude_matches_sph_and_is_diluted_by_companion():
    stars = make_stars(2, spot_amplitude_ppm=4000.0, prot_days=6.0, kepmag=9.0, flux_ratio_kp=[0.0, 1.0])
    t = kepler_time_grid()
    cfg = LightCurveConfig(granulation_ppm_sun=0.0, quarter_offset_ppm=0.0, quarter_trend_ppm=0.0)
    flux = simulate_light_curves(stars, t, np.random.default_rng(3), cfg)
    sd = np.nanstd(flux, axis=1) * 1e6
    assert sd[0] == pytest.approx(4000.0, rel=0.05)
    assert sd[1] == pytest.approx(2000.0, rel=0.05)      # an equal-brightness companion halves it


def test_white_noise_grows_with_kepler_magnitude():
    kp = np.array([11.0, 13.0, 15.0])
    stars = make_stars(3, spot_amplitude_ppm=0.0, kepmag=kp)
    cfg = LightCurveConfig(granulation_ppm_sun=0.0)
    flux = simulate_light_curves(stars, kepler_time_grid(cfg), np.random.default_rng(4), cfg)
    p2p = np.nanstd(np.diff(flux, axis=1), axis=1) / np.sqrt(2) * 1e6
    assert np.all(np.diff(p2p) > 0)
    assert np.allclose(p2p, white_noise_ppm(kp, cfg), rtol=0.1)
    # on a single 29.4-min cadence: never below Kepler's shot noise (57 ppm at Kp 12, 225 ppm at Kp 15), and
    # shot-noise dominated for faint stars
    from desa_core.data.reference import kepler_white_noise_ppm

    unbinned = LightCurveConfig(cadence_minutes=29.4244)
    kp = np.array([12.0, 15.0])
    sim, shot = white_noise_ppm(kp, unbinned), kepler_white_noise_ppm(kp)
    assert np.all(sim >= shot)
    assert sim == pytest.approx(shot, rel=0.12)


def test_eclipsing_binary_shows_primary_and_secondary_eclipses_at_the_orbital_period():
    porb, t0 = 2.7, 133.0
    stars = make_stars(
        1, binary_class="eclipsing", is_binary=True, porb_days=porb, orbit_t0_days=t0, mass_ratio=0.8,
        comp_mass=0.8, radius=1.0, comp_radius=0.8, a_rsun=9.0, inclination_deg=89.0, flux_ratio_kp=0.35,
        prot_days=porb, spot_amplitude_ppm=500.0, kepmag=12.0,
    )
    t = kepler_time_grid()
    f = simulate_light_curves(stars, t, np.random.default_rng(5))[0]
    phase = np.mod(t - t0 + 0.5 * porb, porb) / porb - 0.5      # 0 at primary eclipse
    ok = np.isfinite(f)
    primary = np.nanmedian(f[ok & (np.abs(phase) < 0.005)])
    secondary = np.nanmedian(f[ok & (np.abs(np.abs(phase) - 0.5) < 0.005)])
    outside = np.nanmedian(f[ok & (np.abs(np.abs(phase) - 0.25) < 0.05)])
    assert outside - primary > 0.2                # total-ish eclipse of a Sun by a 0.8 Rsun star
    assert 0.02 < outside - secondary < outside - primary
    # every primary eclipse in the light curve is there, one orbital period apart
    centres = t0 + porb * np.arange(-2, 80)
    centres = centres[(centres > t[0]) & (centres < t[-1])]
    depths = [np.nanmin(f[np.abs(t - c) < 0.05]) for c in centres if np.isfinite(f[np.abs(t - c) < 0.05]).any()]
    assert len(depths) > 55 and np.all(np.array(depths) < outside - 0.15)


def test_close_binary_ellipsoidal_variation_at_half_the_orbital_period():
    porb = 1.5
    stars = make_stars(
        1, binary_class="close_sync", is_binary=True, porb_days=porb, orbit_t0_days=132.0, mass_ratio=1.0,
        comp_mass=1.0, comp_radius=1.0, radius=1.6, a_rsun=6.0, inclination_deg=60.0, flux_ratio_kp=0.3,
        spot_amplitude_ppm=0.0, kepmag=11.0,
    )
    t = kepler_time_grid()
    f = simulate_light_curves(stars, t, np.random.default_rng(6))[0]
    ok = np.isfinite(f)
    phi = 2 * np.pi * (t[ok] - 132.0) / porb
    amp = -2 * np.mean((f[ok] - 1) * np.cos(2 * phi))
    # 1.3 * q (R/a)^3 sin^2 i * L1 + the companion's term
    expected = 1.3 * 0.75 * ((1.6 / 6.0) ** 3 / 1.3 + (1.0 / 6.0) ** 3 * 0.3 / 1.3)
    assert amp == pytest.approx(expected, rel=0.15)


def test_deterministic_given_seed():
    stars = make_stars(4, prot_days=[1.0, 5.0, 20.0, 3.0], spot_amplitude_ppm=[8000.0, 1000.0, 100.0, 0.0])
    t = kepler_time_grid()
    a = simulate_light_curves(stars, t, np.random.default_rng(11))
    b = simulate_light_curves(stars, t, np.random.default_rng(11))
    c = simulate_light_curves(stars, t, np.random.default_rng(12))
    assert np.array_equal(a, b, equal_nan=True)
    assert not np.allclose(a, c, equal_nan=True)


def test_missing_column_is_a_clear_error():
    with pytest.raises(KeyError, match="kepmag"):
        simulate_light_curves(make_stars(1).drop(columns="kepmag"), kepler_time_grid(), np.random.default_rng(0))
