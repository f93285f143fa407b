"""Linked maps: UMAP of the DESA embedding, colour-magnitude diagram and HR diagram.

Each map is rasterised on the server with datashader (a ``hv.Points`` layer is never sent to the browser as
points): a dimmed layer of all stars, a full-opacity layer of the selected stars (all stars when nothing is
selected), both on the same colour scale with a colourbar, and small native point layers for the
similarity-search target and its neighbours. Zooming re-aggregates at the new range (``RangeXY``).

Box and lasso selections arrive as geometry (``BoundsXY``, ``Lasso`` streams), are resolved on the server into
a mask over all stars (``Session.select_box`` / ``select_lasso``) and re-render all three maps; a click
(``Tap``) picks the nearest star as the similarity-search target.

Speed: a selection changes only each map's "Selected" raster, and a search only its two point layers. Those
are computed (the three rasters in parallel threads; datashader's kernels release the GIL) and written
straight into the plots' Bokeh data sources, on the session's next tick when the document lock is not held,
exactly as HoloViews would write them (a test checks this). Everything else (zoom, colour, first draw)
goes through HoloViews' DynamicMap. HoloViews options are attached once to template elements whose ids
each frame reuses, never per frame.

Sparse layers are spread by a few pixels (like ``dynspread``) so that a handful of selected stars stays
visible at 10^6-star scale.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import datashader as ds
import datashader.transfer_functions as tf
import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
from panel.io.document import unlocked

from app.state import MAPS, Session, UserInputError
from app.text import esc

log = logging.getLogger(__name__)

FRAME_WIDTH, FRAME_HEIGHT = 380, 330
DIM_ALPHA = 0.22
CMAP = "viridis"
_POOL = ThreadPoolExecutor(max_workers=3, thread_name_prefix="desa-maps")  # stateless workers, shared


def _spread_px(count: np.ndarray, max_px: int = 3) -> int:
    """How many pixels to spread a layer by: more when few pixels are lit (dynspread-like)."""
    lit = float(np.count_nonzero(count)) / max(1, count.size)
    for px, frac in ((0, 0.05), (1, 0.01), (2, 0.002)):
        if lit >= frac:
            return min(px, max_px)
    return max_px


def aggregate(x: np.ndarray, y: np.ndarray, values: np.ndarray | None, rows: np.ndarray | None,
              x_range, y_range, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT,
              spread: bool = True) -> np.ndarray:
    """Rasterise stars onto a (height, width) grid: counts (values None) or the mean of ``values``.

    ``rows`` restricts to those row positions. Empty pixels are NaN so that they are transparent.
    """
    if rows is not None:
        x, y = x[rows], y[rows]
        values = values[rows] if values is not None else None
    cols = {"x": x, "y": y}
    if values is not None:
        cols["v"] = values
    df = pd.DataFrame(cols, copy=False)
    cv = ds.Canvas(plot_width=int(width), plot_height=int(height), x_range=tuple(map(float, x_range)),
                   y_range=tuple(map(float, y_range)))
    if values is None:
        count = cv.points(df, "x", "y", agg=ds.count())
        px = _spread_px(count.values) if spread else 0
        if px:
            count = tf.spread(count, px=px, how="add")
        out = count.values.astype(np.float32)
        out[out == 0] = np.nan
        return out
    agg = cv.points(df, "x", "y", agg=ds.summary(n=ds.count("v"), s=ds.sum("v")))
    n, s = agg["n"], agg["s"]
    px = _spread_px(n.values) if spread else 0
    if px:
        n, s = tf.spread(n, px=px, how="add"), tf.spread(s, px=px, how="add")
    n = n.values.astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (s.values / n).astype(np.float32)
    out[n == 0] = np.nan
    return out


def warm_kernels():
    """Compile datashader's numba kernels (every spread width, counts and means) before the first visitor."""
    rng = np.random.default_rng(0)
    for n in (5, 50, 500, 20_000):  # sparse to dense: each spread width once
        x, y, v = (rng.normal(size=n).astype(np.float32) for _ in range(3))
        aggregate(x, y, None, None, (-3, 3), (-3, 3))
        aggregate(x, y, v, np.arange(n // 2), (-3, 3), (-3, 3))


class Maps(pn.viewable.Viewer):
    """The three linked maps of one session, with colour choice and selection count."""

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        self.data = session.data
        self._cache: dict = {}
        self._cache_lock = threading.Lock()
        self.last_render_s: dict[str, float] = {}
        self._colour_options = ["density"] + self.data.colour_columns
        self.colour_select = pn.widgets.Select(label="Colour by", options=self._colour_options,
                                               value=session.color if session.color in self._colour_options
                                               else "density", width=180)
        self.colour_select.link(session, value="color")
        session.param.watch(self._on_colour, "color")
        session.param.watch(self._on_prediction, "prediction_version")
        self.mode_select = pn.widgets.RadioButtonGroup(label="Selection mode", options={
            "new": "new", "add": "add", "and": "and", "sub": "sub"}, value="new")
        self.mode_select.link(session, value="select_mode")
        self.clear_button = pn.widgets.Button(label="Clear selection", width=120)
        self.clear_button.on_click(lambda e: session.clear_selection())
        self.count = pn.pane.Markdown(self._count_text(), margin=(5, 10))
        self.colour_label = pn.pane.HTML(self._colour_text(), margin=(5, 10))
        session.param.watch(lambda *e: setattr(self.count, "object", self._count_text()),
                            ["selection_count", "selection_version"])
        session.param.watch(lambda *e: setattr(self.colour_label, "object", self._colour_text()),
                            ["color", "prediction_version"])
        # Registered before the maps' own stream watchers, so the three rasters are computed in parallel
        # (datashader's kernels release the GIL) before the maps ask for them one after the other.
        session.param.watch(self._prefetch, ["selection_version", "color", "prediction_version"])
        # A new selection changes only the "Selected" image of each map: it is pushed straight into the
        # plots' Bokeh data sources, skipping HoloViews' full re-render (most of an event's CPU time).
        session.param.watch(self._push_selection, "selection_version")
        session.param.watch(self._push_points, "neighbours_version")  # likewise for search results
        self.dmaps: dict[str, hv.DynamicMap] = {}
        self._opt_ids: dict[str, dict] = {}
        self._templates: dict[str, dict] = {}
        self._elements: dict[str, dict] = {}
        self.range_streams: dict[str, hv.streams.RangeXY] = {}
        self.panes: dict[str, pn.pane.HoloViews] = {}
        params_stream = hv.streams.Params(session, ["color", "prediction_version"])
        for key, m in MAPS.items():
            rng = hv.streams.RangeXY()
            dmap = hv.DynamicMap(self._callback(key), streams=[rng, params_stream])
            # Options are attached once, to template elements whose option ids every frame reuses: options
            # applied per frame (or on the DynamicMap) are re-resolved on every event and slow it down.
            kd = [m.x, m.y]
            templates = {
                "base": hv.Image(np.zeros((2, 2)), kdims=kd, group="Base").opts(
                    alpha=DIM_ALPHA, cmap=CMAP, invert_xaxis=m.invert_x, invert_yaxis=m.invert_y),
                "top": hv.Image(np.zeros((2, 2)), kdims=kd, group="Selected").opts(
                    alpha=1.0, cmap=CMAP, colorbar=True, colorbar_position="right", clabel=" ",
                    tools=["box_select", "lasso_select", "tap"], active_tools=["box_select"],
                    invert_xaxis=m.invert_x, invert_yaxis=m.invert_y),
                "neighbours": hv.Points([], kdims=kd, group="Neighbours").opts(
                    color="cyan", line_color="black", size=7, tools=["hover"]),
                "target": hv.Points([], kdims=kd, group="Target").opts(
                    color="magenta", line_color="black", size=18, marker="star"),
                "overlay": hv.Overlay([hv.Points([], kdims=kd)]).opts(
                    title=self.data.map_title(key), frame_width=FRAME_WIDTH, frame_height=FRAME_HEIGHT, toolbar="above"),
            }
            # HoloViews drops custom options once no element carries their id: keep the templates alive.
            self._templates[key] = templates
            self._opt_ids[key] = {k: t.id for k, t in templates.items()}
            bounds = hv.streams.BoundsXY(source=dmap)
            bounds.add_subscriber(self._bounds_handler(key))
            lasso = hv.streams.Lasso(source=dmap)
            lasso.add_subscriber(self._lasso_handler(key))
            tap = hv.streams.Tap(source=dmap)
            tap.add_subscriber(self._tap_handler(key))
            self.dmaps[key] = dmap
            self.range_streams[key] = rng
            self.panes[key] = pn.pane.HoloViews(dmap, linked_axes=False)

    # --- text ---------------------------------------------------------------------------------------
    def _count_text(self) -> str:
        n = self.data.n
        c = self.session.selection_count if self.session.selection is not None else None
        if c is None:
            return f"**Selected: none** of {n:,} stars (drag a box or lasso on any map)"
        return f"**Selected: {c:,}** of {n:,} stars ({100.0 * c / max(n, 1):.2f}%)"

    def _colour_text(self) -> str:
        name, values = self._colour()
        if values is None:
            return "Colour: log10 stars per pixel"
        label = self.session.prediction_label if name == "probe prediction" else name
        return f"Colour: mean {esc(label)} per pixel"

    def restore_colour(self, name: str):
        """Colour the maps by ``name`` (from a URL): only the page's own colour options are accepted."""
        if name not in self.colour_select.options:
            raise UserInputError(f"no colour {name[:40]!r}; the maps can be coloured by "
                                 f"{', '.join(map(str, self.colour_select.options[:8]))}, ...")
        self.session.color = name

    def _on_colour(self, event):
        if self.colour_select.value != event.new and event.new in self.colour_select.options:
            self.colour_select.value = event.new

    def _on_prediction(self, event):
        opts = self._colour_options + (["probe prediction"] if self.session.prediction is not None else [])
        self.colour_select.options = opts

    # --- rendering ----------------------------------------------------------------------------------
    def _colour(self):
        name = self.session.color
        try:
            values = self.session.colour_values(name)
        except UserInputError:
            name, values = "density", None
        if name == "probe prediction" and values is None:
            name = "density"
        return name, values

    def _limits(self, name, values):
        if values is None:
            return None
        if name == "probe prediction":
            v = values[np.isfinite(values)]
            if len(v) > 200_000:
                v = v[:: len(v) // 200_000]
            lo, hi = (np.percentile(v, [1, 99]) if len(v) else (0.0, 1.0))
            return (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
        return self.data.colour_limits(name)

    def _ranges(self, key, x_range=None, y_range=None):
        dx, dy = self.data.default_range(key)
        x_range = tuple(map(float, x_range)) if x_range and None not in x_range else dx
        y_range = tuple(map(float, y_range)) if y_range and None not in y_range else dy
        return x_range, y_range

    def _layers(self, key, x_range, y_range):
        """(all stars, selected stars or None, cache key) rasters of one map, cached per selection/colour/zoom."""
        m = MAPS[key]
        x, y = self.data.column(m.x), self.data.column(m.y)
        cname, values = self._colour()
        ckey = (key, cname, self.session.prediction_version, x_range, y_range)
        sel, version = self.session.selection, self.session.selection_version
        with self._cache_lock:
            hit = self._cache.get(key)
        base = hit["base"] if hit and hit["ckey"] == ckey else None
        # top: an array, False (nothing selected) or None (not computed yet)
        top = hit["top"] if hit and hit["ckey"] == ckey and hit["version"] == version else None
        if base is None:
            base = aggregate(x, y, values, None, x_range, y_range)
        if top is None:
            top = False if sel is None else aggregate(x, y, values, np.flatnonzero(sel), x_range, y_range)
        with self._cache_lock:
            self._cache[key] = {"ckey": ckey, "version": version, "base": base, "top": top}
        return base, (None if top is False else top), ckey

    def _prefetch(self, *_):
        futures = []
        for key in MAPS:
            xr, yr = self._ranges(key, self.range_streams[key].x_range, self.range_streams[key].y_range)
            futures.append(_POOL.submit(self._layers, key, xr, yr))
        for f in futures:
            try:
                f.result()
            except Exception:  # the map's own callback will meet the same error and report it
                log.debug("prefetch failed", exc_info=True)

    def selected_image(self, key: str, x_range=None, y_range=None) -> np.ndarray:
        """The "Selected" layer's pixel values as Bokeh draws them (rows bottom to top)."""
        x_range, y_range = self._ranges(key, x_range, y_range)
        base, top, _ = self._layers(key, x_range, y_range)
        arr = base if top is None else top
        if self._colour()[1] is None:
            with np.errstate(divide="ignore"):
                arr = np.log10(arr)
        return arr

    def _push_selection(self, *_):
        for key, pane in self.panes.items():
            plots = [p for p, _ in getattr(pane, "_plots", {}).values()]
            if not plots:
                continue  # not on a page yet: render() reads the current selection when it is drawn
            try:
                rng = self.range_streams[key]
                img = self.selected_image(key, rng.x_range, rng.y_range)
                for plot in plots:
                    doc = plot.document
                    if doc is not None and doc.session_context and not pn.state._unblocked(doc):
                        # Outside the document lock (a threaded server): apply on the session's next tick,
                        # as HoloViews does for its own refreshes.
                        doc.add_next_tick_callback(partial(self._set_selected_image, key, plot, img))
                    else:
                        self._set_selected_image(key, plot, img)
            except Exception:  # anything unexpected: let HoloViews redraw the whole map
                log.debug("fast selection update failed for %s; full redraw", key, exc_info=True)
                self.dmaps[key].event()

    def _push_points(self, *_):
        """New neighbours/target: replace the two small point layers' data in the Bokeh sources."""
        for key, pane in self.panes.items():
            plots = [p for p, _ in getattr(pane, "_plots", {}).values()]
            if not plots:
                continue
            m = MAPS[key]
            x, y = self.data.column(m.x), self.data.column(m.y)
            nb, t = self.session.neighbours, self.session.target_row
            rows = nb["row"].to_numpy() if nb is not None and len(nb) else np.zeros(0, np.int64)
            columns = {
                "Neighbours": {m.x: x[rows], m.y: y[rows],
                               "star_id": nb["star_id"].to_numpy() if len(rows) else np.zeros(0, object),
                               "similarity": nb["similarity"].to_numpy() if len(rows) else np.zeros(0)},
                "Target": {m.x: x[[t]] if t >= 0 else np.zeros(0, np.float32),
                           m.y: y[[t]] if t >= 0 else np.zeros(0, np.float32)},
            }
            for plot in plots:
                doc = plot.document
                if doc is not None and doc.session_context and not pn.state._unblocked(doc):
                    doc.add_next_tick_callback(partial(self._set_points, key, plot, columns))
                else:
                    self._set_points(key, plot, columns)

    def _set_points(self, key, plot, columns):
        try:
            for group, cols in columns.items():
                source = plot.subplots[(group, "I")].handles["source"]
                if set(source.data) != set(cols):
                    raise ValueError(f"unexpected columns {sorted(source.data)}")
                with unlocked():
                    source.data = {k: np.asarray(v) for k, v in cols.items()}
        except Exception:
            log.debug("fast point update failed for %s; full redraw", key, exc_info=True)
            self.dmaps[key].event()

    def _set_selected_image(self, key, plot, img):
        try:
            source = plot.subplots[("Selected", "I")].handles["source"]
            data = dict(source.data)
            if np.shape(data["image"][0]) != img.shape:
                raise ValueError("the plot's raster has another shape")
            data["image"] = [img]
            with unlocked():
                source.data = data
        except Exception:
            log.debug("fast selection update failed for %s; full redraw", key, exc_info=True)
            self.dmaps[key].event()

    def render(self, key: str, x_range=None, y_range=None) -> hv.Overlay:
        """The map ``key`` as a HoloViews overlay at the given ranges (defaults: the whole data set)."""
        t0 = time.perf_counter()
        m = MAPS[key]
        x_range, y_range = self._ranges(key, x_range, y_range)
        base_arr, top_arr, ckey = self._layers(key, x_range, y_range)
        cname, values = self._colour()
        ids = self._opt_ids[key]
        elements = self._elements.setdefault(key, {})
        kd = [hv.Dimension(m.x, label=m.x_label), hv.Dimension(m.y, label=m.y_label)]
        bounds = (x_range[0], y_range[0], x_range[1], y_range[1])
        # Elements that did not change are reused: building a HoloViews element costs milliseconds.
        if elements.get("base_key") != ckey:
            if values is None:  # density: log10 counts, so that sparse and dense regions both show
                with np.errstate(divide="ignore"):
                    base_arr = np.log10(base_arr)
                hi = float(np.nanmax(base_arr)) if np.isfinite(base_arr).any() else 1.0
                clim, label = (0.0, max(hi, 0.5)), "log10 stars per pixel"
            else:
                clim = self._limits(cname, values)
                label = (self.session.prediction_label or cname) if cname == "probe prediction" else cname
            vdim = hv.Dimension("value", label=label, range=clim)
            # datashader rows run bottom-to-top; hv.Image wants the top row first.
            elements["base"] = hv.Image(np.flipud(base_arr), bounds=bounds, kdims=kd, vdims=[vdim], group="Base",
                                        id=ids["base"])
            elements["vdim"] = vdim
            elements["base_key"] = ckey
        base_img, vdim = elements["base"], elements["vdim"]
        if top_arr is None:  # nothing selected: every star at full opacity
            top_data = base_img.data
        else:
            if values is None:
                with np.errstate(divide="ignore"):
                    top_arr = np.log10(top_arr)
            top_data = np.flipud(top_arr)
        top_img = hv.Image(top_data, bounds=bounds, kdims=kd, vdims=[vdim], group="Selected", id=ids["top"])
        nkey = (self.session.neighbours_version, self.session.target_row)
        if elements.get("points_key") != nkey:
            x, y = self.data.column(m.x), self.data.column(m.y)
            nb = self.session.neighbours
            if nb is not None and len(nb):
                rows = nb["row"].to_numpy()
                elements["nb"] = hv.Points((x[rows], y[rows], nb["star_id"].to_numpy(), nb["similarity"].to_numpy()),
                                           kdims=kd, vdims=["star_id", "similarity"], group="Neighbours",
                                           id=ids["neighbours"])
            else:
                elements["nb"] = hv.Points(([], [], [], []), kdims=kd, vdims=["star_id", "similarity"],
                                           group="Neighbours", id=ids["neighbours"])
            t = self.session.target_row
            elements["target"] = hv.Points(([x[t]], [y[t]]) if t >= 0 else ([], []), kdims=kd, group="Target",
                                           id=ids["target"])
            elements["points_key"] = nkey
        nb_pts, tgt = elements["nb"], elements["target"]
        out = hv.Overlay([base_img, top_img, nb_pts, tgt], id=ids["overlay"])
        self.last_render_s[key] = time.perf_counter() - t0
        return out

    def _callback(self, key):
        def cb(x_range=None, y_range=None, **_):
            return self.render(key, x_range, y_range)
        return cb

    # --- selection events ---------------------------------------------------------------------------
    def _guard(self, fn, *args):
        try:
            fn(*args)
        except UserInputError as e:
            self.session.notify(str(e), "warning")
        except Exception as e:  # a bad event must never break the session
            log.exception("map event failed")
            self.session.notify(f"that did not work: {e}", "danger")

    def _bounds_handler(self, key):
        def handler(bounds=None, **_):
            if bounds is None:
                return
            x0, y0, x1, y1 = bounds
            self._guard(self.session.select_box, key, (x0, x1), (y0, y1))
        return handler

    def _lasso_handler(self, key):
        def handler(geometry=None, **_):
            if geometry is None or len(geometry) < 3:
                return
            self._guard(self.session.select_lasso, key, geometry)
        return handler

    def _tap_handler(self, key):
        def handler(x=None, y=None, **_):
            if x is None or y is None:
                return
            self._guard(self._tap, key, x, y)
        return handler

    def nearest_star(self, key: str, x: float, y: float, max_px: float = 12.0) -> int:
        """Row of the star nearest a clicked point (in screen-scaled units), or -1 if none is close."""
        m = MAPS[key]
        rng = self.range_streams[key]
        xr = rng.x_range or self.data.default_range(key)[0]
        yr = rng.y_range or self.data.default_range(key)[1]
        sx = (xr[1] - xr[0]) / FRAME_WIDTH
        sy = (yr[1] - yr[0]) / FRAME_HEIGHT
        xs, ys = self.data.column(m.x), self.data.column(m.y)
        near = (np.abs(xs - x) <= max_px * abs(sx)) & (np.abs(ys - y) <= max_px * abs(sy))
        cand = np.flatnonzero(near)
        if len(cand) == 0:
            return -1
        d = ((xs[cand] - x) / sx) ** 2 + ((ys[cand] - y) / sy) ** 2
        return int(cand[np.nanargmin(d)])

    on_star_clicked = None  # set by the app: callable(row) (the search component's target-by-click)

    def _tap(self, key, x, y):
        row = self.nearest_star(key, x, y)
        if row < 0:
            return
        if self.on_star_clicked is not None:
            self.on_star_clicked(row)

    def __panel__(self):
        controls = pn.Row(self.colour_select, pn.Column(pn.pane.Markdown("Selection mode", margin=(0, 5)),
                                                        self.mode_select), self.clear_button,
                          pn.Column(self.count, self.colour_label))
        return pn.Column(controls, pn.Row(*self.panes.values()))
