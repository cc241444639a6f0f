"""On the robot without a run: intrinsics arithmetic, synthroom sequences, warping, ROS 2 messages in MCAP,
sources (video, bag, folder) and their bad input, point clouds. The artifact-driven stream and stability tests
run on the demo's full run (tests/test_demo.py)."""
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from edgehydra.camera import Intrinsics, backproject, from_camera_info_yaml, from_kitti_calib, load_intrinsics, project, transform
from edgehydra.commands import cli
from edgehydra.data.sequence import SequenceConfig, read_sequence, synth_sequence
from edgehydra.errors import BadInputError

SIZE = (120, 160)


@pytest.fixture(scope="module")
def seq():
    return list(synth_sequence(SequenceConfig(frames=6, size=SIZE, noise=False)))


# --------------------------------------------------------------------------------------------- camera
def test_resize_and_crop_follow_the_pixels():
    """A point projects, in the resized image, to where its pixel centre moves under an align_corners=False
    resize ((u + 0.5) s - 0.5), and in a crop to u - left."""
    intr = load_intrinsics("nyud")
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-1, 1, 50), rng.uniform(-0.8, 0.8, 50), rng.uniform(0.5, 8, 50)]
    u, v, _ = project(pts, intr)
    small = intr.resized((240, 320))
    us, vs, _ = project(pts, small)
    np.testing.assert_allclose(us, (u + 0.5) * 0.5 - 0.5, atol=1e-9)
    np.testing.assert_allclose(vs, (v + 0.5) * 0.5 - 0.5, atol=1e-9)
    crop = intr.cropped(10, 20, (400, 600))
    uc, vc, _ = project(pts, crop)
    np.testing.assert_allclose(uc, u - 20, atol=1e-9)
    np.testing.assert_allclose(vc, v - 10, atol=1e-9)
    with pytest.raises(BadInputError, match="leaves the 480x640 image"):
        intr.cropped(100, 0, (400, 640))
    with pytest.raises(BadInputError, match="for 480x640 images, the depth map is 240x320"):
        backproject(np.ones((240, 320)), intr)
    with pytest.raises(ValueError, match="fx"):
        Intrinsics(0.0, 1.0, 0.0, 0.0, 10, 10)


def test_kitti_calibration_and_camera_info(tmp_path):
    # KITTI raw 2011_09_26 calib_cam_to_cam.txt (P_rect_02 differs per recording date: 2011_09_30's fx is 707.09)
    calib = tmp_path / "2011_09_26" / "calib_cam_to_cam.txt"
    calib.parent.mkdir()
    calib.write_text("calib_time: 09-Jan-2012 13:57:47\n"
                     "S_rect_02: 1.242000e+03 3.750000e+02\n"
                     "P_rect_02: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 "
                     "1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03\n")
    k = from_kitti_calib(calib)
    assert (k.fx, k.cx, k.cy, k.width, k.height) == (721.5377, 609.5593, 172.854, 1242, 375)
    assert load_intrinsics(str(calib)) == k
    with pytest.raises(BadInputError, match="no P_rect_03"):
        from_kitti_calib(calib, camera=3)
    info = tmp_path / "cam.yaml"
    info.write_text("image_width: 640\nimage_height: 480\ncamera_name: head_camera\ncamera_matrix:\n  rows: 3\n"
                    "  cols: 3\n  data: [525.0, 0.0, 319.5, 0.0, 525.0, 239.5, 0.0, 0.0, 1.0]\n"
                    "distortion_model: plumb_bob\n")
    c = from_camera_info_yaml(info)
    assert (c.fx, c.fy, c.cx, c.cy, c.size, c.name) == (525.0, 525.0, 319.5, 239.5, (480, 640), "head_camera")
    (tmp_path / "bad.yaml").write_text("image_width: 640\n")
    with pytest.raises(BadInputError, match="not a ROS camera_info YAML"):
        from_camera_info_yaml(tmp_path / "bad.yaml")


def test_sequence_backprojects_onto_the_room(seq):
    """The sequence's intrinsics and poses are the renderer's: every floor pixel back-projects to world y = 0 (to
    float32 rounding, 1e-7 m here); half a pixel off in cx, cy (the other centre convention) puts it 1-2 cm off."""
    for f in seq[::5]:
        floor = f["segm"] == 1
        assert floor.sum() > 100
        for shift, ok in ((0.0, True), (0.5, False)):
            intr = replace(f["intrinsics"], cx=f["intrinsics"].cx + shift, cy=f["intrinsics"].cy + shift)
            y = transform(backproject(f["depth_clean"], intr), f["pose"].R, f["pose"].t)[..., 1][floor]
            assert (np.abs(y).max() < 1e-3) == ok, (shift, np.abs(y).max())


def test_sequence_moves_smoothly_and_is_deterministic(seq):
    again = list(synth_sequence(SequenceConfig(frames=6, size=SIZE, noise=False)))
    assert all(np.array_equal(a["rgb"], b["rgb"]) for a, b in zip(seq, again))
    steps = [np.linalg.norm(b["pose"].t - a["pose"].t) for a, b in zip(seq, seq[1:])]
    assert 0 < max(steps) < 0.02  # metres per frame at 30 fps: at most 0.2 m/s (sequence.py)
    assert [f["stamp_ns"] for f in seq[:3]] == [0, 33_333_333, 66_666_667]


def test_warping_takes_out_the_camera_motion(seq):
    """Ground-truth labels are perfectly stable: matched by the known motion only label edges (nearest-pixel
    sampling) change; unmatched (same pixel in both frames) the camera's motion alone changes many more."""
    from edgehydra.temporal import Correspondence, match_by_flow, match_by_motion, segm_flicker

    h, w = SIZE
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    same_pixel = Correspondence(ii, jj, np.ones(SIZE, bool))
    a, b = seq[0], seq[5]
    motion = match_by_motion(b["depth_clean"], a["pose"], b["pose"], b["intrinsics"], a["depth_clean"])
    fm, f0 = segm_flicker(a["segm"], b["segm"], motion), segm_flicker(a["segm"], b["segm"], same_pixel)
    assert motion.valid.mean() > 0.9 and fm < 0.01 and f0 > 3 * fm, (fm, f0)
    flow = match_by_flow(a["rgb"], b["rgb"])
    assert flow.valid.mean() > 0.5 and segm_flicker(a["segm"], b["segm"], flow) < f0


def test_sequence_on_disk_round_trip(tmp_path, seq):
    out = tmp_path / "seq"
    r = CliRunner().invoke(cli, ["data", "synth", "--out", str(out), "--sequence", "6", "--size", "120x160"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec = read_sequence(out)
    assert rec["intrinsics"] == seq[0]["intrinsics"] and len(rec["frames"]) == 6
    np.testing.assert_allclose(rec["frames"][3]["pose"].t, seq[3]["pose"].t)
    from edgehydra.robot.sources import open_source

    src = open_source(str(out), SIZE)
    frames = list(src.frames)
    assert len(frames) == 6 and frames[2].pose is not None and "segm" in frames[2].truth
    assert (out / "val.txt").is_file()  # also a dataset folder: `eval --dataset` reads it


# ---------------------------------------------------------------------------------------- ROS 2 / MCAP
def _cloud_inputs(f):
    conf = np.linspace(0, 1, f["segm"].size, dtype=np.float32).reshape(f["segm"].shape)
    return f["depth"], f["rgb"], f["segm"], conf, f["intrinsics"]


def test_ros2_messages_round_trip(tmp_path):
    """Every message a stream writes, read back with mcap-ros2-support's decoder: depth in metres with NaN where
    invalid (and millimetres), labels, the organized cloud's fields, K scaled, the class names."""
    from edgehydra.robot.pointcloud import organized_cloud
    from edgehydra.robot.ros2 import (Recorder, camera_info_msg, cloud_msg, depth_msg, image_msg, label_info_msg,
                                      read_messages, read_topics)

    f = next(iter(synth_sequence(SequenceConfig(frames=2, size=SIZE))))  # noisy: depth has holes (0)
    assert (f["depth"] == 0).any()
    cloud = organized_cloud(*_cloud_inputs(f))
    path = tmp_path / "rec.mcap"
    with Recorder(path) as r:
        r.write("/l", "vision_msgs/msg/LabelInfo", label_info_msg(["wall", "floor"], 0), 0)
        r.write("/d", "sensor_msgs/msg/Image", depth_msg(f["depth"], 5), 5)
        r.write("/mm", "sensor_msgs/msg/Image", depth_msg(f["depth"], 5, "16UC1"), 5)
        r.write("/s", "sensor_msgs/msg/Image", image_msg(f["segm"], "mono8", 5), 5)
        r.write("/i", "sensor_msgs/msg/CameraInfo", camera_info_msg(f["intrinsics"], 5), 5)
        r.write("/p", "sensor_msgs/msg/PointCloud2", cloud_msg(cloud, 5), 5)
    assert not path.with_name("rec.mcap.partial").exists()
    assert read_topics(path) == {t: 1 for t in ("/l", "/d", "/mm", "/s", "/i", "/p")}
    got = {topic: msg for topic, msg, _ in read_messages(path)}
    d = np.frombuffer(bytes(got["/d"].data), "<f4").reshape(SIZE)
    np.testing.assert_array_equal(np.isnan(d), f["depth"] == 0)
    np.testing.assert_array_equal(d[f["depth"] > 0], f["depth"][f["depth"] > 0])
    mm = np.frombuffer(bytes(got["/mm"].data), "<u2").reshape(SIZE)
    # half a millimetre of rounding, plus float32's step at 10 m (the depth map's own precision)
    assert np.abs(mm / 1000.0 - f["depth"]).max() <= 0.0005 + float(np.spacing(np.float32(10.0)))
    assert np.array_equal(np.frombuffer(bytes(got["/s"].data), np.uint8).reshape(SIZE), f["segm"])
    assert list(got["/i"].k)[0] == f["intrinsics"].fx and got["/i"].width == SIZE[1]
    assert [c.class_name for c in got["/l"].class_map] == ["wall", "floor"]
    p = got["/p"]
    assert (p.height, p.width, p.point_step) == (*SIZE, 24) and [x.name for x in p.fields][:3] == ["x", "y", "z"]
    back = np.frombuffer(bytes(p.data), cloud.dtype).reshape(SIZE)
    np.testing.assert_array_equal(back["label"], f["segm"])
    np.testing.assert_allclose(back["z"][f["depth"] > 0], f["depth"][f["depth"] > 0])


def test_recording_is_closed_when_the_block_fails(tmp_path):
    from edgehydra.robot.ros2 import Recorder, image_msg, read_messages

    path = tmp_path / "rec.mcap"
    with pytest.raises(KeyboardInterrupt):
        with Recorder(path) as r:
            for i in range(3):
                r.write("/s", "sensor_msgs/msg/Image", image_msg(np.full((4, 4), i, np.uint8), "mono8", i), i)
            raise KeyboardInterrupt
    assert [bytes(m.data)[0] for _, m, _ in read_messages(path)] == [0, 1, 2]
    assert not list(tmp_path.glob("*.partial"))


# -------------------------------------------------------------------------------------------- sources
def test_bag_and_video_sources_and_their_bad_input(tmp_path, seq):
    import cv2

    from edgehydra.robot.ros2 import Recorder, camera_info_msg, image_msg
    from edgehydra.robot.sources import open_source

    bag = tmp_path / "cam.mcap"
    with Recorder(bag) as r:
        for f in seq[:3]:
            r.write("/cam/info", "sensor_msgs/msg/CameraInfo", camera_info_msg(f["intrinsics"], f["stamp_ns"]), f["stamp_ns"])
            r.write("/cam/image", "sensor_msgs/msg/Image", image_msg(f["rgb"][..., ::-1], "bgr8", f["stamp_ns"]),
                    f["stamp_ns"])
    src = open_source(str(bag), SIZE)
    frames = list(src.frames)
    assert len(frames) == 3 and np.array_equal(frames[1].rgb, seq[1]["rgb"]) and frames[1].stamp_ns == seq[1]["stamp_ns"]
    assert src.intrinsics.fx == pytest.approx(seq[0]["intrinsics"].fx)
    with pytest.raises(BadInputError, match="not an image topic"):
        open_source(str(bag), SIZE, topic="/cam/info")
    nobag = tmp_path / "info_only.mcap"
    with Recorder(nobag) as r:
        r.write("/cam/info", "sensor_msgs/msg/CameraInfo", camera_info_msg(seq[0]["intrinsics"], 0), 0)
    with pytest.raises(BadInputError, match=r"no sensor_msgs/Image topic \(topics: /cam/info\)"):
        open_source(str(nobag), SIZE)

    video = tmp_path / "walk.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30, (SIZE[1], SIZE[0]))
    for f in seq:
        w.write(np.ascontiguousarray(f["rgb"][..., ::-1]))
    w.release()
    src = open_source(str(video), SIZE)
    frames = list(src.frames)
    assert src.fps == 30 and len(frames) == len(seq) and frames[0].rgb.shape == (*SIZE, 3)
    # lossy codec: close to the frames written, in RGB order (a BGR mix-up would be ~50 grey levels off)
    assert np.abs(frames[2].rgb.astype(int) - seq[2]["rgb"]).mean() < 12
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    with pytest.raises(BadInputError, match="cannot decode a frame of this video"):
        open_source(str(broken), SIZE)
    with pytest.raises(BadInputError, match="unknown kind '.txt'"):
        (tmp_path / "x.txt").write_text("")
        open_source(str(tmp_path / "x.txt"), SIZE)
    with pytest.raises(BadInputError, match="options are"):
        open_source("synthroom:frame=3", SIZE)


# ---------------------------------------------------------------------------------------- point clouds
def test_point_cloud_figures(tmp_path, seq):
    from plyfile import PlyData

    from edgehydra.robot.pointcloud import chamfer_m, depth_error_bands, label_agreement_3d, organized_cloud, write_ply

    f = seq[0]
    cloud = organized_cloud(f["depth_clean"], f["rgb"], f["segm"], np.ones(SIZE, np.float32), f["intrinsics"])
    assert chamfer_m(cloud, cloud) == 0.0 and label_agreement_3d(cloud, cloud) == 1.0
    # every point 1 cm deeper: it moves 1 cm x its ray's length (1 on the axis, longest at the corners), and its
    # nearest neighbour in the other cloud is no further than that
    far = organized_cloud(f["depth_clean"] + 0.01, f["rgb"], f["segm"], np.ones(SIZE, np.float32), f["intrinsics"])
    ray = np.linalg.norm(backproject(np.ones(SIZE), f["intrinsics"]), axis=-1).max()
    assert 0.001 < chamfer_m(cloud, far) <= 0.01 * ray + 1e-6
    ply = write_ply(tmp_path / "c.ply", cloud, ["wall", "floor"])
    v = PlyData.read(str(ply))["vertex"]
    assert v.count == int((f["depth_clean"] > 0).sum()) and set(np.unique(v["label"])) == set(np.unique(f["segm"]))
    ref = np.array([[1.0, 3.0, 7.0, 0.0]])
    pred = np.array([[1.5, 2.0, 7.0, 4.0]])
    b = depth_error_bands(pred, ref)
    assert [x["pixels"] for x in b] == [1, 1, 1] and b[0]["mae_m"] == 0.5 and b[1]["rmse_m"] == 1.0 and b[2]["mae_m"] == 0
