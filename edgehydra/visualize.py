"""Prediction panels: input | segmentation | depth (metre colour bar), with ground truth where found."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._io import save_figure
from .data import layout
from .model import HydraConfig, normalize


def palette(n: int = 256) -> np.ndarray:
    """Bit-interleaved label colours (the PASCAL VOC scheme), class c -> colour of c + 1, 255 -> black."""
    pal = np.zeros((256, 3), np.uint8)
    for c in range(255):
        lab, r, g, b = c + 1, 0, 0, 0
        for j in range(8):
            r |= ((lab >> 0) & 1) << (7 - j)
            g |= ((lab >> 1) & 1) << (7 - j)
            b |= ((lab >> 2) & 1) << (7 - j)
            lab >>= 3
        pal[c] = (r, g, b)
    pal[255] = 0
    return pal


def colorize_segm(ids: np.ndarray) -> np.ndarray:
    return palette()[ids.astype(np.uint8)]


def find_ground_truth(image: Path, num_classes: int, depth_scale: float = 5000.0) -> dict:
    """Ground truth beside an image: the samples' ``segm_gt_NAME`` / ``depth_gt_NAME`` files, or the
    shared layout's ``masks/NAME`` and ``depth/NAME`` next to ``rgb/NAME``."""
    image = Path(image)
    cands = [(image.with_name(f"segm_gt_{image.name}"), image.with_name(f"depth_gt_{image.name}"))]
    if image.parent.name == "rgb":
        root = image.parent.parent
        cands.append((root / "masks" / image.name, root / "depth" / image.name))
    for seg, dep in cands:
        out = {}
        if seg.is_file():
            m = np.asarray(layout._open(seg, "mask").convert("RGB") if _is_colour(seg) else layout.read_mask(seg))
            if m.ndim == 3:
                from .data.kitti import decode_segmentation

                m = decode_segmentation(m, strict=False)
            out["segm"] = m
        if dep.is_file():
            out["depth"] = layout.read_depth(dep, depth_scale)
        if out:
            return out
    return {}


def _is_colour(p: Path) -> bool:
    from PIL import Image

    with Image.open(p) as im:
        return im.mode in ("RGB", "RGBA")


def run_on_image(forward: Callable, config: HydraConfig, rgb: np.ndarray, size: Sequence[int]) -> dict:
    """Resize to the model's input size, run, and bring every output back to the image size."""
    x = torch.from_numpy(np.ascontiguousarray(rgb).copy()).permute(2, 0, 1)[None]
    x = normalize(x, config)
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        outs = forward(x)
    h, w = rgb.shape[:2]
    res = {}
    for name, o in zip(config.tasks, outs):
        o = torch.as_tensor(o).float()
        o = F.interpolate(o, size=(h, w), mode="bilinear", align_corners=False)
        if name == "segm":
            res["segm"] = o.argmax(1)[0].numpy().astype(np.uint8)
        elif name == "depth":
            res["depth"] = o[0, 0].clamp(min=0).numpy()
        else:
            res["normals"] = F.normalize(o, dim=1)[0].permute(1, 2, 0).numpy()
    return res


def panel(rgb: np.ndarray, rows: list[tuple[str, dict]], out: Path, depth_max: float | None = None,
          class_names: Sequence[str] = ()) -> Path:
    """One PNG: a row per prediction source (ground truth, FP32, each artifact): segm and depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if depth_max is None:
        vals = [r["depth"][r["depth"] > 0] for _, r in rows if "depth" in r]
        depth_max = float(max([np.percentile(v, 99) for v in vals if v.size] or [10.0]))
    n = len(rows)
    fig, axes = plt.subplots(n, 3, figsize=(11, 3.0 * n), squeeze=False)
    for i, (title, r) in enumerate(rows):
        axes[i, 0].imshow(rgb)
        axes[i, 0].set_title("input" if i == 0 else "", fontsize=9)
        axes[i, 0].set_ylabel(title, fontsize=10)
        if "segm" in r:
            axes[i, 1].imshow(colorize_segm(r["segm"]), interpolation="nearest")
        axes[i, 1].set_title(f"{title}: segmentation", fontsize=9)
        if "depth" in r:
            d = np.ma.masked_where(r["depth"] <= 0, r["depth"])
            im = axes[i, 2].imshow(d, cmap="magma_r", vmin=0, vmax=depth_max)
            cb = fig.colorbar(im, ax=axes[i, 2], fraction=0.035, pad=0.02)
            cb.set_label("metres", fontsize=8)
        axes[i, 2].set_title(f"{title}: depth", fontsize=9)
        for a in axes[i]:
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=80)
    return out


def predict_panels(forward: Callable, config: HydraConfig, images: list[Path], out_dir: Path, size,
                   title: str = "prediction", extra: list[tuple[str, Callable]] = ()) -> list[Path]:
    """A panel per image: ground truth (if found), ``title`` (forward), then each (name, forward) in extra."""
    written = []
    for p in images:
        rgb = layout.read_rgb(Path(p))
        rows = []
        gt = find_ground_truth(Path(p), config.num_classes)
        if gt:
            rows.append(("ground truth", gt))
        rows.append((title, run_on_image(forward, config, rgb, size)))
        for name, fwd in extra:
            rows.append((name, run_on_image(fwd, config, rgb, size)))
        written.append(panel(rgb, rows, Path(out_dir) / f"{Path(p).stem}_panel.png", class_names=config.class_names))
    return written
