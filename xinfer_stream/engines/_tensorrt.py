"""The thin TensorRT layer: the only module of xinfer-stream that imports ``tensorrt``.

Written to the documented Python API of TensorRT 10.x and 11.x; every name it touches is listed
in ``_trt_api.py`` and checked against the published bindings. It does four things, each a
function over a :class:`TensorRT` handle (the imported module, its parsed version and our
logger):

* :func:`build_plan`: parse an ONNX file, set the optimization profiles, precision, workspace,
  timing cache and progress monitor, and return the serialized engine. Parser errors come back as
  one ``EngineBuildError`` listing every (node, op, reason).
* :func:`deserialize`: a serialized engine -> ``ICudaEngine``, with only the plugin libraries
  the user named loaded (:func:`load_plugins`).
* :func:`engine_io` / :func:`engine_layers`: the io tensors and, through the engine inspector,
  each layer's precision.

The runtime backend (``_trt_backend.py``) drives the execution contexts through the same handle,
so it never imports ``tensorrt`` itself. Tests pass a test double as ``module``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from .._errors import EngineBuildError, EngineLoadError, InvalidModelError, XInferError
from ._build_options import BuildOptions, NetworkInput, ProfileShapes, profile_shapes
from ._metadata import IoTensor
from ._precision import PrecisionPlan, TrtVersion

__all__ = ["BuildProgress", "BuiltPlan", "LayerInfo", "ParseIssue", "ProgressCallback", "TensorRT",
           "build_plan", "deserialize", "engine_io", "engine_layers", "load_plugins",
           "load_tensorrt", "tensorrt_missing_reason"]

log = logging.getLogger("xinfer_stream.tensorrt")

INSTALL_HINT = "pip install 'xinfer-stream[tensorrt]' (or: pip install tensorrt)"


def tensorrt_missing_reason() -> str | None:
    """``None`` when ``import tensorrt`` works, else why not (for messages and test skips)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"TensorRT is not installed ({exc}); {INSTALL_HINT}"
    return None


class TensorRT:
    """The ``tensorrt`` module in use, its version (detected once, here) and our logger.

    One handle serves any number of builds and engines; it holds no GPU resource.
    """

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.version = TrtVersion.parse(module.__version__)
        self.logger = _make_logger(module)

    def recent_errors(self) -> list[str]:
        """TensorRT's error messages since the last :meth:`clear_errors` (newest last)."""
        return list(self.logger.errors())

    def clear_errors(self) -> None:
        self.logger.clear()

    def __repr__(self) -> str:
        return f"<TensorRT {self.version}>"


def load_tensorrt(module: ModuleType | None = None, *,
                  error: type[XInferError] = EngineBuildError) -> TensorRT:
    """A :class:`TensorRT` handle for ``module`` (default: ``import tensorrt``).

    A missing TensorRT raises ``error`` with a one-line message naming what to install.
    """
    if module is None:
        try:
            import tensorrt
        except ImportError as exc:
            raise error(f"TensorRT is not installed ({exc}); {INSTALL_HINT}") from exc
        module = tensorrt
    handle = TensorRT(module)
    log.info("using TensorRT %s", handle.version)
    return handle


# -- logging ------------------------------------------------------------------------------------
_LEVELS = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")
_PY_LEVEL = {"INTERNAL_ERROR": logging.CRITICAL, "ERROR": logging.ERROR,
             "WARNING": logging.WARNING, "INFO": logging.INFO, "VERBOSE": logging.DEBUG}


def _make_logger(trt: ModuleType) -> Any:
    """An ``ILogger`` that forwards to Python logging and keeps the recent errors, so a failed
    call can say what TensorRT said. TensorRT may call it from several threads."""
    severity = trt.ILogger.Severity
    names = {getattr(severity, name): name for name in _LEVELS}

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self._lock = threading.Lock()
            self._errors: deque[str] = deque(maxlen=20)

        def log(self, level: Any, msg: str) -> None:
            name = names.get(level, "ERROR")
            log.log(_PY_LEVEL[name], "TensorRT: %s", msg)
            if name in ("ERROR", "INTERNAL_ERROR"):
                with self._lock:
                    self._errors.append(str(msg))

        def errors(self) -> list[str]:
            with self._lock:
                return list(self._errors)

        def clear(self) -> None:
            with self._lock:
                self._errors.clear()

    return _Logger()


def _said(trt: TensorRT) -> str:
    errors = trt.recent_errors()
    return f" TensorRT said: {' | '.join(errors[-3:])}" if errors else ""


# -- build progress -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildProgress:
    """One progress event. ``kind``: a phase ``start``s (with ``steps``), completes a ``step``,
    ``finish``es; or, where TensorRT offers no progress monitor, an ``elapsed`` tick each second."""

    kind: Literal["start", "step", "finish", "elapsed"]
    phase: str
    parent: str | None
    step: int
    steps: int
    elapsed: float


ProgressCallback = Callable[[BuildProgress], None]


def _make_monitor(trt: ModuleType, callback: ProgressCallback, started: float) -> Any:
    """An ``IProgressMonitor`` reporting to ``callback``; ``cancel()`` stops the build at the
    next step (TensorRT then returns no engine)."""

    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}
            self._cancelled = threading.Event()

        def cancel(self) -> None:
            self._cancelled.set()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._steps[phase_name] = num_steps
            self._emit("start", phase_name, parent_phase, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            self._emit("step", phase_name, None, step + 1, self._steps.get(phase_name, 0))
            return not self._cancelled.is_set()

        def phase_finish(self, phase_name: str) -> None:
            steps = self._steps.pop(phase_name, 0)
            self._emit("finish", phase_name, None, steps, steps)

        def _emit(self, kind: Literal["start", "step", "finish"], phase: str,
                  parent: str | None, step: int, steps: int) -> None:
            try:
                callback(BuildProgress(kind, phase, parent, step, steps,
                                       time.perf_counter() - started))
            except Exception:  # an exception must not cross into TensorRT's C++ threads
                log.exception("the build progress callback failed; stopping the build")
                self._cancelled.set()

    return _Monitor()


class _Ticker:
    """Elapsed-time events each ``period`` seconds from a thread it owns (the fallback when the
    progress monitor is unavailable). ``stop()`` joins the thread."""

    def __init__(self, callback: ProgressCallback, started: float, period: float = 1.0) -> None:
        self._callback = callback
        self._started = started
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xinfer-trt-build-ticker",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._callback(BuildProgress("elapsed", "build", None, 0, 0,
                                             time.perf_counter() - self._started))
            except Exception:
                log.exception("the build progress callback failed; no more elapsed-time ticks")
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- building -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParseIssue:
    """One ONNX parser error: the node (index, name, op type) and TensorRT's reason."""

    node: int
    node_name: str
    op: str
    reason: str
    code: str

    def describe(self) -> str:
        where = f"node {self.node}" if self.node >= 0 else "the model"
        name = f" {self.node_name!r}" if self.node_name else ""
        op = f" ({self.op})" if self.op else ""
        return f"{where}{name}{op}: {self.reason} [{self.code}]"


@dataclass(frozen=True)
class BuiltPlan:
    """A serialized engine and what went into it."""

    plan: bytes
    timing_cache: bytes | None
    inputs: tuple[NetworkInput, ...]
    profiles: ProfileShapes
    precision: PrecisionPlan
    seconds: float


def _parse_issues(parser: Any) -> list[ParseIssue]:
    issues = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        code = str(err.code()).rsplit(".", 1)[-1]
        issues.append(ParseIssue(int(err.node()), str(err.node_name() or ""),
                                 str(err.node_operator() or ""), str(err.desc()), code))
    return issues


def build_plan(trt: TensorRT, onnx_path: str | os.PathLike[str], options: BuildOptions,
               precision: PrecisionPlan, *, timing_cache: bytes | None = None,
               progress: ProgressCallback | None = None) -> BuiltPlan:
    """Parse ``onnx_path`` and build a serialized engine (see the module docstring).

    ``timing_cache``: the bytes of an earlier build's cache (reused when it fits this TensorRT and
    GPU, else ignored with a warning). Raises ``EngineBuildError``; nothing is written.
    """
    m = trt.module
    path = Path(onnx_path)
    started = time.perf_counter()
    trt.clear_errors()
    log.info("building %s: %s", path.name, precision.describe())
    builder = m.Builder(trt.logger)
    flags = 1 << int(m.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if precision.strongly_typed else 0
    network = builder.create_network(flags)
    parser = m.OnnxParser(network, trt.logger)
    if not parser.parse_from_file(str(path)):
        issues = _parse_issues(parser)
        detail = "; ".join(i.describe() for i in issues) or "no error was reported" + _said(trt)
        raise EngineBuildError(
            f"TensorRT {trt.version} could not parse {str(path)!r} ({len(issues)} error(s)): "
            f"{detail}. Check the ops against TensorRT's ONNX operator support, or export the "
            "model at another opset")
    inputs = tuple(NetworkInput(str(t.name), tuple(int(d) for d in t.shape))
                   for t in (network.get_input(i) for i in range(network.num_inputs)))
    shapes = profile_shapes(inputs, options, path.name)

    config = builder.create_builder_config()
    if options.workspace is not None:
        config.set_memory_pool_limit(m.MemoryPoolType.WORKSPACE, options.workspace)
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = options.builder_optimization_level
    config.profiling_verbosity = m.ProfilingVerbosity.DETAILED
    for flag in precision.flags:  # only on 10.x: plan_precision gives no flags on 11
        if flag == "FP16":
            config.set_flag(m.BuilderFlag.FP16)
        elif flag == "INT8":
            config.set_flag(m.BuilderFlag.INT8)
        else:
            raise EngineBuildError(f"unknown builder flag {flag!r} in {precision!r}")
    if shapes:
        for _ in range(options.profiles):
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in shapes.items():
                profile.set_shape(name, lo, opt, hi)
            if config.add_optimization_profile(profile) < 0:
                raise EngineBuildError(f"TensorRT rejected the optimization profile {shapes} of "
                                       f"{path.name!r}.{_said(trt)}")
    cache = _attach_timing_cache(trt, config, timing_cache)

    monitor, ticker = None, None
    if progress is not None:
        if hasattr(m, "IProgressMonitor"):
            monitor = _make_monitor(m, progress, started)
            config.progress_monitor = monitor
        else:
            ticker = _Ticker(progress, started)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if ticker is not None:
            ticker.stop()
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT {trt.version} failed to build an engine from {str(path)!r} "
            f"({precision.describe()}).{_said(trt) or ' It gave no reason; rerun with logging at DEBUG.'}")
    plan = bytes(memoryview(serialized))
    if len(plan) != serialized.nbytes:
        raise EngineBuildError(f"the serialized engine reads as {len(plan)} bytes but TensorRT "
                               f"reports {serialized.nbytes}")
    cache_bytes = bytes(memoryview(config.get_timing_cache().serialize())) if cache is not None else None
    seconds = time.perf_counter() - started
    log.info("built %s in %.1f s (%d bytes)", path.name, seconds, len(plan))
    return BuiltPlan(plan, cache_bytes, inputs, shapes, precision, seconds)


def _attach_timing_cache(trt: TensorRT, config: Any, previous: bytes | None) -> Any:
    """Give the config a timing cache, starting from ``previous`` when it fits."""
    cache = config.create_timing_cache(previous or b"")
    if cache is None and previous:
        log.warning("the timing cache could not be read (%s); starting a new one",
                    _said(trt).strip() or "no reason given")
        cache = config.create_timing_cache(b"")
    if cache is None:
        raise EngineBuildError(f"TensorRT could not create a timing cache.{_said(trt)}")
    if not config.set_timing_cache(cache, False):
        log.warning("the timing cache was made by another TensorRT or GPU; starting a new one")
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            raise EngineBuildError(f"TensorRT could not attach a timing cache.{_said(trt)}")
    return cache


# -- plugins ------------------------------------------------------------------------------------
# Libraries loaded per tensorrt module: TensorRT's plugin registry is process-wide, and a library
# stays loaded for the life of the process (unloading code that another engine's layers may run
# is unsafe), so each path is loaded once.
_plugins_loaded: weakref.WeakKeyDictionary[ModuleType, set[str]] = weakref.WeakKeyDictionary()
_plugins_lock = threading.Lock()


def load_plugins(trt: TensorRT, runtime: Any, paths: Sequence[str | os.PathLike[str]]) -> None:
    """Load the plugin libraries named in ``paths`` into ``runtime``'s registry, and nothing else.

    A plugin library is native code that runs in this process. So an engine is deserialized with
    no plugin library but those its user names: never one the engine (or its sidecar) names,
    never TensorRT's bundled ones (``init_libnvinfer_plugins`` is not called), and host code
    embedded in an engine is not allowed to run (``engine_host_code_allowed`` keeps its default,
    False). Each path must be an existing file, given to TensorRT as an absolute path so the
    dynamic loader never searches its library path for a bare name. ``InvalidModelError`` for a
    missing file; ``EngineLoadError`` when TensorRT refuses the library.
    """
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise InvalidModelError(f"TensorRT plugin library not found: {str(path)!r}; pass the "
                                    "path of the plugin's shared library (.so) file")
        resolved = str(path.resolve())
        with _plugins_lock:
            loaded = _plugins_loaded.setdefault(trt.module, set())
            if resolved in loaded:
                continue
            try:
                handle = runtime.get_plugin_registry().load_library(resolved)
            except Exception as exc:  # documented to return null; a binding may raise instead
                raise EngineLoadError(
                    f"TensorRT {trt.version} could not load the plugin library {resolved!r} "
                    f"({type(exc).__name__}: {exc}).{_said(trt)} Check it was built for this "
                    "TensorRT and CUDA") from exc
            if handle is None:
                raise EngineLoadError(
                    f"TensorRT {trt.version} could not load the plugin library {resolved!r}."
                    f"{_said(trt)} Check it is a plugin library built for this TensorRT and CUDA")
            loaded.add(resolved)
            log.info("loaded TensorRT plugin library %s", resolved)


# -- engines ------------------------------------------------------------------------------------
def deserialize(trt: TensorRT, plan: bytes, what: str, *,
                plugins: Sequence[str | os.PathLike[str]] = ()) -> tuple[Any, Any]:
    """``(runtime, engine)`` from a serialized engine, with the ``plugins`` libraries loaded
    first (see :func:`load_plugins`; none by default). The caller owns both and must keep the
    ``Runtime`` alive as long as the ``ICudaEngine`` (TensorRT's rule). ``InvalidModelError``
    when TensorRT refuses the bytes (corrupt, or made by another TensorRT version)."""
    trt.clear_errors()
    runtime = trt.module.Runtime(trt.logger)
    load_plugins(trt, runtime, plugins)
    try:
        engine = runtime.deserialize_cuda_engine(plan)
    except Exception as exc:  # documented to return None, but bytes we did not write can do worse
        raise InvalidModelError(
            f"TensorRT {trt.version} could not deserialize {what} ({type(exc).__name__}: {exc})."
            f"{_said(trt)} The file may be truncated or built by another TensorRT version; "
            "rebuild it") from exc
    if engine is None:
        raise InvalidModelError(
            f"TensorRT {trt.version} could not deserialize {what}.{_said(trt)} The file may be "
            "truncated or built by another TensorRT version; rebuild it")
    return runtime, engine


def _dtype_names(m: ModuleType) -> dict[Any, str]:
    dt = m.DataType
    return {dt.FLOAT: "float32", dt.HALF: "float16", dt.BF16: "bfloat16", dt.INT8: "int8",
            dt.UINT8: "uint8", dt.INT32: "int32", dt.INT64: "int64", dt.BOOL: "bool"}


def engine_io(trt: TensorRT, engine: Any) -> tuple[tuple[IoTensor, ...], tuple[IoTensor, ...]]:
    """(inputs, outputs) of an engine, in TensorRT's order; dynamic dims as None, and profile 0's
    (min, opt, max) for dynamic inputs."""
    m = trt.module
    dtypes = _dtype_names(m)
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dims = tuple(int(d) for d in engine.get_tensor_shape(name))
        shape = tuple(None if d < 0 else d for d in dims)
        raw_dtype = engine.get_tensor_dtype(name)
        dtype = dtypes.get(raw_dtype, str(raw_dtype))
        mode = engine.get_tensor_mode(name)
        if mode == m.TensorIOMode.INPUT:
            profile = None
            if -1 in dims:
                lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
                profile = (tuple(int(v) for v in lo), tuple(int(v) for v in opt),
                           tuple(int(v) for v in hi))
            inputs.append(IoTensor(name, shape, dtype, profile))
        elif mode == m.TensorIOMode.OUTPUT:
            outputs.append(IoTensor(name, shape, dtype))
    return tuple(inputs), tuple(outputs)


@dataclass(frozen=True)
class LayerInfo:
    """One engine layer as the engine inspector describes it; ``precision`` is read from its
    tensors' ``Format/Datatype`` (``int8``, ``fp16``, ``fp32``... or ``?`` where not recorded)."""

    name: str
    kind: str
    precision: str


def _precision_of(format_datatype: str) -> str:
    text = format_datatype.lower()
    for key, name in (("int8", "int8"), ("fp8", "fp8"), ("int4", "int4"), ("bf16", "bf16"),
                      ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32"),
                      ("int32", "int32"), ("int64", "int64"), ("bool", "bool")):
        if key in text:
            return name
    return "?"


def engine_layers(trt: TensorRT, engine: Any) -> list[LayerInfo]:
    """Every layer with its precision, from ``EngineInspector`` JSON. Engines built without
    ``ProfilingVerbosity.DETAILED`` list names only; their precision reads ``?``."""
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.module.LayerInformationFormat.JSON)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineLoadError(f"TensorRT's engine inspector returned no JSON ({exc}): "
                              f"{text[:120]!r}") from exc
    layers = []
    for layer in data.get("Layers", []) if isinstance(data, dict) else []:
        if isinstance(layer, str):
            layers.append(LayerInfo(layer, "?", "?"))
            continue
        tensors = [*(layer.get("Inputs") or []), *(layer.get("Outputs") or [])]
        # A layer's compute precision shows first in its inputs (a Q/DQ-fused conv reads int8).
        known = [p for t in tensors if isinstance(t, dict)
                 if (p := _precision_of(str(t.get("Format/Datatype", "")))) != "?"]
        layers.append(LayerInfo(str(layer.get("Name", "?")), str(layer.get("LayerType", "?")),
                                known[0] if known else "?"))
    return layers
