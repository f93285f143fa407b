"""Shared FITS plumbing for the mission readers: safe opening and one error type for a bad file.

Every reader turns whatever astropy raises on a broken file (not FITS, truncated, missing extension or
column, wrong shape) into :class:`FitsReadError`, whose message names the file and the problem; ``desa
ingest`` catches exactly that error and skips the file. Anything else (a bug, a full disk) propagates.
"""
from __future__ import annotations

import contextlib
import os
import warnings
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
from astropy.io import fits


class FitsReadError(ValueError):
    """A FITS file that cannot be used; ``reason`` is the short why, ``str(err)`` names the file too."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@contextlib.contextmanager
def open_fits(path: str | os.PathLike) -> Iterator[fits.HDUList]:
    """Open a FITS file fully into memory (``memmap=False``) after checking it is complete.

    The header-declared data sizes are compared with the real file length before any data is read, so a
    truncated download (or a header claiming a huge array) is rejected instead of trusted.
    """
    path = Path(path)
    if not path.is_file():
        raise FitsReadError(path, "no such file")
    size = path.stat().st_size
    if size < 2880:
        raise FitsReadError(path, f"not a FITS file (only {size} bytes; a FITS file is at least 2880)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation is checked below with a clearer message
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
    except Exception as e:  # astropy raises OSError, ValueError, TypeError... on garbage
        if "SIMPLE" in str(e):
            raise FitsReadError(path, "not a readable FITS file (it does not start with a FITS header; an "
                                      "HTML error page or a partial download?)") from e
        raise FitsReadError(path, f"not a readable FITS file ({type(e).__name__}: {e})") from e
    try:
        compressed = path.suffix.lower() in (".gz", ".bz2", ".zip")  # sizes refer to the decompressed stream
        for i, hdu in enumerate(hdul):
            end = int(hdul.fileinfo(i)["datLoc"]) + int(hdu.size)  # data size as the header declares it
            if end > size and not compressed:
                raise FitsReadError(path, f"truncated: HDU {i} declares data up to byte {end} but the file "
                                          f"has {size} bytes")
        yield hdul
    except FitsReadError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, EOFError, zlib.error) as e:
        # Raised while a reader touches the data: a corrupt compressed stream, a wrong shape, a bad column.
        raise FitsReadError(path, f"unreadable data ({type(e).__name__}: {e})") from e
    finally:
        hdul.close()


def header_value(header: fits.Header, *keys: str, default=None):
    """First present, non-empty value among ``keys`` (FITS headers use several spellings across releases)."""
    for k in keys:
        if k in header:
            v = header[k]
            if v is None or (isinstance(v, str) and not v.strip()) or isinstance(v, fits.card.Undefined):
                continue
            return v
    return default


def header_float(header: fits.Header, *keys: str) -> float:
    v = header_value(header, *keys)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if np.isfinite(f) else float("nan")


def table_column(path, hdu, names: tuple[str, ...], required: bool = True):
    """A column from a binary-table HDU under any of ``names`` (case-insensitive), as a float64 array."""
    cols = {c.upper(): c for c in hdu.columns.names}
    for n in names:
        if n.upper() in cols:
            try:
                return np.asarray(hdu.data[cols[n.upper()]], dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise FitsReadError(path, f"column {n} of HDU {hdu.name!r} is not numeric ({e})") from e
    if required:
        raise FitsReadError(path, f"HDU {hdu.name!r} has no column {' or '.join(names)} "
                                  f"(columns: {', '.join(hdu.columns.names)})")
    return None
