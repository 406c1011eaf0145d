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
EfficientNet-Lite0, or with ``--tiny`` a 1x1-convolution classifier of 8x8 inputs, so that the
host's work (decode, the runtime, the fleet's polls) is the bound on a machine without a GPU.

Each side also reports the CPU time a frame of the process running the engine (this one, or
the actor's) and of this process as the fleet's driver, over the measured seconds.

``--polls``: what one poll costs instead: a Ray actor answering ``poll(n)`` with ``n`` results
of the shape ``classify(top=5)`` gives a 1,000-class model, called back to back; prints the
round trip and both processes' CPU time a poll for n = 1, 8, 32 and 256 (what the fleet's
20 ms gathering per poll, service/_fleet.py, is chosen on).

Usage: python3 tools/bench_fleet.py [--backend torch|onnxruntime] [--tiny] [--cameras 8]
       [--seconds 15] [--warmup 5] [--rounds 2] [--clip CLIP] [--json out.json]
       python3 tools/bench_fleet.py --polls
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
from xinfer_stream.service import ActorEvent, FleetOptions, open_fleet

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


TINY = Preprocess((8, 8), "stretch", (127.0, 127.0, 127.0), (128.0, 128.0, 128.0))


def make_model(backend: str, folder: Path, tiny: bool) -> Path:
    if tiny:
        from tests.test_cli import tiny_classifier

        return tiny_classifier(folder / "tiny.onnx")
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


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def count(items: AsyncIterator[Any], warmup: float, seconds: float) -> dict[str, float]:
    """Results a second over ``seconds``, after ``warmup`` seconds from the first result, with
    the CPU time a result of the engine's process (this one, or the fleet's actor: the pid
    of its "up" event) and of this one."""
    engine_pid = os.getpid()
    first = start = None
    frames = 0
    cpu = (0.0, 0.0)
    async for item in items:
        if isinstance(item, ActorEvent) and item.kind == "up" and item.pid is not None:
            engine_pid = item.pid
        if not isinstance(item, xs.Result):
            continue
        now = time.perf_counter()
        if first is None:
            first = now
        if start is None and now - first >= warmup:
            start = now
            cpu = (cpu_seconds(engine_pid), time.process_time())
        elif start is not None:
            frames += 1
            if now - start >= seconds:
                return {"fps": frames / (now - start),
                        "engine_cpu_us": (cpu_seconds(engine_pid) - cpu[0]) / frames * 1e6,
                        "this_cpu_us": (time.process_time() - cpu[1]) / frames * 1e6}
    raise RuntimeError("the stream ended before the measurement did")


async def local(model: Path, spec: Preprocess, backend: str, clip: Path, n: int, warmup: float,
                seconds: float) -> dict[str, float]:
    async with xs.load(model, preprocess=spec, backend=backend,
                       threads=THREADS[backend]) as engine:
        async with engine.stream_many(cameras(clip, n), max_batch=MAX_BATCH, max_wait=MAX_WAIT,
                                      postprocess=xs.classify(top=5)) as items:
            return await count(items, warmup, seconds)


async def fleet(model: Path, spec: Preprocess, backend: str, clip: Path, n: int, warmup: float,
                seconds: float) -> dict[str, float]:
    options = FleetOptions(model, actors=1, gpu=backend == "torch", backend=backend,
                           cpus_per_actor=os.cpu_count() or 1, threads=THREADS[backend],
                           preprocess=spec, postprocess=xs.classify(top=5),
                           max_batch=MAX_BATCH, max_wait=MAX_WAIT)
    async with open_fleet(options, cameras(clip, n)) as items:
        return await count(items, warmup, seconds)


def polls() -> None:
    """``--polls``: the cost of one poll, by the number of results it carries."""
    import numpy as np
    import ray

    logits = np.random.default_rng(0).random((1, 1000), dtype=np.float32)
    prediction = xs.classify(top=5)({"logits": logits})

    @ray.remote
    class Polled:
        async def poll(self, n: int) -> list[xs.Result]:
            return [xs.Result(i, i / 30, {"logits": logits.copy()}, 0.01, "clip.mp4",
                              prediction, "cam0") for i in range(n)]

        def pid(self) -> int:
            return os.getpid()

    async def measure(actor: Any, pid: int) -> None:
        for n in (1, 8, 32, 256):
            for _ in range(20):
                await actor.poll.remote(n)
            calls = 300
            cpu = (cpu_seconds(pid), time.process_time(), time.perf_counter())
            for _ in range(calls):
                await actor.poll.remote(n)
            actor_ms = (cpu_seconds(pid) - cpu[0]) / calls * 1e3
            driver_ms = (time.process_time() - cpu[1]) / calls * 1e3
            trip_ms = (time.perf_counter() - cpu[2]) / calls * 1e3
            print(f"{n:4d} results a poll: round trip {trip_ms:.2f} ms; CPU a poll: actor "
                  f"{actor_ms:.2f} ms, driver {driver_ms:.2f} ms", flush=True)

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        actor = Polled.remote()  # type: ignore[attr-defined]
        asyncio.run(measure(actor, ray.get(actor.pid.remote())))
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["torch", "onnxruntime"])
    parser.add_argument("--tiny", action="store_true",
                        help="a 1x1-convolution model of 8x8 inputs on ONNX Runtime")
    parser.add_argument("--polls", action="store_true", help="the cost of one poll instead")
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clip", type=Path, default=REPO / "xinfer_stream" / "_assets"
                        / "bottle-detection.mp4")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.polls:
        polls()
        return
    import ray

    import xinfer_stream.cuda as xcuda
    backend = args.backend or ("torch" if xcuda.unavailable_reason() is None
                               and not args.tiny else "onnxruntime")
    if args.tiny and backend != "onnxruntime":
        parser.error("--tiny runs on ONNX Runtime: drop --backend torch")
    spec = TINY if args.tiny else SPEC[backend]
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows: dict[str, list[dict[str, float]]] = {"stream_many": [], "fleet": []}
    try:
        with tempfile.TemporaryDirectory() as folder:
            model = make_model(backend, Path(folder), args.tiny)
            for round_ in range(args.rounds):
                for side, run in (("stream_many", local), ("fleet", fleet)):
                    row = asyncio.run(run(model, spec, backend, args.clip, args.cameras,
                                          args.warmup, args.seconds))
                    rows[side].append(row)
                    print(f"round {round_ + 1}: {side:12s} {row['fps']:8.1f} frames/s; CPU a "
                          f"frame: the engine's process {row['engine_cpu_us']:5.0f} us, this "
                          f"one {row['this_cpu_us']:5.0f} us", flush=True)
    finally:
        ray.shutdown()
    local_fps, fleet_fps = (statistics.mean(r["fps"] for r in rows[k])
                            for k in ("stream_many", "fleet"))
    card = "cpu"
    if backend == "torch":
        import torch
        card = torch.cuda.get_device_name(0)
    summary = {
        "backend": backend, "model": "tiny" if args.tiny else model.name, "card": card,
        "cameras": args.cameras, "clip": args.clip.name,
        "seconds": args.seconds, "rounds": args.rounds,
        "stream_many": rows["stream_many"], "fleet": rows["fleet"],
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
