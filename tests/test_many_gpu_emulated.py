"""``engine.stream_many`` on the GPU path, on the emulated CUDA device of
tests/test_gpu_runner_emulated.py: frames of several sizes in one dispatch (one runner a frame
layout and batch bucket), batches padded up to their bucket so every batch replays a CUDA graph,
results equal to ``engine.stream``'s, and every slot, pool and thread released."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

import xinfer_stream as xs
from xinfer_stream.runtime._many import batch_buckets

from xinfer_stream.runtime._gpu_runner import GpuRunner

from .test_gpu_runner_emulated import (CROP, Collector, FakeCudaBackend,  # noqa: F401
                                       FakeDevice, expected, fake_cuda, fake_kernel, frame)

pytestmark = pytest.mark.usefixtures("fake_kernel")


def frames(count: int, h: int, w: int, seed: int) -> Iterator[npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


Sizes = dict[str, tuple[int, int, int]]  # camera -> height, width, seed of its 13 frames


def many_and_alone(sizes: Sizes, *, many_first: bool = False
                   ) -> tuple[list[xs.Result | xs.CameraEvent], dict[str, list[xs.Result]],
                              xs.MultiStatistics]:
    """One engine on the emulated GPU: the cameras of ``sizes`` through ``stream_many`` (what it
    yielded, its statistics) and each through its own ``engine.stream``; ``many_first``: the
    stream_many run before the single streams (its runners then see the device's first
    captures)."""

    async def main() -> tuple[list[xs.Result | xs.CameraEvent], dict[str, list[xs.Result]],
                              xs.MultiStatistics]:
        async with xs.load(FakeCudaBackend(max_batch=8), preprocess=CROP) as engine:  # type: ignore[arg-type]
            async def each_alone() -> dict[str, list[xs.Result]]:
                alone: dict[str, list[xs.Result]] = {}
                for name, (h, w, seed) in sizes.items():
                    async with engine.stream(frames(13, h, w, seed)) as results:
                        alone[name] = [r async for r in results]
                return alone

            alone = {} if many_first else await each_alone()
            async with engine.stream_many(
                    {name: frames(13, h, w, seed) for name, (h, w, seed) in sizes.items()},
                    max_wait=0.05) as items:
                got = [item async for item in items]
                stats = items.statistics()
            if many_first:
                alone = await each_alone()
        return got, alone, stats

    return asyncio.run(main())


def assert_each_camera_as_alone(got: list[xs.Result | xs.CameraEvent],
                                alone: dict[str, list[xs.Result]]) -> None:
    """Every camera's 13 results, in frame order, equal to its own engine.stream's."""
    for name, own in alone.items():
        mine = [r for r in got if isinstance(r, xs.Result) and r.camera == name]
        assert [r.frame_index for r in mine] == list(range(13))
        for a, b in zip(mine, own, strict=True):
            np.testing.assert_allclose(a.outputs["y"], b.outputs["y"], rtol=1e-6)


def test_buckets_are_powers_of_two_then_the_max() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)


def test_a_runner_with_buckets_pads_each_batch_and_keeps_a_graph_a_bucket() -> None:
    device, backend = FakeDevice(), FakeCudaBackend(max_batch=8)
    made = [frame(i) for i in range(40)]
    holder: list[GpuRunner] = []
    collect = Collector(holder)
    sizes = [3, 1, 8, 5, 2, 3, 7, 4, 1, 6]  # buckets 4, 1, 8, 8, 2, 4, 8, 4, 1, 8
    with GpuRunner(device, backend, CROP, slots=1, max_batch=8,  # type: ignore[arg-type]
                   buckets=(1, 2, 4, 8)) as runner:
        holder.append(runner)
        start = 0
        for n in sizes:
            runner.submit([f for f, _ in made[start:start + n]], collect)
            start += n
        runner.drain()
        stats = runner.statistics()
        with pytest.raises(ValueError, match="buckets"):
            GpuRunner(device, backend, CROP, max_batch=8, buckets=(1, 4))  # type: ignore[arg-type]
    assert [i for i, _ in collect.results] == list(range(40)), "no padding row comes back"
    for (_, got), (_, packed) in zip(collect.results, made, strict=True):
        np.testing.assert_allclose(got, expected(CROP, "yuv420p", packed), rtol=1e-5)
    assert stats.plain_batches == 0 and stats.graph_batches == len(sizes)
    assert stats.graph_captures == 4, "one capture a bucket, kept across other sizes"
    assert len(backend.contexts) == 1
    device.check_released()


def test_cameras_of_two_sizes_batch_on_the_gpu_path_as_graphs(
        fake_cuda: list[FakeDevice]) -> None:  # noqa: F811
    got, alone, stats = many_and_alone(
        {"wide": (40, 96, 1), "small": (24, 32, 2), "also_wide": (40, 96, 3)})
    assert_each_camera_as_alone(got, alone)
    assert stats.frames == 39 and max(stats.batch_sizes) > 1
    assert len(stats.gpu) == 2, "one runner a frame layout"
    assert all(g.plain_batches == 0 and g.graph_batches > 0 for g in stats.gpu), \
        "padded to its bucket, every batch replays a graph"
    buckets = len(batch_buckets(8))
    assert all(g.graph_captures == 2 * buckets for g in stats.gpu), \
        "every bucket captured in both slots when the layout first came, none later"
    # Each batch (one runner call a layout in it) and each layout's warm-up, all graphed.
    assert sum(g.graph_batches for g in stats.gpu) >= stats.batches + 2 * 2 * buckets
    for device in fake_cuda:
        device.check_released()
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]


def test_a_camera_decodes_where_it_says(fake_cuda: list[FakeDevice]) -> None:  # noqa: F811
    """A Camera's own decode overrides the stream's: cameras saying "cpu" in a decode="nvdec"
    stream are decoded on the CPU (NVDEC would refuse these arrays), and one that says "nvdec"
    while wanting images is refused before anything opens."""
    async def main() -> list[xs.Result]:
        async with xs.load(FakeCudaBackend(max_batch=4), preprocess=CROP) as engine:  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="images=True needs the frames' pixels"):
                engine.stream_many({"a": xs.Camera(frames(2, 40, 96, 1), decode="nvdec",
                                                   images=True)})
            cameras = {name: xs.Camera(frames(6, 40, 96, seed), decode="cpu")
                       for name, seed in (("a", 1), ("b", 2))}
            async with engine.stream_many(cameras, decode="nvdec") as items:
                return [r async for r in items if isinstance(r, xs.Result)]

    got = asyncio.run(main())
    assert sorted((r.camera, r.frame_index) for r in got) == [
        (name, i) for name in ("a", "b") for i in range(6)]
    for device in fake_cuda:
        device.check_released()


def test_leaving_early_releases_every_runner(fake_cuda: list[FakeDevice]) -> None:  # noqa: F811
    async def main() -> None:
        async with xs.load(FakeCudaBackend(max_batch=4), preprocess=CROP) as engine:  # type: ignore[arg-type]
            async with engine.stream_many({"a": frames(500, 40, 96, 1),
                                           "b": frames(500, 24, 32, 2)}) as items:
                n = 0
                async for _ in items:
                    n += 1
                    if n == 40:
                        break

    asyncio.run(main())
    for device in fake_cuda:
        device.check_released()
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]


def test_images_on_the_gpu_path_are_the_yuv_frames_in_rgb(
        fake_cuda: list[FakeDevice]) -> None:  # noqa: F811
    """The GPU path decodes yuv420p; ``images=True`` converts those planes to RGB on the results
    thread, in ``engine.stream`` and (after the dispatcher let go of the frames) in
    ``stream_many`` alike. ``decode="nvdec"`` with images is refused up front."""
    source = list(frames(9, 40, 96, 1))
    for image in source:
        image[:16] = (30, 160, 220)  # flat colour: what 4:2:0 keeps exactly enough to compare

    async def main() -> tuple[list[xs.Result], list[xs.Result | xs.CameraEvent]]:
        async with xs.load(FakeCudaBackend(max_batch=4), preprocess=CROP) as engine:  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="decode='nvdec' keeps them on the GPU"):
                engine.stream(iter(source), decode="nvdec", images=True)
            with pytest.raises(ValueError, match="decode='nvdec' keeps them on the GPU"):
                engine.stream_many({"a": xs.Camera(iter(source), images=True)}, decode="nvdec")
            async with engine.stream(iter(source), images=True, batch=2) as results:
                alone = [r async for r in results]
            async with engine.stream_many({"a": iter(source), "b": iter(source)},
                                          images=True) as items:
                many = [item async for item in items]
        return alone, many

    alone, many = asyncio.run(main())
    b = [r for r in many if isinstance(r, xs.Result) and r.camera == "b"]
    assert len(alone) == len(b) == 9
    for r, m, want in zip(alone, b, source, strict=True):
        assert r.image is not None and m.image is not None
        np.testing.assert_array_equal(r.image, m.image)
        assert np.abs(r.image[:14].astype(int) - want[:14].astype(int)).max() <= 3
    for device in fake_cuda:
        device.check_released()


def test_captures_that_fail_when_a_layout_first_comes_are_retried_and_nothing_is_lost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first captures of a stream_many's runners fail (as when NVDEC decoders of other
    cameras start meanwhile): those batches run plainly, the runner captures again at the next
    batch of that size (retry delay 0 here), and every result equals engine.stream's."""
    import xinfer_stream.cuda

    from xinfer_stream.runtime import _capture

    from .test_gpu_runner_emulated import FlakyCaptureDevice

    failures = 3
    made: list[FakeDevice] = []

    def make(ordinal: int = 0) -> FakeDevice:
        made.append(FlakyCaptureDevice(failures))
        return made[-1]

    monkeypatch.setattr(xinfer_stream.cuda, "Device", make)
    monkeypatch.setattr(_capture, "CAPTURE_RETRY", 0.0)
    got, alone, stats = many_and_alone({"wide": (40, 96, 1), "small": (24, 32, 2)},
                                       many_first=True)
    assert_each_camera_as_alone(got, alone)
    assert sum(g.capture_failures for g in stats.gpu) == failures
    assert sum(g.plain_batches for g in stats.gpu) == failures, "one plain batch a failure"
    assert all(g.graph_mode == "graph" for g in stats.gpu), stats.gpu
    for device in made:
        device.check_released()
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]
