"""The run record: one owner for a run folder's layout and for what the run was made from.

    RUN/run.json                  source checkpoint (path, sha256), data settings, input size, model config,
                                  the sha256 of each quantised program
    RUN/fp32.pt                   a trained FP32 model (`train`), or none when the run started from a
                                  brought checkpoint (`ptq`/`qat --checkpoint C --out RUN`)
    RUN/ptq/program.pt2 · RUN/qat/program.pt2   (+ report.json each; RUN/qat/state.pt resume state)
    RUN/export/manifest.json · RUN/export/<target>/hydranet_<precision>[_<H>x<W>]<suffix>
    RUN/measurements/*.json       latency records, each tied to an artifact's sha256 and input size
    RUN/devices/<profile>.toml    profiles calibrated on this run's measurements
    RUN/debug/<artifact>/         `edgehydra debug`: per-layer parity table (layers.json) and plot
    RUN/train.json · RUN/fp32_metrics.json · RUN/sensitivity/ · RUN/mixed/<device>/
    RUN/stages/<stage>.json · RUN/check.json · RUN/demo.json · RUN/report/   (demo, check, report)

Every command resolves a ``Run`` once and asks it; nothing else joins these path strings. The run's
input size has one owner: the size its data settings record (what the model was trained or
quantised at); an export at another size is asked for explicitly with ``--size``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ._io import atomic_write_json, read_json, sha256_path
from .dataspec import DataSpec, recorded_data
from .errors import BadInputError
from .records import stamp, validate

RECORD = "run.json"
STAGES = ("qat", "ptq")  # quantised programs, preferred in this order


@dataclass(frozen=True)
class Run:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))
        self.record()  # a damaged record is refused here, by every command that opens the run, and never rewritten

    # ----------------------------------------------------------------------------------- layout
    @property
    def record_path(self) -> Path:
        return self.root / RECORD

    @property
    def fp32(self) -> Path:
        return self.root / "fp32.pt"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def program_path(self, stage: str, variant: str | None = None) -> Path:
        """RUN/<stage>/program.pt2, the run's program of that stage; a variant (a mixed-precision recipe applied
        for one device, ``mixed-<device>``) has its own folder, RUN/<stage>/<variant>/, and never replaces it."""
        return self._stage_folder(stage, variant) / "program.pt2"

    def stage_report(self, stage: str, variant: str | None = None) -> Path:
        return self._stage_folder(stage, variant) / "report.json"

    def qat_state_of(self, variant: str | None = None) -> Path:
        return self._stage_folder("qat", variant) / "state.pt"

    @property
    def qat_state(self) -> Path:
        return self.qat_state_of()

    def _stage_folder(self, stage: str, variant: str | None) -> Path:
        if variant is not None and (not variant or "/" in variant or variant.startswith(".")):
            raise BadInputError(f"program variant {variant!r}: a plain name such as mixed-host_cpu")
        return self.root / stage / variant if variant else self.root / stage

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def export_manifest(self) -> Path:
        return self.export_dir / "manifest.json"

    @property
    def measurements_dir(self) -> Path:
        return self.root / "measurements"

    @property
    def train_log(self) -> Path:
        return self.root / "train.json"

    @property
    def fp32_metrics(self) -> Path:
        return self.root / "fp32_metrics.json"

    @property
    def sensitivity_dir(self) -> Path:
        return self.root / "sensitivity"

    def mixed_dir(self, device: str) -> Path:
        return self.root / "mixed" / device

    def mixed_fronts(self) -> list[Path]:
        return sorted((self.root / "mixed").glob("*/front.json"))

    def stage_record(self, name: str) -> Path:
        """`edgehydra demo`'s record of one stage (settings hash, result)."""
        return self.root / "stages" / f"{name}.json"

    @property
    def robot_dir(self) -> Path:
        """`edgehydra stream` recordings and `edgehydra stability` records."""
        return self.root / "robot"

    @property
    def stability_record(self) -> Path:
        return self.robot_dir / "stability.json"

    @property
    def check_record(self) -> Path:
        return self.root / "check.json"

    @property
    def demo_summary(self) -> Path:
        return self.root / "demo.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def debug_dir(self, artifact: Path) -> Path:
        """Where `edgehydra debug` writes its per-layer table and plot for one artifact."""
        return self.root / "debug" / Path(artifact).name

    def calibrated_profile(self, name: str) -> Path:
        return self.root / "devices" / f"{name}.toml"

    # ----------------------------------------------------------------------------------- record
    def record(self) -> dict:
        """RUN/run.json, validated: valid JSON, an object, its data settings a valid data spec, each program
        entry with a path and sha256. Anything else is refused in one line naming the file."""
        if not self.record_path.is_file():
            return {}
        try:
            rec = json.loads(self.record_path.read_text())
        except json.JSONDecodeError as e:
            raise BadInputError(f"{self.record_path}: invalid JSON ({e}); the run record is damaged: restore it or "
                                "start a new run") from None
        if not isinstance(rec, dict):
            raise BadInputError(f"{self.record_path}: not a run record (a JSON object); restore it or start a new run")
        if rec.get("data") is not None:
            DataSpec.from_dict(rec["data"] if isinstance(rec["data"], dict) else {}, f"{self.record_path} (data)")
        for k, v in (rec.get("programs") or {}).items():
            if not isinstance(v, dict) or not v.get("path") or not v.get("sha256"):
                raise BadInputError(f"{self.record_path}: program entry {k!r} lacks its path or sha256; restore the "
                                    "record or quantise again into a new run")
        return rec

    def note_source(self, checkpoint: Path, sha256: str, data: dict) -> None:
        """Record the checkpoint a stage started from and its data settings. A run holds one source:
        a stage started from another checkpoint is refused rather than mixed in."""
        rec = self.record()
        checkpoint = Path(checkpoint).resolve()
        if checkpoint == self.fp32.resolve():  # the run's own model (train): it may be retrained, not pinned
            if "data" not in rec and self.root.is_dir():
                atomic_write_json(self.record_path, dict(rec, data=data))
            return
        old = rec.get("source")
        if old and old["sha256"] != sha256:
            raise BadInputError(f"{self.root} was made from {old['path']} (sha256 {old['sha256'][:12]}); "
                                f"{checkpoint} is another checkpoint: use a new --out")
        rec["source"] = {"path": str(checkpoint), "sha256": sha256}
        rec.setdefault("data", data)
        rec.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.record_path, rec)

    def note_program(self, stage: str, path: Path, config: dict, recipe: str, size, variant: str | None = None) -> None:
        """Record a quantised program this run now holds: its sha256 (an artifact's manifest names it; a
        program replaced later no longer matches), the model config it carries, recipe and size."""
        rec = self.record()
        rec.setdefault("programs", {})[f"{stage}/{variant}" if variant else stage] = {"path": str(Path(path).relative_to(self.root)),
                                                 "sha256": sha256_path(path), "recipe": recipe, "size": list(size),
                                                 "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        rec["model_config"] = config  # input size, mean/std, tasks and classes travel with the model's config
        atomic_write_json(self.record_path, rec)

    def checkpoint(self) -> Path:
        """The FP32 checkpoint of this run: its own fp32.pt, else the one its record names (checked by hash)."""
        if self.fp32.is_file():
            return self.fp32
        src = self.record().get("source")
        if src:
            p = Path(src["path"])
            if not p.is_file():
                raise BadInputError(f"{self.root} was made from {p}, which is gone: put it back or pass --checkpoint")
            if sha256_path(p) != src["sha256"]:
                raise BadInputError(f"{p} changed since {self.root} was made from it (sha256 differs): "
                                    "pass the original with --checkpoint")
            return p
        raise BadInputError(f"no FP32 model in {self.root} (no fp32.pt, no {RECORD} naming a checkpoint): train one "
                            f"with `edgehydra train --out {self.root}` or start with `edgehydra ptq --checkpoint FILE "
                            f"--out {self.root}`")

    def data(self) -> dict:
        """Data settings: the run's record, else the checkpoint's provenance."""
        rec = self.record().get("data")
        if rec:
            return dict(rec)
        d = recorded_data(self.checkpoint())
        if d is None:
            raise BadInputError(f"{self.root}: neither {RECORD} nor the checkpoint records a dataset: pass --dataset")
        return d

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.data()["size"])

    def program(self) -> Path | None:
        for s in STAGES:
            if self.program_path(s).is_file():
                return self.program_path(s)
        return None

    def export_record(self) -> dict:
        """RUN/export/manifest.json, validated (every artifact export wrote into the run)."""
        if not self.export_manifest.is_file():
            raise BadInputError(f"no export manifest at {self.export_manifest}: run `edgehydra export --run {self.root}` first")
        return _read(self.export_manifest, "export")

    # ----------------------------------------------------------------------------------- measurements
    def add_measurement(self, rec: dict) -> Path:
        """A measurement of a shipped artifact: a latency (p50_ms), or for an emulated CPU (``emulated``) a parity
        check with no latency, which is never read as one."""
        need = ("device", "runner", "sha256", "size", "precision") + (("bundle_parity",) if rec.get("emulated")
                                                                       else ("p50_ms",))
        for k in need:
            if rec.get(k) is None:
                raise BadInputError(f"a measurement needs {k!r}; got {sorted(rec)}")
        rec = stamp("measurement", dict(rec, recorded=rec.get("recorded") or time.strftime("%Y-%m-%dT%H:%M:%S")))
        kind = "_sustained" if rec.get("sustained") else ""  # a sustained run is kept beside the burst one
        name = (f"{rec['sha256'][:12]}_{rec['size'][0]}x{rec['size'][1]}_{_slug(rec['device'])}_{_slug(rec['runner'])}"
                f"{kind}.json")
        path = self.measurements_dir / name
        self.measurements_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, rec)
        return path

    def add_op_profile(self, rec: dict) -> Path:
        """A device's per-op profile of one shipped artifact (`bench --ops --ops-from/--device --profile`),
        kept apart from the latency measurements: check and the mixed search fit per-class scales with it."""
        for k in ("profile", "sha256", "size", "precision", "by_class"):
            if rec.get(k) is None:
                raise BadInputError(f"an op profile record needs {k!r}; got {sorted(rec)}")
        rec = stamp("op_profile", dict(rec, recorded=rec.get("recorded") or time.strftime("%Y-%m-%dT%H:%M:%S")))
        path = self.measurements_dir / "ops" / (f"{rec['sha256'][:12]}_{rec['size'][0]}x{rec['size'][1]}_"
                                                f"{_slug(rec['profile'])}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, rec)
        return path

    def op_profiles(self, profile: str | None = None) -> list[dict]:
        d = self.measurements_dir / "ops"
        out = []
        for p in sorted(d.glob("*.json")) if d.is_dir() else []:
            rec = _read(p, "op_profile")
            if profile is None or rec.get("profile") == profile:
                out.append(dict(rec, record=str(p)))
        return out

    def measurements(self) -> list[dict]:
        if not self.measurements_dir.is_dir():
            return []
        # a half-written file cannot exist (atomic writes); a damaged or foreign one is refused, naming it
        return [dict(_read(p, "measurement"), record=str(p)) for p in sorted(self.measurements_dir.glob("*.json"))]


def _read(path: Path, kind: str) -> dict:
    return validate(kind, read_json(path, kind), path)


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in str(s))[:40]


def run_of_artifact(path: Path) -> Run | None:
    """The run an artifact was exported into (RUN/export/<target>/<file>), if any."""
    p = Path(path).resolve()
    for parent in p.parents:
        if parent.name == "export" and (parent / "manifest.json").is_file():
            return Run(parent.parent)
    return None
