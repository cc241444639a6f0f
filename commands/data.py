"""`edgehydra data synth | prepare | distill`."""
from __future__ import annotations

from pathlib import Path

import click

from ._common import SIZE
from ._progress import progress_bar


@click.group()
def data():
    """Generate synthroom, prepare NYUDv2/KITTI, fill missing labels with a teacher."""


@data.command()
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--frames", type=click.IntRange(1), default=800, show_default=True, help="Training frames.")
@click.option("--val-frames", type=click.IntRange(1), default=None, help="Validation frames (default frames/8).")
@click.option("--size", type=SIZE, default="240x320", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sequence", type=click.IntRange(2), default=None,
              help="Instead: one camera moving through one room, this many frames, with poses (sequence.json).")
@click.option("--fps", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True,
              help="A sequence's frame rate (its time stamps and how far the camera moves per frame).")
def synth(out, frames, val_frames, size, seed, sequence, fps):
    """Write synthroom frames in the shared layout (rgb/, masks/, depth/, normals/, train.txt, val.txt).

    With --sequence N: a moving camera's N frames with their poses, intrinsics and time stamps (sequence.json),
    what `edgehydra stream --source` and `edgehydra stability --source` read.
    """
    if sequence is not None:
        from edgehydra.data.sequence import SequenceConfig, write_sequence

        with progress_bar() as p:
            write_sequence(Path(out), SequenceConfig(frames=sequence, fps=fps, size=size, seed=seed), progress=p)
        click.echo(f"wrote a {sequence}-frame sequence ({fps:g} fps, {size[0]}x{size[1]}) with poses to {out}")
        return
    from edgehydra.data.synthroom_io import write_synthroom

    with progress_bar() as p:
        r = write_synthroom(Path(out), frames, size, seed, val_frames, progress=p)
    click.echo(f"wrote {r['train']} train + {r['val']} val frames to {out}")


@data.group()
def prepare():
    """Convert an official dataset to the shared layout."""


@prepare.command("nyud")
@click.option("--mat", type=click.Path(dir_okay=False), required=True, help="nyu_depth_v2_labeled.mat (v7.3)")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--train-depth", type=click.Choice(["raw", "filled"]), default="raw", show_default=True,
              help="Training rows' depth: rawDepths (0 = invalid) or the in-painted depths.")
@click.option("--eval-depth", type=click.Choice(["raw", "filled"]), default="raw", show_default=True,
              help="Test rows' depth: rawDepths as the authors scored it, or the in-painted map (not the paper's protocol).")
def prepare_nyud(mat, out, train_depth, eval_depth):
    """NYUDv2 labelled .mat -> layout, 894 labels mapped to 40 classes, official 795/654 split."""
    from edgehydra.data.nyud import prepare as run

    with progress_bar() as p:
        r = run(Path(mat), Path(out), progress=p, train_depth=train_depth, eval_depth=eval_depth)
    click.echo(f"wrote {r['train']} train + {r['val']} val frames to {out}; depth: train {r['depth_source']['train']}, "
               f"val {r['depth_source']['val']}")


@prepare.command("kitti")
@click.option("--src", type=click.Path(file_okay=False), required=True, help="Folder with image_2/, segm/, depth/")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--depth-scale", type=click.Choice(["256", "800"]), default="256", show_default=True,
              help="Depth PNG value per metre: 256 is the official KITTI benchmark's; check your files' origin.")
@click.option("--val-list", type=click.Path(dir_okay=False), default=None,
              help="Frame names of the validation split (official KITTI-6 or Eigen list); default: first 10 %.")
@click.option("--train-list", type=click.Path(dir_okay=False), default=None,
              help="Frame names of the training split (default: every frame not in --val-list).")
def prepare_kitti(src, out, depth_scale, val_list, train_list):
    """KITTI frames with colour-coded KITTI-6 labels and uint16 depth -> layout."""
    from edgehydra.data.kitti import prepare as run

    with progress_bar() as p:
        r = run(Path(src), Path(out), progress=p, depth_scale=float(depth_scale),
                val_list=Path(val_list) if val_list else None, train_list=Path(train_list) if train_list else None)
    click.echo(f"wrote {r['train']} train + {r['val']} val frames to {out} (val: {r['split']['val']})")


@data.command()
@click.option("--teacher", type=click.Path(dir_okay=False), required=True, help="Teacher checkpoint.")
@click.option("--data", "root", type=click.Path(file_okay=False), required=True, help="Dataset folder in the layout.")
@click.option("--split", type=click.Choice(["train", "val"]), default="train", show_default=True)
def distill(teacher, root, split):
    """Fill every row's missing modality with the teacher's prediction (marked pseudo: in the list)."""
    from edgehydra.checkpoint import load_checkpoint
    from edgehydra.distill import distill as run

    model, _ = load_checkpoint(teacher)
    with progress_bar() as p:
        r = run(model, Path(root), split, progress=p)
    click.echo(f"{r['rows']} rows; filled {r['filled']['masks']} masks and {r['filled']['depth']} depth maps")
