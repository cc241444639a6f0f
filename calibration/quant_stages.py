"""PTQ and QAT as run-folder stages: what `edgehydra ptq` and `edgehydra qat` (and the demo) call.

    RUN/ptq/program.pt2   converted pt2e program (XNNPACK recipe translation)
    RUN/ptq/report.json   recipe, translation issues, calibration set, FP32 vs PTQ metrics
    RUN/qat/program.pt2   QAT program;  qat/state.pt resume state;  qat/report.json FP32/PTQ/QAT

Both take the run folder and ask :class:`edgehydra.run.Run` for every path in it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from edgehydra._io import atomic_path, atomic_write_json, sha256_path
from edgehydra.checkpoint import load_checkpoint
from edgehydra.data import Resize
from edgehydra.errors import BadInputError
from edgehydra.run import Run
from edgehydra.dataspec import open_eval_split, open_split, run_data_settings
from edgehydra._io import read_json
from edgehydra.metrics import Scoring
from edgehydra.train import EpochAugmented, FitHooks, FitTask, TrainConfig, evaluate, fit, is_main

from .calibset import select_calibration
from .program import load_program, save_program
from .ptq import quantize_ptq, quantized_layer_names
from .qat import QATController, distill_loss, prepare_qat
from .recipe import check_layers, load_recipe


def _datasets(checkpoint: Path, dataset: str | None, size, run: Run | None = None):
    """Data settings (the run's record, else the checkpoint's), the calibration/training split at the program's
    size, and the validation split as eval scores it twice: for the FP32 model (any size: native datasets padded
    to a multiple of 32) and for the program (traced at ``size``: native datasets padded to it), so the FP32
    figures in a stage's report are the ones `eval` prints and neither is stretched."""
    ds = run_data_settings(checkpoint, dataset, size, base=run.record().get("data") if run else None)
    size = tuple(ds["size"])
    model_val = open_eval_split(ds, size, fixed=False)
    prog_val = open_eval_split(ds, size, fixed=True)
    return ds, size, open_split(ds, "train", transform=Resize(size)), model_val, prog_val


def _eval(fwd, scored, cfg, limit=None, progress=None, nhwc=False):
    """``scored``: (split, EvalView) from _datasets; the metrics, with the protocol they were taken on. ``nhwc``: an
    FP32 model, fed channels-last frames (evaluate)."""
    val, view = scored
    m = evaluate(fwd, val, Scoring(cfg.tasks, cfg.num_classes, getattr(val, "depth_cap", cfg.depth_cap), padded=view.padded),
                 limit=limit, progress=progress, nhwc=nhwc)
    m.pop("iou_per_class", None)
    return m


@dataclass(frozen=True)
class QuantJob:
    """What a PTQ or QAT stage runs: the recipe (preset name or file), data overrides (None: the run's record),
    calibration frames and seed (QAT calibrates with its TrainConfig's seed), validation frames scored, the
    first ``frames`` training frames (QAT), distillation from the FP32 teacher, resuming a QAT run, the PTQ
    report QAT compares against, and the program ``variant`` (an applied mixed recipe, ``mixed-<device>``)."""

    recipe: str | None = None
    dataset: str | None = None
    size: tuple[int, int] | None = None
    calib_frames: int = 200
    seed: int = 0
    val_limit: int | None = None
    frames: int | None = None
    distill: bool = True
    resume: bool = False
    ptq_report: Path | None = None
    variant: str | None = None

    def __post_init__(self):
        if self.calib_frames < 1:
            raise ValueError(f"calib_frames={self.calib_frames}: at least 1")
        for k in ("val_limit", "frames"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                raise ValueError(f"{k}={getattr(self, k)}: at least 1, or None for all")


def ptq_run(checkpoint: Path, run: Run | Path, job: QuantJob = QuantJob(), progress=None) -> dict:
    """PTQ into the run folder ``run``: its program and report go where the run record says (RUN/ptq/, or
    RUN/ptq/<variant>/ for a variant such as an applied mixed-precision recipe, which never replaces the run's
    program). The report's ``program`` is the path to hand the next stage."""
    run = run if isinstance(run, Run) else Run(run)
    recipe = load_recipe(job.recipe)
    model, info = load_checkpoint(checkpoint)
    check_layers(recipe, model)
    ds, size, train, model_val, prog_val = _datasets(Path(checkpoint), job.dataset, job.size, run)
    run.note_source(checkpoint, info["sha256"], ds)
    t0 = time.perf_counter()
    calib = select_calibration(train, job.calib_frames, job.seed)
    converted, tr = quantize_ptq(model, recipe, train, calib, size, progress=progress)
    q_layers, f_layers = quantized_layer_names(converted)
    meta = {"stage": "ptq", "variant": job.variant, "source_checkpoint": str(checkpoint),
            "source_sha256": info["sha256"], "calibration": calib.to_dict(), "translation": tr.to_dict(), "data": ds,
            "quantized_layers": len(q_layers), "float_layers": f_layers}
    prog_path = save_program(converted, run.program_path("ptq", job.variant), model.config, recipe, size, meta)
    run.note_program("ptq", prog_path, model.config.to_dict(), recipe.name, size, job.variant)
    fp32 = _eval(model, model_val, model.config, job.val_limit, progress, nhwc=True)
    ptq = _eval(converted, prog_val, model.config, job.val_limit, progress)
    report = {"recipe": recipe.to_dict(), "translation": tr.to_dict(), "calibration": {
        k: v for k, v in calib.to_dict().items() if k not in ("indices",)}, "float_layers": f_layers,
        "metrics": {"fp32": fp32, "ptq": ptq}, "program": str(prog_path), "program_sha256": sha256_path(prog_path),
        "seconds": time.perf_counter() - t0, "data": ds,
        "protocol": {"fp32": model_val[1].protocol, "program": prog_val[1].protocol}}
    atomic_write_json(run.stage_report("ptq", job.variant), report)
    return report


def qat_run(checkpoint: Path, run: Run | Path, cfg: TrainConfig, job: QuantJob = QuantJob(), progress=None) -> dict:
    """QAT into the run folder ``run`` (RUN/qat/: program, report, resume state; RUN/qat/<variant>/ for a
    variant, which never replaces the run's program)."""
    from edgehydra.data import TrainAugment

    run = run if isinstance(run, Run) else Run(run)
    recipe = load_recipe(job.recipe)
    fp32_model, info = load_checkpoint(checkpoint)
    check_layers(recipe, fp32_model)
    ds, size, resized, model_val, prog_val = _datasets(Path(checkpoint), job.dataset, job.size, run)
    val = prog_val[0]
    if is_main():
        run.note_source(checkpoint, info["sha256"], ds)
    base = open_split(ds, "train")
    if job.frames is not None and job.frames < len(base):
        base = torch.utils.data.Subset(base, range(job.frames))
    train = EpochAugmented(base, TrainAugment(size), seed=cfg.seed)
    gm, tr = prepare_qat(load_checkpoint(checkpoint)[0], recipe, size)
    ctl = QATController(gm, recipe)
    state_path = run.qat_state_of(job.variant)
    resume_state, calib = _qat_start(gm, ctl, cfg, recipe, job, state_path, resized, progress)

    def save(state, opt):
        import io

        buf = io.BytesIO()
        torch.save({"model": gm.state_dict(), "optimizer": opt.state_dict(), "epoch": state.epoch, "step": state.step,
                    "history": state.history, "config": asdict(cfg), "recipe": recipe.to_dict()}, buf)
        with atomic_path(state_path) as tmp:
            tmp.write_bytes(buf.getvalue())

    extra = distill_loss(fp32_model.eval(), fp32_model.config.tasks) if job.distill else None
    t0 = time.perf_counter()
    task = FitTask(fp32_model.config.tasks, fp32_model.config.num_classes,
                   getattr(val, "depth_cap", fp32_model.config.depth_cap), val_limit=job.val_limit,
                   val_padded=prog_val[1].padded)
    hooks = FitHooks(save=save, set_train=ctl.set_train, set_eval=ctl.set_eval, epoch_hook=ctl.epoch_hook,
                     extra_loss=extra)
    state = fit(gm, train, cfg, task, hooks, val_ds=val, resume=resume_state, progress=progress)
    train_s = time.perf_counter() - t0
    ranks = _rank_fingerprints(gm)
    ctl.set_eval(gm)
    # the fake-quant model as fit scored it after its last epoch (the same frames, scoring and eval state), else now
    fq = state.history[-1].get("val") if state.history else None
    if fq is None:
        with torch.no_grad():
            fq = _eval(gm, prog_val, fp32_model.config, job.val_limit, progress)
    from .ptq import convert_stage

    converted = convert_stage(gm, recipe=recipe)
    q_layers, f_layers = quantized_layer_names(converted)
    meta = {"stage": "qat", "variant": job.variant, "source_checkpoint": str(checkpoint),
            "source_sha256": info["sha256"], "translation": tr.to_dict(), "data": ds, "qat_events": ctl.events,
            "distill": job.distill, "train_config": asdict(cfg), "quantized_layers": len(q_layers),
            "float_layers": f_layers}
    prog_path = save_program(converted, run.program_path("qat", job.variant), fp32_model.config, recipe, size,
                             meta) if is_main() else None
    if prog_path is not None:
        run.note_program("qat", prog_path, fp32_model.config.to_dict(), recipe.name, size, job.variant)
    metrics = {"fp32": _eval(fp32_model, model_val, fp32_model.config, job.val_limit, progress, nhwc=True)}
    ptq_path = Path(job.ptq_report) if job.ptq_report else run.stage_report("ptq", job.variant)
    if ptq_path.is_file():
        metrics["ptq"] = read_json(ptq_path)["metrics"]["ptq"]
    metrics["qat_fake_quant"] = fq
    metrics["qat"] = _eval(converted, prog_val, fp32_model.config, job.val_limit, progress)
    report = {"recipe": recipe.to_dict(), "translation": tr.to_dict(), "events": ctl.events, "history": state.history,
              "metrics": metrics, "program": str(prog_path), "train_seconds": train_s, "distill": job.distill,
              "data": ds, "train_config": asdict(cfg), "frames": job.frames, "rank_weights_sha256": ranks,
              "calibration": {k: v for k, v in calib.to_dict().items() if k != "indices"} if calib else None,
              "program_sha256": sha256_path(prog_path) if prog_path else None,
              "protocol": {"fp32": model_val[1].protocol, "program": prog_val[1].protocol}}
    if is_main():
        atomic_write_json(run.stage_report("qat", job.variant), report)
    return report


def _qat_start(gm, ctl, cfg: TrainConfig, recipe, job: QuantJob, state_path: Path, resized, progress):
    """Where QAT starts: a resumed state (its weights loaded, the freeze schedule replayed), or activation ranges
    calibrated on the run's frames. Returns (resume state or None, calibration set or None)."""
    if not job.resume:
        calib = select_calibration(resized, job.calib_frames, cfg.seed)
        ctl.calibrate(resized, calib, progress=progress)
        return None, calib
    if not state_path.is_file():
        raise BadInputError(f"--resume: no QAT state at {state_path}; run without --resume to start")
    raw = torch.load(state_path, map_location="cpu", weights_only=True)
    if raw.get("config") != asdict(cfg) or raw.get("recipe") != recipe.to_dict():
        raise BadInputError(f"--resume: {state_path} was written with other settings; use the same options")
    try:
        gm.load_state_dict(raw["model"])
    except RuntimeError as e:  # e.g. a state saved before batch norm was folded ahead of QAT: other parameters
        raise BadInputError(f"--resume: {state_path} does not fit this QAT graph ({str(e).splitlines()[0]}); "
                            "run without --resume to start again") from None
    for e in range(raw["epoch"]):  # replay the freeze schedule up to where the run stopped
        ctl.epoch_hook(e)
    return {"optimizer": raw["optimizer"], "epoch": raw["epoch"], "step": raw["step"], "history": raw["history"]}, None


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's parameters and buffers (sorted names, raw bytes)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if isinstance(v, torch.Tensor):
            h.update(k.encode())
            h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _rank_fingerprints(model) -> list[str]:
    """Every rank's weight hash after QAT. DDP keeps parameters in step and the epoch-end buffer sync keeps
    BN statistics and observers in step; if any rank still differs, the program rank 0 saves is not what
    the others trained, so stop instead of writing it."""
    from edgehydra.errors import EdgeHydraError
    from edgehydra.train import dist_info

    mine = weights_sha256(model)
    _, world = dist_info()
    if world == 1:
        return [mine]
    import torch.distributed as dist

    allh = [None] * world
    dist.all_gather_object(allh, mine)
    if len(set(allh)) != 1:
        raise EdgeHydraError(f"QAT ranks ended with different weights ({', '.join(h[:12] for h in allh)}): "
                             "not saving a program only rank 0 trained")
    return allh


def program_of(run_or_file: Path) -> Path:
    """Accept a .pt2 or a run folder (prefers qat/ over ptq/)."""
    p = Path(run_or_file)
    if p.is_file():
        return p
    prog = Run(p).program()
    if prog is None:
        raise BadInputError(f"no quantised program in {p} (looked for qat/program.pt2 and ptq/program.pt2)")
    return prog


__all__ = ["ptq_run", "qat_run", "program_of", "load_program"]
