"""Live camera analytics: what a network camera sees, counted per class per minute.

Streams a network camera (``rtsp://``, ``http://``, ``udp://``, ...) through a classifier and
prints, for every minute, how many analysed frames each class was the top class of (frames whose
best probability is below ``--min-probability`` are counted as uncertain), and how many frames
the stream skipped. A live source keeps only the newest frame when the model falls behind
(``policy="latest"``), so the counts are of the frames analysed, and the skipped ones are
reported beside them; the stream reconnects by itself when the camera drops (see
``xs.video.Reconnect``), and gives up with an error when the camera does not come back.

Minutes are wall-clock minutes for a live source and video-time minutes for a file (any file
works for a local try; it is analysed as fast as it decodes, every frame).

Run (after ``pip install -e .``)::

    python3 examples/camera_analytics.py rtsp://camera.local/stream
    python3 examples/camera_analytics.py            # the bundled clip, on the CPU

``--model`` takes any model ``xs.load`` takes: a TensorRT ``.engine`` or a TorchScript/``.pt2``
file (with ``--preprocess``) run on the GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xinfer_stream as xs

ASSETS = Path(xs.__file__).resolve().parent / "_assets"  # bundled with the package
CLIP = ASSETS / "bottle-detection.mp4"
MODEL = ASSETS / "efficientnet_lite0.onnx"
LABELS = ASSETS / "imagenet_classes.txt"
# How EfficientNet-Lite0 was trained: 224x224 RGB, (x - 127) / 128.
EFFICIENTNET = xs.Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3,
                             std=(128.0,) * 3)
UNCERTAIN = "(uncertain)"


@dataclass
class Window:
    """Counts of one minute (or ``--window`` seconds)."""

    index: int
    classes: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    skipped: int = 0


def is_live(source: str) -> bool:
    return "://" in source or source.startswith("/dev/")


def window_title(window: Window, seconds: float, live: bool, started: float) -> str:
    start, end = window.index * seconds, (window.index + 1) * seconds
    if live:  # wall-clock time of day
        def clock(offset: float) -> str:
            return datetime.datetime.fromtimestamp(started + offset).strftime("%H:%M:%S")
    else:  # time into the video
        def clock(offset: float) -> str:
            return f"{int(offset // 3600):02d}:{int(offset % 3600 // 60):02d}:{offset % 60:06.3f}"
    return f"{clock(start)} - {clock(end)}"


def report(window: Window, seconds: float, live: bool, started: float, partial: bool) -> None:
    title = window_title(window, seconds, live, started)
    print(f"[{title}]{' (partial)' if partial else ''} {window.frames} frames analysed, "
          f"{window.skipped} skipped")
    for label, count in window.classes.most_common():
        print(f"    {label:<28} {count:6d}")


async def run(args: argparse.Namespace) -> int:
    labels = xs.read_labels(args.labels)
    preprocess = (xs.Preprocess.load(args.preprocess) if args.preprocess
                  else EFFICIENTNET if Path(args.model) == MODEL else None)
    live = is_live(args.source)
    options: dict[str, Any] = {"timeout": (args.open_timeout, args.read_timeout)} if live else {}
    # Live minutes are numbered from the wall-clock minute the run started in.
    started = time.time() // args.window * args.window
    mono_start = time.perf_counter() - (time.time() - started)
    window: Window | None = None
    analysed = 0
    skipped_before = 0
    failure: xs.XInferError | None = None
    async with xs.load(args.model, preprocess=preprocess) as engine:
        print(f"model {engine.model.name} on {engine.backend.kind} ({engine.backend.device}); "
              f"source {args.source} ({'live' if live else 'file'})")
        stream = engine.stream(args.source, postprocess=xs.classify(top=1, labels=labels),
                               **options)
        try:
            async with stream as results:
                async for result in results:
                    if live or result.pts is None:
                        index = int((time.perf_counter() - mono_start) // args.window)
                    else:
                        index = int(result.pts // args.window)
                    if window is None or index != window.index:
                        if window is not None:
                            skipped = results.statistics().drops
                            window.skipped, skipped_before = skipped - skipped_before, skipped
                            report(window, args.window, live, started, partial=False)
                        window = Window(index)
                    _, label, probability = result.prediction.best
                    window.classes[label if probability >= args.min_probability else UNCERTAIN] += 1
                    window.frames += 1
                    analysed += 1
                    if args.frames and analysed >= args.frames:
                        break
                skipped_total = results.statistics().drops
        except xs.XInferError as exc:  # the camera went away for good: report what was counted
            failure = exc
            skipped_total = stream.statistics().drops
    if window is not None:
        window.skipped = skipped_total - skipped_before
        report(window, args.window, live, started, partial=True)
    print(f"{analysed} frames analysed, {skipped_total} skipped")
    if failure is not None:
        print(f"error: the stream ended: {failure}", file=sys.stderr)
        return 1
    return 0


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (the runtime's default loop), else on asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=str(CLIP),
                        help="a camera URL (rtsp://, http://, ...) or, for a local try, a file")
    parser.add_argument("--model", default=str(MODEL),
                        help="ONNX (CPU), TensorRT .engine, or TorchScript/.pt2 (GPU) model")
    parser.add_argument("--preprocess", help="Preprocess JSON (default: the model's sidecar; "
                        "the bundled model's is built in)")
    parser.add_argument("--labels", default=str(LABELS), help="class names, one a line")
    parser.add_argument("--min-probability", type=float, default=0.25,
                        help=f"frames whose best class is less likely count as {UNCERTAIN}")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per count window")
    parser.add_argument("--open-timeout", type=float, default=10.0)
    parser.add_argument("--read-timeout", type=float, default=5.0)
    parser.add_argument("--frames", type=int, default=0, help="stop after this many results")
    args = parser.parse_args(argv)
    if args.window <= 0:
        parser.error(f"--window must be positive, got {args.window}")
    try:
        return run_async(run(args))
    except xs.XInferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
