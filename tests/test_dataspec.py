"""The data spec's one precedence: dataset default < registered variant < checkpoint < run record < command line
(edgehydra/dataspec.py). Each source present or absent, and the one exception: a source naming another dataset
keeps the size below it but not its frame counts."""
from __future__ import annotations

import itertools

import pytest

from edgehydra.dataspec import DEFAULT_SIZE, DataSpec, resolve_data_spec
from edgehydra.errors import BadInputError
from edgehydra.registry import model_config

VARIANT = model_config("hydranet_small")  # synthroom, input_size 240x320
CKPT = {"dataset": "synthroom", "size": [96, 128], "frames": 64, "val_frames": 8, "seed": 1}
RUN = {"dataset": "synthroom", "size": [64, 96], "frames": 32, "val_frames": 8, "seed": 1}
CLI = {"size": (160, 224)}


@pytest.mark.parametrize("variant,ckpt,run,cli", list(itertools.product([None, VARIANT], [None, CKPT], [None, RUN],
                                                                         [None, CLI])))
def test_precedence_table(variant, ckpt, run, cli):
    sources = [s for s in (ckpt, run) if s]
    if not sources and variant is None:
        with pytest.raises(BadInputError, match="no dataset recorded"):
            resolve_data_spec(variant=variant, checkpoint=ckpt, run=run, cli=cli)
        return
    spec = resolve_data_spec(variant=variant, checkpoint=ckpt, run=run, cli=cli)
    # the highest source that names a size wins
    want = cli["size"] if cli else (run or ckpt or {}).get("size") or tuple(VARIANT.input_size)
    assert spec.size == tuple(want)
    assert spec.dataset == "synthroom"
    top = run or ckpt
    assert spec.frames == (top["frames"] if top else None)


def test_dataset_default_size_when_nothing_names_one():
    for name, size in DEFAULT_SIZE.items():
        assert resolve_data_spec(cli={"dataset": name}).size == size


def test_another_dataset_keeps_the_size_not_the_frame_counts():
    spec = resolve_data_spec(run=RUN, cli={"dataset": "nyud"})
    assert spec == DataSpec("nyud", (64, 96), None, None, 0)


def test_a_damaged_spec_is_refused_naming_the_field():
    with pytest.raises(BadInputError, match="size"):
        DataSpec.from_dict({"dataset": "synthroom", "size": [8, 8]}, "RUN/run.json (data)")
    with pytest.raises(ValueError, match="frames=0"):
        DataSpec("synthroom", (64, 96), frames=0)


def test_no_other_module_resolves_a_size_default():
    """One owner: the per-dataset default size table lives in dataspec.py alone."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    hits = [p for folder in ("edgehydra", "calibration", "exporters", "devices", "pipeline", "commands")
            for p in (root / folder).rglob("*.py") if "DEFAULT_SIZE" in p.read_text() and p.name != "dataspec.py"]
    assert not hits, hits


PROFILE = __import__("edgehydra.devices.profile", fromlist=["load_profile"]).load_profile("raspberrypi5")
SIZE_SOURCES = {"cli": (160, 224), "program": (96, 128), "device": PROFILE, "data": {"dataset": "synthroom",
                "size": [64, 96]}, "variant": VARIANT}
WANT = {"cli": (160, 224), "program": (96, 128), "device": tuple(PROFILE.budgets.input_size), "data": (64, 96),
        "variant": tuple(VARIANT.input_size)}


@pytest.mark.parametrize("present", list(itertools.product([False, True], repeat=5)))
def test_run_size_precedence_table(present):
    """command line > program > device budget > data spec > registered variant: each source present or absent,
    the first present wins; none present is refused in one line."""
    from edgehydra.dataspec import resolve_size

    given = {k: v for (k, v), on in zip(SIZE_SOURCES.items(), present) if on}
    if not given:
        with pytest.raises(BadInputError, match="--size"):
            resolve_size()
        return
    assert resolve_size(**given) == WANT[next(iter(given))]


def test_a_bad_size_is_refused_naming_its_source():
    from edgehydra.dataspec import resolve_size

    with pytest.raises(BadInputError, match="from the program"):
        resolve_size(program=(8, 8), variant=VARIANT)


def test_no_other_module_chooses_a_size_by_fallback():
    """No `size or <something>` / `<x>.input_size` fallback outside the resolver: every stage asks resolve_size.
    (HydraNet.example_inputs keeps its own default: the model sits below the data spec's layer.)"""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    hits = []
    for folder in ("edgehydra", "calibration", "exporters", "devices", "pipeline", "commands", "robot"):
        for p in (root / folder).rglob("*.py"):
            if p.name == "dataspec.py":
                continue
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
                    src = ast.unparse(node)
                    first = node.values[0]
                    if isinstance(first, (ast.Name, ast.Attribute)) and "size" in ast.unparse(first).split(".")[-1] and (
                            "input_size" in src or "budgets" in src or ".size" in src):
                        hits.append(f"{p.relative_to(root)}:{node.lineno}: {src}")
    assert hits == ["edgehydra/model.py:262: size or self.config.input_size"], hits
