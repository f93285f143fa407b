"""Few-shot probes: how much of a stellar property can a linear model read off the embeddings from N labels?

Choose a target column: numeric columns get a ridge regression (held-out R^2), boolean and categorical
columns a logistic regression for one class against the rest (held-out ROC AUC). The labelled stars are
either N random stars with a known label, or the current selection as positives against the rest (N of each
at most). The same probe is fitted on the DESA embedding and on the light-curve-only and spectrum-only
embeddings, each scored on the same held-out stars (up to 2,000 labelled stars not used for fitting), and
the DESA probe's prediction for every star can colour the maps.

Only stars that have all compared embeddings take part, so the three numbers are on identical stars.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import panel as pn
import param

from app.state import CURRENT_SELECTION, EMBEDDING_LABELS, AppData, Session, UserInputError
from app.text import esc

log = logging.getLogger(__name__)

MAX_HELD_OUT = 2000
SELECTION_TARGET = CURRENT_SELECTION


@dataclass
class ProbeResult:
    target: str
    kind: str                      # "ridge" or "logistic"
    metric: str                    # "R^2" or "AUC"
    n_train: int
    n_test: int
    scores: dict = field(default_factory=dict)   # embedding -> metric on the held-out stars
    fit_s: float = 0.0
    predict_s: float = 0.0

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{"embedding": EMBEDDING_LABELS.get(k, k), self.metric: round(v, 3),
                              "N labelled": self.n_train, "N held out": self.n_test}
                             for k, v in self.scores.items()])


def _rows_array(emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
    order = np.argsort(rows)
    out = np.asarray(emb[rows[order]], dtype=np.float64)
    return out[np.argsort(order)]


def _fit(x: np.ndarray, y: np.ndarray, kind: str):
    """Standardise then ridge (alpha chosen by efficient leave-one-out) or L2 logistic regression."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    mu, sd = x.mean(0), x.std(0)
    sd[sd < 1e-8] = 1.0
    z = (x - mu) / sd
    if kind == "ridge":
        model = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(z, y)
        w, b = model.coef_.ravel(), float(model.intercept_)
    else:
        model = LogisticRegression(C=0.1, max_iter=2000).fit(z, y)
        w, b = model.coef_.ravel(), float(model.intercept_[0])
    # Fold the standardisation into the weights: prediction for all stars is then one matrix-vector product.
    return (w / sd).astype(np.float32), np.float32(b - (mu / sd) @ w)


def _score(pred: np.ndarray, y: np.ndarray, kind: str) -> float:
    from sklearn.metrics import r2_score, roc_auc_score
    if kind == "ridge":
        return float(r2_score(y, pred))
    return float(roc_auc_score(y, pred)) if len(np.unique(y)) == 2 else float("nan")


def predict_all(emb: np.ndarray, w: np.ndarray, b: float, kind: str, chunk: int = 262_144) -> np.ndarray:
    """Probe output for every star (NaN where the embedding is missing), chunked over the memory map.

    One BLAS thread: a matrix-vector product is memory-bound, and BLAS thread teams inside a threaded
    server only oversubscribe the cores."""
    from threadpoolctl import threadpool_limits
    out = np.empty(emb.shape[0], dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        for i in range(0, emb.shape[0], chunk):
            out[i:i + chunk] = np.asarray(emb[i:i + chunk], dtype=np.float32) @ w + b
    if kind == "logistic":
        with np.errstate(over="ignore"):
            out = (1.0 / (1.0 + np.exp(-out))).astype(np.float32)
    return out


class Probes(pn.viewable.Viewer):
    """The few-shot probe panel of one session."""

    target = param.Selector(default=None, objects=[])
    positive_class = param.Selector(default=None, objects=[], doc="class probed against the rest (categorical)")
    n_labels = param.Integer(default=50, bounds=(5, 100_000), doc="labelled stars (per class for a selection)")
    seed = param.Integer(default=0)
    colour_map = param.Boolean(default=True, doc="colour the maps by the DESA probe's prediction")

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        self.data: AppData = session.data
        targets = (self.data.numeric_columns + self.data.boolean_columns + self.data.categorical_columns
                   + [SELECTION_TARGET])
        targets = [t for t in targets if t not in ("ra", "dec", "split")]
        self.param.target.objects = targets
        self.target = "prot_days" if "prot_days" in targets else targets[0]
        self.result: ProbeResult | None = None
        self._out = pn.Column()
        self._update_classes()

    @param.depends("target", watch=True)
    def _update_classes(self):
        if self.target in self.data.categorical_columns:
            classes = list(self.data.schema.categories[self.target])
            self.param.positive_class.objects = classes
            self.positive_class = "close_sync" if "close_sync" in classes else classes[0]
        else:
            self.param.positive_class.objects = [None]
            self.positive_class = None

    # --- labels -------------------------------------------------------------------------------------
    def _labels(self) -> tuple[np.ndarray, str, str]:
        """(label per star as float, NaN where unknown; kind; description)."""
        t = self.target
        if t == SELECTION_TARGET:
            if self.session.selection is None or not self.session.selection.any():
                raise UserInputError("nothing is selected: select stars on a map to use them as positives")
            return self.session.selection.astype(np.float32), "logistic", "in the current selection"
        if t in self.data.numeric_columns:
            return self.data.column(t), "ridge", t
        if t in self.data.boolean_columns:
            return self.data.column(t), "logistic", t
        if t in self.data.categorical_columns:
            codes = np.asarray(self.data.expression_column(t))   # int16 class codes, -1 = unknown
            cats = self.data.schema.categories[t]
            pos = cats.index(str(self.positive_class)) if str(self.positive_class) in cats else -2
            y = np.where(codes < 0, np.nan, codes == pos)
            return y.astype(np.float32), "logistic", f"{t} == {self.positive_class!r}"
        raise UserInputError(f"unknown probe target {t!r}")

    def fit(self, target: str | None = None, n_labels: int | None = None, positive_class=None) -> ProbeResult:
        """Fit the probe on every available embedding and (optionally) colour the maps by its prediction."""
        if target is not None:
            self.target = target
        if positive_class is not None:
            self.positive_class = positive_class
        if n_labels is not None:
            self.n_labels = n_labels
        t0 = time.perf_counter()
        y_all, kind, desc = self._labels()
        names = self.data.embedding_names
        if not names:
            raise UserInputError("this artifact set has no embeddings")
        ok = np.isfinite(y_all)
        for name in names:
            ok &= self.data.has_embedding(name)
        rng = np.random.default_rng(self.seed)
        n = int(self.n_labels)
        if n < 5:
            raise UserInputError("use at least 5 labelled stars")
        if kind == "logistic":
            pos, neg = np.flatnonzero(ok & (y_all == 1)), np.flatnonzero(ok & (y_all == 0))
            if len(pos) < 3 or len(neg) < 3:
                raise UserInputError(f"too few stars on one side of '{desc}' ({len(pos)} yes, {len(neg)} no)")
            if self.target == SELECTION_TARGET:  # N positives and N negatives
                n_pos = n_neg = min(n, len(pos) - 2, len(neg) - 2)
            else:  # N random labelled stars, at least 2 of each class
                frac = len(pos) / (len(pos) + len(neg))
                n_pos = int(np.clip(round(n * frac), 2, len(pos) - 2))
                n_neg = int(np.clip(n - n_pos, 2, len(neg) - 2))
            pos, neg = rng.permutation(pos), rng.permutation(neg)
            train = np.concatenate([pos[:n_pos], neg[:n_neg]])
            rest_pos, rest_neg = pos[n_pos:], neg[n_neg:]
            n_test_pos = min(len(rest_pos), max(1, MAX_HELD_OUT // 2))
            test = np.concatenate([rest_pos[:n_test_pos], rest_neg[:MAX_HELD_OUT - n_test_pos]])
        else:
            avail = np.flatnonzero(ok)
            if len(avail) < n + 5:
                raise UserInputError(f"only {len(avail)} stars have a known {desc}: use fewer labels")
            perm = rng.permutation(avail)
            train, test = perm[:n], perm[n:n + MAX_HELD_OUT]
        y_train, y_test = y_all[train].astype(np.float64), y_all[test].astype(np.float64)
        result = ProbeResult(target=desc, kind=kind, metric="R^2" if kind == "ridge" else "AUC",
                             n_train=len(train), n_test=len(test))
        weights = {}
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=1, user_api="blas"):  # small problems: BLAS thread teams only spin
            for name in names:
                emb = self.data.embedding(name)
                w, b = _fit(_rows_array(emb, train), y_train, kind)
                weights[name] = (w, b)
                pred = _rows_array(emb, test) @ w + b
                result.scores[name] = _score(pred, y_test, kind)
        result.fit_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        if self.colour_map:
            name = "desa" if "desa" in weights else names[0]
            values = predict_all(self.data.embedding(name), *weights[name], kind)
            label = (f"probe: {desc}" if kind == "ridge" else f"probe: P({desc})")
            self.session.set_prediction(values, label, kind)
            self.session.color = "probe prediction"
        result.predict_s = time.perf_counter() - t1
        self.result = result
        self._show(result)
        return result

    def _show(self, r: ProbeResult):
        summary = (f"<b>{esc(r.metric)} on {r.n_test:,} held-out stars</b>, probe ({r.kind}) fitted on "
                   f"{r.n_train:,} labelled stars for <i>{esc(r.target)}</i> ({r.fit_s + r.predict_s:.2f} s)")
        self._out.objects = [pn.pane.HTML(summary),
                             pn.widgets.Tabulator(r.table(), disabled=True, show_index=False, width=520)]

    def _fit_clicked(self, _):
        try:
            r = self.fit()
            self.session.notify(f"probe fitted: {r.metric} {r.scores.get('desa', float('nan')):.3f} (DESA)",
                                "success")
        except UserInputError as e:
            self.session.notify(str(e), "warning")
        except Exception as e:
            log.exception("probe failed")
            self.session.notify(f"probe failed: {type(e).__name__}: {e}", "danger")

    def __panel__(self):
        btn = pn.widgets.Button(label="Fit probe", color="primary")
        btn.on_click(self._fit_clicked)
        return pn.Column(
            pn.Row(pn.widgets.Select.from_param(self.param.target, label="Target column", width=200),
                   pn.widgets.Select.from_param(self.param.positive_class, label="Class (vs the rest)", width=160),
                   pn.widgets.IntInput.from_param(self.param.n_labels, label="N labelled stars", width=140),
                   pn.widgets.IntInput.from_param(self.param.seed, label="Seed", width=90)),
            pn.Row(pn.widgets.Checkbox.from_param(self.param.colour_map, label="Colour the maps by the prediction"),
                   btn),
            pn.pane.Markdown("Numeric targets: ridge regression, held-out R². Boolean / categorical / selection: "
                             "logistic regression, held-out ROC AUC. The same stars are used for every embedding."),
            self._out)
