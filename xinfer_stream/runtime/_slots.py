"""A slot: what one in-flight batch owns on the GPU, and the CUDA graph it replays.

A slot holds an execution context, a preprocess kernel (its argument block), the device input
tensor, device and pinned outputs, pinned staging and device planes for the raw frames, three events
and its captured graphs (one a batch size). Its memory is lent by the runner's pools; :meth:`close`
gives every loan back and frees the events (the runner frees the pools). While a batch is in flight
nothing but the GPU touches the slot: the runner takes a slot only from its free list, and puts it
back once the waiter has synchronised on ``done`` and copied the outputs out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..cuda import Device, DeviceBuffer, DevicePool, Event, PinnedBuffer, PinnedPool
from ..engines import GpuExecutionContext
from ..preprocess import Preprocess
from ..preprocess._color import YuvColor
from ..preprocess._kernel import PreprocessKernel
from ._upload import UploadPlan

__all__ = ["GraphLike", "Slot", "SlotGraph"]


class GraphLike(Protocol):
    def launch(self, *, stream: Any) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SlotGraph:
    """A slot's captured graph and what it was captured for: the upload plan and colour
    (compared by identity: the runner keeps those objects while frames come alike), and whether
    it begins with the upload from the staging (host frames) or not (frames in GPU memory)."""

    graph: GraphLike
    plan: UploadPlan
    color: YuvColor | None
    from_staging: bool

    def fits(self, plan: UploadPlan, color: YuvColor | None, from_staging: bool) -> bool:
        return self.plan is plan and self.color is color and self.from_staging == from_staging


class Slot:
    """One in-flight batch's resources (see the module docstring)."""

    def __init__(self, device: Device, context: GpuExecutionContext, preprocess: Preprocess,
                 input_pool: DevicePool, output_pools: dict[str, tuple[DevicePool, PinnedPool]]
                 ) -> None:
        self.context = context
        self.kernel = PreprocessKernel(device, preprocess)
        self.input: DeviceBuffer = input_pool.acquire()
        self.outputs: dict[str, tuple[DeviceBuffer, PinnedBuffer]] = {
            name: (dev.acquire(), host.acquire()) for name, (dev, host) in output_pools.items()}
        for name, (dev, _host) in self.outputs.items():
            context.set_output(name, dev.pointer)
        self.compute_start: Event = device.create_event(timing=True)
        self.done: Event = device.create_event(timing=True)
        # Recorded on the legacy default stream before frames NVDEC wrote there are read.
        self.decoded: Event = device.create_event()
        self.staging: PinnedBuffer | None = None
        self.planes: DeviceBuffer | None = None
        # Captured graphs by batch size (one, max_batch, unless the runner pads to buckets).
        self.graphs: dict[int, SlotGraph] = {}
        self.bound_batch = 0
        # What is in flight in this slot.
        self.frames: Sequence[Any] = ()
        self.emit: Callable[..., None] | None = None
        self.on_error: Callable[..., None] | None = None
        self.pack = 0.0
        self.enqueue = 0.0
        self.submitted_at = 0.0

    def drop_graph(self, batch: int | None = None) -> None:
        """Close the graph captured for ``batch`` frames (``None``: every graph)."""
        if batch is None:
            graphs, self.graphs = list(self.graphs.values()), {}
        else:
            graph = self.graphs.pop(batch, None)
            graphs = [graph] if graph is not None else []
        for graph in graphs:
            graph.graph.close()

    def lend_raw(self, staging: PinnedBuffer, planes: DeviceBuffer) -> None:
        """Take new raw-frame buffers (frames grew), giving the old ones back."""
        self.drop_graph()
        self.release_raw()
        self.staging, self.planes = staging, planes

    def release_raw(self) -> None:
        for loan in (self.staging, self.planes):
            if loan is not None:
                loan.release()
        self.staging = self.planes = None

    def close(self) -> None:
        self.drop_graph()
        self.context.close()
        self.release_raw()
        for loan in (self.input, *(b for pair in self.outputs.values() for b in pair)):
            loan.release()
        for event in (self.compute_start, self.done, self.decoded):
            event.close()
