"""Video in: every source a camera pipeline meets, decoded on worker threads, and calibration frames.

This package is the only one that imports PyAV.

- :func:`open_source` streams :class:`VideoFrame` objects from files, URLs, cameras or numpy
  arrays, decoding on a thread of its own (:class:`FrameSource`); :func:`is_frame_iterable`
  tells arrays from things to decode.
- :func:`sample_frames` picks frames that represent the footage, for calibration, and
  :func:`save_calibration_set` / :func:`load_calibration_set` keep them on disk;
  :func:`duplicate_sources` finds videos among them that are copies of one scene.
- :func:`annotate` draws a frame's detections or top class on it (Pillow), :func:`write_jpeg`
  and :func:`write_png` save a picture and :class:`VideoWriter` encodes frames as H.264, all
  atomically; :func:`rate_from_timestamps` measures a live stream's frame rate for it.
"""

from ._annotate import annotate, write_jpeg, write_png
from ._calibration_set import load_calibration_set, save_calibration_set
from ._container import is_frame_iterable
from ._decode import Reconnect
from ._duplicates import duplicate_sources
from ._frame import DeviceFrame, DevicePlane, VideoFrame
from ._sample import SampledFrame, SamplingWarning, sample_frames
from ._source import FrameSource, SourceStatistics, open_source
from ._writer import RATE_SAMPLE_FRAMES, VideoWriter, frame_rate, rate_from_timestamps

__all__ = [
    "DeviceFrame",
    "DevicePlane",
    "FrameSource",
    "RATE_SAMPLE_FRAMES",
    "Reconnect",
    "SampledFrame",
    "SamplingWarning",
    "SourceStatistics",
    "VideoFrame",
    "VideoWriter",
    "annotate",
    "duplicate_sources",
    "frame_rate",
    "is_frame_iterable",
    "load_calibration_set",
    "open_source",
    "rate_from_timestamps",
    "sample_frames",
    "save_calibration_set",
    "write_jpeg",
    "write_png",
]
