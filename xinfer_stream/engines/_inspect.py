"""``inspect_engine``: what an engine file is, for ``xinfer-stream inspect model.engine``.

The report holds the sidecar's metadata (how, where and from what it was built), the io table,
and, where TensorRT is installed and the engine fits this machine, every layer with the precision
TensorRT chose (from its engine inspector), so users see what actually runs in INT8. Without
TensorRT, or for an engine built elsewhere, the report says why the layer table is missing.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .._errors import CudaError, EngineLoadError, InvalidModelError
from .._files import sha256_file
from ._metadata import (
    DeviceProbe,
    EngineMetadata,
    IoTensor,
    compatibility_problems,
    current_device,
    metadata_path_for,
    read_metadata,
)
from ._tensorrt import LayerInfo, deserialize, engine_io, engine_layers, load_tensorrt

__all__ = ["EngineReport", "inspect_engine"]


@dataclass(frozen=True)
class EngineReport:
    """An engine described; ``layers`` is None when they could not be read (``note`` says why)."""

    path: Path
    size: int
    metadata: EngineMetadata | None
    inputs: tuple[IoTensor, ...]
    outputs: tuple[IoTensor, ...]
    layers: tuple[LayerInfo, ...] | None
    notes: tuple[str, ...]

    def precision_counts(self) -> dict[str, int]:
        """How many layers run in each precision."""
        return dict(Counter(layer.precision for layer in self.layers or ()).most_common())

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "bytes": self.size,
            "metadata": self.metadata.to_dict() if self.metadata is not None else None,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "layers": (None if self.layers is None else
                       [{"name": la.name, "type": la.kind, "precision": la.precision}
                        for la in self.layers]),
            "precision_counts": self.precision_counts() if self.layers is not None else None,
            "notes": list(self.notes),
        }

    def format(self) -> str:
        """The human-readable report."""
        lines = [f"{self.path}  ({self.size / 1e6:.2f} MB)"]
        m = self.metadata
        if m is not None:
            lines += [
                f"  TensorRT   {m.tensorrt_version}, {m.typing}",
                f"  built for  {m.device.describe()}, {m.created}, {m.build_seconds:.1f} s",
                f"  source     {m.source.onnx} (sha256 {m.source.onnx_sha256[:12]})",
            ]
            if m.source.built_from != m.source.onnx:
                lines.append(f"  built from {m.source.built_from} "
                             f"(sha256 {m.source.built_from_sha256[:12]})")
            if m.source.calibration_fingerprint:
                lines.append(f"  calibration {m.source.calibration_method}, fingerprint "
                             f"{m.source.calibration_fingerprint[:12]}")
            opts = {k: v for k, v in m.options.to_dict().items() if v not in (None, False)}
            lines.append(f"  options    {opts}")
            lines.append(f"  profiles   {m.profiles}")
            lines.append(f"  preprocess {_describe_preprocess(m)}")
        lines.append("  io:")
        width = max((len(t.name) for t in (*self.inputs, *self.outputs)), default=4)
        for role, t in [("in ", t) for t in self.inputs] + [("out", t) for t in self.outputs]:
            dims = "x".join("?" if d is None else str(d) for d in t.shape)
            rng = ""
            if t.profile is not None:
                rng = "  profile " + " / ".join("x".join(map(str, s)) for s in t.profile)
            lines.append(f"    {role} {t.name:<{width}}  {t.dtype:<8} {dims}{rng}")
        if self.layers is not None:
            counts = ", ".join(f"{n} {p}" for p, n in self.precision_counts().items())
            lines.append(f"  layers ({len(self.layers)}): {counts}")
            kind_w = max((len(la.kind) for la in self.layers), default=4)
            for la in self.layers:
                lines.append(f"    {la.precision:<5} {la.kind:<{kind_w}}  {la.name}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


def _describe_preprocess(m: EngineMetadata) -> str:
    p = m.preprocess
    if p is None:
        return "none recorded"
    return (f"{p.size[0]}x{p.size[1]} {p.resize}, {p.color}, mean {list(p.mean)}, "
            f"std {list(p.std)}, {p.layout} {p.dtype}")


def inspect_engine(path: str | os.PathLike[str], *, layers: bool = True,
                   tensorrt: ModuleType | None = None,
                   device_probe: DeviceProbe | None = None) -> EngineReport:
    """Describe the engine at ``path`` (see the module docstring). ``layers=False`` skips
    TensorRT entirely (metadata only)."""
    engine_path = Path(path)
    if not engine_path.is_file():
        raise InvalidModelError(f"engine file not found: {str(engine_path)!r}")
    size = engine_path.stat().st_size
    notes: list[str] = []
    metadata = read_metadata(engine_path) if metadata_path_for(engine_path).is_file() else None
    if metadata is None:
        notes.append(f"no sidecar {metadata_path_for(engine_path).name!r}: not built by "
                     "xinfer-stream, so no build record")
    elif sha256_file(engine_path) != metadata.engine_sha256:
        notes.append("the engine's SHA-256 differs from its sidecar's: the sidecar describes "
                     "another build; rebuild the engine")
    io = (metadata.inputs, metadata.outputs) if metadata is not None else ((), ())
    if not layers:
        if metadata is None:
            raise InvalidModelError(_unknown(engine_path, "--no-layers reads only the sidecar"))
        return EngineReport(engine_path, size, metadata, *io, None, tuple(notes))

    try:
        trt = load_tensorrt(tensorrt, error=EngineLoadError)
    except EngineLoadError as exc:
        if metadata is None:     # nothing here could tell an engine from any other file
            raise InvalidModelError(_unknown(engine_path, str(exc))) from exc
        notes.append(f"per-layer precision needs TensorRT: {exc}")
        return EngineReport(engine_path, size, metadata, *io, None, tuple(notes))
    if metadata is not None:
        try:
            device = (device_probe or current_device)(metadata.options.device)
        except CudaError as exc:
            notes.append(f"per-layer precision needs a GPU to deserialize the engine: {exc}")
            return EngineReport(engine_path, size, metadata, *io, None, tuple(notes))
        problems = compatibility_problems(metadata, tensorrt_version=str(trt.version),
                                          device=device)
        if problems:
            notes.append("per-layer precision unavailable here: " + "; ".join(problems))
            return EngineReport(engine_path, size, metadata, *io, None, tuple(notes))
    runtime, engine = deserialize(trt, engine_path.read_bytes(), repr(engine_path.name))
    inputs, outputs = engine_io(trt, engine)
    layer_list = tuple(engine_layers(trt, engine))
    del engine, runtime
    if layer_list and all(la.precision == "?" for la in layer_list):
        notes.append("the engine records no layer precisions (built without "
                     "ProfilingVerbosity.DETAILED)")
    return EngineReport(engine_path, size, metadata, inputs, outputs, layer_list, tuple(notes))


def _unknown(path: Path, why: str) -> str:
    return (f"cannot tell what {str(path)!r} is: it has no xinfer-stream sidecar "
            f"({metadata_path_for(path).name!r}) and TensorRT cannot read it here ({why}); give "
            "an ONNX model (.onnx) or an engine built by 'xinfer-stream build'")
