"""`edgehydra sensitivity --run R --device D`: the mixed-precision search as a run stage, and `--apply`.

It composes calibration (PTQ sweeps), devices (the profile, per-layer latency measured here or estimated)
and exporters (what `--apply` ships), so it sits in the pipeline layer above all three.

    RUN/mixed/<device>/front.json   per-layer table, candidates, predicted front, measured trials, chosen
    RUN/mixed/<device>/front.png    per-task accuracy against latency, the front and the chosen point
    RUN/mixed/<device>/recipe.json  the chosen assignment as a recipe (keep_float = the float layers)

`--apply` hands that recipe on: PTQ (or QAT) into the run, export for the device's format at the
device's input size, and `check` of what ships. See calibration/mixed.py for the method.
"""
from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgehydra._io import atomic_write_json, save_figure
from edgehydra.checkpoint import load_checkpoint
from edgehydra.dataspec import resolve_size
from edgehydra.run import Run
from edgehydra.targets import format_facts

from edgehydra.calibration.calibset import open_sweep_data
from edgehydra.calibration.mixed import (BudgetsNotMet, Candidate, MixedBudgets, Space, conv_output_elems, deficit,
                                         encoder_prefixes, graph_order, greedy_path, group_candidates, groups_of, pareto,
                                         weight_bytes)
from edgehydra.calibration.ptq import CalibratedRanges, export_stage, quantize_ptq
from edgehydra.calibration.quantizers import fp16_of, w8a16_of
from edgehydra.calibration.recipe import load_recipe
from edgehydra.calibration.sensitivity import _delta, _metrics, select_layers, sweep
from edgehydra.devices.estimate import estimated_layer_latency
from edgehydra.devices.profile import load_profile, load_run_profile
from edgehydra.devices.host_measure import Builds, Timing, layer_latency, measured_here, time_candidates

# What each format does with a layer kept float (the recipe's keep_float), for the report and for
# formats where per-layer float is not what runs.
def float_in(fmt: str) -> str:
    """What a kept-float layer becomes in this format: a fact of the target's record."""
    f = format_facts(fmt)
    return f.float_layers_run_as if f else "float"


def _from_rank0(obj):
    """``obj`` as rank 0 has it, on every rank (torchrun, gloo); alone, ``obj``."""
    from edgehydra.train import dist_info

    if dist_info()[1] == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def nearest_misses(trials: list[Candidate], budgets: MixedBudgets, fp32: dict) -> list[dict]:
    """Per budget missed by every trial: the trial that came closest and by how much."""
    rows = []
    keys = {k for c in trials for k in budgets.misses(c.measured or c.predicted, fp32, _lat(c), c.size_mb)}
    for k in sorted(keys):
        best = min(trials, key=lambda c: budgets.misses(c.measured or c.predicted, fp32, _lat(c), c.size_mb).get(k, 0.0))
        miss = budgets.misses(best.measured or best.predicted, fp32, _lat(best), best.size_mb).get(k, 0.0)
        if miss > 0:
            rows.append({"budget": k, "limit": getattr(budgets, k), "closest": best.name,
                         "keep_float": list(best.keep_float), "missed_by": miss})
    return rows


def unit_kinds(model) -> dict[str, str]:
    """Each quantisable unit's op class, as the precision map names it: conv, add (fusions, CRP sums), upsample."""
    from edgehydra.model import Upsample

    out = {n: "conv" for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    for n, m in model.named_modules():
        if getattr(m, "counted_in_graph", False):
            out[n] = "upsample" if isinstance(m, Upsample) else "add"
    return out


def _lat(c: Candidate) -> float:
    return c.measured_latency_ms if c.measured_latency_ms is not None else c.latency_ms


@dataclass(frozen=True)
class SearchConfig:
    """What the search sweeps and how: the units (``layers``, fnmatch patterns; None: every conv and op
    module), the input size (None: the device's budget size), frames scored per trial, calibration frames per
    PTQ, assignments checked by PTQ + evaluation, timing rounds and threads for host measurements."""

    layers: str | None = None
    recipe: str | None = None
    size: tuple[int, int] | None = None
    frames: int = 50
    calib_frames: int = 32
    max_trials: int = 6
    rounds: int = 20
    threads: int = 2

    def __post_init__(self):
        for k in ("frames", "calib_frames", "max_trials", "rounds", "threads"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}={getattr(self, k)}: at least 1")


def mixed_run(run: Run | Path, device: str, budgets: MixedBudgets, search: SearchConfig | None = None,
              progress=None, reuse: bool = True) -> dict:
    """The search for ``device`` under ``budgets``: RUN/mixed/<device>/ front.json, front.png and recipe.json.

    With ``reuse``, a front.json written by a search of the same checkpoint, budgets, settings and run measurements
    is returned as it is (``--apply --qat`` after a PTQ search, a rerun) instead of repeating tens of PTQs."""
    run = run if isinstance(run, Run) else Run(run)
    search = search or SearchConfig()
    key = search_key(run, device, budgets, search)
    name = load_profile(device).name  # a profile given as a file: its fronts live under its name
    front = run.mixed_dir(name) / "front.json"
    if reuse and front.is_file():
        try:
            prev = json.loads(front.read_text())
        except (OSError, ValueError):
            prev = {}
        if prev.get("search_key") == key and Path(prev.get("chart", "")).is_file():
            if progress is not None and hasattr(progress, "log"):
                progress.log(f"mixed search on {name}: reused {front} (same checkpoint, budgets, settings and "
                             "measurements; --fresh searches again)")
            if not prev.get("meets_budgets"):
                raise BudgetsNotMet(_miss_text(prev))
            return prev
    return _Search(run, device, budgets, search, progress, key).search()


def search_key(run: Run, device: str, budgets: MixedBudgets, search: SearchConfig) -> str:
    """What a search's result depends on: the checkpoint, the device's (calibrated) profile, the budgets, the
    search's settings and the run's measurements (the roofline is fitted to them)."""
    from dataclasses import asdict

    from edgehydra._io import sha256_path

    cal = run.calibrated_profile(device)
    md = run.measurements_dir  # latency records and, under ops/, devices' per-op profiles: the roofline fits both
    meas = sorted((str(p.relative_to(md)), sha256_path(p)) for p in md.rglob("*.json")) if md.is_dir() else []
    files = {k: sha256_path(Path(v)) for k, v in (("device_file", device), ("recipe_file", search.recipe))
             if v and Path(v).is_file()}
    what = {"checkpoint": sha256_path(run.checkpoint()), "device": device, "files": files,
            "profile": sha256_path(cal) if cal.is_file() else None, "budgets": asdict(budgets),
            "search": asdict(search), "measurements": meas, "data": run.record().get("data")}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


# frames of the sequence a flicker budget is searched on: 11 consecutive pairs, ~0.5 s per PTQ program at 240x320
FLICKER_FRAMES = 12


class _Search:
    """The search's steps: per-unit accuracy sweeps, per-unit latency (measured here or estimated), candidates
    from the predicted space, trials by real PTQ + evaluation (timed on this host), the report."""

    def __init__(self, run: Run, device: str, budgets: MixedBudgets, search: SearchConfig, progress, key: str):
        self.run, self.budgets, self.cfg, self.progress, self.key = run, budgets, search, progress, key
        self.profile = load_run_profile(run, device)
        self.size = resolve_size(cli=search.size, device=self.profile)
        self.base = load_recipe(search.recipe)
        self.model, _ = load_checkpoint(run.checkpoint())
        data = open_sweep_data(run.checkpoint(), None, self.size, search.calib_frames, base=run.record().get("data"))
        self.train, self.val, self.calib = data.train, data.val, data.calib
        # flicker is a task budget: every PTQ of the sweep and every trial also runs a short synthroom sequence
        self.sequence = None
        if budgets.max_flicker_rise is not None:
            from edgehydra.data.sequence import SequenceConfig, synth_sequence

            self.sequence = list(synth_sequence(SequenceConfig(frames=FLICKER_FRAMES, size=self.size)))
        self.names = select_layers(self.model, search.layers, ops=True)  # convs and the decoder's adds / upsamplings
        self.notes = []
        self.kept = {}
        self.graph = export_stage(self.model, self.size)  # exported once, copied for each PTQ of the sweep and trials
        self.ranges = CalibratedRanges(self.calib)  # calibrated once (by the all-int8 PTQ), read by the others
        self.measured_host = measured_here(self.profile)
        self.built = tempfile.TemporaryDirectory()  # fp32 and int8 artifacts built once: profiled, then timed
        self.builds: Builds | None = None  # where those are built while the sweeps run (start_builds)
        self.host_programs: dict = {}

    def measure(self, keep, int16=(), fp16=(), keep_program=False) -> dict:
        q, _ = quantize_ptq(self.model, self.base.replace(keep_float=tuple(keep), int16_layers=tuple(int16),
                                                          fp16_layers=tuple(fp16)), self.train, self.calib, self.size,
                            graph=self.graph, ranges=self.ranges)
        if not keep and not int16 and not fp16:
            self.kept["int8"] = q  # the all-int8 program: also what the host's per-layer latency is profiled on
        elif keep_program:  # a trial's program, built and timed on this host after the trials
            self.kept[(tuple(keep), tuple(int16), tuple(fp16))] = q
        return _metrics(q, self.val, self.model.config, self.cfg.frames, self.sequence)

    def search(self) -> dict:
        profile, names = self.profile, self.names
        if profile.format != "executorch":  # what a kept-float layer becomes in this format (ExecuTorch: fp32 XNNPACK)
            self.notes.append(f"{profile.name} ships {profile.format}: a layer kept float runs as "
                              f"{float_in(profile.format)}")
        # W8A16 is a precision of its own where the device's format builds it for the layer's op class
        self.w16_ops, self.w16_note = w8a16_of(profile.format)
        self.kinds = unit_kinds(self.model)
        self.w16 = [n for n in names if self.kinds.get(n) in self.w16_ops]
        if not self.w16:
            self.notes.append(f"{profile.format} builds no W8A16 layer here ({self.w16_note}): each layer is int8 or "
                              "float")
        self.f16_fmt, self.f16_note = fp16_of(profile.format)  # fp16 a precision of its own where the format has it
        self.fp32 = _metrics(self.model, self.val, self.model.config, self.cfg.frames, self.sequence, nhwc=True)
        t0 = time.perf_counter()
        self.all_q = self.measure(())
        self.announce(time.perf_counter() - t0)
        try:
            return self._search_from_all_int8(profile, names)
        finally:
            if self.builds is not None:
                self.builds.close()
            self.built.cleanup()
            self.kept.clear()

    def start_builds(self) -> None:
        """On this host (rank 0): the artifacts the per-layer profile reads, built in worker processes while the
        sweeps run: FP32, all-int8, and where the format builds them every W8A16 candidate in int16 and the model
        in fp16."""
        from edgehydra.train import dist_info

        if not self.measured_host or dist_info()[0] != 0:
            return
        model, size = self.model, self.size
        progs = {"int8": self.kept["int8"]}
        if self.w16:
            progs["int16"], _ = quantize_ptq(model, self.base.replace(int16_layers=tuple(self.w16)), self.train,
                                             self.calib, size, graph=self.graph)
        if self.f16_fmt:
            from edgehydra.calibration.fp16 import fp16_program

            progs["fp16"] = fp16_program(model, size)
        self.host_programs = progs
        self.builds = Builds(self.profile.format, model, size, Path(self.built.name), self.base)
        self.builds.submit("fp32")
        for name, module in progs.items():
            self.builds.submit(name, module)

    def _search_from_all_int8(self, profile, names) -> dict:
        from edgehydra.train import dist_info

        self.start_builds()
        self.gains = sweep(names, lambda n: _delta(self.measure((n,)), self.all_q), self.progress,
                           label="per-layer accuracy")
        self.gains16 = sweep(self.w16, lambda n: _delta(self.measure((), (n,)), self.all_q), self.progress,
                             label="per-layer accuracy (W8A16)")
        self.lat = self.layer_latency()
        # fp16 is worth an accuracy sweep only where it runs faster than the layer's fp32: elsewhere it is no more
        # accurate and slower. Rank 0 decides on what it measured and every rank sweeps the same list.
        lat = self.lat
        self.f16 = _from_rank0([n for n in names if n in lat.get("fp16", {}) and lat["fp16"][n] < lat["float"].get(n, 0.0)]
                               if lat is not None else None)
        if self.f16_fmt:
            self.notes.append(f"fp16 measured or estimated faster than fp32 at {len(self.f16)} of {len(names)} layers"
                              + (": those are also candidates in fp16" if self.f16 else
                                 ": fp16 is not a candidate on this device"))
        self.gains_f16 = sweep(self.f16, lambda n: _delta(self.measure((), (), (n,)), self.all_q), self.progress,
                               label="per-layer accuracy (fp16)")
        if dist_info()[0] != 0:
            return {}
        space, cands = self.candidates()
        trials, chosen = self.check_candidates(space, cands)
        timing = None
        if self.measured_host:
            timing, chosen = self.time_on_host(trials)
        return self.report(space, cands, trials, chosen, timing)

    def announce(self, per_trial_s: float) -> None:
        """Before the sweeps: how many PTQ + evaluation runs the search makes and how long that takes at the time the
        all-int8 one just took, with the flag that narrows it."""
        if not self.progress or not hasattr(self.progress, "log"):
            return
        f16 = len(self.names) if self.f16_fmt else 0  # an upper bound: only units where fp16 runs faster are swept
        runs = len(self.names) + len(self.w16) + f16 + self.cfg.max_trials
        parts = [f"{len(self.names)} units float", f"{len(self.w16)} W8A16"] + ([f"up to {f16} fp16"] if f16 else [])
        self.progress.log(f"mixed search on {self.profile.name}: {' + '.join(parts)} + up to {self.cfg.max_trials} "
                          f"trials = {runs} PTQ + evaluation runs at {per_trial_s:.1f} s each (the all-int8 one), about "
                          f"{runs * per_trial_s / 60:.1f} min before latency is measured; --layers narrows the units "
                          f"(e.g. --layers 'segm,depth,crp1.*'), --frames the evaluation")

    def layer_latency(self) -> dict | None:
        """Per-unit latency: measured here in the format's runtime (rank 0), else the roofline fitted to the run."""
        from edgehydra.train import dist_info

        model, profile, size = self.model, self.profile, self.size
        if self.measured_host and dist_info()[0] == 0:  # measured by rank 0 alone; the fp16 choice below is shared
            # the programs start_builds had built: all-int8, every W8A16 candidate in int16 at once (each one's
            # int16 time in the format's runtime), the model in fp16 (each layer's fp16 time)
            return layer_latency(model, profile.format, self.host_programs, size, runs=self.cfg.rounds,
                                 threads=self.cfg.threads, keep_in=Path(self.built.name), recipe=self.base,
                                 builds=self.builds)
        if self.measured_host:
            return None
        from edgehydra.devices.check import calibrated_on_run

        # the roofline fitted to what the run measured on the device (per-class scales from its per-op
        # profiles, efficiencies from whole-model runs), so each layer's gain is the device's, not a datasheet's
        fitted, used = calibrated_on_run(self.run, profile, model)
        lat = estimated_layer_latency(model, fitted, size, int16=bool(self.w16), fp16=self.f16_fmt)
        if self.w16:
            self.notes.append(f"W8A16 latency at {lat['int16_rate']}")
        if used:
            what = sorted({u.get("kind", "latency measurement") for u in used})
            lat["source"] += f", fitted to {len(used)} record(s) of this run ({', '.join(what)})"
        return lat

    def candidates(self):
        """The predicted space and its candidates: the greedy path and the group candidates."""
        from edgehydra.graph import graph_convs

        model, names, lat = self.model, self.names, self.lat
        fbytes = 2 if lat["float_precision"] == "fp16" else 4
        self.sizes, sizes16 = weight_bytes(model, names, fbytes), weight_bytes(model, names, 2)
        conv_ids = {id(m) for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
        self.others = sum(p.numel() * 4 for m in model.modules() if id(m) not in conv_ids
                          for p in m.parameters(recurse=False))
        self.all_convs = weight_bytes(model, [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)],
                                      fbytes)
        ep = torch.export.export(model.eval(), (torch.zeros(1, 3, *self.size),))
        self.dw = {n for n, d in graph_convs(ep) if d}
        space = Space(self.all_q, self.gains, lat, self.sizes, self.others + sum(v[0] for v in self.all_convs.values()),
                      order=graph_order(ep, model.op_units()), out_elems=conv_output_elems(model, self.size),
                      convert_ms_per_elem=lat.get("convert_ms_per_elem", 0.0), gains16=self.gains16,
                      gains_f16=self.gains_f16, sizes16=sizes16)
        cands = greedy_path(space, names, self.budgets, self.fp32) + group_candidates(
            space, groups_of(names, self.dw, model.config.tasks, model.op_units()), encoder_prefixes(names))
        return space, cands

    def check_candidates(self, space, cands):
        """Check the prediction by real PTQ + evaluation, fastest predicted-feasible first. On this host the
        candidates that meet the accuracy and size budgets are then timed (time_on_host); elsewhere the first
        that meets them is chosen."""
        budgets, fp32 = self.budgets, self.fp32
        feasible = sorted((c for c in cands if deficit(c, budgets, fp32, with_latency=True) == 0),
                          key=lambda c: c.latency_ms)
        order = feasible or sorted(cands, key=lambda c: (deficit(c, budgets, fp32, with_latency=True), c.latency_ms))
        if self.measured_host:
            order = [space.candidate("all-int8", ())] + order
        trials, seen, chosen = [], set(), None
        task = self.progress.add_task("check candidates", total=self.cfg.max_trials) if self.progress else None
        for c in order:
            if c.key in seen or len(trials) >= self.cfg.max_trials:
                continue
            seen.add(c.key)
            c.measured = self.all_q if not c.mixed else self.measure(c.keep_float, c.int16, c.fp16, self.measured_host)
            trials.append(c)
            if self.progress:
                self.progress.advance(task)
            if not self.measured_host and not budgets.misses(c.measured, fp32, c.latency_ms, c.size_mb):
                chosen = c
                break
        return trials, chosen

    def time_on_host(self, trials):
        """The trials that meet the accuracy and size budgets timed with fp32 and all-int8 in one interleaved run;
        the fastest that meets every budget is chosen (all-int8 included: where no island pays for its
        conversions, the answer is int8 everywhere)."""
        budgets, fp32 = self.budgets, self.fp32
        ok_acc = [c for c in trials if not budgets.misses(c.measured, fp32, None, c.size_mb)]
        if not ok_acc:
            return None, None
        timing = time_candidates(self.model, self.profile.format, ok_acc, self.kept, self.size, Path(self.built.name),
                                 Timing(self.cfg.rounds, self.cfg.threads), recipe=self.base, builds=self.builds)
        for c in ok_acc:
            c.measured_latency_ms = timing["candidates"][c.name]
        met = [c for c in ok_acc if not budgets.misses(c.measured, fp32, c.measured_latency_ms, c.size_mb)]
        chosen = min(met, key=lambda c: c.measured_latency_ms) if met else None
        timing["mixed"] = chosen.measured_latency_ms if chosen else None
        if chosen is not None and not chosen.mixed:
            self.notes.append("no float, fp16 or W8A16 island measured faster than int8 everywhere at these budgets: "
                              "the answer on this host is all-int8")
        fp32_mb = (self.others + sum(v[1] for v in self.all_convs.values())) / 1e6
        if (chosen is not None and timing["fp32"] < chosen.measured_latency_ms
                and not budgets.misses(fp32, fp32, timing["fp32"], fp32_mb)):
            # the search assigns precisions inside an int8 program; where this runtime runs float faster than
            # any of them, the answer is the fp32 artifact, and the user should hear it
            timing["fp32_beats_chosen"] = True
            self.notes.append(f"FP32 everywhere measured {timing['fp32']:.2f} ms here, faster than the chosen "
                              f"assignment ({chosen.measured_latency_ms:.2f} ms), and meets every budget: in this "
                              f"runtime ship the fp32 artifact (edgehydra export --run {self.run.root} --target "
                              f"{self.profile.format} --precision fp32)")
        return timing, chosen

    def report(self, space, cands, trials, chosen, timing) -> dict:
        profile, lat, base = self.profile, self.lat, self.base
        units = set(self.model.op_units())
        front = pareto(cands)
        out = self.run.mixed_dir(profile.name)
        out.mkdir(parents=True, exist_ok=True)
        report = {
            "device": profile.name, "format": profile.format, "size": list(self.size), "frames": self.cfg.frames,
            "float_layers_run_as": float_in(profile.format), "recipe": base.to_dict(),
            "budgets": {k: v for k, v in self.budgets.__dict__.items() if v is not None},
            "latency_source": lat["source"], "float_precision": lat["float_precision"],
            "fp32": self.fp32, "all_int8": self.all_q, "int8_total_ms": lat["int8_total_ms"],
            "float_total_ms": lat["float_total_ms"],
            "layers": [{"layer": n, "recovers": self.gains[n], "int8_ms": lat["int8"].get(n, 0.0),
                        "float_ms": lat["float"].get(n, 0.0), "depthwise": n in self.dw,
                        "op": "op" if n in units else "conv", "kind": self.kinds.get(n),
                        **({"recovers_w8a16": self.gains16[n], "int16_ms": lat["int16"].get(n, 0.0)}
                           if n in self.gains16 else {}),
                        **({"fp16_ms": lat["fp16"].get(n, 0.0)} if "fp16" in lat else {}),
                        **({"recovers_fp16": self.gains_f16[n]} if n in self.gains_f16 else {})}
                       for n in self.names],
            "w8a16": {"format": profile.format, "op_classes": list(self.w16_ops), "layers": self.w16,
                      "note": self.w16_note},
            "fp16": {"format": profile.format, "islands": self.f16_fmt, "layers": self.f16, "note": self.f16_note},
            "front": [c.to_dict() for c in front], "trials": [c.to_dict() for c in trials],
            "chosen": chosen.to_dict() if chosen else None, "meets_budgets": chosen is not None,
            "host_timing": timing, "notes": self.notes, "calibration_sha256": self.calib.sha256,
            "search_key": self.key,
        }
        if chosen:
            rec = base.replace(name=f"{base.name}-mixed-{profile.name}", keep_float=chosen.keep_float,
                               int16_layers=chosen.int16, fp16_layers=chosen.fp16)
            atomic_write_json(out / "recipe.json", rec.to_dict())
            report["recipe_file"] = str(out / "recipe.json")
        else:
            report["nearest_misses"] = nearest_misses(trials or cands[:1], self.budgets, self.fp32)
        report["chart"] = str(chart(report, out / "front.png"))
        atomic_write_json(out / "front.json", report)
        if chosen is None:
            raise BudgetsNotMet(_miss_text(report))
        return report


def _miss_text(report: dict) -> str:
    rows = report.get("nearest_misses") or []
    head = (f"no assignment of {len(report['layers'])} layers meets the budgets on {report['device']} "
            f"({len(report['trials'])} checked by PTQ + evaluation); nearest misses:")
    lines = [f"  {r['budget']} <= {r['limit']}: missed by {r['missed_by']:.4g} ({r['closest']}, "
             f"{len(r['keep_float'])} layers float)" for r in rows]
    return "\n".join([head] + lines + [f"  table: {Path(report['chart']).with_name('front.json')}"])


def chart(report: dict, path: Path) -> Path:
    """Per task: accuracy against latency, every candidate (predicted), the front, measured trials, chosen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("miou", "mIoU (%)"), ("rmse", "depth RMSE (m)"), ("abs_rel", "depth abs rel")]
    panels = [p for p in panels if math.isfinite(report["fp32"].get(p[0], float("nan")))]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6))
    axes = [axes] if len(panels) == 1 else list(axes)
    b = report["budgets"]
    for ax, (k, label) in zip(axes, panels):
        fr = report["front"]
        ax.plot([c["latency_ms"] for c in fr], [c["predicted"].get(k) for c in fr], "-o", ms=3, color="#95a5a6",
                label="predicted front")
        tr = [c for c in report["trials"] if c["measured"]]
        ax.scatter([c["measured_latency_ms"] or c["latency_ms"] for c in tr], [c["measured"].get(k) for c in tr],
                   color="#2471a3", zorder=3, label="checked (PTQ + eval)")
        ax.scatter([report["int8_total_ms"]], [report["all_int8"][k]], marker="s", color="#c0392b", zorder=4,
                   label="all int8")
        ax.axhline(report["fp32"][k], color="#27ae60", ls="--", lw=1, label="FP32 accuracy")
        c = report.get("chosen")
        if c:
            ax.scatter([c["measured_latency_ms"] or c["latency_ms"]], [c["measured"][k]], marker="*", s=160,
                       color="#f39c12", zorder=5, label="chosen")
        lim = {"miou": ("max_miou_drop", -1), "rmse": ("max_rmse_rise", 1), "abs_rel": ("max_absrel_rise", 1)}[k]
        if b.get(lim[0]) is not None:
            ax.axhline(report["fp32"][k] + lim[1] * b[lim[0]], color="#7f8c8d", ls=":", lw=1, label="budget")
        lats = [c["latency_ms"] for c in fr] + [report["int8_total_ms"]]
        if b.get("latency_ms") is not None and b["latency_ms"] < 1.5 * max(lats):  # else it only squashes the plot
            ax.axvline(b["latency_ms"], color="#7f8c8d", ls=":", lw=1)
        ax.set_xlabel("latency (ms, " + ("measured per layer" if "measured" in report["latency_source"] else "estimated")
                      + ")")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Mixed precision on {report['device']} at {report['size'][0]}x{report['size'][1]}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    return path
