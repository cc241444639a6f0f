"""Data: synthroom (embedded default), the shared folder layout, NYUDv2/KITTI preparation.

``open_dataset("synthroom" | "nyud" | "kitti" | PATH, split)`` is the one entry point the
commands use.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import BadInputError
from .datasets import FolderDataset, PadTo, PadToMultiple, Resize, SynthRoom, TrainAugment, collate_by_size  # noqa: F401

# synthroom's validation frames come from another seed, so they are never training frames.
SYNTH_VAL_SEED_OFFSET = 1_000_003
_PREPARE = {
    "nyud": "edgehydra data prepare nyud --mat nyu_depth_v2_labeled.mat --out {dir}",
    "kitti": "edgehydra data prepare kitti --src KITTI_FOLDER --out {dir}",
}


def data_root() -> Path:
    return Path(os.environ.get("EDGEHYDRA_DATA", "data"))


def open_dataset(name: str, split: str = "train", *, size=(240, 320), frames: int | None = None, seed: int = 0,
                 transform=None, normals_mask: str = "depth"):
    """``name`` is synthroom, nyud, kitti, or a path to a folder in the shared layout."""
    if split not in ("train", "val"):
        raise BadInputError(f"split {split!r}: use train or val")
    if name == "synthroom":
        n = frames or (1000 if split == "train" else 100)
        return SynthRoom(n, size=size, seed=seed if split == "train" else seed + SYNTH_VAL_SEED_OFFSET, transform=transform)
    if name in _PREPARE:
        root = data_root() / name
        if not (root / f"{split}.txt").is_file():
            raise BadInputError(f"dataset {name!r} not found: looked for {root / (split + '.txt')} "
                                f"(set EDGEHYDRA_DATA to its parent folder, or prepare it: {_PREPARE[name].format(dir=root)})")
        return FolderDataset(root, split, transform=transform, normals_mask=normals_mask)
    p = Path(name)
    if p.is_dir():
        return FolderDataset(p, split, transform=transform, normals_mask=normals_mask)
    raise BadInputError(f"--dataset {name!r}: not synthroom, nyud, kitti, or an existing folder")
