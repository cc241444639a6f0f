"""The mixed-precision search measured on this host in the runtime that ships: host_cpu_onnxruntime.

Each candidate layer's int8, float and W8A16 time comes from onnxruntime's own profiler on ONNX files built
from the programs, each checked candidate is built as an ONNX file and timed beside fp32 and all-int8, the
chosen one ships as the ONNX artifact (int16 QDQ where the recipe says W8A16), and `check` for that profile
judges it: estimated per layer at the precision its map says until this host measures that file, then on
the measurement (of that .onnx, not of the run's .pte, which host_cpu judges).
"""
from __future__ import annotations

import json

from edgehydra.devices.profile import shipped_dir

from tests.conftest import TINY_SIZE, activation_harmed_run

RMSE_BUDGET = 0.005  # m; int8 activations cost the harmed depth head ~0.027 m (tests/test_mixed.py)


def _cli(*args):
    from click.testing import CliRunner
    from edgehydra.commands import cli

    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def _host_profile(tmp_path, name: str):
    """The shipped host profile at the tiny model's size, with accuracy floors the tiny model can meet (its
    own relative budgets are given on the command line)."""
    text = (shipped_dir() / f"{name}.toml").read_text()
    for k, v in (("input_size", f"[{TINY_SIZE[0]}, {TINY_SIZE[1]}]"), ("min_miou", "0.0"),
                 ("max_depth_rmse", "100.0"), ("max_abs_rel", "100.0")):
        text = "\n".join(f"{k} = {v}" if ln.split("=")[0].strip() == k else ln for ln in text.splitlines())
    p = tmp_path / f"{name}.toml"
    p.write_text(text + "\n")
    return p


def test_onnxruntime_host_search_measures_every_precision_and_check_judges_the_shipped_onnx(tiny_run, tmp_path):
    run = activation_harmed_run(tiny_run, tmp_path)
    profile = _host_profile(tmp_path, "host_cpu_onnxruntime")
    out = _cli("sensitivity", "--run", run, "--device", profile, "--layers", "pre_depth,depth,fuse1", "--frames", "8",
               "--calib-frames", "8", "--max-miou-drop", "2", "--max-rmse-rise", str(RMSE_BUDGET), "--max-trials", "3",
               "--apply")
    rep = json.loads((run / "mixed" / "host_cpu_onnxruntime" / "front.json").read_text())
    assert rep["latency_source"] == "measured on this host (onnxruntime's profiler per node)", rep["latency_source"]
    rows = {r["layer"]: r for r in rep["layers"]}
    # every layer has a time at every precision the format builds, from onnxruntime's rows on that module
    for n in ("pre_depth", "depth", "fuse1"):
        assert rows[n]["int8_ms"] > 0 and rows[n]["float_ms"] > 0 and rows[n]["int16_ms"] > 0, rows[n]
    assert not any("half the int8 rate" in s for s in rep["notes"]), rep["notes"]  # measured, not assumed
    # the checked candidates were timed as ONNX files, interleaved with fp32 and all-int8
    t = rep["host_timing"]
    assert t["runtime"] == "onnx" and t["fp32"] > 0 and t["int8"] > 0, t
    c = rep["chosen"]
    assert c["measured_latency_ms"] == t["candidates"][c["name"]]
    # where this runtime ran FP32 faster than the chosen int8 assignment, the report says to ship fp32
    assert t.get("fp32_beats_chosen", False) == (t["fp32"] < c["measured_latency_ms"]), t
    assert any("ship the fp32 artifact" in n for n in rep["notes"]) == (t["fp32"] < c["measured_latency_ms"])
    # only int16 activations recover depth (float on depth still reads the int8 tensor): W8A16 whatever the timing
    assert "depth" in c["int16_layers"], c
    assert "check host_cpu_onnxruntime on onnx/hydranet_int8-mixed-host_cpu_onnxruntime_" in out, out
    assert ".onnx: PASS" in out and ".onnx (verified)" in out, out

    man = json.loads((run / "export" / "manifest.json").read_text())
    art = next(a for a in man["artifacts"] if a["target"] == "onnx" and a["variant"] == "mixed-host_cpu_onnxruntime")
    own = json.loads((run / "export" / (art["path"] + ".manifest.json")).read_text())
    prec = {r["layer"]: r["precision"] for r in own["precision_map"]["layers"] if r["op"] == "conv"}
    assert {n for n, p in prec.items() if p == "int16"} == {n for n in c["int16_layers"] if n in prec}
    assert {n for n, p in prec.items() if p == "fp32"} == {n for n in c["keep_float"] if n in prec}
    assert own["facts"]["opset"] == 21  # int16 QuantizeLinear / DequantizeLinear

    def latency_row():
        v = json.loads(_cli("check", "--run", run, "--device", profile, "--json"))[0]
        return next(r for r in v["rows"] if r["budget"] == "latency p50")

    # not measured yet: check estimates the artifact as it ships, its W8A16 layers at their own precision ...
    note = latency_row()["note"]
    assert note.startswith("estimated") and "per layer as its precision map says" in note and "at int16" in note, note
    # ... and once this host has measured that file, on the measurement
    _cli("bench", "--artifact", run / "export" / art["path"], "--runs", "5", "--warmup", "2")
    lat = latency_row()
    assert lat["note"].startswith("measured on host by onnxruntime"), lat


def test_litert_host_latency_is_measured_per_module_and_candidates_as_tflite_files(tiny_run, tmp_path):
    """host_cpu_litert's measurements, as the search takes them: the all-int8 program and the FP32 model
    converted to .tflite and each operator timed alone in LiteRT, every convolution and op module of the
    model with a time at both precisions; then a candidate (its program keeping segm float) converted and
    timed beside them."""
    import torch
    from edgehydra.calibration.calibset import select_calibration
    from edgehydra.devices.host_measure import Timing, layer_latency, time_candidates
    from edgehydra.calibration.mixed import Candidate
    from edgehydra.calibration.program import load_program
    from edgehydra.calibration.ptq import quantize_ptq
    from edgehydra.calibration.recipe import load_recipe

    from edgehydra.checkpoint import load_checkpoint
    from edgehydra.data import Resize
    from edgehydra.dataspec import open_split, run_data_settings

    model, _ = load_checkpoint(tiny_run / "fp32.pt")
    program = load_program(tiny_run / "ptq" / "program.pt2").module
    lat = layer_latency(model, "tflite", {"int8": program}, TINY_SIZE, runs=3, threads=1, keep_in=tmp_path)
    assert lat["source"] == "measured on this host (LiteRT, each operator timed alone)"
    units = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)} | set(model.op_units())
    for prec in ("int8", "float"):
        missing = sorted(n for n in units if not lat[prec].get(n, 0.0) > 0)
        assert not missing, (prec, missing)
    assert "int16" not in lat  # LiteRT builds no W8A16 here (exporters/tflite.py w8a16_note)

    ds = run_data_settings(tiny_run / "fp32.pt", None, TINY_SIZE)
    train = open_split(ds, "train", Resize(TINY_SIZE))
    q, _ = quantize_ptq(model, load_recipe(None).replace(keep_float=("segm",)), train, select_calibration(train, 8),
                        TINY_SIZE)
    cand = Candidate("segm float", ("segm",), {}, 0.0, 0.0)
    t = time_candidates(model, "tflite", [cand], {cand.key: q}, TINY_SIZE, tmp_path, Timing(rounds=3, threads=1))
    assert t["runtime"] == "tflite" and t["candidates"]["segm float"] > 0 and t["fp32"] > 0 and t["int8"] > 0, t
