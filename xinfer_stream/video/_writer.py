"""Writing video: RGB frames encoded as H.264 with PyAV, into a file that appears only once whole.

A :class:`VideoWriter` writes into a temporary file beside its destination and renames it over
the destination in :meth:`VideoWriter.close` (``xinfer_stream._files.atomic_output``). Leaving
its ``with`` block by an exception (an error, Ctrl-C) or calling :meth:`VideoWriter.abort`
removes the temporary file: the destination keeps its previous content, or stays absent. A
partial video never replaces a good one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.container
import av.video.stream
import numpy as np
import numpy.typing as npt

from .._errors import InvalidVideoError
from .._files import AtomicWriter, atomic_output, discard_atomic

__all__ = ["RATE_SAMPLE_FRAMES", "VideoWriter", "frame_rate", "rate_from_timestamps"]

# The muxer for each file name ending we write (the temporary file's name ends in .tmp, so the
# container format cannot come from its name).
_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}

# Frames of a live stream whose timestamps measure its rate (rate_from_timestamps): about half a
# second of a camera, held by a recorder before it starts its video.
RATE_SAMPLE_FRAMES = 16


class VideoWriter(AtomicWriter):
    """Encode RGB uint8 ``(H, W, 3)`` frames into ``path`` (``.mp4``, ``.m4v``, ``.mov`` or
    ``.mkv``) as H.264 (libx264, yuv420p) at ``fps`` frames a second, atomically.

    The temporary file is made at construction, so a folder that cannot be written fails here,
    before any frame is encoded. Every frame must have the first one's size (odd sizes are
    cropped by one pixel: yuv420p needs even ones). ``close()`` finishes the file and renames it
    over ``path``; ``abort()`` discards it; both are safe to call twice. As a context manager it
    closes on success and aborts on an exception.
    """

    def __init__(self, path: str | os.PathLike[str], *, fps: float | Fraction = 30,
                 crf: int = 23, preset: str = "veryfast") -> None:
        self.path = Path(path)
        muxer = _MUXERS.get(self.path.suffix.lower())
        if muxer is None:
            raise ValueError(f"cannot write video to {str(self.path)!r}: name it .mp4, .m4v, .mov "
                             "or .mkv")
        if not fps or fps <= 0:
            raise ValueError(f"VideoWriter(fps=...) must be positive, got {fps!r}")
        self._rate = Fraction(fps).limit_denominator(100_000)
        self._muxer, self._crf, self._preset = muxer, crf, preset
        self._stack = contextlib.ExitStack()
        self._tmp: Path = self._stack.enter_context(atomic_output(self.path))
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0
        self.closed = False

    def write(self, image: npt.NDArray[np.uint8]) -> None:
        """Encode one frame (the next in time, ``1 / fps`` after the previous)."""
        if self.closed:
            raise ValueError(f"the VideoWriter for {str(self.path)!r} is closed")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"VideoWriter writes RGB uint8 (H, W, 3) frames, got a {image.dtype} "
                             f"array of shape {image.shape}")
        if self._stream is None:
            self._open(image.shape[0], image.shape[1])
        assert self._container is not None and self._stream is not None and self._size is not None
        h, w = self._size
        if image.shape[0] < h or image.shape[1] < w or image.shape[0] > h + 1 or image.shape[1] > w + 1:
            raise ValueError(f"frame {self.frames} is {image.shape[1]}x{image.shape[0]}; this video "
                             f"is {w}x{h} (every frame of a video has one size)")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:h, :w]), format="rgb24")
        frame.pts = self.frames
        frame.time_base = 1 / self._rate
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def _open(self, height: int, width: int) -> None:
        h, w = height - height % 2, width - width % 2
        if h < 2 or w < 2:
            raise ValueError(f"cannot encode {width}x{height} frames as H.264")
        container = av.open(os.fspath(self._tmp), mode="w", format=self._muxer)
        assert isinstance(container, av.container.OutputContainer)
        self._container = container
        stream = container.add_stream("libx264", rate=self._rate)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.options = {"preset": self._preset, "crf": str(self._crf)}
        self._stream, self._size = stream, (h, w)

    def close(self) -> None:
        """Flush the encoder, finish the file and rename it over ``path``. With no frame written
        there is no video to finish: the temporary file is discarded and ``InvalidVideoError``
        raised (``path`` untouched)."""
        if self.closed:
            return
        self.closed = True
        if self._stream is None:
            self._discard(None)
            raise InvalidVideoError(f"no frame was written to {str(self.path)!r}; nothing saved")
        try:
            assert self._container is not None
            self._container.mux(self._stream.encode(None))
            self._container.close()
        except BaseException as exc:
            self._discard(exc)
            raise
        self._stack.close()  # fsync and rename over path

    def abort(self) -> None:
        """Discard what was written; ``path`` keeps its previous content (or stays absent)."""
        if self.closed:
            return
        self.closed = True
        self._discard(None)

    def _discard(self, exc: BaseException | None) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
        discard_atomic(self._stack, exc)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<VideoWriter {str(self.path)!r} {self.frames} frames, {state}>"


def frame_rate(source: str | os.PathLike[str]) -> Fraction | None:
    """The frame rate of a video file's first video stream (its average rate, else FFmpeg's
    guess), or ``None`` when it has none. Raises :class:`InvalidVideoError` for a file that
    cannot be opened as video."""
    try:
        container: Any = av.open(os.fspath(source))
    except (av.error.FFmpegError, OSError) as exc:
        raise InvalidVideoError(f"cannot open {str(source)!r} as a video: {exc}") from exc
    with container:
        if not container.streams.video:
            raise InvalidVideoError(f"{str(source)!r} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        return Fraction(rate) if rate else None


def rate_from_timestamps(pts: Sequence[float | None]) -> Fraction | None:
    """Frames a second of a stream from the presentation times of consecutive frames (seconds):
    one over the median step between them, so a few longer steps (frames a ``latest`` policy
    dropped, a network hiccup) do not move it; ``None`` without two increasing timestamps."""
    steps = [b - a for a, b in itertools.pairwise(pts) if a is not None and b is not None and b > a]
    if not steps:
        return None
    return Fraction(1 / statistics.median(steps)).limit_denominator(1001)
