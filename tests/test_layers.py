"""The layers of the house hold, over all seven folders as they install (tests/import_layers.py)."""
from __future__ import annotations

import re

from tests.import_layers import ROOT, lint, package_dirs


def _project_files() -> int:
    return sum(len(list((ROOT / src).glob("*.py"))) for src in package_dirs().values())


def test_contracts_are_kept_over_the_installed_layout():
    r = lint()
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    n = int(re.search(r"Analyzed (\d+) files", out).group(1))
    assert n == _project_files(), f"lint-imports saw {n} files; the seven folders hold {_project_files()}"
    assert "2 kept, 0 broken" in out, out


def test_an_import_up_a_layer_inside_a_function_is_caught():
    """A lazy import is as much an edge as one at the top: calibration reaching for devices breaks the layers,
    and the cycle it closes (devices imports calibration) breaks the acyclic contract too."""
    planted = "def f():\n    from edgehydra.devices.check import check_device\n    return check_device\n"
    r = lint(extra={"edgehydra/calibration/_planted.py": planted})
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "edgehydra.calibration._planted -> edgehydra.devices.check" in out, out
