"""Exporters: one module per target behind a small registry.

Each name maps to the module that holds its :class:`~edgehydra.exporters.target.ExportTarget`
(edgehydra/targets.py's facts plus build and run functions), imported only when asked for, so listing
targets imports no backend. The record is the one place a target's facts live: the CLI's choices, the artifact suffix `run`/`bench` dispatch on,
`doctor`'s rows, the profile formats and the verification all derive from it.

A target outside this package is one line: ``register_target("name", "package.module")``, or, for
every process (a benchmark worker included), ``EDGEHYDRA_TARGETS="name=package.module,..."``.
"""
from __future__ import annotations

import importlib

# the registry and each target's facts are data in the core layer (edgehydra/targets.py); here they gain
# the functions that build and run an artifact
from edgehydra.targets import (list_targets, register_target, target_for_suffix, target_modules,  # noqa: F401
                               unregister_target)


def get_target(name: str):
    mods = target_modules()
    if name not in mods:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(mods)}")
    t = importlib.import_module(mods[name]).TARGET
    if t.name != name:
        raise ValueError(f"{mods[name]}.TARGET is named {t.name!r}, registered as {name!r}")
    return t


def installed_targets() -> list[str]:
    return [n for n in target_modules() if get_target(n).installed()]


def all_precisions() -> list[str]:
    from edgehydra.targets import facts_of

    seen: dict[str, None] = {}
    for n in target_modules():
        seen.update(dict.fromkeys(facts_of(n).precisions))
    return list(seen)
