"""`edgehydra info` and `edgehydra models`."""
from __future__ import annotations

import json

import click

from ._common import SIZE, console, show


def load_model_arg(model_name: str | None, checkpoint: str | None):
    from edgehydra.checkpoint import load_checkpoint
    from edgehydra.registry import create_model, list_models

    if checkpoint:
        return load_checkpoint(checkpoint)[0]
    if model_name not in list_models():
        raise click.BadParameter(f"unknown model {model_name!r}; choose from {', '.join(list_models())}", param_hint="--model")
    return create_model(model_name).eval()


@click.command()
@click.option("--model", "model_name", default="hydranet_nyud", show_default=True, help="Registered variant (see `edgehydra models`).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Count this checkpoint's model instead.")
@click.option("--size", type=SIZE, default=None, help="Input HxW (default: the model's training size).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--top", default=10, show_default=True, help="Heaviest layers to list.")
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def info(model_name, checkpoint, size, precision, top, as_json):
    """Parameters, MACs, weight and activation bytes per layer, counted from the real model."""
    from rich.table import Table

    from edgehydra.accounting import model_info
    from edgehydra.dataspec import resolve_size

    model = load_model_arg(model_name, checkpoint)
    size = resolve_size(cli=size, variant=model.config)
    s = model_info(model, size, precision)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    c = console()
    t = Table(title=f"{checkpoint or model_name} at {size[0]}x{size[1]}, {precision}")
    t.add_column("total")
    t.add_column("value", justify="right")
    t.add_row("parameters", f"{s['params']:,}")
    t.add_row("conv MACs", f"{s['macs'] / 1e9:.3f} G")
    t.add_row("other ops (pool, add, BN, act, upsample)", f"{s['other_ops'] / 1e9:.3f} G")
    t.add_row("weights", f"{s['weight_bytes'] / 2**20:.2f} MiB")
    t.add_row("activations written", f"{s['act_bytes'] / 2**20:.1f} MiB")
    t.add_row("largest layer in+out", f"{s['peak_act_bytes'] / 2**20:.1f} MiB")
    show(t, c)
    layers = sorted(s["layers"], key=lambda r: -r["macs"])[:top]
    lt = Table(title=f"heaviest {len(layers)} layers by MACs")
    for col in ("layer", "type", "output", "MMACs", "params", "act out KiB"):
        lt.add_column(col, justify="right" if col not in ("layer", "type") else "left")
    for r in layers:
        lt.add_row(r["name"], r["kind"], "x".join(map(str, r["out_shape"])), f"{r['macs'] / 1e6:.1f}", f"{r['params']:,}",
                   f"{r['act_out_bytes'] / 1024:.0f}")
    show(lt, c)


@click.command()
def models():
    """List the registered model variants."""
    from rich.table import Table

    from edgehydra.accounting import summarize, count_layers
    from edgehydra.registry import create_model, list_models

    t = Table(title="registered models")
    for col in ("name", "classes", "tasks", "train size", "params", "GMACs"):
        t.add_column(col)
    for name in list_models():
        m = create_model(name)
        s = summarize(count_layers(m, m.config.input_size))
        t.add_row(name, str(m.config.num_classes), ",".join(m.config.tasks), "x".join(map(str, m.config.input_size)),
                  f"{s['params']:,}", f"{s['macs'] / 1e9:.2f}")
    show(t)
