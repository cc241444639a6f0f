"""ARM kernels without an ARM device: the emulated aarch64 root (`edgehydra arm setup`) and `bench --bundle --device
qemu:CPU` on a run's int8 .pte, .tflite and .onnx. The root is built once per machine (about 2 min and 2.3 GB with
ExecuTorch and torch's aarch64 wheels, in ~/.cache/edgehydra/arm or $EDGEHYDRA_ARM_DIR); where it cannot be built (no apt-get/dpkg-deb, not x86-64, no
Debian mirror) the group is skipped and says why."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgehydra.commands import cli

pytestmark = pytest.mark.arm


@pytest.fixture(scope="module")
def arm_root():
    from edgehydra.devices.arm_setup import ArmSetupError, setup

    try:
        return setup()
    except ArmSetupError as e:
        if not e.host:  # the setup's own failure (a pip refusal, an unpack, the self-check) fails, never skips
            raise
        pytest.skip(f"emulated aarch64 root not buildable here: {e}")


@pytest.fixture(scope="module")
def arm_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run with its int8 program exported to .pte, .tflite and .onnx (with their reference I/O)."""
    run = tmp_path_factory.mktemp("arm") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "measurements"))
    for target in ("executorch", "tflite", "onnx"):
        r = CliRunner().invoke(cli, ["export", "--run", str(run), "--target", target, "--precision", "int8"],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
    return run


def test_the_wheels_folder_holds_only_this_setups_wheels(tmp_path):
    """A wheel an earlier setup left (another version of a package the host has since upgraded) stays out of the
    root: pip refuses two versions of one package in one install, which failed every setup after a host upgrade,
    and that failure is the setup's own (not the host's, which the root's tests skip on)."""
    import sys

    from edgehydra.devices.arm_setup import ArmSetupError, _run, _wheels

    wd = tmp_path / "wheels"
    try:  # the stale wheel: tabulate 0.9.0, pure Python, where this setup asks for 0.10.0
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wd),
              "tabulate==0.9.0"], "downloading a stale wheel", fetch=True)
    except ArmSetupError as e:
        pytest.skip(f"package index out of reach: {e}")
    sp = _wheels(tmp_path, tmp_path / "root", {"tabulate": "0.10.0"})
    assert [p.name for p in sp.glob("tabulate-*.dist-info")] == ["tabulate-0.10.0.dist-info"]
    assert [p.name for p in wd.glob("*.whl")] == ["tabulate-0.10.0-py3-none-any.whl"]
    with pytest.raises(ArmSetupError) as e:  # a local install pip refuses is the setup's failure
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--target", str(tmp_path / "x"),
              str(tmp_path / "missing.whl")], "installing a wheel that is not there")
    assert not e.value.host


def _bench(artifact, cpu):
    return CliRunner().invoke(cli, ["bench", "--artifact", str(artifact), "--bundle", "--device", f"qemu:{cpu}"],
                              catch_exceptions=False)


def test_setup_is_idempotent_and_says_what_it_built(arm_root):
    r = CliRunner().invoke(cli, ["arm", "setup"], catch_exceptions=False)
    assert r.exit_code == 0 and "already there (same versions)" in r.output, r.output
    assert "qemu-aarch64 version 10" in r.output and "aarch64" in arm_root["self_check"]
    r = CliRunner().invoke(cli, ["doctor"], catch_exceptions=False)
    assert "qemu:cortex-a76" in r.output, r.output


@pytest.mark.parametrize("cpu,family", [("cortex-a72", "mlal"), ("cortex-a76", "neondot"), ("cortex-a710", "i8mm")])
def test_tflite_on_each_kernel_family(arm_root, arm_run, cpu, family):
    """The int8 .tflite's reference I/O on three emulated CPUs: passes with the export's tolerance, and the XNNPACK
    int8 GEMM that ran is named from QEMU's block log, of the family the CPU has (TOOLCHAIN.md)."""
    art = next((arm_run / "export" / "tflite").glob("*int8*.tflite"))
    r = _bench(art, cpu)
    assert r.exit_code == 0, r.output
    rec = json.loads(Path(f"{art}.qemu_{cpu}.bench.json").read_text())
    bp = rec["bundle_parity"]
    assert bp["pass"] and rec["emulated"] and "p50_ms" not in rec
    assert bp["kernels"]["int8_gemm"] and all(family in k for k in bp["kernels"]["int8_gemm"]), bp["kernels"]
    assert set(bp["vs_x86"]) == {"segm", "depth"}
    # the run keeps it as parity evidence for check, never as a latency
    m = json.loads(Path(rec["record"]).read_text())
    assert m["device"] == f"qemu:{cpu}" and m["emulated"] and "p50_ms" not in m


def test_pte_through_executorch_on_dot_product_kernels(arm_root, arm_run):
    """The int8 .pte's bundled program through ExecuTorch's aarch64 runtime (XNNPACK), torch's CUDA build loaded on
    the stub CUDA libraries the setup built: it passes the export's tolerance and is compared with x86 per task."""
    assert arm_root["cuda_stubs"] and "XnnpackBackend" in arm_root["self_check"] and "cuda False" in arm_root["self_check"]
    art = next((arm_run / "export" / "executorch").glob("*int8*.pte"))
    r = _bench(art, "cortex-a76")
    assert r.exit_code == 0, r.output
    rec = json.loads(Path(f"{art}.qemu_cortex-a76.bench.json").read_text())
    bp = rec["bundle_parity"]
    assert bp["pass"] and "bundle_runner" in bp["runner"] and set(bp["vs_x86"]) == {"segm", "depth"}, bp
    assert bp["cases"] >= 1 and "p50_ms" not in rec and "dot-product" in rec["accelerator"]
    # per task against x86 and against the program, in output units and in the program's int8 output steps,
    # written into the artifact's manifest beside export's own verification
    man = json.loads(Path(f"{art}.manifest.json").read_text())
    arm = man["verification"]["arm"]["qemu:cortex-a76"]
    assert arm["pass"] and set(arm["output_steps"]) == {"segm", "depth"} and all(v > 0 for v in arm["output_steps"].values())
    for t in ("segm", "depth"):
        v = arm["vs_program"][t]
        assert v["max_steps"] == pytest.approx(v["max_abs"] / arm["output_steps"][t])
    assert 0.0 <= arm["vs_program"]["segm"]["argmax_agreement"] <= 1.0 and "argmax_agreement" not in arm["vs_program"]["depth"]
    assert "vs the program" in r.output and "output steps" in r.output


def test_onnx_on_dot_product_kernels_and_no_latency_asked(arm_root, arm_run):
    art = next((arm_run / "export" / "onnx").glob("*int8*.onnx"))
    r = _bench(art, "cortex-a76")
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and "kernels: not named" in r.output  # onnxruntime's aarch64 library is stripped
    r = CliRunner().invoke(cli, ["bench", "--artifact", str(art), "--device", "qemu:cortex-a76"])
    assert r.exit_code == 2 and "times nothing; use --bundle" in r.output
    r = CliRunner().invoke(cli, ["bench", "--artifact", str(art), "--bundle", "--device", "qemu:cortex-a99"])
    assert r.exit_code == 2 and "emulated CPUs are cortex-a72" in r.output


def _segm_bias(path: Path) -> tuple[int, int]:
    """File offset and length of the segmentation conv's int32 biases (the flatbuffer's own tables locate its buffer)."""
    from ai_edge_litert import schema_py_generated as schema

    data = bytearray(path.read_bytes())
    m = schema.Model.GetRootAsModel(data, 0)
    g = m.Subgraphs(0)
    for i in range(g.TensorsLength()):
        t = g.Tensors(i)
        if t.Name().decode().endswith("Conv2d_segm;") and t.Type() == schema.TensorType.INT32:
            buf = m.Buffers(t.Buffer())
            return buf._tab.Vector(buf._tab.Offset(4)), buf.DataLength()
    raise AssertionError("no int32 bias of the segmentation conv in the .tflite")


def test_a_broken_parameter_fails_on_the_right_task(arm_root, arm_run, tmp_path):
    """Break one parameter of the segmentation head in a copy of the .tflite (its manifest re-hashed, as a bad build
    would be): class 5's int32 bias pushed past what the int8 logits hold, so it wins every pixel. On the emulated
    ARM kernels segmentation fails the export's tolerance and depth, untouched, passes. (A bias, not an int8 weight:
    the tiny model's heads read their inputs so weakly that no single int8 weight moves a task past its
    tolerance; depth cannot fail at all, its int8 output range spans 0.06 m around 2.5 m, under the 5 % bound.)"""
    from edgehydra._io import sha256_path

    src = next((arm_run / "export" / "tflite").glob("*int8*.tflite"))
    art = tmp_path / src.name
    for suffix in ("", ".manifest.json", ".reference.npz"):
        shutil.copy(str(src) + suffix, str(art) + suffix)
    off, n = _segm_bias(art)
    data = bytearray(art.read_bytes())
    bias = np.frombuffer(bytes(data[off:off + n]), "<i4").copy()
    bias[5] += 1 << 24
    data[off:off + n] = bias.tobytes()
    art.write_bytes(bytes(data))
    man = json.loads(Path(str(art) + ".manifest.json").read_text())
    man["sha256"] = sha256_path(art)
    Path(str(art) + ".manifest.json").write_text(json.dumps(man))
    r = _bench(art, "cortex-a76")
    assert r.exit_code == 1, r.output
    rec = json.loads(Path(f"{art}.qemu_cortex-a76.bench.json").read_text())
    fails = rec["bundle_parity"]["failures"]
    assert fails and all(f.startswith("segm") for f in fails), fails
    assert "FAIL: segm argmax agreement" in r.output
