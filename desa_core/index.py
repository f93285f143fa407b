"""FAISS indexes for similarity search over stellar embeddings: build, write, open (memory-mapped), search.

Every index searches **cosine similarity** as an inner product over L2-normalised vectors, and returns
**row ids** (the row position of the star in the artifact set's ``stars.parquet``), not FAISS's internal
positions, so an index over only the stars that have a spectrum still answers in catalogue rows.

Index kinds (``build_index(kind=...)``):

``flat``   exact (``IndexFlatIP`` in an ``IndexIDMap2``); memory-mappable; the reference for recall.
``hnsw``   HNSW graph, 32 links per node (``IndexHNSWFlat``); memory-mappable; ~1 ms per query at 10^6.
``ivf``    inverted lists over exact vectors (``IndexIVFFlat``); memory-mapped; trained on a sample, then filled a
           chunk at a time (on Dask workers in precompute), so it builds in seconds where HNSW takes minutes.
``ivfpq``  inverted lists over product-quantised codes (32 bytes per vector): the only kind whose memory
           stays small at 10^7+ stars; its candidates are re-ranked exactly from the embedding file
           (``rerank`` > 1) because PQ distances alone reach a recall@10 of only ~0.5-0.7.
``auto``   flat while a query stays ~5 ms (at most 10^6 vectors and 64 MiB of them: 5·10^5 stars at the
           small model's 32 dimensions), ivf while the vectors fit in ``ivf_max_bytes`` (4 GiB: 3·10^7 stars at
           32 dimensions), ivfpq beyond. HNSW (a little faster per query) is built only when asked for: on a
           2-core machine it took 120-850 s per 10^6 vectors against ~15 s for IVF.

An approximate index is tuned at build time (HNSW ``efSearch``, IVF ``nprobe``) to the smallest setting
that reaches ``target_recall`` recall@10 against exact search on a sample of queries drawn from the data;
the measured recall is returned in :class:`IndexInfo` (and written to the artifact manifest).

Search restricted to a subset of stars (a dashboard selection): small subsets are searched exactly by
brute force over their vectors; large ones through an ``IDSelectorBatch`` in the FAISS search parameters.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# faiss announces every SIMD library it tries at INFO level; only its warnings matter to a user.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
try:
    import faiss
except ImportError as e:  # pragma: no cover - faiss-cpu is a declared dependency
    raise ImportError("desa_core.index needs faiss (pip install faiss-cpu, or faiss-gpu-cu12)") from e

log = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
FLAT_MAX = 1_000_000      # exact search never beyond this many vectors ...
FLAT_MAX_BYTES = 64 * 2**20  # ... nor beyond this many bytes of vectors: one exact query streams them all
                             # from memory (measured ~3-10 GB/s on 2 cores), so 64 MiB keeps p50 near 5 ms
IVF_MAX_BYTES = 4 * 2**30  # IVF-Flat stores every vector (memory-mapped); beyond this, IVF-PQ codes
BRUTE_FORCE_MAX = 50_000  # subsets up to this size are searched exactly instead of with an ID selector


class IndexError_(Exception):
    """An index file that is missing or unreadable; the message names the file."""


@dataclass
class IndexInfo:
    """What was built; goes into the artifact manifest's ``indexes`` entry."""

    type: str                       # "Flat", "HNSW32", "IVF1024,Flat", "IVF4096,PQ32"
    kind: str                       # flat | hnsw | ivf | ivfpq
    n: int
    dim: int
    recall_at_10: float | None      # vs exact search, measured at build time (1.0 for flat)
    build_s: float
    params: dict = field(default_factory=dict)   # efSearch / nprobe / rerank actually used
    n_recall_queries: int = 0
    gpu: bool = False
    train_s: float | None = None    # IVF kinds: the k-means training alone (the rest is adding and tuning)

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """A float32 copy of ``x`` with unit-length rows (zero rows stay zero)."""
    x = np.array(x, dtype=np.float32, copy=True, order="C")
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def idw_place(similarities: np.ndarray, neighbour_xy: np.ndarray) -> np.ndarray:
    """Map positions of new points from their neighbours' (approx-umap): the inverse-cosine-distance-weighted
    mean of the neighbours' 2-D positions. ``similarities`` (m, k) cosine similarities (a neighbour slot < -1
    or NaN counts for nothing), ``neighbour_xy`` (m, k, 2) -> (m, 2) float32; NaN where no neighbour has a
    position. Used by the UMAP placement of precompute, the dashboard's uploads and ``desa add``."""
    sims = np.asarray(similarities, np.float64)
    xy = np.asarray(neighbour_xy, np.float64)
    d = np.clip(1.0 - sims, 0.0, None)
    w = 1.0 / np.maximum(d, 1e-6)
    ok = np.isfinite(sims) & np.isfinite(xy).all(axis=-1)
    w = np.where(ok, w, 0.0)
    tot = w.sum(axis=1, keepdims=True)
    out = np.einsum("mk,mkc->mc", w, np.where(ok[..., None], xy, 0.0)) / np.maximum(tot, 1e-300)
    return np.where(tot > 0, out, np.nan).astype(np.float32)


def _gpu_count() -> int:
    try:
        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # a CPU build without the symbol, or a broken driver: stay on the CPU
        return 0


def choose_kind(n: int, dim: int = 32, flat_max: int = FLAT_MAX, ivf_max_bytes: int = IVF_MAX_BYTES,
                flat_max_bytes: int = FLAT_MAX_BYTES) -> str:
    """flat while exact search stays fast (n <= flat_max and n*dim*4 <= flat_max_bytes: 5e5 stars at the
    small model's 32 dimensions, 6e4 at 256), ivf while n*dim*4 <= ivf_max_bytes, ivfpq beyond."""
    if n <= flat_max and n * dim * 4 <= flat_max_bytes:
        return "flat"
    return "ivf" if n * dim * 4 <= ivf_max_bytes else "ivfpq"


def _iter_chunks(n: int, chunk: int):
    for i in range(0, n, chunk):
        yield i, min(n, i + chunk)


def build_index(vectors: np.ndarray, ids: np.ndarray | None = None, kind: str = "auto", *,
                flat_max: int = FLAT_MAX, ivf_max_bytes: int = IVF_MAX_BYTES, hnsw_m: int = 32,
                ef_construction: int = 80, nlist: int | None = None, pq_m: int | None = None,
                target_recall: float = 0.95, n_recall_queries: int = 200, rerank: int = 10,
                seed: int = 0, use_gpu: bool | None = None, chunk: int = 200_000,
                progress: bool = False, ivf_adder=None) -> tuple["faiss.Index", IndexInfo]:
    """Build a cosine-similarity index over ``vectors`` (N, d) whose search returns ``ids`` (default 0..N-1).

    ``vectors`` may be a memory-mapped array larger than memory for ``ivfpq``: it is normalised and added
    in chunks of ``chunk`` rows. Rows must be finite (drop stars without the modality before calling).
    Returns the index (search parameters tuned and stored in it) and an :class:`IndexInfo`.
    ``ivf_adder(index, ids, chunk)``: for the IVF kinds, adds every vector to the trained index instead of the
    loop here (precompute passes one that encodes chunks on Dask workers and merges them in row order).
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {INDEX_KINDS}")
    n, dim = int(vectors.shape[0]), int(vectors.shape[1])
    if n == 0:
        raise ValueError("cannot build an index over zero vectors")
    ids = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids has shape {ids.shape}, expected ({n},)")
    if kind == "auto":
        kind = choose_kind(n, dim, flat_max, ivf_max_bytes)
    gpu = (_gpu_count() > 0) if use_gpu is None else bool(use_gpu and _gpu_count() > 0)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    params: dict = {}
    t_train = None

    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        type_name = "Flat"
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = ef_construction
        index = faiss.IndexIDMap2(inner)
        type_name = f"HNSW{hnsw_m}"
        params["efConstruction"] = ef_construction
    else:
        # sqrt(N) lists keeps k-means training affordable on a few cores; at least 39 points per centroid.
        nl = nlist or int(2 ** np.clip(np.round(np.log2(np.sqrt(n))), 4, 16))
        nl = max(1, min(nl, n // 39 if n >= 39 * 16 else 16, n))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nl, faiss.METRIC_INNER_PRODUCT)
            type_name = f"IVF{nl},Flat"
        else:
            m = pq_m or _default_pq_m(dim)
            index = faiss.IndexIVFPQ(quantizer, dim, nl, m, 8, faiss.METRIC_INNER_PRODUCT)
            type_name = f"IVF{nl},PQ{m}"
            params["rerank"] = int(rerank)
        index.own_fields = True
        quantizer.this.disown()
        n_train = int(min(n, max(256 * 40, 64 * nl)))
        train_rows = np.sort(rng.choice(n, size=n_train, replace=False))
        train = normalize_rows(vectors[train_rows])
        log.info("training %s on %d vectors%s", type_name, n_train, " (GPU)" if gpu else "")
        if gpu:
            gi = faiss.index_cpu_to_all_gpus(index)
            gi.train(train)
            index = faiss.index_gpu_to_cpu(gi)
        else:
            index.train(train)
        del train
        t_train = time.perf_counter() - t0
        log.info("trained %s in %.1f s", type_name, t_train)

    if ivf_adder is not None and kind in ("ivf", "ivfpq"):
        ivf_adder(index, ids, chunk)
    else:
        it = _iter_chunks(n, chunk)
        if progress and n > chunk:
            from tqdm.auto import tqdm
            it = tqdm(list(it), desc=f"index {type_name}", unit="chunk")
        for i0, i1 in it:
            index.add_with_ids(normalize_rows(vectors[i0:i1]), ids[i0:i1])

    recall = 1.0 if kind == "flat" else None
    nq = 0
    if kind != "flat":
        qrows = np.sort(rng.choice(n, size=min(n, n_recall_queries), replace=False))
        queries = normalize_rows(vectors[qrows])
        nq = len(queries)
        exact = exact_search(vectors, queries, 10, ids=ids, chunk=chunk)[1]
        recall = _tune(index, kind, queries, exact, target_recall, params, vectors, ids)
    info = IndexInfo(type=type_name, kind=kind, n=n, dim=dim, recall_at_10=None if recall is None else
                     round(float(recall), 4), build_s=round(time.perf_counter() - t0, 3), params=params,
                     n_recall_queries=nq, gpu=gpu, train_s=None if t_train is None else round(t_train, 3))
    log.info("built %s over %d vectors in %.1f s (recall@10 %s)", type_name, n, info.build_s, info.recall_at_10)
    return index, info


def _default_pq_m(dim: int) -> int:
    """One byte per 2 dimensions up to 64 dimensions, per 4 above (at most 64 bytes per vector). Coarser
    codes leave the true neighbours outside even a 100x re-ranked candidate list (measured: PQ8 on 32-d
    reached recall@10 0.93 only at nprobe 256, 39 ms per query, at 10^6 stars)."""
    sub = 2 if dim <= 64 else 4
    for m in (64, 32, 16, 8, 4, 2, 1):
        if dim % m == 0 and dim // m >= min(sub, dim):
            return m
    return 1


def set_search_threads(n: int) -> None:
    """OpenMP threads FAISS uses per search call (process-wide). A server answering one query per request
    should use 1: parallelism then comes from concurrent requests, and a busy machine does not stall every
    query on a thread barrier (measured: 5x lower single-query latency on a loaded 2-core machine)."""
    faiss.omp_set_num_threads(int(n))


def _tune(index, kind, queries, exact, target, params, vectors, ids) -> float:
    """Smallest efSearch / nprobe reaching ``target`` recall@10; the setting is stored in the index."""
    id_to_row = None
    if "rerank" in params:
        id_to_row = _IdRows(ids)
    if kind == "hnsw":
        inner = faiss.downcast_index(index.index)
        grid = [16, 32, 64, 128, 256, 512, 1024]
        attr = "efSearch"
    else:
        inner = faiss.extract_index_ivf(index)
        grid = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if n <= inner.nlist] or [1]
        attr = "nprobe"
    # IVF-PQ: the re-ranking depth matters as much as nprobe; try deeper candidate lists only if needed.
    reranks = [params["rerank"], 3 * params["rerank"], 10 * params["rerank"]] if "rerank" in params else [1]
    best = (0.0, grid[-1], reranks[0])
    for rerank in reranks:
        for value in grid:
            if kind == "hnsw":
                inner.hnsw.efSearch = value
            else:
                inner.nprobe = value
            _, got = search(index, queries, 10, rerank=rerank, vectors=vectors, id_to_row=id_to_row)
            r = recall_at_k(got, exact)
            log.debug("%s=%d rerank=%d: recall@10 %.3f", attr, value, rerank, r)
            if r > best[0] + 1e-9:
                best = (r, value, rerank)
            if r >= target:
                best = (r, value, rerank)
                break
        if best[0] >= target:
            break
    if kind == "hnsw":
        inner.hnsw.efSearch = best[1]
    else:
        inner.nprobe = best[1]
    params[attr] = int(best[1])
    if "rerank" in params:
        params["rerank"] = int(best[2])
    return best[0]


class _IdRows:
    """Maps index ids back to rows of the vector array they were built from (identity when ids == rows)."""

    def __init__(self, ids: np.ndarray):
        self.identity = bool(len(ids) == 0 or (ids[0] == 0 and np.all(np.diff(ids) == 1)))
        if not self.identity:
            self.order = np.argsort(ids, kind="stable")
            self.sorted = ids[self.order]

    def __call__(self, q_ids: np.ndarray) -> np.ndarray:
        if self.identity:
            return q_ids
        pos = np.searchsorted(self.sorted, q_ids)
        return self.order[np.clip(pos, 0, len(self.order) - 1)]


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, ids: np.ndarray | None = None,
                 chunk: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine search of ``queries`` over ``vectors`` by chunked brute force (ground truth).

    Rows of ``vectors`` containing NaN are skipped. Returns (similarities, ids) like :func:`search`.
    """
    q = normalize_rows(queries)
    nq, n = len(q), int(vectors.shape[0])
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    for i0, i1 in _iter_chunks(n, chunk):
        block = normalize_rows(vectors[i0:i1])
        s = q @ block.T
        s[:, ~np.isfinite(block).all(axis=1)] = -np.inf
        block_ids = np.arange(i0, i1, dtype=np.int64) if ids is None else np.asarray(ids[i0:i1], np.int64)
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(block_ids, s.shape)], axis=1)
        kk = min(k, cand_s.shape[1])
        top = np.argpartition(-cand_s, kk - 1, axis=1)[:, :kk]
        best_s = np.take_along_axis(cand_s, top, axis=1)
        best_i = np.take_along_axis(cand_i, top, axis=1)
    return _sorted_result(best_s, best_i)


def _sorted_result(s: np.ndarray, i: np.ndarray):
    order = np.argsort(-s, axis=1, kind="stable")
    s = np.take_along_axis(s, order, axis=1).astype(np.float32)
    i = np.take_along_axis(i, order, axis=1).astype(np.int64)
    missing = ~np.isfinite(s) | (i < 0)
    s[missing] = np.nan
    i[missing] = -1
    return s, i


def write_index(index: "faiss.Index", path: str | os.PathLike) -> Path:
    """Write an index through a temporary file in the same folder and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600 files; readers may run as another user
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def open_index(path: str | os.PathLike, mmap: bool = True) -> "faiss.Index":
    """Read an index; memory-mapped and read-only where the type allows (Flat, HNSW), so processes share
    its pages and opening is instant (Flat, HNSW, IVF-Flat and IVF-PQ lists with this FAISS); a type that cannot
    be mapped falls back to an ordinary read."""
    path = Path(path)
    if not path.is_file():
        raise IndexError_(f"{path}: index file missing")
    if mmap:
        try:
            return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as e:
            log.debug("%s: cannot be memory-mapped (%s); reading it into memory", path, e)
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise IndexError_(f"{path}: not a readable FAISS index ({str(e).splitlines()[0]})") from e


def index_ids(index: "faiss.Index") -> np.ndarray:
    """The row ids held by an index built with :func:`build_index` (sorted)."""
    idmap = _as_idmap(index)
    if idmap is not None:
        return np.sort(faiss.vector_to_array(idmap.id_map).astype(np.int64))
    ivf = faiss.extract_index_ivf(index)
    invl = ivf.invlists
    out = [faiss.rev_swig_ptr(invl.get_ids(l), invl.list_size(l)).copy() for l in range(ivf.nlist)
           if invl.list_size(l) > 0]
    return np.sort(np.concatenate(out).astype(np.int64)) if out else np.zeros(0, np.int64)


def _as_idmap(index):
    idx = faiss.downcast_index(index)
    return idx if isinstance(idx, (faiss.IndexIDMap2, faiss.IndexIDMap)) else None


def _is_exact(index) -> bool:
    idmap = _as_idmap(index)
    inner = faiss.downcast_index(idmap.index) if idmap is not None else faiss.downcast_index(index)
    return isinstance(inner, faiss.IndexFlat)


def _search_params(index, selector=None, min_ef: int = 0):
    """Search parameters carrying the index's own tuned setting (and an optional ID selector)."""
    idmap = _as_idmap(index)
    inner = faiss.downcast_index(idmap.index) if idmap is not None else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        p = faiss.SearchParametersHNSW()
        p.efSearch = max(inner.hnsw.efSearch, int(min_ef))
    elif isinstance(inner, faiss.IndexIVF):
        p = faiss.SearchParametersIVF()
        p.nprobe = inner.nprobe
    else:
        p = faiss.SearchParameters()
    if selector is not None:
        p.sel = selector
    return p


def search(index: "faiss.Index", queries: np.ndarray, k: int = 10, subset_ids=None, *,
           vectors: np.ndarray | None = None, rerank: int = 1, brute_force_max: int = BRUTE_FORCE_MAX,
           id_to_row=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours of each query: (similarities (nq, k) float32, ids (nq, k) int64).

    ``queries`` need not be normalised. ``subset_ids`` restricts the search to those row ids (a selection):
    up to ``brute_force_max`` of them are searched exactly, over ``vectors`` (rows = ids, e.g. the
    memory-mapped embedding) when given, else over vectors reconstructed from an exact index; a selection
    holding at least 5 % of the index is answered by a wider unrestricted search filtered to the selection;
    other ones go through an ID selector in the index. ``rerank`` > 1 (IVF-PQ) fetches ``rerank * k``
    candidates and re-scores them exactly from ``vectors``. Where fewer than ``k`` neighbours exist, ids
    are -1 and similarities NaN.
    """
    q = normalize_rows(queries)
    if k <= 0:
        raise ValueError("k must be positive")
    if subset_ids is None:
        return _plain_search(index, q, k, _search_params(index), vectors, rerank, id_to_row)
    subset = np.asarray(subset_ids, dtype=np.int64).ravel()
    if len(subset) > 1 and not np.all(subset[1:] > subset[:-1]):  # a selection usually arrives sorted
        subset = np.unique(subset)
    if len(subset) == 0:
        return _sorted_result(np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))
    if len(subset) <= brute_force_max and (vectors is not None or _is_exact(index)):
        return _subset_brute_force(index, q, k, subset, vectors)
    out_s = np.full((len(q), k), np.nan, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    todo = np.arange(len(q))
    frac = len(subset) / max(index.ntotal, 1)
    if frac >= POST_FILTER_MIN_FRACTION and rerank <= 1:
        # Post-filtering: among the 3k/frac nearest of all stars, about 3k are in the selection.
        k_wide = int(min(index.ntotal, np.ceil(3 * k / frac) + 10))
        s_w, i_w = _plain_search(index, q, k_wide, _search_params(index, min_ef=k_wide), vectors, 1, id_to_row)
        pos = np.clip(np.searchsorted(subset, i_w), 0, len(subset) - 1)
        member = (i_w >= 0) & (subset[pos] == i_w)
        enough = member.sum(axis=1) >= k
        for r in np.flatnonzero(enough):
            cols = np.flatnonzero(member[r])[:k]
            out_s[r], out_i[r] = s_w[r, cols], i_w[r, cols]
        todo = np.flatnonzero(~enough)
    if len(todo):
        selector = faiss.IDSelectorBatch(subset)
        s_t, i_t = _plain_search(index, q[todo], k, _search_params(index, selector), vectors, rerank, id_to_row)
        out_s[todo], out_i[todo] = s_t, i_t
    return out_s, out_i


POST_FILTER_MIN_FRACTION = 0.05


def _plain_search(index, q, k, params, vectors, rerank, id_to_row):
    kk = k * max(1, rerank) if vectors is not None else k
    kk = min(kk, max(index.ntotal, 1))
    s, i = index.search(q, kk, params=params)
    if rerank > 1 and vectors is not None:
        return _rerank(q, i, k, vectors, id_to_row)
    if kk < k:
        s = np.pad(s, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        i = np.pad(i, ((0, 0), (0, k - kk)), constant_values=-1)
    s = s[:, :k].copy()
    i = i[:, :k].copy()
    s[i < 0] = -np.inf
    return _sorted_result(s, i)


def _subset_brute_force(index, q, k, subset, vectors):
    if vectors is not None:
        subset = subset[(subset >= 0) & (subset < len(vectors))]
        block = np.asarray(vectors[subset], dtype=np.float32)
    else:
        idmap = _as_idmap(index)
        held = faiss.vector_to_array(idmap.id_map).astype(np.int64)
        subset = subset[np.isin(subset, held)]
        block = np.vstack([idmap.reconstruct(int(i)) for i in subset]) if len(subset) else \
            np.zeros((0, q.shape[1]), np.float32)
    # Cosine without normalising a copy of the block: divide the dot products by the row norms instead.
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (q @ block.T) / norms[None, :]
    # Rows without this modality (NaN) or all-zero are not in the index either: never return them.
    s[:, ~(np.isfinite(norms) & (norms > 0))] = -np.inf
    ids = subset
    if s.shape[1] < k:
        s = np.pad(s, ((0, 0), (0, k - s.shape[1])), constant_values=-np.inf)
        ids = np.pad(subset, (0, k - len(subset)), constant_values=-1)
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return _sorted_result(np.take_along_axis(s, top, axis=1), ids[top])


def _rerank(q, cand_ids, k, vectors, id_to_row):
    nq = len(q)
    out_s = np.full((nq, k), -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    for r in range(nq):
        c = cand_ids[r]
        c = c[c >= 0]
        if len(c) == 0:
            continue
        rows = id_to_row(c) if id_to_row is not None else c
        order = np.argsort(rows)
        block = normalize_rows(vectors[rows[order]])
        s = block @ q[r]
        s[~np.isfinite(s)] = -np.inf
        top = np.argsort(-s)[:k]
        out_s[r, :len(top)] = s[top]
        out_i[r, :len(top)] = c[order][top]
    return _sorted_result(out_s, out_i)


def recall_at_k(approx, exact, queries: np.ndarray | None = None, k: int = 10) -> float:
    """Mean fraction of the exact top-k neighbours that the approximate search also returns.

    ``approx`` and ``exact`` are either (nq, k) id arrays, or indexes searched with ``queries``.
    """
    def ids_of(x):
        if isinstance(x, np.ndarray):
            return x[:, :k]
        if queries is None:
            raise ValueError("recall_at_k: queries are needed to search an index")
        return search(x, queries, k)[1]

    a, e = ids_of(approx), ids_of(exact)
    hits = [len(set(ar[ar >= 0]) & set(er[er >= 0])) / max(1, int((er >= 0).sum())) for ar, er in zip(a, e)]
    return float(np.mean(hits)) if hits else float("nan")
