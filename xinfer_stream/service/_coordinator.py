"""Which actor runs which camera: the fleet's assignment rule, with no Ray in it.

A :class:`Coordinator` holds actors (each with an optional ``capacity``, the most cameras it may
run) and cameras (each on one actor, or waiting for room). Its rules:

- **Least loaded.** A camera to place goes to the actor with the fewest cameras that has room;
  ties go to the actor whose name sorts first, so the same calls always give the same placement.
- **Sticky.** A camera stays on its actor while that actor lives. :meth:`assign` places only the
  new cameras; :meth:`actor_lost` moves only the lost actor's cameras; :meth:`rebalance` (asked
  for, never implied) moves the fewest cameras that bring every actor to its even share.
- **Nothing is dropped.** A camera that finds no room (every survivor full, or no actor left)
  waits, in order, and is placed first when an actor joins.

Costs: a heap of ``(load, actor)`` with stale entries skipped on the way out, so placing or moving
``c`` cameras over ``a`` actors takes O(c log a). Each call returns the moves it made, for the
caller (the Ray fleet, service/_fleet.py) to carry out; the coordinator itself starts nothing.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Coordinator", "Move"]


@dataclass(frozen=True)
class Move:
    """One camera's change of actor: ``source`` is ``None`` for a camera placed for the first
    time (or out of the waiting list); ``target`` is where it runs now."""

    camera: str
    source: str | None
    target: str


class _Actor:
    __slots__ = ("cameras", "capacity", "name")

    def __init__(self, name: str, capacity: int | None) -> None:
        self.name = name
        self.capacity = capacity
        self.cameras: dict[str, None] = {}  # an ordered set: placement order

    @property
    def load(self) -> int:
        return len(self.cameras)

    @property
    def full(self) -> bool:
        return self.capacity is not None and len(self.cameras) >= self.capacity


class Coordinator:
    """The placement of cameras on actors (see the module's docstring for the rules).

    Not thread-safe: one owner (the fleet's driver task) calls it. Errors: ``ValueError`` for a
    camera or actor name that is already known where a new one is expected, or unknown where a
    known one is expected; ``ValueError`` for a capacity that is not a positive int or ``None``.
    """

    def __init__(self) -> None:
        self._actors: dict[str, _Actor] = {}
        self._where: dict[str, str] = {}          # camera -> its actor
        self._waiting: dict[str, None] = {}       # cameras with no room yet, in arrival order
        self._heap: list[tuple[int, str]] = []    # (load, actor); stale entries skipped

    # -- reading --------------------------------------------------------------------------------
    @property
    def actors(self) -> tuple[str, ...]:
        """Live actors, in the order they joined."""
        return tuple(self._actors)

    @property
    def waiting(self) -> tuple[str, ...]:
        """Cameras with no actor (no room anywhere), in the order they will be placed."""
        return tuple(self._waiting)

    def placement(self) -> dict[str, str]:
        """Every placed camera -> its actor."""
        return dict(self._where)

    def actor_of(self, camera: str) -> str | None:
        """The camera's actor, ``None`` while it waits. ``ValueError`` for an unknown camera."""
        if camera in self._waiting:
            return None
        try:
            return self._where[camera]
        except KeyError:
            raise ValueError(f"no camera named {camera!r} in this fleet") from None

    def cameras_of(self, actor: str) -> tuple[str, ...]:
        """The actor's cameras in the order they were placed on it."""
        return tuple(self._actor(actor).cameras)

    def loads(self) -> dict[str, int]:
        """Cameras per live actor."""
        return {name: a.load for name, a in self._actors.items()}

    # -- actors ---------------------------------------------------------------------------------
    def actor_joined(self, actor: str, capacity: int | None = None) -> list[Move]:
        """Add an actor (a new one, or one Ray restarted: it joins empty) with room for
        ``capacity`` cameras (``None``: no limit). Waiting cameras are placed, least loaded
        first, on every actor with room; nothing else moves. Returns those placements."""
        if not isinstance(actor, str) or not actor:
            raise ValueError(f"an actor name is a non-empty str, got {actor!r}")
        if actor in self._actors:
            raise ValueError(f"actor {actor!r} is already in this fleet")
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int)
                                     or capacity < 1):
            raise ValueError(f"actor {actor!r}: capacity must be a positive int or None, got "
                             f"{capacity!r}")
        self._actors[actor] = _Actor(actor, capacity)
        heapq.heappush(self._heap, (0, actor))
        waiting, self._waiting = list(self._waiting), {}
        return self._place(waiting, source=None)

    def actor_lost(self, actor: str) -> list[Move]:
        """Remove a dead actor; its cameras, in the order they were placed on it, go to the
        least loaded survivors with room (or wait). The survivors keep theirs. Returns the
        moves (``source`` is the lost actor)."""
        lost = self._actor(actor)
        del self._actors[actor]
        cameras = list(lost.cameras)
        for camera in cameras:
            del self._where[camera]
        self._compact()
        return self._place(cameras, source=actor)

    # -- cameras --------------------------------------------------------------------------------
    def assign(self, cameras: Iterable[str]) -> list[Move]:
        """Place new cameras, in the order given, each on the least loaded actor with room (or
        in the waiting list). Cameras already placed stay where they are. ``ValueError``, with
        nothing placed, for a name already in the fleet or given twice."""
        new = list(cameras)
        seen: set[str] = set()
        for camera in new:
            if not isinstance(camera, str) or not camera:
                raise ValueError(f"a camera name is a non-empty str, got {camera!r}")
            if camera in seen or camera in self._where or camera in self._waiting:
                raise ValueError(f"camera {camera!r} is already in this fleet (or named twice); "
                                 "remove it first, or pick another name")
            seen.add(camera)
        return self._place(new, source=None)

    def remove(self, camera: str) -> str | None:
        """Take a camera out of the fleet; returns the actor it ran on (``None``: it waited)."""
        if camera in self._waiting:
            del self._waiting[camera]
            return None
        actor = self._where.pop(camera, None)
        if actor is None:
            raise ValueError(f"no camera named {camera!r} in this fleet")
        owner = self._actors[actor]
        del owner.cameras[camera]
        heapq.heappush(self._heap, (owner.load, actor))
        self._compact()
        return actor

    def rebalance(self) -> list[Move]:
        """Move the fewest cameras that bring every actor to its even share: with ``n``
        cameras over ``a`` actors, ``n // a`` or one more (clamped to each actor's capacity).
        The most loaded actors keep the extra ones; donors give their most recently placed
        cameras. Asked for by the caller (a restarted actor joins empty and stays so until
        then): each move is an outage of that camera."""
        actors = list(self._actors.values())
        if not actors:
            return []
        total = sum(a.load for a in actors)
        share, extra = divmod(total, len(actors))
        ranked = sorted(actors, key=lambda a: (-a.load, a.name))
        target = {a.name: share + (1 if i < extra else 0) for i, a in enumerate(ranked)}
        for a in actors:
            if a.capacity is not None:
                target[a.name] = min(target[a.name], a.capacity)
        spare: deque[tuple[str, str]] = deque()  # (camera, donor)
        for a in ranked:
            excess = a.load - target[a.name]
            if excess > 0:
                spare.extend((c, a.name) for c in list(a.cameras)[-excess:])
        moves: list[Move] = []
        for a in sorted(actors, key=lambda a: (a.load, a.name)):
            while spare and a.load < target[a.name]:
                camera, donor = spare.popleft()
                del self._actors[donor].cameras[camera]
                a.cameras[camera] = None
                self._where[camera] = a.name
                moves.append(Move(camera, donor, a.name))
        self._rebuild_heap()
        return moves

    # -- the heap -------------------------------------------------------------------------------
    def _place(self, cameras: list[str], *, source: str | None) -> list[Move]:
        moves: list[Move] = []
        heap = self._heap
        for i, camera in enumerate(cameras):
            actor = self._pop_least_loaded()
            if actor is None:  # no room anywhere: the rest wait, in order
                self._waiting.update(dict.fromkeys(cameras[i:]))
                break
            actor.cameras[camera] = None
            self._where[camera] = actor.name
            moves.append(Move(camera, source, actor.name))
            if not actor.full:
                heapq.heappush(heap, (actor.load, actor.name))
        return moves

    def _pop_least_loaded(self) -> _Actor | None:
        """The least loaded live actor with room, its heap entry taken out (the caller pushes
        the new one); entries of dead actors or of a load since changed are dropped."""
        while self._heap:
            load, name = heapq.heappop(self._heap)
            actor = self._actors.get(name)
            if actor is not None and actor.load == load and not actor.full:
                return actor
        return None

    def _compact(self) -> None:
        # Stale entries pile up when cameras leave one at a time; a rebuild is O(actors).
        if len(self._heap) > 2 * len(self._actors) + 64:
            self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        self._heap = [(a.load, a.name) for a in self._actors.values() if not a.full]
        heapq.heapify(self._heap)

    def _actor(self, actor: str) -> _Actor:
        try:
            return self._actors[actor]
        except KeyError:
            known = ", ".join(map(repr, self._actors)) or "none"
            raise ValueError(f"no actor named {actor!r} in this fleet (actors: {known})") from None

