"""The FP32 stage: `edgehydra train` into a run folder.

    runs/NAME/fp32.pt            native checkpoint (weights, config, provenance, optimiser, epoch)
    runs/NAME/fp32_metrics.json  validation metrics of the FP32 model
    runs/NAME/train.json         training settings and per-epoch history
    runs/NAME/ptq/ qat/ export/ bench/ report/   later stages
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from . import __version__
from ._io import atomic_write_json
from .checkpoint import load_checkpoint, save_checkpoint
from .data import TrainAugment
from .dataspec import DEFAULT_MODEL, open_eval_split, open_split
from .errors import BadInputError
from .run import Run
from .registry import create_model
from .metrics import Scoring
from .train import EpochAugmented, FitHooks, FitTask, TrainConfig, evaluate, fit, is_main

def train_run(out: Path, ds: dict, model_name: str | None, cfg: TrainConfig, *, resume: bool = False,
              encoder_weights: Path | None = None, progress=None, console=None) -> dict:
    """The FP32 stage: train ``model_name`` on the data spec ``ds`` (``data_settings``: dataset, size, frames,
    seed, as the command line resolved it) with ``cfg``; OUT/fp32.pt every epoch, OUT/fp32_metrics.json at the end."""
    out = Path(out)
    ckpt_path = Run(out).fp32
    dataset = ds["dataset"]
    crop = cfg.crop or tuple(ds["size"])  # refused before any work: a crop is a part of a frame
    if crop[0] > ds["size"][0] or crop[1] > ds["size"][1]:
        raise BadInputError(f"--crop {crop[0]}x{crop[1]} is larger than the frames ({ds['size'][0]}x{ds['size'][1]}); "
                            "a crop is a part of a frame at --size")
    model_name = model_name or DEFAULT_MODEL.get(dataset, "hydranet_nyud")
    resume_state = None
    if resume:
        if not ckpt_path.is_file():
            raise BadInputError(f"--resume: no checkpoint at {ckpt_path}; run without --resume to start")
        model, info = load_checkpoint(ckpt_path)
        raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = raw.get("train", {})
        if saved.get("config") != asdict(cfg) or saved.get("data") != ds:
            raise BadInputError(f"--resume: {ckpt_path} was trained with other settings "
                                f"({saved.get('config')}, {saved.get('data')}); use the same options or a new --out")
        resume_state = {"optimizer": raw["optimizer"], "epoch": raw["epoch"], "step": raw["step"],
                        "history": saved.get("history", [])}
        if raw["epoch"] >= cfg.epochs and console:
            console.print(f"{ckpt_path} already holds all {cfg.epochs} epochs")
    else:
        torch.manual_seed(cfg.seed)  # the initial weights are part of what --seed fixes
        model = create_model(model_name, input_size=tuple(ds["size"]), dataset=dataset)
    pretrained = None
    if encoder_weights is not None:
        if resume:
            raise BadInputError("--encoder-weights starts a training; with --resume the checkpoint already holds them")
        from .pretrained import load_encoder

        pretrained = load_encoder(model, Path(encoder_weights))
        if console:
            console.print(f"encoder from {encoder_weights} ({pretrained['layout']} layout): {pretrained['matched']} "
                          f"tensors matched, {len(pretrained['identity_expand_convs'])} expand conv(s) set to identity, "
                          f"{len(pretrained['unused_in_file'])} unused key(s) in the file")
    train_ds = open_split(ds, "train")
    train_ds = EpochAugmented(train_ds, TrainAugment(crop, scale=cfg.scale), seed=cfg.seed)
    val_ds, view = open_eval_split(ds, ds["size"], fixed=False)  # the model takes any size: eval's path
    num_classes = model.config.num_classes
    if getattr(val_ds, "num_classes", num_classes) != num_classes:
        raise BadInputError(f"dataset {dataset} has {val_ds.num_classes} classes, model {model_name} has {num_classes}")
    cap = getattr(val_ds, "depth_cap", model.config.depth_cap)
    provenance = {"trained_on": dataset, "data": ds, "model": model_name, "edgehydra_version": __version__}
    if pretrained:
        provenance["encoder_weights"] = {k: v for k, v in pretrained.items() if k != "unused_in_file"}

    def save(state, opt):
        save_checkpoint(model, ckpt_path, provenance=provenance, optimizer=opt.state_dict(), epoch=state.epoch,
                        step=state.step, train={"config": asdict(cfg), "data": ds, "history": state.history})
        atomic_write_json(Run(out).train_log, {"model": model_name, "config": asdict(cfg), "data": ds,
                                                "history": state.history})

    state = fit(model, train_ds, cfg, FitTask(model.config.tasks, num_classes, cap, drop_last=True, channels_last=True),
                FitHooks(save=save), resume=resume_state, progress=progress)
    metrics = evaluate(lambda x: model(x), val_ds, Scoring(model.config.tasks, num_classes, cap, padded=view.padded),
                       progress=progress, nhwc=True)
    if is_main():
        atomic_write_json(Run(out).fp32_metrics, {"dataset": ds, "split": "val", "frames": len(val_ds),
                                                      "protocol": view.protocol, "metrics": metrics})
    return {"metrics": metrics, "epochs": state.epoch, "history": state.history, "checkpoint": str(ckpt_path)}
