"""What a stream yields: one frozen :class:`Result` per frame, and the stream's typed statistics."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ..video import SourceStatistics

__all__ = ["GpuStatistics", "LatencySummary", "Result", "StreamStatistics"]


@dataclass(frozen=True)
class Result:
    """The inference result of one frame.

    ``outputs`` maps each model output name to this frame's numpy array (the batch axis kept, of
    size 1, so shapes match the model's). ``latency`` is seconds from the frame being decoded to
    its result being ready. ``prediction`` holds what the stream's ``postprocess`` returned (for
    ``classify()``: a :class:`Classification`), else ``None``. ``camera``: the camera's name
    in ``engine.stream_many`` (``None`` from ``engine.stream`` and ``engine.infer``).
    ``image``: with ``images=True`` (``engine.stream``, ``engine.stream_many`` or a
    :class:`Camera`), the source frame as a new RGB uint8 ``(H, W, 3)`` array the result owns;
    ``None`` otherwise (the default: results carry no pixels).
    """

    frame_index: int
    pts: float | None
    outputs: Mapping[str, npt.NDArray[np.generic]]
    latency: float
    source: str = ""
    prediction: Any = None
    camera: str | None = None
    image: npt.NDArray[np.uint8] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one stage's latency over the recent window, in seconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: deque[float] | list[float]) -> LatencySummary:
        if not samples:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        a = np.fromiter(samples, dtype=np.float64, count=len(samples))
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(len(a), float(p50), float(p90), float(p99), float(a.max()))

    def format_ms(self) -> str:
        return (f"p50 {self.p50 * 1e3:.2f} ms, p90 {self.p90 * 1e3:.2f} ms, "
                f"p99 {self.p99 * 1e3:.2f} ms, max {self.max * 1e3:.2f} ms")


@dataclass(frozen=True)
class GpuStatistics:
    """A snapshot of a stream's GPU path (times in seconds, over the most recent 10,000 batches).

    ``graph_mode``: ``"graph"`` (slots replay captured CUDA graphs), ``"plain"`` (graphs off),
    ``"retrying a failed capture (...)"`` or ``"plain (capture failed: ...)"`` (graphs given
    up); ``graph_batches`` / ``plain_batches``: batches run each way; ``graph_captures``:
    captures attempted; ``capture_failures``: those that failed (each retried later, until the
    runner gives graphs up). ``frames_from_device_memory``: frames NVDEC left on the GPU
    (copied device to device); ``frames_from_pinned_memory``: frames a decoder process wrote
    into its registered ring (copied by DMA from there, no staging). ``windowed_upload``:
    whether frames move only the window of pixels the preprocess reads
    (``upload_bytes_per_frame`` of them), as they do when that saves more than a tenth of the
    frame. ``pack``: host time to copy a batch's window into the slot's staging; ``enqueue``:
    host time to enqueue its GPU work; ``compute``: GPU time of upload, preprocess, engine and
    output copy (events). ``stage_graph_mode``: for ``detect()`` run on the GPU
    (runtime/_detect_gpu.py), whether its selection replays CUDA graphs (the values of
    ``graph_mode``), else ``None``; ``stage_fallback_frames``: frames whose selection it handed
    to the numpy path (more candidates above ``conf`` than it holds, or an NMS it did not settle).
    """

    graph_mode: str
    slots: int
    graph_batches: int
    plain_batches: int
    graph_captures: int
    capture_failures: int
    frames_from_device_memory: int
    frames_from_pinned_memory: int
    windowed_upload: bool
    upload_bytes_per_frame: int
    pack: LatencySummary
    enqueue: LatencySummary
    compute: LatencySummary
    stage_graph_mode: str | None
    stage_fallback_frames: int


@dataclass(frozen=True)
class StreamStatistics:
    """A snapshot of a stream: counts, throughput and per-stage latency percentiles.

    Stages: ``queue_wait`` (decoded to picked up for preprocessing), ``preprocess``, ``inference``
    (the backend's run), ``end_to_end`` (decoded to result ready, the ``Result.latency``) and
    ``delivery`` (result ready to handed to your ``async for``: time the result waited for you).
    Percentiles cover the most recent 10,000 frames. ``drops`` (policy ``latest``): frames the
    source replaced before inference picked them up, plus results replaced by a newer one before
    you took them. ``timestamp_regressions``: frames whose pts went backwards from the previous
    frame of the same source (damaged timing, or B-frames a file stores unreordered); results
    still come in decode order. ``backend``: the backend's kind; ``batch``: frames a batch;
    ``source``: the frame source's statistics (decoding, drops, reconnects), ``None`` before it
    opened; ``gpu``: the GPU path's statistics, ``None`` on CPU backends (or before it started).
    """

    frames: int
    drops: int
    elapsed: float
    fps: float
    queue_wait: LatencySummary
    preprocess: LatencySummary
    inference: LatencySummary
    end_to_end: LatencySummary
    delivery: LatencySummary
    timestamp_regressions: int
    backend: str
    batch: int
    source: SourceStatistics | None
    gpu: GpuStatistics | None
