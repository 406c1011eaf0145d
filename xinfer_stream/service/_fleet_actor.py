"""The fleet's actor: what runs in each Ray worker process (service/_fleet.py drives it).

One loaded engine and one ``engine.stream_many(end_when_idle=False)`` over the cameras the
driver gives it; its items wait in a bounded queue for the driver's poll. No Ray import here:
``ray.remote`` wraps the class on the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

from .._errors import BrokenStreamError, ClosedResourceError, InferenceError
from ..runtime import Camera, CameraEvent, Result, load

if TYPE_CHECKING:
    from ..runtime import MultiStatistics, MultiStream, StreamingEngine
    from ._fleet import FleetOptions

__all__ = ["CameraActor"]

_ACTOR_QUEUE = 1024  # items an actor keeps for the driver's next poll


class CameraActor:
    """One engine and one ``stream_many`` over this actor's cameras.

    Ray makes it (``ray.remote`` in service/_fleet.py); its methods are coroutines, run on
    the actor's one event loop. Items wait in a bounded queue for the driver's :meth:`poll`.
    """

    def __init__(self, options: FleetOptions) -> None:
        self._options = options
        self._engine: StreamingEngine | None = None
        self._stream: MultiStream | None = None
        self._queue: asyncio.Queue[Result | CameraEvent] | None = None
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> tuple[int, str]:
        """Start with no cameras: end the stream of an earlier start (a driver that gave up on
        this actor may find it still running), load the engine once, open an empty stream.
        Returns (pid, host name)."""
        await self._close_stream()
        options = self._options
        if self._engine is None:
            engine = load(options.model, preprocess=options.preprocess,
                          backend=options.backend if options.gpu else "onnxruntime",
                          threads=options.threads or (None if options.gpu
                                                      else options.cpus_per_actor),
                          plugins=options.plugins)
            await engine.open()
            self._engine = engine
        stream = self._engine.stream_many({}, end_when_idle=False, max_batch=options.max_batch,
                                          max_wait=options.max_wait,
                                          queue_size=options.queue_size, decode=options.decode,
                                          postprocess=options.postprocess)
        await stream.start()
        self._stream = stream
        queue: asyncio.Queue[Result | CameraEvent] = asyncio.Queue(_ACTOR_QUEUE)
        self._queue = queue
        self._pump = asyncio.create_task(self._run_pump(stream, queue))
        return os.getpid(), socket.gethostname()

    async def _run_pump(self, stream: MultiStream, queue: asyncio.Queue[Result | CameraEvent]
                        ) -> None:
        async for item in stream:
            await queue.put(_portable(item))

    async def poll(self, max_items: int, wait: float, gather: float
                   ) -> tuple[list[Result | CameraEvent], bool]:
        """Up to ``max_items`` items, and whether the stream has ended (after :meth:`drain`,
        once every item was polled): waits up to ``wait`` seconds for the first item, then,
        unless ``max_items`` are already waiting, ``gather`` seconds more for others to join
        it (each poll costs this process about a millisecond of CPU, whatever it carries).
        Raises the stream's error once it has failed (the engine: every camera of this actor
        is down)."""
        queue, pump = self._running()
        items: list[Result | CameraEvent] = []
        if queue.empty():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, pump}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
            if getter.done() and not getter.cancelled():
                items.append(getter.result())
            elif pump.done():
                error = pump.exception()
                if error is None:
                    return [], True  # drained: every item delivered
                raise InferenceError(f"this actor's stream failed: {error!r}") from error
        if len(items) + queue.qsize() < max_items:
            await asyncio.wait({pump}, timeout=gather)  # sooner if the stream ends
        while len(items) < max_items and not queue.empty():
            items.append(queue.get_nowait())
        return items, False

    async def add(self, name: str, camera: Camera) -> None:
        self._running()
        assert self._stream is not None
        self._stream.add(name, camera)

    async def remove(self, name: str) -> None:
        self._running()
        assert self._stream is not None
        with contextlib.suppress(ValueError):  # already gone (ended and removed): nothing to do
            await self._stream.remove(name)

    async def statistics(self) -> MultiStatistics:
        self._running()
        assert self._stream is not None
        return self._stream.statistics()

    async def drain(self) -> None:
        """``MultiStream.drain``: no new frame; those taken are delivered, then the stream ends."""
        self._running()
        assert self._stream is not None
        await self._stream.drain()

    async def close(self) -> None:
        """End the stream and close the engine (the driver's aclose, before it kills us)."""
        await self._close_stream()
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.aclose()

    def _running(self) -> tuple[asyncio.Queue[Result | CameraEvent], asyncio.Task[None]]:
        if self._queue is None or self._pump is None:
            raise ClosedResourceError("this actor has not been started (or was closed)")
        return self._queue, self._pump

    async def _close_stream(self) -> None:
        stream, pump = self._stream, self._pump
        self._stream = self._pump = self._queue = None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump  # its error, if any, was the old stream's
        if stream is not None:
            await stream.aclose()


def _portable(item: Result | CameraEvent) -> Result | CameraEvent:
    """The item, with a camera's error replaced by a :class:`BrokenStreamError` naming it when
    the error itself does not pickle (a foreign exception with a custom constructor): one such
    error must not fail the whole poll that carries it to the driver."""
    if isinstance(item, CameraEvent) and item.error is not None:
        try:
            pickle.dumps(item.error)
        except Exception:  # noqa: BLE001 - whatever pickling raises, the text still travels
            error = BrokenStreamError(f"{type(item.error).__name__}: {item.error}")
            return replace(item, error=error)
    return item
