"""The export stage of a run: every requested (target, precision), verified, in one manifest.

    runs/NAME/export/<target>/hydranet_<precision><suffix>           the artifact
    runs/NAME/export/<target>/hydranet_<precision><suffix>.manifest.json
    runs/NAME/export/manifest.json                                    all artifacts, hashes, parity, metrics
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from edgehydra._io import atomic_write_json
from edgehydra.checkpoint import load_checkpoint
from edgehydra.data import Resize
from edgehydra.records import stamp
from edgehydra.errors import BadInputError, EdgeHydraError, MissingBackendError
from edgehydra.metrics import Metrics
from edgehydra.dataspec import open_eval_split, open_split, resolve_size, run_data_settings

from . import get_target, installed_targets, list_targets
from .parity import Tolerance
from .target import ExportRequest, ExportResult, Source, artifact_name, export_one

PARITY_FRAMES = 8


@dataclass(frozen=True)
class ExportSource:
    """What is exported: a run (its checkpoint, data and, for int8, its program: QAT before PTQ), or a checkpoint
    and / or a quantised program named directly; ``program`` beside ``run`` ships that program instead of the
    run's (the mixed-precision ``apply`` hands its own). ``dataset``: the frames for parity and metrics."""
    run: Path | None = None
    checkpoint: Path | None = None
    program: Path | None = None
    dataset: str | None = None

    def __post_init__(self):
        if self.run is None and self.checkpoint is None and self.program is None:
            raise BadInputError("export: pass --run DIR, --checkpoint FILE or --program FILE")


@dataclass(frozen=True)
class ExportSettings:
    """How it is exported: the input size (None: the program's, else the data spec's), each target's options,
    parity tolerances per precision, validation frames for the artifact's metrics, and whether a target whose
    backend is not installed fails the export (True) or is reported as skipped."""
    size: tuple | None = None
    options: dict = field(default_factory=dict)
    tolerances: dict = field(default_factory=dict)
    eval_frames: int = 32
    strict_missing: bool = True
    # (target, precision) pairs exported at once, each in a process of its own: the converters and ExecuTorch's
    # lowering are single-threaded Python, so on 2 cores two of them take about the time of the longer one
    jobs: int = 1

    def __post_init__(self):
        object.__setattr__(self, "options", dict(self.options or {}))
        object.__setattr__(self, "tolerances", dict(self.tolerances or {}))
        if self.size is not None:
            object.__setattr__(self, "size", tuple(self.size))
        if self.eval_frames < 1:
            raise BadInputError(f"export: eval_frames must be >= 1, not {self.eval_frames}")
        if self.jobs < 1:
            raise BadInputError(f"export: jobs must be >= 1, not {self.jobs}")


def open_source(run: Path | None, checkpoint: Path | None, program: Path | None, dataset: str | None,
                with_program: bool = True):
    """FP32 model (+ quantised program) and the data they were made with. From a run alone: its record
    knows the checkpoint (its own fp32.pt or the one a ptq/qat run started from), the data and the program
    (not loaded with ``with_program=False``: `verify` judges each artifact against its own program)."""
    from edgehydra.calibration.program import load_program
    from edgehydra.run import Run

    base = None
    if run is not None:
        r = Run(run)
        checkpoint = checkpoint or r.checkpoint()
        program = program or (r.program() if with_program else None)
        base = r.record().get("data")
    prog = load_program(program) if program is not None else None
    if checkpoint is None and prog is not None:
        checkpoint = Path(prog.meta.get("source_checkpoint", ""))
    if checkpoint is None or not Path(checkpoint).is_file():
        raise BadInputError(f"no FP32 checkpoint found ({checkpoint}); pass --run DIR or --checkpoint FILE")
    model, info = load_checkpoint(checkpoint)
    if prog is not None and prog.meta.get("source_sha256") not in (None, info["sha256"]):
        raise BadInputError(f"{prog.path} was quantised from a checkpoint with sha256 {prog.meta['source_sha256'][:12]}, "
                            f"not {checkpoint} ({info['sha256'][:12]}): pass the checkpoint it was made from")
    ds = run_data_settings(Path(checkpoint), dataset, base=base or (prog.meta.get("data") if prog else None))
    return model, info, prog, ds


def parity_frames(val, n: int = PARITY_FRAMES) -> np.ndarray:
    """Real frames from the validation split (not noise): what the artifact will actually see."""
    k = min(n, len(val))
    return torch.stack([val[i]["image"] for i in range(k)]).numpy().astype(np.float32)


def eval_runner(val, cfg, limit: int, view=None):
    """Task metrics of an artifact on the validation frames, as `eval` scores them (``view``: dataspec.EvalView;
    a native-resolution dataset's frames are padded to the artifact's input and its outputs cropped back)."""
    from edgehydra.train import _crop_to_labels

    def run(runner):
        m = Metrics(cfg.num_classes, getattr(val, "depth_cap", cfg.depth_cap))
        for i in range(min(limit, len(val))):
            s = val[i]
            outs = [torch.from_numpy(np.asarray(o, np.float32)) for o in runner(s["image"][None].numpy())]
            if view is not None and view.padded:
                outs = _crop_to_labels(outs, s["image"].shape[-2:], s["segm"].shape[-2:])
            batch = {k: v[None] if torch.is_tensor(v) else v for k, v in s.items()}
            m.update(dict(zip(cfg.tasks, outs)), batch)
        r = m.compute()
        r.pop("iou_per_class", None)
        r["frames"] = min(limit, len(val))
        if view is not None:
            r["protocol"] = view.protocol
        return r

    return run


def plan(targets: list[str], precisions: list[str] | None, have_program: bool) -> list[tuple[str, str]]:
    """(target, precision) pairs. 'all' = every installed target; default precisions = all each supports
    (int8 only when a quantised program exists). An explicit unsupported pair is refused; with 'all' the
    precisions asked are taken where each target has them (Core ML has no fp32)."""
    every = targets == ["all"]
    names = installed_targets() if every else targets
    pairs = []
    for t in names:
        if t not in list_targets():
            raise BadInputError(f"unknown target {t!r}; choose from {', '.join(list_targets())} or all")
        tgt = get_target(t)
        if precisions:
            for p in precisions:
                if every and p not in tgt.precisions:
                    continue
                if p not in tgt.precisions:
                    raise BadInputError(f"{t} does not support precision {p!r}; supported: {', '.join(tgt.precisions)}")
                pairs.append((t, p))
        else:
            pairs += [(t, p) for p in tgt.precisions if p != "int8" or have_program]
    return pairs


def dropped_int8(targets: list[str], precisions: list[str] | None, have_program: bool) -> list[str]:
    """Targets whose int8 row a default plan leaves out because the run has no quantised program."""
    if precisions or have_program:
        return []
    names = installed_targets() if targets == ["all"] else targets
    return [t for t in names if "int8" in get_target(t).precisions]


class _Exporter:
    """``source`` opened once (model, program, data, frames) and each (target, precision) exported from it."""

    def __init__(self, out: Path, source: ExportSource, settings: ExportSettings, strict: bool):
        model, info, prog, ds = open_source(source.run, source.checkpoint, source.program, source.dataset)
        # strict: a target asked for by name whose backend is missing fails the export (not so for 'all')
        self.out, self.settings, self.model, self.strict = Path(out), settings, model, strict
        self.variant = (prog.meta.get("variant") or "") if prog is not None else ""
        self.size = resolve_size(cli=settings.size, program=prog.size if prog else None, data=ds)
        self.ds = dict(ds, size=list(self.size))  # synthroom renders its frames at the size asked; real data is resized
        self.val, self.view = open_eval_split(self.ds, self.size, fixed=True)  # one input size: eval's path for it
        calib_ds = open_split(self.ds, "train", transform=Resize(self.size)) if prog is not None else None
        self.src = Source(model, model.config, info["sha256"], prog, calib_ds)
        self.have_program = prog is not None

    @cached_property
    def frames(self) -> np.ndarray:
        """The parity frames, rendered where a pair is exported (not in the parent of a pool, which exports none)."""
        return parity_frames(self.val)

    def variant_of(self, precision: str) -> str:
        """The program variant an artifact of ``precision`` is named for: int8 only (fp32 has no program)."""
        return self.variant if precision == "int8" else ""

    def export(self, t: str, p: str) -> ExportResult:
        """One pair: its result, a target that failed included (a bad input or a missing backend asked for by
        name raises)."""
        settings, tgt = self.settings, get_target(t)
        try:
            tgt.require()
        except MissingBackendError as e:
            if self.strict:
                raise
            return ExportResult(t, p, "skipped", None, {}, str(e))
        req = ExportRequest(t, p, self.size, options=dict(settings.options), tolerance=settings.tolerances.get(p),
                            variant=self.variant_of(p))
        try:
            r = export_one(tgt, self.src, req, self.out / t, self.frames,
                           eval_runner(self.val, self.model.config, settings.eval_frames, self.view))
        except (BadInputError, MissingBackendError):
            raise
        except EdgeHydraError as e:
            r = ExportResult(t, p, "failed", None, {}, str(e))
        except Exception as e:  # noqa: BLE001 - one target failing must not hide the others' results
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            r = ExportResult(t, p, "failed", None, {}, f"{type(e).__name__}: {msg}")
        if not r.manifest:  # a failed build still names the variant it was for (the manifest keys on it)
            r.manifest = {"variant": req.variant or None}
        return r

    def final_path(self, t: str, p: str) -> Path:
        """Where the (target, precision) artifact lands."""
        return self.out / t / artifact_name(p, self.size, get_target(t).suffix, self.variant_of(p))


def export_run(out: Path, targets: list[str], precisions: list[str] | None = None, *, source: ExportSource,
               settings: ExportSettings = ExportSettings(), progress=None) -> list[ExportResult]:
    """Export each (target, precision) pair of ``source`` as ``settings`` say (``settings.jobs`` of them at
    once). ``source.program``: the quantised program to ship as int8; without it the run's own (QAT before PTQ).
    A program variant (``meta["variant"]``, an applied mixed recipe) names its int8 artifacts for itself, beside
    the run's uniform ones."""
    strict = settings.strict_missing and targets != ["all"]
    ex = _Exporter(Path(out), source, settings, strict)
    pairs = plan(targets, precisions, ex.have_program)
    results: list[ExportResult] = [
        ExportResult(t, "int8", "skipped", None, {}, "no quantised program: run `edgehydra ptq` (or `qat`) on this "
                                                     "run first, or pass --program FILE.pt2")
        for t in dropped_int8(targets, precisions, ex.have_program)]
    task = progress.add_task("export", total=len(pairs)) if progress else None

    def done(r: ExportResult):
        if progress:
            progress.update(task, advance=1, info=f"{r.target} {r.precision}: {r.status}")

    if settings.jobs > 1 and len(pairs) > 1:
        from .export_pool import export_in_pool

        results += export_in_pool(ex, source, pairs, done)
    else:
        for t, p in pairs:
            if progress:
                progress.update(task, info=f"{t} {p}")
            results.append(ex.export(t, p))
            done(results[-1])
    write_manifest(Path(out), results, ex.ds, ex.size)
    return results


def write_manifest(out: Path, results: list[ExportResult], ds: dict, size) -> None:
    """OUT/manifest.json lists every artifact in OUT: this export's, and those of earlier exports at
    other (target, precision, size) whose files are still there (an export at a second size adds to the
    run, it does not hide the first)."""
    entries = []
    for r in results:
        e = {"target": r.target, "precision": r.precision, "variant": r.manifest.get("variant"), "size": list(size),
             "status": r.status, "reason": r.reason, "path": str(r.path.relative_to(out)) if r.path else None}
        e.update({k: r.manifest.get(k) for k in ("sha256", "size_bytes", "export_seconds", "verification", "metrics",
                                                 "facts", "tools", "recipe", "source_program", "not_honoured") if k in r.manifest})
        pm = r.manifest.get("precision_map") or {}
        if pm:  # the combined manifest carries the counts; the artifact's own manifest has every layer
            e["precision_summary"] = pm.get("summary") or {pm["uniform"]: "all"}
        entries.append(e)
    # an entry is its (target, precision, variant, size): a variant's artifact sits beside the uniform one
    def key(e):
        return e["target"], e["precision"], e.get("variant"), tuple(e["size"])

    keys = {key(e) for e in entries}
    old = out / "manifest.json"
    if old.is_file():
        try:
            prev = json.loads(old.read_text()).get("artifacts", [])
        except json.JSONDecodeError:
            prev = []
        entries += [e for e in prev if e.get("size") and e.get("path") and (out / e["path"]).exists()
                    and key(e) not in keys]
    atomic_write_json(out / "manifest.json", stamp("export", {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "data": ds,
                                                              "artifacts": entries}))


def summary_rows(results: list[ExportResult]) -> list[dict]:
    rows = []
    for r in results:
        m = r.manifest
        par = (m.get("verification") or {}).get("parity") or {}
        met = m.get("metrics") or {}
        rows.append({"target": r.target, "precision": r.precision, "status": r.status, "reason": r.reason,
                     "path": str(r.path) if r.path else None,
                     "size_mb": m.get("size_bytes", 0) / 2 ** 20 if m else None,
                     "argmax": par.get("segm", {}).get("argmax_agreement"),
                     "depth_rel": par.get("depth", {}).get("depth_rel_err"),
                     "miou": met.get("miou"), "rmse": met.get("rmse")})
    return rows


def parse_tolerances(items: tuple[str, ...]) -> dict:
    """--tol int8=0.9,0.08  -> {int8: Tolerance(0.9, 0.08)}"""
    out = {}
    for it in items:
        try:
            prec, vals = it.split("=")
            a, d = (float(v) for v in vals.split(","))
            out[prec] = Tolerance(a, d)
        except ValueError as e:
            raise BadInputError(f"--tol {it!r}: expected PRECISION=MIN_ARGMAX_AGREEMENT,MAX_DEPTH_REL_ERR ({e})") from None
    return out


__all__ = ["export_run", "summary_rows", "EdgeHydraError"]
