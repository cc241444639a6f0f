"""Per-operator latency of a .tflite on this host, and the module each of its operators came from.

LiteRT's Python interpreter has no op profiler (its C++ ``benchmark_model --enable_op_profiling`` has one,
and a device's output of it is read by devices/toolprofile.py). On this host each operator is timed
alone instead: the model's flatbuffer is cut to that one operator (its non-constant inputs become the
cut model's inputs, its weights stay), the cut model runs under the same interpreter, threads and
default XNNPACK delegate as the whole model, and its median over ``runs`` calls is the operator's time
(a PAD that feeds a convolution is timed with it: XNNPACK folds it into the convolution).
An operator timed alone sees warm caches and pays one interpreter call of its own, so the sum of the
parts is not the whole: the profile reports both (``sum_ms`` against ``whole_ms``), and what it is good
for is where the time goes (shares by stage, class, layer), which the overhead spreads evenly.

litert-torch names each tensor by the module path it came from:
"edgehydra.model.HydraNet/torch.nn.modules.container.Sequential_layer2/edgehydra.model.InvertedResidualBlock_0/
torch.nn.modules.container.Sequential_output/torch.nn.modules.container.Sequential_1/torch.nn.modules.conv.Conv2d_0;"
is ``layer2.0.output.1.0`` (each component is ``<class>_<attribute>``; fused outputs join several names
with ';'). An operator at the root (an add or upsample in HydraNet.forward) goes to the layer before it.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

CONV_TFL = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def module_of_tensor(name: str) -> str:
    """litert-torch tensor name -> module path ('' at the model's root or for a name it did not write)."""
    cands = [c for c in name.split(";") if "/" in c or c.startswith("edgehydra.")]
    if not cands:
        return ""
    # a fused conv+activation output names the activation, its input's activation and the conv: the conv
    # is the operator's own module
    best = next((c for c in cands if c.rsplit("/", 1)[-1].split("_", 1)[0].endswith(("Conv2d", "Linear"))), cands[0])
    parts = []
    for comp in best.split("/")[1:]:  # the first component is the model itself
        cls, _, attr = comp.partition("_")
        if attr:
            parts.append(attr)
    return ".".join(parts)


def op_layers(path: str | Path) -> list[dict]:
    """[{index, op, layer, precision}] for every operator of the .tflite, in execution order."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    out, layer = [], "input"
    for o in it._get_ops_details():
        name = tensors[o["outputs"][0]]["name"] if o["outputs"] else ""
        lay = module_of_tensor(name)
        layer = lay or layer
        dt = np.dtype(tensors[o["outputs"][0]]["dtype"]).name if o["outputs"] else ""
        prec = {"int8": "int8", "uint8": "int8", "int16": "int16", "float16": "fp16", "float32": "fp32"}.get(dt, "-")
        out.append({"index": o["index"], "op": o["op_name"], "layer": layer, "precision": prec})
    return out


def _groups(names: list[str], ops) -> list[list[int]]:
    """Operators timed together: one each, except a PAD whose output only the next convolution reads, which
    goes with that convolution (XNNPACK folds such a PAD into the convolution's padding; timed alone it would
    be charged a copy the whole model never makes)."""
    out, k = [], 0
    while k < len(ops):
        if (names[k] == "PAD" and k + 1 < len(ops) and names[k + 1] in CONV_TFL
                and ops[k + 1].inputs[0] == ops[k].outputs[0]
                and sum(ops[k].outputs[0] in o.inputs for o in ops) == 1):
            out.append([k, k + 1])
            k += 2
        else:
            out.append([k])
            k += 1
    return out


def _cut_models(path: Path, names: list[str]):
    """Yield (operator indices, flatbuffer bytes of a model holding only those operators)."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.read_model(str(path))
    sg = model.subgraphs[0]
    ops, inputs, outputs = list(sg.operators), sg.inputs, sg.outputs

    def constant(t):
        b = model.buffers[sg.tensors[t].buffer]
        return b.data is not None and len(b.data) > 0 or getattr(b, "size", 0) > 0

    try:
        for group in _groups(names, ops):
            part = [ops[i] for i in group]
            made = {t for o in part for t in o.outputs}
            sg.operators = part
            sg.inputs = list(dict.fromkeys(t for o in part for t in o.inputs
                                           if t >= 0 and t not in made and not constant(t)))
            sg.outputs = list(part[-1].outputs)
            yield group, bytes(fb.convert_object_to_bytearray(model))
    finally:
        sg.operators, sg.inputs, sg.outputs = ops, inputs, outputs


def _time(content: bytes | None, path: Path | None, threads: int, runs: int, warmup: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=threads) if content else Interpreter(
        model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        dt = np.dtype(d["dtype"])
        x = (rng.integers(-128, 127, d["shape"]).astype(dt) if dt.kind in "iu"
             else rng.standard_normal(d["shape"]).astype(dt))
        it.set_tensor(d["index"], x)
    for _ in range(warmup):
        it.invoke()
    t = []
    for _ in range(runs):
        s = time.perf_counter()
        it.invoke()
        t.append((time.perf_counter() - s) * 1e3)
    return float(np.median(t))


def profile_tflite(path: str | Path, size, runs: int = 20, tasks=("segm", "depth", "normals"), threads: int = 2,
                   warmup: int = 3) -> dict:
    """Each operator of the .tflite timed alone (see the module docstring), by layer, class and stage: the rows
    and their whole-call check; devices/opprofile.py profile_here adds the sums every profile carries."""
    from edgehydra.graph import runtime_class, stage_of

    path = Path(path)
    layers = op_layers(path)
    rows = []
    for group, content in _cut_models(path, [i["op"] for i in layers]):
        info = layers[group[-1]]
        ms = _time(content, None, threads, runs, warmup)
        rows.append({"event": " + ".join(f"{layers[k]['op']} #{k}" for k in group), "ms": ms, "layer": info["layer"],
                     "op_class": runtime_class("tflite", info["op"]), "precision": info["precision"],
                     "stage": stage_of(info["layer"], tasks)})
    whole = _time(None, path, threads, runs, warmup)
    convs = [r for r in rows if r["op_class"].endswith("conv")]
    mapped = bool(convs) and all(r["layer"] not in ("", "input") for r in convs)
    parts = sum(r["ms"] for r in rows)
    return {"rows": rows, "mapped": mapped, "artifact": str(path), "size": list(size), "runs": runs,
                      "runtime": "litert", "method": "each operator timed alone in a one-operator model cut from the file",
                      "sum_ms": parts, "whole_ms": whole,
                      "unmapped_reason": None if mapped else "the file's tensor names carry no module paths for its convolutions"}
