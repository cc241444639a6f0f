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
    from .base import parity, within

    ref = reference_path(artifact)
    if transport is None:
        got, where = reference_runner.run_reference(str(artifact), str(ref)), "host"
    else:
        got, where = _run_remote(transport, Path(artifact), ref, python), transport.name
    expected = read_expected(ref)
    n = len(expected[0])
    if len(got) != n:
        raise RuntimeError(f"{where}: the runner returned {len(got)} frames, the reference holds {n}")
    cat = [np.concatenate([np.asarray(r[k], np.float32) for r in got]) for k in range(len(tasks))]
    par = parity(expected, cat, tuple(tasks))
    fails = within(par, tol)
    return {"device": where, "cases": n, "parity": par, "tolerance": vars(tol), "failures": fails, "pass": not fails,
            "runner": "exporters/reference_runner.py (the format's Python runtime)"}


def _run_remote(transport, artifact: Path, ref: Path, python: str) -> list:
    import uuid

    from edgehydra.devices.remote import AdbTransport, DeviceGone
    from edgehydra.errors import EdgeHydraError

    from . import reference_runner

    base = "/data/local/tmp" if isinstance(transport, AdbTransport) else "/tmp"
    work = f"{base}/edgehydra-{uuid.uuid4().hex[:8]}"
    try:
        transport.shell(["mkdir", "-p", work])
        transport.push(artifact, f"{work}/{artifact.name}")
        transport.push(ref, f"{work}/{ref.name}")
        transport.push(Path(reference_runner.__file__), f"{work}/reference_runner.py")
        r = transport.shell([python, f"{work}/reference_runner.py", f"{work}/{artifact.name}", f"{work}/{ref.name}"])
        if r.rc != 0 or reference_runner.BEGIN not in r.out:
            raise EdgeHydraError(f"{transport.name}: the reference runner exited {r.rc}: "
                                 f"{(r.err or r.out).strip()[-300:]} (it needs {python} with numpy and the format's "
                                 "runtime on the device: ai-edge-litert or tflite-runtime, onnxruntime)")
        return decode(r.out)
    finally:
        try:
            transport.rmdir(work)
        except DeviceGone:
            pass


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
    from .base import listed_sidecar

    listed_sidecar(artifact, manifest, "reference_io", reference_path(artifact))
    return run_reference(Path(artifact), tuple(manifest["outputs"]), tol, transport, python)
