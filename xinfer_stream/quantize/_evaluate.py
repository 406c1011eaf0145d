"""Accuracy of a Q/DQ model against its FP32 original, both run in ONNX Runtime on the CPU.

:func:`evaluate` runs both models batch by batch on frames the caller holds out from calibration
and keeps running sums only (memory does not grow with the number of frames). Per model output it
reports the mean and worst cosine similarity and the mean relative error per frame, and for
classifier outputs ((batch, classes) with more than one class) how often the top-1 classes agree.
Given ``tensors`` (the outputs of quantized layers), it also reports the signal-to-quantization-
noise ratio of each, FP32 value against INT8-model value, and lists the worst ones: where
quantization hurts.
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
from ._calibrator import Calibrator
from ._statistics import default_threads

__all__ = ["AccuracyReport", "OutputAccuracy", "TensorError", "evaluate"]

ModelLike = str | os.PathLike[str] | onnx.ModelProto | bytes


@dataclass(frozen=True)
class OutputAccuracy:
    """FP32-vs-INT8 agreement of one model output over every evaluated frame."""

    name: str
    frames: int
    cosine_mean: float
    cosine_min: float
    relative_error_mean: float        # ||int8 - fp32|| / ||fp32|| per frame, averaged
    top1_agreement: float | None      # fraction of frames whose argmax agrees (classifiers)


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
        }


def evaluate(fp32_model: ModelLike, int8_model: ModelLike,
             frames_or_batches: Calibrator | Sequence[npt.NDArray[Any]] | Iterable[npt.NDArray[Any]],
             preprocess: Preprocess | None = None, *, tensors: Sequence[str] = (),
             worst: int = 10, batch_size: int = 16, threads: int | None = None,
             int8_kernels: bool = False) -> AccuracyReport:
    """Compare ``int8_model`` with ``fp32_model`` on held-out inputs.

    ``frames_or_batches`` is a :class:`Calibrator`, a sequence of RGB uint8 frames (then
    ``preprocess`` is required), or an iterable of ready model-input batches. ``tensors`` names
    intermediate tensors present in both models whose SQNR to report (``worst`` of them).

    By default the Q/DQ model is executed as written (ONNX Runtime's Q/DQ-to-integer-kernel
    fusion off): exactly the arithmetic TensorRT implements (int8 products, int32 accumulation,
    float scales). ``int8_kernels=True`` measures ONNX Runtime's own CPU integer kernels instead;
    on x86 CPUs without VNNI those saturate int16 intermediate sums for signed int8 activations
    (measured here: EfficientNet-Lite0 logits cosine 0.98 -> 0.88), which says more about that
    CPU path than about the quantization.
    """
    fp32 = _Session(fp32_model, "the FP32 model", list(tensors), threads, False)
    int8 = _Session(int8_model, "the INT8 model", list(tensors), threads, int8_kernels)
    outputs = fp32.output_names
    if set(outputs) != set(int8.output_names):
        raise InvalidCalibrationInput(
            f"the FP32 and INT8 models have different outputs ({outputs} vs {int8.output_names}); "
            "compare a Q/DQ model with the model it was made from")
    frames = 0
    cos_sum = dict.fromkeys(outputs, 0.0)
    cos_min = dict.fromkeys(outputs, 1.0)
    rel_sum = dict.fromkeys(outputs, 0.0)
    agree: dict[str, int | None] = dict.fromkeys(outputs, 0)
    signal = dict.fromkeys(tensors, 0.0)
    noise = dict.fromkeys(tensors, 0.0)
    for batch in _batches(frames_or_batches, preprocess, batch_size):
        ref = fp32.run(batch)
        got = int8.run(batch)
        frames += len(batch)
        for name in outputs:
            a = ref[name].reshape(len(batch), -1).astype(np.float64)
            b = got[name].reshape(len(batch), -1).astype(np.float64)
            na = np.linalg.norm(a, axis=1)
            nb = np.linalg.norm(b, axis=1)
            diff = np.linalg.norm(a - b, axis=1)
            cosine = np.where((na > 0) & (nb > 0), (a * b).sum(axis=1) / np.maximum(na * nb, 1e-300),
                              np.where((na == 0) & (nb == 0), 1.0, 0.0))
            cos_sum[name] += float(cosine.sum())
            cos_min[name] = min(cos_min[name], float(cosine.min()))
            rel_sum[name] += float((diff / np.maximum(na, 1e-30)).sum())
            count = agree[name]
            if count is not None and ref[name].ndim == 2 and ref[name].shape[1] > 1:
                agree[name] = count + int((ref[name].argmax(axis=1) == got[name].argmax(axis=1)).sum())
            else:
                agree[name] = None
        for tensor in tensors:
            a = ref[tensor].astype(np.float64)
            signal[tensor] += float((a * a).sum())
            noise[tensor] += float(((a - got[tensor]) ** 2).sum())
    if frames == 0:
        raise InvalidCalibrationInput("evaluate was given no frames; hold out at least one frame")
    report_outputs = []
    for name in outputs:
        count = agree[name]
        report_outputs.append(OutputAccuracy(
            name=name, frames=frames, cosine_mean=cos_sum[name] / frames,
            cosine_min=cos_min[name], relative_error_mean=rel_sum[name] / frames,
            top1_agreement=None if count is None else count / frames))
    errors = [TensorError(t, _sqnr(signal[t], noise[t])) for t in tensors]
    errors.sort(key=lambda e: e.sqnr_db)
    return AccuracyReport(frames, tuple(report_outputs), tuple(errors[:worst]))


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _batches(source: Calibrator | Sequence[npt.NDArray[Any]] | Iterable[npt.NDArray[Any]],
             preprocess: Preprocess | None, batch_size: int) -> Iterator[npt.NDArray[Any]]:
    if isinstance(source, Calibrator):
        yield from source.batches()
        return
    if isinstance(source, Sequence) and len(source) > 0:
        first = np.asarray(source[0])
        if first.ndim == 3 and first.shape[2] == 3 and first.dtype == np.uint8:
            if preprocess is None:
                raise ValueError("evaluate got RGB frames but no preprocess to turn them into "
                                 "model inputs; pass preprocess=")
            yield from Calibrator(source, preprocess, batch_size=batch_size,
                                  name="held-out frames").batches()
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
