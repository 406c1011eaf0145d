"""Pinned host memory and device memory, allocated once in pools and lent out.

A pool allocates ``count`` buffers of ``nbytes`` in one allocation when it is made, and never
again: the steady state of a stream allocates nothing. ``acquire()`` lends a buffer; the loan is
returned with ``release()`` (or by leaving its ``with`` block). The pool owns the memory: closing
the pool (or its device) frees it, and loans still out become closed. A loan is the only way to
reach the memory, so two holders can never alias one buffer.

Pinned buffers are exposed as numpy arrays without copies (``loan.array``, ``loan.view``): such a
view is valid while the loan is held; do not keep it after ``release()``.

Host memory allocated by someone else (a shared-memory ring of decoded frames) can be registered
instead (``Device.register_host``): page-locked in place until the :class:`HostRegistration` is
closed, so copies read it by DMA as they read a pinned pool's buffers.

Copies (``DeviceBuffer.copy_from_host`` and friends) are asynchronous on the stream given, and
bounds-checked against both buffers before anything is enqueued.
"""

from __future__ import annotations

import ctypes
import math
import threading
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from cuda.bindings import runtime as cudart

from .._errors import ClosedResourceError
from .._lifecycle import NoPublicConstructor, leak_net
from ._status import check_runtime

if TYPE_CHECKING:
    from typing import Self

    from ._device import Device
    from ._stream import Stream

__all__ = ["DeviceArray", "DeviceBuffer", "DevicePool", "HostRegistration", "PinnedBuffer",
           "PinnedPool", "live_allocations"]

_H2D = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
_D2H = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
_ANY = cudart.cudaMemcpyKind.cudaMemcpyDefault  # the direction read from the addresses (UVA)
_HOST_ALIGN = 4096
_DEVICE_ALIGN = 256


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


# Allocations made by pools of this process and not yet freed, by kind: [count, bytes].
_LIVE: dict[str, list[int]] = {"pinned": [0, 0], "device": [0, 0], "registered": [0, 0]}
_LIVE_LOCK = threading.Lock()


def live_allocations() -> dict[str, tuple[int, int]]:
    """``{"pinned": (allocations, bytes), "device": (allocations, bytes), "registered": (ranges,
    bytes)}`` made by this process's pools and registrations and not freed or unregistered yet:
    what a leak check counts (a pool is one allocation)."""
    with _LIVE_LOCK:
        return {kind: (count, size) for kind, (count, size) in _LIVE.items()}


def _count(kind: str, size: int, sign: int) -> None:
    with _LIVE_LOCK:
        _LIVE[kind][0] += sign
        _LIVE[kind][1] += sign * size


def _free_host(pointer: int, size: int) -> None:
    _count("pinned", size, -1)
    check_runtime(cudart.cudaFreeHost(pointer), "cudaFreeHost")


def _free_device(pointer: int, size: int) -> None:
    _count("device", size, -1)
    check_runtime(cudart.cudaFree(pointer), "cudaFree")


def _check_pool_args(nbytes: int, count: int) -> None:
    if not (isinstance(nbytes, int) and nbytes > 0 and isinstance(count, int) and count > 0):
        raise ValueError(f"a pool needs nbytes > 0 and count > 0, got nbytes={nbytes!r} "
                         f"count={count!r}")


def _return_leaked_loan(pool_ref: weakref.ref[_Pool], index: int) -> None:
    pool = pool_ref()
    if pool is not None:
        pool._give_back(index)


class _Pool:
    """What pinned and device pools share: slots, lending, closing."""

    _what = "pool"

    def __init__(self, device: Device, nbytes: int, count: int, stride: int, base: int) -> None:
        self._device = device
        self._nbytes = nbytes
        self._count = count
        self._stride = stride
        self._base = base
        self._free = list(range(count - 1, -1, -1))
        self._lent: set[int] = set()
        self._cond = threading.Condition()
        self._closed = False

    @property
    def device(self) -> Device:
        return self._device

    @property
    def nbytes(self) -> int:
        """Size of each buffer."""
        return self._nbytes

    @property
    def count(self) -> int:
        return self._count

    @property
    def available(self) -> int:
        with self._cond:
            return len(self._free)

    @property
    def closed(self) -> bool:
        return self._closed

    def _take(self, timeout: float | None, wait: bool) -> int | None:
        with self._cond:
            if wait:
                self._cond.wait_for(lambda: self._free or self._closed, timeout)
            if self._closed:
                raise ClosedResourceError(f"the {self._what} is closed")
            if not self._free:
                if wait:
                    raise TimeoutError(f"no {self._what} buffer came back within {timeout} s "
                                       f"(all {self._count} are lent out)")
                return None
            index = self._free.pop()
            self._lent.add(index)
            return index

    def _give_back(self, index: int) -> None:
        with self._cond:
            if index in self._lent:
                self._lent.discard(index)
                if not self._closed:
                    self._free.append(index)
                self._cond.notify()

    def _pointer(self, index: int) -> int:
        return self._base + index * self._stride

    def _mark_closed(self) -> bool:
        with self._cond:
            if self._closed:
                return False
            self._closed = True
            self._free = []
            self._cond.notify_all()
            return True


class PinnedPool(_Pool, metaclass=NoPublicConstructor):
    """Page-locked host buffers. Made by :meth:`Device.pinned_pool`."""

    _what = "pinned pool"

    def __init__(self, device: Device, nbytes: int, count: int, write_combined: bool) -> None:
        _check_pool_args(nbytes, count)
        stride = _round_up(nbytes, _HOST_ALIGN)
        flags = cudart.cudaHostAllocPortable
        if write_combined:
            flags |= cudart.cudaHostAllocWriteCombined
        base = int(check_runtime(cudart.cudaHostAlloc(stride * count, flags),
                                 f"cudaHostAlloc({stride * count})"))
        _count("pinned", stride * count, +1)
        super().__init__(device, nbytes, count, stride, base)
        self._finalizer = leak_net(self, "pinned pool", _free_host, base, stride * count)
        # One numpy view of the whole allocation; loans slice it. No copies anywhere.
        raw = (ctypes.c_ubyte * (stride * count)).from_address(base)
        self._memory: npt.NDArray[np.uint8] = np.ctypeslib.as_array(raw)

    def acquire(self, timeout: float | None = None) -> PinnedBuffer:
        """Borrow a buffer, waiting up to ``timeout`` seconds (``None``: forever) for one to come
        back; ``TimeoutError`` if none does, ``ClosedResourceError`` if the pool closes."""
        index = self._take(timeout, wait=True)
        assert index is not None
        return PinnedBuffer._create(self, index)

    def try_acquire(self) -> PinnedBuffer | None:
        """Borrow a buffer if one is free now, else ``None``."""
        index = self._take(None, wait=False)
        return None if index is None else PinnedBuffer._create(self, index)

    def close(self) -> None:
        """Free the memory now; loans still out are closed. Safe to call twice."""
        if self._mark_closed() and self._finalizer.detach() is not None:
            self._memory = np.empty(0, np.uint8)
            _free_host(self._base, self._stride * self._count)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class DevicePool(_Pool, metaclass=NoPublicConstructor):
    """Device buffers (256-byte aligned). Made by :meth:`Device.device_pool`."""

    _what = "device pool"

    def __init__(self, device: Device, nbytes: int, count: int) -> None:
        _check_pool_args(nbytes, count)
        stride = _round_up(nbytes, _DEVICE_ALIGN)
        base = int(check_runtime(cudart.cudaMalloc(stride * count), f"cudaMalloc({stride * count})"))
        _count("device", stride * count, +1)
        super().__init__(device, nbytes, count, stride, base)
        self._finalizer = leak_net(self, "device pool", _free_device, base, stride * count)

    def acquire(self, timeout: float | None = None) -> DeviceBuffer:
        """Borrow a buffer; see :meth:`PinnedPool.acquire`."""
        index = self._take(timeout, wait=True)
        assert index is not None
        return DeviceBuffer._create(self, index)

    def try_acquire(self) -> DeviceBuffer | None:
        """Borrow a buffer if one is free now, else ``None``."""
        index = self._take(None, wait=False)
        return None if index is None else DeviceBuffer._create(self, index)

    def close(self) -> None:
        """Free the memory now (``cudaFree`` waits for the device); loans still out are closed."""
        if self._mark_closed() and self._finalizer.detach() is not None:
            _free_device(self._base, self._stride * self._count)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _Loan:
    """A buffer lent by a pool: its pointer, size, and release."""

    def __init__(self, pool: _Pool, index: int) -> None:
        self._pool = pool
        self._index = index
        self._pointer = pool._pointer(index)
        self._nbytes = pool.nbytes
        self._released = False
        self._finalizer = leak_net(self, "pool buffer (release() it, or the pool runs dry)",
                                   _return_leaked_loan, weakref.ref(pool), index)

    @property
    def pointer(self) -> int:
        """The raw address (host for pinned, device for device buffers)."""
        self._check_open()
        return self._pointer

    @property
    def nbytes(self) -> int:
        return self._nbytes

    @property
    def closed(self) -> bool:
        return self._released or self._pool.closed

    def _check_open(self) -> None:
        if self._released:
            raise ClosedResourceError("this buffer was released back to its pool")
        if self._pool.closed:
            raise ClosedResourceError("the pool this buffer came from is closed")

    def check_span(self, offset: int, nbytes: int, what: str) -> None:
        """``ValueError`` naming ``what`` unless bytes ``[offset, offset + nbytes)`` fit this buffer."""
        if offset < 0 or nbytes < 0 or offset + nbytes > self._nbytes:
            raise ValueError(f"{what}: bytes [{offset}, {offset + nbytes}) do not fit a buffer of "
                             f"{self._nbytes} bytes")

    def release(self) -> None:
        """Give the buffer back to its pool. Safe to call twice."""
        if not self._released:
            self._released = True
            self._finalizer.detach()
            self._pool._give_back(self._index)

    def close(self) -> None:
        """Same as :meth:`release` (so loans fit ``close``-based cleanup)."""
        self.release()


class PinnedBuffer(_Loan, metaclass=NoPublicConstructor):
    """A page-locked host buffer lent by a :class:`PinnedPool`."""

    def __init__(self, pool: PinnedPool, index: int) -> None:
        super().__init__(pool, index)
        start = index * pool._stride
        self._array = pool._memory[start:start + pool.nbytes]

    @property
    def array(self) -> npt.NDArray[np.uint8]:
        """The whole buffer as a 1-D uint8 numpy array (no copy; valid while the loan is held)."""
        self._check_open()
        return self._array

    def view(self, dtype: npt.DTypeLike, shape: Sequence[int], offset: int = 0) -> npt.NDArray[Any]:
        """A C-contiguous typed view of ``shape`` starting ``offset`` bytes in (no copy)."""
        self._check_open()
        dt = np.dtype(dtype)
        count = math.prod(int(d) for d in shape)  # (np.prod of a tuple costs ~10 us a call)
        self.check_span(offset, count * dt.itemsize, "PinnedBuffer.view")
        if offset % dt.alignment:
            raise ValueError(f"offset {offset} is not aligned for {dt}")
        return self._array[offset:offset + count * dt.itemsize].view(dt).reshape(tuple(shape))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class DeviceBuffer(_Loan, metaclass=NoPublicConstructor):
    """A device buffer lent by a :class:`DevicePool`. Copies are asynchronous on ``stream``."""

    def copy_from_host(self, source: PinnedBuffer, *, stream: Stream, nbytes: int | None = None,
                       source_offset: int = 0, offset: int = 0) -> None:
        """Enqueue ``nbytes`` (default: all of ``source`` from ``source_offset``) pinned -> here."""
        self._check_open()
        source._check_open()
        n = source.nbytes - source_offset if nbytes is None else nbytes
        source.check_span(source_offset, n, "copy_from_host source")
        self.check_span(offset, n, "copy_from_host destination")
        check_runtime(cudart.cudaMemcpyAsync(self._pointer + offset, source._pointer + source_offset,
                                             n, _H2D, stream.raw), "cudaMemcpyAsync(host to device)")

    def copy_from_host_2d(self, source: PinnedBuffer, *, stream: Stream, width: int, height: int,
                          source_pitch: int, pitch: int | None = None, source_offset: int = 0,
                          offset: int = 0) -> None:
        """Enqueue a pitched copy: ``height`` rows of ``width`` bytes, rows ``source_pitch`` apart
        in ``source`` and ``pitch`` (default ``width``) apart here."""
        self._check_open()
        source._check_open()
        dpitch = width if pitch is None else pitch
        if width <= 0 or height <= 0 or source_pitch < width or dpitch < width:
            raise ValueError(f"copy_from_host_2d: width={width} height={height} "
                             f"source_pitch={source_pitch} pitch={dpitch} is not a valid 2-D copy")
        source.check_span(source_offset, source_pitch * (height - 1) + width,
                            "copy_from_host_2d source")
        self.check_span(offset, dpitch * (height - 1) + width, "copy_from_host_2d destination")
        check_runtime(cudart.cudaMemcpy2DAsync(self._pointer + offset, dpitch,
                                               source._pointer + source_offset, source_pitch,
                                               width, height, _H2D, stream.raw),
                      "cudaMemcpy2DAsync(host to device)")

    def copy_from_address(self, source: int, nbytes: int, *, stream: Stream, offset: int = 0
                          ) -> None:
        """Enqueue a copy of ``nbytes`` from memory that is not ours, at address ``source``
        (as :meth:`copy_from_address_2d`, contiguous)."""
        self._check_open()
        if source <= 0 or nbytes <= 0:
            raise ValueError(f"copy_from_address: source=0x{source:x} nbytes={nbytes} is not a "
                             f"valid copy")
        self.check_span(offset, nbytes, "copy_from_address destination")
        check_runtime(cudart.cudaMemcpyAsync(self._pointer + offset, source, nbytes, _ANY,
                                             stream.raw), "cudaMemcpyAsync(to device)")

    def copy_from_address_2d(self, source: int, *, stream: Stream, width: int, height: int,
                             source_pitch: int, pitch: int | None = None, offset: int = 0
                             ) -> None:
        """Enqueue a pitched copy from memory that is not ours, at address ``source``: device
        memory on this device (a frame NVDEC decoded) or host memory registered with
        :meth:`Device.register_host` (a frame in a decoder process's ring), which must stay valid
        until the copy has run: ``height`` rows of ``width`` bytes, rows ``source_pitch`` apart
        there and ``pitch`` (default ``width``) apart here. CUDA tells the two kinds of memory
        apart by the address (unified addressing)."""
        self._check_open()
        dpitch = width if pitch is None else pitch
        if source <= 0 or width <= 0 or height <= 0 or source_pitch < width or dpitch < width:
            raise ValueError(f"copy_from_address_2d: source=0x{source:x} width={width} "
                             f"height={height} source_pitch={source_pitch} pitch={dpitch} is "
                             f"not a valid 2-D copy")
        self.check_span(offset, dpitch * (height - 1) + width, "copy_from_address_2d destination")
        check_runtime(cudart.cudaMemcpy2DAsync(self._pointer + offset, dpitch, source,
                                               source_pitch, width, height, _ANY, stream.raw),
                      "cudaMemcpy2DAsync(to device)")

    def copy_to_host(self, destination: PinnedBuffer, *, stream: Stream, nbytes: int | None = None,
                     offset: int = 0, destination_offset: int = 0) -> None:
        """Enqueue ``nbytes`` (default: all of this buffer from ``offset``) here -> pinned."""
        self._check_open()
        destination._check_open()
        n = self._nbytes - offset if nbytes is None else nbytes
        self.check_span(offset, n, "copy_to_host source")
        destination.check_span(destination_offset, n, "copy_to_host destination")
        check_runtime(cudart.cudaMemcpyAsync(destination._pointer + destination_offset,
                                             self._pointer + offset, n, _D2H, stream.raw),
                      "cudaMemcpyAsync(device to host)")

    def fill(self, byte: int, *, stream: Stream, nbytes: int | None = None, offset: int = 0) -> None:
        """Enqueue setting ``nbytes`` bytes (default: to the end) to ``byte``."""
        self._check_open()
        n = self._nbytes - offset if nbytes is None else nbytes
        self.check_span(offset, n, "fill")
        check_runtime(cudart.cudaMemsetAsync(self._pointer + offset, byte, n, stream.raw),
                      "cudaMemsetAsync")

    def write(self, array: npt.NDArray[Any], *, offset: int = 0) -> None:
        """Copy a host array (pageable memory) here and wait for it: slow, for tests and the
        CPU-path baseline only. The hot path uploads from pinned buffers."""
        self._check_open()
        data = np.ascontiguousarray(array)
        self.check_span(offset, data.nbytes, "write")
        check_runtime(cudart.cudaMemcpy(self._pointer + offset, data.ctypes.data, data.nbytes, _H2D),
                      "cudaMemcpy(host to device)")

    def read(self, dtype: npt.DTypeLike, shape: Sequence[int], *, offset: int = 0) -> npt.NDArray[Any]:
        """Copy ``shape`` elements of ``dtype`` from here into a new host array, waiting for the
        copy (and, like any ``cudaMemcpy``, for prior work on the legacy stream): tests only."""
        self._check_open()
        out = np.empty(tuple(shape), dtype=np.dtype(dtype))
        self.check_span(offset, out.nbytes, "read")
        check_runtime(cudart.cudaMemcpy(out.ctypes.data, self._pointer + offset, out.nbytes, _D2H),
                      "cudaMemcpy(device to host)")
        return out

    def view(self, dtype: npt.DTypeLike, shape: Sequence[int], offset: int = 0) -> DeviceArray:
        """A typed C-contiguous view (``__cuda_array_interface__``) for zero-copy hand-off to
        PyTorch, CuPy or Numba; valid while the loan is held."""
        self._check_open()
        dt = np.dtype(dtype)
        shape_t = tuple(int(d) for d in shape)
        self.check_span(offset, int(np.prod(shape_t, dtype=np.int64)) * dt.itemsize,
                          "DeviceBuffer.view")
        return DeviceArray(self, self._pointer + offset, dt, shape_t)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class DeviceArray:
    """A typed window on a :class:`DeviceBuffer` that speaks ``__cuda_array_interface__`` (v3).

    It keeps its buffer loan alive (the consumer, e.g. ``torch.as_tensor``, holds this object), and
    declares no stream: ordering is the caller's, through our own streams and events.
    """

    def __init__(self, buffer: DeviceBuffer, pointer: int, dtype: np.dtype[Any],
                 shape: tuple[int, ...]) -> None:
        self._buffer = buffer
        self.pointer = pointer
        self.dtype = dtype
        self.shape = shape

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        self._buffer._check_open()
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.pointer, False),
                "version": 3, "strides": None, "stream": None}


class HostRegistration(metaclass=NoPublicConstructor):
    """``nbytes`` of host memory at ``address`` that someone else allocated (and will unmap),
    page-locked and mapped for every device by ``cudaHostRegister`` until :meth:`close`. Made by
    :meth:`Device.register_host`; closing the device closes it too. Close it before the memory
    is unmapped; after that, nothing may copy from it. Safe to close twice, from any thread."""

    def __init__(self, device: Device, address: int, nbytes: int) -> None:
        if address <= 0 or address % _HOST_ALIGN or nbytes <= 0:
            raise ValueError(f"register a page-aligned host range: got address=0x{address:x} "
                             f"nbytes={nbytes}")
        self._device = device
        self.address = address
        self.nbytes = nbytes
        self._lock = threading.Lock()
        self._closed = False
        check_runtime(cudart.cudaHostRegister(address, nbytes, cudart.cudaHostRegisterDefault),
                      "cudaHostRegister")
        _count("registered", nbytes, +1)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _count("registered", self.nbytes, -1)
        self._device.make_current()
        check_runtime(cudart.cudaHostUnregister(self.address), "cudaHostUnregister")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "registered"
        return f"<HostRegistration 0x{self.address:x} {self.nbytes} bytes {state}>"
