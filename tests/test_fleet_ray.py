"""The Ray fleet (service/_fleet.py) on a real local Ray cluster on the CPU: ONNX Runtime actors,
paced looping file cameras. Cameras spread evenly; a killed actor's cameras produce again within
10 s, each camera's results in frame order between its reported outages and nothing else lost;
Ray restarts the actor and it takes cameras again; an unreachable address and a missing Ray
fail with one clear line; no Ray process outlives the module.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

import xinfer_stream as xs
from xinfer_stream.service import (ActorEvent, CameraOutage, FleetItem, FleetOptions,
                                   load_config, open_fleet)
from xinfer_stream.service._fleet import _resolve, _within
from xinfer_stream.service._fleet_actor import CameraActor
from xinfer_stream.video._write import write_video

from .conftest import REPO

if TYPE_CHECKING:
    from xinfer_stream.service import ServiceConfig
from .test_cli import tiny_classifier
from .test_reliability_rtsp import RtspServer
from .test_reliability_rtsp import clip as rtsp_clip  # noqa: F401  (a fixture)
from .test_runtime import PRE


def descendants() -> set[int]:
    """Pids of every process below this one (Ray's GCS, raylet and workers, while it runs)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended while we looked
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (not ended, not a zombie)."""
    running = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # ended
        if state != "Z":
            running.add(pid)
    return running


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fleet")
    model = tiny_classifier(folder / "tiny.onnx")
    rng = np.random.default_rng(0)
    clip = folder / "clip.mp4"
    write_video(clip, [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(30)], gop=10)
    return model, clip


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A local Ray of 4 CPUs for the module; afterwards every process it started has ended."""
    ray = pytest.importorskip("ray")
    earlier = descendants()  # e.g. multiprocessing's resource tracker, as old as this process
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        started = descendants() - earlier
        ray.shutdown()
        deadline = time.monotonic() + 15
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(started), f"Ray processes left behind: {sorted(alive(started))}"


def options(model: Path, actors: int) -> FleetOptions:
    return FleetOptions(model, actors=actors, preprocess=PRE, max_wait=0.005)


def write_config(folder: Path, model: Path, clip: Path, n: int, *, paced: bool = True,
                 extra: str = "") -> ServiceConfig:
    """A service config of ``n`` copies of ``clip`` (paced and looping, else played once),
    read back with load_config; ``extra``: more TOML (sinks)."""
    return load_config(config_file(folder, model, clip, n, paced=paced, extra=extra))


def config_file(folder: Path, model: Path, clip: Path, n: int, *, paced: bool = True,
                extra: str = "") -> Path:
    play = "realtime = true\nloop = true\n" if paced else ""
    cams = "".join(f'''
[[cameras]]
name = "cam{i}"
source = "{clip}"
policy = "every"
{play}''' for i in range(n))
    path = folder / "serve.toml"
    path.write_text(f'''
[model]
path = "{model}"
preprocess = {{ size = [8, 8], layout = "nchw" }}

[batching]
max_batch = 4
max_wait = 0.005
queue_size = 3
{cams}
{extra}''', encoding="utf-8")
    return path


def cameras(clip: Path, n: int) -> dict[str, xs.Camera]:
    return {f"cam{i}": xs.Camera(clip, policy="every", options={"realtime": True, "loop": True})
            for i in range(n)}


def frames_of(items: list[FleetItem], camera: str) -> list[int]:
    return [r.frame_index for r in items if isinstance(r, xs.Result) and r.camera == camera]


def segments(items: list[FleetItem], camera: str) -> list[list[int]]:
    """The camera's frame indices, split at each of its outages."""
    parts: list[list[int]] = [[]]
    for item in items:
        if isinstance(item, CameraOutage) and item.camera == camera:
            parts.append([])
        elif isinstance(item, xs.Result) and item.camera == camera:
            parts[-1].append(item.frame_index)
    return parts


# -- without Ray ------------------------------------------------------------------------------
def test_only_the_fleet_imports_ray() -> None:
    offenders = []
    for path in (REPO / "xinfer_stream").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [])
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names
                          if (n == "ray" or n.startswith("ray."))
                          and path.relative_to(REPO).as_posix() != "xinfer_stream/service/_fleet.py"]
    assert offenders == []
    # ... and only when a fleet opens: importing the service package leaves Ray alone.
    code = "import sys, xinfer_stream.service; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})


# -- before the cluster: errors that need no cluster ------------------------------------------
@pytest.mark.slow
def test_unreachable_address_fails_with_one_clear_line(assets: tuple[Path, Path]) -> None:
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model, clip = assets

    async def main() -> None:
        async with open_fleet(options(model, 1), cameras(clip, 1), address=f"127.0.0.1:{port}"):
            pass

    started = time.monotonic()
    with pytest.raises(xs.FleetError) as caught:
        asyncio.run(main())
    message = str(caught.value)
    assert f"'127.0.0.1:{port}'" in message and "ray start --head" in message
    assert "\n" not in message
    assert time.monotonic() - started < 10
    assert not ray.is_initialized()
    with pytest.raises(xs.FleetError, match="'nowhere' is not HOST:PORT"):
        asyncio.run(_bad_address(model, clip))


async def _bad_address(model: Path, clip: Path) -> None:
    async with open_fleet(options(model, 1), cameras(clip, 1), address="nowhere"):
        pass


@pytest.mark.slow
def test_serve_with_an_unreachable_ray_address_is_one_line(
        tmp_path: Path, assets: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from xinfer_stream.cli import main

    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = config_file(tmp_path, *assets, 1)
    assert main(["serve", str(config), "--ray", f"127.0.0.1:{port}"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot reach the Ray cluster at '127.0.0.1:{port}'" in err[0], err


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                     assets: tuple[Path, Path]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(xs.FleetError, match=r"pip install 'xinfer-stream\[ray\]'"):
        open_fleet(options(*assets[:1], 1), {})


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="actors must be a positive int"):
        FleetOptions("m.onnx", actors=0)
    with pytest.raises(ValueError, match="capacity must be"):
        FleetOptions("m.onnx", actors=1, capacity=0)


def test_actors_follow_the_clusters_gpus_or_cpus() -> None:
    auto = FleetOptions("m.engine")
    on_gpus = _resolve(auto, {"CPU": 64.0, "GPU": 8.0})
    assert (on_gpus.gpu, on_gpus.actors) == (True, 8)
    on_cpus = _resolve(FleetOptions("m.onnx", cpus_per_actor=4), {"CPU": 18.0})
    assert (on_cpus.gpu, on_cpus.actors) == (False, 4)
    forced = _resolve(FleetOptions("m.onnx", gpu=False, actors=3), {"CPU": 8.0, "GPU": 2.0})
    assert (forced.gpu, forced.actors) == (False, 3)
    with pytest.raises(xs.FleetError, match="no GPU; pass gpu=False"):
        _resolve(FleetOptions("m.engine", gpu=True), {"CPU": 8.0})


def test_a_call_cancelled_as_its_answer_arrives_stays_cancelled() -> None:
    """The fleet's timed actor calls: a cancellation that meets the answer in the same loop
    turn ends the caller (asyncio.wait_for before 3.12 returned the answer instead, and a
    watch task polled on through aclose); the timeout still raises and cancels the call."""

    async def main() -> None:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        caller = asyncio.ensure_future(_within(answer, 10))
        await asyncio.sleep(0)  # the caller now waits
        answer.set_result(1)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        late: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        with pytest.raises(TimeoutError, match="no answer within 0.05 s"):
            await _within(late, 0.05)
        assert late.cancelled()
        assert await _within(asyncio.sleep(0, result=7), 10) == 7

    asyncio.run(main())


def test_a_poll_gathers_results_for_a_while_unless_enough_are_waiting(
        assets: tuple[Path, Path]) -> None:
    """The actor's side of a poll, without Ray: a poll's first result waits ``gather`` seconds
    for others to join it (a poll costs the actor the same whatever it carries); one finding
    ``max_items`` already waiting returns at once; a drained stream ends a poll's gathering."""
    model, clip = assets

    async def main() -> None:
        actor = CameraActor(options(model, 1))
        await actor.start()
        try:
            await actor.add("cam0", cameras(clip, 1)["cam0"])  # 30 frames/s
            await actor.poll(256, 10.0, 0.0)  # opened
            started = time.perf_counter()
            items, ended = await actor.poll(256, 10.0, 0.3)
            took = time.perf_counter() - started
            assert not ended and took >= 0.3 and len(items) >= 5, (took, len(items))
            queue = actor._queue
            assert queue is not None
            deadline = time.perf_counter() + 10
            while queue.qsize() < 3 and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            items, _ = await actor.poll(3, 10.0, 5.0)
            assert len(items) == 3 and time.perf_counter() - started < 1.0
            await actor.drain()
            started = time.perf_counter()
            while not (await actor.poll(256, 10.0, 5.0))[1]:
                pass
            assert time.perf_counter() - started < 4.0, "the end cut the gathering short"
        finally:
            await actor.close()

    asyncio.run(main())


def test_options_from_a_service_config(tmp_path: Path, assets: tuple[Path, Path]) -> None:
    model, clip = assets
    config = write_config(tmp_path, model, clip, 2)
    options = FleetOptions.from_config(config, postprocess=xs.classify(top=2), capacity=5)
    assert options.model == model
    assert options.preprocess == PRE
    assert (options.max_batch, options.max_wait, options.queue_size) == (4, 0.005, 3)
    assert options.capacity == 5 and options.actors is None and options.gpu is None


# -- on the cluster ---------------------------------------------------------------------------
@pytest.mark.slow
def test_cameras_spread_evenly_and_stream_in_order(cluster: Any, tmp_path: Path,
                                                   assets: tuple[Path, Path]) -> None:
    """A service config's 7 cameras over 3 actors: 3, 2, 2, each camera in frame order; a
    camera added goes to the least loaded actor, one removed stops; closing is idempotent."""
    model, clip = assets
    config = write_config(tmp_path, model, clip, 7)
    fleet_options = FleetOptions.from_config(config, postprocess=xs.classify(top=2), actors=3)
    cams = {c.name: c.camera() for c in config.cameras}

    async def main() -> tuple[dict[str, str], list[FleetItem]]:
        items: list[FleetItem] = []
        async with open_fleet(fleet_options, cams) as fleet:
            placement = fleet.placement()
            async for item in fleet:
                items.append(item)
                if all(len(frames_of(items, f"cam{i}")) >= 15 for i in range(7)):
                    break
            stats = await fleet.fleet_statistics()
            fleet.add("late", cams["cam0"])
            assert fleet.placement()["late"] == "actor-1"  # 2, 2 and 3 cameras: the first 2
            await fleet.remove("cam0")
            removed_at = len(items)
            async for item in fleet:
                items.append(item)
                if len(frames_of(items, "late")) >= 15:
                    break
            with pytest.raises(ValueError, match="no camera named 'cam0'"):
                await fleet.remove("cam0")
            fleet.add("bad", xs.Camera(clip, policy="bogus"))  # its actor refuses it
            async for item in fleet:
                items.append(item)
                if isinstance(item, xs.CameraEvent) and item.camera == "bad":
                    assert item.kind == "failed" and isinstance(item.error, ValueError)
                    assert "policy must be 'every' or 'latest'" in str(item.error)
                    break
            assert "bad" not in fleet.placement()
        await fleet.aclose()
        assert fleet.closed
        with pytest.raises(xs.ClosedResourceError):
            fleet.add("after", cams["cam1"])
        assert {a: len(s.cameras) for a, s in stats.actors.items()} == {
            "actor-0": 3, "actor-1": 2, "actor-2": 2}
        assert all(s.state == "up" and s.stream is not None for s in stats.actors.values())
        # remove() promised no more results of cam0 once it returned, and said so
        assert not [r for r in items[removed_at:] if isinstance(r, xs.Result) and r.camera == "cam0"]
        assert [(e.camera, e.kind) for e in items[removed_at:] if isinstance(e, xs.CameraEvent)
                and e.kind != "opened"] == [("cam0", "removed"), ("bad", "failed")]
        return placement, items

    placement, items = asyncio.run(asyncio.wait_for(main(), 120))
    per_actor = [list(placement.values()).count(f"actor-{k}") for k in range(3)]
    assert sorted(per_actor) == [2, 2, 3] and max(per_actor) <= math.ceil(7 / 3)
    for name in [f"cam{i}" for i in range(7)] + ["late"]:
        got = frames_of(items, name)
        assert got == list(range(len(got))), f"{name} out of order or lost frames"
    assert not any(isinstance(item, CameraOutage) for item in items)
    first = next(r for r in items if isinstance(r, xs.Result))
    assert isinstance(first.prediction, xs.Classification)  # the postprocess ran on the actor


@pytest.mark.slow
def test_killed_actor_cameras_move_within_10_s_in_order(cluster: Any, assets: tuple[Path, Path],
                                                        rtsp_clip: Path) -> None:  # noqa: F811
    """Kill an actor's process mid-stream: its cameras (a paced file, a live RTSP camera)
    resume on the survivors within 10 s, each camera in frame order between its outages, and
    Ray's restart takes cameras again."""
    model, clip = assets
    server = RtspServer(rtsp_clip)
    cams = cameras(clip, 6)
    # cam4 lands on actor-1, the one killed (placement is round robin by name).
    cams["cam4"] = xs.Camera(server.url, policy="every", options={"timeout": (2.0, 2.0)})

    async def main() -> tuple[list[FleetItem], float, dict[str, str], int]:
        items: list[FleetItem] = []
        killed_at = 0.0
        async with open_fleet(options(model, 3), cams) as fleet:
            before = fleet.placement()
            pids = {}
            async for item in fleet:
                items.append(item)
                if isinstance(item, ActorEvent) and item.kind == "up":
                    pids[item.actor] = item.pid
                if not killed_at and all(len(frames_of(items, c)) >= 10 for c in before):
                    os.kill(pids["actor-1"], signal.SIGKILL)
                    killed_at = time.time()
                if killed_at and rejoined_and_streaming(items, before):
                    break
            restarts = (await fleet.fleet_statistics()).actors["actor-1"].starts
        return items, killed_at, before, restarts

    try:
        items, killed_at, before, starts = asyncio.run(asyncio.wait_for(main(), 240))
    finally:
        server.kill()
    victims = {c for c, a in before.items() if a == "actor-1"}
    assert victims == {"cam1", "cam4"} and starts == 2
    lost = [e for e in items if isinstance(e, ActorEvent) and e.kind == "lost"]
    assert [e.actor for e in lost] == ["actor-1"]
    outages = [o for o in items if isinstance(o, CameraOutage)]
    moved = [o for o in outages if o.reason == "actor lost"]
    assert {o.camera for o in moved} == victims
    for o in moved:
        # Its new home, or actor-1 again when Ray's restart rebalanced it back before its first
        # result (the outage is one: it began when actor-1 was lost).
        assert o.source == "actor-1" and o.target in {"actor-0", "actor-1", "actor-2"}
        assert o.resumed - killed_at <= 10.0, f"{o.camera} resumed {o.resumed - killed_at:.1f} s after the kill"
        assert o.seconds > 0
    for o in outages:
        if o.reason == "rebalanced":
            assert o.target == "actor-1"
    for camera in before:
        for part in segments(items, camera):
            if camera == "cam4":  # live: in order, none twice (a frame may be lost on the wire)
                assert part == sorted(set(part)), f"{camera}: frames out of order"
            else:
                assert part == list(range(part[0], part[0] + len(part))), (
                    f"{camera}: frames out of order or lost between outages")
        expected = sum(1 for o in outages if o.camera == camera)
        assert len(segments(items, camera)) == expected + 1
        if camera not in victims:
            assert not any(o.camera == camera and o.reason == "actor lost" for o in outages)
    assert rejoined_and_streaming(items, before)


def rejoined_and_streaming(items: list[FleetItem], cameras: dict[str, str]) -> bool:
    """After the kill: actor-1 up again, each of its cameras back from its move (its "actor
    lost" outage is reported with its first result on the new actor: until then its latest
    segment is the one from before the kill), and each camera's latest segment has 10 results."""
    ups = [e for e in items if isinstance(e, ActorEvent) and e.actor == "actor-1" and e.kind == "up"]
    if len(ups) < 2:
        return False
    outages = [o for o in items if isinstance(o, CameraOutage)]
    moved = {o.camera for o in outages if o.reason == "actor lost"}
    victims = {c for c, actor in cameras.items() if actor == "actor-1"}
    return (any(o.reason == "rebalanced" for o in outages) and victims <= moved
            and all(len(segments(items, c)[-1]) >= 10 for c in cameras))


@pytest.mark.slow
def test_a_service_config_served_on_ray_reaches_its_sinks(cluster: Any, tmp_path: Path,
                                                          assets: tuple[Path, Path]) -> None:
    """``Service(config, ray=...)``: the config's cameras on the fleet (and one a reload
    adds), every result of every camera in the JSON lines sink in frame order, the run ending
    (drained) once every camera ended."""
    model, clip = assets
    out = tmp_path / "results.jsonl"
    config = write_config(tmp_path, model, clip, 3, paced=False,
                          extra=f'[[sinks]]\nkind = "jsonl"\npath = "{out}"\n')
    events: list[Any] = []

    async def main() -> xs.ServiceSummary:
        async with xs.Service(config, ray="auto", on_event=events.append) as service:
            reload = await service.reload(write_config(
                tmp_path, model, clip, 4, paced=False,
                extra=f'[[sinks]]\nkind = "jsonl"\npath = "{out}"\n'))
            assert reload.added == ("cam3",) and not reload.removed
            summary = await service.run(until_idle=True)
            assert service.health().cameras == 4
            return summary

    summary = asyncio.run(asyncio.wait_for(main(), 120))
    assert summary.ended == "idle" and summary.delivered == 4 * 30
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    for i in range(4):
        assert [r["frame"] for r in lines if r["camera"] == f"cam{i}"] == list(range(30))
    assert {(e.actor, e.kind) for e in events if isinstance(e, ActorEvent)} >= {
        (f"actor-{k}", "up") for k in range(4)}
    assert sorted(e.camera for e in events if isinstance(e, xs.CameraEvent)
                  and e.kind == "ended") == ["cam0", "cam1", "cam2", "cam3"]


# -- on the GPU -------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_gpu_actor_runs_the_torch_backend_on_its_gpu(torch: Any, cluster: Any, tmp_path: Path,
                                                     bundled_clip: Path) -> None:
    """A GPU actor (num_gpus=1) loads a TorchScript file with the torch backend and streams
    two cameras through the GPU path, each in frame order."""
    from .test_gpu_runtime import CLIP_SPEC, small_model

    if cluster.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the local Ray cluster sees no GPU")
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(small_model(torch).eval()), str(path))
    options = FleetOptions(path, actors=1, gpu=True, preprocess=CLIP_SPEC)
    cams = {name: xs.Camera(bundled_clip, policy="every", options={"loop": True})
            for name in ("a", "b")}

    async def main() -> tuple[list[FleetItem], Any]:
        items: list[FleetItem] = []
        async with open_fleet(options, cams) as fleet:
            async for item in fleet:
                items.append(item)
                if all(len(frames_of(items, c)) >= 30 for c in cams):
                    break
            return items, await fleet.fleet_statistics()

    items, stats = asyncio.run(asyncio.wait_for(main(), 180))
    actor = stats.actors["actor-0"]
    assert actor.stream is not None and actor.stream.gpu, "the actor ran no GPU runner"
    for camera in cams:
        got = frames_of(items, camera)
        assert got == list(range(len(got)))
    first = next(r for r in items if isinstance(r, xs.Result))
    assert first.outputs["output"].shape == (1, 5)


@pytest.mark.slow
def test_a_hung_actor_is_replaced_after_10_s(cluster: Any, assets: tuple[Path, Path]) -> None:
    """Freeze an actor's process (SIGSTOP: alive, holding its sockets, answering nothing): its
    poll times out after 10 s, its cameras move, and Ray replaces the frozen process."""
    model, clip = assets

    async def main() -> tuple[list[FleetItem], float]:
        items: list[FleetItem] = []
        frozen_at = 0.0
        pids: dict[str, int] = {}
        async with open_fleet(options(model, 2), cameras(clip, 2)) as fleet:
            async for item in fleet:
                items.append(item)
                if isinstance(item, ActorEvent) and item.kind == "up" and item.pid is not None:
                    pids.setdefault(item.actor, item.pid)
                if not frozen_at and all(len(frames_of(items, c)) >= 10 for c in ("cam0", "cam1")):
                    os.kill(pids["actor-1"], signal.SIGSTOP)
                    frozen_at = time.time()
                ups = [e for e in items if isinstance(e, ActorEvent) and e.kind == "up"
                       and e.actor == "actor-1"]
                if frozen_at and len(ups) == 2 and len(segments(items, "cam1")[-1]) >= 10:
                    break
        return items, frozen_at

    items, frozen_at = asyncio.run(asyncio.wait_for(main(), 120))
    lost = [e for e in items if isinstance(e, ActorEvent) and e.kind == "lost"]
    assert [e.actor for e in lost] == ["actor-1"]
    assert isinstance(lost[0].error, asyncio.TimeoutError)
    moved = [o for o in items if isinstance(o, CameraOutage) and o.reason == "actor lost"]
    assert [(o.camera, o.target) for o in moved] == [("cam1", "actor-0")]
    # The poll in flight at the freeze started up to one poll (0.2 s) earlier; it times out 10 s
    # after it started.
    assert 9.5 <= moved[0].resumed - frozen_at <= 20.0
    for camera in ("cam0", "cam1"):
        for part in segments(items, camera):
            assert part == list(range(part[0], part[0] + len(part))), camera
