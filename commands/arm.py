"""`edgehydra arm setup`: the emulated aarch64 Python that checks artifacts on ARM kernels (devices/arm.py)."""
from __future__ import annotations

import time
from pathlib import Path

import click

from ._common import console
from ._progress import progress_bar


@click.group()
def arm():
    """ARM kernels without an ARM device: an emulated aarch64 Python with this host's runtime versions."""


@arm.command()
@click.option("--dir", "d", type=click.Path(file_okay=False), default=None,
              help="Where to build it (default: $EDGEHYDRA_ARM_DIR or ~/.cache/edgehydra/arm).")
@click.option("--force", is_flag=True, help="Build again even if a complete one with the same versions is there.")
def setup(d, force):
    """Build the emulated root once: QEMU 10 (static), Debian's arm64 Python 3.11, the aarch64 wheels of this host's
    onnxruntime / LiteRT / numpy, and of ExecuTorch with torch (its CUDA libraries stubbed) where the host has it.
    No root, binfmt_misc or chroot; apt runs with a private configuration.

    Then: `edgehydra bench --artifact A.pte --bundle --device qemu:cortex-a76` (a .pte, .tflite or .onnx; CPUs
    cortex-a72, -a55, -a76, -a710, max): the artifact's reference I/O on that CPU's kernels, judged with the
    export's tolerance.
    """
    from edgehydra.devices.arm import CPUS
    from edgehydra.devices.arm_setup import setup as run_setup

    t = time.perf_counter()
    with progress_bar() as p:
        st = run_setup(Path(d) if d else None, progress=p, force=force)
    c = console()
    how = "already there (same versions)" if st.get("reused") else f"built in {time.perf_counter() - t:.0f} s"
    c.print(f"emulated aarch64 root in {st['dir']}: {how}, {st['disk_mb']:.0f} MB", soft_wrap=True)
    c.print(f"  {st['qemu_version']}; {st['self_check']}", soft_wrap=True)
    c.print(f"  devices: {', '.join('qemu:' + k for k in CPUS)}", soft_wrap=True)
