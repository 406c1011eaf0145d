"""The CUDA layer: the only part of xinfer-stream that imports cuda-python (``cuda.bindings``).

Works with cuda-python 12.9+ and 13.x. Everything starts from a :class:`Device`, which makes and
owns streams, events, pinned and device pools, compiled modules and captured graphs; closing the
device closes them all. Every CUDA call's status is checked and a failure raises
:class:`~xinfer_stream.CudaError` reading ``NAME: explanation (in call)``.

Importing this package needs no GPU; :func:`unavailable_reason` says whether one is usable.
"""

from ._device import Device, device_count, memory_info, unavailable_reason
from ._graph import Graph, launch_graph_handle
from ._kernel import Kernel, KernelArgs, Module, default_cache_dir, nvrtc_version
from ._memory import (DeviceArray, DeviceBuffer, DevicePool, HostRegistration, PinnedBuffer,
                      PinnedPool, live_allocations)
from ._stream import Event, Stream

__all__ = ["Device", "DeviceArray", "DeviceBuffer", "DevicePool", "Event", "Graph",
           "HostRegistration", "Kernel", "KernelArgs", "Module", "PinnedBuffer", "PinnedPool",
           "Stream", "default_cache_dir", "device_count", "launch_graph_handle",
           "live_allocations", "memory_info", "nvrtc_version", "unavailable_reason"]
