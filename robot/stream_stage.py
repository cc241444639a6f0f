"""The stream stage: an artifact on a source at a camera's rate, its recording, record and timeline picture."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgehydra._io import atomic_write_json, sha256_path
from edgehydra.camera import load_intrinsics
from edgehydra.devices.host import this_host
from edgehydra.exporters.runtime import open_artifact
from edgehydra.run import run_of_artifact

from .figures import stream_timeline
from .predictor import Predictor
from .ros2 import Recorder, read_topics
from .sources import open_source
from .stream import StreamConfig, stream

SCHEMA = "edgehydra.stream/1"


def default_recording(artifact: Path) -> Path:
    """RUN/robot/stream_<artifact>.mcap for an artifact of a run, else beside the working directory."""
    run = run_of_artifact(artifact)
    return (run.robot_dir if run else Path(".")) / f"stream_{Path(artifact).stem}.mcap"


@dataclass(frozen=True)
class StreamIO:
    """Where a stream reads and writes beside its source: the recording at ``out`` (None: beside the artifact) unless
    ``record`` is off, the camera's ``intrinsics`` (a file or a dataset's name; None: the source's own), the image
    ``topic`` of a bag with several."""
    out: Path | None = None
    record: bool = True
    intrinsics: str | None = None
    topic: str | None = None


def stream_artifact(artifact: Path, source: str, cfg: StreamConfig, io: StreamIO = StreamIO(), *, progress=None,
                    notes: list | None = None) -> tuple[dict, list[Path]]:
    """Stream ``source`` through ``artifact``; the recording (unless ``io.record`` is off) at ``io.out``, the stream
    record beside it as NAME.stream.json (schema edgehydra.stream/1) and the timeline as NAME.stream.png. ``notes``
    collects what the caller should say (the source has no intrinsics, no time stamps)."""
    out, record, intrinsics, topic = io.out, io.record, io.intrinsics, io.topic
    art = open_artifact(Path(artifact))
    notes = notes if notes is not None else []
    if art.target == "onnx":  # a node shares its cores with the capture thread: no busy-waiting (reference_runner)
        from edgehydra.exporters.reference_runner import onnx_runner

        art.runner = onnx_runner(art.path, spin=False)
        notes.append("ONNX Runtime runs with intra-op spinning off (session.intra_op.allow_spinning=0), as a node "
                     "that shares its cores should")
    pred = Predictor.of_artifact(art)
    src = open_source(source, pred.size, topic)
    intr = load_intrinsics(intrinsics) if intrinsics else src.intrinsics
    notes += src.notes
    if intr is None:
        notes.append("no intrinsics for this source: depth and labels are recorded, no point cloud (give --intrinsics)")
    out = Path(out) if out else default_recording(Path(artifact))
    ply_dir = out.with_name(out.stem + "_ply") if cfg.ply_every else None
    if record:
        with Recorder(out) as recorder:
            rec = stream(pred, src, cfg, recorder, intr, progress, ply_dir)
    else:
        rec = stream(pred, src, cfg, None, intr, progress, ply_dir)
    full = {"schema": SCHEMA, "artifact": str(art.path), "artifact_sha256": sha256_path(art.path), "target": art.target,
            "precision": art.precision, "size": list(pred.size), "source": src.name, "host": this_host(),
            "recording": str(out) if record else None, "topics": read_topics(out) if record else None, "notes": notes,
            **rec}
    base = str(out.with_suffix(""))
    atomic_write_json(Path(base + ".stream.json"), full)
    fig = stream_timeline(full, Path(base + ".stream.png"))
    return full, [p for p in (out if record else None, Path(base + ".stream.json"), fig) if p]
