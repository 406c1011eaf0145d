"""The Ray fleet losing a whole node: a local Ray cluster of a head and two worker nodes
(``ray.cluster_utils.Cluster``, real raylets), one actor on each (actors spread over nodes);
removing the node of one actor moves its cameras to the other within 10 s, each camera in frame
order between its outages, and Ray restarts the actor on the surviving node. A separate module
from tests/test_fleet_ray.py: one Ray per process, and this one is a cluster of its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import xinfer_stream as xs
from xinfer_stream.service import ActorEvent, CameraOutage, FleetItem, open_fleet

from .test_fleet_ray import alive, assets, cameras, descendants, options, segments  # noqa: F401

pytestmark = pytest.mark.slow


def ancestors(pid: int) -> list[int]:
    found = []
    while pid > 1:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
        found.append(pid)
    return found


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[Any, list[Any]]]:
    """A head with no CPU for actors and two worker nodes of 2 CPUs; afterwards every process
    the cluster started has ended."""
    ray = pytest.importorskip("ray")
    earlier = descendants()  # e.g. multiprocessing's resource tracker, as old as this process
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, workers
    finally:
        started = descendants() - earlier
        ray.shutdown()
        cluster.shutdown()
        deadline = time.monotonic() + 15
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(started), f"Ray processes left behind: {sorted(alive(started))}"


def test_a_lost_node_moves_its_cameras_within_10_s(nodes: tuple[Any, list[Any]],
                                                    assets: tuple[Path, Path]) -> None:  # noqa: F811
    """Remove the node under actor-1 mid-stream: its cameras resume on actor-0 within 10 s;
    Ray restarts actor-1 on the surviving node and it takes cameras again."""
    cluster, workers = nodes
    model, clip = assets

    async def main() -> tuple[list[FleetItem], float, dict[str, str]]:
        items: list[FleetItem] = []
        lost_at = 0.0
        async with open_fleet(options(model, 2), cameras(clip, 4)) as fleet:
            before = fleet.placement()
            pids: dict[str, int] = {}
            async for item in fleet:
                items.append(item)
                if isinstance(item, ActorEvent) and item.kind == "up" and item.pid is not None:
                    pids[item.actor] = item.pid
                if not lost_at and all(len(segments(items, c)[0]) >= 10 for c in before):
                    homes = {a: next(n for n in workers if n.all_processes["raylet"][0]
                                     .process.pid in ancestors(pid)) for a, pid in pids.items()}
                    assert homes["actor-0"] is not homes["actor-1"], "actors share a node"
                    cluster.remove_node(homes["actor-1"])
                    lost_at = time.time()
                if lost_at and len(pids) == 2 and restarted(items) and all(
                        len(segments(items, c)[-1]) >= 10 for c in before):
                    break
        return items, lost_at, before

    items, lost_at, before = asyncio.run(asyncio.wait_for(main(), 180))
    victims = {c for c, a in before.items() if a == "actor-1"}
    moved = [o for o in items if isinstance(o, CameraOutage) and o.reason == "actor lost"]
    assert {o.camera for o in moved} == victims and len(victims) == 2
    for o in moved:
        assert o.target == "actor-0"
        assert o.resumed - lost_at <= 10.0, f"{o.camera}: {o.resumed - lost_at:.1f} s"
    for camera in before:
        for part in segments(items, camera):
            assert part == list(range(part[0], part[0] + len(part))), camera
        if camera not in victims:
            assert not any(isinstance(o, CameraOutage) and o.camera == camera
                           and o.reason == "actor lost" for o in items)
    assert any(isinstance(r, xs.Result) and r.camera in victims for r in items[-20:])


def restarted(items: list[FleetItem]) -> bool:
    return sum(1 for e in items if isinstance(e, ActorEvent) and e.actor == "actor-1"
               and e.kind == "up") >= 2
