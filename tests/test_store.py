"""The survey store: atomic writes, validation, lazy reads, per-star splits."""
import json

import numpy as np
import pandas as pd
import pytest

from desa_core.data.store import (CATALOG_COLUMNS, SurveyStore, SurveyStoreError, SurveyWriter,
                                  assign_splits)


def _catalog(n, has_lc, has_spec, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"sim-{i:06d}" for i in range(n)]
    cat = pd.DataFrame({c: rng.normal(size=n) for c in CATALOG_COLUMNS})
    cat["star_id"] = ids
    cat["binary_class"] = "single"
    cat["is_binary"] = False
    cat["split"] = assign_splits(ids, seed=1)
    cat["has_light_curve"] = has_lc
    cat["has_spectrum"] = has_spec
    cat["lc_row"] = np.where(has_lc, np.cumsum(has_lc) - 1, -1)
    cat["spec_row"] = np.where(has_spec, np.cumsum(has_spec) - 1, -1)
    return cat


def _write(out, n=20, T=50, L=30, fail_after_arrays=False):
    has_lc = np.arange(n) % 5 != 0
    has_spec = np.arange(n) % 7 != 0
    cat = _catalog(n, has_lc, has_spec)
    with SurveyWriter(out, n_lc=int(has_lc.sum()), n_spec=int(has_spec.sum()), time=np.arange(T, dtype=float),
                      wavelength=np.linspace(3700, 9000, L)) as w:
        w.light_curves[:] = np.arange(has_lc.sum())[:, None] + np.zeros(T)
        w.spectra_flux[:] = 1.0
        w.spectra_ivar[:] = 4.0
        if fail_after_arrays:
            raise RuntimeError("simulated crash")
        w.commit(cat, info={"source": "simulated", "seed": 1})
    return cat


def test_roundtrip_and_lazy_reads(tmp_path):
    cat = _write(tmp_path / "s")
    s = SurveyStore.open(tmp_path / "s", verify=True)
    assert len(s) == len(cat) and s.is_simulated
    assert isinstance(s.light_curves, np.memmap)
    t, f = s.light_curve("sim-000003")
    assert f[0] == cat.loc[3, "lc_row"]
    assert s.light_curve(0) is None  # row 0 has no light curve
    assert s.spectrum("sim-000000") is None
    wl, fl, iv = s.spectrum(1)
    assert wl.shape == fl.shape == iv.shape == (30,)
    m = s.manifest
    assert m["n_light_curves"] == cat["has_light_curve"].sum()
    assert set(m["files"]) >= {"catalog.parquet", "light_curves/flux.npy", "spectra/ivar.npy"}
    with pytest.raises(KeyError, match="no star"):
        s.light_curve("nope")


def test_crash_keeps_previous_store(tmp_path):
    _write(tmp_path / "s")
    before = (tmp_path / "s" / "manifest.json").read_text()
    with pytest.raises(RuntimeError):
        _write(tmp_path / "s", n=10, fail_after_arrays=True)
    assert (tmp_path / "s" / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary leftovers
    SurveyStore.open(tmp_path / "s", verify=True)


def test_inconsistent_catalog_rejected(tmp_path):
    cat = _catalog(4, np.ones(4, bool), np.ones(4, bool))
    cat.loc[1, "star_id"] = cat.loc[0, "star_id"]
    with SurveyWriter(tmp_path / "s", n_lc=4, n_spec=4, time=np.arange(3.0), wavelength=np.arange(3.0)) as w:
        with pytest.raises(SurveyStoreError, match="appears more than once"):
            w.commit(cat)
    assert not (tmp_path / "s").exists()


def test_truncated_store_is_reported(tmp_path):
    _write(tmp_path / "s")
    p = tmp_path / "s" / "spectra" / "flux.npy"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(SurveyStoreError, match="flux.npy"):
        SurveyStore.open(tmp_path / "s")
    with pytest.raises(SurveyStoreError, match="not a survey store"):
        SurveyStore.open(tmp_path)


def test_splits_per_star_deterministic():
    ids = [f"KIC {i}" for i in range(5000)]
    a = assign_splits(ids, seed=3)
    assert np.array_equal(a, assign_splits(ids[::-1], seed=3)[::-1])  # independent of order
    assert not np.array_equal(a, assign_splits(ids, seed=4))
    frac = pd.Series(a).value_counts(normalize=True)
    assert abs(frac["train"] - 0.7) < 0.03 and abs(frac["test"] - 0.15) < 0.03
