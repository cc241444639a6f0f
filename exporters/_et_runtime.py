"""ExecuTorch's runtime in this process, its threadpool started once and quietly (the .pte target, its
bundled-program check and the per-op profiler share it)."""
from __future__ import annotations

from .target import muted_native_stderr

_THREADPOOL_STARTED = False


def runtime(threads: int | None = None):
    """executorch.runtime's Runtime, its threadpool started once with native stderr muted: starting
    it on an x86 host logs five lines about ARM-only sysfs files (cpuinfo_utils.cpp: image_version,
    midr_el1) into the output of every command that runs a .pte. ``threads`` sizes that process-wide
    pool, which XNNPACK runs on and which starts with one thread per core."""
    global _THREADPOOL_STARTED
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    if not _THREADPOOL_STARTED:
        with muted_native_stderr():
            portable_lib._threadpool_get_thread_count()
        _THREADPOOL_STARTED = True
    if threads is not None and portable_lib._threadpool_get_thread_count() != threads:
        # "unsafe" only while a method executes, which callers sizing the pool are not doing
        portable_lib._unsafe_reset_threadpool(threads)
    return Runtime.get()


def runtime_threads() -> int:
    """Threads in ExecuTorch's pool (started quietly if it was not)."""
    from executorch.extension.pybindings import portable_lib

    runtime()
    return portable_lib._threadpool_get_thread_count()
