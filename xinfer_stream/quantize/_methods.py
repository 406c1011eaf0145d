"""Scale algorithms: from a tensor's statistics to its clipping threshold ``amax``.

Every method returns ``amax``; the scale is ``amax / 127`` (symmetric INT8, ``_qdq.scale_from_amax``).

* ``max``: the largest ``|x|`` seen.
* ``percentile``: the ``p``-th percentile of ``|x|`` read off the histogram (upper edge of the bin
  where the cumulative count reaches ``p``%).
* ``entropy``: TensorRT's entropy calibration (v2), as NVIDIA describes it (GTC 2017 "8-bit
  inference with TensorRT"; pytorch-quantization's ``_compute_amax_entropy``, which ModelOpt
  reuses): a 2048-bin histogram of ``|x|``; for each candidate ``i`` from 128 to 2048, ``P`` is
  ``bins[:i]`` with every count beyond folded into ``P[i-1]``, ``Q`` is ``bins[:i]`` merged into
  128 levels and spread evenly over each level's non-empty bins; pick the ``i`` with the smallest
  ``KL(P || Q)`` (the last one on ties) and clip at that bin's edge. Like NVIDIA's implementation,
  bin 0 is replaced by bin 1 first, so the spike of exact zeros after a ReLU does not dominate.
  The search is done for all candidates at once with prefix sums (O(128) per candidate).
* ``mse``: the bin edge that minimises the expected squared error of quantize-dequantize, with
  values assumed uniform inside each bin (rounding error integrated exactly inside the clipping
  range, clipping error integrated exactly outside it).
* ``auto``: per tensor, the threshold of whichever of the four methods gives the lowest expected
  squared error on the tensor's full-resolution histogram (``mse`` searches a 512-bin merge of it,
  so another method's threshold can beat it).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._statistics import Histogram

__all__ = ["AUTO_CANDIDATES", "METHODS", "amax_auto", "amax_entropy", "amax_mse", "amax_percentile",
           "expected_error"]

METHODS = ("max", "percentile", "entropy", "mse", "auto")
AUTO_CANDIDATES = ("max", "percentile", "entropy", "mse")
_LEVELS = 128          # 8-bit symmetric: 128 magnitudes (sign handled by symmetry)


def amax_percentile(hist: Histogram, percentile: float) -> float:
    """The ``percentile`` (0-100] of ``|x|``: upper edge of the bin that reaches it."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    counts = hist.counts
    total = int(counts.sum())
    if total == 0 or hist.amax == 0.0:
        return 0.0
    if percentile == 100.0:
        return hist.amax
    cdf = np.cumsum(counts) / total
    index = int(np.searchsorted(cdf, percentile / 100.0, side="left"))
    index = min(index, len(counts) - 1)
    return float((index + 1) * hist.amax / len(counts))


def amax_entropy(hist: Histogram, *, start_bin: int = 128) -> float:
    """TensorRT's KL-divergence threshold (see the module docstring)."""
    h = hist.counts.astype(np.float64)
    n = len(h)
    if hist.amax == 0.0 or h.sum() == 0:
        return 0.0
    if n <= start_bin:
        return hist.amax
    h = h.copy()
    h[0] = h[1]
    total = h.sum()
    if total == 0:
        return hist.amax
    kl = entropy_divergences(h, start_bin)
    finite = np.isfinite(kl)
    if not finite.any():
        return hist.amax
    kl = np.where(finite, kl, np.inf)
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))       # the last minimum, as NVIDIA's code
    return float((start_bin + best) * hist.amax / n)


def entropy_divergences(h: npt.NDArray[np.float64], start_bin: int) -> npt.NDArray[np.float64]:
    """``KL(P_i || Q_i)`` for every candidate ``i`` in ``start_bin..len(h)`` (inclusive)."""
    n = len(h)
    candidates = np.arange(start_bin, n + 1, dtype=np.int64)           # i
    total = h.sum()
    csum = np.concatenate([[0.0], np.cumsum(h)])                        # C[m] = sum h[:m]
    nonzero = np.concatenate([[0], np.cumsum(h > 0)])                   # N[m]
    with np.errstate(divide="ignore", invalid="ignore"):
        hlogh = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    hl = np.concatenate([[0.0], np.cumsum(hlogh)])                      # sum h log h over [:m]
    # Level j of candidate i holds bins [ceil(j*i/128), ceil((j+1)*i/128)).
    j = np.arange(_LEVELS + 1, dtype=np.int64)
    bounds = (j[None, :] * candidates[:, None] + _LEVELS - 1) // _LEVELS    # (C, 129)
    level_sum = csum[bounds[:, 1:]] - csum[bounds[:, :-1]]                   # (C, 128)
    level_nnz = nonzero[bounds[:, 1:]] - nonzero[bounds[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        level_term = np.where(level_sum > 0,
                              level_sum * np.log(np.where(level_sum > 0, level_sum, 1.0)
                                                 / np.maximum(level_nnz, 1)), 0.0)
    outliers = total - csum[candidates]                                 # O_i
    last = h[candidates - 1]                                            # h[i-1]
    p_last = last + outliers
    with np.errstate(divide="ignore", invalid="ignore"):
        a = hl[candidates - 1] + np.where(p_last > 0, p_last * np.log(np.where(p_last > 0, p_last, 1.0)), 0.0)
        q_last = level_sum[:, -1] / np.maximum(level_nnz[:, -1], 1)
        b = level_term.sum(axis=1) + np.where(outliers > 0,
                                              outliers * np.log(np.where(q_last > 0, q_last, 1.0)),
                                              0.0)
        s_i = csum[candidates]
        kl = (a - b) / total + np.log(np.where(s_i > 0, s_i, 1.0)) - np.log(total)
    # P has mass where Q has none: the folded outliers on an empty last bin, or nothing kept.
    kl[(p_last > 0) & (last == 0)] = np.inf
    kl[s_i <= 0] = np.inf
    return np.asarray(kl, dtype=np.float64)


def amax_mse(hist: Histogram, *, start_bin: int = 32, max_bins: int = 512) -> float:
    """The bin edge minimising the expected quantize-dequantize squared error.

    The histogram is first merged down to at most ``max_bins`` bins (the search is quadratic in
    the number of bins; 1/512 of the range is finer than any threshold difference that matters).
    """
    counts = hist.counts.astype(np.float64)
    if hist.amax == 0.0 or counts.sum() == 0:
        return 0.0
    amax = hist.amax
    factor = -(-len(counts) // max_bins)
    if factor > 1:
        padded = np.zeros(factor * -(-len(counts) // factor))
        padded[: len(counts)] = counts
        counts = padded.reshape(-1, factor).sum(axis=1)
        amax = hist.amax * len(counts) * factor / len(hist.counts)
    n = len(counts)
    hist = Histogram(counts.astype(np.int64), amax)
    errors = mse_errors(counts, hist.amax, start_bin)
    best = int(np.argmin(errors))
    return float((min(start_bin, n) + best) * hist.amax / n)


def amax_auto(hist: Histogram, candidates: dict[str, float]) -> tuple[float, str]:
    """Of ``candidates`` (method -> threshold), the one with the lowest :func:`expected_error`;
    ties go to the first. Returns (threshold, method)."""
    usable = {m: a for m, a in candidates.items() if a > 0.0}
    if not usable or hist.amax == 0.0 or hist.counts.sum() == 0:
        method, amax = next(iter(candidates.items()))
        return amax, method
    names = list(usable)
    errors = expected_error(hist, np.array([usable[m] for m in names], dtype=np.float64))
    best = int(np.argmin(errors))
    return usable[names[best]], names[best]


def expected_error(hist: Histogram, thresholds: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Expected squared quantize-dequantize error per element of the histogram's values for each
    clipping threshold (values uniform inside each bin; any positive threshold)."""
    counts = hist.counts.astype(np.float64)
    return _errors(counts, hist.amax / len(counts), np.asarray(thresholds, dtype=np.float64))


def mse_errors(counts: npt.NDArray[np.float64], amax: float, start_bin: int
               ) -> npt.NDArray[np.float64]:
    """Expected squared error (per element) for thresholds at bin edges ``start_bin..n``."""
    n = len(counts)
    width = amax / n
    start = min(start_bin, n)
    return _errors(counts, width, np.arange(start, n + 1, dtype=np.float64) * width)


def _errors(counts: npt.NDArray[np.float64], width: float, thresholds: npt.NDArray[np.float64]
            ) -> npt.NDArray[np.float64]:
    n = len(counts)
    step = (thresholds / 127.0)[:, None]                                    # (C, 1)
    lo = (np.arange(n, dtype=np.float64) * width)[None, :]                  # (1, n)
    hi = lo + width
    t = thresholds[:, None]

    def rounding_integral(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        # integral over [0, x] of (u - step*round(u/step))^2 du, for 0 <= x <= threshold
        m = np.floor(x / step + 0.5)
        r = x - m * step
        return np.asarray(m * step**3 / 12.0 + (r**3 + step**3 / 8.0) / 3.0 - step**3 / 24.0)

    # Each bin: rounding error over its part below the threshold, clipping error (u - t)^2 over
    # its part above (a bin may straddle a threshold that is not a bin edge).
    rounding = rounding_integral(np.minimum(hi, t)) - rounding_integral(np.minimum(lo, t))
    a = np.maximum(lo - t, 0.0)
    b = np.maximum(hi - t, 0.0)
    clipping = (b * b * b - a * a * a) / 3.0
    per_bin = (rounding + clipping) / width
    return np.asarray(per_bin @ counts / counts.sum(), dtype=np.float64)
