"""Per-operator latency of an ExecuTorch .pte (ETDump) or an .onnx (onnxruntime's profiler) on this host,
mapped to HydraNet's layers and stages. The .onnx is mapped by the module names its exporter writes into
each node (profile_onnx); the .pte as follows.

The installed ExecuTorch records one timing per XNNPACK operator through ETDump
(``_load_for_executorch(..., enable_etdump=True)``; ``Inspector`` reads it back: see
../shared/reference/TOOLCHAIN.md). Those rows carry XNNPACK's operator names ("Convolution (NHWC, QC8)
DWConv #3", "Fully Connected (NC, QS8, QC8W) GEMM #20", "Add (ND) #4"), not module paths: the
delegate logs no debug handles in this version (their module_hierarchy is empty even with an
ETRecord). XNNPACK runs its operators in the order of the lowered graph, which is the exported
graph's order, so the k-th convolution-like operator (Convolution or Fully Connected: XNNPACK runs
1x1 convolutions as a GEMM) is the k-th ``aten.conv2d`` node of the graph that was lowered. The
mapping is checked, not assumed: the counts must agree and every depthwise operator must land on a
depthwise convolution, else the profile says it could not map and keeps the operator names only.
Other operators (add, max-pool, resize, convert, clamp, transpose) are charged to the layer of the
convolution before them (the CRP add after its 1x1, the convert after a float island), operators
before the first convolution to "input".
"""
from __future__ import annotations

import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from edgehydra._io import save_figure
from edgehydra.graph import (UNIT_OPS, graph_convs, graph_unit_ops, node_module, node_module_path,  # noqa: F401
                             runtime_class, stage_of, xnnpack_class)

CONV_OPS = ("Convolution", "Fully Connected")


def op_precision(event: str) -> str:
    tag = re.search(r"\(([^)]*)\)", event)
    t = tag.group(1) if tag else ""
    if any(k in t for k in ("QC8", "QS8", "S8", "QU8", "X8")):
        return "int8"
    if "F16" in t:
        return "fp16"
    if "F32" in t:
        return "fp32"
    return "-"


def etdump_rows(pte: str | Path, example: torch.Tensor, runs: int = 20, warmup: int = 3) -> list[dict]:
    """Median time per XNNPACK operator over ``runs`` calls: [{event, ms}] in execution order."""
    from executorch.extension.pybindings import portable_lib as pl

    from edgehydra.exporters.executorch import runtime

    runtime()  # the threadpool started quietly (cpuinfo lines muted)
    m = pl._load_for_executorch(str(pte), enable_etdump=True)
    x = example.contiguous()
    for _ in range(warmup):
        m.forward([x])
    # ETDump keeps every call; a fresh module per profile would re-pay the load, so warm-up calls
    # are dropped below by taking the last ``runs`` samples of each event.
    for _ in range(runs):
        m.forward([x])
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "run.etdp"
        m.write_etdump_result_to_file(str(p))
        return etdump_file_rows(p, runs)


def etdump_file_rows(path: str | Path, runs: int | None = None) -> list[dict]:
    """Median time per delegated operator in an ETDump file (this host's, or one an executor runner wrote
    on a device with --etdump_path): [{event, ms}] in execution order; ``runs``: the last N samples only."""
    import logging
    import warnings

    from executorch.devtools import Inspector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            ins = Inspector(etdump_path=str(path))
        finally:
            logging.disable(level)
    rows = []
    for block in ins.event_blocks:
        for ev in block.events:
            if not ev.is_delegated_op or not ev.perf_data:
                continue
            raw = list(ev.perf_data.raw)[-runs:] if runs else list(ev.perf_data.raw)
            rows.append({"event": ev.name, "ms": float(np.median(raw))})
    return rows


def map_rows(rows: list[dict], convs: list[tuple[str, bool]], tasks=("segm", "depth", "normals"),
             unit_ops: list[tuple[str, str]] | None = None) -> dict:
    """Attach layer, op class, precision and stage to each operator row (see the module docstring).

    With ``unit_ops`` (graph_unit_ops), the k-th add / upsample operator goes to the k-th add / upsample
    node's op module where it has one (a fusion "fuse3", an upsampling "up4", a CRP sum "crp2.0.sum"),
    checked per class by count like the convolutions (a class whose counts differ keeps the rule above)."""
    conv_rows = [r for r in rows if r["event"].startswith(CONV_OPS)]
    mapped = len(conv_rows) == len(convs) and all(
        ("DWConv" in r["event"]) <= dw for r, (_, dw) in zip(conv_rows, convs))
    why = None
    if not mapped:
        why = (f"{len(conv_rows)} convolution operators in the profile, {len(convs)} conv2d in the graph"
               if len(conv_rows) != len(convs) else "a depthwise operator fell on a dense convolution")
    by_class: dict[str, list[str]] = defaultdict(list)
    for cls, path in unit_ops or ():
        by_class[cls].append(path)
    counts = defaultdict(int)
    for r in rows:
        counts[xnnpack_class(r["event"])] += 1
    unit_classes = {c for c, paths in by_class.items() if counts[c] == len(paths)}
    k, layer, seen = 0, "input", defaultdict(int)
    out = []
    for r in rows:
        if mapped and r["event"].startswith(CONV_OPS):
            layer = convs[k][0]
            k += 1
        cls = xnnpack_class(r["event"])
        r = dict(r, op_class=cls, precision=op_precision(r["event"]))
        if mapped:
            own = by_class[cls][seen[cls]] if cls in unit_classes else ""
            r["layer"] = own or layer
            r["stage"] = stage_of(r["layer"], tasks)
        seen[cls] += 1
        out.append(r)
    return {"rows": out, "mapped": mapped, "unmapped_reason": why}


def map_pte_rows(rows: list[dict], lowered_module, size, tasks) -> dict:
    """ETDump rows on the layers of the module the .pte was lowered from (its exported graph's conv order)."""
    ep = torch.export.export(lowered_module, (torch.zeros(1, 3, *size),))
    return map_rows(rows, graph_convs(ep), tasks, graph_unit_ops(ep, op_units_of(lowered_module)))


OP_UNIT_TYPES = ("edgehydra.model.Fuse", "edgehydra.model.Sum", "edgehydra.model.Upsample")


def op_units_of(module) -> list[str]:
    """The op modules (HydraNet.op_units) of a HydraNet, or of a pt2e program converted from one (read from
    the module types its nodes' nn_module_stack records)."""
    if hasattr(module, "op_units"):
        return module.op_units()

    gm = module.graph_module if hasattr(module, "graph_module") else module
    return sorted({path for path, typ in map(node_module, gm.graph.nodes) if typ in OP_UNIT_TYPES})


def aggregate(rows: list[dict], key: str) -> list[dict]:
    acc = defaultdict(lambda: [0.0, 0])
    for r in rows:
        k = r.get(key, "unmapped")
        acc[k][0] += r["ms"]
        acc[k][1] += 1
    total = sum(v[0] for v in acc.values()) or 1.0
    return sorted(({key: k, "ms": v[0], "ops": v[1], "share": v[0] / total} for k, v in acc.items()),
                  key=lambda d: -d["ms"])


def summarize(res: dict) -> dict:
    """The sums every profile carries: total, by operator class, and (rows mapped to layers) by stage and layer."""
    rows = res["rows"]
    res.update(total_ms=sum(r["ms"] for r in rows), by_class=aggregate(rows, "op_class"))
    if res["mapped"]:
        res.update(by_stage=aggregate(rows, "stage"), by_layer=per_layer_ms(rows))
    return res


def per_layer_ms(mapped_rows: list[dict]) -> dict[str, float]:
    acc: dict[str, float] = defaultdict(float)
    for r in mapped_rows:
        acc[r.get("layer", "unmapped")] += r["ms"]
    return dict(acc)


def profile_pte(pte: str | Path, lowered_module, size, runs: int = 20, tasks=("segm", "depth", "normals"),
                threads: int | None = None) -> dict:
    """The per-operator profile of ``pte`` (lowered from ``lowered_module``), by layer, class and stage."""
    from edgehydra.exporters.executorch import runtime

    runtime(threads)
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # torch only wraps the tensors; see benchmarks/run.py
    try:
        rows = etdump_rows(pte, torch.zeros(1, 3, *size), runs=runs)
    finally:
        torch.set_num_threads(prev)
    res = map_pte_rows(rows, lowered_module, size, tasks)
    res.update({"artifact": str(pte), "size": list(size), "runs": runs})
    return summarize(res)


def profile_here(artifact: str | Path, size, runs: int = 20, tasks=("segm", "depth", "normals"), threads: int = 2,
                 lowered_module=None) -> dict:
    """This host's per-operator profile of an artifact, by its runtime's own tool: a .pte through ETDump
    (``lowered_module``: the module it was lowered from, whose graph maps the rows), an .onnx through
    onnxruntime's profiler, a .tflite operator by operator in LiteRT."""
    artifact = Path(artifact)
    if artifact.suffix == ".onnx":
        return profile_onnx(artifact, size, runs=runs, tasks=tasks, threads=threads)
    if artifact.suffix == ".tflite":
        from .tflite_ops import profile_tflite

        return summarize(profile_tflite(artifact, size, runs=runs, tasks=tasks, threads=threads))
    return profile_pte(artifact, lowered_module, size, runs=runs, tasks=tasks, threads=threads)




def onnx_nodes(path: Path) -> dict[str, dict]:
    """ONNX node name -> {layer, dw, op_type, inputs, outputs}: the exporter's ``pkg.torch.onnx.name_scopes``
    metadata names the module each node came from (['', 'layer2', ..., 'layer2.0.output.0.0', 'conv2d_1'])."""
    import ast

    import onnx

    m = onnx.load(str(path), load_external_data=False)
    out = {}
    for n in m.graph.node:
        meta = {p.key: p.value for p in n.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
            classes = ast.literal_eval(meta.get("pkg.torch.onnx.class_hierarchy", "[]"))
        except (ValueError, SyntaxError):
            scopes, classes = [], []
        layer = scopes[-2] if len(scopes) > 2 else ""
        if n.op_type == "Conv" and len(classes) > 1 and classes[-2].endswith("BatchNorm2d") and "." in layer:
            # an FP32 export folds each BatchNorm into the convolution before it and names the Conv after the
            # BatchNorm ('layer1.1'); the convolution is the module before it in its Sequential ('layer1.0')
            head, idx = layer.rsplit(".", 1)
            layer = f"{head}.{int(idx) - 1}" if idx.isdigit() and int(idx) > 0 else layer
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        out[n.name] = {"layer": layer, "dw": group > 1, "op_type": n.op_type, "inputs": list(n.input),
                       "outputs": list(n.output)}
    return out


def profile_onnx(path: str | Path, size, runs: int = 20, tasks=("segm", "depth", "normals"), threads: int = 2,
                 warmup: int = 3) -> dict:
    """Per-node latency of an .onnx under onnxruntime's own profiler (SessionOptions.enable_profiling),
    median over ``runs`` calls, each node on its module (the file's name-scope metadata; a node onnxruntime
    fused keeps its first node's name, one it inserted, e.g. a layout Transpose, goes to the layer before)."""
    import json as _json

    import onnxruntime as ort

    path = Path(path)
    nodes = onnx_nodes(path)
    by_output = {o: n for n, d in nodes.items() for o in d["outputs"]}

    def node_of(name: str, kind: str) -> dict | None:
        base = re.sub(r"(_token_\d+)+$", "", name.split("/")[0])
        # a node onnxruntime rewrote into its NCHWc layout is named after its output tensor ("hardtanh_nchwc")
        n = base if base in nodes else by_output.get(base.removesuffix("_nchwc"))
        # a kernel it fused (Conv + Clip) is named after the fused chain's last node: its time is the conv's
        seen = 0
        while kind == "Conv" and n and nodes[n]["op_type"] != "Conv" and nodes[n]["inputs"] and seen < 4:
            n, seen = by_output.get(nodes[n]["inputs"][0]), seen + 1
        return nodes.get(n) if n else None

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(d) / "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        x = {sess.get_inputs()[0].name: np.zeros((1, 3, *size), np.float32)}
        for _ in range(warmup + runs):
            sess.run(None, x)
        events = _json.loads(Path(sess.end_profiling()).read_text())
    per = defaultdict(list)
    kinds, order = {}, []
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"].removesuffix("_kernel_time")
        if name not in per:
            order.append(name)
        per[name].append(e["dur"] / 1e3)
        kinds[name] = e.get("args", {}).get("op_name", "")
    rows, layer = [], "input"
    for name in order:
        kind = kinds[name]
        node = node_of(name, kind)
        layer = (node or {}).get("layer") or layer
        cls = runtime_class("onnx", kind)
        if cls == "conv" and node and node["dw"]:
            cls = "depthwise conv"
        prec = "int8" if kind.startswith("QLinear") or kind == "ConvInteger" else (
            "-" if cls.startswith(("convert", "transpose")) else "fp32")
        rows.append({"event": f"{kind} {name}", "ms": float(np.median(per[name][-runs:])), "layer": layer,
                     "op_class": cls, "precision": prec, "stage": stage_of(layer, tasks)})
    convs = [r for r in rows if r["op_class"].endswith("conv")]
    mapped = bool(convs) and all(r["layer"] not in ("", "input") for r in convs)
    return summarize({"rows": rows, "mapped": mapped, "artifact": str(path), "size": list(size), "runs": runs,
                      "runtime": "onnxruntime",
                      "unmapped_reason": None if mapped else "the file carries no name-scope metadata for its convolutions"})


def chart(profile: dict, path: Path, title: str = "") -> Path:
    """Two bars: time by network stage and by operator class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("by_stage", "stage"), ("by_class", "op_class")]
    groups = [(k, f) for k, f in groups if profile.get(k)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.2))
    axes = np.atleast_1d(axes)
    for ax, (k, f) in zip(axes, groups):
        items = profile[k][::-1]
        ax.barh([d[f] for d in items], [d["ms"] for d in items], color="#2471a3")
        ax.set_xlabel("ms per call (median over calls)")
        ax.set_title(f.replace("op_class", "operator class"))
    where = {"onnxruntime": "onnxruntime nodes", "litert": "LiteRT ops timed alone", "trtexec": "TensorRT layers",
             "benchmark_model": "LiteRT ops"}.get(profile.get("runtime"), "XNNPACK ops")
    if profile.get("device"):
        where += f" on {profile['device']}"
    fig.suptitle(title or f"Per-op profile, {Path(profile['artifact']).name} ({profile['total_ms']:.2f} ms in {where})",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    return path
