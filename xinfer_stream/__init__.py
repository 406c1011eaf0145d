"""xinfer-stream: INT8 inference over live video.

Offline: sample frames from your own video, calibrate an ONNX model to a Q/DQ INT8 model (and a
TensorRT engine). Online: keep models loaded and stream per-frame results with asyncio::

    import xinfer_stream as xs
    async with xs.load("model.int8.onnx") as engine:
        async with engine.stream("clip.mp4") as results:
            async for r in results:
                print(r.frame_index, r.pts, r.latency)
"""

import typing as _typing

from ._errors import (BrokenStreamError, CalibrationError, ClosedResourceError, ConfigError,
                      CudaError, EngineBuildError, EngineLoadError, FleetError, InferenceError,
                      InvalidCalibrationInput, InvalidModelError, InvalidVideoError,
                      PreprocessNotFoundError, VideoError, XInferError)

if _typing.TYPE_CHECKING:
    from .engines import EmulatedInt8Warning, EngineBuilder, inspect_engine, load_engine
    from .preprocess import Preprocess
    from .quantize import AccuracyReport, Calibrator, QuantizationResult, evaluate
    from .runtime import (Camera, CameraEvent, CameraStatistics, Classification, Detections,
                          FrameContext, FramePostprocess, GpuStatistics, LatencySummary,
                          ModelInfo, MultiStatistics, MultiStream, Result, ResultStream,
                          StreamingEngine, StreamStatistics, classify, detect, load, read_labels)
    from .service import Service, ServiceConfig, ServiceSummary, load_config
    from .video import (FrameSource, SampledFrame, SamplingWarning, VideoFrame,
                        load_calibration_set, open_source, sample_frames, save_calibration_set)

# Everything but the errors is imported on first use (PEP 562): ONNX, ONNX Runtime, PyAV and
# cuda-python take seconds to import, and ``xinfer-stream --help`` or a script that needs only
# the runtime should not pay for all of them. ``quantize()`` itself stays in
# ``xinfer_stream.quantize``: a top-level function of that name would shadow the subpackage
# (``import xinfer_stream.quantize as xq`` would give the function).
_LAZY = {
    **dict.fromkeys(("EmulatedInt8Warning", "EngineBuilder", "inspect_engine", "load_engine"),
                    "engines"),
    "Preprocess": "preprocess",
    **dict.fromkeys(("AccuracyReport", "Calibrator", "QuantizationResult", "evaluate"), "quantize"),
    **dict.fromkeys(("Camera", "CameraEvent", "CameraStatistics", "Classification",
                     "Detections", "FrameContext", "FramePostprocess", "GpuStatistics",
                     "LatencySummary", "ModelInfo", "MultiStatistics", "MultiStream", "Result",
                     "ResultStream", "StreamingEngine", "StreamStatistics", "classify", "detect",
                     "load", "read_labels"), "runtime"),
    **dict.fromkeys(("Service", "ServiceConfig", "ServiceSummary", "load_config"), "service"),
    **dict.fromkeys(("FrameSource", "SampledFrame", "SamplingWarning", "VideoFrame",
                     "load_calibration_set", "open_source", "sample_frames",
                     "save_calibration_set"), "video"),
}


def __getattr__(name: str) -> _typing.Any:
    package = _LAZY.get(name)
    if package is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{package}", __name__), name)
    globals()[name] = value  # once resolved, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AccuracyReport",
    "BrokenStreamError",
    "CalibrationError",
    "Calibrator",
    "Camera",
    "CameraEvent",
    "CameraStatistics",
    "Classification",
    "ClosedResourceError",
    "ConfigError",
    "CudaError",
    "Detections",
    "EmulatedInt8Warning",
    "EngineBuildError",
    "EngineBuilder",
    "EngineLoadError",
    "FleetError",
    "FrameContext",
    "FramePostprocess",
    "FrameSource",
    "GpuStatistics",
    "InferenceError",
    "InvalidCalibrationInput",
    "InvalidModelError",
    "InvalidVideoError",
    "LatencySummary",
    "ModelInfo",
    "MultiStatistics",
    "MultiStream",
    "Preprocess",
    "PreprocessNotFoundError",
    "QuantizationResult",
    "Result",
    "ResultStream",
    "SampledFrame",
    "SamplingWarning",
    "Service",
    "ServiceConfig",
    "ServiceSummary",
    "StreamStatistics",
    "StreamingEngine",
    "VideoError",
    "VideoFrame",
    "XInferError",
    "classify",
    "detect",
    "evaluate",
    "inspect_engine",
    "load",
    "load_calibration_set",
    "load_config",
    "load_engine",
    "open_source",
    "read_labels",
    "sample_frames",
    "save_calibration_set",
]
