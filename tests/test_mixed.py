"""Mixed precision under joint budgets (calibration/mixed*.py), end to end through export and check.

The tiny run's depth head is made harmful to quantise for depth only (conftest.weight_harmed_run): the
int8 depth head collapses to its bias, segmentation is untouched. The candidates include two of the
decoder's op modules (the last skip fusion, an upsampling). The device is an estimated profile (int8 5x faster than fp32 per layer), so keeping a layer
float always costs latency and the choice does not hang on timing noise.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import shutil

from tests.conftest import STAND_IN_NPU as PROFILE, TINY_SIZE, activation_harmed_run, weight_harmed_run

LAYERS = "pre_depth,depth,pre_segm,segm,fuse1,up2"  # the heads' convs and two of the decoder's op modules
RMSE_BUDGET = 0.005  # m; the int8 depth head of the harmed tiny model loses ~0.027 m (see the first test)


@pytest.fixture(scope="module")
def harmful_run(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    run = weight_harmed_run(tiny_run, root)
    (root / "npu.toml").write_text(PROFILE)
    return run, root / "npu.toml"


def _cli(*args):
    from click.testing import CliRunner

    from edgehydra.commands import cli

    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def _search(run, profile, *budget):
    _cli("sensitivity", "--run", run, "--device", profile, "--layers", LAYERS, "--frames", "8", "--calib-frames", "8",
         *budget)
    return json.loads((run / "mixed" / "edge_npu_test" / "front.json").read_text())


def _front(run, profile, *budget):
    """The single-process search with these budgets: the module's earlier one if it ran, else now."""
    f = run / "mixed" / "edge_npu_test" / "front.json"
    want = {budget[i].lstrip("-").replace("-", "_"): float(budget[i + 1])
            for i in range(0, len(budget), 2)}
    if f.is_file():
        have = json.loads(f.read_text())
        if {k: have["budgets"].get(k) for k in want} == want:
            return have
    return _search(run, profile, *budget)


def test_applied_assignment_ships_as_chosen(harmful_run):
    """`sensitivity --device D --apply` on a run that holds a PTQ *and* a QAT program and an all-int8 artifact
    (as the demo's run does): the search, then PTQ with the chosen recipe into its own program, export of
    exactly that program as its own artifact, and check of that artifact. Its precision map and the runtime's
    own per-operator kernels (ETDump) say the chosen layers run float and the rest int8; the all-int8 artifact
    and the run's programs are untouched (sha256); check names the mixed artifact. Then the same with --qat.
    (First in the file: the later tests read this front.)"""
    from edgehydra._io import sha256_path
    from edgehydra.calibration.program import load_program
    from edgehydra.calibration.quant_stages import QuantJob, ptq_run, qat_run
    from edgehydra.devices.opprofile import profile_pte
    from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run
    from edgehydra.train import TrainConfig

    run, profile = harmful_run
    ptq_run(run / "fp32.pt", run, QuantJob("w8a8", calib_frames=8))
    qat_run(run / "fp32.pt", run, TrainConfig(epochs=1, batch_size=8), QuantJob("w8a8", frames=16, calib_frames=8,
                                                                                val_limit=8))
    uniform = export_run(run / "export", ["executorch"], ["int8"], source=ExportSource(run=run),
                         settings=ExportSettings(eval_frames=8))[0]
    assert uniform.path.name == "hydranet_int8_64x96.pte" and uniform.manifest["source_program"]["stage"] == "qat"
    before = {f: sha256_path(f) for f in (uniform.path, run / "ptq" / "program.pt2", run / "qat" / "program.pt2")}

    out = _cli("sensitivity", "--run", run, "--device", profile, "--layers", LAYERS, "--frames", "8",
               "--calib-frames", "8", "--max-miou-drop", "2", "--max-rmse-rise", str(RMSE_BUDGET), "--apply")
    front = json.loads((run / "mixed" / "edge_npu_test" / "front.json").read_text())
    keep = set(front["chosen"]["keep_float"])
    assert "depth" in keep
    mixed = run / "export" / "executorch" / "hydranet_int8-mixed-edge_npu_test_64x96.pte"
    assert f"check edge_npu_test on executorch/{mixed.name}: PASS" in out, out
    # piped (CliRunner is not a terminal): the search's estimate before it starts, then a line per unit swept
    assert re.search(r"mixed search on edge_npu_test: 6 units float .* PTQ \+ evaluation runs at [\d.]+ s each .*"
                     r"--layers narrows", out), out
    assert all(f"per-layer accuracy: {k}/6" in out for k in range(1, 7)), out

    def shipped(stage):
        man = json.loads((run / "export" / "manifest.json").read_text())
        ints = {a["path"]: a for a in man["artifacts"] if a["target"] == "executorch" and a["precision"] == "int8"}
        assert set(ints) == {f"executorch/{uniform.path.name}", f"executorch/{mixed.name}"}, ints
        own = json.loads((run / "export" / f"executorch/{mixed.name}.manifest.json").read_text())
        prog = own["source_program"]
        assert prog["stage"] == stage and prog["path"] == str(run / stage / "mixed-edge_npu_test" / "program.pt2"), prog
        assert own["recipe"]["name"] == "w8a8-mixed-edge_npu_test" and set(own["recipe"]["keep_float"]) == keep
        convs = [r for r in own["precision_map"]["layers"] if r["op"] == "conv"]
        assert {r["layer"] for r in convs if r["precision"] != "int8"} == keep
        assert all(r["precision"] == "fp32" for r in convs if r["layer"] in keep)
        assert {f: sha256_path(f) for f in before} == before  # the all-int8 artifact and the run's programs
        v = json.loads(_cli("check", "--run", run, "--device", profile, "--artifact", mixed, "--json"))[0]
        assert v["artifact"] == f"executorch/{mixed.name}" and v["chosen_by"] == "named", v
        default = json.loads(_cli("check", "--run", run, "--device", profile, "--json"))[0]
        assert default["artifact"] == f"executorch/{uniform.path.name}", default  # unnamed: the uniform one
        return prog["path"]

    prog = load_program(shipped("ptq"))
    prof = profile_pte(mixed, prog.module, TINY_SIZE, runs=2)
    assert prof["mapped"], prof["unmapped_reason"]
    ran = {r["layer"]: r["precision"] for r in prof["rows"] if r["op_class"].endswith("conv")}
    assert {n for n, p in ran.items() if p == "fp32"} == keep, ran

    out = _cli("sensitivity", "--run", run, "--device", profile, "--layers", LAYERS, "--frames", "8",
               "--calib-frames", "8", "--max-miou-drop", "2", "--max-rmse-rise", str(RMSE_BUDGET), "--apply", "--qat")
    # the same checkpoint, budgets, settings and measurements: the search above is reused, not repeated
    assert "mixed search on edge_npu_test: reused" in out and "per-layer accuracy: 1/6" not in out, out
    assert f"check edge_npu_test on executorch/{mixed.name}: PASS" in out, out
    prog = load_program(shipped("qat"))
    ran = {r["layer"]: r["precision"] for r in profile_pte(mixed, prog.module, TINY_SIZE, runs=2)["rows"]
           if r["op_class"].endswith("conv")}
    assert {n for n, p in ran.items() if p == "fp32"} == keep, ran


def test_depth_harmful_layer_is_kept_float_for_depths_budget_only(harmful_run):
    run, profile = harmful_run
    seg = _search(run, profile, "--max-miou-drop", "2")
    assert seg["chosen"]["keep_float"] == [], seg["chosen"]  # int8 everywhere already meets it: fastest
    # the table says why: keeping depth float recovers most of the RMSE the int8 head lost
    rows = {r["layer"]: r for r in seg["layers"]}
    lost = seg["all_int8"]["rmse"] - seg["fp32"]["rmse"]
    assert lost > 0.01, seg["all_int8"]  # the tiny model's depth varies little: collapsing it costs ~0.03 m
    assert -rows["depth"]["recovers"]["rmse"] > 0.8 * lost
    assert abs(rows["depth"]["recovers"]["miou"]) < 1e-6  # segmentation does not see the depth head
    assert all(r["float_ms"] > r["int8_ms"] for r in seg["layers"])  # the stand-in NPU: float always costs
    # it ships ExecuTorch, whose XNNPACK has no int16 kernels: no layer is offered W8A16, and the report says why
    assert seg["w8a16"]["layers"] == [] and any("builds no W8A16" in n for n in seg["notes"]), seg["notes"]
    assert {r["kind"] for r in seg["layers"]} == {"conv", "add", "upsample"}

    assert RMSE_BUDGET < 0.5 * lost  # the budget cannot be met with the depth head in int8
    dep = _front(run, profile, "--max-miou-drop", "2", "--max-rmse-rise", str(RMSE_BUDGET))
    assert "depth" in dep["chosen"]["keep_float"], dep["chosen"]
    assert "segm" not in dep["chosen"]["keep_float"] and "pre_segm" not in dep["chosen"]["keep_float"]
    m = dep["chosen"]["measured"]
    assert m["rmse"] - dep["fp32"]["rmse"] <= RMSE_BUDGET
    assert dep["chosen"]["latency_ms"] > dep["int8_total_ms"]
    recipe = json.loads(Path(dep["recipe_file"]).read_text())
    assert recipe["keep_float"] == dep["chosen"]["keep_float"]
    assert Path(dep["chart"]).is_file()


def test_unmeetable_budgets_print_nearest_misses_and_exit_1(harmful_run):
    run, profile = harmful_run
    r = subprocess.run([sys.executable, "-m", "edgehydra.commands", "sensitivity", "--run", str(run), "--device", str(profile),
                        "--layers", "segm", "--frames", "4", "--calib-frames", "4", "--max-rmse-rise", "0",
                        "--latency-budget-ms", "0.001", "--max-trials", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr
    assert "nearest misses" in err and "latency_ms" in err and "max_rmse_rise" in err, err
    bad = subprocess.run([sys.executable, "-m", "edgehydra.commands", "sensitivity", "--run", str(run), "--device",
                          str(profile), "--layers", "dept"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "matches no convolution" in bad.stderr and "depth" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_sweep_under_two_ranks_equals_one_process(harmful_run, tmp_path):
    """torchrun --nproc_per_node 2 (gloo): each rank sweeps half the layers, rank 0 merges the table."""
    run, profile = harmful_run
    one = _front(run, profile, "--max-miou-drop", "2", "--max-rmse-rise", str(RMSE_BUDGET))
    two_run = tmp_path / "run"
    two_run.mkdir()
    for f in ("fp32.pt", "run.json"):
        if (run / f).is_file():
            shutil.copy(run / f, two_run / f)
    # "--": torchrun's own parser would take "--run" for its "--run-path" (the README says the same)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
                        "-m", "edgehydra.commands", "--", "sensitivity", "--run", str(two_run), "--device", str(profile), "--layers",
                        LAYERS, "--frames", "8", "--calib-frames", "8", "--max-miou-drop", "2", "--max-rmse-rise",
                        str(RMSE_BUDGET)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    two = json.loads((two_run / "mixed" / "edge_npu_test" / "front.json").read_text())
    assert [x["layer"] for x in two["layers"]] == [x["layer"] for x in one["layers"]]
    # Ranks run with one OpenMP thread (torchrun's default), the single process with more: float sums
    # change order, which can move an activation across an int8 rounding boundary on a few pixels. 8
    # frames at 64x96 are 49k pixels: a handful flipping moves mIoU by < 0.05 points and RMSE by < 1e-3 m.
    for a, b in zip(one["layers"], two["layers"]):
        assert abs(a["recovers"]["miou"] - b["recovers"]["miou"]) < 0.05, (a, b)
        assert abs(a["recovers"]["rmse"] - b["recovers"]["rmse"]) < 1e-3 * max(1.0, one["fp32"]["rmse"]), (a, b)
    assert two["chosen"]["keep_float"] == one["chosen"]["keep_float"]


def test_normals_budgets_count_only_where_the_model_predicts_normals():
    from edgehydra.calibration.mixed import MixedBudgets

    fp32 = {"miou": 40.0, "rmse": 1.0, "abs_rel": 0.2, "normals_median_angle": 23.0}
    b = MixedBudgets(max_normals_rise=1.0, max_normals_median=24.5)
    assert b.misses(dict(fp32, normals_median_angle=25.0), fp32, None, None) == {
        "max_normals_rise": pytest.approx(1.0), "max_normals_median": pytest.approx(0.5)}
    assert b.misses(dict(fp32, normals_median_angle=23.5), fp32, None, None) == {}
    two = {k: v for k, v in fp32.items() if k != "normals_median_angle"}  # a two-task model: nothing to miss
    assert b.misses(two, two, None, None) == {}
    with pytest.raises(Exception, match="max_normals_rise"):
        MixedBudgets(max_normals_rise=-1)


def test_flicker_is_a_task_budget_of_the_search(harmful_run):
    """--max-flicker-rise: every program of the search also runs a synthroom sequence, its flicker (percent of
    matched pixels changing label between frames) is a task metric, and the chosen assignment holds the budget."""
    from edgehydra.calibration.mixed import MixedBudgets

    fp32 = {"miou": 40.0, "rmse": 1.0, "abs_rel": 0.2, "flicker": 3.0}
    b = MixedBudgets(max_flicker_rise=0.5)
    assert b.misses(dict(fp32, flicker=4.0), fp32, None, None) == {"max_flicker_rise": pytest.approx(0.5)}
    assert b.misses(dict(fp32, flicker=3.4), fp32, None, None) == {}
    run, profile = harmful_run
    rep = _search(run, profile, "--max-flicker-rise", "5", "--max-trials", "2")
    assert rep["budgets"]["max_flicker_rise"] == 5.0
    for m in (rep["fp32"], rep["all_int8"], rep["chosen"]["measured"]):
        assert 0.0 <= m["flicker"] <= 100.0, m
    assert rep["chosen"]["measured"]["flicker"] - rep["fp32"]["flicker"] <= 5.0


def test_remote_search_reads_the_devices_stored_op_profile(harmful_run, tmp_path):
    """The device's own per-op profile kept in the run (what `bench --ops --ops-from/--device --profile` stores)
    says its int8 adds take 40x the roofline's estimate. The search's per-layer table takes that class scale
    (the fusion's int8 time 40x, a convolution's unchanged), says what it was fitted to, and the decision
    follows the device: the fusion in float is now faster than int8, so the chosen assignment takes it out of int8 (into fp16
    where the profile makes that the faster float).
    (The profile is of the artifact the first test of this file shipped.)"""
    from edgehydra.checkpoint import load_checkpoint
    from edgehydra.devices.estimate import estimate
    from edgehydra.devices.profile import load_profile
    from edgehydra.run import Run

    run, profile = harmful_run
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    model, _ = load_checkpoint(mine / "fp32.pt")
    est = estimate(model, load_profile(str(profile)), "int8", TINY_SIZE)
    ms = lambda kind, name=None: sum(x["ms"] for x in est["layers"]  # noqa: E731
                                     if x["kind"] == kind and (name is None or x["name"] == name))
    man = json.loads((mine / "export" / "manifest.json").read_text())
    shipped = next(a for a in man["artifacts"] if a["target"] == "executorch" and a["precision"] == "int8")
    Run(mine).add_op_profile({"profile": "edge_npu_test", "sha256": shipped["sha256"], "size": list(TINY_SIZE),
                              "precision": "int8", "by_class": [{"op_class": "add", "ms": 40 * ms("Add")}]})
    rep = _search(mine, profile, "--max-miou-drop", "2")
    assert "op profile" in rep["latency_source"], rep["latency_source"]
    rows = {r["layer"]: r for r in rep["layers"]}
    assert rows["fuse1"]["op"] == "op" and rows["up2"]["op"] == "op" and rows["segm"]["op"] == "conv"
    assert rows["fuse1"]["int8_ms"] == pytest.approx(40 * ms("Add", "fuse1"), rel=1e-6)
    assert rows["segm"]["int8_ms"] == pytest.approx(ms("Conv2d", "segm"), rel=1e-6)
    assert rows["fuse1"]["float_ms"] < rows["fuse1"]["int8_ms"]
    # out of int8, in whichever float the device runs faster (an add moves half the bytes in fp16)
    faster = "fp16_layers" if rows["fuse1"]["fp16_ms"] < rows["fuse1"]["float_ms"] else "keep_float"
    assert "fuse1" in rep["chosen"][faster], rep["chosen"]
    assert rep["chosen"]["latency_ms"] < rep["int8_total_ms"]


NPU16 = PROFILE.replace('name = "edge_npu_test"', 'name = "edge_npu16_test"').replace(
    'format = "executorch"', 'format = "onnx"').replace("fp16_tflops = 2.0", "fp16_tflops = 0.5").replace(
    "fp32_tflops = 2.0", "fp32_tflops = 0.5\nint16_tops = 5.0")


def test_w8a16_is_a_precision_of_its_own_where_the_format_builds_it(tiny_run, tmp_path):
    """A device that ships ONNX (whose int16 QDQ the exporter builds) with W8A16 at half its int8 rate and
    float 20x slower. The depth head is made harmful to int8 *activations* (conftest.activation_harmed_run).
    W8A16 on depth (its input quantised int16 where it is made) recovers what float would, at a fraction of
    float's cost: the search puts depth in W8A16, not float, and the recipe says so."""
    run = activation_harmed_run(tiny_run, tmp_path)
    profile = tmp_path / "npu16.toml"
    profile.write_text(NPU16)
    out = _cli("sensitivity", "--run", run, "--device", profile, "--layers", "pre_depth,depth,fuse1",
               "--frames", "8", "--calib-frames", "8", "--max-miou-drop", "2", "--max-rmse-rise", str(RMSE_BUDGET))
    rep = json.loads((run / "mixed" / "edge_npu16_test" / "front.json").read_text())
    rows = {r["layer"]: r for r in rep["layers"]}
    lost = rep["all_int8"]["rmse"] - rep["fp32"]["rmse"]
    assert lost > 2 * RMSE_BUDGET, (rep["fp32"], rep["all_int8"])  # int8 rounds most of depth's input to 0
    assert -rows["depth"]["recovers_w8a16"]["rmse"] > 0.8 * lost, rows["depth"]  # int16 keeps it
    assert rows["depth"]["float_ms"] > rows["depth"]["int16_ms"] > rows["depth"]["int8_ms"]
    c = rep["chosen"]
    assert "depth" in c["int16_layers"] and "depth" not in c["keep_float"], c
    assert c["latency_ms"] < rep["int8_total_ms"] + rows["depth"]["float_ms"] - rows["depth"]["int8_ms"]  # < depth float
    recipe = json.loads(Path(rep["recipe_file"]).read_text())
    assert recipe["int16_layers"] == c["int16_layers"] and recipe["keep_float"] == c["keep_float"]
    assert "W8A16" in out, out
    # shipped and judged as chosen: tests/test_mixed_host.py (the same harmed model, through --apply)
