"""The one exception tree of xinfer-stream.

::

    XInferError                      root: catch this to catch everything we raise
    ├── VideoError                   a source could not be opened, demuxed or decoded
    │   └── InvalidVideoError        ... because of the input itself (also a ValueError)
    ├── CalibrationError             statistics, scales or Q/DQ insertion failed
    │   └── InvalidCalibrationInput  ... because of the model or frames given (also a ValueError)
    ├── EngineBuildError             a TensorRT engine could not be built
    ├── EngineLoadError              a model or engine could not be loaded or does not fit
    │   ├── InvalidModelError        ... because of the file itself (also a ValueError)
    │   └── PreprocessNotFoundError  ... because no Preprocess was given or recorded for it
    ├── InferenceError               a backend failed while running a frame
    ├── CudaError                    a CUDA call failed ("NAME: explanation", naming the call)
    ├── ConfigError                  a service config file is unusable (also a ValueError)
    ├── FleetError                   the Ray fleet could not start or lost every actor
    ├── ClosedResourceError          you closed it, then used it
    └── BrokenStreamError            something outside broke a stream (a camera that never came back)

Foreign exceptions (PyAV, ONNX Runtime, TensorRT, cuda-python) are translated once, at the layer
that called them, with ``raise ... from exc`` so the original stays in ``__cause__``. Messages say
what was attempted, what was found (``!r``) and what to do next.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BrokenStreamError",
    "CalibrationError",
    "ClosedResourceError",
    "ConfigError",
    "CudaError",
    "EngineBuildError",
    "EngineLoadError",
    "FleetError",
    "InferenceError",
    "InvalidCalibrationInput",
    "InvalidModelError",
    "InvalidVideoError",
    "PreprocessNotFoundError",
    "VideoError",
    "XInferError",
]


class XInferError(Exception):
    """Root of every exception xinfer-stream raises on purpose."""


class VideoError(XInferError):
    """A video source could not be opened, demuxed or decoded."""


class InvalidVideoError(VideoError, ValueError):
    """The input is not a usable video (missing, empty, not a video, no video stream)."""


class CalibrationError(XInferError):
    """Calibration statistics, scales or Q/DQ insertion failed."""


class InvalidCalibrationInput(CalibrationError, ValueError):
    """The model or the calibration frames cannot be calibrated as given."""


class EngineBuildError(XInferError):
    """A TensorRT engine could not be built."""


class EngineLoadError(XInferError):
    """A model or engine could not be loaded, or does not fit what was asked of it."""


class InvalidModelError(EngineLoadError, ValueError):
    """The model or engine file itself is unusable (fails the checker, truncated, wrong input)."""


class PreprocessNotFoundError(EngineLoadError):
    """No Preprocess was passed and none is recorded next to the model (a sidecar
    ``model.int8.preprocess.json``, or an engine's metadata). ``model``: the model;
    ``sidecar``: where a recorded one would be. The message is for library users; the command
    line says which flags to pass instead."""

    def __init__(self, model: Path, sidecar: Path) -> None:
        super().__init__(
            f"no Preprocess for {str(model)!r}: pass preprocess=xs.Preprocess(...) or put one at "
            f"{str(sidecar)!r}. Models written by 'xinfer-stream quantize' carry theirs.")
        self.model = model
        self.sidecar = sidecar

    def __reduce__(self) -> tuple[type[PreprocessNotFoundError], tuple[Path, Path]]:
        return type(self), (self.model, self.sidecar)


class InferenceError(XInferError):
    """A backend failed while running a frame."""


class CudaError(XInferError):
    """A CUDA call failed. ``str()`` reads ``NAME: explanation (in call)``."""

    def __init__(self, name: str, explanation: str, call: str) -> None:
        super().__init__(f"{name}: {explanation} (in {call})")
        self.name = name
        self.explanation = explanation
        self.call = call


class ConfigError(XInferError, ValueError):
    """A service config file is unusable: unreadable, not TOML, an unknown key, a value of the
    wrong type, duplicate camera names, a missing model file. ``str()`` is one line naming the
    file, the key path and the problem (``serve.toml: cameras[1].name: 'door' is used twice``).
    """


class FleetError(XInferError):
    """The Ray fleet could not start (Ray missing, its cluster unreachable, an actor that never
    came up) or has no actor left to run cameras on."""


class ClosedResourceError(XInferError):
    """The resource was closed by its owner and then used."""


class BrokenStreamError(XInferError):
    """Something outside our control broke a stream (a source that never came back)."""
