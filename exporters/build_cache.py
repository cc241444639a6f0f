"""A content-addressed cache of lowered ExecuTorch programs: a second lowering of exactly the same program is a
file read.

Why: an ExecuTorch XNNPACK lowering re-interprets the whole graph with fake tensors in each of its ~100 passes, so it
costs by the node, not by the model: 30-70 s for the 579-node int8 tiny model on 2 AMD EPYC Zen 3 cores. One run
lowers the same program more than once: the mixed-precision search builds the FP32 and candidate programs to time
them, `export` and `sensitivity --apply` build the same ones again to ship them.

The key is the exported program itself (graph code, signature, module paths, every weight and constant byte), the
precision, the delegate and the torch and executorch versions: lowering is deterministic (the same program gave the
same .pte bytes twice, tests/test_exporters.py checks it), so a hit is exactly what lowering would have written. Each
entry carries the sha256 of its bytes; a damaged entry is built again and replaced.

    EDGEHYDRA_CACHE=DIR   where entries live (default ~/.cache/edgehydra/lowered, or under $XDG_CACHE_HOME)
    EDGEHYDRA_CACHE=off   no cache: every build lowers
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from edgehydra._io import atomic_write_bytes, atomic_write_json

ENV = "EDGEHYDRA_CACHE"
# least recently used entries go beyond this: a hydranet_nyud .pte is ~3 MB int8 / 12 MB fp32
MAX_BYTES = 2 << 30
_warned = False


def cache_dir() -> Path | None:
    """The cache folder, or None where ``EDGEHYDRA_CACHE`` is off."""
    v = os.environ.get(ENV)
    if v is not None and v.strip().lower() in ("", "off", "0", "no", "none"):
        return None
    if v:
        return Path(v).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgehydra" / "lowered"


def get(key: str, suffix: str) -> tuple[bytes, dict] | None:
    """The bytes and facts stored under ``key``, or None (no cache, no entry, or a damaged one)."""
    d = cache_dir()
    if d is None:
        return None
    meta_p, data_p = d / f"{key}.json", d / f"{key}{suffix}"
    try:
        meta = json.loads(meta_p.read_text())
        data = data_p.read_bytes()
    except (OSError, ValueError):
        return None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        return None  # damaged or half-replaced: built again, and put() replaces it
    try:
        os.utime(meta_p)  # recently used: kept when the cache is pruned
    except OSError:
        pass
    return data, meta.get("facts", {})


def put(key: str, suffix: str, data: bytes, facts: dict, what: dict) -> None:
    """Store ``data`` and its ``facts`` under ``key`` (the bytes first, then the record naming their sha256)."""
    global _warned
    d = cache_dir()
    if d is None:
        return
    try:
        atomic_write_bytes(d / f"{key}{suffix}", data)
        atomic_write_json(d / f"{key}.json", {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
                                              "facts": facts, "what": what})
        _prune(d)
    except OSError as e:  # the build stands; only the next one will not be faster
        if not _warned:
            _warned = True
            warnings.warn(f"lowering cache {d} not written ({e}); set {ENV}=off or a writable folder", stacklevel=2)


def _prune(d: Path) -> None:
    """Least recently used entries out until the folder holds at most MAX_BYTES (another process may be pruning or
    writing at the same time: a file gone under us is no error)."""
    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return 0

    def used(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    entries = [list(d.glob(m.stem + ".*")) for m in sorted(d.glob("*.json"), key=used)]  # each record and its bytes
    total = sum(size(p) for ps in entries for p in ps)
    for ps in entries:
        if total <= MAX_BYTES:
            break
        for p in ps:
            total -= size(p)
            p.unlink(missing_ok=True)
