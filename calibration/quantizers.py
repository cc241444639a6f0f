"""Translate a Recipe into each backend's pt2e quantizer, and say what it could not honour.

Backends:
- ``xnnpack``: executorch's XNNPACKQuantizer. Its program is also what Core ML and ONNX consume
  (they get the converted pt2e graph), so their limits are reported against it too.
- ``litert``: litert-torch's PT2EQuantizer, for TFLite.

Nothing is changed silently: every recipe field a backend cannot honour becomes a line in
``Translation.issues`` (the report and the manifest carry them).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch

from edgehydra.graph import node_module_path
from edgehydra.targets import format_facts
from edgehydra.errors import require
from edgehydra.quiet import quiet_imports

from .recipe import Recipe

BACKENDS = ("xnnpack", "litert")
# Which quantizer an export target's int8 honours is a fact of its record (ExportTarget.quantizer_backend).


@dataclass
class Translation:
    backend: str
    recipe: Recipe
    quantizer: object
    issues: list[str] = field(default_factory=list)  # recipe parts not honoured as asked
    notes: list[str] = field(default_factory=list)  # how it was honoured (for the report)

    def to_dict(self) -> dict:
        return {"backend": self.backend, "recipe": self.recipe.name, "issues": self.issues, "notes": self.notes}


def keep_float_match(path: str, patterns) -> bool:
    return any(path == p or path.startswith(p + ".") or fnmatch.fnmatchcase(path, p) for p in patterns)


def _keep_float_quantizer(inner, patterns: tuple[str, ...], Quantizer):
    """Annotate with ``inner``, then drop the annotations of nodes in kept-float modules.

    XNNPACKQuantizer refuses ``set_module_name(name, None)`` ("not supported yet"), so kept-float
    layers are implemented here, once, for every backend.
    """

    class KeepFloat(Quantizer):
        def __init__(self):
            super().__init__()
            self.inner, self.patterns, self.kept = inner, patterns, set()

        def transform_for_annotation(self, model):
            return self.inner.transform_for_annotation(model)

        def annotate(self, model):
            from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

            model = self.inner.annotate(model)
            removed = set()
            for node in model.graph.nodes:
                path = node_module_path(node)
                if path and keep_float_match(path, self.patterns) and "quantization_annotation" in node.meta:
                    del node.meta["quantization_annotation"]
                    removed.add(node)
                    self.kept.add(path)

            def refers_to_removed(ann) -> bool:
                specs = list(ann.input_qspec_map.values()) + [ann.output_qspec]
                for sp in specs:
                    if isinstance(sp, SharedQuantizationSpec):
                        ref = sp.edge_or_node
                        nodes = ref if isinstance(ref, tuple) else (ref,)
                        if any(n in removed for n in nodes):
                            return True
                return False

            # A node that shares its observer with a kept-float node (e.g. the ReLU6 after a kept conv)
            # has nothing to share any more: it stays in float too. Repeat until nothing changes.
            changed = True
            while changed:
                changed = False
                for node in model.graph.nodes:
                    ann = node.meta.get("quantization_annotation")
                    if ann is not None and refers_to_removed(ann):
                        del node.meta["quantization_annotation"]
                        removed.add(node)
                        changed = True
            return model

        def validate(self, model):
            return self.inner.validate(model)

    return KeepFloat()


def _is_int8_activation(spec) -> bool:
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    # activations span -128..127 per tensor; weights are symmetric -127..127 (per channel or tensor)
    return isinstance(spec, QuantizationSpec) and spec.dtype == torch.int8 and spec.quant_min == -128


def _int16_quantizer(inner, patterns: tuple[str, ...], act16, Quantizer):
    """Annotate with ``inner``, then give the nodes of the ``patterns`` modules int16 activations (W8A16):
    the tensors a matched layer reads, quantised int16 where they are made (the producing unit's output,
    else on the edge), and its own output where its unit ends, which for a conv+ReLU6 or add+ReLU6 unit is
    the clamp after it (annotate_conv_relu6), wherever that clamp's module is. Weights stay int8. Where an
    int16 tensor also feeds an int8 layer, prepare_pt2e requantises on that edge (int16 to int8 loses
    nothing the int8 layer would have had). Quantising the input at its producer matters: an int8 tensor
    requantised to int16 keeps the int8 steps, so a layer whose input range is the problem gains nothing."""

    class Int16(Quantizer):
        def __init__(self):
            super().__init__()
            self.matched = set()

        def transform_for_annotation(self, model):
            return inner.transform_for_annotation(model)

        def annotate(self, model):
            model = inner.annotate(model)
            key = "quantization_annotation"
            for node in model.graph.nodes:
                path = node_module_path(node)
                ann = node.meta.get(key)
                if not path or ann is None or not keep_float_match(path, patterns):
                    continue
                self.matched.add(path)
                for arg, spec in list(ann.input_qspec_map.items()):
                    if _is_int8_activation(spec):
                        ann.input_qspec_map[arg] = act16
                        src = arg.meta.get(key) if hasattr(arg, "meta") else None
                        if src is not None and _is_int8_activation(src.output_qspec):
                            src.output_qspec = act16
                end = node  # follow the unit (batch norm in QAT graphs, the clamp) to the node holding its output spec
                while True:
                    a = end.meta.get(key)
                    if a is not None and _is_int8_activation(a.output_qspec):
                        a.output_qspec = act16
                        break
                    nxt = list(end.users)
                    if len(nxt) != 1 or str(nxt[0].target) not in _HARDTANH + _BATCH_NORM:
                        break
                    end = nxt[0]
            return model

        def validate(self, model):
            return inner.validate(model)

    return Int16()


_HARDTANH = ("aten.hardtanh.default", "aten.hardtanh_.default")
_BATCH_NORM = ("aten.batch_norm.default", "aten._native_batch_norm_legit.default")


def annotate_conv_relu6(model, config) -> int:
    """Annotate conv[-bn]-ReLU6 and add-ReLU6 as quantised units: inputs quantised, output after the clamp.

    XNNPACKQuantizer fuses conv+ReLU but not conv+ReLU6 (hardtanh), so in MobileNet-v2 it quantises
    every conv output, then runs the clamp as a separate int8 op with a second requantisation. With
    the clamp inside the pattern, ExecuTorch's FuseActivationPass folds it into the conv (XNNPACK's
    output min/max) and the int8 range spans [0, 6] instead of the conv's raw range. XNNPACK's
    partitioner fuses only ReLU into an add, so the ExecuTorch exporter drops the add's clamp where
    the [0, 6] quantize makes it redundant (exporters/executorch.drop_saturated_add_clamps). Returns
    the number of patterns annotated; nodes already annotated are left alone.
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    key = "quantization_annotation"

    def annotated(nodes):
        return any(key in n.meta and n.meta[key]._annotated for n in nodes)

    count = 0
    for n in model.graph.nodes:
        if n.op != "call_function" or str(n.target) not in _HARDTANH or tuple(n.args[1:3]) != (0.0, 6.0):
            continue
        prev, middle = n.args[0], []
        if getattr(prev, "op", None) == "call_function" and str(prev.target) in _BATCH_NORM and len(prev.users) == 1:
            middle, prev = [prev], prev.args[0]  # QAT graphs keep batch norm until convert
        if getattr(prev, "op", None) != "call_function" or len(prev.users) != 1:
            continue
        if str(prev.target) == "aten.add.Tensor" and not middle:  # the decoder's add -> ReLU6 before each CRP
            a, b = prev.args[:2]
            if not (hasattr(a, "op") and hasattr(b, "op")) or annotated([n, prev]):
                continue
            prev.meta[key] = QuantizationAnnotation(input_qspec_map={a: config.input_activation, b: config.input_activation},
                                                    _annotated=True)
            n.meta[key] = QuantizationAnnotation(output_qspec=config.output_activation, _annotated=True)
            count += 1
            continue
        if str(prev.target) != "aten.conv2d.default":
            continue
        conv = prev
        weight, bias = conv.args[1], conv.args[2] if len(conv.args) > 2 else None
        partition = [n, *middle, conv, weight] + ([bias] if bias is not None else [])
        if annotated(partition):
            continue
        qmap = {conv.args[0]: config.input_activation, weight: config.weight}
        if bias is not None and config.bias is not None:
            qmap[bias] = config.bias
        conv.meta[key] = QuantizationAnnotation(input_qspec_map=qmap, _annotated=True)
        for m in middle:
            m.meta[key] = QuantizationAnnotation(_annotated=True)
        n.meta[key] = QuantizationAnnotation(output_qspec=config.output_activation, _annotated=True)
        for m in (weight, bias):
            if m is not None:
                m.meta[key] = QuantizationAnnotation(_annotated=True)
        count += 1
    return count


def _relu6_fusing_quantizer(inner, config, Quantizer):
    class ConvReLU6(Quantizer):
        def transform_for_annotation(self, model):
            return inner.transform_for_annotation(model)

        def annotate(self, model):
            annotate_conv_relu6(model, config)
            return inner.annotate(model)

        def validate(self, model):
            return inner.validate(model)

    return ConvReLU6()


def _has_batch_norm(model) -> bool:
    return any(n.op == "call_function" and "batch_norm" in str(n.target) for n in model.graph.nodes)


def _bn_aware(XNNPACKQuantizer):
    """XNNPACKQuantizer that tries its four conv + batch norm patterns only on a graph with a batch norm.

    Why: each of those annotators traces its pattern graphs anew on every call (12 small exports) and matches them
    over the whole graph, whether or not the graph has a batch norm to match: 47 of the 65 s that prepare_pt2e took
    in a profiled fast demo (AMD EPYC Zen 3). A PTQ graph has none (prepare_pt2e folds them into their
    convolutions before it annotates), nor has QAT's (calibration/qat.py folds them first). A pattern with a batch
    norm node cannot match a graph without one, so skipping them annotates exactly what they would have. The one
    other thing they do to the graph, dead-code elimination and recompile, is done here in their place
    (tests/test_calibration.py compares the prepared programs)."""

    class BNAwareXNNPACK(XNNPACKQuantizer):
        def annotate(self, model):
            if _has_batch_norm(model):
                return super().annotate(model)
            model.graph.eliminate_dead_code()
            model.recompile()
            self.SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if "_bn" not in p.name]
            try:
                return super().annotate(model)
            finally:
                del self.SUPPORTED_PATTERNS

    return BNAwareXNNPACK


def _specs(recipe: Recipe, is_qat: bool):
    from torchao.quantization.pt2e import (FusedMovingAvgObsFakeQuantize, HistogramObserver, MinMaxObserver,
                                           MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                           PerChannelMinMaxObserver)
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    eps = {"eps": 2 ** -12}
    act = None
    if not recipe.weight_only:
        if recipe.observer == "minmax":
            ctr = MinMaxObserver.with_args(**eps)
        elif recipe.observer == "moving_average":
            ctr = MovingAverageMinMaxObserver.with_args(**eps)
        elif recipe.range_search == "percentile":
            from .observers import PercentileHistogramObserver

            ctr = PercentileHistogramObserver.with_args(percentile=recipe.percentile, **eps)
        else:
            ctr = HistogramObserver.with_args(**eps)  # its range search minimises L2 error: "mse"
        if is_qat:  # the same observer, calibrated then frozen by QAT (calibration/qat.py)
            from .observers import CalibratedFakeQuantize

            ctr = CalibratedFakeQuantize.with_args(observer=ctr)
        bits = 8 if recipe.act_dtype == "int8" else 16
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        # int16 activations are symmetric (zero point 0): LiteRT's int16x8 kernels require it (its converter
        # rejects an int16 ADD with a zero point), and 15 bits of a ReLU6 range still step by 0.0002
        symmetric = recipe.act_symmetric or bits == 16
        if bits == 16:
            qmin = -qmax
        act = QuantizationSpec(dtype=torch.int8 if bits == 8 else torch.int16, quant_min=qmin, quant_max=qmax,
                               qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine,
                               is_dynamic=False, observer_or_fake_quant_ctr=ctr)
    per_channel = recipe.weight_granularity == "per_channel"
    if is_qat:
        wctr = FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver, **eps)
    else:
        wctr = (PerChannelMinMaxObserver if per_channel else MinMaxObserver).with_args(**eps)
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127,
                              qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
                              ch_axis=0, is_dynamic=False, observer_or_fake_quant_ctr=wctr)
    return act, weight


def w8a16_of(target: str) -> tuple[tuple[str, ...], str]:
    """What the export target's record says of int16 activations: (op classes it builds, note)."""
    f = format_facts(target)
    return (f.w8a16_ops, f.w8a16_note) if f else ((), "")


def fp16_of(target: str) -> tuple[bool, str]:
    """What the export target's record says of fp16 islands: (whether it computes them, why not)."""
    f = format_facts(target)
    return (f.fp16_islands, "" if f.fp16_islands else f.fp16_note) if f else (False, "")


def _litert_recipe(recipe: Recipe, issues: list, notes: list):
    """The recipe as ai-edge-quantizer's static-range (or weight-only) recipe, and what it cannot honour."""
    # litert-torch's PT2EQuantizer cannot prepare HydraNet: its annotations share an observer
    # with a node it never observes at the 3-input add of decoder stage 2 (prepare_pt2e asserts
    # "'conv2d_29' not in ..."). LiteRT's own post-conversion quantizer (ai-edge-quantizer, on the
    # fp32 .tflite with the same calibration frames) is used instead: the recipe is translated
    # into its static-range recipe.
    require("ai_edge_quantizer", "tflite", "LiteRT int8 quantisation")
    from ai_edge_quantizer import qtyping, recipe_manager

    rm = recipe_manager.RecipeManager()
    gran = (qtyping.QuantGranularity.CHANNELWISE if recipe.weight_granularity == "per_channel"
            else qtyping.QuantGranularity.TENSORWISE)
    if recipe.weight_only:
        rm.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=8)
    else:
        rm.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                             activation_num_bits=8 if recipe.act_dtype == "int8" else 16, weight_num_bits=8,
                             weight_granularity=gran)
    inner = rm
    notes.append("LiteRT: ai-edge-quantizer static-range recipe on the fp32 .tflite (litert-torch's "
                 "PT2EQuantizer fails to prepare HydraNet's 3-input decoder add)")
    if recipe.observer != "minmax" and not recipe.weight_only:
        issues.append(f"observer={recipe.observer!r}: ai-edge-quantizer calibrates with min/max ranges")
    if recipe.act_symmetric:
        issues.append("act_symmetric=True: ai-edge-quantizer uses asymmetric int8 activations")
    if recipe.float_layers:
        issues.append(f"keep_float={list(recipe.float_layers)}: TFLite tensor names do not carry module paths; "
                      "every supported op is quantised")
    return inner, issues, notes


def translate(recipe: Recipe, backend: str = "xnnpack", is_qat: bool = False, target: str | None = None) -> Translation:
    """Build the backend's quantizer for ``recipe``. ``target`` (executorch, coreml, onnx, tflite)
    adds that format's own limits to the issues."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    quiet_imports()
    issues, notes = [], []
    require("torchao", "executorch", "pt2e quantisation")
    from torchao.quantization.pt2e.quantizer import Quantizer

    if not recipe.weight_symmetric:
        issues.append("weight_symmetric=False: both quantizers only produce symmetric int8 weights; weights stay symmetric")
    if is_qat and not recipe.weight_only:
        notes.append(f"QAT: activation ranges from the recipe's {recipe.observer!r} observer on the calibration "
                     "set, then frozen; weights fake-quantised with moving-average per-channel min/max")
    if backend != "xnnpack":
        return Translation(backend, recipe, *_litert_recipe(recipe, issues, notes))
    # the XNNPACK quantizer, with the recipe's per-layer choices wrapped around it below
    require("executorch", "executorch", "the XNNPACK quantizer")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import QuantizationConfig

    act, weight = _specs(recipe, is_qat)
    config = QuantizationConfig(act, act, weight, None, is_qat)
    inner = _bn_aware(XNNPACKQuantizer)().set_global(config)
    if not recipe.weight_only:
        inner = _relu6_fusing_quantizer(inner, config, Quantizer)
        notes.append("conv+ReLU6 and add+ReLU6 quantised as units (XNNPACKQuantizer fuses only ReLU); "
                     "XNNPACK runs each clamp inside the int8 conv, and each add's in its output range "
                     "(the ExecuTorch exporter drops the then-redundant clamp)")
    if recipe.act_dtype == "int16" and target is not None and w8a16_of(target)[1]:
        ops, note = w8a16_of(target)
        (notes if ops == ("conv", "add", "upsample", "max_pool") else issues).append(f"act_dtype=int16: {note}")
    if target == "onnx" and recipe.act_dtype == "int16":
        notes.append("int16 QDQ needs ONNX opset >= 21 (the exporter picks 21)")
    if target == "coreml" and not recipe.weight_only:
        notes.append("Core ML consumes signed int8 activations (a quint8 configuration fails to convert at the "
                     "CRP residual adds), which is what this quantizer produces")
    if recipe.int16_layers:
        act16, _ = _specs(recipe.replace(act_dtype="int16", int16_layers=()), is_qat)
        inner = _int16_quantizer(inner, recipe.int16_layers, act16, Quantizer)
        notes.append(f"int16 activations, int8 weights (W8A16): {', '.join(recipe.int16_layers)}")
        if target is not None:
            ops, note = w8a16_of(target)
            if note:  # a format that builds none of them cannot honour the recipe; one that builds some says which
                (notes if ops else issues).append(f"int16_layers={list(recipe.int16_layers)}: {note}")
    q = _keep_float_quantizer(inner, recipe.float_layers, Quantizer) if recipe.float_layers else inner
    if recipe.keep_float:
        notes.append(f"kept in floating point: {', '.join(recipe.keep_float)}")
    if recipe.fp16_layers:
        notes.append(f"kept float and computed in fp16 (cast at each island's edges after convert): "
                     f"{', '.join(recipe.fp16_layers)}")
        why_not = fp16_of(target)[1] if target is not None else ""
        if why_not:
            issues.append(f"fp16_layers={list(recipe.fp16_layers)}: {why_not}")
    return Translation(backend, recipe, q, issues, notes)
