"""A histogram observer that clips at a percentile instead of searching the L2-optimal range."""
from __future__ import annotations

import torch
from torchao.quantization.pt2e import FakeQuantize, HistogramObserver


class PercentileHistogramObserver(HistogramObserver):
    """Range = [P(100 - p), P(p)] of the accumulated histogram (p = 99.99 by default).

    Clipping the extreme tails gives the bulk of the distribution finer steps; useful where a few
    outlier activations (e.g. at CRP sums) would otherwise stretch the int8 range.
    """

    def __init__(self, percentile: float = 99.99, **kwargs):
        super().__init__(**kwargs)
        self.percentile = float(percentile)

    def _non_linear_param_search(self):
        hist = self.histogram.double()
        total = hist.sum()
        if total <= 0:
            return self.min_val, self.max_val
        cdf = torch.cumsum(hist, 0) / total
        lo_q, hi_q = 1 - self.percentile / 100, self.percentile / 100
        lo_bin = int(torch.searchsorted(cdf, torch.tensor(lo_q, dtype=cdf.dtype)))
        hi_bin = int(torch.searchsorted(cdf, torch.tensor(hi_q, dtype=cdf.dtype)))
        width = (self.max_val - self.min_val) / self.bins
        new_min = self.min_val + width * lo_bin
        new_max = self.min_val + width * (hi_bin + 1)
        return torch.minimum(new_min, torch.zeros_like(new_min)), torch.maximum(new_max, torch.zeros_like(new_max))


class CalibratedFakeQuantize(FakeQuantize):
    """QAT activation fake-quant whose range comes from the recipe's PTQ observer.

    torchao's FakeQuantize recomputes scale/zero-point on every forward while observing; for a
    histogram observer that is an L2 range search per call. Here observing only accumulates, and
    the range is computed once, the next time fake quantisation runs. QAT calibrates these on the
    calibration set, then freezes them (calibration/qat.py): on synthroom the moving-average
    min/max ranges torchao's QAT uses by default cost depth accuracy before any training
    (docs/RESULTS.md).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stale = False

    @torch.no_grad()
    def refresh(self):
        """Compute scale/zero-point from what the observer has seen since the last refresh."""
        if self._stale:
            scale, zp = self.calculate_qparams()
            self.scale.resize_(scale.shape).copy_(scale)
            self.zero_point.resize_(zp.shape).copy_(zp)
            self._stale = False

    def forward(self, X):
        if self.observer_enabled[0] == 1:
            self.activation_post_process(X.detach())
            self._stale = True
        if self.fake_quant_enabled[0] == 1:
            self.refresh()
            X = torch.fake_quantize_per_tensor_affine(X, self.scale, self.zero_point,
                                                      self.activation_post_process.quant_min,
                                                      self.activation_post_process.quant_max)
        return X
