"""The paper's protocol on real layouts: NYUD raw depth, KITTI at native resolution, the loss, a pretrained
encoder, multi-dataset class slices. Small files built in the real layouts; hand computations."""
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from edgehydra.commands import cli
from edgehydra.data import FolderDataset, layout
from edgehydra.data.kitti import prepare as prepare_kitti
from edgehydra.data.nyud import prepare as prepare_nyud
from edgehydra.errors import BadInputError
from edgehydra.metrics import Metrics

from conftest import SAMPLES, need_samples
from test_data import _write_mat


# ------------------------------------------------------------------------------------------------ NYUD depth
def test_nyud_eval_depth_is_raw_and_masked_rmse_matches_hand_computation(tmp_path):
    mat = tmp_path / "nyu.mat"
    _write_mat(mat, n=3)
    prepare_nyud(mat, tmp_path / "nyud", train_depth="filled")
    with h5py.File(mat) as f:
        raw0, filled2 = np.asarray(f["rawDepths"][0]).T, np.asarray(f["depths"][2]).T
    val = FolderDataset(tmp_path / "nyud", "val")
    train = FolderDataset(tmp_path / "nyud", "train")
    # frames 1, 2 are test frames, 3 a training frame (splits.mat); training rows read the in-painted map
    assert np.allclose(train.raw(0)["depth"], filled2, atol=1 / 5000) and (train.raw(0)["depth"] > 0).all()
    meta = json.loads((tmp_path / "nyud" / "dataset.json").read_text())
    assert meta["depth_source"]["train"].startswith("depths") and meta["depth_source"]["val"].startswith("rawDepths")
    # a constant -3 m prediction (scored as |pred|), on the valid raw pixels only (t != 0), by hand in float64
    gt = val[0]["depth"]
    m = Metrics(40, depth_cap=10.0)
    m.update_depth(torch.full_like(gt, -3.0)[None], gt[None])
    t = np.round(raw0.astype(np.float64) * 5000) / 5000  # what the 16-bit PNG holds
    v = t != 0
    assert 0.6 < v.mean() < 0.7
    r = m.compute()
    # the dataset holds t in float32 (relative rounding 2**-24 = 6e-8): the bound of the comparison
    assert math.isclose(r["rmse"], math.sqrt(((3.0 - t[v]) ** 2).mean()), rel_tol=1e-7)
    assert math.isclose(r["log10"], np.abs(np.log10(3.0) - np.log10(t[v])).mean(), rel_tol=1e-6)
    assert r["depth_pixels"] == int(v.sum())


def test_nyud_mat_without_raw_depths_is_refused_and_nothing_written(tmp_path):
    mat = tmp_path / "nyu.mat"
    _write_mat(mat, n=2, raw=False)
    with pytest.raises(BadInputError, match="no 'rawDepths'.*--eval-depth filled"):
        prepare_nyud(mat, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    rep = prepare_nyud(mat, tmp_path / "out", train_depth="filled", eval_depth="filled")  # asked for: recorded
    assert "not the paper protocol" in rep["depth_source"]["val"]


def test_sample_frames_are_scored_on_the_authors_pixels(tmp_path):
    """The authors' ground-truth PNGs of test frames 433 and 464 as a two-frame dataset: eval counts exactly
    their valid (non-zero) pixels, nothing in-painted."""
    need_samples()
    root = tmp_path / "nyud2"
    rows = []
    for n in ("000433", "000464"):
        for sub, src in (("rgb", f"{n}.png"), ("masks", f"segm_gt_{n}.png"), ("depth", f"depth_gt_{n}.png")):
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / f"{n}.png").write_bytes((SAMPLES / "nyud" / src).read_bytes())
        rows.append(layout.Row(f"rgb/{n}.png", f"masks/{n}.png", f"depth/{n}.png"))
    layout.write_list(root / "val.txt", rows)
    layout.write_list(root / "train.txt", rows)
    from edgehydra import create_model
    from edgehydra.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ck = save_checkpoint(create_model("hydranet_tiny", num_classes=40), tmp_path / "m.pt",
                         provenance={"data": {"dataset": str(root), "size": [120, 160]}})
    r = CliRunner().invoke(cli, ["eval", "--checkpoint", str(ck), "--dataset", str(root), "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "e.json").read_text())["metrics"]
    # the authors' mask (DenseTorch's RMSE): every ground-truth pixel != 0
    want = sum(int((np.asarray(Image.open(SAMPLES / "nyud" / f"depth_gt_{n}.png")) != 0).sum()) for n in ("000433", "000464"))
    assert m["depth_pixels"] == want and want < 0.7 * 2 * 480 * 640  # a third of each frame has no depth


# ------------------------------------------------------------------------------------------------ KITTI
def _kitti_src(tmp_path, sizes, scale=256.0):
    src = tmp_path / "kitti_raw"
    for d in ("image_2", "segm", "depth"):
        (src / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    palette = [(128, 128, 128), (128, 0, 0), (128, 64, 128), (0, 0, 192), (128, 128, 0), (64, 0, 128)]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(src / "image_2" / f"{i:06d}.png")
        ids = rng.integers(0, 6, (h, w))
        Image.fromarray(np.array(palette, np.uint8)[ids]).save(src / "segm" / f"{i:06d}.png")
        dep = rng.uniform(2, 70, (h, w))
        dep[rng.random((h, w)) < 0.8] = 0  # sparse LiDAR
        Image.fromarray((dep * scale).astype(np.uint16)).save(src / "depth" / f"{i:06d}.png")
    return src


def test_kitti_frames_of_three_sizes_evaluate_natively_without_resizing(tmp_path):
    sizes = [(70, 230), (66, 224), (75, 241)]  # KITTI-like aspect, none a multiple of 32
    src = _kitti_src(tmp_path, sizes)
    (tmp_path / "val.txt").write_text("000000\n000001.png\n000002\n")
    rep = prepare_kitti(src, tmp_path / "kitti", val_list=tmp_path / "val.txt")
    assert rep["val"] == 3 and rep["split"]["val"] == str(tmp_path / "val.txt")
    from edgehydra import create_model
    from edgehydra.checkpoint import save_checkpoint
    from edgehydra.data import PadToMultiple

    torch.manual_seed(0)
    model = create_model("hydranet_tiny", num_classes=6).eval()
    ck = save_checkpoint(model, tmp_path / "m.pt", provenance={"data": {"dataset": str(tmp_path / "kitti"),
                                                                         "size": [64, 224]}})
    r = CliRunner().invoke(cli, ["eval", "--checkpoint", str(ck), "--json", str(tmp_path / "e.json"), "--crop", "garg"])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["protocol"]["resolution"].startswith("native") and got["metrics"]["depth_crop"] == "garg"
    # by hand: each frame padded to a multiple of 32, run alone, output upsampled to the padded size, cropped
    m = Metrics(6, depth_cap=80.0, depth_crop="garg")
    val = FolderDataset(tmp_path / "kitti", "val", transform=PadToMultiple(32))
    with torch.no_grad():
        for i, (h, w) in enumerate(sizes):
            s = val[i]
            assert s["image"].shape[1] % 32 == 0 and s["image"].shape[2] % 32 == 0 and s["segm"].shape == (h, w)
            outs = model(s["image"][None])
            outs = [F.interpolate(o, size=s["image"].shape[1:], mode="bilinear", align_corners=False)[..., :h, :w]
                    for o in outs]
            m.update({"segm": outs[0], "depth": outs[1]}, {k: v[None] for k, v in s.items()})
    want = m.compute()
    for k in ("miou", "rmse", "abs_rel", "depth_pixels"):
        assert got["metrics"][k] == pytest.approx(want[k], rel=1e-6), k


def test_kitti_split_fallback_is_named_and_mixed_scales_refused(tmp_path):
    src = _kitti_src(tmp_path, [(40, 96)] * 3)
    rep = prepare_kitti(src, tmp_path / "a")
    assert "first 10 %" in rep["split"]["val"]
    meta = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert meta["depth_scale"] == 256.0 and "first 10 %" in meta["split"]["val"]
    # one frame written at 800 per metre: 70 m reads as 219 m at 256
    Image.fromarray((np.full((40, 96), 70.0) * 800).astype(np.uint16)).save(src / "depth" / "000001.png")
    with pytest.raises(BadInputError, match="reads as 219 m at --depth-scale 256"):
        prepare_kitti(src, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_kitti_folder_at_800_with_a_256_frame_is_refused_but_a_close_range_frame_passes(tmp_path):
    src = _kitti_src(tmp_path, [(40, 96)] * 4, scale=800.0)
    # a close-range frame (a wall 30 m ahead at most) is short by 2.3x, not by the 800/256 ratio: it passes
    Image.fromarray((np.full((40, 96), 30.0) * 800).astype(np.uint16)).save(src / "depth" / "000002.png")
    assert prepare_kitti(src, tmp_path / "a", depth_scale=800.0)["val"] == 1
    # a frame written at 256 per metre: its ~70 m reads as ~22 m at 800
    dep = np.random.default_rng(1).uniform(2, 70, (40, 96))
    Image.fromarray((dep * 256).astype(np.uint16)).save(src / "depth" / "000001.png")
    with pytest.raises(BadInputError, match="000001.png: its farthest return reads 22.4 m .* mixes depth scales"):
        prepare_kitti(src, tmp_path / "b", depth_scale=800.0)
    assert not (tmp_path / "b").exists()


def test_kitti_split_lines_in_all_three_formats_and_both_cameras(tmp_path):
    """Eigen / monodepth2 lines (drive, frame, side: l = image_02, r = image_03, frame padded or not) and Godard /
    monodepth lines (a stereo pair of .jpg paths: the first, left view is the frame) name the flattened frames;
    a right-camera frame comes from image_3/ (labels from depth_3/, segm_3/) under its own name."""
    import shutil

    src = _kitti_src(tmp_path, [(40, 96)] * 3)
    names = ["2011_09_26_drive_0002_sync_0000000069", "2011_09_26_drive_0002_sync_0000000070",
             "2011_09_28_drive_0001_sync_0000000005"]
    for i, n in enumerate(names):
        for d in ("image_2", "segm", "depth"):
            (src / d / f"{i:06d}.png").rename(src / d / f"{n}.png")
    for d, r in (("image_2", "image_3"), ("segm", "segm_3"), ("depth", "depth_3")):  # the right camera of frame 2
        (src / r).mkdir()
        shutil.copy(src / d / f"{names[2]}.png", src / r / f"{names[2]}.png")
    (tmp_path / "eigen_val.txt").write_text("2011_09_26/2011_09_26_drive_0002_sync 0000000069 l\n"
                                            "2011_09_28/2011_09_28_drive_0001_sync 5 r\n")
    rep = prepare_kitti(src, tmp_path / "k", val_list=tmp_path / "eigen_val.txt")
    assert rep["val"] == 2 and rep["train"] == 2  # left frames 1 and 2 (the right view of 2 is in val)
    val = (tmp_path / "k" / "val.txt").read_text()
    assert f"rgb/{names[0]}.png" in val and f"rgb/{names[2]}_image_3.png" in val and names[1] not in val
    assert (tmp_path / "k" / "depth" / f"{names[2]}_image_3.png").is_file()

    godard = ("2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000070.jpg "
              "2011_09_26/2011_09_26_drive_0002_sync/image_03/data/0000000070.jpg\n")
    (tmp_path / "godard_val.txt").write_text(godard)
    rep = prepare_kitti(src, tmp_path / "g", val_list=tmp_path / "godard_val.txt")
    assert rep["val"] == 1 and f"rgb/{names[1]}.png" in (tmp_path / "g" / "val.txt").read_text()
    (tmp_path / "bad.txt").write_text("2011_09_26/2011_09_26_drive_0002_sync 0000000069 x\n")
    with pytest.raises(BadInputError, match="side 'x'"):
        prepare_kitti(src, tmp_path / "x", val_list=tmp_path / "bad.txt")


# ------------------------------------------------------------------------------------------------ loss
def test_loss_is_ce_plus_lambda_berhu():
    from edgehydra.losses import berhu, multitask_loss

    torch.manual_seed(0)
    seg, dep = torch.randn(2, 5, 8, 8), torch.rand(2, 1, 8, 8) * 3
    batch = {"segm": torch.randint(0, 5, (2, 8, 8)), "depth": torch.rand(2, 1, 8, 8) * 3,
             "has_segm": torch.ones(2), "has_depth": torch.ones(2)}
    batch["depth"][0, 0, :4] = 0  # invalid pixels: outside berHu, and outside its threshold c
    valid = batch["depth"] > 0
    for lam in (0.5, 2.0):
        total, parts = multitask_loss((seg, dep), batch, ("segm", "depth"), lam=lam)
        ce = F.cross_entropy(seg, batch["segm"])
        e = (F.relu(dep) - batch["depth"]).abs()[valid]
        c = 0.2 * e.max()
        bh = torch.where(e <= c, e, (e ** 2 + c ** 2) / (2 * c)).mean()
        assert math.isclose(float(total), float(ce + lam * bh), rel_tol=1e-6)
        assert math.isclose(parts["depth"], float(berhu(dep, batch["depth"], valid)), rel_tol=1e-6)


# ------------------------------------------------------------------------------------------------ encoder
def _imagenet_dict(model, layout_name):
    """An ImageNet-style MobileNet-v2 state dict in torchvision's or timm's key layout, built from ``model``'s
    encoder (its t = 1 expand conv has no counterpart there), plus the head and classifier such files have."""
    from edgehydra.pretrained import key_map

    ours = model.state_dict()
    m, ident = key_map(model, layout_name)
    sd = {t: ours[o].clone() for o, t in m.items() if not any(o.startswith(f"{p}.output.0.") for p in ident)}
    head = "features.18.0.weight" if layout_name == "torchvision" else "conv_head.weight"
    sd[head] = torch.randn(1280, 320, 1, 1)
    sd["classifier.1.weight" if layout_name == "torchvision" else "classifier.weight"] = torch.randn(1000, 1280)
    return sd


@pytest.mark.parametrize("layout_name", ["torchvision", "timm"])
def test_encoder_weights_in_both_layouts_give_the_same_encoder(tmp_path, layout_name):
    from edgehydra import create_model
    from edgehydra.pretrained import load_encoder

    torch.manual_seed(0)
    src = create_model("hydranet_nyud").eval()
    # the source's t = 1 expand conv as the identity it becomes on loading, so the encoders must agree exactly
    conv, bn = src.layer2[0].output[0][0], src.layer2[0].output[0][1]
    with torch.no_grad():
        conv.weight.copy_(torch.eye(conv.out_channels).reshape(conv.weight.shape))
        bn.weight.fill_(1), bn.bias.zero_(), bn.running_mean.zero_(), bn.running_var.fill_(1 - bn.eps)
    f = tmp_path / "mnv2.pth"
    torch.save(_imagenet_dict(src, layout_name), f)
    torch.manual_seed(1)
    dst = create_model("hydranet_nyud").eval()
    rep = load_encoder(dst, f)
    assert rep["layout"] == layout_name and rep["identity_expand_convs"] == ["layer2.0"]
    assert rep["not_from_file"] == [] and len(rep["unused_in_file"]) == 2
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a = src.layer8(src.layer7(src.layer6(src.layer5(src.layer4(src.layer3(src.layer2(src.layer1(x))))))))
        b = dst.layer8(dst.layer7(dst.layer6(dst.layer5(dst.layer4(dst.layer3(dst.layer2(dst.layer1(x))))))))
    assert torch.equal(a, b)


def test_encoder_weights_of_another_architecture_refused_in_one_line(tmp_path):
    from edgehydra import create_model

    torch.manual_seed(0)
    sd = _imagenet_dict(create_model("hydranet_nyud"), "torchvision")
    f = tmp_path / "mnv2.pth"
    torch.save(sd, f)
    r = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "run"), "--model", "hydranet_tiny", "--epochs", "1",
                                 "--frames", "8", "--val-frames", "4", "--encoder-weights", str(f)])
    assert r.exit_code == 2 and "do not fit this model" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "run" / "fp32.pt").exists()
    torch.save({"fc.weight": torch.zeros(2, 2)}, f)
    r = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--encoder-weights", str(f)])
    assert r.exit_code == 2 and "key layout" in r.output


# ------------------------------------------------------------------------------------------------ class slices
def test_multi_dataset_checkpoint_is_scored_on_a_class_slice(tmp_path):
    """The 46-class NYUD+KITTI checkpoint's way: logits [a:b] scored against a dataset of b - a classes."""
    from edgehydra import create_model
    from edgehydra.checkpoint import save_checkpoint
    from edgehydra.dataspec import open_split

    torch.manual_seed(0)
    ds = {"dataset": "synthroom", "size": [64, 96], "frames": 8, "val_frames": 4, "seed": 0}
    n = open_split(ds, "val").num_classes
    model = create_model("hydranet_tiny", num_classes=n + 3).eval()
    ck = save_checkpoint(model, tmp_path / "m.pt", provenance={"data": ds})
    r = CliRunner().invoke(cli, ["eval", "--checkpoint", str(ck)])
    assert r.exit_code == 2 and "--classes START:STOP" in r.output
    r = CliRunner().invoke(cli, ["eval", "--checkpoint", str(ck), "--classes", f"3:{n + 3}", "--json", str(tmp_path / "e.json"),
                                 "--protocol", "paper"])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["protocol"]["classes"] == f"3:{n + 3}" and "miou" in got["metrics"]
    assert "no published figures" in r.output  # synthroom is ours, not the paper's


# ------------------------------------------------------------------------------------------------ normals
def test_normals_png_in_the_authors_coding_with_invalid_pixels_and_angular_metrics(tmp_path):
    """A 2x4 normals PNG: two grey (no normal) pixels, six known normals. The prediction is +z-ish everywhere;
    mean / median / within-threshold figures are computed by hand over the six valid pixels."""
    deg = [0.0, 10.0, 20.0, 25.0, 40.0, 90.0]
    # ground-truth normals, channels (x, z, y): the camera-facing normal (x 0, z -1, y 0) tilted by each angle
    gt = np.zeros((2, 4, 3), np.float32)
    cells = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    for (i, j), a in zip(cells, deg):
        r = math.radians(a)
        gt[i, j] = (math.sin(r), -math.cos(r), 0.0)
    png = layout.encode_normals(gt)
    assert (png[0, 3] == 127).all() and (png[1, 3] == 127).all()  # the zero vector is stored as mid grey
    Image.fromarray(png).save(tmp_path / "n.png")
    n = layout.read_normals(tmp_path / "n.png")
    assert (n[:, 3] == 0).all()  # grey read back as "no normal"
    # channel order: n0 from R, n1 from G, n2 from 1 - B (the authors' notebook, inverted)
    assert n[0, 0] == pytest.approx([2 * 128 / 255 - 1, -1.0, 1 - 2 * 128 / 255], abs=1e-6)
    pred = torch.zeros(1, 3, 2, 4)
    pred[0, 1] = -1.0  # facing the camera everywhere
    m = Metrics(2)
    m.update_normals(pred, torch.from_numpy(n).permute(2, 0, 1)[None])
    r = m.compute()
    # the PNG's 8-bit rounding moves each angle by < 0.5 degrees: the bound of these comparisons
    ang = [math.degrees(math.acos(max(-1.0, min(1.0, -float(n[i, j, 1]) / float(np.linalg.norm(n[i, j])))))) for i, j in cells]
    assert max(abs(a - b) for a, b in zip(ang, deg)) < 0.5
    assert r["normals_mean_angle"] == pytest.approx(sum(ang) / 6, abs=1e-4)  # float32 vectors: ~1e-5 degrees
    assert r["normals_median_angle"] == pytest.approx(sorted(ang)[2], abs=0.01)  # lower median of six, 0.01-degree bins
    assert r["normals_within_11.25"] == pytest.approx(200 / 6)  # 0, 10
    assert r["normals_within_22.5"] == pytest.approx(300 / 6)  # + 20
    assert r["normals_within_30"] == pytest.approx(400 / 6)  # + 25


def test_real_normals_sample_masks_its_grey_pixels():
    need_samples()
    png = np.asarray(Image.open(SAMPLES / "nyud" / "norm_gt_000433.png"))
    n = layout.read_normals(SAMPLES / "nyud" / "norm_gt_000433.png")
    grey = (png == 127).all(-1)
    assert 0.2 < grey.mean() < 0.25 and (n[grey] == 0).all()
    valid = np.linalg.norm(n, axis=-1) > 0
    assert np.allclose(np.linalg.norm(n[valid], axis=-1), 1, atol=0.02)
    # channel order (x, z, y) of the camera frame (y down, z forward), read off the authors' own labels: the
    # floor (NYUD-40 class 1) faces up (n2 = y ~ -1), the windows (class 8) face the camera (n1 = z ~ -1)
    seg = layout.read_mask(SAMPLES / "nyud" / "segm_gt_000433.png")
    floor, window = n[(seg == 1) & valid], n[(seg == 8) & valid]
    assert len(floor) > 1000 and np.median(floor[:, 2]) < -0.9 and abs(np.median(floor[:, 1])) < 0.3
    assert len(window) > 1000 and np.median(window[:, 1]) < -0.9


def test_normals_png_of_wrong_mode_or_size_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "g.png")
    with pytest.raises(BadInputError, match="expected an 8-bit RGB PNG"):
        layout.read_normals(tmp_path / "g.png")
    from edgehydra.data.datasets import to_sample

    with pytest.raises(BadInputError, match="rgb is 4x4 but normals is 2x2"):
        to_sample(np.zeros((4, 4, 3), np.uint8), normals=np.zeros((2, 2, 3), np.float32), name="f")


# ------------------------------------------------------------------------------------------------ second pass
def test_kitti_depth_per_image_against_pooled_on_three_frames_of_different_sizes():
    """Three frames of different sizes, hand-computed: per-image (the Eigen-split convention: each image's errors
    in the Garg crop, 1e-3 < gt < 80 m, prediction clipped to that range, then the mean over images) and pooled
    (every scored pixel of the set together). One frame with few scored pixels and large errors moves the pooled
    figure little and the per-image mean a lot."""
    from edgehydra.metrics import CROPS

    rng = np.random.default_rng(0)
    frames = []
    for (h, w), err in (((37, 124), 0.5), ((40, 130), 1.0), ((38, 120), 8.0)):
        gt = rng.uniform(2, 70, (h, w))
        gt[rng.random((h, w)) < (0.9 if err == 8.0 else 0.3)] = 0  # the last frame: sparse returns
        gt[0, 0] = 95.0  # beyond the 80 m cap: never scored
        pred = gt + err * rng.choice([-1, 1], (h, w))
        frames.append((pred, gt))
    per, pooled_se, pooled_n = [], 0.0, 0
    for pred, gt in frames:
        h, w = gt.shape
        top, bottom, left, right = CROPS["garg"]
        crop = np.zeros_like(gt, bool)
        crop[int(top * h):int(bottom * h), int(left * w):int(right * w)] = True
        v = crop & (gt > 1e-3) & (gt < 80)
        p = np.clip(pred, 1e-3, 80)[v]
        t = gt[v]
        per.append({"rmse": np.sqrt(((p - t) ** 2).mean()), "abs_rel": (np.abs(p - t) / t).mean(),
                    "rmse_log": np.sqrt(((np.log(p) - np.log(t)) ** 2).mean()),
                    "delta1": (np.maximum(p / t, t / p) < 1.25).mean() * 100})
        pooled_se, pooled_n = pooled_se + ((p - t) ** 2).sum(), pooled_n + v.sum()
    got = {}
    for agg in ("per_image", "pooled"):
        m = Metrics(6, depth_cap=80.0, depth_crop="garg", aggregation=agg)
        for pred, gt in frames:  # one image per update, as eval runs native-size KITTI frames
            m.update_depth(torch.from_numpy(pred)[None, None].float(), torch.from_numpy(gt)[None, None].float())
        got[agg] = m.compute()
    for k in ("rmse", "abs_rel", "rmse_log", "delta1"):
        assert got["per_image"][k] == pytest.approx(np.mean([f[k] for f in per]), rel=1e-5), k
    assert got["pooled"]["rmse"] == pytest.approx(np.sqrt(pooled_se / pooled_n), rel=1e-5)
    assert got["per_image"]["depth_aggregation"] == "per_image" and got["per_image"]["depth_images"] == 3
    assert "depth_aggregation" not in got["pooled"]  # the default says nothing, as an absent crop
    assert got["per_image"]["rmse"] > 1.2 * got["pooled"]["rmse"]  # the sparse, bad frame weighs a third


def test_eval_protocol_paper_on_kitti_scores_as_the_eigen_split_and_says_so(tmp_path):
    src = _kitti_src(tmp_path, [(70, 230), (66, 224), (75, 241)])
    (tmp_path / "val.txt").write_text("000000\n000001\n000002\n")
    prepare_kitti(src, tmp_path / "kitti", val_list=tmp_path / "val.txt")
    from edgehydra import create_model
    from edgehydra.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ck = save_checkpoint(create_model("hydranet_tiny", num_classes=6).eval(), tmp_path / "m.pt",
                         provenance={"data": {"dataset": str(tmp_path / "kitti"), "size": [64, 224]}})
    got = {}
    for proto in ("ours", "paper"):
        r = CliRunner().invoke(cli, ["eval", "--checkpoint", str(ck), "--json", str(tmp_path / f"{proto}.json"),
                                     "--protocol", proto])
        assert r.exit_code == 0, r.output
        got[proto] = json.loads((tmp_path / f"{proto}.json").read_text())
        assert "depth_aggregation:" in r.output and "depth_crop:" in r.output, r.output  # eval says how it scored
    assert got["paper"]["protocol"]["depth_crop"] == "garg" and got["paper"]["metrics"]["depth_crop"] == "garg"
    assert got["paper"]["protocol"]["depth_aggregation"].startswith("per_image")
    assert got["paper"]["metrics"]["depth_images"] == 3 and "rmse_log" in got["paper"]["metrics"]
    assert got["ours"]["protocol"]["depth_aggregation"].startswith("pooled")
    assert got["ours"]["protocol"]["depth_crop"].startswith("none")
    r = CliRunner().invoke(cli, ["eval", "--checkpoint", str(ck), "--protocol", "paper", "--crop", "eigen"])
    assert r.exit_code == 2 and "--protocol paper scores kitti depth with crop garg" in r.output, r.output


def test_normals_mask_is_the_authors_depth_holes_with_grey_as_an_option(tmp_path):
    """A 2x3 frame: (0,0) grey with depth (the authors keep it), (0,1) a real normal on a depth hole (the authors
    drop it), (0,2) grey on a hole (dropped by both), the second row real normals with depth (kept by both)."""
    root = tmp_path / "d"
    for sub in ("rgb", "depth", "normals"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.full((2, 3, 3), 100, np.uint8)).save(root / "rgb" / "a.png")
    dep = np.array([[2.0, 0.0, 0.0], [1.0, 3.0, 4.0]])
    Image.fromarray(layout.encode_depth(dep, 1000.0)).save(root / "depth" / "a.png")
    n = np.zeros((2, 3, 3), np.float32)
    n[0, 1] = n[1, 0] = n[1, 1] = n[1, 2] = (0.0, -1.0, 0.0)
    Image.fromarray(layout.encode_normals(n)).save(root / "normals" / "a.png")  # zero vectors -> mid grey
    layout.write_list(root / "val.txt", [layout.Row("rgb/a.png", None, "depth/a.png", "normals/a.png")])
    (root / "dataset.json").write_text(json.dumps({"name": "mini", "depth_scale": 1000.0, "num_classes": 40}))
    valid = {m: (FolderDataset(root, "val", normals_mask=m)[0]["normals"].abs().sum(0) > 0).numpy()
             for m in ("depth", "grey")}
    assert valid["depth"].tolist() == [[True, False, False], [True, True, True]]
    assert valid["grey"].tolist() == [[False, True, False], [True, True, True]]
    with pytest.raises(BadInputError, match="normals mask 'x'"):
        FolderDataset(root, "val", normals_mask="x")


def test_authors_frame_433_normals_masks_differ_where_grey_and_depth_disagree():
    """On the authors' test frame 433 the two masks disagree on the pixels that are grey with depth, or have
    no depth and a normal: measured here, the share the issue reports (~13 %)."""
    need_samples()
    png = np.asarray(Image.open(SAMPLES / "nyud" / "norm_gt_000433.png"))
    depth = np.asarray(Image.open(SAMPLES / "nyud" / "depth_gt_000433.png"))
    grey = (png == 127).all(-1)
    by_depth, by_grey = depth != 0, ~grey
    share = float((by_depth != by_grey).mean())
    assert 0.05 < share < 0.25, share


def test_scale_augmentation_divides_depth_by_the_scale_factor():
    """A synthroom frame (known metric geometry) enlarged 2x: the crop's depth is the original's at the same scene
    point halved (the scene seen from twice as close by the same camera), to the metre; mirror off, no noise."""
    from edgehydra.data.datasets import TrainAugment, to_sample
    from edgehydra.data.synthroom import SynthConfig, generate_frame

    f = generate_frame(0, 5, SynthConfig(size=(60, 80), noise=False))
    s = to_sample(f["rgb"], f["segm"], f["depth"], f["normals"])
    aug = TrainAugment((120, 160), scale=(2.0, 2.0), mirror=False)(s)  # the whole enlarged frame: no offset
    up = F.interpolate(s["depth"][None], size=(120, 160), mode="nearest")[0]
    assert torch.equal(aug["depth"], up / 2.0)
    # metric check: an object spanning k pixels at depth Z spans 2k pixels after the scale, so pinhole geometry
    # (width = span * Z / fx) gives it the same metric width only with depth Z / 2
    row = s["segm"][30]
    cls = int(row[40])
    span = int((row == cls).sum())
    span2 = int((aug["segm"][60] == cls).sum())
    assert span2 == 2 * span
    assert aug["depth"][0, 60, 80] * span2 == pytest.approx(float(s["depth"][0, 30, 40]) * span, rel=1e-5)


def test_normals_weight_is_a_training_option_with_the_authors_default():
    """loss = CE + lambda * berHu + w * (1 - cos): w is TrainConfig.normals_weight, 10 by default (the authors'
    0.5 / 0.5 / 5.0 weighs normals 10x the cross-entropy), refused when negative."""
    from edgehydra.losses import multitask_loss, normals_loss
    from edgehydra.train import TrainConfig

    torch.manual_seed(0)
    seg, dep, nor = torch.randn(2, 5, 8, 8), torch.rand(2, 1, 8, 8) * 3, torch.randn(2, 3, 8, 8)
    batch = {"segm": torch.randint(0, 5, (2, 8, 8)), "depth": torch.rand(2, 1, 8, 8) * 3 + 0.1,
             "normals": F.normalize(torch.randn(2, 3, 8, 8), dim=1), "has_segm": torch.ones(2),
             "has_depth": torch.ones(2), "has_normals": torch.ones(2)}
    tasks = ("segm", "depth", "normals")
    assert TrainConfig().normals_weight == 10.0
    base, _ = multitask_loss((seg, dep), {k: v for k, v in batch.items() if "normals" not in k}, tasks[:2])
    ln = float(normals_loss(nor, batch["normals"], batch["has_normals"]))
    for w in (10.0, 0.5):
        total, parts = multitask_loss((seg, dep, nor), batch, tasks, normals_weight=w)
        assert math.isclose(float(total), float(base) + w * ln, rel_tol=1e-6) and parts["normals"] == pytest.approx(ln)
    with pytest.raises(ValueError, match="normals_weight=-1"):
        TrainConfig(normals_weight=-1.0)


def test_every_stage_scores_kitti_natively_as_eval_does(tmp_path):
    """Frames of three sizes, none the program's: ptq's report scores the FP32 model as `eval` does (each frame
    padded to a multiple of 32, cropped back) and the program as `eval` of that program does (each frame padded to
    its 96x256 input, cropped back); export's artifact metrics the same way, and every one says so."""
    sizes = [(70, 230), (66, 224), (75, 241), (70, 230)]
    src = _kitti_src(tmp_path, sizes)
    (tmp_path / "val.txt").write_text("000000\n000001\n000002\n")
    prepare_kitti(src, tmp_path / "kitti", val_list=tmp_path / "val.txt")
    from edgehydra import create_model
    from edgehydra.calibration.quant_stages import QuantJob, ptq_run
    from edgehydra.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ck = save_checkpoint(create_model("hydranet_tiny", num_classes=6).eval(), tmp_path / "m.pt",
                         provenance={"data": {"dataset": str(tmp_path / "kitti"), "size": [96, 256]}})
    rep = ptq_run(ck, tmp_path / "run", QuantJob("w8a8", calib_frames=1))
    assert rep["protocol"] == {"fp32": "native (padded to a multiple of 32, cropped back)",
                               "program": "native (padded to 96x256, cropped back)"}
    got = {}
    for name, what in (("fp32", ck), ("ptq", Path(rep["program"]))):
        r = CliRunner().invoke(cli, ["eval", "--checkpoint", str(what), "--json", str(tmp_path / f"{name}.json")])
        assert r.exit_code == 0, r.output
        got[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert got["ptq"]["protocol"]["resolution"] == "native (padded to 96x256, cropped back)"
    for name in ("fp32", "ptq"):
        for k in ("miou", "rmse", "abs_rel"):
            assert rep["metrics"][name][k] == pytest.approx(got[name]["metrics"][k], rel=1e-6), (name, k)
    from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run

    res = export_run(tmp_path / "run" / "export", ["onnx"], ["int8"], source=ExportSource(run=tmp_path / "run"),
                     settings=ExportSettings(eval_frames=3))
    m = res[0].manifest["metrics"]
    assert m["protocol"] == "native (padded to 96x256, cropped back)" and m["frames"] == 3
    # the artifact runs the program's integer maths: its scores sit on the program's, not on a stretched frame's
    assert m["miou"] == pytest.approx(rep["metrics"]["ptq"]["miou"], abs=2.0)


def test_an_fp32_model_is_scored_on_nhwc_frames_and_a_program_on_nchw(tiny_run, tmp_path, monkeypatch):
    """evaluate(nhwc=True) hands an FP32 model channels-last frames (oneDNN's faster kernels) and scores what NCHW
    frames score, up to float rounding; `eval` does so for a checkpoint and keeps a program's NCHW frames (there a
    rounding difference moves int8 steps: edgehydra.train.evaluate)."""
    from edgehydra import create_model
    from edgehydra.checkpoint import save_checkpoint
    from edgehydra.data.datasets import SynthRoom
    from edgehydra.metrics import Scoring
    from edgehydra import train

    torch.manual_seed(0)
    model = create_model("hydranet_tiny").eval()
    val = SynthRoom(4, size=(64, 96), seed=3)
    seen = []

    def fwd(x):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return model(x)

    scoring = Scoring(model.config.tasks, 40, 10.0)
    nchw, nhwc = (train.evaluate(fwd, val, scoring, nhwc=f) for f in (False, True))
    assert seen == [False, True]  # one batch each (4 frames)
    # float rounding only: the same sums in another order, ~1000 float32 ulps at the most across the network's layers
    assert nhwc["rmse"] == pytest.approx(nchw["rmse"], rel=1e-4) and nhwc["abs_rel"] == pytest.approx(nchw["abs_rel"], rel=1e-4)
    assert abs(nhwc["miou"] - nchw["miou"]) < 0.1  # a label moves only where two logits tie within that rounding

    calls = []
    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: calls.append(k.get("nhwc")) or real(*a, **k))
    ck = save_checkpoint(model, tmp_path / "m.pt", provenance={"data": {"dataset": "synthroom", "size": [64, 96],
                                                                       "frames": 8, "val_frames": 4, "seed": 0}})
    r = CliRunner().invoke(cli, ["eval", "--checkpoint", str(ck), "--limit", "2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["eval", "--checkpoint", str(tiny_run / "ptq" / "program.pt2"), "--limit", "2"])
    assert r.exit_code == 0, r.output
    assert calls == [True, False]  # the checkpoint NHWC, the int8 program NCHW
