"""A throwaway export target for tests/test_registry.py: TorchScript, verified with torch.jit.load.

It is everything a new target needs: one module with a TARGET record, and one registry line."""
import numpy as np
import torch

from edgehydra.exporters.target import ExportTarget


def build(source, req, path):
    x = torch.zeros(req.batch, 3, *req.size)
    with torch.no_grad():
        torch.jit.trace(source.fp32.eval(), (x,), strict=False).save(str(path))
    return {"tools": ()}


def load_runner(path, manifest):
    m = torch.jit.load(str(path)).eval()

    def run(x: np.ndarray):
        with torch.no_grad():
            return [o.numpy() for o in m(torch.from_numpy(np.ascontiguousarray(x)))]

    return run


TARGET = ExportTarget(name="torchscript", suffix=".ts", precisions=("fp32",), runtime="torch.jit", extra="",
                      packages=("torch",), build=build, load_runner=load_runner)
