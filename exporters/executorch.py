"""ExecuTorch .pte lowered to XNNPACK (fp32 and int8), verified with executorch.runtime.

Delegation coverage is reported from the lowered graph: the share of operators inside delegates
and the list of those left to the portable CPU kernels. Before an int8 graph is lowered to XNNPACK,
the clamps its partitioner cannot fuse into an add are dropped where they are provably redundant
(``drop_saturated_add_clamps``; counted in the manifest). Other partitioners (Core ML, Qualcomm QNN,
Vulkan) are used when ``--delegate`` names one whose package is installed.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter

import numpy as np
import torch

from edgehydra.errors import BadInputError, MissingBackendError

from ._pt2e import refuse_precisions
from ._et_runtime import runtime, runtime_threads  # noqa: F401  (callers read them here)
from edgehydra.targets import facts_of

from .target import ExportTarget

DELEGATES = {
    "xnnpack": ("executorch.backends.xnnpack.partition.xnnpack_partitioner", "XnnpackPartitioner"),
    "coreml": ("executorch.backends.apple.coreml.partition", "CoreMLPartitioner"),
    "qnn": ("executorch.backends.qualcomm.partition.qnn_partitioner", "QnnPartitioner"),
    "vulkan": ("executorch.backends.vulkan.partitioner.vulkan_partitioner", "VulkanPartitioner"),
}


def _partitioner(name: str):
    import importlib

    if name not in DELEGATES:
        raise BadInputError(f"--delegate {name!r}: choose one of {', '.join(DELEGATES)}")
    mod, cls = DELEGATES[name]
    try:
        return getattr(importlib.import_module(mod), cls)()
    except ImportError as e:
        raise MissingBackendError(mod.split(".")[0], "executorch", f"the {name} delegate ({e})") from None


def delegation(graph_module) -> dict:
    """Operators inside delegates vs left to portable kernels, counted on the lowered graph."""
    delegated, portable = 0, Counter()
    for gm in [graph_module] + [m for _, m in graph_module.named_modules() if isinstance(m, torch.fx.GraphModule)]:
        for n in gm.graph.nodes:
            if n.op != "call_function":
                continue
            t = str(n.target)
            if "executorch_call_delegate" in t:
                continue
            if t.startswith("<built-in function getitem>") or "getitem" in t:
                continue
            portable[t.split("::")[-1]] += 1
    try:
        from executorch.devtools.backend_debug import get_delegation_info

        info = get_delegation_info(graph_module)
        delegated = int(info.num_delegated_nodes)
        non = int(info.num_non_delegated_nodes)
    except Exception:  # noqa: BLE001 - older/newer devtools: fall back to our own count
        non = sum(portable.values())
    total = delegated + non
    from .precision_map import _delegate_fallback_layers

    return {"delegated_ops": delegated, "portable_ops": non, "coverage": delegated / total if total else 0.0,
            "portable": dict(portable), "fallback_layers": _delegate_fallback_layers(graph_module)}


# XNNPACK refuses a qs8 add whose input-to-output scale ratio lies outside [2**-10, 2**8)
# (xnn_create_add_nd_qs8 returns xnn_status_unsupported_parameter).
_XNN_ADD_SCALE_RATIO = (2.0**-10, 2.0**8)


def _quantize_level(v: float, scale: float, zero_point: int, qmin: int, qmax: int) -> int:
    """quantize_per_tensor of one value, as quantized_decomposed computes it (round half to even)."""
    if math.isinf(v):
        return qmax if v > 0 else qmin
    return int(min(max(round(v * (1.0 / scale)) + zero_point, qmin), qmax))


def drop_saturated_add_clamps(graph_module) -> dict:
    """Remove the ReLU6 between a quantised add and its quantize where the quantize already clamps.

    The int8 program quantises the decoder's add -> ReLU6 as one unit (its range is the ReLU6's [0, 6];
    calibration/quantizers.annotate_conv_relu6). XNNPACK's partitioner fuses a clamp into an add only
    for relu (AddConfig: fused_act=["relu.default"]), so each such add left the int8 graph: dequantise,
    fp32 add, fp32 clamp, quantise, 8 % of hydranet_nyud's int8 time at 240x320 (benchmarks/kernels.py).
    When the quantize maps the clamp's bounds to its own qmin/qmax, q(clamp(v)) == q(v) for every v
    (quantize is monotone and saturating), so dropping the clamp is exact and leaves dq -> add -> q, a
    plain qs8 add. Kept where XNNPACK would refuse that add's scales. Returns the counts.
    """
    q_op = torch.ops.quantized_decomposed.quantize_per_tensor.default
    dq_op = torch.ops.quantized_decomposed.dequantize_per_tensor.default
    dropped = kept = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.hardtanh.default:
            continue
        add = node.args[0]
        users = list(node.users)
        if (getattr(add, "target", None) != torch.ops.aten.add.Tensor or len(add.users) != 1 or not users
                or any(u.target != q_op for u in users)):
            continue
        lo = node.args[1] if len(node.args) > 1 else -1.0
        hi = node.args[2] if len(node.args) > 2 else 1.0
        if not all(_quantize_level(lo, *u.args[1:5]) == u.args[3] and _quantize_level(hi, *u.args[1:5]) == u.args[4]
                   for u in users):
            continue
        in_scales = [a.args[1] for a in add.args[:2] if getattr(a, "target", None) == dq_op]
        lo_r, hi_r = _XNN_ADD_SCALE_RATIO
        if len(in_scales) != 2 or not all(lo_r <= s / u.args[1] < hi_r for s in in_scales for u in users):
            kept += 1
            continue
        node.replace_all_uses_with(add)
        graph_module.graph.erase_node(node)
        dropped += 1
    if dropped:
        graph_module.recompile()
    return {"dropped": dropped, "kept": kept}


def _exported(module, example: torch.Tensor, precision: str, delegate: str):
    """``module`` exported at ``example``'s shape, with the int8 graph's saturated add clamps dropped."""
    ep = torch.export.export(module, (example,))
    facts = {}
    if precision != "fp32" and delegate == "xnnpack":
        facts["add_relu6_clamps"] = drop_saturated_add_clamps(ep.graph_module)
    return ep, facts


def _lower_exported(ep, facts: dict, delegate: str):
    from executorch.exir import to_edge_transform_and_lower

    lowered = to_edge_transform_and_lower(ep, partitioner=[_partitioner(delegate)])
    facts["delegation"] = delegation(lowered.exported_program().graph_module)
    return lowered.to_executorch(), facts


def lower(module, example: torch.Tensor, precision: str, delegate: str = "xnnpack", exported=None):
    """``module`` exported at ``example``'s shape (or ``exported``, the (program, facts) ``_exported`` made of it)
    and lowered: (ExecutorchProgramManager, facts). Every build's lowering goes through here, looked up at call time."""
    ep, facts = exported or _exported(module, example, precision, delegate)
    return _lower_exported(ep, facts, delegate)


def lowered_bytes(module, example: torch.Tensor, precision: str, delegate: str = "xnnpack") -> tuple[bytes, dict]:
    """``lower``'s .pte bytes and facts, read from the lowering cache (build_cache.py) where exactly this program was
    lowered before; facts["lowering_key"] names the entry."""
    from . import build_cache

    ep, facts = _exported(module, example, precision, delegate)
    key = lowering_key(ep, precision, delegate)
    hit = build_cache.get(key, ".pte")
    if hit is not None:
        data, cached = hit
        return data, {**facts, "delegation": cached["delegation"], "lowering_key": key}
    prog, facts = lower(module, example, precision, delegate, exported=(ep, facts))
    build_cache.put(key, ".pte", prog.buffer, {"delegation": facts["delegation"]},
                    {"target": "executorch", "precision": precision, "delegate": delegate})
    return prog.buffer, {**facts, "lowering_key": key}


def lowering_key(ep, precision: str, delegate: str) -> str:
    """What a lowering's bytes depend on: the exported graph (code, signature, each node's module path), every
    weight and constant, the precision, the delegate and the tool versions."""
    from importlib.metadata import version

    h = hashlib.sha256()

    def add(*parts):
        for p in parts:
            h.update(str(p).encode())
            h.update(b"\0")

    add("edgehydra-lowering-1", torch.__version__, version("executorch"), precision, delegate, ep.graph_signature,
        ep.graph_module.code)
    for n in ep.graph.nodes:
        add(n.name, [v[0] for v in (n.meta.get("nn_module_stack") or {}).values()])
    for kind, tensors in (("state", ep.state_dict), ("const", ep.constants)):
        for name in sorted(tensors):
            t = tensors[name]
            if isinstance(t, torch.Tensor):
                t = t.detach().cpu().contiguous()
                add(kind, name, t.dtype, tuple(t.shape))
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            else:
                add(kind, name, repr(t))
    return h.hexdigest()


def build(source, req, path):
    delegate = req.options.get("delegate", "xnnpack")
    if req.precision == "int8":
        refuse_precisions(source.program, TARGET)
    module = source.fp32.eval() if req.precision == "fp32" else source.program.module
    data, facts = lowered_bytes(module, torch.zeros(req.batch, 3, *req.size), req.precision, delegate)
    with open(path, "wb") as f:
        f.write(data)
    return {"delegate": delegate, "tools": ("executorch",), **facts,
            "metadata_location": "manifest.json (a .pte holds no free-form metadata)"}




def load_runner(path, manifest):
    method = runtime().load_program(str(path)).load_method("forward")

    def run(x: np.ndarray):
        return [o.numpy() for o in method.execute([torch.from_numpy(np.ascontiguousarray(x))])]

    return run


def bundle_sidecar(final, frames, ref, tasks, tol) -> dict:
    """The parity frames and their reference outputs as a BundledProgram beside the .pte, run once here
    through ExecuTorch's bundled-program API (the same check `bench` repeats on a device)."""
    from edgehydra._io import path_size, sha256_path

    from .bundle import run_bundle, write_bundle

    per_frame = [tuple(r[i:i + 1] for r in ref) for i in range(len(frames))]
    b = write_bundle(final, frames, per_frame)
    res = run_bundle(b, tasks, tol)
    return {"bundle": {"path": b.name, "sha256": sha256_path(b), "size_bytes": path_size(b), "cases": len(frames),
                       "what": "BundledProgram: the .pte with the parity frames and reference outputs (not counted "
                               "in the artifact's size)", "host_check": {"pass": res["pass"], "failures": res["failures"]}}}


def bundle_check(artifact, manifest, tol, transport=None, python="python3") -> dict:
    """ExportTarget.sidecar_check: the .bpte run through ExecuTorch's bundled-program API where the .pte runs."""
    from .target import listed_sidecar
    from .bundle import bundle_path, run_bundle

    b = listed_sidecar(artifact, manifest, "bundle", bundle_path(artifact))
    return run_bundle(b, tuple(manifest["outputs"]), tol, transport, python)


# the portable executor_runner links no backend: a delegated program fails to load in it
DEVICE_RUNNERS = {"xnnpack": "xnn_executor_runner", "qnn": "qnn_executor_runner", "coreml": "coreml_executor_runner",
                  "vulkan": "vulkan_executor_runner"}


def remote_plan(manifest: dict, profile) -> dict:
    """The executor runner built with the backend the program was delegated to."""
    delegate = (manifest.get("facts") or {}).get("delegate", "xnnpack")

    def argv(exe, path, threads, runs, warmup):
        return [exe, f"--model_path={path}", f"--num_executions={runs}"]

    # no op_profile_flags: the runner writes its ETDump to a file (--etdump_path), which is read back with
    # `bench --ops --ops-from FILE.etdp`
    return {"tool": "executor_runner", "binaries": [DEVICE_RUNNERS.get(delegate, "executor_runner")], "flags": [],
            "accelerator": delegate, "argv": argv}


TARGET = ExportTarget.of(facts_of('executorch'), build=build, load_runner=load_runner, sidecar=bundle_sidecar, sidecar_check=bundle_check, remote_plan=remote_plan)
