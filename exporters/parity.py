"""Parity: an artifact's outputs against its PyTorch reference, per task, within a tolerance.

One policy for export, verify, bench and the reference-I/O checks on a device: what an artifact is compared
with (its quantised program, or the FP32 model), the per-task figures (max/mean error, segmentation argmax
agreement, depth relative error) and the limits per precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from edgehydra.errors import EdgeHydraError


@dataclass(frozen=True)
class Tolerance:
    """Parity limits against the PyTorch reference, per precision (configurable on the CLI)."""

    min_argmax_agreement: float
    max_depth_rel_err: float

    def __post_init__(self):
        if not 0 <= self.min_argmax_agreement <= 1:
            raise ValueError(f"min_argmax_agreement={self.min_argmax_agreement}: between 0 and 1")
        if self.max_depth_rel_err < 0:
            raise ValueError(f"max_depth_rel_err={self.max_depth_rel_err}: >= 0")


# fp32 artifacts against FP32 PyTorch should agree to float rounding; fp16 loses ~3 decimal
# digits; int8 artifacts are compared with the converted pt2e program (same integer maths, but
# kernels round differently), weight-only int8 against FP32.
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(0.999, 1e-3),
    "fp16": Tolerance(0.98, 2e-2),
    "int8": Tolerance(0.95, 5e-2),
    "w8": Tolerance(0.95, 5e-2),
    # an int8 artifact quantised by its backend's own quantizer (LiteRT) has no PyTorch program with the
    # same integer maths: it is compared with the FP32 model, so the limits include quantisation error.
    "int8_vs_fp32": Tolerance(0.85, 1e-1),
}


def run_outputs(fn: Callable, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        outs = fn(torch.from_numpy(x))
    return [o.detach().float().numpy() if isinstance(o, torch.Tensor) else np.asarray(o, np.float32) for o in outs]


def run_batched(runner: Callable, frames: np.ndarray, batch: int) -> list[np.ndarray]:
    """Artifacts have a fixed batch size: feed ``frames`` in chunks of it and concatenate."""
    chunks = [runner(frames[i:i + batch]) for i in range(0, len(frames), batch)]
    return [np.concatenate([np.asarray(c[k], np.float32) for c in chunks]) for k in range(len(chunks[0]))]


def parity(ref: list[np.ndarray], got: list[np.ndarray], names: tuple[str, ...]) -> dict:
    """Per output: max/mean abs error; segm argmax agreement; depth relative error."""
    if len(ref) != len(got):
        raise EdgeHydraError(f"artifact returned {len(got)} outputs, the reference {len(ref)}")
    res = {}
    for name, a, b in zip(names, ref, got):
        b = np.asarray(b, np.float32).reshape(a.shape) if b.size == a.size else b
        if a.shape != b.shape:
            raise EdgeHydraError(f"output {name}: artifact shape {b.shape}, reference {a.shape}")
        d = np.abs(a - b)
        r = {"max_abs_err": float(d.max()), "mean_abs_err": float(d.mean())}
        if name == "segm":
            r["argmax_agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
        if name == "depth":
            r["depth_rel_err"] = float(d.mean() / max(float(np.abs(a).mean()), 1e-6))
        res[name] = r
    return res


def within(par: dict, tol: Tolerance) -> list[str]:
    fails = []
    if par["segm"]["argmax_agreement"] < tol.min_argmax_agreement:
        fails.append(f"segm argmax agreement {par['segm']['argmax_agreement']:.4f} < {tol.min_argmax_agreement}")
    if par["depth"]["depth_rel_err"] > tol.max_depth_rel_err:
        fails.append(f"depth relative error {par['depth']['depth_rel_err']:.4g} > {tol.max_depth_rel_err}")
    return fails


# What an artifact's outputs are compared with (one policy, used by export, verify and bench):
REFERENCES = {"program": "the quantised pt2e program it was converted from (same integer maths)",
              "fp32": "the FP32 PyTorch model"}


def reference_kind(precision: str, facts: dict) -> str:
    """int8 artifacts built from the run's program are compared with that program; an artifact quantised
    by its backend's own quantizer (facts["quantised_by"]), and every float artifact, with FP32."""
    return "program" if precision == "int8" and "quantised_by" not in facts else "fp32"


def default_tolerance(precision: str, kind: str) -> Tolerance:
    return DEFAULT_TOLERANCES["int8_vs_fp32" if (precision == "int8" and kind == "fp32") else precision]


def check_parity(runner: Callable, ref_fn: Callable, kind: str, frames: np.ndarray, batch: int, tasks, tol: Tolerance
                 ) -> dict:
    """Run ``frames`` through the artifact and its reference; the verification record of a manifest."""
    ref = run_outputs(ref_fn, frames)
    got = run_batched(runner, frames, batch)
    par = parity(ref, got, tasks)
    return {"parity": par, "frames": int(frames.shape[0]), "tolerance": vars(tol), "reference_kind": kind,
            "reference": REFERENCES[kind], "failures": within(par, tol)}
