"""What the Ray fleet costs: one engine's throughput through ``engine.stream_many`` in this
process against the same engine in a one-actor fleet on a single-node Ray (its results carried
to the driver by the fleet's polls), in the same run, rounds alternating.

Cameras are ``--cameras`` copies of one clip, looping, not paced (``loop=True``, policy
``every``): each side runs as fast as decode and the engine allow, and the frames a second
reaching the consumer's ``async for`` over ``--seconds`` (after ``--warmup`` seconds) are its
throughput. Both sides use the same model, Preprocess, ``classify(top=5)`` postprocess and
batching (``max_batch`` 32, ``max_wait`` 10 ms). The fleet's actor takes the GPU
(``num_gpus=1``) with the torch backend, or on a machine without one, runs the model on ONNX
Runtime (a check of the benchmark itself, not a number to report).

Models: ``--backend torch``: torchvision's resnet18 (random weights, FP16 input), scripted to
a TorchScript file the actor loads by path. ``--backend onnxruntime``: the bundled
EfficientNet-Lite0.

Usage: python3 tools/bench_fleet.py [--backend torch|onnxruntime] [--cameras 8]
       [--seconds 15] [--warmup 5] [--rounds 2] [--clip CLIP] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xinfer_stream as xs
from xinfer_stream.preprocess import Preprocess
from xinfer_stream.service import FleetOptions, open_fleet

REPO = Path(__file__).resolve().parent.parent
SPEC = {
    "torch": Preprocess((224, 224), "shorter_crop", (123.675, 116.28, 103.53),
                        (58.395, 57.12, 57.375), dtype="float16"),
    "onnxruntime": Preprocess((224, 224), "shorter_crop", (127.0, 127.0, 127.0),
                              (128.0, 128.0, 128.0)),
}
# ONNX Runtime's threads, the same on both sides (an actor's default would be its CPU share).
THREADS: dict[str, int | None] = {"torch": None, "onnxruntime": os.cpu_count()}
MAX_BATCH = 32
MAX_WAIT = 0.010


def make_model(backend: str, folder: Path) -> Path:
    if backend == "onnxruntime":
        return REPO / "xinfer_stream" / "_assets" / "efficientnet_lite0.onnx"
    import torch
    import torchvision

    path = folder / "resnet18.pt"
    model = torchvision.models.resnet18(weights=None).eval()
    with warnings.catch_warnings():  # torch 2.10+ deprecates TorchScript; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def cameras(clip: Path, n: int) -> dict[str, xs.Camera]:
    return {f"cam{i}": xs.Camera(clip, policy="every", options={"loop": True})
            for i in range(n)}


async def count(items: AsyncIterator[Any], warmup: float, seconds: float) -> float:
    """Results a second over ``seconds``, after ``warmup`` seconds from the first result."""
    first = start = None
    frames = 0
    async for item in items:
        if not isinstance(item, xs.Result):
            continue
        now = time.perf_counter()
        if first is None:
            first = now
        if start is None and now - first >= warmup:
            start = now
        elif start is not None:
            frames += 1
            if now - start >= seconds:
                return frames / (now - start)
    raise RuntimeError("the stream ended before the measurement did")


async def local(model: Path, backend: str, clip: Path, n: int, warmup: float,
                seconds: float) -> float:
    async with xs.load(model, preprocess=SPEC[backend], backend=backend,
                       threads=THREADS[backend]) as engine:
        async with engine.stream_many(cameras(clip, n), max_batch=MAX_BATCH, max_wait=MAX_WAIT,
                                      postprocess=xs.classify(top=5)) as items:
            return await count(items, warmup, seconds)


async def fleet(model: Path, backend: str, clip: Path, n: int, warmup: float,
                seconds: float) -> float:
    options = FleetOptions(model, actors=1, gpu=backend == "torch", backend=backend,
                           cpus_per_actor=os.cpu_count() or 1, threads=THREADS[backend],
                           preprocess=SPEC[backend], postprocess=xs.classify(top=5),
                           max_batch=MAX_BATCH, max_wait=MAX_WAIT)
    async with open_fleet(options, cameras(clip, n)) as items:
        return await count(items, warmup, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["torch", "onnxruntime"])
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clip", type=Path, default=REPO / "xinfer_stream" / "_assets"
                        / "bottle-detection.mp4")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import ray

    import xinfer_stream.cuda as xcuda
    backend = args.backend or ("torch" if xcuda.unavailable_reason() is None else "onnxruntime")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows: dict[str, list[float]] = {"stream_many": [], "fleet": []}
    try:
        with tempfile.TemporaryDirectory() as folder:
            model = make_model(backend, Path(folder))
            for round_ in range(args.rounds):
                for side, run in (("stream_many", local), ("fleet", fleet)):
                    fps = asyncio.run(run(model, backend, args.clip, args.cameras,
                                          args.warmup, args.seconds))
                    rows[side].append(fps)
                    print(f"round {round_ + 1}: {side:12s} {fps:8.1f} frames/s", flush=True)
    finally:
        ray.shutdown()
    local_fps, fleet_fps = (statistics.mean(rows[k]) for k in ("stream_many", "fleet"))
    card = "cpu"
    if backend == "torch":
        import torch
        card = torch.cuda.get_device_name(0)
    summary = {
        "backend": backend, "card": card, "cameras": args.cameras, "clip": args.clip.name,
        "seconds": args.seconds, "rounds": args.rounds,
        "stream_many_fps": rows["stream_many"], "fleet_fps": rows["fleet"],
        "cost": 1 - fleet_fps / local_fps, "ray": ray.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    print(f"{backend} on {card}: stream_many {local_fps:.1f} frames/s, fleet {fleet_fps:.1f} "
          f"frames/s: the fleet costs {summary['cost']:.1%} (target <= 5%)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
