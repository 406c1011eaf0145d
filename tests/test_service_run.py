"""The service as a library call (``xs.Service``) on the CPU (ONNX Runtime, a tiny real model,
file cameras): every frame of every camera reaches the sinks in order; the callback sink; the
metrics scraped over HTTP move; ``/healthz`` turns unhealthy when cameras fail and healthy
again after a reload takes them out; a reload adds, removes and restarts cameras while the
others keep streaming; the health rule's engine-stuck transition; and nothing left running
afterwards."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import xinfer_stream as xs
from xinfer_stream.service import HealthConfig, assess, load_config
from xinfer_stream.video._write import write_video

from .census import left_behind, steady
from .test_cli import tiny_classifier
from .test_reliability_cancellation import our_threads

FRAMES = {"a": 12, "b": 20, "c": 9}

RECORDED: list[xs.Result] = []
_recorded_lock = threading.Lock()


def record(result: xs.Result) -> None:
    """The callback sink the tests name (``tests.test_service_run:record``)."""
    with _recorded_lock:
        RECORDED.append(result)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_assets(tmp_path_factory.mktemp("service"))


def make_assets(folder: Path) -> Path:
    """A tiny classifier and three clips (of different sizes and lengths), 30 frames/s."""
    tiny_classifier(folder / "tiny.onnx")
    rng = np.random.default_rng(0)
    for (name, n), (h, w) in zip(FRAMES.items(), ((48, 64), (72, 128), (40, 40))):
        write_video(folder / f"{name}.mp4",
                    [rng.integers(0, 256, (h, w, 3), np.uint8) for _ in range(n)], gop=4)
    return folder


def camera(name: str, source: str | None = None, **options: Any) -> str:
    lines = [f'[[cameras]]\nname = "{name}"\nsource = "{source or name + ".mp4"}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def write_config(folder: Path, *cameras: str, extra: str = "", name: str = "serve.toml") -> Path:
    path = folder / name
    path.write_text('[model]\npath = "tiny.onnx"\npreprocess = { size = [8, 8] }\n\n'
                    '[postprocess]\nkind = "classify"\ntop = 2\n\n'
                    '[batching]\nmax_batch = 4\nmax_wait = 0.005\n\n'
                    + "\n".join(cameras) + "\n" + extra)
    return path


@pytest.fixture(scope="module")
def warm(folder: Path) -> None:
    """Open ONNX Runtime, FFmpeg and the HTTP server once before anything is counted."""
    config = load_config(write_config(folder, camera("a"), extra="[metrics]\nport = 0\n",
                                      name="warm.toml"))

    async def once() -> None:
        async with xs.Service(config) as service:
            await service.run(until_idle=True)
            await asyncio.to_thread(scrape, service, "/healthz")

    asyncio.run(once())


@pytest.fixture
def baseline(warm: None) -> Iterator[None]:
    before = steady()
    yield
    assert our_threads() == []
    assert left_behind(before) == []


def scrape(service: xs.Service, path: str) -> tuple[int, str]:
    assert service.metrics_url is not None
    try:
        with urllib.request.urlopen(service.metrics_url + path, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def samples(text: str, name: str) -> dict[str, float]:
    """The samples of metric ``name`` by their ``camera`` label (or ``""``)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[sample.labels.get("camera", "")] = sample.value
    return found


def lines_by_camera(path: Path) -> dict[str, list[int]]:
    frames: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        assert record["classes"], record  # the postprocess ran
        frames.setdefault(record["camera"], []).append(record["frame"])
    return frames


# -- a whole run ----------------------------------------------------------------------------
def test_every_frame_of_every_camera_reaches_the_sinks_in_order(folder: Path, tmp_path: Path,
                                                                baseline: None) -> None:
    out = tmp_path / "results.jsonl"
    config = load_config(write_config(
        folder, camera("a"), camera("b"), camera("c"),
        extra=f'[[sinks]]\nkind = "jsonl"\npath = "{out}"\n\n'
              f'[[sinks]]\nkind = "callback"\ntarget = "{__name__}:record"\ncameras = ["b"]\n'))
    RECORDED.clear()

    async def main() -> xs.ServiceSummary:
        async with xs.Service(config) as service:
            return await service.run(until_idle=True)

    summary = asyncio.run(main())
    assert lines_by_camera(out) == {name: list(range(n)) for name, n in FRAMES.items()}
    assert [(r.camera, r.frame_index) for r in RECORDED] == [("b", i) for i in range(20)]
    assert summary.ended == "idle"
    assert {n: (c.delivered, c.offered, c.lost, c.state) for n, c in summary.cameras.items()} \
        == {n: (k, k, 0, "ended") for n, k in FRAMES.items()}
    assert [(s.written, s.errors) for s in summary.sinks] == [(41, 0), (20, 0)]


def test_a_failing_callback_is_counted_and_the_other_sinks_go_on(folder: Path, tmp_path: Path,
                                                                 baseline: None) -> None:
    out = tmp_path / "results.jsonl"
    config = load_config(write_config(
        folder, camera("a"),
        extra=f'[[sinks]]\nkind = "callback"\ntarget = "{__name__}:explode"\n\n'
              f'[[sinks]]\nkind = "jsonl"\npath = "{out}"\n'))

    async def main() -> xs.ServiceSummary:
        async with xs.Service(config) as service:
            return await service.run(until_idle=True)

    summary = asyncio.run(main())
    assert lines_by_camera(out) == {"a": list(range(12))}
    callback, jsonl = summary.sinks
    assert (callback.written, callback.errors) == (6, 6)  # odd frames fail
    assert isinstance(callback.last_error, KeyError)
    assert (jsonl.written, jsonl.errors) == (12, 0)


def explode(result: xs.Result) -> None:
    if result.frame_index % 2:
        raise KeyError(result.frame_index)


def test_a_callback_that_cannot_be_imported_fails_at_start(folder: Path) -> None:
    config = load_config(write_config(
        folder, camera("a"), extra='[[sinks]]\nkind = "callback"\ntarget = "no_such_mod:f"\n'))

    async def main() -> None:
        async with xs.Service(config):
            pass

    with pytest.raises(xs.ConfigError, match=r"serve.toml: sinks\[0\].target: cannot import "
                                             r"'no_such_mod' \(ModuleNotFoundError"):
        asyncio.run(main())


# -- metrics and health over HTTP -------------------------------------------------------------
def test_metrics_scraped_over_http_show_the_counters_moving(folder: Path,
                                                            baseline: None) -> None:
    config = load_config(write_config(
        folder, camera("a", realtime=True, loop=True), camera("b", realtime=True, loop=True),
        extra="[metrics]\nport = 0\n"))

    async def main() -> tuple[list[str], tuple[int, str], xs.ServiceSummary, str]:
        async with xs.Service(config) as service:
            run = asyncio.ensure_future(service.run())
            pages = []
            for _ in range(2):
                await asyncio.sleep(0.5)
                status, page = await asyncio.to_thread(scrape, service, "/metrics")
                assert status == 200
                pages.append(page)
            health = await asyncio.to_thread(scrape, service, "/healthz")
            service.stop()
            url = service.metrics_url
            assert url is not None
            return pages, health, await run, url

    pages, (status, health), summary, url = asyncio.run(main())
    first, second = (samples(p, "xinfer_camera_frames_inferred_total") for p in pages)
    assert set(first) == {"a", "b"}
    assert all(second[c] > first[c] > 0 for c in ("a", "b")), (first, second)
    assert samples(pages[1], "xinfer_camera_frames_in_total")["a"] >= second["a"]
    assert samples(pages[1], "xinfer_result_latency_seconds_count")[""] > 0
    assert samples(pages[1], "xinfer_batch_size_frames_count")[""] > 0
    assert samples(pages[1], "xinfer_camera_up") == {"a": 1.0, "b": 1.0}
    info = next(s for f in text_string_to_metric_families(pages[1]) for s in f.samples
                if s.name == "xinfer_model_info")
    assert (info.labels["model"], info.labels["backend"]) == ("tiny.onnx", "onnxruntime")
    assert status == 200 and json.loads(health)["healthy"] is True
    assert summary.ended == "stopped" and summary.lost == 0
    assert all(c.delivered == c.offered > 0 for c in summary.cameras.values())
    with pytest.raises(urllib.error.URLError):  # the endpoint went with the service
        urllib.request.urlopen(url + "/healthz", timeout=2)


def test_healthz_turns_unhealthy_when_cameras_fail_and_healthy_after_a_reload(
        folder: Path, baseline: None) -> None:
    good = camera("a", realtime=True, loop=True)
    bad = camera("gone1", "missing-1.mp4") + camera("gone2", "missing-2.mp4")
    failing = load_config(write_config(folder, good, bad, extra="[metrics]\nport = 0\n"))
    fixed = load_config(write_config(folder, good, extra="[metrics]\nport = 0\n",
                                     name="fixed.toml"))

    async def main() -> tuple[tuple[int, str], xs.service.Reload, tuple[int, str]]:
        async with xs.Service(failing) as service:
            run = asyncio.ensure_future(service.run())
            deadline = time.monotonic() + 10
            while (before := await asyncio.to_thread(scrape, service, "/healthz"))[0] == 200:
                assert time.monotonic() < deadline, before
                await asyncio.sleep(0.05)
            reload = await service.reload(fixed)
            after = await asyncio.to_thread(scrape, service, "/healthz")
            service.stop()
            await run
            return before, reload, after

    (status, body), reload, (status_after, body_after) = asyncio.run(main())
    assert status == 503
    said = json.loads(body)
    assert said["healthy"] is False and set(said["failing_cameras"]) == {"gone1", "gone2"}
    assert "2 of 3 cameras failing" in said["reasons"][0]
    assert reload.removed == ("gone1", "gone2") and not reload.added and not reload.ignored
    assert status_after == 200 and json.loads(body_after)["cameras"] == 1


def test_reload_adds_removes_and_restarts_cameras_while_others_keep_streaming(
        folder: Path, tmp_path: Path, baseline: None) -> None:
    out = tmp_path / "results.jsonl"
    sink = f'[[sinks]]\nkind = "jsonl"\npath = "{out}"\n'
    keep = camera("keep", "a.mp4", realtime=True, loop=True)
    before = load_config(write_config(folder, keep, camera("old", "b.mp4", realtime=True,
                                                           loop=True),
                                      camera("changes", "c.mp4", realtime=True, loop=True),
                                      extra=sink))
    after = load_config(write_config(folder, keep, camera("changes", "b.mp4", realtime=True,
                                                          loop=True),
                                     camera("new", "c.mp4"), extra=sink + "[health]\n"
                                     "stuck_after = 5\n", name="after.toml"))
    events: list[tuple[str, str]] = []

    async def main() -> tuple[xs.service.Reload, xs.ServiceSummary]:
        async with xs.Service(before, on_event=lambda e: events.append((e.camera, e.kind))
                              ) as service:
            run = asyncio.ensure_future(service.run())
            await asyncio.sleep(0.5)
            reload = await service.reload(after)
            assert service.config.cameras == after.cameras
            await asyncio.sleep(0.5)
            service.stop()
            return reload, await run

    reload, summary = asyncio.run(main())
    assert (reload.added, reload.removed, reload.restarted) == (("new",), ("old",),
                                                                ("changes",))
    assert reload.ignored == ("health",)
    frames = lines_by_camera(out)
    assert frames["keep"] == list(range(len(frames["keep"]))), "keep never missed a frame"
    assert frames["new"] == list(range(9))
    restarted = frames["changes"]
    second_run = restarted.index(0, 1)  # its frames start again from 0 after the restart
    assert restarted[second_run:] == list(range(len(restarted) - second_run))
    assert ("old", "removed") in events and ("changes", "removed") in events
    assert summary.cameras["old"].state == "removed"
    assert summary.cameras["keep"].lost == 0 and summary.cameras["new"].lost == 0
    # What a removal or restart cut off in flight is counted, never silently gone.
    for name in ("old", "changes"):
        c = summary.cameras[name]
        assert c.delivered + c.lost + c.dropped == c.offered


# -- the engine-stuck rule --------------------------------------------------------------------
def _camera(name: str, *, offered: int, frames: int, state: str = "running"
            ) -> xs.CameraStatistics:
    window = xs.LatencySummary.of([])
    return xs.CameraStatistics(camera=name, state=state, frames=frames,  # type: ignore[arg-type]
                               offered=offered, drops=0, reconnects=0, latency=window,
                               source=None)


def _stats(*cameras: xs.CameraStatistics) -> xs.MultiStatistics:
    return xs.MultiStatistics(frames=0, batches=0, full_batches=0, timed_out_batches=0,
                              batch_sizes={}, engine=xs.LatencySummary.of([]), max_batch=4,
                              max_wait=0.01, cameras={c.camera: c for c in cameras}, gpu=())


def test_the_engine_is_stuck_when_frames_wait_past_stuck_after_without_a_result() -> None:
    config = HealthConfig(failing_fraction=0.5, stuck_after=2.0)
    waiting = _stats(_camera("a", offered=10, frames=7), _camera("b", offered=5, frames=5))
    assert assess(waiting, idle=1.0, config=config).healthy
    stuck = assess(waiting, idle=2.5, config=config)
    assert not stuck.healthy and stuck.waiting == 3
    assert stuck.reasons == ("engine stuck: 3 frames waiting and no result for 2.5 s "
                             "(threshold 2 s)",)
    idle_but_nothing_waiting = _stats(_camera("a", offered=10, frames=10))
    assert assess(idle_but_nothing_waiting, idle=60.0, config=config).healthy
    half_failed = _stats(_camera("a", offered=1, frames=1, state="failed"),
                         _camera("b", offered=1, frames=1))
    assert assess(half_failed, idle=0.0, config=config).healthy  # not above 50%
    assert not assess(half_failed, idle=0.0,
                      config=HealthConfig(failing_fraction=0.4)).healthy


# -- cancellation -------------------------------------------------------------------------
def test_cancelling_run_then_leaving_releases_everything(folder: Path, baseline: None) -> None:
    config = load_config(write_config(folder, camera("a", realtime=True, loop=True),
                                      camera("b", realtime=True, loop=True),
                                      extra=f'[[sinks]]\nkind = "callback"\n'
                                            f'target = "{__name__}:record"\n'
                                            "[metrics]\nport = 0\n"))

    async def main() -> None:
        service = xs.Service(config)
        async with service:
            run = asyncio.ensure_future(service.run())
            await asyncio.sleep(0.3)
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
        assert service.closed
        await service.aclose()  # idempotent
        with pytest.raises(xs.ClosedResourceError):
            await service.run()

    asyncio.run(main())


def test_cancelling_the_start_releases_what_it_opened(folder: Path, baseline: None) -> None:
    config = load_config(write_config(folder, camera("a", realtime=True, loop=True),
                                      extra="[metrics]\nport = 0\n"))

    async def main() -> None:
        service = xs.Service(config)
        start = asyncio.ensure_future(service.start())
        await asyncio.sleep(0)  # inside the model load
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        assert service.closed

    asyncio.run(main())
