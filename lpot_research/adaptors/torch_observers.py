"""An entropy (KL-divergence) calibration observer for torch.ao.

torch ships MinMax and Histogram observers; the HistogramObserver picks its range by minimizing an
L2 error estimate, not KL divergence. This observer keeps torch's histogram collection and replaces
only the range search: among windows [min*f, max*f] of the observed histogram, it picks the one whose
quantized distribution has the smallest KL divergence from the (clipped) observed distribution.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.ao.quantization.observer import HistogramObserver


def kl_threshold(hist: np.ndarray, levels: int, zero_bin: int = 0, candidates: int = 256) -> tuple[int, int]:
    """The [start, end) bin window of `hist` that minimizes KL(P || Q), where P is the histogram
    clipped to the window (outliers folded into the edge bins) and Q is P's content quantized to
    `levels` evenly spaced levels. The window shrinks both ends proportionally towards `zero_bin` (the
    bin holding 0.0, or 0 when all values are positive), so zero stays representable."""
    hist = np.asarray(hist, dtype=np.float64)
    nbins = len(hist)
    if nbins <= levels or hist.sum() == 0:
        return 0, nbins
    best, best_kl = (0, nbins), np.inf
    for width in np.unique(np.linspace(levels, nbins, candidates).astype(int)):
        start = int(round(zero_bin * (1 - width / nbins)))
        end = min(nbins, start + width)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += hist[:start].sum()
        p[-1] += hist[end:].sum()
        nonzero = (sliced != 0).astype(np.float64)
        # split the window into `levels` nearly equal chunks (as np.array_split does)
        base, extra = divmod(end - start, levels)
        sizes = np.full(levels, base)
        sizes[:extra] += 1
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        sums = np.add.reduceat(sliced, starts)
        counts = np.add.reduceat(nonzero, starts)
        level_value = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        q = np.repeat(level_value, sizes) * nonzero
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p /= ps
        q /= qs
        mask = p > 0
        qm = np.where(q[mask] > 0, q[mask], 1e-12)
        kl = float(np.sum(p[mask] * np.log(p[mask] / qm)))
        if kl < best_kl:
            best_kl, best = kl, (start, end)
    return best




class KLHistogramObserver(HistogramObserver):
    """HistogramObserver whose range is chosen by minimizing KL divergence (entropy calibration)."""

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        hist = self.histogram.detach().cpu().numpy()
        nbins = len(hist)
        lo, hi = float(self.min_val), float(self.max_val)
        width = (hi - lo) / nbins
        if width <= 0:
            return self.min_val, self.max_val
        zero_bin = int(np.clip(round(-lo / width), 0, nbins))  # the window shrinks towards zero
        start, end = kl_threshold(hist, int(self.quant_max - self.quant_min + 1), zero_bin)
        new_min = torch.tensor(lo + start * width, dtype=self.min_val.dtype)
        new_max = torch.tensor(lo + end * width, dtype=self.max_val.dtype)
        return new_min, new_max
