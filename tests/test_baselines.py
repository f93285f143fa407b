"""Alignment-baseline losses against straightforward reference implementations; baselines and heads learn
on toy correlated features."""
import math

import numpy as np
import pytest
import torch

from desa_core.evaluate.metrics import binary_scores, interval_coverage
from desa_core.models.baselines import (ALIGNMENT_METHODS, AlignmentBaseline, BaselineConfig,
                                        embed_alignment_baseline, fit_alignment_baseline, info_nce_loss,
                                        moco_loss, simsiam_loss, vicreg_loss)
from desa_core.models.heads import (HeadConfig, fit_age_head, fit_binary_head, pinball_loss, predict_age,
                                    predict_binary)


pytestmark = pytest.mark.usefixtures("one_thread")


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _ce(logits_row, target):
    m = max(logits_row)
    return -(logits_row[target] - m - math.log(sum(math.exp(l - m) for l in logits_row)))


def ref_info_nce(a, b, t):
    a = [_unit(r) for r in a.tolist()]
    b = [_unit(r) for r in b.tolist()]
    n = len(a)
    l_ab = sum(_ce([_dot(a[i], b[j]) / t for j in range(n)], i) for i in range(n)) / n
    l_ba = sum(_ce([_dot(b[i], a[j]) / t for j in range(n)], i) for i in range(n)) / n
    return 0.5 * (l_ab + l_ba)


def ref_moco(q, k, queue, t):
    q = [_unit(r) for r in q.tolist()]
    k = [_unit(r) for r in k.tolist()]
    neg = [_unit(r) for r in queue.tolist()]
    return sum(_ce([_dot(q[i], k[i]) / t] + [_dot(q[i], m) / t for m in neg], 0) for i in range(len(q))) / len(q)


def ref_vicreg(a, b, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
    a, b = a.double().numpy(), b.double().numpy()
    n, d = a.shape
    inv = np.mean(np.sum((a - b) ** 2, axis=1)) / d
    total = lam * inv
    for z in (a, b):
        std = np.sqrt(z.var(axis=0, ddof=1) + eps)
        total += mu * np.mean(np.maximum(0.0, gamma - std))
        c = np.cov(z, rowvar=False)
        total += nu * (np.sum(c ** 2) - np.sum(np.diag(c) ** 2)) / d
    return total


def ref_simsiam(p_a, z_a, p_b, z_b):
    def negcos(p, z):
        p, z = p.double().numpy(), z.double().numpy()
        return -np.mean(np.sum(p * z, 1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(z, axis=1)))
    return 0.5 * negcos(p_a, z_b) + 0.5 * negcos(p_b, z_a)


def test_losses_match_reference_implementations():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert float(info_nce_loss(a, b, 0.2)) == pytest.approx(ref_info_nce(a, b, 0.2), rel=1e-5)
    queue = torch.randn(11, 5, generator=g)
    assert float(moco_loss(a, b, queue, 0.07)) == pytest.approx(ref_moco(a, b, queue, 0.07), rel=1e-5)
    assert float(vicreg_loss(a, b)) == pytest.approx(ref_vicreg(a, b), rel=1e-5)
    pa, pb = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert float(simsiam_loss(pa, a, pb, b)) == pytest.approx(ref_simsiam(pa, a, pb, b), rel=1e-5)


def test_simsiam_and_moco_stop_gradients_on_targets():
    z = torch.randn(6, 4, requires_grad=True)
    p = torch.randn(6, 4, requires_grad=True)
    simsiam_loss(p, z, p, z).backward()
    assert z.grad is None and p.grad is not None
    k = torch.randn(6, 4, requires_grad=True)
    q = torch.randn(6, 4, requires_grad=True)
    moco_loss(q, k, torch.randn(9, 4)).backward()
    assert k.grad is None and q.grad is not None


def test_losses_validate_arguments():
    with pytest.raises(ValueError, match="differ in shape"):
        info_nce_loss(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0)
    with pytest.raises(ValueError, match="queue"):
        moco_loss(torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="unknown alignment method"):
        AlignmentBaseline(4, 4, "barlow")
    with pytest.raises(ValueError, match="batch_size"):
        BaselineConfig(batch_size=2).validate()


def _toy_features(n=600, seed=0):
    """Two 'modalities' that are noisy linear views of one shared 3-d latent (plus nuisance dims)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3))
    z_lc = np.concatenate([latent @ rng.normal(size=(3, 6)), rng.normal(size=(n, 4))], 1)
    z_spec = np.concatenate([latent @ rng.normal(size=(3, 10)), rng.normal(size=(n, 2))], 1)
    z_lc += 0.1 * rng.normal(size=z_lc.shape)
    z_spec += 0.1 * rng.normal(size=z_spec.shape)
    split = np.where(np.arange(n) < int(0.7 * n), "train", "val")
    return latent, z_lc.astype(np.float32), z_spec.astype(np.float32), split == "train", split == "val"


@pytest.mark.parametrize("method", ALIGNMENT_METHODS)
def test_baseline_loss_decreases_on_correlated_features(method):
    latent, z_lc, z_spec, train, val = _toy_features()
    cfg = BaselineConfig(hidden_dim=32, out_dim=8, epochs=15, batch_size=64, patience=15, moco_queue=128,
                         predictor_hidden=8)
    model, hist = fit_alignment_baseline(z_lc, z_spec, train, val, method, cfg, seed=0, progress=False)
    assert hist["val_loss"][0] > hist["best_val_loss"]
    emb = embed_alignment_baseline(model, z_lc, z_spec)
    assert emb.shape == (len(z_lc), 16) and np.all(np.isfinite(emb))
    # A star lacking its light curve still gets a finite embedding (the mean enters for it).
    emb_missing = embed_alignment_baseline(model, z_lc, z_spec, has_lc=np.zeros(len(z_lc), bool))
    assert np.all(np.isfinite(emb_missing))
    np.testing.assert_allclose(emb_missing[:, :8], emb[:, :8], rtol=1e-5, atol=1e-5)


def test_clip_aligns_matching_pairs_better_than_chance():
    latent, z_lc, z_spec, train, val = _toy_features(seed=1)
    cfg = BaselineConfig(hidden_dim=32, out_dim=8, epochs=30, batch_size=64, patience=30)
    model, _ = fit_alignment_baseline(z_lc, z_spec, train, val, "clip", cfg, seed=0, progress=False)
    emb = embed_alignment_baseline(model, z_lc[val], z_spec[val])
    s = emb[:, :8] / np.linalg.norm(emb[:, :8], axis=1, keepdims=True)
    l = emb[:, 8:] / np.linalg.norm(emb[:, 8:], axis=1, keepdims=True)
    top1 = np.mean(np.argmax(s @ l.T, axis=1) == np.arange(len(s)))
    assert top1 > 10.0 / len(s)   # chance is 1 / n


# ------------------------------------------------------------------------------------------------ heads
def test_pinball_loss_reference():
    pred = torch.tensor([[0.0, 1.0, 2.0]])
    y = torch.tensor([1.5])
    q = (0.1, 0.5, 0.9)
    expected = (0.1 * 1.5 + 0.5 * 0.5 + (0.9 - 1) * (1.5 - 2.0)) / 3
    assert float(pinball_loss(pred, y, q)) == pytest.approx(expected)


def test_heads_learn_and_age_interval_is_calibrated():
    rng = np.random.default_rng(0)
    n = 1500
    x = rng.normal(size=(n, 6)).astype(np.float32)
    is_binary = (x[:, 0] + 0.3 * rng.normal(size=n)) > 0.5
    age = np.clip(5 + 2 * x[:, 1] + rng.normal(scale=1.0, size=n), 0.1, 12)
    split = rng.choice(["train", "val", "test"], size=n, p=[0.6, 0.2, 0.2])
    train, val, test = split == "train", split == "val", split == "test"
    cfg = HeadConfig(hidden_dim=16, epochs=60, patience=10)
    bh, _ = fit_binary_head(x, is_binary, train, val, cfg, progress=False)
    assert binary_scores(is_binary[test], predict_binary(bh, x[test]))["auc"] > 0.9
    ah, hist = fit_age_head(x, age, train, val, cfg, progress=False)
    lo, mid, hi = predict_age(ah, x[test])
    assert np.all(lo <= mid) and np.all(mid <= hi)
    assert np.sqrt(np.mean((mid - age[test]) ** 2)) < 1.4
    assert interval_coverage(age[test], lo, hi) == pytest.approx(0.72, abs=0.08)
    assert hist["n_calibration"] + hist["n_early_stop"] == val.sum()


def test_heads_reject_overlapping_masks():
    x = np.zeros((10, 2), np.float32)
    m = np.ones(10, bool)
    with pytest.raises(ValueError, match="both the training and the validation"):
        fit_binary_head(x, np.arange(10) % 2, m, m, progress=False)


def test_heads_are_deterministic_for_a_seed():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = x[:, 0] > 0
    split = np.where(np.arange(300) < 200, "train", "val")
    cfg = HeadConfig(hidden_dim=8, epochs=5)
    torch.manual_seed(1)
    a, _ = fit_binary_head(x, y, split == "train", split == "val", cfg, seed=3, progress=False)
    torch.manual_seed(2)   # another global state must not matter
    b, _ = fit_binary_head(x, y, split == "train", split == "val", cfg, seed=3, progress=False)
    np.testing.assert_array_equal(predict_binary(a, x), predict_binary(b, x))
