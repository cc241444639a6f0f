"""Calibration sets: reproducible, stratified so rare classes and the whole depth range are present.

Selection (a pure function of the dataset and the seed):
1. per frame, the classes it contains and its median valid depth;
2. rare classes first: for each class in order of how few frames contain it, if no chosen frame
   has it yet, take one frame that does (seeded choice), up to half the budget;
3. the rest round-robin from five depth bins (quintiles of the frames' median depth), so near
   and far scenes are both represented.
The frame list and its sha256 are recorded with every quantised model.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from edgehydra.errors import BadInputError


@dataclass(frozen=True)
class CalibrationSet:
    indices: tuple[int, ...]
    ids: tuple[str, ...]
    sha256: str
    classes_covered: int
    classes_in_dataset: int
    depth_range: tuple[float, float]
    dataset_depth_range: tuple[float, float]
    seed: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["indices"], d["ids"] = list(self.indices), list(self.ids)
        return d


# frame key -> its stats, for datasets whose frames are a pure function of a key (synthroom's frame_key). Every
# selection reads every training frame: the default demo's PTQ, mixed-search and QAT stages each rendered its 1000
# synthroom frames again for it, 58 s of the demo (py-spy, AMD EPYC Zen 3); a frame's stats are two numbers.
_STATS: dict = {}


def frame_stats(dataset, i: int) -> tuple[frozenset, float]:
    key = dataset.frame_key(i) if hasattr(dataset, "frame_key") else None
    if key is not None and key in _STATS:
        return _STATS[key]
    raw = dataset.raw(i)
    seg, depth = raw.get("segm"), raw.get("depth")
    classes = frozenset(np.unique(seg).tolist()) - {255} if seg is not None else frozenset()
    med = float(np.median(depth[depth > 0])) if depth is not None and (depth > 0).any() else float("nan")
    if key is not None:
        _STATS[key] = classes, med
    return classes, med


def select_calibration(dataset, n: int = 200, seed: int = 0) -> CalibrationSet:
    total = len(dataset)
    if total == 0:
        raise BadInputError("calibration: the dataset is empty")
    if n < 1:
        raise BadInputError(f"calibration: need at least 1 frame, got {n}")
    n = min(n, total)
    stats = [frame_stats(dataset, i) for i in range(total)]
    rng = np.random.default_rng(seed)
    freq: dict[int, list[int]] = {}
    for i, (cls, _) in enumerate(stats):
        for c in cls:
            freq.setdefault(c, []).append(i)
    chosen: list[int] = []
    covered: set = set()
    for c in sorted(freq, key=lambda c: (len(freq[c]), c)):
        if len(chosen) >= max(1, n // 2):
            break
        if c in covered:
            continue
        cands = [i for i in freq[c] if i not in chosen]
        if not cands:
            continue
        pick = int(cands[int(rng.integers(len(cands)))])
        chosen.append(pick)
        covered |= stats[pick][0]
    meds = np.array([m for _, m in stats])
    rest = [i for i in range(total) if i not in set(chosen)]
    finite = np.isfinite(meds)
    if finite.any():
        edges = np.quantile(meds[finite], [0.2, 0.4, 0.6, 0.8])
        bins = [[] for _ in range(6)]  # 5 quintiles + frames without depth
        for i in rest:
            bins[int(np.searchsorted(edges, meds[i])) if finite[i] else 5].append(i)
    else:
        bins = [rest]
    for b in bins:
        rng.shuffle(b)
    while len(chosen) < n and any(bins):
        for b in bins:
            if b and len(chosen) < n:
                chosen.append(int(b.pop()))
    chosen = sorted(chosen)
    ids = dataset.frame_ids() if hasattr(dataset, "frame_ids") else [str(i) for i in range(total)]
    chosen_ids = tuple(ids[i] for i in chosen)
    sel_meds = meds[chosen][np.isfinite(meds[chosen])]
    all_cls = set().union(*[s[0] for s in stats]) if stats else set()
    sel_cls = set().union(*[stats[i][0] for i in chosen]) if chosen else set()
    rng_of = lambda a: (float(a.min()), float(a.max())) if a.size else (float("nan"), float("nan"))  # noqa: E731
    return CalibrationSet(tuple(chosen), chosen_ids, hashlib.sha256("\n".join(chosen_ids).encode()).hexdigest(),
                          len(sel_cls), len(all_cls), rng_of(sel_meds), rng_of(meds[finite]), seed)


@dataclass(frozen=True)
class SweepData:
    """What a sweep of PTQs at one size works on: the data spec, the size, the training split (calibration
    frames come from it), the validation split, both resized to the size, and the calibration set."""
    ds: dict
    size: tuple
    train: object
    val: object
    calib: CalibrationSet


def open_sweep_data(checkpoint, dataset: str | None, size, calib_frames: int, base: dict | None = None) -> SweepData:
    """The one preamble of a PTQ sweep (the sensitivity table, the mixed-precision search): the data spec from the
    run record ``base`` (else the checkpoint's), then ``dataset`` / ``size``; both splits resized to the size."""
    from pathlib import Path

    from edgehydra.data import Resize
    from edgehydra.dataspec import open_split, run_data_settings

    ds = run_data_settings(Path(checkpoint), dataset, size, base=base)
    size = tuple(ds["size"])
    train = open_split(ds, "train", Resize(size))
    return SweepData(ds, size, train, open_split(ds, "val", Resize(size)), select_calibration(train, calib_frames))
