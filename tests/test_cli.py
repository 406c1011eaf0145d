"""The command line: subcommands on real assets, and bad input as one line and a non-zero exit."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx

import pytest
from onnx import TensorProto, helper

from xinfer_stream import Preprocess
from xinfer_stream.cli import main

from .conftest import REPO, shared

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
    code = main(["run", str(model), str(shared("video/walk.mkv")), "--top", "2",
                 "--print-every", "1"])
    out = capsys.readouterr().out
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("frame ")]
    assert len(lines) == 89 and lines[0].startswith("frame      0")
    assert "89 frames" in out and "decoded to result ready: p50" in out


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
    # model runs as emulated float and the user is told, in one line (tests/test_cpu_int8.py).
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # Python's own filter, as a user's shell has it
        code = main(["run", str(out), str(shared("video/walk.mkv")), "--quiet"])
    assert code == 0
    captured = capsys.readouterr()
    assert "89 frames" in captured.out
    assert "xinfer-stream: warning: m.int8.onnx: INT8 runs as emulated float" in captured.err


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
    code = main(["run", str(model), str(clip), "--size", "8", "8", "--print-every", "1"])
    captured = capsys.readouterr()
    assert code == 0
    assert sum(line.startswith("frame ") for line in captured.out.splitlines()) == 270
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
    """The demo end to end (minutes): budget search, held-out agreement, the clip streamed."""
    import json

    with warnings.catch_warnings():
        warnings.simplefilter("default")  # Python's own filter, as a user's shell has it
        assert main(["demo", "--frames", "12", "--min-cosine", "0.999", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "[4/4] streaming all of bottle-detection.mp4" in out
    assert "1189 frames" in out and "top-1 agreement" in out
    # Classes a newcomer recognises: the top three each second, with spaces, a bottle among them.
    seconds = [line for line in out.splitlines() if line.strip().startswith("t=")]
    assert len(seconds) >= 30
    assert all(line.count(",") == 2 and "bottle" in line for line in seconds[:5]), seconds[:5]
    assert "water_bottle" not in out
    # Its quantize step is not silent: progress lines (off a terminal) for each stage.
    for stage in ("sampling bottle-detection.mp4: 36/36 frames", "statistics: ", "reference: ",
                  "search: "):
        assert stage in captured.err, stage
    # Streaming the Q/DQ model on a CPU without VNNI: said once, in one line.
    assert captured.err.count("INT8 runs as emulated float") <= 1
    report = json.loads((tmp_path / "efficientnet_lite0.int8.json").read_text())
    assert report["budget"]["order"] == "input_first" and report["budget"]["metric"] == "cosine"
    assert report["budget"]["holdout_frames"] == 12 and report["statistics_reused"] in (True, False)
    assert (tmp_path / "efficientnet_lite0.int8.preprocess.json").is_file()
    # It ends with the clip, each frame's top class drawn on: whole, at the clip's rate.
    clip = tmp_path / "bottle-detection.annotated.mp4"
    assert out.strip().splitlines()[-1].endswith(str(clip))
    import av

    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        assert stream.average_rate == Fraction(179, 6)
        assert sum(1 for _ in c.decode(stream)) == 1189


# -- where the command line lives -------------------------------------------------------------
def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every absolute import in ``path``."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def test_the_cli_uses_only_public_names() -> None:
    for path in sorted((REPO / "xinfer_stream" / "cli").glob("*.py")):
        for module, names in _imports(path):
            if not module.startswith("xinfer_stream"):
                continue
            assert not any(part.startswith("_") for part in module.split(".")), (path, module)
            public = set(importlib.import_module(module).__all__) | {"__version__"}
            assert set(names) <= public, (path.name, module, sorted(set(names) - public))
        text = path.read_text()
        assert "from .." not in text, f"{path.name} reaches into the library by relative import"


def test_library_modules_neither_parse_arguments_nor_print() -> None:
    for path in sorted((REPO / "xinfer_stream").rglob("*.py")):
        if "cli" in path.relative_to(REPO / "xinfer_stream").parts or path.name == "__main__.py":
            continue
        assert all(module != "argparse" for module, _ in _imports(path)), path
        calls = [node for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                 and node.func.id == "print"]
        assert not calls, f"{path} prints (line {calls[0].lineno})"


def test_every_subcommand_is_registered() -> None:
    proc = subprocess.run([sys.executable, "-m", "xinfer_stream", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("demo", "quantize", "run", "serve", "sample", "report", "build", "inspect"):
        assert f"    {command} " in proc.stdout, command


def test_preprocessing_flags_for_a_pytorch_file(tmp_path: Path) -> None:
    """A PyTorch file has no input tensor to read: the flags define the Preprocess, with --size."""
    import argparse

    from xinfer_stream.cli._preprocess import add_preprocess_options, preprocess_from_args

    parser = argparse.ArgumentParser()
    add_preprocess_options(parser)
    model = tmp_path / "net.pt"      # never opened
    args = parser.parse_args(["--size", "32", "48", "--resize", "letterbox"])
    assert preprocess_from_args(args, model) == Preprocess(size=(32, 48), resize="letterbox")
    with pytest.raises(ValueError, match="pass --size H W"):
        preprocess_from_args(parser.parse_args(["--color", "bgr"]), model)
    assert preprocess_from_args(parser.parse_args([]), model) is None


def test_stage_progress_draws_one_line_per_stage() -> None:
    import io

    from xinfer_stream.cli._progress import StageProgress

    out = io.StringIO()
    bar = StageProgress(stream=out, live=True)
    bar("statistics", 1, 4)
    bar("statistics", 4, 4)
    bar("search", 1, 2)
    bar.close()
    bar.close()                                   # idempotent
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3
    assert lines[0].startswith("\rstatistics [") and "4/4 frames" in lines[0]
    assert lines[1].startswith("\rsearch [############------------] 1/2 steps")
    assert "frames/s" not in lines[1]             # steps are counted as steps
    quiet = io.StringIO()
    StageProgress(enabled=False, stream=quiet)("statistics", 1, 1)
    assert quiet.getvalue() == ""


def test_stage_progress_off_a_terminal_prints_lines_with_an_eta(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Logs and pipes get plain lines: the stage's start, one every interval with a rate in the
    stage's unit and an ETA, its end; nothing after close (no redraw after a final report)."""
    import io

    from xinfer_stream.cli import _progress

    now = [100.0]
    monkeypatch.setattr(_progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()                            # not a terminal
    bar = _progress.StageProgress(stream=out, interval=10.0)
    bar("search", 1, 20)                           # first step lands: a line at once
    now[0] += 5.0
    bar("search", 2, 20)                           # within the interval: nothing
    now[0] += 15.0
    bar("search", 5, 20)                           # 4 steps in 20 s: 5.0 s/step, 15 left
    now[0] += 5.0
    bar("search", 20, 20)
    bar.close()
    end = out.getvalue()
    bar.close()
    assert out.getvalue() == end                   # closing again draws nothing
    lines = end.splitlines()
    assert lines[0] == "search: 1/20 steps"
    assert lines[1] == "search: 5/20 steps, 5.0 s/step, ETA 1m15s"
    assert lines[2].startswith("search: 20/20 steps") and lines[2].endswith("in 25s")
    assert len(lines) == 3 and "\r" not in end
    assert _progress.format_duration(3725) == "1h02m"


def test_sample_progress_and_frames_per_source_off_a_terminal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    walk, cup = shared("video/walk.mkv"), shared("video/cup.mp4")
    assert main(["sample", str(walk), str(cup), "-n", "12", "-o", str(tmp_path / "set")]) == 0
    captured = capsys.readouterr()
    assert "sampling 2 videos: 12/12 frames" in captured.err      # progress, as lines
    assert "\r" not in captured.err
    assert f"frames  {walk}" in captured.out and f"frames  {cup}" in captured.out
    counts = [int(line.split()[0]) for line in captured.out.splitlines()
              if line.startswith("  ") and "frames  " in line]
    assert sum(counts) == 12 and len(counts) == 2
    assert "warning" not in captured.err


def test_sample_warns_when_copies_of_one_scene_dominate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    cup = shared("video/cup.mp4")
    a, b = shutil.copy(cup, tmp_path / "a.mp4"), shutil.copy(cup, tmp_path / "b.mp4")
    code = main(["sample", str(a), str(b), str(shared("video/walk.mkv")), "-n", "24",
                 "--strategy", "diverse", "-o", str(tmp_path / "set"), "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("xinfer-stream: warning:")]
    assert len(warning) == 1 and "a.mp4, b.mp4" in warning[0], err
    assert "look like copies of one scene" in warning[0] and " of 24 frames" in warning[0]


def test_frame_counts_and_channel_values_are_checked_naming_the_option(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = str(shared("video/walk.mkv"))
    model = str(tiny_classifier(tmp_path / "tiny.onnx"))
    for argv in (["quantize", model, "--calib", clip, "--frames", "0", "-o", "x.onnx",
                  "--size", "8", "8"],
                 ["sample", clip, "-n", "0", "-o", str(tmp_path / "s")],
                 ["build", model, "--int8", "--calib", clip, "--frames", "0", "-o", "x.engine"],
                 ["demo", "--frames", "0"]):
        code = main(argv)
        one_line_error(capsys, code, "--frames must be a positive number of frames, got 0")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", model, clip, "--mean", "1", "2", "3", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --mean: expected 3 values (one per channel), got 4" in err


def test_help_is_fast_and_loads_no_heavy_library() -> None:
    """``--help`` answers without importing ONNX, ONNX Runtime, PyAV or numpy (it took 4 s)."""
    code = ("import sys, runpy; sys.argv = ['xinfer-stream', '--help']\n"
            "try:\n    runpy.run_module('xinfer_stream', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('onnx', 'onnxruntime', 'av', 'numpy', 'cuda') "
            "if m in sys.modules)\nprint('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
    for command in ("quantize", "run", "compare", "sample", "build", "report", "inspect", "demo"):
        sub = subprocess.run([sys.executable, "-m", "xinfer_stream", command, "--help"],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
        assert sub.returncode == 0 and "usage: xinfer-stream " + command in sub.stdout, sub.stderr


def test_quantize_help_documents_exit_status_3() -> None:
    from xinfer_stream.cli import _quantize, build_parser
    from xinfer_stream.quantize import DEFAULT_BIAS_CORRECTION, DEFAULT_METHOD, SEARCH_ORDERS

    assert _quantize.SEARCH_ORDERS == SEARCH_ORDERS
    assert _quantize.DEFAULT_METHOD == DEFAULT_METHOD
    assert _quantize.DEFAULT_BIAS_CORRECTION == DEFAULT_BIAS_CORRECTION
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    text = sub.choices["quantize"].format_help()
    assert "exit status:" in text and "3  --max-drop only: the budget was NOT met" in text


def test_warnings_print_as_one_line_without_source(tmp_path: Path) -> None:
    """A library warning during a command is one ``xinfer-stream: warning:`` line: no file
    name, line number or source line."""
    clip = shared("video/walk.mkv")                # 89 frames: asking 200 warns
    proc = subprocess.run([sys.executable, "-m", "xinfer_stream", "sample", str(clip), "-n",
                           "200", "-o", str(tmp_path / "set"), "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("xinfer-stream: warning: ") for line in lines), lines
    assert ".py:" not in proc.stderr and "warnings.warn" not in proc.stderr
    assert "Warning:" not in proc.stderr


def test_artifacts_are_written_with_the_users_umask(tmp_path: Path) -> None:
    import os

    from xinfer_stream._files import atomic_write_bytes, current_umask

    previous = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        os.umask(0o002)
        atomic_write_bytes(tmp_path / "b.bin", b"y")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o664


# -- compare: FP32 and INT8 side by side on a chosen video ------------------------------------
def test_compare_prints_rows_a_second_and_a_summary(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx", classes=4)
    clip = shared("video/walk.mkv")                           # 89 frames at 30 fps
    int8 = tmp_path / "tiny.int8.onnx"
    assert main(["quantize", str(model), "--calib", str(clip), "--frames", "16", "--size", "8",
                 "8", "-o", str(int8), "--quiet"]) == 0
    labels = tmp_path / "labels.txt"
    labels.write_text("north\neast\nsouth\nwest\n")
    capsys.readouterr()
    assert main(["compare", str(model), str(int8), str(clip), "--labels", str(labels)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "FP32 top-1" in out[0] and "INT8 top-1" in out[0] and "'logits'" in out[0]
    rows = out[1:out.index(next(line for line in out if line.startswith("89 frames compared")))]
    assert [int(r.split()[0]) for r in rows] == [0, 30, 60]   # the first frame of each second
    assert all(r.split()[3] in ("north", "east", "south", "west") or r.split()[3] == "*"
               for r in rows)
    summary = "\n".join(out)
    assert "89 frames compared (output 'logits')" in summary
    assert "top-1 agreement" in summary and "output cosine    mean" in summary

    # Every frame, and the library's rows agree with the summary printed.
    from xinfer_stream import Preprocess
    from xinfer_stream.quantize import ComparisonSummary, compare

    rows_ = list(compare(model, int8, clip, Preprocess(size=(8, 8)), limit=40))
    assert len(rows_) == 40 and [r.index for r in rows_] == list(range(40))
    result = ComparisonSummary.of(rows_)
    assert result.frames == 40 and 0.9 < result.cosine_mean <= 1.0
    assert result.cosine_min == min(r.cosine for r in rows_) and result.worst in rows_
    assert result.top1_agreement == sum(bool(r.agrees) for r in rows_) / 40
    assert main(["compare", str(model), str(int8), str(clip), "--print-every", "10",
                 "--max-frames", "25"]) == 0
    out = capsys.readouterr().out
    assert [int(line.split()[0]) for line in out.splitlines()[1:4]] == [0, 10, 20]
    assert "25 frames compared" in out


def test_compare_summary_lists_the_disagreements() -> None:
    from xinfer_stream.cli._compare import format_summary
    from xinfer_stream.quantize import ComparisonSummary, FrameComparison

    rows = [FrameComparison("logits", "a.mp4", i, i / 30, 0.99 - 0.1 * (i == 3), 1,
                            2 if i in (3, 5) else 1) for i in range(10)]
    summary = ComparisonSummary.of(rows)
    assert summary.top1_agreement == 0.8 and [r.index for r in summary.disagreements] == [3, 5]
    text = format_summary(summary, lambda c: ["cat", "bottle", "cup"][c])
    assert "top-1 agreement  80.0% (2 of 10 frames disagree)" in text
    assert "min 0.8900 (frame 3, 0.10s)" in text
    assert "bottle -> cup" in text


def test_compare_refuses_models_with_different_outputs(tmp_path: Path, bundled_clip: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    a = tiny_classifier(tmp_path / "a.onnx")
    b = not_an_image_model(tmp_path / "b.onnx")
    code = main(["compare", str(a), str(b), str(bundled_clip), "--size", "8", "8"])
    one_line_error(capsys, code, "different outputs")


# -- run: output for people -------------------------------------------------------------------
def test_run_prints_a_header_a_row_a_second_and_the_latency_split(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    assert main(["run", str(model), str(shared("video/walk.mkv")), "--size", "8", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["frame", "time", "latency", "result"]
    assert "queue wait, preprocess and inference" in out[0]
    rows = [line for line in out if line.startswith("frame ")]
    assert [int(r.split()[1]) for r in rows] == [0, 30, 60]    # 30 fps: one a second
    assert out[len(rows) + 1].startswith("89 frames")
    text = "\n".join(out)
    for stage in ("latency, decoded to result ready: p50", "queue wait  p50", "preprocess  p50",
                  "inference   p50"):
        assert stage in text, stage


def test_run_prints_statistics_when_a_file_breaks_off_even_quiet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    clip = shared("video/car-detection.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[:1_200_000])             # the index stays, the data stops
    code = main(["run", str(model), str(cut), "--size", "8", "8", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    first = captured.out.splitlines()[0]
    frames = int(first.split()[0])
    assert 0 < frames < 377 and "stopped by an error" in first
    assert "queue wait" in captured.out and "inference" in captured.out
    assert "truncated" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_run_prints_statistics_on_ctrl_c(bundled_model: Path, bundled_clip: Path) -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "xinfer_stream", "run", str(bundled_model), str(bundled_clip),
         *EFFICIENTNET_FLAGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        header = proc.stdout.readline()
        first = proc.stdout.readline()                          # streaming has begun
        assert "latency" in header and first.startswith("frame      0"), (header, first)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    stats = next(line for line in out.splitlines() if "frames," in line)
    assert stats.endswith("(interrupted)") and "inference" in out
    assert err.strip() == "xinfer-stream: interrupted"


# -- a reusable calibration set gives an accuracy number too -----------------------------------
def test_calib_set_with_holdout_and_max_drop_then_report_exits_0(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    calib_set = tmp_path / "set"
    assert main(["sample", str(shared("video/walk.mkv")), str(shared("video/cup.mp4")), "-n",
                 "24", "-o", str(calib_set), "--quiet"]) == 0
    # The set records each frame's video: --holdout holds out whole videos (issue 20), about 8
    # frames' worth, by the library's own rule.
    from xinfer_stream.quantize import split_holdout
    from xinfer_stream.video import load_calibration_set

    split = split_holdout(load_calibration_set(calib_set), 8)
    counts = f"{len(split.calibration)} calibration frames, {len(split.held_out)} held out"
    assert len(split.held_out_sources) == 1 and not split.same_sources
    out = tmp_path / "a.int8.onnx"
    assert main(["quantize", str(model), "--calib-set", str(calib_set), "--holdout", "8",
                 "--size", "8", "8", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert split.describe() in captured.out and counts in captured.out
    assert (f"written model on {len(split.held_out)} held-out frames from "
            f"{split.held_out_sources[0]}: top-1 agreement") in captured.out
    assert "warning" not in captured.err          # what is not held out is no shortfall

    # --max-drop on the set: a budget that cannot be met (a cosine drop of 0) exits 3 ...
    budget = tmp_path / "b.int8.onnx"
    code = main(["quantize", str(model), "--calib-set", str(calib_set), "--holdout", "8",
                 "--max-drop", "0", "--metric", "cosine", "--sensitivity-frames", "4",
                 "--size", "8", "8", "-o", str(budget)])
    captured = capsys.readouterr()
    assert code == 3 and "budget NOT met" in captured.out
    assert counts in captured.out and split.describe() in captured.out
    # ... and the search's progress lines end before the report (nothing drawn after it), the
    # last one the write-and-verify stage's, complete.
    assert re.match(r"write and verify: (\d+)/\1 models", captured.err.splitlines()[-1])

    # Reading that report is not a failure: report exits 0 and says the budget was not met.
    assert main(["report", str(tmp_path / "b.int8.json")]) == 0
    assert "budget NOT met" in capsys.readouterr().out

    code = main(["quantize", str(model), "--calib-set", str(calib_set), "--holdout", "24",
                 "--size", "8", "8", "-o", str(out)])
    one_line_error(capsys, code, "holds 24 frames, not enough to hold out 24")
