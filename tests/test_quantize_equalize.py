"""Depthwise input equalization (quantize/_equalize.py): which convolutions, the factors, the
rewritten model computing what it did, and what it buys an INT8 model whose depthwise input's
channels span orders of magnitude (the way YOLOX-Nano's stem output does)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import xinfer_stream.quantize._equalize as equalize_module
import xinfer_stream.quantize._quantize as quantize_module
from xinfer_stream.preprocess import Preprocess
from xinfer_stream.quantize import Calibrator, quantize, read_calibration_cache
from xinfer_stream.quantize._equalize import (HEADROOM, MAX_FACTOR, depthwise_inputs,
                                              equalization_factors, equalize)

RNG = np.random.default_rng(7)
PRE = Preprocess(size=(16, 16), resize="stretch", mean=(127.0,) * 3, std=(64.0,) * 3)
# Output channel c of the stem is scaled by SPREAD[c]; the depthwise weights undo it, so every
# channel matters equally to the output, as a trained network's batch-norm folding leaves it.
SPREAD = np.array([40.0, 20.0, 8.0, 1.0, 0.5, 0.2, 0.08, 0.04], np.float32)


def spread_net(path: Path) -> Path:
    """input [N,3,16,16] -> Conv 3->8 (channel ranges x SPREAD) -> SiLU (Sigmoid, Mul) ->
    depthwise Conv (group 8, weights / SPREAD) -> SiLU -> Conv 8->4 -> output; plus a second
    depthwise Conv on the stem's raw output, which the first SiLU also reads (not eligible)."""
    stem = RNG.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32) * SPREAD[:, None, None, None]
    depthwise = RNG.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32) / SPREAD[:, None, None, None]
    other = RNG.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32)
    head = RNG.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "stem"], ["s"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["s"], ["s_sig"], name="stem_sigmoid"),
        helper.make_node("Mul", ["s", "s_sig"], ["s_act"], name="stem_silu"),
        helper.make_node("Conv", ["s_act", "dw"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["s", "dw_other"], ["d2"], name="dw_other", group=8,
                         pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["d", "d2"], ["d_sum"], name="sum"),
        helper.make_node("Sigmoid", ["d_sum"], ["d_sig"], name="dw_sigmoid"),
        helper.make_node("Mul", ["d_sum", "d_sig"], ["d_act"], name="dw_silu"),
        helper.make_node("Conv", ["d_act", "head"], ["output"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "spread",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4, 16, 16])],
        [numpy_helper.from_array(a, n) for a, n in
         ((stem, "stem"), (depthwise, "dw"), (other * 0.01, "dw_other"), (head, "head"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def frames(count: int) -> list[np.ndarray]:
    return [RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(count)]


def run(model: Path | bytes, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")   # Q/DQ as written
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                   providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


def test_only_depthwise_convolutions_whose_input_is_theirs_alone(tmp_path: Path) -> None:
    model = onnx.load(spread_net(tmp_path / "m.onnx"))
    # dw_other reads 's', which the SiLU reads too; the head is not depthwise.
    assert depthwise_inputs(model) == {"dw": "s_act"}


def test_factors_bring_quiet_channels_up_to_a_share_of_the_largest_range(tmp_path: Path) -> None:
    model = onnx.load(spread_net(tmp_path / "m.onnx"))
    calib = Calibrator(frames(12), PRE, batch_size=5)
    (f,) = equalization_factors(model, calib, name="m").values()
    exposed = onnx.load(tmp_path / "m.onnx")
    exposed.graph.output.append(helper.make_tensor_value_info("s_act", TensorProto.FLOAT, None))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    acts = np.concatenate([session.run(["s_act"], {"input": b})[0] for b in calib.batches()])
    r = np.abs(acts).max(axis=(0, 2, 3))
    np.testing.assert_allclose(f, np.clip(r.max() / (HEADROOM * r), 1.0, MAX_FACTOR), rtol=1e-6)
    quiet = r < r.max() / HEADROOM
    assert quiet.sum() >= 3 and (f[~quiet] == 1.0).all()       # loud channels stay as they are
    uncapped = quiet & (f < MAX_FACTOR)
    np.testing.assert_allclose((r * f)[uncapped], r.max() / HEADROOM, rtol=1e-5)
    assert f.dtype == np.float32 and f.max() > 100


def test_a_convolution_without_a_quiet_channel_is_left_alone(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model = onnx.load(spread_net(tmp_path / "m.onnx"))
    monkeypatch.setattr(equalize_module, "HEADROOM", 1e9)   # no channel is below R / HEADROOM
    assert equalization_factors(model, Calibrator(frames(6), PRE), name="m") == {}


def test_the_equalized_model_computes_what_the_model_did(tmp_path: Path) -> None:
    path = spread_net(tmp_path / "m.onnx")
    model = onnx.load(path)
    factors = equalization_factors(model, Calibrator(frames(8), PRE), name="m")
    assert equalize(model, factors) == ("s_act/equalized",)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.index("Mul", ops.index("Sigmoid")) < ops.index("Conv", 1)   # the Mul before dw
    x = next(Calibrator(frames(3), PRE, batch_size=3).batches())
    np.testing.assert_allclose(run(model.SerializeToString(), x), run(path, x), rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(ValueError, match="do not fit 'dw'"):
        equalize(onnx.load(path), {"dw": np.ones(3, np.float32)})
    assert equalize(onnx.load(path), {}) == ()


@pytest.mark.filterwarnings("ignore:the held-out frames cannot measure this model well")
def test_int8_keeps_the_quiet_channels_with_equalization(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = spread_net(tmp_path / "m.onnx")
    calib, held = Calibrator(frames(24), PRE), frames(8)
    x = next(Calibrator(held, PRE, batch_size=8).batches())
    reference = run(path, x)

    def sqnr(model: Path) -> float:
        error = run(model, x) - reference
        return float(10 * np.log10(np.mean(reference ** 2) / np.mean(error ** 2)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the tiny net's INT8 share and holdout notes
        result = quantize(path, calib, tmp_path / "eq.onnx", method="max", bias_correction="none")
        monkeypatch.setattr(quantize_module, "equalization_factors", lambda *a, **k: {})
        plain = quantize(path, calib, tmp_path / "plain.onnx", method="max",
                         bias_correction="none")
    assert result.equalized == ("s_act/equalized",) and plain.equalized == ()
    assert result.int8_share.fraction == plain.int8_share.fraction == 1.0   # nothing left float
    assert "1 depthwise convolution inputs equalized" in result.summary()
    assert sqnr(tmp_path / "eq.onnx") > sqnr(tmp_path / "plain.onnx") + 10
    # The TensorRT cache is for the FP32 model, which has no equalized tensor.
    cache = read_calibration_cache(result.cache_path)
    assert "s_act/equalized" not in cache.scales and "s" in cache.scales
    # Reused statistics bring their factors: the same model again, no calibration pass.
    monkeypatch.setattr(quantize_module, "equalization_factors",
                        lambda *a, **k: pytest.fail("measured again"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = quantize(path, calib, tmp_path / "again.onnx", method="max",
                         bias_correction="none", statistics=result.statistics)
    assert again.equalized == result.equalized
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "eq.onnx").read_bytes()
