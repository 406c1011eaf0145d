"""How a frame's pixels reach a slot's device planes: one path for host frames, one for frames
the GPU can read where they are (NVDEC's, and those of a registered ring).

Host frames (decoded into ordinary memory): the submitting thread copies the window of pixels the
preprocess reads (``Preprocess.source_window``) into the slot's pinned staging, packed as the
frame's :class:`~xinfer_stream.preprocess._frames.FrameLayout`; the upload (one 2-D copy per
plane, or one copy of the whole frame when the window is most of it) is enqueued on the compute
stream as the first step of the slot's work, inside its CUDA graph when one is captured. The
staging belongs to the slot: nothing else writes it while the slot's work is in flight.

Frames read in place: those NVDEC left in GPU memory (``VideoFrame.device``), and host frames in
page-locked memory (``VideoFrame.pinned``: a decoder process's shared-memory ring, registered
once with the GPU). Their window is copied straight into the slot's planes on the compute stream
(one copy per plane, before the graph): device to device, or by DMA from the ring, with no CPU
copy. NVDEC frames are read after the compute stream has waited (through an event) for the
work FFmpeg enqueued on the legacy default stream, where it writes them. The memory stays its
owner's: the caller keeps the frame until the batch completed (then releases NVDEC's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .._errors import InferenceError
from ..cuda import DeviceBuffer, PinnedBuffer, Stream
from ..preprocess import Preprocess
from ..preprocess._frames import FrameLayout, PlaneWindow

__all__ = ["InPlaceFrame", "RawFrame", "UploadPlan", "device_frame", "in_place"]

# Upload only the window when it is at most this share of the frame: below that, a few 2-D
# copies skip enough bytes (shorter_crop of a 16:9 frame skips ~45%) to beat one contiguous copy.
_WINDOWED_UPLOAD = 0.9
# Packed rows are widened to whole cache lines: the staging is write-combined, where a partly
# written line costs a read-modify-write, and an aligned memmove is the fastest numpy copy.
_CACHE_LINE = 64


class RawFrame(Protocol):
    """What the runner reads from a decoded frame (``xinfer_stream.video.VideoFrame`` fits)."""

    @property
    def format(self) -> str: ...

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def planes(self) -> tuple[npt.NDArray[np.uint8], ...]: ...

    @property
    def colorspace(self) -> str: ...

    @property
    def color_range(self) -> str: ...


class _Plane(Protocol):
    @property
    def pointer(self) -> int: ...

    @property
    def pitch(self) -> int: ...

    @property
    def rows(self) -> int: ...

    @property
    def row_bytes(self) -> int: ...


class InPlaceFrame(Protocol):
    """What the runner reads of a frame it copies from where it is: its planes' addresses (in
    GPU memory, or in registered host memory) and the CUDA device whose memory they are
    (``None``: host memory, readable by any device)."""

    @property
    def planes(self) -> tuple[_Plane, ...]: ...

    @property
    def ordinal(self) -> int | None: ...

    @property
    def released(self) -> bool: ...


def device_frame(frame: object) -> InPlaceFrame | None:
    """Where ``frame``'s planes are in GPU memory (its ``device``, set for frames NVDEC decoded
    and left on the GPU), or ``None`` for frames in host memory."""
    return getattr(frame, "device", None)


@dataclass(frozen=True)
class _HostPlane:
    pointer: int
    pitch: int
    rows: int
    row_bytes: int


@dataclass(frozen=True)
class _PinnedFrame:
    """A host frame in registered memory, as an :class:`InPlaceFrame`."""

    planes: tuple[_HostPlane, ...]
    ordinal: None = None
    released: bool = False


def in_place(frame: RawFrame) -> InPlaceFrame | None:
    """``frame`` as the runner copies it where it is (NVDEC's frames; host frames whose planes
    lie in registered, page-locked memory), or ``None`` for a frame packed into staging."""
    device = device_frame(frame)
    if device is not None or not getattr(frame, "pinned", False):
        return device
    planes = []
    for plane in frame.planes:
        rows = plane.reshape(plane.shape[0], -1)
        if rows.strides[1] != 1:
            return None  # not rows of contiguous bytes: packed into staging instead
        planes.append(_HostPlane(rows.ctypes.data, rows.strides[0], rows.shape[0], rows.shape[1]))
    return _PinnedFrame(tuple(planes))


@dataclass(frozen=True, eq=False)
class UploadPlan:
    """How frames of one ``layout`` reach a slot: the per-plane ``windows`` the preprocess reads,
    or ``None`` to move whole frames. Compared by identity: the runner keeps one plan while
    frames come alike, and a slot's captured graph is tied to the plan it was captured with."""

    layout: FrameLayout
    windows: tuple[PlaneWindow, ...] | None

    @classmethod
    def of(cls, layout: FrameLayout, preprocess: Preprocess) -> UploadPlan:
        windows = layout.windows(*preprocess.source_window(layout.height, layout.width))
        small = sum(w.nbytes for w in windows) <= _WINDOWED_UPLOAD * layout.nbytes
        return cls(layout, windows if small else None)

    @property
    def bytes_per_frame(self) -> int:
        """Bytes each frame moves to the GPU."""
        if self.windows is None:
            return self.layout.nbytes
        return sum(w.nbytes for w in self.windows)

    def pack(self, frames: Sequence[RawFrame], staging: npt.NDArray[np.uint8],
             indices: Sequence[int]) -> None:
        """Copy frame ``frames[j]``'s window into ``staging`` at ``indices[j] * layout.nbytes``,
        as the layout packs it (bytes outside the window keep what they held)."""
        layout = self.layout
        n = layout.nbytes
        spans = layout.window_slices(self.windows) if self.windows is not None else None
        for i, frame in zip(indices, frames, strict=True):
            targets = layout.unpack(staging[i * n:(i + 1) * n])
            if len(frame.planes) != len(targets):
                raise InferenceError(f"a {layout.format} frame has {len(targets)} planes, got "
                                     f"{len(frame.planes)}")
            for k, (plane, target) in enumerate(zip(frame.planes, targets)):
                source = plane.reshape(plane.shape[0], -1)
                if source.shape[0] < target.shape[0] or source.shape[1] < target.shape[1]:
                    raise InferenceError(f"a plane of {source.shape} cannot fill {target.shape} "
                                         f"of a {layout.format} {layout.height}x{layout.width} frame")
                if spans is None:
                    rows, cols = slice(0, target.shape[0]), slice(0, target.shape[1])
                else:
                    rows, cols = spans[k]
                    cols = slice(cols.start // _CACHE_LINE * _CACHE_LINE,
                                 min(target.shape[1], -(-cols.stop // _CACHE_LINE) * _CACHE_LINE))
                np.copyto(target[rows, cols], source[rows, cols])

    def upload(self, planes: DeviceBuffer, staging: PinnedBuffer, indices: Sequence[int], *,
               stream: Stream) -> None:
        """Enqueue the upload of packed frames ``indices`` from ``staging`` to ``planes`` (same
        offsets) on ``stream``."""
        n = self.layout.nbytes
        if self.windows is None:
            first = indices[0]
            if list(indices) == list(range(first, first + len(indices))):
                planes.copy_from_host(staging, stream=stream, nbytes=len(indices) * n,
                                      source_offset=first * n, offset=first * n)
                return
            for i in indices:
                planes.copy_from_host(staging, stream=stream, nbytes=n, source_offset=i * n,
                                      offset=i * n)
            return
        for i in indices:
            for w in self.windows:
                planes.copy_from_host_2d(staging, stream=stream, width=w.width, height=w.rows,
                                         source_pitch=w.pitch, pitch=w.pitch,
                                         source_offset=i * n + w.offset, offset=i * n + w.offset)

    def copy_in_place(self, planes: DeviceBuffer, frame: InPlaceFrame, index: int, *,
                      ordinal: int, stream: Stream) -> None:
        """Enqueue one copy per plane of a frame read where it is to the frame at ``index`` in
        ``planes``, on ``stream``: its window (or the whole plane) as a 2-D copy, or the window's
        rows in full as one contiguous copy where the plane's rows are unpadded."""
        layout = self.layout
        if frame.released:
            raise InferenceError("a frame kept on the GPU was released before it was read")
        if frame.ordinal is not None and frame.ordinal != ordinal:
            raise InferenceError(f"a frame decoded on CUDA device {frame.ordinal} cannot be read "
                                 f"by a runner on device {ordinal}: decode on the engine's device "
                                 f"(hwaccel_device={ordinal})")
        if len(frame.planes) != len(layout.planes):
            raise InferenceError(f"a {layout.format} frame has {len(layout.planes)} planes, got "
                                 f"{len(frame.planes)} to read in place")
        spans = layout.window_slices(self.windows) if self.windows is not None else None
        offset = index * layout.nbytes
        for k, (plane, where) in enumerate(zip(frame.planes, layout.planes)):
            if plane.rows < where.rows or plane.row_bytes < where.row_bytes:
                raise InferenceError(f"a plane of ({plane.rows}, {plane.row_bytes}) read in "
                                     f"place cannot fill ({where.rows}, {where.row_bytes}) of a "
                                     f"{layout.format} {layout.height}x{layout.width} frame")
            rows, cols = spans[k] if spans is not None else (slice(0, where.rows),
                                                             slice(0, where.row_bytes))
            if plane.pitch == where.row_bytes:
                # Unpadded rows (a ring's planes): the window's rows in full, one contiguous
                # copy. Enqueueing a 2-D copy from registered host memory took about 80 µs a
                # 1080p plane (H100, 2026-12-07); the bytes outside the window cost far less.
                planes.copy_from_address(
                    plane.pointer + rows.start * plane.pitch,
                    (rows.stop - rows.start) * plane.pitch, stream=stream,
                    offset=offset + where.offset + rows.start * where.row_bytes)
                continue
            planes.copy_from_address_2d(
                plane.pointer + rows.start * plane.pitch + cols.start, stream=stream,
                width=cols.stop - cols.start, height=rows.stop - rows.start,
                source_pitch=plane.pitch, pitch=where.row_bytes,
                offset=offset + where.offset + rows.start * where.row_bytes + cols.start)
