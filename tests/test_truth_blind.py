"""A label-free model reads only what a survey measures (issue 11): permuting every true catalogue column of a
survey store across its stars leaves every embedding unchanged; permuting the observed M_G the light-curve
encoder reads does change it (so the check can fail)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

# What places a star in the store, not a property of it.
STRUCTURAL = {"star_id", "ra", "dec", "has_light_curve", "has_spectrum", "split", "lc_row", "spec_row"}


def _observed(col: str) -> bool:
    from desa_core.data.observed import OBSERVED_COLUMNS
    return col.endswith("_obs") or col.endswith("_error") or col in OBSERVED_COLUMNS


@pytest.fixture(scope="module")
def embedder_and_store(trained_demo):
    from desa_core.data.store import SurveyStore
    from desa_core.models.inference import Embedder
    return Embedder.from_run(trained_demo.run, device="cpu"), SurveyStore.open(trained_demo.survey)


def _embed(emb, store):
    return emb.embed_store(store, progress=False, reuse_features=False)


def _permuted(store, columns, seed=0):
    rng = np.random.default_rng(seed)
    cat = store.catalog.copy()
    perm = rng.permutation(len(cat))
    for c in columns:
        cat[c] = cat[c].to_numpy()[perm]
    return dataclasses.replace(store, catalog=cat)


def test_permuting_every_true_column_leaves_the_embeddings_unchanged(embedder_and_store):
    emb, store = embedder_and_store
    true_cols = [c for c in store.catalog.columns if c not in STRUCTURAL and not _observed(c)]
    assert {"abs_g", "teff", "logg", "feh", "prot_days", "age_gyr", "binary_class", "log_lum"} <= set(true_cols)
    before = _embed(emb, store)
    after = _embed(emb, _permuted(store, true_cols))
    for name in ("desa", "light_curve", "spectrum"):
        a, b = before[name], after[name]
        assert np.array_equal(np.isnan(a), np.isnan(b)), name
        ok = np.isfinite(a)
        assert np.allclose(a[ok], b[ok], atol=1e-5), f"{name} moved when the true columns were permuted"


def test_the_luminosity_channel_reads_the_observed_m_g(embedder_and_store):
    from desa_core.data.preprocess import LUMINOSITY_COLUMN
    emb, store = embedder_and_store
    assert LUMINOSITY_COLUMN == "abs_g0" and LUMINOSITY_COLUMN in store.catalog.columns
    before = _embed(emb, store)["light_curve"]
    after = _embed(emb, _permuted(store, [LUMINOSITY_COLUMN]))["light_curve"]
    ok = np.isfinite(before).all(axis=1)
    moved = np.abs(before[ok] - after[ok]).max(axis=1) > 1e-4
    assert moved.mean() > 0.5, "permuting abs_g0 did not move the light-curve embedding"
