"""The GPU path of a stream: K in-flight slots, one compute stream, a waiter thread.

::

    submitting thread (the stream's worker)          waiter thread (owned here)
    ------------------------------------------       -----------------------------------------
    take a free slot (waits only if all K are busy)
    pack the window the preprocess reads into the
    slot's pinned staging (host frames); enqueue on
    the compute stream: upload -> preprocess kernel
    -> engine -> output copy to the slot's pinned
    outputs (one CUDA graph replay when captured);
    record 'done'; hand the slot over             --> synchronise on 'done' (GIL released),
                                                      copy the outputs out, return the slot to
                                                      the free list, then call emit(...)

Results leave in submission order because the waiter takes slots in that order. Frames the GPU
reads where they are skip the staging: NVDEC's in GPU memory and those of a decoder process's
registered ring have their window copied on the compute stream before the graph (see
runtime/_upload.py). Nothing here touches the event loop or runs user code:
``emit`` is the stream's callback, called holding no slot.

Ownership: a :class:`GpuRunner` owns its stream, events, pools, one execution context and one
kernel argument block per slot, the captured graphs, and the waiter thread. ``close()`` waits for
work in flight, stops the waiter and frees everything, on every path; the backend and the device
belong to the caller and stay usable. Frames stay the caller's: the runner reads their pixels
until the batch's ``emit`` (or ``on_error``) is called, and never frees them.

CUDA graphs: with ``graphs=True`` each slot captures (upload from the staging + preprocess + engine
+ output copy) the first time it runs a full batch of a given frame layout and colour, and replays
it afterwards (three CUDA calls a batch). With ``buckets`` (batching across cameras,
runtime/_many.py) a batch of n frames runs at the smallest bucket >= n, its rows past n computed on
whatever the slot last held (never packed, never read back), and each slot keeps one graph a bucket:
every batch replays a graph, and one slot serves every size. A context that must own capture
(PyTorch, whose allocator needs a private pool for it) provides ``capture_graph(body, stream=...)``;
any other context is captured with a plain stream capture after one uncaptured run (TensorRT
requires that run). A capture that fails is tried again later, the batches meanwhile enqueued
plainly, by the rule of runtime/_capture.py (after a few failures, plainly for good);
:attr:`GpuRunner.graph_mode` says which.

A batch stage (``stage``; ``detect()`` on the GPU, runtime/_detect_gpu.py) replaces the output
copy: the slot's outputs stay on the device, and the waiter, once ``done`` has fired, hands them to
``stage.run`` on a stream of its own (so it never queues behind the next batch's compute) and emits
what it returns: a few kept rows instead of the raw outputs. The slot goes back when it returns.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .._errors import ClosedResourceError, CudaError, InferenceError, XInferError
from ..cuda import Device, DevicePool, PinnedPool, Stream
from ..engines import GpuBackend, find_image_input
from ..preprocess import Preprocess
from ..preprocess._color import YuvColor
from ..preprocess._frames import FrameLayout, pixel_format_for
from ._capture import CaptureRetry
from ._result import GpuStatistics, LatencySummary
from ._slots import GraphLike, Slot, SlotGraph
from ._upload import InPlaceFrame, RawFrame, UploadPlan, device_frame, in_place

__all__ = ["BatchStage", "DeviceOutput", "Emit", "GpuRunner", "GpuTimings", "OnError"]

_WINDOW = 10_000


@dataclass(frozen=True)
class GpuTimings:
    """Where one batch's time went, in seconds.

    ``pack``: host time to copy the frames' windows into the slot's staging; ``enqueue``: host
    time to enqueue the GPU work; ``compute``: GPU time of upload, preprocess, engine and output
    copy (events); ``submitted_at`` and ``completed_at``: ``time.perf_counter()`` when the batch
    was enqueued and when the waiter saw it finish.
    """

    pack: float
    enqueue: float
    compute: float
    submitted_at: float
    completed_at: float


Emit = Callable[[Sequence[Any], Mapping[str, npt.NDArray[np.generic]], GpuTimings], None]
OnError = Callable[[Sequence[Any], BaseException], None]


@dataclass(frozen=True)
class DeviceOutput:
    """One output of a batch in device memory the runner owns: ``address``, ``shape`` (batch
    first, only the batch's frames) and numpy ``dtype`` name. ``__cuda_array_interface__`` lets
    torch wrap it without a copy; ordering is the caller's (no stream in the interface)."""

    address: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": np.dtype(self.dtype).str,
                "data": (self.address, False), "version": 3, "strides": None, "stream": None}


class BatchStage(Protocol):
    """GPU work on a batch's device outputs, run by the waiter on the runner's stage stream
    (raw ``cudaStream_t``), returning what ``emit`` gets instead of the outputs; returns once
    its results are on the host (the slot is reused after)."""

    def run(self, outputs: Mapping[str, DeviceOutput], *, stream: int
            ) -> dict[str, npt.NDArray[np.generic]]: ...

    @property
    def graph_mode(self) -> str:
        """Whether the stage replays CUDA graphs (the values of ``GpuRunner.graph_mode``)."""

    @property
    def fallback_frames(self) -> int:
        """Frames whose stage work went another way than the batch's (see the stage)."""

    def close(self) -> None:
        """Let go of what the stage holds; the runner calls it when it closes."""


class GpuRunner:
    """Frames in, model outputs out, on one CUDA device, ``slots`` batches in flight.

    ``backend`` must be a :class:`~xinfer_stream.engines.GpuBackend` on ``device``; ``preprocess``
    must fit its image input. ``max_batch`` frames go into one slot at most. ``graphs=False``
    enqueues every batch without CUDA graphs. ``buckets``: batch sizes (ascending, the last
    ``max_batch``) a batch is padded up to, each with its own graph (see the module docstring);
    empty: batches run at their own size, graphed at ``max_batch`` only. ``stage``: a batch stage
    that replaces the output copy (see the module docstring), the runner's to close. Thread contract:
    :meth:`submit`, :meth:`drain` and :meth:`close` are called from one thread at a time; ``emit``
    and ``on_error`` run on the waiter thread, in submission order, after the batch's slot is free
    again.
    """

    def __init__(self, device: Device, backend: GpuBackend, preprocess: Preprocess, *,
                 slots: int = 2, max_batch: int = 1, graphs: bool = True,
                 buckets: Sequence[int] = (), stage: BatchStage | None = None) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots!r}")
        if buckets and (list(buckets) != sorted(set(buckets)) or buckets[0] < 1
                        or buckets[-1] != max_batch):
            raise ValueError(f"buckets must be ascending batch sizes ending at max_batch "
                             f"({max_batch}), got {tuple(buckets)!r}")
        if max_batch < 1 or (backend.max_batch is not None and max_batch > backend.max_batch):
            raise ValueError(f"max_batch must be between 1 and the engine's max batch "
                             f"({backend.max_batch or 'unbounded'}), got {max_batch!r}")
        self.device = device
        self.backend = backend
        self.preprocess = preprocess
        self._max_batch = max_batch
        self._buckets = tuple(buckets)
        self._graph_sizes = frozenset(buckets or (max_batch,))
        self._graphs_wanted = graphs
        self._capture_retry = CaptureRetry()
        self._image = find_image_input(backend.inputs, backend.kind)
        self._last_kind: tuple[object, ...] | None = None  # what the frames last submitted were like
        self._plan: UploadPlan | None = None
        self._color: YuvColor | None = None
        self._closed = False
        self._error: BaseException | None = None
        # Guards the free list, the count of batches in flight and the error; wakes a submitter
        # waiting for a slot and drain()/close() waiting for the last batch.
        self._cond = threading.Condition()
        self._free: deque[Slot] = deque()
        self._outstanding = 0
        self._stats_lock = threading.Lock()
        self._pack: deque[float] = deque(maxlen=_WINDOW)
        self._enqueue: deque[float] = deque(maxlen=_WINDOW)
        self._compute: deque[float] = deque(maxlen=_WINDOW)
        self._graph_batches = 0
        self._plain_batches = 0
        self._graph_captures = 0
        self._device_frames = 0
        self._pinned_frames = 0
        self._raw_capacity = 0
        self._raw_pools: list[PinnedPool | DevicePool] = []
        with contextlib.ExitStack() as resources:  # rolls everything back if setup fails
            device.make_current()
            self._stream: Stream = resources.enter_context(device.create_stream())
            self._stage = stage
            self._stage_stream: Stream | None = None
            if stage is not None:
                self._stage_stream = resources.enter_context(device.create_stream())
                resources.callback(stage.close)  # before its stream goes
            resources.callback(self._close_raw_pools)  # after the slots have given their loans back
            item = np.dtype(self._image.spec.dtype).itemsize
            h, w = preprocess.size
            input_pool = resources.enter_context(
                device.device_pool(max_batch * 3 * h * w * item, slots))
            self._output_frame: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
            output_pools: dict[str, tuple[DevicePool, PinnedPool]] = {}
            for spec in backend.outputs:
                shape = tuple(int(d) for d in spec.shape[1:] if d is not None)
                if len(shape) != len(spec.shape) - 1:
                    raise InferenceError(f"output {spec.describe()} has a dynamic non-batch "
                                         "dimension; the GPU runtime needs fixed output shapes")
                dtype = np.dtype(spec.dtype)
                nbytes = max_batch * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                self._output_frame[spec.name] = (shape, dtype)
                output_pools[spec.name] = (
                    resources.enter_context(device.device_pool(nbytes, slots)),
                    resources.enter_context(device.pinned_pool(nbytes, slots)))
            self._slots: list[Slot] = []
            for _ in range(slots):
                context = backend.create_context()
                try:
                    slot = Slot(device, context, preprocess, input_pool, output_pools)
                except BaseException:
                    context.close()
                    raise
                resources.callback(slot.close)  # closes the context too
                self._slots.append(slot)
            self._inflight: queue.SimpleQueue[Slot | None] = queue.SimpleQueue()
            self._waiter = threading.Thread(target=self._wait_loop, name="xinfer-gpu-waiter",
                                            daemon=True)
            self._waiter.start()
            self._resources = resources.pop_all()
        self._free.extend(self._slots)

    # -- what it is doing ---------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return len(self._slots)

    @property
    def graph_mode(self) -> str:
        """``"graph"`` (slots replay captured graphs), ``"plain"`` (graphs off),
        ``"retrying a failed capture (...)"`` (batches that need the graph run plainly until a
        capture succeeds), or ``"plain (capture failed: ...)"`` (graphs given up)."""
        return self._capture_retry.mode() if self._graphs_wanted else "plain"

    def statistics(self) -> GpuStatistics:
        plan = self._plan
        with self._stats_lock:
            return GpuStatistics(
                graph_mode=self.graph_mode, slots=self.slots,
                graph_batches=self._graph_batches, plain_batches=self._plain_batches,
                graph_captures=self._graph_captures,
                capture_failures=self._capture_retry.failures,
                frames_from_device_memory=self._device_frames,
                frames_from_pinned_memory=self._pinned_frames,
                windowed_upload=plan is not None and plan.windows is not None,
                upload_bytes_per_frame=plan.bytes_per_frame if plan is not None else 0,
                pack=LatencySummary.of(self._pack), enqueue=LatencySummary.of(self._enqueue),
                compute=LatencySummary.of(self._compute),
                stage_graph_mode=self._stage.graph_mode if self._stage is not None else None,
                stage_fallback_frames=self._stage.fallback_frames if self._stage is not None else 0)

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, frames: Sequence[RawFrame], emit: Emit, on_error: OnError | None = None
               ) -> None:
        """Enqueue one batch (1..max_batch frames of one size and format); ``emit(frames,
        outputs, timings)`` is called on the waiter thread when it is done (``outputs`` are
        copies the callee owns). Waits only while all slots are busy. Raises
        ``ClosedResourceError`` after ``close()``, and the waiter's error if it failed.

        A batch that is accepted ends in exactly one call on the waiter thread: ``emit``, or,
        when completing it failed (or an earlier batch's failure stopped the runner),
        ``on_error(frames, error)`` if given. When ``submit`` raises, the batch was not accepted.

        Host planes may be reused as soon as this returns (their window was copied into the
        slot's staging), except those in registered memory (``pinned``), which the GPU reads
        where they are: such a frame, and a frame in GPU memory (``device``), must stay valid,
        unreleased, until the batch's ``emit`` or ``on_error`` is called.
        """
        if self._closed:
            raise ClosedResourceError("this GPU runner is closed")
        if not frames or len(frames) > self._max_batch:
            raise ValueError(f"a batch holds 1 to {self._max_batch} frames, got {len(frames)}")
        self._raise_if_failed()
        first = frames[0]
        kind = (first.format, first.height, first.width, first.colorspace, first.color_range)
        if kind != self._last_kind:
            self._describe(first)  # a new kind of frame: its upload plan and colour
            self._last_kind = kind
        plan, color = self._plan, self._color
        assert plan is not None
        if len(frames) > 1 and any(f.format != first.format or f.width != first.width
                                   or f.height != first.height for f in frames):
            raise InferenceError("every frame of a batch must have the same size and format")
        self.device.make_current()
        if plan.layout.nbytes > self._raw_capacity:
            self._grow_raw(plan.layout.nbytes)
        slot = self._take_slot()
        try:
            started = time.perf_counter()
            places = [in_place(f) for f in frames]
            host = [i for i, where in enumerate(places) if where is None]
            assert slot.staging is not None
            plan.pack([frames[i] for i in host], slot.staging.array, host)
            packed = time.perf_counter()
            batch = next((b for b in self._buckets if b >= len(frames)), len(frames))
            self._enqueue_batch(slot, plan, color, frames, places, batch)
            enqueued = time.perf_counter()
        except BaseException:
            self._give_back(slot)
            raise
        slot.frames, slot.emit, slot.on_error = frames, emit, on_error
        slot.pack, slot.enqueue, slot.submitted_at = packed - started, enqueued - packed, enqueued
        with self._cond:
            self._outstanding += 1
        self._inflight.put(slot)

    def _describe(self, frame: RawFrame) -> None:
        """Upload plan and colour for frames like ``frame``. Kept as the same objects while
        frames keep coming alike: the kernel's and the graphs' caches compare identity."""
        fmt = pixel_format_for(frame.format)
        if fmt is None:
            raise InferenceError(f"the GPU path reads yuv420p, nv12, rgb24 or bgr24 frames, got "
                                 f"{frame.format!r}; open the source with format='yuv420p'")
        layout = FrameLayout(fmt, frame.height, frame.width)
        if self._plan is None or layout != self._plan.layout:
            self._plan = UploadPlan.of(layout, self.preprocess)
        color = None
        if layout.is_yuv:
            color = YuvColor(frame.colorspace, frame.color_range)  # type: ignore[arg-type]
            if color == self._color:
                color = self._color
        self._color = color

    def _take_slot(self) -> Slot:
        with self._cond:
            while not self._free and not self._closed and self._error is None:
                self._cond.wait()
            if self._closed:
                raise ClosedResourceError("this GPU runner is closed")
            self._raise_if_failed()
            return self._free.popleft()

    def _give_back(self, slot: Slot) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify_all()

    def _graphs_usable(self, batch: int) -> bool:
        return (self._graphs_wanted and not self._capture_retry.gave_up
                and batch in self._graph_sizes)

    def _enqueue_batch(self, slot: Slot, plan: UploadPlan, color: YuvColor | None,
                       frames: Sequence[RawFrame], places: Sequence[InPlaceFrame | None],
                       batch: int) -> None:
        """Upload, preprocess, engine and output copy of ``batch`` rows (``frames`` and, past
        them, padding) on the compute stream (one graph replay when captured). A batch of host
        frames uploads from the staging inside the graph; frames read in place (``places``, see
        runtime/_upload.py) are copied into the slot's planes before it."""
        assert slot.planes is not None and slot.staging is not None
        stream = self._stream
        host = [i for i, where in enumerate(places) if where is None]
        from_staging = len(host) == len(frames)
        slot.compute_start.record(stream=stream)
        if not from_staging:
            decoded = sum(device_frame(f) is not None for f in frames)
            if decoded:
                # FFmpeg wrote NVDEC's frames on the legacy default stream: read them after that.
                slot.decoded.record_legacy_stream()
                stream.wait(slot.decoded)
            for i, where in enumerate(places):
                if where is not None:
                    plan.copy_in_place(slot.planes, where, i, ordinal=self.device.ordinal,
                                       stream=stream)
            if host:
                plan.upload(slot.planes, slot.staging, host, stream=stream)
            with self._stats_lock:
                self._device_frames += decoded
                self._pinned_frames += len(frames) - len(host) - decoded
        if slot.bound_batch != batch:
            # Graphs captured at other sizes stay valid: they replay their own recorded work on
            # the same buffers, whatever shape the context was last given.
            h, w = self.preprocess.size
            shape = (batch, 3, h, w) if self._image.layout == "nchw" else (batch, h, w, 3)
            slot.context.set_input(self._image.spec.name, slot.input.pointer, shape)
            slot.bound_batch = batch

        def body() -> None:
            assert slot.planes is not None and slot.staging is not None
            if from_staging:
                plan.upload(slot.planes, slot.staging, range(batch), stream=stream)
            slot.kernel.enqueue(slot.planes, plan.layout, slot.input, stream=stream, color=color,
                                batch=batch)
            slot.context.enqueue(stream=stream.handle)
            for name, (dev, pinned) in (slot.outputs.items() if self._stage is None else ()):
                shape, dtype = self._output_frame[name]
                dev.copy_to_host(pinned, stream=stream, nbytes=batch * math.prod(shape) * dtype.itemsize)

        captured = slot.graphs.get(batch)
        if captured is not None and not captured.fits(plan, color, from_staging):
            slot.drop_graph(batch)
            captured = None
        if captured is None and self._graphs_usable(batch) and self._capture_retry.due():
            graph = self._capture(slot, body)
            if graph is not None:
                captured = slot.graphs[batch] = SlotGraph(graph, plan, color, from_staging)
        if self._graphs_usable(batch) and captured is not None:
            captured.graph.launch(stream=stream)
            graphed = True
        else:
            body()
            graphed = False
        slot.done.record(stream=stream)
        with self._stats_lock:
            if graphed:
                self._graph_batches += 1
            else:
                self._plain_batches += 1

    def _capture(self, slot: Slot, body: Callable[[], None]) -> GraphLike | None:
        """A graph of ``body`` for this slot, or ``None``: counted, and no capture is tried
        again before the retry delay has passed (see the module docstring)."""
        stream = self._stream
        own_capture = getattr(slot.context, "capture_graph", None)
        with self._stats_lock:
            self._graph_captures += 1
        try:
            if own_capture is not None:
                graph: GraphLike = own_capture(body, stream=stream)
            else:
                body()  # an uncaptured run first (TensorRT needs it), then capture
                stream.synchronize()
                with self.device.capture(stream) as capture:
                    body()
                graph = capture.graph
        except (CudaError, RuntimeError) as exc:  # torch reports capture failures as RuntimeError
            self._capture_retry.failed(exc)
            stream.synchronize()
            return None
        self._capture_retry.succeeded()
        return graph

    def _grow_raw(self, nbytes: int) -> None:
        """(Re)allocate every slot's staging and device planes for frames of ``nbytes``."""
        self.drain()
        capacity = self._max_batch * nbytes
        for slot in self._slots:
            slot.release_raw()
        self._close_raw_pools()
        # Write-combined: the host only writes the staging and the GPU only reads it.
        staging = self.device.pinned_pool(capacity, len(self._slots), write_combined=True)
        self._raw_pools.append(staging)
        planes = self.device.device_pool(capacity, len(self._slots))
        self._raw_pools.append(planes)
        for slot in self._slots:
            slot.lend_raw(staging.acquire(), planes.acquire())
        self._raw_capacity = nbytes

    def _close_raw_pools(self) -> None:
        pools, self._raw_pools = self._raw_pools, []
        for pool in pools:
            pool.close()

    # -- completing ---------------------------------------------------------------------------
    def _wait_loop(self) -> None:
        self.device.make_current()
        while (slot := self._inflight.get()) is not None:
            frames, emit, on_error = slot.frames, slot.emit, slot.on_error
            slot.frames, slot.emit, slot.on_error = (), None, None
            completed = None
            try:
                if self._error is None:
                    completed = self._complete(slot, len(frames))
                else:
                    slot.done.synchronize()  # the GPU is done with the slot before it is reused
            except BaseException as exc:  # noqa: BLE001 - handed to the submitting thread, chained
                self._fail(exc)
            self._give_back(slot)  # before emit: the user's code never holds a slot
            if completed is not None and emit is not None:
                try:
                    emit(frames, *completed)
                except BaseException as exc:  # noqa: BLE001 - same as above
                    self._fail(exc)
                    completed = None
            if completed is None and on_error is not None and self._error is not None:
                on_error(frames, self._error)  # must not raise (see submit)
            with self._cond:
                self._outstanding -= 1
                self._cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, XInferError):
            error: BaseException = exc
        else:
            error = InferenceError(f"completing a GPU batch failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    def _complete(self, slot: Slot, n: int
                  ) -> tuple[Mapping[str, npt.NDArray[np.generic]], GpuTimings]:
        slot.done.synchronize()
        completed = time.perf_counter()
        compute = slot.done.elapsed_ms(slot.compute_start) / 1e3
        frame = self._output_frame
        if self._stage is None:  # the frames' rows, no padding
            outputs = {name: pinned.view(frame[name][1], (n, *frame[name][0])).copy()
                       for name, (_dev, pinned) in slot.outputs.items()}
        else:
            assert self._stage_stream is not None
            outputs = self._stage.run(
                {name: DeviceOutput(dev.pointer, (n, *frame[name][0]), str(frame[name][1]))
                 for name, (dev, _pinned) in slot.outputs.items()},
                stream=self._stage_stream.handle)
        with self._stats_lock:
            self._pack.append(slot.pack)
            self._enqueue.append(slot.enqueue)
            self._compute.append(compute)
        return outputs, GpuTimings(slot.pack, slot.enqueue, compute, slot.submitted_at, completed)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def drain(self) -> None:
        """Wait until every submitted batch has been emitted; raise the waiter's error if any."""
        with self._cond:
            while self._outstanding:
                self._cond.wait()
        self._raise_if_failed()

    # -- closing ------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wait for work in flight (its results are still emitted), stop the waiter, free every
        slot, stream, event and pool. Safe to call twice; the backend stays open."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            while self._outstanding:
                self._cond.wait()
        try:
            self._inflight.put(None)
            self._waiter.join()
        finally:
            self._resources.close()

    def __enter__(self) -> GpuRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
