"""Knowledge distillation for missing labels (the paper's asymmetric annotations).

A teacher fills every row's missing modality with its prediction; the list file marks those
fields ``pseudo:`` so training can weight or filter them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import layout
from .data.datasets import FolderDataset
from .errors import BadInputError
from .model import normalize


@torch.no_grad()
def distill(teacher, root: Path, split: str = "train", progress=None) -> dict:
    root = Path(root)
    ds = FolderDataset(root, split, check_files=True)
    rows = list(ds.rows)
    cfg = teacher.config
    if cfg.num_classes != ds.num_classes:
        raise BadInputError(f"teacher has {cfg.num_classes} classes, dataset {root} has {ds.num_classes}")
    filled = {"masks": 0, "depth": 0}
    task = progress.add_task("distill", total=len(rows)) if progress else None
    for i, r in enumerate(rows):
        need_seg, need_depth = r.masks is None, r.depth is None
        if need_seg or need_depth:
            rgb = layout.read_rgb(root / r.rgb)
            x = normalize(torch.from_numpy(rgb).permute(2, 0, 1)[None], cfg)
            x = F.interpolate(x, size=cfg.input_size, mode="bilinear", align_corners=False)
            outs = dict(zip(cfg.tasks, teacher(x)))
            h, w = rgb.shape[:2]
            stem = Path(r.rgb).stem
            kw = {}
            if need_seg:
                seg = F.interpolate(outs["segm"], size=(h, w), mode="bilinear", align_corners=False).argmax(1)[0]
                p = f"masks/{stem}.pseudo.png"
                layout.save_png(root / p, seg.numpy().astype(np.uint8))
                kw["masks"] = p
                filled["masks"] += 1
            if need_depth:
                d = F.interpolate(outs["depth"], size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp(min=0)
                p = f"depth/{stem}.pseudo.png"
                layout.save_png(root / p, layout.encode_depth(d.numpy(), ds.info.depth_scale))
                kw["depth"] = p
                filled["depth"] += 1
            pseudo = set(r.pseudo) | {k for k in kw}
            rows[i] = layout.Row(r.rgb, kw.get("masks", r.masks), kw.get("depth", r.depth), r.normals, frozenset(pseudo))
        if progress:
            progress.advance(task)
    layout.write_list(root / f"{split}.txt", rows)
    return {"rows": len(rows), "filled": filled}
