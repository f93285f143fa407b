"""Small artifact sets for the dashboard tests, built by the real precompute pipeline (``--synthetic``).

Only UMAP is replaced, by the first two principal components of each embedding: umap-learn's numba
compilation alone takes ~30 s, and the dashboard treats the UMAP columns as plain coordinates.
"""
from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np

TEST_DIMS = {"desa": 32, "light_curve": 16, "spectrum": 16}


def pca_layout(embedding, config=None, seed=0, progress=True, **_):
    """Like umap_layout: NaN coordinates for the NaN rows of a single-modality embedding."""
    x = np.asarray(embedding, dtype=np.float64)
    ok = np.isfinite(x).all(axis=1)
    out = np.full((len(x), 2), np.nan, np.float32)
    z = x[ok] - x[ok].mean(0)
    _, _, vt = np.linalg.svd(z[:: max(1, len(z) // 20_000)], full_matrices=False)
    out[ok] = z @ vt[:2].T
    return out, {"method": "pca (test stand-in for UMAP)"}


def make_artifacts(out: Path, n: int = 1500, seed: int = 0) -> Path:
    """A synthetic-benchmark artifact set of ``n`` stars at ``out`` (seconds, not minutes)."""
    from precompute import maps, pipeline
    with mock.patch.object(pipeline, "umap_layout", pca_layout), mock.patch.object(maps, "umap_layout", pca_layout):
        return pipeline.run_precompute(synthetic=n, out=out, seed=seed, dims=TEST_DIMS, progress=False)
