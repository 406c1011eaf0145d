"""Models and engines from someone else: what they may make us read or run.

- ONNX external data: a tensor's data location may not escape the model's folder (``../``, an
  absolute path, a symbolic link pointing out), in the graph or in a node attribute. Refused with
  an ``InvalidModelError`` naming the tensor and the location, by ``xs.load``, the CLI and the
  engine builder, before ONNX's checker, ONNX Runtime or TensorRT reads anything (so the check
  holds whatever their versions do).
- TensorRT plugins: an engine is deserialized with no plugin library loaded unless the user
  names it (``plugins=``, CLI ``--plugin``); what is named is loaded by absolute path, once.
  Checked with the TensorRT test double, which records every call.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import xinfer_stream as xs
from xinfer_stream.cli import main
from xinfer_stream.engines import _load, _open, open_backend
from xinfer_stream.engines._builder import EngineBuilder
from xinfer_stream.engines._load import load_engine

from .fake_tensorrt import FakeTensorRT
from .trt_testing import h100, tiny_model

REPO = Path(__file__).resolve().parent.parent
PRE = xs.Preprocess(size=(4, 4))
WEIGHTS = np.arange(12, dtype=np.float32).reshape(3, 4)


def external(tensor: onnx.TensorProto, location: str) -> onnx.TensorProto:
    """Mark ``tensor`` as stored in ``location`` (48 bytes from offset 0)."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(WEIGHTS.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def model_with_external_weights(path: Path, location: str, *, in_attribute: bool = False) -> Path:
    """input x [N,3,4,4] -> GlobalAveragePool -> Flatten -> MatMul(w [3,4]) -> y [N,4], with w's
    data in ``location`` (as an initializer, or as a Constant node's attribute)."""
    w = external(numpy_helper.from_array(WEIGHTS, "w"), location)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["y"])]
    initializers = [w]
    if in_attribute:
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=w))
        initializers = []
    graph = helper.make_graph(
        nodes, "ext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(the model's folder, a secret file beside that folder)."""
    models = tmp_path / "models"
    models.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(WEIGHTS.tobytes())
    return models, secret


def _escape_cases(models: Path, secret: Path) -> dict[str, str]:
    (models / "link.bin").symlink_to(secret)
    return {"parent": "../secret.bin", "absolute": str(secret), "symlink": "link.bin",
            "deep": "sub/../../secret.bin", "backslashes": "..\\secret.bin"}


CASES = ["parent", "absolute", "symlink", "deep", "backslashes"]


@pytest.fixture
def nothing_else_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our check must come first: neither ONNX's checker nor ONNX Runtime is reached."""
    def unreachable(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was handed on before its external data was checked")

    monkeypatch.setattr(onnx.checker, "check_model", unreachable)
    monkeypatch.setattr(_open, "OnnxRuntimeBackend", unreachable)


@pytest.mark.usefixtures("nothing_else_reads_it")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("in_attribute", [False, True], ids=["initializer", "attribute"])
def test_external_data_outside_the_folder_is_refused(case: str, in_attribute: bool,
                                                     layout: tuple[Path, Path]) -> None:
    models, secret = layout
    location = _escape_cases(models, secret)[case]
    model = model_with_external_weights(models / "m.onnx", location, in_attribute=in_attribute)

    async def open_() -> None:
        async with xs.load(model, preprocess=PRE):
            pass

    with pytest.raises(xs.InvalidModelError) as info:
        asyncio.run(open_())
    message = str(info.value)
    assert repr(str(model)) in message and "tensor 'w'" in message and repr(location) in message
    assert "only read external data from files inside its own folder" in message
    assert "put the data file next to it" in message


@pytest.mark.parametrize("case", ["parent", "absolute"])
def test_the_cli_and_the_engine_builder_refuse_it_too(case: str, layout: tuple[Path, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    models, secret = layout
    location = _escape_cases(models, secret)[case]
    model = model_with_external_weights(models / "m.onnx", location)
    code = main(["run", str(model), str(REPO / "xinfer_stream/_assets/bottle-detection.mp4"),
                 "--preprocess", str(PRE.save(models / "p.json"))])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert "m.onnx" in err and "tensor 'w'" in err
    fake = FakeTensorRT()
    with pytest.raises(xs.InvalidModelError, match="tensor 'w'"):
        EngineBuilder(tensorrt=fake.module, device_probe=h100).from_onnx(model)
    assert fake.called("OnnxParser.parse_from_file") == []


def test_external_data_inside_the_folder_loads_and_runs(layout: tuple[Path, Path]) -> None:
    models, _ = layout
    (models / "weights").mkdir()
    (models / "weights" / "w.bin").write_bytes(WEIGHTS.tobytes())
    model = model_with_external_weights(models / "m.onnx", "weights/w.bin")

    async def run() -> xs.Result:
        async with xs.load(model, preprocess=PRE) as engine:
            return await engine.infer(np.full((4, 4, 3), 2, np.uint8))

    result = asyncio.run(run())
    np.testing.assert_allclose(result.outputs["y"], [2.0 * WEIGHTS.sum(axis=0)])


# -- TensorRT plugin libraries ----------------------------------------------------------------
@pytest.fixture
def fake() -> FakeTensorRT:
    return FakeTensorRT("10.16.1.11")


@pytest.fixture
def engine(fake: FakeTensorRT, tmp_path: Path) -> Path:
    path = tmp_path / "m.engine"
    (EngineBuilder(tensorrt=fake.module, device_probe=h100).from_onnx(tiny_model(tmp_path / "m.onnx"))
     .with_max_batch_size(4).build_and_save(path))
    fake.calls.clear()
    return path


def plugin_library(path: Path) -> Path:
    path.write_bytes(b"\x7fELF" + bytes(60))   # what the double takes for a shared object
    return path


def test_no_plugin_library_is_loaded_unless_named(fake: FakeTensorRT, engine: Path) -> None:
    with load_engine(engine, tensorrt=fake.module, device_probe=h100):
        pass
    assert fake.called("IPluginRegistry.load_library") == [] and fake.plugin_libraries == []
    assert len(fake.called("Runtime.deserialize_cuda_engine")) == 1


def test_named_plugins_load_by_absolute_path_before_the_engine(fake: FakeTensorRT, engine: Path,
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    first = plugin_library(tmp_path / "libfirst.so")
    plugin_library(tmp_path / "libsecond.so")
    monkeypatch.chdir(tmp_path)
    with load_engine(engine, tensorrt=fake.module, device_probe=h100,
                     plugins=[first, "libsecond.so"]):
        pass
    names = [name for name, _ in fake.calls]
    assert names.index("IPluginRegistry.load_library") < names.index("Runtime.deserialize_cuda_engine")
    # A bare name is never handed to the dynamic loader (it would search its library path).
    assert fake.plugin_libraries == [str(first), str(tmp_path / "libsecond.so")]
    # A library stays loaded: a second engine naming it does not load it again.
    with load_engine(engine, tensorrt=fake.module, device_probe=h100, plugins=[first]):
        pass
    assert fake.plugin_libraries == [str(first), str(tmp_path / "libsecond.so")]


def test_a_missing_plugin_is_refused_before_tensorrt(fake: FakeTensorRT, engine: Path,
                                                     tmp_path: Path) -> None:
    with pytest.raises(xs.InvalidModelError, match=r"plugin library not found: .*libgone\.so"):
        load_engine(engine, tensorrt=fake.module, device_probe=h100, plugins=[tmp_path / "libgone.so"])
    assert fake.called("IPluginRegistry.load_library") == []
    assert fake.called("Runtime.deserialize_cuda_engine") == []


def test_a_file_that_is_not_a_plugin_library(fake: FakeTensorRT, engine: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.so"
    notes.write_text("not a library")
    with pytest.raises(xs.EngineLoadError, match=r"could not load the plugin library .*notes\.so.* "
                                                 r"TensorRT said: .*not a shared object") as info:
        load_engine(engine, tensorrt=fake.module, device_probe=h100, plugins=[notes])
    assert not isinstance(info.value, ValueError)
    assert fake.called("Runtime.deserialize_cuda_engine") == []


@pytest.fixture
def as_tensorrt(fake: FakeTensorRT, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTensorRT]:
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    monkeypatch.setattr(_load, "current_device", h100)
    yield fake


def test_xs_load_and_the_cli_pass_plugins_through(as_tensorrt: FakeTensorRT, engine: Path,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fake = as_tensorrt
    lib = plugin_library(tmp_path / "libmine.so")

    async def open_() -> None:
        # No warm-up: that would run the engine on a GPU, which the double has not got.
        async with xs.load(engine, preprocess=xs.Preprocess(size=(16, 16)), plugins=[lib],
                           warmup=False) as loaded:
            assert loaded.backend.kind == "tensorrt"

    asyncio.run(open_())
    assert fake.plugin_libraries == [str(lib)]
    code = main(["run", str(engine), str(REPO / "xinfer_stream/_assets/bottle-detection.mp4"),
                 "--plugin", str(tmp_path / "libgone.so")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "libgone.so" in err and "Traceback" not in err


def test_plugins_are_only_for_engines(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="plugins= applies to TensorRT engines"):
        open_backend(model, plugins=[tmp_path / "lib.so"])


def test_nothing_in_the_package_loads_native_code_on_its_own() -> None:
    """No implicit plugin loading anywhere: TensorRT's bundled plugins, host code embedded in
    engines, or a shared library opened with ctypes."""
    found = []
    for path in sorted((REPO / "xinfer_stream").rglob("*.py")):
        text = path.read_text()
        for needle in ("init_libnvinfer_plugins", "engine_host_code_allowed", "CDLL(", "cdll.",
                       "LoadLibrary", "load_library(", "ctypes.util.find_library"):
            if needle in text:
                found.append(f"{path.relative_to(REPO)}: {needle}")
    assert found == ["xinfer_stream/engines/_tensorrt.py: init_libnvinfer_plugins",
                     "xinfer_stream/engines/_tensorrt.py: engine_host_code_allowed",
                     "xinfer_stream/engines/_tensorrt.py: load_library("]
    # ...and those two names appear only in the docstring that says they are not used.
    source = (REPO / "xinfer_stream/engines/_tensorrt.py").read_text()
    assert source.count("init_libnvinfer_plugins") == 1 and source.count("engine_host_code_allowed") == 1
    assert source.count("load_library(") == 1
