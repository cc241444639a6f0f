"""Graph rewrites of a converted pt2e program that some converters need before they accept it."""
from __future__ import annotations

import torch

from edgehydra.graph import dq_dtype, layers_where  # noqa: F401  (layers_where: callers read it here too)


def unfold_int8_weights(gm: torch.fx.GraphModule) -> int:
    """``int8 constant -> dequantize`` becomes ``float constant -> quantize -> dequantize``, in place.

    convert_pt2e(fold_quantize=True), which our programs use, stores weights as int8 tensors; litert-torch's
    converter lowers quantize/dequantize pairs to StableHLO uniform types and refuses a dequantize whose
    operand is a plain i8 tensor ("must be ranked tensor of per-tensor integer quantized ... values").
    The rewrite is exact: the float constant is the dequantised weight, and quantising it with the same
    scale and zero point gives back the same integers (w = (q - z) * s, round(w / s) + z = q). Returns
    how many weights were rewritten.
    """
    qd = torch.ops.quantized_decomposed
    pairs = {qd.dequantize_per_channel.default: qd.quantize_per_channel.default,
             qd.dequantize_per_tensor.default: qd.quantize_per_tensor.default}

    def value(a):
        return getattr(gm, a.target) if isinstance(a, torch.fx.Node) and a.op == "get_attr" else a

    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in pairs:
            continue
        src = node.args[0]
        if src.op != "get_attr" or value(src).dtype != torch.int8:
            continue
        with gm.graph.inserting_before(node):
            name = f"{src.target.replace('.', '_')}_float"
            gm.register_buffer(name, node.target(*[value(a) for a in node.args]))
            q = gm.graph.call_function(pairs[node.target], (gm.graph.get_attr(name), *node.args[1:]))
        node.replace_input_with(src, q)
        n += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return n


def int16_layers(gm: torch.fx.GraphModule) -> list[tuple[str, str]]:
    """(module path, op class) of the compute nodes that read an int16 dequantize (the program's W8A16
    layers), in graph order, each once."""
    return layers_where(gm, lambda n: any(dq_dtype(a) == "int16" for a in n.args))


def refuse_precisions(program, target) -> None:
    """One line, before any conversion, where the ``target`` record cannot build a program's int16 layers
    (W8A16) or its fp16 islands."""
    from edgehydra.calibration.fp16 import fp16_layers
    from edgehydra.errors import EdgeHydraError

    def shown(bad):
        return ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")

    # not bad input: the other targets of the same export build it (export_run reports this one failed)
    bad = [f"{p} ({op})" for p, op in int16_layers(program.module) if op not in target.w8a16_ops]
    if bad:
        raise EdgeHydraError(f"{target.name}: the program has int16 activations (W8A16) at {shown(bad)}; "
                             f"{target.w8a16_note}")
    if not target.fp16_islands:
        bad = [f"{p} ({op})" for p, op in fp16_layers(program.module)]
        if bad:
            raise EdgeHydraError(f"{target.name}: the program computes {shown(bad)} in fp16; {target.fp16_note}")
