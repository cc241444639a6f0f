"""Reference I/O that travels with an ExecuTorch artifact: a BundledProgram (.bpte).

The .bpte holds the .pte and, as ExecuTorch test cases, the export's parity frames (real validation
frames) with the reference outputs the export was verified against (the pt2e program for int8, FP32
for float). Where the model runs, ExecuTorch's bundled-program API loads a case as the method's input
and runs it; the outputs it produced are compared with the expected outputs the bundle itself carries,
per task, by the same parity routine and tolerance as the export (exporters/target.py), so the verdict
on the device is the verdict of the export. The bundle is a sidecar: listed in the manifest apart from
the artifact, not counted in its size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgehydra._io import atomic_path


def bundle_path(pte: Path) -> Path:
    return Path(pte).with_suffix(".bpte")


def write_bundle(pte: Path, frames: np.ndarray, expected: list[tuple[np.ndarray, ...]], path: Path | None = None) -> Path:
    """``frames`` (N, 3, H, W) and, per frame, the reference outputs (one array per task, batch 1)."""
    from executorch.devtools import BundledProgram
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    cases = [MethodTestCase(inputs=[torch.from_numpy(np.ascontiguousarray(frames[i:i + 1]))],
                            expected_outputs=[torch.from_numpy(np.ascontiguousarray(o)) for o in expected[i]])
             for i in range(len(frames))]
    bp = BundledProgram(None, [MethodTestSuite(method_name="forward", test_cases=cases)], pte_file_path=str(pte))
    path = Path(path or bundle_path(pte))
    with atomic_path(path) as tmp:
        tmp.write_bytes(serialize_from_bundled_program_to_flatbuffer(bp))
    return path


def read_expected(bpte: Path) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(input, expected outputs) of each test case, read back from the bundle itself."""
    from executorch.devtools.bundled_program.serialize import deserialize_from_flatbuffer_to_bundled_program

    bp = deserialize_from_flatbuffer_to_bundled_program(Path(bpte).read_bytes())
    suite = next(s for s in bp.method_test_suites if s.method_name == "forward")
    out = []
    for c in suite.test_cases:
        out.append((_np(c.inputs[0]), [_np(t) for t in c.expected_outputs]))
    return out


def _np(v) -> np.ndarray:
    """A bundled tensor (schema Tensor with raw bytes, or a Value wrapping one) as a numpy array."""
    t = getattr(v, "val", v)
    if isinstance(t, torch.Tensor):
        return t.numpy()
    dtype = {6: np.float32, 1: np.int8, 0: np.uint8, 4: np.int64, 3: np.int32}.get(int(t.scalar_type), np.float32)
    return np.frombuffer(bytes(t.data), dtype=dtype).reshape(list(t.sizes))


def run_bundle(bpte: Path, tasks, tol, transport=None, python: str = "python3") -> dict:
    """Run every case through ExecuTorch's bundled-program API, on this host or on a device over
    ``transport`` (devices/remote.py; the device needs the ExecuTorch Python runtime), and judge each
    task against the expected outputs the bundle carries with the export's parity routine and tolerance."""
    from . import bundle_runner
    from .parity import parity, within

    cases = read_expected(bpte)
    if transport is None:
        from ._et_runtime import runtime

        runtime()  # the threadpool started quietly
        got, where = bundle_runner.run_cases(str(bpte), len(cases)), "host"
    else:
        from .reference_io import run_runner_remote

        out = run_runner_remote(transport, bundle_runner, [Path(bpte)], python, "the executorch package",
                                args=(len(cases),))
        got, where = bundle_runner.decode(out), transport.name
    if len(got) != len(cases):
        raise RuntimeError(f"{where}: the bundle ran {len(got)} cases, it holds {len(cases)}")
    cat = lambda rows: [np.concatenate([np.asarray(r[k], np.float32) for r in rows]) for k in range(len(tasks))]  # noqa: E731
    par = parity(cat([e for _, e in cases]), cat(got), tuple(tasks))
    fails = within(par, tol)
    return {"device": where, "cases": len(cases), "parity": par, "tolerance": vars(tol), "failures": fails,
            "pass": not fails, "runner": "ExecuTorch bundled program (BundledModule), exporters/bundle_runner.py"}
