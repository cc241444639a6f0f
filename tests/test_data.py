import math
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from edgehydra.data import FolderDataset, open_dataset
from edgehydra.data import layout
from edgehydra.data.kitti import decode_segmentation, prepare as prepare_kitti
from edgehydra.data.nyud import class_mapping_40, prepare as prepare_nyud
from edgehydra.data.synthroom import KINECT, C, SynthConfig, generate_frame, rotation
from edgehydra.errors import BadInputError
from edgehydra.losses import berhu
from edgehydra.metrics import Metrics
from conftest import SAMPLES, need_samples


def test_synthroom_is_deterministic_and_labelled():
    a, b = generate_frame(7, 3), generate_frame(7, 3)
    for k in ("rgb", "segm", "depth", "normals"):
        assert np.array_equal(a[k], b[k])
    c = generate_frame(7, 4)
    assert not np.array_equal(a["rgb"], c["rgb"])
    assert a["rgb"].shape == (240, 320, 3) and a["rgb"].dtype == np.uint8
    assert a["segm"].max() < 40
    assert set(np.unique(a["segm"])) >= {C["wall"]}
    n = np.linalg.norm(a["normals"], axis=-1)
    assert np.allclose(n, 1, atol=1e-5)


def test_floor_depth_matches_camera_height_and_pitch():
    checked = 0
    for index in range(10):
        checked += _check_floor(index)
    assert checked >= 5, "the floor should be visible in most frames"


def _check_floor(index) -> int:
    cfg = SynthConfig(size=(120, 160), noise=False)
    f = generate_frame(11, index, cfg)
    cam = f["camera"]
    h, w = cfg.size
    fx, fy = KINECT["fx"] * w / 640, KINECT["fy"] * h / 480
    cx, cy = KINECT["cx"] * w / 640, KINECT["cy"] * h / 480
    R = rotation(cam["yaw"], cam["pitch"])
    floor = f["segm"] == C["floor"]
    if floor.sum() < 50:
        return 0
    vs, us = np.nonzero(floor)
    d = R @ np.stack([(us + 0.5 - cx) / fx, (vs + 0.5 - cy) / fy, np.ones_like(us, float)])
    expected = -cam["position"][1] / d[1]  # the ray (z_cam = 1) meets the plane y = 0 at this z-depth
    assert np.allclose(f["depth"][floor], expected, rtol=1e-4)
    # floor normals point up in the world: in the camera frame that is R^T (0, 1, 0), stored as (x, z, y)
    up_cam = R.T @ np.array([0, 1.0, 0])
    assert np.allclose(f["normals"][floor], up_cam[[0, 2, 1]], atol=1e-5)
    return 1


def test_synth_writes_the_shared_layout(tmp_path):
    from edgehydra.data.synthroom_io import write_synthroom

    write_synthroom(tmp_path / "s", frames=6, size=(64, 96), seed=1, val_frames=2)
    ds = FolderDataset(tmp_path / "s", "train")
    assert len(ds) == 6
    s = ds[0]
    raw = generate_frame(1, 0, SynthConfig(size=(64, 96)))
    assert np.array_equal(ds.raw(0)["segm"], raw["segm"])
    assert np.allclose(ds.raw(0)["depth"], np.round(raw["depth"] * 5000) / 5000, atol=1e-4)
    assert s["image"].shape == (3, 64, 96) and len(FolderDataset(tmp_path / "s", "val")) == 2


def _write_mat(path: Path, n=3, seed=0, raw=True):
    """The labelled .mat's layout: (N, 3, W, H) images, (N, W, H) depths / rawDepths / labels. rawDepths is
    the in-painted map with a third of its pixels 0 (no Kinect return), as in the real file."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["images"] = rng.integers(0, 255, (n, 3, 640, 480), dtype=np.uint8)
        d = rng.uniform(0.5, 9.0, (n, 640, 480)).astype(np.float32)
        f["depths"] = d
        if raw:
            r = d + rng.normal(0, 0.05, d.shape).astype(np.float32)
            r[rng.random(d.shape) < 0.34] = 0.0
            f["rawDepths"] = r
        f["labels"] = rng.integers(0, 895, (n, 640, 480)).astype(np.uint16)
    return d


def test_nyud_prepare_from_official_layout(tmp_path):
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    _write_mat(mat, n=3)
    rep = prepare_nyud(mat, tmp_path / "nyud")
    # splits.mat: frames 1 and 2 (1-based) are test frames, 3 is train in the official split
    ds_val = FolderDataset(tmp_path / "nyud", "val")
    assert rep["train"] + rep["val"] == 3
    raw = ds_val.raw(0)
    assert raw["rgb"].shape == (480, 640, 3)
    with h5py.File(mat) as f:
        lab = np.asarray(f["labels"][0]).T
        img = np.asarray(f["images"][0]).transpose(2, 1, 0)
        rawd = np.asarray(f["rawDepths"][0]).T
    lut = class_mapping_40()
    assert np.array_equal(raw["segm"], lut[lab])
    assert np.array_equal(raw["rgb"], img)
    assert np.allclose(raw["depth"], rawd, atol=1 / 5000)  # evaluation ground truth: the raw map, zeros kept
    assert (raw["depth"] == 0).mean() > 0.3
    assert (raw["segm"][lab == 0] == 255).all()
    assert ds_val.info.depth_source["val"].startswith("rawDepths")


def test_nyud_mat_errors(tmp_path):
    bad = tmp_path / "x.mat"
    bad.write_bytes(b"MATLAB 5.0 not hdf5")
    with pytest.raises(BadInputError, match="not a MATLAB v7.3"):
        prepare_nyud(bad, tmp_path / "o")
    with h5py.File(tmp_path / "y.mat", "w") as f:
        f["images"] = np.zeros((1, 3, 8, 8), np.uint8)
    with pytest.raises(BadInputError, match="'depths' missing"):
        prepare_nyud(tmp_path / "y.mat", tmp_path / "o")


def test_real_nyud_samples_read():
    need_samples()
    d = SAMPLES / "nyud"
    rgb = layout.read_rgb(d / "000433.png")
    seg = layout.read_mask(d / "segm_gt_000433.png")
    dep = layout.read_depth(d / "depth_gt_000433.png", 5000)
    nrm = layout.read_normals(d / "norm_gt_000433.png")
    assert rgb.shape == (480, 640, 3) and seg.shape == (480, 640) and dep.shape == (480, 640)
    assert seg[seg != 255].max() < 40
    assert 0.3 < dep[dep > 0].min() and dep.max() < 10
    assert np.allclose(np.linalg.norm(nrm[200:210, 300:310], axis=-1), 1, atol=0.05)


def test_kitti_samples_and_layout(tmp_path):
    need_samples()
    seg_rgb = layout.read_rgb(SAMPLES / "kitti" / "segm_gt_000099.png")
    ids = decode_segmentation(seg_rgb)
    assert set(np.unique(ids)) <= {0, 1, 2, 3, 4, 5, 255}
    assert (ids[(seg_rgb == 0).all(-1)] == 255).all()
    with pytest.raises(BadInputError, match="not in the KITTI-6 palette"):
        decode_segmentation(np.full((2, 2, 3), 7, np.uint8))
    src = tmp_path / "kitti_raw"
    (src / "image_2").mkdir(parents=True)
    (src / "segm").mkdir()
    (src / "depth").mkdir()
    img = layout.read_rgb(SAMPLES / "kitti" / "000099.png")
    for i in range(3):
        Image.fromarray(img).save(src / "image_2" / f"{i:06d}.png")
        Image.fromarray(seg_rgb).save(src / "segm" / f"{i:06d}.png")
        depth = (np.random.default_rng(i).uniform(0, 80, img.shape[:2]) * 256).astype(np.uint16)
        Image.fromarray(depth).save(src / "depth" / f"{i:06d}.png")
    rep = prepare_kitti(src, tmp_path / "kitti")
    ds = FolderDataset(tmp_path / "kitti", "train")
    raw = ds.raw(0)
    assert ds.info.depth_scale == 256.0 and ds.depth_cap == 80.0
    assert raw["depth"].max() <= 80 and np.array_equal(raw["segm"], ids)
    assert rep["train"] + rep["val"] == 3


def _layout(tmp, rows, rgb_size=(16, 16), mask_size=(16, 16)):
    for d in ("rgb", "masks", "depth"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*rgb_size, 3), np.uint8)).save(tmp / "rgb" / "a.png")
    Image.fromarray(np.zeros(mask_size, np.uint8)).save(tmp / "masks" / "a.png")
    Image.fromarray(np.full(rgb_size, 5000, np.uint16)).save(tmp / "depth" / "a.png")
    (tmp / "train.txt").write_text(rows)


@pytest.mark.parametrize("case,match", [
    ("missing_folder", "dataset folder not found"),
    ("empty_list", "has no rows"),
    ("missing_files", "names 2 missing files: rgb/zz.png, masks/zz.png"),
    ("corrupt_png", "corrupt or not an image"),
    ("size_mismatch", "rgb is 16x16 but mask is 8x8"),
    ("nan_depth", "NaN or Inf"),
    ("bad_row", "expected 2-4 tab-separated paths"),
])
def test_bad_data_names_the_file(tmp_path, case, match):
    root = tmp_path / "d"
    if case == "missing_folder":
        with pytest.raises(BadInputError, match=match):
            FolderDataset(root)
        return
    _layout(root, "rgb/a.png\tmasks/a.png\tdepth/a.png\n", mask_size=(8, 8) if case == "size_mismatch" else (16, 16))
    if case == "empty_list":
        (root / "train.txt").write_text("# nothing\n")
    elif case == "missing_files":
        (root / "train.txt").write_text("rgb/a.png\tmasks/a.png\tdepth/a.png\nrgb/zz.png\tmasks/zz.png\t-\n")
    elif case == "corrupt_png":
        (root / "rgb" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif case == "nan_depth":
        Image.fromarray(np.full((16, 16), np.nan, np.float32)).save(root / "depth" / "a.tiff")
        (root / "train.txt").write_text("rgb/a.png\tmasks/a.png\tdepth/a.tiff\n")
    elif case == "bad_row":
        (root / "train.txt").write_text("rgb/a.png\n")
    with pytest.raises(BadInputError, match=match) as e:
        ds = FolderDataset(root)
        ds[0]
    if case in ("corrupt_png", "nan_depth", "size_mismatch"):
        assert "a." in str(e.value)


def test_asymmetric_rows_and_pseudo_labels(tmp_path):
    root = tmp_path / "d"
    _layout(root, "rgb/a.png\t-\tpseudo:depth/a.png\n")
    rows = layout.parse_list(root / "train.txt")
    assert rows[0].masks is None and rows[0].pseudo == frozenset({"depth"})
    s = FolderDataset(root)[0]
    assert s["has_segm"] == 0 and s["has_depth"] == 1 and (s["segm"] == 255).all()
    layout.write_list(root / "copy.txt", rows)
    assert layout.parse_list(root / "copy.txt") == rows


def test_named_dataset_absent_says_how_to_prepare(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEHYDRA_DATA", str(tmp_path))
    with pytest.raises(BadInputError, match="edgehydra data prepare nyud --mat"):
        open_dataset("nyud")


def test_berhu_hand_computed():
    pred = torch.tensor([[[[1.0, 2.0], [4.0, -1.0]]]])
    target = torch.tensor([[[[1.5, 2.0], [1.0, 1.0]]]])
    valid = torch.ones_like(target, dtype=torch.bool)
    # e = |relu(p) - t| = [0.5, 0, 3, 1]; c = 0.2 * 3 = 0.6
    # 0.5 <= c -> 0.5; 0 -> 0; 3 > c -> (9 + 0.36) / 1.2 = 7.8; 1 > c -> (1 + 0.36) / 1.2 = 1.1333
    expected = (0.5 + 0 + 7.8 + 1.36 / 1.2) / 4
    assert math.isclose(float(berhu(pred, target, valid)), expected, rel_tol=1e-6)
    assert float(berhu(target, target, valid)) == 0.0  # c = 0 guarded
    assert float(berhu(pred, target, torch.zeros_like(valid))) == 0.0


def test_metrics_hand_computed():
    m = Metrics(num_classes=3, depth_cap=10)
    pred = torch.tensor([[0, 0, 1, 1, 2, 2]])
    lab = torch.tensor([[0, 1, 1, 1, 255, 2]])
    m.update_segm(pred, lab)
    # confusion (label x pred): c0: [1,0,0]; c1: [1,2,0]; c2: [0,0,1]
    # IoU0 = 1/(1+2-1) = .5; IoU1 = 2/(3+2-2) = 2/3; IoU2 = 1/1
    r = m.compute()
    assert math.isclose(r["miou"], (0.5 + 2 / 3 + 1) / 3 * 100, rel_tol=1e-9)
    assert math.isclose(r["pixel_acc"], 4 / 5 * 100)
    m2 = Metrics(num_classes=4)
    m2.update_segm(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    assert m2.compute()["miou"] == 100.0  # classes 2 and 3, absent from both, are excluded
    d = Metrics(2, depth_cap=10)
    d.update_depth(torch.tensor([[[[2.0, 4.0, 5.0]]]]), torch.tensor([[[[1.0, 4.0, 0.0]]]]))
    r = d.compute()
    assert math.isclose(r["rmse"], math.sqrt((1 + 0) / 2))
    assert math.isclose(r["abs_rel"], (1 / 1 + 0) / 2)
    assert math.isclose(r["delta1"], 50.0)


def test_distill_fills_missing_modalities_and_marks_them(tmp_path):
    from edgehydra import create_model
    from edgehydra.distill import distill

    root = tmp_path / "d"
    _layout(root, "rgb/a.png\t-\t-\n")
    teacher = create_model("hydranet_tiny", input_size=(64, 96)).eval()
    rep = distill(teacher, root)
    assert rep["filled"] == {"masks": 1, "depth": 1}
    row = layout.parse_list(root / "train.txt")[0]
    assert row.pseudo == frozenset({"masks", "depth"}) and (root / row.masks).is_file() and (root / row.depth).is_file()
    s = FolderDataset(root)[0]
    assert s["has_segm"] == 1 and s["segm"].shape == (16, 16)


def test_predict_writes_a_panel_with_ground_truth(tmp_path):
    from click.testing import CliRunner

    from edgehydra import create_model
    from edgehydra.checkpoint import save_checkpoint
    from edgehydra.commands import cli

    need_samples()
    ck = save_checkpoint(create_model("hydranet_tiny"), tmp_path / "m.pt")
    r = CliRunner().invoke(cli, ["predict", "--checkpoint", str(ck), "--out", str(tmp_path / "p"),
                                 str(SAMPLES / "nyud" / "000433.png")])
    assert r.exit_code == 0, r.output
    png = tmp_path / "p" / "000433_panel.png"
    assert png.is_file()
    from PIL import Image

    assert Image.open(png).size[1] > Image.open(png).size[0] / 3  # two rows: ground truth and prediction


def test_train_on_crops_of_frames_at_the_evaluated_size(tmp_path, monkeypatch):
    """`train --size 64x96 --crop 32x64`: frames render at 64x96, every training sample is a 32x64 crop of one,
    the validation runs whole 64x96 frames, and the checkpoint records the crop; a crop larger than the frames
    is one line."""
    from click.testing import CliRunner

    from edgehydra import fp32_stage
    from edgehydra.checkpoint import load_checkpoint
    from edgehydra.commands import cli

    seen = {}
    real_fit = fp32_stage.fit

    def spy(model, train_ds, cfg, *a, **k):
        seen["train"] = {tuple(train_ds[i]["image"].shape[-2:]) for i in range(3)}
        return real_fit(model, train_ds, cfg, *a, **k)

    monkeypatch.setattr(fp32_stage, "fit", spy)
    args = ["train", "--model", "hydranet_tiny", "--size", "64x96", "--frames", "8", "--val-frames", "2",
            "--epochs", "1", "--batch-size", "4", "--out", str(tmp_path)]
    r = CliRunner().invoke(cli, args + ["--crop", "32x64"])
    assert r.exit_code == 0, r.output
    assert seen["train"] == {(32, 64)}
    metrics = json.loads((tmp_path / "fp32_metrics.json").read_text())
    assert metrics["protocol"] == "resized to 64x96"  # whole frames at --size
    raw = torch.load(tmp_path / "fp32.pt", map_location="cpu", weights_only=True)
    assert tuple(raw["train"]["config"]["crop"]) == (32, 64) and list(raw["train"]["data"]["size"]) == [64, 96]
    model, _ = load_checkpoint(tmp_path / "fp32.pt")
    assert tuple(model.config.input_size) == (64, 96)  # what its programs and artifacts are traced at
    r = CliRunner().invoke(cli, args[:-2] + ["--out", str(tmp_path / "b"), "--crop", "96x128"])
    assert r.exit_code != 0 and "--crop 96x128 is larger than the frames (64x96)" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "b" / "fp32.pt").exists()
