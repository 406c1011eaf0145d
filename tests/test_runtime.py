"""The CPU async runtime: ordering, batching, backpressure, errors, cancellation, cleanup.

A CPU fake backend stands in for a model so these tests check the runtime itself; the real
model and clips are exercised at the end.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest

import xinfer_stream as xs
from xinfer_stream.engines import TensorSpec

from .conftest import shared

PRE = xs.Preprocess(size=(8, 8), layout="nchw")


class FakeBackend:
    """Sums each frame's input; optionally sleeps per batch and fails on a given frame value."""

    def __init__(self, *, delay: float = 0.0, fail_on: int | None = None, max_batch: int | None = None,
                 shape: tuple[int | None, ...] = (None, 3, 8, 8)) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self._max_batch = max_batch
        self.batches: list[int] = []
        self._inputs = (TensorSpec("x", shape, "float32"),)
        self._closed = False

    kind = "fake"

    @property
    def device(self) -> Literal["cpu", "cuda"]:
        return "cpu"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("value", (None,), "float32"),)

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    @property
    def closed(self) -> bool:
        return self._closed

    def run(self, feeds: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        x = np.asarray(feeds["x"])
        self.batches.append(x.shape[0])
        if self.delay:
            time.sleep(self.delay)
        value = x[:, 0, 0, 0].astype(np.float32)  # the frame's fill value, see frames()
        if self.fail_on is not None and np.any(value == self.fail_on):
            raise xs.InferenceError(f"fake failure on frame value {self.fail_on}")
        return {"value": value}

    def close(self) -> None:
        self._closed = True


class CountingFrames:
    """An iterable of constant RGB frames (frame i is filled with i) that counts what was taken."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.taken = 0

    def __iter__(self) -> Iterator[npt.NDArray[np.uint8]]:
        for i in range(self.n):
            self.taken += 1
            yield np.full((8, 8, 3), i % 256, np.uint8)


def extra_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    deadline = time.monotonic() + 5
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.02)


async def collect(engine: xs.StreamingEngine, source: object, **kw: object) -> list[xs.Result]:
    async with engine.stream(source, **kw) as results:
        return [r async for r in results]


def test_results_are_in_order_one_per_frame() -> None:
    async def main() -> list[xs.Result]:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            return await collect(engine, CountingFrames(50))

    results = asyncio.run(main())
    assert [r.frame_index for r in results] == list(range(50))
    assert [float(r.outputs["value"][0]) for r in results] == [float(i) for i in range(50)]
    assert all(r.latency >= 0 for r in results)


def test_batching_keeps_results_per_frame_and_in_order() -> None:
    backend = FakeBackend(max_batch=4)

    async def main() -> list[xs.Result]:
        async with xs.load(backend, preprocess=PRE) as engine:
            with pytest.raises(ValueError, match="max batch"):
                engine.stream(CountingFrames(1), batch=5)
            with pytest.raises(ValueError, match="decode must be one of cpu, nvdec"):
                engine.stream(CountingFrames(1), decode="gpu")
            with pytest.raises(ValueError, match="decode='nvdec' leaves frames in GPU memory, "
                                                 "for GPU backends; this engine runs on fake"):
                engine.stream(CountingFrames(1), decode="nvdec")
            return await collect(engine, CountingFrames(10), batch=4)

    results = asyncio.run(main())
    assert [r.frame_index for r in results] == list(range(10))
    assert [r.outputs["value"].shape for r in results] == [(1,)] * 10
    assert backend.batches[0] == 1 and max(backend.batches[1:]) == 4  # warm-up, then batches


def test_break_early_stops_every_thread() -> None:
    before = set(threading.enumerate())

    async def main() -> None:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            async with engine.stream(CountingFrames(10_000)) as results:
                async for r in results:
                    if r.frame_index == 3:
                        break

    asyncio.run(main())
    assert extra_threads(before) == []


def test_backend_error_reaches_the_consumer_after_earlier_results() -> None:
    async def main() -> list[int]:
        seen: list[int] = []
        async with xs.load(FakeBackend(fail_on=5), preprocess=PRE) as engine:
            with pytest.raises(xs.InferenceError, match="fake failure"):
                async with engine.stream(CountingFrames(20)) as results:
                    async for r in results:
                        seen.append(r.frame_index)
        return seen

    before = set(threading.enumerate())
    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert extra_threads(before) == []


def test_postprocess_error_is_chained() -> None:
    def boom(outputs: Mapping[str, np.ndarray]) -> object:
        raise KeyError("no such output")

    async def main() -> None:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            await collect(engine, CountingFrames(3), postprocess=boom)

    with pytest.raises(xs.InferenceError) as info:
        asyncio.run(main())
    assert isinstance(info.value.__cause__, KeyError)


def test_cancelling_the_consumer_releases_everything() -> None:
    before = set(threading.enumerate())
    backend = FakeBackend(delay=0.05)

    async def consume(engine: xs.StreamingEngine) -> None:
        async with engine.stream(CountingFrames(10_000)) as results:
            async for _ in results:
                pass

    async def main() -> None:
        async with xs.load(backend, preprocess=PRE) as engine:
            task = asyncio.create_task(consume(engine))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the engine stays usable after a cancelled stream
            assert len(await collect(engine, CountingFrames(3))) == 3

    asyncio.run(main())
    assert extra_threads(before) == []
    assert backend.closed


def test_cancelling_while_opening_the_source_releases_everything() -> None:
    before = set(threading.enumerate())

    async def main() -> None:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            task = asyncio.create_task(collect(engine, CountingFrames(100)))
            await asyncio.sleep(0)  # the task is inside __aenter__ now
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert extra_threads(before) == []


def test_slow_consumer_backpressures_the_source() -> None:
    frames = CountingFrames(10_000)

    async def main() -> int:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            async with engine.stream(frames, queue_size=2) as results:
                got = 0
                async for _ in results:
                    got += 1
                    await asyncio.sleep(0.01)
                    if got == 20:
                        await asyncio.sleep(0.3)  # a long stall: nothing may pile up
                        return frames.taken - got

        raise AssertionError("unreachable")

    ahead = asyncio.run(main())
    # decoded but not consumed: the result queue (2) + the decode hand-off + one in flight
    assert 0 <= ahead <= 16, ahead


def test_results_that_pile_up_share_one_wake_and_none_is_lost() -> None:
    """While the loop is busy, results keep arriving: one wake covers them all, and every
    result still reaches the consumer (a lost wake-up would hang this test)."""
    wakes = 0

    async def main() -> list[int]:
        nonlocal wakes
        loop = asyncio.get_running_loop()
        schedule = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any) -> Any:
            nonlocal wakes
            if getattr(callback, "__name__", "") == "_wake":  # the stream's, not executors'
                wakes += 1
            return schedule(callback, *args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
        got = []
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            async with engine.stream(CountingFrames(60), queue_size=64) as results:
                async for r in results:
                    got.append(r.frame_index)
                    if r.frame_index == 0:
                        wakes = 0
                        time.sleep(1.0)  # the loop itself is busy: the other 59 results pile up
        return got

    got = asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert got == list(range(60))
    # 0 when every result was queued before the wake that delivered result 0 ran; one per
    # result would be 60.
    assert wakes <= 2, wakes


def test_bare_async_for_closes_itself_at_the_end() -> None:
    before = set(threading.enumerate())

    async def main() -> int:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            n = 0
            async for _ in engine.stream(CountingFrames(7)):
                n += 1
            return n

    assert asyncio.run(main()) == 7
    assert extra_threads(before) == []


def test_engine_close_closes_open_streams_and_refuses_reuse() -> None:
    async def main() -> None:
        engine = xs.load(FakeBackend(), preprocess=PRE)
        async with engine:
            stream = engine.stream(CountingFrames(10_000))
            await stream.__aenter__()
            await stream.__anext__()
        assert stream.closed
        with pytest.raises(xs.ClosedResourceError):
            await stream.__anext__()
        with pytest.raises(xs.ClosedResourceError):
            engine.stream(CountingFrames(1))

    asyncio.run(main())


def test_statistics_count_frames_and_stages() -> None:
    async def main() -> xs.StreamStatistics:
        async with xs.load(FakeBackend(delay=0.002), preprocess=PRE) as engine:
            async with engine.stream(CountingFrames(30)) as results:
                async for _ in results:
                    pass
                return results.statistics()

    stats = asyncio.run(main())
    assert stats.frames == 30 and stats.fps > 0 and stats.drops == 0
    assert stats.inference.count == 30 and stats.inference.p50 >= 0.002
    assert stats.end_to_end.p50 >= stats.inference.p50


def test_infer_runs_one_frame() -> None:
    async def main() -> xs.Result:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            return await engine.infer(np.full((16, 16, 3), 9, np.uint8))

    assert float(asyncio.run(main()).outputs["value"][0]) == 9.0


def test_no_public_stream_constructor() -> None:
    with pytest.raises(TypeError, match="engine.stream"):
        xs.ResultStream(backend=None, preprocess=PRE, input_name="x", source_factory=list,  # type: ignore[arg-type]
                        postprocess=None, batch=1, queue_size=1, on_close=lambda s: None)
    with pytest.raises(TypeError, match=r"xinfer_stream.load\(model\)"):
        xs.StreamingEngine(Path("m.onnx"), None, preprocess=PRE, backend="auto",  # type: ignore[call-arg]
                           threads=None, warmup=False)


@pytest.mark.parametrize("pre, message", [
    (xs.Preprocess(size=(4, 4)), "size"),
    (xs.Preprocess(size=(8, 8), layout="nhwc"), "layout"),
    (xs.Preprocess(size=(8, 8), dtype="float16"), "dtype"),
])
def test_preprocess_that_does_not_fit_the_model(pre: xs.Preprocess, message: str) -> None:
    async def main() -> None:
        async with xs.load(FakeBackend(), preprocess=pre):
            pass

    with pytest.raises(xs.InvalidModelError, match=message):
        asyncio.run(main())


def test_model_whose_input_is_not_an_image() -> None:
    async def main() -> None:
        async with xs.load(FakeBackend(shape=(None, 10)), preprocess=PRE):
            pass

    with pytest.raises(xs.InvalidModelError, match="not an image tensor"):
        asyncio.run(main())


def test_missing_preprocess_says_what_to_do(bundled_model: Path) -> None:
    async def main() -> None:
        async with xs.load(bundled_model):
            pass

    with pytest.raises(xs.EngineLoadError, match="preprocess="):
        asyncio.run(main())


def test_missing_and_broken_models(tmp_path: Path) -> None:
    async def open_(path: Path) -> None:
        async with xs.load(path, preprocess=PRE):
            pass

    with pytest.raises(xs.InvalidModelError, match="not found"):
        asyncio.run(open_(tmp_path / "nope.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(xs.InvalidModelError, match="junk.onnx"):
        asyncio.run(open_(junk))


# -- the real clip and model ----------------------------------------------------------------
EFFICIENTNET = xs.Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3, std=(128.0,) * 3)


def test_car_detection_yields_every_frame_in_order_with_pts(bundled_model: Path) -> None:
    clip = shared("video/car-detection.mp4")

    async def main() -> list[xs.Result]:
        async with xs.load(bundled_model, preprocess=EFFICIENTNET) as engine:
            return await collect(engine, clip, postprocess=xs.classify(top=3), batch=8)

    results = asyncio.run(main())
    assert len(results) == 377
    assert [r.frame_index for r in results] == list(range(377))
    pts = [r.pts for r in results]
    assert all(p is not None for p in pts) and pts == sorted(pts) and len(set(pts)) == 377
    assert results[0].outputs["logits"].shape == (1, 1000)
    assert all(len(r.prediction.top) == 3 for r in results)


def test_breaking_out_of_a_real_clip_leaves_no_thread(bundled_model: Path) -> None:
    clip = shared("video/car-detection.mp4")
    before = set(threading.enumerate())

    async def main() -> int:
        async with xs.load(bundled_model, preprocess=EFFICIENTNET) as engine:
            async with engine.stream(clip) as results:
                async for r in results:
                    if r.frame_index == 9:
                        return r.frame_index + 1
        return 0

    assert asyncio.run(main()) == 10
    assert extra_threads(before) == []


def test_a_torch_model_file_goes_to_the_torch_backend(tmp_path: Path) -> None:
    """``load("model.pt")`` is a PyTorch model for the torch backend (on CUDA), never an ONNX
    file: without PyTorch or without CUDA the error says so; with both, a junk file fails to
    load in PyTorch."""
    junk = tmp_path / "model.pt"
    junk.write_bytes(b"not a torch file")

    async def main() -> None:
        async with xs.load(junk, preprocess=PRE):
            pass

    with pytest.raises((xs.EngineLoadError, xs.InvalidModelError), match="PyTorch"):
        asyncio.run(main())
    other = tmp_path / "model.bin"
    other.write_bytes(b"weights")
    with pytest.raises(xs.EngineLoadError, match=r"unknown model type '.bin'.*PyTorch"):
        asyncio.run(xs.load(other, preprocess=PRE).open())


@pytest.mark.parametrize("fmt", ["yuv420p", "nv12"])
def test_packing_copies_exactly_the_window_of_each_frame(fmt: str) -> None:
    """Host frames: only the pixels the preprocess reads are copied into the slot's staging (the
    bytes the runner then uploads), at the frames' packed offsets, each row widened to whole
    64-byte lines; others are untouched."""
    from xinfer_stream.preprocess import Preprocess
    from xinfer_stream.preprocess._frames import FrameLayout
    from xinfer_stream.runtime._upload import UploadPlan

    layout = FrameLayout(fmt, 1080, 1920)  # type: ignore[arg-type]
    crop = Preprocess((224, 224), "shorter_crop", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    plan = UploadPlan.of(layout, crop)
    windows = plan.windows
    assert windows is not None and plan.bytes_per_frame == sum(w.nbytes for w in windows)
    rng = np.random.default_rng(3)
    frames = [layout.unpack(rng.integers(0, 256, layout.nbytes, dtype=np.uint8))
              for _ in range(2)]
    staging = np.full(2 * layout.nbytes, 7, np.uint8)
    plan.pack([_Planes(p) for p in frames], staging, [0, 1])
    for i, planes in enumerate(frames):
        got = layout.unpack(staging[i * layout.nbytes:(i + 1) * layout.nbytes])
        for k, (plane, target) in enumerate(zip(planes, got)):
            w = windows[k]
            r0, b0 = divmod(w.offset - layout.planes[k].offset, w.pitch)
            b1 = min(target.shape[1], -(-(b0 + w.width) // 64) * 64)
            assert (b1 - b0 // 64 * 64) - w.width < 128
            inside = np.zeros(target.shape, bool)
            inside[r0:r0 + w.rows, b0 // 64 * 64:b1] = True
            np.testing.assert_array_equal(target[inside], plane[inside])
            assert np.all(target[~inside] == 7) and inside.sum() < 0.7 * inside.size


def test_a_window_that_is_most_of_the_frame_moves_the_whole_frame() -> None:
    from xinfer_stream.preprocess import Preprocess
    from xinfer_stream.preprocess._frames import FrameLayout
    from xinfer_stream.runtime._upload import UploadPlan

    layout = FrameLayout("yuv420p", 1080, 1920)
    plan = UploadPlan.of(layout, Preprocess((224, 224)))  # resize: reads every pixel
    assert plan.windows is None and plan.bytes_per_frame == layout.nbytes


class _Planes:
    """The one field of a frame the packer reads."""

    def __init__(self, planes: tuple[npt.NDArray[np.uint8], ...]) -> None:
        self.planes = planes


class _CudaFakeBackend(FakeBackend):
    """Says it runs on CUDA: enough for engine.stream's checks, which run before any GPU work."""

    @property
    def device(self) -> Literal["cpu", "cuda"]:
        return "cuda"


def test_nvdec_decoding_refuses_options_it_sets_or_makes_pointless() -> None:
    async def main() -> None:
        async with xs.load(_CudaFakeBackend(), preprocess=PRE) as engine:
            with pytest.raises(ValueError, match="sets device_frames, hwaccel itself"):
                engine.stream("clip.mp4", decode="nvdec", hwaccel="vaapi", device_frames=False)
            assert not engine._streams  # nothing was made

    asyncio.run(main())


class _FakeDeviceMemory:
    """Device memory as numpy: addresses map to (array, base); a DeviceBuffer double that does
    each 2-D device-to-device copy it is asked for, so the copies' arguments are checked by
    their effect."""

    def __init__(self, nbytes: int) -> None:
        self.regions: list[tuple[int, npt.NDArray[np.uint8]]] = []
        self.target = np.full(nbytes, 7, np.uint8)
        self.copies = 0

    def place(self, base: int, plane: npt.NDArray[np.uint8]) -> int:
        self.regions.append((base, plane.reshape(-1)))
        return base

    def copy_from_address_2d(self, source: int, *, stream: object, width: int, height: int,
                             source_pitch: int, pitch: int, offset: int) -> None:
        base, flat = next((b, f) for b, f in self.regions if b <= source < b + f.size)
        start = source - base
        assert start + source_pitch * (height - 1) + width <= flat.size, "read past the plane"
        rows = np.lib.stride_tricks.as_strided(flat[start:], (height, width), (source_pitch, 1))
        assert offset + pitch * (height - 1) + width <= self.target.size, "wrote past the frame"
        into = np.lib.stride_tricks.as_strided(self.target[offset:], (height, width), (pitch, 1))
        into[...] = rows
        self.copies += 1


@pytest.mark.parametrize("windowed", [True, False])
def test_frames_in_gpu_memory_are_copied_exactly_into_the_packed_layout(windowed: bool) -> None:
    """A frame NVDEC left on the GPU (pitched planes at their own addresses) is copied into the
    slot's packed nv12 layout: the window the preprocess reads (or every pixel), at the layout's
    offsets, skipping the pitch's padding; nothing else is written."""
    from xinfer_stream.preprocess import Preprocess
    from xinfer_stream.preprocess._frames import FrameLayout
    from xinfer_stream.runtime._upload import UploadPlan
    from xinfer_stream.video import DeviceFrame, DevicePlane

    h, w, pitch = 1080, 1920, 2048  # NVDEC pitches rows (here to 2048 bytes)
    layout = FrameLayout("nv12", h, w)
    crop = Preprocess((224, 224), "shorter_crop", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    windows = layout.windows(*crop.source_window(h, w)) if windowed else None
    plan = UploadPlan(layout, windows)
    rng = np.random.default_rng(5)
    y = rng.integers(0, 256, (h, pitch), dtype=np.uint8)
    uv = rng.integers(0, 256, (h // 2, pitch), dtype=np.uint8)
    memory = _FakeDeviceMemory(2 * layout.nbytes)
    planes = (DevicePlane(memory.place(0x10_0000, y), pitch, h, w),
              DevicePlane(memory.place(0x90_0000, uv), pitch, h // 2, w))
    frame = DeviceFrame(object(), planes, 0)  # type: ignore[arg-type]
    plan.copy_in_place(memory, frame, 1, ordinal=0, stream=None)  # type: ignore[arg-type]
    assert memory.copies == 2
    assert np.all(memory.target[:layout.nbytes] == 7)  # the batch's first frame: untouched
    got = layout.unpack(memory.target[layout.nbytes:])
    for k, (source, target) in enumerate(zip((y[:, :w], uv[:, :w]), got)):
        inside = np.zeros(target.shape, bool)
        if windows is None:
            inside[...] = True
        else:
            rows, cols = layout.window_slices(windows)[k]
            inside[rows, cols] = True
            assert inside.sum() < 0.6 * inside.size
        np.testing.assert_array_equal(target[inside], source[inside])
        assert np.all(target[~inside] == 7)
