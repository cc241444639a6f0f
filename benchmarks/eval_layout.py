#!/usr/bin/env python
"""What feeding frames channels-last (NHWC) buys evaluation, as edgehydra.train.evaluate does, on this host.

    python benchmarks/eval_layout.py [--model hydranet_nyud] [--size 480x640] [--rounds 5] [--program RUN/ptq/program.pt2]

Times one frame through the FP32 model (and, with --program, a converted int8 pt2e program at its own size) fed NCHW
and NHWC frames, in alternation in one process (benchmarks/run.py's interleaved_medians), and prints the ratio and
the largest difference between the two outputs (float rounding only: the same convolutions summed in another
order). Say the CPU (``lscpu``) beside any figure; the ratio is what compares between machines.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import interleaved_medians  # noqa: E402  (timed in alternation: drift hits both sides of a ratio alike)


def compare(name: str, fn, x: torch.Tensor, rounds: int) -> None:
    nhwc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        nchw_ms, nhwc_ms = interleaved_medians([lambda: fn(x), lambda: fn(nhwc)], rounds=rounds, warmup=1)
        diff = max(float((a - b).abs().max()) for a, b in zip(fn(x), fn(nhwc)))
    print(f"  {name:<34} NCHW {nchw_ms:8.1f} ms   NHWC {nhwc_ms:8.1f} ms   {nchw_ms / nhwc_ms:.2f}x   "
          f"max |difference| {diff:.2e}")


def main() -> None:
    from edgehydra.devices.host import read_cpuinfo
    from edgehydra.registry import create_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hydranet_nyud")
    ap.add_argument("--size", default="480x640")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--program", type=Path, help="a converted int8 program (RUN/ptq/program.pt2), timed at its size")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    h, w = (int(v) for v in a.size.split("x"))
    torch.manual_seed(0)
    print(f"one frame, {a.threads} threads, {read_cpuinfo().model_name}:")
    compare(f"{a.model} FP32 at {h}x{w}", create_model(a.model).eval(), torch.rand(1, 3, h, w), a.rounds)
    if a.program:
        from edgehydra.calibration.program import load_program

        prog = load_program(a.program)
        ph, pw = prog.size
        compare(f"{a.program.parent.name} int8 program at {ph}x{pw}", prog.module, torch.rand(1, 3, ph, pw), a.rounds)


if __name__ == "__main__":
    main()
