"""Empirical bias correction, the layer-by-layer runner, per-tensor method choice and the FP16 cast,
on tiny models built with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from xinfer_stream._errors import CalibrationError
from xinfer_stream.preprocess import preprocess_batch
from xinfer_stream.quantize import Calibrator, quantize
from xinfer_stream.quantize._float16 import cast_to_float16
from xinfer_stream.quantize._layerwise import run_layerwise
from xinfer_stream.quantize._methods import amax_auto, expected_error
from xinfer_stream.quantize._statistics import Histogram

from .test_quantize import PRE, _conv_net, _frames


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _prepared(path: Path) -> onnx.ModelProto:
    from xinfer_stream.quantize._graph import load_model, prepare

    return prepare(load_model(path))


def test_layerwise_run_equals_a_plain_run_and_offsets_reach_later_layers(tmp_path: Path) -> None:
    model = _prepared(_conv_net(tmp_path / "tiny.onnx"))
    frames = preprocess_batch(PRE, _frames(6))
    batches = [frames[:4], frames[4:]]
    seen: dict[str, list[np.ndarray]] = {}

    def record(node: onnx.NodeProto, values: list[np.ndarray]) -> None:
        seen[node.name] = values

    run_layerwise(model, ["conv1", "fc"], batches, record)
    plain = _session(model).run(["logits"], {"input": frames})[0]
    np.testing.assert_allclose(np.concatenate(seen["fc"]), plain, rtol=1e-5, atol=1e-5)

    # An offset added after conv1 is what a larger conv1 bias computes, downstream included.
    offset = np.linspace(-0.5, 0.5, seen["conv1"][0].shape[1]).astype(np.float32)
    shifted: dict[str, list[np.ndarray]] = {}

    def shift(node: onnx.NodeProto, values: list[np.ndarray]) -> np.ndarray | None:
        shifted[node.name] = values
        return offset.reshape(1, -1, 1, 1) if node.name == "conv1" else None

    run_layerwise(model, ["conv1", "fc"], batches, shift)
    biased = onnx.ModelProto()
    biased.CopyFrom(model)
    conv1 = next(n for n in biased.graph.node if n.name == "conv1")
    bias = next(t for t in biased.graph.initializer if t.name == conv1.input[2])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + offset, bias.name))
    expected = _session(biased).run(["logits"], {"input": frames})[0]
    np.testing.assert_allclose(np.concatenate(shifted["fc"]), expected, rtol=1e-5, atol=1e-5)


def test_empirical_correction_matches_the_fp32_output_means(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    calib = _frames(24)
    batch = preprocess_batch(PRE, calib)
    reference = _session(source).run(["logits"], {"input": batch})[0].mean(axis=0)
    shift = {}
    for mode in ("weights", "empirical"):
        result = quantize(source, Calibrator(calib, PRE, batch_size=8), tmp_path / f"{mode}.onnx",
                          bias_correction=mode, correction_frames=24)
        assert result.bias_correction == mode and "fc" in result.bias_corrected_nodes
        logits = _session(result.model_path).run(["logits"], {"input": batch})[0]
        shift[mode] = float(np.abs(logits.mean(axis=0) - reference).max())
    # On the correction frames the last layer's mean is the FP32 one, to float rounding.
    assert shift["empirical"] < 1e-4 < shift["weights"]
    with pytest.raises(ValueError, match="bias_correction must be"):
        quantize(source, Calibrator(calib, PRE), tmp_path / "x.onnx", bias_correction="always")
    with pytest.raises(ValueError, match="correction_frames"):
        quantize(source, Calibrator(calib, PRE), tmp_path / "x.onnx", correction_frames=0)


def test_spread_picks_evenly_including_both_ends() -> None:
    frames = _frames(10)
    picked = Calibrator(frames, PRE).spread(4)
    assert picked.num_frames == 4
    hashes = Calibrator([frames[i] for i in (0, 3, 6, 9)], PRE).frame_hashes()
    assert picked.frame_hashes() == hashes
    assert Calibrator(frames, PRE).spread(50).num_frames == 10


def test_expected_error_matches_monte_carlo_at_any_threshold() -> None:
    rng = np.random.default_rng(3)
    values = np.abs(rng.standard_normal(400_000))
    counts = np.histogram(values, bins=2048, range=(0.0, float(values.max())))[0]
    hist = Histogram(counts.astype(np.int64), float(values.max()))
    for threshold in (1.234567, 2.5, 3.9):           # not bin edges
        step = threshold / 127
        simulated = np.mean((values - np.clip(np.round(values / step), 0, 127) * step) ** 2)
        assert expected_error(hist, np.array([threshold]))[0] == pytest.approx(simulated, rel=0.03)
    candidates = {"max": float(values.max()), "a": 3.9, "b": 2.5, "c": 0.5}
    errors = expected_error(hist, np.array(list(candidates.values())))
    best = list(candidates)[int(np.argmin(errors))]
    assert best != "c" and amax_auto(hist, candidates) == (candidates[best], best)


def test_auto_method_records_the_choice_per_tensor(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    result = quantize(source, Calibrator(_frames(12), PRE), tmp_path / "auto.onnx", method="auto")
    assert all(t.method.split(":")[0] == "auto" for t in result.tensors)
    assert {t.method.split(":")[1] for t in result.tensors} <= {"max", "percentile", "entropy", "mse"}


def test_float16_casts_the_rest_keeps_io_types_and_runs(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    calib, held = _frames(16), _frames(8)
    fp32 = quantize(source, Calibrator(calib, PRE), tmp_path / "a.onnx")
    half = quantize(source, Calibrator(calib, PRE), tmp_path / "b.onnx", float16=True)
    model = onnx.load(half.model_path)
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == 19
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    assert onnx.TensorProto.FLOAT16 in types.values()
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = initializers[node.input[1]]
            assert scale.min() >= np.finfo(np.float16).tiny
    # No Cast between a DequantizeLinear and the layer it feeds.
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Cast":
            assert producer.get(node.input[0]) is None or \
                producer[node.input[0]].op_type != "DequantizeLinear"
    batch = preprocess_batch(PRE, held)
    a = _session(fp32.model_path).run(["logits"], {"input": batch})[0]
    b = _session(half.model_path).run(["logits"], {"input": batch})[0]
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, a, atol=0.05 * float(np.abs(a).max()))


def test_float16_refuses_scales_it_cannot_represent(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    result = quantize(source, Calibrator(_frames(8), PRE), tmp_path / "a.onnx")
    model = onnx.load(result.model_path)
    scale = next(t for t in model.graph.initializer if t.name.endswith("_scale") and not t.dims)
    scale.CopyFrom(numpy_helper.from_array(np.asarray(1e-9, np.float32), scale.name))
    with pytest.raises(CalibrationError, match="smallest normal"):
        cast_to_float16(model)
