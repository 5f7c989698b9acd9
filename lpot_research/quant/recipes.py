"""The arithmetic of the recipes that keep ops INT8 with less error, written from the papers; each back end
applies it to its own model form (lpot_research.adaptors.onnx_recipes, lpot_research.adaptors.torch_recipes).

- SmoothQuant (Xiao et al., 2023, eq. 4): a Linear/MatMul's input X is divided per input channel j by
  s_j = max|X_j|^alpha / max|W_j|^(1-alpha) and its weight rows multiplied by s_j. X W is unchanged in
  float; outlier channels of X move into W, where per-channel weight quantization absorbs them.
- Cross-layer equalization (Nagel et al., 2019, "Data-free quantization", sec. 4.1): for y = W2 f(W1 x + b1)
  with f positively homogeneous (ReLU, identity), output channel i of W1 (and b1_i) is divided by s_i and
  input channel i of W2 multiplied by it, s_i = sqrt(r1_i / r2_i) with r the channels' weight ranges: both
  ranges become sqrt(r1_i r2_i), and the output is unchanged in float.
- Bias correction (same paper, sec. 4.2): weight rounding shifts the expected output by
  E[(W - Q(W)) x] = (W - Q(W)) E[x]; adding that to the bias removes it. E[x] is the FP32 model's per-channel
  input mean over the calibration data (for a convolution, the channel mean; padding is ignored).
"""

from __future__ import annotations

import numpy as np

FLOOR = 1e-5  # a channel's range below this counts as this (an all-zero channel divides by nothing)


def channel_reduce(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (`axis`) of a batch of activations: the largest magnitude and the sum, for `ChannelStats`."""
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0).reshape(x.shape[axis], -1)
    return np.abs(moved).max(axis=1), moved.sum(axis=1)


class ChannelStats:
    """Per-channel absolute maximum and mean of one activation tensor, accumulated over batches."""

    def __init__(self) -> None:
        self.absmax: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.count = 0

    def update(self, x: np.ndarray, axis: int) -> None:
        absmax, total = channel_reduce(x, axis)
        self.absmax = absmax if self.absmax is None else np.maximum(self.absmax, absmax)
        self.total = total if self.total is None else self.total + total
        self.count += x.size // x.shape[axis]

    @property
    def mean(self) -> np.ndarray:
        assert self.total is not None, "no batch seen"
        return self.total / max(1, self.count)


def smoothing_scales(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel s (X / s, W * s): max|X_j|^alpha / max|W_j|^(1 - alpha)."""
    a = np.maximum(np.asarray(act_absmax, dtype=np.float64), FLOOR)
    w = np.maximum(np.asarray(weight_absmax, dtype=np.float64), FLOOR)
    return a**alpha / w ** (1.0 - alpha)


def equalization_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Cross-layer equalization's per-channel s (W1 row / s, W2 column * s): sqrt(r1 / r2), 1 where either
    range is 0 (a dead channel stays as it is)."""
    r1, r2 = np.asarray(r1, dtype=np.float64), np.asarray(r2, dtype=np.float64)
    s = np.ones_like(r1)
    live = (r1 > FLOOR) & (r2 > FLOOR)
    s[live] = np.sqrt(r1[live] / r2[live])
    return s


def bias_shift(weight: np.ndarray, quantized: np.ndarray, input_mean: np.ndarray, groups: int = 1) -> np.ndarray:
    """E[(W - Q(W)) x] per output channel, to add to the bias: `weight`/`quantized` (the dequantized
    Q(W)) shaped [out, in] (a Linear) or [out, in / groups, *kernel] (a convolution), `input_mean` [in]."""
    err = np.asarray(weight, dtype=np.float64) - np.asarray(quantized, dtype=np.float64)
    mean = np.asarray(input_mean, dtype=np.float64)
    out, per_group = err.shape[0], err.shape[1]
    summed = err.reshape(out, per_group, -1).sum(axis=2)  # a convolution: each kernel sees the channel mean
    means = mean.reshape(groups, per_group)
    return (summed.reshape(groups, out // groups, per_group) * means[:, None, :]).sum(axis=2).reshape(out)
