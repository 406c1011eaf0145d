"""``run --detect``: rows of boxes, and the pictures and lines ``--save``, ``--save-frames`` and
``--json`` write, on a real clip through a synthetic detector whose one box is known exactly;
their atomicity, and bad input as one line naming it."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import onnx
import pytest
from PIL import Image

import xinfer_stream as xs
from xinfer_stream.cli import build_parser, main
from xinfer_stream.cli._preprocess import preprocess_from_args
from xinfer_stream.video import VideoWriter, annotate

from .conftest import shared
from .test_cli import one_line_error, tiny_classifier
from .test_detect import constant_detector

CLIP = "video/walk.mkv"   # 640x480, 30 fps, 89 frames
# The one box, in source pixels: a 64x64 letterbox of 640x480 has scale 0.1 and a centred
# offset of 8 rows; input box (16, 24)-(48, 40) maps to (160, 160)-(480, 320).
BOX = (160, 160, 480, 320)
LETTERBOX = ["--resize", "letterbox", "--std", "255", "255", "255", "--pad-value", "114"]


def detector(tmp_path: Path) -> Path:
    """A yolov8-format detector that finds one car at BOX in every frame."""
    out = np.zeros((1, 4 + 2, 84), np.float32)
    out[0, :4, 7] = [32, 32, 32, 16]          # cx, cy, w, h in the 64x64 input
    out[0, 5, 7] = 0.8                        # class 1
    return constant_detector(tmp_path / "det.onnx", out, (64, 64),
                             {"names": "{0: 'person', 1: 'car'}"})


def run(tmp_path: Path, *extra: str, model: Path | None = None) -> int:
    model = model if model is not None else detector(tmp_path)
    return main(["run", str(model), str(shared(CLIP)), "--detect", "yolov8", *LETTERBOX, *extra])


def decode(path: Path) -> tuple[list[npt.NDArray[np.uint8]], Fraction]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        rate = s.average_rate
        assert rate is not None
        return [f.to_ndarray(format="rgb24") for f in c.decode(s)], Fraction(rate)


def test_detect_prints_each_seconds_boxes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(tmp_path)
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("frame ")]
    assert len(rows) == 3                     # one a second of a 2.97 s clip
    assert all(row.endswith("1 object: car 0.80 [160,160,480,320]") for row in rows), rows
    assert "89 frames" in out


def test_agnostic_nms_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A person and a car box on the same pixels: two objects a frame, one across classes.
    out = np.zeros((1, 4 + 2, 84), np.float32)
    out[0, :4, 7] = out[0, :4, 9] = [32, 32, 32, 16]
    out[0, 4, 7], out[0, 5, 9] = 0.9, 0.8
    model = constant_detector(tmp_path / "two.onnx", out, (64, 64), {"names": "{0: 'person', 1: 'car'}"})
    for extra, want in (((), "2 objects: person 0.90 [160,160,480,320]  car 0.80 [160,160,480,320]"),
                        (("--agnostic-nms",), "1 object: person 0.90 [160,160,480,320]")):
        assert run(tmp_path, "--print-every", "30", *extra, model=model) == 0
        rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("frame ")]
        assert rows and all(want in row for row in rows), (extra, rows)


def test_a_family_without_a_preprocess_gets_its_documented_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A YOLOX-shaped model (64x64: 64 + 16 + 4 grid cells), no sidecar, no flags: --detect yolox
    # gives it YOLOX's input and says so. One box at cell 0 of stride 8: centre (4, 4), 8x8 ->
    # (0, 0)-(8, 8) of the input; top-left letterbox of 640x480 at scale 0.1 -> (0, 0)-(80, 80).
    out = np.zeros((1, 84, 5 + 2), np.float32)
    out[0, 0, :7] = [0.5, 0.5, 0, 0, 0.9, 0.0, 0.9]
    model = constant_detector(tmp_path / "yolox.onnx", out, (64, 64))
    code = main(["run", str(model), str(shared(CLIP)), "--detect", "yolox", "--print-every", "60"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "records no Preprocess; --detect yolox gives it YOLOX's preproc" in captured.err
    rows = [line for line in captured.out.splitlines() if line.startswith("frame ")]
    assert rows and all(row.endswith("1 object: 1 0.81 [0,0,80,80]") for row in rows), rows
    # A format that names no family still needs the preprocessing described.
    code = main(["run", str(model), str(shared(CLIP)), "--detect", "auto", "--quiet"])
    one_line_error(capsys, code, "no Preprocess for", "--resize")
    # A dynamic input size cannot be guessed.
    dynamic = onnx.load(str(model))
    for i, name in ((2, "height"), (3, "width")):
        dynamic.graph.input[0].type.tensor_type.shape.dim[i].dim_param = name
    onnx.save(dynamic, tmp_path / "dynamic.onnx")
    code = main(["run", str(tmp_path / "dynamic.onnx"), str(shared(CLIP)), "--detect", "yolox"])
    one_line_error(capsys, code, "dynamic input size; pass --size H W")


def test_save_json_and_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video, lines, shots = tmp_path / "annotated.mp4", tmp_path / "r.jsonl", tmp_path / "shots"
    code = run(tmp_path, "--quiet", "--save", str(video), "--json", str(lines),
               "--save-frames", str(shots))
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"saved 89 annotated frames to {str(video)!r}" in out

    # The video: every frame of the source, at its rate, H.264, the box drawn on it.
    drawn, rate = decode(video)
    source, source_rate = decode(shared(CLIP))
    assert len(drawn) == len(source) == 89 and rate == source_rate == 30
    with av.open(str(video)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    x1, y1, x2, y2 = BOX
    for i in (0, 44, 88):
        diff = np.abs(drawn[i].astype(int) - source[i].astype(int)).mean(axis=2)
        assert diff[y1:y1 + 2, x1 + 40:x2 - 40].mean() > 40      # the top edge
        assert diff[y2 - 2:y2, x1 + 40:x2 - 40].mean() > 40      # the bottom edge
        assert diff[y1 + 40:y2 - 40, x1 + 20:x1 + 60].mean() < 12  # inside: only compression
        assert diff[400:470, 20:120].mean() < 12                   # far away: the same

    # One JSON line a frame.
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(89))
    assert records[30]["pts"] == pytest.approx(1.0, abs=1e-3)
    assert records[0]["source"] == str(shared(CLIP)) and records[0]["camera"] is None
    assert records[5]["detections"] == [
        {"label": "car", "class_id": 1, "score": pytest.approx(0.8, abs=1e-4), "xyxy": list(BOX)}]

    # About one JPEG a second, annotated like the video's frame.
    names = sorted(p.name for p in shots.iterdir())
    assert names == ["walk_000000.jpg", "walk_000030.jpg", "walk_000060.jpg"]
    jpeg = np.asarray(Image.open(shots / "walk_000030.jpg").convert("RGB"))
    assert jpeg.shape == (480, 640, 3)
    assert np.abs(jpeg.astype(int) - drawn[30].astype(int))[y1:y1 + 2, x1 + 40:x2 - 40].mean() < 20
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_save_every_sets_the_jpeg_interval(tmp_path: Path) -> None:
    shots = tmp_path / "shots"
    assert run(tmp_path, "--quiet", "--save-frames", str(shots), "--save-every", "40") == 0
    assert sorted(p.name for p in shots.iterdir()) == [
        "walk_000000.jpg", "walk_000040.jpg", "walk_000080.jpg"]


def test_classifier_video_shows_the_top_class(tmp_path: Path) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    video = tmp_path / "top.mkv"
    code = main(["run", str(model), str(shared(CLIP)), "--size", "8", "8", "--top", "1",
                 "--quiet", "--save", str(video)])
    assert code == 0
    drawn, _ = decode(video)
    source, _ = decode(shared(CLIP))
    assert len(drawn) == 89
    corner = np.abs(drawn[10].astype(int) - source[10].astype(int))[:12, :40].mean()
    assert corner > 40                         # the label's box, top-left


class Failing(xs.FramePostprocess):
    """A real detect() postprocess that breaks at frame ``at``."""

    def __init__(self, inner: Any, at: int) -> None:
        self.inner, self.at, self.calls = inner, at, 0

    def __call__(self, outputs: Any, context: Any = None) -> object:
        self.calls += 1
        if self.calls > self.at:
            raise RuntimeError("postprocess broke on purpose")
        return self.inner(outputs, context)


@pytest.mark.parametrize("previous", [True, False])
def test_a_failing_run_leaves_the_previous_files_or_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        previous: bool) -> None:
    real = xs.detect
    monkeypatch.setattr(xs, "detect", lambda *a, **k: Failing(real(*a, **k), at=40))
    video, lines = tmp_path / "annotated.mp4", tmp_path / "r.jsonl"
    if previous:
        video.write_bytes(b"a good video from yesterday")
        lines.write_text('{"frame": 0}\n')
    code = run(tmp_path, "--quiet", "--save", str(video), "--json", str(lines))
    err = capsys.readouterr().err
    assert code != 0 and "broke on purpose" in err, err
    if previous:
        assert video.read_bytes() == b"a good video from yesterday"
        assert lines.read_text() == '{"frame": 0}\n'
    else:
        assert not video.exists() and not lines.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["det.onnx"] + (["annotated.mp4", "r.jsonl"] if previous else []))


def test_video_writer_abort_and_empty_close_keep_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with VideoWriter(path, fps=25) as w:
            w.write(np.zeros((48, 64, 3), np.uint8))
            raise RuntimeError("stop")
    assert path.read_bytes() == b"previous"
    w = VideoWriter(path, fps=25)
    with pytest.raises(xs.InvalidVideoError, match="no frame"):
        w.close()
    w.close()                                  # twice is fine
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_annotate_returns_a_new_frame() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    det = xs.Detections(np.array([[10, 20, 110, 80]], np.float32), np.array([0.9], np.float32),
                        np.array([3], np.int64), ("dog",), (100, 200))
    drawn = annotate(frame, det)
    assert not frame.any() and drawn.shape == frame.shape and drawn.dtype == np.uint8
    assert drawn[50, 10:12].any() and drawn[50, 108:110].any() and not drawn[50, 40:80].any()
    assert not annotate(frame, None).any()


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--save", "--json"])
def test_an_output_in_a_missing_folder_fails_before_the_model_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str) -> None:
    target = tmp_path / "no" / "such" / ("out.mp4" if flag == "--save" else "r.jsonl")
    # The model does not exist either: the path is checked first.
    code = main(["run", str(tmp_path / "missing.onnx"), str(shared(CLIP)), "--detect", "auto",
                 flag, str(target)])
    one_line_error(capsys, code, flag, str(target), "does not exist")
    assert not (tmp_path / "no").exists()


def test_save_frames_in_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "no" / "shots"
    code = main(["run", str(tmp_path / "missing.onnx"), str(shared(CLIP)), "--detect", "auto",
                 "--save-frames", str(target)])
    one_line_error(capsys, code, "--save-frames", str(target))


def test_an_output_under_a_file_or_in_an_unwritable_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    code = main(["run", str(tmp_path / "missing.onnx"), str(shared(CLIP)), "--detect", "auto",
                 "--save", str(notes / "out.mp4")])
    one_line_error(capsys, code, "--save", "not a folder")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):             # root writes anywhere; /proc refuses even root
        locked = Path("/proc")
    code = main(["run", str(tmp_path / "missing.onnx"), str(shared(CLIP)), "--detect", "auto",
                 "--save", str(locked / "out.mp4")])
    one_line_error(capsys, code, "--save", str(locked / "out.mp4"), "cannot write")


def test_save_needs_a_video_name_and_something_to_draw(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(tmp_path / "missing.onnx")
    code = main(["run", model, str(shared(CLIP)), "--detect", "auto", "--save",
                 str(tmp_path / "out.avi")])
    one_line_error(capsys, code, "--save", "out.avi", ".mp4")
    code = main(["run", model, str(shared(CLIP)), "--save", str(tmp_path / "out.mp4")])
    one_line_error(capsys, code, "--detect", "--top")


@pytest.mark.parametrize("flag,value", [("--conf", "1.5"), ("--iou", "-0.1")])
def test_thresholds_outside_0_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str,
                                value: str) -> None:
    code = run(tmp_path, flag, value)
    one_line_error(capsys, code, flag, value, "[0, 1]")


def test_a_labels_file_of_the_wrong_length(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    code = run(tmp_path, "--quiet", "--labels", str(labels))
    one_line_error(capsys, code, str(labels), "3 names", "2 classes")


def test_an_output_matching_no_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = detector(tmp_path)
    code = main(["run", str(model), str(shared(CLIP)), "--detect", "yolox", *LETTERBOX, "--quiet"])
    one_line_error(capsys, code, "yolox", "output0", "[1, 6, 84]")


def test_letterbox_flags_reach_the_preprocess_of_every_subcommand(tmp_path: Path) -> None:
    model = detector(tmp_path)
    for argv in (["run", str(model), "clip.mp4"], ["quantize", str(model), "--calib", "c.mp4", "-o", "q.onnx"],
                 ["compare", str(model), str(model), "clip.mp4"]):
        args = build_parser().parse_args([*argv, "--resize", "letterbox", "--pad-value", "114",
                                          "--letterbox-align", "top-left"])
        pre = preprocess_from_args(args, model)
        assert pre is not None and pre.pad_value == (114.0,) * 3
        assert pre.letterbox_align == "top-left" and pre.resize == "letterbox"
    args = build_parser().parse_args(["run", str(model), "clip.mp4", "--pad-value", "114"])
    with pytest.raises(ValueError, match="--pad-value is for a letterbox"):
        preprocess_from_args(args, model)


@pytest.mark.slow
def test_ctrl_c_leaves_the_previous_video_and_no_temporary(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from .conftest import REPO

    model = detector(tmp_path)
    video, lines = tmp_path / "annotated.mp4", tmp_path / "r.jsonl"
    video.write_bytes(b"a good video from yesterday")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "xinfer_stream", "run", str(model),
         str(shared("video/box.mp4")), "--detect", "yolov8", *LETTERBOX, "--print-every", "1",
         "--save", str(video), "--json", str(lines)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        for _ in range(20):                    # well into the stream, files being written
            assert proc.stdout.readline().startswith("frame ")
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "(interrupted)" in out and "saved" not in out
    assert video.read_bytes() == b"a good video from yesterday"
    assert not lines.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.mp4", "det.onnx"]


@pytest.mark.slow
def test_a_real_detector_draws_the_table_it_finds(tmp_path: Path) -> None:
    """PP-PicoDet (gfl) on a short video of a rendered page: the JSON lines hold the table where
    the page has it, and the saved video has every frame."""
    from xinfer_stream.video._write import write_video

    from .test_detect_picodet import MODEL, TABLE, iou, page

    clip = tmp_path / "page.mp4"
    write_video(clip, [page()] * 4, fps=5)
    video, lines = tmp_path / "page.annotated.mp4", tmp_path / "page.jsonl"
    mean = [f"{v * 255:.3f}" for v in (0.485, 0.456, 0.406)]
    std = [f"{v * 255:.3f}" for v in (0.229, 0.224, 0.225)]
    code = main(["run", str(MODEL), str(clip), "--detect", "gfl", "--conf", "0.4", "--iou", "0.5",
                 "--size", "800", "608", "--mean", *mean, "--std", *std, "--quiet",
                 "--save", str(video), "--json", str(lines)])
    assert code == 0
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        best = r["detections"][0]
        assert best["label"] == "table" and iou(best["xyxy"], TABLE) > 0.9, best
    drawn, rate = decode(video)
    assert len(drawn) == 4 and rate == 5
    bx1, by1, bx2, _ = (int(v) for v in records[0]["detections"][0]["xyxy"])
    source, _ = decode(clip)
    top_edge = np.abs(drawn[0].astype(int) - source[0].astype(int))[by1:by1 + 3, bx1 + 300:bx2 - 300]
    assert top_edge.mean() > 40
