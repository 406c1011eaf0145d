"""The command line: subcommands on real assets, and bad input as one line and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from xinfer_stream import EmulatedInt8Warning, Preprocess
from xinfer_stream.cli import main

from .conftest import shared

EFFICIENTNET_FLAGS = ["--resize", "shorter_crop", "--mean", "127", "127", "127",
                      "--std", "128", "128", "128"]


def tiny_classifier(path: Path, *, channels: int = 3, size: int = 8, classes: int = 4) -> Path:
    """A real (tiny) ONNX classifier: global average pool then a fixed linear layer."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [channels, classes],
                           rng.standard_normal((channels, classes)).astype(np.float32).ravel().tolist())
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what every ONNX Runtime we meet reads (a newer onnx writes newer)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def not_an_image_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "vector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_run_streams_a_real_clip_with_top_k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    Preprocess(size=(8, 8)).save(tmp_path / "tiny.preprocess.json")
    code = main(["run", str(model), str(shared("video/walk.mkv")), "--top", "2"])
    out = capsys.readouterr().out
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("frame ")]
    assert len(lines) == 89 and lines[0].startswith("frame      0")
    assert "89 frames" in out and "latency p50" in out


def test_quantize_then_run_uses_the_saved_preprocess(tmp_path: Path, bundled_model: Path,
                                                     bundled_clip: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.int8.onnx"
    code = main(["quantize", str(bundled_model), "--calib", str(bundled_clip), "--frames", "8",
                 "-o", str(out), "--quiet", *EFFICIENTNET_FLAGS])
    assert code == 0, capsys.readouterr().err
    assert out.exists() and (tmp_path / "m.int8.preprocess.json").exists()
    saved = Preprocess.load(tmp_path / "m.int8.preprocess.json")
    assert saved.resize == "shorter_crop" and saved.mean == (127.0,) * 3
    # ONNX Runtime fuses too few layers of a TensorRT-placed Q/DQ model to pay, on any CPU: the
    # model runs as emulated float and the user is told (tests/test_cpu_int8.py)
    with pytest.warns(EmulatedInt8Warning, match="INT8 runs as emulated float"):
        code = main(["run", str(out), str(shared("video/walk.mkv")), "--quiet"])
    assert code == 0
    assert "89 frames" in capsys.readouterr().out


def test_missing_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    code = main(["run", str(model), str(tmp_path / "nope.mp4"), "--size", "8", "8"])
    one_line_error(capsys, code, "nope.mp4")


def test_file_that_is_not_a_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are my notes, not a video\n" * 50)
    code = main(["run", str(model), str(fake), "--size", "8", "8"])
    one_line_error(capsys, code, "notes.mp4")


def test_damaged_avi_decodes_what_it_can_then_reports(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # FFmpeg 8 conceals this file's damage (packed B-frames, broken blocks) without a decoder
    # error, so every frame is streamed; what is left of the damage, timestamps that go
    # backwards, is reported in one warning line naming the file.
    model = tiny_classifier(tmp_path / "tiny.onnx")
    clip = shared("video/Megamind_bugy.avi")
    code = main(["run", str(model), str(clip), "--size", "8", "8"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.count("frame ") == 270
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "Megamind_bugy.avi" in err and "timestamps went backwards" in err


def test_clean_clip_has_no_timestamp_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    assert main(["run", str(model), str(shared("video/car-detection.mp4")), "--size", "8", "8",
                 "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_model_whose_input_is_not_an_image(tmp_path: Path, bundled_clip: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = not_an_image_model(tmp_path / "vector.onnx")
    code = main(["run", str(model), str(bundled_clip), "--size", "8", "8"])
    one_line_error(capsys, code, "vector.onnx", "not an image tensor")


def test_missing_model(tmp_path: Path, bundled_clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(tmp_path / "nope.onnx"), str(bundled_clip), "--size", "8", "8"])
    one_line_error(capsys, code, "nope.onnx")


def test_no_traceback_from_the_console_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "xinfer_stream", "run", str(tmp_path / "x.onnx"),
                           str(tmp_path / "y.mp4")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("xinfer-stream:")


@pytest.mark.slow
def test_demo_runs_the_budget_search_and_streams_the_clip(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import json

    with pytest.warns(EmulatedInt8Warning):  # streaming the Q/DQ model on the CPU
        assert main(["demo", "--frames", "12", "--min-cosine", "0.999", "--out", str(tmp_path),
                     "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[4/4] streaming all of bottle-detection.mp4" in out
    assert "1189 frames" in out and "top-1 agreement" in out
    report = json.loads((tmp_path / "efficientnet_lite0.int8.json").read_text())
    assert report["budget"]["order"] == "input_first" and report["budget"]["metric"] == "cosine"
    assert report["budget"]["holdout_frames"] == 12 and report["statistics_reused"] in (True, False)
    assert (tmp_path / "efficientnet_lite0.int8.preprocess.json").is_file()
