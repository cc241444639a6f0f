"""What `edgehydra bench` runs on one artifact, on this host or on a device: latency (burst or sustained) and
the per-operator profile, each written beside the artifact and kept in its run as a record. commands/devices.py
parses the options into a ``BenchRequest`` and prints what comes back.
"""
from __future__ import annotations

from pathlib import Path

from edgehydra._io import atomic_write_json
from edgehydra.errors import BadInputError

from .bench import BenchRequest, record_measurement, reference_check, reference_parity, shipped_entry
from .bench import bench as host_bench


def measure(artifact: Path, device: str, req: BenchRequest, host_profile: bool = True) -> dict:
    """Latency of ``artifact`` here (``device`` 'host') or over adb/ssh; the result with its record path.
    ``host_profile``: whether the profile it stands for is one of this host's (a host run measures only those)."""
    artifact = Path(artifact)
    if device == "host":
        if not host_profile:
            raise BadInputError(f"a run on this host measures this host's profiles (host = true: host_cpu, "
                                f"host_cpu_onnxruntime, host_cpu_litert), not {req.profile}")
        if req.bundle:
            reference_check(artifact)  # refused before any timing when there is no reference I/O
        return host_bench(artifact, req)
    if device.startswith("qemu:"):
        return _measure_emulated(artifact, device, req)
    return _measure_remote(artifact, device, req)


def _measure_emulated(artifact: Path, device: str, req: BenchRequest) -> dict:
    """`bench --bundle --device qemu:CPU`: the reference I/O on the emulated CPU's ARM kernels. A record of parity
    with no latency in it (emulated time is never a latency), which `check` cites as ARM evidence."""
    from .arm import QemuTransport, emulated_parity, kernel_evidence, record_in_manifest
    from .remote import artifact_facts

    if not req.bundle or req.duration_s:
        raise BadInputError(f"--device {device}: an emulated CPU checks parity, it times nothing; use --bundle "
                            "(and no --duration)")
    t = QemuTransport(device.split(":", 1)[1])
    par = emulated_parity(artifact, t)
    par["kernels"] = kernel_evidence(artifact, t)
    record_in_manifest(artifact, par)
    k = par["kernels"]
    acc = (f"emulated {t.cpu}: XNNPACK GEMM {', '.join(k['gemm'])} ({k['family']} kernels, seen)"
           if k.get("named") and k.get("gemm") else t.accelerator)
    res = dict(artifact_facts(artifact), artifact=str(artifact), device=device, accelerator=acc, runner=par["runner"],
               profile=req.profile, bundle_parity=par, emulated=True)
    record_measurement(artifact, res)
    atomic_write_json(Path(f"{artifact}.{device.replace(':', '_')}.bench.json"), res)
    return res


def _measure_remote(artifact: Path, device: str, req: BenchRequest) -> dict:
    from edgehydra.exporters.runtime import read_manifest

    from . import remote
    from .profile import load_profile

    if req.fps is not None:
        raise BadInputError("--fps paces calls from this host's clock; on a device the tool runs back to back "
                            "(drop --fps, or pace on the device yourself)")
    prof = load_profile(req.profile) if req.profile else None
    transport = remote.parse_device(device)
    man = read_manifest(artifact)
    if req.duration_s:
        res = remote.remote_sustained(transport, artifact, req, manifest=man, profile=prof)
    else:
        res = remote.remote_bench(transport, artifact, req, manifest=man, profile=prof)
    res.update(remote.artifact_facts(artifact), runner=res.get("tool"), profile=req.profile)
    if req.bundle:
        reference_check(artifact)
        res["bundle_parity"] = reference_parity(artifact, transport, req.python)
    stem = f"{artifact}.{device.replace(':', '_').replace('@', '_')}"
    if req.duration_s:
        from .sustained import plot

        res["plot"] = str(plot(res, Path(stem + ".sustained.png"),
                               f"{artifact.name} on {device}, {res['sustained_how']}"))
        res["json"] = stem + ".sustained.json"
    atomic_write_json(Path(stem + (".sustained.json" if req.duration_s else ".bench.json")), res)
    record_measurement(artifact, res)
    return res


def lowered_module(artifact: Path, man: dict, run):
    """What a .pte was lowered from (its conv order names XNNPACK's operators): the program its manifest names
    for an int8 artifact, else the run's FP32 model. Never "the run's program of that stage": a mixed variant
    sits beside it."""
    from edgehydra.calibration.program import load_program
    from edgehydra.checkpoint import load_checkpoint

    if man["precision"] == "int8":
        src = man.get("source_program") or {}
        if not src.get("path") or not Path(src["path"]).is_file():
            raise BadInputError(f"{artifact}: its manifest names no program file it was lowered from "
                                f"({src.get('path')}); export it again")
        return load_program(Path(src["path"])).module
    return load_checkpoint(run.checkpoint())[0].eval()


def op_profile(artifact: Path, device: str, req: BenchRequest, ops_from: str | None = None) -> dict:
    """`bench --ops`: which operators take the time, mapped to the model's layers and stages. Written beside the
    artifact (``.ops.json`` and ``.ops.png``); a device's own profile of a shipped artifact is kept in the run
    for the device's per-class scales. Returns {profile, json, png, record}."""
    from edgehydra.exporters.runtime import read_manifest
    from edgehydra.run import run_of_artifact

    from .opprofile import chart

    artifact = Path(artifact)
    if artifact.suffix not in (".pte", ".onnx", ".tflite"):
        raise BadInputError("a per-operator profile is read from ExecuTorch's ETDump, onnxruntime's or TensorRT's "
                            "profiler or LiteRT: pass a .pte, an .onnx or a .tflite")
    run = run_of_artifact(artifact)
    if run is None:
        raise BadInputError(f"{artifact} is not in a run's export folder: its layers cannot be named")
    man = read_manifest(artifact)
    tasks, size = tuple(man["outputs"]), tuple(man["size"])
    lowered = (lambda: lowered_module(artifact, man, run)) if artifact.suffix == ".pte" else (lambda: None)
    tag = ""
    if ops_from or device != "host":
        prof = _device_op_profile(artifact, device, req, ops_from, tasks, lowered, man)
        prof.update(size=list(size), runs=req.runs)
        tag = "." + (device if device != "host" else Path(ops_from).stem).replace(":", "_").replace("@", "_")
    else:
        from .opprofile import profile_here

        prof = profile_here(artifact, size, runs=req.runs, tasks=tasks, threads=req.threads, lowered_module=lowered())
    out = Path(str(artifact) + f"{tag}.ops.json")
    atomic_write_json(out, prof)
    record = None
    if tag and req.profile and prof["mapped"]:
        # the device's own profile of a shipped artifact: check and the mixed search read it (per-class scales)
        from .remote import artifact_facts

        facts = artifact_facts(artifact)
        if shipped_entry(run, artifact, facts["sha256"]) is not None:
            record = run.add_op_profile({**facts, "profile": req.profile, "device": prof.get("device"),
                                         "runtime": prof["runtime"], "source": prof.get("source"),
                                         "size": list(size), "total_ms": prof["total_ms"], "by_class": prof["by_class"],
                                         "by_stage": prof.get("by_stage")})
    png = chart(prof, Path(str(artifact) + f"{tag}.ops.png"))
    return {"profile": prof, "json": out, "png": png, "record": record, "device_profile": bool(tag)}


def _device_op_profile(artifact, device, req, ops_from, tasks, lowered, man) -> dict:
    from . import toolprofile

    if ops_from:
        return toolprofile.device_profile(artifact, Path(ops_from), tasks, lowered(),
                                          device=None if device == "host" else device)
    from . import remote

    got = remote.remote_bench(remote.parse_device(device), artifact, req, manifest=man, op_profile=True)
    prof = toolprofile.profile_from_rows(artifact, got["tool"], got["rows"], tasks, device=device)
    prof.update(command=got["command"], accelerator=got["accelerator"])
    return prof
