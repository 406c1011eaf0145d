"""The box-agreement math behind ``--metric boxes`` on hand-made boxes, with the exact numbers
each case must give (FP32 boxes are the reference, INT8 boxes the candidate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from xinfer_stream.quantize._box_metrics import compare_boxes, iou_matrix


@dataclass(frozen=True)
class Frame:
    xyxy: npt.NDArray[Any]
    scores: npt.NDArray[Any]
    class_ids: npt.NDArray[Any]


def frame(*boxes: tuple[float, float, float, float, float, int]) -> Frame:
    """Rows of (x1, y1, x2, y2, score, class)."""
    rows = np.array(boxes, dtype=np.float64).reshape(-1, 6)
    return Frame(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64))


FOUR = frame((0, 0, 10, 10, 0.9, 0), (20, 0, 30, 10, 0.8, 0), (40, 0, 50, 10, 0.7, 1),
             (60, 0, 70, 10, 0.6, 1))


def test_identical_detections_score_one_everywhere() -> None:
    got = compare_boxes([FOUR, FOUR], [FOUR, FOUR])
    assert (got.precision, got.recall, got.f1, got.map50) == (1.0, 1.0, 1.0, 1.0)
    assert (got.reference_boxes, got.candidate_boxes, got.matched) == (8, 8, 8)
    assert got.per_class_ap == ((0, 1.0), (1, 1.0))


def test_one_missed_box_gives_the_known_recall_and_ap() -> None:
    three = frame((0, 0, 10, 10, 0.9, 0), (20, 0, 30, 10, 0.8, 0), (40, 0, 50, 10, 0.7, 1))
    got = compare_boxes([FOUR], [three])
    assert got.precision == 1.0
    assert got.recall == 0.75
    assert got.f1 == pytest.approx(2 * 0.75 / 1.75, abs=1e-12)
    # Class 0 found whole; class 1 half of its boxes at precision 1.
    assert got.per_class_ap == ((0, 1.0), (1, 0.5))
    assert got.map50 == 0.75


def test_a_box_of_the_wrong_class_is_a_miss_and_a_false_positive() -> None:
    got = compare_boxes([frame((0, 0, 10, 10, 0.9, 0))], [frame((0, 0, 10, 10, 0.9, 3))])
    assert (got.matched, got.precision, got.recall, got.f1, got.map50) == (0, 0.0, 0.0, 0.0, 0.0)
    assert got.per_class_ap == ((0, 0.0),)


@pytest.mark.parametrize(("height", "matches"), [(49, False), (50, True), (51, True)])
def test_iou_threshold_is_half_inclusive(height: int, matches: bool) -> None:
    reference = frame((0, 0, 100, 100, 0.9, 0))
    candidate = frame((0, 0, 100, height, 0.9, 0))     # IoU = height / 100
    assert iou_matrix(candidate.xyxy, reference.xyxy)[0, 0] == pytest.approx(height / 100)
    got = compare_boxes([reference], [candidate])
    assert got.matched == int(matches)
    assert got.map50 == (1.0 if matches else 0.0)


def test_a_false_positive_ranked_first_lowers_ap_by_the_interpolated_area() -> None:
    reference = frame((0, 0, 10, 10, 0.9, 0), (20, 0, 30, 10, 0.9, 0))
    candidate = frame((50, 50, 60, 60, 0.95, 0), (0, 0, 10, 10, 0.8, 0), (20, 0, 30, 10, 0.7, 0))
    got = compare_boxes([reference], [candidate])
    # Ranks: FP (p 0/1), TP (p 1/2, r 0.5), TP (p 2/3, r 1): the envelope is 2/3 over all recall.
    assert got.map50 == pytest.approx(2 / 3, abs=1e-12)
    assert got.precision == pytest.approx(2 / 3, abs=1e-12)
    assert got.recall == 1.0


def test_each_reference_box_is_matched_once_best_score_first() -> None:
    reference = frame((0, 0, 10, 10, 0.9, 0))
    # Two candidates on the same box: the better-scoring one takes it, the other is a duplicate.
    candidate = frame((0, 0, 10, 9, 0.6, 0), (0, 0, 10, 10, 0.8, 0))
    got = compare_boxes([reference], [candidate])
    assert (got.matched, got.precision, got.recall) == (1, 0.5, 1.0)
    assert got.map50 == 1.0      # the match comes first in score order


def test_empty_frames() -> None:
    empty = frame()
    both_empty = compare_boxes([empty, empty], [empty, empty])
    assert (both_empty.precision, both_empty.recall, both_empty.f1, both_empty.map50) == \
        (1.0, 1.0, 1.0, 1.0)
    assert both_empty.frames == 2 and both_empty.per_class_ap == ()
    invented = compare_boxes([empty], [frame((0, 0, 10, 10, 0.9, 0))])
    assert (invented.precision, invented.recall, invented.map50) == (0.0, 1.0, 0.0)
    lost = compare_boxes([FOUR], [empty])
    assert (lost.precision, lost.recall, lost.f1, lost.map50) == (1.0, 0.0, 0.0, 0.0)
    # An empty frame among full ones changes nothing.
    mixed = compare_boxes([FOUR, empty], [FOUR, empty])
    assert mixed.map50 == 1.0 and mixed.frames == 2


def test_frames_must_pair_up() -> None:
    with pytest.raises(ValueError, match="2 reference frames and 1 candidate"):
        compare_boxes([FOUR, FOUR], [FOUR])
