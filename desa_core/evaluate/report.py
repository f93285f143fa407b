"""The human-readable side of ``desa evaluate``: a Markdown table and UMAP figures next to metrics.json.

- ``metrics.md``: one row per model (headline test metrics), models that leak labels and the oracle marked,
  then the same for test stars lacking one modality, then the sync-vs-young population counts;
- ``umap_<model>.png``: UMAP (n_neighbors 15, min_dist 0.1, as in the paper) of the test + validation stars'
  embedding for DESA and the strongest label-free baselines, coloured by CMD class, age and binarity, with
  synchronized binaries and young fast rotators highlighted.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from desa_core.data.store import atomic_write_bytes

log = logging.getLogger(__name__)

COLUMNS = (("binary_auc", "binary AUC"), ("binary_ap", "binary AP"), ("age_rmse_gyr", "age RMSE [Gyr]"),
           ("age_mae_gyr", "age MAE [Gyr]"), ("age_coverage", "age cov. (0.72)"), ("cmd_r2", "CMD R²"),
           ("hr_r2", "HR R²"), ("cmd_ari", "CMD ARI (GMM)"), ("sync_young_bacc", "sync/young bacc"),
           ("neighbour_quality", "neighbour quality"))
# The paired-difference table: the six headline metrics.
PAIRED_COLUMNS = (("binary_auc", "binary AUC"), ("age_rmse_gyr", "age RMSE [Gyr]"), ("cmd_r2", "CMD R²"),
                  ("hr_r2", "HR R²"), ("sync_young_bacc", "sync/young bacc"), ("neighbour_quality", "neighbour q."))
# Higher is better except for the age errors; used to bold the best label-free value per column.
LOWER_IS_BETTER = {"age_rmse_gyr", "age_mae_gyr"}
NOT_RANKED = {"age_coverage"}   # a coverage is right at its nominal value, not "best" when highest


def _model_keys(metrics: dict) -> list[str]:
    return [k for k, v in metrics.items() if not k.startswith("_") and isinstance(v, dict)]


def _label(key: str, m: dict) -> str:
    if m.get("oracle"):
        return f"{key} (ORACLE: catalogue labels)"
    if m.get("leaks_labels"):
        return f"{key} (LEAKS LABELS)"
    return key


def _cell(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown_table(metrics: dict, section: str | None = None) -> str:
    """Markdown table of the headline metrics (``section='missing_modality'`` for that sub-dict)."""
    keys = [k for k in _model_keys(metrics) if metrics[k].get("available", True)
            and not (section and metrics[k].get("oracle"))]
    rows = {k: (metrics[k].get(section) or {}) if section else metrics[k] for k in keys}
    best = {}
    for col, _ in COLUMNS:
        if col in NOT_RANKED:
            continue
        vals = [rows[k].get(col) for k in keys if rows[k].get(col) is not None
                and not metrics[k].get("leaks_labels") and not metrics[k].get("oracle")]
        if vals:
            best[col] = (min if col in LOWER_IS_BETTER else max)(vals)
    head = "| model | n | " + " | ".join(name for _, name in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for k in keys:
        r = rows[k]
        n = r.get("n_test", r.get("n"))
        cells = []
        for col, _ in COLUMNS:
            c = _cell(r.get(col))
            is_best = (r.get(col) is not None and col in best and not metrics[k].get("leaks_labels")
                       and not metrics[k].get("oracle") and _cell(best[col]) == c)   # ties: all bold
            if is_best:
                c = f"**{c}**"
            sd = ((r.get("seeds") or {}).get("std") or {}).get(col) if not section else None
            if sd is not None:
                c += f" ± {sd:.3f}"
            elif col == "sync_young_bacc" and r.get("sync_young_bacc_std") is not None:
                c += f" ± {r['sync_young_bacc_std']:.3f}"
            cells.append(c)
        lines.append(f"| {_label(k, metrics[k])} | {n if n is not None else '–'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(metrics: dict) -> str:
    """Markdown table of each model's paired difference from concat (mean [95 % interval] over the same
    seeds); a star marks an interval that excludes 0 (better or worse), '(better)' its direction."""
    keys = [k for k in _model_keys(metrics) if metrics[k].get("vs_concat")]
    lines = ["| model | " + " | ".join(name for _, name in PAIRED_COLUMNS) + " |",
             "|" + "---|" * (len(PAIRED_COLUMNS) + 1)]
    for k in keys:
        cells = []
        for col, _ in PAIRED_COLUMNS:
            d = metrics[k]["vs_concat"].get(col)
            if d is None:
                cells.append("–")
                continue
            lo, hi = d["ci95"]
            sig = lo > 0 or hi < 0
            better = (d["mean"] < 0) if col in LOWER_IS_BETTER else (d["mean"] > 0)
            cells.append(f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                         + (f" * ({'better' if better else 'worse'})" if sig else ""))
        lines.append(f"| {_label(k, metrics[k])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(metrics: dict, out_dir: str | os.PathLike, reps: dict | None = None, catalog=None,
                 has_lc=None, has_spec=None, md_name: str = "metrics.md", n_figure_models: int = 3) -> Path:
    """Write ``metrics.md`` (and, with ``reps`` and ``catalog``, the UMAP figures) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = metrics.get("_meta", {})
    figs = []
    if reps and catalog is not None:
        try:
            figs = umap_figures(metrics, reps, catalog, has_lc, has_spec, out_dir, n_figure_models,
                                seed=meta.get("seed", 0))
        except ImportError as e:  # umap-learn is a dependency, but keep the table if it is broken
            log.warning("figures skipped: %s", e)
    lines = ["# DESA evaluation", "",
             f"Run `{meta.get('run', '?')}`, survey `{meta.get('survey', '?')}`, config `{meta.get('config', '?')}`. "
             f"Stars per split: {meta.get('n_stars', {})}; with both modalities: {meta.get('n_both_modalities', {})}.",
             "Best label-free value per column in bold; rows marked LEAKS LABELS or ORACLE see true catalogue "
             "labels and are not comparable.", "",
             f"Every number is the mean ± std over seeds {meta.get('seeds', [meta.get('seed', 0)])} "
             "(each seed retrains every alignment model, DualFormer and head).", "",
             "## Test stars with both modalities", "", markdown_table(metrics), ""]
    if any(metrics[k].get("vs_concat") for k in _model_keys(metrics)):
        lines += ["## Paired difference from concat", "",
                  "Model minus `concat`, mean over the same seeds with its 95 % Student-t interval; `*` where the "
                  "interval excludes 0.", "", paired_table(metrics), ""]
    lines += ["## Test stars lacking one modality (mean over seeds)", "", markdown_table(metrics, "missing_modality"),
              ""]
    sy = next((metrics[k]["sync_young"] for k in _model_keys(metrics) if "sync_young" in metrics[k]), None)
    if sy:
        lines += ["## Synchronized binaries vs young fast rotators", "",
                  f"Stars used: {sy['n_sync']} synchronized binaries and {sy['n_young']} young single stars "
                  f"(prot < 7 d) from the {' + '.join(sy['splits_used'])} split(s)"
                  + (f" -- widened beyond test because a 10-NN vote needs at least {sy.get('min_population')} "
                     "of each; the k-NN is cross-validated and no embedding trained on these labels"
                     if len(sy["splits_used"]) > 1 else "")
                  + f"; per split: {sy['counts_by_split']}.", ""]
    unavailable = [(k, metrics[k]["reason"]) for k in _model_keys(metrics) if not metrics[k].get("available", True)]
    if unavailable:
        lines += ["## Not evaluated", ""] + [f"- `{k}`: {r}" for k, r in unavailable] + [""]
    if meta.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    if figs:
        lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figs] + [""]
    path = out_dir / md_name
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def strongest_models(metrics: dict, n: int) -> list[str]:
    """'desa' plus the label-free models with the best mean rank over the headline columns."""
    cand = [k for k in _model_keys(metrics) if k != "desa" and metrics[k].get("available", True)
            and not metrics[k].get("leaks_labels") and not metrics[k].get("oracle")]
    ranks = {k: [] for k in cand}
    for col, _ in COLUMNS:
        if col in NOT_RANKED:
            continue
        vals = [(metrics[k].get(col), k) for k in cand if metrics[k].get(col) is not None]
        vals.sort(reverse=col not in LOWER_IS_BETTER)
        for r, (_, k) in enumerate(vals):
            ranks[k].append(r)
    order = sorted(cand, key=lambda k: np.mean(ranks[k]) if ranks[k] else np.inf)
    head = ["desa"] if "desa" in metrics and metrics["desa"].get("available", True) else []
    return head + order[: max(0, n - len(head))]


def umap_figures(metrics, reps, catalog, has_lc, has_spec, out_dir: Path, n_models: int, seed: int = 0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import umap

    from desa_core.evaluate.metrics import standardise
    from desa_core.evaluate.tasks import CMD_CLASSES, cmd_classes, sync_young_labels

    split = catalog["split"].to_numpy()
    mask = np.isin(split, ("test", "val")) & np.asarray(has_lc, bool) & np.asarray(has_spec, bool)
    cat = catalog[mask].reset_index(drop=True)
    classes = cmd_classes(cat)
    pops = sync_young_labels(cat)
    age = cat["age_gyr"].to_numpy(np.float64)
    binary = cat["is_binary"].to_numpy(bool)
    paths = []
    for key in strongest_models(metrics, n_models):
        if key not in reps:
            continue
        log.info("figures: UMAP of %s (%d stars)", key, int(mask.sum()))
        xy = umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed, n_jobs=1).fit_transform(
            standardise(reps[key].embedding[mask]))
        fig, axes = plt.subplots(1, 4, figsize=(20, 5), constrained_layout=True)
        kw = dict(s=float(np.clip(6000 / max(len(xy), 1), 2, 14)), alpha=0.6, linewidths=0)
        ax = axes[0]
        for c, col in zip(CMD_CLASSES, ("tab:blue", "tab:orange", "tab:red", "tab:green")):
            m = classes == c
            ax.scatter(xy[m, 0], xy[m, 1], c=col, label=f"{c} ({m.sum()})", **kw)
        ax.legend(markerscale=4, fontsize=8)
        ax.set_title("CMD class")
        sc = axes[1].scatter(xy[:, 0], xy[:, 1], c=age, cmap="viridis", **kw)
        fig.colorbar(sc, ax=axes[1], label="age [Gyr]")
        axes[1].set_title("age")
        # One scatter in a random order: drawing all binaries after all singles would hide the singles
        # (about half the stars are binaries) and make every region look binary.
        order = np.random.default_rng(seed).permutation(len(xy))
        axes[2].scatter(xy[order, 0], xy[order, 1], c=np.where(binary[order], "tab:purple", "lightgray"), **kw)
        for lab, col in (("single", "lightgray"), (f"binary ({int(binary.sum())} of {len(binary)})", "tab:purple")):
            axes[2].scatter([], [], c=col, label=lab, s=20)
        axes[2].legend(fontsize=8)
        axes[2].set_title("binarity (truth)")
        ax = axes[3]
        ax.scatter(xy[:, 0], xy[:, 1], c="lightgray", **kw)
        for p, col, mk in (("sync", "tab:red", "o"), ("young", "tab:blue", "^")):
            m = pops == p
            ax.scatter(xy[m, 0], xy[m, 1], c=col, marker=mk, s=18, label=f"{p} ({m.sum()})", edgecolors="k",
                       linewidths=0.3)
        ax.legend(fontsize=8)
        ax.set_title("synchronized binaries vs young stars (P < 7 d)")
        for a in axes:
            a.set_xticks([])
            a.set_yticks([])
        fig.suptitle(f"{key}: UMAP of the test + validation stars' embedding")
        path = out_dir / f"umap_{key}.png"
        tmp = out_dir / f".umap_{key}.tmp.png"
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, path)
        paths.append(path)
    return paths
