"""Every TensorRT Python name xinfer-stream uses, in one list, checked against the real bindings.

``_tensorrt.py`` and ``_trt_backend.py`` may touch only the names listed here; the test double in
``tests/fake_tensorrt.py`` implements exactly these names (a test keeps the two equal), and
``tests/test_trt_api_names.py`` checks every entry against the names that the published
``tensorrt-cu12-bindings`` (10.x) and ``tensorrt-cu13-bindings`` (11.x) wheels register, as read
from the wheels by ``tools/check_trt_api.py`` into ``tools/trt_api/tensorrt-<version>.txt``.

A name is written as the bindings register it: ``Owner.member`` with the class or enum that
registers the member (``Severity.WARNING``, not ``Logger.WARNING``), a bare name for a module
attribute. Attributes of our own subclasses (``IProgressMonitor.phase_start``) are the methods
TensorRT calls on them. ``only=10`` marks what TensorRT 11 removed; our code reaches those names
only on 10.x, behind the version policy in ``_precision.py``.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TRT_NAMES", "TrtName", "missing_names", "names_for_major", "read_name_list"]


@dataclass(frozen=True)
class TrtName:
    """One TensorRT name we use; ``only`` is the one major version that has it (None: all)."""

    path: str
    only: int | None = None
    why: str = ""


TRT_NAMES: tuple[TrtName, ...] = (
    # -- the module ---------------------------------------------------------------------------
    TrtName("__version__", why="detect the major version once"),
    # -- logging ------------------------------------------------------------------------------
    TrtName("ILogger", why="our logger subclasses it to route messages and keep errors"),
    TrtName("ILogger.__init__", why="our subclass's __init__ must call it"),
    TrtName("ILogger.log", why="TensorRT calls log(severity, message) on our subclass"),
    TrtName("Severity.INTERNAL_ERROR"),
    TrtName("Severity.ERROR"),
    TrtName("Severity.WARNING"),
    TrtName("Severity.INFO"),
    TrtName("Severity.VERBOSE"),
    TrtName("ILogger.Severity", why="reached as trt.ILogger.Severity"),
    # -- building -----------------------------------------------------------------------------
    TrtName("Builder"),
    TrtName("Builder.create_network"),
    TrtName("Builder.create_builder_config"),
    TrtName("Builder.create_optimization_profile"),
    TrtName("Builder.build_serialized_network"),
    TrtName("NetworkDefinitionCreationFlag.STRONGLY_TYPED"),
    TrtName("INetworkDefinition.num_inputs"),
    TrtName("INetworkDefinition.get_input"),
    TrtName("ITensor.name"),
    TrtName("ITensor.shape"),
    TrtName("OnnxParser"),
    TrtName("OnnxParser.parse_from_file"),
    TrtName("OnnxParser.num_errors"),
    TrtName("OnnxParser.get_error"),
    TrtName("ParserError.code"),
    TrtName("ParserError.desc"),
    TrtName("ParserError.node"),
    TrtName("ParserError.node_name"),
    TrtName("ParserError.node_operator"),
    TrtName("IBuilderConfig.set_memory_pool_limit"),
    TrtName("MemoryPoolType.WORKSPACE"),
    TrtName("IBuilderConfig.add_optimization_profile"),
    TrtName("IOptimizationProfile.set_shape"),
    TrtName("IBuilderConfig.create_timing_cache"),
    TrtName("IBuilderConfig.set_timing_cache"),
    TrtName("IBuilderConfig.get_timing_cache"),
    TrtName("ITimingCache.serialize"),
    TrtName("IBuilderConfig.builder_optimization_level"),
    TrtName("IBuilderConfig.profiling_verbosity", why="DETAILED, so inspect shows layer precisions"),
    TrtName("ProfilingVerbosity.DETAILED"),
    TrtName("IBuilderConfig.progress_monitor"),
    TrtName("IProgressMonitor", why="our progress monitor subclasses it"),
    TrtName("IProgressMonitor.__init__", why="our subclass's __init__ must call it"),
    TrtName("IProgressMonitor.phase_start"),
    TrtName("IProgressMonitor.step_complete"),
    TrtName("IProgressMonitor.phase_finish"),
    TrtName("IBuilderConfig.set_flag", why="FP16/INT8 flags for weakly typed networks on 10.x"),
    TrtName("BuilderFlag.FP16", only=10, why="removed in 11: precision comes from the model"),
    TrtName("BuilderFlag.INT8", only=10, why="removed in 11: precision comes from the model"),
    TrtName("IHostMemory.nbytes"),
    # -- running ------------------------------------------------------------------------------
    TrtName("Runtime"),
    TrtName("Runtime.deserialize_cuda_engine"),
    TrtName("Runtime.get_plugin_registry", why="load the plugin libraries the user names, only"),
    TrtName("IPluginRegistry.load_library"),
    TrtName("ICudaEngine.num_io_tensors"),
    TrtName("ICudaEngine.get_tensor_name"),
    TrtName("ICudaEngine.get_tensor_mode"),
    TrtName("ICudaEngine.get_tensor_shape"),
    TrtName("ICudaEngine.get_tensor_dtype"),
    TrtName("ICudaEngine.num_optimization_profiles"),
    TrtName("ICudaEngine.get_tensor_profile_shape"),
    TrtName("ICudaEngine.device_memory_size_v2", why="device_memory_size is gone in 11"),
    TrtName("ICudaEngine.num_layers"),
    TrtName("ICudaEngine.create_execution_context"),
    TrtName("ICudaEngine.create_engine_inspector"),
    TrtName("TensorIOMode.INPUT"),
    TrtName("TensorIOMode.OUTPUT"),
    TrtName("DataType.FLOAT"),
    TrtName("DataType.HALF"),
    TrtName("DataType.BF16"),
    TrtName("DataType.INT8"),
    TrtName("DataType.UINT8"),
    TrtName("DataType.INT32"),
    TrtName("DataType.INT64"),
    TrtName("DataType.BOOL"),
    TrtName("IExecutionContext.set_optimization_profile_async"),
    TrtName("IExecutionContext.set_input_shape"),
    TrtName("IExecutionContext.set_tensor_address"),
    TrtName("IExecutionContext.get_tensor_shape"),
    TrtName("IExecutionContext.execute_async_v3"),
    TrtName("EngineInspector.get_engine_information"),
    TrtName("LayerInformationFormat.JSON"),
)


def names_for_major(major: int) -> frozenset[str]:
    """The paths we use on TensorRT ``major``."""
    return frozenset(n.path for n in TRT_NAMES if n.only is None or n.only == major)


_LIST_NAME = re.compile(r"tensorrt-(\d+)\.[\d.]+(?:post\d+)?\.txt$")


def read_name_list(path: str | os.PathLike[str]) -> tuple[int, frozenset[str]]:
    """(major version, names) of one list written by ``tools/check_trt_api.py``."""
    p = Path(path)
    m = _LIST_NAME.search(p.name)
    if m is None:
        raise ValueError(f"{p.name!r} is not a name list (expected tensorrt-<version>.txt)")
    names = frozenset(line.strip() for line in p.read_text().splitlines()
                      if line.strip() and not line.startswith("#"))
    return int(m.group(1)), names


def _registered(path: str, names: frozenset[str]) -> bool:
    """``a.b.c`` is registered when each step is: ``a.b`` and ``b.c`` are listed members, or the
    right-hand side is itself a registered type (a nested enum such as ``ILogger.Severity``)."""
    parts = path.split(".")
    if len(parts) == 1:
        return path in names
    # The extraction lists a nested enum under its own name (``Severity``), not its scope.
    return all(f"{a}.{b}" in names or (b in names and b[:1].isupper())
               for a, b in itertools.pairwise(parts))


def missing_names(lists_dir: str | os.PathLike[str]) -> list[str]:
    """Problems found comparing :data:`TRT_NAMES` with every list in ``lists_dir`` (empty: none).

    A problem is a name we use that a version lacks, or a name marked ``only=10`` that 11 still
    has (the mark, and the version gate behind it, would then be wrong).
    """
    problems: list[str] = []
    lists = sorted(Path(lists_dir).glob("tensorrt-*.txt"))
    if not lists:
        return [f"no name lists in {str(lists_dir)!r}; run tools/check_trt_api.py"]
    for list_path in lists:
        major, names = read_name_list(list_path)
        for entry in TRT_NAMES:
            present = _registered(entry.path, names)
            if (entry.only is None or entry.only == major) and not present:
                problems.append(f"{entry.path}: used on TensorRT {major}.x but missing from "
                                f"{list_path.name}")
            elif entry.only is not None and entry.only != major and present:
                problems.append(f"{entry.path}: marked only={entry.only} but {list_path.name} "
                                "has it; widen the entry and its version gate")
    return problems
