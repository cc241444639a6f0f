"""A throwaway export target whose build kills its own process (as a converter's segfault or the OOM killer
would): tests/test_registry.py exports it beside a working target with --jobs 2."""
import os
import signal

from edgehydra.exporters.target import ExportTarget


def build(source, req, path):
    path.write_bytes(b"half an artifact")  # what a dying converter leaves behind
    os.kill(os.getpid(), signal.SIGKILL)


def load_runner(path, manifest):
    raise AssertionError("never built")


TARGET = ExportTarget(name="crashes", suffix=".crash", precisions=("fp32",), runtime="none", extra="",
                      packages=("torch",), build=build, load_runner=load_runner)
