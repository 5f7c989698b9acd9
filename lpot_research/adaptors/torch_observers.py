"""An entropy (KL-divergence) calibration observer, for torch.ao (FX back end) and torchao's PT2E
(export back end).

Both ship MinMax and Histogram observers; the HistogramObserver picks its range by minimizing an
L2 error estimate, not KL divergence. This observer keeps the histogram collection and replaces
only the range search: it picks the clipping window whose quantized distribution
has the smallest KL divergence from the observed distribution clipped to that window.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch.ao.quantization.observer import HistogramObserver

from lpot_research.quant.calibration import kl_window


def kl_param_search(self: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The KL range search of a histogram observer (torch.ao's or torchao's: the same attributes). The
    histogram already spans the observed range and the search uses the real number of levels; the spike
    at zero (ReLU outputs) is ignored, else it decides the window and clips the tail (a ReLU output lost
    1.6% of its values to clipping; digits_cnn 0.9889 -> 0.9907, minilm_wordnet 0.725 -> 0.730 without it)."""
    hist = self.histogram.detach().cpu().numpy().astype(np.float64)
    n = len(hist)
    lo, hi = float(self.min_val), float(self.max_val)
    width = (hi - lo) / n
    if width <= 0:
        return self.min_val, self.max_val
    zero_bin = int(np.clip(round(-lo / width), 0, n))
    if n > 1 and zero_bin < n:
        hist[zero_bin] = hist[zero_bin + 1] if zero_bin + 1 < n else hist[zero_bin - 1]
    start, end = kl_window(hist, int(self.quant_max - self.quant_min + 1), zero_bin)
    new_min = torch.tensor(lo + start * width, dtype=self.min_val.dtype)
    new_max = torch.tensor(lo + end * width, dtype=self.max_val.dtype)
    return new_min, new_max


class KLHistogramObserver(HistogramObserver):
    """torch.ao's HistogramObserver with the KL range search (FX graph mode)."""

    _non_linear_param_search = kl_param_search


@functools.cache
def pt2e_kl_observer() -> type:
    """torchao's PT2E HistogramObserver with the KL range search (imported on first use: torchao is
    needed by the export back end only)."""
    from torchao.quantization.pt2e.observer import HistogramObserver as PT2EHistogramObserver

    cls = type("PT2EKLHistogramObserver", (PT2EHistogramObserver,),
               {"_non_linear_param_search": kl_param_search, "__module__": __name__})
    globals()[cls.__name__] = cls  # picklable by name
    return cls
