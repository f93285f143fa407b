"""The simulated survey's catalogue: population, MIST parameters, photometry, rotation, binaries, selection."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from desa_core.data.simulate import SimulationConfig, load_config, simulate_catalog
from desa_core.data.simulate import photometry as ph
from desa_core.data.simulate.rotation import angus2019_period
from desa_core.data.simulate.stellar import interpolate_stars
from desa_core.data.store import CATALOG_COLUMNS, assign_splits

N = 600
# Columns the light-curve and spectrum simulators read (their contract with the catalogue).
SIMULATOR_COLUMNS = [
    "teff", "logg", "feh", "mass", "radius", "log_lum", "age_gyr", "prot_days", "rossby", "spot_amplitude_ppm",
    "inclination_deg", "vsini_kms", "kepmag", "gaia_g", "binary_class", "is_binary", "porb_days", "mass_ratio",
    "comp_mass", "comp_teff", "comp_logg", "comp_radius", "flux_ratio_kp", "flux_ratio_g", "a_rsun",
    "orbit_t0_days", "k1_kms", "k2_kms", "rv_sys_kms", "rv1_kms", "rv2_kms", "rv_kms_obs",
]


@pytest.fixture(scope="module")
def cfg():
    return SimulationConfig(n_stars=N)


@pytest.fixture(scope="module")
def cat(cfg):
    return simulate_catalog(cfg, seed=7, progress=False)


def test_catalogue_has_every_store_and_simulator_column(cat):
    missing = [c for c in CATALOG_COLUMNS + SIMULATOR_COLUMNS if c not in cat.columns]
    assert not missing
    assert len(cat) == N
    assert cat["star_id"].is_unique and cat["star_id"].iloc[0] == "sim-000001"
    for col in ("teff", "logg", "mass", "radius", "prot_days", "gaia_g", "kepmag", "ruwe", "parallax_mas"):
        assert np.isfinite(cat[col]).all(), col


def test_synchronised_binaries_rotate_at_the_orbital_period(cat, cfg):
    sync = cat[cat["is_synchronized"]]
    assert len(sync) > 0
    np.testing.assert_array_equal(sync["prot_days"], sync["porb_days"])
    assert (sync["porb_days"] < cfg.sync_period_days).all()
    np.testing.assert_allclose(sync["inclination_deg"], sync["orbit_inclination_deg"])
    close = cat[cat["binary_class"] == "close_sync"]
    assert (close["porb_days"] < cfg.sync_period_days).all()
    assert (close["prot_days"] == close["porb_days"]).all()


def test_binary_columns_are_consistent(cat):
    single = cat[~cat["is_binary"]]
    binary = cat[cat["is_binary"]]
    assert (single["binary_class"] == "single").all()
    assert (binary["binary_class"] != "single").all()
    assert single[["porb_days", "comp_mass", "comp_teff", "comp_radius"]].isna().all().all()
    assert (single[["flux_ratio_kp", "flux_ratio_g"]] == 0).all().all()
    assert binary[["porb_days", "comp_mass", "comp_teff", "comp_radius", "a_rsun", "k1_kms"]].notna().all().all()
    assert ((binary["mass_ratio"] > 0) & (binary["mass_ratio"] <= 1.05)).all()
    # K1 M1 = K2 M2 (momentum), and the Raghavan multiplicity within sampling noise (x Malmquist boost).
    np.testing.assert_allclose(binary["k1_kms"] * binary["mass"], binary["k2_kms"] * binary["comp_mass"], rtol=1e-9)
    assert 0.3 < cat["is_binary"].mean() < 0.65
    ecl = cat[cat["binary_class"] == "eclipsing"]
    geometric = ecl["a_rsun"] * np.abs(np.cos(np.radians(ecl["orbit_inclination_deg"]))) < ecl["radius"] + ecl["comp_radius"]
    assert geometric.all()


def test_binaries_sit_above_the_single_star_main_sequence(cat):
    ms = cat[(cat["phase"] == "MS") & cat["delta_mag_ms"].notna()]
    single = ms.loc[~ms["is_binary"], "delta_mag_ms"].median()
    binary = ms.loc[ms["is_binary"] & (ms["flux_ratio_g"] > 0.3), "delta_mag_ms"].median()
    assert binary > single + 0.2
    # an equal-mass twin adds 0.753 mag
    assert ph.combine_magnitudes(np.array([5.0]), np.array([5.0]))[0] == pytest.approx(5.0 - 0.7526, abs=1e-3)


def test_selection_limits_are_respected(cat, cfg):
    lc = cat[cat["has_light_curve"]]
    sp = cat[cat["has_spectrum"]]
    assert ((lc["kepmag"] < cfg.kepmag_limit) & (lc["kepmag"] > cfg.kepmag_bright)).all()
    assert ((sp["gaia_g"] < cfg.gaia_g_limit) & (sp["gaia_g"] > cfg.gaia_g_bright)).all()
    assert (cat["gaia_g"] < cfg.gaia_g_limit).all()
    # inside the Kepler field
    assert ((cat["glat"] > 5) & (cat["glat"] < 23) & (cat["glon"] > 65) & (cat["glon"] < 90)).all()
    assert cat["mass"].between(0.3, 1.7).all() and cat["age_gyr"].between(0.1, 12.0).all()


def test_modality_fractions_and_row_indices(cat, cfg):
    lc_only = (cat["has_light_curve"] & ~cat["has_spectrum"]).sum()
    sp_only = (~cat["has_light_curve"] & cat["has_spectrum"]).sum()
    assert lc_only == round(cfg.frac_light_curve_only * N)
    assert sp_only == round(cfg.frac_spectrum_only * N)
    assert not (~cat["has_light_curve"] & ~cat["has_spectrum"]).any()
    for flag, col in (("has_light_curve", "lc_row"), ("has_spectrum", "spec_row")):
        rows = cat.loc[cat[flag], col].to_numpy()
        np.testing.assert_array_equal(rows, np.arange(cat[flag].sum()))
        assert (cat.loc[~cat[flag], col] == -1).all()
    assert cat.loc[~cat["has_spectrum"], "rv_kms_obs"].isna().all()
    assert cat.loc[cat["has_spectrum"], "rv_kms_obs"].notna().all()


def test_splits_are_per_star_and_deterministic(cat):
    np.testing.assert_array_equal(cat["split"].to_numpy(), assign_splits(cat["star_id"], 7))
    frac = cat["split"].value_counts(normalize=True)
    assert 0.6 < frac["train"] < 0.8 and frac["val"] > 0.08 and frac["test"] > 0.08


def test_same_seed_same_catalogue_other_seed_differs(cat, cfg):
    again = simulate_catalog(cfg, seed=7, progress=False)
    pd.testing.assert_frame_equal(cat, again)
    other = simulate_catalog(cfg, seed=8, progress=False)
    assert not np.allclose(cat["teff"].to_numpy(), other["teff"].to_numpy())


def test_stellar_parameters_follow_mist_and_logg_definition(cat):
    sun = interpolate_stars(np.array([1.0]), np.array([4.57]), np.array([0.0]))
    assert 5650 < sun["teff"][0] < 5900 and abs(sun["log_lum"][0]) < 0.1 and 0.9 < sun["radius"][0] < 1.1
    np.testing.assert_allclose(cat["logg"], 4.438 + np.log10(cat["mass"]) - 2 * np.log10(cat["radius"]), atol=1e-9)
    phases = set(cat["phase"])
    assert phases == {"MS", "subgiant", "giant"}
    assert (cat.loc[cat["phase"] == "giant", "logg"] < 3.8).all()


def test_photometry_calibration_points():
    sun = ph.absolute_magnitudes(5772.0, 0.0, 0.0, 4.44)
    assert sun["G"] == pytest.approx(4.68, abs=0.03)
    assert sun["BP"] - sun["RP"] == pytest.approx(0.82, abs=0.05)
    assert sun["Kp"] - sun["G"] == pytest.approx(0.0, abs=0.05)
    assert ph.parallax_error_mas(np.array([15.0]))[0] == pytest.approx(0.03, abs=0.005)


def test_rotation_relations(cat):
    assert angus2019_period(0.82, 4.56) == pytest.approx(26.0, abs=1.0)
    ms = cat[(cat["phase"] == "MS") & ~cat["is_synchronized"]]
    hot = ms.loc[ms["teff"] > 6600, "prot_days"].median()
    cool = ms.loc[ms["teff"].between(4500, 5800), "prot_days"].median()
    assert hot < 8 < 15 < cool  # Kraft break
    sat = cat.loc[cat["rossby"] < 0.1, "spot_amplitude_ppm"]
    slow = cat.loc[cat["rossby"].between(1.0, 2.0), "spot_amplitude_ppm"]
    if len(sat) and len(slow):
        assert sat.median() > 10 * slow.median()
    np.testing.assert_allclose(cat["vsini_kms"], 50.58 * cat["radius"] / cat["prot_days"]
                               * np.sin(np.radians(cat["inclination_deg"])), rtol=1e-3)


def test_ruwe_flags_astrometric_binaries(cat):
    p_yr = cat["porb_days"] / 365.25
    astrometric = cat["is_binary"] & p_yr.between(0.3, 5) & (cat["mass_ratio"] > 0.3)
    assert (cat.loc[~cat["is_binary"], "ruwe"] < 1.4).mean() > 0.98
    if astrometric.sum() >= 5:
        assert (cat.loc[astrometric, "ruwe"] > 1.4).mean() > 0.3


def test_yaml_config_overrides_and_errors(tmp_path):
    good = tmp_path / "sim.yaml"
    good.write_text("n_stars: 123\nbinary_fraction: 0.2\nlight_curve:\n  duration_days: 20.0\n")
    cfg = load_config(good)
    assert cfg.n_stars == 123 and cfg.binary_fraction == 0.2 and cfg.light_curve.duration_days == 20.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_starz: 5\n")
    with pytest.raises(ValueError, match="bad.yaml.*n_starz"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="frac_light_curve_only"):
        load_config({"frac_light_curve_only": 0.7, "frac_spectrum_only": 0.5})
