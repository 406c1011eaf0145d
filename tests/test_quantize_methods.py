"""Scale algorithms and histograms on synthetic distributions with known answers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from xinfer_stream._errors import CalibrationError
from xinfer_stream.quantize._methods import (
    amax_entropy,
    amax_mse,
    amax_percentile,
    entropy_divergences,
    mse_errors,
)
from xinfer_stream.quantize._qdq import quantize_weight, scale_from_amax
from xinfer_stream.quantize._statistics import Histogram, _AdaptiveHistogram, abs_histogram

RNG = np.random.default_rng(7)


def _hist(values: np.ndarray, bins: int = 2048) -> Histogram:
    amax = float(np.abs(values).max())
    counts, _ = np.histogram(np.abs(values), bins=bins, range=(0.0, amax))
    return Histogram(counts.astype(np.int64), amax)


def _reference_entropy(counts: np.ndarray, amax: float, start: int = 128) -> float:
    """TensorRT's entropy calibration written out loop by loop (GTC 2017 slides, as NVIDIA's
    pytorch-quantization codes it): the oracle for the vectorised search."""
    bins = counts.astype(np.float64).copy()
    bins[0] = bins[1]
    divergences = []
    for i in range(start, len(bins) + 1):
        space = np.linspace(0, i, num=128 + 1)
        level = np.digitize(range(i), space) - 1
        level[bins[:i] == 0] = -1
        merged = np.zeros(128)
        for k, lv in enumerate(level):
            if lv != -1:
                merged[lv] += bins[k]
        for lv, n in Counter(level).items():
            if lv != -1:
                merged[lv] /= n
        q = np.array([merged[lv] if lv != -1 else 0.0 for lv in level])
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        divergences.append(np.inf if (q[mask] == 0).any()
                           else float((p[mask] * np.log(p[mask] / q[mask])).sum()))
    d = np.array(divergences)
    best = len(d) - 1 - int(np.argmin(d[::-1]))
    return float(np.linspace(0, amax, len(bins) + 1)[best + start])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_matches_the_loop_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.laplace(0, 1 + seed, 100_000), rng.uniform(-40, 40, 30)])
    hist = _hist(x, bins=400)
    assert amax_entropy(hist) == pytest.approx(_reference_entropy(hist.counts, hist.amax), rel=1e-12)
    h = hist.counts.astype(np.float64)
    h[0] = h[1]
    assert np.isfinite(entropy_divergences(h, 128)).any()


def test_entropy_clips_rare_outliers_of_a_gaussian() -> None:
    x = np.concatenate([RNG.normal(0, 1, 500_000), [60.0, -55.0]])
    amax = amax_entropy(_hist(x))
    assert 3.0 < amax < 10.0                     # keeps the bulk (~4.9 sigma max), drops 60


def test_percentile_of_uniform_is_known() -> None:
    x = RNG.uniform(-10, 10, 2_000_000)
    hist = _hist(x)
    assert amax_percentile(hist, 90.0) == pytest.approx(9.0, abs=0.02)
    assert amax_percentile(hist, 99.99) == pytest.approx(10.0, abs=0.02)
    assert amax_percentile(hist, 100.0) == hist.amax
    with pytest.raises(ValueError):
        amax_percentile(hist, 0.0)


def test_mse_keeps_uniform_range_and_clips_an_outlier() -> None:
    uniform = RNG.uniform(-1, 1, 1_000_000)
    assert amax_mse(_hist(uniform)) == pytest.approx(1.0, abs=0.01)
    # One outlier at 30 among a million N(0, 1) values: clipping it costs 625e-6 per element at
    # t=5, keeping it costs (30/127)^2/12 = 4.6e-3 of rounding error: the optimum is near 4-6.
    gaussian = np.concatenate([RNG.normal(0, 1, 1_000_000), [30.0]])
    assert 3.0 < amax_mse(_hist(gaussian)) < 8.0


def test_mse_error_model_matches_monte_carlo() -> None:
    x = RNG.normal(0, 1, 400_000)
    hist = _hist(x, bins=256)
    errors = mse_errors(hist.counts.astype(np.float64), hist.amax, 32)
    for index in (40, 120, 220):                 # thresholds at bin edges 32 + index
        t = (32 + index) * hist.amax / 256
        s = t / 127
        q = np.clip(np.rint(x / s), -127, 127) * s
        assert errors[index] == pytest.approx(np.mean((x - q) ** 2), rel=0.05)


def test_max_calibration_and_scale_floor() -> None:
    assert scale_from_amax(12.7, "t") == pytest.approx(0.1)
    assert scale_from_amax(0.0, "t") == pytest.approx(1 / 127)      # dead tensor
    assert scale_from_amax(1e-38, "t") > 0 and np.isfinite(scale_from_amax(1e-38, "t"))
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(CalibrationError):
            scale_from_amax(bad, "t")


def test_weight_quantization_is_symmetric_per_channel() -> None:
    w = RNG.normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    w[1] *= 100
    w[2] = 0
    wq = quantize_weight("w", w, 0)
    assert wq.values.dtype == np.int8 and np.abs(wq.values).max() == 127
    assert wq.scales.shape == (4,) and (wq.scales > 0).all()
    np.testing.assert_allclose(wq.scales[[0, 1, 3]], np.abs(w[[0, 1, 3]]).reshape(3, -1).max(1) / 127,
                               rtol=1e-6)
    err = np.abs(wq.dequantized() - w).reshape(4, -1).max(1)
    assert (err <= wq.scales / 2 + 1e-7).all()
    with pytest.raises(CalibrationError, match="NaN or infinity"):
        quantize_weight("w", np.array([1.0, np.nan], np.float32), None)


def test_abs_histogram_matches_numpy() -> None:
    x = RNG.normal(0, 1, 10_000).astype(np.float32)
    amax = float(np.abs(x).max())
    ours = abs_histogram(x, amax, 64)
    theirs, _ = np.histogram(np.abs(x), bins=64, range=(0, amax))
    assert ours.sum() == x.size
    assert np.abs(ours - theirs).sum() <= 4      # float32 vs float64 bin edges


def test_adaptive_histogram_grows_by_merging_exactly() -> None:
    batches = [RNG.normal(0, s, 5000).astype(np.float32) for s in (1.0, 1.0, 7.0, 3.0)]
    hist = _AdaptiveHistogram(256)
    for b in batches:
        hist.add(b, float(np.abs(b).max()))
    result = hist.result()
    everything = np.concatenate(batches)
    assert result.counts.sum() == everything.size
    true_amax = float(np.abs(everything).max())
    assert true_amax <= result.amax <= true_amax * (1 + 2 / 256)
    assert 256 <= len(result.counts) <= 512
    # Same histogram as one computed directly with the final bin width, up to edge rounding.
    width = result.amax / len(result.counts)
    direct, _ = np.histogram(np.abs(everything), bins=len(result.counts), range=(0, width * len(result.counts)))
    assert np.abs(direct - result.counts).sum() <= 0.01 * everything.size


def test_adaptive_histogram_of_all_zeros() -> None:
    hist = _AdaptiveHistogram(256)
    hist.add(np.zeros(100, np.float32), 0.0)
    result = hist.result()
    assert result.amax == 0.0 and result.counts.sum() == 100
    assert amax_entropy(result) == 0.0 and amax_mse(result) == 0.0
    assert amax_percentile(result, 99.0) == 0.0
