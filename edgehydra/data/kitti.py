"""KITTI: colour-coded KITTI-6 segmentation and uint16 depth (metres = value / 256, 0 = invalid)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError
from . import layout

# KITTI-6 palette of the multi-task-refinenet release; (0, 0, 0) void -> ignore.
PALETTE = {(128, 128, 128): 0, (128, 0, 0): 1, (128, 64, 128): 2, (0, 0, 192): 3, (128, 128, 0): 4, (64, 0, 128): 5}


def decode_segmentation(rgb: np.ndarray, strict: bool = True, name: str = "") -> np.ndarray:
    """(H, W, 3) colour-coded labels -> (H, W) uint8 class ids, 255 for void."""
    key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    out = np.full(rgb.shape[:2], 255, np.uint8)
    known = np.zeros(rgb.shape[:2], bool)
    for (r, g, b), cid in PALETTE.items():
        m = key == ((r << 16) | (g << 8) | b)
        out[m] = cid
        known |= m
    known |= key == 0
    if strict and not known.all():
        bad = rgb[~known][0]
        raise BadInputError(f"{name}: colour {tuple(int(v) for v in bad)} is not in the KITTI-6 palette "
                            f"({(~known).sum()} pixels)")
    return out


def prepare(src: str | Path, out: str | Path, progress=None) -> dict:
    """``src`` holds image_2/*.png, optional depth/*.png (uint16 /256) and segm/*.png (colour-coded)."""
    src, out = Path(src), Path(out)
    imgs = sorted((src / "image_2").glob("*.png")) if (src / "image_2").is_dir() else []
    if not imgs:
        raise BadInputError(f"no KITTI frames: expected {src / 'image_2'}/*.png")
    rows = []
    task = progress.add_task("kitti frames", total=len(imgs)) if progress else None
    for p in imgs:
        name = p.name
        layout.save_png(out / "rgb" / name, layout.read_rgb(p))
        seg = src / "segm" / name
        dep = src / "depth" / name
        mpath = dpath = None
        if seg.is_file():
            layout.save_png(out / "masks" / name, decode_segmentation(layout.read_rgb(seg), name=str(seg)))
            mpath = f"masks/{name}"
        if dep.is_file():
            d = layout.read_depth(dep, 256.0)
            layout.save_png(out / "depth" / name, layout.encode_depth(d, 256.0))
            dpath = f"depth/{name}"
        rows.append(layout.Row(f"rgb/{name}", mpath, dpath))
        if progress:
            progress.advance(task)
    n_val = max(1, len(rows) // 10)
    layout.write_list(out / "train.txt", rows[n_val:] or rows)
    layout.write_list(out / "val.txt", rows[:n_val])
    from .._io import atomic_write_json
    from ..registry import KITTI6_CLASSES

    atomic_write_json(out / "dataset.json", {"name": "kitti", "depth_scale": 256.0, "depth_cap": 80.0,
                                             "num_classes": 6, "class_names": list(KITTI6_CLASSES)})
    return {"train": len(rows) - n_val, "val": n_val, "out": str(out)}
