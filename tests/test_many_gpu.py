"""``engine.stream_many`` on a real GPU (torch backend): cameras of two sizes batched together,
each batch padded to its bucket and replayed as a CUDA graph, results equal to ``engine.stream``'s
per camera (CPU decode and NVDEC), and nothing left behind on early exit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xinfer_stream as xs
import xinfer_stream.cuda as xcuda
from xinfer_stream.video._write import write_video

from .census import left_behind, steady

pytestmark = [pytest.mark.gpu,
              # PyTorch's own deprecation noise when it loads (see tests/test_examples.py)
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

SPEC = xs.Preprocess((32, 48), "letterbox", (120.0, 110.0, 100.0), (60.0, 50.0, 40.0))


@pytest.fixture(scope="module")
def model(torch: Any) -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 5)).eval()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("many_gpu")
    rng = np.random.default_rng(0)
    small, large = folder / "small.mp4", folder / "large.mp4"
    write_video(small, [rng.integers(0, 256, (120, 160, 3), np.uint8) for _ in range(40)], gop=8)
    write_video(large, [rng.integers(0, 256, (240, 320, 3), np.uint8) for _ in range(40)], gop=8)
    return small, large


def ours() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("xinfer")]


@pytest.mark.parametrize("decode", ["cpu", "nvdec", "process", "process-nvdec"])
def test_two_sizes_batch_as_graphs_and_match_engine_stream(decode: str, model: Any,
                                                           clips: tuple[Path, Path]) -> None:
    small, large = clips
    clip_of = {"s1": small, "s2": small, "l1": large, "l2": large}
    cameras: dict[str, Any] = dict(clip_of)
    in_process = decode.startswith("process")
    if in_process:  # decoded in worker processes (on the CPU or NVDEC), frames in registered
        cameras = {name: xs.Camera(clip, options={"process": True})  # shared memory
                   for name, clip in clip_of.items()}
        decode = "nvdec" if decode == "process-nvdec" else "cpu"

    async def main() -> tuple[list[Any], dict[Path, list[xs.Result]], xs.MultiStatistics]:
        async with xs.load(model, preprocess=SPEC) as engine:
            alone: dict[Path, list[xs.Result]] = {}
            for clip in (small, large):
                async with engine.stream(clip, decode=decode) as results:
                    alone[clip] = [r async for r in results]
            async with engine.stream_many(cameras, max_batch=8, max_wait=0.02,
                                          decode=decode) as items:
                got = [item async for item in items]
                return got, alone, items.statistics()

    got, alone, stats = asyncio.run(main())
    for name, clip in clip_of.items():
        mine = [r for r in got if isinstance(r, xs.Result) and r.camera == name]
        assert [r.frame_index for r in mine] == list(range(40))
        for a, b in zip(mine, alone[clip], strict=True):
            np.testing.assert_allclose(a.outputs["output"], b.outputs["output"], rtol=1e-4,
                                       atol=1e-4)
    assert stats.frames == 160 and max(stats.batch_sizes) > 1
    if decode == "nvdec" and not in_process and not any(g.frames_from_device_memory
                                                         for g in stats.gpu):
        pytest.skip("NVDEC did not decode the clips here (software fallback, logged)")
    assert len(stats.gpu) == 2, "one runner a frame layout"
    # Batches run plainly only while a capture that failed waits for its retry (another
    # camera's NVDEC decoder starting can invalidate a capture in progress: seen on an H100).
    assert all(not g.graph_mode.startswith("plain") and g.graph_batches > 0
               and (g.plain_batches == 0 or g.capture_failures > 0) for g in stats.gpu), stats.gpu
    if in_process:  # read by DMA from the rings, registered with the device
        assert sum(g.frames_from_pinned_memory for g in stats.gpu) >= 160, stats.gpu
    assert xcuda.live_allocations()["registered"] == (0, 0), "every ring unregistered"
    assert not ours()
    if in_process and decode == "nvdec":  # the workers say whether NVDEC decoded their frames
        sources = [c.source for c in stats.cameras.values()]
        assert all(s is not None and s.frames_decoded >= 40 for s in sources), sources
        if not any(s.frames_decoded_on_device for s in sources if s is not None):
            pytest.skip("NVDEC did not decode in the worker processes here (software fallback, "
                        "in their logs)")
        assert all(s is not None and s.frames_decoded_on_device == s.frames_decoded
                   for s in sources), sources


def test_leaving_early_releases_threads_and_descriptors(model: Any, clips: tuple[Path, Path]
                                                       ) -> None:
    small, large = clips

    async def main() -> None:
        async with xs.load(model, preprocess=SPEC) as engine:
            cams: dict[str, Any] = {f"c{i}": xs.Camera(small if i % 2 else large,
                                                       options={"loop": True})
                                    for i in range(6)}
            async with engine.stream_many(cams, max_batch=4) as items:
                n = 0
                async for _ in items:
                    n += 1
                    if n == 100:
                        break

    asyncio.run(main())  # warm: CUDA, torch and FFmpeg keep what they keep for the process
    before = steady()
    asyncio.run(main())
    assert left_behind(before) == []
    assert not ours()


def frames_of(n: int) -> Iterator[np.ndarray[Any, Any]]:
    rng = np.random.default_rng(3)
    for _ in range(n):
        yield rng.integers(0, 256, (60, 80, 3), np.uint8)


def test_every_bucket_replays_its_own_graph(model: Any) -> None:
    async def main() -> xs.MultiStatistics:
        async with xs.load(model, preprocess=SPEC) as engine:
            async with engine.stream_many({f"c{i}": frames_of(37) for i in range(5)},
                                          max_batch=16, max_wait=0.001) as items:
                async for _ in items:
                    pass
                return items.statistics()

    stats = asyncio.run(main())
    assert stats.frames == 5 * 37
    assert len(stats.gpu) == 1, "one runner for the one frame layout"
    gpu = stats.gpu[0]
    assert gpu.plain_batches == 0 and gpu.graph_batches >= stats.batches
    assert gpu.graph_captures >= 2, "several buckets, each with its graph"
