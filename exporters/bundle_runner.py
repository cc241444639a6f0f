"""Run every test case of an ExecuTorch BundledProgram (.bpte) and print the outputs (base64 .npz).

Self-contained: this file is pushed to a device that has the ExecuTorch Python runtime (a Jetson, a
Linux board) and run there as ``python3 bundle_runner.py MODEL.bpte [CASES]``; on this host edgehydra
imports it. CASES (the host read the bundle already) spares the device reading the bundle back, which
imports ExecuTorch's devtools and with them pandas, which a device runtime need not have. The judging (per-task parity against the bundle's expected outputs, with the export's tolerance)
happens on the host, in exporters/bundle.py, by the export's own parity routine.
"""
import base64
import io
import sys

BEGIN, END = "EDGEHYDRA-BUNDLE-OUTPUTS-BEGIN", "EDGEHYDRA-BUNDLE-OUTPUTS-END"


def run_cases(path: str, n=None) -> list:
    """[[output arrays of case 0], [case 1], ...] as ExecuTorch's bundled-program API produced them.
    ``n``: the number of cases where the caller has read the bundle already (reading it back runs flatc
    and takes ~4 s for the tiny model's 8 cases at 240x320, most of a host check's time)."""
    import numpy as np
    from executorch.extension.pybindings import portable_lib as pl

    data = open(path, "rb").read()
    if n is None:
        from executorch.devtools.bundled_program.serialize import deserialize_from_flatbuffer_to_bundled_program

        n = len(next(s for s in deserialize_from_flatbuffer_to_bundled_program(data).method_test_suites
                     if s.method_name == "forward").test_cases)
    bundle = pl._load_bundled_program_from_buffer(data)
    pl._load_for_executorch_from_bundled_program(bundle)
    # The API loads case i as the method's input and runs it. Its own pass/fail applies one rtol/atol to
    # every output; with limits it cannot fail it returns what the method produced, judged per task later.
    return [[np.asarray(o) for o in bundle.verify_result_with_bundled_expected_output("forward", i, 1e30, 1e30)]
            for i in range(n)]


def encode(cases: list) -> str:
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **{f"c{i}_o{k}": o for i, outs in enumerate(cases) for k, o in enumerate(outs)})
    return base64.b64encode(buf.getvalue()).decode()


def decode(text: str, begin: str = BEGIN, end: str = END) -> list:
    """The cases a runner printed between ``begin`` and ``end`` (this runner's, or reference_runner.py's)."""
    import numpy as np

    body = text.split(begin, 1)[1].split(end, 1)[0].strip()
    z = np.load(io.BytesIO(base64.b64decode(body)))
    cases = {}
    for key in z.files:
        c, o = key[1:].split("_o")
        cases.setdefault(int(c), {})[int(o)] = z[key]
    return [[outs[k] for k in sorted(outs)] for _, outs in sorted(cases.items())]


if __name__ == "__main__":
    print(BEGIN)
    print(encode(run_cases(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)))
    print(END)
