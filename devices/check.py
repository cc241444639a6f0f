"""`edgehydra check`: a run's artifacts against device budgets, per task, with a verdict.

For each device: the artifact in the profile's format (its preferred precision first), its
accuracy from the verified evaluation in its manifest, GMACs at the budget's input size, size on
disk, peak memory (measured, else weights + the two largest activations), latency estimated at
the budget's input size (and measured where a benchmark at that size exists). Joint multi-task
budgets: every task must pass. Also whether int8 beats fp16 there, and the recommended precision.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgehydra.accounting import count_layers, summarize
from edgehydra.checkpoint import load_checkpoint
from edgehydra.errors import BadInputError

from .estimate import estimate
from .profile import Profile, load_profile

ORDER = {"int8": 0, "fp16": 1, "w8": 2, "fp32": 3}


def _artifacts(run: Path) -> list[dict]:
    mf = Path(run) / "export" / "manifest.json"
    if not mf.is_file():
        raise BadInputError(f"no export manifest at {mf}: run `edgehydra export --run {run} --target all` first")
    d = json.loads(mf.read_text())
    return [a for a in d["artifacts"] if a.get("path") and a["status"] in ("verified", "exported")]


def _metrics_for(a: dict, run: Path) -> tuple[dict, str]:
    if a.get("metrics"):
        return a["metrics"], "artifact (run in its runtime)"
    # Not runnable here (Core ML off macOS): the PyTorch model it was converted from.
    src = None
    if a["precision"] == "int8":
        for sub in ("qat", "ptq"):
            f = Path(run) / sub / "report.json"
            if f.is_file():
                m = json.loads(f.read_text())["metrics"]
                src = m.get(sub) or m.get("qat") or m.get("ptq")
                break
    if src is None:
        f = Path(run) / "fp32_metrics.json"
        src = json.loads(f.read_text())["metrics"] if f.is_file() else {}
    return src, "reference model (artifact not runnable on this host)"


def _bench(run: Path, a: dict, size) -> dict | None:
    p = Path(run) / "export" / (a["path"] + ".bench.json")
    if p.is_file():
        b = json.loads(p.read_text())
        if b.get("size") in (None, list(size)):
            return b
    return None


def row(name, budget, value, unit, higher_is_better=False, note=""):
    if value is None:
        return {"budget": name, "limit": budget, "value": None, "unit": unit, "margin": None, "pass": False,
                "note": note or "no value"}
    margin = (value - budget) if higher_is_better else (budget - value)
    return {"budget": name, "limit": budget, "value": value, "unit": unit, "margin": margin, "pass": margin >= 0,
            "note": note}


def check_device(run: Path, profile: Profile, model=None) -> dict:
    arts = [a for a in _artifacts(run) if a["target"] == profile.format]
    if not arts:
        return {"device": profile.name, "verdict": "FAIL", "rows": [],
                "reason": f"no {profile.format} artifact in {run}/export (export with --target {profile.format})"}
    arts.sort(key=lambda a: (a["precision"] != profile.precision, ORDER.get(a["precision"], 9)))
    a = arts[0]
    if model is None:
        model, _ = load_checkpoint(Path(run) / "fp32.pt")
    b = profile.budgets
    size = b.input_size
    est_prec = "int8" if a["precision"] == "int8" else ("fp16" if a["precision"] in ("fp16", "w8") else "fp32")
    s = summarize(count_layers(model, size, est_prec))
    est = estimate(model, profile, est_prec, size)
    bench = _bench(run, a, size) if profile.kind == "cpu" and profile.name == "host_cpu" else None
    metrics, msrc = _metrics_for(a, run)
    peak_mb = bench.get("peak_memory_mb") if bench else (s["weight_bytes"] + s["peak_act_bytes"]) / 2 ** 20
    lat = bench["p50_ms"] if bench else est["total_ms"]
    lat90 = bench.get("p90_ms", lat) if bench else est["total_ms"]
    src = "measured" if bench else "estimated"
    rows = [
        row("latency p50", b.latency_p50_ms, lat, "ms", note=f"{src} at {size[0]}x{size[1]}"),
        row("latency p90", b.latency_p90_ms, lat90, "ms", note=f"{src}" + ("" if bench else " (estimate has no spread)")),
        row("GMACs", b.max_gmacs, s["macs"] / 1e9, "G", note=f"at {size[0]}x{size[1]}"),
        row("artifact size", b.max_artifact_mb, a["size_bytes"] / 2 ** 20, "MB"),
        row("peak memory", b.max_peak_memory_mb, peak_mb, "MB", note="measured" if bench else "weights + largest activations"),
        row("mIoU", b.min_miou, metrics.get("miou"), "%", higher_is_better=True, note=msrc),
        row("depth RMSE", b.max_depth_rmse, metrics.get("rmse"), "m", note=msrc),
        row("depth abs rel", b.max_abs_rel, metrics.get("abs_rel"), "", note=msrc),
    ]
    e8 = estimate(model, profile, "int8", size)["total_ms"]
    e16 = estimate(model, profile, "fp16", size)["total_ms"]
    acc_ok = all(r["pass"] for r in rows[5:])
    rec = "int8" if e8 < e16 else "fp16"
    return {"device": profile.name, "description": profile.description, "artifact": a["path"],
            "precision": a["precision"], "rows": rows, "verdict": "PASS" if all(r["pass"] for r in rows) else "FAIL",
            "estimated_ms": est["total_ms"], "measured_ms": bench["p50_ms"] if bench else None,
            "int8_vs_fp16": {"int8_ms": e8, "fp16_ms": e16, "int8_faster": e8 < e16,
                             "speedup": e16 / e8 if e8 else None},
            "recommendation": rec if acc_ok else f"{rec} (but the accuracy budgets fail at this model quality)"}


def check_run(run: Path, devices: list[str]) -> list[dict]:
    if not devices:
        raise BadInputError("pass at least one --device")
    calibrated = Path(run) / "devices" / "host_cpu.toml"  # written by the demo's calibrate stage
    specs = [str(calibrated) if d == "host_cpu" and calibrated.is_file() else d for d in devices]
    profiles = [load_profile(s) for s in specs]  # bad names/profiles fail before any work
    if not (Path(run) / "fp32.pt").is_file():
        raise BadInputError(f"no fp32.pt in {run}: pass a run folder made by `edgehydra train` or `demo`")
    model, _ = load_checkpoint(Path(run) / "fp32.pt")
    out = [check_device(Path(run), p, model) for p in profiles]
    for r, d, s in zip(out, devices, specs):
        if s != d:
            r["profile_note"] = f"host_cpu: using the profile calibrated on this run's benchmarks ({s})"
    return out
