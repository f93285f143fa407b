"""Simulated LAMOST spectra: grid, line behaviour with Teff/logg/activity, binaries, RV, noise, determinism."""
import numpy as np
import pandas as pd
import pytest
from sim_stars import make_stars

from desa_core.data.simulate.spectra import (
    C_KMS, SpectrumConfig, air_to_vacuum, lamost_wavelength_grid, simulate_spectra,
)

NOISELESS = SpectrumConfig(add_noise=False, calibration_sigma=0.0, arm_mismatch=0.0, bad_pixel_fraction=0.0)




def equivalent_width(wave, flux, centre_air, half_width, cont_gap=5.0, cont_width=15.0):
    """EW [A] against a straight-line pseudo-continuum fitted in two flanking windows (vacuum grid)."""
    c = air_to_vacuum(centre_air)
    side = ((wave > c - half_width - cont_gap - cont_width) & (wave < c - half_width - cont_gap)) | \
           ((wave > c + half_width + cont_gap) & (wave < c + half_width + cont_gap + cont_width))
    fit = np.polyfit(wave[side], flux[side], 1)
    band = np.abs(wave - c) < half_width
    dw = np.gradient(wave)[band]
    return float(np.sum((1.0 - flux[band] / np.polyval(fit, wave[band])) * dw))


def ccf(wave, flux, template, max_kms=600.0):
    """Cross-correlation of high-pass-filtered spectra over pixel lags; returns (velocity [km/s], ccf)."""
    from scipy.ndimage import gaussian_filter1d

    def narrow_lines(f):
        return gaussian_filter1d(f, 6.0) - f            # absorption lines positive, continuum/wings removed
    a, b = narrow_lines(flux), narrow_lines(template)
    dv = C_KMS * np.log(10) * np.median(np.diff(np.log10(wave)))
    lags = np.arange(-int(max_kms / dv), int(max_kms / dv) + 1)
    core = slice(200, len(wave) - 200)
    vals = np.array([np.dot(a[core], np.roll(b, lag)[core]) for lag in lags])
    return lags * dv, vals


def test_grid_shapes_and_types():
    w = lamost_wavelength_grid()
    assert w.dtype == np.float64 and len(w) == 3861
    assert w[0] == pytest.approx(3700.0) and w[-1] <= 9000.0 and w[-1] > 8995
    assert np.allclose(np.diff(np.log10(w)), 1e-4)
    flux, ivar = simulate_spectra(make_stars(3, gaia_g=[11.0, 14.0, 16.5]), w, np.random.default_rng(0))
    assert flux.shape == ivar.shape == (3, len(w))
    assert flux.dtype == np.float32 and ivar.dtype == np.float32
    assert np.isfinite(flux).all() and np.isfinite(ivar).all() and (ivar >= 0).all()
    assert np.allclose(np.median(flux, axis=1), 1.0, atol=1e-6)


def test_air_to_vacuum_conversion():
    # Halpha 6562.80 A in air is 6564.61 A in vacuum; Ca II K 3933.66 -> 3934.78
    assert air_to_vacuum(6562.80) == pytest.approx(6564.61, abs=0.02)
    assert air_to_vacuum(3933.66) == pytest.approx(3934.78, abs=0.02)


def test_balmer_lines_strengthen_with_teff():
    w = lamost_wavelength_grid()
    teff = np.array([4500.0, 5500.0, 6500.0])
    flux, _ = simulate_spectra(make_stars(3, teff=teff), w, np.random.default_rng(1), NOISELESS)
    for line in (4861.33, 6562.80):
        ew = [equivalent_width(w, f, line, 12.0) for f in flux]
        assert ew[0] < ew[1] < ew[2], (line, ew)
        assert ew[2] > 1.5 * ew[0]


def test_calcium_triplet_stronger_in_giants():
    w = lamost_wavelength_grid()
    flux, _ = simulate_spectra(make_stars(2, teff=4800.0, logg=[2.5, 4.6]), w, np.random.default_rng(2),
                               NOISELESS)
    ew = [sum(equivalent_width(w, f, c, 8.0) for c in (8542.09, 8662.14)) for f in flux]
    assert ew[0] > 1.2 * ew[1], ew


def test_metal_lines_stronger_when_metal_rich_and_mgb_stronger_in_dwarfs():
    w = lamost_wavelength_grid()
    flux, _ = simulate_spectra(make_stars(3, teff=5200.0, feh=[-1.0, 0.3, 0.3], logg=[4.5, 4.5, 2.5]), w,
                               np.random.default_rng(3), NOISELESS)
    fe = [equivalent_width(w, f, 5269.54, 3.0, cont_gap=2.0, cont_width=6.0) for f in flux]
    assert fe[1] > 1.5 * fe[0]
    mgb = [equivalent_width(w, f, 5175.0, 14.0, cont_gap=8.0, cont_width=15.0) for f in flux]
    assert mgb[1] > mgb[2]


def test_ca_hk_core_emission_rises_with_activity():
    w = lamost_wavelength_grid()
    flux, _ = simulate_spectra(make_stars(2, teff=4600.0, rossby=[0.05, 2.0]), w, np.random.default_rng(4),
                               NOISELESS)
    k_core = np.abs(w - air_to_vacuum(3933.66)) < 1.5
    near = (w > 3990) & (w < 4020)
    core_ratio = [f[k_core].mean() / f[near].mean() for f in flux]
    assert core_ratio[0] > 1.3 * core_ratio[1]


def test_rv_shift_moves_lines_by_the_doppler_amount():
    w = lamost_wavelength_grid()
    rv = np.array([0.0, 150.0])
    flux, _ = simulate_spectra(make_stars(2, rv1_kms=rv, rv_sys_kms=rv), w, np.random.default_rng(5), NOISELESS)
    # strong isolated lines sit at their vacuum rest wavelengths at rv = 0
    for line, half in ((6562.80, 15.0), (8542.09, 10.0)):
        c = air_to_vacuum(line)
        sel = np.abs(w - c) < half
        depth = np.clip(1.0 - flux[0][sel] / np.max(flux[0][sel]), 0, None) ** 2   # weight the core
        assert np.sum(w[sel] * depth) / np.sum(depth) == pytest.approx(c, abs=0.4)
    # the whole spectrum moves by the Doppler amount: CCF peak (parabolic interpolation) at +150 km/s
    v, c = ccf(w, flux[1], flux[0], max_kms=400.0)
    i = int(np.argmax(c))
    offset = 0.5 * (c[i - 1] - c[i + 1]) / (c[i - 1] - 2 * c[i] + c[i + 1])
    assert v[i] + offset * (v[1] - v[0]) == pytest.approx(150.0, abs=8.0)


def test_twin_binary_with_wide_rv_separation_has_doubled_lines():
    w = lamost_wavelength_grid()
    common = dict(teff=5800.0, gaia_g=11.0, vsini_kms=5.0)
    single = make_stars(1, **common)
    twin = make_stars(1, binary_class="close_sync", is_binary=True, porb_days=4.0, comp_teff=5800.0,
                      comp_logg=4.44, comp_radius=1.0, flux_ratio_g=1.0, rv1_kms=-170.0, rv2_kms=170.0, **common)
    f_single, _ = simulate_spectra(single, w, np.random.default_rng(6), NOISELESS)
    f_twin, _ = simulate_spectra(twin, w, np.random.default_rng(6), NOISELESS)
    v, c_single = ccf(w, f_single[0], f_single[0])
    _, c_twin = ccf(w, f_twin[0], f_single[0])
    peaks = lambda c: np.flatnonzero((c[1:-1] > c[:-2]) & (c[1:-1] > c[2:]) & (c[1:-1] > 0.5 * c.max())) + 1
    assert len(peaks(c_single)) == 1 and abs(v[peaks(c_single)[0]]) < 1
    twin_peaks = np.sort(v[peaks(c_twin)])
    assert len(twin_peaks) == 2, twin_peaks
    assert twin_peaks == pytest.approx([-170.0, 170.0], abs=50.0)


def test_snr_falls_for_fainter_stars_and_ivar_describes_the_noise():
    w = lamost_wavelength_grid()
    g = np.array([12.0, 14.5, 17.0])
    stars = make_stars(3, gaia_g=g)
    cfg = SpectrumConfig(snr_scatter_dex=0.0, calibration_sigma=0.0, bad_pixel_fraction=0.0)
    flux, ivar = simulate_spectra(stars, w, np.random.default_rng(7), cfg)
    clean, _ = simulate_spectra(stars, w, np.random.default_rng(7),
                                SpectrumConfig(snr_scatter_dex=0.0, calibration_sigma=0.0, bad_pixel_fraction=0.0,
                                               add_noise=False))
    band = (w > 4000) & (w < 5500)
    snr = np.median(flux[:, band] * np.sqrt(ivar[:, band]), axis=1)
    assert snr[0] > snr[1] > snr[2]
    assert snr[0] == pytest.approx(100.0, rel=0.2) and snr[2] == pytest.approx(10.0, rel=0.2)
    for f, c, iv in zip(flux, clean, ivar):
        k = np.median(f) / np.median(c)
        z = (f - c * k) * np.sqrt(iv)
        assert np.std(z) == pytest.approx(1.0, rel=0.1)


def test_tio_bands_only_in_cool_stars():
    w = lamost_wavelength_grid()
    flux, _ = simulate_spectra(make_stars(2, teff=[3400.0, 5000.0], logg=[4.8, 4.6]), w,
                               np.random.default_rng(8), NOISELESS)
    head = air_to_vacuum(7053.9)
    blue = (w > head - 25) & (w < head - 5)
    red = (w > head + 5) & (w < head + 25)
    drop = [f[red].mean() / f[blue].mean() for f in flux]
    assert drop[0] < 0.8 and drop[1] > 0.95


def test_deterministic_given_seed():
    w = lamost_wavelength_grid()
    stars = make_stars(3, teff=[4000.0, 5500.0, 6500.0], gaia_g=[13.0, 15.0, 16.0])
    a = simulate_spectra(stars, w, np.random.default_rng(9))
    b = simulate_spectra(stars, w, np.random.default_rng(9))
    c = simulate_spectra(stars, w, np.random.default_rng(10))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0])


def test_missing_column_is_a_clear_error():
    with pytest.raises(KeyError, match="gaia_g"):
        simulate_spectra(make_stars(1).drop(columns="gaia_g"), lamost_wavelength_grid(), np.random.default_rng(0))


def test_interstellar_reddening_and_sodium_from_a_v():
    w = lamost_wavelength_grid()
    stars = make_stars(2, a_v=[0.0, 1.0], rv1_kms=80.0, rv_sys_kms=80.0)
    flux, _ = simulate_spectra(stars, w, np.random.default_rng(12), NOISELESS)
    blue, red = (w > 4400) & (w < 4600), (w > 7900) & (w < 8100)
    colour = [f[blue].mean() / f[red].mean() for f in flux]
    # CCM89: A(4500) - A(8000) = 0.69 A_V, i.e. a factor 0.53 in the blue/red ratio for A_V = 1
    assert colour[1] / colour[0] == pytest.approx(10 ** (-0.4 * 0.69), rel=0.05)
    # interstellar Na D sits at rest while the stellar doublet is shifted by 80 km/s
    d2 = np.abs(w - air_to_vacuum(5889.95)) < 0.8
    ism = [1.0 - f[d2].mean() / f[(w > 5870) & (w < 5880)].mean() for f in flux]
    assert ism[1] > ism[0] + 0.05


def test_solar_spectrum_reproduces_kurucz_blanketing_and_forest_scales_with_metallicity():
    from desa_core.data.simulate.spectra import continuum

    w = lamost_wavelength_grid()
    cfg = SpectrumConfig(add_noise=False, calibration_sigma=0.0, arm_mismatch=0.0, bad_pixel_fraction=0.0,
                         telluric_strength=(0, 0),
                         interstellar=False, activity_emission=False)
    stars = make_stars(2, teff=5777.0, logg=4.44, feh=[0.0, -1.0])
    flux, _ = simulate_spectra(stars, w, np.random.default_rng(13), cfg)
    f_over_c = flux / continuum(w, np.array([5777.0, 5777.0]))
    blue, red = (w > 4100) & (w < 4400), (w > 7500) & (w < 9000)
    ratio = f_over_c[:, blue].mean(axis=1) / f_over_c[:, red].mean(axis=1)
    # Kurucz solar model at R = 1800: <F/C> = 0.657 in 4100-4400 A and 0.970 in 7500-9000 A
    assert ratio[0] == pytest.approx(0.657 / 0.970, abs=0.02)
    assert ratio[1] > ratio[0] + 0.1              # a metal-poor star has far less line blanketing
