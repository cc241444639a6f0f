"""ONNX: fp32 and QDQ int8 (from the quantised pt2e program), verified with onnxruntime.

The QDQ graph is what TensorRT on Jetson and onnxruntime's quantised kernels consume. Option
``qdq``: ``uint8`` (default: the same integer maths stored as U8U8, exact under onnxruntime on every
x86 CPU, see exporters/_onnx_qdq.py), ``u8s8`` (unsigned activations, signed weights: 1.8x faster than
U8U8 on one thread under onnxruntime on a VNNI CPU, exact there and on ARM64; on x86 without VNNI its
kernels saturate, which verification shows) or ``int8`` (signed, zero point 0: what TensorRT requires; it
saturates as u8s8 does).
"""
from __future__ import annotations

import json

import torch

from edgehydra.errors import BadInputError

from ._onnx_qdq import signed_to_unsigned
from ._pt2e import int16_layers, refuse_precisions
from . import reference_runner
from edgehydra.targets import facts_of

from .target import ExportTarget
from .reference_io import reference_check, reference_sidecar

QDQ_TYPES = ("uint8", "u8s8", "int8")


def build(source, req, path):
    import onnx

    if req.precision == "int8":
        refuse_precisions(source.program, TARGET)  # fp16 islands (every int16 op class builds here)
    w16 = sorted({p for p, _ in int16_layers(source.program.module)}) if req.precision == "int8" else []
    # int16 QuantizeLinear/DequantizeLinear are ONNX opset 21 (onnxruntime runs the float op between them)
    opset = int(req.options.get("opset", 21 if w16 else 18))
    if w16 and opset < 21:
        raise BadInputError(f"--option opset={opset}: the program has int16 activations (W8A16) at {', '.join(w16[:4])}; "
                            "int16 QDQ needs opset >= 21")
    qdq = req.options.get("qdq", "uint8")
    if qdq not in QDQ_TYPES:
        raise BadInputError(f"--option qdq={qdq!r}: choose one of {', '.join(QDQ_TYPES)} "
                            "(int8 for TensorRT, uint8 for onnxruntime on any CPU, u8s8 for onnxruntime on VNNI or ARM64)")
    module = source.fp32.eval() if req.precision == "fp32" else source.program.module
    x = torch.zeros(req.batch, 3, *req.size)
    names = list(source.config.tasks)
    prog = torch.onnx.export(module, (x,), dynamo=True, input_names=["image"], output_names=names,
                             opset_version=opset, verbose=False)
    prog.save(str(path))
    m = onnx.load(str(path))
    meta = {"edgehydra": json.dumps({"classes": list(source.config.class_names), "mean": list(source.config.mean),
                                     "std": list(source.config.std), "tasks": names,
                                     "source_sha256": source.checkpoint_sha256,
                                     "recipe": source.program.recipe.name if req.precision == "int8" else None})}
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    facts = {}
    if req.precision == "int8":
        facts["qdq_dtype"] = qdq
        if qdq == "uint8":
            facts["qdq_rewrite"] = signed_to_unsigned(m)
            facts["qdq_note"] = ("pt2e's signed int8 stored as uint8 (+128, exact): onnxruntime's U8U8 kernels do not "
                                 "saturate on CPUs without VNNI; TensorRT needs --option qdq=int8")
        elif qdq == "u8s8":
            facts["qdq_rewrite"] = signed_to_unsigned(m, weights=False)
            facts["qdq_note"] = ("activations stored as uint8 (+128, exact), weights signed: onnxruntime's U8S8 kernels, "
                                 "exact with VNNI and on ARM64, saturating on x86 without VNNI; TensorRT needs "
                                 "--option qdq=int8")
    onnx.save(m, str(path))
    ops = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    if w16:
        facts["int16_layers"] = w16
    return {"opset": opset, "ops": ops, "qdq_nodes": ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0),
            "tools": ("onnx", "onnxscript", "onnxruntime"), **facts}


def load_runner(path, manifest):
    return reference_runner.onnx_runner(path)  # the same runner a device runs (exporters/reference_runner.py)


def remote_plan(manifest: dict, profile) -> dict:
    """trtexec with precision flags from the artifact and the profile (never --int8 on an fp32 file)."""
    precision = manifest.get("precision", "fp32")
    if precision == "int8" and (manifest.get("facts") or {}).get("qdq_dtype") in ("uint8", "u8s8"):
        raise BadInputError("TensorRT builds only signed int8 Q/DQ: export with `--qdq int8` for a trtexec run")
    flags = {"int8": ["--int8"], "fp16": ["--fp16"]}.get(precision, [])
    want = getattr(profile, "precision", None)
    if precision == "fp32" and want == "fp16":
        flags = ["--fp16"]  # an fp32 ONNX built as an fp16 engine, as the profile measures
    if precision == "int8" and want in ("int8", "fp16"):
        flags = ["--int8", "--fp16"]  # layers outside the Q/DQ pairs in fp16 rather than fp32 (trtexec --best)

    def argv(exe, path, threads, runs, warmup):
        return [exe, f"--onnx={path}", f"--iterations={runs}", f"--warmUp={warmup * 100}", *flags]

    return {"tool": "trtexec", "binaries": ["trtexec", "/usr/src/tensorrt/bin/trtexec"], "flags": flags,
            "accelerator": "TensorRT " + (" ".join(f.strip("-") for f in flags) or "fp32"), "argv": argv,
            "search_dirs": False,
            # the per-layer table, timed in a run of its own so that profiling does not slow the latency run
            "op_profile_flags": ["--dumpProfile", "--separateProfileRun"]}


TARGET = ExportTarget.of(facts_of('onnx'), build=build, load_runner=load_runner, remote_plan=remote_plan, sidecar=reference_sidecar, sidecar_check=reference_check)
