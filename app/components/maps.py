"""Linked maps: a UMAP (of the DESA, light-curve-only or spectrum-only embedding: a switch), the
colour-magnitude diagram and the HR diagram.

Each map is rasterised on the server with datashader (a ``hv.Points`` layer is never sent to the browser as
points): a dimmed layer of all stars, a full-opacity layer of the selected stars (all stars when nothing is
selected), both on the same colour scale, and small native point layers for the similarity-search target, its
neighbours and the star under the cursor. Colour by density, by the mean of a numeric column per pixel (a
colourbar), or by a categorical column or class (datashader's ``count_cat``, each pixel mixing the fixed
colours of the classes it holds; a legend with the counts of each class overall and in the selection).
Zooming re-aggregates at the new range (``RangeXY``); density contours can be drawn over any map.

Box and lasso selections arrive as geometry (``BoundsXY``, ``Lasso`` streams), are resolved on the server into
a mask over all stars (``Session.select_box`` / ``select_lasso``) and re-render all three maps. The cursor
(``PointerXY``) is resolved on the server by a kd-tree of each map's coordinates into the nearest star within a
few pixels, shown with its id and key properties; a click (``Tap``) on a star makes it the similarity-search
target and opens its star detail.

Speed: a selection changes only each map's "Selected" raster, and a search or a hover only its small point
layers. At a map's default view a raster is a count of the stars' precomputed pixel numbers (app/pixels.py:
the pixels datashader would draw, without its per-call set-up); a zoomed view goes through datashader. Those
are computed (the three rasters in parallel threads; both kinds of kernel release the GIL) and
written straight into the plots' Bokeh data sources, on the session's next tick when the document lock is not
held, exactly as HoloViews would write them (a test checks this). Everything else (zoom, colour, first draw)
goes through HoloViews' DynamicMap. HoloViews options are attached once to template elements whose ids each
frame reuses, never per frame.

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
import xarray as xr
from panel.io.document import unlocked

from app.pixels import PixelIndex, in_box
from app.state import UMAP_VIEWS, Colouring, Session, UserInputError
from app.text import esc

log = logging.getLogger(__name__)

FRAME_WIDTH, FRAME_HEIGHT = 380, 330
DIM_ALPHA = 0.22
CMAP = "viridis"
HOVER_PX = 8.0
HOVER_COLUMNS = ("teff", "logg", "feh", "prot_days", "age_gyr", "binary_class", "ruwe")
_POOL = ThreadPoolExecutor(max_workers=3, thread_name_prefix="desa-maps")  # stateless workers, shared
UMAP_LABELS = {"umap": "DESA", "umap_lc": "light curve", "umap_spec": "spectrum"}


def _spread_px(count: np.ndarray, max_px: int = 3) -> int:
    """How many pixels to spread a layer by: more when few pixels are lit (dynspread-like)."""
    lit = float(np.count_nonzero(count)) / max(1, count.size)
    for px, frac in ((0, 0.05), (1, 0.01), (2, 0.002)):
        if lit >= frac:
            return min(px, max_px)
    return max_px


def _canvas(x_range, y_range, width, height):
    return ds.Canvas(plot_width=int(width), plot_height=int(height), x_range=tuple(map(float, x_range)),
                     y_range=tuple(map(float, y_range)))


def _pixel_path(pixels: PixelIndex | None, x_range, y_range, width, height) -> bool:
    """Whether ``pixels`` bins this frame (the map's default view), so a raster is a count of pixel numbers."""
    return pixels is not None and pixels.matches(x_range, y_range, width, height)


def _as_agg(arr: np.ndarray, cv: ds.Canvas, categories=None) -> xr.DataArray:
    """Counts from :class:`PixelIndex` as the DataArray datashader would return (same dims, coords, attrs), for
    its spread and shade functions."""
    xs = cv.x_axis.compute_index(cv.x_axis.compute_scale_and_translate(cv.x_range, cv.plot_width), cv.plot_width)
    ys = cv.y_axis.compute_index(cv.y_axis.compute_scale_and_translate(cv.y_range, cv.plot_height),
                                 cv.plot_height)
    coords, dims = {"y": ys, "x": xs}, ["y", "x"]
    if categories is not None:
        coords["c"], dims = np.asarray(categories), dims + ["c"]
    return xr.DataArray(arr, coords=coords, dims=dims, attrs={"x_range": cv.x_range, "y_range": cv.y_range})


def _spread_add(a: np.ndarray, px: int) -> np.ndarray:
    """``datashader.transfer_functions.spread(a, px, how="add")`` of a count or sum raster, in numpy: each pixel
    gets the sum of the pixels within datashader's circle of radius ``px`` around it (NaN counts as 0). The same
    result without datashader's kernel, whose first compile takes ~3 s of a server's start."""
    a = np.nan_to_num(np.asarray(a), copy=False)
    if px <= 0:
        return a
    h, w = a.shape
    r = np.arange(-px, px + 1)
    pad = np.zeros((h + 2 * px, w + 2 * px), np.float64 if a.dtype.kind == "f" else np.int64)
    for i, j in zip(*np.nonzero(np.sqrt(r ** 2 + r[:, None] ** 2) <= px + 0.5)):   # datashader's _circle_mask
        pad[i:i + h, j:j + w] += a
    return pad[px:px + h, px:px + w]


def aggregate(x: np.ndarray, y: np.ndarray, values: np.ndarray | None, rows: np.ndarray | None,
              x_range, y_range, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT,
              spread: bool = True, pixels: PixelIndex | None = None) -> np.ndarray:
    """Rasterise stars onto a (height, width) grid: counts (values None) or the mean of ``values``.

    ``rows`` restricts to those row positions. Empty pixels are NaN so that they are transparent. ``pixels``
    (the map's :class:`PixelIndex`) is used when it bins this very frame; otherwise datashader bins x and y.
    """
    if _pixel_path(pixels, x_range, y_range, width, height):
        n, s = (pixels.counts(rows), None) if values is None else pixels.counts_and_sums(values, rows)
    else:
        if rows is not None:
            x, y = x[rows], y[rows]
            values = values[rows] if values is not None else None
        cols = {"x": x, "y": y}
        if values is not None:
            cols["v"] = values
        cv = _canvas(x_range, y_range, width, height)
        df = pd.DataFrame(cols, copy=False)
        if values is None:
            n, s = cv.points(df, "x", "y", agg=ds.count()).values, None
        else:
            agg = cv.points(df, "x", "y", agg=ds.summary(n=ds.count("v"), s=ds.sum("v")))
            n, s = agg["n"].values, agg["s"].values
    px = _spread_px(n) if spread else 0
    n = _spread_add(n, px).astype(np.float32)
    if s is None:
        n[n == 0] = np.nan
        return n
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (_spread_add(s, px) / n).astype(np.float32)
    out[n == 0] = np.nan
    return out


def aggregate_categories(x: np.ndarray, y: np.ndarray, codes: np.ndarray, colours, rows: np.ndarray | None,
                         x_range, y_range, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT,
                         spread: bool = True, pixels: PixelIndex | None = None) -> np.ndarray:
    """Rasterise stars by class: datashader ``count_cat`` per pixel, shaded with the fixed colour key (a pixel
    mixes its classes' colours by their counts; opacity follows the total, histogram-equalised). Returns the
    (height, width) uint32 RGBA image, rows bottom to top; stars with code -1 are left out. ``pixels`` as in
    :func:`aggregate`."""
    k = len(colours)
    cats = [str(i) for i in range(k)]
    cv = _canvas(x_range, y_range, width, height)
    if _pixel_path(pixels, x_range, y_range, width, height):
        agg = _as_agg(pixels.category_counts(codes, k, rows), cv, cats)
    else:
        if rows is None:
            rows = np.flatnonzero(codes >= 0)
        else:
            rows = rows[codes[rows] >= 0]
        cat = pd.Categorical.from_codes(np.asarray(codes[rows], dtype=np.int16), categories=cats)
        df = pd.DataFrame({"x": x[rows], "y": y[rows], "c": cat}, copy=False)
        agg = cv.points(df, "x", "y", agg=ds.count_cat("c"))
    img = tf.shade(agg, color_key={str(i): c for i, c in enumerate(colours)}, how="eq_hist", min_alpha=90)
    total = agg.sum(dim=agg.dims[-1]).values
    px = _spread_px(total) if spread else 0
    if px:
        img = tf.spread(img, px=px)
    return np.ascontiguousarray(img.data, dtype=np.uint32)


def category_counts(codes: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    c = codes if rows is None else codes[rows]
    return np.bincount(c[c >= 0].astype(np.int64), minlength=k)[:k]


def _warm_samples():
    rng = np.random.default_rng(0)
    for n in (5, 50, 500, 20_000):  # sparse to dense: each spread width once
        x, y, v = (rng.normal(size=n).astype(np.float32) for _ in range(3))
        yield x, y, v, rng.integers(-1, 3, n).astype(np.int16), np.arange(n // 2)


def warm_kernels():
    """Compile the numba kernels a map at its default view coloured by density or a column uses (app.pixels'
    counts, every spread width) before the first visitor: ~1 s."""
    for x, y, v, codes, half in _warm_samples():
        pixels = PixelIndex(x, y, (-3, 3), (-3, 3), FRAME_WIDTH, FRAME_HEIGHT)
        in_box(x, y, -1.0, 1.0, -1.0, 1.0)
        for rows in (None, half):
            aggregate(x, y, None, rows, (-3, 3), (-3, 3), pixels=pixels)
            aggregate(x, y, v, rows, (-3, 3), (-3, 3), pixels=pixels)


def warm_more_kernels():
    """Compile the rest: datashader's binning (a zoomed map) and its class shading and image spreading (a class
    colouring), ~6 s that the server spends after the page opens."""
    for x, y, v, codes, half in _warm_samples():
        pixels = PixelIndex(x, y, (-3, 3), (-3, 3), FRAME_WIDTH, FRAME_HEIGHT)
        aggregate(x, y, None, None, (-3, 3), (-3, 3))
        aggregate(x, y, v, half, (-3, 3), (-3, 3))
        for p in (None, pixels):
            aggregate_categories(x, y, codes, ("#ff0000", "#00ff00", "#0000ff"), half, (-3, 3), (-3, 3), pixels=p)


def _rgb_array(img: np.ndarray) -> np.ndarray:
    """A datashader uint32 image (rows bottom to top) as the (H, W, 4) uint8 array hv.RGB takes (top first)."""
    h, w = img.shape
    return np.flipud(img.view(np.uint8).reshape(h, w, 4))


_EMPTY_RGBA = np.zeros((1, 1, 4), np.uint8)
_EMPTY_IMAGE = np.full((1, 1), np.nan, np.float32)


class Maps(pn.viewable.Viewer):
    """The linked maps of one session, with colour choice, legend, hover read-out and selection count."""

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        self.data = session.data
        self._cache: dict = {}
        self._cache_lock = threading.Lock()
        self.last_render_s: dict[str, float] = {}
        self.keys = list(self.data.maps)
        self.umap_keys = [k for k in UMAP_VIEWS if k in self.data.maps]
        if session.umap_view not in self.umap_keys and self.umap_keys:
            session.umap_view = self.umap_keys[0]
        self.colour_select = pn.widgets.Select(label="Colour by", options=session.colour_options(),
                                               value=session.color if session.color in session.colour_options()
                                               else "density", width=190)
        self.colour_select.link(session, value="color")
        session.param.watch(self._on_colour, "color")
        session.param.watch(self._refresh_colour_options,
                            ["prediction_version", "populations_version", "clusters_version"])
        self.mode_select = pn.widgets.RadioButtonGroup(label="Selection mode", options={
            "new": "new", "add": "add", "and": "and", "sub": "sub"}, value="new")
        self.mode_select.link(session, value="select_mode")
        self.clear_button = pn.widgets.Button(label="Clear selection", width=120)
        self.clear_button.on_click(lambda e: session.clear_selection())
        self.contours_toggle = pn.widgets.Checkbox(label="density contours", value=session.show_contours)
        self.contours_toggle.link(session, value="show_contours")
        self.umap_switch = pn.widgets.RadioButtonGroup(
            label="UMAP of", options={UMAP_LABELS[k]: k for k in self.umap_keys}, value=session.umap_view)
        self.umap_switch.link(session, value="umap_view")
        session.param.watch(self._on_umap_view, "umap_view")
        self.count = pn.pane.Markdown(self._count_text(), margin=(5, 10))
        self.colour_label = pn.pane.HTML(self._colour_text(), margin=(5, 10))
        self.legend = pn.pane.HTML("", margin=(0, 10), sizing_mode="stretch_width")
        self.hover_info = pn.pane.HTML(self._hover_text(None), margin=(0, 10), sizing_mode="stretch_width")
        self.hover: tuple[str, int] | None = None   # (map key, row) of the star under the cursor
        session.param.watch(lambda *e: setattr(self.count, "object", self._count_text()),
                            ["selection_count", "selection_version"])
        session.param.watch(self._refresh_labels, ["color", "prediction_version", "populations_version",
                                                    "clusters_version", "selection_version"])
        self._refresh_labels()
        # Registered before the maps' own stream watchers, so the rasters are computed in parallel
        # (datashader's kernels release the GIL) before the maps ask for them one after the other.
        session.param.watch(self._prefetch, ["selection_version", "color", "prediction_version", "clusters_version",
                                             "populations_version"])
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
        # A change of colour is handled by _on_colour_change (a class -> class change is pushed straight into
        # the Bokeh sources); the other parameters redraw the maps through HoloViews.
        params_stream = hv.streams.Params(session, ["prediction_version", "clusters_version",
                                                    "populations_version", "show_contours"])
        self._counters: dict[str, hv.streams.Counter] = {}
        self._stale: set[str] = set()   # maps with a plot, off the page, drawn in an older colour
        for key in self.keys:
            self._build_map(key, params_stream)
        self.row = pn.Row(*[self.panes[k] for k in self.shown_keys()])
        session.param.watch(self._on_colour_change, "color")   # after _prefetch: the rasters are ready

    def _build_map(self, key, params_stream):
        m = self.data.maps[key]
        rng = hv.streams.RangeXY()
        # redraw(key) bumps this map's counter: HoloViews memoises frames on the streams' values, so a plain
        # dmap.event() with nothing changed would hand back the last frame.
        counter = hv.streams.Counter()
        self._counters[key] = counter
        dmap = hv.DynamicMap(self._callback(key), streams=[rng, params_stream, counter])
        # Options are attached once, to template elements whose option ids every frame reuses: options
        # applied per frame (or on the DynamicMap) are re-resolved on every event and slow it down.
        kd = [m.x, m.y]
        axes = dict(invert_xaxis=m.invert_x, invert_yaxis=m.invert_y)
        templates = {
            "base": hv.Image(np.zeros((2, 2)), kdims=kd, group="Base").opts(alpha=DIM_ALPHA, cmap=CMAP, **axes),
            "top": hv.Image(np.zeros((2, 2)), kdims=kd, group="Selected").opts(
                alpha=1.0, cmap=CMAP, colorbar=True, colorbar_position="right", clabel=" ",
                tools=["box_select", "lasso_select", "tap"], active_tools=["box_select"],
                hooks=[self._colorbar_hook], **axes),
            "base_rgb": hv.RGB(_EMPTY_RGBA, kdims=kd, group="BaseClasses").opts(alpha=DIM_ALPHA, **axes),
            "top_rgb": hv.RGB(_EMPTY_RGBA, kdims=kd, group="SelectedClasses").opts(alpha=1.0, **axes),
            "contours": hv.Contours([], kdims=kd, group="Contours").opts(color="black", line_width=1,
                                                                           alpha=0.55),
            "neighbours": hv.Points([], kdims=kd, group="Neighbours").opts(
                color="cyan", line_color="black", size=7, tools=["hover"]),
            "target": hv.Points([], kdims=kd, group="Target").opts(
                color="magenta", line_color="black", size=18, marker="star"),
            "hover": hv.Points([], kdims=kd, group="Hover").opts(
                fill_alpha=0.0, line_color="red", line_width=2, size=14),
            "overlay": hv.Overlay([hv.Points([], kdims=kd)]).opts(
                title=self.data.map_title(key), frame_width=FRAME_WIDTH, frame_height=FRAME_HEIGHT,
                toolbar="above"),
        }
        # HoloViews drops custom options once no element carries their id: keep the templates alive.
        self._templates[key] = templates
        self._opt_ids[key] = {k: t.id for k, t in templates.items()}
        for stream, handler in ((hv.streams.BoundsXY, self._bounds_handler), (hv.streams.Lasso, self._lasso_handler),
                                (hv.streams.Tap, self._tap_handler), (hv.streams.PointerXY, self._pointer_handler)):
            stream(source=dmap).add_subscriber(handler(key))
        self.dmaps[key] = dmap
        self.range_streams[key] = rng
        self.panes[key] = pn.pane.HoloViews(dmap, linked_axes=False)

    def shown_keys(self) -> list[str]:
        """The maps on the page: the chosen UMAP layout, then the CMD and the HR diagram."""
        first = [self.session.umap_view] if self.session.umap_view in self.data.maps else []
        return first + [k for k in self.keys if k not in UMAP_VIEWS]

    def _on_umap_view(self, event):
        if event.new not in self.data.maps:
            return
        self.row.objects = [self.panes[k] for k in self.shown_keys()]
        if event.new in self._stale:
            self._stale.discard(event.new)
            self.redraw(event.new)
        if self.umap_switch.value != event.new:
            self.umap_switch.value = event.new

    def restore_umap_view(self, key: str):
        """Show the UMAP layout ``key`` (from a URL): only the layouts this artifact set has."""
        if key not in self.umap_keys:
            raise UserInputError(f"no map {key[:30]!r}; this artifact set has {', '.join(self.umap_keys)}")
        self.session.umap_view = key

    # --- text ---------------------------------------------------------------------------------------
    def _count_text(self) -> str:
        n = self.data.n
        c = self.session.selection_count if self.session.selection is not None else None
        if c is None:
            return f"**Selected: none** of {n:,} stars (drag a box or lasso on any map)"
        return f"**Selected: {c:,}** of {n:,} stars ({100.0 * c / max(n, 1):.2f}%)"

    def _colour_text(self) -> str:
        c = self._colouring()
        if c.kind == "density":
            return "Colour: log10 stars per pixel"
        if c.kind == "categorical":
            return f"Colour: {esc(c.label)} (one colour per class; pixels mix their classes)"
        return f"Colour: mean {esc(c.label)} per pixel"

    def _legend_html(self) -> str:
        c = self._colouring()
        if c.kind != "categorical":
            return ""
        n_all = category_counts(c.values, len(c.categories))
        sel = self.session.selection
        n_sel = category_counts(c.values, len(c.categories), np.flatnonzero(sel)) if sel is not None else None
        items = []
        for i, (name, colour) in enumerate(zip(c.categories, c.colours)):
            counts = f"{n_all[i]:,}" + (f" / {n_sel[i]:,} selected" if n_sel is not None else "")
            items.append(f'<span style="display:inline-block;margin-right:14px;white-space:nowrap">'
                         f'<span style="display:inline-block;width:11px;height:11px;background:{colour};'
                         f'border:1px solid #555;margin-right:4px"></span>{esc(name)} ({counts})</span>')
        return "<div class='desa-legend'><b>Legend</b>: " + "".join(items) + "</div>"

    def _refresh_labels(self, *_):
        self.colour_label.object = self._colour_text()
        self.legend.object = self._legend_html()
        self.legend.visible = bool(self.legend.object)

    def _hover_text(self, hit) -> str:
        if hit is None:
            return "<small>Hover over a star on a map to see it here; click it to open its detail.</small>"
        key, row = hit
        s = self.data.stars.row(row)
        parts = [f"<b>{esc(self.data.star_ids[row])}</b>"]
        for col in HOVER_COLUMNS:
            if col in s.index:
                v = s[col]
                if isinstance(v, (float, np.floating)):
                    v = "n/a" if not np.isfinite(v) else f"{v:.4g}"
                parts.append(f"{esc(col)} {esc(v)}")
        return "<small>" + " &middot; ".join(parts) + "</small>"

    def restore_colour(self, name: str):
        """Colour the maps by ``name`` (from a URL): only the page's own colour options are accepted."""
        if name not in self.colour_select.options:
            raise UserInputError(f"no colour {name[:40]!r}; the maps can be coloured by "
                                 f"{', '.join(map(str, self.colour_select.options[:8]))}, ...")
        self.session.color = name

    def _on_colour(self, event):
        if self.colour_select.value != event.new and event.new in self.colour_select.options:
            self.colour_select.value = event.new

    def _refresh_colour_options(self, *_):
        opts = self.session.colour_options()
        if list(self.colour_select.options) != opts:
            self.colour_select.options = opts

    # --- rendering ----------------------------------------------------------------------------------
    def _colouring(self) -> Colouring:
        try:
            return self.session.colouring()
        except UserInputError:
            return Colouring("density", "density", label="log10 stars per pixel")

    def _limits(self, c: Colouring):
        if c.name == "probe prediction":
            v = c.values[np.isfinite(c.values)]
            if len(v) > 200_000:
                v = v[:: len(v) // 200_000]
            lo, hi = (np.percentile(v, [1, 99]) if len(v) else (0.0, 1.0))
            return (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
        return self.data.colour_limits(c.name)

    def _ranges(self, key, x_range=None, y_range=None):
        dx, dy = self.data.default_range(key)
        x_range = tuple(map(float, x_range)) if x_range and None not in x_range else dx
        y_range = tuple(map(float, y_range)) if y_range and None not in y_range else dy
        return x_range, y_range

    def _raster(self, key, c: Colouring, rows, x_range, y_range):
        m = self.data.maps[key]
        x, y = self.data.column(m.x), self.data.column(m.y)
        # at the default view (where nearly every selection is drawn) by each star's pixel number, else datashader
        pixels = (self.data.map_pixels(key, FRAME_WIDTH, FRAME_HEIGHT)
                  if (x_range, y_range) == self.data.default_range(key) else None)
        if c.kind == "categorical":
            return aggregate_categories(x, y, c.values, c.colours, rows, x_range, y_range, pixels=pixels)
        return aggregate(x, y, c.values if c.kind == "numeric" else None, rows, x_range, y_range, pixels=pixels)

    def _layers(self, key, x_range, y_range):
        """(all stars, selected stars or None, colouring, cache key) rasters of one map, cached per selection,
        colouring and zoom. Numeric/density rasters are float arrays, class rasters uint32 RGBA images."""
        c = self._colouring()
        ckey = (key, c.key, x_range, y_range)
        sel, version = self.session.selection, self.session.selection_version
        with self._cache_lock:
            hit = self._cache.get(key)
        base = hit["base"] if hit and hit["ckey"] == ckey else None
        # top: an array, False (nothing selected) or None (not computed yet)
        top = hit["top"] if hit and hit["ckey"] == ckey and hit["version"] == version else None
        if base is None:
            if c.name == "density" or (c.version == 0 and (c.name in self.data.colour_columns
                                                           or c.name in self.data.categorical_columns)):
                base = self.data.shared_raster(ckey, lambda: self._raster(key, c, None, x_range, y_range))
            else:   # a colouring of this session's own (probe, populations, clusters)
                base = self._raster(key, c, None, x_range, y_range)
        if top is None:
            top = False if sel is None else self._raster(key, c, self.session.selected_rows(), x_range, y_range)
        with self._cache_lock:
            self._cache[key] = {"ckey": ckey, "version": version, "base": base, "top": top}
        return base, (None if top is False else top), c, ckey

    def _prefetch(self, *_):
        self.session.selected_rows()   # once, here: each map's thread would otherwise scan the mask itself
        futures = []
        for key in self.shown_keys():
            xr, yr = self._ranges(key, self.range_streams[key].x_range, self.range_streams[key].y_range)
            futures.append(_POOL.submit(self._layers, key, xr, yr))
        for f in futures:
            try:
                f.result()
            except Exception:  # the map's own callback will meet the same error and report it
                log.debug("prefetch failed", exc_info=True)

    def selected_image(self, key: str, x_range=None, y_range=None) -> np.ndarray:
        """The "Selected" layer's pixels as Bokeh draws them (rows bottom to top): float values, or uint32
        RGBA for a class colouring."""
        x_range, y_range = self._ranges(key, x_range, y_range)
        base, top, c, _ = self._layers(key, x_range, y_range)
        arr = base if top is None else top
        if c.kind == "density":
            with np.errstate(divide="ignore"):
                arr = np.log10(arr)
        return arr

    def _plots(self, key):
        pane = self.panes.get(key)
        return [p for p, _ in getattr(pane, "_plots", {}).values()] if pane is not None else []

    def _apply(self, key, plot, fn, *args):
        """Run ``fn(key, plot, *args)`` now, or on the session's next tick when the document is locked."""
        doc = plot.document
        if doc is not None and doc.session_context and not pn.state._unblocked(doc):
            # Outside the document lock (a threaded server): apply on the session's next tick, as HoloViews
            # does for its own refreshes.
            doc.add_next_tick_callback(partial(fn, key, plot, *args))
        else:
            fn(key, plot, *args)

    def _push_selection(self, *_):
        for key in self.keys:
            plots = self._plots(key)
            if not plots:
                continue  # not on a page yet: render() reads the current selection when it is drawn
            try:
                rng = self.range_streams[key]
                img = self.selected_image(key, rng.x_range, rng.y_range)
                kind = self._colouring().kind
                for plot in plots:
                    self._apply(key, plot, self._set_selected_image, img, kind)
            except Exception:  # anything unexpected: let HoloViews redraw the whole map
                log.debug("fast selection update failed for %s; full redraw", key, exc_info=True)
                self.redraw(key)

    def redraw(self, key: str):
        """Redraw map ``key`` through HoloViews from the session's current state."""
        self._counters[key].event()

    def _on_colour_change(self, event):
        """A new colour: from one class colouring to another only the two class rasters change, and they are
        pushed into the Bokeh sources (no HoloViews redraw); any other change redraws the maps."""
        def kind(name):
            try:
                return self.session.colouring(name).kind
            except UserInputError:
                return "density"
        fast = kind(event.old) == kind(event.new) == "categorical"
        shown = self.shown_keys()
        for key in self.keys:
            plots = self._plots(key)
            if not plots:
                continue   # not drawn yet: render() reads the colour when it is
            if key not in shown:
                self._stale.add(key)
                continue
            if not fast:
                self.redraw(key)
                continue
            try:
                rng = self.range_streams[key]
                base, top, _, _ = self._layers(key, *self._ranges(key, rng.x_range, rng.y_range))
                for plot in plots:
                    self._apply(key, plot, self._set_class_images, base, base if top is None else top)
            except Exception:
                log.debug("fast recolour failed for %s; full redraw", key, exc_info=True)
                self.redraw(key)

    def _set_class_images(self, key, plot, base, top):
        try:
            sources = [plot.subplots[(g, "I")].handles["source"] for g in ("BaseClasses", "SelectedClasses")]
            for source, img in zip(sources, (base, top)):
                if np.shape(source.data["image"][0]) != img.shape:
                    raise ValueError("the plot's raster has another shape")
            for source, img in zip(sources, (base, top)):
                data = dict(source.data)
                data["image"] = [img]
                with unlocked():
                    source.data = data
        except Exception:
            log.debug("fast recolour failed for %s; full redraw", key, exc_info=True)
            self.redraw(key)

    def _points_columns(self, key):
        m = self.data.maps[key]
        x, y = self.data.column(m.x), self.data.column(m.y)
        nb, t = self.session.neighbours, self.session.target_row
        rows = nb["row"].to_numpy() if nb is not None and len(nb) else np.zeros(0, np.int64)
        return {
            "Neighbours": {m.x: x[rows], m.y: y[rows],
                           "star_id": nb["star_id"].to_numpy() if len(rows) else np.zeros(0, object),
                           "similarity": nb["similarity"].to_numpy() if len(rows) else np.zeros(0)},
            "Target": self._target_xy(key, m, x, y, t),
        }

    def _target_xy(self, key, m, x, y, t):
        """The target's point: a catalogue row, or an upload's placed position on this map (none if unplaced)."""
        if t >= 0:
            return {m.x: x[[t]], m.y: y[[t]]}
        pos = self.session.target_positions.get(key)
        if pos is None:
            return {m.x: np.zeros(0, np.float32), m.y: np.zeros(0, np.float32)}
        return {m.x: np.array([pos[0]], np.float32), m.y: np.array([pos[1]], np.float32)}

    def _hover_columns(self, key):
        m = self.data.maps[key]
        h = self.hover
        if h is None or h[0] != key:
            return {"Hover": {m.x: np.zeros(0, np.float32), m.y: np.zeros(0, np.float32)}}
        return {"Hover": {m.x: self.data.column(m.x)[[h[1]]], m.y: self.data.column(m.y)[[h[1]]]}}

    def _push_points(self, *_):
        """New neighbours/target: replace the two small point layers' data in the Bokeh sources."""
        for key in self.keys:
            for plot in self._plots(key):
                self._apply(key, plot, self._set_points, self._points_columns(key))

    def _push_hover(self, keys):
        for key in keys:
            for plot in self._plots(key):
                self._apply(key, plot, self._set_points, self._hover_columns(key))

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
            self.redraw(key)

    def _set_selected_image(self, key, plot, img, kind):
        try:
            group = "SelectedClasses" if kind == "categorical" else "Selected"
            source = plot.subplots[(group, "I")].handles["source"]
            data = dict(source.data)
            if np.shape(data["image"][0]) != img.shape:
                raise ValueError("the plot's raster has another shape")
            data["image"] = [img]
            with unlocked():
                source.data = data
        except Exception:
            log.debug("fast selection update failed for %s; full redraw", key, exc_info=True)
            self.redraw(key)

    def _colorbar_hook(self, plot, element):
        """The colourbar belongs to numeric colourings; a class colouring has the legend instead."""
        cb = plot.handles.get("colorbar")
        if cb is not None:
            cb.visible = self._colouring().kind != "categorical"

    def render(self, key: str, x_range=None, y_range=None) -> hv.Overlay:
        """The map ``key`` as a HoloViews overlay at the given ranges (defaults: the whole data set).

        Layers by group: Base / Selected (numeric or density rasters), BaseClasses / SelectedClasses (class
        rasters), Contours, Neighbours, Target, Hover; the unused pair of rasters is empty."""
        t0 = time.perf_counter()
        m = self.data.maps[key]
        x_range, y_range = self._ranges(key, x_range, y_range)
        base_arr, top_arr, c, ckey = self._layers(key, x_range, y_range)
        ids = self._opt_ids[key]
        elements = self._elements.setdefault(key, {})
        kd = [hv.Dimension(m.x, label=m.x_label), hv.Dimension(m.y, label=m.y_label)]
        bounds = (x_range[0], y_range[0], x_range[1], y_range[1])
        # Elements that did not change are reused: building a HoloViews element costs milliseconds.
        if elements.get("base_key") != ckey:
            if c.kind == "categorical":
                clim, label = (0.0, 1.0), " "
                elements["base"] = hv.Image(_EMPTY_IMAGE, bounds=bounds, kdims=kd, group="Base", id=ids["base"])
                elements["base_rgb"] = hv.RGB(_rgb_array(base_arr), bounds=bounds, kdims=kd, group="BaseClasses",
                                              id=ids["base_rgb"])
            else:
                if c.kind == "density":  # log10 counts, so that sparse and dense regions both show
                    with np.errstate(divide="ignore"):
                        base_arr = np.log10(base_arr)
                    hi = float(np.nanmax(base_arr)) if np.isfinite(base_arr).any() else 1.0
                    clim, label = (0.0, max(hi, 0.5)), "log10 stars per pixel"
                else:
                    clim, label = self._limits(c), c.label
                vdim = hv.Dimension("value", label=label, range=clim)
                # datashader rows run bottom-to-top; hv.Image wants the top row first.
                elements["base"] = hv.Image(np.flipud(base_arr), bounds=bounds, kdims=kd, vdims=[vdim],
                                            group="Base", id=ids["base"])
                elements["base_rgb"] = hv.RGB(_EMPTY_RGBA, bounds=bounds, kdims=kd, group="BaseClasses",
                                              id=ids["base_rgb"])
            elements["vdim"] = hv.Dimension("value", label=label, range=clim)
            elements["base_key"] = ckey
        base_img, base_rgb, vdim = elements["base"], elements["base_rgb"], elements["vdim"]
        if c.kind == "categorical":
            top_img = hv.Image(_EMPTY_IMAGE, bounds=bounds, kdims=kd, vdims=[vdim], group="Selected", id=ids["top"])
            top_rgb = base_rgb.data if top_arr is None else _rgb_array(top_arr)
            top_rgb = hv.RGB(top_rgb, bounds=bounds, kdims=kd, group="SelectedClasses", id=ids["top_rgb"])
        else:
            if top_arr is None:  # nothing selected: every star at full opacity
                top_data = base_img.data
            else:
                if c.kind == "density":
                    with np.errstate(divide="ignore"):
                        top_arr = np.log10(top_arr)
                top_data = np.flipud(top_arr)
            top_img = hv.Image(top_data, bounds=bounds, kdims=kd, vdims=[vdim], group="Selected", id=ids["top"])
            top_rgb = hv.RGB(_EMPTY_RGBA, bounds=bounds, kdims=kd, group="SelectedClasses", id=ids["top_rgb"])
        paths = self.data.density_contours(key) if self.session.show_contours else []
        contours = hv.Contours(paths, kdims=kd, group="Contours", id=ids["contours"])
        nkey = (self.session.neighbours_version, self.session.target_row)
        if elements.get("points_key") != nkey:
            cols = self._points_columns(key)
            nb = cols["Neighbours"]
            elements["nb"] = hv.Points((nb[m.x], nb[m.y], nb["star_id"], nb["similarity"]), kdims=kd,
                                       vdims=["star_id", "similarity"], group="Neighbours", id=ids["neighbours"])
            elements["target"] = hv.Points((cols["Target"][m.x], cols["Target"][m.y]), kdims=kd, group="Target",
                                           id=ids["target"])
            elements["points_key"] = nkey
        hv_cols = self._hover_columns(key)["Hover"]
        hover = hv.Points((hv_cols[m.x], hv_cols[m.y]), kdims=kd, group="Hover", id=ids["hover"])
        out = hv.Overlay([base_img, top_img, base_rgb, top_rgb, contours, elements["nb"], elements["target"], hover],
                         id=ids["overlay"])
        self.last_render_s[key] = time.perf_counter() - t0
        return out

    def _callback(self, key):
        def cb(x_range=None, y_range=None, **_):
            return self.render(key, x_range, y_range)
        return cb

    # --- selection events ---------------------------------------------------------------------------
    def _guard(self, fn, *args):
        try:
            return fn(*args)
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

    def _pointer_handler(self, key):
        def handler(x=None, y=None, **_):
            self._guard(self.hover_at, key, x, y)
        return handler

    def nearest_star(self, key: str, x: float, y: float, max_px: float = 12.0) -> int:
        """Row of the star nearest a point of map ``key`` within ``max_px`` screen pixels at the current zoom,
        or -1 (a kd-tree of the map's coordinates, built once per process)."""
        rng = self.range_streams[key]
        xr, yr = self._ranges(key, rng.x_range, rng.y_range)
        return self.data.nearest_star(key, x, y, xr, yr, FRAME_WIDTH, FRAME_HEIGHT, max_px)

    def hover_at(self, key: str, x, y) -> int:
        """The cursor is at (x, y) on map ``key`` (None: it left): show the star under it, if any."""
        row = -1 if x is None or y is None else self.nearest_star(key, float(x), float(y), HOVER_PX)
        hit = (key, row) if row >= 0 else None
        if hit == self.hover:
            return row
        changed = {k for k in (self.hover[0] if self.hover else None, key) if k}
        self.hover = hit
        self.hover_info.object = self._hover_text(hit)
        self._push_hover(changed)
        return row

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
                          pn.Column(pn.pane.Markdown("UMAP of", margin=(0, 5)), self.umap_switch),
                          pn.Column(self.contours_toggle, self.count, self.colour_label))
        return pn.Column(controls, self.row, self.legend, self.hover_info)
