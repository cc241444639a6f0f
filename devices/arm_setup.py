"""`edgehydra arm setup`: the emulated aarch64 Python that devices/arm.py runs artifacts in.

``edgehydra arm setup`` builds, in one folder and without root, binfmt_misc or chroot:

- QEMU 10's static ``qemu-aarch64`` from Debian bookworm-backports (bookworm's QEMU 7.2 does not emulate
  /proc/cpuinfo for aarch64, and every runtime's cpuinfo then segfaults: ../shared/reference/TOOLCHAIN.md);
- an arm64 Python 3.11 from Debian bookworm's arm64 packages, unpacked (``dpkg-deb -x``), never installed:
  ``qemu-aarch64 -L ROOT ROOT/usr/bin/python3.11`` runs it with ROOT as its library prefix;
- the host's runtime versions as aarch64 wheels (numpy, onnxruntime, ai-edge-litert and what they import),
  fetched by the host's pip (pip inside the emulated root cannot reach the index) into ROOT/opt/sp;
- where the host has ExecuTorch: its aarch64 wheel and torch's, which ExecuTorch's Python runtime links.
  torch's aarch64 wheel on the index is the CUDA 13 build (libtorch_cpu.so itself needs libcudart.so.13):
  it is installed without its nvidia-* dependencies, and each CUDA library it names gets a stub built here
  (every function returns 0, no device) by zig's C cross-compiler (the ziglang wheel: no root, no apt).

apt runs with a private configuration (its own sources list, lists, cache and dpkg status in the folder), so
nothing of the machine's own configuration changes. ``QEMU_CPU`` picks the kernels each runtime dispatches to.
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
from edgehydra.errors import EdgeHydraError

SCHEMA = 2  # 2: ExecuTorch and torch's aarch64 wheels with the CUDA stubs
DEBIAN = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
ROOT_PACKAGES = ("python3.11", "libatomic1", "libstdc++6", "libgomp1")
# what the runners import, at the host's versions where the host has them (the same runtime on both sides)
WHEELS = ("numpy", "onnxruntime", "ai-edge-litert", "flatbuffers", "protobuf", "ml_dtypes", "backports.strenum",
          "tqdm", "typing-extensions", "packaging")
# ExecuTorch's Python runtime: torch (the C++ libraries it links) and what `import executorch.runtime` imports
ET_WHEELS = ("executorch", "torch", "sympy", "mpmath", "filelock", "networkx", "jinja2", "markupsafe", "fsspec",
             "pyyaml", "ruamel.yaml", "tabulate")
# the CUDA libraries torch's aarch64 build names (NEEDED) whose stubs are built; libz and libatomic are Debian's
CUDA_SONAMES = ("libcu", "libnccl", "libnvrtc", "libnvshmem")
# symbols torch references without a version, by the library that owns them (prefix -> soname)
UNVERSIONED_OWNERS = (("cusparseLt", "libcusparseLt.so.0"), ("cuFile", "libcufile.so.0"), ("cudnn", "libcudnn.so.9"),
                      ("nccl", "libnccl.so.2"), ("cu", "libcuda.so.1"))
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64")


def default_dir() -> Path:
    return Path(os.environ.get("EDGEHYDRA_ARM_DIR") or Path.home() / ".cache" / "edgehydra" / "arm")


class ArmSetupError(EdgeHydraError):
    exit_code = 1

    def __init__(self, msg: str, host: bool = False):
        super().__init__(msg)
        # True where this host cannot build the root (a tool, its architecture, Debian's keyring, a mirror or package
        # index out of reach); every other failure is the setup's own, which the tests must see fail, not skip
        self.host = host


def _version(name: str) -> str | None:
    try:  # without a local label: the host's torch is 2.13.0+cpu, the aarch64 wheel of that release 2.13.0
        return metadata.version(name).split("+")[0]
    except metadata.PackageNotFoundError:
        return None  # the newest aarch64 wheel


def _wanted() -> dict:
    wheels = {n: _version(n) for n in WHEELS}
    if _version("executorch"):  # the host's .pte files are checked by the same ExecuTorch build
        wheels.update({n: _version(n) for n in ET_WHEELS})
    return {"schema": SCHEMA, "packages": list(ROOT_PACKAGES), "wheels": wheels}


def has_executorch(st: dict) -> bool:
    return bool(st.get("wheels", {}).get("executorch")) and bool(st.get("cuda_stubs"))


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


def _run(argv: list[str], what: str, timeout: float = 900, fetch: bool = False) -> str:
    """``argv``'s stdout; a failure raises ArmSetupError, marked the host's (``host``) where ``fetch`` says the step
    reaches a mirror or an index."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ArmSetupError(f"arm setup: {argv[0]} not found (it needs apt-get and dpkg-deb: a Debian or Ubuntu host)",
                            host=True) from None
    except subprocess.TimeoutExpired:
        raise ArmSetupError(f"arm setup: {what} timed out after {timeout:.0f} s", host=fetch) from None
    if p.returncode != 0:
        last = (p.stderr or p.stdout).strip().splitlines()
        raise ArmSetupError(f"arm setup: {what} failed: {last[-1] if last else f'exit {p.returncode}'}", host=fetch)
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
        raise ArmSetupError(f"arm setup: this host is {platform.machine()}; the emulated root is built for x86-64 hosts",
                            host=True)
    if not Path(KEYRING).is_file():
        raise ArmSetupError(f"arm setup: Debian's archive keyring is missing ({KEYRING}); install debian-archive-keyring",
                            host=True)
    et = bool(want["wheels"].get("executorch"))
    steps = ("qemu", "arm64 python", "wheels") + (("cuda stubs",) if et else ()) + ("self-check",)
    task = progress.add_task("arm setup", total=len(steps)) if progress else None
    d.mkdir(parents=True, exist_ok=True)
    (d / "state.json").unlink(missing_ok=True)  # incomplete until the self-check passes

    def done(info=""):
        if progress:
            progress.update(task, advance=1, info=info)

    qemu = _qemu(d)
    qemu_version = _run([str(qemu), "--version"], "qemu --version").splitlines()[0]
    done(qemu_version)
    root = _root(d)
    done(f"{root}")
    sp = _wheels(d, root, want["wheels"])
    done(f"{len(list((d / 'wheels').glob('*.whl')))} wheels")
    stubs = []
    if et:
        stubs = cuda_stubs(d, root, sp)
        done(f"{len(stubs)} stub libraries")
    probe = ("import numpy, onnxruntime, ai_edge_litert.interpreter, platform; print(platform.machine(), "
             "'onnxruntime', onnxruntime.__version__, 'numpy', numpy.__version__)")
    if et:  # importing torch + executorch emulated takes 50-100 s (TOOLCHAIN.md)
        probe += ("; import torch, executorch.runtime as r; b = r.Runtime.get().backend_registry.registered_backend_names;"
                  " assert 'XnnpackBackend' in b, b; print('executorch backends', ','.join(b), "
                  "'torch', torch.__version__, 'cuda', torch.cuda.is_available())")
    check = _run([str(qemu), "-L", str(root), "-E", f"PYTHONPATH={sp}", str(root / "usr/bin/python3.11"), "-c", probe],
                 "self-check (import the runtimes emulated)")
    check = " | ".join(ln.strip() for ln in check.strip().splitlines() if ln.startswith(("aarch64", "executorch")))
    done(check)
    rec = dict(want, complete=True, dir=str(d), qemu=str(qemu), root=str(root), site_packages=str(sp),
               qemu_version=qemu_version,
               self_check=check, cuda_stubs=stubs, disk_mb=round(_du(d) / 2**20, 1))
    atomic_write_json(d / "state.json", rec)
    return rec


def _du(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def _download(d: Path, arch: str, suite: str, packages: list[str], what: str) -> Path:
    """Debian ``packages`` (and what they depend on) of ``arch`` from ``suite``, downloaded, not installed:
    the folder of .deb files."""
    apt = _apt(d, arch, suite)
    _run(apt + ["update"], f"apt-get update ({suite} {arch})", fetch=True)
    deb_dir = d / "debs"
    deb_dir.mkdir(exist_ok=True)
    _run(apt + ["-o", f"Dir::Cache::Archives={deb_dir}", "install", "--download-only", "--no-install-recommends",
                *packages], f"downloading {what} from {suite}", fetch=True)
    return deb_dir


def _qemu(d: Path) -> Path:
    out = d / "qemu-aarch64"
    if out.is_file():
        return out
    deb_dir = _download(d / "apt-amd64", "amd64", "bookworm-backports", ["qemu-user/bookworm-backports"], "qemu-user")
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
    deb_dir = _download(d / "apt-arm64", "arm64", "bookworm", list(ROOT_PACKAGES), "the arm64 Python packages")
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
    # Only this setup's wheels: the folder is installed whole, and an earlier setup's wheels (the host's packaging
    # 26.2 before an upgrade to 26.4) beside this one's made pip refuse the install (ResolutionImpossible: two
    # versions of one package) on every setup after a host upgrade. pip's own cache serves a wheel fetched before.
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir()
    plat = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"] + [
        a for p in PLATFORMS + ("any",) for a in ("--platform", p)]
    reqs = [f"{n}=={v}" if v else n for n, v in versions.items()]
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *plat, "-d", str(wd), *reqs],
         "downloading the aarch64 wheels (host pip)", fetch=True)
    shutil.rmtree(sp, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *plat, "--target", str(sp),
          *[str(w) for w in sorted(wd.glob("*.whl"))]], "installing the aarch64 wheels into the root")
    return sp


def _dynsyms(lib: Path) -> list[list[str]]:
    out = subprocess.run(["readelf", "--dyn-syms", "-W", str(lib)], capture_output=True, text=True).stdout
    return [f for f in (ln.split() for ln in out.splitlines()) if len(f) >= 8 and f[0].endswith(":")]


def _undefined(lib: Path) -> tuple[set, dict, set, set]:
    """(NEEDED sonames, {file: {(symbol, version)}} of versioned undefined symbols, unversioned undefined symbols,
    the symbols it defines)."""
    import re

    dyn = subprocess.run(["readelf", "-dW", str(lib)], capture_output=True, text=True).stdout
    ver_file, cur = {}, None  # version name -> the file that must define it (.gnu.version_r)
    for line in subprocess.run(["readelf", "-VW", str(lib)], capture_output=True, text=True).stdout.splitlines():
        if m := re.search(r"File: (\S+)", line):
            cur = m.group(1)
        elif (m := re.search(r"Name: (\S+)\s+Flags", line)) and cur:
            ver_file[m.group(1)] = cur
    versioned, loose, defined = {}, set(), set()
    for f in _dynsyms(lib):
        if f[6] != "UND":
            defined.add(f[7].split("@")[0])
            continue
        if f[4] == "WEAK":
            continue
        name, _, ver = f[7].partition("@")
        ver = ver.lstrip("@")
        if ver:
            versioned.setdefault(ver_file.get(ver, "?"), set()).add((name, ver))
        else:
            loose.add(name)
    return set(re.findall(r"\(NEEDED\).*\[(.+?)\]", dyn)), versioned, loose, defined


def cuda_stubs(d: Path, root: Path, sp: Path) -> list[str]:
    """Stub libraries for the CUDA sonames torch's aarch64 (CUDA) build links, written beside its libraries.

    Each defines what torch and ExecuTorch reference of that library: the versioned symbols under their
    version (the dynamic linker checks it) and the unversioned ones it resolves at load time; every function
    returns 0, cudaGetDeviceCount reports no device, so torch.cuda.is_available() is False. Built by zig's C
    compiler for aarch64-linux-gnu (glibc 2.17, the wheel's floor)."""
    libdir = sp / "torch" / "lib"
    libs = [p for p in [*libdir.glob("*.so*"), *(sp / "executorch").rglob("*.so")]
            if p.is_file() and not p.is_symlink() and not p.name.startswith(CUDA_SONAMES)]
    needed, versioned, loose, defined = set(), {}, set(), set()
    for lib in libs:
        n, v, lo, de = _undefined(lib)
        needed |= n
        loose |= lo
        defined |= de
        for so, syms in v.items():
            versioned.setdefault(so, set()).update(syms)
    system = {f[7].split("@")[0] for base in ("lib", "usr/lib") for lib in (root / base / "aarch64-linux-gnu").glob("*.so*")
              if lib.is_file() and not lib.is_symlink() for f in _dynsyms(lib) if f[6] != "UND"}
    loose -= defined | system
    zig = _zig(d)
    made = []
    for so in sorted(n for n in needed if n.startswith(CUDA_SONAMES)):
        syms = sorted(versioned.get(so, set()))
        syms += [(name, "") for name in sorted(loose) if _owner(name) == so]
        body = ["/* edgehydra arm setup: a stub; no CUDA device exists on an emulated CPU */"]
        body += ["int cudaGetDeviceCount(int *n) { if (n) *n = 0; return 0; }" if name == "cudaGetDeviceCount"
                 else f"int {name}(void) {{ return 0; }}" for name, _ in syms]
        src = d / "stubs" / f"{so}.c"
        src.parent.mkdir(exist_ok=True)
        src.write_text("\n".join(body) + "\n")
        args = [f"-Wl,-soname,{so}"]
        if vers := sorted({v for _, v in syms if v}):
            (d / "stubs" / f"{so}.map").write_text("".join(f"{v} {{ global: *; }};\n" for v in vers))
            args.append(f"-Wl,--version-script={d / 'stubs' / (so + '.map')}")
        _run(zig + ["cc", "-target", "aarch64-linux-gnu.2.17", "-shared", "-fPIC", "-O1", "-o", str(libdir / so),
                    *args, str(src)], f"building the {so} stub (zig cc)")
        made.append(so)
    if not made:
        raise ArmSetupError("arm setup: torch's aarch64 libraries name no CUDA library; is this the CUDA build?")
    return made


def _owner(symbol: str) -> str | None:
    for prefix, so in UNVERSIONED_OWNERS:
        if symbol.startswith(prefix) and (prefix != "cu" or symbol[2:3].isupper()):
            return so
    return None


def _zig(d: Path) -> list[str]:
    """zig's C compiler from the ziglang wheel, installed into the folder by the host's pip."""
    target = d / "zig"
    if not (target / "ziglang").is_dir():
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), "ziglang"],
             "installing ziglang (zig's C cross-compiler) with the host's pip", fetch=True)
    return ["env", f"PYTHONPATH={target}", sys.executable, "-m", "ziglang"]
