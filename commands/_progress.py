"""Rich progress bars shared by the commands (disabled when output is not a terminal)."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def progress_bar(transient: bool = False):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*cols, transient=transient) as p:
        orig = p.add_task

        def add_task(desc, total=None, **fields):
            fields.setdefault("info", "")
            return orig(desc, total=total, **fields)

        p.add_task = add_task
        yield p
