"""Benchmarks on a device: Android over adb, Jetson/Linux over ssh, Apple via a script run on a Mac.

Every argument that reaches a remote shell goes through ``shlex.quote`` (a file named
``a b; rm -rf ~`` stays one argument), and everything pushed lives in one work folder that
is removed in a ``finally`` whatever happens. The transport is the only part that talks to the
device, so the orchestration is tested against a local stand-in (``LocalTransport``).
"""
from __future__ import annotations

import math
import re
import shlex
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgehydra.errors import BadInputError, EdgeHydraError

from .bench import BenchRequest


class DeviceGone(EdgeHydraError):
    """The device stopped answering (unplugged, rebooted, network down)."""


@dataclass
class Result:
    rc: int
    out: str
    err: str


class Transport:
    """push(local, remote), shell(argv) and rmdir(remote); ``argv`` items are quoted here, once.
    ``workdir()`` is a fresh folder on the device for one run, removed after it even when the run fails."""

    name = "transport"
    timeout = 600.0
    tmp_root = "/tmp"  # where a run's work folder goes (Android: /data/local/tmp, the folder adb may exec from)

    @contextmanager
    def workdir(self):
        work = f"{self.tmp_root}/edgehydra-{uuid.uuid4().hex[:8]}"
        self.shell(["mkdir", "-p", work])
        try:
            yield work
        finally:
            try:
                self.rmdir(work)
            except DeviceGone:  # it went away mid-run: nothing left to clean on it from here
                pass

    def _exec(self, argv: list[str], timeout: float | None = None) -> Result:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            raise EdgeHydraError(f"{self.name}: command timed out after {timeout or self.timeout:.0f} s: {argv[-1][:120]}") from None
        except FileNotFoundError as e:
            raise EdgeHydraError(f"{self.name}: {e.filename} not found on this host") from None
        return Result(p.returncode, p.stdout, p.stderr)

    @staticmethod
    def quote(argv: list[str]) -> str:
        return " ".join(shlex.quote(str(a)) for a in argv)


class AdbTransport(Transport):
    tmp_root = "/data/local/tmp"

    def __init__(self, serial: str, adb: str = "adb"):
        self.serial, self.adb, self.name = serial, adb, f"adb:{serial}"

    def _check(self, r: Result):
        if r.rc != 0 and re.search(r"device .* not found|no devices|device offline|unauthorized", r.err):
            raise DeviceGone(f"{self.name}: device not available ({r.err.strip()[:120]})")
        return r

    def push(self, local: Path, remote: str):
        r = self._check(self._exec([self.adb, "-s", self.serial, "push", str(local), remote]))
        if r.rc != 0:
            raise EdgeHydraError(f"{self.name}: push of {local} failed: {r.err.strip()[:200]}")

    def shell(self, argv: list[str], timeout=None) -> Result:
        # adb shell joins its arguments with spaces and hands them to the device's sh: quote once.
        return self._check(self._exec([self.adb, "-s", self.serial, "shell", self.quote(argv)], timeout))

    def rmdir(self, remote: str):
        self.shell(["rm", "-rf", remote])


class SshTransport(Transport):
    def __init__(self, target: str, ssh: str = "ssh", scp: str = "scp"):
        self.target, self.ssh, self.scp, self.name = target, ssh, scp, f"ssh:{target}"

    def _check(self, r: Result):
        if r.rc == 255:  # ssh's own failure code: connection refused/lost
            raise DeviceGone(f"{self.name}: connection failed ({r.err.strip()[:120]})")
        return r

    def push(self, local: Path, remote: str):
        r = self._check(self._exec([self.scp, "-q", "-r", str(local), f"{self.target}:{shlex.quote(remote)}"]))
        if r.rc != 0:
            raise EdgeHydraError(f"{self.name}: copy of {local} failed: {r.err.strip()[:200]}")

    def shell(self, argv: list[str], timeout=None) -> Result:
        return self._check(self._exec([self.ssh, "-o", "BatchMode=yes", self.target, "--", self.quote(argv)], timeout))

    def rmdir(self, remote: str):
        self.shell(["rm", "-rf", remote])


class LocalTransport(Transport):
    """A stand-in device: a folder on this machine and /bin/sh, with the same quoting rules."""

    def __init__(self, root: Path, gone_after: int | None = None):
        self.root, self.name, self.calls, self.gone_after = Path(root), f"local:{root}", [], gone_after

    def _map(self, remote: str) -> Path:
        return self.root / remote.lstrip("/")

    def _alive(self):
        if self.gone_after is not None and len(self.calls) >= self.gone_after:
            raise DeviceGone(f"{self.name}: device disappeared")

    def push(self, local: Path, remote: str):
        self._alive()
        self.calls.append(("push", str(local), remote))
        dst = self._map(remote)
        dst.parent.mkdir(parents=True, exist_ok=True)
        import shutil

        (shutil.copytree if Path(local).is_dir() else shutil.copy)(local, dst)

    def shell(self, argv: list[str], timeout=None) -> Result:
        self._alive()
        self.calls.append(("shell", self.quote(argv)))
        # a path in the device's work folder names the file under this stand-in's root
        cmd = self.quote([str(self._map(a)) if isinstance(a, str) and a.startswith(("/tmp/edgehydra-", "/data/local/tmp/"))
                          else a for a in argv])
        return self._exec(["/bin/sh", "-c", f"cd {shlex.quote(str(self.root))} && {cmd}"], timeout)

    def rmdir(self, remote: str):
        self._alive()
        self.calls.append(("rmdir", remote))
        import shutil

        shutil.rmtree(self._map(remote), ignore_errors=True)


# ------------------------------------------------------------------------------------ parsers
def _f(pattern: str, text: str, cast=float):
    m = re.search(pattern, text)
    return cast(m.group(1)) if m else None


def parse_benchmark_model(text: str) -> dict:
    """TFLite/LiteRT ``benchmark_model``: the inference stats line (microseconds) and memory."""
    # The last "count=" line is the timed inference runs (the first one is warm-up).
    lines = [ln for ln in text.splitlines() if re.search(r"count=\d+ .*avg=", ln)]
    if not lines:
        raise EdgeHydraError("benchmark_model output has no timing line (count=... avg=...)")
    ln = lines[-1]
    us = {k: _f(rf"\b{k}=([\d.eE+]+)", ln) for k in ("count", "min", "max", "avg", "std", "median", "p5", "p95")}
    res = {"runs": int(us["count"]), "min_ms": us["min"] / 1e3, "mean_ms": us["avg"] / 1e3,
           "p50_ms": (us["median"] if us["median"] is not None else us["avg"]) / 1e3,
           "p50_from": "median" if us["median"] is not None else "avg (the tool printed no median)"}
    if us["p95"] is not None:
        res["p95_ms"] = us["p95"] / 1e3
    # Peak memory is the periodic monitor's line (--report_peak_memory_footprint); the "Memory footprint
    # delta ... overall=" line is growth since the tool started, not a peak: kept under its own name.
    peak = _f(r"Overall peak memory footprint \(MB\) via periodic monitoring: ([\d.]+)", text)
    if peak is not None:
        res["peak_memory_mb"] = peak
    delta = _f(r"footprint delta.*overall=([\d.]+)", text)
    if delta is not None:
        res["memory_delta_mb"] = delta
    dl = _delegations(text)
    if dl:  # the delegate that took the most of the graph; every one under "delegates"
        res["delegate"] = max(dl, key=lambda d: (d.get("nodes", -1), d.get("graph") != GRAPH_NONE))
        if len(dl) > 1:
            res["delegates"] = dl
    return res


_SUMMARY_NAMES = {"GPU": "gpu", "NNAPI": "nnapi", "XNNPACK": "xnnpack"}  # summary name -> in the class name
GRAPH_NONE = "none on the delegate (all on CPU)"


def _delegations(text: str) -> list[dict]:
    """What each delegate took, in the forms real benchmark_model builds print (tests/fixtures/real/):
    "Replacing N out of M node(s) with delegate (NAME) node" (M missing in older builds), the QNN
    delegate's own "NAME delegate: N nodes delegated out of M nodes", and the summary "Explicitly applied
    X delegate, and the model graph will be completely / partially (w/ K delegate kernels) executed", or
    "Though X delegate is explicitly applied, the model graph will not be executed". A summary joins the
    partition line of its delegate (EXTERNAL: one not named GPU/NNAPI/XNNPACK); one without stands alone."""
    out = []
    for m in re.finditer(r"Replacing (\d+)(?: out of (\d+))? node\(s\) with delegate \(([^)]+)\)", text):
        d = {"name": m.group(3), "nodes": int(m.group(1))}
        if m.group(2):
            d.update({"of": int(m.group(2)), "cpu_fallback_nodes": int(m.group(2)) - int(m.group(1))})
        out.append(d)
    for m in re.finditer(r"(\w+) delegate: (\d+) nodes delegated out of (\d+) nodes", text):
        out.append({"name": m.group(1), "nodes": int(m.group(2)), "of": int(m.group(3)),
                    "cpu_fallback_nodes": int(m.group(3)) - int(m.group(2))})
    graph = {"completely": "all on the delegate", "partially": "partly on the delegate",
             "not": GRAPH_NONE}
    for m in re.finditer(r"(?:Explicitly applied|Though) (\w+) delegate.*?the model graph will (?:be )?"
                         r"(completely|partially|not) (?:be )?executed by the delegate(?: w/ (\d+) delegate kernels)?",
                         text):
        name, key = m.group(1), _SUMMARY_NAMES.get(m.group(1))
        match = next((d for d in out if "graph" not in d and "nodes" in d and (
            key in d["name"].lower() if key else not any(k in d["name"].lower() for k in _SUMMARY_NAMES.values()))),
            None)
        d = match if match is not None else {"name": name}
        d["graph"] = graph[m.group(2)]
        if m.group(3):
            d["delegate_kernels"] = int(m.group(3))
        if match is None:
            out.append(d)
    return out


def parse_executor_runner(text: str) -> dict:
    """ExecuTorch ``executor_runner``: "Model executed successfully N time(s) in T ms.", and, from recent
    runners, one "Iteration i of N: T ms" line per call (then p50 is their median without the first, cold,
    call). A runner built without ExecuTorch logging prints no timing at all: said so, not guessed."""
    m = re.search(r"executed successfully (\d+) time\(s\) in ([\d.]+) ms", text)
    if not m:
        why = ("this runner prints no timing (an old executor_runner: 'Model executed successfully.'); use a newer "
               "one" if "executed successfully." in text else
               "the runner printed outputs but no log lines: it was built without ExecuTorch logging "
               "(EXECUTORCH_ENABLE_LOGGING=ON)" if re.search(r"^Output(X)? \d+:", text, re.M) else
               "no 'executed successfully N time(s) in T ms' line")
        raise EdgeHydraError(f"executor_runner output has no timing: {why}")
    n, total = int(m.group(1)), float(m.group(2))
    res = {"runs": n, "mean_ms": total / n, "p50_ms": total / n, "p50_from": "mean (executor_runner prints a total)"}
    its = [float(t) for t in re.findall(r"Iteration \d+ of \d+: ([\d.]+) ms", text)]
    if len(its) > 1:
        warm = sorted(its[1:])
        res.update(p50_ms=warm[len(warm) // 2] if len(warm) % 2 else (warm[len(warm) // 2 - 1] + warm[len(warm) // 2]) / 2,
                   min_ms=min(warm), p50_from="median of the per-iteration lines, first (cold) call left out",
                   first_call_ms=its[0])
    load = _f(r"Model loaded in ([\d.]+) ms", text)
    if load is not None:
        res["load_ms"] = load
    return res


def parse_trtexec(text: str) -> dict:
    """TensorRT ``trtexec``: the summary "Latency: min = ... ms, ..., percentile(99%) = ... ms" line."""
    # "Latency:" alone, not "H2D Latency:" / "D2H Latency:"
    lat = [ln for ln in text.splitlines() if re.search(r"(^|\]\s+|^\s*)Latency: min = ", ln)]
    if not lat:
        raise EdgeHydraError("trtexec output has no 'Latency: min = ...' summary line")
    ln = lat[-1]
    res = {"min_ms": _f(r"min = ([\d.]+) ms", ln), "max_ms": _f(r"max = ([\d.]+) ms", ln),
           "mean_ms": _f(r"mean = ([\d.]+) ms", ln), "p50_ms": _f(r"median = ([\d.]+) ms", ln),
           "p90_ms": _f(r"percentile\(90%\) = ([\d.]+) ms", ln), "p99_ms": _f(r"percentile\(99%\) = ([\d.]+) ms", ln)}
    gpu = [ln for ln in text.splitlines() if "GPU Compute Time: min = " in ln]
    if gpu:
        res["gpu_compute_p50_ms"] = _f(r"median = ([\d.]+) ms", gpu[-1])
    q = _f(r"Throughput: ([\d.]+) qps", text)
    if q is not None:
        res["throughput_qps"] = q
    return {k: v for k, v in res.items() if v is not None}


# ------------------------------------------------------------------------------- orchestration
def parse_device(spec: str):
    if spec.startswith("adb:") and len(spec) > 4:
        return AdbTransport(spec[4:])
    if spec.startswith("ssh:") and len(spec) > 4:
        return SshTransport(spec[4:])
    raise BadInputError(f"--device {spec!r}: use host, adb:SERIAL or ssh:user@host")


def remote_plan(suffix: str, manifest: dict | None, profile=None) -> dict:
    """What runs an artifact on a device: its target record's ``remote_plan`` (exporters/<target>.py) reads the
    manifest and the device profile and names the tool, the binaries to look for, the flags that make it
    measure what the profile describes, and the command line."""
    from edgehydra.exporters import get_target, target_for_suffix

    name = target_for_suffix(suffix)
    tgt = get_target(name) if name else None
    if tgt is None or tgt.remote_plan is None:
        runnable = ", ".join(get_target(n).suffix for n in _remote_targets())
        raise BadInputError(f"remote benchmarks take {runnable}, not {suffix!r}"
                            + (" (Core ML: `bench --apple-script`, then `--ingest`)" if name == "coreml" else ""))
    return tgt.remote_plan(manifest or {}, profile)


def _remote_targets() -> list[str]:
    from edgehydra.exporters import get_target, list_targets

    return [n for n in list_targets() if get_target(n).remote_plan is not None]


PARSERS = {"benchmark_model": parse_benchmark_model, "executor_runner": parse_executor_runner,
           "trtexec": parse_trtexec}  # tool (a plan's "tool") -> its output parser


def _failed(transport: Transport, tool: str, r: Result):
    raise EdgeHydraError(f"{transport.name}: {tool} exited {r.rc}: {(r.err or r.out).strip()[-300:]}")


@contextmanager
def _pushed(transport: Transport, artifact: Path, plan: dict, binary: str | None):
    """The artifact in a fresh work folder on the device and the tool found there: (remote path, tool path);
    the folder is removed afterwards, whatever happened (unless the device is gone)."""
    with transport.workdir() as work:
        remote_art = f"{work}/{artifact.name}"
        transport.push(artifact, remote_art)
        exe = binary or _find(transport, plan["binaries"], [transport.tmp_root, "/data/local/tmp"]
                              if plan.get("search_dirs", True) else [])
        yield remote_art, exe


# A device's tool by default: 50 calls after 5 warm-up ones on 4 threads (the big cores of a phone or a Jetson)
DEVICE_RUN = BenchRequest(runs=50, warmup=5, threads=4)


def remote_bench(transport: Transport, artifact: Path, req: BenchRequest = DEVICE_RUN, *, manifest: dict | None = None,
                 profile=None, op_profile: bool = False, timeout: float = 900) -> dict:
    """Run the artifact's tool on the device as ``req`` says (its binary, runs, warmup, threads) and parse its
    latency (``op_profile``: its per-operator table instead, as rows for devices/toolprofile.py; a profiling run
    is not a latency measurement)."""
    binary, runs, warmup, threads = req.binary, req.runs, req.warmup, req.threads
    artifact = Path(artifact)
    if not artifact.exists():
        raise BadInputError(f"artifact not found: {artifact}")
    plan = remote_plan(artifact.suffix, manifest, profile)  # refuses what the tool cannot run, before any copy
    tool = plan["tool"]
    if op_profile and not plan.get("op_profile_flags"):
        raise BadInputError(f"{tool} writes its per-operator profile to a file on the device: run it there with "
                            "--etdump_path=run.etdp and pass the file with `bench --ops --ops-from run.etdp`")
    with _pushed(transport, artifact, plan, binary) as (remote_art, exe):
        argv = plan["argv"](exe, remote_art, threads, runs, warmup)
        if op_profile:
            argv = argv + plan["op_profile_flags"]
        r = transport.shell(argv, timeout=timeout)
        if r.rc != 0:
            _failed(transport, tool, r)
        if op_profile:
            from .toolprofile import parse_benchmark_model_ops, parse_trtexec_profile

            parse_ops = {"benchmark_model": parse_benchmark_model_ops, "trtexec": parse_trtexec_profile}[tool]
            return {"rows": parse_ops(r.out + "\n" + r.err), "tool": tool, "device": transport.name,
                    "command": Transport.quote(argv), "accelerator": plan["accelerator"]}
        parse = PARSERS[tool]
        res = parse(r.out + "\n" + r.err)
        res.update(device=transport.name, tool=tool, command=Transport.quote(argv), artifact=str(artifact),
                   threads=threads, warmup=warmup, accelerator=plan["accelerator"])
        return res


def parse_trtexec_windows(text: str) -> list[dict]:
    """trtexec's running "Average on N runs - GPU latency: X ms - Host latency: Y ms" lines as windows, each
    starting where the previous ones' N x host latency ends (trtexec prints no timestamps finer than a second)."""
    out, t = [], 0.0
    for m in re.finditer(r"Average on (\d+) runs - GPU latency: ([\d.]+) ms - Host latency: ([\d.]+) ms", text):
        n, host = int(m.group(1)), float(m.group(3))
        out.append({"t_s": t, "latency_ms": host, "gpu_ms": float(m.group(2)), "calls": n, "busy_s": n * host / 1e3})
        t += n * host / 1e3
    return out


def remote_sustained(transport: Transport, artifact: Path, req: BenchRequest, *, manifest: dict | None = None,
                     profile=None, clock=time.monotonic) -> dict:
    """Run the artifact on the device for ``req.duration_s`` seconds and report it over time: trtexec in one call
    (its --duration, its running averages as windows, its summary over every call for the percentiles); the
    other tools back to back, ``req.runs`` calls per invocation, one window each (devices/sustained.py)."""
    from .sustained import from_windows

    if not req.duration_s:
        raise BadInputError("a sustained run needs a duration")
    duration_s, binary, threads, window_runs, warmup = req.duration_s, req.binary, req.threads, req.runs, req.warmup
    artifact = Path(artifact)
    if not artifact.exists():
        raise BadInputError(f"artifact not found: {artifact}")
    plan = remote_plan(artifact.suffix, manifest, profile)
    tool = plan["tool"]
    with _pushed(transport, artifact, plan, binary) as (remote_art, exe):
        summary = None
        if tool == "trtexec":
            argv = plan["argv"](exe, remote_art, threads, 1, warmup) + [f"--duration={max(1, math.ceil(duration_s))}"]
            r = transport.shell(argv, timeout=3 * duration_s + 900)  # the engine build comes first
            if r.rc != 0:
                _failed(transport, tool, r)
            text = r.out + "\n" + r.err
            windows, summary = parse_trtexec_windows(text), parse_trtexec(text)
            if not windows:
                raise EdgeHydraError(f"{transport.name}: trtexec printed no 'Average on N runs' lines over the run")
            elapsed = windows[-1]["t_s"] + windows[-1]["busy_s"]
        else:
            windows, t0, first = [], clock(), True
            argv = None
            while True:
                now = clock() - t0
                if now >= duration_s:
                    break
                argv = plan["argv"](exe, remote_art, threads, window_runs, warmup if first else 1)
                r = transport.shell(argv, timeout=900)
                if r.rc != 0:
                    _failed(transport, tool, r)
                got = PARSERS[tool](r.out + "\n" + r.err)
                n = int(got.get("runs") or window_runs)
                windows.append({"t_s": now, "latency_ms": got["p50_ms"], "calls": n,
                                "busy_s": n * got.get("mean_ms", got["p50_ms"]) / 1e3})
                first = False
            elapsed = clock() - t0
        res = from_windows(windows, elapsed, summary)
        res.update(device=transport.name, tool=tool, command=Transport.quote(argv), artifact=str(artifact),
                   threads=threads, warmup=warmup, accelerator=plan["accelerator"],
                   runs=res["calls"], sustained_how=("one trtexec --duration run, its running averages as windows"
                                                     if tool == "trtexec" else
                                                     f"{tool} back to back, {window_runs} calls per window"))
        return res


def _find(transport: Transport, names: list[str], dirs: list[str]) -> str:
    for n in names:
        cands = [n] + [f"{d}/{n}" for d in dirs if "/" not in n]
        for c in cands:
            r = transport.shell(["sh", "-c", 'command -v "$1" || test -x "$1" && echo "$1"', "sh", c])
            if r.rc == 0 and r.out.strip():
                return r.out.strip().splitlines()[0]
    raise EdgeHydraError(f"{transport.name}: none of {', '.join(names)} found on the device; pass --binary PATH")


APPLE_SCRIPT = '''#!/usr/bin/env python3
"""Benchmark a Core ML model on this Mac and write JSON that `edgehydra bench --ingest` reads.
Usage: python3 bench_coreml.py MODEL.mlpackage [--units ALL|CPU_ONLY|CPU_AND_GPU|CPU_AND_NE] [--runs 50]"""
import argparse, json, platform, time
import numpy as np
import coremltools as ct

ap = argparse.ArgumentParser()
ap.add_argument("model"); ap.add_argument("--units", default="ALL"); ap.add_argument("--runs", type=int, default=50)
ap.add_argument("--warmup", type=int, default=5); ap.add_argument("--out", default="coreml_bench.json")
a = ap.parse_args()
m = ct.models.MLModel(a.model, compute_units=getattr(ct.ComputeUnit, a.units))
inp = m.get_spec().description.input[0]
shape = list(inp.type.multiArrayType.shape) or [1, 3, 480, 640]
x = {inp.name: np.random.rand(*shape).astype(np.float32)}
for _ in range(a.warmup):
    m.predict(x)
t = []
for _ in range(a.runs):
    s = time.perf_counter(); m.predict(x); t.append((time.perf_counter() - s) * 1e3)
t = np.array(t)
json.dump({"device": "apple:" + platform.machine(), "tool": "coremltools", "compute_units": a.units,
           "artifact": a.model, "runs": a.runs, "warmup": a.warmup, "p50_ms": float(np.median(t)),
           "p90_ms": float(np.percentile(t, 90)), "p99_ms": float(np.percentile(t, 99)),
           "min_ms": float(t.min()), "mean_ms": float(t.mean())}, open(a.out, "w"), indent=2)
print(open(a.out).read())
'''


def artifact_facts(artifact: Path) -> dict:
    """sha256, input size and precision of an exported artifact, from the artifact and its manifest."""
    from edgehydra._io import sha256_path
    from edgehydra.exporters.runtime import read_manifest

    man = read_manifest(artifact)
    return {"sha256": sha256_path(artifact), "size": man["size"], "precision": man["precision"],
            "target": man["target"]}


def ingest(path: Path) -> dict:
    """Read a JSON written by the Apple script (or any runner in the same format)."""
    import json

    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadInputError(f"{path}: not a benchmark JSON ({e})") from None
    missing = [k for k in ("p50_ms", "runs", "device") if k not in d]
    if missing:
        raise BadInputError(f"{path}: benchmark JSON lacks {', '.join(missing)}")
    return d
