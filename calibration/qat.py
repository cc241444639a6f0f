"""Quantisation-aware fine-tuning on the pt2e flow.

(batch norm folded into the convolutions when the recipe freezes it from epoch 0) -> torch.export (train mode,
dynamic batch) -> prepare_qat_pt2e -> calibrate activation ranges with the recipe's observer on the calibration set
and freeze them (the PTQ starting point) -> fine-tune with the paper's loss (optionally distilling from the FP32
model) -> freeze BN statistics, then observers, at the recipe's epochs -> move_exported_model_to_eval -> convert_pt2e.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from edgehydra.quiet import quiet_imports

from .ptq import export_stage, prepare_stage
from .quantizers import translate
from .recipe import Recipe

_BN_TARGETS = ("aten.batch_norm", "aten._native_batch_norm_legit", "aten.cudnn_batch_norm")


def bn_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and str(n.target).startswith(_BN_TARGETS)
            and "no_training" not in str(n.target)]


def freeze_bn(gm) -> int:
    """Stop batch-norm statistics updates in an exported QAT graph (training arg -> False).

    The pt2e tutorial's recipe; must be re-applied after move_exported_model_to_train, which
    sets the flag back."""
    n_frozen = 0
    for n in bn_nodes(gm):
        args = list(n.args)
        if len(args) > 5 and args[5] is not False:
            args[5] = False
            n.args = tuple(args)
            n_frozen += 1
    if n_frozen:
        gm.recompile()
    return n_frozen


def set_observers(gm, enabled: bool):
    quiet_imports()
    from torchao.quantization.pt2e import disable_observer, enable_observer

    gm.apply(enable_observer if enabled else disable_observer)


def fold_bn(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """A copy of ``model`` with every batch norm that follows a convolution in a Sequential folded into it (the
    batch norm left as an Identity, so module paths do not move); returns (copy, number folded).

    Why: with batch norm frozen from QAT's first step, torchao's conv + BN QAT pattern computes exactly a folded
    convolution (conv(x, fq(w * gamma / std)) / (gamma / std), then BN on its running statistics), but matching it
    exports about 140 small pattern graphs in prepare_qat_pt2e and again in convert_pt2e: 110 of 194 s of a
    profiled tiny QAT run (AMD EPYC Zen 3, docs/CHANGELOG.md). Folded first, the graph has no batch norm and both
    passes return at once. What changes is what the optimiser trains: the folded weight and bias instead of the
    weight, gamma and beta (the forward is the same); measured in docs/quantise.md."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model)
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq[i + 1] = torch.nn.Identity()
                folded += 1
    return model, folded


class QATController:
    """Train/eval switches and the freeze schedule for an exported QAT graph."""

    def __init__(self, gm, recipe: Recipe):
        self.gm, self.recipe = gm, recipe
        self.obs_frozen = False
        self.events: list[str] = []
        # prepare_qat folds batch norm away when the schedule freezes it from epoch 0: nothing is left to freeze
        self.bn_frozen = not bn_nodes(gm)
        if self.bn_frozen:
            self.events.append("batch norm folded into the convolutions before export (frozen from the start)")

    def set_train(self, gm):
        from torchao.quantization.pt2e import move_exported_model_to_train

        move_exported_model_to_train(gm)
        if self.bn_frozen:
            freeze_bn(gm)

    def set_eval(self, gm):
        from torchao.quantization.pt2e import move_exported_model_to_eval

        move_exported_model_to_eval(gm)

    @torch.no_grad()
    def calibrate(self, dataset, calib, progress=None):
        """Start QAT where PTQ ends: activation ranges from the recipe's observer (histogram + L2 search
        by default) over the calibration frames, then frozen for the fine-tuning.

        Measured on synthroom (runs/default, 1 epoch, lr 1e-4, BN frozen): with torchao's default
        moving-average min/max activation ranges, QAT's depth RMSE was 0.750 m against PTQ's 0.680 m
        (FP32 0.673 m); calibrated ranges are docs/RESULTS.md's QAT row.
        """
        from torchao.quantization.pt2e import disable_fake_quant, enable_fake_quant

        from .observers import CalibratedFakeQuantize
        from .ptq import calibrate_stage

        acts = [m for m in self.gm.modules() if isinstance(m, CalibratedFakeQuantize)]
        if not acts:
            return 0
        self.set_eval(self.gm)
        self.gm.apply(disable_fake_quant)
        set_observers(self.gm, True)
        calibrate_stage(self.gm, dataset, calib, progress=progress)
        self.gm.apply(enable_fake_quant)
        for m in acts:
            m.disable_observer()
            m.refresh()
        self.events.append(f"activation ranges calibrated on {len(calib.indices)} frames and frozen")
        return len(acts)

    def epoch_hook(self, epoch: int):
        s = self.recipe.qat
        if s.freeze_bn_epoch >= 0 and epoch >= s.freeze_bn_epoch and not self.bn_frozen:
            self.bn_frozen = True
            self.events.append(f"epoch {epoch + 1}: batch-norm statistics frozen")
        if s.freeze_observer_epoch >= 0 and epoch >= s.freeze_observer_epoch and not self.obs_frozen:
            set_observers(self.gm, False)
            self.obs_frozen = True
            self.events.append(f"epoch {epoch + 1}: observers frozen")


def prepare_qat(model: torch.nn.Module, recipe: Recipe, size, backend: str = "xnnpack"):
    """The QAT graph of ``model`` (not modified). Batch norm frozen from epoch 0 is folded first (fold_bn)."""
    tr = translate(recipe, backend, is_qat=True)
    if recipe.qat.freeze_bn_epoch == 0:
        model, _ = fold_bn(model)
    gm = prepare_stage(export_stage(model, size, train=True), tr, qat=True)
    return gm, tr


def distill_loss(teacher: torch.nn.Module, tasks, weight: float = 1.0, temperature: float = 1.0):
    """Self-distillation: KL(student || FP32 teacher) on segmentation logits + L1 on depth."""

    def fn(batch, outs):
        with torch.no_grad():
            t_outs = teacher(batch["image"])
        o, t = dict(zip(tasks, outs)), dict(zip(tasks, t_outs))
        T = temperature
        kl = F.kl_div(F.log_softmax(o["segm"] / T, 1), F.log_softmax(t["segm"] / T, 1), log_target=True,
                      reduction="batchmean") * T * T / (o["segm"].shape[-1] * o["segm"].shape[-2])
        l1 = (o["depth"] - t["depth"]).abs().mean()
        return weight * (kl + l1), {"kd_seg": float(kl.detach()), "kd_depth": float(l1.detach())}

    return fn
