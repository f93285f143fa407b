"""finetune_last_block: the encoders' last blocks trained during alignment, from training to inference."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from desa_core.data.store import SurveyStore
from desa_core.models.config import DualFormerConfig, get_config
from desa_core.models.dualformer import DualFormer
from desa_core.models.encoder_tails import EncoderTails, PenultimateInputs
from desa_core.models.inference import Embedder
from desa_core.models.light_curve_encoder import LightCurveEncoder
from desa_core.models.spectra_encoder import SpectraEncoder
from desa_core.rundir import RunDir, load_features
from desa_core.train.alignment import embed_dualformer, train_dualformer
from desa_core.train.run import train
from tiny_survey import make_tiny_survey

TINY = Path(__file__).with_name("tiny_config.yaml")


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory):
    """A tiny survey trained end to end (heads included) with finetune_last_block on."""
    root = tmp_path_factory.mktemp("finetune")
    survey = make_tiny_survey(root / "survey")
    d = yaml.safe_load(TINY.read_text())
    d["name"] = "tiny_finetune"
    # A full learning rate for the tails, so four epochs move them measurably.
    d["dualformer"].update(finetune_last_block=True, finetune_lr_factor=1.0)
    cfg_path = root / "tiny_finetune.yaml"
    cfg_path.write_text(yaml.safe_dump(d))
    return train(survey, config=str(cfg_path), out=root / "run", device="cpu"), survey


@pytest.mark.parametrize("depth", [1, 2])
def test_encoder_tails_finish_what_penultimate_starts(depth):
    cfg = get_config(str(TINY))
    lc = LightCurveEncoder(dataclasses.replace(cfg.light_curve, depth=depth)).eval()
    sp = SpectraEncoder(dataclasses.replace(cfg.spectra, depth=depth)).eval()
    x_lc, x_sp = torch.randn(5, 4, cfg.preprocess.lc_length), torch.randn(5, 1, cfg.preprocess.spec_length)
    tails = EncoderTails.from_encoders(lc, sp)
    with torch.no_grad():
        summary, tokens = lc.penultimate(x_lc)
        z_spec, z_lc = tails.features({"lc_summary": summary, "lc_tokens": tokens, "spec_tokens": sp.penultimate(x_sp)})
        torch.testing.assert_close(z_lc, lc(x_lc))
        torch.testing.assert_close(z_spec, sp(x_sp))
        # Changed tails, written back into the encoders, are what the encoders then compute.
        for p in tails.parameters():
            p.add_(0.05 * torch.randn_like(p))
        skeleton = EncoderTails.skeleton(lc.cfg, sp.cfg)
        skeleton.load_state_dict(tails.state_dict())
        skeleton.load_into(lc, sp)
        z_spec2, z_lc2 = tails.features({"lc_summary": summary, "lc_tokens": tokens,
                                         "spec_tokens": sp.penultimate(x_sp)})
        torch.testing.assert_close(lc(x_lc), z_lc2)
        torch.testing.assert_close(sp(x_sp), z_spec2)
        assert not torch.allclose(z_lc2, z_lc)


def test_finetune_rules_are_errors_that_say_why():
    with pytest.raises(ValueError, match="masked"):
        DualFormerConfig(objective="masked", finetune_last_block=True)
    with pytest.raises(ValueError, match="finetune_lr_factor"):
        DualFormerConfig(finetune_last_block=True, finetune_lr_factor=0.0)
    cfg = DualFormerConfig(dim=8, depth=1, heads=2, ffn_dim=16, finetune_last_block=True)
    with pytest.raises(ValueError, match="encoder tails"):
        DualFormer(cfg, 16, 8)


def test_finetune_run_trains_the_last_blocks_and_inference_reads_them(ft_run):
    run_dir, survey = ft_run
    run = RunDir.open(run_dir)
    assert run.is_done and run.heads_path.is_file()
    frozen, tuned = run.features(), run.desa_features()
    np.testing.assert_array_equal(tuned.star_id, frozen.star_id)
    np.testing.assert_array_equal(tuned.has_lc, frozen.has_lc)
    assert np.isfinite(tuned.z_lc).all() and np.isfinite(tuned.z_spec).all()
    assert np.all(tuned.z_lc[~tuned.has_lc] == 0) and np.all(tuned.z_spec[~tuned.has_spec] == 0)
    # Training moved both tails away from the pretrained encoders ...
    for z0, z1, has in ((frozen.z_lc, tuned.z_lc, frozen.has_lc), (frozen.z_spec, tuned.z_spec, frozen.has_spec)):
        assert np.abs(z1[has] - z0[has]).mean() > 1e-3 * np.abs(z0[has]).mean()
    # ... and only the tails: the layers before the last block are the pretrained ones.
    (lc0, sp0), (lc1, sp1) = run.encoders(fine_tuned=False), run.encoders()
    s0, s1 = lc0.state_dict(), lc1.state_dict()
    for k in s0:
        same = torch.equal(s0[k], s1[k])
        assert same == (not (k.startswith("conformer.0.") or k.startswith("projector."))), k
    # Inference (precompute, uploads) recomputes from the raw arrays with the fine-tuned encoders: the same
    # features and the same DESA embedding as the run's saved fine-tuned features.
    store = SurveyStore.open(survey)
    out = Embedder.from_run(run_dir, device="cpu").embed_store(store, progress=False, reuse_features=False)
    np.testing.assert_allclose(out["light_curve"][tuned.has_lc], tuned.z_lc[tuned.has_lc], atol=1e-4)
    np.testing.assert_allclose(out["spectrum"][tuned.has_spec], tuned.z_spec[tuned.has_spec], atol=1e-4)
    ref = embed_dualformer(run.dualformer(), tuned)["embedding"]
    np.testing.assert_allclose(out["desa"], ref, atol=1e-4)


def test_finetune_training_needs_its_inputs_and_evaluate_retrains_it(ft_run, tmp_path):
    import desa_core.evaluate.run as ev
    from desa_core.evaluate.run import finetune_inputs
    run_dir, _ = ft_run
    run = RunDir.open(run_dir)
    feats = run.features()
    with pytest.raises(ValueError, match="PenultimateInputs"):
        train_dualformer(feats, run.config.dualformer, run.config.train)
    tails, pen = finetune_inputs(run_dir)
    assert isinstance(pen, PenultimateInputs) and len(pen) == len(feats)
    short = PenultimateInputs(pen.lc_summary[:3], pen.lc_tokens[:3], pen.spec_tokens[:3])
    with pytest.raises(ValueError, match="penultimate inputs have 3 stars"):
        train_dualformer(feats, run.config.dualformer, run.config.train, tails=tails, penultimate=short)
    # What `desa evaluate` builds per seed (the tiny survey lacks the CMD columns its metrics need): the run's
    # own model reads the saved fine-tuned features; another seed and the CoMM ablation fine-tune afresh.
    cat = run.catalog(feats)
    split = cat["split"].to_numpy()
    args = (run_dir, feats, run.config, cat, split == "train", split == "val", None)
    reps = {(key, seed): ev._build(key, *args, seed, "cpu", False, tmp_path, "sha", 0)
            for key in ("desa", "desa_comm_finetune") for seed in (0, 1)}
    own = embed_dualformer(run.dualformer(), load_features(run.desa_features_path))["embedding"]
    np.testing.assert_allclose(reps["desa", 0].embedding, own, atol=1e-6)
    for (key, seed), rep in reps.items():
        assert rep.embedding.shape == own.shape and np.isfinite(rep.embedding).all(), key
    for key in ("desa", "desa_comm_finetune"):
        assert not np.allclose(reps[key, 0].embedding, reps[key, 1].embedding), key
    assert reps["desa_comm_finetune", 1].info["dualformer_overrides"]["finetune_last_block"] is True
