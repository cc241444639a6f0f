"""Detect this host's CPU and fill the host_cpu profile's peaks from what it really has."""
from __future__ import annotations

import os
import platform
from dataclasses import replace


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_mhz() -> float:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("cpu mhz"):
                    return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return 2400.0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fma_ports(flags: set[str]) -> int:
    """AVX-512 FMA units per core. Sapphire Rapids and later Xeons (the ones with AMX) have two; older
    and client AVX-512 parts vary (one on many Skylake/Ice Lake SKUs), so one is assumed there. One
    port is provably too few on this project's AMX host: its fp32 .pte ran 0.82 GFLOP in 6.7 ms
    (122 GFLOP/s) against a one-port peak of 134 GFLOP/s, so a fit needed an efficiency above 1."""
    return 2 if "avx512f" in flags and ("amx_tile" in flags or "avx512_fp16" in flags) else 1


def detect_host(p):
    """Peaks from core count x clock x SIMD width x FMA ports; the efficiency factors (calibrated
    against measurements) absorb the rest."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ghz = cpu_mhz() / 1000
    flags = cpu_flags()
    if "avx512f" in flags:
        f32_lanes = 16
    elif "avx2" in flags:
        f32_lanes = 8
    else:
        f32_lanes = 4
    # int8 MACs per FMA-lane-slot: VNNI (vpdpbusd) does 4 int8 MACs per 32-bit lane
    i8_per_lane = 4 if ("avx512_vnni" in flags or "avx_vnni" in flags) else 2
    ports = fma_ports(flags)
    fp32 = cores * ghz * 1e9 * f32_lanes * ports * 2 / 1e12
    int8 = cores * ghz * 1e9 * f32_lanes * i8_per_lane * ports * 2 / 1e12
    return replace(p, threads=cores, fp32_tflops=round(fp32, 4), fp16_tflops=round(fp32, 4), int8_tops=round(int8, 4),
                   description=f"{cpu_model()} ({cores} cores @ {ghz:.2f} GHz), detected")
