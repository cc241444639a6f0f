"""Run under torchrun (or alone): train the tiny model briefly and save this rank's weights."""
import sys

import torch

from edgehydra import create_model
from edgehydra.data import SynthRoom, TrainAugment
from edgehydra.train import EpochAugmented, FitTask, TrainConfig, dist_info, fit, init_distributed

out, batch = sys.argv[1], int(sys.argv[2])
init_distributed()
rank, world = dist_info()
torch.manual_seed(0)
torch.set_num_threads(1)
size = (64, 96)
m = create_model("hydranet_tiny", input_size=size)
if rank == 0:
    torch.save(m.state_dict(), f"{out}/init.pt")
ds = EpochAugmented(SynthRoom(16, size=size, seed=1), TrainAugment(size), seed=0)
# SGD: its update is proportional to the gradient, so DDP vs one process compares gradients (Adam's
# first steps are ~lr*sign(g), which amplifies tiny differences)
fit(m, ds, TrainConfig(epochs=1, batch_size=batch, lr_encoder=1e-2, lr_decoder=1e-2, optimizer="sgd"),
    FitTask(m.config.tasks, 40, 10, drop_last=True))
torch.save(m.state_dict(), f"{out}/rank{rank}_of{world}.pt")
