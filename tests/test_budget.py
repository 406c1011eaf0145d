"""The accuracy-budget search on tiny models built with onnx.helper, where one op is made
sensitive on purpose: its input carries a huge constant outlier, so max calibration gives it a
scale that rounds every ordinary value to zero. The search must find exactly that op."""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from xinfer_stream._errors import InvalidCalibrationInput
from xinfer_stream.quantize import CalibrationWarning, Calibrator, quantize
from xinfer_stream.preprocess import Preprocess
from xinfer_stream.cli import _report
from xinfer_stream.cli._progress import StageProgress
from xinfer_stream.cli._quantize import add_budget_arguments, run_budget_quantize
from xinfer_stream.quantize._budget import (SearchBudget, SearchEstimate, _Candidates,
                                            quantize_with_budget)
from xinfer_stream.quantize._budget_report import (BudgetReport, BudgetStep, UnitSensitivity,
                                                   format_table, read_budget_report, write_plot)
from xinfer_stream.quantize._graph import prepare
from xinfer_stream.quantize._statistics import Statistics, StatisticsCollector
from xinfer_stream.quantize._sensitivity import (COSINE, TOP1, HoldoutEvaluator, accuracy_drop,
                                                 distortion, find_units, resolve_metric)
from xinfer_stream.quantize._share import weighted_macs

# These random nets are unsure of every input (top-1 probability below 0.3): each search here
# rightly warns that top-1 agreement on such frames says little (tests/test_quantize_holdout.py
# covers that warning); these tests are about the search itself.
pytestmark = pytest.mark.filterwarnings(
    "ignore:the held-out frames cannot measure this model well:UserWarning")

C = 8            # channels
HW = 8           # spatial size
CLASSES = 10


def make_model(path: Path, *, outlier: float = 0.0, residual: bool = False, seed: int = 0) -> Path:
    """x -> convA 3x3 -> Relu -> (+ outlier) -> convB 1x1 -> Relu -> convC 1x1 [-> + skip]
    -> GlobalAveragePool -> Flatten -> Gemm -> logits.

    With ``outlier``, a constant added to convB's input puts ``outlier`` at one pixel of channel
    0, and convB's weights for channel 0 are zero: the outlier changes nothing in float, but max
    calibration of convB's input gets a scale of ``outlier / 127``.
    """
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def conv(name: str, x: str, cin: int, cout: int, k: int, *, zero_input: int | None = None
             ) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) / math.sqrt(cin * k * k)).astype(np.float32)
        if zero_input is not None:
            w[:, zero_input] = 0.0
        b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"),
                      numpy_helper.from_array(b, f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"],
                                      name=name, pads=[k // 2] * 4))
        return f"{name}.y"

    a = conv("convA", "x", 3, C, 3)
    nodes.append(helper.make_node("Relu", [a], ["reluA"], name="reluA"))
    b_in = "reluA"
    if outlier:
        spike = np.zeros((1, C, HW, HW), np.float32)
        spike[0, 0, 3, 3] = outlier
        inits.append(numpy_helper.from_array(spike, "spike"))
        nodes.append(helper.make_node("Add", ["reluA", "spike"], ["spiked"], name="add_spike"))
        b_in = "spiked"
    b = conv("convB", b_in, C, C, 1, zero_input=0 if outlier else None)
    nodes.append(helper.make_node("Relu", [b], ["reluB"], name="reluB"))
    c = conv("convC", "reluB", C, C, 1)
    if residual:
        nodes.append(helper.make_node("Add", [c, "reluB"], ["res"], name="residual"))
        c = "res"
    nodes.append(helper.make_node("GlobalAveragePool", [c], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
    w = (rng.standard_normal((CLASSES, C)) / math.sqrt(C)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "fc.w"))
    inits.append(numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc.b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc",
                                  transB=1))
    graph = helper.make_graph(
        nodes, "budget_test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, HW, HW])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def samples(count: int, seed: int) -> Calibrator:
    """Random inputs whose channel means differ from sample to sample, so that the classes the
    FP32 model picks differ too."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((count, 3, HW, HW)).astype(np.float32)
    data += 2.0 * rng.standard_normal((count, 3, 1, 1)).astype(np.float32)
    return Calibrator.from_arrays(data, batch_size=16, name=f"random-{seed}")


@pytest.fixture
def outlier_model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "outlier.onnx", outlier=1e4)


@pytest.fixture
def clean_model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "clean.onnx")


# -- the search ---------------------------------------------------------------------------------
def test_search_keeps_exactly_the_ruined_conv_in_float(outlier_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "model.int8.onnx"
    stages: list[str] = []
    result = quantize_with_budget(outlier_model, samples(64, 1), out, holdout=samples(96, 2),
                                  max_drop=2.0, sensitivity_frames=32,
                                  progress=lambda stage, *_: stages.append(stage))
    report = result.report
    assert report.steps[0].drop > 5.0, "the outlier should ruin the fully quantized model"
    assert report.outcome == "met_after_search" and result.met
    # The step that met the budget closes the search before its model is written and verified.
    assert "write and verify" in stages
    assert "search" not in stages[stages.index("write and verify"):]
    assert result.excluded_nodes == ("convB",)
    assert [s.unit for s in report.steps] == [None, "convB"]
    ranked = sorted((u for u in report.units if u.sensitivity is not None),
                    key=lambda u: -float(u.sensitivity or 0.0))
    assert ranked[0].name == "convB"
    assert float(ranked[0].sensitivity or 0.0) > 10 * max(float(u.sensitivity or 0.0)
                                                          for u in ranked[1:])
    assert report.drop <= 2.0 and report.chosen.exact and report.steps[0].exact
    assert 0.0 < result.int8_mac_fraction < 1.0
    # The written model is the one measured: convB reads a float input, the others Q/DQ.
    written = onnx.load(out)
    producers = {o: n for n in written.graph.node for o in n.output}
    inputs = {n.name: n.input[0] for n in written.graph.node if n.op_type == "Conv"}
    assert producers[inputs["convB"]].op_type == "Add"
    assert producers[inputs["convC"]].op_type == "DequantizeLinear"
    data = json.loads(result.report_path.read_text())
    assert data["excluded_nodes"] == ["convB"]
    assert data["budget"]["excluded_nodes"] == ["convB"]
    # The reported drop is the written model's, measured afresh here.
    again = HoldoutEvaluator(prepare(onnx.load(outlier_model)), samples(96, 2),
                             sensitivity_frames=1, seed=0)
    assert report.drop == again.measure(out.read_bytes(), TOP1).drop


def test_a_search_runs_the_calibration_pass_once(outlier_model: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    passes: list[int] = []
    collect = StatisticsCollector.collect

    def counted(self: StatisticsCollector, *args: Any, **kwargs: Any) -> Statistics:
        passes.append(1)
        return collect(self, *args, **kwargs)

    monkeypatch.setattr(StatisticsCollector, "collect", counted)
    result = quantize_with_budget(outlier_model, samples(64, 1), tmp_path / "m.onnx",
                                  holdout=samples(96, 2), max_drop=2.0, sensitivity_frames=32)
    # The first quantize, the search's base model, each greedy step's written model and the
    # final write: one pass over the calibration frames.
    assert result.report.outcome == "met_after_search"
    assert passes == [1]
    assert json.loads(result.report_path.read_text())["statistics_reused"] is True


def test_input_first_order_keeps_units_in_float_from_the_input(outlier_model: Path,
                                                               tmp_path: Path) -> None:
    # convA sits before the ruined convB: input_first must keep convA in float first (it does
    # not help), then convB (it meets the budget). No sensitivity is measured.
    # convA and convB hold 81% of the MACs: the written model warns that it is mostly float.
    with pytest.warns(CalibrationWarning, match=r"only 18.9% of the MACs .* convA \(Conv"):
        result = quantize_with_budget(outlier_model, samples(64, 1), tmp_path / "m.onnx",
                                      holdout=samples(96, 2), max_drop=2.0, order="input_first")
    report = result.report
    assert report.order == "input_first" and report.outcome == "met_after_search"
    assert [s.unit for s in report.steps] == [None, "convA", "convB"]
    assert report.steps[2].excluded_units == ("convA", "convB")
    assert result.excluded_nodes == ("convA", "convB")
    assert all(u.sensitivity is None for u in report.units)
    assert report.timing["sensitivity_s"] == 0.0
    assert BudgetReport.from_dict(report.to_dict()) == report
    with pytest.raises(ValueError, match="order must be one of"):
        quantize_with_budget(outlier_model, samples(8, 1), tmp_path / "x.onnx",
                             holdout=samples(8, 2), max_drop=2.0,
                             order="random")  # type: ignore[arg-type]


def test_met_without_search_runs_no_search(clean_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.int8.onnx"
    result = quantize_with_budget(clean_model, samples(64, 1), out, holdout=samples(64, 2),
                                  max_drop=50.0)
    report = result.report
    assert report.outcome == "met_without_search" and not report.searched and result.met
    assert len(report.steps) == 1 and report.steps[0].excluded_units == ()
    assert all(u.sensitivity is None for u in report.units)
    assert report.excluded_nodes == () and report.int8_mac_fraction == 1.0
    assert "without a search" in report.message()
    assert report.timing["sensitivity_s"] == 0.0
    assert "not measured" in format_table(report)


def test_same_inputs_and_seed_give_the_same_search(outlier_model: Path, tmp_path: Path) -> None:
    # max_drop=0 on cosine is never met: every step of the search runs, twice.
    with pytest.warns(CalibrationWarning, match="budget NOT met"):
        runs = [quantize_with_budget(outlier_model, samples(48, 1), tmp_path / f"{i}" / "m.onnx",
                                     holdout=samples(64, 2), max_drop=0.0, metric="cosine",
                                     sensitivity_frames=16, seed=7)
                for i in range(2)]
    first, second = (r.report for r in runs)
    assert [(s.unit, s.drop, s.distortion) for s in first.steps] == \
        [(s.unit, s.drop, s.distortion) for s in second.steps]
    assert [u.sensitivity for u in first.units] == [u.sensitivity for u in second.units]
    assert runs[0].model_path.read_bytes() == runs[1].model_path.read_bytes()


def test_impossible_budget_writes_the_best_model_and_says_so(outlier_model: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "model.int8.onnx"
    with pytest.warns(CalibrationWarning, match="budget NOT met"):
        result = quantize_with_budget(outlier_model, samples(48, 1), out, holdout=samples(64, 2),
                                      max_drop=0.0, metric="cosine", sensitivity_frames=16)
    report = result.report
    assert not result.met and report.outcome == "not_met_nothing_left"
    # Every unit whose exclusion alone helped was tried, and the best model found was written.
    tried = {s.unit for s in report.steps[1:]}
    assert tried == {u.name for u in report.units if (u.sensitivity or 0.0) > 0.0}
    assert all(s.exact and s.drop is not None for s in report.steps if s.kept)
    written = [s for s in report.steps if s.written_drop is not None]
    best = min(written, key=lambda s: (s.written_drop or 0.0, s.index))
    assert report.chosen == best and report.drop == best.written_drop and report.drop > 0.0
    assert out.exists()
    data = json.loads(result.report_path.read_text())
    assert data["excluded_nodes"] == list(report.excluded_nodes)
    assert "best found" in report.message() and "was written" in report.message()


def test_int8_mac_floor_is_never_crossed(outlier_model: Path, tmp_path: Path) -> None:
    # convB holds 4096 of the 22096 MACs: keeping it in float would leave 81% in INT8.
    with pytest.warns(CalibrationWarning, match="less than 90% of MACs in INT8"):
        result = quantize_with_budget(outlier_model, samples(48, 1), tmp_path / "m.onnx",
                                      holdout=samples(64, 2), max_drop=2.0, min_int8_macs=0.9,
                                      sensitivity_frames=16)
    report = result.report
    assert report.outcome == "not_met_nothing_left"
    assert "convB" not in {s.unit for s in report.steps}
    assert all(s.int8_mac_fraction >= 0.9 for s in report.steps)
    assert result.int8_mac_fraction >= 0.9 and report.chosen.exact


# -- where the search is, and how long it has left ------------------------------------------
def test_the_estimate_comes_after_the_baseline_and_bounds_the_search(
        outlier_model: Path, tmp_path: Path) -> None:
    estimates: list[SearchEstimate] = []
    stages: list[tuple[str, int, int]] = []
    # max_drop=0 on cosine is never met: every helpful unit is tried, then the finalists and the
    # chosen model are written and measured.
    with pytest.warns(CalibrationWarning, match="budget NOT met"):
        result = quantize_with_budget(outlier_model, samples(48, 1), tmp_path / "m.onnx",
                                      holdout=samples(64, 2), max_drop=0.0, metric="cosine",
                                      sensitivity_frames=16, estimate=estimates.append,
                                      progress=lambda *a: stages.append(a))
    report = result.report
    assert [e.stage for e in estimates] == ["baseline", "ranked"]
    first, ranked = estimates
    # Priced from what was measured: the FP32 reference and the all-INT8 model ran already.
    assert first.evaluation_s > 0 and first.screen_s > 0 and first.write_s > 0
    assert first.holdout_frames == 64 and first.sensitivity_frames == 16
    assert first.ranking == first.steps == len(report.units) == 5 and first.checks == 0
    assert first.seconds_left == pytest.approx(
        first.ranking * first.screen_s
        + first.steps * (first.screen_s + first.evaluation_s + first.write_s)
        + first.write_and_verify_s, rel=0.5)    # + the search base model's quantize
    assert first.total_s == first.elapsed_s + first.seconds_left
    # Once the units are ranked, only the helpful ones are planned.
    helpful = [u for u in report.units if (u.sensitivity or 0.0) > 0.0]
    assert ranked.ranking == 0 and ranked.steps == len(helpful) == 2
    assert ranked.elapsed_s >= first.elapsed_s
    # Plausible: a bound on the plan, so not below what the search took, and not wildly above.
    took = report.timing["total_s"]
    assert 0.5 * took <= first.total_s <= 20 * took + 5.0
    # The write-and-verify phase is a stage of its own, the last one, and ends complete.
    names = [stage for stage, _, _ in stages]
    assert names.index("write and verify") > max(i for i, n in enumerate(names) if n == "search")
    assert set(names[names.index("write and verify"):]) == {"write and verify"}
    assert stages[-1][1] == stages[-1][2] >= 2
    search = [(done, total) for stage, done, total in stages if stage == "search"]
    assert search[-1] == (2, 2)


def test_the_search_stops_early_when_the_floor_puts_the_budget_out_of_reach(
        outlier_model: Path, tmp_path: Path) -> None:
    # convB and convC help when kept in float; with 70% of the MACs in INT8 only convB fits
    # (81.5%; both leave 62.9%). A cosine drop of 0 is out of reach with convB in float: the
    # search says so after one measurement, measures both in float for the trade-offs, and
    # writes the best model within the floor.
    estimates: list[SearchEstimate] = []
    stages: list[str] = []
    out = tmp_path / "model.int8.onnx"
    with pytest.warns(CalibrationWarning, match="budget NOT met at >= 70% of MACs in INT8"):
        result = quantize_with_budget(outlier_model, samples(48, 1), out, holdout=samples(64, 2),
                                      max_drop=0.0, metric="cosine", min_int8_macs=0.7,
                                      sensitivity_frames=16, estimate=estimates.append,
                                      progress=lambda stage, *_: stages.append(stage))
    report = result.report
    assert report.outcome == "not_met_floor" and not result.met
    assert [(s.check, s.excluded_units) for s in report.steps] == [
        (None, ()), ("floor", ("convB",)), ("no floor", ("convB", "convC"))]
    assert all(s.unit is None and s.exact for s in report.steps)   # no greedy step was taken
    assert "search" not in stages and stages[-1] == "write and verify"
    assert [e.stage for e in estimates] == ["baseline", "ranked", "floor check"]
    assert estimates[-1].steps == 0 and estimates[-1].checks == 1
    # The best model within the floor is written, measured on the written file.
    assert result.excluded_nodes == ("convB",) and report.chosen.check == "floor"
    assert result.int8_mac_fraction >= 0.7 and report.drop == report.chosen.written_drop
    assert out.exists()
    message = report.message()
    for said in ("stopped early", "5 units ranked, 2 helped", "1 of them fits under the floor",
                 "An estimate", "with every helpful unit in float (2, 62.9% of MACs in INT8)",
                 "that model was written", "--min-int8-macs"):
        assert said in message, said
    # The trade-offs: less INT8, less drop, each row; the one below the floor is not written.
    front = report.tradeoffs()
    assert [s.check for s in front] == [None, "floor", "no floor"]
    assert [s.int8_mac_fraction for s in front] == sorted(
        (s.int8_mac_fraction for s in front), reverse=True)
    drops = [s.written_drop if s.written_drop is not None else s.drop for s in front]
    assert drops == sorted(drops, reverse=True)     # type: ignore[type-var]
    table = format_table(report)
    assert "best trade-offs found (drop vs INT8 share; budget 0, floor 70% INT8)" in table
    assert "62.9%" in table and "(below the floor: not written)" in table
    assert BudgetReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_the_search_goes_on_when_the_budget_is_reachable_under_the_floor(
        outlier_model: Path, tmp_path: Path) -> None:
    result = quantize_with_budget(outlier_model, samples(48, 1), tmp_path / "m.onnx",
                                  holdout=samples(64, 2), max_drop=2.0, min_int8_macs=0.7,
                                  sensitivity_frames=16)
    report = result.report
    assert report.outcome == "met_after_search" and result.met
    assert result.excluded_nodes == ("convB",)
    floor = [s for s in report.steps if s.check == "floor"]
    assert len(floor) == 1 and floor[0].drop is not None and floor[0].drop <= 2.0
    assert [s.unit for s in report.steps if s.check is None] == [None, "convB"]
    assert "after a search of 1 steps" in report.message()
    assert "best trade-offs" not in format_table(report)    # only when the budget is missed


def test_a_countable_metric_stops_measuring_once_the_budget_is_out_of_reach(
        outlier_model: Path, tmp_path: Path) -> None:
    written = quantize(outlier_model, samples(32, 1), tmp_path / "m.int8.onnx")
    evaluator = HoldoutEvaluator(prepare(onnx.load(outlier_model)), samples(96, 2),
                                 sensitivity_frames=16, seed=0)
    model = written.model_path.read_bytes()
    full = evaluator.measure(model, TOP1)
    cut = evaluator.measure(model, TOP1, give_up_above=1.0)
    assert full.exact and full.drop > 5.0
    assert not cut.exact and 1.0 < cut.drop <= full.drop
    assert evaluator.measure(model, TOP1, give_up_above=100.0) == full
    assert evaluator.measure(model, COSINE, give_up_above=0.0).exact     # not countable


def test_search_budget_in_steps_stops_the_search(outlier_model: Path, tmp_path: Path) -> None:
    with pytest.warns(CalibrationWarning, match="search budget ran out"):
        result = quantize_with_budget(outlier_model, samples(48, 1), tmp_path / "m.onnx",
                                      holdout=samples(64, 2), max_drop=0.0, metric="cosine",
                                      sensitivity_frames=16, method="max",
                                      search_budget=SearchBudget(steps=2))
    assert result.report.outcome == "not_met_search_budget"
    assert len(result.report.steps) == 3            # baseline + 2 exclusions


def test_a_metric_callable_and_labels(outlier_model: Path, tmp_path: Path) -> None:
    holdout = samples(64, 2)
    calls: list[int] = []

    def worst_logit_error(reference: dict[str, np.ndarray],
                          candidate: dict[str, np.ndarray]) -> float:
        calls.append(len(reference["logits"]))
        return float(np.abs(reference["logits"] - candidate["logits"]).max())

    result = quantize_with_budget(outlier_model, samples(48, 1), tmp_path / "m.onnx",
                                  holdout=holdout, max_drop=0.05, metric=worst_logit_error,
                                  sensitivity_frames=16)
    assert result.report.metric == "worst_logit_error" and result.met
    assert result.excluded_nodes == ("convB",)
    assert set(calls) == {64}                       # always every held-out frame

    labels = np.zeros(4, np.int64)
    with pytest.raises(InvalidCalibrationInput, match="4 labels for 64"):
        quantize_with_budget(outlier_model, samples(48, 1), tmp_path / "n.onnx", holdout=holdout,
                             max_drop=1.0, metric=accuracy_drop(labels))


def test_a_failure_midway_leaves_nothing_behind(outlier_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.int8.onnx"
    out.write_bytes(b"an earlier model")

    def broken(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        quantize_with_budget(outlier_model, samples(32, 1), out, holdout=samples(32, 2),
                             max_drop=1.0, metric=broken)
    assert out.read_bytes() == b"an earlier model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "outlier.onnx"]


def test_bad_arguments(clean_model: Path, tmp_path: Path) -> None:
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="max_drop"):
            quantize_with_budget(clean_model, samples(16, 1), tmp_path / "m.onnx",
                                 holdout=samples(16, 2), max_drop=bad)
    with pytest.raises(ValueError, match="metric must be one of"):
        quantize_with_budget(clean_model, samples(16, 1), tmp_path / "m.onnx",
                             holdout=samples(16, 2), max_drop=1.0, metric="top5")
    with pytest.warns(CalibrationWarning, match="held-out frames are also calibration"):
        quantize_with_budget(clean_model, samples(16, 1), tmp_path / "m.onnx",
                             holdout=samples(16, 1), max_drop=100.0)


@pytest.mark.parametrize("correction", ["weights", "empirical"])
# Excluding convA alone leaves 37% of the MACs in INT8, which quantize() rightly warns about.
@pytest.mark.filterwarnings(r"ignore:only [0-9.]+% of the MACs")
def test_candidates_and_what_quantize_writes_for_the_same_exclusions(
        tmp_path: Path, correction: str) -> None:
    # The search measures the written Q/DQ model with units returned to float. Where quantize()
    # decides each node on its own (bias correction "weights"), quantize() with those units
    # excluded computes exactly that; its empirical correction re-tunes later layers, so the
    # written model differs and must be measured itself (what _Writer does).
    path = make_model(tmp_path / "res.onnx", residual=True, outlier=50.0)
    written = quantize(path, samples(32, 1), tmp_path / "base.int8.onnx",
                       bias_correction=correction)
    assert written.bias_corrected_nodes, "bias correction should be exercised"
    fp32 = prepare(onnx.load(path))
    candidates = _Candidates(written.model_path, fp32)
    evaluator = HoldoutEvaluator(fp32, samples(32, 2), sensitivity_frames=32, seed=0)
    units = find_units(candidates.qdq, weighted_macs(fp32, evaluator.sample.shape))
    same = []
    for unit in units:
        again = quantize(path, samples(32, 1), tmp_path / f"{unit.name}.int8.onnx",
                         exclude=[re.escape(n) for n in unit.nodes], bias_correction=correction)
        expected = evaluator.outputs(candidates.build(unit.nodes), subset=True)["logits"]
        found = evaluator.outputs(again.model_path.read_bytes(), subset=True)["logits"]
        # Equal up to float rounding (ONNX Runtime may fuse two equal graphs differently).
        tolerance = 1e-5 * float(np.abs(expected).max()) + 1e-7
        same.append(bool(np.abs(expected - found).max() <= tolerance))
    assert all(same) if correction == "weights" else not all(same)


# -- units, MACs, metrics -------------------------------------------------------------------
def test_units_merge_a_residual_add_into_its_conv(tmp_path: Path) -> None:
    path = make_model(tmp_path / "res.onnx", residual=True)
    written = quantize(path, samples(16, 1), tmp_path / "res.int8.onnx")
    assert "residual" in written.quantized_nodes
    macs = weighted_macs(prepare(onnx.load(path)), (1, 3, HW, HW))
    units = find_units(onnx.load(written.model_path), macs)
    assert [(u.name, u.nodes) for u in units] == [
        ("convA", ("convA",)), ("convB", ("convB",)), ("convC", ("convC", "residual")),
        ("pool", ("pool",)), ("fc", ("fc",))]
    assert macs == {"convA": HW * HW * C * 3 * 9, "convB": HW * HW * C * C,
                    "convC": HW * HW * C * C, "fc": CLASSES * C}
    assert units[2].macs == macs["convC"] and units[3].macs == 0


def test_metrics() -> None:
    ref = {"logits": np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])}
    same = {"logits": ref["logits"].copy()}
    flipped = {"logits": np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]])}
    assert TOP1.drop(ref, same) == 0.0 and TOP1.drop(ref, flipped) == 50.0
    assert COSINE.drop(ref, same) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < COSINE.drop(ref, flipped) < 1.0
    assert distortion(ref, same) == pytest.approx(0.0, abs=1e-12)
    assert distortion(ref, flipped) > 0.0
    labels = accuracy_drop([0, 1])
    assert labels.drop(ref, flipped) == 50.0 and labels.unit == "points"
    assert resolve_metric("top1") is TOP1
    with pytest.raises(InvalidCalibrationInput, match="classifier output"):
        TOP1.drop({"y": np.zeros((2, 1))}, {"y": np.zeros((2, 1))})


def test_search_budget_parse() -> None:
    assert SearchBudget.parse("300") == SearchBudget(seconds=300.0)
    assert SearchBudget.parse("5m, 20 steps") == SearchBudget(seconds=300.0, steps=20)
    assert SearchBudget.parse("1step") == SearchBudget(steps=1)
    for bad in ("", "5x", "2.5steps", "0steps", "-3"):
        with pytest.raises(ValueError):
            SearchBudget.parse(bad)


# -- the report -----------------------------------------------------------------------------
def test_report_json_round_trip_table_and_command(outlier_model: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.int8.onnx"
    result = quantize_with_budget(outlier_model, samples(48, 1), out, holdout=samples(64, 2),
                                  max_drop=2.0, sensitivity_frames=16, method="max")
    data, report = read_budget_report(result.report_path)
    assert report == result.report
    assert BudgetReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    assert data["budget"]["met"] is True and data["budget"]["searched"] is True
    table = format_table(report)
    assert "convB" in table and "budget met after a search of 1 steps" in table

    parser = argparse.ArgumentParser()
    _report.add_parser(parser.add_subparsers())
    for target in (result.report_path, out):
        args = parser.parse_args(["report", str(target), "--units", "0"])
        assert args.func(args) == 0
        printed = capsys.readouterr().out
        assert "top1 drop" in printed and "convB" in printed and "method max" in printed

    broken = dict(data["budget"], outcome="maybe")
    with pytest.raises(InvalidCalibrationInput, match="malformed"):
        BudgetReport.from_dict(broken)
    with pytest.raises(InvalidCalibrationInput, match="no quantization report"):
        read_budget_report(tmp_path / "missing.json")


def test_plot_is_written_beside_the_model(outlier_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "model.int8.onnx"
    result = quantize_with_budget(outlier_model, samples(48, 1), out, holdout=samples(64, 2),
                                  max_drop=2.0, sensitivity_frames=16)
    assert result.plot_path == tmp_path / "model.int8.budget.png"
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.report.plot == "model.int8.budget.png" and result.report.plot_note is None


def test_without_matplotlib_the_report_says_why(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    step = BudgetStep(index=0, unit=None, excluded_units=(), kept=True, drop=1.0, exact=True,
                      subset_drop=1.0, distortion=0.1, int8_mac_fraction=1.0, written_drop=1.0,
                      met=True, elapsed_s=0.0)
    report = BudgetReport(
        metric="top1", metric_unit="points", max_drop=2.0, min_int8_macs=0.0,
        outcome="met_without_search", holdout_frames=10, sensitivity_frames=5, seed=0,
        search_budget_s=None, search_budget_steps=None, total_macs=100, chosen_step=0,
        excluded_nodes=(), units=(UnitSensitivity("conv", ("conv",), 100, None),), steps=(step,))
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)   # import fails
    note = write_plot(report, tmp_path / "m.budget.png")
    assert note is not None and "matplotlib is not installed" in note
    assert not (tmp_path / "m.budget.png").exists()
    assert BudgetReport.from_dict(report.to_dict()) == report


# -- the command line ---------------------------------------------------------------------
def _quantize_parser() -> argparse.ArgumentParser:
    """The ``quantize`` options :func:`run_budget_quantize` reads (the lead's CLI defines them),
    plus ours."""
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--calib", nargs="+", required=True)
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--strategy", default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="max")
    p.add_argument("--exclude", action="append", default=[])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--holdout", type=int, default=0)
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--no-bias-correction", action="store_true")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--quiet", action="store_true")
    add_budget_arguments(p)
    return p


def test_quantize_command_with_a_budget(bundled_clip: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model(tmp_path / "outlier.onnx", outlier=1e4)
    pre = Preprocess(size=(HW, HW), resize="stretch", mean=(127.0,) * 3, std=(64.0,) * 3)
    common = [str(model), "--calib", str(bundled_clip), "--frames", "32", "--holdout", "48",
              "--sensitivity-frames", "16", "--search-budget", "5m,20steps"]
    args = _quantize_parser().parse_args(
        [*common, "-o", str(tmp_path / "a.int8.onnx"), "--max-drop", "5", "--quiet"])
    # One video: the end of it is held out, and the search says so.
    with pytest.warns(CalibrationWarning, match="every held-out frame comes from a video"):
        assert run_budget_quantize(args, model, pre) == 0
    assert capsys.readouterr().out == ""                  # quiet, and the budget was met
    data, report = read_budget_report(tmp_path / "a.int8.json")
    assert report is not None and report.excluded_nodes == ("convB",)
    assert report.holdout_frames == 48 and data["calibration"]["frames"] == 32

    args = _quantize_parser().parse_args(
        [*common, "-o", str(tmp_path / "b.int8.onnx"), "--max-drop", "0", "--metric", "cosine"])
    with pytest.warns(CalibrationWarning, match="every held-out frame") as caught:
        assert run_budget_quantize(args, model, pre) == 3     # not met: said once, not warned
    assert not [w for w in caught if "budget NOT met" in str(w.message)]
    printed = capsys.readouterr().out
    assert "budget NOT met" in printed and "32 calibration frames, 48 held out" in printed
    assert "held out the last 48 frames of" in printed and "bottle-detection.mp4" in printed
    assert (tmp_path / "b.int8.onnx").exists()

    # On these frames convB, pool and fc help; at 90% INT8 only pool and fc fit, and a cosine
    # drop of 0 is out of reach with them in float: the search stops early, says why, shows the
    # trade-offs and exits 3. On stderr: the estimate after the baseline, and the
    # write-and-verify stage.
    residual = make_model(tmp_path / "residual.onnx", outlier=1e4, residual=True)
    args = _quantize_parser().parse_args(
        [str(residual), *common[1:], "-o", str(tmp_path / "d.int8.onnx"), "--max-drop", "0",
         "--metric", "cosine", "--min-int8-macs", "0.9"])
    errors = io.StringIO()
    progress = StageProgress(stream=errors, live=False)
    with pytest.warns(CalibrationWarning, match="every held-out frame"):
        assert run_budget_quantize(args, residual, pre, progress) == 3
    printed = capsys.readouterr().out
    assert "budget NOT met at >= 90% of MACs in INT8, search stopped early" in printed
    assert "2 of them fit under the floor, and with all 2 kept in float at once" in printed
    assert "best trade-offs found (drop vs INT8 share" in printed
    assert "below the floor: not written" in printed and (tmp_path / "d.int8.onnx").exists()
    _, report = read_budget_report(tmp_path / "d.int8.json")
    assert report is not None and report.outcome == "not_met_floor"
    assert report.int8_mac_fraction >= 0.9
    logged = errors.getvalue()
    assert re.search(r"search estimate \(baseline\): at most \d+s more, \d+s in all \(5 ops to "
                     r"rank at [0-9.]+ s, up to \d+ steps at [0-9.]+ s", logged), logged
    assert logged.index("search estimate (baseline)") < logged.index("sensitivity:")
    assert "search estimate (floor check)" in logged and "floor check:" in logged
    assert "search:" not in logged                          # no greedy step was taken
    assert re.search(r"write and verify: (\d+)/\1 models", logged), logged

    args = _quantize_parser().parse_args([str(model), "--calib", str(bundled_clip), "-o",
                                          str(tmp_path / "c.int8.onnx"), "--max-drop", "1"])
    with pytest.raises(ValueError, match="add --holdout N"):
        run_budget_quantize(args, model, pre)


def test_an_estimate_line_ends_the_bar_before_it_is_printed() -> None:
    out = io.StringIO()
    progress = StageProgress(stream=out, live=True)
    progress("search", 1, 4)
    progress.note("search estimate (ranked): at most 5s more")
    progress("write and verify", 0, 1)
    progress.close()
    text = out.getvalue()
    assert "1/4 steps\x1b[K\nsearch estimate (ranked): at most 5s more\n" in text
    assert text.rstrip("\n").endswith("0/1 models\x1b[K")
    quiet = io.StringIO()
    StageProgress(enabled=False, stream=quiet).note("not shown")
    assert quiet.getvalue() == ""
