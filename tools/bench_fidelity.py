"""How close xinfer-stream's results are to those of the model's own pipeline, on real models.

A model is trained and documented with its project's preprocessing (OpenCV resizes to 8-bit
pixels) and post-processing. This runs each clip's first ``--frames`` frames two ways and
compares what comes out:

* ours: ``engine.stream(clip, postprocess=...)`` with ``Preprocess.for_detector`` for the
  family (the classifier: ``shorter_crop`` with the given mean and std), on ONNX Runtime (the CPU path; the GPU kernel is tested equal to it to the bit);
* theirs: the project's preprocessing written out with OpenCV, the same ONNX model in ONNX
  Runtime, and the project's decode and selection:
  - ``--yolox``: YOLOX's ``preproc`` (BGR, resized with ``INTER_LINEAR`` to ``int(h*r) x
    int(w*r)``, 114 border right and bottom, raw 0..255), ``demo_postprocess`` (strides 8, 16,
    32), score = objectness x best class score, class-aware NMS as ``yolox.utils.postprocess``
    (torchvision's, no +1 in areas; across classes with ``--agnostic``, as its demos run it),
    boxes divided by ``r``;
  - ``--yolov8``: Ultralytics' ``LetterBox`` (``round(h*r)``, centred, the odd pixel split by
    ``round(d - 0.1)`` / ``round(d + 0.1)``, 114, RGB / 255), ``non_max_suppression`` (best
    class above ``conf``, the best 30,000, class offsets of 7,680, at most 300), ``scale_boxes``;
  - ``--classifier``: a shorter-side resize (``round``) with ``INTER_LINEAR`` and a centre crop,
    normalised with ``--classifier-mean`` / ``--classifier-std``; top-1 agreement.

Detections match when they have the same class and IoU >= 0.5 (greedy, theirs best first). Prints
one JSON line a model: their boxes and ours, recall (theirs that ours found), precision, and the
mean and largest score difference of matched boxes.

Needs OpenCV (``pip install opencv-python-headless``; not a dependency of xinfer-stream).

Usage: python3 tools/bench_fidelity.py [--yolox M] [--yolov8 M] [--classifier M] [--clips C ...]
       [--frames 60] [--conf 0.25] [--iou 0.45] [--agnostic]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import av  # noqa: E402
import onnxruntime as ort  # noqa: E402

import xinfer_stream as xs  # noqa: E402
from xinfer_stream.quantize._box_metrics import iou_matrix  # noqa: E402

Boxes = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]
_SHARED_CLIPS = ("walk.mkv", "box.mp4", "cup.mp4", "people-detection.gif", "Megamind_bugy.avi",
                 "car-detection.mp4", "bottle-detection.mp4")


def opencv() -> Any:
    """OpenCV, imported by name: an optional tool dependency without type stubs."""
    return importlib.import_module("cv2")


def default_clips() -> list[Path]:
    data = Path(os.environ.get("XINFER_SHARED_DATA", REPO.parent / "shared" / "data"))
    return [data / "video" / name for name in _SHARED_CLIPS]


def rgb_frames(clip: Path, count: int) -> Iterator[npt.NDArray[np.uint8]]:
    with av.open(str(clip)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= count:
                return
            yield np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)


def torchvision_nms(xyxy: npt.NDArray[np.float64], scores: npt.NDArray[np.float64],
                    iou: float) -> npt.NDArray[np.int64]:
    """torchvision.ops.nms: greedy, best first, a box goes when its IoU with a kept one > iou."""
    x1, y1, x2, y2 = xyxy.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return np.array(keep, dtype=np.int64)


def class_aware(xyxy: npt.NDArray[np.float64], scores: npt.NDArray[np.float64],
                classes: npt.NDArray[np.int64], iou: float, max_wh: float) -> npt.NDArray[np.int64]:
    return torchvision_nms(xyxy + classes[:, None] * max_wh, scores, iou)


def centre_to_corners(b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.concatenate([b[:, :2] - b[:, 2:4] / 2, b[:, :2] + b[:, 2:4] / 2], axis=1)


class Yolox:
    """YOLOX's ONNX demo pipeline (preproc, demo_postprocess) with yolox.utils.postprocess's
    class-aware selection."""

    format = "yolox"

    def __init__(self, session: ort.InferenceSession, size: tuple[int, int]) -> None:
        self.session, self.size = session, size

    def preprocess(self) -> xs.Preprocess:
        return xs.Preprocess.for_detector("yolox", self.size)

    def __call__(self, rgb: npt.NDArray[np.uint8], conf: float, iou: float, agnostic: bool) -> Boxes:
        cv2 = opencv()
        (out_h, out_w), (h, w) = self.size, rgb.shape[:2]
        r = min(out_h / h, out_w / w)
        padded = np.full((out_h, out_w, 3), 114, np.uint8)
        resized = cv2.resize(rgb[:, :, ::-1], (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR)
        padded[:resized.shape[0], :resized.shape[1]] = resized
        x = np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32)[None]
        out = self.session.run(None, {self.session.get_inputs()[0].name: x})[0][0].astype(np.float64)
        grids, strides = [], []
        for s in (8, 16, 32):
            xv, yv = np.meshgrid(np.arange(out_w // s), np.arange(out_h // s))
            grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
            strides.append(np.full((grids[-1].shape[0], 1), s))
        grid, stride = np.concatenate(grids), np.concatenate(strides)
        boxes = np.concatenate([(out[:, :2] + grid) * stride, np.exp(out[:, 2:4]) * stride], axis=1)
        cls = out[:, 5:].argmax(1)
        score = out[:, 4] * out[np.arange(len(out)), 5 + cls]
        keep = score >= conf
        xyxy, score, cls = centre_to_corners(boxes[keep]), score[keep], cls[keep]
        k = torchvision_nms(xyxy, score, iou) if agnostic else class_aware(xyxy, score, cls, iou, 7680.0)
        return xyxy[k] / r, score[k], cls[k]


class Yolov8:
    """Ultralytics' LetterBox, non_max_suppression and scale_boxes."""

    format = "yolov8"

    def __init__(self, session: ort.InferenceSession, size: tuple[int, int]) -> None:
        self.session, self.size = session, size

    def preprocess(self) -> xs.Preprocess:
        return xs.Preprocess.for_detector("yolov8", self.size)

    def __call__(self, rgb: npt.NDArray[np.uint8], conf: float, iou: float, agnostic: bool) -> Boxes:
        cv2 = opencv()
        (out_h, out_w), (h, w) = self.size, rgb.shape[:2]
        r = min(out_h / h, out_w / w)
        new_w, new_h = round(w * r), round(h * r)
        dw, dh = (out_w - new_w) / 2, (out_h - new_h) / 2
        im = rgb[:, :, ::-1]  # Ultralytics reads BGR with cv2 and flips to RGB after the letterbox
        if (w, h) != (new_w, new_h):
            im = cv2.resize(im, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        top, bottom = round(dh - 0.1), round(dh + 0.1)
        left, right = round(dw - 0.1), round(dw + 0.1)
        im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
        x = np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255
        p = self.session.run(None, {self.session.get_inputs()[0].name: x})[0][0].T.astype(np.float64)
        cls, score = p[:, 4:].argmax(1), p[:, 4:].max(1)
        keep = score > conf
        xyxy, score, cls = centre_to_corners(p[keep, :4]), score[keep], cls[keep]
        order = np.argsort(-score, kind="stable")[:30_000]
        xyxy, score, cls = xyxy[order], score[order], cls[order]
        k = (torchvision_nms(xyxy, score, iou) if agnostic
             else class_aware(xyxy, score, cls, iou, 7680.0))[:300]
        xyxy, score, cls = xyxy[k], score[k], cls[k]
        gain = min(out_h / h, out_w / w)
        pad_x, pad_y = round((out_w - w * gain) / 2 - 0.1), round((out_h - h * gain) / 2 - 0.1)
        xyxy = (xyxy - [pad_x, pad_y, pad_x, pad_y]) / gain
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, h)
        return xyxy, score, cls


def match(theirs: Boxes, ours: xs.Detections) -> list[float]:
    """Greedy matching, theirs best first: the score differences of the matched pairs."""
    if not len(theirs[0]) or not len(ours):
        return []
    ious = iou_matrix(theirs[0], ours.xyxy)
    ious[theirs[2][:, None] != ours.class_ids[None, :]] = 0.0
    taken: set[int] = set()
    diffs = []
    for i in np.argsort(-theirs[1], kind="stable"):
        for j in np.argsort(-ious[i], kind="stable"):
            if ious[i, j] < 0.5:
                break
            if j not in taken:
                taken.add(int(j))
                diffs.append(abs(float(theirs[1][i]) - float(ours.scores[j])))
                break
    return diffs


async def ours_on(model: Path, pre: xs.Preprocess, post: Any, clip: Path, count: int) -> list[Any]:
    predictions = []
    async with xs.load(model, preprocess=pre) as engine:
        async with engine.stream(str(clip), postprocess=post) as results:
            async for r in results:
                if r.frame_index >= count:
                    break
                predictions.append(r.prediction)
    return predictions


def input_size(session: ort.InferenceSession, override: int | None) -> tuple[int, int]:
    if override:
        return override, override
    meta = session.get_modelmeta().custom_metadata_map
    if "imgsz" in meta:   # Ultralytics writes it, e.g. "[320, 320]"
        h, w = json.loads(meta["imgsz"])
        return int(h), int(w)
    shape = session.get_inputs()[0].shape
    if not all(isinstance(v, int) for v in shape[2:]):
        raise SystemExit("the model's input size is dynamic: pass --size")
    return int(shape[2]), int(shape[3])


def detector_row(family: Yolox | Yolov8, model: Path, clips: list[Path], args: argparse.Namespace
                 ) -> dict[str, Any]:
    theirs_n = ours_n = 0
    diffs: list[float] = []
    post = xs.detect(family.format, conf=args.conf, iou=args.iou,  # type: ignore[arg-type]
                     agnostic=args.agnostic)
    for clip in clips:
        ours = asyncio.run(ours_on(model, family.preprocess(), post, clip, args.frames))
        for rgb, prediction in zip(rgb_frames(clip, args.frames), ours, strict=True):
            theirs = family(rgb, args.conf, args.iou, args.agnostic)
            theirs_n += len(theirs[0])
            ours_n += len(prediction)
            diffs += match(theirs, prediction)
    return {"model": model.name, "format": family.format, "size": list(family.size),
            "clips": len(clips), "frames_a_clip": args.frames, "conf": args.conf, "iou": args.iou,
            "agnostic": args.agnostic,
            "theirs": theirs_n, "ours": ours_n, "recall": round(len(diffs) / max(theirs_n, 1), 4),
            "precision": round(len(diffs) / max(ours_n, 1), 4),
            "score_diff_mean": round(float(np.mean(diffs)) if diffs else 0.0, 4),
            "score_diff_max": round(max(diffs, default=0.0), 4)}


def classifier_row(model: Path, clips: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    cv2 = opencv()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out_h, out_w = input_size(session, args.size)
    mean, std = np.float32(args.classifier_mean), np.float32(args.classifier_std)
    pre = xs.Preprocess(size=(out_h, out_w), resize="shorter_crop", mean=(args.classifier_mean,) * 3,
                        std=(args.classifier_std,) * 3)
    agree = frames = 0
    for clip in clips:
        ours = asyncio.run(ours_on(model, pre, xs.classify(), clip, args.frames))
        for rgb, prediction in zip(rgb_frames(clip, args.frames), ours, strict=True):
            h, w = rgb.shape[:2]
            s = max(out_h / h, out_w / w)
            new_h, new_w = max(round(h * s), out_h), max(round(w * s), out_w)
            im = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            y, x = (new_h - out_h) // 2, (new_w - out_w) // 2
            im = (im[y:y + out_h, x:x + out_w].astype(np.float32) - mean) / std
            logits = session.run(None, {session.get_inputs()[0].name: im.transpose(2, 0, 1)[None]})[0][0]
            agree += int(int(np.argmax(logits)) == prediction.best[0])
            frames += 1
    return {"model": model.name, "format": "classify", "size": [out_h, out_w], "clips": len(clips),
            "frames": frames, "top1_agreement": round(agree / max(frames, 1), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--yolox", type=Path)
    parser.add_argument("--yolov8", type=Path)
    parser.add_argument("--classifier", type=Path)
    parser.add_argument("--classifier-mean", type=float, default=127.0)
    parser.add_argument("--classifier-std", type=float, default=128.0)
    parser.add_argument("--size", type=int, help="square input size when the model's is dynamic")
    parser.add_argument("--clips", type=Path, nargs="+", default=None)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--iou", type=float, default=0.45)
    parser.add_argument("--agnostic", action="store_true",
                        help="NMS across classes on both sides (YOLOX's demos, Ultralytics' agnostic_nms)")
    args = parser.parse_args()
    try:
        opencv()
    except ImportError:
        print("needs OpenCV: pip install opencv-python-headless", file=sys.stderr)
        return 2
    if not (args.yolox or args.yolov8 or args.classifier):
        parser.error("name at least one model: --yolox, --yolov8 or --classifier")
    clips = args.clips or default_clips()
    missing = [str(c) for c in clips if not c.is_file()]
    if missing:
        parser.error(f"no such clip: {', '.join(missing)}")
    for path, family in ((args.yolox, Yolox), (args.yolov8, Yolov8)):
        if path:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            print(json.dumps(detector_row(family(session, input_size(session, args.size)), path, clips, args)),
                  flush=True)
    if args.classifier:
        print(json.dumps(classifier_row(args.classifier, clips, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
