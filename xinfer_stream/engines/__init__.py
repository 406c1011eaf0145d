"""Engine backends behind one protocol: ONNX Runtime (CPU default), TensorRT, torch; opening a
model and resolving its Preprocess (``_open``: :func:`open_backend`, :func:`resolve_preprocess`);
building TensorRT engines (:class:`EngineBuilder`) and their metadata.

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
from ._open import (BackendKind, backend_kind, check_model_file, check_onnx,
                    check_preprocess_fits, find_preprocess, is_torch_module, open_backend,
                    open_torch, resolve_preprocess)
from ._tensorrt import BuildProgress
from ._torch import TorchBackend, TorchExecutionContext
from ._trt_backend import TensorRTBackend, TensorRTContext

__all__ = [
    "Backend",
    "BackendKind",
    "BuildOptions",
    "BuildProgress",
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
    "backend_kind",
    "check_model_file",
    "check_onnx",
    "check_preprocess_fits",
    "cpu_features",
    "find_image_input",
    "find_preprocess",
    "inspect_engine",
    "is_torch_module",
    "load_engine",
    "metadata_path_for",
    "open_backend",
    "open_torch",
    "read_metadata",
    "resolve_preprocess",
]
