"""Reference I/O that travels with an ExecuTorch artifact (.bpte), run through ExecuTorch's bundled-program
API on this host and on a stand-in device, with a per-task verdict that lands in the run."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

REAL = Path(__file__).parent / "fixtures" / "real"


@pytest.fixture(scope="module")
def pte_run(tiny_run, tmp_path_factory):
    from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run
    from edgehydra.run import Run

    run = tmp_path_factory.mktemp("bundle") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "measurements", "mixed"))
    res = export_run(Run(run).export_dir, ["executorch"], ["int8"], source=ExportSource(run=run),
                     settings=ExportSettings(eval_frames=4))
    assert res[0].status == "verified", res[0].reason
    return run, Path(res[0].path)


def test_export_writes_a_bundle_that_passes_here(pte_run):
    from edgehydra.exporters.bundle import bundle_path, read_expected

    run, pte = pte_run
    man = json.loads(Path(str(pte) + ".manifest.json").read_text())
    side = man["sidecars"]["bundle"]
    b = bundle_path(pte)
    assert b.is_file() and side["path"] == b.name and side["host_check"]["pass"], side
    cases = read_expected(b)
    assert len(cases) == side["cases"] == man["verification"]["frames"]
    assert cases[0][0].shape == (1, 3, *man["size"]) and len(cases[0][1]) == len(man["outputs"])
    # the bundle is a sidecar: the artifact's size is the .pte's own
    assert man["size_bytes"] == pte.stat().st_size


def test_bench_bundle_verdict_lands_in_the_run(pte_run):
    from edgehydra.commands import cli

    run, pte = pte_run
    r = CliRunner().invoke(cli, ["bench", "--artifact", str(pte), "--runs", "2", "--warmup", "1", "--bundle"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "bundled reference I/O on host" in r.output and "PASS" in r.output, r.output
    recs = [json.loads(p.read_text()) for p in (run / "measurements").glob("*.json")]
    rec = next(x for x in recs if x.get("bundle_parity"))
    bp = rec["bundle_parity"]
    assert bp["pass"] and set(bp["parity"]) == {"segm", "depth"} and bp["device"] == "host"


def test_bundle_on_a_stand_in_device_and_a_per_task_failure(pte_run, tmp_path):
    """The device path (push the .bpte and the runner, run it with the device's Python, judge here) on
    the local stand-in transport; then a bundle whose expected depth is off fails depth only."""
    from edgehydra.devices.remote import LocalTransport
    from edgehydra.exporters.parity import Tolerance
    from edgehydra.exporters.bundle import bundle_path, read_expected, run_bundle, write_bundle

    run, pte = pte_run
    man = json.loads(Path(str(pte) + ".manifest.json").read_text())
    tol = Tolerance(**man["verification"]["tolerance"])
    dev = LocalTransport(tmp_path / "device")
    res = run_bundle(bundle_path(pte), ("segm", "depth"), tol, dev, python=sys.executable)
    assert res["pass"] and res["device"].startswith("local:"), res
    pushed = [c[2] for c in dev.calls if c[0] == "push"]
    assert any(p.endswith(".bpte") for p in pushed) and any(p.endswith("bundle_runner.py") for p in pushed)
    assert not any((tmp_path / "device").rglob("*.bpte"))  # the work folder is removed
    cases = read_expected(bundle_path(pte))
    frames = np.concatenate([c[0] for c in cases])
    wrong = [(o[0], o[1] * 1.5) for _, o in cases]  # expected depth 50 % off, segmentation as exported
    bad = write_bundle(pte, frames, wrong, tmp_path / "wrong.bpte")
    res = run_bundle(bad, ("segm", "depth"), tol)
    assert not res["pass"]
    assert len(res["failures"]) == 1 and res["failures"][0].startswith("depth"), res["failures"]


def test_per_op_profile_maps_every_operator_to_a_layer_and_stage(pte_run):
    """`bench --ops`: ETDump's per-XNNPACK-operator times, each convolution on its layer (checked by
    count and by depthwise kind), summed by stage and class; kept-float layers show fp32 kernels."""
    import torch

    from edgehydra.checkpoint import load_checkpoint
    from edgehydra.commands import cli

    run, pte = pte_run
    r = CliRunner().invoke(cli, ["bench", "--artifact", str(pte), "--ops", "--runs", "3"])
    assert r.exit_code == 0, (r.output, r.exception)
    prof = json.loads(Path(str(pte) + ".ops.json").read_text())
    assert prof["mapped"], prof["unmapped_reason"]
    assert Path(str(pte) + ".ops.png").is_file()
    model, _ = load_checkpoint(run / "fp32.pt")
    convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs <= set(prof["by_layer"])  # every conv got its operator
    assert {d["stage"] for d in prof["by_stage"]} >= {"encoder", "decoder", "head:segm", "head:depth"}
    assert abs(sum(d["ms"] for d in prof["by_stage"]) - prof["total_ms"]) < 1e-9
    conv_rows = [x for x in prof["rows"] if x["op_class"].endswith("conv")]
    assert all(x["precision"] == "int8" for x in conv_rows)  # the w8a8 program: every conv on int8 kernels
    assert "encoder" in r.output and "head:segm" in r.output


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_reference_io_beside_other_formats_runs_here_and_on_a_device(tiny_run, tmp_path, target):
    """A .onnx / .tflite carries its parity frames and reference outputs as <artifact>.reference.npz: the
    export checks it here, `bench --bundle` puts the verdict in the run, the stand-in device runs the same
    self-contained runner with its own Python, and expected outputs that are off fail that task only."""
    from edgehydra.commands import cli
    from edgehydra.devices.remote import LocalTransport
    from edgehydra.exporters.parity import Tolerance
    from edgehydra.exporters.reference_io import read_expected, reference_path, run_reference, write_reference
    from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "measurements", "mixed", "debug"))
    # the ONNX with signed int8 Q/DQ: the kind TensorRT builds (its device profile is read below)
    res = export_run(run / "export", [target], ["int8"], source=ExportSource(run=run),
                     settings=ExportSettings(eval_frames=1, options={"qdq": "int8"} if target == "onnx" else None))
    assert res[0].status == "verified", res[0].reason
    art = Path(res[0].path)
    man = json.loads(Path(str(art) + ".manifest.json").read_text())
    side = man["sidecars"]["reference_io"]
    ref = reference_path(art)
    assert ref.name == side["path"] and side["host_check"]["pass"] and side["cases"] == man["verification"]["frames"]
    assert man["size_bytes"] == art.stat().st_size  # a sidecar is not counted in the artifact's size

    r = CliRunner().invoke(cli, ["bench", "--artifact", str(art), "--runs", "2", "--warmup", "1", "--bundle"])
    assert r.exit_code == 0, (r.output, r.exception)
    rec = next(json.loads(p.read_text()) for p in (run / "measurements").glob("*.json"))
    assert rec["bundle_parity"]["pass"] and rec["bundle_parity"]["device"] == "host"

    tol = Tolerance(**man["verification"]["tolerance"])
    dev = LocalTransport(tmp_path / "device")
    out = run_reference(art, ("segm", "depth"), tol, dev, python=sys.executable)
    assert out["pass"] and out["device"].startswith("local:"), out
    assert {Path(c[2]).name for c in dev.calls if c[0] == "push"} == {art.name, ref.name, "reference_runner.py"}
    assert not any((tmp_path / "device").rglob(art.name))  # the work folder is removed

    # `bench --ops` on this host (onnxruntime's own profiler; LiteRT operator by operator), then a device's own
    # profile of the same file (trtexec / benchmark_model, in their real formats) read back onto the same layers
    r = CliRunner().invoke(cli, ["bench", "--artifact", str(art), "--ops", "--runs", "3"])
    assert r.exit_code == 0, (r.output, r.exception)
    prof = json.loads(Path(str(art) + ".ops.json").read_text())
    assert prof["mapped"] and prof["runtime"] == {"onnx": "onnxruntime", "tflite": "litert"}[target], prof
    assert {d["stage"] for d in prof["by_stage"]} >= {"encoder", "decoder", "head:segm", "head:depth"}
    assert abs(sum(d["ms"] for d in prof["by_stage"]) - prof["total_ms"]) < 1e-9
    assert {"segm", "pre_segm", "depth", "pre_depth"} <= set(prof["by_layer"])
    assert any(x["precision"] == "int8" and x["op_class"].endswith("conv") for x in prof["rows"])
    if target == "tflite":
        from edgehydra.devices.tflite_ops import op_layers

        ops = op_layers(art)  # every operator of the file timed once (a PAD with the conv it feeds)
        assert sum(x["event"].count("#") for x in prof["rows"]) == len(ops) and prof["whole_ms"] > 0
    _device_op_profile(art, target, tmp_path)

    exp = read_expected(ref)
    frames = np.load(ref)["frames"]
    write_reference(art, frames, [exp[0], exp[1] * 1.5])  # expected depth 50 % off
    bad = run_reference(art, ("segm", "depth"), tol)
    assert not bad["pass"] and len(bad["failures"]) == 1 and bad["failures"][0].startswith("depth"), bad


def _device_op_profile(art: Path, target: str, tmp_path: Path):
    """A device tool's per-op profile of ``art`` in the tool's real format (tests/fixtures/real holds samples
    of each from other models), naming this file's nodes as the tool does: trtexec fuses Q/DQ, conv and
    activation into one layer "A + B + C"; benchmark_model names CPU nodes "[output tensors]:<node index>"
    and XNNPACK's operators "Delegate/<operator>:<k>". Read with --ops-from and through the stand-in
    device (the tool's stdout), every convolution lands on the module it came from."""
    import torch

    from edgehydra.checkpoint import load_checkpoint
    from edgehydra.commands import cli
    from edgehydra.devices import remote
    from edgehydra.devices.toolprofile import profile_from_rows, read_tool_profile

    run = art.parents[2]
    convs = {n for n, m in load_checkpoint(run / "fp32.pt")[0].named_modules() if isinstance(m, torch.nn.Conv2d)}
    rng = np.random.default_rng(0)
    if target == "onnx":
        from edgehydra.devices.opprofile import onnx_nodes

        nodes = onnx_nodes(art)
        names = list(nodes)
        rows = []
        for i, n in enumerate(names):
            if nodes[n]["op_type"] == "Conv":
                fused = [m for m in names[max(0, i - 1):i + 2] if nodes[m]["op_type"] != "Conv" or m == n]
                rows.append({"name": " + ".join(fused), "timeMs": 1.0, "averageMs": 0.01,
                             "medianMs": float(rng.uniform(0.005, 0.05)), "percentage": 1.0})
        rows.insert(0, {"name": f"Reformatting CopyNode for Input Tensor 0 to {rows[0]['name']}", "timeMs": 0.1,
                        "averageMs": 0.001, "medianMs": 0.001, "percentage": 0.1})
        prof_file = tmp_path / "trt_profile.json"
        prof_file.write_text(json.dumps([{"count": 100}] + rows, indent=1))
        log = "[I] === Profile (100 iterations ) ===\n[I]    Time(ms)     Avg.(ms)   Median(ms)   Time(%)   Layer\n" + \
              "".join(f"[I]  {r['timeMs']:10.2f} {r['averageMs']:12.4f} {r['medianMs']:12.4f} {r['percentage']:9.1f}   "
                      f"{r['name']}\n" for r in rows)
        tool = "trtexec"
    else:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(art))
        tn = {t["index"]: t["name"] for t in it.get_tensor_details()}
        lines = ["Operator-wise Profiling Info for Regular Benchmark Runs:",
                 "============================== Run Order ==============================",
                 "\t             [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]"]
        for o in it._get_ops_details():
            ms = float(rng.uniform(0.005, 0.05))
            lines.append(f"\t{o['op_name']:>24}\t{ms:9.3f}\t{ms:9.3f}\t  1.000%\t  1.000%\t     0.000\t        1\t"
                         f"[{';'.join(tn[t] for t in o['outputs'])}]:{o['index']}")
        log = "\n".join(lines) + "\n"
        prof_file = tmp_path / "benchmark_model_ops.txt"
        prof_file.write_text(log)
        tool = "benchmark_model"
    device = {"trtexec": "jetson_orin_nano_8gb", "benchmark_model": "pixel8pro_tensorg3"}[tool]
    r = CliRunner().invoke(cli, ["bench", "--artifact", str(art), "--ops", "--ops-from", str(prof_file),
                                 "--profile", device])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "op profile record" in r.output, r.output
    got = json.loads(Path(f"{art}.{prof_file.stem}.ops.json").read_text())
    assert got["mapped"] and got["runtime"] == tool, got.get("unmapped_reason")
    assert convs <= set(got["by_layer"]), convs - set(got["by_layer"])
    assert {d["stage"] for d in got["by_stage"]} >= {"encoder", "decoder", "head:segm", "head:depth"}
    assert read_tool_profile(prof_file)[0] == tool
    # check reads it: the device's estimate takes per-class scales from it (the profile's budgets moved to
    # this artifact's size, as a user's own profile would be)
    import dataclasses

    from edgehydra.devices.profile import load_profile, to_toml

    p = load_profile(device)
    mine = tmp_path / f"{device}.toml"
    mine.write_text(to_toml(dataclasses.replace(p, budgets=dataclasses.replace(p.budgets, input_size=tuple(
        json.loads(Path(str(art) + ".manifest.json").read_text())["size"])))))
    r = CliRunner().invoke(cli, ["check", "--run", str(run), "--device", str(mine), "--json"])
    lat = next(x for x in json.loads(r.output)[0]["rows"] if x["budget"] == "latency p50")
    assert "per-class scales from 1 per-op profile(s) of the device" in lat["note"], lat["note"]
    # the same table printed by the tool on the stand-in device: bench --ops --device runs it with its
    # profiling flags and reads stdout (a profiling run is not recorded as a latency measurement)
    dev = tmp_path / "device"
    (dev / "bin").mkdir(parents=True)
    (dev / "out.txt").write_text(log)
    exe = dev / "bin" / tool
    exe.write_text(f"#!/bin/sh\necho \"$@\" > {dev}/args.txt\ncat {dev}/out.txt\n")
    exe.chmod(0o755)
    from edgehydra.devices.bench import BenchRequest
    from edgehydra.exporters.runtime import read_manifest

    res = remote.remote_bench(remote.LocalTransport(dev), art, BenchRequest(binary=str(exe), runs=5, threads=4),
                              manifest=read_manifest(art), op_profile=True)
    flags = (dev / "args.txt").read_text()
    assert ("--enable_op_profiling=true" if tool == "benchmark_model" else "--dumpProfile") in flags
    dp = profile_from_rows(art, res["tool"], res["rows"], ("segm", "depth"), device=res["device"])
    assert dp["mapped"] and dp["by_layer"].keys() == got["by_layer"].keys()
    assert abs(dp["total_ms"] - got["total_ms"]) < 1e-3 * len(dp["rows"])  # the log prints 3-4 decimals
    # a profile of another format is refused in one line
    other = tmp_path / ("benchmark_model_ops.txt" if tool == "trtexec" else "trt_profile.json")
    other.write_text((REAL / ("benchmark_model_ops_0.txt" if tool == "trtexec" else "trtexec_layers_1.txt")).read_text())
    r = CliRunner().invoke(cli, ["bench", "--artifact", str(art), "--ops", "--ops-from", str(other)])
    assert r.exit_code == 2 and "profiled by" in r.output, r.output
    if tool == "trtexec":  # a profile of another network (a real Jetson log) is refused in one line and kept nowhere
        foreign = tmp_path / "foreign_trt.txt"
        foreign.write_text((REAL / "trtexec_layers_1.txt").read_text())
        records = sorted((run / "measurements" / "ops").glob("*.json"))
        r = CliRunner().invoke(cli, ["bench", "--artifact", str(art), "--ops", "--ops-from", str(foreign),
                                     "--profile", device])
        assert r.exit_code == 2 and "rows name a layer of" in r.output, r.output
        assert not Path(f"{art}.foreign_trt.ops.json").exists()
        assert sorted((run / "measurements" / "ops").glob("*.json")) == records
