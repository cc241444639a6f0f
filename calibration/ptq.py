"""Post-training quantisation as small named stages: export -> prepare -> calibrate -> convert."""
from __future__ import annotations

import copy
import functools

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


def _observers(prepared) -> dict:
    """The observer instances of a prepared graph by what they observe: the node each call site reads (through
    other observers), in graph order, with the ranges it quantises to; a shared observer has several sites. Two
    instances with one key watch the same tensors with the same settings: both are listed."""
    def is_observer(n):
        return n.op == "call_module" and "activation_post_process" in str(n.target)

    sites: dict[torch.nn.Module, list[str]] = {}  # each instance (shared ones sit at several nodes) -> what it reads
    for n in prepared.graph.nodes:
        if is_observer(n):
            src = n.args[0]
            while is_observer(src):
                src = src.args[0]
            sites.setdefault(prepared.get_submodule(n.target), []).append(src.name)
    out = {}
    for o, names in sites.items():
        key = (tuple(names), type(o).__name__, str(o.dtype), str(getattr(o, "qscheme", None)),
               getattr(o, "quant_min", None), getattr(o, "quant_max", None), getattr(o, "ch_axis", None))
        out.setdefault(key, []).append(o)
    return out


class CalibratedRanges:
    """One calibration's observer states, handed to every other PTQ of the same exported graph on the same
    calibration frames (a sweep). PTQ observers pass their input through, so every tensor of the prepared graph
    is the FP32 model's whatever the recipe keeps float: an observer that watches the same tensors with the same
    settings ends in the same state, bit for bit (tests/test_calibration.py compares whole programs). A PTQ with
    an observer the calibration did not have (another share, a W8A16 layer) calibrates itself.
    Calibration was a third of each PTQ of the default demo's mixed search (11 s of 33 s at 240x320, 32 frames).

    The same holds for what convert_pt2e asks of each observer: its scale and zero point are a function of its state
    and settings, so they are computed once per observer and handed to every PTQ that loaded that state. (A histogram
    observer's search for them was 19.7 of the 28.9 s that convert_pt2e took in a profiled fast demo.)"""

    def __init__(self, calib: CalibrationSet):
        self.calib_sha256, self.states, self.reused = calib.sha256, None, 0
        self.qparams: dict = {}

    def record(self, prepared) -> None:
        obs = _observers(prepared)
        self.states = {k: copy.deepcopy(o[0].state_dict()) for k, o in obs.items()}
        self._share_qparams(obs)

    def load(self, prepared, calib: CalibrationSet) -> bool:
        if self.states is None or calib.sha256 != self.calib_sha256:
            return False
        obs = _observers(prepared)
        if not all(k in self.states for k in obs):
            return False
        for k, same in obs.items():
            for o in same:
                o.load_state_dict(self.states[k])
        self._share_qparams(obs)
        self.reused += 1
        return True

    def _share_qparams(self, obs: dict) -> None:
        """Each observer (in the recorded state) answers calculate_qparams from the first answer for its key and
        settings: the tensors kept, a copy handed out, so no program shares storage with another."""
        for k, same in obs.items():
            for o in same:
                settings = tuple(sorted((a, repr(v)) for a, v in vars(o).items() if not a.startswith("_")
                                        and not isinstance(v, torch.Tensor) and not callable(v)))
                o.calculate_qparams = functools.partial(self._qparams, (k, settings), o)

    def _qparams(self, key, observer):
        if key not in self.qparams:
            self.qparams[key] = type(observer).calculate_qparams(observer)
        return tuple(t.clone() for t in self.qparams[key])


def quantize_ptq(model: torch.nn.Module, recipe: Recipe, dataset, calib: CalibrationSet, size, *,
                 backend: str = "xnnpack", progress=None, graph=None, ranges: CalibratedRanges | None = None):
    """All four stages. ``dataset[i]['image']`` must already be at ``size``. ``graph``: ``export_stage(model,
    size)`` made once by a caller that quantises the same model many times (a sweep): each call prepares a
    copy of it (prepare_pt2e rewrites the graph it is given) instead of exporting again (about a third of a
    tiny-model PTQ). ``ranges``: that caller's CalibratedRanges of ``graph`` on ``calib``, filled by the first
    PTQ that calibrates and read by the others. A format's own limits are judged where it is exported
    (``translate(..., target=)``)."""
    if len(calib.indices) == 0:
        raise BadInputError("calibration set is empty")
    tr = translate(recipe, backend, is_qat=False)
    prepared = prepare_stage(copy.deepcopy(graph) if graph is not None else export_stage(model, size), tr)
    if ranges is None or not ranges.load(prepared, calib):
        calibrate_stage(prepared, dataset, calib, progress=progress)
        if ranges is not None and ranges.states is None:
            ranges.record(prepared)
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
