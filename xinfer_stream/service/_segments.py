"""The service's video sink: each camera's results drawn on their frames and encoded as H.264
segments of ``segment_seconds``, one file each, ``FOLDER/<camera>/<start>-<index>.mp4``.

``<start>`` is the UTC time the segment's first frame was written (``20261207T065312Z``) and
``<index>`` counts the camera's segments in this run (six digits), so names sort in time and two
runs never write the same name. A segment covers ``segment_seconds`` of the camera's own
timestamps (its frames' ``pts``; ``frames / rate`` for a source without them): the frame whose
time reaches the end of the segment starts the next one. A timestamp that goes backwards (a
camera that reconnected and restarted its clock) or a frame of another size starts a new one
too.

Each segment is a :class:`~xinfer_stream.video.VideoWriter`: written to a temporary file and
renamed into place when finished, so a segment appears only whole. On :meth:`close` (the
service stopping) every camera's current segment is finished; a segment whose writing failed
is discarded (nothing partial stays) and the camera's next frame starts a new one. The frame
rate written into a camera's segments is measured from the timestamps of its first
:data:`~xinfer_stream.video.RATE_SAMPLE_FRAMES` frames (held until then), else 30.

Threads: everything here runs on the sinks' thread (``_sinks.SinkFeeder``), one call at a time;
the results it gets carry their frames (the service streams the cameras this sink takes with
``images=True``). Drawing and encoding cost that thread a few milliseconds a frame at 1080p.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from ..runtime import Result
from ..video import RATE_SAMPLE_FRAMES, VideoWriter, annotate, rate_from_timestamps

__all__ = ["VideoSegmentSink"]

_DEFAULT_RATE = Fraction(30)


@dataclass
class _Camera:
    """One camera's segments: the one being written, where it started, and frames held."""

    name: str
    folder: Path
    rate: Fraction | None = None
    held: list[Result] = field(default_factory=list)
    writer: VideoWriter | None = None
    index: int = 0          # the next segment's number
    start: float = 0.0      # the current segment's start, on the camera's own clock
    last: float = 0.0       # the last frame's time, on that clock
    frames: int = 0         # frames written by this camera (the clock of a source without pts)
    size: tuple[int, ...] = ()  # the current segment's frame size
    finished: list[Path] = field(default_factory=list)


class VideoSegmentSink:
    """Annotated H.264 segments of ``segment_seconds`` per camera under ``folder`` (which must
    exist; a folder per camera is made in it). See the module docstring."""

    def __init__(self, folder: Path, *, segment_seconds: float = 60.0,
                 cameras: frozenset[str] | None = None, preset: str = "veryfast") -> None:
        if not segment_seconds > 0:
            raise ValueError(f"segment_seconds must be positive, got {segment_seconds!r}")
        if not folder.is_dir():
            raise ValueError(f"the video sink's folder {str(folder)!r} does not exist")
        self.name = f"video:{folder}"
        self.cameras = cameras
        self.folder = folder
        self.segment_seconds = float(segment_seconds)
        self._preset = preset
        self._state: dict[str, _Camera] = {}
        self.close_errors: list[Exception] = []

    @property
    def segments(self) -> dict[str, list[Path]]:
        """The segments finished so far, per camera, in order."""
        return {name: list(cam.finished) for name, cam in self._state.items()}

    def write(self, results: Sequence[Result]) -> list[Exception]:
        errors: list[Exception] = []
        for result in results:
            cam = self._camera(result.camera or "camera")
            if result.image is None:
                errors.append(ValueError(f"a result of camera {cam.name!r} carries no image: "
                                         "the video sink needs it streamed with images=True"))
                continue
            try:
                if not cam.folder.is_dir():  # made (or found unwritable) before frames are held
                    cam.folder.mkdir()
                if cam.rate is None:
                    cam.held.append(result)
                    if len(cam.held) < RATE_SAMPLE_FRAMES:
                        continue
                    self._start_writing(cam)
                    continue
                self._write(cam, result)
            except Exception as exc:  # noqa: BLE001 - this segment's failure: counted, discarded
                errors.append(exc)
                cam.held = []
                self._discard(cam)
        return errors

    def _camera(self, name: str) -> _Camera:
        cam = self._state.get(name)
        if cam is None:
            cam = self._state[name] = _Camera(name, self.folder / _safe(name))
        return cam

    def _start_writing(self, cam: _Camera) -> None:
        """Measure the camera's rate from the frames held, then write them."""
        cam.rate = rate_from_timestamps([r.pts for r in cam.held]) or _DEFAULT_RATE
        held, cam.held = cam.held, []
        for result in held:
            self._write(cam, result)

    def _write(self, cam: _Camera, result: Result) -> None:
        assert result.image is not None and cam.rate is not None
        now = result.pts if result.pts is not None else cam.frames / float(cam.rate)
        writer = cam.writer
        if writer is not None and (now >= cam.start + self.segment_seconds or now < cam.last
                                   or result.image.shape[:2] != cam.size):
            self._finish(cam)
            writer = None
        if writer is None:
            writer = self._open(cam)
            cam.start, cam.size = now, result.image.shape[:2]
        writer.write(annotate(result.image, result.prediction))
        cam.last = now
        cam.frames += 1

    def _open(self, cam: _Camera) -> VideoWriter:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = cam.folder / f"{stamp}-{cam.index:06d}.mp4"
        cam.index += 1
        assert cam.rate is not None
        cam.writer = VideoWriter(path, fps=cam.rate, preset=self._preset)
        return cam.writer

    def _finish(self, cam: _Camera) -> None:
        writer, cam.writer = cam.writer, None
        if writer is not None:
            writer.close()  # renamed into place; on failure discarded (VideoWriter.close)
            cam.finished.append(writer.path)

    def _discard(self, cam: _Camera) -> None:
        writer, cam.writer = cam.writer, None
        if writer is not None:
            writer.abort()

    def close(self) -> None:
        """Finish every camera's current segment (frames still held first). A segment that
        fails to finish is discarded and counted in :attr:`close_errors` (the other cameras'
        are still finished). Idempotent."""
        for cam in self._state.values():
            try:
                if cam.held:
                    self._start_writing(cam)
                self._finish(cam)
            except Exception as exc:  # noqa: BLE001 - finish the other cameras' segments too
                cam.held = []
                self._discard(cam)
                self.close_errors.append(exc)


def _safe(name: str) -> str:
    """A camera name as one folder name: path separators and leading dots replaced."""
    cleaned = "".join("_" if c in "/\\\0" else c for c in name).lstrip(".")
    return cleaned or "camera"
