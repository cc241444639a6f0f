"""Mixed precision under joint budgets: which layers stay float, for one device, and what it costs each task.

For each candidate convolution L two tables are built:

- **accuracy**: the run's PTQ with every layer quantised except L (``keep_float=(L,)``), evaluated per
  task: what keeping L float recovers, in mIoU, depth RMSE and abs rel (normals where present), against
  the all-int8 model. The sweep shards over ranks under torchrun (``sensitivity.sweep``).
- **latency**: on this host (a profile with ``host = true``: host_cpu ships ExecuTorch, host_cpu_onnxruntime
  ONNX, host_cpu_litert TFLite), measured in the runtime that ships (devices/host_measure.py): the
  all-int8 program, the FP32 model and, where the format builds it, the program with every W8A16 candidate
  in int16 are built as that format's artifacts and profiled operator by operator by the runtime's own
  tool (ETDump, onnxruntime's profiler, LiteRT), each operator charged to its module, so L's float cost
  is ``t_fp32(L) - t_int8(L)``. On x86 this is often negative: XNNPACK's int8 depthwise convolutions run
  slower than its fp32 ones (benchmarks/ops.py), so keeping them float is faster and more accurate at
  once. On a remote device, estimated from its profile (devices/estimate.py, per-precision efficiencies
  calibrated on the run's measurements when present), at the precision its format computes float layers
  in (fp16 on GPUs/NPUs and Core ML, fp32 on CPUs).

The candidates are the convolutions and the decoder's op modules (skip fusions, upsamplings, CRP sums:
HydraNet.op_units). Where the device's format builds W8A16 (its export target's ``w8a16_ops``: ONNX), each
candidate also has a W8A16 table: the accuracy with only L in int16 activations (``int16_layers=(L,)``) and
its latency measured (on this host) or at the profile's int16 rate.

Where the format computes fp16 islands (its target's ``fp16_islands``: ExecuTorch, XNNPACK's fp16 kernels),
fp16 is a fourth precision: each candidate's fp16 time is measured (the program with every candidate in
fp16, profiled like the others) or estimated at the profile's fp16 rate, and where it beats the layer's
fp32 time the accuracy with only L in fp16 (``fp16_layers=(L,)``) is measured too; where fp16 is slower it
is no more accurate than fp32 and never chosen, so it is not swept (the report says which).

An assignment is the set S of layers kept float (fp32), the set W of layers in W8A16 and the set H of
layers in fp16; its accuracy is
predicted as the all-int8 figures plus the sum of the members' recoveries, its latency as the all-int8
latency minus the members' gains, its size from the weights' bytes (W8A16 weights stay int8).
Candidates: a greedy path (free moves first: faster and no less accurate; then the most budget deficit
removed per millisecond; each move takes one layer to float or to W8A16) and every combination of the
groups "depthwise", "decoder-ops", "encoder", "decoder" and each head, each group float or W8A16. The predicted Pareto front is then **checked
by real PTQ and evaluation** in order of predicted latency until one assignment meets every budget
when measured; on this host its latency is measured too (fp32, int8 and each candidate built in the
format and timed interleaved in one run). Additivity is an approximation, and the report shows predicted against measured.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import torch

from edgehydra.errors import BadInputError, EdgeHydraError

# +1: higher is better. The keys are evaluate()'s (sensitivity._metrics passes them on): the normals key was
# "normals_median_deg" here and "normals_median_angle" in MixedBudgets, so a normals budget never bit in a search.
TASK_METRICS = {"miou": +1, "rmse": -1, "abs_rel": -1, "normals_median_angle": -1, "flicker": -1}


class BudgetsNotMet(EdgeHydraError):
    exit_code = 1


@dataclass(frozen=True)
class MixedBudgets:
    """Joint budgets. Relative ones are against FP32 on the same frames; absolute ones come from the profile."""

    max_miou_drop: float | None = None
    max_rmse_rise: float | None = None
    max_absrel_rise: float | None = None
    min_miou: float | None = None
    max_rmse: float | None = None
    max_abs_rel: float | None = None
    latency_ms: float | None = None
    size_mb: float | None = None
    max_normals_rise: float | None = None  # degrees of median angular error over FP32 (a three-task model)
    max_normals_median: float | None = None  # degrees, the profile's floor (max_normals_median_deg)
    # percentage points of segmentation flicker over FP32 on a synthroom sequence (the profile's max_flicker_rise)
    max_flicker_rise: float | None = None

    def __post_init__(self):
        for k, v in asdict(self).items():
            if v is not None and (not isinstance(v, (int, float)) or v < 0 or not math.isfinite(v)):
                raise BadInputError(f"budget {k}={v!r}: a finite number >= 0")

    @classmethod
    def for_profile(cls, b, *, floors: bool = True, latency_ms: float | None = None,
                    max_flicker_rise: float | None = None, **relative) -> "MixedBudgets":
        """Relative budgets (``relative``: max_miou_drop, max_rmse_rise, max_absrel_rise, max_normals_rise) with a
        device profile's budgets ``b``: its absolute task floors and size where ``floors``, its latency unless
        ``latency_ms`` is named, its flicker budget unless ``max_flicker_rise`` is named (and only with ``floors``)."""
        return cls(**relative, min_miou=b.min_miou if floors else None,
                   max_rmse=b.max_depth_rmse if floors else None, max_abs_rel=b.max_abs_rel if floors else None,
                   latency_ms=latency_ms if latency_ms is not None else b.latency_p50_ms,
                   size_mb=b.max_artifact_mb if floors else None,
                   max_normals_median=b.max_normals_median_deg if floors else None,
                   max_flicker_rise=max_flicker_rise if max_flicker_rise is not None else (
                       b.max_flicker_rise if floors else None))

    def misses(self, m: dict, fp32: dict, latency_ms: float | None, size_mb: float | None) -> dict:
        """{budget: excess} for every budget ``m`` misses (excess > 0, in the budget's unit)."""
        def over(value, limit):
            return value - limit if value is not None and limit is not None and value > limit else 0.0

        g = lambda k: m.get(k) if m.get(k) is not None and math.isfinite(m.get(k)) else None  # noqa: E731
        out = {
            "max_miou_drop": over(fp32["miou"] - g("miou") if g("miou") is not None else None, self.max_miou_drop),
            "max_rmse_rise": over(g("rmse") - fp32["rmse"] if g("rmse") is not None else None, self.max_rmse_rise),
            "max_absrel_rise": over(g("abs_rel") - fp32["abs_rel"] if g("abs_rel") is not None else None,
                                    self.max_absrel_rise),
            "min_miou": over(-g("miou") if g("miou") is not None else None,
                             -self.min_miou if self.min_miou is not None else None),
            "max_rmse": over(g("rmse"), self.max_rmse),
            "max_abs_rel": over(g("abs_rel"), self.max_abs_rel),
            "latency_ms": over(latency_ms, self.latency_ms),
            "size_mb": over(size_mb, self.size_mb),
            # normals: only where the model predicts them (a two-task model has no such metric to miss)
            "max_normals_rise": over(g("normals_median_angle") - fp32["normals_median_angle"]
                                     if g("normals_median_angle") is not None and "normals_median_angle" in fp32
                                     else None, self.max_normals_rise),
            "max_normals_median": over(g("normals_median_angle"), self.max_normals_median),
            "max_flicker_rise": over(g("flicker") - fp32["flicker"] if g("flicker") is not None and "flicker" in fp32
                                     else None, self.max_flicker_rise),
        }
        return {k: v for k, v in out.items() if v > 0}

    def scale(self, key: str, fp32: dict) -> float:
        """What one unit of miss weighs in the greedy search: the budget itself, or 1 % of FP32."""
        v = getattr(self, key)
        ref = {"max_miou_drop": "miou", "min_miou": "miou", "max_rmse_rise": "rmse", "max_rmse": "rmse",
               "max_absrel_rise": "abs_rel", "max_abs_rel": "abs_rel", "max_normals_rise": "normals_median_angle",
               "max_normals_median": "normals_median_angle", "max_flicker_rise": "flicker"}.get(key)
        floor = 0.01 * abs(fp32.get(ref, 1.0)) if ref else 0.01
        return max(v if key.startswith("max_") and v else 0.0, floor, 1e-6)


# ----------------------------------------------------------------------------------------- groups
def groups_of(layers: list[str], depthwise: set[str], tasks, units=()) -> dict[str, list[str]]:
    from edgehydra.graph import stage_of

    g = {"depthwise": [n for n in layers if n in depthwise], "decoder-ops": [n for n in layers if n in set(units)]}
    for st in ["encoder", "decoder"] + [f"head:{t}" for t in tasks]:
        g[st] = [n for n in layers if stage_of(n, tasks) == st]
    return {k: v for k, v in g.items() if v}


def encoder_prefixes(layers: list[str]) -> dict[str, list[str]]:
    """layer1, layer1-2, ..., layer1-K: contiguous float islands at the input, which cost one quantize
    (the input arrives float anyway). On x86 hosts the early, high-resolution layers are where XNNPACK's
    fp32 kernels beat its int8 ones (docs/RESULTS.md, mixed precision)."""
    import re

    stages = sorted({int(m.group(1)) for n in layers if (m := re.match(r"layer(\d+)\.", n + "."))})
    out = {}
    for k in stages:
        names = [n for n in layers if (m := re.match(r"layer(\d+)\.", n + ".")) and int(m.group(1)) <= k]
        out[f"layer1-{k}" if k > 1 else "layer1"] = names
    return out


def graph_order(ep, units) -> list[str]:
    """Convolutions and op modules (``units``) in the exported graph's order, each once: the chain along which
    float islands start and end (Space.boundary_ms)."""
    from edgehydra.graph import node_module_path
    from edgehydra.graph import UNIT_OPS

    units, order = set(units), []
    gm = ep.graph_module if hasattr(ep, "graph_module") else ep
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        path = node_module_path(n)
        if n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default) or (
                str(n.target) in UNIT_OPS and path in units):
            if path and path not in order:
                order.append(path)
    return order


def conv_output_elems(model, size) -> dict[str, int]:
    """Elements of each convolution's (and op module's) output at ``size`` (batch 1): what crosses an
    island's boundary."""
    out, hooks = {}, []
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) or getattr(m, "counted_in_graph", False):
            hooks.append(m.register_forward_hook(lambda mod, i, o, n=n: out.__setitem__(n, o.numel())))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *size))
    finally:
        for h in hooks:
            h.remove()
    return out


def weight_bytes(model, layers, float_bytes: int) -> dict[str, tuple[int, int]]:
    """(int8 bytes, float bytes) of each conv's weights: int8 adds a float scale per output channel."""
    mods = dict(model.named_modules())
    out = {}
    for n in layers:
        if getattr(mods[n], "weight", None) is None:  # an op module (an add, an upsampling): no weights
            out[n] = (0, 0)
            continue
        w = mods[n].weight
        b = mods[n].bias.numel() * 4 if mods[n].bias is not None else 0
        out[n] = (w.numel() + 4 * w.shape[0] + b, w.numel() * float_bytes + b)
    return out


# ----------------------------------------------------------------------------------------- search
@dataclass
class Candidate:
    name: str
    keep_float: tuple[str, ...]
    predicted: dict
    latency_ms: float
    size_mb: float
    measured: dict | None = None
    measured_latency_ms: float | None = None
    int16: tuple[str, ...] = ()  # the layers in W8A16 (int16 activations, int8 weights)
    fp16: tuple[str, ...] = ()  # the layers kept float and computed in fp16 (calibration/fp16.py)

    @property
    def key(self) -> tuple:
        return self.keep_float, self.int16, self.fp16

    @property
    def mixed(self) -> bool:
        """Anything but int8 everywhere."""
        return bool(self.keep_float or self.int16 or self.fp16)

    def to_dict(self) -> dict:
        return {"name": self.name, "keep_float": list(self.keep_float), "int16_layers": list(self.int16),
                "fp16_layers": list(self.fp16),
                "predicted": self.predicted,
                "latency_ms": self.latency_ms, "size_mb": self.size_mb, "measured": self.measured,
                "measured_latency_ms": self.measured_latency_ms}


@dataclass(frozen=True)
class Space:
    """Predicted accuracy, latency and size of any keep-float set, from the per-layer tables.

    Latency also charges the conversions a float island adds: a dequantize where it starts and a quantize
    where it ends, each the size of the tensor crossing the boundary at the per-element convert cost
    measured on the int8 .pte (``convert_ms_per_elem``; 0 where it was not measured). Islands are runs of
    consecutive convolutions in graph order (``order``): exact on the encoder's chain, an approximation
    where the decoder's skip connections meet. The first run of the first benchmark kept 14 scattered
    layers float, predicted 15.3 ms against int8's 16.7 and measured the same as int8: the conversions
    ate the gain.
    """

    all_q: dict  # the all-int8 program's metrics
    gains: dict  # layer -> what keeping it float recovers
    lat: dict  # the per-layer latency table (layer_latency)
    sizes: dict  # layer -> its float weight bytes
    base: int  # the all-int8 artifact's bytes
    order: list = field(default_factory=list)
    out_elems: dict = field(default_factory=dict)
    convert_ms_per_elem: float = 0.0
    gains16: dict = field(default_factory=dict)  # layer -> what W8A16 there recovers, where the format offers it
    # layer -> what fp16 there recovers, for the layers the format computes in fp16 and where it is faster than
    # fp32 (elsewhere fp16 is no more accurate and slower: never worth it); their fp16 weight bytes
    gains_f16: dict = field(default_factory=dict)
    sizes16: dict = field(default_factory=dict)

    def boundary_ms(self, keep) -> float:
        if not self.convert_ms_per_elem or not self.order:
            return 0.0
        ks, ms, n = set(keep), 0.0, len(self.order)
        for i, name in enumerate(self.order):
            if name not in ks:
                continue
            if i > 0 and self.order[i - 1] not in ks:  # an island starts: dequantize its input
                ms += self.convert_ms_per_elem * self.out_elems.get(self.order[i - 1], 0)
            if i < n - 1 and self.order[i + 1] not in ks:  # it ends: quantize its output
                ms += self.convert_ms_per_elem * self.out_elems.get(name, 0)
        return ms

    def lat_gain(self, n: str) -> float:
        """ms saved by keeping n float (negative: float is slower)."""
        return self.lat["int8"].get(n, 0.0) - self.lat["float"].get(n, 0.0)

    def lat_gain16(self, n: str) -> float:
        """ms saved by running n in W8A16 instead of int8 (negative: it is slower)."""
        return self.lat["int8"].get(n, 0.0) - self.lat["int16"].get(n, 0.0)

    def lat_gain_f16(self, n: str) -> float:
        """ms saved by computing n in fp16 instead of int8."""
        return self.lat["int8"].get(n, 0.0) - self.lat["fp16"].get(n, 0.0)

    def candidate(self, name: str, keep, w16=(), f16=()) -> Candidate:
        keep = tuple(sorted(set(keep)))
        w16 = tuple(sorted(set(w16) - set(keep)))
        f16 = tuple(sorted(set(f16) - set(keep) - set(w16)))
        pred = {}
        fin = lambda d, k: d.get(k, 0.0) if math.isfinite(d.get(k, 0.0)) else 0.0  # noqa: E731
        for k, v in self.all_q.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                pred[k] = (v + sum(fin(self.gains[n], k) for n in keep) + sum(fin(self.gains16[n], k) for n in w16)
                           + sum(fin(self.gains_f16[n], k) for n in f16))
        lat = (self.lat["int8_total_ms"] - sum(self.lat_gain(n) for n in keep) - sum(self.lat_gain16(n) for n in w16)
               - sum(self.lat_gain_f16(n) for n in f16) + self.boundary_ms(keep + f16))
        # W8A16 weights stay int8; fp16 weights take two bytes
        size = (self.base + sum(self.sizes[n][1] - self.sizes[n][0] for n in keep)
                + sum(self.sizes16[n][1] - self.sizes16[n][0] for n in f16))
        return Candidate(name, keep, pred, lat, size / 1e6, int16=w16, fp16=f16)


def deficit(c: Candidate, budgets: MixedBudgets, fp32: dict, with_latency: bool = False) -> float:
    miss = budgets.misses(c.predicted, fp32, c.latency_ms if with_latency else None, c.size_mb if with_latency else None)
    return sum(v / budgets.scale(k, fp32) for k, v in miss.items())


def benefit(c: Candidate, fp32: dict) -> float:
    """Accuracy closeness to FP32, summed over tasks relative to FP32 (higher is better)."""
    s = 0.0
    for k, sign in TASK_METRICS.items():
        if k in c.predicted and k in fp32 and math.isfinite(fp32[k]):
            s += sign * (c.predicted[k] - fp32[k]) / max(abs(fp32[k]), 1e-3)
    return s


def greedy_path(space: Space, layers: list[str], budgets: MixedBudgets, fp32: dict) -> list[Candidate]:
    """From all-int8, one layer at a time to float or (where the format offers it, ``space.gains16``) to
    W8A16: free moves first, then the most budget deficit (or, once the accuracy budgets are met, the most
    accuracy) bought per millisecond."""
    keep: list[str] = []
    w16: list[str] = []
    f16: list[str] = []
    path = [space.candidate("all-int8", ())]
    left = list(layers)
    while left:
        cur = path[-1]
        best, best_score = None, -math.inf
        moves = ([(n, "float") for n in left] + [(n, "int16") for n in left if n in space.gains16]
                 + [(n, "fp16") for n in left if n in space.gains_f16])
        for n, prec in moves:
            c = space.candidate("", keep + [n] * (prec == "float"), w16 + [n] * (prec == "int16"),
                                f16 + [n] * (prec == "fp16"))
            cost = c.latency_ms - cur.latency_ms
            gain_def = deficit(cur, budgets, fp32) - deficit(c, budgets, fp32)
            gain_acc = benefit(c, fp32) - benefit(cur, fp32)
            if cost <= 0 and gain_def >= 0 and gain_acc >= 0:
                score = 1e9 + gain_acc - cost  # free: faster and no less accurate
            else:
                score = (gain_def + 1e-3 * gain_acc) / max(cost, 1e-3)
            if score > best_score:
                best, best_score = (n, prec), score
        n, prec = best
        {"float": keep, "int16": w16, "fp16": f16}[prec].append(n)
        left.remove(n)
        path.append(space.candidate(f"greedy+{len(keep) + len(w16) + len(f16)}", keep, w16, f16))
    return path


def group_candidates(space: Space, groups: dict[str, list[str]], prefixes: dict[str, list[str]] | None = None
                     ) -> list[Candidate]:
    """Every combination of ``groups``, and each encoder prefix alone and with each head group."""
    out = []
    names = list(groups)
    for r in range(1, len(names) + 1):
        for combo in itertools.combinations(names, r):
            out.append(space.candidate("+".join(combo), [n for g in combo for n in groups[g]]))
            # and each group of the combination in W8A16 instead, where the format offers it for its members
            can16 = [g for g in combo if any(n in space.gains16 for n in groups[g])]
            for k in range(1, len(can16) + 1):
                for sub in itertools.combinations(can16, k):
                    w16 = [n for g in sub for n in groups[g] if n in space.gains16]
                    keep = [n for g in combo for n in groups[g] if n not in w16]
                    out.append(space.candidate("+".join(g + ("@w8a16" if g in sub else "") for g in combo), keep, w16))
            # and the whole combination computed in fp16, where the format offers it for its members
            members = [n for g in combo for n in groups[g]]
            f16 = [n for n in members if n in space.gains_f16]
            if f16:
                out.append(space.candidate("+".join(combo) + "@fp16", [n for n in members if n not in f16], (), f16))
    for p, members in (prefixes or {}).items():
        out.append(space.candidate(p, members))
        for h in (g for g in names if g.startswith("head:")):
            out.append(space.candidate(f"{p}+{h}", members + groups[h]))
    return out


def pareto(cands: list[Candidate], key=lambda c: c.predicted) -> list[Candidate]:
    """Candidates no other one beats on latency, size and every task metric at once."""
    def vec(c):
        m = key(c) or {}
        return [c.latency_ms, c.size_mb] + [-s * m.get(k, 0.0) for k, s in TASK_METRICS.items() if k in m]

    vs = [vec(c) for c in cands]
    front = []
    for i, c in enumerate(cands):
        if not any(all(a <= b for a, b in zip(vs[j], vs[i])) and any(a < b for a, b in zip(vs[j], vs[i]))
                   for j in range(len(cands)) if j != i):
            front.append(c)
    uniq = {c.key: c for c in front}
    return sorted(uniq.values(), key=lambda c: c.latency_ms)
