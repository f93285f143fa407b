"""Model modules on random tensors (tiny sizes, CPU, seconds): shapes, finiteness, loss properties, sizes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from desa_core.models.config import (DualFormerConfig, LightCurveEncoderConfig, SpectraEncoderConfig, get_config)
from desa_core.models.dualformer import DualFormer, alignment_loss
from desa_core.models.layers import (ConformerBlock, RotaryEmbedding, apply_rotary, count_parameters,
                                     pinball_loss)
from desa_core.models.light_curve_encoder import LightCurveEncoder, LightCurvePretrainer, simsiam_loss
from desa_core.models.spectra_encoder import SpectraEncoder, SpectraPretrainer

TINY_LC = LightCurveEncoderConfig(cnn_channels=(4, 8), cnn_kernel=3, patch=8, width=16, depth=1, heads=2,
                                  conv_kernel=3, projector_hidden=16, out_dim=8, predictor_hidden=4)
TINY_SPEC = SpectraEncoderConfig(stem_channels=(4, 8, 16), stem_kernel=3, stem_stride=4, stem_pools=(4, 4, 4),
                                 width=16, depth=1, heads=2, conv_kernel=3, ffn_mult=1.0,
                                 decoder_channels=(8, 8, 4), decoder_shuffle=4)


def tiny_dualformer(**kw) -> DualFormerConfig:
    return DualFormerConfig(**{"dim": 8, "depth": 2, "heads": 2, "ffn_dim": 16, **kw})


def random_batch(b=6, d_spec=12, d_lc=10, missing=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    has_s = torch.ones(b, dtype=torch.bool)
    has_l = torch.ones(b, dtype=torch.bool)
    if missing:
        has_s[0] = False
        has_l[1] = False
    return (torch.randn(b, d_spec, generator=g), torch.randn(b, d_lc, generator=g), has_s, has_l)


# ----------------------------------------------------------------------------------------------- layers
def test_rotary_attention_scores_depend_on_relative_position_only():
    rot = RotaryEmbedding(8)
    cos, sin = rot(20)
    q, k = torch.randn(8), torch.randn(8)

    def score(m, n):
        qm = apply_rotary(q.expand(20, 8), cos, sin)[m]
        kn = apply_rotary(k.expand(20, 8), cos, sin)[n]
        return float(qm @ kn)

    assert score(3, 7) == pytest.approx(score(10, 14), rel=1e-4, abs=1e-5)
    assert score(3, 7) != pytest.approx(score(3, 12), rel=1e-3)


def test_partial_rotary_leaves_the_rest_of_the_head_untouched():
    rot = RotaryEmbedding(16, fraction=0.5)
    cos, sin = rot(5)
    x = torch.randn(5, 16)
    y = apply_rotary(x, cos, sin)
    assert rot.rot_dim == 8
    torch.testing.assert_close(y[:, 8:], x[:, 8:])
    torch.testing.assert_close(y[0], x[0])                # position 0: no rotation


@pytest.mark.parametrize("macaron,post_norm,ffn_mult", [(False, False, 2.0), (True, False, 2.0), (False, True, 0.0)])
def test_conformer_block_shapes(macaron, post_norm, ffn_mult):
    blk = ConformerBlock(16, 2, 3, ffn_mult, macaron=macaron, post_norm=post_norm, rotary_fraction=0.5)
    x = torch.randn(3, 11, 16)
    y = blk(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()


def test_pinball_loss_matches_reference_and_ignores_nan():
    q = (0.1, 0.5, 0.9)
    pred = torch.randn(5, 2, 3)
    target = torch.randn(5, 2)
    ref = 0.0
    for i in range(5):
        for k in range(2):
            ref += np.mean([max(qq * float(target[i, k] - pred[i, k, j]), (qq - 1) * float(target[i, k] - pred[i, k, j]))
                            for j, qq in enumerate(q)])
    assert float(pinball_loss(pred, target, q)) == pytest.approx(ref / 10, rel=1e-5)
    t2 = target.clone()
    t2[0, 0] = float("nan")
    assert torch.isfinite(pinball_loss(pred, t2, q))


# ---------------------------------------------------------------------------------------------- encoders
def test_light_curve_encoder_and_pretrainer():
    enc = LightCurveEncoder(TINY_LC)
    x = torch.randn(3, 4, 128)
    z = enc(x)
    assert z.shape == (3, 8) and torch.isfinite(z).all()
    pre = LightCurvePretrainer(TINY_LC)
    out = pre(x, x + 0.1 * torch.randn_like(x), torch.tensor([0.1, float("nan"), 0.5]))
    assert set(out) == {"loss", "ssl", "regression"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in pre.encoder.parameters())
    with pytest.raises(ValueError, match="expects"):
        enc(torch.randn(3, 2, 128))


def test_simsiam_loss_is_minus_one_for_aligned_predictions():
    z = torch.randn(4, 6)
    assert float(simsiam_loss(z, z, z, z)) == pytest.approx(-1.0, abs=1e-6)


def test_spectra_encoder_and_masked_reconstruction_reaches_the_conformer():
    enc = SpectraEncoder(TINY_SPEC)
    x = torch.randn(2, 1, 4096)
    assert enc.tokens(x).shape == (2, 4096 // (4 * 64), 16)
    assert enc(x).shape == (2, 16)
    pre = SpectraPretrainer(TINY_SPEC, ssl_weight=1.0, regression_weight=0.0)
    out = pre(x, torch.randn(2, 3), torch.tensor([10.0, 50.0]), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    # With the regression weight at 0, the Conformer still gets gradient: the decoder reads its output tokens.
    conformer_grads = [p.grad for p in pre.encoder.conformer.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in conformer_grads)


# -------------------------------------------------------------------------------------------- DualFormer
@pytest.mark.parametrize("attention_type", ["cross_self", "cross", "self"])
@pytest.mark.parametrize("projection_type", ["transpose", "same"])
@pytest.mark.parametrize("symmetric_A", [True, False])
@pytest.mark.parametrize("readout", [("per_feature", "pool_then_norm"), ("shared", "norm_then_pool")])
def test_dualformer_shapes_finite_and_trainable(attention_type, projection_type, symmetric_A, readout):
    cfg = tiny_dualformer(attention_type=attention_type, projection_type=projection_type, symmetric_A=symmetric_A,
                          cross_cov=True, variance_term=True, token_lifting=readout[0], pooling=readout[1])
    torch.manual_seed(0)
    m = DualFormer(cfg, d_spec=12, d_lc=10)
    out = m(*random_batch())
    for k in ("h_s", "h_l", "p_s", "p_l"):
        assert out[k].shape == (6, 8) and torch.isfinite(out[k]).all()
    terms = alignment_loss(out, cfg)
    assert set(terms) == {"loss", "duality", "cov", "cross_cov", "variance"}
    terms["loss"].backward()
    assert m.A_weight.grad is not None and torch.isfinite(m.A_weight.grad).all()
    assert m.placeholder_spec.grad is not None      # star 0 lacks a spectrum: the placeholder is used
    m.finalize()
    emb = m(*random_batch())["embedding"]
    assert emb.shape == (6, 8) and torch.isfinite(emb).all()


def test_cross_attention_mixes_streams_and_self_only_does_not():
    z_s, z_l, has_s, has_l = random_batch(missing=False)
    for t, mixes in (("cross_self", True), ("self", False)):
        torch.manual_seed(0)
        m = DualFormer(tiny_dualformer(attention_type=t), 12, 10).eval()
        a = m(z_s, z_l, has_s, has_l)["h_s"]
        b = m(z_s, z_l + 1.0, has_s, has_l)["h_s"]
        assert (not torch.allclose(a, b)) == mixes


def test_default_readout_keeps_what_the_features_carry():
    """An untrained DualFormer's embedding must still hold its input features linearly (docs/model.md): the
    default per-feature lifting with LayerNorm after pooling does; the paper's shared lifting with a
    LayerNorm per scalar token loses much of it."""
    from sklearn.linear_model import RidgeCV
    gen = torch.Generator().manual_seed(1)
    n = 600
    z_s, z_l = torch.randn(n, 12, generator=gen), torch.randn(n, 10, generator=gen)
    has = torch.ones(n, dtype=torch.bool)
    r2 = {}
    for readout in (("per_feature", "pool_then_norm"), ("shared", "norm_then_pool")):
        torch.manual_seed(0)
        m = DualFormer(tiny_dualformer(dim=32, heads=4, token_lifting=readout[0], pooling=readout[1]), 12, 10)
        m.finalize()
        with torch.no_grad():
            emb = m.eval()(z_s, z_l, has, has)["embedding"].numpy()
        target = torch.cat([z_s, z_l], 1).numpy()
        fit, score = slice(0, 400), slice(400, n)
        r2[readout[0]] = np.mean([RidgeCV(alphas=np.logspace(-3, 3, 7)).fit(emb[fit], t[fit]).score(emb[score], t[score])
                                  for t in target.T])
    assert r2["per_feature"] > 0.8, r2
    assert r2["per_feature"] > r2["shared"] + 0.2, r2


def test_dualformer_config_rejects_unknown_readout():
    with pytest.raises(ValueError, match="token_lifting"):
        DualFormerConfig(token_lifting="per_token")
    with pytest.raises(ValueError, match="pooling"):
        DualFormerConfig(pooling="max")


def reference_alignment_loss(h_s, h_l, A, projection_type, cov_weight=0.5, duality_weight=0.5):
    """Straightforward per-star / per-entry implementation of method section 4's loss."""
    b, d = h_s.shape
    q = [float(h_s[i] @ A @ h_s[i] - h_l[i] @ A @ h_l[i]) ** 2 for i in range(b)]
    p_s = h_s @ A.T
    p_l = h_l @ A if projection_type == "transpose" else h_l @ A.T
    cov = 0.0
    for p in (p_s, p_l):
        c = np.cov(p.numpy().T)
        cov += (np.sum(c ** 2) - np.sum(np.diag(c) ** 2)) / d
    return duality_weight * np.mean(q) + cov_weight * cov


@pytest.mark.parametrize("projection_type", ["transpose", "same"])
def test_alignment_loss_matches_reference(projection_type):
    cfg = tiny_dualformer(projection_type=projection_type, symmetric_A=False)
    torch.manual_seed(1)
    m = DualFormer(cfg, 12, 10)
    with torch.no_grad():
        m.A_weight.copy_(torch.randn(8, 8))
        out = m(*random_batch())
        ours = float(alignment_loss(out, cfg)["loss"])
    ref = reference_alignment_loss(out["h_s"], out["h_l"], m.A.detach(), projection_type)
    assert ours == pytest.approx(ref, rel=1e-4)


def test_duality_term_is_zero_when_the_quadratic_forms_agree():
    cfg = tiny_dualformer()
    A = torch.randn(8, 8)
    A = A + A.T
    h = torch.randn(5, 8)
    # an orthogonal change of basis inside an eigenspace-preserving map keeps h^T A h: use h_l = h_s
    out = {"h_s": h, "h_l": h.clone(), "p_s": h @ A.T, "p_l": h @ A}
    assert float(alignment_loss(out, cfg)["duality"]) == pytest.approx(0.0, abs=1e-8)
    # and with h_l = -h_s (a different vector with the same quadratic form)
    out = {"h_s": h, "h_l": -h, "p_s": h @ A.T, "p_l": -h @ A}
    assert float(alignment_loss(out, cfg)["duality"]) == pytest.approx(0.0, abs=1e-6)
    out["h_l"] = h * 2
    out["p_l"] = 2 * h @ A
    assert float(alignment_loss(out, cfg)["duality"]) > 1e-3


def test_alignment_loss_rejects_a_batch_of_one():
    cfg = tiny_dualformer()
    h = torch.randn(1, 8)
    with pytest.raises(ValueError, match="at least 2"):
        alignment_loss({"h_s": h, "h_l": h, "p_s": h, "p_l": h}, cfg)


@pytest.mark.parametrize("symmetric_A", [True, False])
def test_eigenbasis_is_real_orthonormal_and_sorted(symmetric_A):
    torch.manual_seed(3)
    m = DualFormer(tiny_dualformer(symmetric_A=symmetric_A), 12, 10)
    with torch.no_grad():
        m.A_weight.copy_(torch.randn(8, 8))
    m.finalize()
    V, lam = m.eigenvectors.double(), m.eigenvalues.double()
    torch.testing.assert_close(V.T @ V, torch.eye(8, dtype=torch.float64), atol=1e-5, rtol=0)
    S = 0.5 * (m.A + m.A.T).detach().double()
    torch.testing.assert_close(S @ V, V * lam, atol=1e-4, rtol=0)
    assert torch.all(lam.abs()[:-1] >= lam.abs()[1:] - 1e-7)
    z = random_batch(missing=False)
    out = m(*z)
    torch.testing.assert_close(out["embedding"], (out["h_s"] + out["h_l"]) @ m.eigenvectors)


def test_symmetric_A_makes_transpose_and_same_projection_identical():
    cfg = tiny_dualformer(symmetric_A=True)
    torch.manual_seed(0)
    m = DualFormer(cfg, 12, 10)
    A = m.A.detach()
    torch.testing.assert_close(A, A.T)


def test_label_conditioned_ablation_needs_labels_and_widens_the_embedding():
    cfg = tiny_dualformer(label_conditioned=True)
    m = DualFormer(cfg, 12, 10)
    assert m.embedding_dim == 8 + 6
    with pytest.raises(ValueError, match="label_conditioned"):
        m(*random_batch())
    out = m(*random_batch(), labels=torch.randn(6, 6))
    assert out["p_s"].shape == (6, 14)
    assert not get_config("small").dualformer.label_conditioned
    assert not get_config("paper").dualformer.label_conditioned


def test_dualformer_config_validates_names():
    with pytest.raises(ValueError, match="attention_type"):
        DualFormerConfig(attention_type="both")
    with pytest.raises(ValueError, match="projection_type"):
        DualFormerConfig(projection_type="AtA")


# ----------------------------------------------------------------------------------------------- configs
def test_paper_config_parameter_counts_on_meta_device():
    cfg = get_config("paper")
    with torch.device("meta"):
        lc = LightCurveEncoder(cfg.light_curve)
        sp = SpectraEncoder(cfg.spectra)
        df = DualFormer(cfg.dualformer, sp.out_dim, lc.out_dim)
    assert (lc.out_dim, sp.out_dim) == (256, 2048)
    for module, paper in ((lc, 11e6), (sp, 522e6), (df, 10.6e6)):
        assert abs(count_parameters(module) / paper - 1) < 0.05, (type(module).__name__, count_parameters(module))


def test_small_config_builds_and_runs_on_cpu():
    cfg = get_config("small")
    lc, sp = LightCurveEncoder(cfg.light_curve), SpectraEncoder(cfg.spectra)
    assert lc(torch.randn(2, 4, cfg.preprocess.lc_length)).shape == (2, cfg.light_curve.out_dim)
    assert sp(torch.randn(2, 1, cfg.preprocess.spec_length)).shape == (2, cfg.spectra.out_dim)
    pre = SpectraPretrainer(cfg.spectra)
    out = pre(torch.randn(2, 1, 4096), torch.randn(2, 3), torch.ones(2))
    assert torch.isfinite(out["loss"])


def test_get_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown config"):
        get_config("huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dualformer:\n  dimm: 3\n")
    with pytest.raises(ValueError, match="bad.yaml.*dimm"):
        get_config(str(bad))
    ok = tmp_path / "mine.yaml"
    ok.write_text("dualformer:\n  dim: 16\n  heads: 4\n")
    cfg = get_config(str(ok))
    assert cfg.name == "mine" and cfg.dualformer.dim == 16
    assert dataclasses.asdict(cfg)["dualformer"]["depth"] == DualFormerConfig().depth


def test_runs_saved_before_the_readout_switches_load_with_the_papers_readout():
    """A run manifest written before `token_lifting` / `pooling` existed has neither key: it must rebuild the
    DualFormer it was trained with (shared lifting, LayerNorm per token), so its checkpoint loads."""
    from desa_core.models.config import config_from_dict
    d = get_config("small").to_dict()
    for key in ("token_lifting", "pooling"):
        d["dualformer"].pop(key)
    old = config_from_dict(d)
    assert (old.dualformer.token_lifting, old.dualformer.pooling) == ("shared", "norm_then_pool")
    legacy = DualFormer(dataclasses.replace(get_config("small").dualformer, token_lifting="shared",
                                            pooling="norm_then_pool"), 48, 32)
    DualFormer(old.dualformer, 48, 32).load_state_dict(legacy.state_dict())
    assert get_config("small").dualformer.token_lifting == "per_feature"


# ------------------------------------------------------------------------------------------ objectives
def _batch_dict(*a):
    z_s, z_l, has_s, has_l = a
    return {"z_spec": z_s, "z_lc": z_l, "has_spec": has_s, "has_lc": has_l}


def test_objective_desa_paper_is_the_alignment_loss():
    from desa_core.models.dualformer import objective_loss
    cfg = tiny_dualformer()
    torch.manual_seed(0)
    m = DualFormer(cfg, d_spec=12, d_lc=10)
    batch = _batch_dict(*random_batch())
    ours = objective_loss(m, batch, cfg, torch.Generator().manual_seed(0))
    ref = alignment_loss(m(**batch), cfg)
    assert set(ours) == set(ref) and float(ours["loss"].detach()) == pytest.approx(float(ref["loss"].detach()))


def test_comm_objective_shapes_terms_and_gradients():
    from desa_core.models.dualformer import objective_loss
    cfg = tiny_dualformer(objective="comm")
    torch.manual_seed(0)
    m = DualFormer(cfg, d_spec=12, d_lc=10)
    out = m(*random_batch())
    assert out["g"].shape == (6, 8) and torch.isfinite(out["g"]).all()
    terms = objective_loss(m, _batch_dict(*random_batch()), cfg, torch.Generator().manual_seed(0))
    assert set(terms) == {"loss", "fused", "unimodal"}
    assert float(terms["loss"]) == pytest.approx(float(terms["fused"] + terms["unimodal"]), rel=1e-5)
    terms["loss"].backward()
    assert m.comm_head[0].weight.grad is not None and m.placeholder_lc.grad is not None  # unimodal views use it
    assert m.lift_weight["s"].grad.abs().sum() > 0 if hasattr(m, "lift_weight") else m.lift.weight.grad is not None
    # The augmentations are random: another generator, another loss; the same generator, the same loss.
    again = objective_loss(m, _batch_dict(*random_batch()), cfg, torch.Generator().manual_seed(0))
    other = objective_loss(m, _batch_dict(*random_batch()), cfg, torch.Generator().manual_seed(1))
    assert float(again["loss"]) == pytest.approx(float(terms["loss"])) and float(other["loss"]) != float(terms["loss"])
    # Fewer than two stars with both modalities: only the fused term.
    z_s, z_l, has_s, has_l = random_batch()
    has_s[2:] = False
    t = objective_loss(m, _batch_dict(z_s, z_l, has_s, has_l), cfg, torch.Generator().manual_seed(0))
    assert set(t) == {"loss", "fused"}
    with pytest.raises(ValueError, match="objective must be one of"):
        tiny_dualformer(objective="clip")


def _shared_signal_features(n=400, n_train=300):
    """Frozen features of n stars whose spectrum and light-curve features share a 3-d latent (plus noise)."""
    from desa_core.rundir import FrozenFeatures
    rng = np.random.default_rng(0)
    lat = rng.normal(size=(n, 3))
    z_spec = (lat @ rng.normal(size=(3, 12)) + 0.2 * rng.normal(size=(n, 12))).astype(np.float32)
    z_lc = (lat @ rng.normal(size=(3, 10)) + 0.2 * rng.normal(size=(n, 10))).astype(np.float32)
    has = np.ones(n, bool)
    feats = FrozenFeatures(star_id=np.array([f"s{i}" for i in range(n)]), z_spec=z_spec, z_lc=z_lc,
                           has_spec=has, has_lc=has, split=np.where(np.arange(n) < n_train, "train", "val"))
    val = {"z_spec": torch.from_numpy(z_spec[n_train:]), "z_lc": torch.from_numpy(z_lc[n_train:]),
           "has_spec": torch.from_numpy(has[n_train:]), "has_lc": torch.from_numpy(has[n_train:])}
    return feats, val


def test_comm_training_lowers_its_loss_and_embeds(tmp_path):
    """A DualFormer trained with CoMM on features that share a signal: the objective falls from its value at
    initialisation, and the finalised model embeds every star."""
    from desa_core.models.config import TrainConfig
    from desa_core.models.dualformer import objective_loss
    from desa_core.train.alignment import embed_dualformer, train_dualformer
    feats, batch = _shared_signal_features()
    n = len(feats)
    cfg = tiny_dualformer(objective="comm", depth=1)
    tcfg = TrainConfig(align_epochs=6, align_batch_size=64, torch_threads=None)

    def val_loss(model):
        with torch.no_grad():
            return float(objective_loss(model, batch, cfg, torch.Generator().manual_seed(0))["loss"])

    untrained = train_dualformer(feats, cfg, dataclasses.replace(tcfg, align_epochs=0), seed=0)
    trained = train_dualformer(feats, cfg, tcfg, seed=0)
    assert val_loss(trained) < val_loss(untrained) - 0.5     # nats: ~8.7 at initialisation, ~7.3 after 6 epochs
    emb = embed_dualformer(trained, feats)["embedding"]
    assert emb.shape == (n, 8) and np.isfinite(emb).all()


def test_masked_objective_predicts_the_hidden_features():
    from desa_core.models.dualformer import objective_loss
    cfg = tiny_dualformer(objective="masked")
    torch.manual_seed(0)
    m = DualFormer(cfg, d_spec=12, d_lc=10)
    batch = _batch_dict(*random_batch())
    terms = objective_loss(m, batch, cfg, torch.Generator().manual_seed(0))
    assert set(terms) == {"loss", "recon_spectrum", "recon_light_curve"} and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert m.mask_token["s"].grad.abs().sum() > 0 and m.reconstruct["l"].weight.grad is not None
    out = m(*random_batch(), mask_spec=torch.ones(6, 12, dtype=torch.bool))
    assert out["recon_s"].shape == (6, 12) and out["recon_l"].shape == (6, 10)
    # Masks change what the model sees; a model of another objective refuses them.
    plain = m(*random_batch())
    assert not torch.allclose(plain["h_s"], out["h_s"]) and "recon_s" not in plain
    with pytest.raises(ValueError, match="masked"):
        DualFormer(tiny_dualformer(), 12, 10)(*random_batch(), mask_spec=torch.ones(6, 12, dtype=torch.bool))


def test_shared_unique_objective_terms_and_its_attention_rule():
    from desa_core.models.dualformer import objective_loss
    with pytest.raises(ValueError, match="attention_type 'self'"):
        tiny_dualformer(objective="shared_unique")
    cfg = tiny_dualformer(objective="shared_unique", attention_type="self")
    torch.manual_seed(0)
    m = DualFormer(cfg, d_spec=12, d_lc=10)
    batch = _batch_dict(*random_batch(b=32, missing=False))
    terms = objective_loss(m, batch, cfg, torch.Generator().manual_seed(0))
    assert set(terms) == {"loss", "common", "unique", "intra_spectrum", "intra_light_curve"}
    total = terms["common"] + terms["unique"] + terms["intra_spectrum"] + terms["intra_light_curve"]
    assert float(terms["loss"]) == pytest.approx(float(total), rel=1e-5)
    terms["loss"].backward()
    assert m.A_weight.grad is None or float(m.A_weight.grad.abs().sum()) == 0.0   # A is not in this loss
    assert m.blocks[0].qkv["s"].weight.grad.abs().sum() > 0


def test_shared_unique_common_term_is_low_when_the_modalities_agree():
    from desa_core.models.dualformer import _barlow
    g = torch.Generator().manual_seed(0)
    a = torch.randn(256, 4, generator=g)
    on_same, _ = _barlow(a, a + 0.01 * torch.randn(256, 4, generator=g), 0.005)
    on_rand, _ = _barlow(a, torch.randn(256, 4, generator=g), 0.005)
    assert float(on_same) < 0.01 < 3.0 < float(on_rand)


@pytest.mark.parametrize("objective, extra", [("masked", {}), ("shared_unique", {"attention_type": "self"})])
def test_objectives_train_and_lower_their_loss(objective, extra):
    from desa_core.models.config import TrainConfig
    from desa_core.models.dualformer import objective_loss
    from desa_core.train.alignment import embed_dualformer, train_dualformer
    feats, batch = _shared_signal_features()
    n = len(feats)
    cfg = tiny_dualformer(objective=objective, depth=1, token_lifting="per_feature", **extra)
    tcfg = TrainConfig(align_epochs=30, align_batch_size=64, align_lr=3e-3, align_patience=30, torch_threads=None)

    def val_loss(model):
        with torch.no_grad():
            return float(objective_loss(model, batch, cfg, torch.Generator().manual_seed(0))["loss"])

    before = val_loss(train_dualformer(feats, cfg, dataclasses.replace(tcfg, align_epochs=0), seed=0))
    trained = train_dualformer(feats, cfg, tcfg, seed=0)
    after = val_loss(trained)
    assert after < 0.7 * before, (before, after)
    emb = embed_dualformer(trained, feats)["embedding"]
    assert emb.shape == (n, 8) and np.isfinite(emb).all()
