"""Run a .tflite or .onnx artifact on the reference frames stored beside it and print its outputs.

Self-contained (numpy and the format's own Python runtime: ai-edge-litert or tflite-runtime, onnxruntime),
so the same file is what `edgehydra` uses on this host (exporters/tflite.py and onnx.py load their
runners from here) and what it pushes to a device with a Python runtime (a Jetson, a Raspberry Pi, a
Linux board) as ``python3 reference_runner.py MODEL REFERENCE.npz``. The judging (per-task parity
against the expected outputs, with the export's tolerance) happens on the host, in
exporters/reference_io.py, by the export's own parity routine.
"""
import base64
import io
import sys

BEGIN, END = "EDGEHYDRA-REFERENCE-OUTPUTS-BEGIN", "EDGEHYDRA-REFERENCE-OUTPUTS-END"


def tflite_interpreter(path, threads=2):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the older runtime with the same API (what many boards have)
        from tflite_runtime.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


def ordered_outputs(it):
    """Outputs in the model's order (output_0, output_1, ...), not the interpreter's tensor order."""
    outs = it.get_output_details()
    return sorted(outs, key=lambda d: [int(t) if t.isdigit() else t for t in d["name"].replace(":", "_").split("_")])


def tflite_runner(path, nhwc=None, threads=2):
    """(N, 3, H, W) float32 frames -> per-output float32 arrays; int8 I/O (de)quantised with the tensors'
    own scale and zero point, NHWC transposed (``nhwc`` None: read off the input's shape)."""
    import numpy as np

    it = tflite_interpreter(path, threads)
    inp = it.get_input_details()[0]
    outs = ordered_outputs(it)
    if nhwc is None:
        nhwc = int(inp["shape"][-1]) == 3 and int(inp["shape"][1]) != 3

    def run(x):
        res = []
        for b in range(x.shape[0]):
            xi = x[b:b + 1].transpose(0, 2, 3, 1) if nhwc else x[b:b + 1]
            if np.issubdtype(inp["dtype"], np.integer):
                s, z = inp["quantization"]
                info = np.iinfo(inp["dtype"])
                xi = np.clip(np.round(xi / s + z), info.min, info.max).astype(inp["dtype"])
            it.set_tensor(inp["index"], np.ascontiguousarray(xi))
            it.invoke()
            o = []
            for d in outs:
                v = it.get_tensor(d["index"])
                if np.issubdtype(d["dtype"], np.integer):
                    s, z = d["quantization"]
                    v = (v.astype(np.float32) - z) * s
                o.append(v.astype(np.float32))
            res.append(o)
        return [np.concatenate([r[k] for r in res]) for k in range(len(outs))]

    return run


def onnx_runner(path, threads=2, spin=True):
    """``spin``: ONNX Runtime's intra-op threads busy-wait after each call (its default). Right for a benchmark
    of back-to-back calls; wrong for a node sharing its cores with a camera thread: on 2 cores it made numpy
    work right after a call take 99 ms instead of 55 (median of 20, AMD EPYC Zen 3)."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x):
        return sess.run(None, {name: np.ascontiguousarray(x, np.float32)})

    return run


def run_reference(model_path, npz_path):
    """[[outputs of frame 0], [frame 1], ...] for the frames stored in the reference file."""
    import numpy as np

    z = np.load(npz_path)
    frames = z["frames"]
    if str(model_path).endswith(".tflite"):
        run = tflite_runner(model_path)
    elif str(model_path).endswith(".onnx"):
        run = onnx_runner(model_path)
    else:
        raise SystemExit(f"reference_runner: {model_path}: not a .tflite or .onnx file")
    return [[np.asarray(o) for o in run(frames[i:i + 1])] for i in range(len(frames))]


def encode(cases):
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **{f"c{i}_o{k}": o for i, outs in enumerate(cases) for k, o in enumerate(outs)})
    return base64.b64encode(buf.getvalue()).decode()


if __name__ == "__main__":
    out = encode(run_reference(sys.argv[1], sys.argv[2]))
    print(BEGIN)
    print(out)
    print(END)
