"""Detect this host's CPU and fill the host_cpu profile's peaks from what it really has.

    peak fp32 FLOP/s = cores x clock x (fp32 FMA lanes per cycle per core) x 2
    peak int8 OP/s   = cores x clock x (fp32 FMA lanes per cycle per core) x (int8 MACs per 32-bit lane) x 2

The FMA lanes per cycle depend on the microarchitecture, not only on the ISA flags: how many FMA
pipes a core has and how wide they are. Where /proc/cpuinfo pins the microarchitecture (vendor,
family, model) the figure is "detected"; where it does not (a hypervisor hides the model, an Intel
AVX-512 part whose SKU decides between one and two FMA ports) it is "assumed", and the profile's
description says so.
"""
from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class CpuInfo:
    vendor: str  # GenuineIntel, AuthenticAMD, ...
    model_name: str
    family: int | None
    model: int | None
    mhz: float | None
    flags: frozenset[str]


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor block of a /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        k, _, v = line.partition(":")
        fields.setdefault(k.strip().lower(), v.strip())

    def num(key, conv=int):
        try:
            return conv(fields[key])
        except (KeyError, ValueError):
            return None

    return CpuInfo(vendor=fields.get("vendor_id", ""), model_name=fields.get("model name", ""),
                   family=num("cpu family"), model=num("model"), mhz=num("cpu mhz", float),
                   flags=frozenset(fields.get("flags", "").split()))


def read_cpuinfo(path: str = "/proc/cpuinfo") -> CpuInfo:
    try:
        with open(path) as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return CpuInfo("", platform.processor() or platform.machine(), None, None, None, frozenset())


@dataclass(frozen=True)
class Microarch:
    name: str
    fma_pipes: int  # FMA-capable vector pipes per core
    pipe_bits: int  # width of each pipe
    vector_bits: int  # widest vector the ISA offers (a 512-bit op on 2x256 pipes is "double-pumped")
    int8_per_lane: int  # int8 MACs per 32-bit lane per FMA-pipe slot
    how: str  # "detected" | "assumed"
    why: str = ""

    @property
    def fp32_fma_lanes(self) -> int:
        """fp32 FMAs per cycle per core: pipes x pipe width, capped by what one instruction carries."""
        return self.fma_pipes * self.pipe_bits // 32


def _int8_per_lane(flags) -> tuple[int, str]:
    # VNNI's vpdpbusd multiplies 4 u8 x s8 pairs per 32-bit lane and accumulates them in int32 in one
    # instruction on the FMA pipes: 4 MACs per lane slot. Without it the sequence is vpmaddubsw (4 pairs
    # into two int16 sums) + vpmaddwd (into one int32) + vpaddd: 3 instructions for 4 MACs per lane on the
    # same pipes, ~1.3 MACs per lane slot at best; XNNPACK's AVX2 QS8 GEMMs widen to int16 and use
    # vpmaddwd (2 MACs per lane per instruction), so 2 is the figure used without VNNI.
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return 4, "VNNI vpdpbusd: 4 int8 MACs per 32-bit lane"
    return 2, "no VNNI: vpmaddwd on int16-widened int8, 2 MACs per 32-bit lane"


# AMD Zen generations by (family, model range). Sources: AMD's software optimisation guides for family
# 17h (Zen/Zen 2), 19h (Zen 3/Zen 4) and 1Ah (Zen 5). Zen/Zen+: two 128-bit FMA pipes (a 256-bit op takes
# both). Zen 2/3: two 256-bit FMA pipes. Zen 4: two 256-bit FMA pipes, AVX-512 executed as two halves.
# Zen 5 (desktop/server): two 512-bit FMA pipes (mobile Zen 5 keeps 256-bit datapaths).
_ZEN = [
    (0x17, range(0x00, 0x30), "Zen/Zen+", 2, 128),
    (0x17, range(0x30, 0x100), "Zen 2", 2, 256),
    (0x19, range(0x00, 0x10), "Zen 3", 2, 256),
    (0x19, range(0x20, 0x60), "Zen 3", 2, 256),
    (0x19, range(0x10, 0x20), "Zen 4", 2, 256),
    (0x19, range(0x60, 0x80), "Zen 4", 2, 256),
    (0x19, range(0xA0, 0xB0), "Zen 4", 2, 256),
    (0x1A, range(0x00, 0x100), "Zen 5", 2, 512),
]

# Intel family-6 models with AVX-512 and two 512-bit FMA ports on every SKU: Ice Lake-SP (0x6a, 0x6c),
# Sapphire/Emerald/Granite Rapids (0x8f, 0xcf, 0xad, 0xae). Skylake-SP/Cascade Lake/Cooper Lake (0x55)
# have two on Gold 6xxx/Platinum and one on Bronze/Silver/Gold 5xxx; client AVX-512 parts (Ice Lake
# 0x7d/0x7e, Tiger Lake 0x8c/0x8d, Rocket Lake 0xa7) have one.
_INTEL_TWO_PORTS = {0x6A: "Ice Lake-SP", 0x6C: "Ice Lake-SP", 0x8F: "Sapphire Rapids", 0xCF: "Emerald Rapids",
                    0xAD: "Granite Rapids", 0xAE: "Granite Rapids"}
_INTEL_ONE_PORT = {0x7D: "Ice Lake", 0x7E: "Ice Lake", 0x8C: "Tiger Lake", 0x8D: "Tiger Lake", 0xA7: "Rocket Lake"}


def microarch(cpu: CpuInfo) -> Microarch:
    f = cpu.flags
    i8, _ = _int8_per_lane(f)
    vec = 512 if "avx512f" in f else 256 if "avx2" in f or "avx" in f else 128
    if cpu.vendor == "AuthenticAMD" and cpu.family is not None and cpu.model is not None:
        for fam, models, name, pipes, bits in _ZEN:
            if cpu.family == fam and cpu.model in models:
                if name == "Zen 5" and vec < 512:  # mobile Zen 5: 256-bit datapaths, no AVX-512 exposed
                    bits = 256
                return Microarch(name, pipes, min(bits, vec), vec, i8, "detected", f"family {fam:#x} model {cpu.model:#x}")
        return Microarch("AMD (unknown generation)", 2, min(256, vec), vec, i8, "assumed",
                         f"family {cpu.family:#x} model {cpu.model:#x} not in the Zen table: two 256-bit FMA pipes assumed")
    if cpu.vendor == "GenuineIntel" and "avx512f" in f:
        if cpu.model in _INTEL_TWO_PORTS:
            return Microarch(_INTEL_TWO_PORTS[cpu.model], 2, 512, 512, i8, "detected", f"model {cpu.model:#x}")
        if cpu.model in _INTEL_ONE_PORT:
            return Microarch(_INTEL_ONE_PORT[cpu.model], 1, 512, 512, i8, "detected", f"model {cpu.model:#x}")
        if "amx_tile" in f or "avx512_fp16" in f:  # only Sapphire Rapids and later have these
            return Microarch("Xeon with AMX", 2, 512, 512, i8, "detected", "AMX/AVX512-FP16 flags")
        sku = re.search(r"(Platinum|Gold \d|Silver|Bronze)", cpu.model_name)
        if sku:
            two = sku.group(1) == "Platinum" or sku.group(1) == "Gold 6"
            return Microarch("Skylake-SP/Cascade Lake", 2 if two else 1, 512, 512, i8, "detected",
                             f"SKU class {sku.group(1)}")
        return Microarch("Intel AVX-512", 1, 512, 512, i8, "assumed",
                         "AVX-512 SKU not identifiable (one or two FMA ports): one assumed")
    if cpu.vendor == "GenuineIntel" and "avx2" in f and "fma" in f:
        # Haswell through Comet Lake and the client cores since Alder Lake: two 256-bit FMA ports (p0, p1).
        return Microarch("Intel AVX2", 2, 256, 256, i8, "detected", "AVX2 + FMA: ports 0 and 1")
    if "avx2" in f and "fma" in f:
        return Microarch("x86 AVX2", 2, 256, 256, i8, "assumed", f"vendor {cpu.vendor or 'unknown'}: two FMA pipes assumed")
    if platform.machine() in ("aarch64", "arm64"):
        # NEON: 128-bit; most Cortex-A7x/X cores have 2-4 such pipes; sdot (dotprod) is the VNNI analogue
        return Microarch("Arm NEON", 2, 128, 128, 4 if "asimddp" in f else 2, "assumed", "two 128-bit NEON pipes assumed")
    return Microarch("unknown", 1, min(vec, 128), vec, i8, "assumed", "no AVX2/FMA flags: one 128-bit pipe assumed")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def peaks(cpu: CpuInfo, cores: int) -> dict:
    ua = microarch(cpu)
    ghz = (cpu.mhz or 2400.0) / 1000
    fp32 = cores * ghz * 1e9 * ua.fp32_fma_lanes * 2 / 1e12
    return {"microarch": ua, "ghz": ghz, "clock_how": "detected" if cpu.mhz else "assumed",
            "fp32_tflops": round(fp32, 4), "int8_tops": round(fp32 * ua.int8_per_lane, 4)}


def isa_summary(flags) -> str:
    """The SIMD features that pick kernels, e.g. 'AVX2 FMA' or 'AVX-512 VNNI AMX'."""
    names = [("avx512f", "AVX-512"), ("avx2", "AVX2"), ("fma", "FMA"), ("avx512_vnni", "VNNI"),
             ("avx_vnni", "AVX-VNNI"), ("avx512_bf16", "BF16"), ("avx512_fp16", "FP16"), ("amx_tile", "AMX"),
             ("asimddp", "dotprod")]
    got = [n for k, n in names if k in flags]
    if "AVX-512" in got and "AVX2" in got:
        got.remove("AVX2")
    return " ".join(got) or "no AVX2"


def describe(cpu: CpuInfo, cores: int) -> str:
    pk = peaks(cpu, cores)
    ua = pk["microarch"]
    pumped = f" ({ua.vector_bits}-bit ops split in halves)" if ua.vector_bits > ua.pipe_bits else ""
    return (f"{cpu.model_name or 'unknown CPU'} [{ua.name}, {isa_summary(cpu.flags)}] ({cores} cores @ "
            f"{pk['ghz']:.2f} GHz, {ua.fma_pipes}x{ua.pipe_bits}-bit FMA{pumped}, {ua.how}"
            + (f": {ua.why}" if ua.how == "assumed" else "") + ")")


def detect_host(p, cpu: CpuInfo | None = None, cores: int | None = None):
    """Peaks from cores x clock x FMA lanes (x int8 MACs per lane); the efficiency factors (calibrated
    against measurements) absorb the rest."""
    cpu = cpu or read_cpuinfo()
    cores = cores or _cores()
    pk = peaks(cpu, cores)
    return replace(p, threads=cores, fp32_tflops=pk["fp32_tflops"], fp16_tflops=pk["fp32_tflops"],
                   int8_tops=pk["int8_tops"], description=describe(cpu, cores))



def this_host() -> str:
    """This machine in one line (CPU model, microarchitecture, cores), what every measurement record names."""
    return describe(read_cpuinfo(), os.cpu_count() or 1)
