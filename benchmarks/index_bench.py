"""FAISS index benchmark: build time, k=10 query latency (p50/p95), recall@10 vs exact, size, open time.

    .venv/bin/python benchmarks/index_bench.py --n 100000 --dim 32 --out benchmarks/results/index_1e5_d32.json
    .venv/bin/python benchmarks/index_bench.py --n 1000000 --dim 256 --kinds hnsw,ivfpq
    .venv/bin/python benchmarks/index_bench.py --artifacts artifacts/default --embedding desa   # real embeddings
    .venv/bin/python benchmarks/index_bench.py --artifacts ART --built        # the set's own indexes, as served

``--built``: no index is built; each index of the artifact set is opened (memory-mapped) and searched as the
dashboard searches it (``ArtifactSet.search``: queries centred like the index, one FAISS thread), and recall@10
is measured against exact cosine search over the set's centred embedding (streamed from its memory map).
Latency is timed twice over the same queries: first as they come (index pages read from disk or the page
cache where a query lands first), then again ("warm": those pages in memory).

Vectors: the synthetic benchmark embeddings (precompute/synthetic.py: simulator population, fixed random
projection plus noise) at the requested width, or an artifact set's embedding. Queries are stars of the set
(as in the dashboard's "find similar stars"), disjoint from the ones used to tune the index at build time.
Latency is one query at a time through ``desa_core.index.search`` (normalisation and Python included), with
``--omp-threads`` FAISS threads (default 1, as a server answering single queries should run; builds use
every core). Writes one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from desa_core import index as X  # noqa: E402


def synthetic_vectors(n: int, dim: int, seed: int = 0, chunk: int = 250_000) -> np.ndarray:
    from precompute.synthetic import TEMPLATE_MAX, population, simulator_template, synthetic_embeddings
    template = simulator_template(min(n, TEMPLATE_MAX), seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        cat = population(m, seed=seed, start=start, template=template, n_total=n)
        out[start:start + m] = synthetic_embeddings(cat, {"desa": dim}, seed=seed, start=start)["desa"]
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


BUILD_THREADS = X.faiss.omp_get_max_threads()


def bench_kind(kind: str, vectors: np.ndarray, queries_rows: np.ndarray, exact: np.ndarray, tmp: Path,
               n_latency: int, target_recall: float, search_threads: int) -> dict:
    X.set_search_threads(BUILD_THREADS)   # builds use every core
    t0 = time.perf_counter()
    index, info = X.build_index(vectors, kind=kind, target_recall=target_recall, seed=1)
    build_s = time.perf_counter() - t0
    path = X.write_index(index, tmp / f"{kind}.faiss")
    del index
    if search_threads:
        X.set_search_threads(search_threads)
    t0 = time.perf_counter()
    idx = X.open_index(path)
    open_s = time.perf_counter() - t0
    rerank = int(info.params.get("rerank", 1))
    q = vectors[queries_rows]
    got = np.vstack([X.search(idx, q[i:i + 1], 10, vectors=vectors, rerank=rerank)[1] for i in range(len(q))])
    recall = X.recall_at_k(got, exact)
    lat = []
    for i in range(min(n_latency, len(q))):
        t = time.perf_counter()
        X.search(idx, q[i:i + 1], 10, vectors=vectors, rerank=rerank)
        lat.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    X.search(idx, q, 10, vectors=vectors, rerank=rerank)
    batch_qps = len(q) / (time.perf_counter() - t)
    # Restricted to a selection: a small one (exact brute force) and a large one (ID selector).
    rng = np.random.default_rng(2)
    sub = {}
    for size in (10_000, min(len(vectors) // 2, 500_000)):
        subset = np.sort(rng.choice(len(vectors), size=size, replace=False))
        ts = []
        for i in range(20):
            t = time.perf_counter()
            X.search(idx, q[i:i + 1], 10, subset_ids=subset, vectors=vectors, rerank=rerank)
            ts.append((time.perf_counter() - t) * 1e3)
        sub[str(size)] = round(float(np.median(ts)), 3)
    return {"kind": kind, "type": info.type, "params": info.params, "build_s": round(build_s, 2),
            "recall_at_10_build": info.recall_at_10, "recall_at_10": round(recall, 4),
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 3),
            "batch_queries_per_s": round(batch_qps, 1), "subset_latency_ms_p50": sub,
            "file_mb": round(path.stat().st_size / 2**20, 1), "open_s": round(open_s, 4),
            "peak_rss_mb_so_far": round(peak_rss_mb(), 1)}


def bench_built(a) -> int:
    """The artifact set's own indexes, searched as the server searches them."""
    from desa_core.artifacts import ArtifactSet, _Centred
    X.set_search_threads(a.omp_threads or BUILD_THREADS)
    art = ArtifactSet.open(a.artifacts)
    doc = {"benchmark": "index (built, as served)", "artifacts": str(Path(a.artifacts).resolve()),
           "n_stars": art.n_stars, "k": 10, "search_omp_threads": a.omp_threads or BUILD_THREADS, "indexes": {}}
    rng = np.random.default_rng(12345)   # not the build's tuning queries (seed 1)
    for name in [n for n in art.embedding_names if n in art.manifest["indexes"]]:
        info = art.index_info(name)
        emb = art.embedding(name)
        t0 = time.perf_counter()
        art.index(name)
        open_s = time.perf_counter() - t0
        n = emb.shape[0]
        rows = np.sort(rng.choice(n, size=min(4 * a.queries, n), replace=False))
        rows = rows[np.isfinite(np.asarray(emb[rows])).all(axis=1)][:a.queries]
        q = np.asarray(emb[rows], np.float32)
        center = art.center(name)
        vectors = emb if center is None else _Centred(emb, center)
        t0 = time.perf_counter()
        exact = X.exact_search(vectors, q if center is None else q - center, 10, chunk=500_000)[1]
        exact_s = time.perf_counter() - t0
        lat, got = [], []
        for i in range(len(q)):
            t = time.perf_counter()
            got.append(art.search(name, q[i:i + 1], 10)[1])
            lat.append((time.perf_counter() - t) * 1e3)
        warm = []   # the same queries again: the index pages they visit are now in memory
        for i in range(len(q)):
            t = time.perf_counter()
            art.search(name, q[i:i + 1], 10)
            warm.append((time.perf_counter() - t) * 1e3)
        sub = {}
        for size in (10_000, min(n // 2, 500_000)):
            subset = np.sort(rng.choice(n, size=size, replace=False))
            ts = []
            for i in range(20):
                t = time.perf_counter()
                art.search(name, q[i:i + 1], 10, subset_ids=subset)
                ts.append((time.perf_counter() - t) * 1e3)
            sub[str(size)] = round(float(np.median(ts)), 3)
        r = {"type": info.get("type"), "params": info.get("params"), "n": info.get("n"), "dim": int(emb.shape[1]),
             "recall_at_10_build": info.get("recall_at_10"),
             "recall_at_10": round(X.recall_at_k(np.vstack(got), exact), 4), "n_queries": len(q),
             "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
             "latency_ms_p95": round(float(np.percentile(lat, 95)), 3),
             "warm_latency_ms_p50": round(float(np.percentile(warm, 50)), 3),
             "warm_latency_ms_p95": round(float(np.percentile(warm, 95)), 3),
             "subset_latency_ms_p50": sub, "open_s": round(open_s, 4), "exact_ground_truth_s": round(exact_s, 1),
             "file_mb": round((art.path / info["file"]).stat().st_size / 2**20, 1)}
        print(f"[index_bench] {name}: {json.dumps(r)}", file=sys.stderr, flush=True)
        doc["indexes"][name] = r
    doc.update({"peak_rss_mb": round(peak_rss_mb(), 1), "faiss": X.faiss.__version__,
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "load_average": [round(x, 2) for x in os.getloadavg()]},
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    out = Path(a.out or Path(__file__).parent / "results" / f"index_built_{art.n_stars}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=32, help="32 = the small model's DESA width, 256 = the paper's")
    p.add_argument("--kinds", default="flat,hnsw,ivf,ivfpq")
    p.add_argument("--artifacts", default=None, help="benchmark an artifact set's embedding instead")
    p.add_argument("--embedding", default="desa")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--omp-threads", type=int, default=1,
                   help="FAISS threads per search (1 = how a server answers single queries; 0 = FAISS default)")
    p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/index_<n>_d<dim>.json)")
    p.add_argument("--built", action="store_true", help="with --artifacts: time the set's own indexes")
    a = p.parse_args(argv)
    if a.built:
        if not a.artifacts:
            p.error("--built needs --artifacts")
        return bench_built(a)

    t0 = time.perf_counter()
    if a.artifacts:
        from desa_core.artifacts import ArtifactSet
        emb = np.asarray(ArtifactSet.open(a.artifacts).embedding(a.embedding))
        vectors = emb[np.isfinite(emb).all(axis=1)]
        source = f"{a.artifacts}:{a.embedding}"
    else:
        vectors = synthetic_vectors(a.n, a.dim)
        source = "synthetic (precompute/synthetic.py)"
    gen_s = time.perf_counter() - t0
    n, dim = vectors.shape
    rng = np.random.default_rng(12345)   # not the build's tuning queries (seed 1)
    qrows = np.sort(rng.choice(n, size=min(a.queries, n), replace=False))
    t0 = time.perf_counter()
    exact = X.exact_search(vectors, vectors[qrows], 10)[1]
    exact_s = time.perf_counter() - t0
    results = []
    with tempfile.TemporaryDirectory(prefix="index-bench-") as tmp:
        for kind in a.kinds.split(","):
            print(f"[index_bench] n={n} dim={dim} kind={kind} ...", file=sys.stderr, flush=True)
            r = bench_kind(kind.strip(), vectors, qrows, exact, Path(tmp), a.queries, a.target_recall,
                           a.omp_threads)
            print(f"[index_bench]   {json.dumps(r)}", file=sys.stderr, flush=True)
            results.append(r)
    doc = {"benchmark": "index", "n": n, "dim": dim, "source": source, "k": 10, "n_queries": len(qrows),
           "target_recall": a.target_recall, "search_omp_threads": a.omp_threads or BUILD_THREADS,
           "vector_generation_s": round(gen_s, 1),
           "exact_ground_truth_s": round(exact_s, 1), "results": results,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "note": "2 cores shared with other work; latencies are upper bounds"},
           "faiss": X.faiss.__version__, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(a.out or Path(__file__).parent / "results" / f"index_{n}_d{dim}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
