"""The per-layer precision map of an artifact: each conv / add / upsample / pool, its precision, and why.

Two readings, one after the other:

1. **The program** (`program_layers`): the converted pt2e graph says what the quantizer made of the
   recipe. A compute node whose inputs (and weight) come through ``dequantize`` runs quantised, in the
   dtype of those dequantize ops (int8, or int16 activations for W8A16); a node without them stays float,
   because the recipe kept it float (the pattern that matched is named) or because the quantizer does not
   annotate that op (a quantizer limit).
2. **The artifact** (`shipped`): what the target made of the program. ExecuTorch: layers whose operators
   the partitioner left outside the XNNPACK delegate (portable kernels). Core ML: every op computes in fp16
   (compute_precision FLOAT16), int8 layers keep int8 weights and activation quantize/dequantize. LiteRT:
   read back from the .tflite itself (each operator's input dtypes, tensor names mapped to module paths).
   ONNX: the QDQ graph mirrors the program; onnxruntime fuses each QDQ group into an integer kernel.

Rows are grouped by (layer, op class): ``{"layer": "crp1.0", "op": "conv", "count": 4, "precision": "fp32",
"why": "recipe keep-float ('crp1.*')", "runs_on": "XNNPACK"}``.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

import torch

from edgehydra.graph import LEAF_MODULE, OP_CLASS, dq_dtype as _dq_dtype, node_module_path, node_precision as _node_precision  # noqa: F401
from edgehydra.graph import op_class as _op_class, output_quantized as _output_quantized  # noqa: F401

TOP = "(top level)"  # ops of HydraNet.forward itself: the skip additions and upsamplings between CRP blocks


def program_layers(gm: torch.fx.GraphModule, recipe) -> list[dict]:
    """Per (layer, op class) precision of a converted pt2e program, with the reason for every float row."""
    from edgehydra.calibration.quantizers import keep_float_match

    from edgehydra.calibration.fp16 import is_half

    rows: OrderedDict = OrderedDict()
    memo: dict = {}
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        op = _op_class(n.target)
        if op is None:
            continue
        layer = node_module_path(n) or TOP
        prec = _node_precision(n)
        if prec == "fp32" and is_half(n, memo):
            prec = "fp16"
            pats = [p for p in recipe.fp16_layers if keep_float_match(layer, (p,))]
            why = (f"recipe fp16 ({', '.join(repr(p) for p in pats)})" if pats
                   else "computes in fp16 (its inputs are fp16)")
        elif prec == "fp32":
            pats = [p for p in recipe.float_layers if keep_float_match(layer, (p,))]
            why = (f"recipe keep-float ({', '.join(repr(p) for p in pats)})" if pats
                   else "not annotated by the quantizer (it does not quantise this op here)")
        elif any(keep_float_match(layer, (p,)) for p in recipe.float_layers):
            why = ("matched keep-float, but its input arrives quantised and this op passes int8 through "
                   "(it shares its input's quantisation parameters)")
        elif prec == "w8":
            why = "recipe: weight-only" if recipe.weight_only else "weights quantised, activations not annotated"
        elif prec == "int16":
            why = "recipe: int16 activations (W8A16)"
        else:
            why = "recipe"
        key = (layer, op, prec, why)
        rows.setdefault(key, {"layer": layer, "op": op, "count": 0, "precision": prec, "why": why})
        rows[key]["count"] += 1
    return list(rows.values())


def summary(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        out[r["precision"]] = out.get(r["precision"], 0) + r["count"]
    return out


def _delegate_fallback_layers(graph_module) -> dict:
    """ExecuTorch: module path -> op classes left outside every delegate (portable kernels)."""

    out: dict = {}
    for n in graph_module.graph.nodes:
        if n.op != "call_function" or "call_delegate" in str(n.target) or "getitem" in str(n.target):
            continue
        op = _op_class(n.target)
        if op is None:
            continue
        out.setdefault(node_module_path(n) or TOP, set()).add(op)
    return {k: sorted(v) for k, v in out.items()}


def tflite_layers(path) -> dict:
    """LiteRT: (layer, op class) -> Counter of precisions, read from the .tflite's operators without delegates.

    litert-torch names each tensor after its module stack ("edgehydra.model.HydraNet/torch.nn.modules.
    container.Sequential_crp1/..../torch.nn.modules.conv.Conv2d_segm;2"): the attribute names after each
    class name, joined, are the module path.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    td = {t["index"]: t for t in it.get_tensor_details()}
    kinds = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "conv", "ADD": "add", "RESIZE_BILINEAR": "upsample",
             "MAX_POOL_2D": "max_pool", "AVERAGE_POOL_2D": "avg_pool", "FULLY_CONNECTED": "linear",
             "CONCATENATION": "cat", "MUL": "mul", "MEAN": "mean"}
    out: dict = {}
    for op in it._get_ops_details():
        kind = kinds.get(op["op_name"])
        if kind is None or not len(op["outputs"]):
            continue
        ins = [td[i]["dtype"] for i in op["inputs"] if i >= 0 and i in td]
        act = ins[0] if ins else None
        prec = {"int8": "int8", "int16": "int16", "float32": "fp32", "float16": "fp16"}.get(
            getattr(act, "__name__", str(act)), str(act))
        c = out.setdefault((_tflite_layer(td[op["outputs"][0]]["name"], kind), kind), Counter())
        c[prec] += 1
    return out


def _tflite_layer(name: str, kind: str) -> str:
    """The module path of the operator behind a tensor name. A fused operator's output is named after every
    op fused into it ("...ReLU6_relu;;...Conv2d_pre_segm;"): the path whose leaf class fits the op kind wins
    (a Conv2d for a convolution); an add or upsample belongs to the innermost non-leaf module (a CRPBlock,
    an inverted residual block, or the model's own forward)."""
    cands = []
    for stack in filter(None, name.split(";")):
        segs = stack.split("/")[1:]  # [0] is the root model class
        parts = [seg.rsplit(".", 1)[-1].split("_", 1) for seg in segs]
        cands.append(([p[1] for p in parts if len(p) == 2], parts[-1][0] if parts else ""))
    leaf = LEAF_MODULE.get(kind)
    for path, cls in cands:
        if (cls == leaf) if leaf else cls not in LEAF_MODULE.values() and cls not in ("ReLU6", "ReLU"):
            return ".".join(path) or TOP
    return TOP


def shipped(rows: list[dict], target: str, facts: dict, path=None) -> list[dict]:
    """The program's map as the artifact runs it: ``runs_on`` per row, and a precision changed by the target
    (with its reason) where the target changes it."""
    out = []
    if target == "executorch":
        fb = facts.get("delegation", {}).get("fallback_layers", {})
        for r in rows:
            left = r["op"] in fb.get(r["layer"], ())
            out.append(dict(r, runs_on="portable kernels (partitioner fallback)" if left else
                            facts.get("delegate", "xnnpack").upper()))
    elif target == "coreml":
        for r in rows:
            if r["precision"] in ("fp32", "fp16"):
                out.append(dict(r, precision="fp16", why=r["why"] + "; Core ML computes in fp16", runs_on="Core ML"))
            else:
                out.append(dict(r, precision=f"{r['precision']} (fp16 compute)", runs_on="Core ML"))
    elif target == "tflite" and path is not None:
        got = tflite_layers(path)
        want: dict = {}
        for r in rows:
            want.setdefault((r["layer"], r["op"]), Counter())[r["precision"]] += r["count"]
        for r in rows:
            key = (r["layer"], r["op"])
            if key not in got or got[key] == want[key]:
                out.append(dict(r, runs_on="LiteRT"))
            else:
                p = ", ".join(f"{n} {k}" for k, n in sorted(got[key].items()))
                out.append(dict(r, why=f"{r['why']}; in the .tflite this layer's {r['op']} ops are {p}",
                                runs_on="LiteRT", changed_by_converter=True))
    else:
        out = [dict(r, runs_on=target) for r in rows]
    return out


def uniform(precision: str, why: str) -> dict:
    """The map of a float artifact: every layer in one precision."""
    return {"uniform": precision, "why": why}


def artifact_map(source, target: str, precision: str, facts: dict, path) -> dict:
    """The manifest's ``precision_map`` for one artifact."""
    if precision in ("fp32", "fp16"):
        why = {"fp32": "float export", "fp16": "fp16 export"}[precision]
        return uniform(precision, why)
    if precision == "w8":
        return uniform("w8", "weights int8, activations and compute in float (weight-only export)")
    if "quantised_by" in facts or source.program is None:
        return uniform("int8", f"quantised by {facts.get('quantised_by', 'the backend')}: no per-layer map from "
                               "the run's program")
    rows = shipped(program_layers(source.program.module, source.program.recipe), target, facts, path)
    return {"summary": summary(rows), "layers": rows}
