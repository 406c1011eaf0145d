"""``xinfer-stream run``: stream a video through a model and print results, then statistics.

Rows come about once a second of video (the first frame of each second, by its timestamp;
``--print-every N``: every Nth frame), under a header naming the columns. A row's latency is
end to end, decoded to result ready; the statistics split it into its stages: queue wait (a
decoded frame waiting for the model; on a file the decoder runs ahead, so this grows while
inference does not), preprocessing and inference. The statistics are printed on every way out,
with or without ``--quiet``: the end of the stream, a file that breaks off, an error, Ctrl-C.

``--detect FORMAT`` runs a detector's postprocess (``xs.detect``): a row lists the frame's
detections, best first (label, score, box in source pixels). ``--save``, ``--save-frames`` and
``--json`` write pictures and lines as well, from files and live sources alike (see
``_outputs``); their paths are checked before the model loads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._outputs import add_output_options
from ._preprocess import add_preprocess_options, preprocess_from_args
from ._runner import run_async

if TYPE_CHECKING:
    from xinfer_stream import Detections, Result, StreamStatistics

__all__ = ["DETECT_FORMATS", "HEADER", "RowSampler", "add_parser", "format_detections",
           "format_row", "format_statistics", "run"]

DETECT_FORMATS = ("auto", "yolox", "yolov8", "boxes", "gfl")
_SHOWN = 5  # detections shown in a row; the rest are counted

HEADER = (f"{'':6}{'frame':>6} {'time':>8}  {'latency':>10}  result    "
          "(latency: decoded to result ready; split into queue wait, preprocess and inference in "
          "the statistics at the end)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``run`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run", help="stream a video through a model and print results")
    p.add_argument("model", help="ONNX model (FP32 or Q/DQ INT8)")
    p.add_argument("source", help="video file, folder, glob, URL or device")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--top", type=int, default=0, help="print the top-K classes (classifiers)")
    what.add_argument("--detect", choices=DETECT_FORMATS, default=None, metavar="FORMAT",
                      help="decode a detector's output and print its boxes: "
                           f"{', '.join(DETECT_FORMATS)} (auto: recognise yolox, yolov8 or boxes "
                           "from the output shapes)")
    p.add_argument("--labels", type=Path, help="class names, one a line (default for --detect: "
                                               "the model's own, else class ids)")
    det = p.add_argument_group("detection (with --detect)")
    det.add_argument("--conf", type=float, default=0.25,
                     help="keep boxes scoring above this, in [0, 1] (default 0.25)")
    det.add_argument("--iou", type=float, default=0.45,
                     help="NMS: drop a box overlapping a better one of its class by more than "
                          "this IoU, in [0, 1] (default 0.45)")
    det.add_argument("--max-det", type=int, default=300, metavar="N",
                     help="at most N detections a frame (default 300)")
    det.add_argument("--agnostic-nms", action="store_true",
                     help="NMS across classes: a better box of any class suppresses an "
                          "overlapping one (Ultralytics' agnostic_nms, YOLOX's demos)")
    p.add_argument("--policy", choices=["every", "latest"], default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--print-every", type=int, default=None, metavar="N",
                   help="print every Nth frame (default: about one a second of video, the first "
                        "frame of each second by its timestamp)")
    p.add_argument("--quiet", action="store_true", help="print only the statistics")
    p.add_argument("--plugin", action="append", default=[], type=Path, metavar="LIB.so",
                   help="a TensorRT plugin library the engine needs (repeatable); none is loaded "
                        "unless named")
    add_preprocess_options(p)
    add_output_options(p)
    p.set_defaults(func=run)
    return p


class RowSampler:
    """Which results get a row: every ``every``-th frame, or (``every=None``) the first of each
    second of video per source (every 30th frame of a source without timestamps)."""

    def __init__(self, every: int | None) -> None:
        if every is not None and every < 1:
            raise ValueError(f"--print-every must be a positive number of frames, got {every}")
        self._every = every
        self._last: tuple[str, int] | None = None

    def __call__(self, source: str, index: int, pts: float | None) -> bool:
        if self._every is not None:
            return index % self._every == 0
        if pts is None:
            return index % 30 == 0
        second = (source, int(pts))
        show, self._last = second != self._last, second
        return show


def format_row(r: Result) -> str:
    """One result as a row under :data:`HEADER`."""
    pts = f"{r.pts:7.3f}s" if r.pts is not None else "       -"
    if r.prediction is not None and hasattr(r.prediction, "xyxy"):
        what = format_detections(r.prediction)
    elif r.prediction is not None and hasattr(r.prediction, "top"):
        what = "  ".join(f"{label} {p:.2f}" for _, label, p in r.prediction.top)
    else:
        what = "  ".join(f"{k}{list(v.shape)}" for k, v in r.outputs.items())
    return f"frame {r.frame_index:6d} {pts}  {r.latency * 1e3:7.2f} ms  {what}"


def format_detections(d: Detections) -> str:
    """A frame's detections on one line: ``N objects: label score [x1,y1,x2,y2] ...``."""
    if not len(d):
        return "0 objects"
    shown = "  ".join(f"{label} {score:.2f} [{','.join(f'{v:.0f}' for v in box)}]"
                      for label, score, box in zip(d.labels[:_SHOWN], d.scores[:_SHOWN],
                                                   d.xyxy[:_SHOWN]))
    more = f"  +{len(d) - _SHOWN} more" if len(d) > _SHOWN else ""
    return f"{len(d)} object{'s' if len(d) != 1 else ''}: {shown}{more}"


def format_statistics(stats: StreamStatistics, *, ended: str = "") -> str:
    """The stream's statistics as lines; ``ended`` says why it stopped, when not at its end."""
    lines = [f"{stats.frames} frames, {stats.fps:.1f} fps, {stats.drops} dropped"
             + (f" ({ended})" if ended else "")]
    if stats.frames:
        lines += [
            f"latency, decoded to result ready: {stats.end_to_end.format_ms()}; of which",
            f"  queue wait  {stats.queue_wait.format_ms()}  (frames decoded ahead, waiting "
            "for the model)",
            f"  preprocess  {stats.preprocess.format_ms()}",
            f"  inference   {stats.inference.format_ms()}",
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``run``: a header, one row a second of video, then the stream's statistics; 0."""
    import asyncio

    from xinfer_stream import InvalidModelError, classify, detect, load, read_labels

    from ._outputs import Outputs, check_arguments

    for flag, value in (("--conf", args.conf), ("--iou", args.iou)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{flag} must be in [0, 1], got {value:g}")
    if args.max_det < 1:
        raise ValueError(f"--max-det must be a positive number of detections, got {args.max_det}")
    check_arguments(args)  # paths first: a typo fails before the model loads
    model = Path(args.model)
    pre = preprocess_from_args(args, model)
    labels = read_labels(args.labels) if args.labels else None
    if labels is not None and not labels:
        raise ValueError(f"--labels {str(args.labels)!r} has no class names (one a line)")
    post: Any = None
    if args.detect:
        post = detect(args.detect, conf=args.conf, iou=args.iou, labels=labels,
                      max_det=args.max_det, agnostic=args.agnostic_nms)
    elif args.top:
        post = classify(top=args.top, labels=labels)
    show = RowSampler(args.print_every)
    outputs = Outputs.from_args(args)

    async def main() -> int:
        async with load(model, preprocess=pre, plugins=args.plugin) as engine:
            async with engine.stream(args.source, policy=args.policy, postprocess=post,
                                     batch=args.batch, images=outputs.images) as results:
                ended = "interrupted"
                header = args.quiet
                try:
                    async for r in results:
                        if outputs.wanted:
                            await asyncio.to_thread(outputs.write, r)
                        if args.quiet or not show(r.source, r.frame_index, r.pts):
                            continue
                        if not header:
                            print(HEADER)
                            header = True
                        print(format_row(r))
                    ended = ""
                except BaseException as exc:  # printed below, then on its way (main reports it)
                    ended = ("interrupted" if isinstance(exc, (KeyboardInterrupt, _cancelled()))
                             else "stopped by an error, reported below")
                    raise
                finally:
                    stats = results.statistics()
                    print(format_statistics(stats, ended=ended), flush=True)
        if stats.timestamp_regressions:
            print(f"xinfer-stream: warning: {args.source}: presentation timestamps went backwards "
                  f"{stats.timestamp_regressions} times (damaged timing, or B-frames stored "
                  "unreordered); results are in decode order", file=sys.stderr)
        return 0

    try:
        try:
            code = run_async(main())
        except InvalidModelError as exc:
            if args.labels is not None and str(exc).startswith("labels has"):
                raise InvalidModelError(f"--labels {str(args.labels)!r}: {exc}") from exc
            raise
        except KeyboardInterrupt:
            if not (outputs.live and outputs.wanted):
                raise
            code = 130  # Ctrl-C is how a live recording ends: its files are finished
        said = outputs.close() if outputs.wanted else []
    except BaseException:
        outputs.abort()  # the previous files stay; no partial one replaces them
        raise
    for line in said:
        print(line)
    if code == 130:
        print("xinfer-stream: interrupted", file=sys.stderr)
    return code


def _cancelled() -> type[BaseException]:
    import asyncio

    return asyncio.CancelledError
