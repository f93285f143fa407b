"""GPU check of precompute's one switch, `--device cuda` (issue 14): the model on the GPU, FAISS IVF training on
it (with a FAISS GPU build) and UMAP with RAPIDS cuML (when installed), each against `--device cpu` on the same
machine and the same data.

    python benchmarks/gpu_precompute_check.py --out benchmarks/results/gpu_precompute_check.json   # a GPU machine
    python benchmarks/gpu_precompute_check.py --device cpu --synthetic 3000 --stars 300 --out /tmp/x.json  # dry run

On this workplace's lent GPU machines (Python 3.12 with torch, numba, pandas, pyarrow and scikit-learn, no FAISS
or UMAP, no package index): `make gpu-wheels` here, then a `run` that carries `.whl` with

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_precompute_check.py --skip pipeline --out $OUT/gpu_precompute.json

`--skip pipeline` there: the synthetic set is drawn from the simulator, whose MIST grids (a 75 MB wheel) are
more than a call carries; FAISS's GPU build needs the CUDA 12 libraries and cuML the RAPIDS stack, which do not
fit either, so on those machines the indexes and maps stay on the CPU and the JSON says so (``gpu``,
``backend``). On a GPU server of your own, `pip install '.[gpu]'` (and cuML) and run it whole.

Parts, each saved to the JSON as soon as it ends (a run stopped by a time limit keeps what it measured):
- ``environment``: torch and its GPU, FAISS and the GPUs it sees, the UMAP backend `auto` picks;
- ``pipeline``: `desa precompute --synthetic N` with ``--device`` and with ``--device cpu`` (no model:
  FAISS indexes, UMAP fits and kNN placement, star table), stage by stage, with the backend each stage used
  and the indexes' recall@10;
- ``embedding``: new stars of a survey store through the `small` model (untrained weights: the same
  arithmetic, so the same cost as a trained one), preprocessing included, on ``--device`` and on the CPU;
- ``survey_precompute``: `desa train` of the tiny test config on one store, then `desa precompute --survey
  --run --device D` of another (new stars) end to end through the CLI, as a user runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def environment() -> dict:
    import faiss
    import torch

    from precompute.maps import umap_backend
    gpu = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda_available": gpu,
            "gpu": torch.cuda.get_device_name() if gpu else None,
            "faiss": getattr(faiss, "__version__", "?"),
            "faiss_gpus": int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0,
            "umap_auto_backend": umap_backend("auto"), "cpus": os.cpu_count()}


def _run(cmd: list[str], env: dict) -> dict:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    return {"returncode": p.returncode, "wall_s": round(time.perf_counter() - t, 2),
            "log_tail": (p.stdout + p.stderr)[-2000:]}


def artifact_summary(art: Path) -> dict:
    """What the manifest says each stage took and used: wall seconds, index kinds (GPU-trained or not, recall)
    and UMAP backends."""
    m = json.loads((art / "manifest.json").read_text())
    return {"n_stars": m["n_stars"],
            "stage_wall_s": {k: v.get("wall_s") for k, v in m["stages"].items()},
            "indexes": {k: {f: v.get(f) for f in ("type", "gpu", "train_s", "build_s", "recall_at_10")}
                        for k, v in m["indexes"].items()},
            "maps": {k: {f: v.get(f) for f in ("backend", "n_fit", "placement", "fit_s", "total_s")}
                     for k, v in m["maps"].items() if isinstance(v, dict) and "backend" in v}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--synthetic", type=int, default=1_000_000, help="stars of the synthetic pipeline run")
    ap.add_argument("--stars", type=int, default=4000, help="stars of the survey embedded (new stars)")
    ap.add_argument("--train-stars", type=int, default=400, help="stars of the survey the tiny model trains on")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the CPU side")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out: pipeline,embedding,survey")
    ap.add_argument("--work", default="/tmp/desa-gpu-precompute-check")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_precompute_check.json"))
    a = ap.parse_args(argv)
    skip = {s for s in a.skip.split(",") if s}
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    result = {"benchmark": "gpu_precompute_check", "device": a.device,
              "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "environment": environment()}

    def save():
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2, default=str) + "\n")

    save()
    devices = [a.device] + (["cpu"] if a.device != "cpu" else [])
    if "pipeline" not in skip:
        from precompute_bench import bench_pipeline
        result["pipeline"] = {}
        for d in devices:
            shutil.rmtree(work / f"synthetic_{d}", ignore_errors=True)   # a fresh set: nothing resumed
            try:
                res = bench_pipeline(a.synthetic, "small", str(work / f"synthetic_{d}"), seed=0, device=d)
                # bench_pipeline reports the stage times, the indexes and the first map; the backends of all three
                maps = artifact_summary(work / f"synthetic_{d}")["maps"]
                res["map_backends"] = {k: v["backend"] for k, v in maps.items()}
            except Exception as e:  # noqa: BLE001 -- recorded: the point of the check is what fails on a GPU
                res = {"error": f"{type(e).__name__}: {e}"}
            result["pipeline"][d] = res
            save()

    # Stores built by tests/tiny_survey.py (sinusoid light curves, line-bearing spectra; no simulator, whose grids
    # are too large to take to a lent GPU machine), with the default survey's sizes: 180-day light curves at
    # 1-hour cadence and a 3,865-pixel spectrum. The model trains on one and precompute embeds the other (new
    # stars: both encoders run).
    from tiny_survey import make_tiny_survey
    survey, train_survey = work / "survey", work / "train_survey"
    t = time.perf_counter()
    for path, n, seed in ((survey, a.stars, 1), (train_survey, a.train_stars, 0)):
        if not skip >= {"embedding", "survey"}:
            shutil.rmtree(path, ignore_errors=True)   # built afresh: --stars may differ from an earlier run
            make_tiny_survey(path, n_stars=n, days=180.0, seed=seed)
    result["surveys_built_s"] = round(time.perf_counter() - t, 1)
    if "embedding" not in skip:
        from precompute_bench import bench_embedding
        result["embedding"] = {}
        for d in devices:
            try:
                result["embedding"][d] = bench_embedding(str(survey), None, a.stars, a.threads, None, "small",
                                                         legacy=False, device=d)
            except Exception as e:  # noqa: BLE001
                result["embedding"][d] = {"error": f"{type(e).__name__}: {e}"}
            save()

    if "survey" not in skip:
        from trained_fixtures import TINY_CONFIG
        run, art = work / "run", work / f"survey_art_{a.device}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(art, ignore_errors=True)
        part = {"train": _run([sys.executable, "-m", "desa_core.cli", "train", "--survey", str(train_survey),
                               "--config", str(TINY_CONFIG), "--out", str(run), "--device", a.device], env)}
        if part["train"]["returncode"] == 0:
            part["precompute"] = _run([sys.executable, "-m", "desa_core.cli", "precompute", "--survey", str(survey),
                                       "--run", str(run), "--out", str(art), "--device", a.device], env)
            if part["precompute"]["returncode"] == 0:
                part["artifacts"] = artifact_summary(art)
        result["survey_precompute"] = part
        save()
    print(json.dumps(result, indent=2, default=str)[-6000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
