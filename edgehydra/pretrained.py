"""An ImageNet MobileNet-v2 state dict (torchvision's or timm's key layout) mapped onto HydraNet's encoder.

The authors start training from an ImageNet MobileNet-v2; nothing can be downloaded here, so the user
brings the file (``torchvision.models.mobilenet_v2(weights=...).state_dict()`` or timm's
``mobilenetv2_100``). HydraNet's encoder is the published one (light-weight-refinenet's MobileNet-v2):

    layer1                    stem conv 3x3/2 + BN + ReLU6
    layerL.i.output.{0,1,2}   1x1 expand, 3x3 depthwise, 1x1 project (each conv + BN)

torchvision: ``features.0.{0,1}`` stem, ``features.k.conv.{0.0,0.1,1.0,1.1,2,3}`` (t = 6),
``features.1.conv.{0.0,0.1,1,2}`` (t = 1: no expand conv). timm: ``conv_stem``/``bn1``,
``blocks.s.j.{conv_pw,bn1,conv_dw,bn2,conv_pwl,bn3}``, ``blocks.0.0.{conv_dw,bn1,conv_pw,bn2}`` (t = 1).

The published encoder keeps a 1x1 expand conv in the first block even at t = 1, which ImageNet
MobileNet-v2 has not. It is set to the identity (weight = I, BN gamma 1, beta 0, mean 0, var 1 - eps):
exact, because its input is the stem's ReLU6 output, already in [0, 6], and it ends in ReLU6 too.
The 1280-wide head conv and the classifier are not part of the encoder and are reported as unused.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import BadInputError

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _blocks(model) -> list[tuple[str, int]]:
    """(module path, expansion, stage index, index in stage) of every inverted residual block, in order."""
    out = []
    for li in range(2, 9):
        seq = getattr(model, f"layer{li}", None)
        if seq is None:
            continue
        for i, blk in enumerate(seq):
            cin = blk.output[0][0].in_channels
            mid = blk.output[0][0].out_channels
            out.append((f"layer{li}.{i}", mid // cin, li - 2, i))
    return out


def _conv_bn(ours: str, conv: str, bn: str) -> dict:
    m = {f"{ours}.0.weight": f"{conv}.weight"}
    m.update({f"{ours}.1.{k}": f"{bn}.{k}" for k in BN})
    return m


def key_map(model, layout: str) -> tuple[dict, list[str]]:
    """(our key -> their key, our blocks whose expand conv has no counterpart) for ``layout``."""
    m: dict = {}
    identity = []
    if layout == "torchvision":
        m.update(_conv_bn("layer1", "features.0.0", "features.0.1"))
        for k, (path, t, _, _) in enumerate(_blocks(model), start=1):
            f = f"features.{k}.conv"
            if t == 1:
                identity.append(path)
                m.update(_conv_bn(f"{path}.output.1", f"{f}.0.0", f"{f}.0.1"))
                m.update(_conv_bn(f"{path}.output.2", f"{f}.1", f"{f}.2"))
            else:
                m.update(_conv_bn(f"{path}.output.0", f"{f}.0.0", f"{f}.0.1"))
                m.update(_conv_bn(f"{path}.output.1", f"{f}.1.0", f"{f}.1.1"))
                m.update(_conv_bn(f"{path}.output.2", f"{f}.2", f"{f}.3"))
    elif layout == "timm":
        m.update(_conv_bn("layer1", "conv_stem", "bn1"))
        for path, t, s, j in _blocks(model):
            b = f"blocks.{s}.{j}"
            if t == 1:
                identity.append(path)
                m.update(_conv_bn(f"{path}.output.1", f"{b}.conv_dw", f"{b}.bn1"))
                m.update(_conv_bn(f"{path}.output.2", f"{b}.conv_pw", f"{b}.bn2"))
            else:
                m.update(_conv_bn(f"{path}.output.0", f"{b}.conv_pw", f"{b}.bn1"))
                m.update(_conv_bn(f"{path}.output.1", f"{b}.conv_dw", f"{b}.bn2"))
                m.update(_conv_bn(f"{path}.output.2", f"{b}.conv_pwl", f"{b}.bn3"))
    else:
        raise ValueError(layout)
    return m, identity


def detect_layout(sd: dict) -> str | None:
    if any(k.startswith("features.0.0.") for k in sd):
        return "torchvision"
    if "conv_stem.weight" in sd:
        return "timm"
    return None


def _read(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"encoder weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise BadInputError(f"{path} is not a readable state dict: {str(e).splitlines()[0][:120]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BadInputError(f"{path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_encoder(model, path: Path) -> dict:
    """Copy an ImageNet MobileNet-v2's weights into ``model``'s encoder, in place. Returns the report:
    layout, matched / identity-initialised / unused keys. Refuses (nothing changed) a file whose layout is
    unknown or whose shapes do not fit, in one line."""
    sd = _read(path)
    layout = detect_layout(sd)
    if layout is None:
        raise BadInputError(f"{path}: neither torchvision's (features.0.0.weight) nor timm's (conv_stem.weight) "
                            f"MobileNet-v2 key layout; first keys: {list(sd)[:3]}")
    m, identity = key_map(model, layout)
    ours = model.state_dict()
    missing = sorted({theirs for theirs in m.values() if theirs not in sd and not theirs.endswith("num_batches_tracked")})
    if missing:
        raise BadInputError(f"{path} ({layout} layout) lacks {len(missing)} encoder key(s), e.g. {missing[0]}: "
                            "not a MobileNet-v2 with this encoder's depth")
    bad = [(o, tuple(sd[t].shape), tuple(ours[o].shape)) for o, t in m.items() if t in sd and sd[t].shape != ours[o].shape]
    if bad:
        o, got, want = bad[0]
        raise BadInputError(f"{path}: {len(bad)} encoder tensor(s) do not fit this model"
                            f" (e.g. {m[o]} is {list(got)}, {o} needs {list(want)}): another architecture or width")
    new = {o: sd[t].to(ours[o].dtype) for o, t in m.items() if t in sd}
    for path_ in identity:
        conv = f"{path_}.output.0.0.weight"
        c = ours[conv].shape[0]
        new[conv] = torch.eye(c).reshape(c, c, 1, 1)
        bn = f"{path_}.output.0.1"
        eps = dict(model.named_modules())[bn].eps
        new.update({f"{bn}.weight": torch.ones(c), f"{bn}.bias": torch.zeros(c),
                    f"{bn}.running_mean": torch.zeros(c), f"{bn}.running_var": torch.full((c,), 1 - eps)})
    model.load_state_dict(new, strict=False)
    used = set(m.values())
    unused = sorted(k for k in sd if k not in used)
    enc = [k for k in ours if k.startswith("layer") and not k.endswith("num_batches_tracked")]
    return {"file": str(path), "layout": layout, "matched": len([k for k in new if k in m]),
            "identity_expand_convs": identity, "encoder_keys": len(enc),
            "not_from_file": sorted(k for k in enc if k not in new),
            "unused_in_file": unused}
