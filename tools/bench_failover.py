"""Fail-over timeline of the Ray fleet on the CPU: how long a lost actor's cameras go without
results, how long Ray takes to bring the actor back, and the rebalance's gap.

A local Ray; a tiny ONNX classifier (8x8 input) on ONNX Runtime actors; ``--cameras`` paced
looping cameras (a 64x48 H.264 clip made here, 30 frames/s). After ``--warmup`` seconds of
streaming, one actor is lost:

- ``--lose process``: its worker process is killed (SIGKILL), on a one-node Ray of
  ``--actors`` + 1 CPUs;
- ``--lose node``: the whole node under it is removed (raylet and all), on a cluster of a head
  and one worker node of 2 CPUs an actor (``ray.cluster_utils.Cluster``; actors spread over
  nodes, and a survivor has room for the restarted one).

Reported, in seconds from the loss: when the driver found it lost, when each of its cameras
produced again on a survivor, when Ray's restart of it was up again; and each rebalance
outage's gap. Each run repeats ``--runs`` times; medians and ranges go to ``--json``.

Usage: python3 tools/bench_failover.py [--lose process|node] [--actors 3] [--cameras 6]
       [--warmup 3] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xinfer_stream as xs
from xinfer_stream.service import ActorEvent, CameraOutage, FleetOptions, open_fleet
from xinfer_stream.video._write import write_video

PRE = xs.Preprocess(size=(8, 8), layout="nchw")


def tiny_model(path: Path) -> Path:
    """Global average pool and a fixed 3x4 linear layer: the fleet's cost, not a model's."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4],
                           np.random.default_rng(0).standard_normal(12).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def ancestors(pid: int) -> list[int]:
    found = []
    while pid > 1:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
        found.append(pid)
    return found


async def one_run(model: Path, clip: Path, args: argparse.Namespace,
                  cluster: Any, workers: list[Any]) -> dict[str, Any]:
    cams = {f"cam{i}": xs.Camera(clip, policy="every", options={"realtime": True, "loop": True})
            for i in range(args.cameras)}
    options = FleetOptions(model, actors=args.actors, preprocess=PRE, max_wait=0.005)
    victim = "actor-1"
    lost_at = found = back = 0.0
    resumed: list[float] = []
    rebalanced: list[float] = []
    pids: dict[str, int] = {}
    async with open_fleet(options, cams) as fleet:
        victims = [c for c, a in fleet.placement().items() if a == victim]
        started = time.time()
        async for item in fleet:
            now = time.time()
            if isinstance(item, ActorEvent):
                if item.kind == "up" and item.pid is not None:
                    if lost_at and item.actor == victim:
                        back = now - lost_at
                    pids[item.actor] = item.pid
                elif item.kind == "lost" and item.actor == victim:
                    found = now - lost_at
            elif isinstance(item, CameraOutage):
                if item.reason == "actor lost":
                    resumed.append(item.resumed - lost_at)
                else:
                    rebalanced.append(item.seconds)
            if not lost_at and now - started >= args.warmup:
                if args.lose == "process":
                    os.kill(pids[victim], signal.SIGKILL)
                else:
                    cluster.remove_node(next(n for n in workers if n.all_processes["raylet"][0]
                                             .process.pid in ancestors(pids[victim])))
                lost_at = time.time()
            if back and len(resumed) == len(victims) and len(rebalanced) >= len(victims):
                break
            if lost_at and now - lost_at > 60:
                raise RuntimeError(f"60 s after the loss: found {found}, cameras back {resumed}, "
                                   f"actor back {back}, rebalance gaps {rebalanced}")
    return {"found": found, "resumed": resumed, "restarted": back, "rebalance_gap": rebalanced}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lose", choices=["process", "node"], default="process")
    parser.add_argument("--actors", type=int, default=3)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import ray

    runs = []
    with tempfile.TemporaryDirectory() as folder:
        model = tiny_model(Path(folder) / "tiny.onnx")
        clip = Path(folder) / "clip.mp4"
        rng = np.random.default_rng(0)
        write_video(clip, [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(30)],
                    gop=10)
        for run in range(args.runs):
            cluster = None
            workers: list[Any] = []
            if args.lose == "node":
                from ray.cluster_utils import Cluster
                cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
                # 2 CPUs a node: room on a survivor for Ray to restart the lost actor
                workers = [cluster.add_node(num_cpus=2) for _ in range(args.actors)]
                ray.init(address=cluster.address, log_to_driver=False)
            else:
                ray.init(num_cpus=args.actors + 1, include_dashboard=False, log_to_driver=False)
            try:
                runs.append(asyncio.run(one_run(model, clip, args, cluster, workers)))
            finally:
                ray.shutdown()
                if cluster is not None:
                    cluster.shutdown()
            r = runs[-1]
            print(f"run {run + 1}: found lost {r['found']:.2f} s, cameras back "
                  f"{', '.join(f'{t:.2f}' for t in r['resumed'])} s, actor back "
                  f"{r['restarted']:.2f} s after the loss; rebalance gaps "
                  f"{', '.join(f'{t:.2f}' for t in r['rebalance_gap'])} s", flush=True)

    def span(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    summary = {
        "lose": args.lose, "actors": args.actors, "cameras": args.cameras, "runs": args.runs,
        "found_lost_s": span([r["found"] for r in runs]),
        "cameras_back_s": span([t for r in runs for t in r["resumed"]]),
        "actor_back_s": span([r["restarted"] for r in runs]),
        "rebalance_gap_s": span([t for r in runs for t in r["rebalance_gap"]]),
        "ray": ray.__version__,
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python "
                   f"{platform.python_version()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
