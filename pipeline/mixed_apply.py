"""Ship a chosen mixed-precision assignment: quantise it into its own program, export exactly that program as
its own artifact for the device's format, and check that artifact (``sensitivity --apply``, the demo's apply
stage). Nothing here looks up "the run's program": each stage is handed what the one before made."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgehydra.dataspec import resolve_size
from edgehydra.devices.profile import load_run_profile
from edgehydra.errors import EdgeHydraError
from edgehydra.run import Run


@dataclass(frozen=True)
class ApplyConfig:
    """How a chosen recipe is quantised and shipped: PTQ, or QAT for ``qat_epochs`` on the first ``qat_frames``
    training frames; at ``size`` (None: the device's budget size); calibration and validation frames."""
    qat: bool = False
    size: tuple | None = None
    calib_frames: int = 32
    qat_epochs: int = 1
    qat_frames: int | None = None
    eval_frames: int = 32


def apply(run: Run | Path, device: str, recipe_file: Path, cfg: ApplyConfig = ApplyConfig(), progress=None) -> dict:
    """Hand the chosen recipe on: PTQ (or QAT) into the run as the variant ``mixed-<device>`` (its own program,
    RUN/<stage>/mixed-<device>/program.pt2), export exactly that program for the device's format (its own
    artifact, hydranet_int8-mixed-<device>_<H>x<W><suffix>, beside the run's all-int8 one), and check that
    artifact. Nothing here looks up "the run's program": each stage is handed what the one before made."""
    from edgehydra.calibration.quant_stages import QuantJob, ptq_run, qat_run
    from edgehydra.devices.check import check_device
    from edgehydra.exporters.export_stage import ExportSettings, ExportSource, export_run, summary_rows

    run = run if isinstance(run, Run) else Run(run)
    profile = load_run_profile(run, device)
    size = resolve_size(cli=cfg.size, device=profile)  # the device's budget size unless the caller names one
    variant = f"mixed-{profile.name}"
    ckpt = run.checkpoint()
    if cfg.qat:
        from edgehydra.train import TrainConfig

        tcfg = TrainConfig(epochs=cfg.qat_epochs, lr_encoder=1e-4, lr_decoder=1e-4, schedule="cosine")
        q = qat_run(ckpt, run, tcfg, QuantJob(str(recipe_file), size=size, calib_frames=cfg.calib_frames,
                                              val_limit=cfg.eval_frames, frames=cfg.qat_frames, variant=variant),
                    progress=progress)
    else:
        q = ptq_run(ckpt, run, QuantJob(str(recipe_file), size=size, calib_frames=cfg.calib_frames, variant=variant),
                    progress=progress)
    res = export_run(run.export_dir, [profile.format], ["int8"], source=ExportSource(run=run.root, program=Path(q["program"])),
                     settings=ExportSettings(size=size, eval_frames=cfg.eval_frames), progress=progress)
    shipped = next((r for r in res if r.ok and r.path is not None), None)
    if shipped is None:
        raise EdgeHydraError(f"the {variant} program did not export for {profile.format}: "
                             + "; ".join(r.reason for r in res))
    verdict = check_device(run, profile, artifact=shipped.path)
    return {"quantised": q["program"], "export": summary_rows(res), "artifact": str(shipped.path), "check": verdict}
