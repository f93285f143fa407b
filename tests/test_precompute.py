"""The precompute pipeline: complete artifact sets, resumable stages, fingerprints, and a run killed midway."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from desa_core.artifacts import ArtifactError, ArtifactSet
from desa_core.cli import main as desa_main
from precompute.pipeline import PrecomputeError, run_precompute

ROOT = Path(__file__).resolve().parents[1]


def _records(art):
    return {p.stem: json.loads(p.read_text()) for p in sorted((Path(art) / "_state").glob("*.json"))}


def test_synthetic_set_through_the_cli(tmp_path):
    out = tmp_path / "bench"
    assert desa_main(["precompute", "--synthetic", "500", "--out", str(out), "--seed", "1"]) == 0
    a = ArtifactSet.open(out, verify=True)
    m = a.manifest
    assert m["kind"] == "synthetic-benchmark" and m["simulated"] is True and "SYNTHETIC" in m["label"]
    assert m["n_stars"] == 500 and m["survey"] is None and m["run"] is None
    assert set(m["stages"]) == {"synthetic", "index_desa", "index_light_curve", "index_spectrum", "maps", "stars"}
    assert all(s["wall_s"] >= 0 for s in m["stages"].values())
    assert {f for f in m["files"] if not f.startswith("columns/")} == {
        "stars.parquet", "emb_desa.npy", "emb_light_curve.npy", "emb_spectrum.npy",
        "index_desa.faiss", "index_light_curve.faiss", "index_spectrum.faiss"}
    # the memory-mapped star table the dashboard opens: every column of stars.parquet, and the id lookup
    cols = {f for f in m["files"] if f.startswith("columns/")}
    assert {"columns/schema.json", "columns/star_id_sorted.npy", "columns/star_id_order.npy"} <= cols
    assert len(cols) == len(a.stars.columns) + 3
    for name, e in m["indexes"].items():
        assert e["type"] == "Flat" and e["recall_at_10"] == 1.0 and e["n"] == m["embeddings"][name]["n_defined"]
    stars = a.stars
    # The map has structure: stars close in UMAP are physically alike (same evolutionary state, similar Teff).
    xy = stars[["umap_x", "umap_y"]].to_numpy()
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    nn = d.argmin(axis=1)
    teff = stars["teff"].to_numpy()
    assert np.median(np.abs(teff - teff[nn])) < 0.5 * np.median(np.abs(teff - np.random.default_rng(0).permutation(teff)))
    # Leaves no temporary files behind, and files get the usual permissions (a server may run as another user).
    assert not [p for p in out.rglob(".*.tmp")]
    umask = os.umask(0)
    os.umask(umask)
    for rel in m["files"]:
        assert (out / rel).stat().st_mode & 0o777 == 0o666 & ~umask, rel


def test_rerun_skips_completed_stages_and_fingerprints_invalidate(tmp_path):
    out = tmp_path / "art"
    run_precompute(synthetic=300, out=out, seed=0, progress=False)
    first = _records(out)
    manifest_1 = json.loads((out / "manifest.json").read_text())
    run_precompute(synthetic=300, out=out, seed=0, progress=False)
    assert _records(out) == first                                # nothing recomputed
    # Another seed changes the stars: every stage depends on them and is redone.
    run_precompute(synthetic=300, out=out, seed=5, progress=False)
    third = _records(out)
    assert all(third[s]["inputs"] != first[s]["inputs"] for s in first)
    a = ArtifactSet.open(out, verify=True)
    assert a.manifest["seed"] == 5 and a.manifest["files"] != manifest_1["files"]
    # A stage output damaged on disk (size changed) is recomputed, the rest is kept.
    idx = out / "index_spectrum.faiss"
    idx.write_bytes(idx.read_bytes()[:-8])
    run_precompute(synthetic=300, out=out, seed=5, progress=False)
    fourth = _records(out)
    assert fourth["index_spectrum"]["finished_utc"] >= third["index_spectrum"]["finished_utc"]
    assert fourth["index_spectrum"]["outputs"] == third["index_spectrum"]["outputs"]  # same content again
    assert {s: fourth[s] for s in fourth if s != "index_spectrum"} == \
        {s: third[s] for s in third if s != "index_spectrum"}
    ArtifactSet.open(out, verify=True)


@pytest.mark.slow
def test_run_killed_midway_resumes_without_redoing_finished_stages(tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "precompute", "--synthetic", "800", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "_state" / "index_desa.json").exists():  # the first stages are done ...
            assert proc.poll() is None, "precompute exited before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)                          # ... and UMAP (seconds) is running
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "manifest.json").exists()
    with pytest.raises(ArtifactError, match="interrupted"):
        ArtifactSet.open(out)
    before = _records(out)
    assert "synthetic" in before and "stars" not in before
    run_precompute(synthetic=800, out=out, progress=False)
    after = _records(out)
    for stage, rec in before.items():                              # finished stages were not redone
        assert after[stage] == rec
    a = ArtifactSet.open(out, verify=True)
    assert not [p for p in out.rglob(".*.tmp")]
    # Same result as an uninterrupted run.
    clean = run_precompute(synthetic=800, out=tmp_path / "clean", progress=False)
    b = ArtifactSet.open(clean)
    pd.testing.assert_frame_equal(a.stars, b.stars)
    for name in ("desa", "spectrum"):
        np.testing.assert_array_equal(np.asarray(a.embedding(name)), np.asarray(b.embedding(name)))


def test_synthetic_chunks_do_not_change_the_catalogue_columns(tmp_path):
    out = run_precompute(synthetic=700, out=tmp_path / "chunked", chunk_rows=256, progress=False)
    stars = ArtifactSet.open(out).stars
    assert len(stars) == 700 and stars["star_id"].is_unique
    assert stars["star_id"].iat[300] == "SYN000000300"
    assert set(stars["binary_class"]) <= {"single", "wide", "close_sync", "eclipsing"}
    assert (stars.loc[stars["binary_class"] == "close_sync", "prot_days"]
            == stars.loc[stars["binary_class"] == "close_sync", "porb_days"]).all()


def test_bad_arguments(tmp_path):
    with pytest.raises(PrecomputeError, match="--survey"):
        run_precompute(out=tmp_path / "x")
    with pytest.raises(PrecomputeError, match="synthetic"):
        run_precompute(survey=tmp_path, synthetic=10, out=tmp_path / "x")
    with pytest.raises(PrecomputeError, match="not a survey store"):
        run_precompute(survey=tmp_path / "nosurvey", run=tmp_path, out=tmp_path / "x")
    # Two runs on one folder at once would interleave their files: the second one refuses.
    import fcntl
    busy = tmp_path / "busy"
    busy.mkdir()
    with open(busy / ".precompute.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(PrecomputeError, match="another precompute"):
            run_precompute(synthetic=10, out=busy)
    # The CLI turns these into a one-line error and exit code 1.
    assert desa_main(["precompute", "--out", str(tmp_path / "x")]) == 1


# ------------------------------------------------------------------ survey + trained run (the real path)
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny survey store and a run trained on it with tests/tiny_config.yaml (seconds)."""
    from tiny_survey import make_tiny_survey

    from desa_core.train import stages as train_stages
    from desa_core.train.run import train
    root = tmp_path_factory.mktemp("tiny")
    survey = make_tiny_survey(root / "survey", n_stars=40)
    run = train(survey, config=str(Path(__file__).with_name("tiny_config.yaml")), out=root / "run",
                stages=list(train_stages.STAGES))
    return Path(survey), Path(run)


@pytest.fixture(scope="module")
def survey_art(tiny_run, tmp_path_factory):
    survey, run = tiny_run
    return run_precompute(survey=survey, run=run, out=tmp_path_factory.mktemp("sa") / "art", progress=False)


def test_survey_set_embeds_every_star_with_the_run(tiny_run, survey_art):
    from desa_core.data.store import SurveyStore
    from desa_core.models.inference import Embedder
    survey, run = tiny_run
    a = ArtifactSet.open(survey_art, verify=True)
    store = SurveyStore.open(survey)
    m = a.manifest
    assert m["kind"] == "survey" and not a.is_synthetic_benchmark and a.n_stars == len(store)
    assert m["survey"]["path"] == str(survey.resolve()) and m["run"]["config"] == "tiny"
    assert a.run_path == run.resolve() and a.survey_store().path == survey.resolve()
    emb = Embedder.from_run(run)
    assert m["run"]["fingerprint"] == emb.fingerprint
    ref = emb.embed_store(store, progress=False)
    for name in ("desa", "light_curve", "spectrum"):
        got = np.asarray(a.embedding(name))
        assert got.shape == ref[name].shape == (len(store), emb.dims[name])
        np.testing.assert_allclose(got, ref[name], atol=1e-5)
    np.testing.assert_array_equal(np.isfinite(a.embedding("light_curve")).all(1), store.catalog["has_light_curve"])
    np.testing.assert_array_equal(np.isfinite(a.embedding("spectrum")).all(1), store.catalog["has_spectrum"])
    assert a.index("spectrum").ntotal == int(store.catalog["has_spectrum"].sum())
    pd.testing.assert_series_equal(a.stars["star_id"], store.catalog["star_id"].astype(str), check_dtype=False)
    # Search = exact cosine over the centred embedding, queried with raw embedding rows.
    from desa_core.index import exact_search
    centred = np.asarray(a.embedding("desa")) - a.center("desa")
    np.testing.assert_array_equal(a.search("desa", a.embedding("desa")[:5], 5)[1], exact_search(centred, centred[:5], 5)[1])


def test_changed_model_invalidates_what_depends_on_it(tiny_run, survey_art, tmp_path):
    import shutil

    import torch
    survey, run = tiny_run
    out = tmp_path / "art"
    shutil.copytree(survey_art, out)
    before = _records(out)
    run_precompute(survey=survey, run=run, out=out, progress=False)       # same inputs: nothing redone
    assert _records(out) == before
    run2 = tmp_path / "run2"
    shutil.copytree(run, run2)
    ckpt = run2 / "checkpoints" / "dualformer.pt"
    state = torch.load(ckpt, weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for k, v in state.items():                      # "retrained": every weight moves a little
        if v.is_floating_point() and v.ndim == 2:
            state[k] = v + 0.1 * torch.randn(v.shape, generator=gen)
    torch.save(state, ckpt)
    run_precompute(survey=survey, run=run2, out=out, progress=False)
    after = _records(out)
    for stage in ("embed", "index_desa", "maps", "stars"):
        assert after[stage]["inputs"] != before[stage]["inputs"], stage
    a = ArtifactSet.open(out, verify=True)
    assert a.manifest["run"]["path"] == str(run2.resolve())
    assert not np.allclose(np.asarray(a.embedding("desa")), np.asarray(ArtifactSet.open(survey_art).embedding("desa")))


@pytest.mark.slow
def test_dask_workers_give_the_single_process_result(tiny_run, survey_art, tmp_path):
    survey, run = tiny_run
    out = run_precompute(survey=survey, run=run, out=tmp_path / "dask", workers=2, chunk_rows=8, progress=False)
    a, b = ArtifactSet.open(survey_art), ArtifactSet.open(out, verify=True)
    for name in ("desa", "light_curve", "spectrum"):
        x, y = np.asarray(a.embedding(name)), np.asarray(b.embedding(name))
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        np.testing.assert_allclose(x, y, atol=1e-5)   # batch composition differs: float rounding only
