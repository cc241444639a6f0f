"""The import graph of the installed layout, checked by import-linter (the contracts in pyproject.toml).

The folders install under ``edgehydra.`` through setuptools' package-dir mapping, so grimp, which walks
one package's folder, sees only edgehydra/ in the source tree. This builds a temporary tree that mirrors
the installed layout (copies of the .py files, nothing else) and runs ``lint-imports`` over it; imports
inside functions count as much as those at the top of a file (grimp reads both).

    python tests/import_layers.py        # the same check by hand
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, str]:
    """{installed package: source folder}, as pyproject.toml maps them."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return cfg["tool"]["setuptools"]["package-dir"]


def mirror(dest: Path) -> Path:
    """Copy every mapped folder's .py files to where the package sits once installed."""
    for pkg, src in package_dirs().items():
        target = dest.joinpath(*pkg.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for f in (ROOT / src).glob("*.py"):
            shutil.copy2(f, target / f.name)
    return dest


def lint(verbose: bool = False, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``lint-imports`` over the mirrored tree; ``extra``: {installed-relative path: source} added to it first
    (the tests plant a violation to see the check catch it)."""
    with tempfile.TemporaryDirectory() as d:
        mirror(Path(d))
        for rel, text in (extra or {}).items():
            Path(d, rel).write_text(text)
        shutil.copy2(ROOT / "pyproject.toml", Path(d) / "pyproject.toml")
        env = dict(os.environ, PYTHONPATH=d)
        # the script pip installed beside this interpreter (a pyenv shim for it exists only after a rehash)
        exe = Path(sys.executable).with_name("lint-imports")
        exe = str(exe) if exe.is_file() else (shutil.which("lint-imports") or "lint-imports")
        return subprocess.run([exe, "--no-cache"] + (["--verbose"] if verbose else []), cwd=d, env=env,
                              capture_output=True, text=True)


if __name__ == "__main__":
    r = lint("-v" in sys.argv)
    print(r.stdout + r.stderr)
    sys.exit(r.returncode)
