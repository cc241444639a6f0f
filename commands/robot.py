"""`edgehydra stream` and `edgehydra stability`: the artifact on a robot's stream, and whether it flickers."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import console
from ._progress import progress_bar


@click.command()
@click.option("--artifact", type=click.Path(dir_okay=True), required=True,
              help="An exported artifact (.pte, .tflite, .onnx); it runs in its own runtime.")
@click.option("--source", required=True,
              help="A video file, an image folder, a ROS 2 bag (.mcap or its folder), or synthroom[:frames=N,seed=S,fps=F].")
@click.option("--topic", default=None, help="The image topic of a bag with several.")
@click.option("--fps", type=click.FloatRange(0), default=30.0, show_default=True,
              help="The camera's rate: frames arrive at it and the newest is taken (0: every frame, no deadline).")
@click.option("--frames", "max_frames", type=click.IntRange(1), default=None, help="Stop after this many frames.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="The MCAP recording (default: RUN/robot/stream_<artifact>.mcap, or ./ outside a run).")
@click.option("--no-record", is_flag=True, help="Time the stream without writing a recording.")
@click.option("--intrinsics", default=None,
              help="The source camera: nyud, a KITTI calib_cam_to_cam.txt or a ROS camera_info .yaml (default: the source's).")
@click.option("--depth-encoding", type=click.Choice(["32FC1", "16UC1"]), default="32FC1", show_default=True,
              help="Depth image: float metres (NaN invalid) or uint16 millimetres (0 invalid).")
@click.option("--ply-every", type=click.IntRange(0), default=0, show_default=True,
              help="Also write every Nth frame's semantic point cloud as PLY (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Print the stream record as JSON.")
def stream(artifact, source, topic, fps, max_frames, out, no_record, intrinsics, depth_encoding, ply_every, as_json):
    """Run an artifact on a stream at a camera's rate; record what a robot receives as ROS 2 messages (MCAP).

    Reports per-frame decode, preprocess, inference, postprocess and write times, p50/p95/p99 end to end,
    deadline misses and dropped frames at --fps. Ctrl-C stops it and leaves a closed, readable recording.
    """
    from edgehydra.robot.stream import StreamConfig
    from edgehydra.robot.stream_stage import StreamIO, stream_artifact

    cfg = StreamConfig(fps=fps, max_frames=max_frames, depth_encoding=depth_encoding, ply_every=ply_every)
    notes = []
    with progress_bar() as p:
        record, paths = stream_artifact(Path(artifact), source, cfg, StreamIO(Path(out) if out else None, not no_record,
                                                                              intrinsics, topic), progress=p, notes=notes)
    c = console()
    for n in notes:
        c.print(f"[yellow]{n}[/]", soft_wrap=True)
    if as_json:
        click.echo(json.dumps({k: v for k, v in record.items() if k != "frames"}, indent=2))
    else:
        _print_stream(c, record, paths[-1])
    if record["interrupted"]:
        raise SystemExit(130)


def _print_stream(c, r: dict, fig: Path) -> None:
    e, s = r["e2e_ms"], r["steps_ms"]
    if not r["processed"]:
        c.print("no frame was processed", soft_wrap=True)
        return
    rate = f"at {r['target_fps']:g} fps" if r["target_fps"] else "every frame"
    c.print(f"{r['processed']} frames {rate} on {r['host']}: end to end p50 {e['p50']:.1f} / p95 {e['p95']:.1f} / "
            f"p99 {e['p99']:.1f} ms; achieved {r['achieved_fps']:.1f} fps", soft_wrap=True)
    c.print("  per step p50: " + ", ".join(f"{k} {v['p50']:.1f} ms" for k, v in s.items()), soft_wrap=True)
    if r["target_fps"]:
        c.print(f"  dropped {r['dropped']} frames (newest taken), {r['deadline_misses']} missed the "
                f"{1000 / r['target_fps']:.1f} ms deadline", soft_wrap=True)
    if r["interrupted"]:
        c.print("[yellow]interrupted: the recording holds the frames processed so far and is closed[/]")
    if r["recording"]:
        c.print(f"recording: {r['recording']} ({sum(r['topics'].values())} messages on {len(r['topics'])} topics)",
                soft_wrap=True)
    c.print(f"timeline: {fig}", soft_wrap=True)


@click.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True)
@click.option("--artifact", "artifacts", multiple=True, type=click.Path(dir_okay=False),
              help="An artifact of the run (repeatable; default: every artifact of the run at the size, runnable here).")
@click.option("--size", type=str, default=None, help="HxW (default: the size of the named artifacts, else the run's).")
@click.option("--source", default="synthroom:frames=32",
              help="A synthroom sequence (exact motion), a recorded sequence folder, or a video (optical flow).", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def stability(run_dir, artifacts, size, source, as_json):
    """Flicker and consistency of FP32 and each artifact on the same frames, and parity in robot units.

    Writes RUN/robot/stability.json (what `check` judges a profile's max_flicker_rise on) and a figure.
    """
    from edgehydra.robot.stability_stage import stability_run

    from ._common import parse_size

    with progress_bar() as p:
        rec, paths = stability_run(Path(run_dir), [Path(a) for a in artifacts], parse_size(size), source, p)
    if as_json:
        click.echo(json.dumps(rec, indent=2))
        return
    _print_stability(console(), rec, paths)


def _print_stability(c, rec: dict, paths: list[Path]) -> None:
    from ._common import fit_ids, table

    cols = ("flicker %", "rise pp", "depth t. %", "mIoU %", "RMSE m", "chamfer cm")
    t = table(f"stability: {rec['frames']} frames at {rec['size'][0]}x{rec['size'][1]}", ("model",), cols, right=cols)

    def f(v, k=100.0, d=2):
        return "-" if v is None else f"{v * k:.{d}f}"

    rows = []
    for m in rec["models"]:
        tm, acc, vs = m["temporal"], m.get("accuracy", {}), m.get("vs_reference", {})
        rows.append((m.get("artifact") or m["name"], f(tm.get("flicker")), f(tm.get("flicker_rise")),
                     f(tm.get("depth_temporal_error")), f(acc.get("miou"), 1, 1), f(acc.get("rmse"), 1, 3),
                     f(vs.get("chamfer_m"), 100, 2)))
    fit_ids(t, rows)
    c.print(t)
    c.print(f"source: {rec['source']}; pixels matched by {rec['matched_by']}; flicker: labels changed between "
            f"consecutive frames, rise: over FP32 (percentage points); depth t.: relative depth change; chamfer: "
            f"point cloud vs FP32's", soft_wrap=True)
    for n in rec.get("notes", []):
        c.print(f"[yellow]{n}[/]", soft_wrap=True)
    for p in paths:
        c.print(f"wrote {p}", soft_wrap=True)
