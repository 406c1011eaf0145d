"""FP32 and INT8 side by side on a chosen video, frame by frame (Polygraphy's ``run`` comparing
two backends, for our pair of models).

:func:`evaluate` answers "how good is the INT8 model on frames held out from calibration" with
running sums; :func:`compare` answers "where, in *this* video, do the two disagree": it decodes
the video once, feeds the same preprocessed batch to both models (ONNX Runtime, the Q/DQ model
executed as written, as :func:`evaluate` does) and yields one :class:`FrameComparison` per frame,
in decode order. :class:`ComparisonSummary` folds those rows into the figures a person checks:
top-1 agreement, the cosine of the outputs (mean and worst) and which frames disagree.

Memory: one batch of frames and outputs at a time; the summary keeps only the indices of the
frames that disagree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import InvalidCalibrationInput
from ..preprocess import Preprocess, preprocess_batch
from ._evaluate import ModelLike, _Session

__all__ = ["ComparisonSummary", "FrameComparison", "compare"]


@dataclass(frozen=True)
class FrameComparison:
    """One frame through both models. ``cosine`` compares the model output named ``output``
    (flattened); ``fp32_top1``/``int8_top1`` are its argmax classes when it is a classifier
    output ((batch, classes), more than one class), else ``None``."""

    output: str
    source: str
    index: int
    pts: float | None
    cosine: float
    fp32_top1: int | None
    int8_top1: int | None

    @property
    def agrees(self) -> bool | None:
        """Whether the top-1 classes agree; ``None`` for outputs that are not class scores."""
        if self.fp32_top1 is None or self.int8_top1 is None:
            return None
        return self.fp32_top1 == self.int8_top1


@dataclass(frozen=True)
class ComparisonSummary:
    """What a run of :func:`compare` amounts to (build it with :meth:`of`)."""

    output: str
    frames: int
    top1_agreement: float | None        # fraction of frames; None when not a classifier output
    cosine_mean: float
    cosine_min: float
    worst: FrameComparison               # the frame with the lowest cosine
    disagreements: tuple[FrameComparison, ...]   # frames whose top-1 classes differ

    @classmethod
    def of(cls, rows: Iterable[FrameComparison]) -> ComparisonSummary:
        """Fold ``rows`` (at least one, all of one output) into a summary."""
        frames = 0
        cos_sum = 0.0
        worst: FrameComparison | None = None
        agree: int | None = 0
        disagreements: list[FrameComparison] = []
        for row in rows:
            frames += 1
            cos_sum += row.cosine
            if worst is None or row.cosine < worst.cosine:
                worst = row
            if row.agrees is None:
                agree = None
            elif agree is not None:
                agree += row.agrees
                if not row.agrees:
                    disagreements.append(row)
        if worst is None:
            raise InvalidCalibrationInput("there is nothing to summarise: no frame was compared")
        return cls(output=worst.output, frames=frames,
                   top1_agreement=None if agree is None else agree / frames,
                   cosine_mean=cos_sum / frames, cosine_min=worst.cosine, worst=worst,
                   disagreements=tuple(disagreements))


def compare(fp32_model: ModelLike, int8_model: ModelLike, source: Any, preprocess: Preprocess,
            *, output: str | None = None, batch_size: int = 8, limit: int | None = None,
            threads: int | None = None) -> Iterator[FrameComparison]:
    """Run both models on every frame of ``source`` (anything :func:`~xinfer_stream.open_source`
    opens; a file is read at decode speed, never dropping frames) and yield one
    :class:`FrameComparison` per frame, in decode order. ``output`` names the output to compare
    (default: the first classifier-shaped output, else the first output); ``limit`` stops after
    that many frames. The source is closed when the generator finishes or is closed.
    """
    from ..video import open_source

    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of frames, got {limit!r}")
    fp32 = _Session(fp32_model, "the FP32 model", [], threads, False)
    int8 = _Session(int8_model, "the INT8 model", [], threads, False)
    if set(fp32.output_names) != set(int8.output_names):
        raise InvalidCalibrationInput(
            f"the FP32 and INT8 models have different outputs ({fp32.output_names} vs "
            f"{int8.output_names}); compare a Q/DQ model with the model it was made from")
    batch_size = fp32.batch or batch_size   # a model fixed at N frames a run takes N
    if output is not None and output not in fp32.output_names:
        raise ValueError(f"output {output!r} is not an output of {_name(fp32_model)}; it has "
                         f"{', '.join(fp32.output_names)}")
    chosen = [output] if output is not None else None
    seen = 0
    with open_source(source, format="rgb24", policy="every") as frames:
        pending: list[tuple[str, int, float | None, npt.NDArray[np.uint8]]] = []
        for frame in frames:
            pending.append((frame.source, frame.index, frame.pts, frame.image))
            seen += 1
            done = limit is not None and seen >= limit
            if len(pending) == batch_size or done:
                if chosen is None:
                    chosen = [_pick_output(fp32, pending, preprocess)]
                yield from _compare_batch(fp32, int8, chosen[0], pending, preprocess)
                pending = []
            if done:
                break
        if pending:
            if chosen is None:
                chosen = [_pick_output(fp32, pending, preprocess)]
            yield from _compare_batch(fp32, int8, chosen[0], pending, preprocess)


def _pick_output(session: _Session, pending: list[tuple[str, int, float | None,
                                                      npt.NDArray[np.uint8]]],
                 preprocess: Preprocess) -> str:
    outputs = session.run(preprocess_batch(preprocess, [pending[0][3]] * (session.batch or 1)))
    names: list[str] = list(session.output_names)
    for name in names:
        if _is_classifier(outputs[name]):
            return name
    return names[0]


def _is_classifier(value: npt.NDArray[Any]) -> bool:
    return value.ndim == 2 and value.shape[1] > 1


def _compare_batch(fp32: _Session, int8: _Session, output: str,
                   pending: list[tuple[str, int, float | None, npt.NDArray[np.uint8]]],
                   preprocess: Preprocess) -> Iterator[FrameComparison]:
    images = [image for *_, image in pending]
    # A model fixed at N frames a run takes the last frames padded with copies; their rows go.
    images += images[-1:] * ((fp32.batch or len(images)) - len(images))
    batch = preprocess_batch(preprocess, images)
    ref = fp32.run(batch)[output][:len(pending)]
    got = int8.run(batch)[output][:len(pending)]
    a = ref.reshape(len(pending), -1).astype(np.float64)
    b = got.reshape(len(pending), -1).astype(np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    cosine = np.where((na > 0) & (nb > 0), (a * b).sum(axis=1) / np.maximum(na * nb, 1e-300),
                      np.where((na == 0) & (nb == 0), 1.0, 0.0))
    classifier = _is_classifier(ref)
    for i, (source, index, pts, _) in enumerate(pending):
        yield FrameComparison(
            output=output, source=source, index=index, pts=pts, cosine=float(cosine[i]),
            fp32_top1=int(ref[i].argmax()) if classifier else None,
            int8_top1=int(got[i].argmax()) if classifier else None)


def _name(model: ModelLike) -> str:
    return repr(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else "the model"
