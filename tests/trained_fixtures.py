"""A tiny version of what `make demo` builds: a simulated survey store, a model trained on it and the artifact
set precompute writes from both, all through the real code paths (seconds, not minutes).

The survey is the real simulator at 400 stars with 20-day light curves; its binaries are made commoner and
closer, and its stars younger, than the default survey's, so that the two populations the dashboard compares
(synchronized binaries, young fast rotators) both have members. The model is tests/tiny_config.yaml trained
through every stage of `desa train` (heads included); precompute runs UMAP, FAISS and the star table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TINY_CONFIG = Path(__file__).with_name("tiny_config.yaml")


@dataclass
class TrainedDemo:
    survey: Path
    run: Path
    art: Path


def simulation_config(n_stars: int = 400):
    from desa_core.data.simulate import SimulationConfig
    from desa_core.data.simulate.light_curves import LightCurveConfig
    return SimulationConfig(n_stars=n_stars, chunk_size=200, workers=1,
                            light_curve=LightCurveConfig(duration_days=20.0),
                            binary_fraction=0.6, log_period_mean=3.0, age_range_gyr=(0.1, 4.0))


def make_trained_demo(root: Path, n_stars: int = 400, seed: int = 5) -> TrainedDemo:
    from desa_core.data.simulate import simulate_survey
    from desa_core.train.run import train
    from precompute.pipeline import run_precompute
    root = Path(root)
    survey = simulate_survey(seed=seed, out=root / "survey", config=simulation_config(n_stars), progress=False)
    run = train(survey, config=str(TINY_CONFIG), out=root / "run", device="cpu")
    art = run_precompute(survey=survey, run=run, out=root / "art", progress=False)
    return TrainedDemo(Path(survey), Path(run), Path(art))
