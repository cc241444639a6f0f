"""Sustained-load benchmarks: latency over minutes, not the best of 20 calls.

A robot runs its camera stream for hours; a phone or a Jetson that throttles halves the frame rate a
burst benchmark promised. ``sustained(run, duration_s, fps)`` calls the artifact for ``duration_s``
seconds, back to back or paced like a camera at ``fps`` (a frame whose slot passes while the previous
call is still running is dropped, as a camera pipeline with a one-frame queue drops it), and reports
p50/p90/p99, throughput, dropped frames and the throttling signal: the median latency of the last
window over that of the first (windows of 10 s, or a third of a shorter run).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

MAX_TIMELINE_POINTS = 2000  # what the JSON keeps for the plot: every call, or evenly spaced ones


def parse_duration(text: str) -> float:
    """'60s', '60', '2m', '1.5m' -> seconds (> 0)."""
    t = str(text).strip().lower()
    mult = 1.0
    if t.endswith("ms"):
        raise ValueError(f"duration {text!r}: in seconds or minutes (60s, 2m), not milliseconds")
    if t.endswith("m"):
        t, mult = t[:-1], 60.0
    elif t.endswith("s"):
        t = t[:-1]
    try:
        v = float(t) * mult
    except ValueError:
        raise ValueError(f"duration {text!r}: a number of seconds, e.g. 60s or 2m") from None
    if not v > 0 or not np.isfinite(v):
        raise ValueError(f"duration {text!r}: must be > 0")
    return v


def window_s(duration_s: float) -> float:
    return min(10.0, duration_s / 3)


def sustained(run, duration_s: float, fps: float | None = None, clock=time.perf_counter) -> dict:
    """Call ``run()`` for ``duration_s`` seconds; ``fps`` paces the calls (None: back to back)."""
    t0 = clock()
    start, lat = [], []
    dropped = 0
    period = 1.0 / fps if fps else None
    next_slot = t0
    while True:
        now = clock()
        if now - t0 >= duration_s:
            break
        if period:
            if now < next_slot:
                time.sleep(next_slot - now)
                now = clock()
            # the slots that passed while the last call ran: those frames were never processed
            missed = int((now - next_slot) // period)
            dropped += missed
            next_slot += (missed + 1) * period
        s = clock()
        run()
        e = clock()
        start.append(s - t0)
        lat.append((e - s) * 1e3)
    elapsed = clock() - t0
    a = np.asarray(lat)
    st = np.asarray(start)
    w = window_s(duration_s)
    first, last = a[st < w], a[st >= elapsed - w]
    res = {"duration_s": elapsed, "calls": int(a.size), "throughput_fps": a.size / elapsed,
           "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
           "p99_ms": float(np.percentile(a, 99)), "min_ms": float(a.min()), "mean_ms": float(a.mean()),
           "window_s": w, "first_window_p50_ms": float(np.median(first)) if first.size else None,
           "last_window_p50_ms": float(np.median(last)) if last.size else None}
    if first.size and last.size:
        # > 1: the last window is slower than the first (throttling, or a background job on the host)
        res["throttle_ratio"] = res["last_window_p50_ms"] / res["first_window_p50_ms"]
    if fps:
        res.update(target_fps=float(fps), dropped_frames=int(dropped),
                   dropped_share=dropped / max(1, dropped + a.size))
    step = max(1, a.size // MAX_TIMELINE_POINTS)
    res["timeline"] = {"t_s": st[::step].round(4).tolist(), "latency_ms": a[::step].round(4).tolist()}
    return res


def from_windows(windows: list[dict], elapsed: float, summary: dict | None = None) -> dict:
    """A sustained run on a device, where the tool reports windows rather than calls: ``windows`` holds
    {t_s (start, s), latency_ms (the window's median, or mean where the tool gives only that), calls,
    busy_s (the window's inference time)}. Throughput is calls over inference time (a tool started once
    per window pays its load between windows; that gap is not frame time). p50 is the median of the
    windows unless the tool's own summary over every call (``summary``: trtexec's) is given; p90/p99 come
    only from such a summary, never from window medians."""
    if not windows:
        raise ValueError("a sustained run needs at least one timed window")
    t = np.asarray([w["t_s"] for w in windows], float)
    y = np.asarray([w["latency_ms"] for w in windows], float)
    calls = int(sum(w["calls"] for w in windows))
    busy = float(sum(w["busy_s"] for w in windows))
    w = window_s(elapsed)
    first, last = y[t < w], y[t >= elapsed - w]
    res = {"duration_s": float(elapsed), "calls": calls, "throughput_fps": calls / busy if busy > 0 else None,
           "p50_ms": float(np.median(y)), "min_ms": float(y.min()), "mean_ms": float(np.average(
               y, weights=[x["calls"] for x in windows])), "window_s": w, "windows": len(windows),
           "timeline_unit": "window",
           "first_window_p50_ms": float(np.median(first)) if first.size else None,
           "last_window_p50_ms": float(np.median(last)) if last.size else None}
    if summary:
        res.update({k: summary[k] for k in ("p50_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms") if k in summary})
    if first.size and last.size and len(windows) > 1:
        res["throttle_ratio"] = res["last_window_p50_ms"] / res["first_window_p50_ms"]
    res.setdefault("p90_ms", None)
    res.setdefault("p99_ms", None)
    res["timeline"] = {"t_s": t.round(4).tolist(), "latency_ms": y.round(4).tolist()}
    return res


def plot(res: dict, out: Path, title: str = "") -> Path:
    """Latency over time with a rolling median and the first / last windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    t = np.asarray(res["timeline"]["t_s"])
    y = np.asarray(res["timeline"]["latency_ms"])
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=110)
    unit = res.get("timeline_unit", "call")
    ax.plot(t, y, ".-" if unit == "window" else ".", ms=2 if unit == "call" else 4, alpha=0.35 if unit == "call" else 0.8,
            color="#4878a8", label=unit if unit == "call" else "window (the tool's median per window)")
    k = max(5, len(y) // 50)
    if unit == "call" and len(y) > 2 * k:
        med = np.array([np.median(y[max(0, i - k):i + 1]) for i in range(len(y))])
        ax.plot(t, med, "-", lw=1.5, color="#c44e52", label=f"rolling median ({k} calls)")
    w = res["window_s"]
    ax.axvspan(0, w, color="0.9", zorder=0)
    ax.axvspan(res["duration_s"] - w, res["duration_s"], color="0.9", zorder=0)
    sub = f"p50 {res['p50_ms']:.1f} ms" + (f" · p99 {res['p99_ms']:.1f} ms" if res.get("p99_ms") is not None else "") + (
        f" · {res['throughput_fps']:.1f} calls/s" if res.get("throughput_fps") else "")
    if res.get("throttle_ratio") is not None:
        sub += f" · last/first window {res['throttle_ratio']:.2f}"
    if res.get("target_fps"):
        sub += f" · {res['dropped_frames']} dropped at {res['target_fps']:g} FPS"
    ax.set_title(f"{title}\n{sub}", fontsize=9)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    from edgehydra._io import save_figure

    return save_figure(fig, Path(out), dpi=100)
