"""The docs site builds with `mkdocs build --strict`: a broken link or a page left out of the nav fails it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, NO_MKDOCS_2_WARNING="1")


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, env=ENV, timeout=300)


def test_docs_site_builds_strict(tmp_path):
    r = _build(ROOT, tmp_path / "site")
    assert r.returncode == 0, r.stdout + r.stderr
    for page in ("index", "pipeline", "quantise", "export", "devices", "mixed-precision", "trust", "protocol",
                 "robot", "RESULTS"):
        assert (tmp_path / "site" / page / "index.html").is_file() or (tmp_path / "site" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "docs" / "robot.md").write_text("# Robot\n\nSee [the stream page](stream.md).\n")
    r = _build(tmp_path, tmp_path / "site")
    assert r.returncode != 0 and "stream.md" in r.stdout + r.stderr, r.stdout + r.stderr
