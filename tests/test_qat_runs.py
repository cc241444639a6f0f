"""QAT at scale and under failure: 2 gloo ranks agree and match one process; a SIGKILL mid-run resumes to
the weights of an uninterrupted run (training's own tests prove both for `train`, these for `qat`)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("qat_worker.py")


def _state(run: Path) -> dict:
    return torch.load(run / "qat" / "state.pt", map_location="cpu", weights_only=True)["model"]


def test_qat_two_gloo_ranks_agree_and_match_one_process(tiny_run, tmp_path):
    from edgehydra.calibration.qat import prepare_qat
    from edgehydra.calibration.recipe import load_recipe
    from edgehydra.checkpoint import load_checkpoint
    from tests.conftest import TINY_SIZE

    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
                        str(WORKER), str(tiny_run), str(tmp_path / "ddp"), "4"], capture_output=True, text=True,
                       timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, str(WORKER), str(tiny_run), str(tmp_path / "one"), "8"], capture_output=True,
                       text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "ddp" / "qat" / "report.json").read_text())
    h = rep["rank_weights_sha256"]
    assert len(h) == 2 and h[0] == h[1], h  # both ranks ended with identical weights (checked in-run)
    model, _ = load_checkpoint(tiny_run / "fp32.pt")
    init = prepare_qat(model, load_recipe("w8a8"), TINY_SIZE)[0].state_dict()
    w2, w1 = _state(tmp_path / "ddp"), _state(tmp_path / "one")
    keys = [k for k in w2 if w2[k].is_floating_point() and k in init and init[k].shape == w2[k].shape
            and "running" not in k and "activation_post_process" not in k and "fake_quant" not in k]
    upd2 = torch.cat([(w2[k] - init[k]).flatten() for k in keys])
    upd1 = torch.cat([(w1[k] - init[k]).flatten() for k in keys])
    assert upd1.norm() > 0
    # Same 8 frames per step and averaged gradients; BN batch statistics and berHu's batch max are per rank
    # (4 frames, not 8), so the updates agree to a tolerance, as for `train` (tests/test_distributed.py).
    rel = ((upd2 - upd1).norm() / upd1.norm()).item()
    assert rel < 0.25, rel
    assert torch.nn.functional.cosine_similarity(upd2, upd1, dim=0).item() > 0.97


def _qat(out: Path, *extra):
    return subprocess.Popen([sys.executable, "-m", "edgehydra.commands", "qat", "--out", str(out), "--epochs", "3",
                             "--batch-size", "8", "--no-distill", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_qat_sigkill_mid_run_then_resume_matches_uninterrupted(tiny_run, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        for f in ("fp32.pt", "run.json"):
            shutil.copy(tiny_run / f, tmp_path / d / f)
    a, b = _qat(tmp_path / "a"), _qat(tmp_path / "b")
    st = tmp_path / "b" / "qat" / "state.pt"
    deadline = time.time() + 600
    while not st.exists() and time.time() < deadline and b.poll() is None:  # epoch 1's resume state
        time.sleep(0.1)
    assert st.exists(), b.stderr.read() if b.poll() is not None else "no QAT state in time"
    time.sleep(0.3)  # into epoch 2
    b.send_signal(signal.SIGKILL)
    b.wait()
    epoch_at_kill = torch.load(st, map_location="cpu", weights_only=True)["epoch"]
    assert epoch_at_kill < 3, "QAT finished before the kill: the test did not interrupt it"
    r = _qat(tmp_path / "b", "--resume")
    assert r.wait(timeout=900) == 0, r.stderr.read()
    assert a.wait(timeout=900) == 0, a.stderr.read()
    wa, wb = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert set(wa) == set(wb)
    for k in wa:
        if isinstance(wa[k], torch.Tensor) and wa[k].is_floating_point():
            assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    assert (tmp_path / "b" / "qat" / "program.pt2").is_file()
