"""`edgehydra demo` and `edgehydra report`."""
from __future__ import annotations

from pathlib import Path

import click

from ._common import console, show
from ._progress import progress_bar


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--fast", is_flag=True, help="Tiny model on a few frames: the whole pipeline in a few minutes.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override the FP32 training epochs.")
def demo(out, fast, epochs):
    """Everything on built-in synthetic data: train, PTQ, QAT, export, verify, benchmark, check, report."""
    from rich.table import Table

    from edgehydra.pipeline.demo import DemoConfig, run_demo

    cfg = DemoConfig.fast() if fast else DemoConfig()
    if epochs:
        from dataclasses import replace

        cfg = replace(cfg, epochs=epochs)
    c = console()
    c.print(f"[bold]edgehydra demo[/] -> {out} ({'fast' if fast else 'default'}: {cfg.model} at "
            f"{cfg.size[0]}x{cfg.size[1]}, {cfg.frames} frames, {cfg.epochs} epochs)")
    res = run_demo(Path(out), cfg, console=c, progress_factory=lambda: progress_bar(transient=True))
    t = Table(title=f"demo summary ({res['total_seconds'] / 60:.1f} min)")
    for col in ("stage", "status", "seconds", "note"):
        t.add_column(col)
    for s in res["stages"]:
        t.add_row(s["stage"], s["status"], f"{s['seconds']:.1f}", s.get("note", ""))
    show(t, c)
    c.print(f"report: {Path(out) / 'report' / 'report.html'}")


@click.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False, exists=True), required=True)
def report(run_dir):
    """Write RUN/report/report.html and report.md (plots and prediction panels beside them)."""
    from edgehydra.pipeline.report import write_report

    for p in write_report(Path(run_dir)):
        click.echo(f"wrote {p}")
