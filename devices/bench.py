"""Host latency benchmarks: each artifact in its own runtime, in a fresh process.

A fresh process per run keeps one runtime's threads, caches and allocator out of another's
figures and lets peak memory be read as the child's max RSS above its import baseline.
Output format (shared with the remote runners): warmup, runs, threads, p50/p90/p99/min/mean
ms, peak_memory_mb, runtime, device, artifact, sha256.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgehydra._io import atomic_write_json, sha256_path
from edgehydra.dataspec import resolve_size
from edgehydra.errors import BadInputError, EdgeHydraError

PYTORCH = (".pt", ".pt2")  # an FP32 checkpoint or a quantised program, timed eagerly; artifacts: the target registry


def stats(times_ms: list[float]) -> dict:
    a = np.asarray(times_ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "min_ms": float(a.min()), "mean_ms": float(a.mean()),
            "runs": int(a.size)}


def _rss_mb() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if platform.system() != "Darwin" else r / 2 ** 20


def _make_runner(path: Path, threads: int, provider: str | None, size):
    """(callable on one input, runtime name, input size, precision) for an artifact or a PyTorch checkpoint."""
    import torch

    suffix = path.suffix
    # torch owns the cores only for PyTorch models. Beside another runtime it merely wraps inputs and
    # copies outputs, and with 2 threads its idle OpenMP workers spin after each copy and take a core
    # from that runtime's own pool: an int8 .pte measured 6.5 ms beside them and 4.3 ms without
    # (240x320, this 2-core host; docs/RESULTS.md).
    torch.set_num_threads(threads if suffix in (".pt", ".pt2") else 1)
    if suffix in (".pt", ".pt2"):
        if suffix == ".pt2":
            from edgehydra.calibration.program import load_program

            prog = load_program(path)
            model, sz = prog.module, resolve_size(cli=size, program=prog.size)
        else:
            from edgehydra.checkpoint import load_checkpoint

            model, _ = load_checkpoint(path)
            sz = resolve_size(cli=size, variant=model.config)
        x = torch.randn(1, 3, *sz)

        def run():
            with torch.no_grad():
                model(x)

        return run, "pytorch-eager", tuple(sz), "int8" if suffix == ".pt2" else "fp32"
    from edgehydra.exporters.runtime import read_manifest

    man = read_manifest(path)
    x = np.random.default_rng(0).standard_normal(man["input"]["shape"]).astype(np.float32)
    call, runtime = open_runtime(path, threads, provider, x)
    return call, runtime, tuple(man["size"]), man["precision"]


def open_runtime(path: Path, threads: int, provider: str | None = None, x: np.ndarray | None = None,
                 beside_others: bool = False):
    """(a callable that runs the artifact once on ``x``, the runtime's name), in the artifact's own runtime.
    A .tflite takes a zero input of the shape, layout and dtype its interpreter reads; the others ``x``
    (NCHW float32). ``beside_others``: several sessions are timed interleaved in this process."""
    path = Path(path)
    suffix = path.suffix
    if suffix == ".onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        if beside_others:
            # onnxruntime's pool threads spin after each run; with several sessions interleaved each one's
            # spinning workers take the cores from the next. The tiny model's fp32 .onnx measured 5.44 ms
            # interleaved with seven other sessions spinning, 0.68-0.93 ms alone (64x96, 2 threads, this host)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        provs = [provider] if provider else ["CPUExecutionProvider"]
        sess = ort.InferenceSession(str(path), so, providers=provs)
        name = sess.get_inputs()[0].name
        return (lambda: sess.run(None, {name: x})), f"onnxruntime[{sess.get_providers()[0]}]"
    if suffix == ".tflite":
        from edgehydra.exporters.tflite import _interpreter

        it = _interpreter(path, threads)  # the interpreter knows its own input shape, layout and dtype
        inp = it.get_input_details()[0]
        it.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
        return it.invoke, "litert"
    if suffix == ".pte":
        import torch

        from edgehydra.exporters.executorch import runtime, runtime_threads

        method = runtime(threads).load_program(str(path)).load_method("forward")
        xt = torch.from_numpy(x)
        return (lambda: method.execute([xt])), f"executorch[{runtime_threads()} threads]"
    from edgehydra.exporters.runtime import open_artifact

    art = open_artifact(path)
    return (lambda: art.runner(x)), art.target


def bench_in_process(path: Path, warmup: int = 5, runs: int = 30, threads: int = 2, provider: str | None = None,
                     size=None, duration_s: float | None = None, fps: float | None = None) -> dict:
    import torch

    path = Path(path)
    if not path.exists():
        raise BadInputError(f"artifact not found: {path}")
    from edgehydra.exporters import get_target, list_targets, target_for_suffix

    target = target_for_suffix(path.suffix)
    if target is None and path.suffix not in PYTORCH:
        known = ", ".join([get_target(t).suffix for t in list_targets()] + list(PYTORCH))
        raise BadInputError(f"{path}: cannot benchmark {path.suffix!r} files; expected one of {known}")
    t = get_target(target) if target is not None else None
    if t is not None and not t.runs_here():
        hint = " use `edgehydra bench --apple-script` on a Mac" if target == "coreml" else ""
        where = ", ".join({"Darwin": "macOS"}.get(o, o) for o in t.runtime_os)
        raise EdgeHydraError(f"{path.name}: {target} artifacts run only on {where};{hint}")
    base = _rss_mb()
    run, runtime, size, precision = _make_runner(path, threads, provider, size)
    for _ in range(warmup):
        run()
    if duration_s:  # sustained: for a duration, optionally paced like a camera (devices/sustained.py)
        from .sustained import sustained

        res = sustained(run, duration_s, fps)
        res["runs"] = res["calls"]
    else:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1e3)
        res = stats(times)
    res.update(warmup=warmup, threads=threads, torch_threads=torch.get_num_threads(), runtime=runtime,
               runner=runtime, device="host", profile="host_cpu", artifact=str(path), size=list(size),
               precision=precision,
               sha256=sha256_path(path) if path.is_file() or path.is_dir() else None,
               peak_memory_mb=max(0.0, _rss_mb() - base), host=platform.node(), machine=platform.machine())
    return res


@dataclass(frozen=True)
class BenchRequest:
    """How to time an artifact. ``profile``: the device profile the measurement stands for (its name);
    ``duration_s``: a sustained run; ``fps``: pace a sustained run on this host like a camera."""

    runs: int = 50
    warmup: int = 5
    threads: int = 2
    binary: str | None = None
    provider: str | None = None
    duration_s: float | None = None
    fps: float | None = None
    verify: bool = False
    bundle: bool = False
    python: str = "python3"
    profile: str | None = None

    def __post_init__(self):
        if self.runs < 1 or self.warmup < 0 or self.threads < 1:
            raise ValueError(f"runs={self.runs}, warmup={self.warmup}, threads={self.threads}: runs and threads >= 1, "
                             "warmup >= 0")
        if self.fps is not None and self.duration_s is None:
            raise ValueError("fps paces a sustained run: give a duration too")


def bench(path: Path, req: BenchRequest = BenchRequest(), *, write: bool = True, size=None,
          timeout: float | None = None) -> dict:
    """Benchmark on this host in a fresh subprocess as ``req`` says and write ``<artifact>.bench.json`` beside it.
    ``req.verify``: also re-run the artifact's parity check against its reference (exporters.runtime.verify_run,
    the routine export uses) before the measurement enters its run. ``req.bundle``: also run the reference I/O
    beside it here (reference_parity), so the one record the run keeps carries that verdict. ``size``: the input
    of an FP32 checkpoint (an artifact has its own). ``timeout``: default 30 min, or 3x a sustained run."""
    path = Path(path)
    warmup, runs, threads, duration_s, fps = req.warmup, req.runs, req.threads, req.duration_s, req.fps
    timeout = timeout or max(1800, 3 * (duration_s or 0))
    if req.bundle:
        reference_check(path)  # before minutes of timing: an artifact without reference I/O fails now
    args = [sys.executable, "-m", "edgehydra.devices.bench", str(path), str(warmup), str(runs), str(threads),
            req.provider or "", "x".join(map(str, size)) if size else "", str(duration_s or ""), str(fps or "")]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise EdgeHydraError(f"benchmark of {path} did not finish in {timeout:.0f} s") from None
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeHydraError(f"benchmark of {path} failed: {last}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if req.verify:
        from edgehydra.run import run_of_artifact

        run = run_of_artifact(path)
        if run is None:
            raise BadInputError(f"--verify: {path} is not in a run's export folder (no reference to compare with)")
        from edgehydra.exporters.runtime import verify_run

        row = verify_run(run.root, only=path)[0]
        res["verification"] = {k: row.get(k) for k in ("hash_ok", "parity_ok", "reference_kind", "detail")}
        res["verification"]["when"] = "re-run by bench"
    if req.bundle:
        res["bundle_parity"] = reference_parity(path)
    if write:
        out = Path(str(path) + (".sustained.json" if duration_s else ".bench.json"))
        if duration_s:
            from .sustained import plot

            res["plot"] = str(plot(res, Path(str(path) + ".sustained.png"),
                                   f"{path.name} on {res.get('device')} ({res.get('runtime')})"))
        atomic_write_json(out, res)
        res["json"] = str(out)
        record_measurement(path, res)
    return res


def shipped_entry(run, path: Path, sha256: str | None) -> dict | None:
    """The run's export-manifest entry for the artifact at ``path`` if it is that file (same sha256), else None:
    only what ships is measured into the run."""
    entry = next((e for e in run.export_record().get("artifacts", [])
                  if e.get("path") and (run.export_dir / e["path"]).resolve() == Path(path).resolve()), None)
    return entry if entry is not None and entry.get("sha256") == sha256 else None


def record_measurement(path: Path, res: dict) -> Path | None:
    """Keep a measurement in the run its artifact belongs to (RUN/measurements/), where `check` reads it."""
    from edgehydra.run import run_of_artifact

    run = run_of_artifact(path)
    if run is None:
        return None
    entry = shipped_entry(run, path, res.get("sha256"))
    if entry is None:
        res["record_skipped"] = (f"{path} is not the artifact {run.export_manifest} lists (sha256 differs or it is not "
                                 "listed): the measurement was not added to the run")
        return None
    res.setdefault("verification", {"status": entry.get("status"), "when": "at export",
                                    "reference_kind": (entry.get("verification") or {}).get("reference_kind")})
    rec = {k: res.get(k) for k in ("device", "profile", "runner", "sha256", "size", "precision", "threads", "p50_ms",
                                   "p90_ms", "p99_ms", "min_ms", "mean_ms", "runs", "warmup", "peak_memory_mb",
                                   "artifact", "host", "machine", "tool", "command", "verification",
                                   "bundle_parity", "accelerator", "delegate", "emulated")}  # what it ran on
    if res.get("duration_s"):  # a sustained run: its summary travels with the record (the timeline stays beside)
        rec["sustained"] = {k: res.get(k) for k in ("duration_s", "throughput_fps", "throttle_ratio", "window_s",
                                                    "first_window_p50_ms", "last_window_p50_ms", "target_fps",
                                                    "dropped_frames", "dropped_share") if res.get(k) is not None}
    rec = {k: v for k, v in rec.items() if v is not None}
    res["record"] = str(run.add_measurement(rec))
    return Path(res["record"])


def reference_parity(artifact: Path, transport=None, python: str = "python3") -> dict:
    """Run the reference I/O beside an artifact where it runs (its target record's ``sidecar_check``: a .pte's
    .bpte, a .tflite's or .onnx's .reference.npz) and judge each task with the export's tolerance: `bench
    --bundle`, and the demo's bench stage."""
    from edgehydra.exporters.parity import Tolerance
    from edgehydra.exporters.runtime import read_manifest

    artifact = Path(artifact)
    check = reference_check(artifact)
    man = read_manifest(artifact)
    return check(artifact, man, Tolerance(**man["verification"]["tolerance"]), transport, python)


def reference_check(artifact: Path):
    """The export target's routine that runs an artifact's reference I/O; BadInputError where it has none."""
    from edgehydra.exporters import get_target, target_for_suffix

    name = target_for_suffix(Path(artifact).suffix)
    check = get_target(name).sidecar_check if name else None
    if check is None:
        raise BadInputError(f"no reference I/O for {Path(artifact).suffix} artifacts (Core ML runs on macOS only)")
    return check


if __name__ == "__main__":  # the worker: python -m edgehydra.devices.bench PATH WARMUP RUNS THREADS [PROVIDER] [HxW]
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    a = sys.argv[1:]
    sz = tuple(int(v) for v in a[5].split("x")) if len(a) > 5 and a[5] else None
    dur = float(a[6]) if len(a) > 6 and a[6] else None
    fps_ = float(a[7]) if len(a) > 7 and a[7] else None
    try:
        r = bench_in_process(Path(a[0]), int(a[1]), int(a[2]), int(a[3]), a[4] or None if len(a) > 4 else None, sz,
                             dur, fps_)
    except EdgeHydraError as e:
        print(str(e), file=sys.stderr)
        sys.exit(1)
    print(json.dumps(r))

