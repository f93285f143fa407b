"""`desa precompute`: embed every star, build FAISS indexes and maps, write the artifact set.

    desa precompute --survey data/survey --run runs/small --out artifacts/default [--workers 2]
    desa precompute --synthetic 1000000 --out artifacts/bench-1e6          # benchmark set, no model

Stages (each skipped when its output is complete and valid for the current inputs; see stages.py):

    embed | synthetic    ART/emb_{desa,light_curve,spectrum}.npy   (+ ART/_work/catalog.parquet, synthetic)
    index_<name>         ART/index_<name>.faiss, one per embedding
    maps                 ART/_work/umap.npy
    stars                ART/stars.parquet
    manifest             ART/manifest.json, written last (a folder without it is unfinished)

Killing the process at any moment leaves finished stages intact and at most a temporary file, which the next
run removes; running the same command again continues where it stopped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np

from desa_core.artifacts import (EMBEDDING_NAMES, KIND_SURVEY, KIND_SYNTHETIC, MANIFEST, embedding_file,
                                 write_manifest)
from desa_core.data.store import SurveyStoreError, sha256_file
from precompute import stages as S
from precompute.chunks import ChunkRunner
from precompute.maps import UmapConfig, fit_layouts, fit_size, umap_layout

log = logging.getLogger(__name__)


LOCK = ".precompute.lock"
# Layouts are fitted in separate worker processes only from this many stars per fit: a process starts in ~10 s
# (imports, numba), which a 5·10^4-star fit (25-65 s) repays and a small one does not.
SIDE_BY_SIDE_MIN_FIT = 20_000


class PrecomputeError(ValueError):
    """Bad arguments or inputs for precompute; the message names the file or option."""


def run_precompute(survey=None, run=None, out="artifacts/default", synthetic: int | None = None,
                   workers: int = 0, scheduler: str | None = None, seed: int = 0, *,
                   embedder=None, index_kind: str = "auto", index_options: dict | None = None,
                   umap: UmapConfig | None = None, dims: dict | None = None, batch_size: int | None = None,
                   chunk_rows: int | None = None, progress: bool = True, verify: bool = False,
                   device: str | None = None) -> Path:
    """Build (or finish, or bring up to date) the artifact set at ``out``; returns its path.

    Either ``survey`` + ``run`` (a survey store and a trained run folder) or ``synthetic=N`` (a labelled
    benchmark set of N stars, no model). ``workers``/``scheduler`` run the embedding stage on Dask.
    ``embedder`` (an object with ``embed_store``, ``dims``, ``fingerprint``, ``config_name``) replaces
    ``Embedder.from_run(run)`` for library callers. ``verify`` re-checks stage outputs by checksum.
    ``device``: the one GPU switch. "cuda" runs the model on the GPU, trains FAISS IVF indexes on it (with a
    faiss GPU build) and fits UMAP with cuML (when installed); "cpu" keeps everything on the CPU; None (default)
    uses a GPU wherever one is visible and the library for it is installed.
    """
    if device not in (None, "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise PrecomputeError(f"--device must be cpu or cuda, not {device!r}")
    if device and str(device).startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise PrecomputeError("--device cuda: torch sees no GPU here (use --device cpu, or a CUDA build of torch)")
    if device == "cpu":
        umap = dataclasses.replace(umap or UmapConfig(), backend="umap-learn")
        index_options = {**(index_options or {}), "use_gpu": False}
    out = Path(out).resolve()
    if synthetic is not None:
        if survey is not None or embedder is not None:
            raise PrecomputeError("--synthetic builds a benchmark set without a survey or model; drop --survey/--run")
        if int(synthetic) < 1:
            raise PrecomputeError(f"--synthetic needs at least 1 star, got {synthetic}")
    elif survey is None or (run is None and embedder is None):
        raise PrecomputeError("precompute needs --survey and --run (or --synthetic N for a benchmark set)")
    if workers < 0:
        raise PrecomputeError(f"--workers must be >= 0, got {workers}")
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        return _run(out, survey, run, synthetic, workers, scheduler, seed, embedder, index_kind, index_options,
                    umap, dims, batch_size, chunk_rows, progress, verify, device)


@contextlib.contextmanager
def _exclusive(out: Path):
    """One precompute per artifact folder at a time (the OS drops the lock when a process dies)."""
    import fcntl
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PrecomputeError(f"{out}: another precompute is writing this artifact folder") from None
        yield
    finally:
        os.close(fd)


class _Dask:
    """The run's one Dask connection (a LocalCluster of ``workers`` processes or an existing ``scheduler``),
    opened on first use and shared by the stages; without either, stages run in this process."""

    def __init__(self, workers: int, scheduler: str | None):
        self.workers, self.scheduler = int(workers), scheduler
        self._pool = ChunkRunner(None, workers=workers, scheduler=scheduler, progress=False)

    @property
    def wanted(self) -> bool:
        return self.workers > 0 or bool(self.scheduler)

    @property
    def where(self) -> str:
        return (f"on Dask ({self.scheduler or f'{self.workers} local workers'})" if self.wanted
                else "in process")

    def client(self):
        """The Dask client when the run uses Dask, else None."""
        return self._pool.client() if self.wanted else None

    def runner(self, out: Path, name: str, desc: str, progress: bool) -> ChunkRunner:
        """A resumable chunk runner for one stage: its finished chunks are kept in ART/_work/chunks/NAME."""
        return ChunkRunner(out / S.WORK_DIR / "chunks" / name, client=self.client(),
                           progress=progress, desc=desc)

    def close(self):
        self._pool.close()


def _run(out, survey, run, synthetic, workers, scheduler, seed, embedder, index_kind, index_options, umap, dims,
         batch_size, chunk_rows, progress, verify, device=None) -> Path:
    dask = _Dask(workers, scheduler)
    try:
        return _stages(out, survey, run, synthetic, seed, embedder, index_kind, index_options, umap, dims,
                       batch_size, chunk_rows, progress, verify, device, dask)
    finally:
        dask.close()


def _stages(out, survey, run, synthetic, seed, embedder, index_kind, index_options, umap, dims, batch_size,
            chunk_rows, progress, verify, device, dask) -> Path:
    S.clean_temporaries(out)
    book = S.StageBook(out, verify=verify)
    umap_cfg = umap or UmapConfig()
    t_start = time.perf_counter()

    # ------------------------------------------------------------------ stage 1: embeddings
    if synthetic is not None:
        n = int(synthetic)
        from precompute.synthetic import TEMPLATE_MAX, model_dims
        dims = {k: int(v) for k, v in (dims or model_dims("small")).items()}
        template_n = min(n, TEMPLATE_MAX)
        chunk = int(chunk_rows or 250_000)
        emb_stage = "synthetic"
        emb_fp = S.fingerprint({"stage": emb_stage, "v": S.STAGE_VERSIONS["synthetic"], "n": n, "seed": seed,
                                "dims": dims, "chunk_rows": chunk, "template": template_n})
        catalog_fp = emb_fp
        kind, simulated, survey_info, run_info = KIND_SYNTHETIC, True, None, None
        _invalidate_manifest_if_stale(out, book, emb_stage, emb_fp)
        if book.done(emb_stage, emb_fp):
            log.info("stage %s: up to date, skipping", emb_stage)
        else:
            log.info("stage %s: generating %d synthetic benchmark stars", emb_stage, n)
            t0 = time.perf_counter()
            outputs = S.generate_synthetic(out, n, dims, seed, chunk_rows=chunk, progress=progress,
                                           template_max=template_n)
            book.record(emb_stage, emb_fp, outputs, time.perf_counter() - t0)

        def catalog_batches():
            import pyarrow.parquet as pq
            pf = pq.ParquetFile(out / S.WORK_DIR / "catalog.parquet")
            for rg in range(pf.num_row_groups):
                yield pf.read_row_group(rg).to_pandas()
    else:
        store, survey_path = _open_survey(survey)
        n = len(store)
        survey_sha = sha256_file(survey_path / "manifest.json")
        if embedder is None:
            embedder = _load_embedder(run, device)
        run_path = Path(run).resolve() if run is not None else None
        dims = {k: int(v) for k, v in embedder.dims.items()}
        emb_stage = "embed"
        emb_fp = S.fingerprint({"stage": emb_stage, "v": S.STAGE_VERSIONS["embed"], "survey": survey_sha,
                                "model": str(embedder.fingerprint), "dims": dims})
        catalog_fp = survey_sha
        kind, simulated = KIND_SURVEY, bool(store.is_simulated)
        survey_info = {"path": str(survey_path), "manifest_sha256": survey_sha,
                       "seed": _survey_seed(store.manifest),
                       "source": store.manifest.get("source")}
        run_info = {"path": str(run_path) if run_path else None, "config": getattr(embedder, "config_name", None),
                    "fingerprint": str(embedder.fingerprint),
                    # what the embedding called DESA was aligned with (DualFormerConfig.objective)
                    "objective": getattr(getattr(getattr(embedder, "config", None), "dualformer", None),
                                         "objective", None)}
        _invalidate_manifest_if_stale(out, book, emb_stage, emb_fp)
        if book.done(emb_stage, emb_fp):
            log.info("stage embed: up to date, skipping")
        else:
            t0 = time.perf_counter()
            if dask.wanted and run_path is None:
                raise PrecomputeError("--workers/--scheduler need --run: each Dask worker loads the model itself")
            log.info("stage embed: %d stars %s", n, dask.where)
            runner = dask.runner(out, f"embed-{emb_fp}", "embedding (chunks)", progress)
            S.embed_stage(embedder, store, survey_path, run_path, out, runner,
                          chunk_rows=int(chunk_rows or (2048 if dask.wanted else 4096)), batch_size=batch_size)
            book.record(emb_stage, emb_fp, [embedding_file(k) for k in EMBEDDING_NAMES],
                        time.perf_counter() - t0)

        def catalog_batches():
            step = 500_000
            for i in range(0, n, step):
                yield store.catalog.iloc[i:i + step]

    names = [k for k in EMBEDDING_NAMES if k in dims] + [k for k in dims if k not in EMBEDDING_NAMES]
    # A survey without light curves (LAMOST-style, spectra only) or without spectra has no stars in that stream:
    # no index, no map, and the set does not offer it (the DESA embedding is defined for every star).
    empty = [k for k in names if k != "desa" and not S.has_defined_row(np.load(out / embedding_file(k), mmap_mode="r"))]
    for k in empty:
        log.info("no star has a %s embedding (a survey without that modality): no index or map for it", k)
    names = [k for k in names if k not in empty]

    # ------------------------------------------------------------------ stage 1b: predicted properties
    predict_fp = None
    if synthetic is None and getattr(embedder, "predictor", None) is not None:
        predict_fp = S.fingerprint({"stage": "predict", "v": S.STAGE_VERSIONS["predict"], "embed": emb_fp,
                                    "heads": _heads_sha(run)})
        if book.done("predict", predict_fp):
            log.info("stage predict: up to date, skipping")
        else:
            _drop_manifest(out)
            log.info("stage predict: the run's heads on %d stars", n)
            t0 = time.perf_counter()
            rel = S.write_predictions(out, embedder, progress=progress)
            book.record("predict", predict_fp, [rel], time.perf_counter() - t0)

    # ------------------------------------------------------------------ stage 2: indexes
    index_entries = {}
    for name in names:
        stage = f"index_{name}"
        fp = S.fingerprint({"stage": "index", "v": S.STAGE_VERSIONS["index"], "embed": emb_fp, "kind": index_kind,
                            "options": index_options or {}, "seed": seed})
        rec = book.done(stage, fp)
        if rec:
            log.info("stage %s: up to date, skipping", stage)
        else:
            _drop_manifest(out)
            log.info("stage %s: building", stage)
            t0 = time.perf_counter()
            runner = dask.runner(out, f"index-{fp}-{name}", f"index {name} (chunks)", progress) if dask.wanted \
                else None
            entry = S.build_one_index(out, name, kind=index_kind, seed=seed, progress=progress, runner=runner,
                                      **(index_options or {}))
            rec = book.record(stage, fp, [entry["file"]], time.perf_counter() - t0, index=entry)
        index_entries[name] = rec["index"]

    # ------------------------------------------------------------------ stage 3: maps
    maps_fp = S.fingerprint({"stage": "maps", "v": S.STAGE_VERSIONS["maps"], "embed": emb_fp,
                             "umap": umap_cfg.to_dict(), "seed": seed})
    rec = book.done("maps", maps_fp)
    if rec:
        log.info("stage maps: up to date, skipping")
    else:
        _drop_manifest(out)
        t0 = time.perf_counter()
        rels, infos = [], {}
        layout_names = [k for k in S.MAP_COLUMNS if k in names]
        fits = {}
        # each seeded fit runs on one core: fit the layouts side by side (on the Dask workers, or in worker
        # processes when the fits are large enough to pay for starting them), then place the stars
        big = fit_size(n, umap_cfg) >= SIDE_BY_SIDE_MIN_FIT
        if umap_cfg.placement == "knn" and len(layout_names) > 1 and n >= umap_cfg.fit_min and (dask.wanted or big):
            fits = fit_layouts({k: out / embedding_file(k) for k in layout_names}, umap_cfg, seed=seed,
                               client=dask.client())
        for name in layout_names:
            path = out / embedding_file(name)
            emb = np.load(path, mmap_mode="r")
            log.info("stage maps: UMAP of the %s embedding (placement %s)", name, dask.where)
            runner = dask.runner(out, f"maps-{maps_fp}-{name}", f"UMAP placement ({name})", progress)
            xy, infos[name] = umap_layout(emb, umap_cfg, seed=seed, progress=progress, runner=runner, emb_path=path,
                                          fitted=fits.get(name))
            infos[name]["fitted_alongside_other_layouts"] = name in fits
            rels.append(S.save_map(out, xy, name))
            runner.clear()
        rec = book.record("maps", maps_fp, rels, time.perf_counter() - t0, umap=infos["desa"], layouts=infos)
    umap_info = rec.get("umap", {})
    layout_info = rec.get("layouts", {"desa": umap_info})

    # ------------------------------------------------------------------ stage 4: stars table
    stars_fp = S.fingerprint({"stage": "stars", "v": S.STAGE_VERSIONS["stars"], "catalog": catalog_fp,
                              "maps": maps_fp, "predict": predict_fp})
    if book.done("stars", stars_fp):
        log.info("stage stars: up to date, skipping")
    else:
        _drop_manifest(out)
        t0 = time.perf_counter()
        layouts = {name: np.load(out / S.map_file(name)) for name in layout_info}
        predictions = None
        if predict_fp is not None:
            with np.load(out / S.PREDICTIONS_FILE) as z:
                predictions = {k: z[k] for k in z.files}
        embedded = {}
        for name in names:
            if name != "desa":   # the DESA embedding is defined for every star
                ok = np.zeros(n, bool)
                ok[S.defined_rows(np.load(out / embedding_file(name), mmap_mode="r"))] = True
                embedded[name] = ok
        log.info("stage stars: the star table and its column store (columns %s)", dask.where)
        rels = S.write_star_table(out, catalog_batches, layouts, predictions, embedded, client=dask.client())
        book.record("stars", stars_fp, rels, time.perf_counter() - t0)

    # ------------------------------------------------------------------ stage 5: manifest
    stage_names = [emb_stage] + (["predict"] if predict_fp else []) + [f"index_{k}" for k in names] + ["maps", "stars"]
    dims = {k: v for k, v in dims.items() if k in names}
    records = {s: _read_record(book, s) for s in stage_names}
    files = {}
    for s in stage_names:
        for rel, meta in records[s]["outputs"].items():
            if not rel.startswith(S.WORK_DIR + "/"):
                files[rel] = meta
    embeddings = {k: {"file": embedding_file(k), "dim": int(dims[k]), "n_defined": int(index_entries[k]["n"])}
                  for k in names}
    manifest = {
        "kind": kind,
        "simulated": simulated,
        "label": ("SYNTHETIC BENCHMARK SET: catalogue-like stars and random-projection embeddings, no model, "
                  "not science" if kind == KIND_SYNTHETIC else
                  ("simulated survey: credible physics, not real stars" if simulated else "survey")),
        "survey": survey_info,
        "run": run_info,
        "n_stars": int(n),
        "embeddings": embeddings,
        "indexes": index_entries,
        "maps": {**{("umap" if name == "desa" else f"umap_{'lc' if name == 'light_curve' else 'spec'}"):
                    {"columns": list(S.MAP_COLUMNS[name]), "source": name, **umap_cfg.to_dict(), **info}
                    for name, info in layout_info.items()},
                 # the page draws the observed columns when the star table has them, else the catalogue's
                 "cmd": {"columns": ["bp_rp0", "abs_g0"], "fallback": ["bp_rp", "abs_g"]},
                 "hr": {"columns": ["teff_obs", "log_lum_obs"], "fallback": ["teff", "log_lum"]}},
        "predictions": ({"columns": list(predictions_columns(out)), "from": "the run's heads (binary, age) and "
                         "the encoders' quantile heads (Teff, logg, [Fe/H] from the spectrum; Prot from the light "
                         "curve)"} if predict_fp else None),
        "stages": {s: {"wall_s": records[s]["wall_s"], "inputs": records[s]["inputs"]} for s in stage_names},
        "files": files,
        "code_version": _code_version(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": seed,
    }
    if synthetic is not None:
        manifest["synthetic"] = {"n": int(n), "seed": seed, "dims": dims,
                                 "template_stars": template_n,
                                 "population": "survey simulator template, resampled with jitter beyond "
                                               f"{template_n} stars (precompute/synthetic.py)"}
    write_manifest(out, manifest)
    log.info("artifact set complete: %s (%d stars, %.1f s this run)", out, n, time.perf_counter() - t_start)
    return out


def predictions_columns(out: Path) -> tuple:
    with np.load(out / S.PREDICTIONS_FILE) as z:
        return tuple(z.files)


def _heads_sha(run) -> str | None:
    """The heads checkpoint's sha256 (the run fingerprint covers the encoders and the DualFormer only)."""
    if run is None:
        return None
    from desa_core.rundir import RunDir
    p = RunDir(run).heads_path
    return sha256_file(p) if p.is_file() else None


def _code_version() -> str:
    try:
        from importlib.metadata import version
        return version("desa-explorer")
    except Exception:  # running from a source tree that was never installed
        import desa_core
        return str(getattr(desa_core, "__version__", "unknown"))


def _survey_seed(manifest: dict):
    if "seed" in manifest:
        return manifest["seed"]
    gen = manifest.get("generator")
    return gen.get("seed") if isinstance(gen, dict) else None


def _read_record(book, stage):
    import json
    p = book._path(stage)
    if not p.is_file():
        raise PrecomputeError(f"{p}: stage record missing after the stage ran")
    return json.loads(p.read_text())


def _drop_manifest(out: Path) -> None:
    """The set is about to change: remove its manifest first, so no reader mistakes it for finished."""
    m = out / MANIFEST
    if m.exists():
        log.info("%s: outputs are being recomputed; the set is unfinished until this run completes", out)
        m.unlink()


def _invalidate_manifest_if_stale(out: Path, book, stage: str, fp: str) -> None:
    if not book.done(stage, fp):
        _drop_manifest(out)


def _open_survey(survey):
    from desa_core.data.store import SurveyStore
    path = Path(survey).resolve()
    try:
        return SurveyStore.open(path), path
    except SurveyStoreError as e:
        raise PrecomputeError(str(e)) from e


def _load_embedder(run, device=None):
    run_path = Path(run)
    if not run_path.is_dir():
        raise PrecomputeError(f"{run_path}: no run folder here; train one with `desa train`")
    try:
        from desa_core.models.inference import Embedder
    except ImportError as e:
        raise PrecomputeError(f"cannot load the model code (desa_core.models.inference): {e}") from e
    return Embedder.from_run(run_path, device=device)
