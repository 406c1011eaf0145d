"""``TensorRTBackend``: a deserialized TensorRT engine behind the ``GpuBackend`` protocol.

Ownership: the backend owns the TensorRT ``Runtime`` and ``ICudaEngine``; each
:class:`TensorRTContext` owns one ``IExecutionContext`` and borrows the backend. Closing the
backend closes its open contexts first. Device memory for activations is allocated by TensorRT
per context when the context is created (``device_memory_bytes`` says how much, from the engine).

Concurrency: one context per in-flight slot. On an engine with dynamic shapes TensorRT needs a
separate optimization profile for every context used at the same time, so each context takes a
free profile when created (selected once, then never switched) and returns it on close; an
engine built with ``profiles=K`` serves K concurrent contexts. A static engine serves any number.

Input and output addresses are raw device pointers owned by the caller's slot; ``enqueue`` orders
the engine's work on the caller's stream and returns without waiting for the GPU.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from .._errors import ClosedResourceError, EngineLoadError, InferenceError
from .._lifecycle import NoPublicConstructor, leak_net
from ._base import TensorSpec
from ._metadata import EngineMetadata, IoTensor
from ._tensorrt import TensorRT, deserialize, engine_io

if TYPE_CHECKING:
    from typing import Self

    from ..cuda import Device, Stream

__all__ = ["TensorRTBackend", "TensorRTContext"]


class TensorRTBackend:
    """A TensorRT engine loaded for inference (made by ``load_engine``; see the module docstring).

    ``plan`` is the serialized engine; ``name`` names it in messages; ``metadata`` (the sidecar,
    when there is one) supplies the Preprocess; ``device`` is the CUDA ordinal ``run`` uses;
    ``plugins``: the plugin libraries to load first (none unless named; see ``load_plugins``).
    """

    def __init__(self, trt: TensorRT, plan: bytes, *, name: str,
                 metadata: EngineMetadata | None = None, device: int = 0,
                 plugins: Sequence[str | os.PathLike[str]] = ()) -> None:
        self._trt = trt
        self._name = name
        self._metadata = metadata
        self._device_ordinal = device
        self._runtime, self._engine = deserialize(trt, plan, repr(name), plugins=plugins)
        self._inputs, self._outputs = engine_io(trt, self._engine)
        self._io = {t.name: t for t in (*self._inputs, *self._outputs)}
        self._dynamic = any(None in t.shape for t in self._inputs)
        self._num_profiles = int(self._engine.num_optimization_profiles)
        self._device_memory = int(self._engine.device_memory_size_v2)
        self._lock = threading.Lock()
        self._free_profiles = list(range(self._num_profiles))
        self._contexts: weakref.WeakSet[TensorRTContext] = weakref.WeakSet()
        self._runner: _HostRunner | None = None
        self._run_lock = threading.Lock()
        self._closed = False

    # -- the Backend protocol ---------------------------------------------------------------
    @property
    def kind(self) -> str:
        return "tensorrt"

    @property
    def device(self) -> Literal["cpu", "cuda"]:
        return "cuda"

    @property
    def name(self) -> str:
        return self._name

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(t.spec() for t in self._inputs)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(t.spec() for t in self._outputs)

    @property
    def io(self) -> tuple[IoTensor, ...]:
        """Inputs then outputs, with the profile ranges of dynamic inputs."""
        return (*self._inputs, *self._outputs)

    @property
    def max_batch(self) -> int | None:
        """The largest batch the engine accepts: profile 0's max for a dynamic batch, else the
        fixed batch dimension."""
        first = self._inputs[0] if self._inputs else None
        if first is None or not first.shape:
            return None
        if first.shape[0] is not None:
            return first.shape[0]
        return first.profile[2][0] if first.profile is not None else None

    @property
    def metadata(self) -> EngineMetadata | None:
        return self._metadata

    @property
    def tensorrt_version(self) -> str:
        return str(self._trt.version)

    @property
    def num_profiles(self) -> int:
        return self._num_profiles

    @property
    def max_contexts(self) -> int | None:
        """How many contexts may be open at once (None: any; a static engine)."""
        return self._num_profiles if self._dynamic else None

    @property
    def device_memory_bytes(self) -> int:
        """Device memory TensorRT allocates for each execution context (``device_memory_size_v2``)."""
        return self._device_memory

    @property
    def closed(self) -> bool:
        return self._closed

    def create_context(self) -> TensorRTContext:
        """A new execution context for one in-flight slot. ``EngineLoadError`` when every
        optimization profile is taken by an open context, or TensorRT cannot make one (GPU
        memory)."""
        with self._lock:
            self._check_open()
            profile = 0
            if self._dynamic:
                if not self._free_profiles:
                    raise EngineLoadError(
                        f"{self._name!r} has {self._num_profiles} optimization profile(s), all in "
                        "use by open contexts; dynamic-shape engines need one profile per "
                        "concurrent context. Rebuild with profiles=K (CLI: --profiles K) for K "
                        "slots, or close a context first")
                profile = self._free_profiles.pop(0)
        try:
            context = self._engine.create_execution_context()
            if context is None:
                raise EngineLoadError(
                    f"TensorRT could not create an execution context for {self._name!r} "
                    f"(it needs {self._device_memory} bytes of GPU memory).{self._said()}")
            # Selected once at creation, on the legacy default stream (0): setup time, not per
            # frame, and the profile never changes for the life of the context.
            if profile != 0 and not context.set_optimization_profile_async(profile, 0):
                raise EngineLoadError(f"TensorRT refused optimization profile {profile} of "
                                      f"{self._name!r}.{self._said()}")
        except BaseException:
            self._release_profile(profile)
            raise
        ctx = TensorRTContext._create(self, context, profile)
        with self._lock:
            self._contexts.add(ctx)
        return ctx

    def run(self, feeds: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        """Run one batch on host arrays, synchronously: copies in, runs, copies out, waits.

        A convenience for tests, accuracy checks and the CPU-array API; it keeps one context,
        stream and device of its own. The streaming runtime uses :meth:`create_context` instead.
        """
        with self._run_lock:
            self._check_open()
            if self._runner is None:
                self._runner = _HostRunner(self)
            return self._runner.run(feeds)

    def close(self) -> None:
        """Close every open context, then release the engine and runtime. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            contexts = list(self._contexts)
        with self._run_lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()
        for ctx in contexts:
            ctx.close()
        self._engine = None
        self._runtime = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"TensorRT {self._trt.version}"
        return f"<TensorRTBackend {self._name!r} {state}>"

    # -- for the contexts -------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"the TensorRT backend for {self._name!r} is closed")

    def _release_profile(self, profile: int) -> None:
        if self._dynamic:
            with self._lock:
                if profile not in self._free_profiles:
                    self._free_profiles.append(profile)
                    self._free_profiles.sort()

    def _io_tensor(self, name: str, want: Literal["input", "output"]) -> IoTensor:
        tensor = self._io.get(name)
        group = self._inputs if want == "input" else self._outputs
        if tensor is None or tensor not in group:
            names = ", ".join(t.name for t in group)
            raise InferenceError(f"{self._name!r} has no {want} named {name!r}; its {want}s "
                                 f"are: {names}")
        return tensor

    def _profile_range(self, name: str, profile: int) -> str:
        lo, _, hi = self._engine.get_tensor_profile_shape(name, profile)
        return f"{list(lo)} to {list(hi)}"

    def _said(self) -> str:
        errors = self._trt.recent_errors()
        return f" TensorRT said: {' | '.join(errors[-3:])}" if errors else ""


def _release_context(backend_ref: weakref.ref[TensorRTBackend], profile: int, context: Any
                     ) -> None:
    """The leak net's release of a context collected while open: give its profile back."""
    del context  # the last reference: TensorRT frees the context now
    backend = backend_ref()
    if backend is not None:
        backend._release_profile(profile)


class TensorRTContext(metaclass=NoPublicConstructor):
    """One slot's ``IExecutionContext`` (see the module docstring). Made only by
    :meth:`TensorRTBackend.create_context`; ``close()`` is idempotent."""

    _made_by = "backend.create_context()"

    def __init__(self, backend: TensorRTBackend, context: Any, profile: int) -> None:
        self._backend = backend
        self._context: Any = context
        self._profile = profile
        self._addresses: dict[str, int] = {}
        self._closed = False
        self._finalizer = leak_net(self, f"TensorRT execution context of {backend.name!r}",
                                   _release_context, weakref.ref(backend), profile, context)

    @property
    def profile(self) -> int:
        """The optimization profile this context uses."""
        return self._profile

    @property
    def closed(self) -> bool:
        return self._closed

    def set_input(self, name: str, address: int, shape: tuple[int, ...]) -> None:
        """Bind input ``name`` to device memory at ``address`` holding a tensor of ``shape``."""
        ctx = self._live()
        self._backend._io_tensor(name, "input")
        dims = tuple(int(d) for d in shape)
        if not ctx.set_input_shape(name, dims):
            raise InferenceError(
                f"{self._backend.name!r} rejected shape {list(dims)} for input {name!r}: profile "
                f"{self._profile} accepts {self._backend._profile_range(name, self._profile)}."
                f"{self._backend._said()}")
        self._bind(ctx, name, address)

    def set_output(self, name: str, address: int) -> None:
        """Bind output ``name`` to device memory at ``address`` (sized for :meth:`output_shape`)."""
        ctx = self._live()
        self._backend._io_tensor(name, "output")
        self._bind(ctx, name, address)

    def _bind(self, ctx: Any, name: str, address: int) -> None:
        if not ctx.set_tensor_address(name, int(address)):
            raise InferenceError(f"TensorRT rejected address {int(address):#x} for {name!r} of "
                                 f"{self._backend.name!r}.{self._backend._said()}")
        self._addresses[name] = int(address)

    def output_shape(self, name: str) -> tuple[int, ...]:
        """The shape output ``name`` will have for the input shapes set so far."""
        ctx = self._live()
        self._backend._io_tensor(name, "output")
        shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            missing = [t.name for t in self._backend._inputs if t.name not in self._addresses]
            raise InferenceError(f"the shape of output {name!r} is not known yet ({list(shape)}): "
                                 f"set every input first (not yet set: {missing})")
        return shape

    def enqueue(self, *, stream: int) -> None:
        """Enqueue the engine on ``stream`` (a raw ``cudaStream_t``); returns before the GPU is
        done. ``InferenceError`` when TensorRT refuses (a tensor without an address, say)."""
        ctx = self._live()
        if not ctx.execute_async_v3(int(stream)):
            unbound = [t.name for t in self._backend.io if t.name not in self._addresses]
            hint = f" Tensors without an address: {unbound}." if unbound else ""
            raise InferenceError(f"TensorRT could not enqueue {self._backend.name!r} on stream "
                                 f"{int(stream):#x}.{hint}{self._backend._said()}")

    def close(self) -> None:
        """Release the execution context and give its profile back. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._context = None
        self._backend._release_profile(self._profile)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> Any:
        if self._closed:
            raise ClosedResourceError(f"this execution context of {self._backend.name!r} is closed")
        self._backend._check_open()
        return self._context


class _HostRunner:
    """What :meth:`TensorRTBackend.run` keeps between calls: a device, a stream and a context.
    Device buffers are allocated per call, sized for that call's shapes."""

    def __init__(self, backend: TensorRTBackend) -> None:
        from ..cuda import Device

        self._backend = backend
        self._device: Device = Device(backend._device_ordinal)
        try:
            self._stream: Stream = self._device.create_stream()
            self._context = backend.create_context()
        except BaseException:
            self._device.close()
            raise

    def run(self, feeds: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        backend, ctx = self._backend, self._context
        missing = [t.name for t in backend.inputs if t.name not in feeds]
        if missing:
            raise InferenceError(f"{backend.name!r} needs inputs {missing}; got {sorted(feeds)}")
        pools = []
        try:
            for spec in backend.inputs:
                array = np.ascontiguousarray(feeds[spec.name], dtype=np.dtype(spec.dtype))
                pool = self._device.device_pool(max(array.nbytes, 1), 1)
                pools.append(pool)
                buffer = pool.acquire()
                buffer.write(array)
                ctx.set_input(spec.name, buffer.pointer, array.shape)
            outputs: dict[str, tuple[Any, tuple[int, ...], np.dtype[Any]]] = {}
            for spec in backend.outputs:
                shape = ctx.output_shape(spec.name)
                dtype = np.dtype(spec.dtype)
                pool = self._device.device_pool(max(int(np.prod(shape)) * dtype.itemsize, 1), 1)
                pools.append(pool)
                buffer = pool.acquire()
                ctx.set_output(spec.name, buffer.pointer)
                outputs[spec.name] = (buffer, shape, dtype)
            ctx.enqueue(stream=self._stream.handle)
            self._stream.synchronize()
            return {name: buf.read(dtype, shape) for name, (buf, shape, dtype) in outputs.items()}
        finally:
            for pool in pools:
                pool.close()

    def close(self) -> None:
        self._context.close()
        self._device.close()
