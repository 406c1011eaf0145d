"""Accuracy of a Q/DQ model against its FP32 original, both run in ONNX Runtime on the CPU.

:func:`evaluate` runs both models batch by batch on frames the caller holds out from calibration
and keeps running sums only (memory does not grow with the number of frames). Per model output it
reports the mean and worst cosine similarity and the mean relative error per frame, and for
classifier outputs ((batch, classes) with more than one class) how often the top-1 classes agree.
Given ``tensors`` (the outputs of quantized layers), it also reports the signal-to-quantization-
noise ratio of each, FP32 value against INT8-model value, and lists the worst ones: where
quantization hurts. Exposing those tensors as extra outputs changes the graph ONNX Runtime runs
(it may fuse it differently), so numbers meant as the model's accuracy come from a run without
``tensors``.

Whether the held-out frames can measure the model at all is part of the answer (:class:`Signal`):
a classifier whose FP32 top-1 probability is below :data:`CONFIDENCE_FLOOR` on a frame is unsure
there (top-1 agreement then counts flips between near-tied classes), and an output map with
values in [0, 1] (a detector's score or probability map) none of whose values reaches
:data:`MAP_FLOOR` on a frame is empty there (its cosine compares noise with noise). Each output
reports how many frames are such, its metrics on the other frames, and a note when they are most
of the frames. Given the source of each frame, the report also breaks agreement down per source.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from .._errors import CalibrationError, InvalidCalibrationInput
from ..preprocess import Preprocess
from ._calibrator import Calibrator, fixed_batch
from ._statistics import default_threads

__all__ = ["CONFIDENCE_FLOOR", "MAP_FLOOR", "AccuracyReport", "OutputAccuracy", "Signal",
           "SourceAccuracy", "TensorError", "evaluate", "signal_notes"]

ModelLike = str | os.PathLike[str] | onnx.ModelProto | bytes
# Below this FP32 top-1 probability a classifier's top class is a near-tie.
CONFIDENCE_FLOOR = 0.3
# A [0, 1]-valued output map none of whose values reaches this holds nothing (no detection).
MAP_FLOOR = 0.3


@dataclass(frozen=True)
class OutputAccuracy:
    """FP32-vs-INT8 agreement of one model output over every evaluated frame."""

    name: str
    frames: int
    cosine_mean: float
    cosine_min: float
    relative_error_mean: float        # ||int8 - fp32|| / ||fp32|| per frame, averaged
    top1_agreement: float | None      # fraction of frames whose argmax agrees (classifiers)
    kind: str = "other"               # "classifier", "map" ([0, 1]-valued, ndim >= 3), "other"
    low_signal_frames: int = 0        # frames the output cannot measure on (see Signal)
    cosine_measurable: float | None = None    # mean cosine over the other frames
    top1_measurable: float | None = None      # top-1 agreement over the other frames

    def note(self) -> str | None:
        """Why this output's metrics say little, when most frames cannot measure it."""
        what = _cannot_tell(self.kind, self.low_signal_frames, self.frames)
        if what is None:
            return None
        rest = self.frames - self.low_signal_frames
        if rest == 0:
            return (f"{self.name}: {what}, and no frame is left to measure on; hold out frames "
                    "on which the model finds something (or measure against labels)")
        measured = (f"top-1 agreement {100.0 * self.top1_measurable:.1f}%, "
                    if self.top1_measurable is not None else "")
        cosine = "n/a" if self.cosine_measurable is None else f"{self.cosine_measurable:.4f}"
        return (f"{self.name}: {what}; on the other {rest} frames {measured}cosine {cosine}. "
                "Hold out frames on which the model finds something (or measure against "
                "labels) for a number that tells")


def _cannot_tell(kind: str, low: int, frames: int) -> str | None:
    """What makes most frames unable to measure an output of ``kind``; None if most can."""
    if 2 * low <= frames:
        return None
    if kind == "classifier":
        return (f"the FP32 model is unsure on {low} of {frames} held-out frames (top-1 "
                f"probability below {CONFIDENCE_FLOOR}): top-1 agreement there mostly counts "
                "flips between near-tied classes")
    return (f"the FP32 output map is empty on {low} of {frames} held-out frames (no value "
            f"reaches {MAP_FLOOR}): its cosine there compares noise with noise")


@dataclass(frozen=True)
class SourceAccuracy:
    """Agreement on the held-out frames of one source (a video): the first classifier output's
    top-1 agreement and the first output's mean cosine, as :class:`AccuracyReport` gives them."""

    source: str
    frames: int
    top1_agreement: float | None
    cosine_mean: float


@dataclass(frozen=True)
class TensorError:
    """Signal-to-quantization-noise ratio of one intermediate tensor (dB; higher is better)."""

    name: str
    sqnr_db: float


@dataclass(frozen=True)
class AccuracyReport:
    """What :func:`evaluate` measured; ``worst_tensors`` is sorted worst first."""

    frames: int
    outputs: tuple[OutputAccuracy, ...]
    worst_tensors: tuple[TensorError, ...]
    by_source: tuple[SourceAccuracy, ...] = ()     # when the frames' sources were given

    @property
    def notes(self) -> tuple[str, ...]:
        """Why some metric cannot tell (see :meth:`OutputAccuracy.note`); empty when all can."""
        return tuple(n for n in (o.note() for o in self.outputs) if n is not None)

    @property
    def top1_agreement(self) -> float | None:
        """Top-1 agreement of the first classifier output, if any."""
        for output in self.outputs:
            if output.top1_agreement is not None:
                return output.top1_agreement
        return None

    @property
    def cosine_mean(self) -> float:
        """Mean cosine of the first output."""
        return self.outputs[0].cosine_mean

    def to_dict(self) -> dict[str, Any]:
        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
            return value

        return {
            "frames": self.frames,
            "top1_agreement": self.top1_agreement,
            "outputs": [{k: clean(v) for k, v in asdict(o).items()} for o in self.outputs],
            "worst_tensors": [{k: clean(v) for k, v in asdict(t).items()}
                              for t in self.worst_tensors],
            "by_source": [{k: clean(v) for k, v in asdict(s).items()} for s in self.by_source],
            "notes": list(self.notes),
        }


def evaluate(fp32_model: ModelLike, int8_model: ModelLike,
             frames_or_batches: Calibrator | Sequence[npt.NDArray[Any]] | Iterable[npt.NDArray[Any]],
             preprocess: Preprocess | None = None, *, tensors: Sequence[str] = (),
             worst: int = 10, batch_size: int = 16, threads: int | None = None,
             int8_kernels: bool = False, sources: Sequence[str] | None = None) -> AccuracyReport:
    """Compare ``int8_model`` with ``fp32_model`` on held-out inputs.

    ``frames_or_batches`` is a :class:`Calibrator`, a sequence of RGB uint8 frames (then
    ``preprocess`` is required), or an iterable of ready model-input batches. ``tensors`` names
    intermediate tensors present in both models whose SQNR to report (``worst`` of them); they
    are exposed as extra outputs, which changes the graph ONNX Runtime runs, so leave them out
    where the outputs' numbers must be the model's own. ``sources``: the source of each frame
    (default: the Calibrator's :attr:`~Calibrator.sources`), for the per-source breakdown.

    By default the Q/DQ model is executed as written (ONNX Runtime's Q/DQ-to-integer-kernel
    fusion off): exactly the arithmetic TensorRT implements (int8 products, int32 accumulation,
    float scales). ``int8_kernels=True`` measures ONNX Runtime's own CPU integer kernels instead;
    on x86 CPUs without VNNI those saturate int16 intermediate sums for signed int8 activations
    (measured here: EfficientNet-Lite0 logits cosine 0.98 -> 0.88), which says more about that
    CPU path than about the quantization.
    """
    if sources is None and isinstance(frames_or_batches, Calibrator):
        sources = frames_or_batches.sources
    fp32 = _Session(fp32_model, "the FP32 model", list(tensors), threads, False)
    int8 = _Session(int8_model, "the INT8 model", list(tensors), threads, int8_kernels)
    outputs = fp32.output_names
    if set(outputs) != set(int8.output_names):
        raise InvalidCalibrationInput(
            f"the FP32 and INT8 models have different outputs ({outputs} vs {int8.output_names}); "
            "compare a Q/DQ model with the model it was made from")
    frames = 0
    cosines: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in outputs}
    rel_sum = dict.fromkeys(outputs, 0.0)
    agree: dict[str, list[npt.NDArray[np.bool_]] | None] = {name: [] for name in outputs}
    signals = {name: Signal() for name in outputs}
    signal = dict.fromkeys(tensors, 0.0)
    noise = dict.fromkeys(tensors, 0.0)
    for batch in _batches(frames_or_batches, preprocess, batch_size, fp32.batch):
        ref = fp32.run(batch)
        got = int8.run(batch)
        frames += len(batch)
        for name in outputs:
            a = ref[name].reshape(len(batch), -1).astype(np.float64)
            b = got[name].reshape(len(batch), -1).astype(np.float64)
            na = np.linalg.norm(a, axis=1)
            nb = np.linalg.norm(b, axis=1)
            diff = np.linalg.norm(a - b, axis=1)
            cosines[name].append(np.where(
                (na > 0) & (nb > 0), (a * b).sum(axis=1) / np.maximum(na * nb, 1e-300),
                np.where((na == 0) & (nb == 0), 1.0, 0.0)))
            rel_sum[name] += float((diff / np.maximum(na, 1e-30)).sum())
            agreed = agree[name]
            if agreed is not None and _is_classifier(ref[name]):
                agreed.append(ref[name].argmax(axis=1) == got[name].argmax(axis=1))
            else:
                agree[name] = None
            signals[name].add(ref[name])
        for tensor in tensors:
            a = ref[tensor].astype(np.float64)
            signal[tensor] += float((a * a).sum())
            noise[tensor] += float(((a - got[tensor]) ** 2).sum())
    if frames == 0:
        raise InvalidCalibrationInput("evaluate was given no frames; hold out at least one frame")
    if sources is not None and len(sources) != frames:
        raise ValueError(f"sources names {len(sources)} frames but {frames} were evaluated; give "
                         "one source per frame")
    report_outputs = []
    per_frame: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_] | None]] = {}
    for name in outputs:
        cosine = np.concatenate(cosines[name])
        agreed = agree[name]
        matches = None if agreed is None else np.concatenate(agreed)
        per_frame[name] = (cosine, matches)
        low = signals[name].low_signal()
        kept = ~low
        report_outputs.append(OutputAccuracy(
            name=name, frames=frames, cosine_mean=float(cosine.mean()),
            cosine_min=float(cosine.min()), relative_error_mean=rel_sum[name] / frames,
            top1_agreement=None if matches is None else float(matches.mean()),
            kind=signals[name].kind, low_signal_frames=int(low.sum()),
            cosine_measurable=float(cosine[kept].mean()) if kept.any() else None,
            top1_measurable=(float(matches[kept].mean()) if matches is not None and kept.any()
                             else None)))
    errors = [TensorError(t, _sqnr(signal[t], noise[t])) for t in tensors]
    errors.sort(key=lambda e: e.sqnr_db)
    return AccuracyReport(frames, tuple(report_outputs), tuple(errors[:worst]),
                          _by_source(sources, outputs, per_frame) if sources is not None else ())


def _is_classifier(value: npt.NDArray[Any]) -> bool:
    return value.ndim == 2 and value.shape[1] > 1


def _by_source(sources: Sequence[str], outputs: Sequence[str],
               per_frame: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_] | None]]
               ) -> tuple[SourceAccuracy, ...]:
    """Per source: the first classifier output's agreement, the first output's cosine."""
    cosine = per_frame[outputs[0]][0]
    matches = next((m for _, m in (per_frame[o] for o in outputs) if m is not None), None)
    names = np.asarray(list(sources))
    out = []
    for source in dict.fromkeys(sources):
        mask = names == source
        out.append(SourceAccuracy(source, int(mask.sum()),
                                  None if matches is None else float(matches[mask].mean()),
                                  float(cosine[mask].mean())))
    return tuple(out)


class Signal:
    """Per frame, whether the FP32 value of one output holds anything to measure (module doc).

    Fed the FP32 output batch by batch (:meth:`add`); keeps one number a frame.
    """

    def __init__(self) -> None:
        self._values: list[npt.NDArray[np.float64]] = []
        self._classifier = True
        self._map = True
        self._low = math.inf
        self._high = -math.inf

    def add(self, value: npt.NDArray[Any]) -> None:
        """One batch of the FP32 output (batch axis first)."""
        array = np.asarray(value, dtype=np.float64)
        self._classifier = self._classifier and _is_classifier(array)
        self._map = self._map and array.ndim >= 3
        if array.size:
            self._low = min(self._low, float(array.min()))
            self._high = max(self._high, float(array.max()))
        if self._classifier:
            rows = array
            if not (array.min() >= 0.0 and array.max() <= 1.0
                    and np.allclose(array.sum(axis=1), 1.0, atol=1e-3)):
                shifted = np.exp(array - array.max(axis=1, keepdims=True))
                rows = shifted / shifted.sum(axis=1, keepdims=True)
            self._values.append(rows.max(axis=1))
        else:
            flat = array.reshape(len(array), -1)
            self._values.append(flat.max(axis=1) if flat.shape[1] else np.zeros(len(array)))

    @property
    def kind(self) -> str:
        if self._classifier and self._values:
            return "classifier"
        if self._map and 0.0 <= self._low and self._high <= 1.0:
            return "map"
        return "other"

    def low_signal(self) -> npt.NDArray[np.bool_]:
        """Per frame: True where the output cannot measure the INT8 model."""
        values = np.concatenate(self._values) if self._values else np.zeros(0)
        kind = self.kind
        if kind == "classifier":
            return values < CONFIDENCE_FLOOR
        if kind == "map":
            return values < MAP_FLOOR
        return np.zeros(len(values), dtype=bool)


def signal_notes(reference: dict[str, npt.NDArray[Any]]) -> tuple[str, ...]:
    """Whether these FP32 outputs (every held-out frame stacked) can measure an INT8 model: a
    note per output whose frames mostly cannot (see :class:`Signal`)."""
    notes = []
    for name, value in reference.items():
        tracker = Signal()
        tracker.add(value)
        low = tracker.low_signal()
        what = _cannot_tell(tracker.kind, int(low.sum()), len(low))
        if what is not None:
            notes.append(f"{name}: {what}, so a drop measured on these frames says little about "
                         "the INT8 model; hold out frames on which the model finds something "
                         "(or measure against labels)")
    return tuple(notes)


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _batches(source: Calibrator | Sequence[npt.NDArray[Any]] | Iterable[npt.NDArray[Any]],
             preprocess: Preprocess | None, batch_size: int,
             model_batch: int | None) -> Iterator[npt.NDArray[Any]]:
    """Model-input batches of ``source``; frames go ``model_batch`` at a time where the model's
    batch is fixed (ready batches are the caller's)."""
    if isinstance(source, Calibrator):
        yield from source.for_model_batch(model_batch).batches()
        return
    if isinstance(source, Sequence) and len(source) > 0:
        first = np.asarray(source[0])
        if first.ndim == 3 and first.shape[2] == 3 and first.dtype == np.uint8:
            if preprocess is None:
                raise ValueError("evaluate got RGB frames but no preprocess to turn them into "
                                 "model inputs; pass preprocess=")
            yield from Calibrator(source, preprocess, batch_size=batch_size,
                                  name="held-out frames").for_model_batch(model_batch).batches()
            return
    yield from (np.asarray(b) for b in source)


class _Session:
    """One ONNX Runtime session exposing the model outputs plus ``extra`` tensors."""

    def __init__(self, model: ModelLike, label: str, extra: list[str], threads: int | None,
                 int8_kernels: bool) -> None:
        import onnxruntime as ort

        if isinstance(model, onnx.ModelProto):
            proto = model
        elif isinstance(model, bytes):
            proto = onnx.load_from_string(model)
        else:
            proto = onnx.load(os.fspath(model))
        exposed = onnx.ModelProto()
        exposed.CopyFrom(proto)
        self.output_names = [o.name for o in exposed.graph.output]
        present = set(self.output_names)
        # Exposed tensors keep their type (FP16 in a model cast by ``float16=True``).
        types = {v.name: v.type.tensor_type.elem_type for v in exposed.graph.value_info}
        for tensor in extra:
            if tensor not in present:
                exposed.graph.output.append(helper.make_tensor_value_info(
                    tensor, types.get(tensor) or onnx.TensorProto.FLOAT, None))
        self._wanted = self.output_names + [t for t in extra if t not in self.output_names]
        initializers = {t.name for t in exposed.graph.initializer}
        inputs = [i for i in exposed.graph.input if i.name not in initializers]
        if len(inputs) != 1:
            raise InvalidCalibrationInput(f"{label} has {len(inputs)} inputs; evaluate feeds one")
        self._input = inputs[0].name
        self.batch = fixed_batch(exposed)   # frames a run where the model fixes it, else None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.log_severity_level = 3
        if not int8_kernels:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            self._session: Any = ort.InferenceSession(exposed.SerializeToString(),
                                                      sess_options=options,
                                                      providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT's own exception types
            raise CalibrationError(f"ONNX Runtime could not load {label}: {exc}") from exc
        self._label = label

    def run(self, batch: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        try:
            values = self._session.run(self._wanted, {self._input: batch})
        except Exception as exc:  # ORT's own exception types
            raise CalibrationError(
                f"ONNX Runtime failed running {self._label} on a batch of shape {batch.shape}: "
                f"{exc}") from exc
        return dict(zip(self._wanted, values, strict=True))
