"""`evaluate()` on a tiny fake run folder (survey store + features.npz + a trained tiny DualFormer)."""
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from desa_core.data.store import SurveyWriter, assign_splits, atomic_write_json
from desa_core.evaluate.report import markdown_table
from desa_core.evaluate.run import ABLATIONS, DEFAULT_KEYS, MODEL_KEYS, ORACLE_KEY, UNTRAINED_KEY, evaluate
from desa_core.evaluate.tasks import MIN_POPULATION, cmd_classes, sync_young_labels, sync_young_population
from desa_core.models.config import get_config

pytestmark = pytest.mark.usefixtures("one_thread")


N = 700
HEADLINE = ("binary_auc", "binary_ap", "age_rmse_gyr", "age_mae_gyr", "age_coverage", "cmd_r2", "hr_r2",
            "cmd_ari", "sync_young_bacc", "neighbour_quality", "missing_modality", "n_test", "leaks_labels")


def fake_catalog(n=N, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    phase = rng.choice(["MS", "subgiant", "giant"], size=n, p=[0.75, 0.15, 0.10])
    teff = np.where(phase == "giant", rng.uniform(4300, 5200, n), rng.uniform(4500, 6500, n))
    logg = np.where(phase == "MS", rng.uniform(4.1, 4.6, n), np.where(phase == "subgiant", rng.uniform(3.6, 4.0, n),
                                                                     rng.uniform(2.2, 3.2, n)))
    age = rng.uniform(0.2, 12, n)
    cls = rng.choice(["single", "wide", "close_sync", "eclipsing"], size=n, p=[0.6, 0.25, 0.1, 0.05])
    # Plant enough fast rotators of both kinds for the sync-vs-young task.
    young = np.zeros(n, bool)
    young[rng.choice(np.flatnonzero(cls == "single"), 60, replace=False)] = True
    age[young] = rng.uniform(0.1, 0.9, young.sum())
    prot = np.where(cls == "close_sync", rng.uniform(1, 6, n), np.where(young, rng.uniform(1, 6, n),
                                                                         5 + 2.5 * age + rng.normal(0, 1, n)))
    log_lum = 4 * np.log10(teff / 5772) + 2 * (4.44 - logg) * 0.5 + rng.normal(0, 0.05, n)
    is_binary = cls != "single"
    delta = np.where(is_binary, rng.uniform(0, 0.75, n), 0.0)
    abs_g = 4.7 - 2.5 * log_lum - delta
    has_lc = rng.random(n) > 0.08
    has_spec = rng.random(n) > 0.08
    has_lc[~has_lc & ~has_spec] = True
    ids = [f"KIC{i:06d}" for i in range(n)]
    cat = pd.DataFrame({
        "star_id": ids, "ra": rng.uniform(280, 300, n), "dec": rng.uniform(36, 52, n), "teff": teff, "logg": logg,
        "feh": rng.normal(-0.05, 0.2, n), "mass": rng.uniform(0.6, 1.5, n), "radius": rng.uniform(0.6, 8, n),
        "log_lum": log_lum, "age_gyr": age, "prot_days": prot, "binary_class": cls, "is_binary": is_binary,
        "porb_days": np.where(is_binary, prot, np.nan), "mass_ratio": np.where(is_binary, 0.7, np.nan),
        "gaia_g": abs_g + 10, "gaia_bp": abs_g + 10.3, "gaia_rp": abs_g + 9.6, "bp_rp": (6500 - teff) / 1500 + 0.5,
        "abs_g": abs_g, "parallax_mas": np.full(n, 1.0), "ruwe": np.where(is_binary, 1.5, 1.0),
        "kepmag": abs_g + 10, "has_light_curve": has_lc, "has_spectrum": has_spec,
        "split": assign_splits(ids, seed=1), "lc_row": -1, "spec_row": -1,
        "phase": phase, "delta_mag_ms": delta})
    cat.loc[has_lc, "lc_row"] = np.arange(has_lc.sum())
    cat.loc[has_spec, "spec_row"] = np.arange(has_spec.sum())
    return cat


def fake_features(cat: pd.DataFrame, seed=0):
    rng = np.random.default_rng(seed)
    n = len(cat)
    lab = np.stack([(cat.teff - 5500) / 600, cat.logg - 4, cat.log_lum, cat.age_gyr / 4, np.log(cat.prot_days),
                    cat.is_binary.astype(float), cat.delta_mag_ms * 3], 1)
    z_lc = lab @ rng.normal(size=(7, 10)) + 0.3 * rng.normal(size=(n, 10))
    z_spec = lab @ rng.normal(size=(7, 12)) + 0.3 * rng.normal(size=(n, 12))
    z_lc[~cat.has_light_curve.to_numpy()] = 0
    z_spec[~cat.has_spectrum.to_numpy()] = 0
    return z_lc.astype(np.float32), z_spec.astype(np.float32)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    from desa_core.rundir import load_features
    from desa_core.train.alignment import train_dualformer
    root = tmp_path_factory.mktemp("evalrun")
    cat = fake_catalog()
    with SurveyWriter(root / "survey", n_lc=int(cat.has_light_curve.sum()), n_spec=int(cat.has_spectrum.sum()),
                      time=np.arange(8.0), wavelength=np.linspace(4000, 8000, 8)) as w:
        w.light_curves[:] = 1.0
        w.spectra_flux[:] = 1.0
        w.spectra_ivar[:] = 1.0
        w.commit(cat, info={"source": "simulated"})
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    z_lc, z_spec = fake_features(cat)
    np.savez(run / "features.npz", star_id=cat.star_id.to_numpy().astype(str), z_lc=z_lc, z_spec=z_spec,
             has_lc=cat.has_light_curve.to_numpy(), has_spec=cat.has_spectrum.to_numpy(),
             split=cat.split.to_numpy().astype(str))
    cfg = get_config("small")
    cfg = replace(cfg, light_curve=replace(cfg.light_curve, out_dim=10), spectra=replace(cfg.spectra, width=12),
                  dualformer=replace(cfg.dualformer, dim=8, depth=1, heads=2, ffn_dim=16),
                  train=replace(cfg.train, align_epochs=3, align_batch_size=128, torch_threads=None))
    atomic_write_json(run / "run_manifest.json", {"format": "desa-run", "config": cfg.to_dict(),
                                                  "survey": str(root / "survey")})
    model = train_dualformer(load_features(run), cfg.dualformer, cfg.train, seed=0)
    torch.save(model.state_dict(), run / "checkpoints" / "dualformer.pt")
    return run


def test_task_labels():
    cat = fake_catalog(200)
    classes = cmd_classes(cat)
    assert set(classes) <= {"dwarf", "subgiant", "giant", "photometric_binary"}
    pb = (cat.phase == "MS") & (cat.delta_mag_ms >= 0.3)
    assert np.array_equal(classes == "photometric_binary", pb.to_numpy())
    assert np.all(classes[cat.phase == "giant"] == "giant")
    pops = sync_young_labels(cat)
    assert np.all(cat.binary_class[pops == "sync"] == "close_sync")
    assert np.all(cat.age_gyr[pops == "young"] < 1) and np.all(cat.prot_days[pops != ""] < 7)


def _sync_young_catalog(n_per_split):
    """Catalogue with n_per_split[split] = (n_sync, n_young) fast rotators per split plus slow field stars."""
    rows = []
    for split, (ns, ny) in n_per_split.items():
        rows += [dict(split=split, prot_days=3.0, binary_class="close_sync", age_gyr=4.0)] * ns
        rows += [dict(split=split, prot_days=3.0, binary_class="single", age_gyr=0.3)] * ny
        rows += [dict(split=split, prot_days=25.0, binary_class="single", age_gyr=5.0)] * 20
    return pd.DataFrame(rows)


@pytest.mark.parametrize("counts, pool", [
    ({"test": (40, 60), "val": (5, 5), "train": (50, 50)}, ["test"]),
    ({"test": (12, 60), "val": (20, 60), "train": (50, 50)}, ["test", "val"]),
    ({"test": (5, 19), "val": (7, 30), "train": (40, 110)}, ["test", "val", "train"]),   # the default survey
    ({"test": (2, 3), "val": (2, 3), "train": (2, 3)}, ["test", "val", "train"]),       # never enough: all
])
def test_sync_young_pool_widens_until_both_populations_are_large_enough(counts, pool):
    cat = _sync_young_catalog(counts)
    eligible = np.ones(len(cat), bool)
    use, info = sync_young_population(cat, eligible)
    assert info["splits_used"] == pool
    labels = sync_young_labels(cat)
    assert set(cat.split[use]) == set(pool) and np.all(labels[use] != "")
    assert info["n_sync"] == sum(counts[s][0] for s in pool) and info["n_young"] == sum(counts[s][1] for s in pool)
    if pool != ["test", "val", "train"]:
        assert min(info["n_sync"], info["n_young"]) >= MIN_POPULATION
    # stars without both modalities are never used
    eligible[: len(cat) // 2] = False
    use2, _ = sync_young_population(cat, eligible)
    assert not use2[: len(cat) // 2].any()


@pytest.mark.slow
def test_evaluate_writes_full_layout(fake_run, tmp_path):
    out = tmp_path / "metrics.json"
    result = evaluate(fake_run, out, seeds=2, ablations=True, progress=False, figures=False)
    on_disk = json.loads(out.read_text())
    assert set(on_disk) == set(result) == set(MODEL_KEYS) | {"_meta"}
    for key in MODEL_KEYS:
        m = on_disk[key]
        if key == ORACLE_KEY:
            assert m["oracle"] and m["leaks_labels"] and m["age_rmse_gyr"] > 0
            assert 0 <= m["age_coverage"] <= 1
            continue
        if key == "oracle_gbr_observed_labels":   # the fake catalogue has no *_obs columns
            assert m["oracle"] and m["available"] is False and "teff_obs" in m["reason"]
            continue
        if key == "desa_no_absmag":   # no features without the absolute-magnitude channel in this run
            assert m["available"] is False and "lc_abs_mag_channel" in m["reason"]
            continue
        if ABLATIONS.get(key, {}).get("finetune_last_block"):   # a fake run has no encoders to fine-tune
            assert m["available"] is False and "light_curve_encoder.pt" in m["reason"]
            continue
        assert m["available"], key
        for col in HEADLINE:
            assert col in m, (key, col)
        assert 0 <= m["binary_auc"] <= 1 and m["age_rmse_gyr"] > 0 and m["sync_young_bacc"] is not None
        assert m["leaks_labels"] == (key == "desa_label_conditioned")
        assert m["missing_modality"]["n"] > 0
    meta = on_disk["_meta"]
    assert sum(meta["n_stars"].values()) == N and meta["notes"]
    # The toy features encode the labels almost linearly: the raw concatenation must probe them well.
    assert on_disk["concat"]["hr_r2"] > 0.8 and on_disk["concat"]["binary_auc"] > 0.8
    md = (tmp_path / "metrics.md").read_text()
    assert "LEAKS LABELS" in md and "ORACLE" in md and "| desa |" in md
    assert "Paired difference from concat" in md and " ± " in md
    # Two seeds: per-seed values, a mean at the top level, a paired difference from concat for every other model.
    meta_seeds = meta["seeds"]
    assert meta_seeds == [0, 1]
    for key in (*DEFAULT_KEYS[:2], "vicreg", "concat"):
        m = on_disk[key]
        vals = m["seeds"]["per_seed"]["cmd_r2"]
        assert len(vals) == 2 and m["cmd_r2"] == pytest.approx(np.mean(vals))
        assert m["seeds"]["std"]["cmd_r2"] == pytest.approx(np.std(vals, ddof=1))
        if key == "concat":
            assert "vs_concat" not in m
        else:
            d = m["vs_concat"]["cmd_r2"]
            diffs = np.subtract(vals, on_disk["concat"]["seeds"]["per_seed"]["cmd_r2"])
            assert d["n"] == 2 and d["mean"] == pytest.approx(diffs.mean())
            assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    # A seed retrains what is trained: the alignment baseline and DESA itself (the run's model at seed 0).
    assert len(set(on_disk["vicreg"]["seeds"]["per_seed"]["neighbour_quality"])) == 2
    assert on_disk["desa"]["seeds"]["per_seed"]["cmd_r2"][0] != on_disk["desa"]["seeds"]["per_seed"]["cmd_r2"][1]
    # The untrained DualFormer is a different embedding from the trained one.
    assert on_disk[UNTRAINED_KEY]["seeds"]["per_seed"]["cmd_r2"] != on_disk["desa"]["seeds"]["per_seed"]["cmd_r2"]
    assert set(ABLATIONS) <= set(on_disk) and not set(ABLATIONS) & set(DEFAULT_KEYS)
    # Trained baselines and ablations are cached: a second run reuses them (same numbers).
    again = evaluate(fake_run, tmp_path / "again.json", models=["vicreg", "desa_cross"], seeds=2, progress=False,
                     figures=False)
    assert again["vicreg"]["representation"]["signature"] == on_disk["vicreg"]["representation"]["signature"]
    assert again["vicreg"]["cmd_r2"] == pytest.approx(on_disk["vicreg"]["cmd_r2"])
    assert set(again) == {"vicreg", "desa_cross", "_meta"}


def test_train_heads_saves_and_evaluate_uses_them(fake_run, tmp_path):
    from desa_core.rundir import load_heads
    from desa_core.train.heads import predict_heads, train_heads
    path = train_heads(fake_run, progress=False)
    heads = load_heads(path)
    p, (lo, mid, hi) = predict_heads(heads, np.zeros((3, heads["binary"].mean.shape[0]), np.float32))
    assert p.shape == (3,) and np.all((p >= 0) & (p <= 1)) and np.all(lo <= mid) and np.all(mid <= hi)
    r = evaluate(fake_run, tmp_path / "m.json", models=["desa"], seeds=1, progress=False, figures=False)
    assert r["desa"]["heads"]["age_conformal_offset_gyr"] == pytest.approx(float(heads["age"].conformal_offset))


def test_evaluate_rejects_unknown_model_and_missing_run(fake_run, tmp_path):
    with pytest.raises(ValueError, match="unknown model keys"):
        evaluate(fake_run, tmp_path / "m.json", models=["desa", "bert"])
    with pytest.raises(ValueError, match="no run folder here"):
        evaluate(tmp_path / "nope", tmp_path / "m.json")


def test_markdown_table_marks_leakage_and_best():
    metrics = {"desa": {"binary_auc": 0.9, "n_test": 10}, "lc_only": {"binary_auc": 0.7, "n_test": 10},
               "desa_label_conditioned": {"binary_auc": 0.99, "leaks_labels": True, "n_test": 10}}
    t = markdown_table(metrics)
    assert "**0.900**" in t and "**0.990**" not in t and "desa_label_conditioned (LEAKS LABELS)" in t


def test_no_absmag_ablation_uses_features_without_the_channel(fake_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    with np.load(run / "features.npz") as z:
        d = dict(z)
    d["z_lc"] = d["z_lc"][:, ::-1].copy()        # any other light-curve features, same stars and order
    np.savez(run / "features_no_absmag.npz", **d)
    r = evaluate(run, tmp_path / "m.json", models=["desa_no_absmag"], seeds=1, progress=False, figures=False)
    assert r["desa_no_absmag"]["available"] and r["desa_no_absmag"]["representation"]["features"].endswith(
        "features_no_absmag.npz")
    d["star_id"] = d["star_id"][::-1].copy()
    np.savez(run / "features_no_absmag.npz", **d)
    r = evaluate(run, tmp_path / "m.json", models=["desa_no_absmag"], seeds=1, progress=False, figures=False)
    assert r["desa_no_absmag"]["available"] is False and "differ" in r["desa_no_absmag"]["reason"]


@pytest.mark.slow
def test_report_writes_umap_figures(tmp_path):
    from desa_core.evaluate.report import write_report
    from desa_core.evaluate.run import Representation
    cat = fake_catalog(300)
    z_lc, z_spec = fake_features(cat)
    emb = np.concatenate([z_lc, z_spec], 1)
    metrics = {"desa": {"available": True, "cmd_r2": 0.9, "n_test": 10},
               "lc_only": {"available": True, "cmd_r2": 0.5, "n_test": 10},
               "_meta": {"seed": 0}}
    reps = {"desa": Representation(emb, emb, {}), "lc_only": Representation(z_lc, z_lc, {})}
    md = write_report(metrics, tmp_path, reps=reps, catalog=cat, has_lc=np.ones(300, bool),
                      has_spec=np.ones(300, bool))
    assert (tmp_path / "umap_desa.png").stat().st_size > 10_000 and (tmp_path / "umap_lc_only.png").is_file()
    assert "umap_desa.png" in md.read_text()


def test_neighbour_quality_separates_a_physical_embedding_from_noise():
    from desa_core.evaluate.metrics import neighbour_quality
    rng = np.random.default_rng(3)
    n = 1500
    teff, logg = rng.uniform(4000, 7000, n), rng.uniform(2.5, 4.7, n)
    cls = rng.choice(["single", "wide", "close_sync"], n)
    numeric = {"teff": teff, "logg": logg}
    categorical = {"binary_class": cls}
    onehot = (cls[:, None] == np.array(["single", "wide", "close_sync"])).astype(float)
    physical = np.column_stack([(teff - 5500) / 900, (logg - 3.6) / 0.6, 3 * onehot])
    query = np.arange(n) < 300
    pool = np.ones(n, bool)
    good = neighbour_quality(physical, numeric, categorical, query, pool, k=10, seed=0)
    noise = neighbour_quality(rng.normal(size=(n, 5)), numeric, categorical, query, pool, k=10, seed=0)
    assert good["neighbour_quality"] > 0.7 and noise["neighbour_quality"] < 0.1
    assert set(good["parts"]) == {"teff", "logg", "binary_class"} and good["parts"]["binary_class"] > 0.9
    # A star is never its own neighbour: with every star duplicated, the twin is found, not the star itself
    # (an embedding without a twin per star would otherwise score 1 by finding itself).
    twins = np.concatenate([physical, physical])
    tw = neighbour_quality(twins, {k: np.concatenate([v, v]) for k, v in numeric.items()},
                           {"binary_class": np.concatenate([cls, cls])}, np.r_[query, np.zeros(n, bool)],
                           np.ones(2 * n, bool), k=1, seed=0)
    assert tw["parts"]["teff"] == pytest.approx(1.0)
    solo = neighbour_quality(physical, numeric, categorical, query, pool, k=1, seed=0)
    assert solo["parts"]["teff"] < 0.999
    with pytest.raises(ValueError, match="query stars"):
        neighbour_quality(physical, numeric, categorical, np.zeros(n, bool), pool)


def test_paired_difference_interval():
    from desa_core.evaluate.metrics import paired_difference
    d = paired_difference([0.8, 0.82, 0.81, 0.83, 0.79], [0.7, 0.71, 0.72, 0.7, 0.69])
    assert d["mean"] == pytest.approx(0.106) and d["n"] == 5 and d["ci95"][0] > 0
    same = paired_difference([0.5, 0.6, 0.4], [0.55, 0.5, 0.45])
    assert same["ci95"][0] < 0 < same["ci95"][1]
    assert paired_difference([0.5], [0.4]) is None


def test_evaluate_cli_takes_seeds_and_refuses_bad_ones(fake_run, tmp_path, capsys):
    from desa_core.cli import main
    out = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(fake_run), "--out", str(out), "--models", "concat,lc_only",
                 "--seeds", "0,2"]) == 0
    m = json.loads(out.read_text())
    assert m["_meta"]["seeds"] == [0, 2] and m["lc_only"]["seeds"]["values"] == [0, 2]
    assert "vs_concat" in m["lc_only"] and "cmd_r2" in m["lc_only"]["vs_concat"]
    assert main(["evaluate", "--run", str(fake_run), "--out", str(out), "--seeds", "1,1"]) == 1
    assert "seeds must be distinct" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(fake_run), "--out", str(out), "--seeds", "0"]) == 1
    assert "seeds must be >= 1" in capsys.readouterr().err
