"""Engine metadata: a JSON sidecar that travels with every engine we build.

Decision: a sidecar file, ``model.engine`` -> ``model.engine.json``, not a header inside the
engine. The ``.engine`` file stays exactly what TensorRT serialized, so ``trtexec
--loadEngine=model.engine`` and any other TensorRT tool read it unchanged; the sidecar holds what
TensorRT does not record in a way Python can read before deserializing: the io tensors, the
Preprocess, the TensorRT version and GPU it was built with, the build options, and hashes of the
engine, of the ONNX it came from and of the calibration. The sidecar records the engine's SHA-256,
so an engine replaced without its sidecar (or a sidecar copied next to another engine) is caught
on load instead of trusted.

Format (``"format": "xinfer-stream.engine"``, ``"version": 1``)::

    engine        {"file", "sha256", "bytes"}
    tensorrt      {"version", "typing", "flags"}        typing: how precisions were chosen
    device        {"name", "compute_capability": [major, minor]}
    inputs        [{"name", "shape" (null = dynamic), "dtype", "profile": {"min","opt","max"}}]
    outputs       [{"name", "shape", "dtype"}]
    profiles      number of optimization profiles (one per concurrent execution context)
    preprocess    the Preprocess (or null)
    build         BuildOptions.to_dict()
    source        {"onnx", "onnx_sha256", "built_from", "built_from_sha256",
                   "calibration_fingerprint", "calibration_method"}
    created, build_seconds, xinfer_stream
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import EngineLoadError, InvalidModelError
from .._files import atomic_write_json
from ..preprocess import Preprocess
from ._base import TensorSpec
from ._build_options import BuildOptions

__all__ = ["DeviceInfo", "EngineMetadata", "EngineSource", "IoTensor", "compatibility_problems",
           "current_device", "metadata_path_for", "read_metadata", "write_metadata"]

FORMAT = "xinfer-stream.engine"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU an engine was built for: its name and compute capability."""

    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def describe(self) -> str:
        return f"{self.name} ({self.sm})"


def current_device(ordinal: int = 0) -> DeviceInfo:
    """Name and compute capability of CUDA device ``ordinal``, read through ``xinfer_stream.cuda``
    (``CudaError`` where there is no usable GPU)."""
    from ..cuda import Device

    with Device(ordinal) as device:
        return DeviceInfo(device.name, device.compute_capability)


DeviceProbe = Callable[[int], DeviceInfo]


@dataclass(frozen=True)
class IoTensor:
    """One engine io tensor; ``shape`` has None for dynamic dims; ``profile`` (min, opt, max)
    of profile 0 for a dynamic input."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.shape, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.profile is not None:
            d["profile"] = dict(zip(("min", "opt", "max"), (list(s) for s in self.profile)))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IoTensor:
        profile = d.get("profile")
        return cls(str(d["name"]), tuple(None if v is None else int(v) for v in d["shape"]),
                   str(d["dtype"]),
                   None if profile is None else
                   tuple(tuple(int(v) for v in profile[k]) for k in ("min", "opt", "max"))  # type: ignore[arg-type]
                   )


@dataclass(frozen=True)
class EngineSource:
    """What the engine was made from: the ONNX given, the model actually built (the Q/DQ model
    when calibrated here), and the calibration."""

    onnx: str
    onnx_sha256: str
    built_from: str
    built_from_sha256: str
    calibration_fingerprint: str | None = None
    calibration_method: str | None = None


@dataclass(frozen=True)
class EngineMetadata:
    """Everything the sidecar holds; see the module docstring."""

    engine_file: str
    engine_sha256: str
    engine_bytes: int
    tensorrt_version: str
    typing: str
    flags: tuple[str, ...]
    device: DeviceInfo
    inputs: tuple[IoTensor, ...]
    outputs: tuple[IoTensor, ...]
    profiles: int
    preprocess: Preprocess | None
    options: BuildOptions
    source: EngineSource
    created: str
    build_seconds: float
    xinfer_stream: str

    @property
    def tensorrt_major(self) -> int:
        return int(self.tensorrt_version.split(".")[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION,
            "engine": {"file": self.engine_file, "sha256": self.engine_sha256,
                       "bytes": self.engine_bytes},
            "tensorrt": {"version": self.tensorrt_version, "typing": self.typing,
                         "flags": list(self.flags)},
            "device": {"name": self.device.name,
                       "compute_capability": list(self.device.compute_capability)},
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "profiles": self.profiles,
            "preprocess": self.preprocess.to_dict() if self.preprocess is not None else None,
            "build": self.options.to_dict(),
            "source": {"onnx": self.source.onnx, "onnx_sha256": self.source.onnx_sha256,
                       "built_from": self.source.built_from,
                       "built_from_sha256": self.source.built_from_sha256,
                       "calibration_fingerprint": self.source.calibration_fingerprint,
                       "calibration_method": self.source.calibration_method},
            "created": self.created, "build_seconds": round(self.build_seconds, 3),
            "xinfer_stream": self.xinfer_stream,
        }

    @classmethod
    def from_dict(cls, data: Any) -> EngineMetadata:
        """Rebuild from :meth:`to_dict` output; ``ValueError`` (or ``KeyError``/``TypeError``)
        on anything malformed."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not an xinfer-stream engine sidecar (format {_get(data, 'format')!r})")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"sidecar version {data.get('version')!r}; this xinfer-stream reads "
                             f"version {FORMAT_VERSION}")
        engine, trt, dev, src = data["engine"], data["tensorrt"], data["device"], data["source"]
        cc = dev["compute_capability"]
        return cls(
            engine_file=str(engine["file"]), engine_sha256=str(engine["sha256"]),
            engine_bytes=int(engine["bytes"]), tensorrt_version=str(trt["version"]),
            typing=str(trt["typing"]), flags=tuple(str(f) for f in trt["flags"]),
            device=DeviceInfo(str(dev["name"]), (int(cc[0]), int(cc[1]))),
            inputs=tuple(IoTensor.from_dict(t) for t in data["inputs"]),
            outputs=tuple(IoTensor.from_dict(t) for t in data["outputs"]),
            profiles=int(data["profiles"]),
            preprocess=(Preprocess.from_dict(data["preprocess"])
                        if data.get("preprocess") is not None else None),
            options=BuildOptions.from_dict(data["build"]),
            source=EngineSource(**src),
            created=str(data["created"]), build_seconds=float(data["build_seconds"]),
            xinfer_stream=str(data["xinfer_stream"]))


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def metadata_path_for(engine: str | os.PathLike[str]) -> Path:
    """``model.engine`` -> ``model.engine.json`` (``model.json`` would collide with the
    quantization report of ``model.onnx``)."""
    p = Path(engine)
    return p.with_name(p.name + ".json")


def write_metadata(engine: str | os.PathLike[str], metadata: EngineMetadata) -> Path:
    """Write the sidecar of ``engine`` atomically and return its path."""
    path = metadata_path_for(engine)
    atomic_write_json(path, metadata.to_dict())
    return path


def read_metadata(engine: str | os.PathLike[str]) -> EngineMetadata:
    """The sidecar of ``engine``. ``EngineLoadError`` when it is missing (an engine built by
    another tool), ``InvalidModelError`` when it is unreadable."""
    path = metadata_path_for(engine)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise EngineLoadError(
            f"{str(engine)!r} has no metadata sidecar {path.name!r}: it was not built by "
            "xinfer-stream (or the sidecar was not copied with it). Rebuild it with "
            "'xinfer-stream build MODEL.onnx -o ENGINE', or copy the .json beside it") from exc
    except OSError as exc:
        raise InvalidModelError(f"cannot read the engine sidecar {str(path)!r}: {exc}") from exc
    try:
        return EngineMetadata.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError,
            RecursionError) as exc:  # any shape of JSON, however deep or odd
        raise InvalidModelError(
            f"the engine sidecar {str(path)!r} is malformed ({type(exc).__name__}: {exc}); "
            "rebuild the engine to rewrite it") from exc


def compatibility_problems(metadata: EngineMetadata, *, tensorrt_version: str,
                           device: DeviceInfo) -> list[str]:
    """Why an engine described by ``metadata`` cannot run here (empty: it can).

    TensorRT engines are tied to the TensorRT version that built them and to the GPU's compute
    capability. A different GPU of the same compute capability runs the engine (TensorRT warns
    that it may be slower), so only the capability is a problem.
    """
    problems = []
    if metadata.tensorrt_version != tensorrt_version:
        problems.append(f"it was built with TensorRT {metadata.tensorrt_version} and this is "
                        f"TensorRT {tensorrt_version}")
    if metadata.device.compute_capability != device.compute_capability:
        problems.append(f"it was built for {metadata.device.describe()} and this GPU is "
                        f"{device.describe()}")
    return problems
