"""Engine backends behind one protocol: ONNX Runtime (CPU default), TensorRT, torch.

TensorRT is imported only by ``_tensorrt.py``, and only when an engine is built or loaded.
"""

from ._base import (Backend, GpuBackend, GpuExecutionContext, ImageInput, TensorSpec,
                    find_image_input)
from ._build_options import BuildOptions
from ._builder import BuildResult, EngineBuilder
from ._cpu_features import CpuFeatures, cpu_features
from ._inspect import EngineReport, inspect_engine
from ._load import load_engine
from ._metadata import DeviceInfo, EngineMetadata, metadata_path_for, read_metadata
from ._onnxruntime import CpuExecution, EmulatedInt8Warning, OnnxRuntimeBackend
from ._torch import TorchBackend, TorchExecutionContext
from ._trt_backend import TensorRTBackend, TensorRTContext

__all__ = [
    "Backend",
    "BuildOptions",
    "BuildResult",
    "CpuExecution",
    "CpuFeatures",
    "DeviceInfo",
    "EmulatedInt8Warning",
    "EngineBuilder",
    "EngineMetadata",
    "EngineReport",
    "GpuBackend",
    "GpuExecutionContext",
    "ImageInput",
    "OnnxRuntimeBackend",
    "TensorRTBackend",
    "TensorRTContext",
    "TensorSpec",
    "TorchBackend",
    "TorchExecutionContext",
    "cpu_features",
    "find_image_input",
    "inspect_engine",
    "load_engine",
    "metadata_path_for",
    "read_metadata",
]
