"""``Stream`` and ``Event``: ordering and timing of GPU work.

Both are made by a :class:`~xinfer_stream.cuda.Device` and owned by whoever asked for them.
Streams are non-blocking (they never synchronise with the legacy default stream). Events order
work across streams (``stream.wait(event)``), tell the host when work is done
(``event.synchronize()``, which releases the GIL while it waits) and time it
(``end.elapsed_ms(start)`` on events made with ``timing=True``).
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from cuda.bindings import runtime as cudart

from .._errors import ClosedResourceError
from .._lifecycle import NoPublicConstructor, leak_net
from ._status import check_runtime, runtime_error

if TYPE_CHECKING:
    from typing import Self

    from ._device import Device

__all__ = ["Event", "Stream"]

# The legacy default stream ("stream 0") of the current device's primary context: where FFmpeg's
# CUDA decoder (NVDEC) enqueues the copies that write its frames.
_LEGACY_STREAM = cudart.cudaStream_t(cudart.cudaStreamLegacy)
_NOT_READY = cudart.cudaError_t.cudaErrorNotReady
_SUCCESS = cudart.cudaError_t.cudaSuccess


def _destroy_stream(handle: Any) -> None:
    check_runtime(cudart.cudaStreamDestroy(handle), "cudaStreamDestroy")


def _destroy_event(handle: Any) -> None:
    check_runtime(cudart.cudaEventDestroy(handle), "cudaEventDestroy")


class Stream(metaclass=NoPublicConstructor):
    """A non-blocking CUDA stream. Made by :meth:`Device.create_stream`.

    ``handle`` is the raw ``cudaStream_t`` as an int (for TensorRT's ``execute_async_v3`` and
    ``torch.cuda.ExternalStream``); ``__cuda_stream__`` exposes it to libraries that speak the
    CUDA stream protocol (cuda.core, CuPy).
    """

    def __init__(self, device: Device, priority: int) -> None:
        flags = cudart.cudaStreamNonBlocking
        self._raw = check_runtime(cudart.cudaStreamCreateWithPriority(flags, priority),
                                  "cudaStreamCreateWithPriority")
        self._handle = int(self._raw)
        self._device = device
        self._capturing = False
        self._finalizer = leak_net(self, "CUDA stream", _destroy_stream, self._raw)

    @property
    def handle(self) -> int:
        self._check_open()
        return self._handle

    @property
    def raw(self) -> Any:
        """The cuda-python ``cudaStream_t`` (for calls in this package; avoids re-wrapping)."""
        return self._raw

    @property
    def device(self) -> Device:
        return self._device

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.handle)

    def __repr__(self) -> str:
        return f"<Stream 0x{self._handle:x}{' closed' if self.closed else ''}>"

    def wait(self, event: Event) -> None:
        """Work enqueued on this stream after this call waits for ``event`` (no host wait)."""
        self._check_open()
        event._check_open()
        check_runtime(cudart.cudaStreamWaitEvent(self._raw, event.raw, 0), "cudaStreamWaitEvent")

    def synchronize(self) -> None:
        """Block the calling thread until the stream's work is done (releases the GIL)."""
        self._check_open()
        check_runtime(cudart.cudaStreamSynchronize(self._raw), "cudaStreamSynchronize")

    def _begin_capture(self) -> None:
        self._check_open()
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check_runtime(cudart.cudaStreamBeginCapture(self._raw, mode), "cudaStreamBeginCapture")
        self._capturing = True

    def _end_capture(self, *, failed: bool) -> Any:
        """End a capture; the raw ``cudaGraph_t``, or ``None`` when ``failed`` (then discarded).

        A capture invalidated by an unsupported call reports ``cudaErrorStreamCaptureInvalidated``
        here; the sticky launch error is cleared so the caller can fall back to plain enqueue.
        """
        self._capturing = False
        status, graph = cudart.cudaStreamEndCapture(self._raw)
        if status != _SUCCESS:
            cudart.cudaGetLastError()  # clear the capture error so later calls are not poisoned
            if failed:
                return None
            raise runtime_error(status, "cudaStreamEndCapture")
        if failed:
            check_runtime(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")
            return None
        return graph

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise ClosedResourceError(f"the CUDA stream 0x{self._handle:x} is closed")

    def close(self) -> None:
        """Destroy the stream (work already enqueued still completes). Safe to call twice."""
        if self._finalizer.detach() is not None:
            _destroy_stream(self._raw)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Event(metaclass=NoPublicConstructor):
    """A CUDA event. Made by :meth:`Device.create_event`."""

    def __init__(self, device: Device, timing: bool, blocking: bool) -> None:
        flags = 0 if timing else cudart.cudaEventDisableTiming
        if blocking:
            flags |= cudart.cudaEventBlockingSync
        self._raw = check_runtime(cudart.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")
        self._handle = int(self._raw)
        self._timing = timing
        self._device = device
        self._finalizer = leak_net(self, "CUDA event", _destroy_event, self._raw)

    @property
    def handle(self) -> int:
        self._check_open()
        return self._handle

    @property
    def raw(self) -> Any:
        return self._raw

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __repr__(self) -> str:
        return f"<Event 0x{self._handle:x}{' closed' if self.closed else ''}>"

    def record(self, *, stream: Stream) -> None:
        """Capture the work enqueued on ``stream`` so far; the event completes when it does."""
        self._check_open()
        stream._check_open()
        check_runtime(cudart.cudaEventRecord(self._raw, stream.raw), "cudaEventRecord")

    def record_legacy_stream(self) -> None:
        """Capture the work enqueued so far on the current device's legacy default stream, which
        our own streams never synchronise with (they are non-blocking). A stream that then
        :meth:`Stream.wait` s for this event runs after that work: how a reader of frames that
        FFmpeg's CUDA decoder wrote (on that stream) waits for them without blocking the host."""
        self._check_open()
        check_runtime(cudart.cudaEventRecord(self._raw, _LEGACY_STREAM),
                      "cudaEventRecord(legacy default stream)")

    def query(self) -> bool:
        """``True`` when the recorded work has finished (never blocks)."""
        self._check_open()
        status = cudart.cudaEventQuery(self._raw)[0]
        if status == _SUCCESS:
            return True
        if status == _NOT_READY:  # pending: not an error
            return False
        raise runtime_error(status, "cudaEventQuery")

    def synchronize(self) -> None:
        """Block the calling thread until the recorded work has finished (releases the GIL)."""
        self._check_open()
        check_runtime(cudart.cudaEventSynchronize(self._raw), "cudaEventSynchronize")

    def elapsed_ms(self, start: Event) -> float:
        """Milliseconds of GPU time from ``start`` to this event (both recorded and finished,
        both made with ``timing=True``)."""
        if not (self._timing and start._timing):
            raise ValueError("elapsed_ms needs two events made with create_event(timing=True)")
        return float(check_runtime(cudart.cudaEventElapsedTime(start._raw, self._raw),
                                   "cudaEventElapsedTime"))

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise ClosedResourceError(f"the CUDA event 0x{self._handle:x} is closed")

    def close(self) -> None:
        """Destroy the event. Safe to call twice."""
        if self._finalizer.detach() is not None:
            _destroy_event(self._raw)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
