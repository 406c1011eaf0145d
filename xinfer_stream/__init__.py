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
                      InvalidModelError, InvalidVideoError, VideoError, XInferError)
from .preprocess import Preprocess
from .runtime import (Classification, LatencySummary, Result, ResultStream, StreamingEngine,
                      StreamStatistics, classify, load, read_labels)

__version__ = "0.1.0"

__all__ = [
    "BrokenStreamError",
    "CalibrationError",
    "Classification",
    "ClosedResourceError",
    "CudaError",
    "EngineBuildError",
    "EngineLoadError",
    "InferenceError",
    "InvalidCalibrationInput",
    "InvalidModelError",
    "InvalidVideoError",
    "LatencySummary",
    "Preprocess",
    "Result",
    "ResultStream",
    "StreamStatistics",
    "StreamingEngine",
    "VideoError",
    "XInferError",
    "classify",
    "load",
    "read_labels",
]
