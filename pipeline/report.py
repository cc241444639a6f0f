"""`edgehydra report --run DIR`: report.md and a single offline report.html with PNGs beside them.

Sections: pipeline and settings; per-task metrics (FP32 / PTQ / QAT / each artifact); the
artifact table (target, precision, status, size, mIoU, RMSE, ms p50, FPS, budget verdicts);
plots (accuracy vs latency, per-layer sensitivity, estimated vs measured latency); prediction
panels (input, ground truth, FP32, each artifact) on synthroom frames and the real NYUDv2 samples.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from edgehydra.records import validate
from edgehydra._io import atomic_write_bytes

# in the order they appear: the answer first, stage times and settings last
SECTIONS = ("The answer", "Per-task metrics", "Artifacts", "Device budgets", "Accuracy vs latency",
            "Per-layer sensitivity", "Estimated vs measured latency", "Predictions", "Pipeline: stage times and settings")


def _load(p: Path):
    return json.loads(p.read_text()) if p.is_file() else None


def _fmt(v, f=".2f"):
    return "-" if v is None else format(v, f)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path):
    from edgehydra._io import save_figure

    return save_figure(fig, path, bbox_inches="tight")


def accuracy_latency_plot(rows, checks, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, label in ((axes[0], "miou", "mIoU (%)"), (axes[1], "rmse", "depth RMSE (m)")):
        for r in rows:
            if r.get("ms") and r.get(key) is not None:
                ax.scatter(r["ms"], r[key], s=50)
                ax.annotate(f"{r['target']} {r['precision']}", (r["ms"], r[key]), fontsize=7, xytext=(4, 2),
                            textcoords="offset points")
        for c in checks or []:
            if c.get("estimated_ms") is None:
                continue
            vals = {row["budget"]: row["value"] for row in c["rows"]}
            v = vals.get("mIoU" if key == "miou" else "depth RMSE")
            if v is not None:
                ax.scatter(c["estimated_ms"], v, marker="x", s=60, color="k")
                ax.annotate(f"{c['device']} (est.)", (c["estimated_ms"], v), fontsize=7, xytext=(4, -8),
                            textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("latency p50 (ms, log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("Accuracy vs latency, per task (dots: artifacts measured on this host; x: devices, estimated at "
                 "their budget input size)", fontsize=10)
    return _save(fig, path)


def est_vs_meas_plot(cal, path: Path) -> Path | None:
    if not cal or "report" not in cal:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for tag, marker in (("before", "o"), ("after", "s")):
        pts = cal["report"][tag]
        ax.scatter([p["measured_ms"] for p in pts], [p["estimated_ms"] for p in pts], marker=marker,
                   label=f"{tag} calibration")
        for p in pts:
            ax.annotate(f"{p['precision']} {p['size'][0]}x{p['size'][1]}", (p["measured_ms"], p["estimated_ms"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    lim = [min(1, *[p["measured_ms"] for p in cal["report"]["after"]]), max(p["measured_ms"] for p in cal["report"]["after"]) * 3]
    ax.plot(lim, lim, "k--", lw=1, label="estimate = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured p50 on this host (ms)")
    ax.set_ylabel("roofline estimate (ms)")
    ax.legend(fontsize=8)
    ax.set_title("host CPU: estimated vs measured latency")
    return _save(fig, path)


def panels(run: Path, outdir: Path, limit_synth: int = 2) -> list[Path]:
    """Input | ground truth | FP32 | each runnable artifact, on synthroom val frames and real NYUDv2 samples."""
    import torch

    from edgehydra.checkpoint import load_checkpoint
    from edgehydra.data.layout import read_rgb
    from edgehydra.visualize import find_ground_truth, panel, run_on_image

    from edgehydra.run import Run

    r = Run(run)
    model, _ = load_checkpoint(r.checkpoint())
    cfg = model.config
    fwds = [("FP32", lambda x: model(x), cfg.input_size)]  # each runs at its own input size
    man = _load(r.export_manifest) or {"artifacts": []}
    from edgehydra.exporters.runtime import open_artifact

    for a in man["artifacts"]:
        if a.get("status") == "verified" and a.get("path"):
            try:
                art = open_artifact(r.export_dir / a["path"])
            except Exception:  # noqa: BLE001 - a panel row missing is reported by the artifact table
                continue
            fwds.append((f"{a['target']} {a['precision']} {art.size[0]}x{art.size[1]}", art.forward, art.size))
    written = []
    from edgehydra.data.synthroom import SynthConfig, generate_frame
    from edgehydra.data import SYNTH_VAL_SEED_OFFSET

    frames = []
    for i in range(limit_synth):
        f = generate_frame(SYNTH_VAL_SEED_OFFSET, i, SynthConfig(size=(240, 320)))
        frames.append((f"synthroom_val_{i}", f["rgb"], {"segm": f["segm"], "depth": f["depth"]}))
    samples = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "nyud"
    for p in sorted(samples.glob("0*.png")) if samples.is_dir() else []:
        frames.append((f"nyud_{p.stem}", read_rgb(p), find_ground_truth(p, cfg.num_classes)))
    for name, rgb, gt in frames:
        rows = [("ground truth", gt)] if gt else []
        with torch.no_grad():
            rows += [(label, run_on_image(f, cfg, rgb, size)) for label, f, size in fwds]
        written.append(panel(rgb, rows, outdir / f"panel_{name}.png"))
    return written


def collect(run: Path) -> dict:
    from edgehydra.run import Run

    r = Run(run)
    d = {k: _load(f) for k, f in (("demo", r.demo_summary), ("train", r.train_log), ("fp32", r.fp32_metrics),
                                  ("ptq", r.stage_report("ptq")), ("qat", r.stage_report("qat")),
                                  ("manifest", r.export_manifest), ("sens", r.sensitivity_dir / "sensitivity.json"),
                                  ("cal", r.stage_record("calibrate")), ("bench", r.stage_record("bench")))}
    d["check"] = [validate("verdict", v, r.check_record) for v in _load(r.check_record) or []] or None
    if d["manifest"]:
        validate("export", d["manifest"], r.export_manifest)
    if d["cal"]:
        d["cal"] = d["cal"]["result"]
    return d


def artifact_rows(d: dict) -> list[dict]:
    brows = (d.get("bench") or {}).get("result", {}).get("rows", [])
    bench = {Path(b["artifact"]).name: b for b in brows if b.get("target") != "pytorch"}  # one per artifact file
    verdicts = {}
    for c in d.get("check") or []:
        if c.get("artifact"):
            verdicts.setdefault(c["artifact"], []).append(f"{c['device']}: {c['verdict']}")
    rows = []
    for a in (d.get("manifest") or {}).get("artifacts", []):
        b = bench.get(Path(a["path"]).name) if a.get("path") else None
        m = a.get("metrics") or {}
        size = "x".join(map(str, a.get("size") or []))
        rows.append({"target": a["target"], "precision": f"{a['precision']} {size}".strip(), "status": a["status"],
                     "reason": a.get("reason", ""), "size_mb": (a.get("size_bytes") or 0) / 2 ** 20,
                     "miou": m.get("miou"), "rmse": m.get("rmse"), "ms": b["p50_ms"] if b else None,
                     "fps": 1000 / b["p50_ms"] if b else None, "verdicts": ", ".join(verdicts.get(a.get("path"), [])) or "-"})
    e = next((b for b in brows if b.get("target") == "pytorch"), None)
    if e:
        rows.append({"target": "pytorch eager", "precision": "fp32", "status": "reference", "reason": "", "size_mb": None,
                     "miou": (d.get("fp32") or {}).get("metrics", {}).get("miou"),
                     "rmse": (d.get("fp32") or {}).get("metrics", {}).get("rmse"), "ms": e["p50_ms"],
                     "fps": 1000 / e["p50_ms"], "verdicts": "-"})
    return rows


def _mixed_section(run: Path, out: Path, section, table, image) -> None:
    """Each device's mixed-precision search (RUN/mixed/<device>/front.json): three rows and the front."""
    from edgehydra.run import Run

    for f in Run(run).mixed_fronts():
        r = _load(f)
        if not r:
            continue
        ht, c = r.get("host_timing") or {}, r.get("chosen")
        rows = [["all fp32", "all", r["fp32"], ht.get("fp32", r["float_total_ms"])],
                ["all int8", 0, r["all_int8"], ht.get("int8", r["int8_total_ms"])]]
        if c:
            rows.append([f"mixed ({c['name']})", len(c["keep_float"]), c["measured"],
                         c.get("measured_latency_ms") or c["latency_ms"]])
        data = [[n, k, _fmt(m.get("miou"), ".2f"), _fmt(m.get("rmse"), ".4f"), _fmt(m.get("abs_rel"), ".4f"),
                 _fmt(t, ".2f")] for n, k, m, t in rows]
        src = "one interleaved timing run on this host" if ht else r["latency_source"]
        m, h = table(["assignment", "float layers", "mIoU", "RMSE", "abs rel", f"ms ({src})"], data)
        img = Path(shutil.copy(f.with_name("front.png"), out / f"mixed_{r['device']}.png"))
        im, ih = image(img, f"mixed precision front on {r['device']}")
        w16, f16 = (c or {}).get("int16_layers") or [], (c or {}).get("fp16_layers") or []
        verdict = (f"Chosen: {', '.join(c['keep_float']) or 'no layer'} kept float"
                   + (f", {', '.join(f16)} in fp16" if f16 else "") + (f", {', '.join(w16)} in W8A16" if w16 else "") + "; meets every budget."
                   if r.get("meets_budgets") else "No assignment met every budget (nearest misses in front.json).")
        section(f"Mixed precision on {r['device']} at {r['size'][0]}x{r['size'][1]}", [verdict, ""] + m + [""] + im,
                f"<p>{html.escape(verdict)}</p>{h}{ih}")


def _opprofile_section(run: Path, out: Path, section, table, image) -> None:
    p = _load(run / "opprofile.json")
    if not p or not (run / "opprofile.png").is_file():
        return
    img = Path(shutil.copy(run / "opprofile.png", out / "opprofile.png"))
    data = [[d["stage"], _fmt(d["ms"], ".3f"), f"{100 * d['share']:.0f} %", d["ops"]] for d in p.get("by_stage", [])]
    m, h = table(["stage", "ms", "share", "operators"], data)
    im, ih = image(img, "per-op profile")
    title = f"Where the time goes: {Path(p['artifact']).name}, per XNNPACK operator (ETDump)"
    section(title, m + [""] + im, h + ih)


def _sustained_section(d: dict, out: Path, section, image) -> None:
    sus = ((d.get("bench") or {}).get("result") or {}).get("sustained")
    if not sus or not sus.get("plot") or not Path(sus["plot"]).is_file():
        return
    img = Path(shutil.copy(sus["plot"], out / "sustained.png"))
    line = (f"{Path(sus['plot']).name.removesuffix('.sustained.png')}: {sus['duration_s']:.0f} s of back-to-back calls, "
            f"{sus['throughput_fps']:.1f} calls/s, p50 {sus['p50_ms']:.2f} ms, p99 {sus['p99_ms']:.2f} ms"
            + (f", last/first window {sus['throttle_ratio']:.2f}" if sus.get("throttle_ratio") is not None
               else " (too short for a last/first window ratio)"))
    im, ih = image(img, "latency over time")
    section("Sustained load", [line, ""] + im, f"<p>{html.escape(line)}</p>{ih}")


def _robot_section(run: Path, out: Path, doc) -> None:
    """On the robot: the stream timeline of each recorded stream, the stability table and its figure."""
    from edgehydra.run import Run

    r = Run(run)
    md, h = [], ""
    for rec_path in sorted(r.robot_dir.glob("*.stream.json")):
        rec = _load(rec_path)
        if not rec or not rec.get("processed"):
            continue
        e = rec["e2e_ms"]
        rate = f"at {rec['target_fps']:g} fps" if rec.get("target_fps") else "every frame"
        recording = (f"; recording {Path(rec['recording']).name} ({sum((rec.get('topics') or {}).values())} ROS 2 "
                     f"messages)" if rec.get("recording") else "")
        line = (f"{Path(rec['artifact']).name} on {rec['source']} {rate}: {rec['processed']} frames, end to end p50 "
                f"{e['p50']:.1f} / p95 {e['p95']:.1f} / p99 {e['p99']:.1f} ms, {rec['dropped']} dropped, "
                f"{rec.get('deadline_misses') or 0} missed the deadline{recording}")
        md += [line, ""]
        h += f"<p>{html.escape(line)}</p>"
        png = rec_path.with_name(rec_path.name.removesuffix(".json") + ".png")
        if png.is_file():
            a, b = doc.image(shutil.copy(png, out / png.name), "stream timeline")
            md += a + [""]
            h += b
    st = _load(r.stability_record) if r.stability_record.is_file() else None
    if st:
        def pc(v, k=100.0, f=".2f"):
            return "-" if v is None else format(v * k, f)

        rows = [[m.get("artifact") or m["name"], pc(m["temporal"].get("flicker")), pc(m["temporal"].get("flicker_rise")),
                 pc(m["temporal"].get("depth_temporal_error")), pc((m.get("accuracy") or {}).get("miou"), 1, ".1f"),
                 pc((m.get("vs_reference") or {}).get("chamfer_m"), 100)] for m in st["models"]]
        a, b = doc.table(["model", "flicker %", "rise vs FP32 pp", "depth temporal %", "mIoU %", "Chamfer vs FP32 cm"],
                         rows)
        line = (f"Temporal stability on {st.get('source', 'a sequence')}, {st['frames']} frames at "
                f"{st['size'][0]}x{st['size'][1]}, pixels matched by {st['matched_by']}.")
        md += [line, ""] + a + [""]
        h += f"<p>{html.escape(line)}</p>" + b
        if (r.robot_dir / "stability.png").is_file():
            a, b = doc.image(shutil.copy(r.robot_dir / "stability.png", out / "stability.png"), "flicker per frame")
            md += a
            h += b
    if md:
        doc.section("On the robot", md, h)


def _arm_section(run: Path, doc) -> None:
    """The run's artifacts checked on emulated ARM CPUs (`bench --bundle --device qemu:CPU`): parity, not latency."""
    from edgehydra.run import Run

    recs = [m for m in Run(run).measurements() if m.get("emulated")]
    if not recs:
        return
    rows = []
    for m in sorted(recs, key=lambda m: (m.get("artifact", ""), m["device"])):
        bp = m.get("bundle_parity") or {}
        vs = bp.get("vs_x86") or {}
        same = "bit-identical" if vs and all(v.get("bit_identical") for v in vs.values()) else \
            ", ".join(f"{t} max {v['max_abs']:.3g}" for t, v in vs.items())
        k = bp.get("kernels") or {}
        prog = ", ".join(f"{t} max {v['max_steps']:.2f} steps" if "max_steps" in v else f"{t} max {v['max_abs']:.3g}"
                         for t, v in (bp.get("vs_program") or {}).items()) or "-"
        rows.append([Path(m.get("artifact", "")).name, m["device"], "PASS" if bp.get("pass") else "FAIL", same, prog,
                     f"{k.get('family')}: {', '.join(k.get('gemm') or [])}" if k.get("named") else "not named"])
    a, b = doc.table(["artifact", "emulated CPU", "reference I/O", "vs x86", "vs the program", "GEMM kernels seen"], rows)
    line = "Artifacts run on emulated ARM CPUs (QEMU user mode): parity evidence, never a latency."
    doc.section("ARM kernels (emulated)", [line, ""] + a, f"<p>{html.escape(line)}</p>" + b)


class _Doc:
    """The report as it is written: each section once, in Markdown and in HTML."""

    def __init__(self):
        self.md, self.body = [], []

    def section(self, title, md_lines, html_str):
        self.md.append(f"\n## {title}\n")
        self.md.extend(md_lines)
        self.body.append(f"<h2>{html.escape(title)}</h2>\n{html_str}")

    @staticmethod
    def table(header, data):
        mdl = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        mdl += ["| " + " | ".join(str(c) for c in r) + " |" for r in data]
        h = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
        h += "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in data) + "</table>"
        return mdl, h

    @staticmethod
    def image(key_or_path, alt):
        p = Path(key_or_path)
        return [f"![{alt}]({p.name})"], f'<img src="{html.escape(p.name)}" alt="{html.escape(alt)}">'


def write_report(run: Path) -> list[Path]:
    """RUN/report/report.html and .md: the answer first (per artifact accuracy vs FP32 and latency, per device the
    verdict and the budget that decided it), then the evidence, then stage times and settings."""
    from edgehydra.run import Run

    run = Path(run)
    out = Run(run).report_dir
    out.mkdir(parents=True, exist_ok=True)
    d = collect(run)
    doc = _Doc()
    _answer_section(d, doc)
    _metrics_sections(d, doc)
    _mixed_section(run, out, doc.section, doc.table, doc.image)
    _opprofile_section(run, out, doc.section, doc.table, doc.image)
    _sustained_section(d, out, doc.section, doc.image)
    _robot_section(run, out, doc)
    _arm_section(run, doc)
    _figure_sections(run, out, d, doc)
    _pipeline_section(d, doc)
    md_text = "# edgehydra report\n" + "\n".join(doc.md) + "\n"
    css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
           "th{background:#f3f3f3}img{max-width:100%;margin:.5em 0;border:1px solid #eee}")
    html_text = (f"<!doctype html><html><head><meta charset='utf-8'><title>edgehydra report</title>"
                 f"<style>{css}</style></head><body><h1>edgehydra report: {html.escape(str(run))}</h1>"
                 + "\n".join(doc.body) + "</body></html>")
    atomic_write_bytes(out / "report.md", md_text.encode())
    atomic_write_bytes(out / "report.html", html_text.encode())
    return [out / "report.html", out / "report.md"]


def _answer_section(d: dict, doc: _Doc) -> None:
    from .answer import answer_tables

    ah, ab, dh, db = answer_tables(d)
    m1, h1 = doc.table(ah, ab)
    m2, h2 = doc.table(dh, db)
    doc.section("The answer", ["Per artifact: per-task accuracy on the validation frames in its own runtime, the "
                               "change against FP32 at the same input size, and its measured latency on this host.",
                               ""] + m1 + ["", "Per device: the verdict and the budget that decided it."] + [""] + m2,
                "<p>Per artifact: per-task accuracy in its own runtime, change against FP32 at the same size, measured "
                "latency on this host.</p>" + h1 + "<p>Per device: the verdict and the budget that decided it.</p>" + h2)


def _metrics_sections(d: dict, doc: _Doc) -> None:
    metrics = {}
    if d.get("fp32"):
        metrics["FP32"] = d["fp32"]["metrics"]
    if d.get("ptq"):
        metrics["PTQ"] = d["ptq"]["metrics"]["ptq"]
    if d.get("qat"):
        metrics["QAT"] = d["qat"]["metrics"]["qat"]
    for r in (d.get("manifest") or {}).get("artifacts", []):
        if r.get("metrics"):
            metrics[f"{r['target']} {r['precision']}" + (f" {r['variant']}" if r.get("variant") else "")] = r["metrics"]
    keys = ("miou", "pixel_acc", "rmse", "abs_rel", "log10", "delta1")
    if any("normals_median_angle" in m for m in metrics.values()):  # a three-task model: the normals metrics too
        keys += ("normals_mean_angle", "normals_median_angle", "normals_within_11.25", "normals_within_22.5",
                 "normals_within_30")
    doc.section("Per-task metrics", *doc.table(["model"] + list(keys),
                                                [[n] + [_fmt(m.get(k), ".4f") for k in keys] for n, m in metrics.items()]))
    rows = artifact_rows(d)
    doc.section("Artifacts", *doc.table(
        ["target", "precision", "status", "size MB", "mIoU", "RMSE", "ms p50", "FPS", "budget verdicts"],
        [[r["target"], r["precision"], r["status"] + (f" ({r['reason']})" if r["reason"] else ""), _fmt(r["size_mb"]),
          _fmt(r["miou"]), _fmt(r["rmse"], ".3f"), _fmt(r["ms"], ".1f"), _fmt(r["fps"], ".1f"), r["verdicts"]]
         for r in rows]))
    ref = [[Path(b["artifact"]).name, b["bundle_parity"]["device"], b["bundle_parity"]["cases"],
            "PASS" if b["bundle_parity"]["pass"] else "FAIL: " + "; ".join(b["bundle_parity"]["failures"]),
            b["bundle_parity"]["runner"].split(" (")[0]]
           for b in (d.get("bench") or {}).get("result", {}).get("rows", []) if b.get("bundle_parity")]
    if ref:
        m, h = doc.table(["artifact", "ran on", "frames", "per-task parity", "runner"], ref)
        doc.section("Reference I/O where it runs", ["Each artifact's parity frames and reference outputs (its .bpte or "
                                                    ".reference.npz), run where it was benchmarked and judged with the "
                                                    "export's tolerance.", ""] + m, h)
    chk = []
    for c in d.get("check") or []:
        fails = [r["budget"] for r in c["rows"] if not r["pass"]]
        chk.append([c["device"], c.get("artifact", "-"), c["verdict"], ", ".join(fails) or "-",
                    _fmt(c.get("estimated_ms"), ".1f"), c.get("recommendation", "-")])
    doc.section("Device budgets", *doc.table(["device", "artifact", "verdict", "failed budgets", "est. ms @ budget size",
                                              "recommended"], chk))


def _figure_sections(run: Path, out: Path, d: dict, doc: _Doc) -> None:
    from edgehydra.run import Run

    imgs = {"accuracy_latency": accuracy_latency_plot(artifact_rows(d), d.get("check"), out / "accuracy_latency.png")}
    sens_png = Run(run).sensitivity_dir / "sensitivity.png"
    if d.get("sens") and sens_png.is_file():
        imgs["sensitivity"] = Path(shutil.copy(sens_png, out / "sensitivity.png"))
    p = est_vs_meas_plot(d.get("cal"), out / "estimated_vs_measured.png")
    if p:
        imgs["est_meas"] = p
    for key, title, alt in (("accuracy_latency", "Accuracy vs latency", "accuracy vs latency"),
                            ("sensitivity", "Per-layer sensitivity", "per-layer sensitivity"),
                            ("est_meas", "Estimated vs measured latency", "estimated vs measured latency")):
        if key in imgs:
            doc.section(title, *doc.image(imgs[key], alt))
        else:
            doc.section(title, ["(not available for this run)"], "<p>(not available for this run)</p>")
    pm, ph = [], ""
    for p in panels(run, out):
        a, b = doc.image(p, p.stem)
        pm += a + [""]
        ph += b
    doc.section("Predictions", pm, ph)


def _pipeline_section(d: dict, doc: _Doc) -> None:
    """Stage times and settings: last, after the answer and its evidence."""
    demo = d.get("demo") or {}
    st = [[s["stage"], s["status"], f"{s['seconds']:.1f}", s.get("note", "")] for s in demo.get("stages", [])]
    cfg = demo.get("config") or (d.get("train") or {}).get("config", {})
    m1, h1 = doc.table(["stage", "status", "seconds", "note"], st) if st else ([], "")
    m2, h2 = doc.table(["setting", "value"], [[k, v] for k, v in cfg.items()])
    doc.section("Pipeline: stage times and settings", m1 + [""] + m2, h1 + h2)
