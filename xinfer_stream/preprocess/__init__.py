"""Preprocessing: the ``Preprocess`` spec, its numpy reference, and (on GPUs) the fused kernel."""

from ._reference import preprocess_batch, preprocess_frame, resize_bilinear
from ._spec import Geometry, Preprocess, preprocess_path_for

__all__ = ["Geometry", "Preprocess", "preprocess_batch", "preprocess_frame", "preprocess_path_for",
           "resize_bilinear"]
