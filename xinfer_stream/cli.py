"""The ``xinfer-stream`` command line.

Every subcommand turns our errors into one line on stderr and a non-zero exit (2 for bad input,
1 for other failures, 130 when interrupted); so does a failing disk (``OSError``: full, read-only,
no permission). A traceback is printed only with ``--debug``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import __version__
from ._errors import XInferError
from .preprocess import Preprocess

__all__ = ["main", "run_async"]

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop where it is installed (the default loop otherwise)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


class StageProgress:
    """``progress(stage, done, total)`` for long library work, drawn as one bar per stage on
    stderr (only when stderr is a terminal, unless ``enabled`` says otherwise)."""

    def __init__(self, enabled: bool | None = None) -> None:
        self._enabled = enabled
        self._stage: str | None = None
        self._bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from .video._progress import Progress

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = Progress(total, stage, enabled=self._enabled)
        self._bar.advance(done - self._bar.count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# -- preprocess options shared by quantize and run ------------------------------------------
def _add_preprocess_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preprocessing (default: the model's .preprocess.json sidecar)")
    g.add_argument("--preprocess", type=Path, metavar="FILE", help="a Preprocess JSON file")
    g.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="model input height and width (default: from the model)")
    g.add_argument("--resize", choices=["stretch", "letterbox", "shorter_crop"], default=None)
    g.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="0..255 scale")
    g.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="0..255 scale")
    g.add_argument("--color", choices=["rgb", "bgr"], default=None)


def _preprocess_from_args(args: argparse.Namespace, model: Path) -> Preprocess | None:
    """The Preprocess the options describe; None to use the model's sidecar."""
    flags = {k: getattr(args, k) for k in ("size", "resize", "mean", "std", "color")
             if getattr(args, k) is not None}
    if args.preprocess is not None:
        if flags:
            raise ValueError("give either --preprocess FILE or the --size/--resize/--mean/--std/"
                             f"--color options, not both (got {sorted(flags)})")
        return Preprocess.load(args.preprocess)
    if not flags:
        return None
    from .engines import find_image_input
    from .runtime._engine import open_backend

    backend = open_backend(model)
    try:
        image = find_image_input(backend.inputs, model.name)
    finally:
        backend.close()
    size = flags.pop("size", None) or (image.height, image.width)
    if size[0] is None or size[1] is None:
        raise ValueError(f"{model.name!r} has a dynamic input size; pass --size H W")
    return Preprocess(size=(int(size[0]), int(size[1])), layout=image.layout,
                      dtype=image.spec.dtype, **flags)


# -- subcommands ----------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    if args.full_int8:
        return run_demo(frames=args.frames, out_dir=args.out, quiet=args.quiet, min_cosine=None)
    if args.min_cosine is not None:
        return run_demo(frames=args.frames, out_dir=args.out, quiet=args.quiet,
                        min_cosine=args.min_cosine)
    return run_demo(frames=args.frames, out_dir=args.out, quiet=args.quiet)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize import Calibrator, quantize, split_holdout
    from .runtime._engine import resolve_preprocess
    from .video import sample_frames

    model = Path(args.model)
    pre = _preprocess_from_args(args, model) or resolve_preprocess(model, None)
    if args.max_drop is not None:
        from .quantize._budget import run_budget_quantize

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
        calib, held = frames, []
        if args.holdout:
            split = split_holdout(frames, args.holdout)     # whole videos, or the end of one
            calib, held = split.calibration, split.held_out
            if not args.quiet:
                print(split.describe())
        calibrator = Calibrator([f.image for f in calib], pre, batch_size=args.batch_size,
                                sources=[f.source for f in calib])
        holdout = (Calibrator([f.image for f in held], pre, batch_size=args.batch_size,
                              name="held-out", sources=[f.source for f in held])
                   if held else None)
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


def _cmd_run(args: argparse.Namespace) -> int:
    from .runtime import classify, load, read_labels

    model = Path(args.model)
    pre = _preprocess_from_args(args, model)
    labels = read_labels(args.labels) if args.labels else None
    post = classify(top=args.top, labels=labels) if args.top else None

    async def main() -> int:
        async with load(model, preprocess=pre, plugins=args.plugin) as engine:
            async with engine.stream(args.source, policy=args.policy, postprocess=post,
                                     batch=args.batch) as results:
                async for r in results:
                    if args.quiet or r.frame_index % args.print_every:
                        continue
                    pts = f"{r.pts:8.3f}s" if r.pts is not None else "       -"
                    if r.prediction is not None:
                        top = "  ".join(f"{label} {p:.2f}" for _, label, p in r.prediction.top)
                    else:
                        top = "  ".join(f"{k}{list(v.shape)}" for k, v in r.outputs.items())
                    print(f"frame {r.frame_index:6d} {pts}  {r.latency * 1e3:7.2f} ms  {top}")
                stats = results.statistics()
        print(f"{stats.frames} frames, {stats.fps:.1f} fps, {stats.drops} dropped; "
              f"latency {stats.end_to_end.format_ms()}")
        print(f"  preprocess {stats.preprocess.format_ms()}")
        print(f"  inference  {stats.inference.format_ms()}")
        if stats.timestamp_regressions:
            print(f"xinfer-stream: warning: {args.source}: presentation timestamps went backwards "
                  f"{stats.timestamp_regressions} times (damaged timing, or B-frames stored "
                  "unreordered); results are in decode order", file=sys.stderr)
        return 0

    return run_async(main())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xinfer-stream",
        description="INT8 inference over video: quantize on your own footage, stream results.")
    parser.add_argument("--version", action="version", version=f"xinfer-stream {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="quantize the bundled EfficientNet-Lite0 on the bundled clip "
                                    "and stream it (CPU)")
    p.add_argument("--frames", type=int, default=128, help="calibration frames (default 128)")
    p.add_argument("--out", type=Path, default=None,
                   help="keep the artifacts in this folder (default: a temporary folder)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--min-cosine", type=float, default=None, metavar="C",
                        help="accuracy budget: keep ops in float from the input onwards until the "
                             "INT8 logits' mean cosine with FP32 is at least C on the budget "
                             "frames (default 0.9993)")
    budget.add_argument("--full-int8", action="store_true",
                        help="no budget search: every Conv and Gemm in INT8 (faster, less "
                             "accurate)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)

    from .quantize._budget import add_budget_arguments
    from .quantize._quantize import DEFAULT_BIAS_CORRECTION, DEFAULT_METHOD

    p = sub.add_parser("quantize", help="calibrate an ONNX model on video frames and write a Q/DQ "
                                        "INT8 model")
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("--calib", nargs="+", metavar="VIDEO",
                   help="videos (files, folders or globs) to sample calibration frames from")
    p.add_argument("--calib-set", type=Path, metavar="DIR",
                   help="a calibration set written by 'xinfer-stream sample' (instead of --calib)")
    p.add_argument("--frames", type=int, default=256, help="calibration frames (default 256)")
    p.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="also sample about N held-out frames (never calibrated on) and report the "
                        "written model's FP32-vs-INT8 accuracy on them: whole videos are held out "
                        "when --calib gives several, the end of the video when it gives one")
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
    _add_preprocess_options(p)
    add_budget_arguments(p)
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("run", help="stream a video through a model and print results")
    p.add_argument("model", help="ONNX model (FP32 or Q/DQ INT8)")
    p.add_argument("source", help="video file, folder, glob, URL or device")
    p.add_argument("--top", type=int, default=0, help="print the top-K classes (classifiers)")
    p.add_argument("--labels", type=Path, help="class names, one a line")
    p.add_argument("--policy", choices=["every", "latest"], default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--print-every", type=int, default=1, metavar="N", help="print every Nth frame")
    p.add_argument("--quiet", action="store_true", help="print only the statistics")
    p.add_argument("--plugin", action="append", default=[], type=Path, metavar="LIB.so",
                   help="a TensorRT plugin library the engine needs (repeatable); none is loaded "
                        "unless named")
    _add_preprocess_options(p)
    p.set_defaults(func=_cmd_run)

    from .engines._command import add_build_parser, add_inspect_parser
    from .quantize._budget_report import add_report_parser
    from .video._command import add_parser as add_sample_parser

    add_sample_parser(sub)
    add_report_parser(sub)
    add_build_parser(sub)
    add_inspect_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        print("xinfer-stream: interrupted", file=sys.stderr)
        return 130
    except (XInferError, ValueError) as exc:
        if args.debug:
            raise
        kind = "error" if isinstance(exc, ValueError) else type(exc).__name__
        print(f"xinfer-stream: {kind}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except OSError as exc:
        if args.debug:
            raise
        print(f"xinfer-stream: {type(exc).__name__}: {exc}{_os_hint(exc)}", file=sys.stderr)
        return 1


def _os_hint(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "; free some disk space or write to another folder"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "; check that this user may write there, or write to another folder"
    return ""


if __name__ == "__main__":
    sys.exit(main())
