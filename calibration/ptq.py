"""Post-training quantisation as small named stages: export -> prepare -> calibrate -> convert."""
from __future__ import annotations

import copy

from pathlib import Path

import torch

from edgehydra.errors import BadInputError
from edgehydra.quiet import quiet_imports

from .calibset import CalibrationSet
from .program import export_stage  # noqa: F401  (the PTQ and QAT stages start from it)
from .quantizers import Translation, translate
from .recipe import Recipe


def prepare_stage(graph, translation: Translation, qat: bool = False):
    quiet_imports()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    return (prepare_qat_pt2e if qat else prepare_pt2e)(graph, translation.quantizer)


@torch.no_grad()
def calibrate_stage(prepared, dataset, calib: CalibrationSet, batch_size: int = 8, progress=None):
    """Run the calibration frames through the observers (batched; the graph has a dynamic batch)."""
    idx = list(calib.indices)
    task = progress.add_task("calibrate", total=len(idx)) if progress else None
    for s in range(0, len(idx), batch_size):
        x = torch.stack([dataset[i]["image"] for i in idx[s:s + batch_size]])
        prepared(x)
        if progress:
            progress.advance(task, len(x))


def convert_stage(prepared, fold: bool = True, recipe: Recipe | None = None):
    """convert_pt2e, then the recipe's fp16 layers made fp16 (calibration/fp16.py)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared, fold_quantize=fold)
    if recipe is not None and recipe.fp16_layers:
        from .fp16 import half_islands

        half_islands(converted, recipe.fp16_layers)
    return converted


def quantize_ptq(model: torch.nn.Module, recipe: Recipe, dataset, calib: CalibrationSet, size, *,
                 backend: str = "xnnpack", progress=None, graph=None):
    """All four stages. ``dataset[i]['image']`` must already be at ``size``. ``graph``: ``export_stage(model,
    size)`` made once by a caller that quantises the same model many times (a sweep): each call prepares a
    copy of it (prepare_pt2e rewrites the graph it is given) instead of exporting again (about a third of a
    tiny-model PTQ). A format's own limits are judged where it is exported (``translate(..., target=)``)."""
    if len(calib.indices) == 0:
        raise BadInputError("calibration set is empty")
    tr = translate(recipe, backend, is_qat=False)
    prepared = prepare_stage(copy.deepcopy(graph) if graph is not None else export_stage(model, size), tr)
    calibrate_stage(prepared, dataset, calib, progress=progress)
    return convert_stage(prepared, recipe=recipe), tr


def quantized_layer_names(converted) -> tuple[list[str], list[str]]:
    """(quantised, float) convolution module paths of a converted graph: the report lists both."""
    from edgehydra.graph import node_module_path

    q, f = set(), set()
    for n in converted.graph.nodes:
        if n.op == "call_function" and "conv" in str(n.target):
            path = node_module_path(n)
            w = n.args[1] if len(n.args) > 1 else None
            is_q = w is not None and hasattr(w, "target") and "dequantize" in str(getattr(w, "target", ""))
            (q if is_q else f).add(path)
    return sorted(q), sorted(f - q)


def relative_path(p: Path, base: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(p)
