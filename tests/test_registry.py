"""A new export target touches its own module and one registry line: the CLI's choices, `doctor`,
`run`, `bench` (in its worker process) and `verify` all see it."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from edgehydra.commands import cli

HERE = Path(__file__).parent


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_throwaway_target_reaches_every_command(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEHYDRA_TARGETS", "torchscript=_torchscript_target")  # the one registry line
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(HERE))
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "measurements"))

    r = invoke("export", "--run", run, "--target", "torchscript")
    assert r.exit_code == 0, r.output
    art = run / "export" / "torchscript" / "hydranet_fp32_64x96.ts"
    man = json.loads(Path(str(art) + ".manifest.json").read_text())
    assert man["status"] == "verified" and man["verification"]["reference_kind"] == "fp32"
    assert "torchscript" in invoke("export", "--help").output

    doc = json.loads(invoke("doctor", "--json").output)
    assert {"target": "torchscript", "suffix": ".ts", "installed": True}.items() <= {
        k: v for t in doc["targets"] if t["target"] == "torchscript" for k, v in t.items()}.items()

    img = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(img)
    r = invoke("run", "--artifact", art, "--out", tmp_path / "panels", img)
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "panels").glob("*.png"))

    r = invoke("bench", "--artifact", art, "--runs", 3, "--warmup", 1)  # a fresh worker process
    assert r.exit_code == 0, r.output
    assert json.loads(Path(str(art) + ".bench.json").read_text())["runtime"] == "torchscript"

    r = invoke("verify", "--run", run)
    assert r.exit_code == 0, r.output
    assert "hydranet_fp32_64x96.ts" in r.output


def test_export_jobs_a_dying_converter_fails_its_own_row(tiny_run, tmp_path, monkeypatch):
    """`export --jobs 2`: each artifact in a worker process of its own. A target whose converter kills its
    process (tests/_crash_target.py: SIGKILL after writing half a file) fails its own row in one line, with its
    temporary gone; the manifest is written and the command exits 1."""
    monkeypatch.setenv("EDGEHYDRA_TARGETS", "torchscript=_torchscript_target,crashes=_crash_target")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(HERE))
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "measurements"))

    r = invoke("export", "--run", run, "--target", "crashes", "--target", "torchscript", "--precision", "fp32",
               "--jobs", "2")
    assert r.exit_code == 1, r.output
    assert "crashes fp32: the export worker died before crashes fp32 finished" in r.output, r.output
    man = {a["target"]: a for a in json.loads((run / "export" / "manifest.json").read_text())["artifacts"]}
    assert man["crashes"]["status"] == "failed" and man["crashes"]["path"] is None
    # the working target's row is its own: verified where its worker finished first, else failed for the same death
    assert man["torchscript"]["status"] == "verified" or "worker died" in man["torchscript"]["reason"]
    assert not list((run / "export" / "crashes").iterdir())  # no half-written artifact, no temporary
