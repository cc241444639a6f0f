"""The one on-disk layout every dataset uses (that of the published multi-task-refinenet code).

    ROOT/rgb/NAME.png        RGB 8-bit
    ROOT/masks/NAME.png      8-bit class id 0..C-1, 255 = ignore
    ROOT/depth/NAME.png      16-bit, metres x scale (5000 NYUD/synthroom, 256 KITTI), 0 = invalid
    ROOT/normals/NAME.png    optional; RGB, the authors' coding: channels (2R/255-1, 2G/255-1, 1-2B/255) =
                             camera-frame (x, z, y); (127, 127, 127) = no normal
    ROOT/train.txt, val.txt  one row per frame: tab-separated rgb, mask, depth[, normals] paths
    ROOT/dataset.json        name, depth scale, classes (optional; defaults per dataset name)

A row may lack a modality (asymmetric annotations): its field is ``-``. A field prefixed with
``pseudo:`` was filled by a teacher (``edgehydra data distill``) rather than annotated.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError

MODALITIES = ("rgb", "masks", "depth", "normals")
MISSING = "-"
PSEUDO = "pseudo:"
DEPTH_SCALE = {"nyud": 5000.0, "synthroom": 5000.0, "kitti": 256.0}


@dataclass(frozen=True)
class Row:
    rgb: str
    masks: str | None = None
    depth: str | None = None
    normals: str | None = None
    pseudo: frozenset = frozenset()  # modalities filled by a teacher

    def fields(self) -> list[str]:
        out = []
        for m in MODALITIES:
            v = getattr(self, m)
            if m == "normals" and v is None:
                continue
            out.append(MISSING if v is None else (PSEUDO + v if m in self.pseudo else v))
        return out


def parse_list(path: str | Path) -> list[Row]:
    """Read a list file; every problem names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"list file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not a UTF-8 text list file") from None
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) < 2 or len(parts) > 4:
            raise BadInputError(f"{path}:{i}: expected 2-4 tab-separated paths (rgb, mask, depth[, normals]), got {len(parts)}")
        parts += [MISSING] * (4 - len(parts))
        vals, pseudo = {}, set()
        for m, p in zip(MODALITIES, parts):
            p = p.strip()
            if p.startswith(PSEUDO):
                pseudo.add(m)
                p = p[len(PSEUDO):]
            if not p:
                raise BadInputError(f"{path}:{i}: empty path for {m} (use '-' for a missing modality)")
            vals[m] = None if p == MISSING else p
        if vals["rgb"] is None:
            raise BadInputError(f"{path}:{i}: every row needs an rgb image")
        if "rgb" in pseudo:
            raise BadInputError(f"{path}:{i}: rgb cannot be pseudo-labelled")
        rows.append(Row(pseudo=frozenset(pseudo), **vals))
    if not rows:
        raise BadInputError(f"{path}: list file has no rows")
    return rows


def write_list(path: str | Path, rows: list[Row]) -> None:
    from .._io import atomic_write_bytes

    atomic_write_bytes(path, "".join("\t".join(r.fields()) + "\n" for r in rows).encode())


# ------------------------------------------------------------------------------------ reading
def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise BadInputError(f"{what} file not found: {path}")
    try:
        im = Image.open(path)
        im.load()
        return im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadInputError(f"{what} file {path} is corrupt or not an image: {str(e)[:120]}") from None


def read_rgb(path: Path) -> np.ndarray:
    im = _open(path, "rgb")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_mask(path: Path) -> np.ndarray:
    im = _open(path, "mask")
    if im.mode not in ("L", "P", "I", "I;16"):
        raise BadInputError(f"mask {path} has mode {im.mode}; expected 8-bit class ids (mode L or P)")
    return np.asarray(im, dtype=np.uint8) if im.mode in ("L", "P") else np.asarray(im).astype(np.uint8)


def read_depth(path: Path, scale: float) -> np.ndarray:
    im = _open(path, "depth")
    if im.mode.startswith("F"):
        arr = np.asarray(im, dtype=np.float32)
    else:
        arr = np.asarray(im).astype(np.float32) / scale
    if not np.isfinite(arr).all():
        raise BadInputError(f"depth {path} contains NaN or Inf values")
    if (arr < 0).any():
        raise BadInputError(f"depth {path} has negative values")
    return arr


# Mid grey (127, 127, 127) in the authors' PNGs (22 % of norm_gt_000433.png) decodes to a vector of length 0.007;
# a real normal has length 1. With the grey mask (an option: FolderDataset normals_mask="grey") anything shorter
# than this is "no normal" (the zero vector, which loss and metrics skip). The default is the authors' mask:
# pixels without depth, grey ones with depth kept as they decode (DenseTorch dev data/datasets.py).
MIN_NORMAL_LENGTH = 0.5


NORMALS_MASKS = ("depth", "grey")


def read_normals(path: Path, size: tuple[int, int] | None = None, mask: str = "grey") -> np.ndarray:
    """(H, W, 3) unit normals in the channel order the authors' network predicts: the inverse of their
    notebook's encoding (ExpNYUD_three.ipynb, "xzy->RGB": R = (n0 + 1) / 2, G = (n1 + 1) / 2,
    B = (1 - n2) / 2, times 255). In the camera frame (x right, y down, z forward) the channels are
    (x, z, y): on their test frame 433 the walls and windows decode to n1 = z ~ -1 (facing the camera) and
    the floor to n2 = y ~ -1 (up). ``mask="grey"``: grey (127, 127, 127) pixels, which decode to no direction,
    are the zero vector (invalid); ``mask="depth"``: every pixel is decoded as it is, and the caller invalidates
    the pixels without depth, as the authors do (FolderDataset)."""
    if mask not in NORMALS_MASKS:
        raise ValueError(f"mask={mask!r}: choose one of {', '.join(NORMALS_MASKS)}")
    im = _open(path, "normals")
    if im.mode != "RGB":
        raise BadInputError(f"normals {path} has mode {im.mode}; expected an 8-bit RGB PNG (the authors' coding: "
                            "R, G, B = the normal's x, z, -y mapped to 0..255)")
    rgb = np.asarray(im, dtype=np.float32)
    if size is not None and rgb.shape[:2] != tuple(size):
        raise BadInputError(f"normals {path} is {rgb.shape[0]}x{rgb.shape[1]}, its rgb frame {size[0]}x{size[1]}")
    n = np.stack([2 * rgb[..., 0] / 255 - 1, 2 * rgb[..., 1] / 255 - 1, 1 - 2 * rgb[..., 2] / 255], axis=-1)
    if mask == "grey":
        n[np.linalg.norm(n, axis=-1) < MIN_NORMAL_LENGTH] = 0.0
    return n


# ------------------------------------------------------------------------------------ writing
def encode_depth(depth: np.ndarray, scale: float) -> np.ndarray:
    if not np.isfinite(depth).all():
        raise ValueError("depth contains NaN or Inf")
    return np.clip(np.round(depth * scale), 0, 65535).astype(np.uint16)


def encode_normals(n: np.ndarray) -> np.ndarray:
    """The authors' PNG coding (the inverse of read_normals); the zero vector (no normal) becomes mid grey."""
    r = (n[..., 0] + 1) * 127.5
    g = (n[..., 1] + 1) * 127.5
    b = (1 - n[..., 2]) * 127.5
    out = np.clip(np.round(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)
    out[np.linalg.norm(n, axis=-1) < MIN_NORMAL_LENGTH] = 127
    return out


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")  # uint16 -> mode I;16, uint8 -> L/RGB
    tmp.replace(path)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    depth_scale: float
    num_classes: int
    depth_cap: float
    class_names: tuple[str, ...] = ()
    eval_resolution: str = "model"  # native: each frame at its own size (KITTI), model: resized to the input size
    depth_source: dict | None = None  # which depth map each split holds (NYUD: rawDepths / in-painted)


def dataset_info(root: Path) -> DatasetInfo:
    from ..registry import KITTI6_CLASSES, NYUD40_CLASSES

    meta = {}
    f = root / "dataset.json"
    if f.is_file():
        try:
            meta = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise BadInputError(f"{f}: invalid JSON ({e})") from None
    name = meta.get("name") or ("kitti" if "kitti" in root.name.lower() else "nyud")
    classes = tuple(meta.get("class_names") or (KITTI6_CLASSES if name == "kitti" else NYUD40_CLASSES))
    scale = float(meta.get("depth_scale", DEPTH_SCALE.get(name, 5000.0)))
    cap = float(meta.get("depth_cap", 80.0 if name == "kitti" else 10.0))
    if not (scale > 0 and math.isfinite(scale)):
        raise BadInputError(f"{f}: depth_scale must be a positive number, got {scale}")
    res = meta.get("eval_resolution", "native" if name == "kitti" else "model")
    if res not in ("native", "model"):
        raise BadInputError(f"{f}: eval_resolution must be 'native' or 'model', got {res!r}")
    return DatasetInfo(name, scale, int(meta.get("num_classes", len(classes))), cap, classes, res,
                       meta.get("depth_source"))
