"""What quantizing costs, and where: units, their MACs, budget metrics and held-out measurement.

The budget search (``_budget``) moves *units* between INT8 and float. A unit is a quantized
Conv/ConvTranspose/Gemm/MatMul together with the residual ``Add`` its output feeds (through an
activation, if any): TensorRT fuses those into one INT8 kernel, so keeping one of them in float
and not the other saves no error and costs the fusion. Any other quantized node (pooling, Concat,
Resize, an Add with no quantized convolution behind it) is a unit of its own. ``find_units``
lists them in graph order with their multiply-accumulates (MACs) for one frame
(``_share.weighted_macs``).

A *metric* turns the FP32 and the INT8 outputs over every held-out frame into a ``drop`` (higher
is worse; the budget is a bound on it):

* ``top1``: 100 x the fraction of frames whose top-1 class differs from FP32's, in points (of
  the first classifier output: shape (frames, classes), classes > 1). ``max_drop=0.3`` means at
  least 99.7% top-1 agreement.
* ``cosine``: 1 - the mean per-frame cosine similarity, of the worst model output.
* ``boxes`` (:func:`box_metric`, detectors): 1 - mAP@0.5 of the INT8 detections taking the FP32
  detections as ground truth (``_box_metrics``); the FP32 model scores 1.0 against itself, so
  ``max_drop=0.05`` means mAP@0.5 at least 0.95. Its report also gives precision, recall and F1.
* :func:`accuracy_drop` (labels known): FP32 accuracy minus INT8 accuracy, in points.
* any callable ``(reference, candidate) -> float`` over ``{output name: array}`` holding every
  held-out frame in order.

The *distortion* (:func:`distortion`) is the continuous measure that ranks units, whatever the
metric: the mean KL divergence of INT8 softmax from FP32 softmax for classifier outputs, 1 - mean
cosine for others, summed over outputs. A top-1 count on a few frames is too coarse to rank 50
layers; the distortion moves with every change.

:class:`HoldoutEvaluator` runs the FP32 model once over the held-out frames and keeps its outputs
and the model inputs in memory (frames x input size: 512 frames of 3x224x224 float32 are 308 MB),
so each candidate costs one INT8 pass and no preprocessing. Candidates run in ONNX Runtime on the
CPU exactly as :func:`~xinfer_stream.quantize.evaluate` runs them (Q/DQ executed as written: the
arithmetic TensorRT implements).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnx

from .._errors import CalibrationError, InvalidCalibrationInput
from ..preprocess import Preprocess
from ._box_metrics import BoxAgreement, compare_boxes, overlay_boxes
from ._calibrator import Calibrator
from ._evaluate import _Session
from ._graph import WEIGHTED_OPS

if TYPE_CHECKING:
    from ..runtime._detect import Detector

__all__ = [
    "COSINE",
    "TOP1",
    "HoldoutEvaluator",
    "Measurement",
    "Metric",
    "MetricFn",
    "Unit",
    "accuracy_drop",
    "box_metric",
    "distortion",
    "find_units",
    "quantized_inputs",
    "resolve_metric",
]

Outputs = Mapping[str, npt.NDArray[Any]]
MetricFn = Callable[[Outputs, Outputs], float]
Progress = Callable[[str, int, int], None]


# -- units and MACs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """Nodes that leave quantization together; ``name`` is the first of them (the weighted op)."""

    name: str
    nodes: tuple[str, ...]
    macs: int


def find_units(qdq: onnx.ModelProto, macs: Mapping[str, int]) -> tuple[Unit, ...]:
    """The units of a Q/DQ model (see the module docstring), in graph order.

    A node is quantized when one of its inputs is the output of a ``DequantizeLinear``; a
    residual ``Add`` joins the unit of the quantized weighted op that computes its float input
    (through single-input ops such as an activation).
    """
    nodes = list(qdq.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    constants = {t.name for t in qdq.graph.initializer}
    constants.update(o for n in nodes if n.op_type == "Constant" for o in n.output)
    quantized = quantized_inputs(qdq)

    def weighted_owner(tensor: str) -> str | None:
        """The quantized weighted op computing ``tensor``, through single-input ops."""
        while tensor in producer:
            node = nodes[producer[tensor]]
            if node.op_type in WEIGHTED_OPS:
                return node.name if node.name in quantized else None
            computed = {t for t in node.input if t and t not in constants}
            if len(computed) != 1:
                return None
            tensor = computed.pop()
        return None

    members: dict[str, list[str]] = {}
    for node in nodes:
        if node.name not in quantized:
            continue
        head = node.name
        if node.op_type == "Add" and len(node.input) == 2:
            floats = [node.input[i] for i in range(2) if i not in quantized[node.name]]
            if len(floats) == 1 and (found := weighted_owner(floats[0])) is not None:
                head = found
        members.setdefault(head, []).append(node.name)
    order = {n.name: i for i, n in enumerate(nodes)}
    units = [Unit(head, tuple(names), sum(macs.get(n, 0) for n in names))
             for head, names in members.items()]
    units.sort(key=lambda u: order[u.name])
    return tuple(units)


def quantized_inputs(qdq: onnx.ModelProto) -> dict[str, set[int]]:
    """Nodes of a Q/DQ model that read a ``DequantizeLinear`` output: name -> input indices."""
    dequantized = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    out: dict[str, set[int]] = {}
    for node in qdq.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        hits = {i for i, t in enumerate(node.input) if t in dequantized}
        if hits:
            out[node.name] = hits
    return out


# -- metrics ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """A budget metric: ``drop(reference, candidate)`` over every held-out frame, in ``unit``.

    ``per_frame``: the drop of any subset of the frames means the same thing (it can be read on
    the sensitivity frames alone). ``countable``: the drop is ``100 * failing frames / frames``,
    so the failures among some frames bound the drop of all of them from below, and a
    measurement can stop as soon as the budget is out of reach.
    """

    name: str
    unit: str
    drop: MetricFn
    per_frame: bool = False
    countable: bool = False
    # What the metric saw besides the drop, for the report (``boxes``: precision, recall...).
    details: Callable[[Outputs, Outputs], dict[str, Any]] | None = None
    # Why the FP32 outputs of the held-out frames cannot measure this metric, one note each
    # (None: ``_evaluate.signal_notes``, which judges each output map or classifier on its own).
    signal: Callable[[Outputs], tuple[str, ...]] | None = None
    # A picture for the report: ``draw(reference, candidate, frame_of)`` draws what the metric
    # compares on one held-out frame it picks (``frame_of(index)``: that frame, RGB uint8).
    draw: Callable[[Outputs, Outputs, Callable[[int], npt.NDArray[np.uint8]]],
                   npt.NDArray[np.uint8]] | None = None


def _classifier_output(outputs: Outputs, metric: str) -> str:
    for name, value in outputs.items():
        if value.ndim == 2 and value.shape[1] > 1:
            return name
    shapes = {k: tuple(v.shape) for k, v in outputs.items()}
    raise InvalidCalibrationInput(
        f"the {metric} metric needs a classifier output shaped (frames, classes); the model's "
        f"outputs are {shapes}. Use metric='cosine' or a metric callable")


def _top1_drop(reference: Outputs, candidate: Outputs) -> float:
    name = _classifier_output(reference, "top1")
    differ = reference[name].argmax(axis=1) != candidate[name].argmax(axis=1)
    return 100.0 * int(differ.sum()) / len(differ)


def _cosine_drop(reference: Outputs, candidate: Outputs) -> float:
    return max(1.0 - float(_cosines(reference[n], candidate[n]).mean()) for n in reference)


TOP1 = Metric("top1", "points", _top1_drop, per_frame=True, countable=True)
COSINE = Metric("cosine", "1 - cosine", _cosine_drop, per_frame=True)
_BUILTIN = {"top1": TOP1, "cosine": COSINE}


def accuracy_drop(labels: Sequence[int] | npt.NDArray[np.integer[Any]], *,
                  output: str | None = None) -> Metric:
    """A metric for labelled held-out frames: FP32 top-1 accuracy minus INT8 top-1 accuracy, in
    points. ``labels[i]`` is the class of held-out frame ``i``; ``output`` names the classifier
    output (default: the first one shaped (frames, classes))."""
    truth = np.asarray(labels)
    if truth.ndim != 1 or truth.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 1-D sequence of class indices, got {truth.dtype} "
                         f"{truth.shape}")

    def accuracies(reference: Outputs, candidate: Outputs) -> tuple[float, float]:
        name = output if output is not None else _classifier_output(reference, "accuracy")
        if len(reference[name]) != len(truth):
            raise InvalidCalibrationInput(
                f"accuracy_drop was given {len(truth)} labels for {len(reference[name])} held-out "
                "frames; give one label per held-out frame, in order")
        return (float((reference[name].argmax(axis=1) == truth).mean()),
                float((candidate[name].argmax(axis=1) == truth).mean()))

    def drop(reference: Outputs, candidate: Outputs) -> float:
        fp32, int8 = accuracies(reference, candidate)
        return 100.0 * (fp32 - int8)

    def details(reference: Outputs, candidate: Outputs) -> dict[str, Any]:
        fp32, int8 = accuracies(reference, candidate)
        return {"frames": len(truth), "fp32_accuracy": fp32, "int8_accuracy": int8}

    # Labels measure the model on every frame, sure or unsure: nothing to warn about.
    return Metric("accuracy", "points", drop, details=details, signal=lambda reference: ())


def box_metric(preprocess: Preprocess, detector: Detector | None = None) -> Metric:
    """The ``boxes`` metric: 1 - mAP@0.5 of the candidate's detections against the FP32 model's
    (``_box_metrics``). Both models' outputs are decoded by the same ``detector`` (a
    :func:`~xinfer_stream.detect` postprocess; default ``detect("auto")``), in model-input
    pixels: each frame is taken to be the model input (``preprocess.size``), so no geometry
    stands between the two sets of boxes. ``details``: :meth:`BoxAgreement.to_dict`."""
    # Imported here: the runtime package loads the streaming engine, which quantize needs not.
    from ..runtime._detect import Detector, detect
    from ..runtime._postprocess import FrameContext

    chosen = detector if detector is not None else detect("auto")
    if not isinstance(chosen, Detector):
        raise TypeError(f"box_metric(detector=...) takes a detect() postprocess, got "
                        f"{type(chosen).__name__}")
    context = FrameContext(preprocess.size, preprocess)
    # The reference is the same object for every candidate: decoded once.
    decoded: dict[int, tuple[Outputs, list[Any]]] = {}

    def frames_of(outputs: Outputs) -> list[Any]:
        count = len(next(iter(outputs.values())))
        return [chosen({k: v[i:i + 1] for k, v in outputs.items()}, context)
                for i in range(count)]

    def reference_frames(reference: Outputs) -> list[Any]:
        cached = decoded.get(id(reference))
        if cached is None or cached[0] is not reference:
            cached = (reference, frames_of(reference))
            decoded[id(reference)] = cached
        return cached[1]

    def agreement(reference: Outputs, candidate: Outputs) -> BoxAgreement:
        return compare_boxes(reference_frames(reference), frames_of(candidate))

    def drop(reference: Outputs, candidate: Outputs) -> float:
        return 1.0 - agreement(reference, candidate).map50

    def signal(reference: Outputs) -> tuple[str, ...]:
        frames = reference_frames(reference)
        empty = sum(1 for f in frames if len(f) == 0)
        if 2 * empty <= len(frames):
            return ()
        return (f"the FP32 model finds no box scoring above conf={chosen.conf} on {empty} of "
                f"{len(frames)} held-out frames (there the metric sees only boxes the INT8 "
                "model invents); hold out frames on which the model finds something",)

    def draw(reference: Outputs, candidate: Outputs,
             frame_of: Callable[[int], npt.NDArray[np.uint8]]) -> npt.NDArray[np.uint8]:
        # The frame with the most FP32 boxes (the first of them): where disagreement shows.
        counts = [len(f) for f in reference_frames(reference)]
        index = counts.index(max(counts))
        image = frame_of(index)
        on_frame = FrameContext((image.shape[0], image.shape[1]), preprocess)
        fp32 = chosen({k: v[index:index + 1] for k, v in reference.items()}, on_frame)
        int8 = chosen({k: v[index:index + 1] for k, v in candidate.items()}, on_frame)
        return overlay_boxes(image, fp32, int8, index)

    return Metric("boxes", "1 - mAP@0.5", drop, per_frame=True,
                  details=lambda r, c: agreement(r, c).to_dict(), signal=signal, draw=draw)


def resolve_metric(metric: str | Metric | MetricFn, *,
                   preprocess: Preprocess | None = None) -> Metric:
    """``"top1"``, ``"cosine"``, ``"boxes"`` (needs ``preprocess``; see :func:`box_metric` for
    other detect() settings), a :class:`Metric`, or a callable ``(reference, candidate) ->
    drop``."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric == "boxes":
            if preprocess is None:
                raise ValueError("metric='boxes' decodes boxes in the model input and needs the "
                                 "Preprocess: give frames with a preprocess, or "
                                 "metric=box_metric(preprocess)")
            return box_metric(preprocess)
        if metric not in _BUILTIN:
            raise ValueError(f"metric must be one of {sorted([*_BUILTIN, 'boxes'])} or a "
                             f"callable, got {metric!r}")
        return _BUILTIN[metric]
    if callable(metric):
        return Metric(getattr(metric, "__name__", "custom"), "", metric)
    raise TypeError(f"metric must be a name, a Metric or a callable, got {type(metric).__name__}")


def distortion(reference: Outputs, candidate: Outputs) -> float:
    """The continuous output error that ranks units (module docstring); 0 when identical."""
    total = 0.0
    for name, ref in reference.items():
        got = candidate[name]
        if ref.ndim == 2 and ref.shape[1] > 1:
            p_log = _log_softmax(ref.astype(np.float64))
            q_log = _log_softmax(got.astype(np.float64))
            total += float((np.exp(p_log) * (p_log - q_log)).sum(axis=1).mean())
        else:
            total += 1.0 - float(_cosines(ref, got).mean())
    return max(total, 0.0)


def _log_softmax(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = x - x.max(axis=1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))


def _cosines(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    x = a.reshape(len(a), -1).astype(np.float64)
    y = b.reshape(len(b), -1).astype(np.float64)
    nx = np.linalg.norm(x, axis=1)
    ny = np.linalg.norm(y, axis=1)
    both = (nx > 0) & (ny > 0)
    cos = (x * y).sum(axis=1) / np.where(both, nx * ny, 1.0)
    return np.asarray(np.where(both, cos, np.where((nx == 0) & (ny == 0), 1.0, 0.0)))


# -- measuring on held-out frames -------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """A candidate's budget metric on the held-out frames: exact, or (``exact`` False) a lower
    bound, when a countable metric's measurement stopped once the budget was out of reach."""

    drop: float
    exact: bool


class HoldoutEvaluator:
    """FP32 outputs of the held-out frames, computed once; candidates measured against them.

    Holds the held-out model inputs in memory (see the module docstring) and no open resource:
    each measurement opens an ONNX Runtime session for the candidate and drops it when done.
    ``sensitivity_frames`` of the held-out frames, drawn with ``seed``, form the smaller set on
    which units are ranked and each step of the search is screened.
    """

    def __init__(self, fp32_model: onnx.ModelProto | bytes, holdout: Calibrator, *,
                 sensitivity_frames: int, seed: int, threads: int | None = None,
                 progress: Progress | None = None) -> None:
        if sensitivity_frames < 1:
            raise ValueError(f"sensitivity_frames must be positive, got {sensitivity_frames}")
        self._threads = threads
        session = _Session(fp32_model, "the FP32 model", [], threads, False)
        self._batches: list[npt.NDArray[Any]] = []
        outputs: dict[str, list[npt.NDArray[Any]]] = {}
        done = 0
        for batch in holdout.batches():
            self._batches.append(batch)
            for name, value in session.run(batch).items():
                outputs.setdefault(name, []).append(value)
            done += len(batch)
            if progress is not None:
                progress("reference", done, holdout.num_frames)
        self._reference_batches = [{k: v[i] for k, v in outputs.items()}
                                   for i in range(len(self._batches))]
        self.reference: dict[str, npt.NDArray[Any]] = {
            k: np.concatenate(v) for k, v in outputs.items()}
        self.frames = done
        self.batch_size = holdout.batch_size
        rng = np.random.default_rng(seed)
        count = min(sensitivity_frames, done)
        self.subset_indices = np.sort(rng.choice(done, size=count, replace=False))
        starts = np.cumsum([0] + [len(b) for b in self._batches])
        which = np.searchsorted(starts, self.subset_indices, side="right") - 1
        self._subset = np.stack([self._batches[b][i - starts[b]]
                                 for b, i in zip(which, self.subset_indices, strict=True)])
        self.subset_reference = {k: v[self.subset_indices] for k, v in self.reference.items()}

    @property
    def sample(self) -> npt.NDArray[Any]:
        """The first held-out model input (batch of one)."""
        return self._batches[0][:1]

    @property
    def sensitivity_frames(self) -> int:
        return len(self.subset_indices)

    def outputs(self, model: bytes, *, subset: bool = False) -> dict[str, npt.NDArray[Any]]:
        """Run ``model`` on every held-out frame (or the sensitivity frames) and return its
        outputs, stacked in frame order."""
        session = _Session(model, "a candidate INT8 model", [], self._threads, False)
        if subset:
            batches = [self._subset[i:i + self.batch_size]
                       for i in range(0, len(self._subset), self.batch_size)]
        else:
            batches = self._batches
        collected: dict[str, list[npt.NDArray[Any]]] = {}
        for batch in batches:
            for name, value in session.run(batch).items():
                collected.setdefault(name, []).append(value)
        return {k: np.concatenate(v) for k, v in collected.items()}

    def subset_distortion(self, model: bytes) -> float:
        """``model``'s distortion on the sensitivity frames."""
        return distortion(self.subset_reference, self.outputs(model, subset=True))

    def measure(self, model: bytes, metric: Metric, *, give_up_above: float | None = None
                ) -> Measurement:
        """``model``'s budget metric on every held-out frame.

        With ``give_up_above`` and a countable metric, the run stops as soon as the frames seen
        so far fail often enough to put the drop above it, and returns that lower bound.
        """
        if give_up_above is None or not metric.countable:
            got = self.outputs(model)
            return Measurement(_checked(metric, metric.drop(self.reference, got)), True)
        session = _Session(model, "a candidate INT8 model", [], self._threads, False)
        failures = 0
        for batch, reference in zip(self._batches, self._reference_batches, strict=True):
            got = session.run(batch)
            drop = _checked(metric, metric.drop(reference, got))
            failures += round(drop * len(batch) / 100.0)
            bound = 100.0 * failures / self.frames
            if bound > give_up_above + 1e-9:
                return Measurement(bound, False)
        return Measurement(100.0 * failures / self.frames, True)


def _checked(metric: Metric, drop: Any) -> float:
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not math.isfinite(drop):
        raise CalibrationError(
            f"the metric {metric.name!r} returned {drop!r}; a metric must return a finite number "
            "(the drop: higher is worse)")
    return float(drop)
