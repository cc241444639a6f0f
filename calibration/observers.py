"""A histogram observer that clips at a percentile instead of searching the L2-optimal range."""
from __future__ import annotations

import torch
from torchao.quantization.pt2e import HistogramObserver


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
