"""The numpy reference implementation of :class:`Preprocess`.

It is the CPU path's preprocessing and the oracle the GPU kernel is tested against, so it follows
the geometry of ``_spec.py`` to the letter and computes in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def resize_bilinear(image: npt.NDArray[np.uint8] | npt.NDArray[np.float32], geometry: Geometry,
                    size: tuple[int, int],
                    pad: Sequence[float] | npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Resample an HxWxC image (uint8 or float32) into ``size`` per ``geometry``; padding gets
    ``pad``."""
    out_h, out_w = size
    y0, y1, wy, in_y = _axis_taps(out_h, geometry.offset_y, geometry.resized_h, geometry.src_h)
    x0, x1, wx, in_x = _axis_taps(out_w, geometry.offset_x, geometry.resized_w, geometry.src_w)
    # Gather in uint8 (4 small gathers), then blend in float32.
    top = image[y0]
    bottom = image[y1]
    wx3 = wx[None, :, None]
    row_top = top[:, x0].astype(np.float32) * (1.0 - wx3) + top[:, x1].astype(np.float32) * wx3
    row_bot = bottom[:, x0].astype(np.float32) * (1.0 - wx3) + bottom[:, x1].astype(np.float32) * wx3
    wy3 = wy[:, None, None]
    out: npt.NDArray[np.float32] = row_top * (1.0 - wy3) + row_bot * wy3
    if not (in_y.all() and in_x.all()):
        outside = ~(in_y[:, None] & in_x[None, :])
        out[outside] = np.asarray(pad, dtype=np.float32)
    return out


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
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    pad = np.asarray(spec.pad, dtype=np.float32)
    src_pad = pad if spec.color == "rgb" else pad[::-1]
    x = resize_bilinear(rgb, geometry, spec.size, src_pad)
    if spec.color == "bgr":
        x = x[:, :, ::-1]
    x = (x - mean) / std
    if spec.layout == "nchw":
        x = x.transpose(2, 0, 1)
    if spec.dtype == "uint8":
        return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    return np.ascontiguousarray(x.astype(spec.dtype))


def preprocess_batch(spec: Preprocess, frames: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.generic]:
    """Several RGB frames -> one batched model input of ``spec.input_shape(len(frames))``."""
    if not frames:
        raise ValueError("preprocess_batch needs at least one frame")
    return np.stack([preprocess_frame(spec, f) for f in frames])
