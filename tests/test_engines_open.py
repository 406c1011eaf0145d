"""Opening a model and resolving its Preprocess (``engines/_open.py``): each step on its own."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import xinfer_stream as xs
from xinfer_stream.engines import (EngineBuilder, OnnxRuntimeBackend, backend_kind,
                                   check_model_file, find_preprocess, is_torch_module,
                                   open_backend, resolve_preprocess)

from .fake_tensorrt import FakeTensorRT
from .trt_testing import PREPROCESS, h100, tiny_model


@pytest.mark.parametrize(("name", "kind"), [
    ("m.onnx", "onnxruntime"), ("M.ONNX", "onnxruntime"), ("m.engine", "tensorrt"),
    ("m.plan", "tensorrt"), ("m.trt", "tensorrt"), ("m.pt", "torch"), ("m.pt2", "torch"),
    ("m.ts", "torch"), ("m.pth", "torch"), ("m.bin", None), ("m", None)])
def test_backend_kind_by_suffix(name: str, kind: str | None) -> None:
    assert backend_kind(Path(name)) == kind
    assert backend_kind(name, "tensorrt") == "tensorrt"       # named: the suffix does not matter
    assert backend_kind(name, "tflite") is None


def test_torch_modules_are_recognised_without_importing_torch() -> None:
    Module = type("Module", (), {"__module__": "torch.nn.modules.module"})
    Net = type("Net", (Module,), {})
    assert is_torch_module(Net()) and backend_kind(Net()) == "torch"
    assert not is_torch_module(object()) and backend_kind(object()) is None


def test_missing_file_unknown_type_and_plugins(tmp_path: Path) -> None:
    with pytest.raises(xs.InvalidModelError, match="model file not found"):
        check_model_file(tmp_path / "nope.onnx")
    with pytest.raises(xs.InvalidModelError, match="is not a file"):
        open_backend(tmp_path)
    other = tmp_path / "m.bin"
    other.write_bytes(b"weights")
    with pytest.raises(xs.EngineLoadError, match=r"unknown model type '.bin' \(backend='auto'\)"):
        open_backend(other)
    with pytest.raises(ValueError, match="plugins= applies to TensorRT engines"):
        open_backend(tiny_model(tmp_path / "m.onnx"), plugins=["lib.so"])


def test_an_onnx_model_opens_on_onnx_runtime(tmp_path: Path) -> None:
    with open_backend(tiny_model(tmp_path / "m.onnx")) as backend:
        assert isinstance(backend, OnnxRuntimeBackend)
        assert backend.inputs[0].shape[1:] == (3, 16, 16)


def test_preprocess_resolution_order(tmp_path: Path) -> None:
    """The explicit one, else the sidecar, else an engine's metadata, else the error."""
    model = tiny_model(tmp_path / "m.onnx")
    assert find_preprocess(model) is None
    with pytest.raises(xs.PreprocessNotFoundError) as missing:
        resolve_preprocess(model)
    assert isinstance(missing.value, xs.EngineLoadError)
    assert missing.value.model == model
    assert missing.value.sidecar == tmp_path / "m.preprocess.json"
    assert "preprocess=xs.Preprocess(...)" in str(missing.value)
    copy = pickle.loads(pickle.dumps(missing.value))
    assert str(copy) == str(missing.value) and copy.sidecar == missing.value.sidecar

    PREPROCESS.save(tmp_path / "m.preprocess.json")
    assert resolve_preprocess(model) == PREPROCESS
    other = xs.Preprocess(size=(16, 16), resize="letterbox")
    assert resolve_preprocess(model, other) == other

    fake = FakeTensorRT("10.16.1.11")
    engine = tmp_path / "e.engine"
    (EngineBuilder(tensorrt=fake.module, device_probe=h100).from_onnx(model)
     .with_max_batch_size(2).build_and_save(engine))
    assert resolve_preprocess(engine) == PREPROCESS            # recorded in its metadata
    assert find_preprocess(tmp_path / "e.plan") is None
