"""``EngineBuilder``: the fluent API that turns an ONNX model into a TensorRT engine file.

::

    result = (EngineBuilder().from_onnx("resnet18.onnx")
              .with_int8(calibrator)          # quantize to a Q/DQ model first (xinfer_stream.quantize)
              .with_max_batch_size(32)        # profile: batch 1 .. 32, tuned for 1 (opt=...)
              .build_and_save("resnet18_int8.engine"))

Each ``with_*`` returns a new builder (builders are immutable values, safe to share). What
``build_and_save`` does, in order:

1. With ``with_int8(calibrator)``: compute the calibration's fingerprint; skip everything below
   when the engine at the destination was built from the same ONNX, calibration, options,
   TensorRT version and GPU (its sidecar says so and its bytes still match).
2. Quantize: write the Q/DQ model (``<engine stem>.qdq.onnx`` unless given) through
   ``xinfer_stream.quantize.quantize``. This happens before TensorRT is needed, so a machine
   without TensorRT still gets the Q/DQ model (and an ``EngineBuildError`` saying what to
   install).
3. Decide the precision (``_precision.plan_precision``), build with TensorRT, reusing the timing
   cache when given, reporting progress.
4. Write the engine, then its sidecar (``<engine>.json``), each atomically; a failed build
   writes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .._errors import EngineBuildError, EngineLoadError, InvalidModelError
from .._files import atomic_output, atomic_write_bytes, sha256_bytes, sha256_file
from ..preprocess import Preprocess
from ._build_options import BuildOptions
from ._external_data import check_external_data
from ._metadata import (
    DeviceInfo,
    DeviceProbe,
    EngineMetadata,
    EngineSource,
    current_device,
    metadata_path_for,
    read_metadata,
    write_metadata,
)
from ._open import find_preprocess
from ._precision import model_precisions, plan_precision
from ._tensorrt import ProgressCallback, TensorRT, build_plan, deserialize, engine_io, load_tensorrt

if TYPE_CHECKING:
    from typing import Self

    from ..quantize import Calibrator

__all__ = ["BuildResult", "EngineBuilder", "qdq_path_for"]

log = logging.getLogger("xinfer_stream.build")

# quantize(model, calibrator, output, method=...) -> an object with .model_path
Quantizer = Callable[..., Any]


def qdq_path_for(engine: str | os.PathLike[str]) -> Path:
    """Where ``with_int8`` writes the Q/DQ model by default: ``m.engine`` -> ``m.qdq.onnx``."""
    p = Path(engine)
    return p.with_name(p.stem + ".qdq.onnx")


@dataclass(frozen=True)
class BuildResult:
    """What ``build_and_save`` produced. ``skipped``: the engine was already up to date."""

    engine_path: Path
    metadata_path: Path
    metadata: EngineMetadata
    qdq_path: Path | None
    skipped: bool

    def summary(self) -> str:
        m = self.metadata
        verb = "up to date" if self.skipped else f"built in {m.build_seconds:.1f} s"
        return (f"{self.engine_path} ({m.engine_bytes / 1e6:.1f} MB): {verb}; TensorRT "
                f"{m.tensorrt_version}, {m.typing}, {m.device.describe()}")


@dataclass(frozen=True)
class _Int8:
    calibrator: Calibrator
    method: str
    qdq_path: Path | None
    quantizer: Quantizer | None


class EngineBuilder:
    """Builds TensorRT engines from ONNX models; see the module docstring.

    ``tensorrt``: the module to use (default ``import tensorrt``; tests pass a double).
    ``device_probe(ordinal) -> DeviceInfo``: how to read the GPU's name and compute capability
    (default: through ``xinfer_stream.cuda``).
    """

    def __init__(self, *, tensorrt: ModuleType | None = None,
                 device_probe: DeviceProbe | None = None) -> None:
        self._module = tensorrt
        self._probe = device_probe or current_device
        self._onnx: Path | None = None
        self._options = BuildOptions()
        self._int8: _Int8 | None = None
        self._preprocess: Preprocess | None = None
        self._progress: ProgressCallback | None = None
        self._lineage: EngineSource | None = None  # set by load_engine's rebuild (a Q/DQ model)

    def _with(self, **changes: Any) -> Self:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        for key, value in changes.items():
            setattr(new, "_" + key, value)
        return new

    def _opts(self, **changes: Any) -> Self:
        return self._with(options=dataclasses.replace(self._options, **changes))

    # -- the fluent API -----------------------------------------------------------------------
    def from_onnx(self, path: str | os.PathLike[str]) -> Self:
        """The FP32 (or already Q/DQ, or FP16) ONNX model to build."""
        p = Path(path)
        if not p.is_file():
            raise InvalidModelError(f"ONNX model not found: {str(p)!r}; check the path")
        check_external_data(p)  # before TensorRT's parser (or the quantizer) reads any of it
        return self._with(onnx=p)

    def with_int8(self, calibrator: Calibrator | None = None, *, method: str | None = None,
                  qdq_path: str | os.PathLike[str] | None = None,
                  quantizer: Quantizer | None = None) -> Self:
        """Build INT8. With ``calibrator``, quantize the model to Q/DQ first (``method``: max,
        percentile, entropy, mse, auto; ``None``: ``quantize``'s default; the Q/DQ model goes to
        ``qdq_path``); without, the ONNX model must already hold Q/DQ nodes. ``quantizer``
        replaces ``xinfer_stream.quantize.quantize``."""
        if method is None:
            from ..quantize._quantize import DEFAULT_METHOD

            method = DEFAULT_METHOD
        int8 = None if calibrator is None else _Int8(
            calibrator, method, Path(qdq_path) if qdq_path is not None else None, quantizer)
        return self._with(int8=int8)._opts(int8=True, calibration_method=method
                                           if calibrator is not None else None)

    def with_fp16(self) -> Self:
        """Let TensorRT 10 run unquantized layers in FP16 (on 11 the model must carry FP16)."""
        return self._opts(fp16=True)

    def with_workspace(self, nbytes: int) -> Self:
        """Limit the builder's scratch memory (``MemoryPoolType.WORKSPACE``)."""
        return self._opts(workspace=nbytes)

    def with_max_batch_size(self, max_batch: int, *, opt: int | None = None,
                            min_batch: int = 1) -> Self:
        """A dynamic batch axis gets the profile ``min_batch .. max_batch``, tuned for ``opt``
        (default ``min_batch``: per-frame latency)."""
        return self._opts(max_batch=max_batch, opt_batch=opt, min_batch=min_batch)

    def with_input_shapes(self, *, min: tuple[int, int], opt: tuple[int, int],
                          max: tuple[int, int]) -> Self:
        """(height, width) range for a model whose image input has dynamic height and width."""
        return self._opts(hw_range=(tuple(min), tuple(opt), tuple(max)))

    def with_profiles(self, count: int) -> Self:
        """One optimization profile per execution context used at the same time (slots)."""
        return self._opts(profiles=count)

    def with_timing_cache(self, path: str | os.PathLike[str]) -> Self:
        """Read TensorRT's timing cache from ``path`` if it exists and write it back after the
        build, so later builds (other models too) skip kernel timings already made."""
        return self._opts(timing_cache=str(path))

    def with_builder_optimization_level(self, level: int) -> Self:
        """TensorRT's builder optimization level, 0 (fast build) to 5 (slow build, fastest
        engine); TensorRT's default is 3."""
        return self._opts(builder_optimization_level=level)

    def with_device(self, ordinal: int) -> Self:
        """The CUDA device to build for (default 0)."""
        return self._opts(device=ordinal)

    def with_preprocess(self, preprocess: Preprocess) -> Self:
        """The Preprocess recorded in the engine's metadata (default: the calibrator's, else the
        model's ``.preprocess.json`` sidecar, else none)."""
        return self._with(preprocess=preprocess)

    def with_progress(self, callback: ProgressCallback) -> Self:
        """Call ``callback(BuildProgress)`` as TensorRT's build advances."""
        return self._with(progress=callback)

    @property
    def options(self) -> BuildOptions:
        return self._options

    # -- building -----------------------------------------------------------------------------
    def check_ready(self) -> None:
        """Raise now what :meth:`build_and_save` would otherwise raise only after sampling and
        quantizing: :class:`EngineBuildError` naming what to install when TensorRT is missing,
        and the device probe's error when the GPU cannot be read. Builds nothing; cheap."""
        load_tensorrt(self._module)
        self._probe(self._options.device)

    def build_and_save(self, path: str | os.PathLike[str]) -> BuildResult:
        """Build (or find up to date) the engine at ``path``; see the module docstring."""
        if self._onnx is None:
            raise EngineBuildError("no model to build: call from_onnx(path) first")
        engine_path = Path(path)
        source = self._onnx
        source_sha = sha256_file(source)
        fingerprint = self._int8.calibrator.fingerprint if self._int8 is not None else None
        trt, missing = _try_tensorrt(self._module)

        if trt is not None:
            device = self._probe(self._options.device)
            current = _up_to_date(engine_path, source_sha, fingerprint, self._options,
                                  str(trt.version), device)
            if current is not None:
                log.info("%s is up to date (same ONNX, calibration, options, TensorRT and GPU); "
                         "not rebuilding", engine_path)
                recorded = Path(current.source.built_from)
                qdq = recorded if self._int8 is not None and recorded.is_file() else None
                return BuildResult(engine_path, metadata_path_for(engine_path), current, qdq, True)

        built_from, qdq_path = source, None
        if self._int8 is not None:
            qdq_path = self._int8.qdq_path or qdq_path_for(engine_path)
            built_from = self._quantize(source, qdq_path)
        if trt is None:
            assert missing is not None
            if qdq_path is None:
                raise missing
            raise EngineBuildError(f"{missing}. The Q/DQ model was written to {str(built_from)!r}; "
                                   "build the engine from it where TensorRT is installed"
                                   ) from missing.__cause__
        metadata = self._build(trt, device, engine_path, source, source_sha, built_from,
                               fingerprint)
        return BuildResult(engine_path, metadata_path_for(engine_path), metadata, qdq_path, False)

    def _quantize(self, source: Path, qdq_path: Path) -> Path:
        assert self._int8 is not None
        quantizer = self._int8.quantizer
        if quantizer is None:
            from ..quantize import quantize

            quantizer = quantize
        log.info("quantizing %s to %s (method %s)", source.name, qdq_path, self._int8.method)
        result = quantizer(source, self._int8.calibrator, qdq_path, method=self._int8.method)
        return Path(result.model_path)

    def _preprocess_for(self, built_from: Path, source: Path) -> Preprocess | None:
        if self._preprocess is not None:
            return self._preprocess
        if self._int8 is not None and self._int8.calibrator.preprocess is not None:
            return self._int8.calibrator.preprocess
        for model in (built_from, source):
            found = find_preprocess(model)
            if found is not None:
                return found
        return None

    def _build(self, trt: TensorRT, device: DeviceInfo, engine_path: Path, source: Path,
               source_sha: str, built_from: Path, fingerprint: str | None) -> EngineMetadata:
        options = self._options
        precision = plan_precision(trt.version, model_precisions(built_from),
                                   int8=options.int8, fp16=options.fp16)
        cache_path = Path(options.timing_cache) if options.timing_cache else None
        previous_cache = cache_path.read_bytes() if cache_path and cache_path.is_file() else None
        built = build_plan(trt, built_from, options, precision, timing_cache=previous_cache,
                           progress=self._progress)
        # Read the io tensors back from the engine itself: the metadata describes what TensorRT
        # built, not what we asked for.
        runtime, engine = deserialize(trt, built.plan, f"the engine just built from {built_from}")
        inputs, outputs = engine_io(trt, engine)
        profiles = int(engine.num_optimization_profiles)
        del engine, runtime
        metadata = EngineMetadata(
            engine_file=engine_path.name, engine_sha256=sha256_bytes(built.plan),
            engine_bytes=len(built.plan), tensorrt_version=str(trt.version),
            typing=precision.describe(), flags=precision.flags, device=device,
            inputs=inputs, outputs=outputs, profiles=profiles,
            preprocess=self._preprocess_for(built_from, source), options=options,
            source=self._source(source, source_sha, built_from, fingerprint),
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            build_seconds=round(built.seconds, 3), xinfer_stream=_package_version())
        with atomic_output(engine_path) as tmp:
            tmp.write_bytes(built.plan)
        write_metadata(engine_path, metadata)
        if cache_path is not None and built.timing_cache is not None:
            atomic_write_bytes(cache_path, built.timing_cache)
        log.info("wrote %s and %s", engine_path, metadata_path_for(engine_path).name)
        return metadata


    def _source(self, source: Path, source_sha: str, built_from: Path,
                fingerprint: str | None) -> EngineSource:
        built_sha = sha256_file(built_from) if built_from != source else source_sha
        if self._lineage is not None:  # a rebuild from a recorded Q/DQ model keeps its origin
            return dataclasses.replace(self._lineage, built_from=str(built_from),
                                       built_from_sha256=built_sha)
        return EngineSource(onnx=str(source), onnx_sha256=source_sha, built_from=str(built_from),
                            built_from_sha256=built_sha, calibration_fingerprint=fingerprint,
                            calibration_method=self._options.calibration_method)

    @classmethod
    def _rebuild_of(cls, metadata: EngineMetadata, model: Path, *,
                    tensorrt: ModuleType | None, device_probe: DeviceProbe | None) -> EngineBuilder:
        """A builder that makes the engine ``metadata`` describes again, from ``model`` (the
        recorded Q/DQ or ONNX model), with the recorded options and Preprocess."""
        builder = cls(tensorrt=tensorrt, device_probe=device_probe).from_onnx(model)
        builder = builder._with(options=metadata.options, preprocess=metadata.preprocess)
        if Path(metadata.source.built_from) == model:
            builder = builder._with(lineage=metadata.source)
        return builder


def _try_tensorrt(module: ModuleType | None) -> tuple[TensorRT | None, EngineBuildError | None]:
    """(handle, None), or (None, the error to raise) when TensorRT is not installed: the build
    still quantizes before it raises."""
    try:
        return load_tensorrt(module), None
    except EngineBuildError as exc:
        if isinstance(exc.__cause__, ImportError):
            return None, exc
        raise


def _up_to_date(engine_path: Path, source_sha: str, fingerprint: str | None,
                options: BuildOptions, tensorrt_version: str,
                device: DeviceInfo) -> EngineMetadata | None:
    """The existing engine's metadata when nothing that made it changed, else None."""
    if not engine_path.is_file() or not metadata_path_for(engine_path).is_file():
        return None
    try:
        meta = read_metadata(engine_path)
    except (EngineLoadError, InvalidModelError) as exc:
        log.info("rebuilding %s: its sidecar cannot be used (%s)", engine_path, exc)
        return None
    changes = []
    if meta.source.onnx_sha256 != source_sha:
        changes.append("the ONNX model changed")
    if meta.source.calibration_fingerprint != fingerprint:
        changes.append("the calibration changed")
    if meta.options.recipe() != options.recipe():
        changes.append("the build options changed")
    if meta.tensorrt_version != tensorrt_version:
        changes.append(f"TensorRT changed ({meta.tensorrt_version} -> {tensorrt_version})")
    if meta.device.compute_capability != device.compute_capability:
        changes.append(f"the GPU changed ({meta.device.describe()} -> {device.describe()})")
    if not changes and sha256_file(engine_path) != meta.engine_sha256:
        changes.append("the engine file does not match its sidecar")
    if changes:
        log.info("rebuilding %s: %s", engine_path, "; ".join(changes))
        return None
    return meta


def _package_version() -> str:
    from .. import __version__

    return str(__version__)
