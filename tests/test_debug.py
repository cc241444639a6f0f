"""`edgehydra debug`: an int8 artifact against its pt2e program, layer by layer (exporters/debug.py).

One layer per task is broken in the artifact and nowhere else: the segmentation head's last conv and
the depth head's first. On ExecuTorch the break is a faulty lowering (the exporter's ``lower`` negates
those layers' int8 weights, as a buggy pass would), so it is in the shipped .pte and in the debugger's
re-lowered build alike; on ONNX it is in the shipped file (those layers' weight scales x4). The
debugger must name, per task, that task's broken layer as the first one out of the int8 rounding bound,
and pass a clean artifact.
"""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

BROKEN = {"segm": "segm", "depth": "pre_depth"}  # task -> the layer broken for it


def _copy_run(src, dst):
    dst.mkdir()
    for name in ("fp32.pt", "run.json"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    shutil.copytree(src / "ptq", dst / "ptq")
    return dst


def _negate_layers(module, layers):
    """A copy of a pt2e GraphModule whose convs in ``layers`` have their int8 weights negated."""
    import torch

    from edgehydra.graph import node_module_path

    m = copy.deepcopy(module)
    hit = set()
    for n in m.graph.nodes:
        if n.op == "call_function" and n.target == torch.ops.aten.conv2d.default and node_module_path(n) in layers:
            w = n.args[1].args[0]  # dequantize_per_channel(int8 weight, ...)
            assert w.op == "get_attr", w.op
            t = getattr(m, w.target)
            setattr(m, w.target, (-t.to(torch.int16)).clamp(-127, 127).to(torch.int8))
            hit.add(node_module_path(n))
    assert hit == set(layers), hit
    return m


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory):
    from edgehydra.exporters.export_stage import ExportSource, export_run

    root = tmp_path_factory.mktemp("debug")
    clean = _copy_run(tiny_run, root / "clean")
    export_run(clean / "export", ["onnx"], ["int8"], source=ExportSource(run=clean))
    broken = _copy_run(tiny_run, root / "broken")
    export_run(broken / "export", ["onnx"], ["int8"], source=ExportSource(run=broken))
    return clean, broken


def _artifact(run, target):
    man = json.loads((run / "export" / "manifest.json").read_text())
    a = next(a for a in man["artifacts"] if a["target"] == target and a["precision"] == "int8")
    return run / "export" / a["path"]


def _assert_finds_each_break(rep):
    for task, layer in BROKEN.items():
        f = rep["first_failure"][task]
        assert f is not None and f["layer"] == layer, (task, f)
    rows = {r["layer"]: r for r in rep["layers"]}
    # the broken layers are far outside the bound; everything before the first failure is within it
    for layer in BROKEN.values():
        assert rows[layer]["mean_steps"] > 10 * rep["max_mean_steps"]
    for task, f in rep["first_failure"].items():
        assert all(r["ok"] for r in rep["layers"] if task in r["tasks"] and r["index"] < f["index"])


def test_clean_artifact_stays_within_the_int8_bound(runs):
    from edgehydra.exporters.debug import debug_path

    clean, _ = runs
    for target in ("onnx",):  # ExecuTorch's clean layers: upstream of the broken ones in the faulty-lowering test
        rep, paths = debug_path(_artifact(clean, target), frames=2)
        assert rep["first_failure"] == {"segm": None, "depth": None}, (target, rep["first_failure"])
        assert rep["probe_build_vs_shipped_max_abs"] == 0.0  # what was probed is what ships
        assert all(p.is_file() for p in paths)
        # probes cover the network: the image, every conv of both heads, both tasks' paths
        layers = {r["layer"] for r in rep["layers"]}
        assert {"input", "segm", "pre_segm", "depth", "pre_depth"} <= layers
        assert {r["layer"] for r in rep["layers"] if r["tasks"] == ("segm",)} >= {"segm", "pre_segm"}


def test_executorch_faulty_lowering_is_found_per_task(runs, monkeypatch, tmp_path):
    from edgehydra.exporters import executorch as et
    from edgehydra.exporters.debug import debug_path
    from edgehydra.exporters.export_stage import ExportSource, export_run

    _, broken = runs
    real = et.lower

    def faulty_lower(module, example, precision, delegate="xnnpack", exported=None):
        return real(_negate_layers(module, set(BROKEN.values())), example, precision, delegate)

    monkeypatch.setattr(et, "lower", faulty_lower)
    # a lowering that is not a function of its program: a cache hit would skip it, and its bytes must not be kept
    monkeypatch.setenv("EDGEHYDRA_CACHE", "off")
    res = export_run(broken / "export", ["executorch"], ["int8"], source=ExportSource(run=broken))
    assert res[0].status == "failed"  # verify sees that the outputs are wrong, not where
    rep, _ = debug_path(_artifact(broken, "executorch"), frames=2)
    assert rep["probe_build_vs_shipped_max_abs"] == 0.0
    _assert_finds_each_break(rep)
    # every tensor that neither broken layer feeds (the whole encoder and decoder) is within the bound
    assert all(r["ok"] for r in rep["layers"] if r["layer"] not in BROKEN.values() and r["index"] < min(
        f["index"] for f in rep["first_failure"].values()))


def test_onnx_file_broken_after_export_is_found_per_task(runs):
    import onnx
    from onnx import numpy_helper

    from edgehydra.calibration.program import load_program
    from edgehydra.commands import cli
    from edgehydra.exporters.debug import find_probes

    _, broken = runs
    path = _artifact(broken, "onnx")
    prog = load_program(broken / "ptq" / "program.pt2")
    probes = find_probes(prog.module, prog.config.tasks)
    m = onnx.load(str(path))
    init = {i.name: i for i in m.graph.initializer}
    const = {n.output[0]: n for n in m.graph.node if n.op_type == "Constant"}
    producer = {o: n for n in m.graph.node for o in n.output}
    qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in init and n.input[0] not in const]
    assert len(qs) == len(probes)
    for layer in BROKEN.values():
        q = qs[next(p.index for p in probes if p.layer == layer)]
        n = producer[q.input[0]]
        while n.op_type != "Conv":  # through Clip (ReLU6)
            n = producer[n.input[0]]
        dq = producer[n.input[1]]
        scale = dq.input[1]
        if scale in init:
            init[scale].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init[scale]) * 4, scale))
        else:
            const[scale].attribute[0].t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(const[scale].attribute[0].t) * 4))
    onnx.save(m, str(path))

    r = CliRunner().invoke(cli, ["debug", "--artifact", str(path), "--frames", "2"])
    assert r.exit_code == 1, r.output
    assert "sha256 differs from its manifest" in r.output
    for task, layer in BROKEN.items():
        assert f"{task}: first out of bound at" in r.output and f" {layer} (" in r.output, r.output
    rep = json.loads((broken / "debug" / path.name / "layers.json").read_text())
    _assert_finds_each_break(rep)
    assert (broken / "debug" / path.name / "layers.png").is_file()


def test_debug_refuses_what_it_cannot_compare(runs, tmp_path):
    from edgehydra.commands import cli

    clean, _ = runs
    stray = tmp_path / "x.onnx"
    shutil.copy(_artifact(clean, "onnx"), stray)
    shutil.copy(str(_artifact(clean, "onnx")) + ".manifest.json", str(stray) + ".manifest.json")
    r = CliRunner().invoke(cli, ["debug", "--artifact", str(stray)])
    assert r.exit_code == 2 and "not in a run's export folder" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not np.any([p.name == "debug" for p in tmp_path.iterdir()])
