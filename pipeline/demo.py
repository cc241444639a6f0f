"""`edgehydra demo`: every stage on the embedded synthroom data, each reused when rerun unchanged.

data -> train FP32 -> PTQ -> QAT -> sensitivity -> mixed-precision search -> export (every installed target)
-> apply the searched assignment (its own program and artifact) -> bench on this host -> calibrate the host
latency model -> robot (stream, stability) -> check three device profiles -> report.

A stage records its settings' hash and result in ``DIR/stages/NAME.json``; a rerun with the same
settings (and its outputs still on disk) reuses it instead of recomputing.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from edgehydra._io import atomic_write_json
from edgehydra.dataspec import resolve_size


@dataclass(frozen=True)
class DemoConfig:
    model: str = "hydranet_small"
    # Frames at the size the checked devices budget (240x320), trained on random 120x160 crops of them: the model
    # learns objects at the scale it is judged at, for the cost of a 120x160 input (the authors train on crops and
    # evaluate whole frames). Trained on whole 120x160 frames and judged at 240x320 it reached 32.6 % mIoU
    # (41.1 % at 120x160): the checks then judged the size shortcut, not the toolkit. The crops are drawn after
    # TrainConfig's random scale of 0.75-1.5x: without it (scale 1.0) 31.0 % at 240x320, with 0.5-1.5x 21.4 %;
    # batch 8 instead of 16: 25.4 % (docs/RESULTS.md).
    size: tuple[int, int] = (240, 320)
    crop: tuple[int, int] | None = (120, 160)
    frames: int = 1000
    val_frames: int = 64
    # at 240x320 on the 64 validation frames (AMD EPYC Zen 3): 8 epochs 29.7 %, 10 epochs 34.1 % / 0.698 m (277 s),
    # 13 epochs 39.6 % / 0.668 m, 14 epochs 40.9 % / 0.671 m (about 370 s alone on 2 cores): the first over 40 %
    epochs: int = 14
    batch_size: int = 16
    qat_epochs: int = 1
    # QAT on 128 frames at 240x320 (the recipe's figures: QAT on 250 frames 32.37 % / 1.094 m, 1000 frames
    # 33.13 % / 1.090 m, 2.2x the time for +0.8 points; the demo shows the step, the time goes elsewhere)
    qat_frames: int = 128
    calib_frames: int = 64
    # the device-free per-layer table (`edgehydra sensitivity`): None skips it, since the mixed search below sweeps
    # the same layers per task for its device (107 s of the default demo for two layers at 240x320)
    sensitivity_layers: str | None = None
    # the mixed-precision search for one device: layers considered and the per-task budgets (vs FP32), with the
    # device's own flicker budget (raspberrypi5: 1 pp; int8 flickered 1.6 pp more than FP32 on the demo's run), and
    # the chosen assignment applied: its own program and artifact, which `check` judges for that device
    mixed_device: str = "raspberrypi5"
    mixed_layers: str = "pre_*,segm,depth"
    # tighter than what all-int8 lost on the default run's 32 search frames (0.20 points, 0.008 m, flicker +0.74 pp):
    # the search then looks for a float island and the demo ships it (the segmentation head in float recovered 0.06)
    mixed_max_miou_drop: float = 0.15
    mixed_max_rmse_rise: float = 0.01
    mixed_trials: int = 3  # candidates checked by PTQ + evaluation (and timed on this host)
    sustained_s: float = 15.0  # the ExecuTorch int8 artifact under sustained load (latency over time)
    # on the robot: the ExecuTorch int8 artifact streamed over a synthroom sequence at 30 fps (recorded as MCAP),
    # and FP32 vs every artifact on one sequence for flicker (what raspberrypi5's max_flicker_rise judges)
    stream_frames: int = 90
    stability_frames: int = 32
    # three budgets at the size the model is trained for, measured here or estimated (the phone NPUs budget
    # 480x640: `check --device snapdragon8gen3_hexagon` on a run trained at that size)
    devices: tuple[str, ...] = ("host_cpu", "host_cpu_litert", "raspberrypi5")
    precisions: tuple[str, ...] | None = ("fp32", "int8")  # None: every precision each target supports
    # artifacts built at once (export --jobs): the converters are single-threaded, so two use both cores
    export_jobs: int = 2
    bench_runs: int = 20
    seed: int = 0

    @classmethod
    def fast(cls) -> "DemoConfig":
        """The tiny model on a few frames: the whole pipeline in a few minutes (what the tests run)."""
        return cls(model="hydranet_tiny", size=(64, 96), crop=None, frames=32, val_frames=8, epochs=1, batch_size=8,
                   qat_epochs=1, qat_frames=16, calib_frames=8, sensitivity_layers="segm", bench_runs=5,
                   mixed_device="host_cpu", mixed_layers="segm,depth", mixed_trials=2, mixed_max_miou_drop=0.5,
                   mixed_max_rmse_rise=0.02, sustained_s=3.0, stream_frames=30,
                   stability_frames=12,
                   # the two budgets at 240x320 only: the full demo's 480x640 TFLite export for the Snapdragon
                   # budget took 90 of the fast demo's 770 s (an export at a second size: tests/test_runs.py)
                   devices=("host_cpu", "raspberrypi5"), precisions=("fp32", "int8"))


class Stages:
    def __init__(self, out: Path, console=None):
        self.out, self.console, self.log = Path(out), console, []

    def run(self, name: str, settings: dict, fn: Callable[[], dict], outputs: list[Path] | Callable = ()) -> dict:
        """``fn``'s result, or the recorded one where ``settings`` are the recorded stage's and its ``outputs`` are
        still on disk (a list of paths, or a function of the recorded result giving them). A stage's settings name
        what it was handed (an earlier stage's result), never a file a later stage rewrites."""
        key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        from edgehydra.run import Run

        rec_path = Run(self.out).stage_record(name)
        rec = None
        if rec_path.is_file():
            try:
                rec = json.loads(rec_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:  # the record only lets a rerun skip the stage
                self._say(f"[yellow]{name}: its record {rec_path} is damaged ({getattr(e, 'msg', e)}); running the "
                          "stage again[/]")
        if rec is not None:
            paths = outputs(rec.get("result") or {}) if callable(outputs) else outputs
            if rec.get("key") == key and all(Path(p).exists() for p in paths):
                self.log.append({"stage": name, "status": "reused", "seconds": 0.0, "note": rec.get("note", "")})
                self._say(f"[dim]{name}: reused (same settings)[/]")
                return rec["result"]
        self._say(f"[bold]{name}[/] ...")
        t0 = time.perf_counter()
        try:
            result = fn()
            status, note = "done", result.pop("_note", "") if isinstance(result, dict) else ""
        except _Skip as e:
            result, status, note = {}, "skipped", str(e)
        secs = time.perf_counter() - t0
        self.log.append({"stage": name, "status": status, "seconds": secs, "note": note})
        if status == "done":
            atomic_write_json(rec_path, {"key": key, "settings": settings, "result": result, "seconds": secs, "note": note})
        self._say(f"{name}: {status} in {secs:.1f} s" + (f" ({note})" if note else ""))
        return result

    def _say(self, msg):
        if self.console:
            self.console.print(msg)


class _Skip(Exception):
    pass


def run_demo(out: Path, cfg: DemoConfig, console=None, progress_factory=None) -> dict:
    """Every stage on synthroom into ``out``, each handed what the one before made (DemoRun)."""
    return DemoRun(Path(out), cfg, console, progress_factory).run_all()


class DemoRun:
    """The demo's stages as methods, each reading what an earlier one produced from this object or the run's
    records, never "the run's program": the program that ships (QAT's) is named and handed to export."""

    def __init__(self, out: Path, cfg: DemoConfig, console=None, progress_factory=None):
        from edgehydra.devices.profile import load_profile
        from edgehydra.run import Run

        self.out, self.cfg, self.run = out, cfg, Run(out)
        self.st = Stages(out, console)
        self.pf = progress_factory or (lambda: _null())
        self.base = asdict(cfg)
        self.ckpt = self.run.fp32
        # The model trains on frames at cfg.size (on crops of them where cfg.crop says); it is quantised, exported
        # and judged at the input size the checked devices' budgets name, so `check` judges artifacts that exist (an
        # int8 program is traced at one size: PTQ and QAT run at the first device's budget size, other sizes get
        # their own export). The default devices all budget cfg.size.
        self.budget_sizes = {d: resolve_size(device=load_profile(d)) for d in cfg.devices}
        self.deploy = self.budget_sizes[cfg.devices[0]] if cfg.devices else cfg.size
        self.shipped_program = self.run.program_path("qat")  # what the demo ships as int8: the QAT program

    def run_all(self) -> dict:
        t_start = time.perf_counter()
        st, cfg, run = self.st, self.cfg, self.run
        st.run("data", {"seed": cfg.seed}, self.data_stage)
        with self.pf() as p:
            st.run("train", {k: self.base[k] for k in ("model", "size", "crop", "frames", "val_frames", "epochs",
                                                       "batch_size", "seed")}, lambda: self.train_stage(p), [run.fp32])
        with self.pf() as p:
            st.run("ptq", {"calib_frames": cfg.calib_frames, "ckpt": _sha(self.ckpt), "size": self.deploy},
                   lambda: self.ptq_stage(p), [run.program_path("ptq")])
        with self.pf() as p:
            st.run("qat", {"qat_epochs": cfg.qat_epochs, "qat_frames": cfg.qat_frames, "calib_frames": cfg.calib_frames,
                           "ckpt": _sha(self.ckpt), "size": self.deploy}, lambda: self.qat_stage(p),
                   [run.program_path("qat")])
        st.run("sensitivity", {"layers": cfg.sensitivity_layers, "ckpt": _sha(self.ckpt),
                               "calib_frames": min(32, cfg.calib_frames)}, self.sens_stage,
               [run.sensitivity_dir / "sensitivity.png"])
        mixed = st.run("mixed", {"device": cfg.mixed_device, "layers": cfg.mixed_layers, "ckpt": _sha(self.ckpt),
                         "trials": cfg.mixed_trials, "budgets": [cfg.mixed_max_miou_drop, cfg.mixed_max_rmse_rise]},
               self.mixed_stage, [run.mixed_dir(cfg.mixed_device) / "front.json"])
        exp = st.run("export", {"ckpt": _sha(self.ckpt), "qat": _sha(self.shipped_program), "sizes": self.budget_sizes,
                                "precisions": cfg.precisions}, self.export_stage, [run.export_manifest])
        # keyed on what export and apply returned, not on the export manifest's bytes: apply adds its artifact to
        # that manifest, so a key on it changed under every rerun and apply, bench, robot and check ran again
        applied = st.run("apply", {"mixed": mixed, "export": exp}, lambda: self.apply_stage(mixed),
                         lambda rec: [rec["artifact"]] if rec.get("artifact") else [])
        bench_res = st.run("bench", {"export": exp, "applied": applied, "runs": cfg.bench_runs,
                                     "sustained_s": cfg.sustained_s}, self.bench_stage)
        cal = st.run("calibrate", {"bench": bench_res}, lambda: self.calibrate_stage(bench_res))
        with self.pf() as p:
            rob = st.run("robot", {"export": exp, "applied": applied, "stream": cfg.stream_frames,
                                   "stability": cfg.stability_frames}, lambda: self.robot_stage(p),
                         [run.stability_record])
        st.run("check", {"export": exp, "cal": cal, "robot": rob, "applied": applied},
               lambda: self.check_stage(applied), [run.check_record])
        summary = {"config": self.base, "stages": st.log, "total_seconds": time.perf_counter() - t_start}
        atomic_write_json(run.demo_summary, summary)
        st.run("report", {"t": time.time()}, self.report_stage)
        summary["stages"] = st.log
        summary["total_seconds"] = time.perf_counter() - t_start
        atomic_write_json(run.demo_summary, summary)
        return summary

    def data_stage(self) -> dict:
        from edgehydra.data.synthroom import SynthConfig, generate_frame

        t = time.perf_counter()
        n = 20
        for i in range(n):
            generate_frame(self.cfg.seed, i, SynthConfig(size=(240, 320)))
        return {"frames_per_s_240x320": n / (time.perf_counter() - t), "train_frames": self.cfg.frames,
                "val_frames": self.cfg.val_frames, "_note": "synthroom is generated in memory; nothing to download"}

    def train_stage(self, p) -> dict:
        from edgehydra.dataspec import data_settings
        from edgehydra.fp32_stage import train_run
        from edgehydra.train import TrainConfig

        cfg = self.cfg
        tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, crop=cfg.crop)
        ds = data_settings("synthroom", cfg.size, cfg.frames, cfg.val_frames, cfg.seed)
        return {"metrics": train_run(self.out, ds, cfg.model, tcfg, progress=p)["metrics"]}

    def ptq_stage(self, p) -> dict:
        from edgehydra.calibration.quant_stages import QuantJob, ptq_run

        return {"metrics": ptq_run(self.ckpt, self.out, QuantJob("w8a8", size=self.deploy,
                                                                  calib_frames=self.cfg.calib_frames),
                                   progress=p)["metrics"]}

    def qat_stage(self, p) -> dict:
        from edgehydra.calibration.quant_stages import QuantJob, qat_run
        from edgehydra.train import TrainConfig

        cfg = self.cfg
        qcfg = TrainConfig(epochs=cfg.qat_epochs, batch_size=cfg.batch_size, lr_encoder=1e-4, lr_decoder=1e-4,
                           seed=cfg.seed, schedule="cosine")
        # QAT fine-tunes on the first qat_frames training frames: a short schedule is what QAT needs.
        rep = qat_run(self.ckpt, self.out, qcfg, QuantJob("w8a8", size=self.deploy, frames=cfg.qat_frames,
                                                          calib_frames=cfg.calib_frames), progress=p)
        return {"metrics": rep["metrics"], "train_seconds": rep["train_seconds"]}

    def sens_stage(self) -> dict:
        from edgehydra.calibration.sensitivity import SensitivityConfig, sensitivity_run

        if not self.cfg.sensitivity_layers:
            raise _Skip("the mixed-precision search sweeps its layers per task; `edgehydra sensitivity --run RUN` "
                        "gives the device-free table")
        # 32 calibration frames per PTQ, as the mixed search: five PTQs at 240x320 on 64 frames took 107 s
        rep = sensitivity_run(self.ckpt, self.run.sensitivity_dir,
                              SensitivityConfig(frames=min(32, self.cfg.val_frames), calib_frames=min(32, self.cfg.calib_frames),
                                                layers=self.cfg.sensitivity_layers))
        return {"layers": len(rep["layers"]), "chart": rep["chart"]}

    def mixed_stage(self) -> dict:
        from edgehydra.calibration.mixed import BudgetsNotMet, MixedBudgets
        from edgehydra.devices.profile import load_profile

        from .mixed_search import SearchConfig, mixed_run

        cfg = self.cfg
        # budgets against FP32 and the device's flicker budget; not its absolute floors (min mIoU...), which judge
        # the model as much as its precision and are `check`'s to apply
        b = load_profile(cfg.mixed_device).budgets
        budgets = MixedBudgets.for_profile(b, floors=False, max_flicker_rise=b.max_flicker_rise,
                                           max_miou_drop=cfg.mixed_max_miou_drop, max_rmse_rise=cfg.mixed_max_rmse_rise)
        try:
            # one PTQ per unit and precision: calibrated on 32 frames (what docs/RESULTS.md's search used), not
            # the demo's 200, which made this sweep most of the demo's time
            rep = mixed_run(self.run, cfg.mixed_device, budgets, SearchConfig(
                layers=cfg.mixed_layers, frames=min(32, cfg.val_frames), calib_frames=min(32, cfg.calib_frames),
                rounds=max(10, cfg.bench_runs), max_trials=cfg.mixed_trials))
        except BudgetsNotMet as e:
            return {"meets_budgets": False, "_note": str(e).splitlines()[0]}
        c = rep["chosen"]
        return {"meets_budgets": True, "device": rep["device"], "keep_float": c["keep_float"],
                "fp16": c.get("fp16_layers") or [], "int16": c.get("int16_layers") or [],
                "recipe": rep["recipe_file"], "timing": rep.get("host_timing"), "chart": rep["chart"]}

    def apply_stage(self, m: dict) -> dict:
        """The mixed stage's chosen assignment ``m`` as its own program and artifact (hydranet_int8-mixed-<device>_HxW),
        which the check stage judges for that device; nothing to apply where all-int8 was chosen or no assignment met
        the budgets."""
        from .mixed_apply import ApplyConfig, apply

        if not m.get("meets_budgets"):
            raise _Skip("no assignment met the budgets: nothing to apply")
        if not (m["keep_float"] or m["fp16"] or m["int16"]):
            raise _Skip("the search chose int8 everywhere: the uniform int8 artifact is the one to ship")
        with self.pf() as p:
            res = apply(self.run, self.cfg.mixed_device, Path(m["recipe"]),
                        ApplyConfig(size=self.deploy, calib_frames=min(32, self.cfg.calib_frames),
                                    eval_frames=min(32, self.cfg.val_frames)), progress=p)
        return {"device": self.cfg.mixed_device, "artifact": res["artifact"], "program": res["quantised"],
                "verdict": res["check"]["verdict"]}

    def export_stage(self) -> dict:
        from edgehydra.devices.profile import load_profile
        from edgehydra.exporters import installed_targets, list_targets
        from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run, summary_rows

        cfg, run = self.cfg, self.run
        missing = [t for t in list_targets() if t not in installed_targets()]
        src = ExportSource(run=self.out, program=self.shipped_program)
        st = ExportSettings(eval_frames=cfg.val_frames, strict_missing=False, jobs=cfg.export_jobs)
        with self.pf() as p:
            # each installed target in the asked precisions it has (Core ML has no fp32), or in all it has
            res = export_run(run.export_dir, ["all"], list(cfg.precisions or ()) or None, source=src, settings=st,
                             progress=p)
            for d, size in self.budget_sizes.items():  # a device budgeting another size gets its format at that size
                fmt = load_profile(d).format
                if size != self.deploy and fmt in installed_targets():
                    res += export_run(run.export_dir, [fmt], source=src, settings=replace(st, size=size),
                                      progress=p)
        note = f"not installed: {', '.join(missing)}" if missing else ""
        return {"rows": summary_rows(res), "_note": note}

    def bench_stage(self) -> dict:
        from edgehydra.devices.bench import BenchRequest, bench
        from edgehydra.exporters.runtime import read_manifest

        cfg, run = self.cfg, self.run
        rows = []
        man = run.export_record()
        for a in man["artifacts"]:
            if not a.get("path") or a["status"] not in ("verified",):
                continue
            path = run.export_dir / a["path"]
            # recorded in the run once, with its reference I/O run where it is benchmarked where it has one
            r = bench(path, BenchRequest(warmup=3, runs=cfg.bench_runs, threads=2,
                                         bundle=bool(read_manifest(path).get("sidecars"))))
            r.update(target=a["target"])
            rows.append(r)
        eager = bench(self.ckpt, BenchRequest(warmup=2, runs=max(3, cfg.bench_runs // 2), threads=2), write=False,
                      size=self.deploy)
        eager.update(target="pytorch")
        rows.append(eager)
        sus = None
        et = _uniform_int8_pte(man, self.deploy, verified=True)
        if et is not None and cfg.sustained_s > 0:
            s_res = bench(run.export_dir / et["path"], BenchRequest(warmup=3, runs=1, threads=2, duration_s=cfg.sustained_s))
            sus = {k: s_res.get(k) for k in ("plot", "json", "throughput_fps", "p50_ms", "p99_ms", "throttle_ratio",
                                             "duration_s")}
        return {"rows": rows, "opprofile": _op_profile(run, man, self.deploy, cfg.bench_runs), "sustained": sus}

    def calibrate_stage(self, bench_res: dict) -> dict:
        from edgehydra._io import atomic_write_bytes
        from edgehydra.checkpoint import load_checkpoint
        from edgehydra.devices.estimate import fit_efficiencies
        from edgehydra.devices.profile import load_profile, to_toml

        model, _ = load_checkpoint(self.ckpt)
        meas = [{"precision": r["precision"] if r["precision"] != "w8" else "fp32", "size": r["size"],
                 "p50_ms": r["p50_ms"]} for r in bench_res.get("rows", [])
                if r["target"] == "executorch"]
        if not meas:
            raise _Skip("no ExecuTorch benchmark to calibrate against")
        fitted, rep = fit_efficiencies(model, load_profile("host_cpu"), meas)
        atomic_write_bytes(self.run.calibrated_profile("host_cpu"), to_toml(fitted).encode())
        return {"report": rep}

    def robot_stage(self, p) -> dict:
        """The shipped int8 .pte streamed at 30 fps over a synthroom sequence (recording, timeline), then FP32 and
        every artifact at the deploy size on one sequence (flicker, consistency, parity in robot units)."""
        from edgehydra.robot.stability_stage import stability_run
        from edgehydra.robot.stream import StreamConfig
        from edgehydra.robot.stream_stage import stream_artifact

        cfg, run = self.cfg, self.run
        man = run.export_record()
        et = _uniform_int8_pte(man, self.deploy, verified=True)
        res = {}
        if et is not None and cfg.stream_frames:
            rec, _ = stream_artifact(run.export_dir / et["path"], f"synthroom:frames={cfg.stream_frames}",
                                     StreamConfig(fps=30.0), progress=p)
            res["stream"] = {k: rec[k] for k in ("artifact", "processed", "dropped", "deadline_misses", "e2e_ms",
                                                 "achieved_fps", "recording", "topics")}
        if cfg.stability_frames:
            st, _ = stability_run(self.out, [], self.deploy, f"synthroom:frames={cfg.stability_frames}", p)
            res["stability"] = {m.get("artifact") or m["name"]: m["temporal"].get("flicker") for m in st["models"]}
        if not res:
            raise _Skip("no stream or stability frames asked for")
        return res

    def check_stage(self, applied: dict) -> dict:
        from edgehydra.devices.check import check_run

        res = []
        for d in self.cfg.devices:  # check_run picks up the host profile calibrated above
            # the searched device is judged on the artifact applied for it, every other on its format's uniform one
            res += check_run(self.out, [d], artifact=Path(applied["artifact"]) if applied.get("device") == d else None)
        atomic_write_json(self.run.check_record, res)
        return {"verdicts": {r["device"]: r["verdict"] for r in res}}

    def report_stage(self) -> dict:
        from .report import write_report

        return {"files": [str(p) for p in write_report(self.out)]}


def _uniform_int8_pte(man: dict, size, verified: bool = False) -> dict | None:
    """The run's uniform (not a mixed variant) ExecuTorch int8 artifact at ``size``, from the export manifest."""
    return next((a for a in man["artifacts"] if a["target"] == "executorch" and a["precision"] == "int8"
                 and not a.get("variant") and a.get("path") and (not verified or a["status"] == "verified")
                 and tuple(a.get("size") or ()) == tuple(size)), None)


def _op_profile(run, man: dict, size, runs: int) -> str | None:
    """Per-XNNPACK-operator profile of the ExecuTorch int8 artifact at the run's size, by stage and class."""
    from edgehydra.calibration.program import load_program
    from edgehydra.devices.opprofile import chart, profile_pte

    a = _uniform_int8_pte(man, size)
    src = (a or {}).get("source_program") or {}
    if a is None or not src.get("path"):
        return None
    prog = load_program(Path(src["path"]))  # the program this artifact was lowered from, as its manifest names it
    prof = profile_pte(run.export_dir / a["path"], prog.module, size, runs=max(5, runs), tasks=prog.config.tasks)
    path = run.root / "opprofile.json"
    atomic_write_json(path, {k: v for k, v in prof.items() if k != "rows"} | {"rows": prof["rows"]})
    chart(prof, run.root / "opprofile.png")
    return str(path)


def _sha(p: Path) -> str | None:
    from edgehydra._io import sha256_path

    return sha256_path(p) if Path(p).exists() else None


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
