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
@click.option("--size", type=SIZE, default=None, help="Training crop HxW (synthroom default 120x160).")
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
@click.option("--resume", is_flag=True, help="Continue from OUT/fp32.pt.")
def train(dataset, out, model_name, size, frames, val_frames, epochs, batch_size, lr, lr_encoder, lr_decoder,
          schedule, optimizer, seed, resume):
    """Train an FP32 HydraNet; writes OUT/fp32.pt every epoch and OUT/fp32_metrics.json at the end."""
    from edgehydra.runs import train_run
    from edgehydra.train import TrainConfig, init_distributed, is_main

    init_distributed()
    try:
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr_encoder=lr or lr_encoder, lr_decoder=lr or lr_decoder,
                          schedule=schedule, optimizer=optimizer, seed=seed)
    except ValueError as e:
        raise click.UsageError(str(e))
    c = console()
    with progress_bar() as p:
        res = train_run(Path(out), dataset, model_name, cfg, size=size, frames=frames, val_frames=val_frames,
                        resume=resume, progress=p if is_main() else None, console=c)
    if is_main():
        c.print(metrics_table(f"FP32 on {dataset} (val)", {"fp32": res["metrics"]}))
        c.print(f"checkpoint: {res['checkpoint']}")


@click.command("eval")
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True, help="FP32 checkpoint or quantised .pt2 program.")
@click.option("--dataset", default=None, help="Default: what the checkpoint was trained on.")
@click.option("--split", type=click.Choice(["train", "val"]), default="val", show_default=True)
@click.option("--size", type=SIZE, default=None, help="Input HxW (default: the checkpoint's).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate only the first N frames.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write metrics here (default beside the checkpoint).")
def evaluate(checkpoint, dataset, split, size, limit, json_out):
    """Evaluate a checkpoint: mIoU, pixel accuracy, RMSE, abs rel, delta thresholds."""
    from edgehydra._io import atomic_write_json
    from edgehydra.data import Resize
    from edgehydra.runs import open_split, run_data_settings
    from edgehydra.train import evaluate as run_eval

    from ._loaders import load_any

    model, meta = load_any(checkpoint)
    cfg = meta["config"]
    ds = run_data_settings(Path(checkpoint), dataset, size)
    in_size = tuple(size or meta.get("size") or ds["size"])
    data = open_split(ds, split, transform=Resize(in_size))
    if getattr(data, "num_classes", cfg.num_classes) != cfg.num_classes:
        from edgehydra.errors import BadInputError

        raise BadInputError(f"dataset {ds['dataset']} has {data.num_classes} classes, model has {cfg.num_classes}")
    with progress_bar(transient=True) as p:
        m = run_eval(model, data, cfg.tasks, cfg.num_classes, getattr(data, "depth_cap", cfg.depth_cap), progress=p, limit=limit)
    out = Path(json_out) if json_out else Path(checkpoint).with_suffix(".eval.json")
    atomic_write_json(out, {"checkpoint": str(checkpoint), "dataset": ds, "split": split, "metrics": m})
    console().print(metrics_table(f"{checkpoint} on {ds['dataset']} {split}", {"value": m}))
    click.echo(f"wrote {out}")


@click.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True)
@click.option("--out", type=click.Path(file_okay=False), default="predictions", show_default=True)
@click.option("--size", type=SIZE, default=None, help="Input HxW (default: the checkpoint's).")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def predict(checkpoint, out, size, images):
    """Write a PNG panel per image: input, segmentation, depth with a metre scale (and ground truth where found)."""
    from edgehydra.visualize import predict_panels

    from ._loaders import load_any

    model, meta = load_any(checkpoint)
    paths = predict_panels(lambda x: model(x), meta["config"], [Path(i) for i in images], Path(out),
                           size or meta.get("size") or meta["config"].input_size, title="FP32")
    for p in paths:
        click.echo(f"wrote {p}")
