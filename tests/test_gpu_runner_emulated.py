"""The GPU runner's logic on the CPU: a fake CUDA device whose memory is numpy and whose streams
run (or, while captured, record) each operation, a fake kernel that is the numpy oracle, and a
fake model. Slots, windowed packing, graph capture and replay, NVDEC device-to-device copies,
frames read by DMA from a decoder process's registered ring, error hand-over, the postprocess
thread and cleanup are checked here; tests/test_gpu_runtime.py checks the same on a real GPU."""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest

import xinfer_stream as xs
from xinfer_stream._errors import ClosedResourceError, CudaError, InferenceError
from xinfer_stream.engines import TensorSpec
from xinfer_stream.preprocess import Preprocess
from xinfer_stream.preprocess._color import YuvColor, preprocess_raw
from xinfer_stream.preprocess._frames import FrameLayout
from xinfer_stream.runtime import _capture, _slots
from xinfer_stream.runtime._gpu_runner import GpuRunner

from .test_gpu_runtime import Frame

CROP = Preprocess((16, 24), "shorter_crop", (120.0, 110.0, 100.0), (60.0, 50.0, 40.0))
BOX = Preprocess((16, 24), "letterbox", (120.0, 110.0, 100.0), (60.0, 50.0, 40.0))
_MEMORY: dict[int, FakeBuffer] = {}  # address -> buffer, as a device's address space
_REGISTERED: list[FakeRegistration] = []  # host ranges registered as pinned, as the driver's


class FakeStream:
    def __init__(self) -> None:
        self.recording: list[Callable[[], None]] | None = None
        self.handle = self  # what contexts are given: the fake model enqueues on it
        self.closed = False

    def run(self, op: Callable[[], None]) -> None:
        if self.recording is not None:
            self.recording.append(op)
        else:
            op()

    def wait(self, event: FakeEvent) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeEvent:
    count = 0

    def __init__(self) -> None:
        self.at = 0
        self.closed = False
        self.legacy_records = 0

    def record(self, *, stream: FakeStream) -> None:
        def op() -> None:
            FakeEvent.count += 1
            self.at = FakeEvent.count
        stream.run(op)

    def record_legacy_stream(self) -> None:
        self.legacy_records += 1

    def synchronize(self) -> None:
        pass

    def elapsed_ms(self, start: FakeEvent) -> float:
        return float(self.at - start.at)

    def close(self) -> None:
        self.closed = True


class FakeBuffer:
    next_address = 1 << 20

    def __init__(self, nbytes: int, pool: FakePool) -> None:
        self.array = np.zeros(nbytes, np.uint8)
        self.nbytes = nbytes
        self.pointer = FakeBuffer.next_address
        FakeBuffer.next_address += nbytes + 4096
        _MEMORY[self.pointer] = self
        self.pool = pool
        self.released = False

    def release(self) -> None:
        self.released = True

    def view(self, dtype: Any, shape: Sequence[int]) -> npt.NDArray[Any]:
        dt = np.dtype(dtype)
        return self.array[:int(np.prod(shape)) * dt.itemsize].view(dt).reshape(shape)

    def copy_from_host(self, source: FakeBuffer, *, stream: FakeStream, nbytes: int,
                       source_offset: int = 0, offset: int = 0) -> None:
        def op() -> None:
            self.array[offset:offset + nbytes] = source.array[source_offset:source_offset + nbytes]
        stream.run(op)

    def copy_from_host_2d(self, source: FakeBuffer, *, stream: FakeStream, width: int, height: int,
                          source_pitch: int, pitch: int, source_offset: int, offset: int) -> None:
        self._copy_2d(source.array, source_offset, stream, width, height, source_pitch, pitch, offset)

    def copy_from_address(self, source: int, nbytes: int, *, stream: FakeStream, offset: int
                          ) -> None:
        self.copy_from_address_2d(source, stream=stream, width=nbytes, height=1,
                                  source_pitch=nbytes, pitch=nbytes, offset=offset)

    def copy_from_address_2d(self, source: int, *, stream: FakeStream, width: int, height: int,
                             source_pitch: int, pitch: int, offset: int) -> None:
        """From fake device memory, or from real host memory inside a registered range (the
        copy reads it then, as a DMA would); anything else is a test failure."""
        end = source + source_pitch * (height - 1) + width
        base = max((a for a in _MEMORY if a <= source), default=None)
        if base is not None and end <= base + _MEMORY[base].nbytes:
            self._copy_2d(_MEMORY[base].array, source - base, stream, width, height,
                          source_pitch, pitch, offset)
            return
        ranges = [r for r in _REGISTERED if not r.closed and r.address <= source
                  and end <= r.address + r.nbytes]
        assert ranges, f"copied from 0x{source:x}: neither device memory nor registered"
        host = np.ctypeslib.as_array((ctypes.c_uint8 * ranges[0].nbytes).from_address(
            ranges[0].address))
        self._copy_2d(host, source - ranges[0].address, stream, width, height, source_pitch,
                      pitch, offset)

    def _copy_2d(self, source: npt.NDArray[np.uint8], start: int, stream: FakeStream, width: int,
                 height: int, source_pitch: int, pitch: int, offset: int) -> None:
        assert start + source_pitch * (height - 1) + width <= source.size, "read past the source"
        assert offset + pitch * (height - 1) + width <= self.array.size, "wrote past the buffer"

        def op() -> None:
            rows = np.lib.stride_tricks.as_strided(source[start:], (height, width), (source_pitch, 1))
            into = np.lib.stride_tricks.as_strided(self.array[offset:], (height, width), (pitch, 1))
            into[...] = rows
        stream.run(op)

    def copy_to_host(self, destination: FakeBuffer, *, stream: FakeStream, nbytes: int) -> None:
        def op() -> None:
            destination.array[:nbytes] = self.array[:nbytes]
        stream.run(op)


class FakeRegistration:
    def __init__(self, address: int, nbytes: int) -> None:
        self.address, self.nbytes = address, nbytes
        self.closed = False
        _REGISTERED.append(self)

    def close(self) -> None:
        assert not self.closed, "unregistered twice"
        self.closed = True
        _REGISTERED.remove(self)


class FakePool:
    def __init__(self, nbytes: int, count: int, device: FakeDevice) -> None:
        self.nbytes = nbytes
        self.loans: list[FakeBuffer] = []
        self.count = count
        self.closed = False
        device.pools.append(self)

    def acquire(self) -> FakeBuffer:
        assert len([b for b in self.loans if not b.released]) < self.count, "pool ran dry"
        self.loans.append(FakeBuffer(self.nbytes, self))
        return self.loans[-1]

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeGraph:
    def __init__(self, ops: list[Callable[[], None]]) -> None:
        self.ops = ops
        self.closed = False

    def launch(self, *, stream: FakeStream) -> None:
        assert not self.closed
        for op in self.ops:
            stream.run(op)

    def close(self) -> None:
        self.closed = True


class FakeCapture:
    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream
        self.graph: FakeGraph | None = None

    def __enter__(self) -> FakeCapture:
        self.stream.recording = []
        return self

    def __exit__(self, *exc: object) -> None:
        self.graph = FakeGraph(self.stream.recording or [])
        self.stream.recording = None


class FakeDevice:
    ordinal = 0

    def __init__(self, *args: object) -> None:
        self.pools: list[FakePool] = []
        self.events: list[FakeEvent] = []
        self.streams: list[FakeStream] = []
        self.registrations: list[FakeRegistration] = []
        self.captures = 0
        self.closed = False

    def make_current(self) -> None:
        pass

    def create_stream(self) -> FakeStream:
        self.streams.append(FakeStream())
        return self.streams[-1]

    def create_event(self, *, timing: bool = False) -> FakeEvent:
        self.events.append(FakeEvent())
        return self.events[-1]

    def device_pool(self, nbytes: int, count: int) -> FakePool:
        return FakePool(nbytes, count, self)

    def pinned_pool(self, nbytes: int, count: int, *, write_combined: bool = False) -> FakePool:
        return FakePool(nbytes, count, self)

    def register_host(self, address: int, nbytes: int) -> FakeRegistration:
        self.registrations.append(FakeRegistration(address, nbytes))
        return self.registrations[-1]

    def capture(self, stream: FakeStream) -> FakeCapture:
        self.captures += 1
        return FakeCapture(stream)

    def share_with_ffmpeg(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def check_released(self) -> None:
        assert all(p.closed for p in self.pools)
        assert all(b.released for p in self.pools for b in p.loans)
        assert all(e.closed for e in self.events) and all(s.closed for s in self.streams)
        assert all(r.closed for r in self.registrations)


class FakeKernel:
    """The preprocess kernel as its numpy oracle, on the stream."""

    def __init__(self, device: FakeDevice, spec: Preprocess) -> None:
        self.spec = spec

    def enqueue(self, planes: FakeBuffer, layout: FrameLayout, out: FakeBuffer, *,
                stream: FakeStream, color: YuvColor | None, batch: int) -> None:
        def op() -> None:
            n = layout.nbytes
            x = np.stack([preprocess_raw(self.spec, layout, planes.array[i * n:(i + 1) * n], color)
                          for i in range(batch)]).astype(np.float32)
            out.array[:x.nbytes] = x.reshape(-1).view(np.uint8)
        stream.run(op)


class FakeContext:
    """The model: each frame's output is (sum, first value) of its input tensor."""

    def __init__(self, backend: FakeCudaBackend) -> None:
        self.backend = backend
        self.input: tuple[int, tuple[int, ...]] | None = None
        self.output = 0
        self.closed = 0

    def set_input(self, name: str, address: int, shape: tuple[int, ...]) -> None:
        self.input = (address, shape)

    def set_output(self, name: str, address: int) -> None:
        self.output = address

    def output_shape(self, name: str) -> tuple[int, ...]:
        assert self.input is not None
        return (self.input[1][0], 2)

    def enqueue(self, *, stream: Any) -> None:
        assert self.input is not None
        address, shape = self.input

        def op() -> None:
            x = _MEMORY[address].array[:int(np.prod(shape)) * 4].view(np.float32).reshape(shape)
            y = np.stack([x.reshape(shape[0], -1).sum(1), x.reshape(shape[0], -1)[:, 0]], 1)
            _MEMORY[self.output].array[:y.nbytes] = y.astype(np.float32).reshape(-1).view(np.uint8)
        stream.run(op)

    def close(self) -> None:
        self.closed += 1


class FakeCudaBackend:
    kind = "fakecuda"
    device: Literal["cuda"] = "cuda"
    ordinal = 0

    def __init__(self, max_batch: int | None = None) -> None:
        self.max_batch = max_batch
        self.inputs = (TensorSpec("x", (None, 3, 16, 24), "float32"),)
        self.outputs = (TensorSpec("y", (None, 2), "float32"),)
        self.contexts: list[FakeContext] = []
        self.closed = False

    def create_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        x = feeds["x"].astype(np.float32)
        return {"y": np.stack([x.reshape(x.shape[0], -1).sum(1), x.reshape(x.shape[0], -1)[:, 0]], 1)}

    def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_slots, "PreprocessKernel", FakeKernel)


def frame(index: int, fmt: str = "yuv420p", h: int = 40, w: int = 96) -> tuple[Frame, npt.NDArray[np.uint8]]:
    layout = FrameLayout(fmt, h, w)  # type: ignore[arg-type]
    packed = np.random.default_rng(index).integers(0, 256, layout.nbytes, dtype=np.uint8)
    return Frame(index, fmt, w, h, layout.unpack(packed)), packed


def expected(spec: Preprocess, fmt: str, packed: npt.NDArray[np.uint8], h: int = 40, w: int = 96
             ) -> npt.NDArray[np.float32]:
    layout = FrameLayout(fmt, h, w)  # type: ignore[arg-type]
    color = YuvColor("bt709", "limited") if layout.is_yuv else None
    x = preprocess_raw(spec, layout, packed, color).astype(np.float32)
    return np.array([x.sum(), x.reshape(-1)[0]], np.float32)


class Collector:
    def __init__(self, runner: list[GpuRunner]) -> None:
        self.results: list[tuple[int, npt.NDArray[np.generic]]] = []
        self.threads: set[str] = set()
        self.runner = runner
        self.free_at_emit: list[int] = []

    def __call__(self, frames: Sequence[Any], outputs: Mapping[str, npt.NDArray[np.generic]],
                 timings: Any) -> None:
        self.threads.add(threading.current_thread().name)
        self.free_at_emit.append(len(self.runner[0]._free))
        assert timings.compute > 0 and timings.completed_at >= timings.submitted_at
        for i, f in enumerate(frames):
            self.results.append((f.index, outputs["y"][i]))


@pytest.mark.parametrize("spec", [CROP, BOX], ids=["windowed", "whole"])
@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("fmt", ["yuv420p", "nv12", "rgb24"])
def test_results_are_in_order_and_match_the_oracle(spec: Preprocess, graphs: bool, batch: int,
                                                   fmt: str) -> None:
    device, backend = FakeDevice(), FakeCudaBackend()
    made = [frame(i, fmt) for i in range(10)]
    holder: list[GpuRunner] = []
    collect = Collector(holder)
    with GpuRunner(device, backend, spec, slots=2, max_batch=batch,  # type: ignore[arg-type]
                   graphs=graphs) as runner:
        holder.append(runner)
        for start in range(0, 10, batch):
            runner.submit([f for f, _ in made[start:start + batch]], collect)
        runner.drain()
        stats = runner.statistics()
    assert [i for i, _ in collect.results] == list(range(10))
    for (_index, got), (_, packed) in zip(collect.results, made, strict=True):
        np.testing.assert_allclose(got, expected(spec, fmt, packed), rtol=1e-5)
    assert collect.threads == {"xinfer-gpu-waiter"}
    assert all(free >= 1 for free in collect.free_at_emit)  # emitted with the slot given back
    full = 10 // batch
    assert stats.graph_batches == (full if graphs else 0)
    assert stats.plain_batches == -(-10 // batch) - stats.graph_batches
    assert stats.graph_captures == (min(2, full) if graphs else 0)  # once per slot
    assert stats.windowed_upload == (spec is CROP)
    layout = FrameLayout(fmt, 40, 96)  # type: ignore[arg-type]
    assert (stats.upload_bytes_per_frame < layout.nbytes) == (spec is CROP)
    assert stats.compute.count == stats.pack.count == -(-10 // batch)
    assert runner.closed and all(c.closed == 1 for c in backend.contexts)
    device.check_released()


def test_a_new_frame_size_or_colour_recaptures_and_regrows() -> None:
    device, backend = FakeDevice(), FakeCudaBackend()
    small, big = frame(0, h=40, w=96), frame(1, h=60, w=120)
    other = Frame(2, "yuv420p", 96, 40, small[0].planes, colorspace="bt601")
    holder: list[GpuRunner] = []
    collect = Collector(holder)
    with GpuRunner(device, backend, CROP, slots=1) as runner:  # type: ignore[arg-type]
        holder.append(runner)
        for f in (small[0], small[0], big[0], other, small[0]):
            runner.submit([f], collect)
        runner.drain()
        stats = runner.statistics()
    assert stats.graph_captures == 4 and stats.graph_batches == 5
    np.testing.assert_allclose(collect.results[2][1], expected(CROP, "yuv420p", big[1], 60, 120),
                               rtol=1e-5)
    device.check_released()


class FlakyCaptureDevice(FakeDevice):
    """A device whose first ``failures`` captures fail, as a capture invalidated by another
    thread's CUDA work does."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def capture(self, stream: FakeStream) -> FakeCapture:
        self.captures += 1
        if self.captures <= self.failures:
            raise CudaError("cudaErrorStreamCaptureInvalidated", "operation failed due to a "
                            "previous error during capture", "cudaStreamEndCapture")
        return FakeCapture(stream)


@pytest.mark.parametrize("failures", [2, _capture.CAPTURE_TRIES])
def test_a_failed_capture_is_retried_until_the_runner_gives_graphs_up(
        failures: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches run plainly (and right) while captures fail; a later capture that succeeds
    brings graphs back; after CAPTURE_TRIES failures the runner stays plain and says why."""
    monkeypatch.setattr(_capture, "CAPTURE_RETRY", 0.0)  # retry at the next batch
    device, backend = FlakyCaptureDevice(failures), FakeCudaBackend()
    made = [frame(i) for i in range(8)]
    holder: list[GpuRunner] = []
    collect = Collector(holder)
    modes = []
    with GpuRunner(device, backend, CROP, slots=1) as runner:  # type: ignore[arg-type]
        holder.append(runner)
        for f, _ in made:
            runner.submit([f], collect)
            modes.append(runner.graph_mode.split(" (")[0])
        runner.drain()
        stats = runner.statistics()
    for (_index, got), (_, packed) in zip(collect.results, made, strict=True):
        np.testing.assert_allclose(got, expected(CROP, "yuv420p", packed), rtol=1e-5)
    tries = _capture.CAPTURE_TRIES
    if failures < tries:
        assert modes == ["retrying a failed capture"] * failures + ["graph"] * (8 - failures)
        assert (stats.capture_failures, stats.graph_captures) == (failures, failures + 1)
        assert (stats.plain_batches, stats.graph_batches) == (failures, 8 - failures)
    else:
        assert modes[-1] == "plain" and stats.graph_mode.startswith(
            "plain (capture failed: CudaError: cudaErrorStreamCaptureInvalidated")
        assert stats.capture_failures == stats.graph_captures == tries
        assert (stats.plain_batches, stats.graph_batches) == (8, 0)
    device.check_released()


def test_no_capture_is_tried_before_the_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_capture, "CAPTURE_RETRY", 3600.0)
    device, backend = FlakyCaptureDevice(1), FakeCudaBackend()
    holder: list[GpuRunner] = []
    with GpuRunner(device, backend, CROP, slots=1) as runner:  # type: ignore[arg-type]
        holder.append(runner)
        for i in range(4):
            runner.submit([frame(i)[0]], Collector(holder))
        runner.drain()
        stats = runner.statistics()
    assert (stats.graph_captures, stats.plain_batches) == (1, 4)
    assert stats.graph_mode.startswith("retrying a failed capture (CudaError")
    device.check_released()


def test_frames_in_gpu_memory_are_copied_device_to_device_after_ffmpegs_work() -> None:
    """NVDEC frames (pitched planes at their own device addresses) skip the staging: their
    window is copied into the slot, after the legacy stream's work; a batch may mix them with
    host frames."""
    from xinfer_stream.video import DeviceFrame, DevicePlane, VideoFrame

    device, backend = FakeDevice(), FakeCudaBackend(max_batch=2)
    pool = FakePool(1 << 16, 6, device)
    h, w, pitch = 40, 96, 128
    made = []
    for i in range(3):
        host, packed = frame(i, "nv12")
        layout = FrameLayout("nv12", h, w)
        y_plane, uv_plane = layout.unpack(packed)
        y, uv = pool.acquire(), pool.acquire()
        y.array[:h * pitch].reshape(h, pitch)[:, :w] = y_plane
        uv.array[:h // 2 * pitch].reshape(h // 2, pitch)[:, :w] = uv_plane
        planes = (DevicePlane(y.pointer, pitch, h, w), DevicePlane(uv.pointer, pitch, h // 2, w))
        on_gpu = VideoFrame(source="s", index=i, pts=None, format="nv12", planes=(), width=w,
                            height=h, colorspace="bt709", color_range="limited", decoded_at=0.0,
                            device=DeviceFrame(object(), planes, 0))  # type: ignore[arg-type]
        made.append((on_gpu, host, packed))
    holder: list[GpuRunner] = []
    collect = Collector(holder)
    with GpuRunner(device, backend, CROP, slots=2, max_batch=2) as runner:  # type: ignore[arg-type]
        holder.append(runner)
        runner.submit([made[0][0], made[1][0]], collect)
        runner.submit([made[2][1], made[0][0]], collect)  # host and device frames mixed
        runner.drain()
        stats = runner.statistics()
    assert [i for i, _ in collect.results] == [0, 1, 2, 0]
    for (index, got) in collect.results:
        np.testing.assert_allclose(got, expected(CROP, "nv12", made[index][2]), rtol=1e-5)
    assert stats.frames_from_device_memory == 3
    assert sum(e.legacy_records for e in device.events) == 2  # ordered after FFmpeg's stream
    for loan in pool.loans:
        loan.release()
    pool.close()
    device.check_released()


def test_an_error_in_emit_reaches_the_submitter_and_later_batches_fail() -> None:
    device, backend = FakeDevice(), FakeCudaBackend()
    failed: list[tuple[list[int], BaseException]] = []

    def broken(frames: Sequence[Any], outputs: Any, timings: Any) -> None:
        raise KeyError("emit bug")

    def on_error(frames: Sequence[Any], error: BaseException) -> None:
        failed.append(([f.index for f in frames], error))

    runner = GpuRunner(device, backend, CROP, slots=2)  # type: ignore[arg-type]
    runner.submit([frame(0)[0]], broken, on_error)
    with pytest.raises(InferenceError, match="emit bug") as info:
        runner.drain()
    assert isinstance(info.value.__cause__, KeyError)
    assert failed and failed[0][0] == [0]
    with pytest.raises(InferenceError):
        runner.submit([frame(1)[0]], broken)
    runner.close()
    runner.close()
    with pytest.raises(ClosedResourceError):
        runner.submit([frame(1)[0]], broken)
    device.check_released()


def test_unsupported_formats_and_bad_batches_are_refused() -> None:
    device, backend = FakeDevice(), FakeCudaBackend()
    with GpuRunner(device, backend, CROP, max_batch=2) as runner:  # type: ignore[arg-type]
        with pytest.raises(InferenceError, match="format='yuv420p'"):
            runner.submit([Frame(0, "bgra", 4, 4, (np.zeros((4, 16), np.uint8),))], print)
        with pytest.raises(InferenceError, match="same size"):
            runner.submit([frame(0)[0], frame(1, h=42)[0]], print)
        with pytest.raises(ValueError, match="1 to 2 frames"):
            runner.submit([frame(0)[0]] * 3, print)
    device.check_released()


# -- the whole GPU stream path, on the fake device ------------------------------------------------
@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[FakeDevice]:
    import xinfer_stream.cuda

    made: list[FakeDevice] = []

    def make(ordinal: int = 0) -> FakeDevice:
        made.append(FakeDevice())
        return made[-1]

    monkeypatch.setattr(xinfer_stream.cuda, "Device", make)
    return made


def rgb_frames(count: int) -> Iterator[npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(1)
    for _ in range(count):
        yield rng.integers(0, 256, (40, 96, 3), dtype=np.uint8)


def test_engine_stream_on_a_gpu_backend_runs_postprocess_on_the_results_thread(
        fake_cuda: list[FakeDevice]) -> None:
    threads: set[str] = set()

    def post(outputs: Mapping[str, npt.NDArray[np.generic]]) -> float:
        threads.add(threading.current_thread().name)
        return float(outputs["y"][0, 0])

    async def main() -> tuple[list[xs.Result], xs.StreamStatistics, xs.Result]:
        async with xs.load(FakeCudaBackend(max_batch=4), preprocess=CROP) as engine:  # type: ignore[arg-type]
            async with engine.stream(rgb_frames(9), batch=4, postprocess=post) as results:
                got = [r async for r in results]
                stats = results.statistics()
            one = await engine.infer(next(rgb_frames(1)), postprocess=post)
        return got, stats, one

    got, stats, one = asyncio.run(main())
    assert [r.frame_index for r in got] == list(range(9))
    assert all(r.prediction == float(r.outputs["y"][0, 0]) for r in got)
    assert stats.gpu is not None and stats.gpu.graph_batches == 2 and stats.gpu.plain_batches == 1
    assert stats.backend == "fakecuda" and stats.batch == 4 and stats.source is not None
    assert one.prediction == float(one.outputs["y"][0, 0]) and got[0].outputs["y"].shape == (1, 2)
    assert "xinfer-results" in threads and "xinfer-gpu-waiter" not in threads
    assert len(fake_cuda) == 1
    fake_cuda[0].check_released()
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]


def test_arrays_reach_the_gpu_kernel_as_the_rgb_they_are(fake_cuda: list[FakeDevice]) -> None:
    """No conversion to YUV on the way (a swscale pass a frame, and half the colour resolution):
    stream and stream_many give each array's rgb24 oracle, which a 4:2:0 round trip would not."""
    images = list(rgb_frames(3))

    async def main() -> tuple[list[xs.Result], list[xs.Result]]:
        async with xs.load(FakeCudaBackend(max_batch=2), preprocess=CROP) as engine:  # type: ignore[arg-type]
            async with engine.stream(images) as results:
                one = [r async for r in results]
            async with engine.stream_many({"cam": images}, max_batch=2) as items:
                many = [r async for r in items if isinstance(r, xs.Result)]
        return one, many

    one, many = asyncio.run(main())
    for got in (one, many):
        assert len(got) == len(images)
        for result, image in zip(got, images, strict=True):
            oracle = expected(CROP, "rgb24", image.reshape(-1), h=40, w=96)
            np.testing.assert_allclose(result.outputs["y"][0], oracle, rtol=1e-5)
    fake_cuda[0].check_released()


def test_frames_of_a_decoder_process_are_read_from_its_registered_ring(
        fake_cuda: list[FakeDevice], tmp_path: Path) -> None:
    """``process=True`` on a GPU engine: the worker's ring is registered once with the device, each
    frame's window is copied from it where it is (not packed into staging; the fake copy fails on
    host memory that is not registered), the results are those of the same clip decoded in this
    process, through stream and stream_many, and every registration is gone at the end. With
    ``decode="nvdec"`` too, the worker decodes with ``hwaccel="cuda"`` (FFmpeg's software
    fallback on a machine without one) into nv12 frames in its ring, read the same way."""
    from xinfer_stream.video._write import write_video

    clip = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    write_video(clip, [rng.integers(0, 256, (40, 96, 3), np.uint8) for _ in range(12)], gop=5)
    ring = xs.Camera(clip, options={"process": True})

    async def main() -> tuple[list[xs.Result], list[xs.Result], list[xs.Result],
                              list[xs.StreamStatistics], xs.MultiStatistics, int]:
        async with xs.load(FakeCudaBackend(max_batch=2), preprocess=CROP) as engine:  # type: ignore[arg-type]
            async with engine.stream(clip, batch=2) as results:
                here = [r async for r in results]
                stats = [results.statistics()]
            async with engine.stream(clip, batch=2, process=True) as results:
                pinned = [r async for r in results]
                stats.append(results.statistics())
            async with engine.stream(clip, batch=2, process=True, decode="nvdec") as results:
                worker_nvdec = [r async for r in results]
                stats.append(results.statistics())
            async with engine.stream_many({"a": ring, "b": ring}, max_batch=2) as items:
                many = [r async for r in items if isinstance(r, xs.Result)]
                many_stats = items.statistics()
            registrations = len(fake_cuda[0].registrations)
        return here, pinned + worker_nvdec, many, stats, many_stats, registrations

    here, pinned, many, stats, many_stats, registrations = asyncio.run(main())
    assert len(here) == 12
    for got in (pinned[:12], pinned[12:], [r for r in many if r.camera == "a"],
                [r for r in many if r.camera == "b"]):
        assert [r.frame_index for r in got] == list(range(12))
        for a, b in zip(got, here, strict=True):
            np.testing.assert_allclose(a.outputs["y"], b.outputs["y"], rtol=1e-6)
    assert stats[0].gpu is not None and stats[1].gpu is not None
    assert stats[0].gpu.frames_from_pinned_memory == 0
    for gpu in (stats[1].gpu, stats[2].gpu):  # every frame read in place, none packed
        assert gpu is not None
        assert (gpu.frames_from_pinned_memory, gpu.frames_from_device_memory) == (12, 0)
    # 24, and the frames a new runner's warm-up replays through each bucket's graph.
    assert sum(g.frames_from_pinned_memory for g in many_stats.gpu) >= 24
    assert registrations == 4, "one registration a ring"
    fake_cuda[0].check_released()  # every registration closed
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]


def test_breaking_out_of_a_gpu_stream_releases_everything(fake_cuda: list[FakeDevice]) -> None:
    async def main() -> int:
        async with xs.load(FakeCudaBackend(), preprocess=CROP) as engine:  # type: ignore[arg-type]
            async with engine.stream(rgb_frames(50), queue_size=1) as results:
                async for r in results:
                    if r.frame_index == 3:
                        return r.frame_index
        return -1

    assert asyncio.run(main()) == 3
    fake_cuda[0].check_released()
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]


def test_a_failing_postprocess_ends_the_gpu_stream_with_its_cause(
        fake_cuda: list[FakeDevice]) -> None:
    def post(outputs: Mapping[str, npt.NDArray[np.generic]]) -> None:
        raise KeyError("postprocess bug")

    async def main() -> None:
        async with xs.load(FakeCudaBackend(), preprocess=CROP) as engine:  # type: ignore[arg-type]
            async with engine.stream(rgb_frames(20), postprocess=post) as results:
                async for _ in results:
                    pass

    with pytest.raises(xs.InferenceError, match="postprocess bug") as info:
        asyncio.run(main())
    assert isinstance(info.value.__cause__, KeyError)
    fake_cuda[0].check_released()
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]
