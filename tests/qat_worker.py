"""Run under torchrun (or alone): QAT of the tiny run's checkpoint into OUT with SGD (see test_qat_runs.py)."""
import sys
from pathlib import Path

import torch

from edgehydra._io import atomic_write_bytes
from edgehydra.calibration.quant_stages import QuantJob, qat_run
from edgehydra.train import TrainConfig, init_distributed

src, out, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
init_distributed()
torch.manual_seed(0)
torch.set_num_threads(1)
out.mkdir(parents=True, exist_ok=True)
if not (out / "run.json").exists() and (src / "run.json").exists():
    # both ranks may get here: each writes the whole record atomically, so neither reads a half-copied one
    atomic_write_bytes(out / "run.json", (src / "run.json").read_bytes())
# SGD: its update is proportional to the gradient, so 2 ranks vs one process compares gradients (Adam's
# first steps are ~lr*sign(g), which amplifies tiny differences); see tests/test_distributed.py
cfg = TrainConfig(epochs=1, batch_size=batch, lr_encoder=1e-2, lr_decoder=1e-2, optimizer="sgd", seed=0)
qat_run(src / "fp32.pt", out, cfg, QuantJob("w8a8", distill=False, calib_frames=8, val_limit=4, frames=16))
