"""NYUDv2: the official labelled .mat (MATLAB v7.3 = HDF5) to the shared layout.

``images`` (1449, 3, 640, 480) uint8, ``depths`` (1449, 640, 480) float metres, ``labels``
(1449, 640, 480) uint16 with 894 classes (0 = unlabelled): transposed to H x W, labels mapped
to the 40 classes of Gupta et al. with classMapping40.mat (0-based, 255 = unlabelled), split
with splits.mat (795 train / 654 test, 1-based indices).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from . import layout


def _asset(name: str) -> Path:
    return Path(str(resources.files("edgehydra") / "assets" / name))


def class_mapping_40() -> np.ndarray:
    """Lookup table of 895 entries: NYUDv2 label (0..894) -> 0-based 40-class id, 255 for unlabelled."""
    import scipy.io as sio

    m = sio.loadmat(_asset("classMapping40.mat"))["mapClass"].ravel().astype(np.int64)  # 1..40
    lut = np.full(895, 255, np.uint8)
    lut[1:] = (m - 1).astype(np.uint8)
    return lut


def splits() -> tuple[np.ndarray, np.ndarray]:
    import scipy.io as sio

    s = sio.loadmat(_asset("splits.mat"))
    return s["trainNdxs"].ravel().astype(int) - 1, s["testNdxs"].ravel().astype(int) - 1


def prepare(mat: str | Path, out: str | Path, progress=None) -> dict:
    import h5py

    mat, out = Path(mat), Path(out)
    if not mat.is_file():
        raise BadInputError(f"NYUDv2 .mat not found: {mat}")
    try:
        f = h5py.File(mat, "r")
    except OSError as e:
        raise BadInputError(f"{mat} is not a MATLAB v7.3 (HDF5) file: {e}") from None
    with f:
        for k in ("images", "depths", "labels"):
            if k not in f:
                raise BadInputError(f"{mat}: dataset {k!r} missing (has {sorted(f.keys())}); is this nyu_depth_v2_labeled.mat?")
        images, depths, labels = f["images"], f["depths"], f["labels"]
        n = images.shape[0]
        if images.ndim != 4 or images.shape[1] != 3 or depths.shape[0] != n or labels.shape[0] != n:
            raise BadInputError(f"{mat}: unexpected shapes images {images.shape}, depths {depths.shape}, labels {labels.shape}")
        lut = class_mapping_40()
        train_idx, test_idx = splits()
        if n != 1449:  # a subset (tests, or a user's own crop): keep the indices that exist
            train_idx, test_idx = train_idx[train_idx < n], test_idx[test_idx < n]
            if len(train_idx) == 0 and len(test_idx) == 0:
                train_idx = np.arange(n)
        names = {}
        total = len(train_idx) + len(test_idx)
        task = progress.add_task("nyud frames", total=total) if progress else None
        for idx in sorted(set(train_idx.tolist()) | set(test_idx.tolist())):
            name = f"{idx + 1:06d}.png"
            rgb = np.asarray(images[idx]).transpose(2, 1, 0)  # (3, W, H) -> (H, W, 3)
            depth = np.asarray(depths[idx], dtype=np.float32).T
            lab = np.asarray(labels[idx]).T.astype(np.int64)
            if lab.max(initial=0) > 894:
                raise BadInputError(f"{mat}: frame {idx + 1} has label {lab.max()} > 894")
            if not np.isfinite(depth).all():
                raise BadInputError(f"{mat}: frame {idx + 1} depth contains NaN or Inf")
            layout.save_png(out / "rgb" / name, np.ascontiguousarray(rgb, dtype=np.uint8))
            layout.save_png(out / "masks" / name, lut[lab])
            layout.save_png(out / "depth" / name, layout.encode_depth(depth, layout.DEPTH_SCALE["nyud"]))
            names[idx] = name
            if progress:
                progress.advance(task)
    rows = lambda idxs: [layout.Row(f"rgb/{names[i]}", f"masks/{names[i]}", f"depth/{names[i]}") for i in idxs]  # noqa: E731
    layout.write_list(out / "train.txt", rows(train_idx))
    layout.write_list(out / "val.txt", rows(test_idx))
    from .._io import atomic_write_json
    from ..registry import NYUD40_CLASSES

    atomic_write_json(out / "dataset.json", {"name": "nyud", "depth_scale": 5000.0, "depth_cap": 10.0,
                                             "num_classes": 40, "class_names": list(NYUD40_CLASSES)})
    return {"train": len(train_idx), "val": len(test_idx), "out": str(out)}
