"""Similarity search: the k stars nearest a target in the DESA (joint), light-curve or spectrum embedding.

A target is a catalogue star (by id, by sky position, or by clicking it on a map) or an uploaded Kepler
light-curve FITS and/or LAMOST spectrum FITS, embedded live by the trained model. The search runs on the
server over the artifact set's FAISS index (cosine similarity), optionally restricted to the current selection
or to a named population; the neighbours are highlighted on every map, listed with their similarity and key
columns, and their light curves and spectra are previewed next to the target's.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import zlib
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from app.state import CURRENT_SELECTION, EMBEDDING_LABELS, Session, UserInputError

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024          # one uploaded file as sent (compressed or not)
MAX_UPLOAD_TOTAL_BYTES = 40 * 1024 * 1024    # all files of one upload box together
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024    # a .gz upload expanded (a real Kepler quarter is ~0.5 MB)
UPLOAD_CHUNK_BYTES = 1024 * 1024             # uploads travel in chunks of this size over the websocket
MAX_LIGHT_CURVE_FILES = 20                   # Kepler has 18 quarters
RESTRICT_ALL, RESTRICT_SELECTION = "all stars", CURRENT_SELECTION
PREVIEW_NEIGHBOURS = 3


def parse_sky_position(text: str):
    """Parse any position astropy's SkyCoord understands ("291.0 42.5", "19h24m +42d30m", "19:24:00 +42:30:00",
    "291.0d 42.5d"); plain numbers are degrees, sexagesimal with colons is hours + degrees."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    text = (text or "").strip()
    if not text:
        raise UserInputError("enter a sky position, e.g. '291.04 42.51' or '19h24m09.6s +42d30m36s'")
    attempts = []
    if re.fullmatch(r"[+-]?\d+(\.\d*)?[\s,]+[+-]?\d+(\.\d*)?", text):
        attempts.append(dict(unit=(u.deg, u.deg)))
    elif ":" in text or re.search(r"\d\s+\d+\s+\d", text):
        attempts.append(dict(unit=(u.hourangle, u.deg)))
    attempts.append({})
    for kw in attempts:
        try:
            return SkyCoord(text.replace(",", " "), frame="icrs", **kw)
        except Exception:
            continue
    raise UserInputError(f"cannot parse sky position {text!r}: use e.g. '291.04 42.51' (degrees) or "
                         f"'19:24:09.6 +42:30:36' (hours, degrees)")


def _bin_series(x: np.ndarray, y: np.ndarray, n_bins: int = 1500):
    """Mean binning for display: a 70k-cadence light curve becomes ~1500 points."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) <= n_bins:
        return x, y
    edges = np.linspace(x.min(), x.max(), n_bins + 1)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    cnt = np.bincount(idx, minlength=n_bins)
    sx = np.bincount(idx, weights=x, minlength=n_bins)
    sy = np.bincount(idx, weights=y, minlength=n_bins)
    keep = cnt > 0
    return sx[keep] / cnt[keep], sy[keep] / cnt[keep]


def _size(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _is_gzip(data: bytes, filename: str) -> bool:
    return data[:2] == b"\x1f\x8b" or str(filename).lower().endswith(".gz")


def save_upload(data: bytes, filename: str, limit: int = MAX_UPLOAD_BYTES,
                max_decompressed: int = MAX_DECOMPRESSED_BYTES) -> str:
    """Write uploaded bytes to a private temporary FITS file (the readers take paths) and return its path.

    Checks the size limit; a gzip upload is decompressed here, a chunk at a time, and refused as soon as it
    expands beyond ``max_decompressed`` (a small gzip can expand to gigabytes), so memory stays bounded."""
    name = filename or "upload"
    if data is None or len(data) == 0:
        raise UserInputError(f"{name}: the file is empty")
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if len(data) > limit:
        raise UserInputError(f"{name}: {len(data) / 1e6:.1f} MB is over the {_size(limit)} upload limit")
    fd, path = tempfile.mkstemp(prefix="desa-upload-", suffix=".fits")
    try:
        with os.fdopen(fd, "wb") as f:
            if not _is_gzip(data, name):
                f.write(data)
                return path
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            total, pending = 0, data
            step = 1 << 20
            try:
                while pending and not d.eof:
                    out = d.decompress(pending, step)
                    pending = d.unconsumed_tail
                    total += len(out)
                    if total > max_decompressed:
                        raise UserInputError(f"{name}: decompresses to more than {_size(max_decompressed)}, "
                                             f"the limit for a compressed upload")
                    f.write(out)
                    if not out and not pending:
                        break
            except zlib.error as e:
                raise UserInputError(f"{name}: not a valid gzip file ({e})") from None
            if not d.eof:
                raise UserInputError(f"{name}: the gzip stream is truncated")
        return path
    except BaseException:
        os.unlink(path)
        raise


class BoundedFileDropper(pn.widgets.FileDropper):
    """A file drop box whose limits hold on the server too.

    The browser (FilePond) refuses a file above the size limit before sending it; because a hostile client
    need not run that code, the server counts the chunks of each file as they arrive and drops a file (and its
    buffered chunks) the moment it passes ``max_bytes``, or the box passes ``max_total_bytes`` or
    ``max_files``. ``refused`` says which files were dropped and why."""

    def __init__(self, max_bytes: int = MAX_UPLOAD_BYTES, max_files: int = 1,
                 max_total_bytes: int = MAX_UPLOAD_TOTAL_BYTES, **params):
        params.setdefault("chunk_size", UPLOAD_CHUNK_BYTES)
        super().__init__(max_file_size=f"{max_bytes // 1024}KB", max_files=max_files, multiple=max_files > 1,
                         max_total_file_size=f"{max_total_bytes // 1024}KB", **params)
        self._max_bytes, self._max_files, self._max_total = int(max_bytes), int(max_files), int(max_total_bytes)
        self._received: dict[str, int] = {}
        self.refused: dict[str, str] = {}

    def _refuse(self, name: str, why: str):
        self._file_buffer.pop(name, None)
        self._received.pop(name, None)
        self.refused[name] = why
        log.warning("upload %r refused: %s", name[:80], why)

    def _process_event(self, event):
        data = event.data or {}
        name = str(data.get("name", ""))[:255]
        data["name"] = name
        if event.event_name == "delete_event":
            self._received.pop(name, None)
            self.refused.pop(name, None)
            return super()._process_event(event)
        chunk = data.get("data") or b""
        if data.get("chunk") == 1:
            self.refused.pop(name, None)
            self._received[name] = 0
        if name in self.refused or name not in self._received:
            return  # a file already refused, or chunks without a first one
        self._received[name] += len(chunk)
        others = sum(len(v) for k, v in self.value.items() if k != name)
        if self._received[name] > self._max_bytes:
            return self._refuse(name, f"over the {_size(self._max_bytes)} limit per file")
        if others + self._received[name] > self._max_total:
            return self._refuse(name, f"the files together are over the {_size(self._max_total)} limit")
        if len(set(self.value) | set(self._received)) > self._max_files:
            return self._refuse(name, f"more than {self._max_files} file(s)")
        super()._process_event(event)
        if data.get("chunk") == data.get("total_chunks"):
            self._received.pop(name, None)

    def files(self) -> list[tuple[bytes, str]]:
        """The uploaded files as (bytes, name), in name order."""
        return [(v.encode() if isinstance(v, str) else v, k) for k, v in sorted(self.value.items())]


def read_uploaded_quarter(data: bytes, filename: str):
    """One uploaded Kepler light-curve FITS (one quarter) -> KeplerLightCurve."""
    from desa_core.data.readers import FitsReadError, read_kepler_light_curve
    path = save_upload(data, filename)
    try:
        return read_kepler_light_curve(path)
    except FitsReadError as e:
        raise UserInputError(f"{filename}: {e.reason}") from None
    finally:
        os.unlink(path)


def read_uploaded_light_curve(files, filename: str | None = None):
    """(time [d], relative flux, KEPLERID) from one or more uploaded quarters of one star.

    ``files``: (bytes, name) or a list of them (or bytes plus ``filename``). Several quarters are stitched
    as ``desa ingest`` stitches them (each divided by its median); quarters of different stars are refused."""
    from desa_core.data.readers import FitsReadError, stitch_quarters
    if isinstance(files, (bytes, bytearray)):
        files = [(bytes(files), filename or "upload.fits")]
    elif isinstance(files, tuple) and len(files) == 2 and isinstance(files[0], (bytes, bytearray, str)):
        files = [files]
    if not files:
        raise UserInputError("no light-curve file was uploaded")
    if len(files) > MAX_LIGHT_CURVE_FILES:
        raise UserInputError(f"at most {MAX_LIGHT_CURVE_FILES} quarters in one upload")
    quarters = [read_uploaded_quarter(d, n) for d, n in files]
    ids = sorted({q.kepler_id for q in quarters})
    if len(ids) > 1:
        raise UserInputError(f"the uploaded quarters belong to different stars (KEPLERID {', '.join(map(str, ids))})"
                             f": upload the quarters of one star")
    try:
        t, f = stitch_quarters(quarters)
    except FitsReadError as e:
        raise UserInputError(f"{Path(e.path).name}: {e.reason}") from None
    if len(t) < 10:
        raise UserInputError(f"{files[0][1]}: only {len(t)} good cadences")
    return np.asarray(t, np.float64), np.asarray(f, np.float64), ids[0]


def _upload_periods(lc) -> dict:
    """Measured rotation periods of an uploaded light curve (ACF and Lomb-Scargle, desa_core.data.periods), on a
    uniform grid at the file's own cadence (the Kepler long cadence for MAST files; a coarser one for binned
    data, which on a finer grid would leave every other point empty)."""
    if lc is None:
        return {}
    from desa_core.data.periods import measure_periods
    from desa_core.data.readers.kepler import KEPLER_LONG_CADENCE_MIN, bin_to_grid, cadence_grid
    t, f = lc[0], lc[1]
    step = max(float(np.median(np.diff(np.sort(t)))), KEPLER_LONG_CADENCE_MIN / 1440.0)
    grid = cadence_grid(float(t.min()), float(t.max()), step)
    res = measure_periods(grid, bin_to_grid(t, f, grid)[None])
    return {k: (bool(v[0]) if v.dtype == bool else float(v[0])) for k, v in res.items()}


def read_uploaded_spectrum(data: bytes, filename: str):
    """(wavelength, flux, ivar, rv_kms, obsid) from an uploaded LAMOST spectrum FITS."""
    from desa_core.data.readers import FitsReadError, read_lamost_spectrum
    path = save_upload(data, filename)
    try:
        sp = read_lamost_spectrum(path)
    except FitsReadError as e:
        raise UserInputError(f"{filename}: {e.reason}") from None
    finally:
        os.unlink(path)
    rv = sp.rv_kms
    return sp.wavelength, sp.flux, sp.ivar, (rv if np.isfinite(rv) else 0.0), sp.obsid


class Search(pn.viewable.Viewer):
    """Similarity search panel of one session."""

    k = param.Integer(default=10, bounds=(1, 500), doc="number of neighbours")
    index_name = param.Selector(default="desa", objects=["desa"], doc="which embedding to search")
    restrict = param.Selector(default=RESTRICT_ALL, objects=[RESTRICT_ALL, RESTRICT_SELECTION])
    star_id = param.String(default="")
    sky_position = param.String(default="")
    radius_arcsec = param.Number(default=5.0, bounds=(0.01, 3600.0))

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        self.data = session.data
        names = self.data.embedding_names or ["desa"]
        self.param.index_name.objects = names
        self.index_name = names[0]
        self.last_search_s = float("nan")
        session.param.watch(self._update_restrict, "populations_version")
        self._table = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, height=300, width=1100,
                                           show_index=False, pagination=None, visible=False)
        self._lc_file = BoundedFileDropper(max_files=MAX_LIGHT_CURVE_FILES, label="Kepler light-curve FITS "
                                           "(one or more quarters of one star)", layout="compact", width=360)
        self._spec_file = BoundedFileDropper(max_files=1, label="LAMOST spectrum FITS", layout="compact", width=300)
        self._previews = pn.pane.HoloViews(self._preview_plot(), linked_axes=False)
        self._upload_table = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, width=620,
                                                  visible=False)
        session.param.watch(self._refresh_outputs, "neighbours_version")

    def _update_restrict(self, *_):
        self.param.restrict.objects = [RESTRICT_ALL, RESTRICT_SELECTION] + sorted(self.session.populations)

    # --- the searches -------------------------------------------------------------------------------
    def _subset(self):
        if self.restrict == RESTRICT_ALL:
            return None
        mask = self.session.population_mask(self.restrict)
        rows = np.flatnonzero(mask)
        if len(rows) == 0:
            raise UserInputError(f"'{self.restrict}' is empty: nothing to search in")
        return rows

    def _run(self, query: np.ndarray, target_row: int, label: str, positions: dict | None = None,
             upload: dict | None = None) -> pd.DataFrame:
        t0 = time.perf_counter()
        subset = self._subset()
        k = int(self.k)
        extra = 1 if target_row >= 0 else 0  # the target finds itself first: ask for one more
        sims, rows = self.data.search(self.index_name, np.asarray(query, np.float32)[None, :], k + extra,
                                      subset_ids=subset)
        sims, rows = sims[0], rows[0]
        keep = (rows >= 0) & (rows != target_row)
        sims, rows = sims[keep][:k], rows[keep][:k]
        table = self.data.table(rows, self.data.key_columns())
        table.insert(0, "similarity", np.round(sims.astype(np.float64), 4))
        table.insert(0, "rank", np.arange(1, len(rows) + 1))
        table["row"] = rows
        self.last_search_s = time.perf_counter() - t0
        self.session.set_neighbours(target_row, label, table, positions=positions, upload=upload)
        where = "" if subset is None else f" within '{self.restrict}'"
        self.session.notify(f"{len(table)} nearest neighbours of {label} in the "
                            f"{EMBEDDING_LABELS.get(self.index_name, self.index_name)} embedding{where} "
                            f"({1000 * self.last_search_s:.0f} ms)", "success")
        return table

    def query_vector(self, row: int) -> np.ndarray:
        vec = np.asarray(self.data.embedding(self.index_name)[row], dtype=np.float32)
        if not np.isfinite(vec).all():
            what = {"light_curve": "a light curve", "spectrum": "a spectrum"}.get(self.index_name, "this embedding")
            raise UserInputError(f"star {self.data.star_ids[row]} has no {what}: search the joint (DESA) index")
        return vec

    def search_row(self, row: int) -> pd.DataFrame:
        self.session.target_vector = None
        return self._run(self.query_vector(row), int(row), self.data.star_ids[row])

    def search_star(self, star_id: str | None = None) -> pd.DataFrame:
        """Neighbours of a catalogue star given by its id."""
        star_id = self.star_id if star_id is None else star_id
        return self.search_row(self.data.row_of(star_id))

    def nearest_to_position(self, text: str, radius_arcsec: float | None = None) -> tuple[int, float]:
        """(row, separation in arcsec) of the catalogue star nearest a sky position, within the radius."""
        c = parse_sky_position(text)
        radius = float(self.radius_arcsec if radius_arcsec is None else radius_arcsec)
        ra, dec = self.data.column("ra"), self.data.column("dec")
        r_deg = radius / 3600.0
        # A declination band first, so only a few stars get a full angular separation.
        cand = np.flatnonzero(np.abs(dec - c.dec.deg) <= r_deg + 1e-4)
        if len(cand):
            from astropy.coordinates import SkyCoord
            sep = c.separation(SkyCoord(ra[cand].astype(np.float64), dec[cand].astype(np.float64),
                                        unit="deg")).arcsec
            best = int(np.argmin(sep))
            if sep[best] <= radius:
                return int(cand[best]), float(sep[best])
        raise UserInputError(f"no star within {radius:g} arcsec of {c.to_string('hmsdms', precision=1)}")

    def search_position(self, text: str | None = None, radius_arcsec: float | None = None) -> pd.DataFrame:
        row, sep = self.nearest_to_position(self.sky_position if text is None else text, radius_arcsec)
        out = self.search_row(row)
        self.session.notify(f"{self.data.star_ids[row]} is {sep:.2f} arcsec from the position; "
                            f"{len(out)} neighbours found", "success")
        return out

    def search_upload(self, light_curve=None, spectrum: tuple[bytes, str] | None = None,
                      abs_g: float | None = None) -> pd.DataFrame:
        """Embed an uploaded light curve (one quarter as (bytes, name), or a list of quarters of one star,
        stitched as ``desa ingest`` stitches them) and/or spectrum with the model and search its neighbours.

        The upload's KEPLERID (or its spectrum's OBSID) is looked up in the artifact set's catalogue: a match
        gives the luminosity channel the catalogue's observed M_G (``abs_g0``) and the upload the star's CMD / HR
        position. The upload is placed on the UMAPs through its nearest stars and marked; its measured rotation
        periods and the model's predicted properties are shown next to its neighbours."""
        from desa_core.data.preprocess import LUMINOSITY_COLUMN
        if not light_curve and spectrum is None:
            raise UserInputError("choose Kepler light-curve FITS and/or a LAMOST spectrum FITS to upload")
        lc = read_uploaded_light_curve(light_curve) if light_curve else None
        sp = read_uploaded_spectrum(*spectrum) if spectrum is not None else None
        row, how = self.data.match_upload(kepler_id=None if lc is None else lc[2], obsid=None if sp is None else sp[4])
        abs_g_src = "given" if abs_g is not None else ""
        if abs_g is None and row >= 0 and LUMINOSITY_COLUMN in self.data.numeric_columns:
            v = float(self.data.column(LUMINOSITY_COLUMN)[row])
            if np.isfinite(v):
                abs_g, abs_g_src = v, f"catalogue {LUMINOSITY_COLUMN} of {self.data.star_ids[row]}"
        embedder = self.data.embedder()
        vecs = embedder.embed_single(light_curve=None if lc is None else lc[:2],
                                     spectrum=None if sp is None else sp[:3],
                                     rv_kms=0.0 if sp is None else float(sp[3]), abs_g=abs_g)
        vec = vecs.get(self.index_name)
        if vec is None or not np.isfinite(np.asarray(vec)).all():
            raise UserInputError(f"the upload has no {EMBEDDING_LABELS.get(self.index_name)} embedding "
                                 f"(a light-curve index needs a light curve, a spectrum index a spectrum)")
        self.session.target_vector = {"light_curve": None if lc is None else lc[:2], "spectrum": sp}
        names = [n for _, n in ([light_curve] if isinstance(light_curve, tuple) else (light_curve or []))]
        if spectrum is not None:
            names.append(spectrum[1])
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        upload = {"files": names, "n_quarters": 0 if lc is None else len(names) - (spectrum is not None),
                  "matched_row": row, "matched_by": how,
                  "matched_star": self.data.star_ids[row] if row >= 0 else "",
                  "abs_g": abs_g, "abs_g_source": abs_g_src or "none (luminosity channel empty)",
                  "predictions": embedder.predict(vecs), "periods": _upload_periods(lc)}
        positions = self.data.place_on_maps(vecs, row)
        return self._run(np.asarray(vec, np.float32), -1, f"upload ({shown})", positions=positions, upload=upload)

    def restore_target(self, star_id: str):
        """Re-run the search for a target named in the URL (a star id); uploads are not restorable."""
        if star_id and not star_id.startswith("upload"):
            self.search_star(star_id)

    def clear(self):
        self.session.target_vector = None
        self.session.set_neighbours(-1, "", None)

    # --- widgets ------------------------------------------------------------------------------------
    def _guard(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except UserInputError as e:
            self.session.notify(str(e), "warning")
        except Exception as e:
            log.exception("search failed")
            self.session.notify(f"search failed: {type(e).__name__}: {e}", "danger")

    def _upload_clicked(self, _):
        refused = {**self._lc_file.refused, **self._spec_file.refused}
        if refused:
            name, why = next(iter(refused.items()))
            self.session.notify(f"{name}: refused ({why}); remove it and choose a smaller file", "warning")
            return
        lcs, sps = self._lc_file.files(), self._spec_file.files()
        self._guard(self.search_upload, lcs[0] if len(lcs) == 1 else (lcs or None), sps[0] if sps else None)

    def upload_summary(self) -> pd.DataFrame:
        """What the page shows about the last upload: its match in the catalogue, the M_G its luminosity
        channel read, its measured periods, its place on the maps and the model's predicted properties."""
        from desa_core.models.inference import PREDICTION_LABELS
        up = self.session.upload
        if not up:
            return pd.DataFrame()
        rows = [("catalogue match", f"{up['matched_star']} (by {up['matched_by']})" if up["matched_row"] >= 0
                 else "none (not in this survey)"),
                ("M_G for the luminosity channel", "–" if up["abs_g"] is None else
                 f"{up['abs_g']:.3f} ({up['abs_g_source']})"),
                ("light-curve quarters", str(up["n_quarters"]))]
        p = up.get("periods") or {}
        if p:
            rows.append(("P_rot, ACF (peak height)", "–" if not np.isfinite(p["prot_acf_days"]) else
                         f"{p['prot_acf_days']:.3g} d ({p['prot_acf_lph']:.2f})"
                         + ("" if p["rotation_detected"] else ", not a detection")))
            rows.append(("P_rot, Lomb-Scargle (power)", "–" if not np.isfinite(p["prot_ls_days"]) else
                         f"{p['prot_ls_days']:.3g} d ({p['prot_ls_power']:.2f})"))
        where = self.session.target_positions
        rows.append(("placed on", ", ".join(sorted(where)) if where else "no map"))
        pred = up.get("predictions") or {}
        for col, label in PREDICTION_LABELS.items():
            if col in pred and col not in ("age_pred_lo_gyr", "age_pred_hi_gyr"):
                v = pred[col]
                txt = "–" if not np.isfinite(v) else f"{v:.3g}"
                if col == "age_pred_gyr" and np.isfinite(v):
                    txt += f" [{pred['age_pred_lo_gyr']:.3g}, {pred['age_pred_hi_gyr']:.3g}]"
                rows.append((f"predicted: {label}", txt))
        return pd.DataFrame(rows, columns=["upload", "value"])

    def _refresh_outputs(self, *_):
        summary = self.upload_summary()
        self._upload_table.value = summary
        self._upload_table.visible = len(summary) > 0
        nb = self.session.neighbours
        if nb is not None:
            shown = nb.drop(columns=["row"])
            floats = shown.select_dtypes("float").columns
            shown[floats] = shown[floats].round(4)
            self._table.value = shown
        else:
            self._table.value = pd.DataFrame()
        self._table.visible = nb is not None
        self._previews.object = self._preview_plot()

    def _preview_plot(self):
        """Light curves and spectra of the target and the first neighbours, offset for readability."""
        nb = self.session.neighbours
        curves_lc, curves_sp = [], []
        entries = []
        if self.session.target_row >= 0:
            entries.append(("target " + self.data.star_ids[self.session.target_row], self.session.target_row))
        elif self.session.target_vector:
            tv = self.session.target_vector
            if tv.get("light_curve") is not None:
                t, f = _bin_series(*tv["light_curve"])
                curves_lc.append(hv.Curve((t, f), "time [d]", "relative flux + offset", label="upload"))
            if tv.get("spectrum") is not None:
                w, f = tv["spectrum"][0], tv["spectrum"][1]
                w, f = _bin_series(np.asarray(w), np.asarray(f) / np.nanmedian(f), 2000)
                curves_sp.append(hv.Curve((w, f), "wavelength [A]", "normalised flux + offset", label="upload"))
        if nb is not None:
            for _, r in nb.head(PREVIEW_NEIGHBOURS).iterrows():
                entries.append((f"#{r['rank']} {r['star_id']}", int(r["row"])))
        offset = len(curves_lc)
        for label, row in entries:
            lc = self.data.light_curve(row)
            if lc is not None:
                t, f = _bin_series(np.asarray(lc[0], float), np.asarray(lc[1], float))
                curves_lc.append(hv.Curve((t, f - np.nanmedian(f) + 1 + 0.02 * offset), "time [d]",
                                          "relative flux + offset", label=label))
                offset += 1
        offset = len(curves_sp)
        for label, row in entries:
            sp = self.data.spectrum(row)
            if sp is not None:
                w, f, iv = sp
                f = np.where(np.asarray(iv) > 0, f, np.nan)
                w, f = _bin_series(np.asarray(w, float), np.asarray(f, float) / np.nanmedian(f), 2000)
                curves_sp.append(hv.Curve((w, f + 0.8 * offset), "wavelength [A]", "normalised flux + offset",
                                          label=label))
                offset += 1
        if self.data.survey() is None and not self.session.target_vector:
            return hv.Div("<i>No light curves or spectra to preview: this artifact set has no survey store "
                          "(synthetic benchmark sets have none).</i>").opts(width=700, height=40)
        opts = dict(width=520, height=260, show_legend=True, legend_position="right")
        lc_plot = hv.Overlay(curves_lc or [hv.Curve([], "time [d]", "relative flux")]).opts(
            title="Light curves (target, nearest neighbours)", **opts)
        sp_plot = hv.Overlay(curves_sp or [hv.Curve([], "wavelength [A]", "flux")]).opts(
            title="Spectra (target, nearest neighbours)", **opts)
        return lc_plot + sp_plot

    def __panel__(self):
        example = self.data.star_ids[0] if self.data.n else "KIC 10000001"  # an id this artifact set really has
        id_input = pn.widgets.TextInput.from_param(self.param.star_id, label="Star id", placeholder=f"e.g. {example}")
        id_btn = pn.widgets.Button(label="Search by id", color="primary")
        id_btn.on_click(lambda e: self._guard(self.search_star))
        pos_input = pn.widgets.TextInput.from_param(self.param.sky_position, label="Sky position (ICRS)",
                                                    placeholder="291.04 42.51  or  19:24:09.6 +42:30:36")
        radius = pn.widgets.FloatInput.from_param(self.param.radius_arcsec, label="Match radius [arcsec]", width=140)
        pos_btn = pn.widgets.Button(label="Search by position", color="primary")
        pos_btn.on_click(lambda e: self._guard(self.search_position))
        up_btn = pn.widgets.Button(label="Embed upload and search", color="primary")
        up_btn.on_click(self._upload_clicked)
        opts = pn.Row(pn.widgets.IntInput.from_param(self.param.k, label="k", width=90),
                      pn.widgets.Select.from_param(self.param.index_name, label="Index", width=160),
                      pn.widgets.Select.from_param(self.param.restrict, label="Search within", width=200))
        help_ = pn.pane.Markdown("Click a star on any map to use it as the target.", margin=(0, 10))
        return pn.Column(
            opts,
            pn.Row(id_input, id_btn, pos_input, radius, pos_btn),
            pn.Row(self._lc_file, self._spec_file, up_btn),
            help_, self._upload_table, self._table, self._previews)
