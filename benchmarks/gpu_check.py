"""GPU check of the training paths the CPU test suite cannot reach: the `paper` config's sizes with bfloat16
autocast on CUDA, and `desa train` under torchrun with the nccl backend.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json            # on a machine with a GPU
    python benchmarks/gpu_check.py --config tests/tiny_config.yaml --device cpu --out /tmp/check.json   # dry run

On a tiny synthetic store (tests/tiny_survey.py) it runs every `desa train` stage with the chosen config, capped
at ``--steps`` optimiser steps per encoder epoch and one epoch per stage, and records each stage's wall time;
then it times bfloat16 training steps of the spectra encoder alone (the paper's 513M-parameter part) and its
peak GPU memory.
Then it runs the same training again under ``torchrun --nproc_per_node=N`` (nccl on CUDA, gloo on CPU) and
checks that it completes and that its DualFormer matches the single-process one's shapes. The tiny store's
light curves are far shorter than the paper's 720-day crops, so inputs are zero-padded: the costs are those of
the paper's tensor shapes, the losses mean nothing. Writes one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def capped_config(name: str, steps: int, out: Path) -> Path:
    """The named config or YAML file with one epoch per stage and at most ``steps`` steps per encoder epoch."""
    from desa_core.models.config import get_config
    cfg = get_config(name).to_dict()
    cfg["name"] = f"{cfg['name']}_gpu_check"
    cfg["train"].update(lc_epochs=1, spec_epochs=1, align_epochs=1, lc_steps_per_epoch=steps,
                        spec_steps_per_epoch=steps)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def stage_times(run: Path) -> dict:
    """Wall seconds per stage from the run manifest. On the tiny store a stage is a step or two plus model
    building and checkpoint writing (2 GB for the paper's spectra encoder), so these are not throughputs:
    the isolated spectra-encoder step below is."""
    manifest = json.loads((run / "run_manifest.json").read_text())
    return {stage: rec.get("wall_s") for stage, rec in manifest.get("stages", {}).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="paper")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--stars", type=int, default=96)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--work", default="/tmp/desa-gpu-check")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    a = ap.parse_args()
    import torch

    from tiny_survey import make_tiny_survey
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {"config": a.config, "device": a.device, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    survey = work / "survey"
    if not (survey / "manifest.json").exists():
        make_tiny_survey(survey, n_stars=a.stars)
    cfg_path = capped_config(a.config, a.steps, work)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}

    def save():   # after every phase, so a run stopped by a time limit still leaves what it measured
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2, default=str))

    run = work / "run_single"
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "desa_core.cli", "train", "--survey", str(survey), "--config",
                        str(cfg_path), "--out", str(run), "--device", a.device], env=env, capture_output=True,
                       text=True)
    result["single"] = {"returncode": p.returncode, "wall_s": time.perf_counter() - t,
                        "log_tail": (p.stdout + p.stderr)[-3000:]}
    if p.returncode == 0:
        result["single"]["stages"] = stage_times(run)
    save()
    if torch.cuda.is_available():
        # Peak memory of the biggest stage alone, in this process: one spectra-encoder training step.
        from desa_core.models.config import config_from_dict
        from desa_core.models.spectra_encoder import SpectraPretrainer
        cfg = config_from_dict(yaml.safe_load(cfg_path.read_text()))
        net = SpectraPretrainer(cfg.spectra, cfg.train.quantiles).to("cuda")
        n_params = sum(x.numel() for x in net.parameters())
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        x = torch.randn(cfg.train.spec_batch_size, 1, cfg.preprocess.spec_length, device="cuda")
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(6):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                z = net.encoder(x)
            loss = z.float().pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        result["spectra_encoder_step"] = {"parameters": n_params, "batch": cfg.train.spec_batch_size,
                                          "median_step_s": sorted(times[1:])[len(times[1:]) // 2],
                                          "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2 ** 30}
        del net, opt
        torch.cuda.empty_cache()
        save()

    run = work / "run_ddp"
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={a.nproc}", "-m",
                        "desa_core.cli", "train", "--survey", str(survey), "--config", str(cfg_path), "--out",
                        str(run), "--device", a.device], env=env, capture_output=True, text=True)
    text = p.stdout + p.stderr
    result["ddp"] = {"nproc": a.nproc, "returncode": p.returncode, "wall_s": time.perf_counter() - t,
                     "backend_logged": [b for b in ("nccl", "gloo") if f"({b}," in text],
                     "log_tail": text[-3000:]}
    if p.returncode == 0:
        result["ddp"]["stages"] = stage_times(run)
        result["ddp"]["done"] = (run / "DONE").exists()
    save()
    print(json.dumps({k: v for k, v in result.items() if k not in ("single", "ddp")}, indent=2, default=str))
    for k in ("single", "ddp"):
        print(k, result[k]["returncode"], json.dumps(result[k].get("stages"), default=str))


if __name__ == "__main__":
    main()
