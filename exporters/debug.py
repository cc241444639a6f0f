"""Layer-by-layer parity debugger: where, per task, an int8 artifact first leaves its pt2e program.

`verify` says *whether* an artifact agrees with its reference at the outputs; this says *where* it stops
agreeing. Every activation the program quantises (each conv, CRP add, pool, upsample and head output:
a ``quantize_per_tensor`` node of the pt2e graph) is a probe. The same frames go through

* the reference: the run's pt2e program (the one the artifact's manifest names, by stage and sha256),
  with the probes added as extra graph outputs and run in PyTorch;
* the artifact, as its runtime computes it:

  - ONNX: the shipped file itself, with each probe's QuantizeLinear output appended to the graph
    outputs. A Q output stays a real tensor when onnxruntime fuses DQ -> Conv -> Q into QLinearConv
    (the fused node writes it), so the fusion and the integer kernels are the ones that ship.
  - ExecuTorch: XNNPACK computes a delegated graph as one opaque call (ETDump sees only the delegate's
    outputs), so the program is lowered again by the exporter's own ``lower`` with the probes as extra
    int8 outputs. That build's task outputs are compared with the shipped .pte's, so the table is known
    to describe what ships (or says how far the two differ).

Both sides give int8 integers at every probe, so the error is counted in steps of that probe's own int8
grid: ``|(q_art - zp_art) - (q_ref - zp_ref)|``. Two integer pipelines that round the same real value
differently (ties, fixed-point requantisation multipliers) move an element of a layer's output by at most
one step, so a layer's own rounding keeps its mean error at or below one step. Differences carried from
upstream add to that, but in an artifact that passes `verify` they stay below a step on average (the
tiny model's clean .pte: at most 0.64 steps, on a 2x3-pixel CRP tensor; most layers under 0.4). A mean
above ``MAX_MEAN_STEPS`` is not rounding: the first such probe on a task's path (in graph order, over
the tensors that feed that task's output) is where that task first goes wrong. A broken layer sits tens
of steps out (tests/test_debug.py). A layer a recipe keeps float has no int8 grid and is not a probe: what
it does shows at the next quantised tensor downstream.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from edgehydra.errors import BadInputError, EdgeHydraError
from edgehydra.graph import PROBE_CLASS

MAX_MEAN_STEPS = 1.0  # see the module docstring: one layer's rounding, in steps of each probe's own grid
_ACTIVATIONS = ("hardtanh", "relu", "clamp", "relu6")


@dataclass(frozen=True)
class Probe:
    index: int  # position among the program's activation quantize nodes (graph order)
    node: str  # FX name of the quantize node in the reference graph
    layer: str  # module path of the op whose output it quantizes ('input' for the image)
    op: str  # conv, add, pool, upsample, ... (+relu6 where an activation sits between op and quantize)
    scale: float
    zero_point: int
    tasks: tuple[str, ...]  # the heads whose outputs depend on this tensor


def _qt():
    import torchao.quantization.pt2e  # noqa: F401  (registers quantized_decomposed)

    return torch.ops.quantized_decomposed.quantize_per_tensor.default


def _producer(node):
    """The op a quantize node's input comes from, looking through a fused activation."""
    act = ""
    n = node.args[0]
    while n.op == "call_function" and any(a in str(n.target) for a in _ACTIVATIONS):
        act = "+relu6" if "hardtanh" in str(n.target) or "relu6" in str(n.target) else "+relu"
        n = n.args[0]
    if n.op == "placeholder":
        return n, "input"
    name = str(n.target)
    op = next((cls for key, cls in PROBE_CLASS if key in name), name.split(".")[-2] if "." in name else name)
    return n, op + act


def _ancestors(node) -> set:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def find_probes(gm: torch.fx.GraphModule, tasks) -> list[Probe]:
    from edgehydra.graph import node_module_path

    q = _qt()
    out = next(n for n in gm.graph.nodes if n.op == "output")
    flat = list(out.args[0]) if isinstance(out.args[0], (list, tuple)) else [out.args[0]]
    if len(flat) != len(tasks):
        raise EdgeHydraError(f"the program has {len(flat)} outputs, its config names {len(tasks)} tasks")
    feeds = {t: _ancestors(o) | {o} for t, o in zip(tasks, flat)}
    probes = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target != q or n.args[0].op == "get_attr":
            continue
        src, op = _producer(n)
        layer = "input" if op == "input" else (node_module_path(src) or src.name)
        probes.append(Probe(len(probes), n.name, layer, op, float(n.args[1]), int(n.args[2]),
                            tuple(t for t in tasks if n in feeds[t])))
    if not probes:
        raise EdgeHydraError("the program has no quantised activations to compare (is it an int8 pt2e program?)")
    return probes


def with_probe_outputs(gm: torch.fx.GraphModule, probes: list[Probe]) -> torch.fx.GraphModule:
    """A copy of ``gm`` returning (task outputs..., each probe's int8 tensor), flat and positional."""
    g = copy.deepcopy(gm.graph)
    by_name = {n.name: n for n in g.nodes}
    out = next(n for n in g.nodes if n.op == "output")
    flat = list(out.args[0]) if isinstance(out.args[0], (list, tuple)) else [out.args[0]]
    out.args = (tuple(flat + [by_name[p.node] for p in probes]),)
    g.set_codegen(torch.fx.graph.CodeGen())  # plain positional in/out instead of the export's pytree specs
    m = torch.fx.GraphModule(gm, g)
    m.recompile()
    return m


# ------------------------------------------------------------------------------------ runtimes
def _executorch_probe_runner(probe_gm, example: torch.Tensor, tmp: Path):
    from . import executorch as et

    prog, facts = et.lower(probe_gm, example, "int8")  # the exporter's own lowering, looked up at call time
    pte = tmp / "probes.pte"
    pte.write_bytes(prog.buffer)
    method = et.runtime().load_program(str(pte)).load_method("forward")

    def run(x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o) for o in method.execute([torch.from_numpy(np.ascontiguousarray(x))])]

    how = (f"re-lowered from the program by the exporter's lower() with {{n}} probe outputs "
           f"(XNNPACK runs the delegate as one call; delegation of this build "
           f"{facts['delegation']['coverage']:.0%})")
    return run, None, how


def _onnx_probe_runner(path: Path, probes: list[Probe], tmp: Path):
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    const = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            const[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in const]
    if len(qs) != len(probes):
        raise EdgeHydraError(f"{path.name} has {len(qs)} activation QuantizeLinear nodes, its program {len(probes)}: "
                             "it was not exported from this program")
    zps = []
    for p, n in zip(probes, qs):
        s = float(np.asarray(const[n.input[1]]).reshape(-1)[0])
        if not np.isclose(s, p.scale, rtol=1e-6, atol=0):
            raise EdgeHydraError(f"{path.name}: QuantizeLinear {n.name} has scale {s:.6g}, the program's probe "
                                 f"{p.index} ({p.layer}) {p.scale:.6g}: the graph does not line up with its program")
        zp = np.asarray(const[n.input[2]])
        zps.append(int(zp.reshape(-1)[0]))
        m.graph.output.append(helper.make_tensor_value_info(n.output[0], helper.np_dtype_to_tensor_dtype(zp.dtype),
                                                            None))
    probed = tmp / "probes.onnx"
    onnx.save(m, str(probed))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(probed), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> list[np.ndarray]:
        return sess.run(None, {name: np.ascontiguousarray(x, np.float32)})

    return run, zps, "the shipped file with {n} QuantizeLinear outputs added as graph outputs"


# ------------------------------------------------------------------------------------ the comparison
def debug_artifact(path: Path, frames: np.ndarray, program, shipped_runner, target: str, tasks, batch: int = 1) -> dict:
    """Per-probe error of the artifact against ``program`` (a QuantisedProgram) on ``frames``."""
    from .parity import parity

    if target not in ("executorch", "onnx"):
        raise BadInputError(f"debug compares intermediate tensors of ExecuTorch and ONNX int8 artifacts; {target} "
                            "keeps them out of reach here (use `edgehydra verify` for its output parity)")
    probes = find_probes(program.module, tasks)
    probe_gm = with_probe_outputs(program.module, probes)
    nt = len(tasks)
    with tempfile.TemporaryDirectory() as d, torch.no_grad():
        x0 = torch.from_numpy(frames[:batch])
        if target == "executorch":
            run, zps, how = _executorch_probe_runner(probe_gm, x0, Path(d))
        else:
            run, zps, how = _onnx_probe_runner(path, probes, Path(d))
        zps = zps or [p.zero_point for p in probes]
        sums = np.zeros(len(probes))
        maxes = np.zeros(len(probes))
        over = np.zeros(len(probes))
        counts = np.zeros(len(probes))
        ref_out, art_out, ship_out, reproduce = [], [], [], 0.0
        for i in range(0, len(frames) - batch + 1, batch):
            x = frames[i:i + batch]
            ref = [o.numpy() for o in probe_gm(torch.from_numpy(x))]
            got = run(x)
            shipped = shipped_runner(x)
            ref_out.append(ref[:nt])
            art_out.append(got[:nt])
            ship_out.append(shipped)
            reproduce = max(reproduce, *(float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())
                                         for a, b in zip(got[:nt], shipped)))
            for k, p in enumerate(probes):
                d_steps = np.abs((got[nt + k].astype(np.int32) - zps[k]) - (ref[nt + k].astype(np.int32) - p.zero_point))
                sums[k] += d_steps.sum()
                maxes[k] = max(maxes[k], d_steps.max())
                over[k] += (d_steps > 1).sum()
                counts[k] += d_steps.size
    if not counts.any():
        raise BadInputError(f"{len(frames)} frame(s) do not fill one batch of {batch}: pass more --frames")
    cat = lambda outs: [np.concatenate([o[j] for o in outs]) for j in range(nt)]  # noqa: E731
    rows = []
    for k, p in enumerate(probes):
        mean = float(sums[k] / counts[k])
        rows.append({**asdict(p), "mean_steps": mean, "max_steps": int(maxes[k]),
                     "frac_over_1_step": float(over[k] / counts[k]), "ok": mean <= MAX_MEAN_STEPS})
    first = {}
    for t in tasks:
        bad = next((r for r in rows if t in r["tasks"] and not r["ok"]), None)
        first[t] = None if bad is None else {"index": bad["index"], "layer": bad["layer"], "op": bad["op"],
                                             "mean_steps": bad["mean_steps"]}
    return {"artifact": str(path), "target": target, "frames": int(len(frames)), "probes": len(probes),
            "reference": f"{program.meta.get('stage') or 'pt2e'} program {program.path} "
                         f"(sha256 {str(program.meta.get('sha256'))[:12]})",
            "artifact_side": how.format(n=len(probes)), "max_mean_steps": MAX_MEAN_STEPS,
            "probe_build_vs_shipped_max_abs": reproduce,
            "outputs": parity(cat(ref_out), cat(ship_out), tuple(tasks)),
            "first_failure": first, "layers": rows}


def chart(report: dict, path: Path) -> Path:
    """Mean error (int8 steps) per probe along each head's path, the bound, and the first failure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(report["first_failure"])
    fig, axes = plt.subplots(len(tasks), 1, figsize=(10, 2.6 * len(tasks)), squeeze=False)
    for ax, t in zip(axes[:, 0], tasks):
        rows = [r for r in report["layers"] if t in r["tasks"]]
        ax.plot(range(len(rows)), [max(r["mean_steps"], 1e-3) for r in rows], marker=".", lw=1)
        ax.axhline(report["max_mean_steps"], ls="--", color="grey", lw=1, label=f"bound {report['max_mean_steps']} step")
        ax.set_yscale("log")
        ax.set_ylabel("mean |error| (steps)")
        f = report["first_failure"][t]
        if f is not None:
            i = next(j for j, r in enumerate(rows) if r["index"] == f["index"])
            ax.plot([i], [max(f["mean_steps"], 1e-3)], "o", color="red", label=f"first failure: {f['layer']} ({f['op']})")
        ax.set_title(f"{t}: {len(rows)} quantised tensors on its path"
                     + ("" if f is None else f", first out of bound at #{f['index']} {f['layer']}"))
        step = max(1, len(rows) // 12)
        ax.set_xticks(range(0, len(rows), step))
        ax.set_xticklabels([rows[j]["layer"][-18:] for j in range(0, len(rows), step)], rotation=30, ha="right",
                           fontsize=7)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{Path(report['artifact']).name} vs its {report['reference'].split(' ')[0]} program, in steps of "
                 "each tensor's int8 grid", fontsize=9)
    fig.tight_layout()
    from edgehydra._io import save_figure

    return save_figure(fig, path, dpi=110)


def debug_path(artifact: Path, frames: int = 4, out: Path | None = None) -> tuple[dict, list[Path]]:
    """`edgehydra debug --artifact A`: the artifact's run gives its program and real validation frames; writes
    RUN/debug/<artifact>/{layers.json,layers.png} (or ``out``)."""
    from edgehydra._io import atomic_write_json, sha256_path
    from edgehydra.data import Resize
    from edgehydra.run import run_of_artifact
    from edgehydra.dataspec import open_split, run_data_settings

    from .runtime import artifact_program, open_artifact
    from .export_stage import parity_frames

    artifact = Path(artifact)
    art = open_artifact(artifact, check_hash=False)
    notes = []
    if sha256_path(artifact) != art.manifest.get("sha256"):
        notes.append(f"{artifact.name}: sha256 differs from its manifest; debugging the file as it is now")
    if art.precision != "int8":
        raise BadInputError(f"{artifact.name} is {art.precision}: debug compares an int8 artifact with the pt2e "
                            "program it was made from, layer by layer (an fp32 artifact: `edgehydra verify`)")
    run = run_of_artifact(artifact)
    if run is None:
        raise BadInputError(f"{artifact} is not in a run's export folder (RUN/export/<target>/): debug needs the "
                            "run's quantised program and validation frames")
    prog = artifact_program(run, art.manifest)
    if prog is None:
        raise BadInputError(f"{artifact.name}'s manifest names no quantised program (re-quantised by its converter: "
                            f"{art.manifest.get('facts', {}).get('quantised_by', 'unknown')}); nothing to compare with")
    # the data settings only: open_source would also load the FP32 model and the run's newest program
    ds = run_data_settings(run.checkpoint(), None, base=run.record().get("data") or prog.meta.get("data"))
    val = open_split(dict(ds, size=list(art.size)), "val", transform=Resize(art.size))
    x = parity_frames(val, frames)
    rep = debug_artifact(artifact, x, prog, art.runner, art.target, art.config.tasks,
                         batch=int(art.manifest["input"]["shape"][0]))
    rep["notes"] = notes
    out = Path(out) if out else run.debug_dir(artifact)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "layers.json", rep)
    return rep, [out / "layers.json", chart(rep, out / "layers.png")]
