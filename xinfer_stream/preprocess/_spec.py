"""The ``Preprocess`` spec: the contract between calibration and inference.

Calibration (numpy, on the CPU) and inference (numpy on the CPU path, one fused CUDA kernel on the
GPU path) must see the same pixels. The spec is a frozen, JSON-serialisable value; it is saved next
to every model artifact (``<artifact>.preprocess.json``) and read back by ``load``.

Geometry, defined exactly so that every implementation can match it (the numpy reference in
``_reference.py`` is the oracle):

* ``stretch``: scale each axis independently to ``size``.
* ``letterbox``: one scale ``s = min(H/h, W/w)``; the image is resized and placed by
  ``letterbox_align``: ``"center"`` resizes to ``(round(h*s), round(w*s))`` and centres it (offset
  ``(H - nh) // 2``, ``(W - nw) // 2``), as Ultralytics' LetterBox does; ``"top-left"`` resizes to
  ``(int(h*s), int(w*s))`` (truncated, in the same float arithmetic as YOLOX's ``preproc``) at
  offset 0, 0, so the border is on the right and bottom, as YOLOX pads. The border is filled with
  ``pad_value`` (a pixel value on the 0..255 scale, e.g. 114, normalised like any pixel:
  ``(pad - mean) / std``); by default it is ``mean``, so it normalises to exactly 0.
* ``shorter_crop``: one scale ``s = max(H/h, W/w)``; resized to ``(round(h*s), round(w*s))``, then
  the centre ``size`` is cut out (offset ``(nh - H) // 2``, ``(nw - W) // 2``).

Resampling is bilinear with half-pixel centres and edge clamping, no antialiasing: an output pixel
``x`` inside the resized image of width ``nw`` reads source ``(x + 0.5) * w / nw - 0.5``. The
blended value is rounded to the nearest integer (halves up) before normalisation, as an 8-bit
resize (OpenCV's ``INTER_LINEAR``, which detectors' and classifiers' own pipelines use) gives it:
measured against OpenCV on real models, this halves the score differences of a detector's boxes
(BENCHMARKS.md, "Fidelity to the model's own preprocessing").
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .._errors import InvalidModelError
from .._files import atomic_write_json

__all__ = ["Geometry", "Preprocess", "preprocess_path_for"]

ResizeMode = Literal["stretch", "letterbox", "shorter_crop"]
ColorOrder = Literal["rgb", "bgr"]
Layout = Literal["nchw", "nhwc"]
LetterboxAlign = Literal["center", "top-left"]

_RESIZE_MODES = ("stretch", "letterbox", "shorter_crop")
_COLORS = ("rgb", "bgr")
_LAYOUTS = ("nchw", "nhwc")
_DTYPES = ("float32", "float16", "uint8")
_ALIGNS = ("center", "top-left")
# Version 2 added pad_value and letterbox_align. A spec that leaves both at their defaults is
# written as version 1, byte for byte what older releases wrote and can read; one that uses them
# is written as version 2, which an older release refuses by its version (rather than silently
# ignoring the border it cannot draw). Both versions load.
_READABLE_VERSIONS = (1, 2)
_KEYS = ("size", "resize", "mean", "std", "color", "layout", "dtype", "pad_value", "letterbox_align")


@dataclass(frozen=True)
class Geometry:
    """Where a source image of ``(src_h, src_w)`` lands in the output of ``size``.

    ``resized_h/w`` is the size the whole source is scaled to; ``offset_y/x`` is where its top-left
    corner lands in the output (negative when cropping). Output pixels outside the resized image
    are padding (letterbox only).
    """

    src_h: int
    src_w: int
    resized_h: int
    resized_w: int
    offset_y: int
    offset_x: int


@dataclass(frozen=True)
class Preprocess:
    """How a decoded RGB frame becomes a model input tensor.

    ``size`` is (height, width). ``mean`` and ``std`` are per output channel, on the 0..255 scale,
    in the output channel order (``color``): ``out = (pixel - mean) / std``. ``layout`` is the
    tensor layout of one frame plus the batch axis; ``dtype`` the element type written.

    Letterbox only: ``pad_value`` is the border's pixel value on the 0..255 scale (one number, or
    three in the output channel order like ``mean``), applied before normalisation; ``None`` (the
    default) pads with ``mean``, so the border normalises to 0. ``letterbox_align`` places the
    resized image: ``"center"`` (Ultralytics) or ``"top-left"`` (YOLOX). Raw 0..255 input, as
    YOLOX expects, is the default ``mean=(0, 0, 0)``, ``std=(1, 1, 1)``; Ultralytics' 0..1 input
    is ``std=(255, 255, 255)``.
    """

    size: tuple[int, int]
    resize: ResizeMode = "stretch"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    color: ColorOrder = "rgb"
    layout: Layout = "nchw"
    dtype: str = "float32"
    # One number is stored as three (``__post_init__``); read it back through ``pad``.
    pad_value: float | tuple[float, float, float] | None = None
    letterbox_align: LetterboxAlign = "center"

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                     for v in size):
            raise ValueError(f"Preprocess size must be (height, width) of positive ints, got {self.size!r}")
        object.__setattr__(self, "size", size)
        if self.resize not in _RESIZE_MODES:
            raise ValueError(f"Preprocess resize must be one of {_RESIZE_MODES}, got {self.resize!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            try:
                triple = tuple(float(v) for v in value)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"Preprocess {name} must be 3 numbers, got {value!r}") from None
            if len(triple) != 3 or not all(math.isfinite(v) for v in triple):
                raise ValueError(f"Preprocess {name} must be 3 finite numbers, got {value!r}")
            object.__setattr__(self, name, triple)
        if any(v == 0.0 for v in self.std):
            raise ValueError(f"Preprocess std must not contain 0, got {self.std!r}")
        if self.color not in _COLORS:
            raise ValueError(f"Preprocess color must be one of {_COLORS}, got {self.color!r}")
        if self.layout not in _LAYOUTS:
            raise ValueError(f"Preprocess layout must be one of {_LAYOUTS}, got {self.layout!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"Preprocess dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.pad_value is not None:
            object.__setattr__(self, "pad_value", _pad_triple(self.pad_value))
        if self.letterbox_align not in _ALIGNS:
            raise ValueError(f"Preprocess letterbox_align must be one of {_ALIGNS}, "
                             f"got {self.letterbox_align!r}")

    @property
    def pad(self) -> tuple[float, float, float]:
        """The letterbox border's pixel value per output channel (0..255 scale): ``pad_value``,
        else ``mean``."""
        return _pad_triple(self.pad_value) if self.pad_value is not None else self.mean

    @classmethod
    def for_detector(cls, family: str, size: tuple[int, int], *, layout: Layout = "nchw",
                     dtype: str = "float32") -> Preprocess:
        """The input a detector family is trained and documented with, at ``size`` (height,
        width): ``"yolov8"`` (Ultralytics YOLOv8/v11: ``LetterBox``, centred, 114 border, RGB,
        0..1) or ``"yolox"`` (YOLOX's ``preproc``: top-left, 114 border, BGR, raw 0..255)."""
        if family == "yolov8":
            return cls(size, "letterbox", std=(255.0, 255.0, 255.0), color="rgb", layout=layout,
                       dtype=dtype, pad_value=114.0, letterbox_align="center")
        if family == "yolox":
            return cls(size, "letterbox", color="bgr", layout=layout, dtype=dtype,
                       pad_value=114.0, letterbox_align="top-left")
        raise ValueError(f"Preprocess.for_detector knows 'yolov8' and 'yolox', got {family!r}")

    # -- geometry ---------------------------------------------------------------------------
    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """The model input shape this spec produces for ``batch`` frames."""
        h, w = self.size
        return (batch, 3, h, w) if self.layout == "nchw" else (batch, h, w, 3)

    def geometry(self, src_h: int, src_w: int) -> Geometry:
        """Where a ``src_h`` x ``src_w`` image lands in the output (see the module docstring)."""
        if src_h <= 0 or src_w <= 0:
            raise ValueError(f"source image must be non-empty, got {src_h}x{src_w}")
        out_h, out_w = self.size
        if self.resize == "stretch":
            return Geometry(src_h, src_w, out_h, out_w, 0, 0)
        scale = (min if self.resize == "letterbox" else max)(out_h / src_h, out_w / src_w)
        # YOLOX's preproc truncates the resized size (int(h * r)); Ultralytics and the crop round.
        size_of = int if self.resize == "letterbox" and self.letterbox_align == "top-left" else round
        new_h = max(1, size_of(src_h * scale))
        new_w = max(1, size_of(src_w * scale))
        if self.resize == "letterbox":
            new_h, new_w = min(new_h, out_h), min(new_w, out_w)
            if self.letterbox_align == "top-left":
                return Geometry(src_h, src_w, new_h, new_w, 0, 0)
            return Geometry(src_h, src_w, new_h, new_w, (out_h - new_h) // 2, (out_w - new_w) // 2)
        new_h, new_w = max(new_h, out_h), max(new_w, out_w)
        return Geometry(src_h, src_w, new_h, new_w, -((new_h - out_h) // 2), -((new_w - out_w) // 2))

    def source_window(self, src_h: int, src_w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The rows ``[y0, y1)`` and columns ``[x0, x1)`` of a ``src_h`` x ``src_w`` image that
        the bilinear taps read: everything else never reaches the output. ``shorter_crop`` cuts
        off the long sides (the centre 1080x1080 of a 1080p frame); in every mode a downscale
        also skips a pixel or two at the edges.

        The GPU path uploads only this window of each frame. It follows the taps' arithmetic
        exactly (``_reference._axis_taps`` and the kernel's ``axis_tap``), so the output of a
        frame whose pixels outside the window are anything at all is the same to the last bit.
        """
        g = self.geometry(src_h, src_w)
        out_h, out_w = self.size
        return (_tap_span(out_h, g.offset_y, g.resized_h, src_h),
                _tap_span(out_w, g.offset_x, g.resized_w, src_w))

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        version = 1
        if self.pad_value is None:
            del d["pad_value"]
        else:
            d["pad_value"] = list(self.pad)
            version = 2
        if self.letterbox_align == "center":
            del d["letterbox_align"]
        else:
            version = 2
        return {"format": "xinfer-stream.preprocess", "version": version, **d}

    @classmethod
    def from_dict(cls, data: Any) -> Preprocess:
        """Rebuild a spec from :meth:`to_dict` output; ``ValueError`` on anything malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"a Preprocess must be a JSON object, got {type(data).__name__}")
        fields = dict(data)
        fmt = fields.pop("format", "xinfer-stream.preprocess")
        version = fields.pop("version", 1)
        if (fmt != "xinfer-stream.preprocess" or isinstance(version, bool)
                or version not in _READABLE_VERSIONS):
            raise ValueError(f"not a Preprocess this release reads (versions "
                             f"{', '.join(map(str, _READABLE_VERSIONS))}): format={fmt!r} "
                             f"version={version!r}")
        unknown = set(fields) - set(_KEYS)
        if unknown:
            raise ValueError(f"unknown Preprocess keys {sorted(unknown)}")
        if "size" not in fields:
            raise ValueError("a Preprocess needs 'size'")
        size = fields.pop("size")
        if not isinstance(size, (list, tuple)):
            raise ValueError(f"Preprocess size must be [height, width], got {size!r}")
        for key in ("resize", "color", "layout", "dtype", "letterbox_align"):
            if key in fields and not isinstance(fields[key], str):
                raise ValueError(f"Preprocess {key} must be a string, got {fields[key]!r}")
        return cls(size=tuple(size), **fields)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Preprocess:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"Preprocess JSON is malformed: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this spec as JSON to ``path`` atomically and return the path."""
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Preprocess:
        """Read a spec written by :meth:`save`; ``InvalidModelError`` names the file on failure."""
        try:
            return cls.from_json(Path(path).read_bytes())
        except OSError as exc:
            raise InvalidModelError(f"cannot read the Preprocess file {str(path)!r}: {exc}") from exc
        except ValueError as exc:
            raise InvalidModelError(
                f"the Preprocess file {str(path)!r} is invalid: {exc}; rewrite it or pass "
                "preprocess= explicitly") from exc


def _pad_triple(value: Any) -> tuple[float, float, float]:
    """One pixel value, or three (output channel order), each finite and within 0..255."""
    items = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        triple = tuple(float(v) for v in items)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"Preprocess pad_value must be a pixel value or 3 of them (0..255), "
                         f"got {value!r}") from None
    if len(triple) != 3 or not all(math.isfinite(v) and 0.0 <= v <= 255.0 for v in triple):
        raise ValueError(f"Preprocess pad_value must be a pixel value or 3 of them (0..255), "
                         f"got {value!r}")
    return (triple[0], triple[1], triple[2])


def _tap_span(out_len: int, offset: int, resized: int, src: int) -> tuple[int, int]:
    """``[lo, hi)`` of the source indices the bilinear taps of one axis read. Taps move
    monotonically with the output index, so the first and last output pixels inside the resized
    image bound them; each tap is computed as ``_axis_taps`` does, in double precision."""
    first = max(0, -offset)
    last = min(out_len - offset, resized) - 1

    def taps(r: int) -> tuple[int, int]:
        s = min(max((r + 0.5) * (src / resized) - 0.5, 0.0), float(src - 1))
        lo = math.floor(s)
        return lo, min(lo + 1, src - 1)

    return taps(first)[0], taps(last)[1] + 1


def preprocess_path_for(artifact: str | os.PathLike[str]) -> Path:
    """The sidecar that holds the Preprocess of a model artifact: ``model.int8.onnx`` ->
    ``model.int8.preprocess.json``."""
    p = Path(artifact)
    return p.with_name(p.stem + ".preprocess.json")
