"""The mixed-precision search's measurements on this host, in the runtime of the device's format.

A device profile with ``host = true`` is this machine: host_cpu ships ExecuTorch, host_cpu_onnxruntime
ONNX, host_cpu_litert TFLite. For those the search does not estimate a layer's gain, it measures it:

1. per-layer latency: the all-int8 program, the FP32 model and (where the format builds them) the program
   with every W8A16 candidate in int16 and the one with every candidate in fp16 are each built as the format's artifact and profiled by that
   runtime's own per-operator tool (devices/opprofile.py profile_here, what `bench --ops` runs): ExecuTorch's
   ETDump per XNNPACK operator, onnxruntime's profiler per node, LiteRT's operators each timed alone in a
   one-operator model cut from the file. Each row is on a module of the model, so
   a layer's int8, float and int16 times come from the same runtime that ships it;
2. whole-model timing: each checked candidate's artifact (built from its trial's program) beside fp32 and
   all-int8, one call of each per round, interleaved, so drift hits all alike (``time_artifacts``).
"""
from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgehydra.errors import EdgeHydraError
from edgehydra.targets import facts_of

from .opprofile import profile_here

# format -> how its per-operator profile is taken here
HOST_PROFILERS = {
    "executorch": "ETDump per XNNPACK operator",
    "onnx": "onnxruntime's profiler per node",
    "tflite": "LiteRT, each operator timed alone",
}

def measured_here(profile) -> bool:
    """The search measures this profile's layers here: a profile of this machine in a format whose runtime
    and per-operator profiler run here."""
    return bool(profile.host) and profile.format in HOST_PROFILERS


def _suffix(fmt: str) -> str:
    return facts_of(fmt).suffix


def build_artifact(fmt: str, model, module, precision: str, size, path: Path, recipe=None) -> Path:
    """``module`` (the FP32 model, or a converted pt2e program for int8) as ``fmt``'s artifact at ``path``:
    the export target's own build, without the verification and manifest a shipped export adds."""
    from edgehydra.exporters import get_target
    from edgehydra.exporters.target import ExportRequest, Source, quiet_backends

    from edgehydra.calibration.program import QuantisedProgram
    from edgehydra.calibration.recipe import load_recipe

    program = None if precision == "fp32" else QuantisedProgram(module, model.config, recipe or load_recipe(None),
                                                                 tuple(size), {"stage": "mixed-search"})
    with quiet_backends():
        get_target(fmt).build(Source(model.eval(), model.config, "", program), ExportRequest(fmt, precision, tuple(size)),
                              path)
    return path


def _build_in_worker(fmt: str, model, program: Path | None, size, path: Path) -> Path:
    """A ``Builds`` worker: the FP32 ``model`` (``program`` None) or the saved ``program`` built at ``path``."""
    from edgehydra.calibration.program import load_program

    if program is None:
        return build_artifact(fmt, model, model, "fp32", size, path)
    prog = load_program(program)
    return build_artifact(fmt, model, prog.module, "int8", size, path, prog.recipe)


def _start_builder() -> None:
    torch.set_num_threads(1)  # a build is single-threaded Python; the search's own work keeps the cores' torch threads


class Builds:
    """The search's artifacts built in worker processes while it goes on (its sweeps, its other builds).

    An ExecuTorch lowering of this topology or a LiteRT/ONNX conversion is tens of seconds of single-threaded
    Python; built in turn they left a core idle for most of the search on a 2-core host. Each artifact is
    submitted as soon as its module exists (the FP32 one at the start, the all-int8 one after its PTQ) and
    waited for where it is profiled or timed, so timing never runs beside a build. A program travels as a saved
    .pt2 (what `export` builds from), the FP32 model pickled. Workers start by ``spawn`` (a forked torch with
    live OpenMP threads can hang)."""

    def __init__(self, fmt: str, model, size, folder: Path, recipe, workers: int = 2):
        self.fmt, self.model, self.size, self.folder, self.recipe = fmt, model.eval(), tuple(size), Path(folder), recipe
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_builder)
        self.futures: dict[str, Future] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.futures

    def submit(self, name: str, module=None) -> None:
        """Build ``name``: the FP32 model where ``module`` is None, else the converted program ``module``."""
        from edgehydra.calibration.program import save_program

        program = None
        if module is not None:
            program = save_program(module, self.folder / f"{name}.pt2", self.model.config, self.recipe, self.size,
                                   {"stage": "mixed-search"})
        self.futures[name] = self.pool.submit(_build_in_worker, self.fmt, self.model, program, self.size,
                                              self.folder / f"{name}{_suffix(self.fmt)}")

    def path(self, name: str) -> Path:
        """``name``'s artifact, once its worker has built it (its error raised here)."""
        try:
            return self.futures[name].result()
        except BrokenProcessPool as e:
            raise EdgeHydraError(f"the worker building the search's {name} {self.fmt} artifact died ({e})") from None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def layer_latency(model, fmt: str, programs: dict, size, runs: int = 20, threads: int = 2, keep_in: Path | None = None,
                  recipe=None, builds: Builds | None = None) -> dict:
    """Measured per-layer ms on this host of each artifact in ``programs`` (precision -> module: "int8" the
    all-int8 program, optional "int16" the program with every W8A16 candidate in int16, optional "fp16" the
    program with every candidate in fp16) and of the FP32
    model. ``keep_in``: a folder that keeps the artifacts (int8.pte, fp32.pte, ...) for the timing after it.
    ``builds``: where an artifact named by its precision is already being built (and kept)."""
    out = {}
    units = dict(programs, fp32=model.eval())
    with tempfile.TemporaryDirectory() as d:
        for prec, module in units.items():
            if builds is not None and prec in builds:
                p = builds.path(prec)
            else:
                p = Path(keep_in or d) / f"{prec}{_suffix(fmt)}"
                build_artifact(fmt, model, module, "fp32" if prec == "fp32" else "int8", size, p, recipe)
            prof = profile_here(p, size, runs=runs, tasks=model.config.tasks, threads=threads, lowered_module=module)
            if not prof["mapped"]:
                raise EdgeHydraError(f"per-operator profile of the {prec} {fmt} artifact could not be mapped to "
                                     f"layers: {prof['unmapped_reason']}")
            out[prec] = {"total_ms": prof["total_ms"], "by_layer": prof["by_layer"], "by_stage": prof["by_stage"]}
            if prec == "int8":  # the input's quantize: the runtime's convert cost per element on this host
                conv_in = [r["ms"] for r in prof["rows"] if r.get("layer") == "input" and r["op_class"].startswith("convert")]
                out["convert_ms_per_elem"] = sum(conv_in) / (3 * size[0] * size[1]) if conv_in else 0.0
    res = {"source": f"measured on this host ({HOST_PROFILERS[fmt]})", "float_precision": "fp32",
           "int8_total_ms": out["int8"]["total_ms"], "float_total_ms": out["fp32"]["total_ms"],
           "int8": out["int8"]["by_layer"], "float": out["fp32"]["by_layer"],
           "convert_ms_per_elem": out.pop("convert_ms_per_elem", 0.0), "profiles": out}
    if "int16" in out:
        res.update(int16=out["int16"]["by_layer"], int16_total_ms=out["int16"]["total_ms"],
                   int16_rate="measured on this host")
    if "fp16" in out:
        res.update(fp16=out["fp16"]["by_layer"], fp16_total_ms=out["fp16"]["total_ms"])
    return res


def time_artifacts(paths: dict[str, Path], size, rounds: int, threads: int) -> dict[str, float]:
    """Median ms of each artifact in its runtime, one call of each per round (interleaved, so drift hits
    all alike)."""
    from .bench import open_runtime

    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # torch only wraps the tensors (see devices/bench.py _make_runner)
    try:
        x = np.zeros((1, 3, *size), np.float32)
        calls = {k: open_runtime(p, threads, None, x, beside_others=True)[0] for k, p in paths.items()}
        for c in calls.values():
            for _ in range(3):
                c()
        times = {k: [] for k in calls}
        for _ in range(rounds):
            for k, c in calls.items():
                t = time.perf_counter()
                c()
                times[k].append((time.perf_counter() - t) * 1e3)
    finally:
        torch.set_num_threads(prev)
    return {k: statistics.median(v) for k, v in times.items()}


@dataclass(frozen=True)
class Timing:
    """How artifacts are timed against each other here: ``rounds`` interleaved calls of each on ``threads``."""
    rounds: int = 5
    threads: int = 2

    def __post_init__(self):
        if self.rounds < 1 or self.threads < 1:
            raise ValueError(f"rounds={self.rounds}, threads={self.threads}: both at least 1")


def time_candidates(model, fmt: str, cands, programs: dict, size, built: Path, timing: Timing,
                    recipe=None, builds: Builds | None = None) -> dict:
    """fp32, all-int8 (the artifacts ``layer_latency`` kept in ``built``) and each candidate's artifact (from
    its trial's program in ``programs``, keyed by ``Candidate.key``), timed interleaved in one run here.
    ``builds``: the candidates' artifacts are built there, all at once, before any is timed."""
    rounds, threads = timing.rounds, timing.threads
    suffix = _suffix(fmt)
    own = [c for c in cands if c.mixed]  # all-int8 is the int8 file already there
    with tempfile.TemporaryDirectory() as d:
        # the fp32 and all-int8 files the profile read: handed over by ``builds`` where it built them
        paths = {k: builds.path(k) if builds is not None and k in builds else built / f"{k}{suffix}"
                 for k in ("fp32", "int8")}
        if builds is not None:
            for i, c in enumerate(own):
                builds.submit(f"cand{i}", programs[c.key])
        for i, c in enumerate(own):
            paths[f"cand:{c.name}"] = (builds.path(f"cand{i}") if builds is not None else
                                       build_artifact(fmt, model, programs[c.key], "int8", size, Path(d) / f"{i}{suffix}",
                                                      recipe))
        t = time_artifacts(paths, size, rounds, threads)
    cand_t = {c.name: t.get(f"cand:{c.name}", t["int8"]) for c in cands}
    return {"fp32": t["fp32"], "int8": t["int8"], "candidates": cand_t, "rounds": rounds, "threads": threads,
            "runtime": fmt}
