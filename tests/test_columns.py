"""The memory-mapped star table (desa_core/columns.py): every kind of column round-trips through the files the
dashboard opens, star ids are found by binary search, and an artifact set's column store says what its
stars.parquet says."""
import numpy as np
import pandas as pd
import pytest

from desa_core.artifacts import ParquetChunkWriter
from desa_core.columns import MAX_CATEGORIES, SCHEMA, ColumnStoreError, StarTable, column_arrays
from precompute.stages import write_star_columns


def _frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    teff = rng.normal(5500, 500, n).astype(np.float32)
    teff[::17] = np.nan
    kic = pd.array(rng.integers(1_000_000, 13_000_000, n), dtype="Int64")
    kic[::9] = pd.NA                                  # integers with missing values
    flag = rng.random(n) > 0.5
    flag_na = pd.array(flag, dtype="boolean")
    flag_na[::7] = pd.NA                              # booleans with missing values
    cls = np.array(["single", "wide", "close_sync"], dtype=object)[rng.integers(0, 3, n)]
    cls[::11] = None
    text = np.array([f"obs-{i}" for i in rng.permutation(n)], dtype=object)   # > MAX_CATEGORIES distinct
    text[::13] = None
    return pd.DataFrame({"star_id": [f"KIC {1000 + i}" for i in rng.permutation(n)], "teff": teff,
                         "ra": rng.uniform(280, 300, n), "kic": kic, "is_binary": flag, "maybe": flag_na,
                         "binary_class": cls, "obsid": text, "n_q": rng.integers(1, 18, n)})


def _write(tmp_path, df):
    w = ParquetChunkWriter(tmp_path / "stars.parquet")
    w.write(df)
    w.commit()
    return write_star_columns(tmp_path)


def test_every_kind_round_trips_through_the_files(tmp_path):
    df = _frame()
    rels = _write(tmp_path, df)
    assert rels[-1] == SCHEMA and all((tmp_path / r).is_file() for r in rels)
    back = pd.read_parquet(tmp_path / "stars.parquet")
    t = StarTable.open(tmp_path)
    mem = StarTable.from_frame(back)
    assert t.columns == list(df.columns) == mem.columns and t.n == len(df)
    kinds = {c: t.kind(c) for c in t.columns}
    assert kinds == {"star_id": "text", "teff": "numeric", "ra": "numeric", "kic": "numeric", "is_binary": "boolean",
                     "maybe": "boolean", "binary_class": "categorical", "obsid": "text", "n_q": "numeric"}
    assert isinstance(t.stored("teff"), np.memmap)       # opened, not read
    assert t.stored("ra").dtype == np.float64            # sky positions keep their precision
    for table in (t, mem):
        np.testing.assert_array_equal(table.numeric("teff"), df["teff"].to_numpy(np.float32))
        np.testing.assert_array_equal(table.numeric("kic"), df["kic"].to_numpy(np.float32, na_value=np.nan))
        want_maybe = df["maybe"].astype("float32").to_numpy(np.float32, na_value=np.nan)
        np.testing.assert_array_equal(table.numeric("maybe"), want_maybe)
        assert table.categories("binary_class") == ["close_sync", "single", "wide"]
        codes = np.asarray(table.codes("binary_class"))
        assert (codes[::11] == -1).all() and set(codes[codes >= 0]) <= {0, 1, 2}
        rows = np.array([0, 11, 13, 5, 199])
        got = table.frame(rows)
        want = back.iloc[rows].reset_index(drop=True)
        for c in ("star_id", "binary_class", "obsid"):
            assert [None if pd.isna(v) else v for v in got[c]] == [None if pd.isna(v) else v for v in want[c]]
        np.testing.assert_allclose(got["ra"].astype(float), want["ra"])
        assert table.row(3)["star_id"] == df["star_id"][3]
        assert list(table.ids[[4, 2]]) == list(df["star_id"][[4, 2]]) and table.ids[7] == df["star_id"][7]


def test_star_ids_are_found_by_binary_search_and_unknown_ones_are_minus_one(tmp_path):
    df = _frame()
    _write(tmp_path, df)
    t = StarTable.open(tmp_path)
    ids = list(df["star_id"][[5, 0, 199, 42]])
    np.testing.assert_array_equal(t.rows_of(ids), [5, 0, 199, 42])
    # unknown, empty, longer than any stored id, and a prefix of a real one
    np.testing.assert_array_equal(t.rows_of(["KIC 999999", "", "KIC 10000000000000000000", "KIC 10"]), [-1] * 4)
    # the same answers without the sorted files (an in-memory table)
    np.testing.assert_array_equal(StarTable.from_frame(df).rows_of(ids + ["nope"]), [5, 0, 199, 42, -1])


def test_find_and_unique(tmp_path):
    df = _frame()
    _write(tmp_path, df)
    t = StarTable.open(tmp_path)
    k = int(df["kic"].dropna().iloc[0])
    np.testing.assert_array_equal(t.find("kic", k), np.flatnonzero((df["kic"] == k).fillna(False).to_numpy()))
    sid = df["obsid"].dropna().iloc[3]
    np.testing.assert_array_equal(t.find("obsid", sid), np.flatnonzero((df["obsid"] == sid).to_numpy()))
    np.testing.assert_array_equal(t.find("binary_class", "wide"), np.flatnonzero((df["binary_class"] == "wide").to_numpy()))
    assert len(t.find("binary_class", "no such class")) == 0 and len(t.find("kic", "not a number")) == 0
    assert t.unique("obsid") == sorted(df["obsid"].dropna())


def test_a_column_with_too_many_classes_is_text_and_a_damaged_store_is_named(tmp_path):
    s = pd.Series([f"c{i}" for i in range(MAX_CATEGORIES + 1)])
    assert column_arrays(s)["kind"] == "text" and column_arrays(s[:MAX_CATEGORIES])["kind"] == "categorical"
    df = _frame(50)
    _write(tmp_path, df)
    (tmp_path / "columns" / "c0001.npy").write_bytes(b"not an npy file")
    t = StarTable.open(tmp_path)
    with pytest.raises(ColumnStoreError, match="c0001.npy.*teff"):
        t.numeric("teff")
    (tmp_path / SCHEMA).unlink()
    with pytest.raises(ColumnStoreError, match="schema.json: missing"):
        StarTable.open(tmp_path)


def test_the_trained_demo_set_has_a_column_store_matching_its_parquet(trained_demo):
    from desa_core.artifacts import ArtifactSet
    art = ArtifactSet.open(trained_demo.art)
    assert SCHEMA in art.manifest["files"]
    t = art.star_table()
    df = art.stars
    assert t.columns == list(df.columns) and t.n == len(df)
    assert isinstance(t.stored("umap_x"), np.memmap)
    for c in t.columns:
        if t.kind(c) in ("numeric", "boolean"):
            np.testing.assert_array_equal(t.numeric(c), df[c].to_numpy(np.float32, na_value=np.nan), err_msg=c)
        else:
            got = t.series(c).to_numpy()
            want = df[c].astype(object).where(df[c].notna(), None).to_numpy()
            assert list(got) == [None if v is None else str(v) for v in want], c
    np.testing.assert_array_equal(t.rows_of(df["star_id"].astype(str)), np.arange(len(df)))


def test_the_star_table_says_which_stars_have_each_embedding(trained_demo):
    """`embedded_<stream>` (written by precompute) is what the dashboard reads instead of scanning an index."""
    from app.state import AppData
    from desa_core.artifacts import ArtifactSet
    art = ArtifactSet.open(trained_demo.art)
    data = AppData(art)
    for name in ("light_curve", "spectrum"):
        want = np.isfinite(np.asarray(art.embedding(name))).all(axis=1)
        assert not want.all()                      # the fixture has stars without this modality
        np.testing.assert_array_equal(art.stars[f"embedded_{name}"].to_numpy(bool), want)
        np.testing.assert_array_equal(data.has_embedding(name), want)
    assert data.has_embedding("desa").all()
