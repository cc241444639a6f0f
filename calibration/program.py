"""The quantised program: a converted pt2e graph saved as a ``torch.export`` .pt2 with its metadata.

It is the input of every exporter. The .pt2 carries ``edgehydra.json`` (model config, recipe,
input size, calibration set, stage, source checkpoint hash, the quantizer's report), so an
artifact can always say exactly what it was made from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgehydra.records import stamp, validate
from edgehydra._io import atomic_path, sha256_path
from edgehydra.errors import BadInputError
from edgehydra.model import HydraConfig

from .recipe import Recipe

META = "edgehydra.json"
MAX_BATCH = 64


def dynamic_batch_export(module, size, batch: int = 2):
    """torch.export with a dynamic batch dimension: the graph does not pin the batch it was traced with,
    so the last partial batch of an epoch (or batch 1 at deployment) runs."""
    from torch.export import Dim, export

    x = torch.zeros(batch, 3, *size)
    return export(module, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=MAX_BATCH)},))


@dataclass
class QuantisedProgram:
    module: torch.nn.Module
    config: HydraConfig
    recipe: Recipe
    size: tuple[int, int]
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    def __call__(self, x):
        return self.module(x)


def save_program(module, path: str | Path, config: HydraConfig, recipe: Recipe, size, meta: dict) -> Path:
    ep = dynamic_batch_export(module, size)
    payload = stamp("program", {"config": config.to_dict(), "recipe": recipe.to_dict(), "size": list(size), **meta})
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.export.save(ep, str(tmp), extra_files={META: json.dumps(payload, default=str)})
    return path


def load_program(path: str | Path) -> QuantisedProgram:
    from edgehydra.quiet import quiet_imports

    quiet_imports()
    import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops the graph uses)

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"quantised program not found: {path}")
    import zipfile

    extra = {META: ""}
    if not zipfile.is_zipfile(path):  # a .pt2 is a zip archive; torch logs a 12-line traceback before failing on one
        raise BadInputError(f"{path} is not a readable torch.export program (not a complete .pt2 archive: "
                            "truncated or another format)")
    import logging

    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.ERROR)  # its warning-level traceback would precede our one-line error
    try:
        ep = torch.export.load(str(path), extra_files=extra)
    except Exception as e:  # noqa: BLE001 - any failure means the file is not a program we wrote
        raise BadInputError(f"{path} is not a readable torch.export program: {str(e).splitlines()[0][:160]}") from None
    finally:
        export_log.setLevel(level)
    if not extra[META]:
        raise BadInputError(f"{path} has no {META}: not written by edgehydra")
    try:
        meta = validate("program", json.loads(extra[META]), path)
    except json.JSONDecodeError as e:
        raise BadInputError(f"{path}: damaged {META} ({e.msg})") from None
    meta.pop("schema", None)
    cfg = HydraConfig.from_dict(meta.pop("config"))
    recipe = Recipe.from_dict(meta.pop("recipe"))
    size = tuple(meta.pop("size"))
    meta["sha256"] = sha256_path(path)
    return QuantisedProgram(ep.module(), cfg, recipe, size, meta, path)


def export_stage(model: torch.nn.Module, size, train: bool = False) -> torch.fx.GraphModule:
    """The FP32 model as a pre-dispatch graph (eval mode for PTQ, train mode for QAT)."""
    model.train(train)
    try:
        return dynamic_batch_export(model, size).module()
    finally:
        model.eval()
