"""FAISS index module: exact and approximate search return catalogue row ids, restricted search stays inside
the selection, memory-mapped files round-trip, and bad files give errors that name them."""
import numpy as np
import pytest

from desa_core import index as X


def _clustered(n=4000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    return (centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = _clustered()
    ids = np.arange(len(x), dtype=np.int64) * 3 + 7   # rows of a larger catalogue, as for a stream index
    return x, ids


def test_flat_is_exact_and_returns_row_ids(data):
    x, ids = data
    index, info = X.build_index(x, ids, kind="flat")
    assert info.type == "Flat" and info.recall_at_10 == 1.0 and info.n == len(x)
    sims, got = X.search(index, x[:20], 10)
    ref_s, ref_i = X.exact_search(x, x[:20], 10, ids=ids)
    np.testing.assert_array_equal(got, ref_i)
    np.testing.assert_allclose(sims, ref_s, atol=1e-5)
    assert (got[:, 0] == ids[:20]).all()                      # each star is its own nearest neighbour
    assert np.all(np.diff(sims, axis=1) <= 1e-6)                # sorted, most similar first
    q = x[:1] * 17.0                                            # cosine: the query's scale does not matter
    np.testing.assert_array_equal(X.search(index, q, 10)[1], got[:1])


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_approximate_kinds_meet_recall_and_store_tuning(data, kind, tmp_path):
    x, ids = data
    index, info = X.build_index(x, ids, kind=kind, target_recall=0.95, n_recall_queries=100)
    assert info.kind == kind and info.n_recall_queries == 100
    assert info.recall_at_10 >= 0.95
    assert ("efSearch" in info.params) if kind == "hnsw" else ("nprobe" in info.params)
    # The tuned setting travels inside the file: a reopened index reaches the same recall on new queries.
    X.write_index(index, tmp_path / "i.faiss")
    reopened = X.open_index(tmp_path / "i.faiss")
    vectors = np.full((ids.max() + 1, x.shape[1]), np.nan, np.float32)
    vectors[ids] = x
    q = x[::97]
    exact = X.exact_search(x, q, 10, ids=ids)[1]
    approx = X.search(reopened, q, 10, vectors=vectors, rerank=info.params.get("rerank", 1))[1]
    assert X.recall_at_k(approx, exact) >= 0.9


def test_auto_chooses_flat_then_approximate():
    assert X.choose_kind(10_000, 32) == "flat"
    assert X.choose_kind(400_000, 32) == "flat" and X.choose_kind(400_000, 256) == "ivf"
    assert X.choose_kind(2_000_000, 32) == "ivf" and X.choose_kind(10_000_000, 32) == "ivf"
    assert X.choose_kind(20_000_000, 256) == "ivfpq" and X.choose_kind(40_000_000, 32) == "ivfpq"
    x = _clustered(600, 16)
    _, info = X.build_index(x, kind="auto", flat_max=500, n_recall_queries=50)
    assert info.kind == "ivf"


def test_subset_search_stays_inside_the_selection(data):
    x, ids = data
    flat, _ = X.build_index(x, ids, kind="flat")
    hnsw, _ = X.build_index(x, ids, kind="hnsw", n_recall_queries=50)
    vectors = np.full((ids.max() + 1, x.shape[1]), np.nan, np.float32)
    vectors[ids] = x
    subset = np.concatenate([ids[::5], [1, 2]])                 # rows 1, 2 have no vector (NaN): never returned
    ref = X.exact_search(x[::5], x[:8], 10, ids=ids[::5])[1]
    for index in (flat, hnsw):
        # brute force over the selection / wider search filtered to the 20 % selection
        for kw in ({"vectors": vectors}, {"vectors": vectors, "brute_force_max": 0}):
            got = X.search(index, x[:8], 10, subset_ids=subset, **kw)[1]
            assert np.isin(got, ids[::5]).all()
            if kw.get("brute_force_max", 1) or index is flat:  # brute force and exact selector: exact answer
                np.testing.assert_array_equal(got, ref)
    # A selection of 2 % goes through the ID selector (post-filtering a wider search would need k/0.02 hits).
    few = ids[::50]
    ref_few = X.exact_search(x[::50], x[:8], 10, ids=few)[1]
    np.testing.assert_array_equal(X.search(flat, x[:8], 10, subset_ids=few, vectors=vectors, brute_force_max=0)[1],
                                  ref_few)
    # An exact index can answer a small subset without the vectors (reconstructed from the index).
    np.testing.assert_array_equal(X.search(flat, x[:8], 10, subset_ids=subset)[1], ref)


def test_subset_smaller_than_k_pads_with_minus_one(data):
    x, ids = data
    flat, _ = X.build_index(x, ids, kind="flat")
    sims, got = X.search(flat, x[:2], 5, subset_ids=ids[:3])
    assert (got[:, :3] >= 0).all() and (got[:, 3:] == -1).all()
    assert np.isnan(sims[:, 3:]).all() and np.isfinite(sims[:, :3]).all()
    sims, got = X.search(flat, x[:2], 5, subset_ids=[])
    assert (got == -1).all()


def test_memory_mapped_round_trip(data, tmp_path):
    x, ids = data
    index, _ = X.build_index(x, ids, kind="flat")
    path = X.write_index(index, tmp_path / "sub" / "flat.faiss")
    assert not list(path.parent.glob(".*.tmp"))
    reopened = X.open_index(path)
    np.testing.assert_array_equal(X.search(reopened, x[:5], 10)[1], X.search(index, x[:5], 10)[1])
    np.testing.assert_array_equal(X.index_ids(reopened), np.sort(ids))


def test_missing_and_corrupt_index_files_are_named(tmp_path):
    with pytest.raises(X.IndexError_, match="nothere.faiss"):
        X.open_index(tmp_path / "nothere.faiss")
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"definitely not a faiss index")
    with pytest.raises(X.IndexError_, match="bad.faiss"):
        X.open_index(bad)


def test_bad_arguments():
    x = _clustered(100, 8)
    with pytest.raises(ValueError, match="kind"):
        X.build_index(x, kind="kd-tree")
    with pytest.raises(ValueError, match="ids"):
        X.build_index(x, np.arange(5))
    with pytest.raises(ValueError, match="zero"):
        X.build_index(x[:0])


def test_recall_at_k():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[1, 2, 9, 9], [5, 6, 7, 8]])
    assert X.recall_at_k(approx, exact, k=4) == pytest.approx(0.75)
