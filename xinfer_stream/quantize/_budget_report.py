"""The accuracy-budget report: what the search measured, as JSON, a table and a PNG plot.

:class:`BudgetReport` is the record of one :func:`~xinfer_stream.quantize.quantize_with_budget`
run: the budget, the metric, every step of the search (what was excluded, the metric after it,
the fraction of MACs still in INT8) and the per-unit sensitivity. It is stored under the
``"budget"`` key of the quantization report (``model.int8.json``), formatted as tables by
:func:`format_table` (``xinfer-stream report model.int8.json`` prints them) and drawn by
:func:`write_plot` (``model.int8.budget.png``: metric against the number of excluded units, and
per-unit sensitivity). The plot needs matplotlib (the ``report`` extra); without it the report records why
there is no plot. A metric that draws (``boxes``) adds its picture (``model.int8.boxes.png``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._errors import InvalidCalibrationInput
from .._files import atomic_output
from ._detection_head import describe_detection_tail
from ._share import Int8Share

__all__ = ["CHECKS", "SEARCH_ORDERS", "BudgetReport", "BudgetStep", "Outcome", "SearchOrder",
           "UnitSensitivity", "format_quantization_header", "format_table", "format_tradeoffs",
           "picture_path_for", "plot_path_for", "read_budget_report", "write_plot"]

SearchOrder = Literal["sensitivity", "input_first"]
SEARCH_ORDERS: tuple[SearchOrder, ...] = ("sensitivity", "input_first")
Outcome = Literal["met_without_search", "met_after_search", "not_met_nothing_left",
                  "not_met_search_budget", "not_met_floor"]
OUTCOMES: tuple[Outcome, ...] = ("met_without_search", "met_after_search",
                                 "not_met_nothing_left", "not_met_search_budget", "not_met_floor")
# BudgetStep.check: a measurement outside the greedy sequence. "floor": every helpful unit that
# fits under the INT8 floor kept in float at once (what the greedy search could reach at most);
# "no floor": every helpful unit kept in float, the floor ignored (what a lower floor would buy;
# never written).
CHECKS = ("floor", "no floor")
BUDGET_KEY = "budget"


@dataclass(frozen=True)
class UnitSensitivity:
    """One unit of the search: nodes that leave quantization together.

    A unit is a quantized Conv/ConvTranspose/Gemm/MatMul with the residual ``Add`` its output
    feeds (through an activation, if any), or a quantized node of another kind on its own.
    ``sensitivity`` is how much the output distortion on the sensitivity frames shrinks when this
    unit alone is kept in float (larger: quantizing it hurts more; negative: its quantization
    error offsets others'); ``None`` when the search did not measure it (no search was needed,
    the search budget ran out first, or it is the only quantized weighted op).
    """

    name: str
    nodes: tuple[str, ...]
    macs: int
    sensitivity: float | None


@dataclass(frozen=True)
class BudgetStep:
    """The model after one step of the search; step 0 is the fully quantized model.

    ``check`` is None for a step of the search; ``"floor"`` or ``"no floor"`` for the
    reachability checks (``CHECKS``) measured once units are ranked, which keep a whole set of
    units in float at once (``unit`` is then None).

    Each step is screened on the sensitivity frames first (``distortion``, and ``subset_drop``
    for metrics that mean the same on any frames). A unit whose exclusion does not lower the
    distortion is put back (``kept`` False). With a countable metric (top-1), when the failures
    among the frames seen already put the drop above the budget, measuring stops: ``drop`` is
    then that lower bound and ``exact`` is False; ``drop`` is None when it was not measured.
    """

    index: int
    unit: str | None                    # the unit tried at this step (None at step 0)
    excluded_units: tuple[str, ...]     # every unit in float in this step's model
    kept: bool                          # False: the unit was put back
    drop: float | None                  # the budget metric on every held-out frame (or >= it)
    exact: bool
    subset_drop: float | None           # the budget metric on the sensitivity frames
    distortion: float                   # the output distortion on the sensitivity frames
    int8_mac_fraction: float
    written_drop: float | None          # the drop of the model quantize() wrote for this step
    met: bool                           # written_drop is within the budget
    elapsed_s: float                    # since the search started
    check: str | None = None            # None: a search step; else one of CHECKS


@dataclass(frozen=True)
class BudgetReport:
    """Everything one budget search measured and decided (see the module docstring)."""

    metric: str
    metric_unit: str
    max_drop: float
    min_int8_macs: float
    outcome: Outcome
    holdout_frames: int
    sensitivity_frames: int
    seed: int
    search_budget_s: float | None
    search_budget_steps: int | None
    total_macs: int
    chosen_step: int                    # index into ``steps`` of the model that was written
    excluded_nodes: tuple[str, ...]     # nodes the written model keeps in float (the search's)
    units: tuple[UnitSensitivity, ...]  # graph order
    steps: tuple[BudgetStep, ...]
    timing: Mapping[str, float] = field(default_factory=dict)
    plot: str | None = None             # file name of the PNG beside the report
    plot_note: str | None = None        # why there is no plot
    order: SearchOrder = "sensitivity"  # how the units to keep in float were ordered
    notes: tuple[str, ...] = ()         # why the held-out frames may not measure the model
    holdout_sources: tuple[str, ...] = ()   # where the held-out frames came from, when known
    # What the metric saw on the written model besides the drop (``boxes``: mAP@0.5, precision,
    # recall, F1 and the box counts, see ``_box_metrics.BoxAgreement.to_dict``; ``accuracy``:
    # FP32 and INT8 top-1 accuracy against the labels).
    details: Mapping[str, Any] = field(default_factory=dict)
    # File name of the metric's picture beside the report (``boxes``: a held-out frame with the
    # FP32 and the INT8 boxes drawn on it, ``model.int8.boxes.png``); None without one.
    picture: str | None = None

    @property
    def met(self) -> bool:
        return self.outcome in ("met_without_search", "met_after_search")

    @property
    def searched(self) -> bool:
        return self.outcome != "met_without_search"

    @property
    def chosen(self) -> BudgetStep:
        return self.steps[self.chosen_step]

    @property
    def drop(self) -> float:
        """The metric of the written model, measured on it."""
        drop = self.chosen.written_drop
        if drop is None:
            raise ValueError("the chosen step of a budget report must hold the written model's "
                             "drop")
        return drop

    @property
    def int8_mac_fraction(self) -> float:
        return self.chosen.int8_mac_fraction

    def tradeoffs(self) -> tuple[BudgetStep, ...]:
        """The best trade-offs measured: the steps measured exactly on every held-out frame that
        no other such step beats on both the drop and the INT8 share, most INT8 first (the
        written drop where there is one)."""
        measured = [s for s in self.steps if s.kept and _best_drop(s) is not None]
        front: list[BudgetStep] = []
        for step in sorted(measured, key=lambda s: (-s.int8_mac_fraction, _best_drop(s),
                                                    s.index)):
            drop = _best_drop(step)
            assert drop is not None
            if not front or drop < float(_best_drop(front[-1]) or 0.0) - 1e-12:
                front.append(step)
        return tuple(front)

    def message(self) -> str:
        """One paragraph a user can act on."""
        chosen = self.chosen
        units = len(chosen.excluded_units)
        where = (f"{units} unit{'s' if units != 1 else ''} kept in float, "
                 f"{100.0 * chosen.int8_mac_fraction:.1f}% of MACs in INT8")
        budget = f"{self.metric} drop <= {_fmt(self.max_drop)}{_unit(self.metric_unit)}"
        got = f"{_fmt(self.drop)}{_unit(self.metric_unit)}"
        if self.outcome == "met_without_search":
            return (f"budget met without a search: {budget}, measured {got} on "
                    f"{self.holdout_frames} held-out frames with every op quantized")
        if self.outcome == "met_after_search":
            taken = sum(1 for s in self.steps[1:] if s.check is None)
            return (f"budget met after a search of {taken} steps: {budget}, "
                    f"measured {got} on {self.holdout_frames} held-out frames ({where}; "
                    f"{_drop_text(self.steps[0])} with every op quantized)")
        floor = next((s for s in self.steps if s.check == "floor"), None)
        if self.outcome == "not_met_floor" and floor is not None:
            return self._floor_message(floor, budget, got, where)
        why = (self._what_was_tried() if self.outcome in ("not_met_nothing_left", "not_met_floor")
               else f"the search budget ran out after "
                    f"{len({s.unit for s in self.steps[1:]} - {None})} of {len(self.units)} units "
                    "were tried")
        return (f"budget NOT met ({why}): {budget}, best found {got} on {self.holdout_frames} "
                f"held-out frames ({where}); that model was written. Raise the budget, try "
                "another calibration method, or calibrate on more representative frames")

    def _floor_message(self, floor: BudgetStep, budget: str, got: str, where: str) -> str:
        """The search stopped once units were ranked: the ``floor`` check missed the budget."""
        unit = _unit(self.metric_unit)
        helpful = sum(1 for u in self.units if u.sensitivity is not None and u.sensitivity > 0)
        fitted = len(floor.excluded_units)
        fit = ("1 of them fits under the floor, and with it kept in float" if fitted == 1 else
               f"{fitted} of them fit under the floor, and with all {fitted} kept in float at "
               "once")
        parts = [
            f"budget NOT met at >= {100.0 * self.min_int8_macs:.0f}% of MACs in INT8, search "
            f"stopped early: {len(self.units)} units ranked, {helpful} helped when kept alone in "
            f"float; {fit} ({100.0 * floor.int8_mac_fraction:.1f}% of MACs in INT8) the drop was "
            f"{_drop_text(floor)}{unit}, over the budget ({budget}). An estimate: errors do not "
            "simply add up, but no subset of those units is expected to do better than all of "
            "them, so the greedy search was not run"]
        free = next((s for s in self.steps if s.check == "no floor"), None)
        if free is not None and free.drop is not None:
            verdict = "meets" if free.drop <= self.max_drop + 1e-9 else "still misses"
            parts.append(f"with every helpful unit in float ({len(free.excluded_units)}, "
                         f"{100.0 * free.int8_mac_fraction:.1f}% of MACs in INT8) the drop is "
                         f"{_drop_text(free)}{unit}, which {verdict} the budget")
        parts.append(f"best found {got} on {self.holdout_frames} held-out frames ({where}); "
                     "that model was written. Choose a looser --max-drop or a lower "
                     "--min-int8-macs from the trade-offs below, or calibrate on more "
                     "representative frames")
        return "; ".join(parts)

    def _what_was_tried(self) -> str:
        """How many units the greedy search tried, and why the others were not (once it has
        gone through every candidate)."""
        tried = {s.unit for s in self.steps[1:] if s.unit is not None}
        total = len(self.units)
        parts = [f"{len(tried)} of {total} units tried"]
        untried = [u for u in self.units if u.name not in tried]
        if self.order == "sensitivity":
            no_gain = [u for u in untried if u.sensitivity is not None and u.sensitivity <= 0.0]
            unmeasured = [u for u in untried if u.sensitivity is None]
            if no_gain:
                parts.append(f"{len(no_gain)} did not lower the distortion when kept alone in "
                             "float")
            if unmeasured:
                parts.append(f"{len(unmeasured)} not ranked")
            rest = len(untried) - len(no_gain) - len(unmeasured)
        else:
            rest = len(untried)
        if rest:
            floor = (f"less than {100.0 * self.min_int8_macs:.0f}% of MACs in INT8 or "
                     if self.min_int8_macs > 0 else "")
            parts.append(f"{rest} would have left {floor}no weighted op quantized"
                         if self.order == "sensitivity" else
                         f"{rest} after the first that would have left {floor}no weighted op "
                         "quantized")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["timing"] = dict(self.timing)
        out["details"] = dict(self.details)
        out["met"] = self.met
        out["searched"] = self.searched
        out["message"] = self.message()
        safe: dict[str, Any] = _json_safe(out)
        return safe

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetReport:
        """Rebuild a report from :meth:`to_dict`; ``InvalidCalibrationInput`` if malformed."""
        try:
            outcome = data["outcome"]
            if outcome not in OUTCOMES:
                raise ValueError(f"unknown outcome {outcome!r}")
            order = data.get("order", "sensitivity")
            if order not in SEARCH_ORDERS:
                raise ValueError(f"unknown search order {order!r}")
            units = tuple(UnitSensitivity(
                name=str(u["name"]), nodes=tuple(u["nodes"]), macs=int(u["macs"]),
                sensitivity=_float_or_none(u["sensitivity"])) for u in data["units"])
            steps = tuple(BudgetStep(
                index=int(s["index"]), unit=s["unit"], excluded_units=tuple(s["excluded_units"]),
                kept=bool(s["kept"]), drop=_float_or_none(s["drop"]), exact=bool(s["exact"]),
                subset_drop=_float_or_none(s["subset_drop"]), distortion=_float(s["distortion"]),
                written_drop=_float_or_none(s["written_drop"]),
                int8_mac_fraction=float(s["int8_mac_fraction"]), met=bool(s["met"]),
                elapsed_s=float(s["elapsed_s"]), check=_check(s.get("check")))
                for s in data["steps"])
            report = cls(
                metric=str(data["metric"]), metric_unit=str(data["metric_unit"]),
                max_drop=float(data["max_drop"]), min_int8_macs=float(data["min_int8_macs"]),
                outcome=outcome,
                holdout_frames=int(data["holdout_frames"]),
                sensitivity_frames=int(data["sensitivity_frames"]), seed=int(data["seed"]),
                search_budget_s=_float_or_none(data["search_budget_s"]),
                search_budget_steps=(None if data["search_budget_steps"] is None
                                     else int(data["search_budget_steps"])),
                total_macs=int(data["total_macs"]), chosen_step=int(data["chosen_step"]),
                excluded_nodes=tuple(data["excluded_nodes"]), units=units, steps=steps,
                timing={str(k): float(v) for k, v in data.get("timing", {}).items()},
                plot=data.get("plot"), plot_note=data.get("plot_note"), order=order,
                notes=tuple(str(n) for n in data.get("notes", ())),
                holdout_sources=tuple(str(n) for n in data.get("holdout_sources", ())),
                details=dict(data.get("details", {})), picture=data.get("picture"))
            report.chosen  # noqa: B018 - validates chosen_step
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidCalibrationInput(
                f"the budget report is malformed ({type(exc).__name__}: {exc}); it was not written "
                "by this version of xinfer-stream, or was edited") from exc
        return report


# -- reading ----------------------------------------------------------------------------------
def read_budget_report(path: str | os.PathLike[str]) -> tuple[dict[str, Any], BudgetReport | None]:
    """The quantization report at ``path`` (``model.int8.json``, or the ``.onnx`` beside it) and
    its budget section, ``None`` when no budget search was run for that model."""
    p = Path(path)
    if p.suffix == ".onnx":
        p = p.with_name(p.stem + ".json")
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise InvalidCalibrationInput(
            f"no quantization report at {str(p)!r}; give the model.int8.json written by "
            "'xinfer-stream quantize' (or the .onnx beside it)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidCalibrationInput(
            f"cannot read the quantization report {str(p)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidCalibrationInput(
            f"{str(p)!r} holds a JSON {type(data).__name__}, not a quantization report")
    budget = data.get(BUDGET_KEY)
    return data, (BudgetReport.from_dict(budget) if isinstance(budget, dict) else None)


# -- the table ----------------------------------------------------------------------------------
def describe_details(details: Mapping[str, Any]) -> str | None:
    """A metric's details on the written model as one line: the ``boxes`` metric's
    (``BoxAgreement.to_dict``) or the labelled accuracy's; None without."""
    try:
        if "fp32_accuracy" in details:
            skipped = details.get("skipped") or []
            return (f"top-1 accuracy {100.0 * float(details['int8_accuracy']):.2f}% against "
                    f"the labels of {int(details['frames'])} held-out images (FP32 "
                    f"{100.0 * float(details['fp32_accuracy']):.2f}%)"
                    + (f"; {len(skipped)} undecodable image{'s' if len(skipped) != 1 else ''} "
                       "skipped" if skipped else ""))
        return (f"mAP@0.5 {float(details['map50']):.3f} vs FP32, precision "
                f"{float(details['precision']):.3f}, recall {float(details['recall']):.3f}, F1 "
                f"{float(details['f1']):.3f} ({int(details['matched'])} of "
                f"{int(details['reference_boxes'])} FP32 boxes matched by "
                f"{int(details['candidate_boxes'])} INT8 boxes on {int(details['frames'])} "
                "held-out frames)")
    except (KeyError, TypeError, ValueError):
        return None


def format_table(report: BudgetReport, *, max_units: int | None = 10) -> str:
    """The budget report as plain-text tables: a summary, the steps, the most sensitive units.

    ``max_units``: sensitivity rows to show, most sensitive first (``None``: every unit).
    """
    lines = [report.message()]
    details = describe_details(report.details)
    if details is not None:
        lines.append(f"written model: {details}")
    if report.holdout_sources:
        lines.append(f"held-out frames from: {', '.join(report.holdout_sources)}")
    lines += [f"cannot tell: {note}" for note in report.notes]
    lines.append("")
    none = "(none: all quantized)"
    name_width = max([len(none)] + [len(_short(s.unit)) + 12 for s in report.steps]
                     + [len(_check_name(s)) for s in report.steps if s.check is not None])
    drop_head = f"drop{_unit(report.metric_unit)}"
    subset_head = f"on {report.sensitivity_frames} frames"
    lines.append(f"{'step':>5} {'unit kept in float':<{name_width}}  {drop_head:>{len(drop_head)}}"
                 f"  {'written':>8}  {subset_head:>{len(subset_head)}}  {'distortion':>10}  "
                 f"{'INT8 MACs':>9}  met")
    for step in report.steps:
        marker = "*" if step.index == report.chosen_step else " "
        name = none if step.unit is None else _short(step.unit)
        if step.check is not None:
            name = _check_name(step)
        if not step.kept:
            name = f"({name}: put back)"
        drop = _drop_text(step)
        subset = "-" if step.subset_drop is None else _fmt(step.subset_drop)
        written = "" if step.written_drop is None else _fmt(step.written_drop)
        lines.append(
            f"{step.index:>4}{marker} {name:<{name_width}}  {drop:>{len(drop_head)}}  "
            f"{written:>8}  {subset:>{len(subset_head)}}  {_fmt(step.distortion):>10}  "
            f"{100.0 * step.int8_mac_fraction:>8.1f}%  {'yes' if step.met else 'no'}")
    lines.append(f"(* the written model. drop: {report.metric} of the step's model on all "
                 f"{report.holdout_frames} held-out frames, '>=' where measuring stopped once the "
                 "budget was out of reach (the step's model is the one quantize() writes for "
                 "those units when its empirical bias correction is on, else a candidate cut "
                 "from one Q/DQ model); written: the same for the model quantize() wrote, "
                 "measured where a step met the budget and for the model chosen; the other "
                 f"columns on the {report.sensitivity_frames} sensitivity frames; with order "
                 "sensitivity, a unit is put back when keeping it in float did not lower the "
                 "distortion)")
    if not report.met:
        lines.append("")
        lines += format_tradeoffs(report)
    measured = [u for u in report.units if u.sensitivity is not None]
    lines.append("")
    if not measured:
        why = ("no search was needed" if not report.searched
               else "order input_first: units were kept in float in graph order, unranked"
               if report.order == "input_first" else "the search budget ran out first")
        lines.append(f"per-unit sensitivity: not measured ({len(report.units)} units; {why})")
    else:
        ranked = sorted(measured, key=lambda u: -float(u.sensitivity or 0.0))
        shown = ranked if max_units is None else ranked[:max_units]
        excluded = set(report.chosen.excluded_units)
        width = max(len("unit"), *(len(_short(u.name)) for u in shown))
        lines.append(f"per-unit sensitivity, most harmful first ({len(shown)} of "
                     f"{len(report.units)} units; distortion removed by keeping the unit alone "
                     f"in float, on {report.sensitivity_frames} frames):")
        lines.append(f"{'unit':<{width}}  {'sensitivity':>11}  {'MACs':>6}  in float")
        for u in shown:
            share = u.macs / report.total_macs if report.total_macs else 0.0
            lines.append(f"{_short(u.name):<{width}}  {_fmt(float(u.sensitivity or 0.0)):>11}  "
                         f"{100.0 * share:>5.1f}%  {'yes' if u.name in excluded else ''}")
    if report.timing:
        lines.append("")
        lines.append("timing: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.timing.items()))
    if report.picture:
        lines.append(f"picture: {report.picture}")
    if report.plot:
        lines.append(f"plot: {report.plot}")
    elif report.plot_note:
        lines.append(f"plot: none ({report.plot_note})")
    return "\n".join(lines)


def format_tradeoffs(report: BudgetReport) -> list[str]:
    """The best trade-offs the search measured (:meth:`BudgetReport.tradeoffs`) as table lines:
    drop against INT8 share, for choosing a looser budget or a lower floor."""
    drop_head = f"drop{_unit(report.metric_unit)}"
    lines = [f"best trade-offs found (drop vs INT8 share; budget {_fmt(report.max_drop)}, floor "
             f"{100.0 * report.min_int8_macs:.0f}% INT8):",
             f"{'INT8 MACs':>9}  {drop_head:>{len(drop_head)}}  {'in float':>8}  step"]
    for step in report.tradeoffs():
        drop = _best_drop(step)
        below = step.int8_mac_fraction < report.min_int8_macs - 1e-9
        what = ("all INT8" if not step.excluded_units and step.check is None
                else _check_name(step) if step.check is not None else f"step {step.index}")
        lines.append(f"{100.0 * step.int8_mac_fraction:>8.1f}%  "
                     f"{_fmt(float(drop or 0.0)):>{len(drop_head)}}  "
                     f"{len(step.excluded_units):>8}  {what}"
                     + ("  (below the floor: not written)" if below else "")
                     + ("  (written)" if step.index == report.chosen_step else ""))
    return lines


def format_quantization_header(data: Mapping[str, Any]) -> str:
    """A few lines about the quantization itself from ``model.int8.json`` (tolerant of fields
    it does not know)."""
    model = _section(data, "model")
    calibration = _section(data, "calibration")
    lines = [(f"model {model.get('path', '?')}: method {data.get('method', '?')}, "
              f"{calibration.get('frames', '?')} calibration frames, "
              f"{len(data.get('quantized_nodes') or [])} nodes read quantized inputs, "
              f"{len(data.get('excluded_nodes') or [])} excluded")]
    recorded = data.get("int8_share")
    if isinstance(recorded, dict):
        share = Int8Share.from_dict(recorded)
        lines.append(share.describe())
        lines.extend(f"  {line}" for line in share.float_lines())
    else:
        lines.append("INT8 share: not recorded (a report from before it was counted; quantize "
                     "again, or run 'xinfer-stream inspect' on the model)")
    tail = data.get("detection_tail")
    if isinstance(tail, list) and tail:
        lines.append(describe_detection_tail([str(n) for n in tail]))
    accuracy = data.get("accuracy")
    if isinstance(accuracy, dict):
        parts = [f"{accuracy.get('frames', '?')} held-out frames"]
        top1 = accuracy.get("top1_agreement")
        if isinstance(top1, (int, float)):
            parts.append(f"top-1 agreement {100.0 * top1:.2f}%")
        outputs = accuracy.get("outputs")
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
            cosine = outputs[0].get("cosine_mean")
            if isinstance(cosine, (int, float)):
                parts.append(f"mean cosine {cosine:.5f}")
        holdout = data.get("holdout")
        sources = holdout.get("sources") if isinstance(holdout, dict) else None
        if isinstance(sources, list) and sources:
            parts.append("from " + ", ".join(str(s) for s in sources))
        lines.append("accuracy of the written model vs FP32: " + ", ".join(parts))
        notes = accuracy.get("notes")
        if isinstance(notes, list):
            lines += [f"  cannot tell: {note}" for note in notes]
    return "\n".join(lines)


# -- the plot ---------------------------------------------------------------------------------
def picture_path_for(output: str | os.PathLike[str], metric: str) -> Path:
    """``model.int8.onnx`` -> ``model.int8.<metric>.png``: the metric's picture."""
    p = Path(output)
    return p.with_name(f"{p.stem}.{metric}.png")


def plot_path_for(output: str | os.PathLike[str]) -> Path:
    """``model.int8.onnx`` -> ``model.int8.budget.png``."""
    p = Path(output)
    return p.with_name(p.stem + ".budget.png")


def write_plot(report: BudgetReport, path: str | os.PathLike[str]) -> str | None:
    """Draw the report to ``path`` (PNG, written atomically). Returns ``None`` when done, or why
    no plot was drawn (matplotlib is not installed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed (pip install 'xinfer-stream[report]')"
    # The object-oriented API: no pyplot, so no global figure state and no GUI backend.
    figure = Figure(figsize=(12, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, width_ratios=[1, 1.6])
    kept = [s for s in report.steps if s.kept]
    xs = [len(s.excluded_units) for s in kept]
    exact = [s for s in kept if s.exact and s.drop is not None]
    bounds = [s for s in kept if not s.exact and s.drop is not None]
    left.plot([len(s.excluded_units) for s in exact], [s.drop for s in exact], marker="o",
              linestyle="none", color="tab:blue",
              label=f"step's {report.metric} drop (held-out)")
    if bounds:
        left.plot([len(s.excluded_units) for s in bounds], [s.drop for s in bounds], marker="^",
                  linestyle="none", color="tab:blue", fillstyle="none",
                  label="at least (measuring stopped)")
    screened = [s for s in kept if s.subset_drop is not None]
    if screened:
        left.plot([len(s.excluded_units) for s in screened], [s.subset_drop for s in screened],
                  marker=".", color="tab:purple", alpha=0.6,
                  label=f"on {report.sensitivity_frames} sensitivity frames")
    left.axhline(report.max_drop, color="tab:red", linestyle="--",
                 label=f"budget {_fmt(report.max_drop)}")
    chosen = report.chosen
    left.plot([len(chosen.excluded_units)], [report.drop], marker="*", markersize=14,
              color="tab:green", linestyle="none", label="written model")
    left.set_xlabel("units kept in float")
    left.set_ylabel(f"{report.metric} drop{_unit(report.metric_unit)}")
    left.set_title(f"search: {report.outcome.replace('_', ' ')}")
    macs = left.twinx()
    macs.plot(xs, [100.0 * s.int8_mac_fraction for s in kept], color="tab:gray",
              linestyle=":", marker=".", label="% MACs in INT8")
    macs.set_ylabel("% of MACs in INT8")
    macs.set_ylim(0, 105)
    handles, labels = left.get_legend_handles_labels()
    more_h, more_l = macs.get_legend_handles_labels()
    left.legend(handles + more_h, labels + more_l, loc="best", fontsize="small")

    measured = [u for u in report.units if u.sensitivity is not None]
    if measured:
        excluded = set(chosen.excluded_units)
        values = [float(u.sensitivity or 0.0) for u in measured]
        colors = ["tab:orange" if u.name in excluded else "tab:blue" for u in measured]
        right.bar(range(len(measured)), values, color=colors)
        right.set_xticks(range(len(measured)))
        right.set_xticklabels([_short(u.name, 28) for u in measured], rotation=90,
                              fontsize=5 if len(measured) > 30 else 7)
        right.set_ylabel("distortion removed when kept alone in float")
        right.set_title("per-unit sensitivity, graph order (orange: kept in float)")
    else:
        right.set_axis_off()
        right.text(0.5, 0.5, "no sensitivity analysis: " + (
            "budget met with every op quantized" if not report.searched
            else "order input_first (graph order, unranked)" if report.order == "input_first"
            else "search budget ran out"), ha="center", va="center")
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")
    return None


# -- helpers ------------------------------------------------------------------------------------
def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _short(name: str | None, width: int = 48) -> str:
    if name is None:
        return ""
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _best_drop(step: BudgetStep) -> float | None:
    """The drop measured on every held-out frame: the written model's, else the step's."""
    if step.written_drop is not None:
        return step.written_drop
    return step.drop if step.exact else None


def _check_name(step: BudgetStep) -> str:
    count = len(step.excluded_units)
    return (f"(check: all {count} that fit the floor)" if step.check == "floor"
            else f"(check: all {count} helpful, no floor)")


def _check(value: Any) -> str | None:
    if value is not None and value not in CHECKS:
        raise ValueError(f"unknown check {value!r}")
    return None if value is None else str(value)


def _drop_text(step: BudgetStep) -> str:
    if step.drop is None:
        return "-"
    return _fmt(step.drop) if step.exact else ">=" + _fmt(step.drop)


def _unit(metric_unit: str) -> str:
    return f" ({metric_unit})" if metric_unit else ""


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == 0.0:
        return "0"
    return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.3f}".rstrip("0").rstrip(".")


def _float(value: Any) -> float:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return float(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else _float(value)


def _json_safe(value: Any) -> Any:
    """JSON has no infinities: write them as strings (read back by :func:`_float`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value

