"""The paper's multi-task loss: softmax cross-entropy + lambda * inverse Huber (berHu), lambda = 0.5.

Nekrasov et al. (ICRA 2019), Sec. III: L = L_segm + lambda * L_depth with lambda = 0.5; berHu's
threshold is c = 0.2 max |error| over the batch's valid pixels (Laina et al. 2016). Two differences
from the authors' later DenseTorch, said here so nobody reads them as bugs: its InvHuberLoss averages
over every pixel (invalid ones count as 0, so the loss shrinks with the share of holes; here the mean is
over valid pixels), and its multitask example weighs the tasks (0.5, 0.5), i.e. lambda = 1 up to scale.
Normals (three-task models) weigh ``normals_weight`` times the cross-entropy: 10 by default, the authors'
0.5 / 0.5 / 5.0 (DenseTorch dev, segm-depth-normals-mbv2-rflw.sh), a training option (TrainConfig).

Rows that lack a modality (``has_X == 0``) contribute nothing to that term; a batch with no
row of a modality gives that term exactly 0 (not NaN).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255


def berhu(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Inverse Huber on valid pixels: p = relu(pred), e = |p - t|, c = 0.2 max(e) over the batch;
    e where e <= c, (e^2 + c^2) / (2c) elsewhere (Laina et al. 2016, as in the paper)."""
    if not bool(valid.any()):
        return pred.sum() * 0.0
    e = (F.relu(pred) - target).abs()[valid]
    c = 0.2 * e.max().detach()
    if float(c) <= 0:  # every pixel exact: the loss is 0, avoid 0/0
        return e.sum() * 0.0
    return torch.where(e <= c, e, (e * e + c * c) / (2 * c)).mean()


def seg_loss(logits: torch.Tensor, target: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    target = target.clone()
    target[has < 0.5] = IGNORE
    if not bool((target != IGNORE).any()):
        return logits.sum() * 0.0
    # Over the channel axis as the last axis: the same cross-entropy (mean over labelled pixels), but the upsampled
    # logits are channels_last (the model trains NHWC), where log_softmax over dim 1 first copies them to NCHW;
    # as an (N*H*W, C) view it runs on them in place: 100 vs 164 ms per 16x40x120x160 batch, forward and backward,
    # loss equal and gradients within 2e-12 (AMD EPYC Zen 3, 2 threads; benchmarks/train_step.py).
    c = logits.shape[1]
    return F.cross_entropy(logits.permute(0, 2, 3, 1).reshape(-1, c), target.reshape(-1), ignore_index=IGNORE)


def normals_loss(pred: torch.Tensor, target: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    valid = (target.abs().sum(1) > 0) & (has.view(-1, 1, 1) > 0.5)
    if not bool(valid.any()):
        return pred.sum() * 0.0
    cos = F.cosine_similarity(pred, target, dim=1)
    return (1 - cos[valid]).mean()


def _to_label_size(out: torch.Tensor, size) -> torch.Tensor:
    return out if out.shape[-2:] == tuple(size) else F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def multitask_loss(outputs: tuple, batch: dict, tasks: tuple[str, ...], lam: float = 0.5,
                   normals_weight: float = 10.0) -> tuple[torch.Tensor, dict]:
    """total = seg + lam * depth (+ normals_weight * normals), as in the paper. Outputs are upsampled
    to label size (the network predicts at 1/4 resolution). (Before this was fixed it was
    lam * seg + (1 - lam) * depth, which at lam = 0.5 weighs depth twice as much relative to segmentation.)"""
    size = batch["segm"].shape[-2:]
    out = dict(zip(tasks, outputs))
    ls = seg_loss(_to_label_size(out["segm"], size), batch["segm"], batch["has_segm"])
    valid = (batch["depth"] > 0) & (batch["has_depth"].view(-1, 1, 1, 1) > 0.5)
    ld = berhu(_to_label_size(out["depth"], size), batch["depth"], valid)
    total = ls + lam * ld
    parts = {"seg": float(ls.detach()), "depth": float(ld.detach())}
    if "normals" in out:
        ln = normals_loss(_to_label_size(out["normals"], size), batch["normals"], batch["has_normals"])
        total = total + normals_weight * ln
        parts["normals"] = float(ln.detach())
    return total, parts
