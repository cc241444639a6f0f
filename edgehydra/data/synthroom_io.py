"""Write synthroom to disk in the shared layout (so one loader reads it and the real datasets)."""
from __future__ import annotations

from pathlib import Path

from .._io import atomic_write_json
from . import layout
from .synthroom import SynthConfig, generate_frame


def write_synthroom(out: Path, frames: int, size=(240, 320), seed: int = 0, val_frames: int | None = None,
                    normals: bool = True, progress=None) -> dict:
    """``frames`` training frames (indices 0..N-1 of ``seed``) and ``val_frames`` validation frames
    (of the validation seed, as in memory), with train.txt / val.txt and dataset.json."""
    from . import SYNTH_VAL_SEED_OFFSET

    out = Path(out)
    val_frames = max(1, frames // 8) if val_frames is None else val_frames
    cfg = SynthConfig(size=tuple(size))
    task = progress.add_task("synthroom", total=frames + val_frames) if progress else None
    lists = {}
    for split, n, s in (("train", frames, seed), ("val", val_frames, seed + SYNTH_VAL_SEED_OFFSET)):
        rows = []
        for i in range(n):
            f = generate_frame(s, i, cfg)
            name = f"{split}_{i:06d}.png"
            layout.save_png(out / "rgb" / name, f["rgb"])
            layout.save_png(out / "masks" / name, f["segm"])
            layout.save_png(out / "depth" / name, layout.encode_depth(f["depth"], layout.DEPTH_SCALE["synthroom"]))
            if normals:
                layout.save_png(out / "normals" / name, layout.encode_normals(f["normals"]))
            rows.append(layout.Row(f"rgb/{name}", f"masks/{name}", f"depth/{name}", f"normals/{name}" if normals else None))
            if progress:
                progress.advance(task)
        layout.write_list(out / f"{split}.txt", rows)
        lists[split] = n
    from ..registry import NYUD40_CLASSES

    atomic_write_json(out / "dataset.json", {"name": "synthroom", "depth_scale": 5000.0, "depth_cap": 10.0,
                                             "num_classes": 40, "class_names": list(NYUD40_CLASSES),
                                             "seed": seed, "size": list(size)})
    return {"out": str(out), **lists}
