"""``quantize_with_budget()``: INT8 where it is safe, float where it hurts, found automatically.

The user gives an accuracy budget (``max_drop`` of a metric, see ``_sensitivity``) and held-out
frames. The steps:

1. Quantize with :func:`~xinfer_stream.quantize.quantize` (every quantizable op, less the
   user's own ``exclude``) and measure that model on every held-out frame; the FP32 model runs
   once over them (:class:`HoldoutEvaluator`). If it meets the budget, stop: no search runs, and
   the report says so.
2. The search's candidates are cut from one Q/DQ model (``_Candidates``: a unit kept in float
   reads its FP32 inputs, everything else keeps exactly what ``quantize`` gave it), so no
   candidate is calibrated again. That needs a model whose nodes were decided each on its own:
   the first one, or, when ``quantize``'s empirical bias correction (which tunes each layer with
   the earlier ones quantized) was on, a second one with per-weight correction (``_SearchBase``).
   Every ``quantize`` after the first reuses the first one's activation statistics
   (``statistics=``): the FP32 model runs over the calibration frames once per search.
3. Sensitivity: for each unit (a quantized Conv with its residual Add, or another quantized
   node), how much the output distortion on ``sensitivity_frames`` of the held-out frames
   shrinks when that unit alone is kept in float. Removed alone rather than quantized alone,
   because quantization errors of EfficientNet-Lite0's layers do not simply add up: the unit
   with the largest error when quantized alone (the last block's projection) makes the fully
   quantized model *worse* when kept in float, and only the removed-alone measurement sees that.
   (``order="input_first"`` skips steps 2-3: step 4 then takes the units in graph order from the
   network's input, each kept in float whatever it did, and stops at the MAC floor.)
4. Greedy: keep units in float, most harmful first, measuring the budget metric after each
   (on the model ``quantize`` writes for that exclusion list when its empirical bias correction
   is on, a ``quantize`` per step from the reused statistics; on the cut candidate otherwise),
   until the budget is met, nothing is left to exclude, or the search budget runs out. A unit
   whose exclusion does not lower the distortion (errors interact) is put back; a unit that
   would leave less than ``min_int8_macs`` of the MACs in INT8, or no weighted op quantized, is
   skipped. See :class:`_Search` for how steps that cannot meet the budget are cut short.
   With an INT8 floor that keeps some helpful unit out of reach, the search first measures
   every helpful unit that fits under the floor kept in float at once; when even that misses
   the budget, no greedy step is taken (outcome ``not_met_floor``): the best model measured so
   far is written, and the report's trade-offs (drop against INT8 share, with every helpful
   unit in float as one more point) say what a looser budget or a lower floor would buy.
5. When a step meets the budget, ``quantize(..., exclude=its nodes)`` writes the real model
   (model, calibration cache, Preprocess sidecar, ``model.int8.json``: exactly what ``quantize``
   writes for that exclusion list) and that model is measured (``_Writer``); if it misses, the
   search goes on. The report goes under the ``"budget"`` key of ``model.int8.json``, the plot to
   ``model.int8.budget.png``. When the budget cannot be met, the most promising model found is
   written and measured, ``BudgetResult.met`` is False, and a :class:`CalibrationWarning` says
   so. Every drop the report gives for a written model
   is measured on that model.

All of it happens in a private folder beside ``output``; the artifacts are moved into place only
when the search is over, so an error or an interrupt leaves nothing half-searched behind (and an
earlier model at ``output`` untouched).

Deterministic: the same model, frames, options and ``seed`` (which draws the sensitivity frames)
give the same exclusions, unless a time budget (``SearchBudget.seconds``) cuts the search short.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from .._errors import CalibrationError
from .._files import atomic_write_json, sha256_bytes, sha256_file
from ._budget_report import (BUDGET_KEY, SEARCH_ORDERS, BudgetReport, BudgetStep, Outcome,
                             SearchOrder, UnitSensitivity, format_table, picture_path_for,
                             plot_path_for, write_plot)
from ._calibrator import Calibrator, fixed_batch
from ._detection_head import describe_detection_tail
from ._evaluate import signal_notes
from ._graph import drop_dead, load_model, prepare
from ._holdout import check_holdout
from ._quantize import DEFAULT_BIAS_CORRECTION, CalibrationWarning, QuantizationResult, quantize
from ._sensitivity import (HoldoutEvaluator, Measurement, Metric, MetricFn, Unit, distortion,
                           find_units, quantized_inputs, resolve_metric)
from ._share import LOW_SHARE_MESSAGE, Int8Share, int8_share, weighted_macs

__all__ = ["BudgetResult", "SearchBudget", "SearchEstimate", "quantize_with_budget"]

Progress = Callable[[str, int, int], None]
Estimate = Callable[["SearchEstimate"], None]
# Budgets are compared with this slack: a top-1 drop of 0.3 points computed as 100 * (1 - k/n)
# must count as meeting max_drop=0.3 despite float rounding.
_TOLERANCE = 1e-9
# When the budget is not met: how many bounded steps are measured on every held-out frame before
# the best one is written (each costs a full pass, and a quantize under empirical correction).
_FINALISTS = 3


@dataclass(frozen=True)
class SearchBudget:
    """Bounds on the search: ``seconds`` of wall time (no new measurement starts after it) and
    ``steps`` greedy exclusions. ``None``: unbounded."""

    seconds: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"search budget seconds must be positive, got {self.seconds!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or self.steps < 1):
            raise ValueError(f"search budget steps must be a positive int, got {self.steps!r}")

    @classmethod
    def parse(cls, text: str) -> SearchBudget:
        """``"300"``, ``"300s"``, ``"5m"``, ``"1h"`` (time), ``"20steps"``, or both separated by a
        comma (``"10m,30steps"``)."""
        seconds: float | None = None
        steps: int | None = None
        for part in text.replace(" ", "").lower().split(","):
            match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h|steps?)?", part)
            if match is None:
                raise ValueError(
                    f"search budget {text!r} is not understood; give seconds ('300', '300s'), "
                    "minutes ('5m'), hours ('1h'), steps ('20steps'), or one of each "
                    "('5m,20steps')")
            value, suffix = match.groups()
            if suffix and suffix.startswith("step"):
                if "." in value:
                    raise ValueError(f"search budget steps must be whole, got {part!r}")
                steps = int(value)
            else:
                seconds = float(value) * {"s": 1, "m": 60, "h": 3600}[suffix or "s"]
        return cls(seconds=seconds, steps=steps)


@dataclass(frozen=True)
class SearchEstimate:
    """How long the rest of a budget search should take, from what its own measurements cost.

    Sent to ``quantize_with_budget(estimate=...)`` once the FP32 reference and the fully
    quantized model are measured (``stage`` ``"baseline"``), again once the units are ranked
    (``"ranked"``) and after the floor check (``"floor check"``). ``seconds_left`` prices the plan
    at its largest: ``steps`` greedy steps, each a pass over the sensitivity frames, a held-out
    evaluation and (``write_s`` > 0) a ``quantize``; the search stops sooner when a step meets
    the budget, and a top-1 evaluation stops once the budget is out of reach. A time
    :class:`SearchBudget` caps the search part. ``write_and_verify_s`` is the end: the most
    promising models measured on every frame, the chosen one written and measured.
    """

    stage: str
    elapsed_s: float           # since quantize_with_budget() was called
    seconds_left: float        # at most, everything below included
    evaluation_s: float        # one held-out evaluation (every held-out frame), as measured
    screen_s: float            # one pass over the sensitivity frames, as measured
    write_s: float             # one quantize() per step (0: steps are cut, not written)
    ranking: int               # sensitivity passes still to run
    steps: int                 # greedy steps still to run, at most
    checks: int                # reachability checks still to run, at most
    write_and_verify_s: float
    holdout_frames: int
    sensitivity_frames: int

    @property
    def total_s(self) -> float:
        """The whole search, at most: what has run and what is left."""
        return self.elapsed_s + self.seconds_left


@dataclass(frozen=True)
class BudgetResult:
    """What :func:`quantize_with_budget` wrote and measured."""

    quantization: QuantizationResult      # the artifacts written (the chosen model)
    report: BudgetReport
    report_path: Path                     # model.int8.json, holding the report under "budget"
    plot_path: Path | None                # model.int8.budget.png (None without matplotlib)
    picture_path: Path | None = None      # the metric's picture (boxes: model.int8.boxes.png)

    @property
    def model_path(self) -> Path:
        return self.quantization.model_path

    @property
    def met(self) -> bool:
        return self.report.met

    @property
    def drop(self) -> float:
        return self.report.drop

    @property
    def excluded_nodes(self) -> tuple[str, ...]:
        """Nodes the search kept in float (the user's own ``exclude`` not included)."""
        return self.report.excluded_nodes

    @property
    def int8_mac_fraction(self) -> float:
        return self.report.int8_mac_fraction

    def summary(self) -> str:
        share = self.quantization.int8_share
        tail = self.quantization.detection_tail
        return "\n".join([format_table(self.report), "", share.describe(),
                          *(f"  {line}" for line in share.float_lines()),
                          *([describe_detection_tail(tail)] if tail else [])])


def quantize_with_budget(
        model: str | os.PathLike[str], calibrator: Calibrator, output: str | os.PathLike[str],
        *, holdout: Calibrator, max_drop: float, metric: str | Metric | MetricFn = "top1",
        min_int8_macs: float = 0.0, search_budget: SearchBudget | None = None,
        order: SearchOrder = "sensitivity",
        sensitivity_frames: int = 32, seed: int = 0, progress: Progress | None = None,
        estimate: Estimate | None = None, exclude: Sequence[str] = (),
        threads: int | None = None, **options: Any) -> BudgetResult:
    """Quantize ``model`` to ``output`` keeping ``metric``'s drop on ``holdout`` within
    ``max_drop``; see the module docstring for the steps and ``_sensitivity`` for the metrics.

    ``holdout``: frames never used for calibration (a fixed set: every candidate is measured on
    all of them). ``min_int8_macs``: the search never keeps so much in float that less than this
    fraction of the multiply-accumulates stays INT8 (0.85: at least 85%). ``search_budget``:
    bounds the search (:class:`SearchBudget`). ``order``: ``"sensitivity"`` (steps 3-4 of the
    module docstring) or ``"input_first"``: no sensitivity analysis; units are kept in float in
    graph order from the network's input, the next one at each step, until the budget is met (a
    few steps where the early layers carry the error, as in EfficientNet-Lite0 on these clips;
    see BENCHMARKS.md). Every step is measured either way.
    ``metric``: ``"top1"``, ``"cosine"``, ``"boxes"`` (detectors: 1 - mAP@0.5 against the FP32
    detections, decoded by ``detect("auto")``; :func:`~xinfer_stream.quantize.box_metric` for
    another format or threshold), a :class:`Metric` or a callable.
    ``sensitivity_frames``: how many held-out frames (drawn with ``seed``) rank the units.
    ``progress(stage, done, total)``: stages ``statistics`` (from ``quantize``), ``reference``,
    ``sensitivity`` (units), ``search`` (steps), ``write and verify`` (models written or measured
    on every held-out frame at the end). ``estimate(SearchEstimate)``: how long the rest should
    take, sent as soon as the first measurements give the costs and again as the plan narrows.
    ``exclude``, ``threads`` and every other keyword argument
    (``method``, ``percentile``, ``per_channel``, ...) go to :func:`quantize`; ``holdout`` does
    not (the search measures the model itself; call :func:`evaluate` for per-tensor SQNR).

    Returns a :class:`BudgetResult`; when the budget is not met the best model found is still
    written, ``result.met`` is False and a :class:`CalibrationWarning` carries the message.
    Raises what :func:`quantize` raises, and ``ValueError`` for a bad ``max_drop``.
    """
    started = time.perf_counter()
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) \
            or not math.isfinite(max_drop) or max_drop < 0:
        raise ValueError(f"max_drop must be a finite number >= 0, got {max_drop!r}")
    if order not in SEARCH_ORDERS:
        raise ValueError(f"order must be one of {SEARCH_ORDERS}, got {order!r}")
    if not 0.0 <= min_int8_macs <= 1.0:
        raise ValueError(f"min_int8_macs is a fraction in [0, 1], got {min_int8_macs!r}")
    if "holdout" in options:
        raise TypeError("pass the held-out frames as holdout= (a keyword of its own)")
    chosen_metric = resolve_metric(metric, preprocess=holdout.preprocess)
    budget = search_budget or SearchBudget()
    check_holdout(calibrator, holdout, stacklevel=2)

    # Every artifact is made in a private folder beside the output and moved into place only
    # once the search is over: an error or an interrupt leaves no half-searched model behind.
    destination = Path(output)
    destination.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".budget",
                                    dir=destination.parent))
    try:
        with warnings.catch_warnings():
            # Every candidate is quantized; only the written model's INT8 share is worth a
            # warning (given below).
            warnings.filterwarnings("ignore", message=LOW_SHARE_MESSAGE,
                                    category=CalibrationWarning)
            report, result = _search_and_write(
                model, calibrator, workdir / destination.name, holdout=holdout,
                max_drop=float(max_drop), min_int8_macs=float(min_int8_macs),
                metric=chosen_metric, budget=budget, order=order,
                sensitivity_frames=sensitivity_frames, seed=seed, progress=progress,
                estimate=estimate, exclude=tuple(exclude), threads=threads, options=options,
                started=started)
        published = _publish(workdir, destination.parent)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = replace(result, model_path=published[result.model_path.name],
                     report_path=published[result.report_path.name],
                     cache_path=published[result.cache_path.name],
                     preprocess_path=(None if result.preprocess_path is None
                                      else published[result.preprocess_path.name]))
    if not report.met:
        warnings.warn(report.message(), CalibrationWarning, stacklevel=2)
    low = result.int8_share.warning(Path(model).name)
    if low is not None:
        warnings.warn(low, CalibrationWarning, stacklevel=2)
    return BudgetResult(quantization=result, report=report, report_path=result.report_path,
                        plot_path=published.get(report.plot) if report.plot else None,
                        picture_path=published.get(report.picture) if report.picture else None)


def _search_and_write(model: str | os.PathLike[str], calibrator: Calibrator, output: Path, *,
                      holdout: Calibrator, max_drop: float, min_int8_macs: float, metric: Metric,
                      budget: SearchBudget, order: SearchOrder, sensitivity_frames: int, seed: int,
                      progress: Progress | None, estimate: Estimate | None,
                      exclude: tuple[str, ...], threads: int | None,
                      options: dict[str, Any], started: float
                      ) -> tuple[BudgetReport, QuantizationResult]:
    """Steps 1-5 of the module docstring, every artifact written at ``output``."""
    first = quantize(model, calibrator, output, exclude=exclude, threads=threads,
                     progress=progress, **options)
    quantize_s = time.perf_counter() - started

    reference_started = time.perf_counter()
    source = load_model(model)
    fp32 = prepare(source, name=Path(model).name)
    # A model fixed at N frames a run is measured N at a time (quantize() does the same for
    # the calibration frames).
    holdout = holdout.for_model_batch(fixed_batch(source))
    # The reference is the user's FP32 model as given (what evaluate() compares with).
    evaluator = HoldoutEvaluator(source, holdout, sensitivity_frames=sensitivity_frames,
                                 seed=seed, threads=threads, progress=progress)
    notes = (metric.signal or signal_notes)(evaluator.reference)
    if notes:
        warnings.warn("the held-out frames cannot measure this model well: " + " ".join(notes),
                      CalibrationWarning, stacklevel=3)
    shape = evaluator.sample.shape
    macs = weighted_macs(fp32, shape, threads=threads)
    reference_s = time.perf_counter() - reference_started
    # Candidates are cut from a model whose nodes were each decided on their own (see
    # _Candidates); quantize's empirical bias correction is not such a model, so the search
    # gets its own, with per-weight correction, made only if a search is needed.
    search_base = _SearchBase(model, calibrator, output.parent / "search-base" / output.name,
                              first, fp32, exclude, threads, options)
    units = find_units(search_base.first_model, macs)
    share = int8_share(search_base.first_model, shape, macs=macs,
                       shape_source="the held-out frames' input shape")

    writer = _Writer(model, calibrator, output, exclude, threads, options, first, evaluator,
                     metric)
    search = _Search(search_base, evaluator, units, share, metric, max_drop, min_int8_macs,
                     budget, order, writer, progress, estimate, started=started,
                     write_guess=_seconds_without_statistics(first))
    outcome = search.run()
    chosen = search.chosen()
    chosen_units = set(chosen.excluded_units)
    excluded_nodes = tuple(n for u in units if u.name in chosen_units for n in u.nodes)
    # Every number reported for the written model is the written file's: the search measured
    # this very file (same bytes) or it is measured now; its INT8 share is counted on it.
    result, final = search.finish(excluded_nodes)
    if final != chosen.written_drop:
        chosen = replace(chosen, written_drop=final, met=final <= max_drop + _TOLERANCE)
        if chosen.met:
            outcome = "met_without_search" if chosen.index == 0 else "met_after_search"
        elif outcome in ("met_without_search", "met_after_search"):
            outcome = "not_met_nothing_left"
    chosen = replace(chosen, int8_mac_fraction=result.int8_share.fraction)
    search.steps[chosen.index] = chosen
    details: dict[str, Any] = {}
    picture: str | None = None
    if metric.details is not None or metric.draw is not None:
        # One more pass over the held-out frames, on the written file's very bytes.
        written = evaluator.outputs(result.model_path.read_bytes())
        if metric.details is not None:
            details = metric.details(evaluator.reference, written)
        if metric.draw is not None and holdout.preprocess is not None:
            from ..video import write_png

            picture_path = picture_path_for(result.model_path, metric.name)
            write_png(picture_path, metric.draw(evaluator.reference, written, holdout.frame))
            picture = picture_path.name

    timing = {"quantize_s": quantize_s, "reference_s": reference_s,
              "baseline_s": search.baseline_s, "search_base_s": search_base.seconds,
              "sensitivity_s": search.sensitivity_s - search_base.seconds,
              "search_s": search.greedy_s - writer.seconds,
              "write_and_verify_s": writer.seconds, "total_s": time.perf_counter() - started}
    report = BudgetReport(
        metric=metric.name, metric_unit=metric.unit, max_drop=max_drop,
        min_int8_macs=min_int8_macs, outcome=outcome, holdout_frames=evaluator.frames,
        sensitivity_frames=evaluator.sensitivity_frames, seed=seed,
        search_budget_s=budget.seconds, search_budget_steps=budget.steps,
        total_macs=share.total_macs, chosen_step=chosen.index, excluded_nodes=excluded_nodes,
        units=tuple(UnitSensitivity(u.name, u.nodes, u.macs, search.sensitivity.get(u.name))
                    for u in units),
        steps=tuple(search.steps), timing={k: round(v, 3) for k, v in timing.items()},
        order=order, notes=notes, holdout_sources=holdout.source_names, details=details,
        picture=picture)
    plot_path = plot_path_for(result.model_path)
    note = write_plot(report, plot_path)
    report = replace(report, plot=plot_path.name if note is None else None, plot_note=note)
    _merge_into_report(result.report_path, report, result.model_path)
    return report, result


def _seconds_without_statistics(result: QuantizationResult) -> float:
    """What ``result``'s ``quantize`` took less its calibration pass, from the timing its report
    records: what a ``quantize`` from reused statistics should take. All of it if not recorded."""
    try:
        timing = json.loads(result.report_path.read_text()).get("timing", {})
        return max(0.0, result.seconds - float(timing.get("statistics_s", 0.0)))
    except (OSError, ValueError, TypeError, AttributeError):
        return result.seconds


def _publish(workdir: Path, destination: Path) -> dict[str, Path]:
    """Move every file of ``workdir`` into ``destination`` (each move atomic), the model first
    and the report that describes it last; returns name -> new path."""
    files = sorted((p for p in workdir.iterdir() if p.is_file()),
                   key=lambda p: (p.suffix != ".onnx", p.suffix == ".json", p.name))
    moved: dict[str, Path] = {}
    for path in files:
        target = destination / path.name
        os.replace(path, target)
        moved[path.name] = target
    return moved


# -- candidates: the written Q/DQ model with some nodes returned to float ---------------------
class _Candidates:
    """Q/DQ models with some nodes kept in float, cut from the model :func:`quantize` wrote.

    Keeping a node in float means it reads what it reads in the FP32 model: the float activation
    instead of its ``DequantizeLinear``, the float weight, the original bias instead of a
    bias-corrected one; Q/DQ nodes that nobody reads any more go. Whatever ``quantize`` decided
    for every other node (scales, weight rounding, bias correction) stays exactly as it was, and
    no statistics are collected again. That is what ``quantize(exclude=...)`` produces as long as
    its choices for one node do not depend on which other nodes are excluded (``_SearchBase``
    picks such a model; ``_Writer`` measures what is finally written either way).
    """

    def __init__(self, qdq_path: Path, fp32: onnx.ModelProto) -> None:
        self._qdq_bytes = qdq_path.read_bytes()
        self.qdq = onnx.load_from_string(self._qdq_bytes)
        self._fp32_nodes = {n.name: n for n in fp32.graph.node}
        self._fp32_initializers = {t.name: t for t in fp32.graph.initializer}
        quantized = quantized_inputs(self.qdq)
        self.quantized_nodes = tuple(n.name for n in self.qdq.graph.node if n.name in quantized)

    def build(self, nodes: Sequence[str]) -> bytes:
        """The serialized Q/DQ model with ``nodes`` (quantized node names) kept in float."""
        if not nodes:
            return self._qdq_bytes
        wanted = set(nodes)
        unknown = wanted.difference(self.quantized_nodes)
        if unknown:
            raise ValueError(f"not quantized nodes of this model: {sorted(unknown)}")
        model = onnx.ModelProto()
        model.CopyFrom(self.qdq)
        graph = model.graph
        present = {t.name for t in graph.initializer}
        for node in graph.node:
            if node.name not in wanted:
                continue
            original = self._fp32_nodes.get(node.name)
            if original is None or original.op_type != node.op_type:
                raise CalibrationError(
                    f"internal: node {node.name!r} of the Q/DQ model has no {node.op_type} "
                    "counterpart in the FP32 model; the budget search cannot return it to float")
            del node.input[:]
            node.input.extend(original.input)
            for tensor in original.input:
                if tensor in self._fp32_initializers and tensor not in present:
                    graph.initializer.append(self._fp32_initializers[tensor])
                    present.add(tensor)
        drop_dead(graph, ops=("QuantizeLinear", "DequantizeLinear"))
        serialized: bytes = model.SerializeToString()
        return serialized


def _decides_jointly(options: dict[str, Any]) -> bool:
    """Whether ``quantize`` with these options decides a node in relation to the others (its
    empirical bias correction, the default), so a node returned to float changes the rest."""
    return options.get("bias_correction", DEFAULT_BIAS_CORRECTION) not in ("weights", "none", False)


class _SearchBase:
    """The Q/DQ models of the search: the one :func:`quantize` wrote first (step 0, measured as
    it is) and the one candidates are cut from (:class:`_Candidates`).

    They are the same model unless ``quantize`` decides nodes in relation to each other (its
    empirical bias correction tunes each layer's bias with the earlier layers quantized); then
    the candidates come from a second ``quantize`` with per-weight bias correction, made the
    first time a candidate is needed (never when no search runs).
    """

    def __init__(self, model: str | os.PathLike[str], calibrator: Calibrator, path: Path,
                 first: QuantizationResult, fp32: onnx.ModelProto, exclude: tuple[str, ...],
                 threads: int | None, options: dict[str, Any]) -> None:
        self._model = model
        self._calibrator = calibrator
        self._path = path
        self._first = first
        self._fp32 = fp32
        self._exclude = exclude
        self._threads = threads
        self._options = options
        self.first_bytes = first.model_path.read_bytes()
        self.first_model = onnx.load_from_string(self.first_bytes)
        self._candidates: _Candidates | None = None
        self.seconds = 0.0

    @property
    def costs_a_quantize(self) -> bool:
        """Whether the first candidate will cost a ``quantize`` (not made yet, and needed)."""
        return self._candidates is None and _decides_jointly(self._options)

    def build(self, nodes: Sequence[str]) -> bytes:
        """A candidate: the search's model with ``nodes`` kept in float."""
        if self._candidates is None:
            source = self._first.model_path
            if _decides_jointly(self._options):
                began = time.perf_counter()
                self._path.parent.mkdir(parents=True, exist_ok=True)
                source = quantize(self._model, self._calibrator, self._path,
                                  exclude=self._exclude, threads=self._threads,
                                  statistics=self._first.statistics,
                                  **{**self._options, "bias_correction": "weights"}).model_path
                self.seconds += time.perf_counter() - began
            self._candidates = _Candidates(source, self._fp32)
        return self._candidates.build(nodes)


class _Writer:
    """Writes the model for an exclusion list with :func:`quantize` and measures what it wrote.

    Sensitivities are measured on candidates cut from one Q/DQ model (``_SearchBase``);
    ``quantize`` with those nodes excluded may decide other nodes differently (its empirical bias
    correction measures each layer with the layers before it quantized as they are in that
    model). Then (``writes_steps``) every greedy step is the written model itself, a
    ``quantize`` from the reused statistics. Otherwise (bias correction ``"weights"`` or
    ``"none"``) the candidate is what would be written: it is written and measured only when it
    meets the budget and for the model finally chosen. Either way the report's numbers for the
    written model are measured on the file written (:meth:`measure`; a file already measured,
    same SHA-256, is not measured again).
    """

    def __init__(self, model: str | os.PathLike[str], calibrator: Calibrator, output: Path,
                 exclude: tuple[str, ...], threads: int | None, options: dict[str, Any],
                 first: QuantizationResult, evaluator: HoldoutEvaluator, metric: Metric) -> None:
        self._model = model
        self._calibrator = calibrator
        self._output = output
        self._exclude = exclude
        self._threads = threads
        self._options = options
        self._evaluator = evaluator
        self._metric = metric
        self.result = first
        self._statistics = first.statistics
        self._nodes: tuple[str, ...] = ()
        self.seconds = 0.0
        self.writes = 0                          # quantize() calls, and their seconds
        self.write_seconds = 0.0
        self._measured: dict[str, float] = {}    # SHA-256 of a model -> its drop, every frame
        # Empirical bias correction tunes each layer with the layers before it quantized as the
        # exclusion list leaves them: a cut candidate is then not what is written, so the
        # greedy steps measure written models (a quantize each, from the reused statistics).
        self.writes_steps = _decides_jointly(options)

    def write(self, nodes: Sequence[str]) -> QuantizationResult:
        """The artifacts of ``quantize`` with ``nodes`` (and the user's exclusions) in float."""
        wanted = tuple(sorted(nodes))
        if wanted != self._nodes:
            began = time.perf_counter()
            self.result = quantize(
                self._model, self._calibrator, self._output, threads=self._threads,
                exclude=self._exclude + tuple(re.escape(n) for n in wanted),
                statistics=self._statistics, **self._options)
            self._nodes = wanted
            spent = time.perf_counter() - began
            self.seconds += spent
            self.writes += 1
            self.write_seconds += spent
        return self.result

    def known(self, model: bytes) -> float | None:
        """``model``'s drop on every held-out frame if it was measured already."""
        return self._measured.get(sha256_bytes(model))

    def record(self, model: bytes, drop: float) -> None:
        """``model``'s drop on every held-out frame, measured elsewhere."""
        self._measured[sha256_bytes(model)] = drop

    def measure(self, nodes: Sequence[str]) -> float:
        """Write the model with ``nodes`` in float and return the written file's drop on every
        held-out frame."""
        written = self.write(nodes).model_path.read_bytes()
        key = sha256_bytes(written)
        if key not in self._measured:
            began = time.perf_counter()
            self._measured[key] = self._evaluator.measure(written, self._metric).drop
            self.seconds += time.perf_counter() - began
        return self._measured[key]


# -- the search ---------------------------------------------------------------------------------
class _Cost:
    """Seconds one kind of measurement takes, averaged over those timed."""

    def __init__(self) -> None:
        self._total = 0.0
        self._count = 0

    def add(self, seconds: float) -> None:
        self._total += seconds
        self._count += 1

    @property
    def mean(self) -> float:
        return self._total / self._count if self._count else 0.0


class _Search:
    """Sensitivity analysis, then greedy exclusion; the steps and sensitivities it measured.

    Every step is screened on the sensitivity frames first (one cheap pass): a unit whose
    exclusion does not lower the distortion there is put back (the step is recorded with
    ``kept`` False); with a countable metric (top-1) a step whose failures on those frames already
    exceed the budget goes no further, and a measurement on every held-out frame stops as soon
    as the budget is out of reach (:meth:`HoldoutEvaluator.measure`). Only steps that can meet
    the budget cost a full pass.

    Where the INT8 floor keeps a helpful unit out of reach, the greedy steps are preceded by one
    check (:meth:`_floor_unreachable`): if every helpful unit that fits under the floor, kept in
    float at once, misses the budget, the greedy search is not run.

    What each kind of measurement costs is timed as it runs; :meth:`_send_estimate` prices what
    is left of the plan with it (:class:`SearchEstimate`).
    """

    def __init__(self, candidates: _SearchBase, evaluator: HoldoutEvaluator,
                 units: tuple[Unit, ...], share: Int8Share, metric: Metric, max_drop: float,
                 min_int8_macs: float, budget: SearchBudget, order: SearchOrder,
                 writer: _Writer, progress: Progress | None, estimate: Estimate | None, *,
                 started: float, write_guess: float) -> None:
        self._candidates = candidates
        self._writer = writer
        self._evaluator = evaluator
        self._units = units
        self._share = share          # the fully quantized model's
        self._metric = metric
        self._max_drop = max_drop
        self._min_int8_macs = min_int8_macs
        self._budget = budget
        self._order = order
        self._progress = progress
        self._started = time.perf_counter()
        self.steps: list[BudgetStep] = []
        self.sensitivity: dict[str, float] = {}
        self._search_distortion = 0.0
        self.baseline_s = 0.0
        self.sensitivity_s = 0.0
        self.greedy_s = 0.0
        self._estimate = estimate
        self._call_started = started        # when quantize_with_budget() was called
        self._write_guess = write_guess     # a quantize's seconds, until one is timed
        self._screen_cost = _Cost()
        self._evaluation_cost = _Cost()
        self._verify_done = 0
        self._verify_total = 1

    def run(self) -> Outcome:
        # The fully quantized model is measured on every held-out frame whatever the budget:
        # its drop is the number users compare the search's outcome with.
        baseline = self._step(None, (), self._candidates.first_bytes, complete=True)
        if baseline.drop is None:
            raise CalibrationError("internal: the fully quantized model was not measured")
        baseline = self._settle(baseline, written_drop=baseline.drop)   # it is the written model
        self.baseline_s = time.perf_counter() - self._started
        if baseline.met:
            return "met_without_search"
        rankable = [u for u in self._units if self._keeps_weighted_op(u.nodes)]
        fits_alone = [u for u in (rankable if self._order == "sensitivity" else self._prefix())
                      if self._fits(u.nodes)]
        self._send_estimate("baseline", ranking=len(rankable) if self._order == "sensitivity"
                            else 0, steps=len(fits_alone), checks=self._may_check(fits_alone),
                            base=True)
        began = time.perf_counter()
        finished = True
        if self._order == "sensitivity":
            self._search_distortion = self._evaluator.subset_distortion(self._candidates.build(()))
            finished = self._rank(self._search_distortion)
        self.sensitivity_s = time.perf_counter() - began
        began = time.perf_counter()
        try:
            if not finished:
                outcome: Outcome = "not_met_search_budget"
            elif self._order == "sensitivity" and self._floor_unreachable():
                outcome = "not_met_floor"
            else:
                outcome = self._greedy()
            if outcome != "met_after_search" and self._write_best():
                outcome = "met_after_search"    # the written model did better than its candidate
            return outcome
        finally:
            self.greedy_s = time.perf_counter() - began

    def finish(self, nodes: Sequence[str]) -> tuple[QuantizationResult, float]:
        """Write the chosen model (``nodes`` in float) and measure the file: the last item of
        the ``write and verify`` stage."""
        result = self._writer.write(nodes)
        drop = self._writer.measure(nodes)
        self._verified(last=True)
        return result, drop

    # -- the estimate ---------------------------------------------------------------------------
    def _write_cost(self) -> float:
        """One ``quantize`` from the reused statistics: as timed, else the first one's time less
        its calibration pass."""
        writer = self._writer
        return writer.write_seconds / writer.writes if writer.writes else self._write_guess

    def _send_estimate(self, stage: str, *, ranking: int, steps: int, checks: int,
                       base: bool = False) -> None:
        """Price what is left of the plan with the costs measured so far (SearchEstimate)."""
        if self._estimate is None:
            return
        if self._budget.steps is not None:
            steps = min(steps, max(0, self._budget.steps - self._steps_taken()))
        screen, evaluation = self._screen_cost.mean, self._evaluation_cost.mean
        write = self._write_cost()
        per_step = write if self._writer.writes_steps else 0.0
        search = (ranking * screen + steps * (screen + evaluation + per_step)
                  + checks * (screen + evaluation + per_step)
                  + (write if base and self._candidates.costs_a_quantize else 0.0))
        if self._budget.seconds is not None:
            spent = time.perf_counter() - self._started
            search = min(search, max(0.0, self._budget.seconds - spent))
        # The end, at most: the finalists measured on every frame (each a quantize where steps
        # are written), then the chosen model written and measured.
        finish = _FINALISTS * (evaluation + per_step) + write + evaluation
        self._estimate(SearchEstimate(
            stage=stage, elapsed_s=time.perf_counter() - self._call_started,
            seconds_left=search + finish, evaluation_s=evaluation, screen_s=screen,
            write_s=per_step, ranking=ranking, steps=steps, checks=checks,
            write_and_verify_s=finish, holdout_frames=self._evaluator.frames,
            sensitivity_frames=self._evaluator.sensitivity_frames))

    def _may_check(self, fits_alone: Sequence[Unit]) -> int:
        """Floor checks the plan may hold: the one before the greedy steps, when the floor may
        keep a unit out of reach (the second one replaces the greedy steps)."""
        return int(self._order == "sensitivity" and self._min_int8_macs > 0
                   and len(fits_alone) >= 1)

    # -- the floor check ------------------------------------------------------------------------
    def _floor_unreachable(self) -> bool:
        """Whether the budget is out of reach under the INT8 floor, estimated by one measurement.

        Takes the helpful units (sensitivity > 0) most harmful first, as the greedy search does,
        and keeps every one that fits under the floor: the most the greedy search can keep in
        float. Measured only when the floor leaves a helpful unit out and some fit (when none
        does, the greedy search has nothing to try and ends at once). Errors do not add up, so
        this is an estimate, not a proof: a subset could do better than the whole set, but each
        of these units lowered the distortion when kept alone in float, so none is expected to
        do better. When the set misses the budget, every helpful unit in float (floor ignored, a
        weighted op still quantized) is measured too, for the report's trade-offs."""
        helpful = sorted((u for u in self._units if self.sensitivity.get(u.name, 0.0) > 0.0),
                         key=lambda u: -self.sensitivity[u.name])
        fitted: list[Unit] = []
        everything: list[Unit] = []
        binds = False
        for unit in helpful:
            if not self._keeps_weighted_op(self._nodes_of_units([*everything, unit])):
                continue
            everything.append(unit)
            if self._fits(self._nodes_of_units([*fitted, unit])):
                fitted.append(unit)
            else:
                binds = True
        if not binds or self._min_int8_macs <= 0 or not fitted:
            self._send_estimate("ranked", ranking=0, steps=len(helpful), checks=0)
            return False
        self._send_estimate("ranked", ranking=0, steps=len(fitted), checks=1)
        check = self._check("floor", fitted)
        if check.drop is not None and check.drop <= self._max_drop + _TOLERANCE:
            self._send_estimate("floor check", ranking=0, steps=len(fitted), checks=0)
            return False
        self._send_estimate("floor check", ranking=0, steps=0,
                            checks=int(len(everything) > len(fitted)))
        if len(everything) > len(fitted):
            self._check("no floor", everything)
        return True

    def _check(self, check: str, units: Sequence[Unit]) -> BudgetStep:
        """Measure ``units`` kept in float at once on every held-out frame; a step marked
        ``check`` (never a greedy step)."""
        done = 1 if check == "floor" else 2
        if self._progress is not None:
            self._progress("floor check", done - 1, done)
        step = self._step(None, tuple(units), self._model(self._nodes_of_units(units)),
                          complete=True)
        step = replace(step, check=check)
        self.steps[step.index] = step
        if self._progress is not None:
            self._progress("floor check", done, done)
        return step

    def _steps_taken(self) -> int:
        """Greedy steps so far (not step 0, not the checks)."""
        return sum(1 for s in self.steps[1:] if s.check is None)

    def _nodes_of_units(self, units: Sequence[Unit]) -> list[str]:
        return sorted({n for u in units for n in u.nodes})

    def _fits(self, nodes: Sequence[str]) -> bool:
        """Whether ``nodes`` in float leave at least the floor's share of MACs in INT8 and a
        weighted op quantized."""
        return self._keeps_weighted_op(nodes) and \
            self._int8_fraction(nodes) >= self._min_int8_macs - _TOLERANCE

    def _prefix(self) -> list[Unit]:
        """Order ``input_first``: the longest run of units from the input that fits."""
        taken: list[Unit] = []
        for unit in self._units:
            if not self._fits(self._nodes_of_units([*taken, unit])):
                break
            taken.append(unit)
        return taken

    # -- write and verify -----------------------------------------------------------------------
    def _start_verify(self, total: int) -> None:
        self._verify_done, self._verify_total = 0, total
        if self._progress is not None:
            self._progress("write and verify", 0, total)

    def _verified(self, *, last: bool = False) -> None:
        self._verify_done = self._verify_total if last else self._verify_done + 1
        if self._progress is not None:
            self._progress("write and verify", self._verify_done, self._verify_total)

    def chosen(self) -> BudgetStep:
        """The step that met the budget, else the written step with the lowest drop (fewest
        exclusions on ties)."""
        for step in self.steps:
            if step.met:
                return step
        return min((s for s in self.steps if s.written_drop is not None),
                   key=lambda s: (s.written_drop, s.index))

    def _out_of_time(self) -> bool:
        seconds = self._budget.seconds
        return seconds is not None and time.perf_counter() - self._started >= seconds

    def _rank(self, baseline: float) -> bool:
        """Each unit's sensitivity: how much keeping it alone in float lowers the distortion on
        the sensitivity frames. False if the time budget ran out first."""
        units = [u for u in self._units if self._keeps_weighted_op(u.nodes)]
        for done, unit in enumerate(units):
            if self._out_of_time():
                return False
            began = time.perf_counter()
            self.sensitivity[unit.name] = baseline - self._evaluator.subset_distortion(
                self._candidates.build(unit.nodes))
            self._screen_cost.add(time.perf_counter() - began)
            if self._progress is not None:
                self._progress("sensitivity", done + 1, len(units))
        return True

    def _greedy(self) -> Outcome:
        # "sensitivity": most harmful first (graph order on ties); a unit whose exclusion alone
        # did not lower the distortion is not a candidate. "input_first": graph order, every
        # unit kept (no screening: the next one is tried whatever this one did).
        if self._order == "input_first":
            order = list(self._units)
        else:
            order = sorted((u for u in self._units if self.sensitivity.get(u.name, 0.0) > 0.0),
                           key=lambda u: -self.sensitivity[u.name])
        excluded: list[Unit] = []
        # Steps are measured on the model quantize writes where cut candidates differ from it
        # (empirical bias correction), so they are compared with the written all-INT8 model.
        current = self.steps[0].distortion if self._writer.writes_steps else self._search_distortion
        for done, unit in enumerate(order):
            trial = [*excluded, unit]
            nodes = sorted({n for u in trial for n in u.nodes})
            if not self._fits(nodes):
                if self._order == "input_first":
                    break       # a prefix that long crosses the floor; so would every longer one
                continue
            if self._out_of_time() or (self._budget.steps is not None
                                       and self._steps_taken() >= self._budget.steps):
                return "not_met_search_budget"
            step = self._step(unit.name, tuple(trial), self._model(nodes),
                              better_than=current if self._order == "sensitivity" else None)
            if self._progress is not None:
                self._progress("search", done + 1, len(order))
            if self._meets(step):
                # It meets the budget: what is written for it is what was measured, or is
                # written now and measured.
                self._start_verify(1)
                step = self._settle(step, written_drop=self._writer.measure(nodes))
            if step.kept:
                excluded, current = trial, step.distortion
            if step.met:
                return "met_after_search"
        return "not_met_nothing_left"

    def _meets(self, step: BudgetStep) -> bool:
        return (step.kept and step.exact and step.drop is not None
                and step.drop <= self._max_drop + _TOLERANCE)

    def _settle(self, step: BudgetStep, *, written_drop: float) -> BudgetStep:
        """Record the drop of the model ``quantize`` writes for ``step``'s exclusions."""
        settled = replace(step, written_drop=written_drop,
                          met=written_drop <= self._max_drop + _TOLERANCE)
        self.steps[step.index] = settled
        return settled

    def _step(self, unit: str | None, excluded: tuple[Unit, ...], model: bytes, *,
              better_than: float | None = None, complete: bool = False) -> BudgetStep:
        """Measure one candidate. With ``better_than``, a candidate whose distortion on the
        sensitivity frames is not below it is not kept and not measured further; ``complete``
        measures every held-out frame, whatever the budget."""
        evaluator, metric = self._evaluator, self._metric
        began = time.perf_counter()
        screen = evaluator.outputs(model, subset=True)
        self._screen_cost.add(time.perf_counter() - began)
        distorted = distortion(evaluator.subset_reference, screen)
        subset_drop = metric.drop(evaluator.subset_reference, screen) if metric.per_frame else None
        kept = better_than is None or distorted < better_than
        bound = (subset_drop * evaluator.sensitivity_frames / evaluator.frames
                 if metric.countable and subset_drop is not None else None)
        measured: Measurement | None = None
        known = self._writer.known(model)
        if known is not None and kept:
            measured = Measurement(known, exact=True)    # this very model, measured before
        elif complete:
            began = time.perf_counter()
            measured = evaluator.measure(model, metric)
            self._evaluation_cost.add(time.perf_counter() - began)
        elif kept and bound is not None and bound > self._max_drop + _TOLERANCE:
            measured = Measurement(bound, exact=False)
        elif kept:
            measured = evaluator.measure(model, metric, give_up_above=self._max_drop)
        elif bound is not None:
            measured = Measurement(bound, exact=False)
        if measured is not None and measured.exact:
            self._writer.record(model, measured.drop)
        step = BudgetStep(
            index=len(self.steps), unit=unit, excluded_units=tuple(u.name for u in excluded),
            kept=kept, drop=None if measured is None else measured.drop,
            exact=measured is not None and measured.exact, subset_drop=subset_drop,
            distortion=distorted,
            int8_mac_fraction=int8_share(model, self._share.input_shape, macs=self._macs,
                                         shape_source=self._share.shape_source).fraction,
            written_drop=None, met=False,
            elapsed_s=round(time.perf_counter() - self._started, 3))
        self.steps.append(step)
        return step

    def _write_best(self) -> bool:
        """The budget was not met: write and measure the most promising model found, the kept
        step with the lowest drop on every held-out frame. Steps whose measurement stopped once
        the budget was out of reach hold only lower bounds, so the ``_FINALISTS`` of them with the
        lowest distortion are measured on every frame first (the drop is not monotone along the
        search: on EfficientNet-Lite0 it moved by up to 3 points between neighbouring steps while
        the distortion fell). True if the written model meets the budget after all."""
        bounded = sorted((s for s in self.steps if s.kept and not s.exact),
                         key=lambda s: (s.distortion, s.index))[:_FINALISTS]
        # The finalists, the best one's write and measure, the chosen model's (see finish()).
        self._start_verify(len(bounded) + 2)
        for step in bounded:
            model = self._model(self._nodes_of(step))
            began = time.perf_counter()
            drop = self._evaluator.measure(model, self._metric).drop
            self._evaluation_cost.add(time.perf_counter() - began)
            self._writer.record(model, drop)
            self.steps[step.index] = replace(step, drop=drop, exact=True)
            self._verified()
        # The "no floor" check crosses the floor: a trade-off to report, never a model to write.
        best = min((s for s in self.steps if s.kept and s.exact and s.drop is not None
                    and s.check != "no floor"), key=lambda s: (s.drop, s.index))
        if best.written_drop is None:
            best = self._settle(best, written_drop=self._writer.measure(self._nodes_of(best)))
        self._verified()
        return best.met

    def _nodes_of(self, step: BudgetStep) -> list[str]:
        return sorted({n for u in self._units if u.name in step.excluded_units for n in u.nodes})

    def _model(self, nodes: Sequence[str]) -> bytes:
        """The model a greedy step measures: the one ``quantize`` writes for ``nodes`` when its
        choices depend on the exclusions (``_Writer.writes_steps``), else a cut candidate."""
        if self._writer.writes_steps:
            return self._writer.write(nodes).model_path.read_bytes()
        return self._candidates.build(nodes)

    @property
    def _macs(self) -> dict[str, int]:
        return {op.name: op.macs for op in self._share.ops}

    def _int8_fraction(self, nodes: Sequence[str] | set[str]) -> float:
        """The INT8 share of the fully quantized model with ``nodes`` also in float."""
        return self._share.fraction_without(nodes)

    def _keeps_weighted_op(self, nodes: Sequence[str]) -> bool:
        """Whether some weighted op stays quantized with ``nodes`` also in float."""
        return bool(self._share.int8_ops.difference(nodes))


# -- artifacts ----------------------------------------------------------------------------------
def _merge_into_report(report_path: Path, report: BudgetReport, model_path: Path) -> None:
    """Add the budget report to ``model.int8.json`` (atomically), after checking the file
    describes the model just written."""
    try:
        data = json.loads(report_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(
            f"cannot read back the quantization report {str(report_path)!r} to add the budget "
            f"report: {exc}") from exc
    recorded = data.get("model", {}).get("sha256") if isinstance(data, dict) else None
    if recorded != sha256_file(model_path):
        raise CalibrationError(
            f"the quantization report {str(report_path)!r} does not describe {str(model_path)!r} "
            f"(sha256 {recorded!r}); another process may be writing the same output")
    data[BUDGET_KEY] = report.to_dict()
    atomic_write_json(report_path, data)
