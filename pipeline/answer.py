"""The answer a run gives, first: per artifact its per-task accuracy against FP32 at the same input size and its
measured latency; per device the verdict and the budget that decided it. The demo prints it last in the terminal
and the report opens with it; stage times and settings come after.
"""
from __future__ import annotations

from pathlib import Path

TASK_KEYS = (("miou", "mIoU %", ".1f"), ("rmse", "RMSE m", ".3f"), ("normals_median_angle", "normals median deg", ".1f"))


def fp32_reference(d: dict, size) -> dict | None:
    """FP32 metrics on the validation split at ``size``: the PTQ report's (run at the deploy size), else the
    training run's when it was evaluated at that size; None when neither is at that size."""
    ptq = d.get("ptq") or {}
    if ptq.get("metrics", {}).get("fp32") and list((ptq.get("data") or {}).get("size") or []) == list(size):
        return ptq["metrics"]["fp32"]
    fp = d.get("fp32") or {}
    if fp.get("metrics") and list((fp.get("dataset") or {}).get("size") or []) == list(size):
        return fp["metrics"]
    return None


def artifact_answers(d: dict) -> list[dict]:
    """One row per verified artifact: target, precision, size, per-task value and change vs FP32, p50 ms."""
    brows = (d.get("bench") or {}).get("result", {}).get("rows", [])
    bench = {Path(b["artifact"]).name: b for b in brows if b.get("target") != "pytorch"}
    rows = []
    for a in (d.get("manifest") or {}).get("artifacts", []):
        if a.get("status") != "verified" or not a.get("metrics"):
            continue
        ref = fp32_reference(d, a.get("size") or [])
        b = bench.get(Path(a["path"]).name)
        tasks = {k: {"value": a["metrics"][k], "fp32": (ref or {}).get(k),
                     "delta": a["metrics"][k] - ref[k] if ref and ref.get(k) is not None else None}
                 for k, _, _ in TASK_KEYS if a["metrics"].get(k) is not None}
        rows.append({"artifact": a["path"], "target": a["target"], "precision": a["precision"] + (
            f" ({a['variant']})" if a.get("variant") else ""), "size": "x".join(map(str, a.get("size") or [])),
                     "tasks": tasks, "p50_ms": b["p50_ms"] if b else None})
    return rows


def deciding_budget(verdict: dict) -> str:
    """The budget that decided a verdict: every failed one for a FAIL; for a PASS the one with the least room
    (margin as a share of its limit)."""
    rows = verdict.get("rows") or []
    if not rows:
        return verdict.get("reason", "-")
    failed = [r for r in rows if not r["pass"]]
    if failed:
        return "; ".join(f"{r['budget']} {_num(r['value'])} vs {_num(r['limit'])} {r['unit']}".rstrip() for r in failed)
    tight = min(rows, key=lambda r: abs(r["margin"]) / max(abs(r["limit"]), 1e-9))
    return f"closest: {tight['budget']} {_num(tight['value'])} vs {_num(tight['limit'])} {tight['unit']}".rstrip()


def device_answers(d: dict) -> list[dict]:
    return [{"device": c["device"], "verdict": c["verdict"], "artifact": c.get("artifact") or "-",
             "decided_by": deciding_budget(c)} for c in d.get("check") or []]


def answer_tables(d: dict) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(artifact header, rows, device header, rows) as text cells for a terminal or a report."""
    arts = artifact_answers(d)
    keys = [k for k, _, _ in TASK_KEYS if any(k in r["tasks"] for r in arts)]
    head = ["artifact", "precision", "size"] + [dict((k, n) for k, n, _ in TASK_KEYS)[k] + " (vs FP32)" for k in keys] \
        + ["p50 ms"]
    fmt = {k: f for k, _, f in TASK_KEYS}
    body = [[Path(r["artifact"]).name, r["precision"], r["size"]]
            + [_with_delta(r["tasks"].get(k), fmt[k]) for k in keys] + [_num(r["p50_ms"], ".2f")] for r in arts]
    dev = device_answers(d)
    return head, body, ["device", "verdict", "artifact", "decided by"], [
        [x["device"], x["verdict"], x["artifact"], x["decided_by"]] for x in dev]


def _with_delta(t: dict | None, f: str) -> str:
    if not t:
        return "-"
    s = format(t["value"], f)
    return s + (f" ({t['delta']:+{f}})" if t.get("delta") is not None else "")


def _num(v, f: str = ".3g") -> str:
    return "-" if v is None else format(v, f)
