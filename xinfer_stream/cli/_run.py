"""``xinfer-stream run``: stream a video through a model and print results, then statistics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from xinfer_stream import classify, load, read_labels

from ._preprocess import add_preprocess_options, preprocess_from_args
from ._runner import run_async

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``run`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run", help="stream a video through a model and print results")
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
    add_preprocess_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``run``: one line per printed frame, then the stream's statistics; 0."""
    model = Path(args.model)
    pre = preprocess_from_args(args, model)
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
