# ruff: noqa: B023  (each row's lambda is called at once, inside record(), never later)
"""Benchmark of the GPU streaming runtime: every row side by side in one run.

Engines (all FP16 input 3x224x224, ImageNet normalisation, shorter-side resize + centre crop):

* ``spin-0.2ms`` / ``spin-1ms``: a CUDA kernel that busy-waits a fixed time (globaltimer), reads
  the input and writes 1000 outputs: an engine of known GPU time, to isolate runtime overhead;
* ``resnet18`` / ``resnet50``: torchvision models in FP16 with RANDOM weights (nothing can be
  downloaded on the GPU machine; the weights do not change the arithmetic), CUDA-graphed.

Rows, per engine and input:

* ``engine alone``: back-to-back graph replays on one fixed input: the ceiling;
* ``ours`` / ``ours, batch=4``: ``GpuRunner`` (K slots; the window the preprocess reads packed
  into the slot's pinned staging; upload + preprocess + engine + output copy in the slot's CUDA
  graph; waiter thread) fed by a feeder thread, results delivered to an asyncio (uvloop)
  consumer through ``call_soon_threadsafe``: the runtime's path;
* ``ours, 2 streams``: two concurrent runners on the one engine, their total throughput;
* ``ours, one at a time``: one frame in flight: end-to-end latency per frame (the table's
  "e2e − engine GPU" column is the latency over the engine's GPU time);
* ``naive``: PyAV ``to_ndarray`` RGB, numpy resize + normalise (``preprocess_frame``), pageable
  upload, run (the same graphed engine), synchronise, read back;
* ``pinned, no overlap``: the naive loop with a pinned staging buffer and async copies.

Inputs: pre-decoded 1080p and 720p frames (NV12, real content from a shared clip scaled up) so
decode does not bound the test; and real decode of H.264 clips with the project's
``open_source`` (``--clip-1080p``/``--clip-720p``, made by ``tools/make_bench_clip.py``):
decode alone, the whole product path ``engine.stream`` (batch 1 and 4; one stream or several;
decoding on a thread of this process, or with ``process=True`` in a worker process whose
shared-memory ring the GPU reads by DMA), the bare ``GpuRunner`` fed by a loop over the same
source, and the naive loop. NVDEC rows:
decode alone on NVDEC with the frames kept in GPU memory, and ``engine.stream(decode="nvdec")``
at batch 1 and 4. Real-decode rows also give the process's CPU time a frame, every thread counted.

Detection vs classification (resnet18, 1080p real decode, ``engine.stream`` batch 4):
``classify()`` on ResNet-18; then ``resnet18+yolov8 head`` (ResNet-18's trunk and a random 1x1 head
whose output is shaped like a YOLOv8 export, ``[batch, 84, 8400]`` FP16: boxes in input pixels,
mostly low class scores with some clusters above 0.25) with its raw outputs copied to the host and
no postprocess, and with ``detect("yolov8")`` (the batch stage on the GPU, only the kept boxes
copied back; issue 17 item 2: no more than 5% below classification).

Usage: python3 tools/bench_runtime.py --clip-1080p car_1080p.mp4 --clip-720p car_720p.mp4
[--only-real] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import itertools
import json
import math
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av

from xinfer_stream.cuda import Device, KernelArgs, Stream, unavailable_reason
from xinfer_stream.engines import TensorSpec
from xinfer_stream.preprocess import Preprocess, preprocess_frame
from xinfer_stream.runtime._gpu_runner import GpuRunner, GpuTimings

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("XINFER_SHARED_DATA", REPO.parent / "shared" / "data"))
SPEC = Preprocess((224, 224), "shorter_crop", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375),
                  dtype="float16")

_SPIN = r'''
extern "C" __global__ void spin(const unsigned short* in, float* out, int batch,
                                unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < ns);
    for (int i = threadIdx.x; i < 1000 * batch; i += blockDim.x)
        out[i] = (float)in[(size_t)(i / 1000) * 150528 + (i % 1000) * 97];
}
'''


# -- the fixed-duration engine ---------------------------------------------------------------------
class SpinContext:
    def __init__(self, backend: SpinBackend) -> None:
        self._backend = backend
        self._in = ctypes.c_void_p(0)
        self._out = ctypes.c_void_p(0)
        self._batch = ctypes.c_int(1)
        self._args = KernelArgs(self._in, self._out, self._batch, ctypes.c_uint64(backend.ns))

    def set_input(self, name: str, address: int, shape: tuple[int, ...]) -> None:
        self._in.value = address
        self._batch.value = shape[0]

    def set_output(self, name: str, address: int) -> None:
        self._out.value = address

    def output_shape(self, name: str) -> tuple[int, ...]:
        return (self._batch.value, 1000)

    def enqueue(self, *, stream: int) -> None:
        self._backend.kernel.launch((1, 1, 1), (256, 1, 1), self._args, stream=stream)

    def close(self) -> None:
        pass


class SpinBackend:
    """A GpuBackend whose 'model' is a kernel that runs for ``microseconds`` of GPU time."""

    kind = "spin"
    device: Literal["cuda"] = "cuda"
    max_batch = None
    closed = False

    def __init__(self, device: Device, microseconds: float) -> None:
        self.ns = int(microseconds * 1000)
        self.kernel = device.load_module(_SPIN, name="spin.cu").kernel("spin")
        self.inputs = (TensorSpec("input", (None, 3, 224, 224), "float16"),)
        self.outputs = (TensorSpec("output", (None, 1000), "float32"),)

    def create_context(self) -> SpinContext:
        return SpinContext(self)

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError("the spin engine runs through contexts only")

    def close(self) -> None:
        pass


# -- inputs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """A decoded frame (the fields of xinfer_stream.video.VideoFrame the GPU runner reads)."""

    index: int
    format: str
    width: int
    height: int
    planes: tuple[npt.NDArray[np.uint8], ...]
    colorspace: str
    color_range: str


def predecoded(clip: Path, width: int, height: int, count: int) -> tuple[list[Frame], list[Any]]:
    """``count`` real frames scaled to width x height: NV12 planes (for ours) and yuv420p
    av.VideoFrames (for the naive loop, which converts with PyAV as users do)."""
    frames: list[Frame] = []
    av_frames: list[Any] = []
    with av.open(str(clip)) as container:
        while len(frames) < count:
            container.seek(0)
            for f in container.decode(video=0):
                yuv = f.reformat(width=width, height=height, format="yuv420p")
                nv12 = yuv.reformat(format="nv12")
                planes = tuple(np.ascontiguousarray(
                    np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width * (2 if i else 1)])
                    for i, p in enumerate(nv12.planes))
                frames.append(Frame(len(frames), "nv12", width, height, planes, "bt709", "limited"))
                av_frames.append(yuv)
                if len(frames) >= count:
                    break
    return frames, av_frames


# -- engines ---------------------------------------------------------------------------------------
class Engine:
    """A backend plus what the baselines need: a graphed forward on a static input."""

    def __init__(self, name: str, device: Device, stream: Stream) -> None:
        self.name = name
        self.device = device
        self.stream = stream
        if name.startswith("spin"):
            us = float(name.removeprefix("spin-").removesuffix("ms")) * 1000
            self.backend: Any = SpinBackend(device, us)
            self.torch = None
        else:
            import torch
            import torchvision

            from xinfer_stream.engines._torch import TorchBackend
            model = getattr(torchvision.models, name)(weights=None)
            self.backend = TorchBackend(model, input_shape=(None, 3, 224, 224), dtype="float16")
            self.torch = torch
        self.pools = (device.device_pool(3 * 224 * 224 * 2, 1), device.device_pool(1000 * 4 * 8, 1))
        self.static_in = self.pools[0].acquire()
        self.static_out = self.pools[1].acquire()
        self.static_in.write(np.random.default_rng(0).standard_normal((3, 224, 224)).astype(np.float16))
        self.context = self.backend.create_context()
        self.context.set_output("output", self.static_out.pointer)
        self.context.set_input("input", self.static_in.pointer, (1, 3, 224, 224))
        self.graph: Any = None
        if self.torch is not None:
            self.graph = self.context.capture_graph(
                lambda: self.context.enqueue(stream=stream.handle), stream=stream)
        else:
            self.context.enqueue(stream=stream.handle)
            stream.synchronize()
            with device.capture(stream) as cap:
                self.context.enqueue(stream=stream.handle)
            self.graph = cap.graph

    def replay(self) -> None:
        self.graph.launch(stream=self.stream)

    def alone(self, n: int) -> tuple[float, float]:
        """(fps, GPU ms per frame) of back-to-back replays."""
        t0, t1 = self.device.create_event(timing=True), self.device.create_event(timing=True)
        for _ in range(20):
            self.replay()
        t0.record(stream=self.stream)
        for _ in range(n):
            self.replay()
        t1.record(stream=self.stream)
        t1.synchronize()
        ms = t1.elapsed_ms(t0) / n
        t0.close()
        t1.close()
        return 1000.0 / ms, ms


# -- rows ------------------------------------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_ours(engine: Engine, feed: Callable[[], Iterator[Frame]], *, slots: int,
             one_at_a_time: bool = False, streams: int = 1, batch: int = 1) -> dict[str, Any]:
    """Frames from ``feed`` through a GpuRunner into an asyncio consumer; fps and latency.

    ``streams`` > 1: that many concurrent streams on the one engine, each with its own runner
    (slots, CUDA stream, waiter thread) and feeder thread, each fed the whole ``feed``; fps is
    their total. ``batch``: frames a GPU batch (the last one may be partial)."""
    import uvloop

    runners = [GpuRunner(engine.device, engine.backend, SPEC, slots=slots,
                         max_batch=batch) for _ in range(streams)]
    received: list[tuple[float, float, GpuTimings]] = []
    spans: list[tuple[float, float, float]] = []  # submit, submitted -> seen done, done -> loop
    loop_work: list[float] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        ready: deque[tuple[int, Sequence[Any], GpuTimings]] = deque()
        wake = asyncio.Event()
        fed = [threading.Event() for _ in runners]
        got_one = threading.Event()
        error: list[BaseException] = []
        starts: dict[tuple[int, int], float] = {}

        def feeder(k: int, runner: GpuRunner) -> None:
            def emit(frames: Sequence[Any], outputs: Mapping[str, Any],
                     timings: GpuTimings) -> None:
                ready.append((k, frames, timings))
                loop.call_soon_threadsafe(wake.set)

            try:
                frames = feed()
                while chunk := list(itertools.islice(frames, batch)):
                    now = time.perf_counter()
                    for frame in chunk:
                        starts[k, frame.index] = now
                    runner.submit(chunk, emit)
                    if one_at_a_time:
                        got_one.wait()
                        got_one.clear()
                runner.drain()
            except BaseException as exc:  # noqa: BLE001 - reported by the consumer below
                error.append(exc)
            finally:
                fed[k].set()
                loop.call_soon_threadsafe(wake.set)

        t_start = time.perf_counter()
        threads = [threading.Thread(target=feeder, args=(k, r), name=f"feeder-{k}")
                   for k, r in enumerate(runners)]
        for thread in threads:
            thread.start()
        while True:
            await wake.wait()
            wake.clear()
            while ready:
                t = time.perf_counter()
                k, frames, timings = ready.popleft()
                for f in frames:
                    received.append((t - starts[k, f.index], t, timings))
                    spans.append((timings.submitted_at - starts[k, f.index],
                                  timings.completed_at - timings.submitted_at, t - timings.completed_at))
                loop_work.append(time.perf_counter() - t)
                if one_at_a_time:
                    got_one.set()
            if all(e.is_set() for e in fed) and not ready:
                break
        for thread in threads:
            thread.join()
        if error:
            raise error[0]
        return time.perf_counter() - t_start

    try:
        elapsed = uvloop.run(main()) if hasattr(uvloop, "run") else asyncio.run(main())
        stats = runners[0].statistics()
    finally:
        for runner in runners:
            runner.close()
    n = len(received)
    warm = received[10:] if n > 20 else received
    span = warm[-1][1] - warm[0][1] if len(warm) > 1 else elapsed
    e2e = [r[0] * 1e3 for r in warm]
    compute = [r[2].compute * 1e3 for r in warm]
    return {"frames": n, "fps": (len(warm) - 1) / span if span > 0 else float("nan"),
            "e2e_p50_ms": pct(e2e, 50), "e2e_p99_ms": pct(e2e, 99),
            "gpu_compute_p50_ms": pct(compute, 50),
            "enqueue_p50_us": stats.enqueue.p50 * 1e6,
            "pack_p50_us": stats.pack.p50 * 1e6,
            "loop_work_p50_us": pct([w * 1e6 for w in loop_work], 50),
            # Where one frame's end-to-end time goes (host clock): submit() itself; from the
            # end of submit() until the waiter saw the batch done; from there to the consumer.
            "submit_p50_us": pct([x[0] * 1e6 for x in spans[10:]], 50),
            "until_done_p50_us": pct([x[1] * 1e6 for x in spans[10:]], 50),
            "to_consumer_p50_us": pct([x[2] * 1e6 for x in spans[10:]], 50),
            "graph_mode": stats.graph_mode, "slots": slots, "batch": batch,
            "upload_bytes_per_frame": stats.upload_bytes_per_frame,
            "windowed_upload": stats.windowed_upload, "streams": streams}


def run_naive(engine: Engine, feed: Callable[[], Iterator[Any]], *, pinned: bool) -> dict[str, Any]:
    """The loop users write: RGB on the CPU, numpy preprocessing, copy, run, synchronise."""
    device, stream = engine.device, engine.stream
    nbytes = 3 * 224 * 224 * 2
    staging_pool = device.pinned_pool(nbytes, 1) if pinned else None
    out_pool = device.pinned_pool(1000 * 4, 1) if pinned else None
    staging = staging_pool.acquire() if staging_pool else None
    out_host = out_pool.acquire() if out_pool else None
    times: list[float] = []
    t_start = time.perf_counter()
    try:
        for av_frame in feed():
            t = time.perf_counter()
            rgb = av_frame.to_ndarray(format="rgb24")
            x = preprocess_frame(SPEC, rgb)
            if staging is not None and out_host is not None:
                np.copyto(staging.view(np.float16, x.shape), x)
                engine.static_in.copy_from_host(staging, stream=stream)
                engine.replay()
                engine.static_out.copy_to_host(out_host, stream=stream, nbytes=4000)
                stream.synchronize()
                _ = out_host.view(np.float32, (1000,)).copy()
            else:
                engine.static_in.write(x)  # pageable cudaMemcpy
                engine.replay()
                stream.synchronize()
                _ = engine.static_out.read(np.float32, (1000,))
            times.append(time.perf_counter() - t)
    finally:
        for loan in (staging, out_host):
            if loan is not None:
                loan.release()
        for pool in (staging_pool, out_pool):
            if pool is not None:
                pool.close()
    elapsed = time.perf_counter() - t_start
    return {"frames": len(times), "fps": len(times) / elapsed,
            "e2e_p50_ms": pct([t * 1e3 for t in times], 50),
            "e2e_p99_ms": pct([t * 1e3 for t in times], 99)}


def decode_alone(clip: Path, *, nvdec: bool = False, threads: int | None = None) -> dict[str, Any]:
    """``open_source(clip, format="yuv420p")`` as fast as it goes (fps: frames after the first,
    over the first to the last, as for ``engine.stream``); with ``nvdec``, decoding on NVDEC into
    GPU memory (``engine.stream(decode="nvdec")``'s source, which has ``threads`` decoder
    threads, 1 in ``engine.stream``; ``None``: FFmpeg's choice). Also the process's CPU time a
    frame (every thread, the row's whole run)."""
    from xinfer_stream.video import open_source
    cpu = time.process_time()
    if nvdec:
        source = open_source(str(clip), format="nv12", hwaccel="cuda", device_frames=True,
                             threads=threads)
    else:
        source = open_source(str(clip), format="yuv420p")
    n = on_gpu = 0
    first = last = 0.0
    try:
        while (frame := source.get()) is not None:
            last = time.perf_counter()
            on_gpu += frame.device is not None
            frame.release()
            n += 1
            if n == 1:
                first = last
    finally:
        source.close()
    # Counted like engine.stream's rows: frames after the first, over first to last (the
    # decoder's start-up, ~16 frames in flight before the first comes out, is not counted).
    result = {"frames": n, "fps": (n - 1) / (last - first) if n > 1 else float("nan"),
              "cpu_ms_per_frame": 1e3 * (time.process_time() - cpu) / max(1, n)}
    if nvdec:
        result.update(frames_on_gpu=on_gpu)
    return result


class Borrowed:
    """The bench's backend lent to ``xs.load`` (which closes what it is given): the bench closes
    it itself, after its other rows. Members are spelled out: ``isinstance`` against a protocol
    looks them up statically (Python 3.12+)."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.kind = backend.kind
        self.device = backend.device
        self.inputs = backend.inputs
        self.outputs = backend.outputs
        self.max_batch = backend.max_batch
        self.ordinal = getattr(backend, "ordinal", 0)

    @property
    def closed(self) -> bool:
        return bool(self._backend.closed)

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        return self._backend.run(feeds)  # type: ignore[no-any-return]

    def create_context(self) -> Any:
        return self._backend.create_context()

    def close(self) -> None:
        pass


def run_engine_stream(engine: Engine, clip: Path, *, streams: int = 1, batch: int = 1,
                      decode: str = "cpu", postprocess: Any = None, **source_options: Any
                      ) -> dict[str, Any]:
    """The product path: ``xs.load(backend)`` then ``engine.stream(clip)`` (decode thread;
    stream worker packing the window the preprocess reads into the slot's pinned staging; GPU
    runner; results thread; asyncio consumer), ``streams`` at once; ``batch`` frames
    a GPU batch (the file sources' offline mode; results still one per frame); ``decode``: on
    the CPU or on NVDEC (frames kept in GPU memory, no copy). fps: results after each stream's
    first, over the time from the first stream's first result to the last stream's last (the
    consumer's clock). Also the process's CPU time a frame (every thread, the whole run).
    ``source_options`` go to ``engine.stream`` as they are (e.g. ``threads``), and so does
    ``postprocess``."""
    import uvloop

    from xinfer_stream.runtime import load

    seen: list[tuple[float, float, int]] = []  # per stream: first, last result time, count

    async def main() -> list[Any]:
        async with load(Borrowed(engine.backend), preprocess=SPEC, warmup=False) as xs_engine:
            async def one() -> Any:
                options: dict[str, Any] = {"batch": batch, "decode": decode,
                                           "postprocess": postprocess, **source_options}
                async with xs_engine.stream(str(clip), slots=2, **options) as results:
                    first, n = 0.0, 0
                    async for _ in results:
                        n += 1
                        if n == 1:
                            first = time.perf_counter()
                    seen.append((first, time.perf_counter(), n))
                    return results.statistics()
            return list(await asyncio.gather(*(one() for _ in range(streams))))

    t = time.perf_counter()
    cpu = time.process_time()
    all_stats = uvloop.run(main())
    cpu = time.process_time() - cpu
    elapsed = time.perf_counter() - t
    stats = all_stats[0]
    gpu, source = stats.gpu, stats.source
    span = max(last for _, last, _ in seen) - min(first for first, _, _ in seen)
    return {"frames": sum(n for _, _, n in seen),
            "fps": (sum(n for _, _, n in seen) - streams) / span,
            "e2e_p50_ms": stats.end_to_end.p50 * 1e3, "e2e_p99_ms": stats.end_to_end.p99 * 1e3,
            "gpu_compute_p50_ms": stats.inference.p50 * 1e3,
            "enqueue_p50_us": gpu.enqueue.p50 * 1e6, "pack_p50_us": gpu.pack.p50 * 1e6,
            "graph_mode": gpu.graph_mode, "streams": streams, "batch": batch, "wall_s": elapsed,
            "frames_from_device_memory": gpu.frames_from_device_memory,
            "frames_from_pinned_memory": gpu.frames_from_pinned_memory,
            "cpu_ms_per_frame": 1e3 * cpu / max(1, sum(n for _, _, n in seen)),
            "decode_ms_per_frame": 1e3 * source.decode_seconds / max(1, source.frames_decoded)}


class YoloHead:
    """``resnet18+yolov8 head``: ResNet-18's trunk and a 1x1 conv to 84 channels, stretched
    (linear) from 7x7 cells to 8,400 candidates, so neighbours overlap and score alike. Each
    channel is standardised over the candidates (``z``): boxes ``cx, cy`` in 0..224 and ``w, h``
    in 0..64 pixels (``sigmoid(z)``), then 80 class scores ``sigmoid(3z - 9.5)``: a few hundred
    candidates a frame above 0.25. FP16, random weights; only ``backend`` is used by
    :func:`run_engine_stream`."""

    def __init__(self) -> None:
        import torch
        import torchvision

        from xinfer_stream.engines._torch import TorchBackend

        class Head(torch.nn.Module):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                trunk = torchvision.models.resnet18(weights=None)
                self.trunk = torch.nn.Sequential(*list(trunk.children())[:-2])
                self.head = torch.nn.Conv2d(512, 84, 1)
                self.register_buffer("scale", torch.tensor([224.0, 224.0, 64.0, 64.0]).view(1, 4, 1))

            def forward(self, x: Any) -> Any:
                y = torch.nn.functional.interpolate(self.head(self.trunk(x)).flatten(2), size=8400,
                                                    mode="linear")
                z = (y - y.mean(2, keepdim=True)) / (y.std(2, keepdim=True) + 1e-3)
                return torch.cat([torch.sigmoid(z[:, :4]) * self.scale,
                                  torch.sigmoid(3 * z[:, 4:] - 9.5)], 1)

        self.backend = TorchBackend(Head(), input_shape=(None, 3, 224, 224), dtype="float16")


def real_decode_feed(clip: Path) -> Callable[[], Iterator[Any]]:
    def feed() -> Iterator[Any]:
        from xinfer_stream.video import open_source
        source = open_source(str(clip), format="yuv420p")
        try:
            index = 0
            while (frame := source.get()) is not None:
                # The runner keys latency by index: make it unique across the run.
                yield Frame(index, frame.format, frame.width, frame.height, frame.planes,
                            frame.colorspace, frame.color_range)
                index += 1
        finally:
            source.close()
    return feed


def naive_decode_feed(clip: Path, limit: int) -> Callable[[], Iterator[Any]]:
    def feed() -> Iterator[Any]:
        with av.open(str(clip)) as container:
            container.streams.video[0].thread_type = "AUTO"
            yield from itertools.islice(container.decode(video=0), limit)
    return feed


# -- driver ----------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="spin-0.2ms,spin-1ms,resnet18,resnet50")
    parser.add_argument("--frames", type=int, default=300, help="pre-decoded frames per row")
    parser.add_argument("--naive-frames", type=int, default=100)
    parser.add_argument("--naive-real-frames", type=int, default=240,
                        help="frames of a real clip the naive loop decodes and runs")
    parser.add_argument("--clip-1080p", type=Path)
    parser.add_argument("--clip-720p", type=Path)
    parser.add_argument("--real-engines", default="resnet18,resnet50")
    parser.add_argument("--only-real", action="store_true",
                        help="skip the pre-decoded rows (engine alone and real decode only)")
    parser.add_argument("--latency-only", action="store_true",
                        help="pre-decoded rows: only the one-at-a-time (latency) rows")
    parser.add_argument("--blocking-sync", action="store_true",
                        help="make the process wait for the GPU by sleeping from the start, as "
                             "engine.stream(decode='nvdec') does (Device.share_with_ffmpeg)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"no GPU: {reason}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []

    def record(engine: str, inp: str, row: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result.update(engine=engine, input=inp, row=row)
        rows.append(result)
        print(json.dumps(result), flush=True)

    source_clip = SHARED / "video" / "car-detection.mp4"
    inputs = {}
    for label, (w, h) in {"1080p": (1920, 1080), "720p": (1280, 720)}.items():
        frames, av_frames = predecoded(source_clip, w, h, args.frames)
        inputs[label] = (frames, av_frames)
    with Device(0) as device:
        card = device.name
        if args.blocking_sync:
            device.share_with_ffmpeg()
        stream = device.create_stream()
        for name in args.engines.split(","):
            engine = Engine(name, device, stream)
            fps, ms = engine.alone(500 if not name.startswith("resnet50") else 300)
            rows.append({"engine": name, "input": "-", "row": "engine alone", "fps": fps,
                         "gpu_ms": ms})
            print(json.dumps(rows[-1]), flush=True)
            slots = 3 if name == "spin-0.2ms" else 2
            for label, (frames, av_frames) in ({} if args.only_real else inputs).items():
                inp = f"{label} pre-decoded NV12"
                record(name, inp, "ours, one at a time", lambda: run_ours(
                    engine, lambda: iter(frames[:200]), slots=slots, one_at_a_time=True))
                if args.latency_only:
                    continue
                for batch in (1, 4):
                    record(name, inp, "ours" if batch == 1 else f"ours, batch={batch}",
                           lambda: run_ours(engine, lambda: iter(frames), slots=slots,
                                            batch=batch))
                if name in ("spin-0.2ms", "resnet18"):
                    record(name, inp, "ours, 2 streams",
                           lambda: run_ours(engine, lambda: iter(frames), slots=slots, streams=2))
                record(name, f"{label} pre-decoded", "naive",
                       lambda: run_naive(engine, lambda: iter(av_frames[:args.naive_frames]),
                                         pinned=False))
                record(name, f"{label} pre-decoded", "pinned, no overlap",
                       lambda: run_naive(engine, lambda: iter(av_frames[:args.naive_frames]),
                                         pinned=True))
            if name in args.real_engines.split(","):
                for label, clip in (("1080p", args.clip_1080p), ("720p", args.clip_720p)):
                    if clip is None:
                        continue
                    inp = f"{label} real decode ({clip.name})"
                    record(name, inp, "decode alone", lambda: decode_alone(clip))
                    for batch in (1, 4):
                        record(name, inp, f"ours: engine.stream, batch={batch}",
                               lambda: run_engine_stream(engine, clip, batch=batch))
                    for batch in (1, 4):
                        record(name, inp, f"ours: engine.stream, batch={batch}, process=True",
                               lambda: run_engine_stream(engine, clip, batch=batch,
                                                         process=True))
                    if name == "resnet18" and label == "1080p":
                        import xinfer_stream as xs
                        record(name, inp, "ours: engine.stream, batch=4, classify()",
                               lambda: run_engine_stream(engine, clip, batch=4,
                                                         postprocess=xs.classify()))
                        head = YoloHead()
                        for row, post in (("raw outputs", None),
                                          ("detect()", xs.detect("yolov8"))):
                            record("resnet18+yolov8 head", inp,
                                   f"ours: engine.stream, batch=4, {row}",
                                   lambda: run_engine_stream(head, clip, batch=4,  # type: ignore[arg-type]
                                                             postprocess=post))
                        head.backend.close()
                    record(name, inp, "ours: GpuRunner fed decoded planes",
                           lambda: run_ours(engine, real_decode_feed(clip), slots=2))
                    if label == "1080p":
                        for streams in (2, 4):
                            record(name, inp, f"ours: engine.stream, {streams} streams",
                                   lambda: run_engine_stream(engine, clip, streams=streams))
                    record(name, inp, "naive", lambda: run_naive(
                        engine, naive_decode_feed(clip, args.naive_real_frames), pinned=False))
                    # Last: FFmpeg needs the context to block, not spin, when waiting, and that
                    # holds for the rest of the process (Device.share_with_ffmpeg).
                    device.share_with_ffmpeg()
                    record(name, inp, "decode alone, NVDEC (frames kept in GPU memory)",
                           lambda: decode_alone(clip, nvdec=True))
                    record(name, inp, "decode alone, NVDEC, 1 decoder thread",
                           lambda: decode_alone(clip, nvdec=True, threads=1))
                    for batch in (1, 4):
                        record(name, inp, f"ours: engine.stream, batch={batch}, decode=nvdec "
                               "(1 decoder thread)", lambda: run_engine_stream(
                                   engine, clip, batch=batch, decode="nvdec"))
                    if label == "1080p":
                        record(name, inp, "ours: engine.stream, 4 streams, decode=nvdec",
                               lambda: run_engine_stream(engine, clip, streams=4,
                                                         decode="nvdec"))
                    record(name, inp, "decode alone (blocking sync from here on)",
                           lambda: decode_alone(clip))
                    record(name, inp, "ours: engine.stream, batch=1, blocking sync",
                           lambda: run_engine_stream(engine, clip))
            engine.context.close()
            engine.graph.close()
            engine.static_in.release()
            engine.static_out.release()
            for pool in engine.pools:
                pool.close()
            engine.backend.close()
        stream.close()
    stamp = datetime.date.today().isoformat()
    print(f"\n### GPU streaming runtime ({card}, {stamp})\n")
    print("| engine | input | row | fps | % of engine alone | e2e p50 ms | e2e p99 ms | "
          "GPU compute p50 ms | e2e − engine GPU p50 ms | enqueue µs | pack µs | loop µs | graph | "
          "CPU ms/frame |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    alone = {r["engine"]: r for r in rows if r["row"] == "engine alone"}
    for r in rows:
        if "error" in r:
            print(f"| {r['engine']} | {r['input']} | {r['row']} | error: {r['error']} |")
            continue
        ceiling = alone.get(r["engine"], {})
        share = 100 * r["fps"] / ceiling["fps"] if ceiling and r["row"] != "engine alone" else None
        over = (r["e2e_p50_ms"] - ceiling["gpu_ms"]) if "e2e_p50_ms" in r and ceiling else None

        def f(v: Any, fmt: str = ".2f") -> str:
            return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)
        print(f"| {r['engine']} | {r['input']} | {r['row']} | {f(r.get('fps'), '.0f')} | "
              f"{f(share, '.0f')} | {f(r.get('e2e_p50_ms'))} | {f(r.get('e2e_p99_ms'))} | "
              f"{f(r.get('gpu_compute_p50_ms', r.get('gpu_ms')), '.3f')} | {f(over, '.3f')} | "
              f"{f(r.get('enqueue_p50_us'), '.0f')} | {f(r.get('pack_p50_us'), '.0f')} | "
              f"{f(r.get('loop_work_p50_us'), '.1f')} | {r.get('graph_mode', '')} | "
              f"{f(r.get('cpu_ms_per_frame'))} |")
    if args.json:
        args.json.write_text(json.dumps({"card": card, "date": stamp, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
