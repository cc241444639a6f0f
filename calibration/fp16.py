"""fp16 islands in a converted pt2e program: the layers a recipe lists in ``fp16_layers`` compute in half.

The quantizer leaves those layers float (like ``keep_float``); after convert, this pass gives each of their
compute nodes half-precision weights (the float constants, stored as fp16) and half inputs, with a cast to
fp16 where an island's input comes from outside it and back to fp32 where its output leaves it. The
program then *is* what an fp16 layer computes: evaluated in PyTorch it rounds as the device will, and the
ExecuTorch export lowers the island to XNNPACK's fp16 kernels (the casts stay as portable copies at its
edges, which the latency measurement includes). QAT trains these layers in fp32 and casts them at convert.
"""
from __future__ import annotations

import operator

import torch

# quantize / dequantize / qparams nodes belong to no island: they are the int8 side of its edges
_QDQ = ("quantize_per", "dequantize_per", "choose_qparams")
_CASTS = (torch.ops.aten.to.dtype, torch.ops.aten._to_copy.default)
FP16_MARK = "edgehydra_fp16"


def _computes(n) -> bool:
    """A node an island can hold: a call that is neither a (de)quantize nor a cast."""
    return n.op == "call_function" and not any(s in str(n.target) for s in _QDQ) and n.target not in _CASTS


def island_nodes(gm: torch.fx.GraphModule, patterns) -> list[torch.fx.Node]:
    from edgehydra.graph import node_module_path

    from .quantizers import keep_float_match

    out = []
    for n in gm.graph.nodes:
        if not _computes(n):
            continue
        path = node_module_path(n)
        if path and keep_float_match(path, patterns):
            out.append(n)
    return out


def half_islands(gm: torch.fx.GraphModule, patterns) -> list[str]:
    """Rewrite ``gm`` in place so the nodes of the ``patterns`` modules compute in fp16. Returns the module
    paths made fp16, in graph order. A node of a matched module the program still runs in int8 (the quantizer
    could not leave it float: it shares its input's quantisation) stays as it is."""
    from edgehydra.graph import node_module_path, node_precision, op_class

    inside = {n for n in island_nodes(gm, patterns) if op_class(n.target) is None or node_precision(n) == "fp32"}
    for n in gm.graph.nodes:
        # a node whose every input is fp16 joins the island: the clamp after an fp16 conv (the ReLU6 module is a
        # sibling of the conv's, not a child), a residual add of two fp16 layers, a max-pool's getitem. Left
        # out, each would cost a cast to fp32 and one back.
        if n in inside or not _computes(n):
            continue
        acts = [a for a in n.all_input_nodes if a.op != "get_attr"]
        if acts and all(a in inside for a in acts):
            inside.add(n)
    isl = [n for n in gm.graph.nodes if n in inside]
    g = gm.graph
    halves: dict[str, str] = {}
    to_half: dict[torch.fx.Node, torch.fx.Node] = {}  # one cast per tensor entering, shared by its island users
    paths: list[str] = []
    for n in isl:
        for a in list(n.all_input_nodes):
            if a in inside:
                continue
            if a.op == "get_attr":
                t = operator.attrgetter(a.target)(gm)
                if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
                    continue
                if a.target not in halves:
                    halves[a.target] = a.target.replace(".", "_") + "_fp16"
                    gm.register_buffer(halves[a.target], t.detach().to(torch.float16))
                with g.inserting_before(n):
                    h = g.get_attr(halves[a.target])
                n.replace_input_with(a, h)
                continue
            if a not in to_half:  # before its first island user in graph order, so it precedes every later one
                with g.inserting_before(n):
                    to_half[a] = _cast(g, a, torch.float16)
            n.replace_input_with(a, to_half[a])
        outside = [u for u in n.users if u not in inside]
        if outside and n.target != torch.ops.aten.max_pool2d_with_indices.default:  # its getitems carry the casts
            with g.inserting_after(n):
                c = _cast(g, n, torch.float32)
            for u in outside:  # one cast back per tensor leaving, shared by its users outside
                u.replace_input_with(n, c)
        n.meta[FP16_MARK] = True
        p = node_module_path(n)
        if p not in paths:
            paths.append(p)
    g.eliminate_dead_code()
    gm.recompile()
    return paths


def _cast(g: torch.fx.Graph, a: torch.fx.Node, dtype) -> torch.fx.Node:
    """``a`` cast to ``dtype``, on ``a``'s module (so the precision map and ETDump rows stay on the layer)."""
    c = g.call_function(torch.ops.aten.to.dtype, (a, dtype))
    c.meta.update({k: a.meta[k] for k in ("nn_module_stack",) if k in a.meta})
    return c


def is_half(node, _memo=None) -> bool:
    """Whether ``node`` computes in fp16: its example value says so (a loaded program), or, in a freshly
    rewritten graph, its inputs are half constants or casts to half."""
    memo = {} if _memo is None else _memo
    if node in memo:
        return memo[node]
    memo[node] = False
    if node.meta.get(FP16_MARK):  # rewritten by half_islands (its example value still says fp32)
        memo[node] = True
        return True
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        memo[node] = val.dtype == torch.float16
        return memo[node]
    if node.op == "get_attr":
        try:
            t = operator.attrgetter(node.target)(node.graph.owning_module)
        except AttributeError:
            return False
        memo[node] = isinstance(t, torch.Tensor) and t.dtype == torch.float16
    elif node.op == "call_function" and node.target in _CASTS:
        memo[node] = node.kwargs.get("dtype", node.args[1] if len(node.args) > 1 else None) == torch.float16
    elif node.op == "call_function":
        ins = node.all_input_nodes
        memo[node] = bool(ins) and any(is_half(a, memo) for a in ins)
    return memo[node]


def fp16_layers(gm: torch.fx.GraphModule) -> list[tuple[str, str]]:
    """(module path, op class) of the program's compute nodes that run in fp16, in graph order, each once."""
    from edgehydra.graph import layers_where

    memo: dict = {}
    return layers_where(gm, lambda n: is_half(n, memo))


def fp16_program(model: torch.nn.Module, size) -> torch.fx.GraphModule:
    """The FP32 model as one fp16 island (a cast in, one out per output): what the search profiles each
    layer's fp16 time on. One island lowers to one XNNPACK delegate, whose operators follow the graph's
    order, so each maps to its layer; a program with several islands splits into several delegates at the
    casts, and their operators no longer come in graph order."""
    from .program import export_stage

    gm = export_stage(model, size)
    half_islands(gm, ("*",))
    return gm
