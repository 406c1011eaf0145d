"""``MultiStream``: many cameras through one engine, batched across cameras under a latency bound.

Threads and ownership::

    camera thread ``xinfer-camera:NAME`` (one a camera, while it opens): opens its source (a
        FrameSource, with its own decode thread) and posts "opened"; from then on the source's
        decode thread hands each frame straight to the batcher (``FrameSource.deliver_to``), and
        at the end or on a failure posts a marker, never an exception that could end the others
    batcher (no thread: one condition shared by the cameras and the dispatcher): a queue per
        camera (policy ``every``: bounded, the camera waits; ``latest``: one frame, replaced and
        counted as a drop); ``take()`` hands out up to ``max_batch`` frames, oldest first across
        cameras, once the batch is full or the oldest frame has waited ``max_wait``
    dispatcher thread ``xinfer-dispatch``: one engine call a batch. CPU backends: the numpy
        preprocess of each frame (any size), stacked, ``backend.run``. GPU backends: the frames
        of each layout (format and size: the fused kernel reads one layout a launch) go to that
        layout's GpuRunner (two slots), which pads the batch up to its bucket (1, 2, 4, ... up
        to ``max_batch``, see :func:`batch_buckets`) and replays the slot's graph for that
        bucket: every batch is one graph replay, with two execution contexts a layout (a
        TensorRT engine with a dynamic batch needs an optimization profile for each)
    results thread ``xinfer-results``: takes batches in dispatch order (so each camera's results
        keep frame order), waits for each to complete, runs your ``postprocess`` per frame,
        records per-camera statistics and hands Results and CameraEvents to your ``async for``

Events travel with the frames: a camera's markers sit in its queue behind its frames, so the
:class:`CameraEvent` saying it ended comes after its last :class:`Result`. The iterator yields
both; ``isinstance(item, CameraEvent)`` tells them apart. A separate channel for events could not
keep that order, and a consumer would have to watch two things.

Every hand-off is bounded: a slow consumer backpressures the results thread, the dispatcher and
then the cameras (``every`` waits, ``latest`` drops). ``aclose()`` (also on ``break``, cancel or
an exception in the body, through ``async with``) closes the batcher and every source, joins
every thread, waits for the GPU work in flight and frees it, also when cancelled itself.
An engine failure (the one model every camera shares) ends the whole stream with the error;
anything that goes wrong with one camera is that camera's event.

Decoding runs on each camera's FrameSource: a decode thread in this process (PyAV releases
the GIL while decoding), or with ``Camera(..., options={"process": True})`` a worker process
writing into a shared-memory ring the source owns (video/_process.py), whose receiving thread
then hands frames to the batcher; the :class:`_CameraSink` is the seam either way. On a GPU
backend the ring is registered as page-locked memory once, when it is made
(``open_source(..., pin_memory=)``), and the GPU copies each frame's window from it by DMA:
this process's work for such a frame is a copy call a plane, not a copy of its pixels. Frames
decoded in this process are packed into a GPU slot's staging by the dispatcher.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .._errors import ClosedResourceError, InferenceError, XInferError
from .._handoff import Handoff
from .._lifecycle import NoPublicConstructor, leak_net
from ..preprocess import Preprocess, preprocess_frame
from ._batcher import Batcher, Camera, CameraEvent, CameraFeed, CameraStatistics, Entry
from ._bridge import LoopStream
from ._postprocess import frame_result
from ._result import GpuStatistics, LatencySummary, Result

if TYPE_CHECKING:
    from ..engines import Backend
    from ..video import FrameSource, Reconnect, VideoFrame
    from ._gpu_runner import GpuRunner, GpuTimings

__all__ = ["MultiStatistics", "MultiStream", "batch_buckets"]

_WINDOW = 10_000      # latency samples kept per camera
_JOIN_TIMEOUT = 15.0  # a camera opening a URL may need its open timeout (10 s) to notice a stop
_POLICIES = ("every", "latest")

Postprocess = Callable[[Mapping[str, npt.NDArray[np.generic]]], Any]


@dataclass(frozen=True)
class MultiStatistics:
    """A snapshot of a :class:`MultiStream`.

    ``batches``: engine calls; ``full_batches``: those dispatched because ``max_batch`` frames were
    waiting, or a frame of every camera; ``timed_out_batches``: those dispatched because the oldest
    frame had waited ``max_wait``; ``batch_sizes``: frames a batch -> batches of that size;
    ``engine``: seconds a batch spent in the engine call (CPU) or on the GPU (events), recent 10,000
    batches; ``cameras``: per camera, by name (removed cameras leave); ``gpu``: per GPU runner (one
    a frame layout), empty on CPU backends.
    """

    frames: int
    batches: int
    full_batches: int
    timed_out_batches: int
    batch_sizes: Mapping[int, int]
    engine: LatencySummary
    max_batch: int
    max_wait: float
    cameras: Mapping[str, CameraStatistics]
    gpu: tuple[GpuStatistics, ...]


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes the GPU path captures a CUDA graph for: powers of two below ``max_batch``,
    then ``max_batch``. A batch of n frames runs at the smallest bucket >= n, padded: less than
    half of a batch is padding (GPU time only: padding rows are neither packed nor read back),
    and a slot holds log2(max_batch) + 1 graphs, not max_batch (a graph per size costs a
    capture and, for PyTorch, a private memory pool, for sizes seldom seen)."""
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch)
    return tuple(sizes)


# -- a dispatched batch -----------------------------------------------------------------------
class _Pending:
    """One dispatched batch on its way to the results thread; ``done`` once its outputs (one
    row per frame, in ``frames`` order) are in, or ``error``. Parts: GPU runner calls left."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self._framed = [e for e in entries if e.frame is not None]  # row i: self._framed[i]
        self.frames = [e.frame for e in entries if e.frame is not None]
        self.outputs: dict[str, npt.NDArray[np.generic]] = {}
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.parts = 0
        self.engine_time = 0.0
        self.lock = threading.Lock()

    def let_go_of_pixels(self, rows: Sequence[int], *, read: bool = False) -> list[VideoFrame]:
        """Keep only what the results need of host frames ``rows`` (index, pts, times), once
        their pixels were read (CPU) or copied into a slot's staging (GPU): a frame decoded in
        a worker process holds a slot of its ring while it lives. A camera that wants images
        (its ``Result.image``) keeps a copy of the planes instead, for the results thread to
        convert (a copy of 1.5 bytes a pixel here; the conversion to RGB stays off this
        thread). Frames the GPU reads where they are stay whole until it has (``read``: the
        batch's emit): NVDEC's (which emit releases) and those of a registered ring
        (``pinned``), which then let go of their pixels too, unless their camera wants images
        (those keep their ring slot until their results are made). Returns the frames of
        ``rows`` as they are now."""
        for i in rows:
            entry = self._framed[i]
            frame = entry.frame
            assert frame is not None
            if frame.device is not None or not frame.planes:
                continue
            if frame.pinned:
                if read and not entry.camera.spec.images:
                    entry.frame = self.frames[i] = frame.with_planes(())
                continue
            entry.frame = self.frames[i] = (
                frame.with_planes(tuple(p.copy() for p in frame.planes))
                if entry.camera.spec.images else frame.with_planes(()))
        return [self.frames[i] for i in rows]

    def fill(self, rows: Sequence[int], outputs: Mapping[str, npt.NDArray[np.generic]],
             seconds: float) -> None:
        n = len(self.frames)
        with self.lock:
            if self.parts == 1 and not self.outputs and len(rows) == n:
                # The whole batch in one part (rows 0..n-1 in order): its outputs as they are
                # (the runner's and the engine's outputs are the callee's own).
                self.outputs = {name: value[:n] for name, value in outputs.items()}
            else:
                for name, value in outputs.items():
                    out = self.outputs.get(name)
                    if out is None:
                        out = self.outputs[name] = np.empty((n, *value.shape[1:]), value.dtype)
                    out[list(rows)] = value[:len(rows)]
            self.engine_time += seconds
            self.parts -= 1
            finished = self.parts == 0
        if finished:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = error
        self.done.set()


# -- the stream -------------------------------------------------------------------------------
class MultiStream(LoopStream[Result | CameraEvent], metaclass=NoPublicConstructor):
    """Results of many cameras through one engine. Obtain one from ``engine.stream_many()``.

    ``async with engine.stream_many({"door": "rtsp://...", "yard": "yard.mp4"}) as items:
    async for item in items:`` yields :class:`Result` (``item.camera`` names its camera; each
    camera's results in its frame order) and :class:`CameraEvent`. :meth:`add` and
    :meth:`remove` change the cameras while it runs; :meth:`statistics` reads per-camera
    counters at any time. With ``end_when_idle`` (the default) the iteration ends once every
    camera has ended, failed or been removed.
    """

    _made_by = "engine.stream_many(sources)"
    _closed_message = "this multi-camera stream is closed"

    def __init__(self, *, backend: Backend, preprocess: Preprocess, input_name: str,
                 open_frames: Callable[[Camera], FrameSource], postprocess: Postprocess | None,
                 max_batch: int, max_wait: float, queue_size: int, end_when_idle: bool,
                 default_policy: str | None, default_reconnect: Reconnect | bool | None,
                 on_close: Callable[[MultiStream], None],
                 gpu: Callable[[], GpuRunner] | None, default_images: bool = False) -> None:
        self._backend = backend
        self._default_images = default_images
        self._preprocess = preprocess
        self._input_name = input_name
        self._open_frames = open_frames
        self._postprocess = postprocess
        self._max_batch = max_batch
        self._queue_size = queue_size
        self._default_policy = default_policy
        self._default_reconnect = default_reconnect
        self._on_close = on_close
        self._gpu_factory = gpu
        self._runners: dict[tuple[object, ...], GpuRunner] = {}
        self._closed_runners: tuple[GpuStatistics, ...] = ()  # their last statistics
        self._batcher = Batcher(max_batch, max_wait, end_when_idle)
        # Dispatched batches in dispatch order; bounded: a slow results thread holds up dispatch.
        self._pending: Handoff[_Pending] = Handoff("every", 8)
        # With their camera: a result of a camera removed meanwhile is skipped on the way out.
        self._results: Handoff[tuple[CameraFeed, Result | CameraEvent]] = Handoff(
            "every", queue_size * 8)
        self._cameras: dict[str, CameraFeed] = {}
        self._all_cameras: list[CameraFeed] = []  # for shutdown: removed ones too
        self._lock = threading.Lock()  # guards _cameras / _all_cameras against the threads
        self._stop = threading.Event()
        self._draining = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._wake_pending = False
        self._finished = False
        self._closed = False
        self._started = False
        self._shutdown_lock = threading.Lock()
        self._shutdown_done = False
        self._finalizer: Any = None
        self._stats_lock = threading.Lock()
        self._frames = 0
        self._batches = 0
        self._batch_sizes: dict[int, int] = {}
        self._engine_times: deque[float] = deque(maxlen=_WINDOW)

    # -- cameras ------------------------------------------------------------------------------
    def add(self, name: str, source: Any, *, policy: str | None = None,
            reconnect: Reconnect | bool | None = None, **options: Any) -> None:
        """Add a camera (before or while streaming). ``source`` is anything ``engine.stream``
        takes, or a :class:`Camera` (then the keyword arguments must be left out). ``policy``
        and ``reconnect`` default to the stream's; ``options`` go to ``open_source``. It opens
        on a thread of its own: a :class:`CameraEvent` says ``"opened"`` or ``"failed"``.
        Raises ``ValueError`` for a name already streaming (remove it first)."""
        if isinstance(source, Camera):
            if policy is not None or reconnect is not None or options:
                raise ValueError(f"camera {name!r}: give policy/reconnect/options inside the "
                                 "Camera, or pass a plain source with them, not both")
            spec = source
        else:
            spec = Camera(source, policy, self._default_reconnect if reconnect is None
                          else reconnect, dict(options))
        if spec.policy is None and self._default_policy is not None:
            spec = dataclasses.replace(spec, policy=self._default_policy)
        if spec.images is None:
            spec = dataclasses.replace(spec, images=self._default_images)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a camera name is a non-empty str, got {name!r}")
        if spec.policy is not None and spec.policy not in _POLICIES:
            raise ValueError(f"camera {name!r}: policy must be 'every' or 'latest', got "
                             f"{spec.policy!r}")
        if self._closed or self._draining:
            raise ClosedResourceError("this multi-camera stream is "
                                      + ("closed" if self._closed else "draining"))
        with self._lock:
            if name in self._cameras:
                raise ValueError(f"a camera named {name!r} is already in this stream; "
                                 "remove() it first, or pick another name")
            camera = CameraFeed(name, spec, self._open_frames, self._queue_size)
            self._batcher.attach(camera)
            self._cameras[name] = camera
            self._all_cameras.append(camera)
        if self._started:
            self._start_camera(camera)

    async def remove(self, name: str) -> None:
        """Stop a camera and close its source (off the loop); its frames not yet dispatched
        are dropped and results of it still in flight are not delivered; a ``"removed"``
        :class:`CameraEvent` follows. Frames of other cameras are never lost. Raises
        ``ValueError`` for an unknown name."""
        with self._lock:
            camera = self._cameras.pop(name, None)
            if camera is None:
                known = ", ".join(map(repr, sorted(self._cameras))) or "none"
                raise ValueError(f"no camera named {name!r} in this stream (cameras: {known})")
            camera.removed = True
        camera.stop.set()
        if not self._batcher.mark(camera, CameraEvent(name, "removed"), clear=True):
            with camera.lock:  # it had ended already: nothing will emit the event
                camera.state = "removed"
        await asyncio.shield(asyncio.to_thread(self._stop_camera, camera))

    async def drain(self) -> None:
        """Take no new frame, and deliver every frame already taken: each camera's source is
        closed (its thread ends after the frame it holds, off the loop), every frame already
        handed to the batcher is still batched, inferred and delivered, each camera then
        yields ``"ended"``, and the iteration ends once all have. For a clean stop (a
        service's SIGTERM): keep iterating after it to receive the rest. Frames still inside
        a source (decoded, not yet taken) are discarded with it. :meth:`add` is refused from
        now on. Idempotent."""
        if self._closed or self._draining:
            return
        self._draining = True
        self._batcher.end_when_empty()
        with self._lock:
            cameras = list(self._cameras.values())
        for camera in cameras:
            camera.draining.set()
        await asyncio.shield(asyncio.to_thread(_close_sources, cameras))

    @property
    def cameras(self) -> tuple[str, ...]:
        """Names of the cameras in the stream (ended ones too, until removed)."""
        with self._lock:
            return tuple(self._cameras)

    def _start_camera(self, camera: CameraFeed) -> None:
        camera.thread = threading.Thread(target=self._run_camera, args=(camera,),
                                         name=f"xinfer-camera:{camera.name}", daemon=True)
        camera.thread.start()

    def _stop_camera(self, camera: CameraFeed) -> None:
        camera.stop.set()
        camera.close_source()
        thread = camera.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                raise InferenceError(f"camera {camera.name!r} did not stop within "
                                     f"{_JOIN_TIMEOUT:.0f} s (its source is hanging in FFmpeg)")
        camera.close_source()  # one it opened while being stopped

    def _run_camera(self, camera: CameraFeed) -> None:
        """The camera's thread: open its source, post "opened", then leave the frames to the
        source's decode thread, which hands each to the batcher and posts the camera's end
        (:class:`_CameraSink`): no thread between decoding and the batcher."""
        batcher = self._batcher
        event: CameraEvent | None = None
        try:
            source = camera.open_frames(camera.spec)
            with camera.lock:
                stopped = camera.stop.is_set()
                if not stopped:
                    camera.source = source
                    camera.policy = source.policy
                    camera.state = "running"
            if stopped:
                source.close()
                return
            batcher.mark(camera, CameraEvent(camera.name, "opened"))
            if camera.draining.is_set():  # drained while it opened: drain() missed this source
                source.close()
            source.deliver_to(_CameraSink(batcher, camera))
        except ClosedResourceError as exc:  # closed before it decoded a frame
            if camera.draining.is_set() and not camera.stop.is_set():
                event = CameraEvent(camera.name, "ended")
            elif not camera.stop.is_set():  # closed by someone else: only this camera's end
                event = CameraEvent(camera.name, "failed", exc)
        except Exception as exc:  # noqa: BLE001 - this camera's failure, for the consumer to see
            event = CameraEvent(camera.name, "failed", exc)
        finally:
            if event is not None:
                batcher.mark(camera, event)

    # -- lifecycle (aclose, async with, async for: LoopStream) -------------------------------
    @property
    def _running(self) -> bool:
        return self._started

    async def start(self) -> None:
        """Start the cameras and the dispatch and results threads (idempotent)."""
        if self._closed:
            raise ClosedResourceError("this multi-camera stream is closed; call "
                                      "engine.stream_many() again")
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._threads = [
            threading.Thread(target=self._run_dispatch, name="xinfer-dispatch", daemon=True),
            threading.Thread(target=self._run_results, name="xinfer-results", daemon=True)]
        self._finalizer = leak_net(self, "MultiStream (use 'async with engine.stream_many(...)')",
                                   _emergency_stop, self._stop, self._batcher, self._pending,
                                   self._results, self._all_cameras)
        self._started = True
        for thread in self._threads:
            thread.start()
        with self._lock:
            cameras = list(self._cameras.values())
        for camera in cameras:
            self._start_camera(camera)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._started else "new")
        return f"<MultiStream {state} cameras={len(self._cameras)} frames={self._frames}>"

    # -- iteration ----------------------------------------------------------------------------
    async def _next_ready(self, ready: asyncio.Event) -> Result | CameraEvent | None:
        while True:
            item: tuple[CameraFeed, Result | CameraEvent] | None = await self._take(ready)
            if item is None:
                return None
            camera, value = item
            if isinstance(value, Result) and camera.removed:
                continue  # removed after this result was made: remove() promised no more
            return value

    # -- statistics ---------------------------------------------------------------------------
    def statistics(self) -> MultiStatistics:
        with self._lock:
            cameras = {name: cam.statistics() for name, cam in self._cameras.items()}
        gpu = (tuple(r.statistics() for r in list(self._runners.values()))
               or self._closed_runners)
        with self._stats_lock:
            return MultiStatistics(
                frames=self._frames, batches=self._batches,
                full_batches=self._batcher.full_batches,
                timed_out_batches=self._batcher.timed_out_batches,
                batch_sizes=dict(sorted(self._batch_sizes.items())),
                engine=LatencySummary.of(self._engine_times), max_batch=self._max_batch,
                max_wait=self._batcher.max_wait, cameras=cameras, gpu=gpu)

    # -- the dispatch thread ------------------------------------------------------------------
    def _run_dispatch(self) -> None:
        try:
            while (entries := self._batcher.take()) is not None:
                pending = _Pending(entries)
                if pending.frames:
                    self._dispatch(pending)
                else:
                    pending.done.set()
                if not self._pending.put(pending):
                    return  # closing; a GPU batch's frames are released by its emit or fail
            self._pending.finish()
        except BaseException as exc:  # noqa: BLE001 - the engine failed: the whole stream ends
            if isinstance(exc, ClosedResourceError) and self._stop.is_set():
                self._pending.finish()
                return
            self._pending.finish(_as_inference_error(exc, "the dispatch thread failed"))

    def _dispatch(self, pending: _Pending) -> None:
        frames = pending.frames
        with self._stats_lock:
            self._batches += 1
            self._batch_sizes[len(frames)] = self._batch_sizes.get(len(frames), 0) + 1
        if self._gpu_factory is None:
            started = time.perf_counter()
            batch = np.stack([preprocess_frame(self._preprocess, f.image) for f in frames])
            outputs = self._backend.run({self._input_name: batch})
            pending.let_go_of_pixels(range(len(frames)))
            pending.parts = 1
            pending.fill(range(len(frames)), outputs, time.perf_counter() - started)
            return
        # Frames of one layout go together, each group to that layout's runner, which pads it
        # up to its bucket and replays the bucket's graph.
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, frame in enumerate(frames):
            kind: tuple[object, ...] = (frame.format, frame.height, frame.width,
                                        frame.colorspace, frame.color_range,
                                        frame.device is not None)
            groups.setdefault(kind, []).append(i)
        pending.parts = len(groups)
        unsent = [[frames[i] for i in rows] for rows in groups.values()]
        try:
            for kind, rows in groups.items():
                group = unsent[0]
                runner = self._runner(kind, group[0])

                def emit(_: Sequence[Any], outputs: Mapping[str, npt.NDArray[np.generic]],
                         timings: GpuTimings, rows: list[int] = rows,
                         group: list[Any] = group) -> None:
                    _release(group)
                    # The GPU has copied a registered ring's frames: their slots go back now,
                    # not once the results are made.
                    group[:] = pending.let_go_of_pixels(rows, read=True)
                    pending.fill(rows, outputs, timings.compute)

                def fail(_: Sequence[Any], error: BaseException, group: list[Any] = group
                         ) -> None:
                    _release(group)
                    pending.fail(error)

                runner.submit(group, emit, fail)
                unsent.pop(0)  # the runner's now: released by emit or fail
                # Their windows are in the slot's staging now: the runner keeps of host frames
                # only what emit or fail reads, so a frame decoded in a worker process gives its
                # ring slot back here, not once the GPU is done (an exhausted ring sends frames
                # through the pipe instead, a copy of the whole frame in each process).
                group[:] = pending.let_go_of_pixels(rows)
        except BaseException:
            for group in unsent:  # not accepted: still ours (NVDEC frames hold GPU memory)
                _release(group)
            raise

    def _runner(self, kind: tuple[object, ...], frame: VideoFrame) -> GpuRunner:
        """The GPU runner for frames of ``kind`` (made on first use, on this thread: its
        submits happen here). One a layout: a runner re-plans its upload when the layout
        changes, and its graphs are captured for one layout.

        A new runner captures every bucket's graph in each slot at once, on ``frame`` (its
        outputs dropped): one pause when a layout first appears, instead of a capture stalling
        every camera each time the load first reaches a batch size. A capture that fails here
        (another thread's CUDA work, such as an NVDEC decoder starting, can invalidate it) is
        retried by the runner later, when a batch of that size comes after the retry delay."""
        runner = self._runners.get(kind)
        if runner is None:
            assert self._gpu_factory is not None
            runner = self._runners[kind] = self._gpu_factory()
            for bucket in batch_buckets(self._max_batch):
                for _ in range(runner.slots):
                    runner.submit([frame] * bucket, _ignore)
            runner.drain()
        return runner

    # -- the results thread -------------------------------------------------------------------
    def _run_results(self) -> None:
        error: BaseException | None = None
        try:
            while (pending := self._pending.get()) is not None:
                # Set by the engine call (CPU) or the GPU runners' waiters, which complete
                # every accepted batch; the timeout only notices a stop while the GPU is busy.
                while not pending.done.wait(0.5):
                    if self._stop.is_set():
                        return
                if pending.error is not None:
                    raise pending.error
                if not self._deliver(pending):
                    return
        except XInferError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - a user postprocess or a bug: hand it over
            error = _as_inference_error(exc, "the postprocess failed")
        finally:
            if error is not None:
                self._pending.close()
                self._batcher.close()
        self._results.finish(error)
        self._wake_loop()

    def _deliver(self, pending: _Pending) -> bool:
        row = 0
        for entry in pending.entries:
            camera = entry.camera
            if entry.event is not None:
                self._record_event(camera, entry.event)
                if not self._post(camera, entry.event):
                    return False
                continue
            frame = entry.frame
            assert frame is not None
            i, row = row, row + 1
            if camera.removed:
                continue
            result = frame_result(self._postprocess, pending.outputs, i, len(pending.frames),
                                  frame, backend=self._backend, preprocess=self._preprocess,
                                  camera=camera.name, image=bool(camera.spec.images))
            with camera.lock:
                camera.frames += 1
                camera.latency.append(result.latency)
            with self._stats_lock:  # counted before the consumer can see it (or an event after)
                self._frames += 1
            if not self._post(camera, result):
                return False
        if pending.frames:
            with self._stats_lock:
                self._engine_times.append(pending.engine_time)
        return True

    def _record_event(self, camera: CameraFeed, event: CameraEvent) -> None:
        with camera.lock:
            if event.kind == "opened":
                return
            camera.state = "failed" if event.kind == "failed" else event.kind
            camera.error = event.error
        if event.kind in ("ended", "failed"):
            camera.close_source()  # its decode thread is done: free the decoder now

    def _post(self, camera: CameraFeed, item: Result | CameraEvent) -> bool:
        return self._results.put((camera, item)) and self._wake_loop()

    # -- shutdown -----------------------------------------------------------------------------
    def _shutdown(self) -> None:
        with self._shutdown_lock:
            if self._shutdown_done:
                return
            with self._lock:
                cameras = list(self._all_cameras)
            # Every stage told at once; the sources are closed below, several at a time.
            _emergency_stop(self._stop, self._batcher, self._pending, self._results, [])
            for camera in cameras:
                camera.stop.set()
            errors: list[BaseException] = []
            try:
                errors += self._stop_cameras(cameras)
                for thread in self._threads:
                    thread.join(_JOIN_TIMEOUT)
                    if thread.is_alive():
                        errors.append(InferenceError(
                            f"the {thread.name} thread did not stop within {_JOIN_TIMEOUT:.0f} s "
                            "(a backend or postprocess call is hanging)"))
            finally:
                runners = list(self._runners.values())
                self._closed_runners = tuple(r.statistics() for r in runners)
                self._runners = {}
                for runner in runners:
                    runner.close()  # every batch emitted or failed: its frames released
            if self._finalizer is not None:
                self._finalizer.detach()
            self._shutdown_done = True
            if errors:
                raise errors[0]

    def _stop_cameras(self, cameras: list[CameraFeed]) -> list[BaseException]:
        """Stop every camera, closing their sources several at a time (a source decoded in a
        worker process takes a moment to end its process); the errors of those that hung."""
        errors: list[BaseException] = []

        def stop(camera: CameraFeed) -> None:
            try:
                self._stop_camera(camera)
            except InferenceError as exc:
                errors.append(exc)

        if len(cameras) <= 1:
            for camera in cameras:
                stop(camera)
            return errors
        with concurrent.futures.ThreadPoolExecutor(
                max_workers=min(16, len(cameras)), thread_name_prefix="xinfer-close") as pool:
            list(pool.map(stop, cameras))
        return errors


class _CameraSink:
    """Where a camera's source hands its frames (``FrameSource.deliver_to``), on its decode
    thread: into the batcher, and the end of its frames as the camera's event, behind them."""

    def __init__(self, batcher: Batcher, camera: CameraFeed) -> None:
        self._batcher = batcher
        self._camera = camera

    def put(self, frame: VideoFrame) -> bool:
        return self._batcher.put(self._camera, frame)

    def finish(self, error: BaseException | None) -> None:
        camera = self._camera
        if camera.stop.is_set():
            return  # removed, or the stream is closing: no event (removal posts its own)
        self._batcher.mark(camera, CameraEvent(camera.name, "ended") if error is None
                           else CameraEvent(camera.name, "failed", error))

    def close(self) -> None:
        self._batcher.source_closing(self._camera)


def _close_sources(cameras: list[CameraFeed]) -> None:
    for camera in cameras:
        camera.close_source()


def _ignore(*_: object) -> None:
    return None


def _release(frames: Sequence[VideoFrame]) -> None:
    for frame in frames:
        frame.release()


def _as_inference_error(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, XInferError):
        return exc
    err = InferenceError(f"{what}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _emergency_stop(stop: threading.Event, batcher: Batcher, pending: Handoff[Any],
                    results: Handoff[Any], cameras: list[CameraFeed]) -> None:
    """Stop every stage: tell the threads, close the batcher, the hand-offs and the sources."""
    stop.set()
    batcher.close()
    pending.close()
    results.close()
    for camera in list(cameras):
        camera.stop.set()
        source = camera.source
        if source is not None:
            source.close()
