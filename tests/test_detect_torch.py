"""detect()'s batch stage (runtime/_detect_gpu.py) in torch on the CPU: for random and hand-made
yolov8 and yolox outputs, the kept boxes of a whole batch, read back per frame, are the numpy
path's Detections (same boxes, scores, classes, order), whether the fixed-shape selection settles
them or the numpy path takes the frames it cannot; with graph capture emulated (a replay redoes
the captured work into the captured output), which piece is captured when, replayed after, and
run op by op while captures fail. The same code runs on CUDA tensors, captured in real CUDA
graphs, in tests/test_detect_gpu.py. Skips without torch."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import xinfer_stream as xs
from xinfer_stream.engines import TensorSpec
from xinfer_stream.runtime import _capture, _detect_gpu
from xinfer_stream.runtime._detect_gpu import DETECTIONS, detect_stage

from .test_gpu_runner_emulated import (_MEMORY, CROP, FakeContext,  # noqa: F401
                                       FakeCudaBackend, FakeDevice, fake_cuda, fake_kernel,
                                       rgb_frames)

torch: Any = pytest.importorskip("torch")

PRE = xs.Preprocess((64, 96), "letterbox", pad_value=114)
CTX = xs.FrameContext((360, 640), PRE)
CELLS = sum((64 // s) * (96 // s) for s in (8, 16, 32))   # 96 + 24 + 6 = 126


def specs(pred: npt.NDArray[Any]) -> list[TensorSpec]:
    return [TensorSpec("out", (None, *pred.shape[1:]), str(pred.dtype))]


def both_paths(detector: Any, pred: npt.NDArray[Any]) -> list[tuple[xs.Detections, xs.Detections]]:
    """(numpy path, batch stage) Detections of every frame of ``pred`` (batch first), every frame
    settled by the stage's fixed-shape selection (none handed to the numpy path)."""
    stage = detect_stage(detector, specs(pred), PRE, device="cpu")
    assert stage is not None
    padded = stage.select(torch.from_numpy(pred))
    assert padded.shape[:1] == pred.shape[:1] and padded.shape[2] == 6
    assert stage.fallback_frames == 0
    return [(detector({"out": pred[i:i + 1]}, CTX),
             stage.postprocess({DETECTIONS: padded[i:i + 1]}, CTX)) for i in range(len(pred))]


def assert_same(pairs: list[tuple[xs.Detections, xs.Detections]]) -> None:
    for want, got in pairs:
        assert got.class_ids.tolist() == want.class_ids.tolist()
        assert got.labels == want.labels
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
        np.testing.assert_allclose(got.xyxy, want.xyxy, rtol=1e-5, atol=1e-3)


def clustered_yolov8(batch: int, classes: int, seed: int) -> npt.NDArray[np.float32]:
    """[batch, 4 + classes, CELLS]: low background scores and clusters of overlapping boxes."""
    rng = np.random.default_rng(seed)
    out = np.empty((batch, 4 + classes, CELLS), np.float32)
    out[:, 0] = rng.uniform(0, 96, (batch, CELLS))
    out[:, 1] = rng.uniform(0, 64, (batch, CELLS))
    out[:, 2:4] = rng.uniform(2, 40, (batch, 2, CELLS))
    out[:, 4:] = 1 / (1 + np.exp(-rng.normal(-6, 2, (batch, classes, CELLS))))
    for b in range(batch):
        for _ in range(rng.integers(0, 6)):
            members = rng.choice(CELLS, 12, replace=False)
            out[b, 0, members] = rng.uniform(10, 86) + rng.normal(0, 2, 12)
            out[b, 1, members] = rng.uniform(10, 54) + rng.normal(0, 2, 12)
            out[b, 2:4, members] = (rng.uniform(8, 30, (2, 1)) * rng.uniform(0.8, 1.2, (2, 12))).T
            out[b, 4 + rng.integers(0, classes), members] = rng.uniform(0.3, 0.95, 12)
    return out


def as_yolox(v8: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The same boxes and scores as YOLOX's raw grid output [batch, CELLS, 5 + classes]."""
    strides = np.concatenate([np.full((64 // s) * (96 // s), s) for s in (8, 16, 32)])[:, None]
    grid = np.concatenate([np.stack(np.meshgrid(np.arange(96 // s), np.arange(64 // s)), 2)
                           .reshape(-1, 2) for s in (8, 16, 32)])
    t = v8.transpose(0, 2, 1)
    out = np.empty((len(v8), CELLS, t.shape[2] + 1), np.float32)
    out[..., 0:2] = t[..., 0:2] / strides - grid
    out[..., 2:4] = np.log(t[..., 2:4] / strides)
    out[..., 4] = np.maximum(t[..., 4:].max(-1), 1e-6)
    out[..., 5:] = t[..., 4:] / out[..., 4:5]
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("conf", [0.25, 0.001])
def test_random_batches_equal_the_numpy_path(seed: int, conf: float) -> None:
    pred = clustered_yolov8(5, 7, seed)
    labels = [f"c{i}" for i in range(7)]
    for fmt, out in (("yolov8", pred), ("yolox", as_yolox(pred))):
        pairs = both_paths(xs.detect(fmt, conf=conf, iou=0.45, labels=labels), out)
        assert_same(pairs)
        assert sum(len(w) for w, _ in pairs) > 0


def test_classes_filter_max_det_and_a_tight_iou() -> None:
    pred = clustered_yolov8(4, 7, 11)
    for kwargs in ({"classes": [1, 4]}, {"max_det": 3, "conf": 0.001}, {"iou": 0.05},
                   {"iou": 1.0, "conf": 0.3}):
        pairs = both_paths(xs.detect("yolov8", **kwargs), pred)
        assert_same(pairs)
    cut = both_paths(xs.detect("yolov8", max_det=3, conf=0.001), pred)
    assert all(len(got) == 3 for _, got in cut)


def test_agnostic_nms_equals_the_numpy_path() -> None:
    pred = clustered_yolov8(4, 7, 13)
    for fmt, out in (("yolov8", pred), ("yolox", as_yolox(pred))):
        pairs = both_paths(xs.detect(fmt, conf=0.1, agnostic=True), out)
        assert_same(pairs)
        aware = both_paths(xs.detect(fmt, conf=0.1), out)
        # Across classes fewer boxes stay, on at least one frame of these clustered ones.
        assert [len(g) for _, g in pairs] != [len(g) for _, g in aware]
        assert all(len(a) <= len(b) for (_, a), (_, b) in zip(pairs, aware, strict=True))
    hand = both_paths(xs.detect("yolov8", conf=0.25, agnostic=True), hand_made())
    assert_same(hand)
    # Frame 0's class-2 box covers the class-1 pair exactly: it goes across classes.
    assert hand[0][1].class_ids.tolist() == [1, 0]


def test_float16_outputs() -> None:
    pred = clustered_yolov8(3, 5, 5).astype(np.float16)
    assert_same(both_paths(xs.detect("yolov8", conf=0.01), pred))
    assert_same(both_paths(xs.detect("yolox", conf=0.01), as_yolox(pred.astype(np.float32))
                           .astype(np.float16)))


def hand_made() -> npt.NDArray[np.float32]:
    """Three frames of 3 classes: ties, cross-class overlap, identical frames, and all but one
    box of a frame suppressed."""
    out = np.zeros((3, 4 + 3, CELLS), np.float32)
    box = [40, 30, 20, 20]
    # Frame 0: candidates 3 and 9 identical, equal scores, class 1: the earlier one stays.
    # Candidate 5 overlaps them fully but is class 2: it stays. Candidate 7 ties classes 0 and 2
    # at 0.7: class 0 (the first) wins.
    for c in (3, 9):
        out[0, :4, c], out[0, 5, c] = box, 0.8
    out[0, :4, 5], out[0, 6, 5] = box, 0.6
    out[0, :4, 7], out[0, 4, 7], out[0, 6, 7] = [10, 10, 8, 8], 0.7, 0.7
    out[1] = out[0]                                    # the same frame: nothing crosses frames
    # Frame 2: a ladder of 20 shifted boxes, class 0, all overlapping the best: one stays.
    for i in range(20):
        out[2, :4, 40 + i], out[2, 4, 40 + i] = [50 + 0.2 * i, 30, 30, 30], 0.9 - 0.01 * i
    return out


def test_hand_made_ties_classes_frames_and_suppression() -> None:
    pred = hand_made()
    pairs = both_paths(xs.detect("yolov8", conf=0.25), pred)
    assert_same(pairs)
    got = [g for _, g in pairs]
    assert got[0].class_ids.tolist() == [1, 0, 2] == got[1].class_ids.tolist()
    assert len(got[2]) == 1


def test_nothing_above_conf_and_empty_frames() -> None:
    pred = hand_made()
    pred[1] = 0.0                                      # frame 1 has nothing at all
    stage = detect_stage(xs.detect("yolov8", conf=0.95), specs(pred), PRE, device="cpu")
    assert stage is not None
    padded = stage.select(torch.from_numpy(pred))
    assert padded.shape == (3, 0, 6)
    assert len(stage.postprocess({DETECTIONS: padded[:1]}, CTX)) == 0
    assert_same(both_paths(xs.detect("yolov8", conf=0.25), pred))


def test_frames_the_fixed_shape_selection_cannot_settle_take_the_numpy_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """More candidates above conf than the selection holds, or a chain of suppressions longer
    than its NMS rounds: those frames (only those) are redone by the numpy path, same result."""
    pred = clustered_yolov8(6, 4, 3)
    detector = xs.detect("yolov8", conf=0.05)
    counts = [int((pred[i, 4:].max(axis=0) > 0.05).sum()) for i in range(len(pred))]
    monkeypatch.setattr(_detect_gpu, "_CANDIDATE_SIZES", (sorted(counts)[2],))
    stage = detect_stage(detector, specs(pred), PRE, device="cpu")
    assert stage is not None
    padded = stage.select(torch.from_numpy(pred))
    assert stage.fallback_frames == sum(c > sorted(counts)[2] for c in counts) == 3
    assert_same([(detector({"out": pred[i:i + 1]}, CTX),
                  stage.postprocess({DETECTIONS: padded[i:i + 1]}, CTX)) for i in range(len(pred))])

    ladder = hand_made()[2:]   # 20 boxes, each overlapping the next: a chain of suppressions
    ladder[0, 0, 40:60] = 50 + 0.25 * np.arange(20)  # 1-wide boxes 0.25 apart: neighbours
    ladder[0, 2, 40:60] = 1.0                         # overlap by IoU 0.6, the next but one 0.33
    chained = xs.detect("yolov8", conf=0.25, iou=0.5)
    want = chained({"out": ladder}, CTX)
    assert len(want) == 10     # every other box of the ladder
    for rounds, fallbacks in ((30, 0), (3, 1)):
        monkeypatch.setattr(_detect_gpu, "_ROUNDS", rounds)
        stage = detect_stage(chained, specs(ladder), PRE, device="cpu")
        assert stage is not None
        got = stage.postprocess({DETECTIONS: stage.select(torch.from_numpy(ladder))}, CTX)
        assert stage.fallback_frames == fallbacks
        assert_same([(want, got)])


def test_a_frame_redone_by_numpy_may_keep_more_rows_than_the_selection_holds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """max_det above the largest K: a frame over the limit goes to numpy, which keeps more boxes
    than the fixed-shape rows have room for; the batch's rows grow to hold them."""
    monkeypatch.setattr(_detect_gpu, "_CANDIDATE_SIZES", (4,))
    pred = clustered_yolov8(3, 5, 6)
    detector = xs.detect("yolov8", conf=0.05)
    stage = detect_stage(detector, specs(pred), PRE, device="cpu")
    assert stage is not None
    padded = stage.select(torch.from_numpy(pred))
    want = [detector({"out": pred[i:i + 1]}, CTX) for i in range(3)]
    assert max(len(w) for w in want) > 4 and stage.fallback_frames >= 1
    assert padded.shape[1] == max(len(w) for w in want)
    assert_same([(w, stage.postprocess({DETECTIONS: padded[i:i + 1]}, CTX))
                 for i, w in enumerate(want)])


def test_a_batch_smaller_than_its_bucket_reads_only_its_own_frames() -> None:
    """A batch of 3 runs in bucket 4, whose fourth row holds the last batch's frame."""
    pred = clustered_yolov8(4, 5, 8)
    detector = xs.detect("yolov8", conf=0.2)
    stage = detect_stage(detector, specs(pred), PRE, device="cpu")
    assert stage is not None
    stage.select(torch.from_numpy(pred))
    small = clustered_yolov8(3, 5, 9)
    padded = stage.select(torch.from_numpy(small))
    assert len(padded) == 3
    assert_same([(detector({"out": small[i:i + 1]}, CTX),
                  stage.postprocess({DETECTIONS: padded[i:i + 1]}, CTX)) for i in range(3)])
    stage.close()
    with pytest.raises(xs.ClosedResourceError):
        stage.select(torch.from_numpy(small))


class FakeGraph:
    """A captured graph on the CPU: a replay does the captured work again, into the output the
    capture returned (a real replay rewrites that memory), so what the stage reads after a
    replay is what the graph would have written."""

    def __init__(self, work: Any, output: Any) -> None:
        self.work, self.output, self.replays = work, output, 0

    def replay(self) -> None:
        self.replays += 1
        new = self.work()
        if self.output is not None:
            self.output.copy_(new)


def emulated_graphs(stage: _detect_gpu.GpuDetectStage, monkeypatch: pytest.MonkeyPatch,
                    failures: int = 0) -> list[FakeGraph]:
    """Make ``stage`` capture its work as :class:`FakeGraph`s, the first ``failures`` captures
    failing as torch reports it; returns the graphs captured."""
    graphs: list[FakeGraph] = []
    tried = [0]

    def captured(work: Any) -> tuple[FakeGraph, Any]:
        tried[0] += 1
        if tried[0] <= failures:
            raise RuntimeError("CUDA error: operation failed due to a previous error during "
                               "capture")
        output = work()  # what the capture leaves in the graph's output memory
        graphs.append(FakeGraph(work, output))
        return graphs[-1], output

    monkeypatch.setattr(stage, "_captured", captured)
    monkeypatch.setattr(stage, "_tensors", dataclasses.replace(stage._ready(), graphs=True))
    return graphs


def test_graph_pieces_are_captured_on_second_use_and_replayed_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of changing sizes and candidate counts: each bucket's ranking and each (bucket,
    K) selection runs op by op first, is captured the next time, and replays after; every
    result equals the numpy path's, rows left in a bucket by a larger batch never read."""
    detector = xs.detect("yolov8", conf=0.2)
    frames = clustered_yolov8(40, 5, 21)
    stage = detect_stage(detector, specs(frames), PRE, device="cpu")
    assert stage is not None
    graphs = emulated_graphs(stage, monkeypatch)
    start = 0
    for n in (4, 4, 3, 4, 1, 2, 1, 4, 3, 2, 2, 8):
        pred = frames[start:start + n]
        start += n
        padded = stage.select(torch.from_numpy(pred))
        assert_same([(detector({"out": pred[i:i + 1]}, CTX),
                      stage.postprocess({DETECTIONS: padded[i:i + 1]}, CTX)) for i in range(n)])
    pieces = [bucket.rank for bucket in stage._buckets.values()] + [
        piece for bucket in stage._buckets.values() for piece in bucket.select.values()]
    assert all(p.warmed for p in pieces)
    assert {id(p.graph) for p in pieces if p.graph is not None} == {id(g) for g in graphs}
    assert len(graphs) >= 4 and all(g.replays >= 1 for g in graphs)
    assert stage.graph_mode == "graph" and stage.fallback_frames == 0


def test_a_failed_capture_runs_op_by_op_until_one_succeeds(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(_capture, "CAPTURE_RETRY", 0.0)
    detector = xs.detect("yolox", conf=0.2)
    pred = as_yolox(clustered_yolov8(2, 5, 22))
    stage = detect_stage(detector, specs(pred), PRE, device="cpu")
    assert stage is not None
    graphs = emulated_graphs(stage, monkeypatch, failures=2)
    modes = []
    for _ in range(5):
        padded = stage.select(torch.from_numpy(pred))
        assert_same([(detector({"out": pred[i:i + 1]}, CTX),
                      stage.postprocess({DETECTIONS: padded[i:i + 1]}, CTX)) for i in range(2)])
        modes.append(stage.graph_mode.split(" (")[0])
    # Batch 1 warms up; batch 2's two captures fail; batch 3 captures both pieces.
    assert modes == ["graph", "retrying a failed capture", "graph", "graph", "graph"]
    assert len(graphs) == 2 and [g.replays for g in graphs] == [3, 3]


def test_which_detectors_get_a_stage() -> None:
    pred = clustered_yolov8(1, 3, 0)
    assert detect_stage(xs.detect("auto"), specs(pred), PRE, device="cpu") is not None
    yolox = detect_stage(xs.detect("auto"), specs(as_yolox(pred)), PRE, device="cpu")
    assert yolox is not None and yolox.kind == "yolox"
    rows = [TensorSpec("out", (None, 10, 6), "float32")]
    assert detect_stage(xs.detect("auto"), rows, PRE, device="cpu") is None          # boxes
    assert detect_stage(xs.detect(lambda o, s: (np.zeros((0, 4)), np.zeros((0, 2)))),
                        specs(pred), PRE, device="cpu") is None                       # callable
    assert detect_stage(xs.classify(), specs(pred), PRE, device="cpu") is None
    odd = [TensorSpec("out", (None, 7, 13), "float32")]
    assert detect_stage(xs.detect("yolox"), odd, PRE, device="cpu") is None   # numpy path raises
    ints = [TensorSpec("out", (None, 7, CELLS), "int32")]
    assert detect_stage(xs.detect("yolov8"), ints, PRE, device="cpu") is None


def test_label_count_is_checked_against_the_model_as_on_the_numpy_path() -> None:
    pred = hand_made()
    stage = detect_stage(xs.detect("yolov8", labels=["a", "b"]), specs(pred), PRE, device="cpu")
    assert stage is not None
    padded = stage.select(torch.from_numpy(pred))
    with pytest.raises(xs.InvalidModelError, match="labels has 2 names but .* 3 classes"):
        stage.postprocess({DETECTIONS: padded[:1]}, CTX)


# -- the stage in the GPU runner, on the emulated CUDA device of test_gpu_runner_emulated ---------
class DetectorContext(FakeContext):
    """A detector: each frame's output [4 + 3, 30] (yolov8) drawn from a seed its input gives,
    recorded by seed in first-run order (frame order: a graph's warm-up and replays repeat a
    batch's seeds) so the test can run the numpy path on the same outputs."""

    def enqueue(self, *, stream: Any) -> None:
        assert self.input is not None
        address, shape = self.input
        raw = self.backend.raw  # type: ignore[attr-defined]

        def op() -> None:
            x = _MEMORY[address].array[:int(np.prod(shape)) * 4].view(np.float32).reshape(shape)
            seeds = [int(abs(float(v.sum()) * 1000)) % 2**32 for v in x]
            y = np.stack([v8_rows(seed) for seed in seeds])
            for seed, row in zip(seeds, y):
                raw.setdefault(seed, row)
            _MEMORY[self.output].array[:y.nbytes] = y.reshape(-1).view(np.uint8)
        stream.run(op)


def v8_rows(seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    out = np.empty((7, 30), np.float32)
    out[0], out[1] = rng.uniform(0, 24, 30), rng.uniform(0, 16, 30)
    out[2:4] = rng.uniform(2, 10, (2, 30))
    out[4:] = rng.uniform(0, 1, (3, 30)) ** 3
    return out


class DetectorBackend(FakeCudaBackend):
    def __init__(self, max_batch: int | None = None) -> None:
        super().__init__(max_batch)
        self.outputs = (TensorSpec("y", (None, 7, 30), "float32"),)
        self.raw: dict[int, npt.NDArray[np.float32]] = {}

    def create_context(self) -> FakeContext:
        self.contexts.append(DetectorContext(self))
        return self.contexts[-1]


@pytest.mark.usefixtures("fake_kernel")
def test_engine_stream_hands_only_the_kept_boxes_to_the_host(
        fake_cuda: list[FakeDevice], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    runs: list[tuple[tuple[int, ...], str, Any]] = []

    def cpu_run(self: _detect_gpu.GpuDetectStage, outputs: Mapping[str, Any], *, stream: Any
                ) -> dict[str, npt.NDArray[np.generic]]:
        out = outputs[self.name]
        runs.append((out.shape, out.dtype, stream))
        pred = _MEMORY[out.address].view(out.dtype, out.shape).copy()  # the emulated device memory
        return {DETECTIONS: self.select(torch.from_numpy(pred))}

    monkeypatch.setattr(_detect_gpu.GpuDetectStage, "run", cpu_run)
    monkeypatch.setattr(_detect_gpu, "gpu_detect_stage",
                        lambda post, backend, pre: detect_stage(post, backend.outputs, pre, device="cpu"))
    detector = xs.detect("yolov8", conf=0.3, iou=0.4, labels=["a", "b", "c"])
    backend = DetectorBackend(max_batch=4)

    async def main() -> list[xs.Result]:
        async with xs.load(backend, preprocess=CROP) as engine:  # type: ignore[arg-type]
            async with engine.stream(rgb_frames(9), batch=4, postprocess=detector) as results:
                return [r async for r in results]

    got = asyncio.run(main())
    assert [r.frame_index for r in got] == list(range(9))
    assert [shape for shape, _, _ in runs] == [(4, 7, 30), (4, 7, 30), (1, 7, 30)]
    assert {dtype for _, dtype, _ in runs} == {"float32"}
    compute, stage = fake_cuda[0].streams  # the stage runs on a stream of its own
    assert all(stream is stage for _, _, stream in runs) and stage is not compute
    assert len(backend.raw) == 9
    kept = 0
    for r, raw in zip(got, backend.raw.values()):
        assert set(r.outputs) == {DETECTIONS} and r.outputs[DETECTIONS].shape[2] == 6
        want = detector({"y": raw[None]}, xs.FrameContext((40, 96), CROP))
        assert r.prediction.labels == want.labels
        np.testing.assert_allclose(r.prediction.scores, want.scores, rtol=1e-6)
        np.testing.assert_allclose(r.prediction.xyxy, want.xyxy, atol=1e-3)
        kept += len(want)
    assert kept > 9
    fake_cuda[0].check_released()
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]
