"""Star detail: the light curve (raw, its autocorrelation and periodogram with the measured periods marked, and
folded at the measured rotation period), the spectrum with its main lines marked at the star's radial
velocity, the model's predicted properties next to the catalogue's, and every catalogue property of one star.
It follows the similarity-search target unless a star id is entered here."""
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
from desa_core.data.periods import acf_curve, periodogram
from desa_core.models.inference import PREDICTION_LABELS

log = logging.getLogger(__name__)

C_KMS = 299_792.458
# Predicted column -> the catalogue columns it is compared with (observed first, then the simulator's truth).
PREDICTION_TRUTH = {"p_binary": ("is_binary",), "age_pred_gyr": ("age_gyr",), "teff_pred": ("teff_obs", "teff"),
                    "logg_pred": ("logg_obs", "logg"), "feh_pred": ("feh_obs", "feh"),
                    "prot_pred_days": ("prot_acf_days", "prot_days")}
# Strong lines of FGK spectra, rest-frame vacuum wavelengths [A]; drawn shifted by the star's radial velocity
# (the survey store's spectra are in the observed frame).
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
        self._pred = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, width=560, visible=False)
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
        s = self.data.stars.row(row)
        return pd.DataFrame({"property": list(s.index), "value": [str(v) for v in s.to_numpy()]})

    def predictions(self, row: int) -> pd.DataFrame:
        """The model's predictions of this star next to the catalogue value each is compared with."""
        star = self.data.stars.row(row)
        out = []
        for col, label in PREDICTION_LABELS.items():
            if col not in star.index or col in ("age_pred_lo_gyr", "age_pred_hi_gyr"):
                continue
            v = star[col]
            shown = "–" if pd.isna(v) else f"{float(v):.3g}"
            if col == "age_pred_gyr" and "age_pred_lo_gyr" in star.index and not pd.isna(v):
                shown += f" [{float(star['age_pred_lo_gyr']):.3g}, {float(star['age_pred_hi_gyr']):.3g}]"
            ref = next((c for c in PREDICTION_TRUTH[col] if c in star.index and not pd.isna(star[c])), None)
            ref_v = "–" if ref is None else str(star[ref] if isinstance(star[ref], bool | np.bool_) else
                                               f"{float(star[ref]):.3g}")
            out.append({"predicted": label, "value": shown, "catalogue": ref or "–", "catalogue value": ref_v})
        return pd.DataFrame(out)

    def show_row(self, row: int):
        self.row = int(row)
        sid = self.data.star_ids[row]
        self._title.object = f"<h3>{esc(sid)}</h3>"
        self._props.value = self.properties(row)
        self._pred.value = self.predictions(row)
        self._pred.visible = len(self._pred.value) > 0
        self._plots.object = self.figure(row)

    def _value(self, col: str, row: int) -> float:
        return float(self.data.column(col)[row]) if col in self.data.numeric_columns else float("nan")

    def fold_period(self, row: int) -> tuple[float, str]:
        """The period the light curve is folded at: the measured ACF period when the rotation was detected,
        else the catalogue's Prot (for a simulated survey the true one, said in the title)."""
        p = self._value("prot_acf_days", row)
        det = ("rotation_detected" in self.data.boolean_columns
               and bool(self.data.column("rotation_detected")[row] == 1))
        if np.isfinite(p) and p > 0 and det:
            return p, "measured (ACF)"
        p = self._value("prot_days", row)
        src = "true (simulated)" if self.data.is_simulated else "catalogue"
        return (p, src) if np.isfinite(p) and p > 0 else (float("nan"), "")

    def figure(self, row: int):
        plots = []
        lc = self.data.light_curve(row)
        if lc is not None:
            t, f = np.asarray(lc[0], float), np.asarray(lc[1], float)
            tb, fb = _bin_series(t, f, 3000)
            plots.append(hv.Curve((tb, fb), "time [d]", "relative flux").opts(
                title="Light curve", width=620, height=220, line_width=1))
            plots.append(self._period_plots(t, f, row))
            prot, src = self.fold_period(row)
            if np.isfinite(prot):
                ph, ff, pc, pm = fold(t, f, prot)
                sub = slice(None, None, max(1, len(ph) // 5000))
                truth = self._value("prot_days", row)
                extra = f"; true {truth:.3g} d" if self.data.is_simulated and src.startswith("measured") and \
                    np.isfinite(truth) else ""
                plots.append((hv.Scatter((ph[sub], ff[sub]), "phase", "relative flux").opts(
                    size=1, alpha=0.3, color="grey") * hv.Curve((pc, pm)).opts(color="red", line_width=2)).opts(
                    title=f"Folded at P_rot = {prot:.3g} d ({src}{extra})", width=620, height=220))
        else:
            plots.append(hv.Div("<i>no light curve for this star</i>"))
        sp = self.data.spectrum(row)
        if sp is not None:
            w, f, iv = (np.asarray(a, float) for a in sp)
            f = np.where(iv > 0, f, np.nan)
            f = f / np.nanmedian(f)
            rv = self._value("rv_kms_obs", row)
            rv = rv if np.isfinite(rv) else 0.0
            shift = 1.0 + rv / C_KMS
            curve = hv.Curve((w, f), "wavelength [A]", "normalised flux").opts(
                title=f"Spectrum (observed frame, vacuum); lines marked at RV {rv:+.1f} km/s", width=620, height=260,
                line_width=1)
            shown = {name: lam * shift for name, lam in SPECTRAL_LINES.items() if w.min() <= lam * shift <= w.max()}
            lines = [hv.VLine(lam).opts(color="orange", line_dash="dashed", line_width=1) for lam in shown.values()]
            top = np.nanpercentile(f, 99.5) if np.isfinite(f).any() else 1.0
            labels = hv.Labels([(lam, top, name) for name, lam in shown.items()],
                               ["wavelength [A]", "normalised flux"], "text").opts(
                text_font_size="8pt", angle=90, text_align="right", text_color="darkorange")
            plots.append(hv.Overlay([curve, *lines, labels]))
        else:
            plots.append(hv.Div("<i>no spectrum for this star</i>"))
        return hv.Layout(plots).cols(1)

    def _period_plots(self, t, f, row):
        """The autocorrelation (ACF period and its local peak height) and the Lomb-Scargle periodogram (its
        period and power), each with the measured period marked."""
        lag, acf = acf_curve(t, f)
        per, power = periodogram(t, f)
        p_acf, p_ls = self._value("prot_acf_days", row), self._value("prot_ls_days", row)
        lph, pw = self._value("prot_acf_lph", row), self._value("prot_ls_power", row)
        a = hv.Curve((lag, acf), "lag [d]", "ACF").opts(line_width=1)
        if np.isfinite(p_acf):
            a = a * hv.VLine(p_acf).opts(color="red", line_dash="dashed")
        a = a.opts(title=f"Autocorrelation: P_ACF = {p_acf:.3g} d, peak height {lph:.2f}" if np.isfinite(p_acf)
                   else "Autocorrelation: no period found", width=305, height=200)
        b = hv.Curve((per[::-1], power[::-1]), "period [d]", "LS power").opts(logx=True, line_width=1)
        if np.isfinite(p_ls):
            b = b * hv.VLine(p_ls).opts(color="red", line_dash="dashed")
        b = b.opts(title=f"Lomb-Scargle: P = {p_ls:.3g} d, power {pw:.2f}" if np.isfinite(p_ls)
                   else "Lomb-Scargle periodogram", width=305, height=200)
        return (a + b).opts(shared_axes=False)

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
                         self._title, pn.Row(self._plots, pn.Column(
                             pn.pane.Markdown("**Model predictions** (the run's heads) and the catalogue"),
                             self._pred, self._props)))
