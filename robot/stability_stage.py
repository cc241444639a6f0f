"""The stability stage of a run: its FP32 checkpoint and its artifacts on one sequence, the record `check` reads."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from edgehydra._io import atomic_write_json
from edgehydra.checkpoint import load_checkpoint
from edgehydra.devices.host import this_host
from edgehydra.errors import BadInputError
from edgehydra.exporters.runtime import open_artifact
from edgehydra.exporters.target import RunnerUnavailable
from edgehydra.run import Run

from .figures import stability_figure
from .pointcloud import organized_cloud
from .predictor import Predictor
from .sources import Frame, open_source
from .stability import stability


def run_artifacts(run: Run, size) -> tuple[list[Path], list[str]]:
    """Every artifact the run's export manifest lists at ``size``, and why any was left out."""

    if not run.export_manifest.is_file():
        return [], [f"no export manifest in {run.root}: only the FP32 model is measured"]
    rows = run.export_record()["artifacts"]
    keep = [run.export_dir / r["path"] for r in rows if r.get("path") and tuple(r["size"]) == tuple(size)]
    return keep, []


def _fit(frame: Frame, size) -> Frame:
    """A frame at the network's input size: resized (bilinear, the preprocessing's), its truth dropped (a resized
    label map or depth map is not a truth), its intrinsics scaled."""
    if tuple(frame.rgb.shape[:2]) == tuple(size):
        return frame
    x = torch.from_numpy(frame.rgb).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    rgb = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return Frame(frame.index, frame.stamp_ns, rgb, frame.intrinsics.resized(size) if frame.intrinsics else None,
                 frame.pose, {})


def stability_run(run_dir: Path, artifacts: list[Path], size, source: str, progress=None) -> tuple[dict, list[Path]]:
    run = Run(run_dir)
    notes = []
    if artifacts:
        arts = [open_artifact(a) for a in artifacts]
        sizes = {tuple(a.size) for a in arts}
        if len(sizes) > 1:
            raise BadInputError(f"the artifacts have different input sizes ({', '.join(f'{h}x{w}' for h, w in sizes)}); "
                                f"measure one size at a time")
        size = sizes.pop()
        size_from = "the named artifacts"
    else:
        size, size_from = (tuple(size), "--size") if size else (tuple(run.size), "the run")
        paths, notes = run_artifacts(run, size)
        arts = []
        for p in paths:
            try:
                arts.append(open_artifact(p))
            except RunnerUnavailable as e:
                notes.append(f"{p.name}: cannot run here ({e})")
            except Exception as e:  # a runtime missing on this host (Core ML off macOS): said, not hidden
                notes.append(f"{p.name}: not measured ({str(e).splitlines()[0]})")
    model, _ = load_checkpoint(run.checkpoint())
    preds = [Predictor.of_model(model, size, "fp32 (checkpoint)")] + [Predictor.of_artifact(a) for a in arts]
    src = open_source(source, size)
    frames = [_fit(f, size) for f in src.frames]
    intr = (src.intrinsics.resized(size) if src.intrinsics and src.intrinsics.size != tuple(size) else src.intrinsics)
    rec = stability(preds, frames, intr, progress=progress)
    for m, a in zip(rec["models"][1:], arts):
        m["artifact"] = str(a.path.resolve().relative_to(run.export_dir.resolve())) \
            if a.path.resolve().is_relative_to(run.export_dir.resolve()) else str(a.path)
    rec.update(source=src.name, size_from=size_from, notes=notes, host=this_host())
    run.robot_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.stability_record, rec)
    shown = next((p for p in preds if p.precision == "int8"), preds[-1])  # the cloud of an int8 artifact if any
    res = shown(frames[0].rgb)
    cloud = organized_cloud(res["depth"], frames[0].rgb, res["segm"], res["confidence"], intr) \
        if intr is not None and "depth" in res and "segm" in res else None
    fig = stability_figure(rec, cloud, run.robot_dir / "stability.png", title=f"{shown.name}: semantic point cloud")
    return rec, [run.stability_record, fig]
