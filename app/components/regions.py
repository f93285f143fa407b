"""Regions: find the structure of the map. Density contours are a switch above the maps; here a Gaussian mixture
clusters an embedding (:meth:`AppData.clusters`), each cluster is summarised by its size, median properties
and over-represented classes, the maps can be coloured by cluster, and a cluster can be selected or saved as
a population (a ``["new", "cluster", embedding, k, i]`` step: reproducible, so it travels in the URL).

The fit runs on a worker thread (an ``async`` callback), so a visitor waiting for it never stalls the others;
its cost is bounded (at most 20,000 stars in the fit, k <= 12) and each (embedding, k) is fitted once per
server process.
"""
from __future__ import annotations

import asyncio
import logging

import numpy as np
import pandas as pd
import panel as pn
import param

from app.state import (CLUSTER_COLOUR, EMBEDDING_LABELS, MAX_CLUSTERS, MIN_CLUSTERS, Session, UserInputError)

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("teff", "logg", "feh", "prot_days", "age_gyr", "ruwe")
CLASS_COLUMNS = ("binary_class", "phase")
MIN_SHARE = 0.10     # a class is "over-represented" in a cluster if it is >= 10% of it ...
MIN_ENRICHMENT = 1.5  # ... and 1.5x more common there than in the whole survey


def over_represented(codes: np.ndarray, categories, in_cluster: np.ndarray, overall: np.ndarray) -> list[str]:
    """'class (share in cluster, x enrichment)' for the classes of one column enriched in one cluster."""
    k = len(categories)
    c_in = np.bincount(codes[in_cluster & (codes >= 0)], minlength=k).astype(float)
    c_all = np.bincount(codes[overall & (codes >= 0)], minlength=k).astype(float)
    if c_in.sum() == 0 or c_all.sum() == 0:
        return []
    share, base = c_in / c_in.sum(), c_all / c_all.sum()
    out = []
    for i in np.argsort(-share):
        if share[i] >= MIN_SHARE and base[i] > 0 and share[i] / base[i] >= MIN_ENRICHMENT:
            out.append(f"{categories[i]} ({100 * share[i]:.0f}%, {share[i] / base[i]:.1f}x)")
    return out


class Regions(pn.viewable.Viewer):
    embedding = param.Selector(default=None, objects=[])
    k = param.Integer(default=6, bounds=(MIN_CLUSTERS, MAX_CLUSTERS))
    cluster = param.Integer(default=1, bounds=(1, MAX_CLUSTERS))

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        self.data = session.data
        self.param.embedding.objects = list(self.data.embedding_names)
        if self.data.embedding_names:
            self.embedding = self.data.embedding_names[0]
        self.summary_table = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, height=300,
                                                  sizing_mode="stretch_width")
        self.status = pn.pane.Markdown("No clusters yet.", margin=(5, 10))
        self.fitted: tuple[str, int] | None = None
        self.summary: pd.DataFrame | None = None

    # --- actions (also the Python API) ---------------------------------------------------------------
    def find_clusters(self, embedding: str | None = None, k: int | None = None) -> pd.DataFrame:
        """Cluster ``embedding`` into ``k``, colour the maps by cluster and return the summary table."""
        embedding, k = embedding or self.embedding, int(k or self.k)
        labels = self.data.clusters(embedding, k)
        return self._show(embedding, k, labels)

    def _show(self, embedding: str, k: int, labels: np.ndarray) -> pd.DataFrame:
        self.fitted = (embedding, k)
        self.session.set_clusters(labels, f"{EMBEDDING_LABELS.get(embedding, embedding)}, k={k}")
        self.summary = self.summarise(labels, k)
        self.summary_table.value = self.summary
        self.status.object = (f"**{k} clusters** of the {EMBEDDING_LABELS.get(embedding, embedding)} embedding "
                              f"(Gaussian mixture on 10 principal components). The maps are coloured by cluster.")
        self.param.cluster.bounds = (1, k)
        if self.cluster > k:
            self.cluster = 1
        self.session.color = CLUSTER_COLOUR
        return self.summary

    def summarise(self, labels: np.ndarray, k: int) -> pd.DataFrame:
        """One row per cluster: size, median of the key properties, over-represented classes."""
        has = labels >= 0
        cols = [c for c in SUMMARY_COLUMNS if c in self.data.numeric_columns]
        classes = [c for c in CLASS_COLUMNS if c in self.data.categorical_columns]
        rows = []
        for i in range(k):
            m = labels == i
            row = {"cluster": i + 1, "stars": int(m.sum())}
            for c in cols:
                v = self.data.column(c)[m]
                v = v[np.isfinite(v)]
                row[f"median {c}"] = round(float(np.median(v)), 3) if len(v) else np.nan
            enriched = []
            for c in classes:
                enriched += [f"{c}={e}" for e in over_represented(self.data.expression_column(c),
                                                                    self.data.schema.categories[c], m, has)]
            row["over-represented"] = "; ".join(enriched) or "-"
            rows.append(row)
        return pd.DataFrame(rows)

    def _step(self, i: int | None = None) -> list:
        if self.fitted is None:
            raise UserInputError("find clusters first")
        i = (self.cluster if i is None else i) - 1
        return ["new", "cluster", self.fitted[0], self.fitted[1], int(i)]

    def select_cluster(self, i: int | None = None, mode: str | None = None) -> int:
        """Select cluster ``i`` (1-based; default the chosen one); returns the selection's size."""
        step = self._step(i)
        self.session.apply_step("cluster", *step[2:], mode=mode)
        return self.session.selection_count

    def save_clusters(self) -> list[str]:
        """Save every cluster as a population 'cluster i (embedding, k)'; returns the names."""
        if self.fitted is None:
            raise UserInputError("find clusters first")
        emb, k = self.fitted
        names = []
        for i in range(1, k + 1):
            name = f"cluster {i} ({emb}, k={k})"
            self.session.define_population(name, steps=[self._step(i)])
            names.append(name)
        return names

    # --- widgets ------------------------------------------------------------------------------------
    def _guard(self, fn, *args, ok: str | None = None):
        try:
            out = fn(*args)
            if ok:
                self.session.notify(ok.format(out=out), "success")
        except UserInputError as e:
            self.session.notify(str(e), "warning")
        except Exception as e:
            log.exception("regions action failed")
            self.session.notify(f"that did not work: {type(e).__name__}: {e}", "danger")

    async def _find_clicked(self, event):
        emb, k = self.embedding, int(self.k)
        self.status.object = f"Clustering the {EMBEDDING_LABELS.get(emb, emb)} embedding into {k} ..."
        try:
            labels = await asyncio.to_thread(self.data.clusters, emb, k)   # the fit does not hold the page
            self._show(emb, k, labels)
            self.session.notify(f"{k} clusters found; the maps are coloured by cluster", "success")
        except UserInputError as e:
            self.status.object = "No clusters."
            self.session.notify(str(e), "warning")
        except Exception as e:
            log.exception("clustering failed")
            self.status.object = "No clusters."
            self.session.notify(f"that did not work: {type(e).__name__}: {e}", "danger")

    def __panel__(self):
        b_find = pn.widgets.Button(label="Find clusters", color="primary")
        b_find.on_click(self._find_clicked)
        b_sel = pn.widgets.Button(label="Select cluster")
        b_sel.on_click(lambda e: self._guard(self.select_cluster, ok="{out:,} stars selected"))
        b_save = pn.widgets.Button(label="Save clusters as populations")
        b_save.on_click(lambda e: self._guard(self.save_clusters, ok="saved {out}"))
        return pn.Column(
            pn.pane.Markdown("Density contours: the switch above the maps (lines enclosing 50%, 80% and 95% of "
                             "the stars). Clusters: a Gaussian mixture on the embedding, summarised below."),
            pn.Row(pn.widgets.Select.from_param(self.param.embedding, label="Embedding", width=200),
                   pn.widgets.IntSlider.from_param(self.param.k, label="Clusters", width=200), b_find),
            self.status, self.summary_table,
            pn.Row(pn.widgets.IntInput.from_param(self.param.cluster, label="Cluster", width=120), b_sel, b_save))
