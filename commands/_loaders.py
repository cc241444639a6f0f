"""Load an FP32 checkpoint or a quantised .pt2 program behind one callable."""
from __future__ import annotations

from pathlib import Path


def load_any(path) -> tuple:
    """(callable model, meta) where meta has 'config' (HydraConfig) and maybe 'size'."""
    path = Path(path)
    if path.suffix == ".pt2":
        from edgehydra.calibration.program import load_program

        prog = load_program(path)
        # a program carries the data settings it was quantised with (a .pt2 is no torch.load checkpoint to read them from)
        return prog.module, {"config": prog.config, "size": prog.size, "kind": "quantised", "data": prog.meta.get("data")}
    from edgehydra.checkpoint import load_checkpoint

    model, info = load_checkpoint(path)
    return model, {"config": model.config, "kind": "fp32", "info": info}
