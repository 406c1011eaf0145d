"""Where the host time of the GPU path's upload goes: packing a frame's crop window into pinned
staging, measured per frame, on the GPU machine.

Rows (1080p and 720p yuv420p frames decoded from the clip, ResNet's 224x224 shorter-side crop):

* ``pack, write-combined staging``: what the runtime does (``UploadPlan.pack`` into the slot's
  write-combined pinned staging), one thread;
* ``pack, cached pinned staging``: the same into ordinary (cached) pinned memory;
* ``pack, N threads``: the frame's rows split over N threads (numpy releases the GIL while it
  copies), write-combined staging;
* each of those again while a decoder thread decodes the clip in the same process (``open_source``,
  as in ``engine.stream``), to see GIL and memory-bandwidth contention.

Prints one JSON line a row (median and p90 microseconds a frame over ``--repeats`` batches of 4)
and writes them with ``--json``. An experiment, not a product option: the runtime keeps its one
path (runtime/_upload.py); this tells whether a change to it would pay.

Usage: python3 tools/bench_pack.py --clip-1080p car_1080p.mp4 --clip-720p car_720p.mp4 [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xinfer_stream.cuda import Device
from xinfer_stream.preprocess import Preprocess
from xinfer_stream.preprocess._frames import FrameLayout
from xinfer_stream.runtime._upload import UploadPlan
from xinfer_stream.video import open_source

SPEC = Preprocess((224, 224), "shorter_crop", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375),
                  layout="nchw", dtype="float16")
BATCH = 4


def decoded(clip: Path, count: int) -> list[Any]:
    source = open_source(str(clip), format="yuv420p")
    frames = []
    try:
        while len(frames) < count and (frame := source.get()) is not None:
            frames.append(frame)
    finally:
        source.close()
    return frames


def split_pack(plan: UploadPlan, frames: list[Any], staging: np.ndarray, pool: ThreadPoolExecutor,
               threads: int) -> None:
    """``plan.pack`` with each frame's window rows split over ``threads`` threads."""
    layout = plan.layout
    n = layout.nbytes
    assert plan.windows is not None
    spans = layout.window_slices(plan.windows)
    jobs = []
    for i, frame in enumerate(frames):
        targets = layout.unpack(staging[i * n:(i + 1) * n])
        for k, (plane, target) in enumerate(zip(frame.planes, targets)):
            rows, cols = spans[k]
            cols = slice(cols.start // 64 * 64, min(target.shape[1], -(-cols.stop // 64) * 64))
            jobs.append((target[rows, cols], plane.reshape(plane.shape[0], -1)[rows, cols]))

    def part(k: int) -> None:
        for target, source in jobs:
            lo, hi = target.shape[0] * k // threads, target.shape[0] * (k + 1) // threads
            np.copyto(target[lo:hi], source[lo:hi])

    futures = [pool.submit(part, k) for k in range(1, threads)]
    part(0)
    for future in futures:
        future.result()


def measure(fn: Any, repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / BATCH * 1e6)
    times.sort()
    return {"median_us": statistics.median(times), "p90_us": times[int(0.9 * (len(times) - 1))]}


def decode_until(clip: Path, stop: threading.Event) -> None:
    """Decode ``clip`` over and over until ``stop`` (the contending decoder thread)."""
    while not stop.is_set():
        source = open_source(str(clip), format="yuv420p")
        try:
            while not stop.is_set() and (frame := source.get()) is not None:
                frame.release()
        finally:
            source.close()


def bench_clip(device: Device, pool: ThreadPoolExecutor, label: str, clip: Path,
               repeats: int) -> list[dict[str, Any]]:
    frames = decoded(clip, BATCH)
    first = frames[0]
    layout = FrameLayout("yuv420p", first.height, first.width)
    plan = UploadPlan.of(layout, SPEC)
    whole = UploadPlan(layout, None)
    rows = []
    with device.pinned_pool(BATCH * layout.nbytes, 1, write_combined=True) as wc, \
            device.pinned_pool(BATCH * layout.nbytes, 1) as cached:
        wc_buf, cached_buf = wc.acquire(), cached.acquire()
        variants = {
            "pack, write-combined staging": lambda: plan.pack(frames, wc_buf.array, range(BATCH)),
            "pack, cached pinned staging":
                lambda: plan.pack(frames, cached_buf.array, range(BATCH)),
            "whole frames, write-combined staging":
                lambda: whole.pack(frames, wc_buf.array, range(BATCH)),
        }
        for threads in (2, 4):
            variants[f"pack, {threads} threads, write-combined staging"] = (
                lambda t=threads: split_pack(plan, frames, wc_buf.array, pool, t))
        for contended in (False, True):
            stop = threading.Event()
            decoder = threading.Thread(target=decode_until, args=(clip, stop))
            if contended:
                decoder.start()
                time.sleep(0.5)
            try:
                for name, fn in variants.items():
                    for _ in range(10):
                        fn()
                    row = {"input": label, "row": name, "decoder running": contended,
                           "window_bytes": plan.bytes_per_frame, "frame_bytes": layout.nbytes,
                           **measure(fn, repeats)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                stop.set()
                if contended:
                    decoder.join()
        wc_buf.release()
        cached_buf.release()
    for frame in frames:
        frame.release()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-1080p", type=Path, required=True)
    parser.add_argument("--clip-720p", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with Device(0) as device, ThreadPoolExecutor(7) as pool:
        rows: list[dict[str, Any]] = [{"card": device.name}]
        for label, clip in (("1080p", args.clip_1080p), ("720p", args.clip_720p)):
            rows += bench_clip(device, pool, label, clip, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
