"""The prepared GPU check of precompute (benchmarks/gpu_precompute_check.py) runs only when a GPU machine is lent,
which is rare: its dry run on the CPU keeps it working in between."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_precompute_check_runs_through_on_the_cpu_and_reports_what_each_stage_used(tmp_path):
    out = tmp_path / "check.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_precompute_check.py"), "--device", "cpu",
                    "--skip", "pipeline", "--stars", "60", "--train-stars", "60", "--threads", "1",
                    "--work", str(tmp_path / "work"), "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and doc["environment"]["cuda_available"] in (True, False)
    assert "pipeline" not in doc                              # skipped as asked
    emb = doc["embedding"]["cpu"]
    assert "error" not in emb and emb["stars"] == 60 and emb["fresh_stars_per_s"] > 0 and emb["device"] == "cpu"
    part = doc["survey_precompute"]
    assert part["train"]["returncode"] == 0, part["train"]["log_tail"]
    assert part["precompute"]["returncode"] == 0, part["precompute"]["log_tail"]
    art = part["artifacts"]
    assert art["n_stars"] == 60                                # the new survey's stars, not the training one's
    assert art["stage_wall_s"]["embed"] is not None
    assert {m["backend"] for m in art["maps"].values()} == {"umap-learn"}
    assert {i["gpu"] for i in art["indexes"].values()} == {False}
