"""An entropy (KL-divergence) calibration observer for torch.ao.

torch ships MinMax and Histogram observers; the HistogramObserver picks its range by minimizing an
L2 error estimate, not KL divergence. This observer keeps torch's histogram collection and replaces
only the range search: it picks the clipping window whose quantized distribution
has the smallest KL divergence from the observed distribution clipped to that window.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.ao.quantization.observer import HistogramObserver

from lpot_research.calibration import kl_window


class KLHistogramObserver(HistogramObserver):
    """HistogramObserver whose range is chosen by minimizing KL divergence (entropy calibration)."""

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        hist = self.histogram.detach().cpu().numpy()
        n = len(hist)
        lo, hi = float(self.min_val), float(self.max_val)
        width = (hi - lo) / n
        if width <= 0:
            return self.min_val, self.max_val
        zero_bin = int(np.clip(round(-lo / width), 0, n))
        start, end = kl_window(hist, int(self.quant_max - self.quant_min + 1), zero_bin)
        new_min = torch.tensor(lo + start * width, dtype=self.min_val.dtype)
        new_max = torch.tensor(lo + end * width, dtype=self.max_val.dtype)
        return new_min, new_max
