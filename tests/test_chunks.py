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
    # the column store the dashboard opens, written by one Dask task per column: the in-process one, file by file
    import json

    from desa_core.columns import SCHEMA
    sa, sb = (json.loads((p / SCHEMA).read_text()) for p in (a.path, b.path))
    assert sa == sb and len(sa["columns"]) > 20
    for f in [e["file"] for e in sa["columns"]] + [sa["id_sorted"], sa["id_order"]]:
        np.testing.assert_array_equal(np.load(a.path / "columns" / f), np.load(b.path / "columns" / f))
    assert not (tmp_path / "dask" / "_work" / "chunks").exists() or \
        not list((tmp_path / "dask" / "_work" / "chunks").rglob("*.npz"))    # chunk files removed once committed


def test_local_workers_keep_glibcs_own_malloc_trim_threshold(caplog, monkeypatch):
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, under which the embedder ran 2.6x slower;
    our LocalCluster's workers run without it, even after a cluster started the Dask way has left the variable
    in this process's environment, and an existing cluster's workers that have it are named."""
    import os

    from distributed import Client, LocalCluster

    from precompute.chunks import TRIM_VAR, _worker_malloc_trim, warn_malloc_trim
    monkeypatch.setenv(TRIM_VAR, "0")   # recorded by monkeypatch, so put back as it was after the test,
    monkeypatch.delenv(TRIM_VAR)        # whatever the nanny writes into os.environ below
    # a cluster started the Dask way (the nanny's default environment), as a user's --scheduler would be
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        with caplog.at_level("WARNING", logger="precompute.chunks"):
            slow = warn_malloc_trim(client)
    assert len(slow) == 1 and TRIM_VAR in caplog.text and slow[0] in caplog.text
    assert os.environ.get(TRIM_VAR) == "65536"       # what the nanny leaves behind in this process
    with ChunkRunner(None, workers=2, progress=False) as r:
        found = r.client().run(_worker_malloc_trim)
        assert len(found) == 2 and set(found.values()) == {None}
        assert warn_malloc_trim(r.client()) == []
    assert os.environ.get(TRIM_VAR) == "65536"       # this process's own environment is left as it was
