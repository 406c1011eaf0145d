"""The host side of ``engine.stream_many`` on its own, without a GPU: frames/s through the GPU
path (batcher, dispatch, window packing, slots, the waiter, the results thread, the event loop)
with the GPU replaced by the emulated device of tests/test_gpu_runner_emulated.py whose kernel
and model do nothing. What it gives is the ceiling the Python side sets on this host; the GPU
machine's numbers are tools/bench_batching.py's.

The load is tools/bench_batching.py's: for each batch size B, 2B unpaced cameras, each an
in-memory source of ``--frames`` 224x224 RGB frames, ``max_batch=B``. Prints one JSON line a
row: frames/s, the mean batch formed, and this process's CPU time a frame.

Usage: python3 tools/bench_many_host.py [--batches 1,4,8,16,32] [--frames 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import xinfer_stream as xs  # noqa: E402
import xinfer_stream.cuda  # noqa: E402
from xinfer_stream.engines import TensorSpec  # noqa: E402
from xinfer_stream.runtime import _slots  # noqa: E402

from tests import test_gpu_runner_emulated as emulated  # noqa: E402

sys.path.insert(0, str(REPO / "tools"))
from bench_batching import SPEC, through_stream_many  # noqa: E402


class _NoKernel:
    """The preprocess kernel's interface, doing nothing: only the host's work is timed."""

    def __init__(self, device: object, spec: object) -> None:
        pass

    def enqueue(self, planes: object, layout: object, out: object, *, stream: object,
                color: object, batch: int) -> None:
        pass


class _Backend(emulated.FakeCudaBackend):
    """The emulated model with bench_batching's input (224x224, float16); its enqueue does
    nothing (patched below)."""

    def __init__(self, max_batch: int) -> None:
        super().__init__(max_batch=max_batch)
        self.inputs = (TensorSpec("x", (None, 3, 224, 224), "float16"),)


def emulate_the_gpu() -> None:
    """Route the runtime's CUDA device, kernel and model enqueue to do-nothing fakes."""
    patches = [(emulated.FakeContext, "enqueue", lambda self, *, stream: None),
               (_slots, "PreprocessKernel", _NoKernel),
               (xinfer_stream.cuda, "Device", lambda ordinal=0: emulated.FakeDevice())]
    for owner, name, value in patches:
        setattr(owner, name, value)


async def run(batch: int, frames: int) -> dict[str, float]:
    """bench_batching's run on the emulated GPU, plus the CPU time this process spent a frame
    (every thread: cameras, dispatch, waiter, results, the event loop; engine load included)."""
    cpu = time.process_time()
    async with xs.load(_Backend(batch), preprocess=SPEC) as engine:  # type: ignore[arg-type]
        row = await through_stream_many(engine, batch, frames)
    row["cpu_us_per_frame"] = (time.process_time() - cpu) / (2 * batch * frames) * 1e6
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,8,16,32")
    parser.add_argument("--frames", type=int, default=300, help="frames a camera")
    parser.add_argument("--repeats", type=int, default=3, help="runs a batch size (median)")
    args = parser.parse_args()
    emulate_the_gpu()
    for batch in (int(b) for b in args.batches.split(",")):
        runs = [asyncio.run(run(batch, args.frames)) for _ in range(args.repeats)]
        row: dict[str, Any] = {
            "batch": batch, "cameras": 2 * batch, "cpus": os.cpu_count(),
            "fps_median": statistics.median(r["fps"] for r in runs),
            "fps_runs": [round(r["fps"]) for r in runs],
            "mean_batch": statistics.median(r["mean_batch"] for r in runs),
            "cpu_us_per_frame": statistics.median(r["cpu_us_per_frame"] for r in runs)}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
