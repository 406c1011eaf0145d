"""detect() on a GPU backend: the GPU runner's results reach a FramePostprocess with the frame's
context (its size, the Preprocess), through infer() and stream(). The model is a torch module
whose output is a fixed yolov8-style tensor, so the boxes are known exactly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xinfer_stream as xs

pytestmark = pytest.mark.gpu

SPEC = xs.Preprocess((64, 64), "letterbox", std=(255.0,) * 3, pad_value=114)


def constant_detector(torch: Any) -> Any:
    out = np.zeros((1, 4 + 2, 84), np.float32)
    out[0, :4, 7] = [32, 32, 32, 16]      # input box (16, 24)-(48, 40)
    out[0, 5, 7] = 0.8

    class Constant(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("fixed", torch.from_numpy(out))

        def forward(self, x: Any) -> Any:
            return self.fixed.expand(x.shape[0], -1, -1) + 0 * x.sum()

    return Constant()


def test_infer_and_stream_on_the_gpu_map_boxes_to_each_frame(torch: Any, bundled_clip: Path) -> None:
    async def main() -> tuple[list[xs.Result], list[xs.Result]]:
        async with xs.load(constant_detector(torch), preprocess=SPEC) as engine:
            assert engine.backend.device == "cuda"
            post = xs.detect("yolov8", labels=["person", "car"])
            inferred = [await engine.infer(np.zeros(shape, np.uint8), postprocess=post)
                        for shape in ((100, 200, 3), (200, 100, 3))]
            streamed = []
            async with engine.stream(bundled_clip, postprocess=post, batch=2) as results:
                async for r in results:
                    streamed.append(r)
                    if len(streamed) == 4:
                        break
            return inferred, streamed

    inferred, streamed = asyncio.run(main())
    np.testing.assert_allclose(inferred[0].prediction.xyxy, [[50, 25, 150, 75]], atol=1e-4)
    np.testing.assert_allclose(inferred[1].prediction.xyxy, [[0, 75, 100, 125]], atol=1e-4)
    assert inferred[0].prediction.labels == ("car",)
    # The bundled clip is 640x360: scale 0.1 -> 36x64 at offset y 14.
    want = [[160, (24 - 14) * 10, 480, (40 - 14) * 10]]
    for r in streamed:
        assert r.prediction.frame_size == (360, 640)
        np.testing.assert_allclose(r.prediction.xyxy, want, atol=1e-3)
