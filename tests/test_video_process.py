"""Decoding in a worker process (``open_source(..., process=True)``): the same frames as the
decode thread, read from a shared-memory ring this process owns; a frame keeps its slot while it
lives; a killed worker is restarted and the file resumes where it was; a source that cannot open
fails at open; and no worker, thread, descriptor or /dev/shm segment is left on any path."""

from __future__ import annotations

import asyncio
import mmap
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xinfer_stream as xs
from xinfer_stream.video import VideoFrame, open_source
from xinfer_stream.video._write import write_video

from .census import left_behind, steady
from .test_cli import tiny_classifier
from .test_reliability_cancellation import our_threads

PRE = xs.Preprocess(size=(8, 8))


def segments() -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"xinfer_{os.getpid()}_"))


def children() -> list[int]:
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids += [int(p) for p in f.read().split()]
    return pids


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("process") / "clip.mp4"
    rng = np.random.default_rng(0)
    write_video(path, [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(90)], gop=10)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("process_model") / "tiny.onnx")


@pytest.fixture(scope="module")
def warm(clip: Path, model: Path) -> None:
    """Start what lives as long as the process before counting: the resource tracker (a helper
    process of shared memory), ONNX Runtime's and FFmpeg's first-use threads."""
    async def once() -> None:
        async with xs.load(model, preprocess=PRE) as engine:
            async with engine.stream_many({"c": xs.Camera(clip, options={"process": True})}
                                          ) as items:
                async for _ in items:
                    pass

    asyncio.run(once())


@pytest.fixture
def nothing_left(warm: None) -> Iterator[None]:
    """No worker (only the resource tracker, started by the warm-up, stays), no thread, no
    descriptor, no segment left."""
    before, helpers = steady(), set(children())
    yield
    assert left_behind(before) == []
    assert our_threads() == []
    assert segments() == [] and set(children()) == helpers


def frames_of(source: Any) -> list[tuple[int, float | None, list[np.ndarray[Any, Any]]]]:
    return [(f.index, f.pts, [p.copy() for p in f.planes]) for f in source]


@pytest.mark.usefixtures("nothing_left")
@pytest.mark.parametrize("fmt", ["yuv420p", "rgb24"])
def test_the_same_frames_as_the_decode_thread(clip: Path, fmt: str) -> None:
    with open_source(clip, format=fmt) as source:
        expected = frames_of(source)
    with open_source(clip, format=fmt, process=True, queue_size=2) as source:
        assert segments() != [] or True  # the ring is made with the first frame handed over
        first = source.get()
        assert first is not None and not first.planes[0].flags.writeable
        got = [(first.index, first.pts, [p.copy() for p in first.planes])]
        del first
        got += frames_of(source)
        stats = source.statistics()
    assert [g[:2] for g in got] == [e[:2] for e in expected] and len(got) == 90
    for (_, _, a), (_, _, b) in zip(got, expected, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert stats.frames_decoded == 90 and stats.decode_seconds > 0


def in_shared_memory(frame: VideoFrame) -> bool:
    """Whether the frame's pixels are a view of the ring (else they came copied, inline)."""
    base: object = frame.planes[0]
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, mmap.mmap)


@pytest.mark.usefixtures("nothing_left")
def test_a_consumer_slower_than_decoding_gets_every_frame_through_the_ring(clip: Path) -> None:
    """The worker decodes faster than this consumer reads; it waits for slots to come back
    rather than running ahead and copying frames through the pipe once the ring is full."""
    with open_source(clip, format="yuv420p", process=True, queue_size=2) as source:
        ring = []
        for frame in source:
            ring.append(in_shared_memory(frame))
            del frame
            time.sleep(0.005)
        copied = source.statistics().frames_copied
    assert len(ring) == 90 and all(ring), f"{ring.count(False)} of 90 frames came inline"
    assert copied == 0


@pytest.mark.usefixtures("nothing_left")
def test_a_consumer_keeping_every_frame_is_not_held_up_by_the_ring(clip: Path) -> None:
    started = time.monotonic()
    with open_source(clip, format="yuv420p", process=True, queue_size=2) as source:
        kept = list(source)  # far more frames than slots: the rest come copied, inline
        copied = source.statistics().frames_copied
    # One wait for a slot that never comes back, then inline without waiting: a wait a frame
    # (0.5 s each) would take over 40 s.
    assert time.monotonic() - started < 20
    assert [f.index for f in kept] == list(range(90))
    assert in_shared_memory(kept[0]) and not in_shared_memory(kept[-1])
    assert copied == sum(not in_shared_memory(f) for f in kept) > 0, "each copy counted"
    with open_source(clip, format="yuv420p") as source:
        for a, b in zip(kept, source, strict=True):
            np.testing.assert_array_equal(a.planes[0], b.planes[0])
    del kept


@pytest.mark.usefixtures("nothing_left")
def test_the_receiver_can_hand_frames_to_a_sink(clip: Path) -> None:
    """``deliver_to``: the receiving thread hands each frame to the sink (the ring's frames),
    then the end, once; closing tells the sink."""
    got: list[int] = []
    finished: list[BaseException | None] = []
    closed: list[bool] = []

    class Sink:
        def put(self, frame: VideoFrame) -> bool:
            got.append(frame.index)
            return True

        def finish(self, error: BaseException | None) -> None:
            finished.append(error)

        def close(self) -> None:
            closed.append(True)

    with open_source(clip, format="yuv420p", process=True) as source:
        source.deliver_to(Sink())
        deadline = time.monotonic() + 20
        while not finished and time.monotonic() < deadline:
            time.sleep(0.01)
        delivered = source.statistics().frames_delivered
    assert got == list(range(90)) and finished == [None] and delivered == 90
    assert closed == [True]


@pytest.mark.usefixtures("nothing_left")
def test_a_killed_worker_is_restarted_and_the_file_resumes(clip: Path) -> None:
    with open_source(clip, format="yuv420p", process=True) as source:
        head = [source.get() for _ in range(30)]
        process = source._worker._process  # type: ignore[union-attr]
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        rest = list(source)
        stats = source.statistics()
    frames = [f for f in head + rest if f is not None]
    assert [f.index for f in frames] == list(range(90)), "no frame lost or repeated across the restart"
    assert stats.reconnects == 1 and stats.outages == 1
    # The frames held across the restart kept their slots: the new worker wrote only into
    # free ones, so every frame still holds its own pixels.
    assert any(in_shared_memory(f) for f in head)
    with open_source(clip, format="yuv420p") as source:
        for a, b in zip(frames, source, strict=True):
            np.testing.assert_array_equal(a.planes[0], b.planes[0])


@pytest.mark.usefixtures("nothing_left")
def test_a_worker_that_keeps_dying_ends_the_stream(clip: Path) -> None:
    budget = xs.video.Reconnect(attempts=2, initial_delay=0.01, max_delay=0.02)
    with open_source(clip, format="yuv420p", process=True, reconnect=budget) as source:
        assert source.get() is not None
        worker = source._worker
        original = worker._spawn  # type: ignore[union-attr]

        def failing(skip: int) -> None:
            raise xs.VideoError("no more workers")
        worker._spawn = failing  # type: ignore[union-attr]
        os.kill(worker._process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        with pytest.raises(xs.BrokenStreamError, match="could not be started again"):
            while source.get() is not None:
                pass
        worker._spawn = original  # type: ignore[union-attr]


@pytest.mark.usefixtures("nothing_left")
def test_a_source_that_cannot_open_fails_at_open(tmp_path: Path) -> None:
    with pytest.raises(xs.InvalidVideoError, match="no such file"):
        open_source(tmp_path / "missing.mp4", process=True)


@pytest.mark.usefixtures("nothing_left")
def test_closing_early_with_a_frame_still_held_leaves_no_segment(clip: Path) -> None:
    source = open_source(clip, format="yuv420p", process=True)
    held = source.get()
    assert held is not None and segments() != []
    source.close()
    assert segments() == [], "the name goes at close; the held frame keeps only its mapping"
    assert int(held.planes[0].sum()) >= 0  # still readable
    del held


@pytest.mark.usefixtures("nothing_left")
def test_a_pinned_ring_is_registered_once_and_unregistered_before_it_is_unmapped(
        clip: Path) -> None:
    """``pin_memory``: called once with the ring's mapping; every frame from the ring says
    ``pinned`` and lies inside it; the undo runs once, while the memory is still mapped, after
    the source closed and its last frame went."""
    import ctypes
    calls: list[tuple[int, int]] = []
    undone: list[bytes] = []

    def pin(address: int, nbytes: int) -> Any:
        calls.append((address, nbytes))
        return lambda: undone.append(ctypes.string_at(address, 1))  # reads the mapping

    def in_ring(frame: VideoFrame) -> bool:
        address, nbytes = calls[0]
        return frame.pinned and all(address <= p.ctypes.data
                                    and p.ctypes.data + p.nbytes <= address + nbytes
                                    for p in frame.planes)

    with open_source(clip, format="yuv420p", process=True, pin_memory=pin) as source:
        held = source.get()
        assert held is not None and in_ring(held)
        rest = [in_ring(f) for f in source]
    assert rest == [True] * 89 and len(calls) == 1
    assert undone == [] and segments() == [], "the name went at close, the mapping stays"
    del held
    assert len(undone) == 1


@pytest.mark.usefixtures("nothing_left")
def test_a_ring_that_cannot_be_pinned_still_delivers_its_frames(
        clip: Path, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(address: int, nbytes: int) -> Any:
        raise OSError("no page-locked memory left")

    with open_source(clip, format="yuv420p", process=True, pin_memory=refuse) as source:
        got = frames_of_pinned(source)
    assert len(got) == 90 and not any(got)
    assert "could not register a decoder ring" in caplog.text
    assert "no page-locked memory left" in caplog.text
    with pytest.raises(ValueError, match="needs process=True"):
        open_source(clip, pin_memory=refuse)


def frames_of_pinned(source: Any) -> list[bool]:
    return [f.pinned for f in source]


def test_what_process_decoding_does_not_take(clip: Path) -> None:
    with pytest.raises(ValueError, match="arrays"):
        open_source([np.zeros((8, 8, 3), np.uint8)], process=True)
    with pytest.raises(ValueError, match="drop device_frames= and progress="):
        open_source(clip, process=True, format="nv12", hwaccel="cuda", device_frames=True)
    with pytest.raises(ValueError, match="drop device_frames= and progress="):
        open_source(clip, process=True, progress=lambda *_: None)


def test_a_worker_process_decodes_with_hwaccel_into_host_memory(clip: Path) -> None:
    """hwaccel in the worker (NVDEC where there is one, else FFmpeg's software fallback, which
    the worker logs): the same frames as decoding here, in host memory."""
    with open_source(clip, process=True, format="nv12", hwaccel="cuda") as worker, \
            open_source(clip, format="nv12") as here:
        got, want = list(worker), list(here)
        on_device = worker.statistics().frames_decoded_on_device
        assert here.statistics().frames_decoded_on_device == 0
    assert len(got) == len(want) > 0
    assert on_device in (0, len(got)), "every frame on the device, or every one in software"
    for a, b in zip(got, want, strict=True):
        assert a.device is None and a.format == b.format == "nv12"
        for pa, pb in zip(a.planes, b.planes, strict=True):
            np.testing.assert_array_equal(pa, pb)


@pytest.mark.usefixtures("nothing_left")
def test_cameras_decoded_in_processes_through_stream_many(clip: Path, model: Path) -> None:
    async def main() -> tuple[list[Any], list[xs.Result]]:
        async with xs.load(model, preprocess=PRE) as engine:
            async with engine.stream(clip) as results:
                alone = [r async for r in results]
            async with engine.stream_many(
                    {f"c{i}": xs.Camera(clip, options={"process": True}) for i in range(3)}
            ) as items:
                return [item async for item in items], alone

    items, alone = asyncio.run(main())
    for i in range(3):
        mine = [r for r in items if isinstance(r, xs.Result) and r.camera == f"c{i}"]
        assert [r.frame_index for r in mine] == list(range(90))
        for a, b in zip(mine, alone, strict=True):
            np.testing.assert_allclose(a.outputs["logits"], b.outputs["logits"], rtol=1e-5,
                                       atol=1e-6)


@pytest.mark.usefixtures("nothing_left")
@pytest.mark.parametrize("how", ["break", "cancel"])
def test_leaving_stream_many_early_ends_every_worker(clip: Path, model: Path, how: str) -> None:
    async def body(engine: xs.StreamingEngine, entered: asyncio.Event) -> None:
        cameras = {f"c{i}": xs.Camera(clip, options={"process": True, "loop": True})
                   for i in range(3)}
        async with engine.stream_many(cameras) as items:
            n = 0
            async for _ in items:
                n += 1
                if n == 40:
                    entered.set()
                    if how == "break":
                        break

    async def main() -> None:
        async with xs.load(model, preprocess=PRE) as engine:
            entered = asyncio.Event()
            task = asyncio.ensure_future(body(engine, entered))
            await asyncio.wait_for(entered.wait(), 30)
            if how == "cancel":
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_a_killed_owner_leaves_no_segment_and_no_worker(clip: Path) -> None:
    """The owner dies without closing anything (SIGKILL): the workers notice the broken pipe
    and leave, and the resource tracker unlinks the ring."""
    script = (
        "import os, sys, time\n"
        "from xinfer_stream.video import open_source\n"
        f"s = open_source({str(clip)!r}, format='yuv420p', process=True, loop=True)\n"
        "f = s.get()\n"
        "print(s._worker._ring.shm.name, s._worker._process.pid, flush=True)\n"
        "time.sleep(60)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    try:
        assert owner.stdout is not None
        name, pid = owner.stdout.readline().split()
        assert os.path.exists(f"/dev/shm/{name}")
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (os.path.exists(f"/dev/shm/{name}")
                                               or os.path.exists(f"/proc/{pid}")):
            time.sleep(0.1)
        assert not os.path.exists(f"/dev/shm/{name}"), "the ring outlived its owner"
        assert not os.path.exists(f"/proc/{pid}"), "the worker outlived its owner"
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()


@pytest.mark.usefixtures("nothing_left")
def test_without_room_in_dev_shm_frames_come_through_the_pipe(clip: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from xinfer_stream.video import _process
    monkeypatch.setattr(_process, "_shm_free", lambda: 0)
    with open_source(clip, format="yuv420p") as source:
        expected = frames_of(source)
    with open_source(clip, format="yuv420p", process=True) as source:
        got = frames_of(source)
        assert segments() == []
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for (_, _, a), (_, _, b) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
