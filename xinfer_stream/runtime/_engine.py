"""``load()`` and ``StreamingEngine``: a model kept loaded, streaming many sources.

``async with xs.load("model.int8.onnx") as engine`` loads the backend in a worker thread (the
event loop keeps running), checks that the Preprocess fits the model's image input, and warms the
model up so the first frame is not the slowest. The engine owns its backend and every stream it
opened: ``aclose()`` closes those streams, then what ``infer`` used on the GPU, then the backend.

Several streams may run on one engine at once; on a GPU backend each stream has its own slots,
CUDA streams and waiter thread (see runtime/_gpu.py), and they share only the backend (one
execution context per slot) and the engine's CUDA device.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import ClosedResourceError, EngineLoadError, InvalidModelError
from ..engines import Backend, ImageInput, OnnxRuntimeBackend, TensorSpec, find_image_input
from ..preprocess import Preprocess, preprocess_frame, preprocess_path_for
from ._postprocess import apply_postprocess
from ._result import Result
from ._stream import _CONSTRUCT, ResultStream

__all__ = ["StreamingEngine", "load"]

_COPY_ON = ("worker", "decoder")  # which thread copies a frame into pinned memory
_DECODE = ("cpu", "nvdec")  # where video is decoded

Postprocess = Callable[[Mapping[str, npt.NDArray[np.generic]]], Any]


def load(model: str | os.PathLike[str] | Backend, *, preprocess: Preprocess | None = None,
         backend: str = "auto", threads: int | None = None, warmup: bool = True,
         plugins: Sequence[str | os.PathLike[str]] = ()) -> StreamingEngine:
    """A :class:`StreamingEngine` for ``model``, to be entered with ``async with``.

    ``model`` is an ONNX file (FP32 or our Q/DQ INT8; run by ONNX Runtime on the CPU), a TensorRT
    engine (``.engine``/``.plan``), a PyTorch model (an ``nn.Module`` or TorchScript module, or a
    TorchScript / ``torch.export`` file: ``.pt``, ``.pth``, ``.ts``, ``.pt2``; run on CUDA by the
    torch backend), or an already opened :class:`~xinfer_stream.engines.Backend`, whose
    ownership passes to the engine (it is closed with it). The Preprocess comes from
    ``preprocess=`` or else from the sidecar written next to the model
    (``model.int8.preprocess.json``); a PyTorch model's input shape and dtype are taken from it.
    ``backend``: ``"auto"`` (by file type), ``"onnxruntime"``, ``"tensorrt"`` or ``"torch"``.
    ``plugins``: paths of TensorRT plugin libraries a TensorRT engine needs; no plugin library is
    loaded unless named here.
    """
    is_torch_file = isinstance(model, (str, os.PathLike)) and (
        backend == "torch" or (backend == "auto" and Path(model).suffix.lower() in TORCH_SUFFIXES))
    if plugins and (is_torch_file or not isinstance(model, (str, os.PathLike))):
        raise ValueError("plugins= applies to a TensorRT engine file; pass the engine's path")
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if is_torch_file:
            engine = StreamingEngine(path, None, preprocess=preprocess, backend="torch",
                                     threads=threads, warmup=warmup)
            engine._torch_model = path
            return engine
        return StreamingEngine(path, None, preprocess=preprocess, backend=backend,
                               threads=threads, warmup=warmup, plugins=tuple(plugins))
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
        engine._torch_model = model
        return engine
    raise TypeError("load() takes a model path, a torch.nn.Module / TorchScript module or an "
                    f"engine Backend, got {type(model).__name__}")


TORCH_SUFFIXES = (".pt", ".pth", ".ts", ".pt2")


def _is_torch_module(obj: object) -> bool:
    """An nn.Module / ScriptModule / ExportedProgram, recognised without importing torch."""
    return any(cls.__module__.startswith("torch") and cls.__name__ in
               ("Module", "ScriptModule", "RecursiveScriptModule", "ExportedProgram")
               for cls in type(obj).__mro__)


class StreamingEngine:
    """A loaded model that streams sources. Obtain one from :func:`load`."""

    def __init__(self, model: Path, opened: Backend | None, *, preprocess: Preprocess | None,
                 backend: str, threads: int | None, warmup: bool,
                 plugins: tuple[str | os.PathLike[str], ...] = ()) -> None:
        self._model = model
        self._opened = opened
        self._plugins = plugins
        # Set by load(module or torch file): a TorchBackend is made on open.
        self._torch_model: Any = None
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
        # GPU infer(): one runner (its own slots), made on first use; submits are serialised.
        self._infer_runner: Any = None
        self._infer_lock = threading.Lock()
        self._released = False
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> StreamingEngine:
        try:
            await self.open()
        except BaseException:  # an error or a cancellation: nobody will call __aexit__
            await self.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Load the backend and warm it up, in a worker thread. Idempotent.

        A load cannot be interrupted inside its thread: when the caller is cancelled (or the
        engine closed) meanwhile, the thread closes what it loaded as it finishes.
        """
        if self._closed:
            raise ClosedResourceError(f"the engine for {str(self._model)!r} is closed; load it again")
        if self._backend is None:
            await asyncio.to_thread(self._open_sync)
            if self._closed:
                raise ClosedResourceError("the engine was closed while it was loading")

    def _open_sync(self) -> None:
        if self._torch_model is not None:
            from ..engines import TorchBackend

            wanted = resolve_preprocess(self._model, self._requested_preprocess)
            if wanted.dtype not in ("float32", "float16"):
                raise InvalidModelError(f"the torch backend feeds float32 or float16 input; the "
                                        f"Preprocess says dtype={wanted.dtype!r}")
            backend: Backend = TorchBackend(self._torch_model,
                                            input_shape=(None, *wanted.input_shape()[1:]),
                                            dtype="float16" if wanted.dtype == "float16" else "float32")
        else:
            backend = self._opened or open_backend(self._model, self._backend_name,
                                                   threads=self._threads, plugins=self._plugins)
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
        # Keep it, unless the engine was closed (or its __aenter__ cancelled) while loading: then
        # nobody will take it, and _release() may already have run (same lock).
        with self._infer_lock:
            if not self._closed:
                self._backend, self._preprocess, self._image_input = backend, pre, image_input
                return
        backend.close()

    async def aclose(self) -> None:
        """Close every stream this engine opened, then ``infer``'s GPU runner, the backend and the
        CUDA device. Idempotent; releases everything even when the calling task is cancelled."""
        if self._closed:
            return
        self._closed = True
        try:
            for stream in list(self._streams):
                await stream.aclose()
        finally:
            for stream in list(self._streams):  # left by a cancellation: release them here
                stream._release()
            try:
                # Off the loop: the runner waits for work in flight (milliseconds of GPU time).
                await asyncio.shield(asyncio.to_thread(self._release))
            except asyncio.CancelledError:
                self._release()  # waits for the thread's call (same lock), then returns
                raise

    def _release(self) -> None:
        with self._infer_lock:
            if self._released:
                return
            self._released = True
            runner, self._infer_runner = self._infer_runner, None
            backend = self._backend or self._opened
            try:
                if runner is not None:
                    runner.close()
            finally:
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
               copy_on: str = "worker", decode: str = "cpu", **source_options: Any) -> ResultStream:
        """Stream ``source`` (a path, several paths, a URL, a device or an iterable of RGB frames)
        through this engine: an async context manager and async iterator of :class:`Result`, one
        per decoded frame, in order.

        ``policy``: ``"every"`` (never drop; files default) or ``"latest"`` (keep the newest frame;
        live default). ``batch`` frames of a file are run together (results stay per frame).
        On a GPU backend, ``slots`` batches are in flight at once (see runtime/_gpu.py). Raw
        yuv420p planes are decoded, the window of pixels the preprocess reads is copied into
        pinned memory (about 0.4 ms a 1080p frame, the costliest host step), and the GPU
        uploads and preprocesses it. ``copy_on`` says which thread copies: ``"worker"`` (the
        default: the stream's worker, into the slot's staging, uploaded inside the slot's CUDA
        graph; the decode thread only decodes) or ``"decoder"`` (the decode thread, into pinned
        buffers the stream owns). ``decode="nvdec"`` (GPU backends) decodes on the GPU's
        video engine instead and leaves the frames in GPU memory: no host copy and almost no CPU
        a frame, but one NVDEC session decodes slower than FFmpeg on many cores (BENCHMARKS.md);
        a codec NVDEC cannot decode falls back to the CPU, with the reason logged. It makes the
        process wait for this GPU by sleeping, not spinning, from then on
        (:meth:`xinfer_stream.cuda.Device.share_with_ffmpeg`). Several
        streams may run at once, each with its own slots.
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
        if copy_on not in _COPY_ON:
            raise ValueError(f"copy_on must be one of {', '.join(_COPY_ON)}, got {copy_on!r}")
        if copy_on == "decoder" and not on_gpu:
            raise ValueError(f"copy_on={copy_on!r} is for GPU backends; this engine runs on "
                             f"{backend.kind} ({backend.device})")
        if decode not in _DECODE:
            raise ValueError(f"decode must be one of {', '.join(_DECODE)}, got {decode!r}")
        if decode == "nvdec":
            if not on_gpu:
                raise ValueError(f"decode='nvdec' leaves frames in GPU memory, for GPU backends; "
                                 f"this engine runs on {backend.kind} ({backend.device})")
            if copy_on == "decoder":
                raise ValueError("decode='nvdec' leaves frames in GPU memory: there is no copy "
                                 "for copy_on='decoder' to make; drop one of them")
            clash = sorted({"hwaccel", "device_frames", "format", "plane_allocator"}
                           & set(source_options))
            if clash:
                raise ValueError(f"decode='nvdec' sets {', '.join(clash)} itself; drop them")
            # One decoder thread: NVDEC does the work, and FFmpeg's frame threads only add CPU
            # (10-20% more a frame in the stream for 2-3% more fps, BENCHMARKS.md).
            source_options = {"threads": 1, **source_options, "hwaccel": "cuda",
                              "device_frames": True,
                              "hwaccel_device": int(getattr(backend, "ordinal", 0))}

        gpu = None
        buffers = None
        if on_gpu:
            from ._gpu import FrameBuffers, GpuRunner

            def gpu() -> GpuRunner:
                # upload="pack": frames left in the decoder's memory are copied (their window)
                # into the slot's pinned staging by the stream's worker, not by the decode thread.
                return GpuRunner(self._cuda_device(), backend, pre,  # type: ignore[arg-type]
                                 slots=slots, max_batch=batch, upload="pack")

            if copy_on == "decoder" and "plane_allocator" not in source_options:
                # Enough for every frame that can be alive at once: the source's queue, the one
                # being decoded, the batch being gathered and those in flight, plus one spare.
                queued = int(source_options.get("queue_size", 4))
                buffers = FrameBuffers(self._cuda_device, count=queued + 2 + batch * (slots + 1))
                # Only the pixels the preprocess reads are copied (and uploaded): a centre crop
                # of a 16:9 frame skips ~45% of it. Asked once per frame size, not per frame.
                window = functools.lru_cache(maxsize=8)(pre.source_window)
                source_options = {**source_options, "plane_allocator": buffers.allocate,
                                  "plane_window": window}

        def open_frames() -> Any:
            from ..video import open_source
            if decode == "nvdec":
                self._cuda_device().share_with_ffmpeg()  # else FFmpeg refuses our context
            fmt = "rgb24" if not on_gpu else ("nv12" if decode == "nvdec" else "yuv420p")
            return open_source(source, format=fmt, policy=policy, **source_options)

        stream = ResultStream(backend=backend, preprocess=pre, input_name=image_input.spec.name,
                              source_factory=open_frames, postprocess=postprocess, batch=batch,
                              queue_size=queue_size, on_close=self._streams.discard,
                              _token=_CONSTRUCT, gpu=gpu, frame_buffers=buffers)
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
        """Run one RGB uint8 frame (H x W x 3) and return its :class:`Result` (``frame_index`` 0).

        On a GPU backend the frame takes the streaming path: its packed RGB pixels are uploaded
        and preprocessed by the GPU kernel in a slot of the engine's own runner (two slots, so
        concurrent calls overlap), and the result comes back through the runner's waiter thread.
        ``image`` may be reused once this returns. Cancelling the call abandons its result; the
        slot is returned when the GPU is done with it.
        """
        backend, pre, image_input = self._loaded()
        if backend.device == "cuda":
            return await self._infer_gpu(image, postprocess)
        start = time.perf_counter()

        def run() -> Result:
            x = preprocess_frame(pre, image)[None]
            outputs = backend.run({image_input.spec.name: x})
            prediction = (apply_postprocess(postprocess, outputs, backend=backend, preprocess=pre,
                                            frame_size=image.shape[:2])
                          if postprocess is not None else None)
            return Result(frame_index=0, pts=None, outputs=outputs,
                          latency=time.perf_counter() - start, source="<frame>",
                          prediction=prediction)

        return await asyncio.to_thread(run)

    async def _infer_gpu(self, image: npt.NDArray[np.uint8], postprocess: Postprocess | None
                         ) -> Result:
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3 and image.shape[0] > 0 and image.shape[1] > 0):
            found = (f"a {image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                     else type(image).__name__)
            raise ValueError(f"infer() takes an RGB uint8 image of shape (H, W, 3), got {found}")
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Mapping[str, npt.NDArray[np.generic]]] = loop.create_future()

        def settle(value: Mapping[str, npt.NDArray[np.generic]] | BaseException) -> bool:
            # Waiter thread. Nothing here can fail on the user's behalf: postprocess runs later,
            # off this thread, so a bad postprocess cannot break the runner other calls share.
            try:
                loop.call_soon_threadsafe(_settle, done, value)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return False
            return True

        def emit(frames: Any, outputs: Mapping[str, npt.NDArray[np.generic]], timings: Any) -> bool:
            return settle(outputs)

        def fail(frames: Any, error: BaseException) -> None:
            settle(error)

        frame = _RgbFrame(np.ascontiguousarray(image))
        await asyncio.to_thread(self._submit_gpu, frame, emit, fail)
        outputs = await done
        prediction = (await asyncio.to_thread(apply_postprocess, postprocess, outputs,
                                              backend=self.backend, preprocess=self.preprocess,
                                              frame_size=image.shape[:2])
                      if postprocess is not None else None)
        return Result(frame_index=0, pts=None, outputs=outputs,
                      latency=time.perf_counter() - start, source="<frame>", prediction=prediction)

    def _submit_gpu(self, frame: _RgbFrame, emit: Any, on_error: Any) -> None:
        """Submit one frame to the engine's infer runner (made on first use), one caller at a
        time: the runner's submit is single-threaded. Waits only while both slots are busy."""
        backend, pre, _ = self._loaded()
        with self._infer_lock:
            if self._released:
                raise ClosedResourceError(f"the engine for {str(self._model)!r} is closed")
            if self._infer_runner is None:
                from ._gpu import GpuRunner

                self._infer_runner = GpuRunner(self._cuda_device(), backend, pre,  # type: ignore[arg-type]
                                               slots=2, max_batch=1)
            self._infer_runner.submit([frame], emit, on_error)


@dataclass(frozen=True)
class _RgbFrame:
    """One user image as the GPU runner reads a frame: a single packed rgb24 plane."""

    image: npt.NDArray[np.uint8]
    format: str = "rgb24"
    colorspace: str = "bt601"   # unused for RGB input: there is no YUV to convert
    color_range: str = "full"

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def planes(self) -> tuple[npt.NDArray[np.uint8], ...]:
        return (self.image,)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if future.done():  # a cancelled infer() abandoned its result
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


# -- helpers shared with the CLI ------------------------------------------------------------
def open_backend(model: Path, name: str = "auto", *, threads: int | None = None,
                 plugins: Sequence[str | os.PathLike[str]] = ()) -> Backend:
    """Open the backend for a model file; ``InvalidModelError`` for a missing or broken file.
    ``plugins`` (TensorRT engines only): the plugin libraries to load, none unless named."""
    if not model.exists():
        raise InvalidModelError(f"model file not found: {str(model)!r}; check the path")
    if not model.is_file():
        raise InvalidModelError(f"{str(model)!r} is not a file; pass an .onnx model")
    suffix = model.suffix.lower()
    if name == "auto":
        name = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt",
                ".trt": "tensorrt"}.get(suffix, "")
    if plugins and name != "tensorrt":
        raise ValueError(f"plugins= applies to TensorRT engines; {str(model)!r} is run by "
                         f"{name or 'no backend'!r}")
    if name == "onnxruntime":
        check_onnx(model)
        return OnnxRuntimeBackend(model, threads=threads)
    if name == "tensorrt":
        from ..engines import load_engine

        return load_engine(model, plugins=plugins)
    raise EngineLoadError(
        f"cannot load {str(model)!r}: unknown model type {suffix!r} (backend={name or 'auto'!r}); "
        "pass an .onnx model, a TensorRT .engine or a PyTorch .pt/.pt2 file")


def check_onnx(model: Path) -> None:
    """Run ONNX's checker so a broken model fails with its reason, not deep inside a runtime;
    first, refuse external data outside the model's folder (see engines/_external_data.py)."""
    import onnx

    from ..engines._external_data import check_external_data

    check_external_data(model)
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
