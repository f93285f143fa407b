"""The star table as memory-mapped columns: how the dashboard reads 10^7 stars without loading them.

``stars.parquet`` is the artifact set's exchange format (pandas, TOPCAT, astropy read it); reading it whole
takes ~30 s and ~4.5 GB at 10^7 stars. Precompute therefore also writes every column as its own ``.npy`` under
``ART/columns/``, which :class:`StarTable` memory-maps: opening is a JSON read, a column costs nothing until a
view touches it, and several server processes share one copy in the page cache.

    ART/columns/schema.json   {"n": N, "columns": [{"name", "file", "kind", "dtype", "categories"?}, ...],
                               "id_column": "star_id", "id_sorted": "...npy", "id_order": "...npy"}
    ART/columns/cNNNN.npy     one column: numeric (its own dtype; integers with missing values as float64),
                              boolean (bool, or float32 0/1/NaN when some are missing), categorical (int16 codes
                              into the sorted ``categories``, -1 = missing; at most MAX_CATEGORIES classes), or
                              text (fixed-width UTF-8 bytes, b"" = missing)
    ART/columns/star_id_sorted.npy, star_id_order.npy   the star ids sorted, and the row of each: a star id is
                              found by binary search over the memory map (no 10^7-entry hash table in memory)

:func:`column_arrays` is the one conversion from a pandas column to the stored array; :meth:`StarTable.from_frame`
uses it in memory (a set written before the column store existed), ``precompute.stages.write_star_columns`` on
disk (precompute writes the store; this module only reads it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS_DIR = "columns"
SCHEMA = f"{COLUMNS_DIR}/schema.json"
MAX_CATEGORIES = 32          # a string column with at most this many distinct values is categorical
ID_COLUMN = "star_id"
KINDS = ("numeric", "boolean", "categorical", "text")


def embedded_column(name: str) -> str:
    """The star-table column saying which stars have an embedding (and an index entry) in stream ``name``:
    written by precompute, read by the dashboard instead of scanning an index or an embedding file."""
    return f"embedded_{name}"


class ColumnStoreError(ValueError):
    """A column store that is missing or damaged; the message names the file."""


def column_arrays(s: pd.Series, name: str | None = None) -> dict:
    """The stored form of one pandas column: {"kind", "array", "categories" (categorical only)}. The id column
    (``name == ID_COLUMN``) is always text, however few stars there are: star ids are looked up as text."""
    if name == ID_COLUMN:
        text = s.astype(object).where(s.notna(), "").astype(str).to_numpy().astype(str)
        return {"kind": "text", "array": np.char.encode(text, "utf-8")}
    if pd.api.types.is_bool_dtype(s):
        if s.isna().any():
            return {"kind": "boolean", "array": s.astype("float32").to_numpy(np.float32, na_value=np.nan)}
        return {"kind": "boolean", "array": s.to_numpy(bool)}
    if pd.api.types.is_numeric_dtype(s):
        if pd.api.types.is_integer_dtype(s) and s.isna().any():
            return {"kind": "numeric", "array": s.to_numpy(np.float64, na_value=np.nan)}
        dtype = s.dtype.numpy_dtype if hasattr(s.dtype, "numpy_dtype") else s.dtype
        return {"kind": "numeric", "array": s.to_numpy(dtype, na_value=np.nan if dtype.kind == "f" else None)}
    obj = s.astype(object)
    missing = obj.isna().to_numpy()
    present = obj[~missing]
    if len(present) and all(isinstance(v, bool | np.bool_) for v in present):   # nullable bools read as objects
        return {"kind": "boolean", "array": np.where(missing, np.nan, obj.where(~missing, 0).astype(float))
                .astype(np.float32)}
    text = np.where(missing, "", obj.astype(str).to_numpy()).astype(str)
    cats = np.unique(text[~missing]) if (~missing).any() else np.array([], dtype=str)
    if len(cats) <= MAX_CATEGORIES:
        codes = np.searchsorted(cats, text).astype(np.int16)
        codes[missing] = -1
        return {"kind": "categorical", "array": codes, "categories": [str(c) for c in cats]}
    encoded = np.char.encode(text, "utf-8")
    return {"kind": "text", "array": encoded}


def id_arrays(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted ids, row of each sorted id) for binary-search lookup."""
    order = np.argsort(ids, kind="stable")
    dtype = np.int32 if len(ids) < 2**31 else np.int64
    return ids[order], order.astype(dtype)


def decode(conv: dict, rows=None) -> np.ndarray:
    """Object array of python values (str / float / bool; None for a missing category or text)."""
    arr = conv["array"] if rows is None else conv["array"][rows]
    kind = conv["kind"]
    if kind == "categorical":
        cats = np.asarray(list(conv["categories"]) + [None], dtype=object)
        codes = np.asarray(arr, np.int64)
        return cats[np.where(codes < 0, len(cats) - 1, codes)]
    if kind == "text":
        out = np.char.decode(np.asarray(arr), "utf-8").astype(object)
        out[out == ""] = None
        return out
    return np.asarray(arr)


class StarTable:
    """Read access to the star table column by column (memory-mapped when opened from ``ART/columns``)."""

    def __init__(self, n: int, entries: list[dict], loader, ids_lookup=None):
        self.n = int(n)
        self._entries = {e["name"]: e for e in entries}
        self.columns: list[str] = [e["name"] for e in entries]
        self._loader = loader              # name -> stored array
        self._arrays: dict[str, np.ndarray] = {}
        self._ids_lookup = ids_lookup      # () -> (sorted ids, order) or None (built on first lookup)
        self._sorted = None
        self.ids = _IdColumn(self)

    # -- construction
    @classmethod
    def open(cls, art_path: str | os.PathLike) -> "StarTable":
        art = Path(art_path)
        p = art / SCHEMA
        try:
            schema = json.loads(p.read_text())
        except FileNotFoundError:
            raise ColumnStoreError(f"{p}: missing (the column store was not written; rerun `desa precompute`)") \
                from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ColumnStoreError(f"{p}: unreadable ({e})") from e
        folder = art / COLUMNS_DIR
        entries = schema["columns"]
        by_name = {e["name"]: e for e in entries}
        n = int(schema["n"])

        def load(name):
            e = by_name[name]
            try:
                arr = np.load(folder / e["file"], mmap_mode="r")
            except (OSError, ValueError) as err:
                raise ColumnStoreError(f"{folder / e['file']} (column {name!r}): unreadable ({err})") from err
            if len(arr) != n:
                raise ColumnStoreError(f"{folder / e['file']} (column {name!r}): {len(arr)} rows, the schema says {n}")
            return arr

        def ids_lookup():
            return (np.load(folder / schema["id_sorted"], mmap_mode="r"),
                    np.load(folder / schema["id_order"], mmap_mode="r"))
        return cls(n, entries, load, ids_lookup)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> "StarTable":
        """An in-memory table with the same stored forms (a set written before the column store existed)."""
        df = df.reset_index(drop=True)
        convs, entries = {}, []
        for name in df.columns:
            conv = column_arrays(df[name], name)
            convs[name] = conv
            entries.append({"name": name, "file": None, "kind": conv["kind"], "dtype": conv["array"].dtype.str,
                            **({"categories": conv["categories"]} if "categories" in conv else {})})
        return cls(len(df), entries, lambda name: convs[name]["array"])

    # -- schema
    def __contains__(self, name) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return self.n

    def kind(self, name: str) -> str:
        return self._entry(name)["kind"]

    def categories(self, name: str) -> list[str]:
        """The sorted classes of a categorical column."""
        e = self._entry(name)
        if e["kind"] != "categorical":
            raise KeyError(f"column {name!r} is {e['kind']}, not categorical")
        return list(e["categories"])

    def _entry(self, name: str) -> dict:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"no column {name!r} in the star table") from None

    # -- values
    def stored(self, name: str) -> np.ndarray:
        """The column as stored (memory-mapped, read-only): numbers, bools, int16 codes or UTF-8 bytes."""
        arr = self._arrays.get(name)
        if arr is None:
            self._entry(name)
            arr = self._loader(name)
            self._arrays[name] = arr
        return arr

    def numeric(self, name: str) -> np.ndarray:
        """A numeric or boolean column as float32, NaN where unknown (no copy when stored as float32)."""
        kind = self.kind(name)
        if kind not in ("numeric", "boolean"):
            raise TypeError(f"column {name!r} is {kind}, not numeric")
        arr = self.stored(name)
        if arr.dtype == np.float32:
            return arr
        out = np.empty(len(arr), np.float32)
        for i in range(0, len(arr), 1 << 22):
            out[i:i + (1 << 22)] = arr[i:i + (1 << 22)]
        out.setflags(write=False)
        return out

    def codes(self, name: str) -> np.ndarray:
        """int16 class codes of a categorical column (-1 = missing), in :meth:`categories` order."""
        if self.kind(name) != "categorical":
            raise TypeError(f"column {name!r} is not categorical")
        return self.stored(name)

    def series(self, name: str, rows=None) -> pd.Series:
        """Decoded values (strings for categorical and text columns; None where missing) at ``rows`` (all by
        default: avoid that for text columns of a large table)."""
        e = self._entry(name)
        idx = None if rows is None else np.asarray(rows, dtype=np.int64)
        values = decode({"kind": e["kind"], "array": self.stored(name),
                          "categories": e.get("categories", [])}, idx)
        return pd.Series(values, name=name)

    def value(self, name: str, row: int):
        """One star's value of a column (None / NaN where missing)."""
        return self.series(name, [int(row)]).iloc[0]

    def frame(self, rows, columns=None) -> pd.DataFrame:
        """The table at ``rows`` (all columns, or the given ones that exist), in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        names = self.columns if columns is None else [c for c in columns if c in self._entries]
        return pd.DataFrame({c: self.series(c, rows).to_numpy() for c in names}, columns=names)

    def row(self, row: int) -> pd.Series:
        """One star, every column (a Series indexed by column name)."""
        return self.frame([int(row)]).iloc[0]

    def find(self, name: str, value) -> np.ndarray:
        """Rows whose column ``name`` equals ``value`` (numbers compared as numbers, text as text)."""
        kind = self.kind(name)
        arr = self.stored(name)
        if kind in ("numeric", "boolean"):
            try:
                v = float(value)
            except (TypeError, ValueError):
                return np.zeros(0, np.int64)
            return np.flatnonzero(np.asarray(arr, np.float64) == v)
        if kind == "categorical":
            cats = self._entries[name]["categories"]
            s = str(value)
            return np.flatnonzero(np.asarray(arr) == cats.index(s)) if s in cats else np.zeros(0, np.int64)
        return np.flatnonzero(np.asarray(arr) == str(value).encode("utf-8"))

    def unique(self, name: str) -> list[str]:
        """The distinct non-missing values of a categorical or text column, sorted."""
        if self.kind(name) == "categorical":
            return self.categories(name)
        vals = np.unique(np.asarray(self.stored(name)))
        return [v.decode("utf-8") for v in vals if v]

    def rows_of(self, ids) -> np.ndarray:
        """Row of each star id (-1 for an unknown one): a binary search over the sorted ids."""
        if self._sorted is None:
            self._sorted = self._ids_lookup() if self._ids_lookup else id_arrays(np.asarray(self.stored(ID_COLUMN)))
        srt, order = self._sorted
        width = srt.dtype.itemsize
        keys = [str(s).encode("utf-8") for s in ids]
        out = np.full(len(keys), -1, np.int64)
        if not len(srt):
            return out
        q = np.array([k if len(k) <= width else b"" for k in keys], dtype=srt.dtype)
        pos = np.searchsorted(srt, q)
        for i, (k, p) in enumerate(zip(keys, pos)):
            if 0 < len(k) <= width and p < len(srt) and srt[p] == k:
                out[i] = int(order[p])
        return out


class _IdColumn:
    """``table.ids[row]`` -> the star id (str); ``table.ids[rows]`` -> an array of them."""

    def __init__(self, table: StarTable):
        self._t = table

    def __len__(self) -> int:
        return self._t.n

    def __getitem__(self, rows):
        raw = self._t.stored(ID_COLUMN)[rows]
        if isinstance(raw, bytes | np.bytes_):
            return raw.decode("utf-8")
        return np.char.decode(np.asarray(raw), "utf-8")
