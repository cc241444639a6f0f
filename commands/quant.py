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
    from edgehydra.calibration.stages import ptq_run

    ckpt = _checkpoint(checkpoint, out)
    with progress_bar(transient=True) as p:
        rep = ptq_run(ckpt, Path(out), recipe, dataset, size, calib_frames, seed, progress=p)
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
    from edgehydra.calibration.stages import qat_run
    from edgehydra.train import TrainConfig, init_distributed, is_main

    init_distributed()
    ckpt = _checkpoint(checkpoint, out)
    try:
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr_encoder=lr, lr_decoder=lr, seed=seed, schedule="cosine")
    except ValueError as e:
        raise click.UsageError(str(e))
    with progress_bar() as p:
        rep = qat_run(ckpt, Path(out), cfg, recipe, dataset, size, distill, resume,
                      progress=p if is_main() else None)
    if is_main():
        _print_issues(rep["translation"])
        console().print(metrics_table(f"QAT ({rep['recipe']['name']})", rep["metrics"]))
        click.echo(f"program: {rep['program']}")


@click.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True)
@click.option("--dataset", default=None)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for sensitivity.json/png (default beside the checkpoint).")
@click.option("--frames", type=click.IntRange(1), default=50, show_default=True, help="Validation frames per measurement.")
@click.option("--calib-frames", type=click.IntRange(1), default=32, show_default=True)
@click.option("--max-miou-drop", type=float, default=None, help="Budget: mIoU points lost vs FP32.")
@click.option("--max-absrel-rise", type=float, default=None, help="Budget: abs rel increase vs FP32.")
def sensitivity(checkpoint, dataset, out, frames, calib_frames, max_miou_drop, max_absrel_rise):
    """Per-layer, per-task sensitivity; with budgets, proposes layers to keep in float as a recipe file."""
    from edgehydra.calibration.sensitivity import sensitivity_run

    out = Path(out) if out else Path(checkpoint).parent / "sensitivity"
    with progress_bar(transient=True) as p:
        rep = sensitivity_run(Path(checkpoint), out, dataset, frames, calib_frames, max_miou_drop, max_absrel_rise, progress=p)
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
