"""detect()'s batch stage on a real GPU: the selection on CUDA tensors, op by op and then from
its captured CUDA graphs, equals the numpy path (ties included) for batches of every bucket, and
engine.stream / stream_many on the torch backend hand only the kept boxes to the host, equal to
the numpy path on the same outputs, with the slots' and the stage's CUDA graphs captured. Needs
torch with CUDA."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import xinfer_stream as xs
from xinfer_stream.runtime._detect_gpu import DETECTIONS, detect_stage

from .test_detect_torch import (CELLS, CTX, PRE, as_yolox, assert_same, clustered_yolov8,
                                hand_made, specs)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("conf", [0.25, 0.001])
def test_selection_on_cuda_tensors_equals_the_numpy_path(torch: Any, conf: float) -> None:
    for pred in (clustered_yolov8(8, 7, 1), as_yolox(clustered_yolov8(8, 7, 2)), hand_made()):
        fmt = "yolox" if pred.shape[1] == CELLS else "yolov8"
        for kwargs in ({}, {"classes": [0, 2]}, {"max_det": 2}):
            detector = xs.detect(fmt, conf=conf, **kwargs)  # type: ignore[arg-type]
            stage = detect_stage(detector, specs(pred), PRE, device="cuda:0")
            assert stage is not None
            x = torch.from_numpy(pred).cuda()
            for _ in range(3):  # op by op (warm-up), captured and replayed, replayed
                padded = stage.select(x)
                assert_same([(detector({"out": pred[i:i + 1]}, CTX),
                              stage.postprocess({DETECTIONS: padded[i:i + 1]}, CTX))
                             for i in range(len(pred))])
            assert stage.graph_mode == "graph" and stage.fallback_frames == 0
            stage.close()


def test_graphs_of_every_bucket_read_only_their_batchs_frames(torch: Any) -> None:
    """Batches of 1 to 8 frames, in changing sizes, through one stage: every batch after a
    bucket's first replays graphs, and rows left in a bucket by a larger batch are never read."""
    detector = xs.detect("yolov8", conf=0.2)
    frames = clustered_yolov8(40, 5, 3)
    stage = detect_stage(detector, specs(frames), PRE, device="cuda:0")
    assert stage is not None
    start = 0
    for n in (8, 3, 8, 3, 5, 1, 2, 7, 1, 2):
        pred = frames[start:start + n]
        start += n
        padded = stage.select(torch.from_numpy(pred).cuda())
        assert len(padded) == n
        assert_same([(detector({"out": pred[i:i + 1]}, CTX),
                      stage.postprocess({DETECTIONS: padded[i:i + 1]}, CTX)) for i in range(n)])
    assert stage.graph_mode == "graph" and stage.fallback_frames == 0
    stage.close()


def detector_module(torch: Any, raw: npt.NDArray[np.float32]) -> Any:
    class Fixed(torch.nn.Module):  # type: ignore[misc]
        """A yolov8-shaped head whose output is ``raw`` for every frame."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("fixed", torch.from_numpy(raw))

        def forward(self, x: Any) -> Any:
            return self.fixed.expand(x.shape[0], -1, -1) + 0 * x.mean()

    return Fixed()


def test_stream_and_stream_many_keep_only_the_boxes_on_the_gpu(torch: Any, bundled_clip: Path
                                                               ) -> None:
    raw = clustered_yolov8(1, 7, 4)            # [1, 11, 126] for the 64x96 input
    detector = xs.detect("yolov8", conf=0.01, iou=0.5)

    async def main() -> tuple[list[xs.Result], Any, list[xs.Result]]:
        async with xs.load(detector_module(torch, raw), preprocess=PRE) as engine:
            streamed = []
            async with engine.stream(bundled_clip, postprocess=detector, batch=4) as results:
                async for r in results:
                    streamed.append(r)
                    if len(streamed) == 12:
                        break
                stats = results.statistics()
            many = []
            async with engine.stream_many({"a": bundled_clip, "b": bundled_clip},
                                          postprocess=detector, max_batch=4) as merged:
                async for item in merged:
                    if isinstance(item, xs.Result):
                        many.append(item)
                        if len(many) == 12:
                            break
            return streamed, stats, many

    streamed, stats, many = asyncio.run(main())
    assert stats.gpu is not None and stats.gpu.graph_mode == "graph"
    # A capture may fail while another thread captures (the slots' graphs); it is retried.
    assert stats.gpu.stage_graph_mode is not None
    assert not stats.gpu.stage_graph_mode.startswith("plain"), stats.gpu
    assert stats.gpu.stage_fallback_frames == 0
    for r in streamed + many:
        assert set(r.outputs) == {DETECTIONS}
        want = detector({"out": raw}, xs.FrameContext(r.prediction.frame_size, PRE))
        assert len(want) > 3
        assert_same([(want, r.prediction)])
