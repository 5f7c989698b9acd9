"""The histogram window searches on distributions whose right answer is known."""

import numpy as np

from lpot_research.quant.calibration import kl_range, mse_range, quantization_mse


def histogram(x, bins=2048):
    """A histogram symmetric about zero, as ONNX Runtime's calibrator builds it."""
    t = float(np.abs(x).max())
    hist, edges = np.histogram(x, bins=bins, range=(-t, t))
    return hist, edges, float(x.min()), float(x.max())


def clipped(x, window):
    return float(np.mean((x < window[0]) | (x > window[1])))


RNG = np.random.default_rng(0)


def test_a_relu_output_is_not_cut_by_its_spike_at_zero():
    """Half of a ReLU's outputs are exactly zero; the search used to let that spike decide the window
    and clip 1.5% of the positive values."""
    x = np.maximum(RNG.normal(size=200_000), 0.0)
    window = kl_range(*histogram(x))
    assert window[0] == 0.0 and clipped(x, window) < 0.002


def test_heavy_tails_are_clipped_only_as_far_as_that_quantizes_better():
    x = RNG.standard_t(df=5, size=200_000)
    hist, edges, lo, hi = histogram(x)
    centers = (edges[:-1] + edges[1:]) / 2
    a, b = mse_range(hist, edges, lo, hi)
    assert b - a < 0.8 * (hi - lo)  # the outliers are not worth the resolution they cost
    assert quantization_mse(hist, centers, a, b) < 0.8 * quantization_mse(hist, centers, lo, hi)
    # KL's own window here is about [-9, 8.5], which quantizes worse than the full range: the guard keeps it
    for sym in (False, True):
        assert quantization_mse(hist, centers, *kl_range(hist, edges, lo, hi), symmetric=sym) <= \
            quantization_mse(hist, centers, lo, hi, symmetric=sym)


def test_a_sparse_spiky_tensor_keeps_its_full_range():
    """A few thousand values in 2048 bins (a squeeze-excitation output): KL would clip it hard; the
    guard keeps the min-max range whenever the window quantizes worse."""
    x = np.concatenate([RNG.choice([0.1, 0.5, 3.0, 7.5], size=3000, p=[0.5, 0.3, 0.15, 0.05]), [12.0]])
    hist, edges, lo, hi = histogram(x)
    assert kl_range(hist, edges, lo, hi) == (lo, hi)


def test_mse_window_is_the_best_of_its_candidates():
    x = RNG.laplace(size=100_000)
    hist, edges, lo, hi = histogram(x)
    centers = (edges[:-1] + edges[1:]) / 2
    best = quantization_mse(hist, centers, *mse_range(hist, edges, lo, hi))
    for scale in (1.0, 0.8, 0.6, 0.4, 0.3):
        assert best <= quantization_mse(hist, centers, lo * scale, hi * scale) * (1 + 1e-9)


def test_an_empty_histogram_keeps_the_observed_range():
    edges = np.linspace(-1, 1, 2049)
    assert kl_range(np.zeros(2048), edges, 0.0, 0.0) == (0.0, 0.0)
    assert mse_range(np.zeros(2048), edges, 0.0, 0.0) == (0.0, 0.0)
