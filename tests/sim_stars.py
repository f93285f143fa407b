"""A stars table with every column the light-curve and spectrum simulators read, for their tests."""
import numpy as np
import pandas as pd

SUN_LIKE = dict(
    teff=5772.0, logg=4.44, feh=0.0, mass=1.0, radius=1.0, log_lum=0.0, age_gyr=4.5, prot_days=25.0,
    rossby=1.5, spot_amplitude_ppm=200.0, inclination_deg=80.0, vsini_kms=2.0, kepmag=12.0, gaia_g=12.0,
    binary_class="single", is_binary=False, porb_days=np.nan, mass_ratio=np.nan, comp_mass=np.nan,
    comp_teff=np.nan, comp_logg=np.nan, comp_radius=np.nan, flux_ratio_kp=0.0, flux_ratio_g=0.0,
    a_rsun=np.nan, orbit_t0_days=np.nan, k1_kms=np.nan, k2_kms=np.nan, rv_sys_kms=0.0, rv1_kms=0.0,
    rv2_kms=np.nan, rv_kms_obs=0.0,
)


def make_stars(n=1, **columns) -> pd.DataFrame:
    """n Sun-like single stars; keyword arguments override a column (scalar, or one value per star)."""
    base = {**SUN_LIKE, **columns}
    return pd.DataFrame({k: (list(v) if np.ndim(v) else [v] * n) for k, v in base.items()})
