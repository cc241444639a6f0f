#!/usr/bin/env python
"""Which XNNPACK micro-kernels an ExecuTorch .pte spends its time in, fp32 beside int8 (Linux: perf).

    python benchmarks/kernels.py [--run runs/demo | --model hydranet_nyud] [--size 240x320] [--seconds 6]
    python benchmarks/kernels.py --pte a.pte --pte b.pte

benchmarks/ops.py times layers and finds int8 depthwise convolutions slower than fp32 on this CPU;
this script shows the instructions that make it so. The executorch wheel's
libexecutorch_backend_xnnpack.so is stripped, so perf cannot name a kernel, but its .eh_frame still
holds every function's address range, and a micro-kernel's instruction mix says which family it is
(vpdpbusd: int8 GEMM on AVX512-VNNI; vpmovsxbd + vpmulld: int8 depthwise widened to 32-bit
multiplies; ...). The families are read from the disassembly, so each row prints its instruction
signature: check the label against it. Each .pte runs in a process of its own (torch at one thread,
ExecuTorch's pool at --threads, as benchmarks/run.py times them) while `perf record -p` samples it;
a family's milliseconds are its share of the samples times that process's median latency.
"""
from __future__ import annotations

import argparse
import bisect
import collections
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
logging.disable(logging.WARNING)
sys.path.insert(0, str(Path(__file__).parent))

# (family, role, test on the function's instruction counts); the first match wins. Roles pair an
# fp32 family with its int8 counterpart in the side-by-side table.
FAMILIES = [
    ("int8 GEMM/conv: AVX512-VNNI vpdpbusd", "GEMM/conv", lambda c: c["vpdpbusd"] > 0),
    ("int8 GEMM/conv: AVX2 vpmaddwd on int16-widened int8 (no VNNI)", "GEMM/conv",
     lambda c: c["vpmaddwd"] > 0 and c["vpmovsxbw"] + c["vpmovzxbw"] + c["vpmaddubsw"] > 0 and c["vpmulld"] < 9),
    ("int8 depthwise: vpmovsxbd + vpmulld (32-bit multiplies)", "depthwise",
     lambda c: c["vpmulld"] >= 9 and c["vpmovsxbd"] >= 9),
    ("int8 add/requantise: vpmulld", "add", lambda c: c["vpmulld"] > 0),  # before max-pool: it clamps with vpmaxsb
    ("int8 max-pool: SSE4.1 pmaxsb, 16 lanes", "max-pool", lambda c: c["pmaxsb"] + c["vpmaxsb"] > 0),
    ("fp32 max-pool: SSE maxps, 4 lanes", "max-pool", lambda c: c["maxps"] > 0),
    ("fp32 depthwise: vfmadd132ps", "depthwise", lambda c: c["vfmadd132ps"] > c["vfmadd231ps"]),
    ("fp32 GEMM/conv: vfmadd231ps + vbroadcastss", "GEMM/conv",
     lambda c: c["vfmadd231ps"] > 0 and c["vbroadcastss"] > 0),
    ("fp32 add: vaddps", "add", lambda c: c["vaddps"] > 0 and not c["vmulps"]),
    ("quantise/dequantise: vcvtps2dq / vcvtdq2ps", "convert", lambda c: c["vcvtps2dq"] + c["vcvtdq2ps"] > 0),
    ("transpose (NCHW<->NHWC): unpack/permute", "transpose",
     lambda c: c["vpunpcklbw"] + c["vunpcklps"] + c["vperm2f128"] > 4),
]
SIGNATURE_SKIP = {"mov", "movq", "movl", "push", "pop", "add", "sub", "lea", "cmp", "jmp", "jne", "je", "ret",
                  "test", "xor", "nop", "nopw", "nopl", "and", "shl", "imul", "cmovne", "cmove", "jb", "jae",
                  "vzeroupper", "vmovups", "vmovaps", "vmovdqa", "vmovdqu", "vmovdqa32", "vmovdqa64", "movups",
                  "movaps", "movdqu", "movdqa", "inc", "dec", "ja", "jbe", "vmovq", "movzbl", "int3", "cs"}

CHILD = """
import statistics, sys, time, torch
torch.set_num_threads(1)
from edgehydra.exporters.executorch import runtime
method = runtime(int(sys.argv[2])).load_program(sys.argv[1]).load_method("forward")
x = torch.randn(*method.metadata.input_tensor_meta(0).sizes())
for _ in range(10):
    method.execute([x])
print("ready", flush=True)
ts, end = [], time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    t = time.perf_counter(); method.execute([x]); ts.append(time.perf_counter() - t)
print(statistics.median(ts) * 1e3, len(ts), flush=True)
"""


def need_tools():
    missing = [t for t in ("perf", "readelf", "objdump") if shutil.which(t) is None]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not found: install linux-perf and binutils (Linux only)")


def xnnpack_library() -> Path:
    import executorch

    lib = Path(executorch.__path__[0]) / "lib" / "libexecutorch_backend_xnnpack.so"
    if not lib.is_file():
        sys.exit(f"error: {lib} not found: this executorch build links XNNPACK elsewhere")
    return lib


class Functions:
    """Address ranges of a stripped library's functions (from .eh_frame) and their instruction counts."""

    def __init__(self, lib: Path):
        self.lib = lib
        frames = subprocess.run(["readelf", "--debug-dump=frames", str(lib)], capture_output=True, text=True).stdout
        self.ranges = sorted((int(a, 16), int(b, 16)) for a, b in re.findall(r"pc=([0-9a-f]+)\.\.([0-9a-f]+)", frames))
        self.starts = [a for a, _ in self.ranges]
        self._counts: dict[int, collections.Counter] = {}

    def of(self, offset: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self.starts, offset) - 1
        return self.ranges[i] if i >= 0 and self.ranges[i][1] > offset else None

    def counts(self, fn: tuple[int, int]) -> collections.Counter:
        if fn[0] not in self._counts:
            asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={fn[0]:#x}",
                                  f"--stop-address={fn[1]:#x}", str(self.lib)], capture_output=True, text=True).stdout
            self._counts[fn[0]] = collections.Counter(m.group(1) for m in re.finditer(r"^\s*[0-9a-f]+:\s+(\S+)", asm, re.M))
        return self._counts[fn[0]]

    def family(self, fn) -> tuple[str, str]:
        c = self.counts(fn)
        return next(((f, r) for f, r, test in FAMILIES if test(c)), ("other XNNPACK", "other"))

    def signature(self, fn) -> str:
        return " ".join(k for k, _ in self.counts(fn).most_common(40) if k not in SIGNATURE_SKIP)[:60] or "-"


def profile(pte: Path, threads: int, seconds: float, data: Path) -> tuple[float, list[tuple[float, str, str]]]:
    """(median ms, [(percent of samples, dso, symbol or hex offset)]) of ``pte`` running under perf."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(pte), str(threads), str(seconds)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if child.stdout.readline().strip() != "ready":
            sys.exit(f"error: {pte} did not run (try: edgehydra run --artifact {pte})")
        rec = subprocess.run(["perf", "record", "-q", "-o", str(data), "-p", str(child.pid), "--", "sleep",
                              str(max(1.0, seconds - 1.0))], capture_output=True, text=True)
        ms = float(child.stdout.readline().split()[0])
    finally:
        child.wait()
    if rec.returncode != 0:
        sys.exit(f"error: perf record failed ({rec.stderr.strip().splitlines()[-1] if rec.stderr.strip() else rec.returncode});"
                 " perf_event_paranoid may forbid it: sysctl kernel.perf_event_paranoid=1")
    rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,symbol",
                          "-g", "none"], capture_output=True, text=True).stdout
    rows = [(float(p), dso, sym) for p, dso, sym in re.findall(r"^\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(\S+)", rep, re.M)]
    return ms, rows


def attribute(rows, fns: Functions):
    """Samples summed per XNNPACK function, and per other library."""
    per_fn, per_other = collections.Counter(), collections.Counter()
    for pct, dso, sym in rows:
        fn = fns.of(int(sym, 16)) if dso == fns.lib.name and sym.startswith("0x") else None
        if fn:
            per_fn[fn] += pct
        elif dso == "libexecutorch_threadpool.so":
            per_other["threadpool (workers waiting)"] += pct
        else:
            per_other["rest (torch I/O, libc, python, kernel, XNNPACK setup)"] += pct
    return per_fn, per_other


def report(name: str, ms: float, per_fn, per_other, fns: Functions, top: int) -> dict[str, float]:
    print(f"\n{name}: {ms:.2f} ms median")
    print(f"  {'share':>6s} {'ms':>6s}  family")
    fam = collections.Counter()
    for fn, pct in per_fn.items():
        fam[fns.family(fn)] += pct
    roles = collections.Counter()
    for (f, role), pct in fam.most_common():
        roles[role] += pct * ms / 100
        print(f"  {pct:5.1f}% {pct * ms / 100:6.2f}  {f}")
    for what, pct in per_other.most_common():
        roles[what.split(" (")[0]] += pct * ms / 100
        print(f"  {pct:5.1f}% {pct * ms / 100:6.2f}  {what}")
    print(f"  top functions (offset in {fns.lib.name}, length, instruction signature):")
    for fn, pct in per_fn.most_common(top):
        print(f"  {pct:5.1f}% {fn[0]:#9x} {fn[1] - fn[0]:6d} B  {fns.family(fn)[0].split(':')[0]:18s} {fns.signature(fn)}")
    return roles


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo", help="run whose fp32.pt is lowered (else hydranet_small)")
    ap.add_argument("--model", help="a registered architecture instead, untrained (e.g. hydranet_nyud)")
    ap.add_argument("--size", default="240x320")
    ap.add_argument("--pte", action="append", type=Path, help="profile these .pte files instead (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args()
    need_tools()
    fns = Functions(xnnpack_library())
    tmp = Path(tempfile.mkdtemp(prefix="edgehydra-kernels-"))
    if a.pte:
        ptes = [(p.name, p) for p in a.pte]
    else:
        import torch
        from ops import pte_files

        h, w = (int(v) for v in a.size.split("x"))
        from edgehydra.run import Run

        ckpt = Run(a.run).fp32
        torch.manual_seed(0)
        if ckpt.is_file() and not a.model:
            from edgehydra.checkpoint import load_checkpoint

            model, _ = load_checkpoint(ckpt)
            what = str(ckpt)
        else:
            from edgehydra import create_model

            what = a.model or "hydranet_small"
            model = create_model(what)
        print(f"lowering {what} at {h}x{w} to XNNPACK fp32 and int8 ...", file=sys.stderr)
        f32, i8 = pte_files(model, (1, 3, h, w), tmp)
        ptes = [(f"fp32 .pte {h}x{w}", f32), (f"int8 .pte {h}x{w}", i8)]
    roles = []
    for name, pte in ptes:
        ms, rows = profile(pte, a.threads, a.seconds, tmp / "perf.data")
        roles.append(report(name, ms, *attribute(rows, fns), fns, a.top))
    if len(ptes) == 2:
        print(f"\nby role, ms ({ptes[0][0]} / {ptes[1][0]})")
        for role in sorted(set(roles[0]) | set(roles[1]), key=lambda r: -roles[0].get(r, 0)):
            f, q = roles[0].get(role, 0.0), roles[1].get(role, 0.0)
            print(f"  {role:12s} {f:6.2f} {q:6.2f}  {f / q if q > 0.01 else float('nan'):5.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
