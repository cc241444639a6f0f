"""PTQ and QAT as run-folder stages: what `edgehydra ptq` and `edgehydra qat` (and the demo) call.

    RUN/ptq/program.pt2   converted pt2e program (XNNPACK recipe translation)
    RUN/ptq/report.json   recipe, translation issues, calibration set, FP32 vs PTQ metrics
    RUN/qat/program.pt2   QAT program;  qat/state.pt resume state;  qat/report.json FP32/PTQ/QAT

Both take the run folder and ask :class:`edgehydra.run.Run` for every path in it.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from edgehydra._io import atomic_path, atomic_write_json, sha256_path
from edgehydra.checkpoint import load_checkpoint
from edgehydra.data import Resize
from edgehydra.errors import BadInputError
from edgehydra.run import Run
from edgehydra.dataspec import open_split, run_data_settings
from edgehydra._io import read_json
from edgehydra.train import EpochAugmented, FitHooks, FitTask, TrainConfig, evaluate, fit, is_main

from .calibset import select_calibration
from .program import load_program, save_program
from .ptq import quantize_ptq, quantized_layer_names
from .qat import QATController, distill_loss, prepare_qat
from .recipe import check_layers, load_recipe


def _datasets(checkpoint: Path, dataset: str | None, size, run: Run | None = None):
    """Data settings: the run's record (what an earlier stage of it used), else the checkpoint's."""
    ds = run_data_settings(checkpoint, dataset, size, base=run.record().get("data") if run else None)
    size = tuple(ds["size"])
    return ds, size, open_split(ds, "train", transform=Resize(size)), open_split(ds, "val", transform=Resize(size))


def _eval(fwd, val, cfg, limit=None, progress=None):
    m = evaluate(fwd, val, cfg.tasks, cfg.num_classes, getattr(val, "depth_cap", cfg.depth_cap), limit=limit,
                 progress=progress)
    m.pop("iou_per_class", None)
    return m


def ptq_run(checkpoint: Path, run: Run | Path, recipe_spec=None, dataset: str | None = None, size=None,
            calib_frames: int = 200, seed: int = 0, progress=None, val_limit: int | None = None,
            variant: str | None = None) -> dict:
    """PTQ into the run folder ``run``: its program and report go where the run record says (RUN/ptq/, or
    RUN/ptq/<variant>/ for a variant such as an applied mixed-precision recipe, which never replaces the run's
    program). The report's ``program`` is the path to hand the next stage."""
    run = run if isinstance(run, Run) else Run(run)
    recipe = load_recipe(recipe_spec)
    model, info = load_checkpoint(checkpoint)
    check_layers(recipe, model)
    ds, size, train, val = _datasets(Path(checkpoint), dataset, size, run)
    run.note_source(checkpoint, info["sha256"], ds)
    t0 = time.perf_counter()
    calib = select_calibration(train, calib_frames, seed)
    converted, tr = quantize_ptq(model, recipe, train, calib, size, progress=progress)
    q_layers, f_layers = quantized_layer_names(converted)
    meta = {"stage": "ptq", "variant": variant, "source_checkpoint": str(checkpoint), "source_sha256": info["sha256"],
            "calibration": calib.to_dict(), "translation": tr.to_dict(), "data": ds,
            "quantized_layers": len(q_layers), "float_layers": f_layers}
    prog_path = save_program(converted, run.program_path("ptq", variant), model.config, recipe, size, meta)
    run.note_program("ptq", prog_path, model.config.to_dict(), recipe.name, size, variant)
    fp32 = _eval(model, val, model.config, val_limit, progress)
    ptq = _eval(converted, val, model.config, val_limit, progress)
    report = {"recipe": recipe.to_dict(), "translation": tr.to_dict(), "calibration": {
        k: v for k, v in calib.to_dict().items() if k not in ("indices",)}, "float_layers": f_layers,
        "metrics": {"fp32": fp32, "ptq": ptq}, "program": str(prog_path), "program_sha256": sha256_path(prog_path),
        "seconds": time.perf_counter() - t0, "data": ds}
    atomic_write_json(run.stage_report("ptq", variant), report)
    return report


def qat_run(checkpoint: Path, run: Run | Path, cfg: TrainConfig, recipe_spec=None, dataset: str | None = None, size=None,
            distill: bool = True, resume: bool = False, ptq_report: Path | None = None, progress=None,
            val_limit: int | None = None, frames: int | None = None, calib_frames: int = 200,
            variant: str | None = None) -> dict:
    """QAT into the run folder ``run`` (RUN/qat/: program, report, resume state; RUN/qat/<variant>/ for a
    variant, which never replaces the run's program)."""
    run = run if isinstance(run, Run) else Run(run)
    recipe = load_recipe(recipe_spec)
    fp32_model, info = load_checkpoint(checkpoint)
    check_layers(recipe, fp32_model)
    ds, size, resized, val = _datasets(Path(checkpoint), dataset, size, run)
    if is_main():
        run.note_source(checkpoint, info["sha256"], ds)
    from edgehydra.data import TrainAugment

    base = open_split(ds, "train")
    if frames is not None and frames < len(base):
        base = torch.utils.data.Subset(base, range(frames))
    train = EpochAugmented(base, TrainAugment(size), seed=cfg.seed)
    student, _ = load_checkpoint(checkpoint)
    gm, tr = prepare_qat(student, recipe, size)
    ctl = QATController(gm, recipe)
    state_path = run.qat_state_of(variant)
    resume_state = None
    if resume:
        if not state_path.is_file():
            raise BadInputError(f"--resume: no QAT state at {state_path}; run without --resume to start")
        raw = torch.load(state_path, map_location="cpu", weights_only=True)
        if raw.get("config") != asdict(cfg) or raw.get("recipe") != recipe.to_dict():
            raise BadInputError(f"--resume: {state_path} was written with other settings; use the same options")
        gm.load_state_dict(raw["model"])
        resume_state = {"optimizer": raw["optimizer"], "epoch": raw["epoch"], "step": raw["step"],
                        "history": raw["history"]}
        for e in range(raw["epoch"]):  # replay the freeze schedule up to where the run stopped
            ctl.epoch_hook(e)
        calib = None
    else:
        calib = select_calibration(resized, calib_frames, cfg.seed)
        ctl.calibrate(resized, calib, progress=progress)

    def save(state, opt):
        import io

        buf = io.BytesIO()
        torch.save({"model": gm.state_dict(), "optimizer": opt.state_dict(), "epoch": state.epoch, "step": state.step,
                    "history": state.history, "config": asdict(cfg), "recipe": recipe.to_dict()}, buf)
        with atomic_path(state_path) as tmp:
            tmp.write_bytes(buf.getvalue())

    teacher = fp32_model.eval()
    extra = distill_loss(teacher, fp32_model.config.tasks) if distill else None
    t0 = time.perf_counter()
    task = FitTask(fp32_model.config.tasks, fp32_model.config.num_classes,
                   getattr(val, "depth_cap", fp32_model.config.depth_cap), val_limit=val_limit)
    hooks = FitHooks(save=save, set_train=ctl.set_train, set_eval=ctl.set_eval, epoch_hook=ctl.epoch_hook,
                     extra_loss=extra)
    state = fit(gm, train, cfg, task, hooks, val_ds=val, resume=resume_state, progress=progress)
    train_s = time.perf_counter() - t0
    ranks = _rank_fingerprints(gm)
    ctl.set_eval(gm)
    with torch.no_grad():
        fq = _eval(gm, val, fp32_model.config, val_limit, progress)
    from .ptq import convert_stage

    converted = convert_stage(gm, recipe=recipe)
    q_layers, f_layers = quantized_layer_names(converted)
    meta = {"stage": "qat", "variant": variant, "source_checkpoint": str(checkpoint), "source_sha256": info["sha256"],
            "translation": tr.to_dict(), "data": ds, "qat_events": ctl.events, "distill": distill,
            "train_config": asdict(cfg), "quantized_layers": len(q_layers), "float_layers": f_layers}
    prog_path = save_program(converted, run.program_path("qat", variant), fp32_model.config, recipe, size, meta) if is_main() else None
    if prog_path is not None:
        run.note_program("qat", prog_path, fp32_model.config.to_dict(), recipe.name, size, variant)
    metrics = {"fp32": _eval(fp32_model, val, fp32_model.config, val_limit, progress)}
    ptq_path = Path(ptq_report) if ptq_report else run.stage_report("ptq", variant)
    if ptq_path.is_file():
        metrics["ptq"] = read_json(ptq_path)["metrics"]["ptq"]
    metrics["qat_fake_quant"] = fq
    metrics["qat"] = _eval(converted, val, fp32_model.config, val_limit, progress)
    report = {"recipe": recipe.to_dict(), "translation": tr.to_dict(), "events": ctl.events, "history": state.history,
              "metrics": metrics, "program": str(prog_path), "train_seconds": train_s, "distill": distill,
              "data": ds, "train_config": asdict(cfg), "frames": frames, "rank_weights_sha256": ranks,
              "calibration": {k: v for k, v in calib.to_dict().items() if k != "indices"} if calib else None,
              "program_sha256": sha256_path(prog_path) if prog_path else None}
    if is_main():
        atomic_write_json(run.stage_report("qat", variant), report)
    return report


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
