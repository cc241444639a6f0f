"""Rewrite an ONNX QDQ graph from signed to unsigned int8, exactly.

Why: onnxruntime's x86 kernels multiply u8 activations by s8 weights with ``vpmaddubsw``, which adds
two u8 x s8 products into a saturating int16 (255 * 127 * 2 = 64770 > 32767). On CPUs with VNNI
(``vpdpbusd`` accumulates in int32) nothing saturates; on AVX2-only CPUs (AMD Zen 2/3, Intel before
Ice Lake) it does. onnxruntime's quantisation docs name two remedies: 7-bit weights (reduce_range)
or the U8U8 format. 7-bit weights would change the integer maths away from the pt2e program the
artifact is verified against; U8U8 does not: ``u = s + 128`` with zero point ``z + 128`` gives the
same real value ``(u - (z + 128)) * scale == (s - z) * scale`` for every element, and onnxruntime's
U8U8 kernels widen to int16 before ``vpmaddwd`` (no saturation). Measured on the published
architecture at 240x320, untrained, AMD EPYC Zen 3 (AVX2, no VNNI): segm output of the s8 graph up to 3
output steps from its pt2e program (argmax agreement 0.80), of the u8 graph at most 1 step (0.98,
the same as onnxruntime with QDQ fusion off), and the u8 graph ran faster (24.6 vs 35.7 ms).

TensorRT accepts only signed, zero-point-0 QDQ, so the signed form stays available (``qdq=int8``).

U8S8 (``weights=False``: activations shifted, weights kept signed) is the form onnxruntime's VNNI kernels
(``vpdpbusd``: u8 x s8 summed in int32) and its ARM64 kernels run without widening: exact where nothing
saturates, which an AVX2-only x86 CPU does not promise. The demo's QAT program exported both ways at 240x320,
onnxruntime on AMD EPYC Zen 5 (VNNI), interleaved medians of 150 runs: one thread U8U8 6.72-6.80 ms, U8S8
3.68-3.84 ms (1.77-1.83x over three runs); two threads 1.25-2.13x; outputs identical.
"""
from __future__ import annotations

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def signed_to_unsigned(model, weights: bool = True) -> dict:
    """In place: every int8 zero point (and every int8 weight feeding a DequantizeLinear) + 128 as uint8; with
    ``weights=False`` the weights and their zero points stay int8 (U8S8).

    Returns counts. Zero points and weights are often shared between nodes, so each tensor is shifted
    once, decided on the dtypes read before anything changes.
    """
    from onnx import numpy_helper

    g = model.graph
    tensors = {t.name: t for t in g.initializer}
    for n in g.node:  # torch.onnx writes some constants as Constant nodes
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            tensors.setdefault(n.output[0], n.attribute[0].t)
    targets: set[str] = set()
    kept: set[str] = set()  # the signed weights' zero points (U8S8)
    kept_weights: set[str] = set()
    nodes = 0
    for n in g.node:
        if n.op_type not in QDQ_OPS or len(n.input) < 3 or n.input[2] not in tensors:
            continue
        if numpy_helper.to_array(tensors[n.input[2]]).dtype != np.int8:
            continue
        nodes += 1
        weight = n.op_type == "DequantizeLinear" and n.input[0] in tensors  # a constant (weight) input
        if weight and not weights:
            kept.add(n.input[2])
            kept_weights.add(n.input[0])
            continue
        targets.add(n.input[2])
        if weight:
            targets.add(n.input[0])
    if kept & targets:  # one zero point tensor read by a weight and an activation: it cannot be both types
        raise ValueError(f"zero point(s) {', '.join(sorted(kept & targets)[:3])} serve weights and activations alike; "
                         "the U8S8 form needs them apart")
    for name in targets:
        a = numpy_helper.to_array(tensors[name])
        if a.dtype != np.int8:
            raise ValueError(f"{name}: expected int8, found {a.dtype} (the graph mixes int8 and uint8 QDQ)")
        tensors[name].CopyFrom(numpy_helper.from_array((a.astype(np.int16) + 128).astype(np.uint8), name))
    del g.value_info[:]  # element types recorded for intermediate tensors are stale; onnxruntime re-infers them
    return {"qdq_nodes": nodes, "tensors_shifted": len(targets), "weights_kept_signed": len(kept_weights)}


def qdq_dtype(model) -> str | None:
    """'int8', 'uint8', 'u8s8' (unsigned activations, signed weights), 'mixed' or None (no QDQ zero points), read
    from the graph itself."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    kinds, by_role = set(), {True: set(), False: set()}
    for n in model.graph.node:
        if n.op_type in QDQ_OPS and len(n.input) >= 3 and n.input[2] in inits:
            kind = numpy_helper.to_array(inits[n.input[2]]).dtype.name
            kinds.add(kind)
            by_role[n.op_type == "DequantizeLinear" and n.input[0] in inits].add(kind)
    if by_role[False] == {"uint8"} and by_role[True] == {"int8"}:
        return "u8s8"
    return kinds.pop() if len(kinds) == 1 else (None if not kinds else "mixed")
