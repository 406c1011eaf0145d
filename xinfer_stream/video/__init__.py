"""Video in: every source a camera pipeline meets, decoded on worker threads, and calibration frames.

This package is the only one that imports PyAV.

- :func:`open_source` streams :class:`VideoFrame` objects from files, URLs, cameras or numpy
  arrays, decoding on a thread of its own (:class:`FrameSource`).
- :func:`sample_frames` picks frames that represent the footage, for calibration, and
  :func:`save_calibration_set` / :func:`load_calibration_set` keep them on disk.
"""

from ._calibration_set import load_calibration_set, save_calibration_set
from ._decode import Reconnect
from ._frame import DeviceFrame, DevicePlane, VideoFrame
from ._sample import SampledFrame, SamplingWarning, sample_frames
from ._source import FrameSource, SourceStatistics, open_source

__all__ = [
    "DeviceFrame",
    "DevicePlane",
    "FrameSource",
    "Reconnect",
    "SampledFrame",
    "SamplingWarning",
    "SourceStatistics",
    "VideoFrame",
    "load_calibration_set",
    "open_source",
    "sample_frames",
    "save_calibration_set",
]
