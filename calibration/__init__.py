"""Quantisation: recipes, calibration sets, PTQ, QAT, sensitivity (torchao pt2e).

Importing this package imports no backend: torchao / executorch load when a stage runs.
"""
import logging as _logging

# torchao warns "Failed to load ..._C_mxfp8..." for CUDA-only kernels on every CPU import.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

from .recipe import PRESETS, QATSchedule, Recipe, load_recipe  # noqa: E402

__all__ = ["PRESETS", "QATSchedule", "Recipe", "load_recipe"]
