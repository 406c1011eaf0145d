"""``detect()`` on the GPU for a whole batch: decode, threshold, top-k and class-aware NMS in
torch (NMS by ``torchvision.ops.nms``), and only the kept boxes copied to the host.

When it runs: a stream (``engine.stream``, ``engine.stream_many``) on a GPU backend whose
postprocess is a ``detect()`` of a ``yolov8`` or ``yolox`` model (its output float32 or float16),
where torch and torchvision are installed (looked up when the stream is made; imported on the
waiter thread with the first batch). Everything else (CPU backends, ``boxes`` and
``gfl`` formats, a format callable, ``engine.infer``, no torchvision) takes the numpy path of
runtime/_detect.py. Without torchvision there is no GPU stage: an exact greedy NMS in plain torch
needs a sequential scan or an iteration to convergence, which is not worth a second
implementation of the rule.

Selection is the one runtime/_detect.py documents, to float tolerance: each candidate's best class
(the first on ties); score above ``conf`` (compared in the output's dtype and in float32, as the
numpy path does) and class in ``classes``; per image the best ``max_nms`` by score (ties: lower
candidate first); greedy class-aware NMS; per image the first ``max_det`` kept. All images of a
batch go through NMS together: boxes of image ``i`` and class ``c`` are shifted by
``(i * classes + c) * span`` (float64, so the shifts are exact), so boxes of different images or
classes never overlap. NMS visits candidates in the numpy path's order exactly: it is handed each
candidate's rank, not its score, so equal scores cannot be reordered. One difference: a box whose
width or height is negative (no decoder makes one from an exp; a yolov8 head could) has area 0 in
the numpy IoU and a negative area in torchvision's; and torchvision compares the IoU with ``iou``
rounded to float32. torchvision's NMS builds a ``K x K`` bit matrix and reduces it on the host,
so whole images go through it in groups of about ``_NMS_GROUP`` candidates.

Host cost: a batch takes about 36 torch calls (and one more NMS call a group of images), made
few on purpose (tools/bench_postprocess.py counts them). Each call lets go of the GIL and must win
it back; beside threads running Python (the dispatcher, decode threads, the event loop) that can
wait up to a switch interval each, holding the batch's slot meanwhile. The host waits for the GPU
four times a batch: the count of candidates per image, the upload of the candidates' (image, rank)
pairs (made on the host from those counts), torchvision's NMS, and the kept rows' copy; the
``max_det`` cut and the padding are done on the host.

Streams, threads and memory: :meth:`GpuDetectStage.run` runs on the GPU runner's waiter thread,
after the batch's ``done`` event, on the runner's stage stream (``torch.cuda.ExternalStream``).
It reads the slot's device outputs in place (no copy) and returns once its kept boxes are on the
host, so the slot may be reused as soon as it returns. Its temporaries come from PyTorch's caching
allocator on the stage stream. It holds nothing that needs closing.

What the stream's postprocess then sees (``Result.outputs``): ``{"detections": [1, K, 6]}``
float32 rows ``x1, y1, x2, y2, score, class`` in model input pixels, best first, NaN rows padding
the frames of a batch to one length (the ``boxes`` format of runtime/_detect.py).
:attr:`GpuDetectStage.postprocess` maps them to the source frame as the numpy path does.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import InvalidModelError
from ..engines import TensorSpec
from ..preprocess import Preprocess
from ._detect import (_MAX_NMS, Detections, Detector, _resolve, _single_kind, _yolox_grid,
                      _yolox_strides)
from ._gpu_runner import DeviceOutput
from ._postprocess import FrameContext, FramePostprocess, Outputs

__all__ = ["DETECTIONS", "DeviceOutput", "GpuDetectStage", "KeptBoxes", "detect_stage",
           "gpu_detect_stage", "pad_by_image", "select_kept"]

DETECTIONS = "detections"  # the one output the stage hands on
# Candidates a torchvision NMS call takes, about: its CUDA kernel fills a K x K bit matrix and
# copies it to the host (K * K / 8 bytes: 2 MiB here, against 32 MiB at 16k), and the work is
# K * K / 64 words, so many small calls beat one big one once K passes a few thousand.
_NMS_GROUP = 4_096
_DTYPES = ("float32", "float16")


def gpu_detect_stage(postprocess: object, backend: Any, preprocess: Preprocess
                     ) -> GpuDetectStage | None:
    """The GPU stage for ``postprocess`` on ``backend`` (a GPU backend), or ``None`` when the
    numpy path applies (see the module docstring for when)."""
    if getattr(backend, "device", "cpu") != "cuda":
        return None
    return detect_stage(postprocess, backend.outputs, preprocess,
                        device=f"cuda:{int(getattr(backend, 'ordinal', 0))}")


def detect_stage(postprocess: object, outputs: Sequence[TensorSpec], preprocess: Preprocess, *,
                 device: str) -> GpuDetectStage | None:
    """The batch stage of ``postprocess`` for a model with these output specs, its tensors on the
    torch ``device``; ``None`` when the numpy path applies (see the module docstring)."""
    if not isinstance(postprocess, Detector) or postprocess.format == "callable":
        return None
    shapes = {spec.name: tuple(d for d in spec.shape[1:] if d is not None) for spec in outputs}
    if any(len(shapes[spec.name]) != len(spec.shape) - 1 for spec in outputs):
        return None  # a dynamic non-batch dimension: not a grid format
    # One frame's outputs as the numpy path would see them, without allocating them.
    frame = {spec.name: np.broadcast_to(np.zeros((), spec.dtype), (1, *shapes[spec.name]))
             for spec in outputs}
    try:
        kind, _ = _resolve(postprocess.format, frame, preprocess.size)
    except InvalidModelError:
        return None  # the numpy path raises it, per frame, with the same message
    if kind not in ("yolov8", "yolox"):
        return None
    name = next(n for n, v in frame.items()
                if _single_kind(np.shape(v), preprocess.size, postprocess.format) == kind)
    if str(np.dtype(frame[name].dtype)) not in _DTYPES:
        return None
    if any(importlib.util.find_spec(m) is None for m in ("torch", "torchvision")):
        return None  # looked up, not imported: the waiter imports them on the first batch
    frame_shape = frame[name].shape[1:]
    num_classes = frame_shape[0] - 4 if kind == "yolov8" else frame_shape[1] - 5
    strides = _yolox_strides(frame_shape[0], preprocess.size) if kind == "yolox" else None
    return GpuDetectStage(postprocess, kind, name, num_classes, preprocess.size, strides, device)


class GpuDetectStage:
    """A ``detect()`` run on the GPU for whole batches; see the module docstring. Thread-safe:
    several runners (one per frame layout in ``stream_many``) may share one."""

    def __init__(self, detector: Detector, kind: str, name: str, num_classes: int,
                 input_size: tuple[int, int], strides: tuple[int, ...] | None, device: str) -> None:
        self.detector = detector
        self.kind = kind
        self.name = name
        self.postprocess = KeptBoxes(detector, num_classes)
        self._input_size = input_size
        self._strides = strides
        self._device_name = device
        self._lock = threading.Lock()
        self._tensors: _Tensors | None = None
        self._streams: dict[int, Any] = {}

    def _ready(self) -> _Tensors:
        """torch, torchvision's NMS and the constant tensors on the device, made once."""
        with self._lock:
            if self._tensors is None:
                torch = importlib.import_module("torch")
                nms = importlib.import_module("torchvision.ops").nms
                device = torch.device(self._device_name)
                grid = None
                if self._strides is not None:
                    cells, stride = _yolox_grid(self._input_size, self._strides)
                    grid = torch.from_numpy(np.column_stack([cells, stride])).to(device)
                classes = self.detector.classes
                self._tensors = _Tensors(torch, nms, device, grid, None if classes is None
                                         else torch.tensor(classes, device=device))
            return self._tensors

    def _external(self, handle: int) -> Any:
        t = self._ready()
        with self._lock:
            stream = self._streams.get(handle)
            if stream is None:
                stream = self._streams[handle] = t.torch.cuda.ExternalStream(handle, device=t.device)
            return stream

    def run(self, outputs: Mapping[str, DeviceOutput], *, stream: int
            ) -> dict[str, npt.NDArray[np.generic]]:
        """The batch's kept boxes, ``{"detections": [n, K, 6]}`` on the host (NaN rows pad),
        from its device ``outputs``; the GPU work goes on ``stream`` (raw ``cudaStream_t``),
        which must already be ordered after whatever wrote the outputs. Returns when done."""
        t = self._ready()
        output = outputs[self.name]
        with t.torch.cuda.device(t.device), t.torch.cuda.stream(self._external(stream)):
            rows = self.select(t.torch.as_tensor(output, device=t.device))
        return {DETECTIONS: pad_by_image(rows, output.shape[0])}

    def select(self, pred: Any) -> npt.NDArray[np.float32]:
        """:func:`select_kept` of a batch of this model's raw output (a tensor on the stage's
        device, batch first), with the detector's settings, on torch's current stream."""
        t = self._ready()
        with t.torch.inference_mode():
            return select_kept(pred, self.kind, conf=self.detector.conf, iou=self.detector.iou,
                               classes=t.classes, max_det=self.detector.max_det, grid=t.grid,
                               nms=t.nms)


@dataclass(frozen=True)
class _Tensors:
    """What a stage needs from torch, made on first use: the modules, the device, YOLOX's grid
    (``[N, 3]``: cell x, cell y, stride), the ``classes`` filter."""

    torch: Any
    nms: Any
    device: Any
    grid: Any
    classes: Any


def select_kept(pred: Any, kind: str, *, conf: float, iou: float, classes: Any, max_det: int,
                grid: Any, nms: Any, max_nms: int = _MAX_NMS
                ) -> npt.NDArray[np.float32]:
    """The kept boxes of a batch of raw outputs: float32 ``[K, 7]`` host rows ``image, x1, y1,
    x2, y2, score, class``, by image, best first; the work in torch on ``pred``'s device, in
    few calls (see the module docstring).

    ``pred``: ``[n, 4 + C, N]`` (``kind="yolov8"``) or ``[n, N, 5 + C]`` (``"yolox"``, with
    ``grid``: a float32 ``[N, 3]`` tensor of each candidate's grid cell x, y and stride).
    ``classes``: a tensor of the class ids to keep, or ``None``. ``nms``: ``torchvision.ops.nms``.
    """
    lib = _torch()
    n = pred.shape[0]
    if kind == "yolov8":
        class_scores, axis, objectness = pred[:, 4:], 1, None
    else:
        class_scores, axis, objectness = pred[:, :, 5:], 2, pred[:, :, 4]
    num_classes = class_scores.shape[axis]
    best, class_ids = class_scores.max(dim=axis)                    # the first best on ties
    if objectness is not None:
        best = best * objectness
    if best.dtype == lib.float32:
        score, mask = best, best > conf
    else:  # above conf in the output's dtype and in float32, as the numpy path compares
        score = best.float()
        mask = (best > conf) & (score > conf)
    if classes is not None:
        mask &= lib.isin(class_ids, classes)
    order = lib.where(mask, score, float("-inf")).argsort(dim=1, descending=True, stable=True)
    per_image = [min(c, max_nms) for c in mask.sum(dim=1).tolist()]  # waits for the GPU
    total = sum(per_image)
    if total == 0:
        return np.zeros((0, 7), np.float32)
    # Each image's first per_image[i] candidates by score, as (image, rank) pairs made on the
    # host, with each image's first class group (image * classes) for NMS.
    image_np = np.repeat(np.arange(n), per_image)
    rank_np = np.arange(total) - np.repeat(np.cumsum(per_image) - per_image, per_image)
    image, rank, first_group = lib.from_numpy(
        np.stack([image_np, rank_np, image_np * num_classes])).to(pred.device).unbind(0)
    cand = order[image, rank]
    if kind == "yolov8":
        xywh = pred[image, :4, cand]
        xywh = xywh if xywh.dtype == lib.float32 else xywh.float()
        xy, half = xywh[:, :2], xywh[:, 2:] / 2
        boxes = lib.cat([xy - half, xy + half], dim=1)
    else:
        assert grid is not None
        p = pred[image, cand, :4]
        p = p if p.dtype == lib.float32 else p.float()
        g = grid[cand]
        strides = g[:, 2:]
        cxy = (p[:, :2] + g[:, :2]) * strides
        half = lib.exp(p[:, 2:]) * strides / 2
        boxes = lib.cat([cxy - half, cxy + half], dim=1)
    labels = class_ids[image, cand]
    rows = lib.cat([boxes, lib.stack([score[image, cand], labels.float(), image.float()], dim=1)],
                   dim=1)                                  # x1, y1, x2, y2, score, class, image
    kept: npt.NDArray[np.float32] = (
        rows[_nms_in_groups(boxes, first_group + labels, per_image, iou, nms)].cpu().numpy())
    # Each image's first max_det kept rows (kept positions ascend: by image, best first).
    image_kept = kept[:, 6].astype(np.int64)
    counts = np.bincount(image_kept, minlength=n)
    first = np.arange(len(kept)) - (np.cumsum(counts) - counts)[image_kept] < max_det
    return kept[first][:, [6, 0, 1, 2, 3, 4, 5]]


def _nms_in_groups(boxes: Any, groups: Any, per_image: Sequence[int], iou: float, nms: Any
                   ) -> Any:
    """Positions kept by greedy NMS within each group id, ascending. Candidates come
    image-major and best first, ``per_image[i]`` of image ``i``; NMS is handed minus their
    position as the score, so it visits them in exactly this order. Boxes of different groups
    are shifted ``group * span`` apart (float64, so the shifts are exact) and never overlap.
    Images go through torchvision in runs of about ``_NMS_GROUP`` candidates."""
    lib = _torch()
    b = boxes.double()
    low, high = b.aminmax()
    shifted = lib.addcmul(b, groups.double().unsqueeze(1), high - low + 1.0)
    score = lib.arange(0, -b.shape[0], -1, dtype=lib.float64, device=b.device)
    runs, start, end = [], 0, 0
    for count in per_image:
        if end > start and end - start + count > _NMS_GROUP:
            runs.append((start, end))
            start = end
        end += count
    runs.append((start, end))
    if len(runs) == 1:
        return nms(shifted, score, iou)  # by decreasing "score": ascending positions
    return lib.cat([nms(shifted[s:e], score[s:e], iou) + s for s, e in runs])


def _torch() -> Any:
    return importlib.import_module("torch")  # only called where a stage (so torch) exists


def pad_by_image(rows: npt.NDArray[np.float32], n: int) -> npt.NDArray[np.float32]:
    """``[K, 7]`` rows (image first, by image) -> ``[n, M, 6]``, M the most rows of an image,
    NaN rows padding the others."""
    image = rows[:, 0].astype(np.int64)
    counts = np.bincount(image, minlength=n)
    out = np.full((n, int(counts.max(initial=0)), 6), np.nan, np.float32)
    rank = np.arange(len(rows)) - (np.cumsum(counts) - counts)[image]
    out[image, rank] = rows[:, 1:]
    return out


class KeptBoxes(FramePostprocess):
    """The host part of a :class:`GpuDetectStage`: one frame's ``{"detections": [1, K, 6]}``
    (NaN rows are padding) as its :class:`Detections`, mapped and named by the detector."""

    def __init__(self, detector: Detector, num_classes: int) -> None:
        self.detector = detector
        self.num_classes = num_classes

    def __call__(self, outputs: Outputs, context: FrameContext | None = None) -> Detections:
        if context is None:
            raise TypeError("the GPU detect stage's postprocess needs the frame's context; the "
                            "runtime passes it")
        rows = np.asarray(outputs[DETECTIONS], dtype=np.float32).reshape(-1, 6)
        rows = rows[~np.isnan(rows[:, 4])]
        return self.detector._detections(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64),
                                         self.num_classes, context)
