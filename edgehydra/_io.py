"""Atomic file writes: nothing half-written ever sits under a final name."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``final``; on success rename it into place (file or folder).

    The temporary lives in the same directory so ``os.replace`` is atomic on POSIX. On any
    exception (or a kill: the temp name is never the final one) the partial output is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The temporary keeps the final suffix (writers such as torch.export.save or coremltools check it).
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part" + (suffix or final.suffix), dir=final.parent)
    os.close(fd)
    os.unlink(tmp)  # the writer creates it (some writers want a folder, e.g. .mlpackage)
    tmp = Path(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"writer produced nothing at {tmp}")
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(final: str | os.PathLike, obj) -> None:
    atomic_write_bytes(final, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder (e.g. .mlpackage) as the hash of its sorted files."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def path_size(path: str | os.PathLike) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def read_json(path: Path, kind: str = "") -> dict:
    """A JSON record, or a one-line error naming the file (missing, or not valid JSON; ``kind`` names the record,
    e.g. "measurement", in the message for a damaged one)."""
    import json

    from .errors import BadInputError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInputError(f"not found: {path}") from None
    except json.JSONDecodeError as e:
        if kind:
            raise BadInputError(f"{path}: damaged {kind} record ({e.msg} at line {e.lineno}); remove it or "
                                "measure again") from None
        raise BadInputError(f"{path}: invalid JSON ({e})") from None


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """The one figure writer: ``fig`` (matplotlib) as a PNG at ``path``, written atomically, then closed.
    ``savefig_kwargs`` default to dpi=80 (panels and plots of a report are read on screen)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, **{"dpi": 80, "format": "png", **savefig_kwargs})
    finally:
        plt.close(fig)
    return path
