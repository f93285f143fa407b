"""UMAP map placement: stars outside the fitted sample placed by FAISS kNN interpolation agree with
umap-learn's transform on where they belong."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from precompute.maps import KnnPlacer, UmapConfig, fit_size, umap_layout


def _blobs(n_per=300, dims=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (3, dims)) * 4
    x = np.concatenate([c + rng.normal(0, 1, (n_per, dims)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(3), n_per)


def test_fit_size_grows_with_n_and_is_capped():
    cfg = UmapConfig()
    assert fit_size(10_000, cfg) == 10_000
    assert fit_size(1_000_000, cfg) == 50_000
    assert fit_size(3_000_000, cfg) == 150_000
    assert fit_size(10_000_000, cfg) == 200_000


def test_knn_placer_interpolates_and_reproduces_fitted_points():
    rng = np.random.default_rng(1)
    fit_x = rng.normal(size=(50, 8)).astype(np.float32)
    fit_xy = rng.normal(size=(50, 2)).astype(np.float32)
    placer = KnnPlacer(fit_x, fit_xy, k=5)
    assert np.allclose(placer.place(fit_x[:10]), fit_xy[:10], atol=1e-3)   # a duplicate lands on its twin
    out = placer.place(rng.normal(size=(20, 8)).astype(np.float32))
    lo, hi = fit_xy.min(axis=0), fit_xy.max(axis=0)                        # a weighted mean: inside the hull box
    assert ((out >= lo - 1e-5) & (out <= hi + 1e-5)).all()


@pytest.mark.parametrize("placement", ["knn", "transform"])
def test_placed_stars_land_among_their_own_kind(placement):
    x, label = _blobs()
    cfg = UmapConfig(fit_min=300, fit_max=300, placement=placement, chunk=200)
    xy, info = umap_layout(x, cfg, seed=0, progress=False)
    assert info["n_fit"] == 300 and info["n_transformed"] == 600 and info["placement"] == placement
    assert np.isfinite(xy).all()
    # the fitted stars are the ones whose coordinates come from the fit; find them again by the seed's rule
    rng = np.random.default_rng(0)
    fit_rows = np.sort(rng.choice(len(x), size=300, replace=False))
    rest = np.setdiff1d(np.arange(len(x)), fit_rows)
    nn = cKDTree(xy[fit_rows]).query(xy[rest], 5)[1]
    votes = label[fit_rows][nn]
    majority = np.array([np.bincount(v, minlength=3).argmax() for v in votes])
    assert (majority == label[rest]).mean() > 0.95


def test_layouts_fitted_side_by_side_equal_the_ones_fitted_in_turn(tmp_path):
    """precompute fits the three layouts in worker processes (each seeded fit uses one core); the maps must be
    the ones a fit in this process gives."""
    from precompute.maps import fit_layouts
    x, _ = _blobs(n_per=120, dims=12)
    y = x[:, ::-1].copy() * 0.5
    y[::7] = np.nan                                   # a stream some stars lack
    paths = {"a": tmp_path / "a.npy", "b": tmp_path / "b.npy"}
    np.save(paths["a"], x)
    np.save(paths["b"], y)
    cfg = UmapConfig(fit_min=200, fit_max=250, n_neighbors=10)
    fits = fit_layouts(paths, cfg, seed=3)
    assert set(fits) == {"a", "b"} and len(fits["a"]["fit_rows"]) == fit_size(360, cfg) == 200
    for name in paths:
        emb = np.load(paths[name], mmap_mode="r")
        xy_side, info = umap_layout(emb, cfg, seed=3, progress=False, emb_path=paths[name], fitted=fits[name])
        xy_here, _ = umap_layout(emb, cfg, seed=3, progress=False, emb_path=paths[name])
        np.testing.assert_allclose(xy_side, xy_here, atol=1e-4, equal_nan=True)
        assert info["n_fit"] == len(fits[name]["fit_rows"]) and np.isnan(xy_side).any() == (name == "b")
