"""The host side of ``engine.stream_many`` on its own, without a GPU: frames/s through the GPU
path (batcher, dispatch, window packing, slots, the waiter, the results thread, the event loop)
with the GPU replaced by the emulated device of tests/test_gpu_runner_emulated.py whose kernel
and model do nothing. What it gives is the ceiling the Python side sets on this host; the GPU
machine's numbers are tools/bench_batching.py's.

The load is tools/bench_batching.py's: for each batch size B, 2B unpaced cameras, each an
in-memory source of ``--frames`` 224x224 RGB frames, ``max_batch=B``. Prints one JSON line a
row: frames/s, the mean batch formed, and this process's CPU time a frame.

``--clip CLIP``: instead, ``--cameras`` unpaced cameras looping CLIP, each decoded in a worker
process (``options={"process": True, "threads": 1}``, as tools/bench_cameras.py's ``process``
decode) with its ring registered with the emulated device, whose copies from the ring do
nothing (on a GPU they are DMA), for ``--seconds`` after 2 s of warm-up: what this process
spends a frame receiving, batching and dispatching frames it does not decode (the decoders' CPU
is theirs, not counted; on a small host they set the frame rate).

``--release-gil`` (the in-memory rows): every emulated CUDA call (copies, event record and wait,
graph launch, the model's enqueue) lets go of the GIL and takes it back, as cuda-python's bindings and PyTorch do
around the real calls, so the hand-overs the GIL makes on a GPU host happen here too; the rows
then also say how many such calls a batch made.

Usage: python3 tools/bench_many_host.py [--batches 1,4,8,16,32] [--frames 300] [--repeats 3]
       [--release-gil]
       python3 tools/bench_many_host.py --clip CLIP [--cameras 4] [--seconds 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
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


def emulate_the_gpu(release_gil: bool = False) -> list[int]:
    """Route the runtime's CUDA device, kernel and model enqueue to do-nothing fakes; with
    ``release_gil``, each emulated CUDA call lets go of the GIL first (see the module
    docstring). Returns a counter of those calls (one element)."""
    patches = [(emulated.FakeContext, "enqueue", lambda self, *, stream: None),
               (_slots, "PreprocessKernel", _NoKernel),
               (xinfer_stream.cuda, "Device", lambda ordinal=0: emulated.FakeDevice())]
    for owner, name, value in patches:
        setattr(owner, name, value)
    calls = [0]
    if release_gil:
        def letting_go(call: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(call)
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                calls[0] += 1
                time.sleep(0)  # drops the GIL and takes it back, as a call made without it
                return call(*args, **kwargs)
            return wrapped

        for owner, names in (
                (emulated.FakeStream, ("wait", "synchronize")),
                (emulated.FakeEvent, ("record", "record_legacy_stream", "synchronize",
                                      "elapsed_ms")),
                (emulated.FakeBuffer, ("copy_from_host", "copy_from_host_2d", "copy_to_host",
                                       "copy_from_address", "copy_from_address_2d")),
                (emulated.FakeGraph, ("launch",)),
                (emulated.FakeContext, ("enqueue",)),
                (_NoKernel, ("enqueue",))):
            for name in names:
                setattr(owner, name, letting_go(getattr(owner, name)))
    return calls


async def run(batch: int, frames: int) -> dict[str, float]:
    """bench_batching's run on the emulated GPU, plus the CPU time this process spent a frame
    (every thread: cameras, dispatch, waiter, results, the event loop; engine load included)."""
    cpu = time.process_time()
    async with xs.load(_Backend(batch), preprocess=SPEC) as engine:  # type: ignore[arg-type]
        row = await through_stream_many(engine, batch, frames)
    row["cpu_us_per_frame"] = (time.process_time() - cpu) / (2 * batch * frames) * 1e6
    return row


async def run_clip(clip: Path, cameras: int, seconds: float) -> dict[str, float]:
    """``--clip``: process-decoded cameras through stream_many, ``max_batch`` = cameras; frames
    a second and this process's CPU time a frame over ``seconds`` after 2 s."""
    options = {"process": True, "threads": 1, "loop": True}
    sources = {f"cam{i}": xs.Camera(clip, options=options) for i in range(cameras)}
    async with xs.load(_Backend(cameras), preprocess=SPEC) as engine:  # type: ignore[arg-type]
        async with engine.stream_many(sources, max_batch=cameras) as items:
            frames, started, cpu = 0, time.perf_counter(), 0.0
            measuring = False
            async for item in items:
                if isinstance(item, xs.CameraEvent):
                    if item.kind == "failed":
                        raise RuntimeError(f"{item.camera} failed: {item.error}")
                    continue
                now = time.perf_counter()
                if not measuring and now - started >= 2.0:
                    measuring, frames, started, cpu = True, 0, now, time.process_time()
                frames += 1
                if measuring and now - started >= seconds:
                    return {"fps": frames / (now - started),
                            "cpu_us_per_frame": (time.process_time() - cpu) / frames * 1e6}
    raise RuntimeError("the cameras ended before the measurement did")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,8,16,32")
    parser.add_argument("--frames", type=int, default=300, help="frames a camera")
    parser.add_argument("--repeats", type=int, default=3, help="runs a batch size (median)")
    parser.add_argument("--clip", type=Path, help="process-decoded cameras of this clip instead")
    parser.add_argument("--cameras", type=int, default=4, help="with --clip")
    parser.add_argument("--seconds", type=float, default=8.0, help="with --clip")
    parser.add_argument("--release-gil", action="store_true",
                        help="emulated CUDA calls let go of the GIL, as the real ones do")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="seconds: sys.setswitchinterval for this run, how long a thread "
                             "keeps the GIL while another wants it (Python's default: 0.005)")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    calls = emulate_the_gpu(args.release_gil)
    if args.clip is not None:
        for name in ("copy_from_address", "copy_from_address_2d"):
            setattr(emulated.FakeBuffer, name, lambda self, *a, **k: None)
        runs = [asyncio.run(run_clip(args.clip, args.cameras, args.seconds))
                for _ in range(args.repeats)]
        print(json.dumps({
            "clip": args.clip.name, "cameras": args.cameras, "cpus": os.cpu_count(),
            "switch_interval": sys.getswitchinterval(),
            "fps_runs": [round(r["fps"]) for r in runs],
            "cpu_us_per_frame_runs": [round(r["cpu_us_per_frame"]) for r in runs],
            "cpu_us_per_frame": statistics.median(r["cpu_us_per_frame"] for r in runs)}))
        return 0
    for batch in (int(b) for b in args.batches.split(",")):
        calls[0] = 0
        runs = [asyncio.run(run(batch, args.frames)) for _ in range(args.repeats)]
        row: dict[str, Any] = {
            "batch": batch, "cameras": 2 * batch, "cpus": os.cpu_count(),
            "switch_interval": sys.getswitchinterval(), "release_gil": args.release_gil,
            "gil_releases_per_batch": round(
                calls[0] / sum(r["frames"] / r["mean_batch"] for r in runs), 1),
            "fps_median": statistics.median(r["fps"] for r in runs),
            "fps_runs": [round(r["fps"]) for r in runs],
            "mean_batch": statistics.median(r["mean_batch"] for r in runs),
            "cpu_us_per_frame": statistics.median(r["cpu_us_per_frame"] for r in runs)}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
