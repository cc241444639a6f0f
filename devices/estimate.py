"""Analytical latency: a roofline per layer from the model's own FLOP/byte accounting.

    t_layer = max(MACs / (peak MAC/s x compute efficiency), bytes / (bandwidth x bandwidth efficiency))
    t_total = sum(t_layer) + overhead

at the layer's precision (weights and activations in that many bytes). BatchNorm and ReLU6 are
fused into the preceding convolution by every backend used here (XNNPACK, TensorRT, Core ML,
LiteRT), so they cost nothing of their own; max-pool, adds and upsampling move bytes and are
charged for it. Which bound each layer hits is reported. A profile's per-class scales (fitted from the
device's own per-op profile, ``fit_class_scales``) multiply each layer's time by its operator class's.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from edgehydra.accounting import BYTES, count_layers
from edgehydra.graph import runtime_class

from .profile import Profile

FUSED = ("BatchNorm2d", "ReLU6", "ReLU", "Hardtanh")


@dataclass
class LayerTime:
    name: str
    kind: str
    macs: int
    bytes: int
    compute_ms: float
    memory_ms: float
    ms: float
    bound: str


def layer_rows(model, size, precision):
    acc_precision = precision if precision in BYTES else "fp32"
    import torch

    dw = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1
          and m.groups == m.in_channels}
    rows = [r for r in count_layers(model, size, acc_precision) if r.kind not in FUSED]
    for r in rows:
        r.op_class = op_class_of(r.kind, r.name in dw)
    return rows


def op_class_of(kind: str, depthwise: bool = False) -> str:
    if kind == "Conv2d":
        return "depthwise conv" if depthwise else "conv"
    return runtime_class("module", kind)


def estimate_rows(rows, profile: Profile, precision: str) -> dict:
    peak = profile.peak_ops(precision) * profile.compute_eff(precision)
    bw = profile.bandwidth_gbs * 1e9 * profile.bandwidth_efficiency
    layers = []
    for r in rows:
        work = r.macs if r.macs else r.other_ops / 2  # non-MAC ops counted as half a MAC each
        k = profile.scale_of(precision, r.op_class or op_class_of(r.kind))
        c = work / peak * 1e3 * k
        m = r.bytes_moved / bw * 1e3 * k
        layers.append(LayerTime(r.name, r.kind, r.macs, r.bytes_moved, c, m, max(c, m), "compute" if c >= m else "memory"))
    total = sum(l.ms for l in layers) + profile.overhead_ms
    return {"device": profile.name, "precision": precision, "total_ms": total, "overhead_ms": profile.overhead_ms,
            "compute_bound_ms": sum(l.ms for l in layers if l.bound == "compute"),
            "memory_bound_ms": sum(l.ms for l in layers if l.bound == "memory"),
            "layers": [asdict(l) for l in layers]}


def estimate(model, profile: Profile, precision: str, size) -> dict:
    res = estimate_rows(layer_rows(model, size, precision), profile, precision)
    res["size"] = list(size)
    return res


def float_precision(profile: Profile) -> str:
    """The precision a device computes a layer kept float in: fp16 where its fp16 rate beats fp32 (GPUs, NPUs)."""
    return "fp16" if profile.fp16_tflops > profile.fp32_tflops else "fp32"


def estimate_assigned(model, profile: Profile, precision: str, size, per_layer: dict[str, str]) -> dict:
    """The estimate of a mixed-precision artifact: each layer at its own precision (``per_layer``: module path
    -> int8 / int16 / fp16 / fp32, as its precision map says), every other layer at ``precision``."""
    rows = layer_rows(model, size, precision)
    ests = {p: estimate_rows(layer_rows(model, size, p), profile, p)
            for p in set(per_layer.values()) | {precision}}
    layers = []
    for i, r in enumerate(rows):
        p = per_layer.get(r.name, precision)
        layers.append(dict(ests[p]["layers"][i], precision=p))
    total = sum(lt["ms"] for lt in layers) + profile.overhead_ms
    return {"device": profile.name, "precision": precision, "total_ms": total, "overhead_ms": profile.overhead_ms,
            "compute_bound_ms": sum(lt["ms"] for lt in layers if lt["bound"] == "compute"),
            "memory_bound_ms": sum(lt["ms"] for lt in layers if lt["bound"] == "memory"),
            "layers": layers, "size": list(size),
            "per_layer": {p: sum(1 for lt in layers if lt["precision"] == p) for p in ests}}


def fit_efficiencies(model, profile: Profile, measurements: list[dict]) -> tuple[Profile, dict]:
    """Fit per-precision compute efficiency, bandwidth efficiency and overhead to measured p50s.

    ``measurements``: [{precision, size: [H, W], p50_ms}]. Minimises the squared log ratio
    estimate/measured (relative error, so small and large inputs weigh the same).
    """
    from scipy.optimize import minimize

    if not measurements:
        raise ValueError("calibration needs at least one measurement")
    precs = sorted({m["precision"] for m in measurements})
    rows = {(m["precision"], tuple(m["size"])): layer_rows(model, tuple(m["size"]), m["precision"]) for m in measurements}

    def profile_of(theta):
        eff = tuple((p, float(min(1.0, math.exp(theta[i])))) for i, p in enumerate(precs))
        bw = float(min(1.0, math.exp(theta[len(precs)])))
        ov = float(math.exp(theta[len(precs) + 1]))
        return replace(profile, efficiency=tuple(sorted(dict(profile.efficiency, **dict(eff)).items())),
                       bandwidth_efficiency=bw, overhead_ms=ov)

    def loss(theta):
        p = profile_of(theta)
        err = 0.0
        for m in measurements:
            est = estimate_rows(rows[(m["precision"], tuple(m["size"]))], p, m["precision"])["total_ms"]
            err += math.log(est / m["p50_ms"]) ** 2
        return err

    x0 = [math.log(profile.compute_eff(p)) for p in precs] + [math.log(profile.bandwidth_efficiency),
                                                              math.log(max(profile.overhead_ms, 1e-3))]
    bounds = [(math.log(1e-4), 0.0)] * len(precs) + [(math.log(1e-3), 0.0), (math.log(1e-3), math.log(1e3))]
    best = minimize(loss, x0, method="L-BFGS-B", bounds=bounds)
    fitted = profile_of(best.x)
    report = {"before": errors(rows, profile, measurements), "after": errors(rows, fitted, measurements)}
    return fitted, report


def fit_class_scales(model, profile: Profile, op_profile: dict, precision: str) -> tuple[Profile, list[dict]]:
    """Per-operator-class time scales from a device's own per-op profile of one artifact (a mapped profile
    from devices/toolprofile.py or opprofile.py): for each class the profile times, measured ms over the
    estimate's ms for the same class at the artifact's size. The classes' shares of the whole are what this
    fixes; the whole-model fit (fit_efficiencies) still sets the level. Classes the profile does not time
    keep their scale; time the device spent outside any model layer (layout copies, runtime) is not a class
    of the model and is reported, not fitted."""
    size = tuple(op_profile["size"])
    rows = layer_rows(model, size, precision)
    est = estimate_rows(rows, replace(profile, class_scale=()), precision)
    est_by = {}
    for r, lt in zip(rows, est["layers"]):
        est_by[r.op_class] = est_by.get(r.op_class, 0.0) + lt["ms"]
    meas_by = {}
    for d in op_profile.get("by_class", []):
        c = d["op_class"].replace("1x1 conv", "conv")  # XNNPACK runs a 1x1 convolution as a GEMM
        meas_by[c] = meas_by.get(c, 0.0) + d["ms"]
    out, scales = [], dict(profile.class_scale)
    for c in sorted(set(est_by) | set(meas_by)):
        e, m = est_by.get(c), meas_by.get(c)
        fitted = bool(e and m)
        if fitted:
            scales[f"{precision}/{c}"] = m / e
        out.append({"op_class": c, "estimated_ms": e, "measured_ms": m,
                    "scale": m / e if fitted else None,
                    "note": None if fitted else ("not in the model" if not e else "not timed by the profile")})
    return replace(profile, class_scale=tuple(sorted(scales.items()))), out


def errors(rows, profile: Profile, measurements) -> list[dict]:
    out = []
    for m in measurements:
        est = estimate_rows(rows[(m["precision"], tuple(m["size"]))], profile, m["precision"])["total_ms"]
        out.append({"precision": m["precision"], "size": list(m["size"]), "measured_ms": m["p50_ms"],
                    "estimated_ms": est, "rel_err": (est - m["p50_ms"]) / m["p50_ms"]})
    return out


def mean_abs_rel_err(errs) -> float:
    return float(np.mean([abs(e["rel_err"]) for e in errs])) if errs else float("nan")


def estimated_layer_latency(model, profile, size, int16: bool = False, fp16: bool = False) -> dict:
    """Per-layer ms from the device profile's roofline: int8, the float precision it computes, and with
    ``int16`` W8A16 (int16 activations, int8 weights). With ``fp16`` (a format that computes fp16 islands)
    fp16 is a precision of its own and "float" is fp32, what a kept-float layer runs in there."""
    def per(e):  # a unit may have several rows (a CRP block's four sums, a fusion's adds): summed
        out = {}
        for r in e["layers"]:
            out[r["name"]] = out.get(r["name"], 0.0) + r["ms"]
        return out

    fprec = "fp32" if fp16 else float_precision(profile)
    e8, ef = estimate(model, profile, "int8", size), estimate(model, profile, fprec, size)
    out = {"source": f"estimated from the {profile.name} profile", "float_precision": fprec,
           "int8_total_ms": e8["total_ms"], "float_total_ms": ef["total_ms"], "int8": per(e8), "float": per(ef)}
    if fp16:
        eh = estimate(model, profile, "fp16", size)
        out.update(fp16=per(eh), fp16_total_ms=eh["total_ms"])
    if int16:
        e16 = estimate(model, profile, "int16", size)
        out.update(int16=per(e16), int16_total_ms=e16["total_ms"],
                   int16_rate=(f"{profile.int16_tops} TOPS (the profile)" if profile.int16_tops is not None else
                               f"{profile.int8_tops / 2:g} TOPS, half the int8 rate (the profile gives no int16_tops)"))
    return out
