"""The torch backend: a PyTorch model (``nn.Module``, TorchScript or ``torch.export`` program)
run on the GPU through the same runtime as TensorRT engines.

Ownership and streams: the backend owns the loaded module (on ``cuda:<ordinal>``, evaluation mode,
no gradients). Each in-flight slot gets a :class:`TorchExecutionContext` that *borrows* the slot's
device buffers: input and output tensors are wrapped around the raw addresses the runtime passes
(``torch.as_tensor`` over ``__cuda_array_interface__``, no copies), and every kernel runs on the
runtime's own CUDA stream through ``torch.cuda.ExternalStream``. PyTorch's caching allocator
serves the model's intermediates on that stream, so they are ordered with the slot's other work.

Graphs: a context can capture a whole slot (the runtime's preprocessing kernel, the model, the
output copy) into one CUDA graph with :meth:`TorchExecutionContext.capture_graph`. It goes through
``torch.cuda.graph`` (thread-local capture mode) so that PyTorch's allocator gives the graph a
private memory pool; capturing PyTorch work with a bare stream capture is unsafe for that reason.

Threads: several streams run on one backend at once, each slot's context on its stream's own
thread. PyTorch's caching allocator and graph capture are process-wide state (``torch.cuda.graph``
synchronises the device and empties the cache before it captures), so every call a context makes
into torch (``enqueue``, ``capture_graph``) holds the backend's lock: host-side work is serialised,
GPU work still overlaps. A captured graph's replay is a plain ``cudaGraphLaunch`` and takes no lock.

This module is the only one that imports torch; it is imported only when a torch model is loaded.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from .._errors import ClosedResourceError, EngineLoadError, InferenceError, InvalidModelError
from .._lifecycle import NoPublicConstructor, leak_net
from ._base import TensorSpec

if TYPE_CHECKING:
    from typing import Self

__all__ = ["TorchBackend", "TorchExecutionContext", "TorchGraph"]

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "uint8": "uint8",
           "int64": "int64", "int32": "int32", "bool": "bool"}


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise EngineLoadError("the torch backend needs PyTorch: pip install 'xinfer-stream[torch]'"
                              ) from exc
    return torch


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise InvalidModelError(f"the model produces a {name} tensor; the torch backend handles "
                                f"{', '.join(sorted(_DTYPES))}")
    return name


def _load_module(model: Any, torch: Any, device: Any) -> tuple[Any, str]:
    """(callable module on ``device``, in eval mode, description) from an nn.Module or a
    TorchScript / torch.export file."""
    if isinstance(model, torch.nn.Module):
        try:
            return model.to(device).eval(), type(model).__name__
        except RuntimeError as exc:  # out of memory, a module that cannot live on CUDA
            raise EngineLoadError(f"could not move {type(model).__name__} to {device}: {exc}"
                                  ) from exc
    path = Path(os.fspath(model))
    if not path.is_file():
        raise InvalidModelError(f"torch model file not found: {str(path)!r}; pass an nn.Module, a "
                                "TorchScript file (torch.jit.save) or a torch.export file (.pt2)")
    try:
        if path.suffix == ".pt2":
            # An exported program is already an inference graph (no .eval()); moving it needs
            # the export pass that also moves device constants inside the graph (torch 2.6+).
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(torch.export.load(str(path)), device)
            return program.module(), path.name
        return torch.jit.load(str(path), map_location=device).eval(), path.name
    except Exception as exc:  # torch raises RuntimeError/ValueError/pickle errors for bad files
        raise InvalidModelError(f"PyTorch could not load {str(path)!r}: {type(exc).__name__}: {exc}. "
                                "Save TorchScript with torch.jit.save or an exported program with "
                                "torch.export.save (.pt2).") from exc


class TorchBackend:
    """A PyTorch model on CUDA device ``device`` (an ordinal), fed one image tensor.

    ``input_shape`` is the image input's shape with the batch first, ``(N, 3, H, W)`` or
    ``(N, H, W, 3)``; ``N`` is the maximum batch (``None``: any). ``dtype`` is the input dtype
    (and, for ``"float16"``, the model is converted with ``.half()``). Outputs are discovered by
    running the model once on zeros at load time. ``input_name`` names the input tensor.
    """

    def __init__(self, model: Any, *, input_shape: Sequence[int | None],
                 dtype: Literal["float32", "float16"] = "float32", device: int = 0,
                 input_name: str = "input", output_names: Sequence[str] | None = None) -> None:
        torch = _torch()
        if len(input_shape) != 4 or any(d is not None and d <= 0 for d in input_shape):
            raise ValueError(f"input_shape must be (N, 3, H, W) or (N, H, W, 3), got {input_shape!r}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if not torch.cuda.is_available():
            raise EngineLoadError("the torch backend runs on CUDA, and PyTorch sees no CUDA device; "
                                  "use the onnxruntime backend on this machine")
        self._torch = torch
        self._device = torch.device("cuda", device)
        self._ordinal = device
        module, self._description = _load_module(model, torch, self._device)
        self._torch_dtype = torch.float16 if dtype == "float16" else torch.float32
        if dtype == "float16":
            try:
                module = module.half()
            except (RuntimeError, NotImplementedError) as exc:
                raise EngineLoadError(f"could not convert {self._description} to float16: {exc}; "
                                      "export it in float16, or use dtype='float32'") from exc
        self._module = module
        self._input = TensorSpec(input_name, tuple(input_shape), dtype)
        self._lock = threading.Lock()
        # Held by contexts around every call into torch (see the module docstring). Re-entrant:
        # capture_graph runs a body that calls enqueue.
        self._torch_lock = threading.RLock()
        self._closed = False
        example = tuple(1 if d is None else d for d in input_shape)
        outputs = self._forward(torch.zeros(example, dtype=self._torch_dtype, device=self._device))
        torch.cuda.synchronize(self._device)
        names = list(output_names) if output_names is not None else (
            ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))])
        if len(names) != len(outputs):
            raise ValueError(f"output_names has {len(names)} names but the model returns "
                             f"{len(outputs)} tensors")
        self._outputs = tuple(TensorSpec(n, (None, *t.shape[1:]), _dtype_name(t.dtype))
                              for n, t in zip(names, outputs))

    def _forward(self, x: Any) -> list[Any]:
        with self._torch.inference_mode():
            out = self._module(x)
        tensors = list(out.values()) if isinstance(out, Mapping) else (
            list(out) if isinstance(out, (tuple, list)) else [out])
        if not all(isinstance(t, self._torch.Tensor) for t in tensors):
            raise InvalidModelError(f"{self._description} must return a tensor, a tuple of "
                                    f"tensors or a dict of tensors, got {type(out).__name__}")
        return tensors

    # -- Backend protocol -------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return "torch"

    @property
    def device(self) -> Literal["cpu", "cuda"]:
        return "cuda"

    @property
    def ordinal(self) -> int:
        """The CUDA device the model lives on."""
        return self._ordinal

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return (self._input,)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def max_batch(self) -> int | None:
        return self._input.shape[0]

    @property
    def closed(self) -> bool:
        return self._closed

    def run(self, feeds: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        """Run one batch of host arrays synchronously (warm-up, ``infer`` and tests; the
        streaming path goes through :meth:`create_context`)."""
        self._check_open()
        torch = self._torch
        if set(feeds) != {self._input.name}:
            raise InferenceError(f"the torch model takes one input {self._input.name!r}, got "
                                 f"{sorted(feeds)}")
        try:
            with self._torch_lock:
                x = torch.from_numpy(np.ascontiguousarray(feeds[self._input.name])).to(
                    self._device, self._torch_dtype)
                outputs = self._forward(x)
                return {spec.name: t.detach().cpu().numpy()
                        for spec, t in zip(self._outputs, outputs)}
        except RuntimeError as exc:
            shape = tuple(np.shape(feeds[self._input.name]))
            raise InferenceError(f"{self._description} failed on input {shape}: {exc}") from exc

    def create_context(self) -> TorchExecutionContext:
        """A context for one in-flight slot (owned by the caller; close it before the backend)."""
        self._check_open()
        return TorchExecutionContext._create(self)

    def close(self) -> None:
        """Drop the module (its CUDA memory returns to PyTorch's allocator). Safe to call twice."""
        with self._lock:
            self._closed = True
            self._module = None

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"the torch backend for {self._description} is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _Borrowed:
    """``__cuda_array_interface__`` over a raw device address the caller owns (no stream sync:
    ordering is the caller's streams')."""

    def __init__(self, address: int, shape: tuple[int, ...], dtype: str) -> None:
        self.__cuda_array_interface__ = {
            "shape": shape, "typestr": np.dtype(dtype).str if dtype != "bfloat16" else "<V2",
            "data": (address, False), "version": 3, "strides": None, "stream": None}


def _reset_graph(graph: Any, lock: threading.RLock) -> None:
    with lock:
        graph.reset()


class TorchGraph(metaclass=NoPublicConstructor):
    """A slot captured by :meth:`TorchExecutionContext.capture_graph`; ``launch`` replays it.

    Where PyTorch exposes the executable graph (``raw_cuda_graph_exec``, 2.6+) a replay is one
    ``cudaGraphLaunch`` on our stream; otherwise ``CUDAGraph.replay()`` under the external stream.
    """

    _made_by = "TorchExecutionContext.capture_graph(...)"

    def __init__(self, graph: Any, torch: Any, external: Any, lock: threading.RLock) -> None:
        self._graph = graph
        self._finalizer = leak_net(self, "torch CUDA graph", _reset_graph, graph, lock)
        self._torch = torch
        self._external = external
        self._lock = lock  # the backend's torch lock, for calls into torch (see module docstring)
        raw = getattr(graph, "raw_cuda_graph_exec", None)
        self._exec: int | None = None
        if raw is not None:
            try:
                self._exec = int(raw())
            except RuntimeError:  # not instantiated in this build: fall back to replay()
                self._exec = None

    @property
    def closed(self) -> bool:
        return self._graph is None

    def launch(self, *, stream: Any) -> None:
        """Replay on ``stream`` (an ``xinfer_stream.cuda.Stream`` or anything with ``handle``)."""
        if self._graph is None:
            raise ClosedResourceError("this torch CUDA graph is closed")
        if self._exec is not None:
            from ..cuda import launch_graph_handle
            launch_graph_handle(self._exec, stream=stream)
            return
        with self._lock, self._torch.cuda.stream(self._external):
            self._graph.replay()

    def close(self) -> None:
        """Release the graph (its private memory pool goes back to PyTorch). Safe to call twice."""
        if self._graph is not None:
            self._finalizer.detach()
            with self._lock:
                self._graph.reset()
            self._graph = None


class TorchExecutionContext(metaclass=NoPublicConstructor):
    """One slot's view of a :class:`TorchBackend`: borrowed input/output buffers and ``enqueue``.
    It owns no memory (the buffers are the caller's), so it needs no leak net.

    Not thread-safe: one slot, one thread at a time (the runtime's submitting thread).
    """

    _made_by = "TorchBackend.create_context()"

    def __init__(self, backend: TorchBackend) -> None:
        self._backend = backend
        self._torch = backend._torch
        self._input: Any = None
        self._outputs: dict[str, Any] = {}
        self._output_addresses: dict[str, int] = {}
        self._batch = 0
        self._streams: dict[int, Any] = {}
        self._closed = False

    def set_input(self, name: str, address: int, shape: tuple[int, ...]) -> None:
        spec = self._backend._input
        if name != spec.name:
            raise InferenceError(f"the torch model's input is {spec.name!r}, not {name!r}")
        if len(shape) != 4 or any(d is not None and d != s for d, s in zip(spec.shape[1:], shape[1:])):
            raise InferenceError(f"input shape {shape} does not fit the model input {spec.describe()}")
        torch = self._torch
        self._input = torch.as_tensor(_Borrowed(address, tuple(shape), spec.dtype),
                                      device=self._backend._device)
        self._batch = shape[0]
        for out_name, out_address in self._output_addresses.items():
            self._wrap_output(out_name, out_address)

    def set_output(self, name: str, address: int) -> None:
        if name not in {o.name for o in self._backend.outputs}:
            raise InferenceError(f"the torch model has no output {name!r}; it has "
                                 f"{[o.name for o in self._backend.outputs]}")
        self._output_addresses[name] = address
        if self._batch:
            self._wrap_output(name, address)

    def _wrap_output(self, name: str, address: int) -> None:
        shape = self.output_shape(name)
        spec = next(o for o in self._backend.outputs if o.name == name)
        self._outputs[name] = self._torch.as_tensor(_Borrowed(address, shape, spec.dtype),
                                                    device=self._backend._device)

    def output_shape(self, name: str) -> tuple[int, ...]:
        spec = next((o for o in self._backend.outputs if o.name == name), None)
        if spec is None:
            raise InferenceError(f"the torch model has no output {name!r}")
        return (self._batch, *(int(d) for d in spec.shape[1:] if d is not None))

    def _external(self, stream: int) -> Any:
        ext = self._streams.get(stream)
        if ext is None:
            ext = self._streams[stream] = self._torch.cuda.ExternalStream(
                stream, device=self._backend._device)
        return ext

    def enqueue(self, *, stream: int) -> None:
        """Enqueue the model on ``stream`` (raw ``cudaStream_t``): read the input buffer, write
        every output buffer; returns before the GPU runs it."""
        if self._closed or self._backend.closed:
            raise ClosedResourceError("this torch execution context (or its backend) is closed")
        if self._input is None or len(self._outputs) != len(self._backend.outputs):
            raise InferenceError("set_input and set_output for every output before enqueue")
        torch = self._torch
        module = self._backend._module
        with self._backend._torch_lock, torch.cuda.stream(self._external(stream)), \
                torch.inference_mode():
            out = module(self._input)
            tensors = list(out.values()) if isinstance(out, Mapping) else (
                list(out) if isinstance(out, (tuple, list)) else [out])
            for spec, tensor in zip(self._backend.outputs, tensors):
                self._outputs[spec.name].copy_(tensor)

    def capture_graph(self, body: Callable[[], None], *, stream: Any) -> TorchGraph:
        """Capture ``body`` (which enqueues work on ``stream`` and may call :meth:`enqueue`) into
        one CUDA graph, through ``torch.cuda.graph`` so the model's intermediates get a private
        memory pool. ``body`` runs once uncaptured first (warm-up), then once under capture.
        Raises what the capture raised; the caller falls back to plain enqueue."""
        torch = self._torch
        ext = self._external(stream.handle)
        with self._backend._torch_lock:
            body()
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, stream=ext,
                                                          capture_error_mode="thread_local"):
                body()
        return TorchGraph._create(graph, torch, ext, self._backend._torch_lock)

    def close(self) -> None:
        """Forget the borrowed buffers. Safe to call twice."""
        self._closed = True
        self._input = None
        self._outputs = {}
        self._streams = {}
