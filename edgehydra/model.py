"""HydraNet: MobileNet-v2 encoder + Light-Weight RefineNet decoder + per-task heads.

Faithful to Nekrasov et al., ICRA 2019 and the authors' multi-task-refinenet code: every module
name below is the one in the published checkpoints (see ../shared/reference/*_shapes.json), so
``load_state_dict(strict=True)`` works on them unchanged.

The forward pass is plain tensor code (no training-only branches, no Python-side state) so that
``torch.export`` and the pt2e quantisation flow see one static graph.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

TASKS = ("segm", "depth", "normals")
# Module names of each task's two head layers in the published code ("normals" -> "normal").
_HEAD_NAMES = {"segm": ("pre_segm", "segm"), "depth": ("pre_depth", "depth"), "normals": ("pre_normal", "normal")}
# The published code registers depth before segm; keep that order so state_dict keys line up.
_HEAD_ORDER = ("depth", "segm", "normals")

# MobileNet-v2 [t, c, n, s] table without the final 1280 conv (Sandler et al. 2018, table 2).
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class HydraConfig:
    """Architecture and metadata of one HydraNet. Validated on construction."""

    num_classes: int = 40
    tasks: tuple[str, ...] = ("segm", "depth")
    encoder: tuple[tuple[int, int, int, int], ...] = MOBILENET_V2
    stem_channels: int = 32
    decoder_channels: int = 256
    crp_stages: int = 4
    class_names: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int] = (480, 640)  # (H, W) the model was trained at
    depth_cap: float = 10.0  # metres; 10 for NYUDv2, 80 for KITTI (evaluation cap)
    dataset: str = "nyud"

    def __post_init__(self):
        if "segm" not in self.tasks or "depth" not in self.tasks:
            raise ValueError(f"tasks={self.tasks!r}: HydraNet needs at least 'segm' and 'depth' (optionally 'normals')")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"tasks: unknown {unknown}; allowed {list(TASKS)}")
        object.__setattr__(self, "tasks", tuple(t for t in TASKS if t in self.tasks))
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes}: must be >= 1")
        if len(self.encoder) != 7:
            raise ValueError(f"encoder: needs 7 [t, c, n, s] rows (layer2..layer8), got {len(self.encoder)}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for num_classes={self.num_classes}")
        if len(self.input_size) != 2 or min(self.input_size) < 32:
            raise ValueError(f"input_size={self.input_size}: expected (H, W) with both >= 32")
        object.__setattr__(self, "encoder", tuple(tuple(int(v) for v in row) for row in self.encoder))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def replace(self, **kw) -> "HydraConfig":
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "HydraConfig":
        known = {f for f in cls.__dataclass_fields__}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"model config: unknown keys {extra}")
        kw = dict(d)
        if "encoder" in kw:
            kw["encoder"] = tuple(tuple(r) for r in kw["encoder"])
        for k in ("tasks", "class_names", "mean", "std", "input_size"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


def conv1x1(cin: int, cout: int, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, 1, 0, bias=bias, groups=groups)


def conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)


def convbnrelu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=1e-5)]
    if act:
        layers.append(nn.ReLU6(inplace=False))
    return nn.Sequential(*layers)


class InvertedResidualBlock(nn.Module):
    """MobileNet-v2 block; the 1x1 expand conv exists even when t = 1 (as in the published code)."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        mid = cin * expansion
        self.residual = cin == cout and stride == 1
        self.output = nn.Sequential(
            convbnrelu(cin, mid, 1), convbnrelu(mid, mid, 3, stride=stride, groups=mid), convbnrelu(mid, cout, 1, act=False)
        )

    def forward(self, x):
        out = self.output(x)
        return out + x if self.residual else out


class Fuse(nn.Module):
    """The decoder's skip fusion: sum of its inputs, then ReLU6. A module with no parameters (the
    published checkpoints' keys are unchanged) so that the fusion has a name of its own ("fuse3"): a
    recipe can keep it float, the per-op profiles charge its add to it, and the precision map names it."""

    counted_in_graph = True  # accounting counts its adds from the exported graph; the clamp as a ReLU6
    clamp = True

    def forward(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return F.hardtanh(out, 0.0, 6.0)


class Sum(nn.Module):
    """An element-wise add with a name (a CRP block's chained residual sums: "crp2.0.sum")."""

    counted_in_graph = True

    def forward(self, a, b):
        return a + b


class Upsample(nn.Module):
    """Bilinear upsampling to a reference tensor's size, named like the CRP stage it upsamples ("up4")."""

    counted_in_graph = True

    def forward(self, x, like):
        return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


class CRPBlock(nn.Module):
    """Chained Residual Pooling: n x (maxpool 5x5 -> 1x1 conv), each added to the running sum."""

    def __init__(self, channels: int, n_stages: int, depthwise: bool):
        super().__init__()
        self.n_stages = n_stages
        for i in range(n_stages):
            setattr(self, f"{i + 1}_outvar_dimred", conv1x1(channels, channels, groups=channels if depthwise else 1))
        self.maxpool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        self.sum = Sum()

    def forward(self, x):
        top = x
        for i in range(self.n_stages):
            top = self.maxpool(top)
            top = getattr(self, f"{i + 1}_outvar_dimred")(top)
            x = self.sum(top, x)
        return x


class HydraNet(nn.Module):
    """Joint segmentation + depth (+ normals) network. Outputs are at 1/4 of the input size."""

    def __init__(self, config: HydraConfig | None = None):
        super().__init__()
        self.config = cfg = config or HydraConfig()
        cin = cfg.stem_channels
        self.layer1 = convbnrelu(3, cin, 3, stride=2)
        channels = []
        for li, (t, c, n, s) in enumerate(cfg.encoder, start=2):
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidualBlock(cin, c, t, s if i == 0 else 1))
                cin = c
            setattr(self, f"layer{li}", nn.Sequential(*blocks))
            channels.append(c)
        d = cfg.decoder_channels
        # channels[k] is the output width of layer{k+2}; conv8..conv3 read layer8..layer3.
        for li in (8, 7, 6, 5, 4, 3):
            setattr(self, f"conv{li}", conv1x1(channels[li - 2], d))
        self.crp4 = nn.Sequential(CRPBlock(d, cfg.crp_stages, depthwise=False))
        self.crp3 = nn.Sequential(CRPBlock(d, cfg.crp_stages, depthwise=False))
        self.crp2 = nn.Sequential(CRPBlock(d, cfg.crp_stages, depthwise=False))
        self.crp1 = nn.Sequential(CRPBlock(d, cfg.crp_stages, depthwise=True))
        self.conv_adapt4 = conv1x1(d, d)
        self.conv_adapt3 = conv1x1(d, d)
        self.conv_adapt2 = conv1x1(d, d)
        # the decoder's fusions and upsamplings as parameterless modules, so each has a name (model.op_units)
        for k in (4, 3, 2, 1):
            setattr(self, f"fuse{k}", Fuse())
        for k in (4, 3, 2):
            setattr(self, f"up{k}", Upsample())
        for task in _HEAD_ORDER:
            if task in cfg.tasks:
                pre, last = _HEAD_NAMES[task]
                out = {"segm": cfg.num_classes, "depth": 1, "normals": 3}[task]
                setattr(self, pre, conv1x1(d, d, groups=d))
                setattr(self, last, conv3x3(d, out, bias=True))
        self.relu = nn.ReLU6(inplace=False)
        self._init_weights()

    def _init_weights(self):
        # Convs keep PyTorch's default init (uniform, std 1/sqrt(3 fan_in)): each layer slightly
        # shrinks the signal. The published N(0, 0.01) assumed an ImageNet encoder and starves the
        # BN-free decoder from scratch; He init overflows its CRP sums into ReLU6's flat top (no gradient).
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Last layer of each head: small weights (the published N(0, 0.01)) so outputs start near
        # their bias; depth starts at 2.5 m, because berHu sees relu(pred) and a head that starts
        # negative gets no gradient at all (a dead head).
        for task in self.config.tasks:
            last = getattr(self, _HEAD_NAMES[task][1])
            nn.init.normal_(last.weight, std=0.01)
            nn.init.constant_(last.bias, 2.5 if task == "depth" else 0.0)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.config.tasks

    def forward(self, x: torch.Tensor):
        x = self.layer1(x)
        x = self.layer2(x)
        l3 = self.layer3(x)  # 1/4
        l4 = self.layer4(l3)  # 1/8
        l5 = self.layer5(l4)  # 1/16
        l6 = self.layer6(l5)  # 1/16
        l7 = self.layer7(l6)  # 1/32
        l8 = self.layer8(l7)  # 1/32
        l7 = self.fuse4(self.conv8(l8), self.conv7(l7))
        l7 = self.up4(self.conv_adapt4(self.crp4(l7)), l6)
        l5 = self.fuse3(self.conv5(l5), self.conv6(l6), l7)
        l5 = self.up3(self.conv_adapt3(self.crp3(l5)), l4)
        l4 = self.fuse2(l5, self.conv4(l4))
        l4 = self.up2(self.conv_adapt2(self.crp2(l4)), l3)
        l3 = self.crp1(self.fuse1(self.conv3(l3), l4))
        outs = []
        for task in self.config.tasks:
            pre, last = _HEAD_NAMES[task]
            outs.append(getattr(self, last)(self.relu(getattr(self, pre)(l3))))
        return tuple(outs)

    def example_inputs(self, batch: int = 1, size: Sequence[int] | None = None) -> tuple[torch.Tensor]:
        h, w = size or self.config.input_size
        return (torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0)),)

    def op_units(self) -> list[str]:
        """Names of the decoder's parameterless op modules (fusions, upsamplings, CRP sums), in module order:
        the quantisable units that are not convolutions."""
        return [n for n, m in self.named_modules() if getattr(m, "counted_in_graph", False)]

    def head_layer_names(self) -> list[str]:
        """Names of every task head layer (pre_X and X), e.g. for keeping heads in float."""
        return [n for t in self.config.tasks for n in _HEAD_NAMES[t]]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def normalize(images_uint8_or_float: torch.Tensor, config: HydraConfig) -> torch.Tensor:
    """RGB image(s) in [0, 255] (N,3,H,W or 3,H,W) -> the model's normalised float input."""
    x = images_uint8_or_float.float() / 255.0
    shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(config.mean).view(shape)
    std = torch.tensor(config.std).view(shape)
    return (x - mean) / std
