"""Device profiles: TOML data files, validated with errors that name the key and the file.

A profile holds the device's peak figures (each citing its source in a comment), the efficiency
factors of the analytical latency model, and the budgets a deployment must meet.
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

from edgehydra.errors import BadInputError

KINDS = ("gpu", "jetson", "phone-npu", "cpu")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Budgets:
    input_size: tuple[int, int]
    latency_p50_ms: float
    latency_p90_ms: float
    max_gmacs: float
    max_artifact_mb: float
    max_peak_memory_mb: float
    min_miou: float
    max_depth_rmse: float
    max_abs_rel: float
    # optional: the normals head's median angular error (degrees; the paper's three-task extension reports it)
    max_normals_median_deg: float | None = None
    # optional: frames per second held over a sustained run (`bench --duration 60s`), not the best burst
    min_sustained_fps: float | None = None
    # optional: how much more the artifact's segmentation may flicker than the FP32 model's on the same sequence
    # (percentage points of matched pixels whose label changes between frames; `edgehydra stability`)
    max_flicker_rise: float | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    kind: str
    format: str
    precision: str
    compute_unit: str
    int8_tops: float
    fp16_tflops: float
    fp32_tflops: float
    bandwidth_gbs: float
    threads: int
    compute_efficiency: float
    bandwidth_efficiency: float
    overhead_ms: float
    budgets: Budgets
    source: str = ""
    # Optional per-precision compute efficiency (TOML table [efficiency]); falls back to
    # compute_efficiency. Filled by `profile --calibrate` from measured runs.
    efficiency: tuple[tuple[str, float], ...] = ()
    # Optional per-operator-class time scale at a precision (TOML table [class_scale], keys
    # "int8/depthwise conv" = 1.8): how much slower (> 1) or faster than the roofline a class runs on
    # this device. Fitted from the device's own per-op profile (`bench --ops --ops-from ... --profile`).
    class_scale: tuple[tuple[str, float], ...] = ()
    # Optional W8A16 rate (int8 weights x int16 activations), TOPS. Unset: half the int8 rate, i.e. the
    # 16-bit activations taking two passes through the int8 MAC arrays; the estimate says when it assumed it.
    int16_tops: float | None = None
    # A profile of this machine (TOML ``host = true``): its peaks are read from /proc/cpuinfo at load
    # (devices/host.py), `bench` measures it here (records say device "host"), and the mixed-precision
    # search profiles its layers here in the runtime of its format instead of estimating them.
    host: bool = False

    def scale_of(self, precision: str, op_class: str) -> float:
        return dict(self.class_scale).get(f"{precision}/{op_class}", 1.0)

    def compute_eff(self, precision: str) -> float:
        return dict(self.efficiency).get(precision, self.compute_efficiency)

    def peak_ops(self, precision: str) -> float:
        """Peak multiply-accumulates per second at a precision (1 MAC = 2 ops)."""
        per = {"int8": self.int8_tops, "fp16": self.fp16_tflops, "fp32": self.fp32_tflops,
               "int16": self.int16_tops if self.int16_tops is not None else self.int8_tops / 2}[precision]
        return per * 1e12 / 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["budgets"]["input_size"] = list(self.budgets.input_size)
        d["efficiency"] = dict(self.efficiency)
        d["class_scale"] = dict(self.class_scale)
        return d


# key -> (type, unit shown in errors); units are part of the key name, so a value with its own
# unit string ("33 ms") is refused instead of guessed.
_NUM = {
    "int8_tops": "TOPS", "fp16_tflops": "TFLOPS", "fp32_tflops": "TFLOPS", "bandwidth_gbs": "GB/s",
    "compute_efficiency": "fraction 0-1", "bandwidth_efficiency": "fraction 0-1", "overhead_ms": "ms",
}
_BUDGET_NUM = {
    "latency_p50_ms": "ms", "latency_p90_ms": "ms", "max_gmacs": "GMACs", "max_artifact_mb": "MB",
    "max_peak_memory_mb": "MB", "min_miou": "mIoU %", "max_depth_rmse": "m", "max_abs_rel": "ratio",
}
_BUDGET_OPT = {"max_normals_median_deg": "degrees", "min_sustained_fps": "frames per second",
               "max_flicker_rise": "percentage points"}
_STR = {"name", "description", "kind", "format", "precision", "compute_unit"}


def _num(v, key, unit, where) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadInputError(f"{where}: {key} must be a number in {unit}, got {v!r}")
    if not math.isfinite(v) or v < 0:
        raise BadInputError(f"{where}: {key} must be a finite number >= 0 ({unit}), got {v}")
    return float(v)


def parse_profile(data: dict, where: str) -> Profile:
    top = set(_STR) | set(_NUM) | {"threads", "budgets"}
    optional = {"efficiency", "class_scale", "int16_tops", "host"}
    unknown = sorted(set(data) - top - optional)
    if unknown:
        raise BadInputError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(top))})")
    missing = sorted(top - set(data))
    if missing:
        raise BadInputError(f"{where}: missing field {missing[0]!r}")
    kw = {}
    for k in _STR:
        if not isinstance(data[k], str) or not data[k]:
            raise BadInputError(f"{where}: {k} must be a non-empty string, got {data[k]!r}")
        kw[k] = data[k]
    from edgehydra.exporters import list_targets  # a profile's format is an export target's name

    for k, allowed in (("kind", KINDS), ("format", tuple(list_targets())), ("precision", PRECISIONS)):
        if kw[k] not in allowed:
            raise BadInputError(f"{where}: {k} = {kw[k]!r}; allowed: {', '.join(allowed)}")
    for k, unit in _NUM.items():
        kw[k] = _num(data[k], k, unit, where)
    for k in ("compute_efficiency", "bandwidth_efficiency"):
        if not 0 < kw[k] <= 1:
            raise BadInputError(f"{where}: {k} must be in (0, 1], got {kw[k]}")
    if not isinstance(data["threads"], int) or data["threads"] < 1:
        raise BadInputError(f"{where}: threads must be an integer >= 1, got {data['threads']!r}")
    kw["threads"] = data["threads"]
    b = data["budgets"]
    bw = f"{where} [budgets]"
    if not isinstance(b, dict):
        raise BadInputError(f"{where}: budgets must be a table ([budgets])")
    bkeys = set(_BUDGET_NUM) | {"input_size"}
    unknown = sorted(set(b) - bkeys - set(_BUDGET_OPT))
    if unknown:
        raise BadInputError(f"{bw}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(bkeys | set(_BUDGET_OPT)))})")
    missing = sorted(bkeys - set(b))
    if missing:
        raise BadInputError(f"{bw}: missing field {missing[0]!r}")
    size = b["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 32 for v in size)):
        raise BadInputError(f"{bw}: input_size must be [H, W] integers >= 32, got {size!r}")
    bkw = {k: _num(b[k], k, unit, bw) for k, unit in _BUDGET_NUM.items()}
    # optional budgets: absent (TOML has no null; None from a dataclass round trip) means not budgeted
    bkw.update({k: _num(b[k], k, unit, bw) for k, unit in _BUDGET_OPT.items() if b.get(k) is not None})
    if bkw["latency_p90_ms"] < bkw["latency_p50_ms"]:
        raise BadInputError(f"{bw}: latency_p90_ms ({bkw['latency_p90_ms']}) is below latency_p50_ms ({bkw['latency_p50_ms']})")
    kw["budgets"] = Budgets(input_size=tuple(size), **bkw)
    if not isinstance(data.get("host", False), bool):
        raise BadInputError(f"{where}: host must be true or false, got {data['host']!r}")
    # host_cpu profiles calibrated by a run before the key existed are this machine's all the same
    kw["host"] = data.get("host", kw["name"] == "host_cpu")
    if "int16_tops" in data:
        kw["int16_tops"] = _num(data["int16_tops"], "int16_tops", "TOPS", where)
    eff = data.get("efficiency", {})
    if not isinstance(eff, dict) or set(eff) - set(PRECISIONS):
        raise BadInputError(f"{where} [efficiency]: keys must be among {', '.join(PRECISIONS)}")
    kw["efficiency"] = tuple(sorted((k, _num(v, f"efficiency.{k}", "fraction 0-1", where)) for k, v in eff.items()))
    cs = data.get("class_scale", {})
    if not isinstance(cs, dict) or any("/" not in k or k.split("/", 1)[0] not in PRECISIONS for k in cs):
        raise BadInputError(f"{where} [class_scale]: keys are \"<precision>/<operator class>\", e.g. "
                            "\"int8/depthwise conv\"")
    kw["class_scale"] = tuple(sorted((k, _num(v, f"class_scale.{k}", "x", where)) for k, v in cs.items()))
    if any(v <= 0 for _, v in kw["class_scale"]):
        raise BadInputError(f"{where} [class_scale]: scales must be > 0")
    return Profile(source=where, **kw)


def shipped_dir() -> Path:
    return Path(str(resources.files("edgehydra.devices") / "profiles"))


def user_dir() -> Path:
    return Path(os.environ.get("EDGEHYDRA_DEVICES", Path.home() / ".config" / "edgehydra" / "devices"))


def load_profile_file(path: Path) -> Profile:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"device profile not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise BadInputError(f"{path}: invalid TOML ({e})") from None
    p = parse_profile(data, str(path))
    if p.host:
        from .host import detect_host

        p = detect_host(p)
    return p


def list_profiles() -> dict[str, Path]:
    """Shipped profiles, overridden by the user's of the same name (e.g. after --calibrate)."""
    out = {p.stem: p for p in sorted(shipped_dir().glob("*.toml"))}
    ud = user_dir()
    if ud.is_dir():
        out.update({p.stem: p for p in sorted(ud.glob("*.toml"))})
    return out


def load_profile(spec: str) -> Profile:
    """A profile name (shipped or user) or a path to a TOML file."""
    if spec.endswith(".toml") or os.sep in spec:
        return load_profile_file(Path(spec))
    profiles = list_profiles()
    if spec not in profiles:
        raise BadInputError(f"unknown device {spec!r}; known: {', '.join(profiles)} (or pass a .toml path)")
    return load_profile_file(profiles[spec])


def load_run_profile(run, device: str) -> Profile:
    """``device``'s profile as ``run`` calibrated it (RUN/devices/<name>.toml, which the demo's calibrate stage
    writes), else the profile itself. ``run`` is an edgehydra.run.Run."""
    cal = run.calibrated_profile(device)
    return load_profile(str(cal) if cal.is_file() else device)


def to_toml(p: Profile, comments: dict | None = None) -> str:
    """Write a profile back as TOML (used by --calibrate), with a comment per changed field."""
    comments = comments or {}
    lines = []
    for f in fields(Profile):
        if f.name in ("budgets", "source", "efficiency", "class_scale"):
            continue
        v = getattr(p, f.name)
        if v is None:  # an optional figure not given
            continue
        if f.name == "host" and not v:
            continue
        val = f'"{v}"' if isinstance(v, str) else ("true" if v is True else repr(v))
        c = f"  # {comments[f.name]}" if f.name in comments else ""
        lines.append(f"{f.name} = {val}{c}")
    if p.efficiency:
        lines.append("\n[efficiency]")
        lines += [f"{k} = {v!r}" for k, v in p.efficiency]
    if p.class_scale:
        lines.append("\n[class_scale]")
        lines += [f'"{k}" = {v!r}' for k, v in p.class_scale]
    lines.append("\n[budgets]")
    for f in fields(Budgets):
        v = getattr(p.budgets, f.name)
        if v is None:  # an optional budget this profile does not set
            continue
        lines.append(f"{f.name} = {list(v) if isinstance(v, tuple) else repr(v)}")
    return "\n".join(lines) + "\n"
