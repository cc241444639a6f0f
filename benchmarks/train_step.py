#!/usr/bin/env python
"""Where a training step's time goes, and the loss's share of it, on this host.

    python benchmarks/train_step.py [--model hydranet_small] [--crop 120x160] [--batch 16] [--steps 8]

Times, in one process and one run (each pair in alternation, benchmarks/run.py's interleaved_medians), the demo's training step (NHWC model, forward, the paper's loss, backward,
Adam) beside the same step with the model's outputs summed instead of the loss (what the network alone costs),
and the segmentation cross-entropy as edgehydra computes it (over an (N*H*W, C) view of the channels_last logits)
beside ``F.cross_entropy`` on the NCHW-indexed tensor (which copies channels_last logits to NCHW first). The
ratios are what to compare between machines; say the CPU (``lscpu``) beside any figure.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from run import interleaved_medians  # noqa: E402  (timed in alternation: drift hits both sides of a ratio alike)


def main() -> None:
    from edgehydra.devices.host import read_cpuinfo
    from edgehydra.losses import IGNORE, multitask_loss, seg_loss
    from edgehydra.registry import create_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hydranet_small")
    ap.add_argument("--crop", default="120x160")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    h, w = (int(v) for v in a.crop.split("x"))
    b = a.batch
    m = create_model(a.model).train().to(memory_format=torch.channels_last)
    tasks = m.config.tasks
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    batch = {"segm": torch.randint(0, m.config.num_classes, (b, h, w), generator=g),
             "depth": torch.rand(b, 1, h, w, generator=g) * 5, "has_segm": torch.ones(b), "has_depth": torch.ones(b),
             "normals": torch.zeros(b, 3, h, w), "has_normals": torch.zeros(b)}
    opt = torch.optim.Adam(m.parameters(), 1e-4)

    def step(loss_fn):
        def run():
            out = m(x)
            loss = loss_fn(out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    full, net = interleaved_medians([step(lambda out: multitask_loss(out, batch, tasks)[0]),
                                     step(lambda out: sum(o.float().mean() for o in out))], rounds=a.steps, warmup=2)

    logits = torch.randn(b, m.config.num_classes, h, w, generator=g).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    target = batch["segm"].clone()
    target[:, : h // 20] = IGNORE

    def ce(fn):
        def run():
            fn().backward()
            logits.grad = None
        return run

    ours, nchw = interleaved_medians([ce(lambda: seg_loss(logits, target, batch["has_segm"])),
                                      ce(lambda: F.cross_entropy(logits, target, ignore_index=IGNORE))],
                                     rounds=a.steps, warmup=2)
    print(f"{a.model}, batch {b} at {h}x{w}, {a.threads} threads, {read_cpuinfo().model_name}:")
    print(f"  training step      {full:7.1f} ms  ({b / full * 1e3:.1f} images/s)")
    print(f"  network alone      {net:7.1f} ms  (the loss and its backward: {100 * (full - net) / full:.0f} % of a step)")
    print(f"  segmentation CE    {ours:7.1f} ms  (F.cross_entropy on the channels_last logits as NCHW: {nchw:.1f} ms, "
          f"{nchw / ours:.2f}x)")


if __name__ == "__main__":
    main()
