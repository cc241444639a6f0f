"""Progress on every long command: a rich bar on a terminal, a line per step when the output is piped or logged.

Both have the interface the stages call (``add_task``, ``advance``, ``update``, ``log``), so a stage reports its
progress once and the command decides how it is shown.
"""
from __future__ import annotations

import contextlib
import sys
import time


class LineProgress:
    """``sensitivity: 12/60`` lines, one per step while the total is small (at most 100 steps), else one every
    10 s and at the end, so a pipe or a CI log shows where a long command is without a flood."""

    EVERY_S = 10.0
    MAX_LINES_EVERY_STEP = 100

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tasks: dict[int, dict] = {}

    def add_task(self, desc, total=None, **fields):
        tid = len(self.tasks)
        self.tasks[tid] = {"desc": desc, "total": total, "done": 0, "info": fields.get("info", ""), "t": 0.0,
                           "t0": time.perf_counter()}
        return tid

    def update(self, task, advance: float = 0, total=None, info=None, **_):
        t = self.tasks[task]
        if total is not None:
            t["total"] = total
        if info is not None:
            t["info"] = info
        if advance:
            self.advance(task, advance)

    def advance(self, task, advance: float = 1):
        t = self.tasks[task]
        t["done"] += advance
        now = time.perf_counter()
        total = t["total"]
        small = total is not None and total <= self.MAX_LINES_EVERY_STEP
        if small or now - t["t"] >= self.EVERY_S or (total is not None and t["done"] >= total):
            t["t"] = now
            of = f"/{total:g}" if total is not None else ""
            info = f" {t['info']}" if t["info"] else ""
            self.log(f"{t['desc']}: {t['done']:g}{of} ({now - t['t0']:.0f} s){info}")

    def log(self, msg: str):
        print(msg, file=self.stream, flush=True)


@contextlib.contextmanager
def progress_bar(transient: bool = False):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if not Console().is_terminal:  # piped or logged: a line per step instead of a bar nobody sees
        yield LineProgress()
        return
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*cols, transient=transient) as p:
        orig = p.add_task

        def add_task(desc, total=None, **fields):
            fields.setdefault("info", "")
            return orig(desc, total=total, **fields)

        p.add_task = add_task
        p.log = p.console.print
        yield p
