"""Metrics accumulated over a whole dataset (not averaged per batch), outputs upsampled to label size.

Segmentation: confusion matrix -> mIoU over classes present in the prediction or the label
(classes absent from both are excluded), pixel accuracy. Depth on the valid pixels as the authors
score them (ground truth != 0, |prediction|, pooled over the set; DenseTorch's RMSE), or inside the
Garg or Eigen crop with that benchmark's cap (0 < t <= cap, prediction clipped to [1e-3, cap]):
RMSE, RMSE(log), abs rel, sq rel, log10, delta < 1.25^k. Depth aggregation is a named option: "pooled" (errors
of every valid pixel of the set together, as DenseTorch does) or "per_image" (each image's metrics from its own
pixels, then the mean over images: how Eigen-split KITTI results are reported, monodepth's evaluate_kitti.py
and monodepth2's evaluate_depth.py, ``compute_errors(gt[mask], pred[mask])`` per image then ``.mean()``).
Normals on valid pixels (a non-zero ground-truth vector): mean
and median angular error in degrees, % of pixels within 11.25, 22.5 and 30 degrees (the metrics of
Eigen & Fergus 2015 that the paper's normals extension reports).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = 255
ANGLE_BINS = 18000  # 0.01-degree bins over [0, 180]: the median is exact to 0.01 degrees, and ranks can sum them
# Crops of the KITTI depth benchmark, as fractions of the frame (rows top, bottom; columns left, right):
# Garg et al. 2016 and Eigen et al. 2014, as every KITTI depth evaluation since has used them.
CROPS = {"garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
         "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229)}
MIN_DEPTH = 1e-3  # the benchmark's floor (monodepth evaluate_kitti.py --min_depth 1e-3): scored where min < gt < cap
AGGREGATIONS = ("pooled", "per_image")
_PER_IMAGE = ("rmse", "rmse_log", "abs_rel", "sq_rel", "log10", "delta1", "delta2", "delta3")


@dataclass(frozen=True)
class Scoring:
    """How a model's outputs are scored: which tasks it returns (in order), the classes, the depth cap, crop and
    aggregation, and whether frames come padded (native resolution: each output is cropped back to the frame,
    and frames of different sizes go one at a time)."""
    tasks: tuple
    num_classes: int
    depth_cap: float = 10.0
    depth_crop: str | None = None
    padded: bool = False
    aggregation: str = "pooled"

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        Metrics(self.num_classes, self.depth_cap, self.depth_crop, self.aggregation)  # validates crop and aggregation

    @property
    def batch_size(self) -> int:
        return 1 if self.padded else 8

    def metrics(self) -> "Metrics":
        return Metrics(self.num_classes, self.depth_cap, self.depth_crop, self.aggregation)


class Metrics:
    def __init__(self, num_classes: int, depth_cap: float = 10.0, depth_crop: str | None = None,
                 aggregation: str = "pooled"):
        if depth_crop is not None and depth_crop not in CROPS:
            raise ValueError(f"depth_crop={depth_crop!r}: choose one of {', '.join(CROPS)}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={aggregation!r}: choose one of {', '.join(AGGREGATIONS)}")
        self.num_classes, self.cap, self.crop, self.aggregation = num_classes, depth_cap, depth_crop, aggregation
        self.conf = np.zeros((num_classes, num_classes), np.int64)  # rows: label, cols: prediction
        self.d = dict(n=0, se=0.0, se_log=0.0, abs_rel=0.0, sq_rel=0.0, log10=0.0, d1=0, d2=0, d3=0)
        # per image: the sum over images of each image's metric, and how many images had a scored pixel
        self.img = dict(images=0, **{k: 0.0 for k in _PER_IMAGE})
        self.ang_sum, self.ang_n = 0.0, 0
        self.ang_hist = np.zeros(ANGLE_BINS, np.int64)

    def update_segm(self, logits_or_pred: torch.Tensor, target: torch.Tensor):
        pred = logits_or_pred
        if pred.dim() == 4:
            if pred.shape[-2:] != target.shape[-2:]:
                pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            # max(1).indices is argmax (the first maximal index, NaN counting as maximal) by another kernel: 117 ms
            # instead of 375 ms for 8 frames of 40 classes at 240x320 on one core (AMD EPYC Zen 3), and this runs
            # on every frame every stage scores (27.5 s of the default demo, py-spy)
            pred = pred.max(1).indices
        t = target.reshape(-1).numpy()
        p = pred.reshape(-1).numpy()
        m = t != IGNORE
        m &= t < self.num_classes
        self.conf += np.bincount(t[m] * self.num_classes + p[m], minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    def update_depth(self, pred: torch.Tensor, target: torch.Tensor):
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        # The authors' protocol (DenseTorch engine/metrics.py RMSE: ``idx = gt != 0``, ``pred = np.abs(pred)``,
        # squared errors pooled over every valid pixel of the set): no upper cap. The Garg / Eigen crops come
        # with their own convention, which also caps: ground truth <= cap, prediction clipped to [1e-3, cap].
        valid = target > 0
        if self.crop:
            valid = (target > MIN_DEPTH) & (target < self.cap)
            h, w = target.shape[-2:]
            top, bottom, left, right = CROPS[self.crop]
            inside = torch.zeros(h, w, dtype=torch.bool)
            inside[int(top * h):int(bottom * h), int(left * w):int(right * w)] = True
            valid = valid & inside
        # |pred| as the authors score it; the 1e-3 floor only keeps the log terms finite
        pred = pred.double().clamp(MIN_DEPTH, self.cap) if self.crop else pred.double().abs().clamp(min=MIN_DEPTH)
        target = target.double()
        for i in range(target.shape[0]):  # each image's own metrics, for the per-image mean
            v = valid[i].reshape(-1)
            if bool(v.any()):
                self._image(pred[i].reshape(-1)[v], target[i].reshape(-1)[v])
        v = valid.reshape(-1)
        t, p = target.reshape(-1)[v], pred.reshape(-1)[v]
        if t.numel() == 0:
            return
        d = self.d
        d["n"] += t.numel()
        d["se"] += float(((p - t) ** 2).sum())
        d["se_log"] += float(((p.log() - t.log()) ** 2).sum())
        d["abs_rel"] += float(((p - t).abs() / t).sum())
        d["sq_rel"] += float((((p - t) ** 2) / t).sum())
        d["log10"] += float((p.log10() - t.log10()).abs().sum())
        ratio = torch.maximum(p / t, t / p)
        for k in (1, 2, 3):
            d[f"d{k}"] += int((ratio < 1.25 ** k).sum())

    def _image(self, p: torch.Tensor, t: torch.Tensor):
        ratio = torch.maximum(p / t, t / p)
        vals = {"rmse": float(((p - t) ** 2).mean().sqrt()), "rmse_log": float(((p.log() - t.log()) ** 2).mean().sqrt()),
                "abs_rel": float(((p - t).abs() / t).mean()), "sq_rel": float((((p - t) ** 2) / t).mean()),
                "log10": float((p.log10() - t.log10()).abs().mean()),
                **{f"delta{k}": float((ratio < 1.25 ** k).double().mean()) * 100 for k in (1, 2, 3)}}
        self.img["images"] += 1
        for k, v in vals.items():
            self.img[k] += v

    def update_normals(self, pred: torch.Tensor, target: torch.Tensor):
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        v = target.abs().sum(1) > 0  # invalid pixels are read as the zero vector (layout.read_normals)
        cos = F.cosine_similarity(pred.double(), target.double(), dim=1).clamp(-1, 1)[v]
        ang = torch.rad2deg(torch.acos(cos))
        self.ang_sum += float(ang.sum())
        self.ang_n += int(ang.numel())
        idx = (ang * (ANGLE_BINS / 180.0)).long().clamp(0, ANGLE_BINS - 1).numpy()
        self.ang_hist += np.bincount(idx, minlength=ANGLE_BINS)

    def update(self, outputs: dict, batch: dict):
        if "segm" in outputs:
            has = batch.get("has_segm")
            idx = (has > 0.5) if has is not None else slice(None)
            if has is None or bool(idx.any()):
                self.update_segm(outputs["segm"][idx], batch["segm"][idx])
        if "depth" in outputs:
            has = batch.get("has_depth")
            idx = (has > 0.5) if has is not None else slice(None)
            if has is None or bool(idx.any()):
                self.update_depth(outputs["depth"][idx], batch["depth"][idx])
        if "normals" in outputs and batch.get("has_normals") is not None and bool((batch["has_normals"] > 0.5).any()):
            idx = batch["has_normals"] > 0.5
            self.update_normals(outputs["normals"][idx], batch["normals"][idx])

    def merge(self, other: "Metrics"):
        self.conf += other.conf
        for k in self.d:
            self.d[k] += other.d[k]
        for k in self.img:
            self.img[k] += other.img[k]
        self.ang_sum += other.ang_sum
        self.ang_n += other.ang_n
        self.ang_hist += other.ang_hist

    def as_array(self) -> np.ndarray:
        """Flat float64 vector of all accumulators, for an all-reduce across ranks."""
        return np.concatenate([self.conf.ravel().astype(np.float64), np.array([self.d[k] for k in self.d], np.float64),
                               np.array([self.img[k] for k in self.img], np.float64), self.ang_hist.astype(np.float64), np.array([self.ang_sum, self.ang_n], np.float64)])

    def load_array(self, a: np.ndarray):
        n = self.num_classes ** 2
        self.conf = a[:n].reshape(self.num_classes, self.num_classes).round().astype(np.int64)
        for i, k in enumerate(self.d):
            self.d[k] = a[n + i] if isinstance(self.d[k], float) else int(round(a[n + i]))
        n += len(self.d)
        for i, k in enumerate(self.img):
            self.img[k] = a[n + i] if isinstance(self.img[k], float) else int(round(a[n + i]))
        self.ang_hist = a[-2 - ANGLE_BINS:-2].round().astype(np.int64)
        self.ang_sum, self.ang_n = float(a[-2]), int(round(a[-1]))

    def compute(self) -> dict:
        out = {}
        conf = self.conf
        if conf.sum() > 0:
            tp = np.diag(conf).astype(np.float64)
            gt, pr = conf.sum(1), conf.sum(0)
            union = gt + pr - tp
            present = union > 0  # classes absent from both prediction and label are excluded
            iou = np.where(present, tp / np.maximum(union, 1), np.nan)
            out["miou"] = float(np.nanmean(iou[present])) * 100
            out["pixel_acc"] = float(tp.sum() / conf.sum()) * 100
            out["iou_per_class"] = [None if np.isnan(v) else round(float(v) * 100, 3) for v in iou]
        d = self.d
        if d["n"] > 0:
            n = d["n"]
            out.update(rmse=float(np.sqrt(d["se"] / n)), rmse_log=float(np.sqrt(d["se_log"] / n)),
                       abs_rel=d["abs_rel"] / n, sq_rel=d["sq_rel"] / n, log10=d["log10"] / n,
                       delta1=d["d1"] / n * 100, delta2=d["d2"] / n * 100, delta3=d["d3"] / n * 100,
                       depth_pixels=int(n))  # how many ground-truth pixels were scored (the valid ones)
            if self.aggregation == "per_image":  # named in the output only when not the default (as depth_crop)
                out.update({k: self.img[k] / self.img["images"] for k in _PER_IMAGE}, depth_images=self.img["images"],
                           depth_aggregation="per_image")
            if self.crop:
                out["depth_crop"] = self.crop
        if self.ang_n:
            out["normals_mean_angle"] = self.ang_sum / self.ang_n
            cum = np.cumsum(self.ang_hist)
            # median: the bin where half the pixels are reached, at its centre (exact to 0.005 degrees)
            out["normals_median_angle"] = (float(np.searchsorted(cum, self.ang_n / 2)) + 0.5) * 180.0 / ANGLE_BINS
            for thr in (11.25, 22.5, 30.0):
                k = int(round(thr * ANGLE_BINS / 180.0))  # bins entirely below thr
                out[f"normals_within_{thr:g}"] = float(cum[k - 1]) / self.ang_n * 100
        return out


HEADLINE = ("miou", "pixel_acc", "rmse", "rmse_log", "abs_rel", "sq_rel", "log10", "delta1", "delta2", "delta3",
            "normals_mean_angle", "normals_median_angle",
            "normals_within_11.25", "normals_within_22.5", "normals_within_30")
