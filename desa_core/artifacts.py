"""The artifact set: everything the dashboard serves, precomputed from a survey store and a trained run.

Written by the precompute pipeline through the helpers here, read only through :class:`ArtifactSet`
(it lives in ``desa_core`` because the app reads it and must not import ``precompute``). Layout::

    ART/manifest.json          format, kind ("survey" | "synthetic-benchmark"), simulated, survey/run
                               provenance, n_stars, embeddings {name: {file, dim, n_defined}},
                               indexes {name: {file, type, n, recall_at_10, params}}, stages {stage: {wall_s,
                               inputs}}, files {rel: {sha256, bytes}}, code_version
    ART/stars.parquet          one row per star: star_id, umap_x, umap_y, bp_rp, abs_g, teff, log_lum and
                               every catalogue column (float32 where possible)
    ART/emb_<name>.npy         (N, d) float32 for name in desa, light_curve, spectrum; rows in stars.parquet
                               order; NaN rows where a star lacks that modality (desa rows always defined)
    ART/index_<name>.faiss     cosine (inner product on L2-normalised vectors, centred: the embedding minus the
                               manifest's indexes[name]["center"]); ids = stars.parquet rows; stream indexes
                               hold only the stars that have that modality
    ART/_state/, ART/_work/    the pipeline's resume bookkeeping and intermediates (not part of the set)

``manifest.json`` is written last: a folder without it is an unfinished run, and every file it lists is
checked for existence and size on open (sha256 too with ``verify=True``).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from desa_core.data.store import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

FORMAT = "desa-artifacts"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STARS = "stars.parquet"
EMBEDDING_NAMES = ("desa", "light_curve", "spectrum")
# stars.parquet column written by `desa add`: the label of a user's added stars ('' for the survey's own)
ADDED_COLUMN = "added_set"
KIND_SURVEY = "survey"
KIND_SYNTHETIC = "synthetic-benchmark"


IN_MEMORY_INDEX_BYTES = 640 * 2**20


class ArtifactError(Exception):
    """An artifact set that is missing, unfinished or inconsistent; the message names the file."""


def embedding_file(name: str) -> str:
    return f"emb_{name}.npy"


def index_file(name: str) -> str:
    return f"index_{name}.faiss"


# ----------------------------------------------------------------------------------------------- writing
def file_entry(path: str | os.PathLike) -> dict:
    p = Path(path)
    return {"sha256": sha256_file(p), "bytes": p.stat().st_size}


def _tmp_name(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, _umask_mode())  # mkstemp makes 0600 files; a server running as another user must read them
    os.replace(tmp, path)


class NpyWriter:
    """A (rows, cols) .npy written in chunks through a memory-mapped temporary file, renamed on commit.

    >>> with NpyWriter(path, (n, d)) as w:
    ...     w.array[i0:i1] = chunk
    ...     w.commit()
    """

    def __init__(self, path: str | os.PathLike, shape: tuple, dtype=np.float32, fill=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _tmp_name(self.path)
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=tuple(int(s) for s in shape))
        if fill is not None:
            self.array[...] = fill
        self._done = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self._done:
            self.abort()
        return False

    def commit(self) -> Path:
        self.array.flush()
        self.array = None
        _fsync_replace(self.tmp, self.path)
        self._done = True
        return self.path

    def abort(self):
        self.array = None
        if self.tmp.exists():
            self.tmp.unlink()


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """np.save through a temporary name + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))
        _fsync_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class ParquetChunkWriter:
    """A Parquet file written one row group at a time (10^7 rows never sit in memory), renamed on commit."""

    def __init__(self, path: str | os.PathLike):
        import pyarrow.parquet as pq
        self._pq = pq
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _tmp_name(self.path)
        self.writer = None
        self.schema = None
        self._done = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self._done:
            self.abort()
        return False

    def write(self, df: pd.DataFrame) -> None:
        import pyarrow as pa
        table = pa.Table.from_pandas(df, preserve_index=False)
        if self.writer is None:
            self.schema = table.schema
            self.writer = self._pq.ParquetWriter(str(self.tmp), self.schema, compression="zstd")
        else:
            table = table.cast(self.schema)
        self.writer.write_table(table)

    def commit(self) -> Path:
        if self.writer is None:
            raise ValueError(f"{self.path}: no rows written")
        self.writer.close()
        _fsync_replace(self.tmp, self.path)
        self._done = True
        return self.path

    def abort(self):
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
        self.tmp.unlink(missing_ok=True)


KEEP_FLOAT64 = ("ra", "dec")  # float32 would round sky positions to ~0.1 arcsec


def to_float32(df: pd.DataFrame) -> pd.DataFrame:
    """float64 columns -> float32 (halves the table; catalogue values carry far fewer than 7 digits),
    except sky positions."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == np.float64 and c not in KEEP_FLOAT64:
            out[c] = out[c].astype(np.float32)
    return out


def write_manifest(art: str | os.PathLike, manifest: dict) -> Path:
    path = Path(art) / MANIFEST
    atomic_write_json(path, {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest})
    return path


# ----------------------------------------------------------------------------------------------- reading
@dataclass
class ArtifactSet:
    """Read access to an artifact set. Embeddings and Flat/HNSW indexes are memory-mapped, so several
    server processes share one copy in the page cache and opening is instant.

    >>> art = ArtifactSet.open("artifacts/default")
    >>> art.stars[["star_id", "umap_x", "umap_y"]]
    >>> sims, rows = art.search("desa", art.embedding("desa")[[42]], k=10)
    """

    path: Path
    manifest: dict
    columns: list[str] | None = None
    _stars: pd.DataFrame | None = field(default=None, repr=False)
    _indexes: dict = field(default_factory=dict, repr=False)
    _embeddings: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike, columns: list[str] | None = None, verify: bool = False) -> "ArtifactSet":
        """Open ``path``; ``columns`` limits what :attr:`stars` loads (10^7-row sets); ``verify`` checks sha256."""
        path = Path(path)
        if not path.is_dir():
            raise ArtifactError(f"{path}: no artifact set here (not a folder); build one with `desa precompute`")
        mpath = path / MANIFEST
        if not mpath.is_file():
            hint = (" — a precompute run was interrupted; run the same `desa precompute` command again to finish it"
                    if (path / "_state").is_dir() else "; build one with `desa precompute`")
            raise ArtifactError(f"{mpath}: missing, not a finished artifact set{hint}")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{mpath}: unreadable manifest ({e})") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ArtifactError(f"{mpath}: not a DESA artifact-set manifest")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise ArtifactError(f"{mpath}: format version {manifest['format_version']} is newer than this code "
                                f"({FORMAT_VERSION}); upgrade desa-explorer")
        for key in ("n_stars", "embeddings", "indexes", "files"):
            if key not in manifest:
                raise ArtifactError(f"{mpath}: manifest lacks {key!r}")
        for rel, meta in manifest["files"].items():
            p = path / rel
            if not p.is_file():
                raise ArtifactError(f"{p}: listed in the manifest but missing")
            if p.stat().st_size != meta["bytes"]:
                raise ArtifactError(f"{p}: size {p.stat().st_size} differs from the manifest's {meta['bytes']} "
                                    f"(corrupt or replaced); rerun `desa precompute`")
            if verify and sha256_file(p) != meta["sha256"]:
                raise ArtifactError(f"{p}: checksum differs from the manifest (corrupt)")
        if STARS not in manifest["files"]:
            raise ArtifactError(f"{mpath}: manifest lists no {STARS}")
        return cls(path=path, manifest=manifest, columns=list(columns) if columns is not None else None)

    # -- provenance
    @property
    def kind(self) -> str:
        return self.manifest.get("kind", KIND_SURVEY)

    @property
    def is_synthetic_benchmark(self) -> bool:
        return self.kind == KIND_SYNTHETIC

    @property
    def is_simulated(self) -> bool:
        return bool(self.manifest.get("simulated", False))

    @property
    def n_stars(self) -> int:
        return int(self.manifest["n_stars"])

    @property
    def embedding_names(self) -> list[str]:
        return [n for n in EMBEDDING_NAMES if n in self.manifest["embeddings"]] + \
            [n for n in self.manifest["embeddings"] if n not in EMBEDDING_NAMES]

    @property
    def run_path(self) -> Path | None:
        run = self.manifest.get("run")
        return Path(run["path"]) if run and run.get("path") else None

    def survey_store(self):
        """The survey store this set was computed from (for light curves / spectra), or None when there is
        none (synthetic sets) or it has moved away."""
        survey = self.manifest.get("survey")
        if not survey or not survey.get("path"):
            return None
        from desa_core.data.store import SurveyStore, SurveyStoreError
        try:
            return SurveyStore.open(survey["path"])
        except SurveyStoreError as e:
            log.warning("artifact set %s: its survey store is unavailable (%s)", self.path, e)
            return None

    def added_stores(self) -> list:
        """[(label, SurveyStore)] of the stores ``desa add`` appended to this set (their light curves and
        spectra); a store that has moved or changed since is left out with a warning."""
        from desa_core.data.store import SurveyStore, SurveyStoreError
        out = []
        for entry in self.manifest.get("added", []):
            try:
                store = SurveyStore.open(entry["survey"])
            except (SurveyStoreError, KeyError) as e:
                log.warning("artifact set %s: added store %r is unavailable (%s)", self.path, entry.get("label"), e)
                continue
            if sha256_file(Path(store.path) / "manifest.json") != entry.get("manifest_sha256"):
                log.warning("artifact set %s: added store %s has changed since it was added; its light curves and "
                            "spectra are not shown", self.path, store.path)
                continue
            out.append((entry.get("label", ""), store))
        return out

    # -- data
    @property
    def stars(self) -> pd.DataFrame:
        if self._stars is None:
            self._stars = self.read_stars(self.columns)
        return self._stars

    def star_table(self):
        """The star table as memory-mapped columns (:class:`desa_core.columns.StarTable`): what the dashboard
        reads. A set written before the column store existed is read from stars.parquet into memory."""
        from desa_core.columns import SCHEMA, StarTable
        if SCHEMA in self.manifest["files"]:
            return StarTable.open(self.path)
        log.info("%s: no column store (an older precompute); reading %s into memory", self.path, STARS)
        return StarTable.from_frame(self.stars)

    def read_stars(self, columns: list[str] | None = None) -> pd.DataFrame:
        p = self.path / STARS
        try:
            return pd.read_parquet(p, columns=columns)
        except (KeyError, ValueError) as e:  # unknown column names, or a damaged file
            raise ArtifactError(f"{p}: cannot read columns {columns} ({e})") from e
        except Exception as e:  # pyarrow raises its own types for a corrupt file
            raise ArtifactError(f"{p}: unreadable ({e})") from e

    def _entry(self, section: str, name: str) -> dict:
        try:
            return self.manifest[section][name]
        except KeyError:
            raise ArtifactError(f"{self.path / MANIFEST}: no {section[:-1] if section != 'indexes' else 'index'} "
                                f"named {name!r} (have {sorted(self.manifest[section])})") from None

    def embedding(self, name: str = "desa") -> np.ndarray:
        """(N, d) float32, memory-mapped read-only; NaN rows where the star lacks the modality."""
        if name in self._embeddings:
            return self._embeddings[name]
        p = self.path / self._entry("embeddings", name)["file"]
        try:
            arr = np.load(p, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{p}: unreadable embedding ({e})") from e
        if arr.ndim != 2 or arr.shape[0] != self.n_stars:
            raise ArtifactError(f"{p}: shape {arr.shape} does not match {self.n_stars} stars")
        self._embeddings[name] = arr
        return arr

    def index(self, name: str = "desa"):
        """The FAISS index for ``name``, opened once per ArtifactSet: memory-mapped where the type allows, except
        the DESA index (the one every similarity search uses) while its file is at most IN_MEMORY_INDEX_BYTES,
        which is read into memory: a memory-mapped HNSW graph costs a page fault per node a query visits until
        the pages are touched (26 ms per query cold vs 0.6 ms in memory at 10^6 stars)."""
        if name not in self._indexes:
            from desa_core.index import IndexError_, open_index
            p = self.path / self._entry("indexes", name)["file"]
            try:
                small = p.is_file() and p.stat().st_size <= IN_MEMORY_INDEX_BYTES
                self._indexes[name] = open_index(p, mmap=not (name == "desa" and small))
            except IndexError_ as e:
                raise ArtifactError(str(e)) from e
        return self._indexes[name]

    def index_info(self, name: str = "desa") -> dict:
        return self._entry("indexes", name)

    def center(self, name: str = "desa") -> np.ndarray | None:
        """The population mean subtracted from ``name`` vectors before the cosine (None: not centred)."""
        c = self.index_info(name).get("center")
        return None if c is None else np.asarray(c, dtype=np.float32)

    def search(self, name: str, queries: np.ndarray, k: int = 10, subset_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine top-k over the ``name`` index: (similarities, row ids into :attr:`stars`).

        ``queries`` are raw embeddings (rows of :meth:`embedding`, or a live embedding of an upload): they are
        centred like the index. The memory-mapped embedding serves exact search inside small subsets and
        IVF-PQ re-ranking.
        """
        from desa_core.index import search
        rerank = int(self.index_info(name).get("params", {}).get("rerank", 1))
        vectors = self.embedding(name)
        center = self.center(name)
        q = np.asarray(queries, dtype=np.float32)
        if center is not None:
            q = q - center
            vectors = _Centred(vectors, center)
        return search(self.index(name), q, k, subset_ids=subset_ids, vectors=vectors, rerank=rerank)

    def row_of(self, star_id: Any) -> int:
        ids = self.read_stars(["star_id"])["star_id"].astype(str).to_numpy() if self._stars is None or \
            "star_id" not in self._stars else self._stars["star_id"].astype(str).to_numpy()
        hits = np.flatnonzero(ids == str(star_id))
        if len(hits) == 0:
            raise KeyError(f"{self.path}: no star with star_id {star_id!r}")
        return int(hits[0])


class _Centred:
    """An (N, d) array minus a centre vector, computed only for the rows asked for."""

    def __init__(self, array: np.ndarray, center: np.ndarray):
        self.array, self.center, self.shape = array, center, array.shape

    def __len__(self):
        return len(self.array)

    def __getitem__(self, key):
        return np.asarray(self.array[key], dtype=np.float32) - self.center
