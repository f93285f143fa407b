"""`desa train`: every training stage of DESA, resumable, on one process or under torchrun.

    desa train --survey data/survey --config small --out runs/small              # CPU default
    desa train --survey data/survey --config paper --out runs/paper --device cuda
    torchrun --nproc_per_node=4 -m desa_core.cli train --survey data/survey --config paper --out runs/paper

Run folder::

    run_manifest.json            config, survey path + manifest sha256, seed, stage wall times, code version
    log.csv                      per-epoch losses (stage, epoch, split, metric, value)
    cache/                       preprocessed inputs of the whole store (rebuilt when preprocessing changes)
    checkpoints/<stage>.pt       final state dict of each stage (its presence marks the stage complete)
    checkpoints/<stage>.partial.pt   last epoch of an interrupted stage (resumed from)
    features.npz                 frozen encoder features of every star
    DONE                         written last, atomically, when every stage is complete

Re-running the command skips complete stages whose inputs are unchanged and resumes an interrupted one.
After the DESA stages, the evaluation package's heads stage runs if it is installed
(``desa_core.train.heads.train_heads(run_dir)``).
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import time
from pathlib import Path

import torch

import desa_core
from desa_core.data.store import (SurveyStore, SurveyStoreError, atomic_write_bytes,
                                  sha256_file)
from desa_core.models.config import DesaConfig, config_from_dict, get_config
from desa_core.models.light_curve_encoder import LightCurvePretrainer
from desa_core.models.spectra_encoder import SpectraPretrainer
from desa_core.rundir import RunDir, file_sha, load_state
from desa_core.train import distributed as ddp
from desa_core.train import stages as st

log = logging.getLogger(__name__)

ALL_STAGES = st.STAGES + ("heads",)


def code_version() -> dict:
    """Package version and a sha256 over the desa_core sources (the repository may have no git metadata)."""
    root = Path(desa_core.__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return {"desa_core": desa_core.__version__, "source_sha256": h.hexdigest(), "torch": torch.__version__}


def _parse_stages(stages) -> list[str]:
    if stages is None:
        return list(ALL_STAGES)
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in ALL_STAGES]
    if bad:
        raise ValueError(f"unknown stages {bad}; choose from {list(ALL_STAGES)}")
    return [s for s in ALL_STAGES if s in stages]


def _load_pretrainer(cls, cfg_section, ckpt: Path, tc) -> torch.nn.Module:
    net = cls(cfg_section, tc.quantiles)
    net.load_state_dict(load_state(ckpt))
    return net.eval()


def train(survey, config="small", out="runs/small", stages=None, device=None) -> Path:
    """Train DESA on a survey store into the run folder ``out``; returns the run folder.

    ``config``: a named config ('small', 'paper'), a YAML path or a DesaConfig. ``stages``: a subset (list or
    comma-separated) of light_curve_encoder, spectra_encoder, features, dualformer, heads; by default all.
    Complete stages with unchanged inputs are skipped; an interrupted stage resumes from its last epoch.
    """
    cfg: DesaConfig = config if isinstance(config, DesaConfig) else get_config(str(config))
    wanted = _parse_stages(stages)
    info = ddp.init_distributed(device)
    if cfg.train.torch_threads:
        torch.set_num_threads(int(cfg.train.torch_threads))
    try:
        store = SurveyStore.open(survey)
    except SurveyStoreError as e:   # a user error: the CLI prints it without a traceback
        raise ValueError(str(e)) from e
    run_dir = Path(out)
    rd = RunDir(run_dir)
    ckdir = rd.checkpoints
    if info.is_main:
        ckdir.mkdir(parents=True, exist_ok=True)
    ddp.barrier()

    manifest = rd.read_manifest()
    if manifest.get("config") and config_from_dict(manifest["config"]).to_dict() != cfg.to_dict():
        raise ValueError(f"{run_dir}: was trained with config {manifest['config'].get('name')!r} and different "
                         f"settings; use a new --out folder (or delete {run_dir})")
    survey_sha = sha256_file(store.path / "manifest.json")
    if manifest.get("survey_manifest_sha256") not in (None, survey_sha):
        # A regenerated survey (e.g. `make demo` after `desa simulate` again): every stage's recorded inputs
        # now differ, so all of them re-run; half-finished epochs of the old data must not be resumed.
        log.warning("%s: the survey changed since this run was trained (%s): retraining every stage",
                    run_dir, manifest.get("survey"))
        if info.is_main:
            for p in ckdir.glob("*.partial.pt"):
                p.unlink()
            if rd.done_path.exists():
                rd.done_path.unlink()
        ddp.barrier()
    manifest.update({
        "format": "desa-run", "format_version": 1, "config": cfg.to_dict(), "config_name": cfg.name,
        "survey": str(store.path.resolve()), "survey_manifest_sha256": survey_sha, "survey_n_stars": int(len(store)),
        "seed": cfg.train.seed, "code_version": code_version(), "device": str(info.device),
        "world_size": info.world_size,
    })
    manifest.setdefault("stages", {})

    def save_manifest():
        if info.is_main:
            rd.write_manifest(manifest)

    save_manifest()
    ctx = st.RunContext(run_dir=run_dir, store=store, cfg=cfg, info=info)
    tc = cfg.train

    def inputs_of(stage: str) -> dict:
        base = {"survey": survey_sha}
        if stage == "features":
            base.update(lc=file_sha(rd.checkpoint("light_curve_encoder")), spec=file_sha(rd.checkpoint("spectra_encoder")))
        elif stage == "dualformer":
            base.update(features=file_sha(rd.features_path))
        return base

    def complete(stage: str) -> bool:
        rec = manifest["stages"].get(stage, {})
        return rd.checkpoint(stage).is_file() and rec.get("complete") and rec.get("inputs") == inputs_of(stage)

    cpu0 = 0.0

    def finish(stage: str, state_dict, t0: float, extra: dict | None = None):
        fps = ddp.check_replicas_identical(state_dict, info, stage) if state_dict else []
        if info.is_main:
            rd.save_state(state_dict if state_dict is not None else {}, stage)
            partial = rd.partial(stage)
            if partial.exists():
                partial.unlink()
        ddp.barrier()
        manifest["stages"][stage] = {"complete": True, "wall_s": round(time.perf_counter() - t0, 2),
                                     "cpu_s": round(time.process_time() - cpu0, 2),
                                     "inputs": inputs_of(stage), "rank_fingerprints": fps,
                                     "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     **(extra or {})}
        save_manifest()
        log.info("stage %s complete in %.1f s", stage, time.perf_counter() - t0)

    if info.is_main and rd.done_path.exists() and not all(complete(s) for s in st.STAGES):
        rd.done_path.unlink()   # some stage is about to change: the run is no longer complete
    for stage in wanted:
        if stage == "heads":
            continue
        if complete(stage):
            log.info("stage %s already complete: skipping", stage)
            continue
        if stage in ("light_curve_encoder", "spectra_encoder", "features"):
            c0, p0 = time.perf_counter(), time.process_time()
            st.ensure_cache(ctx)   # timed on its own: it is built once and shared by three stages
            manifest["preprocess_wall_s"] = round(manifest.get("preprocess_wall_s", 0) + time.perf_counter() - c0, 2)
            manifest["preprocess_cpu_s"] = round(manifest.get("preprocess_cpu_s", 0) + time.process_time() - p0, 2)
        # CPU seconds (all threads of this process) next to wall seconds: on a shared machine the wall time
        # depends on the other load, the CPU time much less.
        t0, cpu0 = time.perf_counter(), time.process_time()
        log.info("stage %s: starting", stage)
        if stage == "light_curve_encoder":
            net = st.stage_light_curve_encoder(ctx)
            finish(stage, net.state_dict(), t0)
        elif stage == "spectra_encoder":
            net = st.stage_spectra_encoder(ctx)
            finish(stage, net.state_dict(), t0)
        elif stage == "features":
            for need in ("light_curve_encoder", "spectra_encoder"):
                if not rd.checkpoint(need).is_file():
                    raise ValueError(f"{run_dir}: stage features needs {need} first (checkpoints/{need}.pt)")
            lc = _load_pretrainer(LightCurvePretrainer, cfg.light_curve, rd.checkpoint("light_curve_encoder"), tc)
            sp = _load_pretrainer(SpectraPretrainer, cfg.spectra, rd.checkpoint("spectra_encoder"), tc)
            path = st.stage_features(ctx, lc.encoder, sp.encoder)
            finish(stage, {}, t0, {"features_sha256": file_sha(path)})
        elif stage == "dualformer":
            if not (rd.features_path).is_file():
                raise ValueError(f"{run_dir}: stage dualformer needs the features stage first (features.npz)")
            encoders = ()
            if cfg.dualformer.finetune_last_block:   # the last blocks are trained from the pretrained ones
                encoders = tuple(_load_pretrainer(cls, sec, rd.checkpoint(stg), tc).encoder for cls, sec, stg in (
                    (LightCurvePretrainer, cfg.light_curve, "light_curve_encoder"),
                    (SpectraPretrainer, cfg.spectra, "spectra_encoder")))
            model = st.stage_dualformer(ctx, *encoders)
            finish(stage, model.state_dict(), t0, {"eigenvalues": [round(float(v), 6) for v in model.eigenvalues]})

    mine_done = all(complete(s) for s in st.STAGES)
    heads_done = True
    if mine_done:
        try:
            heads = importlib.import_module("desa_core.train.heads")
        except ModuleNotFoundError as e:
            if e.name != "desa_core.train.heads":
                raise
            heads = None
            log.info("no heads stage installed (desa_core.train.heads): skipping it")
        if heads is not None:
            heads_inputs = {"dualformer": file_sha(rd.checkpoint("dualformer"))}
            rec = manifest["stages"].get("heads", {})
            heads_done = bool(rec.get("complete")) and rec.get("inputs") == heads_inputs
            if "heads" in wanted and not heads_done:
                t0, cpu0 = time.perf_counter(), time.process_time()
                if info.is_main:
                    log.info("stage heads: starting")
                    heads.train_heads(run_dir)
                    manifest["stages"]["heads"] = {"complete": True, "inputs": heads_inputs,
                                                   "wall_s": round(time.perf_counter() - t0, 2),
                                                   "cpu_s": round(time.process_time() - cpu0, 2)}
                    save_manifest()
                ddp.barrier()
                heads_done = True
    if mine_done and heads_done and info.is_main:
        for kind in ("wall_s", "cpu_s"):
            manifest[f"total_{kind}"] = round(sum(v.get(kind, 0) for v in manifest["stages"].values())
                                              + manifest.get(f"preprocess_{kind}", 0), 2)
        save_manifest()
        atomic_write_bytes(rd.done_path, (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n").encode())
        log.info("run complete: %s", run_dir)
    ddp.barrier()
    return run_dir
