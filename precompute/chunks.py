"""Chunked, resumable stage work, in this process or on Dask (issue 14).

A heavy stage (embedding the survey, placing stars on a UMAP layout, adding vectors to an IVF index) is a list
of tasks over row ranges ``[start, stop)``. :class:`ChunkRunner` runs them

* in this process (``workers=0``, the default), or on a Dask cluster: a ``LocalCluster`` of ``workers``
  processes, or an existing scheduler (``scheduler="tcp://host:8786"``); the function and its arguments must
  then be importable / picklable (top-level functions reading the memory-mapped store or artifact files
  themselves, so only row ranges travel to the workers, and the results travel back);
* resumably: each finished chunk's result (a dict of arrays) is saved as ``<dir>/<start>-<stop>.npz`` (written
  under a temporary name, then renamed). A run killed at any moment keeps every finished chunk; the next run with
  the same inputs (the stage's fingerprint names the folder) loads them instead of recomputing, and the stage
  removes the folder once its output is committed. Peak memory is a few chunks' results, whatever n is.

    runner = ChunkRunner(ART / "_work" / "chunks" / f"maps-{fp}", workers=2)
    for start, stop, result in runner.run(place_rows, [(0, 50000), (50000, 100000)], args=(path, payload)):
        out[start:stop] = result["xy"]
    runner.close()
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

log = logging.getLogger(__name__)


class ChunkRunner:
    """Runs ``fn(start, stop, *args) -> dict[str, np.ndarray]`` over row ranges (see the module doc)."""

    def __init__(self, folder: str | os.PathLike | None, workers: int = 0, scheduler: str | None = None,
                 client=None, progress: bool = True, desc: str = "chunks"):
        self.folder = Path(folder) if folder is not None else None
        self.workers, self.scheduler = int(workers), scheduler
        self._client, self._own_client, self._cluster = client, False, None
        self.progress, self.desc = progress, desc
        self.computed = 0    # chunks computed in this run (the rest were loaded from earlier runs)
        self.loaded = 0

    @property
    def on_dask(self) -> bool:
        return self._client is not None or self.workers > 0 or bool(self.scheduler)

    def client(self):
        """The Dask client (created on first use: a LocalCluster, or a connection to the scheduler)."""
        if self._client is None:
            import dask
            from distributed import Client, LocalCluster
            if self.scheduler:
                self._client = Client(self.scheduler)
                log.info("%s on the Dask cluster at %s", self.desc, self.scheduler)
                warn_malloc_trim(self._client)
            else:
                # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which hands every freed block
                # above 64 KiB back to the kernel: the embedder then ran at 202 stars/s per worker instead of
                # 532 (torch and numpy allocate and free large buffers every batch). Our workers keep glibc's
                # own adaptive threshold. (The nanny also writes its variables into this process's own
                # environment and leaves them there, where the next cluster's workers would inherit them.)
                with _glibc_trim_for_workers(), dask.config.set({f"{NANNY_ENV}.MALLOC_TRIM_THRESHOLD_": None}):
                    self._cluster = LocalCluster(n_workers=max(1, self.workers), threads_per_worker=1,
                                                 processes=True, dashboard_address=None,
                                                 silence_logs=logging.WARNING)
                self._client = Client(self._cluster)
                log.info("%s on a local Dask cluster of %d worker processes", self.desc, max(1, self.workers))
            self._own_client = True
        return self._client

    def close(self):
        if self._own_client and self._client is not None:
            self._client.close()
            if self._cluster is not None:
                self._cluster.close()
        self._client = self._cluster = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ------------------------------------------------------------------------------------- chunk files
    def _path(self, start: int, stop: int) -> Path | None:
        return None if self.folder is None else self.folder / f"{start}-{stop}.npz"

    def _load(self, start: int, stop: int) -> dict | None:
        p = self._path(start, stop)
        if p is None or not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError):   # a damaged chunk file: compute it again
            log.warning("%s: unreadable chunk file, recomputing it", p)
            return None

    def _save(self, start: int, stop: int, result: dict) -> None:
        p = self._path(start, stop)
        if p is None:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **{k: np.asarray(v) for k, v in result.items()})
            os.replace(tmp, p)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def clear(self) -> None:
        """Remove the chunk files (after the stage's output is committed)."""
        if self.folder is not None and self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)

    # --------------------------------------------------------------------------------------------- run
    def run(self, fn: Callable, ranges: Iterable[tuple[int, int]], args: tuple = (),
            local_fn: Callable | None = None) -> Iterator[tuple[int, int, dict]]:
        """Yield ``(start, stop, result)`` for every range (saved chunks first, then as they finish).
        ``local_fn`` (a closure over objects already in memory, e.g. a loaded model) replaces ``fn`` in
        process; ``fn`` (top-level, picklable) is what Dask workers run."""
        ranges = [(int(a), int(b)) for a, b in ranges]
        todo = []
        bar = None
        if self.progress and len(ranges) > 1:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(ranges), desc=self.desc, unit="chunk")
        try:
            for a, b in ranges:
                got = self._load(a, b)
                if got is None:
                    todo.append((a, b))
                else:
                    self.loaded += 1
                    if bar is not None:
                        bar.update(1)
                    yield a, b, got
            if self.loaded:
                log.info("%s: %d of %d chunks kept from an earlier run", self.desc, self.loaded, len(ranges))
            if not todo:
                return
            if self.on_dask:
                yield from self._run_dask(fn, todo, args, bar)
            else:
                f = local_fn or fn
                for a, b in todo:
                    res = f(a, b, *args)
                    self._save(a, b, res)
                    self.computed += 1
                    if bar is not None:
                        bar.update(1)
                    yield a, b, res
        finally:
            if bar is not None:
                bar.close()

    def _run_dask(self, fn, todo, args, bar):
        from distributed import as_completed
        client = self.client()
        t0 = time.perf_counter()
        # Arguments that are large (a fitted layout, a trained index) are sent to each worker once.
        sent = tuple(client.scatter(x, broadcast=True) if _is_large(x) else x for x in args)
        futures, span = [], {}
        for a, b in todo:
            f = client.submit(fn, a, b, *sent, pure=False)
            futures.append(f)
            span[f.key] = (a, b)
        for fut in as_completed(futures):
            a, b = span[fut.key]
            res = fut.result()
            fut.release()
            self._save(a, b, res)
            self.computed += 1
            if bar is not None:
                bar.update(1)
            yield a, b, res
        log.info("%s: %d chunks on Dask in %.1f s", self.desc, len(todo), time.perf_counter() - t0)


NANNY_ENV = "distributed.nanny.pre-spawn-environ"
TRIM_VAR = "MALLOC_TRIM_THRESHOLD_"
SLOW_TRIM_BYTES = 1 << 24   # a trim threshold below 16 MiB makes the workers return memory the next batch needs


@contextmanager
def _glibc_trim_for_workers():
    saved = os.environ.pop(TRIM_VAR, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[TRIM_VAR] = saved


def _worker_malloc_trim():
    return os.environ.get(TRIM_VAR)


def warn_malloc_trim(client) -> list[str]:
    """Workers of an existing cluster started by Dask's nanny default to MALLOC_TRIM_THRESHOLD_=65536 (2.6x
    slower embedding measured here). Logs a warning naming those workers and the fix; returns their addresses."""
    try:
        found = client.run(_worker_malloc_trim)
    except Exception:  # noqa: BLE001 -- a check, never a reason to fail the run
        return []
    slow = sorted(w for w, v in found.items() if v is not None and v.strip().isdigit() and int(v) < SLOW_TRIM_BYTES)
    if slow:
        log.warning("%d Dask worker(s) run with MALLOC_TRIM_THRESHOLD_ < 16 MiB (Dask's default 65536), which "
                    "slows the embedder ~2.6x; start them with `%s.MALLOC_TRIM_THRESHOLD_: null` in the Dask "
                    "config (docs/precompute.md): %s", len(slow), NANNY_ENV, ", ".join(slow[:4]))
    return slow


def _is_large(x) -> bool:
    if isinstance(x, np.ndarray):
        return x.nbytes > 1 << 20
    if isinstance(x, (dict, tuple, list)):
        vals = x.values() if isinstance(x, dict) else x
        return sum(v.nbytes for v in vals if isinstance(v, np.ndarray)) > 1 << 20
    return False


def row_ranges(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(i, min(n, i + chunk)) for i in range(0, n, max(1, int(chunk)))]
