"""`edgehydra check`: a run's artifacts against device budgets, per task, with a verdict.

A budget is judged on what ships, never on a neighbour of it:
- the artifact is one of the run's exports in the profile's format **at the budget's input size**
  (its preferred precision first). Where the run has none at that size the device is NOT JUDGED,
  with the export command that would make one: never a PASS about an artifact that does not exist;
- latency is a measurement record of **that artifact** (its sha256, that size) on that device where
  the run holds one, else the analytical estimate at that size, and each row says which;
- accuracy is that artifact's own, run in its own runtime on the validation frames at its size, or,
  where it cannot run here (Core ML off macOS), the PyTorch model it was converted from, labelled so.
Joint multi-task budgets: every task must pass. Also whether int8 beats fp16 there.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgehydra._io import read_json
from edgehydra.accounting import count_layers, summarize
from edgehydra.checkpoint import load_checkpoint
from edgehydra.dataspec import resolve_size
from edgehydra.records import schema
from edgehydra.errors import BadInputError
from edgehydra.run import Run

from .estimate import estimate, estimate_assigned
from .profile import Profile, load_profile

ORDER = {"int8": 0, "fp16": 1, "w8": 2, "fp32": 3}
NOT_JUDGED = "NOT JUDGED"


def host_device(profile: Profile) -> str | None:
    """The device name a measurement of this profile carries: the host for this machine's profiles
    (``host = true``: host_cpu and its onnxruntime / LiteRT twins), else the name the user gave
    `bench --profile` (records store the profile's name)."""
    return "host" if profile.host else None


def artifacts(run: Run) -> list[dict]:
    if not run.export_manifest.is_file():
        raise BadInputError(f"no export manifest at {run.export_manifest}: run "
                            f"`edgehydra export --run {run.root} --target all` first")
    d = run.export_record()
    out = []
    for a in d["artifacts"]:
        if not a.get("path") or a["status"] not in ("verified", "exported"):
            continue
        if not a.get("size"):  # a manifest from before sizes were listed: the artifact's own manifest says
            own = run.export_dir / (a["path"] + ".manifest.json")
            a = dict(a, size=json.loads(own.read_text())["size"]) if own.is_file() else a
        out.append(a)
    return out


def _metrics_for(a: dict, run: Run) -> tuple[dict, str]:
    if a.get("metrics"):
        return a["metrics"], f"{a['target']} {a['precision']} artifact run in its runtime"
    # Not runnable here (Core ML off macOS): the PyTorch model it was converted from, at the same size.
    src = None
    prog = a.get("source_program") or {}
    if a["precision"] == "int8":
        stage = prog.get("stage")
        for s in ([stage] if stage else []) + ["qat", "ptq"]:
            f = run.stage_report(s)
            if f.is_file():
                m = json.loads(f.read_text())["metrics"]
                src = m.get(s)
                break
    if src is None:
        f = run.fp32_metrics
        src = json.loads(f.read_text())["metrics"] if f.is_file() else {}
    return src, "the PyTorch model it was converted from (artifact not runnable on this host)"


def _on_device(run: Run, profile: Profile, a: dict | None = None) -> list[dict]:
    """The run's measurements taken for this profile (by name) or on its device, of artifacts in the profile's
    format (this host runs ExecuTorch, onnxruntime and LiteRT, each with a profile of its own); of artifact
    ``a`` (sha256 and input size) when given."""
    from edgehydra.exporters import target_for_suffix

    dev = host_device(profile)
    return [m for m in run.measurements()
            if not m.get("emulated")  # parity on emulated ARM kernels: evidence, never a latency (arm_evidence)
            and (m.get("profile") == profile.name or (dev is not None and m.get("device") == dev))
            and target_for_suffix(Path(m.get("artifact") or "").suffix) == profile.format
            and (a is None or (m.get("sha256") == a.get("sha256") and list(m.get("size") or []) == list(a["size"])))]


def arm_evidence(run: Run, a: dict) -> list[dict]:
    """The latest emulated ARM check (`bench --bundle --device qemu:CPU`) per CPU of this artifact (sha256)."""
    latest = {}
    for m in run.measurements():
        if m.get("emulated") and a.get("sha256") and m.get("sha256") == a["sha256"]:
            if m["device"] not in latest or m.get("recorded", "") > latest[m["device"]].get("recorded", ""):
                latest[m["device"]] = m
    return [{"device": d, "accelerator": m.get("accelerator"), "pass": (m.get("bundle_parity") or {}).get("pass"),
             "vs_x86": (m.get("bundle_parity") or {}).get("vs_x86"),
             "vs_program": (m.get("bundle_parity") or {}).get("vs_program"), "record": m.get("record")}
            for d, m in sorted(latest.items())]


def measurement_for(run: Run, profile: Profile, a: dict) -> dict | None:
    """The latest measurement of this artifact (sha256, size) on this profile's device, or None. A burst
    benchmark is what the latency budget means; a sustained run (`bench --duration`) stands in only where the
    run has no burst one (and the row says so)."""
    cands = _on_device(run, profile, a)
    burst = [m for m in cands if not m.get("sustained")]
    return max(burst or cands, key=lambda m: m.get("recorded", "")) if cands else None


def _est_precision(p: str) -> str:
    return "int8" if p == "int8" else ("fp16" if p in ("fp16", "w8") else "fp32")


def calibrated_on_run(run: Run, profile: Profile, model) -> tuple[Profile, list[dict]]:
    """``profile`` fitted to what this run measured on its device: per-operator-class scales from the
    device's own per-op profiles of shipped artifacts (the latest per precision; devices/estimate.py
    fit_class_scales), then the efficiencies from every burst measurement (any artifact, any size;
    fit_efficiencies). Returns the fitted profile and what it was fitted to (measurements, then op-profile
    records); the profile unchanged and [] when the run holds neither."""
    from .estimate import fit_class_scales, fit_efficiencies

    used = []
    latest = {}
    for rec in run.op_profiles(profile.name):
        p = _est_precision(rec["precision"])
        if p not in latest or rec.get("recorded", "") > latest[p].get("recorded", ""):
            latest[p] = rec
    for p, rec in sorted(latest.items()):
        profile, _ = fit_class_scales(model, profile, rec, p)
        used.append(dict(rec, kind="op profile"))
    ms = [m for m in _on_device(run, profile) if not m.get("sustained") and m.get("p50_ms") and m.get("size")]
    if ms:
        profile, _ = fit_efficiencies(model, profile, [{"precision": _est_precision(m["precision"]), "size": m["size"],
                                                        "p50_ms": m["p50_ms"]} for m in ms])
    return profile, ms + used


def sustained_for(run: Run, profile: Profile, a: dict) -> dict | None:
    """The latest sustained measurement (`bench --duration`) of this artifact on this profile's device."""
    cands = [m for m in _on_device(run, profile, a) if m.get("sustained")]
    return max(cands, key=lambda m: m.get("recorded", "")) if cands else None


def row(name, budget, value, unit, higher_is_better=False, note=""):
    if value is None:
        return {"budget": name, "limit": budget, "value": None, "unit": unit, "margin": None, "pass": False,
                "note": note or "no value"}
    margin = (value - budget) if higher_is_better else (budget - value)
    return {"budget": name, "limit": budget, "value": value, "unit": unit, "margin": margin, "pass": margin >= 0,
            "note": note}


def _not_judged(run: Run, profile: Profile, have: list[dict]) -> dict:
    h, w = profile.budgets.input_size
    sizes = sorted({"x".join(map(str, a["size"])) for a in have})
    what = (f"its {profile.format} artifacts are at {', '.join(sizes)}" if sizes
            else f"it has no {profile.format} artifact")
    cmd = f"edgehydra export --run {run.root} --target {profile.format} --size {h}x{w}"
    if profile.precision == "int8":
        cmd = (f"edgehydra ptq --out {run.root} --size {h}x{w} (an int8 program is traced at one size), then " + cmd)
    return {"schema": schema("verdict"), "device": profile.name, "verdict": NOT_JUDGED, "rows": [], "size": [h, w],
            "reason": f"{profile.name} budgets {h}x{w} input and {what}: not judged. Make one: {cmd}"}


def layer_precisions(run: Run, a: dict, profile: Profile) -> dict[str, str]:
    """{module path: estimate precision} of the layers of int8 artifact ``a`` that its precision map says do
    not run int8: float layers at the device's float precision, W8A16 layers at int16. {} for a uniform one."""
    from .estimate import float_precision

    from edgehydra.exporters.runtime import read_manifest

    if a["precision"] != "int8":
        return {}
    try:
        own = read_manifest(run.export_dir / a["path"])
    except BadInputError:  # no manifest beside it: judged as one precision, as before precision maps
        return {}
    fl = float_precision(profile)
    out = {}
    for r in (own.get("precision_map") or {}).get("layers", []):
        p = r.get("precision", "")
        if p in ("fp32", "fp16"):
            out[r["layer"]] = fl
        elif p == "int16":
            out[r["layer"]] = "int16"
    return out


def named_artifact(run: Run, arts: list[dict], artifact) -> dict:
    """The manifest entry of ``artifact`` (a path, absolute or relative to RUN/export/), or a one-line error."""
    want = Path(artifact)
    for a in arts:
        p = run.export_dir / a["path"]
        if want == Path(a["path"]) or want.resolve() == p.resolve():
            return a
    raise BadInputError(f"{artifact} is not a verified artifact of {run.export_manifest}")


def pick_artifact(run: Run, profile: Profile, arts: list[dict], artifact=None) -> tuple[dict | None, str, list[dict]]:
    """What this device is judged on, and why that one: the artifact the caller names (a search's, the user's),
    else the run's uniform artifact in the profile's format at the budget's size (its preferred precision first;
    a program variant, such as an applied mixed recipe, where it is named or the run has no uniform one). The third
    item: the candidates in the profile's format, which a NOT JUDGED verdict lists when none is at the size."""
    size = resolve_size(device=profile)
    if artifact is not None:
        a = named_artifact(run, arts, artifact)
        if a["target"] != profile.format:
            raise BadInputError(f"{artifact} is a {a['target']} artifact; {profile.name} ships {profile.format}")
        return (a, "named", [a]) if tuple(a["size"]) == size else (None, "named", [a])
    fmt = [a for a in arts if a["target"] == profile.format]
    at_size = [a for a in fmt if tuple(a["size"]) == size]
    # the uniform artifacts first; a program variant (an applied mixed recipe) only where the run has no uniform one
    at_size.sort(key=lambda a: (bool(a.get("variant")), a["precision"] != profile.precision,
                                ORDER.get(a["precision"], 9)))
    if not at_size:
        return None, "", fmt
    a = at_size[0]
    return a, (f"the run's {a['variant']} {a['precision']} artifact at the budget's size (it has no uniform one)"
               if a.get("variant") else f"the run's {a['precision']} artifact at the budget's size"), fmt


def check_device(run: Run, profile: Profile, model=None, arts: list[dict] | None = None, fit_to_run: bool = True,
                 artifact=None) -> dict:
    """One device's verdict on ``artifact`` (named by the caller) or the run's artifact at its budget's size
    (pick_artifact). ``fit_to_run``: fit the profile's efficiencies to the run's measurements on that device
    first (off for a profile already calibrated on this run, RUN/devices/<name>.toml)."""
    b = profile.budgets
    size = resolve_size(device=profile)
    arts = artifacts(run) if arts is None else arts
    a, chosen_by, near = pick_artifact(run, profile, arts, artifact)
    if a is None:
        fmt = near
        return _not_judged(run, profile, fmt)
    if model is None:
        model, _ = load_checkpoint(run.checkpoint())
    est_prec = _est_precision(a["precision"])
    s = summarize(count_layers(model, size, est_prec))
    meas = measurement_for(run, profile, a)
    # the estimate (the latency rows' source when this artifact was not measured on the device, and the int8 vs
    # fp16 comparison) comes from the profile fitted to everything the run measured on that device
    cal, used = calibrated_on_run(run, profile, model) if fit_to_run else (profile, [])
    mixed = layer_precisions(run, a, profile)
    # a mixed-precision artifact is estimated as it ships: each layer at the precision its map says
    est = estimate_assigned(model, cal, est_prec, size, mixed) if mixed else estimate(model, cal, est_prec, size)
    metrics, msrc = _metrics_for(a, run)
    if str(metrics.get("protocol", "")).startswith("native"):  # frames scored at their own size, padded into the input
        msrc += f", each frame {metrics['protocol']},"
    hw = f"{size[0]}x{size[1]}"
    src, lat, lat90, peak = _latency_source(meas, est, used, profile, hw, est_prec if mixed else None)
    rows = [
        row("latency p50", b.latency_p50_ms, lat, "ms", note=src),
        row("latency p90", b.latency_p90_ms, lat90, "ms", note=src + ("" if meas else "; an estimate has no spread")),
        row("GMACs", b.max_gmacs, s["macs"] / 1e9, "G", note=f"at {hw}"),
        row("artifact size", b.max_artifact_mb, a["size_bytes"] / 2 ** 20, "MB", note=a["path"]),
        row("peak memory", b.max_peak_memory_mb,
            peak if peak is not None else (s["weight_bytes"] + s["peak_act_bytes"]) / 2 ** 20, "MB",
            note=src if peak is not None else "weights + largest activations (estimated)"),
        row("mIoU", b.min_miou, metrics.get("miou"), "%", higher_is_better=True, note=f"{msrc} at {hw}"),
        row("depth RMSE", b.max_depth_rmse, metrics.get("rmse"), "m", note=f"{msrc} at {hw}"),
        row("depth abs rel", b.max_abs_rel, metrics.get("abs_rel"), "", note=f"{msrc} at {hw}"),
    ]
    if b.min_sustained_fps is not None:
        sus = sustained_for(run, profile, a)
        rows.append(row("sustained FPS", b.min_sustained_fps, sus["sustained"]["throughput_fps"] if sus else None, "FPS",
                        higher_is_better=True,
                        note=(f"{sus['sustained']['duration_s']:.0f} s on {sus['device']} by {sus['runner']} at {hw}"
                              if sus else f"no sustained measurement: edgehydra bench --artifact "
                                          f"{run.export_dir / a['path']} --duration 60s")))
    if b.max_flicker_rise is not None:
        rows.append(_flicker_row(run, b.max_flicker_rise, a, hw))
    if b.max_normals_median_deg is not None:
        has = "normals" in model.config.tasks
        rows.append(row("normals median angle", b.max_normals_median_deg, metrics.get("normals_median_angle"), "deg",
                        note=f"{msrc} at {hw}" if has else "the model has no normals head"))
    e8 = estimate(model, cal, "int8", size)["total_ms"]
    e16 = estimate(model, cal, "fp16", size)["total_ms"]
    acc_ok = all(r["pass"] for r in rows if r["budget"] in ("mIoU", "depth RMSE", "depth abs rel", "normals median angle"))
    rec = "int8" if e8 < e16 else "fp16"
    provenance = _provenance(a)
    return {"schema": schema("verdict"), "device": profile.name, "description": profile.description, "artifact": a["path"],
            "chosen_by": chosen_by,
            "provenance": provenance,
            "artifact_sha256": a.get("sha256"), "precision": a["precision"], "size": list(size), "rows": rows,
            "verdict": "PASS" if all(r["pass"] for r in rows) else "FAIL",
            "latency_source": "measured" if meas else "estimated", "measurement": meas.get("record") if meas else None,
            "estimated_ms": est["total_ms"], "measured_ms": meas["p50_ms"] if meas else None,
            "arm_kernels": arm_evidence(run, a),
            "estimate_fitted_to": [m.get("record") for m in used],
            "int8_vs_fp16": {"int8_ms": e8, "fp16_ms": e16, "int8_faster": e8 < e16,
                             "speedup": e16 / e8 if e8 else None},
            "recommendation": rec if acc_ok else f"{rec} (but the accuracy budgets fail at this model quality)"}


def _flicker_row(run: Run, limit: float, a: dict, hw: str) -> dict:
    """The artifact's segmentation flicker above the FP32 model's on the same sequence, from the run's stability
    record (`edgehydra stability`), matched by the artifact's sha256 so a re-exported file is never judged on an
    old measurement."""
    rec = read_json(run.stability_record) if run.stability_record.is_file() else {}
    m = next((m for m in rec.get("models", []) if a.get("sha256") and m.get("sha256") == a["sha256"]), None)
    if m is None or m["temporal"].get("flicker_rise") is None:
        return row("flicker rise vs FP32", limit, None, "pp",
                   note=f"not measured for this file: edgehydra stability --run {run.root} --artifact "
                        f"{run.export_dir / a['path']}")
    t = m["temporal"]
    return row("flicker rise vs FP32", limit, t["flicker_rise"] * 100, "pp",
               note=f"{t['flicker'] * 100:.2f} % of matched pixels change label between frames; {rec['frames']} frames "
                    f"of {rec.get('source', 'a sequence')} at {hw}, matched by {rec.get('matched_by')}")


def _latency_source(meas: dict | None, est: dict, used: list[dict], profile: Profile, hw: str,
                    mixed_prec: str | None) -> tuple[str, float, float, float | None]:
    """(where the latency rows come from, p50, p90, peak MB): the device's measurement of this artifact, else the
    estimate, saying what it was fitted to and (``mixed_prec``: the artifact's base precision) per-layer precisions."""
    if meas:
        dlg = meas.get("delegate") or {}
        src = f"measured on {meas['device']} by {meas['runner']} at {hw}" + (
            f" (sustained {meas['sustained']['duration_s']:.0f} s)" if meas.get("sustained") else "") + (
            f" on {meas['accelerator']}" if meas.get("accelerator") else "") + (
            f", {dlg['cpu_fallback_nodes']} of {dlg['of']} nodes on CPU" if dlg.get("cpu_fallback_nodes") else
            f" ({dlg['graph']})" if dlg.get("graph") and dlg["graph"] != "all on the delegate" else "")
        return src, meas["p50_ms"], meas.get("p90_ms"), meas.get("peak_memory_mb")
    lat_used = [u for u in used if u.get("kind") != "op profile"]
    ops_used = [u for u in used if u.get("kind") == "op profile"]
    src = f"estimated at {hw} ({profile.name} roofline" + (
        f", fitted to {len(lat_used)} measurement(s) of this run on {lat_used[0]['device']}" if lat_used else "") + (
        f", per-class scales from {len(ops_used)} per-op profile(s) of the device" if ops_used else "") + (
        ", per layer as its precision map says: " + ", ".join(
            f"{n} at {p}" for p, n in sorted(est["per_layer"].items()) if p != mixed_prec) if mixed_prec else "") + ")"
    return src, est["total_ms"], est["total_ms"], None


def _provenance(a: dict) -> str | None:
    """Where the judged artifact's weights and ranges came from, and what of it is not int8 or not honoured."""
    prog = a.get("source_program") or {}
    provenance = (f"{a['path']} was quantised by {prog['quantised_by']}" if prog.get("quantised_by")
                  else f"{a['path']} carries the {prog['stage']} program's weights and ranges" if prog else None)
    ps = a.get("precision_summary") or {}
    floats = sum(n for k, n in ps.items() if k != "int8" and isinstance(n, int))
    if a["precision"] == "int8" and floats:
        total = sum(n for n in ps.values() if isinstance(n, int))
        provenance = (provenance or a["path"]) + f"; {floats} of {total} ops not int8 (per-layer map in its manifest)"
    if a.get("not_honoured"):
        provenance = (provenance or a["path"]) + "; not honoured: " + "; ".join(a["not_honoured"])
    return provenance


def check_run(run_dir: Path, devices: list[str], artifact=None) -> list[dict]:
    """Each device's verdict; ``artifact`` names the one every device is judged on (else pick_artifact's)."""
    if not devices:
        raise BadInputError("pass at least one --device")
    run = Run(run_dir)
    specs = []
    for d in devices:  # host_cpu: the profile calibrated on this run's measurements, when the run has one
        cal = run.calibrated_profile(d) if d == "host_cpu" else None
        specs.append(str(cal) if cal is not None and cal.is_file() else d)
    profiles = [load_profile(s) for s in specs]  # bad names/profiles fail before any work
    model, _ = load_checkpoint(run.checkpoint())
    arts = artifacts(run)
    out = [check_device(run, p, model, arts, fit_to_run=s == d, artifact=artifact)
           for p, s, d in zip(profiles, specs, devices)]
    for r, d, s in zip(out, devices, specs):
        if s != d:
            r["profile_note"] = f"host_cpu: using the profile calibrated on this run's benchmarks ({s})"
    return out
