"""A tiny synthetic survey store for model/training tests (sinusoid light curves, line-bearing spectra).

Not a physical simulation: just enough structure (a rotation period in the light curve, Teff-dependent
continuum and absorption lines shifted by a radial velocity in the spectrum) for the pipeline to run and for
losses to decrease. Built through SurveyWriter so it is a valid store.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from desa_core.data.store import CATALOG_COLUMNS, SurveyWriter, assign_splits

LINES_A = (4341.7, 4862.7, 5185.0, 5895.9, 6564.6, 8544.4, 8664.5)   # vacuum rest wavelengths


def make_tiny_survey(out, n_stars: int = 48, days: float = 40.0, cadence_days: float = 1 / 24, seed: int = 0,
                     missing_lc: int = 3, missing_spec: int = 3):
    rng = np.random.default_rng(seed)
    time = np.arange(0.0, days, cadence_days)
    wave = 10 ** np.arange(np.log10(3700.0), np.log10(9000.0), 1e-4)
    teff = rng.uniform(4000, 6800, n_stars)
    prot = rng.uniform(1.0, 12.0, n_stars)
    rv = rng.normal(0, 40, n_stars)
    abs_g = rng.uniform(2.0, 8.0, n_stars)
    has_lc = np.ones(n_stars, bool)
    has_lc[:missing_lc] = False
    has_spec = np.ones(n_stars, bool)
    has_spec[missing_lc:missing_lc + missing_spec] = False
    lc_row = np.where(has_lc, np.cumsum(has_lc) - 1, -1)
    spec_row = np.where(has_spec, np.cumsum(has_spec) - 1, -1)
    ids = [f"TINY{i:05d}" for i in range(n_stars)]
    with SurveyWriter(out, n_lc=int(has_lc.sum()), n_spec=int(has_spec.sum()), time=time, wavelength=wave) as w:
        for i in range(n_stars):
            if has_lc[i]:
                amp = rng.uniform(0.002, 0.01)
                f = 1 + amp * np.sin(2 * np.pi * time / prot[i] + rng.uniform(0, 6.3))
                f += rng.normal(0, 3e-4, time.size)
                f *= np.where(time > days / 2, 1.02, 1.0)          # a "quarter" offset
                gap = (time > days * 0.3) & (time < days * 0.3 + 1.0)
                f[gap] = np.nan
                w.light_curves[lc_row[i]] = f
            if has_spec[i]:
                wl_obs_lines = np.asarray(LINES_A) * (1 + rv[i] / 299792.458)
                x = 1.4388e8 / (wave * teff[i])
                cont = 1.0 / (wave / 5000.0) ** 5 / (np.exp(x) - 1)
                cont /= np.median(cont)
                depth = 0.3 + 0.4 * (6800 - teff[i]) / 2800
                prof = np.ones_like(wave)
                for c in wl_obs_lines:
                    prof -= depth * np.exp(-0.5 * ((wave - c) / 2.5) ** 2)
                flux = cont * prof
                err = 0.02 * np.median(flux)
                w.spectra_flux[spec_row[i]] = flux + rng.normal(0, err, wave.size)
                iv = np.full(wave.size, 1 / err**2, np.float32)
                iv[100:110] = 0.0
                w.spectra_ivar[spec_row[i]] = iv
        cat = pd.DataFrame({c: np.nan for c in CATALOG_COLUMNS}, index=range(n_stars))
        cat["star_id"] = ids
        cat["teff"], cat["prot_days"], cat["abs_g"] = teff, prot, abs_g
        cat["logg"] = rng.uniform(3.8, 4.6, n_stars)
        cat["feh"] = rng.normal(0, 0.2, n_stars)
        cat["radius"] = rng.uniform(0.7, 2.0, n_stars)
        cat["ruwe"] = rng.uniform(0.9, 1.5, n_stars)
        cls = np.array(["single", "wide", "close_sync", "eclipsing"])[np.arange(n_stars) % 4]
        cat["binary_class"] = cls
        cat["is_binary"] = cls != "single"
        cat["age_gyr"] = rng.uniform(0.5, 10.0, n_stars)
        cat["log_lum"] = -0.4 * (abs_g - 4.67)
        cat["abs_g0"] = abs_g + rng.normal(0, 0.05, n_stars)   # what the luminosity channel reads
        cat["mass"] = rng.uniform(0.7, 1.4, n_stars)
        cat["has_light_curve"], cat["has_spectrum"] = has_lc, has_spec
        cat["lc_row"], cat["spec_row"] = lc_row, spec_row
        cat["split"] = assign_splits(ids, seed=seed)
        cat["rv_kms_obs"] = rv
        w.commit(cat, info={"source": "tiny-test"})
    return out
