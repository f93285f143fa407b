"""The cross-match catalogue of a real survey: CSV, FITS table or VOTable, read with astropy.table.

:func:`read_catalogue` returns a pandas DataFrame with the catalogue's own columns plus the ones it could
map onto the survey store's names (:data:`COLUMN_ALIASES`, matched case-insensitively and ignoring
punctuation, so ``Teff``, ``TEFF`` and ``teff_K`` all become ``teff``) and the identifiers used for matching:
``kic`` (int, from kic/kepid/KIC/star_id columns such as ``'KIC 10000001'``) and ``obsid`` (str).
A file that cannot be read, is empty, or has neither an identifier nor sky positions raises ``ValueError``
naming the file.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# store column -> accepted catalogue spellings (compared after lower-casing and dropping non-alphanumerics).
# Deliberately absent: "gmag"/"kmag" (SDSS g / 2MASS K in the KIC, not Gaia G / Kepler Kp).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "ra": ("ra", "radeg", "raj2000", "raicrs", "raobj", "radeg_"),
    "dec": ("dec", "decdeg", "dej2000", "decj2000", "deicrs", "decobj", "dedeg"),
    "teff": ("teff", "teffk", "teffspec", "tefflamost", "teffobs"),
    "logg": ("logg", "loggspec", "logglamost", "loggobs"),
    "feh": ("feh", "fehspec", "fehlamost", "mh", "metallicity", "fehobs"),
    "mass": ("mass", "massmsun", "mstar"),
    "radius": ("radius", "radiusrsun", "rad", "rstar"),
    "log_lum": ("loglum", "logl", "loglsun"),
    "age_gyr": ("agegyr", "age"),
    # Not "period": in a cross-match that is as often an orbital (or pulsation) period as a rotation period.
    "prot_days": ("protdays", "prot", "protd", "rotationperiod"),
    "binary_class": ("binaryclass",),
    "is_binary": ("isbinary", "binary", "binaryflag"),
    "porb_days": ("porbdays", "porb", "orbitalperiod"),
    "mass_ratio": ("massratio",),
    "gaia_g": ("gaiag", "photgmeanmag", "gaiagmag", "gmaggaia"),
    "gaia_bp": ("gaiabp", "photbpmeanmag", "bpmag"),
    "gaia_rp": ("gaiarp", "photrpmeanmag", "rpmag"),
    "bp_rp": ("bprp", "gaiabprp"),
    "abs_g": ("absg", "absgmag"),
    "parallax_mas": ("parallaxmas", "parallax", "plx"),
    "parallax_error_mas": ("parallaxerror", "parallaxerrormas", "eplx", "plxerr", "eparallax", "errparallax"),
    "parallax_over_error": ("parallaxovererror", "plxovererr"),
    # Gaia DR3 inputs of the Lindegren et al. 2021 parallax zero-point (desa_core/data/observed.py)
    "nu_eff_used_in_astrometry": ("nueffusedinastrometry", "nueff"),
    "pseudocolour": ("pseudocolour", "pseudocolor"),
    "ecl_lat": ("ecllat", "eclipticlatitude"),
    "astrometric_params_solved": ("astrometricparamssolved",),
    # extinction estimates (first found is used: A_G, E(BP-RP), A_V / A_0, E(B-V))
    "a_g": ("ag", "aggspphot", "agval", "ag0", "extinctiong"),
    "e_bp_rp": ("ebprp", "ebpminrp", "ebpminrpgspphot", "ebpminrpval", "ebprp0"),
    "a_v": ("av", "a0", "azerogspphot", "av0", "extinctionv"),
    "ebv": ("ebv", "ebminusv", "ebmv", "ebv0", "reddening"),
    "ruwe": ("ruwe",),
    "kepmag": ("kepmag", "kp", "kepmagnitude"),
    "rv_kms_obs": ("rvkmsobs", "heliorv", "rv", "rvkms", "radialvelocity"),
}
AMBIGUOUS = ("period", "per", "p")
KIC_ALIASES = ("kic", "kepid", "kicid", "keplerid", "kepidkic", "starid")
OBSID_ALIASES = ("obsid", "lamostobsid", "obsidlamost")
CATALOGUE_FORMATS = {".csv": "ascii.csv", ".txt": "ascii.csv", ".tsv": "ascii.tab",
                     ".fits": "fits", ".fit": "fits", ".fts": "fits", ".fits.gz": "fits",
                     ".xml": "votable", ".vot": "votable", ".votable": "votable"}


@dataclass
class Catalogue:
    """A catalogue mapped onto store names; ``columns_found`` maps store column -> original column name."""

    path: Path
    table: pd.DataFrame
    columns_found: dict[str, str] = field(default_factory=dict)
    kic_column: str | None = None
    obsid_column: str | None = None
    id_column: str | None = None   # a non-KIC star identifier used as star_id when there is no KIC

    @property
    def has_positions(self) -> bool:
        return "ra" in self.table and "dec" in self.table and bool(
            (np.isfinite(self.table["ra"]) & np.isfinite(self.table["dec"])).any())


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _format_for(path: Path) -> str | None:
    name = path.name.lower()
    for ext in sorted(CATALOGUE_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return CATALOGUE_FORMATS[ext]
    return None


def parse_kic(value, strict: bool = False) -> int | None:
    """KIC number from 10000001, '10000001', 'KIC 10000001', 'kplr010000001'; None if there is none.

    ``strict`` accepts only those spellings (for a generic star_id column that may hold other names)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value) if value > 0 else None
    if isinstance(value, (float, np.floating)):
        return int(value) if np.isfinite(value) and value > 0 and float(value).is_integer() else None
    m = re.fullmatch(r"\s*(?:kic|kplr|kepler)?[\s_-]*0*(\d+)\s*", str(value), flags=re.I) if strict \
        else re.search(r"(\d+)", str(value))
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


def _to_pandas(tab, path) -> pd.DataFrame:
    cols = {}
    for name in tab.colnames:
        col = tab[name]
        if col.ndim > 1:
            log.warning("%s: column %r is multi-dimensional %s; not kept", path, name, col.shape)
            continue
        arr = np.asarray(np.ma.getdata(col))
        mask = np.asarray(np.ma.getmaskarray(col)) if getattr(col, "mask", None) is not None else None
        if arr.dtype.kind == "S":
            arr = np.char.decode(arr, "utf-8", errors="replace")
        if mask is not None and mask.any():
            if arr.dtype.kind in "fiub":
                arr = arr.astype(np.float64)
                arr[mask] = np.nan
            else:
                arr = arr.astype(str)
                arr[mask] = ""
        if arr.dtype.kind == "O":
            arr = np.array(["" if v is None else str(v) for v in arr])
        cols[str(name)] = arr
    return pd.DataFrame(cols)


def read_catalogue(path: str | os.PathLike) -> Catalogue:
    """Read and map a cross-match catalogue; ``ValueError`` naming the file if it is unusable."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: catalogue not found")
    fmt = _format_for(path)
    try:
        # VOTable FIELD names are the human ones ("[Fe/H]"); their IDs are mangled ("__Fe_H_").
        kw = {"use_names_over_ids": True} if fmt == "votable" else {}
        tab = Table.read(path, format=fmt, **kw) if fmt else Table.read(path)
    except Exception as e:  # astropy raises many types on malformed input
        kind = fmt or "any format astropy.table recognises (csv, fits, votable)"
        raise ValueError(f"{path}: cannot read the catalogue as {kind} ({type(e).__name__}: {e})") from e
    if len(tab) == 0:
        raise ValueError(f"{path}: the catalogue has no rows")
    df = _to_pandas(tab, path)
    keys = {}
    for c in df.columns:
        keys.setdefault(_key(c), c)

    found: dict[str, str] = {}
    for store_col, aliases in COLUMN_ALIASES.items():
        for a in aliases:
            if a in keys and keys[a] not in found.values():
                found[store_col] = keys[a]
                break
    for a in AMBIGUOUS:
        if a in keys:
            log.warning("%s: column %r is not read as a rotation period (it may be an orbital period); name it "
                        "'prot' for a rotation period or 'porb' for an orbital one", path, keys[a])
    kic_col = next((keys[a] for a in KIC_ALIASES if a in keys), None)
    obsid_col = next((keys[a] for a in OBSID_ALIASES if a in keys), None)
    id_col = next((keys[a] for a in ("starid", "name", "designation", "sourceid", "id") if a in keys), None)

    out = pd.DataFrame(index=df.index)
    for store_col, src in found.items():
        if store_col in ("binary_class",):
            out[store_col] = df[src].astype(str).str.strip().str.lower()
        elif store_col == "is_binary":
            out[store_col] = _parse_bool(df[src], path, src)
        else:
            out[store_col] = pd.to_numeric(df[src], errors="coerce").astype(np.float64)
            n_bad = int(out[store_col].isna().sum() - pd.isna(df[src]).sum())
            if n_bad > 0:
                log.warning("%s: %d non-numeric values in column %r read as NaN", path, n_bad, src)
    if kic_col is not None:
        kic = [parse_kic(v, strict=_key(kic_col) == "starid") for v in df[kic_col]]
        if all(k is None for k in kic):
            if _key(kic_col) == "starid":  # a star_id column with names, not KIC numbers
                kic_col = None
            else:
                raise ValueError(f"{path}: column {kic_col!r} holds no KIC numbers")
        if kic_col is not None:
            out["kic"] = pd.array([k if k is not None else pd.NA for k in kic], dtype="Int64")
            dup = out["kic"].dropna().duplicated()
            if dup.any():
                raise ValueError(f"{path}: KIC {out['kic'].dropna()[dup].iloc[0]} appears more than once")
    if obsid_col is not None:
        out["obsid"] = df[obsid_col].astype(str).str.strip().str.replace(r"\.0$", "", regex=True)
    used = set(found.values()) | {c for c in (kic_col, obsid_col) if c}
    for c in df.columns:
        if c not in used and c not in out.columns:
            out[c] = df[c]
    cat = Catalogue(path=path, table=out, columns_found=found, kic_column=kic_col, obsid_column=obsid_col,
                    id_column=id_col if id_col not in used else None)
    if kic_col is None and obsid_col is None and not cat.has_positions:
        raise ValueError(f"{path}: the catalogue has no KIC column ({', '.join(KIC_ALIASES)}), no OBSID column "
                         f"and no RA/Dec columns, so nothing can be matched to it (columns: {list(df.columns)})")
    log.info("%s: %d rows; mapped %s; KIC column %r, OBSID column %r", path, len(out),
             ", ".join(f"{v}->{k}" for k, v in found.items()) or "nothing", kic_col, obsid_col)
    return cat


def _parse_bool(s: pd.Series, path, col) -> pd.Series:
    true = {"1", "true", "t", "yes", "y"}
    false = {"0", "false", "f", "no", "n", "", "nan", "none"}
    vals = s.astype(str).str.strip().str.lower()
    bad = ~vals.isin(true | false)
    if bad.any():
        raise ValueError(f"{path}: column {col!r} has non-boolean values such as {s[bad].iloc[0]!r}")
    return vals.isin(true)
