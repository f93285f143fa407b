"""`desa add`: put a user's own stars into an existing artifact set, among the survey's.

    desa add --artifacts artifacts/default --survey data/my_stars [--label "my stars"]

The stars of ``--survey`` (a store written by ``desa ingest``, or any survey store) are embedded with the model
that built the artifact set (its run, checked by fingerprint), and appended to everything the dashboard reads:

* ``emb_<name>.npy``: their DESA, light-curve and spectrum embeddings (new rows at the end);
* ``index_<name>.faiss``: added to each FAISS index with the set's own centring, so similarity search finds
  them and finds survey stars from them;
* the UMAP coordinates: each new star is placed on every UMAP layout as precompute places the stars UMAP was not
  fitted on (the inverse-distance-weighted mean of the positions of its 10 nearest stars in that embedding,
  ``desa_core.index.idw_place``); on the CMD and HR diagram by their own observed columns;
* ``stars.parquet``: their catalogue rows, map coordinates and the model's predicted properties, with
  ``added_set`` = the label (the page offers each label as a population; survey stars have it empty);
* ``manifest.json``: ``n_stars``, the file checksums, and ``added`` (each added store's path, manifest sha256,
  label and star count), so the page can show their light curves and spectra.

Atomic: every new file is written under a temporary name first; the manifest is removed before the first file
is replaced and written last (a reader sees the old set or none, never a mix: the dashboard keeps serving the old
build until the new manifest appears). A star id already in the set is an error naming it; nothing is written.
``desa precompute`` rebuilds a set from its survey alone: run ``desa add`` again after it.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from desa_core.artifacts import (ADDED_COLUMN, MANIFEST, STARS, ArtifactError, ArtifactSet, ParquetChunkWriter, embedding_file,
                                 file_entry, index_file, save_npy, to_float32, write_manifest)
from desa_core.columns import COLUMNS_DIR, embedded_column
from desa_core.data.store import SurveyStore, SurveyStoreError, sha256_file
from precompute.stages import MAP_COLUMNS, write_star_columns

log = logging.getLogger(__name__)

PLACE_K = 10


class AddError(ValueError):
    """Bad inputs for ``desa add``; the message names the file or the star."""


def add_stars(artifacts, survey, label: str | None = None, run=None, batch_size: int | None = None,
              progress: bool = True) -> dict:
    """Embed the stars of the store ``survey`` with the artifact set's model and append them to the set at
    ``artifacts``. Returns a summary dict (n_added, label, seconds per step)."""
    from desa_core.index import idw_place, normalize_rows, open_index, write_index
    from desa_core.models.inference import Embedder

    t_all = time.perf_counter()
    art_path = Path(artifacts).resolve()
    try:
        art = ArtifactSet.open(art_path)
    except ArtifactError as e:
        raise AddError(str(e)) from e
    if art.is_synthetic_benchmark:
        raise AddError(f"{art_path}: a synthetic benchmark set has no model to embed new stars with")
    try:
        store = SurveyStore.open(survey)
    except SurveyStoreError as e:
        raise AddError(str(e)) from e
    store_path = Path(store.path).resolve()
    label = (label or store_path.name).strip()
    if not re.fullmatch(r"[\w .+-]{1,64}", label):
        raise AddError(f"label {label[:70]!r}: use 1-64 letters, digits, spaces and . + - _ (it names a population)")

    stars = art.stars
    new_ids = store.catalog["star_id"].astype(str)
    clash = new_ids[new_ids.isin(stars["star_id"].astype(str))]
    if len(clash):
        raise AddError(f"{store_path}: star {clash.iloc[0]!r} is already in {art_path} ({len(clash)} of "
                       f"{len(new_ids)} stars are); remove them from the store or add another one")
    if ADDED_COLUMN in stars and (stars[ADDED_COLUMN].astype(str) == label).any():
        raise AddError(f"{art_path}: stars labelled {label!r} were already added; choose another --label")

    run_path = Path(run).resolve() if run is not None else art.run_path
    if run_path is None:
        raise AddError(f"{art_path}: the manifest names no model run; give --run")
    try:
        embedder = Embedder.from_run(run_path, device=None)
    except (FileNotFoundError, ValueError) as e:
        raise AddError(f"{run_path}: cannot load the model ({e})") from e
    want = (art.manifest.get("run") or {}).get("fingerprint")
    if want and str(embedder.fingerprint) != str(want):
        raise AddError(f"{run_path}: model fingerprint {str(embedder.fingerprint)[:12]} is not the one that built "
                       f"{art_path} ({str(want)[:12]}): the new stars would land in another embedding space")

    n_old, n_new = art.n_stars, len(store)
    times = {}
    t0 = time.perf_counter()
    log.info("add: embedding %d stars of %s with %s", n_new, store_path, run_path)
    emb = embedder.embed_store(store, batch_size=batch_size, progress=progress, reuse_features=False)
    pred = embedder.predict(emb)
    times["embed_s"] = round(time.perf_counter() - t0, 2)

    # Place the new stars on each UMAP through their nearest (old) stars, and find the CMD / HR columns.
    t0 = time.perf_counter()
    table = store.catalog.reset_index(drop=True).copy()
    for name, (cx, cy) in MAP_COLUMNS.items():
        if cx not in stars.columns or name not in art.embedding_names:
            continue
        xy = np.full((n_new, 2), np.nan, np.float32)
        ok = np.flatnonzero(np.isfinite(emb[name]).all(axis=1))
        if len(ok):
            sims, rows = art.search(name, emb[name][ok], PLACE_K)
            sims = np.where(rows >= 0, sims, np.nan)
            old_xy = np.stack([stars[cx].to_numpy(np.float32), stars[cy].to_numpy(np.float32)], axis=1)
            xy[ok] = idw_place(sims, old_xy[np.maximum(rows, 0)])
        table[cx], table[cy] = xy[:, 0], xy[:, 1]
    for k, v in pred.items():
        table[k] = np.asarray(v, np.float32)
    table[ADDED_COLUMN] = label
    for name in art.embedding_names:
        if name != "desa" and embedded_column(name) in stars:
            table[embedded_column(name)] = np.isfinite(emb[name]).all(axis=1)
    times["place_s"] = round(time.perf_counter() - t0, 2)

    # Write everything under temporary names, then swap: manifest out first, in last.
    t0 = time.perf_counter()
    manifest = dict(art.manifest)
    new_files = {}
    mpath = art_path / MANIFEST
    mpath.unlink()
    try:
        for name in art.embedding_names:
            old = art.embedding(name)
            both = np.concatenate([np.asarray(old), emb[name].astype(np.float32)])
            save_npy(art_path / embedding_file(name), both)
            new_files[embedding_file(name)] = file_entry(art_path / embedding_file(name))
            info = dict(art.index_info(name))
            index = open_index(art_path / index_file(name), mmap=False)
            ok = np.flatnonzero(np.isfinite(emb[name]).all(axis=1))
            if len(ok):
                center = np.asarray(info.get("center", np.zeros(both.shape[1])), np.float32)
                index.add_with_ids(normalize_rows(emb[name][ok] - center), (n_old + ok).astype(np.int64))
            write_index(index, art_path / index_file(name))
            info["n"] = int(info.get("n", 0)) + len(ok)
            manifest["indexes"] = {**manifest["indexes"], name: info}
            manifest["embeddings"] = {**manifest["embeddings"],
                                      name: {**manifest["embeddings"][name],
                                             "n_defined": int(manifest["embeddings"][name].get("n_defined", 0)) + len(ok)}}
            new_files[index_file(name)] = file_entry(art_path / index_file(name))
        _write_stars(art_path, stars, table)
        new_files[STARS] = file_entry(art_path / STARS)
        for rel in write_star_columns(art_path, STARS):
            new_files[rel] = file_entry(art_path / rel)
    except BaseException:
        log.error("add: failed while writing %s; the set is unfinished (no manifest): rerun `desa precompute`",
                  art_path)
        raise
    times["write_s"] = round(time.perf_counter() - t0, 2)
    added = list(manifest.get("added", [])) + [{
        "label": label, "survey": str(store_path), "manifest_sha256": sha256_file(store_path / "manifest.json"),
        "n_stars": n_new, "rows": [n_old, n_old + n_new], "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime())}]
    kept = {rel: meta for rel, meta in manifest["files"].items() if not rel.startswith(COLUMNS_DIR + "/")}
    manifest.update({"n_stars": n_old + n_new, "files": {**kept, **new_files}, "added": added})
    manifest.pop("format", None)
    manifest.pop("format_version", None)
    write_manifest(art_path, manifest)
    times["total_s"] = round(time.perf_counter() - t_all, 2)
    log.info("add: %d stars labelled %r added to %s (now %d stars) in %.1f s", n_new, label, art_path,
             n_old + n_new, times["total_s"])
    return {"n_added": n_new, "label": label, "n_stars": n_old + n_new, **times}


def _write_stars(art_path: Path, old: pd.DataFrame, new: pd.DataFrame) -> None:
    """stars.parquet = the old rows, then the new ones. Columns are the union (null where a table lacks one;
    the survey rows' ``added_set`` is ''), types promoted as Arrow does (int + float -> float); a column that
    is text on one side and numbers on the other becomes text."""
    import pyarrow as pa

    old = old.copy()
    if ADDED_COLUMN not in old:
        old[ADDED_COLUMN] = ""
    new = to_float32(new.assign(star_id=new["star_id"].astype(str)))
    t_old = pa.Table.from_pandas(old, preserve_index=False)
    t_new = pa.Table.from_pandas(new, preserve_index=False)
    for name in set(t_old.column_names) & set(t_new.column_names):
        a, b = t_old.schema.field(name).type, t_new.schema.field(name).type
        text = (pa.types.is_string(a) or pa.types.is_large_string(a), pa.types.is_string(b) or pa.types.is_large_string(b))
        if text[0] != text[1] and not (pa.types.is_null(a) or pa.types.is_null(b)):
            t_old = t_old.set_column(t_old.column_names.index(name), name, t_old[name].cast(pa.string()))
            t_new = t_new.set_column(t_new.column_names.index(name), name, t_new[name].cast(pa.string()))
    both = pa.concat_tables([t_old, t_new], promote_options="permissive")
    i = both.column_names.index(ADDED_COLUMN)
    both = both.set_column(i, ADDED_COLUMN, both[ADDED_COLUMN].fill_null(""))
    w = ParquetChunkWriter(art_path / STARS)
    try:
        w.write(both.to_pandas())
        w.commit()
    finally:
        if not w._done:
            w.abort()
