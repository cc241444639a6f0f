"""ARM (aarch64) kernels checked without an ARM device: the runtimes' aarch64 wheels under QEMU user-mode emulation.

``edgehydra arm setup`` builds, in one folder and without root, binfmt_misc or chroot:

- QEMU 10's static ``qemu-aarch64`` from Debian bookworm-backports (bookworm's QEMU 7.2 does not emulate
  /proc/cpuinfo for aarch64, and every runtime's cpuinfo then segfaults: ../shared/reference/TOOLCHAIN.md);
- an arm64 Python 3.11 from Debian bookworm's arm64 packages, unpacked (``dpkg-deb -x``), never installed:
  ``qemu-aarch64 -L ROOT ROOT/usr/bin/python3.11`` runs it with ROOT as its library prefix;
- the host's runtime versions as aarch64 wheels (numpy, onnxruntime, ai-edge-litert and what they import),
  fetched by the host's pip (pip inside the emulated root cannot reach the index) into ROOT/opt/sp.

apt runs with a private configuration (its own sources list, lists, cache and dpkg status in the folder), so
nothing of the machine's own configuration changes. ``QEMU_CPU`` picks the kernels each runtime dispatches to.
Emulated time is never a latency: a check here records parity, not milliseconds.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from edgehydra._io import atomic_write_json
from edgehydra.errors import BadInputError, EdgeHydraError

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
SCHEMA = 1
DEBIAN = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
ROOT_PACKAGES = ("python3.11", "libatomic1", "libstdc++6", "libgomp1")
# what the runners import, at the host's versions where the host has them (the same runtime on both sides)
WHEELS = ("numpy", "onnxruntime", "ai-edge-litert", "flatbuffers", "protobuf", "ml_dtypes", "backports.strenum",
          "tqdm", "typing-extensions", "packaging")
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64")


def default_dir() -> Path:
    return Path(os.environ.get("EDGEHYDRA_ARM_DIR") or Path.home() / ".cache" / "edgehydra" / "arm")


class ArmSetupError(EdgeHydraError):
    exit_code = 1


def _wanted() -> dict:
    out = {}
    for name in WHEELS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None  # the newest aarch64 wheel
    return {"schema": SCHEMA, "packages": list(ROOT_PACKAGES), "wheels": out}


def state(d: Path | None = None) -> dict | None:
    """The setup's record (versions, sizes, when) if the emulated root is complete, else None."""
    f = Path(d or default_dir()) / "state.json"
    if not f.is_file():
        return None
    try:
        s = json.loads(f.read_text())
    except json.JSONDecodeError:
        return None
    return s if s.get("complete") and Path(s.get("qemu", "")).is_file() else None


def _run(argv: list[str], what: str, timeout: float = 900) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ArmSetupError(f"arm setup: {argv[0]} not found (it needs apt-get and dpkg-deb: a Debian or Ubuntu host)") from None
    except subprocess.TimeoutExpired:
        raise ArmSetupError(f"arm setup: {what} timed out after {timeout:.0f} s") from None
    if p.returncode != 0:
        last = (p.stderr or p.stdout).strip().splitlines()
        raise ArmSetupError(f"arm setup: {what} failed: {last[-1] if last else f'exit {p.returncode}'}")
    return p.stdout


def _apt(d: Path, arch: str, suite: str) -> list[str]:
    """apt-get with its whole state in ``d``: the machine's sources, lists, cache and dpkg status are untouched."""
    for sub in ("lists/partial", "cache/archives/partial"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "sources.list").write_text(f"deb [arch={arch} signed-by={KEYRING}] {DEBIAN} {suite} main\n")
    (d / "status").touch()
    opts = [f"Dir::Etc::SourceList={d / 'sources.list'}", "Dir::Etc::SourceParts=/nonexistent",
            f"Dir::State::Lists={d / 'lists'}", f"Dir::Cache={d / 'cache'}", f"Dir::State::status={d / 'status'}",
            f"APT::Architecture={arch}", f"APT::Architectures::={arch}", "Debug::NoLocking=1"]
    if os.geteuid() == 0:
        opts.append("APT::Sandbox::User=root")  # as root apt would drop to _apt, who cannot write the folder
    return ["apt-get", "-q", "-y"] + [a for o in opts for a in ("-o", o)]


def setup(d: Path | None = None, progress=None, force: bool = False) -> dict:
    """Build (or find complete) the emulated aarch64 Python in ``d``; returns its state record."""
    d = Path(d or default_dir())
    want = _wanted()
    have = state(d)
    if have and not force and {k: have.get(k) for k in want} == want:
        return dict(have, reused=True)
    if platform.machine() != "x86_64":
        raise ArmSetupError(f"arm setup: this host is {platform.machine()}; the emulated root is built for x86-64 hosts")
    if not Path(KEYRING).is_file():
        raise ArmSetupError(f"arm setup: Debian's archive keyring is missing ({KEYRING}); install debian-archive-keyring")
    steps = ("qemu", "arm64 python", "wheels", "self-check")
    task = progress.add_task("arm setup", total=len(steps)) if progress else None
    d.mkdir(parents=True, exist_ok=True)
    (d / "state.json").unlink(missing_ok=True)  # incomplete until the self-check passes

    def done(info=""):
        if progress:
            progress.update(task, advance=1, info=info)

    qemu = _qemu(d)
    done(_run([str(qemu), "--version"], "qemu --version").splitlines()[0])
    root = _root(d)
    done(f"{root}")
    sp = _wheels(d, root, want["wheels"])
    done(f"{len(list((d / 'wheels').glob('*.whl')))} wheels")
    check = _run([str(qemu), "-L", str(root), "-E", f"PYTHONPATH={sp}", str(root / "usr/bin/python3.11"), "-c",
                  "import numpy, onnxruntime, ai_edge_litert.interpreter, platform; print(platform.machine(), "
                  "onnxruntime.__version__, numpy.__version__)"], "self-check (import the runtimes emulated)")
    done(check.strip())
    rec = dict(want, complete=True, dir=str(d), qemu=str(qemu), root=str(root), site_packages=str(sp),
               qemu_version=_run([str(qemu), "--version"], "qemu --version").splitlines()[0],
               self_check=check.strip(), disk_mb=round(_du(d) / 2**20, 1))
    atomic_write_json(d / "state.json", rec)
    return rec


def _du(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def _qemu(d: Path) -> Path:
    out = d / "qemu-aarch64"
    if out.is_file():
        return out
    apt = _apt(d / "apt-amd64", "amd64", "bookworm-backports")
    _run(apt + ["update"], "apt-get update (bookworm-backports)")
    deb_dir = d / "apt-amd64" / "debs"
    deb_dir.mkdir(exist_ok=True)
    _run(apt + ["-o", f"Dir::Cache::Archives={deb_dir}", "install", "--download-only", "--no-install-recommends",
                "qemu-user/bookworm-backports"], "downloading qemu-user from bookworm-backports")
    debs = sorted(deb_dir.glob("qemu-user_*.deb"))
    if not debs:
        raise ArmSetupError("arm setup: apt downloaded no qemu-user package from bookworm-backports")
    tmp = d / "qemu-extract"
    shutil.rmtree(tmp, ignore_errors=True)
    _run(["dpkg-deb", "-x", str(debs[-1]), str(tmp)], "unpacking qemu-user")
    shutil.move(str(tmp / "usr/bin/qemu-aarch64"), out.with_suffix(".part"))
    out.with_suffix(".part").replace(out)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _root(d: Path) -> Path:
    root = d / "root"
    if (root / "usr/bin/python3.11").is_file():
        return root
    apt = _apt(d / "apt-arm64", "arm64", "bookworm")
    _run(apt + ["update"], "apt-get update (bookworm arm64)")
    deb_dir = d / "apt-arm64" / "debs"
    deb_dir.mkdir(exist_ok=True)
    _run(apt + ["-o", f"Dir::Cache::Archives={deb_dir}", "install", "--download-only", "--no-install-recommends",
                *ROOT_PACKAGES], "downloading the arm64 Python packages")
    tmp = d / "root.part"
    shutil.rmtree(tmp, ignore_errors=True)
    for deb in sorted(deb_dir.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpacking {deb.name}")
    if not (tmp / "usr/bin/python3.11").is_file():
        raise ArmSetupError("arm setup: the arm64 packages hold no usr/bin/python3.11")
    tmp.replace(root)
    return root


def _wheels(d: Path, root: Path, versions: dict) -> Path:
    sp = root / "opt" / "sp"
    wd = d / "wheels"
    wd.mkdir(exist_ok=True)
    plat = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"] + [
        a for p in PLATFORMS + ("any",) for a in ("--platform", p)]
    reqs = [f"{n}=={v}" if v else n for n, v in versions.items()]
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *plat, "-d", str(wd), *reqs],
         "downloading the aarch64 wheels (host pip)")
    shutil.rmtree(sp, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *plat, "--target", str(sp),
          *[str(w) for w in sorted(wd.glob("*.whl"))]], "installing the aarch64 wheels into the root")
    return sp


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
    """An artifact's reference I/O (.reference.npz) run on the emulated CPU's aarch64 kernels by the same
    self-contained runner an ssh device gets, judged per task with the export's tolerance; and the same frames
    through the x86 kernels here, compared output by output (bit-identical, max and mean difference, argmax)."""
    import numpy as np

    from edgehydra.exporters import reference_runner
    from edgehydra.exporters.parity import Tolerance, parity, within
    from edgehydra.exporters.reference_io import decode, read_expected, reference_path, run_runner_remote
    from edgehydra.exporters.runtime import read_manifest

    artifact = Path(artifact)
    if artifact.suffix not in (".tflite", ".onnx"):
        raise BadInputError(f"{artifact.name}: the emulated root holds LiteRT and onnxruntime; a .pte needs "
                            f"ExecuTorch's aarch64 build, which links torch's (a CUDA build on the index): check the "
                            f"run's .tflite / .onnx, whose XNNPACK and MLAS kernels are the ARM paths")
    man = read_manifest(artifact)
    ref = reference_path(artifact)
    if not ref.is_file():
        raise BadInputError(f"{artifact.name} has no reference I/O ({ref.name}); export it again")
    tasks = tuple(man["outputs"])
    arm = decode(run_runner_remote(transport, reference_runner, [artifact, ref], "python3",
                                   "the emulated root's onnxruntime / ai-edge-litert"))
    x86 = reference_runner.run_reference(str(artifact), str(ref))
    expected = read_expected(ref)

    def cat(got):
        return [np.concatenate([np.asarray(r[k], np.float32).reshape(expected[k][i:i + 1].shape)
                                for i, r in enumerate(got)]) for k in range(len(tasks))]

    a, x = cat(arm), cat(x86)
    par = parity(expected, a, tasks)
    fails = within(par, Tolerance(**man["verification"]["tolerance"]))
    vs = {}
    for k, t in enumerate(tasks):
        d = np.abs(a[k] - x[k])
        vs[t] = {"bit_identical": bool(np.array_equal(a[k], x[k])), "max_abs": float(d.max()), "mean_abs": float(d.mean())}
        if t == "segm":
            vs[t]["argmax_agreement"] = float((a[k].argmax(1) == x[k].argmax(1)).mean())
    return {"device": transport.name, "accelerator": transport.accelerator, "cases": len(expected[0]), "parity": par,
            "tolerance": man["verification"]["tolerance"], "failures": fails, "pass": not fails, "vs_x86": vs,
            "runner": "exporters/reference_runner.py under QEMU user mode", "qemu": transport.st.get("qemu_version")}


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
                                       f"(onnxruntime is stripped); kernels named for .tflite (LiteRT's XNNPACK) only"}
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
