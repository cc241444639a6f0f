"""Stage through the next stage: a run started from a brought checkpoint goes on from --run alone, and
`check` judges only the artifact that exists at a budget's size, with latency measured on it when the
run holds a measurement (tiny model, 64x96)."""
import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from edgehydra.commands import cli
from edgehydra.devices.profile import shipped_dir


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _profile_at(tmp_path, size):
    """host_cpu's budgets at another input size (same name, so this host's measurements count)."""
    text = (shipped_dir() / "host_cpu.toml").read_text().replace("input_size = [240, 320]", f"input_size = {list(size)}")
    f = tmp_path / "host_cpu.toml"
    f.write_text(text)
    return f


def test_run_started_from_a_brought_checkpoint(tiny_run, tmp_path):
    brought = tmp_path / "published.pt"  # a checkpoint from elsewhere: the run folder has no fp32.pt
    shutil.copy(tiny_run / "fp32.pt", brought)
    run = tmp_path / "q"
    r = invoke("ptq", "--checkpoint", brought, "--out", run, "--calib-frames", 4)
    assert r.exit_code == 0, r.output
    rec = json.loads((run / "run.json").read_text())
    assert rec["source"]["path"] == str(brought.resolve()) and rec["data"]["size"] == [64, 96]
    assert not (run / "fp32.pt").exists()
    # the record owns the program's hash and the model config (input size, mean/std, tasks, classes)
    from edgehydra._io import sha256_path

    assert rec["programs"]["ptq"]["sha256"] == sha256_path(run / "ptq" / "program.pt2")
    assert rec["model_config"]["tasks"] == ["segm", "depth"] and "mean" in rec["model_config"]

    r = invoke("export", "--run", run, "--target", "onnx")  # --run alone: checkpoint, data, program from the record
    assert r.exit_code == 0, r.output
    man = json.loads((run / "export" / "manifest.json").read_text())
    assert {(a["target"], a["precision"], tuple(a["size"])) for a in man["artifacts"]} == {
        ("onnx", "fp32", (64, 96)), ("onnx", "int8", (64, 96))}

    # the shipped host_cpu budgets 240x320: no artifact of that size, so no verdict about one
    r = invoke("check", "--run", run, "--device", "host_cpu", "--json")
    assert r.exit_code == 1
    res = json.loads(r.output)[0]
    assert res["verdict"] == "NOT JUDGED" and res["rows"] == []
    assert f"edgehydra export --run {run} --target executorch --size 240x320" in res["reason"]

    # a budget at the artifact's size is judged, its latency estimated and labelled so ...
    prof = _profile_at(tmp_path, (64, 96)).read_text().replace('format = "executorch"', 'format = "onnx"')
    (tmp_path / "host_cpu.toml").write_text(prof)
    r = invoke("check", "--run", run, "--device", tmp_path / "host_cpu.toml", "--json")
    res = json.loads(r.output)[0]
    assert res["verdict"] in ("PASS", "FAIL") and res["size"] == [64, 96] and res["precision"] == "int8"
    lat = res["rows"][0]
    assert res["latency_source"] == "estimated" and lat["note"].startswith("estimated at 64x96")
    assert all("at 64x96" in x["note"] for x in res["rows"] if x["budget"] in ("mIoU", "depth RMSE"))

    # ... until the run holds a measurement of that artifact on that device
    art = run / "export" / res["artifact"]
    r = invoke("bench", "--artifact", art, "--runs", 3, "--warmup", 1, "--verify")
    assert r.exit_code == 0, r.output
    assert "parity (program): ok" in r.output  # the export's own parity routine, against the PTQ program
    recs = list((run / "measurements").glob("*.json"))
    assert len(recs) == 1
    m = json.loads(recs[0].read_text())
    assert m["size"] == [64, 96] and m["sha256"] == res["artifact_sha256"] and m["precision"] == "int8"
    assert m["verification"]["parity_ok"] is True and m["verification"]["reference_kind"] == "program"
    # an artifact the run's manifest does not list (a copy beside it, with its own manifest) is timed, not recorded
    fake = art.with_name("hydranet_int8_64x96_copy.onnx")
    shutil.copy(art, fake)
    shutil.copy(str(art) + ".manifest.json", str(fake) + ".manifest.json")
    r = invoke("bench", "--artifact", fake, "--runs", 2, "--warmup", 0)
    assert r.exit_code == 0 and "was not added to the run" in " ".join(r.output.split()), r.output
    assert len(list((run / "measurements").glob("*.json"))) == 1
    for f in (fake, Path(str(fake) + ".manifest.json"), Path(str(fake) + ".bench.json")):
        f.unlink()
    res = json.loads(invoke("check", "--run", run, "--device", tmp_path / "host_cpu.toml", "--json").output)[0]
    assert res["latency_source"] == "measured" and res["measured_ms"] == m["p50_ms"]
    assert res["rows"][0]["note"] == f"measured on host by {m['runner']} at 64x96"

    # a program with a checkpoint it was not made from is refused, not exported under the wrong hash
    other = tmp_path / "other.pt"
    from edgehydra import create_model
    from edgehydra.checkpoint import save_checkpoint

    save_checkpoint(create_model("hydranet_tiny"), other)
    r = invoke("export", "--program", run / "ptq" / "program.pt2", "--checkpoint", other, "--target", "onnx",
               "--out", tmp_path / "x")
    assert r.exit_code == 2 and "was quantised from a checkpoint with sha256" in r.output
    # and a second source in the same run is refused
    r = invoke("ptq", "--checkpoint", other, "--out", run, "--calib-frames", 4)
    assert r.exit_code == 2 and "is another checkpoint: use a new --out" in r.output


def test_export_at_a_second_size_adds_to_the_run(tiny_run, tmp_path):
    from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run

    out = tmp_path / "export"
    export_run(out, ["onnx"], ["fp32"], source=ExportSource(run=tiny_run), settings=ExportSettings(eval_frames=2))
    export_run(out, ["onnx"], ["fp32"], source=ExportSource(run=tiny_run),
               settings=ExportSettings(size=(96, 128), eval_frames=2))
    man = json.loads((out / "manifest.json").read_text())
    assert sorted(a["path"] for a in man["artifacts"]) == ["onnx/hydranet_fp32_64x96.onnx", "onnx/hydranet_fp32_96x128.onnx"]
    a = {tuple(x["size"]): x for x in man["artifacts"]}
    assert a[(96, 128)]["metrics"]["frames"] == 2  # accuracy of that artifact, at its own size


def test_default_export_without_a_program_says_which_int8_rows_it_left_out(tiny_run, tmp_path):
    from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run

    run = tmp_path / "r"
    run.mkdir()
    shutil.copy(tiny_run / "fp32.pt", run / "fp32.pt")  # trained, never quantised
    res = {(r.target, r.precision): r for r in export_run(run / "export", ["onnx"], source=ExportSource(run=run),
                                                          settings=ExportSettings(eval_frames=2))}
    assert res[("onnx", "fp32")].status == "verified"
    assert res[("onnx", "int8")].status == "skipped" and "edgehydra ptq" in res[("onnx", "int8")].reason
    man = json.loads((run / "export" / "manifest.json").read_text())
    assert {(a["target"], a["precision"], a["status"]) for a in man["artifacts"]} == {
        ("onnx", "fp32", "verified"), ("onnx", "int8", "skipped")}
