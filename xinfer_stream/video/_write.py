"""Writing video with PyAV, for tests, benchmarks and examples that need footage made to order.

Not part of the public API: the project reads video; these helpers exist so that the test suite
and ``tools/bench_video.py`` can synthesise inputs without importing PyAV themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from fractions import Fraction

import av
import av.audio.stream
import av.container
import av.video.stream
import numpy as np
import numpy.typing as npt

__all__ = ["loop_remux", "write_audio_only", "write_video"]


def write_video(path: str | os.PathLike[str], frames: Iterable[npt.NDArray[np.uint8]], *,
                fps: int = 30, codec: str = "libx264", pix_fmt: str = "yuv420p",
                gop: int | None = None, bframes: int | None = None,
                codec_options: Mapping[str, str] | None = None,
                container_options: Mapping[str, str] | None = None,
                format: str | None = None) -> int:
    """Encode RGB uint8 ``(H, W, 3)`` frames into ``path``; returns the number written.

    ``gop`` is the keyframe interval; ``container_options`` go to the muxer (for example
    ``{"movflags": "faststart"}`` puts an mp4's index first).
    """
    count = 0
    container = av.open(os.fspath(path), mode="w", format=format,
                        options=dict(container_options or {}))
    assert isinstance(container, av.container.OutputContainer)
    try:
        stream: av.video.stream.VideoStream | None = None
        for rgb in frames:
            if stream is None:
                added = container.add_stream(codec, rate=fps)
                assert isinstance(added, av.video.stream.VideoStream)
                stream = added
                stream.width, stream.height = rgb.shape[1], rgb.shape[0]
                stream.pix_fmt = pix_fmt
                if gop is not None:
                    stream.codec_context.gop_size = gop
                if bframes is not None:
                    stream.codec_context.max_b_frames = bframes
                options = dict(codec_options or {})
                if codec == "libx264":
                    options.setdefault("preset", "ultrafast")
                    if gop is not None:
                        # Exactly every gop frames: no scene-cut keyframes in between.
                        options.setdefault("x264-params", f"keyint={gop}:min-keyint={gop}:scenecut=0")
                stream.codec_context.options = options
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = count
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
            count += 1
        if stream is not None:
            container.mux(stream.encode(None))
    finally:
        container.close()
    return count


def write_audio_only(path: str | os.PathLike[str], seconds: float = 0.5, rate: int = 48000) -> None:
    """Write a file with one AAC audio stream and no video."""
    container = av.open(os.fspath(path), mode="w")
    try:
        stream = container.add_stream("aac", rate=rate)
        assert isinstance(stream, av.audio.stream.AudioStream)
        stream.layout = "mono"
        samples = int(seconds * rate)
        tone = (0.1 * np.sin(np.arange(samples) * 2 * np.pi * 440 / rate)).astype(np.float32)
        step = 1024
        for start in range(0, samples, step):
            chunk = tone[None, start:start + step]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp",
                                               layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    finally:
        container.close()


def loop_remux(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
               min_seconds: float) -> float:
    """Copy ``src``'s video packets into ``dst`` again and again, until ``min_seconds`` long.

    No re-encoding: each repetition's timestamps are shifted by the previous ones' duration.
    ``src`` must start with a keyframe (any encoder's output does). Returns the duration written.
    """
    with av.open(os.fspath(src)) as probe:
        vs = probe.streams.video[0]
        packets: list[tuple[int, int, bool, bytes, int | None]] = []
        for p in probe.demux(vs):
            if not p.size:
                continue  # the demuxer's end-of-stream flush packet
            if p.pts is None or p.dts is None:
                raise ValueError(f"{os.fspath(src)!r} has a packet without timestamps: loop a "
                                 "muxed file (mp4, mkv), not a raw stream")
            packets.append((p.pts, p.dts, p.is_keyframe, bytes(p), p.duration))
        tb = vs.time_base
        assert tb is not None
        codec_params = vs.codec_context
        rate = vs.average_rate
        span = max(p[0] for p in packets) - min(p[0] for p in packets) + (packets[-1][4] or 1)
        out = av.open(os.fspath(dst), mode="w")
        try:
            ostream = out.add_stream_from_template(vs)
            shift = 0
            while shift * tb < min_seconds:
                for pts, dts, key, data, duration in packets:
                    packet = av.Packet(data)
                    packet.stream = ostream
                    packet.time_base = tb
                    packet.pts = pts + shift
                    packet.dts = dts + shift
                    packet.duration = duration
                    packet.is_keyframe = key
                    out.mux(packet)
                shift += span
        finally:
            out.close()
    del codec_params, rate
    return float(shift * tb)
