"""How well an INT8 detector's boxes agree with its FP32 original's: matching, precision, recall,
F1 and mAP@0.5, taking the FP32 detections as the ground truth.

Matching, per frame (the PASCAL VOC / COCO rule): the candidate (INT8) boxes are taken best score
first; each one matches the not yet matched reference (FP32) box of its own class with which its
IoU is highest, when that IoU is at least ``iou`` (0.5); a candidate that matches nothing is a
false positive, a reference box left unmatched a miss.

* precision = matched / candidate boxes, recall = matched / reference boxes, F1 their harmonic
  mean, over every frame at once; with no boxes on either side both are 1.0 (nothing to find,
  nothing invented); with no candidate box precision is 1.0, with no reference box recall is 1.0.
* AP of a class: the candidates of that class over every frame, best score first, give a
  precision-recall curve (recall counted against the class's reference boxes); AP is the area
  under its all-point interpolation (each precision replaced by the best precision at that recall
  or higher: VOC 2010 onwards, COCO's 101 points taken at every point). mAP@0.5 averages AP over
  the classes the reference holds; when the reference holds no box at all it is 1.0 if the
  candidates hold none either, else 0.0.

The FP32 model measured against itself scores 1.0 on all of them, so a budget's drop is
``1 - mAP@0.5`` (:func:`box_metric`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["FP32_COLOUR", "INT8_COLOUR", "BoxAgreement", "Boxes", "compare_boxes", "iou_matrix",
           "overlay_boxes"]

# Matches need at least this IoU (mAP@0.5).
IOU_THRESHOLD = 0.5
# The report's picture: FP32 boxes in green, INT8 boxes in magenta.
FP32_COLOUR = (0, 200, 0)
INT8_COLOUR = (230, 0, 230)


class Boxes(Protocol):
    """One frame's detections: what :class:`~xinfer_stream.Detections` holds (best first or not)."""

    @property
    def xyxy(self) -> npt.NDArray[Any]: ...       # [K, 4] x1, y1, x2, y2
    @property
    def scores(self) -> npt.NDArray[Any]: ...      # [K]
    @property
    def class_ids(self) -> npt.NDArray[Any]: ...   # [K] int


@dataclass(frozen=True)
class BoxAgreement:
    """Candidate detections against reference detections over some frames (module docstring).

    ``per_class_ap``: (class id, AP) for every class the reference holds, by class id.
    """

    frames: int
    reference_boxes: int
    candidate_boxes: int
    matched: int
    precision: float
    recall: float
    f1: float
    map50: float
    per_class_ap: tuple[tuple[int, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "reference_boxes": self.reference_boxes,
                "candidate_boxes": self.candidate_boxes, "matched": self.matched,
                "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "map50": self.map50,
                "per_class_ap": {str(c): ap for c, ap in self.per_class_ap}}


def iou_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """IoU of every box of ``a`` [N, 4] with every box of ``b`` [M, 4] (xyxy): [N, M]; boxes of
    no area have IoU 0 with everything."""
    x = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    y = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(x[:, None, 2], y[None, :, 2]) - np.maximum(x[:, None, 0], y[None, :, 0]),
                0.0, None)
    h = np.clip(np.minimum(x[:, None, 3], y[None, :, 3]) - np.maximum(x[:, None, 1], y[None, :, 1]),
                0.0, None)
    inter = w * h
    area_x = np.clip(x[:, 2] - x[:, 0], 0.0, None) * np.clip(x[:, 3] - x[:, 1], 0.0, None)
    area_y = np.clip(y[:, 2] - y[:, 0], 0.0, None) * np.clip(y[:, 3] - y[:, 1], 0.0, None)
    union = area_x[:, None] + area_y[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match_frame(reference: Boxes, candidate: Boxes, iou: float
                 ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """(matched flag, score, class) per candidate box of one frame (module docstring's rule)."""
    ref_classes = np.asarray(reference.class_ids, dtype=np.int64).reshape(-1)
    cand_classes = np.asarray(candidate.class_ids, dtype=np.int64).reshape(-1)
    scores = np.asarray(candidate.scores, dtype=np.float64).reshape(-1)
    overlaps = iou_matrix(candidate.xyxy, reference.xyxy)
    taken = np.zeros(len(ref_classes), dtype=bool)
    matched = np.zeros(len(cand_classes), dtype=bool)
    for index in np.argsort(-scores, kind="stable"):
        allowed = (ref_classes == cand_classes[index]) & ~taken
        if not allowed.any():
            continue
        row = np.where(allowed, overlaps[index], -1.0)
        best = int(row.argmax())
        if row[best] >= iou:
            taken[best] = True
            matched[index] = True
    return matched, scores, cand_classes


def _average_precision(matched: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64],
                       positives: int) -> float:
    """All-point interpolated AP of one class's candidates against ``positives`` references."""
    order = np.argsort(-scores, kind="stable")
    hits = matched[order].astype(np.float64)
    true_pos = np.cumsum(hits)
    precision = true_pos / np.arange(1, len(hits) + 1)
    recall = true_pos / positives
    # Precision made non-increasing from the right, then summed over recall's steps.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate(([0.0], recall)))
    return float((steps * envelope).sum())


def compare_boxes(reference: Sequence[Boxes], candidate: Sequence[Boxes], *,
                  iou: float = IOU_THRESHOLD) -> BoxAgreement:
    """``candidate[i]`` against ``reference[i]`` for every frame ``i`` (module docstring)."""
    if len(reference) != len(candidate):
        raise ValueError(f"compare_boxes got {len(reference)} reference frames and "
                         f"{len(candidate)} candidate frames; give one of each per frame")
    flags, scores, classes = [], [], []
    ref_classes = []
    for ref, cand in zip(reference, candidate, strict=True):
        matched, score, cls = _match_frame(ref, cand, iou)
        flags.append(matched)
        scores.append(score)
        classes.append(cls)
        ref_classes.append(np.asarray(ref.class_ids, dtype=np.int64).reshape(-1))
    all_flags = np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_classes = np.concatenate(classes) if classes else np.zeros(0, dtype=np.int64)
    all_refs = np.concatenate(ref_classes) if ref_classes else np.zeros(0, dtype=np.int64)
    matched_count = int(all_flags.sum())
    precision = matched_count / len(all_flags) if len(all_flags) else 1.0
    recall = matched_count / len(all_refs) if len(all_refs) else 1.0
    f1 = (2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0
    per_class = []
    for cls in np.unique(all_refs):
        mine = all_classes == cls
        per_class.append((int(cls), _average_precision(
            all_flags[mine], all_scores[mine], int((all_refs == cls).sum()))))
    if per_class:
        map50 = float(np.mean([ap for _, ap in per_class]))
    else:
        map50 = 1.0 if len(all_flags) == 0 else 0.0
    return BoxAgreement(frames=len(reference), reference_boxes=len(all_refs),
                        candidate_boxes=len(all_flags), matched=matched_count,
                        precision=precision, recall=recall, f1=f1, map50=map50,
                        per_class_ap=tuple(per_class))


def overlay_boxes(image: npt.NDArray[np.uint8], reference: Any, candidate: Any,
                  index: int) -> npt.NDArray[np.uint8]:
    """``image`` (held-out frame ``index``) with the FP32 detections (``reference``) in
    :data:`FP32_COLOUR` and the INT8 ones (``candidate``) in :data:`INT8_COLOUR` drawn on it,
    each ``Detections`` in the frame's pixels, and a caption saying which is which."""
    from ..video import annotate

    drawn = annotate(annotate(image, reference, colour=FP32_COLOUR), candidate,
                     colour=INT8_COLOUR)
    return annotate(drawn, None, caption=f"held-out frame {index}: FP32 {len(reference)} boxes "
                                         f"(green), INT8 {len(candidate)} boxes (magenta)")
