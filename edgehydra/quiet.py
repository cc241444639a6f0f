"""Keep third-party import-time log lines out of users' terminals (the CLI's ``--debug`` keeps them)."""
from __future__ import annotations

import logging
import warnings


def quiet_imports():
    """torchao prints 'Failed to load ..._C_mxfp8...' for CUDA-only kernels on every import (and
    executorch imports torchao); those kernels are irrelevant on CPU; and torch's pytree deprecation warning."""
    for name in ("torchao", "torchao.kernel", "torchao.ops", "absl", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet_torch_warnings()


def quiet_torch_warnings():
    """torch's own pytree deprecation, raised inside torch.export and when a graph is deep-copied (the mixed search
    copies one per trial): nothing in the user's code to change."""
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
