"""One decoded frame as the rest of the project sees it, and the conversion from PyAV's frame.

A :class:`VideoFrame` owns its pixel memory: every plane is a C-contiguous uint8 array that stays
valid after the decoder moves on or is closed, and can be handed to another thread or copied into
pinned memory as is. Packed RGB/BGR images are fresh (writable) arrays from swscale. Raw planes
(yuv420p, nv12) are zero-copy, *read-only* views of the decoder's reference-counted buffer when
its rows are unpadded, and compact copies when FFmpeg padded the rows (``line_size > width``).

Frames on the GPU: a source opened with ``hwaccel="cuda", device_frames=True`` decodes on NVDEC
and leaves each frame in GPU memory (nv12). Such a frame has no host planes (``planes == ()``):
its :attr:`VideoFrame.device` gives the planes' CUDA addresses and holds the decoder's reference
to them, which :meth:`VideoFrame.release` drops (after that the addresses may be reused); whoever
holds the frame releases it (the source does for frames it drops or discards). FFmpeg writes
these frames on the CUDA legacy default stream of the device's primary context: a reader on
another stream orders itself after that stream's work first.

Colour metadata describes the *source* YUV: ``colorspace`` is ``"bt709"`` or ``"bt601"`` and
``color_range`` is ``"limited"`` or ``"full"``, read from the frame and defaulted by resolution
when the stream does not say (HD and larger: bt709; smaller: bt601; range: limited, except the
JPEG ``yuvj*`` formats). Packed RGB/BGR output is converted by swscale *with these same values*,
so the CPU path (RGB from swscale) and the GPU path (raw planes + kernel) see the same colours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import av
import numpy as np
import numpy.typing as npt

from .._errors import InvalidVideoError

__all__ = ["FRAME_FORMATS", "INTERPOLATIONS", "DeviceFrame", "DevicePlane", "FrameFormat",
           "VideoFrame", "convert_frame", "default_colorspace", "frame_from_rgb"]

FrameFormat = Literal["rgb24", "bgr24", "yuv420p", "nv12"]
FRAME_FORMATS: tuple[str, ...] = ("bgr24", "nv12", "rgb24", "yuv420p")
_PACKED = ("rgb24", "bgr24")

# AVColorSpace values (libavutil/pixfmt.h) that name a matrix we convert with.
_AVCOL_SPC_BT709 = 1
_AVCOL_SPC_BT601 = (5, 6)  # BT470BG, SMPTE170M
_AVCOL_RANGE_MPEG = 1
_AVCOL_RANGE_JPEG = 2
# Formats FFmpeg decodes that already have the yuv420p plane layout.
_YUV420P_LAYOUT = ("yuv420p", "yuvj420p")


@dataclass(frozen=True)
class DevicePlane:
    """One plane of a frame in GPU memory: ``rows`` rows of ``row_bytes`` bytes (no padding
    counted), the first at CUDA device address ``pointer``, rows ``pitch`` bytes apart."""

    pointer: int
    pitch: int
    rows: int
    row_bytes: int


class DeviceFrame:
    """The GPU memory of a frame decoded by NVDEC, kept valid by a reference to the decoder's
    frame until :meth:`release` (see the module docstring). ``ordinal``: the CUDA device."""

    def __init__(self, owner: av.VideoFrame, planes: tuple[DevicePlane, ...], ordinal: int) -> None:
        self._owner: av.VideoFrame | None = owner
        self.planes = planes
        self.ordinal = ordinal

    @property
    def released(self) -> bool:
        return self._owner is None

    def release(self) -> None:
        """Drop the decoder's frame: FFmpeg may reuse its memory. Safe to call twice."""
        self._owner = None

    def __repr__(self) -> str:
        state = "released" if self._owner is None else "held"
        return f"<DeviceFrame cuda:{self.ordinal} {len(self.planes)} planes {state}>"


@dataclass(frozen=True)
class VideoFrame:
    """A decoded frame: planes of uint8 pixels plus where and when it came from.

    ``planes`` (C-contiguous uint8; raw planes may be read-only, see the module docstring):

    - ``rgb24`` / ``bgr24``: one ``(H, W, 3)`` array (also :attr:`image`);
    - ``yuv420p``: Y ``(H, W)``, U ``(ceil(H/2), ceil(W/2))``, V (same);
    - ``nv12``: Y ``(H, W)``, UV ``(ceil(H/2), 2*ceil(W/2))`` with U and V interleaved.

    ``index`` is the 0-based position in decode (output) order within ``source``; ``pts`` is the
    presentation time in seconds (``None`` when the source has no timestamps) and ``time_base``
    the stream's time base. ``decoded_at`` is ``time.perf_counter()`` taken right after decoding,
    the start of the frame's latency budget. ``pinned``: the planes lie in page-locked memory a
    GPU reads by DMA where it is (a decoder process's ring, registered through ``open_source(...,
    pin_memory=)``), so a GPU consumer copies them without staging.
    """

    source: str
    index: int
    pts: float | None
    format: str
    planes: tuple[npt.NDArray[np.uint8], ...]
    width: int
    height: int
    colorspace: str
    color_range: str
    decoded_at: float
    time_base: Fraction | None = field(default=None, compare=False)
    device: DeviceFrame | None = field(default=None, compare=False, repr=False)
    pinned: bool = field(default=False, compare=False, repr=False)

    def with_planes(self, planes: tuple[npt.NDArray[np.uint8], ...]) -> VideoFrame:
        """This frame with other host ``planes`` (``()``: without pixels), every other field
        kept. What ``dataclasses.replace(frame, planes=...)`` gives at a sixth of its cost (it
        runs ``__init__`` again): the runtime does it once a frame."""
        frame = object.__new__(type(self))
        frame.__dict__.update(self.__dict__, planes=planes)
        return frame

    def release(self) -> None:
        """Give the decoder's GPU frame (:attr:`device`) back; a no-op for frames in host memory
        (they own theirs). Safe to call twice."""
        if self.device is not None:
            self.device.release()

    @property
    def image(self) -> npt.NDArray[np.uint8]:
        """The packed ``(H, W, 3)`` plane of an rgb24/bgr24 frame."""
        if self.format not in _PACKED:
            raise ValueError(
                f"frame {self.index} of {self.source!r} is {self.format!r}, which has no packed "
                f"image; open the source with format='rgb24' or 'bgr24', or use .planes")
        return self.planes[0]

    def to_rgb(self) -> npt.NDArray[np.uint8]:
        """A new RGB uint8 ``(H, W, 3)`` array of this frame's pixels, owned by the caller (it
        references no decoder buffer and no shared-memory ring).

        rgb24 is copied, bgr24 copied with its channels reversed; yuv420p and nv12 are converted
        by swscale with the frame's ``colorspace`` and ``color_range`` (as the CPU path converts
        packed frames, so both see the same colours; nv12 is split into yuv420p planes first),
        which costs a few milliseconds a 1080p frame (tools/bench_images.py). Raises ``ValueError`` for a frame in GPU memory (:attr:`device`) or one whose
        planes were already let go."""
        if self.device is not None:
            raise ValueError(f"frame {self.index} of {self.source!r} is in GPU memory (NVDEC); "
                             "its pixels have no host copy: decode on the CPU for RGB images")
        if not self.planes:
            raise ValueError(f"frame {self.index} of {self.source!r} no longer holds its pixels")
        if self.format == "rgb24":
            copied: npt.NDArray[np.uint8] = self.planes[0].copy()
            return copied
        if self.format == "bgr24":
            bgr = self.planes[0]
            rgb = np.empty_like(bgr)
            for channel in range(3):  # a channel at a time: 5x faster than copying [..., ::-1]
                rgb[..., channel] = bgr[..., 2 - channel]
            return rgb
        planes = self.planes
        if self.format == "nv12":  # swscale's nv12 path is 3x slower than its yuv420p one
            uv = planes[1].reshape(planes[1].shape[0], -1, 2)
            planes = (planes[0], uv[..., 0], uv[..., 1])
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        for plane, pixels in zip(frame.planes, planes, strict=True):
            rows, row_bytes = pixels.shape[0], pixels.shape[1] if pixels.ndim > 1 else 1
            pitch = plane.line_size
            dst = np.frombuffer(memoryview(plane), dtype=np.uint8)[: rows * pitch]
            dst.reshape(rows, pitch)[:, :row_bytes] = pixels.reshape(rows, row_bytes)
        spc, rng = _swscale_colour(self.colorspace, self.color_range)
        converted: npt.NDArray[np.uint8] = np.ascontiguousarray(frame.to_ndarray(
            format="rgb24", src_colorspace=spc, src_color_range=rng, dst_colorspace=spc,
            dst_color_range="JPEG"))  # a view of padded rows, where FFmpeg padded them
        return converted

    @property
    def nbytes(self) -> int:
        """Bytes of pixel data across all planes (in GPU memory for :attr:`device` frames)."""
        if self.device is not None:
            return sum(p.rows * p.row_bytes for p in self.device.planes)
        return sum(p.nbytes for p in self.planes)


def default_colorspace(height: int) -> str:
    """The matrix to assume when a stream does not say: bt709 for HD and larger, else bt601."""
    return "bt709" if height >= 720 else "bt601"


def _colour_of(frame: av.VideoFrame) -> tuple[str, str]:
    """(colorspace, color_range) of a decoded frame, defaulted where the stream is silent."""
    spc = int(frame.colorspace)
    if spc == _AVCOL_SPC_BT709:
        colorspace = "bt709"
    elif spc in _AVCOL_SPC_BT601:
        colorspace = "bt601"
    else:
        colorspace = default_colorspace(frame.height)
    rng = int(frame.color_range)
    if rng == _AVCOL_RANGE_JPEG or (rng != _AVCOL_RANGE_MPEG and frame.format.name.startswith("yuvj")):
        color_range = "full"
    else:
        color_range = "limited"
    return colorspace, color_range


def _swscale_colour(colorspace: str, color_range: str) -> tuple[str, str]:
    return ("ITU709" if colorspace == "bt709" else "ITU601",
            "JPEG" if color_range == "full" else "MPEG")


def _plane_rows(plane: av.video.plane.VideoPlane, rows: int, row_bytes: int) -> npt.NDArray[np.uint8]:
    """A plane as a (rows, row_bytes) array without the pitch padding.

    When the rows are not padded (``line_size == row_bytes``) this is a zero-copy, read-only
    view of the decoder's buffer, which the array keeps alive (FFmpeg buffers are reference
    counted: the decoder never reuses memory someone still references). Read-only because the
    decoder may still be predicting later frames from it. Padded rows are copied out compactly.
    """
    buf = np.frombuffer(memoryview(plane), dtype=np.uint8)
    pitch = plane.line_size
    rows_view = buf[: rows * pitch].reshape(rows, pitch)
    if pitch == row_bytes:
        rows_view.flags.writeable = False
        return rows_view
    return np.ascontiguousarray(rows_view[:, :row_bytes])


def _raw_planes(frame: av.VideoFrame, fmt: str) -> tuple[npt.NDArray[np.uint8], ...]:
    """Planes of a frame already in ``fmt`` (yuv420p layout or nv12), without padding."""
    w, h = frame.width, frame.height
    cw, ch = (w + 1) // 2, (h + 1) // 2
    shapes = [(h, w), (ch, 2 * cw)] if fmt == "nv12" else [(h, w), (ch, cw), (ch, cw)]
    return tuple(_plane_rows(plane, r, c) for plane, (r, c) in zip(frame.planes, shapes, strict=True))


INTERPOLATIONS: tuple[str, ...] = ("AREA", "BICUBIC", "BILINEAR", "FAST_BILINEAR", "LANCZOS",
                                   "POINT")


def convert_frame(frame: av.VideoFrame, *, source: str, index: int, fmt: str,
                  width: int | None = None, height: int | None = None,
                  decoded_at: float | None = None, interpolation: str | None = None) -> VideoFrame:
    """Turn a decoded PyAV frame into a :class:`VideoFrame` in ``fmt``.

    Packed formats go through swscale (which also resizes when ``width``/``height`` are given,
    with ``interpolation``, default ``"BILINEAR"``);
    planar formats are copied straight out of the decoder when it produced that layout already,
    otherwise converted by swscale keeping the source's colorspace and range.
    """
    if decoded_at is None:
        decoded_at = time.perf_counter()
    if frame.format.name == "cuda":
        return _device_frame(frame, source=source, index=index, fmt=fmt, width=width,
                             height=height, decoded_at=decoded_at)
    colorspace, color_range = _colour_of(frame)
    spc, rng = _swscale_colour(colorspace, color_range)
    resize = (width is not None and width != frame.width) or (height is not None and height != frame.height)
    planes: tuple[npt.NDArray[np.uint8], ...]
    if fmt in _PACKED:
        image = frame.to_ndarray(format=fmt, width=width, height=height,
                                 src_colorspace=spc, src_color_range=rng,
                                 dst_colorspace=spc, dst_color_range="JPEG",
                                 interpolation=interpolation)
        planes = (np.ascontiguousarray(image),)
    else:
        src_name = frame.format.name
        native = (src_name in _YUV420P_LAYOUT and fmt == "yuv420p") or (src_name == "nv12" and fmt == "nv12")
        if not native or resize:
            if src_name.startswith(("yuv", "nv")):
                # YUV in, YUV out: keep the matrix and range, only relayout/subsample/resize.
                frame = frame.reformat(width=width, height=height, format=fmt,
                                       src_colorspace=spc, dst_colorspace=spc,
                                       src_color_range=rng, dst_color_range=rng,
                                       interpolation=interpolation)
            else:
                # RGB-like in (gif, png): encode to limited-range bt601, the common camera default.
                colorspace, color_range = "bt601", "limited"
                frame = frame.reformat(width=width, height=height, format=fmt,
                                       dst_colorspace="ITU601", dst_color_range="MPEG",
                                       interpolation=interpolation)
        planes = _raw_planes(frame, fmt)
    out_h, out_w = planes[0].shape[:2]
    pts = float(frame.time) if frame.time is not None else None
    time_base = Fraction(frame.time_base) if frame.time_base is not None else None
    return VideoFrame(source=source, index=index, pts=pts, format=fmt, planes=planes,
                      width=out_w, height=out_h, colorspace=colorspace, color_range=color_range,
                      decoded_at=decoded_at, time_base=time_base)


def _device_frame(frame: av.VideoFrame, *, source: str, index: int, fmt: str, width: int | None,
                  height: int | None, decoded_at: float) -> VideoFrame:
    """A frame NVDEC left in GPU memory, as a :class:`VideoFrame` whose :attr:`~VideoFrame.device`
    holds it (no copy, no host planes)."""
    sw_format = frame.sw_format.name if frame.sw_format is not None else "unknown"
    if sw_format != "nv12":
        raise InvalidVideoError(
            f"frame {index} of {source!r}: NVDEC decoded it as {sw_format!r} (10-bit or 4:2:2/"
            f"4:4:4 video); frames kept on the GPU must be 8-bit 4:2:0 (nv12): decode this "
            f"video on the CPU")
    if fmt != "nv12" or width is not None or height is not None:
        raise ValueError(f"a frame kept on the GPU is nv12 at its decoded size; asked for "
                         f"{fmt!r} at {width}x{height}")
    w, h = frame.width, frame.height
    shapes = ((h, w), ((h + 1) // 2, 2 * ((w + 1) // 2)))
    planes = tuple(DevicePlane(int(plane.buffer_ptr), int(plane.line_size), rows, row_bytes)
                   for plane, (rows, row_bytes) in zip(frame.planes, shapes, strict=True))
    colorspace, color_range = _colour_of(frame)
    pts = float(frame.time) if frame.time is not None else None
    time_base = Fraction(frame.time_base) if frame.time_base is not None else None
    return VideoFrame(source=source, index=index, pts=pts, format="nv12", planes=(), width=w,
                      height=h, colorspace=colorspace, color_range=color_range,
                      decoded_at=decoded_at, time_base=time_base,
                      device=DeviceFrame(frame, planes, int(frame.planes[0].__dlpack_device__()[1])))


def frame_from_rgb(rgb: npt.NDArray[np.uint8], *, source: str, index: int, fmt: str,
                   width: int | None = None, height: int | None = None,
                   pts: float | None = None, interpolation: str | None = None) -> VideoFrame:
    """Wrap a user-supplied RGB uint8 ``(H, W, 3)`` array as a :class:`VideoFrame` in ``fmt``."""
    decoded_at = time.perf_counter()
    resize = (width is not None and width != rgb.shape[1]) or (height is not None and height != rgb.shape[0])
    if fmt == "rgb24" and not resize:
        return VideoFrame(source=source, index=index, pts=pts, format=fmt,
                          planes=(np.ascontiguousarray(rgb),), width=rgb.shape[1],
                          height=rgb.shape[0], colorspace=default_colorspace(rgb.shape[0]),
                          color_range="full", decoded_at=decoded_at)
    if fmt == "bgr24" and not resize:
        return VideoFrame(source=source, index=index, pts=pts, format=fmt,
                          planes=(np.ascontiguousarray(rgb[:, :, ::-1]),), width=rgb.shape[1],
                          height=rgb.shape[0], colorspace=default_colorspace(rgb.shape[0]),
                          color_range="full", decoded_at=decoded_at)
    av_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    converted = convert_frame(av_frame, source=source, index=index, fmt=fmt, width=width,
                              height=height, decoded_at=decoded_at, interpolation=interpolation)
    return VideoFrame(source=source, index=index, pts=pts, format=converted.format,
                      planes=converted.planes, width=converted.width, height=converted.height,
                      colorspace=converted.colorspace, color_range=converted.color_range,
                      decoded_at=decoded_at)
