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
    from edgehydra.pipeline.demo import DemoConfig, run_demo

    cfg = DemoConfig.fast() if fast else DemoConfig()
    if epochs:
        from dataclasses import replace

        cfg = replace(cfg, epochs=epochs)
    c = console()
    c.print(f"[bold]edgehydra demo[/] -> {out} ({'fast' if fast else 'default'}: {cfg.model} at "
            f"{cfg.size[0]}x{cfg.size[1]}{f' (trained on {cfg.crop[0]}x{cfg.crop[1]} crops)' if cfg.crop else ''}, "
            f"{cfg.frames} frames, {cfg.epochs} epochs)")
    res = run_demo(Path(out), cfg, console=c, progress_factory=lambda: progress_bar(transient=True))
    print_answer(Path(out), c)
    stages = ", ".join(f"{s['stage']} {s['seconds']:.0f} s" for s in res["stages"] if s["status"] != "reused")
    c.print(f"[dim]stages ({res['total_seconds'] / 60:.1f} min): {stages or 'all reused'}[/]", soft_wrap=True)
    c.print(f"report: {Path(out) / 'report' / 'report.html'}")


def print_answer(run: Path, c) -> None:
    """What the run answers: per artifact accuracy against FP32 and latency, per device the verdict and the budget
    that decided it (pipeline/answer.py; the report opens with the same tables)."""
    from rich.table import Table

    from edgehydra.pipeline.answer import answer_tables
    from edgehydra.pipeline.report import collect

    ah, ab, dh, db = answer_tables(collect(run))
    for title, head, body in (("artifacts: accuracy vs FP32 at the same size, latency on this host", ah, ab),
                              ("devices: verdict and the budget that decided it", dh, db)):
        t = Table(title=title)
        for col in head:
            t.add_column(col, overflow="fold")
        for r in body:
            t.add_row(*[f"[{'green' if x == 'PASS' else 'red'}]{x}[/]" if x in ("PASS", "FAIL") else x for x in r])
        show(t, c)


@click.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False, exists=True), required=True)
def report(run_dir):
    """Write RUN/report/report.html and report.md (plots and prediction panels beside them)."""
    from edgehydra.pipeline.report import write_report

    for p in write_report(Path(run_dir)):
        click.echo(f"wrote {p}")
