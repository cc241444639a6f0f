"""`edgehydra train`, `eval`, `predict`."""
from __future__ import annotations

from pathlib import Path

import click

from ._common import SIZE, console
from ._progress import progress_bar


def metrics_table(title: str, columns: dict[str, dict]):
    """columns: name -> metrics dict; rows are the headline metrics."""
    from rich.table import Table

    from edgehydra.metrics import HEADLINE

    t = Table(title=title)
    t.add_column("metric")
    for c in columns:
        t.add_column(c, justify="right")
    for k in HEADLINE:
        if any(k in m for m in columns.values()):
            t.add_row(k, *[f"{m[k]:.4f}" if isinstance(m.get(k), float) else "-" for m in columns.values()])
    return t


@click.command()
@click.option("--dataset", default="synthroom", show_default=True, help="synthroom, nyud, kitti, or a folder in the shared layout.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder (e.g. runs/NAME).")
@click.option("--model", "model_name", default=None, help="Registered variant; default per dataset (synthroom: hydranet_small).")
@click.option("--size", type=SIZE, default=None, help="Frame HxW the model is trained and evaluated at (synthroom default 120x160).")
@click.option("--crop", type=SIZE, default=None,
              help="Train on random HxW crops of the --size frames (the authors' way: objects keep the scale they have "
                   "at --size, a step costs what a small input costs). Default: crops of the frame's size.")
@click.option("--frames", type=click.IntRange(1), default=None, help="synthroom training frames (default 1000).")
@click.option("--val-frames", type=click.IntRange(1), default=None, help="synthroom validation frames (default 100).")
@click.option("--epochs", type=click.IntRange(1), default=16, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--lr", type=float, default=None, help="Set both learning rates.")
@click.option("--lr-encoder", type=float, default=2e-3, show_default=True)
@click.option("--lr-decoder", type=float, default=2e-3, show_default=True)
@click.option("--schedule", type=click.Choice(["poly", "cosine", "constant"]), default="poly", show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="adam", show_default=True,
              help="adam trains from scratch ~2x faster than the paper's SGD (which assumed an ImageNet encoder).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--lam", type=float, default=0.5, show_default=True,
              help="Depth loss weight: loss = CE + LAM * berHu (the paper's lambda).")
@click.option("--normals-weight", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Three-task models: loss += W * (1 - cos) on normals; the authors' 0.5/0.5/5.0 is 10x the CE.")
@click.option("--encoder-weights", type=click.Path(dir_okay=False), default=None,
              help="ImageNet MobileNet-v2 state dict (torchvision or timm keys) to start the encoder from.")
@click.option("--resume", is_flag=True, help="Continue from OUT/fp32.pt.")
def train(dataset, out, model_name, size, crop, frames, val_frames, epochs, batch_size, lr, lr_encoder, lr_decoder,
          schedule, optimizer, seed, lam, normals_weight, encoder_weights, resume):
    """Train an FP32 HydraNet; writes OUT/fp32.pt every epoch and OUT/fp32_metrics.json at the end."""
    from edgehydra.dataspec import data_settings
    from edgehydra.fp32_stage import train_run
    from edgehydra.train import TrainConfig, init_distributed, is_main

    init_distributed()
    try:
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr_encoder=lr or lr_encoder, lr_decoder=lr or lr_decoder,
                          schedule=schedule, optimizer=optimizer, seed=seed, lam=lam, normals_weight=normals_weight, crop=crop)
    except ValueError as e:
        raise click.UsageError(str(e))
    c = console()
    with progress_bar() as p:
        res = train_run(Path(out), data_settings(dataset, size, frames, val_frames, cfg.seed), model_name, cfg,
                        resume=resume, encoder_weights=encoder_weights, progress=p if is_main() else None, console=c)
    if is_main():
        c.print(metrics_table(f"FP32 on {dataset} (val)", {"fp32": res["metrics"]}))
        c.print(f"checkpoint: {res['checkpoint']}")


# The paper's figures (Nekrasov et al., ICRA 2019, Tables I-II; joint segmentation + depth, MobileNet-v2 HydraNet)
PAPER = {"nyud": {"miou": 42.0, "rmse": 0.56, "source": "NYUDv2 test (654 frames), 40 classes, raw depth"},
         "kitti": {"miou": 87.0, "rmse": 3.45, "source": "KITTI, 6 classes, native resolution; depth on the Eigen "
                                                          "split's convention: Garg crop, 0.001-80 m, per-image mean"}}
# How `--protocol paper` scores depth per dataset: KITTI as every Eigen-split result the paper's KITTI table
# compares against (monodepth evaluate_kitti.py, monodepth2 evaluate_depth.py: Garg crop, 1e-3 < gt < 80 m,
# prediction clipped to that range, each image's errors then the mean over images); NYUDv2 as the authors
# score it (DenseTorch: every valid pixel of the set pooled, no crop).
PAPER_DEPTH = {"kitti": {"crop": "garg", "aggregation": "per_image", "cap": 80.0},
               "nyud": {"crop": None, "aggregation": "pooled", "cap": None}}


def _class_slice(spec: str | None):
    if spec is None:
        return None
    try:
        a, b = (int(v) for v in spec.split(":"))
    except ValueError:
        raise click.BadParameter(f"{spec!r}: expected START:STOP, e.g. 0:40 or 40:46", param_hint="--classes") from None
    if not 0 <= a < b:
        raise click.BadParameter(f"{spec!r}: need 0 <= START < STOP", param_hint="--classes")
    return a, b


@click.command("eval")
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True, help="FP32 checkpoint or quantised .pt2 program.")
@click.option("--dataset", default=None, help="Default: what the checkpoint was trained on.")
@click.option("--split", type=click.Choice(["train", "val"]), default="val", show_default=True)
@click.option("--size", type=SIZE, default=None, help="Input HxW (default: the checkpoint's).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate only the first N frames.")
@click.option("--resolution", type=click.Choice(["auto", "native", "model"]), default="auto", show_default=True,
              help="native: each frame at its own size, padded to a multiple of 32 and cropped back (KITTI's "
                   "protocol); model: resized to the input size; auto: what the dataset records (KITTI native).")
@click.option("--crop", type=click.Choice(["garg", "eigen"]), default=None, help="Score depth inside the Garg or Eigen crop (KITTI).")
@click.option("--classes", "class_slice", default=None,
              help="Score logits START:STOP only, e.g. 0:40 (NYUD) or 40:46 (KITTI) of the 46-class joint checkpoint.")
@click.option("--protocol", type=click.Choice(["ours", "paper"]), default="ours", show_default=True,
              help="paper: score as the paper's table is scored (KITTI: Garg crop, 80 m cap, per-image mean) and "
                   "print its figures beside these.")
@click.option("--aggregation", type=click.Choice(["pooled", "per_image"]), default=None,
              help="Depth errors pooled over every pixel of the set (default; the authors' DenseTorch) or each image's "
                   "then their mean (the Eigen-split convention; --protocol paper on KITTI).")
@click.option("--normals-mask", type=click.Choice(["depth", "grey"]), default="depth", show_default=True,
              help="Invalid normals: pixels without depth (the authors') or grey (127,127,127) pixels.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write metrics here (default beside the checkpoint).")
def evaluate(checkpoint, dataset, split, size, limit, resolution, crop, class_slice, protocol, aggregation,
             normals_mask, json_out):
    """Evaluate a checkpoint: mIoU, pixel accuracy, RMSE, abs rel, log10, deltas (and normals' angular errors)."""
    from edgehydra._io import atomic_write_json
    from edgehydra.data import PadTo, PadToMultiple, Resize
    from edgehydra.errors import BadInputError
    from edgehydra.dataspec import open_split, resolve_size, run_data_settings
    from edgehydra.metrics import Scoring
    from edgehydra.train import evaluate as run_eval

    from ._loaders import load_any

    sl = _class_slice(class_slice)
    model, meta = load_any(checkpoint)
    cfg = meta["config"]
    ds = run_data_settings(Path(checkpoint), dataset, size, base=meta.get("data"))
    in_size = resolve_size(cli=size, program=meta.get("size"), data=ds)
    probe = open_split(ds, split)
    recorded = getattr(getattr(probe, "info", None), "eval_resolution", "model")
    native = resolution == "native" or (resolution == "auto" and recorded == "native")
    # a program has one input size: natively, each frame is padded to it and the outputs cropped back (the same
    # path the ptq, qat and export stages score on, dataspec.eval_view)
    fixed = meta["kind"] == "quantised"
    name = getattr(probe, "name", ds["dataset"])  # a prepared folder says which dataset it is (dataset.json)
    paper_depth = PAPER_DEPTH.get(name, {}) if protocol == "paper" else {}
    if paper_depth and (crop not in (None, paper_depth["crop"]) or aggregation not in (None, paper_depth["aggregation"])):
        raise click.BadParameter(f"--protocol paper scores {name} depth with crop {paper_depth['crop']} and "
                                 f"{paper_depth['aggregation']} aggregation: drop --crop / --aggregation, or drop "
                                 "--protocol paper", param_hint="--protocol")
    crop = crop or paper_depth.get("crop")
    aggregation = aggregation or paper_depth.get("aggregation") or "pooled"
    transform = (PadTo(in_size) if fixed else PadToMultiple(32)) if native else Resize(in_size)
    data = open_split(ds, split, transform=transform, normals_mask=normals_mask)
    n_classes = (sl[1] - sl[0]) if sl else cfg.num_classes
    if sl and sl[1] > cfg.num_classes:
        raise BadInputError(f"--classes {class_slice}: the model has {cfg.num_classes} classes")
    if getattr(data, "num_classes", n_classes) != n_classes:
        hint = "" if sl else "; a multi-dataset checkpoint is scored with --classes START:STOP"
        raise BadInputError(f"dataset {ds['dataset']} has {data.num_classes} classes, model has {cfg.num_classes}{hint}")
    fwd = model
    if sl:
        seg_i = list(cfg.tasks).index("segm")

        def fwd(x):
            outs = list(model(x))
            outs[seg_i] = outs[seg_i][:, sl[0]:sl[1]]
            return tuple(outs)
    with progress_bar(transient=True) as p:
        m = run_eval(fwd, data, Scoring(cfg.tasks, n_classes, paper_depth.get("cap") or getattr(data, "depth_cap", cfg.depth_cap),
                                        depth_crop=crop, padded=native, aggregation=aggregation), progress=p, limit=limit,
                     nhwc=not fixed)  # an FP32 checkpoint fed NHWC: 2.7x at 480x640; a program NCHW (train.evaluate)
    how = {"resolution": (f"native (padded to {in_size[0]}x{in_size[1]}, cropped back)" if fixed else
                          "native (padded to a multiple of 32, cropped back)") if native
           else f"resized to {in_size[0]}x{in_size[1]}",
           "depth_crop": crop or "none (every valid pixel)", "depth_aggregation": aggregation + (
               " (each image's errors, then the mean over images)" if aggregation == "per_image" else
               " (every valid pixel of the set together)"),
           "normals_mask": normals_mask if "normals" in cfg.tasks else None,
           "classes": class_slice, "depth_ground_truth": getattr(getattr(data, "info", None), "depth_source", None)}
    out = Path(json_out) if json_out else Path(checkpoint).with_suffix(".eval.json")
    atomic_write_json(out, {"checkpoint": str(checkpoint), "dataset": ds, "split": split, "protocol": how, "metrics": m})
    cols = {"value": m}
    paper = PAPER.get(name) if protocol == "paper" else None
    if protocol == "paper" and paper is None:
        console().print(f"no published figures for dataset {name!r} (the paper reports nyud and kitti)")
    if paper:
        cols["paper"] = {k: v for k, v in paper.items() if k != "source"}
    console().print(metrics_table(f"{checkpoint} on {ds['dataset']} {split}", cols))
    console().print("; ".join(f"{k}: {v}" for k, v in how.items() if v) + (f"; paper: {paper['source']}" if paper else ""))
    click.echo(f"wrote {out}")


@click.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True)
@click.option("--out", type=click.Path(file_okay=False), default="predictions", show_default=True)
@click.option("--size", type=SIZE, default=None, help="Input HxW (default: the checkpoint's).")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def predict(checkpoint, out, size, images):
    """Write a PNG panel per image: input, segmentation, depth with a metre scale (and ground truth where found)."""
    from edgehydra.dataspec import resolve_size
    from edgehydra.visualize import predict_panels

    from ._loaders import load_any

    model, meta = load_any(checkpoint)
    paths = predict_panels(lambda x: model(x), meta["config"], [Path(i) for i in images], Path(out),
                           resolve_size(cli=size, program=meta.get("size"), variant=meta["config"]), title="FP32")
    for p in paths:
        click.echo(f"wrote {p}")
