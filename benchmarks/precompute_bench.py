"""Precompute benchmark: wall time per stage, UMAP time, artifact open time and peak memory for a synthetic
benchmark set of N stars; and, given a trained run, the embedding throughput of the real model.

    .venv/bin/python benchmarks/precompute_bench.py --n 100000
    .venv/bin/python benchmarks/precompute_bench.py --n 1000000 --dims paper --keep artifacts/bench-1e6
    .venv/bin/python benchmarks/precompute_bench.py --n 1000000 --workers 2        # the chunked stages on Dask
    .venv/bin/python benchmarks/precompute_bench.py --embed-only --survey data/survey --run runs/small --threads 2
    .venv/bin/python benchmarks/precompute_bench.py --embed-only --survey data/survey --config small  # no run yet
    .venv/bin/python benchmarks/precompute_bench.py --embed-only --survey data/dev_survey_seed7 --run runs/small \
        --embed-stars 10000 --threads 1 --no-before --embed-workers 2     # new stars: one process vs 2 Dask workers
    .venv/bin/python benchmarks/precompute_bench.py --n 1000000 --device cuda   # model, FAISS training, UMAP on a GPU

The pipeline runs in a child process (``python -m precompute``-equivalent) so its peak RSS is measured alone.
Embedding throughput: ``Embedder.embed_store`` on the first ``--embed-stars`` stars of the survey after one
warm-up batch, torch limited to ``--threads`` threads (preprocessing included, as in `desa precompute`);
without ``--run``, the ``--config`` model with untrained weights (identical cost). "fresh" is the path of
stars the run never saw (``reuse_features=False``: every star preprocessed and through both encoders),
timed with embed_store's default prefetch choice and with the background prefetch forced on and off;
"reused" is the run's own training survey (saved encoder features, DualFormer only). In the same run, unless
``--no-before``: the same stars through the per-star code from before the batch preprocessing
(benchmarks/legacy_preprocess.py) and the same model, and the preprocessing alone per star vs in batches,
with the largest difference between their outputs: on a shared machine only same-run ratios compare.
Writes one JSON document (default benchmarks/results/precompute_<n>.json, or embedding.json).
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
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402


def _child(n: int, out: str, dims: str, seed: int, index_kind: str = "auto", workers: int = 0,
           device: str | None = None) -> None:
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from precompute.pipeline import run_precompute
    from precompute.synthetic import model_dims
    run_precompute(synthetic=n, out=out, seed=seed, dims=model_dims(dims), index_kind=index_kind, progress=False,
                   workers=workers, device=device)


def bench_pipeline(n: int, dims: str, keep: str | None, seed: int, index_kind: str = "auto", workers: int = 0,
                   device: str | None = None) -> dict:
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
                        "--seed", str(seed), "--index-kind", index_kind, "--workers", str(workers)]
                       + (["--device", device] if device else []), check=True, cwd=ROOT)
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
        return {"n": n, "index_kind": index_kind, "workers": workers, "device": device or "auto",
                "dims": manifest["embeddings"],
                "wall_s": round(wall, 1),
                "stage_wall_s": {k: v["wall_s"] for k, v in manifest["stages"].items()},
                "umap": manifest["maps"]["umap"], "indexes": manifest["indexes"],
                "peak_rss_mb": round(peak_mb, 1), "files_mb": sizes,
                "open_s": {"manifest_and_checks": round(t_manifest, 3), "stars_5_columns": round(t_stars, 3),
                           "plus_embedding_and_index": round(t_all, 3)}}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _untrained_embedder(config: str, device: str = "cpu"):
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
    return Embedder(cfg, lc, sp, df, "untrained", device)


def _legacy_embed(emb, store, rows, batch_size: int) -> np.ndarray:
    """``embed_store(reuse_features=False)`` as it was before the batch preprocessing: a per-star loop of the
    old preprocessing (benchmarks/legacy_preprocess.py), then the same model. Returns the DESA embeddings."""
    import legacy_preprocess as legacy
    from desa_core.data.preprocess import RV_COLUMN
    cat, pcfg = store.catalog, emb.config.preprocess
    lc_row, sp_row = cat["lc_row"].to_numpy(np.int64), cat["spec_row"].to_numpy(np.int64)
    abs_g, rv = cat["abs_g"].to_numpy(np.float64), cat[RV_COLUMN].to_numpy(np.float64)
    out = []
    for i in range(0, len(rows), batch_size):
        b = rows[i:i + batch_size]
        lcs, sps = [], []
        for r in b:
            x = y = None
            try:
                if lc_row[r] >= 0:
                    x = legacy.preprocess_light_curve(store.time, np.asarray(store.light_curves[lc_row[r]]),
                                                      abs_g[r], pcfg)
            except ValueError:
                pass
            try:
                if sp_row[r] >= 0:
                    y = legacy.preprocess_spectrum(store.wavelength, np.asarray(store.spectra_flux[sp_row[r]]),
                                                   np.asarray(store.spectra_ivar[sp_row[r]]),
                                                   rv[r] if np.isfinite(rv[r]) else 0.0, pcfg)
            except ValueError:
                pass
            lcs.append(x)
            sps.append(y)
        out.append(emb._embed_batch(lcs, sps, emb._labels_for(cat, b))["desa"])
    return np.concatenate(out)


def bench_preprocessing(store, pcfg, n: int, batch_size: int) -> dict:
    """Seconds per 1000 stars of the old per-star preprocessing and of the batch functions, on the same
    stars' arrays (read into memory first), and the largest difference between their outputs."""
    import legacy_preprocess as legacy
    from desa_core.data.preprocess import RV_COLUMN, preprocess_light_curves, preprocess_spectra
    cat = store.catalog.iloc[:n]
    lc_rows = cat["lc_row"].to_numpy(np.int64)
    sp_rows = cat["spec_row"].to_numpy(np.int64)
    has_l, has_s = lc_rows >= 0, sp_rows >= 0
    lc = np.asarray(store.light_curves[lc_rows[has_l]])
    flux, ivar = np.asarray(store.spectra_flux[sp_rows[has_s]]), np.asarray(store.spectra_ivar[sp_rows[has_s]])
    abs_g = cat["abs_g"].to_numpy(np.float64)[has_l]
    rv = np.nan_to_num(cat[RV_COLUMN].to_numpy(np.float64)[has_s])
    t = time.perf_counter()
    old_lc = np.stack([legacy.preprocess_light_curve(store.time, f, m, pcfg) for f, m in zip(lc, abs_g)])
    t_old_lc = time.perf_counter() - t
    t = time.perf_counter()
    old_sp = np.stack([legacy.preprocess_spectrum(store.wavelength, f, v, r, pcfg) for f, v, r in zip(flux, ivar, rv)])
    t_old_sp = time.perf_counter() - t
    t = time.perf_counter()
    new_lc = np.concatenate([preprocess_light_curves(store.time, lc[i:i + batch_size], abs_g[i:i + batch_size],
                                                     pcfg)[0] for i in range(0, len(lc), batch_size)])
    t_new_lc = time.perf_counter() - t
    t = time.perf_counter()
    new_sp = np.concatenate([preprocess_spectra(store.wavelength, flux[i:i + batch_size], ivar[i:i + batch_size],
                                                rv[i:i + batch_size], pcfg)[0]
                             for i in range(0, len(flux), batch_size)])
    t_new_sp = time.perf_counter() - t
    per_k = lambda dt, m: round(dt / max(m, 1) * 1000, 3)  # noqa: E731
    return {"light_curves": len(lc), "spectra": len(flux),
            "per_star_s_per_1000": {"light_curve": per_k(t_old_lc, len(lc)), "spectrum": per_k(t_old_sp, len(flux))},
            "batch_s_per_1000": {"light_curve": per_k(t_new_lc, len(lc)), "spectrum": per_k(t_new_sp, len(flux))},
            "speedup": {"light_curve": round(t_old_lc / t_new_lc, 2), "spectrum": round(t_old_sp / t_new_sp, 2)},
            "max_abs_diff_vs_per_star": {"light_curve": float(np.abs(old_lc - new_lc).max()),
                                         "spectrum": float(np.abs(old_sp - new_sp).max())}}


def bench_embedding(survey: str, run: str | None, n_stars: int, threads: int, batch_size: int | None,
                    config: str = "small", legacy: bool = True, device: str = "cpu") -> dict:
    import torch
    from threadpoolctl import threadpool_limits
    from desa_core.data.store import SurveyStore
    from desa_core.models.inference import Embedder
    torch.set_num_threads(threads)
    store = SurveyStore.open(survey)
    emb = Embedder.from_run(run, device=device) if run else _untrained_embedder(config, device)
    batch_size = int(batch_size or emb.default_batch_size())
    n = min(n_stars, len(store))
    rows = np.arange(n)
    out = {"survey": survey, "run": run or f"none: untrained {config} weights (same cost)",
           "config": emb.config_name, "dims": emb.dims, "stars": n, "threads": threads, "batch_size": batch_size,
           "device": device, "load_before": [round(x, 2) for x in os.getloadavg()]}
    # "fresh": every star preprocessed and run through both encoders (a new survey), with the background
    # prefetch that embed_store chooses by default, and with it forced on and off; "reused": the survey the
    # run was trained on, whose encoder features the run saved (only the DualFormer runs);
    # "fresh_per_star_before": the same stars through the code as it was before the batch preprocessing, in
    # the same run (the machine is shared: compare within a run).
    emb.embed_store(store, rows=rows[:batch_size], batch_size=batch_size, progress=False, reuse_features=False)
    fresh = {}
    for prefetch in (None, True, False):
        t = time.perf_counter()
        fresh[prefetch] = emb.embed_store(store, rows=rows, batch_size=batch_size, progress=False,
                                          reuse_features=False, prefetch=prefetch)["desa"]
        dt = time.perf_counter() - t
        key = {None: "fresh", True: "fresh_prefetch", False: "fresh_no_prefetch"}[prefetch]
        out[f"{key}_seconds"] = round(dt, 2)
        out[f"{key}_stars_per_s"] = round(n / dt, 1)
    out["prefetch_default"] = emb._prefetch_default()
    if legacy:
        with threadpool_limits(limits=1, user_api="blas"):
            t = time.perf_counter()
            before = _legacy_embed(emb, store, rows, batch_size)
            dt = time.perf_counter() - t
        out["fresh_per_star_before_seconds"] = round(dt, 2)
        out["fresh_per_star_before_stars_per_s"] = round(n / dt, 1)
        out["speedup_vs_before"] = round(out["fresh_stars_per_s"] / out["fresh_per_star_before_stars_per_s"], 2)
        out["desa_max_abs_diff_vs_before"] = float(np.abs(before - fresh[None]).max())
        with threadpool_limits(limits=1, user_api="blas"):
            out["preprocessing"] = bench_preprocessing(store, emb.config.preprocess, n, batch_size)
    if run:
        emb.embed_store(store, rows=rows[:batch_size], batch_size=batch_size, progress=False)
        t = time.perf_counter()
        emb.embed_store(store, rows=rows, batch_size=batch_size, progress=False)
        dt = time.perf_counter() - t
        out["reused_seconds"] = round(dt, 2)
        out["reused_stars_per_s"] = round(n / dt, 1)
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def _dask_chunk_rows(n: int, workers: int, chunk_rows: int | None = None) -> int:
    """The pipeline's 2048-row chunks, or fewer rows so that every worker gets at least 4 chunks: with 5 chunks
    on 2 workers one worker would run the last chunk alone, which a 10^6-star run (489 chunks) never sees."""
    return int(chunk_rows or min(2048, max(256, -(-n // (4 * workers)))))


def _worker_batch_size() -> int:
    """The batch a one-thread Dask worker's embedder picks by default (Embedder.default_batch_size)."""
    from desa_core.models.inference import CPU_STARS_PER_THREAD
    return CPU_STARS_PER_THREAD


def _timed_embed_chunk(start: int, stop: int, *args) -> dict:
    """The pipeline's embed task on one chunk, with when it ran on which worker (wall clock, one machine)."""
    from precompute.stages import _embed_rows_on_worker
    t0 = time.time()
    out = _embed_rows_on_worker(start, stop, *args)
    return {"pid": os.getpid(), "t0": t0, "t1": time.time(), "rows": stop - start,
            "finite": int(np.isfinite(out["desa"]).all(axis=1).sum())}


def _dask_embed_all(runner, n: int, chunk_rows: int, args: tuple) -> tuple[list[dict], float, float]:
    """Every star through the pipeline's embed task on ``runner``'s workers -> (the chunks' timings, the wall
    clock at the start, seconds taken)."""
    from precompute.chunks import row_ranges
    t1, wall1 = time.perf_counter(), time.time()
    chunks = [res for _, _, res in runner.run(_timed_embed_chunk, row_ranges(n, chunk_rows), args=args)]
    return chunks, wall1, time.perf_counter() - t1


def _steady_rate(chunks: list[dict], t_start: float) -> dict:
    """Stars per second while every worker was busy: up to the moment the first worker ran out of chunks.
    At 10^4 stars the last chunks leave one worker idle while the other finishes (a tail of up to one chunk);
    a 10^6-star run (489 chunks) spends a negligible share of its time there."""
    last_end = {}
    for c in chunks:
        last_end[c["pid"]] = max(last_end.get(c["pid"], 0.0), c["t1"])
    t_idle = min(last_end.values())
    # chunks still running then count with the part of them done by then (a chunk's stars go at a steady pace)
    done = sum(c["rows"] * min(1.0, max(0.0, (t_idle - c["t0"]) / max(c["t1"] - c["t0"], 1e-9))) for c in chunks)
    return {"steady_stars_per_s": round(done / (t_idle - t_start), 1), "steady_window_s": round(t_idle - t_start, 2),
            "steady_stars": int(done), "tail_s": round(max(last_end.values()) - t_idle, 2)}


def bench_embedding_dask(survey: str, run: str, workers: int, batch_size: int | None,
                         chunk_rows: int | None = None) -> dict:
    """New stars (every star of ``survey``; no saved features) through the Dask embed task of `desa precompute
    --workers N`: on our LocalCluster, and on one started with Dask's default worker environment
    (MALLOC_TRIM_THRESHOLD_=65536), in the same run. The model is loaded on every worker before the clock starts;
    ``stage_*`` also counts the cluster's start and those loads, as `desa precompute` pays them."""
    from distributed import Client, LocalCluster
    from desa_core.data.store import SurveyStore
    from precompute.chunks import ChunkRunner
    from precompute.stages import _embed_rows_on_worker
    n = len(SurveyStore.open(survey))
    chunk_rows = _dask_chunk_rows(n, workers, chunk_rows)
    args = (str(survey), str(run), batch_size, 1)
    out = {"survey": survey, "run": run, "stars": n, "workers": workers, "threads_per_worker": 1,
           "chunk_rows": chunk_rows, "batch_size": batch_size or _worker_batch_size(),
           "load_before": [round(x, 2) for x in os.getloadavg()]}

    def timed(runner, label):
        t0 = time.perf_counter()
        client = runner.client()
        client.run(_embed_rows_on_worker, 0, 64, *args)          # store and model opened on every worker
        startup = time.perf_counter() - t0
        chunks, wall1, seconds = _dask_embed_all(runner, n, chunk_rows, args)
        out[f"{label}_stars_embedded"] = sum(c["finite"] for c in chunks)
        out[f"{label}_stars_per_s"] = round(n / seconds, 1)
        out[f"{label}_stage_stars_per_s"] = round(n / (startup + seconds), 1)
        out[f"{label}_startup_s"] = round(startup, 2)
        out[label + "_steady"] = _steady_rate(chunks, wall1)

    with ChunkRunner(None, workers=workers, progress=False) as r:
        timed(r, "dask")
    saved = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            Client(cl) as c:
        timed(ChunkRunner(None, client=c, progress=False), "dask_default_worker_env")
    if saved is None:   # the nanny leaves its variables in this process's environment
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def bench_batch_sizes(survey: str, run: str, workers: int, sizes: list[int], rounds: int, n_stars: int) -> dict:
    """Stars per model call against throughput, the sizes alternated ``rounds`` times in one run (the machine's
    speed drifts by 20% over minutes): new stars through ``workers`` one-thread Dask workers (one cluster, every
    star of ``survey``), and through this process with torch on every core (``n_stars`` stars)."""
    import torch
    from desa_core.data.store import SurveyStore
    from desa_core.models.inference import Embedder, _usable_cores
    from precompute.chunks import ChunkRunner
    from precompute.stages import _embed_rows_on_worker
    store = SurveyStore.open(survey)
    n = len(store)
    chunk_rows = _dask_chunk_rows(n, workers)
    out = {"survey": survey, "run": run, "sizes": sizes, "rounds": rounds,
           "dask": {"stars": n, "workers": workers, "threads_per_worker": 1, "chunk_rows": chunk_rows,
                    "steady_stars_per_s": {b: [] for b in sizes}},
           "in_process": {"stars": min(n_stars, n), "threads": _usable_cores(), "stars_per_s": {b: [] for b in sizes}},
           "load_before": [round(x, 2) for x in os.getloadavg()]}
    with ChunkRunner(None, workers=workers, progress=False) as r:
        r.client().run(_embed_rows_on_worker, 0, 64, str(survey), str(run), None, 1)
        for _ in range(rounds):
            for b in sizes:
                chunks, wall1, _ = _dask_embed_all(r, n, chunk_rows, (str(survey), str(run), b, 1))
                out["dask"]["steady_stars_per_s"][b].append(_steady_rate(chunks, wall1)["steady_stars_per_s"])
    torch.set_num_threads(out["in_process"]["threads"])
    emb = Embedder.from_run(run, device="cpu")
    rows = np.arange(out["in_process"]["stars"])
    emb.embed_store(store, rows=rows[:256], progress=False, reuse_features=False)
    for _ in range(rounds):
        for b in sizes:
            t = time.perf_counter()
            emb.embed_store(store, rows=rows, batch_size=b, progress=False, reuse_features=False)
            out["in_process"]["stars_per_s"][b].append(round(len(rows) / (time.perf_counter() - t), 1))
    for part, key in (("dask", "steady_stars_per_s"), ("in_process", "stars_per_s")):
        rates = out[part][key]
        for stat, f in (("mean", np.mean), ("median", np.median), ("min", np.min), ("max", np.max)):
            out[part][stat] = {b: round(float(f(v)), 1) for b, v in rates.items()}
        # each size against the first in the same round: the ratio the drift leaves alone
        out[part]["ratio_to_first_per_round"] = {b: [round(x / y, 3) for x, y in zip(v, rates[sizes[0]])]
                                                 for b, v in rates.items()}
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dims", default="small", help="embedding widths of this model config (small, paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index-kind", default="auto", help="auto, flat, hnsw, ivf, ivfpq")
    p.add_argument("--workers", type=int, default=0, help="Dask workers for the chunked stages (0: in process)")
    p.add_argument("--keep", default=None, help="write the artifact set here and keep it")
    p.add_argument("--survey", default=None)
    p.add_argument("--run", default=None)
    p.add_argument("--embed-stars", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None,
                   help="stars per model call (default: Embedder.default_batch_size, per torch thread on a CPU)")
    p.add_argument("--compare-batch-sizes", default=None,
                   help="with --survey, --run and --embed-workers: e.g. 256,128,64 alternated --rounds times")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--embed-only", action="store_true")
    p.add_argument("--embed-workers", type=int, default=0,
                   help="with --survey and --run: also every star of the survey through N Dask workers")
    p.add_argument("--no-before", action="store_true",
                   help="skip timing the per-star code from before the batch preprocessing")
    p.add_argument("--config", default="small", help="with --survey but no --run: time this config untrained")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda: the model (embedding), and in the pipeline FAISS training and UMAP (cuML)")
    p.add_argument("--out", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        _child(a.n, a.out, a.dims, a.seed, a.index_kind, a.workers, a.device)
        return 0
    doc = {"benchmark": "precompute", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "note": "2 cores shared with other work while measured"}}
    if not a.embed_only:
        doc["pipeline"] = bench_pipeline(a.n, a.dims, a.keep, a.seed, a.index_kind, a.workers, a.device)
    if a.compare_batch_sizes:
        if not (a.survey and a.run and a.embed_workers):
            p.error("--compare-batch-sizes needs --survey, --run and --embed-workers")
        doc["batch_sizes"] = bench_batch_sizes(a.survey, a.run, a.embed_workers,
                                               [int(x) for x in a.compare_batch_sizes.split(",")], a.rounds,
                                               a.embed_stars)
    elif a.survey:
        doc["embedding"] = bench_embedding(a.survey, a.run, a.embed_stars, a.threads, a.batch_size, a.config,
                                           legacy=not a.no_before, device=a.device)
        if a.embed_workers and a.run:
            doc["embedding_dask"] = bench_embedding_dask(a.survey, a.run, a.embed_workers, a.batch_size)
    if a.compare_batch_sizes:
        name = "embedding_batch_sizes"
    elif a.embed_only:
        name = "embedding"
    else:
        name = f"precompute_{a.n}_{a.dims}" + (f"_w{a.workers}" if a.workers else "")
    out = Path(a.out or Path(__file__).parent / "results" / f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
