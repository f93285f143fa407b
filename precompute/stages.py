"""The precompute stages and their resume bookkeeping.

Each stage writes its outputs through temporary names + rename, then records ``ART/_state/<stage>.json``:
the fingerprint of its inputs, the size and sha256 of each output, and its wall time. A stage is skipped
when that record exists, its inputs fingerprint equals the current one and every output still has the
recorded size (``verify`` compares checksums too). Fingerprints chain: the index and map stages depend on
the embedding stage's fingerprint, which depends on the survey manifest's and the model's fingerprints; so a
new model or survey invalidates exactly what derives from it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from desa_core.artifacts import (EMBEDDING_NAMES, NpyWriter, ParquetChunkWriter, embedding_file, file_entry,
                                 index_file, save_npy, to_float32)
from desa_core.columns import embedded_column
from desa_core.data.store import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

STATE_DIR = "_state"
WORK_DIR = "_work"
# Bump a stage's version when its code changes what it writes: old outputs are then recomputed.
STAGE_VERSIONS = {"embed": 1, "synthetic": 1, "index": 3, "maps": 4, "stars": 5, "predict": 1}
PREDICTIONS_FILE = f"{WORK_DIR}/predictions.npz"
FIRST_COLUMNS = ["star_id", "umap_x", "umap_y", "bp_rp", "abs_g", "teff", "log_lum"]
# The UMAP layouts precompute writes: embedding -> the star-table columns of its coordinates.
MAP_COLUMNS = {"desa": ("umap_x", "umap_y"), "light_curve": ("umap_lc_x", "umap_lc_y"),
               "spectrum": ("umap_spec_x", "umap_spec_y")}


def fingerprint(obj) -> str:
    """sha256 of a JSON-serialisable description of a stage's inputs (first 16 hex digits)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class StageBook:
    """Which stages of one artifact folder are complete, for which inputs."""

    def __init__(self, art: Path, verify: bool = False):
        self.art = Path(art)
        self.dir = self.art / STATE_DIR
        self.verify = verify

    def _path(self, stage: str) -> Path:
        return self.dir / f"{stage}.json"

    def done(self, stage: str, inputs: str) -> dict | None:
        """The stage's record when it is complete and valid for ``inputs``, else None."""
        p = self._path(stage)
        if not p.is_file():
            return None
        try:
            rec = json.loads(p.read_text())
        except (json.JSONDecodeError, OSError):
            log.warning("%s: unreadable stage record; redoing %s", p, stage)
            return None
        if rec.get("inputs") != inputs:
            log.info("stage %s: inputs changed (%s -> %s); recomputing", stage, rec.get("inputs"), inputs)
            return None
        for rel, meta in rec.get("outputs", {}).items():
            f = self.art / rel
            if not f.is_file() or f.stat().st_size != meta["bytes"]:
                log.warning("stage %s: output %s missing or changed size; recomputing", stage, f)
                return None
            if self.verify and sha256_file(f) != meta["sha256"]:
                log.warning("stage %s: output %s checksum differs; recomputing", stage, f)
                return None
        return rec

    def record(self, stage: str, inputs: str, outputs: Iterable[str], wall_s: float, **extra) -> dict:
        rec = {"stage": stage, "inputs": inputs, "wall_s": round(float(wall_s), 3),
               "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "outputs": {rel: file_entry(self.art / rel) for rel in outputs}, **extra}
        atomic_write_json(self._path(stage), rec)
        return rec

    def forget(self, stage: str) -> None:
        self._path(stage).unlink(missing_ok=True)


def clean_temporaries(art: Path) -> int:
    """Remove temporary files a killed run left behind (never a finished file)."""
    n = 0
    for d in (art, art / STATE_DIR, art / WORK_DIR):
        if d.is_dir():
            for p in d.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                n += 1
    if n:
        log.info("removed %d temporary file(s) left by an interrupted run", n)
    return n


# ------------------------------------------------------------------------------------------ embedding
def embed_stage(embedder, store, survey_path: Path, run_path: Path | None, out: Path, runner,
                chunk_rows: int = 4096, batch_size: int | None = None) -> dict[str, int]:
    """Embed every star of ``store`` into ART/emb_<name>.npy, a chunk of rows at a time through ``runner``
    (precompute.chunks.ChunkRunner: in this process with ``embedder``, or on Dask workers that open the store and
    the run themselves; finished chunks survive a killed run). Returns {name: dim}."""
    from precompute.chunks import row_ranges
    n = len(store)
    writers = _open_embedding_writers(out, n, embedder.dims)
    try:
        local = lambda a, b, *_: embedder.embed_store(store, rows=np.arange(a, b), batch_size=batch_size,  # noqa: E731
                                                       progress=False)
        for a, b, got in runner.run(_embed_rows_on_worker, row_ranges(n, chunk_rows),
                                    args=(str(survey_path), str(run_path), batch_size, 1), local_fn=local):
            _put(writers, np.arange(a, b), got)
        for w in writers.values():
            w.commit()
        runner.clear()
    finally:
        for w in writers.values():
            if not w._done:
                w.abort()
    return {k: int(v) for k, v in embedder.dims.items()}


def _open_embedding_writers(out: Path, n: int, dims: dict) -> dict[str, NpyWriter]:
    missing = [k for k in EMBEDDING_NAMES if k not in dims]
    if missing:
        raise ValueError(f"the embedder reports no dimension for {missing} (dims={dims})")
    return {name: NpyWriter(out / embedding_file(name), (n, int(dims[name])), fill=np.nan) for name in EMBEDDING_NAMES}


def _put(writers, rows, got):
    for name, w in writers.items():
        arr = np.asarray(got[name], dtype=np.float32)
        if arr.shape != (len(rows), w.array.shape[1]):
            raise ValueError(f"embedder returned {name} of shape {arr.shape}, expected {(len(rows), w.array.shape[1])}")
        w.array[rows[0]:rows[-1] + 1] = arr


# The Dask path: each worker opens the store and the run itself (nothing large crosses the network) and keeps
# them between tasks in this module-level cache, keyed by path.
_WORKER_CACHE: dict = {}


def _embed_rows_on_worker(start: int, stop: int, survey: str, run: str, batch_size: int | None,
                          torch_threads: int) -> dict[str, np.ndarray]:
    import torch
    from desa_core.data.store import SurveyStore
    from desa_core.models.inference import Embedder
    key = (survey, run)
    if key not in _WORKER_CACHE:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = (SurveyStore.open(survey), Embedder.from_run(run))
    store, embedder = _WORKER_CACHE[key]
    # No background preprocessing thread: the cluster already runs a task on every core, and a second busy
    # thread per worker oversubscribes them (two workers on two cores: ~910 new stars/s with it, ~1,080 without;
    # docs/precompute.md).
    return embedder.embed_store(store, rows=np.arange(start, stop), batch_size=batch_size, progress=False,
                                prefetch=False)


# ------------------------------------------------------------------------------------------ synthetic
def generate_synthetic(out: Path, n: int, dims: dict, seed: int, chunk_rows: int = 250_000,
                       progress: bool = True, template_max: int | None = None) -> list[str]:
    """Synthetic catalogue (ART/_work/catalog.parquet) and embeddings, chunk by chunk (bounded memory)."""
    from precompute.synthetic import TEMPLATE_MAX, population, simulator_template, synthetic_embeddings

    template = simulator_template(min(n, template_max or TEMPLATE_MAX), seed)

    rel_cat = f"{WORK_DIR}/catalog.parquet"
    writers = {name: NpyWriter(out / embedding_file(name), (n, int(d))) for name, d in dims.items()}
    cat_writer = ParquetChunkWriter(out / rel_cat)
    try:
        starts = list(range(0, n, chunk_rows))
        it = starts
        if progress and len(starts) > 1:
            from tqdm.auto import tqdm
            it = tqdm(starts, desc="synthetic stars", unit="chunk")
        for start in it:
            m = min(chunk_rows, n - start)
            cat = population(m, seed=seed, start=start, template=template, n_total=n)
            emb = synthetic_embeddings(cat, dims, seed=seed, start=start)
            for name, w in writers.items():
                w.array[start:start + m] = emb[name]
            cat_writer.write(to_float32(cat))
        cat_writer.commit()
        for w in writers.values():
            w.commit()
    finally:
        if not cat_writer._done:
            cat_writer.abort()
        for w in writers.values():
            if not w._done:
                w.abort()
    return [rel_cat] + [embedding_file(name) for name in dims]


# ------------------------------------------------------------------------------------------ indexes
class RowView:
    """Rows ``rows`` of a (memory-mapped) array minus ``center``, indexable like an array, never copied whole."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, center: np.ndarray):
        self.array, self.rows, self.center = array, rows, np.asarray(center, np.float32)
        self.shape = (len(rows), array.shape[1])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        return np.asarray(self.array[self.rows[key]], dtype=np.float32) - self.center


def mean_of_rows(emb: np.ndarray, rows: np.ndarray, chunk: int = 1_000_000) -> np.ndarray:
    total = np.zeros(emb.shape[1], np.float64)
    for i in range(0, len(rows), chunk):
        total += np.asarray(emb[rows[i:i + chunk]], dtype=np.float64).sum(axis=0)
    return (total / max(len(rows), 1)).astype(np.float32)


def has_defined_row(emb: np.ndarray, chunk: int = 100_000) -> bool:
    """Whether any star has this embedding (stops at the first chunk that has one)."""
    for i in range(0, emb.shape[0], chunk):
        if np.isfinite(np.asarray(emb[i:i + chunk])).all(axis=1).any():
            return True
    return False


def defined_rows(emb: np.ndarray, chunk: int = 1_000_000) -> np.ndarray:
    """Rows of an embedding that are finite (stars that have the modality)."""
    ok = np.concatenate([np.isfinite(np.asarray(emb[i:i + chunk])).all(axis=1)
                         for i in range(0, emb.shape[0], chunk)]) if emb.shape[0] else np.zeros(0, bool)
    return np.flatnonzero(ok)


def build_one_index(out: Path, name: str, kind: str = "auto", seed: int = 0, progress: bool = True,
                    runner=None, **kw) -> dict:
    """ART/index_<name>.faiss over the defined rows of ART/emb_<name>.npy; returns the manifest entry. With a
    Dask ``runner`` (precompute.chunks.ChunkRunner), an IVF index is trained here on a sample and its vectors
    are encoded in chunks on the workers (resumably), then merged in row order."""
    from desa_core.index import build_index, write_index

    emb = np.load(out / embedding_file(name), mmap_mode="r")
    rows = defined_rows(emb)
    if len(rows) == 0:
        raise ValueError(f"{out / embedding_file(name)}: no star has a {name} embedding; cannot index it")
    # Centre before normalising: a trained embedding carries a large common offset (DESA small run: |mean| 10.6
    # vs a spread of 0.19), which would make every cosine similarity ~0.9999 and the ranking float noise.
    center = mean_of_rows(emb, rows)
    vectors = RowView(emb, rows, center)
    adder = None
    if runner is not None and runner.on_dask:
        adder = _dask_ivf_adder(runner, out / embedding_file(name), rows, center)
    index, info = build_index(vectors, rows.astype(np.int64), kind=kind, seed=seed, progress=progress,
                              ivf_adder=adder, **kw)
    write_index(index, out / index_file(name))
    return {"file": index_file(name), **info.to_dict(), "center": [float(c) for c in center]}


# ------------------------------------------------------------------------------------------ predictions
def write_predictions(out: Path, embedder, chunk_rows: int = 200_000, progress: bool = True) -> str:
    """ART/_work/predictions.npz: the run's predicted properties of every star (Embedder.predict: binary
    probability, conformal age, Teff / logg / [Fe/H] and Prot from the encoders' heads), from the stream
    embeddings the embed stage wrote (the encoder features), a chunk of stars at a time."""
    z_l = np.load(out / embedding_file("light_curve"), mmap_mode="r")
    z_s = np.load(out / embedding_file("spectrum"), mmap_mode="r")
    n = len(z_l)
    cols: dict[str, list] = {}
    chunks = range(0, n, chunk_rows)
    if progress and n > chunk_rows:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc="predicting properties", unit="chunk")
    for i in chunks:
        pred = embedder.predict({"light_curve": np.asarray(z_l[i:i + chunk_rows]),
                                 "spectrum": np.asarray(z_s[i:i + chunk_rows])})
        for k, v in pred.items():
            cols.setdefault(k, []).append(np.asarray(v, np.float32))
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    tmp = out / WORK_DIR / ".predictions.npz.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(out / PREDICTIONS_FILE)
    return PREDICTIONS_FILE


def _dask_ivf_adder(runner, emb_path: Path, rows: np.ndarray, center: np.ndarray):
    """An ``ivf_adder`` for build_index: the trained, empty index travels to every worker once; each chunk of
    rows comes back as a small IVF index of its own, merged into the full one in row order (so the result does
    not depend on which worker finished first)."""
    import faiss

    from precompute.chunks import row_ranges

    def add(index, ids, chunk):
        blob = faiss.serialize_index(index)
        pending, next_start = {}, 0
        for a, b, res in runner.run(_ivf_add_rows, row_ranges(len(rows), chunk),
                                    args=(str(emb_path), rows, np.asarray(center, np.float32), blob)):
            pending[a] = (b, res["index"])
            while next_start in pending:
                b_, part = pending.pop(next_start)
                index.merge_from(faiss.deserialize_index(part), 0)
                next_start = b_
        runner.clear()
    return add


def _ivf_add_rows(start: int, stop: int, emb_path: str, rows: np.ndarray, center: np.ndarray, blob) -> dict:
    """A Dask task: rows ``rows[start:stop]`` of the embedding file, centred and normalised, added to a copy of
    the trained empty IVF index, which is sent back serialised."""
    import faiss

    from desa_core.index import normalize_rows
    emb = np.load(emb_path, mmap_mode="r")
    r = np.asarray(rows[start:stop])
    index = faiss.deserialize_index(np.asarray(blob))
    index.add_with_ids(normalize_rows(np.asarray(emb[r], np.float32) - center), r.astype(np.int64))
    return {"index": faiss.serialize_index(index)}


# ------------------------------------------------------------------------------------------ stars table
def write_stars(out: Path, catalog_batches: Callable[[], Iterable[pd.DataFrame]], layouts: dict,
                predictions: dict | None = None, embedded: dict | None = None) -> str:
    """ART/stars.parquet: catalogue batches (in row order) + the UMAP coordinates of each layout
    (``layouts``: embedding name -> (N, 2) array, NaN for stars without it) + the predicted properties
    (``predictions``: column -> (N,) array) + ``embedded_<name>`` (``embedded``: stream -> (N,) bool: the star
    has that embedding, so the dashboard need not scan an index or an embedding file to know), float32 where
    possible."""
    w = ParquetChunkWriter(out / "stars.parquet")
    try:
        r = 0
        for batch in catalog_batches():
            batch = batch.reset_index(drop=True).copy()
            m = len(batch)
            for name, xy in layouts.items():
                cx, cy = MAP_COLUMNS[name]
                batch[cx] = xy[r:r + m, 0]
                batch[cy] = xy[r:r + m, 1]
            for col, values in (predictions or {}).items():
                batch[col] = values[r:r + m]
            for name, ok in (embedded or {}).items():
                batch[embedded_column(name)] = np.asarray(ok[r:r + m], bool)
            batch["star_id"] = batch["star_id"].astype(str)
            for c in ("bp_rp", "abs_g", "teff", "log_lum"):
                if c not in batch:
                    batch[c] = np.nan
            cols = FIRST_COLUMNS + [c for c in batch.columns if c not in FIRST_COLUMNS]
            w.write(to_float32(batch[cols]))
            r += m
        n_map = len(layouts["desa"])
        if r != n_map:
            raise ValueError(f"catalogue has {r} rows but the map has {n_map}")
        w.commit()
    finally:
        if not w._done:
            w.abort()
    return "stars.parquet"


def convert_star_column(art_path: str, parquet_rel: str, i: int) -> dict:
    """Column ``i`` of the star table ``parquet_rel`` as ``ART/columns/cNNNN.npy`` (and, for the star id, the
    sorted-id lookup files): one column in memory. A Dask task of the stars stage, or run here. Returns the
    column's schema entry and the files written (relative to ``art_path``)."""
    import pyarrow.parquet as pq

    from desa_core.artifacts import save_npy
    from desa_core.columns import COLUMNS_DIR, ID_COLUMN, column_arrays, id_arrays
    art = Path(art_path)
    pf = pq.ParquetFile(art / parquet_rel)
    name = pf.schema_arrow.names[i]
    s = pf.read(columns=[name]).column(0).to_pandas()
    conv = column_arrays(s, name)
    del s
    rel = f"{COLUMNS_DIR}/c{i:04d}.npy"
    save_npy(art / rel, conv["array"])
    entry = {"name": name, "file": Path(rel).name, "kind": conv["kind"], "dtype": conv["array"].dtype.str}
    if "categories" in conv:
        entry["categories"] = conv["categories"]
    rels = [rel]
    if name == ID_COLUMN:
        srt, order = id_arrays(conv["array"])
        for fname, arr in (("star_id_sorted.npy", srt), ("star_id_order.npy", order)):
            save_npy(art / COLUMNS_DIR / fname, arr)
            rels.append(f"{COLUMNS_DIR}/{fname}")
    return {"entry": entry, "rels": rels}


def write_star_columns(art_path, parquet_rel: str = "stars.parquet", client=None) -> list[str]:
    """Write ``ART/columns/`` from the star table ``parquet_rel``, a column at a time (:func:`convert_star_column`:
    here, or as one Dask task per column on ``client``, the workers reading and writing the artifact folder
    themselves); returns the written files relative to ``art_path`` (schema.json last: a store without it is
    unfinished)."""
    import pyarrow.parquet as pq

    from desa_core.columns import COLUMNS_DIR, ID_COLUMN, SCHEMA, ColumnStoreError
    from desa_core.data.store import atomic_write_json
    art = Path(art_path)
    folder = art / COLUMNS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schema.json").unlink(missing_ok=True)
    pf = pq.ParquetFile(art / parquet_rel)
    names = list(pf.schema_arrow.names)
    if ID_COLUMN not in names:
        raise ColumnStoreError(f"{art / parquet_rel}: no {ID_COLUMN} column")
    n = pf.metadata.num_rows
    del pf
    if client is None:
        done = [convert_star_column(str(art), parquet_rel, i) for i in range(len(names))]
    else:
        futures = [client.submit(convert_star_column, str(art), parquet_rel, i, pure=False) for i in range(len(names))]
        done = client.gather(futures)
    entries = [d["entry"] for d in done]
    rels = [r for d in done for r in d["rels"]]
    atomic_write_json(art / SCHEMA, {"n": int(n), "columns": entries, "id_column": ID_COLUMN,
                                     "id_sorted": "star_id_sorted.npy", "id_order": "star_id_order.npy"})
    # columns of an earlier build that this one no longer has
    keep = {Path(r).name for r in rels} | {"schema.json"}
    for p in folder.glob("*.npy"):
        if p.name not in keep:
            p.unlink()
    return rels + [SCHEMA]


def write_star_table(out: Path, catalog_batches, layouts: dict, predictions: dict | None = None,
                     embedded: dict | None = None, client=None) -> list[str]:
    """stars.parquet (:func:`write_stars`) and its memory-mapped column store (desa_core.columns), which is
    what the dashboard opens; the columns as Dask tasks when there is a ``client``."""
    rel = write_stars(out, catalog_batches, layouts, predictions, embedded)
    return [rel] + write_star_columns(out, rel, client=client)


def map_file(name: str) -> str:
    return f"{WORK_DIR}/umap.npy" if name == "desa" else f"{WORK_DIR}/umap_{name}.npy"


def save_map(out: Path, xy: np.ndarray, name: str = "desa") -> str:
    rel = map_file(name)
    save_npy(out / rel, xy.astype(np.float32))
    return rel
