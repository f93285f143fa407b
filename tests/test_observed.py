"""Observed physics columns of any catalogue (desa_core.data.observed): each derived value against a hand
computation, every extinction source, the parallax cut, and the same columns written by ingest and simulate."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from desa_core.data import observed as obs
from desa_core.data.simulate import photometry as ph


def _catalogue():
    # Six stars: one per extinction source (A_G, E(BP-RP), A_V, E(B-V)), one without any, one with a poor
    # parallax; teff_obs for the first three only (the others get a photometric Teff).
    return pd.DataFrame({
        "gaia_g": [12.0, 13.5, 14.2, 15.0, 11.0, 16.8],
        "gaia_bp": [12.45, 14.1, 14.8, 15.5, 11.3, 17.5],
        "gaia_rp": [11.40, 12.8, 13.5, 14.3, 10.5, 16.0],
        "parallax_mas": [5.0, 2.0, 1.2, 0.9, 10.0, 0.2],
        "parallax_error_mas": [0.02, 0.03, 0.04, 0.05, 0.02, 0.1],
        "ra": [290.7, 291.0, 289.5, 292.3, 290.0, 288.9], "dec": [44.5, 43.0, 46.1, 45.2, 42.5, 47.0],
        "a_g": [0.10, np.nan, np.nan, np.nan, np.nan, np.nan],
        "e_bp_rp": [0.5, 0.20, np.nan, np.nan, np.nan, np.nan],   # star 0 has A_G, which wins
        "a_v": [np.nan, np.nan, 0.30, np.nan, np.nan, 0.2],
        "ebv": [np.nan, np.nan, np.nan, 0.05, np.nan, np.nan],
        "teff_obs": [5700.0, 5100.0, 6100.0, np.nan, np.nan, np.nan],
        "feh_obs": [0.0, -0.2, 0.1, np.nan, np.nan, np.nan],
    })


def test_every_derived_column_by_hand():
    from zero_point import zpt
    cat = _catalogue()
    out, info = obs.observed_columns(cat)

    # Parallax zero-point: the Lindegren et al. 2021 recipe at nu_eff from BP-RP and the ecliptic latitude.
    bp_rp = (cat["gaia_bp"] - cat["gaia_rp"]).to_numpy()
    nu = np.clip(1.76 - 1.61 / np.pi * np.arctan(0.531 * bp_rp), 1.24, 1.72)
    beta = obs.ecliptic_latitude(cat["ra"], cat["dec"])
    zpt.load_tables()
    zp = zpt.get_zpt(cat["gaia_g"].to_numpy(), nu, np.full(6, np.nan), beta, np.full(6, 31))
    np.testing.assert_allclose(out["parallax_zp_mas"], zp, atol=1e-9)
    assert ((zp > -0.06) & (zp < 0.0)).all()       # DR3 parallaxes are too small by a few 10 microarcsec
    plx = cat["parallax_mas"] - zp
    np.testing.assert_allclose(out["parallax_corr_mas"], plx)

    # Extinction: A_G first, then E(BP-RP), A_V, E(B-V) (A_V = 3.1 E(B-V)); Wang & Chen 2019 ratios.
    e_per_av = ph.A_BP_AV - ph.A_RP_AV
    a_g = np.array([0.10, 0.20 * ph.A_G_AV / e_per_av, 0.30 * ph.A_G_AV, 0.155 * ph.A_G_AV, 0.0, 0.2 * ph.A_G_AV])
    e_br = np.array([0.10 * e_per_av / ph.A_G_AV, 0.20, 0.30 * e_per_av, 0.155 * e_per_av, 0.0, 0.2 * e_per_av])
    assert list(out["extinction_source"]) == ["a_g", "e_bp_rp", "a_v", "ebv", "", "a_v"]
    assert list(out["dereddened"]) == [True, True, True, True, False, True]
    np.testing.assert_allclose(out["bp_rp0"], bp_rp - e_br, atol=1e-12)

    # The parallax cut: star 5 has parallax/error = 2 < 5: no absolute magnitude.
    assert list(out["parallax_ok"]) == [True] * 5 + [False]
    abs_g0 = cat["gaia_g"] + 5 * np.log10(plx / 100.0) - a_g
    np.testing.assert_allclose(out["abs_g0"][:5], abs_g0[:5], atol=1e-12)
    assert np.isnan(out["abs_g0"][5]) and np.isnan(out["log_lum_obs"][5])

    # log L from M_G,0 and BC_G(Teff): spectroscopic Teff where given, else from the de-reddened colour.
    teff = np.array([5700.0, 5100.0, 6100.0, *obs.photometric_teff(out["bp_rp0"][3:])])
    np.testing.assert_allclose(out["teff_bc"], teff)
    assert 4000 < teff[3] < 6500 and 4000 < teff[4] < 7000
    log_l = (ph.M_BOL_SUN - abs_g0[:5] - ph.bc_g(teff[:5])) / 2.5
    np.testing.assert_allclose(out["log_lum_obs"][:5], log_l, atol=1e-12)

    # delta_mag_ms: the MS reference M_G at the star's colour minus its M_G.
    x, mg = obs.main_sequence_reference()
    np.testing.assert_allclose(out["delta_mag_ms_obs"][:5], np.interp(out["bp_rp0"][:5], x, mg) - abs_g0[:5])
    assert info["n_parallax_ok"] == 5 and info["n_dereddened"] == 5 and info["extinction_columns"] == \
        ["a_g", "a_v", "e_bp_rp", "ebv"]


def test_the_sun_at_10_pc_comes_out_as_the_sun():
    x, mg = obs.main_sequence_reference()
    sun = pd.DataFrame({"gaia_g": [4.68], "gaia_bp": [4.68 + 0.5], "gaia_rp": [4.68 + 0.5 - 0.82],
                        "parallax_mas": [100.0], "parallax_error_mas": [0.01], "ra": [290.0], "dec": [44.0],
                        "a_v": [0.0], "teff_obs": [5772.0]})
    out, _ = obs.observed_columns(sun)
    assert out["abs_g0"][0] == pytest.approx(4.68, abs=0.01)        # zero-point is 1e-4 of 100 mas
    assert out["log_lum_obs"][0] == pytest.approx(0.0, abs=0.01)
    assert out["delta_mag_ms_obs"][0] == pytest.approx(np.interp(0.82, x, mg) - 4.68, abs=0.02)


def test_a_catalogue_without_errors_or_extinction_is_flagged_not_guessed():
    cat = _catalogue().drop(columns=["parallax_error_mas", "a_g", "e_bp_rp", "a_v", "ebv"])
    out, info = obs.observed_columns(cat)
    assert not out["dereddened"].any() and info["n_not_dereddened"] == 6
    assert not info["parallax_errors"] and out["parallax_ok"].all()        # no errors: no cut, said so
    np.testing.assert_allclose(out["bp_rp0"], cat["gaia_bp"] - cat["gaia_rp"])


def test_ingest_derives_the_observed_columns_from_gaia_columns(tmp_path):
    from desa_core.data.ingest import ingest
    from desa_core.data.store import SurveyStore
    from fits_fixtures import write_catalogue, write_star_quarters
    lc, sp = tmp_path / "lc", tmp_path / "sp"
    sp.mkdir()
    for k, kic in enumerate((10000001, 10000002, 10000003)):
        write_star_quarters(lc, kic, n_quarters=2, ra=290.0 + k, dec=44.0)
    rows = {"kepid": [10000001, 10000002, 10000003], "ra": [290.0, 291.0, 292.0], "dec": [44.0, 44.0, 44.0],
            "phot_g_mean_mag": [12.0, 13.5, 14.2], "phot_bp_mean_mag": [12.45, 14.1, 14.8],
            "phot_rp_mean_mag": [11.40, 12.8, 13.5], "parallax": [5.0, 2.0, 0.1], "parallax_error": [0.02, 0.03, 0.04],
            "ag_gspphot": [0.1, 0.2, np.nan], "Teff": [5700.0, 5100.0, 6000.0], "period": [3.0, 4.0, 5.0]}
    cat = write_catalogue(tmp_path / "cat.csv", rows, "csv")
    rep = ingest(lc, sp, cat, tmp_path / "store")
    c = SurveyStore.open(tmp_path / "store").catalog.set_index("star_id")
    expected, _ = obs.observed_columns(pd.DataFrame({
        "gaia_g": rows["phot_g_mean_mag"], "gaia_bp": rows["phot_bp_mean_mag"], "gaia_rp": rows["phot_rp_mean_mag"],
        "parallax_mas": rows["parallax"], "parallax_error_mas": rows["parallax_error"], "a_g": rows["ag_gspphot"],
        "ra": rows["ra"], "dec": rows["dec"], "teff_obs": rows["Teff"]}))
    for col in ("bp_rp0", "abs_g0", "log_lum_obs", "delta_mag_ms_obs", "parallax_ok"):
        np.testing.assert_allclose(c[col].to_numpy(float), expected[col].to_numpy(float), equal_nan=True)
    assert list(c["extinction_source"]) == ["a_g", "a_g", ""] and not c["dereddened"].iloc[2]
    assert list(c["teff_obs"]) == rows["Teff"]                     # a catalogue's Teff is a measurement
    assert np.isnan(c["abs_g0"].iloc[2])                           # parallax/error 2.5 < 5
    assert set(c["binary_class"]) == {"unknown"}                   # nothing says they are single
    assert np.isnan(c["prot_days"]).all()                          # 'period' may be orbital: not read as Prot
    assert rep.observed_columns["n_parallax_ok"] == 2
    assert any("abs_g0" in d for d in rep.columns_derived)


def test_the_simulated_survey_uses_the_same_module(trained_demo):
    from desa_core.data.store import SurveyStore
    cat = SurveyStore.open(trained_demo.survey).catalog
    seen = pd.DataFrame({"gaia_g": cat["gaia_g_obs"], "gaia_bp": cat["gaia_bp_obs"], "gaia_rp": cat["gaia_rp_obs"],
                         "parallax_mas": cat["parallax_mas_obs"], "parallax_error_mas": cat["parallax_error_mas"],
                         "a_v": cat["a_v_obs"], "ra": cat["ra"], "dec": cat["dec"], "teff_obs": cat["teff_obs"],
                         "feh_obs": cat["feh_obs"]})
    from desa_core.data.simulate.config import SimulationConfig
    again, _ = obs.observed_columns(seen, ms_reference=obs.main_sequence_reference(SimulationConfig().feh_mean))
    for col in ("bp_rp0", "abs_g0", "log_lum_obs", "delta_mag_ms_obs"):
        np.testing.assert_allclose(cat[col].to_numpy(float), again[col].to_numpy(float), equal_nan=True)
    # Observed, not true: close to the truth on average, never equal to it.
    ok = cat["parallax_ok"].to_numpy(bool)
    d = (cat["abs_g0"] - cat["abs_g"])[ok]
    assert abs(d.median()) < 0.05 and 0.01 < d.std() < 0.5
    assert not np.allclose(cat["bp_rp0"], cat["bp_rp"])
