"""YUV -> RGB colour conversion, and the numpy oracle of the GPU preprocessing kernel.

The conversion is defined here once, in float32, operation by operation, and the CUDA kernel
(``_kernel.cu``, compiled without FMA contraction) performs the same operations in the same order,
so the two agree to the last bit on the same input. For each source pixel:

* chroma comes from the 4:2:0 sample at ``(y // 2, x // 2)`` (nearest: no chroma interpolation);
* ``yv = (Y - y_offset) * y_scale``; ``u = U - 128``; ``v = V - 128``;
* ``r = yv + r_v * v``; ``g = (yv - g_u * u) - g_v * v``; ``b = yv + b_u * u``;
* each clamped to ``[0, 255]`` and kept as float (no rounding back to uint8).

The coefficients come from the matrix (BT.601: Kr=0.299, Kb=0.114; BT.709: Kr=0.2126, Kb=0.0722)
and the range (limited: Y in 16..235, chroma in 16..240; full: 0..255), see
:meth:`YuvColor.coefficients`.

Resampling is defined on RGB: bilinear interpolation blends the RGB values of the four source
pixels around a sample point (each converted as above), exactly as ``preprocess_frame`` blends
the pixels of an RGB frame. :func:`preprocess_raw` is therefore ``preprocess_frame`` applied to
the converted float frame, and is the oracle the kernel is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from ._frames import FrameLayout
from ._reference import preprocess_frame, preprocess_image
from ._spec import Preprocess

__all__ = ["ColorMatrix", "ColorRange", "YuvCoefficients", "YuvColor", "preprocess_raw",
           "yuv_to_rgb"]

ColorMatrix = Literal["bt601", "bt709"]
ColorRange = Literal["limited", "full"]

# FFmpeg's AVColorSpace / AVColorRange codes (what PyAV's frame.colorspace / color_range return).
_BT709_CODES = {1, "bt709", "itu709"}
_BT601_CODES = {5, 6, "bt601", "itu601", "bt470bg", "smpte170m"}
_FULL_CODES = {2, "full", "jpeg", "pc"}
_LIMITED_CODES = {1, "limited", "mpeg", "tv"}
_KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


class YuvCoefficients(NamedTuple):
    """float32 constants of the conversion (see the module docstring for the formula)."""

    y_offset: np.float32
    y_scale: np.float32
    r_v: np.float32
    g_u: np.float32
    g_v: np.float32
    b_u: np.float32


@dataclass(frozen=True)
class YuvColor:
    """Which YCbCr -> RGB conversion a frame needs: ``matrix`` and ``range``."""

    matrix: ColorMatrix = "bt601"
    range: ColorRange = "limited"

    def __post_init__(self) -> None:
        if self.matrix not in _KR_KB:
            raise ValueError(f"colour matrix must be 'bt601' or 'bt709', got {self.matrix!r}")
        if self.range not in ("limited", "full"):
            raise ValueError(f"colour range must be 'limited' or 'full', got {self.range!r}")

    @classmethod
    def from_metadata(cls, colorspace: int | str | None, color_range: int | str | None, *,
                      height: int, decoder_format: str | None = None) -> YuvColor:
        """The conversion a decoded frame declares (FFmpeg codes as PyAV reports them, or names).

        Unspecified or unsupported matrices (BT.2020, say) fall back to the usual convention:
        BT.709 for frames 720 rows or taller, BT.601 below. An unspecified range is limited,
        except for the ``yuvj*`` decoder formats, which are full range by definition.
        """
        space = colorspace.lower() if isinstance(colorspace, str) else colorspace
        rng = color_range.lower() if isinstance(color_range, str) else color_range
        if space in _BT709_CODES:
            matrix: ColorMatrix = "bt709"
        elif space in _BT601_CODES:
            matrix = "bt601"
        else:
            matrix = "bt709" if height >= 720 else "bt601"
        if rng in _FULL_CODES:
            full = True
        elif rng in _LIMITED_CODES:
            full = False
        else:
            full = bool(decoder_format and decoder_format.startswith("yuvj"))
        return cls(matrix, "full" if full else "limited")

    def coefficients(self) -> YuvCoefficients:
        kr, kb = _KR_KB[self.matrix]
        kg = 1.0 - kr - kb
        if self.range == "limited":
            y_offset, y_scale, c_scale = 16.0, 255.0 / 219.0, 255.0 / 224.0
        else:
            y_offset, y_scale, c_scale = 0.0, 1.0, 1.0
        f = np.float32
        return YuvCoefficients(
            y_offset=f(y_offset), y_scale=f(y_scale),
            r_v=f(2.0 * (1.0 - kr) * c_scale),
            g_u=f(2.0 * kb * (1.0 - kb) / kg * c_scale),
            g_v=f(2.0 * kr * (1.0 - kr) / kg * c_scale),
            b_u=f(2.0 * (1.0 - kb) * c_scale))


def yuv_to_rgb(layout: FrameLayout, packed: npt.NDArray[np.uint8],
               color: YuvColor) -> npt.NDArray[np.float32]:
    """A packed yuv420p/nv12 frame -> float32 RGB ``(h, w, 3)`` in ``[0, 255]``, per the module
    docstring's formula (the kernel's per-pixel conversion)."""
    if not layout.is_yuv:
        raise ValueError(f"yuv_to_rgb converts yuv420p or nv12 frames, not {layout.format!r}")
    planes = layout.unpack(packed)
    h, w = layout.height, layout.width
    if layout.format == "yuv420p":
        u_plane, v_plane = planes[1], planes[2]
    else:
        u_plane, v_plane = planes[1][:, 0::2], planes[1][:, 1::2]
    rows = np.arange(h) // 2
    cols = np.arange(w) // 2
    k = color.coefficients()
    y = planes[0].astype(np.float32)
    u = u_plane[rows][:, cols].astype(np.float32) - np.float32(128.0)
    v = v_plane[rows][:, cols].astype(np.float32) - np.float32(128.0)
    yv = (y - k.y_offset) * k.y_scale
    r = yv + k.r_v * v
    g = (yv - k.g_u * u) - k.g_v * v
    b = yv + k.b_u * u
    rgb: npt.NDArray[np.float32] = np.clip(np.stack([r, g, b], axis=-1), np.float32(0.0),
                                           np.float32(255.0))
    return rgb


def preprocess_raw(spec: Preprocess, layout: FrameLayout, packed: npt.NDArray[np.uint8],
                   color: YuvColor | None = None) -> npt.NDArray[np.generic]:
    """The model input the GPU kernel must produce for one packed raw frame (its oracle).

    RGB/BGR frames go through ``preprocess_frame`` unchanged; YUV frames are converted per pixel
    (``yuv_to_rgb``, ``color`` required) and then resampled and normalised the same way.
    """
    if layout.format == "rgb24":
        return preprocess_frame(spec, layout.unpack(packed)[0].reshape(layout.height, layout.width, 3))
    if layout.format == "bgr24":
        bgr = layout.unpack(packed)[0].reshape(layout.height, layout.width, 3)
        return preprocess_frame(spec, bgr[:, :, ::-1])
    if color is None:
        raise ValueError(f"a {layout.format} frame needs its YuvColor (matrix and range)")
    return preprocess_image(spec, yuv_to_rgb(layout, packed, color))
