"""ExecuTorch .pte lowered to XNNPACK (fp32 and int8), verified with executorch.runtime.

Delegation coverage is reported from the lowered graph: the share of operators inside delegates
and the list of those left to the portable CPU kernels. Other partitioners (Core ML, Qualcomm QNN,
Vulkan) are used when ``--delegate`` names one whose package is installed.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from edgehydra.errors import BadInputError, MissingBackendError

from .base import ExportTarget, muted_native_stderr

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
    return {"delegated_ops": delegated, "portable_ops": non, "coverage": delegated / total if total else 0.0,
            "portable": dict(portable)}


def build(source, req, path):
    from executorch.exir import to_edge_transform_and_lower

    delegate = req.options.get("delegate", "xnnpack")
    module = source.fp32.eval() if req.precision == "fp32" else source.program.module
    x = torch.zeros(req.batch, 3, *req.size)
    ep = torch.export.export(module, (x,))
    lowered = to_edge_transform_and_lower(ep, partitioner=[_partitioner(delegate)])
    deleg = delegation(lowered.exported_program().graph_module)
    prog = lowered.to_executorch()
    with open(path, "wb") as f:
        f.write(prog.buffer)
    return {"delegate": delegate, "delegation": deleg, "tools": ("executorch",),
            "metadata_location": "manifest.json (a .pte holds no free-form metadata)"}


_THREADPOOL_STARTED = False


def runtime(threads: int | None = None):
    """executorch.runtime's Runtime, its threadpool started once with native stderr muted: starting
    it on an x86 host logs five lines about ARM-only sysfs files (cpuinfo_utils.cpp: image_version,
    midr_el1) into the output of every command that runs a .pte. ``threads`` sizes that process-wide
    pool, which XNNPACK runs on and which starts with one thread per core."""
    global _THREADPOOL_STARTED
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    if not _THREADPOOL_STARTED:
        with muted_native_stderr():
            portable_lib._threadpool_get_thread_count()
        _THREADPOOL_STARTED = True
    if threads is not None and portable_lib._threadpool_get_thread_count() != threads:
        # "unsafe" only while a method executes, which callers sizing the pool are not doing
        portable_lib._unsafe_reset_threadpool(threads)
    return Runtime.get()


def runtime_threads() -> int:
    """Threads in ExecuTorch's pool (started quietly if it was not)."""
    from executorch.extension.pybindings import portable_lib

    runtime()
    return portable_lib._threadpool_get_thread_count()


def load_runner(path, manifest):
    method = runtime().load_program(str(path)).load_method("forward")

    def run(x: np.ndarray):
        return [o.numpy() for o in method.execute([torch.from_numpy(np.ascontiguousarray(x))])]

    return run


TARGET = ExportTarget(name="executorch", suffix=".pte", precisions=("fp32", "int8"), runtime="executorch.runtime",
                      extra="executorch", packages=("executorch",), build=build, load_runner=load_runner,
                      options=("delegate",))
