"""Every TensorRT name we use exists in the published bindings; the test double has exactly them.

The name lists in tools/trt_api/ were read from the real wheels (tensorrt-cu12-bindings 10.3.0 and
10.16.1.11, tensorrt-cu13-bindings 11.4.0.106) by tools/check_trt_api.py, without importing them.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xinfer_stream.engines import _trt_api
from xinfer_stream.engines._trt_api import (
    TRT_NAMES,
    TrtName,
    missing_names,
    names_for_major,
    read_name_list,
)

from .fake_tensorrt import FakeTensorRT

REPO = Path(__file__).resolve().parent.parent
LISTS = REPO / "tools" / "trt_api"
ENGINES = REPO / "xinfer_stream" / "engines"


def _lists() -> dict[str, tuple[int, frozenset[str]]]:
    return {p.name: read_name_list(p) for p in sorted(LISTS.glob("tensorrt-*.txt"))}


def test_the_committed_lists_cover_10_and_11() -> None:
    majors = {major for major, _ in _lists().values()}
    assert majors == {10, 11}
    for name, (_, names) in _lists().items():
        # The lists are real extractions, not stubs: core classes with their members are there.
        assert {"Builder.build_serialized_network", "ICudaEngine.num_io_tensors",
                "IExecutionContext.execute_async_v3"} <= names, name
        assert len(names) > 1000, name


def test_every_name_we_use_is_registered_by_every_version() -> None:
    assert missing_names(LISTS) == []


def test_the_lists_confirm_what_tensorrt_11_removed() -> None:
    """The facts the version policy rests on, read from the bindings themselves."""
    for name, (major, names) in _lists().items():
        removed = {"BuilderFlag.FP16", "BuilderFlag.INT8", "IBuilderConfig.int8_calibrator",
                   "ICudaEngine.device_memory_size", "IInt8EntropyCalibrator2"}
        if major == 10:
            assert removed <= names, name
        else:
            assert not removed & names, name
        assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in names


def test_missing_names_reports_a_name_no_version_has(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_trt_api, "TRT_NAMES", (*TRT_NAMES, TrtName("ICudaEngine.no_such_thing")))
    problems = missing_names(LISTS)
    assert len(problems) == len(_lists())
    assert all(p.startswith("ICudaEngine.no_such_thing: used on TensorRT") for p in problems)


def test_missing_names_reports_a_10_only_name_used_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    unmarked = tuple(TrtName(n.path) if n.path == "BuilderFlag.FP16" else n for n in TRT_NAMES)
    monkeypatch.setattr(_trt_api, "TRT_NAMES", unmarked)
    assert missing_names(LISTS) == [
        "BuilderFlag.FP16: used on TensorRT 11.x but missing from tensorrt-11.4.0.106.txt"]


def test_missing_names_reports_a_wrong_only_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    marked = tuple(TrtName(n.path, only=10) if n.path == "Builder.create_network" else n
                   for n in TRT_NAMES)
    monkeypatch.setattr(_trt_api, "TRT_NAMES", marked)
    assert missing_names(LISTS) == [
        ("Builder.create_network: marked only=10 but tensorrt-11.4.0.106.txt has it; widen the "
         "entry and its version gate")]


def test_no_lists_is_a_problem(tmp_path: Path) -> None:
    assert missing_names(tmp_path) == [
        f"no name lists in {str(tmp_path)!r}; run tools/check_trt_api.py"]


@pytest.mark.parametrize("version", ["10.16.1.11", "11.4.0.106"])
def test_the_double_implements_exactly_the_names_we_use(version: str) -> None:
    fake = FakeTensorRT(version)
    bare, members = fake.api_paths()
    used = names_for_major(fake.major)
    assert members == {n for n in used if "." in n}
    assert {n for n in used if "." not in n} <= bare


@pytest.mark.parametrize("version", ["10.16.1.11", "11.4.0.106"])
def test_the_double_defines_nothing_the_real_module_lacks(version: str) -> None:
    fake = FakeTensorRT(version)
    bare, _ = fake.api_paths()
    real = next(names for name, (major, names) in _lists().items()
                if name == f"tensorrt-{version}.txt")
    assert bare <= real


def _chain(node: ast.expr) -> list[str]:
    """``a.b.c`` -> ["a", "b", "c"] (empty when the root is not a plain name)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    return [node.id, *parts] if isinstance(node, ast.Name) else []


def _module_reads(path: Path) -> set[str]:
    """Names our TensorRT layer reads off the ``tensorrt`` module: chains rooted at ``m`` (the
    module) or ``trt`` (the module, or the handle whose ``.module`` is it)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute) or isinstance(getattr(node, "ctx", None), ast.Store):
            continue
        parts = _chain(node)
        if parts[:2] == ["trt", "module"]:
            parts = parts[2:]
        elif (parts[:1] == ["trt"] and len(parts) > 1 and parts[1][:1].isupper()) or parts[:1] == ["m"]:
            parts = parts[1:]
        else:
            continue
        if parts:
            found.add(".".join(parts[:2]))
    return found


def test_module_attributes_read_in_our_code_are_listed() -> None:
    """Every ``Class`` / ``Enum.MEMBER`` the TensorRT layer reads off the module is in TRT_NAMES
    (methods called on TensorRT objects are covered by the double, which has nothing else)."""
    listed = {n.path for n in TRT_NAMES}
    owners = {p.split(".")[0] for p in listed}
    reads = _module_reads(ENGINES / "_tensorrt.py")
    assert {"Builder", "BuilderFlag.FP16", "ILogger.Severity", "LayerInformationFormat.JSON"} <= reads
    assert {r for r in reads if r not in listed and r not in owners} == set()


def test_only_the_tensorrt_layer_imports_tensorrt() -> None:
    importers = []
    for path in (REPO / "xinfer_stream").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "tensorrt" or n.startswith("tensorrt.") for n in names):
                importers.append(path.relative_to(REPO).as_posix())
    assert sorted(set(importers)) == ["xinfer_stream/engines/_tensorrt.py"]


@pytest.fixture
def tool() -> Iterator[Any]:
    spec = importlib.util.spec_from_file_location("check_trt_api", REPO / "tools" / "check_trt_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_trt_api"] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["check_trt_api"]


def test_the_tool_checks_offline(tool: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert tool.main(["--check"]) == 0
    assert "ok: every TensorRT name we use is registered" in capsys.readouterr().out


def test_the_tool_reads_demangled_callees(tool: Any) -> None:
    head = tool._callee_head(
        "pybind11::class_<nvinfer1::v_1_0::IProgressMonitor, tensorrt::bindCore(pybind11::module_&)"
        "::PyProgressMonitor>& pybind11::class_<nvinfer1::v_1_0::IProgressMonitor, "
        "tensorrt::bindCore(pybind11::module_&)::PyProgressMonitor>::def<void (nvinfer1::v_1_0::"
        "IProgressMonitor::*)(char const*, char const*, int) noexcept, char const*>(char const*, "
        "void (nvinfer1::v_1_0::IProgressMonitor::*&&)(char const*, char const*, int) noexcept, "
        "char const* const&) [clone .isra.0]")
    assert head.endswith("::def<void (nvinfer1::v_1_0::IProgressMonitor::*)(char const*, char "
                         "const*, int) noexcept, char const*>")
    assert tool._cpp_last("nvinfer1::v_1_0::IProgressMonitor, tensorrt::Py") == "IProgressMonitor"
    assert tool._reg64("r8d") == "r8" and tool._reg64("esi") == "rsi" and tool._reg64("r15") == "r15"
