"""The Preprocess spec and its numpy reference, on synthetic images with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xinfer_stream import InvalidModelError, Preprocess
from xinfer_stream.preprocess import preprocess_batch, preprocess_frame, preprocess_path_for


def ramp(h: int, w: int) -> np.ndarray:
    """An image whose R channel is the column, G the row, B constant 7."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w, dtype=np.uint8)[None, :]
    img[..., 1] = np.arange(h, dtype=np.uint8)[:, None]
    img[..., 2] = 7
    return img


def test_defaults_and_keywords() -> None:
    p = Preprocess(size=(224, 224))
    assert (p.resize, p.color, p.layout, p.dtype) == ("stretch", "rgb", "nchw", "float32")
    assert p.mean == (0.0, 0.0, 0.0) and p.std == (1.0, 1.0, 1.0)
    assert p.input_shape(4) == (4, 3, 224, 224)
    assert Preprocess(size=(2, 3), layout="nhwc").input_shape() == (1, 2, 3, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"size": (0, 4)}, "size"), ({"size": (4,)}, "size"), ({"size": (4, 4), "resize": "crop"}, "resize"),
    ({"size": (4, 4), "std": (1, 0, 1)}, "std"), ({"size": (4, 4), "mean": (1, 2)}, "mean"),
    ({"size": (4, 4), "color": "yuv"}, "color"), ({"size": (4, 4), "layout": "chw"}, "layout"),
    ({"size": (4, 4), "dtype": "int64"}, "dtype"), ({"size": (4, 4), "mean": (1, float("nan"), 1)}, "mean"),
])
def test_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocess(**kwargs)


def test_stretch_at_source_size_is_identity() -> None:
    img = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    out = preprocess_frame(Preprocess(size=(17, 23), layout="nhwc"), img)
    np.testing.assert_array_equal(out, img.astype(np.float32))


def test_bilinear_of_a_ramp_is_a_ramp() -> None:
    # Downscaling a linear ramp by 2 with half-pixel centres samples at 0.5, 2.5, 4.5..., and the
    # pixel is the nearest integer, halves up: 1, 3, 5... (what cv2.resize's INTER_LINEAR gives).
    img = ramp(8, 16)
    out = preprocess_frame(Preprocess(size=(4, 8), layout="nhwc"), img)
    np.testing.assert_array_equal(out[0, :, 0], np.arange(8) * 2 + 1.0)
    np.testing.assert_array_equal(out[:, 0, 1], np.arange(4) * 2 + 1.0)
    assert np.all(out[..., 2] == 7)


def bilinear_by_hand(img: np.ndarray, spec: Preprocess) -> np.ndarray:
    """Each output value computed on its own, from the geometry, in float32: half-pixel centres,
    the source coordinate clamped to the image, blended along x then y and rounded to the nearest
    integer, halves up; padding outside."""
    g = spec.geometry(img.shape[0], img.shape[1])
    out = np.empty((*spec.size, 3), np.float32)
    one = np.float32(1.0)
    for y in range(spec.size[0]):
        for x in range(spec.size[1]):
            ry, rx = y - g.offset_y, x - g.offset_x
            if not (0 <= ry < g.resized_h and 0 <= rx < g.resized_w):
                out[y, x] = spec.pad
                continue
            sy = min(max((ry + 0.5) * (g.src_h / g.resized_h) - 0.5, 0.0), g.src_h - 1)
            sx = min(max((rx + 0.5) * (g.src_w / g.resized_w) - 0.5, 0.0), g.src_w - 1)
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, g.src_h - 1), min(x0 + 1, g.src_w - 1)
            wy, wx = np.float32(sy - y0), np.float32(sx - x0)
            a, b, c, d = (img[i, j].astype(np.float32) for i, j in
                          ((y0, x0), (y0, x1), (y1, x0), (y1, x1)))
            blend = (a * (one - wx) + b * wx) * (one - wy) + (c * (one - wx) + d * wx) * wy
            out[y, x] = np.floor(blend + np.float32(0.5))
    return out


@pytest.mark.parametrize("resize", ["stretch", "letterbox", "shorter_crop"])
@pytest.mark.parametrize("size", [(5, 4), (9, 13)])
def test_every_output_value_is_its_own_bilinear_sample(resize: str, size: tuple[int, int]) -> None:
    """The vectorised resampling (gathers by flat index, planar blend, channels swapped for bgr)
    against a loop over output values, on a random image of odd, non-square size."""
    img = np.random.default_rng(3).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    pad = {"pad_value": (10.0, 20.0, 30.0)} if resize == "letterbox" else {}
    rgb = Preprocess(size=size, resize=resize, layout="nhwc", **pad)
    expected = bilinear_by_hand(img, rgb)
    np.testing.assert_array_equal(preprocess_frame(rgb, img), expected)
    bgr = Preprocess(size=size, resize=resize, color="bgr", **pad)  # nchw, pad in bgr order
    np.testing.assert_array_equal(
        preprocess_frame(bgr, img),
        bilinear_by_hand(img[..., ::-1], Preprocess(size=size, resize=resize, layout="nhwc",
                                                    **pad)).transpose(2, 0, 1))


def test_letterbox_geometry_and_padding_normalises_to_zero() -> None:
    p = Preprocess(size=(224, 224), resize="letterbox", mean=(10.0, 20.0, 30.0), std=(2.0, 2.0, 2.0))
    g = p.geometry(360, 640)
    assert (g.resized_h, g.resized_w, g.offset_y, g.offset_x) == (126, 224, 49, 0)
    img = np.full((360, 640, 3), 200, np.uint8)
    out = preprocess_frame(p, img)
    assert out.shape == (3, 224, 224)
    assert np.all(out[:, :49, :] == 0) and np.all(out[:, 49 + 126:, :] == 0)
    np.testing.assert_allclose(out[:, 49:175, :], ((200 - np.array([10, 20, 30])) / 2.0)[:, None, None]
                               * np.ones((3, 126, 224)))


def test_shorter_crop_takes_the_centre() -> None:
    p = Preprocess(size=(4, 4), resize="shorter_crop", layout="nhwc")
    g = p.geometry(4, 8)   # already the right height: no scaling, crop 2 columns each side
    assert (g.resized_h, g.resized_w, g.offset_y, g.offset_x) == (4, 8, 0, -2)
    img = ramp(4, 8)
    out = preprocess_frame(p, img)
    np.testing.assert_array_equal(out[..., 0], np.tile(np.arange(2, 6, dtype=np.float32), (4, 1)))


def test_color_layout_and_dtypes() -> None:
    img = ramp(6, 6)
    rgb = preprocess_frame(Preprocess(size=(6, 6), layout="nhwc"), img)
    bgr = preprocess_frame(Preprocess(size=(6, 6), layout="nhwc", color="bgr"), img)
    np.testing.assert_array_equal(bgr, rgb[..., ::-1])
    nchw = preprocess_frame(Preprocess(size=(6, 6)), img)
    np.testing.assert_array_equal(nchw, rgb.transpose(2, 0, 1))
    half = preprocess_frame(Preprocess(size=(6, 6), dtype="float16"), img)
    assert half.dtype == np.float16 and half.flags.c_contiguous
    u8 = preprocess_frame(Preprocess(size=(6, 6), dtype="uint8", layout="nhwc"), img)
    np.testing.assert_array_equal(u8, img)


def test_batch_stacks_frames() -> None:
    p = Preprocess(size=(8, 8), mean=(127.0,) * 3, std=(128.0,) * 3)
    frames = [ramp(10, 12), ramp(20, 30)]
    batch = preprocess_batch(p, frames)
    assert batch.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(batch[1], preprocess_frame(p, frames[1]))
    with pytest.raises(ValueError, match="at least one"):
        preprocess_batch(p, [])


def test_rejects_non_rgb_frames() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess_frame(Preprocess(size=(4, 4)), np.zeros((4, 4), np.uint8))


def test_round_trip_and_sidecar(tmp_path: Path) -> None:
    p = Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3, std=(128.0,) * 3,
                   color="bgr", layout="nhwc", dtype="float16")
    assert Preprocess.from_json(p.to_json()) == p
    side = preprocess_path_for(tmp_path / "model.int8.onnx")
    assert side.name == "model.int8.preprocess.json"
    p.save(side)
    assert Preprocess.load(side) == p
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_load_names_the_file_on_bad_content(tmp_path: Path) -> None:
    bad = tmp_path / "x.preprocess.json"
    bad.write_text(json.dumps({"size": [224, 224], "resize": "zoom"}))
    with pytest.raises(InvalidModelError, match="x.preprocess.json"):
        Preprocess.load(bad)
    with pytest.raises(InvalidModelError, match="cannot read"):
        Preprocess.load(tmp_path / "missing.json")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200),
                 st.dictionaries(st.sampled_from(["size", "resize", "mean", "std", "color", "layout",
                                                  "dtype", "format", "version", "other"]),
                                 st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=8),
                                           st.lists(st.one_of(st.integers(-3, 300), st.floats(),
                                                              st.text(max_size=3)), max_size=4)),
                                 max_size=8).map(json.dumps)))
def test_fuzzed_json_gives_value_errors_only(data: str | bytes) -> None:
    try:
        p = Preprocess.from_json(data)
    except ValueError:
        return
    assert Preprocess.from_json(p.to_json()) == p
