"""Project `desa precompute` to 10^8 stars on a W-worker Dask cluster from a measured run (JSON).

    .venv/bin/python benchmarks/scale_projection.py --artifacts ART_1e7 --workers 16 \
        --embedding-json benchmarks/results/embedding_small_d64_t1.json \
        --out benchmarks/results/scale_projection_1e8.json

Inputs: the artifact set's manifest (each stage's wall time, each layout's UMAP fit and placement time, each
index's build time, measured on this 2-core machine) and, for a real survey, the embedding throughput of one
worker (``precompute_bench.py --embed-only --threads 1``: fresh stars/s of one process on one core).

The model (stated in the JSON, stage by stage):
- work that splits into row chunks (synthetic generation or embedding, index adding, map placement) costs, per
  row, what it cost at the measured size; on W single-core workers it runs W / C times faster than on the C
  cores it was measured on (the measured run used all C cores: numpy/FAISS threads), times the growth of its
  per-row cost: the IVF lists grow as sqrt(n) (``nlist``), so assigning a vector costs sqrt(N / n) more;
- the UMAP fits (at most 2x10^5 stars whatever N) and the IVF training (on 64 x nlist vectors) run once, in the
  main process: the fit as measured, the training x (N / n) (64 nlist vectors x nlist centroids);
- the star table is written by the main process: x N / n.
This is arithmetic on measured costs, not a measurement; transfer and scheduler overheads are not included.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path


def project(manifest: dict, target_n: int, workers: int, cores: int, embed_rate: float | None,
            train_s: float | None = None) -> dict:
    n = int(manifest["n_stars"])
    scale = target_n / n
    stages = {k: float(v["wall_s"]) for k, v in manifest["stages"].items()}
    layouts = {k: v for k, v in manifest["maps"].items() if k.startswith("umap")}
    speed = workers / cores                         # W one-core workers against the C cores measured
    rows = {}
    # embeddings
    if "synthetic" in stages and not embed_rate:
        rows["synthetic stars and embeddings"] = {"measured_s": stages["synthetic"],
                                                  "projected_s": stages["synthetic"] * scale / speed,
                                                  "how": "per row, on the workers"}
    if embed_rate:
        rows["embedding (real model, fresh stars)"] = {
            "measured_rate_per_worker": embed_rate, "projected_s": target_n / (embed_rate * workers),
            "how": f"N / ({embed_rate:.0f} stars/s x {workers} workers)"}
    # indexes: training once; adding per row, x sqrt(scale) for the longer lists
    for name, info in manifest["indexes"].items():
        build = float(info.get("build_s", stages.get(f"index_{name}", 0.0)))
        train = float(info.get("train_s") or train_s or 0.0)
        add = max(build - train, 0.0)
        rows[f"index {name}"] = {"measured_s": build, "measured_train_s": train or None,
                                 "projected_s": train * scale + add * scale * math.sqrt(scale) / speed,
                                 "how": "training x N/n in the main process; adding x (N/n)^1.5 on the workers"}
    # maps: fits side by side in the main machine (as measured), placement per row on the workers
    side_by_side = any(v.get("fitted_alongside_other_layouts") for v in layouts.values())
    place = sum(float(v.get("total_s", 0.0)) - (0.0 if v.get("fitted_alongside_other_layouts") else
                                                  float(v.get("fit_s", 0.0))) for v in layouts.values())
    # fitted side by side: the fits took the maps stage's wall time less the placements
    fits = (stages.get("maps", 0.0) - place) if side_by_side else sum(float(v.get("fit_s", 0.0))
                                                                       for v in layouts.values())
    rows["UMAP fits (<= 2x10^5 stars each)"] = {"measured_s": fits, "projected_s": fits,
                                                "how": "the same sample size at any N: unchanged"}
    rows["UMAP placement (kNN)"] = {"measured_s": place, "projected_s": place * scale / speed,
                                    "how": "per row, on the workers"}
    rows["star table"] = {"measured_s": stages.get("stars", 0.0), "projected_s": stages.get("stars", 0.0) * scale,
                          "how": "written by the main process: x N/n"}
    total = sum(r["projected_s"] for r in rows.values())
    return {"measured_n": n, "target_n": target_n, "workers": workers, "measured_cores": cores,
            "stages": {k: {**v, "projected_s": round(v["projected_s"], 1)} for k, v in rows.items()},
            "projected_total_s": round(total, 1), "projected_total_h": round(total / 3600, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", required=True, help="a measured artifact set (its manifest.json)")
    p.add_argument("--target", type=float, default=1e8)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="cores of the measured run")
    p.add_argument("--embedding-json", default=None, help="precompute_bench --embed-only JSON (one thread)")
    p.add_argument("--train-s", type=float, default=None,
                   help="IVF training time per index, measured separately (when the manifest has no train_s)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    manifest = json.loads((Path(a.artifacts) / "manifest.json").read_text())
    rate = None
    if a.embedding_json:
        e = json.loads(Path(a.embedding_json).read_text())
        rate = (e.get("embedding") or e).get("fresh_stars_per_s")
        if not rate:
            p.error(f"{a.embedding_json}: no fresh_stars_per_s (write it with precompute_bench.py --embed-only)")
    doc = {"benchmark": "scale projection", "source": str(Path(a.artifacts).resolve()),
           "model": __doc__.split("The model", 1)[1].strip(),
           "with_real_embedding": project(manifest, int(a.target), a.workers, a.cores, rate, a.train_s)
           if rate else None,
           "synthetic": project(manifest, int(a.target), a.workers, a.cores, None, a.train_s),
           "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    text = json.dumps(doc, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
