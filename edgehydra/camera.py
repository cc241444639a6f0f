"""Pinhole intrinsics and camera poses: presets, KITTI calibration files, ROS camera_info YAML, the resize
and crop arithmetic from the camera to the network's input, and back-projection.

Convention: OpenCV's and ROS's, the centre of pixel (u, v) at integer coordinates, so a point (x, y, z) in
the camera frame (x right, y down, z forward) lands at u = fx x / z + cx. Resizing a W-wide image to W'
(bilinear, align_corners=False, which is what the network's preprocessing does) maps a pixel centre u to
(u + 0.5) W'/W - 0.5, so cx' = (cx + 0.5) sx - 0.5 while fx' = fx sx.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import BadInputError


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    name: str = ""

    def __post_init__(self):
        for f in ("fx", "fy"):
            if not (np.isfinite(getattr(self, f)) and getattr(self, f) > 0):
                raise ValueError(f"Intrinsics.{f}={getattr(self, f)}: a focal length in pixels must be > 0")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"Intrinsics: image size {self.width}x{self.height} must be at least 1x1")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width), the order every size in edgehydra uses."""
        return (self.height, self.width)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float64)

    def resized(self, size) -> Intrinsics:
        """The intrinsics of this image resized (whole, no crop) to ``size`` = (height, width)."""
        h, w = int(size[0]), int(size[1])
        sx, sy = w / self.width, h / self.height
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=(self.cx + 0.5) * sx - 0.5,
                       cy=(self.cy + 0.5) * sy - 0.5, width=w, height=h)

    def cropped(self, top: int, left: int, size) -> Intrinsics:
        """The intrinsics of the ``size`` window whose top-left pixel is (top, left)."""
        h, w = int(size[0]), int(size[1])
        if top < 0 or left < 0 or top + h > self.height or left + w > self.width:
            raise BadInputError(f"crop {h}x{w} at ({top}, {left}) leaves the {self.height}x{self.width} image")
        return replace(self, cx=self.cx - left, cy=self.cy - top, width=w, height=h)

    def check_image(self, size, what: str = "the image") -> None:
        """Refuse intrinsics calibrated for another image size (scale them with ``resized`` if that is meant)."""
        if tuple(int(s) for s in size) != self.size:
            raise BadInputError(f"intrinsics {self.name or ''} are for {self.height}x{self.width} images, {what} is "
                                f"{size[0]}x{size[1]}; give the calibration of this camera mode".replace("  ", " "))

    def to_dict(self) -> dict:
        return dict(fx=self.fx, fy=self.fy, cx=self.cx, cy=self.cy, width=self.width, height=self.height, name=self.name)

    @classmethod
    def from_dict(cls, d: dict) -> Intrinsics:
        try:
            return cls(float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]), int(d["width"]),
                       int(d["height"]), str(d.get("name", "")))
        except KeyError as e:
            raise BadInputError(f"intrinsics lack {e.args[0]!r} (need fx, fy, cx, cy, width, height)") from None


# NYUDv2's Kinect colour camera: the dataset toolbox's camera_params.m (fx_rgb 5.1885790117450188e+02, ...).
PRESETS = {
    "nyud": Intrinsics(518.857901, 519.469611, 325.582449, 253.736166, 640, 480, "nyud"),
}


def preset(name: str) -> Intrinsics:
    if name not in PRESETS:
        raise BadInputError(f"unknown intrinsics preset {name!r}; known: {', '.join(sorted(PRESETS))}, or a "
                            f"calib_cam_to_cam.txt / camera_info .yaml file")
    return PRESETS[name]


def from_kitti_calib(path: Path, camera: int = 2) -> Intrinsics:
    """P_rect_0N and S_rect_0N of a KITTI raw ``calib_cam_to_cam.txt`` (they differ per recording date)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"KITTI calibration not found: {path}")
    vals = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            vals[k.strip()] = v.split()
    key = f"P_rect_{camera:02d}"
    if key not in vals:
        raise BadInputError(f"{path}: no {key} line; is this a KITTI calib_cam_to_cam.txt?")
    try:
        P = np.array([float(x) for x in vals[key]]).reshape(3, 4)
        w, h = (int(float(x)) for x in vals[f"S_rect_{camera:02d}"])
    except (ValueError, KeyError) as e:
        raise BadInputError(f"{path}: cannot read {key} / S_rect_{camera:02d} ({e})") from None
    return Intrinsics(P[0, 0], P[1, 1], P[0, 2], P[1, 2], w, h, f"kitti:{path.parent.name}:cam{camera}")


def from_camera_info_yaml(path: Path) -> Intrinsics:
    """A ROS camera_info YAML (camera_calibration_parsers): image_width/height and camera_matrix (K), or the
    projection_matrix (P) when the image is rectified."""
    import yaml  # in the robot extra; PyYAML is what ROS's own parser uses

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"camera_info file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text())
        K = np.array(d["camera_matrix"]["data"], float).reshape(3, 3)
        w, h = int(d["image_width"]), int(d["image_height"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise BadInputError(f"{path}: not a ROS camera_info YAML ({type(e).__name__}: {e})") from None
    return Intrinsics(K[0, 0], K[1, 1], K[0, 2], K[1, 2], w, h, d.get("camera_name", path.stem))


def load_intrinsics(spec: str) -> Intrinsics:
    """A preset name, a KITTI calib_cam_to_cam.txt or a camera_info .yaml/.yml."""
    p = Path(spec)
    if spec in PRESETS:
        return PRESETS[spec]
    if p.suffix in (".yaml", ".yml"):
        return from_camera_info_yaml(p)
    if p.suffix == ".txt":
        return from_kitti_calib(p)
    return preset(spec)


# ------------------------------------------------------------------------------------------- geometry
def backproject(depth: np.ndarray, intr: Intrinsics) -> np.ndarray:
    """(H, W, 3) camera-frame points of a z-depth map (metres); NaN where depth is not positive and finite."""
    intr.check_image(depth.shape, "the depth map")
    h, w = depth.shape
    u = (np.arange(w, dtype=np.float64) - intr.cx) / intr.fx
    v = (np.arange(h, dtype=np.float64) - intr.cy) / intr.fy
    z = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float64)
    return np.stack([u[None, :] * z, v[:, None] * z, z], axis=-1)


def project(points: np.ndarray, intr: Intrinsics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates (u, v) and z of camera-frame points (..., 3)."""
    z = points[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return intr.fx * points[..., 0] / z + intr.cx, intr.fy * points[..., 1] / z + intr.cy, z


@dataclass(frozen=True)
class Pose:
    """Camera-to-world: a camera-frame point p sits at R p + t in the world."""

    R: np.ndarray
    t: np.ndarray

    def to_dict(self) -> dict:
        return dict(R=np.asarray(self.R).tolist(), t=np.asarray(self.t).tolist())

    @classmethod
    def from_dict(cls, d: dict) -> Pose:
        return cls(np.asarray(d["R"], float).reshape(3, 3), np.asarray(d["t"], float).reshape(3))

    def relative_to(self, other: Pose) -> tuple[np.ndarray, np.ndarray]:
        """(R, t) taking a point in this camera's frame to ``other``'s frame."""
        R = other.R.T @ self.R
        return R, other.R.T @ (self.t - other.t)


def transform(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    return points @ np.asarray(R).T + np.asarray(t)
