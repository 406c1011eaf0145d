"""``open_source``: one decode thread per source, handing frames over a bounded queue.

Ownership: a :class:`FrameSource` owns one decode thread; the thread owns the container it is
decoding (one at a time, for a list of files) and closes it on every path. The consumer calls
:meth:`FrameSource.get` (blocking, with an optional timeout) from any one thread, or has the
decode thread hand it each frame (:meth:`FrameSource.deliver_to`); ``close()`` may
be called from any thread, any number of times: it sets the stop event, closes the queue (which
unblocks a decoder waiting on backpressure), joins the thread and closes containers that were
opened but never handed over. A source collected while open warns (``ResourceWarning``) and is
closed by a ``weakref.finalize`` safety net that holds only the worker, never the source.

A live source's thread can be inside a blocking network read when ``close()`` is called; the
read timeout (``timeout=(open_s, read_s)``) bounds how long ``close()`` then waits.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import av.container
import numpy as np

from .._errors import ClosedResourceError, InvalidVideoError
from .._handoff import Delivery, Handoff, Policy, Sink
from .._lifecycle import NoPublicConstructor, leak_net
from ._container import DEFAULT_URL_TIMEOUT, OpenOptions, Target, open_container, resolve_targets
from ._decode import (
    Claim,
    DecodeOptions,
    Reconnect,
    decode_arrays,
    decode_files,
    decode_live,
    decode_target,
    replay,
)
from ._frame import FRAME_FORMATS, INTERPOLATIONS, VideoFrame
from ._process import PinMemory, ProcessWorker, start_process_worker
from ._progress import Progress, ProgressCallback

__all__ = ["FrameSource", "SourceStatistics", "open_source"]

_POLICIES = ("every", "latest")


@dataclass(frozen=True)
class SourceStatistics:
    """A snapshot of a source's counters.

    ``frames_decoded``: frames the decode thread produced; ``frames_delivered``: frames
    ``get()`` returned; ``drops``: frames replaced unseen under the ``latest`` policy;
    ``queued``: frames waiting now; ``decode_seconds``: decode thread time spent decoding and
    converting; ``reconnects`` / ``outages`` / ``outage_seconds``: live-source drops survived,
    drops seen (including a final one not survived) and the time spent without a connection.
    ``frames_copied`` (``process=True`` only): frames the decoder process sent through its pipe,
    copied in both processes, because its shared-memory ring had no free slot (the consumer was
    behind, or keeps frames): a count that keeps growing means frames cost more than they should.
    ``frames_decoded_on_device``: of ``frames_decoded``, those the device's decoder decoded
    (``hwaccel``: NVDEC for ``"cuda"``), in this process or its decoder process; fewer than
    ``frames_decoded`` with ``hwaccel`` means decoding fell back to the CPU (the log says why).
    """

    frames_decoded: int
    frames_delivered: int
    drops: int
    queued: int
    decode_seconds: float
    reconnects: int
    outages: int
    outage_seconds: float
    frames_copied: int = 0
    frames_decoded_on_device: int = 0


class _Counters:
    """Written by the decode thread, read by ``statistics()``; guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.decoded = 0
        self.decoded_on_device = 0
        self.decode_seconds = 0.0
        self.reconnects = 0
        self.outages = 0
        self.outage_seconds = 0.0
        self.remote = (0, 0, 0.0)
        self.copied = 0

    def on_decoded(self, seconds: float, on_device: bool) -> None:
        with self.lock:
            self.decoded += 1
            self.decoded_on_device += on_device
            self.decode_seconds += seconds

    def on_copied(self) -> None:
        """A decoder process's frame came through the pipe, not the ring."""
        with self.lock:
            self.copied += 1

    def on_outage(self, seconds: float, reconnected: bool) -> None:
        with self.lock:
            self.outages += 1
            self.outage_seconds += seconds
            self.reconnects += int(reconnected)

    def on_remote(self, reconnects: int, outages: int, seconds: float) -> None:
        """What a decoder process's own live source survived (cumulative)."""
        with self.lock:
            self.remote = (reconnects, outages, seconds)


class _Worker:
    """Everything the decode thread touches; the source and its finalizer share it."""

    def __init__(self, frames: Iterator[VideoFrame], handoff: Handoff[VideoFrame],
                 stop: threading.Event, unowned: list[av.container.InputContainer],
                 name: str, progress: Progress | None) -> None:
        self.frames = frames
        self.handoff: Handoff[VideoFrame] | Delivery[VideoFrame] = handoff
        self.stop = stop
        # Containers opened by open_source and not yet taken by the decode loop.
        self.unowned = unowned
        self.progress = progress
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.ran = False  # the thread was started (it ends by finishing its handoff)
        self.lock = threading.Lock()

    def start(self) -> bool:
        """Start the decode thread (once); whether it runs or ran (``False``: shut down first)."""
        with self.lock:
            if not self.ran and not self.stop.is_set():
                self.ran = True
                self.thread.start()
            return self.ran

    def _main(self) -> None:
        error: BaseException | None = None
        try:
            with contextlib.closing(self.frames):  # type: ignore[type-var]
                for frame in self.frames:
                    if self.progress is not None:
                        self.progress.advance()
                    if not self.handoff.put(frame):
                        frame.release()  # nobody will take it: give back NVDEC's memory
                        break
        except Exception as exc:  # noqa: BLE001 (delivered to the consumer by get(), not swallowed)
            error = exc
        finally:
            if self.progress is not None:
                self.progress.close()
            self.handoff.finish(error)

    def shutdown(self) -> None:
        """Stop, unblock, join, and close what the thread never took; idempotent."""
        self.stop.set()
        self.handoff.close()
        with self.lock:
            ran = self.ran  # stop is set: no start() from now on
        if ran and self.thread is not threading.current_thread():
            self.thread.join()
        if not ran:
            # The decode loop never ran, so it owns nothing yet.
            with contextlib.suppress(Exception):
                self.frames.close()  # type: ignore[attr-defined]
        while self.unowned:
            self.unowned.pop().close()


class FrameSource(metaclass=NoPublicConstructor):
    """Frames from one source, decoded on a thread of their own; only :func:`open_source` makes one.

    Iterate it, or call :meth:`get`. Use it as a context manager (or call :meth:`close`): leaving
    early stops the decode thread and frees the decoder.
    """

    _made_by = "open_source(...)"

    def __init__(self, *, worker: _Worker | ProcessWorker, source: str, is_live: bool,
                 policy: str, fmt: str,
                 counters: _Counters) -> None:
        self._worker = worker
        self._counters = counters
        self.source = source
        self.is_live = is_live
        self.policy = policy
        self.format = fmt
        self._closed = False
        self._close_lock = threading.Lock()
        self._finalizer = leak_net(self, f"FrameSource for {source!r}", worker.shutdown)

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        """Start the decode thread (idempotent; :meth:`get` starts it too)."""
        if self._closed:
            raise ClosedResourceError(f"frame source {self.source!r} is closed")
        self._worker.start()

    def get(self, timeout: float | None = None) -> VideoFrame | None:
        """The next frame; ``None`` at the end of the stream.

        Blocks until a frame arrives; with ``timeout`` (seconds), raises ``TimeoutError`` when
        none did, so a caller can poll its own stop flag. A decoding failure is raised here (a
        ``VideoError`` chained to PyAV's error, or ``BrokenStreamError`` for a live source that
        never came back) after every frame decoded before it; later calls return ``None``.
        Raises ``ClosedResourceError`` once the source is closed, including when another thread
        closes it during the call.
        """
        if self._closed:
            raise ClosedResourceError(f"frame source {self.source!r} is closed; open it again")
        self._worker.start()
        frame = self._worker.handoff.get(timeout)
        if frame is None and self._closed:
            raise ClosedResourceError(f"frame source {self.source!r} was closed while waiting")
        return frame

    def __iter__(self) -> Iterator[VideoFrame]:
        while (frame := self.get()) is not None:
            yield frame

    def deliver_to(self, sink: Sink[VideoFrame]) -> None:
        """Have the decode thread hand each frame to ``sink.put`` as it is decoded, instead of
        queueing it for :meth:`get`, and the end to ``sink.finish(error)`` (``None`` at the
        end of the stream, or once ``put`` said stop); :meth:`close` calls ``sink.close()``
        first, so a ``put`` waiting for room must then give up. This starts decoding: call it
        once, before any :meth:`get` (which then refuses). Raises ``ClosedResourceError`` if
        the source was closed before decoding started (``finish`` is then never called).
        ``statistics()`` counts the frames the sink took as delivered."""
        if self._closed:
            raise ClosedResourceError(f"frame source {self.source!r} is closed")
        worker = self._worker
        if worker.ran or not isinstance(worker.handoff, Handoff):
            raise ValueError(f"frame source {self.source!r} has started handing out frames "
                             "already: deliver_to() comes first, once")
        worker.handoff = Delivery(sink)
        if not worker.start():
            raise ClosedResourceError(f"frame source {self.source!r} was closed before it "
                                      "started")

    def statistics(self) -> SourceStatistics:
        handoff = self._worker.handoff
        c = self._counters
        with c.lock:
            return SourceStatistics(
                frames_decoded=c.decoded, frames_delivered=handoff.gets, drops=handoff.drops,
                queued=len(handoff), decode_seconds=c.decode_seconds,
                reconnects=c.reconnects + c.remote[0], outages=c.outages + c.remote[1],
                outage_seconds=c.outage_seconds + c.remote[2], frames_copied=c.copied,
                frames_decoded_on_device=c.decoded_on_device)

    def close(self) -> None:
        """Stop decoding and release the thread and containers; safe to call twice, any thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer.detach()
        self._worker.shutdown()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("live" if self.is_live else "file")
        return f"<FrameSource {self.source!r} {self.format} policy={self.policy} {state}>"


def _check_size(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _is_live_http(container: av.container.InputContainer) -> bool:
    # An HTTP resource with a known duration is a file served over HTTP; without one, a stream.
    return container.duration is None


def open_source(source: Any, *, format: str = "rgb24", policy: str | None = None,
                queue_size: int = 4, threads: int | None = None, width: int | None = None,
                height: int | None = None, timeout: tuple[float, float] | None = None,
                hwaccel: str | None = None, reconnect: Reconnect | bool | None = True,
                live: bool | None = None, progress: ProgressCallback | None = None,
                interpolation: str | None = None, decoder_options: Mapping[str, str] | None = None,
                device_frames: bool = False, hwaccel_device: int | None = None,
                realtime: bool = False, loop: bool = False, process: bool = False,
                pin_memory: PinMemory | None = None, **options: str) -> FrameSource:
    """Open a video source for streaming; the caller owns (and must close) the result.

    ``source`` is a file path, a list of paths, a directory or glob (its videos in sorted
    order), a URL (``rtsp://``, ``http(s)://``, ``udp://``...), a camera device
    (``/dev/videoN``), or an iterable of RGB uint8 ``(H, W, 3)`` arrays (source id
    ``"<frames>"``). It is opened here, so a missing file, an empty file, something that is not a
    video, or a file with no video stream raises :class:`InvalidVideoError`, and an unreachable
    URL raises :class:`VideoError` within the open timeout. Several files play one after the
    other, ``index`` restarting at 0 for each.

    ``format``: ``"rgb24"``/``"bgr24"`` (packed, converted and optionally resized to
    ``width``x``height`` by swscale with ``interpolation``: ``"BILINEAR"`` by default,
    ``"AREA"`` or ``"FAST_BILINEAR"`` are cheaper for large downscales) or ``"yuv420p"``/``"nv12"`` (raw planes, the cheapest to
    upload). ``policy``: ``"every"`` (default for files: never drop, the decoder waits for the
    consumer) or ``"latest"`` (default for live sources: keep only the newest frame, count the
    drops). ``queue_size`` bounds the ``every`` queue. ``threads``: codec threads (``None``:
    FFmpeg picks one per core; ``1``: none).

    URL and device options: ``timeout=(open_s, read_s)`` (default ``(10, 5)``);
    ``reconnect``: a :class:`Reconnect` budget for live sources (``True``: the default budget;
    ``False``/``None``: the first drop ends the stream); ``live`` overrides live detection (an
    http(s) URL is live when it has no duration). RTSP uses TCP. Further ``**options`` go to
    FFmpeg's demuxer verbatim (e.g. ``rtsp_transport="udp"``, ``probesize="32"``);
    ``decoder_options`` go to the decoder (e.g. ``{"err_detect": "aggressive+explode"}`` to
    stop at the first damaged frame instead of concealing it).
    ``hwaccel``: an FFmpeg hardware device type (``"cuda"``, ``"vaapi"``...); decoding falls back
    to software, with the reason logged, where it is unavailable; ``hwaccel_device`` picks the
    device (an ordinal; ``None``: the default). ``device_frames=True`` (with ``hwaccel="cuda"``
    and ``format="nv12"``) keeps NVDEC's frames in GPU memory, for the GPU runtime: each frame's
    ``device`` says where its planes are, its ``planes`` are empty, and the consumer releases
    it (:meth:`VideoFrame.release`) once read. Frames the hardware cannot decode (software
    fallback) arrive as ordinary nv12 frames.

    Files as cameras: ``realtime=True`` delivers each frame at its own time (the file's frame
    rate, from its timestamps) rather than as fast as it decodes, with ``decoded_at`` set to the
    time it was due, so a late frame counts its lateness; ``loop=True`` plays the file(s) again
    when they end, forever, ``index`` and ``pts`` continuing. A paced source is still a file
    (``is_live`` is ``False``, policy ``every`` by default): pass ``policy="latest"`` to drop
    frames a slow consumer did not take in time, as a camera would.

    ``process=True`` decodes in a worker process instead of a thread of this one (see
    video/_process.py): demuxing, decoding, conversion and PyAV's per-frame Python leave this
    interpreter, and frames arrive as read-only views of shared memory this source owns (a
    frame keeps its slot until it is collected). A worker that dies is started again within
    the ``reconnect`` budget (a file resumes after the last frame delivered). Files, URLs and
    devices; not arrays. With ``hwaccel`` the worker decodes on the device (NVDEC for
    ``"cuda"``) and FFmpeg copies each frame to host memory, which the worker writes into the
    ring: the decoding leaves the host's cores too (not ``device_frames``: the frames cross
    processes in host memory). ``pin_memory`` (with
    ``process=True``; the GPU runtime passes its device's): called once as ``pin_memory(address,
    nbytes)`` to register the ring as page-locked memory, returning what unregisters it (called
    before the ring is unmapped); the ring's frames then say ``pinned=True``. ``progress``:
    called as ``progress(label, frames_decoded, total)`` while decoding files (``total`` 0 when
    the container does not say); this function draws nothing.
    """
    if format not in FRAME_FORMATS:
        raise ValueError(f"format must be one of {', '.join(FRAME_FORMATS)}, got {format!r}")
    if policy is not None and policy not in _POLICIES:
        raise ValueError(f"policy must be 'every' or 'latest', got {policy!r}")
    if not isinstance(queue_size, int) or queue_size < 1:
        raise ValueError(f"queue_size must be a positive int, got {queue_size!r}")
    _check_size("width", width)
    _check_size("height", height)
    if (width is None) != (height is None):
        raise ValueError(f"give both width and height to resize, or neither (got width={width!r}, "
                         f"height={height!r})")
    if device_frames:
        _check_device_frames(hwaccel, format, width)
    if hwaccel_device is not None and (not isinstance(hwaccel_device, int) or hwaccel_device < 0):
        raise ValueError(f"hwaccel_device must be a device ordinal (an int from 0), got "
                         f"{hwaccel_device!r}")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                         f"{interpolation!r}")
    budget: Reconnect | None = Reconnect() if reconnect is True else (reconnect or None)
    if pin_memory is not None and not process:
        raise ValueError("pin_memory= registers the shared memory a decoder process writes "
                         "frames into: it needs process=True")
    if process:
        if device_frames or progress:
            raise ValueError("process=True hands frames over in host memory from a worker "
                             "process: drop device_frames= and progress=")
        if resolve_targets(source) is None:
            raise ValueError("process=True decodes files, URLs and devices in a worker "
                             "process; an iterable of arrays is decoded already")
        stop = threading.Event()
        counters = _Counters()
        worker_options: dict[str, Any] = dict(
            format=format, threads=threads, width=width, height=height, timeout=timeout,
            reconnect=reconnect, live=live, interpolation=interpolation,
            decoder_options=dict(decoder_options or {}), realtime=realtime, loop=loop,
            hwaccel=hwaccel, hwaccel_device=hwaccel_device, **options)
        proc = start_process_worker(source, worker_options, policy, queue_size, stop, budget,
                                    counters.on_decoded, counters.on_outage, counters.on_remote,
                                    counters.on_copied, pin_memory)
        return FrameSource._create(worker=proc, source=proc.source_id, is_live=proc.is_live,
                                   policy=proc.policy or "every", fmt=format, counters=counters)
    decode_options = DecodeOptions(format=format, width=width, height=height, threads=threads,
                                   interpolation=interpolation,
                                   decoder_options=dict(decoder_options or {}))
    stop = threading.Event()
    counters = _Counters()
    # Containers opened here (to fail early) until the decode loop claims them.
    unowned: list[av.container.InputContainer] = []
    bar: Progress | None = None
    targets = resolve_targets(source)
    if (realtime or loop) and (targets is None or (len(targets) == 1
                                                   and targets[0].kind != "file")):
        raise ValueError(f"realtime= and loop= replay files as cameras; {source!r} is not a "
                         "file (a live source keeps its own pace, arrays have no frame rate)")
    if targets is None:
        _check_frames(source)
        if device_frames:
            raise ValueError("device_frames=True keeps what NVDEC decodes on the GPU; an "
                             "iterable of arrays is decoded already: drop device_frames")
        source_id, is_live = "<frames>", bool(live)
        frames = decode_arrays(source, decode_options, stop, counters.on_decoded)
    elif len(targets) == 1 and targets[0].kind != "file":
        target = targets[0]
        open_options = _stream_open_options(target, timeout, options, OpenOptions(
            hwaccel=hwaccel, hwaccel_device=hwaccel_device, device_frames=device_frames))
        unowned.append(open_container(target, open_options))
        source_id = target.id
        is_live = live if live is not None else (
            target.live_by_nature or _is_live_http(unowned[0]))
        if is_live:
            frames = decode_live(target, _claimer(unowned), open_options, decode_options, stop,
                                 counters.on_decoded, budget, counters.on_outage)
        else:
            frames = decode_target(target, _claimer(unowned), open_options, decode_options, stop,
                                   counters.on_decoded)
    else:
        open_options = OpenOptions(timeout=timeout, ffmpeg_options=dict(options), hwaccel=hwaccel,
                                   hwaccel_device=hwaccel_device, device_frames=device_frames)
        total = _open_files(targets, open_options, unowned)
        source_id = targets[0].id if len(targets) == 1 else f"{targets[0].id} (+{len(targets) - 1})"
        is_live = bool(live)
        if realtime or loop:
            first = _claimer(unowned)

            def play(n: int) -> Iterator[VideoFrame]:
                # The containers opened here serve the first play; later plays reopen.
                return decode_files(targets, first if n == 0 else _no_container, open_options,
                                    decode_options, stop, counters.on_decoded)
            frames = replay(play, realtime=realtime, loop=loop, stop=stop)
        else:
            frames = decode_files(targets, _claimer(unowned), open_options, decode_options, stop,
                                  counters.on_decoded)
        if progress is not None:
            bar = Progress(total or None, os.path.basename(targets[0].id), progress)
    chosen = policy or ("latest" if is_live else "every")
    handoff: Handoff[VideoFrame] = Handoff(cast(Policy, chosen), queue_size,
                                           on_discard=VideoFrame.release)
    worker = _Worker(frames, handoff, stop, unowned, f"xinfer-decode:{source_id}", bar)
    return FrameSource._create(worker=worker, source=source_id, is_live=is_live, policy=chosen,
                               fmt=format, counters=counters)


def _check_frames(source: Any) -> None:
    """What can be checked of a frames iterable without consuming it."""
    if not isinstance(source, Iterable):
        raise InvalidVideoError(
            f"cannot open {source!r} as a video source: pass a path, a URL, a device, a list "
            f"of paths, or an iterable of RGB uint8 (H, W, 3) arrays")
    if isinstance(source, np.ndarray) and (source.ndim != 4 or source.shape[-1] != 3
                                           or source.dtype != np.uint8):
        raise InvalidVideoError(
            f"cannot use a {source.dtype} array of shape {source.shape} as frames; pass RGB "
            f"uint8 frames stacked as (N, H, W, 3)")


def _check_device_frames(hwaccel: str | None, fmt: str, width: int | None) -> None:
    if hwaccel != "cuda":
        raise ValueError(f"device_frames=True keeps NVDEC's frames on the GPU: it needs "
                         f"hwaccel='cuda', got hwaccel={hwaccel!r}")
    if fmt != "nv12":
        raise ValueError(f"frames kept on the GPU are nv12, as NVDEC decodes them: pass "
                         f"format='nv12' with device_frames=True, not {fmt!r}")
    if width is not None:
        raise ValueError("frames kept on the GPU keep their decoded size: resize on the GPU "
                         "(the preprocess does), not with width/height")


def _stream_open_options(target: Target, timeout: tuple[float, float] | None,
                         options: dict[str, str], hardware: OpenOptions) -> OpenOptions:
    """Low-latency defaults for URLs and devices; the caller's ``options`` win. ``hardware``
    says how to decode (its hwaccel fields are kept)."""
    ffmpeg_options = dict(options)
    if target.scheme in ("rtsp", "rtsps"):
        ffmpeg_options.setdefault("rtsp_transport", "tcp")
    if target.live_by_nature:
        # Not for http(s), which may serve a file: there nobuffer makes FFmpeg drop an mp4's
        # packets (0 frames, no error).
        ffmpeg_options.setdefault("fflags", "nobuffer")
    ffmpeg_options.setdefault("flags", "low_delay")
    ffmpeg_options.setdefault("analyzeduration", "1000000")  # 1 s of probing, not 5
    return OpenOptions(timeout=timeout or DEFAULT_URL_TIMEOUT, ffmpeg_options=ffmpeg_options,
                       hwaccel=hardware.hwaccel, hwaccel_device=hardware.hwaccel_device,
                       device_frames=hardware.device_frames)


def _open_files(targets: list[Target], options: OpenOptions,
                unowned: list[av.container.InputContainer]) -> int:
    """Open every file now (bad ones fail here); keep the first open. Returns the frame total
    the headers claim (for the progress bar only: headers may lie)."""
    total = 0
    try:
        for i, target in enumerate(targets):
            container = open_container(target, options)
            total += container.streams.video[0].frames
            if i == 0:
                unowned.append(container)
            else:
                container.close()  # probed; reopened by the decode thread when its turn comes
    except BaseException:
        while unowned:
            unowned.pop().close()
        raise
    return total


def _no_container() -> av.container.InputContainer | None:
    return None


def _claimer(unowned: list[av.container.InputContainer]) -> Claim:
    """Hand the container opened by open_source to the decode loop when it starts running."""
    def claim() -> av.container.InputContainer | None:
        return unowned.pop() if unowned else None
    return claim
