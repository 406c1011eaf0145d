"""``xinfer-stream quantize``: calibrate an ONNX model on video frames and write a Q/DQ INT8
model; with ``--max-drop``, the accuracy-budget search (:func:`run_budget_quantize`).

Exit status: 0; 3 when ``--max-drop``'s budget is not met (the best model found is written).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

from xinfer_stream import Preprocess
from xinfer_stream.quantize import (SEARCH_ORDERS, CalibrationWarning, Calibrator, SearchBudget,
                                    quantize, quantize_with_budget, split_holdout)
from xinfer_stream.video import sample_frames

from ._preprocess import add_preprocess_options, resolve_from_args
from ._progress import StageProgress

__all__ = ["add_budget_arguments", "add_parser", "run", "run_budget_quantize"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``quantize`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "quantize", help="calibrate an ONNX model on video frames and write a Q/DQ INT8 model")
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("--calib", nargs="+", metavar="VIDEO",
                   help="videos (files, folders or globs) to sample calibration frames from")
    p.add_argument("--calib-set", type=Path, metavar="DIR",
                   help="a calibration set written by 'xinfer-stream sample' (instead of --calib)")
    p.add_argument("--frames", type=int, default=256, help="calibration frames (default 256)")
    p.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="also sample N held-out frames (never calibrated on) and report FP32-vs-INT8 "
                        "accuracy on them")
    p.add_argument("--strategy", choices=["uniform", "keyframes", "diverse"], default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=["max", "percentile", "entropy", "mse", "auto"],
                   default="max", help="calibration method; auto: the lowest-error method for "
                                       "each tensor (default max)")
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile")
    p.add_argument("--bias-correction", choices=["empirical", "weights", "none"],
                   default="empirical",
                   help="remove the mean shift INT8 adds to each output channel: measured layer by "
                        "layer (empirical, default), from the weights alone, or not at all")
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
    model = Path(args.model)
    pre = resolve_from_args(args, model)
    if args.max_drop is not None:
        budget_progress = StageProgress(enabled=False if args.quiet else None)
        try:
            return run_budget_quantize(args, model, pre, budget_progress)  # 0 met, 3 not met
        finally:
            budget_progress.close()
    if (args.calib is None) == (args.calib_set is None):
        raise ValueError("give calibration frames with either --calib VIDEO... or --calib-set DIR")
    if args.holdout < 0:
        raise ValueError(f"--holdout must be 0 or more, got {args.holdout!r}")
    started = time.perf_counter()
    holdout = None
    if args.calib_set is not None:
        if args.holdout:
            raise ValueError("--holdout samples held-out frames from videos: use it with --calib")
        calibrator = Calibrator.from_calibration_set(args.calib_set, pre, batch_size=args.batch_size)
    else:
        frames = sample_frames(args.calib, args.frames + args.holdout, strategy=args.strategy,
                               seed=args.seed, progress=False if args.quiet else None)
        images = [f.image for f in frames]
        calib, held = split_holdout(images, args.holdout) if args.holdout else (images, [])
        calibrator = Calibrator(calib, pre, batch_size=args.batch_size)
        holdout = Calibrator(held, pre, batch_size=args.batch_size, name="held-out") if held else None
    progress = StageProgress(enabled=False if args.quiet else None)
    try:
        result = quantize(model, calibrator, args.output, method=args.method,
                          percentile=args.percentile, exclude=tuple(args.exclude),
                          bias_correction=args.bias_correction, float16=args.float16,
                          holdout=holdout,
                          progress=progress)
    finally:
        progress.close()
    if not args.quiet:
        print(f"wrote {args.output} ({calibrator.num_frames} calibration frames, method "
              f"{args.method}, {time.perf_counter() - started:.1f} s)")
        print(result.summary())
    return 0


# -- the accuracy budget ------------------------------------------------------------------------
def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the accuracy-budget options to the ``quantize`` subcommand, whose own options
    :func:`run_budget_quantize` also reads (``--calib``, ``--frames``, ``--holdout``,
    ``--strategy``, ``--seed``, ``--method``, ``--percentile``, ``--bias-correction``, ``--float16``,
    ``--exclude``, ``--batch-size``, ``-o``, ``--quiet``)."""
    g = parser.add_argument_group("accuracy budget (search which ops to keep in float)")
    g.add_argument("--max-drop", type=float, default=None, metavar="D",
                   help="largest allowed drop of --metric on held-out frames (top1: points of "
                        "top-1 agreement with FP32, e.g. 0.3 = at least 99.7%% agreement)")
    g.add_argument("--metric", choices=["top1", "cosine"], default="top1",
                   help="top1: 100 - top-1 agreement %% (classifiers); cosine: 1 - mean cosine "
                        "of the outputs (default top1)")
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
    try:
        return SearchBudget.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def run_budget_quantize(args: argparse.Namespace, model: Path, preprocess: Preprocess,
                        progress: StageProgress | None = None) -> int:
    """``quantize --max-drop``: sample ``--frames`` + ``--holdout`` frames from ``--calib``,
    split them (:func:`~xinfer_stream.quantize.split_holdout`), search, print the report. 0 when
    the budget is met, 3 when not (the best model found is written)."""
    if getattr(args, "calib_set", None) is not None or not args.calib:
        raise ValueError("--max-drop samples its held-out frames from videos: give --calib "
                         "VIDEO... (not --calib-set) and --holdout N")
    if args.holdout < 1:
        raise ValueError("--max-drop measures the budget on held-out frames: add --holdout N "
                         "(a few hundred; 512 resolves 0.2 points of top-1 agreement)")
    started = time.perf_counter()
    sampled = sample_frames(args.calib, args.frames + args.holdout, strategy=args.strategy,
                            seed=args.seed, progress=False if args.quiet else None)
    if len(sampled) <= args.holdout:
        raise ValueError(f"the videos gave {len(sampled)} frames, not enough for {args.holdout} "
                         "held-out frames and some to calibrate on; lower --holdout or add videos")
    calib, held = split_holdout([f.image for f in sampled], args.holdout)
    calibrator = Calibrator(calib, preprocess, batch_size=args.batch_size, name="calibration")
    holdout = Calibrator(held, preprocess, batch_size=args.batch_size, name="held-out")
    options: dict[str, Any] = {"method": args.method}
    if hasattr(args, "percentile"):
        options["percentile"] = args.percentile
    if hasattr(args, "bias_correction"):
        options["bias_correction"] = args.bias_correction
    if getattr(args, "float16", False):
        options["float16"] = True
    with warnings.catch_warnings():
        # The outcome is printed below; the warning would only repeat it.
        warnings.filterwarnings("ignore", message="budget NOT met", category=CalibrationWarning)
        result = quantize_with_budget(
            model, calibrator, args.output, holdout=holdout, max_drop=args.max_drop,
            min_int8_macs=args.min_int8_macs, metric=args.metric, search_budget=args.search_budget,
            order=args.order, sensitivity_frames=args.sensitivity_frames, seed=args.seed,
            progress=progress,
            exclude=tuple(args.exclude), **options)
    if not args.quiet or not result.met:
        print(f"wrote {args.output} ({len(calib)} calibration frames, {len(held)} held out, "
              f"method {args.method}, {time.perf_counter() - started:.1f} s)")
        print(result.summary())
    return 0 if result.met else 3
