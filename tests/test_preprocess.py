"""Preprocessing: light-curve channels and spectrum normalisation (desa_core.data.preprocess)."""
from __future__ import annotations

import numpy as np
import pytest

from desa_core.data.preprocess import (C_KMS, autocorrelation, clean_light_curve, preprocess_light_curve,
                                       preprocess_spectrum, spectrum_grids, spectrum_snr)
from desa_core.models.config import PreprocessConfig, get_config

CFG = PreprocessConfig(lc_cadence_days=0.125, lc_length=1024, lc_smooth_days=0.125)


def sinusoid(period=5.0, days=180.0, cadence=1 / 24, amp=0.01, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(0, days, cadence)
    f = 1 + amp * np.sin(2 * np.pi * t / period) + rng.normal(0, 1e-3, t.size)
    return t, f


def first_acf_peak(acf, min_lag=2):
    """Lag of the first local maximum after the ACF first drops below zero."""
    below = np.flatnonzero(acf < 0)
    start = max(min_lag, int(below[0]) if below.size else min_lag)
    seg = acf[start:]
    i = np.flatnonzero((seg[1:-1] > seg[:-2]) & (seg[1:-1] >= seg[2:]))
    return start + 1 + int(i[0])


def test_light_curve_shape_dtype_and_finite():
    t, f = sinusoid()
    x = preprocess_light_curve(t, f, 4.5, CFG)
    assert x.shape == (4, CFG.lc_length) and x.dtype == np.float32
    assert np.isfinite(x).all()


@pytest.mark.parametrize("period", [2.3, 7.0, 15.0])
def test_acf_channel_peaks_at_injected_period(period):
    t, f = sinusoid(period=period)
    x = preprocess_light_curve(t, f, None, CFG)
    lag = first_acf_peak(x[2])
    assert abs(lag * CFG.lc_cadence_days - period) <= max(2 * CFG.lc_cadence_days, 0.03 * period)


def test_autocorrelation_is_one_at_zero_lag():
    acf = autocorrelation(np.random.default_rng(1).normal(size=(3, 500)))
    np.testing.assert_allclose(acf[:, 0], 1.0)
    assert (np.abs(acf) <= 1 + 1e-9).all()


def test_nan_gaps_are_interpolated_and_quarter_offsets_removed():
    t, f = sinusoid(period=4.0, amp=0.005)
    f = f * np.where(t > 90, 1.05, 1.0)              # a quarter-to-quarter offset of 5 %
    f[(t > 89.4) & (t < 90.0)] = np.nan              # the gap between the quarters
    f[:30] = np.nan                                  # leading NaNs
    f[2000:2040] = np.nan                            # a gap inside a quarter
    x = clean_light_curve(t, f, CFG)
    assert np.isfinite(x).all()
    first, second = x[: len(x) // 2 - 10], x[len(x) // 2 + 10:]
    assert abs(np.median(first) - np.median(second)) < 1e-3   # the 5 % step is gone
    out = preprocess_light_curve(t, f, 4.0, CFG)
    assert np.isfinite(out).all()


def test_all_nan_light_curve_is_a_clear_error():
    t = np.arange(0, 10, 0.1)
    with pytest.raises(ValueError, match="finite"):
        preprocess_light_curve(t, np.full(t.size, np.nan), 4.0, CFG)
    with pytest.raises(ValueError, match="differ|values but"):
        preprocess_light_curve(t, np.ones(t.size - 1), 4.0, CFG)


def test_crops_centre_without_rng_random_with_rng():
    t, f = sinusoid(period=3.3, seed=2)
    a = preprocess_light_curve(t, f, 4.0, CFG)
    b = preprocess_light_curve(t, f, 4.0, CFG)
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    c = preprocess_light_curve(t, f, 4.0, CFG, rng=rng)
    d = preprocess_light_curve(t, f, 4.0, CFG, rng=rng)
    assert not np.array_equal(c[1], d[1])


def test_short_light_curve_is_zero_padded():
    t, f = sinusoid(days=30.0)
    x = preprocess_light_curve(t, f, 4.0, CFG)
    n_valid = int(30.0 / CFG.lc_cadence_days)
    assert x.shape == (4, CFG.lc_length)
    assert np.all(x[:3, n_valid + 1:] == 0)


def test_absolute_magnitude_channel_and_its_ablation_switch():
    t, f = sinusoid()
    bright = preprocess_light_curve(t, f, 0.0, CFG)
    faint = preprocess_light_curve(t, f, 10.0, CFG)
    # channel 0 sits at log10 L_G = -0.4 (M_G - 4.67): 10 magnitudes = 4 dex; the other channels are unchanged
    assert np.mean(bright[0] - faint[0]) == pytest.approx(4.0, abs=1e-4)
    np.testing.assert_allclose(bright[1:], faint[1:])
    off = PreprocessConfig(**{**CFG.__dict__, "lc_abs_mag_channel": False})
    np.testing.assert_array_equal(preprocess_light_curve(t, f, 0.0, off), preprocess_light_curve(t, f, 10.0, off))


def lamost_like(line_rest=6564.6, rv=0.0, depth=0.5, seed=0):
    rng = np.random.default_rng(seed)
    w = 10 ** np.arange(np.log10(3700.0), np.log10(9000.0), 1e-4)
    cont = (w / 5000.0) ** -1.5
    obs = line_rest * (1 + rv / C_KMS)
    flux = cont * (1 - depth * np.exp(-0.5 * ((w - obs) / 2.0) ** 2)) + rng.normal(0, 1e-3, w.size)
    return w, flux, np.full(w.size, 1e6)


def test_spectrum_shape_arms_and_padding():
    cfg = get_config("small").preprocess
    blue, red = spectrum_grids(cfg)
    assert (blue.size, red.size) == (1790, 1810)
    w, f, iv = lamost_like()
    x = preprocess_spectrum(w, f, iv, 0.0, cfg)
    assert x.shape == (1, 4096) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.all(x[0, 3600:] == 0)
    for arm in (x[0, :1790], x[0, 1790:3600]):          # z-scored per arm
        assert abs(arm.mean()) < 1e-3 and arm.std() == pytest.approx(1.0, abs=1e-3)


def test_rest_frame_shift_puts_the_line_at_its_rest_wavelength():
    cfg = PreprocessConfig()
    blue, red = spectrum_grids(cfg)
    rest, rv = 6564.6, 300.0
    w, f, iv = lamost_like(rest, rv=rv)
    corrected = preprocess_spectrum(w, f, iv, rv, cfg)[0, blue.size:blue.size + red.size]
    uncorrected = preprocess_spectrum(w, f, iv, 0.0, cfg)[0, blue.size:blue.size + red.size]
    pix = np.log10(red[1] / red[0])

    def line_centre(x):   # the 3-sigma clip flattens the line core: take the middle of the flat bottom
        core = np.flatnonzero(x <= x.min() + 1e-6)
        return 10 ** np.mean(np.log10(red[core]))

    assert abs(np.log10(line_centre(corrected) / rest)) <= 0.6 * pix
    shift_px = np.log10(1 + rv / C_KMS) / pix                    # ~4.3 pixels at 300 km/s
    assert abs(np.log10(line_centre(uncorrected) / rest) / pix - shift_px) <= 0.6


def test_masked_pixels_and_nans_in_spectrum():
    cfg = PreprocessConfig()
    w, f, iv = lamost_like()
    f[500:520] = np.nan
    iv[1000:1200] = 0.0
    x = preprocess_spectrum(w, f, iv, 10.0, cfg)
    assert np.isfinite(x).all()
    blue, _ = spectrum_grids(cfg)
    hole = (blue > w[1010] * 1.0001) & (blue < w[1190] / 1.0001)
    assert hole.any() and np.all(x[0, :blue.size][hole] == 0)
    with pytest.raises(ValueError, match="usable pixels"):
        preprocess_spectrum(w, f, np.zeros_like(iv), 0.0, cfg)


def test_spectrum_snr():
    assert spectrum_snr(np.full(10, 2.0), np.full(10, 25.0)) == pytest.approx(10.0)
    assert spectrum_snr(np.ones(3), np.zeros(3)) == 0.0
