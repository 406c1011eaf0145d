"""``ResultStream``: one source streamed through one engine, as an async context manager and an
async iterator.

Threads and ownership (CPU path)::

    decode thread (owned by the FrameSource) --bounded queue--> inference thread (owned here)
    inference thread: preprocess (numpy reference) -> backend.run -> postprocess -> Result
    inference thread --bounded queue + loop.call_soon_threadsafe(wake)--> your ``async for``

The event loop never blocks: it only takes finished results off a queue, woken once per burst
of results (a wake already scheduled covers the results put before it runs). Both queues are
bounded, so a slow consumer backpressures decoding (policy ``every``) or makes the source drop
stale frames (policy ``latest``). Under ``latest`` the result queue holds one result, replaced by a newer one
the consumer has not taken (a drop too), so the consumer gets the freshest result, never a
backlog. Leaving the ``async for`` early, cancelling the task, or an error anywhere
ends with :meth:`ResultStream.aclose`, which stops and joins both threads and closes the source,
also when cancelled itself. Errors from any stage reach the consumer with their cause chained.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .._errors import ClosedResourceError, InferenceError, XInferError
from ..preprocess import Preprocess, preprocess_frame
from ._postprocess import apply_postprocess
from ._result import LatencySummary, Result, StreamStatistics

if TYPE_CHECKING:
    from ..engines import Backend
    from ..video import FrameSource, VideoFrame
    from ._gpu import FrameBuffers, GpuRunner, GpuTimings

__all__ = ["ResultStream"]

_POLL = 0.05          # how often blocked threads re-check the stop flag, seconds
_WINDOW = 10_000      # latency samples kept per stage
_JOIN_TIMEOUT = 10.0  # a stage that does not stop within this is reported, not waited on forever


@dataclass(frozen=True)
class _Ready:
    result: Result
    ready_at: float


@dataclass(frozen=True)
class _End:
    pass


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class _Stages:
    """Bounded latency windows, written by the inference thread, read by ``statistics()``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue_wait: deque[float] = deque(maxlen=_WINDOW)
        self.preprocess: deque[float] = deque(maxlen=_WINDOW)
        self.inference: deque[float] = deque(maxlen=_WINDOW)
        self.end_to_end: deque[float] = deque(maxlen=_WINDOW)
        self.delivery: deque[float] = deque(maxlen=_WINDOW)
        self.frames = 0
        self.timestamp_regressions = 0
        self.stale = 0  # results replaced unseen by a newer one (policy "latest")
        self.first_ready: float | None = None
        self.last_ready: float | None = None


class ResultStream:
    """Results of one source, in frame order. Obtain one from ``engine.stream(source)``.

    Use it as ``async with engine.stream(src) as results: async for r in results: ...``; a bare
    ``async for r in engine.stream(src)`` also works and closes the stream when the loop ends or
    breaks (the iterator closes itself on exhaustion; on ``break``, the ``async with`` form is the
    one that releases threads immediately).
    """

    def __init__(self, *, backend: Backend, preprocess: Preprocess, input_name: str,
                 source_factory: Callable[[], FrameSource], postprocess: Callable[[Mapping[str, npt.NDArray[np.generic]]], Any] | None,
                 batch: int, queue_size: int, on_close: Callable[[ResultStream], None],
                 _token: object, gpu: Callable[[], GpuRunner] | None = None,
                 frame_buffers: FrameBuffers | None = None) -> None:
        if _token is not _CONSTRUCT:
            raise TypeError("ResultStream has no public constructor: use engine.stream(source)")
        self._backend = backend
        self._preprocess = preprocess
        self._input_name = input_name
        self._source_factory = source_factory
        self._postprocess = postprocess
        self._batch = batch
        # GPU path: made on the worker thread, closed by _shutdown (see runtime/_gpu.py).
        self._gpu_factory = gpu
        self._runner: GpuRunner | None = None
        # GPU path with copy_on="decoder": pinned buffers the decode thread copies frames into
        # (lent through the source's plane_allocator); every frame is released once the GPU has
        # read it, and this closes last (_shutdown).
        self._frame_buffers = frame_buffers
        self._results: queue.Queue[_Ready | _End | _Failure] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._stages = _Stages()
        self._last_pts: dict[str, float] = {}  # per source, read and written by the worker only
        self._on_close = on_close
        self._source: FrameSource | None = None
        self._worker: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._started_at: float | None = None
        self._finished = False
        self._closed = False
        self._shutdown_lock = threading.Lock()
        self._shutdown_done = False
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._latest = False  # the source's policy is "latest": keep only the newest result
        # A wake is scheduled on the loop and has not run yet: items put meanwhile need no
        # wake of their own (one call_soon_threadsafe per burst, not per result).
        self._wake_pending = False

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Open the source (in a thread: opening a network source can block) and start decoding."""
        if self._closed:
            raise ClosedResourceError("this stream is closed; call engine.stream() again")
        if self._worker is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        source = await asyncio.to_thread(self._open_source)
        if source is None:
            raise ClosedResourceError("the stream was closed while its source was opening")
        if source.policy == "latest":  # known only now: live sources default to it
            self._latest = True
            self._results = queue.Queue(maxsize=1)
        self._started_at = time.perf_counter()
        self._worker = threading.Thread(target=self._run_worker, name="xinfer-infer", daemon=True)
        self._finalizer = weakref.finalize(self, _emergency_stop, self._stop, source)
        self._worker.start()

    def _open_source(self) -> FrameSource | None:
        """Open the source in a worker thread. If the stream was closed (or its opener
        cancelled) meanwhile, the source is closed here, so it can never be orphaned."""
        source = self._source_factory()
        with self._shutdown_lock:
            if not self._closed:
                self._source = source
                return source
        source.close()
        return None

    async def aclose(self) -> None:
        """Stop decoding and inference, join both threads, close the source. Idempotent; releases
        everything even when the calling task is cancelled meanwhile."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        try:
            await asyncio.shield(asyncio.to_thread(self._shutdown))
        except asyncio.CancelledError:
            self._shutdown()  # finish the release here; the threads are already told to stop
            raise
        finally:
            self._on_close(self)

    def _release(self) -> None:
        """Close from the calling thread, blocking until everything is released: the engine's
        ``aclose()`` uses it for the streams it had not reached when it was cancelled."""
        self._closed = True
        self._stop.set()
        try:
            self._shutdown()
        finally:
            self._on_close(self)

    async def __aenter__(self) -> ResultStream:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_worker", None) is not None:
            warnings.warn(f"{self!r} was never closed; use 'async with engine.stream(...)'",
                          ResourceWarning, stacklevel=1)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._worker else "new")
        return f"<ResultStream {state} frames={self._stages.frames}>"

    # -- iteration --------------------------------------------------------------------------
    def __aiter__(self) -> ResultStream:
        return self

    async def __anext__(self) -> Result:
        if self._finished:
            raise StopAsyncIteration
        if self._closed:
            raise ClosedResourceError("this stream is closed; call engine.stream() again")
        if self._worker is None:
            try:
                await self.start()
            except BaseException:
                await self.aclose()
                raise
        assert self._ready is not None
        while True:
            try:
                item = self._results.get_nowait()
            except queue.Empty:
                self._ready.clear()
                if self._results.empty():
                    await self._ready.wait()
                continue
            break
        if isinstance(item, _Ready):
            with self._stages.lock:
                self._stages.delivery.append(time.perf_counter() - item.ready_at)
            return item.result
        self._finished = True
        await self.aclose()
        if isinstance(item, _Failure):
            raise item.error
        raise StopAsyncIteration

    # -- statistics -------------------------------------------------------------------------
    def statistics(self) -> StreamStatistics:
        st = self._stages
        buffers = self._frame_buffers
        src = self._source.statistics() if self._source is not None else None
        with st.lock:
            frames = st.frames
            span = ((st.last_ready - st.first_ready) if st.first_ready is not None
                    and st.last_ready is not None else 0.0)
            elapsed = (time.perf_counter() - self._started_at) if self._started_at else 0.0
            fps = (frames - 1) / span if frames > 1 and span > 0 else 0.0
            return StreamStatistics(
                frames=frames,
                drops=(int(getattr(src, "drops", 0)) if src is not None else 0) + st.stale,
                elapsed=elapsed,
                fps=fps,
                queue_wait=LatencySummary.of(st.queue_wait),
                preprocess=LatencySummary.of(st.preprocess),
                inference=LatencySummary.of(st.inference),
                end_to_end=LatencySummary.of(st.end_to_end),
                delivery=LatencySummary.of(st.delivery),
                timestamp_regressions=st.timestamp_regressions,
                extra={"backend": self._backend.kind, "batch": self._batch,
                       "source": src,
                       "gpu": self._runner.statistics() if self._runner is not None else None,
                       "pinned_frames": buffers.lent if buffers is not None else None,
                       "pinned_misses": buffers.misses if buffers is not None else None},
            )

    # -- the inference thread ---------------------------------------------------------------
    def _run_worker(self) -> None:
        assert self._source is not None
        try:
            if self._gpu_factory is not None:
                self._runner = self._gpu_factory()
            while not self._stop.is_set():
                frames = self._next_frames()
                if frames is None:
                    break
                if frames and self._runner is not None:
                    # Results arrive on the runner's waiter thread, through _emit_gpu (or
                    # _fail_gpu); either releases the frames.
                    try:
                        self._runner.submit(frames, self._emit_gpu, self._fail_gpu)
                    except BaseException:
                        _release(frames)  # not accepted: still ours
                        raise
                elif frames:
                    for result in self._infer(frames):
                        if not self._post(result):
                            return
            else:
                return
            if self._runner is not None:
                self._runner.drain()
            self._post(_End())
        except XInferError as exc:
            self._post(_Failure(exc))
        except Exception as exc:  # noqa: BLE001 - a bug or a user postprocess: hand it over, chained
            err = InferenceError(f"the inference thread failed: {type(exc).__name__}: {exc}")
            err.__cause__ = exc
            self._post(_Failure(err))

    def _next_frames(self) -> list[VideoFrame] | None:
        """Up to ``batch`` frames; [] when nothing arrived yet; None at the end of the source."""
        assert self._source is not None
        frames: list[VideoFrame] = []
        while len(frames) < self._batch and not self._stop.is_set():
            try:
                frame = self._source.get(timeout=_POLL)
            except TimeoutError:
                if frames:
                    break  # a live source: don't hold a partial batch back
                continue
            except BaseException:
                _release(frames)  # the source failed mid-batch: nobody will use these
                raise
            if frame is None:
                return frames or None
            self._check_timestamp(frame)
            frames.append(frame)
        return frames

    def _check_timestamp(self, frame: VideoFrame) -> None:
        if frame.pts is None:
            return
        last = self._last_pts.get(frame.source)
        if last is not None and frame.index > 0 and frame.pts < last:
            with self._stages.lock:
                self._stages.timestamp_regressions += 1
        self._last_pts[frame.source] = frame.pts

    def _infer(self, frames: list[VideoFrame]) -> list[_Ready]:
        picked = time.perf_counter()
        batch = np.stack([preprocess_frame(self._preprocess, f.image) for f in frames])
        preprocessed = time.perf_counter()
        outputs = self._backend.run({self._input_name: batch})
        ran = time.perf_counter()
        n = len(frames)
        return [self._result(frame, outputs, i, picked=picked,
                             preprocess=(preprocessed - picked) / n, inference=(ran - preprocessed) / n)
                for i, frame in enumerate(frames)]

    def _result(self, frame: VideoFrame, outputs: Mapping[str, npt.NDArray[np.generic]], i: int, *,
                picked: float, preprocess: float, inference: float) -> _Ready:
        """Frame ``i`` of a batch's outputs as a Result (postprocessed), its stages recorded.
        ``preprocess``/``inference`` are this frame's share of the batch's time."""
        mine = {name: value[i:i + 1] for name, value in outputs.items()}
        prediction = (apply_postprocess(self._postprocess, mine, backend=self._backend,
                                        preprocess=self._preprocess,
                                        frame_size=(frame.height, frame.width))
                      if self._postprocess is not None else None)
        ready = time.perf_counter()
        result = Result(frame_index=frame.index, pts=frame.pts, outputs=mine,
                        latency=ready - frame.decoded_at, source=frame.source,
                        prediction=prediction)
        with self._stages.lock:
            st = self._stages
            st.queue_wait.append(picked - frame.decoded_at)
            st.preprocess.append(preprocess)
            st.inference.append(inference)
            st.end_to_end.append(ready - frame.decoded_at)
            st.frames += 1
            st.first_ready = st.first_ready if st.first_ready is not None else ready
            st.last_ready = ready
        return _Ready(result, ready)

    def _emit_gpu(self, frames: Sequence[VideoFrame], outputs: Mapping[str, npt.NDArray[np.generic]],
                  timings: GpuTimings) -> bool:
        """The GPU runner's completion callback (waiter thread): one Result per frame, in order.
        The GPU is done with the frames' pixels (outputs are copies): they are released here."""
        _release(frames)
        n = len(frames)
        picked = timings.submitted_at - timings.enqueue - timings.pack
        for i, frame in enumerate(frames):
            # preprocess: host time to pack and enqueue; inference: GPU time, from events.
            ready = self._result(frame, outputs, i, picked=picked,
                                 preprocess=(timings.pack + timings.enqueue) / n,
                                 inference=timings.compute / n)
            if not self._post(ready):
                return False
        return True

    def _fail_gpu(self, frames: Sequence[VideoFrame], error: BaseException) -> None:
        """The runner could not complete this batch (waiter thread): give the frames back. The
        error itself reaches this stream's worker from its next submit or drain."""
        _release(frames)

    def _post(self, item: _Ready | _End | _Failure) -> bool:
        """Hand one item to the loop, waiting (bounded) while the consumer is behind."""
        while not self._stop.is_set():
            try:
                if self._latest and isinstance(item, _Ready):
                    self._put_newest(item)
                else:
                    self._results.put(item, timeout=_POLL)
            except queue.Full:
                continue
            if self._wake_pending:
                return True  # the loop has yet to run the wake that will show it this item too
            self._wake_pending = True
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return False
            return True
        return False

    def _put_newest(self, item: _Ready) -> None:
        """Policy ``latest``: a result the consumer has not taken is stale once a newer one is
        ready, so replace it and count it as a drop. Only this thread puts results."""
        try:
            self._results.put_nowait(item)
            return
        except queue.Full:
            pass
        try:
            self._results.get_nowait()
        except queue.Empty:
            pass  # the consumer took it meanwhile
        else:
            with self._stages.lock:
                self._stages.stale += 1
        self._results.put_nowait(item)

    def _wake(self) -> None:
        # Cleared before the event is set: an item put after this line schedules a wake of its
        # own, and one put before it is in the queue when the consumer looks (no lost wake-up).
        self._wake_pending = False
        if self._ready is not None:
            self._ready.set()

    # -- shutdown ---------------------------------------------------------------------------
    def _shutdown(self) -> None:
        with self._shutdown_lock:
            if self._shutdown_done:
                return
            self._stop.set()
            worker = self._worker
            if worker is not None:
                deadline = time.monotonic() + _JOIN_TIMEOUT
                while worker.is_alive() and time.monotonic() < deadline:
                    _drain(self._results)
                    worker.join(timeout=_POLL)
                if worker.is_alive():
                    raise InferenceError(
                        f"the inference thread did not stop within {_JOIN_TIMEOUT:.0f} s "
                        "(a backend call is hanging)")
            _drain(self._results)
            try:
                if self._runner is not None:
                    self._runner.close()  # every batch emitted or failed: its frames released
            finally:
                try:
                    if self._source is not None:
                        self._source.close()  # queued frames released
                finally:
                    if self._frame_buffers is not None:
                        self._frame_buffers.close()  # last: no frame is out any more
            if self._finalizer is not None:
                self._finalizer.detach()
            self._shutdown_done = True


_CONSTRUCT = object()


def _release(frames: Sequence[VideoFrame]) -> None:
    """Give back lent pixel memory (frames decoded into the GPU path's pinned buffers)."""
    for frame in frames:
        frame.release()


def _drain(q: queue.Queue[Any]) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _emergency_stop(stop: threading.Event, source: FrameSource) -> None:
    """Safety net for a stream collected while open: stop the threads, close the source."""
    stop.set()
    source.close()
