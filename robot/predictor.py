"""One frame through a deployed artifact (or the FP32 model), in the three timed steps a robot's node runs:
preprocess (resize to the network's input, normalise), inference (the artifact's own runtime), postprocess
(upsample the heads to the input size; labels, softmax confidence, depth in metres, unit normals).

Preprocessing is the reference's: the same normalise-then-bilinear resize as `predict` and parity, so what a
stream records is what the exported artifact was verified on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from edgehydra.model import HydraConfig, normalize


@dataclass
class Predictor:
    name: str
    forward: Callable  # numpy (1, 3, H, W) float32 -> list of arrays, one per task
    config: HydraConfig
    size: tuple[int, int]
    sha256: str | None = None
    target: str = "pytorch"
    precision: str = "fp32"

    @classmethod
    def of_artifact(cls, art) -> Predictor:
        return cls(art.path.name, art.runner, art.config, tuple(art.size), art.manifest.get("sha256"), art.target,
                   art.precision)

    @classmethod
    def of_model(cls, model, size, name: str = "fp32") -> Predictor:
        model = model.eval()

        def fwd(x: np.ndarray):
            with torch.no_grad():
                return [o.numpy() for o in model(torch.from_numpy(x))]

        return cls(name, fwd, model.config, tuple(size))

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network's input (1, 3, H, W) float32 and the rgb8 image at that size (what a robot is sent)."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
        if tuple(rgb.shape[:2]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        small = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        return normalize(x, self.config).numpy().astype(np.float32), small

    def postprocess(self, outs) -> dict:
        res = {}
        for task, o in zip(self.config.tasks, outs):
            t = torch.as_tensor(np.asarray(o, np.float32))
            if tuple(t.shape[-2:]) != self.size:
                t = F.interpolate(t, size=self.size, mode="bilinear", align_corners=False)
            if task == "segm":
                p = torch.softmax(t[0], 0)
                conf, lab = p.max(0)
                res["segm"], res["confidence"] = lab.numpy().astype(np.uint8), conf.numpy()
            elif task == "depth":
                res["depth"] = t[0, 0].clamp(min=0).numpy()
            else:  # normals: the network's channels are camera-frame (x, z, y) (the authors' coding)
                n = F.normalize(t[0], dim=0)[[0, 2, 1]]
                res["normals"] = n.permute(1, 2, 0).contiguous().numpy()
        return res

    def __call__(self, rgb: np.ndarray) -> dict:
        x, _ = self.preprocess(rgb)
        return self.postprocess(self.forward(x))
