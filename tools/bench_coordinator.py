"""Benchmark of the fleet's camera assignment (xinfer_stream/service/_coordinator.py) on the CPU.

Simulated actors (names only: no Ray, no model) and cameras, the calls the fleet makes:
``assign`` 10,000 cameras over 100 actors; ``actor_lost`` for 10 of them, one at a time (their
cameras move to the survivors); the 10 rejoin (Ray restarted them) and one ``rebalance`` moves
cameras back to even shares. Each step is timed with ``time.perf_counter`` over ``--repeats``
fresh runs (median and best); the placement is checked after each step (no camera lost, no actor
above its even share).

Usage: python3 tools/bench_coordinator.py [--cameras 10000] [--actors 100] [--kill 10]
       [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xinfer_stream.service import Coordinator


def one_run(cameras: int, actors: int, kill: int) -> dict[str, float]:
    names = [f"actor-{i:04d}" for i in range(actors)]
    cams = [f"camera-{j:06d}" for j in range(cameras)]
    c = Coordinator()
    for name in names:
        c.actor_joined(name)

    started = time.perf_counter()
    c.assign(cams)
    assign = time.perf_counter() - started
    check(c, cameras)

    victims = names[::max(1, actors // kill)][:kill]
    started = time.perf_counter()
    moved = sum(len(c.actor_lost(name)) for name in victims)
    fail_over = time.perf_counter() - started
    check(c, cameras)

    started = time.perf_counter()
    for name in victims:
        c.actor_joined(name)
    rebalanced = len(c.rebalance())
    rejoin = time.perf_counter() - started
    check(c, cameras)
    return {"assign_s": assign, "fail_over_s": fail_over, "cameras_moved": moved,
            "rejoin_and_rebalance_s": rejoin, "cameras_rebalanced": rebalanced}


def check(c: Coordinator, cameras: int) -> None:
    loads = c.loads()
    if len(c.placement()) != cameras or c.waiting:
        raise AssertionError("a camera was lost or left waiting")
    if max(loads.values()) > math.ceil(cameras / len(loads)):
        raise AssertionError(f"an actor is above its share: {max(loads.values())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, default=10_000)
    parser.add_argument("--actors", type=int, default=100)
    parser.add_argument("--kill", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    runs = [one_run(args.cameras, args.actors, args.kill) for _ in range(args.repeats)]
    summary: dict[str, Any] = {
        "cameras": args.cameras, "actors": args.actors, "killed": args.kill,
        "repeats": args.repeats,
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cameras_moved": runs[0]["cameras_moved"],
        "cameras_rebalanced": runs[0]["cameras_rebalanced"],
    }
    for step in ("assign_s", "fail_over_s", "rejoin_and_rebalance_s"):
        times = [r[step] for r in runs]
        summary[step] = {"median": statistics.median(times), "best": min(times)}
    print(f"{args.cameras} cameras over {args.actors} actors ({summary['machine']}), "
          f"median of {args.repeats}:")
    print(f"  assign all          {summary['assign_s']['median'] * 1e3:8.2f} ms")
    print(f"  lose {args.kill} actors       {summary['fail_over_s']['median'] * 1e3:8.2f} ms "
          f"({summary['cameras_moved']} cameras moved)")
    print(f"  rejoin + rebalance  {summary['rejoin_and_rebalance_s']['median'] * 1e3:8.2f} ms "
          f"({summary['cameras_rebalanced']} cameras moved)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
