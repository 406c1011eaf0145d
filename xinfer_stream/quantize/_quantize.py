"""``quantize()``: an FP32 ONNX model plus calibration frames -> a Q/DQ INT8 model and its report.

The steps, each in its own module: normalise the graph and decide placement (``_graph``), run the
FP32 model over the calibration batches to collect ranges and, for histogram methods, histograms
(``_statistics``), turn statistics into clipping thresholds (``_methods``), quantize weights and
insert Q/DQ pairs (``_qdq``), correct the float biases for the mean shift quantization adds
(``_bias``: weight rounding, then layer by layer on the Q/DQ model itself through ``_layerwise``),
optionally cast what stays float to FP16 (``_float16``), optionally measure accuracy on held-out
frames (``_evaluate``, checked by ``_holdout``): the accuracy is that of the model bytes written,
against the FP32 model file, Q/DQ executed as written; per-layer SQNR diagnostics come from a
separate run of a copy that exposes the quantized layers' outputs, on a few of those frames.

Artifacts, all written atomically and only once everything has been computed (a failure leaves
no new file behind, and an earlier artifact of the same name untouched):

* ``<output>``: the Q/DQ model (``model.int8.onnx``), passing ``onnx.checker`` full check;
* ``<stem>.json``: method, frames and calibration-set hashes, per-tensor ranges and scales,
  per-weight scales, excluded nodes, the INT8 share of the written model (``_share``: which
  weighted ops run in INT8, the fraction of MACs they hold, why each other one stays float),
  timings, and, when held-out frames are given, the accuracy report (``accuracy``), which
  sources were held out (``holdout``) and the per-layer diagnostics (``diagnostics``);
* ``<stem>.calib.cache``: the scales in TensorRT's calibration-cache text format;
* ``<stem>.preprocess.json``: the Preprocess the frames went through (``preprocess_path_for``).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper

from .._errors import CalibrationError
from .._files import atomic_output, atomic_write_bytes, atomic_write_json, sha256_bytes
from ..preprocess import preprocess_path_for
from ._bias import (apply_bias_correction, apply_bias_offsets, correctable_nodes,
                    empirical_bias_offsets, mean_axis_of)
from ._cache import CalibrationCache
from ._calibrator import CalibrationWarning, Calibrator, fixed_batch
from ._detection_head import describe_detection_tail
from ._equalize import equalization_factors, equalize
from ._evaluate import AccuracyReport, TensorError, evaluate
from ._holdout import check_holdout
from ._graph import Placement, QuantPlan, load_model, plan, prepare
from ._methods import (AUTO_CANDIDATES, METHODS, amax_auto, amax_entropy, amax_mse,
                       amax_percentile)
from ._float16 import cast_to_float16
from ._qdq import WeightQuantization, half_scale, insert_qdq, quantize_weight, scale_from_amax
from ._sensitivity import quantized_inputs
from ._share import Int8Share, int8_share, weighted_macs
from ._statistics import Histogram, Statistics, StatisticsCollector, TensorRange

__all__ = [
    "BiasCorrection",
    "CalibrationWarning",
    "QuantizationResult",
    "TensorCalibration",
    "cache_path_for",
    "quantize",
    "report_path_for",
]

Progress = Callable[[str, int, int], None]
BiasCorrection = Literal["empirical", "weights", "none"]
BIAS_CORRECTIONS: tuple[BiasCorrection, ...] = ("empirical", "weights", "none")
# The defaults of quantize() and of the command line, chosen by leave-one-source-out accuracy
# (docs/default_method.md).
DEFAULT_METHOD = "auto"
DEFAULT_BIAS_CORRECTION: BiasCorrection = "empirical"
_REPORT_FORMAT = "xinfer-stream.quantization"
_REPORT_VERSION = 1
# Held-out frames (spread over the set) on which the per-layer SQNR diagnostics are measured.
_DIAGNOSTIC_FRAMES = 64
_CACHE_ALGORITHM = {"max": "MinMaxCalibration", "entropy": "EntropyCalibration2",
                    "percentile": "EntropyCalibration2", "mse": "EntropyCalibration2",
                    "auto": "EntropyCalibration2"}


@dataclass(frozen=True)
class TensorCalibration:
    """One quantized activation: its observed range, the chosen threshold and the scale."""

    name: str
    minimum: float
    maximum: float
    amax: float
    scale: float
    method: str


@dataclass(frozen=True)
class QuantizationResult:
    """What :func:`quantize` wrote and measured.

    Counted on the written model: ``tensors`` (one per activation Q/DQ pair),
    ``quantized_nodes`` (the nodes reading a ``DequantizeLinear`` output) and ``int8_share``
    (which weighted ops run in INT8 and their share of the MACs, with why each other one stays
    float). ``excluded_nodes`` are the nodes ``exclude`` matched.
    """

    model_path: Path
    report_path: Path
    cache_path: Path
    preprocess_path: Path | None
    method: str
    num_frames: int
    fingerprint: str
    tensors: tuple[TensorCalibration, ...]
    quantized_nodes: tuple[str, ...]
    excluded_nodes: tuple[str, ...]
    accuracy: AccuracyReport | None
    seconds: float
    int8_share: Int8Share

    bias_corrected_nodes: tuple[str, ...] = ()
    bias_correction: BiasCorrection = "weights"
    # Per-layer SQNR on a copy exposing the quantized layers' outputs, worst first: where
    # quantization hurts, not the written model's accuracy (that is ``accuracy``).
    layer_errors: tuple[TensorError, ...] = ()
    holdout_sources: tuple[str, ...] = ()
    # A recognised detection head's box-decoding tail, kept in float (``_detection_head``).
    detection_tail: tuple[str, ...] = ()
    # Depthwise convolution inputs given one scale that fits all their channels (``_equalize``).
    equalized: tuple[str, ...] = ()
    # What the calibration pass measured; ``quantize(statistics=...)`` reuses it for another
    # exclusion list or option on the same frames without running the FP32 model again.
    statistics: Statistics | None = field(default=None, repr=False, compare=False)

    @property
    def scales(self) -> dict[str, float]:
        return {t.name: t.scale for t in self.tensors}

    def summary(self) -> str:
        """A few lines for a terminal: what was written and, if measured, the accuracy."""
        lines = [(f"{self.method} calibration on {self.num_frames} frames: "
                  f"{len(self.tensors)} activations quantized, {len(self.quantized_nodes)} nodes "
                  f"read quantized inputs, {len(self.excluded_nodes)} excluded, "
                  f"{len(self.bias_corrected_nodes)} biases corrected, {self.seconds:.1f} s"),
                 self.int8_share.describe(),
                 *(f"  {line}" for line in self.int8_share.float_lines()),
                 *([describe_detection_tail(self.detection_tail)] if self.detection_tail else []),
                 *([f"{len(self.equalized)} depthwise convolution inputs equalized: one scale "
                    "fits all their channels (their factors folded into the weights)"]
                   if self.equalized else []),
                 f"report {self.report_path}, TensorRT calibration cache {self.cache_path}"]
        if self.accuracy is not None:
            lines += describe_accuracy(self.accuracy, self.holdout_sources)
        if self.layer_errors:
            lines.append("per-layer diagnostics (SQNR of quantized layers' outputs, on a copy of "
                         "the model exposing them):")
            for t in self.layer_errors[:3]:
                lines.append(f"  low SQNR {t.sqnr_db:6.1f} dB  {t.name}")
        return "\n".join(lines)


def describe_accuracy(accuracy: AccuracyReport, sources: Sequence[str] = ()) -> list[str]:
    """Lines for a terminal: the written model's accuracy on the held-out frames, per source,
    and why a metric cannot tell when it cannot."""
    agreement = accuracy.top1_agreement
    shown = ("n/a (no classifier output)" if agreement is None else f"{100 * agreement:.1f}%")
    where = f" from {', '.join(sources)}" if sources else ""
    lines = [f"written model on {accuracy.frames} held-out frames{where}: top-1 agreement "
             f"{shown}, cosine {accuracy.cosine_mean:.4f}"]
    if len(accuracy.by_source) > 1:
        for s in accuracy.by_source:
            top1 = "" if s.top1_agreement is None else f"top-1 {100 * s.top1_agreement:.1f}%, "
            lines.append(f"  {s.source}: {s.frames} frames, {top1}cosine {s.cosine_mean:.4f}")
    lines += [f"  cannot tell: {note}" for note in accuracy.notes]
    return lines


def report_path_for(output: str | os.PathLike[str]) -> Path:
    """``model.int8.onnx`` -> ``model.int8.json``."""
    p = Path(output)
    return p.with_name(p.stem + ".json")


def cache_path_for(output: str | os.PathLike[str]) -> Path:
    """``model.int8.onnx`` -> ``model.int8.calib.cache``."""
    p = Path(output)
    return p.with_name(p.stem + ".calib.cache")


def quantize(model: str | os.PathLike[str], calibrator: Calibrator, output: str | os.PathLike[str],
             *, method: str = DEFAULT_METHOD, percentile: float = 99.99, exclude: Sequence[str] = (),
             per_channel: bool = True, progress: Progress | None = None,
             placement: Placement = "trt", bins: int = 2048, num_frames: int | None = None,
             holdout: Calibrator | None = None, threads: int | None = None,
             cache_algorithm: str | None = None,
             bias_correction: bool | BiasCorrection = DEFAULT_BIAS_CORRECTION, correction_frames: int = 32,
             float16: bool = False, statistics: Statistics | None = None,
             float_detection_tail: bool = True) -> QuantizationResult:
    """Quantize the FP32 ONNX ``model`` to a Q/DQ INT8 model at ``output``; see the module doc.

    ``method``: ``max``, ``percentile`` (at ``percentile``), ``entropy`` (TensorRT's KL search),
    ``mse``, or ``auto`` (per tensor, whichever of those has the lowest expected error). ``exclude``: regular expressions matched in full against node names and op types
    (e.g. ``"/_conv_stem/Conv"``, ``"Gemm"``) whose inputs stay float. ``num_frames``: frames
    wanted; fewer available gives a :class:`CalibrationWarning`, more uses the first
    ``num_frames``. ``holdout``: frames never used for calibration on which the accuracy report
    is measured, on the model written (see the module doc; ``_holdout`` for what the frames
    should be and the warnings when they cannot tell). ``progress(stage, done, total)`` is called
    after each batch. Defaults: :data:`DEFAULT_METHOD`, :data:`DEFAULT_BIAS_CORRECTION`.
    ``bias_correction`` (see ``_bias``): ``"empirical"`` (``True`` means it) first
    subtracts from each float bias the mean shift its weight rounding adds, then measures the Q/DQ
    model layer by layer on ``correction_frames`` calibration frames spread over the set and sets
    each quantized Conv/Gemm bias so that its output mean matches the FP32 model's, later layers
    measured with earlier corrections in place; ``"weights"`` does the first step only, which
    treats each node independently of the others (what a search that returns nodes to float one
    by one from a written model needs); ``"none"`` (or ``False``) leaves biases alone.
    ``float16``: cast what stays unquantized to FP16 (see ``_float16``: numerically fragile ops
    and the nodes producing graph outputs stay FP32, the model's inputs and outputs keep their
    types; the opset becomes 19 for FP16 Q/DQ scales, which are then exact FP16 values).
    ``float_detection_tail``: a detector's box-decoding tail (the Sigmoid/Exp/Concat/Reshape...
    after its last convolutions, recognised by ``_detection_head``) gets no Q/DQ pair; the
    result's ``detection_tail`` and the report name its nodes. False quantizes it too.
    ``statistics``: an earlier result's ``.statistics`` on the same frames (same calibration
    set, same model): the calibration pass is skipped. It must cover what this call needs
    (every tensor to quantize; histograms unless ``method="max"``; channel means unless
    ``bias_correction="none"``), or ``ValueError`` says what is missing; excluding more nodes
    than the earlier call always fits.

    With ``per_channel``, each depthwise convolution whose input feeds nothing else first gets
    its input's channels scaled to one range, the factors folded into its weights (``_equalize``:
    TensorRT gives an activation one scale for all its channels); the result's ``equalized``
    and the report name those tensors. Reused ``statistics`` bring the factors they were
    measured with.

    Every Conv/ConvTranspose/Gemm/MatMul is quantized on its data and its weight, whatever
    form the weight is stored in (see ``_graph``), or stays float with the reason in
    ``result.int8_share``; a :class:`CalibrationWarning` names the biggest float ops when less
    than half of the written model's MACs run in INT8.

    Raises ``InvalidCalibrationInput`` for an unusable model or frames (already quantized, no
    quantizable op, shape mismatch, NaN/inf) and ``CalibrationError`` when a step fails.
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    if bins < 256:
        raise ValueError(f"bins must be at least 256 (the entropy search needs 128 levels), got {bins}")
    correction = _bias_mode(bias_correction)
    if isinstance(correction_frames, bool) or correction_frames < 1:
        raise ValueError(f"correction_frames must be a positive int, got {correction_frames!r}")
    model_path = Path(model)
    output_path = Path(output)
    label = model_path.name
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        if calibrator.num_frames < num_frames:
            warnings.warn(
                f"asked for {num_frames} calibration frames but {calibrator.name!r} holds only "
                f"{calibrator.num_frames}; calibrating on those (scales may be less reliable)",
                CalibrationWarning, stacklevel=2)
        calibrator = calibrator.head(num_frames)
    elif calibrator.requested_frames is not None and calibrator.num_frames < calibrator.requested_frames:
        warnings.warn(
            f"the calibration set {calibrator.name!r} holds {calibrator.num_frames} frames of the "
            f"{calibrator.requested_frames} asked of the sampler; calibrating on those",
            CalibrationWarning, stacklevel=2)
    if holdout is not None:
        check_holdout(calibrator, holdout, stacklevel=2)

    source = load_model(model_path)
    model_batch = fixed_batch(source)
    calibrator = calibrator.for_model_batch(model_batch)
    if holdout is not None:
        holdout = holdout.for_model_batch(model_batch)
    prepared = prepare(source, name=label)
    stats_started = time.perf_counter()
    # Depthwise inputs get one scale that fits all their channels (see _equalize); reused
    # statistics bring the factors they were measured with.
    if statistics is not None:
        factors = statistics.equalization
    elif per_channel:
        factors = equalization_factors(prepared, calibrator, name=label, threads=threads,
                                       progress=progress)
    else:
        factors = {}
    equalized = equalize(prepared, factors)
    qplan = plan(prepared, exclude=exclude, placement=placement, name=label,
                 float_detection_tail=float_detection_tail)

    tensors = list(qplan.activations)
    mean_axes = mean_axis_of(prepared, qplan) if correction != "none" else None
    if statistics is None:
        with StatisticsCollector(prepared, tensors, name=label, threads=threads) as collector:
            stats = collector.collect(calibrator, histograms=method != "max", bins=bins,
                                      mean_axes=mean_axes, progress=progress)
        stats = replace(stats, fingerprint=calibrator.fingerprint, equalization=factors)
    else:
        _check_statistics(statistics, calibrator, tensors, histograms=method != "max",
                          means=mean_axes or {})
        stats = statistics
    stats_seconds = time.perf_counter() - stats_started

    calibrations = tuple(_calibrate(t, stats.ranges[t], stats.histograms.get(t), method,
                                    percentile) for t in tensors)
    if float16:
        calibrations = tuple(replace(c, scale=half_scale(c.scale)) for c in calibrations)
        _warn_beyond_float16(calibrations, label)
    weights = _quantize_weights(prepared, qplan, per_channel, float16_scales=float16)
    corrected: list[str] = []
    to_quantize = prepared
    if correction != "none":
        # Corrects the float biases of a copy: ``prepared`` stays the FP32 reference.
        to_quantize = onnx.ModelProto()
        to_quantize.CopyFrom(prepared)
        corrected = apply_bias_correction(to_quantize, qplan, weights, stats.means)
    qdq = insert_qdq(to_quantize, qplan, {c.name: c.scale for c in calibrations}, weights)
    correction_seconds = 0.0
    if correction == "empirical":
        correction_started = time.perf_counter()
        nodes = correctable_nodes(prepared, qplan)
        subset = calibrator.spread(correction_frames)
        offsets = empirical_bias_offsets(prepared, qdq, nodes, list(subset.batches()),
                                         threads=threads, name=label, progress=progress)
        changed = apply_bias_offsets(qdq, offsets)
        corrected = [n for n in qplan.quantized_nodes if n in set(corrected) | set(changed)]
        correction_seconds = time.perf_counter() - correction_started
    if float16:
        qdq = cast_to_float16(qdq, name=label)
    try:
        onnx.checker.check_model(qdq, full_check=True)
    except Exception as exc:  # ValidationError / InferenceError
        raise CalibrationError(f"the Q/DQ model made from {label!r} fails the ONNX checker: {exc}") from exc
    qdq_bytes = qdq.SerializeToString()
    # Counted on the written model; MACs at the shape the calibration frames had.
    input_shape = (model_batch or 1, *next(calibrator.head(1).batches()).shape[1:])
    share = int8_share(qdq, input_shape, shape_source="the calibration frames' input shape",
                       macs=weighted_macs(prepared, input_shape, threads=threads)
                       ).with_reasons(qplan.kept_float)
    readers = quantized_inputs(qdq)
    quantized_nodes = tuple(n.name for n in qdq.graph.node if n.name in readers)
    low = share.warning(label)
    if low is not None:
        warnings.warn(low, CalibrationWarning, stacklevel=2)

    accuracy = None
    layer_errors: tuple[TensorError, ...] = ()
    diagnostic_frames = 0
    if holdout is not None:
        # The accuracy is the written model's: its very bytes against the user's FP32 file.
        accuracy = evaluate(model_path, qdq_bytes, holdout, threads=threads)
        if accuracy.notes:
            warnings.warn("the held-out frames cannot measure this model well: "
                          + " ".join(accuracy.notes), CalibrationWarning, stacklevel=2)
        layer_outputs = _layer_outputs(prepared, qplan)
        if layer_outputs:
            subset = holdout.spread(_DIAGNOSTIC_FRAMES)
            diagnostic_frames = subset.num_frames
            layer_errors = evaluate(prepared, qdq, subset, tensors=layer_outputs,
                                    threads=threads).worst_tensors

    # The cache is for TensorRT builds of the FP32 model, which has no equalized tensors.
    cache = CalibrationCache("100000", cache_algorithm or _CACHE_ALGORITHM[method],
                             {c.name: c.scale for c in calibrations if c.name not in equalized})
    seconds = time.perf_counter() - started
    report = _report(model_path, source, output_path, qdq_bytes, calibrator, method, percentile,
                     placement, per_channel, bins, exclude, qplan, calibrations, weights, accuracy,
                     stats_seconds, seconds)
    report["quantized_nodes"] = list(quantized_nodes)
    report["detection_tail"] = list(qplan.detection_tail)
    report["equalized_depthwise_inputs"] = list(equalized)
    report["int8_share"] = share.to_dict()
    report["float16"] = float16
    report["statistics_reused"] = statistics is not None
    report["bias_correction"] = {
        "mode": correction,
        "frames": min(correction_frames, calibrator.num_frames) if correction == "empirical" else None,
        "seconds": round(correction_seconds, 3)}
    report["bias_corrected_nodes"] = corrected
    if holdout is not None:
        report["holdout"] = {
            "frames": holdout.num_frames, "sources": list(holdout.source_names),
            "calibration_sources": list(calibrator.source_names),
            "shares_calibration_sources": (set(holdout.source_names) <= set(calibrator.source_names)
                                           if holdout.source_names and calibrator.source_names
                                           else None)}
        report["diagnostics"] = {
            "about": "per-layer SQNR (dB) of the quantized layers' outputs, FP32 against INT8, "
                     "measured on a copy of the model that exposes them as outputs; where "
                     "quantization hurts, not the written model's accuracy",
            "frames": diagnostic_frames,
            "worst_tensors": [{"name": t.name, "sqnr_db": _finite(t.sqnr_db)}
                              for t in layer_errors]}
    preprocess = calibrator.preprocess
    preprocess_path = preprocess_path_for(output_path) if preprocess is not None else None
    report_path = report_path_for(output_path)
    cache_path = cache_path_for(output_path)
    _write_all(output_path, qdq_bytes, cache_path, cache.to_text().encode(), report_path, report,
               preprocess_path, preprocess.to_dict() if preprocess is not None else None)
    return QuantizationResult(
        model_path=output_path, report_path=report_path, cache_path=cache_path,
        preprocess_path=preprocess_path, method=method, num_frames=calibrator.num_frames,
        fingerprint=calibrator.fingerprint, tensors=calibrations,
        quantized_nodes=quantized_nodes, excluded_nodes=qplan.excluded_nodes,
        accuracy=accuracy, seconds=seconds, int8_share=share,
        bias_corrected_nodes=tuple(corrected),
        bias_correction=correction, statistics=stats, layer_errors=layer_errors,
        holdout_sources=holdout.source_names if holdout is not None else (),
        detection_tail=qplan.detection_tail, equalized=equalized)


def _finite(value: float) -> float | str | None:
    """JSON has no infinities: +-inf as strings, NaN as null (as ``AccuracyReport.to_dict``)."""
    if math.isfinite(value):
        return value
    return None if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _check_statistics(stats: Statistics, calibrator: Calibrator, tensors: Sequence[str], *,
                      histograms: bool, means: Mapping[str, int]) -> None:
    """Refuse statistics that were not measured on these frames or lack what is needed."""
    if stats.fingerprint != calibrator.fingerprint:
        raise ValueError(
            f"statistics= was measured on other frames than the calibration set "
            f"{calibrator.name!r}; pass the Calibrator those statistics came from, or leave "
            "statistics= out to calibrate again")
    missing = [t for t in tensors if t not in stats.ranges]
    if histograms:
        missing += [f"{t} (histogram)" for t in tensors if t not in stats.histograms]
    missing += [f"{t} (channel means)" for t in means if t not in stats.means]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"statistics= lacks what this quantize call needs: {shown}. Reuse statistics only "
            "with the same method family (histograms are collected unless method='max'), bias "
            "correction, and the same or fewer quantized nodes; or leave statistics= out")


def _bias_mode(value: bool | str) -> BiasCorrection:
    if value is True:
        return "empirical"
    if value is False:
        return "none"
    for mode in BIAS_CORRECTIONS:
        if value == mode:
            return mode
    raise ValueError(f"bias_correction must be True, False or one of {BIAS_CORRECTIONS}, "
                     f"got {value!r}")


def compute_amax(method: str, rng: TensorRange, hist: Histogram | None, percentile: float) -> float:
    """The clipping threshold of one tensor by ``method``."""
    if method == "auto":
        return _auto(rng, hist, percentile)[0]
    if method == "max" or hist is None:
        return rng.amax
    if method == "percentile":
        return amax_percentile(hist, percentile)
    if method == "entropy":
        return amax_entropy(hist)
    if method == "mse":
        return amax_mse(hist)
    raise ValueError(f"unknown method {method!r}")


def _auto(rng: TensorRange, hist: Histogram | None, percentile: float) -> tuple[float, str]:
    """Per-tensor method choice: the candidate threshold with the lowest expected error."""
    if hist is None:
        return rng.amax, "max"
    candidates = {m: compute_amax(m, rng, hist, percentile) for m in AUTO_CANDIDATES}
    return amax_auto(hist, candidates)


def _calibrate(tensor: str, rng: TensorRange, hist: Histogram | None, method: str,
               percentile: float) -> TensorCalibration:
    if method == "auto":
        amax, chosen = _auto(rng, hist, percentile)
        method = f"auto:{chosen}"
    else:
        amax = compute_amax(method, rng, hist, percentile)
    if amax == 0.0 and rng.amax > 0.0:
        amax = rng.amax      # a histogram method found nothing to keep: fall back to the range
    return TensorCalibration(tensor, rng.minimum, rng.maximum, amax,
                             scale_from_amax(amax, tensor), method)


def _quantize_weights(model: onnx.ModelProto, qplan: QuantPlan, per_channel: bool, *,
                      float16_scales: bool = False
                      ) -> dict[tuple[str, int | None], WeightQuantization]:
    initializers = {t.name: t for t in model.graph.initializer}
    out: dict[tuple[str, int | None], WeightQuantization] = {}
    for target in qplan.weights:
        value = numpy_helper.to_array(initializers[target.tensor]).astype(np.float32)
        axis = target.axis if per_channel else None
        out[(target.tensor, target.axis)] = quantize_weight(target.tensor, value, axis,
                                                            float16_scales=float16_scales)
    return out


def _warn_beyond_float16(calibrations: Sequence[TensorCalibration], label: str) -> None:
    """FP16 tops out at 65504: a calibrated activation beyond it would overflow between layers."""
    over = [c.name for c in calibrations if max(abs(c.minimum), abs(c.maximum)) > 65504.0]
    if over:
        warnings.warn(
            f"{len(over)} activations of {label!r} exceed FP16's range on the calibration frames "
            f"(e.g. {over[0]!r}); with float16=True they overflow wherever they are not INT8. "
            "Quantize without float16 or keep those layers' op types in FP32",
            CalibrationWarning, stacklevel=3)


def _layer_outputs(model: onnx.ModelProto, qplan: QuantPlan) -> list[str]:
    """Float outputs of the quantized layers: where the accuracy report measures SQNR."""
    wanted = set(qplan.quantized_nodes)
    graph_outputs = {o.name for o in model.graph.output}
    floats = {v.name for v in model.graph.value_info
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    return [o for n in model.graph.node if n.name in wanted for o in n.output
            if o in floats and o not in graph_outputs]


def _report(model_path: Path, source: onnx.ModelProto, output_path: Path, qdq_bytes: bytes,
            calibrator: Calibrator, method: str, percentile: float, placement: str,
            per_channel: bool, bins: int, exclude: Sequence[str], qplan: QuantPlan,
            calibrations: tuple[TensorCalibration, ...],
            weights: dict[tuple[str, int | None], WeightQuantization],
            accuracy: AccuracyReport | None, stats_seconds: float, seconds: float) -> dict[str, Any]:
    import onnxruntime

    preprocess = calibrator.preprocess
    return {
        "format": _REPORT_FORMAT,
        "version": _REPORT_VERSION,
        "source_model": {"path": str(model_path), "sha256": sha256_bytes(source.SerializeToString())},
        "model": {"path": output_path.name, "sha256": sha256_bytes(qdq_bytes)},
        "method": method,
        "percentile": percentile if method in ("percentile", "auto") else None,
        "histogram_bins": bins if method != "max" else None,
        "placement": placement,
        "per_channel_weights": per_channel,
        "calibration": {
            "name": calibrator.name, "frames": calibrator.num_frames,
            "requested_frames": calibrator.requested_frames,
            "fingerprint": calibrator.fingerprint, "manifest_sha256": calibrator.manifest_sha256,
            "batch_size": calibrator.batch_size,
        },
        "preprocess": preprocess.to_dict() if preprocess is not None else None,
        "exclude": list(exclude),
        "excluded_nodes": list(qplan.excluded_nodes),
        "activations": [{"name": c.name, "min": c.minimum, "max": c.maximum, "amax": c.amax,
                         "scale": c.scale, "method": c.method} for c in calibrations],
        "weights": [{"name": w.tensor, "axis": w.axis, "channels": int(w.scales.size),
                     "scale_min": float(w.scales.min()), "scale_max": float(w.scales.max())}
                    for w in weights.values()],
        "accuracy": accuracy.to_dict() if accuracy is not None else None,
        "timing": {"statistics_s": round(stats_seconds, 3), "total_s": round(seconds, 3)},
        "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "numpy": np.__version__},
    }


def _write_all(model_path: Path, model_bytes: bytes, cache_path: Path, cache_bytes: bytes,
               report_path: Path, report: dict[str, Any], preprocess_path: Path | None,
               preprocess: dict[str, Any] | None) -> None:
    """Write every artifact atomically; if one fails, remove the ones this call wrote."""
    written: list[Path] = []
    try:
        with atomic_output(model_path) as tmp:
            tmp.write_bytes(model_bytes)
        written.append(model_path)
        atomic_write_bytes(cache_path, cache_bytes)
        written.append(cache_path)
        if preprocess_path is not None and preprocess is not None:
            atomic_write_json(preprocess_path, preprocess)
            written.append(preprocess_path)
        atomic_write_json(report_path, report)
        written.append(report_path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
