"""Precompute benchmark: wall time per stage, UMAP time, artifact open time and peak memory for a synthetic
benchmark set of N stars; and, given a trained run, the embedding throughput of the real model.

    .venv/bin/python benchmarks/precompute_bench.py --n 100000
    .venv/bin/python benchmarks/precompute_bench.py --n 1000000 --dims paper --keep artifacts/bench-1e6
    .venv/bin/python benchmarks/precompute_bench.py --embed-only --survey data/survey --run runs/small --threads 2
    .venv/bin/python benchmarks/precompute_bench.py --embed-only --survey data/survey --config small  # no run yet

The pipeline runs in a child process (``python -m precompute``-equivalent) so its peak RSS is measured alone.
Embedding throughput: ``Embedder.embed_store`` on the first ``--embed-stars`` stars of the survey after one
warm-up batch, torch limited to ``--threads`` threads (preprocessing included, as in `desa precompute`);
without ``--run``, the ``--config`` model with untrained weights (identical cost).
Writes one JSON document (default benchmarks/results/precompute_<n>.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _child(n: int, out: str, dims: str, seed: int, index_kind: str = "auto") -> None:
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from precompute.pipeline import run_precompute
    from precompute.synthetic import model_dims
    run_precompute(synthetic=n, out=out, seed=seed, dims=model_dims(dims), index_kind=index_kind, progress=False)


def bench_pipeline(n: int, dims: str, keep: str | None, seed: int, index_kind: str = "auto") -> dict:
    tmp = None
    if keep:
        out = Path(keep)
    else:
        tmp = tempfile.mkdtemp(prefix="precompute-bench-")
        out = Path(tmp) / "art"
    try:
        t0 = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run([sys.executable, __file__, "--child", "--n", str(n), "--dims", dims, "--out", str(out),
                        "--seed", str(seed), "--index-kind", index_kind], check=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        peak_mb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        manifest = json.loads((out / "manifest.json").read_text())
        # Open time as the dashboard does it: manifest + a few star columns + mmap embedding + index.
        from desa_core.artifacts import ArtifactSet
        t = time.perf_counter()
        a = ArtifactSet.open(out, columns=["star_id", "umap_x", "umap_y", "bp_rp", "abs_g"])
        t_manifest = time.perf_counter() - t
        _ = a.stars
        t_stars = time.perf_counter() - t
        _ = a.embedding("desa")
        _ = a.index("desa")
        t_all = time.perf_counter() - t
        sizes = {rel: round(meta["bytes"] / 2**20, 1) for rel, meta in manifest["files"].items()}
        return {"n": n, "index_kind": index_kind, "dims": manifest["embeddings"], "wall_s": round(wall, 1),
                "stage_wall_s": {k: v["wall_s"] for k, v in manifest["stages"].items()},
                "umap": manifest["maps"]["umap"], "indexes": manifest["indexes"],
                "peak_rss_mb": round(peak_mb, 1), "files_mb": sizes,
                "open_s": {"manifest_and_checks": round(t_manifest, 3), "stars_5_columns": round(t_stars, 3),
                           "plus_embedding_and_index": round(t_all, 3)}}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _untrained_embedder(config: str):
    """The named config's encoders + DualFormer with their initial weights: the same arithmetic, hence the
    same throughput, as a trained run of that config (for measuring before a run exists)."""
    from desa_core.models.config import get_config
    from desa_core.models.dualformer import DualFormer
    from desa_core.models.inference import Embedder
    from desa_core.models.light_curve_encoder import LightCurveEncoder
    from desa_core.models.spectra_encoder import SpectraEncoder
    cfg = get_config(config)
    lc, sp = LightCurveEncoder(cfg.light_curve), SpectraEncoder(cfg.spectra)
    df = DualFormer(cfg.dualformer, sp.out_dim, lc.out_dim)
    df.finalize()   # eigenbasis of the initial A: the embedding then costs what a trained one does
    return Embedder(cfg, lc, sp, df, "untrained", "cpu")


def bench_embedding(survey: str, run: str | None, n_stars: int, threads: int, batch_size: int,
                    config: str = "small") -> dict:
    import numpy as np
    import torch
    from desa_core.data.store import SurveyStore
    from desa_core.models.inference import Embedder
    torch.set_num_threads(threads)
    store = SurveyStore.open(survey)
    emb = Embedder.from_run(run, device="cpu") if run else _untrained_embedder(config)
    n = min(n_stars, len(store))
    out = {"survey": survey, "run": run or f"none: untrained {config} weights (same cost)",
           "config": emb.config_name, "dims": emb.dims, "stars": n, "threads": threads, "batch_size": batch_size,
           "device": "cpu"}
    # "fresh": every star preprocessed and run through both encoders (a new survey); "reused": the survey the
    # run was trained on, whose encoder features the run saved (only the DualFormer runs).
    for mode, kw in (("fresh", {"reuse_features": False}), ("reused", {"reuse_features": True})):
        if mode == "reused" and not run:
            continue
        emb.embed_store(store, rows=np.arange(min(batch_size, n)), batch_size=batch_size, progress=False, **kw)
        t = time.perf_counter()
        emb.embed_store(store, rows=np.arange(n), batch_size=batch_size, progress=False, **kw)
        dt = time.perf_counter() - t
        out[f"{mode}_seconds"] = round(dt, 2)
        out[f"{mode}_stars_per_s"] = round(n / dt, 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dims", default="small", help="embedding widths of this model config (small, paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index-kind", default="auto", help="auto, flat, hnsw, ivf, ivfpq")
    p.add_argument("--keep", default=None, help="write the artifact set here and keep it")
    p.add_argument("--survey", default=None)
    p.add_argument("--run", default=None)
    p.add_argument("--embed-stars", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--embed-only", action="store_true")
    p.add_argument("--config", default="small", help="with --survey but no --run: time this config untrained")
    p.add_argument("--out", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        _child(a.n, a.out, a.dims, a.seed, a.index_kind)
        return 0
    doc = {"benchmark": "precompute", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "note": "2 cores shared with other work while measured"}}
    if not a.embed_only:
        doc["pipeline"] = bench_pipeline(a.n, a.dims, a.keep, a.seed, a.index_kind)
    if a.survey:
        doc["embedding"] = bench_embedding(a.survey, a.run, a.embed_stars, a.threads, a.batch_size, a.config)
    name = "embedding" if a.embed_only else f"precompute_{a.n}_{a.dims}"
    out = Path(a.out or Path(__file__).parent / "results" / f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
