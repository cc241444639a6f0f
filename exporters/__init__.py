"""Exporters: one module per target behind a small registry.

Each name maps to the module that holds its :class:`~edgehydra.exporters.base.ExportTarget`
record, imported only when asked for, so listing targets imports no backend. The record is the one
place a target's facts live: the CLI's choices, the artifact suffix `run`/`bench` dispatch on,
`doctor`'s rows, the profile formats and the verification all derive from it.

A target outside this package is one line: ``register_target("name", "package.module")``, or, for
every process (a benchmark worker included), ``EDGEHYDRA_TARGETS="name=package.module,..."``.
"""
from __future__ import annotations

import importlib
import os

_MODULES = {
    "executorch": "edgehydra.exporters.executorch",
    "coreml": "edgehydra.exporters.coreml",
    "tflite": "edgehydra.exporters.tflite",
    "onnx": "edgehydra.exporters.onnx",
}


def _from_env() -> dict:
    out = {}
    for item in filter(None, os.environ.get("EDGEHYDRA_TARGETS", "").split(",")):
        name, _, module = item.partition("=")
        if not name or not module:
            raise ValueError(f"EDGEHYDRA_TARGETS item {item!r}: expected NAME=package.module")
        out[name.strip()] = module.strip()
    return out


def _modules() -> dict:
    return {**_MODULES, **_from_env()}


def register_target(name: str, module: str) -> None:
    """Add a target whose module defines ``TARGET`` (an ExportTarget named ``name``)."""
    _MODULES[name] = module


def unregister_target(name: str) -> None:
    _MODULES.pop(name, None)


def list_targets() -> list[str]:
    return list(_modules())


def get_target(name: str):
    mods = _modules()
    if name not in mods:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(mods)}")
    t = importlib.import_module(mods[name]).TARGET
    if t.name != name:
        raise ValueError(f"{mods[name]}.TARGET is named {t.name!r}, registered as {name!r}")
    return t


def installed_targets() -> list[str]:
    return [n for n in _modules() if get_target(n).installed()]


def target_for_suffix(suffix: str) -> str | None:
    """The target whose artifacts end in ``suffix`` (.pte, .mlpackage, ...), or None."""
    for n in _modules():
        if get_target(n).suffix == suffix:
            return n
    return None


def all_precisions() -> list[str]:
    seen: dict[str, None] = {}
    for n in _modules():
        seen.update(dict.fromkeys(get_target(n).precisions))
    return list(seen)
