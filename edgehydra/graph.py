"""The graph vocabulary: what a node of an exported HydraNet graph is, in one place.

Every reader of a graph (the precision map, the debugger, the latency estimate, the per-op profiles, the
mixed-precision search, fp16 islands) names a node by the same three facts:

- its **module path** (``node_module_path``): the innermost ``nn.Module`` it came from, from
  ``nn_module_stack`` (``crp1.0``, ``segm``, ``fuse2``; '' for none);
- its **operator class** (``op_class``): conv, add, upsample, max_pool, ... from the aten op name;
- its **precision** (``node_precision``): int8 / int16 where its inputs arrive through ``dequantize``,
  ``w8`` for weight-only, else fp32;

and its HydraNet **stage** (``stage_of``): encoder, decoder, a task's head. It sits in the core layer so
calibration, exporters and devices read the graph alike without importing each other.

The runtimes' own operator names map onto one set of operator classes here too (``runtime_class``,
``xnnpack_class``): XNNPACK's ETDump events, onnxruntime's and LiteRT's profiles and the estimator's layer kinds
all say "depthwise conv", "max-pool", "convert (quantise/dequantise)", so per-op tables from any runtime, the
estimate and `check` compare class by class.
"""
from __future__ import annotations

import re

import torch

# aten op -> op class; everything else (relu6 clamps, reshapes) follows its producer
OP_CLASS = {"conv2d": "conv", "convolution": "conv", "linear": "linear", "add": "add", "mul": "mul",
            "upsample_bilinear2d": "upsample", "upsample_nearest2d": "upsample", "max_pool2d": "max_pool",
            "avg_pool2d": "avg_pool", "cat": "cat", "mean": "mean"}
# the decoder's op modules (HydraNet.op_units: fusions, upsamplings, CRP sums) by their aten op
UNIT_OPS = {"aten.add.Tensor": "add", "aten.upsample_bilinear2d.vec": "upsample",
            "aten.upsample_bilinear2d.default": "upsample"}
# ------------------------------------------------------------------ operator classes across runtimes
CONVERT = "convert (quantise/dequantise)"
LAYOUT = "transpose (layout)"
RUNTIME_CLASS = {
    # onnxruntime operator types (its profile's op_name)
    "onnx": {"Conv": "conv", "QLinearConv": "conv", "ConvInteger": "conv", "Add": "add", "QLinearAdd": "add",
             "MaxPool": "max-pool", "NhwcMaxPool": "max-pool", "Resize": "upsample", "QuantizeLinear": CONVERT,
             "DequantizeLinear": CONVERT, "Clip": "clamp", "Relu": "clamp", "Transpose": LAYOUT,
             "ReorderInput": LAYOUT, "ReorderOutput": LAYOUT, "Mul": "mul", "Concat": "concat"},
    # TFLite builtin operators (benchmark_model's op profile, the flatbuffer's opcodes)
    "tflite": {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise conv", "FULLY_CONNECTED": "1x1 conv",
               "ADD": "add", "MAX_POOL_2D": "max-pool", "RESIZE_BILINEAR": "upsample",
               "RESIZE_NEAREST_NEIGHBOR": "upsample", "QUANTIZE": CONVERT, "DEQUANTIZE": CONVERT, "TRANSPOSE": LAYOUT,
               "PAD": "pad", "RESHAPE": "reshape", "RELU6": "clamp", "RELU": "clamp", "CONCATENATION": "concat",
               "MUL": "mul"},
    # the accounting's layer kinds (devices/estimate.py); Conv2d is conv or depthwise conv by its groups
    "module": {"Add": "add", "MaxPool2d": "max-pool", "Upsample": "upsample"},
}
# XNNPACK's operator events in ExecuTorch's ETDump, by prefix ("Convolution (NHWC, QC8) DWConv #9")
XNNPACK_PREFIX = (("Fully Connected", "1x1 conv"), ("Add", "add"), ("Max Pooling", "max-pool"),
                  ("Resize", "upsample"), ("Convert", CONVERT))
# a quantised program's aten targets as the per-layer debugger names its probes (substring -> class)
PROBE_CLASS = (("conv", "conv"), ("add", "add"), ("max_pool", "pool"), ("avg_pool", "pool"),
               ("upsample", "upsample"), ("interpolate", "upsample"), ("cat", "concat"), ("mul", "mul"))
# the nn.Module class behind an aten op class (a TFLite tensor name carries the module's class)
LEAF_MODULE = {"conv": "Conv2d", "max_pool": "MaxPool2d", "avg_pool": "AvgPool2d", "linear": "Linear"}


def runtime_class(runtime: str, name: str) -> str:
    """The operator class of ``name`` in ``runtime``'s vocabulary (RUNTIME_CLASS); an unmapped name, lowercased."""
    return RUNTIME_CLASS[runtime].get(name, name.lower())


def xnnpack_class(event: str) -> str:
    """'Convolution (NHWC, QC8) DWConv #9' -> 'depthwise conv'."""
    if event.startswith("Convolution"):
        return "depthwise conv" if "DWConv" in event else "conv"
    cls = next((c for prefix, c in XNNPACK_PREFIX if event.startswith(prefix)), None)
    return cls or re.sub(r"\s*\(.*", "", event).lower()


_DTYPE_NAME = {torch.int8: "int8", torch.uint8: "int8", torch.int16: "int16"}
_CLAMPS = ("hardtanh", "relu", "clamp")


def node_module(node) -> tuple[str, str]:
    """(fully-qualified module name, module type name) of the innermost module a graph node came from
    (('', '') if none)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, typ = list(stack.values())[-1]
    typ = typ if isinstance(typ, str) else f"{typ.__module__}.{typ.__qualname__}"
    return str(path).removeprefix("L['self'].").replace("L__self___", ""), typ


def node_module_path(node) -> str:
    """The fully-qualified module name a graph node came from ('' if none)."""
    return node_module(node)[0]


def op_class(target) -> str | None:
    """'aten.conv2d.default' (and the edge dialect's '<EdgeOpOverload: aten.convolution.default>') -> 'conv'."""
    t = str(target)
    if "aten." not in t:
        return None
    return OP_CLASS.get(t.split("aten.", 1)[1].split(".")[0])


def dq_dtype(node) -> str | None:
    """The integer dtype a dequantize node reads ('int8', 'int16'), or None for anything else."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function" or "dequantize" not in str(node.target):
        return None
    for a in reversed(node.args):
        if isinstance(a, torch.dtype):
            return _DTYPE_NAME.get(a, str(a))
    return "int8"


def output_quantized(node) -> bool:
    """Every use of ``node``'s output is a quantize, looking through the clamp a fused add+ReLU6 ends in."""
    if not node.users:
        return False
    for u in node.users:
        t = str(u.target)
        if "quantize" in t and "dequantize" not in t:
            continue
        if any(c in t for c in _CLAMPS) and output_quantized(u):
            continue
        return False
    return True


def output_steps(gm, tasks) -> dict:
    """Per task, the int8 step of the program's output (the scale of the last dequantize on its path, looking
    back through float ops such as the final upsampling); None where the output is not quantised (a head a
    recipe keeps float). Differences between two runs of the same int8 file are counted in these steps."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    args = out.args[0] if isinstance(out.args[0], (tuple, list)) else (out.args[0],)
    steps = {}
    for task, node in zip(tasks, args):
        step = None
        while isinstance(node, torch.fx.Node) and node.op == "call_function":
            if "dequantize" in str(node.target):
                scale = node.args[1] if len(node.args) > 1 else None
                step = float(scale) if isinstance(scale, (int, float)) else None
                break
            node = next((a for a in node.args if isinstance(a, torch.fx.Node)), None)
        steps[task] = step
    return steps


def node_precision(node) -> str:
    """int8 / int16 (activations and weights through dequantize), w8 (weight only), or fp32."""
    args = [a for a in node.args if isinstance(a, torch.fx.Node)]
    if isinstance(node.args[0], (list, tuple)):  # cat
        args = [a for a in node.args[0] if isinstance(a, torch.fx.Node)]
    if not args:
        return "fp32"
    dts = [dq_dtype(a) for a in args]
    op = op_class(node.target)
    if op in ("conv", "linear"):
        act, w = dts[0], dts[1] if len(dts) > 1 else None
        if act and w:
            return act  # int8, or int16 activations with int8 weights (W8A16)
        return "w8" if w else "fp32"
    # any other op runs in integers only between a dequantize on every input and a quantize on every
    # output use: a kept-float add whose inputs arrive quantised dequantizes them and adds in float
    return dts[0] if all(dts) and output_quantized(node) else "fp32"


def layers_where(gm: torch.fx.GraphModule, pred) -> list[tuple[str, str]]:
    """(module path, op class) of the compute nodes (convs, adds, upsamplings, ...) for which ``pred(node)``
    holds, in graph order, each once."""
    out = []
    for n in gm.graph.nodes:
        op = op_class(n.target) if n.op == "call_function" else None
        if op is not None and pred(n):
            key = (node_module_path(n), op)
            if key[0] and key not in out:
                out.append(key)
    return out


def graph_convs(module) -> list[tuple[str, bool]]:
    """(module path, is depthwise) of each conv2d in the exported graph of ``module``, in graph order."""
    gm = module.graph_module if hasattr(module, "graph_module") else module
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default):
            w = n.args[1].meta.get("val") if hasattr(n.args[1], "meta") else None
            groups = n.args[6] if n.target == torch.ops.aten.conv2d.default and len(n.args) > 6 else (
                n.args[8] if len(n.args) > 8 else 1)
            dw = bool(groups > 1 and w is not None and w.shape[1] == 1)
            out.append((node_module_path(n), dw))
    return out


def graph_unit_ops(module, units) -> list[tuple[str, str]]:
    """(op class, module path) of each add and upsample of the exported graph of ``module``, in graph order;
    the path is kept where it is one of ``units`` (HydraNet.op_units: fusions, upsamplings, CRP sums), else ''."""
    gm = module.graph_module if hasattr(module, "graph_module") else module
    units = set(units)
    out = []
    for n in gm.graph.nodes:
        cls = UNIT_OPS.get(str(n.target)) if n.op == "call_function" else None
        if cls:
            path = node_module_path(n)
            out.append((cls, path if path in units else ""))
    return out


def stage_of(layer: str, tasks=("segm", "depth", "normals")) -> str:
    """HydraNet's network stage of a module path: encoder, decoder (CRP/adapt/dimred) or a head."""
    if layer in ("", "input"):
        return "input"
    head = layer.split(".")[0]
    for t in tasks:
        if head in (t, f"pre_{t}") or (t == "normals" and head in ("normal", "pre_normal")):
            return f"head:{t}"
    if head.startswith("layer"):
        return "encoder"
    return "decoder"
