"""`edgehydra doctor`: which backends are installed and what each enables."""
from __future__ import annotations

import importlib.metadata as md
import platform

import click

# (distribution, pip extra, what it enables, note on this host or None)
BACKENDS = [
    ("torch", None, "model, training, PyTorch eager reference"),
    ("torchao", "executorch", "pt2e quantisation (PTQ, QAT)"),
    ("executorch", "executorch", "ExecuTorch .pte export (XNNPACK) and its runtime"),
    ("coremltools", "coreml", "Core ML export"),
    ("litert-torch", "tflite", "TFLite/LiteRT export"),
    ("ai-edge-litert", "tflite", "LiteRT interpreter: runs .tflite"),
    ("onnx", "onnx", "ONNX model format"),
    ("onnxscript", "onnx", "torch.onnx dynamo exporter"),
    ("onnxruntime", "onnx", "runs .onnx (CPU provider)"),
    ("onnxruntime-gpu", None, "runs .onnx on CUDA/TensorRT providers"),
    ("tensorrt", None, "TensorRT engines (GPU latency)"),
    ("hypothesis", "test", "property-based tests"),
]


def backend_status() -> list[dict]:
    rows = []
    for dist, extra, what in BACKENDS:
        try:
            ver = md.version(dist)
        except md.PackageNotFoundError:
            ver = None
        note = what
        if dist == "coremltools" and ver:
            note += "; prediction needs macOS" + ("" if platform.system() == "Darwin" else f" (this host: {platform.system()}, structural checks only)")
        if dist == "onnxruntime" and ver:
            try:
                import onnxruntime as ort

                note += f"; providers: {', '.join(ort.get_available_providers())}"
            except Exception as e:  # a broken install should show, not crash doctor
                note += f"; import failed: {e}"
        rows.append({"package": dist, "version": ver, "extra": extra, "enables": note})
    return rows


def target_status() -> list[dict]:
    """One row per registered export target, from its record."""
    from edgehydra.exporters import get_target, list_targets

    rows = []
    for n in list_targets():
        t = get_target(n)
        rows.append({"target": n, "suffix": t.suffix, "precisions": list(t.precisions), "runtime": t.runtime,
                     "installed": t.installed(), "extra": t.extra, "runs_here": t.runs_here()})
    return rows


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json):
    """Show which backends are installed, their versions, and what each enables."""
    import json

    from rich.table import Table

    from ._common import show

    rows = backend_status()
    if as_json:
        click.echo(json.dumps({"python": platform.python_version(), "platform": platform.platform(), "backends": rows,
                               "targets": target_status(), "arm": _arm_status()}, indent=2))
        return
    t = Table(title=f"edgehydra doctor: Python {platform.python_version()} on {platform.system()} {platform.machine()}")
    for c in ("package", "version", "enables"):
        t.add_column(c)
    for r in rows:
        if r["version"]:
            ver = r["version"]
        elif r["extra"]:
            ver = f"[red]missing[/red] (pip install 'edgehydra[{r['extra']}]')"
        else:
            ver = "[yellow]not installed[/yellow] (optional)"
        t.add_row(r["package"], ver, r["enables"])
    show(t)
    tt = Table(title="export targets")
    for c in ("target", "suffix", "precisions", "verified with", "status"):
        tt.add_column(c, no_wrap=c == "target")
    for r in target_status():
        status = ("[green]ready[/]" if r["runs_here"] else "[yellow]exports; runs elsewhere[/]") if r["installed"] \
            else f"[red]missing[/] (pip install 'edgehydra[{r['extra']}]')"
        tt.add_row(r["target"], r["suffix"], ", ".join(r["precisions"]), r["runtime"], status)
    show(tt)
    arm = _arm_status()
    click.echo(f"ARM kernels (emulated): {arm['line']}")


def _arm_status() -> dict:
    from edgehydra.devices.arm import CPUS
    from edgehydra.devices.arm_setup import default_dir, state

    st = state()
    if st is None:
        return {"ready": False, "dir": str(default_dir()),
                "line": f"not set up ({default_dir()}); `edgehydra arm setup` builds it once (no root needed)"}
    return {"ready": True, "dir": st["dir"], "qemu": st["qemu_version"],
            "line": f"ready in {st['dir']} ({st['qemu_version'].split(' (')[0]}): --device "
                    + ", ".join(f"qemu:{c}" for c in CPUS)}
