"""``engine.stream_many`` over live RTSP cameras on loopback (the GStreamer server of
tests/test_reliability_rtsp.py): a camera whose server dies for good fails alone, as an event,
while the others keep streaming; one that comes back within its budget counts a reconnect."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import xinfer_stream as xs
from xinfer_stream.video import Reconnect

from .test_reliability_live import our_threads
from .test_reliability_rtsp import PRE, RtspServer, clip  # noqa: F401  (clip: a fixture)
from .test_runtime import FakeBackend

pytestmark = pytest.mark.slow

Item = xs.Result | xs.CameraEvent


def test_one_rtsp_camera_dying_or_dropping_affects_only_itself(clip: Path) -> None:  # noqa: F811
    steady, dying, dropping = RtspServer(clip), RtspServer(clip), RtspServer(clip)
    back: RtspServer | None = None
    generous = Reconnect(attempts=20, initial_delay=0.2, max_delay=0.5)
    small = Reconnect(attempts=2, initial_delay=0.1, max_delay=0.2)

    async def run() -> tuple[list[Item], xs.MultiStatistics]:
        nonlocal back
        got: list[Item] = []

        async def until(check: object, within: float) -> None:
            deadline = time.monotonic() + within
            async for item in items:
                got.append(item)
                if check(got) or time.monotonic() > deadline:  # type: ignore[operator]
                    return

        def count(name: str) -> int:
            return sum(1 for r in got if isinstance(r, xs.Result) and r.camera == name)

        async with xs.load(FakeBackend(max_batch=8), preprocess=PRE) as engine:
            cameras = {"steady": steady.url,
                       "dying": xs.Camera(dying.url, reconnect=small,
                                          options={"timeout": (2.0, 2.0)}),
                       "dropping": xs.Camera(dropping.url, reconnect=generous,
                                             options={"timeout": (2.0, 2.0)})}
            async with engine.stream_many(cameras, policy="every") as items:
                await until(lambda g: all(count(n) >= 10 for n in cameras), 20)
                dying.kill()
                dropping.kill()
                await until(lambda g: any(isinstance(e, xs.CameraEvent) and e.kind == "failed"
                                          for e in g), 20)
                back = await asyncio.to_thread(RtspServer, clip, dropping.port)
                before = count("steady"), count("dropping")
                await until(lambda g: count("steady") >= before[0] + 30
                            and count("dropping") >= before[1] + 10, 30)
                return got, items.statistics()

    try:
        got, stats = asyncio.run(run())
    finally:
        for server in (steady, dying, dropping, back):
            if server is not None:
                server.kill()
    failed = [e for e in got if isinstance(e, xs.CameraEvent) and e.kind == "failed"]
    assert [e.camera for e in failed] == ["dying"]
    assert isinstance(failed[0].error, xs.BrokenStreamError)
    assert stats.cameras["dying"].state == "failed"
    assert stats.cameras["dropping"].reconnects >= 1
    for name in ("steady", "dropping"):
        indices = [r.frame_index for r in got if isinstance(r, xs.Result) and r.camera == name]
        assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert stats.cameras["steady"].state == "running"
    assert our_threads() == []
