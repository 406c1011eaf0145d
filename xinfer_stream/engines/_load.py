"""``load_engine``: an engine file -> a ready :class:`TensorRTBackend`, checked before it is trusted.

Checks, in order: the file exists; its sidecar (``<engine>.json``) describes these very bytes
(SHA-256); it was built by this TensorRT version for this GPU's compute capability. An engine
that fails the last check is refused with the reason; when the model it was built from is at hand
(the recorded Q/DQ or ONNX file, unchanged), the message offers the rebuild, and
``rebuild=True`` performs it with the recorded options and loads the result.

An engine without a sidecar (built by ``trtexec``, say) loads with a warning: nothing can be
checked before TensorRT deserializes it, and it carries no Preprocess.

No plugin library is loaded unless named in ``plugins=`` (see ``_tensorrt.load_plugins``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from .._errors import EngineLoadError, InvalidModelError
from .._files import sha256_bytes, sha256_file
from ._metadata import (
    DeviceProbe,
    EngineMetadata,
    compatibility_problems,
    current_device,
    metadata_path_for,
    read_metadata,
)
from ._tensorrt import load_tensorrt
from ._trt_backend import TensorRTBackend

__all__ = ["load_engine", "rebuild_source"]

log = logging.getLogger("xinfer_stream.engines")


def rebuild_source(metadata: EngineMetadata) -> Path | None:
    """The model an engine can be rebuilt from here: the recorded built-from model (the Q/DQ
    model when calibrated) if it is present and unchanged, else the recorded ONNX when built from
    it directly; None when neither is at hand."""
    src = metadata.source
    built_from = Path(src.built_from)
    if built_from.is_file() and sha256_file(built_from) == src.built_from_sha256:
        return built_from
    return None


def load_engine(path: str | os.PathLike[str], *, rebuild: bool = False,
                tensorrt: ModuleType | None = None, device: int | None = None,
                device_probe: DeviceProbe | None = None,
                plugins: Sequence[str | os.PathLike[str]] = ()) -> TensorRTBackend:
    """Load the engine at ``path`` for inference on CUDA device ``device`` (default: the one it
    was built for). See the module docstring for the checks and ``rebuild``. ``plugins``: paths
    of TensorRT plugin libraries (.so) the engine needs; none is loaded unless named here.

    Raises ``EngineLoadError`` (TensorRT missing, engine built elsewhere) or
    ``InvalidModelError`` (missing, corrupt or mismatched files).
    """
    engine_path = Path(path)
    if not engine_path.is_file():
        raise InvalidModelError(f"engine file not found: {str(engine_path)!r}; check the path or "
                                "build it with 'xinfer-stream build MODEL.onnx -o ENGINE'")
    trt = load_tensorrt(tensorrt, error=EngineLoadError)
    probe = device_probe or current_device
    metadata: EngineMetadata | None = None
    if metadata_path_for(engine_path).is_file():
        metadata = read_metadata(engine_path)
    else:
        log.warning("%s has no %s sidecar: loading it unchecked (no version/GPU check, no "
                    "Preprocess)", engine_path, metadata_path_for(engine_path).name)
    ordinal = device if device is not None else (metadata.options.device if metadata else 0)

    if metadata is not None:
        problems = compatibility_problems(metadata, tensorrt_version=str(trt.version),
                                          device=probe(ordinal))
        if problems:
            source = rebuild_source(metadata)
            if not rebuild or source is None:
                raise EngineLoadError(_refusal(engine_path, problems, metadata, source))
            from ._builder import EngineBuilder

            log.warning("rebuilding %s from %s: %s", engine_path, source, "; ".join(problems))
            result = (EngineBuilder._rebuild_of(metadata, source, tensorrt=tensorrt,
                                                device_probe=device_probe)
                      .with_device(ordinal).build_and_save(engine_path))
            metadata = result.metadata

    plan = engine_path.read_bytes()
    if metadata is not None and sha256_bytes(plan) != metadata.engine_sha256:
        raise InvalidModelError(
            f"{str(engine_path)!r} does not match its sidecar {metadata_path_for(engine_path).name!r} "
            f"(the sidecar records SHA-256 {metadata.engine_sha256[:12]}..., the file is "
            f"{sha256_bytes(plan)[:12]}...): the engine was replaced or truncated. Rebuild it")
    return TensorRTBackend(trt, plan, name=engine_path.name, metadata=metadata, device=ordinal,
                           plugins=plugins)


def _refusal(engine_path: Path, problems: list[str], metadata: EngineMetadata,
             source: Path | None) -> str:
    head = f"cannot load {str(engine_path)!r}: {'; and '.join(problems)}. TensorRT engines run " \
           "only on the TensorRT version and GPU architecture they were built for."
    if source is not None:
        return (f"{head} The model it was built from is at hand ({str(source)!r}): rebuild with "
                f"load_engine({str(engine_path)!r}, rebuild=True), or 'xinfer-stream build "
                f"{source}{_cli_flags(metadata)} -o {engine_path}'")
    return (f"{head} Rebuild it here from its model ({metadata.source.built_from!r} is not "
            "present or has changed since)")


def _cli_flags(metadata: EngineMetadata) -> str:
    """The ``xinfer-stream build`` options that repeat the recorded build."""
    o = metadata.options
    flags = ["--int8"] if o.int8 else []
    flags += ["--fp16"] if o.fp16 else []
    if o.max_batch is not None:
        flags += ["--max-batch", str(o.max_batch)]
        if o.opt_batch is not None:
            flags += ["--opt-batch", str(o.opt_batch)]
    if o.profiles != 1:
        flags += ["--profiles", str(o.profiles)]
    return "".join(" " + f for f in flags)
