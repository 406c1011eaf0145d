"""Where a service's results go: JSON lines (a file or standard output) and your callback.

Threads and ownership: the service's consumer (on the event loop) hands each Result to
:class:`SinkFeeder`, which appends it to a bounded list (a lock, no wake-up of anyone per
result). One thread, ``xinfer-sinks``, owned by the feeder, takes everything gathered, every
few milliseconds while results flow, and writes it to every sink in order: the loop pays a
list append a result, never a file write, your callback or a thread hop. When the list is
full the consumer waits (backpressure on the stream, and through it on the cameras).
:meth:`SinkFeeder.flush` waits until the sinks have everything; :meth:`SinkFeeder.close`
writes what is left, joins the thread and closes every sink (a JSON lines file is flushed and
closed; standard output is left open).

A sink that raises does not stop the service or the other sinks: its failures are counted
(``SinkStatistics.errors``, the ``xinfer_sink_errors_total`` metric) with the last one kept,
and the results it failed on are not retried.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from .._errors import ClosedResourceError, ConfigError
from .._files import append_text_file
from ..runtime import Result, result_to_json
from ._config import SinkConfig

__all__ = ["CallbackSink", "JsonLinesSink", "Sink", "SinkFeeder", "SinkStatistics",
           "open_sinks"]

_BACKLOG = 1024  # results waiting for the sinks before the consumer waits
_GATHER = 0.005  # seconds the sinks' thread lets results gather before a write


class Sink(Protocol):
    """What :class:`SinkFeeder` drives: ``write`` (blocking; on a worker thread, one call at a
    time, results in order; returns the errors of the results it failed on, or raises when
    it failed on all of them) and ``close``. ``name`` labels its metrics; ``cameras``: only
    results of these cameras reach it (``None``: all)."""

    name: str
    cameras: frozenset[str] | None

    def write(self, results: Sequence[Result]) -> list[Exception]: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON line a result (:func:`~xinfer_stream.runtime.result_to_json`), appended to
    ``path`` (created if missing) or written to ``stream`` (e.g. ``sys.stdout``, not closed
    here); flushed after each group of results, so a reader sees whole lines."""

    def __init__(self, path: Path | None = None, *, stream: IO[str] | None = None,
                 cameras: frozenset[str] | None = None) -> None:
        if (path is None) == (stream is None):
            raise ValueError("JsonLinesSink takes a path or a stream, not both or neither")
        self.name = f"jsonl:{path}" if path is not None else "jsonl:stdout"
        self.cameras = cameras
        self._owned = path is not None
        self._out: IO[str] = append_text_file(path) if path is not None else stream  # type: ignore[assignment]
        self.lines = 0

    def write(self, results: Sequence[Result]) -> list[Exception]:
        self._out.write("".join(json.dumps(result_to_json(r)) + "\n" for r in results))
        self._out.flush()
        self.lines += len(results)
        return []

    def close(self) -> None:
        if self._owned:
            self._out.close()  # idempotent
        else:
            self._out.flush()


class CallbackSink:
    """Calls ``function(result)`` for each result, on the sinks' worker thread (never on the
    event loop: a slow callback holds up only the sinks). ``target`` names it in metrics."""

    def __init__(self, function: Callable[[Result], object], *, target: str,
                 cameras: frozenset[str] | None = None) -> None:
        self.name = f"callback:{target}"
        self.cameras = cameras
        self._function = function

    def write(self, results: Sequence[Result]) -> list[Exception]:
        errors = []
        for result in results:  # one result's failure is that result's
            try:
                self._function(result)
            except Exception as exc:  # noqa: BLE001 - the user's callback: counted, kept
                errors.append(exc)
        return errors

    def close(self) -> None:
        return None


def open_sinks(configs: Sequence[SinkConfig], *, config_file: Path | None = None) -> list[Sink]:
    """The sinks ``configs`` describe, opened (files created, callbacks imported); the caller
    closes them. A callback that cannot be imported, or is not a plain function, is a
    :class:`~xinfer_stream.ConfigError` naming ``config_file`` and the sink."""
    sinks: list[Sink] = []
    try:
        for i, config in enumerate(configs):
            cameras = frozenset(config.cameras) if config.cameras is not None else None
            if config.kind == "jsonl":
                sinks.append(JsonLinesSink(config.path, cameras=cameras) if config.path
                             else JsonLinesSink(stream=sys.stdout, cameras=cameras))
            else:
                assert config.target is not None
                where = f"{config_file or '(config)'}: sinks[{i}].target"
                sinks.append(CallbackSink(_import_callback(config.target, where),
                                          target=config.target, cameras=cameras))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def _import_callback(target: str, where: str) -> Callable[[Result], object]:
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure importing the user's module, reported as config
        raise ConfigError(f"{where}: cannot import {module_name!r} "
                          f"({type(exc).__name__}: {exc}); is it on PYTHONPATH?") from exc
    function = getattr(module, attribute, None)
    if function is None:
        raise ConfigError(f"{where}: {module_name!r} has no {attribute!r}")
    if not callable(function) or inspect.iscoroutinefunction(function):
        raise ConfigError(f"{where}: {target!r} must be a plain function taking a Result "
                          "(it is called on a worker thread), not "
                          + ("a coroutine function" if callable(function)
                             else type(function).__name__))
    return function  # type: ignore[no-any-return]


@dataclass(frozen=True)
class SinkStatistics:
    """One sink's counts: ``written`` results handed to it, ``errors`` results it failed on,
    ``last_error`` (``None`` when none)."""

    name: str
    written: int
    errors: int
    last_error: BaseException | None


class SinkFeeder:
    """The hand-off from the event loop to the sinks' thread (see the module docstring).
    :meth:`put` and :meth:`flush` are called from one task; the thread starts with the first
    result."""

    def __init__(self, sinks: Sequence[Sink], *, backlog: int = _BACKLOG,
                 on_written: Callable[[Sink, int, int], None] | None = None) -> None:
        self._sinks = list(sinks)
        self._backlog = backlog
        self._on_written = on_written
        self._cond = threading.Condition()  # guards everything below
        self._pending: list[Result] = []
        self._writing = 0  # results taken by the thread and not yet written
        self._hurry = False  # flush() or close() waits: write without gathering
        self._closed = False
        self._thread: threading.Thread | None = None
        self._written = {sink.name: 0 for sink in self._sinks}
        self._errors = {sink.name: 0 for sink in self._sinks}
        self._last_error: dict[str, BaseException | None] = {s.name: None for s in self._sinks}

    @property
    def backlog(self) -> int:
        """Results not yet written (any thread)."""
        with self._cond:
            return len(self._pending) + self._writing

    async def put(self, result: Result) -> None:
        """Queue ``result`` for every sink that takes its camera; waits while the backlog is
        full."""
        if not self._sinks:
            return
        with self._cond:
            if self._closed:
                raise ClosedResourceError("the sinks are closed")
            self._pending.append(result)
            if len(self._pending) == 1:
                self._cond.notify_all()
            full = len(self._pending) >= self._backlog
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="xinfer-sinks",
                                                daemon=True)
                self._thread.start()
        if full:
            await asyncio.to_thread(self._wait, self._backlog // 2)

    async def flush(self) -> None:
        """Return once the sinks have every result put so far."""
        if self._sinks:
            await asyncio.to_thread(self._wait, 1)

    def _wait(self, below: int) -> None:
        with self._cond:
            self._hurry = below == 1
            self._cond.notify_all()
            while len(self._pending) + self._writing >= below and self._thread is not None:
                self._cond.wait()
            self._hurry = False

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return  # closed, and everything written
                if not (self._hurry or self._closed or len(self._pending) >= self._backlog // 2):
                    # Let a few milliseconds of results gather: one write (and one wake-up of
                    # this thread) per group, not per result.
                    self._cond.wait(_GATHER)
                group, self._pending = self._pending, []
                self._writing = len(group)
            try:
                self._write(group)
            finally:
                with self._cond:
                    self._writing = 0
                    self._cond.notify_all()

    def _write(self, group: list[Result]) -> None:
        for sink in self._sinks:
            mine = (group if sink.cameras is None
                    else [r for r in group if r.camera in sink.cameras])
            if not mine:
                continue
            try:
                errors = sink.write(mine)
                failed, error = len(errors), (errors[-1] if errors else None)
            except Exception as exc:  # noqa: BLE001 - this sink's failure: counted, kept
                failed, error = len(mine), exc
            with self._cond:
                self._written[sink.name] += len(mine) - failed
                self._errors[sink.name] += failed
                if error is not None:
                    self._last_error[sink.name] = error
            if self._on_written is not None:
                self._on_written(sink, len(mine) - failed, failed)

    def statistics(self) -> tuple[SinkStatistics, ...]:
        with self._cond:
            return tuple(SinkStatistics(s.name, self._written[s.name], self._errors[s.name],
                                        self._last_error[s.name]) for s in self._sinks)

    def close(self) -> None:
        """Write what is queued, join the thread, close every sink (blocking; idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        try:
            if thread is not None:
                thread.join()
        finally:
            for sink in self._sinks:
                sink.close()
