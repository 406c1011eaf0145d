"""The numpy reference implementation of :class:`Preprocess`.

It is the CPU path's preprocessing and the oracle the GPU kernel is tested against, so it follows
the geometry of ``_spec.py`` to the letter and computes in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._spec import Geometry, Preprocess

__all__ = ["preprocess_batch", "preprocess_frame", "preprocess_image", "resize_bilinear"]


def _axis_taps(out_len: int, offset: int, resized: int, src: int
               ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float32],
                          npt.NDArray[np.bool_]]:
    """Bilinear taps along one axis: (lower index, upper index, upper weight, inside mask)."""
    r = np.arange(out_len, dtype=np.float64) - offset
    inside = (r >= 0) & (r < resized)
    s = (r + 0.5) * (src / resized) - 0.5
    s = np.clip(s, 0.0, src - 1)
    lo = np.floor(s).astype(np.intp)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, (s - lo).astype(np.float32), inside


@dataclass(frozen=True)
class _Taps:
    """The bilinear taps of one geometry, laid out like the output ``(C, H, W)``: the flat index
    of the top-left neighbour each output value reads, what to add for the right column (``dx``)
    and the bottom row (``dy``), the weights of the right column and the bottom row (and one
    minus them), and the padding mask (letterbox), or ``None``. Read-only: shared by threads."""

    top_left: npt.NDArray[np.intp]
    dx: npt.NDArray[np.intp]
    dy: npt.NDArray[np.intp]
    wx: npt.NDArray[np.float32]
    wx1: npt.NDArray[np.float32]
    wy: npt.NDArray[np.float32]
    wy1: npt.NDArray[np.float32]
    outside: npt.NDArray[np.bool_] | None


@functools.lru_cache(maxsize=4)  # a few sources' sizes at once; 8 bytes an output value each
def _taps(geometry: Geometry, size: tuple[int, int], row: int, channels: tuple[int, ...]
          ) -> _Taps:
    """Taps for a C-contiguous source of ``row`` pixels a row and ``len(channels)`` channels,
    output channel ``k`` reading source channel ``channels[k]``."""
    out_h, out_w = size
    y0, y1, wy, in_y = _axis_taps(out_h, geometry.offset_y, geometry.resized_h, geometry.src_h)
    x0, x1, wx, in_x = _axis_taps(out_w, geometry.offset_x, geometry.resized_w, geometry.src_w)
    step = len(channels)
    inside = in_y[:, None] & in_x[None, :]
    taps = _Taps(
        top_left=((y0[None, :, None] * row + x0[None, None, :]) * step
                  + np.asarray(channels, dtype=np.intp)[:, None, None]),
        dx=((x1 - x0) * step)[None, None, :], dy=((y1 - y0) * row * step)[None, :, None],
        wx=wx[None, None, :], wx1=(1.0 - wx)[None, None, :],
        wy=wy[None, :, None], wy1=(1.0 - wy)[None, :, None],
        outside=None if inside.all() else ~inside)
    for array in (taps.top_left, taps.dx, taps.dy, taps.wx, taps.wx1, taps.wy, taps.wy1,
                  taps.outside):
        if array is not None:
            array.flags.writeable = False
    return taps


def _resample(image: npt.NDArray[np.uint8] | npt.NDArray[np.float32], geometry: Geometry,
              size: tuple[int, int], channels: tuple[int, ...],
              pad: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """An HxWxC image (uint8 or float32) resampled per ``geometry`` into a float32 ``(C, H, W)``
    array of ``size``, output channel ``k`` from source channel ``channels[k]``; padding gets
    ``pad`` (output channel order). The four neighbours are gathered by flat index and blended
    in float32 along x, then y, and the blend is rounded to the nearest integer (halves up):
    planar, so every operation runs over whole rows."""
    flat = np.ascontiguousarray(image).reshape(-1)
    taps = _taps(geometry, size, image.shape[1], channels)
    bottom_left = taps.top_left + taps.dy

    def gather(index: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
        return np.take(flat, index).astype(np.float32, copy=False)

    top = gather(taps.top_left) * taps.wx1 + gather(taps.top_left + taps.dx) * taps.wx
    bottom = gather(bottom_left) * taps.wx1 + gather(bottom_left + taps.dx) * taps.wx
    out = (top * taps.wy1 + bottom * taps.wy).astype(np.float32, copy=False)  # float32 already
    # An 8-bit resize's output, as cv2 and PIL give it: the nearest integer, halves up.
    out += np.float32(0.5)
    np.floor(out, out=out)
    if taps.outside is not None:
        out[:, taps.outside] = pad[:, None]
    return out


def resize_bilinear(image: npt.NDArray[np.uint8] | npt.NDArray[np.float32], geometry: Geometry,
                    size: tuple[int, int],
                    pad: Sequence[float] | npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Resample an HxWxC image (uint8 or float32) into ``size`` per ``geometry``; padding gets
    ``pad``."""
    channels = tuple(range(image.shape[2]))
    planar = _resample(image, geometry, size, channels, np.asarray(pad, dtype=np.float32))
    return np.ascontiguousarray(planar.transpose(1, 2, 0))


def preprocess_frame(spec: Preprocess, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.generic]:
    """One RGB uint8 frame (H x W x 3) -> one model input (C x H x W or H x W x C, spec dtype)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 frame of shape (H, W, 3), got {rgb.dtype} {rgb.shape}")
    return preprocess_image(spec, rgb)


def preprocess_image(spec: Preprocess, rgb: npt.NDArray[np.uint8] | npt.NDArray[np.float32]
                     ) -> npt.NDArray[np.generic]:
    """``preprocess_frame`` for an RGB image of uint8 or float32 values on the 0..255 scale (the
    YUV oracle converts to float RGB first): resampling blends in float32 either way."""
    geometry = spec.geometry(rgb.shape[0], rgb.shape[1])
    # mean/std/pad are given in output channel order. The letterbox border is the pad pixel
    # value (by default the mean, so it normalises to 0), normalised below like every pixel.
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    channels = (0, 1, 2) if spec.color == "rgb" else (2, 1, 0)
    x = _resample(rgb, geometry, spec.size, channels, np.asarray(spec.pad, dtype=np.float32))
    x = (x - mean) / std
    if spec.layout == "nhwc":
        x = x.transpose(1, 2, 0)
    if spec.dtype == "uint8":
        return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    return np.ascontiguousarray(x.astype(spec.dtype))


def preprocess_batch(spec: Preprocess, frames: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.generic]:
    """Several RGB frames -> one batched model input of ``spec.input_shape(len(frames))``."""
    if not frames:
        raise ValueError("preprocess_batch needs at least one frame")
    return np.stack([preprocess_frame(spec, f) for f in frames])
