"""Where a stream's frames come from: a synthroom sequence, an image folder (a recorded sequence when it
holds sequence.json), a video file, or a ROS 2 bag / MCAP file with an image topic.

``open_source(spec)`` turns the command line's --source into a Source: its frames (rgb uint8 HxWx3, a time
stamp, and where the source knows them the camera's intrinsics and pose and the ground truth) in order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from edgehydra.camera import Intrinsics, Pose
from edgehydra.errors import BadInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
BAG_SUFFIXES = (".mcap",)
# sensor_msgs/Image encodings a camera driver publishes, and how to make rgb8 of each
_ENCODINGS = {"rgb8": (3, None), "bgr8": (3, [2, 1, 0]), "rgba8": (4, [0, 1, 2]), "bgra8": (4, [2, 1, 0]),
              "mono8": (1, None)}


@dataclass
class Frame:
    index: int
    stamp_ns: int
    rgb: np.ndarray
    intrinsics: Intrinsics | None = None
    pose: Pose | None = None
    truth: dict = field(default_factory=dict)  # segm, depth (clean, metres) where the source has them


@dataclass
class Source:
    """Frames in order; ``fps`` the source's own rate where it has one, ``length`` None where unknown."""

    name: str
    frames: Iterator[Frame]
    fps: float | None
    length: int | None
    intrinsics: Intrinsics | None = None
    notes: list[str] = field(default_factory=list)


def parse_synth_spec(spec: str) -> dict:
    """``synthroom`` or ``synthroom:frames=60,seed=3,fps=30,size=240x320,noise=0``."""
    opts = {}
    _, _, rest = spec.partition(":")
    for kv in filter(None, rest.split(",")):
        k, eq, v = kv.partition("=")
        if not eq or k not in ("frames", "seed", "fps", "size", "noise"):
            raise BadInputError(f"--source {spec!r}: options are frames=N, seed=N, fps=F, size=HxW, noise=0|1")
        try:
            opts[k] = (tuple(int(x) for x in v.lower().split("x")) if k == "size" else
                       float(v) if k == "fps" else bool(int(v)) if k == "noise" else int(v))
        except ValueError:
            raise BadInputError(f"--source {spec!r}: bad value for {k}: {v!r}") from None
    return opts


def synth_source(spec: str, size) -> Source:
    from edgehydra.data.sequence import SequenceConfig, synth_intrinsics, synth_sequence

    opts = parse_synth_spec(spec)
    opts.setdefault("size", tuple(size))
    try:
        cfg = SequenceConfig(**opts)
    except ValueError as e:
        raise BadInputError(f"--source {spec!r}: {e}") from None

    def gen():
        for f in synth_sequence(cfg):
            yield Frame(f["index"], f["stamp_ns"], f["rgb"], f["intrinsics"], f["pose"],
                        {"segm": f["segm"], "depth": f["depth_clean"]})

    return Source(f"synthroom sequence (seed {cfg.seed}, {cfg.frames} frames, {cfg.size[0]}x{cfg.size[1]})", gen(),
                  cfg.fps, cfg.frames, synth_intrinsics(cfg.size))


def folder_source(root: Path) -> Source:
    from edgehydra.data import layout
    from edgehydra.data.sequence import read_sequence

    seq = read_sequence(root)
    if seq is not None:
        info = layout.dataset_info(root)
        names = [f["name"] for f in seq["frames"]]

        def gen():
            for i, f in enumerate(seq["frames"]):
                truth = {}
                if (root / "masks" / f["name"]).is_file():
                    truth["segm"] = layout.read_mask(root / "masks" / f["name"])
                if (root / "depth" / f["name"]).is_file():
                    truth["depth"] = layout.read_depth(root / "depth" / f["name"], info.depth_scale)
                yield Frame(i, f["stamp_ns"], layout.read_rgb(root / "rgb" / f["name"]), seq["intrinsics"], f["pose"],
                            truth)

        return Source(f"recorded sequence {root} ({len(names)} frames)", gen(), seq["fps"], len(names),
                      seq["intrinsics"])
    images = sorted(p for p in (root / "rgb" if (root / "rgb").is_dir() else root).iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise BadInputError(f"--source {root}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")

    def gen():
        for i, p in enumerate(images):
            yield Frame(i, 0, layout.read_rgb(p))

    return Source(f"image folder {root} ({len(images)} images)", gen(), None, len(images), None,
                  ["an image folder has no time stamps: frames are stamped at the stream's --fps"])


def video_source(path: Path) -> Source:
    import cv2  # robot extra

    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise BadInputError(f"--source {path}: cannot decode a frame of this video (codec missing or file damaged)")
    fps = cap.get(cv2.CAP_PROP_FPS) or None
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None

    def gen():
        try:
            frame, i = first, 0
            while frame is not None:
                stamp = int(round(i / fps * 1e9)) if fps else 0
                yield Frame(i, stamp, np.ascontiguousarray(frame[..., ::-1]))
                ok, frame = cap.read()
                frame, i = (frame if ok else None), i + 1
        finally:
            cap.release()

    return Source(f"video {path.name}", gen(), fps, n, None)


def mcap_source(path: Path, topic: str | None = None) -> Source:
    """Images of a ROS 2 bag (MCAP): sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) on ``topic`` or the only
    image topic; intrinsics from the first sensor_msgs/CameraInfo if the bag has one."""
    from mcap.exceptions import McapError
    from mcap.reader import make_reader

    from .ros2 import read_messages

    try:
        with open(path, "rb") as f:
            summ = make_reader(f).get_summary()
    except (McapError, OSError, ValueError) as e:
        raise BadInputError(f"--source {path}: not a readable MCAP file ({e})") from None
    chans = list(summ.channels.values()) if summ else []
    image_topics = [c.topic for c in chans if summ.schemas[c.schema_id].name in ("sensor_msgs/msg/Image", "sensor_msgs/Image")]
    if topic is None:
        if not image_topics:
            raise BadInputError(f"--source {path}: the bag has no sensor_msgs/Image topic (topics: "
                                f"{', '.join(sorted(c.topic for c in chans)) or 'none'})")
        if len(image_topics) > 1:
            raise BadInputError(f"--source {path}: several image topics ({', '.join(image_topics)}); pick one with --topic")
        topic = image_topics[0]
    elif topic not in image_topics:
        raise BadInputError(f"--topic {topic}: not an image topic of {path} (image topics: {', '.join(image_topics) or 'none'})")
    info_topics = [c.topic for c in chans if summ.schemas[c.schema_id].name in ("sensor_msgs/msg/CameraInfo",)]
    intr = None
    if info_topics:
        for _, msg, _ in read_messages(path, topics=[info_topics[0]]):
            k = list(msg.k)
            intr = Intrinsics(k[0], k[4], k[2], k[5], msg.width, msg.height, info_topics[0])
            break
    stats = summ.statistics.channel_message_counts if summ.statistics else {}
    n = sum(v for cid, v in stats.items() if summ.channels[cid].topic == topic) or None

    def gen():
        for i, (_, msg, _) in enumerate(read_messages(path, topics=[topic])):
            if msg.encoding not in _ENCODINGS:
                raise BadInputError(f"{path} {topic}: image encoding {msg.encoding!r} is not supported "
                                    f"({', '.join(_ENCODINGS)})")
            ch, order = _ENCODINGS[msg.encoding]
            arr = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :msg.width * ch]
            arr = arr.reshape(msg.height, msg.width, ch)
            rgb = np.repeat(arr, 3, axis=2) if ch == 1 else (arr[..., order] if order else arr)
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            yield Frame(i, stamp, np.ascontiguousarray(rgb), intr)

    return Source(f"bag {path.name} {topic}", gen(), None, n, intr)


def open_source(spec: str, size, topic: str | None = None) -> Source:
    """--source: ``synthroom[:opts]``, a folder, a video file or an .mcap bag. ``size`` is the network's input
    (a synthroom sequence is rendered at it)."""
    if spec == "synthroom" or spec.startswith("synthroom:"):
        return synth_source(spec, size)
    p = Path(spec)
    if not p.exists():
        raise BadInputError(f"--source {spec}: no such file or folder (or use synthroom[:frames=N,...])")
    if p.is_dir():
        bags = sorted(p.glob("*.mcap"))
        if (p / "metadata.yaml").is_file() and bags:  # a rosbag2 folder (storage plugin mcap)
            if len(bags) > 1:
                raise BadInputError(f"--source {spec}: a bag split in {len(bags)} files; give one .mcap")
            return mcap_source(bags[0], topic)
        return folder_source(p)
    suf = p.suffix.lower()
    if suf in BAG_SUFFIXES:
        return mcap_source(p, topic)
    if suf in VIDEO_SUFFIXES:
        return video_source(p)
    raise BadInputError(f"--source {spec}: unknown kind {suf!r}; give a folder, a video ({', '.join(VIDEO_SUFFIXES)}), "
                        f"an .mcap bag or synthroom")
