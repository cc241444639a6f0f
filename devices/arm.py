"""ARM (aarch64) kernels checked without an ARM device: an emulated CPU as a device (``--device qemu:CPU``).

The emulated root is built by ``edgehydra arm setup`` (devices/arm_setup.py). ``QEMU_CPU`` picks the kernels
each runtime dispatches to; the artifact's reference I/O runs through the same self-contained runner an ssh
device gets. Emulated time is never a latency: a check here records parity, not milliseconds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from edgehydra.errors import BadInputError, EdgeHydraError

from .arm_setup import default_dir, has_executorch, state
from .remote import Result, Transport

# QEMU_CPU -> the int8 kernel family the runtimes pick on it (TOOLCHAIN.md: seen in QEMU's translated-block log
# mapped to XNNPACK's symbols): plain NEON multiply-accumulate, the dot-product extension most phones have, i8mm.
CPUS = {
    "cortex-a72": "NEON kernels (no dot product; Raspberry Pi 4)",
    "cortex-a55": "dot-product kernels (phones' little cores)",
    "cortex-a76": "dot-product kernels (Raspberry Pi 5, phones' big cores)",
    "cortex-a710": "i8mm kernels (Armv9 phones)",
    "max": "every extension QEMU has, SME included",
}
# ------------------------------------------------------------------------------------------ the device
class QemuTransport(Transport):
    """An emulated aarch64 CPU as a device: files go to a work folder here, ``python3`` is the emulated one."""

    def __init__(self, cpu: str, d: Path | None = None):
        if cpu not in CPUS:
            raise BadInputError(f"--device qemu:{cpu}: emulated CPUs are {', '.join(CPUS)}")
        st = state(d)
        if st is None:
            raise BadInputError(f"--device qemu:{cpu}: no emulated aarch64 root in {d or default_dir()}; build it once "
                                f"with `edgehydra arm setup` (about 1 min, no root needed)")
        self.cpu, self.st, self.name = cpu, st, f"qemu:{cpu}"
        self.tmp_root = str(Path(st["dir"]) / "work")
        Path(self.tmp_root).mkdir(parents=True, exist_ok=True)
        self.timeout = 1800.0  # emulation runs a frame in ~0.5 s, the process starts in seconds

    @property
    def accelerator(self) -> str:
        return f"emulated {self.cpu} ({CPUS[self.cpu]}), QEMU user mode"

    def push(self, local: Path, remote: str):
        (shutil.copytree if Path(local).is_dir() else shutil.copy)(local, remote)

    def shell(self, argv: list[str], timeout=None) -> Result:
        argv = [str(a) for a in argv]
        if argv and argv[0] in ("python3", "python"):
            argv = [self.st["qemu"], "-L", self.st["root"], "-E", f"PYTHONPATH={self.st['site_packages']}",
                    "-E", "OMP_NUM_THREADS=1", str(Path(self.st["root"]) / "usr/bin/python3.11")] + argv[1:]
        env = dict(os.environ, QEMU_CPU=self.cpu)
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout or self.timeout, env=env)
        except subprocess.TimeoutExpired:
            raise EdgeHydraError(f"{self.name}: timed out after {timeout or self.timeout:.0f} s") from None
        return Result(p.returncode, p.stdout, p.stderr)

    def rmdir(self, remote: str):
        shutil.rmtree(remote, ignore_errors=True)


# ------------------------------------------------------------------------------------------ the check
def emulated_parity(artifact: Path, transport: QemuTransport) -> dict:
    """An artifact's reference I/O run on the emulated CPU's aarch64 kernels by the same self-contained runner an
    ssh device gets (.pte: its bundled program through ExecuTorch's runtime; .tflite / .onnx: the .reference.npz
    through LiteRT / onnxruntime), judged per task with the export's tolerance; and the same frames through the
    x86 kernels here, compared output by output (bit-identical, max and mean difference, argmax)."""
    import numpy as np

    from edgehydra.exporters.parity import Tolerance, parity, within
    from edgehydra.exporters.runtime import read_manifest

    artifact = Path(artifact)
    if artifact.suffix not in (".pte", ".tflite", ".onnx"):
        raise BadInputError(f"{artifact.name}: an emulated CPU checks .pte, .tflite and .onnx artifacts")
    if artifact.suffix == ".pte" and not has_executorch(transport.st):
        raise BadInputError(f"{artifact.name}: the emulated root in {transport.st['dir']} has no ExecuTorch "
                            f"runtime (built before it was added, or on a host without ExecuTorch); `edgehydra arm setup` adds "
                            f"it when the host has ExecuTorch")
    man = read_manifest(artifact)
    tasks = tuple(man["outputs"])
    arm, x86, expected, runner = _both_sides(artifact, transport, len(tasks))

    def cat(got):
        return [np.concatenate([np.asarray(r[k], np.float32).reshape(expected[k][i:i + 1].shape)
                                for i, r in enumerate(got)]) for k in range(len(tasks))]

    a, x = cat(arm), cat(x86)
    par = parity(expected, a, tasks)
    fails = within(par, Tolerance(**man["verification"]["tolerance"]))
    steps, steps_note = _output_steps(artifact, man, tasks)
    vs, vs_prog = {}, {}
    for k, t in enumerate(tasks):
        vs[t] = dict(_difference(a[k], x[k], t, steps.get(t)), bit_identical=bool(np.array_equal(a[k], x[k])))
        vs_prog[t] = _difference(a[k], np.asarray(expected[k], np.float32), t, steps.get(t))
    return {"device": transport.name, "accelerator": transport.accelerator, "cases": len(expected[0]), "parity": par,
            "tolerance": man["verification"]["tolerance"], "failures": fails, "pass": not fails, "vs_x86": vs,
            "vs_program": vs_prog, "output_steps": steps, **({"output_steps_note": steps_note} if steps_note else {}),
            "runner": f"{runner} under QEMU user mode", "qemu": transport.st.get("qemu_version")}


def _difference(a, b, task: str, step: float | None) -> dict:
    """Max and mean absolute difference, in output units and (int8 outputs) in output steps; argmax for segm."""
    import numpy as np

    d = np.abs(a - b)
    out = {"max_abs": float(d.max()), "mean_abs": float(d.mean())}
    if step:
        out.update(max_steps=float(d.max() / step), mean_steps=float(d.mean() / step))
    if task == "segm":
        out["argmax_agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
    return out


def _output_steps(artifact: Path, man: dict, tasks) -> tuple[dict, str]:
    """Each task's int8 output step, read off the quantised program the artifact was exported from (the scale of
    its last dequantize); empty, with the reason, for a float artifact or one outside a run."""
    from edgehydra.exporters.runtime import artifact_program
    from edgehydra.graph import output_steps
    from edgehydra.run import run_of_artifact

    if man.get("precision") != "int8":
        return {}, "a float artifact has no output step"
    run = run_of_artifact(artifact)
    if run is None:
        return {}, "not in a run: its quantised program (and so the output steps) is unknown"
    try:
        prog = artifact_program(run, man)
    except BadInputError as e:
        return {}, str(e)
    return (output_steps(prog.module, tasks), "") if prog is not None else ({}, "the manifest names no program")


def record_in_manifest(artifact: Path, par: dict) -> Path:
    """The emulated check into the artifact's manifest, beside export's own verification:
    ``verification.arm[<device>]`` (per task vs x86 and vs the program, in output units and steps)."""
    from edgehydra._io import atomic_write_json
    from edgehydra.exporters.runtime import read_manifest

    man = read_manifest(artifact)
    man.setdefault("verification", {}).setdefault("arm", {})[par["device"]] = {
        k: par.get(k) for k in ("accelerator", "pass", "failures", "cases", "vs_x86", "vs_program", "output_steps",
                                "qemu")}
    path = Path(f"{artifact}.manifest.json")
    atomic_write_json(path, man)
    return path


def _both_sides(artifact: Path, transport: QemuTransport, n_out: int):
    """(outputs on the emulated CPU, outputs on this x86 host, the expected outputs per task, the runner)."""
    import numpy as np

    from edgehydra.exporters.reference_io import run_runner_remote

    if artifact.suffix == ".pte":
        from edgehydra.exporters import bundle_runner
        from edgehydra.exporters._et_runtime import runtime
        from edgehydra.exporters.bundle import bundle_path, read_expected as read_bundle

        bpte = bundle_path(artifact)
        if not bpte.is_file():
            raise BadInputError(f"{artifact.name} has no bundled program ({bpte.name}); export it again")
        cases = read_bundle(bpte)
        arm = bundle_runner.decode(run_runner_remote(transport, bundle_runner, [bpte], "python3",
                                                     "the emulated root's executorch", args=(len(cases),)))
        runtime()  # the host's threadpool started quietly
        x86 = bundle_runner.run_cases(str(bpte), len(cases))
        expected = [np.concatenate([np.asarray(e[k], np.float32) for _, e in cases]) for k in range(n_out)]
        return arm, x86, expected, "exporters/bundle_runner.py (ExecuTorch's bundled program)"
    from edgehydra.exporters import reference_runner
    from edgehydra.exporters.reference_io import decode, read_expected, reference_path

    ref = reference_path(artifact)
    if not ref.is_file():
        raise BadInputError(f"{artifact.name} has no reference I/O ({ref.name}); export it again")
    arm = decode(run_runner_remote(transport, reference_runner, [artifact, ref], "python3",
                                   "the emulated root's onnxruntime / ai-edge-litert"))
    return arm, reference_runner.run_reference(str(artifact), str(ref)), read_expected(ref), \
        "exporters/reference_runner.py"


# ------------------------------------------------------------------------------------- kernel evidence
_PROBE = '''import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
i = Interpreter(model_path=sys.argv[1], num_threads=1)
i.allocate_tensors()
d = i.get_input_details()[0]
i.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
i.invoke()
for line in open("/proc/self/maps"):  # QEMU shows the guest's mappings: where the library was loaded
    if LIB in line:
        print("MAP", line.strip())
'''
LITERT_LIB = "libpywrap_litert_common.so"  # LiteRT's aarch64 wheel keeps XNNPACK's symbols in this library


def _kernel_family(names: list[str]) -> str:
    tags = [("i8mm", "i8mm (smmla)"), ("neondot", "dot product (sdot)"), ("sme", "SME (KleidiAI)"),
            ("mlal", "NEON multiply-accumulate (mlal)"), ("fma", "NEON fp32 FMA"), ("neon", "NEON")]
    for tag, what in tags:
        if any(tag in n for n in names):
            return what
    return "not identified"


def kernel_evidence(artifact: Path, transport: QemuTransport) -> dict:
    """Which XNNPACK micro-kernels LiteRT ran for a .tflite on the emulated CPU: one inference under QEMU's
    translated-block log (-d in_asm), each block's guest address mapped to the library's symbol table at the
    base the guest's /proc/self/maps shows. Only what executed is named. onnxruntime's aarch64 library is
    stripped, so MLAS kernels are not named (said, not guessed)."""
    import bisect
    import re
    import tempfile

    artifact = Path(artifact)
    if artifact.suffix != ".tflite":
        return {"named": False, "why": f"{artifact.suffix}: its runtime's aarch64 library has no symbol table here "
                                       f"(onnxruntime's and ExecuTorch's XNNPACK backend are stripped); kernels are "
                                       f"named for .tflite (LiteRT's XNNPACK, the same micro-kernels) only"}
    st = transport.st
    lib = Path(st["site_packages"]) / "ai_edge_litert" / LITERT_LIB
    with tempfile.TemporaryDirectory(dir=transport.tmp_root) as tmp:
        probe, log = Path(tmp) / "probe.py", Path(tmp) / "in_asm.log"
        probe.write_text(f"LIB = {LITERT_LIB!r}\n" + _PROBE)
        shutil.copy(artifact, Path(tmp) / artifact.name)
        p = subprocess.run([st["qemu"], "-d", "in_asm", "-D", str(log), "-L", st["root"], "-E",
                            f"PYTHONPATH={st['site_packages']}", str(Path(st["root"]) / "usr/bin/python3.11"),
                            str(probe), str(Path(tmp) / artifact.name)], capture_output=True, text=True,
                           env=dict(os.environ, QEMU_CPU=transport.cpu), timeout=1800)
        base = next((int(ln.split()[1].split("-")[0], 16) for ln in p.stdout.splitlines()
                     if ln.startswith("MAP") and ln.split()[3] == "00000000"), None)
        if p.returncode != 0 or base is None:
            return {"named": False, "why": f"the probe exited {p.returncode}: {(p.stderr or p.stdout).strip()[-200:]}"}
        starts = [int(m.group(1), 16) - base for m in re.finditer(r"^IN:.*\n0x([0-9a-f]+):", log.read_text(), re.M)]
    syms = []
    for line in subprocess.run(["readelf", "-Ws", str(lib)], capture_output=True, text=True).stdout.splitlines():
        f = line.split()
        if len(f) >= 8 and f[3] == "FUNC" and int(f[1], 16):
            syms.append((int(f[1], 16), int(f[2]), f[7]))
    syms.sort()
    addrs = [s[0] for s in syms]
    ran = set()
    for a in starts:
        j = bisect.bisect_right(addrs, a) - 1
        if j >= 0 and a < syms[j][0] + max(syms[j][1], 1):
            ran.add(syms[j][2])
    kernels = sorted(n for n in ran if n.startswith("xnn_") and "ukernel" in n)
    # the convolutions' GEMM / IGEMM micro-kernels: int8 (qs8_qc8w) in an int8 file, f32 in a float one
    gemm = [n for n in kernels if re.match(r"xnn_(p?qs8_qc8w|p?f32)_i?gemm_", n) and not n.endswith(("_get_mr", "_get_nr"))]
    return {"named": True, "int8_gemm": [n for n in gemm if "qs8" in n], "gemm": gemm, "int8_dwconv": [n for n in kernels if "dwconv" in n and "qs8" in n],
            "kernels": kernels, "family": _kernel_family(gemm), "blocks": len(starts),
            "how": "QEMU -d in_asm, block addresses mapped to " + LITERT_LIB + "'s symbols"}
