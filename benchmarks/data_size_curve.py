"""Do fusion gains grow with the number of cross-matched pairs? concat, DESA (the paper's objective) and a
fusion objective at several survey sizes (issue 11, point 4).

    python benchmarks/data_size_curve.py --sizes 5000,10000,50000 --seeds 3,3,1 --fusion desa_masked \\
        --reuse 10000=runs/small --root /tmp/desa-size --out benchmarks/results/data_size_curve.json

For each size N: the default survey simulated with N stars (seed 42, the default survey's configuration), the
``small`` model trained on it (every `desa train` stage; its wall time recorded), then ``desa evaluate`` of
``concat``, ``desa`` and the fusion model over the given number of seeds (test split; mean, std and the paired
difference from concat per headline metric). ``--reuse N=RUN`` uses an existing run for size N (the default run
for 10,000). Real Kepler x LAMOST has ~10^5 cross-matched stars; the default survey 10^4.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADLINE = ("binary_auc", "age_rmse_gyr", "cmd_r2", "hr_r2", "sync_young_bacc", "neighbour_quality")


def one_size(n: int, seeds: int, fusion: str, root: Path, run: Path | None) -> dict:
    from desa_core.data.simulate import simulate_survey
    from desa_core.evaluate.run import evaluate
    from desa_core.rundir import RunDir
    from desa_core.train.run import train
    out = {"n_stars": n, "seeds": seeds}
    if run is None:
        survey = root / f"survey_{n}"
        if not (survey / "manifest.json").is_file():
            t0 = time.perf_counter()
            simulate_survey(n_stars=n, seed=42, out=survey, progress=False)
            out["simulate_s"] = round(time.perf_counter() - t0, 1)
        run = root / f"run_{n}"
        t0 = time.perf_counter()
        train(survey=survey, config="small", out=run)
        out["train_wall_s_this_call"] = round(time.perf_counter() - t0, 1)
    out["run"] = str(run)
    man = RunDir.open(run).manifest
    out["train_total_wall_s"] = man.get("total_wall_s")
    out["train_stage_s"] = {k: v.get("wall_s") for k, v in (man.get("stages") or {}).items()
                            if isinstance(v, dict) and "wall_s" in v}
    t0 = time.perf_counter()
    m = evaluate(run, root / f"metrics_{n}.json", models=["concat", "desa", fusion], seeds=seeds, figures=False)
    out["evaluate_s"] = round(time.perf_counter() - t0, 1)
    out["n_test_both_modalities"] = m["_meta"]["n_both_modalities"]["test"]
    out["models"] = {}
    for key in ("concat", "desa", fusion):
        r = m[key]
        out["models"][key] = {k: {"mean": r.get(k), "std": r.get("seeds", {}).get("std", {}).get(k),
                                  "vs_concat": (r.get("vs_concat") or {}).get(k)} for k in HEADLINE}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,10000,50000")
    ap.add_argument("--seeds", default="3,3,1", help="seeds per size (comma list, same length as --sizes)")
    ap.add_argument("--fusion", default="desa_masked", help="the fusion objective's evaluation key")
    ap.add_argument("--reuse", action="append", default=[], help="N=RUN: an existing run for size N")
    ap.add_argument("--root", default="/tmp/desa-size", help="where the surveys and runs are written")
    ap.add_argument("--out", default="benchmarks/results/data_size_curve.json")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sizes = [int(x) for x in a.sizes.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")]
    if len(seeds) != len(sizes):
        raise SystemExit("--seeds needs one count per size")
    reuse = {int(k): Path(v) for k, v in (r.split("=", 1) for r in a.reuse)}
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    out_path = Path(a.out)
    res = json.loads(out_path.read_text()) if out_path.is_file() else {}
    res.setdefault("sizes", {})
    res["fusion"] = a.fusion
    for n, s in zip(sizes, seeds):
        logging.info("data-size curve: %d stars, %d seed(s)", n, s)
        res["sizes"][str(n)] = one_size(n, s, a.fusion, root, reuse.get(n))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(res, indent=2))   # after every size: a long run keeps what it has
    print(json.dumps(res, indent=1)[:4000])


if __name__ == "__main__":
    main()
