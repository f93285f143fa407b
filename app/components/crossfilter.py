"""Cross-filter: histograms of chosen columns for all stars and for the selection; brushing a range on one is a
selection step (``["and", "range", column, lo, hi]``) combined with the rest by the page's selection mode, and
carried by the URL like a box.

Each histogram is one ``bincount`` over bins computed once per process (:meth:`AppData.histogram_bins`), so
a new selection redraws them in milliseconds at 10^6 stars; they are redrawn only while the tab is open.
"""
from __future__ import annotations

import logging

import holoviews as hv
import numpy as np
import panel as pn
import param

from app.state import Session, UserInputError

log = logging.getLogger(__name__)

DEFAULT_COLUMNS = ("teff", "logg", "feh", "prot_days", "age_gyr", "ruwe")
MAX_PANELS = 6
ALL_COLOUR, SELECTED_COLOUR = "#9e9e9e", "#1f77b4"


class CrossFilter(pn.viewable.Viewer):
    version = param.Integer(default=0)   # bumped to redraw the histograms

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        self.data = session.data
        numeric = [c for c in self.data.numeric_columns]
        defaults = [c for c in DEFAULT_COLUMNS if c in numeric] or numeric[:4]
        self.columns = pn.widgets.MultiChoice(name="Columns (at most 6)", options=numeric,
                                              value=defaults[:MAX_PANELS], max_items=MAX_PANELS, width=520)
        self.normalise = pn.widgets.Checkbox(name="normalise (compare shapes, not counts)", value=True)
        self.columns.param.watch(self._rebuild, "value")
        self.normalise.param.watch(lambda e: self._redraw(), "value")
        self.help = pn.pane.HTML(
            "<small>Grey: all stars; blue: the selection. Drag on a histogram (x box select) to select that range "
            "of the column; the selection mode above the maps says how it combines with the current selection."
            "</small>", sizing_mode="stretch_width")
        self.grid = pn.GridBox(ncols=3)
        self.panes: dict[str, pn.pane.HoloViews] = {}
        self._dirty = True
        self.visible = False   # set by the page: redrawn only while the tab is open
        session.param.watch(lambda e: self._redraw(), "selection_version")
        self._rebuild()

    # --- the page -----------------------------------------------------------------------------------
    def set_visible(self, visible: bool):
        self.visible = bool(visible)
        if self.visible and self._dirty:
            self._redraw()

    def _redraw(self):
        if not self.visible:
            self._dirty = True
            return
        self._dirty = False
        self.version += 1

    def _rebuild(self, *_):
        cols = [c for c in self.columns.value if c in self.data.numeric_columns][:MAX_PANELS]
        self.panes = {}
        for col in cols:
            # two DynamicMaps: the brush (an x box select) is only sent by a plot whose *element* carries the
            # active tool, which an Overlay returned by one DynamicMap does not (Bokeh 3.9 / HoloViews 1.23)
            base = hv.DynamicMap(self._callback(self.base, col), streams=[hv.streams.Params(self, ["version"])])
            top = hv.DynamicMap(self._callback(self.layers, col), streams=[hv.streams.Params(self, ["version"])])
            hv.streams.BoundsX(source=base).add_subscriber(self._brush_handler(col))
            self.panes[col] = pn.pane.HoloViews((base * top).opts(show_legend=False, toolbar="above"),
                                                linked_axes=False)
        self.grid.objects = list(self.panes.values())

    # --- histograms ---------------------------------------------------------------------------------
    def histograms(self, col: str) -> dict:
        """What the histogram of ``col`` shows: edges, counts of all stars and of the selection, log axis?"""
        edges, _, log_axis = self.data.histogram_bins(col)
        _, n_all = self.data.histogram(col)
        sel = self.session.selection
        n_sel = self.data.histogram(col, sel)[1] if sel is not None else None
        return {"edges": edges, "all": n_all, "selected": n_sel, "log": log_axis}

    @staticmethod
    def _callback(fn, col):
        def callback(version):
            return fn(col)
        return callback

    def _scaled(self, edges, counts):
        counts = counts.astype(np.float64)
        if not self.normalise.value:
            return counts
        return counts / max(counts.sum(), 1.0) / np.diff(edges)

    @property
    def _ylabel(self) -> str:
        return "density" if self.normalise.value else "stars"

    def base(self, col: str):
        """The histogram of all stars, titled with the counts; the plot the brush is drawn on."""
        h = self.histograms(col)
        title = f"{col}: {int(h['all'].sum()):,} stars"
        if h["selected"] is not None:
            title += f", {int(h['selected'].sum()):,} selected"
        return hv.Histogram((h["edges"], self._scaled(h["edges"], h["all"])), kdims=col, vdims=self._ylabel,
                            label="all").opts(
            fill_color=ALL_COLOUR, alpha=0.6, line_color=None, tools=["xbox_select"],
            active_tools=["xbox_select"], logx=bool(h["log"]), title=title, width=330, height=220)

    def layers(self, col: str):
        """Drawn over :meth:`base`: the selection's histogram (empty without a selection) and the brushed
        ranges of ``col`` as shaded spans."""
        h = self.histograms(col)
        sel = h["selected"] if h["selected"] is not None else np.zeros_like(h["all"])
        layers = [hv.Histogram((h["edges"], self._scaled(h["edges"], sel)), kdims=col, vdims=self._ylabel,
                               label="selected").opts(fill_color=SELECTED_COLOUR, alpha=0.6, line_color=None,
                                                      logx=bool(h["log"]))]
        for lo, hi in self.brushed(col):
            layers.append(hv.VSpan(lo, hi).opts(color="orange", alpha=0.15))
        return hv.Overlay(layers)

    def figure(self, col: str):
        """What the panel of ``col`` draws: all stars, the selection, the brushed ranges."""
        return (self.base(col) * self.layers(col)).opts(show_legend=False, toolbar="above")

    def brushed(self, col: str) -> list[tuple[float, float]]:
        """The ranges of ``col`` in the current selection's top-level steps (drawn as shaded spans)."""
        return [(min(s[3], s[4]), max(s[3], s[4])) for s in self.session.selection_steps
                if s[1] == "range" and s[2] == col]

    # --- brushing -----------------------------------------------------------------------------------
    def brush(self, col: str, lo: float, hi: float, mode: str | None = None) -> int:
        """Select the stars with ``lo <= col <= hi`` (combined by ``mode``, default the page's); returns the
        size of the new selection."""
        try:
            mask = self.session.apply_step("range", col, float(lo), float(hi), mode=mode)
        except UserInputError as e:
            self.session.notify(str(e), "warning")
            return self.session.selection_count
        self.session.notify(f"selected {col} from {lo:.4g} to {hi:.4g}: {int(mask.sum()):,} stars", "info")
        return int(mask.sum())

    def _brush_handler(self, col):
        def handler(boundsx=None, **_):
            if boundsx is None:
                return
            lo, hi = boundsx
            if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
                return
            try:
                self.brush(col, round(float(lo), 6), round(float(hi), 6))
            except Exception:   # a brush must never break the page
                log.exception("cross-filter brush failed")
        return handler

    def __panel__(self):
        return pn.Column(pn.Row(self.columns, self.normalise), self.help, self.grid)
