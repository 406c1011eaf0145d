"""Benchmark of the detection postprocess (issue 17 item 2), printed as a markdown table.

One frame's output of an 80-class detector at 640x640 (8,400 candidates, strides 8/16/32), as
the runtime hands it to ``detect()``: ``[1, 84, 8400]`` (yolov8) and ``[1, 8400, 85]`` (yolox).
Synthetic but shaped like real output: background candidates score low (the sigmoid of
logits drawn from N(-8, 1.2): none above 0.25, nearly all above 0.001), and ``--objects`` objects each draw a cluster of 20-40
overlapping candidates scoring 0.3-0.95, so NMS has real work. Two settings: ``conf 0.25`` (live
use) and ``conf 0.001`` (how mAP is evaluated: thousands of candidates enter NMS).

Rows: ``cpu`` is numpy on this machine (the CPU backends' path, run on the stream's worker
thread), one frame at a time. ``cuda, torch, batch B`` is the GPU runner's batch stage
(runtime/_detect_gpu.py: decode, threshold, top-k and NMS on the GPU for B frames at once as
fixed-shape work two CUDA graphs replay, then the kept rows copied to the host), timed with CUDA
events around the stage including that copy, divided by B; frames the fixed-shape selection
cannot settle (at conf 0.001 every frame here: thousands of candidates) go through numpy, and the
row counts them. Without a GPU the same stage runs on CPU tensors without graphs (``cpu, torch,
batch B``), so the code is exercised; those rows say nothing about the GPU. Without torch there
are no torch rows. Each torch row also gives the torch calls the stage makes a batch (counted by
a ``TorchFunctionMode``) and its wall time a batch (median of ``--reps``), alone and, at conf
0.25, beside a thread running pure Python. Every torch call lets go of the GIL and must win it
back, which beside a busy thread can take a switch interval (5 ms) each, so in the runtime
(waiter, dispatcher, decode thread, event loop in one process) the calls cost more than their
own time.

Usage: python3 tools/bench_postprocess.py [--frames 200] [--objects 20] [--reps 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xinfer_stream as xs

SIZE = (640, 640)
CLASSES = 80
CANDIDATES = sum((SIZE[0] // s) * (SIZE[1] // s) for s in (8, 16, 32))   # 8,400


def synthetic_yolov8(objects: int, seed: int) -> np.ndarray:
    """[1, 4 + 80, 8400]: cx, cy, w, h in input pixels, then class scores."""
    rng = np.random.default_rng(seed)
    out = np.empty((1, 4 + CLASSES, CANDIDATES), np.float32)
    out[0, 0:2] = rng.uniform(0, 640, (2, CANDIDATES))
    out[0, 2:4] = rng.uniform(4, 200, (2, CANDIDATES))
    out[0, 4:] = 1 / (1 + np.exp(-rng.normal(-8, 1.2, (CLASSES, CANDIDATES))))
    picked = rng.choice(CANDIDATES, (objects, 40), replace=False)
    for obj in range(objects):
        cx, cy = rng.uniform(60, 580, 2)
        w, h = rng.uniform(30, 200, 2)
        cls = int(rng.integers(0, CLASSES))
        members = picked[obj, :int(rng.integers(20, 41))]
        out[0, 0, members] = cx + rng.normal(0, 3, members.size)
        out[0, 1, members] = cy + rng.normal(0, 3, members.size)
        out[0, 2, members] = w * rng.uniform(0.9, 1.1, members.size)
        out[0, 3, members] = h * rng.uniform(0.9, 1.1, members.size)
        out[0, 4 + cls, members] = rng.uniform(0.3, 0.95, members.size)
    return out


def synthetic_yolox(objects: int, seed: int) -> np.ndarray:
    """[1, 8400, 85]: the same kind of frame in YOLOX's raw grid form (offsets, log sizes,
    objectness, class scores)."""
    v8 = synthetic_yolov8(objects, seed)[0].T            # [8400, 84]
    out = np.empty((1, CANDIDATES, 5 + CLASSES), np.float32)
    strides = np.concatenate([np.full((SIZE[0] // s) * (SIZE[1] // s), s) for s in (8, 16, 32)])
    grid = np.concatenate([np.stack(np.meshgrid(np.arange(SIZE[1] // s), np.arange(SIZE[0] // s)),
                                    2).reshape(-1, 2) for s in (8, 16, 32)])
    out[0, :, 0:2] = v8[:, 0:2] / strides[:, None] - grid
    out[0, :, 2:4] = np.log(v8[:, 2:4] / strides[:, None])
    best = v8[:, 4:].max(1)
    out[0, :, 4] = np.maximum(best, 1e-6)                # objectness x class = the v8 score
    out[0, :, 5:] = v8[:, 4:] / out[0, :, 4:5]
    return out


def time_cpu(fmt: str, outputs: list[dict[str, np.ndarray]], conf: float) -> dict[str, Any]:
    detector = xs.detect(fmt, conf=conf, iou=0.45, max_det=300)  # type: ignore[arg-type]
    ctx = xs.FrameContext((1080, 1920), xs.Preprocess(SIZE, "letterbox", pad_value=114))
    detector(outputs[0], ctx)                                   # resolve the format once
    times, kept = [], []
    for out in outputs:
        t0 = time.perf_counter()
        det = detector(out, ctx)
        times.append(time.perf_counter() - t0)
        kept.append(len(det))
    times.sort()
    return {"format": fmt, "conf": conf, "device": "cpu", "frames": len(times),
            "min_ms": times[0] * 1e3, "p50_ms": statistics.median(times) * 1e3, "p90_ms": times[int(0.9 * (len(times) - 1))] * 1e3,
            "mean_kept": float(np.mean(kept))}


def torch_rows(frames: dict[str, list[np.ndarray]], reps: int) -> list[dict[str, Any]]:
    """The batch stage at batch 1, 8 and 32 (1 and 8 on CPU tensors), per frame: on CUDA, GPU
    time from events around the stage and the copy of the kept rows to the host (target <= 0.1 ms
    a frame at batch 32, issue 17 item 2)."""
    try:
        import torch
    except ImportError as exc:
        print(f"(no torch rows: {exc})\n")
        return []
    from xinfer_stream.engines import TensorSpec
    from xinfer_stream.runtime._detect_gpu import detect_stage

    cuda = torch.cuda.is_available()
    device = "cuda:0" if cuda else "cpu"
    card = torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine()
    print(f"torch rows: torch {torch.__version__}, {card}\n")
    pre = xs.Preprocess(SIZE, "letterbox", pad_value=114)
    rows = []
    for fmt, arrays in frames.items():
        for conf in (0.25, 0.001):
            for batch in ((1, 8, 32) if cuda else (1, 8)):
                pred = np.concatenate(arrays[:batch])
                spec = [TensorSpec("out", (None, *pred.shape[1:]), "float32")]
                stage = detect_stage(xs.detect(fmt, conf=conf, iou=0.45, max_det=300),  # type: ignore[arg-type]
                                     spec, pre, device=device)
                assert stage is not None
                x = torch.from_numpy(pred).to(device)
                times, kept = [], []
                for i in range(reps + 3):                        # 3 warm-up runs
                    if cuda:
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        host = stage.select(x)
                        end.record()
                        end.synchronize()
                        elapsed = start.elapsed_time(end) / 1e3
                    else:
                        t0 = time.perf_counter()
                        host = stage.select(x)
                        elapsed = time.perf_counter() - t0
                    if i >= 3:
                        times.append(elapsed / batch)
                        kept.append(int((~np.isnan(host[:, :, 4])).sum()) / batch)
                times.sort()
                rows.append({"format": fmt, "conf": conf, "device": f"{device.split(':')[0]}, torch, batch {batch}",
                             "batch": batch, "frames": len(times) * batch,
                             "min_ms": times[0] * 1e3, "p50_ms": statistics.median(times) * 1e3,
                             "p90_ms": times[int(0.9 * (len(times) - 1))] * 1e3,
                             "mean_kept": float(np.mean(kept)),
                             "graph_mode": stage.graph_mode,
                             "fallback_frames": stage.fallback_frames,
                             "torch_calls": torch_calls(torch, partial(stage.select, x)),
                             "wall_ms_alone": wall_ms(partial(stage.select, x), reps),
                             # At the deployment threshold only: at 0.001 a CPU batch takes
                             # seconds, and the GIL's cost is the same calls'.
                             "wall_ms_busy": (wall_ms(partial(stage.select, x), reps, busy=True)
                                              if conf == 0.25 else None)})
    return rows


def torch_calls(torch: Any, run: Callable[[], object]) -> int:
    """How many torch functions and tensor methods one ``run()`` calls."""
    class Count(torch.overrides.TorchFunctionMode):  # type: ignore[misc,name-defined]
        calls = 0

        def __torch_function__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            Count.calls += getattr(func, "__name__", "") != "__get__"  # attribute reads: no dispatch
            return func(*args, **(kwargs or {}))

    with Count():
        run()
    return Count.calls


def wall_ms(run: Callable[[], object], reps: int, *, busy: bool = False) -> float:
    """Median wall time of ``run()`` in ms, with a thread spinning in pure Python if ``busy``."""
    stop = threading.Event()

    def spin() -> None:
        total = 0
        while not stop.is_set():
            for i in range(1_000):
                total += i * i

    spinner = threading.Thread(target=spin, daemon=True)
    if busy:
        spinner.start()
    try:
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
    finally:
        stop.set()
        if busy:
            spinner.join()
    return statistics.median(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--reps", type=int, default=50, help="timed runs of each torch row")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="seconds: sys.setswitchinterval for this run, how long a thread "
                             "keeps the GIL while another wants it (Python's default: 0.005)")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    frames = {"yolov8": [synthetic_yolov8(args.objects, i) for i in range(args.frames)]}
    frames["yolox"] = [synthetic_yolox(args.objects, i) for i in range(args.frames)]
    rows = [time_cpu(fmt, [{"out": a} for a in arrays], conf)
            for fmt, arrays in frames.items() for conf in (0.25, 0.001)]
    rows += torch_rows(frames, args.reps)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"Detection postprocess, {CANDIDATES} candidates x {CLASSES} classes, {args.objects} "
          f"objects a frame, {args.frames} frames; {platform.processor() or platform.machine()}, "
          f"{cores} cores, numpy {np.__version__}, {datetime.date.today()}; GIL switch interval "
          f"{sys.getswitchinterval() * 1e3:g} ms\n")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"(load average {load:.1f} when it ended: on a shared box, min is the machine's cost and "
          "p50/p90 include waiting for a core)\n")
    print("| format | device | conf | min ms/frame | p50 ms/frame | p90 ms/frame | kept (mean) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['format']} | {r['device']} | {r['conf']} | {r['min_ms']:.2f} | {r['p50_ms']:.2f} | "
              f"{r['p90_ms']:.2f} | {r['mean_kept']:.1f} |")
    stage_rows = [r for r in rows if "torch_calls" in r]
    if stage_rows:
        print("\nThe batch stage's torch calls and wall time a batch, alone and beside a thread "
              "running pure Python:\n")
        print("| format | device | conf | torch calls | ms alone | ms beside a busy thread | "
              "graphs | frames to numpy |")
        print("| --- | --- | --- | ---: | ---: | ---: | --- | ---: |")
        for r in stage_rows:
            print(f"| {r['format']} | {r['device']} | {r['conf']} | {r['torch_calls']} | "
                  f"{r['wall_ms_alone']:.2f} | "
                  f"{'-' if r['wall_ms_busy'] is None else format(r['wall_ms_busy'], '.2f')} | "
                  f"{r['graph_mode']} | {r['fallback_frames']} |")
    if not any(r["device"].startswith("cuda") for r in rows):
        print("\nNo GPU here: the GPU rows (cuda, torch, batch 1/8/32) were not measured.")
    if args.json:
        for r in rows:
            r["switch_interval"] = sys.getswitchinterval()
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
