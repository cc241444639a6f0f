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
