"""Per-operator profiles written by the device's own tools, read into the same table as this host's.

- TensorRT ``trtexec --exportProfile=F.json`` (``[{"count": N}, {"name", "timeMs", "averageMs", "medianMs",
  "percentage"}, ...]``) or the ``--dumpProfile`` log table (TensorRT 8: "Layer  Time (ms)  Avg. Time (ms)
  [Median Time (ms)]  Time %"; TensorRT 10 moved "Layer" last: "Time(ms)  Avg.(ms)  Median(ms)  Time(%)  Layer").
  A layer's name joins the ONNX nodes TensorRT fused ("node_conv2d_3 + node_hardtanh_2"), so each is
  mapped through the .onnx's node names to the module the exporter recorded for it (devices/opprofile.py).
- LiteRT ``benchmark_model --enable_op_profiling=true`` log: the "Run Order" table ("[node type] [first]
  [avg ms] ... [Name]"); a CPU node's name is "[output tensor names]:<node index>" (the index names the
  .tflite's operator, devices/tflite_ops.py gives its module), an XNNPACK operator inside the delegate is
  "Delegate/<XNNPACK operator>:<k>" and is mapped like ExecuTorch's (k-th convolution to k-th convolution).
- ExecuTorch: the ETDump an executor runner writes on the device (``--etdump_path``), read by the
  devtools Inspector exactly as this host's.

The samples these parsers are tested on are the tools' real output (tests/fixtures/real, each with its
source); the mapping is tested on this project's own artifacts.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from edgehydra.errors import BadInputError

from edgehydra.graph import runtime_class, xnnpack_class

from .opprofile import CONV_OPS, op_precision, stage_of, summarize

# ------------------------------------------------------------------------------------------ parsers


def parse_trtexec_profile(text: str) -> list[dict]:
    """trtexec's per-layer profile, JSON (--exportProfile) or log table (--dumpProfile): [{event, ms}] with
    ms the median per inference where the tool gives one, else the average."""
    s = text.lstrip()
    if re.match(r"\[\s*\{", s):  # a JSON list of objects, not a log line's "[I]"
        try:
            data = json.loads(s)
        except json.JSONDecodeError as e:
            raise BadInputError(f"trtexec profile JSON does not parse: {e}") from None
        rows = []
        for d in data:
            if "name" not in d:
                continue  # the leading {"count": N}
            ms = d.get("medianMs", d.get("averageMs"))
            if ms is None:
                raise BadInputError(f"trtexec profile row {d['name']!r} has neither medianMs nor averageMs")
            rows.append({"event": d["name"], "ms": float(ms)})
        return rows
    rows, cols = [], None
    for ln in text.splitlines():
        body = re.sub(r"^(\[[^\]]*\]\s*)?\[[A-Z]\]\s*", "", ln).rstrip()  # "[07/01/2021-12:27:29] [I] "
        if re.search(r"\bLayer\b", body) and re.search(r"Time", body):
            head = body.strip()
            cols = "first" if head.startswith("Layer") else "last"
            names = re.findall(r"Median|Avg", head)
            cols = (cols, "Median" in names)
            continue
        if cols is None or not body.strip():
            if cols is not None and rows:
                cols = None  # a table ends at its first blank line
            continue
        nums = r"([\d.]+)"
        if cols[0] == "last":
            m = re.match(r"\s*" + r"\s+".join([nums] * (4 if cols[1] else 3)) + r"\s+(.+)$", body)
            if not m:
                continue
            vals, name = m.groups()[:-1], m.groups()[-1]
        else:
            m = re.match(r"\s*(.+?)\s+" + r"\s+".join([nums] * (4 if cols[1] else 3)) + r"\s*$", body)
            if not m:
                continue
            name, vals = m.group(1), m.groups()[1:]
        if name.strip() == "Total":
            continue
        ms = float(vals[2]) if cols[1] else float(vals[1])  # median if printed, else the average
        rows.append({"event": name.strip(), "ms": ms})
    if not rows:
        raise BadInputError("no per-layer table found: expected trtexec --dumpProfile output or an --exportProfile JSON")
    return rows


def parse_benchmark_model_ops(text: str) -> list[dict]:
    """benchmark_model's "Run Order" table (the regular runs' one where the log has several):
    [{event, ms, node_type}] with ms the average per run."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if "Operator-wise Profiling Info for Regular Benchmark Runs" in ln), 0)
    rows, cols = [], None
    for ln in lines[start:]:
        body = re.sub(r"^INFO: \[[^\]]*\]\s*", "", ln).strip()
        if "[node type]" in body and "[Name]" in body:
            if rows:
                break
            cols = [c.strip("[]").lower() for c in re.split(r"\s*\t\s*|\s{2,}", body)]
            continue
        if cols is None:
            continue
        if not body or body.startswith("="):
            if rows:
                break
            continue
        vals = re.split(r"\s*\t\s*|\s{2,}", body)
        if len(vals) < len(cols):
            continue
        vals = vals[:len(cols) - 1] + [" ".join(vals[len(cols) - 1:])]
        d = dict(zip(cols, vals))
        try:
            ms = float(d["avg ms"])
        except (KeyError, ValueError):
            continue
        rows.append({"event": d["name"], "ms": ms, "node_type": d["node type"]})
    if not rows:
        raise BadInputError("no 'Run Order' table found: expected benchmark_model --enable_op_profiling=true output")
    return rows


def read_tool_profile(path: Path) -> tuple[str, list[dict]]:
    """(tool, rows) of a profile file, told apart by its content."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"profile not found: {path}")
    if path.suffix in (".etdp", ".etdump"):
        from .opprofile import etdump_file_rows

        return "executor_runner", etdump_file_rows(path)
    text = path.read_text(errors="replace")
    if "[node type]" in text:
        return "benchmark_model", parse_benchmark_model_ops(text)
    if re.match(r"\[\s*\{", text.lstrip()) or re.search(r"\bLayer\b.*Time|Time.*\bLayer\b", text):
        return "trtexec", parse_trtexec_profile(text)
    raise BadInputError(f"{path}: not a per-op profile this project reads (trtexec --exportProfile JSON or "
                        "--dumpProfile log, benchmark_model --enable_op_profiling log, an ExecuTorch .etdp)")


# ------------------------------------------------------------------------------------------ mapping


def map_trtexec(rows: list[dict], onnx_path: Path, tasks) -> dict:
    """Each TensorRT layer on the module of the ONNX nodes it fused (a convolution's, if it holds one)."""
    from .opprofile import onnx_nodes

    nodes = onnx_nodes(onnx_path)
    by_output = {o: n for n, d in nodes.items() for o in d["outputs"]}
    out, layer, matched = [], "input", 0
    for r in rows:
        name = r["event"]
        target = name.split(" to ", 1)[1] if name.startswith("Reformatting CopyNode") and " to " in name else name
        found = [nodes.get(t) or nodes.get(by_output.get(t, "")) for t in re.findall(r"[\w./:\-]+", target)]
        found = [f for f in found if f]
        conv = next((f for f in found if f["op_type"] in ("Conv", "ConvInteger", "QLinearConv")), None)
        own = conv or next((f for f in found if f["layer"]), None)
        if own:
            matched += 1
            layer = own["layer"] or layer
        if name.startswith("Reformatting CopyNode"):
            cls = "reformat (layout copy)"
        elif "ForeignNode" in name:
            cls = "foreign node (DLA or fused subgraph)"
        elif conv:
            cls = "depthwise conv" if conv["dw"] else "conv"
        elif found:
            cls = runtime_class("onnx", found[0]["op_type"])
        elif name.startswith("PWN("):
            cls = "pointwise (fused)"
        else:
            cls = "other"
        q = any(f["op_type"] in ("QuantizeLinear", "DequantizeLinear") for f in found)
        out.append(dict(r, layer=layer, op_class=cls, precision="int8" if q else "-", stage=stage_of(layer, tasks)))
    convs = sum(d["op_type"] == "Conv" for d in nodes.values())
    conv_rows = sum(r["op_class"].endswith("conv") for r in out)
    mapped = conv_rows > 0
    why = None if mapped else (f"none of the profile's {len(rows)} layer names holds a convolution node of "
                               f"{onnx_path.name} ({convs} Conv nodes): was it built from this file?")
    return {"rows": out, "mapped": mapped, "unmapped_reason": why, "matched_rows": matched}


def map_benchmark_model(rows: list[dict], tflite_path: Path, tasks) -> dict:
    """CPU nodes by their node index, XNNPACK operators inside the delegate by convolution order."""
    from .tflite_ops import CONV_TFL, module_of_tensor, op_layers

    ops = op_layers(tflite_path)
    tfl_convs = [o for o in ops if o["op"] in CONV_TFL]
    out, layer, k = [], "input", 0
    dele = [r for r in rows if r["event"].startswith("Delegate/")]
    dconv = [r for r in dele if r["event"][len("Delegate/"):].startswith(CONV_OPS)]
    dele_ok = not dele or (len(dconv) == len(tfl_convs) and all(
        ("DWConv" in r["event"]) <= (c["op"] == "DEPTHWISE_CONV_2D") for r, c in zip(dconv, tfl_convs)))
    why = None if dele_ok else (f"{len(dconv)} convolution operators in the delegate's profile, {len(tfl_convs)} "
                                f"convolutions in {tflite_path.name}: was it run on this file?")
    for r in rows:
        ev, nt = r["event"], r.get("node_type", "")
        if ev.startswith("AllocateTensors"):
            continue  # tensor allocation at start-up, not a per-inference cost
        prec = "-"
        if ev.startswith("Delegate/"):
            op = ev[len("Delegate/"):].rsplit(":", 1)[0]
            cls, prec = xnnpack_class(op), op_precision(op)
            if dele_ok and op.startswith(CONV_OPS):
                layer = tfl_convs[k]["layer"]
                k += 1
        elif ev.startswith("LiteRT::"):
            cls = "runtime (buffers)"
        elif "Delegate" in nt:
            cls = "delegate partition (opaque)"
        else:
            idx = re.search(r"\]:(\d+)$", ev)
            if idx and int(idx.group(1)) < len(ops) and ops[int(idx.group(1))]["op"] == nt.strip():
                o = ops[int(idx.group(1))]
                layer, prec = o["layer"], o["precision"]
            else:
                lay = module_of_tensor(ev.strip("[]").rsplit("]:", 1)[0])
                layer = lay or layer
            cls = runtime_class("tflite", nt.strip())
        out.append(dict(r, layer=layer, op_class=cls, precision=prec, stage=stage_of(layer, tasks)))
    conv_rows = [r for r in out if r["op_class"].endswith("conv")]
    mapped = dele_ok and bool(conv_rows) and all(r["layer"] not in ("", "input") for r in conv_rows)
    if not mapped and why is None:
        why = ("the delegate ran as one opaque call: profile with XNNPACK's per-operator events (LiteRT's "
               "benchmark_model prints them as Delegate/...)" if any(r["op_class"].startswith("delegate") for r in out)
               else f"the profile's node names do not name {tflite_path.name}'s operators")
    return {"rows": out, "mapped": mapped, "unmapped_reason": why}


def device_profile(artifact: Path, profile_file: Path, tasks, lowered_module=None, device: str | None = None) -> dict:
    """A device's own per-op profile of ``artifact``, in the host profiles' form (devices/opprofile.py)."""
    artifact = Path(artifact)
    tool, rows = read_tool_profile(profile_file)
    want = {".onnx": "trtexec", ".tflite": "benchmark_model", ".pte": "executor_runner"}.get(artifact.suffix)
    if want != tool:
        raise BadInputError(f"{profile_file} is a {tool} profile; a {artifact.suffix} is profiled by {want}")
    return profile_from_rows(artifact, tool, rows, tasks, lowered_module, device, source=str(profile_file))


# Rows of a device's per-op profile that must land on a layer of the artifact for it to be read as that artifact's.
# A profile of this artifact maps nearly every row (the tests' trtexec and benchmark_model tables: all of them; the
# unmapped are reformat copies and rows before the first convolution); half is far below that and far above what a
# profile of another network maps by chance (names of another model's nodes: none).
MIN_MATCHED_SHARE = 0.5


def profile_from_rows(artifact: Path, tool: str, rows: list[dict], tasks, lowered_module=None,
                      device: str | None = None, source: str | None = None) -> dict:
    if tool == "trtexec":
        res = map_trtexec(rows, artifact, tasks)
    elif tool == "benchmark_model":
        res = map_benchmark_model(rows, artifact, tasks)
    else:
        from .opprofile import map_pte_rows
        from edgehydra.exporters.runtime import read_manifest

        res = map_pte_rows(rows, lowered_module, tuple(read_manifest(artifact)["size"]), tasks)
    res.update({"artifact": str(artifact), "runtime": tool, "device": device, "source": source})
    read = len(res["rows"])
    # trtexec rows are matched by name, each on its own (benchmark_model and ETDump rows are placed by convolution
    # order, checked whole: their count must agree with the file's or the profile says it could not map)
    matched = res.get("matched_rows")
    if matched is not None and read and matched / read < MIN_MATCHED_SHARE:
        # a profile of another model or another build of it: its times on this model's layers would be made up,
        # and per-class scales fitted from them would move every later estimate for the device
        raise BadInputError(f"{source or tool}: {matched} of {read} rows name a layer of {Path(artifact).name} (at least "
                            f"{MIN_MATCHED_SHARE:.0%} must): a profile of another model or build; profile this artifact")
    res["matched_share"] = matched / read if matched is not None and read else None
    return summarize(res)
