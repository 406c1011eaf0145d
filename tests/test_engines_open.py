"""Opening a model and resolving its Preprocess (``engines/_open.py``): each step on its own."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import xinfer_stream as xs
from xinfer_stream.engines import (EngineBuilder, OnnxRuntimeBackend, backend_kind,
                                   check_model_file, find_preprocess, is_torch_module,
                                   open_backend, resolve_preprocess)

from .fake_tensorrt import FakeTensorRT
from .test_detect import constant_detector
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


ULTRALYTICS = {"author": "Ultralytics", "docs": "https://docs.ultralytics.com", "task": "detect",
               "imgsz": "[64, 96]", "stride": "32", "names": "{0: 'person', 1: 'car'}"}


@pytest.mark.parametrize("change, found", [
    ({}, True),
    ({"author": "someone", "docs": "https://docs.ultralytics.com"}, True),   # docs name it
    ({"task": "classify"}, False), ({"author": "someone", "docs": ""}, False),
    ({"imgsz": "640"}, False), ({"imgsz": "[64, x]"}, False),
])
def test_an_ultralytics_detector_describes_its_own_input(tmp_path: Path, change: dict[str, str],
                                                         found: bool) -> None:
    meta = {**ULTRALYTICS, **change}
    model = constant_detector(tmp_path / "yolov8.onnx", np.zeros((1, 6, 126), np.float32), (64, 96), meta)
    want = xs.Preprocess.for_detector("yolov8", (64, 96)) if found else None
    assert find_preprocess(model) == want
    if found:
        assert want == xs.Preprocess((64, 96), "letterbox", std=(255.0,) * 3, pad_value=114,
                                     letterbox_align="center")
        # The sidecar still comes first.
        PREPROCESS.save(tmp_path / "yolov8.preprocess.json")
        assert find_preprocess(model) == PREPROCESS


def test_a_half_precision_ultralytics_export_gets_float16_input(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["output0"])], "half",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT16, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT16, [1, 3, 32, 32])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    for key, value in {**ULTRALYTICS, "imgsz": "[32, 32]"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, tmp_path / "half.onnx")
    assert find_preprocess(tmp_path / "half.onnx") == xs.Preprocess.for_detector(
        "yolov8", (32, 32), dtype="float16")


def test_for_detector_gives_each_familys_documented_input() -> None:
    yolox = xs.Preprocess.for_detector("yolox", (416, 416))
    assert (yolox.resize, yolox.letterbox_align, yolox.pad, yolox.color, yolox.mean, yolox.std) == (
        "letterbox", "top-left", (114.0,) * 3, "bgr", (0.0,) * 3, (1.0,) * 3)
    v8 = xs.Preprocess.for_detector("yolov8", (640, 480), layout="nhwc", dtype="float16")
    assert (v8.size, v8.letterbox_align, v8.pad, v8.color, v8.std, v8.layout, v8.dtype) == (
        (640, 480), "center", (114.0,) * 3, "rgb", (255.0,) * 3, "nhwc", "float16")
    with pytest.raises(ValueError, match="'yolov8' and 'yolox'.*'ssd'"):
        xs.Preprocess.for_detector("ssd", (64, 64))
