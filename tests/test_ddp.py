"""DDP: `desa train` under torchrun with two CPU processes (gloo) keeps both replicas identical."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_survey import make_tiny_survey

TINY = str(Path(__file__).with_name("tiny_config.yaml"))


@pytest.mark.slow  # two torch processes start up: ~10-30 s on a shared 2-core machine
def test_two_cpu_ranks_end_with_identical_weights(tmp_path):
    survey = make_tiny_survey(tmp_path / "survey", n_stars=40)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "desa_core.cli", "train", "--survey", str(survey), "--config", TINY, "--out", str(out),
           "--device", "cpu", "--stages", "light_curve_encoder,spectra_encoder,features,dualformer"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "run_manifest.json").read_text())
    assert m["world_size"] == 2
    for stage in ("light_curve_encoder", "spectra_encoder", "dualformer"):
        fps = m["stages"][stage]["rank_fingerprints"]
        assert len(fps) == 2 and fps[0] == fps[1], stage
    assert (out / "features.npz").is_file()
