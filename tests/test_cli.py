import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgehydra.commands import cli

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_commands():
    r = run("--help")
    assert r.exit_code == 0
    for c in ("train", "ptq", "qat", "export", "check", "demo", "doctor", "info"):
        assert c in r.output


def test_doctor_names_backends():
    r = run("doctor", "--json")
    assert r.exit_code == 0
    rows = {b["package"]: b for b in json.loads(r.output)["backends"]}
    assert rows["torch"]["version"].startswith("2.13.0")
    assert "Core ML" in rows["coremltools"]["enables"]
    r = run("doctor")
    assert "coremltools" in r.output


def test_info_json_and_table():
    r = run("info", "--model", "hydranet_nyud", "--size", "480x640", "--json")
    s = json.loads(r.output)
    assert s["params"] == 3_070_057 and s["macs"] == 5_940_288_000
    r = run("info", "--model", "hydranet_tiny")
    assert r.exit_code == 0 and "heaviest" in r.output


@pytest.mark.parametrize("args,code,msg", [
    (["info", "--model", "nope"], 2, "unknown model"),
    (["info", "--size", "12x40"], 2, "at least 32"),
    (["info", "--size", "abc"], 2, "not HxW"),
    (["info", "--checkpoint", "/nonexistent.pt"], 2, "checkpoint not found"),
])
def test_bad_input_one_line(args, code, msg):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == code, r.output
    assert msg in r.output
    assert "Traceback" not in r.output


def test_launcher_matches_entry_point():
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--version"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "edgehydra" in r.stdout


def test_wheel_contents(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    import zipfile

    whl = next(tmp_path.glob("edgehydra-*.whl"))
    names = set(zipfile.ZipFile(whl).namelist())
    for need in ("edgehydra/__init__.py", "edgehydra/model.py", "edgehydra/calibration/__init__.py",
                 "edgehydra/exporters/__init__.py", "edgehydra/devices/__init__.py", "edgehydra/commands/__init__.py",
                 "edgehydra/assets/classMapping40.mat", "edgehydra/assets/splits.mat", "edgehydra/data/synthroom.py"):
        assert need in names, need
    assert any(n.startswith("edgehydra/devices/profiles/") and n.endswith(".toml") for n in names)
    assert not any(n.startswith(("calibration/", "exporters/", "devices/", "tests/")) for n in names)
