"""The asyncio side shared by ``engine.stream`` and ``engine.stream_many``.

Both run their work on threads that put finished items into a bounded hand-off
(``self._results``) and wake the event loop once per burst (``_wake_loop``: one
``call_soon_threadsafe`` until the loop has run it). The consumer's ``async for`` takes items
without blocking the loop. Closing stops the threads and releases everything, also when the
closing task is cancelled. A subclass provides ``start()`` (make the loop-side state, start the
threads), ``_running`` (started yet), ``_next_ready(ready)`` (the next item for the consumer,
``None`` at the end; built on :meth:`_take`) and ``_shutdown()`` (blocking and idempotent
release); it sets the attributes declared below in its constructor.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from .._errors import ClosedResourceError
from .._handoff import Handoff

__all__ = ["LoopStream"]

T = TypeVar("T")
S = TypeVar("S", bound="LoopStream[Any]")


class LoopStream(Generic[T]):
    """An async context manager and async iterator over items that threads hand to the loop."""

    _closed_message: str  # what iterating a closed stream says
    _results: Handoff[Any]
    _stop: threading.Event
    _on_close: Callable[[Any], None]
    _loop: asyncio.AbstractEventLoop | None
    _ready: asyncio.Event | None
    _wake_pending: bool  # a wake is scheduled and has not run: items put meanwhile need none
    _finished: bool
    _closed: bool

    # -- what a subclass provides -----------------------------------------------------------
    async def start(self) -> None:
        raise NotImplementedError

    @property
    def _running(self) -> bool:
        raise NotImplementedError

    async def _next_ready(self, ready: asyncio.Event) -> T | None:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Stop the threads and release everything they hold. Idempotent; releases everything
        even when the calling task is cancelled meanwhile."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        try:
            await asyncio.shield(asyncio.to_thread(self._shutdown))
        except asyncio.CancelledError:
            self._shutdown()  # finish the release here; the threads are already told to stop
            raise
        finally:
            self._on_close(self)

    def _release(self) -> None:
        """Close from the calling thread, blocking until everything is released: the engine's
        ``aclose()`` uses it for the streams it had not reached when it was cancelled."""
        self._closed = True
        self._stop.set()
        try:
            self._shutdown()
        finally:
            self._on_close(self)

    async def __aenter__(self: S) -> S:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # -- iteration --------------------------------------------------------------------------
    def __aiter__(self: S) -> S:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        if self._closed:
            raise ClosedResourceError(self._closed_message)
        if not self._running:
            try:
                await self.start()
            except BaseException:
                await self.aclose()
                raise
        assert self._ready is not None
        try:
            item = await self._next_ready(self._ready)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._finished = True
            await self.aclose()
            raise
        if item is None:
            self._finished = True
            await self.aclose()
            raise StopAsyncIteration
        return item

    async def _take(self, ready: asyncio.Event) -> Any:
        """The next item of ``self._results``, ``None`` at the end; raises the error that ended
        it. Waits on ``ready`` without blocking the loop."""
        while True:
            try:
                return self._results.get(timeout=0)
            except TimeoutError:
                pass
            ready.clear()
            try:  # again: a wake that ran before the clear() above would be lost otherwise
                return self._results.get(timeout=0)
            except TimeoutError:
                await ready.wait()

    # -- waking the loop --------------------------------------------------------------------
    def _wake_loop(self) -> bool:
        """After a put (any thread): make sure the consumer looks. ``False`` once the loop is
        closed (nobody is listening any more)."""
        if self._wake_pending:
            return True  # the loop has yet to run the wake that will show it this item too
        self._wake_pending = True
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def _wake(self) -> None:
        # Cleared before the event is set: an item put after this line schedules a wake of its
        # own, and one put before it is in the hand-off when the consumer looks (no lost wake-up).
        self._wake_pending = False
        if self._ready is not None:
            self._ready.set()
