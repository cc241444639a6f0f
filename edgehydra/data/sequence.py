"""synthroom sequences: a camera moving smoothly through one procedural room, with its exact poses,
intrinsics and per-frame ground truth, so 3D and temporal checks (flicker after warping by the known
motion, point clouds against the true geometry) are exact.

The path is a function of time, bounded for any length: the camera drifts up to 0.45 m forward and
0.25 m sideways, pans +-0.25 rad and tilts +-0.04 rad (0.2 m/s and 0.2 rad/s at most, a robot's walking pace),
inside the 0.6 m keep-out square synthroom leaves free around its camera, so it never enters furniture.
Every frame is a pure function of (seed, index, fps, size).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._io import atomic_write_json
from ..camera import Intrinsics, Pose
from ..errors import BadInputError
from . import layout
from .synthroom import KINECT, SynthConfig, make_scene, render, rotation

SEQUENCE_FILE = "sequence.json"


@dataclass(frozen=True)
class SequenceConfig:
    frames: int = 60
    fps: float = 30.0
    size: tuple[int, int] = (240, 320)
    seed: int = 0
    noise: bool = True

    def __post_init__(self):
        if self.frames < 2:
            raise ValueError(f"SequenceConfig.frames={self.frames}: a sequence needs at least 2 frames")
        if not self.fps > 0:
            raise ValueError(f"SequenceConfig.fps={self.fps}: must be > 0")
        SynthConfig(size=tuple(self.size))  # validates the size


def synth_intrinsics(size) -> Intrinsics:
    """synthroom's camera at ``size``: its rays pass through pixel centres at u + 0.5 in Kinect units scaled to
    the image, so in the pixel-centre-at-integer convention cx = 325.6 sx - 0.5."""
    h, w = int(size[0]), int(size[1])
    sx, sy = w / KINECT["w"], h / KINECT["h"]
    return Intrinsics(KINECT["fx"] * sx, KINECT["fy"] * sy, KINECT["cx"] * sx - 0.5, KINECT["cy"] * sy - 0.5, w, h,
                      "synthroom")


def camera_at(scene: dict, time_s: float) -> tuple[np.ndarray, float, float]:
    """Camera position, yaw and pitch ``time_s`` seconds into the sequence."""
    s = float(time_s)
    right = np.array([-np.cos(scene["yaw"]), 0.0, np.sin(scene["yaw"])])  # the start camera's right, horizontal
    fwd = np.array([np.sin(scene["yaw"]), 0.0, np.cos(scene["yaw"])])
    pos = (np.asarray(scene["cam"], float) + right * 0.25 * np.sin(0.5 * s)
           + fwd * 0.45 * (1 - np.cos(0.4 * s)) / 2 + np.array([0.0, 0.02 * np.sin(1.3 * s), 0.0]))
    return pos, scene["yaw"] + 0.25 * np.sin(0.8 * s), scene["pitch"] + 0.04 * np.sin(1.1 * s)


def synth_sequence(cfg: SequenceConfig):
    """Yield the frames of one sequence: rgb, segm, depth (noisy), depth_clean, normals, plus ``pose``
    (camera-to-world), ``intrinsics``, ``stamp_ns`` and ``name``."""
    scene = make_scene(np.random.default_rng([cfg.seed, 0x5E0]), SynthConfig(size=tuple(cfg.size)))
    intr = synth_intrinsics(cfg.size)
    scfg = SynthConfig(size=tuple(cfg.size), noise=cfg.noise)
    for i in range(cfg.frames):
        t = i / cfg.fps
        pos, yaw, pitch = camera_at(scene, t)
        frame_scene = dict(scene, cam=pos, yaw=yaw, pitch=pitch)
        out = render(frame_scene, scfg, np.random.default_rng([cfg.seed, 0x5E1, i]),
                     texture_rng=np.random.default_rng([cfg.seed, 0x5E2]))
        out.update(pose=Pose(rotation(yaw, pitch), pos), intrinsics=intr, stamp_ns=int(round(t * 1e9)),
                   name=f"seq_{i:06d}.png", index=i)
        yield out


def write_sequence(out: Path, cfg: SequenceConfig, progress=None) -> dict:
    """The sequence in the shared layout (rgb/, masks/, depth/, normals/, val.txt) plus sequence.json: fps,
    intrinsics and each frame's time stamp and pose, which `stream` and `stability` read back."""
    from ..registry import NYUD40_CLASSES

    out = Path(out)
    task = progress.add_task("sequence", total=cfg.frames) if progress else None
    rows, frames = [], []
    for f in synth_sequence(cfg):
        name = f["name"]
        layout.save_png(out / "rgb" / name, f["rgb"])
        layout.save_png(out / "masks" / name, f["segm"])
        layout.save_png(out / "depth" / name, layout.encode_depth(f["depth"], layout.DEPTH_SCALE["synthroom"]))
        layout.save_png(out / "normals" / name, layout.encode_normals(f["normals"]))
        rows.append(layout.Row(f"rgb/{name}", f"masks/{name}", f"depth/{name}", f"normals/{name}"))
        frames.append(dict(name=name, stamp_ns=f["stamp_ns"], pose=f["pose"].to_dict()))
        if progress:
            progress.advance(task)
    layout.write_list(out / "val.txt", rows)
    atomic_write_json(out / "dataset.json", {"name": "synthroom", "depth_scale": 5000.0, "depth_cap": 10.0,
                                             "num_classes": 40, "class_names": list(NYUD40_CLASSES),
                                             "seed": cfg.seed, "size": list(cfg.size)})
    atomic_write_json(out / SEQUENCE_FILE, {"fps": cfg.fps, "seed": cfg.seed, "noise": cfg.noise,
                                            "intrinsics": synth_intrinsics(cfg.size).to_dict(), "frames": frames})
    return {"out": str(out), "frames": cfg.frames}


def read_sequence(root: Path) -> dict | None:
    """sequence.json of a folder (fps, intrinsics, per-frame name, stamp and pose), or None if it has none."""
    f = Path(root) / SEQUENCE_FILE
    if not f.is_file():
        return None
    try:
        d = json.loads(f.read_text())
        return dict(fps=float(d["fps"]), intrinsics=Intrinsics.from_dict(d["intrinsics"]),
                    frames=[dict(name=x["name"], stamp_ns=int(x["stamp_ns"]), pose=Pose.from_dict(x["pose"]))
                            for x in d["frames"]])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise BadInputError(f"{f}: not a sequence record ({type(e).__name__}: {e})") from None
