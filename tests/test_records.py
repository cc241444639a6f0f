"""Schema-versioned records (edgehydra/records.py): every writer stamps its kind and version, every reader
validates what it opens and refuses a damaged or foreign record in one line naming the file."""
import json

import pytest

from edgehydra.errors import BadInputError
from edgehydra.records import schema, stamp, validate
from edgehydra.run import Run

MEAS = {"device": "host", "runner": "onnxruntime", "sha256": "ab" * 32, "size": [64, 96], "precision": "int8",
        "p50_ms": 3.2}


def test_stamp_then_validate_and_unstamped_reads_as_v1(tmp_path):
    rec = stamp("measurement", MEAS)
    assert next(iter(rec)) == "schema" and rec["schema"] == "edgehydra.measurement/1"
    assert validate("measurement", rec, "x.json") is rec
    assert validate("measurement", dict(MEAS), "x.json")["device"] == "host"  # written before versions: v1


@pytest.mark.parametrize("bad,msg", [({**MEAS, "schema": "edgehydra.measurement/9"}, "this edgehydra reads"),
                                     ({**MEAS, "schema": "edgehydra.artifact/1"}, "this edgehydra reads"),
                                     ({k: v for k, v in MEAS.items() if k != "sha256"}, "lacks sha256"),
                                     ([1, 2], "a JSON object expected")])
def test_foreign_or_incomplete_records_are_refused_naming_the_file(bad, msg):
    with pytest.raises(BadInputError, match=msg) as e:
        validate("measurement", bad, "RUN/measurements/m.json")
    assert "RUN/measurements/m.json" in str(e.value) and "\n" not in str(e.value)


def test_run_writes_stamped_measurements_and_refuses_a_damaged_one(tmp_path):
    run = Run(tmp_path)
    path = run.add_measurement(dict(MEAS))
    on_disk = json.loads(path.read_text())
    assert on_disk["schema"] == schema("measurement") and run.measurements()[0]["p50_ms"] == 3.2
    bad = run.measurements_dir / "zz_truncated.json"
    bad.write_text(path.read_text()[:40])
    before = bad.read_bytes()
    with pytest.raises(BadInputError, match="damaged measurement record") as e:
        run.measurements()
    assert str(bad) in str(e.value)
    assert bad.read_bytes() == before  # refused, never rewritten


def test_artifact_manifest_of_another_version_is_refused(tmp_path):
    from edgehydra.exporters.runtime import read_manifest

    art = tmp_path / "m.onnx"
    art.write_bytes(b"x")
    man = {"artifact": "m.onnx", "target": "onnx", "precision": "int8", "size": [64, 96], "sha256": "0" * 64,
           "outputs": ["segm", "depth"], "model_config": {}}
    (tmp_path / "m.onnx.manifest.json").write_text(json.dumps(stamp("artifact", man)))
    assert read_manifest(art)["target"] == "onnx"
    (tmp_path / "m.onnx.manifest.json").write_text(json.dumps({**man, "schema": "edgehydra.artifact/2"}))
    with pytest.raises(BadInputError, match="m.onnx.manifest.json: schema 'edgehydra.artifact/2'"):
        read_manifest(art)
