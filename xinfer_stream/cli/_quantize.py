"""``xinfer-stream quantize``: calibrate an ONNX model on video frames and write a Q/DQ INT8
model; with ``--max-drop``, the accuracy-budget search (:func:`run_budget_quantize`).

Exit status: 0; 3 when ``--max-drop``'s budget is not met (the best model found is written).
Held-out frames (``--holdout``) come from the same frames as calibration, sampled from
``--calib`` videos or read from a ``--calib-set``, and are never calibrated on: whole videos when
the frames come from several, the end of the video when from one
(:func:`~xinfer_stream.quantize.split_holdout`); the line printed says which.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._preprocess import add_preprocess_options, resolve_from_args
from ._progress import StageProgress, format_duration
from ._run import DETECT_FORMATS

if TYPE_CHECKING:  # imported where used: --help must not load the library
    from xinfer_stream import Preprocess
    from xinfer_stream.quantize import Calibrator, SearchBudget, SearchEstimate

__all__ = ["DEFAULT_BIAS_CORRECTION", "DEFAULT_METHOD", "EXIT_STATUS", "SEARCH_ORDERS",
           "add_budget_arguments", "add_parser", "check_frames", "describe_estimate", "run",
           "run_budget_quantize"]

# xinfer_stream.quantize's SEARCH_ORDERS, DEFAULT_METHOD and DEFAULT_BIAS_CORRECTION (the one
# home of the defaults), spelled out so that --help need not import the quantizer (a test keeps
# them equal).
SEARCH_ORDERS = ("sensitivity", "input_first")
DEFAULT_METHOD = "auto"
DEFAULT_BIAS_CORRECTION = "empirical"

EXIT_STATUS = """exit status:
  0  the model was written (with --max-drop: and the accuracy budget was met)
  1  a failure (a model ONNX Runtime cannot run, a disk error, ...)
  2  bad input (a missing or unreadable file, a bad option value)
  3  --max-drop only: the budget was NOT met; the best model found is written anyway and the
     report says by how much it missed, with the best trade-offs found (drop vs INT8 share);
     'xinfer-stream report' reads it. With --min-int8-macs the search stops early when even
     every helpful op that fits under the floor, kept in float, misses the budget
  130 interrupted (Ctrl-C)"""


def check_frames(option: str, value: int) -> int:
    """``value`` of a frame-count option, or ``ValueError`` naming ``option``."""
    if value < 1:
        raise ValueError(f"{option} must be a positive number of frames, got {value}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``quantize`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "quantize", help="calibrate an ONNX model on video frames and write a Q/DQ INT8 model",
        epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("--calib", nargs="+", metavar="VIDEO",
                   help="videos (files, folders or globs) to sample calibration frames from")
    p.add_argument("--calib-set", type=Path, metavar="DIR",
                   help="a calibration set written by 'xinfer-stream sample' (instead of --calib)")
    p.add_argument("--frames", type=int, default=256, help="calibration frames (default 256)")
    p.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="also hold out about N frames (never calibrated on; sampled from --calib "
                        "videos, or taken from --calib-set) and report the written model's "
                        "FP32-vs-INT8 accuracy on them: whole videos are held out when the "
                        "frames come from several, the end of the video when from one")
    p.add_argument("--strategy", choices=["uniform", "keyframes", "diverse"], default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=["max", "percentile", "entropy", "mse", "auto"],
                   default=DEFAULT_METHOD, help="calibration method; auto: the lowest-error method "
                                                f"for each tensor (default {DEFAULT_METHOD})")
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile")
    p.add_argument("--bias-correction", choices=["empirical", "weights", "none"],
                   default=DEFAULT_BIAS_CORRECTION,
                   help="remove the mean shift INT8 adds to each output channel: measured layer by "
                        "layer (empirical), from the weights alone (weights), or not at all (none); "
                        f"default {DEFAULT_BIAS_CORRECTION}")
    p.add_argument("--float16", action="store_true",
                   help="cast what stays unquantized to FP16 (TensorRT 11 takes precision from "
                        "the model)")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="keep matching nodes (by name or op type) in float; repeatable")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("-o", "--output", type=Path, required=True, help="the Q/DQ model to write")
    p.add_argument("--quiet", action="store_true")
    add_preprocess_options(p)
    add_budget_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``quantize``; 0, or what :func:`run_budget_quantize` returns with ``--max-drop``."""
    from xinfer_stream.quantize import quantize

    check_frames("--frames", args.frames)
    model = Path(args.model)
    pre = resolve_from_args(args, model)
    if args.max_drop is not None:
        return run_budget_quantize(args, model, pre, StageProgress(enabled=not args.quiet))
    budget_only = [flag for flag, given in (
        ("--labels-dir", args.labels_dir is not None), ("--labels-csv", args.labels_csv is not None),
        ("--metric boxes", args.metric == "boxes")) if given]
    if budget_only:
        raise ValueError(f"{' and '.join(budget_only)} set the accuracy budget's metric; add "
                         "--max-drop D (e.g. --max-drop 0.05)")
    if args.holdout < 0:
        raise ValueError(f"--holdout must be 0 or more, got {args.holdout!r}")
    started = time.perf_counter()
    calibrator, holdout, split = _calibration_frames(args, pre)
    if split is not None and not args.quiet:
        print(split)
    progress = StageProgress(enabled=not args.quiet)
    try:
        result = quantize(model, calibrator, args.output, method=args.method,
                          percentile=args.percentile, exclude=tuple(args.exclude),
                          bias_correction=args.bias_correction, float16=args.float16,
                          holdout=holdout,
                          progress=progress)
    finally:
        progress.close()  # before the report: nothing is redrawn after it
    if not args.quiet:
        held = f", {holdout.num_frames} held out" if holdout is not None else ""
        print(f"wrote {args.output} ({calibrator.num_frames} calibration frames{held}, method "
              f"{args.method}, {time.perf_counter() - started:.1f} s)")
        print(result.summary())
    return 0


def _calibration_frames(args: argparse.Namespace, pre: Preprocess
                        ) -> tuple[Calibrator, Calibrator | None, str | None]:
    """(calibration, held-out or None, what was held out or None): ``--frames`` + ``--holdout``
    frames sampled from ``--calib``, or a ``--calib-set``'s frames, about ``--holdout`` of them
    set aside by source (:meth:`~xinfer_stream.quantize.Calibrator.split`)."""
    from xinfer_stream.quantize import Calibrator
    from xinfer_stream.video import sample_frames

    if (args.calib is None) == (getattr(args, "calib_set", None) is None):
        raise ValueError("give calibration frames with either --calib VIDEO... or --calib-set DIR")
    if args.calib_set is not None:
        everything = Calibrator.from_calibration_set(args.calib_set, pre,
                                                     batch_size=args.batch_size)
        if not args.holdout:
            return everything, None, None
        if everything.num_frames <= args.holdout:
            raise ValueError(f"the calibration set {str(args.calib_set)!r} holds "
                             f"{everything.num_frames} frames, not enough to hold out "
                             f"{args.holdout} and calibrate on the rest; lower --holdout or "
                             "sample a bigger set")
        return _split(everything, args.holdout)
    progress = StageProgress(enabled=not args.quiet)
    try:
        frames = sample_frames(args.calib, args.frames + args.holdout, strategy=args.strategy,
                               seed=args.seed, progress=progress)
    finally:
        progress.close()
    if len(frames) <= args.holdout:
        raise ValueError(f"the videos gave {len(frames)} frames, not enough for {args.holdout} "
                         "held-out frames and some to calibrate on; lower --holdout or add videos")
    everything = Calibrator([f.image for f in frames], pre, batch_size=args.batch_size,
                            name="calibration", sources=[f.source for f in frames])
    return _split(everything, args.holdout) if args.holdout else (everything, None, None)


@dataclass(frozen=True)
class _Sourced:
    source: str


def _split(everything: Calibrator, holdout: int) -> tuple[Calibrator, Calibrator, str | None]:
    """``everything.split(holdout)`` and the line saying what was held out (the split
    :func:`~xinfer_stream.quantize.split_holdout` makes of the same sources: the same rule)."""
    from xinfer_stream.quantize import split_holdout

    calibrator, held = everything.split(holdout)
    sources = everything.sources
    said = (split_holdout([_Sourced(s) for s in sources], holdout).describe()
            if sources is not None else None)
    return calibrator, held, said


# -- the accuracy budget ------------------------------------------------------------------------
def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the accuracy-budget options to the ``quantize`` subcommand, whose own options
    :func:`run_budget_quantize` also reads (``--calib``, ``--frames``, ``--holdout``,
    ``--strategy``, ``--seed``, ``--method``, ``--percentile``, ``--bias-correction``, ``--float16``,
    ``--exclude``, ``--batch-size``, ``-o``, ``--quiet``)."""
    g = parser.add_argument_group("accuracy budget (search which ops to keep in float)")
    g.add_argument("--max-drop", type=float, default=None, metavar="D",
                   help="largest allowed drop of --metric on held-out frames (top1: points of "
                        "top-1 agreement with FP32, e.g. 0.3 = at least 99.7%% agreement; boxes: "
                        "1 - mAP@0.5 against the FP32 boxes, e.g. 0.05 = mAP@0.5 at least 0.95)")
    g.add_argument("--metric", choices=["top1", "cosine", "boxes"], default="top1",
                   help="top1: 100 - top-1 agreement %% (classifiers); cosine: 1 - mean cosine "
                        "of the outputs; boxes (detectors): 1 - mAP@0.5 of the INT8 boxes taking "
                        "the FP32 boxes as ground truth (same class, IoU >= 0.5), the report also "
                        "gives precision, recall and F1 (default top1)")
    g.add_argument("--detect", choices=DETECT_FORMATS, default="auto", metavar="FORMAT",
                   help="with --metric boxes: how to decode the detector's outputs, "
                        f"{', '.join(DETECT_FORMATS)} (default auto: yolox, yolov8 or boxes "
                        "recognised from the output shapes)")
    g.add_argument("--conf", type=float, default=0.25,
                   help="with --metric boxes: boxes scoring above this count, on both models, "
                        "in [0, 1] (default 0.25)")
    g.add_argument("--labels-dir", type=Path, default=None, metavar="DIR",
                   help="measure the budget against labels instead of FP32: held-out images in "
                        "an ImageFolder layout (one sub-folder a class, named as in the model's "
                        "labels, or 0..C-1 for a model without names); the metric becomes the "
                        "top-1 accuracy drop in points (FP32 accuracy - INT8 accuracy) and "
                        "--holdout is not needed")
    g.add_argument("--labels-csv", type=Path, default=None, metavar="FILE",
                   help="as --labels-dir, from 'path,class' rows (paths relative to the CSV)")
    g.add_argument("--labels", type=Path, default=None, metavar="FILE",
                   help="the model's class names, one a line: with --labels-dir/--labels-csv "
                        "the names class folders and rows use (default: the names in the "
                        "model's metadata, else class indices); with --metric boxes the names "
                        "drawn on the report's picture (default: class ids)")
    g.add_argument("--min-int8-macs", type=float, default=0.0, metavar="F",
                   help="never keep so much in float that less than this fraction of the "
                        "multiply-accumulates stays INT8 (e.g. 0.85; default 0)")
    g.add_argument("--order", choices=SEARCH_ORDERS, default="sensitivity",
                   help="sensitivity: rank every op by how much keeping it alone in float helps, "
                        "then keep the most harmful in float first; input_first: keep ops in float "
                        "from the network's input onwards, no ranking (faster; for models whose "
                        "first layers carry the error). Default sensitivity")
    g.add_argument("--sensitivity-frames", type=int, default=32, metavar="N",
                   help="held-out frames that rank the ops and screen each step (default 32)")
    g.add_argument("--search-budget", type=_search_budget, default=None, metavar="LIMIT",
                   help="bound the search: seconds ('300', '5m'), steps ('20steps'), or both "
                        "('5m,20steps'); default unbounded")


def _search_budget(text: str) -> SearchBudget:
    """``--search-budget``: argparse names this function in its error message."""
    from xinfer_stream.quantize import SearchBudget

    try:
        return SearchBudget.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def run_budget_quantize(args: argparse.Namespace, model: Path, preprocess: Preprocess,
                        progress: StageProgress | None = None) -> int:
    """``quantize --max-drop``: ``--frames`` + ``--holdout`` frames sampled from ``--calib`` (or
    a ``--calib-set``'s frames), ``--holdout`` of them held out
    (:func:`~xinfer_stream.quantize.split_holdout`), search, print the report. 0 when the budget
    is met, 3 when not (the best model found is written). ``progress`` also prints the search's
    time estimate (:func:`describe_estimate`) and is closed before the report is printed."""
    from xinfer_stream.quantize import CalibrationWarning, quantize_with_budget

    if getattr(args, "calib_set", None) is None and not args.calib:
        raise ValueError("--max-drop needs calibration frames: give --calib VIDEO... or "
                         "--calib-set DIR, and --holdout N")
    labelled_from = getattr(args, "labels_dir", None) or getattr(args, "labels_csv", None)
    if labelled_from is None and args.holdout < 1:
        raise ValueError("--max-drop measures the budget on held-out frames: add --holdout N "
                         "(a few hundred; 512 resolves 0.2 points of top-1 agreement), or give "
                         "labelled images with --labels-dir DIR or --labels-csv FILE")
    if not hasattr(args, "calib_set"):
        args = argparse.Namespace(**vars(args), calib_set=None)
    started = time.perf_counter()
    metric: Any = args.metric
    split: str | None
    if labelled_from is not None:
        calibrator, holdout, split, metric = _labelled_holdout(args, model, preprocess)
    else:
        calibrator, maybe_holdout, split = _calibration_frames(args, preprocess)
        assert maybe_holdout is not None  # --holdout >= 1
        holdout = maybe_holdout
    if metric == "boxes":
        from xinfer_stream import detect, read_labels
        from xinfer_stream.quantize import box_metric

        if not 0.0 <= args.conf <= 1.0:
            raise ValueError(f"--conf must be in [0, 1], got {args.conf:g}")
        names = read_labels(args.labels) if getattr(args, "labels", None) else None
        metric = box_metric(preprocess, detect(args.detect, conf=args.conf, labels=names))
    options: dict[str, Any] = {"method": args.method}
    if hasattr(args, "percentile"):
        options["percentile"] = args.percentile
    if hasattr(args, "bias_correction"):
        options["bias_correction"] = args.bias_correction
    if getattr(args, "float16", False):
        options["float16"] = True
    try:
        with warnings.catch_warnings():
            # The outcome is printed below; the warning would only repeat it.
            warnings.filterwarnings("ignore", message="budget NOT met",
                                    category=CalibrationWarning)
            result = quantize_with_budget(
                model, calibrator, args.output, holdout=holdout, max_drop=args.max_drop,
                min_int8_macs=args.min_int8_macs, metric=metric,
                search_budget=args.search_budget, order=args.order,
                sensitivity_frames=args.sensitivity_frames, seed=args.seed, progress=progress,
                estimate=None if progress is None
                else lambda e: progress.note(describe_estimate(e)),
                exclude=tuple(args.exclude), **options)
    finally:
        if progress is not None:
            progress.close()  # before the report: nothing is redrawn after it
    if not args.quiet or not result.met:
        print(f"wrote {args.output} ({calibrator.num_frames} calibration frames, "
              f"{holdout.num_frames} held out, method {args.method}, "
              f"{time.perf_counter() - started:.1f} s)" + (f"; {split}" if split else ""))
        print(result.summary())
    return 0 if result.met else 3


def _labelled_holdout(args: argparse.Namespace, model: Path, preprocess: Preprocess
                      ) -> tuple[Calibrator, Calibrator, str, Any]:
    """``--labels-dir``/``--labels-csv``: (every sampled frame to calibrate on, the labelled
    images held out, what was held out, the labelled accuracy metric)."""
    from xinfer_stream.quantize import read_labelled

    if args.labels_dir is not None and args.labels_csv is not None:
        raise ValueError("give labelled images with either --labels-dir or --labels-csv, not both")
    if args.holdout:
        raise ValueError("--labels-dir/--labels-csv are the held-out images; leave out --holdout")
    if args.metric != "top1":
        raise ValueError(f"--labels-dir/--labels-csv measure top-1 accuracy against the labels; "
                         f"leave out --metric {args.metric}")
    labelled = read_labelled(model, directory=args.labels_dir, csv_file=args.labels_csv,
                             labels_file=args.labels)
    calibrator, _, _ = _calibration_frames(args, preprocess)
    holdout = labelled.calibrator(preprocess, batch_size=args.batch_size)
    return calibrator, holdout, labelled.describe(), labelled.metric()


def describe_estimate(estimate: SearchEstimate) -> str:
    """One line for a :class:`~xinfer_stream.quantize.SearchEstimate`: how long is left at most,
    and what it is made of."""
    e = estimate
    plan = []
    if e.ranking:
        plan.append(f"{e.ranking} ops to rank at {e.screen_s:.2f} s")
    if e.steps:
        per_step = e.screen_s + e.evaluation_s + e.write_s
        plan.append(f"up to {e.steps} step{'s' if e.steps != 1 else ''} at {per_step:.1f} s")
    if e.checks:
        plan.append(f"{e.checks} floor check{'s' if e.checks != 1 else ''}")
    plan.append(f"write and verify up to {format_duration(e.write_and_verify_s)}")
    costs = f"one held-out evaluation of {e.holdout_frames} frames takes {e.evaluation_s:.1f} s"
    if e.write_s:
        costs += f", one quantize {e.write_s:.1f} s"
    return (f"search estimate ({e.stage}): at most {format_duration(e.seconds_left)} more, "
            f"{format_duration(e.total_s)} in all ({', '.join(plan)}; {costs})")
