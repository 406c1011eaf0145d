"""``Service``: a :class:`ServiceConfig` run through one ``engine.stream_many`` into its sinks,
with Prometheus metrics and a health check. What ``xinfer-stream serve`` runs, and what a
program that embeds the service calls::

    async with xs.Service(xs.load_config("serve.toml")) as service:
        summary = await service.run()        # until service.stop() (the CLI: SIGINT, SIGTERM)

Ownership: the service owns, in the order it opens them, the sinks, the loaded engine, the
multi-camera stream and the metrics server; :meth:`aclose` (``async with``) releases them in
the reverse order, also on a failed start and when cancelled. :meth:`run` is the one consumer
of the stream: each Result is observed (latency histogram), counted per camera and handed to
the sinks (``_sinks.SinkFeeder``); each CameraEvent updates the camera's state.

Stopping: :meth:`stop` asks for a clean stop. The stream is drained
(``MultiStream.drain``): no new frame is taken, every frame already taken is inferred and
handed to the sinks, and the sinks are flushed. If that takes longer than ``drain_timeout``
seconds (an engine that hangs), the rest is abandoned and counted. :meth:`run` returns a
:class:`ServiceSummary` saying, per camera, how many results reached the sinks and how many
frames were lost in flight (taken, neither delivered nor dropped by policy).

On Ray (``Service(config, ray=ADDRESS)``, ``xinfer-stream serve CONFIG --ray ADDRESS``): the
cameras run on a fleet of Ray actors (service/_fleet.py, docs/FLEET.md) instead of one local
stream; the sinks, metrics and health stay here, fed by the fleet's results and its merged
statistics, and the fleet's outages and actor events reach ``on_event`` with the cameras'.

Reloading: :meth:`reload` applies a new config's cameras while the others keep running:
cameras no longer listed are removed, new ones added, changed ones removed and added again
(their results in flight at that moment are counted as lost). Other sections need a restart;
the :class:`Reload` it returns names those that differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .._errors import ClosedResourceError
from .._files import sha256_file
from ..runtime import CameraEvent, CameraStatistics, MultiStatistics, MultiStream, Result
from ._config import CameraConfig, ServiceConfig
from ._fleet import ActorEvent, CameraOutage, Fleet
from ._health import Health, assess
from ._metrics import MetricsServer, ServiceMetrics
from ._sinks import SinkFeeder, SinkStatistics, open_sinks

__all__ = ["CameraSummary", "Reload", "Service", "ServiceSummary"]

_SECTIONS = ("model", "batching", "postprocess", "sinks", "health", "metrics")
ServiceState = Literal["new", "starting", "running", "closed"]
Ended = Literal["stopped", "idle", "drain timed out"]


@dataclass(frozen=True)
class CameraSummary:
    """One camera over a service's run (all its incarnations, when reloads restarted it):
    ``delivered``: results handed to the sinks; ``offered``: frames the stream took from it;
    ``dropped``: frames policy ``latest`` replaced; ``lost``: frames taken and neither
    delivered nor dropped (in flight when it was removed or restarted, or when a drain timed
    out); ``state``: its last state (``"removed"`` once a reload took it out)."""

    camera: str
    delivered: int
    offered: int
    dropped: int
    lost: int
    state: str


@dataclass(frozen=True)
class ServiceSummary:
    """What a :meth:`Service.run` did: ``cameras`` by name, ``sinks`` (results each took and
    failed on), ``elapsed`` seconds, and how it ``ended``: ``"stopped"`` (:meth:`Service.stop`,
    drained), ``"idle"`` (``run(until_idle=True)``: every camera ended) or ``"drain timed
    out"``."""

    cameras: Mapping[str, CameraSummary]
    sinks: tuple[SinkStatistics, ...]
    elapsed: float
    ended: Ended

    @property
    def delivered(self) -> int:
        return sum(c.delivered for c in self.cameras.values())

    @property
    def lost(self) -> int:
        return sum(c.lost for c in self.cameras.values())

    @property
    def dropped(self) -> int:
        return sum(c.dropped for c in self.cameras.values())


@dataclass(frozen=True)
class Reload:
    """What :meth:`Service.reload` did: cameras ``added``, ``removed`` and ``restarted``
    (changed); ``ignored``: config sections that differ but apply only on a restart."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    restarted: tuple[str, ...]
    ignored: tuple[str, ...]


class Service:
    """A config run as a service (see the module docstring). ``drain_timeout``: seconds a
    clean stop may take to deliver the frames in flight. ``on_event``: called on the event
    loop with each :class:`~xinfer_stream.CameraEvent` (opened, ended, failed, removed), and
    on Ray each :class:`CameraOutage` and :class:`ActorEvent`, e.g. to log it; it must not
    block. ``ray``: run the cameras on a fleet of Ray actors at this address (``"auto"``,
    ``"HOST:PORT"``, ``"ray://HOST:PORT"``; see :func:`open_fleet`)."""

    def __init__(self, config: ServiceConfig, *, drain_timeout: float = 10.0,
                 on_event: Callable[[CameraEvent | CameraOutage | ActorEvent], object]
                 | None = None, ray: str | None = None) -> None:
        if not drain_timeout > 0:
            raise ValueError(f"drain_timeout must be positive seconds, got {drain_timeout!r}")
        self._config = config
        self._drain_timeout = drain_timeout
        self._on_event_hook = on_event
        self._ray = ray
        self._state: ServiceState = "new"
        self._stack = contextlib.AsyncExitStack()
        self._stream: MultiStream | Fleet | None = None
        self._feeder = SinkFeeder([])
        self._metrics: ServiceMetrics | None = None
        self._server: MetricsServer | None = None
        self._stop: asyncio.Event | None = None
        self._stop_reason: Ended = "stopped"
        self._started_at = time.monotonic()
        self._last_result = time.monotonic()
        self._delivered: dict[str, int] = {}
        self._retired: dict[str, list[CameraStatistics]] = {}  # removed incarnations
        self._summary: ServiceSummary | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the sinks, load the model, start the stream with the config's cameras and the
        metrics server. On any failure, what was opened is closed again."""
        from ..runtime import load

        if self._state != "new":
            raise ClosedResourceError(f"this service is {self._state}; make a new Service")
        self._state = "starting"
        config = self._config
        stack = self._stack
        try:
            self._feeder = SinkFeeder(open_sinks(config.sinks, config_file=config.source),
                                      on_written=self._count_sink)
            stack.push_async_callback(asyncio.to_thread, self._feeder.close)
            model = config.model
            if self._ray is None:
                engine = await stack.enter_async_context(load(
                    model.path, preprocess=model.preprocess, backend=model.backend,
                    threads=model.threads, plugins=model.plugins))
                batching = config.batching
                stream: MultiStream | Fleet = engine.stream_many(
                    {}, max_batch=batching.max_batch, max_wait=batching.max_wait,
                    queue_size=batching.queue_size, decode=batching.decode,
                    postprocess=config.postprocess.build(), end_when_idle=False)
                backend, device = engine.backend.kind, str(engine.backend.device)
                gpu_memory = _gpu_memory(engine.backend)
            else:
                from ._fleet import FleetOptions, open_fleet

                options = FleetOptions.from_config(config, postprocess=config.postprocess.build())
                stream = open_fleet(options, {}, address=self._ray)
                backend, device, gpu_memory = f"ray ({model.backend})", "fleet", None
            self._stream = await stack.enter_async_context(stream)
            for camera in config.cameras:
                self._add(camera.name, camera)
            self._metrics = ServiceMetrics(
                statistics=self._statistics_or_none, gpu_memory=gpu_memory,
                identity={"model": model.path.name, "backend": backend, "device": device,
                          "version": _version(),
                          "sha256": await asyncio.to_thread(sha256_file, model.path)})
            if config.metrics.port is not None:
                self._server = MetricsServer(self._metrics.registry, self.health,
                                             host=config.metrics.host, port=config.metrics.port)
                stack.push_async_callback(asyncio.to_thread, self._server.close)
        except BaseException:
            self._state = "closed"
            await self._close_stack()
            raise
        self._stop = asyncio.Event()
        self._started_at = self._last_result = time.monotonic()
        self._state = "running"

    async def aclose(self) -> None:
        """Stop the metrics server and the stream, release the engine, close the sinks.
        Idempotent; finishes releasing even when the calling task is cancelled."""
        if self._state == "closed":
            return
        self._state = "closed"
        await self._close_stack()

    async def _close_stack(self) -> None:
        closing = asyncio.ensure_future(self._stack.aclose())
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            await closing
            raise

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    # -- running ------------------------------------------------------------------------------
    async def run(self, *, until_idle: bool = False) -> ServiceSummary:
        """Deliver results to the sinks until :meth:`stop` (or, ``until_idle``, until every
        camera has ended or failed), then drain; returns the run's summary. An engine failure
        (the one model every camera shares) is raised."""
        stream = self._running_stream()
        if until_idle and self._all_done():
            self._request_stop("idle")
        consume = asyncio.ensure_future(self._consume(stream, until_idle))
        stopper = asyncio.ensure_future(self._stop_when_asked(stream, consume))
        timed_out = False
        try:
            await consume
        except asyncio.CancelledError:
            if not (stopper.done() and stopper.result()):
                raise  # our caller cancelled run(), not a drain that timed out
            timed_out = True
        finally:
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
        await self._feeder.flush()
        self._summary = self._summarise("drain timed out" if timed_out else self._stop_reason)
        return self._summary

    def stop(self) -> None:
        """Ask :meth:`run` for a clean stop (from the event loop's thread: a signal handler
        installed with ``loop.add_signal_handler``, or a task). Idempotent."""
        self._request_stop("stopped")

    def _request_stop(self, reason: Ended) -> None:
        if self._stop is not None and not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    async def _consume(self, stream: MultiStream | Fleet, until_idle: bool) -> None:
        latency = self._metrics.latency if self._metrics is not None else None
        feeder = self._feeder
        delivered = self._delivered
        async for item in stream:
            if isinstance(item, Result):
                self._last_result = time.monotonic()
                if latency is not None:
                    latency.observe(item.latency)
                name = item.camera or ""
                delivered[name] = delivered.get(name, 0) + 1
                await feeder.put(item)
                continue
            self._on_event(item)
            if until_idle and self._all_done():
                self._request_stop("idle")

    async def _stop_when_asked(self, stream: MultiStream | Fleet,
                               consume: asyncio.Future[None]) -> bool:
        """On :meth:`stop`: drain, give the frames in flight ``drain_timeout`` seconds, then
        cancel the consumer. ``True`` when it had to."""
        assert self._stop is not None
        await self._stop.wait()
        await stream.drain()
        done, _ = await asyncio.wait({consume}, timeout=self._drain_timeout)
        if done:
            return False
        consume.cancel()
        return True

    def _on_event(self, event: CameraEvent | CameraOutage | ActorEvent) -> None:
        if self._on_event_hook is not None:
            self._on_event_hook(event)

    def _all_done(self) -> bool:
        """Every camera has ended or failed (none left counts too)."""
        cameras = self._running_stream().statistics().cameras.values()
        return all(c.state in ("ended", "failed") for c in cameras)

    # -- cameras ------------------------------------------------------------------------------
    def _add(self, name: str, camera: CameraConfig) -> None:
        """Add a camera, its results carrying their frames only if a video sink takes it
        (converting a frame to RGB costs milliseconds: not for cameras no one draws)."""
        assert self._stream is not None
        images = any(s.kind == "video" and s.takes(name) for s in self._config.sinks)
        self._stream.add(name, dataclasses.replace(camera.camera(), images=images))

    async def reload(self, config: ServiceConfig) -> Reload:
        """Apply ``config``'s cameras (see the module docstring); the other cameras keep
        streaming. Sections other than ``cameras`` that differ are listed in
        ``Reload.ignored``, not applied."""
        stream = self._running_stream()
        old = {c.name: c for c in self._config.cameras}
        new = {c.name: c for c in config.cameras}
        removed = tuple(n for n in old if n not in new)
        added = tuple(n for n in new if n not in old)
        restarted = tuple(n for n in new if n in old and new[n] != old[n])
        for name in removed + restarted:
            last = stream.statistics().cameras.get(name)
            if last is not None:
                self._retired.setdefault(name, []).append(last)
            await stream.remove(name)
        for name in restarted + added:
            self._add(name, new[name])
        ignored = tuple(s for s in _SECTIONS if getattr(config, s) != getattr(self._config, s))
        self._config = dataclasses.replace(self._config, cameras=config.cameras)
        return Reload(added=added, removed=removed, restarted=restarted, ignored=ignored)

    # -- what it reports ----------------------------------------------------------------------
    @property
    def config(self) -> ServiceConfig:
        """The config running now (its cameras as the last reload left them)."""
        return self._config

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port`` of ``/metrics`` and ``/healthz``; ``None`` without a port."""
        return self._server.url if self._server is not None else None

    @property
    def metrics(self) -> ServiceMetrics:
        """The service's metrics (``metrics.registry``: its own Prometheus registry)."""
        if self._metrics is None:
            raise ClosedResourceError("the service has not started; use 'async with Service()'")
        return self._metrics

    def statistics(self) -> MultiStatistics:
        """The stream's statistics now (any thread)."""
        return self._running_stream().statistics()

    def health(self) -> Health:
        """The health rule (``_health.assess``) applied now (any thread)."""
        stats = self._statistics_or_none()
        if stats is None:
            raise ClosedResourceError("the service has not started")
        return assess(stats, idle=time.monotonic() - self._last_result,
                      config=self._config.health)

    def _statistics_or_none(self) -> MultiStatistics | None:
        stream = self._stream  # a closed stream still reports its last counts
        return stream.statistics() if stream is not None else None

    def _running_stream(self) -> MultiStream | Fleet:
        if self._state != "running" or self._stream is None:
            raise ClosedResourceError(f"this service is {self._state}; use it inside "
                                      "'async with Service(config)'")
        return self._stream

    def _count_sink(self, sink: Any, written: int, failed: int) -> None:
        if self._metrics is not None:
            self._metrics.sink_written(sink.name, written, failed)

    def _summarise(self, ended: Ended) -> ServiceSummary:
        current = self._running_stream().statistics().cameras
        names = list(dict.fromkeys([*self._retired, *current, *self._delivered]))
        cameras = {}
        for name in names:
            runs = [*self._retired.get(name, []), *([current[name]] if name in current else [])]
            offered = sum(c.offered for c in runs)
            dropped = sum(c.drops for c in runs)
            batcher_drops = sum(c.drops - (c.source.drops if c.source else 0) for c in runs)
            delivered = self._delivered.get(name, 0)
            cameras[name] = CameraSummary(
                camera=name, delivered=delivered, offered=offered, dropped=dropped,
                lost=max(0, offered - batcher_drops - delivered),
                state=current[name].state if name in current else "removed")
        return ServiceSummary(cameras=cameras, sinks=self._feeder.statistics(),
                              elapsed=time.monotonic() - self._started_at, ended=ended)


def _gpu_memory(backend: Any) -> Any:
    """Bytes in use on ``backend``'s GPU, as a callable (``None`` for CPU backends)."""
    if backend.device != "cuda":
        return None
    from ..cuda import memory_info

    ordinal = int(getattr(backend, "ordinal", 0))

    def used() -> int:
        free, total = memory_info(ordinal)
        return total - free

    return used


def _version() -> str:
    from .. import __version__

    return __version__
