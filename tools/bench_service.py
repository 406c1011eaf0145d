"""The service's overhead against the bare library, in the same run: ``xs.Service`` (sinks,
metrics, health) against ``engine.stream_many`` with the same model, cameras and batching.

Both sides load the same model (ONNX Runtime on the CPU) and stream the same N file cameras
through one ``stream_many`` with the same postprocess (``classify(top=5)``). The bare side's
consumer keeps each ``Result.latency`` in a list and does nothing else; the service side runs
a whole service: a JSON lines file sink (every result written), a callback sink that keeps
each ``Result.latency`` (the same samples the bare side keeps), the Prometheus endpoint on a
free port scraped over HTTP every ``--scrape`` seconds, and ``/healthz`` with it.

Two measurements, alternated bare / service ``--repeats`` times (medians reported, so a
neighbour's load on a shared machine hits both sides alike):

- **throughput** (unpaced): the cameras play their file as fast as the pipeline takes it;
  frames per second = results / wall time from the first result to the last;
- **latency** (paced): the cameras replay their file at its frame rate, looping
  (``realtime=True, loop=True``), for ``--duration`` seconds; p50 and p99 of
  ``Result.latency`` (the frame's due time to its result being ready) over that window.

Targets (issue 18): the service costs at most 5% of the throughput and at most 1 ms of p50
latency. Models: ``tiny`` (a global-average-pool classifier made here: the model costs almost
nothing, so the per-frame cost of the service is as visible as it can be) or a model file with
its Preprocess sidecar, e.g. the bundled EfficientNet-Lite0 via ``--model efficientnet``.

Usage: python3 tools/bench_service.py [--model tiny|efficientnet|FILE.onnx] [--cameras 4]
       [--repeats 3] [--duration 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xinfer_stream as xs
from xinfer_stream.service import load_config

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "xinfer_stream" / "_assets"
CLIP = ASSETS / "bottle-detection.mp4"  # 640x360 H.264, 1189 frames at 29.8 frames/s
EFFICIENTNET = xs.Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3,
                             std=(128.0,) * 3)
ARRIVALS: list[tuple[float, float]] = []  # the service's callback sink: (when, latency)
_lock = threading.Lock()


def keep_latency(result: xs.Result) -> None:
    """The service side's callback sink (``bench_service:keep_latency``: the config imports
    this file as a module of that name, not as ``__main__``)."""
    with _lock:
        ARRIVALS.append((time.perf_counter(), result.latency))


def model_files(name: str, folder: Path) -> tuple[Path, xs.Preprocess]:
    if name == "efficientnet":
        return ASSETS / "efficientnet_lite0.onnx", EFFICIENTNET
    if name == "tiny":
        import numpy as np
        import onnx
        from onnx import TensorProto, helper

        w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.random.default_rng(0)
                               .standard_normal((3, 4)).astype(np.float32).ravel().tolist())
        graph = helper.make_graph(
            [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["logits"])], "tiny",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        path = folder / "tiny.onnx"
        onnx.save(model, path)
        return path, xs.Preprocess(size=(32, 32))
    path = Path(name)
    from xinfer_stream.engines import resolve_preprocess
    return path, resolve_preprocess(path)


def write_config(folder: Path, model: Path, pre: xs.Preprocess, args: argparse.Namespace,
                 paced: bool) -> Path:
    pre.save(folder / "model.preprocess.json")
    cameras = "".join(
        f'[[cameras]]\nname = "cam{i}"\nsource = "{CLIP}"\n'
        + ("realtime = true\nloop = true\n" if paced else "") for i in range(args.cameras))
    path = folder / ("paced.toml" if paced else "unpaced.toml")
    path.write_text(
        f'[model]\npath = "{model}"\npreprocess = "model.preprocess.json"\n'
        f"threads = {args.threads}\n\n"
        f"[batching]\nmax_batch = {args.max_batch}\nmax_wait = {args.max_wait}\n\n"
        '[postprocess]\nkind = "classify"\ntop = 5\n\n' + cameras
        + f'\n[[sinks]]\nkind = "jsonl"\npath = "{folder / "results.jsonl"}"\n'
        '\n[[sinks]]\nkind = "callback"\ntarget = "bench_service:keep_latency"\n'
        "\n[metrics]\nport = 0\n")
    return path


def summarise(latencies: list[float], results: int, seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"results": results, "seconds": seconds, "fps": results / seconds,
            "p50_ms": 1e3 * ordered[len(ordered) // 2],
            "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


async def bare(model: Path, pre: xs.Preprocess, args: argparse.Namespace,
               paced: bool) -> dict[str, float]:
    options = {"realtime": True, "loop": True} if paced else {}
    cameras = {f"cam{i}": xs.Camera(str(CLIP), options=options) for i in range(args.cameras)}
    latencies: list[float] = []
    async with xs.load(model, preprocess=pre, threads=args.threads) as engine:
        async with engine.stream_many(cameras, max_batch=args.max_batch, max_wait=args.max_wait,
                                      postprocess=xs.classify(top=5)) as items:
            first = last = 0.0
            async for item in items:
                if isinstance(item, xs.Result):
                    last = time.perf_counter()
                    if not latencies:
                        first = last
                    latencies.append(item.latency)
                    if paced and last - first >= args.duration:
                        break
    return summarise(latencies[1:], len(latencies) - 1, last - first)


async def service(config: Path, args: argparse.Namespace, paced: bool) -> dict[str, float]:
    arrivals = importlib.import_module("bench_service").ARRIVALS  # the sink's module
    arrivals.clear()
    async with xs.Service(load_config(config)) as svc:
        url = svc.metrics_url
        assert url is not None
        run = asyncio.ensure_future(svc.run(until_idle=not paced))
        scrapes = 0
        started = time.perf_counter()
        while not run.done():
            await asyncio.wait({run}, timeout=args.scrape)
            for path in ("/metrics", "/healthz"):
                await asyncio.to_thread(lambda p=path: urllib.request.urlopen(url + p).read())
            scrapes += 1
            if paced and time.perf_counter() - started >= args.duration + 1.0:
                svc.stop()
        summary = await run
    # The callback sink saw every result; its first and last arrivals bound the run, as the
    # bare consumer's do.
    assert summary.lost == 0 and len(arrivals) == summary.delivered, summary
    latencies = [latency for _, latency in arrivals[1:]]
    return {**summarise(latencies, len(latencies), arrivals[-1][0] - arrivals[0][0]),
            "scrapes": scrapes}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tools"))
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{len(__import__('os').sched_getaffinity(0))} CPUs usable",
        "model": args.model, "cameras": args.cameras, "max_batch": args.max_batch,
        "max_wait": args.max_wait, "threads": args.threads, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, pre = model_files(args.model, folder)
        for paced in (False, True):
            config = write_config(folder, model, pre, args, paced)
            runs: dict[str, list[dict[str, float]]] = {"bare": [], "service": []}
            for _ in range(args.repeats):
                runs["bare"].append(await bare(model, pre, args, paced))
                runs["service"].append(await service(config, args, paced))
            median = {side: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
                      for side, rows in runs.items()}
            b, s = median["bare"], median["service"]
            report["latency" if paced else "throughput"] = {
                "runs": runs, "median": median,
                "throughput_cost_pct": 100 * (1 - s["fps"] / b["fps"]),
                "p50_cost_ms": s["p50_ms"] - b["p50_ms"]}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, efficientnet or an .onnx file")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0,
                        help="seconds of paced streaming a latency run measures")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait", type=float, default=0.005)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--scrape", type=float, default=1.0,
                        help="seconds between scrapes of /metrics and /healthz")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args()
    report = asyncio.run(measure(args))
    for kind in ("throughput", "latency"):
        part = report[kind]
        b, s = part["median"]["bare"], part["median"]["service"]
        print(f"{kind:10s} bare {b['fps']:7.1f} fps  p50 {b['p50_ms']:6.2f} ms  "
              f"p99 {b['p99_ms']:6.2f} ms | service {s['fps']:7.1f} fps  p50 {s['p50_ms']:6.2f} "
              f"ms  p99 {s['p99_ms']:6.2f} ms | cost {part['throughput_cost_pct']:+.1f}% "
              f"throughput, {part['p50_cost_ms']:+.2f} ms p50")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
