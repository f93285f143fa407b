"""A spectra-only survey (LAMOST-style: no light curves) is a first-class input: simulated, embedded with a
trained run, precomputed (no light-curve index or map, nothing fails) and served (maps, search, star detail)."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def spectra_only_art(trained_demo, tmp_path_factory):
    import dataclasses

    from desa_core.data.simulate import simulate_survey
    from precompute.pipeline import run_precompute
    from trained_fixtures import simulation_config
    root = tmp_path_factory.mktemp("sponly")
    cfg = dataclasses.replace(simulation_config(80), frac_light_curve_only=0.0, frac_spectrum_only=1.0)
    survey = simulate_survey(seed=11, out=root / "survey", config=cfg, progress=False)
    return run_precompute(survey=survey, run=trained_demo.run, out=root / "art", progress=False)


def test_precompute_of_a_survey_without_light_curves(spectra_only_art):
    from desa_core.artifacts import ArtifactSet
    art = ArtifactSet.open(spectra_only_art, verify=True)
    assert art.embedding_names == ["desa", "spectrum"]           # no light-curve stream to index
    assert set(art.manifest["indexes"]) == {"desa", "spectrum"}
    stars = art.stars
    assert not stars["has_light_curve"].any() and np.isfinite(stars["umap_x"]).all()
    assert np.isfinite(stars["teff_pred"]).all() and np.isnan(stars["prot_pred_days"]).all()
    assert np.isnan(stars["prot_acf_days"]).all() and not stars["rotation_detected"].any()


def test_the_page_serves_it(spectra_only_art):
    from app.main import Explorer
    ex = Explorer(spectra_only_art)
    assert set(ex.data.maps) == {"umap", "umap_spec", "cmd", "hr"}
    for key in ("umap", "cmd", "hr"):
        ex.maps.render(key)
    table = ex.search.search_row(3)
    assert len(table) == 10 and (table["row"] != 3).all()
    ex.search.index_name = "spectrum"
    assert len(ex.search.search_row(3)) == 10
    ex.star_detail.show_row(3)         # a spectrum, no light curve: the detail says so and does not fail
    assert ex.data.light_curve(3) is None and ex.data.spectrum(3) is not None
