"""FP32 training and evaluation: one engine that QAT reuses (with its own train/eval switches).

Stages: build data -> build optimiser (encoder / decoder learning rates) -> epochs of
(train, checkpoint, validate). Checkpoints are atomic and hold the optimiser and epoch, so
``--resume`` after a kill at any point continues from the last completed epoch and ends with the
same weights as an uninterrupted run: every random choice (shuffle order, augmentation) is a pure
function of (seed, epoch, index), never of how many batches a process happened to run.

Distributed: under ``torchrun`` (WORLD_SIZE > 1) the engine uses DistributedDataParallel (NCCL on
GPUs, gloo on CPU), a DistributedSampler, all-reduces the metrics, and only rank 0 writes.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .errors import BadInputError, EdgeHydraError
from .losses import multitask_loss
from .metrics import Scoring

ENCODER_PREFIXES = tuple(f"layer{i}." for i in range(1, 9))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 16
    batch_size: int = 16
    # From scratch on CPU, Adam at 2e-3 reached 34.5% mIoU on synthroom in 10 epochs where the paper's
    # SGD (momentum 0.9, which assumed an ImageNet-pretrained encoder) reached 16.7% in 12 epochs.
    lr_encoder: float = 2e-3
    lr_decoder: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-5
    schedule: str = "poly"  # poly (power 0.9), cosine, or constant
    optimizer: str = "adam"  # adam, or sgd (momentum) as in the paper
    lam: float = 0.5
    # the normals term's weight relative to the cross-entropy (weight 1), used where the model predicts normals:
    # the authors' three-task run weighs segm / depth / normals 0.5 / 0.5 / 5.0 (DenseTorch dev,
    # examples/scripts/segm-depth-normals-mbv2-rflw.sh --tasks-loss-weights), normals 10x the cross-entropy
    normals_weight: float = 10.0
    seed: int = 0
    workers: int = 0
    log_every: int = 10
    # Train on random HxW crops of frames at the data's size (None: crops of the data's own size). The authors
    # train on crops and evaluate whole frames (DenseTorch: 400x400 crops of NYUDv2's 640x480 frames); a crop keeps
    # the scale objects have at the evaluated size and costs what a small input costs.
    crop: tuple[int, int] | None = None
    # random scale of a frame before the crop (light-weight-refinenet's config: 0.5-2.0 with 500x500 crops)
    scale: tuple[float, float] = (0.75, 1.5)

    def __post_init__(self):
        lo, hi = (float(v) for v in self.scale)
        if not 0 < lo <= hi:
            raise ValueError(f"scale={self.scale}: give LO,HI with 0 < LO <= HI")
        object.__setattr__(self, "scale", (lo, hi))
        if self.crop is not None:
            crop = tuple(int(v) for v in self.crop)
            if len(crop) != 2 or min(crop) < 8:
                raise ValueError(f"crop={self.crop}: give HxW, each side >= 8 pixels")
            object.__setattr__(self, "crop", crop)
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs}: must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be >= 1")
        for f in ("lr_encoder", "lr_decoder"):
            v = getattr(self, f)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{f}={v}: must be a positive number")
        if self.schedule not in ("poly", "cosine", "constant"):
            raise ValueError(f"schedule={self.schedule!r}: choose poly, cosine or constant")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer={self.optimizer!r}: choose sgd or adam")
        if not (self.normals_weight >= 0 and math.isfinite(self.normals_weight)):
            raise ValueError(f"normals_weight={self.normals_weight}: >= 0 (the authors' three-task run: 10, i.e. "
                             "10x the cross-entropy)")
        if not self.lam >= 0:
            raise ValueError(f"lam={self.lam}: the depth loss weight lambda must be >= 0 (the paper uses 0.5)")


# ---------------------------------------------------------------------------- distributed
def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Initialise the process group when launched by torchrun; a no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist_info()


def is_main() -> bool:
    return dist_info()[0] == 0


def sync_buffers(model: torch.nn.Module) -> None:
    """Average floating-point buffers (BN running statistics) over ranks, so every rank ends an
    epoch with the same model (DDP keeps the parameters in step, not the statistics each rank saw)."""
    _, world = dist_info()
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= world


# ---------------------------------------------------------------------------------- data
class EpochAugmented(Dataset):
    """Applies a TrainAugment with a generator seeded from (seed, epoch, index)."""

    def __init__(self, base, augment, seed: int):
        self.base, self.augment, self.seed, self.epoch = base, augment, seed, 0

    def set_epoch(self, e: int):
        self.epoch = e

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.augment.gen.manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i) % (2 ** 63))
        return self.augment(self.base[i])


class EpochSampler(torch.utils.data.Sampler):
    """Shuffle order that depends only on (seed, epoch): what makes resume exact."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, e: int):
        self.epoch = e

    def __len__(self):
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class EpochShardSampler(EpochSampler):
    """Rank r of W takes perm[r::W] of the single-process order, cut to equal length: step k of W
    ranks with batch b then sees exactly the frames of step k of one process with batch W*b."""

    def __init__(self, n: int, seed: int, rank: int, world: int):
        super().__init__(n, seed)
        self.rank, self.world = rank, world

    def __len__(self):
        return self.n // self.world

    def __iter__(self):
        perm = list(super().__iter__())
        return iter(perm[self.rank::self.world][: len(self)])


def make_loader(ds, batch_size: int, seed: int, shuffle: bool, workers: int = 0, drop_last: bool = False):
    rank, world = dist_info()
    if world > 1:
        sampler = EpochShardSampler(len(ds), seed, rank, world) if shuffle else DistributedSampler(
            ds, num_replicas=world, rank=rank, shuffle=False, drop_last=drop_last)
    else:
        sampler = EpochSampler(len(ds), seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      persistent_workers=False)


# ---------------------------------------------------------------------------- optimiser
def param_groups(model: torch.nn.Module, cfg: TrainConfig):
    enc, dec = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = n.removeprefix("module.")
        (enc if name.startswith(ENCODER_PREFIXES) else dec).append(p)
    return [{"params": enc, "lr": cfg.lr_encoder, "base_lr": cfg.lr_encoder},
            {"params": dec, "lr": cfg.lr_decoder, "base_lr": cfg.lr_decoder}]


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    frac = min(step / max(total, 1), 1.0)
    if cfg.schedule == "poly":
        return (1 - frac) ** 0.9
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    return 1.0


# ------------------------------------------------------------------------------ evaluate
@torch.no_grad()
def _crop_to_labels(outs, image_hw, label_hw):
    """Outputs of a padded frame: upsampled to the padded input, then cropped to the frame (the labels' size)."""
    import torch.nn.functional as F

    res = []
    for o in outs:
        if o.dim() == 4 and tuple(image_hw) != tuple(label_hw):
            o = F.interpolate(o.float(), size=tuple(image_hw), mode="bilinear", align_corners=False)
            o = o[..., :label_hw[0], :label_hw[1]]
        res.append(o)
    return res


def evaluate(forward: Callable, dataset, scoring: Scoring, *, progress=None, limit: int | None = None,
             shard: bool = True, nhwc: bool = False) -> dict:
    """Metrics of any callable ``forward(images) -> tuple of outputs`` over a dataset (or its first ``limit``),
    scored as ``scoring`` says (edgehydra.metrics.Scoring).

    ``nhwc``: frames go to ``forward`` channels-last, for an FP32 model. CPU convolutions then take oneDNN's NHWC
    kernels, 2.7x faster than NCHW frames for hydranet_nyud at 480x640 (1472 -> 551 ms a frame on 2 AMD EPYC Zen 3
    cores; benchmarks/eval_layout.py prints it); the outputs differ by float rounding only (summation order: at most
    7.4e-6 there). Not for a converted int8 program, the int8 reference: there a rounding difference before a
    quantize moves a value one int8 step, and steps add up (3 output steps of segmentation on a third of the pixels
    of the demo's PTQ program), so it is scored on the NCHW frames its figures have always been taken on.

    Frames of different sizes are batched by size. ``scoring.padded``: the dataset pads each frame (PadToMultiple),
    so outputs are upsampled to the padded input and cropped back to the frame before scoring. Under torchrun
    the frames are split over ranks and the metric sums all-reduced (``shard``); a rank scoring a model
    of its own (the per-layer sweep, where each rank quantises other layers) passes ``shard=False``."""
    from .data.datasets import collate_by_size

    m = scoring.metrics()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise BadInputError("evaluation dataset is empty")
    rank, world = dist_info() if shard else (0, 1)
    idx = list(range(rank, n, world))
    subset = torch.utils.data.Subset(dataset, idx)
    loader = DataLoader(subset, batch_size=scoring.batch_size, shuffle=False, collate_fn=collate_by_size)
    task = progress.add_task("evaluate", total=len(idx)) if progress else None
    for groups in loader:
        for batch in groups:
            with torch.no_grad():  # scoring only: no graph (a float() of a tensor that requires grad warns)
                x = batch["image"]
                outs = forward(x.contiguous(memory_format=torch.channels_last) if nhwc else x)
            if scoring.padded:
                outs = _crop_to_labels(outs, batch["image"].shape[-2:], batch["segm"].shape[-2:])
            m.update(dict(zip(scoring.tasks, outs)), batch)
            if progress:
                progress.advance(task, len(batch["image"]))
    if world > 1:
        t = torch.from_numpy(m.as_array())
        dist.all_reduce(t)
        m.load_array(t.numpy().astype(np.float64))
    # plain Python numbers: metrics travel into JSON reports and into resume states that torch.load reads
    # with weights_only=True, which refuses numpy scalars (a QAT --resume failed on exactly that)
    return {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in m.compute().items()}


# ---------------------------------------------------------------------------------- train
@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0
    history: list = field(default_factory=list)


@dataclass(frozen=True)
class FitTask:
    """What is trained and how it is batched: the model's tasks, classes and depth cap (for validation), whether
    the last partial batch is dropped, how many validation frames, and NHWC tensors (oneDNN's convolutions run
    ~25 % faster on them on CPU, measured at 120x160 batch 16)."""

    tasks: tuple[str, ...]
    num_classes: int
    depth_cap: float
    drop_last: bool = False
    val_limit: int | None = None
    channels_last: bool = False
    val_padded: bool = False  # the validation frames are padded (native-resolution datasets): crop outputs back


@dataclass(frozen=True)
class FitHooks:
    """Where a stage plugs into the loop: ``save(state, optimizer)`` writes a checkpoint (rank 0 only);
    ``set_train``/``set_eval`` switch modes (exported QAT graphs need torchao's helpers); ``forward`` replaces the
    model's call; ``epoch_hook(epoch)`` runs before each epoch (QAT freezes BN and observers there);
    ``extra_loss(batch, outputs)`` adds a term (distillation)."""

    save: Callable | None = None
    set_train: Callable = torch.nn.Module.train
    set_eval: Callable = torch.nn.Module.eval
    forward: Callable | None = None
    epoch_hook: Callable | None = None
    extra_loss: Callable | None = None


def fit(model: torch.nn.Module, train_ds, cfg: TrainConfig, task: FitTask, hooks: FitHooks = FitHooks(), *,
        val_ds=None, resume: dict | None = None, progress=None) -> TrainState:
    """Train ``model`` in place, resuming from ``resume`` (optimizer, epoch, step, history) where given."""
    rank, world = dist_info()
    torch.manual_seed(cfg.seed)
    if task.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=True)
    forward = hooks.forward or net
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(param_groups(model, cfg), weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(param_groups(model, cfg), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    state = TrainState()
    if resume:
        opt.load_state_dict(resume["optimizer"])
        state = TrainState(resume["epoch"], resume["step"], list(resume.get("history", [])))
    loader = make_loader(train_ds, cfg.batch_size, cfg.seed, shuffle=True, workers=cfg.workers,
                         drop_last=task.drop_last)
    if len(loader) == 0:
        raise BadInputError(f"training set of {len(train_ds)} frames gives no batch of {cfg.batch_size} (drop_last)")
    for epoch in range(state.epoch, cfg.epochs):
        for obj in (train_ds, loader.sampler):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        if hooks.epoch_hook:
            hooks.epoch_hook(epoch)
        hooks.set_train(model)
        rec = _epoch(_Loop(model, forward, loader, opt, cfg, task, hooks), state, epoch, progress)
        if world > 1:
            sync_buffers(model)
        if val_ds is not None:
            hooks.set_eval(model)
            rec["val"] = evaluate(lambda x: model(x), val_ds, Scoring(task.tasks, task.num_classes, task.depth_cap,
                                                                      padded=task.val_padded), limit=task.val_limit,
                                 nhwc=task.channels_last)  # the FP32 model trains NHWC; a QAT graph is scored NCHW
            rec["val"].pop("iou_per_class", None)
        state.epoch = epoch + 1
        state.history.append(rec)
        if hooks.save is not None and rank == 0:
            hooks.save(state, opt)
        if world > 1:
            dist.barrier()
    hooks.set_eval(model)
    return state


@dataclass(frozen=True)
class _Loop:
    """What every step of a fit uses."""

    model: torch.nn.Module
    forward: Callable
    loader: object
    opt: torch.optim.Optimizer
    cfg: TrainConfig
    task: FitTask
    hooks: FitHooks


def _epoch(loop: _Loop, state: TrainState, epoch: int, progress) -> dict:
    """One epoch of steps; the epoch's record (mean losses, images per second)."""
    forward, loader, opt, cfg, task, hooks = loop.forward, loop.loader, loop.opt, loop.cfg, loop.task, loop.hooks
    rank, world = dist_info()
    total = cfg.epochs * len(loader)
    bar = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader) * cfg.batch_size * world,
                            info="") if progress and rank == 0 else None
    t0, seen, sums = time.perf_counter(), 0, {}
    for batch in loader:
        f = lr_factor(cfg, state.step, total)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * f
        x = batch["image"].contiguous(memory_format=torch.channels_last) if task.channels_last else batch["image"]
        outs = forward(x)
        loss, parts = multitask_loss(outs, batch, task.tasks, cfg.lam, cfg.normals_weight)
        if hooks.extra_loss is not None:
            xl, xparts = hooks.extra_loss(batch, outs)
            loss = loss + xl
            parts.update(xparts)
        if not torch.isfinite(loss):
            raise EdgeHydraError(f"training diverged: loss is {float(loss)} at epoch {epoch + 1}, step {state.step} "
                                 "(the last good checkpoint is kept; lower --lr)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state.step += 1
        n = len(batch["image"])
        seen += n
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v * n
        if bar is not None:
            ips = seen * world / max(time.perf_counter() - t0, 1e-9)
            progress.update(bar, advance=n * world, info=f"loss {float(loss.detach()):.3f} seg {parts['seg']:.3f} "
                                                          f"depth {parts['depth']:.3f} {ips:.1f} img/s")
    return {"epoch": epoch + 1, **{k: v / max(seen, 1) for k, v in sums.items()},
            "images_per_s": seen * world / max(time.perf_counter() - t0, 1e-9)}


def config_dict(cfg) -> dict:
    return asdict(cfg)
