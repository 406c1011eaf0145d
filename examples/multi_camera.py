"""Several cameras, one loaded model: one ``engine.stream_many`` batching frames across cameras.

The model is loaded (and warmed up) once; every camera's frames go into shared engine calls of
up to ``--max-batch`` frames, dispatched when the batch is full or when its oldest frame has
waited ``--max-wait`` milliseconds, oldest first so no camera starves. One ``async for`` gets
every camera's results (each camera's in its frame order) and its events: a camera that fails
(unreachable, dropped for good) is reported as an event and the others keep running. Every
``--every`` seconds a status line per camera is printed; at the end, per-camera and total
throughput and latency.

Run (after ``pip install -e .``)::

    python3 examples/multi_camera.py rtsp://cam-1/stream rtsp://cam-2/stream /dev/video0
    python3 examples/multi_camera.py        # three copies of the bundled clip, on the CPU
    python3 examples/multi_camera.py --realtime a.mp4 b.mp4   # files replayed as 30 fps cameras

``--model`` takes any model ``xs.load`` takes: a TensorRT ``.engine`` or a TorchScript/``.pt2``
file (with ``--preprocess``) run on the GPU. There, ``--decode nvdec`` decodes every camera on
the GPU's video engine, and frames never leave GPU memory: the CPU a frame drops several-fold
(BENCHMARKS.md), which is what lets one host serve many cameras. ``--process`` decodes the
CPU-decoded cameras in worker processes (past one interpreter's GIL; on a GPU their frames are
read by DMA from shared memory registered with it), and ``--decode mixed`` puts every other
camera on NVDEC and the rest on the CPU, for more cameras than NVDEC alone keeps up with.
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
    """One source and what has come of it so far (written by the consuming task only)."""

    name: str
    source: str
    results: int = 0
    last: str = "-"
    statistics: xs.CameraStatistics | None = None
    error: str | None = None


async def watch(items: xs.MultiStream, cameras: dict[str, Camera], frames: int) -> None:
    """Take every camera's results until each ends, fails or has given ``frames`` results."""
    async for item in items:
        if isinstance(item, xs.CameraEvent):
            camera = cameras[item.camera]
            if item.kind == "failed":  # this camera is lost; the others go on
                camera.error = f"{type(item.error).__name__}: {item.error}"
            if item.kind != "opened":
                stats = items.statistics().cameras.get(item.camera)
                camera.statistics = stats or camera.statistics
            continue
        assert item.camera is not None
        camera = cameras[item.camera]
        camera.results += 1
        _, label, probability = item.prediction.best
        camera.last = f"{label} {probability:.2f}"
        if frames and camera.results == frames:
            camera.statistics = items.statistics().cameras[camera.name]
            await items.remove(camera.name)


async def status(items: xs.MultiStream, cameras: dict[str, Camera], every: float,
                 started: float) -> None:
    while True:
        await asyncio.sleep(every)
        elapsed = time.perf_counter() - started
        line = " | ".join(f"{c.name} {c.results} frames {c.results / elapsed:.1f} fps {c.last}"
                          for c in cameras.values())
        print(f"[{time.strftime('%H:%M:%S')}] {line}")


async def run(args: argparse.Namespace) -> int:
    labels = xs.read_labels(args.labels)
    preprocess = (xs.Preprocess.load(args.preprocess) if args.preprocess
                  else EFFICIENTNET if Path(args.model) == MODEL else None)
    sources = args.sources or [str(CLIP)] * 3
    cameras = {f"cam{i}": Camera(f"cam{i}", source) for i, source in enumerate(sources)}
    async with xs.load(args.model, preprocess=preprocess) as engine:
        print(f"model {engine.model.name} on {engine.backend.kind} ({engine.backend.device}); "
              f"{len(cameras)} cameras")
        if args.decode != "cpu" and engine.backend.device != "cuda":
            print(f"error: --decode {args.decode} needs a GPU model (a TensorRT .engine or a "
                  "TorchScript/.pt2 file); this one runs on the CPU", file=sys.stderr)
            return 2
        paced = {"realtime": True, "loop": True} if args.realtime else {}

        def camera(i: int, source: str) -> xs.Camera:
            decode = args.decode if args.decode != "mixed" else ("nvdec", "cpu")[i % 2]
            on_cpu = {"process": True} if args.process and decode == "cpu" else {}
            return xs.Camera(source, options={**paced, **on_cpu}, decode=decode)

        sources_by_name = {name: camera(i, c.source) for i, (name, c) in enumerate(cameras.items())}
        started = time.perf_counter()
        async with engine.stream_many(
                sources_by_name, max_batch=args.max_batch, max_wait=args.max_wait / 1e3,
                postprocess=xs.classify(top=1, labels=labels)) as items:
            reporter = asyncio.ensure_future(status(items, cameras, args.every, started))
            try:
                await watch(items, cameras, args.frames)
            finally:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
            overall = items.statistics()
        elapsed = time.perf_counter() - started
    total = 0
    for c in cameras.values():
        total += c.results
        if c.error is not None:
            print(f"{c.name} ({c.source}): FAILED after {c.results} results: {c.error}")
            continue
        s = c.statistics
        assert s is not None
        print(f"{c.name} ({c.source}): {c.results} results, {c.results / elapsed:.1f} fps, "
              f"{s.drops} dropped, latency p50 {s.latency.p50 * 1e3:.1f} ms "
              f"p99 {s.latency.p99 * 1e3:.1f} ms, last {c.last}")
    sizes = ", ".join(f"{size}: {n}" for size, n in overall.batch_sizes.items())
    print(f"all cameras: {total} results in {elapsed:.2f} s, {total / elapsed:.1f} results/s "
          f"from one engine; {overall.batches} batches (frames: batches {sizes})")
    if overall.gpu:
        modes = sorted({g.graph_mode for g in overall.gpu})
        print(f"GPU: {overall.gpu[0].slots} slots, {', '.join(modes)}; {len(overall.gpu)} "
              f"runners (frame layout x batch bucket); "
              f"{sum(g.frames_from_device_memory for g in overall.gpu)} frames read from GPU "
              f"memory, {sum(g.frames_from_pinned_memory for g in overall.gpu)} from worker "
              "processes' registered memory")
    return 1 if any(c.error for c in cameras.values()) else 0


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
    parser.add_argument("--max-batch", type=int, default=None,
                        help="frames an engine call (default: the engine's max batch, or 32)")
    parser.add_argument("--max-wait", type=float, default=10.0,
                        help="milliseconds the oldest frame may wait for a batch to fill")
    parser.add_argument("--realtime", action="store_true",
                        help="replay files at their frame rate, looping, as cameras would")
    parser.add_argument("--decode", choices=("cpu", "nvdec", "mixed"), default="cpu",
                        help="GPU models: decode on the CPU (default), on NVDEC (frames kept in "
                             "GPU memory), or every other camera on each")
    parser.add_argument("--process", action="store_true",
                        help="decode the CPU-decoded cameras in worker processes")
    args = parser.parse_args(argv)
    try:
        return run_async(run(args))
    except xs.XInferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
