"""``xinfer-stream inspect``: an engine's metadata, io tensors and per-layer precision."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from xinfer_stream import inspect_engine

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``inspect`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "inspect", help="show an engine's metadata, io tensors and per-layer precision")
    p.add_argument("engine", type=Path, help="engine file (with its .json sidecar)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-layers", action="store_true",
                   help="metadata only (does not load TensorRT)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run ``inspect``: print the report (to ``out``, default stdout); 0."""
    out = out if out is not None else sys.stdout
    report = inspect_engine(args.engine, layers=not args.no_layers)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2), file=out)
    else:
        print(report.format(), file=out)
    return 0
