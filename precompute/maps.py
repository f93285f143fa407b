"""2-D maps of the embedding: UMAP (n_neighbors 15, min_dist 0.1), computed offline and stored per star.

umap-learn runs out of memory around 1-3 M points on a CPU, and its ``transform`` is slow (190 s for 8x10^5
stars), so UMAP is fitted on a sample whose size grows with n (all stars up to 50,000, then n/20, at most
``fit_max`` = 200,000; after PCA to ``pca_dims`` when the embedding is wider) and every other star is *placed*
by inverse-distance-weighted interpolation of the map positions of its 10 nearest fitted stars (cosine, in
the same PCA space), found with a FAISS HNSW index over the fitted stars (``placement='knn'``, the default; the
approach of approx-umap). ``placement='transform'`` uses ``UMAP.transform`` instead. The CMD (bp_rp, abs_g) and HR (teff, log_lum) coordinates are catalogue
columns and need no computation; they are written next to the UMAP coordinates in stars.parquet.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class UmapConfig:
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"   # the embedding is compared by cosine everywhere else (FAISS) too
    fit_max: int = 200_000   # at most this many stars fit the layout; the rest are placed
    fit_min: int = 50_000    # up to this many stars are all fitted; above, n / 20 (at least this many)
    placement: str = "knn"   # how the others are placed: "knn" (FAISS neighbours) or "transform" (umap-learn)
    knn: int = 10            # fitted neighbours a placed star is interpolated from
    pca_dims: int = 50       # PCA before UMAP when the embedding is wider than this
    chunk: int = 50_000      # rows per transform / PCA chunk
    # "umap-learn" (CPU), "cuml" (RAPIDS cuML on a GPU, same settings and placement), or "auto": cuML when it is
    # installed and a GPU is visible, else umap-learn. `desa precompute --device cpu` forces umap-learn.
    backend: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


MIN_UMAP_STARS = 50   # below this a UMAP of 15 neighbours is all neighbourhood: the map is a PCA instead


def pca_layout(embedding: np.ndarray, reason: str) -> tuple[np.ndarray, dict]:
    """The first two principal components of a (small) embedding: the layout when UMAP cannot run or would
    mean nothing. One star sits at the origin; two lie on a line."""
    t0 = time.perf_counter()
    x = np.asarray(embedding, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("the embedding has non-finite rows; the DESA embedding must be defined for every star")
    x = x - x.mean(axis=0)
    out = np.zeros((len(x), 2), np.float32)
    if len(x) > 1:
        _, sv, vt = np.linalg.svd(x, full_matrices=False)
        k = min(2, vt.shape[0])
        out[:, :k] = x @ vt[:k].T
    log.info("2-D layout: PCA of %d stars (%s)", len(x), reason)
    return out, {"method": "pca", "reason": reason, "n_fit": int(len(x)), "n_transformed": 0,
                 "pca_dims": None, "fit_s": round(time.perf_counter() - t0, 3),
                 "total_s": round(time.perf_counter() - t0, 3)}


def umap_layout(embedding: np.ndarray, config: UmapConfig | None = None, seed: int = 0,
                progress: bool = True, runner=None, emb_path=None, fitted: dict | None = None) -> tuple[np.ndarray, dict]:
    """(N, 2) float32 UMAP coordinates of ``embedding`` (N, D) (may be memory-mapped) and timing info. Rows
    that are NaN (stars without a single-modality embedding) get NaN coordinates; the layout is fitted on a
    sample of the others and the rest are placed a chunk at a time, through ``runner``
    (:class:`precompute.chunks.ChunkRunner`: in process by default, on Dask workers when it has them, resumable
    when it has a folder; workers read ``emb_path``, the embedding's .npy file). ``fitted``: the layout already
    fitted by :func:`fit_layouts` (kNN placement only), so only the placement runs here.

    Fewer than MIN_UMAP_STARS stars (a user's own handful), or a UMAP that fails: the PCA layout of
    :func:`pca_layout` instead, with ``info['method'] = 'pca'`` and the reason (shown in the page)."""
    from precompute.stages import defined_rows
    cfg = config or UmapConfig()
    n = embedding.shape[0]
    if n == 0:
        raise ValueError("no stars to lay out")
    rows = defined_rows(embedding)
    out = np.full((n, 2), np.nan, np.float32)
    if len(rows) == 0:
        return out, {"method": "none", "reason": "no star has this modality", "n_fit": 0, "n_transformed": 0,
                     "n_stars": 0}
    if len(rows) < MIN_UMAP_STARS:
        xy, info = pca_layout(np.asarray(embedding[rows]), f"{len(rows)} stars: too few for UMAP (it needs "
                              f"{MIN_UMAP_STARS})")
        out[rows] = xy
        return out, {**info, "n_stars": int(len(rows))}
    try:
        xy, info = _umap_layout(embedding, rows, cfg, seed, progress, runner, emb_path, fitted)
    except (TypeError, ValueError) as e:   # e.g. scipy's eigsh on a degenerate neighbour graph
        log.warning("UMAP failed (%s): falling back to a PCA layout", e)
        xy, info = pca_layout(np.asarray(embedding[rows]), f"UMAP failed: {str(e)[:120]}")
        out[rows] = xy
        return out, {**info, "n_stars": int(len(rows))}
    return xy, {**info, "n_stars": int(len(rows))}


def fit_sample(embedding, defined: np.ndarray, cfg: UmapConfig, seed: int) -> dict:
    """Fit the UMAP layout on a sample of the ``defined`` rows: {"fit_rows", "fit_xy", "fit_x" (the centred,
    PCA-reduced sample), "center", "pca_components"/"pca_mean" (or None), "backend", "fit_s", "reducer"}."""
    import umap  # imported here: numba compilation costs seconds and only this stage needs it  # noqa: F401
    from sklearn.decomposition import PCA

    dim = embedding.shape[1]
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_fit = fit_size(len(defined), cfg)
    fit_rows = defined if len(defined) <= n_fit else np.sort(rng.choice(defined, size=n_fit, replace=False))
    fit_x = np.asarray(embedding[fit_rows], dtype=np.float32)
    # Centre (the fit sample's mean) for the same reason as the indexes: a large common offset would make
    # every cosine distance ~0. PCA below centres again; harmless.
    center = fit_x.mean(axis=0)
    fit_x = fit_x - center
    pca = None
    if dim > cfg.pca_dims and len(fit_rows) > cfg.pca_dims:
        pca = PCA(n_components=cfg.pca_dims, random_state=seed).fit(fit_x)
        fit_x = pca.transform(fit_x).astype(np.float32)
    backend = umap_backend(cfg.backend)
    if backend == "cuml":
        from cuml.manifold import UMAP as CumlUMAP
        reducer = CumlUMAP(n_neighbors=min(cfg.n_neighbors, len(fit_rows) - 1), min_dist=cfg.min_dist,
                           metric=cfg.metric, random_state=seed, n_components=2)
    else:
        reducer = umap.UMAP(n_neighbors=min(cfg.n_neighbors, len(fit_rows) - 1), min_dist=cfg.min_dist,
                            metric=cfg.metric, random_state=seed, n_components=2, low_memory=True,
                            verbose=False)
    log.info("UMAP (%s): fitting on %d of %d stars (%d dims)", backend, len(fit_rows), len(defined), fit_x.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": determinism is the point
        coords_fit = np.asarray(reducer.fit_transform(fit_x), dtype=np.float32)
    return {"fit_rows": fit_rows, "fit_xy": coords_fit, "fit_x": fit_x, "center": center,
            "pca_components": None if pca is None else pca.components_.astype(np.float32),
            "pca_mean": None if pca is None else pca.mean_.astype(np.float32), "pca": pca,
            "backend": backend, "fit_s": round(time.perf_counter() - t0, 2), "reducer": reducer}


def fit_from_file(emb_path: str, cfg: UmapConfig, seed: int) -> dict | None:
    """:func:`fit_sample` of the embedding file at ``emb_path`` (a worker process's task), without the
    reducer (the kNN placement does not need it); None when UMAP would not run (too few stars)."""
    from precompute.stages import defined_rows
    emb = np.load(emb_path, mmap_mode="r")
    rows = defined_rows(emb)
    if len(rows) < MIN_UMAP_STARS:
        return None
    fit = fit_sample(emb, rows, cfg, seed)
    fit.pop("reducer")
    fit.pop("pca")
    return fit


def fit_layouts(paths: dict, cfg: UmapConfig, seed: int = 0, client=None) -> dict:
    """Fit the UMAP layouts of several embeddings at once: {name: fit} for ``paths`` {name: .npy path}.

    A seeded umap-learn fit runs on one core, so the layouts are fitted side by side: on the Dask ``client``
    when there is one, else in up to ``os.cpu_count()`` worker processes. A fit that fails is left out (the
    layout is then fitted, or falls back to PCA, in :func:`umap_layout`)."""
    import os
    names = list(paths)
    if not names:
        return {}
    if client is not None:
        futures = {k: client.submit(fit_from_file, str(paths[k]), cfg, seed, pure=False) for k in names}
        results = {}
        for k, f in futures.items():
            try:
                results[k] = f.result()
            except Exception as e:  # noqa: BLE001 -- fitted again in process, with its own error handling
                log.warning("UMAP fit of %s on Dask failed (%s); fitting it here", k, e)
        return {k: v for k, v in results.items() if v is not None}
    workers = min(len(names), os.cpu_count() or 1)
    if workers < 2:
        return {}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    log.info("UMAP: fitting %d layouts side by side in %d processes", len(names), workers)
    results = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {k: pool.submit(fit_from_file, str(paths[k]), cfg, seed) for k in names}
        for k, f in futures.items():
            try:
                results[k] = f.result()
            except Exception as e:  # noqa: BLE001
                log.warning("UMAP fit of %s in a worker process failed (%s); fitting it here", k, e)
    return {k: v for k, v in results.items() if v is not None}


def _umap_layout(embedding, defined: np.ndarray, cfg: UmapConfig, seed: int, progress: bool, runner=None,
                 emb_path=None, fitted: dict | None = None) -> tuple[np.ndarray, dict]:
    n = embedding.shape[0]
    t0 = time.perf_counter()
    fit = fitted if (fitted is not None and cfg.placement == "knn") else fit_sample(embedding, defined, cfg, seed)
    fit_rows, coords_fit, fit_x, center = fit["fit_rows"], fit["fit_xy"], fit["fit_x"], fit["center"]
    reducer, pca, backend = fit.get("reducer"), fit.get("pca"), fit["backend"]
    t_fit = fit["fit_s"]
    out = np.full((n, 2), np.nan, dtype=np.float32)
    out[fit_rows] = coords_fit
    n_rest = len(defined) - len(fit_rows)
    if cfg.placement not in ("knn", "transform"):
        raise ValueError(f"unknown UMAP placement {cfg.placement!r}: use 'knn' or 'transform'")
    if n_rest and cfg.placement == "transform":
        rest = np.setdiff1d(defined, fit_rows, assume_unique=True)
        chunks = [rest[i:i + cfg.chunk] for i in range(0, len(rest), cfg.chunk)]
        if progress:
            from tqdm.auto import tqdm
            chunks = tqdm(chunks, desc="UMAP placement (transform)", unit="chunk")
        for rows in chunks:
            x = np.asarray(embedding[rows], dtype=np.float32) - center
            if pca is not None:
                x = pca.transform(x).astype(np.float32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[rows] = reducer.transform(x)
    elif n_rest:
        # kNN placement of every chunk of rows (the fitted ones are placed too, and then keep their fit).
        from precompute.chunks import ChunkRunner, row_ranges
        payload = {"fit_x": fit_x, "fit_xy": coords_fit, "center": center,
                   "pca_components": fit["pca_components"], "pca_mean": fit["pca_mean"],
                   "k": np.int64(cfg.knn), "token": np.int64(hash((n, len(fit_rows), seed, float(center.sum()))))}
        payload = {k: v for k, v in payload.items() if v is not None}
        # The neighbour index over the fitted stars is built once, here (with every core), and travels to the
        # workers serialised: each Dask worker building its own HNSW on one thread cost ~15 s per layout.
        import faiss
        payload["index_bytes"] = faiss.serialize_index(KnnPlacer(fit_x, coords_fit, cfg.knn).index)
        runner = runner or ChunkRunner(None, progress=progress, desc="UMAP placement (knn)")
        is_fit = np.zeros(n, bool)
        is_fit[fit_rows] = True
        local_cache: dict = {}
        local = lambda a, b, path, pl: {"xy": place_rows_from(embedding, a, b, pl, local_cache)}  # noqa: E731
        for a, b, res in runner.run(place_rows, row_ranges(n, cfg.chunk), args=(str(emb_path), payload),
                                    local_fn=local):
            keep = ~is_fit[a:b]
            out[a:b][keep] = res["xy"][keep]
    info = {"method": "umap", "backend": backend, "n_fit": int(len(fit_rows)), "n_transformed": int(n_rest),
            "placement": cfg.placement if n_rest else "none",
            "pca_dims": None if fit["pca_components"] is None else cfg.pca_dims,
            "fit_s": round(t_fit, 2), "total_s": round(time.perf_counter() - t0, 2)}
    log.info("UMAP done: %s", info)
    return out, info


# A worker's placers, kept between its chunks (the fitted layout travels to each worker once).
_PLACERS: dict = {}


def place_rows(start: int, stop: int, emb_path: str, payload: dict) -> dict:
    """A Dask task: map positions of rows ``start..stop`` of the embedding file (NaN for NaN rows)."""
    emb = np.load(emb_path, mmap_mode="r")
    return {"xy": place_rows_from(emb, start, stop, payload, _PLACERS)}


def place_rows_from(emb, start: int, stop: int, payload: dict, cache: dict) -> np.ndarray:
    token = int(payload["token"])
    placer = cache.get(token)
    if placer is None:
        cache.clear()
        placer = cache[token] = KnnPlacer(payload["fit_x"], payload["fit_xy"], int(payload["k"]),
                                          index_bytes=payload.get("index_bytes"))
    x = np.asarray(emb[start:stop], dtype=np.float32)
    ok = np.isfinite(x).all(axis=1)
    out = np.full((stop - start, 2), np.nan, np.float32)
    if ok.any():
        z = x[ok] - payload["center"]
        if "pca_components" in payload:
            z = ((z - payload["pca_mean"]) @ payload["pca_components"].T).astype(np.float32)
        out[ok] = placer.place(z)
    return out


def umap_backend(choice: str = "auto") -> str:
    """Which UMAP implementation fits the layout: cuML when asked for (an error if it cannot run) or, for
    "auto", when it imports and sees a GPU; umap-learn otherwise."""
    if choice not in ("auto", "cuml", "umap-learn"):
        raise ValueError(f"unknown UMAP backend {choice!r}: use auto, cuml or umap-learn")
    if choice == "umap-learn":
        return choice
    try:
        import cupy
        from cuml.manifold import UMAP  # noqa: F401
        ok = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception as e:  # not installed, no driver, no device
        if choice == "cuml":
            raise ValueError(f"UMAP backend cuml asked for but unavailable ({type(e).__name__}: {e}); "
                             "pip install cuml-cu12 on a GPU machine, or use --device cpu") from e
        return "umap-learn"
    if not ok and choice == "cuml":
        raise ValueError("UMAP backend cuml asked for but no GPU is visible")
    return "cuml" if ok else "umap-learn"


def fit_size(n: int, cfg: UmapConfig) -> int:
    """How many of ``n`` stars fit the UMAP: all up to ``fit_min``, then n/20, capped at ``fit_max``."""
    if n <= cfg.fit_min:
        return n
    return int(min(cfg.fit_max, max(cfg.fit_min, n // 20)))


class KnnPlacer:
    """Place new points on a fitted 2-D layout: the inverse-distance-weighted mean of the layout positions of
    their ``k`` nearest fitted points by cosine distance (FAISS HNSW over the fitted points; exact search when
    there are few)."""

    def __init__(self, fit_x: np.ndarray, fit_xy: np.ndarray, k: int = 10, index_bytes: np.ndarray | None = None):
        import faiss
        self.xy = np.asarray(fit_xy, dtype=np.float64)
        self.k = int(min(k, len(self.xy)))
        if index_bytes is not None:   # built by another process over the same fitted stars
            self.index = faiss.deserialize_index(np.asarray(index_bytes, dtype=np.uint8))
            return
        x = _unit(fit_x)
        if len(x) > 20_000:
            self.index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = 80
            self.index.hnsw.efSearch = 64
        else:
            self.index = faiss.IndexFlatIP(x.shape[1])
        self.index.add(x)

    def place(self, x: np.ndarray) -> np.ndarray:
        from desa_core.index import idw_place
        sims, idx = self.index.search(_unit(x), self.k)
        sims = np.where(idx < 0, np.nan, sims)
        return idw_place(sims, self.xy[np.maximum(idx, 0)])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
