"""``Graph``: an instantiated CUDA graph captured from a stream, replayed with one call.

Made by ``Device.capture(stream)`` (see there). Replaying a graph reuses the exact addresses and
kernel arguments captured, so it suits a slot whose buffers never move; anything that changes
those needs a new capture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cuda.bindings import runtime as cudart

from .._errors import ClosedResourceError
from .._lifecycle import NoPublicConstructor, leak_net
from ._status import check_runtime

if TYPE_CHECKING:
    from ._device import Device
    from ._stream import Stream

__all__ = ["Graph", "launch_graph_handle"]


def _destroy_exec(graph_exec: Any) -> None:
    check_runtime(cudart.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")


class Graph(metaclass=NoPublicConstructor):
    """An executable CUDA graph owned by its device."""

    def __init__(self, device: Device, graph: Any) -> None:
        self._device = device
        try:
            self._exec = check_runtime(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            # The executable graph is independent of the captured template: drop the template.
            check_runtime(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")
        self._finalizer = leak_net(self, "CUDA graph", _destroy_exec, self._exec)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def launch(self, *, stream: Stream) -> None:
        """Enqueue one replay of the whole graph on ``stream``."""
        if not self._finalizer.alive:
            raise ClosedResourceError("this CUDA graph is closed")
        check_runtime(cudart.cudaGraphLaunch(self._exec, stream.raw), "cudaGraphLaunch")

    def close(self) -> None:
        """Destroy the executable graph. Safe to call twice."""
        if self._finalizer.detach() is not None:
            _destroy_exec(self._exec)


def launch_graph_handle(graph_exec: int, *, stream: Stream) -> None:
    """Replay an executable graph made by another library (its raw ``cudaGraphExec_t`` as int,
    e.g. PyTorch's ``CUDAGraph.raw_cuda_graph_exec()``) on ``stream``: one CUDA call. The other
    library keeps ownership of the graph."""
    check_runtime(cudart.cudaGraphLaunch(graph_exec, stream.raw), "cudaGraphLaunch")
