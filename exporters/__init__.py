"""Exporters: one module per target behind a small registry.

Each name maps to the module that holds its :class:`~edgehydra.exporters.base.ExportTarget`
record, imported only when asked for, so listing targets imports no backend.
"""
from __future__ import annotations

import importlib

_MODULES = {
    "executorch": "edgehydra.exporters.executorch",
    "coreml": "edgehydra.exporters.coreml",
    "tflite": "edgehydra.exporters.tflite",
    "onnx": "edgehydra.exporters.onnx",
}


def list_targets() -> list[str]:
    return list(_MODULES)


def get_target(name: str):
    if name not in _MODULES:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).TARGET


def installed_targets() -> list[str]:
    return [n for n in _MODULES if get_target(n).installed()]
