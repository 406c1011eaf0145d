"""Engine backends behind one protocol: ONNX Runtime (CPU default), TensorRT, torch."""

from ._base import (Backend, GpuBackend, GpuExecutionContext, ImageInput, TensorSpec,
                    find_image_input)
from ._onnxruntime import OnnxRuntimeBackend

__all__ = ["Backend", "GpuBackend", "GpuExecutionContext", "ImageInput", "OnnxRuntimeBackend",
           "TensorSpec", "find_image_input"]
