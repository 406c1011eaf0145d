"""The service's video sink on the CPU (ONNX Runtime, the tiny model and clips of
tests/test_service_run.py): a file per camera per segment, each playable, every result drawn
into exactly one of them, segment boundaries at ``segment_seconds`` of the camera's own time;
images only for the cameras a video sink takes; on a stop the current segments are finished and
nothing partial stays; a sink that cannot write is counted, not fatal; no thread or descriptor
left after any of them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import av
import numpy as np
import pytest

import xinfer_stream as xs
from xinfer_stream.service import load_config

from .test_service_run import (FRAMES, baseline, camera, make_assets,  # noqa: F401
                               warm, write_config)

SEEN: list[xs.Result] = []
_seen_lock = threading.Lock()


def seen(result: xs.Result) -> None:
    """The callback sink these tests name: what each result carried."""
    with _seen_lock:
        SEEN.append(result)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_assets(tmp_path_factory.mktemp("service_video"))


def video_sink(path: Path, seconds: float, cameras: list[str] | None = None) -> str:
    listed = f"cameras = {cameras!r}\n".replace("'", '"') if cameras is not None else ""
    return f'[[sinks]]\nkind = "video"\npath = "{path}"\nsegment_seconds = {seconds}\n{listed}\n'


def decoded(path: Path) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, float(stream.average_rate or 0)


def label_drawn(frame: np.ndarray) -> bool:
    """The top class's label box (black, white text) in the top-left corner: mostly dark
    pixels, which the clips' random noise almost never has."""
    corner = frame[:8, :20].astype(int)
    return bool((corner.max(axis=2) < 60).mean() > 0.3)


def test_segments_per_camera_hold_every_result_split_at_segment_seconds(
        folder: Path, tmp_path: Path, baseline: None) -> None:  # noqa: F811
    out = tmp_path / "recordings"
    out.mkdir()
    # 0.19 s at 30 frames/s: frames 0-5 (pts up to 0.167), 6-11, ... a segment each.
    config = load_config(write_config(
        folder, camera("a"), camera("b"), camera("c"),
        extra=video_sink(out, 0.19, ["a", "b"])
        + f'[[sinks]]\nkind = "callback"\ntarget = "{__name__}:seen"\n'))
    SEEN.clear()

    async def main() -> xs.ServiceSummary:
        async with xs.Service(config) as service:
            return await service.run(until_idle=True)

    summary = asyncio.run(main())
    video, callback = summary.sinks
    assert (video.written, video.errors) == (FRAMES["a"] + FRAMES["b"], 0)
    assert callback.written == sum(FRAMES.values())
    # Pixels only for the cameras the video sink takes.
    assert {r.camera for r in SEEN if r.image is not None} == {"a", "b"}
    assert all(r.image is None for r in SEEN if r.camera == "c")

    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    for name, sizes in (("a", [6, 6]), ("b", [6, 6, 6, 2])):
        files = sorted((out / name).iterdir())
        assert [p.suffix for p in files] == [".mp4"] * len(sizes)
        assert [p.stem.rsplit("-", 1)[1] for p in files] == [f"{i:06d}" for i in range(len(sizes))]
        counts = []
        for path in files:
            frames, rate = decoded(path)
            assert rate == 30 and all(label_drawn(f) for f in frames)
            counts.append(len(frames))
        assert counts == sizes  # every result in exactly one segment, split on its time
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))


def test_a_stop_finishes_the_current_segments_and_leaves_nothing_partial(
        folder: Path, tmp_path: Path, baseline: None) -> None:  # noqa: F811
    out = tmp_path / "recordings"
    out.mkdir()
    config = load_config(write_config(
        folder, camera("a", realtime=True, loop=True), camera("b", realtime=True, loop=True),
        extra=video_sink(out, 0.5)
        + f'[[sinks]]\nkind = "callback"\ntarget = "{__name__}:seen"\n'))
    SEEN.clear()

    async def main() -> xs.ServiceSummary:
        async with xs.Service(config) as service:
            asyncio.get_running_loop().call_later(1.6, service.stop)
            return await service.run()

    summary = asyncio.run(main())
    assert summary.ended == "stopped"
    for name in ("a", "b"):
        delivered = sum(1 for r in SEEN if r.camera == name)
        files = sorted((out / name).iterdir())
        counts = [len(decoded(p)[0]) for p in files]
        assert sum(counts) == delivered >= 30  # the last, cut short by the stop, finished too
        # 0.5 s at 30/s, give or take the frame where a looping file starts again
        assert len(files) >= 3 and all(14 <= c <= 16 for c in counts[:-1]), counts
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))


def test_a_video_sink_that_cannot_write_is_counted_and_the_service_goes_on(
        folder: Path, tmp_path: Path, baseline: None) -> None:  # noqa: F811
    out = tmp_path / "recordings"
    out.mkdir()
    (out / "a").write_text("a file where camera a's folder would go")
    config = load_config(write_config(
        folder, camera("a"), camera("c"),
        extra=video_sink(out, 60)
        + f'[[sinks]]\nkind = "callback"\ntarget = "{__name__}:seen"\n'))
    SEEN.clear()

    async def main() -> xs.ServiceSummary:
        async with xs.Service(config) as service:
            return await service.run(until_idle=True)

    summary = asyncio.run(main())
    video, callback = summary.sinks
    assert summary.ended == "idle" and callback.written == FRAMES["a"] + FRAMES["c"]
    assert (video.written, video.errors) == (FRAMES["c"], FRAMES["a"])
    assert isinstance(video.last_error, OSError)
    assert [len(decoded(p)[0]) for p in (out / "c").iterdir()] == [FRAMES["c"]]
    assert (out / "a").read_text().startswith("a file")


def test_cancelling_run_finishes_the_segments_and_releases_everything(
        folder: Path, tmp_path: Path, baseline: None) -> None:  # noqa: F811
    out = tmp_path / "recordings"
    out.mkdir()
    config = load_config(write_config(folder, camera("a", realtime=True, loop=True),
                                      extra=video_sink(out, 60)))

    async def main() -> None:
        async with xs.Service(config) as service:
            run = asyncio.ensure_future(service.run())
            await asyncio.sleep(1.0)  # past the frames held to measure the rate
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run

    asyncio.run(main())
    files = list((out / "a").iterdir())
    assert len(files) == 1 and len(decoded(files[0])[0]) >= 16
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))
