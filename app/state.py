"""State of the dashboard: one read-only :class:`AppData` per server process, one :class:`Session` per visitor.

``AppData`` is the heavy part (star table, memory-mapped embeddings and FAISS indexes, the survey store for
light-curve and spectrum previews, the model for live embedding of uploads). It is loaded once per process by
:func:`load_app_data` and shared by every session: nothing in it is ever written after loading, so threads
may read it concurrently.

``Session`` is what one browser tab owns: the current selection (a boolean mask over the star rows), named
populations (masks), the similarity-search target and its neighbours, the colour column and a probe
prediction. Per-session state is kept to masks and small tables, so a second visitor costs a few MB, not a
copy of the catalogue.

The selection is also described by a *spec*: a JSON list of steps (``["new", "box", "umap", x0, x1, y0,
y1]``, ``["add", "query", "prot_days < 7"]``, ``["and", "ids", [...]]``, ``["new", "group", [...steps]]``)
that the mask is recomputed from. The spec is what the page URL carries, so a view can be shared and
restored exactly.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import param

from app.expressions import ExpressionError, Schema, compile_expression
from app.pixels import PixelIndex, in_box
from desa_core.artifacts import ADDED_COLUMN
from desa_core.columns import StarTable, embedded_column

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapSpec:
    """One 2-D map of the stars: which columns, axis labels, which axis runs backwards, and what the columns
    are (``source``: the embedding a layout was made from, or 'observed' / 'true' / 'catalogue' values)."""

    key: str
    title: str
    x: str
    y: str
    x_label: str
    y_label: str
    invert_x: bool = False
    invert_y: bool = False
    source: str = ""


# Every map the page can draw, with the columns it prefers first. The UMAP slot shows one of the three layouts
# (a switch); the CMD and HR diagram use survey-like observed columns where the star table has them (what a
# real survey measures) and fall back to the catalogue's own (the simulator's true values).
MAP_CHOICES: dict[str, list[MapSpec]] = {
    "umap": [MapSpec("umap", "UMAP of the DESA embedding", "umap_x", "umap_y", "UMAP 1", "UMAP 2", source="desa")],
    "umap_lc": [MapSpec("umap_lc", "UMAP of the light-curve embedding", "umap_lc_x", "umap_lc_y", "UMAP 1",
                        "UMAP 2", source="light_curve")],
    "umap_spec": [MapSpec("umap_spec", "UMAP of the spectrum embedding", "umap_spec_x", "umap_spec_y", "UMAP 1",
                          "UMAP 2", source="spectrum")],
    "cmd": [MapSpec("cmd", "Colour-magnitude diagram (observed, de-reddened)", "bp_rp0", "abs_g0",
                    "(BP - RP)0 [mag]", "M_G,0 [mag]", invert_y=True, source="observed"),
            MapSpec("cmd", "Colour-magnitude diagram (true values)", "bp_rp", "abs_g", "BP - RP [mag]",
                    "M_G [mag]", invert_y=True, source="true")],
    "hr": [MapSpec("hr", "Hertzsprung-Russell diagram (observed)", "teff_obs", "log_lum_obs", "Teff [K]",
                   "log L [L_sun]", invert_x=True, source="observed"),
           MapSpec("hr", "Hertzsprung-Russell diagram (true values)", "teff", "log_lum", "Teff [K]",
                   "log L [L_sun]", invert_x=True, source="true")],
}
UMAP_VIEWS = ("umap", "umap_lc", "umap_spec")
# The default maps (the columns a star table always has): what code without an AppData refers to.
MAPS = {k: v[-1] for k, v in MAP_CHOICES.items() if k in ("umap", "cmd", "hr")}


def choose_maps(stars: StarTable, simulated: bool = True) -> dict[str, MapSpec]:
    """The maps a star table can draw: for each key the first choice whose two columns exist and are finite
    for at least one star. A real survey's own columns are catalogue values, not a simulator's truth."""
    out = {}
    for key, choices in MAP_CHOICES.items():
        for spec in choices:
            if spec.x in stars and spec.y in stars and stars.kind(spec.x) == stars.kind(spec.y) == "numeric" and \
                    _any_finite_pair(stars.numeric(spec.x), stars.numeric(spec.y)):
                if spec.source == "true" and not simulated:
                    spec = dataclasses.replace(spec, title=spec.title.replace("(true values)", "(catalogue)"),
                                               source="catalogue")
                out[key] = spec
                break
    return out


class MapGrid:
    """The stars of one map bucketed into a ``g`` x ``g`` grid over its default range (stars beyond it go to the
    border cells): their rows sorted by cell (int32) and where each cell starts. 10^7 stars cost 40 MB and
    well under a second to build, where a kd-tree cost ~480 MB and ~4 s per map.

    :meth:`nearest` visits rings of cells around the cursor's cell, nearest first, and stops once a ring
    cannot hold a star nearer (in screen pixels) than the best found, or lies beyond ``max_px``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, x_range, y_range, g: int = 255, chunk: int = 1 << 22):
        self.x, self.y, self.g = x, y, int(g)
        self.x0, self.y0 = float(x_range[0]), float(y_range[0])
        self.cw = max(float(x_range[1]) - self.x0, 1e-12) / self.g
        self.ch = max(float(y_range[1]) - self.y0, 1e-12) / self.g
        n = len(x)
        if self.g * self.g + 1 > np.iinfo(np.uint16).max:
            raise ValueError(f"a grid of {self.g}^2 cells does not fit 16-bit cell numbers")
        # 16-bit cell numbers: numpy sorts them by radix, O(n) (at 10^7 stars ~0.2 s; an int32 argsort took ~1 s)
        cell = np.empty(n, np.uint16)
        for i in range(0, n, chunk):
            cx, cy = np.asarray(x[i:i + chunk]), np.asarray(y[i:i + chunk])
            c = self._cells(cx, cy)
            c[~(np.isfinite(cx) & np.isfinite(cy))] = self.g * self.g   # no position: a bucket never visited
            cell[i:i + chunk] = c
        order = np.argsort(cell, kind="stable")
        self.rows = order.astype(np.int32 if n < 2**31 else np.int64)
        counts = np.bincount(cell, minlength=self.g * self.g + 1)[:self.g * self.g]   # without the no-position bucket
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        for a in (self.rows, self.starts):
            a.setflags(write=False)

    def _cells(self, x, y) -> np.ndarray:
        """Cell numbers (uint16) of positions; a NaN position gets some cell (callers mark those)."""
        g = self.g
        with np.errstate(invalid="ignore"):
            cx = np.clip((np.asarray(x, np.float32) - np.float32(self.x0)) * np.float32(1 / self.cw), 0, g - 1)
            cy = np.clip((np.asarray(y, np.float32) - np.float32(self.y0)) * np.float32(1 / self.ch), 0, g - 1)
            cx = np.nan_to_num(cx, copy=False).astype(np.uint16)    # truncation = floor for values >= 0
            cy = np.nan_to_num(cy, copy=False).astype(np.uint16)
        return cy * np.uint16(g) + cx

    def _ring(self, cx: int, cy: int, r: int) -> np.ndarray:
        g = self.g
        lo_x, hi_x, lo_y, hi_y = max(cx - r, 0), min(cx + r, g - 1), max(cy - r, 0), min(cy + r, g - 1)
        cells = []
        for yy in range(lo_y, hi_y + 1):
            if r == 0 or yy in (cy - r, cy + r):             # a full row of the ring
                cells.append((yy * g + lo_x, yy * g + hi_x + 1))
            else:                                             # its two side cells
                for xx in (cx - r, cx + r):
                    if 0 <= xx < g:
                        cells.append((yy * g + xx, yy * g + xx + 1))
        parts = [self.rows[self.starts[a]:self.starts[b]] for a, b in cells]
        return np.concatenate(parts) if parts else np.zeros(0, self.rows.dtype)

    def nearest(self, x: float, y: float, sx: float, sy: float, max_px: float) -> int:
        """Row of the star nearest (x, y) in screen pixels (``sx``, ``sy``: data units per pixel) within
        ``max_px`` pixels, or -1."""
        c = int(self._cells([x], [y])[0])
        cx, cy = c % self.g, c // self.g
        # rings whose every cell is farther than max_px cannot matter (inside the grid's range)
        r_max = int(np.ceil(max(max_px * sx / self.cw, max_px * sy / self.ch))) + 1
        best_row, best_px = -1, float(max_px)
        inside = self.x0 <= x <= self.x0 + self.g * self.cw and self.y0 <= y <= self.y0 + self.g * self.ch
        for r in range(0, min(r_max, self.g) + 1):
            if r > 0 and inside:
                # the nearest a star of ring r can be: (r - 1) cells away along one axis
                bound = min((r - 1) * self.cw / sx, (r - 1) * self.ch / sy)
                if bound > best_px:
                    break
            cand = self._ring(cx, cy, r)
            if not len(cand):
                continue
            px = np.hypot((np.asarray(self.x[cand], np.float64) - x) / sx,
                          (np.asarray(self.y[cand], np.float64) - y) / sy)
            k = int(np.argmin(px))
            if px[k] <= best_px:
                best_row, best_px = int(cand[k]), float(px[k])
        return best_row


def _any_finite_pair(x: np.ndarray, y: np.ndarray, chunk: int = 1 << 20) -> bool:
    for i in range(0, len(x), chunk):   # a chunk at a time: usually the first one answers
        if (np.isfinite(x[i:i + chunk]) & np.isfinite(y[i:i + chunk])).any():
            return True
    return False


EMBEDDING_LABELS = {"desa": "joint (DESA)", "light_curve": "light curve only", "spectrum": "spectra only"}

# Columns shown next to a star in tables (neighbours, selections), in this order, when present.
KEY_COLUMNS = ["star_id", "teff", "logg", "feh", "prot_days", "prot_acf_days", "age_gyr", "age_pred_gyr", "p_binary",
               "binary_class", "ruwe", "bp_rp0", "abs_g0", "bp_rp", "abs_g", "delta_mag_ms_obs", "delta_mag_ms", "ra",
               "dec"]
# Bookkeeping columns that are never offered as a colour or probe target.
INTERNAL_COLUMNS = {"lc_row", "spec_row", "umap_x", "umap_y", "umap_lc_x", "umap_lc_y", "umap_spec_x", "umap_spec_y",
                    "row"}

MAX_COLOUR_CATEGORIES = 20
HISTOGRAM_BINS = 40        # cross-filter histograms
CLUSTER_SAMPLE = 20_000    # stars a Regions clustering is fitted on
MIN_CLUSTERS, MAX_CLUSTERS = 2, 12
POPULATION_COLOUR, PROBE_CLASS_COLOUR, CLUSTER_COLOUR = "population membership", "probe class", "cluster"
# A fixed colour key: class i of a column always gets colour i (Tableau 20, dark shades first).
PALETTE20 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
             "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5",
             "#dbdb8d", "#c7c7c7")


def palette(k: int) -> tuple[str, ...]:
    return PALETTE20[:k]


@dataclass
class Colouring:
    """How the maps are coloured: 'density' (log counts), 'numeric' (mean of ``values`` per pixel) or
    'categorical' (``values`` are int16 class codes, -1 = none; one colour per class, mixed per pixel)."""
    name: str
    kind: str
    values: np.ndarray | None = None
    categories: tuple = ()
    colours: tuple = ()
    label: str = ""
    version: int = 0

    @property
    def key(self) -> tuple:
        return (self.name, self.kind, self.version)
SHARED_RASTERS = 64   # all-stars map layers kept per process (each ~1 MB)
RETRY_S = 30.0   # a failed survey-store or model load is retried after this long


class UserInputError(ValueError):
    """Bad input from the page (unknown star, unparsable coordinates, bad expression, broken upload).

    The dashboard shows the message in the page; the session and the server carry on."""


# --------------------------------------------------------------------------------------------------------
# Shared, per-process data
# --------------------------------------------------------------------------------------------------------

class AppData:
    """Read-only data of one artifact set, shared by all sessions of a server process."""

    def __init__(self, artifacts):
        self.artifacts = artifacts
        self.path = Path(getattr(artifacts, "path", "."))
        self.manifest: dict = dict(artifacts.manifest)
        t0 = time.perf_counter()
        # The star table, memory-mapped column by column (desa_core.columns): at 10^7 stars nothing is read
        # until a view needs it.
        self.stars: StarTable = artifacts.star_table()
        self.n = self.stars.n
        self.star_ids = self.stars.ids          # star_ids[row] -> str, star_ids[rows] -> array of str
        self.numeric_columns: list[str] = []
        self.categorical_columns: list[str] = []
        self.boolean_columns: list[str] = []
        for c in self.stars.columns:
            if c == "star_id" or c in INTERNAL_COLUMNS:
                continue
            {"boolean": self.boolean_columns, "numeric": self.numeric_columns,
             "categorical": self.categorical_columns}.get(self.stars.kind(c), []).append(c)
        # What population expressions may name (app/expressions.py): numeric, boolean, categorical columns.
        self.schema = Schema(numeric=set(self.numeric_columns), boolean=set(self.boolean_columns),
                             categories={c: self.stars.categories(c) for c in self.categorical_columns})
        self._columns: dict[str, np.ndarray] = {}
        self._expr_columns: dict[str, np.ndarray] = {}
        self._limits: dict[str, tuple[float, float]] = {}
        self._ranges: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
        self._embeddings: dict[str, np.ndarray] = {}
        self._has_embedding: dict[str, np.ndarray] = {}
        self._indexes: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._sky = None
        self._grids: dict = {}
        self._grid_lock = threading.Lock()
        self._pixels: dict = {}
        self._rasters: "OrderedDict[tuple, Any]" = OrderedDict()   # all-stars map layers shared by sessions
        self._contours: dict = {}
        self._bins: dict = {}
        self._clusters: dict = {}
        self._cluster_lock = threading.Lock()
        self._survey = None
        self._survey_rows = None
        self._added = None    # stores `desa add` appended: [(SurveyStore, star-id index)], opened on first use
        self._survey_error: tuple[float, str] | None = None     # (when, why): retried after RETRY_S
        self._embedder = None
        self._embedder_error: tuple[float, str] | None = None   # (when, why): retried after RETRY_S
        self._embedder_lock = threading.Lock()   # a model load must not hold the lock every search takes
        self.embedding_names = [k for k in ("desa", "light_curve", "spectrum")
                                if k in (self.manifest.get("embeddings") or {})]
        self.maps = choose_maps(self.stars, self.is_simulated)
        for m in self.maps.values():  # the map coordinates are needed by every session: load them now
            self.column(m.x), self.column(m.y), self.default_range(m.key)
        # Every file of the set is opened now (embeddings and Flat/HNSW indexes memory-mapped, so this is cheap):
        # a precompute re-run in place replaces files by rename, and what is open here keeps the old contents,
        # so this AppData never pairs this build's star table with another build's embeddings.
        if hasattr(self.artifacts, "index"):
            for name in self.embedding_names:
                self.embedding(name)
                if name in (self.manifest.get("indexes") or {}):
                    self.index(name)
        log.info("loaded artifact set %s: %d stars, embeddings %s (%.1f s)", self.path, self.n,
                 self.embedding_names, time.perf_counter() - t0)

    # --- description --------------------------------------------------------------------------------
    @property
    def is_simulated(self) -> bool:
        return bool(getattr(self.artifacts, "is_simulated", self.manifest.get("simulated", False)))

    @property
    def is_synthetic_benchmark(self) -> bool:
        return bool(getattr(self.artifacts, "is_synthetic_benchmark",
                            self.manifest.get("kind") == "synthetic-benchmark"))

    def describe(self) -> dict:
        run = self.manifest.get("run") or {}
        survey = self.manifest.get("survey") or {}
        return {"artifacts": str(self.path), "kind": self.manifest.get("kind", "survey"),
                "simulated": self.is_simulated, "n_stars": self.n,
                "survey": survey.get("path"), "run": run.get("path"),
                "model_config": run.get("config"), "model_fingerprint": run.get("fingerprint"),
                "model_objective": run.get("objective"),
                "embeddings": self.embedding_names}

    def map_title(self, key: str) -> str:
        """A map's title; the UMAP one says when precompute laid the stars out another way (too few stars)."""
        info = ((self.manifest.get("maps") or {}).get(key) or {})
        spec = self.maps[key]
        if key in UMAP_VIEWS and info.get("method") == "pca":
            return spec.title.replace("UMAP of", "2-D layout (PCA: too few stars for UMAP) of")
        return spec.title

    # --- columns ------------------------------------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        """A numeric or boolean column as float32 (NaN where unknown), cached and shared."""
        arr = self._columns.get(name)
        if arr is None:
            if name not in self.stars:
                raise UserInputError(f"no column {name!r} in the star table")
            if self.stars.kind(name) not in ("numeric", "boolean"):
                raise UserInputError(f"column {name!r} is not numeric")
            arr = self.stars.numeric(name)   # memory-mapped when stored as float32
            self._columns[name] = arr
        return arr

    @property
    def colour_columns(self) -> list[str]:
        return self.numeric_columns + self.boolean_columns

    def colour_limits(self, name: str) -> tuple[float, float]:
        """1st-99th percentile of a column: colour scale shared by every layer and session."""
        if name not in self._limits:
            v = self.column(name)
            v = v[np.isfinite(v)]
            if len(v) > 200_000:
                v = v[np.random.default_rng(0).integers(0, len(v), 200_000)]
            lo, hi = (np.percentile(v, [1, 99]) if len(v) else (0.0, 1.0))
            if not hi > lo:
                lo, hi = float(lo) - 0.5, float(lo) + 0.5
            self._limits[name] = (float(lo), float(hi))
        return self._limits[name]

    def default_range(self, key: str):
        """(x_range, y_range) showing 99.8% of the stars on a map, with a margin."""
        if key not in self._ranges:
            m = self.maps[key]
            out = []
            for c in (m.x, m.y):
                v = self.column(c)
                v = v[np.isfinite(v)]
                if len(v) > 200_000:
                    v = v[np.random.default_rng(1).integers(0, len(v), 200_000)]
                lo, hi = (np.percentile(v, [0.1, 99.9]) if len(v) else (0.0, 1.0))
                pad = 0.04 * (hi - lo) if hi > lo else 0.5
                out.append((float(lo - pad), float(hi + pad)))
            self._ranges[key] = (out[0], out[1])
        return self._ranges[key]

    # --- map geometry (hover, click, contours) --------------------------------------------------------
    def _map_grid(self, key: str) -> "MapGrid":
        """The star grid of one map (hover and click find stars through it), built once per process."""
        hit = self._grids.get(key)
        if hit is not None:
            return hit
        m = self.maps[key]
        x, y, ranges = self.column(m.x), self.column(m.y), self.default_range(key)
        with self._grid_lock:   # not the lock searches and column reads take: a build lasts ~1 s at 10^7 stars
            hit = self._grids.get(key)
            if hit is None:
                hit = self._grids[key] = MapGrid(x, y, *ranges)
            return hit

    def map_pixels(self, key: str, width: int, height: int) -> PixelIndex:
        """Every star's pixel on map ``key`` at its default view in a ``width`` x ``height`` frame
        (:class:`app.pixels.PixelIndex`: the maps' rasters there are counts of them), built once per process
        (at 10^7 stars ~0.1 s and 40 MB per map)."""
        hit = self._pixels.get((key, width, height))
        if hit is not None:
            return hit
        m = self.maps[key]
        x, y, (xr, yr) = self.column(m.x), self.column(m.y), self.default_range(key)
        with self._grid_lock:
            hit = self._pixels.get((key, width, height))
            if hit is None:
                hit = self._pixels[(key, width, height)] = PixelIndex(x, y, xr, yr, width, height)
            return hit

    def shared_raster(self, key: tuple, compute):
        """The all-stars layer of a map for a colouring every session sees alike (density, a catalogue column),
        computed once per process per view and colouring (an LRU of SHARED_RASTERS entries): at 10^7 stars each
        costs ~0.1 s, and every new session opening the page at the default view would pay it for each map."""
        with self._lock:
            hit = self._rasters.get(key)
            if hit is not None:
                self._rasters.move_to_end(key)
                return hit
        value = compute()
        if isinstance(value, np.ndarray):
            value.setflags(write=False)   # shared by every session: nobody may draw on it
        with self._lock:
            self._rasters[key] = value
            while len(self._rasters) > SHARED_RASTERS:
                self._rasters.popitem(last=False)
        return value

    def nearest_star(self, key: str, x: float, y: float, x_range, y_range, width: int, height: int,
                     max_px: float) -> int:
        """Row of the star nearest (x, y) on map ``key`` within ``max_px`` screen pixels of a ``width`` x
        ``height`` frame showing ``x_range`` x ``y_range``, or -1. A search of the map's grid outward from the
        cursor's cell (:class:`MapGrid`), so its cost does not grow with the star count."""
        if not (np.isfinite(x) and np.isfinite(y)):
            return -1
        sx = abs(x_range[1] - x_range[0]) / width or 1e-12
        sy = abs(y_range[1] - y_range[0]) / height or 1e-12
        return self._map_grid(key).nearest(x, y, sx, sy, max_px)

    def density_contours(self, key: str, fractions=(0.5, 0.8, 0.95), bins: int = 160) -> list[np.ndarray]:
        """Paths (arrays of (x, y)) of the smoothed star density on map ``key`` at the levels that enclose the
        given fractions of the stars (highest-density regions), computed once per process."""
        with self._lock:
            if key in self._contours:
                return self._contours[key]
        import contourpy
        from scipy.ndimage import gaussian_filter
        m = self.maps[key]
        x, y = self.column(m.x), self.column(m.y)
        ok = np.isfinite(x) & np.isfinite(y)
        (x0, x1), (y0, y1) = self.default_range(key)
        paths: list[np.ndarray] = []
        if ok.sum() >= 10:
            h, xe, ye = np.histogram2d(x[ok], y[ok], bins=bins, range=[[x0, x1], [y0, y1]])
            h = gaussian_filter(h, 2.0)
            flat = np.sort(h.ravel())[::-1]
            cum = np.cumsum(flat) / max(flat.sum(), 1e-12)
            gen = contourpy.contour_generator(0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1]), h.T)
            for f in fractions:
                level = float(flat[min(np.searchsorted(cum, f), len(flat) - 1)])
                if level > 0:
                    paths += [p for p in gen.lines(level) if len(p) >= 3]
        with self._lock:
            self._contours[key] = paths
        return paths

    # --- cross-filter histograms and clusters ------------------------------------------------------------
    def histogram_bins(self, name: str, bins: int = HISTOGRAM_BINS):
        """(edges, bin of each star (``bins`` = unknown or off the edges), log10 axis?) of a column, computed once
        per process: a histogram of any selection is then one ``bincount``. Edges span the 0.5-99.5th
        percentiles; a positive column spanning more than a factor 30 is binned in log10."""
        with self._lock:
            if name in self._bins:
                return self._bins[name]
        v = self.column(name)
        fin = v[np.isfinite(v)]
        if len(fin) > 200_000:
            fin = fin[np.random.default_rng(0).integers(0, len(fin), 200_000)]
        lo, hi = (np.percentile(fin, [0.5, 99.5]) if len(fin) else (0.0, 1.0))
        lo, hi = float(lo), float(hi)
        log_axis = bool(lo > 0 and hi / lo > 30)
        if log_axis:
            edges = np.logspace(np.log10(lo), np.log10(hi), bins + 1)
        else:
            edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        idx = np.full(self.n, bins, np.int16)
        for i in range(0, self.n, 1 << 20):
            c = v[i:i + (1 << 20)]
            b = np.searchsorted(edges, c, side="right") - 1
            b[c == edges[-1]] = bins - 1
            b[~((b >= 0) & (b < bins))] = bins
            idx[i:i + len(c)] = b
        idx.setflags(write=False)
        out = (edges, idx, log_axis)
        with self._lock:
            self._bins[name] = out
        return out

    def histogram(self, name: str, rows_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) of column ``name`` over all stars, or over the stars of a boolean mask."""
        edges, idx, _ = self.histogram_bins(name)
        sel = idx if rows_mask is None else idx[rows_mask]
        return edges, np.bincount(sel, minlength=len(edges))[:len(edges) - 1]

    def clusters(self, name: str, k: int) -> np.ndarray:
        """Gaussian-mixture clusters (int16 per star, -1 without this embedding, clusters ordered by size) of the
        ``name`` embedding: unit-normalised vectors, PCA to 10 dimensions, a k-component full-covariance GMM fitted
        on at most 20,000 stars (fixed seed) and applied to all in chunks. Deterministic for an artifact set,
        computed once per process and shared; the cost is bounded by the sample size and k <= 12."""
        if not (MIN_CLUSTERS <= int(k) <= MAX_CLUSTERS):
            raise UserInputError(f"the number of clusters is {MIN_CLUSTERS} to {MAX_CLUSTERS}")
        key = (name, int(k))
        with self._cluster_lock:   # one fit per key; not the lock searches take
            if key in self._clusters:
                return self._clusters[key]
            from sklearn.decomposition import PCA
            from sklearn.mixture import GaussianMixture
            emb = self.embedding(name)
            rows = np.flatnonzero(self.has_embedding(name))
            if len(rows) < 5 * k:
                raise UserInputError(f"{len(rows)} stars have a {name} embedding: too few for {k} clusters")
            rng = np.random.default_rng(0)
            sample = rows if len(rows) <= CLUSTER_SAMPLE else np.sort(rng.choice(rows, CLUSTER_SAMPLE, replace=False))

            def unit(a):
                a = np.asarray(a, np.float64)
                return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

            x = unit(emb[sample])
            pca = PCA(n_components=min(10, x.shape[1], len(x) - 1), random_state=0).fit(x)
            gmm = GaussianMixture(int(k), covariance_type="full", random_state=0, reg_covar=1e-5,
                                  max_iter=200).fit(pca.transform(x))
            labels = np.full(self.n, -1, np.int16)
            for i in range(0, len(rows), 1 << 17):
                r = rows[i:i + (1 << 17)]
                labels[r] = gmm.predict(pca.transform(unit(emb[r])))
            order = np.argsort(-np.bincount(labels[rows], minlength=int(k)), kind="stable")
            remap = np.empty(int(k), np.int16)
            remap[order] = np.arange(int(k), dtype=np.int16)
            labels[rows] = remap[labels[rows]]
            labels.setflags(write=False)
            self._clusters[key] = labels
            log.info("clustered the %s embedding into %d (%d stars)", name, k, len(rows))
            return labels

    # --- stars --------------------------------------------------------------------------------------
    def rows_of(self, star_ids) -> np.ndarray:
        """Row positions of star ids; raises UserInputError naming unknown ids."""
        ids = [str(s).strip() for s in np.atleast_1d(star_ids)]
        rows = self.stars.rows_of(ids)
        if (rows < 0).any():
            bad = [i for i, r in zip(ids, rows) if r < 0][:5]
            raise UserInputError(f"unknown star id(s): {', '.join(bad)}")
        return rows.astype(np.int64)

    def row_of(self, star_id: str) -> int:
        if not str(star_id).strip():
            raise UserInputError("enter a star id")
        return int(self.rows_of([star_id])[0])

    def match_upload(self, kepler_id=None, obsid=None) -> tuple[int, str]:
        """(row, how) of the catalogue star an upload belongs to: by KEPLERID (the ``kic`` column, or a star id
        ``KIC n``), else by the spectrum's OBSID (``obsid`` / ``spectrum_obsid``); (-1, '') when none."""
        if kepler_id is not None and int(kepler_id) > 0:
            k = int(kepler_id)
            if "kic" in self.stars:
                hit = self.stars.find("kic", k)
                if len(hit):
                    return int(hit[0]), f"KEPLERID {k}"
            r = self.stars.rows_of([f"KIC {k}"])[0]
            if r >= 0:
                return int(r), f"KEPLERID {k}"
        if obsid:
            for col in ("obsid", "spectrum_obsid"):
                if col in self.stars:
                    hit = self.stars.find(col, str(obsid).strip())
                    if len(hit):
                        return int(hit[0]), f"OBSID {obsid}"
        return -1, ""

    def place_on_maps(self, vectors: dict, row: int = -1, k: int = 10) -> dict:
        """Positions of a new star (an upload) on every map: on a UMAP, the inverse-distance-weighted mean of
        the positions of its ``k`` nearest stars in that map's embedding (desa_core.index.idw_place, as
        precompute places the stars UMAP was not fitted on); on the CMD / HR diagram the catalogue values of
        its matched star ``row`` (none without a match). Map key -> (x, y)."""
        from desa_core.index import idw_place
        out = {}
        for key, m in self.maps.items():
            if key in UMAP_VIEWS:
                vec = vectors.get(m.source)
                if vec is None or not np.isfinite(np.asarray(vec)).all() or m.source not in self.embedding_names:
                    continue
                sims, rows = self.search(m.source, np.asarray(vec, np.float32)[None, :], k)
                sims = np.where(rows >= 0, sims, np.nan)
                xy = np.stack([self.column(m.x), self.column(m.y)], axis=1)[np.maximum(rows, 0)]
                pos = idw_place(sims, xy)[0]
            elif row >= 0:
                pos = np.array([self.column(m.x)[row], self.column(m.y)[row]])
            else:
                continue
            if np.isfinite(pos).all():
                out[key] = (float(pos[0]), float(pos[1]))
        return out

    def table(self, rows, columns=None) -> pd.DataFrame:
        """The star table at some rows (all columns, or the given ones)."""
        return self.stars.frame(np.asarray(rows, dtype=np.int64), columns)

    def key_columns(self) -> list[str]:
        return [c for c in KEY_COLUMNS if c in self.stars]

    def sky(self):
        """SkyCoord of every star (built on first use: only sky-position searches need it)."""
        with self._lock:
            if self._sky is None:
                from astropy.coordinates import SkyCoord
                if not ("ra" in self.stars and "dec" in self.stars):
                    raise UserInputError("this artifact set has no ra/dec columns")
                self._sky = SkyCoord(self.column("ra").astype(np.float64), self.column("dec").astype(np.float64),
                                     unit="deg")
            return self._sky

    # --- embeddings and indexes ----------------------------------------------------------------------
    def embedding(self, name: str) -> np.ndarray:
        if name not in self.embedding_names:
            raise UserInputError(f"this artifact set has no {name!r} embedding")
        with self._lock:
            if name not in self._embeddings:
                self._embeddings[name] = self.artifacts.embedding(name)
            return self._embeddings[name]

    def has_embedding(self, name: str) -> np.ndarray:
        """Rows whose embedding in this modality exists (NaN rows mark a missing light curve or spectrum).

        Read from the star table's ``embedded_<name>`` column that precompute writes (10 MB at 10^7 stars), else
        from the ids the FAISS index holds (reading them from an IVF file faults in most of it), else by scanning
        the embedding file."""
        with self._lock:
            if name not in self._has_embedding:
                ok = np.zeros(self.n, dtype=bool)
                col = embedded_column(name)
                n_defined = ((self.manifest.get("embeddings") or {}).get(name) or {}).get("n_defined")
                if n_defined is not None and int(n_defined) == self.n:
                    ok[:] = True                   # every star has it (the DESA embedding always)
                elif col in self.stars and self.stars.kind(col) == "boolean":
                    ok = np.asarray(self.stars.numeric(col)) == 1
                else:
                    try:
                        from desa_core.index import index_ids
                        ok[index_ids(self.index(name))] = True
                    except Exception:  # no index for it: scan the first column of the embedding instead
                        emb = self.embedding(name)
                        for i in range(0, self.n, 262_144):
                            ok[i:i + 262_144] = np.isfinite(np.asarray(emb[i:i + 262_144, 0]))
                ok.setflags(write=False)
                self._has_embedding[name] = ok
            return self._has_embedding[name]

    def index(self, name: str):
        with self._lock:
            if name not in self._indexes:
                if name not in (self.manifest.get("indexes") or {}):
                    raise UserInputError(f"this artifact set has no {name!r} index")
                self._indexes[name] = self.artifacts.index(name)
            return self._indexes[name]

    def touch_indexes(self, n_queries: int = 2000, batch: int = 100, n_queries_lists: int = 2):
        """Search random stars in every index once (in the background, after loading): the pages of a
        memory-mapped HNSW graph a query visits are faulted in here, not during a visitor's search
        (``n_queries``). An IVF index is only opened and its coarse quantizer touched (``n_queries_lists``): its
        lists are read where a query lands, and touching them all would make the whole file resident (2.5 GB at
        10^7 stars x 64 dimensions)."""
        t0 = time.perf_counter()
        rng = np.random.default_rng(1)
        try:
            for name in self.embedding_names:
                if name not in (self.manifest.get("indexes") or {}):
                    continue
                rows = np.flatnonzero(self.has_embedding(name))
                if not len(rows):
                    continue
                kind = str((self.manifest.get("indexes") or {}).get(name, {}).get("kind", ""))
                nq = n_queries_lists if kind in ("ivf", "ivfpq") else n_queries
                pick = np.sort(rng.choice(rows, min(nq, len(rows)), replace=False))
                emb = self.embedding(name)
                for i in range(0, len(pick), batch):
                    self.search(name, np.asarray(emb[pick[i:i + batch]], np.float32), 10)
            log.info("index pages touched in %.1f s", time.perf_counter() - t0)
        except Exception:   # only a warm-up: a failure shows up again, with its message, on a real search
            log.debug("index warm-up failed", exc_info=True)

    def search(self, name: str, queries: np.ndarray, k: int, subset_ids=None):
        """Cosine top-k over the ``name`` index: (similarities (nq, k), rows (nq, k); -1 where none)."""
        self.index(name)  # opened once under the lock, then shared
        return self.artifacts.search(name, queries, k, subset_ids=subset_ids)

    # --- expressions ---------------------------------------------------------------------------------
    def expression_column(self, name: str) -> np.ndarray:
        """A column as the expression sandbox reads it: float32 (numeric), bool (boolean, missing = False) or
        int16 category codes (categorical, -1 = missing), computed once and shared."""
        arr = self._expr_columns.get(name)
        if arr is None:
            if name in self.schema.categories:
                arr = self.stars.codes(name)   # int16 codes in the sorted categories' order, as the schema
            elif name in self.schema.boolean:
                arr = self.column(name) == 1
            else:
                return self.column(name)
            arr.setflags(write=False)
            self._expr_columns[name] = arr
        return arr

    def evaluate(self, expr: str) -> np.ndarray:
        """Boolean mask of the stars matching a population expression (bounded cost: app/expressions.py)."""
        try:
            return compile_expression(expr, self.schema).evaluate(self.expression_column, self.n)
        except ExpressionError as e:
            raise UserInputError(str(e)) from None

    # --- survey store (previews) and model (uploads) --------------------------------------------------
    def _failed_recently(self, err) -> bool:
        return err is not None and time.monotonic() - err[0] < RETRY_S

    def survey(self):
        """The SurveyStore behind the artifacts, or None (synthetic sets have none, or it is unusable: see
        :meth:`survey_problem`). The store must be the one the artifact set was built from: its manifest's
        sha256 is compared with the one precompute recorded before any of its arrays is shown."""
        with self._lock:
            if self._survey is None and not self._failed_recently(self._survey_error):
                problem = None
                try:
                    store = self.artifacts.survey_store()
                except Exception as e:  # a moved or deleted store must not take the dashboard down
                    store, problem = None, f"the survey store is unavailable: {e}"
                if store is None and problem is None:
                    problem = "this artifact set has no survey store (no light curves or spectra)"
                if store is not None:
                    from desa_core.data.store import sha256_file
                    want = (self.manifest.get("survey") or {}).get("manifest_sha256")
                    have = sha256_file(Path(store.path) / "manifest.json")
                    if want and have != want:
                        problem = (f"the survey store at {store.path} has changed since this artifact set was built "
                                   f"(manifest sha256 {have[:12]}, the artifact set recorded {want[:12]}): its light "
                                   f"curves and spectra are not shown; rerun `desa precompute`")
                        store = None
                if problem:
                    log.warning("%s", problem)
                    self._survey_error = (time.monotonic(), problem)
                else:
                    self._survey, self._survey_error = store, None
                    self._survey_rows = pd.Index(store.catalog["star_id"].astype(str).to_numpy())
            return self._survey

    def survey_problem(self) -> str | None:
        """Why no light curves or spectra are shown (None when the survey store is usable)."""
        return None if self.survey() is not None else (self._survey_error or (0, None))[1]

    def _store_row(self, row: int):
        """(store, row in it) holding the star at a row: the survey store, or a store ``desa add`` appended;
        (None, -1) when none has it."""
        sid = self.star_ids[row]
        s = self.survey()
        if s is not None:
            r = self._survey_rows.get_indexer([sid])[0]
            if r >= 0:
                return s, int(r)
        for store, ids in self.added_stores():
            r = ids.get_indexer([sid])[0]
            if r >= 0:
                return store, int(r)
        return None, -1

    def added_stores(self) -> list:
        """[(SurveyStore, star-id index)] of the stores ``desa add`` appended (opened once, checked)."""
        with self._lock:
            if self._added is None:
                self._added = [(st, pd.Index(st.catalog["star_id"].astype(str)))
                               for _, st in self.artifacts.added_stores()]
            return self._added

    def light_curve(self, row: int):
        """(time, flux) of the star at a row, or None."""
        store, r = self._store_row(row)
        return None if store is None else store.light_curve(r)

    def spectrum(self, row: int):
        """(wavelength, flux, ivar) of the star at a row, or None."""
        store, r = self._store_row(row)
        return None if store is None else store.spectrum(r)

    def embedder(self):
        """The model for live embedding of uploads; raises UserInputError saying why it is unavailable.

        The model at the run path must be the one that built this artifact set (same fingerprint), or
        uploads would land in another embedding space than the stars they are compared with. A failure is
        remembered for RETRY_S seconds, then tried again (a run being retrained becomes usable again)."""
        if self._embedder is not None:
            return self._embedder
        with self._embedder_lock:   # only uploads wait here; searches and selections never take this lock
            if self._embedder is None and not self._failed_recently(self._embedder_error):
                run = self.manifest.get("run") or {}
                run_path = getattr(self.artifacts, "run_path", None)
                problem = None
                if not run_path:
                    problem = "this artifact set has no model run, so uploads cannot be embedded"
                else:
                    try:
                        from desa_core.models.inference import Embedder
                        emb = Embedder.from_run(run_path, device="cpu")
                    except Exception as e:
                        problem = f"the model at {run_path} could not be loaded: {e}"
                    else:
                        want = str(run.get("fingerprint") or "")
                        if want and emb.fingerprint != want:
                            problem = (f"the model at {run_path} (fingerprint {emb.fingerprint[:12]}) is not the one "
                                       f"that built this artifact set (fingerprint {want[:12]}): it was retrained "
                                       f"since; uploads are refused until `desa precompute` is rerun with it")
                        else:
                            self._embedder = emb
                if problem:
                    log.warning("%s", problem)
                    self._embedder_error = (time.monotonic(), problem)
                else:
                    self._embedder_error = None
            if self._embedder is None:
                raise UserInputError(self._embedder_error[1])
            return self._embedder


_DATA: dict[str, "_Loaded"] = {}
_DATA_LOCK = threading.Lock()
RELOAD_CHECK_S = 2.0   # how often a new page looks whether precompute has finished a new build


@dataclass
class _Loaded:
    data: AppData
    signature: tuple
    checked: float


def _manifest_signature(folder: Path) -> tuple | None:
    try:
        st = (folder / "manifest.json").stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _limit_faiss_threads():
    """One OpenMP thread per FAISS query. The server runs sessions in its own threads; OpenMP teams on top
    of them oversubscribe the cores and spin: on 2 busy cores a 10^6 x 256 Flat query took 0.65 s with two
    OpenMP threads and 0.12 s with one. ``DESA_FAISS_THREADS`` overrides (e.g. on a big idle machine)."""
    try:
        import faiss
        faiss.omp_set_num_threads(int(os.environ.get("DESA_FAISS_THREADS", "1")))
    except Exception:  # faiss missing or built without OpenMP: nothing to limit
        pass


def load_app_data(path) -> AppData:
    """The AppData of an artifact folder, loaded once per process and shared by every session.

    When precompute has since written a new build in place (a new manifest.json, the last file it writes),
    the next call loads it and new sessions get the new build; sessions already open keep the AppData they
    started with, which holds the old build's files open. While a build is unfinished (no manifest) or
    cannot be opened, the last good one keeps being served."""
    key = str(Path(path).resolve())
    with _DATA_LOCK:
        loaded = _DATA.get(key)
        now = time.monotonic()
        if loaded is not None and now - loaded.checked < RELOAD_CHECK_S:
            return loaded.data
        sig = _manifest_signature(Path(key))
        if loaded is not None and (sig is None or sig == loaded.signature):
            loaded.checked = now
            return loaded.data
        _limit_faiss_threads()
        from desa_core.artifacts import ArtifactError, ArtifactSet
        data = None
        try:
            for _ in range(3):
                data = AppData(ArtifactSet.open(key))
                after = _manifest_signature(Path(key))
                if after == sig:
                    break
                data, sig = None, after   # a precompute run changed the folder while it was read: again
            if data is None:
                raise ArtifactError(f"{key}: changed while it was being read (a precompute run is writing it)")
        except ArtifactError as e:
            if loaded is None:
                raise
            log.warning("a new build in %s cannot be opened yet (%s): serving the previous one", key, e)
            loaded.checked = now
            return loaded.data
        if loaded is not None:
            log.info("%s: a new build was written; new sessions get it", key)
        _DATA[key] = _Loaded(data, sig, now)
        threading.Thread(target=data.touch_indexes, name="desa-index-warm", daemon=True).start()
        return data


# --------------------------------------------------------------------------------------------------------
# Per-session state
# --------------------------------------------------------------------------------------------------------

SELECT_MODES = {"new": "new selection", "add": "add (or)", "and": "intersect (and)", "sub": "subtract"}
PRESET_POPULATIONS = {
    # the simulator's truth (a labelled survey)
    "synchronized binaries": "prot_days < 7 and binary_class == 'close_sync'",
    "young fast rotators": "prot_days < 7 and binary_class == 'single' and age_gyr < 1",
    # what any survey measures (Simonian et al. 2019): rapid rotators split by their height above the main sequence
    "fast rotators above the MS (measured)": "rotation_detected and prot_acf_days > 1.5 and prot_acf_days < 7 "
                                             "and delta_mag_ms_obs >= 0.3",
    "fast rotators on the MS (measured)": "rotation_detected and prot_acf_days > 1.5 and prot_acf_days < 7 "
                                          "and delta_mag_ms_obs < 0.3",
}


def preset_populations(stars: StarTable) -> dict[str, str]:
    """The page's preset populations: PRESET_POPULATIONS plus one per set of stars added with ``desa add``."""
    out = dict(PRESET_POPULATIONS)
    if ADDED_COLUMN in stars and stars.kind(ADDED_COLUMN) in ("categorical", "text"):
        for label in sorted(set(stars.unique(ADDED_COLUMN)) - {""}):
            if "'" not in label and "\\" not in label:
                out[f"added: {label}"] = f"{ADDED_COLUMN} == '{label}'"
    return out
MAX_URL_SPEC = 1800
# Bounds on a selection spec (it may come from a URL): steps in all, nesting of groups, ids, lasso vertices.
MAX_SPEC_CHARS = 20_000
MAX_STEPS = 64
MAX_GROUP_DEPTH = 4
MAX_IDS = 10_000
MAX_LASSO_VERTICES = 256
STEP_KINDS = ("box", "lasso", "query", "ids", "group", "all", "range", "cluster")


def _finite(v, what) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise UserInputError(f"{what} must be a finite number, not {str(v)[:40]!r}")
    return float(v)


def validate_steps(steps, columns=(), depth: int = 0, budget: list | None = None, maps=MAPS,
                   embeddings=("desa", "light_curve", "spectrum")) -> list:
    """Check a selection spec (a list of steps) before anything is computed from it; returns a clean copy.

    Every step is ``[mode, kind, ...args]`` with the arity and types of its kind; unknown maps, modes and
    kinds, non-finite numbers, oversized id lists or polygons and too deep or too many groups are refused
    with a UserInputError that says which step is wrong. ``columns``: the columns a range step may use;
    ``maps``: the maps a box or lasso may be drawn on; ``embeddings``: those a cluster step may name."""
    budget = budget if budget is not None else [MAX_STEPS]
    if depth > MAX_GROUP_DEPTH:
        raise UserInputError(f"selection groups are nested more than {MAX_GROUP_DEPTH} deep")
    if not isinstance(steps, list):
        raise UserInputError("a selection is a list of steps")
    out = []
    for i, step in enumerate(steps):
        budget[0] -= 1
        if budget[0] < 0:
            raise UserInputError(f"a selection may have at most {MAX_STEPS} steps")
        where = f"selection step {i + 1}"
        if not isinstance(step, list) or len(step) < 2 or not all(isinstance(x, str) for x in step[:2]):
            raise UserInputError(f"{where} is not of the form [mode, kind, ...]")
        mode, kind, args = step[0], step[1], step[2:]
        if mode not in SELECT_MODES:
            raise UserInputError(f"{where}: unknown mode {mode[:20]!r} (use {', '.join(SELECT_MODES)})")
        if kind not in STEP_KINDS:
            raise UserInputError(f"{where}: unknown kind {kind[:20]!r} (use {', '.join(STEP_KINDS)})")
        arity = {"box": 5, "lasso": 2, "query": 1, "ids": 1, "group": 1, "all": 0, "range": 3,
                 "cluster": 3}[kind]
        if len(args) != arity:
            raise UserInputError(f"{where}: a {kind} step takes {arity} values, not {len(args)}")
        if kind in ("box", "lasso") and args[0] not in maps:
            raise UserInputError(f"{where}: unknown map {str(args[0])[:20]!r} (use {', '.join(maps)})")
        if kind == "box":
            args = [args[0]] + [_finite(v, f"{where}: a box corner") for v in args[1:]]
        elif kind == "lasso":
            flat = args[1]
            if not isinstance(flat, list) or len(flat) % 2 or not 6 <= len(flat) <= 2 * MAX_LASSO_VERTICES:
                raise UserInputError(f"{where}: a lasso needs 3 to {MAX_LASSO_VERTICES} (x, y) vertices")
            args = [args[0], [_finite(v, f"{where}: a lasso vertex") for v in flat]]
        elif kind == "query":
            if not isinstance(args[0], str):
                raise UserInputError(f"{where}: a query step holds the expression as text")
        elif kind == "ids":
            ids = args[0]
            if not isinstance(ids, list) or len(ids) > MAX_IDS or not all(isinstance(x, (str, int)) for x in ids):
                raise UserInputError(f"{where}: an ids step holds a list of at most {MAX_IDS} star ids")
            args = [[str(x)[:64] for x in ids]]
        elif kind == "group":
            if not isinstance(args[0], list) or not args[0]:
                raise UserInputError(f"{where}: a group holds a non-empty list of steps")
            args = [validate_steps(args[0], columns, depth + 1, budget, maps, embeddings)]
        elif kind == "range":
            col = args[0]
            if not isinstance(col, str) or col not in columns:
                raise UserInputError(f"{where}: unknown column {str(col)[:30]!r} for a range")
            args = [col, _finite(args[1], f"{where}: a range end"), _finite(args[2], f"{where}: a range end")]
        elif kind == "cluster":
            name, k, i = args
            if not isinstance(name, str) or name not in embeddings:
                raise UserInputError(f"{where}: no {str(name)[:30]!r} embedding to cluster")
            if not (isinstance(k, int) and not isinstance(k, bool) and MIN_CLUSTERS <= k <= MAX_CLUSTERS):
                raise UserInputError(f"{where}: the number of clusters is {MIN_CLUSTERS} to {MAX_CLUSTERS}")
            if not (isinstance(i, int) and not isinstance(i, bool) and 0 <= i < k):
                raise UserInputError(f"{where}: cluster {str(i)[:10]!r} is not one of 0..{k - 1}")
        out.append([mode, kind, *args])
    return out
CURRENT_SELECTION, ALL_STARS = "(current selection)", "(all stars)"


def _points_in_polygon(x, y, vertices) -> np.ndarray:
    from matplotlib.path import Path as MplPath
    v = np.asarray(vertices, dtype=np.float64)
    out = np.zeros(len(x), dtype=bool)
    inside = (x >= v[:, 0].min()) & (x <= v[:, 0].max()) & (y >= v[:, 1].min()) & (y <= v[:, 1].max())
    cand = np.flatnonzero(inside)
    if len(cand):
        out[cand] = MplPath(v).contains_points(np.column_stack([x[cand], y[cand]]))
    return out


def _round(v: float) -> float:
    return float(f"{float(v):.6g}")


class Session(param.Parameterized):
    """Everything one visitor has chosen. Components read and write it; the page URL mirrors parts of it."""

    color = param.String(default="density", doc="colour of the maps: 'density', a column or 'probe prediction'")
    select_mode = param.Selector(default="new", objects=list(SELECT_MODES))
    selection_spec = param.String(default="", doc="JSON steps the selection is computed from (URL state)")
    selection_count = param.Integer(default=0)
    selection_version = param.Integer(default=0)
    target = param.String(default="", doc="star id of the similarity-search target (URL state)")
    neighbours_version = param.Integer(default=0)
    populations_version = param.Integer(default=0)
    prediction_version = param.Integer(default=0)
    prediction_label = param.String(default="")
    clusters_version = param.Integer(default=0)
    umap_view = param.String(default="umap", doc="which UMAP layout the first map shows (URL state)")
    show_contours = param.Boolean(default=False, doc="draw density contours over the maps")
    message = param.String(default="")
    message_level = param.Selector(default="info", objects=["info", "success", "warning", "danger"])

    def __init__(self, data: AppData, **params):
        super().__init__(**params)
        self.data = data
        self.selection: np.ndarray | None = None  # bool mask over rows; None = nothing selected
        self._steps: list = []
        self.target_row: int = -1
        self.target_vector: dict | None = None  # embedding of an uploaded target
        self.target_positions: dict = {}        # an upload's place on each map (map key -> (x, y))
        self.upload: dict | None = None         # what the page says about an upload (match, periods, predictions)
        self.neighbours: pd.DataFrame | None = None  # rank, row, star_id, similarity + key columns
        self.populations: dict[str, dict] = {}
        self.prediction: np.ndarray | None = None
        self.prediction_kind: str = ""
        self.clusters: np.ndarray | None = None   # int16 cluster per star (-1: none), from the Regions tab
        self.clusters_label: str = ""
        self._lock = threading.RLock()
        self._rows_cache: tuple | None = None   # (mask, rows) of selected_rows()

    # --- messages -----------------------------------------------------------------------------------
    def notify(self, text: str, level: str = "info"):
        self.param.update(message=text, message_level=level)

    # --- selection ----------------------------------------------------------------------------------
    def _step_mask(self, step) -> np.ndarray:
        """The stars one validated step picks out (before its mode combines it with the rest)."""
        kind = step[1]
        if kind == "box":
            _, _, view, x0, x1, y0, y1 = step
            m = self.data.maps[view]
            return in_box(self.data.column(m.x), self.data.column(m.y), min(x0, x1), max(x0, x1), min(y0, y1),
                          max(y0, y1))
        if kind == "lasso":
            _, _, view, flat = step
            m = self.data.maps[view]
            verts = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
            return _points_in_polygon(self.data.column(m.x), self.data.column(m.y), verts)
        if kind == "range":
            _, _, col, lo, hi = step
            v = self.data.column(col)
            return (v >= min(lo, hi)) & (v <= max(lo, hi))
        if kind == "cluster":
            _, _, name, k, i = step
            return self.data.clusters(name, k) == i
        if kind == "query":
            return self.data.evaluate(step[2])
        if kind == "ids":
            mask = np.zeros(self.data.n, dtype=bool)
            mask[self.data.rows_of(step[2])] = True
            return mask
        if kind == "group":
            return self._fold(step[2])
        if kind == "all":
            return np.ones(self.data.n, dtype=bool)
        raise UserInputError(f"unknown selection step {kind!r}")

    def validate(self, steps) -> list:
        """A spec checked against this artifact set (see :func:`validate_steps`)."""
        return validate_steps(steps, self.data.colour_columns, maps=self.data.maps,
                              embeddings=self.data.embedding_names)

    def _fold(self, steps) -> np.ndarray | None:
        mask = None
        for step in steps:
            mode = step[0]
            if mode not in SELECT_MODES:
                raise UserInputError(f"unknown selection mode {mode!r}")
            m = self._step_mask(step)
            if mode == "new" or mask is None:
                mask = m.copy() if mode != "sub" else np.zeros(self.data.n, dtype=bool)
            elif mode == "add":
                mask |= m
            elif mode == "and":
                mask &= m
            elif mode == "sub":
                mask &= ~m
        return mask

    def _commit(self, steps, mask):
        with self._lock:
            self._steps = steps
            self.selection = mask
            spec = json.dumps(steps, separators=(",", ":")) if steps else ""
            self.param.update(selection_spec=spec if len(spec) <= MAX_URL_SPEC else "",
                              selection_count=int(np.count_nonzero(mask)) if mask is not None else 0,
                              selection_version=self.selection_version + 1)

    def apply_step(self, kind: str, *args, mode: str | None = None):
        """Combine the current selection with one region/expression/id list (mode: new, add, and, sub)."""
        mode = mode or self.select_mode
        step = self.validate([[mode, kind, *args]])[0]
        m = self._step_mask(step)
        with self._lock:
            base = self.selection
            if mode == "new" or base is None:
                steps, mask = [["new", *step[1:]]], (m if mode != "sub" else np.zeros(self.data.n, bool))
            else:
                steps = self._steps + [step]
                mask = base | m if mode == "add" else base & m if mode == "and" else base & ~m
            self._commit(steps, mask)
        return mask

    def select_box(self, view: str, x_range, y_range, mode=None):
        return self.apply_step("box", view, _round(x_range[0]), _round(x_range[1]), _round(y_range[0]),
                               _round(y_range[1]), mode=mode)

    def select_lasso(self, view: str, vertices, mode=None):
        v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
        if len(v) > 64:  # keep the URL short: the polygon is simplified before the mask is computed from it
            v = v[np.linspace(0, len(v) - 1, 64).round().astype(int)]
        flat = [_round(a) for a in v.ravel()]
        return self.apply_step("lasso", view, flat, mode=mode)

    def select_query(self, expr: str, mode=None):
        return self.apply_step("query", expr.strip(), mode=mode)

    def select_ids(self, star_ids, mode=None):
        return self.apply_step("ids", [str(s) for s in star_ids], mode=mode)

    def select_population(self, name: str, mode=None):
        pop = self.populations.get(name)
        if pop is None:
            raise UserInputError(f"no population named {name!r}")
        return self.apply_step("group", pop["steps"], mode=mode)

    def clear_selection(self):
        self._commit([], None)

    def restore_selection(self, spec: str):
        """Recompute the selection from a spec (e.g. from the page URL); a malformed or hostile spec is refused
        with a UserInputError and leaves the current selection as it was."""
        if not spec:
            self.clear_selection()
            return
        if len(spec) > MAX_SPEC_CHARS:
            raise UserInputError(f"cannot restore the selection: the spec is longer than {MAX_SPEC_CHARS} characters")
        try:
            steps = json.loads(spec)
        except (ValueError, RecursionError) as e:
            raise UserInputError(f"cannot restore the selection from the URL: not JSON ({str(e)[:80]})") from None
        steps = self.validate(steps)
        self._commit(steps, self._fold(steps))

    @property
    def selection_steps(self) -> list:
        return list(self._steps)

    def selected_rows(self) -> np.ndarray:
        """Row positions of the selected stars (read-only), computed once per selection: the three maps, the
        tables and the histograms of one selection share them (at 10^7 stars each scan of the mask is ~10 ms)."""
        # No lock: the maps' prefetch threads call this while the thread that committed the selection holds
        # the session lock and waits for them. The cache entry holds the mask it was computed from, so a
        # selection committed meanwhile is never answered with another's rows.
        sel, hit = self.selection, self._rows_cache
        if hit is not None and hit[0] is sel:
            return hit[1]
        rows = np.flatnonzero(sel) if sel is not None else np.zeros(0, dtype=np.int64)
        rows.setflags(write=False)
        self._rows_cache = (sel, rows)
        return rows

    def selected_stars(self, columns=None) -> pd.DataFrame:
        """The selected stars as a table (all columns by default)."""
        return self.data.table(self.selected_rows(), columns)

    # --- populations --------------------------------------------------------------------------------
    def define_population(self, name: str, expr: str | None = None, steps: list | None = None) -> np.ndarray:
        """Save a named population from an expression, explicit steps, or (neither) the current selection."""
        name = (name or "").strip()
        if not name:
            raise UserInputError("give the population a name")
        if len(name) > 80:
            raise UserInputError("a population name may have at most 80 characters")
        if expr is not None:
            steps = self.validate([["new", "query", expr.strip()]])
            mask = self._fold(steps)
        elif steps is not None:
            steps = self.validate(steps)
            mask = self._fold(steps)
        else:
            if self.selection is None:
                raise UserInputError("nothing is selected: select stars on a map first")
            steps, mask = self.selection_steps, self.selection.copy()
        with self._lock:
            self.populations[name] = {"steps": steps, "mask": mask, "expr": expr, "count": int(np.count_nonzero(mask))}
        self.populations_version += 1
        return mask

    def combine_populations(self, name: str, a: str, b: str, how: str) -> np.ndarray:
        """New population ``name`` = a | b ('union') or a & b ('intersection')."""
        for p in (a, b):
            if p not in self.populations:
                raise UserInputError(f"no population named {p!r}")
        if how not in ("union", "intersection"):
            raise UserInputError(f"unknown combination {how!r}")
        steps = [["new", "group", self.populations[a]["steps"]],
                 ["add" if how == "union" else "and", "group", self.populations[b]["steps"]]]
        return self.define_population(name, steps=steps)

    def delete_population(self, name: str):
        if self.populations.pop(name, None) is not None:
            self.populations_version += 1

    def population_mask(self, name: str) -> np.ndarray:
        if name == CURRENT_SELECTION:
            if self.selection is None:
                raise UserInputError("nothing is selected")
            return self.selection
        if name == ALL_STARS:
            return np.ones(self.data.n, dtype=bool)
        if name not in self.populations:
            raise UserInputError(f"no population named {name!r}")
        return self.populations[name]["mask"]

    # --- search target and neighbours -----------------------------------------------------------------
    def set_neighbours(self, target_row: int, target_label: str, table: pd.DataFrame | None,
                       positions: dict | None = None, upload: dict | None = None):
        """The search target (a catalogue row, or -1 with the ``positions`` of an upload) and its neighbours."""
        with self._lock:
            self.target_row = target_row
            self.neighbours = table
            self.target_positions = dict(positions or {})
            self.upload = upload
        self.param.update(target=target_label, neighbours_version=self.neighbours_version + 1)

    # --- probe prediction ---------------------------------------------------------------------------
    def set_clusters(self, labels: np.ndarray | None, label: str = ""):
        with self._lock:
            self.clusters, self.clusters_label = labels, label
        self.clusters_version += 1

    def set_prediction(self, values: np.ndarray | None, label: str, kind: str = "ridge"):
        with self._lock:
            self.prediction, self.prediction_kind = values, kind
        self.param.update(prediction_label=label, prediction_version=self.prediction_version + 1)

    def colour_values(self, name: str) -> np.ndarray | None:
        """Numeric values the maps are coloured by (None = density or a categorical colouring)."""
        c = self.colouring(name)
        return c.values if c.kind == "numeric" else None

    def colour_options(self) -> list[str]:
        """Every colouring the page offers now: density, numeric and boolean columns (mean per pixel),
        categorical columns and the session's derived classes (one colour per class)."""
        opts = ["density"] + self.data.colour_columns + [c for c in self.data.categorical_columns
                                                         if len(self.data.schema.categories[c]) <= MAX_COLOUR_CATEGORIES]
        if self.populations:
            opts.append(POPULATION_COLOUR)
        if self.prediction is not None:
            opts.append("probe prediction")
            if self.prediction_kind == "logistic":
                opts.append(PROBE_CLASS_COLOUR)
        if self.clusters is not None:
            opts.append(CLUSTER_COLOUR)
        return opts

    def colouring(self, name: str | None = None) -> "Colouring":
        """What the maps show for colour ``name`` (default: the session's); raises UserInputError if unknown."""
        name = self.color if name is None else name
        if name == "density":
            return Colouring(name, "density", label="log10 stars per pixel")
        if name == "probe prediction":
            if self.prediction is None:
                raise UserInputError("no probe has been fitted yet")
            return Colouring(name, "numeric", self.prediction, label=self.prediction_label or name,
                             version=self.prediction_version)
        if name == PROBE_CLASS_COLOUR:
            if self.prediction is None or self.prediction_kind != "logistic":
                raise UserInputError("no classification probe has been fitted yet")
            p = self.prediction
            codes = np.where(np.isfinite(p), (p >= 0.5).astype(np.int16), -1).astype(np.int16)
            desc = self.prediction_label.removeprefix("probe: ")
            if desc.startswith("P(") and desc.endswith(")"):
                desc = desc[2:-1]
            return Colouring(name, "categorical", codes, (f"not {desc}", desc), ("#9e9e9e", "#d62728"),
                             label=f"probe class (P >= 0.5): {desc}", version=self.prediction_version)
        if name == POPULATION_COLOUR:
            names = list(self.populations)[:MAX_COLOUR_CATEGORIES - 2]
            if not names:
                raise UserInputError("no population has been saved yet")
            member = np.zeros(self.data.n, np.int16)
            codes = np.full(self.data.n, -1, np.int16)
            for i, nm in enumerate(names):
                m = self.populations[nm]["mask"]
                codes[m & (member == 0)] = i
                member += m
            several = len(names)
            codes[member > 1] = several
            cats = tuple(names) + ("in several",)
            return Colouring(name, "categorical", codes, cats, palette(len(names)) + ("#000000",),
                             label="population membership (stars in none are not coloured)",
                             version=self.populations_version)
        if name == CLUSTER_COLOUR:
            if self.clusters is None:
                raise UserInputError("no clusters have been found yet (Regions tab)")
            k = int(self.clusters.max()) + 1 if len(self.clusters) else 0
            return Colouring(name, "categorical", self.clusters, tuple(f"cluster {i + 1}" for i in range(k)),
                             palette(k), label=f"GMM cluster ({self.clusters_label})", version=self.clusters_version)
        if name in self.data.categorical_columns:
            cats = tuple(self.data.schema.categories[name])
            if len(cats) > MAX_COLOUR_CATEGORIES:
                raise UserInputError(f"{name} has {len(cats)} classes: at most {MAX_COLOUR_CATEGORIES} can be coloured")
            return Colouring(name, "categorical", self.data.expression_column(name), cats, palette(len(cats)),
                             label=name)
        if name in self.data.colour_columns:
            return Colouring(name, "numeric", self.data.column(name), label=name)
        raise UserInputError(f"no colour {str(name)[:40]!r}")
