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

import ast
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import param

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapSpec:
    """One 2-D map of the stars: which columns, axis labels, and which axis runs backwards."""

    key: str
    title: str
    x: str
    y: str
    x_label: str
    y_label: str
    invert_x: bool = False
    invert_y: bool = False


MAPS = {
    "umap": MapSpec("umap", "UMAP of the DESA embedding", "umap_x", "umap_y", "UMAP 1", "UMAP 2"),
    "cmd": MapSpec("cmd", "Colour-magnitude diagram", "bp_rp", "abs_g", "BP - RP [mag]", "M_G [mag]",
                   invert_y=True),
    "hr": MapSpec("hr", "Hertzsprung-Russell diagram", "teff", "log_lum", "Teff [K]", "log L [L_sun]",
                  invert_x=True),
}

EMBEDDING_LABELS = {"desa": "joint (DESA)", "light_curve": "light curve only", "spectrum": "spectra only"}

# Columns shown next to a star in tables (neighbours, selections), in this order, when present.
KEY_COLUMNS = ["star_id", "teff", "logg", "feh", "prot_days", "age_gyr", "binary_class", "ruwe", "bp_rp",
               "abs_g", "delta_mag_ms", "ra", "dec"]
# Bookkeeping columns that are never offered as a colour or probe target.
INTERNAL_COLUMNS = {"lc_row", "spec_row", "umap_x", "umap_y", "row"}

MAX_CATEGORIES = 32


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
        stars = artifacts.stars
        self.stars: pd.DataFrame = stars.reset_index(drop=True)
        self.n = len(self.stars)
        self.star_ids = self.stars["star_id"].astype(str).to_numpy()
        self._row_of = pd.Index(self.star_ids)
        self.numeric_columns: list[str] = []
        self.categorical_columns: list[str] = []
        self.boolean_columns: list[str] = []
        for c in self.stars.columns:
            if c == "star_id" or c in INTERNAL_COLUMNS:
                continue
            s = self.stars[c]
            if pd.api.types.is_bool_dtype(s):
                self.boolean_columns.append(c)
            elif pd.api.types.is_numeric_dtype(s):
                self.numeric_columns.append(c)
            elif s.nunique(dropna=True) <= MAX_CATEGORIES:
                self.categorical_columns.append(c)
        self._columns: dict[str, np.ndarray] = {}
        self._limits: dict[str, tuple[float, float]] = {}
        self._ranges: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
        self._embeddings: dict[str, np.ndarray] = {}
        self._has_embedding: dict[str, np.ndarray] = {}
        self._indexes: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._sky = None
        self._survey = None
        self._survey_rows = None
        self._survey_error: str | None = None
        self._embedder = None
        self._embedder_error: str | None = None
        self.embedding_names = [k for k in ("desa", "light_curve", "spectrum")
                                if k in (self.manifest.get("embeddings") or {})]
        for m in MAPS.values():  # the map coordinates are needed by every session: load them now
            self.column(m.x), self.column(m.y), self.default_range(m.key)
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
                "embeddings": self.embedding_names}

    # --- columns ------------------------------------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        """A numeric or boolean column as float32 (NaN where unknown), cached and shared."""
        arr = self._columns.get(name)
        if arr is None:
            if name not in self.stars.columns:
                raise UserInputError(f"no column {name!r} in the star table")
            s = self.stars[name]
            if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
                raise UserInputError(f"column {name!r} is not numeric")
            arr = s.to_numpy(dtype=np.float32, na_value=np.nan)
            arr.setflags(write=False)
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
            m = MAPS[key]
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

    # --- stars --------------------------------------------------------------------------------------
    def rows_of(self, star_ids) -> np.ndarray:
        """Row positions of star ids; raises UserInputError naming unknown ids."""
        ids = [str(s).strip() for s in np.atleast_1d(star_ids)]
        rows = self._row_of.get_indexer(ids)
        if (rows < 0).any():
            bad = [i for i, r in zip(ids, rows) if r < 0][:5]
            raise UserInputError(f"unknown star id(s): {', '.join(bad)}")
        return rows.astype(np.int64)

    def row_of(self, star_id: str) -> int:
        if not str(star_id).strip():
            raise UserInputError("enter a star id")
        return int(self.rows_of([star_id])[0])

    def table(self, rows, columns=None) -> pd.DataFrame:
        """The star table at some rows (all columns, or the given ones)."""
        rows = np.asarray(rows, dtype=np.int64)
        df = self.stars if columns is None else self.stars[[c for c in columns if c in self.stars.columns]]
        return df.iloc[rows].reset_index(drop=True)

    def key_columns(self) -> list[str]:
        return [c for c in KEY_COLUMNS if c in self.stars.columns]

    def sky(self):
        """SkyCoord of every star (built on first use: only sky-position searches need it)."""
        with self._lock:
            if self._sky is None:
                from astropy.coordinates import SkyCoord
                if not {"ra", "dec"} <= set(self.stars.columns):
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

        Read from the ids the FAISS index holds (a few MB), not by scanning the embedding file (GBs)."""
        with self._lock:
            if name not in self._has_embedding:
                ok = np.zeros(self.n, dtype=bool)
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

    def search(self, name: str, queries: np.ndarray, k: int, subset_ids=None):
        """Cosine top-k over the ``name`` index: (similarities (nq, k), rows (nq, k); -1 where none)."""
        self.index(name)  # opened once under the lock, then shared
        return self.artifacts.search(name, queries, k, subset_ids=subset_ids)

    # --- survey store (previews) and model (uploads) --------------------------------------------------
    def survey(self):
        """The SurveyStore behind the artifacts, or None (synthetic sets have none)."""
        with self._lock:
            if self._survey is None and self._survey_error is None:
                try:
                    self._survey = self.artifacts.survey_store()
                except Exception as e:  # a moved or deleted store must not take the dashboard down
                    log.warning("survey store unavailable: %s", e)
                    self._survey_error = str(e)
                if self._survey is None and self._survey_error is None:
                    self._survey_error = "this artifact set has no survey store (no light curves or spectra)"
                if self._survey is not None:
                    self._survey_rows = pd.Index(self._survey.catalog["star_id"].astype(str).to_numpy())
            return self._survey

    def light_curve(self, row: int):
        """(time, flux) of the star at a row, or None."""
        s = self.survey()
        if s is None:
            return None
        r = self._survey_rows.get_indexer([self.star_ids[row]])[0]
        return None if r < 0 else s.light_curve(int(r))

    def spectrum(self, row: int):
        """(wavelength, flux, ivar) of the star at a row, or None."""
        s = self.survey()
        if s is None:
            return None
        r = self._survey_rows.get_indexer([self.star_ids[row]])[0]
        return None if r < 0 else s.spectrum(int(r))

    def embedder(self):
        """The model for live embedding of uploads; raises UserInputError saying why it is unavailable."""
        with self._lock:
            if self._embedder is None and self._embedder_error is None:
                run_path = getattr(self.artifacts, "run_path", None)
                if not run_path:
                    self._embedder_error = "this artifact set has no model run, so uploads cannot be embedded"
                else:
                    try:
                        from desa_core.models.inference import Embedder
                        self._embedder = Embedder.from_run(run_path)
                    except Exception as e:
                        log.warning("model for live embedding unavailable: %s", e)
                        self._embedder_error = f"the model at {run_path} could not be loaded: {e}"
            if self._embedder is None:
                raise UserInputError(self._embedder_error)
            return self._embedder


_DATA: dict[str, AppData] = {}
_DATA_LOCK = threading.Lock()


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
    """The AppData of an artifact folder, loaded once per process and shared by every session."""
    key = str(Path(path).resolve())
    with _DATA_LOCK:
        if key not in _DATA:
            _limit_faiss_threads()
            from desa_core.artifacts import ArtifactSet
            _DATA[key] = AppData(ArtifactSet.open(key))
        return _DATA[key]


# --------------------------------------------------------------------------------------------------------
# Safe expressions over catalogue columns
# --------------------------------------------------------------------------------------------------------

_ALLOWED_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
                  ast.Invert, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod, ast.FloorDiv,
                  ast.BitAnd, ast.BitOr, ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE,
                  ast.In, ast.NotIn, ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple)


def check_expression(expr: str, columns) -> list[str]:
    """Validate a population expression; return the columns it uses.

    Only column names, numbers, strings, comparisons, arithmetic, ``and``/``or``/``not``, ``in [..]`` are
    allowed: no calls, attributes, subscripts or ``@`` variables, so nothing but the catalogue is reachable.
    """
    if not expr or not expr.strip():
        raise UserInputError("the expression is empty")
    if len(expr) > 2000:
        raise UserInputError("the expression is too long (2000 characters at most)")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise UserInputError(f"cannot parse expression {expr!r}: {e.msg}") from None
    used = []
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise UserInputError(f"{type(node).__name__} is not allowed in an expression: use column names, "
                                 f"numbers, strings, comparisons, and/or/not")
        if isinstance(node, ast.Name) and node.id not in ("True", "False"):
            if node.id not in columns:
                raise UserInputError(f"unknown column {node.id!r} in {expr!r}")
            used.append(node.id)
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str, bool)):
            raise UserInputError(f"constant {node.value!r} is not allowed")
    return sorted(set(used))


def evaluate_expression(stars: pd.DataFrame, expr: str) -> np.ndarray:
    """Boolean mask of the stars matching a safe expression (pandas eval over the columns it names)."""
    used = check_expression(expr, stars.columns)
    try:
        out = stars[used].eval(expr.strip(), engine="python", local_dict={}, global_dict={})
    except Exception as e:  # type errors such as comparing a string column with a number
        raise UserInputError(f"cannot evaluate {expr!r}: {e}") from None
    out = np.asarray(out)
    if out.dtype != bool or out.shape != (len(stars),):
        raise UserInputError(f"{expr!r} does not give true/false for each star")
    return out


# --------------------------------------------------------------------------------------------------------
# Per-session state
# --------------------------------------------------------------------------------------------------------

SELECT_MODES = {"new": "new selection", "add": "add (or)", "and": "intersect (and)", "sub": "subtract"}
PRESET_POPULATIONS = {
    "synchronized binaries": "prot_days < 7 and binary_class == 'close_sync'",
    "young fast rotators": "prot_days < 7 and binary_class == 'single' and age_gyr < 1",
}
MAX_URL_SPEC = 1800
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
    message = param.String(default="")
    message_level = param.Selector(default="info", objects=["info", "success", "warning", "danger"])

    def __init__(self, data: AppData, **params):
        super().__init__(**params)
        self.data = data
        self.selection: np.ndarray | None = None  # bool mask over rows; None = nothing selected
        self._steps: list = []
        self.target_row: int = -1
        self.target_vector: dict | None = None  # embedding of an uploaded target
        self.neighbours: pd.DataFrame | None = None  # rank, row, star_id, similarity + key columns
        self.populations: dict[str, dict] = {}
        self.prediction: np.ndarray | None = None
        self._lock = threading.RLock()

    # --- messages -----------------------------------------------------------------------------------
    def notify(self, text: str, level: str = "info"):
        self.param.update(message=text, message_level=level)

    # --- selection ----------------------------------------------------------------------------------
    def _step_mask(self, step) -> np.ndarray:
        kind = step[1]
        if kind == "box":
            _, _, view, x0, x1, y0, y1 = step
            m = MAPS[view]
            x, y = self.data.column(m.x), self.data.column(m.y)
            return (x >= min(x0, x1)) & (x <= max(x0, x1)) & (y >= min(y0, y1)) & (y <= max(y0, y1))
        if kind == "lasso":
            _, _, view, flat = step
            m = MAPS[view]
            verts = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
            if len(verts) < 3:
                raise UserInputError("a lasso needs at least three points")
            return _points_in_polygon(self.data.column(m.x), self.data.column(m.y), verts)
        if kind == "query":
            return evaluate_expression(self.data.stars, step[2])
        if kind == "ids":
            mask = np.zeros(self.data.n, dtype=bool)
            mask[self.data.rows_of(step[2])] = True
            return mask
        if kind == "group":
            return self._fold(step[2])
        if kind == "all":
            return np.ones(self.data.n, dtype=bool)
        raise UserInputError(f"unknown selection step {kind!r}")

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
                              selection_count=int(mask.sum()) if mask is not None else 0,
                              selection_version=self.selection_version + 1)

    def apply_step(self, kind: str, *args, mode: str | None = None):
        """Combine the current selection with one region/expression/id list (mode: new, add, and, sub)."""
        mode = mode or self.select_mode
        step = [mode, kind, *args]
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
        """Recompute the selection from a spec (e.g. from the page URL)."""
        if not spec:
            self.clear_selection()
            return
        try:
            steps = json.loads(spec)
            if not isinstance(steps, list) or not all(isinstance(s, list) and len(s) >= 2 for s in steps):
                raise ValueError("not a list of steps")
        except ValueError as e:
            raise UserInputError(f"cannot restore the selection from the URL: {e}") from None
        self._commit(steps, self._fold(steps))

    @property
    def selection_steps(self) -> list:
        return list(self._steps)

    def selected_rows(self) -> np.ndarray:
        return np.flatnonzero(self.selection) if self.selection is not None else np.zeros(0, dtype=np.int64)

    def selected_stars(self, columns=None) -> pd.DataFrame:
        """The selected stars as a table (all columns by default)."""
        return self.data.table(self.selected_rows(), columns)

    # --- populations --------------------------------------------------------------------------------
    def define_population(self, name: str, expr: str | None = None, steps: list | None = None) -> np.ndarray:
        """Save a named population from an expression, explicit steps, or (neither) the current selection."""
        name = (name or "").strip()
        if not name:
            raise UserInputError("give the population a name")
        if expr is not None:
            steps = [["new", "query", expr.strip()]]
            mask = self._fold(steps)
        elif steps is not None:
            mask = self._fold(steps)
        else:
            if self.selection is None:
                raise UserInputError("nothing is selected: select stars on a map first")
            steps, mask = self.selection_steps, self.selection.copy()
        with self._lock:
            self.populations[name] = {"steps": steps, "mask": mask, "expr": expr, "count": int(mask.sum())}
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
    def set_neighbours(self, target_row: int, target_label: str, table: pd.DataFrame | None):
        with self._lock:
            self.target_row = target_row
            self.neighbours = table
        self.param.update(target=target_label, neighbours_version=self.neighbours_version + 1)

    # --- probe prediction ---------------------------------------------------------------------------
    def set_prediction(self, values: np.ndarray | None, label: str):
        with self._lock:
            self.prediction = values
        self.param.update(prediction_label=label, prediction_version=self.prediction_version + 1)

    def colour_values(self, name: str) -> np.ndarray | None:
        """Values the maps are coloured by (None = density)."""
        if name == "density":
            return None
        if name == "probe prediction":
            return self.prediction
        return self.data.column(name)
