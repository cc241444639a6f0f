"""Semantic point clouds from a depth map and labels, and how two clouds differ in robot units.

- ``organized_cloud``: the (H, W) cloud a robot receives (PointCloud2 layout of robot.ros2), NaN where
  there is no depth;
- ``write_ply``: labelled PLY (plyfile), valid points only;
- ``chamfer_m``: symmetric Chamfer distance (mean nearest-neighbour distance both ways, metres);
- ``label_agreement_3d``: share of one cloud's points whose nearest neighbour in the other, within a radius,
  has the same label;
- ``depth_error_bands``: depth error by distance band of the reference (0-2, 2-5, 5-10 m indoors; the KITTI
  ranges outdoors), since a robot cares about the error at the distance it brakes at, not the mean.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgehydra.camera import Intrinsics, backproject

from .ros2 import CLOUD_DTYPE

INDOOR_BANDS_M = ((0.0, 2.0), (2.0, 5.0), (5.0, 10.0))
KITTI_BANDS_M = ((0.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, 80.0))
# Clouds are compared on at most this many points (uniformly strided): a 240x320 frame has 77k; the KD-tree
# query of 20k points both ways takes ~30 ms and moves the Chamfer mean by under 1 % (nearest neighbours of a
# dense surface stay within a pixel's footprint).
MAX_POINTS = 20_000


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """PCL's packed colour: 0x00RRGGBB in a uint32, reinterpreted as float32."""
    rgb = rgb.astype(np.uint32)
    return ((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]).view(np.float32)


def organized_cloud(depth: np.ndarray, rgb: np.ndarray, labels: np.ndarray, confidence: np.ndarray,
                    intr: Intrinsics) -> np.ndarray:
    pts = backproject(depth, intr).astype(np.float32)
    cloud = np.empty(depth.shape, CLOUD_DTYPE)
    cloud["x"], cloud["y"], cloud["z"] = pts[..., 0], pts[..., 1], pts[..., 2]
    cloud["rgb"] = pack_rgb(rgb)
    cloud["label"] = labels.astype(np.uint32)
    cloud["confidence"] = confidence.astype(np.float32)
    return cloud


def valid_points(cloud: np.ndarray) -> np.ndarray:
    flat = cloud.reshape(-1)
    return flat[np.isfinite(flat["z"])]


def write_ply(path: Path, cloud: np.ndarray, class_names=()) -> Path:
    """Binary PLY of the valid points: x y z, red green blue, label, confidence; class names as comments."""
    from plyfile import PlyData, PlyElement  # robot extra

    pts = valid_points(cloud)
    rgb = pts["rgb"].view(np.uint32)
    v = np.empty(len(pts), [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                            ("label", "u1"), ("confidence", "f4")])
    v["x"], v["y"], v["z"] = pts["x"], pts["y"], pts["z"]
    v["red"], v["green"], v["blue"] = (rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255
    v["label"], v["confidence"] = pts["label"], pts["confidence"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    comments = [f"label {i} {n}" for i, n in enumerate(class_names)]
    PlyData([PlyElement.describe(v, "vertex")], comments=comments).write(str(tmp))
    tmp.replace(path)
    return path


def _subsample(p: np.ndarray, n: int = MAX_POINTS) -> np.ndarray:
    step = max(1, len(p) // n)
    return p[::step]


def xyz(cloud_or_points: np.ndarray) -> np.ndarray:
    if cloud_or_points.dtype.names:
        pts = valid_points(cloud_or_points)
        return np.stack([pts["x"], pts["y"], pts["z"]], -1).astype(np.float64)
    p = cloud_or_points.reshape(-1, 3)
    return p[np.isfinite(p).all(1)].astype(np.float64)


def chamfer_m(a: np.ndarray, b: np.ndarray) -> float | None:
    """Symmetric Chamfer distance in metres between two clouds (organized clouds or (N, 3) points)."""
    from scipy.spatial import cKDTree

    pa, pb = _subsample(xyz(a)), _subsample(xyz(b))
    if not len(pa) or not len(pb):
        return None
    da, _ = cKDTree(pb).query(pa)
    db, _ = cKDTree(pa).query(pb)
    return float((da.mean() + db.mean()) / 2)


def label_agreement_3d(a: np.ndarray, b: np.ndarray, radius_m: float = 0.05) -> float | None:
    """Share of cloud a's points (subsampled) whose nearest point of cloud b within ``radius_m`` has a's label;
    points with no neighbour that close are left out."""
    from scipy.spatial import cKDTree

    pa, pb = _subsample(valid_points(a)), valid_points(b)
    if not len(pa) or not len(pb):
        return None
    tree = cKDTree(np.stack([pb["x"], pb["y"], pb["z"]], -1))
    d, j = tree.query(np.stack([pa["x"], pa["y"], pa["z"]], -1), distance_upper_bound=radius_m)
    near = np.isfinite(d)
    if not near.any():
        return None
    return float((pa["label"][near] == pb["label"][j[near]]).mean())


def depth_error_bands(pred: np.ndarray, ref: np.ndarray, bands=INDOOR_BANDS_M) -> list[dict]:
    """Per band of the reference depth: pixels, mean absolute error and RMSE in metres."""
    ok = np.isfinite(ref) & (ref > 0) & np.isfinite(pred)
    out = []
    for lo, hi in bands:
        m = ok & (ref >= lo) & (ref < hi)
        n = int(m.sum())
        e = (pred[m] - ref[m]).astype(np.float64)
        out.append({"band_m": [lo, hi], "pixels": n, "mae_m": float(np.abs(e).mean()) if n else None,
                    "rmse_m": float(np.sqrt((e ** 2).mean())) if n else None})
    return out
