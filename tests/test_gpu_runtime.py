"""The GPU streaming path (runtime/_gpu.py) and the torch backend (engines/_torch.py), on a GPU."""

from __future__ import annotations

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
def torch() -> Any:
    torch = pytest.importorskip("torch")
    reason = xcuda.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    return torch


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
                 timings: Any) -> bool:
        self.threads.add(threading.current_thread().name)
        assert timings.compute > 0 and timings.upload > 0
        for i, frame in enumerate(frames):
            self.results.append((frame.index, outputs["output"][i]))
        return True


@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("upload", ["pageable", "pack"])
def test_results_are_in_order_and_match_the_reference(torch: Any, device: Device, graphs: bool,
                                                      batch: int, upload: str) -> None:
    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime._gpu import GpuRunner
    model = small_model(torch)
    frames = [yuv_frame(i) for i in range(10)]
    with TorchBackend(model, input_shape=(None, 3, 32, 48)) as backend:
        want = {f.index: expected(torch, backend._module, f)[0] for f in frames}
        collect = Collector()
        with GpuRunner(device, backend, SPEC, slots=2, max_batch=batch, graphs=graphs,
                       upload=upload) as runner:  # type: ignore[arg-type]
            for start in range(0, len(frames), batch):
                runner.submit(frames[start:start + batch], collect)
            runner.drain()
            assert runner.graph_mode == ("graph" if graphs else "plain")
            stats = runner.statistics()
        assert [i for i, _ in collect.results] == list(range(10))
        assert collect.threads == {"xinfer-gpu-waiter"}
        for index, got in collect.results:
            np.testing.assert_allclose(got, want[index], rtol=1e-4, atol=1e-4)
        if graphs:
            assert stats["graph_batches"] > 0
        # The backend outlives the runner.
        x = np.zeros((1, 3, 32, 48), np.float32)
        assert backend.run({"input": x})["output"].shape == (1, 5)


def test_frames_in_pinned_memory_upload_without_a_copy(torch: Any, device: Device) -> None:
    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime._gpu import GpuRunner
    model = small_model(torch)
    frames = [yuv_frame(i) for i in range(4)]
    layout = FrameLayout("yuv420p", 60, 80)
    with TorchBackend(model, input_shape=(None, 3, 32, 48)) as backend, \
            device.pinned_pool(layout.nbytes, len(frames)) as pool:
        want = {f.index: expected(torch, backend._module, f)[0] for f in frames}
        loans = [pool.acquire() for _ in frames]

        @dataclass(frozen=True)
        class PinnedFrame(Frame):
            pinned: Any = None

        pinned_frames = []
        for f, loan in zip(frames, loans):
            loan.array[:layout.nbytes] = f.packed
            # Planes deliberately wrong: a pinned frame must be read from its pinned buffer.
            pinned_frames.append(PinnedFrame(f.index, f.format, f.width, f.height,
                                             tuple(np.zeros_like(p) for p in f.planes),
                                             pinned=loan))
        collect = Collector()
        with GpuRunner(device, backend, SPEC, slots=2) as runner:
            for f in pinned_frames:
                runner.submit([f], collect)
            runner.drain()
        for loan in loans:
            loan.release()
    for index, got in collect.results:
        np.testing.assert_allclose(got, want[index], rtol=1e-4, atol=1e-4)


def test_frames_of_a_new_size_regrow_the_slots(torch: Any, device: Device) -> None:
    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime._gpu import GpuRunner
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
    from xinfer_stream.runtime._gpu import GpuRunner

    def broken(frames: Sequence[Any], outputs: Any, timings: Any) -> bool:
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
    from xinfer_stream.runtime._gpu import GpuRunner
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
        context.close()
        with pytest.raises(ClosedResourceError):
            context.enqueue(stream=stream.handle)


def test_engine_stream_runs_a_real_clip_on_the_gpu(torch: Any, bundled_clip: Path) -> None:
    import asyncio

    from xinfer_stream.engines._torch import TorchBackend
    from xinfer_stream.runtime import load
    from xinfer_stream.video import open_source

    spec = Preprocess((32, 48), "shorter_crop", (123.7, 116.3, 103.5), (58.4, 57.1, 57.4))
    model = small_model(torch)
    # The reference: the same decoded planes through the numpy oracle and the model.
    source = open_source(str(bundled_clip), format="yuv420p")
    want = []
    try:
        while len(want) < 12 and (frame := source.get()) is not None:
            layout = FrameLayout("yuv420p", frame.height, frame.width)
            x = preprocess_raw(spec, layout, np.concatenate([p.ravel() for p in frame.planes]),
                               YuvColor(frame.colorspace, frame.color_range))  # type: ignore[arg-type]
            with torch.inference_mode():
                want.append(model.cuda()(torch.from_numpy(x[None]).cuda()).cpu().numpy())
    finally:
        source.close()

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
    assert stats.extra["gpu"]["graph_mode"] == "graph"
    assert stats.inference.p50 > 0 and stats.end_to_end.p50 > 0
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]
