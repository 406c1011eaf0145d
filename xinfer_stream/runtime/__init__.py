"""The asyncio runtime: ``load`` a model, ``stream`` sources through it, get ``Result``s."""

from ._detect import Detections, detect
from ._engine import StreamingEngine, load
from ._postprocess import (Classification, FrameContext, FramePostprocess, ModelInfo, classify,
                           read_labels)
from ._result import GpuStatistics, LatencySummary, Result, StreamStatistics
from ._stream import ResultStream

__all__ = ["Classification", "Detections", "FrameContext", "FramePostprocess", "GpuStatistics",
           "LatencySummary", "ModelInfo", "Result", "ResultStream", "StreamStatistics",
           "StreamingEngine", "classify", "detect", "load", "read_labels"]
