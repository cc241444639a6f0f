"""The ``edgehydra`` CLI: a thin click layer, one module per command group, loaded lazily.

Errors the user can act on (:class:`edgehydra.errors.EdgeHydraError`) print as one line and exit
with their code (2 bad input, 1 failed check); ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import importlib
import sys

import click

from edgehydra import __version__

# name -> "module:attribute" (click's LazyGroup pattern): `edgehydra --help` imports none of them.
COMMANDS = {
    "doctor": "edgehydra.commands.doctor:doctor",
    "info": "edgehydra.commands.info:info",
    "models": "edgehydra.commands.info:models",
    "data": "edgehydra.commands.data:data",
    "train": "edgehydra.commands.train:train",
    "eval": "edgehydra.commands.train:evaluate",
    "predict": "edgehydra.commands.train:predict",
    "ptq": "edgehydra.commands.quant:ptq",
    "qat": "edgehydra.commands.quant:qat",
    "sensitivity": "edgehydra.commands.quant:sensitivity",
    "export": "edgehydra.commands.export:export",
    "run": "edgehydra.commands.export:run_artifact",
    "verify": "edgehydra.commands.export:verify",
    "debug": "edgehydra.commands.export:debug",
    "bench": "edgehydra.commands.devices:bench",
    "devices": "edgehydra.commands.devices:devices",
    "profile": "edgehydra.commands.devices:profile",
    "check": "edgehydra.commands.devices:check",
    "stream": "edgehydra.commands.robot:stream",
    "stability": "edgehydra.commands.robot:stability",
    "arm": "edgehydra.commands.arm:arm",
    "demo": "edgehydra.commands.demo:demo",
    "report": "edgehydra.commands.demo:report",
}

HELP = {
    "doctor": "Show which backends are installed and what each enables.",
    "info": "Parameters, MACs and memory of a model at an input size.",
    "models": "List the registered model variants.",
    "data": "Generate synthroom, prepare NYUDv2/KITTI, distill missing labels.",
    "train": "Train an FP32 HydraNet.",
    "eval": "Evaluate a checkpoint or quantised program on a dataset.",
    "predict": "Write prediction panels for images.",
    "ptq": "Calibrate and post-training quantise a checkpoint.",
    "qat": "Quantisation-aware fine-tuning.",
    "sensitivity": "Per-layer, per-task quantisation sensitivity.",
    "export": "Export to ExecuTorch, Core ML, TFLite or ONNX and verify in its runtime.",
    "run": "Run an exported artifact on images in its own runtime.",
    "verify": "Re-check hashes and parity of every artifact in a run.",
    "debug": "Compare an int8 artifact with its program layer by layer: where each task first goes wrong.",
    "bench": "Benchmark an artifact's latency on this host or a device.",
    "devices": "List the device profiles.",
    "profile": "Analytical per-layer latency estimate on a device.",
    "check": "Check a run's artifacts against device budgets.",
    "stream": "Run an artifact on a video, bag or sequence at a camera's rate; record ROS 2 messages (MCAP).",
    "stability": "Flicker of FP32 and each artifact on one sequence, and parity in robot units.",
    "arm": "Build the emulated aarch64 runtimes that check artifacts on ARM kernels.",
    "demo": "The whole pipeline on the embedded synthroom data.",
    "report": "Write report.html and report.md for a run.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        mod, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(mod), attr)

    def format_commands(self, ctx, formatter):
        # Show help without importing every command module (and the heavy stacks they import).
        with formatter.section("Commands"):
            formatter.write_dl([(n, HELP.get(n, "")) for n in COMMANDS])

    def invoke(self, ctx):
        from edgehydra.errors import EdgeHydraError

        try:
            return super().invoke(ctx)
        except EdgeHydraError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {e}", err=True)
            ctx.exit(e.exit_code)
        except OSError as e:
            import errno

            if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or (ctx.obj and ctx.obj.get("debug")):
                raise
            click.echo(f"Error: disk full while writing {e.filename or 'output'} ({e.strerror}); free space and retry",
                       err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgehydra")
@click.option("--debug", is_flag=True, envvar="EDGEHYDRA_DEBUG", help="Show full tracebacks.")
@click.pass_context
def cli(ctx, debug):
    """edgehydra: quantise, export, verify and budget HydraNet for edge devices.

    Start with `edgehydra demo`: it runs the whole pipeline on built-in synthetic data.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if not debug:
        # executorch imports torchao, whose import logs 'Failed to load ..._C_mxfp8' (CUDA-only kernels)
        # into the output of every command that runs a .pte, not only the quantising ones
        from edgehydra.quiet import quiet_imports

        quiet_imports()


def main(argv=None):
    # A Ctrl-C during torch import etc. should not print a traceback either.
    try:
        cli.main(args=argv, prog_name="edgehydra")
    except KeyboardInterrupt:
        sys.exit(130)
