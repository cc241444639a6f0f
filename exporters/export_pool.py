"""(target, precision) pairs exported in worker processes (``ExportSettings.jobs``).

ExecuTorch's lowering and the Core ML, LiteRT and ONNX converters are single-threaded Python: on a 2-core host
one pair at a time leaves a core idle for most of an export. Each worker opens the source once (the same
``_Exporter`` a one-process export uses) and exports the pairs it is handed; the parent collects the results in
plan order and writes the manifest. Workers start by ``spawn`` (a forked torch with live OpenMP threads can
hang) and split the host's cores between them. A worker that dies (a converter's segfault, the OOM killer)
fails the pairs it had not returned, each row saying so; the other pairs' results stand.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from .target import ExportResult, remove_temporaries

_EXPORTER = None  # this worker's opened source


def _start(opener, args: tuple, threads: int) -> None:
    """``opener(*args)``: the parent's exporter class (pickled by reference, so this module imports nothing of
    the export stage that imports it)."""
    global _EXPORTER
    import torch

    torch.set_num_threads(threads)
    _EXPORTER = opener(*args)


def _export(target: str, precision: str) -> ExportResult:
    return _EXPORTER.export(target, precision)


def export_in_pool(parent, source, pairs: list[tuple[str, str]], done: Callable[[ExportResult], None]) -> list[ExportResult]:
    """Each pair's result in ``pairs`` order, exported by ``parent.settings.jobs`` workers that each open
    ``source`` as ``parent`` (this process's ``_Exporter``) did; ``done(result)`` runs here as each pair finishes. A
    bad input or a missing backend asked for by name raises here, as a one-process export raises it."""
    workers = min(parent.settings.jobs, len(pairs))
    threads = max(1, (os.cpu_count() or 1) // workers)
    results: dict[int, ExportResult] = {}
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                               initargs=(type(parent), (parent.out, source, parent.settings, parent.strict), threads))
    try:
        futures = {pool.submit(_export, t, p): i for i, (t, p) in enumerate(pairs)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except BrokenProcessPool as e:
                t, p = pairs[i]
                remove_temporaries(parent.final_path(t, p))  # a killed worker's half-written artifact
                results[i] = ExportResult(t, p, "failed", None, {"variant": parent.variant_of(p) or None},
                                          f"the export worker died before {t} {p} finished ({e})")
            done(results[i])
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [results[i] for i in range(len(pairs))]
