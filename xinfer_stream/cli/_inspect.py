"""``xinfer-stream inspect``: an engine's metadata, io tensors and per-layer precision, or an ONNX
model's io and INT8 share::

    xinfer-stream inspect model.engine [--json]
    xinfer-stream inspect model.int8.onnx [--size H W] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from xinfer_stream import inspect_engine
from xinfer_stream.engines import EngineReport
from xinfer_stream.quantize import OnnxReport, inspect_onnx

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``inspect`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "inspect", help="show an engine's metadata, io tensors and per-layer precision, or an "
                        "ONNX model's io and INT8 share")
    p.add_argument("engine", type=Path, metavar="MODEL",
                   help="engine file (with its .json sidecar) or ONNX model (.onnx)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-layers", action="store_true",
                   help="metadata only (does not load TensorRT)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="ONNX model with a dynamic input size: the height and width to count "
                        "MACs at (default: from its .preprocess.json)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run ``inspect``: print the report (to ``out``, default stdout); 0. A file that is neither
    an ONNX model nor an engine raises ``InvalidModelError``."""
    out = out if out is not None else sys.stdout
    report: EngineReport | OnnxReport
    if args.engine.suffix.lower() == ".onnx":
        size = args.size
        report = inspect_onnx(args.engine, size=None if size is None else (size[0], size[1]))
    else:
        report = inspect_engine(args.engine, layers=not args.no_layers)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2), file=out)
    else:
        print(report.format(), file=out)
    return 0
