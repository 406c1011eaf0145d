"""Decoding loops: generators that turn a container (or user arrays) into :class:`VideoFrame`.

Each generator owns what it is given: a container is closed in the generator's ``finally``, so
closing the generator (or exhausting it) releases it on every path. They run on the decode thread
of a :class:`~xinfer_stream.video.FrameSource`; they check the stop event between packets and
never block except inside FFmpeg (whose reads are bounded by the open options' read timeout).

Errors leave as :class:`VideoError` chained to PyAV's exception and name the source and the frame
position, after every frame decoded before the failure was yielded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import av
import av.container
import av.error
import av.video.stream
import numpy as np

from .._errors import BrokenStreamError, InvalidVideoError, VideoError
from ._container import OpenOptions, Target, is_file_truncated, open_container, video_stream
from ._frame import VideoFrame, convert_frame, frame_from_rgb

__all__ = ["Claim", "DecodeOptions", "Reconnect", "configure_threads", "decode_arrays",
           "decode_files", "decode_live", "decode_target", "replay"]

_log = logging.getLogger("xinfer_stream.video")


@dataclass(frozen=True)
class DecodeOptions:
    """What the decode loop produces: pixel ``format``, optional swscale resize (with
    ``interpolation``), codec threads and decoder options."""

    format: str = "rgb24"
    width: int | None = None
    height: int | None = None
    threads: int | None = None
    interpolation: str | None = None
    decoder_options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reconnect:
    """Retry budget for a live source that drops: exponential backoff between attempts.

    After ``attempts`` failed reopen attempts in a row the stream ends with
    :class:`BrokenStreamError`. A frame decoded after a reconnect resets the count.
    """

    attempts: int = 5
    initial_delay: float = 0.5
    max_delay: float = 8.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the ``attempt``-th (1-based) reopen."""
        return float(min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1)))


def configure_threads(stream: av.video.stream.VideoStream, threads: int | None) -> None:
    """Codec threading: ``None`` lets FFmpeg pick (frame+slice, one per core), 1 disables it."""
    if threads is not None and threads <= 1:
        stream.thread_type = "NONE"
        stream.codec_context.thread_count = 1
        return
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = 0 if threads is None else threads


# Called once a frame: (seconds spent decoding and converting it, whether the device's decoder
# decoded it: a codec context opened with hardware acceleration).
OnDecoded = Callable[[float, bool], None]


def _frames_of(container: av.container.InputContainer, target: Target, options: DecodeOptions,
               stop: threading.Event, first_index: int, on_decoded: OnDecoded
               ) -> Iterator[VideoFrame]:
    """Every frame of ``container`` (which the caller closes), indexed from ``first_index``."""
    stream = video_stream(container, target)
    configure_threads(stream, options.threads)
    if options.decoder_options:
        stream.codec_context.options = dict(options.decoder_options)
    on_device = bool(stream.codec_context.is_hwaccel)
    index = first_index
    last_time: float | None = None
    try:
        for packet in container.demux(stream):
            if stop.is_set():
                return
            started = time.perf_counter()
            # The final packet PyAV yields is empty: decoding it drains the decoder.
            for av_frame in packet.decode():
                decoded_at = time.perf_counter()
                frame = convert_frame(av_frame, source=target.id, index=index,
                                      fmt=options.format, width=options.width,
                                      height=options.height, decoded_at=decoded_at,
                                      interpolation=options.interpolation)
                on_decoded(time.perf_counter() - started, on_device)
                yield frame
                started = time.perf_counter()
                last_time = frame.pts
                index += 1
    except av.error.FFmpegError as exc:
        where = "before its first frame" if index == first_index else (
            f"after frame {index - 1}" + (f" ({last_time:.3f} s)" if last_time is not None else ""))
        if target.kind != "file" and isinstance(exc, av.error.ExitError):
            # FFmpeg's interrupt callback fired: our read timeout, not damaged data.
            raise VideoError(
                f"no data from {target.id!r} within the read timeout {where}; check the camera "
                "or the network, or pass a longer timeout=(open_s, read_s)") from exc
        advice = ("the file is damaged or truncated from there on (frames before it were "
                  "delivered); re-copy or re-encode it") if target.kind == "file" else (
                  "the stream broke off (frames before it were delivered); check the "
                  "connection and the camera or server")
        raise VideoError(f"decoding {target.id!r} failed {where}: FFmpeg reported "
                         f"{type(exc).__name__}: {exc.strerror!r}; {advice}") from exc
    truncated, indexed, present = is_file_truncated(target, stream)
    if truncated:
        raise VideoError(
            f"decoding {target.id!r} stopped after frame {index - 1}: the file is truncated (its "
            f"index refers to {indexed} bytes, the file has {present}); frames before the cut "
            f"were delivered; copy or download the file again")


Claim = Callable[[], "av.container.InputContainer | None"]


def decode_target(target: Target, claim: Claim, open_options: OpenOptions,
                  options: DecodeOptions, stop: threading.Event, on_decoded: OnDecoded
                  ) -> Iterator[VideoFrame]:
    """Every frame of one file, then close it.

    ``claim()`` hands over a container opened in advance (or ``None``: open it here); taking it
    inside the generator body means whoever opened it keeps owning it until decoding starts.
    """
    container = claim() or open_container(target, open_options)
    count = 0
    try:
        for frame in _frames_of(container, target, options, stop, 0, on_decoded):
            count += 1
            yield frame
    finally:
        container.close()
    if count == 0 and not stop.is_set():
        raise VideoError(
            f"decoding {target.id!r} produced no frames: its video stream holds no decodable "
            f"frame (or, over HTTP, the server ignored a seek); check the file plays")


def decode_live(target: Target, claim: Claim, open_options: OpenOptions, options: DecodeOptions, stop: threading.Event,
                on_decoded: OnDecoded, reconnect: Reconnect | None,
                on_outage: Callable[[float, bool], None]) -> Iterator[VideoFrame]:
    """Frames of a live source; when it drops, reopen with backoff per ``reconnect``.

    ``on_outage(seconds, reconnected)`` reports each outage. Indices keep counting across
    reconnects. Without ``reconnect`` the first drop ends the stream (with the read error, if
    any). When the budget is spent: :class:`BrokenStreamError` chained to the last failure.
    """
    index = 0
    failures = 0
    container = claim()
    while True:
        if container is None:
            container = open_container(target, open_options)
        ended: BaseException | None = None
        start_index = index
        try:
            for frame in _frames_of(container, target, options, stop, index, on_decoded):
                index = frame.index + 1
                yield frame
        except VideoError as exc:
            ended = exc
        finally:
            container.close()
            container = None
        if stop.is_set():
            return
        if reconnect is None:
            if ended is not None:
                raise ended
            return
        if index > start_index:
            failures = 0
        outage_started = time.monotonic()
        _log.warning("live source %r dropped (%s); reconnecting", target.id,
                     ended if ended is not None else "end of stream")
        last: BaseException | None = ended
        while container is None:
            failures += 1
            if failures > reconnect.attempts:
                on_outage(time.monotonic() - outage_started, False)
                raise BrokenStreamError(
                    f"live source {target.id!r} dropped and did not come back after "
                    f"{reconnect.attempts} reconnect attempts over "
                    f"{time.monotonic() - outage_started:.1f} s; check the camera or server, or "
                    f"allow more with reconnect=Reconnect(attempts=...)") from last
            if stop.wait(reconnect.delay(failures)):
                return
            try:
                container = open_container(target, open_options)
            except VideoError as exc:
                last = exc
                _log.info("reconnect %d/%d to %r failed: %s", failures, reconnect.attempts,
                          target.id, exc)
        on_outage(time.monotonic() - outage_started, True)


def decode_files(targets: list[Target], claim: Claim, open_options: OpenOptions,
                 options: DecodeOptions, stop: threading.Event, on_decoded: OnDecoded
                 ) -> Iterator[VideoFrame]:
    """Every frame of each file in turn; ``claim`` gives the first file's container."""
    for i, target in enumerate(targets):
        if stop.is_set():
            return
        first: Claim = claim if i == 0 else _nothing
        yield from decode_target(target, first, open_options, options, stop, on_decoded)


def _nothing() -> None:
    return None


def decode_arrays(frames: Iterable[object], options: DecodeOptions, stop: threading.Event,
                  on_decoded: OnDecoded) -> Iterator[VideoFrame]:
    """Wrap user RGB arrays as frames of source ``"<frames>"`` (pts unknown: ``None``)."""
    iterator = iter(frames)
    index = 0
    while not stop.is_set():
        started = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            raise VideoError(f"reading frame {index} from the frames iterable failed: "
                             f"{type(exc).__name__}: {exc}; fix the iterable passed to "
                             f"open_source") from exc
        if not (isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[2] == 3
                and item.dtype == np.uint8):
            found = (f"{item.dtype} array of shape {item.shape}" if isinstance(item, np.ndarray)
                     else type(item).__name__)
            raise InvalidVideoError(f"frame {index} from the frames iterable is a {found!r}; "
                                    f"pass RGB uint8 arrays of shape (H, W, 3)")
        frame = frame_from_rgb(item, source="<frames>", index=index, fmt=options.format,
                               width=options.width, height=options.height,
                               interpolation=options.interpolation)
        on_decoded(time.perf_counter() - started, False)
        yield frame
        index += 1


_DEFAULT_STEP = 1 / 30  # seconds between frames when the file's timestamps do not say


def replay(passes: Callable[[int], Iterator[VideoFrame]], *, realtime: bool, loop: bool,
           stop: threading.Event) -> Iterator[VideoFrame]:
    """Frames of a file source delivered as a camera would: ``passes(n)`` gives the frames of
    the ``n``-th play of the file(s) (a generator this closes on every path).

    ``realtime``: each frame is held until its time on the clock (first frame at once, the
    rest at their pts distance from it), and its ``decoded_at`` is that due time, so a frame the
    decoder delivered late counts its lateness as latency, as a camera's would. ``loop``: when the
    files end they play again, forever (until stopped), with ``index`` and ``pts`` continuing
    across plays, so results look like one endless camera. Waits on ``stop`` (never sleeps past
    a close).
    """
    started: float | None = None
    offset = 0.0   # timeline seconds at the start of this play
    index = 0
    play = 0
    while not stop.is_set():
        first_pts: float | None = None
        t = offset
        step = _DEFAULT_STEP
        count = 0
        with contextlib.closing(passes(play)) as frames:  # type: ignore[type-var]
            for frame in frames:
                if frame.pts is not None:
                    if first_pts is None:
                        first_pts = frame.pts
                    at = offset + frame.pts - first_pts
                    if count and at > t:
                        step = at - t
                    t = max(t, at) if count else at  # unreordered B-frames: never back
                elif count:
                    t += step
                count += 1
                if realtime:
                    now = time.perf_counter()
                    if started is None:
                        started = now - t
                    due = started + t
                    if due > now and stop.wait(due - now):
                        frame.release()
                        return
                    frame = dataclasses.replace(frame, decoded_at=due)
                if loop:
                    frame = dataclasses.replace(frame, index=index, pts=t)
                index += 1
                yield frame
        if not loop or count == 0:
            return
        offset = t + step
        play += 1
