"""Object detection postprocess: decode a detector's outputs, threshold, class-aware NMS, and boxes
in the source frame's pixels.

``detect(format=...)`` returns a :class:`~xinfer_stream.runtime.FramePostprocess`: the runtime
calls it per frame with the frame's outputs and a ``FrameContext`` (the frame's size, the
Preprocess, the model's metadata) and it returns a frozen :class:`Detections`. Everything runs in
numpy on the thread that runs the stream's postprocess. Streams on a GPU backend run the selection
of yolov8 and yolox outputs on the GPU for the whole batch instead (runtime/_detect_gpu.py, same
rules, same Detections), and only map boxes and name them here.

Formats, each as its project documents its exported output (``N`` candidates, ``C`` classes;
a leading batch axis of 1 is optional):

* ``yolox``: ``[1, N, 5 + C]`` raw grid outputs of a YOLOX export (``decode_in_inference=False``;
  objectness and class scores already through the sigmoid). Per stride ``s`` in 8, 16, 32 (and 64
  for P6 models, chosen by ``N``) over a ``(H // s) x (W // s)`` grid in row-major order (YOLOX's
  ``demo_postprocess``): ``cx = (x + grid_x) * s``, ``cy = (y + grid_y) * s``, ``w = exp(w) * s``,
  ``h = exp(h) * s``; score = objectness x class score.
* ``yolov8``: ``[1, 4 + C, N]`` (Ultralytics YOLOv8/v11 export): ``cx, cy, w, h`` in input
  pixels, then ``C`` class scores (no objectness).
* ``boxes``: models that end in NMS: ``[N, 6]`` / ``[1, N, 6]`` rows ``x1, y1, x2, y2, score,
  class`` (YOLOv10, Ultralytics ``nms=True``/end-to-end exports); ``[N, 7]`` rows with the batch
  index first (``batch, x1, y1, x2, y2, score, class``: this frame's rows are those of batch 0);
  or ONNX ``NonMaxSuppression`` style, three outputs: ``selected_indices`` ``[K, 3]`` int64
  (``batch, class, box``), boxes ``[1, N, 4]`` (``x1, y1, x2, y2``, the order exporters feed
  the op) and scores ``[1, C, N]``; or TensorRT ``EfficientNMS_TRT`` style, four outputs:
  ``num_dets`` ``[1, 1]`` int, boxes ``[1, K, 4]``, scores ``[1, K]``, classes ``[1, K]`` (the
  first ``num_dets`` rows count). These are not suppressed again.
* ``gfl``: PP-PicoDet / GFL heads exported without post-processing (PaddleDetection
  ``export.post_process=False``): per level, class scores ``[1, HW, C]`` (sigmoid applied) and
  box distributions ``[1, HW, 4 * (reg_max + 1)]`` (``reg_max`` 7 typically), one pair per stride
  (8, 16, 32, 64; the stride is found from ``HW``), scores first, or one concatenated pair. The
  anchor of grid cell ``(i, j)`` at stride ``s`` is ``((j + 0.5) s, (i + 0.5) s)`` on a
  ``ceil(H / s) x ceil(W / s)`` grid; each side's distance is the expectation of its softmaxed
  distribution over ``0..reg_max``, times ``s``; box = anchor -/+ (left, top, right, bottom).
* a callable ``fn(outputs, input_size) -> (boxes, scores)``: ``boxes`` ``[N, 4]`` xyxy in model
  input pixels, ``scores`` ``[N, C]``; or ``(boxes, scores [N], class_ids [N])``.

``format="auto"`` recognises yolox, yolov8 and boxes from the output shapes and the input size.

Selection, for every format that is not ``boxes``: each candidate takes its best class (as
Ultralytics and YOLOX's ``postprocess`` do); candidates scoring above ``conf`` whose class is in
``classes`` stay; the best 30,000 of them (Ultralytics' ``max_nms``) go through class-aware NMS
(greedy, best first, ties broken by candidate order; a box is suppressed by a kept box of its own
class whose IoU with it exceeds ``iou``; classes are kept apart by offsetting each class's boxes
by a multiple of the boxes' span, as torchvision's ``batched_nms`` does), or with
``agnostic=True`` NMS across classes (a box is suppressed by any kept box: Ultralytics'
``agnostic_nms``, and what YOLOX's demos run); at most ``max_det`` stay, best first. Boxes are then mapped to the source frame by inverting the Preprocess's
geometry exactly (``x_src = (x - offset_x) * src_w / resized_w``, the inverse of the resampling's
coordinate map, for letterbox in either placement, stretch and shorter-side crop) and clipped to
the frame.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .._errors import InvalidModelError
from ..preprocess import Preprocess
from ._postprocess import FrameContext, FramePostprocess, Outputs, check_label_count

__all__ = ["DetectFormat", "Detections", "Detector", "detect", "nms"]

DetectFormat = Literal["auto", "yolox", "yolov8", "boxes", "gfl"]
Decoder = Callable[[Outputs, tuple[int, int]], tuple[Any, ...]]
_FORMATS = ("auto", "yolox", "yolov8", "boxes", "gfl")
_MAX_NMS = 30_000  # candidates entering NMS at most (Ultralytics' max_nms)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Detections:
    """The detections of one frame, best first.

    ``xyxy`` ``[K, 4]`` float32: boxes in the source frame's pixel coordinates (``x1, y1, x2, y2``,
    continuous: pixel ``i`` spans ``[i, i + 1)``), clipped to the frame; ``scores`` ``[K]``
    float32; ``class_ids`` ``[K]`` int64; ``labels``: each box's class name; ``frame_size``: the
    frame's ``(height, width)``. The arrays are read-only.
    """

    xyxy: FloatArray
    scores: FloatArray
    class_ids: IntArray
    labels: tuple[str, ...]
    frame_size: tuple[int, int]

    def __post_init__(self) -> None:
        for a in (self.xyxy, self.scores, self.class_ids):
            a.setflags(write=False)

    def __len__(self) -> int:
        return len(self.scores)

    def __repr__(self) -> str:
        shown = ", ".join(f"{label} {score:.2f}" for label, score in zip(self.labels[:5], self.scores[:5]))
        more = f", +{len(self) - 5}" if len(self) > 5 else ""
        return f"Detections({len(self)} in {self.frame_size[1]}x{self.frame_size[0]}: [{shown}{more}])"

    def to_supervision(self) -> Any:
        """These detections as ``supervision.Detections`` (class names under ``data["class_name"]``),
        so supervision's trackers and annotators work on them. Needs ``pip install supervision``."""
        try:
            # Imported by name: an optional package, without stubs, not a dependency of ours.
            sv: Any = importlib.import_module("supervision")
        except ImportError as exc:
            raise ImportError("Detections.to_supervision() needs the supervision package: "
                              "pip install supervision") from exc
        return sv.Detections(xyxy=np.array(self.xyxy, dtype=np.float32),
                             confidence=np.array(self.scores, dtype=np.float32),
                             class_id=np.array(self.class_ids, dtype=int),
                             data={"class_name": np.array(self.labels, dtype=str)})


def detect(format: DetectFormat | Decoder = "auto", *, conf: float = 0.25, iou: float = 0.45,
           classes: Sequence[int] | None = None, labels: Sequence[str] | None = None,
           max_det: int = 300, agnostic: bool = False) -> Detector:
    """A postprocess for detectors: :class:`Detections` per frame (see the module docstring for
    the formats and the selection).

    ``conf``: keep candidates scoring above it (0..1). ``iou``: NMS suppresses a box overlapping a
    better box of its class by more than this (0..1). ``classes``: keep only these class ids.
    ``labels``: one name per class (their count must equal the model's class count); by default
    the names in the model's metadata (Ultralytics ``names``, ...), else the class ids.
    ``max_det``: at most this many detections a frame. ``agnostic``: NMS across classes (a box
    is suppressed by an overlapping better box of any class), as Ultralytics' ``agnostic_nms``
    and YOLOX's demos; by default each class is suppressed on its own.
    """
    if not callable(format) and format not in _FORMATS:
        raise ValueError(f"detect(format=...) must be one of {', '.join(_FORMATS)} or a callable, "
                         f"got {format!r}")
    for name, value in (("conf", conf), ("iou", iou)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"detect({name}=...) must be a number in [0, 1], got {value!r}")
    if isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 1:
        raise ValueError(f"detect(max_det=...) must be a positive int, got {max_det!r}")
    if not isinstance(agnostic, bool):
        raise ValueError(f"detect(agnostic=...) must be True or False, got {agnostic!r}")
    if isinstance(labels, (str, bytes)):
        raise ValueError("detect(labels=...) must be a sequence of class names, not one string; "
                         "use read_labels(path) for a labels file")
    names = tuple(str(v) for v in labels) if labels is not None else None
    wanted: tuple[int, ...] | None = None
    if classes is not None:
        if isinstance(classes, (str, bytes)) or not all(
                isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in classes):
            raise ValueError(f"detect(classes=...) must be class ids (ints), got {classes!r}")
        wanted = tuple(sorted({int(c) for c in classes}))
        bad = [c for c in wanted if c < 0 or (names is not None and c >= len(names))]
        if bad:
            limit = f"0..{len(names) - 1} (labels has {len(names)} names)" if names is not None else ">= 0"
            raise ValueError(f"detect(classes=...) has class ids out of range: {bad}; ids are {limit}")
    return Detector(format, float(conf), float(iou), wanted, names, max_det, agnostic)


class Detector(FramePostprocess):
    """``detect()``'s postprocess. Call it as ``detector(outputs, context)``: the
    :class:`FrameContext` gives the frame's size and the Preprocess that boxes are mapped back
    through (the runtime passes it)."""

    def __init__(self, format: DetectFormat | Decoder, conf: float, iou: float,
                 classes: tuple[int, ...] | None, labels: tuple[str, ...] | None, max_det: int,
                 agnostic: bool = False) -> None:
        self._format = format
        self.conf = conf
        self.iou = iou
        self.classes = classes
        self.labels = labels
        self.max_det = max_det
        self.agnostic = agnostic
        # Resolved once per set of output shapes and input size (the first frame's).
        self._resolved: dict[tuple[Any, ...], tuple[str, Decoder]] = {}

    @property
    def format(self) -> str:
        return self._format if isinstance(self._format, str) else "callable"

    def __call__(self, outputs: Outputs, context: FrameContext | None = None) -> Detections:
        if context is None:
            raise TypeError("a detect() postprocess maps boxes to the source frame and needs its "
                            "context: the runtime passes it; by hand, call it as "
                            "detector(outputs, FrameContext((height, width), preprocess))")
        return self._detections(*self.kept(outputs, context.preprocess.size), context)

    def kept(self, outputs: Outputs, input_size: tuple[int, int]
             ) -> tuple[FloatArray, FloatArray, IntArray, int | None]:
        """One frame's kept boxes before they are mapped and named: ``(boxes [K, 4] in model
        input pixels, scores [K], class ids [K], the model's class count or None)``, best first."""
        fmt, decoder = self._decoder(outputs, input_size)
        decoded = decoder(outputs, input_size)
        if fmt == "boxes" or len(decoded) == 3:
            boxes, scores, class_ids, num_classes = _flat(decoded, fmt)
            keep = self._select_flat(boxes, scores, class_ids, suppress=fmt != "boxes")
        else:
            boxes, scores, class_ids, num_classes = _dense(decoded, self.conf)
            keep = self._select_flat(boxes, scores, class_ids, suppress=True)
        return boxes[keep], scores[keep], class_ids[keep], num_classes

    def _detections(self, boxes: FloatArray, scores: FloatArray, class_ids: IntArray,
                    num_classes: int | None, context: FrameContext) -> Detections:
        """The kept boxes (model input pixels, best first) as the frame's :class:`Detections`:
        labels checked and named, boxes mapped to the source frame."""
        names = self._names(context, num_classes, class_ids)
        h, w = context.frame_size
        xyxy = map_boxes(boxes, context.preprocess, h, w)
        return Detections(xyxy, scores.astype(np.float32, copy=False),
                          class_ids.astype(np.int64, copy=False),
                          tuple(names[c] if names is not None else str(int(c)) for c in class_ids),
                          (h, w))

    # -- format resolution ------------------------------------------------------------------
    def _decoder(self, outputs: Outputs, input_size: tuple[int, int]) -> tuple[str, Decoder]:
        if callable(self._format):
            user = self._format
            return "callable", lambda out, size: _check_user(user(out, size))
        key = (input_size, *((name, np.shape(v)) for name, v in outputs.items()))
        found = self._resolved.get(key)
        if found is None:
            found = _resolve(self._format, outputs, input_size)
            self._resolved[key] = found
        return found

    # -- selection --------------------------------------------------------------------------
    def _select_flat(self, boxes: FloatArray, scores: FloatArray, class_ids: IntArray, *,
                     suppress: bool) -> npt.NDArray[np.intp]:
        """Indices kept, best first: above conf, in classes, NMS (unless already done), max_det."""
        mask = scores > self.conf
        if self.classes is not None:
            mask &= np.isin(class_ids, self.classes)
        idx = np.flatnonzero(mask)
        order = idx[np.argsort(-scores[idx], kind="stable")][:_MAX_NMS]
        if not suppress:
            return order[:self.max_det]
        groups = np.zeros(len(order), np.int64) if self.agnostic else class_ids[order]
        kept = nms(boxes[order], scores[order], groups, self.iou, max_det=self.max_det)
        return order[kept]

    def _names(self, context: FrameContext, num_classes: int | None,
               class_ids: IntArray) -> tuple[str, ...] | None:
        names = self.labels
        if names is None:
            stored = context.model.labels
            if stored is not None and (num_classes is None or len(stored) == num_classes):
                names = stored
        elif num_classes is not None:
            check_label_count(names, num_classes, "the model's output")
        if num_classes is not None and self.classes is not None and self.classes[-1] >= num_classes:
            raise InvalidModelError(f"detect(classes=...) has class ids out of range: "
                                    f"{[c for c in self.classes if c >= num_classes]}; the model "
                                    f"has {num_classes} classes (ids 0..{num_classes - 1})")
        if class_ids.size and int(class_ids.min()) < 0:
            raise InvalidModelError(f"the model output class id {int(class_ids.min())} for a box "
                                    f"scoring above conf={self.conf}; class ids start at 0")
        if names is not None and class_ids.size and int(class_ids.max()) >= len(names):
            raise InvalidModelError(f"the model output class id {int(class_ids.max())} but labels "
                                    f"has {len(names)} names")
        return names


# -- selection helpers ------------------------------------------------------------------------
def _dense(decoded: tuple[Any, ...], conf: float) -> tuple[FloatArray, FloatArray, IntArray, int]:
    """(boxes_fn, class scores [N, C] or [C, N], objectness [N] or None, transposed) -> the
    candidates whose best score clears ``conf``: boxes decoded for those only."""
    boxes_of, class_scores, objectness, transposed = decoded
    axis = 0 if transposed else 1
    num_classes = int(class_scores.shape[axis])
    best = class_scores.max(axis=axis)
    if objectness is not None:
        best = best * objectness
    idx = np.flatnonzero(best > conf)
    sub = class_scores[:, idx] if transposed else class_scores[idx]
    class_ids = sub.argmax(axis=axis).astype(np.int64)
    boxes = np.asarray(boxes_of(idx), dtype=np.float32).reshape(-1, 4)
    return boxes, best[idx].astype(np.float32), class_ids, num_classes


def _flat(decoded: tuple[Any, ...], fmt: str) -> tuple[FloatArray, FloatArray, IntArray, int | None]:
    boxes, scores, class_ids = decoded[:3]
    num_classes = decoded[3] if len(decoded) > 3 else None
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1),
            np.asarray(class_ids).reshape(-1).astype(np.int64), num_classes)


def _check_user(result: Any) -> tuple[Any, ...]:
    """A user decoder's ``(boxes, scores[N, C])`` as the dense form, or ``(boxes, scores[N],
    class_ids[N])`` as the flat one; ``ValueError`` naming what came back otherwise."""
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise ValueError(f"a detect() format callable must return (boxes, scores) or (boxes, "
                         f"scores, class_ids), got {type(result).__name__}")
    boxes = np.asarray(result[0], dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"a detect() format callable returned boxes of shape {boxes.shape}; "
                         "expected [N, 4] (x1, y1, x2, y2 in model input pixels)")
    scores = np.asarray(result[1], dtype=np.float32)
    if len(result) == 3:
        if scores.shape != (len(boxes),) or np.shape(result[2]) != (len(boxes),):
            raise ValueError(f"a detect() format callable returned {len(boxes)} boxes, scores "
                             f"{scores.shape} and class_ids {np.shape(result[2])}; expected [N] each")
        return boxes, scores, np.asarray(result[2]).astype(np.int64)
    if scores.ndim != 2 or scores.shape[0] != len(boxes):
        raise ValueError(f"a detect() format callable returned {len(boxes)} boxes and scores of "
                         f"shape {scores.shape}; expected [N, classes]")
    return (lambda idx: boxes[idx]), scores, None, False


def nms(boxes: npt.ArrayLike, scores: npt.ArrayLike, class_ids: npt.ArrayLike, iou: float, *,
        max_det: int | None = None) -> npt.NDArray[np.intp]:
    """Greedy class-aware NMS; returns the indices kept, best first.

    Candidates are taken by descending score (ties: the lower index first); a kept box suppresses
    every later box of its class whose IoU with it is greater than ``iou``. Classes are kept apart
    by shifting each class's boxes by ``class * span`` (``span`` exceeds every box's extent), so
    all classes are handled in one vectorised pass. Arithmetic is float64, in which the shifts
    are exact. Stops after ``max_det`` kept boxes.

    The greedy scan goes in blocks of the sorted candidates: a block is first checked against
    every box kept so far, then resolved within itself from its pairwise IoU matrix. Work is
    about (block + kept) per candidate, so thousands of candidates (mAP-style ``conf=0.001``)
    cost milliseconds, and a ``max_det`` reached early ends the scan.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    c = np.asarray(class_ids).reshape(-1)
    if len(b) == 0:
        return np.zeros(0, dtype=np.intp)
    order = np.argsort(-s, kind="stable")
    span = float(b.max() - b.min()) + 1.0
    shifted = (b + (c.astype(np.float64) * span)[:, None])[order]
    limit = len(b) if max_det is None else max_det
    kept: list[int] = []             # positions in ``order``
    for start in range(0, len(order), _NMS_BLOCK):
        block = shifted[start:start + _NMS_BLOCK]
        candidates = np.arange(start, start + len(block))
        if kept:
            candidates = candidates[~(_pairwise_iou(block, shifted[kept]) > iou).any(axis=1)]
        if candidates.size == 0:
            continue
        suppresses = _pairwise_iou(shifted[candidates], shifted[candidates]) > iou
        alive = np.ones(candidates.size, dtype=bool)
        for r in range(candidates.size):
            if not alive[r]:
                continue
            kept.append(int(candidates[r]))
            if len(kept) >= limit:
                return order[np.asarray(kept, dtype=np.intp)]
            alive[r + 1:] &= ~suppresses[r, r + 1:]
    return order[np.asarray(kept, dtype=np.intp)]


_NMS_BLOCK = 256


def _pairwise_iou(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """IoU of every box of ``a`` [n, 4] with every box of ``b`` [k, 4]: [n, k]. Two empty boxes
    give NaN (0 / 0), which compares False: nothing is suppressed by an empty box."""
    ax1, ay1, ax2, ay2 = (a[:, i:i + 1] for i in range(4))
    bx1, by1, bx2, by2 = (b[None, :, i] for i in range(4))
    w = np.maximum(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0.0)
    h = np.maximum(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0.0)
    inter = w * h
    area_a = np.maximum(ax2 - ax1, 0.0) * np.maximum(ay2 - ay1, 0.0)
    area_b = np.maximum(bx2 - bx1, 0.0) * np.maximum(by2 - by1, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: npt.NDArray[np.float64] = inter / (area_a + area_b - inter)
    return out


def map_boxes(boxes: FloatArray, preprocess: Preprocess, src_h: int, src_w: int) -> FloatArray:
    """Boxes in model input pixels -> the ``src_h`` x ``src_w`` source frame's pixels, clipped.

    The inverse of the Preprocess's coordinate map: the resampler reads source
    ``u * src / resized`` for a point ``u`` of the resized image (half-pixel centres, so edges map
    to edges), and the resized image's origin sits at ``offset`` in the model input.
    """
    g = preprocess.geometry(src_h, src_w)
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    out[:, 0::2] = (out[:, 0::2] - g.offset_x) * (src_w / g.resized_w)
    out[:, 1::2] = (out[:, 1::2] - g.offset_y) * (src_h / g.resized_h)
    np.clip(out[:, 0::2], 0.0, float(src_w), out=out[:, 0::2])
    np.clip(out[:, 1::2], 0.0, float(src_h), out=out[:, 1::2])
    return out.astype(np.float32)


# -- formats ------------------------------------------------------------------------------------
def _frame(a: npt.NDArray[Any], ndim: int) -> npt.NDArray[Any]:
    """One frame's array with the leading batch axis of 1 dropped (when present)."""
    a = np.asarray(a)
    return a[0] if a.ndim == ndim + 1 and a.shape[0] == 1 else a


def _frame_shape(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """``_frame``'s shape, from a shape."""
    return tuple(shape[1:]) if len(shape) == ndim + 1 and shape[0] == 1 else tuple(shape)


@functools.lru_cache(maxsize=16)
def _yolox_grid(input_size: tuple[int, int], strides: tuple[int, ...]
                ) -> tuple[FloatArray, FloatArray]:
    """(grid xy [N, 2], stride [N]) in YOLOX's order: per stride, rows of (H//s) x (W//s)."""
    grids, expanded = [], []
    for s in strides:
        h, w = input_size[0] // s, input_size[1] // s
        xv, yv = np.meshgrid(np.arange(w), np.arange(h))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        expanded.append(np.full(h * w, s))
    return (np.concatenate(grids).astype(np.float32), np.concatenate(expanded).astype(np.float32))


def _yolox_strides(n: int, input_size: tuple[int, int]) -> tuple[int, ...] | None:
    for strides in ((8, 16, 32), (8, 16, 32, 64)):
        if sum((input_size[0] // s) * (input_size[1] // s) for s in strides) == n:
            return strides
    return None


def _yolox(name: str, strides: tuple[int, ...]) -> Decoder:
    def decode(outputs: Outputs, input_size: tuple[int, int]) -> tuple[Any, ...]:
        pred = _frame(outputs[name], 2)
        grid, stride = _yolox_grid(input_size, strides)

        def boxes_of(idx: npt.NDArray[np.intp]) -> FloatArray:
            p = pred[idx, :4].astype(np.float32)
            g, s = grid[idx], stride[idx, None]
            cxy = (p[:, :2] + g) * s
            wh = np.exp(p[:, 2:4]) * s
            return np.concatenate([cxy - wh / 2, cxy + wh / 2], axis=1)

        return boxes_of, pred[:, 5:], pred[:, 4], False
    return decode


def _yolov8(name: str) -> Decoder:
    def decode(outputs: Outputs, input_size: tuple[int, int]) -> tuple[Any, ...]:
        pred = _frame(outputs[name], 2)   # [4 + C, N]

        def boxes_of(idx: npt.NDArray[np.intp]) -> FloatArray:
            cx, cy, w, h = pred[:4, idx].astype(np.float32)
            return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)

        return boxes_of, pred[4:], None, True
    return decode


def _rows(name: str) -> Decoder:
    def decode(outputs: Outputs, input_size: tuple[int, int]) -> tuple[Any, ...]:
        rows = _frame(outputs[name], 2)
        rows = rows[np.isfinite(rows).all(axis=1)]
        if rows.shape[1] == 7:
            rows = rows[rows[:, 0] == 0, 1:]
        return rows[:, :4], rows[:, 4], np.rint(rows[:, 5]).astype(np.int64)
    return decode


def _onnx_nms(selected: str, boxes_name: str, scores_name: str) -> Decoder:
    def decode(outputs: Outputs, input_size: tuple[int, int]) -> tuple[Any, ...]:
        sel = np.asarray(outputs[selected]).reshape(-1, 3).astype(np.int64)
        sel = sel[sel[:, 0] == 0]
        boxes = _frame(outputs[boxes_name], 2)
        scores = _frame(outputs[scores_name], 2)   # [C, N]
        cls, box = sel[:, 1], sel[:, 2]
        return boxes[box], scores[cls, box], cls, int(scores.shape[0])
    return decode


def _efficient_nms(num: str, boxes_name: str, scores_name: str, classes_name: str) -> Decoder:
    def decode(outputs: Outputs, input_size: tuple[int, int]) -> tuple[Any, ...]:
        n = int(np.asarray(outputs[num]).reshape(-1)[0])
        boxes = _frame(outputs[boxes_name], 2)[:n]
        scores = _frame(outputs[scores_name], 1)[:n]
        classes = np.rint(_frame(outputs[classes_name], 1)[:n]).astype(np.int64)
        return boxes, scores, classes
    return decode


def _find_efficient_nms(outputs: Outputs) -> tuple[str, str, str, str] | None:
    """(num_dets, boxes, scores, classes) names when the outputs look like EfficientNMS_TRT's."""
    if len(outputs) != 4:
        return None
    shapes = {n: tuple(np.shape(v)[1:]) if np.ndim(v) >= 2 and np.shape(v)[0] == 1 else np.shape(v)
              for n, v in outputs.items()}
    integer = {n for n, v in outputs.items() if np.asarray(v).dtype.kind in "iu"}
    num = [n for n in outputs if n in integer and int(np.prod(np.shape(outputs[n]))) == 1]
    boxes = [n for n in outputs if len(shapes[n]) == 2 and shapes[n][1] == 4 and n not in integer]
    if len(num) != 1 or len(boxes) != 1:
        return None
    k = shapes[boxes[0]][0]
    flat = [n for n in outputs if n not in (*num, *boxes) and shapes[n] == (k,)]
    if len(flat) != 2:
        return None
    # The classes are the integer one, else the one whose name says so.
    classes = [n for n in flat if n in integer] or [n for n in flat if "class" in n.lower()]
    if len(classes) != 1:
        return None
    scores = next(n for n in flat if n != classes[0])
    return num[0], boxes[0], scores, classes[0]


def _grid_cells(input_size: tuple[int, int], stride: int) -> int:
    return math.ceil(input_size[0] / stride) * math.ceil(input_size[1] / stride)


def _gfl_stride(cells: int, input_size: tuple[int, int]) -> int | None:
    for s in (4, 8, 16, 32, 64, 128):
        if _grid_cells(input_size, s) == cells:
            return s
    return None


@functools.lru_cache(maxsize=16)
def _gfl_centers(input_size: tuple[int, int], strides: tuple[int, ...]) -> tuple[FloatArray, FloatArray]:
    """(anchor centres [N, 2], stride [N]) in PicoDet's order: per stride, row-major cells."""
    centers, expanded = [], []
    for s in strides:
        h, w = math.ceil(input_size[0] / s), math.ceil(input_size[1] / s)
        xv, yv = np.meshgrid(np.arange(w), np.arange(h))
        centers.append(np.stack(((xv.ravel() + 0.5) * s, (yv.ravel() + 0.5) * s), 1))
        expanded.append(np.full(h * w, s))
    return (np.concatenate(centers).astype(np.float32), np.concatenate(expanded).astype(np.float32))


def _gfl(score_names: tuple[str, ...], box_names: tuple[str, ...], strides: tuple[int, ...]) -> Decoder:
    def decode(outputs: Outputs, input_size: tuple[int, int]) -> tuple[Any, ...]:
        scores = np.concatenate([_frame(outputs[n], 2) for n in score_names])
        dist = np.concatenate([_frame(outputs[n], 2) for n in box_names])
        centers, stride = _gfl_centers(input_size, strides)
        bins = dist.shape[1] // 4

        def boxes_of(idx: npt.NDArray[np.intp]) -> FloatArray:
            d = dist[idx].astype(np.float32).reshape(-1, 4, bins)
            e = np.exp(d - d.max(axis=2, keepdims=True))
            expect = (e / e.sum(axis=2, keepdims=True)) @ np.arange(bins, dtype=np.float32)
            d4 = expect * stride[idx, None]
            c = centers[idx]
            return np.concatenate([c - d4[:, :2], c + d4[:, 2:]], axis=1)

        return boxes_of, scores, None, False
    return decode


def _describe(outputs: Outputs) -> str:
    return ", ".join(f"{n!r} {list(np.shape(v))}" for n, v in outputs.items())


def _resolve(fmt: str, outputs: Outputs, input_size: tuple[int, int]) -> tuple[str, Decoder]:
    """The decoder for ``fmt`` (or the format ``auto`` recognises) over these outputs;
    ``InvalidModelError`` (a ``ValueError``) naming the outputs when they fit no format."""
    if fmt == "gfl":
        return "gfl", _resolve_gfl(outputs, input_size)
    if fmt in ("boxes", "auto"):
        nms_style = _find_onnx_nms(outputs)
        if nms_style is not None:
            return "boxes", _onnx_nms(*nms_style)
        efficient = _find_efficient_nms(outputs)
        if efficient is not None:
            return "boxes", _efficient_nms(*efficient)
    found = [(name, kind) for name, value in outputs.items()
             if (kind := _single_kind(np.shape(value), input_size, fmt)) is not None]
    if len(found) == 1:
        name, kind = found[0]
        if kind == "yolox":
            strides = _yolox_strides(_frame_shape(np.shape(outputs[name]), 2)[0], input_size)
            assert strides is not None
            return kind, _yolox(name, strides)
        return kind, (_yolov8(name) if kind == "yolov8" else _rows(name))
    h, w = input_size
    anchors = sum((h // s) * (w // s) for s in (8, 16, 32))
    expect = {
        "yolox": f"yolox: [1, N, 5 + classes] with N = {anchors} grid cells (strides 8/16/32 "
                 f"over {h}x{w}) or {anchors + (h // 64) * (w // 64)} (with stride 64)",
        "yolov8": "yolov8: [1, 4 + classes, N]",
        "boxes": "boxes: [N, 6] / [1, N, 6] / [N, 7] rows, NonMaxSuppression selected_indices "
                 "[K, 3] with boxes [1, N, 4] and scores [1, C, N], or EfficientNMS num_dets "
                 "[1, 1], boxes [1, K, 4], scores [1, K], classes [1, K]",
    }
    wanted = [expect[f] for f in ("yolox", "yolov8", "boxes") if fmt in (f, "auto")]
    if len(found) > 1:
        raise InvalidModelError(
            f"detect(format={fmt!r}): several outputs fit ({', '.join(n for n, _ in found)}) among "
            f"{_describe(outputs)}; pass format= explicitly for a model whose output is unambiguous")
    hint = ("; pass format='yolox', 'yolov8', 'boxes' or 'gfl' (or a callable) if you know it"
            if fmt == "auto" else "")
    raise InvalidModelError(
        f"detect(format={fmt!r}) cannot read the model's outputs {_describe(outputs)} for a "
        f"{h}x{w} input; expected {'; or '.join(wanted)}{hint}")


def _single_kind(shape: tuple[int, ...], input_size: tuple[int, int], fmt: str) -> str | None:
    """Which single-output format a shape fits (``fmt``, or any for auto), or None."""
    dims = shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
    if len(dims) != 2:
        return None
    a, b = dims
    yolox_n = _yolox_strides(a, input_size) is not None
    if fmt == "yolox":
        return "yolox" if yolox_n and b >= 6 else None
    if fmt == "yolov8":
        # [4 + C, N]: N is the grid's cell count, or at least more than the rows (a transposed
        # [N, 4 + C] export would otherwise read as garbage).
        return "yolov8" if a >= 5 and (_yolox_strides(b, input_size) is not None or a < b) else None
    if fmt == "boxes":
        return "boxes" if b in (6, 7) and len(shape) in (2, 3) else None
    # auto: the candidate count tells the grid formats apart; short row lists are NMS output.
    if _yolox_strides(b, input_size) is not None and a >= 5:
        return "yolov8"
    if yolox_n and b >= 6:
        return "yolox"
    if b in (6, 7) and not yolox_n:
        return "boxes"
    return None


def _find_onnx_nms(outputs: Outputs) -> tuple[str, str, str] | None:
    """(selected_indices, boxes, scores) names when the outputs look like NonMaxSuppression's."""
    selected = [n for n, v in outputs.items()
                if np.asarray(v).dtype.kind in "iu" and np.ndim(v) == 2 and np.shape(v)[1] == 3]
    if len(selected) != 1:
        return None
    boxes = [n for n, v in outputs.items() if n not in selected and np.ndim(v) == 3
             and np.shape(v)[2] == 4 and np.shape(v)[0] == 1]
    if len(boxes) != 1:
        return None
    n = np.shape(outputs[boxes[0]])[1]
    scores = [s for s, v in outputs.items() if s not in (*selected, *boxes) and np.ndim(v) == 3
              and np.shape(v)[0] == 1 and np.shape(v)[2] == n]
    if len(scores) != 1:
        return None
    return selected[0], boxes[0], scores[0]


def _resolve_gfl(outputs: Outputs, input_size: tuple[int, int]) -> Decoder:
    """PicoDet's per-level (scores, distributions) outputs: scores and box distributions told
    apart by their last dimension (a multiple of 4); equal last dims: scores first, as
    PaddleDetection exports them."""
    arrays = {n: _frame_shape(np.shape(v), 2) for n, v in outputs.items()}
    problem = None
    if any(len(s) != 2 for s in arrays.values()) or len(arrays) % 2:
        problem = "an even number of [1, HW, channels] outputs"
    else:
        names = list(arrays)
        lasts = {arrays[n][1] for n in names}
        if len(lasts) == 2:
            box_last = max(lasts, key=lambda v: (v % 4 == 0 and v >= 8, v))
            box_names = [n for n in names if arrays[n][1] == box_last]
            score_names = [n for n in names if arrays[n][1] != box_last]
        elif len(lasts) == 1:
            half = len(names) // 2
            score_names, box_names = names[:half], names[half:]
        else:
            score_names, box_names = [], []
        bins = arrays[box_names[0]][1] if box_names else 0
        if not box_names or len(score_names) != len(box_names) or bins % 4 or bins < 8:
            problem = "class scores [1, HW, C] and box distributions [1, HW, 4 * (reg_max + 1)]"
        else:
            score_names.sort(key=lambda n: -arrays[n][0])
            box_names.sort(key=lambda n: -arrays[n][0])
            cells = [arrays[n][0] for n in score_names]
            if cells != [arrays[n][0] for n in box_names]:
                problem = "score and box outputs with the same cell counts per level"
            elif len(cells) == 1:
                total = cells[0]
                for strides in ((8, 16, 32), (8, 16, 32, 64)):
                    if sum(_grid_cells(input_size, s) for s in strides) == total:
                        return _gfl(tuple(score_names), tuple(box_names), strides)
                problem = (f"one concatenated pair over strides 8/16/32(/64): "
                           f"{sum(_grid_cells(input_size, s) for s in (8, 16, 32))} or "
                           f"{sum(_grid_cells(input_size, s) for s in (8, 16, 32, 64))} cells")
            else:
                found = [_gfl_stride(c, input_size) for c in cells]
                if all(s is not None for s in found):
                    return _gfl(tuple(score_names), tuple(box_names), tuple(s for s in found if s))
                problem = (f"per-level cell counts ceil(H/s) * ceil(W/s) for strides 8..64 "
                           f"(got {cells})")
    h, w = input_size
    raise InvalidModelError(
        f"detect(format='gfl') cannot read the model's outputs {_describe(outputs)} for a {h}x{w} "
        f"input; expected {problem}")
