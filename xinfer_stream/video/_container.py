"""Where frames come from: resolving a ``source`` argument into things to open, and opening them.

This is the one place that calls ``av.open`` and translates its failures. A source resolves to a
list of :class:`Target` (files in order, a URL, a camera device) or, for an iterable of numpy
frames, to none. Opening errors are reported as

- :class:`InvalidVideoError` (a ``ValueError``) when the input itself is unusable: a missing
  file, an empty file, a directory or glob without videos, something that is not a video, a
  container without a video stream;
- :class:`VideoError` when the input may be fine but could not be reached: a refused
  connection, a server that did not answer within the open timeout.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import av
import av.container
import av.error
import av.stream
import av.video.stream

from .._errors import InvalidVideoError, VideoError

__all__ = ["DEFAULT_URL_TIMEOUT", "VIDEO_EXTENSIONS", "OpenOptions", "Target", "is_file_truncated",
           "is_frame_iterable", "open_container", "resolve_targets", "video_stream"]

_log = logging.getLogger("xinfer_stream.video")

VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".3gp", ".avi", ".flv", ".gif", ".h264", ".h265", ".hevc", ".m2ts", ".m4v", ".mjpeg", ".mkv",
    ".mov", ".mp4", ".mpeg", ".mpg", ".mts", ".ogv", ".ts", ".webm", ".wmv", ".y4m")
# Schemes whose sources are live by nature; http(s) is live only when it has no duration.
_LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "srt", "tcp", "udp")
_URL_SCHEMES = (*_LIVE_SCHEMES, "http", "https")
DEFAULT_URL_TIMEOUT: tuple[float, float] = (10.0, 5.0)


@dataclass(frozen=True)
class Target:
    """One thing to open: a file, a URL or a camera device.

    ``id`` is what frames and messages name (a URL's password is replaced by ``***``);
    ``location`` is what FFmpeg is given.
    """

    id: str
    location: str = field(repr=False)
    kind: Literal["file", "url", "device"]

    @property
    def scheme(self) -> str:
        return urllib.parse.urlsplit(self.location).scheme.lower() if self.kind == "url" else ""

    @property
    def live_by_nature(self) -> bool:
        return self.kind == "device" or self.scheme in _LIVE_SCHEMES


@dataclass(frozen=True)
class OpenOptions:
    """How to open every target of one source.

    ``timeout`` is ``(open_s, read_s)``: how long FFmpeg may wait to open, then for each read
    (URLs and devices; ``None`` for files). ``ffmpeg_options`` go to the demuxer (and codec)
    verbatim. ``hwaccel`` names an FFmpeg hardware device type (``"cuda"``...); when it cannot be
    used, decoding falls back to software and the reason is logged. ``hwaccel_device`` picks the
    device (``None``: the default one). ``device_frames``: decoded frames stay in the device's
    memory instead of being downloaded (``"cuda"`` only; see ``_frame.py``).
    """

    timeout: tuple[float, float] | None = None
    ffmpeg_options: Mapping[str, str] = field(default_factory=dict)
    hwaccel: str | None = None
    hwaccel_device: int | None = None
    device_frames: bool = False


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _looks_like_url(text: str) -> bool:
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    return scheme in _URL_SCHEMES or (len(scheme) > 1 and "://" in text and scheme != "file")


def _video_files_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def _resolve_one(item: str | os.PathLike[str]) -> list[Target]:
    text = os.fspath(item)
    if _looks_like_url(text):
        return [Target(id=_redact(text), location=text, kind="url")]
    if text.startswith("file://"):
        text = urllib.parse.unquote(urllib.parse.urlsplit(text).path)
    if text.startswith("/dev/video"):
        return [Target(id=text, location=text, kind="device")]
    path = Path(text).expanduser()
    if path.is_dir():
        files = _video_files_in(path)
        if not files:
            raise InvalidVideoError(
                f"cannot open videos from directory {text!r}: it holds no file ending in any of "
                f"{', '.join(VIDEO_EXTENSIONS)}; pass the video files themselves or a glob such "
                f"as {os.path.join(text, '*.mp4')!r}")
        return [Target(id=str(p), location=str(p), kind="file") for p in files]
    if not path.exists() and glob.has_magic(text):
        matches = sorted(Path(m) for m in glob.glob(str(path)) if Path(m).is_file())
        if not matches:
            raise InvalidVideoError(
                f"cannot open videos matching {text!r}: the pattern matches no file; check the "
                f"pattern and the working directory ({os.getcwd()!r})")
        return [Target(id=str(p), location=str(p), kind="file") for p in matches]
    return [Target(id=text, location=text, kind="file")]


def is_frame_iterable(source: Any) -> bool:
    """Whether ``source`` is frames already decoded (RGB arrays: a list, a generator, a 4-D
    array), rather than a path, URL, device, directory, glob or list of them to decode."""
    if isinstance(source, (str, os.PathLike)):
        return False
    return not (isinstance(source, (list, tuple)) and source
                and all(isinstance(s, (str, os.PathLike)) for s in source))


def resolve_targets(source: Any) -> list[Target] | None:
    """Targets for a path, URL, device, directory, glob or list of them; ``None`` for frames
    (:func:`is_frame_iterable`)."""
    if is_frame_iterable(source):
        return None
    if isinstance(source, (str, os.PathLike)):
        return _resolve_one(source)
    return [t for s in source for t in _resolve_one(s)]


def _check_file(target: Target) -> None:
    path = Path(target.location)
    if not path.exists():
        raise InvalidVideoError(
            f"cannot open video {target.id!r}: no such file; check the path (relative paths are "
            f"resolved from {os.getcwd()!r})")
    if path.is_dir():
        raise InvalidVideoError(f"cannot open video {target.id!r}: it is a directory; pass the "
                                f"directory itself to open_source to read every video in it")
    if path.stat().st_size == 0:
        raise InvalidVideoError(
            f"cannot open video {target.id!r}: the file is empty (0 bytes); it was probably "
            f"not written completely: copy or record it again")


def _av_open(target: Target, options: OpenOptions, hwaccel: Any) -> av.container.InputContainer:
    kwargs: dict[str, Any] = {"options": dict(options.ffmpeg_options)}
    if options.timeout is not None:
        kwargs["timeout"] = options.timeout
    if target.kind == "device":
        kwargs["format"] = "v4l2"
    if hwaccel is not None:
        kwargs["hwaccel"] = hwaccel
    container = av.open(target.location, mode="r", **kwargs)
    assert isinstance(container, av.container.InputContainer)
    return container


def _translate_open_error(target: Target, options: OpenOptions, exc: av.error.FFmpegError,
                          elapsed: float) -> VideoError:
    found = f"{type(exc).__name__}: {exc.strerror}"
    if target.kind == "file":
        if isinstance(exc, av.error.PermissionError):
            return InvalidVideoError(f"cannot open video {target.id!r}: permission denied "
                                     f"({found!r}); check the file's permissions")
        return InvalidVideoError(
            f"cannot open {target.id!r} as a video: FFmpeg found {found!r}; the file is not a "
            f"video in a container FFmpeg reads (mp4, mkv, avi, mov, webm, gif...), or it is "
            f"truncated or damaged: check it plays, or re-copy it")
    if target.kind == "device":
        if isinstance(exc, (av.error.FileNotFoundError, av.error.PermissionError)):
            return InvalidVideoError(
                f"cannot open camera {target.id!r}: {found!r}; check the device exists (ls "
                f"/dev/video*) and that this user may read it (group 'video')")
        return VideoError(f"cannot open camera {target.id!r}: FFmpeg found {found!r}; check "
                          f"the camera is connected and not in use by another program")
    open_s = (options.timeout or DEFAULT_URL_TIMEOUT)[0]
    # FFmpeg's interrupt callback ends a wait that ran out of time; some protocols (RTSP) then
    # report it as invalid data rather than as an exit.
    if isinstance(exc, av.error.ExitError) or elapsed >= 0.9 * open_s:
        return VideoError(
            f"cannot open {target.id!r}: no answer within the {open_s:g} s open timeout; check "
            f"the server or camera is up and reachable, or pass a longer timeout=(open_s, read_s)")
    if isinstance(exc, av.error.ConnectionRefusedError):
        return VideoError(f"cannot open {target.id!r}: connection refused ({found!r}); check the "
                          f"host and port, and that the server or camera is running")
    return VideoError(f"cannot open {target.id!r}: FFmpeg found {found!r}; check the URL, that "
                      f"the stream is being served, and that it carries video")


def open_container(target: Target, options: OpenOptions) -> av.container.InputContainer:
    """Open ``target`` for reading and check it has a video stream; the caller owns the result.

    Raises :class:`InvalidVideoError` or :class:`VideoError` (see the module docstring).
    """
    if target.kind == "file":
        _check_file(target)
    container: av.container.InputContainer | None = None
    if options.hwaccel is not None:
        container = _open_hardware(target, options)
    if container is None:
        started = time.monotonic()
        try:
            container = _av_open(target, options, None)
        except av.error.FFmpegError as exc:
            raise _translate_open_error(target, options, exc, time.monotonic() - started) from exc
    try:
        video_stream(container, target)
    except BaseException:
        container.close()
        raise
    return container


def _open_hardware(target: Target, options: OpenOptions) -> av.container.InputContainer | None:
    """Open with hardware decode, or return ``None`` (reason logged) to fall back to software."""
    from av.codec.hwaccel import HWAccel, hwdevices_available

    device = options.hwaccel
    available = hwdevices_available()
    if device not in available:
        _log.warning("hardware decode %r is not available in this PyAV/FFmpeg build (it offers "
                     "%s); decoding %r in software", device, ", ".join(available) or "none",
                     target.id)
        return None
    # Frames kept on the GPU are decoded in the device's primary context, the one the CUDA
    # runtime (and so our GPU path) uses, so that our copies can read them. (FFmpeg accepts it
    # only when it blocks on waits: see cuda.Device.share_with_ffmpeg.) Downloaded frames keep
    # FFmpeg's own context, which works whatever the process did with CUDA before.
    device_options: dict[str, object] | None = (
        {"primary_ctx": "1"} if device == "cuda" and options.device_frames else None)
    accel = HWAccel(device_type=device, allow_software_fallback=True,
                    device=None if options.hwaccel_device is None else str(options.hwaccel_device),
                    options=device_options, is_hw_owned=options.device_frames)
    try:
        container = _av_open(target, options, accel)
    except av.error.FFmpegError as exc:
        hint = ""
        if device == "cuda" and exc.errno == errno.ENOTSUP:
            hint = ("; FFmpeg refuses a CUDA primary context already active without blocking "
                    "sync: call xinfer_stream.cuda.Device(n).share_with_ffmpeg() first (as "
                    "engine.stream(decode='nvdec') does)")
        _log.warning("hardware decode %r failed to start for %r (%s: %s)%s; decoding in software",
                     device, target.id, type(exc).__name__, exc.strerror, hint)
        return None
    video = container.streams.video
    if video and video[0].codec_context is not None and not video[0].codec_context.is_hwaccel:
        # PyAV opened the stream's codec without the device: it has no decoder for it there.
        _log.warning("hardware decode %r has no decoder for %r's %s video; decoding in software",
                     device, target.id, video[0].codec_context.name)
    return container


def video_stream(container: av.container.InputContainer, target: Target) -> av.video.stream.VideoStream:
    """The first video stream of ``container``; :class:`InvalidVideoError` if there is none."""
    if container.streams.video:
        return container.streams.video[0]
    kinds = [s.type for s in container.streams]
    found = ", ".join(f"{kinds.count(k)} {k}" for k in sorted(set(kinds))) or "no streams at all"
    raise InvalidVideoError(
        f"cannot decode video from {target.id!r}: it has no video stream (found {found}); pass "
        f"a file or URL that carries video")


def is_file_truncated(target: Target, stream: av.video.stream.VideoStream) -> tuple[bool, int, int]:
    """Whether the container's own index points past the end of the file.

    Returns (truncated, bytes indexed, bytes present). A file cut mid-stream with its index at the
    front (mp4 "faststart", avi idx1 copied early) demuxes to a clean end-of-file after the last
    complete packet: FFmpeg only logs it. The index still lists the missing packets, so comparing
    it with the file size is how we tell "ended" from "was cut".
    """
    if target.kind != "file":
        return False, 0, 0
    size = os.path.getsize(target.location)
    indexed = 0
    for entry in stream.index_entries:
        indexed = max(indexed, entry.pos + entry.size)
    return indexed > size, indexed, size
