"""A robot's perception loop: act on the newest camera frame only, and know how old it is.

A control loop must never act on a backlog. The stream runs with ``policy="latest"``: when the
model is slower than the camera, frames it could not get to are replaced by newer ones (and
counted) instead of queueing up, so every result describes the world as it was at most about one
inference ago. Each result is handed to ``Controller.act``, which stands in for the robot: it
turns the classifier's top class into an action, and refuses to act on a result older than the
deadline.

Glass-to-result latency is the age of a result when the loop gets it, counted from the moment
its frame was captured ("hit the glass"):

* the default (a video file) is replayed as a camera: frame k is released at ``start + pts_k``
  in real time, whatever the loop does, and that instant is its capture time. The file is
  decoded ahead by the replay; a real camera adds its own exposure, encoding, transport and our
  decode before that instant (the decode cost is printed, measured).
* a live source (``rtsp://...``, ``http://...``, ``/dev/video0``) is streamed directly; its
  frames' capture times are estimated from their timestamps, anchored at the first frame's
  decode, so the camera's constant delay before that is not included (frames without
  timestamps count from their own decode).

Run (after ``pip install -e .``): ``python3 examples/robotics_loop.py`` uses the bundled
EfficientNet-Lite0 on the CPU and the bundled clip. ``--model`` takes any model ``xs.load``
takes: a TensorRT ``.engine`` or a TorchScript/``torch.export`` file (with ``--preprocess``) run
on the GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

import xinfer_stream as xs
from xinfer_stream.video import open_source

ASSETS = Path(xs.__file__).resolve().parent / "_assets"  # bundled with the package
CLIP = ASSETS / "bottle-detection.mp4"
MODEL = ASSETS / "efficientnet_lite0.onnx"
LABELS = ASSETS / "imagenet_classes.txt"
# How EfficientNet-Lite0 was trained: 224x224 RGB, (x - 127) / 128.
EFFICIENTNET = xs.Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3,
                             std=(128.0,) * 3)


class ReplayCamera:
    """A video file delivered as a camera would: frame k at ``start + pts_k``, in real time.

    Owns the file's frame source (decoding ahead on its own thread); close it after the stream
    that reads :meth:`frames` is closed. ``capture_time(k)`` is when frame k hit the glass
    (``time.perf_counter()``), kept for the last ``_KEEP`` frames.
    """

    _KEEP = 4096

    def __init__(self, path: Path, fps: float | None) -> None:
        self._fps = fps
        self._source = open_source(path, format="rgb24")
        self._captured_at = [0.0] * self._KEEP
        self._lock = threading.Lock()
        self.captured = 0

    def frames(self) -> Iterator[npt.NDArray[np.uint8]]:
        """The RGB frames, each released at its capture time (runs on the stream's decode thread)."""
        start = time.perf_counter()
        first_pts: float | None = None
        for k, frame in enumerate(self._source):
            if self._fps is None and frame.pts is not None:
                first_pts = frame.pts if first_pts is None else first_pts
                due = start + (frame.pts - first_pts)
            else:
                due = start + k / (self._fps or 30.0)
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            with self._lock:
                # A frame decoded late still counts from when the camera would have taken it.
                self._captured_at[k % self._KEEP] = due
                self.captured = k + 1
            yield frame.image

    def capture_time(self, k: int) -> float:
        with self._lock:
            return self._captured_at[k % self._KEEP]

    def decode_ms_per_frame(self) -> float:
        stats = self._source.statistics()
        return 1e3 * stats.decode_seconds / max(1, stats.frames_decoded)

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> ReplayCamera:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Controller:
    """Stands in for the robot: one action per fresh result; stale results are not acted on."""

    def __init__(self, target: str, min_probability: float, deadline_s: float) -> None:
        self.target = target
        self.min_probability = min_probability
        self.deadline_s = deadline_s
        self.action = "start"
        self.counts: dict[str, int] = {}

    def act(self, result: xs.Result, age_s: float) -> str:
        if age_s > self.deadline_s:
            action = "hold (stale perception)"
        else:
            _, label, probability = result.prediction.best
            seen = self.target in label and probability >= self.min_probability
            action = "approach" if seen else "search"
        self.counts[action] = self.counts.get(action, 0) + 1
        return action


def is_file(source: str) -> bool:
    return "://" not in source and not source.startswith("/dev/")


async def run(args: argparse.Namespace) -> int:
    labels = xs.read_labels(args.labels)
    preprocess = (xs.Preprocess.load(args.preprocess) if args.preprocess
                  else EFFICIENTNET if Path(args.model) == MODEL else None)
    controller = Controller(args.target, args.min_probability, args.deadline_ms / 1e3)
    ages: list[float] = []
    camera = ReplayCamera(Path(args.source), args.fps) if is_file(args.source) else None
    try:
        async with xs.load(args.model, preprocess=preprocess) as engine:
            print(f"model {engine.model.name} on {engine.backend.kind} ({engine.backend.device}); "
                  f"source {args.source}" + (" replayed as a camera" if camera else " (live)"))
            frames = camera.frames() if camera is not None else args.source
            async with engine.stream(frames, policy="latest",
                                     postprocess=xs.classify(top=1, labels=labels)) as results:
                anchor: tuple[float, float] | None = None  # live: (decode time, pts) of frame 0
                async for result in results:
                    now = time.perf_counter()
                    if camera is not None:
                        captured = camera.capture_time(result.frame_index)
                    elif result.pts is None:
                        captured = now - result.latency  # decoded at; no better clock
                    else:
                        if anchor is None:
                            anchor = (now - result.latency, result.pts)
                        captured = anchor[0] + (result.pts - anchor[1])
                    age = now - captured
                    ages.append(age)
                    action = controller.act(result, age)
                    if action != controller.action:
                        _, label, p = result.prediction.best
                        print(f"frame {result.frame_index:5d}: {action:<24} ({label} {p:.2f}; "
                              f"glass-to-result {age * 1e3:6.1f} ms)")
                        controller.action = action
                    if args.frames and len(ages) >= args.frames:
                        break
                stats = results.statistics()
    finally:
        if camera is not None:
            camera.close()

    a = np.asarray(ages) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99]) if a.size else (float("nan"),) * 3
    captured_frames = camera.captured if camera is not None else stats.frames + stats.drops
    print(f"acted on {len(ages)} results from {captured_frames} captured frames; "
          f"{stats.drops} frames were replaced by newer ones before the model got to them "
          "(latest-frame policy)")
    print(f"glass-to-result: p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, "
          f"max {a.max() if a.size else float('nan'):.1f} ms"
          + ("" if camera is not None else " (from the first frame's decode)"))
    print(f"  inside it: inference p50 {stats.inference.p50 * 1e3:.1f} ms, "
          f"preprocess p50 {stats.preprocess.p50 * 1e3:.2f} ms, "
          f"waiting for the model p50 {stats.queue_wait.p50 * 1e3:.1f} ms")
    if camera is not None:
        print(f"  before it (not counted, done ahead by the replay): decode "
              f"{camera.decode_ms_per_frame():.2f} ms a frame")
    if stats.gpu is not None:
        print(f"  GPU: {stats.gpu.slots} slots, {stats.gpu.graph_mode}")
    print("actions: " + ", ".join(f"{k} {v}" for k, v in sorted(controller.counts.items())))
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
                        help="a video file (replayed as a camera), a URL or a camera device")
    parser.add_argument("--model", default=str(MODEL),
                        help="ONNX (CPU), TensorRT .engine, or TorchScript/.pt2 (GPU) model")
    parser.add_argument("--preprocess", help="Preprocess JSON (default: the model's sidecar; "
                        "the bundled model's is built in)")
    parser.add_argument("--labels", default=str(LABELS), help="class names, one a line")
    parser.add_argument("--target", default="bottle", help="class name (substring) to approach")
    parser.add_argument("--min-probability", type=float, default=0.3)
    parser.add_argument("--deadline-ms", type=float, default=150.0,
                        help="results older than this are not acted on")
    parser.add_argument("--fps", type=float, help="replay rate (default: the file's timestamps)")
    parser.add_argument("--frames", type=int, default=0, help="stop after this many results")
    args = parser.parse_args(argv)
    try:
        return run_async(run(args))
    except xs.XInferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
