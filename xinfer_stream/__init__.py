"""xinfer-stream: INT8 inference over live video.

Offline: sample frames from your own video, calibrate an ONNX model to a Q/DQ INT8 model (and a
TensorRT engine). Online: keep models loaded and stream per-frame results with asyncio::

    import xinfer_stream as xs
    async with xs.load("model.int8.onnx") as engine:
        async with engine.stream("clip.mp4") as results:
            async for r in results:
                print(r.frame_index, r.pts, r.latency)
"""

from ._errors import (BrokenStreamError, CalibrationError, ClosedResourceError, CudaError,
                      EngineBuildError, EngineLoadError, InferenceError, InvalidCalibrationInput,
                      InvalidModelError, InvalidVideoError, PreprocessNotFoundError, VideoError,
                      XInferError)
from .engines import EngineBuilder, inspect_engine, load_engine
from .preprocess import Preprocess
# ``quantize()`` itself stays in ``xinfer_stream.quantize``: a top-level function of that name
# would shadow the subpackage (``import xinfer_stream.quantize as xq`` would give the function).
from .quantize import AccuracyReport, Calibrator, QuantizationResult, evaluate
from .runtime import (Camera, CameraEvent, CameraStatistics, Classification, GpuStatistics,
                      LatencySummary, MultiStatistics, MultiStream, Result, ResultStream,
                      StreamingEngine, StreamStatistics, classify, load, read_labels)
from .video import (FrameSource, SampledFrame, SamplingWarning, VideoFrame, load_calibration_set,
                    open_source, sample_frames, save_calibration_set)

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
    "CudaError",
    "EngineBuildError",
    "EngineBuilder",
    "EngineLoadError",
    "FrameSource",
    "GpuStatistics",
    "InferenceError",
    "InvalidCalibrationInput",
    "InvalidModelError",
    "InvalidVideoError",
    "LatencySummary",
    "MultiStatistics",
    "MultiStream",
    "Preprocess",
    "PreprocessNotFoundError",
    "QuantizationResult",
    "Result",
    "ResultStream",
    "SampledFrame",
    "SamplingWarning",
    "StreamStatistics",
    "StreamingEngine",
    "VideoError",
    "VideoFrame",
    "XInferError",
    "classify",
    "evaluate",
    "inspect_engine",
    "load",
    "load_calibration_set",
    "load_engine",
    "open_source",
    "read_labels",
    "sample_frames",
    "save_calibration_set",
]
