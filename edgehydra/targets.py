"""What each export target is, as data: the bottom of the house knows the formats without importing them.

A target's facts (its artifact suffix, precisions, runtime, the pt2e quantizer its int8 honours, what a
kept-float layer becomes in it, which op classes it builds in W8A16, whether it computes fp16 islands)
live here, in one record per target. Calibration reads them (a recipe's translation, the mixed search's
choices); exporters/ adds the functions that build and run an artifact (``ExportTarget`` extends this
record); devices/ turns a profile's format into its target here, and only here.

The registry maps each target name to the module that holds its ``TARGET``, imported only when an
export asks for it, so listing targets imports no backend. A target from outside is one line:
``register_target("name", "package.module")``, or, for every process, ``EDGEHYDRA_TARGETS="name=package.module"``.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TargetFacts:
    name: str
    suffix: str
    precisions: tuple[str, ...]
    runtime: str  # what verifies it
    extra: str  # pip extra that installs what it needs
    packages: tuple[str, ...]  # importable modules the export needs
    runtime_os: tuple[str, ...] = ()  # OSes where the runtime runs ((): any)
    options: tuple[str, ...] = ()  # option names this target understands
    # the pt2e quantizer (calibration/quantizers.py BACKENDS) whose annotations this target's int8 honours
    quantizer_backend: str = "xnnpack"
    # what a layer a recipe keeps float becomes in this format (mixed precision says it per device)
    float_layers_run_as: str = "float"
    # W8A16 (a recipe's int16_layers): the op classes whose int16 activations this format builds, and why not
    # the others; an export of a program with int16 elsewhere fails naming the layers (exporters/_pt2e.py)
    w8a16_ops: tuple[str, ...] = ()
    w8a16_note: str = "no int16 activations in this format"
    # fp16 per layer (a recipe's fp16_layers, calibration/fp16.py): whether this format computes a float island
    # in fp16 beside int8 layers, and why not; an export of such a program elsewhere fails naming the layers
    fp16_islands: bool = False
    fp16_note: str = "no per-layer fp16 in this format"

    def facts(self) -> dict:
        """This record's fields alone (an ExportTarget adds functions)."""
        return {f.name: getattr(self, f.name) for f in fields(TargetFacts)}


BUILTIN = {
    'executorch': TargetFacts(
        name="executorch",
        suffix=".pte",
        precisions=("fp32", "int8"),
        runtime="executorch.runtime",
        extra="executorch",
        packages=("executorch",),
        options=("delegate",),
        w8a16_note="XNNPACK has no int16-activation kernels (its partitioner rejects an int16 dequantize: "
            "'Unsupported dtype for quantization'); keep these layers float or int8, or ship "
            "ONNX / LiteRT",
        fp16_islands=True,
        float_layers_run_as="fp32 XNNPACK kernels beside the int8 ones, in one delegate"),
    'coreml': TargetFacts(
        name="coreml",
        suffix=".mlpackage",
        precisions=("fp16", "int8", "w8"),
        runtime="coremltools MLModel.predict (macOS)",
        extra="coreml",
        packages=("coremltools",),
        runtime_os=("Darwin",),
        options=("compute_units", "image_input", "deployment_target"),
        w8a16_note="Core ML's W8A8 path takes int8 activations only; keep these layers float (fp16 "
            "on the ANE)",
        fp16_note="Core ML computes every float layer in fp16 already (compute_precision FLOAT16): list "
            "these layers in keep_float",
        float_layers_run_as="fp16 compute with fp16 weights (Core ML computes every op in fp16; int8 "
            "layers keep int8 weights)"),
    'tflite': TargetFacts(
        name="tflite",
        suffix=".tflite",
        precisions=("fp32", "fp16", "int8"),
        runtime="ai-edge-litert Interpreter",
        extra="tflite",
        packages=("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
        options=("io_dtype", "layout"),
        w8a16_note="litert-torch's converter does not keep the int8-to-int16 requantisation where a W8A16 "
            "layer reads an int8 tensor (measured on this model: an int16 ADD fails 'tfl.add' "
            "element types must match; a depthwise conv sharing a requantised input fails to "
            "prepare, INT16 != INT8); ship these layers as ONNX, or float / int8",
        fp16_note="litert-torch converts float layers to fp32 operators (LiteRT's fp16 is a weight format, "
            "dequantised to fp32, or the GPU delegate's choice for the whole graph): list these "
            "layers in keep_float",
        float_layers_run_as="converted by litert-torch from the program: kept-float layers stay float, "
            "but the converter may still feed them int8 inputs (listed per layer as "
            "not honoured in the manifest)"),
    'onnx': TargetFacts(
        name="onnx",
        suffix=".onnx",
        precisions=("fp32", "int8"),
        runtime="onnxruntime",
        extra="onnx",
        packages=("onnx", "onnxscript", "onnxruntime"),
        options=("opset", "qdq"),
        w8a16_ops=("conv", "add", "upsample", "max_pool"),
        w8a16_note="int16 QuantizeLinear/DequantizeLinear at opset 21: onnxruntime's CPU EP runs the "
            "float op between them, QNN's HTP (Hexagon) runs them natively; TensorRT has no "
            "int16 Q/DQ",
        fp16_note="onnxruntime's CPU EP has no fp16 convolution on x86 (its cast transformer runs an fp16 "
            "island in fp32 between two casts, measured on a 2-conv model): list these layers in "
            "keep_float",
        float_layers_run_as="fp32 between QDQ pairs (onnxruntime runs the rest as integer kernels; "
            "TensorRT builds fp16/fp32 there)"),
}

_MODULES = {name: f"edgehydra.exporters.{name}" for name in BUILTIN}


def _from_env() -> dict:
    out = {}
    for item in filter(None, os.environ.get("EDGEHYDRA_TARGETS", "").split(",")):
        name, _, module = item.partition("=")
        if not name or not module:
            raise ValueError(f"EDGEHYDRA_TARGETS item {item!r}: expected NAME=package.module")
        out[name.strip()] = module.strip()
    return out


def target_modules() -> dict[str, str]:
    """{target name: module holding its TARGET}: the built-ins, registered ones, EDGEHYDRA_TARGETS."""
    return {**_MODULES, **_from_env()}


def register_target(name: str, module: str) -> None:
    """Add a target whose module defines ``TARGET`` (an ExportTarget named ``name``)."""
    _MODULES[name] = module


def unregister_target(name: str) -> None:
    _MODULES.pop(name, None)


def list_targets() -> list[str]:
    return list(target_modules())


def facts_of(name: str) -> TargetFacts:
    """The record of target ``name``. A built-in's facts are data here; a registered target's are read from
    its module's TARGET (imported by name: a plugin, which this layer knows only as a string)."""
    mods = target_modules()
    if name not in mods:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(mods)}")
    if name in BUILTIN and mods[name] == _MODULES.get(name) and mods[name].startswith("edgehydra.exporters."):
        return BUILTIN[name]
    return importlib.import_module(mods[name]).TARGET


def format_facts(fmt: str) -> TargetFacts | None:
    """The target a device profile's ``format`` ships (profiles name formats by target name), or None for a
    format no target builds: the one place a format becomes a target."""
    return facts_of(fmt) if fmt in target_modules() else None


def target_for_suffix(suffix: str) -> str | None:
    """The target whose artifacts end in ``suffix`` (.pte, .mlpackage, ...), or None."""
    for n in target_modules():
        if facts_of(n).suffix == suffix:
            return n
    return None
