"""Soak the streaming runtime: N frames of a looped real clip through a small real model, with
resident memory, threads and open file descriptors sampled as it runs (on the GPU path, device
memory too).

    python3 tools/soak.py --frames 100000                # CPU path: prints a table and a verdict
    python3 tools/soak.py --frames 100000 --json out.json
    python3 tools/soak.py --device cuda --frames 100000 --json gpu.json   # the GPU path
    python3 tools/soak.py --device cuda --decode nvdec --frames 100000    # ... decoding on NVDEC

CPU path (the default): the model is a small ONNX classifier built with onnx.helper (the soak
tests the runtime, not the model); frames are decoded from the clip played over and over (a list
of the same path) and resized in swscale to the model's input, so the run is bound by decode and
the runtime itself.

GPU path (``--device cuda``): a small PyTorch classifier (three convs, max-pooling, global average
pooling, a linear layer; seeded random weights, eval mode, on CUDA) loaded with
``xs.load(module, preprocess=...)``, as the GPU tests do. The clip's raw yuv420p planes (full size)
are decoded; the stream's worker copies the window the preprocess reads into the slot's pinned
staging; the GPU uploads it, and its preprocess kernel resizes and normalises it in the runtime's
slots (one CUDA graph a slot); results come back through the waiter thread. With ``--decode
nvdec`` the clip is decoded on NVDEC instead and its frames stay in GPU memory
(``engine.stream(decode="nvdec")``): each loop of the clip opens a decoder of its own, with its
own CUDA frame pool, which must all come back. Device memory is sampled as well: memory used on
the whole device (``cudaMemGetInfo`` total - free, through ``xinfer_stream.cuda.memory_info``),
and PyTorch's ``memory_allocated()`` and ``memory_reserved()``.

Both paths first run a short pass (200 frames, its own engine) so that what lives as long as the
process exists before anything is counted: ONNX Runtime's cache database and FFmpeg's threads; on
the GPU the CUDA context, lazily loaded kernels, cuDNN/cuBLAS handles and the NVRTC disk cache.

Growth is judged after a warm-up (the first fifth of the run): resident memory (read after
glibc has returned its free heap pages, :func:`trim_heap`) may wander by at most
``--rss-slack-mib``; threads and descriptors must come back exactly to their level once the
engine is closed. On the GPU, device memory (used, and PyTorch's allocated) may wander by at most
``--device-slack-mib`` after warm-up, and once the engine is closed it must be back within that
of its level before the soak: the runtime's own buffers (pinned and device pools, slots, graphs)
freed. Both levels are taken settled: garbage collected, the GPU idle, PyTorch's cuBLAS
workspaces released (PyTorch keeps one per cuBLAS handle and CUDA stream it has seen, past the
stream's life; what it released after the soak is reported) and its caching allocator emptied.
Used memory is device-wide: run the GPU soak on an otherwise idle GPU.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import xinfer_stream as xs  # noqa: E402 - after the sys.path line above

MIB = float(1 << 20)
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class DeviceSample:
    """Device memory at one instant, MiB: ``used`` on the whole device (cudaMemGetInfo total -
    free), PyTorch's allocated and reserved (its caching allocator); for the settled samples
    (before, after close), what stays reserved by PyTorch memory pool (:func:`reserved_by_pool`:
    memory a live CUDA graph's private pool keeps shows under its id)."""

    used_mib: float
    torch_allocated_mib: float
    torch_reserved_mib: float
    pools: dict[str, float] = field(default_factory=dict)


def reserved_by_pool(segments: list[dict[str, Any]]) -> dict[str, float]:
    """MiB reserved by each PyTorch memory pool, from ``torch.cuda.memory_snapshot()``'s
    segments: ``"default"`` for the caching allocator's own, ``"private A.B"`` for a private
    pool (a CUDA graph's, kept while the graph lives). After the cache is emptied, memory left
    in a private pool names a graph someone still holds."""
    pools: dict[str, float] = {}
    for segment in segments:
        pool = tuple(segment.get("segment_pool_id") or (0, 0))
        name = "default" if pool == (0, 0) else "private " + ".".join(map(str, pool))
        pools[name] = pools.get(name, 0.0) + segment.get("total_size", 0) / MIB
    return {name: round(mib, 1) for name, mib in sorted(pools.items())}


@dataclass(frozen=True)
class Sample:
    frames: int
    seconds: float
    rss_mib: float
    threads: int
    fds: int
    device: DeviceSample | None = None  # the GPU soak only


@dataclass(frozen=True)
class DeviceReport:
    """The GPU soak's device memory: levels before the soak and after its engine closed (both
    settled, see the module docstring), growth while streaming after warm-up, and what the
    runtime reported about its path (graph mode, batches, bytes uploaded a frame, NVDEC frames)."""

    name: str
    total_mib: float
    before: DeviceSample
    after_close: DeviceSample
    used_growth_mib: float
    allocated_growth_mib: float
    cublas_workspaces_mib: float
    runtime: dict[str, Any]

    def within(self, slack_mib: float) -> bool:
        return (self.used_growth_mib <= slack_mib and self.allocated_growth_mib <= slack_mib
                and self.after_close.used_mib - self.before.used_mib <= slack_mib
                and self.after_close.torch_allocated_mib - self.before.torch_allocated_mib
                <= slack_mib)


@dataclass(frozen=True)
class SoakReport:
    frames: int
    seconds: float
    fps: float
    samples: list[Sample]
    rss_growth_mib: float
    threads_before: int
    threads_after: int
    fds_before: int
    fds_after: int
    device: DeviceReport | None = None  # the GPU soak only

    @property
    def ok(self) -> bool:
        return self.threads_after == self.threads_before and self.fds_after == self.fds_before

    def passed(self, rss_slack_mib: float, device_slack_mib: float = 16.0) -> bool:
        """The verdict: threads and descriptors back to their level, resident memory growth
        after warm-up within ``rss_slack_mib``, and on the GPU, device memory within
        ``device_slack_mib`` (:meth:`DeviceReport.within`)."""
        return (self.ok and self.rss_growth_mib <= rss_slack_mib
                and (self.device is None or self.device.within(device_slack_mib)))

    def to_json(self) -> dict[str, Any]:
        """As a dict for JSON; the CPU soak's has no device keys (the same as before the GPU
        soak existed)."""
        return asdict(self, dict_factory=lambda items: {k: v for k, v in items
                                                        if not (k == "device" and v is None)})


def rss_mib() -> float:
    """Resident memory once the C allocator has handed its free heap pages back (see
    :func:`trim_heap`): memory something holds, not pages glibc keeps for later."""
    trim_heap()
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def trim_heap() -> None:
    """Return the free pages at the top and in the middle of the C heap to the OS (glibc's
    ``malloc_trim``; nothing where the C library has none). In a process that has run much
    before (the test suite: 550 MiB resident when the soak starts), glibc keeps freed pages in
    its per-thread arenas, and raw resident memory grew 40-50 MiB over 100,000 frames while,
    trimmed before each sample, it stayed within 2 MiB (388-390 MiB); run alone it is flat
    either way."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    malloc_trim(0)


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def quiet_counts(steady: float = 0.25, limit: float = 5.0) -> tuple[int, int]:
    """(threads, fds) once they have not changed for ``steady`` seconds (at most ``limit``): a
    pass that has just ended may leave a native thread (a codec's) a moment to exit."""
    counts = (os_threads(), open_fds())
    deadline = time.monotonic() + limit
    since = time.monotonic()
    while time.monotonic() - since < steady and time.monotonic() < deadline:
        time.sleep(0.05)
        now = (os_threads(), open_fds())
        if now != counts:
            counts, since = now, time.monotonic()
    return counts


def growth(values: list[float]) -> float:
    """How far ``values`` rose above the first one (NaN for none)."""
    return max(values) - values[0] if values else float("nan")


def warm_part(samples: list[Sample]) -> list[Sample]:
    """The samples after warm-up (the first fifth of the run)."""
    return samples[len(samples) // 5:]


def small_model(path: Path, size: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((8, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "fc"], ["logits"])],
        "soak", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what ONNX Runtime reads, whatever IR a newer onnx package writes
    onnx.save(model, path)
    return path


# -- the GPU path's helpers ------------------------------------------------------------------------
def cuda_torch() -> Any:
    """PyTorch, when it can run on CUDA device 0 here; otherwise ``RuntimeError`` saying why."""
    from xinfer_stream.cuda import unavailable_reason

    try:
        torch = importlib.import_module("torch")
    except ImportError as exc:
        raise RuntimeError(f"the GPU soak needs PyTorch with CUDA ({exc})") from exc
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    if not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no CUDA device")
    return torch


def small_torch_model(torch: Any) -> Any:
    """A small real classifier (for 64x64 input: 32, 16, then 8 after the strided convs and the
    max-pooling; any size works), seeded, in eval mode, on CUDA."""
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval().cuda()


def device_sample(torch: Any) -> DeviceSample:
    from xinfer_stream.cuda import memory_info

    free, total = memory_info(0)
    return DeviceSample((total - free) / MIB, torch.cuda.memory_allocated(0) / MIB,
                        torch.cuda.memory_reserved(0) / MIB)


def settle_device(torch: Any) -> tuple[DeviceSample, float]:
    """Device memory once nothing is cached: garbage collected, the GPU idle, PyTorch's cuBLAS
    workspaces released and its caching allocator emptied. Also the MiB the workspaces held."""
    gc.collect()
    torch.cuda.synchronize(0)
    held = torch.cuda.memory_allocated(0)
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:
        clear_workspaces()
    released = (held - torch.cuda.memory_allocated(0)) / MIB
    torch.cuda.empty_cache()
    sample = replace(device_sample(torch),
                     pools=reserved_by_pool(torch.cuda.memory_snapshot()))
    return sample, released


def device_report(samples: list[Sample], before: DeviceSample, after_close: DeviceSample, *,
                  name: str, total_mib: float, cublas_workspaces_mib: float,
                  runtime: dict[str, Any]) -> DeviceReport:
    """The device half of the verdict, from the samples taken while streaming."""
    warm = [s.device for s in warm_part(samples) if s.device is not None]
    return DeviceReport(name, total_mib, before, after_close,
                        growth([d.used_mib for d in warm]),
                        growth([d.torch_allocated_mib for d in warm]),
                        cublas_workspaces_mib, runtime)


def gpu_runtime_summary(stats: xs.StreamStatistics) -> dict[str, Any]:
    """What a GPU stream's statistics say about its path (``StreamStatistics.gpu``)."""
    gpu = stats.gpu
    if gpu is None:
        return {}
    return {"graph_mode": gpu.graph_mode, "graph_batches": gpu.graph_batches,
            "plain_batches": gpu.plain_batches,
            "upload_bytes_per_frame": gpu.upload_bytes_per_frame,
            "windowed_upload": gpu.windowed_upload,
            "frames_from_device_memory": gpu.frames_from_device_memory}


# -- the soak ----------------------------------------------------------------------------------------
async def soak(clip: Path, frames: int, *, size: int = 64, every: int = 2000, device: str = "cpu",
               decode: str = "cpu", on_sample: Callable[[Sample], None] | None = None,
               ) -> tuple[int, float, list[Sample], dict[str, Any]]:
    """Stream ``frames`` frames of ``clip`` (looped) on ``device``, decoded as ``decode`` says
    (GPU path only), sampling every ``every`` frames: (frames seen, seconds, samples, the GPU
    path's runtime summary or ``{}``). ``on_sample(sample)`` is called with each sample (a long
    soak's progress)."""
    clip_frames = 0
    with xs_video_open(clip) as probe:
        for _ in probe:
            clip_frames += 1
    loops = -(-frames // clip_frames)
    samples: list[Sample] = []
    runtime: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch: Any = None
        if device == "cuda":
            torch = cuda_torch()
            pre = xs.Preprocess(size=(size, size), resize="shorter_crop",
                                mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
            # Full-size yuv420p planes; the GPU kernel resizes.
            engine = xs.load(small_torch_model(torch), preprocess=pre)
            options: dict[str, Any] = {"decode": decode}
        else:
            model = small_model(Path(tmp) / "soak.onnx", size)
            pre = xs.Preprocess(size=(size, size))
            engine = xs.load(model, preprocess=pre, threads=1)
            options = {"width": size, "height": size}
        started = time.perf_counter()
        seen = 0
        async with engine:
            async with engine.stream([clip] * loops, postprocess=xs.classify(top=1),
                                     **options) as results:
                async for _ in results:
                    seen += 1
                    if seen % every == 0 or seen == frames:
                        samples.append(Sample(seen, time.perf_counter() - started, rss_mib(),
                                              os_threads(), open_fds(),
                                              device_sample(torch) if torch is not None else None))
                        if on_sample is not None:
                            on_sample(samples[-1])
                    if seen == frames:
                        break
                if torch is not None:
                    runtime = gpu_runtime_summary(results.statistics())
        seconds = time.perf_counter() - started
    return seen, seconds, samples, runtime


def run_soak(clip: Path, frames: int, *, device: str = "cpu", every: int = 2000,
             decode: str = "cpu", on_sample: Callable[[Sample], None] | None = None) -> SoakReport:
    """Soak on a fresh event loop; threads and descriptors are counted before the loop starts
    and after it has shut down, so the loop's own executor threads do not count as leaks.
    ``device``: ``"cpu"`` (ONNX Runtime) or ``"cuda"`` (the GPU path, device memory sampled;
    ``RuntimeError`` saying why when it cannot run here); ``decode``: ``"cpu"`` or ``"nvdec"``
    (the GPU path only); ``on_sample``: called with each sample of the measured run."""
    from xinfer_stream.cli import run_async

    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if decode != "cpu" and device != "cuda":
        raise ValueError(f"decode={decode!r} is for the GPU path (device='cuda')")
    torch = cuda_torch() if device == "cuda" else None
    # One short pass first: the first use of ONNX Runtime and FFmpeg in a process opens files and
    # threads that live as long as the process (ONNX Runtime's cache database, a codec thread);
    # on the GPU, the CUDA context, kernels loaded on first use, cuDNN/cuBLAS handles.
    run_async(soak(clip, 200, every=200, device=device, decode=decode))
    before = settle_device(torch)[0] if torch is not None else None
    threads_before, fds_before = quiet_counts()
    seen, seconds, samples, runtime = run_async(soak(clip, frames, every=every, device=device,
                                                     decode=decode, on_sample=on_sample))
    deadline = time.monotonic() + 5
    while (os_threads(), open_fds()) != (threads_before, fds_before) and time.monotonic() < deadline:
        time.sleep(0.05)
    rss_growth = growth([s.rss_mib for s in warm_part(samples)])
    gpu = None
    if torch is not None and before is not None:
        after, cublas = settle_device(torch)
        gpu = device_report(samples, before, after, name=str(torch.cuda.get_device_name(0)),
                            total_mib=int(torch.cuda.get_device_properties(0).total_memory) / MIB,
                            cublas_workspaces_mib=cublas, runtime=runtime)
    return SoakReport(seen, seconds, seen / seconds, samples, rss_growth, threads_before,
                      os_threads(), fds_before, open_fds(), gpu)


def xs_video_open(clip: Path):  # type: ignore[no-untyped-def]
    from xinfer_stream.video import open_source

    return open_source(clip, width=64, height=64)


def print_report(report: SoakReport, verdict: bool) -> None:
    gpu = report.device
    head = f"{'frames':>8} {'seconds':>8} {'rss MiB':>8} {'threads':>7} {'fds':>5}"
    print(head + (f" {'dev used':>9} {'allocated':>9} {'reserved':>9}" if gpu is not None else ""))
    for s in report.samples:
        line = f"{s.frames:8d} {s.seconds:8.1f} {s.rss_mib:8.1f} {s.threads:7d} {s.fds:5d}"
        if s.device is not None:
            line += (f" {s.device.used_mib:9.1f} {s.device.torch_allocated_mib:9.1f}"
                     f" {s.device.torch_reserved_mib:9.1f}")
        print(line)
    if gpu is not None:
        rt = gpu.runtime
        print(f"device {gpu.name} ({gpu.total_mib:.0f} MiB), in MiB: used {gpu.before.used_mib:.1f} "
              f"before, growth after warm-up {gpu.used_growth_mib:.1f}, "
              f"{gpu.after_close.used_mib:.1f} after close "
              f"({gpu.after_close.used_mib - gpu.before.used_mib:+.1f}); torch allocated growth "
              f"{gpu.allocated_growth_mib:.1f}, {gpu.before.torch_allocated_mib:.1f} before, "
              f"{gpu.after_close.torch_allocated_mib:.1f} after close; cuBLAS workspaces released "
              f"{gpu.cublas_workspaces_mib:.1f}; runtime: {rt.get('graph_mode')} "
              f"({rt.get('graph_batches')} graphed batches, {rt.get('plain_batches')} plain), "
              f"{rt.get('upload_bytes_per_frame')} bytes uploaded a frame "
              f"({'the window the preprocess reads' if rt.get('windowed_upload') else 'whole'}), "
              f"{rt.get('frames_from_device_memory')} frames read from GPU memory (NVDEC); "
              f"reserved by pool before {gpu.before.pools}, after close {gpu.after_close.pools}")
    print(f"{report.frames} frames in {report.seconds:.1f} s ({report.fps:.0f} fps); RSS growth after "
          f"warm-up {report.rss_growth_mib:.1f} MiB; threads {report.threads_before}->{report.threads_after}; "
          f"fds {report.fds_before}->{report.fds_after}: {'OK' if verdict else 'GROWTH'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--clip", type=Path, default=REPO / "xinfer_stream" / "_assets" / "bottle-detection.mp4")
    ap.add_argument("--device", choices=DEVICES, default="cpu",
                    help="cpu: ONNX Runtime (default); cuda: the GPU path, device memory sampled")
    ap.add_argument("--decode", choices=("cpu", "nvdec"), default="cpu",
                    help="GPU path only: decode on the CPU (default) or on NVDEC into GPU memory")
    ap.add_argument("--rss-slack-mib", type=float, default=32.0)
    ap.add_argument("--device-slack-mib", type=float, default=16.0,
                    help="GPU only: device memory growth allowed after warm-up and after close")
    ap.add_argument("--every", type=int, default=2000, help="sample every this many frames")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.every < 1 or args.frames < 1:
        ap.error("--frames and --every must be at least 1")
    if args.decode != "cpu" and args.device != "cuda":
        ap.error("--decode nvdec is for the GPU path: add --device cuda")
    if args.device == "cuda":
        try:
            cuda_torch()
        except RuntimeError as exc:
            print(f"soak: cannot run on the GPU here: {exc}", file=sys.stderr)
            return 2
    report = run_soak(args.clip, args.frames, device=args.device, every=args.every,
                      decode=args.decode)
    verdict = report.passed(args.rss_slack_mib, args.device_slack_mib)
    print_report(report, verdict)
    if args.json:
        limits = ({"rss_slack_mib": args.rss_slack_mib, "device_slack_mib": args.device_slack_mib}
                  if report.device is not None else {})
        args.json.write_text(json.dumps({**report.to_json(), **limits, "ok": verdict}, indent=2))
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
