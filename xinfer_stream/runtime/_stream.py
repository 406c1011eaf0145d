"""``ResultStream``: one source streamed through one engine, as an async context manager and an
async iterator.

Threads and ownership::

    decode thread (the FrameSource's) --bounded hand-off--> worker thread ``xinfer-infer``
    worker, CPU backends: preprocess (numpy reference) -> backend.run
    worker, GPU backends: pack + enqueue into a slot (GpuRunner); the runner's waiter thread
            completes the batch and frees its slot
    --bounded hand-off--> results thread ``xinfer-results``: your ``postprocess`` -> Result
    --bounded hand-off + loop.call_soon_threadsafe(wake)--> your ``async for``

Your ``postprocess`` runs on the results thread, for every backend, one frame at a time in frame
order; it never holds GPU resources (the batch's slot is free before its outputs reach it) and
may take as long as it needs: the bounded hand-offs turn a slow postprocess into backpressure.

The event loop never blocks: it only takes finished results off a hand-off, woken once per burst
of results (a wake already scheduled covers the results put before it runs). Every hand-off is
bounded, so a slow consumer backpressures decoding (policy ``every``) or makes the source drop
stale frames (policy ``latest``). Under ``latest`` the result hand-off holds one result, replaced
by a newer one the consumer has not taken (a drop too), so the consumer gets the freshest result,
never a backlog. Blocked threads wake on the hand-offs' conditions, never by polling. Leaving the
``async for`` early, cancelling the task, or an error anywhere ends with
:meth:`ResultStream.aclose`, which closes the hand-offs and the source (waking every thread),
joins the threads, waits for the GPU work in flight and frees it, also when cancelled itself.
Errors from any stage reach the consumer with their cause chained.
"""

from __future__ import annotations

import asyncio
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
from ._bridge import LoopStream
from ._postprocess import frame_result
from ._result import LatencySummary, Result, StreamStatistics

if TYPE_CHECKING:
    from ..engines import Backend
    from ..video import FrameSource, VideoFrame
    from ._gpu_runner import GpuRunner, GpuTimings

__all__ = ["ResultStream"]

_WINDOW = 10_000      # latency samples kept per stage
_JOIN_TIMEOUT = 10.0  # a stage that does not stop within this is reported, not waited on forever

Postprocess = Callable[[Mapping[str, npt.NDArray[np.generic]]], Any]


@dataclass(frozen=True)
class _Batch:
    """One batch's outputs on their way to the results thread, with its per-frame stage times."""

    frames: Sequence[VideoFrame]
    outputs: Mapping[str, npt.NDArray[np.generic]]
    picked: float
    preprocess: float
    inference: float


@dataclass(frozen=True)
class _Ready:
    result: Result
    ready_at: float


class _Stages:
    """Bounded latency windows, written by the results thread, read by ``statistics()``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue_wait: deque[float] = deque(maxlen=_WINDOW)
        self.preprocess: deque[float] = deque(maxlen=_WINDOW)
        self.inference: deque[float] = deque(maxlen=_WINDOW)
        self.end_to_end: deque[float] = deque(maxlen=_WINDOW)
        self.delivery: deque[float] = deque(maxlen=_WINDOW)
        self.frames = 0
        self.timestamp_regressions = 0
        self.first_ready: float | None = None
        self.last_ready: float | None = None


class ResultStream(LoopStream[Result], metaclass=NoPublicConstructor):
    """Results of one source, in frame order. Obtain one from ``engine.stream(source)``.

    Use it as ``async with engine.stream(src) as results: async for r in results: ...``; a bare
    ``async for r in engine.stream(src)`` also works and closes the stream when the loop ends or
    breaks (the iterator closes itself on exhaustion; on ``break``, the ``async with`` form is the
    one that releases threads immediately).
    """

    _made_by = "engine.stream(source)"
    _closed_message = "this stream is closed; call engine.stream() again"

    def __init__(self, *, backend: Backend, preprocess: Preprocess, input_name: str,
                 source_factory: Callable[[], FrameSource], postprocess: Postprocess | None,
                 batch: int, queue_size: int, on_close: Callable[[ResultStream], None],
                 gpu: Callable[[], GpuRunner] | None = None) -> None:
        self._backend = backend
        self._preprocess = preprocess
        self._input_name = input_name
        self._source_factory = source_factory
        self._postprocess = postprocess
        self._batch = batch
        self._queue_size = queue_size
        # GPU path: made on the worker thread, closed by _shutdown (see runtime/_gpu_runner.py).
        self._gpu_factory = gpu
        self._runner: GpuRunner | None = None
        self._batches: Handoff[_Batch] = Handoff("every", 1)
        self._results: Handoff[_Ready] = Handoff("every", queue_size)
        self._stop = threading.Event()
        self._stages = _Stages()
        self._last_pts: dict[str, float] = {}  # per source, read and written by the worker only
        self._on_close = on_close
        self._source: FrameSource | None = None
        self._threads: list[threading.Thread] = []
        # What the leak net closes: the source, then the runner once the worker made it.
        self._owned: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._started_at: float | None = None
        self._finished = False
        self._closed = False
        self._shutdown_lock = threading.Lock()
        self._shutdown_done = False
        self._finalizer: Any = None
        self._wake_pending = False

    # -- lifecycle (aclose, async with, async for: LoopStream) -----------------------------
    @property
    def _running(self) -> bool:
        return bool(self._threads)

    async def start(self) -> None:
        """Open the source (in a thread: opening a network source can block) and start decoding."""
        if self._closed:
            raise ClosedResourceError(self._closed_message)
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        source = await asyncio.to_thread(self._open_source)
        if source is None:
            raise ClosedResourceError("the stream was closed while its source was opening")
        if source.policy == "latest":  # known only now: live sources default to it
            self._results = Handoff("latest", 1)
        self._started_at = time.perf_counter()
        self._threads = [threading.Thread(target=self._run_worker, name="xinfer-infer", daemon=True),
                         threading.Thread(target=self._run_results, name="xinfer-results",
                                          daemon=True)]
        self._owned.append(source)
        self._finalizer = leak_net(self, "ResultStream (use 'async with engine.stream(...)')",
                                   _emergency_stop, self._stop, self._batches, self._results,
                                   self._owned)
        for thread in self._threads:
            thread.start()

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

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._threads else "new")
        return f"<ResultStream {state} frames={self._stages.frames}>"

    # -- iteration --------------------------------------------------------------------------
    async def _next_ready(self, ready: asyncio.Event) -> Result | None:
        """The next result, ``None`` at the end; raises the error that ended the stream."""
        item: _Ready | None = await self._take(ready)
        if item is None:
            return None
        with self._stages.lock:
            self._stages.delivery.append(time.perf_counter() - item.ready_at)
        return item.result

    # -- statistics -------------------------------------------------------------------------
    def statistics(self) -> StreamStatistics:
        st = self._stages
        src = self._source.statistics() if self._source is not None else None
        gpu = self._runner.statistics() if self._runner is not None else None
        with st.lock:
            frames = st.frames
            span = ((st.last_ready - st.first_ready) if st.first_ready is not None
                    and st.last_ready is not None else 0.0)
            elapsed = (time.perf_counter() - self._started_at) if self._started_at else 0.0
            fps = (frames - 1) / span if frames > 1 and span > 0 else 0.0
            return StreamStatistics(
                frames=frames,
                drops=(src.drops if src is not None else 0) + self._results.drops,
                elapsed=elapsed,
                fps=fps,
                queue_wait=LatencySummary.of(st.queue_wait),
                preprocess=LatencySummary.of(st.preprocess),
                inference=LatencySummary.of(st.inference),
                end_to_end=LatencySummary.of(st.end_to_end),
                delivery=LatencySummary.of(st.delivery),
                timestamp_regressions=st.timestamp_regressions,
                backend=self._backend.kind, batch=self._batch, source=src, gpu=gpu)

    # -- the worker thread ------------------------------------------------------------------
    def _run_worker(self) -> None:
        try:
            if self._gpu_factory is not None:
                self._runner = self._gpu_factory()
                self._owned.append(self._runner)
            while not self._stop.is_set() and (frames := self._next_frames()) is not None:
                if self._runner is not None:
                    # Completed on the runner's waiter thread, through _emit_gpu (or _fail_gpu);
                    # either releases the frames.
                    try:
                        self._runner.submit(frames, self._emit_gpu, self._fail_gpu)
                    except BaseException:
                        _release(frames)  # not accepted: still ours
                        raise
                elif not self._batches.put(self._infer(frames)):
                    return  # closed: the stream is shutting down
            if self._runner is not None:
                self._runner.drain()
            self._batches.finish()
        except ClosedResourceError as exc:
            self._batches.finish(None if self._stop.is_set() else exc)
        except XInferError as exc:
            self._batches.finish(exc)
        except Exception as exc:  # noqa: BLE001 - a bug or a backend's failure: hand it over, chained
            err = InferenceError(f"the inference thread failed: {type(exc).__name__}: {exc}")
            err.__cause__ = exc
            self._batches.finish(err)

    def _next_frames(self) -> list[VideoFrame] | None:
        """Up to ``batch`` frames; ``None`` at the end of the source (or once stopped). A live
        source's partial batch goes at once rather than waiting for frames not yet captured."""
        assert self._source is not None
        live = self._source.is_live or self._source.policy == "latest"
        frames: list[VideoFrame] = []
        while len(frames) < self._batch:
            try:
                frame = self._source.get(timeout=0 if frames and live else None)
            except TimeoutError:
                break
            except BaseException:
                _release(frames)  # the source failed or was closed mid-batch: nobody will use these
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

    def _infer(self, frames: list[VideoFrame]) -> _Batch:
        picked = time.perf_counter()
        batch = np.stack([preprocess_frame(self._preprocess, f.image) for f in frames])
        preprocessed = time.perf_counter()
        outputs = self._backend.run({self._input_name: batch})
        ran = time.perf_counter()
        n = len(frames)
        return _Batch(frames, outputs, picked, (preprocessed - picked) / n, (ran - preprocessed) / n)

    def _emit_gpu(self, frames: Sequence[VideoFrame], outputs: Mapping[str, npt.NDArray[np.generic]],
                  timings: GpuTimings) -> None:
        """The GPU runner's completion callback (waiter thread, the slot already free): the GPU
        is done with the frames' pixels (outputs are copies), so they are released here."""
        _release(frames)
        n = len(frames)
        # preprocess: host time to pack and enqueue; inference: GPU time, from events.
        self._batches.put(_Batch(frames, outputs, timings.submitted_at - timings.enqueue - timings.pack,
                                 (timings.pack + timings.enqueue) / n, timings.compute / n))

    def _fail_gpu(self, frames: Sequence[VideoFrame], error: BaseException) -> None:
        """The runner could not complete this batch (waiter thread): give the frames back. The
        error itself reaches this stream's worker from its next submit or drain."""
        _release(frames)

    # -- the results thread -----------------------------------------------------------------
    def _run_results(self) -> None:
        error: BaseException | None = None
        try:
            while (batch := self._batches.get()) is not None:
                for i, frame in enumerate(batch.frames):
                    if not self._post(self._result(batch, i, frame)):
                        return
        except XInferError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - a user postprocess or a bug: hand it over, chained
            error = InferenceError(f"the postprocess failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        finally:
            if error is not None:
                self._stop.set()  # the worker stops at its next batch
                self._batches.close()  # and the producers at their next hand-over
        self._results.finish(error)
        self._wake_loop()

    def _result(self, batch: _Batch, i: int, frame: VideoFrame) -> _Ready:
        """Frame ``i`` of a batch's outputs as a Result (postprocessed), its stages recorded."""
        result = frame_result(self._postprocess, batch.outputs, i, len(batch.frames), frame,
                              backend=self._backend, preprocess=self._preprocess)
        ready = frame.decoded_at + result.latency
        with self._stages.lock:
            st = self._stages
            st.queue_wait.append(batch.picked - frame.decoded_at)
            st.preprocess.append(batch.preprocess)
            st.inference.append(batch.inference)
            st.end_to_end.append(ready - frame.decoded_at)
            st.frames += 1
            st.first_ready = st.first_ready if st.first_ready is not None else ready
            st.last_ready = ready
        return _Ready(result, ready)

    def _post(self, item: _Ready) -> bool:
        """Hand one result to the loop, waiting while the consumer is behind (policy ``every``;
        ``latest`` replaces an untaken one). ``False`` once the stream is closing."""
        return self._results.put(item) and self._wake_loop()

    # -- shutdown ---------------------------------------------------------------------------
    def _shutdown(self) -> None:
        with self._shutdown_lock:
            if self._shutdown_done:
                return
            # Wake every thread: blocked hand-overs return False, a blocked source.get() raises
            # ClosedResourceError (queued frames are released by the source).
            _emergency_stop(self._stop, self._batches, self._results, [self._source])
            try:
                for thread in self._threads:
                    thread.join(_JOIN_TIMEOUT)
                    if thread.is_alive():
                        raise InferenceError(
                            f"the {thread.name} thread did not stop within {_JOIN_TIMEOUT:.0f} s "
                            "(a backend or postprocess call is hanging)")
            finally:
                if self._runner is not None:
                    self._runner.close()  # every batch emitted or failed: its frames released
            if self._finalizer is not None:
                self._finalizer.detach()
            self._shutdown_done = True


def _release(frames: Sequence[VideoFrame]) -> None:
    """Give back the decoder's GPU memory (frames NVDEC left on the GPU); no-op for others."""
    for frame in frames:
        frame.release()


def _emergency_stop(stop: threading.Event, batches: Handoff[Any], results: Handoff[Any],
                    owned: list[Any]) -> None:
    """Stop every stage: tell the threads, close the hand-offs and what the stream owns (the
    source; the GPU runner, when collected while open)."""
    stop.set()
    batches.close()
    results.close()
    for thing in owned:
        if thing is not None:
            thing.close()
