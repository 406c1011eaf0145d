"""TensorRT's calibration cache (text format), written and read back.

The format TensorRT 8.x/10.x calibrators read through ``read_calibration_cache`` and tools such as
``trtexec --calib=`` and Polygraphy accept::

    TRT-8501-EntropyCalibration2
    input: 3c010a14
    /conv1/Conv_output_0: 3d8a1b2c

The first line is ``TRT-<version>-<algorithm>``; each following line is a tensor name, ``": "``,
and the 8 hexadecimal digits of the big-endian IEEE float32 *scale* (``amax / 127``). TensorRT
rejects a cache whose algorithm differs from its calibrator's, so the header names the algorithm
the user's calibrator will report (``EntropyCalibration2`` by default, TensorRT's recommended
calibrator). Tensor names are the ONNX tensor names, which TensorRT's ONNX parser keeps as the
names of the network's tensors.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .._errors import InvalidCalibrationInput
from .._files import atomic_write_bytes

__all__ = ["TRT_ALGORITHMS", "CalibrationCache", "read_calibration_cache", "write_calibration_cache"]

TRT_ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration",
                  "LegacyCalibration")
# TensorRT 10.x encodes its version as major*10000 + minor*100 + patch in this header (8.x used
# major*1000 + minor*100 + patch, e.g. 8501 for 8.5.1); the number is informational.
DEFAULT_VERSION = "100000"
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


@dataclass(frozen=True)
class CalibrationCache:
    """A parsed cache: header version, algorithm, and tensor name -> float32 scale."""

    version: str
    algorithm: str
    scales: dict[str, float]

    def to_text(self) -> str:
        lines = [f"TRT-{self.version}-{self.algorithm}"]
        lines.extend(f"{name}: {float_to_hex(scale)}" for name, scale in self.scales.items())
        return "\n".join(lines) + "\n"


def float_to_hex(value: float) -> str:
    return struct.pack(">f", value).hex()


def hex_to_float(text: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(text))[0])


def write_calibration_cache(path: str | os.PathLike[str], scales: Mapping[str, float], *,
                            algorithm: str = "EntropyCalibration2",
                            version: str = DEFAULT_VERSION) -> CalibrationCache:
    """Write ``scales`` (tensor name -> scale) as a TensorRT calibration cache, atomically."""
    if algorithm not in TRT_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {TRT_ALGORITHMS}, got {algorithm!r}")
    for name in scales:
        if "\n" in name or "\r" in name or not name:
            raise ValueError(f"tensor name {name!r} cannot be written to a calibration cache")
    cache = CalibrationCache(version, algorithm, {k: float(v) for k, v in scales.items()})
    atomic_write_bytes(path, cache.to_text().encode())
    return cache


def read_calibration_cache(path: str | os.PathLike[str]) -> CalibrationCache:
    """Parse a TensorRT calibration cache; ``InvalidCalibrationInput`` naming the bad line."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidCalibrationInput(f"cannot read calibration cache {str(path)!r}: {exc}") from exc
    lines = text.splitlines()
    if not lines or not (match := _HEADER.match(lines[0].strip())):
        first = lines[0] if lines else ""
        raise InvalidCalibrationInput(
            f"{str(path)!r} is not a TensorRT calibration cache: first line {first!r} is not "
            "'TRT-<version>-<algorithm>'")
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{8}", value.strip()):
            raise InvalidCalibrationInput(
                f"line {number} of calibration cache {str(path)!r} is {line!r}; expected "
                "'tensor_name: 8 hex digits'")
        scale = hex_to_float(value.strip())
        if not (math.isfinite(scale) and scale > 0):
            raise InvalidCalibrationInput(
                f"line {number} of calibration cache {str(path)!r} gives tensor {name!r} the scale "
                f"{scale!r}; TensorRT needs positive, finite scales: recalibrate")
        scales[name] = scale
    return CalibrationCache(match.group(1), match.group(2), scales)
