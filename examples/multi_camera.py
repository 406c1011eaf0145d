"""Several cameras, one loaded model: one concurrent stream per camera.

The model is loaded (and warmed up) once; every camera gets its own ``engine.stream(...)``, run as
its own asyncio task, with its own decode thread and, on a GPU backend, its own in-flight slots,
CUDA streams and completion thread, so one slow or broken camera does not hold the others back.
A camera that fails (unreachable, dropped for good) is reported and the others keep running.
Every ``--every`` seconds a status line per camera is printed; at the end, per-camera and total
throughput and latency.

Run (after ``pip install -e .``)::

    python3 examples/multi_camera.py rtsp://cam-1/stream rtsp://cam-2/stream /dev/video0
    python3 examples/multi_camera.py        # three copies of the bundled clip, on the CPU

``--model`` takes any model ``xs.load`` takes: a TensorRT ``.engine`` or a TorchScript/``.pt2``
file (with ``--preprocess``) run on the GPU. There, ``--decode nvdec`` decodes every camera on
the GPU's video engine, and frames never leave GPU memory: the CPU a frame drops several-fold
(BENCHMARKS.md), which is what lets one host serve many cameras.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
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


@dataclass
class Camera:
    """One source and what its stream has produced so far (written by its task only)."""

    name: str
    source: str
    results: int = 0
    last: str = "-"
    statistics: xs.StreamStatistics | None = None
    error: str | None = None


async def watch(engine: xs.StreamingEngine, camera: Camera, labels: list[str],
                frames: int, decode: str) -> None:
    """Stream one camera until it ends, ``frames`` results arrive, or the task is cancelled."""
    try:
        async with engine.stream(camera.source, decode=decode,
                                 postprocess=xs.classify(top=1, labels=labels)) as results:
            async for result in results:
                camera.results += 1
                _, label, probability = result.prediction.best
                camera.last = f"{label} {probability:.2f}"
                if camera.results % 16 == 0:
                    camera.statistics = results.statistics()
                if frames and camera.results >= frames:
                    break
            camera.statistics = results.statistics()
    except xs.XInferError as exc:  # this camera is lost; the others go on
        camera.error = f"{type(exc).__name__}: {exc}"


async def status(cameras: list[Camera], every: float) -> None:
    while True:
        await asyncio.sleep(every)
        line = " | ".join(
            f"{c.name} {c.results} frames"
            + (f" {c.statistics.fps:.1f} fps" if c.statistics else "") + f" {c.last}"
            for c in cameras)
        print(f"[{time.strftime('%H:%M:%S')}] {line}")


async def run(args: argparse.Namespace) -> int:
    labels = xs.read_labels(args.labels)
    preprocess = (xs.Preprocess.load(args.preprocess) if args.preprocess
                  else EFFICIENTNET if Path(args.model) == MODEL else None)
    sources = args.sources or [str(CLIP)] * 3
    cameras = [Camera(f"cam{i}", source) for i, source in enumerate(sources)]
    async with xs.load(args.model, preprocess=preprocess) as engine:
        print(f"model {engine.model.name} on {engine.backend.kind} ({engine.backend.device}); "
              f"{len(cameras)} cameras")
        if args.decode == "nvdec" and engine.backend.device != "cuda":
            print("error: --decode nvdec needs a GPU model (a TensorRT .engine or a "
                  "TorchScript/.pt2 file); this one runs on the CPU", file=sys.stderr)
            return 2
        started = time.perf_counter()
        reporter = asyncio.ensure_future(status(cameras, args.every))
        try:
            # Each watch() handles its own camera's failure, so gather only ends early when
            # this task is cancelled (Ctrl-C): then every stream is closed on the way out.
            await asyncio.gather(*(watch(engine, c, labels, args.frames, args.decode)
                                   for c in cameras))
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        elapsed = time.perf_counter() - started
    total = 0
    for c in cameras:
        total += c.results
        if c.error is not None:
            print(f"{c.name} ({c.source}): FAILED after {c.results} results: {c.error}")
            continue
        s = c.statistics
        assert s is not None
        gpu = s.gpu
        print(f"{c.name} ({c.source}): {s.frames} results, {s.fps:.1f} fps, {s.drops} dropped, "
              f"latency p50 {s.end_to_end.p50 * 1e3:.1f} ms p99 {s.end_to_end.p99 * 1e3:.1f} ms, "
              f"last {c.last}" + (f"; GPU {gpu.slots} slots, {gpu.graph_mode}, "
                                  f"{gpu.frames_from_device_memory} frames read from GPU "
                                  "memory" if gpu is not None else ""))
    print(f"all cameras: {total} results in {elapsed:.2f} s, {total / elapsed:.1f} results/s "
          "from one engine")
    return 1 if any(c.error for c in cameras) else 0


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (the runtime's default loop), else on asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*",
                        help="camera URLs, devices or files (default: the bundled clip, 3 times)")
    parser.add_argument("--model", default=str(MODEL),
                        help="ONNX (CPU), TensorRT .engine, or TorchScript/.pt2 (GPU) model")
    parser.add_argument("--preprocess", help="Preprocess JSON (default: the model's sidecar; "
                        "the bundled model's is built in)")
    parser.add_argument("--labels", default=str(LABELS), help="class names, one a line")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between status lines")
    parser.add_argument("--frames", type=int, default=0,
                        help="stop each camera after this many results")
    parser.add_argument("--decode", choices=("cpu", "nvdec"), default="cpu",
                        help="GPU models: decode on the CPU (default) or on NVDEC, frames kept in "
                             "GPU memory")
    args = parser.parse_args(argv)
    try:
        return run_async(run(args))
    except xs.XInferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
