#!/usr/bin/env python
"""Where int8 pays on this CPU: HydraNet's layers and stages as fp32 and int8 ExecuTorch XNNPACK .pte.

    python benchmarks/ops.py [--run runs/demo] [--size 240x320]

Two tables, every fp32/int8 pair timed interleaved (one call of each per round, medians):
- layers: each HydraNet-shaped layer stacked 1 and 5 deep; its cost is the slope (T5 - T1) / 4, so
  the .pte's own input/output work (an NCHW float tensor transposed and quantised on the way in,
  dequantised on the way out) cancels. Timing one layer alone measures mostly that I/O: a first
  version of this script did, and reported depthwise convolutions and max-pools no faster in int8.
- stages: the run's model cut after each encoder stage (ending in a global average pool, so the
  output is tiny), then the whole model; a stage's cost is the difference to the previous cut;
- and the whole published architecture (hydranet_nyud), whose wider decoder favours int8 more.
Each graph is quantised with the project's w8a8 translation, calibrated on 4 random inputs (XNNPACK's
int8 kernels do not depend on the values). torch keeps one thread: it only wraps the tensors here,
and its idle OpenMP workers would spin beside XNNPACK's pool (see benchmarks/run.py).
"""
from __future__ import annotations

import argparse
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

DEPTHS = (1, 5)


def layer_cases(h: int, w: int):
    """(name, layer factory, input shape) at hydranet_small's feature sizes for an h x w input."""
    q, e = (h // 4, w // 4), (h // 2, w // 2)
    return [
        (f"conv3x3 64->64 (head-like) @{q[0]}x{q[1]}", lambda: nn.Conv2d(64, 64, 3, padding=1), (1, 64, *q)),
        (f"conv1x1 64->64 (CRP) @{q[0]}x{q[1]}", lambda: nn.Conv2d(64, 64, 1), (1, 64, *q)),
        (f"conv1x1 32->32 +ReLU6 @{e[0]}x{e[1]}", lambda: nn.Sequential(nn.Conv2d(32, 32, 1), nn.ReLU6()), (1, 32, *e)),
        (f"depthwise 3x3 96 +ReLU6 @{q[0]}x{q[1]}",
         lambda: nn.Sequential(nn.Conv2d(96, 96, 3, padding=1, groups=96), nn.ReLU6()), (1, 96, *q)),
        (f"depthwise 3x3 32 +ReLU6 @{e[0]}x{e[1]}",
         lambda: nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU6()), (1, 32, *e)),
        (f"max-pool 5x5 64 (CRP) @{q[0]}x{q[1]}", lambda: nn.MaxPool2d(5, 1, 2), (1, 64, *q)),
    ]


class Cut(nn.Module):
    """The model's encoder up to layer ``k``, then a global average pool (a tiny output)."""

    def __init__(self, model, k: int):
        super().__init__()
        self.layers = nn.Sequential(*[getattr(model, f"layer{i}") for i in range(1, k + 1)])

    def forward(self, x):
        return self.layers(x).mean((2, 3), keepdim=True)


def pte_files(module: nn.Module, shape, out_dir: Path | None = None) -> tuple[Path, Path]:
    """``module`` lowered to XNNPACK as an fp32 and an int8 .pte (paths)."""
    from edgehydra.calibration.ptq import convert_stage, prepare_stage
    from edgehydra.calibration.quantizers import translate
    from edgehydra.calibration.recipe import PRESETS
    from edgehydra.exporters.executorch import lower

    module = module.eval()
    x = torch.randn(*shape)
    prepared = prepare_stage(torch.export.export(module, (x,)).module(), translate(PRESETS["w8a8"]))
    for _ in range(4):
        prepared(torch.randn(*shape))
    out_dir = Path(out_dir or tempfile.mkdtemp())
    paths = []
    for m, name in ((module, "fp32"), (convert_stage(prepared), "int8")):
        prog, _ = lower(m, x, name)  # as `edgehydra export` lowers it
        paths.append(out_dir / f"graph_{name}.pte")
        paths[-1].write_bytes(prog.buffer)
    return paths[0], paths[1]


def pte_pair(module: nn.Module, shape) -> tuple:
    """(fp32 runner, int8 runner) of ``module`` lowered to XNNPACK."""
    from edgehydra.exporters.executorch import runtime

    x = torch.randn(*shape)
    runners = []
    for path in pte_files(module, shape):
        method = runtime().load_program(str(path)).load_method("forward")
        runners.append(lambda method=method: method.execute([x]))
    return tuple(runners)


def layers_table(h: int, w: int) -> list[tuple]:
    rows = []
    for name, make, shape in layer_cases(h, w):
        pairs = [pte_pair(nn.Sequential(*[make() for _ in range(d)]), shape) for d in DEPTHS]
        f1, q1, f5, q5 = interleaved_medians([*pairs[0], *pairs[1]], rounds=40)
        n = DEPTHS[1] - DEPTHS[0]
        rows.append((name, (f5 - f1) / n, (q5 - q1) / n))
        print(f"{name:44s} {rows[-1][1]:8.3f} {rows[-1][2]:8.3f} {rows[-1][1] / rows[-1][2]:5.2f}x", flush=True)
    return rows


def stages_table(model, h: int, w: int) -> list[tuple]:
    n_enc = 1 + len(model.config.encoder)
    graphs = [("input/output only", nn.ReLU())] + [(f"layer{k}", Cut(model, k)) for k in range(1, n_enc + 1)]
    graphs.append(("decoder + heads", model))
    pairs = [pte_pair(g, (1, 3, h, w)) for _, g in graphs]
    meds = interleaved_medians([r for p in pairs for r in p], rounds=60)
    rows, prev = [], (0.0, 0.0)
    for i, (name, _) in enumerate(graphs):
        f, q = meds[2 * i], meds[2 * i + 1]
        rows.append((name, f - prev[0], q - prev[1], f, q))
        prev = (f, q)
        d_f, d_q = rows[-1][1], rows[-1][2]
        print(f"{name:20s} {d_f:7.2f} {d_q:7.2f} {d_f / d_q if d_q > 0.02 else float('nan'):6.2f}x"
              f" {f:9.2f} {q:8.2f}", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo", help="run whose fp32.pt is cut into stages (else hydranet_small)")
    ap.add_argument("--size", default="240x320")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    from edgehydra.run import Run

    ckpt = Run(a.run).fp32
    if ckpt.is_file():
        from edgehydra.checkpoint import load_checkpoint

        model, _ = load_checkpoint(ckpt)
    else:
        from edgehydra import create_model

        model = create_model("hydranet_small")
    print(f"per layer at {h}x{w} (slope of a {DEPTHS[0]}- vs {DEPTHS[1]}-deep stack, ms per layer)")
    print(f"{'layer':44s} {'fp32':>8s} {'int8':>8s} {'ratio':>6s}")
    layers_table(h, w)
    print(f"\nper stage of {ckpt if ckpt.is_file() else 'hydranet_small'} at {h}x{w} (ms; cumulative on the right)")
    print(f"{'stage':20s} {'fp32':>7s} {'int8':>7s} {'ratio':>7s} {'cum fp32':>9s} {'int8':>8s}")
    stages_table(model, h, w)
    # The published architecture (256-channel decoder) spends a larger share in GEMM-heavy convolutions.
    from edgehydra import create_model

    paper = create_model("hydranet_nyud")
    f, q = interleaved_medians(list(pte_pair(paper, (1, 3, h, w))), rounds=40)
    print(f"\npublished HydraNet (hydranet_nyud, {paper.num_parameters() / 1e6:.2f} M parameters, untrained) at "
          f"{h}x{w}: fp32 {f:.2f} ms, int8 {q:.2f} ms, {f / q:.2f}x")


if __name__ == "__main__":
    main()
