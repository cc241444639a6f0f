"""Temporal stability and parity in robot units: the FP32 model and each artifact on the same sequence, every frame.

Per model: segmentation flicker, temporal consistency and depth temporal error (edgehydra.temporal) per
consecutive pair, matched by the known camera motion where the source has poses and true depth (synthroom
sequences), else by optical flow; per-frame accuracy against the truth where the source has it; and against
the FP32 model, in the units a robot plans in: depth error by distance band, Chamfer distance between the
point clouds, and label agreement in 3D. The rise of an artifact's flicker over FP32's on the same frames is
what a device profile's ``max_flicker_rise`` budgets.
"""
from __future__ import annotations

import numpy as np

from edgehydra.camera import Intrinsics
from edgehydra.temporal import match_by_flow, match_by_motion, pair_stability, summarise

from .pointcloud import INDOOR_BANDS_M, chamfer_m, depth_error_bands, label_agreement_3d, organized_cloud
from .predictor import Predictor
from .sources import Frame

SCHEMA = "edgehydra.stability/1"
# point-cloud comparisons on every Nth frame: each costs ~0.1 s at 240x320, the per-pair figures are on all
CLOUD_EVERY = 4


def stability(predictors: list[Predictor], frames: list[Frame], intrinsics: Intrinsics | None, bands=INDOOR_BANDS_M,
              progress=None) -> dict:
    """``predictors[0]`` is the reference (FP32). Frames are at the predictors' input size (a sequence rendered
    at it, or resized by the caller), so the intrinsics apply to predictions as they are."""
    if len(frames) < 2:
        raise ValueError("stability needs at least 2 frames")
    size = predictors[0].size
    task = progress.add_task("stability", total=len(frames) * len(predictors)) if progress else None
    preds = []
    for p in predictors:
        out = []
        for f in frames:
            out.append(p(f.rgb))
            if progress:
                progress.advance(task)
        preds.append(out)
    by_motion = all(f.pose is not None and "depth" in f.truth for f in frames) and intrinsics is not None
    matches = []
    for a, b in zip(frames, frames[1:]):
        if by_motion:
            matches.append(match_by_motion(b.truth["depth"], a.pose, b.pose, intrinsics, a.truth["depth"]))
        else:
            matches.append(match_by_flow(a.rgb, b.rgb))
    ncls = predictors[0].config.num_classes
    models = []
    for p, out in zip(predictors, preds):
        pairs = [pair_stability(out[i], out[i + 1], matches[i], ncls) for i in range(len(frames) - 1)]
        m = {"name": p.name, "target": p.target, "precision": p.precision, "sha256": p.sha256,
             "temporal": summarise(pairs), "accuracy": _accuracy(out, frames, ncls, bands)}
        models.append(m)
    ref = preds[0]
    for m, out in zip(models[1:], preds[1:]):
        m["vs_reference"] = _versus(out, ref, frames, intrinsics, bands)
        for k in ("flicker", "consistency", "depth_temporal_error"):
            a, r = m["temporal"].get(k), models[0]["temporal"].get(k)
            m["temporal"][f"{k}_rise"] = (a - r) if a is not None and r is not None else None
    if intrinsics is not None and all("depth" in f.truth for f in frames):
        for m, out in zip(models, preds):
            m["chamfer_vs_truth_m"] = _mean([chamfer_m(_cloud(o, f, intrinsics), _truth_cloud(f, intrinsics))
                                             for o, f in _every(out, frames)])
    return {"schema": SCHEMA, "frames": len(frames), "size": list(size),
            "matched_by": "known camera motion and true depth" if by_motion else "DIS optical flow (forward-backward checked)",
            "reference": predictors[0].name, "models": models}


def _every(out, frames):
    return [(out[i], frames[i]) for i in range(0, len(frames), CLOUD_EVERY)]


def _mean(vals):
    v = [x for x in vals if x is not None]
    return float(np.mean(v)) if v else None


def _cloud(pred: dict, f: Frame, intr: Intrinsics):
    return organized_cloud(pred["depth"], f.rgb, pred["segm"], pred["confidence"], intr)


def _truth_cloud(f: Frame, intr: Intrinsics):
    seg = f.truth.get("segm", np.zeros(f.rgb.shape[:2], np.uint8))
    return organized_cloud(f.truth["depth"], f.rgb, seg, np.ones(seg.shape, np.float32), intr)


def _accuracy(out: list[dict], frames: list[Frame], ncls: int, bands) -> dict:
    """mIoU over the sequence and depth RMSE / abs rel against the truth (valid pixels), and depth error by band."""
    have_s = all("segm" in f.truth for f in frames) and "segm" in out[0]
    have_d = all("depth" in f.truth for f in frames) and "depth" in out[0]
    res = {}
    if have_s:
        conf = np.zeros((ncls, ncls), np.int64)
        for o, f in zip(out, frames):
            gt, pr = f.truth["segm"].astype(np.int64), o["segm"].astype(np.int64)
            ok = gt < ncls
            conf += np.bincount(gt[ok] * ncls + pr[ok], minlength=ncls * ncls).reshape(ncls, ncls)
        inter = np.diag(conf)
        union = conf.sum(0) + conf.sum(1) - inter
        present = conf.sum(1) > 0
        res["miou"] = float((inter[present] / np.maximum(union[present], 1)).mean() * 100)
    if have_d:
        gt = np.stack([f.truth["depth"] for f in frames])
        pr = np.stack([o["depth"] for o in out])
        ok = gt > 0
        e = pr[ok] - gt[ok]
        res["rmse"] = float(np.sqrt((e ** 2).mean()))
        res["abs_rel"] = float((np.abs(e) / gt[ok]).mean())
        res["depth_bands"] = depth_error_bands(pr, gt, bands)
    return res


def _versus(out: list[dict], ref: list[dict], frames: list[Frame], intr: Intrinsics | None, bands) -> dict:
    res = {}
    if "segm" in out[0]:
        res["label_agreement"] = float(np.mean([(o["segm"] == r["segm"]).mean() for o, r in zip(out, ref)]))
    if "depth" in out[0]:
        res["depth_bands"] = depth_error_bands(np.stack([o["depth"] for o in out]), np.stack([r["depth"] for r in ref]),
                                               bands)
    if intr is not None and "depth" in out[0] and "segm" in out[0]:
        pairs = [(_cloud(o, f, intr), _cloud(r, f, intr)) for (o, f), (r, _) in zip(_every(out, frames), _every(ref, frames))]
        res["chamfer_m"] = _mean([chamfer_m(a, b) for a, b in pairs])
        res["label_agreement_3d"] = _mean([label_agreement_3d(a, b) for a, b in pairs])
    return res
