"""Shared click helpers: size parsing, paths, rich console."""
from __future__ import annotations

import re

import click


def parse_size(value: str | None, param=None) -> tuple[int, int] | None:
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", str(value))
    if not m:
        raise click.BadParameter(f"{value!r} is not HxW (e.g. 480x640)", param=param)
    h, w = int(m.group(1)), int(m.group(2))
    if h < 32 or w < 32:
        raise click.BadParameter(f"{h}x{w}: height and width must be at least 32 (the encoder downsamples 32x)",
                                 param=param)
    return h, w


class SizeType(click.ParamType):
    name = "HxW"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        return parse_size(value, param)


SIZE = SizeType()


def console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def table(title: str, ids: tuple[str, ...], cols: tuple[str, ...], right: tuple[str, ...] = ()):
    """A rich Table whose identifier columns (``ids``: names a user types back, paths) are never cut or
    folded: they keep their full width and the other columns wrap instead. In an 80-column terminal (the
    width rich assumes when output is piped) rich would otherwise shorten every column, names included
    ("host_…"). ``--json`` stays the machine-readable form."""
    from rich.table import Table

    t = Table(title=title)
    for c in ids:
        t.add_column(c, no_wrap=True, overflow="ignore")
    for c in cols:
        t.add_column(c, justify="right" if c in right else "left")
    return t


def fit_ids(t, rows: list[tuple]) -> None:
    """Add ``rows`` and reserve each identifier column's widest cell as its minimum width."""
    for r in rows:
        t.add_row(*r)
    for i, col in enumerate(t.columns):
        if col.no_wrap:
            col.min_width = max([len(str(r[i])) for r in rows] + [len(str(col.header))])


def show(t, c=None) -> None:
    """Print a table. Piped (no terminal: rich assumes 80 columns) the table takes its natural width, so
    no cell is shortened in a log or a file; in a terminal it fits the window, identifier columns whole."""
    c = c or console()
    if not c.is_terminal:
        natural = c.measure(t, options=c.options.update_width(10_000)).maximum
        width = c.width
        c.width = max(width, natural)
        try:
            c.print(t)
        finally:
            c.width = width
    else:
        c.print(t)
