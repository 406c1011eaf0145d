"""The bounded hand-off between one producer thread and its consumer (a decode thread and the
stream's worker; the stream's results thread and the event loop), and :class:`Delivery`, the
same producer's side handing each item straight to a consumer's :class:`Sink` instead.

A deque guarded by one condition variable, with two policies:

- ``"every"``: :meth:`put` blocks while the queue is full (backpressure on the decoder); nothing
  is dropped.
- ``"latest"``: the queue holds one frame; :meth:`put` replaces a frame the consumer has not
  taken yet and counts it as a drop, so the consumer always gets the newest frame.

The producer ends the stream with :meth:`finish` (the sentinel), optionally carrying the error
that ended it; the consumer sees every frame put before that, then the end (``None``) or the
error. :meth:`close` wakes both sides for good. Items that never reach the consumer (dropped by
``latest``, or still queued at :meth:`close`) are passed to ``on_discard``, so items holding lent
memory can give it back.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Generic, Literal, Protocol, TypeVar

__all__ = ["Delivery", "Handoff", "Policy", "Sink"]

Policy = Literal["every", "latest"]
T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class Handoff(Generic[T]):
    """Bounded single-producer single-consumer queue with an end marker and a drop counter."""

    def __init__(self, policy: Policy, maxsize: int,
                 on_discard: Callable[[T], None] | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"queue_size must be at least 1, got {maxsize!r}")
        self._policy = policy
        self._maxsize = 1 if policy == "latest" else maxsize
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._finished = False
        self._error: BaseException | None = None
        self._closed = False
        self._on_discard = on_discard
        self.puts = 0
        self.gets = 0
        self.drops = 0

    def put(self, item: T) -> bool:
        """Hand ``item`` over; ``False`` if the queue was closed (the producer should stop, and
        still owns ``item``)."""
        dropped: list[T] = []
        with self._cond:
            if self._policy == "every":
                while len(self._items) >= self._maxsize and not self._closed:
                    self._cond.wait()
            elif len(self._items) >= self._maxsize:
                dropped.append(self._items.popleft())
                self.drops += 1
            if self._closed:
                return False
            self._items.append(item)
            self.puts += 1
            self._cond.notify_all()
        self._discard(dropped)
        return True

    def finish(self, error: BaseException | None = None) -> None:
        """Mark the end of the stream, after the items already put (idempotent: first wins)."""
        with self._cond:
            if not self._finished:
                self._finished = True
                self._error = error
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """Next item; ``None`` at the end; the producer's error once, then ``None``.

        Raises ``TimeoutError`` if nothing arrived within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items and not self._finished and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no frame within {timeout:g} s")
                self._cond.wait(remaining)
            if self._items:
                item = self._items.popleft()
                self.gets += 1
                self._cond.notify_all()
                return item
            error, self._error = self._error, None
            if error is not None:
                raise error
            return None

    def close(self) -> None:
        """Drop what is queued and wake both sides; later puts return ``False``."""
        with self._cond:
            self._closed = True
            queued = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        self._discard(queued)

    def _discard(self, items: list[T]) -> None:
        if self._on_discard is not None:
            for item in items:
                self._on_discard(item)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class Sink(Protocol[T_contra]):
    """A consumer that takes items on the producer's thread (see :class:`Delivery`)."""

    def put(self, item: T_contra) -> bool:
        """Take ``item`` (may wait for room); ``False``: stop producing (``item`` is still the
        producer's)."""
        ...

    def finish(self, error: BaseException | None) -> None:
        """No item follows; ``error``: what ended the producer, if anything did."""
        ...

    def close(self) -> None:
        """The producer is being stopped: a ``put`` waiting for room returns ``False`` now."""
        ...


class Delivery(Generic[T]):
    """A :class:`Handoff`'s producer side that hands each item straight to ``sink`` on the
    producer's thread: no queue between them, and no thread switch. It counts what the sink
    took as ``gets``; nothing waits here and nothing is dropped here (the sink may queue and
    drop). ``finish`` reaches the sink once; :meth:`get` is refused (the sink has the items)."""

    drops = 0

    def __init__(self, sink: Sink[T]) -> None:
        self._sink = sink
        self._finished = False
        self._lock = threading.Lock()
        self.gets = 0

    def put(self, item: T) -> bool:
        if not self._sink.put(item):
            return False
        self.gets += 1
        return True

    def finish(self, error: BaseException | None = None) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        self._sink.finish(error)

    def close(self) -> None:
        self._sink.close()

    def get(self, timeout: float | None = None) -> T | None:
        raise ValueError("this source hands its frames to a sink (FrameSource.deliver_to); "
                         "there is nothing to get()")

    def __len__(self) -> int:
        return 0
