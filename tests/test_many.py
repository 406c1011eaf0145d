"""Many cameras through one engine (``engine.stream_many``) on the CPU: per-camera order,
batching across cameras (full and timed-out dispatch), fairness, cameras added and removed while
running, one camera's failure staying its own, argument errors, and every thread released on
early exit, cancellation and an exception in the body. Also the paced file sources
(``realtime=True``, ``loop=True``) the multi-camera tests and benchmark use.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import xinfer_stream as xs
from xinfer_stream.video import open_source
from xinfer_stream.video._write import write_video

from .census import left_behind, steady
from .test_cli import tiny_classifier
from .test_reliability_cancellation import LOOPS, our_threads, run
from .test_runtime import PRE, CountingFrames, FakeBackend

Item = xs.Result | xs.CameraEvent


# -- helpers ----------------------------------------------------------------------------------
def values(items: list[Item], camera: str) -> list[int]:
    return [int(r.outputs["value"][0]) for r in items
            if isinstance(r, xs.Result) and r.camera == camera]


def events(items: list[Item], camera: str | None = None) -> list[tuple[str, str]]:
    return [(e.camera, e.kind) for e in items
            if isinstance(e, xs.CameraEvent) and (camera is None or e.camera == camera)]


def endless(fill: int = 7) -> Iterator[npt.NDArray[np.uint8]]:
    for i in itertools.count():
        yield np.full((8, 8, 3), (fill + i) % 256, np.uint8)


async def collect(stream: xs.MultiStream) -> list[Item]:
    async with stream as items:
        return [item async for item in items]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny model and two clips of different sizes (30 frames/s)."""
    folder = tmp_path_factory.mktemp("many")
    model = tiny_classifier(folder / "tiny.onnx")
    rng = np.random.default_rng(0)
    small, large = folder / "small.mp4", folder / "large.mp4"
    write_video(small, [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(12)], gop=4)
    write_video(large, [rng.integers(0, 256, (72, 128, 3), np.uint8) for _ in range(12)], gop=4)
    return model, small, large


@pytest.fixture(scope="module")
def warm(clips: tuple[Path, Path, Path]) -> None:
    """Open ONNX Runtime, FFmpeg and each event loop once before anything is counted (their
    first use keeps a few descriptors and threads for the life of the process)."""
    model, small, _ = clips

    async def once() -> None:
        async with xs.load(model, preprocess=PRE) as engine:
            async with engine.stream_many({"a": small, "b": CountingFrames(3)}) as items:
                async for _ in items:
                    pass

    for loop in LOOPS:
        run(loop, once())


@pytest.fixture
def baseline(warm: None) -> Iterator[None]:
    before = steady()
    yield
    assert left_behind(before) == []
    assert our_threads() == []


# -- ordering, batching, fairness -------------------------------------------------------------
def test_each_camera_in_frame_order_with_its_events_around_its_results() -> None:
    backend = FakeBackend(max_batch=8)

    async def main() -> list[Item]:
        async with xs.load(backend, preprocess=PRE) as engine:
            return await collect(engine.stream_many(
                {"a": CountingFrames(40), "b": CountingFrames(25), "c": CountingFrames(3)}))

    items = asyncio.run(main())
    for name, n in (("a", 40), ("b", 25), ("c", 3)):
        assert values(items, name) == list(range(n))
        mine = [i for i, it in enumerate(items) if getattr(it, "camera", None) == name]
        assert isinstance(items[mine[0]], xs.CameraEvent) and items[mine[0]].kind == "opened"
        assert isinstance(items[mine[-1]], xs.CameraEvent) and items[mine[-1]].kind == "ended"
    assert max(backend.batches) > 1, "frames of several cameras share engine calls"
    assert max(backend.batches) <= 8


def test_once_open_a_camera_needs_no_thread_of_its_own() -> None:
    """A camera's thread opens its source and ends: from then on the source's decode thread
    hands frames to the batcher, so a camera costs one thread in this process, not two."""
    async def main() -> tuple[list[str], list[str], list[Item]]:
        async with xs.load(FakeBackend(max_batch=4), preprocess=PRE) as engine:
            async with engine.stream_many({f"cam{i}": endless(i) for i in range(3)}) as items:
                got: list[Item] = []
                async for item in items:
                    got.append(item)
                    if sum(isinstance(r, xs.Result) for r in got) == 60:
                        break
                deadline = time.monotonic() + 5  # a camera thread ends just after opening
                while (time.monotonic() < deadline and any(
                        t.name.startswith("xinfer-camera") for t in threading.enumerate())):
                    await asyncio.sleep(0.01)
                names = [t.name for t in threading.enumerate()]
                return ([n for n in names if n.startswith("xinfer-camera")],
                        [n for n in names if n.startswith("xinfer-decode")], got)

    cameras, decoders, items = asyncio.run(main())
    assert cameras == [] and len(decoders) == 3, (cameras, decoders)
    assert sorted(events(items)) == [(f"cam{i}", "opened") for i in range(3)]
    for i in range(3):  # camera i's frames are filled with i, i + 1, ...
        got = values(items, f"cam{i}")
        assert got == list(range(i, i + len(got))) and got


def test_full_batches_dispatch_at_max_batch_without_waiting() -> None:
    backend = FakeBackend(max_batch=16, delay=0.002)

    async def main() -> tuple[list[Item], xs.MultiStatistics, float]:
        async with xs.load(backend, preprocess=PRE) as engine:
            started = time.perf_counter()
            async with engine.stream_many({f"cam{i}": CountingFrames(30) for i in range(4)},
                                          max_batch=4, max_wait=5.0) as items:
                got = [item async for item in items]
                return got, items.statistics(), time.perf_counter() - started

    items, stats, took = asyncio.run(main())
    assert took < 4.0, "full batches went without waiting for max_wait"
    assert stats.frames == 120 and stats.full_batches >= 20
    assert set(stats.batch_sizes) <= {1, 2, 3, 4}
    assert backend.batches.count(4) >= 20
    for i in range(4):
        assert values(items, f"cam{i}") == list(range(30))


def test_a_lone_frame_goes_once_the_oldest_has_waited_max_wait(clips: tuple[Path, Path, Path]
                                                                ) -> None:
    _, small, _ = clips
    backend = FakeBackend(max_batch=8)
    quiet = threading.Event()

    def silent() -> Iterator[npt.NDArray[np.uint8]]:
        quiet.wait(20)  # a camera that sends nothing: batches cannot fill with its frames
        yield from ()

    async def main() -> xs.MultiStatistics:
        async with xs.load(backend, preprocess=PRE) as engine:
            async with engine.stream_many(
                    {"paced": xs.Camera(small, options={"realtime": True}), "silent": silent()},
                    max_wait=0.02) as items:
                got: list[Item] = []
                try:
                    async for item in items:
                        got.append(item)
                        if ("paced", "ended") in events(got):
                            break
                finally:
                    quiet.set()
                return items.statistics()

    stats = asyncio.run(main())
    assert stats.frames == 12
    assert stats.timed_out_batches >= 10
    assert stats.batch_sizes == {1: 12}, "a 30 fps camera alone never fills a batch"
    # Latency bound: max_wait plus the engine, never a wait for frames that will not come.
    assert stats.cameras["paced"].latency.max < 0.5


def test_a_batch_with_a_frame_of_every_camera_goes_at_once() -> None:
    async def main() -> tuple[xs.MultiStatistics, float]:
        async with xs.load(FakeBackend(max_batch=8), preprocess=PRE) as engine:
            started = time.perf_counter()
            async with engine.stream_many({"one": CountingFrames(20)}, max_wait=5.0) as items:
                async for _ in items:
                    pass
                return items.statistics(), time.perf_counter() - started

    stats, took = asyncio.run(main())
    assert stats.frames == 20 and stats.timed_out_batches == 0
    assert took < 3.0, "one camera alone never waits for max_wait"


def test_a_fast_camera_does_not_starve_a_slow_one(clips: tuple[Path, Path, Path]) -> None:
    _, small, _ = clips
    backend = FakeBackend(max_batch=4, delay=0.01)  # the engine is the bottleneck

    async def main() -> tuple[list[Item], xs.MultiStatistics]:
        async with xs.load(backend, preprocess=PRE) as engine:
            async with engine.stream_many(
                    {"fast": endless(), "slow": xs.Camera(small, options={"realtime": True})},
                    max_wait=0.005) as items:
                got: list[Item] = []
                async for item in items:
                    got.append(item)
                    if ("slow", "ended") in events(got, "slow"):
                        break
                return got, items.statistics()

    _items, stats = asyncio.run(main())
    slow = stats.cameras["slow"]
    assert slow.frames == 12 and slow.drops == 0
    # Oldest first: a slow frame waits for at most a batch or two of the flood, not behind it.
    assert slow.latency.max < 0.3, slow.latency
    assert stats.cameras["fast"].frames > 3 * slow.frames


def test_frames_of_different_sizes_share_a_batch_on_the_cpu(clips: tuple[Path, Path, Path]
                                                            ) -> None:
    model, small, large = clips

    async def main() -> tuple[list[Item], list[xs.Result], list[xs.Result], xs.MultiStatistics]:
        async with xs.load(model, preprocess=PRE) as engine:
            async with engine.stream(small) as one:
                alone_small = [r async for r in one]
            async with engine.stream(large) as one:
                alone_large = [r async for r in one]
            async with engine.stream_many({"s": small, "l": large}, max_wait=0.5) as items:
                got = [item async for item in items]
                return got, alone_small, alone_large, items.statistics()

    items, alone_small, alone_large, stats = asyncio.run(main())
    assert max(stats.batch_sizes) > 1
    for name, alone in (("s", alone_small), ("l", alone_large)):
        mine = [r for r in items if isinstance(r, xs.Result) and r.camera == name]
        assert [r.frame_index for r in mine] == [r.frame_index for r in alone]
        for a, b in zip(mine, alone, strict=True):
            np.testing.assert_allclose(a.outputs["logits"], b.outputs["logits"], rtol=1e-5,
                                       atol=1e-6)


# -- cameras coming and going -----------------------------------------------------------------
def test_add_and_remove_while_running_lose_no_other_cameras_frame() -> None:
    backend = FakeBackend(max_batch=4, delay=0.002)

    async def main() -> tuple[list[Item], xs.MultiStatistics]:
        async with xs.load(backend, preprocess=PRE) as engine:
            async with engine.stream_many({"a": endless(), "keep": CountingFrames(200)},
                                          max_wait=0.005) as items:
                got: list[Item] = []
                async for item in items:
                    got.append(item)
                    if len(values(got, "a")) == 20 and "b" not in items.cameras:
                        items.add("b", CountingFrames(30))
                        await items.remove("a")
                        assert "a" not in items.cameras
                stats = items.statistics()
                return got, stats

    items, stats = asyncio.run(main())
    removed_at = items.index(next(e for e in items if isinstance(e, xs.CameraEvent)
                                  and e.kind == "removed"))
    assert not [r for r in items[removed_at:] if isinstance(r, xs.Result) and r.camera == "a"]
    a = values(items, "a")
    assert a == list(range(7, 7 + len(a)))
    assert values(items, "keep") == list(range(200))
    assert values(items, "b") == list(range(30))
    assert events(items, "b") == [("b", "opened"), ("b", "ended")]
    assert set(stats.cameras) == {"keep", "b"}


def test_drain_delivers_every_frame_taken_then_ends() -> None:
    """``drain()`` (a service's clean stop): no new frame, every frame the stream had taken
    still delivered in order, each camera ``ended``, then the end; ``add`` refused meanwhile."""
    backend = FakeBackend(max_batch=4, delay=0.003)

    async def main() -> tuple[list[Item], xs.MultiStatistics]:
        async with xs.load(backend, preprocess=PRE) as engine:
            async with engine.stream_many({"a": endless(0), "b": endless(0), "c": endless(0)},
                                          max_wait=0.005, queue_size=4,
                                          end_when_idle=False) as items:
                got: list[Item] = []
                async for item in items:
                    got.append(item)
                    if len(values(got, "a")) == 10:
                        await items.drain()
                        await items.drain()  # idempotent
                        with pytest.raises(xs.ClosedResourceError, match="draining"):
                            items.add("late", CountingFrames(3))
                return got, items.statistics()

    items, stats = asyncio.run(main())
    for name in ("a", "b", "c"):
        got = values(items, name)
        assert got == list(range(len(got)))
        assert len(got) == stats.cameras[name].offered, "every frame taken was delivered"
        assert events(items, name) == [(name, "opened"), (name, "ended")]
        assert stats.cameras[name].state == "ended"


def test_a_camera_that_never_opens_or_breaks_affects_only_itself(tmp_path: Path) -> None:
    def breaks() -> Iterator[npt.NDArray[np.uint8]]:
        yield from iter(CountingFrames(5))
        raise OSError("the cable came out")

    async def main() -> tuple[list[Item], xs.MultiStatistics]:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            async with engine.stream_many({"missing": tmp_path / "nope.mp4", "breaks": breaks(),
                                           "good": CountingFrames(50)}) as items:
                got = [item async for item in items]
                return got, items.statistics()

    items, stats = asyncio.run(main())
    assert values(items, "good") == list(range(50))
    assert values(items, "breaks") == list(range(5))
    missing = [e for e in items if isinstance(e, xs.CameraEvent) and e.camera == "missing"]
    assert [e.kind for e in missing] == ["failed"]
    assert isinstance(missing[0].error, xs.InvalidVideoError)
    broke = [e for e in items if isinstance(e, xs.CameraEvent) and e.camera == "breaks"]
    assert [e.kind for e in broke] == ["opened", "failed"]
    assert isinstance(broke[1].error, xs.VideoError)
    assert broke[1].error.__cause__ is not None
    assert items.index(broke[1]) > max(i for i, r in enumerate(items)
                                       if isinstance(r, xs.Result) and r.camera == "breaks")
    assert stats.cameras["missing"].state == "failed"
    assert stats.cameras["good"].state == "ended"
    assert stats.cameras["good"].frames == stats.cameras["good"].offered == 50


def test_per_camera_policy_latest_drops_only_that_cameras_frames() -> None:
    backend = FakeBackend(max_batch=2, delay=0.005)

    async def main() -> xs.MultiStatistics:
        async with xs.load(backend, preprocess=PRE) as engine:
            async with engine.stream_many({"every": CountingFrames(60)}) as items:
                items.add("latest", CountingFrames(300), policy="latest")
                async for _ in items:
                    await asyncio.sleep(0.001)
                return items.statistics()

    stats = asyncio.run(main())
    assert stats.cameras["every"].frames == 60 and stats.cameras["every"].drops == 0
    latest = stats.cameras["latest"]
    assert latest.drops > 0 and latest.frames + latest.drops >= 290


def test_statistics_while_running_and_without_end_when_idle() -> None:
    async def main() -> None:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            async with engine.stream_many({}, end_when_idle=False) as items:
                assert items.statistics().cameras == {}
                items.add("x", CountingFrames(10))
                got: list[Item] = []
                async for item in items:
                    got.append(item)
                    if ("x", "ended") in events(got):
                        break
                stats = items.statistics().cameras["x"]
                assert stats.frames == 10 and stats.state == "ended"
                assert stats.latency.count == 10 and stats.latency.p99 >= stats.latency.p50

    asyncio.run(main())


# -- failures of what every camera shares -----------------------------------------------------
@pytest.mark.usefixtures("baseline")
def test_an_engine_failure_ends_the_whole_stream_with_its_error() -> None:
    async def main() -> None:
        async with xs.load(FakeBackend(fail_on=5), preprocess=PRE) as engine:
            async with engine.stream_many({"a": CountingFrames(50), "b": endless(100)}) as items:
                async for _ in items:
                    pass

    with pytest.raises(xs.InferenceError, match="fake failure on frame value 5"):
        asyncio.run(main())


@pytest.mark.usefixtures("baseline")
def test_a_failing_postprocess_ends_the_stream_with_its_cause() -> None:
    def post(outputs: Any) -> None:
        raise KeyError("postprocess bug")

    async def main() -> None:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            async with engine.stream_many({"a": endless(), "b": endless()},
                                          postprocess=post) as items:
                async for _ in items:
                    pass

    with pytest.raises(xs.InferenceError, match="postprocess bug") as info:
        asyncio.run(main())
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.usefixtures("baseline")
def test_cancelling_a_remove_still_removes_the_camera() -> None:
    async def main() -> None:
        async with xs.load(FakeBackend(delay=0.001), preprocess=PRE) as engine:
            async with engine.stream_many({"a": endless(), "b": endless()}) as items:
                async for _ in items:
                    break
                task = asyncio.ensure_future(items.remove("a"))
                await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert items.cameras == ("b",)
                seen: list[Item] = []
                async for item in items:
                    seen.append(item)
                    if len(seen) > 50:
                        break
                assert {getattr(i, "camera", None) for i in seen} <= {"a", "b"}
                assert not [r for r in seen if isinstance(r, xs.Result) and r.camera == "a"]

    asyncio.run(main())


# -- argument errors --------------------------------------------------------------------------
def test_wrong_arguments_are_clear_value_errors() -> None:
    async def main() -> None:
        async with xs.load(FakeBackend(max_batch=8), preprocess=PRE) as engine:
            with pytest.raises(ValueError, match="max batch"):
                engine.stream_many({"a": CountingFrames(1)}, max_batch=9)
            with pytest.raises(ValueError, match="no cameras"):
                engine.stream_many({})
            with pytest.raises(ValueError, match="policy"):
                engine.stream_many({"a": CountingFrames(1)}, policy="newest")
            with pytest.raises(ValueError, match="max_wait"):
                engine.stream_many({"a": CountingFrames(1)}, max_wait=-1)
            with pytest.raises(ValueError, match="nvdec"):
                engine.stream_many({"a": CountingFrames(1)}, decode="nvdec")
            with pytest.raises(ValueError, match="nvdec' leaves frames in GPU memory"):
                engine.stream_many({"a": CountingFrames(1),
                                    "b": xs.Camera(CountingFrames(1), decode="nvdec")})
            with pytest.raises(ValueError, match="decode must be one of cpu, nvdec, got 'gpu'"):
                engine.stream_many({"a": xs.Camera(CountingFrames(1), decode="gpu")})
            with pytest.raises(TypeError, match="mapping"):
                engine.stream_many(["a.mp4"])  # type: ignore[arg-type]
            async with engine.stream_many({"a": CountingFrames(5)}) as items:
                with pytest.raises(ValueError, match="already"):
                    items.add("a", CountingFrames(1))
                with pytest.raises(ValueError, match="no camera named 'zz'.*'a'"):
                    await items.remove("zz")
                with pytest.raises(ValueError, match="not both"):
                    items.add("b", xs.Camera(CountingFrames(1)), policy="latest")
                with pytest.raises(ValueError, match="policy"):
                    items.add("c", CountingFrames(1), policy="sometimes")
                async for _ in items:
                    pass
                with pytest.raises(xs.ClosedResourceError):
                    items.add("late", CountingFrames(1))

    asyncio.run(main())


def test_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="stream_many"):
        xs.MultiStream()


# -- nothing left behind ----------------------------------------------------------------------
@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("how", ["break", "raise", "cancel", "engine_close"])
def test_every_thread_and_source_is_released(how: str, loop: str,
                                             clips: tuple[Path, Path, Path]) -> None:
    model, small, large = clips
    sources: dict[str, Any] = {
        "s": xs.Camera(small, options={"loop": True}),
        "l": xs.Camera(large, options={"loop": True, "realtime": True}),
        "arrays": endless(), "missing": small.with_name("nope.mp4")}

    async def body(engine: xs.StreamingEngine, entered: asyncio.Event) -> None:
        async with engine.stream_many(sources, max_wait=0.01) as items:
            n = 0
            async for _ in items:
                n += 1
                if n == 30:
                    entered.set()
                    if how == "break":
                        break
                    if how == "raise":
                        raise RuntimeError("the body failed")
                    if how == "engine_close":
                        await engine.aclose()
                        return

    async def main() -> None:
        async with xs.load(model, preprocess=PRE) as engine:
            entered = asyncio.Event()
            task = asyncio.create_task(body(engine, entered))
            await asyncio.wait_for(entered.wait(), 20)
            if how == "cancel":
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            elif how == "raise":
                with pytest.raises(RuntimeError, match="the body failed"):
                    await task
            else:
                await task

    run(loop, main())


# -- paced sources ----------------------------------------------------------------------------
def test_realtime_replays_at_the_files_frame_rate(clips: tuple[Path, Path, Path]) -> None:
    _, small, _ = clips
    started = time.perf_counter()
    with open_source(small, realtime=True) as source:
        frames = list(source)
    took = time.perf_counter() - started
    assert [f.index for f in frames] == list(range(12))
    assert took >= 11 / 30 * 0.9
    due = [f.decoded_at - frames[0].decoded_at for f in frames]
    np.testing.assert_allclose(due, [i / 30 for i in range(12)], atol=1e-3)


def test_loop_plays_forever_with_index_and_pts_going_on(clips: tuple[Path, Path, Path]) -> None:
    _, small, _ = clips
    with open_source(small, loop=True) as source:
        frames = [source.get() for _ in range(30)]
    assert all(f is not None for f in frames)
    assert [f.index for f in frames if f] == list(range(30))
    pts = [f.pts for f in frames if f]
    np.testing.assert_allclose(np.diff(np.asarray(pts, dtype=float)), 1 / 30, atol=1e-6)


def test_pacing_applies_to_files_only() -> None:
    with pytest.raises(ValueError, match="not a file"):
        open_source(CountingFrames(3), realtime=True)


def test_a_dispatched_frame_lets_go_of_its_pixels_once_they_were_read() -> None:
    """Host frames packed into staging let go at dispatch (a copy kept for a camera wanting
    images); a registered ring's frames, which the GPU reads where they are, keep their pixels
    until the batch's emit (``read``), then let go unless their camera wants images; NVDEC
    frames stay as they are (emit releases them)."""
    from types import SimpleNamespace

    from xinfer_stream.runtime._batcher import Entry
    from xinfer_stream.runtime._many import _Pending
    from xinfer_stream.video import VideoFrame

    def frame(pinned: bool = False, device: Any = None) -> VideoFrame:
        planes = () if device is not None else (np.zeros((4, 4), np.uint8),)
        return VideoFrame(source="s", index=0, pts=None, format="yuv420p", planes=planes,
                          width=4, height=4, colorspace="bt601", color_range="limited",
                          decoded_at=0.0, device=device, pinned=pinned)

    plain, pictures = (SimpleNamespace(spec=xs.Camera("x", images=i)) for i in (False, True))
    device = SimpleNamespace(release=lambda: None)
    made = [(plain, frame()), (pictures, frame()), (plain, frame(pinned=True)),
            (pictures, frame(pinned=True)), (plain, frame(device=device))]
    pending = _Pending([Entry(camera, 0.0, frame=f) for camera, f in made])  # type: ignore[arg-type]
    rows = range(len(made))

    def has_pixels() -> list[bool]:
        return [bool(f.planes) for f in pending.frames]

    dispatched = pending.let_go_of_pixels(rows)
    assert has_pixels() == [False, True, True, True, False]
    assert dispatched[1] is not made[1][1], "a copy for the images, not the ring's planes"
    assert dispatched[2] is made[2][1] and dispatched[4] is made[4][1]
    pending.let_go_of_pixels(rows, read=True)
    assert has_pixels() == [False, True, False, True, False]
    assert pending.frames[3] is made[3][1], "kept whole for its images"
    assert [e.frame for e in pending.entries] == pending.frames


def test_a_stream_without_cameras_yet_refuses_nvdec_on_a_cpu_engine() -> None:
    """The stream's own decode is checked even before any camera is added."""
    async def main() -> None:
        async with xs.load(FakeBackend(max_batch=8), preprocess=PRE) as engine:
            with pytest.raises(ValueError, match="nvdec' leaves frames in GPU memory"):
                engine.stream_many({}, end_when_idle=False, decode="nvdec")

    asyncio.run(main())
