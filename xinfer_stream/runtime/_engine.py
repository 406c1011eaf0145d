"""``load()`` and ``StreamingEngine``: a model kept loaded, streaming many sources.

``async with xs.load("model.int8.onnx") as engine`` loads the backend in a worker thread (the
event loop keeps running), checks that the Preprocess fits the model's image input, and warms the
model up so the first frame is not the slowest. The engine owns its backend and every stream it
opened: ``aclose()`` closes those streams, then the backend.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import ClosedResourceError, EngineLoadError, InvalidModelError
from ..engines import Backend, ImageInput, OnnxRuntimeBackend, TensorSpec, find_image_input
from ..preprocess import Preprocess, preprocess_frame, preprocess_path_for
from ._result import Result
from ._stream import _CONSTRUCT, ResultStream

__all__ = ["StreamingEngine", "load"]

Postprocess = Callable[[Mapping[str, npt.NDArray[np.generic]]], Any]


def load(model: str | os.PathLike[str] | Backend, *, preprocess: Preprocess | None = None,
         backend: str = "auto", threads: int | None = None, warmup: bool = True) -> StreamingEngine:
    """A :class:`StreamingEngine` for ``model``, to be entered with ``async with``.

    ``model`` is an ONNX file (FP32 or our Q/DQ INT8; run by ONNX Runtime on the CPU), or an
    already opened :class:`~xinfer_stream.engines.Backend`, whose ownership passes to the engine
    (it is closed with it). The Preprocess comes from ``preprocess=`` or else from the sidecar
    written next to the model (``model.int8.preprocess.json``). ``backend``: ``"auto"`` (by file
    type) or ``"onnxruntime"``.
    """
    if isinstance(model, (str, os.PathLike)):
        return StreamingEngine(Path(model), None, preprocess=preprocess, backend=backend,
                               threads=threads, warmup=warmup)
    if isinstance(model, Backend):
        name = Path(str(getattr(model, "path", f"<{model.kind} backend>")))
        return StreamingEngine(name, model, preprocess=preprocess, backend=model.kind,
                               threads=threads, warmup=warmup)
    if _is_torch_module(model):
        if preprocess is None:
            raise ValueError("load(module) needs preprocess=xs.Preprocess(...): it gives the "
                             "module's input size, layout and dtype")
        engine = StreamingEngine(Path(f"<{type(model).__name__}>"), None, preprocess=preprocess,
                                 backend="torch", threads=threads, warmup=warmup)
        engine._torch_module = model
        return engine
    raise TypeError("load() takes a model path, a torch.nn.Module / TorchScript module or an "
                    f"engine Backend, got {type(model).__name__}")


def _is_torch_module(obj: object) -> bool:
    """An nn.Module / ScriptModule / ExportedProgram, recognised without importing torch."""
    return any(cls.__module__.startswith("torch") and cls.__name__ in
               ("Module", "ScriptModule", "RecursiveScriptModule", "ExportedProgram")
               for cls in type(obj).__mro__)


class StreamingEngine:
    """A loaded model that streams sources. Obtain one from :func:`load`."""

    def __init__(self, model: Path, opened: Backend | None, *, preprocess: Preprocess | None,
                 backend: str, threads: int | None, warmup: bool) -> None:
        self._model = model
        self._opened = opened
        self._torch_module: Any = None  # set by load(module): a TorchBackend is made on open
        self._requested_preprocess = preprocess
        self._backend_name = backend
        self._threads = threads
        self._warmup = warmup
        self._backend: Backend | None = None
        self._preprocess: Preprocess | None = None
        self._image_input: ImageInput | None = None
        self._streams: set[ResultStream] = set()
        self._cuda: Any = None  # xinfer_stream.cuda.Device, made for GPU backends on first stream
        self._cuda_lock = threading.Lock()
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> StreamingEngine:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Load the backend and warm it up, in a worker thread. Idempotent."""
        if self._closed:
            raise ClosedResourceError(f"the engine for {str(self._model)!r} is closed; load it again")
        if self._backend is None:
            backend, pre, image_input = await asyncio.to_thread(self._open_sync)
            if self._closed:  # closed while loading
                backend.close()
                raise ClosedResourceError("the engine was closed while it was loading")
            self._backend, self._preprocess, self._image_input = backend, pre, image_input

    def _open_sync(self) -> tuple[Backend, Preprocess, ImageInput]:
        if self._torch_module is not None:
            from ..engines import TorchBackend

            pre = self._requested_preprocess
            assert pre is not None
            backend: Backend = TorchBackend(self._torch_module, input_shape=(None, *pre.input_shape()[1:]),
                                            dtype="float16" if pre.dtype == "float16" else "float32")
        else:
            backend = self._opened or open_backend(self._model, self._backend_name,
                                                   threads=self._threads)
        try:
            image_input = find_image_input(backend.inputs, self._model.name)
            pre = resolve_preprocess(self._model, self._requested_preprocess)
            check_preprocess_fits(pre, image_input, self._model.name)
            if self._warmup:
                dummy = np.zeros((pre.size[0], pre.size[1], 3), dtype=np.uint8)
                x = preprocess_frame(pre, dummy)[None]
                backend.run({image_input.spec.name: x})
        except BaseException:
            backend.close()
            raise
        return backend, pre, image_input

    async def aclose(self) -> None:
        """Close every stream this engine opened, then the backend. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for stream in list(self._streams):
                await stream.aclose()
        finally:
            backend = self._backend or self._opened
            try:
                if backend is not None:
                    backend.close()
            finally:
                if self._cuda is not None:
                    self._cuda.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- what is loaded ---------------------------------------------------------------------
    @property
    def model(self) -> Path:
        return self._model

    @property
    def preprocess(self) -> Preprocess:
        return self._loaded()[1]

    @property
    def backend(self) -> Backend:
        return self._loaded()[0]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._loaded()[0].inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._loaded()[0].outputs

    def _loaded(self) -> tuple[Backend, Preprocess, ImageInput]:
        if self._closed:
            raise ClosedResourceError(f"the engine for {str(self._model)!r} is closed")
        if self._backend is None or self._preprocess is None or self._image_input is None:
            raise EngineLoadError("the engine is not loaded yet: use 'async with xs.load(...) as engine'")
        return self._backend, self._preprocess, self._image_input

    # -- work -------------------------------------------------------------------------------
    def stream(self, source: Any, *, policy: str | None = None, postprocess: Postprocess | None = None,
               batch: int = 1, queue_size: int = 4, slots: int = 2,
               **source_options: Any) -> ResultStream:
        """Stream ``source`` (a path, several paths, a URL, a device or an iterable of RGB frames)
        through this engine: an async context manager and async iterator of :class:`Result`, one
        per decoded frame, in order.

        ``policy``: ``"every"`` (never drop; files default) or ``"latest"`` (keep the newest frame;
        live default). ``batch`` frames of a file are run together (results stay per frame).
        On a GPU backend, ``slots`` batches are in flight at once (see runtime/_gpu.py): raw
        yuv420p planes are uploaded and preprocessed on the GPU.
        """
        backend, pre, image_input = self._loaded()
        max_batch = backend.max_batch
        if batch < 1 or (max_batch is not None and batch > max_batch):
            raise ValueError(f"batch must be between 1 and the engine's max batch "
                             f"({max_batch or 'unbounded'}), got {batch!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size!r}")

        on_gpu = backend.device == "cuda"
        if on_gpu and slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots!r}")

        def open_frames() -> Any:
            from ..video import open_source
            return open_source(source, format="yuv420p" if on_gpu else "rgb24", policy=policy,
                               **source_options)

        gpu = None
        if on_gpu:
            from ._gpu import GpuRunner

            def gpu() -> GpuRunner:
                return GpuRunner(self._cuda_device(), backend, pre,  # type: ignore[arg-type]
                                 slots=slots, max_batch=batch)

        stream = ResultStream(backend=backend, preprocess=pre, input_name=image_input.spec.name,
                              source_factory=open_frames, postprocess=postprocess, batch=batch,
                              queue_size=queue_size, on_close=self._streams.discard,
                              _token=_CONSTRUCT, gpu=gpu)
        self._streams.add(stream)
        return stream

    def _cuda_device(self) -> Any:
        """The engine's CUDA device (made once; closed with the engine)."""
        with self._cuda_lock:
            if self._cuda is None:
                from ..cuda import Device
                self._cuda = Device(int(getattr(self._backend, "ordinal", 0)))
            return self._cuda

    async def infer(self, image: npt.NDArray[np.uint8], *, postprocess: Postprocess | None = None
                    ) -> Result:
        """Run one RGB uint8 frame (H x W x 3) and return its :class:`Result` (``frame_index`` 0)."""
        backend, pre, image_input = self._loaded()
        start = time.perf_counter()

        def run() -> Result:
            x = preprocess_frame(pre, image)[None]
            outputs = backend.run({image_input.spec.name: x})
            prediction = postprocess(outputs) if postprocess is not None else None
            return Result(frame_index=0, pts=None, outputs=outputs,
                          latency=time.perf_counter() - start, source="<frame>",
                          prediction=prediction)

        return await asyncio.to_thread(run)


# -- helpers shared with the CLI ------------------------------------------------------------
def open_backend(model: Path, name: str = "auto", *, threads: int | None = None) -> Backend:
    """Open the backend for a model file; ``InvalidModelError`` for a missing or broken file."""
    if not model.exists():
        raise InvalidModelError(f"model file not found: {str(model)!r}; check the path")
    if not model.is_file():
        raise InvalidModelError(f"{str(model)!r} is not a file; pass an .onnx model")
    suffix = model.suffix.lower()
    if name == "auto":
        name = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt",
                ".trt": "tensorrt"}.get(suffix, "")
    if name == "onnxruntime":
        check_onnx(model)
        return OnnxRuntimeBackend(model, threads=threads)
    if name == "tensorrt":
        from ..engines import load_engine

        return load_engine(model)
    raise EngineLoadError(
        f"cannot load {str(model)!r}: unknown model type {suffix!r} (backend={name or 'auto'!r}); "
        "pass an .onnx model or a TensorRT .engine")


def check_onnx(model: Path) -> None:
    """Run ONNX's checker so a broken model fails with its reason, not deep inside a runtime."""
    import onnx

    try:
        onnx.checker.check_model(str(model))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(
            f"{str(model)!r} is not a valid ONNX model ({first}); re-export it or check the file "
            "is complete") from exc
    except Exception as exc:  # protobuf DecodeError and friends for files that are not ONNX
        raise InvalidModelError(
            f"{str(model)!r} could not be read as an ONNX model ({type(exc).__name__}: {exc}); "
            "is it an ONNX file?") from exc


def resolve_preprocess(model: Path, explicit: Preprocess | None) -> Preprocess:
    """The explicit Preprocess, else the model's sidecar, else an error saying what to do."""
    if explicit is not None:
        return explicit
    sidecar = preprocess_path_for(model)
    if sidecar.exists():
        return Preprocess.load(sidecar)
    from ..engines import metadata_path_for, read_metadata

    if metadata_path_for(model).exists():  # a TensorRT engine carries its Preprocess in metadata
        recorded = read_metadata(model).preprocess
        if recorded is not None:
            return recorded
    raise EngineLoadError(
        f"no Preprocess for {str(model)!r}: pass preprocess=xs.Preprocess(...) (CLI: --preprocess "
        f"FILE.json) or put one at {str(sidecar)!r}. Models written by 'xinfer-stream quantize' "
        "carry theirs.")


def check_preprocess_fits(pre: Preprocess, image: ImageInput, model_name: str) -> None:
    """``InvalidModelError`` when the Preprocess would not produce the model's input tensor."""
    problems = []
    if pre.layout != image.layout:
        problems.append(f"layout {pre.layout!r} but the model input is {image.layout!r}")
    h, w = pre.size
    if (image.height is not None and image.height != h) or (image.width is not None and image.width != w):
        problems.append(f"size {pre.size} but the model input is "
                        f"{image.height or '?'}x{image.width or '?'}")
    if pre.dtype != image.spec.dtype:
        problems.append(f"dtype {pre.dtype!r} but the model input is {image.spec.dtype!r}")
    if problems:
        raise InvalidModelError(
            f"the Preprocess does not fit {model_name!r} (input {image.spec.describe()}): "
            + "; ".join(problems) + ". Fix the Preprocess (or its .preprocess.json).")
