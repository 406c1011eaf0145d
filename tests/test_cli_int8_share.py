"""The command line and the INT8 share: printed by every ``quantize`` (plain and ``--max-drop``),
shown by ``report`` and ``inspect``; ``inspect`` reads ONNX models and refuses other files; the
preprocessing flags' help and the error when they are missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from xinfer_stream.cli import build_parser, main

from .conftest import shared

CLIP = shared("video/walk.mkv")


def conv_classifier(path: Path, *, dynamic: bool = False) -> Path:
    """input [N,3,8,8] (or [N,3,H,W]) -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(3)
    hw: list[str | int] = ["H", "W"] if dynamic else [8, 8]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
         helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
         helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc", transB=1)],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, *hw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.normal(0, 0.3, (5, 6)).astype(np.float32), "fc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


FLAGS = ["--mean", "127", "127", "127", "--std", "64", "64", "64"]


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_quantize_without_preprocessing_names_the_flags(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = conv_classifier(tmp_path / "m.onnx")
    code = main(["quantize", str(model), "--calib", str(CLIP), "--frames", "4",
                 "-o", str(tmp_path / "q.onnx")])
    assert code == 1
    err = one_line_error(capsys, code, "no Preprocess for",
                         "--size H W", "--resize", "--mean", "--std", "m.preprocess.json")
    assert "preprocess=xs.Preprocess" not in err and "EngineLoadError" not in err
    assert not (tmp_path / "q.onnx").exists()


def test_mean_and_std_help_give_the_channel_order() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = sub.choices["quantize"].format_help()  # type: ignore[attr-defined]
    flat = " ".join(text.split())
    assert "in the model's channel order (after --color: with --color bgr the first value " \
           "applies to blue)" in flat
    assert "R G B" not in text


def test_quantize_prints_the_share_and_report_and_inspect_show_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = conv_classifier(tmp_path / "m.onnx")
    out = tmp_path / "m.int8.onnx"
    assert main(["quantize", str(model), "--calib", str(CLIP), "--frames", "8", "-o", str(out),
                 *FLAGS]) == 0
    printed = capsys.readouterr().out
    expected = ("INT8: 2 of 2 weighted ops, 100.0% of 10.40 k MACs (input 1x3x8x8: the "
                "calibration frames' input shape)")        # 6x8x8x27 + 5x6
    assert expected in printed

    assert main(["report", str(tmp_path / "m.int8.json")]) == 0
    assert expected in capsys.readouterr().out

    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "INT8: 2 of 2 weighted ops, 100.0% of 10.40 k MACs (input 1x3x8x8: batch 1 for the " \
           "dynamic batch axis)" in shown
    assert "in  x" in shown and "out logits" in shown and "note:" not in shown
    assert main(["inspect", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["int8_share"]["int8_mac_fraction"] == 1.0 and data["dequantize_linear"] > 0


# One video, and a random net unsure of every frame: what the held-out frames can tell is
# warned about (one line each on stderr); this test is about the INT8 share.
@pytest.mark.filterwarnings("default:every held-out frame comes from a video")
@pytest.mark.filterwarnings("default:the held-out frames cannot measure this model well")
def test_quantize_with_a_budget_prints_the_written_models_share(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = conv_classifier(tmp_path / "m.onnx")
    out = tmp_path / "m.int8.onnx"
    code = main(["quantize", str(model), "--calib", str(CLIP), "--frames", "8", "--holdout", "8",
                 "--max-drop", "1", "--metric", "cosine", "-o", str(out), *FLAGS])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # One video: the end of it is held out, and the command says what that measures.
    assert "xinfer-stream: warning: every held-out frame comes from a video" in captured.err
    printed = captured.out
    assert "INT8: 2 of 2 weighted ops, 100.0% of 10.40 k MACs" in printed
    report = json.loads((tmp_path / "m.int8.json").read_text())
    chosen = report["budget"]["steps"][report["budget"]["chosen_step"]]
    assert chosen["int8_mac_fraction"] == report["int8_share"]["int8_mac_fraction"] == 1.0


def test_inspect_a_float_and_a_dynamic_onnx_model(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["inspect", str(shared("models/mnist-8.onnx"))])
    assert code == 0, capsys.readouterr().err
    shown = capsys.readouterr().out
    assert "INT8: 0 of 3 weighted ops, 0.0% of 786.56 k MACs" in shown
    assert "no DequantizeLinear nodes: a float model" in shown

    dynamic = conv_classifier(tmp_path / "d.onnx", dynamic=True)
    assert main(["inspect", str(dynamic)]) == 0
    assert "INT8 share not counted: the input 'x' of the model has a dynamic height/width" \
        in capsys.readouterr().out
    assert main(["inspect", str(dynamic), "--size", "16", "16"]) == 0
    assert "0.0% of 41.50 k MACs (input 1x3x16x16: batch 1 for the dynamic batch axis, height " \
           "and width 16x16 from --size)" in capsys.readouterr().out


def test_inspect_refuses_what_is_not_a_model(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    one_line_error(capsys, main(["inspect", str(notes)]), "cannot tell what", "notes.txt")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not protobuf at all " * 10)
    one_line_error(capsys, main(["inspect", str(junk)]), "junk.onnx", "ONNX model")
    one_line_error(capsys, main(["inspect", str(tmp_path / "gone.onnx")]), "not found")
