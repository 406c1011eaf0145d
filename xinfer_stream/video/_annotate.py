"""Pictures of results: a frame with its detections or its top class drawn on, and JPEG files.

Drawing is Pillow's ``ImageDraw`` (a well-kept library, not a rasteriser of ours). Frames in,
frames out: :func:`annotate` never changes the frame it is given and returns a new RGB uint8
array. It reads predictions by their shape, not their type (this package knows nothing of the
runtime): anything with ``xyxy``, ``scores`` and ``labels`` is drawn as boxes (the runtime's
``Detections``), anything with ``top`` as the best class (``Classification``).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import numpy.typing as npt

from .._files import atomic_output

__all__ = ["annotate", "write_jpeg", "write_png"]

# Distinct, saturated colours, one per class id (cycled).
_PALETTE = ((255, 56, 56), (50, 205, 50), (30, 144, 255), (255, 157, 151), (255, 178, 29),
            (207, 210, 49), (72, 249, 10), (146, 204, 23), (61, 219, 134), (26, 147, 52),
            (0, 212, 187), (44, 153, 168), (0, 194, 255), (52, 69, 147), (100, 115, 255),
            (0, 24, 236), (132, 56, 255), (82, 0, 133), (203, 56, 255), (255, 149, 200))


def annotate(image: npt.NDArray[np.uint8], prediction: Any, *,
             colour: tuple[int, int, int] | None = None,
             caption: str | None = None) -> npt.NDArray[np.uint8]:
    """A copy of the RGB uint8 ``(H, W, 3)`` ``image`` with ``prediction`` drawn on it.

    Detections (``xyxy`` in this image's pixels, ``scores``, ``labels``, ``class_ids``): each box
    as a rectangle in its class's colour (``colour``: every box in that one, to tell two sets of
    boxes apart on one frame), with ``label score`` above it (inside the box when it touches the
    top edge). A classification (``top``: ``(id, label, probability)`` best first):
    ``label probability`` of the best class in the top-left corner. ``None`` (no postprocess):
    the frame unchanged (still a copy). ``caption``: a line of text in the bottom-left corner,
    on ``colour`` (black without).
    """
    from PIL import Image, ImageDraw

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"annotate() draws on RGB uint8 (H, W, 3) frames, got a {image.dtype} "
                         f"array of shape {image.shape}")
    picture = Image.fromarray(np.ascontiguousarray(image), "RGB")
    draw = ImageDraw.Draw(picture)
    height, width = image.shape[:2]
    font = _font(max(12, min(height, width) // 36))
    line = max(2, min(height, width) // 240)
    if prediction is not None and hasattr(prediction, "xyxy"):
        class_ids = getattr(prediction, "class_ids", np.zeros(len(prediction.scores), np.int64))
        for box, score, label, cid in zip(np.asarray(prediction.xyxy), prediction.scores,
                                          prediction.labels, class_ids):
            x1, y1, x2, y2 = (float(v) for v in box)
            shade = colour or _PALETTE[int(cid) % len(_PALETTE)]
            draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=shade, width=line)
            _label(draw, font, f"{label} {float(score):.2f}", x1, y1, shade, inside=y1 < 20)
    elif prediction is not None and getattr(prediction, "top", None):
        _, label, p = prediction.top[0]
        _label(draw, font, f"{label} {float(p):.2f}", 0.0, 0.0, (0, 0, 0), inside=True)
    if caption:
        _label(draw, font, caption, 0.0, float(height), colour or (0, 0, 0), inside=False)
    drawn: npt.NDArray[np.uint8] = np.array(picture, dtype=np.uint8)
    return drawn


def _label(draw: Any, font: Any, text: str, x: float, y: float, colour: tuple[int, int, int],
           *, inside: bool) -> None:
    """``text`` in white on a ``colour`` box whose bottom-left is at ``(x, y)`` (or top-left,
    ``inside``)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 6, bottom - top + 4
    y0 = y if inside else y - h
    draw.rectangle((x, y0, x + w, y0 + h), fill=colour)
    draw.text((x + 3 - left, y0 + 2 - top), text, fill=(255, 255, 255), font=font)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (FreeType)
    except (ImportError, OSError, TypeError):  # built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def write_png(path: str | os.PathLike[str], image: npt.NDArray[np.uint8]) -> None:
    """Write an RGB uint8 ``(H, W, 3)`` image to ``path`` as a PNG (lossless: thin boxes stay
    sharp), atomically, as :func:`write_jpeg`."""
    from PIL import Image

    with atomic_output(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image), "RGB").save(tmp, format="PNG")


def write_jpeg(path: str | os.PathLike[str], image: npt.NDArray[np.uint8], *,
               quality: int = 90) -> None:
    """Write an RGB uint8 ``(H, W, 3)`` image to ``path`` as a JPEG, atomically (a temporary file
    renamed over ``path`` once complete)."""
    from PIL import Image

    with atomic_output(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image), "RGB").save(tmp, format="JPEG",
                                                                  quality=quality)
