"""The ``build`` and ``inspect`` subcommands, ready for ``xinfer_stream.cli`` to register.

::

    xinfer-stream build model.onnx --int8 --calib videos/ --max-batch 32 -o model.engine
    xinfer-stream inspect model.engine [--json]

``build`` goes through the same :class:`EngineBuilder` as the Python API, so both produce the
same artifacts. Without TensorRT it still writes the Q/DQ model (``--int8 --calib``), prints one
line saying what to install, and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from .._errors import EngineBuildError
from ..preprocess import Preprocess, preprocess_path_for
from ._builder import EngineBuilder
from ._inspect import inspect_engine
from ._tensorrt import BuildProgress

__all__ = ["add_build_parser", "add_inspect_parser", "run_build", "run_inspect"]


def add_build_parser(subparsers: Any) -> argparse.ArgumentParser:
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
    from ..quantize._quantize import DEFAULT_METHOD

    g.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"calibration method (default {DEFAULT_METHOD})")
    g.add_argument("--qdq", type=Path, metavar="FILE",
                   help="where to write the Q/DQ model (default: ENGINE stem + .qdq.onnx)")
    g.add_argument("--preprocess", type=Path, metavar="FILE",
                   help="Preprocess JSON for calibration frames (default: the model's "
                        ".preprocess.json)")
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
    p.set_defaults(func=run_build)
    return p


def builder_from_args(args: argparse.Namespace, *, err: TextIO = sys.stderr) -> EngineBuilder:
    """The :class:`EngineBuilder` the ``build`` arguments describe (calibration frames sampled)."""
    builder = EngineBuilder().from_onnx(args.model).with_device(args.device)
    if args.calib and not args.int8:
        raise ValueError("--calib samples INT8 calibration frames; add --int8")
    if args.int8:
        calibrator = _calibrator(args) if args.calib else None
        builder = builder.with_int8(calibrator, method=args.method, qdq_path=args.qdq)
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
    if args.preprocess is not None:
        builder = builder.with_preprocess(Preprocess.load(args.preprocess))
    if not args.quiet:
        builder = builder.with_progress(ProgressPrinter(err))
    return builder


def _calibrator(args: argparse.Namespace) -> Any:
    from ..quantize import Calibrator
    from ..video import sample_frames

    if args.preprocess is not None:
        pre = Preprocess.load(args.preprocess)
    elif preprocess_path_for(args.model).exists():
        pre = Preprocess.load(preprocess_path_for(args.model))
    else:
        raise ValueError(f"calibration needs the model's Preprocess: pass --preprocess FILE.json "
                         f"or put one at {str(preprocess_path_for(args.model))!r}")
    frames = sample_frames(args.calib, args.frames, strategy=args.strategy, seed=args.seed,
                           progress=None if args.quiet else True)
    return Calibrator([f.image for f in frames], pre)


def run_build(args: argparse.Namespace, *, out: TextIO = sys.stdout,
              err: TextIO = sys.stderr) -> int:
    """Run ``build``; 0 on success, 1 when TensorRT is missing (after writing the Q/DQ model).
    Other failures raise (the CLI prints them as one line)."""
    builder = builder_from_args(args, err=err)
    try:
        result = builder.build_and_save(args.output)
    except EngineBuildError as exc:
        if isinstance(exc.__cause__, ImportError):
            print(f"xinfer-stream build: {exc}", file=err)
            return 1
        raise
    if not args.quiet:
        print(result.summary(), file=out)
        if result.qdq_path is not None:
            print(f"Q/DQ model: {result.qdq_path}", file=out)
    return 0


def add_inspect_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``inspect`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "inspect", help="show an engine's metadata, io tensors and per-layer precision")
    p.add_argument("engine", type=Path, help="engine file (with its .json sidecar)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-layers", action="store_true",
                   help="metadata only (does not load TensorRT)")
    p.set_defaults(func=run_inspect)
    return p


def run_inspect(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    """Run ``inspect``; prints the report, returns 0."""
    report = inspect_engine(args.engine, layers=not args.no_layers)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2), file=out)
    else:
        print(report.format(), file=out)
    return 0


class ProgressPrinter:
    """Build progress on a text stream: a live line on a terminal, one line per top-level phase
    otherwise (logs stay readable)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._live = bool(getattr(stream, "isatty", lambda: False)())
        self._top: set[str] = set()

    def __call__(self, event: BuildProgress) -> None:
        if event.kind == "elapsed":
            if self._live:
                self._write(f"\rbuilding... {event.elapsed:5.0f} s")
            return
        if event.kind == "start" and event.parent is None:
            self._top.add(event.phase)
            if not self._live:
                self._write(f"[{event.elapsed:6.1f} s] {event.phase}\n")
        if self._live and event.steps:
            done = round(20 * event.step / event.steps)
            self._write(f"\r[{event.elapsed:6.1f} s] {event.phase[:40]:<40} "
                        f"[{'#' * done}{'.' * (20 - done)}] {event.step}/{event.steps}")
        if event.kind == "finish" and event.phase in self._top:
            self._top.discard(event.phase)
            if self._live:
                self._write("\n")

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()
