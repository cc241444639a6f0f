"""`edgehydra export`, `run`, `verify`."""
from __future__ import annotations

from pathlib import Path

import click

from ._common import SIZE, console, show
from ._progress import progress_bar



class RegistryChoice(click.Choice):
    """click.Choice whose values are read from the export-target registry when the command runs, so a
    target registered after import (register_target, EDGEHYDRA_TARGETS) is accepted and listed."""

    def __init__(self, values, extra=()):
        self._values, self._extra = values, tuple(extra)
        super().__init__(list(extra))

    @property
    def choices(self):
        return tuple(self._values()) + self._extra

    @choices.setter
    def choices(self, _):
        pass


def _targets():
    from edgehydra.exporters import list_targets

    return list_targets()


def _precisions():
    from edgehydra.exporters import all_precisions

    return all_precisions()


def summary_table(rows, title="export summary"):
    from rich.table import Table

    t = Table(title=title)
    for c in ("target", "precision", "status", "size MB", "argmax agree", "depth rel err", "mIoU", "RMSE"):
        t.add_column(c, justify="right" if c not in ("target", "precision", "status") else "left")
    colour = {"verified": "green", "exported": "yellow", "failed": "red", "skipped": "dim"}
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    for r in rows:
        status = f"[{colour.get(r['status'], 'white')}]{r['status']}[/]"
        t.add_row(r["target"], r["precision"], status, f(r["size_mb"], ".2f"), f(r["argmax"], ".4f"),
                  f(r["depth_rel"], ".4f"), f(r["miou"], ".2f"), f(r["rmse"], ".3f"))
    return t


@click.command()
@click.option("--target", "targets", multiple=True, type=RegistryChoice(_targets, ["all"]), required=True,
              help="Repeatable; 'all' exports every installed target.")
@click.option("--precision", "precisions", multiple=True, type=RegistryChoice(_precisions),
              help="Repeatable; default: every precision the target supports.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None, help="Run folder (fp32.pt, ptq/, qat/).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="FP32 checkpoint (instead of --run).")
@click.option("--program", type=click.Path(dir_okay=False), default=None, help="Quantised .pt2 for int8.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Default: RUN/export.")
@click.option("--size", type=SIZE, default=None, help="Fixed input HxW (default: the training size).")
@click.option("--delegate", default="xnnpack", show_default=True, help="ExecuTorch partitioner: xnnpack, coreml, qnn, vulkan.")
@click.option("--compute-units", type=click.Choice(["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"]), default="ALL", show_default=True)
@click.option("--image-input", is_flag=True, help="Core ML: image input with the normalisation folded in.")
@click.option("--deployment-target", default="iOS17", show_default=True, help="Core ML minimum deployment target.")
@click.option("--io-dtype", type=click.Choice(["int8", "float"]), default="int8", show_default=True, help="TFLite int8 I/O type.")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True, help="TFLite input layout.")
@click.option("--opset", type=click.IntRange(13, 23), default=18, show_default=True, help="ONNX opset.")
@click.option("--qdq", type=click.Choice(["uint8", "u8s8", "int8"]), default="uint8", show_default=True,
              help="ONNX int8 storage: uint8 runs exactly under onnxruntime on any CPU; u8s8 (signed weights) runs "
                   "faster and exactly on VNNI x86 and ARM64 CPUs; int8 is what TensorRT needs.")
@click.option("--tol", multiple=True, help="Parity tolerance PRECISION=MIN_ARGMAX_AGREEMENT,MAX_DEPTH_REL_ERR (repeatable).")
@click.option("--dataset", default=None, help="Frames for parity and metrics (default: the checkpoint's).")
@click.option("-j", "--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Artifacts built at once, each in a process of its own (the converters use one core each).")
def export(targets, precisions, run_dir, checkpoint, program, out, size, delegate, compute_units, image_input,
           deployment_target, io_dtype, layout, opset, qdq, tol, dataset, jobs):
    """Export, run each artifact in its own runtime, and check it against the PyTorch reference.

    Exit code 1 if any artifact fails verification (its report is kept).
    """
    from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run, parse_tolerances, summary_rows
    from edgehydra.run import Run

    if not (run_dir or checkpoint or program):
        raise click.UsageError("pass --run DIR, --checkpoint FILE or --program FILE")
    out = Path(out) if out else (Run(run_dir).export_dir if run_dir else Path("export"))
    targets = ["all"] if "all" in targets else list(dict.fromkeys(targets))
    opts = {"delegate": delegate, "compute_units": compute_units, "image_input": image_input,
            "deployment_target": deployment_target, "io_dtype": io_dtype, "layout": layout, "opset": opset,
            "qdq": qdq}
    with progress_bar(transient=True) as p:
        src = ExportSource(run=Path(run_dir) if run_dir else None, checkpoint=Path(checkpoint) if checkpoint else None,
                           program=Path(program) if program else None, dataset=dataset)
        res = export_run(out, targets, list(precisions) or None, source=src,
                         settings=ExportSettings(size=size, options=opts, tolerances=parse_tolerances(tol), jobs=jobs),
                         progress=p)
    rows = summary_rows(res)
    c = console()
    show(summary_table(rows), c)
    for r in rows:
        if r["reason"]:
            c.print(f"{r['target']} {r['precision']}: {r['reason']}", soft_wrap=True)
    click.echo(f"manifest: {out / 'manifest.json'}")
    if any(r.status == "failed" for r in res):
        raise SystemExit(1)


@click.command("run")
@click.option("--artifact", type=click.Path(exists=False), required=True, help=".pte, .tflite, .onnx or .mlpackage")
@click.option("--out", type=click.Path(file_okay=False), default="predictions", show_default=True)
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def run_artifact(artifact, out, images):
    """Run an exported artifact in its own runtime on images; writes the same panels as `predict`."""
    from edgehydra.exporters.runtime import open_artifact
    from edgehydra.visualize import predict_panels

    art = open_artifact(Path(artifact))
    paths = predict_panels(art.forward, art.config, [Path(i) for i in images], Path(out), art.size,
                           title=f"{art.target} {art.precision}")
    for p in paths:
        click.echo(f"wrote {p}")


@click.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True)
@click.option("--device", default=None,
              help="qemu:CPU (cortex-a72, -a55, -a76, -a710, max): run each .pte / .tflite / .onnx artifact's reference "
                   "I/O on that emulated CPU's ARM kernels instead (`edgehydra arm setup` first).")
def verify(run_dir, device):
    """Re-check every artifact's sha256 against its manifest and re-run parity; exit 1 on any mismatch."""
    from edgehydra.exporters.runtime import verify_run

    if device is not None:
        return _verify_emulated(Path(run_dir), device)

    rows = verify_run(Path(run_dir))
    from rich.table import Table

    t = Table(title=f"verify {run_dir}")
    for c in ("artifact", "sha256", "parity", "detail"):
        t.add_column(c)
    bad = False
    for r in rows:
        bad |= not (r["hash_ok"] and r["parity_ok"] is not False)
        t.add_row(r["artifact"], "ok" if r["hash_ok"] else "[red]MISMATCH[/red]",
                  {True: "ok", False: "[red]FAIL[/red]", None: "skipped"}[r["parity_ok"]], r["detail"])
    show(t)
    if bad:
        raise SystemExit(1)


def _verify_emulated(run_dir: Path, device: str) -> None:
    """`verify --device qemu:CPU`: `bench --bundle --device qemu:CPU` for every .tflite and .onnx of the run."""

    from edgehydra.devices.arm_setup import has_executorch, state
    from edgehydra.devices.measure import BenchRequest, measure
    from edgehydra.errors import BadInputError
    from edgehydra.run import Run

    if not device.startswith("qemu:"):
        raise click.BadParameter("verify runs here, or on an emulated ARM CPU: qemu:CPU", param_hint="--device")
    run = Run(run_dir)
    if not run.export_manifest.is_file():
        raise BadInputError(f"no export manifest at {run.export_manifest}: run `edgehydra export --run {run_dir}` first")
    arts = [run.export_dir / a["path"] for a in run.export_record()["artifacts"]
            if a.get("path") and Path(a["path"]).suffix in (".pte", ".tflite", ".onnx")]
    if not arts:
        raise BadInputError(f"{run_dir} has no .pte, .tflite or .onnx artifact to run on {device}")
    c = console()
    st = state()
    if st is not None and not has_executorch(st):  # said, not skipped silently
        for a in (a for a in arts if a.suffix == ".pte"):
            c.print(f"{a.relative_to(run.export_dir)}: not checked, the emulated root has no ExecuTorch (`edgehydra "
                    f"arm setup` adds it where this host has ExecuTorch)", soft_wrap=True)
        arts = [a for a in arts if a.suffix != ".pte"]
    bad = False
    for a in arts:
        res = measure(a, device, BenchRequest(bundle=True))
        bp = res["bundle_parity"]
        same = all(v["bit_identical"] for v in bp["vs_x86"].values())
        bad |= not bp["pass"]
        c.print(f"{a.relative_to(run.export_dir)} on {device}: {'PASS' if bp['pass'] else 'FAIL: ' + '; '.join(bp['failures'])}"
                f", {'bit-identical to' if same else 'differs from'} x86; {res['accelerator']}", soft_wrap=True)
    if bad:
        raise SystemExit(1)


@click.command("debug")
@click.option("--artifact", type=click.Path(dir_okay=True), required=True, help="An int8 .pte or .onnx in a run.")
@click.option("--frames", type=click.IntRange(1, 64), default=4, show_default=True, help="Validation frames to compare on.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Default: RUN/debug/<artifact>/.")
@click.option("--all-layers", is_flag=True, help="List every quantised tensor, not only those around each failure.")
def debug(artifact, frames, out, all_layers):
    """Compare an int8 artifact with its pt2e program layer by layer; per task, the first layer out of bound.

    Exit code 1 if any task's path leaves the int8 rounding bound.
    """
    from edgehydra.exporters.debug import debug_path

    from ._common import fit_ids, table

    with console().status(f"running {Path(artifact).name} and its program layer by layer"):
        rep, paths = debug_path(Path(artifact), frames, Path(out) if out else None)
    c = console()
    for n in rep["notes"]:
        c.print(f"[yellow]{n}[/]", soft_wrap=True)
    c.print(f"reference: {rep['reference']}", soft_wrap=True)
    c.print(f"artifact:  {rep['artifact_side']}; its task outputs vs the shipped file's: max |diff| "
            f"{rep['probe_build_vs_shipped_max_abs']:.3g}", soft_wrap=True)
    firsts = {f["index"] for f in rep["first_failure"].values() if f}
    keep = {i for f in firsts for i in range(f - 2, f + 3)}
    if not keep:  # all within the bound: the five tensors closest to it
        keep = {r["index"] for r in sorted(rep["layers"], key=lambda r: -r["mean_steps"])[:5]}
    rows = [r for r in rep["layers"] if all_layers or r["index"] in keep or r["op"] == "input"]
    t = table(f"{Path(artifact).name}: error per quantised tensor, in steps of its int8 grid "
              f"(bound: mean {rep['max_mean_steps']})", ("#", "layer"),
              ("op", "tasks", "mean", "max", ">1 step", "result"), right=("#", "mean", "max", ">1 step"))
    fit_ids(t, [(str(r["index"]), r["layer"], r["op"], ",".join(r["tasks"]), f"{r['mean_steps']:.3f}",
                 str(r["max_steps"]), f"{r['frac_over_1_step']:.1%}",
                 ("[red]FIRST FAILURE[/]" if r["index"] in firsts else "[red]out of bound[/]") if not r["ok"]
                 else "ok") for r in rows])
    show(t, c)
    if not all_layers and len(rows) < len(rep["layers"]):
        c.print(f"({len(rep['layers']) - len(rows)} more in {paths[0]}; --all-layers lists them)")
    for task, f in rep["first_failure"].items():
        par = rep["outputs"].get(task, {})
        at_out = ", ".join(f"{k} {v:.4f}" for k, v in par.items() if isinstance(v, float))
        c.print(f"{task}: " + ("every layer within the bound" if f is None else
                               f"first out of bound at #{f['index']} {f['layer']} ({f['op']}, mean {f['mean_steps']:.2f} "
                               f"steps)") + (f"; at the output: {at_out}" if at_out else ""), soft_wrap=True)
    for p in paths:
        click.echo(f"wrote {p}")
    if any(rep["first_failure"].values()):
        raise SystemExit(1)
