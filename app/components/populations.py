"""Populations: named groups of stars defined by safe expressions or saved selections, combined TOPCAT-style,
and compared.

Expressions use catalogue column names only (``prot_days < 7 and binary_class == 'close_sync'``): they are
checked against a whitelist of syntax (no calls, attributes or variables) and evaluated by pandas over the
named columns. Two presets follow the rotation literature: synchronized binaries (fast rotators in close,
tidally locked binaries) and young fast rotators (fast single stars younger than 1 Gyr).

Comparing two populations shows where each sits on the three maps, histograms of rotation period, age,
Teff, [Fe/H], RUWE and height above the main sequence, and a *separation score*: the balanced accuracy of a
k-nearest-neighbour classifier telling the two apart (5-fold cross-validated, equal class sizes), in the
DESA embedding and in the light-curve-only and spectrum-only embeddings. 0.5 means indistinguishable.
"""
from __future__ import annotations

import logging

import datashader as ds
import datashader.transfer_functions as tf
import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from app.state import (ALL_STARS, CURRENT_SELECTION, EMBEDDING_LABELS, PRESET_POPULATIONS, AppData, Session,
                       UserInputError, preset_populations)
from app.text import esc

log = logging.getLogger(__name__)

COMPARE_COLUMNS = [("prot_days", "P_rot [d]"), ("age_gyr", "age [Gyr]"), ("teff", "Teff [K]"),
                   ("feh", "[Fe/H]"), ("ruwe", "RUWE"), ("delta_mag_ms", "mag above main sequence")]
COLOUR_A, COLOUR_B = "#d62728", "#1f77b4"


def separation_score(data: AppData, mask_a: np.ndarray, mask_b: np.ndarray, embedding: str, k: int = 10,
                     max_per_class: int = 1500, seed: int = 0) -> dict:
    """k-NN balanced accuracy separating two populations in one embedding (5-fold CV, equal class sizes).

    Stars in both populations, and stars without this embedding, are left out. Returns the score and the
    number of stars per class that entered it."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    has = data.has_embedding(embedding)
    only_a = mask_a & ~mask_b & has
    only_b = mask_b & ~mask_a & has
    ra, rb = np.flatnonzero(only_a), np.flatnonzero(only_b)
    n = min(len(ra), len(rb), max_per_class)
    if n < 5:
        return {"embedding": embedding, "balanced_accuracy": float("nan"), "n_per_class": int(n),
                "note": "fewer than 5 stars in one population (after removing overlap and missing embeddings)"}
    rng = np.random.default_rng(seed)
    ra, rb = np.sort(rng.choice(ra, n, replace=False)), np.sort(rng.choice(rb, n, replace=False))
    rows = np.concatenate([ra, rb])
    order = np.argsort(rows)
    emb = data.embedding(embedding)
    x = np.asarray(emb[rows[order]], dtype=np.float32)[np.argsort(order)]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # cosine geometry, as in the index
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    folds = min(5, n)
    pred = cross_val_predict(KNeighborsClassifier(n_neighbors=min(k, 2 * n - 2 * n // folds - 1)), x, y,
                             cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return {"embedding": embedding, "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "n_per_class": int(n)}


def compare_images(data: AppData, mask_a: np.ndarray, mask_b: np.ndarray, width: int = 300,
                   height: int = 260) -> dict[str, hv.RGB]:
    """Per map: all stars in grey, population A in red and B in blue (RGB, server side)."""
    out = {}
    for key in [k for k in ("umap", "cmd", "hr") if k in data.maps]:
        m = data.maps[key]
        (x0, x1), (y0, y1) = data.default_range(key)
        cv = ds.Canvas(plot_width=width, plot_height=height, x_range=(x0, x1), y_range=(y0, y1))
        x, y = data.column(m.x), data.column(m.y)
        layers = []
        for mask, colour in ((None, "#bbbbbb"), (mask_a, COLOUR_A), (mask_b, COLOUR_B)):
            if mask is None:
                df = pd.DataFrame({"x": x, "y": y}, copy=False)
            else:
                rows = np.flatnonzero(mask)
                df = pd.DataFrame({"x": x[rows], "y": y[rows]}, copy=False)
            agg = cv.points(df, "x", "y", agg=ds.count())
            img = tf.shade(agg, cmap=[colour, colour], how="eq_hist", min_alpha=60 if mask is None else 160)
            layers.append(tf.spread(img, px=1) if mask is not None else img)
        rgb = tf.stack(*layers)
        arr = np.flipud(rgb.to_numpy().view(np.uint8).reshape(height, width, 4))
        el = hv.RGB(arr, bounds=(x0, y0, x1, y1), kdims=[m.x_label, m.y_label])
        out[key] = el.opts(title=data.map_title(key), frame_width=width, frame_height=height,
                           invert_xaxis=m.invert_x, invert_yaxis=m.invert_y, toolbar=None)
    return out


def compare_histograms(data: AppData, mask_a: np.ndarray, mask_b: np.ndarray, label_a: str, label_b: str):
    plots = []
    for col, label in COMPARE_COLUMNS:
        if col not in data.stars.columns:
            continue
        v = data.column(col)
        va, vb = v[mask_a], v[mask_b]
        va, vb = va[np.isfinite(va)], vb[np.isfinite(vb)]
        both = np.concatenate([va, vb])
        if len(both) == 0:
            continue
        lo, hi = np.percentile(both, [0.5, 99.5])
        log_scale = bool(col == "prot_days" and lo > 0)  # a numpy bool is refused by HoloViews options
        if log_scale:
            edges = np.logspace(np.log10(lo), np.log10(hi), 31)
        else:
            edges = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        ha = hv.Histogram(np.histogram(va, edges, density=True), kdims=label, vdims="density", label=label_a)
        hb = hv.Histogram(np.histogram(vb, edges, density=True), kdims=label, vdims="density", label=label_b)
        plots.append((ha.opts(fill_color=COLOUR_A, alpha=0.5, line_color=None) *
                      hb.opts(fill_color=COLOUR_B, alpha=0.5, line_color=None)).opts(
            width=300, height=220, logx=log_scale, show_legend=len(plots) == 0, legend_position="top_right"))
    if not plots:
        return hv.Div("no comparable columns")
    # each panel its own y range: the densities of Teff (1/K) and RUWE differ by 10^4
    return hv.Layout(plots).cols(3).opts(shared_axes=False)


class Populations(pn.viewable.Viewer):
    """Expressions, saved populations, union/intersection and comparison of two populations."""

    expression = param.String(default=PRESET_POPULATIONS["synchronized binaries"])
    pop_name = param.String(default="synchronized binaries")
    pop_a = param.Selector(default=None, objects=[])
    pop_b = param.Selector(default=None, objects=[])

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        self.data = session.data
        self.presets = preset_populations(self.data.stars)
        for name, expr in self.presets.items():
            try:
                session.define_population(name, expr=expr)
            except UserInputError as e:  # a catalogue without these columns: no preset, say why
                log.info("preset %r unavailable: %s", name, e)
        self.last_scores: list[dict] = []
        self._list = pn.widgets.Tabulator(self._population_table(), disabled=True, show_index=False, height=180,
                                          width=520)
        self._compare = pn.Column()
        session.param.watch(self._refresh, "populations_version")
        self._refresh()

    def _population_table(self) -> pd.DataFrame:
        rows = [{"population": n, "stars": p["count"], "definition": p["expr"] or "selection / combination"}
                for n, p in self.session.populations.items()]
        return pd.DataFrame(rows, columns=["population", "stars", "definition"])

    def _refresh(self, *_):
        names = list(self.session.populations)
        opts = names + [CURRENT_SELECTION, ALL_STARS]
        self.param.pop_a.objects = opts
        self.param.pop_b.objects = opts
        if self.pop_a not in opts:
            self.pop_a = names[0] if names else opts[0]
        if self.pop_b not in opts:
            self.pop_b = names[1] if len(names) > 1 else opts[-1]
        if hasattr(self, "_list"):
            self._list.value = self._population_table()

    # --- actions (also the Python API) ---------------------------------------------------------------
    def select_expression(self, expr: str | None = None, mode: str | None = None) -> int:
        mask = self.session.select_query(self.expression if expr is None else expr, mode=mode)
        return int(self.session.selection.sum()) if self.session.selection is not None else int(mask.sum())

    def save_expression(self, name: str | None = None, expr: str | None = None) -> int:
        return int(self.session.define_population(self.pop_name if name is None else name,
                                                  expr=self.expression if expr is None else expr).sum())

    def save_selection(self, name: str | None = None) -> int:
        return int(self.session.define_population(self.pop_name if name is None else name).sum())

    def combine(self, how: str, name: str | None = None) -> int:
        name = name or f"{self.pop_a} {'|' if how == 'union' else '&'} {self.pop_b}"
        return int(self.session.combine_populations(name, self.pop_a, self.pop_b, how).sum())

    def compare(self, a: str | None = None, b: str | None = None, scores: bool = True) -> dict:
        """Compare two populations: maps, histograms, separation scores (returned and shown)."""
        a, b = a or self.pop_a, b or self.pop_b
        ma, mb = self.session.population_mask(a), self.session.population_mask(b)
        if not ma.any() or not mb.any():
            raise UserInputError(f"'{a if not ma.any() else b}' is empty")
        result = {"a": a, "b": b, "n_a": int(ma.sum()), "n_b": int(mb.sum()), "n_both": int((ma & mb).sum()),
                  "scores": []}
        if scores:
            for emb in self.data.embedding_names:
                result["scores"].append(separation_score(self.data, ma, mb, emb))
        self.last_scores = result["scores"]
        images = compare_images(self.data, ma, mb)
        hists = compare_histograms(self.data, ma, mb, a, b)
        score_rows = [{"embedding": EMBEDDING_LABELS.get(s["embedding"], s["embedding"]),
                       "k-NN balanced accuracy": round(s["balanced_accuracy"], 3),
                       "stars per population": s["n_per_class"]} for s in result["scores"]]
        legend = (f"<span style='color:{COLOUR_A}'>&#9632; {esc(a)}</span> ({result['n_a']:,} stars) vs "
                  f"<span style='color:{COLOUR_B}'>&#9632; {esc(b)}</span> ({result['n_b']:,} stars); "
                  f"{result['n_both']:,} in both")
        self._compare.objects = [
            pn.pane.HTML(legend),
            pn.pane.HoloViews(hv.Layout(list(images.values())).cols(3), linked_axes=False),
            pn.pane.HoloViews(hists, linked_axes=False),
            pn.pane.Markdown("**Separation score** (k-NN balanced accuracy; 0.5 = indistinguishable)"),
            pn.widgets.Tabulator(pd.DataFrame(score_rows), disabled=True, show_index=False, width=520),
        ]
        return result

    # --- widgets ------------------------------------------------------------------------------------
    def _guard(self, fn, *args, ok: str | None = None, **kw):
        try:
            out = fn(*args, **kw)
            if ok:
                self.session.notify(ok.format(out=out), "success")
            return out
        except UserInputError as e:
            self.session.notify(str(e), "warning")
        except Exception as e:
            log.exception("population action failed")
            self.session.notify(f"that did not work: {type(e).__name__}: {e}", "danger")

    def _preset(self, event):
        self.expression = self.presets[event.new]
        self.pop_name = event.new

    def __panel__(self):
        preset = pn.widgets.Select(label="Preset", options=list(self.presets), value=None, width=240)
        preset.param.watch(self._preset, "value")
        expr = pn.widgets.TextAreaInput.from_param(self.param.expression, label="Expression over catalogue columns",
                                                   height=70, sizing_mode="stretch_width")
        cols = ", ".join(self.data.numeric_columns + self.data.boolean_columns + self.data.categorical_columns)
        b_sel = pn.widgets.Button(label="Select matching stars", color="primary")
        b_sel.on_click(lambda e: self._guard(self.select_expression, ok="{out:,} stars selected"))
        b_save = pn.widgets.Button(label="Save expression as population")
        b_save.on_click(lambda e: self._guard(self.save_expression, ok="population saved ({out:,} stars)"))
        b_save_sel = pn.widgets.Button(label="Save current selection as population")
        b_save_sel.on_click(lambda e: self._guard(self.save_selection, ok="population saved ({out:,} stars)"))
        b_show = pn.widgets.Button(label="Select population A")
        b_show.on_click(lambda e: self._guard(self.session.select_population, self.pop_a))
        b_union = pn.widgets.Button(label="Save A ∪ B")
        b_union.on_click(lambda e: self._guard(self.combine, "union", ok="union saved ({out:,} stars)"))
        b_inter = pn.widgets.Button(label="Save A ∩ B")
        b_inter.on_click(lambda e: self._guard(self.combine, "intersection", ok="intersection saved ({out:,} stars)"))
        b_cmp = pn.widgets.Button(label="Compare A and B", color="primary")
        b_cmp.on_click(lambda e: self._guard(self.compare))
        return pn.Column(
            pn.Row(preset, pn.widgets.TextInput.from_param(self.param.pop_name, label="Population name", width=240)),
            expr, pn.pane.HTML(f"Columns: {esc(cols)}. Operators: <code>&lt; &lt;= == != &gt;= &gt;</code>, "
                               f"<code>and</code>, <code>or</code>, <code>not</code>, <code>in ['a', 'b']</code>, "
                               f"arithmetic.", styles={"font-size": "90%"}),
            pn.Row(b_sel, b_save, b_save_sel),
            self._list,
            pn.Row(pn.widgets.Select.from_param(self.param.pop_a, label="Population A", width=240),
                   pn.widgets.Select.from_param(self.param.pop_b, label="Population B", width=240)),
            pn.Row(b_show, b_union, b_inter, b_cmp),
            self._compare)
