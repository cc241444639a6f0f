#!/usr/bin/env python
"""All-fp32, all-int8 and the chosen mixed assignment side by side, on one device's joint budgets.

    python benchmarks/mixed.py --run runs/demo --device host_cpu --max-miou-drop 0.5 --max-rmse-rise 0.01

Runs the same search as `edgehydra sensitivity --run R --device D` (calibration/mixed_stage.py): per-layer
accuracy by real PTQ + evaluation, per-layer latency from ETDump on this host, the search, the check of
the chosen assignment; then prints the three rows with latency from one interleaved timing run of the
three .pte files (host_cpu) and accuracy per task on the same frames. Prints the CPU it ran on.
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
    a = ap.parse_args(argv)

    from edgehydra.calibration.mixed import MixedBudgets
    from edgehydra.calibration.mixed_stage import mixed_run

    t0 = time.perf_counter()
    rep = mixed_run(Path(a.run), a.device, MixedBudgets(max_miou_drop=a.max_miou_drop, max_rmse_rise=a.max_rmse_rise,
                                                        max_absrel_rise=a.max_absrel_rise, latency_ms=a.latency_budget_ms),
                    layers=a.layers, frames=a.frames, calib_frames=a.calib_frames, rounds=a.rounds)
    c, ht = rep["chosen"], rep.get("host_timing") or {}
    print(f"{rep['device']} at {rep['size'][0]}x{rep['size'][1]} on {cpu_name()}, {ht.get('threads', '?')} threads; "
          f"{len(rep['layers'])} layers swept, {len(rep['trials'])} assignments checked, "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'assignment':<28}{'float layers':>13}{'mIoU':>8}{'RMSE m':>9}{'abs rel':>9}{'p50 ms':>9}")
    rows = [("all fp32", "all", rep["fp32"], ht.get("fp32")), ("all int8", "0", rep["all_int8"], ht.get("int8")),
            (f"mixed ({c['name']})", str(len(c["keep_float"])), c["measured"], ht.get("mixed"))]
    for name, nf, m, t in rows:
        ts = f"{t:9.2f}" if t is not None else f"{'-':>9}"
        print(f"{name:<28}{nf:>13}{m['miou']:8.2f}{m['rmse']:9.4f}{m['abs_rel']:9.4f}{ts}")
    print(f"predicted mixed latency (sum of per-layer ETDump times): {c['latency_ms']:.2f} ms; "
          f"all-int8 per-layer sum {rep['int8_total_ms']:.2f} ms")
    print("float layers:", ", ".join(c["keep_float"]) or "none")
    print("front:", rep["chart"])
    print(json.dumps({"timing": ht, "chosen": c["keep_float"]}))


if __name__ == "__main__":
    sys.exit(main())
