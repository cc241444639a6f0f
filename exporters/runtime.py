"""Open any exported artifact in its runtime (via its manifest), and re-verify a run's artifacts."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgehydra.records import validate
from edgehydra._io import read_json, sha256_path
from edgehydra.errors import BadInputError, EdgeHydraError
from edgehydra.model import HydraConfig

from . import get_target, list_targets, target_for_suffix
from .parity import Tolerance, check_parity, reference_kind
from .target import RunnerUnavailable


@dataclass
class Artifact:
    path: Path
    target: str
    precision: str
    config: HydraConfig
    size: tuple[int, int]
    manifest: dict
    runner: Callable

    def forward(self, x: torch.Tensor):
        return [torch.from_numpy(np.asarray(o, np.float32)) for o in self.runner(x.numpy().astype(np.float32))]


def read_manifest(path: Path) -> dict:
    m = Path(str(path) + ".manifest.json")
    if not m.is_file():
        raise BadInputError(f"no manifest beside {path} (expected {m.name}); export it with `edgehydra export`")
    return validate("artifact", read_json(m), m)


def open_artifact(path: Path, check_hash: bool = True) -> Artifact:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"artifact not found: {path}")
    target = target_for_suffix(path.suffix)
    if target is None:
        suffixes = ", ".join(get_target(t).suffix for t in list_targets())
        raise BadInputError(f"{path}: unknown artifact type {path.suffix!r}; expected one of {suffixes}")
    man = read_manifest(path)
    if check_hash and sha256_path(path) != man.get("sha256"):
        raise EdgeHydraError(f"{path}: sha256 does not match its manifest (modified or corrupt); re-export it")
    tgt = get_target(target)
    tgt.require()
    try:
        runner = tgt.load_runner(path, man)
    except RunnerUnavailable as e:
        raise EdgeHydraError(f"{path.name} cannot run on this host: {e}") from None
    return Artifact(path, target, man["precision"], HydraConfig.from_dict(man["model_config"]), tuple(man["size"]),
                    man, runner)


def artifact_program(run, manifest: dict):
    """The quantised program an int8 artifact was exported from: the run's program of the stage its manifest
    names, refused if that file is no longer the one it was made from (sha256). None for an fp32 artifact."""
    from edgehydra.calibration.program import load_program

    sp = manifest.get("source_program")
    if not sp:
        return None
    # the file it was read from at export (an --program from elsewhere), else the run's program of that stage
    path = Path(sp["path"]) if sp.get("path") and Path(sp["path"]).is_file() else run.program_path(sp["stage"])
    if not path.is_file():
        raise BadInputError(f"{manifest.get('artifact')} was exported from the {sp['stage']} program, and {path} is gone")
    prog = load_program(path)
    if sp.get("sha256") and prog.meta["sha256"] != sp["sha256"]:
        raise BadInputError(f"{manifest.get('artifact')} was exported from a {sp['stage']} program with sha256 "
                            f"{sp['sha256'][:12]}; {path} is now {prog.meta['sha256'][:12]}: re-export it")
    return prog


def verify_run(run: Path, only: Path | None = None) -> list[dict]:
    """Hashes and parity of every artifact listed in RUN/export/manifest.json (or of ``only``, one of them):
    the same routine as export's (check_parity, the reference and tolerance its manifest records)."""
    from edgehydra.run import Run

    from .export_stage import open_source, parity_frames

    mf = Run(run).export_manifest
    if not mf.is_file():
        raise BadInputError(f"no export manifest at {mf}: run `edgehydra export --run {run}` first")
    entries = json.loads(mf.read_text())["artifacts"]
    if only is not None:
        entries = [e for e in entries if e.get("path") and (mf.parent / e["path"]).resolve() == Path(only).resolve()]
        if not entries:
            raise BadInputError(f"{only} is not listed in {mf}")
    model, info, _, ds = open_source(Path(run), None, None, None, with_program=False)
    programs = {}
    from edgehydra.data import Resize
    from edgehydra.dataspec import open_split

    rows = []
    frames_cache = {}
    for e in entries:
        if not e.get("path"):
            continue
        path = mf.parent / e["path"]
        row = {"artifact": e["path"], "hash_ok": False, "parity_ok": None, "detail": ""}
        if not path.exists():
            row["detail"] = "artifact missing"
            rows.append(row)
            continue
        row["hash_ok"] = sha256_path(path) == e.get("sha256")
        if not row["hash_ok"]:
            row["detail"] = "sha256 differs from the manifest"
            rows.append(row)
            continue
        man = read_manifest(path)
        size = tuple(man["size"])
        if size not in frames_cache:
            frames_cache[size] = parity_frames(open_split(dict(ds, size=list(size)), "val", transform=Resize(size)))
        frames = frames_cache[size]
        try:
            runner = get_target(e["target"]).load_runner(path, man)
        except RunnerUnavailable as ex:
            row["detail"] = f"parity skipped: {ex}"
            rows.append(row)
            continue
        ver = man.get("verification") or {}
        if not ver.get("tolerance"):
            row["parity_ok"] = False
            row["detail"] = "the manifest records no parity tolerance: re-export it"
            rows.append(row)
            continue
        kind = ver.get("reference_kind") or reference_kind(e["precision"], man.get("facts") or {})
        if kind == "program":
            # the program this artifact was made from (a run may hold both ptq/ and qat/), not the run's newest
            stage = (man.get("source_program") or {}).get("stage")
            try:
                if stage not in programs:
                    programs[stage] = artifact_program(Run(run), man)
                prog = programs[stage]
            except BadInputError as ex:
                row["parity_ok"], row["detail"] = False, str(ex)
                rows.append(row)
                continue
            if prog is None:
                row["detail"] = "no quantised program in the run to compare with"
                rows.append(row)
                continue
        res = check_parity(runner, prog.module if kind == "program" else model, kind, frames,
                           man["input"]["shape"][0], model.config.tasks, Tolerance(**ver["tolerance"]))
        row["parity_ok"] = not res["failures"]
        row["reference_kind"] = kind
        row["parity"] = res["parity"]
        row["detail"] = "; ".join(res["failures"]) or (
            f"argmax agreement {res['parity']['segm']['argmax_agreement']:.4f} vs {kind}")
        rows.append(row)
    return rows


__all__ = ["open_artifact", "verify_run", "list_targets"]
