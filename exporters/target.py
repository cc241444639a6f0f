"""What every export shares: the target record, the request, sources, and the run-verify-manifest pipeline.

One target = one module exposing ``TARGET`` (an :class:`ExportTarget`) with two functions:
``build(source, request, path)`` writes the artifact at ``path`` (a temporary that becomes the
final name only when it is complete) and returns facts about it; ``load_runner(path, info)``
returns a callable numpy NCHW float32 -> list of output arrays, or raises ``RunnerUnavailable``
with the reason (Core ML off macOS). Timing, size, hashes, atomic writes, parity and the manifest
are done here, once.
"""
from __future__ import annotations

import contextlib
import errno
import importlib.metadata as md
import logging
import os
import warnings
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgehydra import __version__
from edgehydra.records import schema
from edgehydra._io import atomic_path, atomic_write_json, path_size, sha256_path
from edgehydra.errors import BadInputError, EdgeHydraError, MissingBackendError
from edgehydra.model import HydraConfig
from edgehydra.quiet import quiet_torch_warnings
from edgehydra.targets import TargetFacts

from .parity import (DEFAULT_TOLERANCES, REFERENCES, Tolerance, check_parity, default_tolerance,  # noqa: F401
                     parity, reference_kind, run_outputs, within)


# Third-party noise that says nothing about the user's model: torch.onnx lists torchvision ops it
# skips (torchvision is not a dependency), pytree deprecations inside torch.export, and a warning that a
# pt2e GraphModule is "in training mode" (it has no train/eval state of its own).
logging.getLogger("torch.onnx").setLevel(logging.ERROR)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # LiteRT's C++ INFO lines
# litert-torch's converter bundles TensorFlow, whose import logs "oneDNN custom operations are on" through absl (two
# lines on stderr in every export that TF_CPP_MIN_LOG_LEVEL no longer silences). TF's own CPU kernels do not make
# the artifact: the tiny run's fp32, fp16 and int8 .tflite files are byte-identical with and without them.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
quiet_torch_warnings()
warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")


@contextlib.contextmanager
def quiet_backends():
    """Mute what converters print for themselves while they build: coremltools and ai-edge-quantizer
    draw a tqdm bar per pass (dozens per export; ours is the export bar) and coremltools logs version
    warnings at import. tqdm reads TQDM_DISABLE only when it is first imported, which happens before
    any exporter runs, so the bars are disabled here, for the build, and restored after."""
    try:
        import tqdm.std
    except ImportError:  # only coremltools and ai-edge-quantizer bring tqdm (and its bars)
        tqdm = None
    orig = tqdm.std.tqdm.__init__ if tqdm else None

    def init(self, *args, **kwargs):
        kwargs["disable"] = True
        orig(self, *args, **kwargs)

    loggers = {n: logging.getLogger(n) for n in ("coremltools", "absl")}
    levels = {n: lg.level for n, lg in loggers.items()}
    if tqdm:
        tqdm.std.tqdm.__init__ = init
    for lg in loggers.values():
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        if tqdm:
            tqdm.std.tqdm.__init__ = orig
        for n, lg in loggers.items():
            lg.setLevel(levels[n])


@contextlib.contextmanager
def muted_native_stderr():
    """Send what native code writes to file descriptor 2 to /dev/null (Python's sys.stderr is
    flushed first and restored after): for C++ libraries that log unconditionally."""
    import sys

    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class RunnerUnavailable(Exception):
    """The artifact cannot run on this host; the message says why (it goes into the report)."""


@dataclass(frozen=True)
class ExportTarget(TargetFacts):
    """A target's facts (edgehydra/targets.py) and the functions that build and run its artifacts."""

    build: Callable = None
    load_runner: Callable = None
    # writes a reference-I/O sidecar after verification (ExecuTorch: a BundledProgram, exporters/bundle.py)
    sidecar: Callable | None = None
    # (artifact, manifest, tol, transport, python) -> per-task verdict of that sidecar run where the artifact runs
    sidecar_check: Callable | None = None
    # (manifest, profile) -> how a device runs it: tool, binaries, flags, accelerator, argv(exe, path, threads,
    # runs, warmup); devices/remote.py runs and parses it. None: no device runner (Core ML: --apple-script)
    remote_plan: Callable | None = None

    @classmethod
    def of(cls, facts: TargetFacts, **functions) -> "ExportTarget":
        return cls(**facts.facts(), **functions)

    def installed(self) -> bool:
        import importlib.util

        return all(importlib.util.find_spec(p) is not None for p in self.packages)

    def require(self):
        for p in self.packages:
            import importlib.util

            if importlib.util.find_spec(p) is None:
                raise MissingBackendError(p, self.extra, f"{self.name} export")

    def runs_here(self) -> bool:
        return not self.runtime_os or platform.system() in self.runtime_os


@dataclass(frozen=True)
class ExportRequest:
    target: str
    precision: str
    size: tuple[int, int]
    batch: int = 1
    options: dict = field(default_factory=dict)
    tolerance: Tolerance | None = None
    # an int8 artifact of a program variant (an applied mixed-precision recipe: "mixed-host_cpu") is named for
    # it, so it sits beside the run's uniform artifact instead of replacing it
    variant: str = ""

    def __post_init__(self):
        if self.variant and (self.precision != "int8" or not self.variant.replace("-", "").replace("_", "").isalnum()):
            raise ValueError(f"variant={self.variant!r}: int8 only, letters, digits, '-' and '_' (e.g. mixed-host_cpu)")
        if self.batch < 1:
            raise ValueError(f"batch={self.batch}: >= 1")
        h, w = self.size
        if h < 32 or w < 32:
            raise ValueError(f"size={self.size}: at least 32x32")

    @property
    def tol(self) -> Tolerance:
        return self.tolerance or DEFAULT_TOLERANCES[self.precision]


@dataclass
class Source:
    """What an export starts from: the FP32 model, and the quantised program for int8."""

    fp32: torch.nn.Module
    config: HydraConfig
    checkpoint_sha256: str
    program: object | None = None  # calibration.program.QuantisedProgram
    calib_dataset: object | None = None  # for targets that quantise with their own quantizer (TFLite)

    def reference(self, precision: str) -> Callable:
        """The PyTorch model an artifact of this precision is compared with."""
        if precision == "int8":
            if self.program is None:
                raise BadInputError("int8 export needs a quantised program: run `edgehydra ptq` or `qat` first, "
                                    "or pass --program FILE.pt2")
            return self.program.module
        return self.fp32


def listed_sidecar(artifact: Path, manifest: dict, key: str, path: Path) -> Path:
    """``path``, the sidecar the artifact's manifest lists under ``key``, present and unchanged (sha256)."""
    from edgehydra._io import sha256_path

    side = (manifest.get("sidecars") or {}).get(key)
    if side is None or not Path(path).is_file():
        raise BadInputError(f"no reference I/O beside {artifact} (export it again: exports write one)")
    if sha256_path(path) != side["sha256"]:
        raise BadInputError(f"{path} differs from the one its manifest lists (sha256)")
    return Path(path)


def tool_versions(*dists: str) -> dict:
    out = {"edgehydra": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for d in dists:
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class ExportResult:
    target: str
    precision: str
    status: str  # verified | exported (verification skipped) | failed
    path: Path | None
    manifest: dict
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def artifact_name(precision: str, size, suffix: str, variant: str = "") -> str:
    """hydranet_int8_240x320.pte: the file name says the precision and the input size it was built for, and a
    program variant where there is one (hydranet_int8-mixed-host_cpu_240x320.pte)."""
    return f"hydranet_{precision}{'-' + variant if variant else ''}_{size[0]}x{size[1]}{suffix}"


def remove_temporaries(final: Path) -> None:
    """The temporaries a killed export of ``final`` left beside it (``_io.atomic_path`` names them .FINAL.*)."""
    for stale in final.parent.glob(f".{final.name}.*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def export_one(target: ExportTarget, source: Source, req: ExportRequest, out_dir: Path, frames: np.ndarray,
               val_eval: Callable | None = None) -> ExportResult:
    """build -> place atomically -> run in its runtime -> parity vs reference -> task metrics -> manifest."""
    if req.precision not in target.precisions:
        raise BadInputError(f"{target.name} does not support precision {req.precision!r}; "
                            f"supported: {', '.join(target.precisions)}")
    target.require()
    source.reference(req.precision)  # an int8 export without a quantised program fails here, before building
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / artifact_name(req.precision, req.size, target.suffix, req.variant)
    remove_temporaries(final)
    t0 = time.perf_counter()
    try:
        with atomic_path(final) as tmp, quiet_backends():
            facts = target.build(source, req, tmp) or {}
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise EdgeHydraError(f"disk full while writing {final.name} ({e.strerror}); nothing was left under "
                                 f"{final}: free space and export again") from None
        raise
    export_s = time.perf_counter() - t0
    if req.precision == "int8" and source.program is not None and "translation" not in facts:
        # what this target could not honour of the recipe the program was quantised with, recorded for every
        # target (the TFLite fallback records its own ai-edge-quantizer translation)
        from edgehydra.calibration.quantizers import translate

        facts["translation"] = translate(source.program.recipe, target.quantizer_backend, target=target.name).to_dict()
    from .precision_map import artifact_map

    pmap = artifact_map(source, target.name, req.precision, facts, final)
    changed = [f"{r['layer']} ({r['op']})" for r in pmap.get("layers", []) if r.get("changed_by_converter")]
    if changed:  # read back from the artifact: the converter did not keep the program's precision there
        facts.setdefault("translation", {}).setdefault("issues", []).append(
            f"{target.name} converter changed the precision of {', '.join(changed)} (see precision_map)")
    manifest = {"schema": schema("artifact"), "artifact": final.name, "target": target.name, "precision": req.precision, "variant": req.variant or None,
                "input": {"name": "image", "shape": [req.batch, 3, *req.size], "layout": facts.get("layout", "NCHW"),
                          "dtype": facts.get("input_dtype", "float32"),
                          "normalisation": {"mean": list(source.config.mean), "std": list(source.config.std)}},
                "outputs": list(source.config.tasks), "classes": list(source.config.class_names),
                "model_config": source.config.to_dict(), "size": list(req.size),
                "sha256": sha256_path(final), "size_bytes": path_size(final), "export_seconds": export_s,
                "source_checkpoint_sha256": source.checkpoint_sha256,
                "source_program": ({"stage": source.program.meta.get("stage"), "sha256": source.program.meta.get("sha256"),
                                    "path": str(source.program.path) if source.program.path else None,
                                    "size": list(source.program.size),
                                    "weights_and_ranges_carried_over": "quantised_by" not in facts,
                                    **({"quantised_by": facts["quantised_by"]} if "quantised_by" in facts else {})}
                                   if (req.precision == "int8" and source.program) else None),
                "recipe": source.program.recipe.to_dict() if (req.precision == "int8" and source.program) else None,
                "not_honoured": list((facts.get("translation") or {}).get("issues", [])),
                "precision_map": pmap,
                "tools": tool_versions(*facts.pop("tools", ())), "facts": facts, "verification": {}}
    status, reason = "verified", ""
    kind = reference_kind(req.precision, facts)
    tol = req.tolerance or default_tolerance(req.precision, kind)
    try:
        runner = target.load_runner(final, manifest)
    except RunnerUnavailable as e:
        runner, status, reason = None, "exported", f"verification skipped: {e}"
    if runner is not None:
        ref_fn = source.fp32.eval() if kind == "fp32" else source.reference("int8")
        manifest["verification"] = check_parity(runner, ref_fn, kind, frames, req.batch, source.config.tasks, tol)
        fails = manifest["verification"]["failures"]
        if val_eval is not None:
            manifest["metrics"] = val_eval(runner)
        if fails:
            status, reason = "failed", "; ".join(fails)
        elif target.sidecar is not None:
            manifest["sidecars"] = target.sidecar(final, frames, run_outputs(ref_fn, frames), source.config.tasks, tol)
    else:
        manifest["verification"] = {"skipped": reason, "reference_kind": kind, "reference": REFERENCES[kind]}
    manifest["status"], manifest["reason"] = status, reason
    atomic_write_json(Path(str(final) + ".manifest.json"), manifest)
    return ExportResult(target.name, req.precision, status, final, manifest, reason)
