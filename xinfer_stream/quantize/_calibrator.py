"""Calibration inputs: frames (or ready model inputs) turned into batches, as many times as asked.

A :class:`Calibrator` owns no open resource: it holds a sequence of frames (RGB uint8, H x W x 3)
and the :class:`~xinfer_stream.preprocess.Preprocess` that turns them into model inputs, and
produces batches on demand. Each call to :meth:`Calibrator.batches` starts again from the first
frame, so statistics can take several passes (a range pass, then a histogram pass) while only one
batch is alive at a time: memory does not grow with the number of frames beyond what the caller's
frame sequence itself holds. Frames read from a calibration set on disk are memory-mapped, so that
sequence costs page cache, not heap.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from .._errors import InvalidCalibrationInput
from ..preprocess import Preprocess, preprocess_batch

__all__ = ["CalibrationWarning", "Calibrator", "fixed_batch"]


class CalibrationWarning(UserWarning):
    """Calibration can go on, but the result may be worse than asked (e.g. fewer frames)."""


def fixed_batch(model: Any) -> int | None:
    """The batch size an ONNX model's one data input is fixed at (its first dimension, where
    that is a number), else None (a dynamic batch, or not one data input)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value < 1:
        return None
    return int(dims[0].dim_value)


class Calibrator:
    """Frames plus a Preprocess -> batches of model input, re-iterable for multi-pass statistics.

    ``frames`` are RGB uint8 arrays of shape (H, W, 3); frames of different sizes are fine (each
    is resized by ``preprocess``). Nothing is copied: the sequence is read again on every pass.
    Use :meth:`from_arrays` for models whose inputs are not images (ready-made model inputs) and
    :meth:`from_calibration_set` for a calibration set written by ``xinfer_stream.video``.
    ``sources``: where each frame came from (a video's path, say), one name a frame; reports
    then say which sources calibrated a model and which were held out, and break held-out
    accuracy down per source.
    """

    def __init__(self, frames: Sequence[npt.NDArray[np.uint8]], preprocess: Preprocess, *,
                 batch_size: int = 16, name: str = "frames",
                 manifest_sha256: str | None = None, requested_frames: int | None = None,
                 sources: Sequence[str] | None = None) -> None:
        if not isinstance(preprocess, Preprocess):
            raise TypeError(f"preprocess must be a Preprocess, got {type(preprocess).__name__}")
        self._init(frames, preprocess, batch_size, name, manifest_sha256, requested_frames,
                   sources)

    def _init(self, items: Sequence[npt.NDArray[Any]], preprocess: Preprocess | None,
              batch_size: int, name: str, manifest_sha256: str | None,
              requested_frames: int | None, sources: Sequence[str] | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if len(items) == 0:
            raise InvalidCalibrationInput(
                f"the calibration set {name!r} holds no frames; give at least one frame (a few "
                "hundred sampled from the deployment's own video is typical)")
        if sources is not None:
            if isinstance(sources, str) or len(sources) != len(items):
                raise ValueError(
                    f"sources must name the source of each of the {len(items)} frames of "
                    f"{name!r}, got {sources!r:.80}")
            sources = tuple(str(s) for s in sources)
        self._sources: tuple[str, ...] | None = sources
        self._items = items
        self._preprocess = preprocess
        self._batch_size = batch_size
        self._name = name
        self._manifest_sha256 = manifest_sha256
        self._requested = requested_frames
        self._fingerprint: str | None = None

    # -- alternative constructors -----------------------------------------------------------
    @classmethod
    def from_arrays(cls, samples: Sequence[npt.NDArray[Any]] | npt.NDArray[Any], *,
                    batch_size: int = 16, name: str = "arrays") -> Calibrator:
        """Calibrate on ready model inputs: each sample is one model input without the batch
        axis (e.g. (1, 28, 28) for MNIST), already normalised as the model expects."""
        self = cls.__new__(cls)
        items = samples if isinstance(samples, Sequence) else list(samples)
        self._init(items, None, batch_size, name, None, None)
        return self

    @classmethod
    def from_calibration_set(cls, directory: str | os.PathLike[str], preprocess: Preprocess, *,
                             batch_size: int = 16, limit: int | None = None) -> Calibrator:
        """Frames of a calibration set written by ``xinfer_stream.video.save_calibration_set``
        (``xinfer-stream sample``): shards are checked against the manifest and memory-mapped, so
        frames are paged in as batches need them. ``limit`` keeps the first ``limit`` frames.

        The manifest's SHA-256 and the frame count asked of the sampler (its ``requested``
        metadata) go into the quantization report; ``InvalidCalibrationInput`` if the set is
        missing or damaged.
        """
        from ..video import load_calibration_set

        root = Path(directory)
        sampled = load_calibration_set(root)
        frames: Sequence[npt.NDArray[np.uint8]] = [f.image for f in sampled]
        if limit is not None:
            frames = frames[:limit]
        manifest_path = root / "manifest.json"
        raw = manifest_path.read_bytes()
        try:
            metadata = json.loads(raw).get("metadata", {})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            metadata = {}
        requested = metadata.get("requested") if isinstance(metadata, dict) else None
        return cls(frames, preprocess, batch_size=batch_size, name=str(root),
                   manifest_sha256=hashlib.sha256(raw).hexdigest(),
                   requested_frames=requested if isinstance(requested, int) else None,
                   sources=[f.source for f in sampled][:len(frames)])

    def split(self, holdout: int) -> tuple[Calibrator, Calibrator]:
        """``(calibration, held_out)``: about ``holdout`` frames set aside to measure accuracy
        on, the rest to calibrate on, by :func:`~xinfer_stream.quantize.split_holdout`'s rule:
        whole sources when the frames come from several (so the count is near ``holdout``, not
        exactly it), the last ``holdout`` frames when they come from one or name no source.
        Both parts keep their frames' sources; the calibration part keeps this one's name and
        manifest (what the report records), and the frames asked of the sampler less those held
        out; nothing is copied. ``ValueError`` unless ``0 < holdout < num_frames``.
        """
        from ._holdout import split_holdout  # the one splitting rule, shared with the library

        sources = self._sources if self._sources is not None else ("",) * len(self._items)
        split = split_holdout([_Sourced(s, i) for i, s in enumerate(sources)], holdout)
        calib = [f.index for f in split.calibration]
        held = [f.index for f in split.held_out]

        def part(indices: list[int]) -> tuple[str, ...] | None:
            return None if self._sources is None else tuple(sources[i] for i in indices)

        first = type(self).__new__(type(self))
        requested = None if self._requested is None else self._requested - len(held)
        first._init(_Picked(self._items, calib), self._preprocess, self._batch_size, self._name,
                    self._manifest_sha256, requested, part(calib))
        second = type(self).__new__(type(self))
        second._init(_Picked(self._items, held), self._preprocess, self._batch_size, "held-out",
                     None, None, part(held))
        return first, second

    def for_model_batch(self, batch: int | None) -> Calibrator:
        """This calibrator in batches a model whose input is fixed at ``batch`` frames can run
        (:func:`fixed_batch`; YOLOX's official exports take ``[1, 3, 416, 416]``): that many
        frames a run, whatever ``batch_size`` asked; ``None`` (a dynamic batch) keeps it.
        ``InvalidCalibrationInput`` when a fixed batch above 1 does not divide the frames."""
        if batch is None or batch == self._batch_size:
            return self
        if self.num_frames % batch:
            raise InvalidCalibrationInput(
                f"the model's input takes exactly {batch} frames a run, and {self._name!r} "
                f"holds {self.num_frames}; give a multiple of {batch} frames, or export the "
                "model with a dynamic batch axis")
        clone = type(self).__new__(type(self))
        clone._init(self._items, self._preprocess, batch, self._name, self._manifest_sha256,
                    self._requested, self._sources)
        clone._fingerprint = self._fingerprint
        return clone

    # -- properties -------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return len(self._items)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def name(self) -> str:
        return self._name

    @property
    def preprocess(self) -> Preprocess | None:
        """The spec frames go through; ``None`` for a calibrator made by :meth:`from_arrays`."""
        return self._preprocess

    @property
    def sources(self) -> tuple[str, ...] | None:
        """The source of each frame, when given (see the class doc)."""
        return self._sources

    @property
    def source_names(self) -> tuple[str, ...]:
        """The distinct sources, in the order of their first frame; empty when not given."""
        return tuple(dict.fromkeys(self._sources or ()))

    @property
    def manifest_sha256(self) -> str | None:
        """SHA-256 of the calibration set's manifest, when frames came from one."""
        return self._manifest_sha256

    @property
    def requested_frames(self) -> int | None:
        """How many frames the sampler was asked for, when the calibration set records it."""
        return self._requested

    @property
    def fingerprint(self) -> str:
        """SHA-256 over every frame (shape and bytes) and the Preprocess: what made the scales."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(b"none" if self._preprocess is None else self._preprocess.to_json().encode())
            for item in self._items:
                array = np.ascontiguousarray(item)
                h.update(f"{array.dtype.str}{array.shape}".encode())
                h.update(array.data)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def frame_hashes(self) -> set[str]:
        """SHA-1 of each frame's bytes, to tell calibration frames from held-out ones."""
        return {hashlib.sha1(np.ascontiguousarray(item).data).hexdigest() for item in self._items}

    # -- batches ----------------------------------------------------------------------------
    def head(self, count: int) -> Calibrator:
        """A calibrator over the first ``count`` frames (all of them if there are fewer)."""
        if count >= self.num_frames:
            return self
        clone = Calibrator.__new__(Calibrator)
        clone._init(_Picked(self._items, range(max(0, count))), self._preprocess,
                    self._batch_size, self._name, self._manifest_sha256, self._requested,
                    None if self._sources is None else self._sources[:count])
        return clone

    def spread(self, count: int) -> Calibrator:
        """A calibrator over ``count`` frames spread evenly over this one's, first and last
        included (all of them if there are fewer): a small subset that still covers every clip."""
        if count >= self.num_frames:
            return self
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        picks = [round(i * (self.num_frames - 1) / max(count - 1, 1)) for i in range(count)]
        clone = Calibrator.__new__(Calibrator)
        clone._init(_Picked(self._items, picks), self._preprocess, self._batch_size, self._name,
                    self._manifest_sha256, self._requested,
                    None if self._sources is None else [self._sources[i] for i in picks])
        return clone

    def frame(self, index: int) -> npt.NDArray[np.uint8]:
        """Frame ``index`` as given (RGB uint8, before the Preprocess), for pictures of results;
        ``ValueError`` for a calibrator made by :meth:`from_arrays` (it holds model inputs)."""
        if self._preprocess is None:
            raise ValueError(f"{self._name!r} holds model inputs, not frames (from_arrays); "
                             "there is no frame to show")
        return self._checked(index)

    def batches(self) -> Iterator[npt.NDArray[Any]]:
        """Yield model-input batches (B, *input) in frame order; the last may be smaller.

        Raises ``InvalidCalibrationInput`` naming the frame when a frame is not RGB uint8, or when
        a ready-made sample holds NaN or infinity.
        """
        for start in range(0, len(self._items), self._batch_size):
            chunk = [self._checked(i) for i in range(start, min(start + self._batch_size,
                                                                len(self._items)))]
            if self._preprocess is None:
                batch = np.stack(chunk)
            else:
                batch = preprocess_batch(self._preprocess, chunk)
            yield batch

    def _checked(self, index: int) -> npt.NDArray[Any]:
        item = np.asarray(self._items[index])
        if self._preprocess is not None:
            if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
                raise InvalidCalibrationInput(
                    f"calibration frame {index} of {self._name!r} is {item.dtype} {item.shape}; "
                    "frames must be RGB uint8 arrays shaped (H, W, 3)")
            return item
        if item.dtype.kind == "f" and not np.isfinite(item).all():
            raise InvalidCalibrationInput(
                f"calibration sample {index} of {self._name!r} contains NaN or infinity; remove it "
                "or fix whatever produced it")
        if item.dtype.kind not in "fiu":
            raise InvalidCalibrationInput(
                f"calibration sample {index} of {self._name!r} has dtype {item.dtype}; expected "
                "numbers")
        return item

    def __repr__(self) -> str:
        return (f"Calibrator(name={self._name!r}, num_frames={self.num_frames}, "
                f"batch_size={self._batch_size}, preprocess={self._preprocess!r})")


@dataclass(frozen=True)
class _Sourced:
    """A frame's source and its index in the calibrator (what ``split_holdout`` splits)."""

    source: str
    index: int


class _Picked(Sequence[Any]):
    """The items of a sequence at the given indices, without copying."""

    def __init__(self, items: Sequence[Any], indices: Sequence[int]) -> None:
        self._items = items
        self._indices = list(indices)

    def __len__(self) -> int:
        return len(self._indices)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._items[self._indices[index]]
