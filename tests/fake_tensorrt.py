"""A test double of the ``tensorrt`` Python module: exactly the API xinfer-stream calls.

``FakeTensorRT(version)`` makes a module object (``.module``) that behaves like TensorRT 10.x or
11.x for the names listed in ``xinfer_stream/engines/_trt_api.py`` and nothing else (a test keeps
the two lists equal, and both are checked against the real bindings' names). Every call that
creates, configures, builds or runs (all but the read-only getters) is recorded in ``.calls`` as
``("Class.method", args)``. Signatures and failure modes follow the
TensorRT Python API documentation (10.16 and 11.x):

* ``OnnxParser.parse_from_file(path) -> bool``; on failure ``num_errors``/``get_error(i)`` give
  ``ParserError`` objects (``code()``, ``desc()``, ``node()``, ``node_name()``,
  ``node_operator()``). The double really reads the ONNX file (with ``onnx``): ops in
  ``unsupported_ops`` or in a custom domain fail with ``UNSUPPORTED_NODE``, a file that is not
  ONNX with ``MODEL_DESERIALIZE_FAILED``.
* ``Builder.build_serialized_network(network, config) -> IHostMemory | None``: None (with an
  error logged) when ``fail_build`` is set, when a dynamic input has no optimization profile, when
  FP16/INT8 flags are set on a strongly typed network (10.x), or when the progress monitor's
  ``step_complete`` returns False (cancelled). ``BuilderFlag.FP16``/``INT8`` do not exist on 11.
* ``Runtime.deserialize_cuda_engine(bytes) -> ICudaEngine | None``: None (error logged) for bytes
  that are not a plan of this double, or a plan of another TensorRT version.
* ``Runtime.get_plugin_registry().load_library(path)``: a handle for an existing ELF file, else
  None with an error logged.
* ``IExecutionContext``: ``set_input_shape`` -> False outside the context's profile range;
  ``set_tensor_address`` -> False for an unknown tensor; ``execute_async_v3(stream)`` -> False
  (error logged) when any io tensor has no address or a dynamic input has no shape;
  ``set_optimization_profile_async(k, stream)`` -> False for a profile that does not exist.

The plan the double "serializes" is JSON describing the network (io tensors, profiles, typing,
flags, one layer per ONNX node), so engines round-trip through files like real ones. No GPU work
happens: ``execute_async_v3`` checks and records, it computes nothing.
"""

from __future__ import annotations

import enum
import json
import threading
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

_MAGIC = b"FAKETRT\0"
_CACHE_MAGIC = b"FAKECACHE\0"

_ONNX_DTYPES = {1: "FLOAT", 10: "HALF", 16: "BF16", 3: "INT8", 2: "UINT8", 6: "INT32",
                7: "INT64", 9: "BOOL"}


class FakeTensorRT:
    """One fake ``tensorrt`` module (``.module``) and the knobs and records of the double.

    ``version``: ``"10.x.y"`` or ``"11.x.y"``; ``progress_monitor=False`` makes a TensorRT without
    ``IProgressMonitor`` (the elapsed-time fallback).
    """

    def __init__(self, version: str = "10.16.1.11", *, progress_monitor: bool = True) -> None:
        self.version = version
        self.major = int(version.split(".")[0])
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.unsupported_ops: set[str] = set()
        self.fail_build: str | None = None      # an error message: the next builds return None
        self.device_memory = 12 << 20
        self.live_contexts: list[Any] = []
        self.plugin_libraries: list[str] = []   # loaded through IPluginRegistry.load_library
        self._lock = threading.Lock()
        self.module = _make_module(self, progress_monitor)

    def record(self, name: str, *args: Any) -> None:
        with self._lock:
            self.calls.append((name, args))

    def called(self, name: str) -> list[tuple[Any, ...]]:
        """The argument tuples of every call to ``name`` (``"Class.method"``), in order."""
        return [args for n, args in self.calls if n == name]

    def api_paths(self) -> tuple[set[str], set[str]]:
        """(module-level names, ``Owner.member`` paths) this double implements."""
        bare: set[str] = set()
        members: set[str] = set()
        for name, value in vars(self.module).items():
            if name == "__version__":
                bare.add(name)
            elif not name.startswith("_") and isinstance(value, type):
                bare.add(name)
                members |= _members_of(name, value)
        return bare, members


def _members_of(owner: str, cls: type) -> set[str]:
    out: set[str] = set()
    if issubclass(cls, enum.Enum):
        return {f"{owner}.{m}" for m in cls.__members__}
    for attr, value in vars(cls).items():
        if attr in ("__init__",) and owner in ("ILogger", "IProgressMonitor"):
            out.add(f"{owner}.{attr}")
        if attr.startswith("_"):
            continue
        out.add(f"{owner}.{attr}")
        if isinstance(value, type) and issubclass(value, enum.Enum):
            out |= _members_of(attr, value)
    return out


def _make_module(fake: FakeTensorRT, with_monitor: bool) -> types.ModuleType:
    m = types.ModuleType("tensorrt", "test double of TensorRT's Python API (tests/fake_tensorrt.py)")
    m.__version__ = fake.version
    rec = fake.record

    # -- enums ----------------------------------------------------------------------------
    class Severity(enum.Enum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1
        INT8 = 2
        INT32 = 3
        BOOL = 4
        UINT8 = 5
        BF16 = 7
        INT64 = 8

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 1

    class MemoryPoolType(enum.Enum):
        WORKSPACE = 0

    class ProfilingVerbosity(enum.Enum):
        DETAILED = 2

    class LayerInformationFormat(enum.Enum):
        JSON = 1

    class ErrorCode(enum.Enum):
        SUCCESS = 0
        INTERNAL_ERROR = 1
        MODEL_DESERIALIZE_FAILED = 3
        UNSUPPORTED_NODE = 8

    # BuilderFlag: 11 removed FP16 and INT8 (and the other precision flags); the double has
    # only the members we use, so on 11 it is empty.
    BuilderFlag = enum.Enum("BuilderFlag", {} if fake.major >= 11 else {"FP16": 0, "INT8": 1})

    m.DataType, m.TensorIOMode, m.MemoryPoolType = DataType, TensorIOMode, MemoryPoolType
    m.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
    m.ProfilingVerbosity, m.LayerInformationFormat = ProfilingVerbosity, LayerInformationFormat
    m.BuilderFlag = BuilderFlag

    # -- logging --------------------------------------------------------------------------
    class ILogger:
        def __init__(self) -> None:
            rec("ILogger.__init__")

        def log(self, severity: Any, msg: str) -> None:  # overridden by subclasses
            raise NotImplementedError

    ILogger.Severity = Severity  # type: ignore[attr-defined]
    m.ILogger = ILogger

    def log_error(logger: Any, msg: str) -> None:
        logger.log(Severity.ERROR, msg)

    # -- network and parser -----------------------------------------------------------------
    class ITensor:
        def __init__(self, name: str, shape: Sequence[int], dtype: Any) -> None:
            self._name, self._shape, self._dtype = name, list(shape), dtype

        @property
        def name(self) -> str:
            return self._name

        @property
        def shape(self) -> list[int]:
            return list(self._shape)

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self._strongly_typed = bool(flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            self._inputs: list[ITensor] = []
            self._outputs: list[ITensor] = []
            self._layers: list[dict[str, Any]] = []

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        def get_input(self, index: int) -> ITensor:
            rec("INetworkDefinition.get_input", index)
            return self._inputs[index]

    class ParserError:
        def __init__(self, code: Any, desc: str, node: int, node_name: str, op: str) -> None:
            self._code, self._desc, self._node, self._node_name, self._op = code, desc, node, node_name, op

        def code(self) -> Any:
            return self._code

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._node

        def node_name(self) -> str:
            return self._node_name

        def node_operator(self) -> str:
            return self._op

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: Any) -> None:
            rec("OnnxParser.__init__", network, logger)
            self._network, self._logger = network, logger
            self._errors: list[ParserError] = []

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> ParserError:
            return self._errors[index]

        def parse_from_file(self, model: str) -> bool:
            rec("OnnxParser.parse_from_file", model)
            try:
                proto = onnx.load(model)
            except (OSError, DecodeError) as exc:  # the real parser reports, it does not raise
                self._errors.append(ParserError(ErrorCode.MODEL_DESERIALIZE_FAILED,
                                                f"failed to parse the ONNX model: {exc}", -1, "", ""))
                log_error(self._logger, f"ModelImporter: failed to parse {model}")
                return False
            for i, node in enumerate(proto.graph.node):
                if node.op_type in fake.unsupported_ops or node.domain not in ("", "ai.onnx"):
                    self._errors.append(ParserError(
                        ErrorCode.UNSUPPORTED_NODE,
                        f"No importer registered for op: {node.op_type}", i, node.name, node.op_type))
            if self._errors:
                log_error(self._logger, f"ModelImporter: {len(self._errors)} unsupported node(s)")
                return False
            initializers = {t.name for t in proto.graph.initializer}
            net = self._network
            for vi in proto.graph.input:
                if vi.name not in initializers:
                    net._inputs.append(_tensor(ITensor, DataType, vi))
            net._outputs = [_tensor(ITensor, DataType, vi) for vi in proto.graph.output]
            dq_outputs = {o for n in proto.graph.node if n.op_type == "DequantizeLinear"
                          for o in n.output}
            net._layers = [{"name": n.name or f"node_{i}", "type": n.op_type,
                            "int8": any(x in dq_outputs for x in n.input)}
                           for i, n in enumerate(proto.graph.node)
                           if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
            return True

    m.ITensor, m.INetworkDefinition, m.OnnxParser = ITensor, INetworkDefinition, OnnxParser
    m.ParserError = ParserError

    # -- builder ----------------------------------------------------------------------------
    class IOptimizationProfile:
        def __init__(self) -> None:
            self._shapes: dict[str, tuple[list[int], list[int], list[int]]] = {}

        def set_shape(self, input: str, min: Sequence[int], opt: Sequence[int],
                      max: Sequence[int]) -> None:
            rec("IOptimizationProfile.set_shape", input, tuple(min), tuple(opt), tuple(max))
            self._shapes[input] = (list(min), list(opt), list(max))

    class IHostMemory(bytes):
        @property
        def nbytes(self) -> int:
            return len(self)

    class ITimingCache:
        def __init__(self, entries: int) -> None:
            self._entries = entries

        def serialize(self) -> IHostMemory:
            rec("ITimingCache.serialize")
            return IHostMemory(_CACHE_MAGIC + json.dumps({"version": fake.version,
                                                          "entries": self._entries}).encode())

    class IBuilderConfig:
        def __init__(self) -> None:
            self._flags: set[Any] = set()
            self._profiles: list[IOptimizationProfile] = []
            self._cache: ITimingCache | None = None
            self._pool: dict[Any, int] = {}
            self._level = 3
            self._verbosity: Any = None  # TensorRT's default, LAYER_NAMES_ONLY
            self._monitor: Any = None

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            rec("IBuilderConfig.set_memory_pool_limit", pool, pool_size)
            self._pool[pool] = pool_size

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            rec("IBuilderConfig.add_optimization_profile", profile)
            for lo, opt, hi in profile._shapes.values():
                if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
                    return -1
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache | None:
            rec("IBuilderConfig.create_timing_cache", bytes(serialized_timing_cache))
            data = bytes(serialized_timing_cache)
            if not data:
                return ITimingCache(0)
            if not data.startswith(_CACHE_MAGIC):
                return None
            return ITimingCache(int(json.loads(data[len(_CACHE_MAGIC):])["entries"]))

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            rec("IBuilderConfig.set_timing_cache", cache, ignore_mismatch)
            self._cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self._cache

        @property
        def builder_optimization_level(self) -> int:
            return self._level

        @builder_optimization_level.setter
        def builder_optimization_level(self, value: int) -> None:
            rec("IBuilderConfig.builder_optimization_level", value)
            self._level = value

        @property
        def profiling_verbosity(self) -> Any:
            return self._verbosity

        @profiling_verbosity.setter
        def profiling_verbosity(self, value: Any) -> None:
            rec("IBuilderConfig.profiling_verbosity", value)
            self._verbosity = value

        @property
        def progress_monitor(self) -> Any:
            return self._monitor

        @progress_monitor.setter
        def progress_monitor(self, monitor: Any) -> None:
            rec("IBuilderConfig.progress_monitor", monitor)
            self._monitor = monitor

        def set_flag(self, flag: Any) -> None:
            rec("IBuilderConfig.set_flag", flag)
            self._flags.add(flag)

    class Builder:
        def __init__(self, logger: Any) -> None:
            rec("Builder.__init__", logger)
            self._logger = logger

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            rec("Builder.create_network", flags)
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            rec("Builder.create_builder_config")
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            rec("Builder.create_optimization_profile")
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition,
                                     config: IBuilderConfig) -> IHostMemory | None:
            rec("Builder.build_serialized_network", network, config)
            strongly = network._strongly_typed or fake.major >= 11
            flag_names = sorted(f.name for f in config._flags)
            if fake.fail_build is not None:
                log_error(self._logger, fake.fail_build)
                return None
            if strongly and {"FP16", "INT8"} & set(flag_names):
                log_error(self._logger, "IBuilder::buildSerializedNetwork: Error Code 3: API Usage "
                          "Error (precision flags are not allowed on a strongly typed network)")
                return None
            dynamic = [t.name for t in network._inputs if -1 in t._shape]
            if dynamic and not config._profiles:
                log_error(self._logger, "Network has dynamic or shape inputs, but no optimization "
                          f"profile has been defined ({dynamic}).")
                return None
            for profile in config._profiles:
                for name in dynamic:
                    if name not in profile._shapes:
                        log_error(self._logger, f"optimization profile is missing input {name}")
                        return None
            monitor = config._monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                for phase, steps in (("Graph optimization", 1), ("Tactic selection", 3)):
                    monitor.phase_start(phase, "Building engine", steps)
                    for step in range(steps):
                        if not monitor.step_complete(phase, step):
                            monitor.phase_finish(phase)
                            monitor.phase_finish("Building engine")
                            log_error(self._logger, "The build was cancelled.")
                            return None
                    monitor.phase_finish(phase)
                monitor.phase_finish("Building engine")
            if config._cache is not None:
                config._cache._entries += len(network._layers)
            int8_ok = strongly or "INT8" in flag_names
            fp16_ok = "FP16" in flag_names
            plan = {
                "version": fake.version,
                "inputs": [{"name": t.name, "shape": t._shape, "dtype": t._dtype.name,
                            "profiles": [p._shapes.get(t.name) for p in config._profiles]}
                           for t in network._inputs],
                "outputs": [{"name": t.name, "shape": t._shape, "dtype": t._dtype.name}
                            for t in network._outputs],
                "num_profiles": max(1, len(config._profiles)),
                "layers": [{"name": la["name"], "type": la["type"],
                            "precision": "Int8" if la["int8"] and int8_ok else
                            "Half" if fp16_ok else "Float"} for la in network._layers],
                "detailed": config._verbosity == ProfilingVerbosity.DETAILED,
            }
            return IHostMemory(_MAGIC + json.dumps(plan).encode())

    m.IOptimizationProfile, m.IHostMemory, m.ITimingCache = IOptimizationProfile, IHostMemory, ITimingCache
    m.IBuilderConfig, m.Builder = IBuilderConfig, Builder

    if with_monitor:
        class IProgressMonitor:
            def __init__(self) -> None:
                rec("IProgressMonitor.__init__")

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                raise NotImplementedError

            def step_complete(self, phase_name: str, step: int) -> bool:
                raise NotImplementedError

            def phase_finish(self, phase_name: str) -> None:
                raise NotImplementedError

        m.IProgressMonitor = IProgressMonitor

    # -- runtime ----------------------------------------------------------------------------
    class EngineInspector:
        def __init__(self, plan: dict[str, Any]) -> None:
            self._plan = plan

        def get_engine_information(self, format: Any) -> str:
            rec("EngineInspector.get_engine_information", format)
            if format != LayerInformationFormat.JSON:
                return "\n".join(la["name"] for la in self._plan["layers"])
            if not self._plan["detailed"]:
                return json.dumps({"Layers": [la["name"] for la in self._plan["layers"]]})
            return json.dumps({"Layers": [
                {"Name": la["name"], "LayerType": la["type"],
                 "Inputs": [{"Name": "in", "Format/Datatype": f"Row major linear {la['precision']}"}],
                 "Outputs": [{"Name": "out", "Format/Datatype": f"Row major linear {la['precision']}"}]}
                for la in self._plan["layers"]], "Bindings": []})

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self._engine = engine
            self._profile = 0
            self._shapes: dict[str, list[int]] = {}
            self._addresses: dict[str, int] = {}

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            rec("IExecutionContext.set_optimization_profile_async", profile_index, stream_handle)
            if not 0 <= profile_index < self._engine.num_optimization_profiles:
                log_error(self._engine._logger, f"profile index {profile_index} is out of range")
                return False
            self._profile = profile_index
            return True

        def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
            rec("IExecutionContext.set_input_shape", name, tuple(shape))
            spec = self._engine._io(name)
            if spec is None or spec["mode"] != "INPUT" or len(shape) != len(spec["shape"]):
                log_error(self._engine._logger, f"setInputShape: {name} is not an input of this rank")
                return False
            rng = spec["profiles"][self._profile] if spec.get("profiles") and spec["profiles"][0] else None
            for axis, (d, fixed) in enumerate(zip(shape, spec["shape"])):
                lo, hi = (rng[0][axis], rng[2][axis]) if rng else (fixed, fixed)
                if (fixed != -1 and d != fixed) or not lo <= d <= hi:
                    log_error(self._engine._logger, f"setInputShape: {list(shape)} is outside "
                              f"profile {self._profile} of {name}")
                    return False
            self._shapes[name] = list(shape)
            return True

        def set_tensor_address(self, name: str, memory: int) -> bool:
            rec("IExecutionContext.set_tensor_address", name, memory)
            if self._engine._io(name) is None:
                log_error(self._engine._logger, f"setTensorAddress: no tensor named {name}")
                return False
            self._addresses[name] = memory
            return True

        def get_tensor_shape(self, name: str) -> list[int]:
            spec = self._engine._io(name)
            if spec is None:
                return []
            if spec["mode"] == "INPUT":
                return list(self._shapes.get(name, spec["shape"]))
            batch = next(iter(self._shapes.values()), [-1])[0] if self._shapes else -1
            return [batch if d == -1 else d for d in spec["shape"]]

        def execute_async_v3(self, stream_handle: int) -> bool:
            rec("IExecutionContext.execute_async_v3", stream_handle)
            for spec in self._engine._all_io():
                if spec["name"] not in self._addresses:
                    log_error(self._engine._logger, "IExecutionContext::enqueueV3: Error Code 3: "
                              f"API Usage Error (Address is not set for tensor {spec['name']}. Call "
                              "setTensorAddress before enqueue/execute.)")
                    return False
                if spec["mode"] == "INPUT" and -1 in spec["shape"] and spec["name"] not in self._shapes:
                    log_error(self._engine._logger, f"the shape of {spec['name']} is not set")
                    return False
            return True

    class ICudaEngine:
        def __init__(self, plan: dict[str, Any], logger: Any) -> None:
            self._plan = plan
            self._logger = logger

        def _all_io(self) -> list[dict[str, Any]]:
            return ([{**t, "mode": "INPUT"} for t in self._plan["inputs"]]
                    + [{**t, "mode": "OUTPUT"} for t in self._plan["outputs"]])

        def _io(self, name: str) -> dict[str, Any] | None:
            return next((t for t in self._all_io() if t["name"] == name), None)

        @property
        def num_io_tensors(self) -> int:
            return len(self._all_io())

        def get_tensor_name(self, index: int) -> str:
            return str(self._all_io()[index]["name"])

        def get_tensor_mode(self, name: str) -> Any:
            spec = self._io(name)  # the real one answers TensorIOMode.NONE for a stranger
            return None if spec is None else TensorIOMode[spec["mode"]]

        def get_tensor_shape(self, name: str) -> list[int]:
            spec = self._io(name)
            return [] if spec is None else list(spec["shape"])

        def get_tensor_dtype(self, name: str) -> Any:
            spec = self._io(name)
            return DataType[spec["dtype"]] if spec is not None else DataType.FLOAT

        @property
        def num_optimization_profiles(self) -> int:
            return int(self._plan["num_profiles"])

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[list[int]]:
            spec = self._io(name)
            if spec is None or spec["mode"] != "INPUT" or not spec["profiles"]:
                return []
            return [list(s) for s in spec["profiles"][profile_index]]

        @property
        def device_memory_size_v2(self) -> int:
            return fake.device_memory

        @property
        def num_layers(self) -> int:
            return len(self._plan["layers"])

        def create_execution_context(self) -> IExecutionContext:
            rec("ICudaEngine.create_execution_context")
            ctx = IExecutionContext(self)
            fake.live_contexts.append(ctx)
            return ctx

        def create_engine_inspector(self) -> EngineInspector:
            rec("ICudaEngine.create_engine_inspector")
            return EngineInspector(self._plan)

    class IPluginRegistry:
        """One per double, like TensorRT's process-wide registry. ``load_library`` accepts an
        existing ELF file (recorded in ``fake.plugin_libraries``); anything else is logged as an
        error and answered with None, as ``loadLibrary``'s nullptr."""

        def __init__(self) -> None:
            self.logger: Any = None

        def load_library(self, plugin_path: str) -> Any:
            rec("IPluginRegistry.load_library", plugin_path)
            path = Path(plugin_path)
            if not path.is_file() or not path.read_bytes().startswith(b"\x7fELF"):
                log_error(self.logger, f"IPluginRegistry::loadLibrary: could not load library "
                          f"{plugin_path}: not a shared object")
                return None
            fake.plugin_libraries.append(plugin_path)
            return types.SimpleNamespace(library=plugin_path)

    registry = IPluginRegistry()

    class Runtime:
        def __init__(self, logger: Any) -> None:
            rec("Runtime.__init__", logger)
            self._logger = logger

        def get_plugin_registry(self) -> IPluginRegistry:
            registry.logger = self._logger
            return registry

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
            rec("Runtime.deserialize_cuda_engine", len(serialized_engine))
            data = bytes(serialized_engine)
            if not data.startswith(_MAGIC):
                log_error(self._logger, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                          "(Serialization assertion magicTagRead == kMAGIC_TAG failed.)")
                return None
            try:
                plan = json.loads(data[len(_MAGIC):])
            except ValueError:  # a truncated or corrupted plan: TensorRT logs and returns None
                log_error(self._logger, "IRuntime::deserializeCudaEngine: Error Code 1: "
                          "Serialization (Serialization assertion safeVersionRead failed.)")
                return None
            if plan["version"] != fake.version:
                log_error(self._logger, "IRuntime::deserializeCudaEngine: Error Code 6: API Usage "
                          "Error (The engine plan file is not compatible with this version of "
                          f"TensorRT, expecting library version {fake.version} got "
                          f"{plan['version']}, please rebuild.)")
                return None
            return ICudaEngine(plan, self._logger)

    m.EngineInspector, m.IExecutionContext, m.ICudaEngine, m.Runtime = (
        EngineInspector, IExecutionContext, ICudaEngine, Runtime)
    m.IPluginRegistry = IPluginRegistry
    return m


def _tensor(tensor_cls: Any, dtypes: Any, vi: Any) -> Any:
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
             for d in vi.type.tensor_type.shape.dim]
    return tensor_cls(vi.name, shape, dtypes[_ONNX_DTYPES.get(vi.type.tensor_type.elem_type, "FLOAT")])


def plan_bytes_of(path: str | Path) -> dict[str, Any]:
    """The JSON a double engine file holds (for assertions)."""
    data = Path(path).read_bytes()
    assert data.startswith(_MAGIC), "not an engine written by the double"
    return json.loads(data[len(_MAGIC):])  # type: ignore[no-any-return]
