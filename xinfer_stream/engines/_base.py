"""The engine-backend protocol: what the runtime needs from any inference engine.

A backend owns a loaded model (an ONNX Runtime session, a TensorRT engine, a torch module) and
describes its inputs and outputs. CPU backends run host arrays synchronously (``run``), called
from a worker thread, never from the event loop. GPU backends additionally hand out one
:class:`GpuExecutionContext` per in-flight slot, whose ``enqueue`` puts work on a caller-owned CUDA
stream and returns without waiting.

The runtime never imports a backend's library; only the backend's own module does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .._errors import InvalidModelError

__all__ = ["Backend", "GpuBackend", "GpuExecutionContext", "ImageInput", "TensorSpec",
           "find_image_input"]

Dim = int | None  # None: dynamic (batch, or H/W of a dynamic-shape model)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor: name, shape (``None`` for a dynamic dim), numpy dtype name."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} [{dims}] {self.dtype}"


@runtime_checkable
class Backend(Protocol):
    """A loaded model. ``close()`` is idempotent; using a closed backend raises
    ``ClosedResourceError``."""

    @property
    def kind(self) -> str: ...              # "onnxruntime", "tensorrt", "torch"

    @property
    def device(self) -> Literal["cpu", "cuda"]: ...

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def max_batch(self) -> int | None: ...   # None: any batch size

    @property
    def closed(self) -> bool: ...

    def run(self, feeds: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        """Run one batch synchronously on host arrays; returns every output by name."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class GpuExecutionContext(Protocol):
    """One slot's execution state on a GPU backend (a TensorRT execution context, say).

    Addresses are raw device pointers owned by the caller (the slot); the context only borrows
    them. ``enqueue`` orders its work on ``stream`` (a raw ``cudaStream_t`` as int) and returns
    before the GPU finishes.
    """

    def set_input(self, name: str, address: int, shape: tuple[int, ...]) -> None: ...

    def set_output(self, name: str, address: int) -> None: ...

    def output_shape(self, name: str) -> tuple[int, ...]: ...

    def enqueue(self, *, stream: int) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class GpuBackend(Backend, Protocol):
    """A backend whose model runs on a CUDA device; one context per in-flight slot."""

    def create_context(self) -> GpuExecutionContext: ...


@dataclass(frozen=True)
class ImageInput:
    """The model's image input: its spec, the layout its shape implies, and its fixed H/W."""

    spec: TensorSpec
    layout: Literal["nchw", "nhwc"]
    height: int | None
    width: int | None


def find_image_input(inputs: tuple[TensorSpec, ...], model_name: str) -> ImageInput:
    """The single 4-D, 3-channel input of a vision model, or ``InvalidModelError`` saying why not."""
    if len(inputs) != 1:
        raise InvalidModelError(
            f"{model_name!r} has {len(inputs)} inputs ({', '.join(i.describe() for i in inputs)}); "
            "xinfer-stream runs models with exactly one image input [N,3,H,W] or [N,H,W,3]")
    spec = inputs[0]
    if len(spec.shape) == 4 and spec.shape[1] == 3:
        return ImageInput(spec, "nchw", spec.shape[2], spec.shape[3])
    if len(spec.shape) == 4 and spec.shape[3] == 3:
        return ImageInput(spec, "nhwc", spec.shape[1], spec.shape[2])
    raise InvalidModelError(
        f"the input of {model_name!r} is {spec.describe()}, not an image tensor: xinfer-stream "
        "needs [N,3,H,W] or [N,H,W,3] (RGB/BGR). Export the model with an image input.")
