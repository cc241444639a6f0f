"""KITTI: colour-coded KITTI-6 segmentation and uint16 depth (metres = value / scale, 0 = invalid).

Frames differ in size (1242x375, 1241x376, 1224x370, ...): evaluation runs each at its native
resolution, padded to a multiple of 32 and cropped back (dataset.json ``eval_resolution: native``),
never stretched to one size.
"""
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


# Depth PNG scales in use: 256 is the official KITTI depth benchmark's (metres = value / 256); the authors' KITTI
# notebook reads theirs at 800 (multi-task-refinenet src/notebooks/ExpKITTI_joint.ipynb: ``DEPTH_COEFF = 800. # to
# convert into metres``, ``MAX_DEPTH = 80.``). A folder records its own.
DEPTH_SCALES = (256.0, 800.0)
# A frame whose largest value reads as more than this at the chosen scale is not at that scale: KITTI's
# LiDAR returns end near 80-90 m (the benchmark caps at 80 m), 120 m leaves room and still catches a 800-scaled
# PNG read at 256 (its 80 m reads as 250 m).
MAX_PLAUSIBLE_M = 120.0


# camera folder of a KITTI raw drive -> the source folders its frames and labels sit in (left: image_2, depth,
# segm as before; right: image_3, depth_3, segm_3) and the suffix that keeps a right frame's name apart
CAMERAS = {"image_02": ("image_2", "depth", "segm", ""), "image_03": ("image_3", "depth_3", "segm_3", "_image_3")}
SIDES = {"l": "image_02", "r": "image_03"}


def _flat(drive: str, frame: str, camera: str = "image_02") -> str:
    """The flattened file a raw-drive frame is prepared from: <drive>_<frame>.png (right camera: +_image_3)."""
    return f"{Path(drive).name}_{int(frame):010d}{CAMERAS[camera][3]}.png"


def _read_names(path: Path) -> list[str]:
    """Frame file names from a split list, in any of the three formats in use:

    - KITTI-6: one name per line, ``000123`` or ``000123.png``;
    - Eigen / monodepth2: ``2011_09_26/2011_09_26_drive_0002_sync 0000000069 l``: drive, frame, side (l: the
      left colour camera image_02, r: the right, image_03); the frame may be unpadded (``473 r``);
    - Godard / monodepth: ``2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.jpg <right path>``:
      a stereo pair; the first path names the frame (the Eigen test protocol scores the left view of each pair).

    A raw-drive frame is named as flattened in the source folder: ``image_2/2011_09_26_drive_0002_sync_0000000069.png``,
    a right-camera one ``image_3/..._image_3.png`` (``CAMERAS``)."""
    if not Path(path).is_file():
        raise BadInputError(f"split list not found: {path}")
    names = []
    for k, line in enumerate(Path(path).read_text().splitlines(), 1):
        tok = line.split()
        if not tok or line.startswith("#"):
            continue
        parts = Path(tok[0]).parts
        if len(tok) >= 2 and tok[1].isdigit():  # Eigen: drive folder, frame index (, side)
            side = tok[2] if len(tok) > 2 else "l"
            if side not in SIDES:
                raise BadInputError(f"{path}:{k}: side {side!r}: l (left camera, image_02) or r (right, image_03)")
            names.append(_flat(tok[0], tok[1], SIDES[side]))
        elif len(parts) >= 4 and parts[-3] in CAMERAS and parts[-2] == "data":  # Godard: drive/image_0X/data/frame.jpg
            names.append(_flat(parts[-4], Path(parts[-1]).stem, parts[-3]))
        else:
            n = Path(tok[0]).name
            names.append(n if n.endswith(".png") else n + ".png")
    if not names:
        raise BadInputError(f"{path}: split list has no names")
    return names


def _check_scale(maxes: dict, src: Path, depth_scale: float) -> None:
    """Refuse a folder whose depth PNGs are not all at ``depth_scale``. Read at 256 a 800-scaled frame goes
    past MAX_PLAUSIBLE_M. Read at 800 a 256-scaled frame shrinks by 800/256 = 3.1: it is refused when its
    farthest return is that ratio (within 25 %) below the folder's typical frame, and scaled back it would
    be typical again. A close-range frame (a wall ahead) is short by some other factor and passes."""
    far = {n: m for n, m in maxes.items() if m > MAX_PLAUSIBLE_M}
    if far:
        n, m = next(iter(far.items()))
        raise BadInputError(f"{src / 'depth' / n}: reads as {m:.0f} m at --depth-scale {depth_scale:g} (KITTI ends near "
                            f"80 m): this folder uses another scale, or mixes scales")
    if len(maxes) < 3:
        return
    typical = float(np.percentile(list(maxes.values()), 75))  # a typical far frame; close-range ones sit below
    ratio = max(DEPTH_SCALES) / min(DEPTH_SCALES)
    for n, m in maxes.items():
        if depth_scale == max(DEPTH_SCALES) and m > 0 and abs(m * ratio / typical - 1) < 0.25:
            raise BadInputError(f"{src / 'depth' / n}: its farthest return reads {m:.1f} m at --depth-scale "
                                f"{depth_scale:g}, {ratio:.2f}x below the folder's typical {typical:.1f} m (the "
                                f"{max(DEPTH_SCALES):g}/{min(DEPTH_SCALES):g} ratio): the folder mixes depth scales")


def prepare(src: str | Path, out: str | Path, progress=None, depth_scale: float = 256.0,
            val_list: Path | None = None, train_list: Path | None = None) -> dict:
    """``src`` holds image_2/*.png, optional depth/*.png (uint16, metres x ``depth_scale``) and segm/*.png
    (colour-coded). The split: ``val_list`` (and ``train_list``) name the frames (one per line, as in the
    official KITTI-6 / Eigen lists); without them the first 10 % of sorted names are the validation split,
    and dataset.json says so. Every depth PNG is checked against the scale before anything is written."""
    src, out = Path(src), Path(out)
    if depth_scale not in DEPTH_SCALES:
        raise BadInputError(f"--depth-scale {depth_scale:g}: choose one of {', '.join(f'{v:g}' for v in DEPTH_SCALES)}")
    imgs = sorted((src / "image_2").glob("*.png")) if (src / "image_2").is_dir() else []
    if not imgs:
        raise BadInputError(f"no KITTI frames: expected {src / 'image_2'}/*.png")
    # right-camera frames (image_3/, labels in depth_3/ and segm_3/) under their own names, beside the left ones
    right = sorted((src / "image_3").glob("*.png")) if (src / "image_3").is_dir() else []
    labels = {p.name: (src / "depth" / p.name, src / "segm" / p.name) for p in imgs}
    for p in right:
        n = p.stem + CAMERAS["image_03"][3] + ".png"
        labels[n] = (src / "depth_3" / p.name, src / "segm_3" / p.name)
    by_name = {p.name: p for p in imgs}
    by_name.update({p.stem + CAMERAS["image_03"][3] + ".png": p for p in right})
    if val_list is not None:
        val_names = _read_names(val_list)
        unknown = [n for n in val_names if n not in by_name]
        if unknown:
            raise BadInputError(f"{val_list}: {len(unknown)} frame(s) not in {src / 'image_2'} (or image_3 for the right "
                                f"camera), e.g. {unknown[0]}")
        train_names = _read_names(train_list) if train_list else [n for n in by_name if n not in set(val_names)]
        split = {"val": str(val_list), "train": str(train_list) if train_list else "every other frame"}
    else:
        every = sorted(by_name)  # both cameras' frames
        n_val = max(1, len(every) // 10)
        val_names, train_names = every[:n_val], every[n_val:] or every[:1]
        split = {"val": "first 10 % of sorted names (fallback: no split list given; pass --val-list for the "
                        "official KITTI-6 or Eigen split)", "train": "the rest"}
    # scale check first: a folder that mixes scales is refused before a file is written
    maxes = {n: float(layout.read_depth(labels[n][0], depth_scale).max(initial=0)) for n in by_name
             if labels[n][0].is_file()}
    _check_scale(maxes, src, depth_scale)
    rows = {}
    task = progress.add_task("kitti frames", total=len(by_name)) if progress else None
    for name, p in by_name.items():
        layout.save_png(out / "rgb" / name, layout.read_rgb(p))
        dep, seg = labels[name]
        mpath = dpath = None
        if seg.is_file():
            layout.save_png(out / "masks" / name, decode_segmentation(layout.read_rgb(seg), name=str(seg)))
            mpath = f"masks/{name}"
        if dep.is_file():
            d = layout.read_depth(dep, depth_scale)
            layout.save_png(out / "depth" / name, layout.encode_depth(d, depth_scale))
            dpath = f"depth/{name}"
        rows[name] = layout.Row(f"rgb/{name}", mpath, dpath)
        if progress:
            progress.advance(task)
    layout.write_list(out / "train.txt", [rows[n] for n in train_names if n in rows])
    layout.write_list(out / "val.txt", [rows[n] for n in val_names])
    from .._io import atomic_write_json
    from ..registry import KITTI6_CLASSES

    atomic_write_json(out / "dataset.json", {"name": "kitti", "depth_scale": depth_scale, "depth_cap": 80.0,
                                             "num_classes": 6, "class_names": list(KITTI6_CLASSES), "split": split,
                                             "eval_resolution": "native"})
    return {"train": len(train_names), "val": len(val_names), "out": str(out), "split": split}
