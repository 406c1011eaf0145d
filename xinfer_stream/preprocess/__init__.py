"""Preprocessing: the ``Preprocess`` spec, its numpy reference, and the fused GPU kernel.

The numpy reference (``preprocess_frame``/``preprocess_batch`` for RGB frames, ``preprocess_raw``
for raw YUV/RGB planes) is the CPU path and the oracle the CUDA kernel (``PreprocessKernel``) is
tested against.
"""

from ._color import YuvColor, preprocess_raw, yuv_to_rgb
from ._frames import PIXEL_FORMATS, FrameLayout, PixelFormat, pixel_format_for
from ._kernel import PreprocessKernel
from ._reference import preprocess_batch, preprocess_frame, resize_bilinear
from ._spec import Geometry, Preprocess, preprocess_path_for

__all__ = [
    "FrameLayout",
    "Geometry",
    "PIXEL_FORMATS",
    "PixelFormat",
    "Preprocess",
    "PreprocessKernel",
    "YuvColor",
    "pixel_format_for",
    "preprocess_batch",
    "preprocess_frame",
    "preprocess_path_for",
    "preprocess_raw",
    "resize_bilinear",
    "yuv_to_rgb",
]
