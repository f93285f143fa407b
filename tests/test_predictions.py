"""Predicted properties (desa_core.models.inference.Predictor) in the artifact set a trained run builds: present,
bounded, NaN exactly where the modality they read is missing, and the same as predicting the stars again."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def stars(trained_demo):
    return pd.read_parquet(trained_demo.art / "stars.parquet")


def test_every_star_has_bounded_predictions(stars):
    from desa_core.models.inference import PREDICTION_COLUMNS
    assert set(PREDICTION_COLUMNS) <= set(stars.columns)
    p = stars["p_binary"].to_numpy()
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all() and p.std() > 0
    lo, mid, hi = (stars[c].to_numpy() for c in ("age_pred_lo_gyr", "age_pred_gyr", "age_pred_hi_gyr"))
    assert np.isfinite(mid).all() and (lo <= mid).all() and (mid <= hi).all() and (hi - lo).mean() > 0.05
    has_sp, has_lc = stars["has_spectrum"].to_numpy(bool), stars["has_light_curve"].to_numpy(bool)
    for col in ("teff_pred", "logg_pred", "feh_pred"):
        assert np.isfinite(stars.loc[has_sp, col]).all() and np.isnan(stars.loc[~has_sp, col]).all(), col
    assert np.isfinite(stars.loc[has_lc, "prot_pred_days"]).all()
    assert np.isnan(stars.loc[~has_lc, "prot_pred_days"]).all()
    t = stars.loc[has_sp, "teff_pred"]
    assert 2500 < t.min() and t.max() < 10000 and (stars.loc[has_lc, "prot_pred_days"] > 0).all()


def test_the_stored_predictions_are_the_runs(stars, trained_demo):
    """(How good they are is measured on the default run by benchmarks/predictions_quality.py.)"""
    from desa_core.artifacts import ArtifactSet
    from desa_core.models.inference import Predictor
    art = ArtifactSet.open(trained_demo.art)
    again = Predictor.from_run(trained_demo.run).predict(np.asarray(art.embedding("light_curve")),
                                                         np.asarray(art.embedding("spectrum")))
    for k, v in again.items():
        np.testing.assert_allclose(stars[k].to_numpy(np.float64), v, rtol=1e-4, atol=1e-4, equal_nan=True)
