"""The fused preprocessing kernel against its numpy oracle (and the oracle against the spec)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import tomllib

import xinfer_stream.cuda as xcuda
from xinfer_stream._errors import CudaError
from xinfer_stream.cuda import Device
from xinfer_stream.preprocess import Preprocess, preprocess_frame
from xinfer_stream.preprocess._color import YuvColor, preprocess_raw, yuv_to_rgb
from xinfer_stream.preprocess._frames import PIXEL_FORMATS, FrameLayout, pixel_format_for
from xinfer_stream.preprocess._kernel import PreprocessKernel, kernel_source

from .conftest import shared

REPO = Path(__file__).resolve().parent.parent
CLIPS = ["walk.mkv", "car-detection.mp4", "bottle-detection.mp4", "box.mp4", "cup.mp4",
         "people-detection.gif", "Megamind_bugy.avi"]
COLORS = [YuvColor("bt601", "limited"), YuvColor("bt709", "limited"), YuvColor("bt601", "full"),
          YuvColor("bt709", "full")]
MODES = ("stretch", "letterbox", "shorter_crop")


def random_frame(layout: FrameLayout, seed: int) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, layout.nbytes, dtype=np.uint8)


def run_kernel(device: Device, spec: Preprocess, layout: FrameLayout,
               frames: Sequence[npt.NDArray[np.uint8]], color: YuvColor | None
               ) -> npt.NDArray[np.generic]:
    """Upload packed frames from pinned staging on a copy stream, order the kernel after the
    upload with an event, poison the output first, and read the batch back."""
    kernel = PreprocessKernel(device, spec)
    batch = len(frames)
    out_bytes = kernel.output_nbytes(batch)
    with device.pinned_pool(batch * layout.nbytes, 1) as staging_pool, \
            device.device_pool(batch * layout.nbytes, 1) as planes_pool, \
            device.device_pool(out_bytes, 1) as out_pool, \
            device.create_stream() as copy, device.create_stream() as compute, \
            device.create_event() as uploaded, staging_pool.acquire() as staging, \
            planes_pool.acquire() as planes, out_pool.acquire() as out:
        for i, frame in enumerate(frames):
            staging.array[i * layout.nbytes:(i + 1) * layout.nbytes] = frame
        out.fill(0xFF, stream=compute)  # NaN for floats, 255 for uint8: unwritten shows up
        planes.copy_from_host(staging, stream=copy, nbytes=batch * layout.nbytes)
        uploaded.record(stream=copy)
        compute.wait(uploaded)
        kernel.enqueue(planes, layout, out, stream=compute, color=color, batch=batch)
        compute.synchronize()
        return out.read(spec.dtype, spec.input_shape(batch))


def oracle(spec: Preprocess, layout: FrameLayout, frames: Sequence[npt.NDArray[np.uint8]],
           color: YuvColor | None) -> npt.NDArray[np.generic]:
    return np.stack([preprocess_raw(spec, layout, f, color) for f in frames])


def max_error(got: npt.NDArray[np.generic], want: npt.NDArray[np.generic]) -> float:
    assert got.shape == want.shape and got.dtype == want.dtype
    g, w = got.astype(np.float64), want.astype(np.float64)
    assert np.isfinite(g).all(), "the kernel left unwritten (NaN) output"
    return float(np.abs(g - w).max())


# -- the layout and colour helpers (everywhere) ---------------------------------------------------
def test_frame_layouts_pack_planes_back_to_back() -> None:
    layout = FrameLayout("yuv420p", 5, 7)
    assert [(p.offset, p.rows, p.row_bytes) for p in layout.planes] == [(0, 5, 7), (35, 3, 4),
                                                                        (47, 3, 4)]
    assert layout.nbytes == 59
    assert FrameLayout("nv12", 5, 7).nbytes == 35 + 3 * 8
    assert FrameLayout("bgr24", 2, 3).nbytes == 18
    padded = [np.arange(5 * 9, dtype=np.uint8).reshape(5, 9),
              np.full((3, 6), 1, np.uint8), np.full((3, 6), 2, np.uint8)]
    packed = np.zeros(layout.nbytes + 3, np.uint8)
    layout.pack(padded, packed)
    y, u, v = layout.unpack(packed)
    np.testing.assert_array_equal(y, padded[0][:, :7])
    assert (u == 1).all() and (v == 2).all() and (packed[59:] == 0).all()
    with pytest.raises(ValueError, match="has 3 planes"):
        layout.pack(padded[:2], packed)
    with pytest.raises(ValueError, match="plane 1"):
        layout.pack([padded[0], np.zeros((2, 4), np.uint8), padded[2]], packed)
    with pytest.raises(ValueError, match="must be one of"):
        FrameLayout("yuv444p", 4, 4)  # type: ignore[arg-type]


def keep_window(layout: FrameLayout, frame: npt.NDArray[np.uint8], rows: tuple[int, int],
                columns: tuple[int, int], seed: int) -> npt.NDArray[np.uint8]:
    """``frame``'s bytes inside the window, random bytes everywhere else."""
    out = random_frame(layout, seed)
    for w in layout.windows(rows, columns):
        for r in range(w.rows):
            start = w.offset + r * w.pitch
            out[start:start + w.width] = frame[start:start + w.width]
    return out


SHAPES = [((97, 131), (64, 48)), ((23, 37), (60, 70)), ((120, 80), (80, 120)),
          ((41, 160), (32, 48)), ((161, 40), (48, 32)), ((45, 80), (7, 7))]


@pytest.mark.parametrize("fmt", PIXEL_FORMATS)
@pytest.mark.parametrize("mode", MODES)
def test_pixels_outside_the_source_window_never_reach_the_output(fmt: str, mode: str) -> None:
    """The GPU path uploads only ``source_window`` of a host frame (runtime/_upload.py): every
    other byte may be anything. Both ends are tight: one column or row fewer on the low side
    changes the output."""
    for k, ((h, w), size) in enumerate(SHAPES):
        layout = FrameLayout(fmt, h, w)  # type: ignore[arg-type]
        frame = random_frame(layout, 40 + k)
        color = COLORS[k % 4] if layout.is_yuv else None
        spec = Preprocess(size, mode, (120.0, 110.0, 100.0), (60.0, 50.0, 40.0))  # type: ignore[arg-type]
        rows, columns = spec.source_window(h, w)
        want = preprocess_raw(spec, layout, frame, color)
        got = preprocess_raw(spec, layout, keep_window(layout, frame, rows, columns, 90 + k), color)
        np.testing.assert_array_equal(got, want)
        # Downscaling bilinear taps skip edge pixels in every mode; a crop skips much more.
        if mode == "shorter_crop" and w > 2 * h:
            assert columns[1] - columns[0] < 0.6 * w
        # Tight: leave out the first row (or column) of the window and the output changes.
        fewer_rows = ((rows[0] + 1, rows[1]), columns)
        fewer_columns = (rows, (columns[0] + 1, columns[1]))
        for fewer in (fewer_rows, fewer_columns):
            if fewer[0][0] < fewer[0][1] and fewer[1][0] < fewer[1][1]:
                cut = keep_window(layout, frame, *fewer, 90 + k)
                assert not np.array_equal(preprocess_raw(spec, layout, cut, color), want), fewer


def test_a_shorter_crop_of_1080p_reads_the_centre_square() -> None:
    spec = Preprocess((224, 224), "shorter_crop", (0, 0, 0), (1, 1, 1))
    (y0, y1), (x0, x1) = spec.source_window(1080, 1920)
    # The centre 1080x1080 square; downscaling by 4.8 skips a pixel at each edge.
    assert (y0, y1, x0, x1) == (1, 1079, 421, 1499)
    rows = (y0, y1)
    layout = FrameLayout("nv12", 1080, 1920)
    windows = layout.windows(rows, (x0, x1))
    assert [(w.rows, w.pitch) for w in windows] == [(1078, 1920), (540, 1920)]
    assert sum(w.nbytes for w in windows) < 0.6 * layout.nbytes
    with pytest.raises(ValueError, match="not a window"):
        layout.windows((0, 1081), (0, 10))


def test_decoder_formats_map_to_raw_formats() -> None:
    assert pixel_format_for("yuvj420p") == "yuv420p"
    assert pixel_format_for("nv12") == "nv12"
    assert pixel_format_for("bgra") is None


def test_colour_metadata_picks_matrix_and_range() -> None:
    assert YuvColor.from_metadata(1, 1, height=480) == YuvColor("bt709", "limited")
    assert YuvColor.from_metadata(6, 2, height=1080) == YuvColor("bt601", "full")
    assert YuvColor.from_metadata(2, 0, height=1080) == YuvColor("bt709", "limited")
    assert YuvColor.from_metadata(2, 0, height=432) == YuvColor("bt601", "limited")
    assert YuvColor.from_metadata(None, None, height=480, decoder_format="yuvj420p") == \
        YuvColor("bt601", "full")
    assert YuvColor.from_metadata("ITU709", "JPEG", height=100) == YuvColor("bt709", "full")
    with pytest.raises(ValueError):
        YuvColor("bt2020", "limited")  # type: ignore[arg-type]


@pytest.mark.parametrize("color", COLORS, ids=lambda c: f"{c.matrix}-{c.range}")
def test_yuv_conversion_hits_the_standard_points(color: YuvColor) -> None:
    black, white = (16, 235) if color.range == "limited" else (0, 255)
    layout = FrameLayout("yuv420p", 2, 2)
    frame = np.array([black, white, black, white, 128, 128], np.uint8)
    rgb = yuv_to_rgb(layout, frame, color)
    np.testing.assert_allclose(rgb[0, 0], [0, 0, 0], atol=1e-4)
    np.testing.assert_allclose(rgb[0, 1], [255, 255, 255], atol=1e-3)
    # Pure red in this matrix round-trips to (255, 0, 0).
    kr, kb = (0.299, 0.114) if color.matrix == "bt601" else (0.2126, 0.0722)
    y, cb, cr = kr, -kr / (2 * (1 - kb)), 0.5
    if color.range == "limited":
        code = [16 + 219 * y, 128 + 224 * cb, 128 + 224 * cr]
    else:
        code = [255 * y, 128 + 255 * cb, 128 + 255 * cr]
    coeff = color.coefficients()
    yv = (np.float32(code[0]) - coeff.y_offset) * coeff.y_scale
    red = [yv + coeff.r_v * np.float32(code[2] - 128),
           (yv - coeff.g_u * np.float32(code[1] - 128)) - coeff.g_v * np.float32(code[2] - 128),
           yv + coeff.b_u * np.float32(code[1] - 128)]
    np.testing.assert_allclose(red, [255, 0, 0], atol=0.05)


def test_nv12_and_yuv420p_oracles_agree() -> None:
    rng = np.random.default_rng(3)
    h, w = 9, 13
    i420 = FrameLayout("yuv420p", h, w)
    nv12 = FrameLayout("nv12", h, w)
    a = rng.integers(0, 256, i420.nbytes, dtype=np.uint8)
    y, u, v = i420.unpack(a)
    b = np.concatenate([y.ravel(), np.stack([u, v], axis=-1).ravel()])
    np.testing.assert_array_equal(yuv_to_rgb(i420, a, COLORS[1]), yuv_to_rgb(nv12, b, COLORS[1]))


@pytest.mark.parametrize("mode", MODES)
def test_the_oracle_is_the_reference_for_rgb_and_bgr(mode: str) -> None:
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (31, 45, 3), dtype=np.uint8)
    spec = Preprocess((24, 24), mode, mean=(1, 2, 3), std=(4, 5, 6), color="bgr")  # type: ignore[arg-type]
    want = preprocess_frame(spec, rgb)
    np.testing.assert_array_equal(preprocess_raw(spec, FrameLayout("rgb24", 31, 45), rgb.ravel()),
                                  want)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(preprocess_raw(spec, FrameLayout("bgr24", 31, 45), bgr.ravel()),
                                  want)


def test_yuv_oracle_resamples_converted_rgb() -> None:
    # For a yuv frame the oracle is preprocess_frame's arithmetic on the converted float frame:
    # with an identity geometry it is exactly the normalised conversion, rounded to whole pixel
    # values (halves up) as every resampled pixel is.
    layout = FrameLayout("nv12", 8, 10)
    frame = random_frame(layout, 5)
    spec = Preprocess((8, 10), "stretch", mean=(10, 20, 30), std=(2, 3, 4), layout="nhwc")
    rgb = yuv_to_rgb(layout, frame, COLORS[0])
    assert not np.array_equal(rgb, np.floor(rgb)), "the conversion must give fractions to round"
    want = (np.floor(rgb + np.float32(0.5)) - np.float32([10, 20, 30])) / np.float32([2, 3, 4])
    np.testing.assert_array_equal(preprocess_raw(spec, layout, frame, COLORS[0]), want)
    with pytest.raises(ValueError, match="needs its YuvColor"):
        preprocess_raw(spec, layout, frame)


def test_the_kernel_source_is_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["xinfer_stream"]
    assert any(Path("preprocess/_kernel.cu").match(p) for p in patterns), (
        "pyproject [tool.setuptools.package-data] must ship preprocess/_kernel.cu")
    assert "preprocess_nv12" in kernel_source()


def test_the_kernel_compiles_with_nvrtc(tmp_path: Path) -> None:
    try:
        xcuda.nvrtc_version()
    except CudaError as exc:
        pytest.skip(f"NVRTC is not installed: {exc}")
    from xinfer_stream.cuda._kernel import compile_cached
    image = compile_cached(kernel_source(), name="preprocess.cu",
                           options=("--fmad=false", "--std=c++17"), capability=(9, 0),
                           cache_dir=tmp_path)
    assert len(image) > 1000


# -- the kernel (GPU) ------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("fmt", PIXEL_FORMATS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("out_layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("out_color", ["rgb", "bgr"])
def test_kernel_matches_oracle_on_random_frames(device: Device, fmt: str, mode: str,
                                                out_layout: str, out_color: str) -> None:
    seed = hash((fmt, mode, out_layout, out_color)) & 0xFFFF
    rng = np.random.default_rng(seed)
    for (h, w), size in [((97, 131), (64, 48)), ((23, 37), (60, 70)), ((120, 80), (80, 120))]:
        layout = FrameLayout(fmt, h, w)  # type: ignore[arg-type]
        frames = [random_frame(layout, seed + i) for i in range(2)]
        color = COLORS[int(rng.integers(0, 4))] if layout.is_yuv else None
        mean = tuple(float(v) for v in rng.uniform(0, 255, 3))
        std = tuple(float(v) for v in rng.uniform(0.5, 80, 3))
        for dtype in ("float32", "float16", "uint8"):
            spec = Preprocess(size, mode, mean, std, out_color, out_layout, dtype)  # type: ignore[arg-type]
            got = run_kernel(device, spec, layout, frames, color)
            want = oracle(spec, layout, frames, color)
            err = max_error(got, want)
            # Same operations in the same order: exact for float32/uint8; float16 is rounded
            # from the same float32 value, so exact too.
            assert err <= 1e-3, f"{fmt} {h}x{w} -> {spec}: max error {err}"
            assert err == 0.0, f"{fmt} {h}x{w} -> {spec}: not bit-exact ({err})"


@pytest.mark.gpu
def test_letterbox_padding_is_exactly_zero_and_placed_exactly(device: Device) -> None:
    layout = FrameLayout("nv12", 1080, 1920)
    frame = random_frame(layout, 6)
    spec = Preprocess((640, 640), "letterbox", (123.7, 116.3, 103.5), (58.4, 57.1, 57.4))
    got = run_kernel(device, spec, layout, [frame], COLORS[1])[0]
    g = spec.geometry(1080, 1920)
    assert (g.resized_h, g.resized_w, g.offset_y, g.offset_x) == (360, 640, 140, 0)
    assert (got[:, :140, :] == 0).all() and (got[:, 500:, :] == 0).all()
    assert (got[:, 140:500, :] != 0).mean() > 0.99
    assert max_error(got[None], oracle(spec, layout, [frame], COLORS[1])) == 0.0


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_kernel_matches_oracle_at_1080p(device: Device, mode: str) -> None:
    for fmt in PIXEL_FORMATS:
        layout = FrameLayout(fmt, 1080, 1920)  # type: ignore[arg-type]
        frame = random_frame(layout, 7)
        spec = Preprocess((224, 224), mode, (123.675, 116.28, 103.53),  # type: ignore[arg-type]
                          (58.395, 57.12, 57.375))
        color = COLORS[1] if layout.is_yuv else None
        assert max_error(run_kernel(device, spec, layout, [frame], color),
                         oracle(spec, layout, [frame], color)) <= 1e-3


@pytest.mark.gpu
def test_batch_entries_and_destination_index(device: Device) -> None:
    layout = FrameLayout("yuv420p", 48, 64)
    frames = [random_frame(layout, 10 + i) for i in range(4)]
    spec = Preprocess((32, 32), "shorter_crop", (0, 0, 0), (1, 1, 1), dtype="float16")
    kernel = PreprocessKernel(device, spec)
    with device.device_pool(4 * layout.nbytes, 1) as pp, device.device_pool(
            kernel.output_nbytes(5), 1) as op, device.create_stream() as stream, \
            pp.acquire() as planes, op.acquire() as out:
        planes.write(np.concatenate(frames))
        out.fill(0, stream=stream)
        kernel.enqueue(planes, layout, out, stream=stream, color=COLORS[0], batch=2,
                       source_offset=2 * layout.nbytes, destination_index=3)
        with pytest.raises(ValueError, match="do not fit"):
            kernel.enqueue(planes, layout, out, stream=stream, color=COLORS[0], batch=4,
                           destination_index=2)
        with pytest.raises(ValueError, match="needs color"):
            kernel.enqueue(planes, layout, out, stream=stream)
        stream.synchronize()
        got = out.read(np.float16, spec.input_shape(5))
    assert (got[:3] == 0).all()
    assert max_error(got[3:], oracle(spec, layout, frames[2:], COLORS[0])) == 0.0


def _decode_real_frames(name: str, count: int = 3) -> list[tuple[object, ...]]:
    """(frame format, layout, packed, color) for a few frames of a real clip, in its native
    format and converted by PyAV to each other raw format the kernel reads."""
    av = pytest.importorskip("av")
    path = shared(f"video/{name}")
    out: list[tuple[object, ...]] = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= count:
                break
            native = pixel_format_for(frame.format.name)
            color = YuvColor.from_metadata(frame.colorspace, frame.color_range,
                                           height=frame.height, decoder_format=frame.format.name)
            for fmt in PIXEL_FORMATS:
                source = frame if fmt == native else frame.reformat(format=fmt)
                layout = FrameLayout(fmt, frame.height, frame.width)
                planes = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)
                          for p in source.planes]
                packed = np.empty(layout.nbytes, np.uint8)
                layout.pack(planes, packed)
                out.append((fmt, layout, packed, color))
    assert out, f"no frames decoded from {name}"
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("clip", CLIPS)
def test_kernel_matches_oracle_on_real_frames(device: Device, clip: str) -> None:
    frames = _decode_real_frames(clip)
    for mode in MODES:
        for out_layout in ("nchw", "nhwc"):
            spec = Preprocess((224, 224), mode, (123.675, 116.28, 103.53),  # type: ignore[arg-type]
                              (58.395, 57.12, 57.375), "rgb", out_layout)  # type: ignore[arg-type]
            for fmt, layout, packed, color in frames:
                assert isinstance(layout, FrameLayout) and isinstance(color, YuvColor)
                c = color if layout.is_yuv else None
                got = run_kernel(device, spec, layout, [packed], c)  # type: ignore[list-item]
                err = max_error(got, oracle(spec, layout, [packed], c))  # type: ignore[list-item]
                assert err <= 1e-3, f"{clip} {fmt} {mode} {out_layout}: max error {err}"
