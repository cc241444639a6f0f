"""`edgehydra devices`, `profile`, `bench`, `check`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import SIZE, console, fit_ids, show, table


@click.command()
@click.option("--json", "as_json", is_flag=True)
def devices(as_json):
    """List the device profiles (shipped and your own)."""

    from edgehydra.devices.profile import list_profiles, load_profile

    profs = [load_profile(str(p)) for p in list_profiles().values()]
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in profs], indent=2))
        return
    t = table("device profiles", ("name",), ("kind", "artifact", "int8 / fp16 TOPS", "GB/s", "p50 budget", "min mIoU"))
    fit_ids(t, [(p.name, p.kind, f"{p.format} {p.precision}", f"{p.int8_tops:g} / {p.fp16_tflops:g}",
                 f"{p.bandwidth_gbs:g}", f"{p.budgets.latency_p50_ms:g} ms @ {p.budgets.input_size[0]}x"
                 f"{p.budgets.input_size[1]}", f"{p.budgets.min_miou:g}") for p in profs])
    show(t)


@click.command()
@click.option("--device", required=True, help="Profile name or .toml path.")
@click.option("--model", "model_spec", default="hydranet_nyud", show_default=True, help="Registered model or checkpoint file.")
@click.option("--size", type=SIZE, default=None, help="Input HxW (default: the profile's budget size).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None, help="Default: the profile's.")
@click.option("--top", default=15, show_default=True)
@click.option("--calibrate", "bench_files", multiple=True, type=click.Path(dir_okay=False),
              help="Benchmark JSON(s) to fit the efficiency factors to; writes a user profile.")
@click.option("--json", "as_json", is_flag=True)
def profile(device, model_spec, size, precision, top, bench_files, as_json):
    """Analytical per-layer latency (roofline) of a model on a device; --calibrate fits it to measurements."""
    from rich.table import Table

    from edgehydra.dataspec import resolve_size
    from edgehydra.devices.estimate import estimate, fit_efficiencies, mean_abs_rel_err
    from edgehydra.devices.profile import load_profile, to_toml, user_dir

    from .info import load_model_arg

    p = load_profile(device)
    is_file = model_spec.endswith((".pt", ".ckpt", ".pth"))
    model = load_model_arg(None if is_file else model_spec, model_spec if is_file else None)
    c = console()
    if bench_files:
        meas = []
        for f in bench_files:
            d = json.loads(Path(f).read_text())
            for r in (d if isinstance(d, list) else [d]):
                if "size" not in r or "precision" not in r:
                    raise click.BadParameter(f"{f}: each measurement needs precision, size and p50_ms", param_hint="--calibrate")
                meas.append({"precision": r["precision"], "size": r["size"], "p50_ms": r["p50_ms"]})
        fitted, rep = fit_efficiencies(model, p, meas)
        out = user_dir() / f"{p.name}.toml"
        out.parent.mkdir(parents=True, exist_ok=True)
        from edgehydra._io import atomic_write_bytes

        atomic_write_bytes(out, to_toml(fitted, {"bandwidth_efficiency": "fitted by edgehydra profile --calibrate",
                                                 "overhead_ms": "fitted"}).encode())
        t = Table(title=f"calibration of {p.name}: estimate vs measured")
        for col in ("precision", "size", "measured ms", "before ms", "before err", "after ms", "after err"):
            t.add_column(col, justify="right")
        for b, a in zip(rep["before"], rep["after"]):
            t.add_row(b["precision"], "x".join(map(str, b["size"])), f"{b['measured_ms']:.1f}", f"{b['estimated_ms']:.1f}",
                      f"{b['rel_err']:+.0%}", f"{a['estimated_ms']:.1f}", f"{a['rel_err']:+.0%}")
        show(t, c)
        c.print(f"mean |error|: {mean_abs_rel_err(rep['before']):.0%} -> {mean_abs_rel_err(rep['after']):.0%}; "
                f"wrote {out}")
        return
    prec = precision or p.precision
    size = resolve_size(cli=size, device=p)
    e = estimate(model, p, prec, size)
    if as_json:
        click.echo(json.dumps(e, indent=2))
        return
    t = Table(title=f"{p.name} ({p.description}) {prec} at {size[0]}x{size[1]}")
    for col in ("layer", "type", "MMACs", "KiB moved", "compute ms", "memory ms", "ms", "bound"):
        t.add_column(col, justify="left" if col in ("layer", "type", "bound") else "right")
    for l in sorted(e["layers"], key=lambda l: -l["ms"])[:top]:
        t.add_row(l["name"], l["kind"], f"{l['macs'] / 1e6:.1f}", f"{l['bytes'] / 1024:.0f}", f"{l['compute_ms']:.3f}",
                  f"{l['memory_ms']:.3f}", f"{l['ms']:.3f}", l["bound"])
    show(t, c)
    c.print(f"total {e['total_ms']:.2f} ms = compute-bound layers {e['compute_bound_ms']:.2f} + memory-bound "
            f"{e['memory_bound_ms']:.2f} + overhead {e['overhead_ms']:.2f}")


@click.command()
@click.option("--artifact", type=click.Path(), default=None, help=".pte, .tflite, .onnx, .pt (eager) or .pt2")
@click.option("--device", default="host", show_default=True, help="host, adb:SERIAL or ssh:user@host")
@click.option("--binary", default=None, help="benchmark_model / executor_runner / trtexec path on the device.")
@click.option("--runs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=5, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True)
@click.option("--provider", default=None, help="onnxruntime provider, e.g. CUDAExecutionProvider or TensorrtExecutionProvider.")
@click.option("--apple-script", type=click.Path(dir_okay=False), default=None, help="Write a Core ML benchmark script to run on a Mac.")
@click.option("--ingest", type=click.Path(dir_okay=False), default=None,
              help="Read a JSON written by the Apple script (with --artifact: the .mlpackage it timed).")
@click.option("--profile", "profile_name", default=None,
              help="Device profile this measurement stands for (default: host_cpu on the host); `check` judges "
                   "that profile's latency with it.")
@click.option("--duration", default=None,
              help="Sustained run for this long (60s, 2m): p50/p90/p99 over time, throughput, last/first window ratio, "
                   "plot. On a device: trtexec --duration, or the tool back to back with --runs calls per window.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --duration: pace the calls like a camera at this rate and count dropped frames.")
@click.option("--verify", is_flag=True,
              help="Re-run the artifact's parity check against its run's reference before recording (host only).")
@click.option("--bundle", is_flag=True,
              help="Also run the reference I/O beside the artifact (a .pte's .bpte, a .tflite's or .onnx's "
                   ".reference.npz: real frames + reference outputs) where it runs; the per-task parity verdict goes "
                   "into the measurement record.")
@click.option("--python", default="python3", show_default=True,
              help="With --bundle on a device: the Python there with the artifact's runtime (executorch, "
                   "ai-edge-litert or tflite-runtime, onnxruntime).")
@click.option("--ops", is_flag=True,
              help="Per-operator profile of an artifact in a run: time by network stage, operator class and layer, with "
                   "a plot beside the artifact. On this host: a .pte by ETDump, an .onnx by onnxruntime's profiler, a "
                   ".tflite operator by operator; with --device adb:/ssh: the device tool's own profile "
                   "(benchmark_model --enable_op_profiling, trtexec --dumpProfile).")
@click.option("--ops-from", "ops_from", type=click.Path(dir_okay=False), default=None,
              help="With --ops: read a profile the device's tool wrote (trtexec --exportProfile JSON or --dumpProfile "
                   "log, benchmark_model --enable_op_profiling log, an executor runner's .etdp) instead of running.")
def bench(artifact, device, binary, runs, warmup, threads, provider, apple_script, ingest, profile_name, duration, fps,
          verify, bundle, python, ops, ops_from):
    """Latency of an artifact in its own runtime: p50/p90/p99, min, peak memory.

    The result is written beside the artifact and, for an artifact exported into a run, kept as a
    measurement record in RUN/measurements/ (tied to the artifact's sha256 and input size), which
    `edgehydra check --run RUN --device PROFILE` reads.
    """
    from edgehydra._io import atomic_write_bytes
    from edgehydra.devices import remote
    from edgehydra.devices.bench import record_measurement
    from edgehydra.devices.measure import BenchRequest, measure
    from edgehydra.devices.profile import load_profile
    from edgehydra.errors import BadInputError

    if apple_script:
        atomic_write_bytes(apple_script, remote.APPLE_SCRIPT.encode())
        click.echo(f"wrote {apple_script}: on a Mac run `python3 {Path(apple_script).name} MODEL.mlpackage`, "
                   "then `edgehydra bench --ingest coreml_bench.json`")
        return
    duration_s = None
    if duration is not None:
        from edgehydra.devices.sustained import parse_duration

        try:
            duration_s = parse_duration(duration)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--duration") from None
        if device != "host" and fps is not None:
            raise click.BadParameter("--fps paces calls from this host's clock; on a device the tool runs back to "
                                     "back (drop --fps, or pace on the device yourself)", param_hint="--fps")
    elif fps is not None:
        raise click.BadParameter("--fps paces a sustained run: give --duration too", param_hint="--fps")
    # an unknown name fails here, before any work; loaded once (a .toml path resolves to the profile's name)
    dev_profile = load_profile(profile_name) if profile_name else None
    req = BenchRequest(runs=runs, warmup=warmup, threads=threads, binary=binary, provider=provider,
                       duration_s=duration_s, fps=fps, verify=verify, bundle=bundle, python=python,
                       profile=dev_profile.name if dev_profile else None)
    if ingest:
        if not artifact:
            raise click.UsageError("--ingest needs --artifact: the .mlpackage the Apple script timed (its sha256 and "
                                   "input size tie the measurement to it)")
        res = remote.ingest(Path(ingest))
        res.update(remote.artifact_facts(Path(artifact)), runner=res.get("tool", "coremltools"),
                   profile=req.profile or "iphone15pro_ane")
        if Path(res.get("artifact", artifact)).name != Path(artifact).name:
            raise click.BadParameter(f"{ingest} timed {res['artifact']}, not {artifact}", param_hint="--artifact")
        res["artifact"] = str(artifact)
        record_measurement(Path(artifact), res)
    else:
        if not artifact:
            raise click.UsageError("pass --artifact FILE (or --apple-script / --ingest)")
        if ops_from and not ops:
            raise click.BadParameter("--ops-from reads a per-operator profile: give --ops too", param_hint="--ops-from")
        if ops:
            return _op_profile(Path(artifact), device, req, ops_from)
        try:
            res = measure(Path(artifact), device, req, host_profile=dev_profile is None or dev_profile.host)
        except BadInputError as e:
            hint = "--bundle" if "reference I/O" in str(e) else "--profile" if "this host's profiles" in str(e) else None
            if hint is None:
                raise
            raise click.BadParameter(str(e), param_hint=hint) from None
        if device != "host" and not device.startswith("qemu:") and not req.profile:
            console().print("[yellow]note:[/] no --profile given: `check` cannot tell which device profile "
                            "this measurement stands for and will keep estimating it")
    _print_bench(res, ingest)


def _print_bench(res: dict, ingest) -> None:
    from rich.table import Table

    if res.get("emulated"):
        return _print_emulated(res)
    # the artifact's path goes above the table: as its title, rich would cut it to the table's width
    console().print(f"[bold]{res.get('artifact', ingest)}[/] on {res.get('device')}")
    t = Table("metric", "value")
    for k in ("p50_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms", "peak_memory_mb", "runs", "threads", "runtime", "tool",
              "duration_s", "throughput_fps", "first_window_p50_ms", "last_window_p50_ms", "throttle_ratio", "target_fps",
              "dropped_frames"):
        if k in res:
            v = res[k]
            t.add_row(k, f"{v:.2f}" if isinstance(v, float) else str(v))
    show(t)
    if res.get("json"):
        click.echo(f"wrote {res['json']}")
    if res.get("plot"):
        click.echo(f"wrote {res['plot']}")
    ver = res.get("verification") or {}
    if ver.get("when") == "re-run by bench":
        ok = ver.get("parity_ok")
        click.echo(f"parity ({ver.get('reference_kind') or 'reference'}): "
                   f"{'ok' if ok else 'skipped' if ok is None else 'FAILED'}: {ver.get('detail')}")
    bp = res.get("bundle_parity")
    if bp:
        figs = "; ".join(f"{t}: " + ", ".join(f"{k} {v:.4g}" for k, v in d.items() if k in ("argmax_agreement", "depth_rel_err"))
                         for t, d in bp["parity"].items())
        click.echo(f"bundled reference I/O on {bp['device']} ({bp['cases']} frames): "
                   f"{'PASS' if bp['pass'] else 'FAIL: ' + '; '.join(bp['failures'])} ({figs})")
    if res.get("record"):
        click.echo(f"measurement record: {res['record']}")
    if res.get("record_skipped"):
        console().print(f"[yellow]note:[/] {res['record_skipped']}")


def _diff_text(v: dict) -> str:
    steps = f" ({v['max_steps']:.2f} / {v['mean_steps']:.3f} output steps)" if "max_steps" in v else ""
    arg = f", argmax {v['argmax_agreement']:.4f}" if "argmax_agreement" in v else ""
    return f"max |diff| {v['max_abs']:.4g}, mean {v['mean_abs']:.3g}{steps}{arg}"


def _print_emulated(res: dict) -> None:
    """`bench --bundle --device qemu:CPU`: parity on the emulated ARM kernels, against x86 and the reference."""
    bp = res["bundle_parity"]
    c = console()
    c.print(f"[bold]{res['artifact']}[/] on {res['device']}: {res['accelerator']}", soft_wrap=True)
    k = bp.get("kernels") or {}
    if not k.get("named"):
        c.print(f"  kernels: not named ({k.get('why')})", soft_wrap=True)
    for t, v in bp["vs_x86"].items():
        p = (bp.get("vs_program") or {}).get(t)
        c.print(f"  {t} vs x86: " + ("bit-identical" if v["bit_identical"] else _diff_text(v))
                + (f"; vs the program: {_diff_text(p)}" if p else ""), soft_wrap=True)
    c.print(f"reference I/O ({bp['cases']} frames) on the ARM kernels: "
            f"{'PASS' if bp['pass'] else 'FAIL: ' + '; '.join(bp['failures'])}", soft_wrap=True)
    c.print("no latency: emulated time is not a device's time", soft_wrap=True)
    if res.get("record"):
        c.print(f"measurement record: {res['record']}", soft_wrap=True)
    if not bp["pass"]:
        raise SystemExit(1)


def _op_profile(artifact: Path, device: str, req, ops_from: str | None) -> None:
    """`bench --ops`: run devices/measure.op_profile and print its tables."""
    from edgehydra.devices.measure import op_profile
    from edgehydra.errors import BadInputError

    try:
        got = op_profile(artifact, device, req, ops_from)
    except BadInputError as e:
        raise click.BadParameter(str(e), param_hint="--ops-from" if ops_from else
                                 "--device" if device != "host" else "--ops") from None
    prof, out, png, record, profile_name = got["profile"], got["json"], got["png"], got["record"], req.profile
    runs, threads = req.runs, req.threads
    if got["device_profile"] and not profile_name:
        console().print("[yellow]note:[/] no --profile given: this per-op profile is written beside the artifact "
                        "but `check` cannot tell which device profile it stands for")
    from rich.table import Table

    where = {"onnxruntime": "onnxruntime nodes", "litert": "LiteRT operators, each timed alone",
             "trtexec": "TensorRT layers", "benchmark_model": "LiteRT operators"}.get(prof.get("runtime"),
                                                                                     "XNNPACK operators")
    if prof.get("source") or prof.get("device"):
        how = f"by {prof['runtime']} on {prof.get('device') or 'a device'}" + (
            f", read from {prof['source']}" if prof.get("source") else "")
    else:
        how = f"median of {runs} calls, {threads} threads"
    console().print(f"[bold]{artifact}[/]: {prof['total_ms']:.3f} ms in {where} ({how})")
    if prof.get("whole_ms"):
        console().print(f"the whole model in one call: {prof['whole_ms']:.3f} ms (the parts sum to "
                        f"{prof['sum_ms'] / prof['whole_ms']:.2f}x that)")
    if not prof["mapped"]:
        console().print(f"[yellow]note:[/] operators not mapped to layers: {prof['unmapped_reason']}")
    for key, col in (("by_stage", "stage"), ("by_class", "op_class")):
        if prof.get(key):
            t = Table(col.replace("op_class", "operator class"), "ms", "share", "operators")
            for d in prof[key]:
                t.add_row(str(d[col]), f"{d['ms']:.3f}", f"{100 * d['share']:.0f} %", str(d["ops"]))
            show(t)
    if prof.get("by_layer"):
        top = sorted(prof["by_layer"].items(), key=lambda kv: -kv[1])[:10]
        t = Table("layer (top 10)", "ms")
        for k, v in top:
            t.add_row(k, f"{v:.3f}")
        show(t)
    click.echo(f"wrote {out} and {png}")
    if record:
        click.echo(f"op profile record: {record} (per-class scales for {profile_name})")


@click.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True)
@click.option("--device", "devices_", multiple=True, required=True, help="Profile name or .toml (repeatable).")
@click.option("--artifact", type=click.Path(exists=True), default=None,
              help="Judge this artifact of the run (e.g. a mixed-precision one) instead of the run's uniform one.")
@click.option("--json", "as_json", is_flag=True)
def check(run_dir, devices_, artifact, as_json):
    """Check a run's artifacts against device budgets (per task); exit 1 unless every device PASSes.

    Each device is judged on the artifact named by --artifact, else the run's uniform artifact at its
    budget's input size; without one it is NOT JUDGED (exit 1) and the command that would make one is printed.
    """
    from rich.table import Table

    from edgehydra.devices.check import check_run

    res = check_run(Path(run_dir), list(devices_), artifact=artifact)
    if as_json:
        click.echo(json.dumps(res, indent=2))
    else:
        c = console()
        colour = {"PASS": "green", "FAIL": "red"}
        for r in res:
            size = "x".join(map(str, r.get("size", [])))
            t = Table(title=f"{r['device']} at {size}: {r.get('artifact', '-')} -> "
                            f"[{colour.get(r['verdict'], 'yellow')}]{r['verdict']}[/]")
            for col in ("budget", "limit", "value", "margin", "result", "note"):
                t.add_column(col, justify="right" if col in ("limit", "value", "margin") else "left")
            for row in r["rows"]:
                f = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
                t.add_row(row["budget"], f"{f(row['limit'])} {row['unit']}", f(row["value"]), f(row["margin"]),
                          "[green]PASS[/]" if row["pass"] else "[red]FAIL[/]", row["note"])
            if r["rows"]:
                show(t, c)
            else:
                c.print(f"[bold]{r['device']}[/] at {size}: [yellow]{r['verdict']}[/]")
            if r.get("profile_note"):
                c.print(r["profile_note"])
            if r.get("provenance"):
                c.print(r["provenance"])
            if r.get("reason"):
                c.print(r["reason"])
            for ev in r.get("arm_kernels") or []:  # parity on emulated ARM kernels: evidence, not a budget
                same = all(v.get("bit_identical") for v in (ev.get("vs_x86") or {}).values())
                c.print(f"ARM kernels: {ev['device']} {'PASS' if ev['pass'] else 'FAIL'} "
                        f"({'bit-identical to x86' if same else 'differs from x86'}): {ev['accelerator']}",
                        soft_wrap=True)
            if "int8_vs_fp16" in r:
                iv = r["int8_vs_fp16"]
                c.print(f"int8 {iv['int8_ms']:.1f} ms vs fp16 {iv['fp16_ms']:.1f} ms (estimated): "
                        f"{'int8' if iv['int8_faster'] else 'fp16'} is faster; recommended: {r['recommendation']}")
    if any(r["verdict"] != "PASS" for r in res):
        raise SystemExit(1)
