"""Checkpoints: the published multi-task-refinenet format, DenseTorch's layout, and our native one.

All loading goes through ``torch.load(weights_only=True)``: a pickle that would build arbitrary
objects (and so could run code) is refused, never executed.
"""
from __future__ import annotations

import io
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import torch

from . import __version__
from ._io import atomic_path, sha256_path
from .errors import BadInputError
from .model import HydraConfig, HydraNet, _HEAD_NAMES
from .registry import KITTI6_CLASSES, NYUD40_CLASSES, model_config

NATIVE_FORMAT = "edgehydra-checkpoint/1"

# DenseTorch: module.1.stem_convs.{0..5} = conv8..conv3, crp_blocks.{0..3} = crp4..crp1,
# adapt_convs.{0..2} = conv_adapt4..2, heads.k.0 = pre_X, heads.k.2 = X (heads: segm, depth, normals).
_DT_STEM = ("conv8", "conv7", "conv6", "conv5", "conv4", "conv3")
_DT_CRP = ("crp4", "crp3", "crp2", "crp1")
_DT_ADAPT = ("conv_adapt4", "conv_adapt3", "conv_adapt2")
_DT_HEADS = ("segm", "depth", "normals")


def _read(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise BadInputError(f"checkpoint {path} is a folder; pass the .pt/.ckpt file inside it")
    if path.stat().st_size == 0:
        raise BadInputError(f"checkpoint {path} is empty (0 bytes)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global outside torch's allow-list: that is how a pickle
        # that would run code (os.system, eval, ...) ends up here, unexecuted.
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise BadInputError(
            f"refusing to load {path}: it is not a plain weights file (unsafe pickle content, never executed). {first[:160]}"
        ) from None
    except Exception as e:  # noqa: BLE001 - any other failure of the (safe) unpickler means junk bytes
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInputError(f"{path} is not a readable PyTorch checkpoint (truncated or another format): {msg[:160]}") from None
    if not isinstance(obj, dict):
        raise BadInputError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def _strip_prefix(sd: dict) -> dict:
    if sd and all(k.startswith("module.") for k in sd):
        return OrderedDict((k[len("module."):], v) for k, v in sd.items())
    return sd


def from_densetorch(sd: dict) -> OrderedDict:
    """Rename a DenseTorch state dict (``0.`` encoder, ``1.`` decoder) to multi-task-refinenet names."""
    out = OrderedDict()
    n_heads = len({m.group(1) for k in sd if (m := re.match(r"1\.heads\.(\d+)\.", k))})
    for k, v in sd.items():
        if k.startswith("0."):
            out[k[2:]] = v
            continue
        m = re.match(r"1\.(stem_convs|crp_blocks|adapt_convs|heads)\.(\d+)\.(.*)$", k)
        if not m:
            raise BadInputError(f"DenseTorch checkpoint: unexpected key {k!r}")
        kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "stem_convs":
            out[f"{_DT_STEM[i]}.{rest}"] = v
        elif kind == "crp_blocks":
            out[f"{_DT_CRP[i]}.0.{rest}" if not rest.startswith("0.") else f"{_DT_CRP[i]}.{rest}"] = v
        elif kind == "adapt_convs":
            out[f"{_DT_ADAPT[i]}.{rest}"] = v
        else:
            if i >= n_heads or i >= len(_DT_HEADS):
                raise BadInputError(f"DenseTorch checkpoint: head index {i} out of range")
            layer, param = rest.split(".", 1)
            pre, last = _HEAD_NAMES[_DT_HEADS[i]]
            name = {"0": pre, "2": last}.get(layer)
            if name is None:
                raise BadInputError(f"DenseTorch checkpoint: unexpected head layer in {k!r}")
            out[f"{name}.{param}"] = v
    return out


def infer_config(sd: dict, base: HydraConfig | None = None) -> HydraConfig:
    """Number of classes and tasks from the tensors; widths from a base config (default: NYUD)."""
    if "segm.weight" not in sd:
        raise BadInputError("checkpoint has no 'segm.weight': not a HydraNet state dict "
                            f"(first keys: {', '.join(list(sd)[:3])})")
    num_classes = sd["segm.weight"].shape[0]
    tasks = ("segm", "depth", "normals") if "normal.weight" in sd else ("segm", "depth")
    decoder = sd["segm.weight"].shape[1]
    if base is None:
        names = {40: NYUD40_CLASSES, 6: KITTI6_CLASSES, 46: NYUD40_CLASSES + KITTI6_CLASSES}.get(num_classes, ())
        kw = dict(num_classes=num_classes, tasks=tasks, class_names=names)
        if num_classes == 6:
            kw.update(input_size=(350, 1200), depth_cap=80.0, dataset="kitti")
        base = model_config("hydranet_nyud").replace(**kw)
        if decoder != base.decoder_channels:
            raise BadInputError(f"checkpoint decoder width {decoder} is not the published 256; "
                                "it was not saved by edgehydra (native checkpoints carry their config)")
        return base
    return base.replace(num_classes=num_classes, tasks=tasks,
                        class_names=base.class_names if len(base.class_names) == num_classes else ())


def _check_keys(model: HydraNet, sd: dict, path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:4]}{' ...' if len(missing) > 4 else ''} ({len(missing)} in all)")
        if unexpected:
            parts.append(f"unknown keys {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''} ({len(unexpected)} in all)")
        raise BadInputError(f"{path}: state dict does not fit the model: " + "; ".join(parts))
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise BadInputError(f"{path}: {k} has shape {tuple(sd[k].shape)}, the model expects {tuple(v.shape)}")


def load_checkpoint(path: str | Path, expect_classes: int | None = None,
                    expect_tasks: tuple[str, ...] | None = None) -> tuple[HydraNet, dict]:
    """Load any supported checkpoint; return (model in eval mode, info dict with provenance)."""
    obj = _read(path)
    info: dict = {"path": str(path), "sha256": sha256_path(path)}
    if obj.get("format") == NATIVE_FORMAT:
        try:
            cfg = HydraConfig.from_dict(obj["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise BadInputError(f"{path}: invalid model config in checkpoint: {e}") from None
        sd = obj.get("state_dict")
        info.update(format="native", provenance=obj.get("provenance", {}), epoch=obj.get("epoch"))
    else:
        sd = obj.get("state_dict", obj.get("model", obj))
        if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise BadInputError(f"{path} is not a checkpoint: no state dict of tensors inside")
        sd = _strip_prefix(OrderedDict(sd))
        if any(k.startswith("1.stem_convs.") for k in sd):
            sd = from_densetorch(sd)
            info["format"] = "densetorch"
        else:
            info["format"] = "multi-task-refinenet"
        cfg = infer_config(sd)
        info["provenance"] = {}
    if not isinstance(sd, dict):
        raise BadInputError(f"{path}: checkpoint has no state_dict")
    if expect_classes is not None and cfg.num_classes != expect_classes:
        raise BadInputError(f"{path}: segmentation head has {cfg.num_classes} classes where {expect_classes} were asked for")
    if expect_tasks is not None and tuple(cfg.tasks) != tuple(expect_tasks):
        raise BadInputError(f"{path}: checkpoint has tasks {list(cfg.tasks)} where {list(expect_tasks)} were asked for")
    model = HydraNet(cfg)
    _check_keys(model, sd, path)
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model, info


def save_checkpoint(model: HydraNet, path: str | Path, provenance: dict | None = None, **extra) -> Path:
    """Native format: weights + config + provenance, written atomically. Loads with weights_only=True."""
    payload = {
        "format": NATIVE_FORMAT,
        "edgehydra_version": __version__,
        "config": model.config.to_dict(),
        "state_dict": model.state_dict(),
        "provenance": provenance or {},
        **extra,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path
