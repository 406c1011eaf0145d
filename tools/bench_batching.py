"""Batched throughput of ``engine.stream_many`` against the engine alone at the same batch size
(issue 15's target: within 90%), on the GPU machine.

For each batch size B in ``--batches``:

* ``engine alone``: the model's forward captured in one CUDA graph at batch B (torch, FP16, the
  same model the runtime loads), replayed back to back; frames/s = B x replays/s;
* ``stream_many``: 2B cameras, each an unpaced in-memory source of ``--frames`` 224x224 RGB
  frames (so neither decoding nor the upload limits it: the runtime's own batching, dispatch,
  preprocess kernel, graph replay and result delivery do), ``max_batch=B``; frames/s from the
  first result to the last, and the mean batch the runtime formed.

Prints one JSON line a row and a markdown table; ``--json`` writes the rows.

Usage: python3 tools/bench_batching.py [--model resnet18] [--batches 1,2,4,8,16,32]
       [--frames 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xinfer_stream as xs
from xinfer_stream.preprocess import Preprocess

SPEC = Preprocess((224, 224), "shorter_crop", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375),
                  dtype="float16")


def engine_alone(torch: Any, model: Any, batch: int, replays: int = 300) -> float:
    """Frames/s of the model's forward at ``batch``, one CUDA graph replayed back to back."""
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()
    with torch.inference_mode():
        with torch.cuda.stream(stream):
            for _ in range(3):
                model(x)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            model(x)
        for _ in range(20):
            graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
    graph.reset()
    return batch * replays / (start.elapsed_time(end) / 1e3)


async def through_stream_many(engine: xs.StreamingEngine, batch: int, frames: int
                              ) -> dict[str, float]:
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    cameras = {f"cam{i}": [image] * frames for i in range(2 * batch)}
    first = last = 0.0
    count = 0
    async with engine.stream_many(cameras, max_batch=batch) as items:
        async for item in items:
            if isinstance(item, xs.CameraEvent):
                if item.kind == "failed":
                    raise RuntimeError(f"{item.camera} failed: {item.error}")
                continue
            last = time.perf_counter()
            if count == 0:
                first = last
            count += 1
        stats = items.statistics()
    return {"fps": (count - 1) / (last - first), "frames": count,
            "mean_batch": stats.frames / max(1, stats.batches)}


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch
    import torchvision

    model = getattr(torchvision.models, args.model)(weights=None).eval()
    rows: list[dict[str, Any]] = []
    batches = [int(b) for b in args.batches.split(",")]
    reference = model.half().cuda()
    async with xs.load(getattr(torchvision.models, args.model)(weights=None).eval(),
                       preprocess=SPEC) as engine:
        for batch in batches:
            alone = engine_alone(torch, reference, batch)
            many = await through_stream_many(engine, batch, args.frames)
            row = {"model": args.model, "batch": batch, "switch_interval": sys.getswitchinterval(),
                   "engine_alone_fps": alone,
                   "stream_many_fps": many["fps"], "mean_batch": many["mean_batch"],
                   "share_of_alone": many["fps"] / alone}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batches", default="1,2,4,8,16,32")
    parser.add_argument("--frames", type=int, default=400, help="frames a camera")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="seconds: sys.setswitchinterval for this run, how long a thread "
                             "keeps the GIL while another wants it (Python's default: 0.005)")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    import torch
    rows = asyncio.run(main_async(args))
    print(f"\n{torch.cuda.get_device_name(0)}, {datetime.date.today()}, {args.model} FP16\n")
    print("| batch | engine alone (frames/s) | stream_many (frames/s) | mean batch | share |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['batch']} | {r['engine_alone_fps']:,.0f} | {r['stream_many_fps']:,.0f} | "
              f"{r['mean_batch']:.1f} | {r['share_of_alone']:.0%} |")
    if args.json:
        args.json.write_text(json.dumps({"card": torch.cuda.get_device_name(0),
                                         "date": str(datetime.date.today()), "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
