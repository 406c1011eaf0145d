"""detect(): every output format on synthetic outputs whose boxes are known exactly, the mapping
back to source pixels for every resize mode, class-aware NMS, bad input, and the runtime path
(tiny ONNX detectors built with onnx.helper, run by ONNX Runtime through load/infer/stream)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import xinfer_stream as xs
from xinfer_stream.runtime._detect import map_boxes, nms
from xinfer_stream.runtime._postprocess import ModelInfo

SQUARE = xs.Preprocess((64, 64))            # stretch; a 64x64 frame maps 1:1
CTX = xs.FrameContext((64, 64), SQUARE)
LABELS = ("cat", "dog", "bird")


def yolox_reference(pred: npt.NDArray[np.float32], size: tuple[int, int], p6: bool = False
                    ) -> npt.NDArray[np.float32]:
    """YOLOX's demo_postprocess, written out from its documented formula, then xyxy."""
    out = pred.copy()
    grids, strides = [], []
    for s in ([8, 16, 32, 64] if p6 else [8, 16, 32]):
        hs, ws = size[0] // s, size[1] // s
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), 2).reshape(1, -1, 2))
        strides.append(np.full((1, hs * ws, 1), s))
    g, st = np.concatenate(grids, 1), np.concatenate(strides, 1)
    out[..., :2] = (out[..., :2] + g) * st
    out[..., 2:4] = np.exp(out[..., 2:4]) * st
    b = out[0]
    return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2,
                     b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1).astype(np.float32)


def yolox_output(size: tuple[int, int], classes: int, p6: bool = False) -> npt.NDArray[np.float32]:
    strides = (8, 16, 32, 64) if p6 else (8, 16, 32)
    n = sum((size[0] // s) * (size[1] // s) for s in strides)
    out = np.zeros((1, n, 5 + classes), np.float32)
    out[0, :, :4] = np.random.default_rng(3).uniform(-1, 1, (n, 4))
    return out


# -- formats -----------------------------------------------------------------------------------
def test_yolox_follows_demo_postprocess_exactly() -> None:
    out = yolox_output((64, 64), 3)       # 64 + 16 + 4 = 84 cells
    # Cell (x 1, y 2) of stride 16 is candidate 64 + 2 * 4 + 1 = 73.
    out[0, 73, :4] = [0.5, 0.25, np.log(2.0), np.log(3.0)]
    out[0, 73, 4:] = [0.9, 0.1, 0.8, 0.05]                  # objectness, then classes
    out[0, 5, 4:] = [0.5, 0.9, 0.0, 0.0]                    # 0.45 > conf, class 0
    det = xs.detect("yolox", conf=0.3, labels=LABELS)(out_dict(out), CTX)
    assert det.class_ids.tolist() == [1, 0] and det.labels == ("dog", "cat")
    np.testing.assert_allclose(det.scores, [0.72, 0.45], rtol=1e-6)
    np.testing.assert_allclose(det.xyxy[0], [8.0, 12.0, 40.0, 60.0], atol=1e-4)
    ref = yolox_reference(out, (64, 64))
    np.testing.assert_allclose(det.xyxy, np.clip(ref[[73, 5]], 0, 64), atol=1e-4)


def test_yolox_p6_strides_are_chosen_by_the_candidate_count() -> None:
    size = (128, 128)
    out = yolox_output(size, 2, p6=True)      # 256 + 64 + 16 + 4 = 340
    out[0, 339, 4:] = [1.0, 0.2, 0.7]         # the one stride-64 cell... of row 1, col 1
    det = xs.detect("auto", conf=0.5)(out_dict(out), xs.FrameContext(size, xs.Preprocess(size)))
    ref = yolox_reference(out, size, p6=True)[339]
    np.testing.assert_allclose(det.xyxy[0], np.clip(ref, 0, 128), atol=1e-4)


def test_yolov8_centre_boxes_and_class_scores() -> None:
    n = 84
    out = np.zeros((1, 4 + 3, n), np.float32)
    out[0, :4, 10] = [20, 30, 10, 8]          # cx, cy, w, h
    out[0, 4:, 10] = [0.1, 0.2, 0.95]
    out[0, :4, 50] = [40, 40, 20, 20]
    out[0, 4:, 50] = [0.6, 0.0, 0.0]
    det = xs.detect("yolov8", labels=LABELS)(out_dict(out), CTX)
    assert det.labels == ("bird", "cat")
    np.testing.assert_array_equal(det.xyxy, [[15, 26, 25, 34], [30, 30, 50, 50]])
    np.testing.assert_allclose(det.scores, [0.95, 0.6])
    assert xs.detect()(out_dict(out), CTX).class_ids.tolist() == [2, 0]   # auto


def test_boxes_rows_with_and_without_batch_index() -> None:
    rows = np.array([[1, 2, 11, 12, 0.9, 2], [5, 5, 9, 9, 0.1, 0], [0, 0, 4, 4, 0.5, 1]], np.float32)
    for out in (rows, rows[None]):
        det = xs.detect("boxes")(out_dict(out), CTX)
        assert det.class_ids.tolist() == [2, 1]
        np.testing.assert_array_equal(det.xyxy, [[1, 2, 11, 12], [0, 0, 4, 4]])
    assert len(xs.detect()(out_dict(rows[None]), CTX)) == 2                  # auto
    # Already suppressed: overlapping rows of one class both stay.
    same = np.array([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0]], np.float32)
    assert len(xs.detect("boxes")(out_dict(same), CTX)) == 2
    seven = np.array([[0, 1, 2, 11, 12, 0.9, 2], [1, 5, 5, 9, 9, 0.8, 0]], np.float32)
    det = xs.detect("boxes")(out_dict(seven), CTX)
    assert det.class_ids.tolist() == [2] and det.xyxy.tolist() == [[1, 2, 11, 12]]


def test_onnx_nonmaxsuppression_style_outputs() -> None:
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 40], [1, 1, 5, 5]]], np.float32)
    scores = np.zeros((1, 3, 3), np.float32)
    scores[0, 1, 1] = 0.8
    scores[0, 2, 0] = 0.6
    selected = np.array([[0, 1, 1], [0, 2, 0]], np.int64)
    outputs = {"boxes": boxes, "scores": scores, "selected_indices": selected}
    for fmt in ("auto", "boxes"):
        det = xs.detect(fmt, labels=LABELS)(outputs, CTX)  # type: ignore[arg-type]
        assert det.labels == ("dog", "bird")
        np.testing.assert_array_equal(det.xyxy, [[20, 20, 30, 40], [0, 0, 10, 10]])
        np.testing.assert_allclose(det.scores, [0.8, 0.6])


def test_tensorrt_efficient_nms_style_outputs() -> None:
    outputs = {"num_dets": np.array([[2]], np.int32),
               "det_boxes": np.array([[[0, 0, 10, 10], [20, 20, 30, 40], [0, 0, 0, 0]]], np.float32),
               "det_scores": np.array([[0.9, 0.6, 0.0]], np.float32),
               "det_classes": np.array([[2, 0, 0]], np.int32)}
    for fmt in ("auto", "boxes"):
        det = xs.detect(fmt, labels=LABELS)(outputs, CTX)  # type: ignore[arg-type]
        assert det.labels == ("bird", "cat")
        np.testing.assert_array_equal(det.xyxy, [[0, 0, 10, 10], [20, 20, 30, 40]])


def test_negative_class_ids_are_refused_unless_below_conf() -> None:
    rows = np.array([[1, 2, 11, 12, 0.9, 2], [0, 0, 0, 0, 0.0, -1]], np.float32)   # padding row
    assert xs.detect("boxes", conf=0.0)(out_dict(rows), CTX).class_ids.tolist() == [2]
    rows[1, 4] = 0.5
    with pytest.raises(xs.InvalidModelError, match="class id -1"):
        xs.detect("boxes", labels=LABELS)(out_dict(rows), CTX)


def test_rows_that_are_not_finite_are_dropped() -> None:
    rows = np.array([[1, 2, 11, 12, 0.9, 2], [np.nan, 0, 4, 4, 0.8, 1], [0, 0, 4, 4, 0.5, np.inf]],
                    np.float32)
    assert xs.detect("boxes")(out_dict(rows), CTX).class_ids.tolist() == [2]


def gfl_level_outputs(size: tuple[int, int], classes: int, reg_max: int = 7
                      ) -> tuple[list[npt.NDArray[np.float32]], list[npt.NDArray[np.float32]]]:
    scores, dists = [], []
    for s in (8, 16, 32, 64):
        cells = -(-size[0] // s) * -(-size[1] // s)
        scores.append(np.zeros((1, cells, classes), np.float32))
        d = np.full((1, cells, 4 * (reg_max + 1)), -1e4, np.float32)
        d[..., 0::reg_max + 1] = 0.0   # every side at distance 0
        dists.append(d)
    return scores, dists


def set_distance(d: npt.NDArray[np.float32], cell: int, sides: tuple[float, ...], reg_max: int = 7) -> None:
    """Distances as exact expectations: a whole bin k, or k + 0.5 as two equal bins."""
    d[0, cell] = -1e4
    for side, value in enumerate(sides):
        k = int(value)
        d[0, cell, side * (reg_max + 1) + k] = 0.0
        if value != k:
            d[0, cell, side * (reg_max + 1) + k + 1] = 0.0


def test_gfl_picodet_levels_decode_exactly() -> None:
    size = (64, 96)                       # grids 8x12, 4x6, 2x3, 1x2 (ceil)
    scores, dists = gfl_level_outputs(size, 2)
    # Stride 16, cell row 1 col 2: centre (40, 24); distances l,t,r,b = 2, 1.5, 3, 0.5 bins.
    cell = 1 * 6 + 2
    scores[1][0, cell] = [0.1, 0.9]
    set_distance(dists[1], cell, (2, 1.5, 3, 0.5))
    # Stride 64, cell col 1: centre (96, 32): clipped at the frame's right edge.
    scores[3][0, 1] = [0.7, 0.0]
    set_distance(dists[3], 1, (1, 0.5, 1, 0.5))
    outputs = {f"s{i}": a for i, a in enumerate(scores)} | {f"d{i}": a for i, a in enumerate(dists)}
    ctx = xs.FrameContext(size, xs.Preprocess(size))
    det = xs.detect("gfl", conf=0.4)(outputs, ctx)
    assert det.class_ids.tolist() == [1, 0]
    np.testing.assert_allclose(det.xyxy[0], [40 - 32, 24 - 24, 40 + 48, 24 + 8], atol=1e-4)
    np.testing.assert_allclose(det.xyxy[1], [96 - 64, 32 - 32, 96, 64], atol=1e-4)
    # One concatenated pair over all levels decodes the same.
    cat = {"scores": np.concatenate(scores, 1), "boxes": np.concatenate(dists, 1)}
    again = xs.detect("gfl", conf=0.4)(cat, ctx)
    np.testing.assert_array_equal(again.xyxy, det.xyxy)


def test_a_user_callable_decodes_anything_else() -> None:
    def decode(outputs: dict[str, Any], input_size: tuple[int, int]) -> tuple[Any, ...]:
        assert input_size == (64, 64)
        return outputs["b"], outputs["s"]

    outputs = {"b": np.array([[0, 0, 10, 10], [1, 1, 10, 10], [30, 30, 40, 40]], np.float32),
               "s": np.array([[0.9, 0.0], [0.8, 0.0], [0.0, 0.7]], np.float32)}
    det = xs.detect(decode, iou=0.5)(outputs, CTX)
    assert det.class_ids.tolist() == [0, 1] and len(det) == 2      # NMS applied

    def flat(outputs: dict[str, Any], input_size: tuple[int, int]) -> tuple[Any, ...]:
        return outputs["b"], np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1])

    assert len(xs.detect(flat, iou=0.5)(outputs, CTX)) == 2
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        xs.detect(lambda o, s: (np.zeros((2, 3)), np.zeros((2, 1))))(outputs, CTX)


# -- geometry ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, box, want", [
    # 100x200 (h, w) frame. Letterbox 64x64: scale 0.32 -> 32x64 at offset y 16 (centre) / 0.
    (xs.Preprocess((64, 64), "letterbox"), [16, 24, 48, 40], [50, 25, 150, 75]),
    (xs.Preprocess((64, 64), "letterbox", letterbox_align="top-left", pad_value=114),
     [16, 8, 48, 24], [50, 25, 150, 75]),
    # Stretch: each axis on its own.
    (xs.Preprocess((64, 64)), [16, 16, 48, 32], [50, 25, 150, 50]),
    # Shorter-side crop: scale 0.64 -> 64x128, offset x -32.
    (xs.Preprocess((64, 64), "shorter_crop"), [0, 16, 64, 48], [50, 25, 150, 75]),
])
def test_boxes_map_back_to_source_pixels(spec: xs.Preprocess, box: list[float], want: list[float]) -> None:
    np.testing.assert_allclose(map_boxes(np.array([box], np.float32), spec, 100, 200)[0], want)
    rows = np.array([[*box, 0.9, 0]], np.float32)
    det = xs.detect("boxes")(out_dict(rows), xs.FrameContext((100, 200), spec))
    np.testing.assert_allclose(det.xyxy[0], want)
    assert det.frame_size == (100, 200)


@pytest.mark.parametrize("spec", [
    xs.Preprocess((48, 64), "letterbox"),
    xs.Preprocess((48, 64), "letterbox", letterbox_align="top-left", pad_value=114),
    xs.Preprocess((48, 64)),
    xs.Preprocess((48, 64), "shorter_crop"),
])
def test_mapping_inverts_the_preprocessing_of_real_pixels(spec: xs.Preprocess) -> None:
    """A white rectangle drawn in the source lands where the reference preprocess puts it; the box
    around it there maps back onto the rectangle (to within the resampling's half pixel)."""
    from xinfer_stream.preprocess import preprocess_frame

    frame = np.zeros((90, 150, 3), np.uint8)
    frame[30:60, 45:105] = 255
    x = preprocess_frame(xs.Preprocess(spec.size, spec.resize, layout="nhwc",
                                       letterbox_align=spec.letterbox_align), frame)[..., 0]
    ys, xs_ = np.nonzero(x > 127.5)
    found = np.array([[xs_.min(), ys.min(), xs_.max() + 1, ys.max() + 1]], np.float32)
    back = map_boxes(found, spec, 90, 150)[0]
    g = spec.geometry(90, 150)
    tol = max(150 / g.resized_w, 90 / g.resized_h)   # one model pixel, in source pixels
    visible = [45, 30, 105, 60] if spec.resize != "shorter_crop" else [
        max(45, -g.offset_x * 150 / g.resized_w), 30, min(105, (64 - g.offset_x) * 150 / g.resized_w), 60]
    np.testing.assert_allclose(back, visible, atol=tol)


# -- NMS ---------------------------------------------------------------------------------------
def test_nms_is_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7])
    assert nms(boxes, scores, np.array([0, 0, 1]), 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, np.array([0, 1, 2]), 0.5).tolist() == [0, 1, 2]


def test_nms_ties_keep_the_earlier_candidate_and_iou_at_the_threshold_stays() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [5, 0, 15, 10]], np.float32)
    scores = np.array([0.5, 0.5, 0.5])
    # Candidates 0 and 1 tie in score and coincide: 0 stays. IoU(0, 2) = 50 / 150 = 1/3 exactly.
    assert nms(boxes, scores, np.zeros(3, int), 1 / 3).tolist() == [0, 2]
    assert nms(boxes, scores, np.zeros(3, int), 0.33).tolist() == [0]
    # The same candidates in another class order keep the same boxes per class.
    assert nms(boxes, scores, np.array([1, 1, 0]), 0.33).tolist() == [0, 2]


def test_nms_empty_degenerate_and_max_det() -> None:
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).tolist() == []
    flat = np.array([[3, 3, 3, 3], [3, 3, 3, 3]], np.float32)   # zero area: IoU 0/0 suppresses nothing
    assert nms(flat, np.array([0.9, 0.8]), np.zeros(2, int), 0.5).tolist() == [0, 1]
    many = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(10)], np.float32)
    assert nms(many, np.linspace(1, 0.1, 10), np.zeros(10, int), 0.5, max_det=3).tolist() == [0, 1, 2]


def reference_nms(boxes: npt.NDArray[Any], scores: npt.NDArray[Any], classes: npt.NDArray[Any],
                  thr: float, max_det: int | None) -> list[int]:
    """Greedy NMS as its definition reads, one pair at a time in plain Python."""
    def iou(p: Any, q: Any) -> float:
        w = max(min(p[2], q[2]) - max(p[0], q[0]), 0.0)
        h = max(min(p[3], q[3]) - max(p[1], q[1]), 0.0)
        union = max(p[2] - p[0], 0.0) * max(p[3] - p[1], 0.0) + max(q[2] - q[0], 0.0) * max(q[3] - q[1], 0.0) - w * h
        return w * h / union if union > 0 else float("nan")

    keep: list[int] = []
    for j in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if any(classes[k] == classes[j] and iou(boxes[k], boxes[j]) > thr for k in keep):
            continue
        keep.append(j)
        if max_det is not None and len(keep) >= max_det:
            break
    return keep


@pytest.mark.parametrize("seed", range(40))
def test_blocked_nms_equals_the_definition(seed: int) -> None:
    """Small integer boxes: many exact ties in score and IoU, empty boxes, several blocks."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 700))
    xy = rng.integers(0, 20, (n, 2))
    boxes = np.concatenate([xy, xy + rng.integers(0, 8, (n, 2))], 1).astype(np.float32)
    scores = rng.integers(0, 5, n) / 4
    classes = rng.integers(0, 3, n)
    thr = float(rng.choice([0.0, 0.25, 1 / 3, 0.5, 0.7, 1.0]))
    max_det = int(rng.integers(1, 50)) if seed % 2 else None
    assert nms(boxes, scores, classes, thr, max_det=max_det).tolist() == reference_nms(
        boxes.astype(np.float64), scores, classes, thr, max_det)


def test_empty_outputs_all_suppressed_and_max_det_cut() -> None:
    out = np.zeros((1, 7, 84), np.float32)
    empty = xs.detect("yolov8")(out_dict(out), CTX)
    assert len(empty) == 0 and empty.xyxy.shape == (0, 4) and empty.labels == ()
    # 20 copies of one box in one class: one survives.
    out[0, :4, :20] = np.array([32, 32, 10, 10], np.float32)[:, None]
    out[0, 4, :20] = np.linspace(0.9, 0.5, 20)
    det = xs.detect("yolov8", iou=0.5)(out_dict(out), CTX)
    assert len(det) == 1 and det.scores[0] == pytest.approx(0.9)
    # Disjoint boxes: max_det keeps the best ones, best first.
    out[0, 0, :20] = np.arange(20) * 3 + 2
    out[0, 2, :20] = 1.0
    cut = xs.detect("yolov8", iou=0.5, max_det=4)(out_dict(out), CTX)
    np.testing.assert_allclose(cut.scores, np.linspace(0.9, 0.5, 20)[:4], rtol=1e-6)
    np.testing.assert_array_equal(np.diff(cut.scores) <= 0, True)


def test_conf_and_classes_filter() -> None:
    out = np.zeros((1, 7, 84), np.float32)
    out[0, :4, :3] = np.array([[10, 10, 4, 4], [30, 30, 4, 4], [50, 50, 4, 4]], np.float32).T
    out[0, 4:, 0] = [0.9, 0, 0]
    out[0, 4:, 1] = [0, 0.5, 0]
    out[0, 4:, 2] = [0, 0, 0.2]
    assert xs.detect("yolov8", conf=0.3)(out_dict(out), CTX).class_ids.tolist() == [0, 1]
    assert xs.detect("yolov8", conf=0.1, classes=[2, 1])(out_dict(out), CTX).class_ids.tolist() == [1, 2]
    assert len(xs.detect("yolov8", conf=0.95)(out_dict(out), CTX)) == 0


def test_agnostic_nms_suppresses_across_classes() -> None:
    # Two views of one object, scored as two classes (car 0.9, truck 0.8), and a third box apart.
    out = np.zeros((1, 7, 84), np.float32)
    out[0, :4, :3] = np.array([[20, 20, 10, 10], [21, 20, 10, 10], [50, 50, 6, 6]], np.float32).T
    out[0, 4:, 0] = [0.9, 0, 0]
    out[0, 4:, 1] = [0, 0.8, 0]
    out[0, 4:, 2] = [0, 0, 0.7]
    aware = xs.detect("yolov8", iou=0.5)(out_dict(out), CTX)
    assert aware.class_ids.tolist() == [0, 1, 2]
    agnostic = xs.detect("yolov8", iou=0.5, agnostic=True)(out_dict(out), CTX)
    assert agnostic.class_ids.tolist() == [0, 2]
    np.testing.assert_allclose(agnostic.scores, [0.9, 0.7], rtol=1e-6)
    # The classes filter runs first: without class 0, the truck is the best box of the two.
    assert xs.detect("yolov8", iou=0.5, agnostic=True, classes=[1, 2])(
        out_dict(out), CTX).class_ids.tolist() == [1, 2]
    # One class only: the same either way.
    out[0, 5:, :] = 0
    out[0, 4, :3] = [0.9, 0.8, 0.7]
    assert (xs.detect("yolov8", iou=0.5, agnostic=True)(out_dict(out), CTX).scores.tolist()
            == xs.detect("yolov8", iou=0.5)(out_dict(out), CTX).scores.tolist())


@pytest.mark.parametrize("seed", range(10))
def test_agnostic_selection_is_nms_of_all_classes_as_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    out = np.zeros((1, 4 + 5, 300), np.float32)
    out[0, :2] = rng.uniform(10, 54, (2, 300))
    out[0, 2:4] = rng.uniform(4, 20, (2, 300))
    out[0, 4:] = rng.uniform(0, 1, (5, 300)) ** 4
    got = xs.detect("yolov8", conf=0.2, iou=0.4, agnostic=True)(out_dict(out), CTX)
    pred = out[0].T
    cls, score = pred[:, 4:].argmax(1), pred[:, 4:].max(1)
    above = np.flatnonzero(score > 0.2)
    xyxy = np.concatenate([pred[above, :2] - pred[above, 2:4] / 2, pred[above, :2] + pred[above, 2:4] / 2], 1)
    keep = reference_nms(xyxy.astype(np.float64), score[above], np.zeros(len(above), int), 0.4, 300)
    np.testing.assert_array_equal(got.class_ids, cls[above][keep])
    np.testing.assert_allclose(got.scores, score[above][keep], rtol=1e-6)
    assert len(set(got.class_ids.tolist())) > 1, "the frame must mix classes to test anything"


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"conf": -0.1}, "conf"), ({"conf": 1.5}, "conf"), ({"iou": 2}, "iou"), ({"iou": "0.5"}, "iou"),
    ({"agnostic": 1}, "agnostic"),
    ({"format": "ssd"}, "format"), ({"max_det": 0}, "max_det"), ({"classes": [-1]}, "classes"),
    ({"classes": [3], "labels": LABELS}, r"\[3\].*labels has 3 names"),
    ({"classes": ["cat"]}, "classes"), ({"labels": "cat"}, "labels"),
])
def test_bad_arguments_are_value_errors_naming_them(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        xs.detect(**kwargs)


def test_bad_input_against_the_model_names_both_sides() -> None:
    out = np.zeros((1, 4 + 80, 84), np.float32)
    out[0, :4, 0] = [10, 10, 4, 4]
    out[0, 4, 0] = 0.9
    with pytest.raises(ValueError, match="labels has 3 names but the model's output has 80 classes"):
        xs.detect("yolov8", labels=LABELS)(out_dict(out), CTX)
    with pytest.raises(ValueError, match=r"class ids out of range: \[80\]; the model has 80 classes"):
        xs.detect("yolov8", classes=[0, 80])(out_dict(out), CTX)
    with pytest.raises(xs.InvalidModelError, match=r"'out' \[1, 100, 90\].*64x64.*format="):
        xs.detect()({"out": np.zeros((1, 100, 90), np.float32)}, xs.FrameContext((64, 64), SQUARE))
    with pytest.raises(ValueError, match=r"format='yolox'.*'out' \[1, 7, 84\]"):
        xs.detect("yolox")(out_dict(np.zeros((1, 7, 84), np.float32)), CTX)
    with pytest.raises(ValueError, match="gfl"):
        xs.detect("gfl")(out_dict(np.zeros((1, 7, 84), np.float32)), CTX)
    with pytest.raises(TypeError, match="FrameContext"):
        xs.detect()(out_dict(out))


# -- labels, metadata, supervision -------------------------------------------------------------
def test_labels_come_from_the_model_metadata() -> None:
    out = np.zeros((1, 7, 84), np.float32)
    out[0, :4, 0] = [10, 10, 4, 4]
    out[0, 6, 0] = 0.9
    for meta in ({"names": "{0: 'cat', 1: 'dog', 2: 'bird'}"}, {"labels": '["cat", "dog", "bird"]'},
                 {"character": "cat\ndog\nbird"}):
        ctx = xs.FrameContext((64, 64), SQUARE, ModelInfo(metadata=meta))
        assert xs.detect()(out_dict(out), ctx).labels == ("bird",)
    # Metadata of another class count is not used; explicit labels win.
    ctx = xs.FrameContext((64, 64), SQUARE, ModelInfo(metadata={"names": "{0: 'a'}"}))
    assert xs.detect()(out_dict(out), ctx).labels == ("2",)
    assert xs.detect(labels=["x", "y", "z"])(out_dict(out), ctx).labels == ("z",)


def test_detections_are_frozen_and_read_only() -> None:
    rows = np.array([[1, 2, 11, 12, 0.9, 2]], np.float32)
    det = xs.detect("boxes")(out_dict(rows), CTX)
    with pytest.raises(ValueError):
        det.xyxy[0, 0] = 5
    with pytest.raises(AttributeError):
        det.scores = det.scores  # type: ignore[misc]
    assert "Detections(1 in 64x64" in repr(det)


def test_to_supervision() -> None:
    sv = pytest.importorskip("supervision")
    rows = np.array([[1, 2, 11, 12, 0.9, 2], [0, 0, 4, 4, 0.5, 1]], np.float32)
    det = xs.detect("boxes", labels=LABELS)(out_dict(rows), CTX)
    converted = det.to_supervision()
    assert isinstance(converted, sv.Detections) and len(converted) == 2
    np.testing.assert_array_equal(converted.xyxy, det.xyxy)
    assert list(converted.data["class_name"]) == ["bird", "dog"]


# -- through the runtime -----------------------------------------------------------------------
def constant_detector(path: Path, output: npt.NDArray[np.float32], size: tuple[int, int],
                      metadata: dict[str, str] | None = None) -> Path:
    """An ONNX model with an image input whose output is ``output`` whatever the image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["fixed", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "constant_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[numpy_helper.from_array(output, "fixed"),
                     numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def test_infer_and_stream_map_boxes_to_each_frame(tmp_path: Path) -> None:
    out = np.zeros((1, 4 + 2, 84), np.float32)
    out[0, :4, 7] = [32, 32, 32, 16]          # input box (16, 24)-(48, 40)
    out[0, 5, 7] = 0.8
    model = constant_detector(tmp_path / "det.onnx", out, (64, 64),
                              {"names": "{0: 'person', 1: 'car'}"})
    spec = xs.Preprocess((64, 64), "letterbox", std=(255.0,) * 3, pad_value=114)

    async def main() -> tuple[xs.Result, list[xs.Result]]:
        async with xs.load(model, preprocess=spec) as engine:
            one = await engine.infer(np.zeros((100, 200, 3), np.uint8), postprocess=xs.detect())
            frames = [np.zeros((100, 200, 3), np.uint8), np.zeros((200, 100, 3), np.uint8)]
            async with engine.stream(frames, postprocess=xs.detect()) as results:
                return one, [r async for r in results]

    one, streamed = asyncio.run(main())
    assert isinstance(one.prediction, xs.Detections) and one.prediction.labels == ("car",)
    np.testing.assert_allclose(one.prediction.xyxy, [[50, 25, 150, 75]])
    np.testing.assert_allclose(streamed[0].prediction.xyxy, [[50, 25, 150, 75]])
    # 200x100 (h, w): scale 0.32 -> 64x32 at offset x 16: the box maps to (0, 75)-(100, 125).
    np.testing.assert_allclose(streamed[1].prediction.xyxy, [[0, 75, 100, 125]])
    assert streamed[1].prediction.frame_size == (200, 100)


def test_stream_many_maps_boxes_to_each_cameras_frames(tmp_path: Path) -> None:
    """Cameras of different sizes batched together: each result's boxes in its own frame."""
    out = np.zeros((1, 4 + 2, 84), np.float32)
    out[0, :4, 7] = [32, 32, 32, 16]          # input box (16, 24)-(48, 40)
    out[0, 5, 7] = 0.8
    model = constant_detector(tmp_path / "det.onnx", out, (64, 64))
    spec = xs.Preprocess((64, 64), "letterbox", std=(255.0,) * 3, pad_value=114)

    async def main() -> list[xs.Result]:
        async with xs.load(model, preprocess=spec) as engine:
            cameras = {"wide": [np.zeros((100, 200, 3), np.uint8)] * 3,
                       "tall": [np.zeros((200, 100, 3), np.uint8)] * 3}
            async with engine.stream_many(cameras, postprocess=xs.detect()) as items:
                return [r async for r in items if isinstance(r, xs.Result)]

    results = asyncio.run(main())
    assert sorted(r.camera or "" for r in results) == ["tall"] * 3 + ["wide"] * 3
    for r in results:
        assert isinstance(r.prediction, xs.Detections)
        expected = [[50, 25, 150, 75]] if r.camera == "wide" else [[0, 75, 100, 125]]
        np.testing.assert_allclose(r.prediction.xyxy, expected)


def test_stream_keeps_every_row_of_an_output_without_a_batch_axis(tmp_path: Path) -> None:
    """A detector ending in NMS gives ``[N, 6]`` rows, not a batch axis: the stream must hand
    the postprocess all N rows, not row 0 as if it were frame 0 of a batch."""
    rows = np.array([[8, 8, 24, 24, 0.9, 0], [30, 30, 60, 50, 0.7, 1], [0, 0, 4, 4, 0.6, 1]],
                    np.float32)
    model = constant_detector(tmp_path / "nms.onnx", rows, (64, 64))
    spec = xs.Preprocess((64, 64), "stretch", std=(255.0,) * 3)

    async def main() -> list[xs.Result]:
        async with xs.load(model, preprocess=spec) as engine:
            frames = [np.zeros((64, 64, 3), np.uint8)] * 2
            async with engine.stream(frames, postprocess=xs.detect("boxes")) as results:
                return [r async for r in results]

    for result in asyncio.run(main()):
        assert result.outputs["output0"].shape == (3, 6)
        assert isinstance(result.prediction, xs.Detections)
        np.testing.assert_allclose(result.prediction.xyxy, rows[:, :4])


def test_a_plain_callable_still_gets_only_the_outputs(tmp_path: Path) -> None:
    out = np.zeros((1, 6, 84), np.float32)
    model = constant_detector(tmp_path / "det.onnx", out, (64, 64))
    seen: list[tuple[str, ...]] = []

    def post(outputs: Any) -> int:
        seen.append(tuple(outputs))
        return 7

    async def main() -> xs.Result:
        async with xs.load(model, preprocess=SQUARE) as engine:
            return await engine.infer(np.zeros((8, 8, 3), np.uint8), postprocess=post)

    assert asyncio.run(main()).prediction == 7 and seen == [("output0",)]


def out_dict(a: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
    return {"out": a}
