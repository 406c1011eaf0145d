"""``load()`` and ``StreamingEngine``: a model kept loaded, streaming many sources.

``async with xs.load("model.int8.onnx") as engine`` loads the backend in a worker thread (the
event loop keeps running), checks that the Preprocess fits the model's image input, and warms the
model up so the first frame is not the slowest. The engine owns its backend and every stream it
opened: ``aclose()`` closes those streams, then what ``infer`` used on the GPU, then the backend.

Several streams may run on one engine at once; on a GPU backend each stream has its own slots,
CUDA stream and waiter thread (see runtime/_gpu_runner.py), and they share only the backend (one
execution context per slot) and the engine's CUDA device.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .._errors import ClosedResourceError, EngineLoadError
from .._lifecycle import NoPublicConstructor, leak_net
from ..engines import (Backend, ImageInput, TensorSpec, backend_kind, check_preprocess_fits,
                       find_image_input, is_torch_module, open_backend, open_torch,
                       resolve_preprocess)
from ..preprocess import Preprocess, preprocess_frame
from ._postprocess import apply_postprocess
from ._batcher import Camera
from ._many import MultiStream, batch_buckets
from ._result import Result
from ._stream import ResultStream

if TYPE_CHECKING:
    from ._gpu_runner import GpuRunner

__all__ = ["StreamingEngine", "load"]

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
    is_torch_file = (isinstance(model, (str, os.PathLike))
                     and backend_kind(model, backend) == "torch")
    if plugins and (is_torch_file or not isinstance(model, (str, os.PathLike))):
        raise ValueError("plugins= applies to a TensorRT engine file; pass the engine's path")
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if is_torch_file:
            return StreamingEngine._create(path, None, preprocess=preprocess, backend="torch",
                                           threads=threads, warmup=warmup, torch_model=path)
        return StreamingEngine._create(path, None, preprocess=preprocess, backend=backend,
                                       threads=threads, warmup=warmup, plugins=tuple(plugins))
    if isinstance(model, Backend):
        name = Path(str(getattr(model, "path", f"<{model.kind} backend>")))
        return StreamingEngine._create(name, model, preprocess=preprocess, backend=model.kind,
                                       threads=threads, warmup=warmup)
    if is_torch_module(model):
        if preprocess is None:
            raise ValueError("load(module) needs preprocess=xs.Preprocess(...): it gives the "
                             "module's input size, layout and dtype")
        return StreamingEngine._create(Path(f"<{type(model).__name__}>"), None,
                                       preprocess=preprocess, backend="torch", threads=threads,
                                       warmup=warmup, torch_model=model)
    raise TypeError("load() takes a model path, a torch.nn.Module / TorchScript module or an "
                    f"engine Backend, got {type(model).__name__}")


class StreamingEngine(metaclass=NoPublicConstructor):
    """A loaded model that streams sources. Obtain one from :func:`load`."""

    _made_by = "xinfer_stream.load(model)"

    def __init__(self, model: Path, opened: Backend | None, *, preprocess: Preprocess | None,
                 backend: str, threads: int | None, warmup: bool,
                 plugins: tuple[str | os.PathLike[str], ...] = (), torch_model: Any = None
                 ) -> None:
        self._model = model
        self._opened = opened
        self._plugins = plugins
        # A module or torch file given to load(): a TorchBackend is made on open.
        self._torch_model = torch_model
        self._requested_preprocess = preprocess
        self._backend_name = backend
        self._threads = threads
        self._warmup = warmup
        self._backend: Backend | None = None
        self._preprocess: Preprocess | None = None
        self._image_input: ImageInput | None = None
        self._streams: set[ResultStream | MultiStream] = set()
        self._cuda: Any = None  # xinfer_stream.cuda.Device, made for GPU backends on first stream
        self._cuda_lock = threading.Lock()
        # GPU infer(): one runner (its own slots), made on first use; submits are serialised.
        self._infer_runner: Any = None
        self._infer_lock = threading.Lock()
        self._released = False
        self._closed = False
        # What the leak net closes if the engine is collected open: infer's runner, the
        # backend, the CUDA device (in that order; filled in as they are made).
        self._owned: dict[str, Any] = {}
        self._finalizer: Any = None

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
            backend: Backend = open_torch(
                self._torch_model, resolve_preprocess(self._model, self._requested_preprocess))
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
                self._owned["backend"] = backend
                self._finalizer = leak_net(
                    self, f"StreamingEngine for {str(self._model)!r} (use 'async with "
                    "xs.load(...)')", _close_owned, self._owned)
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
            if self._finalizer is not None:
                self._finalizer.detach()
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
               batch: int = 1, queue_size: int = 4, slots: int = 2, decode: str = "cpu",
               images: bool = False, **source_options: Any) -> ResultStream:
        """Stream ``source`` (a path, several paths, a URL, a device or an iterable of RGB frames)
        through this engine: an async context manager and async iterator of :class:`Result`, one
        per decoded frame, in order.

        ``policy``: ``"every"`` (never drop; files default) or ``"latest"`` (keep the newest frame;
        live default). ``batch`` frames of a file are run together (results stay per frame).
        ``postprocess(outputs)`` runs on the stream's results thread (see runtime/_stream.py)
        and its return value is the ``Result.prediction``. On a GPU backend, a ``detect()`` of a
        yolov8 or yolox model decodes, thresholds and suppresses on the GPU for the whole batch
        when torch is installed, and ``Result.outputs`` is then only the kept
        boxes, ``{"detections": [1, K, 6]}`` (see runtime/_detect_gpu.py).

        On a GPU backend, ``slots`` batches are in flight at once (see runtime/_gpu_runner.py):
        raw yuv420p planes are decoded (arrays stay the RGB they are), the stream's worker
        copies the window of pixels the preprocess reads into the slot's pinned staging, and
        the GPU uploads and preprocesses it.
        ``decode="nvdec"`` decodes on the GPU's video engine instead and leaves the frames in GPU
        memory, copied device to device into the slot: no host copy and almost no CPU a frame;
        a codec NVDEC cannot decode falls back to the CPU, with the reason logged. It makes the
        process wait for this GPU by sleeping, not spinning, from then on
        (:meth:`xinfer_stream.cuda.Device.share_with_ffmpeg`). With ``process=True`` as well,
        a worker process drives NVDEC (its own CUDA context) and writes each frame, copied to
        host memory, into the shared-memory ring the GPU reads: this process then does neither
        the decoding nor FFmpeg's per-frame work. Several streams may run at once, each with
        its own slots.

        ``images=True``: each :class:`Result` also carries ``image``, the frame as a new RGB
        uint8 ``(H, W, 3)`` array (made on the results thread: a copy of an RGB frame, a swscale
        conversion of the YUV planes the GPU path decodes: median 3.3 ms a 1080p frame on
        one core of an AMD EPYC, tools/bench_images.py). Off by default, and free when off. Refused with
        ``decode="nvdec"`` (``ValueError``): NVDEC frames have no host copy, and copying them
        back would undo what NVDEC saves; decode on the CPU for pictures.
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
        _check_decode(decode, backend, bool(images))
        if decode == "nvdec":
            clash = sorted({"hwaccel", "device_frames", "format"} & set(source_options))
            if clash:
                raise ValueError(f"decode='nvdec' sets {', '.join(clash)} itself; drop them")
            source_options = _nvdec_options(source_options, backend)

        gpu = None
        if on_gpu:
            postprocess, gpu = self._gpu_runners(backend, postprocess, pre, slots=slots,
                                                 max_batch=batch)

        def open_frames() -> Any:
            from ..video import open_source
            if decode == "nvdec" and not source_options.get("process"):
                self._cuda_device().share_with_ffmpeg()  # else FFmpeg refuses our context
            options = self._pinned_ring(source_options) if on_gpu else source_options
            return open_source(source, format=_source_format(source, on_gpu, decode),
                               policy=policy, **options)

        stream = ResultStream._create(
            backend=backend, preprocess=pre, input_name=image_input.spec.name,
            source_factory=open_frames, postprocess=postprocess, batch=batch,
            queue_size=queue_size, on_close=self._streams.discard, gpu=gpu, images=bool(images))
        self._streams.add(stream)
        return stream

    def stream_many(self, sources: Mapping[str, Any], *, max_batch: int | None = None,
                    max_wait: float = 0.010, policy: str | None = None,
                    reconnect: Any = True, postprocess: Postprocess | None = None,
                    decode: str = "cpu", queue_size: int = 2, end_when_idle: bool = True,
                    images: bool = False) -> MultiStream:
        r"""Stream many cameras through this engine, batched across cameras: an async context
        manager and async iterator of :class:`Result` (``result.camera`` is its name; each
        camera's results in its frame order) and :class:`CameraEvent` (opened, ended, failed,
        removed: one camera's trouble never ends the others). See runtime/_many.py.

        ``sources`` maps camera names to anything :meth:`stream` takes, or to a :class:`Camera` (its
        own policy, reconnect budget and ``open_source`` options, e.g. ``Camera("clip.mp4",
        options={"realtime": True, "loop": True})``). Frames of all cameras go into one engine call
        of up to ``max_batch`` frames (default: the engine's max batch, or 32 where it has none),
        dispatched when the batch is full, when every camera has a frame in it, or when its oldest
        frame has waited ``max_wait`` seconds (DeepStream's batched-push-timeout), oldest first
        across cameras so no camera starves. ``policy`` and ``reconnect`` are every camera's
        defaults. ``queue_size``: frames a camera may have waiting (policy ``every``; ``latest``
        keeps one). ``decode="nvdec"``: as in :meth:`stream`; a :class:`Camera`'s own ``decode``
        overrides it for that camera (NVDEC for some cameras, the CPU for the rest). A camera
        decoded in a worker process (``options={"process": True}``; with ``decode="nvdec"`` the
        worker drives NVDEC) has its shared-memory ring registered with the GPU, which copies
        its frames from there. ``end_when_idle=False``
        keeps the iteration going with no camera left (a service that
        :meth:`MultiStream.add`\ s cameras later; then ``sources`` may be empty).

        On a GPU backend each frame layout (pixel format and size) among the cameras gets one
        GPU runner with two slots, each replaying a CUDA graph per batch bucket (1, 2, 4, ...
        ``max_batch``): a TensorRT engine with a dynamic batch needs two optimization profiles
        per layout (build it with ``profiles=``; the CLI's ``--profiles``). A ``detect()``
        postprocess runs on the GPU for whole batches as in :meth:`stream`.

        ``images=True``: every camera's results carry ``image`` (as in :meth:`stream`); a
        :class:`Camera` with ``images=`` decides for itself. A camera wanting images with
        ``decode="nvdec"`` is refused (``ValueError``; for a :class:`Camera` added later, its
        ``"failed"`` event says so).
        """
        backend, pre, image_input = self._loaded()
        engine_max = backend.max_batch
        if max_batch is None:
            max_batch = engine_max or 32
        if not isinstance(max_batch, int) or max_batch < 1 or (engine_max is not None
                                                               and max_batch > engine_max):
            raise ValueError(f"max_batch must be between 1 and the engine's max batch "
                             f"({engine_max or 'unbounded'}), got {max_batch!r}")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be seconds >= 0, got {max_wait!r}")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size!r}")
        if policy is not None and policy not in ("every", "latest"):
            raise ValueError(f"policy must be 'every' or 'latest', got {policy!r}")
        _check_decode(decode, backend, bool(images))  # every camera's default
        if not isinstance(sources, Mapping):
            raise TypeError(f"stream_many() takes a mapping of camera names to sources, got "
                            f"{type(sources).__name__}; e.g. {{'door': 'rtsp://...'}}")
        if not sources and end_when_idle:
            raise ValueError("stream_many() got no cameras, so it would end at once; pass "
                             "cameras, or end_when_idle=False to start empty and add() them")
        on_gpu = backend.device == "cuda"

        def decode_of(camera: Camera) -> str:
            """Where ``camera`` decodes; ``ValueError`` for what this engine cannot take."""
            where = camera.decode or decode
            _check_decode(where, backend, bool(images if camera.images is None
                                               else camera.images))
            return where

        for source in sources.values():
            decode_of(source if isinstance(source, Camera) else Camera(source))

        def open_frames(camera: Camera) -> Any:
            from ..video import open_source
            options = dict(camera.options)
            where = decode_of(camera)
            if where == "nvdec":
                options = _nvdec_options(options, backend)
                if not options.get("process"):
                    self._cuda_device().share_with_ffmpeg()
            if on_gpu:
                options = self._pinned_ring(options)
            options.setdefault("queue_size", queue_size)
            return open_source(camera.source,
                               format=_source_format(camera.source, on_gpu, where),
                               policy=camera.policy,
                               reconnect=camera.reconnect, **options)

        gpu = None
        if on_gpu:
            postprocess, gpu = self._gpu_runners(backend, postprocess, pre, slots=2,
                                                 max_batch=max_batch,
                                                 buckets=batch_buckets(max_batch))

        stream = MultiStream._create(
            backend=backend, preprocess=pre, input_name=image_input.spec.name,
            open_frames=open_frames, postprocess=postprocess, max_batch=max_batch,
            max_wait=float(max_wait), queue_size=queue_size, end_when_idle=end_when_idle,
            default_policy=policy, default_reconnect=reconnect,
            on_close=self._streams.discard, gpu=gpu, default_images=bool(images))
        try:
            for name, source in sources.items():
                stream.add(name, source)
        except BaseException:
            stream._release()
            raise
        self._streams.add(stream)
        return stream

    def _gpu_runners(self, backend: Backend, postprocess: Postprocess | None, pre: Preprocess,
                     *, slots: int, max_batch: int, buckets: Sequence[int] = ()
                     ) -> tuple[Postprocess | None, Callable[[], GpuRunner]]:
        """A stream's GPU runner factory, and the postprocess its results get: a detector's
        postprocess that can run on the GPU (runtime/_detect_gpu.py) becomes the runner's batch
        stage, and the kept boxes reach the returned postprocess, mapped per frame."""
        from ._detect_gpu import gpu_detect_stage
        from ._gpu_runner import GpuRunner

        stage = gpu_detect_stage(postprocess, backend, pre)
        if stage is not None:
            postprocess = stage.postprocess

        def gpu() -> GpuRunner:
            return GpuRunner(self._cuda_device(), backend, pre,  # type: ignore[arg-type]
                             slots=slots, max_batch=max_batch, buckets=buckets,
                             stage=stage.for_runner() if stage is not None else None)
        return postprocess, gpu

    def _pinned_ring(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``open_source`` options of a GPU stream: a source decoded in a worker process
        (``process=True``) registers its shared-memory ring with this engine's device, whose
        runner then copies frames from it by DMA (runtime/_upload.py)."""
        if not options.get("process") or "pin_memory" in options:
            return dict(options)
        device = self._cuda_device()

        def pin_memory(address: int, nbytes: int) -> Callable[[], None]:
            return device.register_host(address, nbytes).close  # type: ignore[no-any-return]
        return {**options, "pin_memory": pin_memory}

    def _cuda_device(self) -> Any:
        """The engine's CUDA device (made once; closed with the engine)."""
        with self._cuda_lock:
            if self._cuda is None:
                from ..cuda import Device
                self._cuda = self._owned["device"] = Device(int(getattr(self._backend, "ordinal", 0)))
            return self._cuda

    async def infer(self, image: npt.NDArray[np.uint8], *, postprocess: Postprocess | None = None
                    ) -> Result:
        """Run one RGB uint8 frame (H x W x 3) and return its :class:`Result` (``frame_index`` 0).

        On a GPU backend the frame takes the streaming path: its window is packed into a slot's
        pinned staging, uploaded and preprocessed by the GPU kernel in a slot of the engine's own
        runner (two slots, so concurrent calls overlap), and the outputs come back through the
        runner's waiter thread. ``postprocess`` runs in a worker thread of the loop's default
        executor (``asyncio.to_thread``), for every backend, after the slot is free. ``image``
        may be reused once this returns. Cancelling the call abandons its result; the slot is
        returned when the GPU is done with it.
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

        def settle(value: Mapping[str, npt.NDArray[np.generic]] | BaseException) -> None:
            # Waiter thread. Nothing here can fail on the user's behalf: postprocess runs later,
            # off this thread, so a bad postprocess cannot break the runner other calls share.
            try:
                loop.call_soon_threadsafe(_settle, done, value)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        def emit(frames: Any, outputs: Mapping[str, npt.NDArray[np.generic]], timings: Any) -> None:
            settle(outputs)

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
                from ._gpu_runner import GpuRunner

                self._infer_runner = self._owned["runner"] = GpuRunner(
                    self._cuda_device(), backend, pre, slots=2, max_batch=1)  # type: ignore[arg-type]
            self._infer_runner.submit([frame], emit, on_error)


def _nvdec_options(options: Mapping[str, Any], backend: Backend) -> dict[str, Any]:
    """Source options that decode on the backend's GPU with one decoder thread (NVDEC does the
    work, and FFmpeg's frame threads would only add CPU). The frames stay in GPU memory, except
    from a worker process (``process=True``), where they come to its shared-memory ring."""
    nvdec = {"threads": 1, **options, "hwaccel": "cuda",
             "hwaccel_device": int(getattr(backend, "ordinal", 0))}
    if not options.get("process"):
        nvdec["device_frames"] = True
    return nvdec


def _source_format(source: Any, on_gpu: bool, decode: str) -> str:
    """The pixel format a source is opened in. CPU backends: RGB, what the numpy preprocess
    reads. GPU backends: what the decoder makes, which the fused kernel reads as it is: nv12
    from NVDEC, yuv420p from FFmpeg's software decoders, and rgb24 for arrays, which are RGB
    already (asking for YUV would cost a swscale pass a frame and halve their colour
    resolution)."""
    from ..video import is_frame_iterable

    if not on_gpu:
        return "rgb24"
    if decode == "nvdec":
        return "nv12"
    return "rgb24" if is_frame_iterable(source) else "yuv420p"


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


def _check_decode(decode: str, backend: Backend, images: bool) -> None:
    """``ValueError`` for a ``decode`` this engine cannot take: an unknown one, NVDEC on a CPU
    backend, or NVDEC for results that should carry images (NVDEC keeps the pixels on the
    GPU)."""
    if decode not in _DECODE:
        raise ValueError(f"decode must be one of {', '.join(_DECODE)}, got {decode!r}")
    if decode != "nvdec":
        return
    if backend.device != "cuda":
        raise ValueError(f"decode='nvdec' leaves frames in GPU memory, for GPU backends; this "
                         f"engine runs on {backend.kind} ({backend.device})")
    if images:
        raise ValueError("images=True needs the frames' pixels in host memory, and "
                         "decode='nvdec' keeps them on the GPU: decode on the CPU "
                         "(decode='cpu') for results with images")


def _close_owned(owned: dict[str, Any]) -> None:
    for name in ("runner", "backend", "device"):
        if owned.get(name) is not None:
            owned[name].close()


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if future.done():  # a cancelled infer() abandoned its result
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
