"""`desa add`: a user's own ingested stars appended to a trained artifact set: embedded by its model, searchable,
placed on the maps, predicted, shown as their own population, light curves readable; bad inputs write nothing."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from fits_fixtures import lamost_spectrum_truth, write_catalogue, write_lamost_table, write_star_quarters

KICS = (10000011, 10000012, 10000013, 10000014, 10000015)


@pytest.fixture(scope="module")
def my_stars(tmp_path_factory):
    """Five real-format stars (two to three Kepler quarters each, four LAMOST spectra), ingested."""
    from desa_core.data.ingest import ingest
    root = tmp_path_factory.mktemp("mine")
    lc, sp = root / "lc", root / "sp"
    w, f, iv, am = lamost_spectrum_truth()
    for i, kic in enumerate(KICS):
        write_star_quarters(lc, kic, n_quarters=2 + i % 2, ra=280.0 + i, dec=40.0, period=2.0 + i)
        if i < 4:
            write_lamost_table(sp / f"spec-{i}.fits", w, f * (1 + 0.1 * i), iv, am, obsid=700 + i, ra=280.0 + i,
                               dec=40.0, helio_rv=10.0 * i)
    cat = write_catalogue(root / "cat.csv", {
        "kepid": list(KICS), "ra": [280.0 + i for i in range(5)], "dec": [40.0] * 5,
        "phot_g_mean_mag": [12.1, 12.9, 13.4, 11.8, 14.0], "phot_bp_mean_mag": [12.5, 13.4, 14.0, 12.2, 14.6],
        "phot_rp_mean_mag": [11.5, 12.2, 12.7, 11.2, 13.3], "parallax": [3.0, 2.2, 1.5, 4.0, 1.1],
        "parallax_error": [0.02] * 5, "a_v": [0.1] * 5, "teff": [5600.0, 5100.0, 4800.0, 6000.0, np.nan]}, "csv")
    out = root / "store"
    ingest(lc, sp, cat, out)
    return out


@pytest.fixture()
def art(trained_demo, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(trained_demo.art, dst)
    return dst


def test_add_makes_my_stars_searchable_placed_predicted_and_a_population(art, my_stars):
    from app.state import AppData, preset_populations
    from desa_core.artifacts import ArtifactSet
    from precompute.add import add_stars
    before = ArtifactSet.open(art)
    n0 = before.n_stars
    old_desa = np.array(before.embedding("desa"))
    res = add_stars(art, my_stars, label="my stars", progress=False)
    assert res["n_added"] == 5 and res["n_stars"] == n0 + 5

    after = ArtifactSet.open(art, verify=True)          # a consistent, checksummed set
    assert after.n_stars == n0 + 5 and after.manifest["added"][0]["label"] == "my stars"
    stars = after.stars
    mine = stars.iloc[n0:]
    assert list(mine["star_id"]) == [f"KIC {k}" for k in KICS]
    assert (mine["added_set"] == "my stars").all() and (stars["added_set"].iloc[:n0] == "").all()
    # the survey's rows are untouched
    np.testing.assert_array_equal(after.embedding("desa")[:n0], old_desa)
    for col in ("umap_x", "umap_y", "p_binary", "age_pred_gyr"):
        assert np.isfinite(mine[col]).all(), col
    assert np.isfinite(mine["teff_pred"].iloc[:4]).all() and np.isnan(mine["teff_pred"].iloc[4])  # no spectrum
    assert np.isfinite(mine["prot_acf_days"]).all()                                              # measured
    assert np.isfinite(mine["abs_g0"]).all() and np.isfinite(mine["bp_rp0"]).all()
    # Searchable: each added star's DESA embedding finds itself first, in every index that holds it.
    for name in ("desa", "light_curve"):
        sims, rows = after.search(name, after.embedding(name)[n0:], k=3)
        np.testing.assert_array_equal(rows[:, 0], np.arange(n0, n0 + 5))
    sims, rows = after.search("spectrum", after.embedding("spectrum")[n0:n0 + 4], k=3)
    np.testing.assert_array_equal(rows[:, 0], np.arange(n0, n0 + 4))
    # Placed on the UMAP within the survey's layout (through their nearest survey stars).
    ux = stars["umap_x"].to_numpy()
    assert ((mine["umap_x"] >= np.nanmin(ux[:n0])) & (mine["umap_x"] <= np.nanmax(ux[:n0]))).all()

    # The page: a preset population of exactly these stars, their light curves shown from the added store.
    data = AppData(after)
    presets = preset_populations(data.stars)
    assert presets["added: my stars"] == "added_set == 'my stars'"
    from app.state import Session
    s = Session(data)
    s.define_population("added: my stars", expr=presets["added: my stars"])
    assert s.populations["added: my stars"]["count"] == 5
    t, f = data.light_curve(n0)
    assert len(t) > 100 and abs(np.nanmedian(f) - 1) < 0.05
    assert data.spectrum(n0 + 4) is None and data.spectrum(n0) is not None


def test_add_refuses_bad_inputs_and_writes_nothing(art, my_stars, trained_demo, tmp_path):
    from desa_core.artifacts import ArtifactSet
    from desa_core.cli import main
    from precompute.add import AddError, add_stars
    manifest = (art / "manifest.json").read_bytes()
    with pytest.raises(AddError, match="already in"):
        add_stars(art, trained_demo.survey, progress=False)        # the survey's own stars
    with pytest.raises(AddError, match="label"):
        add_stars(art, my_stars, label="x'); drop", progress=False)
    with pytest.raises(AddError, match="not a|missing|no survey|manifest"):
        add_stars(art, tmp_path, progress=False)                   # not a store
    assert (art / "manifest.json").read_bytes() == manifest          # nothing written
    assert ArtifactSet.open(art, verify=True).n_stars == ArtifactSet.open(trained_demo.art).n_stars
    # the command line: one-line error, exit 1; then a working add, then the same label again is refused
    assert main(["add", "--artifacts", str(art), "--survey", str(tmp_path / "nope")]) == 1
    assert main(["add", "--artifacts", str(art), "--survey", str(my_stars), "--label", "mine"]) == 0
    with pytest.raises(AddError, match="already"):
        add_stars(art, my_stars, label="mine", progress=False)
