"""`desa train` end to end on a tiny survey: stages, checkpoints, resume, features, inference API."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from desa_core.data.preprocess import clean_light_curve, light_curve_channels, preprocess_light_curve
from desa_core.data.store import SurveyStore
from desa_core.models.config import get_config
from desa_core.models.inference import Embedder
from desa_core.train import loop, run as run_mod, stages
from desa_core.rundir import FrozenFeatures, RunDir, load_features
from desa_core.train.alignment import embed_dualformer, train_dualformer
from desa_core.train.run import train
from tiny_survey import make_tiny_survey

TINY = str(Path(__file__).with_name("tiny_config.yaml"))
MY_STAGES = "light_curve_encoder,spectra_encoder,features,dualformer"


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return make_tiny_survey(tmp_path_factory.mktemp("tiny") / "survey")


@pytest.fixture
def no_heads(monkeypatch):
    """Run without the evaluation package's heads stage (tested in its own suite)."""
    real = run_mod.importlib.import_module

    def fake(name, *a, **k):
        if name == "desa_core.train.heads":
            raise ModuleNotFoundError(name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(run_mod.importlib, "import_module", fake)


@pytest.fixture(scope="module")
def trained(survey, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    real = run_mod.importlib.import_module
    mp.setattr(run_mod.importlib, "import_module",
               lambda name, *a, **k: (_ for _ in ()).throw(ModuleNotFoundError(name=name))
               if name == "desa_core.train.heads" else real(name, *a, **k))
    out = train(survey, config=TINY, out=tmp_path_factory.mktemp("run") / "run", device="cpu")
    mp.undo()
    return out


def state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_full_run_writes_every_artifact(trained):
    for f in ("DONE", "run_manifest.json", "log.csv", "features.npz"):
        assert (trained / f).is_file(), f
    for s in stages.STAGES:
        assert (trained / "checkpoints" / f"{s}.pt").is_file()
        assert not (trained / "checkpoints" / f"{s}.partial.pt").exists()
    m = json.loads((trained / "run_manifest.json").read_text())
    assert m["config_name"] == "tiny" and m["seed"] == 0
    assert len(m["survey_manifest_sha256"]) == 64 and Path(m["survey"]).is_dir()
    assert all(m["stages"][s]["wall_s"] >= 0 for s in stages.STAGES)
    assert m["code_version"]["source_sha256"]


def test_losses_decrease_on_a_tiny_survey(trained):
    log = pd.read_csv(trained / "log.csv")
    tr = log[(log.split == "train") & (log.metric == "loss")]
    for s in ("light_curve_encoder", "spectra_encoder", "dualformer"):
        v = tr[tr.stage == s].sort_values("epoch")["value"].to_numpy()
        assert len(v) >= 2 and v[-1] < v[0], (s, v)


def test_features_file_follows_the_catalogue(trained, survey):
    f = load_features(trained)
    cat = SurveyStore.open(survey).catalog
    np.testing.assert_array_equal(f.star_id, cat["star_id"].astype(str))
    np.testing.assert_array_equal(f.split, cat["split"])
    np.testing.assert_array_equal(f.has_lc, cat["has_light_curve"])
    np.testing.assert_array_equal(f.has_spec, cat["has_spectrum"])
    assert f.z_lc.dtype == np.float32 and f.z_lc.shape[1] == get_config(TINY).light_curve.out_dim
    assert np.all(f.z_lc[~f.has_lc] == 0) and np.all(f.z_spec[~f.has_spec] == 0)
    assert np.isfinite(f.z_spec).all()


def test_cache_gives_the_same_inputs_as_preprocess(trained, survey):
    store = SurveyStore.open(survey)
    cfg = get_config(TINY).preprocess
    cached = np.load(trained / "cache" / "light_curves.npy")
    t, flux = store.light_curve(5)
    row = int(store.catalog["lc_row"].iat[5])
    np.testing.assert_array_equal(cached[row][: len(clean_light_curve(t, flux, cfg))], clean_light_curve(t, flux, cfg))
    a = light_curve_channels(cached[row], store.catalog["abs_g0"].iat[5], cfg)
    np.testing.assert_allclose(a, preprocess_light_curve(t, flux, store.catalog["abs_g0"].iat[5], cfg), atol=1e-6)


def test_embedder_matches_training_features_and_covers_every_star(trained, survey):
    store = SurveyStore.open(survey)
    emb = Embedder.from_run(trained, device="cpu")
    assert emb.config_name == "tiny" and len(emb.fingerprint) == 64
    out = emb.embed_store(store, batch_size=16, progress=False, reuse_features=False)
    n = len(store)
    assert out["desa"].shape == (n, emb.dims["desa"]) and np.isfinite(out["desa"]).all()
    f = load_features(trained)
    np.testing.assert_allclose(out["light_curve"][f.has_lc], f.z_lc[f.has_lc], atol=1e-4)
    np.testing.assert_allclose(out["spectrum"][f.has_spec], f.z_spec[f.has_spec], atol=1e-4)
    assert np.isnan(out["light_curve"][~f.has_lc]).all() and np.isnan(out["spectrum"][~f.has_spec]).all()
    ref = embed_dualformer(RunDir.open(trained).dualformer(), f)
    np.testing.assert_allclose(out["desa"], ref["embedding"], atol=1e-4)
    # the fast path (saved features of the training survey) agrees with recomputing from raw arrays
    fast = emb.embed_store(store, batch_size=16, progress=False)
    for k in ("desa", "light_curve", "spectrum"):
        np.testing.assert_allclose(fast[k], out[k], atol=1e-4)
    # a subset of rows and a single star from raw arrays agree with the store path
    sub = emb.embed_store(store, rows=[7, 2], progress=False, reuse_features=False)
    np.testing.assert_allclose(sub["desa"], out["desa"][[7, 2]], atol=1e-5)
    np.testing.assert_allclose(emb.embed_store(store, rows=[7, 2], progress=False)["desa"], sub["desa"], atol=1e-4)
    cat = store.catalog
    one = emb.embed_single(light_curve=store.light_curve(7), spectrum=store.spectrum(7),
                           rv_kms=cat["rv_kms_obs"].iat[7], abs_g=cat["abs_g0"].iat[7])
    np.testing.assert_allclose(one["desa"], out["desa"][7], atol=1e-5)
    only_lc = emb.embed_single(light_curve=store.light_curve(7), abs_g=cat["abs_g0"].iat[7])
    assert np.isnan(only_lc["spectrum"]).all() and np.isfinite(only_lc["desa"]).all()
    with pytest.raises(ValueError, match="needs a light curve"):
        emb.embed_single()


def test_embedder_on_a_folder_that_is_not_a_run(tmp_path):
    from desa_core.rundir import RunDirError
    with pytest.raises(RunDirError, match="not a DESA run folder"):
        Embedder.from_run(tmp_path)
    with pytest.raises(RunDirError, match="no run folder here"):
        Embedder.from_run(tmp_path / "nothing")


def test_rerun_skips_complete_stages(trained, survey, no_heads):
    before = {p.name: p.stat().st_mtime_ns for p in (trained / "checkpoints").glob("*.pt")}
    train(survey, config=TINY, out=trained, device="cpu")
    after = {p.name: p.stat().st_mtime_ns for p in (trained / "checkpoints").glob("*.pt")}
    assert before == after


def test_a_different_config_in_the_same_folder_is_refused(trained, survey, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(Path(TINY).read_text().replace("align_epochs: 4", "align_epochs: 5"))
    with pytest.raises(ValueError, match="different"):
        train(survey, config=str(other), out=trained, device="cpu")


def test_a_regenerated_survey_retrains_every_stage(tmp_path, no_heads):
    survey = make_tiny_survey(tmp_path / "survey", n_stars=32, seed=1)
    out = train(survey, config=TINY, out=tmp_path / "run", device="cpu")
    before = state(out / "checkpoints" / "dualformer.pt")
    old_sha = json.loads((out / "run_manifest.json").read_text())["survey_manifest_sha256"]
    make_tiny_survey(tmp_path / "survey", n_stars=32, seed=2)        # same path, new data
    train(survey, config=TINY, out=out, device="cpu")
    m = json.loads((out / "run_manifest.json").read_text())
    assert m["survey_manifest_sha256"] != old_sha
    assert all(m["stages"][s]["inputs"]["survey"] == m["survey_manifest_sha256"] for s in stages.STAGES)
    assert (out / "DONE").exists()
    after = state(out / "checkpoints" / "dualformer.pt")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_missing_survey_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a survey store"):
        train(tmp_path / "nowhere", config=TINY, out=tmp_path / "r")


def test_unknown_stage_and_missing_prerequisite_are_clear_errors(survey, tmp_path):
    with pytest.raises(ValueError, match="unknown stages"):
        train(survey, config=TINY, out=tmp_path / "r", stages="encoders")
    with pytest.raises(ValueError, match="needs light_curve_encoder"):
        train(survey, config=TINY, out=tmp_path / "r", stages="features")


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(trained, survey, tmp_path, monkeypatch, no_heads):
    kills = {("light_curve_encoder", 0), ("dualformer", 1)}

    def hook(stage, epoch):
        if (stage, epoch) in kills:
            kills.discard((stage, epoch))
            raise Interrupt(f"simulated kill after {stage} epoch {epoch}")

    monkeypatch.setattr(loop, "_after_epoch", hook)
    out = tmp_path / "resumed"
    for _ in range(2):
        with pytest.raises(Interrupt):
            train(survey, config=TINY, out=out, device="cpu")
    assert not kills
    train(survey, config=TINY, out=out, device="cpu")
    assert (out / "DONE").exists()
    for s in ("light_curve_encoder", "spectra_encoder", "dualformer"):
        assert_same_state(state(out / "checkpoints" / f"{s}.pt"), state(trained / "checkpoints" / f"{s}.pt"))
    # each epoch is logged exactly once despite the re-runs
    log = pd.read_csv(out / "log.csv")
    assert not log.duplicated(["stage", "epoch", "split", "metric"]).any()


def synthetic_features(n=160, seed=0):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3))
    z_spec = (latent @ rng.normal(size=(3, 12)) + 0.05 * rng.normal(size=(n, 12))).astype(np.float32)
    z_lc = (latent @ rng.normal(size=(3, 6)) + 0.05 * rng.normal(size=(n, 6))).astype(np.float32)
    has_lc, has_spec = np.ones(n, bool), np.ones(n, bool)
    has_lc[:5] = False
    has_spec[5:10] = False
    z_lc[~has_lc] = 0
    z_spec[~has_spec] = 0
    split = np.array(["train", "val", "test", "train"] * (n // 4))
    return FrozenFeatures(np.array([f"S{i}" for i in range(n)]), z_lc, z_spec, has_lc, has_spec, split)


def test_train_dualformer_on_frozen_features(tmp_path):
    cfg = get_config(TINY)
    f = synthetic_features()
    model = train_dualformer(f, cfg.dualformer, cfg.train, seed=0, log_path=tmp_path / "log.csv")
    out = embed_dualformer(model, f)
    assert out["embedding"].shape == (len(f), cfg.dualformer.dim) and np.isfinite(out["embedding"]).all()
    log = pd.read_csv(tmp_path / "log.csv")
    v = log[(log.split == "val") & (log.metric == "loss")]["value"].to_numpy()
    assert v[-1] < v[0]
    # the test split is never used for training: changing test features does not change the model
    g = synthetic_features()
    g.z_spec[g.split == "test"] += 5.0
    model2 = train_dualformer(g, cfg.dualformer, cfg.train, seed=0)
    assert_same_state(model.state_dict(), model2.state_dict())
    with pytest.raises(ValueError, match="label_conditioned"):
        train_dualformer(f, cfg.dualformer, cfg.train, labels=np.zeros((len(f), 6), np.float32))


def test_label_conditioned_ablation_trains_with_labels():
    cfg = get_config(TINY)
    dcfg = type(cfg.dualformer)(**{**cfg.dualformer.__dict__, "label_conditioned": True})
    f = synthetic_features()
    labels = np.random.default_rng(0).normal(size=(len(f), 6)).astype(np.float32)
    model = train_dualformer(f, dcfg, cfg.train, labels=labels)
    out = embed_dualformer(model, f, labels=labels)
    assert out["embedding"].shape == (len(f), dcfg.dim + 6)


def test_load_features_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="features.npz"):
        load_features(tmp_path)
    np.savez(tmp_path / "features.npz", star_id=np.array(["a"]))
    with pytest.raises(ValueError, match="not a valid features file"):
        load_features(tmp_path)


def test_prot_targets_linear_is_the_papers_and_log_keeps_relative_precision():
    from desa_core.models.config import TrainConfig
    p = np.array([0.5, 2.0, 4.0, 20.0, 40.0, 100.0, 5e4, np.nan])
    lin = TrainConfig(prot_target="linear").prot_targets(p)
    np.testing.assert_allclose(lin[:6], p[:6] / 70.0)
    assert lin[6] == 100.0 / 70.0 and np.isnan(lin[7])          # clipped at prot_clip_days; NaN = no loss
    log = TrainConfig(prot_target="log").prot_targets(p)
    assert np.all(np.diff(log[:6]) > 0) and 0 < log[0] and log[5] == pytest.approx(1.0) and log[6] == log[5]
    assert np.isnan(log[7])
    # a doubling of Prot moves the log target about as much at 2 d as at 20 d; the linear one 10x more at 20 d
    assert (log[2] - log[1]) / (log[4] - log[3]) > 0.5
    assert (lin[4] - lin[3]) / (lin[2] - lin[1]) == pytest.approx(10.0)
    for cfg in (TrainConfig(prot_target="linear"), TrainConfig(prot_target="log")):   # the predictions' inverse
        np.testing.assert_allclose(cfg.prot_from_targets(cfg.prot_targets(p[:6])), p[:6], rtol=1e-12)
    with pytest.raises(ValueError, match="prot_target"):
        TrainConfig(prot_target="sqrt")
