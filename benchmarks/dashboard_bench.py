"""Dashboard performance on an artifact set (made by `desa precompute --synthetic N`), as JSON.

    desa precompute --synthetic 1000000 --out artifacts/bench-1e6
    python benchmarks/dashboard_bench.py --artifacts artifacts/bench-1e6 --out benchmarks/results/dashboard_1e6.json

What is timed, all server side and in one process, exactly as a served session runs it (each session has its
own Bokeh document, so HoloViews/Bokeh plot updates are included):

- ``selection``: a box selection on one map -> mask over all stars -> all three maps re-rasterised and their
  Bokeh models updated (``Session.select_box`` returns when the three DynamicMaps have re-rendered);
- ``search``: the FAISS query plus the neighbour table (``search_s``), and the same plus highlighting the
  neighbours on the three maps, the preview plots and the star detail (``search_and_render_s``);
- ``probe``: a ridge probe on 100 labelled stars fitted on all three embeddings, the prediction for every
  star, and the three maps recoloured by it;
- ``selection_with_layers``: the same box selections with the maps coloured by a categorical column
  (``count_cat`` layers) and the density contours on;
- ``hover``: the cursor over a star on a map -> the nearest star found (kd-tree), the hover marker pushed into
  the map's Bokeh source and the info line written (``Maps.hover_at``), at random stars with a sub-pixel offset;
- ``recolour_categorical``: the colour switched between two categorical columns (binary class, phase) with a
  selection active -> all three maps re-rendered with the new class layers and the legend recounted;
- ``concurrency``: ``--sessions`` sessions in threads, each making ``--session-events`` selections with a think
  time of 0.5-1.5 s (a person dragging boxes), versus one session making the same selections alone, one after
  the other: p50 and p95 latency of both, their ratios, the slowdown box for box, and errors;
- wall times on a shared machine depend on its load (recorded as ``load_average``); ``cpu_*`` is the
  process CPU time of the same step (all threads), which does not;
- ``memory``: resident memory of the process after the shared data is loaded, after the first session, and
  after a second session (both having rendered and selected).

Browser-side time (websocket transfer, canvas paint) is not included; the browser tests check that path works.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def _status_mb() -> dict:
    """RssAnon (the process's own memory) and RssFile (pages of memory-mapped files: page cache, shared with
    other processes and dropped by the kernel under pressure) from /proc/self/status (Linux)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:")):
                k, v = line.split(":")
                out[k.strip().lower()] = round(int(v.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def _uss_mb() -> float:
    """Private memory of this process: what a session really adds (RSS also counts shared file pages)."""
    import psutil
    return psutil.Process().memory_full_info().uss / 2**20


def _stats(xs) -> dict:
    a = np.asarray(xs, dtype=float)
    return {"n": int(len(a)), "p50_s": round(float(np.percentile(a, 50)), 4),
            "p95_s": round(float(np.percentile(a, 95)), 4), "mean_s": round(float(a.mean()), 4),
            "max_s": round(float(a.max()), 4)}


def _live_session(data):
    """An Explorer whose maps are attached to a Bokeh document, like a browser tab's session."""
    from bokeh.document import Document

    from app.main import Explorer
    ex = Explorer(data)
    doc = Document()
    ex.__panel__().get_root(doc)
    return ex, doc


def _random_box(data, key, rng):
    (x0, x1), (y0, y1) = data.default_range(key)
    w, h = (x1 - x0) * rng.uniform(0.1, 0.5), (y1 - y0) * rng.uniform(0.1, 0.5)
    cx, cy = rng.uniform(x0 + w / 2, x1 - w / 2), rng.uniform(y0 + h / 2, y1 - h / 2)
    return (cx - w / 2, cx + w / 2), (cy - h / 2, cy + h / 2)


def bench_selection(ex, n_events, rng) -> dict:
    times, cpu, per_map = [], [], {k: [] for k in ("umap", "cmd", "hr")}
    counts = []
    for i in range(n_events):
        key = ("umap", "cmd", "hr")[i % 3]
        xr, yr = _random_box(ex.data, key, rng)
        t0, c0 = time.perf_counter(), time.process_time()
        ex.session.select_box(key, xr, yr, mode="new")
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        counts.append(ex.session.selection_count)
        for k in per_map:
            per_map[k].append(ex.maps.last_render_s.get(k, np.nan))
    return {**_stats(times), "cpu_p50_s": round(float(np.median(cpu)), 4), "median_selected": int(np.median(counts)),
            "render_p50_s": {k: round(float(np.nanmedian(v)), 4) for k, v in per_map.items()}}


def bench_hover(ex, n_events, rng) -> dict:
    times, hits = [], 0
    keys = ex.maps.shown_keys()
    for i in range(n_events):
        key = keys[i % len(keys)]
        m = ex.data.maps[key]
        x, y = ex.data.column(m.x), ex.data.column(m.y)
        row = int(rng.integers(0, ex.data.n))
        if not (np.isfinite(x[row]) and np.isfinite(y[row])):
            continue
        (x0, x1), _ = ex.data.default_range(key)
        dx = 0.5 * abs(x1 - x0) / 600   # half a pixel off the star
        t0 = time.perf_counter()
        got = ex.maps.hover_at(key, float(x[row]) + dx, float(y[row]))
        times.append(time.perf_counter() - t0)
        hits += got >= 0
    return {**_stats(times), "found_a_star": int(hits)}


def bench_recolour(ex, n_events, rng) -> dict:
    cats = [c for c in ("binary_class", "phase") if c in ex.data.categorical_columns]
    if len(cats) < 2:
        cats = (cats * 2) or []
    if not cats:
        return {"skipped": "no categorical column"}
    ex.session.select_box("umap", *_random_box(ex.data, "umap", rng))
    ex.session.color = "density"
    times = []
    for i in range(n_events):
        t0 = time.perf_counter()
        ex.session.color = cats[i % 2]
        times.append(time.perf_counter() - t0)
    ex.session.color = "density"
    return {**_stats(times), "columns": cats}


def bench_search(ex, n_queries, rng) -> dict:
    total, search_only, cpu = [], [], []
    for _ in range(n_queries):
        row = int(rng.integers(0, ex.data.n))
        t0, c0 = time.perf_counter(), time.process_time()
        ex.search.search_row(row)
        total.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        search_only.append(ex.search.last_search_s)
    restricted = []
    ex.session.select_query("teff > 5000 and teff < 5600")
    ex.search.restrict = "(current selection)"
    for _ in range(max(3, n_queries // 3)):
        row = int(rng.integers(0, ex.data.n))
        ex.search.search_row(row)
        restricted.append(ex.search.last_search_s)
    ex.search.restrict = "all stars"
    ex.session.clear_selection()
    return {"search_s": _stats(search_only), "search_and_render_s": _stats(total),
            "search_and_render_cpu_p50_s": round(float(np.median(cpu)), 4),
            "restricted_to_selection_s": _stats(restricted),
            "index": ex.data.manifest["indexes"]["desa"].get("type"), "k": int(ex.search.k)}


def bench_probe(ex, n_fits) -> dict:
    times, cpu, fit, pred, scores = [], [], [], [], []
    for seed in range(n_fits):
        ex.probes.seed = seed
        t0, c0 = time.perf_counter(), time.process_time()
        r = ex.probes.fit("teff", n_labels=100)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        fit.append(r.fit_s)
        pred.append(r.predict_s)
        scores.append(r.scores.get("desa"))
    return {**_stats(times), "cpu_p50_s": round(float(np.median(cpu)), 4), "fit_p50_s": round(float(np.median(fit)), 4),
            "predict_and_recolour_p50_s": round(float(np.median(pred)), 4),
            "r2_desa_median": round(float(np.median(scores)), 3)}


def _session_boxes(data, n_sessions, n_events, seed) -> list[list[tuple]]:
    """The boxes each session drags: (map, x range, y range), cycling through the three maps."""
    out = []
    for i in range(n_sessions):
        rng = np.random.default_rng(seed + i)
        out.append([(("umap", "cmd", "hr")[j % 3], *_random_box(data, ("umap", "cmd", "hr")[j % 3], rng))
                    for j in range(n_events)])
    return out


def bench_concurrency(data, boxes: list[list[tuple]], seed, think=(0.5, 1.5)) -> dict:
    """One session per list of boxes, in threads, each selecting its boxes with a think time between them.
    Returns the latency statistics and every (box number, latency) pair, boxes numbered across the lists."""
    sessions = [_live_session(data)[0] for _ in boxes]
    for ex in sessions:  # first render of every session outside the timed part
        for k in ("umap", "cmd", "hr"):
            ex.maps.render(k)
    lat: dict[int, float] = {}
    errors: list[str] = []
    lock = threading.Lock()
    first = np.cumsum([0] + [len(b) for b in boxes])

    def run(ex, i):
        rng = np.random.default_rng(seed + i)
        time.sleep(rng.uniform(0, 1.0) if len(boxes) > 1 else 0.0)
        for j, (key, xr, yr) in enumerate(boxes[i]):
            t0 = time.perf_counter()
            try:
                ex.session.select_box(key, xr, yr, mode="new")
                assert ex.session.message_level != "danger", ex.session.message
            except Exception as e:  # recorded, never raised: the point is to count them
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
            with lock:
                lat[int(first[i] + j)] = time.perf_counter() - t0
            time.sleep(rng.uniform(*think))

    threads = [threading.Thread(target=run, args=(ex, i)) for i, ex in enumerate(sessions)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"sessions": len(boxes), "events_per_session": max(len(b) for b in boxes), "think_s": list(think),
            **_stats(list(lat.values())), "errors": len(errors), "error_examples": errors[:3],
            "wall_s": round(time.perf_counter() - t0, 1), "latency_by_box": lat}


def compare_concurrency(data, n_sessions, n_events, seed, think=(0.5, 1.5), solo_think=(0.1, 0.3)) -> dict:
    """The same boxes selected by ``n_sessions`` sessions at once and, one after the other, by one session
    alone: the slowdown concurrency causes, box for box (a box's cost grows with the stars it selects, so two
    different sets of random boxes would compare their sizes as much as the server's load)."""
    boxes = _session_boxes(data, n_sessions, n_events, seed)
    many = bench_concurrency(data, boxes, seed, think)
    single = bench_concurrency(data, [[b for bs in boxes for b in bs]], seed + 1, solo_think)
    lat_many, lat_one = many.pop("latency_by_box"), single.pop("latency_by_box")
    ratio = np.array([lat_many[k] / lat_one[k] for k in sorted(lat_many)])
    return {"single_session": single, "concurrent": many,
            "p95_ratio": round(many["p95_s"] / single["p95_s"], 2),
            "p50_ratio": round(many["p50_s"] / single["p50_s"], 2),
            "per_box_slowdown": {"p50": round(float(np.median(ratio)), 2),
                                 "p95": round(float(np.percentile(ratio, 95)), 2)}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", required=True)
    p.add_argument("--out", default=None, help="JSON output (default: print only)")
    p.add_argument("--events", type=int, default=15, help="selection events timed in one session")
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--probes", type=int, default=3)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--session-events", type=int, default=6)
    p.add_argument("--think", type=float, nargs=2, default=(0.5, 1.5), metavar=("MIN", "MAX"),
                   help="seconds between one session's selections (uniform)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: layers,search,probe,concurrency")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    skip = set(filter(None, a.skip.split(",")))
    rng = np.random.default_rng(a.seed)

    import holoviews as hv
    import panel as pn
    hv.extension("bokeh", logo=False)
    pn.extension("tabulator")
    from app.main import BACKGROUND_WARM, _warm, settle_heap
    from app.state import load_app_data

    out: dict = {"artifacts": str(Path(a.artifacts).resolve()), "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}}
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    data = load_app_data(a.artifacts)
    out["n_stars"] = data.n
    out["load_s"] = round(time.perf_counter() - t0, 2)
    rss_loaded = _rss_mb()
    t_warm = time.perf_counter()
    _warm(data)
    # what `desa serve` does before it answers the first page: load, then warm the renderers (first renders,
    # hover grids, cross-filter bins)
    out["warm_s"] = round(time.perf_counter() - t_warm, 2)
    out["open_s"] = round(out["load_s"] + out["warm_s"], 2)
    out["rss_after_load_mb"] = round(rss_loaded, 1)
    # The server touches every index's pages in a background thread after loading (AppData.touch_indexes);
    # the timed parts start when it is done, as for a visitor of a server that has been up for a minute.
    # While it runs, a search competes with it for the two cores (see docs/dashboard.md).
    t_w = time.perf_counter()
    for th in threading.enumerate():
        if th.name in ("desa-index-warm", BACKGROUND_WARM):
            th.join()
    out["index_warm_wait_s"] = round(time.perf_counter() - t_w, 2)
    # Panel runs a full collection on the event loop whenever a page closes; the server freezes the long-lived
    # heap first (app.main.settle_heap). The pause a closing page costs every other visitor, before and after:
    t_gc = time.perf_counter()
    gc.collect()
    pause_before = time.perf_counter() - t_gc
    frozen = settle_heap()
    t_gc = time.perf_counter()
    gc.collect()
    out["full_gc_pause_s"] = {"before_settle": round(pause_before, 3),
                              "after_settle": round(time.perf_counter() - t_gc, 4), "objects_frozen": frozen}
    rss_data = _rss_mb()

    uss_data = _uss_mb()
    status_data = _status_mb()
    ex, _doc = _live_session(data)
    ex.session.select_box("umap", *_random_box(data, "umap", rng))
    gc.collect()
    rss_one, uss_one = _rss_mb(), _uss_mb()
    ex2, _doc2 = _live_session(data)
    ex2.session.select_box("cmd", *_random_box(data, "cmd", rng))
    for k in ("umap", "cmd", "hr"):
        ex2.maps.render(k)
    gc.collect()
    rss_two, uss_two = _rss_mb(), _uss_mb()
    out["memory_mb"] = {"before_load_rss": round(rss0, 1), "data_loaded_rss": round(rss_data, 1),
                        "first_session_rss": round(rss_one, 1), "second_session_rss": round(rss_two, 1),
                        "second_session_adds_rss": round(rss_two - rss_one, 1),
                        "data_loaded_uss": round(uss_data, 1), "first_session_uss": round(uss_one, 1),
                        "second_session_uss": round(uss_two, 1),
                        "second_session_adds_uss": round(uss_two - uss_one, 1),
                        "data_loaded_anon": status_data.get("rssanon"),
                        "data_loaded_file": status_data.get("rssfile"),
                        "second_session_anon": _status_mb().get("rssanon")}
    print(f"{data.n:,} stars loaded in {out['load_s']} s", flush=True)
    print("memory", out["memory_mb"], flush=True)

    out["selection"] = bench_selection(ex, a.events, rng)
    print("selection", out["selection"], flush=True)
    if "layers" not in skip:
        ex.session.show_contours = True
        ex.session.color = "binary_class" if "binary_class" in ex.data.categorical_columns else "density"
        out["selection_with_layers"] = {**bench_selection(ex, a.events, rng), "colour": ex.session.color,
                                        "contours": True}
        print("selection_with_layers", out["selection_with_layers"], flush=True)
        out["recolour_categorical"] = bench_recolour(ex, a.events, rng)
        print("recolour_categorical", out["recolour_categorical"], flush=True)
        out["hover"] = bench_hover(ex, max(a.events, 30), rng)
        print("hover", out["hover"], flush=True)
        ex.session.show_contours = False
        ex.session.color = "density"
    if "search" not in skip:
        out["search"] = bench_search(ex, a.queries, rng)
        print("search", out["search"], flush=True)
    if "probe" not in skip:
        out["probe"] = bench_probe(ex, a.probes)
        print("probe", out["probe"], flush=True)
        ex.session.color = "density"

    del ex2, _doc2
    if "concurrency" not in skip:
        out["concurrency"] = compare_concurrency(data, a.sessions, a.session_events, a.seed + 200, tuple(a.think))
        print("concurrency", out["concurrency"], flush=True)

    out["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out["memory_mb"]["end_rss"] = round(_rss_mb(), 1)   # after probes (they read every embedding) and sessions
    out["memory_mb"].update({f"end_{k}": v for k, v in _status_mb().items()})
    text = json.dumps(out, indent=2)
    if a.out:
        path = Path(a.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
