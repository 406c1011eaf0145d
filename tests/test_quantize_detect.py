"""INT8 for detectors: the box-decoding tail kept in float, and the ``boxes`` budget metric.

Small detectors are built with onnx.helper (a YOLOv8-style head: box and class convolutions,
Sigmoid, Concat, Reshape to [1, 4 + C, N]); the real PP-PicoDet asset checks the recognition on
a trained model; the classifier assets check that classifiers are left exactly as before.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from xinfer_stream import Preprocess, detect
from xinfer_stream.cli import main
from xinfer_stream.quantize import (Calibrator, box_metric, inspect_onnx, quantize,
                                    quantize_with_budget)
from xinfer_stream.quantize._box_metrics import FP32_COLOUR, INT8_COLOUR
from xinfer_stream.quantize._graph import plan, prepare

ASSETS = Path(__file__).resolve().parent / "assets"
PICODET = ASSETS / "picodet_layout_cdla.onnx"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "models"
MNIST = SHARED / "mnist-8.onnx"
SIZE = 32
CLASSES = 3
PRE = Preprocess((SIZE, SIZE))


def make_detector(path: Path, *, seed: int = 0) -> Path:
    """x [batch, 3, 32, 32] -> conv 3x3 stride 2 -> Relu -> (box conv -> Sigmoid -> Mul 32 |
    class conv -> Sigmoid) -> Concat -> Reshape [batch, 4 + C, 256]: boxes cx, cy, w, h in input
    pixels then class scores, the yolov8 layout."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def conv(name: str, x: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) / math.sqrt(cin * k * k)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"),
                      numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"],
                                      name=name, pads=[k // 2] * 4, strides=[stride] * 2))
        return f"{name}.y"

    stem = conv("stem", "x", 3, 8, 3, 2)
    nodes.append(helper.make_node("Relu", [stem], ["feat"], name="relu"))
    box = conv("box_conv", "feat", 8, 4, 1)
    cls = conv("cls_conv", "feat", 8, CLASSES, 1)
    inits.append(numpy_helper.from_array(np.array(float(SIZE), np.float32), "pixels"))
    inits.append(numpy_helper.from_array(np.array([0, 4 + CLASSES, -1], np.int64), "shape"))
    nodes += [helper.make_node("Sigmoid", [box], ["box_unit"], name="box_sigmoid"),
              helper.make_node("Mul", ["box_unit", "pixels"], ["box_px"], name="box_scale"),
              helper.make_node("Sigmoid", [cls], ["scores"], name="cls_sigmoid"),
              helper.make_node("Concat", ["box_px", "scores"], ["joined"], name="concat", axis=1),
              helper.make_node("Reshape", ["joined", "shape"], ["out"], name="reshape")]
    graph = helper.make_graph(
        nodes, "tiny_detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4 + CLASSES, 256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def frames(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture
def detector(tmp_path: Path) -> Path:
    return make_detector(tmp_path / "det.onnx")


def test_the_tail_of_a_detection_head_stays_float(detector: Path) -> None:
    prepared = prepare(onnx.load(detector))
    kept = plan(prepared)
    tail = ("box_sigmoid", "box_scale", "cls_sigmoid", "concat", "reshape")
    assert kept.detection_tail == tail
    assert all(kept.kept_float[n] == "detection head tail" for n in tail)
    assert "concat" not in kept.quantized_nodes           # no Q/DQ on the box coordinates
    assert {"stem", "box_conv", "cls_conv"} <= set(kept.quantized_nodes)
    # Turned off, the Concat's inputs are quantized like any other Concat's (placement trt).
    everything = plan(prepared, float_detection_tail=False)
    assert everything.detection_tail == () and "concat" in everything.quantized_nodes


def test_picodet_tail_is_recognised_on_the_trained_model() -> None:
    kept = plan(prepare(onnx.load(PICODET)))
    ops = {n.name: n.op_type for n in prepare(onnx.load(PICODET)).graph.node}
    tail_ops = sorted({ops[n] for n in kept.detection_tail})
    # 8 outputs: per level, Split -> Sigmoid -> Reshape -> Transpose (scores) and
    # Split -> Reshape -> Transpose (box distributions).
    assert tail_ops == ["Reshape", "Sigmoid", "Split", "Transpose"]
    assert sum(ops[n] == "Sigmoid" for n in kept.detection_tail) == 4
    assert sum(ops[n] == "Transpose" for n in kept.detection_tail) == 8


@pytest.mark.parametrize("model", [MNIST, SHARED / "efficientnet_lite0.onnx"],
                         ids=["mnist-8", "efficientnet-lite0"])
def test_classifiers_get_the_same_plan_as_before(model: Path) -> None:
    prepared = prepare(onnx.load(model))
    assert plan(prepared) == plan(prepared, float_detection_tail=False)
    assert plan(prepared).detection_tail == ()


def test_box_metric_is_zero_for_identical_outputs_and_counts_lost_boxes() -> None:
    metric = box_metric(PRE, detect("yolov8"))
    rng = np.random.default_rng(1)
    out = np.concatenate([rng.uniform(0, SIZE, (4, 4, 256)),
                          rng.uniform(0, 1, (4, CLASSES, 256))], axis=1).astype(np.float32)
    reference = {"out": out}
    assert metric.drop(reference, {"out": out.copy()}) == 0.0
    assert metric.name == "boxes" and metric.unit == "1 - mAP@0.5"
    silent = out.copy()
    silent[:, 4:] = 0.0                            # every score below conf: no INT8 box at all
    assert metric.drop(reference, {"out": silent}) == 1.0
    assert metric.details is not None
    details = metric.details(reference, {"out": silent})
    assert details["recall"] == 0.0 and details["candidate_boxes"] == 0
    assert details["reference_boxes"] > 0
    # Frames with FP32 boxes can measure it; frames without cannot, and a note says so.
    assert metric.signal is not None
    assert metric.signal(reference) == ()
    (note,) = metric.signal({"out": silent})
    assert "finds no box scoring above conf=0.25 on 4 of 4 held-out frames" in note


def test_quantize_reports_the_tail(detector: Path, tmp_path: Path) -> None:
    result = quantize(detector, Calibrator(frames(16, 0), PRE), tmp_path / "det.int8.onnx",
                      bias_correction="none")
    assert result.detection_tail == ("box_sigmoid", "box_scale", "cls_sigmoid", "concat",
                                     "reshape")
    assert "detection head recognised" in result.summary()
    report = json.loads(result.report_path.read_text())
    assert report["detection_tail"] == list(result.detection_tail)
    written = onnx.load(result.model_path)
    dequantized = {o for n in written.graph.node if n.op_type == "DequantizeLinear"
                   for o in n.output}
    concat = next(n for n in written.graph.node if n.name == "concat")
    assert not set(concat.input) & dequantized
    inspected = inspect_onnx(result.model_path)
    assert inspected.detection_tail == result.detection_tail
    assert inspected.quantized_tail == ()
    assert "none of them quantized" in inspected.format()
    everything = quantize(detector, Calibrator(frames(16, 0), PRE), tmp_path / "all.int8.onnx",
                          bias_correction="none", float_detection_tail=False)
    assert everything.detection_tail == ()
    assert inspect_onnx(everything.model_path).quantized_tail == ("concat",)


def test_budget_search_with_the_boxes_metric(detector: Path, tmp_path: Path) -> None:
    result = quantize_with_budget(
        detector, Calibrator(frames(16, 0), PRE), tmp_path / "det.int8.onnx",
        holdout=Calibrator(frames(12, 1), PRE, name="held-out"), max_drop=1.0,
        metric=box_metric(PRE, detect("yolov8")), bias_correction="none", sensitivity_frames=4)
    report = result.report
    assert report.metric == "boxes" and report.met
    details = report.details
    assert details["frames"] == 12 and details["reference_boxes"] > 0
    assert result.drop == pytest.approx(1.0 - details["map50"], abs=1e-12)
    assert 0.0 <= details["precision"] <= 1.0 and 0.0 <= details["recall"] <= 1.0
    stored = json.loads(result.report_path.read_text())["budget"]
    assert stored["details"]["map50"] == details["map50"]
    # The picture: a held-out frame with both models' boxes, beside the report.
    assert result.picture_path == tmp_path / "det.int8.boxes.png"
    assert stored["picture"] == "det.int8.boxes.png"
    with Image.open(result.picture_path) as picture:
        drawn = np.asarray(picture.convert("RGB"))
    assert drawn.shape == (SIZE, SIZE, 3)
    assert not list(tmp_path.glob(".det.int8.onnx.*"))     # the work folder is gone


def test_the_picture_draws_fp32_green_and_int8_magenta() -> None:
    metric = box_metric(PRE, detect("yolov8"))
    # Frame 1 holds the most FP32 boxes: one box of class 0 at (4, 4)-(12, 12) in the 32x32
    # input; INT8 moved it to (16, 16)-(24, 24). The frame itself is 64x64: boxes scale by 2.
    out = np.zeros((2, 4 + CLASSES, 256), np.float32)
    out[1, :4, 0] = (8, 8, 8, 8)
    out[1, 4, 0] = 0.9
    moved = out.copy()
    moved[1, :4, 0] = (20, 20, 8, 8)
    image = np.full((64, 64, 3), 255, np.uint8)
    shown: list[int] = []

    def frame_of(index: int) -> np.ndarray:
        shown.append(index)
        return image

    assert metric.draw is not None
    drawn = metric.draw({"out": out}, {"out": moved}, frame_of)
    assert shown == [1] and drawn.shape == (64, 64, 3) and (image == 255).all()
    assert tuple(drawn[16, 30]) == FP32_COLOUR       # FP32 box edge at y = 2 * 8
    assert tuple(drawn[36, 47]) == INT8_COLOUR       # INT8 box right edge at x = 2 * 24 - 1


def test_boxes_by_name_needs_a_preprocess(detector: Path, tmp_path: Path) -> None:
    arrays = np.random.default_rng(0).standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)
    with pytest.raises(ValueError, match="metric='boxes' decodes boxes"):
        quantize_with_budget(detector, Calibrator.from_arrays(arrays[:4]),
                             tmp_path / "d.int8.onnx",
                             holdout=Calibrator.from_arrays(arrays[4:], name="h"), max_drop=0.1,
                             metric="boxes")


def test_cli_metric_boxes_and_report(detector: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    videos = [str(_video(tmp_path / f"clip{i}.mp4", 20, seed=i)) for i in range(2)]
    out = tmp_path / "det.int8.onnx"
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    code = main(["quantize", str(detector), "--calib", *videos, "--frames", "16", "--labels",
                 str(names),
                 "--holdout", "12", "--size", str(SIZE), str(SIZE), "--max-drop", "1",
                 "--metric", "boxes", "--detect", "yolov8", "--conf", "0.3",
                 "--bias-correction", "none", "--sensitivity-frames", "4", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "written model: mAP@0.5" in printed and "precision" in printed
    assert "detection head recognised" in printed
    assert main(["report", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "written model: mAP@0.5" in shown and "detection head recognised" in shown
    assert "picture: det.int8.boxes.png" in shown


def _video(path: Path, count: int, *, seed: int) -> Path:
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(count):
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_boxes_on_a_model_detect_cannot_read_fails_before_the_search(tmp_path: Path) -> None:
    from xinfer_stream import InvalidModelError

    from .test_quantize_labelled import SIZE as COLOUR_SIZE
    from .test_quantize_labelled import colour_classifier

    pre = Preprocess((COLOUR_SIZE, COLOUR_SIZE))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (COLOUR_SIZE, COLOUR_SIZE, 3), dtype=np.uint8)
              for _ in range(8)]
    with pytest.raises(InvalidModelError, match=r"detect\(format='auto'\) cannot read the "
                                                r"model's outputs 'logits' \[1, 3\]"):
        quantize_with_budget(colour_classifier(tmp_path / "c.onnx"), Calibrator(images[:4], pre),
                             tmp_path / "c.int8.onnx", holdout=Calibrator(images[4:], pre, name="h"),
                             max_drop=0.1, metric="boxes", bias_correction="none")
    assert not list(tmp_path.glob("c.int8*")) and not list(tmp_path.glob(".c.int8*"))
