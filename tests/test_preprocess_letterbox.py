"""What detectors need from Preprocess: a letterbox pad value, its placement, raw 0..255 input,
and sidecars that stay readable both ways."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xinfer_stream import Preprocess
from xinfer_stream.preprocess import preprocess_frame


def test_defaults_keep_the_border_at_zero_and_centred() -> None:
    p = Preprocess((64, 64), "letterbox", mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0))
    assert p.pad_value is None and p.pad == p.mean and p.letterbox_align == "center"
    out = preprocess_frame(p, np.full((32, 64, 3), 200, np.uint8))
    g = p.geometry(32, 64)
    assert (g.resized_h, g.offset_y, g.offset_x) == (32, 16, 0)
    assert (out[:, :16] == 0).all() and (out[:, 48:] == 0).all()


def test_pad_value_is_a_pixel_normalised_like_any_pixel() -> None:
    # Ultralytics: 114 grey border, 0..1 input.
    p = Preprocess((64, 64), "letterbox", std=(255.0,) * 3, pad_value=114)
    assert p.pad_value == (114.0, 114.0, 114.0)
    out = preprocess_frame(p, np.full((32, 64, 3), 200, np.uint8))
    np.testing.assert_array_equal(out[:, :16], np.float32(114.0) / np.float32(255.0))
    np.testing.assert_array_equal(out[:, 16:48], np.float32(200.0) / np.float32(255.0))


def test_pad_value_per_channel_follows_the_output_colour_order() -> None:
    img = np.full((16, 32, 3), 50, np.uint8)
    rgb = preprocess_frame(Preprocess((32, 32), "letterbox", layout="nhwc", pad_value=(1, 2, 3)), img)
    bgr = preprocess_frame(Preprocess((32, 32), "letterbox", layout="nhwc", color="bgr",
                                      pad_value=(1, 2, 3)), img)
    np.testing.assert_array_equal(rgb[0, 0], [1, 2, 3])
    np.testing.assert_array_equal(bgr[0, 0], [1, 2, 3])   # pad_value is in output order


def test_top_left_puts_the_border_right_and_below() -> None:
    # YOLOX: raw 0..255 BGR input, 114 border on the right/bottom, the resized size truncated as
    # YOLOX's preproc does (int(32 * 64/48) = int(42.67) = 42, where the centred placement rounds).
    p = Preprocess((64, 64), "letterbox", color="bgr", pad_value=114, letterbox_align="top-left")
    g = p.geometry(32, 48)
    assert (g.resized_h, g.resized_w, g.offset_y, g.offset_x) == (42, 64, 0, 0)
    assert Preprocess((64, 64), "letterbox").geometry(32, 48).resized_h == 43
    img = np.zeros((32, 48, 3), np.uint8)
    img[..., 2] = 9    # blue
    out = preprocess_frame(p, img)
    assert (out[:, 42:] == 114).all()
    np.testing.assert_array_equal(out[:, :42], np.broadcast_to(np.array([9, 0, 0], np.float32)[:, None, None],
                                                                (3, 42, 64)))
    wide = p.geometry(20, 80)
    assert (wide.offset_y, wide.offset_x, wide.resized_h) == (0, 0, 16)


def test_top_left_sizes_follow_yolox_float_arithmetic() -> None:
    # YOLOX: r = min(416 / h, 416 / w); resized to int(h * r) x int(w * r). 432 * (416 / 768) is
    # 233.99999999999997 in float, so YOLOX resizes a 768x432 frame to 416x233; centred rounds.
    top_left = Preprocess((416, 416), "letterbox", letterbox_align="top-left", pad_value=114)
    centred = Preprocess((416, 416), "letterbox", pad_value=114)
    for h, w in ((432, 768), (1080, 1920), (480, 640), (720, 1280), (1920, 1080), (270, 480)):
        r = min(416 / h, 416 / w)
        g = top_left.geometry(h, w)
        assert (g.resized_h, g.resized_w) == (int(h * r), int(w * r)), (h, w)
        c = centred.geometry(h, w)
        assert (c.resized_h, c.resized_w) == (round(h * r), round(w * r)), (h, w)
    assert top_left.geometry(432, 768).resized_h == 233
    assert centred.geometry(432, 768).resized_h == 234


def test_raw_0_255_input_is_the_default_normalisation() -> None:
    img = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = preprocess_frame(Preprocess((8, 8), layout="nhwc"), img)
    np.testing.assert_array_equal(out, img.astype(np.float32))


def test_placement_does_not_change_which_source_pixels_are_read() -> None:
    top_left = Preprocess((640, 640), "letterbox", letterbox_align="top-left", pad_value=114)
    centred = Preprocess((640, 640), "letterbox", pad_value=114)
    for h, w in ((1080, 1920), (1920, 1080), (480, 640)):
        assert top_left.source_window(h, w) == centred.source_window(h, w)


@pytest.mark.parametrize("kwargs, message", [
    ({"pad_value": 256}, "pad_value"), ({"pad_value": -1}, "pad_value"),
    ({"pad_value": (1, 2)}, "pad_value"), ({"pad_value": "grey"}, "pad_value"),
    ({"pad_value": float("nan")}, "pad_value"), ({"letterbox_align": "middle"}, "letterbox_align"),
])
def test_rejects_bad_letterbox_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocess((8, 8), "letterbox", **kwargs)


def test_sidecars_stay_version_1_unless_the_new_options_are_used(tmp_path: Path) -> None:
    plain = Preprocess((224, 224), "letterbox", mean=(127.0,) * 3, std=(128.0,) * 3)
    d = plain.to_dict()
    assert d["version"] == 1 and "pad_value" not in d and "letterbox_align" not in d
    detector = Preprocess((640, 640), "letterbox", pad_value=114, letterbox_align="top-left")
    d2 = detector.to_dict()
    assert d2["version"] == 2 and d2["pad_value"] == [114.0] * 3 and d2["letterbox_align"] == "top-left"
    assert Preprocess.from_json(detector.to_json()) == detector
    assert Preprocess.from_json(plain.to_json()) == plain
    side = detector.save(tmp_path / "m.preprocess.json")
    assert Preprocess.load(side) == detector


def test_old_files_still_load() -> None:
    # Exactly what release 0.1.0 wrote.
    old = {"format": "xinfer-stream.preprocess", "version": 1, "size": [224, 224],
           "resize": "letterbox", "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0],
           "color": "rgb", "layout": "nchw", "dtype": "float32"}
    p = Preprocess.from_json(json.dumps(old))
    assert p.pad == p.mean and p.letterbox_align == "center"
    assert p.to_dict() == old
    with pytest.raises(ValueError, match="version"):
        Preprocess.from_dict({**old, "version": 3})


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries(
    {"size": st.just([8, 8]), "resize": st.just("letterbox")},
    optional={"pad_value": st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(),
                                      st.text(max_size=4),
                                      st.lists(st.one_of(st.integers(-3, 300), st.floats(),
                                                         st.none()), max_size=4)),
              "letterbox_align": st.one_of(st.none(), st.integers(), st.text(max_size=9),
                                           st.sampled_from(["center", "top-left"])),
              "version": st.one_of(st.integers(0, 3), st.booleans(), st.text(max_size=2))},
).map(json.dumps))
def test_fuzzed_letterbox_options_give_value_errors_only(data: str) -> None:
    try:
        p = Preprocess.from_json(data)
    except ValueError:
        return
    assert Preprocess.from_json(p.to_json()) == p
