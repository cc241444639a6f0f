"""Metrics accumulated over a whole dataset (not averaged per batch), outputs upsampled to label size.

Segmentation: confusion matrix -> mIoU over classes present in the prediction or the label
(classes absent from both are excluded), pixel accuracy. Depth on valid pixels (0 < t <= cap,
prediction clamped to [1e-3, cap]): RMSE, RMSE(log), abs rel, sq rel, delta < 1.25^k.
Normals: mean angular error in degrees.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = 255


class Metrics:
    def __init__(self, num_classes: int, depth_cap: float = 10.0):
        self.num_classes, self.cap = num_classes, depth_cap
        self.conf = np.zeros((num_classes, num_classes), np.int64)  # rows: label, cols: prediction
        self.d = dict(n=0, se=0.0, se_log=0.0, abs_rel=0.0, sq_rel=0.0, d1=0, d2=0, d3=0)
        self.ang_sum, self.ang_n = 0.0, 0

    def update_segm(self, logits_or_pred: torch.Tensor, target: torch.Tensor):
        pred = logits_or_pred
        if pred.dim() == 4:
            if pred.shape[-2:] != target.shape[-2:]:
                pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            pred = pred.argmax(1)
        t = target.reshape(-1).numpy()
        p = pred.reshape(-1).numpy()
        m = t != IGNORE
        m &= t < self.num_classes
        self.conf += np.bincount(t[m] * self.num_classes + p[m], minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    def update_depth(self, pred: torch.Tensor, target: torch.Tensor):
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        t = target.reshape(-1).double()
        p = pred.reshape(-1).double().clamp(1e-3, self.cap)
        v = (t > 0) & (t <= self.cap)
        t, p = t[v], p[v]
        if t.numel() == 0:
            return
        d = self.d
        d["n"] += t.numel()
        d["se"] += float(((p - t) ** 2).sum())
        d["se_log"] += float(((p.log() - t.log()) ** 2).sum())
        d["abs_rel"] += float(((p - t).abs() / t).sum())
        d["sq_rel"] += float((((p - t) ** 2) / t).sum())
        ratio = torch.maximum(p / t, t / p)
        for k in (1, 2, 3):
            d[f"d{k}"] += int((ratio < 1.25 ** k).sum())

    def update_normals(self, pred: torch.Tensor, target: torch.Tensor):
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        v = target.abs().sum(1) > 0
        cos = F.cosine_similarity(pred, target, dim=1).clamp(-1, 1)[v]
        self.ang_sum += float(torch.rad2deg(torch.acos(cos)).sum())
        self.ang_n += int(cos.numel())

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
        self.ang_sum += other.ang_sum
        self.ang_n += other.ang_n

    def as_array(self) -> np.ndarray:
        """Flat float64 vector of all accumulators, for an all-reduce across ranks."""
        return np.concatenate([self.conf.ravel().astype(np.float64), np.array([self.d[k] for k in self.d], np.float64),
                               np.array([self.ang_sum, self.ang_n], np.float64)])

    def load_array(self, a: np.ndarray):
        n = self.num_classes ** 2
        self.conf = a[:n].reshape(self.num_classes, self.num_classes).round().astype(np.int64)
        for i, k in enumerate(self.d):
            self.d[k] = a[n + i] if isinstance(self.d[k], float) else int(round(a[n + i]))
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
                       abs_rel=d["abs_rel"] / n, sq_rel=d["sq_rel"] / n,
                       delta1=d["d1"] / n * 100, delta2=d["d2"] / n * 100, delta3=d["d3"] / n * 100)
        if self.ang_n:
            out["normals_mean_angle"] = self.ang_sum / self.ang_n
        return out


HEADLINE = ("miou", "pixel_acc", "rmse", "abs_rel", "delta1", "normals_mean_angle")
