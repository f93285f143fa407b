"""Star detail: the light curve (raw and folded at the rotation period), the spectrum with its main lines
marked, and every catalogue property of one star. It follows the similarity-search target unless a star id
is entered here."""
from __future__ import annotations

import logging

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from app.components.search import _bin_series
from app.state import AppData, Session, UserInputError
from app.text import esc

log = logging.getLogger(__name__)

# Strong lines of FGK spectra, vacuum wavelengths [A] (the survey store's spectra are in vacuum).
SPECTRAL_LINES = {
    "Ca II K": 3934.78, "Ca II H": 3969.59, "H delta": 4102.89, "Ca I": 4227.92, "H gamma": 4341.69,
    "H beta": 4862.69, "Mg b": 5174.13, "Na D": 5891.58, "H alpha": 6564.61, "K I": 7667.01,
    "Ca II 8542": 8544.44,
}


def fold(time: np.ndarray, flux: np.ndarray, period: float, n_bins: int = 100):
    """Phase-fold a light curve at ``period``: (phase, flux) points and the binned mean curve."""
    ok = np.isfinite(time) & np.isfinite(flux)
    t, f = time[ok], flux[ok]
    phase = np.mod(t - t.min(), period) / period
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, phase, side="right") - 1, 0, n_bins - 1)
    cnt = np.bincount(idx, minlength=n_bins)
    mean = np.bincount(idx, weights=f, minlength=n_bins) / np.maximum(cnt, 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    return phase, f, centres[cnt > 0], mean[cnt > 0]


class StarDetail(pn.viewable.Viewer):
    star_id = param.String(default="")

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        self.data: AppData = session.data
        self.row = -1
        self._plots = pn.pane.HoloViews(hv.Div(""), linked_axes=False)
        self._props = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, height=420, width=360)
        self._title = pn.pane.HTML("Choose a star: enter its id, search for it, or click it on a map.")
        session.param.watch(self._follow_target, "neighbours_version")

    visible = True  # set by the page: while the tab is hidden, a new target is shown only when it opens

    def set_visible(self, visible: bool):
        self.visible = bool(visible)
        if self.visible:
            self._follow_target()

    def _follow_target(self, *_):
        if not self.visible:
            return
        if self.session.target_row >= 0 and self.session.target_row != self.row:
            try:
                self.show_row(self.session.target_row)
            except Exception:  # the detail view must never break a search
                log.exception("star detail failed")

    def show(self, star_id: str | None = None):
        self.show_row(self.data.row_of(self.star_id if star_id is None else star_id))

    def properties(self, row: int) -> pd.DataFrame:
        s = self.data.stars.iloc[row]
        return pd.DataFrame({"property": list(s.index), "value": [str(v) for v in s.to_numpy()]})

    def show_row(self, row: int):
        self.row = int(row)
        sid = self.data.star_ids[row]
        self._title.object = f"<h3>{esc(sid)}</h3>"
        self._props.value = self.properties(row)
        self._plots.object = self.figure(row)

    def figure(self, row: int):
        plots = []
        prot = float(self.data.stars["prot_days"].iat[row]) if "prot_days" in self.data.stars else float("nan")
        lc = self.data.light_curve(row)
        if lc is not None:
            t, f = np.asarray(lc[0], float), np.asarray(lc[1], float)
            tb, fb = _bin_series(t, f, 3000)
            plots.append(hv.Curve((tb, fb), "time [d]", "relative flux").opts(
                title="Light curve", width=620, height=220, line_width=1))
            if np.isfinite(prot) and prot > 0:
                ph, ff, pc, pm = fold(t, f, prot)
                sub = slice(None, None, max(1, len(ph) // 5000))
                plots.append((hv.Scatter((ph[sub], ff[sub]), "phase", "relative flux").opts(
                    size=1, alpha=0.3, color="grey") * hv.Curve((pc, pm)).opts(color="red", line_width=2)).opts(
                    title=f"Folded at P_rot = {prot:.3g} d", width=620, height=220))
        else:
            plots.append(hv.Div("<i>no light curve for this star</i>"))
        sp = self.data.spectrum(row)
        if sp is not None:
            w, f, iv = (np.asarray(a, float) for a in sp)
            f = np.where(iv > 0, f, np.nan)
            f = f / np.nanmedian(f)
            curve = hv.Curve((w, f), "wavelength [A]", "normalised flux").opts(
                title="Spectrum (vacuum wavelengths; main lines marked)", width=620, height=260, line_width=1)
            lines = [hv.VLine(lam).opts(color="orange", line_dash="dashed", line_width=1)
                     for lam in SPECTRAL_LINES.values() if w.min() <= lam <= w.max()]
            top = np.nanpercentile(f, 99.5) if np.isfinite(f).any() else 1.0
            labels = hv.Labels([(lam, top, name) for name, lam in SPECTRAL_LINES.items()
                                if w.min() <= lam <= w.max()], ["wavelength [A]", "normalised flux"], "text").opts(
                text_font_size="8pt", angle=90, text_align="right", text_color="darkorange")
            plots.append(hv.Overlay([curve, *lines, labels]))
        else:
            plots.append(hv.Div("<i>no spectrum for this star</i>"))
        return hv.Layout(plots).cols(1)

    def _show_clicked(self, _):
        try:
            self.show()
        except UserInputError as e:
            self.session.notify(str(e), "warning")
        except Exception as e:
            log.exception("star detail failed")
            self.session.notify(f"star detail failed: {type(e).__name__}: {e}", "danger")

    def __panel__(self):
        btn = pn.widgets.Button(label="Show star", color="primary")
        btn.on_click(self._show_clicked)
        return pn.Column(pn.Row(pn.widgets.TextInput.from_param(self.param.star_id, label="Star id"), btn),
                         self._title, pn.Row(self._plots, self._props))
