"""``xinfer-stream compare``: an FP32 model and its INT8 version on the same frames of a video,
side by side (:func:`xinfer_stream.quantize.compare`)::

    xinfer-stream compare model.onnx model.int8.onnx street.mp4 --labels classes.txt

One row about every second of video (``--print-every N``: every Nth frame; ``--quiet``: none),
then the summary: top-1 agreement, the cosine of the outputs (mean, worst frame) and the frames
whose top-1 classes differ. Exit status 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._preprocess import add_preprocess_options

if TYPE_CHECKING:
    from xinfer_stream.quantize import ComparisonSummary, FrameComparison

__all__ = ["add_parser", "format_summary", "run"]

_LISTED = 20  # disagreeing frames named in the summary; the rest are counted


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``compare`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "compare", help="run an FP32 model and its INT8 version on the same video frames and show "
                        "where they disagree",
        description="Decode VIDEO once, feed the same preprocessed frames to both models (ONNX "
                    "Runtime; the Q/DQ model executed as written) and print them side by side, "
                    "then top-1 agreement, output cosine and the frames that disagree.")
    p.add_argument("fp32", type=Path, metavar="FP32.onnx", help="the original model")
    p.add_argument("int8", type=Path, metavar="INT8.onnx",
                   help="the Q/DQ model 'xinfer-stream quantize' wrote from it")
    p.add_argument("video", help="video file, folder or glob")
    p.add_argument("--labels", type=Path, help="class names, one a line")
    p.add_argument("--output", default=None, metavar="NAME",
                   help="the model output to compare (default: the first classifier output)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N",
                   help="stop after N frames (default: the whole video)")
    p.add_argument("--print-every", type=int, default=None, metavar="N",
                   help="print every Nth frame (default: the first frame of each second of video)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    add_preprocess_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``compare``; 0."""
    from xinfer_stream import PreprocessNotFoundError, read_labels
    from xinfer_stream.engines import resolve_preprocess
    from xinfer_stream.quantize import ComparisonSummary, compare

    from ._preprocess import preprocess_from_args

    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be a positive number of frames, got {args.max_frames}")
    if args.print_every is not None and args.print_every < 1:
        raise ValueError(f"--print-every must be a positive number of frames, got "
                         f"{args.print_every}")
    explicit = preprocess_from_args(args, args.fp32)
    try:  # quantize wrote the INT8 model's; the FP32 model's own is the next best
        pre = resolve_preprocess(args.int8, explicit)
    except PreprocessNotFoundError:
        pre = resolve_preprocess(args.fp32, explicit)
    labels = read_labels(args.labels) if args.labels else None

    def name(cls: int | None) -> str:
        if cls is None:
            return "-"
        return labels[cls] if labels is not None and cls < len(labels) else str(cls)

    rows: list[FrameComparison] = []
    last_second: tuple[str, int] | None = None
    header = False
    for row in compare(args.fp32, args.int8, args.video, pre, output=args.output,
                       limit=args.max_frames):
        rows.append(row)
        if args.quiet:
            continue
        if args.print_every is not None:
            show = row.index % args.print_every == 0
        elif row.pts is None:
            show = row.index % 30 == 0
        else:
            second = (row.source, int(row.pts))
            show, last_second = second != last_second, second
        if not show:
            continue
        if not header:
            print(f"{'frame':>6} {'time':>8}  {'cosine':>7}  {'':1} {'FP32 top-1':<28} INT8 top-1"
                  f"   (output {row.output!r}; * marks a disagreement)")
            header = True
        mark = "*" if row.agrees is False else " "
        pts = f"{row.pts:7.2f}s" if row.pts is not None else "       -"
        print(f"{row.index:6d} {pts}  {row.cosine:7.4f}  {mark} {name(row.fp32_top1)[:28]:<28} "
              f"{name(row.int8_top1)}")
    summary = ComparisonSummary.of(rows)
    print(format_summary(summary, name))
    return 0


def format_summary(summary: ComparisonSummary, name: Any = str) -> str:
    """The summary as lines: agreement, cosine, the disagreeing frames (``name(class)`` names a
    class)."""
    lines = [f"{summary.frames} frames compared (output {summary.output!r})"]
    if summary.top1_agreement is not None:
        lines.append(f"  top-1 agreement  {100 * summary.top1_agreement:.1f}% "
                     f"({len(summary.disagreements)} of {summary.frames} frames disagree)")
    worst = summary.worst
    at = f"{worst.pts:.2f}s" if worst.pts is not None else "-"
    lines.append(f"  output cosine    mean {summary.cosine_mean:.4f}, min {summary.cosine_min:.4f} "
                 f"(frame {worst.index}, {at})")
    if summary.disagreements:
        lines.append("  disagreements (frame, time: FP32 -> INT8):")
        for row in summary.disagreements[:_LISTED]:
            at = f"{row.pts:.2f}s" if row.pts is not None else "-"
            lines.append(f"    {row.index:6d} {at:>8}: {name(row.fp32_top1)} -> "
                         f"{name(row.int8_top1)}  (cosine {row.cosine:.4f})")
        if len(summary.disagreements) > _LISTED:
            lines.append(f"    ... and {len(summary.disagreements) - _LISTED} more")
    return "\n".join(lines)
