"""Pictures of a stream and of a stability run: the per-frame timeline, flicker per frame, a rendered cloud."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgehydra._io import save_figure

from .stream import STEPS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def stream_timeline(rec: dict, out: Path, title: str = "") -> Path:
    """Stacked step times per processed frame, end to end, the frame period, and the dropped frames."""
    plt = _plt()
    rows = rec["frames"]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    idx = np.array([r["index"] for r in rows])
    bottom = np.zeros(len(rows))
    for s in STEPS:
        v = np.array([r[f"{s}_ms"] for r in rows])
        ax.bar(idx, v, bottom=bottom, width=1.0, label=s, linewidth=0)
        bottom += v
    ax.plot(idx, [r["e2e_ms"] for r in rows], "k.", ms=3, label="end to end")
    if rec.get("target_fps"):
        ax.axhline(1000.0 / rec["target_fps"], color="r", ls="--", lw=1, label=f"{rec['target_fps']:g} fps period")
    for d in rec.get("dropped_frames", []):
        ax.axvline(d, color="0.7", lw=0.5, zorder=0)
    ax.set_xlabel("frame (grey lines: dropped)")
    ax.set_ylabel("ms")
    e = rec["e2e_ms"]
    ax.set_title(title or f"p50 {e['p50']:.1f} / p95 {e['p95']:.1f} / p99 {e['p99']:.1f} ms end to end, "
                          f"{rec['dropped']} dropped, {rec['deadline_misses'] or 0} missed", fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="upper right")
    fig.tight_layout()
    return save_figure(fig, out, dpi=90)


def stability_figure(rec: dict, cloud: np.ndarray | None, out: Path, title: str = "") -> Path:
    """Flicker per consecutive pair for each model, and one frame's semantic cloud seen from above the camera."""
    from edgehydra.visualize import palette

    plt = _plt()
    fig = plt.figure(figsize=(11, 3.8))
    ax = fig.add_subplot(1, 2, 1)
    for m in rec["models"]:
        s = [np.nan if v is None else v * 100 for v in m["temporal"].get("flicker_per_pair", [])]
        ax.plot(np.arange(1, len(s) + 1), s, lw=1.2, label=f"{m['name']} ({m['temporal'].get('flicker', 0) * 100:.2f} %)")
    ax.set_xlabel("frame")
    ax.set_ylabel("labels changed (% of matched pixels)")
    ax.set_title(f"segmentation flicker, matched by {rec['matched_by']}", fontsize=8)
    ax.legend(fontsize=7)
    if cloud is not None:
        ax3 = fig.add_subplot(1, 2, 2, projection="3d")
        pts = cloud.reshape(-1)
        pts = pts[np.isfinite(pts["z"])][::7]
        ax3.scatter(pts["x"], pts["z"], -pts["y"], c=palette()[pts["label"].astype(np.uint8)] / 255.0, s=0.4,
                    depthshade=False)
        ax3.set_xlabel("x (m)")
        ax3.set_ylabel("z (m)")
        ax3.set_zlabel("up (m)")
        ax3.view_init(elev=25, azim=-70)
        ax3.set_title(f"{title or 'semantic point cloud'}, first frame", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, dpi=90)
