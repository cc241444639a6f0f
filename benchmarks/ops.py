#!/usr/bin/env python
"""Where int8 pays on this CPU: single HydraNet-shaped layers as fp32 and int8 ExecuTorch XNNPACK .pte.

    python benchmarks/ops.py

Each layer is quantised with the project's own w8a8 translation (calibrated on 4 random inputs),
lowered to XNNPACK, and the fp32/int8 pair is timed interleaved (one call of each per round, medians).
It explains the whole-model ratio in benchmarks/run.py: int8 wins on GEMM-heavy convolutions and not
on depthwise convolutions, max-pools or the 3-channel stem, which MobileNet-v2 and the CRP blocks
are full of.
"""
from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

warnings.simplefilter("ignore")
logging.disable(logging.WARNING)
sys.path.insert(0, str(Path(__file__).parent))

from run import interleaved_medians  # noqa: E402

# (name, layers, input shape): sizes are those of hydranet_small at 480x640 (1/4 scale is 120x160).
CASES = [
    ("segm head conv3x3 64->40 @120x160", lambda: [nn.Conv2d(64, 40, 3, padding=1)], (1, 64, 120, 160)),
    ("CRP conv1x1 64->64 @120x160", lambda: [nn.Conv2d(64, 64, 1)], (1, 64, 120, 160)),
    ("expand conv1x1 96->576 +ReLU6 @30x40", lambda: [nn.Conv2d(96, 576, 1), nn.ReLU6()], (1, 96, 30, 40)),
    ("depthwise 3x3 144 +ReLU6 @120x160", lambda: [nn.Conv2d(144, 144, 3, padding=1, groups=144), nn.ReLU6()],
     (1, 144, 120, 160)),
    ("CRP max-pool 5x5 64 @120x160", lambda: [nn.MaxPool2d(5, 1, 2)], (1, 64, 120, 160)),
    ("stem conv3x3/2 3->32 +ReLU6 @480x640", lambda: [nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU6()], (1, 3, 480, 640)),
]


def pte_runner(module, x):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    prog = to_edge_transform_and_lower(torch.export.export(module, (x,)), partitioner=[XnnpackPartitioner()])
    path = Path(tempfile.mkdtemp()) / "layer.pte"
    path.write_bytes(prog.to_executorch().buffer)
    method = Runtime.get().load_program(str(path)).load_method("forward")
    return lambda: method.execute([x])


def main():
    from edgehydra.calibration.ptq import convert_stage, prepare_stage
    from edgehydra.calibration.quantizers import translate
    from edgehydra.calibration.recipe import PRESETS

    torch.manual_seed(0)
    print(f"{'layer':40s} {'fp32 ms':>8s} {'int8 ms':>8s} {'ratio':>6s}")
    for name, layers, shape in CASES:
        fp32 = nn.Sequential(*layers()).eval()
        x = torch.randn(*shape)
        prepared = prepare_stage(torch.export.export(fp32, (x,)).module(), translate(PRESETS["w8a8"]))
        for _ in range(4):
            prepared(torch.randn(*shape))
        int8 = convert_stage(prepared)
        a, b = interleaved_medians([pte_runner(fp32, x), pte_runner(int8, x)], rounds=40)
        print(f"{name:40s} {a:8.2f} {b:8.2f} {a / b:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
