"""``xinfer-stream report``: print a quantization report (the accuracy-budget search's steps
and per-unit sensitivity) as tables. Exit status 0 whenever the report was read, whatever it
records: reading a report that records an unmet budget is not a failure (the ``quantize`` that
missed it exited 3); a table line says so."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "report", help="print a quantization report (budget search steps and per-unit "
                       "sensitivity) as tables")
    p.add_argument("report", type=Path, help="model.int8.json (or the model.int8.onnx beside it)")
    p.add_argument("--units", type=int, default=10, metavar="N",
                   help="sensitivity rows to print, most harmful first (0: all; default 10)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Print the report named by ``args.report``; 0."""
    from xinfer_stream.quantize import (format_quantization_header, format_table,
                                        read_budget_report)

    if args.units < 0:
        raise ValueError(f"--units must be 0 or more, got {args.units}")
    data, report = read_budget_report(args.report)
    print(format_quantization_header(data))
    print()
    if report is None:
        print("no accuracy-budget search was run for this model (quantize with --max-drop)")
        return 0
    print(format_table(report, max_units=args.units or None))
    return 0
