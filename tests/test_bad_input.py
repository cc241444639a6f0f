"""Table-driven: every bad input gets one line saying what is wrong, exit 2 (usage) or 1 (failed
check), no traceback, and no partial output. docs/bad-input.md lists the same table."""
import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgehydra.commands import cli


def _ckpt_truncated(t):
    from edgehydra import create_model
    from edgehydra.checkpoint import save_checkpoint

    f = save_checkpoint(create_model("hydranet_tiny"), t / "c.pt")
    f.write_bytes(f.read_bytes()[:500])
    return f


def _ckpt_wrong_classes(t):
    from edgehydra import create_model

    torch.save({"state_dict": create_model("hydranet_kitti").state_dict()}, t / "k.ckpt")
    return t / "k.ckpt"


def _evil_pickle(t):
    class Evil:
        def __reduce__(self):
            return (eval, (f"open({str(t / 'PWNED')!r}, 'w').write('x')",))

    (t / "evil.pt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    return t / "evil.pt"


def _layout(t, rgb=(16, 16), mask=(16, 16), rows="rgb/a.png\tmasks/a.png\tdepth/a.png\n", corrupt=False, nan=False):
    d = t / "ds"
    for s in ("rgb", "masks", "depth"):
        (d / s).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*rgb, 3), np.uint8)).save(d / "rgb" / "a.png")
    if corrupt:
        (d / "rgb" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    Image.fromarray(np.zeros(mask, np.uint8)).save(d / "masks" / "a.png")
    if nan:
        Image.fromarray(np.full(rgb, np.nan, np.float32)).save(d / "depth" / "a.tiff")
        rows = rows.replace("depth/a.png", "depth/a.tiff")
    else:
        Image.fromarray(np.full(rgb, 5000, np.uint16)).save(d / "depth" / "a.png")
    (d / "train.txt").write_text(rows)
    (d / "val.txt").write_text(rows)
    return d


def _bad_recipe(t):
    (t / "r.json").write_text(json.dumps({"name": "x", "act_dtype": "int3"}))
    return t / "r.json"


def _truncated_run(t):
    """A run whose fp32.pt is fine and whose run.json was cut off mid-write by hand (check used to read around it)."""
    from edgehydra import create_model
    from edgehydra.checkpoint import save_checkpoint

    run = t / "run"
    run.mkdir()
    save_checkpoint(create_model("hydranet_tiny"), run / "fp32.pt")
    (run / "run.json").write_text('{"data": {"dataset": "synthroom", "size": [64, 9')
    return run


def _bad_profile(t):
    (t / "p.toml").write_text('name = "x"\nkind = "gpu"\n')
    return t / "p.toml"


# (id, argv builder, exit code, message fragment)
CASES = [
    ("missing checkpoint", lambda t: ["info", "--checkpoint", str(t / "none.pt")], 2, "checkpoint not found"),
    ("truncated checkpoint", lambda t: ["info", "--checkpoint", str(_ckpt_truncated(t))], 2, "truncated or another format"),
    ("not a checkpoint", lambda t: ["info", "--checkpoint", str((t / "x.pt").write_text("hi") and t / "x.pt")], 2,
     "not a readable PyTorch checkpoint"),
    ("pickle that runs code", lambda t: ["info", "--checkpoint", str(_evil_pickle(t))], 2, "refusing to load"),
    ("wrong number of classes", lambda t: ["eval", "--checkpoint", str(_ckpt_wrong_classes(t)), "--dataset", "synthroom"],
     2, "has 40 classes, model has 6"),
    ("corrupt PNG", lambda t: ["train", "--dataset", str(_layout(t, corrupt=True)), "--out", str(t / "run"), "--model",
                               "hydranet_tiny", "--epochs", "1", "--batch-size", "1"], 2, "corrupt or not an image"),
    ("rgb and label sizes differ", lambda t: ["train", "--dataset", str(_layout(t, mask=(8, 8))), "--out", str(t / "run"),
                                              "--model", "hydranet_tiny", "--epochs", "1", "--batch-size", "1"],
     2, "rgb is 16x16 but mask is 8x8"),
    ("NaN depth", lambda t: ["train", "--dataset", str(_layout(t, nan=True)), "--out", str(t / "run"), "--model",
                             "hydranet_tiny", "--epochs", "1", "--batch-size", "1"], 2, "NaN or Inf"),
    ("empty list file", lambda t: ["train", "--dataset", str(_layout(t, rows="")), "--out", str(t / "run")], 2, "has no rows"),
    ("list names missing files", lambda t: ["train", "--dataset", str(_layout(t, rows="rgb/q.png\t-\t-\n")),
                                            "--out", str(t / "run")], 2, "names 1 missing files: rgb/q.png"),
    ("dataset absent", lambda t: ["train", "--dataset", "nyud", "--out", str(t / "run")], 2, "edgehydra data prepare nyud"),
    ("invalid recipe", lambda t: ["ptq", "--checkpoint", str(t / "none.pt"), "--recipe", str(_bad_recipe(t)), "--out",
                                  str(t / "run")], 2, "act_dtype='int3'"),
    ("invalid device profile", lambda t: ["profile", "--device", str(_bad_profile(t)), "--model", "hydranet_tiny"], 2,
     "missing field"),
    ("truncated run record", lambda t: ["check", "--run", str(_truncated_run(t)), "--device", "raspberrypi5"], 2,
     "run.json: invalid JSON"),
    ("unknown device", lambda t: ["check", "--run", str(t), "--device", "nokia3310"], 2, "unknown device 'nokia3310'"),
    ("unsupported target/precision", lambda t: ["export", "--checkpoint", str(t / "none.pt"), "--target", "coreml",
                                                "--precision", "fp32"], 2, ""),
    ("artifact of unknown type", lambda t: ["run", "--artifact", str((t / "m.bin").write_bytes(b"x") and t / "m.bin"),
                                            str(t / "i.png")], 2, "unknown artifact type"),
    ("bad size", lambda t: ["info", "--size", "640"], 2, "not HxW"),
    ("size beyond memory", lambda t: ["info", "--model", "hydranet_nyud", "--size", "99999x99999"], 2,
     "GiB are available: choose a smaller --size"),
    ("host bench for a remote profile", lambda t: ["bench", "--artifact", str(t / "m.onnx"), "--profile",
                                                   "raspberrypi5"], 2, "measures this host's profiles"),
    ("truncated program", lambda t: ["export", "--program", str((t / "p.pt2").write_bytes(b"PK\x03\x04" + b"x" * 99)
                                                                and t / "p.pt2"), "--target", "onnx"], 2,
     "not a complete .pt2 archive"),
]


@pytest.mark.parametrize("name,argv,code,msg", CASES, ids=[c[0] for c in CASES])
def test_bad_input_table(tmp_path, monkeypatch, name, argv, code, msg):
    monkeypatch.setenv("EDGEHYDRA_DATA", str(tmp_path / "data"))
    args = argv(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == code, r.output
    assert msg in r.output
    assert "Traceback" not in r.output
    lines = [l for l in r.output.strip().splitlines() if l.startswith("Error")]
    assert len(lines) == 1, r.output
    assert not (tmp_path / "PWNED").exists()
    created = {p for p in tmp_path.rglob("*")} - before
    assert not [p for p in created if p.is_file() and p.suffix in (".pt", ".pt2", ".json", ".pte", ".onnx")], created


def test_debug_flag_shows_traceback(tmp_path):
    r = CliRunner().invoke(cli, ["--debug", "info", "--checkpoint", str(tmp_path / "none.pt")])
    assert r.exit_code != 0 and r.exception is not None


def test_coreml_prediction_off_macos_is_refused(tmp_path):
    import platform

    if platform.system() == "Darwin":
        pytest.skip("on macOS Core ML prediction runs")
    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    (tmp_path / "m.mlpackage.manifest.json").write_text(json.dumps({"sha256": "x"}))
    r = CliRunner().invoke(cli, ["bench", "--artifact", str(pkg)])
    assert r.exit_code == 1 and "coreml artifacts run only on macOS" in r.output


def test_truncated_program_prints_its_error_alone(tmp_path):
    """torch.export's loader logs a 12-line traceback before failing on a truncated .pt2: the user sees the
    one-line error and nothing else, on stdout and stderr together, from the installed entry point."""
    import subprocess
    import sys

    bad = tmp_path / "p.pt2"
    bad.write_bytes(b"PK\x03\x04" + b"x" * 99)
    r = subprocess.run([sys.executable, "-m", "edgehydra.commands", "export", "--program", str(bad), "--target", "onnx"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "not a complete .pt2 archive" in lines[0], lines


def test_recipe_naming_no_layer_is_refused_with_close_names(tiny_run, tmp_path):
    import json

    from edgehydra.calibration.recipe import PRESETS

    r = tmp_path / "r.json"
    r.write_text(json.dumps(dict(PRESETS["w8a8"].to_dict(), name="mine", keep_float=["dept", "segm"])))
    res = CliRunner().invoke(cli, ["ptq", "--checkpoint", str(tiny_run / "fp32.pt"), "--out", str(tmp_path / "q"),
                                   "--recipe", str(r), "--calib-frames", "2"])
    assert res.exit_code == 2, res.output
    assert "keep_float 'dept' names no layer of this model; close: depth" in res.output
    assert not (tmp_path / "q" / "ptq").exists()
