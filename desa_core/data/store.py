"""The survey store: one on-disk format for simulated and real cross-matched surveys.

Written only by :class:`SurveyWriter` (used by ``desa simulate`` and ``desa ingest``) and read only through
:class:`SurveyStore`. Layout of a store directory::

    catalog.parquet            one row per star (see CATALOG_COLUMNS); ``lc_row`` / ``spec_row`` index the
                               arrays below, -1 where the star lacks that modality
    light_curves/time.npy      (T,) float64, days (Kepler BJD - 2454833), one cadence grid for every star
    light_curves/flux.npy      (n_lc, T) float32, relative flux (median ~1), NaN where there is no data
    spectra/wavelength.npy     (L,) float64, vacuum Angstrom, log-lambda grid
    spectra/flux.npy           (n_spec, L) float32, relative flux (observed frame, not continuum normalised)
    spectra/ivar.npy           (n_spec, L) float32, inverse variance of flux, 0 = masked pixel
    manifest.json              format version, generator/ingest info, row counts, sha256 of every file

Arrays are ``.npy`` files opened with ``mmap_mode='r'``, so a store larger than memory is read lazily, row
by row or in chunks. A store is written into a temporary sibling directory and renamed into place when
complete: a crashed run never leaves a half-written store and never destroys the previous one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CATALOG = "catalog.parquet"

# Columns every store's catalogue carries (true values for a simulation; NaN where a real catalogue lacks one).
CATALOG_COLUMNS = [
    "star_id", "ra", "dec", "teff", "logg", "feh", "mass", "radius", "log_lum", "age_gyr", "prot_days",
    "binary_class", "is_binary", "porb_days", "mass_ratio", "gaia_g", "gaia_bp", "gaia_rp", "bp_rp", "abs_g",
    "parallax_mas", "ruwe", "kepmag", "has_light_curve", "has_spectrum", "split", "lc_row", "spec_row",
]
# "unknown": an ingested catalogue that says nothing about binarity (is_binary False means "not known to be").
BINARY_CLASSES = ("single", "wide", "close_sync", "eclipsing", "unknown")
SPLITS = ("train", "val", "test")


# The store's spectral axis: LAMOST LRS coverage, vacuum Angstrom, uniform in log10(lambda). Simulated and
# ingested stores share it, so every spectrum in every store has the same pixels.
LAMOST_GRID_MIN_A, LAMOST_GRID_MAX_A, LAMOST_GRID_DLOG10 = 3700.0, 9000.0, 1e-4


def catalog_column(catalog, name: str, missing: float = np.nan) -> np.ndarray:
    """A catalogue column as float64, or ``missing`` for every star when the catalogue lacks it."""
    return catalog[name].to_numpy(np.float64) if name in catalog.columns else np.full(len(catalog), missing)


def log_lambda_pixels(w_min: float, w_max: float, dlog10: float) -> int:
    return int(np.floor((np.log10(w_max) - np.log10(w_min)) / dlog10 + 1e-9)) + 1


def log_lambda_grid(w_min: float = LAMOST_GRID_MIN_A, w_max: float = LAMOST_GRID_MAX_A,
                    dlog10: float = LAMOST_GRID_DLOG10) -> np.ndarray:
    """(L,) float64 wavelengths uniform in log10(lambda): 3861 pixels for the default 3700-9000 A."""
    return 10.0 ** (np.log10(w_min) + dlog10 * np.arange(log_lambda_pixels(w_min, w_max, dlog10)))


class SurveyStoreError(ValueError):
    """A survey store that is missing, incomplete or inconsistent; the message names the path."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def assign_splits(star_ids: Iterable, seed: int, fractions=(0.7, 0.15, 0.15)) -> np.ndarray:
    """Per-star train/val/test split, deterministic in (star_id, seed) and independent of row order.

    Splitting by star (never by observation) keeps every light curve and spectrum of one star on one side.
    """
    ids = np.asarray([str(s) for s in star_ids])
    u = np.empty(len(ids))
    for i, s in enumerate(ids):
        d = hashlib.blake2b(f"{seed}:{s}".encode(), digest_size=8).digest()
        u[i] = int.from_bytes(d, "little") / 2.0**64
    f_train, f_val = fractions[0], fractions[0] + fractions[1]
    return np.where(u < f_train, "train", np.where(u < f_val, "val", "test"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file through a temporary name and rename it into place (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


class SurveyWriter:
    """Builds a survey store in a temporary directory; :meth:`commit` renames it into place.

    Usage::

        with SurveyWriter(out, n_lc=..., n_spec=..., time=t, wavelength=w) as w:
            w.light_curves[i0:i1] = flux_chunk     # memory-mapped, written in chunks
            w.spectra_flux[j0:j1] = ...; w.spectra_ivar[j0:j1] = ...
            w.commit(catalog, info={...})          # checksums, manifest, atomic rename

    Leaving the ``with`` block without :meth:`commit` (an exception, a kill) removes the temporary directory
    and leaves any previous store at ``out`` untouched.
    """

    def __init__(self, out: str | os.PathLike, *, n_lc: int, n_spec: int, time: np.ndarray,
                 wavelength: np.ndarray):
        self.out = Path(out).resolve()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.writing-", dir=self.out.parent))
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp creates 0700: a store should be readable by the lab
        (self.tmp / "light_curves").mkdir()
        (self.tmp / "spectra").mkdir()
        self.time = np.asarray(time, dtype=np.float64)
        self.wavelength = np.asarray(wavelength, dtype=np.float64)
        np.save(self.tmp / "light_curves" / "time.npy", self.time)
        np.save(self.tmp / "spectra" / "wavelength.npy", self.wavelength)
        om = np.lib.format.open_memmap
        self.light_curves = om(self.tmp / "light_curves" / "flux.npy", mode="w+", dtype=np.float32,
                               shape=(int(n_lc), len(self.time)))
        self.spectra_flux = om(self.tmp / "spectra" / "flux.npy", mode="w+", dtype=np.float32,
                               shape=(int(n_spec), len(self.wavelength)))
        self.spectra_ivar = om(self.tmp / "spectra" / "ivar.npy", mode="w+", dtype=np.float32,
                               shape=(int(n_spec), len(self.wavelength)))
        self._committed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._committed:
            self.abort()
        return False

    def abort(self):
        for a in ("light_curves", "spectra_flux", "spectra_ivar"):
            setattr(self, a, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self, catalog: pd.DataFrame, info: dict | None = None) -> Path:
        catalog = validate_catalog(catalog, n_lc=self.light_curves.shape[0], n_spec=self.spectra_flux.shape[0],
                                   where=str(self.out))
        for a in (self.light_curves, self.spectra_flux, self.spectra_ivar):
            a.flush()
        self.light_curves = self.spectra_flux = self.spectra_ivar = None  # close the memmaps
        catalog.to_parquet(self.tmp / CATALOG, index=False)
        files = sorted(p for p in self.tmp.rglob("*") if p.is_file())
        manifest = {
            "format": "desa-survey-store",
            "format_version": FORMAT_VERSION,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "n_stars": int(len(catalog)),
            "n_light_curves": int(catalog["has_light_curve"].sum()),
            "n_spectra": int(catalog["has_spectrum"].sum()),
            "n_cadences": int(len(self.time)),
            "n_wavelengths": int(len(self.wavelength)),
            "split_counts": {s: int((catalog["split"] == s).sum()) for s in SPLITS},
            "binary_class_counts": {c: int((catalog["binary_class"] == c).sum()) for c in BINARY_CLASSES},
            "files": {str(p.relative_to(self.tmp)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                      for p in files},
            **(info or {}),
        }
        atomic_write_json(self.tmp / MANIFEST, manifest)
        # Swap into place: the old store (if any) is moved aside first and removed only after the rename.
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._committed = True
        return self.out


def validate_catalog(catalog: pd.DataFrame, *, n_lc: int, n_spec: int, where: str) -> pd.DataFrame:
    missing = [c for c in CATALOG_COLUMNS if c not in catalog.columns]
    if missing:
        raise SurveyStoreError(f"{where}: catalogue lacks columns {missing}")
    cat = catalog.reset_index(drop=True).copy()
    if cat["star_id"].duplicated().any():
        dup = cat.loc[cat["star_id"].duplicated(), "star_id"].iloc[0]
        raise SurveyStoreError(f"{where}: star_id {dup!r} appears more than once")
    bad = set(cat["binary_class"].unique()) - set(BINARY_CLASSES)
    if bad:
        raise SurveyStoreError(f"{where}: unknown binary_class values {sorted(bad)}")
    bad = set(cat["split"].unique()) - set(SPLITS)
    if bad:
        raise SurveyStoreError(f"{where}: unknown split values {sorted(bad)}")
    for col, n, flag in (("lc_row", n_lc, "has_light_curve"), ("spec_row", n_spec, "has_spectrum")):
        rows = cat[col].to_numpy(np.int64)
        has = cat[flag].to_numpy(bool)
        if not np.array_equal(has, rows >= 0):
            raise SurveyStoreError(f"{where}: {col} and {flag} disagree")
        used = np.sort(rows[rows >= 0])
        if not np.array_equal(used, np.arange(n)):
            raise SurveyStoreError(f"{where}: {col} must index each of the {n} array rows exactly once")
        cat[col] = rows
        cat[flag] = has
    cat["is_binary"] = cat["is_binary"].astype(bool)
    return cat


@dataclass
class SurveyStore:
    """Read access to a survey store; arrays are memory-mapped and read lazily.

    >>> s = SurveyStore.open("data/survey")
    >>> s.catalog.head();  t, f = s.light_curve("KIC...")  # or by row position
    """

    path: Path
    manifest: dict
    catalog: pd.DataFrame
    time: np.ndarray
    light_curves: np.ndarray
    wavelength: np.ndarray
    spectra_flux: np.ndarray
    spectra_ivar: np.ndarray

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = False) -> "SurveyStore":
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise SurveyStoreError(f"{path}: not a survey store (no {MANIFEST}); build one with "
                                   f"`desa simulate` or `desa ingest`")
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise SurveyStoreError(f"{mpath}: unreadable manifest ({e})") from e
        if manifest.get("format") != "desa-survey-store":
            raise SurveyStoreError(f"{mpath}: not a survey-store manifest")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise SurveyStoreError(f"{mpath}: format version {manifest['format_version']} is newer than this "
                                   f"code ({FORMAT_VERSION}); upgrade desa-explorer")
        for rel, meta in manifest.get("files", {}).items():
            p = path / rel
            if not p.is_file():
                raise SurveyStoreError(f"{p}: listed in the manifest but missing")
            if p.stat().st_size != meta["bytes"]:
                raise SurveyStoreError(f"{p}: size {p.stat().st_size} differs from the manifest's {meta['bytes']}")
            if verify and sha256_file(p) != meta["sha256"]:
                raise SurveyStoreError(f"{p}: checksum differs from the manifest")
        catalog = pd.read_parquet(path / CATALOG)

        def load(rel):
            return np.load(path / rel, mmap_mode="r")

        return cls(path=path, manifest=manifest, catalog=catalog,
                   time=np.asarray(load("light_curves/time.npy")), light_curves=load("light_curves/flux.npy"),
                   wavelength=np.asarray(load("spectra/wavelength.npy")),
                   spectra_flux=load("spectra/flux.npy"), spectra_ivar=load("spectra/ivar.npy"))

    def __len__(self) -> int:
        return len(self.catalog)

    def _row(self, star) -> int:
        if isinstance(star, (int, np.integer)):
            return int(star)
        hits = np.flatnonzero(self.catalog["star_id"].astype(str).to_numpy() == str(star))
        if len(hits) == 0:
            raise KeyError(f"{self.path}: no star with star_id {star!r}")
        return int(hits[0])

    def light_curve(self, star) -> tuple[np.ndarray, np.ndarray] | None:
        """(time [d], relative flux) of a star (catalogue row or star_id); None if it has no light curve."""
        r = int(self.catalog["lc_row"].iat[self._row(star)])
        return None if r < 0 else (self.time, np.asarray(self.light_curves[r]))

    def spectrum(self, star) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(wavelength [A, vacuum], flux, ivar) of a star; None if it has no spectrum."""
        r = int(self.catalog["spec_row"].iat[self._row(star)])
        if r < 0:
            return None
        return self.wavelength, np.asarray(self.spectra_flux[r]), np.asarray(self.spectra_ivar[r])

    @property
    def is_simulated(self) -> bool:
        return self.manifest.get("source") == "simulated"
