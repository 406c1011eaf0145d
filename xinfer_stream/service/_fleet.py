"""A fleet of Ray actors running one model over many cameras, moving cameras off actors that die.

The only module of xinfer-stream that imports Ray (lazily, inside :func:`open_fleet`):
``pip install 'xinfer-stream[ray]'``. The actor's side is service/_fleet_actor.py. Shape::

    driver (your process: open_fleet)                      Ray actor "actor-k" (one a GPU, or
      Coordinator: camera -> actor (service/_coordinator)   CPU actors on ONNX Runtime)
      a watch task per actor ── poll(256, 0.2 s, 20 ms) ─►   one loaded engine, one
        │   results in batches, each camera's in order  ◄──   engine.stream_many(end_when_idle=
        │                                                     False) over its cameras; items wait
        ▼                                                     in a bounded queue (backpressure)
      one bounded queue ─► ``async for item in fleet`` (your sinks run here, on the driver)

Fail-over: a watch task's poll that raises (the actor's process died, its node was lost, its
stream failed) or does not answer within 10 s marks the actor lost: the coordinator moves its
cameras to the least loaded survivors, which open them at once; Ray restarts the actor
(``max_restarts``), the watch task calls ``start`` on it until it answers, and it joins empty,
takes any cameras that were waiting for room and then a :meth:`Coordinator.rebalance`. Each
camera that moved yields a :class:`CameraOutage` just before its first result from its new actor
(from its last result before the move to that first one after). A moved camera's source opens
afresh, so its ``frame_index`` starts again from 0 after an outage; between outages each
camera's results come in frame order, and nothing else of it is lost.

Results travel from actor to driver by the driver's poll (a Ray call returning a list, at most
one every 20 ms while results trickle in, at once while they come faster than a poll carries):
one caller per actor keeps each camera's order without sequence numbers, and the actor's queue
bounds memory on both sides (a slow consumer holds up the polls, the polls hold up the actor's
stream, the stream holds up its cameras).

Statistics: each watch task asks its actor for its ``MultiStatistics`` once a second;
:meth:`Fleet.statistics` merges them into one (what a service's metrics and health read, as
they read a local ``MultiStream``'s), so one metrics endpoint on the driver covers the whole
fleet (see docs/FLEET.md). The fleet answers the calls a :class:`~xinfer_stream.Service` makes
of its stream (``add``, ``remove``, ``statistics``, ``drain``, ``async for``), which is how
``Service(config, ray=...)`` runs on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .._errors import ClosedResourceError, FleetError
from .._lifecycle import NoPublicConstructor, leak_net
from ..runtime import (Camera, CameraEvent, CameraStatistics, LatencySummary, MultiStatistics,
                       Result)
from ._coordinator import Coordinator, Move
from ._fleet_actor import CameraActor

if TYPE_CHECKING:
    from ..preprocess import Preprocess
    from ..runtime._batcher import CameraState
    from ._config import ServiceConfig

__all__ = ["ActorEvent", "ActorStatistics", "CameraOutage", "Fleet", "FleetItem",
           "FleetOptions", "FleetStatistics", "open_fleet"]

_T = TypeVar("_T")

_POLL_ITEMS = 256       # items a poll brings back at most
_POLL_WAIT = 0.2        # seconds a poll waits for a first item (and so the health check's period)
# Seconds a poll gathers items after its first: a poll costs the actor's process about a
# millisecond of CPU whatever it carries (tools/bench_fleet.py --polls), so an actor answering
# every batch as it came paid that 100+ times a second; this caps it at 50, for up to 20 ms
# more latency a result.
_POLL_GATHER = 0.02
_CALL_TIMEOUT = 10.0    # an actor that does not answer a call within this is treated as lost
_START_TIMEOUT = 120.0  # loading a model (a TensorRT engine, a torch compile) may take a while
_RETRY_START = 1.0      # seconds between attempts to start an actor Ray is restarting
_CONNECT_TIMEOUT = 5.0  # reaching a Ray cluster's address
_DRIVER_QUEUE = 1024    # items the driver keeps for your ``async for``


# -- what the fleet runs, and what it says ----------------------------------------------------
@dataclass(frozen=True)
class FleetOptions:
    """What every actor of a fleet runs.

    ``model``: a path every node can read (a shared filesystem, or the same path on each).
    ``gpu``: each actor takes one GPU (``num_gpus=1``) and loads the model with ``backend``;
    without, actors run on ``cpus_per_actor`` CPUs with ONNX Runtime (``threads`` intra-op
    threads, default ``cpus_per_actor``); ``None``: GPUs if the Ray cluster has any.
    ``actors``: how many (``None``: one per GPU of the cluster, or where it runs on CPUs, one per
    ``cpus_per_actor`` of its CPUs). ``capacity``: the most cameras an actor runs (``None``: no
    limit; cameras beyond every actor's capacity wait). ``max_restarts``: how often Ray restarts
    a dead actor (-1: always). ``preprocess``, ``plugins``, ``postprocess``, ``max_batch``,
    ``max_wait``, ``queue_size``, ``decode``: as for ``load`` and ``engine.stream_many``
    (``postprocess`` must pickle: ``classify(...)``, ``detect(...)`` or a module-level function).
    :meth:`from_config` makes them from a service config.
    """

    model: str | os.PathLike[str]
    actors: int | None = None
    gpu: bool | None = None
    backend: str = "auto"
    cpus_per_actor: int = 1
    threads: int | None = None
    capacity: int | None = None
    max_restarts: int = -1
    preprocess: Preprocess | None = None
    plugins: tuple[str | os.PathLike[str], ...] = ()
    postprocess: Any = None
    max_batch: int | None = None
    max_wait: float = 0.010
    queue_size: int = 2
    decode: str = "cpu"

    @classmethod
    def from_config(cls, config: ServiceConfig, *, postprocess: Any = None,
                    actors: int | None = None, gpu: bool | None = None,
                    cpus_per_actor: int = 1, capacity: int | None = None,
                    max_restarts: int = -1) -> FleetOptions:
        """The options for a service config: its model (path, backend, preprocess, threads,
        plugins) and batching; ``postprocess`` as the service builds it from
        ``config.postprocess``; the rest as in the class's docstring."""
        model, batching = config.model, config.batching
        return cls(model.path, actors=actors, gpu=gpu, backend=model.backend,
                   cpus_per_actor=cpus_per_actor, threads=model.threads, capacity=capacity,
                   max_restarts=max_restarts, preprocess=model.preprocess, plugins=model.plugins,
                   postprocess=postprocess, max_batch=batching.max_batch,
                   max_wait=batching.max_wait, queue_size=batching.queue_size,
                   decode=batching.decode)

    def __post_init__(self) -> None:
        if self.actors is not None and (isinstance(self.actors, bool)
                                        or not isinstance(self.actors, int) or self.actors < 1):
            raise ValueError(f"actors must be a positive int or None, got {self.actors!r}")
        if not isinstance(self.cpus_per_actor, int) or self.cpus_per_actor < 1:
            raise ValueError(f"cpus_per_actor must be a positive int, got {self.cpus_per_actor!r}")
        if self.capacity is not None and (not isinstance(self.capacity, int) or self.capacity < 1):
            raise ValueError(f"capacity must be a positive int or None, got {self.capacity!r}")
        if not isinstance(self.max_restarts, int) or self.max_restarts < -1:
            raise ValueError(f"max_restarts must be -1 (always) or >= 0, got {self.max_restarts!r}")


@dataclass(frozen=True)
class ActorEvent:
    """Something that happened to one actor. ``kind``: ``"up"`` (started, or restarted by Ray,
    and taking cameras; ``pid`` and ``node`` say where), ``"lost"`` (its poll failed or timed
    out: ``error`` says how; its cameras were moved) or ``"gone"`` (Ray will not restart it)."""

    actor: str
    kind: Literal["up", "lost", "gone"]
    error: BaseException | None = None
    pid: int | None = None
    node: str | None = None


@dataclass(frozen=True)
class CameraOutage:
    """A camera's gap in results, yielded just before its first result after the gap.

    ``source``: the actor it ran on; ``target``: the actor its results come from now;
    ``reason``: ``"actor lost"`` or ``"rebalanced"``; ``last_result``: wall time
    (``time.time()``, as the driver received it) of its last result before the move, ``None`` if
    it had none; ``moved``: when the driver moved it; ``resumed``: when its first result after
    arrived. ``seconds``: the gap, from ``last_result`` (or ``moved``) to ``resumed``. A camera
    moved again before its first result (its new actor lost, or a rebalance) is still in the
    same outage: ``source``, ``reason`` and ``moved`` are those of the move that began it.
    """

    camera: str
    source: str
    target: str
    reason: Literal["actor lost", "rebalanced"]
    last_result: float | None
    moved: float
    resumed: float

    @property
    def seconds(self) -> float:
        return self.resumed - (self.last_result if self.last_result is not None else self.moved)


FleetItem = Result | CameraEvent | CameraOutage | ActorEvent


@dataclass(frozen=True)
class ActorStatistics:
    """One actor: ``state`` (``"starting"``, ``"up"``, ``"lost"`` while Ray restarts it,
    ``"gone"``, ``"drained"`` after :meth:`Fleet.drain`), ``starts`` (times it came up: restarts + 1), ``cameras`` (placed on it), and its
    stream's statistics (``None`` unless it is up and answered)."""

    actor: str
    state: Literal["starting", "up", "lost", "gone", "drained"]
    starts: int
    cameras: tuple[str, ...]
    stream: MultiStatistics | None


@dataclass(frozen=True)
class FleetStatistics:
    """A snapshot of the fleet: per actor; cameras waiting for room; outages per camera."""

    actors: Mapping[str, ActorStatistics]
    waiting: tuple[str, ...]
    outages: Mapping[str, int]


# -- the driver -------------------------------------------------------------------------------
class _Slot:
    """The driver's view of one actor. ``task`` (its watch task) is the one writer of ``state``."""

    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self.handle = handle
        self.state: Literal["starting", "up", "lost", "gone", "drained"] = "starting"
        self.starts = 0
        self.task: asyncio.Task[None] | None = None


@dataclass
class _Gap:
    source: str
    reason: Literal["actor lost", "rebalanced"]
    last_result: float | None
    moved: float


_END = object()  # what the driver's queue holds once the fleet has failed


class Fleet(metaclass=NoPublicConstructor):
    """Cameras over Ray actors, with fail-over. Obtain one from :func:`open_fleet`.

    An async context manager and async iterator of :class:`FleetItem`: each camera's
    :class:`Result`\\ s and :class:`CameraEvent`\\ s as ``engine.stream_many`` yields them, a
    :class:`CameraOutage` before a moved camera's first result, and :class:`ActorEvent`\\ s.
    :meth:`add` and :meth:`remove` change the cameras while it runs. ``aclose()`` (also on
    leaving ``async with``) closes every actor's stream and engine, kills the actors, and shuts
    Ray down if :func:`open_fleet` started it; also when cancelled. Iteration ends with a
    :class:`FleetError` once no actor is left (each one gone: no restarts left).
    """

    _made_by = "open_fleet(options, cameras)"

    def __init__(self, ray: Any, options: FleetOptions, cameras: dict[str, Camera],
                 address: str | None) -> None:
        self._ray = ray
        self._options = options
        self._cameras = cameras
        self._address = address
        self._owns_ray = False
        self._coordinator = Coordinator()
        self._slots: dict[str, _Slot] = {}
        self._gaps: dict[str, _Gap] = {}
        self._last: dict[str, float] = {}       # camera -> time of its last result
        self._outages: dict[str, int] = {}
        # Each add of a camera gets an id; items wait for the consumer tagged with their
        # camera's id, and those of a camera removed since (or removed and added again) are
        # skipped on the way out: remove() promises no more of it, as MultiStream.remove does.
        self._ids = {name: i for i, name in enumerate(cameras)}
        self._next_id = len(cameras)
        self._out: asyncio.Queue[Any] = asyncio.Queue(_DRIVER_QUEUE)
        self._failure: BaseException | None = None
        self._state: Literal["new", "running", "closed"] = "new"
        self._finalizer: Any = None
        self._draining = False
        self._ended = False  # the consumer has reached _END
        self._tasks: set[asyncio.Task[None]] = set()  # add()'s remote calls in flight
        # For statistics(): each actor's stream statistics (refreshed by its watch task every
        # second) and each camera's state as its latest event says (fresher than those).
        self._stats: dict[str, tuple[float, MultiStatistics]] = {}
        self._camera_state: dict[str, CameraState] = {}

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> Fleet:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _start(self) -> None:
        """Connect to Ray, start every actor (each loads the model), then spread the cameras:
        all actors join before any camera is placed, so the first one up does not take them
        all."""
        ray = self._ray
        if not ray.is_initialized():
            _connect(ray, self._address)
            self._owns_ray = True
        self._state = "running"
        handles: list[Any] = []
        self._finalizer = leak_net(self, "Fleet (use 'async with open_fleet(...)')",
                                   _release, ray, handles, self._owns_ray)
        self._options = options = _resolve(self._options, ray.cluster_resources())
        assert options.actors is not None
        remote = _actor_class(ray).options(
            num_cpus=options.cpus_per_actor, num_gpus=1 if options.gpu else 0,
            max_restarts=options.max_restarts, max_task_retries=0,
            scheduling_strategy="SPREAD")  # over nodes: a node lost takes few actors with it
        for i in range(options.actors):
            name = f"actor-{i}"
            handles.append(remote.remote(options))
            self._slots[name] = _Slot(name, handles[-1])
        started = await asyncio.gather(*(self._call_start(slot) for slot in self._slots.values()),
                                       return_exceptions=True)
        for slot, outcome in zip(self._slots.values(), started):
            if isinstance(outcome, BaseException):
                raise FleetError(f"{slot.name} of the fleet did not start: {outcome}") from outcome
            await self._up(slot, outcome)
        await self._carry_out(self._coordinator.assign(self._cameras), reason=None)
        for slot in self._slots.values():
            slot.task = asyncio.create_task(self._watch(slot), name=f"xinfer-fleet:{slot.name}")

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    async def aclose(self) -> None:
        """Stop watching, close every actor's stream and engine, kill the actors, shut Ray down
        if we started it. Idempotent; finishes even when the calling task is cancelled."""
        if self._state == "closed":
            return
        self._state = "closed"
        tasks = [s.task for s in self._slots.values() if s.task is not None] + list(self._tasks)
        for task in tasks:
            task.cancel()
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
            closing = [s.handle.close.remote() for s in self._slots.values() if s.state == "up"]
            with contextlib.suppress(TimeoutError):  # those that hang are killed below
                await _within(asyncio.gather(*closing, return_exceptions=True), _CALL_TIMEOUT)
        finally:
            if self._finalizer is not None:
                self._finalizer.detach()
            _release(self._ray, [s.handle for s in self._slots.values()], self._owns_ray)

    # -- iteration ----------------------------------------------------------------------------
    def __aiter__(self) -> Fleet:
        return self

    async def __anext__(self) -> FleetItem:
        if self._state == "closed":
            raise ClosedResourceError("this fleet is closed")
        if self._state == "new":
            raise ClosedResourceError("use 'async with open_fleet(...) as fleet' first")
        while True:
            if self._ended:  # and so on every later call
                assert self._failure is not None
                raise self._failure
            entry = await self._out.get()
            if entry is _END:
                self._ended = True
                continue
            camera, ident, item = entry
            if ident is None or self._ids.get(camera) == ident:
                return item  # type: ignore[no-any-return]

    # -- cameras ------------------------------------------------------------------------------
    def add(self, name: str, camera: Camera | Any) -> None:
        """Add a camera (a :class:`Camera`, or a source as ``engine.stream`` takes it) on the
        least loaded actor with room (or waiting for room); its actor opens it meanwhile, and a
        :class:`CameraEvent` says ``"opened"`` or ``"failed"``, as ``MultiStream.add``.
        ``ValueError`` for a name in use; :class:`ClosedResourceError` once draining."""
        self._check_running()
        if self._draining:
            raise ClosedResourceError("this fleet is draining: no camera can be added")
        spec = camera if isinstance(camera, Camera) else Camera(camera)
        moves = self._coordinator.assign([name])
        self._cameras[name] = spec
        self._ids[name], self._next_id = self._next_id, self._next_id + 1
        task = asyncio.ensure_future(self._carry_out(moves, reason=None))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def remove(self, name: str) -> None:
        """Stop a camera wherever it runs; no result of it follows, a ``"removed"``
        :class:`CameraEvent` does. ``ValueError`` for an unknown name."""
        self._check_running()
        actor = self._forget(name)
        self._camera_state.pop(name, None)
        if actor is not None:
            with contextlib.suppress(Exception):  # a dead actor has dropped it already
                await self._slots[actor].handle.remove.remote(name)
        await self._emit(CameraEvent(name, "removed"))

    def _forget(self, name: str) -> str | None:
        """Take the camera out of the driver's books; returns the actor it ran on."""
        actor = self._coordinator.remove(name)
        del self._cameras[name], self._ids[name]
        self._gaps.pop(name, None)
        return actor

    def _check_running(self) -> None:
        if self._state != "running":
            raise ClosedResourceError(f"this fleet is {self._state}: cameras change only inside "
                                      "'async with open_fleet(...)'")

    def placement(self) -> dict[str, str]:
        """Every running camera -> the actor it runs on."""
        return self._coordinator.placement()

    async def drain(self) -> None:
        """Take no new frame anywhere, deliver every frame already taken; the iteration ends
        once every actor's stream has (``MultiStream.drain`` on each actor). An actor lost
        meanwhile ends with what it had delivered; its cameras do not move. Idempotent."""
        self._check_running()
        if self._draining:
            return
        self._draining = True
        calls = [s.handle.drain.remote() for s in self._slots.values() if s.state == "up"]
        with contextlib.suppress(TimeoutError):  # those that hang are lost instead
            await _within(asyncio.gather(*calls, return_exceptions=True), _CALL_TIMEOUT)
        if all(s.state in ("gone", "drained") for s in self._slots.values()):
            await self._finish()

    def statistics(self) -> MultiStatistics:
        """The whole fleet as one ``MultiStatistics`` (what a service's metrics and health read),
        from every actor's stream statistics as of the last second: counts summed,
        ``cameras`` merged (each state as the camera's latest event says; a camera its actor
        has not reported yet has zero counts), ``engine`` the slowest actor's (highest p99),
        ``gpu`` every actor's runners."""
        latest = [stats for _, stats in self._stats.values()]
        options = self._options
        batch_sizes: dict[int, int] = {}
        cameras = {}
        for stats in latest:
            for size, count in stats.batch_sizes.items():
                batch_sizes[size] = batch_sizes.get(size, 0) + count
            for name, camera in stats.cameras.items():
                if name in self._cameras:
                    state = self._camera_state.get(name, camera.state)
                    cameras[name] = replace(camera, state=state)
        nothing = LatencySummary.of([])
        for name in self._cameras:
            if name not in cameras:
                cameras[name] = CameraStatistics(
                    camera=name, state=self._camera_state.get(name, "opening"), frames=0,
                    offered=0, drops=0, reconnects=0, latency=nothing, source=None)
        engine = max((s.engine for s in latest if s.engine.count),
                     key=lambda e: e.p99, default=nothing)
        return MultiStatistics(
            frames=sum(s.frames for s in latest), batches=sum(s.batches for s in latest),
            full_batches=sum(s.full_batches for s in latest),
            timed_out_batches=sum(s.timed_out_batches for s in latest),
            batch_sizes=dict(sorted(batch_sizes.items())), engine=engine,
            max_batch=latest[0].max_batch if latest else (options.max_batch or 0),
            max_wait=options.max_wait, cameras=cameras,
            gpu=tuple(g for s in latest for g in s.gpu))

    async def fleet_statistics(self) -> FleetStatistics:
        """Every actor's statistics now (those up answer within 10 s, else ``stream`` is
        None)."""
        slots = list(self._slots.values())

        async def ask(slot: _Slot) -> MultiStatistics | None:
            if slot.state != "up":
                return None
            try:
                stats: MultiStatistics = await _within(slot.handle.statistics.remote(),
                                                       _CALL_TIMEOUT)
            except (TimeoutError, self._ray.exceptions.RayError):
                return None  # its watch task will notice
            return stats

        answers = await asyncio.gather(*(ask(s) for s in slots))
        actors = {s.name: ActorStatistics(
            s.name, s.state, s.starts,
            self._coordinator.cameras_of(s.name) if s.name in self._coordinator.actors else (),
            stream) for s, stream in zip(slots, answers)}
        return FleetStatistics(actors, self._coordinator.waiting, dict(self._outages))

    # -- watching one actor -------------------------------------------------------------------
    async def _watch(self, slot: _Slot) -> None:
        """Poll the actor while it is up; when it is lost, move its cameras and bring it back."""
        errors = self._ray.exceptions
        try:
            while True:
                if slot.state == "lost":
                    if self._draining or not await self._bring_back(slot):
                        break
                try:
                    items, ended = await _within(slot.handle.poll.remote(
                        _POLL_ITEMS, _POLL_WAIT, _POLL_GATHER), _CALL_TIMEOUT)
                except (TimeoutError, errors.RayError) as exc:
                    await self._lost(slot, exc)
                    continue
                for item in items:
                    await self._deliver(slot.name, item)
                if ended:
                    slot.state = "drained"
                    break
                await self._refresh_statistics(slot)
            if all(s.state in ("gone", "drained") or (s.state == "lost" and self._draining)
                   for s in self._slots.values()):
                await self._finish()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - a bug here must end the iteration, loudly
            await self._fail(exc)

    async def _refresh_statistics(self, slot: _Slot) -> None:
        """Ask the actor for its stream's statistics when the last answer is a second old."""
        asked = self._stats.get(slot.name, (0.0, None))[0]
        if time.monotonic() - asked < 1.0:
            return
        with contextlib.suppress(TimeoutError, self._ray.exceptions.RayError):
            stats = await _within(slot.handle.statistics.remote(), _CALL_TIMEOUT)
            self._stats[slot.name] = (time.monotonic(), stats)

    async def _lost(self, slot: _Slot, error: BaseException) -> None:
        slot.state = "lost"
        self._stats.pop(slot.name, None)
        if isinstance(error, TimeoutError):
            # Alive but not answering (a blocked event loop): its cameras are about to run
            # elsewhere, so have Ray replace the process rather than wait for it.
            with contextlib.suppress(Exception):
                self._ray.kill(slot.handle, no_restart=False)
        now = time.time()
        for camera in self._coordinator.cameras_of(slot.name):
            self._gaps.setdefault(camera, _Gap(slot.name, "actor lost", self._last.get(camera), now))
        moves = self._coordinator.actor_lost(slot.name)
        await self._emit(ActorEvent(slot.name, "lost", error))
        if not self._draining:
            await self._carry_out(moves, reason="actor lost")

    async def _bring_back(self, slot: _Slot) -> bool:
        """Start the actor Ray is restarting (one whose stream failed is still running: its
        ``start`` ends that stream first): retry until it answers; False once it is gone for
        good."""
        errors = self._ray.exceptions
        while True:
            try:
                where = await self._call_start(slot)
                break
            except errors.ActorDiedError as exc:  # no restarts left
                slot.state = "gone"
                await self._emit(ActorEvent(slot.name, "gone", exc))
                if all(s.state == "gone" for s in self._slots.values()) and not self._draining:
                    await self._fail(FleetError(
                        "every actor of the fleet is gone (Ray has no restarts left for them); "
                        "raise FleetOptions.max_restarts or fix what kills them"))
                return False
            except (TimeoutError, errors.RayError):
                await asyncio.sleep(_RETRY_START)
        placed = await self._up(slot, where)
        await self._carry_out(placed, reason=None)
        await self._carry_out(self._coordinator.rebalance(), reason="rebalanced")
        return True

    async def _call_start(self, slot: _Slot) -> tuple[int, str]:
        where: tuple[int, str] = await _within(slot.handle.start.remote(), _START_TIMEOUT)
        return where

    async def _up(self, slot: _Slot, where: tuple[int, str]) -> list[Move]:
        """The actor answered ``start``: it joins the coordinator (empty); returns the waiting
        cameras placed on it."""
        slot.state = "up"
        slot.starts += 1
        placed = self._coordinator.actor_joined(slot.name, self._options.capacity)
        await self._emit(ActorEvent(slot.name, "up", pid=where[0], node=where[1]))
        return placed

    async def _carry_out(self, moves: list[Move],
                         reason: Literal["actor lost", "rebalanced"] | None) -> None:
        """Open each moved camera on its new actor (closing it first on its old one when that
        still runs: a rebalance), all at once. A camera its actor refuses (a bad source spec)
        fails as that camera's event."""
        now = time.time()
        if reason == "rebalanced":  # before any await: the gap must be there for its results
            for move in moves:
                if move.source is not None:  # one already open (no result since) goes on
                    self._gaps.setdefault(move.camera, _Gap(move.source, reason,
                                                            self._last.get(move.camera), now))
        await asyncio.gather(*(self._move(move, rebalance=reason == "rebalanced")
                               for move in moves))

    async def _move(self, move: Move, *, rebalance: bool) -> None:
        errors = self._ray.exceptions
        camera = move.camera
        if rebalance and move.source is not None:
            with contextlib.suppress(TimeoutError, errors.RayError):
                await _within(self._slots[move.source].handle.remove.remote(camera),
                              _CALL_TIMEOUT)
        if camera not in self._cameras or self._coordinator.actor_of(camera) != move.target:
            return  # removed, or moved again, meanwhile
        try:
            await _within(self._slots[move.target].handle.add.remote(
                camera, self._cameras[camera]), _CALL_TIMEOUT)
        except (TimeoutError, errors.RayActorError):
            pass  # the target died meanwhile: its watch task moves its cameras again
        except errors.RayTaskError as exc:
            if camera in self._cameras:
                self._forget(camera)
                await self._emit(CameraEvent(camera, "failed", exc.as_instanceof_cause()))

    async def _deliver(self, actor: str, item: Result | CameraEvent) -> None:
        camera = item.camera
        assert camera is not None
        if camera not in self._cameras or self._coordinator.actor_of(camera) != actor:
            return  # left over from before a move or a removal
        if isinstance(item, CameraEvent):
            self._camera_state[camera] = "running" if item.kind == "opened" else item.kind
        if isinstance(item, Result):
            now = time.time()
            gap = self._gaps.pop(camera, None)
            if gap is not None:
                self._outages[camera] = self._outages.get(camera, 0) + 1
                await self._emit(CameraOutage(camera, gap.source, actor, gap.reason,
                                              gap.last_result, gap.moved, now))
            self._last[camera] = now
        await self._emit(item)

    async def _emit(self, item: FleetItem) -> None:
        camera = None if isinstance(item, ActorEvent) else item.camera
        await self._out.put((camera, self._ids.get(camera) if camera is not None else None,
                             item))

    async def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
            await self._out.put(_END)

    async def _finish(self) -> None:
        """Every actor drained (or gone): the iteration ends, with no error."""
        if self._failure is None:
            self._failure = StopAsyncIteration()
            await self._out.put(_END)


def _release(ray: Any, handles: list[Any], owns_ray: bool) -> None:
    """Kill the actors (no restart) and shut Ray down if the fleet started it: ``aclose``'s
    last step, and the leak net's whole job."""
    for handle in handles:
        with contextlib.suppress(Exception):  # already gone: nothing to kill
            ray.kill(handle, no_restart=True)
    if owns_ray:
        ray.shutdown()


async def _within(awaitable: Awaitable[_T], timeout: float) -> _T:
    """``awaitable``'s result, or ``TimeoutError`` after ``timeout`` seconds (the awaitable
    cancelled): every call to an actor goes through here. Not ``asyncio.wait_for``: before
    Python 3.12 it returns the result when the caller is cancelled just as the result arrives,
    and a watch task that lost its cancellation that way polled on forever inside ``aclose``."""
    future = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({future}, timeout=timeout)
    finally:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # retrieved: a cancelled caller drops what it raised
    if not done:
        raise TimeoutError(f"no answer within {timeout:g} s")
    return future.result()


# -- Ray, imported only here ------------------------------------------------------------------
def open_fleet(options: FleetOptions, cameras: Mapping[str, Camera | Any], *,
               address: str | None = None) -> Fleet:
    """A :class:`Fleet` running ``options.model`` over ``cameras`` (name -> :class:`Camera` or a
    source) on Ray actors, to be entered with ``async with``.

    ``address``: where Ray runs. With Ray already initialised in this process (``ray.init``),
    that cluster is used and left running. Else ``None`` starts a local Ray for the fleet's
    life; ``"auto"`` joins the cluster this machine belongs to; ``"HOST:PORT"`` (the head's GCS
    port, 6379 by default) or ``"ray://HOST:PORT"`` (Ray Client) connects there, failing with a
    :class:`FleetError` naming the address if it does not answer within 5 s.
    Raises :class:`FleetError` if Ray is not installed (``pip install 'xinfer-stream[ray]'``).
    """
    ray = _import_ray()
    specs = {name: c if isinstance(c, Camera) else Camera(c) for name, c in cameras.items()}
    return Fleet._create(ray, options, specs, address)


def _resolve(options: FleetOptions, resources: Mapping[str, float]) -> FleetOptions:
    """``gpu`` and ``actors`` settled against the cluster's resources (``ray.cluster_resources``)."""
    gpus = int(resources.get("GPU", 0))
    gpu = gpus > 0 if options.gpu is None else options.gpu
    if gpu and gpus == 0:
        raise FleetError("the fleet asks for GPU actors, but the Ray cluster has no GPU; pass "
                         "gpu=False for CPU actors on ONNX Runtime")
    actors = options.actors or (gpus if gpu else
                                max(1, int(resources.get("CPU", 1)) // options.cpus_per_actor))
    return replace(options, gpu=gpu, actors=actors)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise FleetError("the fleet runs on Ray, which is not installed here: "
                         "pip install 'xinfer-stream[ray]'") from exc
    return ray


def _actor_class(ray: Any) -> Any:
    return ray.remote(CameraActor)


def _connect(ray: Any, address: str | None) -> None:
    """``ray.init`` for ``address``, after checking a remote address answers at all: Ray's own
    connection retries take two minutes and end in ``SystemExit``."""
    if address not in (None, "auto", "local"):
        assert address is not None
        _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError, SystemExit) as exc:
        raise FleetError(f"could not connect to the Ray cluster at {address!r}: {exc}") from exc


def _check_reachable(address: str) -> None:
    target = address.removeprefix("ray://")
    host, colon, port = target.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise FleetError(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT "
                         "(or 'auto' for this machine's cluster)")
    try:
        socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise FleetError(f"cannot reach the Ray cluster at {address!r} ({why} within "
                         f"{_CONNECT_TIMEOUT:.0f} s): start it there with 'ray start --head', "
                         "or check the address") from exc
