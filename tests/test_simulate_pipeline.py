"""`desa simulate` end to end: a tiny survey store, determinism, worker independence, the CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from desa_core.cli import main as desa_main
from desa_core.data.simulate import SimulationConfig, simulate_survey
from desa_core.data.simulate.light_curves import LightCurveConfig
from desa_core.data.store import SurveyStore

N = 300


def small_config(**kw) -> SimulationConfig:
    # 20-day light curves keep the arrays tiny; chunks of 100 stars exercise the chunked writing.
    base = dict(n_stars=N, chunk_size=100, workers=1, light_curve=LightCurveConfig(duration_days=20.0))
    return SimulationConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "survey"
    return simulate_survey(seed=11, out=out, config=small_config(), progress=False)


def _files(path: Path) -> dict[str, bytes]:
    return {rel: (path / rel).read_bytes() for rel in
            ("catalog.parquet", "light_curves/flux.npy", "light_curves/time.npy", "spectra/flux.npy",
             "spectra/ivar.npy", "spectra/wavelength.npy")}


def test_store_opens_and_rows_are_consistent(store_path):
    s = SurveyStore.open(store_path, verify=True)
    cat = s.catalog
    assert len(s) == N and s.is_simulated
    assert s.manifest["generator"] == "desa_core.data.simulate" and s.manifest["seed"] == 11
    assert s.manifest["config"]["n_stars"] == N and s.manifest["config"]["light_curve"]["duration_days"] == 20.0
    assert s.light_curves.shape == (cat["has_light_curve"].sum(), len(s.time))
    assert s.spectra_flux.shape == (cat["has_spectrum"].sum(), len(s.wavelength)) == s.spectra_ivar.shape
    # every light curve row was written (no all-zero rows left from the memory map) and belongs to its star
    lc = np.asarray(s.light_curves)
    assert np.all(np.nanmedian(lc, axis=1) == pytest.approx(1.0, abs=0.01))
    assert np.isnan(lc).any()  # quarter gaps / flagged cadences
    spec = np.asarray(s.spectra_flux)
    assert np.isfinite(spec).all() and (np.abs(spec).sum(axis=1) > 0).all()
    no_lc = cat.index[~cat["has_light_curve"]][0]
    assert s.light_curve(int(no_lc)) is None
    has_both = cat.index[cat["has_light_curve"] & cat["has_spectrum"]][0]
    t, f = s.light_curve(cat.loc[has_both, "star_id"])
    assert len(t) == len(f)
    assert s.spectrum(int(has_both))[1].shape == s.wavelength.shape


def test_eclipsing_star_light_curve_dips_where_the_catalogue_says(tmp_path):
    # Use a config where close binaries are common, so the tiny survey surely holds an eclipsing one.
    cfg = small_config(log_period_mean=0.8, log_period_sigma=0.3, binary_fraction=0.9)
    cfg.n_stars = 200
    s = SurveyStore.open(simulate_survey(seed=3, out=tmp_path / "ecl", config=cfg, progress=False))
    cat = s.catalog
    ecl = cat[(cat["binary_class"] == "eclipsing") & cat["has_light_curve"] & (cat["flux_ratio_kp"] > 0.2)]
    assert len(ecl) > 0
    row = ecl.iloc[0]
    t, f = s.light_curve(row["star_id"])
    phase = np.mod(t - row["orbit_t0_days"], row["porb_days"]) / row["porb_days"]
    in_ecl = (phase < 0.01) | (phase > 0.99)
    assert np.nanmedian(f[in_ecl]) < np.nanmedian(f[~in_ecl])


def test_same_seed_identical_bytes_any_workers_and_other_seed_differs(store_path, tmp_path):
    again = simulate_survey(seed=11, out=tmp_path / "again", config=small_config(workers=2), progress=False)
    a, b = _files(store_path), _files(again)
    for rel in a:
        assert a[rel] == b[rel], rel
    other = simulate_survey(seed=12, out=tmp_path / "other", config=small_config(), progress=False)
    c = _files(other)
    assert a["light_curves/flux.npy"] != c["light_curves/flux.npy"]
    assert not pd.read_parquet(store_path / "catalog.parquet")["teff"].equals(
        pd.read_parquet(other / "catalog.parquet")["teff"])


def test_cli_simulate_with_yaml_config(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("workers: 1\nlight_curve:\n  duration_days: 10.0\n")
    out = tmp_path / "cli_survey"
    assert desa_main(["simulate", "--stars", "120", "--seed", "5", "--out", str(out), "--config", str(cfg)]) == 0
    s = SurveyStore.open(out)
    assert len(s) == 120 and s.manifest["config"]["light_curve"]["duration_days"] == 10.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_starz: 3\n")
    assert desa_main(["simulate", "--out", str(tmp_path / "x"), "--config", str(bad)]) == 1
    assert "n_starz" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
