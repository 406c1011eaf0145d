"""The INT8 share: which weighted ops of a written Q/DQ model run in INT8 and the fraction of MACs
they hold, checked against counts made here by walking the graph, on synthetic and real models."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import shared
from xinfer_stream._errors import InvalidCalibrationInput
from xinfer_stream.preprocess import Preprocess
from xinfer_stream.quantize import Calibrator, quantize
from xinfer_stream.quantize._share import Int8Share, input_shape_for, int8_share

RNG = np.random.default_rng(7)
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# -- independent counting ------------------------------------------------------------------------
def _int8_by_walking(model: onnx.ModelProto) -> set[str]:
    """Weighted ops whose inputs 0 and 1 are both DequantizeLinear outputs."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node
            if n.op_type in WEIGHTED and n.input[0] in dq and n.input[1] in dq}


def _macs_by_running(path: Path, shape: tuple[int, ...]) -> dict[str, int]:
    """MACs per weighted op, from the shapes ONNX Runtime produces on zeros of ``shape``."""
    model = onnx.load(path)
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    weighted = [n for n in model.graph.node if n.op_type in WEIGHTED]
    wanted = sorted({t for n in weighted for t in (n.input[0], n.input[1], n.output[0])
                     if t not in inits})
    present = {o.name for o in model.graph.output}
    for t in wanted:
        if t not in present:
            model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    values = session.run(wanted, {name: np.zeros(shape, np.float32)})
    shapes = {**inits, **{t: v.shape for t, v in zip(wanted, values, strict=True)}}
    out = {}
    for n in weighted:
        x, w, y = shapes[n.input[0]], shapes[n.input[1]], shapes[n.output[0]]
        if n.op_type == "Conv":
            out[n.name] = math.prod(y) * math.prod(w[1:])
        elif n.op_type == "ConvTranspose":
            out[n.name] = math.prod(x) * math.prod(w[1:])
        else:
            out[n.name] = math.prod(y) * x[-1]
    return out


def _readers_of_dq(model: onnx.ModelProto) -> list[str]:
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(t in dq for t in n.input)]


# -- synthetic Q/DQ models -------------------------------------------------------------------------
def _qdq(tensor: str, out: str) -> list[onnx.NodeProto]:
    return [helper.make_node("QuantizeLinear", [tensor, "s", "z"], [f"{out}_q"], name=f"{out}_Q"),
            helper.make_node("DequantizeLinear", [f"{out}_q", "s", "z"], [out], name=f"{out}_DQ")]


def _hand_made(path: Path) -> Path:
    """conv_int8: data and weight dequantized. conv_act_only: data dequantized, weight float
    (what the quantizer used to write for Constant weights). mm_two: a MatMul of two dequantized
    activations. mm_one: one of its two activations dequantized."""
    w = RNG.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32)
    wq = np.clip(np.rint(w / 0.01), -127, 127).astype(np.int8)
    nodes = [
        *_qdq("x", "x_dq"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w_dq"], name="w_DQ", axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["a"], name="conv_int8", pads=[1] * 4),
        helper.make_node("Conv", ["x_dq", "w"], ["b"], name="conv_act_only", pads=[1] * 4),
        *_qdq("a", "a_dq"),
        helper.make_node("Transpose", ["b"], ["bt"], name="bt", perm=[0, 1, 3, 2]),
        *_qdq("bt", "bt_dq"),
        helper.make_node("MatMul", ["a_dq", "bt_dq"], ["m2"], name="mm_two"),
        helper.make_node("Transpose", ["b"], ["bf"], name="bf", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["a_dq", "bf"], ["m1"], name="mm_one"),
        helper.make_node("Add", ["m1", "m2"], ["y"], name="add"),
    ]
    inits = [numpy_helper.from_array(wq, "wq"),
             numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(4, np.int8), "wz"), numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.int8(0), "z")]
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return path


def test_an_op_counts_only_when_data_and_weight_are_dequantized(tmp_path: Path) -> None:
    path = _hand_made(tmp_path / "hand.onnx")
    model = onnx.load(path)
    with pytest.raises(InvalidCalibrationInput, match="dynamic height/width .*--size H W"):
        input_shape_for(model)
    shape, source = input_shape_for(model, size=(6, 5), size_source="the test")
    assert shape == (1, 2, 6, 5)
    assert source == "batch 1 for the dynamic batch axis, height and width 6x5 from the test"
    share = int8_share(model, shape, shape_source=source)
    assert share.int8_ops == _int8_by_walking(model) == {"conv_int8", "mm_two"}
    why = {op.name: op.why_float for op in share.ops}
    assert why["conv_act_only"] == "its weight input does not come from DequantizeLinear"
    assert why["mm_one"] == "its weight input does not come from DequantizeLinear"
    conv = 4 * 6 * 5 * 2 * 9                   # Cout x H x W x Cin x k x k
    matmul = 4 * 6 * 6 * 5                     # (1,4,6,5) @ (1,4,5,6): 4 x 6 x 6 outputs of 5 MACs
    macs = {op.name: op.macs for op in share.ops}
    assert macs == _macs_by_running(path, shape) == {
        "conv_int8": conv, "conv_act_only": conv, "mm_two": matmul, "mm_one": matmul}
    assert share.fraction == pytest.approx((conv + matmul) / (2 * conv + 2 * matmul))
    assert share.fraction_without(["mm_two"]) == pytest.approx(conv / (2 * conv + 2 * matmul))
    warning = share.warning("hand.onnx")
    assert warning is None                      # exactly half: not below it
    assert Int8Share.from_dict(json.loads(json.dumps(share.to_dict()))) == share


def test_less_than_half_in_int8_names_the_biggest_float_ops(tmp_path: Path) -> None:
    model = onnx.load(_hand_made(tmp_path / "hand.onnx"))
    share = int8_share(model, (1, 2, 6, 5), shape_source="test").with_reasons(
        {"conv_act_only": "its weight 'w' is computed from the graph input"})
    assert share.fraction_without(["conv_int8"]) < 0.5
    low = int8_share(model, (1, 2, 6, 5), shape_source="test",
                     macs={"conv_int8": 10, "conv_act_only": 80, "mm_two": 5, "mm_one": 5})
    warning = low.warning("hand.onnx")
    assert warning is not None and warning.startswith("only 15.0% of the MACs of 'hand.onnx'")
    assert "conv_act_only (Conv, 80.0% of MACs: its weight input does not come from " in warning
    assert share.float_lines()[0].startswith(
        "float conv_act_only (Conv, 37.5% of MACs): its weight 'w' is computed from the graph")


# -- written by quantize() ------------------------------------------------------------------------
def _paddle_like(path: Path) -> Path:
    """A small text-detector shape as Paddle exports it: every weight and bias a Constant node,
    dynamic height and width, a strided Conv, a ConvTranspose back up, a 1-channel map out."""
    def constant(name: str, shape: tuple[int, ...], std: float = 0.3) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], name=f"{name}_const",
                                value=numpy_helper.from_array(
                                    RNG.normal(0, std, shape).astype(np.float32)))

    nodes = [constant("w1", (8, 3, 3, 3)), constant("b1", (8,), 0.1),
             constant("w2", (16, 8, 3, 3), 0.2), constant("w3", (16, 8, 2, 2), 0.2),
             constant("w4", (1, 8, 1, 1)),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="down", pads=[1] * 4,
                              strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("ConvTranspose", ["r2", "w3"], ["c3"], name="up", strides=[2, 2]),
             helper.make_node("Add", ["c3", "r1"], ["s"], name="skip"),
             helper.make_node("Conv", ["s", "w4"], ["c4"], name="head"),
             helper.make_node("Sigmoid", ["c4"], ["maps"], name="sigmoid")]
    graph = helper.make_graph(
        nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["N", 1, "H", "W"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def test_constant_weights_and_dynamic_size_count_at_the_calibration_shape(tmp_path: Path) -> None:
    source = _paddle_like(tmp_path / "det.onnx")
    pre = Preprocess(size=(16, 24), mean=(127.0,) * 3, std=(64.0,) * 3)
    frames = [RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(12)]
    out = tmp_path / "det.int8.onnx"
    result = quantize(source, Calibrator(frames, pre, batch_size=4), out)
    written = onnx.load(out)
    share = result.int8_share
    assert share.int8_ops == _int8_by_walking(written) == {"conv1", "down", "up", "head"}
    assert share.input_shape == (1, 3, 16, 24)
    assert share.shape_source == "the calibration frames' input shape"
    assert {op.name: op.macs for op in share.ops} == _macs_by_running(source, (1, 3, 16, 24))
    assert share.fraction == 1.0
    # The summary's counts are the written model's.
    summary = result.summary()
    q_nodes = [n for n in written.graph.node if n.op_type == "QuantizeLinear"]
    assert len(result.tensors) == len(q_nodes)
    assert list(result.quantized_nodes) == _readers_of_dq(written)
    assert (f"{len(q_nodes)} activations quantized, {len(_readers_of_dq(written))} nodes read "
            "quantized inputs") in summary
    assert f"INT8: 4 of 4 weighted ops, 100.0% of {share.total_macs / 1e3:.2f} k MACs " \
           "(input 1x3x16x24: the calibration frames' input shape)" in summary
    report = json.loads(result.report_path.read_text())
    assert Int8Share.from_dict(report["int8_share"]) == share
    assert report["int8_share"]["int8_mac_fraction"] == 1.0
    assert report["quantized_nodes"] == list(result.quantized_nodes)


EFFICIENTNET_PRE = Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3,
                              std=(128.0,) * 3)


def test_efficientnet_lite0_share_matches_an_independent_count(tmp_path: Path) -> None:
    import av

    source = shared("models/efficientnet_lite0.onnx")
    frames = []
    with av.open(str(shared("video/car-detection.mp4"))) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 40 == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 6:
                break
    out = tmp_path / "lite0.int8.onnx"
    kept = ["/_conv_stem/Conv", "/_blocks.15/_project_conv/Conv"]
    result = quantize(source, Calibrator(frames, EFFICIENTNET_PRE, batch_size=6), out,
                      bias_correction="none", exclude=kept)
    written = onnx.load(out)
    walked = _int8_by_walking(written)
    weighted = {n.name for n in written.graph.node if n.op_type in WEIGHTED}
    assert len(weighted) == 50 and walked == weighted - set(kept)
    share = result.int8_share
    assert share.int8_ops == walked
    macs = _macs_by_running(source, (1, 3, 224, 224))
    assert {op.name: op.macs for op in share.ops} == macs
    assert sum(macs.values()) == 385_187_552
    expected = sum(v for k, v in macs.items() if k in walked) / sum(macs.values())
    assert share.fraction == pytest.approx(expected) and 0.9 < expected < 1.0
    why = {op.name: op.why_float for op in share.ops if not op.int8}
    assert why == {name: f"excluded by the pattern {name!r}" for name in kept}


def test_mnist_share_is_complete_and_counted_on_the_written_model(tmp_path: Path) -> None:
    """MNIST's MatMul weight is a Reshape of an initializer (folded) and the model is opset 8."""
    with gzip.open(shared("labelled/mnist_5k.csv.gz"), "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.float32, max_rows=64)
    images = list(raw[:, :-1].reshape(-1, 1, 28, 28))
    out = tmp_path / "mnist.int8.onnx"
    result = quantize(shared("models/mnist-8.onnx"), Calibrator.from_arrays(images, batch_size=1),
                      out)
    written = onnx.load(out)
    assert result.int8_share.int8_ops == _int8_by_walking(written) == {
        "Convolution28", "Convolution110", "Times212"}
    assert result.int8_share.fraction == 1.0
    assert {op.name: op.macs for op in result.int8_share.ops} == _macs_by_running(
        shared("models/mnist-8.onnx"), (1, 1, 28, 28))
    assert result.int8_share.shape_source == "the calibration frames' input shape"


def test_attention_block_matmuls_of_two_activations_and_transposed_weights(
        tmp_path: Path) -> None:
    """A transformer-style block: projections whose weights are a Transpose of an initializer
    (as PyTorch's Linear may export), then Q @ K^T and softmax @ V, both of two activations."""
    wq = RNG.normal(0, 0.4, (8, 8)).astype(np.float32)          # stored (out, in)
    wk = RNG.normal(0, 0.4, (8, 8)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["wq_t"], ["wq"], name="wq_transpose", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wq"], ["q"], name="mm_q"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="mm_k"),
             helper.make_node("Transpose", ["k"], ["kt"], name="k_transpose", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"], name="mm_scores"),
             helper.make_node("Softmax", ["scores"], ["attn"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["attn", "x"], ["y"], name="mm_out")]
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8])],
        [numpy_helper.from_array(np.ascontiguousarray(wq.T), "wq_t"),
         numpy_helper.from_array(wk, "wk")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "attn.onnx")
    samples = list(RNG.normal(0, 1, (16, 6, 8)).astype(np.float32))
    out = tmp_path / "attn.int8.onnx"
    result = quantize(tmp_path / "attn.onnx", Calibrator.from_arrays(samples, batch_size=4), out)
    written = onnx.load(out)
    assert result.int8_share.int8_ops == _int8_by_walking(written) == {
        "mm_q", "mm_k", "mm_scores", "mm_out"}
    macs = {op.name: op.macs for op in result.int8_share.ops}
    assert macs == _macs_by_running(tmp_path / "attn.onnx", (1, 6, 8)) == {
        "mm_q": 6 * 8 * 8, "mm_k": 6 * 8 * 8, "mm_scores": 6 * 6 * 8, "mm_out": 6 * 8 * 6}
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    x = np.stack(samples[:4])
    want = ort.InferenceSession(str(tmp_path / "attn.onnx")).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out), options).run(None, {"x": x})[0]
    cosine = (want * got).sum() / np.linalg.norm(want) / np.linalg.norm(got)
    assert cosine > 0.99
