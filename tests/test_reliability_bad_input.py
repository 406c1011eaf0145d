"""The bad-input matrix: every input a user can get wrong, through the CLI and the Python API.

Each case asserts the error type, a message that names the input and says what to do, and (CLI)
a non-zero exit with one line on stderr and no traceback. Inputs are made in tmp_path (videos
written with PyAV, models with onnx.helper, engines with the TensorRT test double) except the
damaged AVI, which is the real one from ../shared/data.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import xinfer_stream as xs
from xinfer_stream.cli import main
from xinfer_stream.engines import _load
from xinfer_stream.engines._builder import EngineBuilder
from xinfer_stream.engines._load import load_engine
from xinfer_stream.engines._metadata import metadata_path_for
from xinfer_stream.video._write import write_audio_only, write_video

from .conftest import shared
from .fake_tensorrt import FakeTensorRT
from .test_cli import not_an_image_model, tiny_classifier
from .trt_testing import h100, tiny_model

PRE = xs.Preprocess(size=(8, 8))
N = 30


# -- inputs -----------------------------------------------------------------------------------
def levels(n: int = N, w: int = 64, h: int = 48) -> list[np.ndarray]:
    return [np.full((h, w, 3), 8 * (i % 30) + 8, np.uint8) for i in range(n)]


def truncated_faststart_mp4(path: Path) -> Path:
    """An mp4 with its index first, cut at two thirds: the first frames decode, then it stops."""
    write_video(path, levels(), container_options={"movflags": "faststart"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def truncated_mp4_index_last(path: Path) -> Path:
    """An ordinary mp4 (index at the end) cut in half: its index is gone, so it cannot open."""
    write_video(path, levels())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def resolution_change_ts(path: Path, sizes: tuple[tuple[int, int], ...] = ((64, 48), (96, 64)),
                         per_size: int = 10) -> Path:
    """One MPEG-TS H.264 stream whose frames change size mid-stream (a second SPS)."""
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = sizes[0][0], sizes[0][1], "yuv420p"
        pts = 0
        for w, h in sizes:
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width, encoder.height, encoder.pix_fmt = w, h, "yuv420p"
            encoder.time_base = Fraction(1, 30)
            encoder.options = {"preset": "ultrafast"}
            frames = [av.VideoFrame.from_ndarray(np.full((h, w, 3), 20 * i, np.uint8), format="rgb24")
                      for i in range(per_size)]
            for i, frame in enumerate([*frames, None]):
                if frame is not None:
                    frame.pts = i
                for packet in encoder.encode(frame):
                    packet.stream = stream
                    packet.pts = packet.dts = pts
                    packet.time_base = Fraction(1, 30)
                    pts += 1
                    out.mux(packet)
    return path


def model_failing_the_checker(path: Path) -> Path:
    """A graph whose node reads a tensor that nothing produces."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["nowhere"], ["y"])], "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """The tiny 8x8 classifier with its Preprocess sidecar (so the CLI needs no flags)."""
    path = tiny_classifier(tmp_path / "tiny.onnx")
    PRE.save(tmp_path / "tiny.preprocess.json")
    return path


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "levels.mp4"
    write_video(path, levels(), gop=10)
    return path


# -- the two ways in --------------------------------------------------------------------------
@dataclass
class CliRun:
    code: int
    out: str
    err: str

    @property
    def frames(self) -> int:
        return sum(line.startswith("frame ") for line in self.out.splitlines())


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> CliRun:
    code = main(list(argv))
    captured = capsys.readouterr()
    return CliRun(code, captured.out, captured.err)


def assert_one_line_error(run: CliRun, code: int, *needles: str) -> None:
    """Non-zero exit ``code``, one line on stderr, no traceback, every needle in it."""
    err = run.err.strip()
    assert run.code == code, (run.code, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("xinfer-stream: "), err
    for needle in needles:
        assert needle in err, (needle, err)


@dataclass
class ApiRun:
    frames: list[xs.Result]
    error: BaseException | None


def api(model: Path | object, source: object, pre: xs.Preprocess | None = PRE) -> ApiRun:
    """Load ``model`` and stream ``source``: the results delivered, then the error (if any)."""
    frames: list[xs.Result] = []

    async def run() -> None:
        async with xs.load(model, preprocess=pre) as engine:  # type: ignore[arg-type]
            async with engine.stream(source) as results:
                async for r in results:
                    frames.append(r)

    try:
        asyncio.run(run())
    except xs.XInferError as exc:
        return ApiRun(frames, exc)
    return ApiRun(frames, None)


# -- video inputs: one table, both ways -------------------------------------------------------
@dataclass(frozen=True)
class VideoCase:
    make: str                      # name of the maker below
    error: type[BaseException]     # what the API raises
    exit_code: int                 # the CLI's exit (2: input error, 1: other failure)
    hints: tuple[str, ...]         # what the message must say (the input's name is checked too)
    frames_before: bool = False    # results arrive before the error


def _missing(tmp: Path) -> Path:
    return tmp / "missing.mp4"


def _empty_dir(tmp: Path) -> Path:
    folder = tmp / "holiday"
    folder.mkdir()
    (folder / "notes.txt").write_text("no video here")
    return folder


def _text_as_mp4(tmp: Path) -> Path:
    path = tmp / "notes.mp4"
    path.write_text("these are my notes, not a video\n" * 50)
    return path


def _audio_only(tmp: Path) -> Path:
    path = tmp / "tone.m4a"
    write_audio_only(path)
    return path


def _zero_length(tmp: Path) -> Path:
    path = tmp / "empty.mp4"
    path.touch()
    return path


def _truncated(tmp: Path) -> Path:
    return truncated_faststart_mp4(tmp / "cut.mp4")


def _truncated_index_last(tmp: Path) -> Path:
    return truncated_mp4_index_last(tmp / "halved.mp4")


MAKERS = {f.__name__: f for f in (_missing, _empty_dir, _text_as_mp4, _audio_only, _zero_length,
                                  _truncated, _truncated_index_last)}

VIDEO_CASES = {
    "missing file": VideoCase("_missing", xs.InvalidVideoError, 2, ("no such file", "check the path")),
    "directory without video": VideoCase("_empty_dir", xs.InvalidVideoError, 2,
                                         ("holds no file ending in", "pass the video files")),
    "text file renamed .mp4": VideoCase("_text_as_mp4", xs.InvalidVideoError, 2,
                                        ("not a video", "check it plays")),
    "audio-only file": VideoCase("_audio_only", xs.InvalidVideoError, 2,
                                 ("no video stream (found 1 audio)", "pass a file or URL that carries video")),
    "zero-length file": VideoCase("_zero_length", xs.InvalidVideoError, 2,
                                  ("empty (0 bytes)", "copy or record it again")),
    "truncated mp4 (index first)": VideoCase("_truncated", xs.VideoError, 1,
                                             ("truncated", "copy or download the file again"),
                                             frames_before=True),
    "truncated mp4 (index last)": VideoCase("_truncated_index_last", xs.InvalidVideoError, 2,
                                            ("truncated or damaged", "re-copy it")),
}


@pytest.mark.parametrize("case", VIDEO_CASES.values(), ids=VIDEO_CASES.keys())
def test_bad_video_through_the_api(case: VideoCase, model: Path, tmp_path: Path) -> None:
    source = MAKERS[case.make](tmp_path)
    run = api(model, source)
    assert type(run.error) is case.error, run.error
    message = str(run.error)
    assert repr(str(source)) in message, message      # names the input, quoted
    for hint in case.hints:
        assert hint in message, (hint, message)
    if case.frames_before:
        # Results for what decoded, in order, then the error.
        assert 5 < len(run.frames) < N
        assert [r.frame_index for r in run.frames] == list(range(len(run.frames)))
    else:
        assert run.frames == []
    if isinstance(run.error, xs.InvalidVideoError):
        assert isinstance(run.error, ValueError)


@pytest.mark.parametrize("case", VIDEO_CASES.values(), ids=VIDEO_CASES.keys())
def test_bad_video_through_the_cli(case: VideoCase, model: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    source = MAKERS[case.make](tmp_path)
    run = cli(capsys, "run", str(model), str(source), "--print-every", "1")
    assert_one_line_error(run, case.exit_code, str(source), *case.hints)
    if case.frames_before:
        assert 5 < run.frames < N
    else:
        assert run.frames == 0


def test_damaged_avi_streams_every_frame_ffmpeg_recovers(model: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Megamind_bugy.avi (packed B-frames, corrupted blocks): FFmpeg 7/8 conceals the damage
    without a decoder error, so all 270 frames arrive, in order, and the run succeeds."""
    clip = shared("video/Megamind_bugy.avi")
    run = api(model, clip)
    assert run.error is None
    assert [r.frame_index for r in run.frames] == list(range(270))
    out = cli(capsys, "run", str(model), str(clip), "--quiet")
    assert out.code == 0 and "Traceback" not in out.err
    assert out.out.startswith("270 frames")


def test_resolution_change_mid_stream_keeps_streaming(model: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The CPU path preprocesses each frame at its own size, so results continue across the
    change; each result is what the model gives for that frame at its new size."""
    path = resolution_change_ts(tmp_path / "resize.ts")
    run = api(model, path)
    assert run.error is None
    assert [r.frame_index for r in run.frames] == list(range(20))

    async def direct(images: list[np.ndarray]) -> list[xs.Result]:
        async with xs.load(model, preprocess=PRE) as engine:
            return [await engine.infer(image) for image in images]

    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert {d.shape for d in decoded} == {(48, 64, 3), (64, 96, 3)}
    expected = asyncio.run(direct(decoded))
    for got, want in zip(run.frames, expected, strict=True):
        np.testing.assert_allclose(got.outputs["logits"], want.outputs["logits"], rtol=1e-5, atol=1e-6)
    out = cli(capsys, "run", str(model), str(path), "--quiet")
    assert out.code == 0 and out.out.startswith("20 frames"), out


# -- models -----------------------------------------------------------------------------------
def test_onnx_model_failing_the_checker(tmp_path: Path, clip: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = model_failing_the_checker(tmp_path / "broken.onnx")
    PRE.save(tmp_path / "broken.preprocess.json")
    run = api(model, clip)
    assert type(run.error) is xs.InvalidModelError and isinstance(run.error, ValueError)
    message = str(run.error)
    assert repr(str(model)) in message and "is not a valid ONNX model" in message
    assert "re-export it" in message
    assert isinstance(run.error.__cause__, onnx.checker.ValidationError)
    assert_one_line_error(cli(capsys, "run", str(model), str(clip)), 2, "broken.onnx",
                          "not a valid ONNX model", "re-export it")


def test_a_file_that_is_not_onnx(tmp_path: Path, clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "weights.onnx"
    model.write_bytes(np.random.default_rng(0).bytes(4096))
    run = api(model, clip)
    assert type(run.error) is xs.InvalidModelError
    assert repr(str(model)) in str(run.error) and "is not a valid ONNX model" in str(run.error)
    assert "re-export it or check the file is complete" in str(run.error)
    assert_one_line_error(cli(capsys, "run", str(model), str(clip), "--size", "8", "8"), 2,
                          "weights.onnx", "re-export it or check the file is complete")


def test_model_whose_input_is_not_an_image(tmp_path: Path, clip: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = not_an_image_model(tmp_path / "vector.onnx")
    PRE.save(tmp_path / "vector.preprocess.json")
    run = api(model, clip)
    assert type(run.error) is xs.InvalidModelError
    assert "'vector.onnx'" in str(run.error) and "not an image tensor" in str(run.error)
    assert_one_line_error(cli(capsys, "run", str(model), str(clip)), 2, "vector.onnx",
                          "not an image tensor")


def test_model_file_missing(tmp_path: Path, clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = api(tmp_path / "nope.onnx", clip)
    assert type(run.error) is xs.InvalidModelError
    assert "nope.onnx" in str(run.error) and "check the path" in str(run.error)
    assert_one_line_error(cli(capsys, "run", str(tmp_path / "nope.onnx"), str(clip)), 2,
                          "nope.onnx", "check the path")


@pytest.mark.parametrize("pre, problem", [
    (xs.Preprocess(size=(16, 16)), "size (16, 16) but the model input is 8x8"),
    (xs.Preprocess(size=(8, 8), layout="nhwc"), "layout 'nhwc' but the model input is 'nchw'"),
    (xs.Preprocess(size=(8, 8), dtype="uint8"), "dtype 'uint8' but the model input is 'float32'"),
], ids=["size", "layout", "dtype"])
def test_preprocess_that_does_not_fit_the_model(pre: xs.Preprocess, problem: str, model: Path,
                                                clip: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = api(model, clip, pre=pre)
    assert type(run.error) is xs.InvalidModelError
    assert problem in str(run.error) and "'tiny.onnx'" in str(run.error)
    assert "Fix the Preprocess" in str(run.error)
    spec = pre.save(tmp_path / "wrong.json")
    assert_one_line_error(cli(capsys, "run", str(model), str(clip), "--preprocess", str(spec)), 2,
                          "tiny.onnx", problem, "Fix the Preprocess")


def test_preprocess_file_that_is_not_json(model: Path, clip: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "pre.json"
    spec.write_text('{"size": [8, 8], "resize": "squash"}')
    assert_one_line_error(cli(capsys, "run", str(model), str(clip), "--preprocess", str(spec)), 2,
                          "pre.json", "resize must be one of", "rewrite it")


def test_model_without_a_preprocess_says_what_to_do(tmp_path: Path, clip: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier(tmp_path / "bare.onnx")
    run = api(model, clip, pre=None)
    assert type(run.error) is xs.PreprocessNotFoundError
    assert isinstance(run.error, xs.EngineLoadError)
    assert "bare.onnx" in str(run.error) and "preprocess=xs.Preprocess(...)" in str(run.error)
    # The command line names its flags, not the library's argument.
    run_cli = cli(capsys, "run", str(model), str(clip))
    assert_one_line_error(run_cli, 1, "bare.onnx", "--preprocess", "--size H W", "--resize",
                          "bare.preprocess.json")
    assert "xs.Preprocess" not in run_cli.err


# -- TensorRT engines (through the test double standing in for the tensorrt module) ------------
@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTensorRT]:
    """``import tensorrt`` gives the double, and the GPU probe answers H100, so the CLI's and
    ``xs.load``'s own code paths reach TensorRT's loader on this machine without a GPU."""
    fake = FakeTensorRT("10.16.1.11")
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    monkeypatch.setattr(_load, "current_device", h100)
    yield fake


def built_engine(fake: FakeTensorRT, folder: Path, name: str = "m", *, batch: int = 4) -> Path:
    onnx_path = tiny_model(folder / f"{name}.onnx")
    engine = folder / f"{name}.engine"
    (EngineBuilder(tensorrt=fake.module, device_probe=h100).from_onnx(onnx_path)
     .with_max_batch_size(batch).build_and_save(engine))
    return engine


def engine_error(engine: Path, clip: Path, capsys: pytest.CaptureFixture[str], code: int,
                 *needles: str) -> xs.XInferError:
    """The engine is refused the same way by load_engine, xs.load and the CLI."""
    with pytest.raises(xs.XInferError) as direct:
        load_engine(engine)
    run = api(engine, clip, pre=xs.Preprocess(size=(16, 16)))
    assert type(run.error) is type(direct.value)
    for needle in needles:
        assert needle in str(run.error) and needle in str(direct.value), needle
    assert_one_line_error(cli(capsys, "run", str(engine), str(clip)), code, *needles)
    return direct.value


def test_engine_file_truncated(fake_trt: FakeTensorRT, tmp_path: Path, clip: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    engine = built_engine(fake_trt, tmp_path)
    engine.write_bytes(engine.read_bytes()[: 40])
    deserialized = len(fake_trt.called("Runtime.deserialize_cuda_engine"))
    error = engine_error(engine, clip, capsys, 2, "m.engine", "does not match its sidecar",
                         "replaced or truncated", "Rebuild it")
    assert type(error) is xs.InvalidModelError
    # Refused on the hash, before TensorRT saw the bytes.
    assert len(fake_trt.called("Runtime.deserialize_cuda_engine")) == deserialized


def test_engine_file_corrupted_without_sidecar(fake_trt: FakeTensorRT, tmp_path: Path, clip: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    engine = built_engine(fake_trt, tmp_path)
    metadata_path_for(engine).unlink()
    data = bytearray(engine.read_bytes())
    data[:8] = b"\xde\xad\xbe\xef" * 2      # the plan's magic tag, overwritten
    engine.write_bytes(bytes(data))
    error = engine_error(engine, clip, capsys, 2, "m.engine", "could not deserialize",
                         "truncated or built by another TensorRT version; rebuild it")
    assert type(error) is xs.InvalidModelError
    assert "magicTagRead == kMAGIC_TAG" in str(error)  # what TensorRT said is passed on


def test_engine_file_truncated_without_sidecar(fake_trt: FakeTensorRT, tmp_path: Path, clip: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing to check the bytes against: TensorRT itself must refuse them, and whether the
    # binding returns None (as documented) or raises (the double does, on a cut plan), the user
    # gets the same one-line InvalidModelError.
    engine = built_engine(fake_trt, tmp_path)
    metadata_path_for(engine).unlink()
    engine.write_bytes(engine.read_bytes()[:-100])
    error = engine_error(engine, clip, capsys, 2, "m.engine", "could not deserialize", "rebuild it")
    assert type(error) is xs.InvalidModelError


def test_metadata_that_belongs_to_another_engine(fake_trt: FakeTensorRT, tmp_path: Path, clip: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    engine = built_engine(fake_trt, tmp_path, "a", batch=4)
    other = built_engine(fake_trt, tmp_path, "b", batch=8)
    metadata_path_for(engine).write_bytes(metadata_path_for(other).read_bytes())
    error = engine_error(engine, clip, capsys, 2, "a.engine", "does not match its sidecar",
                         "'a.engine.json'", "Rebuild it")
    assert type(error) is xs.InvalidModelError


def test_metadata_that_is_malformed(fake_trt: FakeTensorRT, tmp_path: Path, clip: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    engine = built_engine(fake_trt, tmp_path)
    data = json.loads(metadata_path_for(engine).read_text())
    data["inputs"][0]["shape"] = "big"
    metadata_path_for(engine).write_text(json.dumps(data))
    error = engine_error(engine, clip, capsys, 2, "m.engine.json", "is malformed",
                         "rebuild the engine to rewrite it")
    assert type(error) is xs.InvalidModelError


def test_engine_missing(fake_trt: FakeTensorRT, tmp_path: Path, clip: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    error = engine_error(tmp_path / "gone.engine", clip, capsys, 2, "gone.engine",
                         "not found", "check the path")
    assert type(error) is xs.InvalidModelError


# -- the console script itself ----------------------------------------------------------------
@pytest.mark.parametrize("make", ["_text_as_mp4", "_truncated"])
def test_console_script_prints_one_line_and_no_traceback(make: str, model: Path, tmp_path: Path) -> None:
    source = MAKERS[make](tmp_path)
    proc = subprocess.run([sys.executable, "-m", "xinfer_stream", "run", str(model), str(source),
                           "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (1, 2)
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and source.name in err, err
