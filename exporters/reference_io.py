"""Reference I/O that travels with a .tflite or .onnx artifact: ``<artifact>.reference.npz``.

What a BundledProgram is for ExecuTorch (exporters/bundle.py), as plain files for the formats that have
no such container: the export's parity frames (real validation frames, float NCHW as the manifest's input
says) and the reference outputs the export was verified against (the pt2e program for int8, FP32 for
float). Where the model runs, exporters/reference_runner.py (numpy and the format's Python runtime only;
it reads an NHWC or int8 input off the model) feeds the frames as `edgehydra run` does here and prints
the outputs; they are judged on the host by the export's parity routine and tolerance, so the verdict on
the device is the verdict of the export. A sidecar: listed in the manifest apart, not in the size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgehydra._io import atomic_path


def reference_path(artifact: Path) -> Path:
    return Path(str(artifact) + ".reference.npz")


def write_reference(artifact: Path, frames: np.ndarray, ref: list[np.ndarray]) -> Path:
    path = reference_path(artifact)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, frames=np.ascontiguousarray(frames, np.float32),
                                **{f"expected_{k}": np.asarray(r, np.float32) for k, r in enumerate(ref)})
    return path


def read_expected(path: Path) -> list[np.ndarray]:
    z = np.load(path)
    return [z[f"expected_{k}"] for k in range(sum(1 for n in z.files if n.startswith("expected_")))]


def decode(text: str) -> list:
    from .bundle_runner import decode as _decode
    from .reference_runner import BEGIN, END

    return _decode(text, BEGIN, END)


def run_reference(artifact: Path, tasks, tol, transport=None, python: str = "python3") -> dict:
    """Run the reference frames through the artifact here (``transport`` None) or on a device, and judge each
    task against the expected outputs with the export's parity routine and tolerance."""
    from . import reference_runner
    from .parity import parity, within

    ref = reference_path(artifact)
    if transport is None:
        got, where = reference_runner.run_reference(str(artifact), str(ref)), "host"
    else:
        out = run_runner_remote(transport, reference_runner, [Path(artifact), ref], python,
                                "numpy and the format's runtime: ai-edge-litert or tflite-runtime, onnxruntime")
        got, where = decode(out), transport.name
    expected = read_expected(ref)
    n = len(expected[0])
    if len(got) != n:
        raise RuntimeError(f"{where}: the runner returned {len(got)} frames, the reference holds {n}")
    cat = [np.concatenate([np.asarray(r[k], np.float32) for r in got]) for k in range(len(tasks))]
    par = parity(expected, cat, tuple(tasks))
    fails = within(par, tol)
    return {"device": where, "cases": n, "parity": par, "tolerance": vars(tol), "failures": fails, "pass": not fails,
            "runner": "exporters/reference_runner.py (the format's Python runtime)"}


def run_runner_remote(transport, runner, files: list[Path], python: str, needs: str, args: tuple = ()) -> str:
    """Push ``files`` and the self-contained ``runner`` module (reference_runner, bundle_runner) into a fresh work
    folder on the device (``transport``: devices/remote.py), run ``python runner.py FILE... ARG...`` there and
    return what it printed; the folder goes afterwards. ``needs``: what the device must have, for the error."""
    from edgehydra.errors import EdgeHydraError

    with transport.workdir() as work:
        for f in files:
            transport.push(Path(f), f"{work}/{Path(f).name}")
        transport.push(Path(runner.__file__), f"{work}/{Path(runner.__file__).name}")
        r = transport.shell([python, f"{work}/{Path(runner.__file__).name}"] + [f"{work}/{Path(f).name}" for f in files]
                            + [str(a) for a in args])
    if r.rc != 0 or runner.BEGIN not in r.out:
        raise EdgeHydraError(f"{transport.name}: {Path(runner.__file__).stem} exited {r.rc}: "
                             f"{(r.err or r.out).strip()[-300:]} (it needs {python} with {needs} on the device)")
    return r.out


def reference_sidecar(final, frames, ref, tasks, tol) -> dict:
    """ExportTarget.sidecar for .tflite/.onnx: write the reference file and run it once here (the same check
    `bench --bundle` repeats where the artifact runs)."""
    from edgehydra._io import path_size, sha256_path

    p = write_reference(final, frames, ref)
    res = run_reference(final, tasks, tol)
    return {"reference_io": {"path": p.name, "sha256": sha256_path(p), "size_bytes": path_size(p), "cases": len(frames),
                             "what": "parity frames and reference outputs (npz) for exporters/reference_runner.py "
                                     "(not counted in the artifact's size)",
                             "host_check": {"pass": res["pass"], "failures": res["failures"]}}}


def reference_check(artifact, manifest, tol, transport=None, python: str = "python3") -> dict:
    """ExportTarget.sidecar_check for .tflite/.onnx: the reference file run where the artifact runs."""
    from .target import listed_sidecar

    listed_sidecar(artifact, manifest, "reference_io", reference_path(artifact))
    return run_reference(Path(artifact), tuple(manifest["outputs"]), tol, transport, python)
