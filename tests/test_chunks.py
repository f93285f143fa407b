"""Chunked stage work (precompute.chunks): a killed stage resumes from its finished chunks; a two-worker Dask
LocalCluster gives the in-process result (UMAP placement of a synthetic set)."""
from __future__ import annotations

import numpy as np
import pytest

from precompute.chunks import ChunkRunner, row_ranges

CALLS: list = []


def _square(start, stop, scale):
    CALLS.append((start, stop))
    x = np.arange(start, stop, dtype=np.float64)
    return {"y": scale * x ** 2, "n": np.array([stop - start])}


class Killed(Exception):
    pass


def test_a_killed_stage_resumes_from_its_finished_chunks(tmp_path):
    folder = tmp_path / "chunks" / "square-fp1"
    ranges = row_ranges(1000, 128)
    assert ranges[0] == (0, 128) and ranges[-1] == (896, 1000) and len(ranges) == 8

    def dying(start, stop, scale):
        if start >= 512:
            raise Killed()
        return _square(start, stop, scale)

    got = {}
    with pytest.raises(Killed):
        for a, b, res in ChunkRunner(folder, progress=False).run(_square, ranges, args=(2.0,), local_fn=dying):
            got[a] = res["y"]
    assert len(got) == 4 and len(list(folder.glob("*.npz"))) == 4 and not list(folder.glob(".*.tmp"))
    CALLS.clear()
    r = ChunkRunner(folder, progress=False)
    out = np.zeros(1000)
    for a, b, res in r.run(_square, ranges, args=(2.0,)):
        out[a:b] = res["y"]
    assert (r.loaded, r.computed) == (4, 4) and sorted(CALLS) == ranges[4:]     # only the missing chunks
    np.testing.assert_array_equal(out, 2.0 * np.arange(1000.0) ** 2)
    # a damaged chunk file is recomputed, not trusted
    (folder / "0-128.npz").write_bytes(b"not a zip")
    CALLS.clear()
    list(ChunkRunner(folder, progress=False).run(_square, ranges, args=(2.0,)))
    assert CALLS == [(0, 128)]
    r.clear()
    assert not folder.exists()


@pytest.mark.slow
def test_two_dask_workers_give_the_in_process_result(tmp_path):
    from desa_core.artifacts import ArtifactSet
    from precompute.maps import UmapConfig
    from precompute.pipeline import run_precompute
    cfg = UmapConfig(fit_min=400, fit_max=400, chunk=500)     # fit 400, place the rest in 5 chunks
    # IVF indexes: trained on a sample here, their vectors encoded in chunks (on the workers for the Dask run)
    kw = dict(synthetic=2500, umap=cfg, index_kind="ivf", index_options={"chunk": 700}, progress=False)
    a = ArtifactSet.open(run_precompute(out=tmp_path / "local", **kw))
    b = ArtifactSet.open(run_precompute(out=tmp_path / "dask", workers=2, **kw), verify=True)
    assert a.manifest["maps"]["umap"]["n_transformed"] == 2100
    for cols in (["umap_x", "umap_y"], ["umap_lc_x", "umap_lc_y"], ["umap_spec_x", "umap_spec_y"]):
        x, y = a.stars[cols].to_numpy(), b.stars[cols].to_numpy()
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        np.testing.assert_allclose(x, y, atol=1e-5)
    for name in ("desa", "light_curve", "spectrum"):
        assert b.index_info(name)["type"].startswith("IVF") and b.index_info(name)["n"] == a.index_info(name)["n"]
        q = np.asarray(a.embedding(name))[:60]
        q = q[np.isfinite(q).all(axis=1)]
        sa, ra = a.search(name, q, 10)
        sb, rb = b.search(name, q, 10)
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_allclose(sa, sb, atol=1e-6)
    assert not (tmp_path / "dask" / "_work" / "chunks").exists() or \
        not list((tmp_path / "dask" / "_work" / "chunks").rglob("*.npz"))    # chunk files removed once committed
