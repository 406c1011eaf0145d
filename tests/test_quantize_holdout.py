"""Held-out accuracy that is true of the written model and says when it cannot tell (issue 20):
the split by source, the written file evaluated as written, per-source breakdown, and the notes
for held-out frames on which a metric measures nothing."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.test_budget import make_model
from xinfer_stream.quantize import (BudgetReport, BudgetStep, CalibrationWarning, Calibrator,
                                    UnitSensitivity, evaluate, quantize, quantize_with_budget,
                                    split_holdout)
from xinfer_stream.quantize._evaluate import signal_notes
from xinfer_stream.quantize._quantize import describe_accuracy

HW = 8


@dataclass(frozen=True)
class _Frame:
    source: str
    index: int


def _frames(counts: dict[str, int]) -> list[_Frame]:
    return [_Frame(source, i) for source, n in counts.items() for i in range(n)]


# -- the split --------------------------------------------------------------------------------
def test_several_sources_hold_out_whole_sources() -> None:
    frames = _frames({"a.mp4": 10, "b.mp4": 5, "c.mp4": 5})
    split = split_holdout(frames, 5)
    assert split.held_out == [f for f in frames if f.source == "b.mp4"]
    assert split.calibration == [f for f in frames if f.source != "b.mp4"]
    assert split.held_out_sources == ("b.mp4",)
    assert split.calibration_sources == ("a.mp4", "c.mp4")
    assert not split.same_sources
    assert "held out 1 of 3 videos, 5 frames: b.mp4" == split.describe()
    # Whole sources whose counts add up nearest to what was asked; never every source.
    assert split_holdout(frames, 10).held_out_sources == ("a.mp4",)
    assert split_holdout(frames, 15).held_out_sources == ("a.mp4", "b.mp4")
    assert split_holdout(frames, 19).calibration_sources == ("c.mp4",)
    assert split_holdout(frames, 1).held_out_sources == ("b.mp4",)


def test_one_source_holds_out_its_end() -> None:
    frames = _frames({"walk.mkv": 12})
    split = split_holdout(frames, 4)
    assert split.held_out == frames[8:] and split.calibration == frames[:8]
    assert split.same_sources and "last 4 frames of walk.mkv" in split.describe()
    for bad in (0, 12, -1):
        with pytest.raises(ValueError, match="cannot hold out"):
            split_holdout(frames, bad)


def test_calibrator_split_follows_the_same_rule() -> None:
    """``Calibrator.split`` (``--calib-set`` with ``--holdout``) holds out what
    ``split_holdout`` holds out, keeping each part's sources."""
    from xinfer_stream.preprocess import Preprocess

    pre = Preprocess(size=(HW, HW), resize="stretch")
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(20)]
    names = [f.source for f in _frames({"a.mp4": 10, "b.mp4": 5, "c.mp4": 5})]
    calib, held = Calibrator(images, pre, name="set", requested_frames=20,
                             sources=names).split(5)
    assert held.sources == ("b.mp4",) * 5 and calib.source_names == ("a.mp4", "c.mp4")
    assert [int(f[0, 0, 0]) for f in held._items] == list(range(10, 15))
    assert calib.num_frames == 15 and calib.name == "set" and held.name == "held-out"
    # No sources: one stretch, the end.
    calib, held = Calibrator(images, pre).split(4)
    assert held.sources is None and [int(f[0, 0, 0]) for f in held._items] == [16, 17, 18, 19]
    assert calib.num_frames == 16


# -- the written model's accuracy ---------------------------------------------------------------
def _confident_inputs(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((count, 3, HW, HW)).astype(np.float32)
    return data + 4.0 * rng.standard_normal((count, 3, 1, 1)).astype(np.float32)


def test_reported_accuracy_is_evaluate_on_the_written_file(tmp_path: Path) -> None:
    source = make_model(tmp_path / "m.onnx", seed=3)
    calib = Calibrator.from_arrays(_confident_inputs(32, 1), batch_size=8)
    held = _confident_inputs(24, 2)
    holdout = Calibrator.from_arrays(held, batch_size=8, name="held-out")
    out = tmp_path / "m.int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)    # whether the net is sure: not here
        result = quantize(source, calib, out, holdout=holdout)
    again = evaluate(source, out, [held[i:i + 8] for i in range(0, len(held), 8)])
    assert result.accuracy is not None
    assert result.accuracy.outputs == again.outputs          # every number, exactly
    report = json.loads(result.report_path.read_text())
    assert report["accuracy"]["top1_agreement"] == again.top1_agreement
    assert report["accuracy"]["outputs"][0]["cosine_mean"] == again.cosine_mean
    assert report["diagnostics"]["worst_tensors"] and result.layer_errors


def test_budget_drop_is_measured_on_the_written_file(tmp_path: Path) -> None:
    source = make_model(tmp_path / "outlier.onnx", outlier=1e4)
    calib = Calibrator.from_arrays(_confident_inputs(32, 1), batch_size=16)
    held = _confident_inputs(48, 2)
    out = tmp_path / "b.int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        result = quantize_with_budget(source, calib, out, max_drop=0.0, metric="top1",
                                      holdout=Calibrator.from_arrays(held, batch_size=16),
                                      sensitivity_frames=16)
    again = evaluate(source, out, [held[i:i + 16] for i in range(0, len(held), 16)])
    assert again.top1_agreement is not None
    assert result.drop == pytest.approx(100.0 * (1.0 - again.top1_agreement), abs=1e-9)


# -- sources --------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:the held-out frames cannot measure:UserWarning")
def test_sources_reach_the_report_and_same_source_warns(tmp_path: Path) -> None:
    from xinfer_stream.preprocess import Preprocess

    pre = Preprocess(size=(HW, HW), resize="stretch", mean=(127.0,) * 3, std=(64.0,) * 3)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (12, 12, 3), dtype=np.uint8) for _ in range(16)]
    source = make_model(tmp_path / "m.onnx")
    calib = Calibrator(frames[:8], pre, sources=["a.mp4"] * 4 + ["b.mp4"] * 4)
    held = Calibrator(frames[8:], pre, sources=["c.mp4"] * 3 + ["d.mp4"] * 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "the held-out frames cannot measure", CalibrationWarning)
        result = quantize(source, calib, tmp_path / "q.onnx", holdout=held)
    report = json.loads(result.report_path.read_text())
    assert report["holdout"] == {"frames": 8, "sources": ["c.mp4", "d.mp4"],
                                 "calibration_sources": ["a.mp4", "b.mp4"],
                                 "shares_calibration_sources": False}
    accuracy = result.accuracy
    assert accuracy is not None
    assert [(s.source, s.frames) for s in accuracy.by_source] == [("c.mp4", 3), ("d.mp4", 5)]
    agreement = accuracy.top1_agreement
    assert agreement is not None
    per_source = [s.top1_agreement for s in accuracy.by_source]
    assert agreement == pytest.approx((3 * (per_source[0] or 0) + 5 * (per_source[1] or 0)) / 8)
    assert "c.mp4: 3 frames" in result.summary()

    same = Calibrator(frames[8:], pre, sources=["b.mp4"] * 8)
    with pytest.warns(CalibrationWarning, match=r"every held-out frame comes from a video the "
                                                r"calibration frames come from \(b.mp4\)"):
        quantize(source, calib, tmp_path / "r.onnx", holdout=same)
    with pytest.raises(ValueError, match="one name a frame|source of each of the 8 frames"):
        Calibrator(frames[8:], pre, sources=["b.mp4"])


# -- held-out frames that cannot tell -----------------------------------------------------------
def _map_model(path: Path) -> Path:
    """x [N,1,4,4] -> 1x1 Conv (weight 1, bias -6) -> Sigmoid -> a [0, 1] score map: an input
    of zeros gives sigmoid(-6) ~ 0.0025 everywhere (an empty map), a bright pixel a score."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
         helper.make_node("Sigmoid", ["c"], ["score"], name="sigmoid")], "map",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w"),
         numpy_helper.from_array(np.full(1, -6.0, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_empty_maps_say_why_the_cosine_cannot_tell(tmp_path: Path) -> None:
    source = _map_model(tmp_path / "map.onnx")
    rng = np.random.default_rng(0)
    calib = rng.uniform(0, 12, (16, 1, 4, 4)).astype(np.float32)
    held = np.zeros((8, 1, 4, 4), np.float32) + rng.uniform(0, 0.5, (8, 1, 4, 4)).astype(np.float32)
    held[:2, 0, 1, 1] = 10.0                  # two frames hold something, six are empty
    with pytest.warns(CalibrationWarning, match="empty on 6 of 8 held-out frames"):
        result = quantize(source, Calibrator.from_arrays(calib), tmp_path / "map.int8.onnx",
                          holdout=Calibrator.from_arrays(held), bias_correction="none")
    accuracy = result.accuracy
    assert accuracy is not None
    output = accuracy.outputs[0]
    assert output.kind == "map" and output.low_signal_frames == 6 and output.top1_agreement is None
    direct = evaluate(source, tmp_path / "map.int8.onnx", [held[:2]])
    assert output.cosine_measurable == pytest.approx(direct.cosine_mean, rel=1e-12)
    lines = describe_accuracy(accuracy)
    assert "top-1 agreement n/a (no classifier output)" in lines[0]
    assert any(line.startswith("  cannot tell: score: the FP32 output map is empty on 6 of 8")
               and "on the other 2 frames cosine" in line for line in lines)
    # The same rule, from FP32 outputs alone (what the budget search checks).
    reference = {"score": 1.0 / (1.0 + np.exp(-(held - 6.0)))}
    assert signal_notes(reference)[0].startswith("score: the FP32 output map is empty on 6 of 8")
    held[:6, 0, 1, 1] = 10.0                  # now most frames hold something: no note
    assert signal_notes({"score": 1.0 / (1.0 + np.exp(-(held - 6.0)))}) == ()


def test_unsure_classifier_counts_unsure_frames() -> None:
    logits = np.zeros((10, 4), np.float32)
    logits[:3, 0] = 5.0                       # three sure frames; seven near-uniform ones
    notes = signal_notes({"logits": logits})
    assert len(notes) == 1 and "unsure on 7 of 10 held-out frames" in notes[0]
    probabilities = np.full((10, 4), 0.25, np.float32)
    probabilities[:6] = [0.9, 0.05, 0.03, 0.02]     # already a softmax: read as probabilities
    assert signal_notes({"probs": probabilities}) == ()


# -- the budget search says what it tried ---------------------------------------------------------
def _step(index: int, unit: str | None, kept: bool = True) -> BudgetStep:
    return BudgetStep(index=index, unit=unit, excluded_units=(unit,) if unit else (), kept=kept,
                      drop=5.0, exact=True, subset_drop=5.0, distortion=1.0,
                      int8_mac_fraction=0.9, written_drop=5.0 if index == 0 else None, met=False,
                      elapsed_s=0.0)


def test_not_met_message_counts_the_units_tried() -> None:
    units = tuple(UnitSensitivity(f"u{i}", (f"u{i}",), 10, s)
                  for i, s in enumerate([0.5, 0.2, -0.1, 0.0, None, 0.3]))
    report = BudgetReport(
        metric="top1", metric_unit="points", max_drop=1.0, min_int8_macs=0.8,
        outcome="not_met_nothing_left", holdout_frames=10, sensitivity_frames=5, seed=0,
        search_budget_s=None, search_budget_steps=None, total_macs=60, chosen_step=0,
        excluded_nodes=(), units=units,
        steps=(_step(0, None), _step(1, "u0"), _step(2, "u5", kept=False)))
    message = report.message()
    assert "every unit" not in message
    assert ("2 of 6 units tried, 2 did not lower the distortion when kept alone in float, 1 not "
            "ranked, 1 would have left less than 80% of MACs in INT8 or no weighted op "
            "quantized") in message
    ran_out = BudgetReport(**{**report.__dict__, "outcome": "not_met_search_budget"})
    assert "search budget ran out after 2 of 6 units were tried" in ran_out.message()
    assert not math.isnan(report.drop)


@pytest.mark.filterwarnings("ignore:the held-out frames cannot measure:UserWarning")
def test_quantize_command_holds_out_whole_videos(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import shared
    from xinfer_stream.cli import main

    model = make_model(tmp_path / "m.onnx")
    clips = [str(shared("video/walk.mkv")), str(shared("video/cup.mp4"))]
    out = tmp_path / "m.int8.onnx"
    assert main(["quantize", str(model), "--calib", *clips, "--frames", "12", "--holdout", "6",
                 "--size", "8", "8", "--resize", "stretch", "--bias-correction", "none",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.with_name("m.int8.json").read_text())
    held = report["holdout"]["sources"]
    assert len(held) == 1 and held[0] in clips
    assert report["holdout"]["calibration_sources"] == [c for c in clips if c not in held]
    assert report["holdout"]["shares_calibration_sources"] is False
    assert f"held out 1 of 2 videos, {report['holdout']['frames']} frames: {held[0]}" in printed
    assert f"held-out frames from {held[0]}" in printed


def test_report_command_header_says_why_the_cosine_cannot_tell() -> None:
    from xinfer_stream.quantize._budget_report import format_quantization_header

    note = "score: the FP32 output map is empty on 30 of 32 held-out frames"
    text = format_quantization_header({
        "model": {"path": "det.int8.onnx"}, "method": "max", "calibration": {"frames": 64},
        "accuracy": {"frames": 32, "top1_agreement": None, "outputs": [{"cosine_mean": 0.156}],
                     "notes": [note]},
        "holdout": {"sources": ["street.mp4"]}})
    assert ("accuracy of the written model vs FP32: 32 held-out frames, mean cosine 0.15600, "
            "from street.mp4") in text
    assert f"  cannot tell: {note}" in text
