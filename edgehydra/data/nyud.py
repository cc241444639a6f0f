"""NYUDv2: the official labelled .mat (MATLAB v7.3 = HDF5) to the shared layout.

``images`` (1449, 3, 640, 480) uint8, ``depths`` (1449, 640, 480) float metres, ``labels``
(1449, 640, 480) uint16 with 894 classes (0 = unlabelled): transposed to H x W, labels mapped
to the 40 classes of Gupta et al. with classMapping40.mat (0-based, 255 = unlabelled), split
with splits.mat (795 train / 654 test, 1-based indices).

Depth: ``depths`` is hole-filled (Levin et al.'s colorization in-painting, no invalid pixel);
``rawDepths`` is the Kinect depth projected onto the RGB frame, 0 where the sensor had no return.
The authors score depth on the raw map: their ground-truth PNGs of test frames 433 and 464 are
34 % and 37 % zeros (../shared/samples/nyud/depth_gt_*.png). So ``depth/`` holds ``rawDepths`` and
``eval`` masks its zeros; ``--train-depth filled`` writes the in-painted map for the training rows
(``depth_filled/``), and dataset.json records which map each split uses.
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


DEPTH_SOURCES = ("raw", "filled")
DEPTH_DIR = {"raw": "depth", "filled": "depth_filled"}
_DATASET = {"raw": "rawDepths", "filled": "depths"}


def prepare(mat: str | Path, out: str | Path, progress=None, train_depth: str = "raw", eval_depth: str = "raw") -> dict:
    """``train_depth`` / ``eval_depth``: 'raw' (rawDepths, 0 = invalid; the authors' evaluation ground truth)
    or 'filled' (the in-painted depths)."""
    import h5py

    for what, v in (("train_depth", train_depth), ("eval_depth", eval_depth)):
        if v not in DEPTH_SOURCES:
            raise BadInputError(f"{what}={v!r}: choose one of {', '.join(DEPTH_SOURCES)}")
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
        needs = {_DATASET[train_depth], _DATASET[eval_depth]}
        if "rawDepths" in needs and "rawDepths" not in f:
            raise BadInputError(
                f"{mat} has no 'rawDepths': the authors score depth on the raw Kinect map (invalid pixels 0, about a "
                "third of a frame), so evaluating on the in-painted 'depths' scores other pixels than the paper's 0.56 m; "
                "pass --eval-depth filled --train-depth filled to accept that (recorded in dataset.json)")
        images, depths, labels = f["images"], f["depths"], f["labels"]
        raw = f["rawDepths"] if "rawDepths" in f else None
        n = images.shape[0]
        if images.ndim != 4 or images.shape[1] != 3 or depths.shape[0] != n or labels.shape[0] != n:
            raise BadInputError(f"{mat}: unexpected shapes images {images.shape}, depths {depths.shape}, labels {labels.shape}")
        if raw is not None and raw.shape != depths.shape:
            raise BadInputError(f"{mat}: rawDepths {raw.shape} and depths {depths.shape} differ in shape")
        lut = class_mapping_40()
        train_idx, test_idx = splits()
        if n != 1449:  # a subset (tests, or a user's own crop): keep the indices that exist
            train_idx, test_idx = train_idx[train_idx < n], test_idx[test_idx < n]
            if len(train_idx) == 0 and len(test_idx) == 0:
                train_idx = np.arange(n)
        names = {}
        train_set = set(train_idx.tolist())
        total = len(train_idx) + len(test_idx)
        task = progress.add_task("nyud frames", total=total) if progress else None
        for idx in sorted(set(train_idx.tolist()) | set(test_idx.tolist())):
            name = f"{idx + 1:06d}.png"
            rgb = np.asarray(images[idx]).transpose(2, 1, 0)  # (3, W, H) -> (H, W, 3)
            src = {"raw": raw, "filled": depths}
            kind = train_depth if idx in train_set else eval_depth
            depth = np.asarray(src[kind][idx], dtype=np.float32).T
            lab = np.asarray(labels[idx]).T.astype(np.int64)
            if lab.max(initial=0) > 894:
                raise BadInputError(f"{mat}: frame {idx + 1} has label {lab.max()} > 894")
            if not np.isfinite(depth).all():
                raise BadInputError(f"{mat}: frame {idx + 1} {_DATASET[kind]} contains NaN or Inf")
            layout.save_png(out / "rgb" / name, np.ascontiguousarray(rgb, dtype=np.uint8))
            layout.save_png(out / "masks" / name, lut[lab])
            layout.save_png(out / DEPTH_DIR[kind] / name, layout.encode_depth(depth, layout.DEPTH_SCALE["nyud"]))
            names[idx] = name
            if progress:
                progress.advance(task)
    rows = lambda idxs, kind: [layout.Row(f"rgb/{names[i]}", f"masks/{names[i]}", f"{DEPTH_DIR[kind]}/{names[i]}")  # noqa: E731
                               for i in idxs]
    layout.write_list(out / "train.txt", rows(train_idx, train_depth))
    layout.write_list(out / "val.txt", rows(test_idx, eval_depth))
    from .._io import atomic_write_json
    from ..registry import NYUD40_CLASSES

    depth_note = {"train": f"{_DATASET[train_depth]} ({'0 = invalid' if train_depth == 'raw' else 'in-painted'})",
                  "val": f"{_DATASET[eval_depth]} ({'0 = invalid, masked in eval' if eval_depth == 'raw' else 'in-painted: not the paper protocol'})"}
    atomic_write_json(out / "dataset.json", {"name": "nyud", "depth_scale": 5000.0, "depth_cap": 10.0,
                                             "num_classes": 40, "class_names": list(NYUD40_CLASSES),
                                             "depth_source": depth_note})
    return {"train": len(train_idx), "val": len(test_idx), "out": str(out), "depth_source": depth_note}
