"""The asyncio runtime: ``load`` a model, ``stream`` sources through it, get ``Result``s."""

from ._detect import Detections, detect
from ._engine import StreamingEngine, load
from ._batcher import Camera, CameraEvent, CameraStatistics
from ._jsonl import JsonLinesWriter, result_to_json
from ._many import MultiStatistics, MultiStream
from ._postprocess import (Classification, FrameContext, FramePostprocess, ModelInfo, classify,
                           read_labels)
from ._result import GpuStatistics, LatencySummary, Result, StreamStatistics
from ._stream import ResultStream

__all__ = ["Camera", "CameraEvent", "CameraStatistics", "Classification", "Detections",
           "FrameContext", "FramePostprocess", "GpuStatistics", "JsonLinesWriter", "LatencySummary", "ModelInfo",
           "MultiStatistics", "MultiStream", "Result", "ResultStream", "StreamStatistics",
           "StreamingEngine", "classify", "detect", "load", "read_labels", "result_to_json"]
