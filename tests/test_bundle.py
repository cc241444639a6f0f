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


@pytest.fixture(scope="module")
def pte_run(tiny_run, tmp_path_factory):
    from edgehydra.exporters.stage import export_run
    from edgehydra.run import Run

    run = tmp_path_factory.mktemp("bundle") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "measurements", "mixed"))
    res = export_run(Run(run).export_dir, ["executorch"], ["int8"], run=run, eval_frames=4)
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
    from edgehydra.exporters.base import Tolerance
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
    from edgehydra.exporters.base import Tolerance
    from edgehydra.exporters.reference_io import read_expected, reference_path, run_reference, write_reference
    from edgehydra.exporters.stage import export_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "measurements", "mixed", "debug"))
    res = export_run(run / "export", [target], ["int8"], run=run, eval_frames=1)
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

    if target == "onnx":  # `bench --ops` on onnxruntime's own profiler: every node on a layer and stage
        r = CliRunner().invoke(cli, ["bench", "--artifact", str(art), "--ops", "--runs", "3"])
        assert r.exit_code == 0, (r.output, r.exception)
        prof = json.loads(Path(str(art) + ".ops.json").read_text())
        assert prof["mapped"] and prof["runtime"] == "onnxruntime", prof["unmapped_reason"]
        assert {d["stage"] for d in prof["by_stage"]} >= {"encoder", "decoder", "head:segm", "head:depth"}
        assert abs(sum(d["ms"] for d in prof["by_stage"]) - prof["total_ms"]) < 1e-9
        assert {"segm", "pre_segm", "depth", "pre_depth"} <= set(prof["by_layer"])
        assert any(x["precision"] == "int8" and x["op_class"].endswith("conv") for x in prof["rows"])

    exp = read_expected(ref)
    frames = np.load(ref)["frames"]
    write_reference(art, frames, [exp[0], exp[1] * 1.5])  # expected depth 50 % off
    bad = run_reference(art, ("segm", "depth"), tol)
    assert not bad["pass"] and len(bad["failures"]) == 1 and bad["failures"][0].startswith("depth"), bad
