"""The GPU path of a stream: K in-flight slots, a copy stream, a compute stream, a waiter thread.

::

    submitting thread (the stream's worker)          waiter thread (owned here)
    ------------------------------------------       -----------------------------------------
    take a free slot (waits only if all K are busy)
    pack the frames' planes into the slot's pinned
    staging; upload them on the COPY stream; record
    'uploaded'; the COMPUTE stream waits for it;
    preprocess kernel -> engine -> output copy to the
    slot's pinned outputs (one CUDA graph replay when
    captured, which then does the upload too);
    record 'done'; hand the slot over             --> synchronise on 'done' (GIL released),
                                                      copy the outputs out, call emit(...),
                                                      return the slot to the free list

Slot k+1 uploads on the copy stream while slot k computes; results leave in submission order
because the waiter takes slots in that order. Nothing here touches the event loop: ``emit`` is the
stream's callback, which hands results over with ``loop.call_soon_threadsafe``.

Ownership: a :class:`GpuRunner` owns its streams, events, pools, one execution context and one
kernel argument block per slot, any captured graphs, and the waiter thread. ``close()`` waits for
work in flight, stops the waiter, and frees everything, on every path; the backend and the device
belong to the caller and stay usable. Frames stay the caller's: the runner reads their pixels
until the batch's ``emit`` (or ``on_error``) has run, and never frees them.

Frames decoded straight into pinned memory (:class:`FrameBuffers`, lent to the decoder) are
uploaded with no host copy: only the window of pixels the preprocess reads
(``Preprocess.source_window``; a 2-D copy per plane) when that skips more than a tenth of the
frame, as ``shorter_crop`` of a wide frame does, else the whole frame with one DMA. Other frames
are copied by CUDA from pageable memory (``upload="pageable"``), or their window is copied by the
submitting thread into the slot's pinned, write-combined staging and uploaded from there
(``upload="pack"``, what ``engine.stream`` uses: the decode thread then only decodes).
Frames NVDEC decoded into GPU memory (``VideoFrame.device``) need no upload at all: their window
is copied device to device into the slot's planes on the copy stream, after the copy stream has
waited (on the GPU, through an event) for the work FFmpeg enqueued on the legacy default stream,
which is where it writes those frames.

CUDA graphs: with ``graphs=True`` each slot captures (preprocess + engine + output copy) the first
time it runs a full batch of a given frame layout, and replays it afterwards. A full batch packed
into the slot's staging (``upload="pack"``: fixed addresses) uploads inside that graph as well, so
the submitting thread makes three CUDA calls a batch instead of about nine; its GPU time is then
part of ``compute`` (``GpuTimings.upload`` is ``None``). A context that
must own capture (PyTorch, whose allocator needs a private pool for it) provides
``capture_graph(body, stream=...)``; any other context is captured with a plain stream capture
after one uncaptured run (TensorRT requires that run). If capture fails, the runner falls back to
plain enqueue for good and says why in :attr:`GpuRunner.graph_mode`.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from .._errors import ClosedResourceError, CudaError, InferenceError, XInferError
from ..cuda import Device, DeviceBuffer, DevicePool, Event, PinnedBuffer, PinnedPool, Stream
from ..engines import GpuBackend, GpuExecutionContext, find_image_input
from ..preprocess import Preprocess
from ..preprocess._color import YuvColor
from ..preprocess._frames import FrameLayout, PlaneWindow, pixel_format_for
from ..preprocess._kernel import PreprocessKernel

__all__ = ["FrameBuffers", "GpuRunner", "GpuTimings", "RawFrame", "device_frame", "pinned_storage"]

_WINDOW = 10_000
_POLL = 0.05
_WINDOWED_UPLOAD = 0.9  # upload only the source window when it is at most this share of a frame
# The choices below were measured against their alternatives (BENCHMARKS.md, issue 8); the
# alternatives stay reachable for such comparisons.
# The slots' staging is write-combined: the host only writes it (pack) and the GPU only reads it
# (cached memory measured about the same).
_STAGING_WRITE_COMBINED = True
# upload="pack" widens each row it copies out to whole cache lines of this many bytes (1: only
# the window's bytes).
_COPY_LINE = 64
# A full batch packed into a slot's staging uploads inside the slot's CUDA graph (False: on the
# copy stream, as other batches do).
_UPLOAD_IN_GRAPH = True


class RawFrame(Protocol):
    """What the runner reads from a decoded frame (``xinfer_stream.video.VideoFrame`` fits)."""

    @property
    def format(self) -> str: ...

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def planes(self) -> tuple[npt.NDArray[np.uint8], ...]: ...

    @property
    def colorspace(self) -> str: ...

    @property
    def color_range(self) -> str: ...


class _DevicePlane(Protocol):
    pointer: int
    pitch: int
    rows: int
    row_bytes: int


class _DeviceFrame(Protocol):
    """What the runner reads of a frame in GPU memory (``xinfer_stream.video.DeviceFrame``)."""

    planes: tuple[_DevicePlane, ...]
    ordinal: int

    @property
    def released(self) -> bool: ...


def device_frame(frame: object) -> _DeviceFrame | None:
    """Where ``frame``'s planes are in GPU memory (its ``device``, set for frames NVDEC decoded
    and left on the GPU), or ``None`` for frames in host memory."""
    return getattr(frame, "device", None)


def pinned_storage(frame: object, nbytes: int) -> PinnedBuffer | None:
    """The pinned buffer holding ``frame``'s planes packed as its :class:`FrameLayout` (of
    ``nbytes``), or ``None`` when its pixels live in ordinary memory.

    A decoder that writes into a buffer lent by :class:`FrameBuffers` sets the frame's
    ``storage`` to it (``xinfer_stream.video.VideoFrame.storage``).
    """
    storage = getattr(frame, "storage", None)
    if isinstance(storage, PinnedBuffer) and not storage.closed and storage.nbytes >= nbytes:
        return storage
    return None


class FrameBuffers:
    """Pinned buffers lent to a decoder, one per frame, so that decoded planes land in memory the
    GPU can read with one DMA, with no host copy in between (DESIGN.md decision 5): what
    ``engine.stream(..., copy_on="decoder")`` lends the decode thread. (By default the stream's
    worker packs each frame into its slot's staging instead.)

    ``allocate(nbytes)`` is the decoder's ``plane_allocator``: a free buffer of at least
    ``nbytes`` (a :class:`~xinfer_stream.cuda.PinnedBuffer` loan), or ``None`` when all are lent
    out or the pool is closed, in which case the decoder uses ordinary memory (counted in
    :attr:`misses`), so a slow release can cost a copy but never block the decoder. The pool of
    ``count`` buffers is allocated on the first call, sized for that frame, and again, larger, if
    a larger frame comes (the old pool is kept until :meth:`close`: its loans may still be out).

    The memory is write-combined by default (``write_combined``): the decoder only writes it and
    the GPU only reads it, and write-combined stores skip the CPU caches (no read of each line
    before it is overwritten), which makes the decode thread's copy cheaper. Reading such planes
    on the CPU is very slow: these frames are for the GPU.

    Ownership: the pools belong to this object; each loan belongs to the frame written into it,
    and goes back when that frame is released (``VideoFrame.release()``): by the stream once the
    GPU has read it, or by the source for frames it drops or discards. :meth:`close` frees the
    memory, so call it only after the source and the runner are closed (every frame released).
    Thread-safe: the decode thread allocates; other threads release.
    """

    def __init__(self, device: Callable[[], Device], count: int, *,
                 write_combined: bool = True) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count!r}")
        self._device = device
        self._count = count
        self._write_combined = write_combined
        self._lock = threading.Lock()
        self._pool: PinnedPool | None = None
        self._pools: list[PinnedPool] = []
        self._closed = False
        self.lent = 0
        self.misses = 0

    def allocate(self, nbytes: int) -> PinnedBuffer | None:
        with self._lock:
            if self._closed:
                return None
            if self._pool is None or self._pool.nbytes < nbytes:
                self._pool = self._device().pinned_pool(nbytes, self._count,
                                                        write_combined=self._write_combined)
                self._pools.append(self._pool)
            loan = self._pool.try_acquire()
            if loan is None:
                self.misses += 1
            else:
                self.lent += 1
            return loan

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Free every pool. Safe to call twice."""
        with self._lock:
            self._closed = True
            pools, self._pools, self._pool = self._pools, [], None
        for pool in pools:
            pool.close()


class _GraphLike(Protocol):
    def launch(self, *, stream: Any) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class GpuTimings:
    """Where one batch's time went, in seconds.

    ``pack``: host time to put the planes on their way (copies into pinned staging or CUDA's
    pageable staging, and the upload calls); ``enqueue``: host time to enqueue the compute;
    ``upload``: GPU time of the copy (events), ``None`` when the upload ran inside the slot's
    graph; ``compute``: GPU time of preprocess + engine + output copy, and of the upload when
    it ran inside the graph (events); ``submitted_at`` and
    ``completed_at``: ``time.perf_counter()`` when the batch was enqueued and when the waiter saw
    it finish.
    """

    pack: float
    enqueue: float
    upload: float | None
    compute: float
    submitted_at: float
    completed_at: float


Emit = Callable[[Sequence[Any], Mapping[str, npt.NDArray[np.generic]], GpuTimings], bool]
OnError = Callable[[Sequence[Any], BaseException], None]


_PARALLEL_PACK_BYTES = 1 << 20  # frames this large are packed by several threads


class _Packer:
    """Copies decoded planes into pinned staging, splitting large frames across threads.

    One thread copies ~5-9 GB/s, so a 1080p frame (3.1 MB) alone takes ~0.35 ms of host time
    on our H200 machines: more than a short engine's GPU time. So only the window of pixels
    the preprocess reads is copied, and numpy releases the GIL while it copies, so the rows of
    each plane can be split among ``threads`` threads (the caller's plus ``threads - 1`` of
    ours).
    """

    def __init__(self, threads: int) -> None:
        self._threads = max(1, threads)
        self._pool = (ThreadPoolExecutor(self._threads - 1, thread_name_prefix="xinfer-pack")
                      if self._threads > 1 else None)

    def pack(self, layout: FrameLayout, frames: Sequence[RawFrame],
             staging: npt.NDArray[np.uint8],
             windows: tuple[PlaneWindow, ...] | None = None) -> None:
        """Frame ``i``'s planes into ``staging`` at ``i * layout.nbytes``, as ``layout`` packs
        them; with ``windows`` (one per plane, :meth:`FrameLayout.windows`), only those bytes."""
        jobs: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]] = []
        moved = 0
        spans = layout.window_slices(windows) if windows is not None else None
        for i, frame in enumerate(frames):
            targets = layout.unpack(staging[i * layout.nbytes:(i + 1) * layout.nbytes])
            if len(frame.planes) != len(targets):
                raise InferenceError(f"a {layout.format} frame has {len(targets)} planes, got "
                                     f"{len(frame.planes)}")
            for k, (plane, target) in enumerate(zip(frame.planes, targets)):
                source = plane.reshape(plane.shape[0], -1)
                if source.shape[0] < target.shape[0] or source.shape[1] < target.shape[1]:
                    raise InferenceError(f"a plane of {source.shape} cannot fill {target.shape} "
                                         f"of a {layout.format} {layout.height}x{layout.width} frame")
                if spans is None:
                    rows, cols = slice(0, target.shape[0]), slice(0, target.shape[1])
                else:
                    rows, cols = spans[k]
                    # Whole cache lines: an aligned memmove, and no partly written line.
                    cols = slice(cols.start // _COPY_LINE * _COPY_LINE,
                                 min(target.shape[1], -(-cols.stop // _COPY_LINE) * _COPY_LINE))
                jobs.append((target[rows, cols], source[rows, cols]))
                moved += jobs[-1][0].nbytes
        if self._pool is None or moved < _PARALLEL_PACK_BYTES:
            for target, source in jobs:
                np.copyto(target, source)
            return
        n = self._threads
        futures = [self._pool.submit(self._copy_part, jobs, part, n) for part in range(1, n)]
        self._copy_part(jobs, 0, n)
        for future in futures:
            future.result()

    @staticmethod
    def _copy_part(jobs: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]], part: int,
                   parts: int) -> None:
        for target, source in jobs:
            rows = target.shape[0]
            lo, hi = rows * part // parts, rows * (part + 1) // parts
            np.copyto(target[lo:hi], source[lo:hi])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


@dataclass(frozen=True)
class _SlotGraph:
    """A slot's captured graph and what it was captured for (compared by identity: the runner
    reuses the layout and colour objects while frames come alike)."""

    graph: _GraphLike
    layout: FrameLayout
    color: YuvColor | None


class _Slot:
    """One in-flight frame batch's resources (see the module docstring)."""

    def __init__(self, runner: GpuRunner, index: int) -> None:
        device = runner.device
        self.index = index
        self.context: GpuExecutionContext = runner.backend.create_context()
        self.kernel = PreprocessKernel(device, runner.preprocess)
        self.input: DeviceBuffer = runner._input_pool.acquire()
        self.outputs: dict[str, tuple[DeviceBuffer, PinnedBuffer]] = {
            name: (dev.acquire(), host.acquire()) for name, (dev, host) in runner._output_pools.items()}
        self.upload_start: Event = device.create_event(timing=True)
        self.uploaded: Event = device.create_event(timing=True)
        self.compute_start: Event = device.create_event(timing=True)
        self.done: Event = device.create_event(timing=True)
        # Recorded on the legacy default stream before frames NVDEC wrote there are read.
        self.decoded: Event = device.create_event()
        self.staging: PinnedBuffer | None = None
        self.planes: DeviceBuffer | None = None
        # Captured graphs, by whether they begin with the upload from the staging: batches of
        # frames in pinned memory and batches packed into the staging may alternate (a decoder
        # whose pinned buffers ran dry hands over frames in ordinary memory).
        self.graphs: dict[bool, _SlotGraph] = {}
        self.upload_timed = True  # the batch in flight was uploaded between the upload events
        self.bound_batch = 0
        # What is in flight in this slot.
        self.frames: Sequence[Any] = ()
        self.emit: Emit | None = None
        self.on_error: OnError | None = None
        self.batch = 0
        self.pack = 0.0
        self.enqueue = 0.0
        self.submitted_at = 0.0

    def drop_graphs(self) -> None:
        graphs, self.graphs = list(self.graphs.values()), {}
        for captured in graphs:
            captured.graph.close()

    def close(self) -> None:
        self.drop_graphs()
        self.context.close()
        for loan in (self.staging, self.planes, self.input,
                     *(b for pair in self.outputs.values() for b in pair)):
            if loan is not None:
                loan.release()
        for event in (self.upload_start, self.uploaded, self.compute_start, self.done,
                      self.decoded):
            event.close()


class GpuRunner:
    """Frames in, model outputs out, on one CUDA device, ``slots`` batches in flight.

    ``backend`` must be a :class:`~xinfer_stream.engines.GpuBackend` on ``device``; ``preprocess``
    must fit its image input. ``max_batch`` frames go into one slot at most.

    ``upload`` says how planes in ordinary memory reach the GPU: ``"pageable"`` (default: one
    ``cudaMemcpyAsync`` per plane straight from the frame, whole; CUDA stages it through its own
    pinned buffers) or ``"pack"`` (the submitting thread copies the window of pixels the
    preprocess reads into the slot's pinned staging, with ``pack_threads`` threads, then one
    2-D DMA per plane). Frames that already live in pinned memory skip both (see
    :meth:`submit`) and upload only that window. ``windowed=False`` moves whole frames instead
    (for comparison). Thread contract:
    :meth:`submit` and :meth:`drain` are called from one thread (the stream's worker); ``emit``
    callbacks run on the waiter thread, in submission order.
    """

    def __init__(self, device: Device, backend: GpuBackend, preprocess: Preprocess, *,
                 slots: int = 2, max_batch: int = 1, graphs: bool = True,
                 upload: Literal["pageable", "pack"] = "pageable", pack_threads: int = 1,
                 windowed: bool = True) -> None:
        if upload not in ("pageable", "pack"):
            raise ValueError(f"upload must be 'pageable' or 'pack', got {upload!r}")
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots!r}")
        if max_batch < 1 or (backend.max_batch is not None and max_batch > backend.max_batch):
            raise ValueError(f"max_batch must be between 1 and the engine's max batch "
                             f"({backend.max_batch or 'unbounded'}), got {max_batch!r}")
        self.device = device
        self.backend = backend
        self.preprocess = preprocess
        self._max_batch = max_batch
        self._graphs_wanted = graphs
        self._upload_mode = upload
        self._windowed = windowed
        self._last_kind: tuple[object, ...] | None = None  # what the frames last submitted were like
        self._last_layout: FrameLayout | None = None
        self._last_color: YuvColor | None = None
        self._windows: tuple[PlaneWindow, ...] | None = None  # None: upload whole frames
        self._upload_bytes = 0
        self._graph_failure: str | None = None
        self._image = find_image_input(backend.inputs, backend.kind)
        self._closed = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._pack: deque[float] = deque(maxlen=_WINDOW)
        self._enqueue: deque[float] = deque(maxlen=_WINDOW)
        self._upload_times: deque[float] = deque(maxlen=_WINDOW)
        self._compute: deque[float] = deque(maxlen=_WINDOW)
        self._graph_batches = 0
        self._plain_batches = 0
        self._graph_captures = 0
        self._device_frames = 0
        self._made: list[Any] = []  # everything to close, in creation order
        self._packer = self._keep(_Packer(pack_threads))
        try:
            device.make_current()
            self._copy: Stream = self._keep(device.create_stream())
            self._compute_stream: Stream = self._keep(device.create_stream())
            item = np.dtype(self._image.spec.dtype).itemsize
            h, w = preprocess.size
            self._input_frame_bytes = 3 * h * w * item
            self._input_pool: DevicePool = self._keep(
                device.device_pool(max_batch * self._input_frame_bytes, slots))
            self._output_frame: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
            self._output_pools: dict[str, tuple[DevicePool, PinnedPool]] = {}
            for spec in backend.outputs:
                shape = tuple(int(d) for d in spec.shape[1:] if d is not None)
                if len(shape) != len(spec.shape) - 1:
                    raise InferenceError(f"output {spec.describe()} has a dynamic non-batch "
                                         "dimension; the GPU runtime needs fixed output shapes")
                dtype = np.dtype(spec.dtype)
                nbytes = max_batch * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                self._output_frame[spec.name] = (shape, dtype)
                self._output_pools[spec.name] = (self._keep(device.device_pool(nbytes, slots)),
                                                 self._keep(device.pinned_pool(nbytes, slots)))
            self._raw_capacity = 0
            self._staging_pool: PinnedPool | None = None
            self._planes_pool: DevicePool | None = None
            self._slots = [_Slot(self, i) for i in range(slots)]
            for slot in self._slots:
                for name, (dev, _host) in slot.outputs.items():
                    slot.context.set_output(name, dev.pointer)
        except BaseException:
            self._release_all()
            raise
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for slot in self._slots:
            self._free.put(slot)
        self._inflight: queue.SimpleQueue[_Slot | None] = queue.SimpleQueue()
        self._outstanding = 0
        self._idle = threading.Condition(self._lock)
        self._waiter = threading.Thread(target=self._wait_loop, name="xinfer-gpu-waiter",
                                        daemon=True)
        self._waiter.start()

    def _keep(self, thing: Any) -> Any:
        self._made.append(thing)
        return thing

    # -- what it is doing ---------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return len(self._slots)

    @property
    def graph_mode(self) -> str:
        """``"graph"`` (slots replay captured graphs), ``"plain"`` (graphs off), or
        ``"plain (capture failed: ...)"``."""
        if not self._graphs_wanted:
            return "plain"
        if self._graph_failure is not None:
            return f"plain (capture failed: {self._graph_failure})"
        return "graph"

    def statistics(self) -> dict[str, Any]:
        """Percentiles (seconds) of pack, enqueue, upload and compute, the graph mode, and what
        the latest frames' upload moves per frame (frames in pinned memory, and frames packed
        into staging, move only the window of pixels the preprocess reads, when that saves more
        than a tenth of the frame; ``upload="pageable"`` frames move whole)."""
        def pct(samples: deque[float]) -> dict[str, float]:
            if not samples:
                return {}
            a = np.fromiter(samples, np.float64, len(samples))
            p50, p90, p99 = np.percentile(a, [50, 90, 99])
            return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max())}
        with self._stats_lock:
            return {"graph_mode": self.graph_mode, "slots": self.slots,
                    "graph_batches": self._graph_batches, "plain_batches": self._plain_batches,
                    "graph_captures": self._graph_captures,
                    "frames_from_device_memory": self._device_frames,
                    "windowed_upload": self._windows is not None,
                    "upload_bytes_per_frame": self._upload_bytes,
                    "pack": pct(self._pack), "enqueue": pct(self._enqueue),
                    "upload_gpu": pct(self._upload_times), "compute_gpu": pct(self._compute)}

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, frames: Sequence[RawFrame], emit: Emit, on_error: OnError | None = None
               ) -> None:
        """Enqueue one batch (1..max_batch frames of one size and format); ``emit(frames,
        outputs, timings)`` is called on the waiter thread when it is done. Waits only while all
        slots are busy. Raises ``ClosedResourceError`` after ``close()``, and the waiter's error
        if it failed.

        A batch that is accepted ends in exactly one call on the waiter thread: ``emit``, or,
        when completing it failed (or an earlier batch's failure stopped the runner),
        ``on_error(frames, error)`` if given. Callers that wait for one batch's result, or that
        must release the frames, need it; a stream learns of failures from its next ``submit``
        or ``drain`` as well. When ``submit`` raises, the batch was not accepted.

        Planes in ordinary memory may be reused as soon as this returns. A frame whose packed
        planes are in a pinned buffer (its ``storage``, see :func:`pinned_storage`) is uploaded
        from there with no host copy (only the pixels the preprocess reads, see the module
        docstring); that buffer must stay unchanged until the batch's ``emit`` or ``on_error``
        has run.
        """
        if self._closed:
            raise ClosedResourceError("this GPU runner is closed")
        if not frames or len(frames) > self._max_batch:
            raise ValueError(f"a batch holds 1 to {self._max_batch} frames, got {len(frames)}")
        self._raise_if_failed()
        first = frames[0]
        kind = (first.format, first.height, first.width, first.colorspace, first.color_range)
        if kind != self._last_kind:
            self._describe(first)  # a new kind of frame: its layout, colour and upload windows
            self._last_kind = kind
        layout, color = self._last_layout, self._last_color
        assert layout is not None
        if len(frames) > 1 and any(f.format != first.format or f.width != first.width
                                   or f.height != first.height for f in frames):
            raise InferenceError("every frame of a batch must have the same size and format")
        self.device.make_current()
        if layout.nbytes > self._raw_capacity:
            self._grow_raw(layout.nbytes)
        slot = self._take_slot()
        try:
            started = time.perf_counter()
            staged = self._stage(slot, layout, frames)
            # Frames packed into the slot's staging (fixed addresses) upload inside the slot's
            # CUDA graph: 3 CUDA calls a batch instead of ~9 (each costs the submitting thread
            # ~15 us of host time, BENCHMARKS.md).
            in_graph = staged and _UPLOAD_IN_GRAPH and self._graphs_usable(len(frames))
            if not in_graph:
                self._upload(slot, layout, frames, staged)
            uploaded = time.perf_counter()
            self._enqueue_compute(slot, layout, color, len(frames), upload_in_body=in_graph)
            enqueued = time.perf_counter()
        except BaseException:
            self._free.put(slot)
            raise
        slot.frames, slot.emit, slot.on_error, slot.batch = frames, emit, on_error, len(frames)
        slot.pack, slot.enqueue, slot.submitted_at = uploaded - started, enqueued - uploaded, enqueued
        with self._lock:
            self._outstanding += 1
        self._inflight.put(slot)

    def _describe(self, frame: RawFrame) -> None:
        """Layout, colour and upload windows for frames like ``frame``. Kept as the same objects
        while frames keep coming alike: the kernel's and the graphs' caches compare identity."""
        fmt = pixel_format_for(frame.format)
        if fmt is None:
            raise InferenceError(f"the GPU path reads yuv420p, nv12, rgb24 or bgr24 frames, got "
                                 f"{frame.format!r}; open the source with format='yuv420p'")
        layout = FrameLayout(fmt, frame.height, frame.width)
        if layout != self._last_layout:
            rows, columns = self.preprocess.source_window(layout.height, layout.width)
            windows = layout.windows(rows, columns)
            seen = sum(w.nbytes for w in windows)
            # A few 2-D copies instead of one contiguous DMA pay off once they skip a good part
            # of the frame (shorter_crop of a wide frame: ~45% of a 16:9 one).
            small = seen <= _WINDOWED_UPLOAD * layout.nbytes
            self._windows = windows if self._windowed and small else None
            self._upload_bytes = seen if self._windows is not None else layout.nbytes
            self._last_layout = layout
        color = None
        if layout.is_yuv:
            color = YuvColor(frame.colorspace, frame.color_range)  # type: ignore[arg-type]
            if color == self._last_color:
                color = self._last_color
        self._last_color = color

    def _take_slot(self) -> _Slot:
        while True:
            if self._closed:
                raise ClosedResourceError("this GPU runner is closed")
            self._raise_if_failed()
            try:
                return self._free.get(timeout=_POLL)
            except queue.Empty:
                continue

    def _graphs_usable(self, batch: int) -> bool:
        return self._graphs_wanted and self._graph_failure is None and batch == self._max_batch

    def _stage(self, slot: _Slot, layout: FrameLayout, frames: Sequence[RawFrame]) -> bool:
        """With ``upload="pack"``, copy a batch with no frame in pinned memory into the slot's
        staging (only the window the preprocess reads, when windowed); say whether it did."""
        assert slot.staging is not None
        n = layout.nbytes
        if self._upload_mode != "pack" or any(pinned_storage(f, n) is not None
                                              or device_frame(f) is not None for f in frames):
            return False
        self._packer.pack(layout, frames, slot.staging.array, self._windows)
        return True

    def _upload(self, slot: _Slot, layout: FrameLayout, frames: Sequence[RawFrame],
                staged: bool) -> None:
        """Put the frames' planes on their way to ``slot.planes`` on the copy stream, between
        the slot's two upload events: from the slot's staging when ``staged``; frames in pinned
        memory without a host copy (their window, or one DMA each); the others as ``upload``
        says."""
        assert slot.staging is not None and slot.planes is not None
        copy = self._copy
        n = layout.nbytes
        on_device = [device_frame(f) for f in frames]
        if any(d is not None for d in on_device):
            # FFmpeg wrote these frames on the legacy default stream: read them after that (and
            # start the upload's clock after that wait).
            slot.decoded.record_legacy_stream()
            copy.wait(slot.decoded)
        slot.upload_start.record(stream=copy)
        if staged:
            self._copy_staged(slot, len(frames), n, copy)
            slot.uploaded.record(stream=copy)
            return
        windows = self._windows
        for i, frame in enumerate(frames):
            decoded = on_device[i]
            if decoded is not None:
                self._copy_device(slot.planes, layout, decoded, windows, i * n, copy)
                continue
            pinned = pinned_storage(frame, n)
            if pinned is not None and windows is not None:
                self._copy_windows(slot.planes, pinned, windows, 0, i * n, copy)
            elif pinned is not None:
                slot.planes.copy_from_host(pinned, stream=copy, nbytes=n, offset=i * n)
            elif self._upload_mode == "pack":
                # A batch mixing pinned and ordinary frames: pack this one alone.
                target = slot.staging.array[i * n:(i + 1) * n]
                self._packer.pack(layout, [frame], target, windows)
                self._copy_staged(slot, 1, n, copy, first=i)
            else:
                self._copy_pageable(slot.planes, layout, frame, offset=i * n)
        slot.uploaded.record(stream=copy)

    def _copy_staged(self, slot: _Slot, count: int, n: int, stream: Stream, *,
                     first: int = 0) -> None:
        """Frames ``first`` .. ``first + count`` of the slot's staging to its device planes."""
        assert slot.staging is not None and slot.planes is not None
        if self._windows is None:
            slot.planes.copy_from_host(slot.staging, stream=stream, nbytes=count * n,
                                       source_offset=first * n, offset=first * n)
            return
        for i in range(first, first + count):
            self._copy_windows(slot.planes, slot.staging, self._windows, i * n, i * n, stream)

    def _copy_windows(self, planes: DeviceBuffer, host: PinnedBuffer,
                      windows: tuple[PlaneWindow, ...], source_offset: int, offset: int,
                      stream: Stream) -> None:
        """One 2-D copy per plane of the pixels the preprocess reads, from the frame packed at
        ``source_offset`` in ``host`` to the frame at ``offset`` in ``planes``."""
        for w in windows:
            planes.copy_from_host_2d(host, stream=stream, width=w.width, height=w.rows,
                                     source_pitch=w.pitch, pitch=w.pitch,
                                     source_offset=source_offset + w.offset,
                                     offset=offset + w.offset)

    def _copy_device(self, planes: DeviceBuffer, layout: FrameLayout, frame: _DeviceFrame,
                     windows: tuple[PlaneWindow, ...] | None, offset: int, stream: Stream) -> None:
        """One device-to-device 2-D copy per plane of a frame in GPU memory (its window, or the
        whole plane) to the frame at ``offset`` in ``planes``."""
        if frame.released:
            raise InferenceError("a frame kept on the GPU was released before it was read")
        if frame.ordinal != self.device.ordinal:
            raise InferenceError(f"a frame decoded on CUDA device {frame.ordinal} cannot be read "
                                 f"by a runner on device {self.device.ordinal}: decode on the "
                                 f"engine's device (hwaccel_device={self.device.ordinal})")
        if len(frame.planes) != len(layout.planes):
            raise InferenceError(f"a {layout.format} frame has {len(layout.planes)} planes, got "
                                 f"{len(frame.planes)} in GPU memory")
        spans = layout.window_slices(windows) if windows is not None else None
        for k, (plane, where) in enumerate(zip(frame.planes, layout.planes)):
            if plane.rows < where.rows or plane.row_bytes < where.row_bytes:
                raise InferenceError(f"a plane of ({plane.rows}, {plane.row_bytes}) in GPU "
                                     f"memory cannot fill ({where.rows}, {where.row_bytes}) of a "
                                     f"{layout.format} {layout.height}x{layout.width} frame")
            rows, cols = spans[k] if spans is not None else (slice(0, where.rows),
                                                             slice(0, where.row_bytes))
            planes.copy_from_device_2d(
                plane.pointer + rows.start * plane.pitch + cols.start, stream=stream,
                width=cols.stop - cols.start, height=rows.stop - rows.start,
                source_pitch=plane.pitch, pitch=where.row_bytes,
                offset=offset + where.offset + rows.start * where.row_bytes + cols.start)
        self._device_frames += 1

    def _copy_pageable(self, planes: DeviceBuffer, layout: FrameLayout, frame: RawFrame, *,
                       offset: int) -> None:
        """One ``cudaMemcpyAsync`` per plane, whole, from ordinary memory (CUDA stages it).
        Whole, not the window: a pitched copy from pageable memory took 1.1-1.3 ms a 1080p
        frame on our H200, against ~0.5 ms for the whole frame (BENCHMARKS.md)."""
        if len(frame.planes) != len(layout.planes):
            raise InferenceError(f"a {layout.format} frame has {len(layout.planes)} "
                                 f"planes, got {len(frame.planes)}")
        for plane, where in zip(frame.planes, layout.planes):
            rows = plane.reshape(plane.shape[0], -1)
            if rows.shape[0] < where.rows or rows.shape[1] < where.row_bytes:
                raise InferenceError(f"a plane of {rows.shape} cannot fill "
                                     f"({where.rows}, {where.row_bytes}) of a "
                                     f"{layout.format} {layout.height}x{layout.width} frame")
            planes.copy_from_pageable(rows[:where.rows, :where.row_bytes], stream=self._copy,
                                      offset=offset + where.offset)

    def _enqueue_compute(self, slot: _Slot, layout: FrameLayout, color: YuvColor | None,
                         batch: int, *, upload_in_body: bool) -> None:
        """Preprocess, engine and output copy on the compute stream (one graph replay when
        captured), after the upload: on the copy stream, or, ``upload_in_body``, as the first
        step of the body itself, from the slot's staging."""
        assert slot.planes is not None
        compute = self._compute_stream
        if not upload_in_body:
            compute.wait(slot.uploaded)
        slot.upload_timed = not upload_in_body
        slot.compute_start.record(stream=compute)
        if slot.bound_batch != batch:
            h, w = self.preprocess.size
            shape = (batch, 3, h, w) if self._image.layout == "nchw" else (batch, h, w, 3)
            slot.context.set_input(self._image.spec.name, slot.input.pointer, shape)
            slot.bound_batch = batch
            slot.drop_graphs()

        def body() -> None:
            assert slot.planes is not None
            if upload_in_body:
                self._copy_staged(slot, batch, layout.nbytes, compute)
            slot.kernel.enqueue(slot.planes, layout, slot.input, stream=compute, color=color,
                                batch=batch)
            slot.context.enqueue(stream=compute.handle)
            for name, (dev, host) in slot.outputs.items():
                shape, dtype = self._output_frame[name]
                nbytes = batch * math.prod(shape) * dtype.itemsize
                dev.copy_to_host(host, stream=compute, nbytes=nbytes)

        use_graph = self._graphs_usable(batch)
        captured = slot.graphs.get(upload_in_body)
        if use_graph and (captured is None or captured.layout is not layout
                          or captured.color is not color):
            if captured is not None:
                del slot.graphs[upload_in_body]
                captured.graph.close()
            graph = self._capture(slot, body)
            captured = _SlotGraph(graph, layout, color) if graph is not None else None
            if captured is not None:
                slot.graphs[upload_in_body] = captured
        if use_graph and captured is not None:
            captured.graph.launch(stream=compute)
            self._graph_batches += 1
        else:
            body()
            self._plain_batches += 1
        slot.done.record(stream=compute)

    def _capture(self, slot: _Slot, body: Callable[[], None]) -> _GraphLike | None:
        """A graph of ``body`` for this slot, or ``None`` (and plain enqueue from now on)."""
        compute = self._compute_stream
        own_capture = getattr(slot.context, "capture_graph", None)
        self._graph_captures += 1
        try:
            if own_capture is not None:
                graph: _GraphLike = own_capture(body, stream=compute)
            else:
                body()  # an uncaptured run first (TensorRT needs it), then capture
                compute.synchronize()
                with self.device.capture(compute) as capture:
                    body()
                graph = capture.graph
        except (CudaError, RuntimeError) as exc:  # torch reports capture failures as RuntimeError
            self._graph_failure = f"{type(exc).__name__}: {exc}"
            compute.synchronize()
            return None
        return graph

    def _grow_raw(self, nbytes: int) -> None:
        """(Re)allocate every slot's staging and device planes for frames of ``nbytes``."""
        self.drain()
        capacity = self._max_batch * nbytes
        for slot in self._slots:
            slot.drop_graphs()
            for loan in (slot.staging, slot.planes):
                if loan is not None:
                    loan.release()
            slot.staging = slot.planes = None
        for pool in (self._staging_pool, self._planes_pool):
            if pool is not None:
                pool.close()
                self._made.remove(pool)
        self._staging_pool = self._keep(self.device.pinned_pool(
            capacity, len(self._slots), write_combined=_STAGING_WRITE_COMBINED))
        self._planes_pool = self._keep(self.device.device_pool(capacity, len(self._slots)))
        for slot in self._slots:
            slot.staging = self._staging_pool.acquire()
            slot.planes = self._planes_pool.acquire()
        self._raw_capacity = nbytes

    # -- completing ---------------------------------------------------------------------------
    def _wait_loop(self) -> None:
        self.device.make_current()
        while True:
            slot = self._inflight.get()
            if slot is None:
                return
            try:
                if self._error is None:
                    self._complete(slot)
            except BaseException as exc:  # noqa: BLE001 - handed to the submitting thread, chained
                if isinstance(exc, XInferError):
                    self._error = exc
                else:
                    err = InferenceError(f"completing a GPU batch failed: {type(exc).__name__}: {exc}")
                    err.__cause__ = exc
                    self._error = err
            finally:
                if self._error is not None and slot.on_error is not None:
                    slot.on_error(slot.frames, self._error)  # must not raise (see submit)
                slot.frames, slot.emit, slot.on_error = (), None, None
                self._free.put(slot)
                with self._lock:
                    self._outstanding -= 1
                    self._idle.notify_all()

    def _complete(self, slot: _Slot) -> None:
        slot.done.synchronize()
        completed = time.perf_counter()
        upload = (slot.uploaded.elapsed_ms(slot.upload_start) / 1e3 if slot.upload_timed
                  else None)
        compute = slot.done.elapsed_ms(slot.compute_start) / 1e3
        outputs: dict[str, npt.NDArray[np.generic]] = {}
        for name, (_dev, host) in slot.outputs.items():
            shape, dtype = self._output_frame[name]
            outputs[name] = host.view(dtype, (slot.batch, *shape)).copy()
        timings = GpuTimings(slot.pack, slot.enqueue, upload, compute, slot.submitted_at, completed)
        assert slot.emit is not None
        slot.emit(slot.frames, outputs, timings)  # first: the results are on their way
        with self._stats_lock:
            self._pack.append(slot.pack)
            self._enqueue.append(slot.enqueue)
            if upload is not None:
                self._upload_times.append(upload)
            self._compute.append(compute)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def drain(self) -> None:
        """Wait until every submitted batch has been emitted; raise the waiter's error if any."""
        with self._lock:
            while self._outstanding:
                self._idle.wait(_POLL)
        self._raise_if_failed()

    # -- closing ------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wait for work in flight (its results are still emitted), stop the waiter, free every
        slot, stream, event and pool. Safe to call twice; the backend stays open."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._lock:
                while self._outstanding:
                    self._idle.wait(_POLL)
        finally:
            self._inflight.put(None)
            self._waiter.join()
            self._release_all()

    def _release_all(self) -> None:
        errors: list[BaseException] = []
        for slot in getattr(self, "_slots", []):
            try:
                slot.close()
            except (CudaError, ClosedResourceError) as exc:
                errors.append(exc)
        for thing in reversed(self._made):
            try:
                thing.close()
            except CudaError as exc:
                errors.append(exc)
        self._made = []
        if errors:
            raise errors[0]

    def __enter__(self) -> GpuRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
