"""``Device``: one CUDA device, the factory and owner of every CUDA resource made on it.

The device is used through its *primary context*, the one the CUDA runtime and PyTorch share, so
buffers and streams made here can be handed to other libraries in the same process. Closing a
``Device`` closes everything it made (streams, events, pools, modules), newest first; the primary
context itself is left alone, because other libraries in the process may be using it.

There is no hidden global state: nothing is made until a ``Device`` is, and every method makes the
device current on the calling thread before it touches CUDA.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar

from cuda.bindings import runtime as cudart

from .._errors import ClosedResourceError, CudaError
from ._graph import Graph
from ._kernel import Module, compile_cached, default_cache_dir
from ._memory import DevicePool, HostRegistration, PinnedPool
from ._status import check_runtime, library_error
from ._stream import Event, Stream

if TYPE_CHECKING:
    from typing import Self

__all__ = ["Device", "device_count", "memory_info", "unavailable_reason"]


class _Closable(Protocol):
    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


_T = TypeVar("_T", bound=_Closable)


def device_count() -> int:
    """How many CUDA devices this process can use; ``CudaError`` when CUDA itself is unusable
    (no driver: ``cudaErrorInsufficientDriver``; no GPU: ``cudaErrorNoDevice``)."""
    try:
        return int(check_runtime(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))
    except RuntimeError as exc:  # cuda-python could not load the driver library at all
        if isinstance(exc, CudaError):
            raise
        raise library_error(exc, "the CUDA driver (libcuda)", "cudaGetDeviceCount") from exc


def unavailable_reason(ordinal: int = 0) -> str | None:
    """``None`` when device ``ordinal`` is usable, else why not (for skips and error messages).

    A narrow probe: it asks the runtime how many devices exist and nothing else.
    """
    try:
        count = device_count()
    except CudaError as exc:
        return f"no usable CUDA device: {exc}"
    if ordinal >= count:
        return f"no CUDA device {ordinal}: this process sees {count} device(s)"
    return None


def memory_info(ordinal: int = 0) -> tuple[int, int]:
    """``(free, total)`` bytes of device ``ordinal``'s memory, as ``cudaMemGetInfo`` reports it.

    Device-wide: ``total - free`` counts every allocation on the GPU (this package's pools,
    PyTorch's cache, the CUDA contexts themselves, other processes), so it is what a soak or a
    monitor samples. Makes the device current on the calling thread (initialising its primary
    context if need be); needs no :class:`Device`. ``CudaError`` when the device is unusable.
    """
    try:
        check_runtime(cudart.cudaSetDevice(ordinal), f"cudaSetDevice({ordinal})")
        free, total = check_runtime(cudart.cudaMemGetInfo(), "cudaMemGetInfo")
    except RuntimeError as exc:  # cuda-python could not load the driver library at all
        raise library_error(exc, "the CUDA driver (libcuda)", "cudaMemGetInfo") from exc
    return int(free), int(total)


class Device:
    """CUDA device ``ordinal`` (default 0). An owner: use it as a context manager or ``close()`` it.

    ``Device(0)`` twice gives two owners of independent resources on the same GPU; each closes only
    what it made.
    """

    def __init__(self, ordinal: int = 0) -> None:
        count = device_count()
        if not 0 <= ordinal < count:
            raise CudaError("cudaErrorInvalidDevice",
                            f"device {ordinal} was asked for but this process sees {count} CUDA "
                            "device(s); pass an ordinal below that (CUDA_VISIBLE_DEVICES may hide "
                            "some)", "Device")
        self._ordinal = ordinal
        self._lock = threading.Lock()
        self._children: list[weakref.ref[_Closable]] = []
        self._modules: dict[tuple[str, tuple[str, ...]], Module] = {}
        self._closed = False
        self.make_current()
        # cudaFree(0) initialises the primary context now rather than inside the first real call.
        check_runtime(cudart.cudaFree(0), "cudaFree(0) (initialising the primary context)")
        props = check_runtime(cudart.cudaGetDeviceProperties(ordinal), "cudaGetDeviceProperties")
        self._name = bytes(props.name).split(b"\0", 1)[0].decode(errors="replace")
        self._capability = (int(props.major), int(props.minor))
        self._multiprocessors = int(props.multiProcessorCount)
        self._total_memory = int(props.totalGlobalMem)

    # -- identity ---------------------------------------------------------------------------
    @property
    def ordinal(self) -> int:
        return self._ordinal

    @property
    def name(self) -> str:
        """The marketing name, e.g. ``'NVIDIA H100 80GB HBM3'``."""
        return self._name

    @property
    def compute_capability(self) -> tuple[int, int]:
        return self._capability

    @property
    def multiprocessors(self) -> int:
        return self._multiprocessors

    @property
    def total_memory(self) -> int:
        return self._total_memory

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"sm_{self._capability[0]}{self._capability[1]}"
        return f"<Device {self._ordinal} {self._name!r} {state}>"

    # -- context ----------------------------------------------------------------------------
    def make_current(self) -> None:
        """Make this device's primary context current on the calling thread (one runtime call).

        Every factory method does this; so do the per-frame entry points of the layers above
        (one call per frame, not per CUDA call).
        """
        check_runtime(cudart.cudaSetDevice(self._ordinal), f"cudaSetDevice({self._ordinal})")

    def share_with_ffmpeg(self) -> None:
        """Let FFmpeg's CUDA decoder (NVDEC) work in this device's primary context, the one the
        CUDA runtime and so this package use: frames it decodes are then readable here.

        FFmpeg shares a primary context only when its scheduling flag is "blocking sync" (it
        refuses one already active with another flag: "Operation not supported"), so this sets
        that flag, for the whole process and from now on: a thread waiting for this device
        (``Event.synchronize``, PyTorch's synchronisations) then sleeps instead of spinning.
        That costs a wake-up of some microseconds a wait and saves a spinning core.
        """
        self._check_open()
        self.make_current()
        check_runtime(cudart.cudaSetDeviceFlags(cudart.cudaDeviceScheduleBlockingSync),
                      "cudaSetDeviceFlags(cudaDeviceScheduleBlockingSync)")

    def synchronize(self) -> None:
        """Block until all work on this device has finished (tests and teardown only)."""
        self._check_open()
        self.make_current()
        check_runtime(cudart.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

    # -- factories --------------------------------------------------------------------------
    def create_stream(self, *, priority: int = 0) -> Stream:
        """A new non-blocking stream (it does not synchronise with the legacy default stream).

        ``priority``: lower numbers are higher priority; clamped by CUDA to the device's range.
        """
        self._check_open()
        self.make_current()
        return self._adopt(Stream._create(self, priority))

    def create_event(self, *, timing: bool = False, blocking: bool = False) -> Event:
        """A new event. ``timing=True`` allows :meth:`Event.elapsed_ms` (slightly costlier to
        record); ``blocking=True`` makes :meth:`Event.synchronize` sleep instead of spin."""
        self._check_open()
        self.make_current()
        return self._adopt(Event._create(self, timing, blocking))

    def pinned_pool(self, nbytes: int, count: int, *, write_combined: bool = False) -> PinnedPool:
        """``count`` page-locked host buffers of ``nbytes`` each, allocated now, lent by ``acquire``.

        ``write_combined=True`` suits buffers the CPU only writes and the GPU only reads (uploads);
        CPU reads from such memory are very slow.
        """
        self._check_open()
        self.make_current()
        return self._adopt(PinnedPool._create(self, nbytes, count, write_combined))

    def device_pool(self, nbytes: int, count: int) -> DevicePool:
        """``count`` device buffers of ``nbytes`` each (256-byte aligned), allocated now."""
        self._check_open()
        self.make_current()
        return self._adopt(DevicePool._create(self, nbytes, count))

    def register_host(self, address: int, nbytes: int) -> HostRegistration:
        """Page-lock ``nbytes`` of host memory at ``address`` (page-aligned, allocated by someone
        else, e.g. a shared-memory ring) until the returned registration is closed, so copies
        read it by DMA, asynchronously, without staging. Registering costs about what pinning a
        pool of that size does: once per range, never per frame."""
        self._check_open()
        self.make_current()
        return self._adopt(HostRegistration._create(self, address, nbytes))

    def load_module(self, source: str, *, name: str, options: Sequence[str] = (),
                    cache_dir: str | os.PathLike[str] | None = None) -> Module:
        """The CUDA C++ ``source`` compiled with NVRTC for this device and loaded.

        Compiled once per (source, options, device architecture, NVRTC version): the CUBIN is
        cached in memory on this device and on disk under ``cache_dir`` (default
        ``$XDG_CACHE_HOME/xinfer-stream/kernels``). The module belongs to this device and is
        unloaded when the device closes; calling again with the same source and options returns
        the same module.
        """
        self._check_open()
        key = (source, tuple(options))
        with self._lock:
            module = self._modules.get(key)
        if module is not None and not module.closed:
            return module
        self.make_current()
        directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        image = compile_cached(source, name=name, options=tuple(options),
                               capability=self._capability, cache_dir=directory)
        try:
            module = Module._create(self, image, name)
        except CudaError:
            # A cache entry that no longer loads (truncated, another driver): compile afresh.
            image = compile_cached(source, name=name, options=tuple(options),
                                   capability=self._capability, cache_dir=directory, refresh=True)
            module = Module._create(self, image, name)
        self._adopt(module)
        with self._lock:
            self._modules[key] = module
        return module

    def capture(self, stream: Stream) -> _Capture:
        """``with device.capture(stream) as capture:`` enqueue work; afterwards ``capture.graph``
        holds the instantiated :class:`Graph` (owned by this device). Capture uses the
        thread-local mode, so other threads' CUDA calls are unaffected."""
        self._check_open()
        return _Capture(self, stream)

    # -- ownership --------------------------------------------------------------------------
    def _adopt(self, child: _T) -> _T:
        with self._lock:
            if self._closed:
                child.close()
                raise ClosedResourceError(f"{self!r} was closed while a resource was being made")
            self._children = [ref for ref in self._children if ref() is not None]
            self._children.append(weakref.ref(child))
        return child

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"CUDA device {self._ordinal} ({self._name}) is closed")

    def close(self) -> None:
        """Close everything this device made (newest first). Safe to call twice.

        Waits for the device to finish its work first, so no buffer is freed under a running
        kernel or copy.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            children = [child for ref in reversed(self._children) if (child := ref()) is not None]
            self._children = []
            self._modules = {}
        errors: list[CudaError] = []
        try:
            self.make_current()
            check_runtime(cudart.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
        except CudaError as exc:
            errors.append(exc)
        for child in children:
            try:
                child.close()
            except CudaError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _Capture:
    """The context manager behind :meth:`Device.capture`."""

    def __init__(self, device: Device, stream: Stream) -> None:
        self._device = device
        self._stream = stream
        self._graph: Graph | None = None

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            raise RuntimeError("the capture has not finished yet; read .graph after the with block")
        return self._graph

    def __enter__(self) -> Self:
        self._device.make_current()
        self._stream._begin_capture()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        graph = self._stream._end_capture(failed=exc is not None)
        if exc is None:
            self._graph = self._device._adopt(Graph._create(self._device, graph))
