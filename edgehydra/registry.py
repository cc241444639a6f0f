"""Registered HydraNet variants (timm-style: a name maps to a config factory)."""
from __future__ import annotations

from typing import Callable

from .model import HydraConfig, HydraNet

NYUD40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop",
)  # Gupta et al. 2013 via classMapping40.mat (its "refridgerator" spelling fixed)
KITTI6_CLASSES = ("sky", "building", "road", "sidewalk", "vegetation", "car")

_VARIANTS: dict[str, Callable[[], HydraConfig]] = {}


def register(name: str):
    def deco(fn):
        _VARIANTS[name] = fn
        return fn

    return deco


@register("hydranet_nyud")
def _nyud() -> HydraConfig:
    return HydraConfig(num_classes=40, tasks=("segm", "depth"), class_names=NYUD40_CLASSES)


@register("hydranet_nyud_normals")
def _nyud_normals() -> HydraConfig:
    return HydraConfig(num_classes=40, tasks=("segm", "depth", "normals"), class_names=NYUD40_CLASSES)


@register("hydranet_kitti")
def _kitti() -> HydraConfig:
    return HydraConfig(num_classes=6, class_names=KITTI6_CLASSES, input_size=(350, 1200), depth_cap=80.0, dataset="kitti")


@register("hydranet_nyud_kitti")
def _nyud_kitti() -> HydraConfig:
    return HydraConfig(num_classes=46, class_names=NYUD40_CLASSES + KITTI6_CLASSES, dataset="nyud+kitti")


@register("hydranet_tiny")
def _tiny() -> HydraConfig:
    """Same topology at ~1/100 of the compute: for tests and the --fast demo."""
    enc = ((1, 8, 1, 1), (4, 12, 1, 2), (4, 16, 2, 2), (4, 24, 1, 2), (4, 32, 1, 1), (4, 48, 1, 2), (4, 64, 1, 1))
    return HydraConfig(num_classes=40, encoder=enc, stem_channels=16, decoder_channels=32,
                       class_names=NYUD40_CLASSES, input_size=(120, 160), dataset="synthroom")


@register("hydranet_small")
def _small() -> HydraConfig:
    """Half-width decoder: the default for CPU training on synthroom within minutes."""
    enc = ((1, 16, 1, 1), (6, 24, 1, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1), (6, 160, 1, 2), (6, 320, 1, 1))
    return HydraConfig(num_classes=40, encoder=enc, decoder_channels=64, class_names=NYUD40_CLASSES,
                       input_size=(240, 320), dataset="synthroom")


def list_models() -> list[str]:
    return sorted(_VARIANTS)


def model_config(name: str, **overrides) -> HydraConfig:
    if name not in _VARIANTS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    cfg = _VARIANTS[name]()
    return cfg.replace(**overrides) if overrides else cfg


def create_model(name: str, **overrides) -> HydraNet:
    """``create_model("hydranet_nyud", num_classes=13)``: any class count or task set works."""
    base = model_config(name)
    if "num_classes" in overrides and "class_names" not in overrides and overrides["num_classes"] != base.num_classes:
        overrides = {**overrides, "class_names": ()}  # the variant's names no longer fit
    return HydraNet(base.replace(**overrides) if overrides else base)
