"""The artifact-set loader: what the dashboard reads, and the errors it gets for unfinished or damaged sets."""
import json
import shutil

import numpy as np
import pytest

from desa_core.artifacts import ArtifactError, ArtifactSet
from precompute.pipeline import run_precompute


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return run_precompute(synthetic=300, out=tmp_path_factory.mktemp("art") / "set", seed=3, progress=False)


@pytest.fixture
def copy(art, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(art, dst)
    return dst


def test_open_reads_everything_the_app_needs(art):
    a = ArtifactSet.open(art, verify=True)
    assert a.is_synthetic_benchmark and a.is_simulated and a.n_stars == 300
    assert a.survey_store() is None and a.run_path is None
    stars = a.stars
    assert len(stars) == 300 and stars["star_id"].is_unique
    for col in ("star_id", "umap_x", "umap_y", "bp_rp", "abs_g", "teff", "log_lum", "prot_days", "binary_class",
                "has_light_curve", "has_spectrum", "split"):
        assert col in stars
    assert stars["umap_x"].dtype == np.float32 and np.isfinite(stars[["umap_x", "umap_y"]].to_numpy()).all()
    assert list(a.read_stars(["star_id", "teff"]).columns) == ["star_id", "teff"]
    assert list(ArtifactSet.open(art, columns=["star_id"]).stars.columns) == ["star_id"]

    for name in ("desa", "light_curve", "spectrum"):
        e = a.embedding(name)
        assert e.dtype == np.float32 and e.shape[0] == 300 and not e.flags.writeable
        defined = np.isfinite(e).all(axis=1)
        assert a.index(name).ntotal == defined.sum() == a.manifest["embeddings"][name]["n_defined"]
    assert np.isfinite(a.embedding("desa")).all()
    np.testing.assert_array_equal(np.isfinite(a.embedding("spectrum")).all(axis=1), stars["has_spectrum"])


def test_search_returns_rows_of_the_star_table(art):
    a = ArtifactSet.open(art)
    sims, rows = a.search("desa", a.embedding("desa")[[5, 9]], k=4)
    assert list(rows[:, 0]) == [5, 9] and sims.shape == (2, 4)
    has_lc = np.flatnonzero(a.stars["has_light_curve"].to_numpy())
    _, rows = a.search("light_curve", a.embedding("light_curve")[[has_lc[0]]], k=10)
    assert np.isin(rows, has_lc).all()
    subset = np.arange(0, 300, 4)
    _, rows = a.search("desa", a.embedding("desa")[[1]], k=10, subset_ids=subset)
    assert np.isin(rows, subset).all()
    assert a.row_of(a.stars["star_id"].iat[17]) == 17
    # The index works on centred vectors (a common offset would flatten every cosine towards 1).
    emb = np.asarray(a.embedding("light_curve"))
    np.testing.assert_allclose(a.center("light_curve"), np.nanmean(emb, axis=0), atol=1e-4)


def test_unfinished_set_says_so(copy):
    (copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="interrupted"):
        ArtifactSet.open(copy)


def test_missing_and_damaged_files_are_named(copy):
    with pytest.raises(ArtifactError, match="no artifact set"):
        ArtifactSet.open(copy / "nowhere")
    (copy / "index_spectrum.faiss").unlink()
    with pytest.raises(ArtifactError, match="index_spectrum.faiss"):
        ArtifactSet.open(copy)


def test_truncated_file_is_detected(copy):
    p = copy / "emb_desa.npy"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="emb_desa.npy.*size"):
        ArtifactSet.open(copy)


def test_flipped_byte_is_caught_by_verify(copy):
    p = copy / "stars.parquet"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))
    ArtifactSet.open(copy)                     # same size: the cheap check passes
    with pytest.raises(ArtifactError, match="stars.parquet.*checksum"):
        ArtifactSet.open(copy, verify=True)


def test_bad_manifest(copy):
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json.*unreadable"):
        ArtifactSet.open(copy)
    (copy / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not a DESA artifact"):
        ArtifactSet.open(copy)


def test_unknown_embedding_name(art):
    with pytest.raises(ArtifactError, match="photometry"):
        ArtifactSet.open(art).embedding("photometry")
