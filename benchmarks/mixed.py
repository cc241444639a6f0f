#!/usr/bin/env python
"""All-fp32, all-int8 and the chosen mixed assignment side by side, on one device's joint budgets.

    python benchmarks/mixed.py --run runs/demo --device host_cpu --max-miou-drop 0.5 --max-rmse-rise 0.01

Runs the same search as `edgehydra sensitivity --run R --device D` (pipeline/mixed_search.py): per-layer
accuracy by real PTQ + evaluation, per-layer latency measured on this host in the device's runtime (host_cpu: ETDump; host_cpu_onnxruntime:
onnxruntime's profiler; host_cpu_litert: LiteRT), the search, the check of
the chosen assignment; then prints the three rows with latency from one interleaved timing run of the
three artifacts in that runtime and accuracy per task on the same frames. Prints the CPU it ran on.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
logging.disable(logging.WARNING)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--device", default="host_cpu")
    ap.add_argument("--layers", default=None)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--calib-frames", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--max-miou-drop", type=float, default=None)
    ap.add_argument("--max-rmse-rise", type=float, default=None)
    ap.add_argument("--max-absrel-rise", type=float, default=None)
    ap.add_argument("--latency-budget-ms", type=float, default=None)
    ap.add_argument("--published", action="store_true",
                    help="Also time fp32 / int8 / the chosen assignment on the published architecture "
                         "(hydranet_nyud, untrained weights: latency only) at the same size, in one run.")
    a = ap.parse_args(argv)

    from edgehydra.calibration.mixed import MixedBudgets
    from edgehydra.pipeline.mixed_search import SearchConfig, mixed_run

    t0 = time.perf_counter()
    rep = mixed_run(Path(a.run), a.device, MixedBudgets(max_miou_drop=a.max_miou_drop, max_rmse_rise=a.max_rmse_rise,
                                                        max_absrel_rise=a.max_absrel_rise, latency_ms=a.latency_budget_ms),
                    SearchConfig(layers=a.layers, frames=a.frames, calib_frames=a.calib_frames, rounds=a.rounds))
    c, ht = rep["chosen"], rep.get("host_timing") or {}
    print(f"{rep['device']} at {rep['size'][0]}x{rep['size'][1]} on {cpu_name()}, {ht.get('threads', '?')} threads; "
          f"{len(rep['layers'])} layers swept, {len(rep['trials'])} assignments checked, "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'assignment':<28}{'float layers':>13}{'W8A16':>7}{'mIoU':>8}{'RMSE m':>9}{'abs rel':>9}{'p50 ms':>9}")
    rows = [("all fp32", "all", "0", rep["fp32"], ht.get("fp32")), ("all int8", "0", "0", rep["all_int8"], ht.get("int8")),
            (f"mixed ({c['name']})", str(len(c["keep_float"])), str(len(c.get("int16_layers") or [])), c["measured"],
             ht.get("mixed"))]
    for name, nf, n16, m, t in rows:
        ts = f"{t:9.2f}" if t is not None else f"{'-':>9}"
        print(f"{name:<28}{nf:>13}{n16:>7}{m['miou']:8.2f}{m['rmse']:9.4f}{m['abs_rel']:9.4f}{ts}")
    print(f"predicted mixed latency (sum of per-layer times, {rep['latency_source']}): {c['latency_ms']:.2f} ms; "
          f"all-int8 per-layer sum {rep['int8_total_ms']:.2f} ms")
    print("float layers:", ", ".join(c["keep_float"]) or "none")
    print("W8A16 layers:", ", ".join(c.get("int16_layers") or []) or "none")
    print("fp16 layers:", ", ".join(c.get("fp16_layers") or []) or "none")
    for r in rep["layers"]:
        print(f"  {r['layer']:<16} int8 {r['int8_ms']:.3f}  float {r['float_ms']:.3f}"
              + (f"  int16 {r['int16_ms']:.3f}" if "int16_ms" in r else "")
              + (f"  fp16 {r['fp16_ms']:.3f}" if "fp16_ms" in r else "") + " ms")
    print("front:", rep["chart"])
    print(json.dumps({"timing": ht, "chosen": c["keep_float"], "int16": c.get("int16_layers") or [],
                      "fp16": c.get("fp16_layers") or []}))
    if a.published:
        published(rep, a.rounds)


def published(rep: dict, rounds: int) -> None:
    """The chosen assignment carried to hydranet_nyud by what it is (an encoder prefix or a group keeps
    its meaning; single layers keep their names where the published model has them) and timed there."""
    import tempfile

    import torch

    from edgehydra.calibration.calibset import CalibrationSet
    from edgehydra.calibration.mixed import encoder_prefixes, groups_of
    from edgehydra.devices.host_measure import build_artifact, time_artifacts
    from edgehydra.calibration.ptq import quantize_ptq
    from edgehydra.calibration.recipe import PRESETS
    from edgehydra.calibration.sensitivity import quant_units
    from edgehydra.devices.opprofile import graph_convs
    from edgehydra.exporters import get_target
    from edgehydra.registry import create_model

    torch.manual_seed(0)
    size = tuple(rep["size"])
    model = create_model("hydranet_nyud").eval()
    names = quant_units(model)  # the convolutions and the decoder's op modules, as the search's units
    dw = {n for n, d in graph_convs(torch.export.export(model, (torch.zeros(1, 3, *size),))) if d}
    groups = {**groups_of(names, dw, model.config.tasks, model.op_units()), **encoder_prefixes(names)}
    c = rep["chosen"]
    parts = [p.split("@") for p in c["name"].split("+")]
    prec_of = {"": "keep_float", "fp16": "fp16_layers", "w8a16": "int16_layers"}
    assign = {"keep_float": [], "fp16_layers": [], "int16_layers": []}
    if all(p[0] in groups for p in parts):  # a group keeps its meaning on the other architecture
        for p in parts:
            assign[prec_of[p[1] if len(p) > 1 else ""]] += groups[p[0]]
        how = f"group {c['name']} of hydranet_nyud"
    else:
        for k in assign:
            assign[k] = [n for n in c.get(k) or [] if n in names]
        want = sum(len(c.get(k) or []) for k in assign)
        how = f"the same layer names ({sum(map(len, assign.values()))} of {want} exist in hydranet_nyud)"
    assign = {k: tuple(sorted(set(v))) for k, v in assign.items()}
    frames = [{"image": torch.randn(3, *size)} for _ in range(8)]
    calib = CalibrationSet(indices=tuple(range(8)), ids=tuple(map(str, range(8))), sha256="random-frames",
                           classes_covered=0, classes_in_dataset=0, depth_range=(0.0, 0.0),
                           dataset_depth_range=(0.0, 0.0), seed=0)
    fmt = rep.get("format", "executorch")
    suffix = get_target(fmt).suffix
    with tempfile.TemporaryDirectory() as d:
        paths = {"fp32": build_artifact(fmt, model, model, "fp32", size, Path(d) / f"fp32{suffix}")}
        for k, rec in (("int8", PRESETS["w8a8"]), ("mixed", PRESETS["w8a8"].replace(**assign))):
            q, _ = quantize_ptq(model, rec, frames, calib, size)
            paths[k] = build_artifact(fmt, model, q, "int8", size, Path(d) / f"{k}{suffix}", rec)
        t = time_artifacts(paths, size, rounds, 2)
    print(f"hydranet_nyud (published architecture, untrained: latency only) at {size[0]}x{size[1]} on {cpu_name()}, "
          f"{fmt}, 2 threads, {rounds} interleaved rounds; mixed = {how}: "
          + ", ".join(f"{len(v)} {k}" for k, v in assign.items()))
    for k in ("fp32", "int8", "mixed"):
        print(f"  {k:<6} p50 {t[k]:7.2f} ms")
    keep = assign
    print(json.dumps({"published": t, "format": fmt, **{k: list(v) for k, v in keep.items()}}))


if __name__ == "__main__":
    sys.exit(main())
