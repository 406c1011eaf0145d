"""Benchmark and accuracy report of GPU preprocessing (issue 7), printed as markdown tables.

Two parts, both on the GPU of this machine, in one run:

1. Accuracy: the fused kernel against its numpy oracle (``preprocess_raw``) on random frames and
   on real frames of every clip under ``$XINFER_SHARED_DATA/video`` (default ../shared/data), in
   every raw format (native, plus PyAV conversions to the others) and every resize mode and
   layout; prints the max absolute error after normalisation.
2. Timing per 1080p frame, side by side: the GPU path (pinned NV12 staging -> cudaMemcpyAsync on a
   copy stream -> event -> fused kernel on the compute stream) against the CPU path (PyAV
   ``reformat`` to RGB + numpy ``preprocess_frame`` + pageable upload of the float32 tensor).
   Also: host enqueue overhead of the GPU path, GPU time of upload and kernel from events, and
   the host copy of decoded planes into the pinned staging (the decode thread's work).

Usage: python3 tools/bench_preprocess.py [--frames 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av

from xinfer_stream.cuda import Device, unavailable_reason
from xinfer_stream.preprocess import Preprocess, preprocess_frame
from xinfer_stream.preprocess._color import YuvColor, preprocess_raw
from xinfer_stream.preprocess._frames import PIXEL_FORMATS, FrameLayout, pixel_format_for
from xinfer_stream.preprocess._kernel import PreprocessKernel

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("XINFER_SHARED_DATA", REPO.parent / "shared" / "data"))
IMAGENET = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
MODES = ("stretch", "letterbox", "shorter_crop")


def planes_of(frame: Any) -> list[np.ndarray]:
    return [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size) for p in frame.planes]


class Runner:
    """Pools sized for the largest case, reused by every measurement."""

    def __init__(self, device: Device, max_frame: int, max_out: int) -> None:
        self.device = device
        self.staging_pool = device.pinned_pool(max_frame, 1)
        self.planes_pool = device.device_pool(max_frame, 1)
        self.out_pool = device.device_pool(max_out, 1)
        self.staging = self.staging_pool.acquire()
        self.planes = self.planes_pool.acquire()
        self.out = self.out_pool.acquire()
        self.copy = device.create_stream()
        self.compute = device.create_stream()
        self.uploaded = device.create_event()
        self.t0 = device.create_event(timing=True)
        self.t1 = device.create_event(timing=True)
        self.t2 = device.create_event(timing=True)
        self.kernels: dict[Preprocess, PreprocessKernel] = {}

    def kernel(self, spec: Preprocess) -> PreprocessKernel:
        if spec not in self.kernels:
            self.kernels[spec] = PreprocessKernel(self.device, spec)
        return self.kernels[spec]

    def enqueue(self, spec: Preprocess, layout: FrameLayout, color: YuvColor | None) -> None:
        self.planes.copy_from_host(self.staging, stream=self.copy, nbytes=layout.nbytes)
        self.uploaded.record(stream=self.copy)
        self.compute.wait(self.uploaded)
        self.kernel(spec).enqueue(self.planes, layout, self.out, stream=self.compute, color=color)

    def run(self, spec: Preprocess, layout: FrameLayout, packed: np.ndarray,
            color: YuvColor | None) -> np.ndarray:
        self.staging.array[:layout.nbytes] = packed
        self.out.fill(0xFF, stream=self.compute)
        self.enqueue(spec, layout, color)
        self.compute.synchronize()
        return self.out.read(spec.dtype, spec.input_shape(1))

    def close(self) -> None:
        for loan in (self.staging, self.planes, self.out):
            loan.release()


def max_err(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not np.isfinite(a64).all():
        return float("inf")
    return float(np.abs(a64 - b64).max())


def accuracy(runner: Runner, frames_per_clip: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    colors = [YuvColor(m, r) for m in ("bt601", "bt709") for r in ("limited", "full")]  # type: ignore[arg-type]
    # Random frames: every format, mode, layout, colour order, dtype, odd sizes.
    worst: dict[str, float] = {}
    for fmt in PIXEL_FORMATS:
        for (h, w), size in [((97, 131), (64, 48)), ((23, 37), (60, 70)), ((1080, 1920), (224, 224))]:
            layout = FrameLayout(fmt, h, w)
            packed = rng.integers(0, 256, layout.nbytes, dtype=np.uint8)
            for mode in MODES:
                for out_layout in ("nchw", "nhwc"):
                    for dtype in ("float32", "float16"):
                        color = colors[int(rng.integers(0, 4))] if layout.is_yuv else None
                        spec = Preprocess(size, mode, IMAGENET[0], IMAGENET[1],  # type: ignore[arg-type]
                                          str(rng.choice(["rgb", "bgr"])), out_layout, dtype)  # type: ignore[arg-type]
                        e = max_err(runner.run(spec, layout, packed, color),
                                    preprocess_raw(spec, layout, packed, color)[None])
                        worst[dtype] = max(worst.get(dtype, 0.0), e)
    for dtype, e in worst.items():
        rows.append({"source": "random frames (all formats, modes, layouts, bgr/rgb)",
                     "dtype": dtype, "cases": 4 * 3 * 3 * 2, "max_error": e})
    # Real frames of every shared clip.
    clips = sorted((SHARED / "video").glob("*")) if (SHARED / "video").is_dir() else []
    for clip in clips:
        cases, e_max = 0, 0.0
        try:
            container = av.open(str(clip))
        except av.FFmpegError as exc:
            rows.append({"source": clip.name, "dtype": "float32", "cases": 0, "max_error": None,
                         "note": f"not decodable: {exc}"})
            continue
        with container:
            decoded = 0
            try:
                for frame in container.decode(video=0):
                    if decoded >= frames_per_clip:
                        break
                    decoded += 1
                    native = pixel_format_for(frame.format.name)
                    color = YuvColor.from_metadata(frame.colorspace, frame.color_range,
                                                   height=frame.height,
                                                   decoder_format=frame.format.name)
                    for fmt in PIXEL_FORMATS:
                        source = frame if fmt == native else frame.reformat(format=fmt)
                        layout = FrameLayout(fmt, frame.height, frame.width)
                        packed = np.empty(layout.nbytes, np.uint8)
                        layout.pack(planes_of(source), packed)
                        c = color if layout.is_yuv else None
                        for mode in MODES:
                            for out_layout in ("nchw", "nhwc"):
                                spec = Preprocess((224, 224), mode, IMAGENET[0], IMAGENET[1],  # type: ignore[arg-type]
                                                  "rgb", out_layout)  # type: ignore[arg-type]
                                e_max = max(e_max, max_err(runner.run(spec, layout, packed, c),
                                                           preprocess_raw(spec, layout, packed, c)[None]))
                                cases += 1
            except av.FFmpegError:
                pass  # the damaged clip: what decoded is what we test
        rows.append({"source": f"{clip.name} ({decoded} frames; native + 3 conversions)",
                     "dtype": "float32", "cases": cases, "max_error": e_max})
    return rows


def real_1080p_frames(count: int) -> list[Any]:
    """Real content at 1080p: frames of a shared clip scaled up by swscale, as yuv420p."""
    clip = SHARED / "video" / "car-detection.mp4"
    frames = []
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.reformat(format="yuv420p", width=1920, height=1080))
            if len(frames) >= count:
                break
    return frames


def timing(runner: Runner, count: int) -> list[dict[str, Any]]:
    frames = real_1080p_frames(count)
    nv12 = [f.reformat(format="nv12") for f in frames]
    layout = FrameLayout("nv12", 1080, 1920)
    color = YuvColor("bt709", "limited")
    rows = []
    for spec in (Preprocess((224, 224), "shorter_crop", IMAGENET[0], IMAGENET[1]),
                 Preprocess((640, 640), "letterbox", IMAGENET[0], IMAGENET[1]),
                 Preprocess((640, 640), "letterbox", IMAGENET[0], IMAGENET[1], dtype="float16")):
        kernel = runner.kernel(spec)
        # Warm up both paths (module load, first-touch of pools, swscale contexts).
        for f in nv12[:5]:
            layout.pack(planes_of(f), runner.staging.array)
            runner.enqueue(spec, layout, color)
        runner.compute.synchronize()
        pack_us, enqueue_us, e2e_us, upload_us, kernel_us = [], [], [], [], []
        for f in nv12:
            t = time.perf_counter()
            layout.pack(planes_of(f), runner.staging.array)       # decode thread's copy
            t_pack = time.perf_counter()
            runner.t0.record(stream=runner.copy)
            runner.planes.copy_from_host(runner.staging, stream=runner.copy, nbytes=layout.nbytes)
            runner.uploaded.record(stream=runner.copy)
            runner.compute.wait(runner.uploaded)
            runner.t1.record(stream=runner.compute)
            kernel.enqueue(runner.planes, layout, runner.out, stream=runner.compute, color=color)
            runner.t2.record(stream=runner.compute)
            t_enq = time.perf_counter()
            runner.t2.synchronize()
            t_end = time.perf_counter()
            pack_us.append((t_pack - t) * 1e6)
            enqueue_us.append((t_enq - t_pack) * 1e6)
            e2e_us.append((t_end - t_pack) * 1e6)
            upload_us.append(runner.t1.elapsed_ms(runner.t0) * 1e3)
            kernel_us.append(runner.t2.elapsed_ms(runner.t1) * 1e3)
        # Host enqueue overhead alone, many frames back to back (no waits in between).
        t = time.perf_counter()
        for _ in nv12:
            runner.enqueue(spec, layout, color)
        t_loop = time.perf_counter()
        runner.compute.synchronize()
        enqueue_only_us = (t_loop - t) * 1e6 / len(nv12)
        # The CPU path, same frames (yuv420p as decoded), same spec.
        cpu_us = []
        with runner.device.device_pool(runner.kernel(spec).output_nbytes(1), 1) as pool, \
                pool.acquire() as dst:
            for f in frames[:5]:
                dst.write(preprocess_frame(spec, f.to_ndarray(format="rgb24")))
            for f in frames:
                t = time.perf_counter()
                rgb = f.reformat(format="rgb24").to_ndarray()
                x = preprocess_frame(spec, rgb)
                dst.write(x)  # pageable cudaMemcpy, waits for completion
                cpu_us.append((time.perf_counter() - t) * 1e6)
        med = statistics.median
        gpu_e2e = med(e2e_us)
        rows.append({
            "spec": f"{spec.size[0]}x{spec.size[1]} {spec.resize} {spec.dtype} {spec.layout}",
            "frames": len(frames),
            "gpu_path_us_per_frame": gpu_e2e,
            "gpu_path_with_pinned_pack_us": med([a + b for a, b in zip(pack_us, e2e_us)]),
            "cpu_path_us_per_frame": med(cpu_us),
            "speedup": med(cpu_us) / gpu_e2e,
            "speedup_incl_pack": med(cpu_us) / med([a + b for a, b in zip(pack_us, e2e_us)]),
            "host_enqueue_us": med(enqueue_us),
            "host_enqueue_back_to_back_us": enqueue_only_us,
            "gpu_upload_us": med(upload_us),
            "gpu_kernel_us": med(kernel_us),
            "pack_into_pinned_us": med(pack_us),
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="1080p frames timed per spec")
    parser.add_argument("--accuracy-frames", type=int, default=3, help="frames per real clip")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"no GPU: {reason}", file=sys.stderr)
        return 2
    with Device(0) as device:
        runner = Runner(device, FrameLayout("rgb24", 1080, 1920).nbytes, 640 * 640 * 3 * 4)
        acc = accuracy(runner, args.accuracy_frames)
        tim = timing(runner, args.frames)
        runner.close()
        card = device.name
    stamp = datetime.date.today().isoformat()
    print(f"\n### Accuracy: kernel vs numpy oracle ({card}, {stamp})\n")
    print("| source | dtype | cases | max abs error |\n|---|---|---|---|")
    for r in acc:
        print(f"| {r['source']} | {r['dtype']} | {r['cases']} | {r['max_error']} |")
    print(f"\n### 1080p NV12 frame, GPU path vs CPU path ({card}, {stamp}; medians, µs)\n")
    print("| spec | GPU path (upload+kernel, e2e) | CPU path | speedup | + pack into pinned | "
          "speedup incl. pack | host enqueue | enqueue back-to-back | GPU upload | GPU kernel |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in tim:
        print(f"| {r['spec']} | {r['gpu_path_us_per_frame']:.0f} | {r['cpu_path_us_per_frame']:.0f} | "
              f"{r['speedup']:.1f}x | {r['gpu_path_with_pinned_pack_us']:.0f} | "
              f"{r['speedup_incl_pack']:.1f}x | {r['host_enqueue_us']:.1f} | "
              f"{r['host_enqueue_back_to_back_us']:.1f} | {r['gpu_upload_us']:.1f} | "
              f"{r['gpu_kernel_us']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"card": card, "date": stamp, "accuracy": acc,
                                         "timing": tim}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
