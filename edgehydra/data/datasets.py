"""Datasets: synthroom in memory, and any folder in the shared layout (NYUDv2, KITTI, synthroom on disk).

Every sample is a dict of tensors with the same keys whatever the source, so one training loop
serves all: ``image`` (3,H,W) normalised float; ``segm`` (H,W) long with 255 = ignore; ``depth``
(1,H,W) metres with 0 = invalid; ``normals`` (3,H,W); and ``has_segm`` / ``has_depth`` /
``has_normals`` flags (0 for a modality the row lacks, so its loss term contributes nothing).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import BadInputError
from ..model import IMAGENET_MEAN, IMAGENET_STD
from . import layout
from .synthroom import SynthConfig, generate_frame

IGNORE = 255
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def to_sample(rgb: np.ndarray, segm=None, depth=None, normals=None, name: str = "") -> dict:
    h, w = rgb.shape[:2]
    for what, arr in (("mask", segm), ("depth", depth), ("normals", normals)):
        if arr is not None and arr.shape[:2] != (h, w):
            raise BadInputError(f"{name}: rgb is {h}x{w} but {what} is {arr.shape[0]}x{arr.shape[1]}")
    if depth is not None and not np.isfinite(depth).all():
        raise BadInputError(f"{name}: depth contains NaN or Inf")
    img = (torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0 - _MEAN) / _STD
    return {
        "image": img,
        "segm": torch.from_numpy(segm.astype(np.int64)) if segm is not None else torch.full((h, w), IGNORE, dtype=torch.long),
        "depth": torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None] if depth is not None else torch.zeros(1, h, w),
        "normals": torch.from_numpy(np.ascontiguousarray(normals, dtype=np.float32)).permute(2, 0, 1) if normals is not None else torch.zeros(3, h, w),
        "has_segm": torch.tensor(float(segm is not None)),
        "has_depth": torch.tensor(float(depth is not None)),
        "has_normals": torch.tensor(float(normals is not None)),
    }


class SynthRoom(Dataset):
    """synthroom frames generated on the fly (and cached), deterministic per (seed, index)."""

    name = "synthroom"
    depth_cap = 10.0

    def __init__(self, frames: int, size=(240, 320), seed: int = 0, noise: bool = True, cache: bool = True,
                 transform=None):
        if frames < 1:
            raise BadInputError(f"synthroom: frames must be >= 1, got {frames}")
        self.frames, self.seed, self.cfg = frames, seed, SynthConfig(size=tuple(size), noise=noise)
        self.transform, self._cache = transform, ({} if cache else None)
        self.num_classes = 40

    def __len__(self):
        return self.frames

    def raw(self, i: int) -> dict:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        f = generate_frame(self.seed, i, self.cfg)
        out = dict(rgb=f["rgb"], segm=f["segm"], depth=f["depth"], normals=f["normals"].astype(np.float16))
        if self._cache is not None:
            self._cache[i] = out
        return out

    def __getitem__(self, i):
        if not 0 <= i < self.frames:
            raise IndexError(i)
        f = self.raw(i)
        s = to_sample(f["rgb"], f["segm"], f["depth"], f["normals"].astype(np.float32), name=f"synthroom[{i}]")
        return self.transform(s) if self.transform else s

    def frame_ids(self) -> list[str]:
        return [f"synthroom:{self.seed}:{i}" for i in range(self.frames)]

    def frame_key(self, i: int) -> tuple:
        """What frame ``i`` is a pure function of (generate_frame's arguments): equal keys, equal frames."""
        return ("synthroom", self.seed, i, self.cfg)


class FolderDataset(Dataset):
    """A folder in the shared layout, read through one list file.

    ``normals_mask``: which normals pixels are invalid (the zero vector, which loss and metrics skip). "depth"
    (default), the authors': pixels without depth (DenseTorch dev data/datasets.py: ``depth_ignore_region =
    depth == depth_ignore_index; normals[depth_ignore_region] = normals_ignore_index``), grey pixels with depth
    kept as they decode; a frame without depth falls back to "grey": grey (127, 127, 127) pixels invalid."""

    def __init__(self, root: str | Path, split: str = "train", transform=None, check_files: bool = True,
                 normals_mask: str = "depth"):
        if normals_mask not in layout.NORMALS_MASKS:
            raise BadInputError(f"normals mask {normals_mask!r}: choose one of {', '.join(layout.NORMALS_MASKS)}")
        self.normals_mask = normals_mask
        self.root = Path(root)
        if not self.root.is_dir():
            raise BadInputError(f"dataset folder not found: {self.root}")
        self.list_path = self.root / f"{split}.txt"
        self.rows = layout.parse_list(self.list_path)
        self.info = layout.dataset_info(self.root)
        self.name, self.depth_cap, self.num_classes = self.info.name, self.info.depth_cap, self.info.num_classes
        self.transform = transform
        if check_files:
            missing = [p for r in self.rows for p in (r.rgb, r.masks, r.depth, r.normals) if p and not (self.root / p).is_file()]
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                raise BadInputError(f"{self.list_path} names {len(missing)} missing files: {', '.join(missing[:3])}{more}")

    def __len__(self):
        return len(self.rows)

    def raw(self, i: int) -> dict:
        r = self.rows[i]
        p = self.root
        depth = layout.read_depth(p / r.depth, self.info.depth_scale) if r.depth else None
        by_depth = self.normals_mask == "depth" and depth is not None
        normals = layout.read_normals(p / r.normals, mask="depth" if by_depth else "grey") if r.normals else None
        if normals is not None and by_depth:
            if normals.shape[:2] != depth.shape[:2]:
                raise BadInputError(f"{p / r.normals} is {normals.shape[0]}x{normals.shape[1]}, its depth "
                                    f"{depth.shape[0]}x{depth.shape[1]}")
            normals[depth <= 0] = 0.0  # the authors' mask: normals are as valid as the depth they came from
        return dict(rgb=layout.read_rgb(p / r.rgb), segm=layout.read_mask(p / r.masks) if r.masks else None,
                    depth=depth, normals=normals)

    def __getitem__(self, i):
        f = self.raw(i)
        s = to_sample(f["rgb"], f["segm"], f["depth"], f["normals"], name=str(self.root / self.rows[i].rgb))
        return self.transform(s) if self.transform else s

    def frame_ids(self) -> list[str]:
        return [r.rgb for r in self.rows]


# --------------------------------------------------------------------------------- transforms
class TrainAugment:
    """Random scale, crop (padding with ignore / invalid depth), horizontal mirror (normals' x negated).

    Depth is divided by the scale factor: an image enlarged f times shows the scene as a camera with the same
    intrinsics sees it from f times closer (an object of width X at depth Z spans fx X / Z pixels; f times that
    span is depth Z / f). The authors do the same (DenseTorch data/utils.py ResizeAndScale:
    ``scale_mult = (1.0 / scale) if "depth" in msk_key``; examples/src/augmentations.py: "Depth is inversely
    proportional to the scale factor"). Normals are directions and keep their values.
    """

    def __init__(self, crop: tuple[int, int], scale=(0.75, 1.5), mirror: bool = True, seed: int = 0):
        self.crop, self.scale, self.mirror = tuple(crop), scale, mirror
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, s: dict) -> dict:
        g = self.gen
        h, w = s["image"].shape[1:]
        f = float(torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=g))
        nh, nw = max(8, round(h * f)), max(8, round(w * f))
        img = F.interpolate(s["image"][None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        near = lambda t: F.interpolate(t[None].float(), size=(nh, nw), mode="nearest")[0]  # noqa: E731
        segm = near(s["segm"][None])[0].long()
        depth, normals = near(s["depth"]) / f, near(s["normals"])  # invalid depth (0) stays 0
        ch, cw = self.crop
        ph, pw = max(0, ch - nh), max(0, cw - nw)
        if ph or pw:
            img = F.pad(img, (0, pw, 0, ph), value=0.0)
            segm = F.pad(segm, (0, pw, 0, ph), value=IGNORE)
            depth = F.pad(depth, (0, pw, 0, ph), value=0.0)
            normals = F.pad(normals, (0, pw, 0, ph), value=0.0)
        H, W = img.shape[1:]
        y = int(torch.randint(0, H - ch + 1, (1,), generator=g))
        x = int(torch.randint(0, W - cw + 1, (1,), generator=g))
        img, segm = img[:, y:y + ch, x:x + cw], segm[y:y + ch, x:x + cw]
        depth, normals = depth[:, y:y + ch, x:x + cw], normals[:, y:y + ch, x:x + cw]
        if self.mirror and bool(torch.rand(1, generator=g) < 0.5):
            img, segm, depth, normals = img.flip(-1), segm.flip(-1), depth.flip(-1), normals.flip(-1).clone()
            normals[0] = -normals[0]
        return {**s, "image": img.contiguous(), "segm": segm.contiguous(), "depth": depth.contiguous(),
                "normals": normals.contiguous()}


class Resize:
    """Resize the input image to the model's size; labels stay at their native size for metrics."""

    def __init__(self, size):
        self.size = tuple(size)

    def __call__(self, s):
        if tuple(s["image"].shape[1:]) == self.size:
            return s
        img = F.interpolate(s["image"][None], size=self.size, mode="bilinear", align_corners=False)[0]
        return {**s, "image": img}


class PadToMultiple:
    """Native-resolution evaluation: pad the image (bottom and right, with 0 = the normalised mean colour) to a
    multiple of ``m`` (the encoder's stride, 32); labels stay unpadded, and the evaluation crops the output back
    to them. Nothing is stretched: frames of different sizes keep their own geometry."""

    def __init__(self, m: int = 32):
        self.m = int(m)

    def __call__(self, s):
        h, w = s["image"].shape[1:]
        ph, pw = (-h) % self.m, (-w) % self.m
        if ph == 0 and pw == 0:
            return s
        return {**s, "image": F.pad(s["image"], (0, pw, 0, ph), value=0.0)}


class PadTo:
    """Native-resolution evaluation of a program or artifact with one input size: pad each frame (bottom and right,
    with 0 = the normalised mean colour) to that size; labels stay unpadded and the evaluation crops the output
    back to them. A frame larger than the input is refused: it cannot be scored without stretching it."""

    def __init__(self, size):
        self.size = tuple(size)

    def __call__(self, s):
        h, w = s["image"].shape[1:]
        H, W = self.size
        if h > H or w > W:
            raise BadInputError(f"{s.get('name', 'a frame')} is {h}x{w}, larger than the {H}x{W} input it is scored at "
                                f"natively: quantise and export at a size that holds every frame (KITTI: 384x1248)")
        if (h, w) == (H, W):
            return s
        return {**s, "image": F.pad(s["image"], (0, W - w, 0, H - h), value=0.0)}


def collate_by_size(samples: list[dict]) -> list[dict]:
    """Batches whose frames differ in size (real KITTI): one stacked sub-batch per distinct size, in order."""
    from torch.utils.data import default_collate

    groups: dict = {}
    for s in samples:
        groups.setdefault((tuple(s["image"].shape), tuple(s["segm"].shape)), []).append(s)
    return [default_collate(g) for g in groups.values()]


def list_hash(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
