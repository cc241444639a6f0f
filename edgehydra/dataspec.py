"""The data spec: which dataset, split sizes, seed and input size a stage runs on, resolved in one place.

One resolver with one precedence, in the manner of timm's ``resolve_data_config``; a later source wins
field by field:

    dataset default  <  registered variant  <  checkpoint  <  run record  <  command line

- dataset default: ``DEFAULT_SIZE`` (synthroom renders at 120x160 for CPU training; NYUDv2 480x640;
  KITTI 352x1216, the authors' crop);
- registered variant: the model's ``HydraConfig`` (its ``input_size`` and ``dataset``), where a stage
  names one;
- checkpoint: the data settings an edgehydra checkpoint records in its provenance (none for a published
  checkpoint);
- run record: ``RUN/run.json``'s ``data`` (what an earlier stage of the run used);
- command line: ``--dataset``, ``--size``, frame counts.

A source that names another dataset than the ones below it keeps their input size (the size changes only
when asked) but not their frame counts, which counted frames of that other dataset. Every stage that opens
data asks this module; none re-derives a size.

The input size a stage *runs* at (``resolve_size``) extends the same order with two sources a stage may hold
beside its data; the first present wins:

    command line  >  program  >  device budget  >  data spec  >  registered variant

- program: a quantised program (or an artifact's source) is traced at one size;
- device budget: the size a profile's budgets are stated at (``check``, the mixed search, ``apply``);
- data spec: ``resolve_data_spec``'s size; registered variant: the model's ``input_size``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError

DEFAULT_MODEL = {"synthroom": "hydranet_small", "nyud": "hydranet_nyud", "kitti": "hydranet_kitti"}
DEFAULT_SIZE = {"synthroom": (120, 160), "nyud": (480, 640), "kitti": (352, 1216)}
FALLBACK_SIZE = (240, 320)  # a dataset folder of the user's own, when nothing else names a size
_FIELDS = ("dataset", "size", "frames", "val_frames", "seed")


@dataclass(frozen=True)
class DataSpec:
    dataset: str
    size: tuple[int, int]
    frames: int | None = None
    val_frames: int | None = None
    seed: int = 0

    def __post_init__(self):
        if not self.dataset:
            raise ValueError("dataset: empty; use synthroom, nyud, kitti or a folder in the shared layout")
        size = tuple(int(v) for v in self.size)
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"size={self.size}: two sides of at least 32 pixels, e.g. (240, 320)")
        object.__setattr__(self, "size", size)
        for k in ("frames", "val_frames"):
            v = getattr(self, k)
            if v is not None and int(v) < 1:
                raise ValueError(f"{k}={v}: at least 1, or None for the whole split")

    def to_dict(self) -> dict:
        """The form run records, checkpoints and manifests carry (``data``)."""
        return {"dataset": self.dataset, "size": list(self.size), "frames": self.frames,
                "val_frames": self.val_frames, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict, where: str = "data settings") -> "DataSpec":
        try:
            return cls(**{k: d[k] for k in _FIELDS if k in d})
        except (TypeError, ValueError) as e:
            raise BadInputError(f"{where}: invalid data settings ({e})") from None

    def at(self, size) -> "DataSpec":
        return DataSpec(self.dataset, tuple(size), self.frames, self.val_frames, self.seed)


def resolve_data_spec(*, variant=None, checkpoint: dict | None = None, run: dict | None = None,
                      cli: dict | None = None, where: str = "") -> DataSpec:
    """Merge the sources in precedence order (module docstring). ``variant`` is a HydraConfig (or None);
    the others are dicts of whichever fields they hold (None or missing: absent)."""
    layers = []
    if variant is not None:
        layers.append({"dataset": getattr(variant, "dataset", None) if getattr(variant, "dataset", "") in DEFAULT_SIZE
                       else None, "size": getattr(variant, "input_size", None)})
    layers += [checkpoint or {}, run or {}, cli or {}]
    spec: dict = {}
    for src in layers:
        src = {k: v for k, v in src.items() if k in _FIELDS and v is not None}
        if src.get("dataset") and spec.get("dataset") and src["dataset"] != spec["dataset"]:
            # another dataset: its frame counts and seed are not this one's; the size stays unless given
            spec = {k: v for k, v in spec.items() if k == "size"}
        spec.update(src)
    if not spec.get("dataset"):
        raise BadInputError(f"{where + ': ' if where else ''}no dataset recorded: pass --dataset")
    spec.setdefault("size", DEFAULT_SIZE.get(spec["dataset"], FALLBACK_SIZE))
    return DataSpec.from_dict(spec, where or "data settings")


def resolve_size(*, cli=None, program=None, device=None, data=None, variant=None) -> tuple[int, int]:
    """The input size a stage runs at: the first of its sources present, in the order of the module docstring
    (command line > program > device budget > data spec > registered variant). Each source is a size (H, W) or
    None; ``device`` may be a Profile, ``data`` a data spec dict or DataSpec, ``variant`` a model config."""
    device = getattr(getattr(device, "budgets", None), "input_size", device)
    data = data.get("size") if isinstance(data, dict) else getattr(data, "size", data)
    variant = getattr(variant, "input_size", variant)
    for name, src in (("command line", cli), ("program", program), ("device budget", device), ("data spec", data),
                      ("registered variant", variant)):
        if src is not None and len(src):
            size = tuple(int(v) for v in src)
            if len(size) != 2 or min(size) < 32:
                raise BadInputError(f"input size {src} (from the {name}): two sides of at least 32 pixels, e.g. 240x320")
            return size
    raise BadInputError("no input size: pass --size HxW")


def recorded_data(checkpoint: Path) -> dict | None:
    """The data settings a checkpoint records (edgehydra's own), or None (a published checkpoint)."""
    import torch

    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved = (raw.get("provenance") or {}).get("data") if isinstance(raw, dict) else None
    return dict(saved) if saved else None


def data_settings(dataset: str, size=None, frames=None, val_frames=None, seed=0) -> dict:
    """A new spec from the command line alone (``train``), as the dict records carry."""
    return resolve_data_spec(cli={"dataset": dataset, "size": size, "frames": frames, "val_frames": val_frames,
                                  "seed": seed}).to_dict()


def run_data_settings(checkpoint: Path, dataset: str | None, size=None, base: dict | None = None) -> dict:
    """A later stage's spec: the run record ``base`` (or, without one, the checkpoint's), then the command line."""
    return resolve_data_spec(checkpoint=None if base else recorded_data(checkpoint), run=base,
                             cli={"dataset": dataset, "size": size}, where=str(checkpoint)).to_dict()


def open_split(ds: dict, split: str, transform=None, normals_mask: str = "depth"):
    """Open the dataset a spec names. synthroom frames are rendered at the spec's size."""
    from .data import open_dataset

    frames = ds["frames"] if split == "train" else ds.get("val_frames")
    return open_dataset(ds["dataset"], split, size=tuple(ds["size"]), frames=frames, seed=ds.get("seed", 0),
                        transform=transform, normals_mask=normals_mask)


@dataclass(frozen=True)
class EvalView:
    """How a stage scores a model on a split: the transform, whether outputs are cropped back to the labels
    (``padded``), and the protocol in words for the stage's report."""

    transform: object
    padded: bool
    protocol: str


def eval_view(val, size, fixed: bool) -> EvalView:
    """The one evaluation path. A dataset that records native-resolution evaluation (KITTI's dataset.json:
    frames of several sizes) is scored at each frame's own size, never stretched: padded to a multiple of 32 for
    a model that takes any size, padded to ``size`` for a program or artifact traced at it (``fixed``); the
    outputs are cropped back to the frame. Any other dataset is resized to ``size`` (labels stay at their own
    size, outputs are upsampled to them). ``eval`` runs the same path."""
    from .data import PadTo, PadToMultiple, Resize

    native = getattr(getattr(val, "info", None), "eval_resolution", "model") == "native"
    if native and not fixed:
        return EvalView(PadToMultiple(32), True, "native (padded to a multiple of 32, cropped back)")
    if native:
        return EvalView(PadTo(size), True, f"native (padded to {size[0]}x{size[1]}, cropped back)")
    return EvalView(Resize(size), False, f"resized to {size[0]}x{size[1]}")


def open_eval_split(ds: dict, size, fixed: bool, normals_mask: str = "depth"):
    """The validation split as ``eval_view`` scores it: (dataset with its transform set, EvalView)."""
    val = open_split(ds, "val", normals_mask=normals_mask)
    view = eval_view(val, tuple(size), fixed)
    val.transform = view.transform
    return val, view
