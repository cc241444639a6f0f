import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (pyproject addopts: -n 2) each of the two workers keeps to one core; alone, two threads.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
# One ExecuTorch lowering cache for the session (exporters/build_cache.py), shared by both xdist workers and the CLI
# subprocesses, which inherit the environment from the process that set it: many files lower the tiny run's
# programs. A fresh folder, never the user's own cache; EDGEHYDRA_CACHE set by hand (a folder, or off) is kept.
if "EDGEHYDRA_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["EDGEHYDRA_CACHE"] = tempfile.mkdtemp(prefix="edgehydra-test-lowered-")
    atexit.register(shutil.rmtree, os.environ["EDGEHYDRA_CACHE"], True)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLES = SHARED / "samples"
REFERENCE = SHARED / "reference"


@pytest.fixture
def tiny():
    from edgehydra import create_model

    torch.manual_seed(0)
    return create_model("hydranet_tiny").eval()


def need_samples():
    if not (SAMPLES / "nyud" / "000433.png").is_file():
        pytest.skip(f"real sample frames not found at {SAMPLES}")


def need_reference():
    if not (REFERENCE / "drsleep_nyud_joint_state_dict_shapes.json").is_file():
        pytest.skip(f"reference shape lists not found at {REFERENCE}")


TINY_SIZE = (64, 96)
# An estimated device for the mixed-precision tests: int8 5x faster than float per layer, budgets that only
# the searches' own relative budgets bind. Variants change a rate or the format by .replace().
STAND_IN_NPU = f"""
name = "edge_npu_test"
description = "An int8 accelerator stand-in for tests (estimated latency)"
kind = "phone-npu"
format = "executorch"
precision = "int8"
compute_unit = "NPU"
int8_tops = 10.0
fp16_tflops = 2.0
fp32_tflops = 2.0
bandwidth_gbs = 1000.0
threads = 1
compute_efficiency = 0.5
bandwidth_efficiency = 1.0
overhead_ms = 0.1

[budgets]
input_size = [{TINY_SIZE[0]}, {TINY_SIZE[1]}]
latency_p50_ms = 100.0
latency_p90_ms = 130.0
max_gmacs = 10.0
max_artifact_mb = 20.0
max_peak_memory_mb = 1024.0
min_miou = 0.0
max_depth_rmse = 100.0
max_abs_rel = 100.0
"""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A whole small run: tiny model trained on synthroom, PTQ program. Shared by the slower tests."""
    from edgehydra.calibration.quant_stages import QuantJob, ptq_run
    from edgehydra.dataspec import data_settings
    from edgehydra.fp32_stage import train_run
    from edgehydra.train import TrainConfig

    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    train_run(out, data_settings("synthroom", TINY_SIZE, 32, 8), "hydranet_tiny", TrainConfig(epochs=2, batch_size=8))
    ptq_run(out / "fp32.pt", out, QuantJob("w8a8", calib_frames=8))
    return out


def weight_harmed_run(tiny_run, root: Path) -> Path:
    """A copy of the tiny run whose depth head is harmful to int8 *weights*: one input channel of the depth
    conv gets a weight 1000x the others, on a channel its depthwise pre-layer zeroes (FP32 unchanged). The
    depth conv has one output channel, so its per-channel int8 scale is set by that weight and every other
    weight rounds to zero: int8 depth collapses to its bias; float (fp32 or fp16) on depth recovers it."""
    import shutil

    from edgehydra.checkpoint import load_checkpoint, save_checkpoint

    run = root / "run"
    run.mkdir(parents=True)
    for f in ("fp32.pt", "run.json"):
        if (tiny_run / f).is_file():
            shutil.copy(tiny_run / f, run / f)
    model, info = load_checkpoint(run / "fp32.pt")
    with torch.no_grad():
        model.pre_depth.weight[0] = 0.0  # channel 0 of relu(pre_depth) is always 0 ...
        model.depth.weight[:, 0] = 1000.0 * model.depth.weight.abs().max()  # ... so FP32 ignores this weight
    save_checkpoint(model, run / "fp32.pt", provenance=info.get("provenance"))
    return run


def activation_harmed_run(tiny_run, root: Path) -> Path:
    """A copy of the tiny run whose depth head is harmful to int8 *activations*: relu(pre_depth) gets one
    channel saturated at 6 (its depth weights zero) while the others are scaled down 100x (depth's weights
    up 100x), so the tensor's int8 step (6/255) is above most of its values; int16's (6/32767) is not. FP32
    is unchanged up to rounding; W8A16 on depth (its input quantised int16 where it is made) recovers it,
    float on depth alone does not (it still reads the int8 tensor)."""
    import shutil

    from edgehydra.checkpoint import load_checkpoint, save_checkpoint

    run = root / "run"
    run.mkdir(parents=True)
    for f in ("fp32.pt", "run.json"):
        shutil.copy(tiny_run / f, run / f)
    model, info = load_checkpoint(run / "fp32.pt")
    with torch.no_grad():
        model.pre_depth.weight.mul_(0.01)
        model.pre_depth.weight[0] = 1000.0
        model.depth.weight.mul_(100.0)
        model.depth.weight[:, 0] = 0.0
    save_checkpoint(model, run / "fp32.pt", provenance=info.get("provenance"))
    return run


# The longest files first, longest first: with `-n 2 --dist loadfile` each worker starts on one of the two
# longest and the shorter files fill in behind them, instead of a long file starting last while the other worker
# idles. By the last full run's file times (docs/RESULTS.md, AMD EPYC Zen 3): test_mixed.py 820 s, test_demo.py
# 806 s, test_exporters.py 781 s, test_mixed_host.py 464 s, test_devices.py 376 s, test_calibration.py 315 s.
LONGEST_FIRST = ("tests/test_mixed.py", "tests/test_demo.py", "tests/test_exporters.py", "tests/test_mixed_host.py",
                 "tests/test_devices.py", "tests/test_calibration.py")


def pytest_collection_modifyitems(session, config, items):
    def rank(it):
        f = it.nodeid.split("::")[0]
        return LONGEST_FIRST.index(f) if f in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
