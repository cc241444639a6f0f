#!/usr/bin/env python
"""Which precisions pay on this CPU, per runtime: the whole model as ExecuTorch fp32 / fp16 / int8 .pte and
as ONNX fp32 / int8 / W8A16 (the heads, then every layer) under onnxruntime, each runtime's files timed
interleaved in one process (the mixed-precision search's question: what a layer costs in each precision).

    python benchmarks/precisions.py [--model hydranet_nyud] [--size 240x320] [--rounds 30] [--threads 2]

XNNPACK has fp16 kernels where the CPU does fp16 arithmetic (x86: AVX512-FP16, e.g. Sapphire Rapids;
ARMv8.2-FP16 phones). The fp16 .pte is the model in half precision with fp32 I/O: its two casts run on
ExecuTorch's portable kernels, everything else in the XNNPACK delegate. W8A16 ONNX is int16 QDQ at opset 21;
onnxruntime's CPU EP has no int16 kernels and computes the float op between the Q/DQ pairs. The int8
programs are calibrated on random frames (latency does not depend on the ranges). Prints each file's
median ms, the ratios taken in this one run, and the CPU's flags, so a figure always names its machine.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import warnings
from pathlib import Path


def cpu_flags() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return {"model": model, **{f: f in flags for f in ("avx512_fp16", "avx512_vnni", "amx_int8", "avx2", "f16c")}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hydranet_nyud")
    ap.add_argument("--size", default="240x320")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    from edgehydra import create_model
    from edgehydra.calibration.calibset import CalibrationSet
    from edgehydra.devices.host_measure import time_artifacts
    from edgehydra.calibration.ptq import quantize_ptq
    from edgehydra.calibration.recipe import PRESETS
    from edgehydra.exporters.executorch import lower

    h, w = (int(v) for v in a.size.split("x"))
    torch.manual_seed(0)
    model = create_model(a.model).eval()
    x = torch.zeros(1, 3, h, w)

    class Half(torch.nn.Module):  # fp16 inside, fp32 in and out (what a float island in fp16 would be)
        def __init__(self, m):
            super().__init__()
            self.m = copy.deepcopy(m).half()

        def forward(self, x):
            return tuple(o.float() for o in self.m(x.half()))

    frames = [{"image": torch.randn(3, h, w)} for _ in range(8)]
    calib = CalibrationSet(tuple(range(8)), tuple(map(str, range(8))), "random", 0, 0, (0, 1), (0, 1), 0)
    q, _ = quantize_ptq(model, PRESETS["w8a8"], frames, calib, (h, w))
    heads = tuple(model.head_layer_names())
    q16h, _ = quantize_ptq(model, PRESETS["w8a8"].replace(name="heads16", int16_layers=heads), frames, calib, (h, w))
    q16, _ = quantize_ptq(model, PRESETS["w8a16"], frames, calib, (h, w))
    with tempfile.TemporaryDirectory() as d:
        paths, facts = {}, {}
        for name, mod, prec in (("fp32", model, "fp32"), ("fp16", Half(model), "fp32"), ("int8", q, "int8")):
            prog, f = lower(mod, x, prec)
            paths[name] = Path(d) / f"{name}.pte"
            paths[name].write_bytes(prog.buffer)
            facts[name] = (f.get("delegation") or {}).get("portable", {})
        t = time_artifacts(paths, (h, w), a.rounds, a.threads)
        # int8 at opset 21 too: the W8A16 files need it, and the opset alone can change onnxruntime's fusions
        o = _time_onnx({"fp32": model, "int8": q, "int8 opset21": q, "w8a16 heads": q16h, "w8a16 all": q16}, x,
                       Path(d), a.rounds, a.threads)
    res = {"model": a.model, "size": [h, w], "threads": a.threads, "rounds": a.rounds, "cpu": cpu_flags(),
           "python": platform.python_version(), "executorch_ms": t, "onnxruntime_ms": o,
           "fp16_portable_ops": facts["fp16"]}
    print(f"{a.model} at {h}x{w}, {a.threads} threads, median of {a.rounds} interleaved rounds on "
          f"{res['cpu'].get('model', platform.processor())} (avx512_fp16: {res['cpu'].get('avx512_fp16')})")
    for rt, times in (("ExecuTorch (XNNPACK)", t), ("onnxruntime (CPU EP)", o)):
        print(f"{rt}:")
        for k, v in times.items():
            print(f"  {k}: {v:.2f} ms ({v / times['fp32']:.2f}x fp32)")
    print(json.dumps(res))
    return res


def _time_onnx(modules: dict, x, d: Path, rounds: int, threads: int) -> dict[str, float]:
    """Each module as an ONNX file (QDQ stored as the ONNX exporter stores it: uint8 for int8, int16 at opset
    21), timed interleaved under onnxruntime's CPU EP."""
    import onnx
    import torch

    from edgehydra.devices.host_measure import time_artifacts
    from edgehydra.exporters._onnx_qdq import signed_to_unsigned
    from edgehydra.exporters._pt2e import int16_layers

    paths = {}
    for k, m in modules.items():
        gm = getattr(m, "graph", None)
        opset = 21 if gm is not None and (int16_layers(m) or k.endswith("opset21")) else 18
        p = d / f"{k.replace(' ', '_')}.onnx"
        torch.onnx.export(m, (x,), dynamo=True, opset_version=opset, verbose=False).save(str(p))
        if gm is not None:
            mm = onnx.load(str(p))
            signed_to_unsigned(mm)
            onnx.save(mm, str(p))
        paths[k] = p
    return time_artifacts(paths, tuple(x.shape[2:]), rounds, threads)


if __name__ == "__main__":
    main()
