"""ROS 2 messages in an MCAP file, written with mcap + mcap-ros2-support (no ROS install): what a robot's
nodes subscribe to, readable by `ros2 bag play`, Foxglove and rosbags.

Topics (frame ``camera_optical_frame``, x right, y down, z forward):

    /camera/image_raw        sensor_msgs/Image rgb8, the network's input size
    /camera/camera_info      sensor_msgs/CameraInfo, K and P scaled to that size
    /hydranet/depth          sensor_msgs/Image 32FC1 metres, NaN where invalid (16UC1 millimetres, 0 invalid, on request)
    /hydranet/segmentation   sensor_msgs/Image mono8 class ids
    /hydranet/confidence     sensor_msgs/Image 32FC1, the softmax probability of the chosen class
    /hydranet/normals        sensor_msgs/Image 32FC3 unit normals in the camera frame (models with normals)
    /hydranet/points         sensor_msgs/PointCloud2, organized, x y z rgb label confidence
    /hydranet/label_info     vision_msgs/LabelInfo, class id -> name (once, at the start)

The file is written to NAME.partial and renamed when closed, on success, error or Ctrl-C alike: a
recording on disk is always finished (summary and index written) and readable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgehydra.camera import Intrinsics

_SEP = "=" * 80 + "\n"
_TIME = "int32 sec\nuint32 nanosec\n"
_HEADER = "builtin_interfaces/Time stamp\nstring frame_id\n"
_IMAGE = "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\nuint32 step\nuint8[] data\n"
_ROI = "uint32 x_offset\nuint32 y_offset\nuint32 height\nuint32 width\nbool do_rectify\n"
_CAMERA_INFO = ("std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\nfloat64[] d\nfloat64[9] k\n"
                "float64[9] r\nfloat64[12] p\nuint32 binning_x\nuint32 binning_y\nsensor_msgs/RegionOfInterest roi\n")
_POINT_FIELD = ("uint8 INT8=1\nuint8 UINT8=2\nuint8 INT16=3\nuint8 UINT16=4\nuint8 INT32=5\nuint8 UINT32=6\n"
                "uint8 FLOAT32=7\nuint8 FLOAT64=8\nstring name\nuint32 offset\nuint8 datatype\nuint32 count\n")
_POINT_CLOUD2 = ("std_msgs/Header header\nuint32 height\nuint32 width\nsensor_msgs/PointField[] fields\nbool is_bigendian\n"
                 "uint32 point_step\nuint32 row_step\nuint8[] data\nbool is_dense\n")
_VISION_CLASS = "uint16 class_id\nstring class_name\n"
_LABEL_INFO = "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n"


def _msgdef(main: str, *deps: tuple[str, str]) -> str:
    # ROS 2's concatenated definition (what rosbag2 stores in an MCAP schema): the type, then each dependency
    return main + "".join(f"{_SEP}MSG: {name}\n{text}" for name, text in deps)


MSGDEFS = {
    "sensor_msgs/msg/Image": _msgdef(_IMAGE, ("std_msgs/Header", _HEADER), ("builtin_interfaces/Time", _TIME)),
    "sensor_msgs/msg/CameraInfo": _msgdef(_CAMERA_INFO, ("std_msgs/Header", _HEADER), ("builtin_interfaces/Time", _TIME),
                                          ("sensor_msgs/RegionOfInterest", _ROI)),
    "sensor_msgs/msg/PointCloud2": _msgdef(_POINT_CLOUD2, ("std_msgs/Header", _HEADER),
                                           ("builtin_interfaces/Time", _TIME), ("sensor_msgs/PointField", _POINT_FIELD)),
    "vision_msgs/msg/LabelInfo": _msgdef(_LABEL_INFO, ("std_msgs/Header", _HEADER), ("builtin_interfaces/Time", _TIME),
                                         ("vision_msgs/VisionClass", _VISION_CLASS)),
}
FRAME_ID = "camera_optical_frame"
# sensor_msgs/PointField datatypes
FLOAT32, UINT32 = 7, 6
# The organized cloud's point: PCL's PointXYZRGBL layout (rgb packed in a float32, label uint32) plus confidence.
CLOUD_FIELDS = (("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, FLOAT32), ("rgb", 12, FLOAT32), ("label", 16, UINT32),
                ("confidence", 20, FLOAT32))
CLOUD_DTYPE = np.dtype({"names": [f[0] for f in CLOUD_FIELDS], "offsets": [f[1] for f in CLOUD_FIELDS],
                        "formats": ["<f4", "<f4", "<f4", "<f4", "<u4", "<f4"], "itemsize": 24})


def header(stamp_ns: int) -> dict:
    return {"stamp": {"sec": int(stamp_ns // 1_000_000_000), "nanosec": int(stamp_ns % 1_000_000_000)},
            "frame_id": FRAME_ID}


def image_msg(arr: np.ndarray, encoding: str, stamp_ns: int) -> dict:
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    return {"header": header(stamp_ns), "height": h, "width": w, "encoding": encoding, "is_bigendian": 0,
            "step": arr.strides[0], "data": arr.tobytes()}


def depth_msg(depth: np.ndarray, stamp_ns: int, encoding: str = "32FC1") -> dict:
    """32FC1 metres with NaN where invalid (REP 118), or 16UC1 millimetres with 0 where invalid."""
    bad = ~(np.isfinite(depth) & (depth > 0))
    if encoding == "32FC1":
        return image_msg(np.where(bad, np.nan, depth).astype("<f4"), "32FC1", stamp_ns)
    if encoding == "16UC1":
        mm = np.clip(np.rint(np.where(bad, 0, depth) * 1000.0), 0, 65535).astype("<u2")
        return image_msg(mm, "16UC1", stamp_ns)
    raise ValueError(f"depth encoding {encoding!r}: use 32FC1 or 16UC1")


def camera_info_msg(intr: Intrinsics, stamp_ns: int) -> dict:
    k = [intr.fx, 0.0, intr.cx, 0.0, intr.fy, intr.cy, 0.0, 0.0, 1.0]
    p = [intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return {"header": header(stamp_ns), "height": intr.height, "width": intr.width, "distortion_model": "plumb_bob",
            "d": [0.0] * 5, "k": k, "r": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], "p": p, "binning_x": 0, "binning_y": 0,
            "roi": {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0, "do_rectify": False}}


def cloud_msg(cloud: np.ndarray, stamp_ns: int) -> dict:
    """An organized PointCloud2 of a (H, W) CLOUD_DTYPE array (NaN x y z where there is no point)."""
    h, w = cloud.shape
    fields = [{"name": n, "offset": o, "datatype": t, "count": 1} for n, o, t in CLOUD_FIELDS]
    return {"header": header(stamp_ns), "height": h, "width": w, "fields": fields, "is_bigendian": False,
            "point_step": CLOUD_DTYPE.itemsize, "row_step": CLOUD_DTYPE.itemsize * w,
            "data": np.ascontiguousarray(cloud).tobytes(), "is_dense": bool(np.isfinite(cloud["z"]).all())}


def label_info_msg(class_names, stamp_ns: int) -> dict:
    return {"header": header(stamp_ns), "class_map": [{"class_id": i, "class_name": n} for i, n in enumerate(class_names)],
            "threshold": 0.0}


class Recorder:
    """An MCAP file of ROS 2 messages, finished and moved into place however the block ends."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.messages = 0
        self._schemas: dict[str, object] = {}

    def __enter__(self) -> Recorder:
        from mcap_ros2.writer import Writer  # robot extra

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.partial, "wb")
        self._writer = Writer(self._file)
        return self

    def write(self, topic: str, datatype: str, msg: dict, stamp_ns: int) -> None:
        if datatype not in self._schemas:
            self._schemas[datatype] = self._writer.register_msgdef(datatype, MSGDEFS[datatype])
        self._writer.write_message(topic, self._schemas[datatype], msg, log_time=stamp_ns, publish_time=stamp_ns,
                                   sequence=self.messages)
        self.messages += 1

    def __exit__(self, *exc) -> None:
        try:
            self._writer.finish()  # summary, index and footer: the file is valid from here on
        finally:
            self._file.close()
        self.partial.replace(self.path)


def read_messages(path: Path, topics=None):
    """(topic, decoded ROS 2 message, log time) of an MCAP file, in log-time order."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(path, "rb") as f:
        for _schema, channel, message, msg in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages(
                topics=topics):
            yield channel.topic, msg, message.log_time


def read_topics(path: Path) -> dict[str, int]:
    """Message count per topic of an MCAP file (its summary), for reports and tests."""
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        summ = make_reader(f).get_summary()
    if summ is None or summ.statistics is None:
        return {}
    return {summ.channels[cid].topic: n for cid, n in summ.statistics.channel_message_counts.items()}
