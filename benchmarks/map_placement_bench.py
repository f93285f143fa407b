"""Map placement: kNN interpolation through FAISS versus umap-learn ``transform``, as JSON.

    python benchmarks/map_placement_bench.py --embedding artifacts/default/emb_desa.npy --fit 2000 \\
        --out benchmarks/results/map_placement_default.json

Both placements start from the *same* UMAP fit (the same fitted stars and coordinates), so they differ only in
how the other stars are placed. Measured: the time of each placement, and their agreement: for every placed
star, the fraction of its 10 nearest map neighbours (among all stars, on each map) that the two maps share;
also the same fraction against the star's 10 nearest neighbours in the embedding itself (how faithfully each
map keeps the embedding's neighbourhoods).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def shared_neighbours(a: np.ndarray, b: np.ndarray, rows: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the k nearest neighbours (Euclidean; among all points) of ``rows`` shared by a and b."""
    from scipy.spatial import cKDTree
    na = cKDTree(a).query(a[rows], k + 1)[1][:, 1:]
    nb = cKDTree(b).query(b[rows], k + 1)[1][:, 1:]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def embedding_neighbours(x: np.ndarray, rows: np.ndarray, k: int = 10) -> np.ndarray:
    import faiss
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(u.shape[1])
    index.add(np.ascontiguousarray(u, dtype=np.float32))
    return index.search(np.ascontiguousarray(u[rows], dtype=np.float32), k + 1)[1][:, 1:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--embedding", required=True, help=".npy embedding (N, D); NaN rows are dropped")
    p.add_argument("--n", type=int, default=None, help="use the first N stars")
    p.add_argument("--fit", type=int, default=None, help="stars the UMAP is fitted on (default: precompute's rule)")
    p.add_argument("--sample", type=int, default=3000, help="placed stars the agreement is measured on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    import umap
    from sklearn.decomposition import PCA

    from precompute.maps import KnnPlacer, UmapConfig, fit_size
    emb = np.load(a.embedding, mmap_mode="r")
    x = np.asarray(emb[: a.n] if a.n else emb, dtype=np.float32)
    x = x[np.isfinite(x).all(axis=1)]
    n = len(x)
    cfg = UmapConfig()
    n_fit = a.fit or fit_size(n, cfg)
    rng = np.random.default_rng(a.seed)
    fit_rows = np.sort(rng.choice(n, n_fit, replace=False))
    rest = np.setdiff1d(np.arange(n), fit_rows)
    x = x - x[fit_rows].mean(axis=0)
    if x.shape[1] > cfg.pca_dims:
        x = PCA(cfg.pca_dims, random_state=a.seed).fit(x[fit_rows]).transform(x).astype(np.float32)
    t0 = time.perf_counter()
    reducer = umap.UMAP(n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist, metric=cfg.metric,
                        random_state=a.seed, low_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_xy = reducer.fit_transform(x[fit_rows]).astype(np.float32)
    t_fit = time.perf_counter() - t0
    maps = {}
    times = {}
    for how in ("knn", "transform"):
        out = np.empty((n, 2), np.float32)
        out[fit_rows] = fit_xy
        t0 = time.perf_counter()
        if how == "knn":
            placer = KnnPlacer(x[fit_rows], fit_xy, cfg.knn)
            for i in range(0, len(rest), cfg.chunk):
                out[rest[i:i + cfg.chunk]] = placer.place(x[rest[i:i + cfg.chunk]])
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for i in range(0, len(rest), cfg.chunk):
                    out[rest[i:i + cfg.chunk]] = reducer.transform(x[rest[i:i + cfg.chunk]])
        times[how] = time.perf_counter() - t0
        maps[how] = out
    sample = np.sort(rng.choice(rest, min(a.sample, len(rest)), replace=False))
    en = embedding_neighbours(x, sample)
    from scipy.spatial import cKDTree

    def faithful(m):
        nm = cKDTree(m).query(m[sample], 11)[1][:, 1:]
        return float(np.mean([len(set(p) & set(q)) / 10 for p, q in zip(nm, en)]))

    res = {"n_stars": n, "n_fit": int(n_fit), "n_placed": int(len(rest)), "fit_s": round(t_fit, 2),
           "placement_s": {k: round(v, 2) for k, v in times.items()},
           "placement_speedup_knn_vs_transform": round(times["transform"] / max(times["knn"], 1e-9), 1),
           "map_neighbours_shared_knn_vs_transform": round(shared_neighbours(maps["knn"], maps["transform"], sample), 3),
           "embedding_neighbours_kept": {k: round(faithful(m), 3) for k, m in maps.items()},
           "sample": int(len(sample)), "cpus": os.cpu_count(), "embedding": a.embedding}
    text = json.dumps(res, indent=2)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(a.out).with_suffix(".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, a.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
