"""``detect()`` on the GPU for a whole batch: decode, threshold, top-k and class-aware greedy NMS
as fixed-shape torch work that two CUDA graph replays run, and only the kept boxes copied to the
host.

When it runs: a stream (``engine.stream``, ``engine.stream_many``) on a GPU backend whose
postprocess is a ``detect()`` of a ``yolov8`` or ``yolox`` model (its output float32 or float16),
where torch is installed (looked up when the stream is made; imported on the waiter thread with
the first batch). Everything else (CPU backends, ``boxes`` and ``gfl`` formats, a format callable,
``engine.infer``) takes the numpy path of runtime/_detect.py.

Selection is the one runtime/_detect.py documents, computed the same way: each candidate's best
class (the first on ties); score above ``conf`` (compared in the output's dtype and in float32, as
the numpy path does) and class in ``classes``; by score, ties to the lower candidate; greedy
class-aware NMS (across classes with ``agnostic``); the first ``max_det`` kept. Boxes are decoded in float32 by the same formulas;
the IoU is computed in float32 where the numpy path uses float64 (half the memory traffic of the
largest piece of work), so a pair whose IoU lies within float32 rounding of ``iou`` (about 1e-6)
may be decided the other way, as with torchvision's NMS.

Why fixed shapes: every torch call lets go of the GIL and must win it back, which beside a thread
running Python (the runtime's dispatcher, decode threads, event loop) can take a switch interval
(5 ms) each; a stage of dozens of calls took 395-634 ms a batch that way on an H100. Work whose
shapes do not depend on the data can be captured in CUDA graphs, so a batch costs a handful of
calls: copy its output in, replay the ranking, read the counts, replay the selection, read the
kept rows. The two pieces:

* ranking (:func:`rank_candidates`): each image's candidates by score, those below ``conf`` or
  outside ``classes`` after the rest, and how many clear them. The host reads the counts (the one
  wait before the end) and picks ``K``, the smallest of :data:`_CANDIDATE_SIZES` (64 to 2,048)
  that holds the batch's most;
* selection (:func:`select_ranked`), on each image's first ``K``: ``S[r, c]`` says candidate ``r``
  (earlier) would suppress ``c`` (same class unless ``agnostic``, IoU above ``iou``). Greedy NMS keeps ``c`` exactly
  when no kept earlier candidate suppresses it; that recursion has one solution, which ``keep =
  valid & ~any_r(S[r, c] & keep[r])`` reaches from ``keep = valid`` (after ``t`` rounds every
  candidate whose chain of suppressors is at most ``t`` long is right). The graph runs
  :data:`_ROUNDS` rounds and one more to check that nothing changed: an image that settled holds
  greedy NMS's result exactly. Each image's first ``max_det`` kept boxes go to fixed rows (NaN
  padding), with a flag an image.

An image with more than 2,048 candidates above ``conf`` (mAP-style
``conf=0.001``) or whose NMS did not settle is flagged, and its outputs are copied to the host and
go through the numpy path: the same result, at numpy's cost (milliseconds a frame).
:attr:`GpuDetectStage.fallback_frames` counts them (``GpuStatistics.stage_fallback_frames``).

Graphs: a batch of ``n`` frames runs in bucket ``b``, the smallest power of two >= ``n``: its
output is copied (device to device) into the bucket's input, rows past ``n`` holding whatever the
bucket last held (computed, never read). Each bucket has a ranking graph and a selection graph
a ``K``. A piece's first run is op by op (the warm-up a capture needs); its next captures it
(``torch.cuda.graph``, thread-local mode) and every later one replays it. The graphs share one
memory pool: they run one at a time, and each output is read (the ranking's by the selection
right after it) before another graph runs, so one's temporaries may reuse another's. A capture
that fails is tried again by the rule of runtime/_capture.py, the work meanwhile run op by op
(:attr:`GpuDetectStage.graph_mode`). On a CPU device there are no graphs.

Streams, threads and memory: a :class:`GpuDetectStage` belongs to one GPU runner
(:meth:`GpuDetectStage.for_runner`), which calls :meth:`GpuDetectStage.run` on its waiter thread,
after the batch's ``done`` event, on its stage stream (``torch.cuda.ExternalStream``), and
:meth:`GpuDetectStage.close` when it closes. ``run`` reads the slot's device outputs (one copy
into the bucket, and the frames that fall back) and returns once its kept boxes are on the host,
so the slot may be reused as soon as it returns. The buckets' inputs and the graphs' pool come
from PyTorch's caching allocator; ``close`` lets them go.

What the stream's postprocess then sees (``Result.outputs``): ``{"detections": [1, K, 6]}``
float32 rows ``x1, y1, x2, y2, score, class`` in model input pixels, best first, NaN rows padding
the frames of a batch to one length (the ``boxes`` format of runtime/_detect.py).
:attr:`GpuDetectStage.postprocess` maps them to the source frame as the numpy path does.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import ClosedResourceError, InvalidModelError
from ..engines import TensorSpec
from ..preprocess import Preprocess
from ._capture import CaptureRetry
from ._detect import Detections, Detector, _resolve, _single_kind, _yolox_grid, _yolox_strides
from ._gpu_runner import DeviceOutput
from ._postprocess import FrameContext, FramePostprocess, Outputs

__all__ = ["DETECTIONS", "DeviceOutput", "GpuDetectStage", "KeptBoxes", "detect_stage",
           "gpu_detect_stage", "rank_candidates", "select_ranked"]

DETECTIONS = "detections"  # the one output the stage hands on
# Candidates of an image in the fixed-shape NMS, K: the smallest of these that holds the batch's
# most (an image with more than the last takes the numpy path). The work grows as K * K an image
# (a K x K suppression matrix of booleans: 128 MiB for a batch of 32 at K = 2,048), so the sizes
# step by about sqrt(2): a K at most 1.5 times the candidates, at most 2.25 times the work.
_CANDIDATE_SIZES = (64, 96, 128, 192, 256, 384, 512, 768, 1_024, 1_536, 2_048)
# NMS rounds in the graph: the longest chain of suppressors it resolves (a box suppressed only
# by a box that a better box suppresses is a chain of 2). Images that need more fall back.
_ROUNDS = 8
# Rows of the IoU matrix computed at once over a batch: float32 temporaries of _IOU_ROWS x K
# (32 MiB each at K = 2,048), so memory does not grow with the batch.
_IOU_ROWS = 4_096
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
    if importlib.util.find_spec("torch") is None:
        return None  # looked up, not imported: the waiter imports it on the first batch
    frame_shape = frame[name].shape[1:]
    return GpuDetectStage(_Settings(
        detector=postprocess, kind=kind, name=name, frame_shape=frame_shape,
        dtype=str(np.dtype(frame[name].dtype)),
        num_classes=frame_shape[0] - 4 if kind == "yolov8" else frame_shape[1] - 5,
        input_size=preprocess.size, device=device,
        strides=_yolox_strides(frame_shape[0], preprocess.size) if kind == "yolox" else None))


@dataclass(frozen=True)
class _Settings:
    """What a stage is for: the detector, the output it reads (``name``; one frame's shape and
    dtype), the model's class count and input size, the torch device, YOLOX's strides."""

    detector: Detector
    kind: str
    name: str
    frame_shape: tuple[int, ...]
    dtype: str
    num_classes: int
    input_size: tuple[int, int]
    device: str
    strides: tuple[int, ...] | None


@dataclass
class _Piece:
    """Fixed-shape work run as a graph: op by op the first time (the warm-up a capture needs),
    captured the next, replayed after. ``work`` returns its output (a tensor, or ``None`` for work
    that writes into tensors of its own)."""

    work: Callable[[], Any]
    warmed: bool = False
    graph: Any = None
    output: Any = None


@dataclass
class _Bucket:
    """Batches of up to ``input.shape[0]`` frames: the input their output is copied into, the
    ranking's results (``order``, ``scores``, ``labels``: each image's best candidates, best first;
    ``count``: how many clear ``conf``), the ranking, and one selection a candidate count."""

    input: Any
    order: Any
    scores: Any
    labels: Any
    count: Any
    rank: _Piece = field(init=False)  # its work reads and writes the tensors above
    select: dict[int, _Piece] = field(default_factory=dict)


class GpuDetectStage:
    """A ``detect()`` run on the GPU for whole batches; see the module docstring. One runner's:
    called from one thread at a time."""

    def __init__(self, settings: _Settings) -> None:
        self._settings = settings
        self.kind = settings.kind
        self.name = settings.name
        self.postprocess = KeptBoxes(settings.detector, settings.num_classes)
        self._tensors: _Tensors | None = None
        self._streams: dict[int, Any] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._pool: Any = None  # the graphs' shared memory pool, once one has been captured
        self._capture = CaptureRetry()
        self._fallback_frames = 0
        self._closed = False

    def for_runner(self) -> GpuDetectStage:
        """A stage with these settings and nothing of its own yet, for one more runner."""
        return GpuDetectStage(self._settings)

    @property
    def graph_mode(self) -> str:
        """``"graph"``, ``"plain"`` (a CPU device), or the capture rule's retrying / given-up
        mode (runtime/_capture.py)."""
        graphs = (self._tensors.graphs if self._tensors is not None
                  else self._settings.device.startswith("cuda"))
        return self._capture.mode() if graphs else "plain"

    @property
    def fallback_frames(self) -> int:
        """Frames whose selection went to the numpy path (see the module docstring)."""
        return self._fallback_frames

    def close(self) -> None:
        """Let go of the buckets' buffers and graphs. Safe to call twice."""
        self._closed = True
        self._buckets.clear()
        self._pool = None
        self._streams.clear()

    def _ready(self) -> _Tensors:
        """torch and the constant tensors on the device, made once."""
        if self._closed:
            raise ClosedResourceError("the GPU detect stage is closed")
        if self._tensors is None:
            s = self._settings
            torch = importlib.import_module("torch")
            device = torch.device(s.device)
            grid = None
            if s.strides is not None:
                cells, stride = _yolox_grid(s.input_size, s.strides)
                grid = torch.from_numpy(np.column_stack([cells, stride])).to(device)
            allowed = None
            if s.detector.classes is not None:
                allowed = torch.zeros(s.num_classes, dtype=torch.bool)
                allowed[[c for c in s.detector.classes if c < s.num_classes]] = True
                allowed = allowed.to(device)
            self._tensors = _Tensors(torch, device, grid, allowed, graphs=device.type == "cuda")
        return self._tensors

    def run(self, outputs: Mapping[str, DeviceOutput], *, stream: int
            ) -> dict[str, npt.NDArray[np.generic]]:
        """The batch's kept boxes, ``{"detections": [n, K, 6]}`` on the host (NaN rows pad),
        from its device ``outputs``; the GPU work goes on ``stream`` (raw ``cudaStream_t``),
        which must already be ordered after whatever wrote the outputs. Returns when done."""
        t = self._ready()
        torch = t.torch
        external = self._streams.get(stream)
        if external is None:
            external = self._streams[stream] = torch.cuda.ExternalStream(stream, device=t.device)

        def frame(i: int) -> Outputs:
            return {name: torch.as_tensor(o, device=t.device)[i:i + 1].cpu().numpy()
                    for name, o in outputs.items()}

        with torch.cuda.device(t.device), torch.cuda.stream(external):
            rows = self._batch(torch.as_tensor(outputs[self.name], device=t.device), frame)
        return {DETECTIONS: rows}

    def select(self, pred: Any) -> npt.NDArray[np.float32]:
        """The kept boxes of a batch of this model's raw output (a tensor on the stage's device,
        batch first), ``[n, K, 6]`` on the host as :meth:`run` gives them, on torch's current
        stream."""
        return self._batch(pred, lambda i: {self.name: pred[i:i + 1].cpu().numpy()})

    def _batch(self, pred: Any, frame: Callable[[int], Outputs]) -> npt.NDArray[np.float32]:
        """:meth:`select` of ``pred``, whose frame ``i``'s outputs ``frame(i)`` gives for the
        numpy path."""
        t = self._ready()
        n = pred.shape[0]
        with t.torch.inference_mode():
            bucket = self._bucket(n)
            bucket.input[:n].copy_(pred)
            self._run(bucket.rank)
            most = int(bucket.count.cpu().numpy()[:n].max())  # waits for the stream
            if most == 0:
                return np.zeros((n, 0, 6), np.float32)
            # The smallest selection that holds every image's candidates, else the largest.
            k = min(bucket.order.shape[1],
                    next((size for size in _CANDIDATE_SIZES if size >= most), _CANDIDATE_SIZES[-1]))
            piece = bucket.select.get(k)
            if piece is None:
                piece = bucket.select[k] = _Piece(partial(self._select, bucket, k))
            packed = self._run(piece)[:n].cpu().numpy()  # waits for the stream
        return self._finish(packed, frame)

    def _bucket(self, n: int) -> _Bucket:
        """The bucket of a batch of ``n``: the smallest power of two >= ``n``."""
        size = 1 << (n - 1).bit_length()
        bucket = self._buckets.get(size)
        if bucket is None:
            t = self._ready()
            torch, s = t.torch, self._settings
            candidates = s.frame_shape[1] if s.kind == "yolov8" else s.frame_shape[0]
            width = min(_CANDIDATE_SIZES[-1], candidates)
            bucket = _Bucket(
                input=torch.zeros((size, *s.frame_shape), dtype=getattr(torch, s.dtype),
                                  device=t.device),
                order=torch.zeros((size, width), dtype=torch.int64, device=t.device),
                scores=torch.zeros((size, width), dtype=torch.float32, device=t.device),
                labels=torch.zeros((size, width), dtype=torch.int64, device=t.device),
                count=torch.zeros(size, dtype=torch.int64, device=t.device))
            bucket.rank = _Piece(partial(self._rank, bucket))
            self._buckets[size] = bucket
        return bucket

    def _run(self, piece: _Piece) -> Any:
        """``piece``'s output: a graph replay once captured, else its work op by op (see
        :class:`_Piece`); a capture is tried when the capture rule allows (runtime/_capture.py)."""
        if piece.graph is None and piece.warmed and self._ready().graphs and self._capture.due():
            try:
                piece.graph, piece.output = self._captured(piece.work)
            except RuntimeError as exc:  # torch reports a failed capture as RuntimeError
                self._capture.failed(exc)
            else:
                self._capture.succeeded()
        if piece.graph is not None:
            piece.graph.replay()
            return piece.output
        piece.warmed = True
        return piece.work()

    def _captured(self, work: Callable[[], Any]) -> tuple[Any, Any]:
        """A CUDA graph of ``work`` and the output it writes (``torch.cuda.graph``, thread-local
        mode, in the stage's one pool); raises what the capture raised."""
        torch = self._ready().torch
        graph = torch.cuda.CUDAGraph()
        # On the current stream (the runner's), or torch's side stream where that is the default
        # stream (select() called from plain torch code): no capture can run there.
        current = torch.cuda.current_stream()
        side = current == torch.cuda.default_stream()
        with torch.cuda.graph(graph, pool=self._pool, stream=None if side else current,
                              capture_error_mode="thread_local"):
            output = work()
        self._pool = graph.pool()
        return graph, output

    def _rank(self, bucket: _Bucket) -> None:
        t, d = self._ready(), self._settings.detector
        ranked = rank_candidates(bucket.input, self.kind, conf=d.conf, allowed=t.allowed,
                                 keep=bucket.order.shape[1])
        for mine, new in zip((bucket.order, bucket.scores, bucket.labels, bucket.count), ranked):
            mine.copy_(new)

    def _select(self, bucket: _Bucket, k: int) -> Any:
        t, d = self._ready(), self._settings.detector
        return select_ranked(bucket.input, self.kind, bucket.order[:, :k], bucket.scores[:, :k],
                             bucket.labels[:, :k], bucket.count, iou=d.iou, max_det=d.max_det,
                             agnostic=d.agnostic,
                             grid=t.grid, rounds=_ROUNDS)

    def _finish(self, packed: npt.NDArray[np.float32], frame: Callable[[int], Outputs]
                ) -> npt.NDArray[np.float32]:
        """``[n, M, 6]`` host rows from :func:`select_ranked`'s packed output, the flagged
        frames' rows from the numpy path on ``frame(i)``."""
        rows = packed[:, :-1]
        redone: dict[int, npt.NDArray[np.float32]] = {}
        for i in np.flatnonzero(packed[:, -1, 0] != 0).tolist():
            boxes, scores, class_ids, _ = self._settings.detector.kept(
                frame(i), self._settings.input_size)
            redone[i] = np.column_stack([boxes, scores, class_ids.astype(np.float32)])
        self._fallback_frames += len(redone)
        found = max([int((~np.isnan(rows[:, :, 4])).sum(axis=1).max(initial=0)),
                     *(len(kept) for kept in redone.values())])
        # A redone frame may keep more rows than the fixed-shape ones hold (max_det above K).
        out = np.full((len(packed), found, 6), np.nan, np.float32)
        width = min(found, rows.shape[1])
        out[:, :width] = rows[:, :width]
        for i, kept in redone.items():
            out[i] = np.nan
            out[i, :len(kept)] = kept
        return out


@dataclass(frozen=True)
class _Tensors:
    """What a stage needs from torch, made on first use: the module, the device, YOLOX's grid
    (``[N, 3]``: cell x, cell y, stride), the ``classes`` filter (``[C]`` booleans), whether
    its work is captured in graphs (on CUDA devices)."""

    torch: Any
    device: Any
    grid: Any
    allowed: Any
    graphs: bool


def rank_candidates(pred: Any, kind: str, *, conf: float, allowed: Any, keep: int
                    ) -> tuple[Any, Any, Any, Any]:
    """Each image's best ``keep`` candidates of a batch of raw outputs, in fixed-shape torch work
    (no host waits): ``(order, scores, labels, count)``: ``[n, keep]`` candidate indices by
    score, best first (ties: the lower index first), their scores (float32) and best classes,
    and ``[n]`` how many clear ``conf`` and ``allowed`` (those come first; the rest of a row are
    others, to be ignored).

    ``pred``: ``[n, 4 + C, N]`` (``kind="yolov8"``) or ``[n, N, 5 + C]`` (``"yolox"``).
    ``allowed``: ``[C]`` booleans, the classes to keep, or ``None`` for all.
    """
    lib = _torch()
    if kind == "yolov8":
        class_scores, axis, objectness = pred[:, 4:], 1, None
    else:
        class_scores, axis, objectness = pred[:, :, 5:], 2, pred[:, :, 4]
    best, class_ids = class_scores.max(dim=axis)                    # the first best on ties
    if objectness is not None:
        best = best * objectness
    if best.dtype == lib.float32:
        score, mask = best, best > conf
    else:  # above conf in the output's dtype and in float32, as the numpy path compares
        score = best.float()
        mask = (best > conf) & (score > conf)
    if allowed is not None:
        mask &= allowed[class_ids]
    order = lib.where(mask, score, float("-inf")).argsort(dim=1, descending=True, stable=True)
    order = order[:, :keep]
    return order, score.gather(1, order), class_ids.gather(1, order), mask.sum(dim=1)


def select_ranked(pred: Any, kind: str, order: Any, scores: Any, labels: Any, count: Any, *,
                  iou: float, max_det: int, grid: Any, rounds: int, agnostic: bool = False) -> Any:
    """Greedy class-aware NMS (across classes with ``agnostic``) and the ``max_det`` cut of
    ranked candidates (:func:`rank_candidates`, ``K`` of them an image), in fixed-shape torch
    work: a float32 tensor
    ``[n, m + 1, 6]``, ``m = min(max_det, K)``: rows ``x1, y1, x2, y2, score, class`` of each
    image's kept boxes, best first, NaN rows after them; row ``m``'s first value is 1 where the
    image must go to the numpy path (more than ``K`` candidates clear ``conf``, or NMS unsettled
    after ``rounds``), else 0. ``grid`` (YOLOX): a float32 ``[N, 3]`` tensor of each candidate's
    grid cell x, y and stride.
    """
    lib = _torch()
    n, k = order.shape
    valid = lib.arange(k, device=pred.device) < count.unsqueeze(1)
    if kind == "yolov8":
        xywh = pred[:, :4].gather(2, order.unsqueeze(1).expand(n, 4, k)).transpose(1, 2).float()
        xy, half = xywh[..., :2], xywh[..., 2:] / 2
        boxes = lib.cat([xy - half, xy + half], dim=2)
    else:
        p = pred[..., :4].gather(1, order.unsqueeze(2).expand(n, k, 4)).float()
        g = grid[order]                                              # [n, K, 3]
        strides = g[..., 2:]
        cxy = (p[..., :2] + g[..., :2]) * strides
        half = lib.exp(p[..., 2:]) * strides / 2
        boxes = lib.cat([cxy - half, cxy + half], dim=2)
    suppress = _suppression(boxes, None if agnostic else labels, iou)
    keep = valid
    for _ in range(rounds):
        keep = valid & ~(suppress & keep.unsqueeze(2)).any(dim=1)
    settled = (keep == (valid & ~(suppress & keep.unsqueeze(2)).any(dim=1))).all(dim=1)
    # Each image's first m kept rows, in order; the rest are written to row m, overwritten below.
    m = min(max_det, k)
    rank = keep.cumsum(dim=1) - 1
    dest = lib.where(keep & (rank < m), rank, m)
    rows = lib.cat([boxes, scores.unsqueeze(2), labels.unsqueeze(2).float()], dim=2)
    packed = lib.full((n, m + 1, 6), float("nan"), dtype=lib.float32, device=pred.device)
    packed.scatter_(1, dest.unsqueeze(2).expand(n, k, 6), rows)
    packed[:, m, 0] = (~settled | (count > k)).float()
    return packed


def _suppression(boxes: Any, labels: Any | None, iou: float) -> Any:
    """``[n, K, K]`` booleans: ``[i, r, c]`` when candidate ``r`` comes before ``c`` in image
    ``i``, has its class (any class where ``labels`` is None), and overlaps it by IoU above
    ``iou``; the IoU as the numpy path's
    ``_pairwise_iou`` computes it, in float32 (two empty boxes give NaN, which suppresses
    nothing)."""
    lib = _torch()
    n, k = boxes.shape[:2]
    b = boxes
    area = (b[..., 2] - b[..., 0]).clamp(min=0.0) * (b[..., 3] - b[..., 1]).clamp(min=0.0)
    later = lib.ones((k, k), dtype=lib.bool, device=b.device).triu(1)
    out = lib.empty((n, k, k), dtype=lib.bool, device=b.device)
    step = max(1, min(k, _IOU_ROWS // n))
    others = b.unsqueeze(1)                                          # [n, 1, K, 4]
    for start in range(0, k, step):
        rows = slice(start, start + step)
        first = b[:, rows].unsqueeze(2)                              # [n, r, 1, 4]
        w = (lib.minimum(first[..., 2], others[..., 2])
             - lib.maximum(first[..., 0], others[..., 0])).clamp_(min=0.0)
        h = (lib.minimum(first[..., 3], others[..., 3])
             - lib.maximum(first[..., 1], others[..., 1])).clamp_(min=0.0)
        inter = w.mul_(h)
        union = (area[:, rows].unsqueeze(2) + area.unsqueeze(1)) - inter
        suppresses = (inter / union > iou) & later[rows]
        if labels is not None:
            suppresses &= labels[:, rows].unsqueeze(2) == labels.unsqueeze(1)
        out[:, rows] = suppresses
    return out


def _torch() -> Any:
    return importlib.import_module("torch")  # only called where a stage (so torch) exists


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
