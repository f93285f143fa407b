"""Evaluation metrics reproduce known values on toy inputs."""
import numpy as np
import pytest
import torch

from desa_core.evaluate.metrics import (binary_scores, clustering_agreement, conformal_offset, few_shot_r2,
                                        interval_coverage, knn_balanced_accuracy, purity, regression_scores)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_binary_scores_known_ranking():
    # One of the four positive/negative pairs is mis-ordered (0.4 > 0.35): AUC = 3/4.
    s = binary_scores([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert s["auc"] == pytest.approx(0.75)
    # AP: positives ranked 1st and 3rd -> (1/1 + 2/3) / 2
    assert s["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert binary_scores([0, 1, 0, 1], [0, 1, 0, 1])["auc"] == 1.0


def test_binary_scores_rejects_single_class():
    with pytest.raises(ValueError, match="both classes"):
        binary_scores([1, 1, 1], [0.2, 0.5, 0.9])


def test_regression_scores():
    r = regression_scores([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 6.0])
    assert r["rmse"] == pytest.approx(1.0)
    assert r["mae"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="length mismatch"):
        regression_scores([1, 2, 3], [1, 2])


def test_few_shot_r2_exact_linear_map_is_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 12))
    w = rng.normal(size=(12, 2))
    y = x @ w + 3.0
    r = few_shot_r2(x, {"bp_rp": y[:, 0], "abs_g": y[:, 1]}, train_fraction=0.2, seed=1)
    assert r["bp_rp"] > 0.999 and r["abs_g"] > 0.999 and r["mean"] > 0.999
    assert r["n_fit"] == 100 and r["n_score"] == 400
    # noise targets carry no information: R^2 near zero or below
    r0 = few_shot_r2(x, {"noise": rng.normal(size=500)}, seed=1)
    assert r0["noise"] < 0.1


def test_clustering_identical_partitions_ari_one():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0, 0], [20, 0, 0], [0, 20, 0], [0, 0, 20]], float)
    labels = np.repeat(np.array(["dwarf", "subgiant", "giant", "photometric_binary"]), 60)
    x = centres[np.repeat(np.arange(4), 60)] + rng.normal(scale=0.5, size=(240, 3))
    r = clustering_agreement(x, labels, seed=0)
    assert r["gmm_ari"] == pytest.approx(1.0)
    assert r["kmeans_ari"] == pytest.approx(1.0)
    assert r["gmm_purity"] == pytest.approx(1.0)
    assert purity(["a", "a", "b", "b"], [0, 0, 0, 0]) == 0.5


def test_knn_perfectly_separable_bacc_one_and_random_near_half():
    rng = np.random.default_rng(2)
    y = np.array(["sync"] * 15 + ["young"] * 40)
    x = np.where((y == "sync")[:, None], 5.0, -5.0) + rng.normal(size=(55, 4))
    r = knn_balanced_accuracy(x, y, k=10, seed=0)
    assert r["balanced_accuracy"] == 1.0
    assert r["counts"] == {"sync": 15, "young": 40}
    noise = knn_balanced_accuracy(rng.normal(size=(400, 4)), rng.integers(0, 2, 400), k=10, seed=0)
    assert 0.35 < noise["balanced_accuracy"] < 0.65


def test_knn_needs_two_members_per_class():
    with pytest.raises(ValueError, match="2 members"):
        knn_balanced_accuracy(np.zeros((5, 2)), [0, 0, 0, 0, 1])


def test_conformal_coverage_is_nominal_on_synthetic_data():
    # Deliberately too-narrow raw intervals; CQR on a calibration set restores the nominal coverage.
    rng = np.random.default_rng(3)
    nominal = 0.72

    def draw(n):
        x = rng.uniform(0, 10, n)
        y = x + rng.normal(scale=1.0 + 0.2 * x, size=n)
        return y, x - 0.3, x + 0.3

    y_cal, lo_cal, hi_cal = draw(2000)
    q = conformal_offset(y_cal, lo_cal, hi_cal, nominal)
    assert q > 0
    y_te, lo_te, hi_te = draw(20000)
    assert interval_coverage(y_te, lo_te, hi_te) < 0.4
    assert interval_coverage(y_te, lo_te - q, hi_te + q) == pytest.approx(nominal, abs=0.02)


def test_conformal_offset_validates_coverage():
    with pytest.raises(ValueError, match="coverage"):
        conformal_offset([1, 2, 3], [0, 1, 2], [2, 3, 4], 1.5)


def test_bootstrap_ci_brackets_the_value_and_repeats_average():
    from desa_core.evaluate.metrics import bootstrap_ci
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    s = y + rng.normal(scale=1.0, size=400)
    auc = binary_scores(y, s)["auc"]
    lo, hi = bootstrap_ci(lambda a, b: binary_scores(a, b)["auc"], y, s)
    assert lo < auc < hi and hi - lo < 0.2
    x = rng.normal(size=(60, 3))
    lab = rng.integers(0, 2, 60)
    r = knn_balanced_accuracy(x, lab, k=5, n_repeats=4)
    assert r["n_repeats"] == 4 and r["std_over_repeats"] >= 0
