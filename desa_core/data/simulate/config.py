"""Configuration of the simulated Kepler x LAMOST survey (one dataclass; YAML files override its fields)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desa_core.data.simulate.light_curves import LightCurveConfig
from desa_core.data.simulate.spectra import SpectrumConfig


@dataclass
class SimulationConfig:
    """Every knob of ``desa simulate``. Defaults give the embedded default survey (seed 42)."""

    n_stars: int = 10000
    # Modalities: the rest of the stars have both a light curve and a spectrum.
    frac_light_curve_only: float = 0.10
    frac_spectrum_only: float = 0.10

    # Selection: Kepler targets (light curves) and LAMOST (spectra).
    kepmag_limit: float = 16.0
    kepmag_bright: float = 8.0          # brighter Kepler targets saturate
    gaia_g_limit: float = 17.5
    gaia_g_bright: float = 9.0          # LAMOST avoids very bright stars
    # Kepler's target selection favoured dwarfs: keep only this fraction of red giants (logg < 3.5), and
    # (light-curve stars) small stars, where an Earth-size transit is detectable: P(keep) ~ R^-1 in [0.35, 1].
    giant_keep_fraction: float = 0.5
    kepler_small_star_priority: bool = True
    # Kepler's target list: complete to Kp ~13.75, then P(target) = 10^(-slope (Kp - 13.75)) (light-curve stars).
    kepler_complete_kepmag: float = 13.75
    kepler_faint_slope: float = 0.32

    # Population (Kepler field, thin disk)
    mass_range: tuple[float, float] = (0.4, 1.6)        # Kroupa IMF, Msun (initial mass)
    age_range_gyr: tuple[float, float] = (0.1, 12.0)
    sfh_timescale_gyr: float = 8.0       # p(age) ~ exp(age/tau): the disk's SFR declined smoothly with time
    feh_mean: float = -0.05
    feh_sigma: float = 0.2
    field_center_radec: tuple[float, float] = (290.67, 44.5)
    field_radius_deg: float = 6.0
    max_distance_pc: float = 12000.0
    disk_scale_length_pc: float = 2600.0
    scale_height_young_pc: float = 50.0   # vertical scale height grows with age (disk heating):
    scale_height_old_pc: float = 600.0    # h(t) = young + (old - young) * (t / 12 Gyr)^0.6
    av_per_kpc: float = 0.8
    dust_scale_height_pc: float = 150.0

    # Binaries (Raghavan et al. 2010)
    binary_fraction: float = 0.45         # FGK primaries; falls to ~0.3 for M dwarfs (Winters 2019)
    log_period_mean: float = 5.03         # log10 P[d]
    log_period_sigma: float = 2.28
    twin_fraction: float = 0.10           # of wide binaries (P > 1000 d): q in [0.95, 1]
    twin_fraction_close: float = 0.30     # of close binaries (P < 10 d; Moe & Di Stefano 2017)
    sync_period_days: float = 10.0        # tidally synchronised (and circular) below this orbital period
    gaia_resolve_arcsec: float = 1.0      # wider companions are resolved by Gaia: no blended G/BP/RP
    kepler_resolve_arcsec: float = 4.0    # wider companions fall outside the Kepler aperture

    # Rotation
    gyro_scatter_dex: float = 0.015    # BPH23 benchmark members: 0.016-0.029 dex (MAD) about the model
    rossby_critical: float = 2.0          # van Saders et al. 2016 weakened braking
    kraft_break_teff: float = 6350.0   # centre of a gradual (150-K logistic) Kraft break
    young_convergence_gyr: float = 0.05   # unconverged fast rotators: P(fast) = 1/(1 + (age / (t M^-3))^3)
    quiet_fraction_max: float = 0.9       # of stars with Ro >= 2.2 without detectable spots (0 at Ro 1)

    # Spectroscopy
    rv_error_kms: float = 5.0
    lamost_epoch_range_days: tuple[float, float] = (1200.0, 4100.0)  # Kepler BJD - 2454833 (2012-2020)

    # Execution
    chunk_size: int = 500                 # stars per light-curve/spectrum chunk (part of the random streams)
    workers: int = 2                      # processes; the output does not depend on this

    light_curve: LightCurveConfig = field(default_factory=LightCurveConfig)
    spectrum: SpectrumConfig = field(default_factory=SpectrumConfig)

    def validate(self) -> "SimulationConfig":
        if self.n_stars < 1:
            raise ValueError(f"SimulationConfig: n_stars must be >= 1, got {self.n_stars}")
        f = self.frac_light_curve_only + self.frac_spectrum_only
        if min(self.frac_light_curve_only, self.frac_spectrum_only) < 0 or f > 1:
            raise ValueError("SimulationConfig: frac_light_curve_only and frac_spectrum_only must be >= 0 "
                             f"and sum to <= 1 (got {self.frac_light_curve_only}, {self.frac_spectrum_only})")
        if not 0 < self.mass_range[0] < self.mass_range[1]:
            raise ValueError(f"SimulationConfig: bad mass_range {self.mass_range}")
        if not 0.05 <= self.age_range_gyr[0] < self.age_range_gyr[1] <= 14:
            raise ValueError(f"SimulationConfig: age_range_gyr must lie in [0.05, 14] Gyr, got {self.age_range_gyr}")
        if not 0 <= self.binary_fraction <= 1:
            raise ValueError(f"SimulationConfig: binary_fraction must be in [0, 1], got {self.binary_fraction}")
        if self.chunk_size < 1 or self.workers < 1:
            raise ValueError("SimulationConfig: chunk_size and workers must be >= 1")
        return self


def _build(cls, values: dict, where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for k, v in values.items():
        default = getattr(defaults, k)
        if dataclasses.is_dataclass(default):
            if not isinstance(v, dict):
                raise ValueError(f"{where}: {k} must be a mapping of {type(default).__name__} fields")
            v = _build(type(default), v, f"{where} [{k}]")
        elif isinstance(default, tuple):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def load_config(config: "SimulationConfig | str | Path | dict | None") -> SimulationConfig:
    """A SimulationConfig from None (defaults), an instance, a dict or a YAML file overriding fields."""
    if config is None:
        return SimulationConfig().validate()
    if isinstance(config, SimulationConfig):
        return config.validate()
    if isinstance(config, dict):
        return _build(SimulationConfig, config, "simulation config").validate()
    import yaml

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: simulation config file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of SimulationConfig fields, got {type(values).__name__}")
    return _build(SimulationConfig, values, str(path)).validate()
