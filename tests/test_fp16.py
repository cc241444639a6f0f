"""fp16 as a per-layer precision (a recipe's fp16_layers, calibration/fp16.py): the program computes those
layers in half, ExecuTorch builds them into XNNPACK's fp16 kernels, the other formats refuse in one line,
and the mixed-precision search offers fp16 where the device computes it faster than fp32, through
--apply, export and check."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import STAND_IN_NPU, TINY_SIZE, weight_harmed_run

HEAD = ("pre_segm", "segm")


@pytest.fixture(scope="module")
def programs(tiny_run):
    """The tiny run quantised twice: the segmentation head kept fp32, and the same head in fp16."""
    from edgehydra.calibration.calibset import select_calibration
    from edgehydra.calibration.ptq import quantize_ptq
    from edgehydra.calibration.recipe import Recipe
    from edgehydra.checkpoint import load_checkpoint
    from edgehydra.data import Resize, SynthRoom

    model, _ = load_checkpoint(tiny_run / "fp32.pt")
    ds = SynthRoom(8, size=TINY_SIZE, seed=5, transform=Resize(TINY_SIZE))
    calib = select_calibration(ds, 8)
    r32, r16 = Recipe(name="head-fp32", keep_float=HEAD), Recipe(name="head-fp16", fp16_layers=HEAD)
    q32, _ = quantize_ptq(model, r32, ds, calib, TINY_SIZE)
    q16, tr = quantize_ptq(model, r16, ds, calib, TINY_SIZE)
    return model, ds, (q32, r32), (q16, r16, tr)


def test_fp16_layers_compute_in_half_in_the_program(programs):
    from edgehydra.calibration.fp16 import fp16_layers
    from edgehydra.exporters.precision_map import program_layers

    _, ds, (q32, _), (q16, r16, tr) = programs
    assert any("computed in fp16" in n for n in tr.notes), tr.notes
    assert {p for p, _ in fp16_layers(q16)} == set(HEAD)
    rows = program_layers(q16, r16)
    convs = {r["layer"]: r for r in rows if r["op"] == "conv"}
    for h in HEAD:
        assert convs[h]["precision"] == "fp16" and convs[h]["why"] == f"recipe fp16 ({h!r})", convs[h]
    assert all(r["precision"] == "int8" for n, r in convs.items() if n not in HEAD)
    x = torch.stack([ds[i]["image"] for i in range(2)])
    with torch.no_grad():
        a, b = q32(x), q16(x)
    assert torch.equal(a[1], b[1])  # depth does not pass through the segmentation head
    # The two differ only by fp16 rounding in the head: its input cast, its weights, and each conv's output
    # (fp16 keeps 11 significant bits, a relative error of at most 2**-11 per rounding). Eight roundings of
    # the largest logit bound the difference; zero would mean the head did not run in half at all.
    d = (a[0] - b[0]).abs().max()
    assert 0 < d <= 8 * 2.0**-11 * a[0].abs().max(), (float(d), float(a[0].abs().max()))


@pytest.mark.parametrize("target", ["onnx", "tflite", "coreml"])
def test_formats_without_fp16_islands_refuse_in_one_line(programs, target, tmp_path):
    from edgehydra.calibration.program import QuantisedProgram
    from edgehydra.errors import EdgeHydraError
    from edgehydra.exporters import get_target, installed_targets
    from edgehydra.exporters.target import ExportRequest, Source

    if target not in installed_targets():
        pytest.skip(f"{target} not installed")
    model, _, _, (q16, r16, _) = programs
    t = get_target(target)
    src = Source(model, model.config, "", QuantisedProgram(q16, model.config, r16, TINY_SIZE))
    path = tmp_path / f"m{t.suffix}"
    with pytest.raises(EdgeHydraError) as e:
        t.build(src, ExportRequest(target, "int8", TINY_SIZE), path)
    msg = str(e.value)
    assert "\n" not in msg and "pre_segm (conv)" in msg and "segm (conv)" in msg and "fp16" in msg, msg
    assert msg.endswith(t.fp16_note)
    assert not path.exists()


NPU_FP16 = STAND_IN_NPU.replace('name = "edge_npu_test"', 'name = "edge_fp16_test"').replace(
    'kind = "phone-npu"', 'kind = "cpu"').replace('compute_unit = "NPU"', 'compute_unit = "CPU"').replace(
    "fp16_tflops = 2.0", "fp16_tflops = 4.0")  # fp16 at twice the fp32 rate, like a phone CPU with ARMv8.2-FP16


def test_search_puts_a_layer_in_fp16_where_the_device_computes_it_faster_and_it_ships(tiny_run, tmp_path):
    """The depth head harmful to int8 weights (conftest.weight_harmed_run), on a device whose fp16 runs at
    twice its fp32: float on depth meets the RMSE budget, and fp16 is the cheaper float. The search sweeps
    fp16 at every layer (estimated faster than fp32 at each), chooses depth in fp16, and --apply ships a .pte
    whose precision map and whose XNNPACK kernels say depth runs fp16; check judges it per layer."""
    from click.testing import CliRunner

    from edgehydra.commands import cli
    from edgehydra.devices.opprofile import etdump_rows, op_precision
    from edgehydra.graph import xnnpack_class as op_class

    run = weight_harmed_run(tiny_run, tmp_path)
    profile = tmp_path / "fp16dev.toml"
    profile.write_text(NPU_FP16)
    r = CliRunner().invoke(cli, ["sensitivity", "--run", str(run), "--device", str(profile), "--layers",
                                 "pre_depth,depth,fuse1", "--frames", "8", "--calib-frames", "8", "--max-miou-drop",
                                 "2", "--max-rmse-rise", "0.005", "--apply"])
    assert r.exit_code == 0, (r.output, r.exception)
    rep = json.loads((run / "mixed" / "edge_fp16_test" / "front.json").read_text())
    rows = {x["layer"]: x for x in rep["layers"]}
    assert rep["fp16"]["islands"] and set(rep["fp16"]["layers"]) == set(rows)
    assert all(x["fp16_ms"] < x["float_ms"] for x in rows.values())
    lost = rep["all_int8"]["rmse"] - rep["fp32"]["rmse"]
    assert lost > 0.01 and -rows["depth"]["recovers_fp16"]["rmse"] > 0.8 * lost, (lost, rows["depth"])
    c = rep["chosen"]
    assert "depth" in c["fp16_layers"] and "depth" not in c["keep_float"], c
    recipe = json.loads((run / "mixed" / "edge_fp16_test" / "recipe.json").read_text())
    assert recipe["fp16_layers"] == c["fp16_layers"] and recipe["keep_float"] == c["keep_float"]
    assert "check edge_fp16_test on executorch/hydranet_int8-mixed-edge_fp16_test_" in r.output, r.output
    assert ".pte: PASS" in r.output, r.output

    man = json.loads((run / "export" / "manifest.json").read_text())
    art = next(a for a in man["artifacts"] if a["target"] == "executorch" and a["variant"] == "mixed-edge_fp16_test")
    assert art["status"] == "verified", art
    own = json.loads((run / "export" / (art["path"] + ".manifest.json")).read_text())
    convs = [x for x in own["precision_map"]["layers"] if x["op"] == "conv"]
    f16 = {x["layer"] for x in convs if x["precision"] == "fp16"}
    assert f16 == {n for n in c["fp16_layers"] if n in {x["layer"] for x in convs}}, convs
    # the runtime's own kernels: as many fp16 convolutions as the map has fp16 conv rows
    events = etdump_rows(run / "export" / art["path"], torch.zeros(1, 3, *TINY_SIZE), runs=1)
    ran16 = [e for e in events if op_class(e["event"]).endswith("conv") and op_precision(e["event"]) == "fp16"]
    assert len(ran16) == sum(x["count"] for x in convs if x["precision"] == "fp16"), [e["event"] for e in events]
    chk = json.loads((run / "check.json").read_text()) if (run / "check.json").is_file() else None
    assert chk is None or any(d["device"] == "edge_fp16_test" for d in chk)
