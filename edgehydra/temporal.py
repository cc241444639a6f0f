"""Temporal stability of per-frame predictions: how much labels and depth change between consecutive frames
once the camera's own motion is taken out.

Each pixel of frame b is matched to where the same surface point was in frame a, from either the known
camera motion and frame b's true depth (synthroom sequences: exact, occluded pixels removed by comparing
with frame a's true depth) or dense optical flow (OpenCV's DIS on real video, pixels kept where the forward
and backward flows agree within one pixel). Over the matched pixels:

- segmentation flicker: the share whose predicted label differs from the label predicted at the match;
- temporal consistency: the mIoU of frame b's labels against frame a's warped labels;
- depth temporal error: mean |d_b - d_a->b| / d_b, with d_a->b frame a's predicted depth at the match
  carried into frame b (by the motion for known poses; unchanged for flow, which has no scale).

A perfect, static predictor scores 0 flicker, 100 % consistency and 0 depth error on a synthroom
sequence up to the nearest-pixel sampling at label edges; the figures that matter are the rises of an
artifact over the FP32 model on the same frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .camera import Intrinsics, Pose, backproject, project, transform

# A match is occluded when frame a's true depth at it is this much nearer than the carried point: 2 % of the
# distance plus 2 cm covers synthroom's clean-depth quantisation (it is exact) and nearest-pixel sampling
# on slanted surfaces (one pixel at 240x320 spans 0.4 % of the distance on a 45 degree wall).
OCCLUSION_REL = 0.02
OCCLUSION_ABS_M = 0.02
FLOW_FB_PX = 1.0


@dataclass(frozen=True)
class Correspondence:
    """For each pixel of frame b: the nearest pixel of frame a (ia, ja), whether it is a valid match, and
    (for known motion) the z in frame b of frame a's point, as a function of frame a's depth there."""

    ia: np.ndarray
    ja: np.ndarray
    valid: np.ndarray
    R_ab: np.ndarray | None = None  # frame a -> frame b rotation and translation (known motion only)
    t_ab: np.ndarray | None = None
    intr_a: Intrinsics | None = None


def match_by_motion(depth_b: np.ndarray, pose_a: Pose, pose_b: Pose, intr: Intrinsics,
                    depth_a: np.ndarray | None = None) -> Correspondence:
    """Frame b's pixels in frame a by the known motion, from frame b's true depth; pixels hidden in frame a
    are dropped when frame a's true depth is given."""
    pts_b = backproject(depth_b, intr)
    R_ba, t_ba = pose_b.relative_to(pose_a)
    u, v, z = project(transform(pts_b, R_ba, t_ba), intr)
    h, w = depth_b.shape
    with np.errstate(invalid="ignore"):
        ja, ia = np.rint(u), np.rint(v)
        valid = np.isfinite(z) & (z > 0) & (ja >= 0) & (ja < w) & (ia >= 0) & (ia < h)
    ia = np.where(valid, ia, 0).astype(np.intp)
    ja = np.where(valid, ja, 0).astype(np.intp)
    if depth_a is not None:
        da = depth_a[ia, ja]
        with np.errstate(invalid="ignore"):
            valid &= (da > 0) & (np.abs(da - z) <= OCCLUSION_REL * z + OCCLUSION_ABS_M)
    R_ab, t_ab = pose_a.relative_to(pose_b)
    return Correspondence(ia, ja, valid, R_ab, t_ab, intr)


def match_by_flow(rgb_a: np.ndarray, rgb_b: np.ndarray) -> Correspondence:
    """Frame b's pixels in frame a by DIS optical flow (OpenCV), kept where forward and backward flow agree."""
    import cv2

    ga = cv2.cvtColor(np.ascontiguousarray(rgb_a), cv2.COLOR_RGB2GRAY)
    gb = cv2.cvtColor(np.ascontiguousarray(rgb_b), cv2.COLOR_RGB2GRAY)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    f_ba = dis.calc(gb, ga, None)  # b -> a
    f_ab = dis.calc(ga, gb, None)
    h, w = ga.shape
    jj, ii = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    ua, va = jj + f_ba[..., 0], ii + f_ba[..., 1]
    ja, ia = np.rint(ua), np.rint(va)
    valid = (ja >= 0) & (ja < w) & (ia >= 0) & (ia < h)
    ia = np.where(valid, ia, 0).astype(np.intp)
    ja = np.where(valid, ja, 0).astype(np.intp)
    back = f_ab[ia, ja]  # a -> b at the match should bring the pixel home
    err = np.hypot(ua + back[..., 0] - jj, va + back[..., 1] - ii)
    return Correspondence(ia, ja, valid & (err <= FLOW_FB_PX))


def segm_flicker(labels_a: np.ndarray, labels_b: np.ndarray, c: Correspondence) -> float:
    """Share of matched pixels of frame b whose label differs from frame a's label at the match."""
    n = int(c.valid.sum())
    if n == 0:
        return float("nan")
    return float((labels_b[c.valid] != labels_a[c.ia, c.ja][c.valid]).sum() / n)


def temporal_consistency(labels_a: np.ndarray, labels_b: np.ndarray, c: Correspondence, num_classes: int) -> float:
    """mIoU of frame b's labels against frame a's warped labels, over the classes either side predicts."""
    a = labels_a[c.ia, c.ja][c.valid].astype(np.int64)
    b = labels_b[c.valid].astype(np.int64)
    if a.size == 0:
        return float("nan")
    conf = np.bincount(a * num_classes + b, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    seen = union > 0
    return float((inter[seen] / union[seen]).mean())


def depth_temporal_error(depth_a: np.ndarray, depth_b: np.ndarray, c: Correspondence) -> float:
    """Mean |d_b - d_a->b| / d_b over matched pixels where both predictions are positive."""
    da = depth_a[c.ia, c.ja]
    if c.R_ab is not None:
        # frame a's predicted point at the match, carried into frame b: its z there
        pa = backproject(depth_a, c.intr_a)[c.ia, c.ja]
        da = transform(pa, c.R_ab, c.t_ab)[..., 2]
    ok = c.valid & np.isfinite(da) & (da > 0) & (depth_b > 0)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(depth_b[ok] - da[ok]) / depth_b[ok]))


def pair_stability(pred_a: dict, pred_b: dict, c: Correspondence, num_classes: int) -> dict:
    """The three figures for one pair of consecutive predictions (dicts with ``segm`` and/or ``depth``)."""
    out = {"matched": float(c.valid.mean())}
    if "segm" in pred_a:
        out["flicker"] = segm_flicker(pred_a["segm"], pred_b["segm"], c)
        out["consistency"] = temporal_consistency(pred_a["segm"], pred_b["segm"], c, num_classes)
    if "depth" in pred_a:
        out["depth_temporal_error"] = depth_temporal_error(pred_a["depth"], pred_b["depth"], c)
    return out


def summarise(pairs: list[dict]) -> dict:
    """Means over pairs (NaN pairs, with nothing matched, left out) and the per-pair series for plots."""
    keys = sorted({k for p in pairs for k in p})
    out = {}
    for k in keys:
        vals = np.array([p.get(k, np.nan) for p in pairs], float)
        ok = np.isfinite(vals)
        out[k] = float(vals[ok].mean()) if ok.any() else None
        out[f"{k}_per_pair"] = [None if not np.isfinite(v) else float(v) for v in vals]
    out["pairs"] = len(pairs)
    return out


def sequence_flicker(forward, config, frames: list[dict]) -> float:
    """Mean segmentation flicker (percent of matched pixels) of ``forward`` (a model or quantised program:
    normalised (1, 3, H, W) -> one output per task) over a synthroom sequence (``synth_sequence`` frames, at the
    input size), pixels matched by the known motion: the figure a mixed-precision search holds as a task budget."""
    import torch
    import torch.nn.functional as F

    from .model import normalize

    labels = []
    with torch.no_grad():
        for f in frames:
            x = normalize(torch.from_numpy(f["rgb"]).permute(2, 0, 1)[None], config)
            seg = forward(x)[list(config.tasks).index("segm")]
            seg = F.interpolate(torch.as_tensor(seg).float(), size=f["rgb"].shape[:2], mode="bilinear",
                                align_corners=False)
            labels.append(seg.argmax(1)[0].numpy())
    vals = []
    for a, b, la, lb in zip(frames, frames[1:], labels, labels[1:]):
        c = match_by_motion(b["depth_clean"], a["pose"], b["pose"], b["intrinsics"], a["depth_clean"])
        vals.append(segm_flicker(la, lb, c))
    return float(np.nanmean(vals) * 100)
