"""Quantization on tiny models built with onnx.helper: Q/DQ form, placement, artifacts, bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import xinfer_stream.quantize as xq
from xinfer_stream._errors import CalibrationError, InvalidCalibrationInput
from xinfer_stream.preprocess import Preprocess, preprocess_path_for
from xinfer_stream.quantize import CalibrationWarning, Calibrator, quantize, read_calibration_cache
from xinfer_stream.quantize._calibrator import fixed_batch

RNG = np.random.default_rng(1234)


def _conv_net(path: Path, *, opset: int = 11, gemm_trans_b: int = 1) -> Path:
    """input [N,3,8,8] -> Conv -> Relu -> Conv -> Add(residual) -> MaxPool -> GAP -> Flatten
    -> Gemm -> logits [N,10]; plus a ConvTranspose side branch summed into the output."""
    w1 = RNG.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    w1[5] = 0.0                                          # a dead output channel
    b1 = RNG.normal(0, 0.1, 8).astype(np.float32)
    w2 = RNG.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32)
    fc = RNG.normal(0, 0.2, (10, 8) if gemm_trans_b else (8, 10)).astype(np.float32)
    fcb = np.zeros(10, np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["res"], name="residual"),
        helper.make_node("MaxPool", ["res"], ["mp"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["mp"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], name="fc", transB=gemm_trans_b),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(a, n) for a, n in
         ((w1, "w1"), (b1, "b1"), (w2, "w2"), (fc, "fc"), (fcb, "fcb"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _matmul_net(path: Path) -> Path:
    """x [N,6] -> MatMul(W [6,4]) -> ConvTranspose-free head: MatMul with a constant (4,3)."""
    w = RNG.normal(0, 0.5, (6, 4)).astype(np.float32)
    w[:, 2] *= 20.0                                       # one output column much larger
    v = RNG.normal(0, 0.5, (4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("MatMul", ["hr", "v"], ["y"], name="mm2")]
    graph = helper.make_graph(
        nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


def _deconv_net(path: Path) -> Path:
    w = RNG.normal(0, 0.3, (4, 6, 3, 3)).astype(np.float32)   # (C_in, C_out, k, k)
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="deconv")]
    graph = helper.make_graph(
        nodes, "deconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 7, 7])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


def _frames(count: int, h: int = 12, w: int = 16) -> list[np.ndarray]:
    return [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(count)]


PRE = Preprocess(size=(8, 8), resize="stretch", mean=(127.0,) * 3, std=(64.0,) * 3)


def _qdq_nodes(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    return q, dq


def _run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feed)[0])


# -- the Q/DQ model ---------------------------------------------------------------------------
def test_qdq_model_is_valid_symmetric_int8_and_runs(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx", opset=11)
    out = tmp_path / "tiny.int8.onnx"
    result = quantize(source, Calibrator(_frames(24), PRE, batch_size=5), out)

    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == 13       # raised from 11
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q, dq = _qdq_nodes(model)
    assert q and dq
    for node in q + dq:
        assert len(node.input) == 3
        zero = inits[node.input[2]]
        assert zero.dtype == np.int8 and not zero.any()
        assert (inits[node.input[1]] > 0).all() and np.isfinite(inits[node.input[1]]).all()
    axes = {n.input[0]: {a.name: a.i for a in n.attribute}.get("axis") for n in dq}
    weight_dq = {n.output[0]: n for n in dq if n.input[0] in inits}
    assert len(weight_dq) == 3                                    # conv1, conv2, fc weights
    for node in weight_dq.values():
        assert inits[node.input[0]].dtype == np.int8
        assert np.abs(inits[node.input[0]]).max() <= 127
    consumers = {i: n for n in model.graph.node for i in n.input}
    conv_w = [n for n in weight_dq.values() if consumers[n.output[0]].op_type == "Conv"]
    assert all(axes[n.input[0]] == 0 for n in conv_w)
    gemm_w = [n for n in weight_dq.values() if consumers[n.output[0]].op_type == "Gemm"]
    assert axes[gemm_w[0].input[0]] == 0                          # transB=1: (N, K)
    # No integer-only ops, and nothing quantizes a bias.
    assert not any(n.op_type in ("QLinearConv", "ConvInteger", "MatMulInteger")
                   for n in model.graph.node)
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert inits[conv1.input[2]].dtype == np.float32             # bias float (corrected)

    x = RNG.normal(0, 1, (4, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = _run(out, {"input": x})
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.98
    assert result.num_frames == 24 and len(result.fingerprint) == 64


def test_trt_placement_quantizes_residual_skip_and_pooling(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    out = tmp_path / "q.onnx"
    result = quantize(source, Calibrator(_frames(8), PRE), out, placement="trt")
    model = onnx.load(out)
    by_name = {n.name: n for n in model.graph.node}
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    residual = by_name["residual"]
    assert residual.input[0] == "c2"                              # conv output: not quantized
    assert residual.input[1] in dq_outputs                        # skip branch: quantized
    assert by_name["pool"].input[0] in dq_outputs
    assert by_name["gap"].input[0] in dq_outputs
    # r1 feeds conv2 and the residual Add: one shared Q/DQ pair.
    q_of_r1 = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r1"]
    assert len(q_of_r1) == 1
    assert "residual" in result.quantized_nodes

    weighted = quantize(source, Calibrator(_frames(8), PRE), tmp_path / "w.onnx",
                        placement="weighted")
    assert set(weighted.quantized_nodes) == {"conv1", "conv2", "fc"}


def test_matmul_weight_is_per_output_column(tmp_path: Path) -> None:
    source = _matmul_net(tmp_path / "mm.onnx")
    out = tmp_path / "mm.int8.onnx"
    samples = [RNG.normal(0, 1, 6).astype(np.float32) for _ in range(32)]
    quantize(source, Calibrator.from_arrays(samples, batch_size=8), out)
    model = onnx.load(out)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weight_dq = [n for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                 and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim == 2]
    assert len(weight_dq) == 2
    for node in weight_dq:
        axis = {a.name: a.i for a in node.attribute}["axis"]
        assert axis == 1
        assert inits[node.input[1]].shape == (inits[node.input[0]].shape[1],)
    # The large column got its own, larger scale; the others keep fine resolution.
    first = next(n for n in weight_dq if inits[n.input[0]].shape == (6, 4))
    scales = inits[first.input[1]]
    assert scales[2] > 10 * np.delete(scales, 2).max()
    x = np.stack(samples[:8])
    ref = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(_run(out, {"x": x}), ref, rtol=0.1, atol=0.1)


def test_conv_transpose_weight_axis_is_one(tmp_path: Path) -> None:
    source = _deconv_net(tmp_path / "d.onnx")
    out = tmp_path / "d.int8.onnx"
    quantize(source, Calibrator.from_arrays([RNG.normal(0, 1, (4, 5, 5)).astype(np.float32)
                                             for _ in range(4)]), out)
    model = onnx.load(out)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "DequantizeLinear"
                and inits.get(n.input[0]) is not None and inits[n.input[0]].ndim == 4)
    assert {a.name: a.i for a in node.attribute}["axis"] == 1
    assert inits[node.input[1]].shape == (6,)


def test_exclude_by_op_type_and_node_name(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    out = tmp_path / "q.onnx"
    result = quantize(source, Calibrator(_frames(6), PRE), out, exclude=["Gemm", "conv1"])
    assert set(result.excluded_nodes) == {"fc", "conv1"}
    model = onnx.load(out)
    by_name = {n.name: n for n in model.graph.node}
    assert by_name["fc"].input[1] == "fc"                         # float weight, untouched
    assert by_name["conv1"].input[:2] == ["input", "w1"]
    report = json.loads(result.report_path.read_text())
    assert report["excluded_nodes"] == ["conv1", "fc"] or set(report["excluded_nodes"]) == {"conv1", "fc"}
    assert report["exclude"] == ["Gemm", "conv1"]
    with pytest.raises(ValueError, match="not a regular expression"):
        quantize(source, Calibrator(_frames(2), PRE), tmp_path / "x.onnx", exclude=["("])


def test_reused_statistics_give_the_same_model_as_calibrating_again(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    calib = Calibrator(_frames(6), PRE)
    first = quantize(source, calib, tmp_path / "all.onnx", method="entropy")
    assert first.statistics is not None and first.statistics.fingerprint == calib.fingerprint
    # conv2 holds most of the MACs: keeping it float leaves less than half of them in INT8.
    with pytest.warns(CalibrationWarning, match=r"only 27.4% of the MACs .* conv2 \(Conv"):
        fresh = quantize(source, calib, tmp_path / "fresh.onnx", method="entropy",
                         exclude=["conv2"])
    with pytest.warns(CalibrationWarning, match="excluded by the pattern 'conv2'"):
        reused = quantize(source, calib, tmp_path / "reused.onnx", method="entropy",
                          exclude=["conv2"], statistics=first.statistics)
    assert reused.model_path.read_bytes() == fresh.model_path.read_bytes()
    assert json.loads(reused.report_path.read_text())["statistics_reused"] is True
    assert json.loads(fresh.report_path.read_text())["statistics_reused"] is False


def test_statistics_of_other_frames_or_lacking_histograms_are_refused(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    calib = Calibrator(_frames(4), PRE)
    ranges_only = quantize(source, calib, tmp_path / "max.onnx", method="max").statistics
    with pytest.raises(ValueError, match="measured on other frames"):
        quantize(source, Calibrator(_frames(4), PRE), tmp_path / "x.onnx",
                 statistics=ranges_only)
    with pytest.raises(ValueError, match=r"lacks .*\(histogram\)"):
        quantize(source, calib, tmp_path / "x.onnx", method="entropy", statistics=ranges_only)
    no_means = quantize(source, calib, tmp_path / "plain.onnx", bias_correction="none").statistics
    with pytest.raises(ValueError, match=r"lacks .*\(channel means\)"):
        quantize(source, calib, tmp_path / "x.onnx", statistics=no_means)
    assert not (tmp_path / "x.onnx").exists()


# -- artifacts --------------------------------------------------------------------------------
def test_artifacts_report_cache_and_preprocess(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    out = tmp_path / "model.int8.onnx"
    calib, hold = _frames(10), _frames(6)
    seen: list[tuple[str, int, int]] = []
    # A random tiny net is unsure of every frame: the report says top-1 agreement cannot tell.
    with pytest.warns(CalibrationWarning, match="unsure on 6 of 6 held-out frames"):
        result = quantize(source, Calibrator(calib, PRE, batch_size=4), out, method="percentile",
                          percentile=99.9, holdout=Calibrator(hold, PRE),
                          progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["tiny.onnx", "model.int8.onnx", "model.int8.json", "model.int8.calib.cache",
         "model.int8.preprocess.json"])
    statistics = [s for s in seen if s[0] == "statistics"]
    correction = [s for s in seen if s[0] == "bias correction"]
    assert statistics[-1] == ("statistics", 10, 10) and len(statistics) == 3
    assert correction == [("bias correction", k, 6) for k in range(1, 7)]   # 3 layers, 2 passes
    assert seen == statistics + correction
    assert Preprocess.load(preprocess_path_for(out)) == PRE

    report = json.loads((tmp_path / "model.int8.json").read_text())
    assert report["method"] == "percentile" and report["percentile"] == 99.9
    assert report["calibration"]["frames"] == 10
    assert report["calibration"]["fingerprint"] == Calibrator(calib, PRE).fingerprint
    assert report["model"]["sha256"] == __import__("hashlib").sha256(out.read_bytes()).hexdigest()
    names = [a["name"] for a in report["activations"]]
    assert "input" in names and "r1" in names
    for entry in report["activations"]:
        assert entry["scale"] == pytest.approx(max(entry["amax"], 0) / 127, rel=1e-6) or entry["amax"] == 0
    accuracy = report["accuracy"]
    assert accuracy["frames"] == 6 and 0.0 <= accuracy["top1_agreement"] <= 1.0
    assert accuracy["notes"] and "unsure" in accuracy["notes"][0]
    # Per-layer SQNR is a diagnostic of a copy exposing the layers, not the accuracy.
    assert accuracy["worst_tensors"] == []
    diagnostics = report["diagnostics"]
    assert diagnostics["frames"] == 6 and 0 < len(diagnostics["worst_tensors"]) <= 10
    sqnr = [t["sqnr_db"] for t in diagnostics["worst_tensors"]]
    assert sqnr == sorted(sqnr)
    assert [t.name for t in result.layer_errors] == [t["name"] for t in diagnostics["worst_tensors"]]

    cache = read_calibration_cache(tmp_path / "model.int8.calib.cache")
    assert cache.algorithm == "EntropyCalibration2"
    assert cache.scales.keys() == result.scales.keys()
    for name, scale in result.scales.items():
        assert cache.scales[name] == pytest.approx(scale, rel=1e-7)


def test_cache_format_round_trip_and_known_hex(tmp_path: Path) -> None:
    path = tmp_path / "c.cache"
    xq.write_calibration_cache(path, {"input": 1.0, "/conv/Conv_output_0": 0.0078125},
                               algorithm="MinMaxCalibration", version="8501")
    text = path.read_text()
    assert text == "TRT-8501-MinMaxCalibration\ninput: 3f800000\n/conv/Conv_output_0: 3c000000\n"
    back = read_calibration_cache(path)
    assert back.scales == {"input": 1.0, "/conv/Conv_output_0": 0.0078125}
    assert (back.version, back.algorithm) == ("8501", "MinMaxCalibration")
    (tmp_path / "bad.cache").write_text("TRT-8501-EntropyCalibration2\ninput: zz\n")
    with pytest.raises(InvalidCalibrationInput, match="line 2"):
        read_calibration_cache(tmp_path / "bad.cache")
    (tmp_path / "nohdr.cache").write_text("input: 3f800000\n")
    with pytest.raises(InvalidCalibrationInput, match="not a TensorRT calibration cache"):
        read_calibration_cache(tmp_path / "nohdr.cache")


def test_dead_channels_and_constant_activations_get_positive_scales(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    black = [np.full((8, 8, 3), 127, np.uint8) for _ in range(3)]   # normalises to exactly 0
    result = quantize(source, Calibrator(black, PRE), tmp_path / "q.onnx")
    assert all(np.isfinite(t.scale) and t.scale > 0 for t in result.tensors)
    assert next(t for t in result.tensors if t.name == "input").amax == 0.0
    model = onnx.load(tmp_path / "q.onnx")
    for t in model.graph.initializer:
        if t.name.endswith("_scale"):
            s = numpy_helper.to_array(t)
            assert np.isfinite(s).all() and (s > 0).all()


# -- bad input --------------------------------------------------------------------------------
def test_already_quantized_model_is_refused(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    quantize(source, Calibrator(_frames(2), PRE), tmp_path / "q.onnx")
    with pytest.raises(InvalidCalibrationInput, match="already quantized"):
        quantize(tmp_path / "q.onnx", Calibrator(_frames(2), PRE), tmp_path / "qq.onnx")
    assert not (tmp_path / "qq.onnx").exists()


def test_model_without_quantizable_op_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["y"], name="relu")], "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
              tmp_path / "relu.onnx")
    with pytest.raises(InvalidCalibrationInput, match="no Conv, ConvTranspose, Gemm or MatMul"):
        quantize(tmp_path / "relu.onnx", Calibrator(_frames(2), PRE), tmp_path / "q.onnx")
    source = _conv_net(tmp_path / "tiny.onnx")
    with pytest.raises(InvalidCalibrationInput, match=r"every one stays float \(conv1: excluded by the pattern .Conv."):
        quantize(source, Calibrator(_frames(2), PRE), tmp_path / "q.onnx",
                 exclude=["Conv", "Gemm"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relu.onnx", "tiny.onnx"]


def test_shape_mismatch_nan_and_no_partial_artifacts(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    out = tmp_path / "q.onnx"
    out.write_bytes(b"previous artifact")
    wrong = Preprocess(size=(16, 16), resize="stretch")
    with pytest.raises(InvalidCalibrationInput, match=r"shape \(2, 3, 16, 16\).*input 'input'"):
        quantize(source, Calibrator(_frames(2), wrong), out)
    nchw_uint8 = Preprocess(size=(8, 8), dtype="uint8")
    with pytest.raises(InvalidCalibrationInput, match="uint8 but"):
        quantize(source, Calibrator(_frames(2), nchw_uint8), out)
    samples = [RNG.normal(0, 1, (3, 8, 8)).astype(np.float32) for _ in range(4)]
    samples[2][0, 1, 1] = np.nan
    with pytest.raises(InvalidCalibrationInput, match=r"sample 2 .* NaN"):
        quantize(source, Calibrator.from_arrays(samples), out)
    samples[2][0, 1, 1] = np.inf
    with pytest.raises(InvalidCalibrationInput, match="NaN or infinity"):
        quantize(source, Calibrator.from_arrays(samples), out)
    assert out.read_bytes() == b"previous artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx", "tiny.onnx"]


def test_bad_frames_and_missing_model(tmp_path: Path) -> None:
    with pytest.raises(InvalidCalibrationInput, match="holds no frames"):
        Calibrator([], PRE)
    grey = [np.zeros((8, 8), np.uint8)]
    source = _conv_net(tmp_path / "tiny.onnx")
    with pytest.raises(InvalidCalibrationInput, match=r"frame 0 .* RGB uint8"):
        quantize(source, Calibrator(grey, PRE), tmp_path / "q.onnx")
    with pytest.raises(InvalidCalibrationInput, match="no such file"):
        quantize(tmp_path / "missing.onnx", Calibrator(_frames(1), PRE), tmp_path / "q.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model at all\xff" * 10)
    with pytest.raises(InvalidCalibrationInput):
        quantize(tmp_path / "junk.onnx", Calibrator(_frames(1), PRE), tmp_path / "q.onnx")


def test_fewer_frames_than_asked_warns_and_proceeds(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    with pytest.warns(CalibrationWarning, match="asked for 50 calibration frames .* only 5"):
        result = quantize(source, Calibrator(_frames(5), PRE), tmp_path / "q.onnx", num_frames=50)
    assert result.num_frames == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = quantize(source, Calibrator(_frames(9), PRE), tmp_path / "q.onnx", num_frames=4)
    assert result.num_frames == 4


@pytest.mark.filterwarnings("ignore:the held-out frames cannot measure:UserWarning")
def test_holdout_overlapping_calibration_warns(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    frames = _frames(4)
    with pytest.warns(CalibrationWarning, match="held-out frames are also calibration frames"):
        quantize(source, Calibrator(frames, PRE), tmp_path / "q.onnx",
                 holdout=Calibrator(frames[2:], PRE))


def test_calibrator_reiterates_and_reads_calibration_sets(tmp_path: Path) -> None:
    frames = _frames(7)
    cal = Calibrator(frames, PRE, batch_size=3)
    first = [b.copy() for b in cal.batches()]
    second = list(cal.batches())
    assert [b.shape for b in first] == [(3, 3, 8, 8), (3, 3, 8, 8), (1, 3, 8, 8)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))

    from xinfer_stream.video import SampledFrame, save_calibration_set

    frames[5] = RNG.integers(0, 256, (10, 6, 3), dtype=np.uint8)     # another shape: 2nd shard
    cal = Calibrator(frames, PRE, batch_size=3)
    first = [b.copy() for b in cal.batches()]
    save_calibration_set([SampledFrame("clip.mp4", i, i / 30, f) for i, f in enumerate(frames)],
                         tmp_path / "set", metadata={"requested": 10})
    from_set = Calibrator.from_calibration_set(tmp_path / "set", PRE, batch_size=3)
    assert from_set.num_frames == 7 and from_set.requested_frames == 10
    assert from_set.fingerprint == cal.fingerprint
    assert from_set.manifest_sha256 is not None
    assert all(np.array_equal(a, b) for a, b in zip(first, from_set.batches(), strict=True))
    model = _conv_net(tmp_path / "tiny.onnx")
    with pytest.warns(CalibrationWarning, match="holds 7 frames of the 10 asked"):
        quantize(model, from_set, tmp_path / "q.onnx")
    assert Calibrator.from_calibration_set(tmp_path / "set", PRE, limit=3).num_frames == 3
    with pytest.raises(InvalidCalibrationInput, match=r"manifest\.json is missing"):
        Calibrator.from_calibration_set(tmp_path / "nothing", PRE)


def test_bias_correction_removes_the_mean_shift_of_weight_quantization(tmp_path: Path) -> None:
    # A 1x1 conv whose 3 input taps nearly cancel, fed by a large constant-ish input: weight
    # rounding leaves a per-channel mean error that only the bias correction takes out.
    w = np.array([[[[1.0]], [[-0.9953]], [[0.00349]]]] * 4, np.float32) * np.array(
        [1, 2, 3, 4], np.float32).reshape(4, 1, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], "bc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, tmp_path / "bc.onnx")
    samples = [np.full((3, 4, 4), 100.0, np.float32) + RNG.normal(0, 0.01, (3, 4, 4)).astype(np.float32)
               for _ in range(8)]
    x = np.stack(samples)
    ref = ort.InferenceSession(str(tmp_path / "bc.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    errors = {}
    for on in (False, True):
        out = tmp_path / f"bc_{on}.onnx"
        result = quantize(tmp_path / "bc.onnx", Calibrator.from_arrays(samples), out,
                          bias_correction=on)
        assert result.bias_corrected_nodes == (("conv",) if on else ())
        errors[on] = float(np.abs((_run(out, {"x": x}) - ref).mean(axis=(0, 2, 3))).max())
    assert errors[True] < 0.2 * errors[False], errors


def test_evaluate_reports_outputs_and_agreement(tmp_path: Path) -> None:
    source = _conv_net(tmp_path / "tiny.onnx")
    quantize(source, Calibrator(_frames(12), PRE), tmp_path / "q.onnx")
    report = xq.evaluate(source, tmp_path / "q.onnx", _frames(9), PRE, tensors=["c1", "c2"])
    assert report.frames == 9
    (logits,) = report.outputs
    assert logits.name == "logits" and logits.top1_agreement is not None
    assert 0.9 < logits.cosine_mean <= 1.0 + 1e-9 and logits.cosine_min <= logits.cosine_mean
    assert [t.name for t in report.worst_tensors] in (["c1", "c2"], ["c2", "c1"])
    same = xq.evaluate(source, source, _frames(3), PRE)
    assert same.top1_agreement == 1.0 and same.outputs[0].relative_error_mean == 0.0


def _fixed_batch(path: Path, batch: int) -> Path:
    """``path``'s model with its batch axis fixed at ``batch`` (as exports without dynamic axes
    write it: YOLOX's official ONNX files take [1, 3, 416, 416])."""
    model = onnx.load(path)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    fixed = path.with_name(f"{path.stem}.b{batch}.onnx")
    onnx.save(model, fixed)
    return fixed


@pytest.mark.filterwarnings("ignore:the held-out frames cannot measure this model well")
def test_a_model_fixed_at_batch_1_is_calibrated_and_measured_a_frame_at_a_time(
        tmp_path: Path) -> None:
    source = _fixed_batch(_conv_net(tmp_path / "tiny.onnx"), 1)
    assert fixed_batch(onnx.load(source)) == 1
    assert fixed_batch(onnx.load(tmp_path / "tiny.onnx")) is None
    with pytest.raises(Exception, match="Got: 16 Expected: 1|invalid dimensions"):
        _run(source, {"input": np.zeros((16, 3, 8, 8), np.float32)})   # what ORT says otherwise
    result = quantize(source, Calibrator(_frames(20), PRE, batch_size=16), tmp_path / "q.onnx",
                      holdout=Calibrator(_frames(5), PRE, batch_size=16))
    assert result.accuracy is not None and result.accuracy.frames == 5
    written = onnx.load(tmp_path / "q.onnx")
    assert written.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    report = xq.evaluate(source, tmp_path / "q.onnx", _frames(3), PRE)
    assert report.frames == 3 and report.outputs[0].cosine_mean > 0.9
    budget = xq.quantize_with_budget(source, Calibrator(_frames(20), PRE), tmp_path / "b.onnx",
                                     holdout=Calibrator(_frames(6), PRE), max_drop=1.0,
                                     metric="cosine")
    assert budget.report.met


@pytest.mark.filterwarnings("ignore:the held-out frames cannot measure this model well")
def test_a_fixed_batch_above_1_needs_a_multiple_of_its_frames(tmp_path: Path) -> None:
    source = _fixed_batch(_conv_net(tmp_path / "tiny.onnx"), 4)
    with pytest.raises(InvalidCalibrationInput, match="exactly 4 frames a run.*holds 10.*multiple of 4"):
        quantize(source, Calibrator(_frames(10), PRE), tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()
    result = quantize(source, Calibrator(_frames(12), PRE), tmp_path / "q.onnx",
                      holdout=Calibrator(_frames(8), PRE, batch_size=3))
    assert result.accuracy is not None and result.accuracy.frames == 8
    # Frame by frame over a clip of 10 frames: the last 2 go padded to 4, and none is lost.
    frames = _frames(10)
    rows = list(xq.compare(source, tmp_path / "q.onnx", frames, PRE))
    assert [r.index for r in rows] == list(range(10))
    assert all(r.cosine > 0.9 for r in rows)
    same = list(xq.compare(source, source, frames, PRE, batch_size=3))
    assert [r.index for r in same] == list(range(10))
    assert all(r.cosine == pytest.approx(1.0) and r.agrees in (True, None) for r in same)


def test_public_surface_is_sorted_and_complete() -> None:
    assert xq.__all__ == sorted(xq.__all__)
    for name in xq.__all__:
        assert getattr(xq, name) is not None
    assert issubclass(InvalidCalibrationInput, CalibrationError)
    assert issubclass(InvalidCalibrationInput, ValueError)
