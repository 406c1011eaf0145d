"""Postprocessing: what a postprocess receives, and the built-in classifier (softmax, top-k, labels).

A postprocess is any callable the stream calls once per frame, on the worker thread, with that
frame's outputs (``{name: array}``, batch axis of size 1). A plain callable gets only the outputs.
A :class:`FramePostprocess` (``detect()``, ``classify()``, or your subclass) also gets a
:class:`FrameContext`: the source frame's size, the Preprocess that made the model input from it,
and what the model says about itself (:class:`ModelInfo`: output specs, ONNX metadata, the op
that produces each output). That is the least a detector needs to map boxes back to the frame
and a classifier needs to read its labels and know whether its output is already a probability.
The context is made only for a ``FramePostprocess``; a plain callable costs nothing extra.
"""

from __future__ import annotations

import abc
import ast
import functools
import json
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import InvalidModelError
from ..engines import TensorSpec
from ..preprocess import Preprocess
from ._result import Result

__all__ = ["Classification", "FrameContext", "FramePostprocess", "ModelInfo", "Postprocess",
           "apply_postprocess", "classify", "frame_result", "model_info", "read_labels"]

Outputs = Mapping[str, npt.NDArray[np.generic]]
Postprocess = Callable[[Outputs], object]

# Metadata keys that hold class names: Ultralytics writes ``names`` (a Python dict literal),
# RapidAI/PaddleOCR exports ``character`` (one name a line); ``labels``/``classes`` are common.
_LABEL_KEYS = ("names", "labels", "classes", "character")


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model says about itself, read once per engine.

    ``outputs``: the backend's output specs. ``metadata``: the ONNX model's ``metadata_props``
    (empty for other model types). ``producers``: for each graph output, the op type of the node
    that produces it (``"Softmax"``, ``"Gemm"``, ...; ONNX only).
    """

    outputs: tuple[TensorSpec, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    producers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @functools.cached_property
    def labels(self) -> tuple[str, ...] | None:
        """Class names stored in the metadata (``names``, ``labels``, ``classes`` or
        ``character``), in index order; ``None`` when there are none or they do not parse.
        Parsed once (postprocesses ask every frame)."""
        for key in _LABEL_KEYS:
            if key in self.metadata:
                names = _parse_labels(self.metadata[key])
                if names:
                    return names
        return None


def _parse_labels(text: str) -> tuple[str, ...] | None:
    """A JSON or Python literal list / ``{index: name}`` dict, else one name a line."""
    value: Any = None
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
            break
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if isinstance(value, dict):
        try:
            items = sorted((int(k), str(v)) for k, v in value.items())
        except (TypeError, ValueError):
            return None
        if [k for k, _ in items] != list(range(len(items))):
            return None
        return tuple(v for _, v in items)
    if value is None and "\n" in text:
        lines = [line.strip() for line in text.splitlines()]
        return tuple(line for line in lines if line) or None
    return None


_INFO_CACHE: weakref.WeakKeyDictionary[Any, ModelInfo] = weakref.WeakKeyDictionary()
_INFO_LOCK = threading.Lock()


def model_info(backend: Any) -> ModelInfo:
    """The :class:`ModelInfo` of a backend, read once (cached while the backend lives).

    ONNX models are re-read without their weights (``load_external_data=False``) for the metadata
    and the graph outputs' producers; other backends give their output specs only.
    """
    with _INFO_LOCK:
        try:
            cached = _INFO_CACHE.get(backend)
        except TypeError:  # not weak-referenceable: read every time (tests' fakes)
            cached = None
        if cached is not None:
            return cached
    outputs = tuple(getattr(backend, "outputs", ()))
    metadata: dict[str, str] = {}
    producers: dict[str, str] = {}
    path = getattr(backend, "path", None)
    if isinstance(path, (str, Path)) and Path(path).suffix.lower() == ".onnx" and Path(path).is_file():
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - the backend loaded it; missing extras are not fatal
            model = None
        if model is not None:
            metadata = {p.key: p.value for p in model.metadata_props}
            wanted = {o.name for o in model.graph.output}
            producers = {out: node.op_type for node in model.graph.node for out in node.output
                         if out in wanted}
    info = ModelInfo(outputs, MappingProxyType(metadata), MappingProxyType(producers))
    with _INFO_LOCK:
        try:
            _INFO_CACHE[backend] = info
        except TypeError:
            pass
    return info


@dataclass(frozen=True)
class FrameContext:
    """What a :class:`FramePostprocess` knows about the frame besides the model's outputs.

    ``frame_size`` is the source frame's ``(height, width)`` in pixels; ``preprocess`` the spec
    that turned it into the model input (its :meth:`~Preprocess.geometry` says where the frame
    landed); ``model`` what the model says about itself. Made by the runtime per frame; make one
    by hand to call a postprocess on outputs you ran yourself:
    ``detector(outputs, FrameContext((h, w), engine.preprocess))``.
    """

    frame_size: tuple[int, int]
    preprocess: Preprocess
    model: ModelInfo = ModelInfo()

    def __post_init__(self) -> None:
        h, w = (int(v) for v in self.frame_size)
        if h <= 0 or w <= 0:
            raise ValueError(f"frame_size must be (height, width) of positive ints, got {self.frame_size!r}")
        object.__setattr__(self, "frame_size", (h, w))


class FramePostprocess(abc.ABC):
    """A postprocess called as ``postprocess(outputs, context)`` with a :class:`FrameContext`.

    Subclass it (and implement ``__call__``) when your postprocess needs the frame's size, the
    Preprocess or the model's metadata; ``context`` is ``None`` when a caller has none to give.
    """

    @abc.abstractmethod
    def __call__(self, outputs: Outputs, context: FrameContext | None = None) -> object: ...


def apply_postprocess(postprocess: Callable[..., object], outputs: Outputs, *, backend: Any,
                      preprocess: Preprocess, frame_size: tuple[int, int]) -> object:
    """Run one frame's postprocess as the runtime does: a :class:`FramePostprocess` gets the
    frame's :class:`FrameContext` (the backend's :class:`ModelInfo` is read once and cached),
    any other callable only the outputs."""
    if isinstance(postprocess, FramePostprocess):
        return postprocess(outputs, FrameContext(frame_size, preprocess, model_info(backend)))
    return postprocess(outputs)


def frame_result(postprocess: Callable[..., object] | None, outputs: Outputs, i: int, n: int,
                 frame: Any, *, backend: Any, preprocess: Preprocess,
                 camera: str | None = None) -> Result:
    """Frame ``i`` of a batch of ``n`` as the consumer gets it: its outputs, its postprocess's
    prediction, and its latency from when it was decoded (``frame.decoded_at``) to now."""
    mine = frame_outputs(outputs, i, n)
    prediction = (apply_postprocess(postprocess, mine, backend=backend, preprocess=preprocess,
                                    frame_size=(frame.height, frame.width))
                  if postprocess is not None else None)
    return Result(frame_index=frame.index, pts=frame.pts, outputs=mine,
                  latency=time.perf_counter() - frame.decoded_at, source=frame.source,
                  prediction=prediction, camera=camera)


def frame_outputs(outputs: Outputs, i: int, n: int) -> dict[str, npt.NDArray[np.generic]]:
    """Frame ``i`` of a batch of ``n``: each output's row ``i`` of its batch axis. A batch of one
    keeps every output whole, so outputs without a batch axis (a detector ending in NMS gives
    ``[N, 6]`` rows) reach the postprocess intact; in a larger batch only outputs whose leading
    axis is the batch are split."""
    if n == 1:
        return dict(outputs)
    return {name: value[i:i + 1] if value.ndim and value.shape[0] == n else value
            for name, value in outputs.items()}


# -- classification -------------------------------------------------------------------------
@dataclass(frozen=True)
class Classification:
    """Top-k classes of one frame, best first: ``(class index, label, probability)``."""

    top: tuple[tuple[int, str, float], ...]

    @property
    def best(self) -> tuple[int, str, float]:
        return self.top[0]


def read_labels(path: str | Path) -> list[str]:
    """One class name a line, in index order."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def check_label_count(labels: Sequence[str], classes: int, what: str) -> None:
    """``InvalidModelError`` (a ``ValueError``) naming both counts when they differ."""
    if len(labels) != classes:
        raise InvalidModelError(
            f"labels has {len(labels)} names but {what} has {classes} classes; pass the labels "
            f"of this model (one name per class, in index order)")


class _Classifier(FramePostprocess):
    """``classify()``'s postprocess; see there."""

    def __init__(self, top: int, labels: Sequence[str] | None, output: str | None) -> None:
        self._top = top
        self._labels = tuple(str(v) for v in labels) if labels is not None else None
        self._output = output

    def __call__(self, outputs: Outputs, context: FrameContext | None = None) -> Classification:
        name = self._output if self._output is not None else next(iter(outputs))
        if name not in outputs:
            raise InvalidModelError(f"classify(output={name!r}): the model has no such output; it "
                                    f"has {', '.join(map(repr, outputs))}")
        values = np.asarray(outputs[name], dtype=np.float64).reshape(-1)
        classes = values.size
        names = self._labels
        if names is not None:
            check_label_count(names, classes, f"the model's output {name!r}")
        elif context is not None:
            stored = context.model.labels
            names = stored if stored is not None and len(stored) == classes else None
        producer = context.model.producers.get(name) if context is not None else None
        if producer == "Softmax" or _is_distribution(values):
            probs = values  # already probabilities: a second softmax would flatten them
        else:
            # Logits, or log-probabilities (LogSoftmax): softmax of log p is p itself.
            e = np.exp(values - values.max())
            probs = e / e.sum()
        k = min(self._top, classes)
        idx = np.argpartition(-probs, k - 1)[:k]
        idx = idx[np.argsort(-probs[idx], kind="stable")]
        return Classification(tuple(
            (int(i), names[i] if names is not None else str(int(i)), float(probs[i])) for i in idx))


def _is_distribution(values: npt.NDArray[np.float64]) -> bool:
    """Non-negative and summing to 1 (to within float16/INT8 rounding): a probability vector."""
    return bool(values.size > 1 and values.min() >= 0.0 and abs(values.sum() - 1.0) <= 1e-3)


def classify(top: int = 5, labels: Sequence[str] | None = None, output: str | None = None,
             ) -> FramePostprocess:
    """A postprocess for classifiers: top-k classes of ``output`` (default: the first output).

    The output holds one frame's scores (shape ``[1, classes]`` or ``[classes]``). Logits get a
    softmax; an output that already is a probability vector (non-negative, summing to 1) or that
    the model computes with a ``Softmax`` op is used as it is. ``labels``: one name per class
    (their count must equal the class count; a mismatch is an error naming both); by default the
    names stored in the model's metadata (Ultralytics ``names``, or ``labels``/``classes``/
    ``character``), else the class indices.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be at least 1, got {top!r}")
    if isinstance(labels, (str, bytes)):
        raise ValueError("labels must be a sequence of class names, not one string; use "
                         "read_labels(path) for a labels file")
    return _Classifier(top, labels, output)
