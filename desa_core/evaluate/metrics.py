"""Evaluation metrics: plain functions of arrays, no model or file knowledge.

Every function validates its inputs and returns plain Python floats / dicts so the results go straight
into ``metrics.json``. The protocols follow the DESA paper (Kamai, Bronstein & Perets 2025, section 6 of
``docs/desa-method.md``):

- :func:`binary_scores` -- ROC AUC and average precision of a binary score;
- :func:`regression_scores` -- RMSE / MAE / R^2;
- :func:`interval_coverage` and :func:`conformal_offset` -- conformalized quantile regression (CQR,
  Romano, Patterson & Candes 2019);
- :func:`few_shot_r2` -- linear probe on a standardised embedding, 20 % train / 80 % test;
- :func:`clustering_agreement` -- Gaussian-mixture and K-means partitions vs known classes (ARI, purity);
- :func:`knn_balanced_accuracy` -- stratified cross-validated k-NN balanced accuracy;
- :func:`neighbour_quality` -- how alike a star's nearest neighbours in the embedding are, against random pairs;
- :func:`paired_difference` -- mean difference of two models over the same seeds, with a 95 % t interval.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.metrics import (adjusted_rand_score, average_precision_score, balanced_accuracy_score,
                             r2_score, roc_auc_score)
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neighbors import KNeighborsClassifier

log = logging.getLogger(__name__)

# Ridge penalties searched by leave-one-out CV *inside* the 20 % probe-training part only; with few
# training stars and hundreds of embedding dimensions, unpenalised least squares would only measure
# over-fitting, not the embedding.
PROBE_ALPHAS = tuple(10.0 ** np.arange(-3, 5))


def _as_1d(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a


def _as_2d(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be two-dimensional (stars x features), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _same_length(*pairs) -> None:
    n = {len(a) for _, a in pairs}
    if len(n) != 1:
        raise ValueError("length mismatch: " + ", ".join(f"{k}={len(a)}" for k, a in pairs))


def binary_scores(y_true, score) -> dict:
    """ROC AUC and average precision (AP) of ``score`` for the binary truth ``y_true``.

    >>> binary_scores([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])["auc"]
    0.75
    """
    y = _as_1d(y_true, "y_true").astype(bool)
    s = _as_1d(score, "score").astype(np.float64)
    _same_length(("y_true", y), ("score", s))
    if y.all() or not y.any():
        raise ValueError("binary_scores needs both classes in y_true")
    if not np.all(np.isfinite(s)):
        raise ValueError("score contains NaN or infinite values")
    return {"auc": float(roc_auc_score(y, s)), "ap": float(average_precision_score(y, s)),
            "n": int(len(y)), "n_positive": int(y.sum())}


def regression_scores(y_true, y_pred) -> dict:
    """RMSE, MAE and R^2 of a point prediction."""
    y = _as_1d(y_true, "y_true").astype(np.float64)
    p = _as_1d(y_pred, "y_pred").astype(np.float64)
    _same_length(("y_true", y), ("y_pred", p))
    if len(y) < 2:
        raise ValueError("regression_scores needs at least two values")
    err = p - y
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "r2": float(r2_score(y, p)), "n": int(len(y))}


def interval_coverage(y_true, lower, upper) -> float:
    """Fraction of ``y_true`` inside the closed intervals ``[lower, upper]``."""
    y = _as_1d(y_true, "y_true").astype(np.float64)
    lo = _as_1d(lower, "lower").astype(np.float64)
    hi = _as_1d(upper, "upper").astype(np.float64)
    _same_length(("y_true", y), ("lower", lo), ("upper", hi))
    return float(np.mean((y >= lo) & (y <= hi)))


def conformal_offset(y_cal, lower_cal, upper_cal, coverage: float) -> float:
    """CQR correction (Romano, Patterson & Candes 2019, "Conformalized Quantile Regression").

    Conformity score E_i = max(lower_i - y_i, y_i - upper_i) on a calibration set that the quantile model
    never trained on; the returned Q is the ceil((n+1) coverage)/n empirical quantile of E. The calibrated
    interval ``[lower - Q, upper + Q]`` then covers a new exchangeable point with probability >= coverage.
    Q may be negative (the raw intervals were too wide).
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    y = _as_1d(y_cal, "y_cal").astype(np.float64)
    lo = _as_1d(lower_cal, "lower_cal").astype(np.float64)
    hi = _as_1d(upper_cal, "upper_cal").astype(np.float64)
    _same_length(("y_cal", y), ("lower_cal", lo), ("upper_cal", hi))
    n = len(y)
    if n < 2:
        raise ValueError("conformal calibration needs at least two calibration points")
    scores = np.maximum(lo - y, y - hi)
    level = min(1.0, np.ceil((n + 1) * coverage) / n)
    return float(np.quantile(scores, level, method="higher"))


def standardise(x_fit, *xs):
    """Z-score with the mean / std of ``x_fit`` (dimensions with zero spread are left centred)."""
    x_fit = _as_2d(x_fit, "x_fit")
    mu = x_fit.mean(axis=0)
    sd = x_fit.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    out = [(x_fit - mu) / sd] + [(_as_2d(x, "x") - mu) / sd for x in xs]
    return out if xs else out[0]


def few_shot_r2(embedding, targets: dict, train_fraction: float = 0.2, seed: int = 0) -> dict:
    """Few-shot linear probe: R^2 of a ridge regression on the standardised embedding.

    Stars are split once (``train_fraction`` for fitting, the rest for scoring, fixed ``seed``); the
    embedding is standardised with the fitting part's statistics; the ridge penalty is chosen by
    leave-one-out CV on the fitting part only. Returns ``{target: R^2}`` on the scoring part, plus
    ``"mean"`` over targets and ``"n_fit"``/``"n_score"``.
    """
    x = _as_2d(embedding, "embedding")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if not targets:
        raise ValueError("few_shot_r2 needs at least one target")
    ys = {}
    for k, v in targets.items():
        v = _as_1d(v, k).astype(np.float64)
        _same_length(("embedding", x), (k, v))
        if not np.all(np.isfinite(v)):
            raise ValueError(f"target {k} contains NaN or infinite values")
        ys[k] = v
    idx_fit, idx_score = train_test_split(np.arange(len(x)), train_size=train_fraction, random_state=seed)
    if len(idx_fit) < 5 or len(idx_score) < 5:
        raise ValueError(f"few_shot_r2 needs more stars (got {len(x)})")
    x_fit, x_score = standardise(x[idx_fit], x[idx_score])
    out = {}
    for k, y in ys.items():
        model = RidgeCV(alphas=PROBE_ALPHAS).fit(x_fit, y[idx_fit])
        out[k] = float(r2_score(y[idx_score], model.predict(x_score)))
    out["mean"] = float(np.mean([out[k] for k in ys]))
    out["n_fit"] = int(len(idx_fit))
    out["n_score"] = int(len(idx_score))
    return out


def bootstrap_ci(metric, *arrays, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> list | None:
    """Percentile bootstrap interval of ``metric(*arrays)`` over resampled stars (rows); resamples on which
    the metric fails (e.g. one class only) are skipped. None if fewer than half succeed."""
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            vals.append(float(metric(*(a[idx] for a in arrays))))
        except ValueError:
            continue
    if len(vals) < n_boot // 2:
        return None
    a = (1 - level) / 2
    return [float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))]


def purity(labels_true, labels_pred) -> float:
    """Cluster purity: each cluster votes for its majority class; fraction of stars in that class."""
    t = _as_1d(labels_true, "labels_true")
    p = _as_1d(labels_pred, "labels_pred")
    _same_length(("labels_true", t), ("labels_pred", p))
    total = 0
    for c in np.unique(p):
        _, counts = np.unique(t[p == c], return_counts=True)
        total += counts.max()
    return float(total / len(t))


def clustering_agreement(embedding, classes, n_components: int = 10, seed: int = 0) -> dict:
    """Zero-shot clustering: GMM and K-means (k = number of classes) vs the known ``classes``.

    The embedding is standardised and reduced to ``n_components`` principal components first: a full-
    covariance mixture in hundreds of dimensions on a few thousand stars is ill-posed.
    Returns ARI and purity for both algorithms.
    """
    x = _as_2d(embedding, "embedding")
    c = _as_1d(classes, "classes")
    _same_length(("embedding", x), ("classes", c))
    k = len(np.unique(c))
    if k < 2:
        raise ValueError("clustering_agreement needs at least two classes")
    xs = standardise(x)
    nc = max(1, min(n_components, xs.shape[1], len(xs) - 1))
    z = PCA(n_components=nc, random_state=seed).fit_transform(xs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on degenerate toy inputs
        gmm = GaussianMixture(n_components=k, covariance_type="full", n_init=3, reg_covar=1e-4,
                              random_state=seed).fit(z).predict(z)
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z)
    return {"gmm_ari": float(adjusted_rand_score(c, gmm)), "gmm_purity": purity(c, gmm),
            "kmeans_ari": float(adjusted_rand_score(c, km)), "kmeans_purity": purity(c, km),
            "n_classes": int(k), "n": int(len(c))}


def knn_balanced_accuracy(embedding, labels, k: int = 10, n_splits: int = 5, seed: int = 0,
                          n_repeats: int = 1) -> dict:
    """Stratified k-fold cross-validated balanced accuracy of a k-NN classifier in the embedding.

    The embedding is standardised with each training fold's statistics (Euclidean distance then weighs
    every dimension alike). ``n_splits`` shrinks to the smallest class count; ``k`` to the fold's size.
    With ``n_repeats`` > 1 the CV is repeated with different fold draws (seed, seed+1, ...) and the mean is
    returned, with the spread over repeats in ``"std_over_repeats"`` (small samples: fold luck matters).
    """
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1, got {n_repeats}")
    runs = [_knn_bacc_once(embedding, labels, k, n_splits, seed + r) for r in range(n_repeats)]
    out = dict(runs[0])
    accs = [r["balanced_accuracy"] for r in runs]
    out.update(balanced_accuracy=float(np.mean(accs)), std_over_repeats=float(np.std(accs)),
               n_repeats=int(n_repeats))
    return out


def _knn_bacc_once(embedding, labels, k: int, n_splits: int, seed: int) -> dict:
    x = _as_2d(embedding, "embedding")
    y = _as_1d(labels, "labels")
    _same_length(("embedding", x), ("labels", y))
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError("knn_balanced_accuracy needs at least two classes")
    splits = int(min(n_splits, counts.min()))
    if splits < 2:
        raise ValueError(f"knn_balanced_accuracy needs >= 2 members per class, got counts "
                         f"{dict(zip(classes.tolist(), counts.tolist()))}")
    pred = np.empty_like(y)
    for tr, te in StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed).split(x, y):
        x_tr, x_te = standardise(x[tr], x[te])
        clf = KNeighborsClassifier(n_neighbors=int(min(k, len(tr)))).fit(x_tr, y[tr])
        pred[te] = clf.predict(x_te)
    return {"balanced_accuracy": float(balanced_accuracy_score(y, pred)), "k": int(k), "n_splits": splits,
            "counts": {str(c): int(n) for c, n in zip(classes, counts)}}


def neighbour_quality(embedding, numeric: dict, categorical: dict, query_mask, pool_mask, k: int = 10,
                      seed: int = 0) -> dict:
    """The metric of the product's own uses (similarity search, the UMAP): are a star's k nearest neighbours
    physically alike?

    Neighbours are found as the dashboard finds them: cosine similarity of the embedding centred on the
    pool's mean, each query star (``query_mask``) against every star of ``pool_mask`` but itself. For each
    ``numeric`` property p (name -> values; NaN = unknown) the score is ``1 - median|dp|(neighbour pairs) /
    median|dp|(random pairs)`` (the random partners drawn from the same pool, k per query), clipped to [0, 1]:
    0 = neighbours no more alike than strangers, 1 = identical. For each ``categorical`` property the score
    is the chance-corrected agreement ``(a_nn - a_rand) / (1 - a_rand)`` (a = fraction of pairs in the same
    class), clipped to [0, 1]. ``neighbour_quality`` is the mean of the scores.
    """
    x = _as_2d(embedding, "embedding").astype(np.float64)
    q_rows, p_rows = np.flatnonzero(np.asarray(query_mask, bool)), np.flatnonzero(np.asarray(pool_mask, bool))
    if len(q_rows) < 2 or len(p_rows) <= k:
        raise ValueError(f"neighbour_quality needs >= 2 query stars and > k={k} pool stars "
                         f"(got {len(q_rows)} and {len(p_rows)})")
    ok = np.isfinite(x).all(1)
    q_rows, p_rows = q_rows[ok[q_rows]], p_rows[ok[p_rows]]
    from desa_core.index import normalize_rows   # the cosine of the dashboard's FAISS indexes
    centre = x[p_rows].mean(0)
    pool = normalize_rows(x[p_rows] - centre)
    nn = np.empty((len(q_rows), k), dtype=np.int64)
    pos_in_pool = np.full(len(x), -1, np.int64)
    pos_in_pool[p_rows] = np.arange(len(p_rows))
    for i0 in range(0, len(q_rows), 1024):
        rows = q_rows[i0:i0 + 1024]
        sim = normalize_rows(x[rows] - centre) @ pool.T
        own = pos_in_pool[rows]
        sim[np.flatnonzero(own >= 0), own[own >= 0]] = -np.inf   # never the star itself
        part = np.argpartition(-sim, k, axis=1)[:, :k]
        nn[i0:i0 + len(rows)] = p_rows[part]
    rng = np.random.default_rng(seed)
    rand = p_rows[rng.integers(0, len(p_rows), size=(len(q_rows), k))]
    parts = {}
    for name, v in numeric.items():
        v = np.asarray(v, np.float64)
        d_nn = np.abs(v[nn] - v[q_rows, None]).ravel()
        d_rand = np.abs(v[rand] - v[q_rows, None]).ravel()
        d_nn, d_rand = d_nn[np.isfinite(d_nn)], d_rand[np.isfinite(d_rand)]
        if len(d_nn) == 0 or len(d_rand) == 0 or np.median(d_rand) <= 0:
            continue
        parts[name] = float(np.clip(1.0 - np.median(d_nn) / np.median(d_rand), 0.0, 1.0))
    for name, v in categorical.items():
        v = np.asarray(v).astype(str)
        a_nn = float(np.mean(v[nn] == v[q_rows, None]))
        a_rand = float(np.mean(v[rand] == v[q_rows, None]))
        if a_rand >= 1.0:
            continue
        parts[name] = float(np.clip((a_nn - a_rand) / (1.0 - a_rand), 0.0, 1.0))
    if not parts:
        raise ValueError("neighbour_quality: no property has known values on the query stars")
    return {"neighbour_quality": float(np.mean(list(parts.values()))), "parts": parts, "k": int(k),
            "n_query": int(len(q_rows)), "n_pool": int(len(p_rows))}


def paired_difference(a, b, level: float = 0.95) -> dict | None:
    """Mean and ``level`` Student-t interval of ``a - b`` over paired runs (the same seeds); None when fewer
    than two pairs are finite. The interval excluding 0 is what makes a difference a finding."""
    from scipy import stats
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return None
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * sd / np.sqrt(len(d)))
    return {"mean": mean, "std": sd, "ci95": [mean - half, mean + half], "n": int(len(d))}
