"""Stream a source through a deployed artifact the way a robot's node does, and time every step.

A capture thread plays the source at its rate (``fps``): frame k arrives at k / fps seconds, decoded.
The inference loop takes the newest arrived frame; when it falls behind, the frames it never took are
dropped (a camera driver's queue of depth 1, the ROS 2 sensor-data QoS), not queued into ever-growing
latency. ``fps = 0`` takes every frame as fast as the loop runs (no drops, no deadline, end to end is the
frame's own decode and processing): what a recording for offline use wants.

Per frame: decode, preprocess, inference, postprocess and write times, and end to end (from the frame's
arrival time to its messages written); a frame whose end to end exceeds the frame period missed its
deadline. Frame 0 is read and run once before the clock starts (a node warms its model up while the camera
is already running), so its decode time includes opening the source. Ctrl-C stops the capture, and the
caller's recorder closes the file.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np

from edgehydra.camera import Intrinsics

from .pointcloud import organized_cloud, write_ply
from .predictor import Predictor
from .ros2 import camera_info_msg, cloud_msg, depth_msg, image_msg, label_info_msg
from .sources import Source

STEPS = ("decode", "preprocess", "inference", "postprocess", "write")


@dataclass(frozen=True)
class StreamConfig:
    fps: float = 30.0  # the camera's rate; 0: every frame, as fast as it runs
    max_frames: int | None = None
    depth_encoding: str = "32FC1"
    points: bool = True
    ply_every: int = 0  # write every Nth frame's cloud as PLY (0: none)

    def __post_init__(self):
        if self.fps < 0:
            raise ValueError(f"StreamConfig.fps={self.fps}: a rate in frames per second, >= 0 (0: every frame)")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"StreamConfig.max_frames={self.max_frames}: at least 1")
        if self.depth_encoding not in ("32FC1", "16UC1"):
            raise ValueError(f"StreamConfig.depth_encoding={self.depth_encoding!r}: 32FC1 (metres) or 16UC1 (mm)")
        if self.ply_every < 0:
            raise ValueError(f"StreamConfig.ply_every={self.ply_every}: >= 0")


class _Slot:
    """Depth-1 hand-over between the capture thread and the loop: newest wins (``drop``) or the capture waits."""

    def __init__(self, drop: bool):
        self.drop, self.item, self.done, self.closed = drop, None, False, False
        self.dropped: list[int] = []
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def put(self, item) -> bool:
        with self.cond:
            while not self.drop and self.item is not None and not self.closed:
                self.cond.wait()
            if self.closed:
                return False
            if self.item is not None:
                self.dropped.append(self.item[0].index)
            self.item = item
            self.cond.notify_all()
            return True

    def get(self):
        with self.cond:
            while self.item is None and not self.done:
                self.cond.wait()
            item, self.item = self.item, None
            self.cond.notify_all()
            return item

    def finish(self, error: BaseException | None = None):
        with self.cond:
            self.done, self.error = True, error
            self.cond.notify_all()

    def close(self):
        with self.cond:
            self.closed = self.done = True
            self.cond.notify_all()


def _capture(frames, first, cfg: StreamConfig, slot: _Slot, t0: float) -> None:
    """Play the frames at the source's rate into ``slot``; ``first`` = (frame 0, its decode time), read before
    the clock started (the camera is already running when the node starts)."""
    try:
        k = 0
        while cfg.max_frames is None or k < cfg.max_frames:
            if cfg.fps:
                wait = t0 + k / cfg.fps - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            arrival = time.perf_counter() if not cfg.fps else max(t0 + k / cfg.fps, time.perf_counter())
            if k == 0:
                frame, decode = first
            else:
                t = time.perf_counter()
                frame = next(frames, None)
                decode = time.perf_counter() - t
            if frame is None:
                break
            if not slot.put((frame, arrival, decode)):
                break
            k += 1
        slot.finish()
    except BaseException as e:  # handed to the loop, which raises it in the main thread
        slot.finish(e)


def stream(pred: Predictor, source: Source, cfg: StreamConfig, recorder=None, intrinsics: Intrinsics | None = None,
           progress=None, ply_dir=None, on_frame=None) -> dict:
    """Run ``source`` through ``pred``; messages to ``recorder`` (robot.ros2.Recorder) if given. ``intrinsics``
    of the source's images (scaled here to the network's input); without them no point cloud is written.
    Returns the stream record: per-frame step times, end to end, drops, deadline misses, whether interrupted."""
    return _Stream(pred, source, cfg, recorder, intrinsics, progress, ply_dir, on_frame).run()


class _Stream:
    def __init__(self, pred, source, cfg, recorder, intrinsics, progress, ply_dir, on_frame):
        self.pred, self.source, self.cfg, self.recorder = pred, source, cfg, recorder
        self.intrinsics, self.progress, self.ply_dir, self.on_frame = intrinsics, progress, ply_dir, on_frame
        self.slot = _Slot(drop=bool(cfg.fps))
        self.stop = threading.Event()
        self.rows, self.plys, self.net_intr, self.seen_drops = [], [], None, 0
        self.period = 1.0 / cfg.fps if cfg.fps else None

    def run(self) -> dict:
        frames = iter(self.source.frames)
        t = time.perf_counter()
        first = next(frames, None)
        first = (first, time.perf_counter() - t)
        if first[0] is not None:
            self.pred(first[0].rgb)  # warm-up, untimed: a node runs its model once before the camera's frames
        t0 = time.perf_counter() + 0.01
        th = threading.Thread(target=_capture, args=(frames, first, self.cfg, self.slot, t0), daemon=True,
                              name="capture")
        th.start()
        n, m = self.source.length, self.cfg.max_frames
        self.task = self.progress.add_task("stream", total=m if n is None else min(n, m or n)) if self.progress else None
        if self.recorder is not None:
            self.recorder.write("/hydranet/label_info", "vision_msgs/msg/LabelInfo",
                                label_info_msg(self.pred.config.class_names, 0), 0)
        try:
            with _stop_on_sigint(self.stop):
                while not self.stop.is_set():
                    item = self.slot.get()
                    if item is None:
                        if self.slot.error is not None:
                            raise self.slot.error
                        break
                    self.frame(*item)
        except KeyboardInterrupt:
            self.stop.set()
        finally:
            self.slot.close()
            th.join(timeout=5)
        return summarise(self.rows, self.slot.dropped, self.cfg, time.perf_counter() - t0, self.stop.is_set(),
                         self.net_intr, self.plys)

    def frame(self, frame, arrival: float, decode: float) -> None:
        cfg, pred = self.cfg, self.pred
        if not cfg.fps:  # no camera clock: a frame's time starts when the loop takes it (plus its decode)
            arrival = time.perf_counter() - decode
        if self.net_intr is None and self.intrinsics is not None:
            self.intrinsics.check_image(frame.rgb.shape[:2], f"frame {frame.index} of {self.source.name}")
            self.net_intr = self.intrinsics.resized(pred.size)
        stamp = frame.stamp_ns or int(round(frame.index / (cfg.fps or self.source.fps or 30.0) * 1e9))
        t1 = time.perf_counter()
        x, small = pred.preprocess(frame.rgb)
        t2 = time.perf_counter()
        outs = pred.forward(x)
        t3 = time.perf_counter()
        res = pred.postprocess(outs)
        t4 = time.perf_counter()
        cloud = None
        if self.net_intr is not None and cfg.points and "depth" in res and "segm" in res:
            cloud = organized_cloud(res["depth"], small, res["segm"], res["confidence"], self.net_intr)
        if self.recorder is not None:
            _write_frame(self.recorder, cfg, stamp, small, res, cloud, self.net_intr)
        if self.ply_dir is not None and cloud is not None and cfg.ply_every and frame.index % cfg.ply_every == 0:
            path = self.ply_dir / f"frame_{frame.index:06d}.ply"
            self.plys.append(str(write_ply(path, cloud, pred.config.class_names)))
        t5 = time.perf_counter()
        e2e = t5 - arrival
        self.rows.append({"index": frame.index, "stamp_ns": stamp, "decode_ms": decode * 1e3,
                          "preprocess_ms": (t2 - t1) * 1e3, "inference_ms": (t3 - t2) * 1e3,
                          "postprocess_ms": (t4 - t3) * 1e3, "write_ms": (t5 - t4) * 1e3, "e2e_ms": e2e * 1e3,
                          "miss": bool(self.period is not None and e2e > self.period)})
        if self.on_frame is not None:
            self.on_frame(frame, res)
        if self.progress:  # frames consumed from the source: this one and any dropped since the last
            drops, self.seen_drops = len(self.slot.dropped) - self.seen_drops, len(self.slot.dropped)
            self.progress.update(self.task, advance=1 + drops, info=f"e2e {e2e * 1e3:.0f} ms, dropped {self.seen_drops}")


@contextlib.contextmanager
def _stop_on_sigint(stop: threading.Event):
    """Ctrl-C finishes the frame in hand and stops (a second one interrupts at once): a message is never cut in
    half in the recording. Only the main thread can own a signal handler; elsewhere KeyboardInterrupt stands."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    prev = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, prev)


def _write_frame(rec, cfg: StreamConfig, stamp: int, small, res: dict, cloud, intr) -> None:
    rec.write("/camera/image_raw", "sensor_msgs/msg/Image", image_msg(small, "rgb8", stamp), stamp)
    if intr is not None:
        rec.write("/camera/camera_info", "sensor_msgs/msg/CameraInfo", camera_info_msg(intr, stamp), stamp)
    if "depth" in res:
        rec.write("/hydranet/depth", "sensor_msgs/msg/Image", depth_msg(res["depth"], stamp, cfg.depth_encoding), stamp)
    if "segm" in res:
        rec.write("/hydranet/segmentation", "sensor_msgs/msg/Image", image_msg(res["segm"], "mono8", stamp), stamp)
        rec.write("/hydranet/confidence", "sensor_msgs/msg/Image",
                  image_msg(res["confidence"].astype("<f4"), "32FC1", stamp), stamp)
    if "normals" in res:
        rec.write("/hydranet/normals", "sensor_msgs/msg/Image", image_msg(res["normals"].astype("<f4"), "32FC3", stamp),
                  stamp)
    if cloud is not None:
        rec.write("/hydranet/points", "sensor_msgs/msg/PointCloud2", cloud_msg(cloud, stamp), stamp)


def _pct(v: list[float]) -> dict:
    if not v:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(v)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def summarise(rows: list[dict], dropped: list[int], cfg: StreamConfig, wall_s: float, interrupted: bool,
              intr: Intrinsics | None, plys: list[str]) -> dict:
    n = len(rows)
    return {
        "target_fps": cfg.fps or None,
        "processed": n,
        "dropped": len(dropped),
        "dropped_frames": dropped,
        "deadline_misses": sum(r["miss"] for r in rows) if cfg.fps else None,
        "achieved_fps": n / wall_s if wall_s > 0 and n else None,
        "wall_s": wall_s,
        "e2e_ms": _pct([r["e2e_ms"] for r in rows]),
        "steps_ms": {s: _pct([r[f"{s}_ms"] for r in rows]) for s in STEPS},
        "interrupted": interrupted,
        "intrinsics": intr.to_dict() if intr else None,
        "ply": plys,
        "frames": rows,
    }
