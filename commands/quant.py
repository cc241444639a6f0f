"""`edgehydra ptq`, `qat`, `sensitivity`."""
from __future__ import annotations

from pathlib import Path

import click

from ._common import SIZE, console, show
from ._progress import progress_bar
from .train import metrics_table

RECIPE_HELP = "Preset (w8a8, w8a8-heads-fp, w8a16, w8-weight-only) or a recipe JSON file."


def _checkpoint(checkpoint, out):
    from edgehydra.run import Run

    if checkpoint:
        return Path(checkpoint)
    # No --checkpoint: the run's own FP32 model or the checkpoint it was started from; else a `train`
    # run one folder up.
    if not Run(out).fp32.is_file() and not Run(out).record() and Run(Path(out).parent).fp32.is_file():
        return Run(Path(out).parent).fp32
    return Run(out).checkpoint()


def _print_issues(tr: dict):
    c = console()
    for i in tr.get("issues", []):
        c.print(f"[yellow]not honoured:[/yellow] {i}")
    for n in tr.get("notes", []):
        c.print(f"[dim]note:[/dim] {n}")


@click.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="FP32 checkpoint (default: OUT/../fp32.pt).")
@click.option("--dataset", default=None, help="Calibration/validation data (default: the checkpoint's).")
@click.option("--recipe", default="w8a8", show_default=True, help=RECIPE_HELP)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder; writes OUT/ptq/.")
@click.option("--size", type=SIZE, default=None)
@click.option("--calib-frames", type=click.IntRange(1), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def ptq(checkpoint, dataset, recipe, out, size, calib_frames, seed):
    """Calibrate and post-training quantise: saves OUT/ptq/program.pt2 and report.json (FP32 vs PTQ)."""
    from edgehydra.calibration.quant_stages import QuantJob, ptq_run

    ckpt = _checkpoint(checkpoint, out)
    with progress_bar(transient=True) as p:
        rep = ptq_run(ckpt, Path(out), QuantJob(recipe, dataset, size, calib_frames, seed), progress=p)
    _print_issues(rep["translation"])
    console().print(metrics_table(f"PTQ ({rep['recipe']['name']})", rep["metrics"]))
    click.echo(f"program: {rep['program']}")


@click.command()
@click.option("--dataset", default=None, help="synthroom, nyud, kitti or a folder (default: the checkpoint's).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="FP32 checkpoint (default: OUT/fp32.pt from `train`).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder; writes OUT/qat/.")
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Fine-tuning rate (a tenth of training's or less).")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--recipe", default="w8a8", show_default=True, help=RECIPE_HELP)
@click.option("--size", type=SIZE, default=None)
@click.option("--distill/--no-distill", default=True, show_default=True,
              help="Self-distil from the FP32 model (KL on logits, L1 on depth); keeps depth within 1% of FP32 "
                   "on synthroom where plain fine-tuning lost 3-5% (docs/RESULTS.md).")
@click.option("--resume", is_flag=True, help="Continue from OUT/qat/state.pt.")
@click.option("--seed", type=int, default=0, show_default=True)
def qat(dataset, checkpoint, out, epochs, lr, batch_size, recipe, size, distill, resume, seed):
    """Quantisation-aware fine-tuning; saves OUT/qat/program.pt2 and FP32 / PTQ / QAT metrics."""
    from edgehydra.calibration.quant_stages import QuantJob, qat_run
    from edgehydra.train import TrainConfig, init_distributed, is_main

    init_distributed()
    ckpt = _checkpoint(checkpoint, out)
    try:
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr_encoder=lr, lr_decoder=lr, seed=seed, schedule="cosine")
    except ValueError as e:
        raise click.UsageError(str(e))
    with progress_bar() as p:
        rep = qat_run(ckpt, Path(out), cfg, QuantJob(recipe, dataset, size, distill=distill, resume=resume),
                      progress=p if is_main() else None)
    if is_main():
        _print_issues(rep["translation"])
        console().print(metrics_table(f"QAT ({rep['recipe']['name']})", rep["metrics"]))
        click.echo(f"program: {rep['program']}")


@click.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="FP32 checkpoint (per-layer table only).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder: its FP32 model, data and size (needed with --device).")
@click.option("--device", default=None,
              help="Search a mixed-precision assignment for this device profile (name or .toml): latency measured "
                   "per layer on this host for this host's profiles (host_cpu: ExecuTorch, host_cpu_onnxruntime, "
                   "host_cpu_litert), in the runtime of the profile's format; estimated from the profile otherwise.")
@click.option("--dataset", default=None)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for sensitivity.json/png (default beside the checkpoint).")
@click.option("--layers", default=None, help="Comma-separated layer names or patterns to consider (default: every conv).")
@click.option("--recipe", default="w8a8", show_default=True, help=RECIPE_HELP)
@click.option("--size", type=SIZE, default=None, help="With --device: input size (default: the device's budget size).")
@click.option("--frames", type=click.IntRange(1), default=50, show_default=True, help="Validation frames per measurement.")
@click.option("--calib-frames", type=click.IntRange(1), default=32, show_default=True)
@click.option("--max-miou-drop", type=float, default=None, help="Budget: mIoU points lost vs FP32.")
@click.option("--max-rmse-rise", type=float, default=None, help="Budget: depth RMSE increase vs FP32 (m).")
@click.option("--max-absrel-rise", type=float, default=None, help="Budget: abs rel increase vs FP32.")
@click.option("--max-normals-rise", type=float, default=None,
              help="Budget: median normals angle increase vs FP32 (degrees; three-task models).")
@click.option("--max-flicker-rise", type=float, default=None,
              help="Budget: segmentation flicker rise vs FP32 on a synthroom sequence (percentage points; default: the "
                   "profile's max_flicker_rise with --profile-floors).")
@click.option("--latency-budget-ms", type=float, default=None, help="Latency budget (default: the profile's p50 budget).")
@click.option("--profile-floors/--no-profile-floors", default=True, show_default=True,
              help="Also hold the profile's absolute task floors (min mIoU, max RMSE, max abs rel) and size budget.")
@click.option("--max-trials", type=click.IntRange(1), default=6, show_default=True,
              help="Candidates checked by real PTQ + evaluation, fastest predicted first.")
@click.option("--apply", "do_apply", is_flag=True, help="PTQ with the chosen recipe, export for the device, check.")
@click.option("--qat", is_flag=True, help="With --apply: QAT instead of PTQ.")
@click.option("--fresh", is_flag=True, help="With --device: search again even where RUN/mixed/DEVICE/front.json holds a "
                                           "search of the same checkpoint, budgets, settings and measurements.")
def sensitivity(checkpoint, run_dir, device, dataset, out, layers, recipe, size, frames, calib_frames, max_miou_drop,
                max_rmse_rise, max_absrel_rise, max_normals_rise, max_flicker_rise, latency_budget_ms, profile_floors,
                max_trials, do_apply, qat, fresh):
    """Per-layer, per-task sensitivity. With --device: the mixed-precision Pareto front under that device's
    joint budgets and the fastest assignment that meets them (a recipe); --apply hands it on."""
    if device:
        flags = dict(max_miou_drop=max_miou_drop, max_rmse_rise=max_rmse_rise, max_absrel_rise=max_absrel_rise,
                     max_normals_rise=max_normals_rise, max_flicker_rise=max_flicker_rise,
                     latency_budget_ms=latency_budget_ms, profile_floors=profile_floors)
        search = dict(layers=layers, recipe=recipe, size=tuple(size) if size else None, frames=frames,
                      calib_frames=calib_frames, max_trials=max_trials)
        return _mixed(run_dir, device, flags, search, do_apply, qat, fresh)
    if do_apply or qat or any(v is not None for v in (max_rmse_rise, max_normals_rise, max_flicker_rise,
                                                       latency_budget_ms)):
        raise click.UsageError("--apply, --qat, --max-rmse-rise, --max-normals-rise, --max-flicker-rise and "
                               "--latency-budget-ms need --device")
    from edgehydra.calibration.sensitivity import SensitivityConfig, sensitivity_run

    if checkpoint is None and run_dir is None:
        raise click.UsageError("pass --run RUN or --checkpoint FILE")
    if checkpoint is None:
        from edgehydra.run import Run

        checkpoint = Run(run_dir).checkpoint()
    out = Path(out) if out else Path(checkpoint).parent / "sensitivity"
    with progress_bar(transient=True) as p:
        rep = sensitivity_run(Path(checkpoint), out, SensitivityConfig(frames, calib_frames, max_miou_drop, max_absrel_rise,
                                                                       recipe_spec=recipe, layers=layers),
                              dataset=dataset, progress=p)
    from rich.table import Table

    t = Table(title="per-layer sensitivity (only this layer in float / only this layer quantised)")
    for col in ("layer", "Δ mIoU float-one", "Δ absrel float-one", "Δ mIoU quant-one", "Δ absrel quant-one"):
        t.add_column(col, justify="right" if col != "layer" else "left")
    for r in rep["layers"][:20]:
        t.add_row(r["layer"], f"{r['float_one']['miou']:+.2f}", f"{r['float_one']['abs_rel']:+.4f}",
                  f"{r['quant_one']['miou']:+.2f}", f"{r['quant_one']['abs_rel']:+.4f}")
    show(t)
    if rep.get("proposal"):
        click.echo(f"proposed recipe: {rep['proposal']['recipe_file']} (keep float: {', '.join(rep['proposal']['keep_float']) or 'none'})")
    click.echo(f"chart: {rep['chart']}")


def _mixed(run_dir, device, flags: dict, search: dict, do_apply, qat, fresh=False):
    """The search for ``device``: ``flags`` the budget options, ``search`` the SearchConfig's."""
    from edgehydra.calibration.mixed import MixedBudgets
    from edgehydra.pipeline.mixed_apply import ApplyConfig, apply
    from edgehydra.pipeline.mixed_search import SearchConfig, mixed_run
    from edgehydra.devices.profile import load_run_profile
    from edgehydra.run import Run
    from edgehydra.train import init_distributed, is_main

    if run_dir is None:
        raise click.UsageError("--device needs --run RUN (the run's model, data and measurements)")
    run = Run(run_dir)
    b = load_run_profile(run, device).budgets
    budgets = MixedBudgets.for_profile(
        b, floors=flags["profile_floors"], latency_ms=flags["latency_budget_ms"],
        max_flicker_rise=flags["max_flicker_rise"], max_miou_drop=flags["max_miou_drop"],
        max_rmse_rise=flags["max_rmse_rise"], max_absrel_rise=flags["max_absrel_rise"],
        max_normals_rise=flags["max_normals_rise"])
    init_distributed()
    with progress_bar(transient=True) as p:
        rep = mixed_run(run, device, budgets, SearchConfig(**search), progress=p if is_main() else None,
                        reuse=not fresh)
    if not is_main():
        return
    _mixed_table(rep)
    c = rep["chosen"]
    w16, f16 = c.get("int16_layers") or [], c.get("fp16_layers") or []
    click.echo(f"chosen: {len(c['keep_float'])} layers float ({', '.join(c['keep_float']) or 'none'})"
               + (f", {len(f16)} fp16 ({', '.join(f16)})" if f16 else "")
               + (f", {len(w16)} W8A16 ({', '.join(w16)})" if w16 else "") + f"; recipe: {rep['recipe_file']}")
    click.echo(f"front: {rep['chart']}")
    if do_apply:
        with progress_bar(transient=True) as p:
            res = apply(run, device, Path(rep["recipe_file"]),
                        ApplyConfig(qat=qat, size=search["size"], calib_frames=search["calib_frames"]), progress=p)
        v = res["check"]
        shipped = ", ".join(f"{r['path']} ({r['status']})" for r in res["export"])
        click.echo(f"applied: {res['quantised']} -> {shipped}; "
                   f"check {v['device']} on {v.get('artifact', res['artifact'])}: {v['verdict']}")
        if v["verdict"] != "PASS":
            raise SystemExit(1)


def _mixed_table(rep: dict):
    from rich.table import Table

    t = Table(title=f"{rep['device']} at {rep['size'][0]}x{rep['size'][1]}: latency {rep['latency_source']}")
    flick = "flicker" in rep["fp32"]  # a flicker budget: every program also ran a synthroom sequence
    for col in ("assignment", "float layers", "fp16 layers", "W8A16 layers", "mIoU", "RMSE", "abs rel") + (
            ("flicker %",) if flick else ()) + ("latency ms", "size MB"):
        t.add_column(col, justify="left" if col == "assignment" else "right")
    ht = rep.get("host_timing") or {}
    rows = [("FP32", "all", "0", "0", rep["fp32"], ht.get("fp32", rep["float_total_ms"]), None),
            ("all int8", "0", "0", "0", rep["all_int8"], ht.get("int8", rep["int8_total_ms"]), None)]
    c = rep["chosen"]
    rows.append((f"mixed ({c['name']})", str(len(c["keep_float"])), str(len(c.get("fp16_layers") or [])),
                 str(len(c.get("int16_layers") or [])), c["measured"], c["measured_latency_ms"] or c["latency_ms"],
                 c["size_mb"]))
    for name, nf, nh, n16, m, lat, mb in rows:
        t.add_row(name, nf, nh, n16, f"{m['miou']:.2f}", f"{m['rmse']:.4f}", f"{m['abs_rel']:.4f}",
                  *((f"{m['flicker']:.2f}",) if flick else ()), f"{lat:.2f}", "" if mb is None else f"{mb:.2f}")
    show(t)
    for n in rep.get("notes", []):
        click.echo(f"note: {n}")
