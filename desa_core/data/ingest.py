"""`desa ingest`: build a survey store from real Kepler light curves, LAMOST spectra and a cross-match catalogue.

    desa ingest --light-curves kepler/ --spectra lamost/ --catalog crossmatch.csv --out data/real [--match-radius 3]

The catalogue defines the stars. Light-curve files (one Kepler quarter each) are matched to catalogue rows by
KIC id, or by sky position when the catalogue has no KIC column; spectra by OBSID when the catalogue lists
one, otherwise by sky position within ``match_radius_arcsec``. A star keeps whatever modalities it has
(``has_light_curve`` / ``has_spectrum``); catalogue rows with neither are left out. Each star's quarters are
stitched onto one common cadence grid (all stars share ``store.time``) and each spectrum is resampled onto
the simulator's log-lambda grid, so real and simulated stores are interchangeable downstream.

Files that cannot be used (truncated, not FITS, missing columns, all-NaN, wrong wavelength range) are
skipped with a logged reason and listed in the report; the store is written through
:class:`~desa_core.data.store.SurveyWriter`, so a failed run never leaves a half-written store and never
destroys a previous one. Two passes over the files keep memory at one star at a time: the first validates
and matches (and fixes the grid), the second writes.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from desa_core.data.readers.catalogue import Catalogue, read_catalogue
from desa_core.data.readers.common import FitsReadError
from desa_core.data.readers.kepler import (KEPLER_LONG_CADENCE_MIN, bin_to_grid, cadence_grid,
                                           read_kepler_light_curve, stitch_quarters)
from desa_core.data.readers.lamost import read_lamost_spectrum, spectrum_on_grid, store_wavelength_grid
from desa_core.data.observed import EXTINCTION_COLUMNS, observed_columns
from desa_core.data.store import BINARY_CLASSES, CATALOG_COLUMNS, SurveyWriter, assign_splits, atomic_write_json

log = logging.getLogger(__name__)

# Catalogue columns the observed-columns module reads besides the photometry (desa_core.data.observed).
_OBSERVED_INPUTS = ("parallax_error_mas", "parallax_over_error", "nu_eff_used_in_astrometry", "pseudocolour", "ecl_lat",
                    "astrometric_params_solved") + EXTINCTION_COLUMNS
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
REPORT_FILE = "ingest_report.json"


@dataclass
class IngestConfig:
    """Knobs of the ingest; the defaults reproduce the Kepler long cadence and the LAMOST LRS grid."""

    cadence_minutes: float = KEPLER_LONG_CADENCE_MIN  # store grid step; larger values bin (mean) cadences
    quality_bitmask: str | int = "default"             # SAP_QUALITY bits to drop: default/hardest/none/int
    flux_column: str = "PDCSAP_FLUX"
    stitch: str = "median"                            # "median" or "match_edges" (see stitch_quarters)
    edge_days: float = 1.0                            # window fitted on each side of a gap (match_edges)
    min_wavelength_coverage: float = 0.5              # fraction of the 3700-9000 A grid a spectrum must span
    max_cadences: int = 200_000                       # guard against a time axis in the wrong units
    split_seed: int = 0
    progress: bool | None = None                      # tqdm bars; None = only on a terminal


@dataclass
class IngestReport:
    """What `desa ingest` did; also stored as ``ingest_report.json`` and under ``ingest_report`` in the manifest."""

    out: str
    n_stars: int = 0
    n_light_curves: int = 0
    n_spectra: int = 0
    n_light_curve_files: int = 0          # FITS files found under --light-curves
    n_spectrum_files: int = 0
    n_quarters_used: int = 0
    n_catalog_rows: int = 0
    n_catalog_rows_without_data: int = 0  # catalogue stars with neither modality (left out of the store)
    skipped: list[tuple[str, str]] = field(default_factory=list)     # unusable files: (file, reason)
    unmatched: list[tuple[str, str]] = field(default_factory=list)   # good files with no catalogue star
    superseded: list[tuple[str, str]] = field(default_factory=list)  # good files not used (duplicates)
    n_light_curves_matched_by_kic: int = 0
    n_light_curves_matched_by_position: int = 0
    n_spectra_matched_by_obsid: int = 0
    n_spectra_matched_by_position: int = 0
    match_radius_arcsec: float = 3.0
    columns_found: dict[str, str] = field(default_factory=dict)  # store column -> catalogue column
    columns_derived: list[str] = field(default_factory=list)
    columns_absent: list[str] = field(default_factory=list)      # NaN (or default) in the whole store
    observed_columns: dict = field(default_factory=dict)         # what desa_core.data.observed could derive
    cadence_minutes: float = KEPLER_LONG_CADENCE_MIN
    time_range_days: tuple[float, float] | None = None
    n_cadences: int = 0
    n_wavelengths: int = 0
    written: bool = False

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["n_skipped"] = self.n_skipped
        for k in ("skipped", "unmatched", "superseded"):
            d[k] = [list(x) for x in d[k]]
        return d


@dataclass
class _LightCurveFile:
    path: Path
    kic: int
    quarter: int | None
    t_min: float
    t_max: float
    n_good: int
    ra: float
    dec: float
    kepmag: float


@dataclass
class _SpectrumFile:
    path: Path
    obsid: str
    ra: float
    dec: float
    rv_kms: float
    snr: float


def ingest(light_curves, spectra, catalog, out, match_radius_arcsec: float = 3.0,
           config: IngestConfig | None = None) -> IngestReport:
    """Build a survey store at ``out`` from Kepler FITS (``light_curves``), LAMOST FITS (``spectra``) and a
    catalogue (CSV, FITS or VOTable). Returns the :class:`IngestReport`; writes nothing when no star has data.

    Raises ``FileNotFoundError`` for a missing folder/catalogue and ``ValueError`` (naming the file) for an
    unusable catalogue. Individual bad FITS files are skipped, not fatal.
    """
    cfg = config or IngestConfig()
    if not match_radius_arcsec > 0:
        raise ValueError(f"match radius must be positive, got {match_radius_arcsec} arcsec")
    report = IngestReport(out=str(out), match_radius_arcsec=float(match_radius_arcsec),
                          cadence_minutes=float(cfg.cadence_minutes))
    lc_paths = _fits_files(light_curves, "light-curve")
    spec_paths = _fits_files(spectra, "spectrum")
    report.n_light_curve_files, report.n_spectrum_files = len(lc_paths), len(spec_paths)

    cat = read_catalogue(catalog)
    table = cat.table
    report.n_catalog_rows = len(table)
    report.columns_found = dict(cat.columns_found)
    grid_w = store_wavelength_grid()

    # Pass 1: read and validate every file, keep only what matching and the grids need.
    lcs = _scan_light_curves(lc_paths, cfg, report)
    specs = _scan_spectra(spec_paths, grid_w, cfg, report)

    lc_of_row = _match_light_curves(cat, lcs, match_radius_arcsec, report)

    # Positions and Kepler magnitudes from the light-curve headers fill gaps in the catalogue, so spectra of
    # stars whose catalogue row lacks RA/Dec can still be matched by position.
    ra_cat = table["ra"].to_numpy(float).copy() if "ra" in table else np.full(len(table), np.nan)
    dec_cat = table["dec"].to_numpy(float).copy() if "dec" in table else np.full(len(table), np.nan)
    kepmag = table["kepmag"].to_numpy(float).copy() if "kepmag" in table else np.full(len(table), np.nan)
    for r, files in lc_of_row.items():
        if not (np.isfinite(ra_cat[r]) and np.isfinite(dec_cat[r])):
            ra_cat[r], dec_cat[r] = files[0].ra, files[0].dec
        if not np.isfinite(kepmag[r]):
            kepmag[r] = files[0].kepmag

    spec_of_row = _match_spectra(cat, specs, ra_cat, dec_cat, match_radius_arcsec, report)

    rows = [r for r in range(len(table)) if r in lc_of_row or r in spec_of_row]
    report.n_catalog_rows_without_data = len(table) - len(rows)
    for kind, lst in (("unusable", report.skipped), ("unmatched", report.unmatched),
                      ("superseded", report.superseded)):
        if lst:
            log.info("%d %s files (listed in %s)", len(lst), kind, REPORT_FILE)
    if not rows:
        log.error("no catalogue star has a usable light curve or spectrum; nothing written to %s", out)
        return report

    # The common grids: cadence from the earliest to the latest good time stamp of the used quarters.
    used_lc = [f for r in rows if r in lc_of_row for f in lc_of_row[r]]
    if used_lc:
        t0, t1 = min(f.t_min for f in used_lc), max(f.t_max for f in used_lc)
        time = cadence_grid(t0, t1, cfg.cadence_minutes / 1440.0)
        if len(time) > cfg.max_cadences:
            raise ValueError(f"{light_curves}: the time grid would have {len(time)} cadences ({t0:.1f}-{t1:.1f} d at "
                             f"{cfg.cadence_minutes} min), above max_cadences={cfg.max_cadences}; bin more "
                             f"coarsely (IngestConfig.cadence_minutes)")
        report.time_range_days = (float(t0), float(t1))
    else:
        time = np.zeros(0)
    report.n_cadences, report.n_wavelengths = len(time), len(grid_w)

    catalog_df = _build_catalog(cat, rows, lc_of_row, spec_of_row, ra_cat, dec_cat, kepmag, cfg, report)
    n_lc = int(catalog_df["has_light_curve"].sum())
    n_spec = int(catalog_df["has_spectrum"].sum())

    # Pass 2: write one star at a time into the memory-mapped arrays of the (temporary) store.
    with SurveyWriter(out, n_lc=n_lc, n_spec=n_spec, time=time, wavelength=grid_w) as w:
        for i in tqdm(range(len(rows)), desc="writing stars", unit="star", disable=_no_bar(cfg)):
            r = rows[i]
            if r in lc_of_row:
                files = lc_of_row[r]
                quarters = [read_kepler_light_curve(f.path, bitmask=cfg.quality_bitmask,
                                                    flux_column=cfg.flux_column) for f in files]
                t, f = stitch_quarters(quarters, method=cfg.stitch, edge_days=cfg.edge_days)
                w.light_curves[int(catalog_df["lc_row"].iat[i])] = bin_to_grid(t, f, time).astype(np.float32)
                report.n_quarters_used += len(files)
            if r in spec_of_row:
                s = read_lamost_spectrum(spec_of_row[r][0].path)
                flux, ivar = spectrum_on_grid(s, grid_w, min_coverage=cfg.min_wavelength_coverage)
                j = int(catalog_df["spec_row"].iat[i])
                w.spectra_flux[j] = flux.astype(np.float32)
                w.spectra_ivar[j] = ivar.astype(np.float32)
        _add_measured_periods(catalog_df, w.light_curves, time, cfg)
        report.n_stars, report.n_light_curves, report.n_spectra = len(catalog_df), n_lc, n_spec
        report.written = True
        atomic_write_json(w.tmp / REPORT_FILE, report.to_dict())
        summary = {k: v for k, v in report.to_dict().items() if k not in ("skipped", "unmatched", "superseded")}
        w.commit(catalog_df, info={
            "source": "ingested",
            "ingest": {"light_curves": str(light_curves), "spectra": str(spectra), "catalog": str(catalog),
                       "config": asdict(cfg), "report_file": REPORT_FILE},
            "ingest_report": summary,
            "columns_absent": report.columns_absent,
        })
    log.info("ingested %d stars (%d light curves from %d quarters, %d spectra) into %s; %d files skipped",
             report.n_stars, n_lc, report.n_quarters_used, n_spec, out, report.n_skipped)
    return report


def _add_measured_periods(catalog_df: pd.DataFrame, light_curves, time, cfg: IngestConfig, chunk: int = 512):
    """The rotation periods a pipeline measures from the stitched light curves (desa_core.data.periods: ACF and
    Lomb-Scargle, with the detection rule), as catalogue columns; NaN / False without a light curve. A catalogue
    column named ``period`` is never read as Prot, so these are the survey's own rotation periods."""
    from desa_core.data.periods import PERIOD_COLUMNS, measure_periods

    n = len(catalog_df)
    cols = {k: (np.zeros(n, bool) if k == "rotation_detected" else np.full(n, np.nan if k.endswith("_days") else 0.0))
            for k in PERIOD_COLUMNS}
    lc_row = catalog_df["lc_row"].to_numpy(np.int64)
    stars = np.flatnonzero(lc_row >= 0)
    batches = range(0, len(stars), chunk)
    for i in tqdm(batches, desc="measuring rotation periods", unit="batch", disable=_no_bar(cfg) or len(batches) < 2):
        s = stars[i:i + chunk]
        res = measure_periods(time, np.asarray(light_curves[lc_row[s]]))
        for k, v in res.items():
            cols[k][s] = v
    for k, v in cols.items():
        catalog_df[k] = v
    log.info("rotation periods: %d of %d light curves with a detected period", int(cols["rotation_detected"].sum()),
             len(stars))


def _match_light_curves(cat: Catalogue, lcs: list[_LightCurveFile], match_radius_arcsec: float,
                        report: IngestReport) -> dict[int, list[_LightCurveFile]]:
    """Catalogue row -> that star's quarters: by KIC, or by header position when there is no KIC column."""
    table = cat.table
    by_kic: dict[int, list[_LightCurveFile]] = defaultdict(list)
    for f in lcs:
        by_kic[f.kic].append(f)
    by_kic = {k: _dedupe_quarters(v, report) for k, v in by_kic.items()}
    lc_of_row: dict[int, list[_LightCurveFile]] = {}
    if cat.kic_column is not None:
        row_of_kic = {int(k): i for i, k in enumerate(table["kic"]) if not pd.isna(k)}
        for kic, files in by_kic.items():
            if kic in row_of_kic:
                lc_of_row[row_of_kic[kic]] = files
                report.n_light_curves_matched_by_kic += 1
            else:
                report.unmatched += [(str(f.path), f"KIC {kic} is not in the catalogue") for f in files]
    elif cat.has_positions:
        kics = list(by_kic)
        ra = np.array([by_kic[k][0].ra for k in kics])
        dec = np.array([by_kic[k][0].dec for k in kics])
        rows, sep = match_positions(ra, dec, table["ra"].to_numpy(float), table["dec"].to_numpy(float),
                                    match_radius_arcsec)
        for kic, r, s in zip(kics, rows, sep):
            if r >= 0 and r not in lc_of_row:
                lc_of_row[int(r)] = by_kic[kic]
                report.n_light_curves_matched_by_position += 1
            else:
                why = (f"no catalogue star within {match_radius_arcsec} arcsec (nearest {s:.1f})" if r < 0
                       else "another light curve already matched the same catalogue star")
                report.unmatched += [(str(f.path), f"KIC {kic}: {why}") for f in by_kic[kic]]
    else:
        report.unmatched += [(str(f.path), "the catalogue has neither a KIC column nor positions")
                             for files in by_kic.values() for f in files]
    return lc_of_row


def _match_spectra(cat: Catalogue, specs: list[_SpectrumFile], ra_cat, dec_cat, match_radius_arcsec: float,
                   report: IngestReport) -> dict[int, tuple[_SpectrumFile, float]]:
    """Catalogue row -> (spectrum, separation [arcsec]): OBSID first, then sky position; when several
    spectra land on one star the highest-S/N one is kept and the others are reported as superseded."""
    table = cat.table
    spec_candidates: dict[int, list[tuple[_SpectrumFile, float]]] = defaultdict(list)
    row_of_obsid = {}
    if cat.obsid_column is not None:
        row_of_obsid = {o: i for i, o in enumerate(table["obsid"]) if o and o.lower() not in ("nan", "none")}
    by_position = []
    for s in specs:
        if s.obsid and s.obsid in row_of_obsid:
            spec_candidates[row_of_obsid[s.obsid]].append((s, 0.0))
            report.n_spectra_matched_by_obsid += 1
        else:
            by_position.append(s)
    if by_position:
        if np.isfinite(ra_cat).any():
            rows, sep = match_positions(np.array([s.ra for s in by_position]), np.array([s.dec for s in by_position]),
                                        ra_cat, dec_cat, match_radius_arcsec)
            for s, r, d in zip(by_position, rows, sep):
                if r >= 0:
                    spec_candidates[int(r)].append((s, float(d)))
                    report.n_spectra_matched_by_position += 1
                else:
                    report.unmatched.append((str(s.path), f"OBSID {s.obsid or '?'}: no catalogue star within "
                                             f"{match_radius_arcsec} arcsec (nearest {d:.1f})"))
        else:
            report.unmatched += [(str(s.path), "not in the catalogue's OBSID column and the catalogue has no "
                                  "positions to match on") for s in by_position]
    spec_of_row: dict[int, tuple[_SpectrumFile, float]] = {}
    for r, cands in spec_candidates.items():
        cands = sorted(cands, key=lambda c: -c[0].snr)
        spec_of_row[r] = cands[0]
        report.superseded += [(str(s.path), f"another spectrum of the same star ({cands[0][0].path.name}) has "
                               f"higher S/N") for s, _ in cands[1:]]
    return spec_of_row


def match_positions(ra, dec, cat_ra, cat_dec, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest catalogue row for each (ra, dec) [deg] and its separation [arcsec]; row -1 beyond the radius.

    Catalogue rows with a NaN position never match; inputs with a NaN position get row -1 and separation NaN.
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    rows = np.full(len(ra), -1, dtype=np.int64)
    sep = np.full(len(ra), np.nan)
    ok_cat = np.flatnonzero(np.isfinite(cat_ra) & np.isfinite(cat_dec))
    ok = np.isfinite(ra) & np.isfinite(dec)
    if len(ok_cat) == 0 or not ok.any():
        return rows, sep
    c = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg)
    ref = SkyCoord(np.asarray(cat_ra)[ok_cat] * u.deg, np.asarray(cat_dec)[ok_cat] * u.deg)
    idx, d2d, _ = c.match_to_catalog_sky(ref)
    d = d2d.to_value(u.arcsec)
    sep[ok] = d
    rows[ok] = np.where(d <= radius_arcsec, ok_cat[idx], -1)
    return rows, sep


def _fits_files(folder, what: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {what} folder not found")
    files, other = [], 0
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.name.lower().endswith(FITS_SUFFIXES):
            files.append(p)
        else:
            other += 1
    if other:
        log.info("%s: ignoring %d files without a FITS suffix (%s)", folder, other, ", ".join(FITS_SUFFIXES))
    log.info("%s: %d %s FITS files", folder, len(files), what)
    return files


def _no_bar(cfg: IngestConfig):
    return None if cfg.progress is None else not cfg.progress


def _skip(report: IngestReport, path, reason: str) -> None:
    log.warning("skipping %s: %s", path, reason)
    report.skipped.append((str(path), reason))


def _scan_light_curves(paths, cfg: IngestConfig, report: IngestReport) -> list[_LightCurveFile]:
    out = []
    for p in tqdm(paths, desc="reading light curves", unit="file", disable=_no_bar(cfg)):
        try:
            q = read_kepler_light_curve(p, bitmask=cfg.quality_bitmask, flux_column=cfg.flux_column)
            if not (np.isfinite(np.median(q.flux)) and np.median(q.flux) > 0):
                raise FitsReadError(p, f"median {cfg.flux_column} is not positive")
        except FitsReadError as e:
            _skip(report, p, e.reason)
            continue
        out.append(_LightCurveFile(path=Path(p), kic=q.kepler_id, quarter=q.quarter, t_min=float(q.time[0]),
                                   t_max=float(q.time[-1]), n_good=len(q.time), ra=q.ra, dec=q.dec,
                                   kepmag=q.kepmag))
        log.debug("%s: KIC %d Q%s, %d good of %d cadences", p, q.kepler_id, q.quarter, len(q.time), q.n_cadences)
    return out


def _dedupe_quarters(files: list[_LightCurveFile], report: IngestReport) -> list[_LightCurveFile]:
    """One file per quarter (re-downloads, several data releases): the one with more good cadences wins."""
    best: dict = {}
    for f in files:
        key = f.quarter if f.quarter is not None else ("file", str(f.path))
        if key in best:
            keep, drop = (f, best[key]) if f.n_good > best[key].n_good else (best[key], f)
            report.superseded.append((str(drop.path), f"duplicate of quarter {f.quarter} of KIC {f.kic} "
                                                      f"({keep.path.name} kept)"))
            best[key] = keep
        else:
            best[key] = f
    return sorted(best.values(), key=lambda f: f.t_min)


def _scan_spectra(paths, grid_w, cfg: IngestConfig, report: IngestReport) -> list[_SpectrumFile]:
    out = []
    for p in tqdm(paths, desc="reading spectra", unit="file", disable=_no_bar(cfg)):
        try:
            s = read_lamost_spectrum(p)
            flux, ivar = spectrum_on_grid(s, grid_w, min_coverage=cfg.min_wavelength_coverage)
        except FitsReadError as e:
            _skip(report, p, e.reason)
            continue
        out.append(_SpectrumFile(path=Path(p), obsid=s.obsid, ra=s.ra, dec=s.dec, rv_kms=s.rv_kms, snr=s.snr))
    return out


def _build_catalog(cat: Catalogue, rows, lc_of_row, spec_of_row, ra, dec, kepmag, cfg: IngestConfig,
                   report: IngestReport) -> pd.DataFrame:
    """The store catalogue: store columns in CATALOG_COLUMNS order, then provenance, then the extras."""
    src = cat.table.iloc[rows].reset_index(drop=True)
    n = len(rows)
    df = pd.DataFrame(index=range(n))
    if "kic" in src:
        kic = src["kic"]
        ids = [f"KIC {int(k)}" if not pd.isna(k) else None for k in kic]
    else:
        ids = [None] * n
    for i, r in enumerate(rows):
        if ids[i] is None and r in lc_of_row:
            ids[i] = f"KIC {lc_of_row[r][0].kic}"
        if ids[i] is None and cat.id_column is not None and str(src[cat.id_column].iat[i]).strip():
            ids[i] = str(src[cat.id_column].iat[i]).strip()
        if ids[i] is None and "obsid" in src and str(src["obsid"].iat[i]) not in ("", "nan"):
            ids[i] = f"LAMOST {src['obsid'].iat[i]}"
        if ids[i] is None and r in spec_of_row and spec_of_row[r][0].obsid:
            ids[i] = f"LAMOST {spec_of_row[r][0].obsid}"
        if ids[i] is None:
            ids[i] = f"{cat.path.stem} row {r}"
    dup = pd.Series(ids).duplicated()
    if dup.any():
        raise ValueError(f"{cat.path}: star {ids[int(np.flatnonzero(dup)[0])]!r} appears in more than one row")
    df["star_id"] = ids
    df["ra"] = np.asarray(ra)[rows]
    df["dec"] = np.asarray(dec)[rows]

    numeric = [c for c in CATALOG_COLUMNS if c not in ("star_id", "ra", "dec", "binary_class", "is_binary",
                                                       "has_light_curve", "has_spectrum", "split", "lc_row",
                                                       "spec_row")]
    derived, absent = [], []
    for c in numeric:
        df[c] = src[c].to_numpy(float) if c in src else np.nan
    df["kepmag"] = np.asarray(kepmag)[rows]
    if "kepmag" not in src and np.isfinite(df["kepmag"]).any():
        derived.append("kepmag (light-curve header KEPMAG)")
    if "bp_rp" not in src and "gaia_bp" in src and "gaia_rp" in src:
        df["bp_rp"] = df["gaia_bp"] - df["gaia_rp"]
        derived.append("bp_rp (gaia_bp - gaia_rp)")
    if "abs_g" not in src and "gaia_g" in src and "parallax_mas" in src:
        plx = df["parallax_mas"].to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            df["abs_g"] = np.where(plx > 0, df["gaia_g"] + 5 * np.log10(plx) - 10, np.nan)
        derived.append("abs_g (gaia_g + 5 log10(parallax_mas) - 10; apparent, not de-reddened)")
    # A real catalogue's spectroscopic labels are measurements: the same values are the observed columns the
    # maps and the luminosity's bolometric correction read (for a simulation they are noisy copies of the truth).
    for c in ("teff", "logg", "feh"):
        if c in src and f"{c}_obs" not in src:
            df[f"{c}_obs"] = df[c].to_numpy(float)
            derived.append(f"{c}_obs (the catalogue's {c})")
    # The observed CMD / HR columns, as for the simulated survey (desa_core.data.observed): Lindegren zero-point,
    # parallax-over-error cut, extinction from the catalogue, log L from a bolometric correction, delta_mag_ms.
    # abs_g0 is also the luminosity the light-curve encoder reads (LUMINOSITY_COLUMN).
    phot = pd.DataFrame({c: src[c].to_numpy() for c in _OBSERVED_INPUTS if c in src}, index=df.index)
    for c in ("gaia_g", "gaia_bp", "gaia_rp", "parallax_mas", "ra", "dec", "teff_obs", "feh_obs"):
        if c in df:
            phot[c] = df[c].to_numpy()
    derived_obs, obs_info = observed_columns(phot)
    for c in derived_obs.columns:
        df[c] = derived_obs[c].to_numpy()
    report.observed_columns = obs_info
    if np.isfinite(df["abs_g0"]).any():
        derived.append(f"bp_rp0, abs_g0, log_lum_obs, delta_mag_ms_obs ({obs_info['parallax_zero_point']}; "
                       f"{obs_info['n_parallax_ok']} stars pass parallax/error >= {obs_info['min_parallax_over_error']:g}"
                       f"; {obs_info['n_dereddened']} de-reddened)")
    if "ra" not in src and np.isfinite(df["ra"]).any():
        derived.append("ra/dec (light-curve header RA_OBJ/DEC_OBJ)")

    # Binarity: the store's classes are a closed set. Without a catalogue class a star is 'unknown' unless the
    # catalogue flags it a binary, which becomes 'wide' (binary of unknown kind; see docs/ingest.md).
    if "binary_class" in src:
        bc = src["binary_class"].replace({"": "single", "nan": "single", "none": "single"})
        bad = sorted(set(bc) - set(BINARY_CLASSES))
        if bad:
            raise ValueError(f"{cat.path}: binary_class values {bad} are not among {list(BINARY_CLASSES)}")
        df["binary_class"] = bc.to_numpy()
        df["is_binary"] = src["is_binary"].to_numpy(bool) if "is_binary" in src else (bc != "single").to_numpy()
    elif "is_binary" in src:
        df["is_binary"] = src["is_binary"].to_numpy(bool)
        df["binary_class"] = np.where(df["is_binary"], "wide", "single")
    else:
        # Nothing says whether these stars are binaries: 'unknown', not 'single'. The photometric evidence
        # (delta_mag_ms_obs >= 0.3) and RUWE stay available as columns.
        df["binary_class"] = "unknown"
        df["is_binary"] = False
    for c in CATALOG_COLUMNS:
        if c in ("star_id", "has_light_curve", "has_spectrum", "split", "lc_row", "spec_row"):
            continue
        if c in ("binary_class", "is_binary"):
            if "binary_class" not in src and "is_binary" not in src:
                absent.append(c)
        elif c not in src and not np.isfinite(df[c].to_numpy(float)).any():
            absent.append(c)

    has_lc = np.array([r in lc_of_row for r in rows])
    has_spec = np.array([r in spec_of_row for r in rows])
    df["has_light_curve"] = has_lc
    df["has_spectrum"] = has_spec
    df["split"] = assign_splits(df["star_id"], seed=cfg.split_seed)
    df["lc_row"] = np.where(has_lc, np.cumsum(has_lc) - 1, -1).astype(np.int64)
    df["spec_row"] = np.where(has_spec, np.cumsum(has_spec) - 1, -1).astype(np.int64)

    # Provenance, then the catalogue's own extra columns.
    rv_cat = src["rv_kms_obs"].to_numpy(float) if "rv_kms_obs" in src else np.full(n, np.nan)
    rv_hdr = np.array([spec_of_row[r][0].rv_kms if r in spec_of_row else np.nan for r in rows])
    df["rv_kms_obs"] = np.where(np.isfinite(rv_hdr), rv_hdr, rv_cat)
    df["n_quarters"] = [len(lc_of_row[r]) if r in lc_of_row else 0 for r in rows]
    df["spectrum_file"] = [spec_of_row[r][0].path.name if r in spec_of_row else "" for r in rows]
    df["spectrum_obsid"] = [spec_of_row[r][0].obsid if r in spec_of_row else "" for r in rows]
    df["spectrum_match_arcsec"] = [spec_of_row[r][1] if r in spec_of_row else np.nan for r in rows]
    for c in src.columns:
        if c not in df.columns:
            df[c] = src[c].array  # keeps nullable integer ids (KIC) as Int64, not object
    report.columns_derived, report.columns_absent = derived, absent
    if absent:
        log.info("catalogue %s lacks %s (NaN, or 'single' for binarity, in the store)", cat.path, ", ".join(absent))
    return df
