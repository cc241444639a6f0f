"""Core ML .mlpackage (ML program, iOS 17 / macOS 14 by default): fp16, W8A8 and weight-only int8.

- fp16: the FP32 model converted with compute_precision FLOAT16.
- int8 (W8A8): the converted pt2e program; its quantize/dequantize ops become Core ML's
  (signed int8 activations: a quint8 configuration fails to convert at the CRP residual adds), its
  weights int8 constants, its compute fp16: a program typed FLOAT32 runs on CPU/GPU only, never on
  the Neural Engine, which is what a W8A8 model is for.
- w8: fp16 model with weights linearly quantised to int8 (coremltools.optimize).
Options: compute units, image input with the normalisation folded in (what an iOS app feeds
from a camera), deployment target. Class labels and normalisation go into the model metadata.
Prediction needs macOS; elsewhere a structural check runs and the report says parity was not run.
"""
from __future__ import annotations

import json
import platform
from collections import Counter

import numpy as np
import torch

from edgehydra.targets import facts_of

from .target import ExportTarget, RunnerUnavailable

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")


def op_histogram(mlmodel) -> dict:
    spec = mlmodel.get_spec()
    ops = Counter()

    def walk(block):
        for op in block.operations:
            ops[op.type] += 1
            for b in op.blocks:
                walk(b)

    for f in spec.mlProgram.functions.values():
        for b in f.block_specializations.values():
            walk(b)
    return dict(ops)


def w8_config(source):
    """Weight-only int8 as the run's recipe sets weights (granularity, symmetry), on every convolution:
    coremltools' default leaves weights under 2048 elements in fp16, which would keep most of a small
    decoder's and every depthwise layer's weights uncompressed."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig

    r = source.program.recipe if source.program is not None else None
    mode = "linear_symmetric" if (r is None or r.weight_symmetric) else "linear"
    granularity = "per_tensor" if (r is not None and r.weight_granularity == "per_tensor") else "per_channel"
    return OpLinearQuantizerConfig(mode=mode, granularity=granularity, weight_threshold=1)


def build(source, req, path):
    import coremltools as ct

    opts = req.options
    units = opts.get("compute_units", "ALL")
    if units not in COMPUTE_UNITS:
        from edgehydra.errors import BadInputError

        raise BadInputError(f"compute_units={units!r}: choose one of {', '.join(COMPUTE_UNITS)}")
    dep = opts.get("deployment_target", "iOS17")
    cfg = source.config
    if req.precision == "int8":
        from ._pt2e import refuse_precisions

        refuse_precisions(source.program, TARGET)
    module = source.program.module if req.precision == "int8" else source.fp32.eval()
    x = torch.zeros(req.batch, 3, *req.size)
    ep = torch.export.export(module, (x,)).run_decompositions({})
    if opts.get("image_input"):
        # ImageType computes scale * pixel + bias per channel; ImageNet std differs per channel, so
        # fold the mean with per-channel bias and the mean std as the scale (report the deviation).
        std = float(np.mean(cfg.std))
        inp = ct.ImageType(name="image", shape=x.shape, scale=1 / (255.0 * std),
                           bias=[-m / std for m in cfg.mean], color_layout=ct.colorlayout.RGB)
    else:
        inp = ct.TensorType(name="image", shape=x.shape, dtype=np.float32)
    kw = dict(inputs=[inp], outputs=[ct.TensorType(name=n) for n in cfg.tasks],
              minimum_deployment_target=getattr(ct.target, dep), compute_units=getattr(ct.ComputeUnit, units),
              convert_to="mlprogram")
    kw["compute_precision"] = ct.precision.FLOAT16  # every precision here: the Neural Engine computes in fp16
    ml = ct.convert(ep, **kw)
    if req.precision == "w8":
        from coremltools.optimize.coreml import OptimizationConfig, linear_quantize_weights

        import warnings

        with warnings.catch_warnings():
            # An all-zero output channel (dead after training) gets scale 0 and coremltools divides 0/0;
            # whatever int8 it stores, dequantisation multiplies by that 0 scale, so the weight stays 0.
            warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
            ml = linear_quantize_weights(ml, OptimizationConfig(global_config=w8_config(source)))
    ml.short_description = "HydraNet joint semantic segmentation and depth (edgehydra)"
    md = ml.user_defined_metadata
    md["classes"] = json.dumps(list(cfg.class_names))
    md["mean"], md["std"] = json.dumps(list(cfg.mean)), json.dumps(list(cfg.std))
    md["tasks"] = json.dumps(list(cfg.tasks))
    md["source_sha256"] = source.checkpoint_sha256
    if req.precision == "int8":
        md["recipe"] = source.program.recipe.name
    ml.save(str(path))
    removed = remove_sidecars(path)
    hist = op_histogram(ml)
    facts = {"compute_units": units, "deployment_target": dep, "ops": hist, "tools": ("coremltools",),
             "removed_sidecars": removed,
             "image_input": bool(opts.get("image_input")), "metadata_location": "model user_defined_metadata"}
    if opts.get("image_input"):
        facts["image_input_note"] = (f"ImageType has one scale for all channels: 1/(255*{np.mean(cfg.std):.4f}) "
                                     f"replaces per-channel std {list(cfg.std)}")
    kept = None
    if req.precision == "int8" and source.program is not None:  # convolutions the recipe kept float have float weights
        from .precision_map import program_layers

        kept = sum(r["count"] for r in program_layers(source.program.module, source.program.recipe)
                   if r["op"] == "conv" and r["precision"] not in ("int8", "int16", "w8"))
    facts["structure"] = structural_check(ml, req, cfg, float_convs=kept or 0)
    return facts


# Files coremltools writes into a package that the model does not need to run: converting a
# torch.export program leaves executorch_debug_handle_mapping.json (226 KB of a 544 KB tiny W8A8 package).
SIDECARS = ("executorch_debug_handle_mapping.json",)


def remove_sidecars(path) -> list[dict]:
    """Delete debug sidecars from a saved .mlpackage so its size is what ships; returns what went."""
    from pathlib import Path

    out = []
    for name in SIDECARS:
        for f in Path(path).rglob(name):
            out.append({"file": str(f.relative_to(path)), "bytes": f.stat().st_size})
            f.unlink()
    return out


# MIL proto DataType values (coremltools/proto/MIL.proto)
_DTYPES = {10: "fp16", 11: "fp32", 21: "int8", 31: "uint8", 23: "int32"}


def spec_dtypes(ml) -> dict:
    """Output dtypes of the compute ops (conv) and the stored type of compressed weights."""
    conv, weights = Counter(), Counter()

    def walk(block):
        for op in block.operations:
            if op.type == "conv":
                for o in op.outputs:
                    conv[_DTYPES.get(o.type.tensorType.dataType, str(o.type.tensorType.dataType))] += 1
            if op.type.startswith("constexpr") and "quantized_data" in op.attributes:
                dt = op.attributes["quantized_data"].type.tensorType.dataType
                weights[_DTYPES.get(dt, str(dt))] += 1
            for b in op.blocks:
                walk(b)

    for f in ml.get_spec().mlProgram.functions.values():
        for b in f.block_specializations.values():
            walk(b)
    return {"conv_outputs": dict(conv), "compressed_weights": dict(weights)}


def structural_check(ml, req, cfg, float_convs: int = 0) -> dict:
    """What can be checked without macOS: op histogram, (de)quantize ops, int8 weights, fp16 compute, I/O.
    ``float_convs``: convolutions the program keeps in float (recipe keep-float), which have no int8 weights."""
    spec = ml.get_spec()
    hist = op_histogram(ml)
    dt = spec_dtypes(ml)
    ins = {i.name: list(i.type.multiArrayType.shape) or "image" for i in spec.description.input}
    outs = [o.name for o in spec.description.output]
    q_ops = sum(v for k, v in hist.items() if k in ("quantize", "dequantize"))
    compressed = sum(v for k, v in hist.items() if k.startswith("constexpr"))
    problems = []
    if outs != list(cfg.tasks):
        problems.append(f"outputs {outs}, expected {list(cfg.tasks)}")
    if "image" not in ins:
        problems.append(f"inputs {list(ins)}, expected 'image'")
    if req.precision == "int8" and q_ops == 0:
        problems.append("W8A8 model has no quantize/dequantize ops")
    if req.precision in ("int8", "w8"):
        n_conv, n_w8 = hist.get("conv", 0), dt["compressed_weights"].get("int8", 0)
        if n_w8 < n_conv - float_convs:
            problems.append(f"{n_w8} int8 weight constants for {n_conv} convolutions, {float_convs} of them kept "
                            f"float (weights {dt['compressed_weights']})")
    if set(dt["conv_outputs"]) != {"fp16"}:
        problems.append(f"convolutions compute in {dt['conv_outputs']}, not fp16 only (the Neural Engine runs fp16)")
    return {"inputs": ins, "outputs": outs, "quantize_dequantize_ops": q_ops, "compressed_weight_ops": compressed,
            "conv_ops": hist.get("conv", 0), "conv_output_dtypes": dt["conv_outputs"],
            "weight_dtypes": dt["compressed_weights"], "problems": problems}


def load_runner(path, manifest):
    problems = manifest.get("facts", {}).get("structure", {}).get("problems", [])
    if problems:
        from edgehydra.errors import EdgeHydraError

        raise EdgeHydraError(f"Core ML structural check failed: {'; '.join(problems)}")
    if platform.system() != "Darwin":
        raise RunnerUnavailable(f"Core ML prediction needs macOS (this host is {platform.system()}); the structural "
                                "check passed, numeric parity was not run")
    import coremltools as ct

    ml = ct.models.MLModel(str(path))
    names = manifest["outputs"]

    def run(x: np.ndarray):
        res = [ml.predict({"image": x[b:b + 1]}) for b in range(x.shape[0])]
        return [np.concatenate([np.asarray(r[n], np.float32) for r in res]) for n in names]

    return run


TARGET = ExportTarget.of(facts_of('coreml'), build=build, load_runner=load_runner)
