"""Quantisation recipes: one frozen, validated description that every backend's quantizer is built from.

A recipe is saved with every quantised model (JSON inside the .pt2 and in each artifact's
manifest), so what was asked for and what a backend made of it can always be compared.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

WEIGHT_DTYPES = ("int8",)
GRANULARITIES = ("per_channel", "per_tensor")
ACT_DTYPES = ("int8", "int16", "none")  # none: weight-only
OBSERVERS = ("minmax", "moving_average", "histogram")
RANGE_SEARCH = ("none", "percentile", "mse")


@dataclass(frozen=True)
class QATSchedule:
    """When QAT stops updating batch-norm statistics and observers (epochs, 0-based; -1 = never)."""

    # Measured on synthroom (hydranet_small, 1 epoch): BN frozen from the start and Adam at 1e-4 gave
    # QAT mIoU 45.5 vs 43.3 with BN updating for the first epoch at 1e-3 (FP32 45.8, PTQ 45.2).
    freeze_bn_epoch: int = 0
    freeze_observer_epoch: int = 1

    def __post_init__(self):
        for f in ("freeze_bn_epoch", "freeze_observer_epoch"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < -1:
                raise ValueError(f"qat.{f}={v!r}: an epoch index >= 0, or -1 for never")


@dataclass(frozen=True)
class Recipe:
    name: str = "w8a8"
    weight_dtype: str = "int8"
    weight_granularity: str = "per_channel"
    weight_symmetric: bool = True
    act_dtype: str = "int8"
    act_symmetric: bool = False
    # histogram + mse is XNNPACK's own PTQ default (HistogramObserver searches the range that
    # minimises L2 quantisation error); percentile clips at recipe.percentile instead.
    observer: str = "histogram"
    range_search: str = "mse"  # histogram only: mse or percentile; none for the min/max observers
    percentile: float = 99.99
    keep_float: tuple[str, ...] = ()  # module names or fnmatch patterns, e.g. "segm", "pre_*", "crp1.*"
    # W8A16 per layer: these layers' activations (inputs and output) in int16, their weights int8. Where the
    # format computes it (ONNX QDQ at opset 21, LiteRT's int16x8 kernels; Hexagon's HTP natively); the
    # ExecuTorch (XNNPACK) and Core ML exports refuse it, naming the layers (calibration/quantizers.py).
    int16_layers: tuple[str, ...] = ()
    # fp16 per layer: these layers stay float (not quantised) and compute in fp16, weights and activations, with
    # a cast where each island starts and ends (calibration/fp16.py). Where the format computes it: ExecuTorch
    # (XNNPACK's fp16 kernels); Core ML computes every float layer in fp16 already (list them in keep_float),
    # and the ONNX and LiteRT exports refuse it, naming the layers. QAT trains them in fp32 and casts at convert.
    fp16_layers: tuple[str, ...] = ()
    qat: QATSchedule = field(default_factory=QATSchedule)

    def __post_init__(self):
        def check(f, allowed):
            v = getattr(self, f)
            if v not in allowed:
                raise ValueError(f"recipe.{f}={v!r}: choose one of {', '.join(allowed)}")

        check("weight_dtype", WEIGHT_DTYPES)
        check("weight_granularity", GRANULARITIES)
        check("act_dtype", ACT_DTYPES)
        check("observer", OBSERVERS)
        check("range_search", RANGE_SEARCH)
        if self.observer == "histogram" and self.range_search == "none":
            raise ValueError("recipe.range_search: the histogram observer needs 'mse' or 'percentile'")
        if self.observer != "histogram" and self.range_search != "none":
            raise ValueError(f"recipe.range_search={self.range_search!r} needs observer='histogram' "
                             f"(got {self.observer!r}); use range_search='none'")
        if not 90.0 <= float(self.percentile) <= 100.0:
            raise ValueError(f"recipe.percentile={self.percentile}: between 90 and 100")
        if isinstance(self.keep_float, str):
            raise ValueError("recipe.keep_float: a list of module names or patterns, not a string")
        object.__setattr__(self, "keep_float", tuple(self.keep_float))
        if isinstance(self.int16_layers, str):
            raise ValueError("recipe.int16_layers: a list of module names or patterns, not a string")
        object.__setattr__(self, "int16_layers", tuple(self.int16_layers))
        if isinstance(self.fp16_layers, str):
            raise ValueError("recipe.fp16_layers: a list of module names or patterns, not a string")
        object.__setattr__(self, "fp16_layers", tuple(self.fp16_layers))
        for a, b in (("keep_float", "int16_layers"), ("keep_float", "fp16_layers"), ("int16_layers", "fp16_layers")):
            both = sorted(set(getattr(self, a)) & set(getattr(self, b)))
            if both:
                raise ValueError(f"recipe: {both} both in {a} and {b}; a layer has one precision")
        if self.fp16_layers and self.weight_only:
            raise ValueError("recipe.fp16_layers needs quantised activations elsewhere (act_dtype int8 or int16)")
        if self.int16_layers and self.act_dtype != "int8":
            raise ValueError(f"recipe.int16_layers needs act_dtype='int8' (the rest of the model), got {self.act_dtype!r}")
        if isinstance(self.qat, dict):
            object.__setattr__(self, "qat", QATSchedule(**self.qat))
        if not self.name or not isinstance(self.name, str):
            raise ValueError("recipe.name: a non-empty string")

    @property
    def weight_only(self) -> bool:
        return self.act_dtype == "none"

    @property
    def float_layers(self) -> tuple[str, ...]:
        """Every layer the quantizer leaves float: kept fp32 and computed in fp16."""
        return self.keep_float + self.fp16_layers

    def to_dict(self) -> dict:
        d = asdict(self)
        d["keep_float"] = list(self.keep_float)
        d["int16_layers"] = list(self.int16_layers)
        d["fp16_layers"] = list(self.fp16_layers)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict, where: str = "recipe") -> "Recipe":
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        d = dict(d)
        if "qat" in d:
            q = d["qat"]
            qknown = {f.name for f in fields(QATSchedule)}
            if not isinstance(q, dict) or set(q) - qknown:
                raise ValueError(f"{where}: qat must be an object with keys {sorted(qknown)}")
            d["qat"] = QATSchedule(**q)
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"{where}: {e}") from None

    def replace(self, **kw) -> "Recipe":
        return replace(self, **kw)


PRESETS: dict[str, Recipe] = {
    "w8a8": Recipe(),
    # The last layers of each head, where 40-way logits and metric depth are most sensitive.
    "w8a8-heads-fp": Recipe(name="w8a8-heads-fp", keep_float=("pre_segm", "segm", "pre_depth", "depth", "pre_normal", "normal")),
    "w8a16": Recipe(name="w8a16", act_dtype="int16"),
    "w8-weight-only": Recipe(name="w8-weight-only", act_dtype="none"),
}


def load_recipe(spec: str | Path | Recipe | None) -> Recipe:
    """A preset name, a path to a recipe JSON, or a Recipe."""
    from edgehydra.errors import BadInputError

    if spec is None:
        return PRESETS["w8a8"]
    if isinstance(spec, Recipe):
        return spec
    if str(spec) in PRESETS:
        return PRESETS[str(spec)]
    p = Path(spec)
    if not p.is_file():
        raise BadInputError(f"recipe {spec!r}: not a preset ({', '.join(PRESETS)}) nor a file")
    try:
        return Recipe.from_dict(json.loads(p.read_text()), where=str(p))
    except json.JSONDecodeError as e:
        raise BadInputError(f"{p}: invalid JSON ({e})") from None
    except ValueError as e:
        raise BadInputError(str(e)) from None


def check_layers(recipe: Recipe, model) -> None:
    """Refuse a recipe whose keep-float patterns name no module of ``model`` (a typo would quantise the layer
    it meant to keep float, and say nothing), with the closest names. The presets' head names are written for
    every task a HydraNet may have: a pattern naming a head of a task this model lacks is not an error."""
    import difflib
    import fnmatch

    from edgehydra.errors import BadInputError

    if recipe.name in PRESETS and PRESETS[recipe.name] == recipe:
        return
    names = [n for n, _ in model.named_modules() if n]
    heads = {"segm", "depth", "normals", "normal"} - set(getattr(model.config, "tasks", ()))
    for pat in recipe.keep_float + recipe.int16_layers + recipe.fp16_layers:
        field = ("keep_float" if pat in recipe.keep_float else "int16_layers" if pat in recipe.int16_layers
                 else "fp16_layers")
        if any(n == pat or n.startswith(pat + ".") or fnmatch.fnmatchcase(n, pat) for n in names):
            continue
        if pat.removeprefix("pre_") in heads:
            continue
        close = difflib.get_close_matches(pat, names, n=4, cutoff=0.5)
        raise BadInputError(f"recipe {recipe.name!r}: {field} {pat!r} names no layer of this model"
                            + (f"; close: {', '.join(close)}" if close else ""))
