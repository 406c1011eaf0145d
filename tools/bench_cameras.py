"""Benchmark of many paced cameras on one GPU: ``engine.stream_many`` against one ``engine.stream``
per camera, in the same run, N = 1, 8, 16, 32, 64, 100, 150, 200, ... until it fails.

Cameras are H.264 clips (tools/make_bench_clip.py: the shared car-detection.mp4 scaled to
1920x1080 and 1280x720, 30 frames/s, 600 frames) replayed at their frame rate, looping
(``open_source(realtime=True, loop=True, threads=1)``), started 1/(30 N) s apart so their frames
interleave as unsynchronised cameras' would. A frame's latency runs from the time it was due
(its arrival, as a camera would deliver it) to its result in the consumer's ``async for``.

Per N and configuration (engine x input x decode x mode), over a ``--duration`` window after all
cameras opened and a warm-up (at least ``--warmup`` seconds, then until the results of the last
half second all came within 100 ms, at most ``--max-warmup``: a start-up backlog of decoders
opening and graph captures drains first; a load that never settles is measured as it is): frames
offered (N x 30 x duration), frames inferred, drops, end-to-end latency p50/p99 (and, with
``mixed``, of the NVDEC and the worker-process cameras apart), host CPU used (the whole host's busy
CPU seconds per second, from /proc/stat, decoder processes included; and this process's own, also
by thread kind),
frames a decoder process had to send through its pipe because its ring was full (``copied``),
frames decoded in the window and of them those NVDEC decoded (a camera whose NVDEC could not
start decodes on the CPU and says so only in its log: this shows it), GPU
busy fraction (``nvidia-smi`` utilization samples, the share of time a kernel ran), and for
``stream_many`` the batches and their mean size. N is *sustained* when every offered frame was
inferred (>= 97% within the window: the edges of the window cut a few batches), nothing was
dropped or failed, and p99 <= 100 ms; a configuration's sweep stops at the first N not
sustained. Engines: ``resnet18`` / ``resnet50`` (torchvision, FP16, random weights; the
torch backend, CUDA-graphed) and ``spin-0.2ms`` / ``spin-1ms`` (a kernel of fixed GPU time, see
tools/bench_runtime.py). Decode: ``nvdec`` (frames kept in GPU memory), ``process`` (PyAV in a
worker process a camera, frames in a shared-memory ring registered with the GPU:
``open_source(process=True)``), ``process-nvdec`` (the same worker process driving NVDEC, each
frame copied to host memory and into the ring: ``decode="nvdec"`` with ``process=True``),
``mixed`` (every other camera on NVDEC, the rest in worker processes: ``Camera(decode=...)``;
past NVDEC's own capacity) or ``cpu`` (PyAV on a thread a camera, in the benchmark's own
process).

The whole default run fits ``--budget`` seconds (330): configurations that would start after it
are listed as skipped, most important first (1080p: NVDEC, NVDEC in worker processes, mixed,
CPU decode in worker processes, threads; then 720p).

Usage: python3 tools/bench_cameras.py [--engines resnet18] [--inputs 1080p,720p]
       [--decode nvdec,cpu] [--modes many,per-camera] [--ns 1,8,16,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import faulthandler
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import xinfer_stream as xs
from xinfer_stream.preprocess import Preprocess

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("XINFER_SHARED_DATA") or next(
    (p for p in (REPO / "shared" / "data", REPO.parent / "shared" / "data") if p.is_dir()),
    REPO.parent / "shared" / "data"))
SPEC = Preprocess((224, 224), "shorter_crop", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375),
                  dtype="float16")
SIZES = {"1080p": (1920, 1080), "720p": (1280, 720)}
FPS = 30.0
P99_BOUND = 0.100


# -- engines and clips ------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def open_engine(name: str) -> AsyncIterator[xs.StreamingEngine]:
    if Path(name).suffix in (".onnx", ".engine", ".plan", ".pt", ".pt2", ".ts"):
        # A model file with its .preprocess.json sidecar (e.g. a tiny ONNX model, to check the
        # benchmark itself on a machine without a GPU).
        async with xs.load(name) as engine:
            yield engine
        return
    if name.startswith("spin"):
        from bench_runtime import Borrowed, SpinBackend

        from xinfer_stream.cuda import Device
        with Device(0) as device:
            backend = SpinBackend(device, float(name.removeprefix("spin-").removesuffix("ms"))
                                  * 1000)
            async with xs.load(Borrowed(backend), preprocess=SPEC, warmup=False) as engine:
                yield engine
        return
    import torchvision
    model = getattr(torchvision.models, name)(weights=None).eval()
    async with xs.load(model, preprocess=SPEC) as engine:
        yield engine


def make_clip(size: str, folder: Path) -> Path:
    """The benchmark clip at ``size`` (made once; the same files tools/gpu_check.sh makes)."""
    path = folder / f"car_{size}.mp4"
    if not path.exists() or path.stat().st_size == 0:
        width, height = SIZES[size]
        subprocess.run([sys.executable, str(REPO / "tools" / "make_bench_clip.py"),
                        str(SHARED / "video" / "car-detection.mp4"), str(path), str(width),
                        str(height), "600"], check=True)
    return path


class GpuBusy:
    """The share of time a kernel ran on GPU 0, from ``nvidia-smi`` samples every 100 ms."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        try:
            self._proc: subprocess.Popen[str] | None = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-i", "0", "-lms", "100"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True)
        except OSError:
            self._proc = None
            return
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                self.samples.append(float(line.strip()) / 100)

    def stop(self) -> float | None:
        if self._proc is None:
            return None
        self._proc.terminate()
        self._proc.wait()
        self._thread.join()
        return float(np.mean(self.samples)) if self.samples else None


def decoded_where(sources: list[Any]) -> dict[str, int]:
    """Frames the sources decoded so far, and of them those their device's decoder did."""
    known = [s for s in sources if s is not None]
    return {"decoded": sum(s.frames_decoded for s in known),
            "on_device": sum(s.frames_decoded_on_device for s in known)}


def thread_cpu() -> dict[str, float]:
    """CPU seconds this process's live threads have used, by kind: a Python thread's name up to
    its first ':' (``xinfer-camera:cam3`` -> ``xinfer-camera``), and ``native`` for threads
    Python did not start (FFmpeg's, CUDA's), from /proc/self/task/TID/stat. A window's share is
    the difference of two calls, so a thread that ended inside it is not counted."""
    names = {t.native_id: t.name.split(":")[0] for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        kind = names.get(int(task.name), "native")
        used[kind] = used.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return used


def host_busy() -> float:
    """CPU seconds the whole host has been busy (every process: decoder workers too), from
    /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


async def until(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# -- one configuration at one N -----------------------------------------------------------------
async def step(engine: xs.StreamingEngine, mode: str, clip: Path, n: int, decode: str,
               args: argparse.Namespace) -> dict[str, Any]:
    def kind_of(i: int) -> str:
        """Camera ``i``'s decode kind: ``decode``, or for ``mixed`` NVDEC and worker processes
        alternating."""
        return decode if decode != "mixed" else ("nvdec", "process")[i % 2]

    def camera(i: int) -> tuple[str, dict[str, Any]]:
        """Where camera ``i`` decodes and its open_source options."""
        where = kind_of(i)
        options: dict[str, Any] = {"realtime": True, "loop": True, "threads": 1}
        if where in ("process", "process-nvdec"):  # a worker process a camera, frames in a
            options["process"] = True              # registered ring; decoded on the CPU or NVDEC
            where = "cpu" if where == "process" else "nvdec"
        return where, options

    latencies: list[float] = []
    recent: list[float] = []  # latencies since the warm-up last looked
    by_decode: dict[str, list[float]] = {}  # latencies by where the camera decodes (mixed)
    failures: list[str] = []
    opened: set[str] = set()
    counting = False
    window: dict[str, Any] = {}

    async def measure(snapshot: Callable[[], dict[str, int]]) -> None:
        nonlocal counting
        if not await until(lambda: len(opened) + len(failures) >= n, 90):
            failures.append(f"only {len(opened)} of {n} cameras opened within 90 s")
            return
        # Warm-up: at least --warmup seconds, then until the results of the last half second
        # all came within P99_BOUND (a start-up backlog drained: decoders opening, graph
        # captures), at most --max-warmup seconds; a load it never settles under is measured
        # as it is, and fails.
        warm_from = time.perf_counter()
        await asyncio.sleep(args.warmup)
        while time.perf_counter() - warm_from < args.max_warmup:
            recent.clear()
            await asyncio.sleep(0.5)
            if recent and max(recent) <= P99_BOUND:
                break
        window["warmup"] = time.perf_counter() - warm_from
        before = snapshot()
        busy = GpuBusy()
        cpu, host, t0 = time.process_time(), host_busy(), time.perf_counter()
        threads = thread_cpu()
        counting = True
        await asyncio.sleep(args.duration)
        counting = False
        if not latencies:
            # Nothing came through in the whole window: say where every thread is, while the
            # stall lasts (once, on an H100, 32 NVDEC cameras gave 0 of 3,840 frames).
            print(f"no result in {args.duration:.0f} s; every thread's stack:", file=sys.stderr,
                  flush=True)
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        threads_after = thread_cpu()
        window.update(wall=time.perf_counter() - t0, cpu=time.process_time() - cpu,
                      host=host_busy() - host, gpu_busy=busy.stop(),
                      threads={k: v - threads.get(k, 0.0) for k, v in threads_after.items()})
        after = snapshot()
        window.update({k: after[k] - before[k] for k in after})

    if mode == "many":
        async with engine.stream_many({}, end_when_idle=False,
                                      max_batch=args.max_batch,
                                      max_wait=args.max_wait / 1e3) as items:
            async def consume() -> None:
                async for item in items:
                    if isinstance(item, xs.CameraEvent):
                        if item.kind == "opened":
                            opened.add(item.camera)
                        elif item.kind == "failed":
                            failures.append(f"{item.camera}: {item.error}")
                    else:
                        recent.append(item.latency)
                        if not counting:
                            continue
                        latencies.append(item.latency)
                        kind = kinds.get(item.camera or "", decode)
                        by_decode.setdefault(kind, []).append(item.latency)

            def snapshot() -> dict[str, int]:
                s = items.statistics()
                return {"drops": sum(c.drops for c in s.cameras.values()),
                        "batches": s.batches, "frames": s.frames,
                        "copied": sum(c.source.frames_copied for c in s.cameras.values()
                                      if c.source is not None),
                        **decoded_where([c.source for c in s.cameras.values()])}

            kinds = {f"cam{i}": kind_of(i) for i in range(n)}
            task = asyncio.ensure_future(consume())
            try:
                for i in range(n):
                    where, options = camera(i)
                    items.add(f"cam{i}", xs.Camera(clip, options=options, decode=where))
                    await asyncio.sleep(1 / FPS / n)
                await measure(snapshot)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    else:
        streams: list[xs.ResultStream] = []

        async def one(i: int) -> None:
            where, options = camera(i)
            try:
                async with engine.stream(clip, decode=where, **options) as results:
                    streams.append(results)
                    async for r in results:
                        opened.add(f"cam{i}")
                        recent.append(r.latency)
                        if counting:
                            latencies.append(r.latency)
            except xs.XInferError as exc:
                failures.append(f"cam{i}: {exc}")

        def snapshot() -> dict[str, int]:
            stats = [s.statistics() for s in streams]
            return {"drops": sum(s.drops for s in stats), "batches": sum(s.frames for s in stats),
                    "frames": sum(s.frames for s in stats),
                    "copied": sum(s.source.frames_copied for s in stats if s.source is not None),
                    **decoded_where([s.source for s in stats])}

        tasks = []
        try:
            for i in range(n):
                tasks.append(asyncio.ensure_future(one(i)))
                await asyncio.sleep(1 / FPS / n)
            await measure(snapshot)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    offered = round(n * FPS * args.duration)
    inferred = len(latencies)
    lat = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    p50, p99 = (float(v) for v in np.percentile(lat, [50, 99]))
    row: dict[str, Any] = {
        "mode": mode, "n": n, "offered": offered, "inferred": inferred,
        "drops": window.get("drops", 0), "copied": window.get("copied", 0),
        # Of the frames decoded in the window, those the device's decoder did (NVDEC; fewer than
        # all with nvdec means some cameras fell back to the CPU: their logs say why).
        "decoded": window.get("decoded", 0), "decoded_on_device": window.get("on_device", 0),
        "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "warmup_s": window.get("warmup"),
        "host_cores": window.get("host", float("nan")) / window.get("wall", float("nan")),
        "main_process_cores": window.get("cpu", float("nan")) / window.get("wall", float("nan")),
        "gpu_busy": window.get("gpu_busy"), "failures": failures[:3],
        # This process's cores by thread kind, busiest first (where its GIL time goes).
        "thread_cores": {k: round(v / window.get("wall", float("nan")), 3) for k, v in sorted(
            window.get("threads", {}).items(), key=lambda kv: -kv[1]) if v > 0}}
    if len(by_decode) > 1:
        row["p50_p99_ms_by_decode"] = {
            kind: [round(float(v) * 1e3, 1) for v in np.percentile(values, [50, 99])]
            for kind, values in by_decode.items()}
    if mode == "many" and window.get("batches"):
        row["batches"] = window["batches"]
        row["mean_batch"] = window["frames"] / window["batches"]
    row["sustained"] = (not failures and inferred >= 0.97 * offered and row["drops"] == 0
                        and p99 <= P99_BOUND)
    return row


# -- driver -------------------------------------------------------------------------------------
def describe(engine: str, size: str, decode: str, row: dict[str, Any]) -> str:
    busy = "n/a" if row["gpu_busy"] is None else f"{row['gpu_busy']:.0%}"
    batch = f" batch {row['mean_batch']:.1f}" if "mean_batch" in row else ""
    return (f"{engine:9} {size:5} {decode:5} {row['mode']:10} N={row['n']:<4} "
            f"inferred {row['inferred']:>6}/{row['offered']:<6} drops {row['drops']:<5} "
            + (f"copied {row['copied']} " if row.get("copied") else "")
            + (f"on NVDEC {row['decoded_on_device']}/{row['decoded']} "
               if row.get("decoded_on_device") else "")
            + f"p50 {row['p50_ms']:7.1f} ms p99 {row['p99_ms']:7.1f} ms "
            + (f"warm-up {row['warmup_s']:.1f} s " if row.get("warmup_s") else "")
            + f"host {row['host_cores']:5.2f} cores "
            f"(this process {row['main_process_cores']:5.2f}) "
            f"gpu {busy:>4}{batch} "
            f"{'OK' if row['sustained'] else 'NOT SUSTAINED'}"
            + (f" ({'; '.join(row['failures'])})" if row["failures"] else "")
            + "".join(f"\n    {kind}: p50/p99 {v[0]}/{v[1]} ms"
                      for kind, v in row.get("p50_p99_ms_by_decode", {}).items())
            + ("\n    this process's cores by thread: " + ", ".join(
                f"{k} {v:.2f}" for k, v in list(row["thread_cores"].items())[:6])
               if row.get("thread_cores") else ""))


async def sweep(args: argparse.Namespace, clips: dict[str, Path]) -> dict[str, Any]:
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    best: dict[str, int] = {}
    skipped: list[str] = []
    for engine_name in args.engines.split(","):
        async with open_engine(engine_name) as engine:
            for size in args.inputs.split(","):
                for decode in args.decode.split(","):
                    for mode in args.modes.split(","):
                        key = f"{engine_name} {size} {decode} {mode}"
                        best[key] = 0
                        for n in (int(v) for v in args.ns.split(",")):
                            estimate = args.warmup + args.duration + 2 + n / 40
                            if time.monotonic() - started + estimate > args.budget:
                                skipped.append(f"{key} from N={n}")
                                break
                            try:
                                row = await step(engine, mode, clips[size], n, decode, args)
                            except Exception as exc:  # noqa: BLE001 - a failed N ends the sweep
                                row = {"mode": mode, "n": n, "error": f"{type(exc).__name__}: "
                                       f"{exc}", "sustained": False}
                                print(f"{key} N={n}: FAILED {row['error']}", flush=True)
                            else:
                                print(describe(engine_name, size, decode, row), flush=True)
                            rows.append({"engine": engine_name, "input": size, "decode": decode,
                                         **row})
                            if not row["sustained"]:
                                break
                            best[key] = n
    return {"rows": rows, "largest_sustained": best, "skipped": skipped,
            "seconds": time.monotonic() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=None,
                        help="resnet18, resnet50, spin-0.2ms, spin-1ms or a model file with "
                             "its .preprocess.json (default: resnet18, or spin-1ms without "
                             "torchvision)")
    parser.add_argument("--inputs", default="1080p,720p")
    parser.add_argument("--decode", default="nvdec,process-nvdec,mixed,process,cpu",
                        help="nvdec, mixed (NVDEC and worker processes, alternating), process "
                             "(CPU decode in a worker process a camera), process-nvdec (NVDEC "
                             "driven by a worker process a camera) or cpu (a decode thread a "
                             "camera, in this process)")
    parser.add_argument("--modes", default="many,per-camera")
    parser.add_argument("--ns", default="1,8,16,32,64,100,150,200,250,300")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds an N")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds after every camera opened before measuring (graph "
                             "captures and decoder start-up happen here)")
    parser.add_argument("--max-warmup", type=float, default=20.0,
                        help="seconds the warm-up may take waiting for a start-up backlog to "
                             "drain (results of the last 0.5 s all within 100 ms)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait", type=float, default=10.0, help="milliseconds")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds; steps that would end later are skipped")
    parser.add_argument("--clips", type=Path,
                        default=Path(os.environ.get("TMPDIR", "/tmp")) / "xinfer_bench_clips")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.engines is None:
        try:
            import torchvision  # noqa: F401
            args.engines = "resnet18"
        except ImportError:
            args.engines = "spin-1ms"
    args.clips.mkdir(parents=True, exist_ok=True)
    clips = {size: make_clip(size, args.clips) for size in args.inputs.split(",")}
    try:
        import uvloop
        result = uvloop.run(sweep(args, clips))
    except ImportError:
        result = asyncio.run(sweep(args, clips))
    card = "unknown"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        card = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader",
                               "-i", "0"], capture_output=True, text=True,
                              check=True).stdout.strip()
    now = datetime.datetime.now(datetime.UTC)
    print(f"\ncard {card}, {os.cpu_count()} CPUs, {now:%Y-%m-%d %H:%M} UTC, "
          f"{result['seconds']:.0f} s; max_batch {args.max_batch}, max_wait {args.max_wait} ms")
    print("largest N sustained (every frame inferred, no drop, p99 <= 100 ms):")
    for key, n in result["largest_sustained"].items():
        print(f"  {key:40} {n}")
    for key in result["skipped"]:
        print(f"  skipped (budget): {key}")
    if args.json is not None:
        args.json.write_text(json.dumps({"card": card, "cpus": os.cpu_count(),
                                         "args": {k: str(v) for k, v in vars(args).items()},
                                         **result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
