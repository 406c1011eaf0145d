"""``xinfer-stream build``: a TensorRT engine from an ONNX model (INT8: calibrated on video).

::

    xinfer-stream build model.onnx --int8 --calib videos/ --max-batch 32 -o model.engine

It goes through the same :class:`~xinfer_stream.EngineBuilder` as the Python API, so both
produce the same artifacts. Everything the build needs is checked before the (minutes-long)
sampling and calibration: the options, the Preprocess, TensorRT and the GPU
(:meth:`~xinfer_stream.EngineBuilder.check_ready`). Without TensorRT it prints one line saying
what to install, and how to write the Q/DQ model alone (``xinfer-stream quantize``), and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ._preprocess import add_preprocess_options, preprocess_from_args
from ._progress import BuildProgressPrinter, StageProgress
from ._quantize import DEFAULT_METHOD, check_frames

if TYPE_CHECKING:  # imported where used: --help must not load the library
    from xinfer_stream import Calibrator, EngineBuilder, Preprocess

__all__ = ["add_parser", "builder_from_args", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``build`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "build", help="build a TensorRT engine from an ONNX model (INT8: calibrate on video)")
    p.add_argument("model", type=Path, help="ONNX model (FP32, or Q/DQ INT8 already)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the engine file to write")
    g = p.add_argument_group("precision")
    g.add_argument("--int8", action="store_true",
                   help="INT8: quantize on --calib frames to a Q/DQ model first (or give a Q/DQ "
                        "model)")
    g.add_argument("--fp16", action="store_true", help="FP16 for unquantized layers (TensorRT 10)")
    g.add_argument("--calib", nargs="+", metavar="VIDEO",
                   help="videos (files, folders or globs) to sample calibration frames from")
    g.add_argument("--frames", type=int, default=256, help="calibration frames (default 256)")
    g.add_argument("--strategy", choices=["uniform", "keyframes", "diverse"], default="uniform")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"calibration method (default {DEFAULT_METHOD}, as quantize)")
    g.add_argument("--qdq", type=Path, metavar="FILE",
                   help="where to write the Q/DQ model (default: ENGINE stem + .qdq.onnx)")
    g = p.add_argument_group("shapes")
    g.add_argument("--max-batch", type=int, metavar="N", help="largest batch (dynamic batch axis)")
    g.add_argument("--opt-batch", type=int, metavar="N", help="batch to tune for (default: min)")
    g.add_argument("--min-batch", type=int, default=1, metavar="N")
    g.add_argument("--min-hw", type=int, nargs=2, metavar=("H", "W"))
    g.add_argument("--opt-hw", type=int, nargs=2, metavar=("H", "W"))
    g.add_argument("--max-hw", type=int, nargs=2, metavar=("H", "W"),
                   help="with --min-hw/--opt-hw: height/width range of a dynamic-size input")
    g.add_argument("--profiles", type=int, default=1, metavar="K",
                   help="optimization profiles: one per concurrent slot (default 1)")
    g = p.add_argument_group("builder")
    g.add_argument("--workspace", type=int, metavar="MIB", help="builder workspace limit in MiB")
    g.add_argument("--opt-level", type=int, choices=range(6), metavar="0-5",
                   help="builder optimization level (TensorRT default 3)")
    g.add_argument("--timing-cache", type=Path, metavar="FILE",
                   help="reuse and update this timing cache across builds")
    g.add_argument("--device", type=int, default=0, help="CUDA device (default 0)")
    p.add_argument("--quiet", action="store_true")
    add_preprocess_options(p)
    p.set_defaults(func=run)
    return p


def builder_from_args(args: argparse.Namespace, *, err: TextIO | None = None) -> EngineBuilder:
    """The :class:`~xinfer_stream.EngineBuilder` the ``build`` arguments describe, calibration
    frames sampled once everything else is known to be in place; progress goes to ``err``
    (default stderr) unless ``--quiet``."""
    from xinfer_stream import EngineBuilder
    from xinfer_stream.engines import resolve_preprocess

    err = err if err is not None else sys.stderr
    builder = EngineBuilder().from_onnx(args.model).with_device(args.device)
    if args.calib and not args.int8:
        raise ValueError("--calib samples INT8 calibration frames; add --int8")
    check_frames("--frames", args.frames)
    pre = preprocess_from_args(args, args.model)
    builder = _shapes_and_options(builder, args)
    if args.int8 and args.calib:
        # Everything that can be checked, before minutes of sampling and calibrating: the
        # Preprocess the frames need, then TensorRT and the GPU.
        resolved = resolve_preprocess(args.model, pre)
        builder.check_ready()
        builder = builder.with_int8(_calibrator(args, resolved, err), method=args.method,
                                    qdq_path=args.qdq, quantizer=_quantizer(args.quiet, err))
    elif args.int8:
        builder = builder.with_int8(None, method=args.method, qdq_path=args.qdq)
    if pre is not None:
        builder = builder.with_preprocess(pre)
    if not args.quiet:
        builder = builder.with_progress(BuildProgressPrinter(err))
    return builder


def _shapes_and_options(builder: EngineBuilder, args: argparse.Namespace) -> EngineBuilder:
    if args.fp16:
        builder = builder.with_fp16()
    if args.max_batch is not None:
        builder = builder.with_max_batch_size(args.max_batch, opt=args.opt_batch,
                                              min_batch=args.min_batch)
    hw = (args.min_hw, args.opt_hw, args.max_hw)
    if any(v is not None for v in hw):
        if any(v is None for v in hw):
            raise ValueError("give all of --min-hw, --opt-hw and --max-hw")
        builder = builder.with_input_shapes(min=tuple(args.min_hw), opt=tuple(args.opt_hw),
                                            max=tuple(args.max_hw))
    if args.profiles != 1:
        builder = builder.with_profiles(args.profiles)
    if args.workspace is not None:
        builder = builder.with_workspace(args.workspace << 20)
    if args.opt_level is not None:
        builder = builder.with_builder_optimization_level(args.opt_level)
    if args.timing_cache is not None:
        builder = builder.with_timing_cache(args.timing_cache)
    return builder


def _calibrator(args: argparse.Namespace, pre: Preprocess, err: TextIO) -> Calibrator:
    from xinfer_stream import Calibrator, sample_frames

    progress = StageProgress(enabled=not args.quiet, stream=err)
    try:
        frames = sample_frames(args.calib, args.frames, strategy=args.strategy, seed=args.seed,
                               progress=progress)
    finally:
        progress.close()
    return Calibrator([f.image for f in frames], pre)


def _quantizer(quiet: bool, err: TextIO) -> Callable[..., Any]:
    """``quantize`` with its progress shown (calibration is the long part of an INT8 build)."""
    from xinfer_stream.quantize import quantize

    def run(*args: Any, **kwargs: Any) -> Any:
        progress = StageProgress(enabled=not quiet, stream=err)
        try:
            return quantize(*args, progress=progress, **kwargs)
        finally:
            progress.close()

    return run


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``build``; 0 on success, 1 when TensorRT is missing (found before any sampling or
    calibration). Other failures raise (``main`` prints them as one line)."""
    from xinfer_stream import EngineBuildError

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        result = builder_from_args(args, err=err).build_and_save(args.output)
    except EngineBuildError as exc:
        if isinstance(exc.__cause__, ImportError):
            hint = ""
            if args.int8 and args.calib:
                hint = (f". To write the INT8 Q/DQ model here and build it where TensorRT is "
                        f"installed: xinfer-stream quantize {args.model} --calib ... -o "
                        f"{args.model.with_suffix('.int8.onnx').name}")
            print(f"xinfer-stream build: {exc}{hint}", file=err)
            return 1
        raise
    if not args.quiet:
        print(result.summary(), file=out)
        if result.qdq_path is not None:
            print(f"Q/DQ model: {result.qdq_path}", file=out)
    return 0
