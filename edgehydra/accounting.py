"""Per-layer MACs, parameters, weight and activation bytes, counted from the real model.

Forward hooks on every leaf module record what actually ran at the given input size:

- ``macs``: multiply-accumulates of convolutions, ``N * Cout * Hout * Wout * (Cin / groups) * kh * kw``
  (+ nothing for the bias). Only convolutions carry MACs; everything else is counted as
  ``other_ops`` (one op per output element for BN, ReLU6, adds and upsampling; 25 comparisons per
  output element for a 5x5 max-pool). BN is folded into the conv at export, so it is not a real
  cost on device; we still list it so nothing is hidden.
- ``weight_bytes``: parameters x bytes per element at the chosen precision (BN parameters are
  folded away, so they are not counted as weights on device).
- ``act_in_bytes`` / ``act_out_bytes``: input and output activations x bytes per element: the
  traffic a layer causes when activations do not stay in cache (what the roofline needs).

Why 5.94 G MACs and not the paper's "about 6.5 GFLOPs" for HydraNet at 480x640: the paper's figure
is multiply-adds (a MAC counted once, as most CNN papers of 2019 do), and it includes the CRP
max-pools. Counted here on the real model: convolutions 5.940 G MACs + the sixteen 5x5 max-pools
0.653 G comparisons = 6.593 G; BN, ReLU6, adds and bilinear upsampling add only 0.18 G more.
``docs/flops.md`` shows the breakdown and the command that prints it.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn

from .graph import node_module, node_module_path  # noqa: F401  (node_module: callers read it here too)

BYTES = {"fp32": 4, "fp16": 2, "int8": 1, "int16": 2}


@dataclass
class LayerCost:
    name: str
    kind: str
    out_shape: tuple[int, ...]
    macs: int
    other_ops: int
    params: int
    weight_bytes: int
    act_in_bytes: int
    act_out_bytes: int
    op_class: str = ""  # the per-op profiles' class (devices/estimate.py layer_rows fills it)

    @property
    def bytes_moved(self) -> int:
        return self.weight_bytes + self.act_in_bytes + self.act_out_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out_shape"] = list(self.out_shape)
        return d


def _numel(t) -> int:
    return int(t.numel()) if isinstance(t, torch.Tensor) else 0


def count_layers(model: nn.Module, size: tuple[int, int], precision: str = "fp32", batch: int = 1) -> list[LayerCost]:
    """Run one forward pass at ``size`` and return the cost of every leaf module, in execution order.

    Element-wise adds in forward() are not modules; they are attributed to the module that
    consumes their result (see ``_functional_extra``), so totals include them.

    The counts depend on the architecture, the size and the batch only (never on the weights), so they are counted
    once per architecture and size in a process and handed out as fresh rows: a check of one profile asks for them
    once per artifact and assignment, and each count exports the model (twice above 64x64, with ``guard_size``):
    115 s of one `sensitivity --apply` test's 686 s on the tiny model (AMD EPYC Zen 3).
    """
    if precision not in BYTES:
        raise ValueError(f"precision={precision!r}: choose one of {sorted(BYTES)}")
    key = (structure_key(model), tuple(int(v) for v in size), int(batch))
    counted = _COUNTED.get(key)
    if counted is None:
        counted = _count_elements(model, tuple(size), batch)
        if len(_COUNTED) >= 32:  # a process sees a few architectures and sizes; bound it all the same
            _COUNTED.pop(next(iter(_COUNTED)))
        _COUNTED[key] = counted
    b = BYTES[precision]
    return [replace(r, weight_bytes=r.weight_bytes * b, act_in_bytes=r.act_in_bytes * b, act_out_bytes=r.act_out_bytes * b)
            for r in counted]


_COUNTED: dict[tuple, list[LayerCost]] = {}


def structure_key(model: nn.Module) -> str:
    """What the counts depend on: the model's class, its config (tasks, classes: what forward() does) and every
    module with its hyper-parameters and parameter shapes (a folded or edited model is another structure)."""
    parts = [type(model).__qualname__, repr(getattr(model, "config", None)), repr(model)]
    parts += [f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters()]
    parts += [f"{n}:{getattr(m, 'counted_in_graph', False)}:{getattr(m, 'clamp', False)}" for n, m in model.named_modules()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _count_elements(model: nn.Module, size: tuple[int, int], batch: int) -> list[LayerCost]:
    """count_layers' rows with one byte per element (scaled to the precision by the caller)."""
    guard_size(model, size, batch)
    b = 1
    rows: list[LayerCost] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(mod, inputs, output):
        x = inputs[0]
        if getattr(mod, "counted_in_graph", False):  # model.Fuse/Sum/Upsample: functional ops, counted from the graph,
            if not getattr(mod, "clamp", False):     # except a fusion's ReLU6 clamp, counted as the module it was
                return
            x = output
        out_el = _numel(output)
        macs, other = 0, 0
        params = sum(p.numel() for p in mod.parameters(recurse=False))
        wbytes = params * b
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            macs = out_el * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.MaxPool2d):
            k = mod.kernel_size if isinstance(mod.kernel_size, int) else mod.kernel_size[0]
            other = out_el * k * k
        else:
            other = out_el
            if isinstance(mod, nn.BatchNorm2d):
                wbytes = 0  # folded into the preceding conv on every export target
        kind = "ReLU6" if getattr(mod, "clamp", False) else type(mod).__name__
        rows.append(LayerCost(names.get(mod, type(mod).__name__), kind, tuple(output.shape), macs, other,
                              params, wbytes, _numel(x) * b, out_el * b))

    handles = [m.register_forward_hook(hook) for m in model.modules() if len(list(m.children())) == 0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(batch, 3, *size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    rows.extend(_functional_extra(model, size, batch, b))
    return rows


def _functional_extra(model: nn.Module, size, batch: int, b: int) -> list[LayerCost]:
    """Adds, residual sums and upsamplings written in forward() rather than as modules.

    Counted from torch.export's graph of the real model, so they follow the code, not a formula.
    """
    from torch.export import export

    was_training = model.training
    model.eval()
    try:
        ep = export(model, (torch.zeros(batch, 3, *size),), strict=False)
    finally:
        model.train(was_training)
    rows = []
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        if not any(s in name for s in ("aten.add", "upsample_bilinear", "aten.mul")):
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        el = val.numel()
        ins = sum(a.meta["val"].numel() for a in node.args if hasattr(a, "meta") and isinstance(a.meta.get("val"), torch.Tensor))
        kind = "Upsample" if "upsample" in name else "Add"
        # bilinear: 4 taps, 3 lerps ~ 7 ops per output element; add: 1
        ops = el * (7 if kind == "Upsample" else 1)
        # named by the module the op belongs to ("fuse3", "crp2.0.sum", "layer3.1"), else by its node
        rows.append(LayerCost(node_module_path(node) or f"{kind.lower()}:{node.name}", kind, tuple(val.shape), 0, ops, 0, 0, ins * b, el * b))
    return rows


_REF = (64, 64)


def available_bytes() -> int:
    """Memory this process can still allocate (MemAvailable), or a large number where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62


def guard_size(model: nn.Module, size: tuple[int, int], batch: int = 1) -> None:
    """Refuse, before allocating anything, a size whose forward pass cannot fit in memory.

    Activations scale with H x W, so the bytes of the largest layer (input + output, fp32 as the
    counting pass runs) are counted once at 64x64 and scaled; the pass also keeps that layer's
    input alive for its skip connections, so twice that is the least a forward at ``size`` needs."""
    h, w = size
    if h * w <= _REF[0] * _REF[1]:
        return
    ref = summarize(count_layers(model, _REF, "fp32", 1))
    need = 2 * ref["peak_act_bytes"] * (h * w) / (_REF[0] * _REF[1]) * batch
    have = available_bytes()
    if need > have:
        from .errors import BadInputError

        raise BadInputError(f"{h}x{w} needs at least {need / 2**30:.1f} GiB for its largest layer's activations; "
                            f"{have / 2**30:.1f} GiB are available: choose a smaller --size")


def summarize(rows: list[LayerCost]) -> dict:
    return {
        "macs": sum(r.macs for r in rows),
        "other_ops": sum(r.other_ops for r in rows),
        "params": sum(r.params for r in rows),
        "weight_bytes": sum(r.weight_bytes for r in rows),
        "act_bytes": sum(r.act_out_bytes for r in rows),
        "bytes_moved": sum(r.bytes_moved for r in rows),
        "peak_act_bytes": max((r.act_in_bytes + r.act_out_bytes for r in rows), default=0),
    }


def model_info(model: nn.Module, size: tuple[int, int], precision: str = "fp32") -> dict:
    rows = count_layers(model, size, precision)
    s = summarize(rows)
    s["flops_total"] = 2 * s["macs"] + s["other_ops"]
    s.update(size=list(size), precision=precision, layers=[r.to_dict() for r in rows])
    return s
