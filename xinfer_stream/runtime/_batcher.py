"""The cameras of a :class:`~xinfer_stream.runtime.MultiStream` and the batcher they feed.

Public values: :class:`Camera` (what to open), :class:`CameraEvent` (what happened to it) and
:class:`CameraStatistics` (a snapshot). Private state: :class:`CameraFeed`, what one camera's
thread, the batcher and the results thread share; :class:`Batcher`, a queue per camera and the
rule that makes batches of them (oldest first; full, every camera in, or ``max_wait``). The
threads that drive them live in runtime/_many.py.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .._errors import ClosedResourceError
from ._result import LatencySummary

if TYPE_CHECKING:
    from ..video import FrameSource, Reconnect, SourceStatistics, VideoFrame

__all__ = ["Batcher", "Camera", "CameraEvent", "CameraFeed", "CameraState", "CameraStatistics",
           "Entry", "EventKind"]

_WINDOW = 10_000  # latency samples kept per camera

EventKind = Literal["opened", "ended", "failed", "removed"]
CameraState = Literal["opening", "running", "ended", "failed", "removed"]


@dataclass(frozen=True)
class Camera:
    """One camera of :meth:`StreamingEngine.stream_many`: a ``source`` (anything
    ``engine.stream`` takes) with its own live ``policy`` (``None``: ``"every"`` for files,
    ``"latest"`` for live sources), ``reconnect`` budget (see
    :class:`~xinfer_stream.video.Reconnect`) and further ``options`` for ``open_source``
    (e.g. ``realtime=True, loop=True`` to replay a file as a camera, or ``timeout=``).
    ``images``: whether its results carry the frame's RGB pixels (``Result.image``; ``None``:
    the stream's ``images``). ``decode``: ``"cpu"`` or ``"nvdec"`` for this camera (``None``: the
    stream's ``decode``), so one stream can decode some cameras on NVDEC and the rest on the CPU
    (e.g. ``options={"process": True}``) where either alone cannot keep up."""

    source: Any
    policy: str | None = None
    reconnect: Reconnect | bool | None = True
    options: Mapping[str, Any] = field(default_factory=dict)
    images: bool | None = None
    decode: str | None = None


@dataclass(frozen=True)
class CameraEvent:
    """Something that happened to one camera, in the same iterator as the results.

    ``kind``: ``"opened"`` (its source opened: results follow), ``"ended"`` (its source ended;
    no result of it follows), ``"failed"`` (it never opened, or broke: ``error`` says why; no
    result of it follows) or ``"removed"`` (you removed it; results of it still in flight were
    dropped). The other cameras go on in every case.
    """

    camera: str
    kind: EventKind
    error: BaseException | None = None


@dataclass(frozen=True)
class CameraStatistics:
    """A snapshot of one camera.

    ``frames``: results delivered; ``offered``: frames its source handed over; ``drops``: frames
    it lost to policy ``latest`` (replaced in its source or in the batcher before a batch took
    them); ``reconnects``: live-source drops survived; ``latency``: from the frame's arrival
    (``VideoFrame.decoded_at``: decoded, or due, for a paced file) to its result being ready,
    over its most recent 10,000 frames; ``source``: its source's statistics (``None`` before
    it opened).
    """

    camera: str
    state: CameraState
    frames: int
    offered: int
    drops: int
    reconnects: int
    latency: LatencySummary
    source: SourceStatistics | None
    error: BaseException | None = None


# -- one camera -------------------------------------------------------------------------------
class CameraFeed:
    """Everything about one camera the threads share. ``lock`` guards the counters."""

    def __init__(self, name: str, spec: Camera, open_frames: Callable[[Camera], FrameSource],
                 queue_size: int) -> None:
        self.name = name
        self.spec = spec
        self.open_frames = open_frames
        self.queue_size = queue_size
        self.policy = spec.policy  # resolved once the source is open
        self.state: CameraState = "opening"
        self.error: BaseException | None = None
        self.source: FrameSource | None = None
        self.stop = threading.Event()
        self.draining = threading.Event()  # MultiStream.drain(): end after the frames taken
        self.removed = False
        # Its source is closing: a put waiting for room gives up (guarded by the batcher's lock).
        self.closing = False
        self.queued = 0  # its frames in the batcher (guarded by the batcher's lock)
        # Signalled when the batcher takes its frames (made by the batcher, on its lock).
        self.space = threading.Condition()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.frames = 0
        self.offered = 0
        self.batcher_drops = 0
        self.latency: deque[float] = deque(maxlen=_WINDOW)
        self.last_source_stats: SourceStatistics | None = None

    def statistics(self) -> CameraStatistics:
        source = self.source
        src = source.statistics() if source is not None else self.last_source_stats
        with self.lock:
            return CameraStatistics(
                camera=self.name, state=self.state, frames=self.frames, offered=self.offered,
                drops=self.batcher_drops + (src.drops if src is not None else 0),
                reconnects=src.reconnects if src is not None else 0,
                latency=LatencySummary.of(self.latency), source=src, error=self.error)

    def close_source(self) -> None:
        source = self.source
        if source is not None:
            self.last_source_stats = source.statistics()
            source.close()


@dataclass
class Entry:
    """A frame (or an event marker) waiting in its camera's queue."""

    camera: CameraFeed
    arrival: float
    frame: VideoFrame | None = None
    event: CameraEvent | None = None


# -- the batcher ------------------------------------------------------------------------------
class Batcher:
    """Per-camera queues under one lock; oldest-first batches (see the module docstring).

    Two kinds of waiter share the lock, each on its own condition, so a hundred cameras do not
    wake each other: the dispatcher waits on ``_ready`` and is woken only when a put changes
    its decision (the first frame, a full batch, a frame older than the deadline it waits
    for, a marker); an ``every`` camera with a full queue waits on its own ``space``.
    """

    def __init__(self, max_batch: int, max_wait: float, end_when_idle: bool) -> None:
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.end_when_idle = end_when_idle
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._oldest = float("inf")  # arrival of the oldest frame the dispatcher waits on
        self._queues: dict[CameraFeed, deque[Entry]] = {}
        self._frames = 0    # frames queued, all cameras
        self._markers = 0   # event markers queued
        self._waiting = 0   # cameras with a frame queued
        self._closed = False
        self._ended = False
        self.full_batches = 0
        self.timed_out_batches = 0

    def attach(self, camera: CameraFeed) -> None:
        with self._lock:
            if self._closed or self._ended:
                raise ClosedResourceError("this multi-camera stream has ended or is closed; "
                                          "open a new one with engine.stream_many()")
            camera.space = threading.Condition(self._lock)
            self._queues[camera] = deque()

    def put(self, camera: CameraFeed, frame: VideoFrame) -> bool:
        """Queue a frame of ``camera`` (called on its source's decode thread); ``False`` (the
        frame still the caller's) once the camera was removed, its source is closing or the
        batcher closed. Waits while an ``every`` camera's queue is full."""
        replaced: VideoFrame | None = None
        with self._lock:
            queue = self._queues.get(camera)
            if camera.policy != "latest":
                while (queue is not None and not self._closed and not camera.removed
                       and not camera.closing and len(queue) >= camera.queue_size):
                    camera.space.wait()
            if self._closed or camera.removed or camera.closing or queue is None:
                return False
            if camera.policy == "latest" and queue and queue[-1].frame is not None:
                replaced = queue.pop().frame
                self._frames -= 1
                camera.queued -= 1
                with camera.lock:
                    camera.batcher_drops += 1
            queue.append(Entry(camera, frame.decoded_at, frame=frame))
            self._frames += 1
            self._waiting += camera.queued == 0
            camera.queued += 1
            with camera.lock:
                camera.offered += 1
            if (self._frames == 1 or self._frames >= self.max_batch
                    or self._waiting >= len(self._queues) or frame.decoded_at < self._oldest):
                self._ready.notify()
        if replaced is not None:
            replaced.release()
        return True

    def source_closing(self, camera: CameraFeed) -> None:
        """``camera``'s source is being closed: its put waiting for room gives up now, and
        later ones are refused (the frames it queued stay)."""
        with self._lock:
            camera.closing = True
            camera.space.notify_all()

    def mark(self, camera: CameraFeed, event: CameraEvent, *, clear: bool = False) -> bool:
        """Queue ``event`` behind the camera's frames (``clear``: instead of them, released).
        ``False`` if the camera is gone or the batcher closed."""
        dropped: list[Entry] = []
        with self._lock:
            queue = self._queues.get(camera)
            if queue is None or self._closed:
                return False
            if clear:
                dropped = [e for e in queue if e.frame is not None]
                self._frames -= len(dropped)
                self._waiting -= camera.queued > 0
                camera.queued = 0
                self._markers -= sum(1 for e in queue if e.event is not None)
                queue.clear()
            queue.append(Entry(camera, time.perf_counter(), event=event))
            self._markers += 1
            self._ready.notify()
            camera.space.notify_all()
        for entry in dropped:
            assert entry.frame is not None
            entry.frame.release()
        return True

    def take(self) -> list[Entry] | None:
        """The next batch (frames and markers, oldest first); ``None`` once closed, or once every
        camera has ended and ``end_when_idle``. Waits for a full batch (``max_batch`` frames,
        or a frame from every camera: waiting longer would only add a camera's next frame) or
        the oldest frame's deadline, whichever comes first: one camera alone never waits, and N
        cameras wait at most ``max_wait``. An event at the head of its camera's queue goes at
        once, in a batch of events only."""
        with self._lock:
            while True:
                self._oldest = float("inf")
                if self._closed:
                    return None
                if self._frames >= self.max_batch or (
                        self._frames and self._waiting >= len(self._queues)):
                    self.full_batches += 1
                    return self._take_locked()
                oldest = (min(q[0].arrival for q in self._queues.values() if q)
                          if self._frames else float("inf"))
                remaining = oldest + self.max_wait - time.perf_counter()
                if self._frames and remaining <= 0:
                    self.timed_out_batches += 1
                    return self._take_locked()
                if self._markers and any(q and q[0].event is not None
                                         for q in self._queues.values()):
                    # An event goes at once, alone: the frames keep waiting for their batch.
                    return self._take_markers_locked()
                if self.end_when_idle and not self._queues:
                    self._ended = True
                    return None
                if self._frames:
                    self._oldest = oldest
                    self._ready.wait(remaining)
                else:
                    self._ready.wait()

    def _take_locked(self) -> list[Entry]:
        heads = [(q[0].arrival, i, cam) for i, (cam, q) in enumerate(self._queues.items()) if q]
        heapq.heapify(heads)
        taken: list[Entry] = []
        frames = 0
        while heads and frames < self.max_batch:
            _, i, cam = heapq.heappop(heads)
            entry = self._pop(cam)
            taken.append(entry)
            frames += entry.frame is not None
            queue = self._queues.get(cam)
            if queue:
                heapq.heappush(heads, (queue[0].arrival, i, cam))
        return taken

    def _take_markers_locked(self) -> list[Entry]:
        """The events at the head of their camera's queue (none is behind a frame)."""
        taken: list[Entry] = []
        for cam, queue in list(self._queues.items()):
            while queue and queue[0].event is not None and cam in self._queues:
                taken.append(self._pop(cam))
        return taken

    def _pop(self, cam: CameraFeed) -> Entry:
        """The head of ``cam``'s queue, counted out; a camera leaves with its last event."""
        queue = self._queues[cam]
        entry = queue.popleft()
        if entry.frame is not None:
            self._frames -= 1
            cam.queued -= 1
            self._waiting -= cam.queued == 0
            cam.space.notify()
        else:
            self._markers -= 1
            assert entry.event is not None
            if entry.event.kind != "opened":  # the camera's last entry: it leaves
                del self._queues[cam]
        return entry

    def end_when_empty(self) -> None:
        """From now on, end (``take()`` returns ``None``) once every camera has left."""
        with self._lock:
            self.end_when_idle = True
            self._ready.notify()

    def close(self) -> None:
        """Wake everyone for good; queued frames are released."""
        with self._lock:
            self._closed = True
            queued = [e for q in self._queues.values() for e in q]
            for camera in self._queues:
                camera.space.notify_all()
            self._queues.clear()
            self._frames = self._markers = self._waiting = 0
            self._ready.notify_all()
        for entry in queued:
            if entry.frame is not None:
                entry.frame.release()
