"""Activation statistics: the FP32 model run in ONNX Runtime with chosen tensors exposed.

:class:`StatisticsCollector` owns one ONNX Runtime session of the FP32 model whose graph outputs
are extended with the tensors to calibrate. It streams over a :class:`Calibrator`'s batches and
keeps only fixed-size state per tensor (a running range; then a histogram of ``|x|`` over
``[0, amax]``), so memory is bounded by one batch's activations whatever the number of frames.

One pass collects both: the range of each tensor and a histogram of ``|x|`` whose range grows by
powers of two as larger values appear (``_AdaptiveHistogram``), ending with between ``bins`` and
``2 * bins`` bins up to the tensor's ``amax``. That is at least the resolution of the classic range
pass plus ``bins``-bin histogram pass, at half the cost: running the model with every calibrated
tensor exposed dominates the time. ONNX Runtime runs each batch on every core (intra-op threads).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from .._errors import CalibrationError, ClosedResourceError, InvalidCalibrationInput
from ._calibrator import Calibrator
from ._graph import model_input

__all__ = ["HISTOGRAM_SAMPLES", "Histogram", "Statistics", "StatisticsCollector", "TensorRange",
           "default_threads"]

Progress = Callable[[str, int, int], None]

_NP_OF_ONNX: dict[int, type[np.generic]] = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
               onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.DOUBLE: np.float64}


def default_threads() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class TensorRange:
    """Running range of one tensor over every calibration frame."""

    minimum: float
    maximum: float
    count: int                 # elements seen

    @property
    def amax(self) -> float:
        return max(abs(self.minimum), abs(self.maximum))


HISTOGRAM_SAMPLES = 1 << 20


@dataclass(frozen=True)
class Histogram:
    """Counts of ``|x|`` in ``len(counts)`` equal bins over ``[0, amax]`` (edges ``i*amax/bins``)."""

    counts: npt.NDArray[np.int64]
    amax: float

    @property
    def edges(self) -> npt.NDArray[np.float64]:
        return np.linspace(0.0, self.amax, len(self.counts) + 1)


@dataclass(frozen=True)
class Statistics:
    """What one calibration pass measured, by tensor name.

    ``fingerprint``: the calibration set's (:meth:`Calibrator.fingerprint`), so that statistics
    handed back to ``quantize(statistics=...)`` are refused for other frames. ``equalization``:
    the depthwise input factors measured on those frames (``_equalize``), by convolution name;
    the other fields are of the model they were applied to.
    """

    ranges: dict[str, TensorRange]
    histograms: dict[str, Histogram]          # empty when not asked for
    means: dict[str, npt.NDArray[np.float64]]  # per-index means along the asked axis
    fingerprint: str | None = None
    equalization: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)


class StatisticsCollector:
    """An ONNX Runtime session of the FP32 model that exposes ``tensors``; close when done."""

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], *, name: str = "model",
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self._name = name
        self._tensors = list(tensors)
        self._input = model_input(model, name)
        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        present = {o.name for o in exposed.graph.output}
        for tensor in self._tensors:
            if tensor not in present:
                exposed.graph.output.append(
                    helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
                present.add(tensor)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.log_severity_level = 3
        try:
            self._session: Any = ort.InferenceSession(
                exposed.SerializeToString(), sess_options=options,
                providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise CalibrationError(
                f"ONNX Runtime could not load {name!r} to collect statistics: {exc}") from exc
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._session = None
        self._closed = True

    def __enter__(self) -> StatisticsCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running ----------------------------------------------------------------------------
    def run(self, calibrator: Calibrator, tensors: Sequence[str] | None = None,
            progress: Progress | None = None, stage: str = "statistics"
            ) -> Iterator[dict[str, npt.NDArray[np.float32]]]:
        """Run every batch; yield ``{tensor: value}`` for ``tensors`` (default: all exposed)."""
        if self._closed:
            raise ClosedResourceError("this StatisticsCollector is closed")
        wanted = self._tensors if tensors is None else list(tensors)
        done = 0
        for index, batch in enumerate(calibrator.batches()):
            self._check_batch(batch, index, calibrator)
            try:
                values = self._session.run(wanted, {self._input.name: batch})
            except Exception as exc:  # ORT's own exception types
                raise CalibrationError(
                    f"ONNX Runtime failed running {self._name!r} on calibration batch {index} "
                    f"(shape {batch.shape}): {exc}") from exc
            done += len(batch)
            yield dict(zip(wanted, values, strict=True))
            if progress is not None:
                progress(stage, done, calibrator.num_frames)

    def collect(self, calibrator: Calibrator, *, histograms: bool = True, bins: int = 2048,
                mean_axes: Mapping[str, int] | None = None, progress: Progress | None = None
                ) -> Statistics:
        """One pass over the calibration batches: every exposed tensor's range; when
        ``histograms``, a histogram of ``|x|`` (see :class:`_AdaptiveHistogram`); for the tensors
        of ``mean_axes``, the mean of each index along that axis (for bias correction).

        Histograms of big tensors are built from an evenly strided sample of at most
        ``HISTOGRAM_SAMPLES`` values per tensor and batch (odd strides, so that the sample does
        not alias with rows or channels): every method that reads a histogram uses only its
        shape, and a million values a batch fix it to well under a bin. Ranges are exact.
        """
        lo = {t: np.inf for t in self._tensors}
        hi = {t: -np.inf for t in self._tensors}
        count = dict.fromkeys(self._tensors, 0)
        hists = {t: _AdaptiveHistogram(bins) for t in self._tensors} if histograms else {}
        axes = dict(mean_axes or {})
        sums: dict[str, npt.NDArray[np.float64]] = {}
        rows: dict[str, int] = dict.fromkeys(axes, 0)
        for values in self.run(calibrator, progress=progress, stage="statistics"):
            for tensor, value in values.items():
                if value.size == 0:
                    continue
                vmin, vmax = float(value.min()), float(value.max())
                if not (np.isfinite(vmin) and np.isfinite(vmax)):
                    raise CalibrationError(
                        f"{self._name!r} produced NaN or infinity in {tensor!r} on the calibration "
                        "frames; the FP32 model overflows on these inputs: check the Preprocess "
                        "(mean/std, value range) against what the model was trained on")
                lo[tensor] = min(lo[tensor], vmin)
                hi[tensor] = max(hi[tensor], vmax)
                count[tensor] += int(value.size)
                if histograms:
                    flat = value.reshape(-1)
                    stride = flat.size // HISTOGRAM_SAMPLES
                    sample = flat[:: stride | 1] if stride > 0 else flat
                    hists[tensor].add(sample, max(abs(vmin), abs(vmax)))
                if tensor in axes and value.ndim >= 1:
                    axis = axes[tensor] % value.ndim
                    others = tuple(i for i in range(value.ndim) if i != axis)
                    part = value.sum(axis=others, dtype=np.float64)
                    sums[tensor] = part if tensor not in sums else sums[tensor] + part
                    rows[tensor] += value.size // max(1, value.shape[axis])
        ranges = {t: TensorRange(float(lo[t]) if count[t] else 0.0,
                                 float(hi[t]) if count[t] else 0.0, count[t])
                  for t in self._tensors}
        means = {t: sums[t] / rows[t] for t in sums if rows[t]}
        return Statistics(ranges, {t: h.result() for t, h in hists.items()}, means)

    def _check_batch(self, batch: npt.NDArray[Any], index: int, calibrator: Calibrator) -> None:
        tensor_type = self._input.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        expected = _NP_OF_ONNX.get(tensor_type.elem_type)
        if len(dims) != batch.ndim or any(d is not None and d != s
                                           for d, s in zip(dims, batch.shape, strict=False)):
            shown = ["?" if d is None else d for d in dims]
            raise InvalidCalibrationInput(
                f"calibration batch {index} from {calibrator.name!r} has shape {batch.shape} but "
                f"{self._name!r} input {self._input.name!r} is {shown}; make the Preprocess "
                "(size, layout) match the model input")
        if expected is not None and batch.dtype != expected:
            raise InvalidCalibrationInput(
                f"calibration batch {index} from {calibrator.name!r} is {batch.dtype} but "
                f"{self._name!r} input {self._input.name!r} takes {np.dtype(expected)}; set the "
                "Preprocess dtype to match")
        if batch.dtype.kind == "f" and not np.isfinite(batch).all():
            raise InvalidCalibrationInput(
                f"calibration batch {index} from {calibrator.name!r} contains NaN or infinity")


class _AdaptiveHistogram:
    """A histogram of ``|x|`` built in one pass with a range that grows by powers of two.

    It holds ``2 * bins`` equal bins over ``[0, top]``; ``top`` starts at the first nonzero
    batch's ``amax`` and doubles (merging bin pairs exactly) whenever a batch exceeds it, so it
    ends within ``(amax, 2 * amax]`` and the bins up to ``amax`` number between ``bins`` and
    ``2 * bins``: at least the resolution of a two-pass ``bins``-bin histogram, in one pass.
    """

    def __init__(self, bins: int) -> None:
        self._counts = np.zeros(2 * bins, np.int64)
        self._top = 0.0
        self._amax = 0.0
        self._zeros = 0                       # counts seen while every value was 0

    def add(self, value: npt.NDArray[np.float32], amax: float) -> None:
        if amax == 0.0:
            self._zeros += int(value.size)
            return
        if self._top == 0.0:
            self._top = amax
        elif amax > self._top:
            factor = 1 << max(1, math.ceil(math.log2(amax / self._top)))
            while self._top * factor < amax:     # guard against log2 rounding down
                factor <<= 1
            n = len(self._counts)
            if factor >= n:
                merged = np.zeros(n, np.int64)
                merged[0] = self._counts.sum()
            else:
                merged = np.zeros(n, np.int64)
                merged[: n // factor] = self._counts.reshape(-1, factor).sum(axis=1)
            self._counts = merged
            self._top *= factor
        self._amax = max(self._amax, amax)
        self._counts += abs_histogram(value, self._top, len(self._counts))

    def result(self) -> Histogram:
        """The bins up to the last nonzero one, as a histogram over ``[0, used * width]``."""
        counts = self._counts.copy()
        counts[0] += self._zeros
        if self._top == 0.0:
            return Histogram(counts[: len(counts) // 2], 0.0)
        used = int(np.flatnonzero(counts).max()) + 1
        used = max(used, len(counts) // 2)
        return Histogram(counts[:used], self._top * used / len(counts))


def abs_histogram(value: npt.NDArray[np.float32], amax: float, bins: int) -> npt.NDArray[np.int64]:
    """Counts of ``|value|`` in ``bins`` equal bins over ``[0, amax]``; larger values land in the
    last bin."""
    flat = np.abs(value.reshape(-1))
    flat *= np.float32(bins / amax)
    index = flat.astype(np.int32)
    np.minimum(index, bins - 1, out=index)
    return np.bincount(index, minlength=bins).astype(np.int64)
