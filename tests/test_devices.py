import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgehydra import create_model
from edgehydra.commands import cli
from edgehydra.devices import remote
from edgehydra.devices.bench import BenchRequest
from edgehydra.devices.estimate import estimate_rows, fit_efficiencies, layer_rows, mean_abs_rel_err
from edgehydra.devices.profile import list_profiles, load_profile, load_profile_file, parse_profile, to_toml
from edgehydra.errors import BadInputError, EdgeHydraError

FIX = Path(__file__).parent / "fixtures"
REQUIRED = {"host_cpu", "rtx4090", "h100", "jetson_orin_nano_8gb", "jetson_agx_orin", "iphone15pro_ane",
            "snapdragon8gen3_hexagon", "pixel8pro_tensorg3", "raspberrypi5"}


def test_every_shipped_profile_validates_and_cites_sources():
    profs = list_profiles()
    assert REQUIRED <= set(profs)
    for name, path in profs.items():
        p = load_profile(name)
        assert p.int8_tops > 0 and p.bandwidth_gbs > 0 and p.budgets.latency_p50_ms > 0
        text = path.read_text()
        for key in ("int8_tops", "fp16_tflops", "bandwidth_gbs"):
            line = next(l for l in text.splitlines() if l.startswith(key))
            assert "#" in line, f"{name}: {key} does not cite its source"


def _base():
    return json.loads(json.dumps(load_profile("raspberrypi5").to_dict()))


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(speed=3), "unknown key 'speed'"),
    (lambda d: d.pop("int8_tops"), "missing field 'int8_tops'"),
    (lambda d: d["budgets"].update(latency_p50_ms="33 ms"), r"latency_p50_ms must be a number in ms, got '33 ms'"),
    (lambda d: d.update(kind="tpu"), "kind = 'tpu'; allowed: gpu, jetson, phone-npu, cpu"),
    (lambda d: d.update(compute_efficiency=1.5), r"compute_efficiency must be in \(0, 1\]"),
    (lambda d: d["budgets"].update(input_size=[10, 10]), "input_size must be"),
    (lambda d: d["budgets"].update(latency_p90_ms=1.0), "latency_p90_ms .* is below latency_p50_ms"),
])
def test_bad_profiles_say_which_key_and_where(mutate, match):
    d = _base()
    d.pop("source")
    d.pop("efficiency")
    mutate(d)
    with pytest.raises(BadInputError, match=match) as e:
        parse_profile(d, "my.toml")
    assert "my.toml" in str(e.value)


def test_profile_toml_round_trip_and_invalid_toml(tmp_path):
    p = load_profile("jetson_orin_nano_8gb")
    f = tmp_path / "mine.toml"
    f.write_text(to_toml(p))
    q = load_profile_file(f)
    assert q.to_dict() | {"source": ""} == p.to_dict() | {"source": ""}
    f.write_text("name = ")
    with pytest.raises(BadInputError, match="invalid TOML"):
        load_profile_file(f)


def test_estimator_matches_hand_computed_roofline():
    import dataclasses

    from edgehydra.accounting import LayerCost

    p = dataclasses.replace(load_profile("raspberrypi5"), int8_tops=2.0, bandwidth_gbs=10.0, compute_efficiency=0.5,
                            bandwidth_efficiency=0.5, overhead_ms=1.0, efficiency=())
    rows = [LayerCost("a", "Conv2d", (1,), macs=10**9, other_ops=0, params=0, weight_bytes=0, act_in_bytes=10**6, act_out_bytes=0),
            LayerCost("b", "MaxPool2d", (1,), macs=0, other_ops=0, params=0, weight_bytes=0, act_in_bytes=5 * 10**7, act_out_bytes=0)]
    e = estimate_rows(rows, p, "int8")
    # a: 1e9 MAC / (2e12/2 MAC/s * 0.5) = 2 ms compute; 1e6 B / (10e9 * 0.5) = 0.2 ms -> compute-bound 2 ms
    # b: 5e7 B / 5e9 B/s = 10 ms memory-bound; total 2 + 10 + 1 overhead
    assert [l["bound"] for l in e["layers"]] == ["compute", "memory"]
    assert math.isclose(e["layers"][0]["ms"], 2.0) and math.isclose(e["layers"][1]["ms"], 10.0)
    assert math.isclose(e["total_ms"], 13.0)


def test_calibration_reduces_error_on_synthetic_measurements():
    import dataclasses

    m = create_model("hydranet_tiny")
    truth = dataclasses.replace(load_profile("raspberrypi5"), efficiency=(("fp32", 0.6), ("int8", 0.15)),
                                bandwidth_efficiency=0.3, overhead_ms=2.0)
    meas = []
    for prec in ("fp32", "int8"):
        for size in ((64, 96), (128, 192)):
            t = estimate_rows(layer_rows(m, size, prec), truth, prec)["total_ms"]
            meas.append({"precision": prec, "size": list(size), "p50_ms": t})
    start = load_profile("raspberrypi5")
    fitted, rep = fit_efficiencies(m, start, meas)
    assert mean_abs_rel_err(rep["after"]) < 0.05 < mean_abs_rel_err(rep["before"])


def test_parsers_on_tool_output():
    b = remote.parse_benchmark_model((FIX / "benchmark_model_android.txt").read_text())
    assert b["runs"] == 50 and math.isclose(b["mean_ms"], 20.3917) and math.isclose(b["min_ms"], 19.711)
    # the "footprint delta" line is growth since start, not a peak: it is not reported as one
    assert "peak_memory_mb" not in b and b["memory_delta_mb"] == 15.7266 and "avg" in b["p50_from"]
    q = remote.parse_benchmark_model((FIX / "benchmark_model_qnn.txt").read_text())
    assert q["peak_memory_mb"] == 41.2383
    assert q["delegate"] == {"name": "TfLiteQnnDelegate", "nodes": 118, "of": 121, "cpu_fallback_nodes": 3}
    e = remote.parse_executor_runner((FIX / "executor_runner.txt").read_text())
    assert e["runs"] == 50 and math.isclose(e["mean_ms"], 1010.321 / 50)
    t = remote.parse_trtexec((FIX / "trtexec_orin.txt").read_text())
    assert t["p50_ms"] == 4.68018 and t["p99_ms"] == 5.10254 and t["throughput_qps"] == 212.437
    assert t["gpu_compute_p50_ms"] == 4.32617
    with pytest.raises(EdgeHydraError, match="no timing line"):
        remote.parse_benchmark_model("garbage")


def _fake_device(root: Path, tool: str, fixture: str) -> str:
    """A benchmark binary on the stand-in device that prints a real output sample."""
    exe = root / "bin" / tool
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text(f"#!/bin/sh\necho \"$@\" > {root}/args.txt\ncat {FIX / fixture}\n")
    exe.chmod(0o755)
    return str(exe)


def test_remote_orchestration_quotes_and_cleans(tmp_path):
    dev = tmp_path / "device"
    exe = _fake_device(dev, "benchmark_model", "benchmark_model_android.txt")
    art = tmp_path / "evil name; touch PWNED.tflite"
    art.write_bytes(b"tflite")
    t = remote.LocalTransport(dev)
    r = remote.remote_bench(t, art, BenchRequest(binary=exe, runs=50, threads=4))
    assert r["runs"] == 50 and r["tool"] == "benchmark_model"
    assert not (dev / "PWNED.tflite").exists() and not list(tmp_path.rglob("PWNED*"))
    args = (dev / "args.txt").read_text()
    assert "--graph=/tmp/edgehydra-" in args and "evil name; touch PWNED.tflite" in args
    assert [c[0] for c in t.calls][:2] == ["shell", "push"] and t.calls[-1][0] == "rmdir"
    assert not list((dev / "tmp").glob("edgehydra-*")), "work folder left behind on the device"


def test_remote_device_that_disappears_is_reported(tmp_path):
    dev = tmp_path / "device"
    exe = _fake_device(dev, "executor_runner", "executor_runner.txt")
    art = tmp_path / "m.pte"
    art.write_bytes(b"pte")
    t = remote.LocalTransport(dev, gone_after=2)
    with pytest.raises(remote.DeviceGone, match="disappeared"):
        remote.remote_bench(t, art, BenchRequest(binary=exe, threads=4))


def test_remote_timeout_and_missing_binary(tmp_path):
    dev = tmp_path / "device"
    slow = dev / "bin" / "trtexec"
    slow.parent.mkdir(parents=True)
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    art = tmp_path / "m.onnx"
    art.write_bytes(b"onnx")
    t = remote.LocalTransport(dev)
    with pytest.raises(EdgeHydraError, match="timed out"):
        remote.remote_bench(t, art, BenchRequest(binary=str(slow), threads=4), timeout=0.5)
    assert not list((dev / "tmp").glob("edgehydra-*"))
    with pytest.raises(EdgeHydraError, match="none of benchmark_model found"):
        remote.remote_bench(remote.LocalTransport(dev), _touch(tmp_path / "x.tflite"))


def _touch(p):
    p.write_bytes(b"x")
    return p


def test_adb_and_ssh_quote_their_commands():
    a = remote.AdbTransport("SERIAL1")
    cmd = a.quote(["benchmark_model", "--graph=/data/local/tmp/a b;rm -rf /.tflite"])
    assert cmd == "benchmark_model '--graph=/data/local/tmp/a b;rm -rf /.tflite'"
    with pytest.raises(BadInputError, match="adb:SERIAL"):
        remote.parse_device("usb:3")


def test_host_bench_runs_a_real_artifact(tiny_run, tmp_path):
    from edgehydra.devices.bench import bench
    from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run

    res = {r.target: r for r in export_run(tmp_path, ["onnx", "executorch"], ["fp32"], source=ExportSource(run=tiny_run),
                                           settings=ExportSettings(eval_frames=1))}
    b = bench(res["onnx"].path, BenchRequest(warmup=1, runs=5, threads=1))
    assert b["runs"] == 5 and 0 < b["min_ms"] <= b["p50_ms"] <= b["p90_ms"] <= b["p99_ms"]
    assert b["runtime"].startswith("onnxruntime") and Path(b["json"]).is_file()
    # the runtime gets the threads asked for (ExecuTorch's pool starts with one per core), and torch,
    # which only wraps the tensors, keeps one thread so that its idle workers do not spin beside it
    for threads in (1, 2):
        b = bench(res["executorch"].path, BenchRequest(warmup=1, runs=3, threads=threads), write=False)
        assert b["runtime"] == f"executorch[{threads} threads]" and b["torch_threads"] == 1
    # running a .pte keeps ExecuTorch's threadpool start-up log (cpuinfo, ARM sysfs files) out of stderr
    code = ("import numpy as np; from edgehydra.exporters.runtime import open_artifact; "
            f"a = open_artifact({str(res['executorch'].path)!r}); "
            "print(len(a.runner(np.zeros(a.manifest['input']['shape'], np.float32))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "2", p.stderr
    assert "cpuinfo" not in p.stderr
    r = CliRunner().invoke(cli, ["bench", "--artifact", str(tmp_path / "nope.pte")])
    assert r.exit_code == 1 and "artifact not found" in r.output


def test_check_exit_codes(tiny_run, tmp_path):
    import shutil

    from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run

    export_run(tiny_run / "export", ["onnx"], ["fp32", "int8"], source=ExportSource(run=tiny_run),
               settings=ExportSettings(eval_frames=2))
    lenient = tmp_path / "lenient.toml"
    import dataclasses

    p = dataclasses.replace(load_profile("host_cpu"), format="onnx")  # onnx exports in seconds, a .pte lowers in tens
    at_run_size = dataclasses.replace(p.budgets, input_size=(64, 96))  # the tiny run's artifacts are 64x96
    b = dataclasses.replace(at_run_size, latency_p50_ms=1e4, latency_p90_ms=1e4, max_gmacs=100, max_artifact_mb=100,
                            max_peak_memory_mb=1e5, min_miou=0.0, max_depth_rmse=100, max_abs_rel=100)
    lenient.write_text(to_toml(dataclasses.replace(p, budgets=b, name="lenient")))
    r = CliRunner().invoke(cli, ["check", "--run", str(tiny_run), "--device", str(lenient)])
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output
    # a normals budget (optional, TOML round trip) on a model without a normals head is a failed row, said so
    normals = tmp_path / "normals.toml"
    normals.write_text(to_toml(dataclasses.replace(p, budgets=dataclasses.replace(b, max_normals_median_deg=30.0),
                                                   name="lenient")))
    assert load_profile(str(normals)).budgets.max_normals_median_deg == 30.0
    r = CliRunner().invoke(cli, ["check", "--run", str(tiny_run), "--device", str(normals), "--json"])
    row = next(x for x in json.loads(r.output)[0]["rows"] if x["budget"] == "normals median angle")
    assert r.exit_code == 1 and not row["pass"] and row["note"] == "the model has no normals head"
    # the shipped host_cpu budgets 240x320, where the run has no artifact: not judged, exit 1
    r = CliRunner().invoke(cli, ["check", "--run", str(tiny_run), "--device", "host_cpu", "--json"])
    assert r.exit_code == 1 and json.loads(r.output)[0]["verdict"] == "NOT JUDGED"
    # a run with a calibrated host profile (the demo writes one): `check --device host_cpu` uses it; at the
    # run's size the tiny model meets latency on the host but not the 30 % mIoU budget: a joint budget fails
    (tiny_run / "devices").mkdir(exist_ok=True)
    cal_profile = dataclasses.replace(p, budgets=at_run_size)
    (tiny_run / "devices" / "host_cpu.toml").write_text(to_toml(cal_profile))
    try:
        r = CliRunner().invoke(cli, ["check", "--run", str(tiny_run), "--device", "host_cpu", "--json"])
        assert r.exit_code == 1
        res = json.loads(r.output)
        fails = {row["budget"] for row in res[0]["rows"] if not row["pass"]}
        assert "mIoU" in fails and "calibrated" in res[0]["profile_note"]
        assert res[0]["int8_vs_fp16"]["int8_ms"] > 0
        (tiny_run / "devices" / "host_cpu.toml").write_text(to_toml(dataclasses.replace(cal_profile, overhead_ms=5e4)))
        r = CliRunner().invoke(cli, ["check", "--run", str(tiny_run), "--device", "host_cpu", "--json"])
        cal = json.loads(r.output)[0]
        assert cal["estimated_ms"] > 5e4 > res[0]["estimated_ms"]
    finally:
        shutil.rmtree(tiny_run / "devices")
    shutil.rmtree(tiny_run / "export")



def test_devices_table_never_cuts_a_profile_name():
    """Piped output (rich assumes 80 columns) keeps every name a user must type back whole."""
    from edgehydra.devices.profile import list_profiles

    r = CliRunner().invoke(cli, ["devices"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    cells = {c.strip() for line in r.output.splitlines() for c in line.split("│")}
    assert set(list_profiles()) <= cells and "…" not in r.output


def test_remote_command_follows_the_artifact_and_the_profile():
    """The tool's flags measure what the profile describes: its accelerator, the artifact's precision."""
    from edgehydra.devices.profile import load_profile
    from edgehydra.errors import BadInputError

    plan = lambda suffix, man, dev: remote.remote_plan(suffix, man, load_profile(dev) if dev else None)  # noqa: E731
    assert plan(".tflite", {"precision": "int8"}, "snapdragon8gen3_hexagon")["flags"][0].startswith(
        "--external_delegate_path=libQnnTFLiteDelegate")
    assert plan(".tflite", {"precision": "int8"}, "pixel8pro_tensorg3")["flags"] == ["--use_nnapi=true"]
    assert plan(".tflite", {"precision": "int8"}, None)["flags"] == []
    s8 = {"precision": "int8", "facts": {"qdq_dtype": "int8"}}
    assert plan(".onnx", s8, "jetson_orin_nano_8gb")["flags"] == ["--int8", "--fp16"]
    assert plan(".onnx", {"precision": "fp32"}, "rtx4090")["flags"] == ["--fp16"]  # never --int8 on an fp32 ONNX
    assert plan(".onnx", {"precision": "fp32"}, None)["flags"] == []
    for unsigned in ("uint8", "u8s8"):  # TensorRT builds signed, zero-point-0 Q/DQ only
        with pytest.raises(BadInputError, match="--qdq int8"):
            plan(".onnx", {"precision": "int8", "facts": {"qdq_dtype": unsigned}}, "jetson_orin_nano_8gb")
    assert plan(".pte", {"facts": {"delegate": "xnnpack"}}, "raspberrypi5")["binaries"] == ["xnn_executor_runner"]


def test_sustained_pacing_counts_dropped_frames_with_a_fake_clock():
    """Calls of 25 ms, then (throttled) 50 ms, paced at 50 FPS (20 ms slots) for 9 s on a clock the test drives:
    a call that overruns its slot drops the frames whose slots passed; the throttle ratio compares the last
    window's median with the first's."""
    from edgehydra.devices import sustained as s

    now = [0.0]
    lat = iter([0.025] * 200 + [0.050] * 200)

    def clock():
        return now[0]

    def run():
        now[0] += next(lat)

    orig = s.time.sleep
    s.time.sleep = lambda d: now.__setitem__(0, now[0] + d)
    try:
        r = s.sustained(run, 9.0, fps=50, clock=clock)
    finally:
        s.time.sleep = orig
    # 200 calls x 25 ms = 5 s, then 80 calls x 50 ms = 4 s: 280 frames processed of 450 slots; the slots that
    # pass during the final call are not counted (the run ends), nor is one float-summed edge slot: 447..451
    assert r["calls"] in (280, 281) and 447 <= r["calls"] + r["dropped_frames"] <= 451
    assert r["first_window_p50_ms"] == pytest.approx(25.0) and r["last_window_p50_ms"] == pytest.approx(50.0)
    assert r["throttle_ratio"] == pytest.approx(2.0) and r["window_s"] == 3.0
    assert r["throughput_fps"] == pytest.approx(r["calls"] / 9.0, rel=0.01)
    assert s.parse_duration("2m") == 120 and s.parse_duration("60s") == 60 and s.parse_duration("1.5") == 1.5
    for bad in ("0s", "ten", "50ms"):
        with pytest.raises(ValueError):
            s.parse_duration(bad)


def test_sustained_bench_of_a_real_artifact_enters_the_run_and_check(tiny_run, tmp_path):
    import dataclasses

    from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run

    run = tmp_path / "r"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "measurements", "devices"))
    res = export_run(run / "export", ["onnx"], ["int8"], source=ExportSource(run=run),
                     settings=ExportSettings(eval_frames=1))
    art = res[0].path
    r = CliRunner().invoke(cli, ["bench", "--artifact", str(art), "--duration", "3s", "--fps", "20", "--warmup", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(Path(str(art) + ".sustained.json").read_text())
    assert 2.9 < out["duration_s"] < 4 and out["target_fps"] == 20 and out["calls"] + out["dropped_frames"] >= 55
    assert out["window_s"] == 1.0 and out["throttle_ratio"] > 0 and Path(out["plot"]).stat().st_size > 5000
    rec = [json.loads(f.read_text()) for f in (run / "measurements").glob("*_sustained.json")]
    assert len(rec) == 1 and rec[0]["sustained"]["target_fps"] == 20 and "timeline" not in rec[0]
    p = load_profile("host_cpu")
    b = dataclasses.replace(p.budgets, input_size=(64, 96), min_sustained_fps=15.0, latency_p50_ms=1e4,
                            latency_p90_ms=1e4, max_gmacs=100, max_artifact_mb=100, max_peak_memory_mb=1e5,
                            min_miou=0.0, max_depth_rmse=100, max_abs_rel=100)
    prof = tmp_path / "p.toml"
    prof.write_text(to_toml(dataclasses.replace(p, budgets=b, format="onnx")))
    r = CliRunner().invoke(cli, ["check", "--run", str(run), "--device", str(prof), "--json"])
    row = next(x for x in json.loads(r.output)[0]["rows"] if x["budget"] == "sustained FPS")
    assert row["value"] == pytest.approx(rec[0]["sustained"]["throughput_fps"]) and "3 s on host" in row["note"]
    r = CliRunner().invoke(cli, ["bench", "--artifact", str(art), "--fps", "30"])
    assert r.exit_code == 2 and "give --duration too" in r.output


def test_device_measurements_enter_the_run_and_check_judges_with_them(tiny_run, tmp_path):
    """A remote benchmark (the stand-in transport running trtexec's real output) and an ingested JSON each
    become a record of the run that `check` uses for the profile it was taken for, naming device, runner,
    size and accelerator; a device it was not taken for keeps its estimate."""
    import dataclasses

    from edgehydra.devices.bench import record_measurement
    from edgehydra.exporters.runtime import read_manifest
    from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run

    run = tmp_path / "r"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "measurements", "devices", "debug"))
    art = export_run(run / "export", ["onnx"], ["int8"], source=ExportSource(run=run),
                     settings=ExportSettings(eval_frames=1, options={"qdq": "int8"}))[0].path
    dev = tmp_path / "device"
    exe = _fake_device(dev, "trtexec", "trtexec_orin.txt")
    nano = load_profile("jetson_orin_nano_8gb")
    res = remote.remote_bench(remote.LocalTransport(dev), art, BenchRequest(binary=exe, runs=20, threads=4),
                              manifest=read_manifest(art), profile=nano)
    res.update(remote.artifact_facts(art), runner=res["tool"], profile=nano.name)
    assert record_measurement(art, res) is not None

    def judged(profile):
        b = dataclasses.replace(profile.budgets, input_size=(64, 96))  # the shipped budgets name 480x640
        p = tmp_path / f"{profile.name}.toml"
        p.write_text(to_toml(dataclasses.replace(profile, budgets=b)))
        r = CliRunner().invoke(cli, ["check", "--run", str(run), "--device", str(p), "--json"])
        return next(x for x in json.loads(r.output)[0]["rows"] if x["budget"] == "latency p50")

    row = judged(nano)
    assert row["value"] == pytest.approx(res["p50_ms"])
    assert row["note"].startswith(f"measured on local:{dev} by trtexec at 64x96 on TensorRT int8"), row["note"]
    agx = load_profile("jetson_agx_orin")
    assert judged(agx)["note"].startswith("estimated at 64x96")
    j = tmp_path / "agx.json"
    j.write_text(json.dumps({"p50_ms": 3.5, "p90_ms": 4.0, "runs": 30, "device": "agx-lab-2", "tool": "trtexec",
                             "artifact": art.name}))
    r = CliRunner().invoke(cli, ["bench", "--ingest", str(j), "--artifact", str(art), "--profile", agx.name])
    assert r.exit_code == 0, r.output
    row = judged(agx)
    assert row["value"] == 3.5 and row["note"].startswith("measured on agx-lab-2 by trtexec at 64x96"), row
    assert judged(nano)["value"] == pytest.approx(res["p50_ms"])  # each device keeps its own measurement
    # a sustained run on the device (trtexec --duration, its real output): its running averages are the timeline,
    # its summary over every call the percentiles; the record carries it and check finds it for that profile
    from edgehydra.devices.check import sustained_for
    from edgehydra.run import Run

    orin = tmp_path / "orin"
    exe = _fake_device(orin, "trtexec", "real/trtexec_0.txt")  # jetson-agx-orin-devkit, JetPack 6
    sus = remote.remote_sustained(remote.LocalTransport(orin), art,
                                  BenchRequest(binary=exe, duration_s=60, runs=20, threads=4),
                                  manifest=read_manifest(art), profile=nano)
    assert "--duration=60" in (orin / "args.txt").read_text()
    assert sus["windows"] == 4 and sus["p50_ms"] == pytest.approx(4.83752) and sus["p99_ms"] == pytest.approx(4.85547)
    host_ms = (4.83948, 4.83599, 4.83513, 4.8364)  # its four "Average on 10 runs" lines
    assert sus["throughput_fps"] == pytest.approx(40 / sum(10 * x / 1e3 for x in host_ms))
    sus.update(remote.artifact_facts(art), runner=sus["tool"], profile=nano.name)
    assert record_measurement(art, sus) is not None
    got = sustained_for(Run(run), nano, {"sha256": sus["sha256"], "size": sus["size"]})
    assert got and got["sustained"]["throughput_fps"] == pytest.approx(sus["throughput_fps"])
    # an artifact never measured on the device is estimated from the profile fitted to what the run did measure
    export_run(run / "export", ["onnx"], ["fp32"], source=ExportSource(run=run), settings=ExportSettings(eval_frames=1))
    fp32_nano = dataclasses.replace(nano, precision="fp32")
    row = judged(fp32_nano)
    assert row["note"].startswith("estimated at 64x96") and f"fitted to 1 measurement(s) of this run on local:{dev}" \
        in row["note"], row["note"]


REAL = FIX / "real"


def _real(name):
    return (REAL / name).read_text()


def test_parsers_on_real_tool_output():
    """Verbatim output of the real tools, from public issues and docs (each file's first line names it):
    every timing the tools print is read, and output that carries none is refused saying why."""
    from edgehydra.devices.remote import _delegations, parse_benchmark_model, parse_executor_runner, parse_trtexec

    for f in sorted(REAL.glob("trtexec_[0-9]*.txt")):  # Jetson AGX Orin (JetPack 6), Xavier (TensorRT 8.4/8.5), a desktop
        r = parse_trtexec(f.read_text())
        assert r["p50_ms"] > 0 and r["min_ms"] <= r["p50_ms"] <= r["max_ms"], f.name
    assert parse_trtexec(_real("trtexec_0.txt"))["p90_ms"] == pytest.approx(4.84772)  # jetson-agx-orin-devkit
    assert "p90_ms" not in parse_trtexec(_real("trtexec_3.txt"))  # TensorRT 8.4 prints no percentile(90%)
    assert parse_trtexec(_real("trtexec_2.txt"))["gpu_compute_p50_ms"] == pytest.approx(30.333)

    ti = parse_benchmark_model(_real("benchmark_model_2.txt"))  # TI doc: avg=1.24027e+06 us; count=1 warm-up first
    assert ti["runs"] == 50 and ti["p50_ms"] == pytest.approx(1239.807) and ti["mean_ms"] == pytest.approx(1240.27)
    assert parse_benchmark_model(_real("benchmark_model_4.txt"))["p50_from"].startswith("avg")  # older: no median
    gpu = parse_benchmark_model(_real("benchmark_model_1.txt"))  # --use_gpu and --use_nnapi: GPU took it all
    assert gpu["p50_ms"] == pytest.approx(307.968) and gpu["delegate"]["name"] == "TfLiteGpuDelegateV2"
    assert {d["name"]: d["graph"] for d in gpu["delegates"]}["NNAPI"] == "none on the delegate (all on CPU)"
    assert parse_benchmark_model(_real("benchmark_model_3.txt"))["peak_memory_mb"] == pytest.approx(93.2383)
    vx = parse_benchmark_model(_real("benchmark_model_delegate_3.txt"))["delegate"]  # a name with a space
    assert vx["name"] == "Vx Delegate" and vx["cpu_fallback_nodes"] == 0 and vx["graph"] == "all on the delegate"
    qnn = _delegations(_real("benchmark_model_delegate_4.txt"))  # tensorflow#83344: QNN delegated nothing
    assert qnn[0] == {"name": "TfLiteQnnDelegate", "nodes": 0, "of": 31, "cpu_fallback_nodes": 31}
    old = _delegations(_real("benchmark_model_delegate_2.txt"))  # older builds: no "out of M"
    assert old == [{"name": "TfLiteNnapiDelegate", "nodes": 31}]
    part = _delegations(_real("benchmark_model_delegate_6.txt"))  # only the summary line
    assert part == [{"name": "NNAPI", "graph": "partly on the delegate", "delegate_kernels": 11}]

    for f in ("executor_runner_0.txt", "executor_runner_1.txt", "executor_runner_2.txt", "executor_runner_3.txt"):
        assert parse_executor_runner(_real(f))["p50_ms"] > 0, f
    with pytest.raises(EdgeHydraError, match="an old executor_runner"):
        parse_executor_runner(_real("executor_runner_4.txt"))  # executorch#1231
    with pytest.raises(EdgeHydraError, match="built without ExecuTorch logging"):
        parse_executor_runner(_real("executor_runner_5.txt"))  # executorch#4005
    many = "\n".join(f"I executorch:executor_runner.cpp:880] Iteration {i + 1} of 5: {t} ms"
                     for i, t in enumerate((40.0, 10.0, 12.0, 11.0, 30.0)))
    r = parse_executor_runner(many + "\nI executorch:executor_runner.cpp:889] Model executed successfully 5 time(s) "
                                     "in 103.0 ms.")
    assert r["p50_ms"] == 11.5 and r["first_call_ms"] == 40.0 and r["mean_ms"] == pytest.approx(20.6)


def test_per_op_profile_parsers_on_real_tool_output():
    """The device tools' per-layer tables as they really print them (tests/fixtures/real/*, each with its
    source): trtexec's --exportProfile JSON, its --dumpProfile table in the TensorRT 8 layout (Layer first,
    with and without a median column) and the TensorRT 10 one (Layer last), and benchmark_model's op
    profiling in the old TFLite and the new LiteRT layout. Where the sample prints its own total, the rows
    add up to it within the table's rounding."""
    from edgehydra.devices.toolprofile import read_tool_profile

    tool, rows = read_tool_profile(REAL / "trtexec_layers.json")
    data = json.loads((REAL / "trtexec_layers.json").read_text())
    assert tool == "trtexec" and len(rows) == len(data) - 1 and "count" in data[0]
    pwn = next(r for r in rows if r["event"] == "PWN(PWN(/Sub), PWN(/Div))")
    assert pwn["ms"] == 0.023296  # medianMs, not averageMs (0.0237058)

    _, rows = read_tool_profile(REAL / "trtexec_layers_0.txt")  # TRT 8.0: no median column -> the average
    assert len(rows) == 6 and rows[1] == {"event": "Conv_0 + Relu_1", "ms": 0.1569}
    _, rows = read_tool_profile(REAL / "trtexec_layers_1.txt")  # TRT 10: Layer last
    assert len(rows) == 6 and rows[1]["event"].startswith("node_of_gpu_0/conv1_1 + ") and rows[1]["ms"] == 0.0225
    _, rows = read_tool_profile(REAL / "trtexec_layers_2.txt")  # Total row dropped; the rest add up to it
    assert len(rows) == 4 and abs(sum(r["ms"] for r in rows) - 1.1033) <= 4 * 0.00005 + 1e-12
    _, rows = read_tool_profile(REAL / "trtexec_layers_3.txt")
    assert len(rows) == 28 and rows[0]["event"] == "[HostToDeviceCopy 0]"

    tool, rows = read_tool_profile(REAL / "benchmark_model_ops_0.txt")  # "Number of nodes executed: 31"
    assert tool == "benchmark_model" and len(rows) == 31 and rows[0]["node_type"] == "CONV_2D"
    assert abs(sum(r["ms"] for r in rows) - 79.449) < 31 * 0.0005  # [avg ms] rows vs the table's own sum
    _, rows = read_tool_profile(REAL / "benchmark_model_ops_1.txt")  # LiteRT: Delegate/<XNNPACK op>:k
    per_call = [r for r in rows if not r["event"].startswith("AllocateTensors")]
    assert rows[2]["event"] == "Delegate/Static Reshape (NC):0"
    assert abs(sum(r["ms"] for r in per_call) - 0.411071) < 4 * 0.0005  # "Timings ... avg=411.071" us
    _, rows = read_tool_profile(REAL / "benchmark_model_ops_2.txt")
    assert len(rows) == 9 and rows[-1]["event"] == "[StatefulPartitionedCall:0]:95"
    with pytest.raises(BadInputError, match="not a per-op profile"):
        read_tool_profile(REAL / "trtexec_0.txt")


def test_sustained_run_on_a_device_tool_started_per_window(tmp_path):
    """benchmark_model has no duration of its own: it is run back to back, one window per invocation, on the
    stand-in device; a device that slows down call after call shows it in the last/first window ratio."""
    dev = tmp_path / "device"
    exe = dev / "bin" / "benchmark_model"
    exe.parent.mkdir(parents=True)
    # each invocation 200 us slower than the one before: 1.2, 1.4, ... ms
    exe.write_text(f"#!/bin/sh\nn=$(cat {dev}/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {dev}/n\n"
                   "a=$((1000 + n*200))\necho \"Timings (microseconds): count=20 first=$a curr=$a min=$a max=$a avg=$a std=0\"\n")
    exe.chmod(0o755)
    art = tmp_path / "m.tflite"
    art.write_bytes(b"tflite")
    ticks = iter(range(0, 1000, 3))  # each look at the clock: 3 s later
    res = remote.remote_sustained(remote.LocalTransport(dev), art,
                                  BenchRequest(binary=str(exe), duration_s=30, runs=20, threads=4),
                                  clock=lambda: float(next(ticks)))
    # windows start at 3, 6, ..., 27 s; the run ends at 33 s; first window: t < 10 s, last: t >= 23 s
    assert res["windows"] == 9 and res["calls"] == 180 and res["duration_s"] == 33
    assert res["first_window_p50_ms"] == pytest.approx(1.4) and res["last_window_p50_ms"] == pytest.approx(2.7)
    assert res["throttle_ratio"] == pytest.approx(2.7 / 1.4)
    assert res["p99_ms"] is None  # window medians give no per-call tail
    assert res["throughput_fps"] == pytest.approx(180 / sum(20 * (1.0 + 0.2 * n) / 1e3 for n in range(1, 10)))
    assert not list((dev / "tmp").glob("edgehydra-*"))
    from edgehydra.devices.sustained import plot

    assert plot(res, tmp_path / "s.png", "stand-in").stat().st_size > 0


def test_class_scales_from_a_device_op_profile_reproduce_its_classes():
    """fit_class_scales: each operator class the device's per-op profile times is scaled so the estimate of
    that class equals the measurement (here depthwise 3x slower and convolutions 2x faster than the
    roofline); a class it does not time keeps its estimate; the scales survive a TOML round trip."""
    from edgehydra.devices.estimate import estimate, fit_class_scales

    m = create_model("hydranet_tiny").eval()
    p = load_profile("pixel8pro_tensorg3")
    size = (64, 96)
    base = estimate(m, p, "int8", size)
    by = {}
    for r in layer_rows(m, size, "int8"):
        by.setdefault(r.op_class, []).append(r.name)
    est_cls = {}
    for lt, r in zip(base["layers"], layer_rows(m, size, "int8")):
        est_cls[r.op_class] = est_cls.get(r.op_class, 0.0) + lt["ms"]
    assert {"conv", "depthwise conv", "add", "max-pool", "upsample"} <= set(est_cls)
    meas = {"depthwise conv": 3 * est_cls["depthwise conv"], "conv": 0.5 * est_cls["conv"],
            "reformat (layout copy)": 0.01}
    prof = {"size": list(size), "by_class": [{"op_class": k, "ms": v} for k, v in meas.items()]}
    fitted, rep = fit_class_scales(m, p, prof, "int8")
    assert fitted.scale_of("int8", "depthwise conv") == pytest.approx(3.0)
    assert fitted.scale_of("int8", "conv") == pytest.approx(0.5)
    assert fitted.scale_of("int8", "add") == 1.0 and fitted.scale_of("fp16", "conv") == 1.0
    assert next(x for x in rep if x["op_class"] == "reformat (layout copy)")["note"] == "not in the model"
    after = estimate(m, fitted, "int8", size)
    want = base["total_ms"] - est_cls["depthwise conv"] - est_cls["conv"] + meas["depthwise conv"] + meas["conv"]
    assert after["total_ms"] == pytest.approx(want)
    from edgehydra.devices.profile import parse_profile
    import tomllib

    again = parse_profile(tomllib.loads(to_toml(fitted)), "round trip")
    assert again.class_scale == fitted.class_scale
