"""The GPU streaming path (runtime/_gpu_runner.py) and the torch backend (engines/_torch.py), on a
GPU."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import xinfer_stream.cuda as xcuda
from xinfer_stream._errors import ClosedResourceError, InferenceError, InvalidModelError
from xinfer_stream.cuda import Device
from xinfer_stream.preprocess import Preprocess
from xinfer_stream.preprocess._color import YuvColor, preprocess_raw
from xinfer_stream.preprocess._frames import FrameLayout

pytestmark = pytest.mark.gpu

SPEC = Preprocess((32, 48), "letterbox", (120.0, 110.0, 100.0), (60.0, 50.0, 40.0))


@pytest.fixture(scope="module")
def device(torch: Any) -> Iterator[Device]:
    with Device(0) as dev:
        yield dev


def small_model(torch: Any) -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 5))


@dataclass(frozen=True)
class Frame:
    """A raw frame as the video layer hands it over (VideoFrame's fields the runner reads)."""

    index: int
    format: str
    width: int
    height: int
    planes: tuple[npt.NDArray[np.uint8], ...]
    colorspace: str = "bt709"
    color_range: str = "limited"

    @property
    def packed(self) -> npt.NDArray[np.uint8]:
        return np.concatenate([p.ravel() for p in self.planes])


def yuv_frame(index: int, h: int = 60, w: int = 80) -> Frame:
    rng = np.random.default_rng(index)
    ch, cw = (h + 1) // 2, (w + 1) // 2
    planes = (rng.integers(0, 256, (h, w), dtype=np.uint8),
              rng.integers(0, 256, (ch, cw), dtype=np.uint8),
              rng.integers(0, 256, (ch, cw), dtype=np.uint8))
    return Frame(index, "yuv420p", w, h, planes)


def expected(torch: Any, model: Any, frame: Frame) -> npt.NDArray[np.generic]:
    layout = FrameLayout("yuv420p", frame.height, frame.width)
    x = preprocess_raw(SPEC, layout, frame.packed, YuvColor(frame.colorspace, frame.color_range))  # type: ignore[arg-type]
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(x[None])).cuda()).cpu().numpy()


class Collector:
    def __init__(self) -> None:
        self.results: list[tuple[int, npt.NDArray[np.generic]]] = []
        self.threads: set[str] = set()

    def __call__(self, frames: Sequence[Any], outputs: Mapping[str, npt.NDArray[np.generic]],
                 timings: Any) -> None:
        self.threads.add(threading.current_thread().name)
        assert timings.compute > 0 and timings.pack >= 0
        for i, frame in enumerate(frames):
            self.results.append((frame.index, outputs["output"][i]))


@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_results_are_in_order_and_match_the_reference(torch: Any, device: Device, graphs: bool,
                                                      batch: int) -> None:
    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime._gpu_runner import GpuRunner
    model = small_model(torch)
    frames = [yuv_frame(i) for i in range(10)]
    with TorchBackend(model, input_shape=(None, 3, 32, 48)) as backend:
        want = {f.index: expected(torch, backend._module, f)[0] for f in frames}
        collect = Collector()
        with GpuRunner(device, backend, SPEC, slots=2, max_batch=batch, graphs=graphs) as runner:
            for start in range(0, len(frames), batch):
                runner.submit(frames[start:start + batch], collect)
            runner.drain()
            assert runner.graph_mode == ("graph" if graphs else "plain")
            stats = runner.statistics()
        assert [i for i, _ in collect.results] == list(range(10))
        assert collect.threads == {"xinfer-gpu-waiter"}
        for index, got in collect.results:
            np.testing.assert_allclose(got, want[index], rtol=1e-4, atol=1e-4)
        # Full batches replay the slot's graph (the upload inside it); at batch 3 the last
        # batch of 10 frames is partial: plain enqueue.
        assert stats.graph_batches == (10 // batch if graphs else 0)
        assert stats.plain_batches == -(-10 // batch) - stats.graph_batches
        assert stats.graph_captures <= (2 if graphs else 0) and stats.compute.count == stats.pack.count
        # The backend outlives the runner.
        x = np.zeros((1, 3, 32, 48), np.float32)
        assert backend.run({"input": x})["output"].shape == (1, 5)


@pytest.mark.parametrize("shape", [(40, 160), (200, 640)])
@pytest.mark.parametrize("fmt", ["yuv420p", "nv12"])
def test_frames_upload_only_the_window_the_preprocess_reads(torch: Any, device: Device,
                                                            fmt: str,
                                                            shape: tuple[int, int]) -> None:
    """shorter_crop of a wide frame reads its centre: only that window is copied into the slot's
    staging (which keeps earlier frames' bytes) and uploaded, and bytes outside it (random here,
    different in every frame) never reach the output."""
    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime._gpu_runner import GpuRunner
    crop = Preprocess((32, 48), "shorter_crop", (120.0, 110.0, 100.0), (60.0, 50.0, 40.0))
    height, width = shape
    layout = FrameLayout(fmt, height, width)  # type: ignore[arg-type]
    rows, columns = crop.source_window(height, width)
    rng = np.random.default_rng(5)
    packed = [rng.integers(0, 256, layout.nbytes, dtype=np.uint8) for _ in range(5)]
    color = YuvColor("bt709", "limited")
    model = small_model(torch)
    with TorchBackend(model, input_shape=(None, 3, 32, 48)) as backend:
        with torch.inference_mode():
            want = [backend._module(torch.from_numpy(preprocess_raw(crop, layout, p, color)[None])
                                    .cuda()).cpu().numpy()[0] for p in packed]
        frames = [Frame(i, fmt, width, height, layout.unpack(p)) for i, p in enumerate(packed)]
        collect = Collector()
        with GpuRunner(device, backend, crop, slots=2, max_batch=2) as runner:
            runner.submit(frames[:1], collect)
            runner.submit(frames[1:3], collect)
            runner.submit(frames[3:], collect)
            runner.drain()
            stats = runner.statistics()
    assert stats.windowed_upload is True
    assert stats.upload_bytes_per_frame == sum(
        w.nbytes for w in layout.windows(rows, columns)) < 0.5 * layout.nbytes
    assert [index for index, _ in collect.results] == [0, 1, 2, 3, 4]
    for index, got in collect.results:
        np.testing.assert_allclose(got, want[index], rtol=1e-4, atol=1e-4)


def test_frames_of_a_new_size_regrow_the_slots(torch: Any, device: Device) -> None:
    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime._gpu_runner import GpuRunner
    model = small_model(torch)
    frames = [yuv_frame(0, 40, 50), yuv_frame(1, 120, 160), yuv_frame(2, 41, 51)]
    with TorchBackend(model, input_shape=(None, 3, 32, 48)) as backend:
        want = {f.index: expected(torch, backend._module, f)[0] for f in frames}
        collect = Collector()
        with GpuRunner(device, backend, SPEC, slots=2) as runner:
            for f in frames:
                runner.submit([f], collect)
            runner.drain()
    for index, got in collect.results:
        np.testing.assert_allclose(got, want[index], rtol=1e-4, atol=1e-4)


def test_an_error_in_emit_reaches_the_submitter_chained(torch: Any, device: Device) -> None:
    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime._gpu_runner import GpuRunner

    def broken(frames: Sequence[Any], outputs: Any, timings: Any) -> None:
        raise KeyError("postprocess bug")

    with TorchBackend(small_model(torch), input_shape=(None, 3, 32, 48)) as backend, \
            GpuRunner(device, backend, SPEC) as runner:
        runner.submit([yuv_frame(0)], broken)
        with pytest.raises(InferenceError, match="postprocess bug") as info:
            runner.drain()
        assert isinstance(info.value.__cause__, KeyError)
        with pytest.raises(InferenceError):
            runner.submit([yuv_frame(1)], broken)
    runner.close()
    with pytest.raises(ClosedResourceError):
        runner.submit([yuv_frame(1)], Collector())


def test_unsupported_frame_formats_are_refused(torch: Any, device: Device) -> None:
    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime._gpu_runner import GpuRunner
    with TorchBackend(small_model(torch), input_shape=(None, 3, 32, 48)) as backend, \
            GpuRunner(device, backend, SPEC) as runner:
        bgra = Frame(0, "bgra", 4, 4, (np.zeros((4, 16), np.uint8),))
        with pytest.raises(InferenceError, match="format='yuv420p'"):
            runner.submit([bgra], Collector())


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The given buffer is not writable:UserWarning")  # torch.export.load
def test_torch_backend_loads_torchscript_and_export_files(torch: Any, tmp_path: Path) -> None:
    from xinfer_stream.engines._torch import TorchBackend
    model = small_model(torch).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 48)).astype(np.float32)
    want = model(torch.from_numpy(x)).detach().numpy()
    scripted = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(model), str(scripted))
    exported = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (torch.from_numpy(x),)), str(exported))
    for path, batch in ((scripted, None), (exported, 2)):  # the export has a fixed batch of 2
        with TorchBackend(path, input_shape=(batch, 3, 32, 48)) as backend:
            assert backend.kind == "torch" and backend.device == "cuda"
            assert [o.describe() for o in backend.outputs] == ["output [?,5] float32"]
            np.testing.assert_allclose(backend.run({"input": x})["output"], want, rtol=1e-4,
                                       atol=1e-4)
    with pytest.raises(InvalidModelError, match="not found"):
        TorchBackend(tmp_path / "missing.pt", input_shape=(None, 3, 32, 48))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InvalidModelError, match="could not load"):
        TorchBackend(tmp_path / "junk.pt", input_shape=(None, 3, 32, 48))


def test_torch_context_borrows_buffers_without_copies(torch: Any, device: Device) -> None:
    from xinfer_stream.engines._torch import TorchBackend
    with TorchBackend(small_model(torch), input_shape=(None, 3, 32, 48), dtype="float16") as backend, \
            device.device_pool(3 * 32 * 48 * 2, 1) as in_pool, device.device_pool(5 * 2, 1) as out_pool, \
            device.create_stream() as stream, in_pool.acquire() as inp, out_pool.acquire() as out:
        context = backend.create_context()
        context.set_output("output", out.pointer)
        context.set_input("input", inp.pointer, (1, 3, 32, 48))
        assert context._input.data_ptr() == inp.pointer
        assert context._outputs["output"].data_ptr() == out.pointer
        x = np.random.default_rng(1).standard_normal((1, 3, 32, 48)).astype(np.float16)
        inp.write(x)
        context.enqueue(stream=stream.handle)
        stream.synchronize()
        np.testing.assert_allclose(out.read(np.float16, (1, 5)).astype(np.float32),
                                   backend.run({"input": x})["output"].astype(np.float32),
                                   rtol=1e-2, atol=1e-2)
        graph = context.capture_graph(lambda: context.enqueue(stream=stream.handle),
                                      stream=stream)
        # A graph dropped unclosed gives its memory pool back, with a warning.
        with pytest.warns(ResourceWarning, match="unclosed torch CUDA graph"):
            del graph
            gc.collect()
        context.close()
        with pytest.raises(ClosedResourceError):
            context.enqueue(stream=stream.handle)


def test_torch_contexts_and_graphs_come_only_from_their_owner() -> None:
    from xinfer_stream.engines._torch import TorchExecutionContext, TorchGraph
    for cls in (TorchExecutionContext, TorchGraph):
        with pytest.raises(TypeError, match="no public constructor"):
            cls(None)


CLIP_SPEC = Preprocess((32, 48), "shorter_crop", (123.7, 116.3, 103.5), (58.4, 57.1, 57.4))


def clip_reference(torch: Any, model: Any, clip: Path, count: int) -> list[npt.NDArray[np.generic]]:
    """The model's outputs for the clip's first ``count`` frames: the same decoded planes
    through the numpy oracle (CLIP_SPEC) and the model."""
    from xinfer_stream.video import open_source

    source = open_source(str(clip), format="yuv420p")
    want = []
    try:
        while len(want) < count and (frame := source.get()) is not None:
            layout = FrameLayout("yuv420p", frame.height, frame.width)
            x = preprocess_raw(CLIP_SPEC, layout, np.concatenate([p.ravel() for p in frame.planes]),
                               YuvColor(frame.colorspace, frame.color_range))  # type: ignore[arg-type]
            with torch.inference_mode():
                want.append(model.cuda()(torch.from_numpy(x[None]).cuda()).cpu().numpy())
    finally:
        source.close()
    return want


def test_engine_stream_runs_a_real_clip_on_the_gpu(torch: Any, bundled_clip: Path) -> None:
    import asyncio

    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime import load

    spec = CLIP_SPEC
    model = small_model(torch)
    want = clip_reference(torch, model, bundled_clip, 12)

    async def main() -> tuple[list[Any], Any, list[Any]]:
        backend = TorchBackend(model, input_shape=(None, 3, 32, 48))
        async with load(backend, preprocess=spec) as engine:
            got = []
            async with engine.stream(str(bundled_clip), slots=2) as results:
                async for result in results:
                    got.append(result)
                    if len(got) == 12:
                        break  # leaving early releases the stream
                stats = results.statistics()
            again = []
            async with engine.stream(str(bundled_clip), batch=4) as results:
                async for result in results:
                    again.append(result)
                    if len(again) == 8:
                        break
            return got, stats, again

    got, stats, again = asyncio.run(main())
    assert [r.frame_index for r in got] == list(range(12))
    assert [r.frame_index for r in again] == list(range(8))
    for result, expect in zip(got, want):
        np.testing.assert_allclose(result.outputs["output"], expect, rtol=1e-4, atol=1e-4)
    for result, expect in zip(again, want):
        np.testing.assert_allclose(result.outputs["output"], expect, rtol=1e-4, atol=1e-4)
    assert stats.gpu is not None and stats.gpu.graph_mode == "graph"
    assert stats.backend == "torch" and stats.batch == 1
    # Only the centre the crop reads was copied and uploaded.
    assert stats.gpu.windowed_upload is True
    layout = FrameLayout("yuv420p", 360, 640)  # the bundled clip
    assert stats.gpu.upload_bytes_per_frame == sum(
        w.nbytes for w in layout.windows(*spec.source_window(360, 640))) < layout.nbytes
    assert stats.inference.p50 > 0 and stats.end_to_end.p50 > 0
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]


def test_several_streams_run_at_once_on_one_engine_each_with_its_own_slots(
        torch: Any, bundled_clip: Path) -> None:
    import asyncio

    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime import load

    model = small_model(torch)
    want = clip_reference(torch, model, bundled_clip, 16)
    streams = 3

    async def main() -> tuple[list[list[Any]], list[Any], int]:
        backend = TorchBackend(model, input_shape=(None, 3, 32, 48))
        all_started = asyncio.Event()
        started = 0
        waiters_seen = 0
        runners: list[Any] = []
        async with load(backend, preprocess=CLIP_SPEC) as engine:

            async def consume(batch: int) -> list[Any]:
                nonlocal started, waiters_seen
                got: list[Any] = []
                async with engine.stream(str(bundled_clip), slots=2, batch=batch) as results:
                    async for result in results:
                        got.append(result)
                        if len(got) == 1:
                            # Hold every stream at its first result until all have one: they
                            # are then all running at once, each with its own waiter thread.
                            started += 1
                            if started == streams:
                                waiters_seen = sum(t.name == "xinfer-gpu-waiter"
                                                   for t in threading.enumerate())
                                all_started.set()
                            await all_started.wait()
                        if len(got) == 16:
                            break
                    runners.append(results._runner)
                return got

            got = await asyncio.gather(*(consume(batch) for batch in (1, 2, 4)))
        return got, runners, waiters_seen

    got, runners, waiters_seen = asyncio.run(main())
    assert waiters_seen == streams
    assert len({id(r) for r in runners}) == streams and all(r.slots == 2 for r in runners)
    assert all(r.closed for r in runners)
    for results in got:
        assert [r.frame_index for r in results] == list(range(16))
        for result, expect in zip(results, want, strict=True):
            np.testing.assert_allclose(result.outputs["output"], expect, rtol=1e-4, atol=1e-4)
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]


def test_infer_on_a_gpu_backend_takes_the_gpu_path(torch: Any) -> None:
    import asyncio

    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.preprocess import preprocess_frame
    from xinfer_stream.runtime import classify, load

    model = small_model(torch)
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(6)]
    images.append(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8))  # another size: regrow

    def broken(outputs: Any) -> Any:
        raise KeyError("postprocess bug")

    async def main() -> tuple[list[Any], Any, Any, Any]:
        backend = TorchBackend(model, input_shape=(None, 3, 32, 48))
        async with load(backend, preprocess=SPEC) as engine:
            results = await asyncio.gather(*(engine.infer(image) for image in images))
            runner = engine._infer_runner
            stats = runner.statistics()
            # A failing postprocess fails that call only; the runner others share is unharmed.
            with pytest.raises(KeyError, match="postprocess bug"):
                await engine.infer(images[0], postprocess=broken)
            again = await engine.infer(images[1], postprocess=classify(top=2))
            with pytest.raises(ValueError, match="RGB uint8"):
                await engine.infer(images[0][:, :, :2])
        assert runner.closed
        return results, stats, again, backend

    results, stats, again, backend = asyncio.run(main())
    with torch.inference_mode():
        want = [model.cuda()(torch.from_numpy(preprocess_frame(SPEC, image)[None]).cuda()).cpu()
                .numpy() for image in images]
    for result, expect in zip(results, want, strict=True):
        assert result.frame_index == 0 and result.latency > 0
        np.testing.assert_allclose(result.outputs["output"], expect, rtol=1e-4, atol=1e-4)
    assert stats.graph_batches + stats.plain_batches == len(images)
    assert stats.graph_batches > 0 and stats.compute.p50 > 0
    np.testing.assert_allclose(again.outputs["output"], want[1], rtol=1e-4, atol=1e-4)
    assert again.prediction.best[0] == int(np.argmax(want[1]))
    assert backend.closed
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]


def test_load_streams_a_torchscript_file_by_path(torch: Any, bundled_clip: Path,
                                                 tmp_path: Path) -> None:
    import asyncio
    import warnings

    from xinfer_stream.runtime import load

    model = small_model(torch).eval()
    path = tmp_path / "model.pt"
    with warnings.catch_warnings():  # torch 2.10+ deprecates TorchScript; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    want = clip_reference(torch, model, bundled_clip, 6)

    async def main() -> tuple[str, list[Any]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            engine = load(path, preprocess=CLIP_SPEC)
            await engine.open()
        async with engine:
            got = []
            async with engine.stream(str(bundled_clip)) as results:
                async for result in results:
                    got.append(result)
                    if len(got) == 6:
                        break
            return engine.backend.kind, got

    kind, got = asyncio.run(main())
    assert kind == "torch"
    for result, expect in zip(got, want, strict=True):
        np.testing.assert_allclose(result.outputs["output"], expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("point", ["opening", "iterating", "in_the_body", "body_raises", "infer"])
def test_cancelling_gpu_work_leaves_no_thread_or_buffer(torch: Any, bundled_clip: Path,
                                                        point: str) -> None:
    """Cancel (or fail) a GPU stream, or an ``infer``, at each place a consumer can be: every
    pinned and device pool the stream made is freed (counted by the CUDA layer), its threads are
    gone, and the engine streams again; closing the engine frees the rest."""
    import asyncio

    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime import load

    model = small_model(torch)
    ours = lambda: [t.name for t in threading.enumerate() if t.name.startswith("xinfer")]  # noqa: E731
    before = xcuda.live_allocations()
    image = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)

    async def consume(engine: Any, started: asyncio.Event) -> None:
        async with engine.stream(str(bundled_clip), slots=2) as results:
            async for _ in results:
                started.set()
                if point == "body_raises":
                    raise KeyError("consumer bug")
                if point == "in_the_body":
                    await asyncio.sleep(10)       # cancelled here, a result in hand

    async def main() -> None:
        backend = TorchBackend(model, input_shape=(None, 3, 32, 48))
        async with load(backend, preprocess=CLIP_SPEC) as engine:
            await engine.infer(image)            # the engine's own infer runner exists from here
            loaded = xcuda.live_allocations()
            threads = ours()
            started = asyncio.Event()
            if point == "infer":
                task: asyncio.Task[Any] = asyncio.create_task(engine.infer(image))
                await asyncio.sleep(0)
            else:
                task = asyncio.create_task(consume(engine, started))
                if point == "opening":
                    await asyncio.sleep(0)           # inside stream().__aenter__
                else:
                    await asyncio.wait_for(started.wait(), 10)
                    await asyncio.sleep(0.05)        # results flowing, slots in flight
            if point == "body_raises":
                with pytest.raises(KeyError, match="consumer bug"):
                    await task
            else:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, 10)
            assert xcuda.live_allocations() == loaded, "the stream's pinned/device pools leaked"
            assert ours() == threads
            # The engine is unharmed: it streams and infers again.
            got = 0
            async with engine.stream(str(bundled_clip), slots=2) as results:
                async for _ in results:
                    got += 1
                    if got == 5:
                        break
            assert got == 5 and (await engine.infer(image)).outputs["output"].shape == (1, 5)
            assert xcuda.live_allocations() == loaded

    asyncio.run(main())
    assert xcuda.live_allocations() == before
    assert not ours()


# -- frames NVDEC decodes into GPU memory ------------------------------------------------------
def nvdec_unavailable(device: Device, clip: Path) -> str | None:
    """Why frames of ``clip`` cannot be kept on the GPU here (``None``: they can)."""
    from xinfer_stream.video import open_source

    device.share_with_ffmpeg()  # FFmpeg refuses the primary context otherwise
    with open_source(str(clip), format="nv12", hwaccel="cuda", device_frames=True) as source:
        frame = source.get()
        assert frame is not None
        on_gpu = frame.device is not None
        frame.release()
    return None if on_gpu else "NVDEC did not decode this clip here (software fallback, logged)"


def test_frames_kept_on_the_gpu_hold_exactly_the_software_decoders_pixels(
        torch: Any, device: Device, bundled_clip: Path) -> None:
    """H.264 decoding is exact: NVDEC's nv12 frames, read from GPU memory, equal FFmpeg's
    software yuv420p frames (U and V interleaved), plane for plane."""
    from xinfer_stream.video import open_source

    reason = nvdec_unavailable(device, bundled_clip)
    if reason is not None:
        pytest.skip(reason)
    frames = 20
    with open_source(str(bundled_clip), format="nv12", hwaccel="cuda", device_frames=True
                     ) as gpu_source, open_source(str(bundled_clip), format="yuv420p") as cpu_source:
        pool = device.device_pool(2 << 20, 1)
        stream = device.create_stream()
        ready = device.create_event()
        try:
            with pool.acquire() as planes:
                for index in range(frames):
                    on_gpu, on_cpu = gpu_source.get(), cpu_source.get()
                    assert on_gpu is not None and on_cpu is not None and on_gpu.device is not None
                    assert on_gpu.planes == () and on_gpu.format == "nv12"
                    assert (on_gpu.index, on_gpu.pts, on_gpu.width, on_gpu.height,
                            on_gpu.colorspace, on_gpu.color_range) == (
                        on_cpu.index, on_cpu.pts, on_cpu.width, on_cpu.height,
                        on_cpu.colorspace, on_cpu.color_range)
                    ready.record_legacy_stream()  # FFmpeg wrote the frame there
                    stream.wait(ready)
                    offset = 0
                    read = []
                    for plane in on_gpu.device.planes:
                        planes.copy_from_address_2d(plane.pointer, stream=stream,
                                                    width=plane.row_bytes, height=plane.rows,
                                                    source_pitch=plane.pitch, offset=offset)
                        read.append((offset, plane.rows, plane.row_bytes))
                        offset += plane.rows * plane.row_bytes
                    stream.synchronize()
                    on_gpu.release()
                    assert on_gpu.device.released
                    y, uv = (planes.read(np.uint8, (rows, width), offset=at)
                             for at, rows, width in read)
                    np.testing.assert_array_equal(y, on_cpu.planes[0], err_msg=f"Y of {index}")
                    np.testing.assert_array_equal(uv[:, 0::2], on_cpu.planes[1], err_msg=f"U of {index}")
                    np.testing.assert_array_equal(uv[:, 1::2], on_cpu.planes[2], err_msg=f"V of {index}")
        finally:
            ready.close()
            stream.close()
            pool.close()


@pytest.mark.parametrize("batch", [1, 4])
def test_engine_stream_reads_nvdec_frames_in_gpu_memory(torch: Any, device: Device,
                                                        bundled_clip: Path, batch: int) -> None:
    import asyncio

    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime import load

    reason = nvdec_unavailable(device, bundled_clip)
    if reason is not None:
        pytest.skip(reason)
    model = small_model(torch)
    count = 24
    want = clip_reference(torch, model, bundled_clip, count)
    before = xcuda.live_allocations()

    async def main() -> tuple[list[Any], Any, dict[str, tuple[int, int]]]:
        backend = TorchBackend(model, input_shape=(None, 3, 32, 48))
        async with load(backend, preprocess=CLIP_SPEC) as engine:
            loaded = xcuda.live_allocations()
            got = []
            async with engine.stream(str(bundled_clip), decode="nvdec", batch=batch) as results:
                async for result in results:
                    got.append(result)
                    if len(got) == count:
                        break  # leaving early releases the frames still queued on the GPU
                stats = results.statistics()
            assert xcuda.live_allocations() == loaded
            return got, stats, loaded

    got, stats, _ = asyncio.run(main())
    assert [r.frame_index for r in got] == list(range(count))
    for result, expect in zip(got, want, strict=True):
        np.testing.assert_allclose(result.outputs["output"], expect, rtol=1e-4, atol=1e-4)
    gpu = stats.gpu
    assert gpu is not None
    assert gpu.frames_from_device_memory >= count and gpu.graph_mode == "graph"
    layout = FrameLayout("nv12", 360, 640)  # the bundled clip, only its centre crop copied
    assert gpu.windowed_upload is True and gpu.upload_bytes_per_frame == sum(
        w.nbytes for w in layout.windows(*CLIP_SPEC.source_window(360, 640)))
    assert xcuda.live_allocations() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]


def test_a_frame_on_another_device_or_already_released_is_refused(torch: Any,
                                                                   device: Device) -> None:
    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime._gpu_runner import GpuRunner
    from xinfer_stream.video import DeviceFrame, DevicePlane, VideoFrame

    def frame(ordinal: int) -> VideoFrame:
        planes = (DevicePlane(1 << 20, 64, 60, 64), DevicePlane(1 << 21, 64, 30, 64))
        return VideoFrame(source="s", index=0, pts=None, format="nv12", planes=(), width=64,
                          height=60, colorspace="bt709", color_range="limited", decoded_at=0.0,
                          device=DeviceFrame(object(), planes, ordinal))  # type: ignore[arg-type]

    with TorchBackend(small_model(torch), input_shape=(None, 3, 32, 48)) as backend, \
            GpuRunner(device, backend, SPEC) as runner:
        elsewhere = frame(device.ordinal + 1)
        with pytest.raises(InferenceError, match="cannot be read by a runner on device"):
            runner.submit([elsewhere], Collector())
        released = frame(device.ordinal)
        released.release()
        with pytest.raises(InferenceError, match="released before it was read"):
            runner.submit([released], Collector())
        # The runner is unharmed.
        ok = Collector()
        runner.submit([yuv_frame(0)], ok)
        runner.drain()
        assert [i for i, _ in ok.results] == [0]


def test_nvdec_frames_downloaded_to_host_memory_match_software_decoding(
        torch: Any, device: Device, bundled_clip: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``hwaccel="cuda"`` without ``device_frames``: FFmpeg's own CUDA context, whatever this
    process did with CUDA before (PyTorch made the primary context here), frames downloaded."""
    import logging

    from xinfer_stream.video import open_source

    with caplog.at_level(logging.WARNING, logger="xinfer_stream.video"), \
            open_source(str(bundled_clip), format="nv12", hwaccel="cuda") as hardware, \
            open_source(str(bundled_clip), format="nv12") as software:
        for _ in range(10):
            got, want = hardware.get(), software.get()
            assert got is not None and want is not None and got.device is None
            for a, b in zip(got.planes, want.planes, strict=True):
                np.testing.assert_array_equal(a, b)
        stats = hardware.statistics()
        assert stats.frames_decoded >= 10 and stats.frames_decoded_on_device == stats.frames_decoded
        assert software.statistics().frames_decoded_on_device == 0
    assert not [r for r in caplog.records if "hardware decode" in r.getMessage()], caplog.text


def test_a_codec_nvdec_cannot_decode_falls_back_to_the_cpu_with_a_reason(
        torch: Any, device: Device, caplog: pytest.LogCaptureFixture) -> None:
    """A GIF has no NVDEC decoder: its frames arrive decoded on the CPU, as host nv12 frames,
    and the log says why."""
    import logging

    from .conftest import shared
    from xinfer_stream.video import open_source

    gif = shared("video/people-detection.gif")
    device.share_with_ffmpeg()
    with caplog.at_level(logging.WARNING, logger="xinfer_stream.video"), \
            open_source(str(gif), format="nv12", hwaccel="cuda", device_frames=True) as source:
        frames = list(source)
    assert len(frames) == 23
    assert all(f.device is None and len(f.planes) == 2 for f in frames)
    assert any("has no decoder for" in r.getMessage() and "gif" in r.getMessage()
               and "decoding in software" in r.getMessage() for r in caplog.records), caplog.text


def test_images_on_a_real_gpu_stream_match_the_cpu_decode(torch: Any, device: Device,
                                                          bundled_clip: Path) -> None:
    """``images=True`` on the GPU path (yuv420p decoded, windowed upload): each result's image
    is the whole frame in RGB, equal to decoding the clip as rgb24, in ``engine.stream`` and
    ``engine.stream_many``; nothing is left allocated."""
    import asyncio

    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime import load
    from xinfer_stream.video import open_source

    count = 24
    with open_source(str(bundled_clip), format="rgb24") as source:
        want = [f.image.copy() for _, f in zip(range(count), source)]
    model = small_model(torch)
    before = xcuda.live_allocations()

    async def main() -> tuple[list[Any], list[Any]]:
        backend = TorchBackend(model, input_shape=(None, 3, 32, 48))
        async with load(backend, preprocess=CLIP_SPEC) as engine:
            alone = []
            async with engine.stream(str(bundled_clip), batch=4, images=True) as results:
                async for r in results:
                    alone.append(r)
                    if len(alone) == count:
                        break
            many = []
            async with engine.stream_many({"c": str(bundled_clip)}, images=True) as items:
                async for item in items:
                    if getattr(item, "image", None) is not None:
                        many.append(item)
                    if len(many) == count:
                        break
        return alone, many

    alone, many = asyncio.run(main())
    for got in (alone, many):
        assert [r.frame_index for r in got] == list(range(count))
        for r, expect in zip(got, want, strict=True):
            assert r.image.shape == (360, 640, 3)
            np.testing.assert_array_equal(r.image, expect)
    assert xcuda.live_allocations() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]
