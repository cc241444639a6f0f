"""Per-layer, per-task quantisation sensitivity, and the smallest keep-float set that meets budgets.

For every convolution L: (a) everything quantised except L ("float-one"): how much of the PTQ loss
L alone accounts for; (b) only L quantised ("quant-one"): the damage L's quantisation does on its
own. Both are reported per task (mIoU, depth RMSE, abs rel) as deltas against FP32, ranked by
quant-one damage. With budgets, layers are moved to float greedily in rank order until the
PTQ model meets every budget; the result is a recipe file the other commands accept.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import torch

from edgehydra._io import atomic_write_json, save_figure
from edgehydra.checkpoint import load_checkpoint
from edgehydra.errors import BadInputError
from edgehydra.metrics import Scoring
from edgehydra.train import evaluate

from .calibset import open_sweep_data
from .ptq import CalibratedRanges, export_stage, quantize_ptq
from .recipe import load_recipe


def conv_layers(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]


def quant_units(model) -> list[str]:
    """Every quantisable unit with a name: the convolutions, then the decoder's op modules (its skip
    fusions "fuse4".."fuse1", upsamplings "up4".."up2" and CRP sums "crp2.0.sum", HydraNet.op_units)."""
    units = model.op_units() if hasattr(model, "op_units") else []
    return conv_layers(model) + units


def select_layers(model, layers: str | None, ops: bool = False) -> list[str]:
    """Conv layers (and with ``ops`` the decoder's op modules, ``quant_units``) matching comma-separated
    names or fnmatch patterns; a pattern matching nothing is refused with the closest names (a typo would
    otherwise sweep nothing and propose nothing)."""
    import difflib

    names = quant_units(model) if ops else conv_layers(model)
    if not layers:
        return names
    pats = [p.strip() for p in layers.split(",") if p.strip()]
    for p in pats:
        if not any(n == p or fnmatch.fnmatchcase(n, p) or n.startswith(p + ".") for n in names):
            close = difflib.get_close_matches(p, names, n=4, cutoff=0.5)
            raise BadInputError(f"layer {p!r} matches no convolution" + (" or op module" if ops else "")
                                + (f"; close: {', '.join(close)}" if close else f"; e.g. {', '.join(names[-4:])}"))
    return [n for n in names if any(n == p or fnmatch.fnmatchcase(n, p) or n.startswith(p + ".") for p in pats)]


def sweep(names: list[str], fn, progress=None, label: str = "sensitivity") -> dict:
    """``{name: fn(name)}`` for every name; under torchrun each rank computes names[rank::world] and
    every rank gets the merged table (gloo's all_gather_object), in ``names`` order."""
    from edgehydra.train import dist_info

    rank, world = dist_info()
    mine = names[rank::world]
    task = progress.add_task(label, total=len(mine)) if progress else None
    part = {}
    for n in mine:
        part[n] = fn(n)
        if progress:
            progress.advance(task)
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world
        dist.all_gather_object(parts, part)
        part = {k: v for p in parts for k, v in p.items()}
    return {n: part[n] for n in names}


def _metrics(fwd, val, cfg, limit, sequence=None, nhwc=False):
    """Per-task metrics on ``limit`` validation frames; with ``sequence`` (synthroom frames with poses) also the
    segmentation flicker in percent (edgehydra.temporal.sequence_flicker). ``nhwc``: an FP32 model, fed
    channels-last frames (edgehydra.train.evaluate)."""
    # shard=False: under torchrun each rank scores a different assignment; sharding the frames and
    # all-reducing would sum two models' confusion matrices (the first 2-rank test caught exactly that).
    m = evaluate(fwd, val, Scoring(cfg.tasks, cfg.num_classes, getattr(val, "depth_cap", cfg.depth_cap)), limit=limit,
                 shard=False, nhwc=nhwc)
    out = {k: m.get(k, float("nan")) for k in ("miou", "rmse", "abs_rel")}
    if "normals" in cfg.tasks:
        out["normals_median_angle"] = m.get("normals_median_angle", float("nan"))
    if sequence is not None and "segm" in cfg.tasks:
        from edgehydra.temporal import sequence_flicker

        out["flicker"] = sequence_flicker(fwd, cfg, sequence)
    return out


def _delta(m, ref):
    return {k: m[k] - ref[k] for k in ref}


@dataclass(frozen=True)
class SensitivityConfig:
    """What `edgehydra sensitivity` sweeps: ``frames`` validation frames per trial, ``calib_frames`` per PTQ, the
    budgets that make it propose a keep-float set, the base recipe and the layers (``select_layers`` patterns)."""
    frames: int = 50
    calib_frames: int = 32
    max_miou_drop: float | None = None
    max_absrel_rise: float | None = None
    recipe_spec: str | None = None
    layers: str | None = None

    def __post_init__(self):
        if self.frames < 1 or self.calib_frames < 1:
            raise BadInputError(f"sensitivity: frames ({self.frames}) and calib_frames ({self.calib_frames}) must be >= 1")


@dataclass(frozen=True)
class Sweep:
    """What every trial of a sweep shares: the model, its base recipe, the splits, the calibration set, the input
    size, the frames scored and (optionally) the model exported once, copied for each PTQ."""
    model: torch.nn.Module
    recipe: object
    train: object
    val: object
    calib: object
    size: tuple
    frames: int
    graph: object = None
    ranges: object = None  # the graph's CalibratedRanges on calib: one calibration for the sweep

    def measure(self, keep_float, graph: bool = True) -> dict:
        q, _ = quantize_ptq(self.model, self.recipe.replace(keep_float=tuple(keep_float)), self.train, self.calib,
                            self.size, graph=self.graph if graph else None, ranges=self.ranges if graph else None)
        return _metrics(q, self.val, self.model.config, self.frames)


def sensitivity_run(checkpoint: Path, out: Path, cfg: SensitivityConfig, dataset=None, model=None,
                    progress=None) -> dict:
    base = load_recipe(cfg.recipe_spec)
    if model is None:
        model, _ = load_checkpoint(checkpoint)
    data = open_sweep_data(checkpoint, dataset, None, cfg.calib_frames)
    size, train, val, calib = data.size, data.train, data.val, data.calib
    names = select_layers(model, cfg.layers)
    fp32 = _metrics(model, val, model.config, cfg.frames, nhwc=True)
    # exported once, copied for each PTQ of the sweep
    sw = Sweep(model, base, train, val, calib, size, cfg.frames, export_stage(model, size), CalibratedRanges(calib))
    all_q = sw.measure(())

    def one(n):
        float_one = sw.measure((n,))
        others = tuple(x for x in conv_layers(model) if x != n)
        quant_one = sw.measure(others)
        return {"layer": n, "float_one": _delta(float_one, fp32), "quant_one": _delta(quant_one, fp32),
                "recovers": _delta(float_one, all_q)}

    rows = list(sweep(names, one, progress).values())
    # Rank by the damage the layer's quantisation does on its own, per task and relative to FP32
    # (mIoU points lost / FP32 mIoU; depth RMSE or abs rel gained / FP32's): the worse task decides.
    for r in rows:
        r["damage"] = damage(r["quant_one"], fp32)
    rows.sort(key=lambda r: -r["damage"])
    out.mkdir(parents=True, exist_ok=True)
    report = {"fp32": fp32, "all_quantised": all_q, "layers": rows, "frames": cfg.frames,
              "calibration_sha256": calib.sha256, "recipe": base.to_dict()}
    if cfg.max_miou_drop is not None or cfg.max_absrel_rise is not None:
        report["proposal"] = propose(sw, fp32, all_q, rows, cfg, out)
    report["chart"] = str(chart(rows, out / "sensitivity.png"))
    atomic_write_json(out / "sensitivity.json", report)
    return report


def damage(delta: dict, fp32: dict) -> float:
    import math

    f = lambda v: v if math.isfinite(v) else 0.0  # noqa: E731
    seg = -f(delta["miou"]) / max(fp32["miou"], 1.0)
    dep = max(f(delta["abs_rel"]) / max(fp32["abs_rel"], 1e-3), f(delta["rmse"]) / max(fp32["rmse"], 1e-3))
    return max(seg, dep)


def meets(m, fp32, max_miou_drop, max_absrel_rise) -> bool:
    ok = True
    if max_miou_drop is not None:
        ok &= fp32["miou"] - m["miou"] <= max_miou_drop
    if max_absrel_rise is not None:
        ok &= m["abs_rel"] - fp32["abs_rel"] <= max_absrel_rise
    return bool(ok)


def propose(sw: Sweep, fp32: dict, all_q: dict, rows: list, cfg: SensitivityConfig, out: Path) -> dict:
    """Layers to float greedily in ``rows``' rank order until the PTQ model meets ``cfg``'s budgets; a recipe file."""
    keep: list[str] = []
    m = all_q
    while not meets(m, fp32, cfg.max_miou_drop, cfg.max_absrel_rise) and len(keep) < len(rows):
        keep.append(rows[len(keep)]["layer"])
        m = sw.measure(keep, graph=False)
    recipe = sw.recipe.replace(name=f"{sw.recipe.name}-sensitivity", keep_float=tuple(keep))
    f = out / "recipe.json"
    atomic_write_json(f, recipe.to_dict())
    return {"keep_float": keep, "metrics": m, "meets_budgets": meets(m, fp32, cfg.max_miou_drop, cfg.max_absrel_rise),
            "recipe_file": str(f), "budgets": {"max_miou_drop": cfg.max_miou_drop, "max_absrel_rise": cfg.max_absrel_rise}}


def chart(rows, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = rows[:25]
    fig, axes = plt.subplots(1, 2, figsize=(12, max(3, 0.3 * len(top) + 1)), sharey=True)
    names = [r["layer"] for r in top][::-1]
    axes[0].barh(names, [-r["quant_one"]["miou"] for r in top][::-1], color="#c0392b")
    axes[0].set_xlabel("mIoU points lost (only this layer quantised)")
    axes[1].barh(names, [r["quant_one"]["abs_rel"] for r in top][::-1], color="#2471a3")
    axes[1].set_xlabel("abs rel increase (only this layer quantised)")
    fig.suptitle("Per-layer quantisation sensitivity, per task")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    return path
