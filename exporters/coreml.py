"""Core ML .mlpackage (ML program, iOS 17 / macOS 14 by default): fp16, W8A8 and weight-only int8.

- fp16: the FP32 model converted with compute_precision FLOAT16.
- int8 (W8A8): the converted pt2e program; its quantize/dequantize ops become Core ML's
  (signed int8 activations: a quint8 configuration fails to convert at the CRP residual adds).
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

from .base import ExportTarget, RunnerUnavailable

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


def build(source, req, path):
    import coremltools as ct

    opts = req.options
    units = opts.get("compute_units", "ALL")
    if units not in COMPUTE_UNITS:
        from edgehydra.errors import BadInputError

        raise BadInputError(f"compute_units={units!r}: choose one of {', '.join(COMPUTE_UNITS)}")
    dep = opts.get("deployment_target", "iOS17")
    cfg = source.config
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
    kw["compute_precision"] = ct.precision.FLOAT16 if req.precision in ("fp16", "w8") else ct.precision.FLOAT32
    ml = ct.convert(ep, **kw)
    if req.precision == "w8":
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

        import warnings

        with warnings.catch_warnings():
            # An all-zero output channel (dead after training) gets scale 0 and coremltools divides 0/0;
            # whatever int8 it stores, dequantisation multiplies by that 0 scale, so the weight stays 0.
            warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
            ml = linear_quantize_weights(ml, OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric")))
    ml.short_description = "HydraNet joint semantic segmentation and depth (edgehydra)"
    md = ml.user_defined_metadata
    md["classes"] = json.dumps(list(cfg.class_names))
    md["mean"], md["std"] = json.dumps(list(cfg.mean)), json.dumps(list(cfg.std))
    md["tasks"] = json.dumps(list(cfg.tasks))
    md["source_sha256"] = source.checkpoint_sha256
    if req.precision == "int8":
        md["recipe"] = source.program.recipe.name
    ml.save(str(path))
    hist = op_histogram(ml)
    facts = {"compute_units": units, "deployment_target": dep, "ops": hist, "tools": ("coremltools",),
             "image_input": bool(opts.get("image_input")), "metadata_location": "model user_defined_metadata"}
    if opts.get("image_input"):
        facts["image_input_note"] = (f"ImageType has one scale for all channels: 1/(255*{np.mean(cfg.std):.4f}) "
                                     f"replaces per-channel std {list(cfg.std)}")
    facts["structure"] = structural_check(ml, req, cfg)
    return facts


def structural_check(ml, req, cfg) -> dict:
    """What can be checked without macOS: op histogram, (de)quantize ops, compressed weights, I/O."""
    spec = ml.get_spec()
    hist = op_histogram(ml)
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
    if req.precision == "w8" and compressed == 0:
        problems.append("weight-only model has no compressed (constexpr) weights")
    return {"inputs": ins, "outputs": outs, "quantize_dequantize_ops": q_ops, "compressed_weight_ops": compressed,
            "conv_ops": hist.get("conv", 0), "problems": problems}


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


TARGET = ExportTarget(name="coreml", suffix=".mlpackage", precisions=("fp16", "int8", "w8"),
                      runtime="coremltools MLModel.predict (macOS)", extra="coreml", packages=("coremltools",),
                      runtime_os=("Darwin",), build=build, load_runner=load_runner,
                      options=("compute_units", "image_input", "deployment_target"))
