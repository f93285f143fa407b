"""The simulated Kepler x LAMOST survey (the project's embedded default data set).

    from desa_core.data.simulate import simulate_survey, SimulationConfig
    simulate_survey(n_stars=2000, seed=42, out="data/survey")

See docs/simulate.md and docs (shared) simulated-survey.md for the physics; the modules are population,
stellar (MIST grid), photometry, binaries, rotation, light_curves, spectra and pipeline (orchestration).
"""
from desa_core.data.simulate.config import SimulationConfig, load_config
from desa_core.data.simulate.pipeline import simulate_catalog, simulate_survey

__all__ = ["SimulationConfig", "load_config", "simulate_catalog", "simulate_survey"]
