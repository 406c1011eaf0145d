"""The fused kernel against its numpy oracle for the detector options: letterbox pad value and
placement (centred as Ultralytics, top-left as YOLOX), raw 0..255 input. Mirrors
test_gpu_preprocess.py, whose helpers it uses."""

from __future__ import annotations


import numpy as np
import pytest

from xinfer_stream.cuda import Device
from xinfer_stream.preprocess import Preprocess
from xinfer_stream.preprocess._frames import PIXEL_FORMATS, FrameLayout
from xinfer_stream.preprocess._kernel import _Params

from .test_gpu_preprocess import COLORS, max_error, oracle, random_frame, run_kernel


ALIGNS = ("center", "top-left")


def test_params_mirror_the_kernel_struct() -> None:
    # The pad triple follows std_ in both; a mismatch would shift every YUV coefficient.
    names = [f[0] for f in _Params._fields_]
    assert names[names.index("std_") + 1] == "pad"
    from xinfer_stream.preprocess._kernel import kernel_source
    src = kernel_source()
    assert src.index("float std_[3];") < src.index("float pad[3];") < src.index("float y_offset")


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", PIXEL_FORMATS)
@pytest.mark.parametrize("align", ALIGNS)
@pytest.mark.parametrize("out_color", ["rgb", "bgr"])
def test_kernel_matches_oracle_with_pad_and_placement(device: Device, fmt: str, align: str,
                                                      out_color: str) -> None:
    seed = hash((fmt, align, out_color)) & 0xFFFF
    rng = np.random.default_rng(seed)
    for (h, w), size in [((97, 131), (64, 48)), ((23, 37), (60, 70)), ((120, 80), (80, 120))]:
        layout = FrameLayout(fmt, h, w)  # type: ignore[arg-type]
        frames = [random_frame(layout, seed + i) for i in range(2)]
        color = COLORS[int(rng.integers(0, 4))] if layout.is_yuv else None
        mean = tuple(float(v) for v in rng.uniform(0, 255, 3))
        std = tuple(float(v) for v in rng.uniform(0.5, 80, 3))
        pad = tuple(float(v) for v in rng.uniform(0, 255, 3))
        for dtype in ("float32", "float16", "uint8"):
            for layout_name in ("nchw", "nhwc"):
                spec = Preprocess(size, "letterbox", mean, std, out_color, layout_name,  # type: ignore[arg-type]
                                  dtype, pad_value=pad, letterbox_align=align)  # type: ignore[arg-type]
                got = run_kernel(device, spec, layout, frames, color)
                err = max_error(got, oracle(spec, layout, frames, color))
                assert err == 0.0, f"{fmt} {h}x{w} -> {spec}: not bit-exact ({err})"


@pytest.mark.gpu
@pytest.mark.parametrize("align", ALIGNS)
def test_yolo_style_letterbox_at_1080p(device: Device, align: str) -> None:
    """Raw 0..255 input with a 114 border (YOLOX) and 0..1 input (Ultralytics), 1080p NV12."""
    layout = FrameLayout("nv12", 1080, 1920)
    frame = random_frame(layout, 11)
    for std in (1.0, 255.0):
        spec = Preprocess((640, 640), "letterbox", std=(std,) * 3, pad_value=114,
                          letterbox_align=align)  # type: ignore[arg-type]
        got = run_kernel(device, spec, layout, [frame], COLORS[1])[0]
        g = spec.geometry(1080, 1920)
        top = 140 if align == "center" else 0
        assert (g.resized_h, g.offset_y) == (360, top)
        border = np.float32(114.0) / np.float32(std)
        assert (got[:, :top, :] == border).all() and (got[:, top + 360:, :] == border).all()
        assert max_error(got[None], oracle(spec, layout, [frame], COLORS[1])) == 0.0
