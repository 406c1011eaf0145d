"""Frames' pixels in results, opt-in (``images=True``): ``VideoFrame.to_rgb`` for every host
format, ``Result.image`` from ``engine.stream`` and ``engine.stream_many`` (stream-wide and per
:class:`Camera`), the image a copy the result owns (also of frames from a worker process's
shared-memory ring), and nothing when off.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

import xinfer_stream as xs
from xinfer_stream.video import DeviceFrame, open_source
from xinfer_stream.video._write import write_video

from .test_cli import tiny_classifier
from .test_runtime import PRE
from .test_video_process import segments


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model and a 12-frame clip of odd size (chroma planes round up)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (46, 62, 3), np.uint8) for _ in range(12)]
    for i, f in enumerate(frames):
        f[: 10 + i] = (200, 40, 30)  # a flat block: colours to compare, not only noise
    path = folder / "clip.mp4"
    write_video(path, frames, gop=4)
    return tiny_classifier(folder / "tiny.onnx"), path


def rgb_frames(path: Path) -> list[np.ndarray[Any, Any]]:
    with open_source(path, format="rgb24") as source:
        return [f.image.copy() for f in source]


@pytest.mark.parametrize("fmt", ["rgb24", "bgr24", "yuv420p", "nv12"])
def test_to_rgb_matches_the_cpu_paths_rgb_in_every_format(clip: tuple[Path, Path],
                                                          fmt: str) -> None:
    _, path = clip
    expected = rgb_frames(path)
    with open_source(path, format=fmt) as source:
        got = [f.to_rgb() for f in source]
    assert len(got) == len(expected) == 12
    for image, want in zip(got, expected, strict=True):
        assert image.shape == want.shape == (46, 62, 3) and image.dtype == np.uint8
        assert image.flags.writeable and image.flags.c_contiguous
        diff = np.abs(image.astype(np.int16) - want.astype(np.int16))
        assert diff.max() == 0


def test_to_rgb_keeps_the_frames_colour_metadata(tmp_path: Path) -> None:
    """A full-range frame must not be read as limited range (that would crush blacks/whites)."""
    plane = np.full((16, 16), 255, np.uint8)
    chroma = np.full((8, 8), 128, np.uint8)
    frame = av.VideoFrame(16, 16, "yuvj420p")
    for p, a in zip(frame.planes, (plane, chroma, chroma), strict=True):
        np.frombuffer(memoryview(p), np.uint8).reshape(a.shape[0], p.line_size)[:, :a.shape[1]] = a
    from xinfer_stream.video._frame import convert_frame
    full = convert_frame(frame, source="x", index=0, fmt="yuv420p")
    assert full.color_range == "full"
    assert full.to_rgb().min() == 255
    limited = convert_frame(frame, source="x", index=0, fmt="yuv420p")
    object.__setattr__(limited, "color_range", "limited")
    assert limited.to_rgb().min() == 255  # 255 is above limited white: clipped, still white
    plane[:] = 16
    np.frombuffer(memoryview(frame.planes[0]), np.uint8).reshape(16, -1)[:, :16] = plane
    dark = convert_frame(frame, source="x", index=0, fmt="yuv420p")
    assert dark.to_rgb().max() > 0  # full range: 16 is dark grey, not black
    object.__setattr__(dark, "color_range", "limited")
    assert dark.to_rgb().max() == 0  # limited range: 16 is black


def test_to_rgb_refuses_frames_without_host_pixels(clip: tuple[Path, Path]) -> None:
    _, path = clip
    with open_source(path, format="nv12") as source:
        frame = source.get()
    assert frame is not None
    import dataclasses
    with pytest.raises(ValueError, match="no longer holds its pixels"):
        frame.with_planes(()).to_rgb()
    on_gpu = dataclasses.replace(frame, planes=(), device=DeviceFrame(av.VideoFrame(2, 2), (), 0))
    with pytest.raises(ValueError, match="GPU memory"):
        on_gpu.to_rgb()


def test_with_planes_keeps_every_other_field_and_leaves_the_frame_alone(
        clip: tuple[Path, Path]) -> None:
    import dataclasses
    _, path = clip
    with open_source(path, format="yuv420p") as source:
        frame = source.get()
    assert frame is not None and frame.time_base is not None
    copies = tuple(p.copy() for p in frame.planes)
    for planes in ((), copies):
        other = frame.with_planes(planes)
        assert type(other) is type(frame) and other.planes is planes
        for f in dataclasses.fields(frame):
            if f.name != "planes":
                assert getattr(other, f.name) == getattr(frame, f.name), f.name
    assert len(frame.planes) == 3 and all(p is not c for p, c in zip(frame.planes, copies))
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.with_planes(()).index = 5  # type: ignore[misc]


def test_results_carry_no_image_by_default_and_an_owned_copy_with_images(
        clip: tuple[Path, Path]) -> None:
    model, path = clip
    expected = rgb_frames(path)

    async def main(**kw: Any) -> list[xs.Result]:
        async with xs.load(model, preprocess=PRE) as engine:
            async with engine.stream(path, **kw) as results:
                return [r async for r in results]

    plain = asyncio.run(main())
    assert len(plain) == 12 and all(r.image is None for r in plain)
    shown = asyncio.run(main(images=True, batch=3))
    assert [r.frame_index for r in shown] == list(range(12))
    for r, want in zip(shown, expected, strict=True):
        assert r.image is not None and r.image.flags.writeable
        np.testing.assert_array_equal(r.image, want)
    first = shown[0].image
    assert first is not None
    assert not np.shares_memory(first, shown[1].image)
    assert "image=" not in repr(shown[0])  # a frame's pixels do not flood a log line


def test_stream_many_images_per_camera_and_from_a_worker_processs_ring(
        clip: tuple[Path, Path]) -> None:
    """A camera with ``images=True`` gets pixels, the other none; frames decoded in a worker
    process give images that are copies (their ring slots go back: the stream ends cleanly
    with every result kept)."""
    model, path = clip
    expected = rgb_frames(path)

    async def main() -> list[Any]:
        async with xs.load(model, preprocess=PRE) as engine:
            cameras = {"shown": xs.Camera(path, options={"process": True, "queue_size": 2},
                                          images=True),
                       "plain": path}
            async with engine.stream_many(cameras, max_batch=4) as items:
                return [item async for item in items]

    items = asyncio.run(main())
    assert segments() == []  # the ring is gone while every image is still held
    results = [r for r in items if isinstance(r, xs.Result)]
    shown = [r for r in results if r.camera == "shown"]
    plain = [r for r in results if r.camera == "plain"]
    assert len(shown) == len(plain) == 12
    assert all(r.image is None for r in plain)
    for r, want in zip(shown, expected, strict=True):
        assert r.image is not None and r.image.base is None  # its own memory, not a ring slot
        np.testing.assert_array_equal(r.image, want)


def test_stream_many_images_for_every_camera(clip: tuple[Path, Path]) -> None:
    model, path = clip

    async def main() -> list[Any]:
        async with xs.load(model, preprocess=PRE) as engine:
            cameras = {"a": path, "b": xs.Camera(path, images=False)}
            async with engine.stream_many(cameras, images=True) as items:
                return [item async for item in items]

    results = [r for r in asyncio.run(main()) if isinstance(r, xs.Result)]
    assert {r.camera for r in results if r.image is not None} == {"a"}
    assert sum(r.image is not None for r in results) == 12
