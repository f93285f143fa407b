"""`desa ingest`: real-format FITS + catalogue -> a survey store, with bad files skipped and atomic writes."""
import json

import numpy as np
import pytest

from desa_core.cli import main
from desa_core.data import ingest as ingest_module
from desa_core.data.ingest import IngestConfig, ingest
from desa_core.data.readers.kepler import bin_to_grid
from desa_core.data.readers.lamost import lamost_wavelength_grid, read_lamost_spectrum, spectrum_on_grid
from desa_core.data.store import CATALOG_COLUMNS, SurveyStore
from fits_fixtures import (lamost_spectrum_truth, write_catalogue, write_lamost_image, write_lamost_table,
                           write_not_fits, write_star_quarters, write_truncated)

ARCSEC = 1 / 3600.0


def _survey(tmp_path, catalogue_fmt="csv", catalogue_suffix=".csv", with_kic=True, extra_rows=None):
    """Two stars with light curves (3 and 2 quarters), spectra for star 1 (DR4 layout) and star 3 (DR8
    layout, 1 arcsec off), star 4 in the catalogue with no data, and one broken file of each kind."""
    lc, sp = tmp_path / "lc", tmp_path / "sp"
    truth1 = write_star_quarters(lc, 10000001, n_quarters=3, ra=290.0, dec=44.0)
    write_star_quarters(lc, 10000002, n_quarters=2, ra=291.0, dec=45.0, t_start=150.0)
    w, f, iv, am = lamost_spectrum_truth()
    write_lamost_image(sp / "spec-1.fits", w, f, iv, am, obsid=501, ra=290.0, dec=44.0 + 0.5 * ARCSEC, z=1e-4)
    write_lamost_table(sp / "spec-3.fits", w, f * 2, iv / 4, am, obsid=503, ra=292.0, dec=46.0 + 1.0 * ARCSEC,
                       helio_rv=-30.0)
    bad = {
        str(write_truncated(truth1["paths"][0], lc / "trunc_llc.fits")): "truncated",
        str(write_not_fits(lc / "html_llc.fits")): "not a readable FITS file",
        str(write_lamost_table(sp / "nm.fits", w / 10, f, iv, am, obsid=999)): "covers 0% of",
        str(write_lamost_image(sp / "nan.fits", w, f * np.nan, iv, am, obsid=998)): "all-NaN flux",
    }
    rows = {"kepid": [10000001, 10000002, 10000003, 10000004], "ra": [290.0, 291.0, 292.0, 293.0],
            "dec": [44.0, 45.0, 46.0, 47.0], "Teff": [5200.0, 6100.0, 4800.0, 5900.0],
            "logg": [4.5, 4.2, 4.6, 4.0], "Prot": [6.0, 2.5, 20.0, np.nan], "ruwe": [1.0, 1.1, 0.9, 1.0],
            "survey_flag": ["a", "b", "c", "d"]}
    if not with_kic:
        del rows["kepid"]
    rows.update(extra_rows or {})
    cat = write_catalogue(tmp_path / f"cat{catalogue_suffix}", rows, catalogue_fmt)
    return lc, sp, cat, truth1, bad


def test_ingest_writes_a_store_with_both_modalities_flags_and_skips(tmp_path):
    lc, sp, cat, truth1, bad = _survey(tmp_path)
    out = tmp_path / "store"
    rep = ingest(lc, sp, cat, out)
    assert (rep.n_stars, rep.n_light_curves, rep.n_spectra) == (3, 2, 2)
    assert rep.n_catalog_rows == 4 and rep.n_catalog_rows_without_data == 1
    assert rep.n_quarters_used == 5 and rep.n_light_curves_matched_by_kic == 2
    assert rep.n_spectra_matched_by_position == 2
    # Every broken file is listed once with its reason.
    assert {p for p, _ in rep.skipped} == set(bad)
    for p, reason in rep.skipped:
        assert bad[p] in reason

    s = SurveyStore.open(out, verify=True)
    c = s.catalog.set_index("star_id")
    assert list(c.index) == ["KIC 10000001", "KIC 10000002", "KIC 10000003"]
    assert set(CATALOG_COLUMNS) <= set(s.catalog.columns)
    assert list(c["has_light_curve"]) == [True, True, False]
    assert list(c["has_spectrum"]) == [True, False, True]
    assert s.light_curve("KIC 10000003") is None and s.spectrum("KIC 10000002") is None
    assert c.loc["KIC 10000001", "teff"] == 5200.0 and c.loc["KIC 10000001", "prot_days"] == 6.0
    assert np.isnan(c["feh"]).all() and set(c["binary_class"]) == {"unknown"} and not c["is_binary"].any()
    assert c.loc["KIC 10000001", "kepmag"] == 12.5                    # from the KEPMAG header
    assert list(c["survey_flag"]) == ["a", "b", "c"]                   # extra catalogue column kept
    assert c.loc["KIC 10000003", "rv_kms_obs"] == -30.0                # HELIO_RV
    assert c.loc["KIC 10000001", "rv_kms_obs"] == pytest.approx(1e-4 * 299792.458)  # Z * c
    assert set(c["split"]) <= {"train", "val", "test"}

    # One cadence grid from the earliest to the latest good time stamp over all files.
    t_all = np.concatenate([truth1["time"]])
    assert s.time[0] == pytest.approx(t_all.min())
    assert np.allclose(np.diff(s.time), 29.4244 / 1440)
    t, flux = s.light_curve("KIC 10000001")
    expected = bin_to_grid(truth1["time"], truth1["signal"] / np.median(truth1["signal"]), s.time)
    has = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(flux), has)             # NaN exactly where there is no data
    assert np.max(np.abs(flux[has] - expected[has])) < 5e-4

    w, sf, si = s.spectrum("KIC 10000003")
    np.testing.assert_allclose(w, lamost_wavelength_grid())
    ref_f, ref_i = spectrum_on_grid(read_lamost_spectrum(sp / "spec-3.fits"), lamost_wavelength_grid())
    np.testing.assert_allclose(sf, ref_f, rtol=1e-6)
    np.testing.assert_allclose(si, ref_i, rtol=1e-6)

    m = s.manifest
    assert m["source"] == "ingested" and "feh" in m["columns_absent"] and "teff" not in m["columns_absent"]
    assert m["ingest_report"]["n_skipped"] == 4
    report_file = json.loads((out / "ingest_report.json").read_text())
    assert len(report_file["skipped"]) == 4 and report_file["n_stars"] == 3


@pytest.mark.parametrize("fmt,suffix", [("fits", ".fits"), ("votable", ".vot")])
def test_catalogue_formats_give_the_same_store(tmp_path, fmt, suffix):
    lc, sp, cat, _, _ = _survey(tmp_path / "csv")
    ref = ingest(lc, sp, cat, tmp_path / "ref")
    lc2, sp2, cat2, _, _ = _survey(tmp_path / fmt, catalogue_fmt=fmt, catalogue_suffix=suffix)
    rep = ingest(lc2, sp2, cat2, tmp_path / "other")
    assert (rep.n_stars, rep.n_light_curves, rep.n_spectra) == (ref.n_stars, ref.n_light_curves, ref.n_spectra)
    a = SurveyStore.open(tmp_path / "ref").catalog
    b = SurveyStore.open(tmp_path / "other").catalog
    for col in ("star_id", "teff", "logg", "prot_days", "ruwe", "has_light_curve", "has_spectrum", "split"):
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy())


def test_position_match_respects_the_radius(tmp_path):
    lc, sp, cat, _, _ = _survey(tmp_path)
    rep = ingest(lc, sp, cat, tmp_path / "tight", match_radius_arcsec=0.8)  # star 3's spectrum is 1" off
    assert rep.n_spectra == 1
    assert any("spec-3.fits" in p and "no catalogue star within 0.8 arcsec (nearest 1.0)" in r
               for p, r in rep.unmatched)
    c = SurveyStore.open(tmp_path / "tight").catalog
    assert "KIC 10000003" not in set(c["star_id"])                    # no data left for it
    assert ingest(lc, sp, cat, tmp_path / "wide", match_radius_arcsec=1.5).n_spectra == 2


def test_light_curves_match_by_position_without_a_kic_column(tmp_path):
    lc, sp, cat, _, _ = _survey(tmp_path, with_kic=False)
    rep = ingest(lc, sp, cat, tmp_path / "out")
    assert rep.n_light_curves_matched_by_position == 2 and rep.n_light_curves == 2
    c = SurveyStore.open(tmp_path / "out").catalog
    assert list(c["star_id"])[:2] == ["KIC 10000001", "KIC 10000002"]  # the id comes from the FITS header


def test_obsid_column_matches_spectra_regardless_of_position(tmp_path):
    lc, sp, cat, _, _ = _survey(tmp_path, extra_rows={"obsid": [501, 0, 503, 0]})
    w, f, iv, am = lamost_spectrum_truth()
    write_lamost_table(sp / "far.fits", w, f, iv, am, obsid=503, ra=10.0, dec=10.0, snr_r=80.0)
    rep = ingest(lc, sp, cat, tmp_path / "out")
    assert rep.n_spectra_matched_by_obsid == 3
    # Two spectra now belong to KIC 10000003: the higher-S/N one is kept, the other reported.
    c = SurveyStore.open(tmp_path / "out").catalog.set_index("star_id")
    assert c.loc["KIC 10000003", "spectrum_file"] == "far.fits"
    assert any("spec-3.fits" in p and "higher S/N" in r for p, r in rep.superseded)


def test_unknown_kic_and_duplicate_quarter_are_reported(tmp_path):
    lc, sp, cat, truth1, _ = _survey(tmp_path)
    write_star_quarters(lc, 12345678, n_quarters=1)
    (lc / "copy").mkdir()
    (lc / "copy" / truth1["paths"][0].name).write_bytes(truth1["paths"][0].read_bytes())
    rep = ingest(lc, sp, cat, tmp_path / "out")
    assert any("KIC 12345678 is not in the catalogue" in r for _, r in rep.unmatched)
    assert any("duplicate of quarter 1 of KIC 10000001" in r for _, r in rep.superseded)
    assert rep.n_quarters_used == 5


def test_coarser_cadence_bins_the_light_curves(tmp_path):
    lc, sp, cat, _, _ = _survey(tmp_path)
    ingest(lc, sp, cat, tmp_path / "native")
    ingest(lc, sp, cat, tmp_path / "binned", config=IngestConfig(cadence_minutes=6 * 29.4244))
    native, binned = SurveyStore.open(tmp_path / "native"), SurveyStore.open(tmp_path / "binned")
    assert len(binned.time) == pytest.approx(len(native.time) / 6, abs=1)
    _, fb = binned.light_curve("KIC 10000001")
    assert 0.9 < np.nanmedian(fb) < 1.1 and np.isfinite(fb).mean() > 0.7


def test_binarity_from_the_catalogue(tmp_path):
    lc, sp, cat, _, _ = _survey(tmp_path, extra_rows={"is_binary": [True, False, False, True]})
    ingest(lc, sp, cat, tmp_path / "out")
    c = SurveyStore.open(tmp_path / "out").catalog
    assert list(c["is_binary"]) == [True, False, False]
    assert list(c["binary_class"]) == ["wide", "single", "single"]
    lc, sp, cat, _, _ = _survey(tmp_path / "b", extra_rows={"binary_class": ["single", "triple", "", ""]})
    with pytest.raises(ValueError, match="binary_class values \\['triple'\\]"):
        ingest(lc, sp, cat, tmp_path / "out2")


def test_failed_run_leaves_the_previous_store_intact(tmp_path, monkeypatch):
    lc, sp, cat, _, _ = _survey(tmp_path)
    out = tmp_path / "store"
    ingest(lc, sp, cat, out)
    before = (out / "manifest.json").read_text()
    calls = []

    def crash_on_second_star(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return original(*a, **k)

    original = ingest_module.stitch_quarters
    monkeypatch.setattr(ingest_module, "stitch_quarters", crash_on_second_star)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest(lc, sp, cat, out)
    assert len(calls) == 2                                       # it failed in the middle of writing
    assert (out / "manifest.json").read_text() == before
    SurveyStore.open(out, verify=True)                           # checksums of the old store still hold
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".store")] == []


def test_malformed_catalogue_and_missing_folders(tmp_path):
    lc, sp, _, _, _ = _survey(tmp_path)
    bad = tmp_path / "bad.fits"
    write_not_fits(bad)
    with pytest.raises(ValueError, match=f"{bad}: cannot read the catalogue"):
        ingest(lc, sp, bad, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="light-curve folder not found"):
        ingest(tmp_path / "nope", sp, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_ingest(tmp_path, capsys):
    lc, sp, cat, _, _ = _survey(tmp_path)
    assert main(["ingest", "--light-curves", str(lc), "--spectra", str(sp), "--catalog", str(cat),
                 "--out", str(tmp_path / "out"), "--match-radius", "2"]) == 0
    assert SurveyStore.open(tmp_path / "out").manifest["ingest_report"]["match_radius_arcsec"] == 2.0
    bad = write_not_fits(tmp_path / "cat.csv")
    assert main(["ingest", "--light-curves", str(lc), "--spectra", str(sp), "--catalog", str(bad),
                 "--out", str(tmp_path / "out2")]) == 1
    assert str(bad) in capsys.readouterr().err
    # A catalogue that matches nothing: nothing written, exit status 1.
    other = write_catalogue(tmp_path / "other.csv", {"kic": [1, 2], "ra": [10.0, 11.0], "dec": [0.0, 1.0]}, "csv")
    assert main(["ingest", "--light-curves", str(lc), "--spectra", str(sp), "--catalog", str(other),
                 "--out", str(tmp_path / "out3")]) == 1
    assert not (tmp_path / "out3").exists()


def test_an_ingested_store_feeds_the_model_preprocessing(tmp_path):
    """What the store is for: the same preprocessing as simulated stars gives finite model inputs."""
    from desa_core.data.preprocess import clean_light_curve, preprocess_spectrum
    from desa_core.models.config import PreprocessConfig

    lc, sp, cat, _, _ = _survey(tmp_path)
    ingest(lc, sp, cat, tmp_path / "out")
    s = SurveyStore.open(tmp_path / "out")
    cfg = PreprocessConfig()
    t, flux = s.light_curve("KIC 10000001")
    assert np.isfinite(clean_light_curve(t, flux, cfg)).all()
    w, f, iv = s.spectrum("KIC 10000001")
    rv = s.catalog.set_index("star_id").loc["KIC 10000001", "rv_kms_obs"]
    x = preprocess_spectrum(w, f, iv, rv, cfg)
    assert np.isfinite(x).all() and x.std() > 0.1
