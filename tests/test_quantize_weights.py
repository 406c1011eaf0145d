"""Every form a weight takes in an exported model is quantized, per output channel; a weighted op
that stays float says why. Each model is built here with onnx.helper; each check reads the
written Q/DQ model and runs it against the FP32 model on ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from xinfer_stream._errors import InvalidCalibrationInput
from xinfer_stream.preprocess import Preprocess
from xinfer_stream.quantize import CalibrationWarning, Calibrator, quantize

RNG = np.random.default_rng(20)
PRE = Preprocess(size=(8, 8), resize="stretch", mean=(127.0,) * 3, std=(64.0,) * 3)
W1 = RNG.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
B1 = RNG.normal(0, 0.1, 8).astype(np.float32)
W2 = RNG.normal(0, 0.2, (6, 8, 3, 3)).astype(np.float32)


def _frames(count: int) -> list[np.ndarray]:
    return [RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(count)]


def _save(path: Path, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], *,
          inputs: list[onnx.ValueInfoProto] | None = None,
          outputs: list[onnx.ValueInfoProto] | None = None, **save: object) -> Path:
    graph = helper.make_graph(
        nodes, "forms",
        inputs or [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 8])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path), **save)  # type: ignore[arg-type]
    return path


def _weight_form(form: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers that compute the tensor ``w1`` (the first Conv's weight, W1) in
    the way ``form`` names; the bias ``b1`` is a Constant node in every form."""
    bias = helper.make_node("Constant", [], ["b1"], name="bias_constant",
                            value=numpy_helper.from_array(B1))
    if form == "initializer":
        return [bias], [numpy_helper.from_array(W1, "w1")]
    if form == "constant":
        return [bias, helper.make_node("Constant", [], ["w1"], name="w_constant",
                                       value=numpy_helper.from_array(W1))], []
    if form == "identity":
        return [bias, helper.make_node("Identity", ["w0"], ["w1"], name="w_identity")], \
            [numpy_helper.from_array(W1, "w0")]
    if form == "cast":                        # FP16 storage, cast to float at run time
        return [bias, helper.make_node("Cast", ["w0"], ["w1"], name="w_cast", to=TensorProto.FLOAT)], \
            [numpy_helper.from_array(W1.astype(np.float16), "w0")]
    if form == "reshape":
        return [bias, helper.make_node("Reshape", ["w0", "shape"], ["w1"], name="w_reshape")], \
            [numpy_helper.from_array(W1.reshape(-1), "w0"),
             numpy_helper.from_array(np.array(W1.shape, np.int64), "shape")]
    if form == "transpose":
        return [bias, helper.make_node("Transpose", ["w0"], ["w1"], name="w_transpose",
                                       perm=[1, 0, 2, 3])], \
            [numpy_helper.from_array(np.ascontiguousarray(W1.transpose(1, 0, 2, 3)), "w0")]
    if form == "dequantize":                  # int8 storage, per channel (weight-only quantized)
        scale = (np.abs(W1).reshape(8, -1).max(axis=1) / 127).astype(np.float32)
        stored = np.clip(np.rint(W1 / scale[:, None, None, None]), -127, 127).astype(np.int8)
        return [bias, helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w1"],
                                       name="w_dequantize", axis=0)], \
            [numpy_helper.from_array(stored, "wq"), numpy_helper.from_array(scale, "ws"),
             numpy_helper.from_array(np.zeros(8, np.int8), "wz")]
    if form == "constant_cast_transpose":     # a chain, starting at a Constant node
        return [bias,
                helper.make_node("Constant", [], ["w0"], name="w_constant",
                                 value=numpy_helper.from_array(
                                     np.ascontiguousarray(W1.transpose(1, 0, 2, 3)).astype(np.float16))),
                helper.make_node("Cast", ["w0"], ["wc"], name="w_cast", to=TensorProto.FLOAT),
                helper.make_node("Transpose", ["wc"], ["w1"], name="w_transpose", perm=[1, 0, 2, 3])], []
    raise AssertionError(form)


def _two_convs(path: Path, form: str) -> Path:
    """input -> Conv(w1 in ``form``, b1 Constant) -> Relu -> Conv(w2 initializer) -> y."""
    nodes, initializers = _weight_form(form)
    nodes += [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
              helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
              helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1] * 4)]
    return _save(path, nodes, [*initializers, numpy_helper.from_array(W2, "w2")])


# -- reading the written model, independently of the quantizer ---------------------------------
def _per_channel_weight_dq(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Weight DequantizeLinear nodes with one scale per channel over int8 initializers, by
    output name."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        values, scale = inits[node.input[0]], inits[node.input[1]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if values.dtype == np.int8 and scale.ndim == 1 and scale.size == values.shape[axis] > 1:
            out[node.output[0]] = node
    return out


def _int8_convs(model: onnx.ModelProto) -> list[str]:
    """Convs whose weight comes from a per-channel weight DQ and whose data from a DQ."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weights = _per_channel_weight_dq(model)
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")
            and n.input[0] in dq and n.input[1] in weights]


def _outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, {session.get_inputs()[0].name: x})]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def _close_to_fp32(source: Path, written: Path, x: np.ndarray, floor: float = 0.99) -> None:
    for want, got in zip(_outputs(source, x), _outputs(written, x), strict=True):
        assert want.shape == got.shape
        assert _cosine(want, got) > floor


# Model inputs in the range the calibration frames cover ((0..255 - 127) / 64).
X = RNG.uniform(-1.9, 1.9, (4, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("form", ["initializer", "constant", "identity", "cast", "reshape",
                                  "transpose", "dequantize", "constant_cast_transpose"])
def test_every_weight_form_is_quantized_per_channel(tmp_path: Path, form: str) -> None:
    source = _two_convs(tmp_path / f"{form}.onnx", form)
    out = tmp_path / f"{form}.int8.onnx"
    result = quantize(source, Calibrator(_frames(16), PRE, batch_size=8), out)
    written = onnx.load(out)
    assert sorted(_int8_convs(written)) == ["conv1", "conv2"]
    assert result.int8_share.int8_ops == {"conv1", "conv2"} and result.int8_share.fraction == 1.0
    # What the exporter used to hold the weight is gone: no float copy, no Constant, no chain.
    assert not any(n.op_type in ("Constant", "Identity", "Cast", "Reshape", "Transpose")
                   for n in written.graph.node)
    assert not any(t.name == "w1" and t.data_type == TensorProto.FLOAT
                   for t in written.graph.initializer)
    # The Constant bias became an initializer, so bias correction reached conv1.
    assert "conv1" in result.bias_corrected_nodes
    _close_to_fp32(source, out, X)


def test_stored_int8_weights_come_back_exactly(tmp_path: Path) -> None:
    """A weight stored as symmetric per-channel int8 is quantized again to the same integers."""
    source = _two_convs(tmp_path / "dq.onnx", "dequantize")
    out = tmp_path / "dq.int8.onnx"
    quantize(source, Calibrator(_frames(8), PRE), out, bias_correction="none")
    written = onnx.load(out)
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(source).graph.initializer}
    inits = {t.name: numpy_helper.to_array(t) for t in written.graph.initializer}
    conv1 = next(n for n in written.graph.node if n.name == "conv1")
    dq = _per_channel_weight_dq(written)[conv1.input[1]]
    np.testing.assert_array_equal(inits[dq.input[0]], stored["wq"])
    np.testing.assert_allclose(inits[dq.input[1]], stored["ws"], rtol=1e-6)


def test_activations_already_quantized_are_refused(tmp_path: Path) -> None:
    nodes, initializers = _weight_form("initializer")
    nodes += [
        helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        helper.make_node("Conv", ["xd", "w1", "b1"], ["y"], name="conv1", pads=[1] * 4)]
    source = _save(tmp_path / "qdq.onnx", nodes, outputs=[
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])], initializers=[
        *initializers, numpy_helper.from_array(np.float32(0.02), "s"),
        numpy_helper.from_array(np.int8(0), "z")])
    with pytest.raises(InvalidCalibrationInput, match="already quantized .*QuantizeLinear"):
        quantize(source, Calibrator(_frames(2), PRE), tmp_path / "q.onnx")


def test_shared_weights_are_quantized_once_per_axis_and_corrected_per_consumer(
        tmp_path: Path) -> None:
    """One Constant weight read by two Convs and by a ConvTranspose (another axis), one bias
    read by both Convs."""
    w = RNG.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32)
    w_in = RNG.normal(0, 0.3, (8, 3, 1, 1)).astype(np.float32)
    b = RNG.normal(0, 0.1, 8).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], name="w_constant", value=numpy_helper.from_array(w)),
        helper.make_node("Conv", ["input", "w_in"], ["c0"], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w", "b"], ["c1"], name="conv_a", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w", "b"], ["c2"], name="conv_b", pads=[1] * 4),
        helper.make_node("ConvTranspose", ["c2", "w"], ["y"], name="deconv", pads=[1] * 4),
    ]
    source = _save(tmp_path / "shared.onnx", nodes,
                   [numpy_helper.from_array(w_in, "w_in"), numpy_helper.from_array(b, "b")],
                   outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])])
    out = tmp_path / "shared.int8.onnx"
    result = quantize(source, Calibrator(_frames(16), PRE, batch_size=8), out)
    written = onnx.load(out)
    by_name = {n.name: n for n in written.graph.node}
    assert sorted(_int8_convs(written)) == ["conv0", "conv_a", "conv_b", "deconv"]
    # conv_a and conv_b read one quantized copy (axis 0); the ConvTranspose its own (axis 1).
    weight_dq = _per_channel_weight_dq(written)
    assert by_name["conv_a"].input[1] == by_name["conv_b"].input[1]
    assert by_name["deconv"].input[1] != by_name["conv_a"].input[1]
    axes = {name: next(a.i for a in weight_dq[by_name[name].input[1]].attribute if a.name == "axis")
            for name in ("conv_a", "deconv")}
    assert axes == {"conv_a": 0, "deconv": 1}
    assert sum(1 for n in written.graph.node if n.op_type == "DequantizeLinear"
               and n.output[0] in weight_dq) == 3                   # w_in, w (axis 0), w (axis 1)
    # The shared bias was corrected for each consumer separately.
    assert {"conv_a", "conv_b"} <= set(result.bias_corrected_nodes)
    assert by_name["conv_a"].input[2] != by_name["conv_b"].input[2]
    _close_to_fp32(source, out, X, floor=0.98)


def test_external_data_model(tmp_path: Path) -> None:
    source = _two_convs(tmp_path / "ext.onnx", "initializer")
    model = onnx.load(source)
    onnx.save_model(model, str(source), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    assert any(t.data_location == TensorProto.EXTERNAL
               for t in onnx.load(source, load_external_data=False).graph.initializer)
    out = tmp_path / "out" / "ext.int8.onnx"
    out.parent.mkdir()
    quantize(source, Calibrator(_frames(16), PRE, batch_size=8), out)
    # The written model holds every tensor itself (it does not point back at ext.data).
    written = onnx.load(out, load_external_data=False)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in written.graph.initializer)
    assert sorted(_int8_convs(written)) == ["conv1", "conv2"]
    _close_to_fp32(source, out, X)


# -- weighted ops that stay float say why --------------------------------------------------------
def test_a_conv_whose_weight_is_computed_from_the_input_stays_float_and_says_so(
        tmp_path: Path) -> None:
    """conv_dyn's weight is the input itself (times 2): it stays float, its data input gets no
    Q/DQ pair of its own, and the result, report and summary say why."""
    w = RNG.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "two"], ["w_dyn"], name="scale"),
             helper.make_node("Conv", ["x", "w_dyn"], ["y_dyn"], name="conv_dyn"),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv_ok", pads=[1] * 4)]
    source = _save(
        tmp_path / "dyn.onnx", nodes,
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(2.0), "two")],
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4]),
                 helper.make_tensor_value_info("y_dyn", TensorProto.FLOAT, [1, 1, 1, 1])])
    samples = RNG.normal(0, 1, (8, 2, 4, 4)).astype(np.float32)
    out = tmp_path / "dyn.int8.onnx"
    result = quantize(source, Calibrator.from_arrays(list(samples), batch_size=1), out)
    share = result.int8_share
    assert share.int8_ops == {"conv_ok"}
    dyn = next(op for op in share.ops if op.name == "conv_dyn")
    assert dyn.why_float is not None and "computed from the graph input" in dyn.why_float
    assert dyn.macs == 1 * 2 * 4 * 4 and share.fraction == pytest.approx(
        (4 * 16 * 18) / (4 * 16 * 18 + 32))
    written = onnx.load(out)
    conv_dyn = next(n for n in written.graph.node if n.name == "conv_dyn")
    assert list(conv_dyn.input) == ["x", "w_dyn"]                    # both float, untouched
    assert "conv_dyn" not in result.quantized_nodes
    assert "float conv_dyn (Conv" in result.summary() and "graph input" in result.summary()


def test_integer_matmul_and_excluded_ops_say_why(tmp_path: Path) -> None:
    w = RNG.normal(0, 0.5, (4, 3)).astype(np.float32)
    k = RNG.integers(-3, 4, (4, 3)).astype(np.int32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm_float"),
             helper.make_node("MatMul", ["x", "w"], ["h2"], name="mm_excluded"),
             helper.make_node("Cast", ["x"], ["xi"], name="to_int", to=TensorProto.INT32),
             helper.make_node("MatMul", ["xi", "k"], ["hi"], name="mm_int"),
             helper.make_node("Cast", ["hi"], ["hf"], name="to_float", to=TensorProto.FLOAT),
             helper.make_node("Add", ["h", "hf"], ["s"], name="add"),
             helper.make_node("Add", ["s", "h2"], ["y"], name="add2")]
    source = _save(tmp_path / "mm.onnx", nodes,
                   [numpy_helper.from_array(w, "w"), numpy_helper.from_array(k, "k")],
                   inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                   outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    samples = RNG.normal(0, 3, (8, 4)).astype(np.float32)
    with pytest.warns(CalibrationWarning, match=r"only 33.3% of the MACs"):
        result = quantize(source, Calibrator.from_arrays(list(samples)), tmp_path / "mm.int8.onnx",
                          exclude=["mm_excluded"])
    why = {op.name: op.why_float for op in result.int8_share.ops}
    assert why["mm_float"] is None
    assert why["mm_excluded"] == "excluded by the pattern 'mm_excluded'"
    assert why["mm_int"] is not None and "'xi' is int32, not float32" in why["mm_int"]
    report = result.report_path.read_text()
    assert "excluded by the pattern" in report and "int32, not float32" in report
