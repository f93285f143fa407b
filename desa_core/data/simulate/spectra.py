"""LAMOST-like low-resolution spectra for a table of simulated stars.

A spectrum is built per star, vectorised across stars (loops run over lines and chunks of stars):

* **Continuum**: a blackbody at Teff times the shape of the Kurucz solar model's true continuum relative to a
  blackbody (``solar_line_forest.npz``).
* **Weak-line forest**: the thousands of weak lines not in the list come from the Kurucz solar model
  (CALSPEC ``sun_mod_001.fits``) blurred to R = 1800: the optical depth the explicit list does not produce for
  the Sun (:func:`build_solar_forest`), Doppler-shifted and rotation-broadened per star, and scaled like
  neutral metals (:func:`forest_factor`: stronger in cooler and metal-richer stars, fading in F stars). It
  carries most of the line blanketing of the blue spectrum. The noiseless solar model reproduces the
  Kurucz F/C averaged over any 200 A band to ~0.01.
* **Lines and bands** (:data:`LINE_LIST`, :data:`BAND_LIST`): a hand-made list of 140 real atomic lines and
  molecular bands (air wavelengths from the standard solar / MK-classification line lists, converted to
  vacuum). Each line has a solar-dwarf equivalent width that scales with Teff, logg and [Fe/H] by its
  *family* (:func:`line_strengths`): Balmer lines strengthen with Teff; neutral metals strengthen in cooler,
  metal-richer stars; Mg b, Na D, Ca I 4227, K I and the Na I 8190 doublet strengthen with gravity; ionised
  lines and the Ca II triplet strengthen in giants; the G band peaks in K stars; TiO and CaH bands switch on
  below ~4200 K, MgH in cool dwarfs, CN in cool giants. Lines are pseudo-Voigt profiles (Gaussian core from
  the instrument, pixel width and rotation; Lorentzian damping wings for strong lines) in velocity space;
  bands are exponentially degraded band heads smoothed by the same Gaussian. Absorption is
  ``exp(-sum tau)``, so blends and strong lines saturate.
* **Activity**: chromospheric Ca II H&K core emission with log R'HK from the Rossby number (Mamajek &
  Hillenbrand 2008), and H-alpha fill-in/emission for very active stars.
* **Kinematics**: Doppler shift by ``rv1_kms``; rotational broadening from ``vsini_kms`` (Gaussian with the
  rotation kernel's second moment, ~0.47 vsini).
* **Binaries**: the companion's spectrum (same model, ``comp_teff``/``comp_logg``) at ``rv2_kms``, weighted so
  that its share of the Gaia G-band flux is ``flux_ratio_g``; lines double when |rv1 - rv2| exceeds the
  ~170 km/s resolution.
* **Interstellar medium**: CCM89 reddening (R_V = 3.1) from the star's ``a_v`` when the column exists, plus
  interstellar Na D and the 5780 A diffuse band at rest.
* **Observation**: telluric O2/H2O bands (observed frame, random airmass), an instrument throughput with a
  weak blue end and a dichroic dip near 5800 A, photon noise with S/N from Gaia G (S/N_g ~ 100 at G = 12,
  ~10 at G = 17, per pixel in 4000-5500 A) plus night-sky noise and sky-line residuals, random low-order
  flux-calibration wiggles and a blue/red arm step at 5900 A, a few masked pixels, and relative flux
  calibration (divided by the median).

The grid is LAMOST's: vacuum wavelengths 3700-9000 A, uniform in log10(lambda) with 1e-4 dex (69 km/s)
pixels, 3861 pixels, R ~ 1800.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtr

from desa_core.data.store import (LAMOST_GRID_DLOG10, LAMOST_GRID_MAX_A, LAMOST_GRID_MIN_A, log_lambda_grid,
                                  log_lambda_pixels)

log = logging.getLogger(__name__)

C_KMS = 299792.458
HC_OVER_K_AK = 1.438777e8        # h c / k in Angstrom Kelvin
SIGMA_SB = 5.670374e-5            # erg s^-1 cm^-2 K^-4
TEFF_SUN = 5772.0
LOGG_SUN = 4.438


@dataclass
class SpectrumConfig:
    """Wavelength grid, instrument and noise knobs of the simulated LAMOST LRS spectra."""

    wave_min: float = LAMOST_GRID_MIN_A     # the store's grid (desa_core.data.store)
    wave_max: float = LAMOST_GRID_MAX_A
    dlog10: float = LAMOST_GRID_DLOG10
    resolution: float = 1800.0           # lambda / FWHM of the (Gaussian) line-spread function

    # Noise: per-pixel S/N in 4000-5500 A = snr_g12 * 10^(-0.2 (G - 12)) * lognormal(observing conditions)
    add_noise: bool = True
    snr_g12: float = 100.0
    snr_scatter_dex: float = 0.1
    snr_max: float = 400.0
    snr_min: float = 2.0
    bad_pixel_fraction: float = 0.001    # isolated masked pixels (ivar = 0): cosmic rays, bad columns
    sky_g_mag: float = 20.0              # sky continuum per pixel, as the counts of a star of this G magnitude
    sky_residual: float = 0.03           # sky-subtraction residual, fraction of the sky counts (not in ivar)
    arm_mismatch: float = 0.02           # relative flux step between the blue and red arms at ~5900 A (1 sigma)

    # Smooth multiplicative flux-calibration error exp(sum_k c_k P_k(x)), Legendre order 1..order
    calibration_order: int = 4
    calibration_sigma: float = 0.04

    telluric_strength: tuple[float, float] = (0.7, 1.6)   # airmass-like scale of the O2/H2O bands (uniform)
    activity_emission: bool = True
    interstellar: bool = True            # redden by the star's a_v (if the column exists), add ISM Na D / DIB
    chunk_stars: int = 500

    @property
    def n_pixels(self) -> int:
        return log_lambda_pixels(self.wave_min, self.wave_max, self.dlog10)

    @property
    def velocity_per_pixel(self) -> float:
        return C_KMS * np.log(10.0) * self.dlog10

    @property
    def lsf_sigma_kms(self) -> float:
        return C_KMS / self.resolution / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def lamost_wavelength_grid(cfg: SpectrumConfig | None = None) -> np.ndarray:
    """(L,) float64 vacuum Angstrom, uniform in log10(lambda): 3861 pixels for the default 3700-9000 A."""
    cfg = cfg or SpectrumConfig()
    if not (0 < cfg.wave_min < cfg.wave_max) or cfg.dlog10 <= 0:
        raise ValueError(f"SpectrumConfig: need 0 < wave_min < wave_max and dlog10 > 0 "
                         f"(got {cfg.wave_min}, {cfg.wave_max}, {cfg.dlog10})")
    return log_lambda_grid(cfg.wave_min, cfg.wave_max, cfg.dlog10)


def air_to_vacuum(wave_air) -> np.ndarray:
    """Air to vacuum wavelength [A] (Piskunov's inversion of the Ciddor / Morton 2000 formula, as VALD)."""
    w = np.asarray(wave_air, dtype=np.float64)
    s2 = (1e4 / w) ** 2
    n = 1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s2) + 1.599740894897e-4 / (38.92568793293 - s2)
    return w * n


# --------------------------------------------------------------------------------------------------------------
# Line list. (name, air wavelength [A], family, solar-dwarf strength [A], Lorentzian FWHM [km/s],
# extra intrinsic Gaussian sigma [km/s]). Wavelengths: Moore, Minnaert & Houtgast (1966) solar line
# identifications as quoted in MK-classification atlases (Gray & Corbally 2009) and the Lick index
# definitions (Worthey et al. 1994). The strength is the optically thin equivalent width (the integral of the
# optical depth over wavelength); saturated lines (Ca II H&K, Balmer, Mg b, Na D, CaT) end up with a smaller
# observed equivalent width. Values are rough solar numbers tuned by eye at R~1800.
LINE_LIST: list[tuple[str, float, str, float, float, float]] = [
    # Balmer series
    ("H12", 3750.15, "balmer", 0.8, 150.0, 0.0),
    ("H11", 3770.63, "balmer", 1.0, 150.0, 0.0),
    ("H10", 3797.90, "balmer", 1.3, 180.0, 0.0),
    ("H9", 3835.38, "balmer", 1.7, 200.0, 0.0),
    ("H8", 3889.05, "balmer", 2.2, 220.0, 0.0),
    ("Hepsilon", 3970.07, "balmer", 2.6, 250.0, 0.0),
    ("Hdelta", 4101.74, "balmer", 3.0, 250.0, 0.0),
    ("Hgamma", 4340.47, "balmer", 3.4, 250.0, 0.0),
    ("Hbeta", 4861.33, "balmer", 3.8, 250.0, 0.0),
    ("Halpha", 6562.80, "balmer", 3.6, 200.0, 0.0),
    # Ca II H & K and the infrared triplet
    ("CaII_K", 3933.66, "hk", 26.0, 380.0, 0.0),
    ("CaII_H", 3968.47, "hk", 21.0, 350.0, 0.0),
    ("CaII_8498", 8498.02, "cat", 1.6, 80.0, 0.0),
    ("CaII_8542", 8542.09, "cat", 4.5, 120.0, 0.0),
    ("CaII_8662", 8662.14, "cat", 3.4, 100.0, 0.0),
    # gravity-sensitive neutral lines
    ("CaI_4227", 4226.73, "gravity", 1.5, 200.0, 0.0),
    ("MgI_b1", 5183.60, "gravity", 1.9, 150.0, 0.0),
    ("MgI_b2", 5172.68, "gravity", 1.6, 130.0, 0.0),
    ("MgI_b4", 5167.32, "gravity", 1.1, 110.0, 0.0),
    ("NaI_D2", 5889.95, "gravity", 0.9, 100.0, 0.0),
    ("NaI_D1", 5895.92, "gravity", 0.7, 90.0, 0.0),
    ("MgI_3832", 3832.30, "gravity", 1.0, 80.0, 0.0),
    ("MgI_3838", 3838.29, "gravity", 1.2, 80.0, 0.0),
    ("MgI_8807", 8806.76, "gravity", 0.45, 0.0, 0.0),
    ("KI_7665", 7664.90, "alkali", 0.20, 0.0, 0.0),
    ("KI_7699", 7698.96, "alkali", 0.17, 0.0, 0.0),
    ("NaI_8183", 8183.26, "alkali", 0.10, 0.0, 0.0),
    ("NaI_8195", 8194.82, "alkali", 0.14, 0.0, 0.0),
    # neutral metals (Fe I unless named otherwise)
    ("FeI_3820", 3820.43, "metal", 1.0, 0.0, 0.0),
    ("FeI_3860", 3859.91, "metal", 1.0, 0.0, 0.0),
    ("SiI_3906", 3905.52, "metal", 0.7, 0.0, 0.0),
    ("AlI_3944", 3944.01, "metal", 0.45, 0.0, 0.0),
    ("AlI_3962", 3961.52, "metal", 0.55, 0.0, 0.0),
    ("MnI_4031", 4030.75, "metal", 0.45, 0.0, 0.0),
    ("MnI_4033", 4033.06, "metal", 0.40, 0.0, 0.0),
    ("FeI_4046", 4045.81, "metal", 1.0, 0.0, 0.0),
    ("FeI_4064", 4063.59, "metal", 0.6, 0.0, 0.0),
    ("FeI_4072", 4071.74, "metal", 0.55, 0.0, 0.0),
    ("FeI_4144", 4143.87, "metal", 0.45, 0.0, 0.0),
    ("FeI_4260", 4260.47, "metal", 0.40, 0.0, 0.0),
    ("FeI_4325", 4325.76, "metal", 0.45, 0.0, 0.0),
    ("FeI_4384", 4383.55, "metal", 1.0, 0.0, 0.0),
    ("FeI_4405", 4404.75, "metal", 0.8, 0.0, 0.0),
    ("FeI_4415", 4415.12, "metal", 0.5, 0.0, 0.0),
    ("CaI_4455", 4454.78, "metal", 0.4, 0.0, 0.0),
    ("FeI_4528", 4528.61, "metal", 0.3, 0.0, 0.0),
    ("MgI_4703", 4702.99, "metal", 0.3, 0.0, 0.0),
    ("FeI_4920", 4920.50, "metal", 0.35, 0.0, 0.0),
    ("FeI_4958", 4957.60, "metal", 0.6, 0.0, 0.0),
    ("TiI_4982", 4981.73, "metal", 0.15, 0.0, 0.0),
    ("CrI_5206", 5206.04, "metal", 0.30, 0.0, 0.0),
    ("CrI_5208", 5208.42, "metal", 0.30, 0.0, 0.0),
    ("FeI_5270", 5269.54, "metal", 0.6, 0.0, 0.0),
    ("FeI_4005", 4005.24, "metal", 0.45, 0.0, 0.0),
    ("FeI_4132", 4132.06, "metal", 0.35, 0.0, 0.0),
    ("FeI_4202", 4202.03, "metal", 0.45, 0.0, 0.0),
    ("FeI_4251", 4250.79, "metal", 0.4, 0.0, 0.0),
    ("CrI_4254", 4254.33, "metal", 0.35, 0.0, 0.0),
    ("FeI_4272", 4271.76, "metal", 0.5, 0.0, 0.0),
    ("CrI_4275", 4274.80, "metal", 0.3, 0.0, 0.0),
    ("CrI_4290", 4289.72, "metal", 0.3, 0.0, 0.0),
    ("CaI_4319", 4318.65, "metal", 0.2, 0.0, 0.0),
    ("FeI_4376", 4375.93, "metal", 0.3, 0.0, 0.0),
    ("FeI_4427", 4427.31, "metal", 0.3, 0.0, 0.0),
    ("CaI_4436", 4435.68, "metal", 0.2, 0.0, 0.0),
    ("FeI_4462", 4461.65, "metal", 0.25, 0.0, 0.0),
    ("FeI_4476", 4476.02, "metal", 0.25, 0.0, 0.0),
    ("FeI_4482", 4482.17, "metal", 0.25, 0.0, 0.0),
    ("TiI_4534", 4533.24, "metal", 0.15, 0.0, 0.0),
    ("FeI_4871", 4871.32, "metal", 0.25, 0.0, 0.0),
    ("FeI_4891", 4890.76, "metal", 0.3, 0.0, 0.0),
    ("FeI_5051", 5051.63, "metal", 0.2, 0.0, 0.0),
    ("FeI_5110", 5110.41, "metal", 0.2, 0.0, 0.0),
    ("FeI_5192", 5191.45, "metal", 0.25, 0.0, 0.0),
    ("FeI_5227", 5227.19, "metal", 0.3, 0.0, 0.0),
    ("FeI_5233", 5232.94, "metal", 0.3, 0.0, 0.0),
    ("FeI_5325", 5324.18, "metal", 0.3, 0.0, 0.0),
    ("FeI_5367", 5367.47, "metal", 0.2, 0.0, 0.0),
    ("FeI_5383", 5383.37, "metal", 0.2, 0.0, 0.0),
    ("FeI_5424", 5424.07, "metal", 0.2, 0.0, 0.0),
    ("FeI_5587", 5586.76, "metal", 0.2, 0.0, 0.0),
    ("CaI_5589", 5588.75, "metal", 0.2, 0.0, 0.0),
    ("CaI_5857", 5857.45, "metal", 0.15, 0.0, 0.0),
    ("FeI_6065", 6065.48, "metal", 0.12, 0.0, 0.0),
    ("CaI_6170", 6169.56, "metal", 0.12, 0.0, 0.0),
    ("FeI_6231", 6230.72, "metal", 0.15, 0.0, 0.0),
    ("FeI_6246", 6246.32, "metal", 0.12, 0.0, 0.0),
    ("FeI_6336", 6335.33, "metal", 0.1, 0.0, 0.0),
    ("FeI_6412", 6411.65, "metal", 0.12, 0.0, 0.0),
    ("FeI_6421", 6421.35, "metal", 0.12, 0.0, 0.0),
    ("FeI_6678", 6677.99, "metal", 0.12, 0.0, 0.0),
    ("CaI_6718", 6717.68, "metal", 0.12, 0.0, 0.0),
    ("FeI_8621", 8621.60, "metal", 0.15, 0.0, 0.0),
    ("FeI_8675", 8674.75, "metal", 0.15, 0.0, 0.0),
    ("MgI_8736", 8736.02, "metal", 0.2, 0.0, 0.0),
    ("FeII_4233", 4233.17, "ion", 0.15, 0.0, 0.0),
    ("FeII_4584", 4583.84, "ion", 0.15, 0.0, 0.0),
    ("FeII_5198", 5197.58, "ion", 0.12, 0.0, 0.0),
    ("FeII_5235", 5234.62, "ion", 0.12, 0.0, 0.0),
    ("FeII_5317", 5316.61, "ion", 0.15, 0.0, 0.0),
    ("FeII_6456", 6456.38, "ion", 0.08, 0.0, 0.0),
    ("FeI_5328", 5328.04, "metal", 0.5, 0.0, 0.0),
    ("FeI_5341", 5341.02, "metal", 0.25, 0.0, 0.0),
    ("FeI_5371", 5371.49, "metal", 0.3, 0.0, 0.0),
    ("FeI_5397", 5397.13, "metal", 0.3, 0.0, 0.0),
    ("FeI_5406", 5405.77, "metal", 0.3, 0.0, 0.0),
    ("FeI_5430", 5429.70, "metal", 0.3, 0.0, 0.0),
    ("FeI_5447", 5446.92, "metal", 0.3, 0.0, 0.0),
    ("NiI_5477", 5476.90, "metal", 0.15, 0.0, 0.0),
    ("MgI_5528", 5528.41, "metal", 0.3, 0.0, 0.0),
    ("FeI_5616", 5615.64, "metal", 0.2, 0.0, 0.0),
    ("NaI_5688", 5688.20, "metal", 0.13, 0.0, 0.0),
    ("CaI_6103", 6102.72, "metal", 0.15, 0.0, 0.0),
    ("CaI_6122", 6122.22, "metal", 0.2, 0.0, 0.0),
    ("FeI_6137", 6136.61, "metal", 0.15, 0.0, 0.0),
    ("CaI_6162", 6162.17, "metal", 0.22, 0.0, 0.0),
    ("FeI_6192", 6191.56, "metal", 0.15, 0.0, 0.0),
    ("FeI_6253", 6252.56, "metal", 0.15, 0.0, 0.0),
    ("FeI_6394", 6393.60, "metal", 0.15, 0.0, 0.0),
    ("FeI_6400", 6400.00, "metal", 0.15, 0.0, 0.0),
    ("CaI_6439", 6439.08, "metal", 0.15, 0.0, 0.0),
    ("FeI_6495", 6494.98, "metal", 0.15, 0.0, 0.0),
    ("FeI_8327", 8327.05, "metal", 0.25, 0.0, 0.0),
    ("FeI_8388", 8387.77, "metal", 0.3, 0.0, 0.0),
    ("FeI_8468", 8468.41, "metal", 0.2, 0.0, 0.0),
    ("FeI_8689", 8688.62, "metal", 0.3, 0.0, 0.0),
    ("FeI_8824", 8824.22, "metal", 0.3, 0.0, 0.0),
    # ionised lines: luminosity (gravity) indicators, stronger in giants
    ("SrII_4078", 4077.71, "ion", 0.4, 0.0, 0.0),
    ("SrII_4216", 4215.52, "ion", 0.25, 0.0, 0.0),
    ("TiII_4444", 4443.80, "ion", 0.15, 0.0, 0.0),
    ("BaII_4554", 4554.03, "ion", 0.2, 0.0, 0.0),
    ("FeII_4924", 4923.93, "ion", 0.2, 0.0, 0.0),
    ("BaII_4934", 4934.08, "ion", 0.15, 0.0, 0.0),
    ("FeII_5018", 5018.44, "ion", 0.2, 0.0, 0.0),
    ("FeII_5169", 5169.03, "ion", 0.2, 0.0, 0.0),
    ("BaII_6497", 6496.90, "ion", 0.12, 0.0, 0.0),
    ("OI_7772", 7771.94, "oxygen", 0.07, 0.0, 0.0),
    ("OI_7774", 7774.17, "oxygen", 0.06, 0.0, 0.0),
    ("OI_7775", 7775.39, "oxygen", 0.05, 0.0, 0.0),
    # CH G band: a blend of hundreds of CH lines, modelled as one broad feature
    ("CH_Gband", 4305.0, "ch", 5.0, 0.0, 400.0),
]

# Molecular and telluric bands: (name, band-head air wavelength [A], family, peak optical depth at full
# strength, e-folding length [A], direction: +1 degraded to the red, -1 to the blue, 0 a Gaussian band of
# that sigma centred on the given wavelength). Heads from Pearse &
# Gaydon and the M-dwarf classification literature (Kirkpatrick et al. 1991); telluric bands in the
# observed frame.
BAND_LIST: list[tuple[str, float, str, float, float, int]] = [
    ("TiO_4761", 4761.0, "tio", 0.25, 60.0, +1),
    ("TiO_4955", 4954.6, "tio", 0.35, 70.0, +1),
    ("TiO_5167", 5166.7, "tio", 0.45, 80.0, +1),
    ("TiO_5448", 5448.0, "tio", 0.40, 80.0, +1),
    ("TiO_5847", 5847.0, "tio", 0.40, 90.0, +1),
    ("TiO_6159", 6158.5, "tio", 0.70, 100.0, +1),
    ("TiO_6651", 6651.0, "tio", 0.60, 100.0, +1),
    ("TiO_7054", 7053.9, "tio", 1.00, 120.0, +1),
    ("TiO_7589", 7589.0, "tio", 0.50, 100.0, +1),
    ("TiO_8432", 8432.0, "tio", 0.40, 80.0, +1),
    ("TiO_8859", 8859.0, "tio", 0.40, 80.0, +1),
    ("CaH_6382", 6382.0, "cah", 0.25, 40.0, +1),
    ("CaH_6750", 6750.0, "cah", 0.30, 80.0, +1),
    ("MgH_5211", 5211.0, "mgh", 0.15, 250.0, -1),
    ("CN_3883", 3883.0, "cn", 0.25, 40.0, -1),
    ("CN_4216", 4216.0, "cn", 0.10, 60.0, -1),
    ("O2_B", 6867.2, "telluric", 0.30, 12.0, +1),
    ("O2_A", 7594.0, "telluric", 0.65, 15.0, +1),
    ("H2O_7250", 7250.0, "telluric", 0.06, 50.0, 0),
    ("H2O_8230", 8230.0, "telluric", 0.07, 60.0, 0),
    ("H2O_9000", 9000.0, "telluric", 0.10, 40.0, 0),
]

LINE_VACUUM = air_to_vacuum([l[1] for l in LINE_LIST])
BAND_VACUUM = air_to_vacuum([b[1] for b in BAND_LIST])
LINE_INDEX = {l[0]: i for i, l in enumerate(LINE_LIST)}
CA_K_VAC, CA_H_VAC, HALPHA_VAC = (LINE_VACUUM[LINE_INDEX[k]] for k in ("CaII_K", "CaII_H", "Halpha"))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def family_factors(teff, logg, feh) -> dict[str, np.ndarray]:
    """Strength of each line family relative to a solar dwarf (1 at Teff 5772 K, logg 4.44, [Fe/H] 0)."""
    teff = np.asarray(teff, dtype=np.float64)
    t = np.clip(teff / TEFF_SUN, 0.55, 1.6)
    dg = np.asarray(logg, dtype=np.float64) - LOGG_SUN
    z = np.clip(np.asarray(feh, dtype=np.float64), -2.5, 0.6)
    g_band_sun = np.exp(-((TEFF_SUN - 5000.0) / 1400.0) ** 2)
    cat_t = 1.0 - 0.6 * np.clip(((teff - 5000.0) / 2500.0) ** 2, 0.0, 1.0)
    cat_t_sun = 1.0 - 0.6 * ((TEFF_SUN - 5000.0) / 2500.0) ** 2
    return {
        # Balmer: excitation of n=2 grows steeply with Teff up to A stars (capped near 8500 K).
        "balmer": np.minimum(t, 1.47) ** 5.5 * 10.0 ** (0.05 * dg),
        "hk": t ** -1.5 * 10.0 ** (0.3 * z) * 10.0 ** (0.1 * dg),
        "cat": cat_t / cat_t_sun * 10.0 ** (0.35 * z) * 10.0 ** (-0.1 * dg),
        "gravity": t ** -3.5 * 10.0 ** (0.8 * z) * 10.0 ** (0.35 * dg),
        "alkali": t ** -6.0 * 10.0 ** (0.5 * z) * 10.0 ** (0.6 * dg),
        "metal": t ** -3.0 * 10.0 ** (0.9 * z),
        "ion": t ** 1.0 * 10.0 ** (0.6 * z) * 10.0 ** (-0.3 * dg),
        "oxygen": t ** 4.0 * 10.0 ** (0.3 * z) * 10.0 ** (-0.3 * dg),
        "ch": np.exp(-((teff - 5000.0) / 1400.0) ** 2) / g_band_sun * 10.0 ** (0.5 * z),
        "tio": _sigmoid((3900.0 - teff) / 170.0) * 10.0 ** (0.2 * z),
        "cah": _sigmoid((3800.0 - teff) / 150.0) * 10.0 ** (0.5 * dg),
        "mgh": _sigmoid((4700.0 - teff) / 250.0) * 10.0 ** (0.4 * dg) * 10.0 ** (0.3 * z),
        "cn": _sigmoid((5000.0 - teff) / 300.0) * 10.0 ** (-0.25 * dg) * 10.0 ** (0.5 * z),
    }


def forest_factor(teff, feh) -> np.ndarray:
    """Strength of the weak-line forest relative to the Sun: neutral-metal scaling, fading faster in F/A stars."""
    t = np.clip(np.asarray(teff, dtype=np.float64) / TEFF_SUN, 0.55, 1.6)
    z = np.clip(np.asarray(feh, dtype=np.float64), -2.5, 0.6)
    return np.where(t <= 1.0, t ** -3.0, t ** -5.0) * 10.0 ** (0.9 * z)


def line_strengths(teff, logg, feh) -> np.ndarray:
    """(n, n_lines) optically thin equivalent widths [A] of :data:`LINE_LIST` (before saturation and blending)."""
    f = family_factors(teff, logg, feh)
    w0 = np.array([l[3] for l in LINE_LIST])
    return np.stack([f[l[2]] for l in LINE_LIST], axis=1) * w0[None, :]


def continuum(wavelength: np.ndarray, teff) -> np.ndarray:
    """(n, L) continuum F_lambda (arbitrary units): blackbody at Teff times the Kurucz solar continuum shape.

    The solar model's true continuum is bluer than a 5772 K blackbody (1.6x at 3700 A, 0.86x at 9000 A
    relative to 5500 A); that ratio is applied to every star. Line blanketing is not in the continuum: it
    comes from the lines and the solar weak-line forest (:func:`solar_forest`).
    """
    w = np.asarray(wavelength, dtype=np.float64)
    teff = np.asarray(teff, dtype=np.float64)[:, None]
    bb = w[None, :] ** -5 / np.expm1(HC_OVER_K_AK / (w[None, :] * teff))
    return bb * np.exp(_forest_template()["ln_cont_corr_at"](w))[None, :]


FOREST_FILE = Path(__file__).with_name("solar_line_forest.npz")


@functools.lru_cache(maxsize=1)
def _forest_template() -> dict:
    """The shipped solar weak-line forest and continuum correction (see :func:`build_solar_forest`)."""
    if not FOREST_FILE.is_file():
        raise FileNotFoundError(f"{FOREST_FILE}: the solar line-forest template is missing from the package; "
                                f"rebuild it with desa_core.data.simulate.spectra.build_solar_forest()")
    try:
        with np.load(FOREST_FILE, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{FOREST_FILE}: unreadable line-forest template ({e})") from e
    log_w = float(d["log10_wave0"]) + float(d["dlog10"]) * np.arange(len(d["tau_forest"]))
    corr = d["ln_cont_corr"].astype(np.float64)
    d["log_wave"] = log_w
    d["ln_cont_corr_at"] = lambda w: np.interp(np.log10(w), log_w, corr)
    return d


def solar_forest(wavelength: np.ndarray) -> np.ndarray:
    """The solar weak-line forest optical depth (rest frame, R~1800) interpolated onto ``wavelength``."""
    d = _forest_template()
    return np.interp(np.log10(np.asarray(wavelength, dtype=np.float64)), d["log_wave"],
                     d["tau_forest"].astype(np.float64), left=0.0, right=0.0)


def activity_log_rhk(rossby) -> np.ndarray:
    """log R'HK from the Rossby number (Mamajek & Hillenbrand 2008, saturated at -4.0; inactive floor -5.1)."""
    ro = np.asarray(rossby, dtype=np.float64)
    lr = -4.522 - (ro - 0.808) / 2.966
    return np.clip(np.where(np.isfinite(lr), lr, -5.1), -5.1, -4.0)


def _pseudo_voigt(x, fwhm_g, fwhm_l):
    """Unit-area pseudo-Voigt (Thompson, Cox & Hastings 1987) at offsets x (same units as the FWHMs)."""
    f = (fwhm_g**5 + 2.69269 * fwhm_g**4 * fwhm_l + 2.42843 * fwhm_g**3 * fwhm_l**2
         + 4.47163 * fwhm_g**2 * fwhm_l**3 + 0.07842 * fwhm_g * fwhm_l**4 + fwhm_l**5) ** 0.2
    r = fwhm_l / f
    eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
    sig = f / 2.3548200450309493
    gauss = np.exp(-0.5 * (x / sig) ** 2) / (sig * np.sqrt(2 * np.pi))
    hwhm = 0.5 * f
    lorentz = hwhm / (np.pi * (x**2 + hwhm**2))
    return eta * lorentz + (1.0 - eta) * gauss


class _Grid:
    """Pixel bookkeeping for adding line profiles into a padded (n, L + 2 PAD) optical-depth array."""

    PAD = 700
    MAX_HW = 320

    def __init__(self, wavelength: np.ndarray, cfg: SpectrumConfig):
        self.wave = np.asarray(wavelength, dtype=np.float64)
        self.L = len(self.wave)
        self.log0 = np.log10(self.wave[0])
        self.dlog = float(np.median(np.diff(np.log10(self.wave))))
        self.dv = C_KMS * np.log(10.0) * self.dlog
        self._forest = None

    @property
    def forest_pad(self) -> np.ndarray:
        """Solar forest optical depth on the padded pixel range [-PAD, L + PAD)."""
        if self._forest is None:
            k = np.arange(self.L + 2 * self.PAD) - self.PAD
            self._forest = solar_forest(10.0 ** (self.log0 + self.dlog * k))
        return self._forest

    def shifted_forest(self, doppler: np.ndarray, extra_sigma_kms: np.ndarray) -> np.ndarray:
        """(n, L) solar forest Doppler-shifted per star and broadened by an extra Gaussian (rotation)."""
        from scipy.ndimage import gaussian_filter1d

        shift = np.log10(doppler) / self.dlog
        pos = np.arange(self.L)[None, :] + self.PAD - shift[:, None]
        i0 = np.floor(pos).astype(np.int64)
        fr = pos - i0
        f = self.forest_pad
        out = (1.0 - fr) * f[i0] + fr * f[i0 + 1]
        # Rotation broadens the forest beyond the instrument's profile; stars are grouped by kernel width.
        s_px = np.round(np.asarray(extra_sigma_kms) / self.dv / 0.1) * 0.1
        for s in np.unique(s_px[s_px >= 0.2]):
            rows = np.flatnonzero(s_px == s)
            out[rows] = gaussian_filter1d(out[rows], float(s), axis=1, mode="nearest")
        return out

    def pixel(self, wave_obs: np.ndarray) -> np.ndarray:
        p = (np.log10(wave_obs) - self.log0) / self.dlog
        lim = self.PAD - self.MAX_HW - 2
        return np.clip(p, -lim, self.L - 1 + lim)

    def add(self, tau_pad: np.ndarray, p: np.ndarray, lo: int, hi: int, profile_fn) -> None:
        """tau_pad[:, base + k] += profile_fn(offset from centre in pixels) for k in [lo, hi]."""
        base = np.floor(p).astype(np.int64)
        k = np.arange(lo, hi + 1)
        cols = base[:, None] + k[None, :]
        dx = cols - p[:, None]
        rows = np.arange(len(p))[:, None]
        tau_pad[rows, cols + self.PAD] += profile_fn(dx)


def _component_tau(grid: _Grid, teff, logg, feh, rv_kms, vsini_kms, cfg: SpectrumConfig,
                   with_forest: bool = True) -> np.ndarray:
    """(n, L) stellar optical depth (lines, molecular bands, weak-line forest) of one component at its rv."""
    n = len(teff)
    tau = np.zeros((n, grid.L + 2 * grid.PAD), dtype=np.float64)
    doppler = 1.0 + np.asarray(rv_kms, dtype=np.float64) / C_KMS
    sig_g = np.sqrt(cfg.lsf_sigma_kms**2 + grid.dv**2 / 12.0 + (0.47 * np.asarray(vsini_kms)) ** 2)
    W = line_strengths(teff, logg, feh)
    for j, (name, _, fam, _, fwhm_l, sig_int) in enumerate(LINE_LIST):
        lam = LINE_VACUUM[j]
        p = grid.pixel(lam * doppler)
        w_v = W[:, j] * C_KMS / lam                                   # equivalent width in km/s
        fg = 2.3548200450309493 * np.sqrt(sig_g**2 + sig_int**2)     # (n,) Gaussian FWHM, km/s
        fl = np.full(n, float(fwhm_l))
        hw = int(min(grid.MAX_HW, np.ceil((3.0 * fg.max() + 4.0 * fwhm_l) / grid.dv) + 1))
        dv = grid.dv
        grid.add(tau, p, -hw, hw + 1,
                 lambda dx: w_v[:, None] * _pseudo_voigt(dx * dv, fg[:, None], fl[:, None]))
    f = family_factors(teff, logg, feh)
    for j, (name, _, fam, depth, length, direction) in enumerate(BAND_LIST):
        if fam == "telluric":
            continue
        _add_band(grid, tau, BAND_VACUUM[j] * doppler, depth * f[fam], length, direction, sig_g)
    tau = tau[:, grid.PAD:grid.PAD + grid.L]
    if with_forest:
        # The thousands of weak lines that the list leaves out: the solar residual forest, scaled like
        # neutral metals (stronger in cooler, metal-richer stars).
        rot_sigma = 0.47 * np.asarray(vsini_kms, dtype=np.float64)
        tau += forest_factor(teff, feh)[:, None] * grid.shifted_forest(doppler, rot_sigma)
    return tau


def _add_band(grid: _Grid, tau_pad, head_wave, depth, length_a, direction, sig_kms) -> None:
    """Band head at head_wave with optical depth depth * exp(-x / length) beyond it, Gaussian-smoothed.

    x is the distance from the head in the direction the band is degraded to; the closed form is the
    convolution of a one-sided exponential with the Gaussian (sigma sig_kms).
    """
    p = grid.pixel(head_wave)
    lam_px = np.median(head_wave) * np.log(10.0) * grid.dlog          # Angstrom per pixel near the head
    l_px = length_a / lam_px
    s_px = np.asarray(sig_kms) / grid.dv
    n_tail = int(min(grid.MAX_HW, np.ceil(5 * l_px)))
    n_head = int(np.ceil(4 * s_px.max())) + 1
    lo, hi = (-n_head, n_tail) if direction > 0 else (-n_tail, n_head)
    d = np.asarray(depth)[:, None]
    s = s_px[:, None]
    if direction == 0:
        hw = int(min(grid.MAX_HW, np.ceil(4 * l_px)))
        width = np.sqrt(l_px**2 + s**2)
        grid.add(tau_pad, p, -hw, hw, lambda dx: d * np.exp(-0.5 * (dx / width) ** 2))
        return

    def prof(dx):
        x = direction * dx
        return d * np.exp(np.minimum(-x / l_px + 0.5 * (s / l_px) ** 2, 50.0)) * ndtr(x / s - s / l_px)

    grid.add(tau_pad, p, lo, hi, prof)


def _emission(grid: _Grid, teff, rossby, rv_kms, sig_kms) -> np.ndarray:
    """(n, L) chromospheric emission relative to the local continuum: Ca II H&K cores and H-alpha."""
    n = len(teff)
    em = np.zeros((n, grid.L + 2 * grid.PAD))
    teff = np.asarray(teff, dtype=np.float64)
    doppler = 1.0 + np.asarray(rv_kms, dtype=np.float64) / C_KMS
    rhk = 10.0 ** activity_log_rhk(rossby)
    ro = np.where(np.isfinite(rossby), rossby, 3.0)
    # L_Halpha / L_bol: saturated ~10^-3.9 below Ro ~ 0.1 (Newton et al. 2017), falling steeply above.
    rha = 10.0 ** (-3.9 - 2.0 * np.log10(np.maximum(ro, 0.1) / 0.1))
    cont = continuum(np.array([CA_K_VAC, HALPHA_VAC]), teff)     # per Angstrom (same units as bb)
    # Emission flux sigma T^4 * R relative to pi B_lambda(continuum) gives an equivalent width in Angstrom.
    bol = SIGMA_SB * teff**4 / np.pi / (2 * 6.62607015e-27 * (2.99792458e10) ** 2 * 1e32)
    w_hk = rhk * bol / cont[:, 0]
    w_ha = rha * bol / cont[:, 1]
    sig = np.asarray(sig_kms)
    fg = 2.3548200450309493 * sig
    hw = int(np.ceil(4 * fg.max() / grid.dv)) + 1
    for lam, w in ((CA_K_VAC, 0.55 * w_hk), (CA_H_VAC, 0.45 * w_hk), (HALPHA_VAC, w_ha)):
        w_v = w * C_KMS / lam
        grid.add(em, grid.pixel(lam * doppler), -hw, hw + 1,
                 lambda dx: w_v[:, None] * np.exp(-0.5 * (dx * grid.dv / sig[:, None]) ** 2)
                 / (sig[:, None] * np.sqrt(2 * np.pi)))
    return em[:, grid.PAD:grid.PAD + grid.L]


def _telluric_tau(grid: _Grid, strength: np.ndarray, sig_kms: float) -> np.ndarray:
    n = len(strength)
    tau = np.zeros((n, grid.L + 2 * grid.PAD))
    sig = np.full(n, sig_kms)
    for j, (name, _, fam, depth, length, direction) in enumerate(BAND_LIST):
        if fam == "telluric":
            _add_band(grid, tau, np.full(n, BAND_VACUUM[j]), depth * strength, length, direction, sig)
    return tau[:, grid.PAD:grid.PAD + grid.L]


def ccm89_extinction(wavelength: np.ndarray, r_v: float = 3.1) -> np.ndarray:
    """A_lambda / A_V of Cardelli, Clayton & Mathis (1989) in the optical and near-IR (0.3-3.3 micron)."""
    x = 1e4 / np.asarray(wavelength, dtype=np.float64)            # inverse micron
    y = x - 1.82
    a_opt = 1 + 0.17699 * y - 0.50447 * y**2 - 0.02427 * y**3 + 0.72085 * y**4 + 0.01979 * y**5 \
        - 0.77530 * y**6 + 0.32999 * y**7
    b_opt = 1.41338 * y + 2.28305 * y**2 + 1.07233 * y**3 - 5.38434 * y**4 - 0.62251 * y**5 \
        + 5.30260 * y**6 - 2.09002 * y**7
    a_ir, b_ir = 0.574 * x**1.61, -0.527 * x**1.61
    opt = x >= 1.1
    return np.where(opt, a_opt + b_opt / r_v, a_ir + b_ir / r_v)


# Interstellar absorption in the observed (~heliocentric rest) frame: Na D (Poznanski et al. 2012:
# log E(B-V) = 1.17 EW(D1+D2) - 1.85) and the 5780 A diffuse interstellar band (~0.5 A per mag E(B-V)).
ISM_LINES = [("NaI_D2_ism", 5889.95, 0.55), ("NaI_D1_ism", 5895.92, 0.45), ("DIB_5780", 5780.48, 0.0)]


def _interstellar_tau(grid: _Grid, a_v: np.ndarray, sig_kms: float) -> np.ndarray:
    n = len(a_v)
    tau = np.zeros((n, grid.L + 2 * grid.PAD))
    ebv = np.maximum(np.asarray(a_v, dtype=np.float64), 0.0) / 3.1
    ew_nad = np.where(ebv > 1e-3, np.clip((np.log10(np.maximum(ebv, 1e-3)) + 1.85) / 1.17, 0.0, 2.5), 0.0)
    sig = sig_kms
    for name, air, share in ISM_LINES:
        lam = float(air_to_vacuum(air))
        ew = share * ew_nad if share > 0 else 0.5 * ebv
        w_v = ew * C_KMS / lam
        s_int = 100.0 if name.startswith("DIB") else 0.0            # the DIB is ~2 A wide
        s_tot = np.sqrt(sig**2 + s_int**2)
        hw = int(np.ceil(4 * s_tot / grid.dv)) + 1
        grid.add(tau, grid.pixel(np.full(n, lam)), -hw, hw + 1,
                 lambda dx: w_v[:, None] * np.exp(-0.5 * (dx * grid.dv / s_tot) ** 2) / (s_tot * np.sqrt(2 * np.pi)))
    return tau[:, grid.PAD:grid.PAD + grid.L]


def build_solar_forest(kurucz_fits: str | Path, out: str | Path = FOREST_FILE,
                       cfg: SpectrumConfig | None = None) -> Path:
    """Derive the weak-line forest template from the Kurucz solar model and write it to ``out`` (npz).

    ``kurucz_fits`` is the CALSPEC file ``sun_mod_001.fits`` (Kurucz special solar model, 5777 K / 4.4,
    R~5000, vacuum wavelengths, with its continuum; shipped e.g. inside the ``milespy`` wheel). The model's
    F/C is blurred to the LAMOST resolution and sampled on the log-lambda grid (3550-9400 A, a margin for
    Doppler shifts); the optical depth that the explicit line list (:data:`LINE_LIST`) does not already
    produce for the Sun, ``max(0, -ln(F/C) - tau_lines)``, is the forest. Also stored: the ratio of the
    solar continuum to a 5777 K blackbody. Rebuild after changing the line list.
    """
    from astropy.io import fits
    from scipy.ndimage import gaussian_filter1d

    cfg = cfg or SpectrumConfig()
    with fits.open(kurucz_fits) as h:
        d = h[1].data
        w_k = np.asarray(d["WAVELENGTH"], dtype=np.float64)
        f_k = np.asarray(d["FLUX"], dtype=np.float64)
        c_k = np.asarray(d["CONTINUUM"], dtype=np.float64)
    keep = (w_k > 3400) & (w_k < 9600) & (c_k > 0)
    w_k, f_k, c_k = w_k[keep], f_k[keep], c_k[keep]
    fine = np.arange(np.log10(3450.0), np.log10(9550.0), 1e-5)
    fc = np.interp(fine, np.log10(w_k), f_k / c_k)
    sigma_kms = np.sqrt(cfg.lsf_sigma_kms**2 + cfg.velocity_per_pixel**2 / 12.0)
    fc = gaussian_filter1d(fc, sigma_kms / (C_KMS * np.log(10.0) * 1e-5))
    log0 = np.log10(cfg.wave_min) - cfg.dlog10 * np.ceil((np.log10(cfg.wave_min) - np.log10(3550.0)) / cfg.dlog10)
    n = int(np.floor((np.log10(9400.0) - log0) / cfg.dlog10)) + 1
    wave = 10.0 ** (log0 + cfg.dlog10 * np.arange(n))
    fc_grid = np.clip(np.interp(np.log10(wave), fine, fc), 1e-3, None)
    grid = _Grid(wave, cfg)
    tau_lines = _component_tau(grid, np.array([5777.0]), np.array([4.44]), np.array([0.0]), np.array([0.0]),
                               np.array([2.0]), cfg, with_forest=False)[0]
    forest = np.clip(-np.log(fc_grid) - tau_lines, 0.0, 5.0)
    # Under the listed strong lines the residual is ~0 (their cores hide everything); those holes would show
    # as emission bumps in stars whose strong lines scale differently from the forest (Balmer lines in cool
    # stars), so they are filled with the forest's local mean from the neighbouring unaffected pixels.
    from scipy.ndimage import uniform_filter1d
    # (the G band is left out: the CH structure inside it is real and belongs in the forest)
    strong = (tau_lines > 0.05) & (np.abs(wave - LINE_VACUUM[LINE_INDEX["CH_Gband"]]) > 20.0)
    num = uniform_filter1d(np.where(strong, 0.0, forest), 151)
    den = uniform_filter1d((~strong).astype(np.float64), 151)
    forest = np.where(strong, np.where(den > 0.05, num / np.maximum(den, 1e-9), 0.0), forest)
    bb = wave ** -5 / np.expm1(HC_OVER_K_AK / (wave * 5777.0))
    corr = np.log(np.interp(wave, w_k, c_k) / bb)
    corr -= np.interp(5500.0, wave, corr)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez_compressed(tmp, tau_forest=forest.astype(np.float32), ln_cont_corr=corr.astype(np.float32),
                        log10_wave0=np.float64(log0), dlog10=np.float64(cfg.dlog10),
                        resolution=np.float64(cfg.resolution),
                        source=np.array("Kurucz special solar model via CALSPEC sun_mod_001.fits (R. Bohlin)"))
    tmp.replace(out)
    _forest_template.cache_clear()
    return out


# Night-sky emission lines (air A) and their strength: pixel-integrated counts in units of one pixel of sky
# continuum. [O I] 5577/6300/6364, Na D, and the brightest OH Meinel lines in the red.
SKY_LINES = [
    (5577.34, 60.0), (5889.95, 8.0), (5895.92, 6.0), (6300.30, 25.0), (6363.78, 8.0), (6863.96, 6.0),
    (7316.28, 8.0), (7340.89, 8.0), (7750.64, 10.0), (7794.11, 10.0), (7821.50, 8.0), (7913.71, 10.0),
    (7993.33, 12.0), (8344.60, 15.0), (8399.17, 15.0), (8430.17, 12.0), (8827.10, 20.0), (8885.85, 18.0),
    (8919.64, 15.0), (8958.09, 20.0),
]


def sky_spectrum(wavelength: np.ndarray, cfg: SpectrumConfig | None = None) -> np.ndarray:
    """(L,) sky counts per pixel (arbitrary scale): flat continuum plus emission lines, times throughput."""
    cfg = cfg or SpectrumConfig()
    w = np.asarray(wavelength, dtype=np.float64)
    if len(w) < 2:
        return np.ones_like(w)
    dv = C_KMS * np.log(10.0) * float(np.median(np.diff(np.log10(w))))
    sig_px = np.sqrt(cfg.lsf_sigma_kms**2 + dv**2 / 12.0) / dv
    pix = (np.log10(w) - np.log10(w[0])) / np.median(np.diff(np.log10(w)))
    sky = np.ones_like(w)
    for air, strength in SKY_LINES:
        p = (np.log10(float(air_to_vacuum(air))) - np.log10(w[0])) / np.median(np.diff(np.log10(w)))
        sky += strength * np.exp(-0.5 * ((pix - p) / sig_px) ** 2) / (sig_px * np.sqrt(2 * np.pi))
    return sky * throughput(w)


def throughput(wavelength: np.ndarray) -> np.ndarray:
    """Relative LAMOST LRS system throughput: weak blue end, dichroic dip near 5800 A, red fall-off."""
    w = np.asarray(wavelength, dtype=np.float64)
    t = np.exp(-0.5 * ((w - 6000.0) / 2300.0) ** 2) * (1.0 - 0.8 * np.exp(-(w - 3700.0) / 300.0))
    return t * (1.0 - 0.5 * np.exp(-0.5 * ((w - 5800.0) / 50.0) ** 2))


def _col(stars: pd.DataFrame, name: str, default: float) -> np.ndarray:
    if name not in stars.columns:
        return np.full(len(stars), default, dtype=np.float64)
    v = pd.to_numeric(stars[name], errors="coerce").to_numpy(np.float64)
    return np.where(np.isfinite(v), v, default)


def snr_from_gaia_g(gaia_g, cfg: SpectrumConfig | None = None) -> np.ndarray:
    """Median per-pixel S/N in 4000-5500 A for Gaia G magnitude(s), before the observing-condition scatter."""
    cfg = cfg or SpectrumConfig()
    snr = cfg.snr_g12 * 10.0 ** (-0.2 * (np.asarray(gaia_g, dtype=np.float64) - 12.0))
    return np.clip(snr, cfg.snr_min, cfg.snr_max)


def simulate_spectra(stars: pd.DataFrame, wavelength: np.ndarray, rng: np.random.Generator,
                     cfg: SpectrumConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LAMOST-like spectra of ``stars`` on ``wavelength``: (flux, ivar), each (n, L) float32.

    Flux is relative (median 1, observed frame, not continuum-normalised); ivar is its inverse variance,
    0 on masked pixels. Needs ``teff``, ``logg``, ``feh``, ``gaia_g``; uses ``rv1_kms`` (else ``rv_sys_kms``,
    else 0), ``vsini_kms``, ``rossby``, ``a_v`` and, for binaries, ``comp_teff``, ``comp_logg``,
    ``comp_radius``, ``flux_ratio_g``, ``rv2_kms``, ``porb_days``, ``inclination_deg``, ``binary_class``.
    Deterministic given the state of ``rng`` (and ``cfg.chunk_stars``).
    """
    cfg = cfg or SpectrumConfig()
    missing = [c for c in ("teff", "logg", "feh", "gaia_g") if c not in stars.columns]
    if missing:
        raise KeyError(f"simulate_spectra: the stars table lacks columns {missing}")
    wave = np.asarray(wavelength, dtype=np.float64)
    if wave.ndim != 1 or len(wave) < 16 or not np.all(np.diff(wave) > 0):
        raise ValueError("simulate_spectra: wavelength must be a 1-d increasing grid of at least 16 pixels")
    grid = _Grid(wave, cfg)
    n, L = len(stars), len(wave)
    flux_out = np.empty((n, L), dtype=np.float32)
    ivar_out = np.empty((n, L), dtype=np.float32)

    thr = throughput(wave)
    alam_av = ccm89_extinction(wave)
    sky_unit = sky_spectrum(wave, cfg)
    sky_unit = sky_unit / np.median(sky_unit[(wave >= 4000.0) & (wave <= 5500.0)]) if len(sky_unit) else sky_unit
    arm_step = _sigmoid((wave - 5900.0) / 10.0)
    g_band = (wave >= 4000.0) & (wave <= 5500.0)
    gaia_band = (wave >= 4000.0) & (wave <= 9000.0)
    x = 2.0 * (np.log(wave) - np.log(wave[0])) / (np.log(wave[-1]) - np.log(wave[0])) - 1.0
    legendre = np.polynomial.legendre.legvander(x, max(cfg.calibration_order, 0))[:, 1:]   # (L, order)

    chunk = max(1, int(cfg.chunk_stars))
    for c0 in range(0, n, chunk):
        s = stars.iloc[c0:c0 + chunk]
        m = len(s)
        teff = np.clip(_col(s, "teff", TEFF_SUN), 2500.0, 12000.0)
        logg = _col(s, "logg", LOGG_SUN)
        feh = _col(s, "feh", 0.0)
        rv_sys = _col(s, "rv_sys_kms", 0.0)
        rv1 = _col(s, "rv1_kms", np.nan)
        rv1 = np.where(np.isfinite(rv1), rv1, rv_sys)
        vsini = np.maximum(_col(s, "vsini_kms", 2.0), 0.0)
        rossby = _col(s, "rossby", np.nan)
        sig_inst = np.sqrt(cfg.lsf_sigma_kms**2 + grid.dv**2 / 12.0)

        tau1 = _component_tau(grid, teff, logg, feh, rv1, vsini, cfg)
        spec1 = np.exp(-tau1)
        if cfg.activity_emission:
            sig1 = np.sqrt(sig_inst**2 + (0.47 * vsini) ** 2)
            spec1 += _emission(grid, teff, rossby, rv1, sig1)
        cont1 = continuum(wave, teff)
        model = cont1 * spec1

        # Companion light: same model at its own Teff/logg and velocity, scaled to its G-band flux share.
        fr = np.maximum(_col(s, "flux_ratio_g", 0.0), 0.0)
        t2 = _col(s, "comp_teff", np.nan)
        has2 = (fr > 0) & np.isfinite(t2)
        if has2.any():
            b = np.flatnonzero(has2)
            s2 = s.iloc[b]
            t2b = np.clip(t2[b], 2500.0, 12000.0)
            g2 = _col(s2, "comp_logg", LOGG_SUN)
            rv2 = _col(s2, "rv2_kms", np.nan)
            rv2 = np.where(np.isfinite(rv2), rv2, rv1[b])
            porb = _col(s2, "porb_days", np.nan)
            r2 = _col(s2, "comp_radius", 0.8)
            sini = np.sin(np.deg2rad(_col(s2, "inclination_deg", 60.0)))
            close = s2["binary_class"].astype(str).isin(["close_sync", "eclipsing"]).to_numpy() \
                if "binary_class" in s2.columns else np.zeros(len(b), bool)
            # Tidally locked companions rotate with the orbit (v = 2 pi R / P); wide ones slowly.
            vsini2 = np.where(close & np.isfinite(porb) & (porb > 0), 50.58 * r2 / np.where(porb > 0, porb, 1) * sini,
                              2.0)
            tau2 = _component_tau(grid, t2b, g2, feh[b], rv2, vsini2, cfg)
            spec2 = np.exp(-tau2)
            if cfg.activity_emission:
                ro2 = np.where(close, rossby[b], np.nan)
                spec2 += _emission(grid, t2b, ro2, rv2, np.sqrt(sig_inst**2 + (0.47 * vsini2) ** 2))
            cont2 = continuum(wave, t2b)
            wgt = wave[gaia_band]
            g1 = (model[b][:, gaia_band] * wgt).sum(1)
            g2 = (cont2[:, gaia_band] * spec2[:, gaia_band] * wgt).sum(1)
            share = g1 / np.maximum(g2, 1e-300)
            model[b] += cont2 * spec2 * (fr[b] * share)[:, None]

        lo_t, hi_t = cfg.telluric_strength
        model *= np.exp(-_telluric_tau(grid, rng.uniform(lo_t, hi_t, m), sig_inst))
        if cfg.interstellar:
            # Interstellar reddening (CCM89, R_V = 3.1) and Na D / DIB absorption from the star's A_V.
            a_v = np.maximum(_col(s, "a_v", 0.0), 0.0)
            model *= 10.0 ** (-0.4 * a_v[:, None] * alam_av[None, :])
            model *= np.exp(-_interstellar_tau(grid, a_v, sig_inst))

        # Photon noise: counts ~ F_lambda * lambda * throughput; S/N set in the g band from Gaia G. With
        # photon-limited S/N = sqrt(counts), the star gives snr_g^2 counts per g-band pixel; the sky adds the
        # counts of a G = sky_g_mag star spread like the sky spectrum (continuum plus emission lines).
        counts = model * wave[None, :] * thr[None, :]
        snr_g = snr_from_gaia_g(_col(s, "gaia_g", 14.0), cfg) * 10.0 ** rng.normal(0.0, cfg.snr_scatter_dex, m)
        snr_g = np.clip(snr_g, cfg.snr_min, cfg.snr_max)
        ref = np.median(counts[:, g_band], axis=1)
        star_counts = np.maximum(counts / ref[:, None], 1e-6) * snr_g[:, None] ** 2
        sky_counts = (cfg.snr_g12 * 10.0 ** (-0.2 * (cfg.sky_g_mag - 12.0))) ** 2 * sky_unit[None, :]
        sigma = model * np.sqrt(star_counts + sky_counts) / star_counts
        sigma = np.maximum(sigma, 1e-4 * np.median(model, axis=1, keepdims=True))
        # Imperfect sky subtraction: residuals at the sky lines, not described by ivar (as in LAMOST).
        sky_resid = rng.standard_normal((m, L)) * cfg.sky_residual * model * sky_counts / star_counts

        if cfg.calibration_order > 0 and cfg.calibration_sigma > 0:
            coef = rng.normal(0.0, cfg.calibration_sigma, (m, legendre.shape[1]))
            wiggle = np.exp(coef @ legendre.T)
        else:
            wiggle = np.ones((m, L))
        # The blue and red arms are joined near 5900 A; their relative calibration differs slightly.
        wiggle *= 1.0 + rng.normal(0.0, cfg.arm_mismatch, m)[:, None] * arm_step[None, :]
        obs = model * wiggle
        sigma = sigma * wiggle
        if cfg.add_noise:
            obs = obs + (rng.standard_normal((m, L)) * sigma + sky_resid * wiggle)
        ivar = 1.0 / sigma**2
        if cfg.bad_pixel_fraction > 0:
            ivar[rng.uniform(size=(m, L)) < cfg.bad_pixel_fraction] = 0.0

        med = np.median(obs, axis=1)
        med = np.where(med > 0, med, 1.0)
        flux_out[c0:c0 + m] = obs / med[:, None]
        ivar_out[c0:c0 + m] = ivar * med[:, None] ** 2
        log.debug("spectra: %d/%d stars", c0 + m, n)
    return flux_out, ivar_out
