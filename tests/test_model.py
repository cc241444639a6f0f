import json
import subprocess
import sys

import pytest
import torch

from edgehydra import create_model, list_models
from edgehydra.accounting import count_layers, model_info, summarize
from edgehydra.checkpoint import from_densetorch, load_checkpoint, save_checkpoint
from edgehydra.errors import BadInputError
from conftest import REFERENCE, need_reference

PUBLISHED = [("hydranet_nyud", "nyud_joint", 3_070_057, 40, 2), ("hydranet_nyud_normals", "nyud_three", 3_077_228, 40, 3),
             ("hydranet_kitti", "kitti_joint", 2_991_687, 6, 2)]


def _state_from_shapes(name):
    need_reference()
    shapes = json.loads((REFERENCE / f"drsleep_{name}_state_dict_shapes.json").read_text())
    g = torch.Generator().manual_seed(1)
    sd = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(s, generator=g) + 0.5
        else:
            sd[k] = torch.randn(s, generator=g) * 0.05
    return sd


@pytest.mark.parametrize("variant,ref,params,classes,tasks", PUBLISHED)
def test_published_state_dict_loads_strict(tmp_path, variant, ref, params, classes, tasks):
    sd = _state_from_shapes(ref)
    m = create_model(variant)
    assert list(m.state_dict()) == list(sd)  # same keys, same order as the published files
    m.load_state_dict(sd, strict=True)
    assert m.num_parameters() == params
    f = tmp_path / "Exp.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, f)  # tolerate a module. prefix
    loaded, info = load_checkpoint(f)
    assert info["format"] == "multi-task-refinenet"
    assert loaded.config.num_classes == classes and loaded.config.num_tasks == tasks
    x = torch.randn(1, 3, 64, 96)
    m.eval()
    for a, b in zip(m(x), loaded(x)):
        assert torch.equal(a, b)


def test_densetorch_layout_maps_to_published_names(tmp_path):
    sd = _state_from_shapes("nyud_three")
    stem = {"conv8": 0, "conv7": 1, "conv6": 2, "conv5": 3, "conv4": 4, "conv3": 5}
    crp = {"crp4": 0, "crp3": 1, "crp2": 2, "crp1": 3}
    adapt = {"conv_adapt4": 0, "conv_adapt3": 1, "conv_adapt2": 2}
    heads = {"pre_segm": (0, 0), "segm": (0, 2), "pre_depth": (1, 0), "depth": (1, 2), "pre_normal": (2, 0), "normal": (2, 2)}
    dt = {}
    for k, v in sd.items():
        top, rest = k.split(".", 1)
        if top.startswith("layer"):
            dt[f"module.0.{k}"] = v
        elif top in stem:
            dt[f"module.1.stem_convs.{stem[top]}.{rest}"] = v
        elif top in crp:
            dt[f"module.1.crp_blocks.{crp[top]}.{rest}"] = v
        elif top in adapt:
            dt[f"module.1.adapt_convs.{adapt[top]}.{rest}"] = v
        else:
            h, layer = heads[top]
            dt[f"module.1.heads.{h}.{layer}.{rest}"] = v
    f = tmp_path / "dt.pth"
    torch.save({"state_dict": dt}, f)
    m, info = load_checkpoint(f)
    assert info["format"] == "densetorch" and m.config.tasks == ("segm", "depth", "normals")
    ref = create_model("hydranet_nyud_normals").eval()
    ref.load_state_dict(sd)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(ref(x), m(x)):
        assert torch.equal(a, b)
    assert set(from_densetorch({k[7:]: v for k, v in dt.items()})) == set(sd)


def test_output_shapes_at_paper_sizes():
    m = create_model("hydranet_nyud").eval()
    with torch.no_grad():
        s, d = m(torch.zeros(1, 3, 480, 640))
    assert s.shape == (1, 40, 120, 160) and d.shape == (1, 1, 120, 160)
    k = create_model("hydranet_kitti").eval()
    with torch.no_grad():
        s, d = k(torch.zeros(1, 3, 350, 1200))
    assert s.shape == (1, 6, 88, 300) and d.shape == (1, 1, 88, 300)


def test_tiny_variant_and_registry(tiny):
    assert "hydranet_tiny" in list_models()
    (x,) = tiny.example_inputs()
    s, d = tiny(x)
    assert s.shape[1] == 40 and s.shape[-2:] == (x.shape[2] // 4, x.shape[3] // 4)
    assert tiny.num_parameters() < 200_000
    m = create_model("hydranet_nyud", num_classes=13)
    assert m.segm.out_channels == 13 and m.config.class_names == ()
    with pytest.raises(ValueError, match="unknown model"):
        create_model("hydranet_nope")


def test_native_checkpoint_round_trip(tmp_path, tiny):
    f = save_checkpoint(tiny, tmp_path / "m.pt", provenance={"trained_on": "synthroom"})
    m, info = load_checkpoint(f)
    assert info["format"] == "native" and info["provenance"]["trained_on"] == "synthroom"
    assert m.config == tiny.config
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "text", "wrong_classes", "unknown_keys", "pickle_code", "folder"])
def test_bad_checkpoints_give_one_clear_error(tmp_path, tiny, case):
    f = tmp_path / "bad.pt"
    expect = None
    if case == "missing":
        f = tmp_path / "nope.pt"
        match = "not found"
    elif case == "empty":
        f.write_bytes(b"")
        match = "empty"
    elif case == "truncated":
        save_checkpoint(tiny, f)
        f.write_bytes(f.read_bytes()[:1000])
        match = "not a readable PyTorch checkpoint"
    elif case == "text":
        f.write_text("hello")
        match = "not a readable PyTorch checkpoint"
    elif case == "wrong_classes":
        sd = create_model("hydranet_kitti").state_dict()
        torch.save({"state_dict": sd}, f)
        expect = 40
        match = "6 classes where 40 were asked for"
    elif case == "unknown_keys":
        sd = dict(create_model("hydranet_nyud").state_dict())
        sd["extra.weight"] = torch.zeros(1)
        del sd["conv8.weight"]
        torch.save({"state_dict": sd}, f)
        match = r"missing keys \['conv8.weight'\].*unknown keys \['extra.weight'\]"
    elif case == "pickle_code":
        import pickle

        marker = tmp_path / "pwned"

        class Evil:
            def __reduce__(self):
                return (eval, (f"open({str(marker)!r}, 'w').write('x')",))

        with open(f, "wb") as fh:
            pickle.dump({"state_dict": Evil()}, fh)
        match = "refusing to load"
    else:
        f = tmp_path
        match = "is a folder"
    with pytest.raises(BadInputError, match=match):
        load_checkpoint(f, expect_classes=expect)
    if case == "pickle_code":
        assert not (tmp_path / "pwned").exists(), "loading ran code from the pickle"


def test_info_totals_match_hand_count():
    m = create_model("hydranet_nyud")
    s = summarize(count_layers(m, (480, 640)))
    assert s["params"] == 3_070_057
    assert abs(s["macs"] / 1e9 - 5.94) < 0.01
    # one layer by hand: layer1 conv 3->32, 3x3, stride 2 at 480x640 -> 240x320 outputs
    rows = {r.name: r for r in count_layers(m, (480, 640))}
    assert rows["layer1.0"].macs == 32 * 240 * 320 * 3 * 9
    assert rows["crp1.0.1_outvar_dimred"].macs == 256 * 120 * 160  # depthwise 1x1
    i8 = model_info(m, (480, 640), "int8")
    assert i8["weight_bytes"] * 4 == model_info(m, (480, 640), "fp32")["weight_bytes"]


def test_counts_are_counted_once_per_structure():
    """count_layers remembers what it counted per architecture and size: the same rows again (fresh objects, so a
    caller filling op_class changes nothing for the next), scaled per precision; another structure (batch norm
    folded away) or size is counted anew."""
    from edgehydra import accounting
    from edgehydra.calibration.qat import fold_bn

    m = create_model("hydranet_tiny")
    first = count_layers(m, (64, 96))
    again = count_layers(m, (64, 96))
    assert [r.to_dict() for r in first] == [r.to_dict() for r in again] and first[0] is not again[0]
    first[0].op_class = "conv"
    assert count_layers(m, (64, 96))[0].op_class == ""
    i8 = count_layers(m, (64, 96), "int8")
    assert [r.act_out_bytes * 4 for r in i8] == [r.act_out_bytes for r in first]
    key = accounting.structure_key(m)
    assert accounting.structure_key(create_model("hydranet_tiny")) == key  # the weights do not matter
    folded, n = fold_bn(m)
    assert n > 0
    assert accounting.structure_key(folded) != key
    assert not any(r.kind == "BatchNorm2d" for r in count_layers(folded, (64, 96)))
    assert any(r.kind == "BatchNorm2d" for r in count_layers(m, (64, 96)))
    assert count_layers(m, (32, 48))[0].out_shape != first[0].out_shape


def test_lean_import():
    code = ("import sys, edgehydra, edgehydra.commands; "
            "heavy=[m for m in ('executorch','coremltools','litert_torch','onnxruntime','onnx','torchao','tensorflow','jax') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
