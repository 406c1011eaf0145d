"""Raw frame layouts: how a decoded frame's planes lie in one packed buffer for upload.

The GPU path moves raw pixels, not float RGB (DESIGN.md decision 5): a decoded frame's planes are
packed back to back, rows without padding, into a pinned staging buffer, uploaded with one copy,
and read by the fused preprocessing kernel. :class:`FrameLayout` is that packing, shared by the
host side (``pack``), the kernel launcher and the numpy oracle (``unpack``).

Formats (uint8 throughout; chroma planes of 4:2:0 formats are ``ceil(h/2) x ceil(w/2)``):

* ``yuv420p``: Y plane, then U, then V (three planes);
* ``nv12``: Y plane, then one plane of interleaved U,V pairs;
* ``rgb24`` / ``bgr24``: one packed plane of 3 bytes a pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["PIXEL_FORMATS", "FrameLayout", "PixelFormat", "PlaneLayout", "PlaneWindow",
           "pixel_format_for"]

PixelFormat = Literal["yuv420p", "nv12", "rgb24", "bgr24"]
PIXEL_FORMATS: tuple[PixelFormat, ...] = ("yuv420p", "nv12", "rgb24", "bgr24")

# Decoder (FFmpeg/PyAV) format names the kernel reads directly. yuvj420p is yuv420p whose frames
# say full range; the range itself comes from the frame's colour metadata (see YuvColor).
_DECODER_FORMATS: dict[str, PixelFormat] = {
    "yuv420p": "yuv420p", "yuvj420p": "yuv420p", "nv12": "nv12", "rgb24": "rgb24", "bgr24": "bgr24",
}


def pixel_format_for(decoder_format: str) -> PixelFormat | None:
    """The raw format the GPU kernel reads for a decoder's pixel format name, or ``None`` when the
    frame must first be converted (e.g. ``frame.reformat(format="yuv420p")``)."""
    return _DECODER_FORMATS.get(decoder_format)


@dataclass(frozen=True)
class PlaneLayout:
    """One plane inside the packed buffer: byte offset, rows, and bytes per row (the pitch)."""

    offset: int
    rows: int
    row_bytes: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes


@dataclass(frozen=True)
class PlaneWindow:
    """Part of one plane inside the packed buffer: ``rows`` rows of ``width`` bytes, the first
    starting at byte ``offset``, rows ``pitch`` bytes apart (a 2-D copy's arguments)."""

    offset: int
    rows: int
    width: int
    pitch: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.width


@dataclass(frozen=True)
class FrameLayout:
    """A raw frame of ``format``, ``height`` x ``width`` pixels, packed plane after plane."""

    format: PixelFormat
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.format not in PIXEL_FORMATS:
            raise ValueError(f"raw frame format must be one of {PIXEL_FORMATS}, got {self.format!r}; "
                             "convert other formats first (pixel_format_for says which need it)")
        if not (isinstance(self.height, int) and isinstance(self.width, int)
                and self.height > 0 and self.width > 0):
            raise ValueError(f"a raw frame needs a positive height and width, got "
                             f"{self.height!r}x{self.width!r}")

    @cached_property
    def planes(self) -> tuple[PlaneLayout, ...]:
        # Cached (a frozen value; asked several times a frame on the GPU path).
        h, w = self.height, self.width
        ch, cw = (h + 1) // 2, (w + 1) // 2
        if self.format == "yuv420p":
            return (PlaneLayout(0, h, w), PlaneLayout(h * w, ch, cw),
                    PlaneLayout(h * w + ch * cw, ch, cw))
        if self.format == "nv12":
            return (PlaneLayout(0, h, w), PlaneLayout(h * w, ch, 2 * cw))
        return (PlaneLayout(0, h, 3 * w),)

    @cached_property
    def nbytes(self) -> int:
        last = self.planes[-1]
        return last.offset + last.nbytes

    @property
    def is_yuv(self) -> bool:
        return self.format in ("yuv420p", "nv12")

    def windows(self, rows: tuple[int, int], columns: tuple[int, int]) -> tuple[PlaneWindow, ...]:
        """Per plane, the bytes holding pixel rows ``[y0, y1)`` and columns ``[x0, x1)`` (a
        :meth:`Preprocess.source_window`), chroma rounded out to the 2x2 blocks the kernel reads
        for those pixels (row ``y // 2``, column ``x // 2``)."""
        (y0, y1), (x0, x1) = rows, columns
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise ValueError(f"rows {rows} and columns {columns} are not a window of a "
                             f"{self.height}x{self.width} frame")
        planes = self.planes
        if not self.is_yuv:
            rgb = planes[0]
            return (PlaneWindow(rgb.offset + y0 * rgb.row_bytes + 3 * x0, y1 - y0, 3 * (x1 - x0),
                                rgb.row_bytes),)
        luma = planes[0]
        cy0, cy1, cx0, cx1 = y0 // 2, (y1 - 1) // 2 + 1, x0 // 2, (x1 - 1) // 2 + 1
        out = [PlaneWindow(luma.offset + y0 * luma.row_bytes + x0, y1 - y0, x1 - x0, luma.row_bytes)]
        per_sample = 2 if self.format == "nv12" else 1  # nv12 interleaves U and V
        for chroma in planes[1:]:
            out.append(PlaneWindow(chroma.offset + cy0 * chroma.row_bytes + per_sample * cx0,
                                   cy1 - cy0, per_sample * (cx1 - cx0), chroma.row_bytes))
        return tuple(out)

    def window_slices(self, windows: Sequence[PlaneWindow]) -> tuple[tuple[slice, slice], ...]:
        """Per plane, the rows and bytes of its 2-D ``(rows, row_bytes)`` array (as
        :meth:`unpack` gives) that ``windows`` (from :meth:`windows`) cover."""
        out = []
        for plane, w in zip(self.planes, windows, strict=True):
            r0, b0 = divmod(w.offset - plane.offset, w.pitch)
            out.append((slice(r0, r0 + w.rows), slice(b0, b0 + w.width)))
        return tuple(out)

    def pack(self, planes: Sequence[npt.NDArray[np.uint8]], into: npt.NDArray[np.uint8]) -> None:
        """Copy decoded planes into the packed buffer ``into`` (1-D uint8, at least ``nbytes``).

        Each source plane is 2-D ``(rows, line_size)`` uint8 with ``line_size >= row_bytes``
        (decoders pad rows); only the first ``row_bytes`` of each row are copied.
        """
        layout = self.planes
        if len(planes) != len(layout):
            raise ValueError(f"a {self.format} frame has {len(layout)} planes, got {len(planes)}")
        if into.ndim != 1 or into.dtype != np.uint8 or into.shape[0] < self.nbytes:
            raise ValueError(f"the destination must be 1-D uint8 of at least {self.nbytes} bytes, "
                             f"got {into.dtype} {into.shape}")
        for index, (plane, where) in enumerate(zip(planes, layout)):
            if (plane.ndim != 2 or plane.dtype != np.uint8 or plane.shape[0] < where.rows
                    or plane.shape[1] < where.row_bytes):
                raise ValueError(f"plane {index} of a {self.format} {self.height}x{self.width} frame "
                                 f"must be uint8 of at least ({where.rows}, {where.row_bytes}), got "
                                 f"{plane.dtype} {plane.shape}")
            target = into[where.offset:where.offset + where.nbytes].reshape(where.rows, where.row_bytes)
            np.copyto(target, plane[:where.rows, :where.row_bytes])

    def unpack(self, packed: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint8], ...]:
        """2-D views ``(rows, row_bytes)`` of each plane of a packed buffer (no copies)."""
        if packed.ndim != 1 or packed.dtype != np.uint8 or packed.shape[0] < self.nbytes:
            raise ValueError(f"a packed {self.format} frame is 1-D uint8 of at least {self.nbytes} "
                             f"bytes, got {packed.dtype} {packed.shape}")
        return tuple(packed[p.offset:p.offset + p.nbytes].reshape(p.rows, p.row_bytes)
                     for p in self.planes)
