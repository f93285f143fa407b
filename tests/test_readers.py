"""Readers for real survey files: Kepler quarters, both LAMOST layouts, catalogues, and broken files."""
import numpy as np
import pytest
from astropy.io import fits

from desa_core.data.readers import FitsReadError, read_catalogue, read_fits
from desa_core.data.readers.kepler import (KEPLER_LONG_CADENCE_DAYS, bin_to_grid, cadence_grid,
                                           read_kepler_light_curve, stitch_quarters)
from desa_core.data.readers.lamost import (lamost_wavelength_grid, read_lamost_spectrum, resample_to_grid,
                                           spectrum_on_grid)
from fits_fixtures import (lamost_spectrum_truth, quarter_times, write_catalogue,
                           write_kepler_quarter, write_lamost_image, write_lamost_table, write_not_fits,
                           write_star_quarters, write_truncated)


# --- Kepler -----------------------------------------------------------------------------------------------

def test_kepler_quarter_drops_flagged_and_nan_cadences(tmp_path):
    t = quarter_times(200.0, 5.0)
    flux = np.full(len(t), 1000.0)
    quality = np.zeros(len(t), np.int32)
    quality[10] = 32          # desaturation: dropped by the default bitmask
    quality[11] = 2048        # impulsive outlier: kept by default, dropped by "hardest"
    flux[20] = np.nan
    p = write_kepler_quarter(tmp_path / "q.fits", 10000001, 5, t, flux, quality=quality, kepmag=13.1)
    lc = read_kepler_light_curve(p)
    assert lc.kepler_id == 10000001 and lc.quarter == 5 and lc.star_id == "KIC 10000001"
    assert lc.kepmag == pytest.approx(13.1) and lc.ra == pytest.approx(290.0)
    assert len(lc.time) == len(t) - 2 and lc.n_flagged == 1 and lc.n_nan == 1
    assert t[10] not in lc.time and t[11] in lc.time and t[20] not in lc.time
    assert len(read_kepler_light_curve(p, bitmask="hardest").time) == len(t) - 3


def test_kepler_quality_column_named_quality(tmp_path):
    t = quarter_times(200.0, 2.0)
    q = np.zeros(len(t), np.int32)
    q[3] = 1
    p = write_kepler_quarter(tmp_path / "q.fits", 7, 1, t, np.ones(len(t)), quality=q, quality_column="QUALITY")
    assert len(read_kepler_light_curve(p).time) == len(t) - 1


@pytest.mark.parametrize("period,method,tol", [(6.0, "median", 5e-4), (60.0, "match_edges", 5e-4)])
def test_stitched_quarters_remove_offsets_and_keep_the_signal(tmp_path, period, method, tol):
    truth = write_star_quarters(tmp_path, 10000001, n_quarters=3, period=period)
    quarters = [read_kepler_light_curve(p) for p in truth["paths"]]
    assert all(np.all(q.flux > 4000) for q in quarters)          # raw levels 9800-15500 e-/s
    t, f = stitch_quarters(quarters, method=method)
    np.testing.assert_allclose(t, truth["time"])
    expected = truth["signal"] / np.median(truth["signal"])
    # Offsets of up to 60% between quarters are gone; what is left is the star's 1% modulation.
    assert np.max(np.abs(f - expected)) < tol
    assert np.median(f) == pytest.approx(1.0)
    # No flagged cadence (its flux halved in the fixture) survived.
    assert f.min() > 0.95


def test_median_stitching_flattens_signals_longer_than_a_quarter(tmp_path):
    """Why match_edges exists: per-quarter medians remove a 60-day modulation's level changes."""
    truth = write_star_quarters(tmp_path, 10000001, n_quarters=3, period=60.0)
    quarters = [read_kepler_light_curve(p) for p in truth["paths"]]
    expected = truth["signal"] / np.median(truth["signal"])
    err = {m: np.max(np.abs(stitch_quarters(quarters, method=m)[1] - expected)) for m in ("median", "match_edges")}
    assert err["median"] > 10 * err["match_edges"]


def test_cadence_grid_and_binning():
    grid = cadence_grid(100.0, 101.0)
    assert grid[0] == 100.0 and grid[-1] == pytest.approx(101.0, abs=KEPLER_LONG_CADENCE_DAYS)
    assert np.allclose(np.diff(grid), KEPLER_LONG_CADENCE_DAYS)
    t = grid[[0, 1, 5]] + 0.1 * KEPLER_LONG_CADENCE_DAYS
    out = bin_to_grid(t, np.array([1.0, 2.0, 3.0]), grid)
    assert out[0] == 1.0 and out[1] == 2.0 and out[5] == 3.0
    assert np.isnan(out[2:5]).all() and np.isnan(out[6:]).all()
    coarse = cadence_grid(100.0, 101.0, 0.5)
    np.testing.assert_allclose(bin_to_grid(grid, np.arange(len(grid), dtype=float), coarse),
                               [np.mean(np.arange(len(grid))[grid < 100.25]),
                                np.mean(np.arange(len(grid))[(grid >= 100.25) & (grid < 100.75)]),
                                np.mean(np.arange(len(grid))[grid >= 100.75])])


# --- LAMOST ------------------------------------------------------------------------------------------------

def test_both_lamost_layouts_give_the_same_spectrum(tmp_path):
    w, f, iv, am = lamost_spectrum_truth()
    a = read_lamost_spectrum(write_lamost_image(tmp_path / "dr4.fits", w, f, iv, am, obsid=5, z=2e-4))
    b = read_lamost_spectrum(write_lamost_table(tmp_path / "dr8.fits", w, f, iv, am, obsid=5, z=2e-4))
    c = read_lamost_spectrum(write_lamost_image(tmp_path / "coeff.fits", w, f, iv, am, wavelength_row=False))
    assert (a.layout, b.layout) == ("image", "table")
    grid = lamost_wavelength_grid()
    fa, ia = spectrum_on_grid(a, grid)
    fb, ib = spectrum_on_grid(b, grid)
    fc, ic = spectrum_on_grid(c, grid)   # wavelengths from COEFF0/COEFF1 only
    np.testing.assert_allclose(fa, fb, rtol=1e-5)
    np.testing.assert_allclose(ia, ib, rtol=1e-4)
    np.testing.assert_allclose(fa, fc, rtol=1e-4)
    assert a.obsid == b.obsid == "5"
    assert a.rv_kms == pytest.approx(2e-4 * 299792.458)
    assert np.median(fa[ia > 0]) == pytest.approx(1.0)


def test_lamost_header_rv_prefers_helio_rv(tmp_path):
    w, f, iv, am = lamost_spectrum_truth()
    s = read_lamost_spectrum(write_lamost_table(tmp_path / "s.fits", w, f, iv, am, z=1e-3, helio_rv=-42.5))
    assert s.rv_kms == -42.5


def test_resampling_propagates_ivar_and_masks():
    grid = lamost_wavelength_grid()
    assert grid[0] == pytest.approx(3700.0) and grid[-1] <= 9000.0 and len(grid) == 3861
    np.testing.assert_allclose(np.diff(np.log10(grid)), 1e-4)
    w, f, iv, am = lamost_spectrum_truth()
    iv = np.where(am != 0, 0.0, iv)
    flux, ivar = resample_to_grid(w, f, iv, grid)
    # A smooth spectrum is interpolated closely (lines are resolved by ~15 pixels).
    np.testing.assert_allclose(flux, np.interp(np.log10(grid), np.log10(w), f), rtol=1e-12)
    # Interpolating between two pixels averages their noise: ivar never drops below the native one and
    # is at most 2x the native ivar (the midpoint case).
    native = np.interp(grid, w, iv)
    good = ivar > 0
    assert np.all(ivar[good] >= 0.99 * native[good]) and np.all(ivar[good] <= 2.01 * native[good] * 1.1)
    # The bad column (andmask) stays masked, and the grid beyond the coverage is masked with flux 0.
    assert np.all(ivar[(grid > w[1999]) & (grid < w[2010])] == 0)
    assert np.all(ivar[(grid > w[1990]) & (grid < w[1999])] > 0)
    part = w < 6000
    flux2, ivar2 = resample_to_grid(w[part], f[part], iv[part], grid)
    assert np.all(ivar2[grid > w[part][-1]] == 0) and np.all(flux2[grid > w[part][-1]] == 0)


def test_reader_grid_is_the_simulator_grid():
    from desa_core.data.readers.lamost import store_wavelength_grid
    np.testing.assert_array_equal(lamost_wavelength_grid(), store_wavelength_grid())


def test_wrong_wavelength_range_is_rejected(tmp_path):
    w, f, iv, am = lamost_spectrum_truth()
    p = write_lamost_table(tmp_path / "nm.fits", w / 10.0, f, iv, am)   # nanometres, not Angstrom
    with pytest.raises(FitsReadError, match="covers 0% of the 3700-"):
        spectrum_on_grid(read_lamost_spectrum(p), lamost_wavelength_grid())


# --- dispatcher and broken files --------------------------------------------------------------------------

def test_read_fits_dispatches_on_headers(tmp_path):
    truth = write_star_quarters(tmp_path, 9, n_quarters=1)
    w, f, iv, am = lamost_spectrum_truth()
    assert type(read_fits(truth["paths"][0])).__name__ == "KeplerLightCurve"
    assert type(read_fits(write_lamost_image(tmp_path / "a.fits", w, f, iv, am))).__name__ == "LamostSpectrum"
    assert type(read_fits(write_lamost_table(tmp_path / "b.fits", w, f, iv, am))).__name__ == "LamostSpectrum"
    fits.PrimaryHDU(data=np.zeros((4, 4))).writeto(tmp_path / "other.fits")
    with pytest.raises(FitsReadError, match="neither a Kepler light curve nor a LAMOST spectrum"):
        read_fits(tmp_path / "other.fits")


def _broken_light_curves(tmp_path):
    good = write_star_quarters(tmp_path / "src", 11, n_quarters=1)["paths"][0]
    t = quarter_times(140.0, 2.0)
    one = np.ones(len(t))
    no_ext = tmp_path / "no_ext.fits"
    with fits.open(good) as h:
        fits.HDUList([h[0].copy(), fits.BinTableHDU(h[1].data, name="OTHER")]).writeto(no_ext)
    return {
        "truncated": (write_truncated(good, tmp_path / "trunc.fits"), "truncated"),
        "not fits": (write_not_fits(tmp_path / "html.fits"), "not a readable FITS file"),
        "no extension": (no_ext, "no LIGHTCURVE extension"),
        "no flux column": (write_kepler_quarter(tmp_path / "sap.fits", 12, 1, t, one, flux_column="KSPSAP_FLUX"),
                           "has no column PDCSAP_FLUX"),
        "all nan": (write_kepler_quarter(tmp_path / "nan.fits", 13, 1, t, one * np.nan), "all-NaN PDCSAP_FLUX"),
        "no kepler id": (_without_ids(tmp_path / "noid.fits", t), "no usable KEPLERID"),
        "full BJD": (write_kepler_quarter(tmp_path / "bjd.fits", 14, 1, t + 2454833.0, one),
                     "outside the Kepler range"),
    }


def _without_ids(path, t):
    write_kepler_quarter(path, 0, 1, t, np.ones(len(t)), keplerid_keyword=False)
    with fits.open(path, mode="update") as h:
        h[0].header["OBJECT"] = "unknown"
    return path


@pytest.mark.parametrize("case", ["truncated", "not fits", "no extension", "no flux column", "all nan",
                                  "no kepler id", "full BJD"])
def test_broken_light_curve_files_raise_a_reason_naming_the_file(tmp_path, case):
    path, reason = _broken_light_curves(tmp_path)[case]
    with pytest.raises(FitsReadError, match=reason) as e:
        read_kepler_light_curve(path)
    assert str(path) in str(e.value)


def test_header_claiming_a_huge_array_is_rejected_before_reading(tmp_path):
    p = tmp_path / "liar.fits"
    fits.PrimaryHDU(data=np.zeros((5, 100), np.float32)).writeto(p)
    raw = bytearray(p.read_bytes())
    i = raw.find(b"NAXIS1  =")
    raw[i:i + 30] = b"NAXIS1  =            900000000"
    p.write_bytes(bytes(raw))
    with pytest.raises(FitsReadError, match="truncated"):
        read_lamost_spectrum(p)


def test_broken_lamost_files(tmp_path):
    w, f, iv, am = lamost_spectrum_truth()
    good = write_lamost_table(tmp_path / "good.fits", w, f, iv, am)
    with pytest.raises(FitsReadError, match="truncated"):
        read_lamost_spectrum(write_truncated(good, tmp_path / "t.fits"))
    with pytest.raises(FitsReadError, match="all-NaN flux"):
        read_lamost_spectrum(write_lamost_image(tmp_path / "nan.fits", w, f * np.nan, iv, am))
    with pytest.raises(FitsReadError, match="no usable wavelengths"):
        bad_w = w.copy()
        bad_w[100] = bad_w[99]
        p = write_lamost_table(tmp_path / "w.fits", bad_w, f, iv, am)
        read_lamost_spectrum(p)
    with pytest.raises(FitsReadError, match="inverse variance is 0 everywhere"):
        read_lamost_spectrum(write_lamost_table(tmp_path / "iv.fits", w, f, iv * 0, am))


# --- catalogue ---------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::astropy.utils.exceptions.AstropyWarning")  # "[Fe/H]" as a name
@pytest.mark.parametrize("fmt,suffix", [("csv", ".csv"), ("fits", ".fits"), ("votable", ".xml")])
def test_catalogue_formats_map_the_same_columns(tmp_path, fmt, suffix):
    rows = {"KIC": np.array([10000001, 10000002]), "RAJ2000": [290.0, 291.0], "DEJ2000": [44.0, 45.0],
            "Teff": [5100.0, 6200.0], "log_g": [4.5, 4.1], "[Fe/H]": [-0.1, 0.2], "Prot": [12.0, 3.5],
            "phot_g_mean_mag": [12.0, 13.0], "parallax": [2.0, 1.0], "Kp": [12.3, 13.2],
            "note": ["a", "b"]}
    cat = read_catalogue(write_catalogue(tmp_path / f"cat{suffix}", rows, fmt))
    t = cat.table
    assert cat.kic_column == "KIC" and list(t["kic"]) == [10000001, 10000002]
    assert cat.columns_found == {"ra": "RAJ2000", "dec": "DEJ2000", "teff": "Teff", "logg": "log_g",
                                 "feh": "[Fe/H]", "prot_days": "Prot", "gaia_g": "phot_g_mean_mag",
                                 "parallax_mas": "parallax", "kepmag": "Kp"}
    np.testing.assert_allclose(t["teff"], [5100.0, 6200.0])
    assert list(t["note"]) == ["a", "b"]


def test_catalogue_star_id_strings(tmp_path):
    p = write_catalogue(tmp_path / "c.csv", {"star_id": ["KIC 10000001", "kplr010000002"], "ra": [1.0, 2.0],
                                             "dec": [3.0, 4.0]}, "csv")
    assert list(read_catalogue(p).table["kic"]) == [10000001, 10000002]
    p = write_catalogue(tmp_path / "d.csv", {"star_id": ["Gaia DR3 123", "HD 456"], "ra": [1.0, 2.0],
                                             "dec": [3.0, 4.0]}, "csv")
    cat = read_catalogue(p)
    assert cat.kic_column is None and "kic" not in cat.table and cat.id_column == "star_id"


@pytest.mark.parametrize("content,match", [
    (b"\x00\x01garbage\xff" * 50, "cannot read the catalogue"),
    (b"kic,teff\n", "no rows"),
    (b"name,teff\nfoo,5000\n", "nothing can be matched"),
    (b"kic,teff\n1,5000\n1,5100\n", "appears more than once"),
])
def test_malformed_catalogue_is_a_value_error_naming_the_file(tmp_path, content, match):
    p = tmp_path / "bad.csv"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        read_catalogue(p)
    assert str(p) in str(e.value)
