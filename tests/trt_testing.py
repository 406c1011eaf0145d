"""Helpers for the TensorRT tests: tiny ONNX models, a fake calibrator and quantizer, fixtures.

Test modules import the fixtures by their function names (``fake_fixture``...) so that the
fixture names (``fake``...) stay free for test parameters.

The models are made with ``onnx.helper`` in ``tmp_path``: a Conv classifier with a dynamic or
fixed batch (optionally dynamic H/W), and its Q/DQ twin (what ``xinfer_stream.quantize`` makes
of it: symmetric INT8 Q/DQ on the Conv's activation and weight inputs).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from xinfer_stream.engines._metadata import DeviceInfo
from xinfer_stream.preprocess import Preprocess

from .fake_tensorrt import FakeTensorRT

H100 = DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0))
A100 = DeviceInfo("NVIDIA A100-SXM4-80GB", (8, 0))
PREPROCESS = Preprocess(size=(16, 16), mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))


def h100(ordinal: int) -> DeviceInfo:
    return H100


def tiny_model(path: Path, *, batch: int | None = None, dynamic_hw: bool = False,
               qdq: bool = False, fp16: bool = False, custom_op: bool = False) -> Path:
    """input [N,3,16,16] -> Conv(3->4, 3x3) -> Relu -> GlobalAveragePool -> Flatten -> logits
    [N,4]. ``qdq``: Q/DQ on the Conv inputs (INT8 weights); ``custom_op``: the Relu becomes an op
    of a custom domain, which TensorRT's parser rejects."""
    n: Any = batch if batch is not None else "N"
    hw: list[Any] = ["H", "W"] if dynamic_hw else [16, 16]
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    x = helper.make_tensor_value_info("input", elem, [n, 3, *hw])
    y = helper.make_tensor_value_info("logits", elem, [n, 4])
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16 if fp16 else np.float32)
    nodes = []
    if not qdq:
        inits = [numpy_helper.from_array(w, "w")]
        conv_in, conv_w = "input", "w"
    else:
        inits = [numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
                 numpy_helper.from_array(np.array(0, np.int8), "zero"),
                 numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
                 numpy_helper.from_array(np.zeros(4, np.int8), "w_zero"),
                 numpy_helper.from_array(np.clip(np.round(w / 0.01), -127, 127).astype(np.int8),
                                         "w_q")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "x_scale", "zero"], ["xq"], name="q_in"),
                  helper.make_node("DequantizeLinear", ["xq", "x_scale", "zero"], ["xdq"], name="dq_in"),
                  helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["wdq"],
                                   name="dq_w", axis=0)]
        conv_in, conv_w = "xdq", "wdq"
    nodes += [helper.make_node("Conv", [conv_in, conv_w], ["c"], name="conv", pads=[1, 1, 1, 1]),
              (helper.make_node("FancyAct", ["c"], ["r"], name="act", domain="custom.ops")
               if custom_op else helper.make_node("Relu", ["c"], ["r"], name="act")),
              helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
              helper.make_node("Flatten", ["p"], ["logits"], name="flatten")]
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    opsets = [helper.make_opsetid("", 13)]
    if custom_op:
        opsets.append(helper.make_opsetid("custom.ops", 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="xinfer-stream tests")
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@dataclass
class FakeCalibrator:
    """Stands in for ``xinfer_stream.quantize.Calibrator``: what the builder reads of one."""

    fingerprint: str = "f" * 64
    preprocess: Preprocess | None = PREPROCESS


class FakeQuantizer:
    """Stands in for ``quantize(model, calibrator, output, method=...)``: writes the Q/DQ twin of
    the tiny model and records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, Any, Path, str]] = []

    def __call__(self, model: Any, calibrator: Any, output: Any, *, method: str) -> Any:
        self.calls.append((Path(model), calibrator, Path(output), method))
        tiny_model(Path(output), qdq=True)

        @dataclass
        class Result:
            model_path: Path

        return Result(Path(output))


@pytest.fixture(name="fake", params=["10.16.1.11", "11.4.0.106"], ids=["trt10", "trt11"])
def fake_fixture(request: pytest.FixtureRequest) -> FakeTensorRT:
    """A 10-style and an 11-style TensorRT double."""
    return FakeTensorRT(request.param)


@pytest.fixture(name="fake10")
def fake10_fixture() -> FakeTensorRT:
    return FakeTensorRT("10.16.1.11")


@pytest.fixture(name="fake11")
def fake11_fixture() -> FakeTensorRT:
    return FakeTensorRT("11.4.0.106")


@pytest.fixture(name="model")
def model_fixture(tmp_path: Path) -> Path:
    return tiny_model(tmp_path / "tiny.onnx")


@pytest.fixture(name="no_tensorrt")
def no_tensorrt_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``import tensorrt`` fails, as on a machine without TensorRT."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    yield
