"""TFLite/LiteRT: fp32 and fp16 via litert-torch, int8 full-integer from the run's quantised program.

int8: the run's pt2e program (PTQ or QAT: its weights and activation ranges) converted by litert-torch's
pt2e path (QDQ lowered to TFLite's int8 kernels), compared with that program. Two requests cannot be
served from the program and fall back, saying so in the manifest (``quantised_by``), to re-quantising
the FP32 model with ai-edge-quantizer, the recipe's translation and the program's calibration frames:
an input size other than the program's (it is traced at one size) and ``io_dtype`` float.
``io_dtype`` int8 (default: what an integer-only NPU wants) or float (QUANTIZE/DEQUANTIZE at the
edges); with int8 I/O the (scale, zero point) of input and outputs go into the manifest.
``layout`` NHWC feeds the model channel-last, as Android camera pipelines produce.
Verified with ai-edge-litert's Interpreter (tflite-runtime as a fallback).
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from . import reference_runner
from edgehydra.targets import facts_of

from .target import ExportTarget
from .reference_io import reference_check, reference_sidecar


class _ChannelLast(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x.permute(0, 3, 1, 2))


def _convert_fp32(module, x, path):
    import litert_torch
    from litert_torch import _config

    logging.getLogger("absl").setLevel(logging.ERROR)
    # litert-torch prints its own step-by-step progress; ours is the export progress bar
    _config.config.show_progress = False
    litert_torch.convert(module.eval(), (x,)).export(str(path))


def _calibration_inputs(source, req, nhwc: bool, facts: dict, limit: int = 64):
    """The quantised program's own calibration frames (a QAT program has none recorded: then a
    stratified set is chosen from the same data, and recorded in the manifest)."""
    from edgehydra.errors import BadInputError

    prog, ds = source.program, source.calib_dataset
    if ds is None:
        raise BadInputError("TFLite int8 needs calibration frames: export from a run (--run) with a quantised program")
    idx = list(prog.meta.get("calibration", {}).get("indices", []))[:limit] if prog is not None else []
    if not idx:
        from edgehydra.calibration.calibset import select_calibration

        cs = select_calibration(ds, limit)
        idx = list(cs.indices)
        facts["calibration"] = {"sha256": cs.sha256, "frames": len(idx), "chosen_at_export": True}
    for i in idx:
        x = ds[i]["image"][None].numpy().astype(np.float32)
        yield x.transpose(0, 2, 3, 1).copy() if nhwc else x


def _convert_program(source, nhwc: bool, x, path) -> dict:
    """The run's pt2e program through litert-torch's pt2e path: its own weights and ranges, int8 I/O."""
    import copy

    import litert_torch
    from litert_torch import _config
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    from ._pt2e import unfold_int8_weights

    gm = copy.deepcopy(source.program.module)
    n = unfold_int8_weights(gm)
    wrapped = _ChannelLast(gm) if nhwc else gm
    # litert-torch reads only the training flag and warns ("converted in training mode") on the root logger. The
    # converted program's graph is already in eval form (batch norm folded, no dropout); the exported module's
    # eval() refuses to run, so the flags of this copy are set directly
    for m in wrapped.modules():
        m.training = False
    _config.config.show_progress = False
    # The quantizer here only tells the converter to lower Q/DQ statically; the graph is already quantised.
    qc = QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    litert_torch.convert(wrapped, (x,), quant_config=qc).export(str(path))
    return {"from_program": {"stage": source.program.meta.get("stage"), "weights_requantised_exactly": n}}


def build(source, req, path):
    from edgehydra.calibration.quantizers import translate

    nhwc = req.options.get("layout", "NCHW").upper() == "NHWC"
    io_dtype = req.options.get("io_dtype", "int8")
    x = torch.zeros(req.batch, 3, *req.size)
    module = _ChannelLast(source.fp32) if nhwc else source.fp32
    if nhwc:
        x = x.permute(0, 2, 3, 1).contiguous()
    facts = {"layout": "NHWC" if nhwc else "NCHW", "tools": ("litert-torch", "ai-edge-litert", "ai-edge-quantizer"),
             "metadata_location": "manifest.json"}
    if req.precision == "fp32":
        _convert_fp32(module, x, path)
        return facts
    fallback = None
    if req.precision == "int8":
        if tuple(req.size) != tuple(source.program.size):
            fallback = (f"the program is traced at {source.program.size[0]}x{source.program.size[1]}, this export is "
                        f"{req.size[0]}x{req.size[1]}")
        elif io_dtype != "int8":
            fallback = "float I/O was asked for; the program converts with int8 I/O"
    if req.precision == "int8":
        from ._pt2e import refuse_precisions

        refuse_precisions(source.program, TARGET)
    if req.precision == "int8" and fallback is None:
        facts.update(_convert_program(source, nhwc, x, path))
        facts["io_dtype"] = "int8"
        return _io_facts(facts, path, source, req)
    tmp32 = path.with_name(path.name + ".fp32.tflite")
    try:
        _convert_fp32(module, x, tmp32)
        from ai_edge_quantizer import qtyping, quantizer, recipe_manager
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        if req.precision == "fp16":
            rm = recipe_manager.RecipeManager()
            rm.add_quantization_config(
                regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                op_config=qtyping.OpQuantizationConfig(
                    weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
                    compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True),
                algorithm_key=AlgorithmName.FLOAT_CASTING)
            q = quantizer.Quantizer(str(tmp32), rm.get_quantization_recipe())
            res = q.quantize(enable_progress_bar=False, enable_progress_report=False)
            facts["note"] = "fp16 weights, dequantised to fp32 at load (LiteRT GPU/NPU delegates run them in fp16)"
        else:
            tr = translate(source.program.recipe, "litert", target="tflite")
            rm = tr.quantizer
            if io_dtype == "float":
                for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
                    rm.add_quantization_config(regex=".*", operation_name=op,
                                               op_config=qtyping.OpQuantizationConfig(compute_precision=qtyping.ComputePrecision.FLOAT),
                                               algorithm_key=AlgorithmName.NO_QUANTIZE)
            q = quantizer.Quantizer(str(tmp32), rm.get_quantization_recipe())
            sig = next(iter(_signature_inputs(tmp32)))
            data = {"serving_default": [{sig: a} for a in _calibration_inputs(source, req, nhwc, facts)]}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cal = q.calibrate(data, num_threads=2)
            res = q.quantize(cal, enable_progress_bar=False, enable_progress_report=False)
            facts["translation"] = tr.to_dict()
            facts["io_dtype"] = io_dtype
            facts["quantised_by"] = (f"ai-edge-quantizer from the FP32 model, with the program's recipe and calibration "
                                     f"frames, because {fallback}: the program's trained weights and activation "
                                     f"ranges do not reach this artifact")
        res.export_model(str(path), overwrite=True)
    finally:
        tmp32.unlink(missing_ok=True)
    return _io_facts(facts, path, source, req)


def _io_facts(facts, path, source, req):
    it = _interpreter(path)
    facts["input_dtype"] = np.dtype(it.get_input_details()[0]["dtype"]).name
    if req.precision == "int8":
        facts["io_quantization"] = {
            "input": _qparams(it.get_input_details()[0]),
            "outputs": {n: _qparams(d) for n, d in zip(source.config.tasks, _ordered_outputs(it))}}
    return facts


def _signature_inputs(path):
    it = _interpreter(path)
    return it.get_signature_list()["serving_default"]["inputs"]


def _qparams(d):
    s, z = d["quantization"]
    return {"dtype": np.dtype(d["dtype"]).name, "scale": float(s), "zero_point": int(z)}


# the interpreter and the run loop live in the self-contained reference runner, so the code that verifies an
# artifact here is the code that checks it on a device (exporters/reference_io.py)
_interpreter = reference_runner.tflite_interpreter
_ordered_outputs = reference_runner.ordered_outputs


def load_runner(path, manifest):
    return reference_runner.tflite_runner(path, manifest.get("facts", {}).get("layout") == "NHWC")


# benchmark_model flags per accelerator a profile names in its compute_unit (TFLite's benchmark tool and
# the QNN delegate's documentation): NNAPI reaches the Tensor TPU, the GPU delegate the Adreno/Mali GPU,
# Qualcomm's QNN external delegate the Hexagon NPU (backend htp).
DEVICE_DELEGATES = [
    (("hexagon", "qnn", "htp"), ["--external_delegate_path=libQnnTFLiteDelegate.so",
                                 "--external_delegate_options=backend_type:htp"], "QNN HTP (Hexagon)"),
    (("nnapi", "tpu", "tensor", "edgetpu"), ["--use_nnapi=true"], "NNAPI"),
    (("gpu",), ["--use_gpu=true"], "GPU delegate"),
]


def remote_plan(manifest: dict, profile) -> dict:
    """LiteRT's benchmark_model with the delegate the device profile names (CPU XNNPACK otherwise)."""
    unit = (getattr(profile, "compute_unit", "") or "").lower()
    flags, name = next(((f, n) for keys, f, n in DEVICE_DELEGATES if any(k in unit for k in keys)),
                       ([], "CPU (XNNPACK)"))

    def argv(exe, path, threads, runs, warmup):
        return [exe, f"--graph={path}", f"--num_threads={threads}", f"--num_runs={runs}", f"--warmup_runs={warmup}",
                "--report_peak_memory_footprint=true", *flags]

    return {"tool": "benchmark_model", "binaries": ["benchmark_model"], "flags": flags, "accelerator": name,
            "argv": argv, "op_profile_flags": ["--enable_op_profiling=true"]}


TARGET = ExportTarget.of(facts_of('tflite'), build=build, load_runner=load_runner, remote_plan=remote_plan, sidecar=reference_sidecar, sidecar_check=reference_check)
