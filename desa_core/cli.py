"""`desa`: the command line. It only parses arguments and calls library functions.

    desa simulate --stars 8000 --seed 42 --out data/survey
    desa ingest --light-curves LC_DIR --spectra SPEC_DIR --catalog cat.csv --out data/real
    desa validate-survey data/survey --out reports/survey
    desa train --survey data/survey --config small --out runs/small
    desa evaluate --run runs/small --out runs/small/metrics.json
    desa precompute --survey data/survey --run runs/small --out artifacts/default
    desa add --artifacts artifacts/default --survey data/my_stars --label "my stars"
    desa serve --artifacts artifacts/default --port 5006

`precompute`, `add` and `serve` are the commands that reach outside `desa_core`; they import their packages
lazily here, so the library itself never depends on them.
"""
from __future__ import annotations

import argparse
import logging
import sys


def _simulate(a):
    from desa_core.data.simulate import simulate_survey
    simulate_survey(n_stars=a.stars, seed=a.seed, out=a.out, config=a.config)


def _ingest(a):
    from desa_core.data.ingest import ingest
    report = ingest(light_curves=a.light_curves, spectra=a.spectra, catalog=a.catalog, out=a.out,
                    match_radius_arcsec=a.match_radius)
    return 0 if report.n_stars > 0 else 1


def _validate(a):
    from desa_core.data.validate import validate_survey
    validate_survey(a.survey, a.out)


def _train(a):
    from desa_core.train.run import train
    train(survey=a.survey, config=a.config, out=a.out, stages=a.stages, device=a.device)


def _evaluate(a):
    from desa_core.evaluate.run import evaluate
    seeds = [int(x) for x in a.seeds.split(",")] if "," in a.seeds else int(a.seeds)
    evaluate(run=a.run, out=a.out, models=a.models.split(",") if a.models else None, seeds=seeds,
             ablations=a.ablations)


def _precompute(a):
    from precompute.pipeline import run_precompute
    run_precompute(survey=a.survey, run=a.run, out=a.out, synthetic=a.synthetic, workers=a.workers,
                   scheduler=a.scheduler, seed=a.seed, device=a.device, index_kind=a.index_kind)


def _add(a):
    from precompute.add import add_stars
    add_stars(artifacts=a.artifacts, survey=a.survey, label=a.label, run=a.run)


def _serve(a):
    from app.main import serve
    serve(artifacts=a.artifacts, port=a.port, address=a.address, num_threads=a.num_threads, show=a.show,
          allow_websocket_origin=a.allow_websocket_origin, login=a.login, samp=a.samp)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="desa", description="DESA Explorer: survey, model, precompute, dashboard")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="generate the simulated Kepler x LAMOST survey")
    s.add_argument("--stars", type=int, default=None, help="number of stars (default: the config's)")
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--out", required=True)
    s.add_argument("--config", default=None, help="YAML file overriding SimulationConfig fields")
    s.set_defaults(func=_simulate)

    s = sub.add_parser("ingest", help="build a survey store from Kepler FITS, LAMOST FITS and a catalogue")
    s.add_argument("--light-curves", required=True, help="folder of Kepler light-curve FITS files")
    s.add_argument("--spectra", required=True, help="folder of LAMOST LRS FITS files")
    s.add_argument("--catalog", required=True, help="cross-match catalogue (CSV, FITS or VOTable)")
    s.add_argument("--out", required=True)
    s.add_argument("--match-radius", type=float, default=3.0, help="sky match radius in arcsec")
    s.set_defaults(func=_ingest)

    s = sub.add_parser("validate-survey", help="compare a simulated survey with real published Kepler data")
    s.add_argument("survey")
    s.add_argument("--out", required=True, help="report folder (PNG figures + distances.json)")
    s.set_defaults(func=_validate)

    s = sub.add_parser("train", help="train the DESA model (all stages, resumable)")
    s.add_argument("--survey", required=True)
    s.add_argument("--config", default="small", help="named config (small, paper) or a YAML file")
    s.add_argument("--out", required=True, help="run folder")
    s.add_argument("--stages", default=None, help="comma-separated subset of stages")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    s.set_defaults(func=_train)

    s = sub.add_parser("evaluate", help="evaluate DESA and baselines on the test split")
    s.add_argument("--run", required=True)
    s.add_argument("--out", required=True, help="metrics JSON path")
    s.add_argument("--models", default=None, help="comma-separated model keys (default: all but the ablations)")
    s.add_argument("--seeds", default="5", help="how many seeds (the run's and the next ones), or a comma list")
    s.add_argument("--ablations", action="store_true",
                   help="also retrain the DualFormer ablations per seed (~100 min on 2 cores for 5 seeds)")
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("precompute", help="embed every star; write FAISS indexes, maps and tables")
    s.add_argument("--survey", default=None)
    s.add_argument("--run", default=None)
    s.add_argument("--out", required=True, help="artifact folder")
    s.add_argument("--synthetic", type=int, default=None,
                   help="write a synthetic BENCHMARK artifact set of N stars (no survey/model needed)")
    s.add_argument("--workers", type=int, default=0,
                   help="Dask workers for the chunked stages: embedding, IVF adding, map placement (0: in process)")
    s.add_argument("--index-kind", default="auto", choices=["auto", "flat", "hnsw", "ivf", "ivfpq"],
                   help="FAISS index kind (auto: flat while small, IVF-Flat up to 4 GiB of vectors, IVF-PQ beyond)")
    s.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None, help="cpu or cuda: the model, FAISS training and UMAP (cuML) on a GPU "
                                                  "or not (default: a GPU wherever one is visible)")
    s.set_defaults(func=_precompute)

    s = sub.add_parser("add", help="embed a user's own stars (a survey store, e.g. from `desa ingest`) and add them "
                                   "to an existing artifact set")
    s.add_argument("--artifacts", required=True, help="the artifact folder to add to")
    s.add_argument("--survey", required=True, help="the survey store holding the new stars")
    s.add_argument("--label", default=None, help="population name of the added stars (default: the store's folder)")
    s.add_argument("--run", default=None, help="the model run (default: the one that built the artifact set)")
    s.set_defaults(func=_add)

    s = sub.add_parser("serve", help="serve the dashboard over an artifact folder")
    s.add_argument("--artifacts", required=True)
    s.add_argument("--port", type=int, default=5006)
    s.add_argument("--address", default="127.0.0.1")
    s.add_argument("--num-threads", type=int, default=0,
                   help="Panel worker threads for callbacks (default 0: events of a session run in order on the "
                        "server's loop; with threads Panel may run a session's events out of order)")
    s.add_argument("--show", action="store_true", help="open a browser")
    s.add_argument("--allow-websocket-origin", action="append", default=None, metavar="HOST[:PORT]",
                   help="a name the page is reached under (repeatable); for --address 0.0.0.0 the default is this "
                        "machine's own host names, never '*'")
    s.add_argument("--login", default=None, metavar="FILE",
                   help="require a login: FILE holds one shared password (first line) or a JSON object of "
                        "user -> password")
    s.add_argument("--samp", action=argparse.BooleanOptionalAction, default=None,
                   help="offer SAMP (send selections to TOPCAT/Aladin through a hub on this machine); default: on "
                        "for a localhost server, off on a public address")
    s.set_defaults(func=_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except project_errors() as e:  # the project's own errors: one line that names the file or option
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"desa {args.command}: error: {msg}", file=sys.stderr)
        logging.getLogger("desa").debug("details", exc_info=True)
        return 1
    return int(rc or 0)


def project_errors() -> tuple:
    """Exceptions that mean bad input or a bad folder (never a bug): every project error type derives from
    ValueError, except ArtifactError; missing or unreadable user paths raise the OSError subclasses below."""
    from desa_core.artifacts import ArtifactError
    return (ValueError, ArtifactError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


if __name__ == "__main__":
    sys.exit(main())
